"""Catalogue store: one row per source, assembled from the finished tiles of a run.

Layout (an xarray Dataset with dim ``source``, in Zarr)::

    source_id, ra, dec [deg, ICRS], x, y [0-based pixels], tile     (source)
    flux, flux_err [nJy], snr                                         (source, band)
    A_V, EBV, R_V, log_ssfr and their *_err                           (source, model)
    flag (bit mask, see surveydust.detect.FLAGS), ood [threshold]     (source[, model])
    input_id, z (from a --sources file, when given)                   (source)
    z_phot, z_phot_p16, z_phot_p84, p_high_z [P(z > 6)], selected_by  (source)
    delta_chi2, high_z_reason (the z > 6 criteria, photoz.select_high_z) (source)
    coords: band, model ("F277W+F356W+F444W", one per model bundle)
    attrs: provenance (surveydust version, models and checksums, mosaic store id, config, time),
           flag_meanings and flag_descriptions, photoz (templates, grid, selection criteria), input_checks

Runs write it resumably (:mod:`surveydust.runs`). Rows are sorted by (tile,
y, x), so the catalogue does not depend on the order in which tiles finished.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.detect import FLAG_DESCRIPTIONS, FLAGS  # the catalogue's ``flag`` bits (re-exported here)
from surveydust.errors import InputError
from surveydust.quantities import UNITS as QUANTITY_UNITS
from surveydust.quantities import quantity
from surveydust.stores.base import check_output_path, open_complete_store, write_output_table, write_store_atomically

STORE_KIND = "catalogue"
EXPORT_SUFFIXES = (".fits", ".ecsv")
UNITS = {"ra": "deg", "dec": "deg", "x": "pixel", "y": "pixel", "flux": "nJy", "flux_err": "nJy",
         "ood": "", **QUANTITY_UNITS}  # ood: in units of the model's threshold (surveydust.ood)


def assemble(columns: dict[str, np.ndarray], bands: list[str], models: list[str],
             attrs: dict[str, Any]) -> xr.Dataset:
    """Build the catalogue Dataset from concatenated tile columns (sorted by tile, y, x)."""
    n = len(columns.get("x", []))
    order = np.lexsort((columns["x"], columns["y"], columns["tile"])) if n else np.zeros(0, int)
    ds = xr.Dataset(coords={"source": np.arange(n), "band": np.asarray(bands, dtype=object),
                            "model": np.asarray(models, dtype=object)})
    ds["source_id"] = ("source", np.arange(n, dtype=np.int64))
    for name, values in columns.items():
        values = values[order]
        if values.dtype.kind == "U":  # fixed-width strings have no Zarr v3 spec: store variable-length
            values = values.astype(object)
        dims = ("source", "band") if name in ("flux", "flux_err", "snr") else \
            ("source", "model") if values.ndim == 2 else ("source",)
        ds[name] = (dims, values)
        if quantity(name) in UNITS:
            ds[name].attrs["units"] = UNITS[quantity(name)]
    ds["flag"].attrs["flag_meanings"] = attrs.get("flag_meanings", "")
    ds.attrs.update(attrs)
    return ds


def check_outputs(out: Path | str | None, export_to: Path | str | None, overwrite: bool,
                  inputs: Sequence[Path | str | None] = ()) -> tuple[Path | None, Path | None]:
    """Check a run's catalogue store ``out`` and table ``export_to`` (either may be None)
    before the run starts, with the output-path rule
    (:func:`surveydust.stores.base.check_output_path`) and the run's ``inputs``; return
    the paths to write (the targets of symbolic links)."""
    export_to = _export_path(export_to) if export_to is not None else None
    out = check_output_path(out, overwrite, STORE_KIND, inputs=inputs) if out is not None else None
    if export_to is not None:
        export_to = check_output_path(export_to, overwrite, STORE_KIND, inputs=inputs)
        if out is not None and export_to.resolve() == out.resolve():
            raise InputError(f"the catalogue store and its export would both be {export_to}: give the store "
                             "a .zarr name")
    return out, export_to


def _export_path(path: Path | str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise InputError(f"export format of {path.name}: use a .fits or .ecsv file name")
    return path


def write_catalogue(ds: xr.Dataset, out: Path, overwrite: bool) -> Path:
    """Write ``ds`` to the Zarr store ``out`` (moved into place only when complete)."""
    out = check_output_path(out, overwrite, STORE_KIND)
    return write_store_atomically(ds, out, store_kind=STORE_KIND, encoding={})


def open_catalogue(path: Path | str) -> xr.Dataset:
    """Open a complete catalogue store (into memory)."""
    return open_complete_store(path, STORE_KIND, "catalogue").load()


def to_table(ds: xr.Dataset) -> Any:
    """Flatten the catalogue into an astropy Table (one column per band / model value).

    Per-band columns are named ``flux_F277W``; with one model, predictions keep
    their names (``A_V``), with several they get the model's bands as a suffix
    (``A_V_F277W_F356W_F444W``).
    """
    from astropy.table import Table

    table = Table()
    models = list(ds["model"].values)
    for name, var in ds.data_vars.items():
        columns = [(name, var.values)] if var.dims == ("source",) else [
            (name if var.dims[1] == "model" and len(models) == 1 else f"{name}_{column_suffix(label)}",
             var.values[:, i])
            for i, label in enumerate(ds[var.dims[1]].values)]
        for col, values in columns:
            table[col] = np.asarray(values.tolist(), dtype=str) if values.dtype.kind in "OT" else values
            _set_unit(table[col], var.attrs.get("units"))
    table.meta.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in ds.attrs.items()})
    return table


def column_suffix(label: str) -> str:
    """A model or band label as a column-name suffix: each run of characters other than letters,
    digits and ``_`` becomes ``_`` (``F277W+F356W`` -> ``F277W_F356W``)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(label))


def _set_unit(column: Any, unit: str | None) -> None:
    """A unit astropy (and FITS) understand, or the unit written into the description."""
    import astropy.units as u

    if not unit:
        return
    try:
        column.unit = u.Unit(unit)
    except ValueError:
        column.description = f"[{unit}]"


def export(ds: xr.Dataset, path: Path | str, overwrite: bool = False) -> Path:
    """Write the catalogue as FITS (``.fits``) or ECSV (``.ecsv``), readable by TOPCAT/astropy.

    The file is marked as a surveydust catalogue (FITS keyword ``SDUSTOUT``, ECSV
    meta ``surveydust_output``): ``overwrite`` replaces only such a file, never
    another file nor the catalogue's own sources or redshifts table.
    """
    inputs = [ds.attrs.get("sources_file"), ds.attrs.get("redshifts_file")]
    path = check_output_path(_export_path(path), overwrite, STORE_KIND, inputs=inputs)
    table = to_table(ds)
    if path.suffix.lower() == ".fits":  # FITS header keywords: short, uppercase, scalar
        table.meta = {k[:8].upper(): str(v)[:68] for k, v in table.meta.items()}
    return write_output_table(table, path, STORE_KIND)


__all__ = [
    "EXPORT_SUFFIXES",
    "FLAGS",
    "FLAG_DESCRIPTIONS",
    "STORE_KIND",
    "assemble",
    "check_outputs",
    "column_suffix",
    "export",
    "open_catalogue",
    "to_table",
    "write_catalogue",
]

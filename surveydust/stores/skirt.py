"""Reader for SKIRT mock NIRCam cubes (TNG50 JWST mocks) into a training store.

Input format (Costantin et al. 2023 TNG50 release, ``../shared/data/tng50_skirt_mock/``):

* one FITS file per view and detector, named
  ``<TARGET>_i<inclination>_a<azimuth>_z<redshift>_NIRCam_{short,long}.fits``;
* primary HDU float32 cube ``(filter, y, x)``; plane ``n`` (1-based) holds the
  filter named by header keyword ``EXTn`` (e.g. ``EXT2 = 'F277W'``), with its
  integrated AB magnitude in ``MAGn``;
* ``BUNIT`` (or ``UNITS``) ``'MJy / sr'`` surface brightness; any unit
  equivalent to MJy/sr, or a flux per pixel equivalent to nJy, is accepted
  (:func:`surveydust.stores.fits.flux_to_njy_factor`);
* pixel scale from ``CDELT1/2`` (deg/pixel, with optional ``PCi_j``), a
  ``CDi_j`` matrix, or ``PIXELSCL`` (arcsec/pixel): NIRCam SW 0.031"/px,
  LW 0.063"/px; the galaxy sits at ``CRPIX1/2`` (the cube centre);
* ``TARGET`` (TNG50 subhalo ID), ``REDSHIFT``, ``INCLIN``, ``AZIMUTH`` [deg];
  when absent from the header they are parsed from the file name.

Labels come from a property table (CSV or ECSV, read with astropy.table), one
row per view, matched on ``target``, ``inclination`` and ``azimuth``, or on
``file`` (a cube's base name) when that column exists. Required columns:
``A_V``, ``EBV`` [mag], ``log_ssfr`` [log10 yr^-1]; optional (NaN when
absent): ``dtm``, ``log_mstar`` [log10 Msun], ``log_sfr`` [log10 Msun/yr],
``redshift`` (else the header ``REDSHIFT``). ``R_V = A_V / E(B-V)`` via
:func:`surveydust.physics.r_v`.

Output: a training store (see :mod:`surveydust.stores.training`). Cubes of
the same view (same target, inclination and azimuth; e.g. the SW and LW files)
are merged into one sample.
Each band is converted to flux per pixel [nJy], resampled onto a
``stamp_size`` x ``stamp_size`` grid of ``pixel_scale_arcsec`` by exact
area-overlap rebinning (flux conserving: each input pixel's flux is shared
among output pixels in proportion to overlap area), centred on ``CRPIX``
(galaxy centre at the geometric centre of the stamp), which both crops and
zero-pads. The image is not rotated or flipped (orientation as stored).

Coordinates: ``galaxy_id`` = ``TARGET``; ``view`` = index (0, 1, ...) of the
view's (inclination, azimuth) among the distinct pairs ingested for that
galaxy, sorted by inclination then azimuth (so it depends on which views are
ingested together); ``inclination`` and ``azimuth`` [deg] are kept as extra
coordinates. ``snr`` is NaN: the mocks are noiseless (store attr
``snr_note``). Store attrs: ``generator = "skirt"``, ``source_files``
(base name -> SHA-256 of every cube and the property table), pixel scale,
stamp size.

Images are read lazily (dask, blocks of views), so any number of cubes can be
ingested in bounded memory; header problems are reported before anything is
written, data problems (NaNs, truncated data) while writing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from surveydust.cluster import Compute, run_with_progress
from surveydust.errors import InputError
from surveydust.instrument import KNOWN_BANDS, check_bands
from surveydust.physics import pixel_area_sr
from surveydust.provenance import sha256
from surveydust.quantities import PREDICTED, r_v
from surveydust.runs import OutputLock
from surveydust.stores.base import check_output_path
from surveydust.stores.fits import flux_to_njy_factor, header_pixel_scales_arcsec
from surveydust.stores.training import annotate, write_training_store

REQUIRED_LABELS = PREDICTED
OPTIONAL_LABELS = ("dtm", "log_mstar", "log_sfr")
#: views per dask block when reading images
VIEWS_PER_BLOCK = 256
_NAME_RE = re.compile(r"^(?P<target>\d+)_i(?P<inclin>[-+\d.]+)_a(?P<azimuth>[-+\d.]+)_z(?P<z>[-+\d.]+)_")


@dataclass(frozen=True)
class CubeInfo:
    """What the header of one SKIRT cube says (no pixel data)."""

    path: Path
    bands: tuple[str, ...]
    target: int
    inclination: float  # deg
    azimuth: float  # deg
    redshift: float  # NaN when not in the header or file name
    scale_xy: tuple[float, float]  # arcsec / pixel along x, y
    centre_xy: tuple[float, float]  # galaxy centre, 0-based pixel coords
    to_njy: float  # multiply data by this to get nJy per pixel
    sha256: str


def ingest_skirt(
    cubes: Sequence[Path | str],
    properties: Path | str,
    out: Path | str,
    *,
    bands: Sequence[str] | None = None,
    stamp_size: int = 32,
    pixel_scale_arcsec: float = 0.03,
    overwrite: bool = False,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write SKIRT mock cubes and their property table as a training store.

    ``bands`` selects the filters (default: those of
    :data:`surveydust.instrument.KNOWN_BANDS` present in every view, in that
    order). ``pixel_scale_arcsec`` [arcsec/pixel] and ``stamp_size`` [pixels]
    set the output grid. Cubes are read and resampled as Dask tasks on
    ``client`` (or on a cluster made from the ``cluster`` profile with
    ``workers`` workers). Returns the store path. Raises ValueError for bad
    cubes, property tables or bands, FileExistsError when ``out`` exists and
    ``overwrite`` is false, and refuses an output that is one of the inputs or lies
    inside a surveydust store (:func:`surveydust.stores.base.check_output_path`);
    ``.<name>.lock`` beside it refuses a second run on the same output.
    """
    out = check_output_path(out, overwrite, "training", inputs=[*cubes, properties])
    if not cubes:
        raise InputError("no SKIRT cubes given")
    if stamp_size < 1 or not pixel_scale_arcsec > 0:
        raise InputError(f"stamp_size ({stamp_size}) and pixel_scale_arcsec ({pixel_scale_arcsec}) must be positive")
    infos = [read_cube_info(Path(c)) for c in cubes]
    views = _group_views(infos)
    band_list = _select_bands(views, bands)
    table = _read_properties(Path(properties))
    labels = [_labels_for_view(table, view) for view in views]
    ds = _build_dataset(views, labels, band_list, stamp_size, pixel_scale_arcsec)
    sources = {i.path.name: i.sha256 for i in infos}
    sources[Path(properties).name] = sha256(Path(properties))
    ds.attrs.update(
        generator="skirt",
        source_files=sources,
        stamp_size=stamp_size,
        snr_note="noiseless SKIRT mocks: snr is NaN; add noise downstream",
        view_note="view = index of (inclination, azimuth) among the views of that galaxy ingested together",
        resampling="exact area-overlap rebinning (flux conserving), centred on CRPIX",
    )
    with OutputLock(out), Compute(client, cluster, workers, progress).open() as c:
        return write_training_store(annotate(ds, pixel_scale_arcsec), out, overwrite=overwrite,
                                    compute=lambda delayed: run_with_progress(c, delayed, progress))


# --------------------------------------------------------------------------- headers


def read_cube_info(path: Path) -> CubeInfo:
    """Read and check the header of one SKIRT cube (ValueError when unusable)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with fits.open(path) as hdul:
            hdu = hdul[0]
            header = hdu.header.copy()
            info = hdu.fileinfo()
    except (OSError, IndexError) as exc:
        raise InputError(f"{path.name}: not a readable FITS file ({exc})") from None
    _check_complete(path, header, info["datLoc"])
    band_names = _band_names(path, header)
    target, inclin, azimuth, z = _view_keys(path, header)
    return CubeInfo(
        path=path,
        bands=band_names,
        target=target,
        inclination=inclin,
        azimuth=azimuth,
        redshift=z,
        scale_xy=header_pixel_scales_arcsec(header, path.name),
        centre_xy=_centre(header),
        to_njy=_to_njy_factor(path, header),
        sha256=sha256(path),
    )


def _check_complete(path: Path, header: fits.Header, data_start: int) -> None:
    if header.get("NAXIS", 0) != 3:
        raise InputError(f"{path.name}: expected a 3-D (filter, y, x) cube, got NAXIS={header.get('NAXIS')}")
    nbytes = abs(header["BITPIX"]) // 8 * header["NAXIS1"] * header["NAXIS2"] * header["NAXIS3"]
    size = path.stat().st_size
    if size < data_start + nbytes:
        raise InputError(f"{path.name}: truncated FITS file ({size} bytes, data needs {data_start + nbytes})")


def _band_names(path: Path, header: fits.Header) -> tuple[str, ...]:
    """Filter names from ``EXT1..EXTn``, checked against the cube depth."""
    names = []
    while f"EXT{len(names) + 1}" in header:
        names.append(str(header[f"EXT{len(names) + 1}"]).strip().upper())
    if not names:
        raise InputError(f"{path.name}: no EXTn filter keywords in the header (EXT1 = filter of plane 1, ...)")
    if len(names) != header["NAXIS3"]:
        raise InputError(f"{path.name}: cube has {header['NAXIS3']} planes but {len(names)} EXTn filter keywords")
    if len(set(names)) != len(names):
        raise InputError(f"{path.name}: repeated filter names in EXTn keywords: {', '.join(names)}")
    return tuple(names)


def _view_keys(path: Path, header: fits.Header) -> tuple[int, float, float, float]:
    """TARGET, INCLIN [deg], AZIMUTH [deg], REDSHIFT from the header, else the file name."""
    m = _NAME_RE.match(path.name)
    parsed = dict(m.groupdict()) if m else {}
    values = {}
    for key, name_key in (("TARGET", "target"), ("INCLIN", "inclin"), ("AZIMUTH", "azimuth")):
        value = header.get(key, parsed.get(name_key))
        if value is None:
            raise InputError(f"{path.name}: no {key} in the header and a file name not like "
                             "<TARGET>_i<inclin>_a<azimuth>_z<z>_*.fits")
        values[key] = value
    z = header.get("REDSHIFT", parsed.get("z", np.nan))
    return int(values["TARGET"]), float(values["INCLIN"]), float(values["AZIMUTH"]), float(z)


def _centre(header: fits.Header) -> tuple[float, float]:
    """Galaxy centre as 0-based (x, y) pixel coordinates: CRPIX, else the cube centre."""
    nx, ny = header["NAXIS1"], header["NAXIS2"]
    return float(header.get("CRPIX1", (nx + 1) / 2)) - 1.0, float(header.get("CRPIX2", (ny + 1) / 2)) - 1.0


def _to_njy_factor(path: Path, header: fits.Header) -> float:
    """Factor turning the cube values (``BUNIT``, else ``UNITS``) into flux per pixel [nJy]."""
    sx, sy = header_pixel_scales_arcsec(header, path.name)
    area = pixel_area_sr(float(np.sqrt(sx * sy)))  # the sx x sy pixel's solid angle
    return flux_to_njy_factor(header.get("BUNIT", header.get("UNITS")), area, file=path.name)


# --------------------------------------------------------------------------- views and bands


def _group_views(infos: list[CubeInfo]) -> list[list[CubeInfo]]:
    """Cubes grouped by (target, inclination, azimuth), sorted; bands may not repeat in a view."""
    groups: dict[tuple[int, float, float], list[CubeInfo]] = {}
    for info in infos:
        groups.setdefault((info.target, info.inclination, info.azimuth), []).append(info)
    for key, group in groups.items():
        seen: dict[str, str] = {}
        for info in group:
            for band in info.bands:
                if band in seen:
                    raise InputError(f"{info.path.name}: band {band} of view {_view_name(key)} "
                                     f"already comes from {seen[band]}")
                seen[band] = info.path.name
    return [groups[k] for k in sorted(groups)]


def _view_name(key: tuple[int, float, float]) -> str:
    return f"target {key[0]} (inclination {key[1]:g}, azimuth {key[2]:g})"


def _select_bands(views: list[list[CubeInfo]], bands: Sequence[str] | None) -> list[str]:
    """Requested bands (checked) or the known bands present in every view."""
    available = [{b for info in view for b in info.bands} for view in views]
    if bands is None:
        chosen = [b for b in KNOWN_BANDS if all(b in a for a in available)]
        if not chosen:
            raise InputError(f"no band of {', '.join(KNOWN_BANDS)} is present in every view")
        return chosen
    chosen = list(check_bands(bands))
    if not chosen:
        raise InputError("bands must not be empty")
    for view, avail in zip(views, available):
        absent = [b for b in chosen if b not in avail]
        if absent:
            files = ", ".join(i.path.name for i in view)
            raise InputError(f"band(s) {', '.join(absent)} absent from {files} (has {', '.join(sorted(avail))})")
    return chosen


# --------------------------------------------------------------------------- properties


def _read_properties(path: Path) -> Table:
    """The property table (CSV or ECSV), with the required columns checked."""
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(path.suffix.lower())
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # noqa: BLE001 (astropy raises many types for unreadable tables)
        raise InputError(f"property table {path.name} is unreadable ({type(exc).__name__}: {exc})") from None
    keys = ["file"] if "file" in table.colnames else ["target", "inclination", "azimuth"]
    missing = [c for c in (*keys, *REQUIRED_LABELS) if c not in table.colnames]
    if missing:
        raise InputError(f"property table {path.name} lacks column(s) {', '.join(missing)}")
    return table


def _labels_for_view(table: Table, view: list[CubeInfo]) -> dict[str, float]:
    """Label values [see LABELS units] of one view from its property-table row."""
    row = _matching_row(table, view)
    names = ", ".join(i.path.name for i in view)
    labels = {}
    for name in (*REQUIRED_LABELS, *OPTIONAL_LABELS, "redshift"):
        value = _cell(table, name, row)
        if name in REQUIRED_LABELS and not np.isfinite(value):
            raise InputError(f"{names}: property table has no value of {name}")
        labels[name] = value
    if not np.isfinite(labels["redshift"]):
        labels["redshift"] = view[0].redshift
    if not np.isfinite(labels["redshift"]):
        raise InputError(f"{names}: no REDSHIFT in the header and no redshift column in the property table")
    labels["R_V"] = float(r_v(labels["A_V"], labels["EBV"]))
    return labels


def _matching_row(table: Table, view: list[CubeInfo]) -> int:
    """Index of the one property row of ``view`` (by file name, else target/inclination/azimuth)."""
    first = view[0]
    names = ", ".join(i.path.name for i in view)
    if "file" in table.colnames:
        files = np.array([Path(str(f)).name for f in table["file"]])
        rows = np.flatnonzero(np.isin(files, [i.path.name for i in view]))
        how = f"a file column naming {names}"
    else:
        rows = np.flatnonzero(
            (np.asarray(table["target"], dtype=np.int64) == first.target)
            & np.isclose(np.asarray(table["inclination"], float), first.inclination, atol=1e-6)
            & np.isclose(np.asarray(table["azimuth"], float), first.azimuth, atol=1e-6)
        )
        how = (f"target={first.target}, inclination={first.inclination:g}, azimuth={first.azimuth:g}")
    if rows.size == 0:
        raise InputError(f"{names}: no row in the property table with {how}")
    values = [[_cell(table, c, r) for c in (*REQUIRED_LABELS, *OPTIONAL_LABELS, "redshift")] for r in rows]
    if not all(np.allclose(v, values[0], equal_nan=True) for v in values[1:]):
        raise InputError(f"{names}: {rows.size} rows of the property table with {how} disagree")
    return int(rows[0])


def _cell(table: Table, column: str, row: int) -> float:
    """Float value of ``table[column][row]``; NaN when the column is absent or masked."""
    if column not in table.colnames:
        return float("nan")
    value = table[column][row]
    if np.ma.is_masked(value):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"property table column {column} has a non-numeric value {value!r}") from None


# --------------------------------------------------------------------------- images


def rebin_matrix(n_in: int, scale_in: float, centre_in: float, n_out: int, scale_out: float) -> np.ndarray:
    """(n_out, n_in) weights of an exact flux-conserving 1-D rebinning.

    Input pixel ``i`` covers ``[(i - centre_in - 1/2), (i - centre_in + 1/2)] * scale_in``
    arcsec; output pixel ``j`` covers the same with ``centre_out = (n_out - 1) / 2``
    and ``scale_out``. Weight = overlap length / input pixel length, so the
    flux [nJy] of every input pixel inside the output grid is conserved.
    """
    edges_in = (np.arange(n_in + 1) - 0.5 - centre_in) * scale_in
    edges_out = (np.arange(n_out + 1) - 0.5 - (n_out - 1) / 2.0) * scale_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) / scale_in


def read_cube_njy(info: CubeInfo) -> np.ndarray:
    """Cube data as flux per pixel [nJy], float64 (filter, y, x); ValueError on NaNs."""
    try:
        with fits.open(info.path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(f"{info.path.name}: unreadable FITS data ({exc})") from None
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise InputError(f"{info.path.name}: {n_bad} NaN/inf pixel(s) in the data")
    return data * info.to_njy


def view_stamps(view: list[CubeInfo], bands: list[str], stamp_size: int, pixel_scale_arcsec: float) -> np.ndarray:
    """(band, y, x) float32 stamps [nJy per pixel] of one view on the output grid."""
    out = np.zeros((len(bands), stamp_size, stamp_size), np.float32)
    for info in view:
        wanted = [(k, info.bands.index(b)) for k, b in enumerate(bands) if b in info.bands]
        if not wanted:
            continue
        data = read_cube_njy(info)
        wx = rebin_matrix(data.shape[2], info.scale_xy[0], info.centre_xy[0], stamp_size, pixel_scale_arcsec)
        wy = rebin_matrix(data.shape[1], info.scale_xy[1], info.centre_xy[1], stamp_size, pixel_scale_arcsec)
        for k, plane in wanted:
            out[k] = wy @ data[plane] @ wx.T
    return out


def _block_stamps(views: list[list[CubeInfo]], bands: list[str], stamp_size: int, scale: float) -> np.ndarray:
    return np.stack([view_stamps(v, bands, stamp_size, scale) for v in views])


def _lazy_images(views: list[list[CubeInfo]], bands: list[str], stamp_size: int, scale: float) -> da.Array:
    """image(sample, band, y, x) as a dask array read in blocks of views."""
    blocks = []
    for start in range(0, len(views), VIEWS_PER_BLOCK):
        chunk = views[start:start + VIEWS_PER_BLOCK]
        task = dask.delayed(_block_stamps, pure=True)(chunk, bands, stamp_size, scale)
        blocks.append(da.from_delayed(task, (len(chunk), len(bands), stamp_size, stamp_size), np.float32))
    return da.concatenate(blocks, axis=0)


def _view_indices(views: list[list[CubeInfo]]) -> np.ndarray:
    """Per sample: index of its (inclination, azimuth) among its galaxy's ingested views."""
    per_galaxy: dict[int, list[tuple[float, float]]] = {}
    for v in views:
        per_galaxy.setdefault(v[0].target, []).append((v[0].inclination, v[0].azimuth))
    return np.array([sorted(per_galaxy[v[0].target]).index((v[0].inclination, v[0].azimuth)) for v in views])


def _build_dataset(
    views: list[list[CubeInfo]], labels: list[dict[str, float]], bands: list[str], stamp_size: int, scale: float
) -> xr.Dataset:
    """The training Dataset (lazy image) before annotation."""
    n = len(views)
    data_vars = {"image": (("sample", "band", "y", "x"), _lazy_images(views, bands, stamp_size, scale))}
    for name in ("A_V", "EBV", "R_V", "log_ssfr", "redshift", "dtm", "log_mstar", "log_sfr"):
        data_vars[name] = ("sample", np.array([lab[name] for lab in labels], np.float32))
    data_vars["snr"] = (("sample", "band"), np.full((n, len(bands)), np.nan, np.float32))
    coords = {
        "sample": np.arange(n),
        "band": np.array(bands, dtype=str),
        "galaxy_id": ("sample", np.array([v[0].target for v in views], np.int64)),
        "view": ("sample", _view_indices(views).astype(np.int64)),
        "inclination": ("sample", np.array([v[0].inclination for v in views], np.float32), {"units": "deg"}),
        "azimuth": ("sample", np.array([v[0].azimuth for v in views], np.float32), {"units": "deg"}),
    }
    return xr.Dataset(data_vars, coords=coords)

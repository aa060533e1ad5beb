"""The catalogue: one row per source, written per finished tile and assembled at the end.

Layout (DESIGN section 3; an xarray Dataset with dim ``source``, in Zarr)::

    source_id, ra, dec [deg, ICRS], x, y [0-based pixels], tile     (source)
    flux, flux_err [nJy], snr                                         (source, band)
    A_V, EBV, R_V, log_ssfr and their *_err                           (source, model)
    flag (bit mask, see surveydust.detect.FLAGS), ood [sigma]         (source[, model])
    input_id, z (from a --sources file, when given)                   (source)
    coords: band, model ("F277W+F356W+F444W", one per model bundle)
    attrs: provenance (surveydust version, models and checksums, mosaic store id, config, time)

While a run goes on, each finished tile is saved as ``tile-NNNNNN.npz`` in a
hidden ``.<name>.parts`` folder next to the output; a re-run with the same
inputs and settings keeps those tiles and does only the rest. The catalogue
itself appears (atomically) only when every tile is done; the parts are then
removed. Rows are sorted by (tile, y, x), so the catalogue does not depend on
the order in which tiles finished.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.quantities import UNITS as QUANTITY_UNITS
from surveydust.quantities import quantity
from surveydust.stores.training import check_output_path, open_complete_store, write_store_atomically

STORE_KIND = "catalogue"
RUN_FILE = "run.json"
UNITS = {"ra": "deg", "dec": "deg", "x": "pixel", "y": "pixel", "flux": "nJy", "flux_err": "nJy",
         "ood": "sigma", **QUANTITY_UNITS}


class OutputLock:
    """An exclusive lock on an output path, held by this process (``.<name>.lock`` beside it).

    A second run on the same output is refused at once with one line naming the
    holder; a lock whose process is gone (same host, PID not alive) is stale
    and taken over.
    """

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(f".{out.name}.lock")
        self.held = False

    def __enter__(self) -> OutputLock:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise ValueError(f"another surveydust run (pid {holder['pid']} on {holder['host']}) is "
                                     f"writing {self.path.name.removeprefix('.').removesuffix('.lock')}; "
                                     f"wait for it, or delete {self.path} if that run is dead") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ValueError(f"cannot take the lock {self.path}")

    def _holder(self) -> dict[str, Any] | None:
        """The live holder of the lock, or None when the lock is stale or unreadable."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host != socket.gethostname():
            return holder  # another machine's process: cannot tell, so respect it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return holder

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class TileParts:
    """The folder of finished tiles of one run (keyed by the run's inputs and settings).

    Parts are written atomically; a part file that cannot be read (a killed
    write, a damaged disk) is deleted and its tile done again.
    """

    def __init__(self, out: Path, token: str) -> None:
        self.path = out.with_name(f".{out.name}.parts")
        run = self.path / RUN_FILE
        if self.path.exists() and self._token(run) != token:
            shutil.rmtree(self.path)  # left by a run with other inputs or settings: start afresh
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".run-{uuid.uuid4().hex[:8]}.json"
        tmp.write_text(json.dumps({"token": token}))
        os.replace(tmp, run)

    @staticmethod
    def _token(run: Path) -> str | None:
        try:
            return json.loads(run.read_text()).get("token")
        except (OSError, ValueError, AttributeError):
            return None

    def _file(self, index: int) -> Path:
        return self.path / f"tile-{index:06d}.npz"

    def done(self) -> set[int]:
        """Indices of the readable finished parts (unreadable ones are deleted)."""
        out = set()
        for p in self.path.glob("tile-*.npz"):
            try:
                with np.load(p, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
            except Exception:  # noqa: BLE001 (zip, pickle and OS errors of a damaged part)
                p.unlink(missing_ok=True)
                continue
            out.add(int(p.stem.split("-")[1]))
        return out

    def save(self, index: int, columns: dict[str, np.ndarray]) -> None:
        tmp = self.path / f".tmp-{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **columns)
        os.replace(tmp, self._file(index))

    def load_all(self) -> dict[str, np.ndarray]:
        parts = [dict(np.load(p, allow_pickle=False)) for p in sorted(self.path.glob("tile-*.npz"))]
        keys = parts[0].keys() if parts else ()
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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
            (name if var.dims[1] == "model" and len(models) == 1 else f"{name}_{label.replace('+', '_')}",
             var.values[:, i])
            for i, label in enumerate(ds[var.dims[1]].values)]
        for col, values in columns:
            table[col] = np.asarray(values.tolist(), dtype=str) if values.dtype.kind in "OT" else values
            _set_unit(table[col], var.attrs.get("units"))
    table.meta.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in ds.attrs.items()})
    return table


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
    """Write the catalogue as FITS (``.fits``) or ECSV (``.ecsv``), readable by TOPCAT/astropy."""
    path = Path(path)
    formats = {".fits": "fits", ".ecsv": "ascii.ecsv"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"export format of {path.name}: use a .fits or .ecsv file name")
    table = to_table(ds)
    if path.suffix.lower() == ".fits":  # FITS header keywords: short, uppercase, scalar
        table.meta = {k[:8].upper(): str(v)[:68] for k, v in table.meta.items()}
    table.write(path, format=formats[path.suffix.lower()], overwrite=overwrite)
    return path


__all__ = ["TileParts", "assemble", "export", "open_catalogue", "to_table", "write_catalogue"]

"""Training store: labelled galaxy images as an xarray Dataset in Zarr.

Layout (DESIGN section 3)::

    image(sample, band, y, x)   float32, flux per pixel [nJy]
    A_V, EBV, R_V, log_ssfr, redshift, dtm, log_mstar, log_sfr (sample)
    snr(sample, band)
    coords: sample, band, galaxy_id(sample), view(sample)

Stores are written to a temporary sibling directory and moved into place only
when complete (attrs ``complete = True``), so an interrupted write never
leaves a store that looks finished, and an existing store is replaced only
after its successor is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from surveydust.provenance import VERSION

LABELS: dict[str, str] = {
    "A_V": "mag",
    "EBV": "mag",
    "R_V": "",
    "log_ssfr": "log10(yr^-1)",
    "redshift": "",
    "dtm": "",
    "log_mstar": "log10(M_sun)",
    "log_sfr": "log10(M_sun/yr)",
}
LABEL_DESCRIPTIONS: dict[str, str] = {
    "A_V": "V-band (0.55 um rest) attenuation from integrated attenuated vs intrinsic light",
    "EBV": "colour excess E(B-V) = A_B - A_V from integrated light",
    "R_V": "A_V / E(B-V); NaN where E(B-V) <= 1e-4 (no dust)",
    "log_ssfr": "specific star-formation rate, SFR averaged over 100 Myr / M_*",
    "redshift": "redshift",
    "dtm": "dust-to-metal mass ratio",
    "log_mstar": "surviving stellar mass",
    "log_sfr": "star-formation rate averaged over 100 Myr",
}
STORE_KIND = "training"


def zarr_compressor() -> BloscCodec:
    """The Blosc codec of surveydust's Zarr stores (lossless)."""
    # lz4 writes ~5x faster than zstd here and noisy float32 compresses ~1.15x either way
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def existing_kind(path: Path) -> str | None:
    """What surveydust output lies at ``path``: a store kind (``training``, ``mosaic``,
    ``catalogue``), ``bundle``, or None (anything else, or nothing readable)."""
    import json

    if (path / "bundle.json").is_file():
        return "bundle"
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs.get("store_kind") if isinstance(attrs, dict) else None


def check_output_path(path: Path | str, overwrite: bool, kind: str | None = None) -> Path:
    """Refuse an existing output unless ``overwrite``; create missing parent folders.

    With ``overwrite`` an existing ``path`` is replaced only when it is a
    surveydust output of the same ``kind`` (a store kind or ``bundle``):
    anything else there (another kind of store, a folder of your files) is
    refused, so ``--overwrite`` never deletes what surveydust did not write.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.exists() and kind is not None and existing_kind(path) != kind:
        found = existing_kind(path)
        what = f"a surveydust {found} {'bundle' if found == 'bundle' else 'store'}" if found else \
            "not a surveydust output"
        raise FileExistsError(f"{path} exists and is {what}, not a {kind} "
                              f"{'bundle' if kind == 'bundle' else 'store'}: refusing to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output folder {path.parent}: {exc.strerror}") from None
    return path


def validate_training_dataset(ds: xr.Dataset) -> None:
    """Raise ValueError when ``ds`` breaks the training-store contract."""
    if "image" not in ds or ds["image"].dims != ("sample", "band", "y", "x"):
        raise ValueError("training data needs image(sample, band, y, x)")
    missing = [k for k in (*LABELS, "snr") if k not in ds]
    missing += [c for c in ("galaxy_id", "view", "band") if c not in ds.coords]
    if missing:
        raise ValueError(f"training data lacks {', '.join(missing)}")
    if ds.sizes["sample"] == 0:
        raise ValueError("training data has no samples")


def annotate(ds: xr.Dataset, pixel_scale_arcsec: float) -> xr.Dataset:
    """Attach units and descriptions to the variables of a training Dataset."""
    ds["image"].attrs.update(units="nJy", description="flux per pixel", pixel_scale_arcsec=pixel_scale_arcsec)
    ds["snr"].attrs.update(units="", description="aperture signal-to-noise ratio per band")
    for name, units in LABELS.items():
        ds[name].attrs.update(units=units, description=LABEL_DESCRIPTIONS[name])
    ds.attrs.update(pixel_scale_arcsec=pixel_scale_arcsec, image_units="nJy")
    return ds


def _encoding(ds: xr.Dataset, chunk_samples: int) -> dict:
    enc = {}
    for name, var in ds.variables.items():
        if "sample" in var.dims and name != "sample":
            chunks = tuple(chunk_samples if d == "sample" else ds.sizes[d] for d in var.dims)
            enc[name] = {"chunks": chunks, "compressors": [zarr_compressor()]}
    return enc


def write_training_store(
    ds: xr.Dataset,
    path: Path | str,
    *,
    overwrite: bool = False,
    chunk_samples: int = 256,
    compute: Callable[[object], None] | None = None,
) -> Path:
    """Write ``ds`` atomically as a training store and return its path.

    ``ds`` may be backed by dask arrays; ``compute`` then receives the delayed
    write (e.g. to run it on a distributed client with a progress bar);
    without it the write is computed with dask's current scheduler.
    """
    path = check_output_path(path, overwrite, STORE_KIND)
    validate_training_dataset(ds)
    # object strings become Zarr 3's variable-length UTF-8 (fixed-width <U has no v3 spec)
    ds = ds.assign_coords(band=ds["band"].values.astype(object))
    if ds.chunks:
        ds = ds.chunk({"sample": chunk_samples})
    return write_store_atomically(ds, path, store_kind=STORE_KIND,
                                  encoding=_encoding(ds, chunk_samples), compute=compute)


def write_store_atomically(
    ds: xr.Dataset,
    path: Path,
    *,
    store_kind: str,
    encoding: dict,
    compute: Callable[[object], Mapping | None] | None = None,
) -> Path:
    """Write ``ds`` as a surveydust Zarr store of kind ``store_kind`` at ``path``, atomically.

    Sets the attrs ``store_kind``, ``store_id``, ``surveydust_version`` and
    ``complete`` (False while writing). The store is written to a hidden
    temporary sibling, marked complete and only then moved into place (an old
    store at ``path`` is replaced after that). ``compute`` receives the delayed
    write (without it, dask's current scheduler computes it); a mapping it
    returns is added to the attrs together with ``complete = True`` (e.g.
    checksums computed alongside the write).
    """
    ds = ds.assign_attrs(
        store_kind=store_kind,
        store_id=uuid.uuid4().hex,
        surveydust_version=VERSION,
        complete=False,
    )
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with _quiet_consolidation():
            delayed = ds.to_zarr(tmp, mode="w", encoding=encoding, compute=False, consolidated=True)
        extra = delayed.compute() if compute is None else compute(delayed)
        attrs = zarr.open_group(tmp, mode="r+").attrs
        attrs.update({**(extra if isinstance(extra, Mapping) else {}), "complete": True})
        with _quiet_consolidation():
            zarr.consolidate_metadata(tmp)
        replace_atomically(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextlib.contextmanager
def _quiet_consolidation() -> Iterator[None]:
    """Consolidated metadata is not yet in the Zarr 3 spec, but xarray and zarr-python
    read it; silence zarr's reminder about that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def replace_atomically(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is removed only after the move."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def open_complete_store(path: Path | str, store_kind: str, what: str, **open_kwargs: Any) -> xr.Dataset:
    """Open a surveydust Zarr store of ``store_kind`` lazily; refuse missing, foreign or
    incomplete ones with a one-line error (``what`` names the store in messages)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # stores not consolidated are refused below anyway
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            ds = xr.open_zarr(path, **open_kwargs)
    except Exception as exc:  # zarr raises several types for non-stores
        raise ValueError(f"{path} is not a readable Zarr store ({type(exc).__name__})") from None
    if ds.attrs.get("store_kind") != store_kind:
        raise ValueError(f"{path} is not a surveydust {what} (store_kind={ds.attrs.get('store_kind')!r})")
    if not ds.attrs.get("complete", False):
        raise ValueError(f"{what} {path} is incomplete (an interrupted write?)")
    return ds


def open_training_store(path: Path | str) -> xr.Dataset:
    """Open a complete training store lazily (dask-backed)."""
    ds = open_complete_store(path, STORE_KIND, "training store")
    validate_training_dataset(ds)
    return ds


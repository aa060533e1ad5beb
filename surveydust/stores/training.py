"""Training store: labelled galaxy images as an xarray Dataset in Zarr.

Layout::

    image(sample, band, y, x)   float32, flux per pixel [nJy]
    A_V, EBV, R_V, log_ssfr, redshift, dtm, log_mstar, log_sfr (sample)
    snr(sample, band)
    coords: sample, band, galaxy_id(sample), view(sample)

Written atomically like every store (:mod:`surveydust.stores.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import xarray as xr

from surveydust.errors import InputError
from surveydust.stores.base import check_output_path, open_complete_store, write_store_atomically, zarr_compressor

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


def validate_training_dataset(ds: xr.Dataset) -> None:
    """Raise ValueError when ``ds`` breaks the training-store contract."""
    if "image" not in ds or ds["image"].dims != ("sample", "band", "y", "x"):
        raise InputError("training data needs image(sample, band, y, x)")
    missing = [k for k in (*LABELS, "snr") if k not in ds]
    missing += [c for c in ("galaxy_id", "view", "band") if c not in ds.coords]
    if missing:
        raise InputError(f"training data lacks {', '.join(missing)}")
    if ds.sizes["sample"] == 0:
        raise InputError("training data has no samples")


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


def open_training_store(path: Path | str) -> xr.Dataset:
    """Open a complete training store lazily (dask-backed)."""
    ds = open_complete_store(path, STORE_KIND, "training store")
    validate_training_dataset(ds)
    return ds


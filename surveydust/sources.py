"""Input tables of sources: positions to measure (``--sources``) and redshifts to attach (``--redshifts``).

Tables are CSV, FITS or ECSV with RA/Dec in degrees; column names are found
case-insensitively among common spellings (``RA_NAMES``, ``DEC_NAMES``,
``ID_NAMES``, ``Z_NAMES``, e.g. the DJA spectroscopic compilation's ``ra``,
``dec``, ``z_spec``). Masked or empty redshifts read as NaN (no redshift).
Either table may also give a UV slope measured elsewhere (e.g. from NIRSpec
spectra, as in the paper): ``beta`` and ``beta_err`` (``BETA_NAMES``,
``BETA_ERR_NAMES``), used instead of the photometric fit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RA_NAMES = ("ra", "ra_deg", "raj2000", "alpha_j2000")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "delta_j2000")
ID_NAMES = ("id", "source_id", "objid", "object_id")
Z_NAMES = ("z", "z_spec", "zspec", "redshift")
BETA_NAMES = ("beta", "beta_uv", "beta_spec")
BETA_ERR_NAMES = ("beta_err", "e_beta", "beta_error", "beta_uv_err", "beta_spec_err")
TRUTH_MATCH_ARCSEC = 0.1  # catalogue source <-> injected galaxy (light-weighted centroid)


def read_table(path: Path | str, what: str) -> Any:
    """An astropy Table from a CSV, FITS or ECSV file; one-line errors (``what`` names the file's role)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return Table.read(path, format="ascii.csv" if path.suffix.lower() == ".csv" else None)
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise ValueError(f"cannot read {what} file {path}: {exc}".splitlines()[0]) from None


def column_name(table: Any, names: tuple[str, ...], what: str, required: bool = True) -> str | None:
    """The name of the first column of ``table`` called like one of ``names`` (any case); None if absent
    and not ``required``."""
    lower = {c.lower(): c for c in table.colnames}
    for name in names:
        if name in lower:
            return lower[name]
    if required:
        raise ValueError(f"the table has no {what} column (looked for {', '.join(names)}; "
                         f"it has {', '.join(table.colnames[:12])})")
    return None


def float_column(table: Any, names: tuple[str, ...], what: str, required: bool = True) -> np.ndarray | None:
    """A numeric column (see :func:`column_name`) as float, masked or empty entries as NaN."""
    name = column_name(table, names, what, required)
    if name is None:
        return None
    try:
        return np.ma.filled(np.ma.asarray(table[name]).astype(float), np.nan)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} column {name!r} is not numeric") from None


def source_positions(sources: Path | str, wcs: Any, mosaic: Any) -> dict[str, np.ndarray]:
    """Pixel positions ``x``, ``y`` (0-based), table ``row``, ``input_id`` and ``z`` (if given) of a
    sources table; positions off the mosaic's data are dropped with a count."""
    table = read_table(sources, "sources")
    ra = float_column(table, RA_NAMES, "RA")
    dec = float_column(table, DEC_NAMES, "Dec")
    id_name = column_name(table, ID_NAMES, "id", required=False)
    z = float_column(table, Z_NAMES, "redshift", required=False)
    x, y = wcs.all_world2pix(ra, dec, 0)
    ny, nx = mosaic.sizes["y"], mosaic.sizes["x"]
    inside = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    xi, yi = np.rint(x[inside]).astype(int), np.rint(y[inside]).astype(int)
    has_data = np.isfinite(mosaic["sci"].isel(band=0).data.vindex[yi, xi].compute()) if inside.any() else \
        np.zeros(0, dtype=bool)
    keep = np.flatnonzero(inside)[has_data]
    if keep.size < len(table):
        logger.warning("%d of %d sources fall outside the mosaic's data (off the footprint or on "
                       "masked pixels); they are not in the catalogue", len(table) - keep.size, len(table))
    out = {"x": x[keep], "y": y[keep], "row": keep}
    out["input_id"] = np.asarray(table[id_name])[keep].astype(str) if id_name else keep.astype(str)
    if z is not None:
        out["z"] = z[keep]
    out.update({k: v[keep] for k, v in _beta_columns(table).items()})
    return out


def _beta_columns(table: Any) -> dict[str, np.ndarray]:
    """``beta_input`` and ``beta_input_err`` (NaN where not given) when the table has a beta column."""
    beta = float_column(table, BETA_NAMES, "beta", required=False)
    if beta is None:
        return {}
    err = float_column(table, BETA_ERR_NAMES, "beta error", required=False)
    return {"beta_input": beta, "beta_input_err": err if err is not None else np.full(len(beta), np.nan)}


def redshift_table(path: Path | str) -> dict[str, np.ndarray]:
    """``ra``, ``dec`` [deg] and ``z`` of the entries of a redshifts table that have all three (and
    ``beta_input``, ``beta_input_err`` when it gives UV slopes)."""
    table = read_table(path, "redshifts")
    cols = {"ra": float_column(table, RA_NAMES, "RA"), "dec": float_column(table, DEC_NAMES, "Dec"),
            "z": float_column(table, Z_NAMES, "redshift"), **_beta_columns(table)}
    good = np.isfinite(cols["ra"]) & np.isfinite(cols["dec"]) & np.isfinite(cols["z"])
    if not good.any():
        raise ValueError(f"redshifts file {path} has no row with a finite RA, Dec and redshift")
    return {k: v[good] for k, v in cols.items()}


def nearest(ra: np.ndarray, dec: np.ndarray, ref_ra: np.ndarray, ref_dec: np.ndarray,
            radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (``ra``, ``dec``) [deg], the index of the nearest reference position, the separation
    [arcsec] and whether it lies within ``radius_arcsec``."""
    from astropy.coordinates import SkyCoord

    if not len(ra) or not len(ref_ra):
        return np.zeros(len(ra), int), np.full(len(ra), np.inf), np.zeros(len(ra), bool)
    idx, d2d, _ = SkyCoord(ra, dec, unit="deg").match_to_catalog_sky(SkyCoord(ref_ra, ref_dec, unit="deg"))
    return idx, d2d.arcsec, d2d.arcsec <= radius_arcsec


def match_redshifts(ra: np.ndarray, dec: np.ndarray, table: dict[str, np.ndarray],
                    radius_arcsec: float) -> dict[str, np.ndarray]:
    """The ``table`` (:func:`redshift_table`) columns other than ``ra``/``dec`` of the entries nearest
    to (``ra``, ``dec``) [deg], and ``sep`` [arcsec]; NaN where no entry lies within ``radius_arcsec``."""
    idx, sep, close = nearest(ra, dec, table["ra"], table["dec"], radius_arcsec)
    out = {k: np.where(close, v[idx], np.nan) for k, v in table.items() if k not in ("ra", "dec")}
    out["sep"] = np.where(close, sep, np.nan)
    return out


__all__ = ["column_name", "float_column", "match_redshifts", "nearest", "read_table", "redshift_table",
           "source_positions"]

"""Input tables of sources: positions to measure (``--sources``) and redshifts to attach (``--redshifts``).

Tables are CSV, FITS or ECSV with RA/Dec in degrees; column names are found
case-insensitively among common spellings (``RA_NAMES``, ``DEC_NAMES``,
``ID_NAMES``, ``Z_NAMES``, e.g. the DJA spectroscopic compilation's ``ra``,
``dec``, ``z_spec``). Masked or empty redshifts read as NaN (no redshift).
Either table may also give a UV slope measured elsewhere (e.g. from NIRSpec
spectra, as in the paper): ``beta`` and ``beta_err`` (``BETA_NAMES``,
``BETA_ERR_NAMES``), used instead of the photometric fit.

Every value is checked where it enters (the same functions serve the tables,
the catalogue run and :meth:`surveydust.bundle.Predictor.predict`): a redshift
is physical when finite and in (0, 30] (:data:`PHYSICAL_Z`); anything else
(the sentinels -99, -1, 0 or 99 of real catalogues) reads as *no redshift*.
A row is left out when its RA or Dec is missing, its Dec is outside [-90, 90]
or its RA outside [0, 360) [deg]; each reason is counted and warned about
separately, as are repeated ids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from surveydust.errors import InputError

logger = logging.getLogger(__name__)

RA_NAMES = ("ra", "ra_deg", "raj2000", "alpha_j2000")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "delta_j2000")
ID_NAMES = ("id", "source_id", "objid", "object_id")
Z_NAMES = ("z", "z_spec", "zspec", "redshift")
BETA_NAMES = ("beta", "beta_uv", "beta_spec")
BETA_ERR_NAMES = ("beta_err", "e_beta", "beta_error", "beta_uv_err", "beta_spec_err")
TRUTH_MATCH_ARCSEC = 0.1  # catalogue source <-> injected galaxy (light-weighted centroid)
#: redshifts a source can have: (low, high]; a value outside, or not finite, means "no redshift"
PHYSICAL_Z = (0.0, 30.0)
#: why a table row is left out or a value read as missing: count key -> what the warning says of the rows
REASONS = {
    "missing_coordinates": "have no RA or no Dec: left out",
    "bad_dec": "have a Dec outside [-90, 90] deg: left out",
    "bad_ra": "have an RA outside [0, 360) deg: left out",
    "impossible_redshift": f"have an impossible redshift (not in ({PHYSICAL_Z[0]:g}, {PHYSICAL_Z[1]:g}], "
                           "e.g. the sentinel -99): read as no redshift",
    "no_redshift": "have no redshift",
    "repeated_id": "repeat the id of an earlier row",
    "off_data": "fall outside the mosaic's data (off the footprint or on masked pixels); they are not in "
                "the catalogue",
}


def physical_redshifts(z: np.ndarray | float) -> np.ndarray:
    """Whether each redshift is physical: finite and in (0, 30] (:data:`PHYSICAL_Z`)."""
    z = np.asarray(z, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(z) & (z > PHYSICAL_Z[0]) & (z <= PHYSICAL_Z[1])


def impossible_redshifts(z: np.ndarray | float) -> np.ndarray:
    """Whether each redshift is given (not NaN) but not physical (:func:`physical_redshifts`),
    e.g. the catalogue sentinels -99, -1, 0."""
    z = np.asarray(z, dtype=float)
    return ~np.isnan(z) & ~physical_redshifts(z)


def missing_where_impossible(z: np.ndarray) -> np.ndarray:
    """``z`` with the impossible redshifts (:func:`impossible_redshifts`) set to NaN (no redshift)."""
    return np.where(physical_redshifts(z), np.asarray(z, dtype=float), np.nan)


def check_redshifts(z: np.ndarray | float | None, n: int) -> np.ndarray:
    """``n`` redshifts (one value broadcast, None: unknown for all) as float; NaN means unknown.

    Raises a one-line ValueError naming the impossible values (not NaN, and not finite or
    outside (0, 30]) and the valid range: the API does not guess what a sentinel meant.
    """
    if z is None:
        return np.full(n, np.nan)
    try:
        z = np.broadcast_to(np.asarray(z, dtype=np.float64), (n,)).copy()
    except ValueError:
        raise InputError(f"got {np.size(z)} redshifts for {n} images") from None
    bad = impossible_redshifts(z)
    if bad.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(z[bad])[:5])
        raise InputError(f"redshift must be NaN (unknown) or in ({PHYSICAL_Z[0]:g}, {PHYSICAL_Z[1]:g}]; got "
                         f"{shown} ({int(bad.sum())} of {n} values)")
    return z


def valid_coordinates(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Which rows have usable sky positions (RA in [0, 360), |Dec| <= 90 [deg], both finite), and
    the number of the other rows per reason (each row counted once, under its first reason)."""
    with np.errstate(invalid="ignore"):
        missing = ~(np.isfinite(ra) & np.isfinite(dec))
        bad_dec = ~missing & (np.abs(dec) > 90)
        bad_ra = ~missing & ~bad_dec & ((ra < 0) | (ra >= 360))
    counts = {"missing_coordinates": int(missing.sum()), "bad_dec": int(bad_dec.sum()), "bad_ra": int(bad_ra.sum())}
    return ~(missing | bad_dec | bad_ra), counts


def warn_counts(counts: dict[str, int], total: int, what: str) -> None:
    """One warning line per reason (:data:`REASONS`) with a non-zero count; ``what`` names the rows."""
    for reason, n in counts.items():
        if n:
            logger.warning("%d of %d %s %s", n, total, what, REASONS[reason])


def read_table(path: Path | str, what: str) -> Any:
    """An astropy Table from a CSV, FITS or ECSV file; one-line errors (``what`` names the file's role)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return Table.read(path, format="ascii.csv" if path.suffix.lower() == ".csv" else None)
    except Exception as exc:  # noqa: BLE001 (astropy raises many types for unreadable tables)
        raise InputError(f"cannot read {what} file {path}: {exc}".splitlines()[0]) from None


def column_name(table: Any, names: tuple[str, ...], what: str, required: bool = True) -> str | None:
    """The name of the first column of ``table`` called like one of ``names`` (any case); None if absent
    and not ``required``."""
    lower = {c.lower(): c for c in table.colnames}
    for name in names:
        if name in lower:
            return lower[name]
    if required:
        raise InputError(f"the table has no {what} column (looked for {', '.join(names)}; "
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
        raise InputError(f"the {what} column {name!r} is not numeric") from None


def source_positions(sources: Path | str, wcs: Any, mosaic: Any,
                     counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Pixel positions ``x``, ``y`` (0-based), table ``row``, ``input_id`` and ``z`` (if given) of a
    sources table.

    Rows without usable RA/Dec (:func:`valid_coordinates`) and positions off the data of the
    mosaic's first band are left out; impossible redshifts read as missing (NaN); repeated
    ids are kept. Each reason is warned about with its count, and the counts (keys of
    :data:`REASONS`) are added to ``counts`` when given.
    """
    table = read_table(sources, "sources")
    ra, dec = float_column(table, RA_NAMES, "RA"), float_column(table, DEC_NAMES, "Dec")
    good, found = valid_coordinates(ra, dec)
    z = float_column(table, Z_NAMES, "redshift", required=False)
    if z is not None:
        found["impossible_redshift"] = int((good & impossible_redshifts(z)).sum())
        z = missing_where_impossible(z)
    id_name = column_name(table, ID_NAMES, "id", required=False)
    ids = np.asarray(table[id_name]).astype(str) if id_name else np.arange(len(table)).astype(str)
    found["repeated_id"] = len(ids) - len(np.unique(ids))
    x, y, on_data = _on_data(ra, dec, good, wcs, mosaic)
    found["off_data"] = int((good & ~on_data).sum())
    warn_counts(found, len(table), "sources")
    if counts is not None:
        counts.update(found)
    keep = np.flatnonzero(good & on_data)
    out = {"x": x[keep], "y": y[keep], "row": keep, "input_id": ids[keep]}
    if z is not None:
        out["z"] = z[keep]
    out.update({k: v[keep] for k, v in _beta_columns(table).items()})
    return out


def _on_data(ra: np.ndarray, dec: np.ndarray, good: np.ndarray, wcs: Any,
             mosaic: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions x, y (NaN where not ``good``) of (``ra``, ``dec``) [deg] and whether each lies on
    a pixel with data in the mosaic's first band."""
    x, y = np.full(len(ra), np.nan), np.full(len(ra), np.nan)
    if good.any():
        x[good], y[good] = wcs.all_world2pix(ra[good], dec[good], 0)
    ny, nx = mosaic.sizes["y"], mosaic.sizes["x"]
    with np.errstate(invalid="ignore"):
        inside = np.flatnonzero((x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5))
    on_data = np.zeros(len(ra), dtype=bool)
    if inside.size:
        xi, yi = np.rint(x[inside]).astype(int), np.rint(y[inside]).astype(int)
        on_data[inside] = np.isfinite(mosaic["sci"].isel(band=0).data.vindex[yi, xi].compute())
    return x, y, on_data


def _beta_columns(table: Any) -> dict[str, np.ndarray]:
    """``beta_input`` and ``beta_input_err`` (NaN where not given) when the table has a beta column."""
    beta = float_column(table, BETA_NAMES, "beta", required=False)
    if beta is None:
        return {}
    err = float_column(table, BETA_ERR_NAMES, "beta error", required=False)
    return {"beta_input": beta, "beta_input_err": err if err is not None else np.full(len(beta), np.nan)}


def redshift_table(path: Path | str, counts: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """``ra``, ``dec`` [deg] and ``z`` of the entries of a redshifts table with usable coordinates
    (:func:`valid_coordinates`) and a physical redshift (:func:`physical_redshifts`), and
    ``beta_input``, ``beta_input_err`` when it gives UV slopes. The rows left out are counted
    per reason (warnings; added to ``counts`` when given, keys of :data:`REASONS`)."""
    table = read_table(path, "redshifts")
    cols = {"ra": float_column(table, RA_NAMES, "RA"), "dec": float_column(table, DEC_NAMES, "Dec"),
            "z": float_column(table, Z_NAMES, "redshift"), **_beta_columns(table)}
    good, found = valid_coordinates(cols["ra"], cols["dec"])
    found["impossible_redshift"] = int((good & impossible_redshifts(cols["z"])).sum())
    found["no_redshift"] = int((good & np.isnan(cols["z"])).sum())
    good &= physical_redshifts(cols["z"])
    warn_counts(found, len(table), "redshifts-table rows")
    if counts is not None:
        counts.update(found)
    if not good.any():
        raise InputError(f"redshifts file {path} has no row with a finite RA, Dec and redshift (RA in [0, 360), "
                         f"|Dec| <= 90 deg, z in ({PHYSICAL_Z[0]:g}, {PHYSICAL_Z[1]:g}])")
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


__all__ = ["PHYSICAL_Z", "REASONS", "check_redshifts", "column_name", "float_column", "impossible_redshifts",
           "match_redshifts", "missing_where_impossible", "nearest", "physical_redshifts", "read_table",
           "redshift_table", "source_positions", "valid_coordinates", "warn_counts"]

"""UV continuum slope beta and the Meurer et al. (1999) IRX-beta dust estimate.

beta is fitted per source to the bands whose whole passband lies in the
rest-frame UV continuum at the source's redshift: redward of Lyman-alpha
(blue 50%-transmission edge above 1.02 x 1216 A) and with the pivot below
2600 A (Calzetti et al. 1994's windows span 1250-2600 A). At z ~ 7 these are
F115W, F150W and F200W. The fit is a weighted least-squares power law
``f_lambda ~ lambda^beta``, i.e. ``log10 f_nu = (beta + 2) log10 lambda + c``,
with each band's log-flux error ``flux_err / (flux ln 10)``.

Meurer: ``A_1600 = 4.43 + 1.99 beta`` [mag], converted to A_V with the
Calzetti law (``A_V = A_1600 / k(1600 A) x R_V``, k/R_V = 2.5 at 1600 A) and
floored at 0 (beta bluer than -2.23 means no dust on this relation).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from surveydust.errors import InputError
from surveydust.instrument import KNOWN_BANDS, LYMAN_ALPHA_AA, bandpass, pivot_wavelength_aa
from surveydust.physics import attenuation_curve
from surveydust.sources import PHYSICAL_Z, physical_redshifts

UV_MAX_AA = 2600.0
LYA_MARGIN = 1.02
MEURER_A1600 = (4.43, 1.99)  # A_1600 = a + b beta
A1600_OVER_AV = float(attenuation_curve(np.array([1600.0]))[0])


@cache
def band_geometry(band: str) -> tuple[float, float]:
    """Pivot wavelength and blue 50%-transmission edge of a band [Angstrom]."""
    wave, trans = bandpass(band)
    blue = wave[np.argmax(trans >= 0.5 * trans.max())]
    return pivot_wavelength_aa(band), float(blue)


def uv_bands(bands: list[str], redshift: float) -> list[str]:
    """The bands of ``bands`` that sample the rest-frame UV continuum at ``redshift``; a redshift
    that is not physical (:func:`surveydust.sources.physical_redshifts`) is a ValueError."""
    if not physical_redshifts(redshift):
        raise InputError(f"redshift must be finite and in ({PHYSICAL_Z[0]:g}, {PHYSICAL_Z[1]:g}], got {redshift}")
    out = []
    for band in bands:
        if band not in KNOWN_BANDS:
            continue
        pivot, blue = band_geometry(band)
        if blue / (1 + redshift) > LYMAN_ALPHA_AA * LYA_MARGIN and pivot / (1 + redshift) <= UV_MAX_AA:
            out.append(band)
    return out


def fit_beta(flux: np.ndarray, flux_err: np.ndarray, pivots_aa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted power-law fits of fluxes ``(n, band)`` [any f_nu unit] at ``pivots_aa``.

    Returns beta and its 1-sigma error per source; NaN where a flux is not
    positive, an error is not positive, or fewer than two bands are given.
    """
    flux, flux_err = np.atleast_2d(flux).astype(float), np.atleast_2d(flux_err).astype(float)
    n = flux.shape[0]
    if flux.shape[1] < 2:
        return np.full(n, np.nan), np.full(n, np.nan)
    ok = np.all((flux > 0) & (flux_err > 0) & np.isfinite(flux) & np.isfinite(flux_err), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log10(np.where(ok[:, None], flux, 1.0))
        w = (np.where(ok[:, None], flux, 1.0) * np.log(10) / np.where(ok[:, None], flux_err, 1.0)) ** 2
    x = np.log10(np.asarray(pivots_aa, float))[None, :]
    s, sx, sy = w.sum(1), (w * x).sum(1), (w * y).sum(1)
    sxx, sxy = (w * x * x).sum(1), (w * x * y).sum(1)
    det = s * sxx - sx**2
    slope = (s * sxy - sx * sy) / det
    slope_err = np.sqrt(s / det)
    return np.where(ok, slope - 2.0, np.nan), np.where(ok, slope_err, np.nan)


def meurer_av(beta: np.ndarray, beta_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A_V [mag] and its error from beta via Meurer's IRX-beta relation (Calzetti law; floored at 0)."""
    a, b = MEURER_A1600
    a1600 = a + b * np.asarray(beta, float)
    return np.maximum(a1600, 0.0) / A1600_OVER_AV, b * np.asarray(beta_err, float) / A1600_OVER_AV


def uv_slopes(flux: np.ndarray, flux_err: np.ndarray, bands: list[str],
              redshift: np.ndarray) -> dict[str, np.ndarray]:
    """beta, beta_err, A_V_meurer, A_V_meurer_err and the bands used, per source.

    ``flux``/``flux_err`` are ``(source, band)`` with ``bands`` in that order;
    sources with the same redshift-chosen band set are fitted together. Sources
    without a physical redshift (NaN, <= 0, ...) get NaN.
    """
    redshift = np.asarray(redshift, float)
    n = len(redshift)
    beta, beta_err = np.full(n, np.nan), np.full(n, np.nan)
    used = np.full(n, "", dtype=object)
    chosen = [tuple(uv_bands(bands, z)) if ok else () for z, ok in zip(redshift, physical_redshifts(redshift))]
    for band_set in set(chosen):
        rows = np.array([c == band_set for c in chosen])
        if len(band_set) < 2:
            continue
        idx = [bands.index(b) for b in band_set]
        pivots = np.array([band_geometry(b)[0] for b in band_set])
        beta[rows], beta_err[rows] = fit_beta(flux[rows][:, idx], flux_err[rows][:, idx], pivots)
        used[rows] = "+".join(band_set)
    av, av_err = meurer_av(beta, beta_err)
    return {"beta": beta, "beta_err": beta_err, "A_V_meurer": av, "A_V_meurer_err": av_err,
            "beta_bands": used.astype(str)}


__all__ = ["band_geometry", "fit_beta", "meurer_av", "uv_bands", "uv_slopes"]

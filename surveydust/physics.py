"""Physical helpers: attenuation laws, AB magnitudes, flux units, cosmology.

Units: wavelengths in Angstrom, flux densities in nJy, luminosities in erg/s.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import extinction
import numpy as np

from surveydust.errors import InputError

AB_ZEROPOINT_NJY = 3631.0e9
#: total-to-selective ratio of the local attenuation laws the simulator offers
#: (salim: the Calzetti value; the slope changes the effective R_V)
LAW_R_V = {"calzetti": 4.05, "smc": 2.74, "salim": 4.05, "mw": 3.1}
#: Gordon et al. (2003) SMC bar average: wavenumber [1/um] and A(lambda)/A(V) (their Table 4)
_G03_SMC_X = np.array([0.455, 0.606, 0.800, 1.235, 1.538, 1.818, 2.273, 2.703, 3.375, 3.625, 3.875,
                       4.125, 4.375, 4.625, 4.875, 5.125, 5.375, 5.625, 5.875, 6.125, 6.375, 6.625,
                       6.875, 7.125, 7.375, 7.625, 7.875, 8.125, 8.375, 8.625])
_G03_SMC_AXAV = np.array([0.110, 0.169, 0.250, 0.567, 0.801, 1.000, 1.374, 1.672, 2.000, 2.220, 2.428,
                          2.661, 2.947, 3.161, 3.293, 3.489, 3.637, 3.866, 4.013, 4.243, 4.472, 4.776,
                          5.000, 5.272, 5.575, 5.795, 6.074, 6.297, 6.436, 6.992])
#: 2175 A bump: centre and FWHM [Angstrom] of the Drude profile (Noll et al. 2009)
BUMP_CENTRE_AA, BUMP_WIDTH_AA = 2175.0, 350.0


def attenuation_curve(wave_aa: np.ndarray, law: str = "calzetti", delta: float = 0.0,
                      bump: float = 0.0) -> np.ndarray:
    """A_lambda / A_V at rest-frame wavelengths ``wave_aa`` [Angstrom].

    ``calzetti``: Calzetti et al. (2000) starburst attenuation (R_V = 4.05),
    extrapolated outside 0.12-2.2 um by the same formula. ``smc``: the Gordon
    et al. (2003) SMC bar average, interpolated in wavenumber (linearly
    extrapolated beyond 0.11-2.2 um). ``salim``: the Noll et al. (2009) / Salim
    et al. (2018) family, Calzetti times ``(lambda / 5500 A)**delta`` plus a
    Drude bump of amplitude ``bump`` (E_b, in units of k = A_lambda / E(B-V)),
    normalised to 1 at 5500 A. ``mw``: Fitzpatrick (1999) Milky Way extinction
    with R_V = 3.1.
    """
    wave = np.asarray(wave_aa, dtype=np.float64)
    if law == "calzetti":
        return extinction.calzetti00(wave, 1.0, LAW_R_V["calzetti"])
    if law == "smc":
        x = 1e4 / wave
        inside = np.interp(x, _G03_SMC_X, _G03_SMC_AXAV)
        lo = np.polyval(np.polyfit(_G03_SMC_X[:2], _G03_SMC_AXAV[:2], 1), x)
        hi = np.polyval(np.polyfit(_G03_SMC_X[-2:], _G03_SMC_AXAV[-2:], 1), x)
        return np.maximum(np.where(x < _G03_SMC_X[0], lo, np.where(x > _G03_SMC_X[-1], hi, inside)), 0.0)
    if law == "salim":
        def k(w: np.ndarray) -> np.ndarray:
            drude = bump * (w * BUMP_WIDTH_AA) ** 2 / ((w**2 - BUMP_CENTRE_AA**2) ** 2 + (w * BUMP_WIDTH_AA) ** 2)
            return LAW_R_V["calzetti"] * extinction.calzetti00(w, 1.0, LAW_R_V["calzetti"]) \
                * (w / 5500.0) ** delta + drude
        return k(wave) / k(np.array([5500.0]))[0]
    if law == "mw":
        return extinction.fitzpatrick99(wave, 1.0, LAW_R_V["mw"])
    raise InputError(f"unknown dust law {law!r}; known: {', '.join(LAW_R_V)}")


def ab_to_njy(mag: float | np.ndarray) -> float | np.ndarray:
    """AB magnitude to flux density in nJy."""
    return AB_ZEROPOINT_NJY * 10.0 ** (-0.4 * np.asarray(mag))


def njy_to_ab(flux_njy: float | np.ndarray) -> float | np.ndarray:
    """Flux density in nJy to AB magnitude (NaN for non-positive flux)."""
    f = np.asarray(flux_njy, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, -2.5 * np.log10(f / AB_ZEROPOINT_NJY), np.nan)


def mjy_per_sr_to_njy(values: np.ndarray, pixel_area_sr: float) -> np.ndarray:
    """Surface brightness in MJy/sr to flux per pixel in nJy (1 MJy = 1e15 nJy)."""
    return np.asarray(values) * (1e15 * pixel_area_sr)


def njy_per_pixel_factor(unit: Any, area_sr: float) -> float | None:
    """Factor turning image values in ``unit`` (an astropy unit: a surface brightness such as
    MJy/sr, or a flux density such as nJy or uJy) into flux per pixel [nJy], for pixels of
    ``area_sr`` [sr]; None for any other unit."""
    import astropy.units as u

    if unit.is_equivalent(u.MJy / u.sr):
        return float(mjy_per_sr_to_njy(unit.to(u.MJy / u.sr), area_sr))
    if unit.is_equivalent(u.nJy):
        return float(unit.to(u.nJy))
    return None


def pixel_area_sr(pixel_scale_arcsec: float) -> float:
    """Solid angle of a square pixel [sr]."""
    return float(np.deg2rad(pixel_scale_arcsec / 3600.0) ** 2)


@lru_cache(maxsize=256)
def luminosity_distance_cm(redshift: float) -> float:
    """Luminosity distance [cm] in the Planck 2018 cosmology."""
    from astropy.cosmology import Planck18  # 2 s to import: only where needed

    return float(Planck18.luminosity_distance(redshift).to("cm").value)


@lru_cache(maxsize=256)
def kpc_per_arcsec(redshift: float) -> float:
    """Proper transverse scale [kpc / arcsec] in the Planck 2018 cosmology."""
    from astropy.cosmology import Planck18

    return float(1.0 / Planck18.arcsec_per_kpc_proper(redshift).value)

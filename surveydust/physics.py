"""Physical helpers: attenuation laws, AB magnitudes, flux units, cosmology.

Units: wavelengths in Angstrom, flux densities in nJy, luminosities in erg/s.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import extinction
import numpy as np

AB_ZEROPOINT_NJY = 3631.0e9
#: total-to-selective ratio of the local attenuation laws the simulator offers
LAW_R_V = {"calzetti": 4.05, "mw": 3.1}


def attenuation_curve(wave_aa: np.ndarray, law: str = "calzetti") -> np.ndarray:
    """A_lambda / A_V at rest-frame wavelengths ``wave_aa`` [Angstrom].

    ``calzetti``: Calzetti et al. (2000) starburst attenuation (R_V = 4.05),
    extrapolated outside 0.12-2.2 um by the same formula. ``mw``: Fitzpatrick
    (1999) Milky Way extinction with R_V = 3.1.
    """
    wave = np.asarray(wave_aa, dtype=np.float64)
    if law == "calzetti":
        return extinction.calzetti00(wave, 1.0, LAW_R_V["calzetti"])
    if law == "mw":
        return extinction.fitzpatrick99(wave, 1.0, LAW_R_V["mw"])
    raise ValueError(f"unknown dust law {law!r}; known: {', '.join(LAW_R_V)}")


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

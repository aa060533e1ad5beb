"""JWST/NIRCam instrument model: bandpasses, PSFs and survey depths.

Bandpasses are the post-flight NIRCam throughputs shipped with astro-sedpy.
PSF FWHMs and depths are approximate public values; depths are 5-sigma AB
magnitudes of point sources in 0.1 arcsec radius apertures.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from surveydust.errors import InputError
from surveydust.physics import ab_to_njy

C_AA_PER_S = 2.99792458e18
LYMAN_ALPHA_AA = 1215.67
#: rest-frame coverage of the shipped SED library [Angstrom]
SED_WAVE_RANGE_AA = (900.0, 12000.0)

#: band -> (astro-sedpy filter name, PSF FWHM [arcsec])
NIRCAM_BANDS: dict[str, tuple[str, float]] = {
    "F090W": ("jwst_f090w", 0.033),
    "F115W": ("jwst_f115w", 0.040),
    "F150W": ("jwst_f150w", 0.050),
    "F200W": ("jwst_f200w", 0.066),
    "F277W": ("jwst_f277w", 0.092),
    "F356W": ("jwst_f356w", 0.116),
    "F410M": ("jwst_f410m", 0.137),
    "F444W": ("jwst_f444w", 0.145),
}
KNOWN_BANDS = tuple(NIRCAM_BANDS)
#: rest-frame continuum windows [Angstrom] that define A_V and E(B-V) (A_V = A(5500 A));
#: 100 A wide so that nebular lines, which fill broad B and V, stay out
REST_BANDS = {"B": (4350.0, 4450.0), "V": (5450.0, 5550.0)}

DEPTH_PRESETS: dict[str, dict[str, float]] = {
    # CEERS (Finkelstein et al. 2023), approximate
    "ceers": {"F090W": 28.5, "F115W": 28.75, "F150W": 28.6, "F200W": 28.85,
              "F277W": 28.9, "F356W": 28.9, "F410M": 28.3, "F444W": 28.6},
    # JADES GOODS-S deep (Rieke et al. 2023; Eisenstein et al. 2023), approximate
    "jades": {"F090W": 29.4, "F115W": 29.6, "F150W": 29.7, "F200W": 29.8,
              "F277W": 30.0, "F356W": 30.0, "F410M": 29.6, "F444W": 29.7},
}
DEPTH_APERTURE_RADIUS_ARCSEC = 0.1


def check_bands(bands: Sequence[Any]) -> tuple[str, ...]:
    """NIRCam band names as given (any case, spaces around), upper-cased; unknown or repeated
    ones are refused with one ``ValueError`` line."""
    names = tuple(str(b).strip().upper() for b in bands)
    unknown = [b for b in names if b not in KNOWN_BANDS]
    if unknown:
        raise InputError(f"unknown band(s) {unknown}; known: {', '.join(KNOWN_BANDS)}")
    if len(set(names)) != len(names):
        raise InputError(f"bands listed twice: {list(names)}")
    return names


@lru_cache(maxsize=32)
def bandpass(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Wavelength [Angstrom] and throughput of a NIRCam band or a rest window B/V."""
    from sedpy import observate

    if name in REST_BANDS:
        lo, hi = REST_BANDS[name]
        wave = np.linspace(lo - 1.0, hi + 1.0, 103)
        return wave, ((wave >= lo) & (wave <= hi)).astype(float)
    filt = observate.load_filters([NIRCAM_BANDS[name][0]])[0]
    return np.asarray(filt.wavelength, float), np.asarray(filt.transmission, float)


def band_weights(wave_rest_aa: np.ndarray, band: str, redshift: float = 0.0) -> np.ndarray:
    """Weights w such that sum(L_lambda * w) = (1 + z) <L_nu,rest> over the band.

    ``L_lambda`` is the rest-frame spectrum [erg/s/A] on ``wave_rest_aa``; the
    average is photon-counting over the throughput at ``wave_rest * (1 + z)``.
    Dividing the sum by ``4 pi d_L^2`` gives the observed flux density
    [erg/s/cm^2/Hz]; at z = 0 the sum is the band-averaged L_nu.
    """
    wave_obs = np.asarray(wave_rest_aa) * (1.0 + redshift)
    bw, bt = bandpass(band)
    thr = np.interp(wave_obs, bw, bt, left=0.0, right=0.0)
    dlam = np.gradient(wave_obs)
    norm = np.trapezoid(bt * C_AA_PER_S / bw, bw)
    # L_lambda(rest) -> L_lambda(obs frame) divides by (1+z); dlam is observed
    return thr * wave_obs * dlam / norm / (1.0 + redshift)


def check_redshift_coverage(bands: tuple[str, ...], redshift_range: tuple[float, float]) -> None:
    """Raise ValueError when a band cannot be modelled over the redshift range."""
    lo, hi = SED_WAVE_RANGE_AA
    zmin, zmax = redshift_range
    if zmin < 0:
        raise InputError(f"redshift must be >= 0, got {zmin}")
    for band in bands:
        bw, bt = bandpass(band)
        inside = bw[bt > 0.01 * bt.max()]
        blue, red = inside.min(), inside.max()
        if red / (1 + zmax) < LYMAN_ALPHA_AA:
            raise InputError(
                f"band {band} lies entirely blueward of Lyman-alpha at z = {zmax}: it would be empty")
        if blue / (1 + zmax) < lo or red / (1 + zmin) > hi:
            raise InputError(
                f"band {band} ({blue / 1e4:.2f}-{red / 1e4:.2f} um) is outside the SED library "
                f"({lo / 1e4:.2f}-{hi / 1e4:.2f} um rest frame) for redshifts {zmin}-{zmax}")


def moffat_psf(fwhm_arcsec: float, pixel_scale_arcsec: float, size: int = 25,
               beta: float = 2.5, oversample: int = 5) -> np.ndarray:
    """Pixel-integrated circular Moffat PSF, normalised to unit sum."""
    alpha = fwhm_arcsec / pixel_scale_arcsec / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n = size * oversample
    c = (np.arange(n) + 0.5) / oversample - size / 2.0
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    fine = (1.0 + r2 / alpha**2) ** (-beta)
    psf = fine.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return psf / psf.sum()


def fits_psf(path: Path, pixel_scale_arcsec: float, size: int = 41) -> np.ndarray:
    """Read a WebbPSF FITS model (HDU ``DET_DIST`` or the first image) resampled to
    ``pixel_scale_arcsec`` (flux conserving), cropped to ``size`` and normalised."""
    from scipy.ndimage import zoom

    with fits.open(path) as hdul:
        hdu = hdul["DET_DIST"] if "DET_DIST" in hdul else hdul[0]
        data = np.asarray(hdu.data, dtype=np.float64)
        scale = hdu.header.get("PIXELSCL")
    if scale is None:
        raise InputError(f"{path}: PSF header has no PIXELSCL (arcsec per pixel)")
    resampled = zoom(data, scale / pixel_scale_arcsec, order=1)
    cy, cx = np.unravel_index(np.argmax(resampled), resampled.shape)
    h = size // 2
    cut = resampled[cy - h:cy + h + 1, cx - h:cx + h + 1]
    if cut.shape != (size, size):
        raise InputError(f"{path}: PSF too small for a {size}x{size} kernel")
    return cut / cut.sum()


def psf_kernel(band: str, pixel_scale_arcsec: float, psf: str = "moffat",
               psf_dir: Path | None = None) -> np.ndarray:
    """PSF kernel of ``band`` on the pixel grid (Moffat approximation or FITS model)."""
    if psf == "moffat":
        return moffat_psf(NIRCAM_BANDS[band][1], pixel_scale_arcsec)
    path = Path(psf_dir) / f"{band.lower()}_psf.fits"
    if not path.is_file():
        raise InputError(f"no PSF file for {band}: expected {path}")
    return fits_psf(path, pixel_scale_arcsec)


def pixel_noise_njy(depth_mag: float, pixel_scale_arcsec: float) -> float:
    """Per-pixel Gaussian sigma [nJy] giving 5-sigma = ``depth_mag`` in a 0.1" aperture
    (uncorrelated noise)."""
    n_pix = np.pi * (DEPTH_APERTURE_RADIUS_ARCSEC / pixel_scale_arcsec) ** 2
    return float(ab_to_njy(depth_mag) / 5.0 / np.sqrt(n_pix))


@lru_cache(maxsize=64)
def pivot_wavelength_aa(band: str) -> float:
    """Pivot wavelength of a band [Angstrom] (``sqrt(int T lambda / int T / lambda)``)."""
    wave, trans = bandpass(band)
    return float(np.sqrt(np.trapezoid(trans * wave, wave) / np.trapezoid(trans / wave, wave)))


def circular_aperture(n_pix: int, radius_pix: float) -> np.ndarray:
    """Boolean mask of the pixels of an ``n_pix`` x ``n_pix`` image within ``radius_pix``
    of its centre (pixel centres)."""
    c = np.arange(n_pix) - (n_pix - 1) / 2.0
    return (c[:, None] ** 2 + c[None, :] ** 2) <= radius_pix**2


def correlation_kernel(sigma_px: float) -> np.ndarray:
    """The Gaussian smoothing kernel of ``sigma_px`` (as ``gaussian_filter`` applies it),
    scaled to unit sum of squares so that smoothed white noise keeps its per-pixel sigma."""
    half = int(np.ceil(4.0 * sigma_px)) if sigma_px > 0 else 0
    delta = np.zeros((2 * half + 1, 2 * half + 1))
    delta[half, half] = 1.0
    k = gaussian_filter(delta, sigma_px, mode="constant") if sigma_px > 0 else delta
    return k / np.sqrt(np.sum(k**2))


def aperture_noise_factor(aperture: np.ndarray, sigma_px: float) -> float:
    """Noise sigma of an aperture sum in units of the per-pixel sigma, for noise correlated by
    a Gaussian of ``sigma_px`` pixels (``sqrt(n_pixels)`` for white noise)."""
    if sigma_px <= 0:
        return float(np.sqrt(aperture.sum()))
    weights = fftconvolve(aperture.astype(float), correlation_kernel(sigma_px), mode="full")
    return float(np.sqrt(np.sum(weights**2)))

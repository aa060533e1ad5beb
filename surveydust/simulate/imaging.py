"""Dust, light and instrument: from a galaxy's maps to NIRCam images and labels.

Dust follows the gas: tau_V(pixel) = dust_opacity * DTM * Z * Sigma_gas. Old
stars see a share of it as a foreground screen and are mixed uniformly with the
rest (transmission (1 - e^-tau) / tau); young (< 30 Myr) stars sit behind half
of it plus birth clouds whose optical depths scatter log-normally around
birth_cloud_tau_v * DTM * Z / 0.2 Z_sun. The law, the opacity, the birth clouds,
the screen share, the nebular line strength, Lyman-alpha, the IGM and the
instrument are the galaxy's draw of the priors (:mod:`surveydust.simulate.priors`).
Attenuation is applied per pixel at the intrinsic resolution with the local law in
the rest frame, integrated exactly over each band for each stellar component. Labels
A_V and E(B-V) are measured like SKIRT's: integrated attenuated over intrinsic
light in rest-frame Bessell B and V, so that mixing geometry and optically
thick clumps make the effective R_V differ from the local law's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft
from scipy.signal import fftconvolve

from surveydust.config import SimulationConfig
from surveydust.instrument import (
    LYMAN_ALPHA_AA,
    aperture_noise_factor,
    band_weights,
    circular_aperture,
    correlation_kernel,
)
from surveydust.physics import attenuation_curve, luminosity_distance_cm
from surveydust.simulate.morphology import Maps
from surveydust.simulate.population import SUN_METAL_FRACTION, YOUNG_BINS, Galaxy
from surveydust.simulate.priors import DUST_LAWS
from surveydust.simulate.sed_library import SEDLibrary

#: SNR aperture radius [arcsec]
SNR_APERTURE_ARCSEC = 0.25
BIRTH_CLOUD_REFERENCE_Z = 0.2
N_TAU = 48
#: attenuations below this [mag] are rounding noise of a unit transmission
LABEL_ROUNDING_MAG = 1e-9
#: escaping Lyman-alpha is placed in the transmitted red wing [Angstrom, rest]
LYA_RED_WING_AA = (1221.0, 1231.0)
LYMAN_LIMIT_AA = 911.8
#: birth-cloud tau_V relative to the median: log-normal (sigma = 1.5 in ln) at its deciles 1, 3, 5, 7, 9
BIRTH_CLOUD_SPREAD = np.exp(1.5 * np.array([-1.2816, -0.5244, 0.0, 0.5244, 1.2816]))


@dataclass(frozen=True)
class Photometry:
    """Per-component band luminosities and attenuation weights of one galaxy."""

    weights: np.ndarray      # (n_band + 2, n_wave) band weights incl. rest B, V (last two)
    lum: np.ndarray          # (2, n_wave) L_lambda of [old, young] [erg/s/A]
    k: np.ndarray            # (n_wave,) A_lambda / A_V of the local law
    njy_per_lnu: float       # weighted L (= (1+z) L_nu,rest) [erg/s/Hz] -> observed nJy
    screen_fraction: float   # share of the old stars' diffuse dust in a foreground screen


def _young_and_old(gal: Galaxy, lib: SEDLibrary, wave: np.ndarray) -> np.ndarray:
    """Rest-frame L_lambda [erg/s/A] of the old and young components, shape (2, n_wave), with the
    nebular lines scaled by the galaxy's draw and its escaping Lyman-alpha added to the young light."""
    lum_bins, _ = lib.at_metallicity(gal.metallicity)
    lines, _ = lib.at_metallicity(gal.metallicity, lines_only=True)
    lum_bins = lum_bins + (gal.nuisance.line_scale - 1.0) * lines
    per_bin = gal.mass_formed[:, None] * lum_bins
    young = per_bin[YOUNG_BINS].sum(axis=0)
    old = per_bin.sum(axis=0) - young
    wing = (wave >= LYA_RED_WING_AA[0]) & (wave <= LYA_RED_WING_AA[1])
    if gal.nuisance.lya_ew_aa > 0 and wing.any():
        continuum = np.median(young[(wave > 1250.0) & (wave < 1350.0)])
        young = young + wing * gal.nuisance.lya_ew_aa * continuum / np.trapezoid(wing * 1.0, wave)
    return np.array([old, young])


def igm_forest_transmission(redshift: float) -> float:
    """Mean Lyman-alpha forest transmission at ``redshift``: exp(-tau_eff) with the Becker et al.
    (2013) fit tau_eff = 0.751 ((1 + z) / 4.5)**2.9 - 0.132 (measured at z = 2-5). Extrapolated it
    gives 0.076 at z = 6, 0.021 at 7 and 0.004 at 8: the forest turns into Gunn-Peterson troughs
    (Fan et al. 2006; quasar sightlines at z ~ 6 find means of ~0.01 and below, Bosman et al. 2022).
    The one mean of the package: the photo-z templates, the foreground and, times each sightline's
    factor (``priors.igm_forest_factor``), the simulated z > 6 galaxies use it."""
    tau = 0.751 * ((1.0 + redshift) / 4.5) ** 2.9 - 0.132
    return float(np.clip(np.exp(-max(tau, 0.0)), 0.0, 1.0))


def igm_transmission(wave_rest_aa: np.ndarray, forest: float) -> np.ndarray:
    """IGM transmission at rest wavelengths [Angstrom] of a z > 6 galaxy: 1 redward of
    Lyman-alpha, ``forest`` in the Lyman-alpha forest, 0 beyond the Lyman limit."""
    wave = np.asarray(wave_rest_aa)
    return np.where(wave > LYMAN_ALPHA_AA + 5.0, 1.0, np.where(wave > LYMAN_LIMIT_AA, forest, 0.0))


def galaxy_photometry(gal: Galaxy, cfg: SimulationConfig, lib: SEDLibrary) -> Photometry:
    """Intrinsic spectra of the old and young components and the band weights."""
    wave = lib.wave_aa.astype(np.float64)
    nuisance = gal.nuisance
    forest = min(nuisance.igm_forest_factor * igm_forest_transmission(gal.redshift), 1.0)
    igm = igm_transmission(wave, forest)
    weights = [band_weights(wave, b, gal.redshift) * igm for b in cfg.bands]
    weights += [band_weights(wave, b) for b in ("B", "V")]
    d_l = luminosity_distance_cm(gal.redshift)
    njy = 1e32 / (4 * np.pi * d_l**2)  # erg/s/cm^2/Hz -> nJy
    weights = np.array(weights)
    used = weights.any(axis=0)  # only wavelengths that some band sees
    k = attenuation_curve(wave[used], DUST_LAWS[nuisance.dust_law], nuisance.salim_delta,
                          nuisance.bump_amplitude)
    return Photometry(weights[:, used], _young_and_old(gal, lib, wave)[:, used], k, njy,
                      nuisance.screen_fraction)


def screen_and_slab(tau: np.ndarray, screen_fraction: float) -> np.ndarray:
    """Transmission of light from stars mixed uniformly with a slab of optical depth
    ``(1 - f) tau`` behind a foreground screen of ``f tau`` (``f`` = ``screen_fraction``)."""
    inner = (1.0 - screen_fraction) * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        slab = np.where(inner > 1e-8, -np.expm1(-inner) / inner, 1.0)
    return np.exp(-screen_fraction * tau) * slab


def _transmission_tables(phot: Photometry, tau_grid: np.ndarray, tau_bc: float) -> np.ndarray:
    """Band-integrated transmission, shape (2, n_band + 2, n_tau), on ``tau_grid`` (tau_V)."""
    tau_l = tau_grid[:, None] * phot.k[None, :]                   # (n_tau, n_wave)
    mixed = screen_and_slab(tau_l, phot.screen_fraction)
    # young light: half the diffuse column plus an ensemble of birth clouds whose
    # optical depths scatter log-normally (thick ones black out: greyer at high DTM)
    birth_clouds = np.exp(-np.outer(tau_bc * BIRTH_CLOUD_SPREAD, phot.k)).mean(axis=0)
    screen = np.exp(-0.5 * tau_l) * birth_clouds[None, :]
    out = np.empty((2, phot.weights.shape[0], len(tau_grid)))
    for c, trans in enumerate((mixed, screen)):
        wl = phot.weights * phot.lum[c]                              # (n_band, n_wave)
        out[c] = (wl @ trans.T) / wl.sum(axis=1, keepdims=True)
    return out


class PSFSet:
    """PSF kernels of all bands, Fourier-transformed once for a given image size."""

    def __init__(self, kernels: np.ndarray, n_pix: int):
        self.n_pix, self.k = n_pix, kernels.shape[-1]
        self.shape = fft.next_fast_len(n_pix + self.k - 1, real=True)
        self.otf = fft.rfft2(kernels, s=(self.shape, self.shape))

    def convolve(self, images: np.ndarray) -> np.ndarray:
        """Convolve ``(n_band, n, n)`` images with their band's PSF ('same' size)."""
        full = fft.irfft2(fft.rfft2(images, s=(self.shape, self.shape)) * self.otf,
                          s=(self.shape, self.shape))
        start = (self.k - 1) // 2
        return full[:, start:start + self.n_pix, start:start + self.n_pix]


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise of ``shape`` (..., y, x), correlated between pixels by a
    Gaussian of ``sigma_px`` pixels (white for 0)."""
    if sigma_px <= 0:
        return rng.normal(size=shape)
    k = correlation_kernel(sigma_px)
    pad = k.shape[0] - 1  # white noise beyond the edges, so edge pixels keep their variance
    white = rng.normal(size=(*shape[:-2], shape[-2] + pad, shape[-1] + pad))
    return fftconvolve(white, k.reshape((1,) * (len(shape) - 2) + k.shape), mode="valid", axes=(-2, -1))


def _bin(a: np.ndarray, factor: int) -> np.ndarray:
    n = a.shape[-1] // factor
    return a.reshape(*a.shape[:-2], n, factor, n, factor).sum(axis=(-3, -1))


@dataclass(frozen=True)
class Observation:
    """One simulated image and its labels."""

    image: np.ndarray        # (n_band, n_pix, n_pix) nJy per pixel, float32
    a_v: float
    ebv: float
    snr: np.ndarray          # (n_band,)


def observe(maps: Maps, phot: Photometry, gal: Galaxy, dtm: float, cfg: SimulationConfig,
            psfs: PSFSet, sigma_njy: np.ndarray, rng: np.random.Generator,
            noise: bool = True, noise_correlation: bool = True) -> Observation:
    """Attenuate, image, convolve with the PSF, add noise, and measure labels.

    ``sigma_njy`` is the per-pixel noise [nJy] of each band; with
    ``noise_correlation`` the noise is correlated over the galaxy's drawn
    ``noise_correlation_px`` (same per-pixel sigma) and the SNR accounts for it.
    With ``noise=False`` the image is the noiseless PSF-convolved model (``rng``
    is not used) and ``snr`` is its expected signal-to-noise at ``sigma_njy``.
    """
    nuisance = gal.nuisance
    tau = nuisance.dust_opacity * dtm * SUN_METAL_FRACTION * gal.metallicity * maps.gas_column
    tau_bc = nuisance.birth_cloud_tau_v * dtm * gal.metallicity / BIRTH_CLOUD_REFERENCE_Z
    tau_grid = np.concatenate([[0.0], np.geomspace(1e-4, max(tau.max(), 1e-4) * 1.001, N_TAU - 1)])
    table = _transmission_tables(phot, tau_grid, tau_bc)
    profiles = (maps.old, maps.young)
    lnu = phot.weights @ phot.lum.T                                   # (n_band + 2, 2)

    # attenuated light per band and component at the intrinsic resolution
    n_band = len(cfg.bands)
    model = np.zeros((n_band,) + tau.shape)
    attenuated = np.zeros((n_band + 2, 2))
    for c, prof in enumerate(profiles):
        for b in range(n_band + 2):
            trans = np.interp(tau, tau_grid, table[c, b])
            attenuated[b, c] = lnu[b, c] * np.sum(prof * trans)
            if b < n_band:
                model[b] += lnu[b, c] * phot.njy_per_lnu * prof * trans

    a_b, a_v = (-2.5 * np.log10(attenuated[-2 + i].sum() / lnu[-2 + i].sum()) for i in range(2))
    binned = _bin(model, cfg.oversample)
    image = psfs.convolve(binned)
    corr = nuisance.noise_correlation_px if noise_correlation else 0.0
    if noise:
        image += correlated_noise(rng, image.shape, corr) * sigma_njy[:, None, None]
    ap = circular_aperture(cfg.stamp_size, SNR_APERTURE_ARCSEC / cfg.pixel_scale_arcsec)
    snr = image[:, ap].sum(axis=1) / (sigma_njy * aperture_noise_factor(ap, corr))
    return Observation(image.astype(np.float32), _label(a_v), _label(a_b - a_v), snr)


def _label(mag: float) -> float:
    """An attenuation label [mag]: rounding noise of a dust-free galaxy's transmission (~1e-16) is 0."""
    return float(mag) if mag > LABEL_ROUNDING_MAG else 0.0

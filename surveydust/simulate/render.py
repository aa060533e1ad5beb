"""Render one simulated galaxy: draw it, its PSFs and noise, its maps in one view, its observed stamps.

The one rendering chain of the simulator (SED library -> galaxy and photometry
-> PSFs and noise -> view -> maps -> observed, PSF-convolved stamps), used by
training stores (:mod:`surveydust.simulate.run`, noisy stamps per dust-to-metal
ratio) and by the demo field (:mod:`surveydust.simulate.field`, noiseless stamps
added into a mosaic). Pure numpy: no Dask, no files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from surveydust.config import SimulationConfig
from surveydust.instrument import pixel_noise_njy, psf_kernel
from surveydust.physics import kpc_per_arcsec
from surveydust.simulate.imaging import Observation, Photometry, PSFSet, galaxy_photometry, observe
from surveydust.simulate.morphology import View, render_maps
from surveydust.simulate.population import Galaxy, draw_galaxy
from surveydust.simulate.sed_library import SEDLibrary

__all__ = ["draw_with_photometry", "galaxy_instrument", "noise_sigma", "psf_kernels", "render_galaxy"]


def noise_sigma(cfg: SimulationConfig) -> np.ndarray:
    """Per-pixel Gaussian noise sigma of each band at the configured depth.

    Parameters
    ----------
    cfg : SimulationConfig
        Bands, depth (5-sigma AB magnitudes) and pixel scale [arcsec].

    Returns
    -------
    numpy.ndarray
        ``(n_band,)`` sigma [nJy per pixel], float64.
    """
    depth = cfg.depth_mag()
    return np.array([pixel_noise_njy(depth[b], cfg.pixel_scale_arcsec) for b in cfg.bands])


def psf_kernels(cfg: SimulationConfig, fwhm_scale: float = 1.0) -> np.ndarray:
    """PSF kernels of the configured bands, ``fwhm_scale`` x the nominal width.

    Parameters
    ----------
    cfg : SimulationConfig
        Bands, pixel scale [arcsec] and PSF model (``psf``, ``psf_dir``).
    fwhm_scale : float
        Width relative to the nominal PSF (dimensionless): a PSF drawn on pixels
        ``fwhm_scale`` x smaller is ``fwhm_scale`` x wider.

    Returns
    -------
    numpy.ndarray
        ``(n_band, k, k)`` kernels, each summing to 1.
    """
    return np.stack([psf_kernel(b, cfg.pixel_scale_arcsec / fwhm_scale, cfg.psf, cfg.psf_dir) for b in cfg.bands])


def galaxy_instrument(gal: Galaxy, cfg: SimulationConfig) -> tuple[PSFSet, np.ndarray]:
    """The PSFs and per-pixel noise of one galaxy's training stamps: the configured
    instrument with the galaxy's draw of PSF width and depth.

    Parameters
    ----------
    gal : Galaxy
        A drawn galaxy (its ``nuisance`` gives ``psf_fwhm_scale`` and ``depth_offset_mag`` [mag]).
    cfg : SimulationConfig
        The simulation config (bands, stamp size [pixels], depth).

    Returns
    -------
    tuple
        The :class:`PSFSet` for ``cfg.stamp_size`` stamps and the ``(n_band,)`` noise
        sigma [nJy per pixel].
    """
    kernels = psf_kernels(cfg, gal.nuisance.psf_fwhm_scale)
    return PSFSet(kernels, cfg.stamp_size), noise_sigma(cfg) * 10 ** (-0.4 * gal.nuisance.depth_offset_mag)


def draw_with_photometry(rng: np.random.Generator, cfg: SimulationConfig,
                         lib: SEDLibrary) -> tuple[Galaxy, Photometry]:
    """Draw one galaxy from the population and compute its band photometry.

    Parameters
    ----------
    rng : numpy.random.Generator
        The galaxy's own random stream (advanced by the draw).
    cfg : SimulationConfig
        Population priors, bands and redshift range.
    lib : SEDLibrary
        The stellar-population SED library (:func:`surveydust.simulate.sed_library.load_sed_library`).

    Returns
    -------
    tuple
        The :class:`Galaxy` and its :class:`Photometry`.
    """
    gal = draw_galaxy(rng, cfg, lib)
    return gal, galaxy_photometry(gal, cfg, lib)


def render_galaxy(gal: Galaxy, phot: Photometry, view: View, dtm_values: Sequence[float], cfg: SimulationConfig,
                  psfs: PSFSet, sigma_njy: np.ndarray, rng: np.random.Generator, *,
                  noise: bool = True) -> list[Observation]:
    """Render one galaxy in one view and observe it at each dust-to-metal ratio.

    The intrinsic maps of the view (``cfg.stamp_size`` pixels of ``cfg.pixel_scale_arcsec``,
    oversampled ``cfg.oversample`` x) are made once and attenuated, imaged, convolved with
    ``psfs`` and (with ``noise``) given noise for every value of ``dtm_values``, in that
    order.

    Parameters
    ----------
    gal, phot : Galaxy, Photometry
        The galaxy and its photometry (:func:`draw_with_photometry`).
    view : View
        Orientation and sub-pixel offset of the galaxy in the stamp.
    dtm_values : sequence of float
        Dust-to-metal ratios (dimensionless) to observe it at.
    cfg : SimulationConfig
        Bands, stamp size [pixels], pixel scale [arcsec], oversampling.
    psfs : PSFSet
        The PSFs of the bands for stamps of ``cfg.stamp_size``.
    sigma_njy : numpy.ndarray
        ``(n_band,)`` per-pixel noise sigma [nJy]: the noise added, and the SNR's reference.
    rng : numpy.random.Generator
        Stream the noise is drawn from (not used without ``noise``).
    noise : bool
        Add correlated noise over the galaxy's drawn correlation length (training stamps);
        False gives the noiseless PSF-convolved model (the demo field adds its own noise).

    Returns
    -------
    list of Observation
        One per dust-to-metal ratio: image [nJy per pixel, float32], A_V and E(B-V) [mag], SNR.
    """
    pix_kpc = cfg.pixel_scale_arcsec * kpc_per_arcsec(gal.redshift)
    maps = render_maps(gal, view, cfg.stamp_size, pix_kpc, cfg.oversample)
    return [observe(maps, phot, gal, dtm, cfg, psfs, sigma_njy, rng, noise=noise, noise_correlation=noise)
            for dtm in dtm_values]

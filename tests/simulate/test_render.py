"""The one rendering chain of one galaxy: training stores' samples are exactly its output,
its noise-free path is the noisy image minus the noise, and the instrument helpers."""

from __future__ import annotations

import numpy as np

from surveydust.config import load_simulation_config
from surveydust.instrument import psf_kernel
from surveydust.simulate.imaging import PSFSet, correlated_noise
from surveydust.simulate.morphology import draw_view
from surveydust.simulate.render import (
    draw_with_photometry,
    galaxy_instrument,
    noise_sigma,
    psf_kernels,
    render_galaxy,
)
from surveydust.simulate.run import simulate_galaxies
from surveydust.simulate.sed_library import load_sed_library


def test_training_samples_are_the_rendering_chain() -> None:
    cfg = load_simulation_config(n_galaxies=1, views_per_galaxy=2, dtm_values=[0.2, 0.5])
    out = simulate_galaxies(0, 1, cfg)
    rng = np.random.default_rng([cfg.seed, 0])
    gal, phot = draw_with_photometry(rng, cfg, load_sed_library())
    psfs, sigma = galaxy_instrument(gal, cfg)
    obs = [o for _ in range(2) for o in render_galaxy(gal, phot, draw_view(rng), cfg.dtm_values, cfg, psfs, sigma, rng)]
    assert out["image"].shape == (4, len(cfg.bands), cfg.stamp_size, cfg.stamp_size)
    np.testing.assert_array_equal(out["image"], np.stack([o.image for o in obs]))
    np.testing.assert_array_equal(out["A_V"], np.array([o.a_v for o in obs], np.float32))
    assert out["redshift"][0] == np.float32(gal.redshift)


def test_noise_free_path_is_the_noisy_image_minus_its_noise() -> None:
    """``render_galaxy(noise=False)`` (the demo field's stamps) is the noisy image minus exactly
    the (correlated) noise it would add."""
    cfg = load_simulation_config(n_galaxies=1)
    rng = np.random.default_rng(7)
    gal, phot = draw_with_photometry(rng, cfg, load_sed_library())
    view = draw_view(rng)
    psfs = PSFSet(psf_kernels(cfg), cfg.stamp_size)
    sigma = noise_sigma(cfg)
    (noisy,) = render_galaxy(gal, phot, view, [0.5], cfg, psfs, sigma, np.random.default_rng(1))
    (clean,) = render_galaxy(gal, phot, view, [0.5], cfg, psfs, sigma, np.random.default_rng(1), noise=False)
    added = correlated_noise(np.random.default_rng(1), noisy.image.shape, gal.nuisance.noise_correlation_px) \
        * sigma[:, None, None]
    np.testing.assert_allclose(noisy.image, clean.image + added, atol=1e-4)
    assert (noisy.a_v, noisy.ebv) == (clean.a_v, clean.ebv)
    assert clean.image.dtype == np.float32 and clean.image.shape == (len(cfg.bands), cfg.stamp_size, cfg.stamp_size)


def test_instrument_helpers() -> None:
    cfg = load_simulation_config(n_galaxies=1, depth="ceers")
    nominal = psf_kernels(cfg)
    np.testing.assert_array_equal(nominal[0], psf_kernel(cfg.bands[0], cfg.pixel_scale_arcsec, cfg.psf, cfg.psf_dir))
    wide = psf_kernels(cfg, 1.3)
    assert wide.shape[0] == len(cfg.bands) and wide[:, wide.shape[1] // 2, wide.shape[2] // 2].max() < nominal.max()
    sigma = noise_sigma(cfg)
    assert sigma.shape == (len(cfg.bands),) and np.all(sigma > 0)
    deep = noise_sigma(load_simulation_config(n_galaxies=1, depth="jades"))
    assert np.all(deep < sigma)

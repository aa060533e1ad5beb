"""Out-of-distribution scores (surveydust.ood): a stamp's photometric noise is measured from its own
pixels (white or correlated), the colour distribution is deconvolved from that noise and follows
redshift, the threshold flags the stated share of in-domain stamps, a colour excess is flagged where
the photometry can see it and not where noise hides it, brightness alone is never flagged,
bundles of the previous kind are still scored, and the vectorised float32 photometry measures what a
straightforward float64 one, written out here, does (the shipped bundles' scores and flags with it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from surveydust import ood
from surveydust.instrument import aperture_noise_factor, circular_aperture
from surveydust.ood import (
    BACKGROUND_RADIUS_PIX,
    FLAG_SHARE,
    MAX_MAG_ERR,
    aperture_photometry,
    colour_errors,
    colour_values,
    colours,
    fit_ood,
    ood_scores,
)
from surveydust.preprocess import NORM_APERTURE_PIX, crop_centre
from surveydust.robustness import auroc
from surveydust.simulate.imaging import correlated_noise

MIXING = np.random.default_rng(0).normal(size=(16, 16)) * 0.1
#: intrinsic covariance [mag^2] of the synthetic stamps' three adjacent colours
INTRINSIC = np.array([[0.04, 0.01, 0.0], [0.01, 0.03, 0.005], [0.0, 0.005, 0.02]])


def _photometry(rng: np.random.Generator, n: int, snr: np.ndarray | float, excess: float = 0.0,
                z: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Synthetic stamps' colour values (four bands, colours drifting with redshift, the last one
    ``excess`` mag redder) and their redshifts."""
    z = rng.uniform(6.0, 8.0, n) if z is None else z
    mean = np.column_stack([0.1 * (z - 7), -0.2 * (z - 7), 0.3 + 0.15 * (z - 7) ** 2])
    c = mean + rng.multivariate_normal(np.zeros(3), INTRINSIC, size=n)
    c[:, 2] += excess
    mag = np.column_stack([np.zeros(n), -np.cumsum(c, axis=1)]) + 27.0
    flux = 10 ** (-0.4 * (mag - 31.4))  # nJy
    error = flux[:, :1] / np.broadcast_to(np.asarray(snr, float), (n,))[:, None] * np.ones((1, 4))
    observed = flux + rng.normal(size=flux.shape) * error
    noisy, noise = colour_errors(observed, error)
    return {"colours": noisy, "noise": noise}, z


def _spaces(rng: np.random.Generator, n: int, **kwargs) -> tuple[dict[str, object], np.ndarray]:
    """Stand-ins for a network's ReLU features (correlated, partly zero) and colour values."""
    photometry, z = _photometry(rng, n, rng.uniform(5.0, 100.0, n), **kwargs)
    return {"features": np.maximum(rng.normal(size=(n, 16)) @ MIXING + 0.1, 0.0),
            "colour_likelihood": photometry}, z


def test_noise_is_measured_from_the_stamps_own_pixels() -> None:
    rng = np.random.default_rng(1)
    sigma = 3.0
    aperture = circular_aperture(32, NORM_APERTURE_PIX)
    source = np.zeros((32, 32))
    source[14:18, 14:18] = 50.0  # a compact source inside the aperture
    for corr in (0.0, 1.5):
        noise = correlated_noise(rng, (400, 2, 32, 32), corr) * sigma
        flux, error = aperture_photometry(noise + source, 32)
        assert np.median(error) == pytest.approx(sigma * aperture_noise_factor(aperture, corr), rel=0.12)
        assert np.median(flux) == pytest.approx(source.sum(), abs=np.median(error))
        # the error describes the scatter of the measured fluxes
        assert np.std(flux[:, 0]) == pytest.approx(np.median(error), rel=0.15)


def test_colour_errors_give_a_band_without_flux_no_weight() -> None:
    flux = np.array([[100.0, 200.0, -5.0]])
    error = np.array([[10.0, 10.0, 10.0]])
    c, cov = colour_errors(flux, error)
    assert c[0, 0] == pytest.approx(-2.5 * np.log10(100 / 200))
    assert cov[0, 0, 0] == pytest.approx((1.0857 * 0.1) ** 2 + (1.0857 * 0.05) ** 2, rel=1e-3)
    assert cov[0, 1, 1] >= 0.99 * MAX_MAG_ERR**2  # the negative flux band carries no colour information


def test_threshold_flags_the_stated_share_of_fresh_in_domain_stamps() -> None:
    (reference, z_ref), (calibration, z_cal), (fresh, z_fresh) = (_spaces(np.random.default_rng(s), 4000)
                                                                  for s in (1, 2, 3))
    stats = fit_ood(reference, calibration, z_ref, z_cal)
    assert stats["kind"] == "features+colour_likelihood" and stats["flag_share"] == FLAG_SHARE
    assert np.mean(ood_scores(calibration, stats, z_cal) > 1.0) == pytest.approx(FLAG_SHARE, abs=0.002)
    assert np.mean(ood_scores(fresh, stats, z_fresh) > 1.0) == pytest.approx(FLAG_SHARE, abs=0.015)
    # without redshifts the redshift-free fit scores them, as in-domain as ever
    assert np.mean(ood_scores(fresh, stats, np.full(4000, np.nan)) > 1.0) < 2 * FLAG_SHARE


def test_deconvolution_recovers_the_intrinsic_colour_spread() -> None:
    rng = np.random.default_rng(4)
    (reference, z_ref), (calibration, z_cal) = (_spaces(rng, 6000) for _ in range(2))
    space = fit_ood(reference, calibration, z_ref, z_cal)["spaces"]["colour_likelihood"]["with_redshift"]
    np.testing.assert_allclose(np.diag(space["cov"]), np.diag(INTRINSIC), rtol=0.2)
    np.testing.assert_allclose(np.asarray(space["coef"])[:, 2], [0.3, 0.0, 0.15], atol=0.03)


def test_a_colour_excess_is_flagged_where_the_photometry_can_see_it() -> None:
    rng = np.random.default_rng(5)
    (reference, z_ref), (calibration, z_cal) = (_spaces(rng, 4000) for _ in range(2))
    stats = fit_ood(reference, calibration, z_ref, z_cal)
    features = {"features": calibration["features"][:2000]}
    for snr, flagged in ((100.0, True), (1.5, False)):
        normal, z = _photometry(rng, 2000, snr)
        redder, _ = _photometry(rng, 2000, snr, excess=1.0, z=z)  # a 1 mag line excess in one band
        base = ood_scores({**features, "colour_likelihood": normal}, stats, z)
        shifted = ood_scores({**features, "colour_likelihood": redder}, stats, z)
        if flagged:
            assert np.mean(shifted > 1.0) > 0.9 and auroc(base, shifted) > 0.95
        else:  # buried in noise: no more flagged than in-domain stamps
            assert np.mean(shifted > 1.0) < 2 * FLAG_SHARE


def test_colours_ignore_brightness() -> None:
    rng = np.random.default_rng(6)
    images = rng.uniform(1.0, 2.0, size=(5, 3, 32, 32))
    assert colours(images, 32).shape == (5, 3)
    np.testing.assert_allclose(colours(images * 100.0, 32), colours(images, 32), atol=1e-9)
    assert colours(images[:, :1], 32).shape == (5, 0)
    bright, faint = (aperture_photometry(images * k + rng.normal(size=images.shape), 32) for k in (100.0, 1.0))
    np.testing.assert_allclose(colour_errors(*bright)[0], colour_errors(*faint)[0], atol=0.3)


def test_statistics_of_the_previous_kind_are_still_scored() -> None:
    rng = np.random.default_rng(7)
    x = {"features": np.maximum(rng.normal(size=(500, 16)) @ MIXING + 0.1, 0.0),
         "colours": rng.normal(0.0, 0.2, size=(500, 3))}
    mean = {k: v.mean(axis=0).tolist() for k, v in x.items()}
    precision = {k: np.linalg.inv(np.cov(v, rowvar=False) + 1e-6 * np.eye(v.shape[1])).tolist() for k, v in x.items()}
    stats = {"kind": "features+colours", "threshold": 2.0,
             "spaces": {k: {"mean": mean[k], "precision": precision[k], "scale": 1.0} for k in x}}
    score = ood_scores(x, stats, np.full(500, 7.0))
    assert score.shape == (500,) and np.all(np.isfinite(score)) and np.median(score) > 0.5


def _reference_photometry(images: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`aperture_photometry` measures, written out one band-stamp at a time in float64:
    the aperture sum; the sky's median, the MAD scatter (x 1.4826) of the sky-subtracted background;
    the correlation of adjacent background pixels both within 3 sigma, its Gaussian length and the
    aperture's noise factor interpolated at it."""
    cut = crop_centre(np.asarray(images, dtype=np.float64), crop)
    aperture = circular_aperture(crop, NORM_APERTURE_PIX)
    background = ~circular_aperture(crop, BACKGROUND_RADIUS_PIX)
    grid = np.linspace(0.0, 3.0, 31)
    factors = [aperture_noise_factor(aperture, s) for s in grid]
    flux, error = np.empty(cut.shape[:2]), np.empty(cut.shape[:2])
    for i, j in np.ndindex(*cut.shape[:2]):
        img = cut[i, j]
        centred = img - np.median(img[background])
        sigma = 1.4826 * np.median(np.abs(centred[background]))
        quiet = background & (np.abs(centred) < 3.0 * sigma)
        num = den = 0.0
        for dy, dx in ((0, 1), (1, 0)):
            a, b = centred[:crop - dy, :crop - dx], centred[dy:, dx:]
            both = quiet[:crop - dy, :crop - dx] & quiet[dy:, dx:]
            num += np.sum(a[both] * b[both])
            den += np.sum(0.5 * (a[both] ** 2 + b[both] ** 2))
        rho = min(max(num / den if den > 0 else 0.0, 1e-6), 0.99)
        length = np.sqrt(-1.0 / (4.0 * np.log(rho))) if rho > 0.02 else 0.0
        flux[i, j] = img[aperture].sum()
        error[i, j] = sigma * np.interp(length, grid, factors)
    return flux, error


def _galaxy_stamps(rng: np.random.Generator, n: int, bands: int, size: int = 36) -> np.ndarray:
    """Random stamps: an elliptical Gaussian source of random size, flux and colours (some faint, some
    bright enough to reach the background ring), a sky offset, white or correlated noise of random level."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2.0
    out = np.empty((n, bands, size, size))
    for i in range(n):
        q, r = rng.uniform(0.3, 1.0), rng.uniform(0.7, 6.0)
        shape = np.exp(-0.5 * (x**2 + (y / q) ** 2) / r**2)
        noise = correlated_noise(rng, (bands, size, size), rng.choice([0.0, rng.uniform(0.3, 2.0)]))
        out[i] = (10 ** rng.uniform(-1.0, 3.0, (bands, 1, 1)) * shape + rng.normal(0.0, 0.5, (bands, 1, 1))
                  + rng.uniform(0.5, 5.0) * noise)
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_photometry_matches_a_straightforward_reference(dtype) -> None:
    rng = np.random.default_rng(8)
    images = _galaxy_stamps(rng, 40, 4).astype(dtype)
    images[0, 1, 5, 5] = np.nan  # a NaN sky pixel: no scatter for that band (as np.median)
    images[1, 2, 18, 17] = np.nan  # a NaN in the aperture: no flux, the scatter is still measured
    images[2, 0, 16, 20] = np.inf
    for crop in (32, 27):
        with np.errstate(invalid="ignore"):
            flux, error = aperture_photometry(images, crop)
            want_flux, want_error = _reference_photometry(images, crop)
        np.testing.assert_array_equal(np.isnan(error), np.isnan(want_error))
        np.testing.assert_array_equal(np.isfinite(flux), np.isfinite(want_flux))
        assert np.isnan(error[0, 1]) and np.isnan(flux[1, 2]) and np.isfinite(error[1, 2])
        finite = np.isfinite(want_flux)
        # float32 stamps are measured in float32 (the flux summed in float64): round-off only
        np.testing.assert_allclose(flux[finite], want_flux[finite], rtol=1e-12)
        ok = np.isfinite(want_error)
        np.testing.assert_allclose(error[ok], want_error[ok], rtol=1e-12 if dtype == np.float64 else 2e-5)


@pytest.mark.parametrize("width", [0, 1, 2, 7, 640])
def test_row_medians_are_numpys_medians(width: int) -> None:
    rng = np.random.default_rng(width)
    for dtype in (np.float64, np.float32):
        a = rng.normal(size=(50, width)).astype(dtype)
        a[:, :width // 3] = 1.0  # ties
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the median of nothing
            want = np.median(a.astype(np.float64), axis=1)
        np.testing.assert_array_equal(ood._row_medians(a.copy()), want)


def test_photometry_is_the_same_in_blocks_and_for_correlated_noise_of_every_length(monkeypatch) -> None:
    rng = np.random.default_rng(9)
    images = np.concatenate([correlated_noise(rng, (30, 2, 32, 32), s) for s in (0.0, 0.5, 1.0, 2.0)])
    whole = aperture_photometry(images, 32)
    monkeypatch.setattr(ood, "PHOTOMETRY_ROWS", 7)  # blocks that split stamps' bands
    np.testing.assert_array_equal(aperture_photometry(images, 32), whole)
    np.testing.assert_allclose(whole, _reference_photometry(images, 32), rtol=1e-12)
    assert aperture_photometry(images[:0], 32)[1].shape == (0, 2)


def test_shipped_bundles_score_and_flag_as_the_reference_photometry_does(monkeypatch) -> None:
    """The OOD scores of ``Predictor.predict`` with the fast photometry against the same prediction with
    the reference photometry swapped in: float round-off apart, with the same flags."""
    from surveydust.bundle import load_model

    rng = np.random.default_rng(10)
    images = _galaxy_stamps(rng, 150, 6, size=32).astype(np.float32)
    z = rng.uniform(6.0, 8.5, len(images))
    six = ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
    for bands in (six, ("F277W", "F356W", "F444W")):
        p = load_model(bands=list(bands))
        assert "colour_likelihood" in p.meta["ood"]["spaces"]
        img = images[:, [six.index(b) for b in bands]]
        fast = p.predict(img, z)["ood"].values
        with monkeypatch.context() as m:
            m.setattr(ood, "aperture_photometry", _reference_photometry)
            want = p.predict(img, z)["ood"].values
        np.testing.assert_allclose(fast, want, rtol=1e-5)
        np.testing.assert_array_equal(fast > 1.0, want > 1.0)
        assert 0.0 < np.mean(want > 1.0) < 1.0  # some stamps flagged, not all: the test can tell


def test_colour_values_follow_the_reference_photometry() -> None:
    rng = np.random.default_rng(11)
    images = _galaxy_stamps(rng, 60, 3).astype(np.float32)
    got = colour_values(images, 32)
    c, cov = colour_errors(*_reference_photometry(images, 32))
    np.testing.assert_allclose(got["colours"], c, rtol=0, atol=1e-5)  # [mag]
    np.testing.assert_allclose(got["noise"], cov, rtol=1e-5)

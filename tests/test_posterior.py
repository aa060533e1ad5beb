"""Posteriors: target transforms, calibrated percentiles, CRPS and coverage (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.posterior import (
    LEVELS,
    LOG_OFFSETS,
    NOMINAL_Z,
    calibrate,
    coverage,
    crps_from_percentiles,
    from_network,
    percentiles,
    residual,
    to_network,
)
from surveydust.quantities import PREDICTED, UNITS, quantity

NONNEGATIVE = ("A_V", "EBV")


@pytest.mark.parametrize("target", NONNEGATIVE)
def test_log_transform_round_trips_and_is_ln_x_plus_c(target: str) -> None:
    x = np.array([0.0, 1e-4, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0])
    t = to_network(target, x)
    np.testing.assert_allclose(t, np.log(x + LOG_OFFSETS[target]))
    np.testing.assert_allclose(from_network(target, t), x, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(t) > 0)  # monotonic: percentiles map one to one
    # negative inputs are clipped to 0 (a dust-free galaxy), not turned into NaN
    np.testing.assert_allclose(to_network(target, np.array([-0.3])), np.log(LOG_OFFSETS[target]))
    # anything the network says maps back to a non-negative value
    assert (from_network(target, np.linspace(-20, 5, 101)) >= 0).all()


def test_log_ssfr_is_modelled_as_it_is() -> None:
    x = np.array([-11.0, -8.2, -7.0])
    np.testing.assert_array_equal(to_network("log_ssfr", x), x)
    np.testing.assert_array_equal(from_network("log_ssfr", x), x)


@pytest.mark.parametrize("target", NONNEGATIVE)
def test_percentiles_never_negative_and_ordered(target: str) -> None:
    rng = np.random.default_rng(0)
    mean = rng.uniform(-12.0, 2.0, 500)  # down to means far below ln(c): most mass at 0 mag
    sigma = rng.uniform(0.01, 5.0, 500)
    for levels in (None, [0.001, 0.1, 0.4, 0.95, 0.999]):
        pct = percentiles(target, mean, sigma, levels)
        assert pct.shape == (500, len(LEVELS))
        assert np.isfinite(pct).all() and (pct >= 0).all()
        assert (np.diff(pct, axis=1) >= 0).all()
    # the median is the transform of the Gaussian's mean
    np.testing.assert_allclose(percentiles(target, mean, sigma)[:, LEVELS.index(0.5)],
                               from_network(target, mean), rtol=1e-12, atol=1e-15)


def test_percentiles_of_an_untransformed_target_are_gaussian() -> None:
    pct = percentiles("log_ssfr", np.array([-8.0]), np.array([0.5]))[0]
    np.testing.assert_allclose(pct, -8.0 + 0.5 * np.array([-1.959964, -0.994458, 0.0, 0.994458, 1.959964]),
                               atol=1e-5)
    assert (pct < 0).all()  # no clipping at 0 for log sSFR


def _draws(rng: np.random.Generator, target: str, n: int, true_sigma: float):
    """Network-space means, and truths drawn from N(mean, true_sigma), in physical units."""
    mean = rng.uniform(-1.5, 0.5, n) if target in NONNEGATIVE else rng.uniform(-10.0, -7.0, n)
    t = mean + true_sigma * rng.normal(size=n)
    return mean, from_network(target, t)


@pytest.mark.parametrize("target", ("log_ssfr", "A_V"))
def test_calibration_widens_a_too_narrow_gaussian_to_nominal_coverage(target: str) -> None:
    rng = np.random.default_rng(1)
    true_sigma, claimed = 0.4, 0.2  # the network claims half the real scatter
    mean, truth = _draws(rng, target, 4000, true_sigma)
    z = calibrate({target: truth}, {target: mean}, {target: np.full(mean.size, claimed)})[target]
    assert len(z) == len(LEVELS) and np.all(np.diff(z) > 0)
    np.testing.assert_allclose(z, 2 * np.array(NOMINAL_Z), rtol=0.1, atol=0.08)  # twice the claimed sigma

    fresh_mean, fresh_truth = _draws(rng, target, 20000, true_sigma)  # fresh draws, not the calibration set
    sigma = np.full(fresh_mean.size, claimed)
    raw = percentiles(target, fresh_mean, sigma)
    cal = percentiles(target, fresh_mean, sigma, z)
    assert coverage(fresh_truth, raw[:, 1], raw[:, 3]) < 0.45  # uncalibrated: far too narrow
    assert coverage(fresh_truth, raw[:, 0], raw[:, 4]) < 0.7
    assert coverage(fresh_truth, cal[:, 1], cal[:, 3]) == pytest.approx(0.68, abs=0.02)
    assert coverage(fresh_truth, cal[:, 0], cal[:, 4]) == pytest.approx(0.95, abs=0.01)


def test_calibration_of_a_right_gaussian_keeps_the_nominal_offsets() -> None:
    rng = np.random.default_rng(2)
    mean, truth = _draws(rng, "log_ssfr", 20000, 0.3)
    z = calibrate({"log_ssfr": truth}, {"log_ssfr": mean}, {"log_ssfr": np.full(mean.size, 0.3)})
    np.testing.assert_allclose(z["log_ssfr"], NOMINAL_Z, atol=0.04)


def test_a_far_too_sure_network_still_gets_five_distinct_percentiles() -> None:
    """Residuals of hundreds of sigma (a barely trained network): as Gaussian levels they
    round to 0 or 1 and two percentiles would coincide; as offsets they stay apart."""
    rng = np.random.default_rng(4)
    mean, truth = _draws(rng, "A_V", 400, 0.5)
    z = calibrate({"A_V": truth}, {"A_V": mean}, {"A_V": np.full(mean.size, 1e-3)})["A_V"]
    assert np.all(np.diff(z) > 0) and z[0] < -300 and z[-1] > 300
    pct = percentiles("A_V", mean, np.full(mean.size, 1e-3), z)
    assert np.all(np.diff(pct, axis=1) >= 0) and np.all(pct[:, 4] > pct[:, 3])
    assert coverage(truth, pct[:, 0], pct[:, 4]) == pytest.approx(0.95, abs=0.01)


def test_calibration_ignores_missing_truths_and_needs_enough() -> None:
    rng = np.random.default_rng(3)
    mean = rng.normal(size=200)
    truth = mean + rng.normal(size=200)
    with_nan = truth.copy()
    with_nan[::4] = np.nan
    a = calibrate({"log_ssfr": with_nan}, {"log_ssfr": mean}, {"log_ssfr": np.ones(200)})
    b = calibrate({"log_ssfr": truth[~np.isnan(with_nan)]}, {"log_ssfr": mean[~np.isnan(with_nan)]},
                  {"log_ssfr": np.ones(150)})
    np.testing.assert_allclose(a["log_ssfr"], b["log_ssfr"])
    with pytest.raises(ValueError, match="only 10 calibration samples for log_ssfr") as err:
        calibrate({"log_ssfr": truth[:10]}, {"log_ssfr": mean[:10]}, {"log_ssfr": np.ones(10)})
    assert "\n" not in str(err.value)


def test_residual_is_in_network_space_and_units_of_sigma() -> None:
    np.testing.assert_allclose(residual("A_V", np.array([0.3]), to_network("A_V", np.array([0.3])), np.array([0.2])),
                               0.0)
    np.testing.assert_allclose(residual("A_V", np.array([0.95]), np.array([0.0]), np.array([0.5])), 0.0, atol=1e-12)
    np.testing.assert_allclose(residual("log_ssfr", np.array([10.0]), np.array([4.0]), np.array([2.0])), [3.0])


def test_crps_by_hand() -> None:
    zeros = np.zeros((2, len(LEVELS)))
    np.testing.assert_allclose(crps_from_percentiles(np.array([0.0, 1.0]), zeros), [0.0, 2 * np.mean(LEVELS)])
    # a point mass at the truth scores 0; any spread or offset scores more
    truth = np.array([0.7])
    assert crps_from_percentiles(truth, np.full((1, 5), 0.7))[0] == 0.0
    spread = 2 * np.mean(1 - np.array(LEVELS)) * 0.2
    assert crps_from_percentiles(truth, np.full((1, 5), 0.9))[0] == pytest.approx(spread)


def test_crps_prefers_a_sharp_right_posterior_and_a_calibrated_one() -> None:
    rng = np.random.default_rng(4)
    n = 20000
    mean = rng.uniform(-10.0, -7.0, n)
    truth = mean + 0.05 * rng.normal(size=n)
    narrow = crps_from_percentiles(truth, percentiles("log_ssfr", mean, np.full(n, 0.05)))
    wide = crps_from_percentiles(truth, percentiles("log_ssfr", mean, np.full(n, 1.0)))
    assert (narrow >= 0).all() and (wide >= 0).all()
    assert narrow.mean() < 0.2 * wide.mean()
    # proper: for truths with scatter 1, sigma 1 beats both too narrow and too wide
    truth = mean + rng.normal(size=n)
    score = {s: crps_from_percentiles(truth, percentiles("log_ssfr", mean, np.full(n, s))).mean()
             for s in (0.3, 1.0, 3.0)}
    assert score[1.0] < score[0.3] and score[1.0] < score[3.0]


def test_coverage_counts_finite_truths_only() -> None:
    truth = np.array([0.0, 1.0, 2.0, np.nan, 5.0])
    low = np.array([-1.0, 1.5, 1.0, 0.0, np.nan])
    high = np.array([1.0, 2.0, 2.0, 1.0, 6.0])
    assert coverage(truth, low, high) == pytest.approx(2 / 3)  # the edges count as inside
    assert np.isnan(coverage(np.array([np.nan]), np.array([0.0]), np.array([1.0])))


def test_quantity_names() -> None:
    for column, q in (("A_V", "A_V"), ("A_V_err", "A_V"), ("A_V_p16", "A_V"), ("A_V_p975", "A_V"),
                      ("EBV_p025", "EBV"), ("log_ssfr_p84", "log_ssfr"), ("R_V_err", "R_V")):
        assert quantity(column) == q, column
    assert set(PREDICTED) < set(UNITS) and UNITS["A_V"] == UNITS["EBV"] == "mag" and UNITS["R_V"] == ""

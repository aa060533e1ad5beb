"""UV slope fits and Meurer's IRX-beta relation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.uvslope import band_geometry, fit_beta, meurer_av, uv_bands, uv_slopes

SW = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]


def test_band_choice_follows_the_redshift() -> None:
    assert uv_bands(SW, 7.0) == ["F115W", "F150W", "F200W"]  # 1440-2480 A rest frame
    assert uv_bands(SW, 6.0) == ["F115W", "F150W"]  # F200W's pivot is at 2840 A
    assert uv_bands(SW, 8.0) == ["F150W", "F200W"]  # F115W's blue edge is below Lyman-alpha
    assert 19800 < band_geometry("F200W")[0] < 19950  # pivot [A]


def test_power_law_is_recovered_exactly() -> None:
    pivots = np.array([11540.0, 15009.0, 19876.0])
    for beta in (-2.5, -2.0, -1.0):
        flux = 30.0 * (pivots / 15000.0) ** (beta + 2)  # f_nu of f_lambda ~ lambda^beta
        b, err = fit_beta(flux[None], 0.05 * flux[None], pivots)
        assert b[0] == pytest.approx(beta, abs=1e-10) and err[0] > 0


def test_two_bands_give_the_colour_slope_and_its_error() -> None:
    pivots = np.array([15000.0, 20000.0])
    flux, err = np.array([[10.0, 12.0]]), np.array([[1.0, 1.2]])
    b, b_err = fit_beta(flux, err, pivots)
    by_hand = np.log10(12.0 / 10.0) / np.log10(20000.0 / 15000.0) - 2.0
    sigma = np.hypot(0.1, 0.1) / np.log(10) / np.log10(20000.0 / 15000.0)
    assert b[0] == pytest.approx(by_hand) and b_err[0] == pytest.approx(sigma)


def test_meurer_relation() -> None:
    av, err = meurer_av(np.array([-1.0, -2.5]), np.array([0.1, 0.1]))
    k = 2.4617  # Calzetti A(1600 A) / A_V
    assert av[0] == pytest.approx((4.43 - 1.99) / k, rel=1e-4)
    assert av[1] == 0.0  # bluer than beta = -2.23: no dust on this relation
    assert err[0] == pytest.approx(0.199 / k, rel=1e-4)


def test_non_positive_flux_gives_nan_and_sources_are_grouped_by_band_set() -> None:
    bands = ["F115W", "F150W", "F200W", "F277W"]
    flux = np.array([[10.0, 10.0, 10.0, 10.0], [10.0, -1.0, 10.0, 10.0], [10.0, 10.0, 10.0, 10.0]])
    out = uv_slopes(flux, np.ones_like(flux), bands, np.array([7.0, 7.0, 8.0]))
    assert out["beta"][0] == pytest.approx(-2.0) and np.isnan(out["beta"][1])
    assert list(out["beta_bands"]) == ["F115W+F150W+F200W"] * 2 + ["F150W+F200W"]
    assert out["A_V_meurer"][0] == pytest.approx((4.43 - 3.98) / 2.4617, rel=1e-3)

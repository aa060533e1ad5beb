"""Photometric redshifts: the template fit recovers known redshifts, tells a Balmer break from a
Lyman break with F090W, gives a normalised p(z), refuses bad input in one line; the dropout cut,
the learned estimator and the metrics behave."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.photoz import (
    LearnedPhotoZ,
    default_z_grid,
    dropout_selection,
    fit_photoz,
    luminosity_prior,
    photoz_metrics,
    selection_metrics,
    template_grid,
)
from surveydust.physics import ab_to_njy
from surveydust.simulate.foreground import band_fluxes, draw_sky_mix, galaxy_sed

SEVEN = ("F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
SIX = SEVEN[1:]


def _photometry(frac: tuple[float, ...], metallicity: float, a_v: float, z: float, mag_f277w: float,
                bands: tuple[str, ...] = SEVEN) -> np.ndarray:
    """Noiseless fluxes [nJy] of a library galaxy at ``z`` with F277W = ``mag_f277w``."""
    wave, sed = galaxy_sed(np.asarray(frac), metallicity, a_v=a_v, dust_law="smc")
    rel = band_fluxes(wave, sed, z, bands)
    return rel / rel[bands.index("F277W")] * float(ab_to_njy(mag_f277w))


def test_z7_galaxy_is_recovered_with_high_p() -> None:
    flux = _photometry((5.0, 10.0, 30.0, 0.0, 0.0), 0.1, 0.2, 7.0, 26.5)
    err = np.full_like(flux, float(ab_to_njy(28.5)) / 5)  # SNR ~ 30 in F277W, F090W a limit
    res = fit_photoz(flux, err, SEVEN)
    assert abs(res.z_phot[0] - 7.0) < 0.05 * 8.0
    assert res.z16[0] <= res.z_phot[0] <= res.z84[0]
    assert res.p_high_z[0] > 0.9
    assert dropout_selection(flux, err, SEVEN)[0]


def test_balmer_break_at_z15_is_not_high_z_with_f090w() -> None:
    flux = _photometry((0.002, 0.004, 0.014, 200.0, 200.0), 1.0, 0.3, 1.5, 25.5)
    err = 0.05 * flux + float(ab_to_njy(29.0)) / 5
    res = fit_photoz(flux, err, SEVEN)
    assert res.p_high_z[0] < 0.1
    assert abs(res.z_phot[0] - 1.5) < 0.15 * 2.5


def test_pz_is_normalised_and_percentiles_ordered() -> None:
    rng = np.random.default_rng(1)
    flux = _photometry((5.0, 10.0, 30.0, 50.0, 50.0), 0.4, 0.5, 2.5, 27.5)
    err = np.full_like(flux, float(ab_to_njy(28.6)) / 5 * 2.5)
    noisy = flux + rng.normal(size=(5, len(flux))) * err
    z = default_z_grid(0.02, 12.0)
    res = fit_photoz(noisy, np.broadcast_to(err, noisy.shape), SEVEN, z_grid=z, prior="flat")
    assert res.pz.shape == (5, len(z)) and np.array_equal(res.z_grid, z)
    np.testing.assert_allclose(np.trapezoid(res.pz, z, axis=1), 1.0, rtol=1e-9)
    assert (res.pz >= 0).all() and ((res.p_high_z >= 0) & (res.p_high_z <= 1)).all()
    assert (res.z16 <= res.z84).all() and (res.z_phot >= 0).all()
    assert np.isfinite(res.chi2).all() and np.isfinite(res.chi2_star).all()


def test_missing_band_is_ignored() -> None:
    flux = _photometry((5.0, 10.0, 30.0, 0.0, 0.0), 0.1, 0.2, 7.0, 26.5)
    err = np.full_like(flux, float(ab_to_njy(28.5)) / 5)
    flux[2], err[2] = np.nan, np.nan
    res = fit_photoz(flux, err, SEVEN)
    assert res.n_bands[0] == 6 and abs(res.z_phot[0] - 7.0) < 0.4


def test_bad_input_is_refused_in_one_line() -> None:
    flux = np.ones((3, 7))
    for kwargs, match in (({"err_njy": -np.ones((3, 7))}, "errors must be > 0"),
                          ({"err_njy": np.ones((3, 6))}, "shape of flux"),
                          ({"err_njy": np.ones((3, 7)), "prior": np.ones(5)}, "prior must have shape"),
                          ({"err_njy": np.ones((3, 7)), "prior": "eazy"}, "unknown prior")):
        with pytest.raises(ValueError, match=match) as info:
            fit_photoz(flux, bands=SEVEN, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"shape \(n_sources, 6\)"):
        fit_photoz(np.ones((3, 7)), np.ones((3, 7)), SIX)
    with pytest.raises(ValueError, match="unknown band"):
        fit_photoz(np.ones(2), np.ones(2), ["F277W", "F999W"])
    with pytest.raises(ValueError, match="evenly spaced"):
        template_grid(SEVEN, np.array([0.0, 1.0, 3.0]))


def test_luminosity_prior_rejects_bright_dropouts_only() -> None:
    z = default_z_grid(0.05, 10.0)
    prior = luminosity_prior(np.array([[ab_to_njy(22.0)] * 7, [ab_to_njy(28.0)] * 7]), SEVEN, z)
    assert (prior[:, z < 3] == 1).all()
    assert prior[0, np.searchsorted(z, 7.0)] < 1e-6  # M_UV ~ -25 at z = 7
    assert prior[1, np.searchsorted(z, 7.0)] > 0.5   # M_UV ~ -19


def test_dropout_cut_needs_f090w_for_z7() -> None:
    flux = _photometry((5.0, 10.0, 30.0, 0.0, 0.0), 0.1, 0.0, 7.0, 26.5)
    err = np.full_like(flux, float(ab_to_njy(28.5)) / 5)
    flat = np.full_like(flux, flux[4])
    assert list(dropout_selection(np.stack([flux, flat]), np.stack([err, err]), SEVEN)) == [True, False]
    assert not dropout_selection(flux[1:], err[1:], SIX)[0]


def test_metrics() -> None:
    m = photoz_metrics([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.2, 3.0])
    assert m["outliers"] == pytest.approx(0.25) and m["n"] == 4 and m["bias"] == pytest.approx(0.05)
    s = selection_metrics([True, True, False, False], [True, False, True, False])
    assert s["completeness"] == 0.5 and s["purity"] == 0.5 and s["n_selected"] == 2
    with pytest.raises(ValueError, match="shape"):
        selection_metrics([True], [True, False])


def test_learned_estimator_trains_and_predicts() -> None:
    mix = draw_sky_mix(400, SEVEN, seed=5, high_z_fraction=0.3)
    rng = np.random.default_rng(0)
    err = np.broadcast_to(np.array([ab_to_njy(28.6)] * 7) / 5 * 2.5, mix.flux_njy.shape)
    flux = mix.flux_njy + rng.normal(size=mix.flux_njy.shape) * err
    model = LearnedPhotoZ(SEVEN, max_iter=20)
    with pytest.raises(ValueError, match="not trained"):
        model.predict(flux, err)
    z, p = model.fit(flux, err, mix.redshift).predict(flux, err)
    assert z.shape == p.shape == (400,) and ((p >= 0) & (p <= 1)).all()
    high = mix.redshift > 6
    assert p[high].mean() > p[~high].mean() + 0.3

"""Photometric redshifts: the template fit recovers known redshifts, tells a Balmer break from a
Lyman break with F090W, gives a normalised p(z), refuses bad input in one line; the z > 6
selection keeps a clean dropout and rejects a brown dwarf, a detection blueward of the break and a
low-z galaxy, each for its reason; the dropout cut, the learned estimator and the metrics behave."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.photoz import (
    SELECTION_REASONS,
    LearnedPhotoZ,
    default_z_grid,
    dropout_selection,
    dwarf_sed,
    fit_photoz,
    luminosity_prior,
    photoz_metrics,
    pz_quantiles,
    select_high_z,
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
    z = default_z_grid(z_max=12.0)
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
    for bad in ([0.0, 1.0, 1.0], [0.0, 2.0, 1.0], [-0.5, 1.0], [0.0, np.nan], [1.0]):
        with pytest.raises(ValueError, match="increasing 1-D grid"):
            template_grid(SEVEN, np.array(bad))
    with pytest.raises(ValueError, match="0 < step"):
        default_z_grid(0.0)


def test_default_grid_is_even_in_ln_1_plus_z() -> None:
    z = default_z_grid()
    assert z[0] == 0.0 and z[-1] == 15.0
    step = np.diff(np.log1p(z))
    assert np.allclose(step, 0.01, rtol=0.02) and len(z) == 278
    # an uneven grid works end to end: the same source on both grids gets the same z_phot
    lin = np.round(np.arange(0.0, 15.005, 0.01), 6)
    grid = template_grid(SEVEN, lin)
    flux = 5.0 * grid.flux[grid.names.index("starburst_10myr_av0.5"), int(np.searchsorted(lin, 7.2))]
    fits = [fit_photoz(flux * 20, flux, SEVEN, z_grid=g, prior="flat") for g in (z, lin)]
    assert abs(fits[0].z_phot[0] - 7.2) <= 0.01 * 8.2 and abs(fits[1].z_phot[0] - 7.2) <= 0.011
    assert abs(fits[0].p_high_z[0] - fits[1].p_high_z[0]) < 0.01
    # p(z) restricted to z = 6-8 reaches the range's ends on a grid without points there
    fine = np.linspace(0.0, 15.0, 15001)
    pz = [np.exp(-0.5 * ((g - 6.3) / 0.4) ** 2)[None] for g in (z, fine)]
    levels = (0.0, 0.025, 0.5, 0.975, 1.0)
    coarse_q, fine_q = (pz_quantiles(p, g, levels, (6.0, 8.0))[0] for p, g in zip(pz, (z, fine)))
    assert coarse_q[0] == 6.0 and coarse_q[-1] == 8.0 and np.allclose(coarse_q, fine_q, atol=0.01)
    with pytest.raises(ValueError, match="inside the redshift grid"):
        pz_quantiles(pz[0], z, levels, (6.0, 16.0))


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


def _dropout(z: float = 7.5, mag: float = 26.0) -> tuple[np.ndarray, np.ndarray]:
    """A young, blue z = ``z`` galaxy at SNR ~ 40 in F277W, F090W a non-detection (noiseless)."""
    flux = _photometry((5.0, 10.0, 30.0, 0.0, 0.0), 0.1, 0.1, z, mag)
    return flux[None], np.full((1, 7), float(ab_to_njy(28.5)) / 5)


#: thresholds that switch off every criterion of select_high_z but the one under test
OFF = {"p_min": 0.0, "delta_chi2_min": -np.inf, "veto_snr": np.inf, "star_delta_chi2": np.inf}


def test_clean_dropout_is_selected_with_large_delta_chi2() -> None:
    flux, err = _dropout()
    sel = select_high_z(flux, err, SEVEN, fit_photoz(flux, err, SEVEN))
    assert sel.selected[0] and sel.reason[0] == ""
    assert sel.delta_chi2[0] >= 4 and sel.star_delta_chi2[0] < 0
    assert 6.5 < sel.z_candidate[0] < 8.5
    assert np.isnan(sel.blue_snr[0]) or sel.blue_snr[0] < 2


def test_detection_blueward_of_the_break_is_rejected() -> None:
    flux, err = _dropout(z=8.5)
    clean = select_high_z(flux, err, SEVEN, fit_photoz(flux, err, SEVEN), **{**OFF, "veto_snr": 2.0})
    assert clean.selected[0]
    flux[0, 0] = 5 * err[0, 0]  # F090W, fully blueward of Lyman-alpha at z > 7.3, detected at 5 sigma
    fit = fit_photoz(flux, err, SEVEN)
    only_veto = select_high_z(flux, err, SEVEN, fit, **{**OFF, "veto_snr": 2.0})
    assert only_veto.z_candidate[0] > 7.3 and only_veto.blue_snr[0] >= 2
    assert only_veto.reason[0] == "blue_detection"
    assert not select_high_z(flux, err, SEVEN, fit).selected[0]


def test_brown_dwarf_is_rejected() -> None:
    rel = band_fluxes(*dwarf_sed(1400.0, "lateT_Y"), 0.0, SEVEN, igm=False)
    flux = (rel / rel[SEVEN.index("F444W")] * float(ab_to_njy(25.0)))[None]
    err = np.full((1, 7), float(ab_to_njy(28.5)) / 5)
    fit = fit_photoz(flux, err, SEVEN)
    assert fit.chi2_star[0] < fit.chi2[0]
    only_star = select_high_z(flux, err, SEVEN, fit, **{**OFF, "star_delta_chi2": 0.0})
    assert only_star.reason[0] == "brown_dwarf" and only_star.star_delta_chi2[0] > 0
    assert not select_high_z(flux, err, SEVEN, fit).selected[0]
    # a resolved source is not a star: the test is skipped where compact is False
    assert select_high_z(flux, err, SEVEN, fit, **{**OFF, "star_delta_chi2": 0.0}, compact=[False]).selected[0]


def test_low_z_galaxies_are_rejected_with_a_reason() -> None:
    flux = np.stack([_photometry((0.002, 0.004, 0.014, 200.0, 200.0), 1.0, 0.3, 1.5, 25.5),
                     _photometry((5.0, 10.0, 30.0, 50.0, 50.0), 0.4, 2.0, 2.5, 27.0)])
    err = np.full_like(flux, float(ab_to_njy(28.5)) / 5)
    fit = fit_photoz(flux, err, SEVEN)
    sel = select_high_z(flux, err, SEVEN, fit)
    assert not sel.selected.any() and set(sel.reason) <= set(SELECTION_REASONS)
    assert (sel.delta_chi2 < 4).all()  # a low-z solution fits as well as, or better than, any z > 6 one
    # with P(z > 6) alone (p_min only) a source either passes or is rejected for that reason only
    assert set(select_high_z(flux, err, SEVEN, fit, **{**OFF, "p_min": 0.3}).reason) <= {"", "p_high_z"}


def test_selection_refuses_bad_input() -> None:
    flux, err = _dropout()
    fit = fit_photoz(flux, err, SEVEN)
    with pytest.raises(ValueError, match="fit is of 1 sources"):
        select_high_z(np.vstack([flux, flux]), np.vstack([err, err]), SEVEN, fit)
    with pytest.raises(ValueError, match="z_low_max"):
        select_high_z(flux, err, SEVEN, fit, z_low_max=7.0)
    with pytest.raises(ValueError, match="compact"):
        select_high_z(flux, err, SEVEN, fit, compact=[True, False])


def _mix_of_two(grid, first: str, second: str, z: float, mag_f277w: float = 24.0) -> tuple[np.ndarray, int]:
    """Fluxes [nJy] of a 50/50 mix (by F277W flux) of two templates of ``grid`` at ``z``, and z's index."""
    j = int(np.argmin(np.abs(grid.z_grid - z)))
    a, b = (grid.flux[grid.names.index(n), j] for n in (first, second))
    col = grid.bands.index("F277W")
    mix = 0.5 * a / a[col] + 0.5 * b / b[col]
    return mix * float(ab_to_njy(mag_f277w)), j


def test_a_mix_of_two_templates_is_fit_by_their_combination_and_by_no_single_template() -> None:
    z = default_z_grid(0.05, 10.0)
    grid = template_grid(SEVEN, z)
    true, j = _mix_of_two(grid, "starburst_10myr_av0.5", "old_300_500myr_av0.5", 1.5)
    err = np.full_like(true, 0.02 * true.max())
    rng = np.random.default_rng(3)
    noisy = true + rng.normal(size=(300, len(true))) * err
    errs = np.broadcast_to(err, noisy.shape)
    comb = fit_photoz(noisy, errs, SEVEN, templates=grid, sys_err=0.0, prior="flat")
    one = fit_photoz(noisy, errs, SEVEN, templates=grid, sys_err=0.0, prior="flat", combine=False)
    # one template at a time: the best free non-negative scale of each template, the smallest chi^2
    t = grid.flux[:, j]  # (n_t, n_band)
    w = 1.0 / errs**2
    scale = np.maximum((w * noisy) @ t.T, 0.0) / (w @ (t**2).T)
    direct = (w[:, None] * (noisy[:, None] - scale[..., None] * t[None]) ** 2).sum(axis=2).min(axis=1)
    np.testing.assert_allclose(one.chi2_z[:, j], direct, rtol=1e-3, atol=1e-2)
    # at the true z: the noise alone, chi^2 with 7 bands - 2 coefficients = 5 dof (less: the best of many fits)
    assert np.mean(comb.chi2_z[:, j]) < 5.0 + 3 * np.sqrt(2 * 5 / len(noisy))
    assert np.median(one.chi2_z[:, j]) > 4 * np.mean(comb.chi2_z[:, j])
    # every source is fit at least as well by the combinations as by its best template, at every z
    assert (comb.chi2_z <= one.chi2_z + 1e-3 * (1 + one.chi2_z)).all()
    # and the mix's redshift is recovered
    assert np.median(np.abs(comb.z_phot - 1.5)) < 0.1
    noiseless = fit_photoz(true, err, SEVEN, templates=grid, sys_err=0.0, prior="flat")
    assert noiseless.chi2_z[0, j] < 1e-3 * float(one.chi2_z[:, j].min())


def test_combinations_are_non_negative_least_squares_of_one_dust_screen() -> None:
    """chi^2(z) of the combined fit against scipy's NNLS over each A_V's base templates: never
    below it (no negative coefficient, no mixing of dust screens); for the sources one template
    cannot fit below or above z = 6, the same where NNLS needs at most two templates; for the
    others the one-template fit; and a source that needs a negative coefficient is not fit perfectly."""
    from scipy.optimize import nnls
    from scipy.stats import chi2 as chi2_dist

    from surveydust.photoz import COMBINE_CONFIDENCE

    z = default_z_grid(0.5, 10.0)
    grid = template_grid(SEVEN, z)
    rng = np.random.default_rng(5)
    # random non-negative mixtures of up to three base templates at random A_V, and an
    # "unphysical" one: a template minus a share of another (fluxes still positive)
    flux = []
    for _ in range(6):
        jz = int(rng.integers(len(z)))
        picks = rng.choice(len(grid.names), size=int(rng.integers(1, 4)), replace=False)
        flux.append(rng.uniform(0.2, 1.0, len(picks)) @ grid.flux[picks, jz])
    a, b = (grid.flux[grid.names.index(n), 4] for n in ("starburst_10myr_av0", "old_300_500myr_av0"))
    flux.append(a - 0.5 * b * (a / b).min())
    flux = np.array(flux) * 100.0
    err = 0.03 * flux.max(axis=1, keepdims=True) * np.ones_like(flux)
    noisy = flux + rng.normal(size=flux.shape) * err
    fit = fit_photoz(noisy, err, SEVEN, templates=grid, sys_err=0.0, prior="flat")
    one = fit_photoz(noisy, err, SEVEN, templates=grid, sys_err=0.0, prior="flat", combine=False)
    limit = chi2_dist.ppf(COMBINE_CONFIDENCE, len(SEVEN) - 2)  # one template rejected below or above z = 6
    combined = (one.chi2_z[:, z < 6].min(axis=1) > limit) | (one.chi2_z[:, z >= 6].min(axis=1) > limit)
    assert combined.sum() >= 2
    np.testing.assert_allclose(fit.chi2_z[~combined], one.chi2_z[~combined], rtol=1e-5, atol=1e-3)
    sw = 1.0 / err
    n_pairs = 0
    for i in np.flatnonzero(combined):
        for jz in range(len(z)):
            exact, two = np.inf, np.inf
            for av in np.unique(grid.a_v):
                coef, norm = nnls((grid.flux[grid.a_v == av, jz] * sw[i]).T, noisy[i] * sw[i])
                exact = min(exact, norm**2)
                if (coef > 0).sum() <= 2:
                    two = min(two, norm**2)
            assert fit.chi2_z[i, jz] >= exact - 1e-3 * (1 + exact)
            assert fit.chi2_z[i, jz] <= two + 1e-3 * (1 + two)
            n_pairs += two < np.inf
    assert n_pairs > 0.5 * combined.sum() * len(z)
    clean = fit_photoz(flux[-1:], err[-1:], SEVEN, templates=grid, sys_err=0.0, prior="flat")
    assert clean.chi2_z[0, 4] > 1.0


def test_sources_one_template_fits_keep_the_one_template_fit() -> None:
    """Faint sources that one template fits both below and above z = 6 get no combinations (the
    same chi^2(z) as combine=False); bright ones of the same spectrum do where it is rejected."""
    from scipy.stats import chi2 as chi2_dist

    from surveydust.photoz import COMBINE_CONFIDENCE

    z = default_z_grid(0.1, 10.0)
    grid = template_grid(SEVEN, z)
    true, _ = _mix_of_two(grid, "constant_100myr_av0.25", "old_300_500myr_av0.25", 2.0, mag_f277w=27.5)
    rng = np.random.default_rng(11)
    err = np.full((200, len(true)), true[SEVEN.index("F277W")] / 4.0)  # SNR ~ 4 in F277W
    noisy = true + rng.normal(size=err.shape) * err
    comb = fit_photoz(noisy, err, SEVEN, templates=grid)
    one = fit_photoz(noisy, err, SEVEN, templates=grid, combine=False)
    limit = chi2_dist.ppf(COMBINE_CONFIDENCE, len(SEVEN) - 2)
    fits = (one.chi2_z[:, z < 6].min(axis=1) <= limit) & (one.chi2_z[:, z >= 6].min(axis=1) <= limit)
    assert fits.mean() > 0.5
    np.testing.assert_allclose(comb.chi2_z[fits], one.chi2_z[fits], rtol=1e-5, atol=1e-3)
    assert (comb.chi2_z[~fits] <= one.chi2_z[~fits] + 1e-3).all()


def _noisy_high_z(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulated z = 6-8 galaxies in 0.25" apertures (80% of the light) at CEERS depth: fluxes,
    errors [nJy], true redshifts and SNR(F277W)."""
    from surveydust.instrument import DEPTH_APERTURE_RADIUS_ARCSEC, DEPTH_PRESETS

    mix = draw_sky_mix(n, SEVEN, seed=seed, high_z_fraction=1.0)
    sigma = np.array([ab_to_njy(DEPTH_PRESETS["ceers"][b]) / 5 * 0.25 / DEPTH_APERTURE_RADIUS_ARCSEC for b in SEVEN])
    flux = 0.8 * mix.flux_njy + np.random.default_rng(seed).normal(size=mix.flux_njy.shape) * sigma
    return flux, np.broadcast_to(sigma, flux.shape).copy(), mix.redshift, flux[:, SEVEN.index("F277W")] / sigma[4]


def test_pz_temperature_widens_pz_and_leaves_chi2_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tempered p(z) (T = 1.5) is wider than the likelihood's (T = 1) for most sources (not all:
    tempering also moves weight between the modes of a multimodal p(z)); chi^2, chi^2(z) and so the
    Delta chi^2 of the selection and the best estimate z_phot are the same."""
    from surveydust import photoz

    flux, err, _, snr = _noisy_high_z(200, seed=4)
    flux, err = flux[snr >= 10], err[snr >= 10]  # bright enough for a p(z) narrower than the grid
    assert len(flux) > 20
    z = default_z_grid(z_max=10.0)
    monkeypatch.setattr(photoz, "PZ_TEMPERATURE", 1.5)
    tempered = fit_photoz(flux, err, SEVEN, z_grid=z)
    monkeypatch.setattr(photoz, "PZ_TEMPERATURE", 1.0)
    plain = fit_photoz(flux, err, SEVEN, z_grid=z)
    np.testing.assert_array_equal(tempered.chi2_z, plain.chi2_z)
    np.testing.assert_array_equal(tempered.chi2, plain.chi2)
    np.testing.assert_array_equal(tempered.z_phot, plain.z_phot)  # the peak of the untempered posterior
    np.testing.assert_array_equal(select_high_z(flux, err, SEVEN, tempered).delta_chi2,
                                  select_high_z(flux, err, SEVEN, plain).delta_chi2)
    width_t, width_p = tempered.z84 - tempered.z16, plain.z84 - plain.z16
    assert np.median(width_t / width_p) > 1.1 and np.mean(width_t > width_p) > 0.8
    np.testing.assert_allclose(np.trapezoid(tempered.pz, z, axis=1), 1.0, rtol=1e-6)


def test_pz_covers_the_true_z_of_noisy_high_z_galaxies_at_the_nominal_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated z = 6-8 galaxies at SNR >= 5 with noise of CEERS depth: p(z) restricted to z = 6-8
    (what the dust step draws from) holds the true z in its central 68% and 95% intervals at the
    nominal rates within three binomial standard deviations (at the calibrated temperature,
    :data:`surveydust.photoz.PZ_TEMPERATURE`); a p(z) tempered further (T = 3) over-covers, so the
    test can tell a calibrated p(z) from a wide one."""
    from surveydust import photoz

    flux, err, z_true, snr = _noisy_high_z(1200, seed=7)
    keep = snr >= 5
    z = default_z_grid(z_max=10.0)

    def coverage() -> tuple[float, float]:
        fit = fit_photoz(flux[keep], err[keep], SEVEN, z_grid=z)
        q = pz_quantiles(fit.pz, fit.z_grid, (0.16, 0.84, 0.025, 0.975), (6.0, 8.0))
        zt = z_true[keep]
        return float(np.mean((zt >= q[:, 0]) & (zt <= q[:, 1]))), float(np.mean((zt >= q[:, 2]) & (zt <= q[:, 3])))

    n = int(keep.sum())
    assert n > 300

    def tolerance(level: float) -> float:
        return 3.0 * np.sqrt(level * (1 - level) / n)

    c68, c95 = coverage()
    assert abs(c68 - 0.68) < tolerance(0.68), c68
    assert c95 > 0.95 - tolerance(0.95), c95
    monkeypatch.setattr(photoz, "PZ_TEMPERATURE", 3.0)
    c68_wide, _ = coverage()
    assert c68 < 0.68 + tolerance(0.68) < c68_wide, (c68, c68_wide)

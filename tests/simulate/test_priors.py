"""Nuisance physics as priors: draws stay in their stated ranges, fixed ranges fix them, the
attenuation laws have their published shapes, line strength, geometry and correlated noise act
as documented, labels stay exact, and stores and bundles record what was drawn."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from surveydust.config import load_simulation_config
from surveydust.instrument import aperture_noise_factor, circular_aperture
from surveydust.physics import attenuation_curve
from surveydust.simulate.imaging import (
    correlated_noise,
    galaxy_photometry,
    screen_and_slab,
)
from surveydust.simulate.population import draw_galaxy
from surveydust.simulate.priors import DUST_LAWS, RECORDED, draw_nuisance, store_priors
from surveydust.simulate.run import simulate_galaxies
from surveydust.simulate.sed_library import load_sed_library


def test_draws_stay_in_their_ranges() -> None:
    priors = load_simulation_config().priors
    rng = np.random.default_rng(1)
    draws = [draw_nuisance(rng, priors) for _ in range(2000)]
    for name in ("dust_opacity", "birth_cloud_tau_v", "screen_fraction", "line_scale", "igm_forest_factor",
                 "burst_sigma", "psf_fwhm_scale", "noise_correlation_px", "depth_offset_mag"):
        values = np.array([getattr(d, name) for d in draws])
        lo, hi = getattr(priors, name)
        assert values.min() >= lo and values.max() <= hi, name
        assert values.max() - values.min() > 0.8 * (hi - lo), name  # the whole range is used
    laws = np.array([d.dust_law for d in draws])
    assert set(laws) == {DUST_LAWS.index(law) for law in priors.dust_laws}
    quenched = np.mean([d.quenched for d in draws])
    assert abs(quenched - priors.quenched_fraction) < 0.03
    salim = [d for d in draws if DUST_LAWS[d.dust_law] == "salim"]
    assert all(d.bump_amplitude >= 0 for d in salim)
    # Kriek & Conroy (2013): steeper curves carry stronger bumps
    delta, bump = np.array([(d.salim_delta, d.bump_amplitude) for d in salim]).T
    assert np.corrcoef(delta, bump)[0, 1] < -0.5
    assert all(d.salim_delta == 0 and d.bump_amplitude == 0 for d in draws if DUST_LAWS[d.dust_law] != "salim")


def test_a_range_of_zero_width_fixes_the_choice() -> None:
    priors = load_simulation_config(priors={"line_scale": [1.0, 1.0], "dust_laws": ["smc"],
                                            "quenched_fraction": 0.0}).priors
    assert priors.screen_fraction == load_simulation_config().priors.screen_fraction  # others kept
    rng = np.random.default_rng(2)
    draws = [draw_nuisance(rng, priors) for _ in range(50)]
    assert {d.line_scale for d in draws} == {1.0}
    assert {DUST_LAWS[d.dust_law] for d in draws} == {"smc"}
    assert not any(d.quenched for d in draws)


@pytest.mark.parametrize(
    ("priors", "message"),
    [({"line_scale": [2.0, 1.0]}, "priors.line_scale must be"),
     ({"dust_opacity": [0.0, 0.3]}, "priors.dust_opacity must be > 0"),
     ({"screen_fraction": [0.0, 1.5]}, r"priors.screen_fraction must lie in \[0, 1\]"),
     ({"dust_laws": ["lmc"]}, "dust_laws"),
     ({"colour": 1}, "unknown setting")],
)
def test_bad_priors_are_one_line_errors(priors, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_simulation_config(priors=priors)
    assert "\n" not in str(info.value)


def test_attenuation_laws_have_their_published_shapes() -> None:
    wave = np.array([1500.0, 2175.0, 3000.0, 5500.0])
    curves = {law: attenuation_curve(wave, law) for law in ("calzetti", "smc", "mw")}
    curves["salim_bump"] = attenuation_curve(wave, "salim", delta=-0.5, bump=3.0)
    curves["salim_grey"] = attenuation_curve(wave, "salim", delta=0.4, bump=0.0)
    for law, curve in curves.items():
        assert curve[-1] == pytest.approx(1.0, abs=0.03), law  # A_lambda / A_V at V (F99: at its V band)
    # Calzetti: A(1500)/A_V = 2.55 (Calzetti et al. 2000); the SMC bar is steeper, a grey Salim curve shallower
    assert curves["calzetti"][0] == pytest.approx(2.55, abs=0.02)
    assert curves["smc"][0] > 1.5 * curves["calzetti"][0]
    assert curves["salim_grey"][0] < curves["calzetti"][0]
    # the 2175 A bump: the Drude profile adds most at 2175 A; the SMC bar falls smoothly with wavelength
    extra = curves["salim_bump"] - attenuation_curve(wave, "salim", delta=-0.5, bump=0.0)
    assert extra[1] > 0.5 and extra[1] > 3 * max(extra[0], extra[2])
    fine = np.linspace(1300.0, 6000.0, 200)
    assert np.all(np.diff(attenuation_curve(fine, "smc")) < 0)


def test_screen_and_slab_span_screen_to_mixed() -> None:
    tau = np.array([0.0, 0.5, 2.0, 10.0])
    assert screen_and_slab(tau, 1.0) == pytest.approx(np.exp(-tau))
    assert screen_and_slab(tau, 0.0) == pytest.approx(np.r_[1.0, -np.expm1(-tau[1:]) / tau[1:]])
    half = screen_and_slab(tau, 0.5)
    assert np.all(half[1:] < screen_and_slab(tau, 0.0)[1:]) and np.all(half[1:] > np.exp(-tau[1:]))


def _galaxy(line_scale: float, quenched: bool = False):
    cfg = load_simulation_config(redshift_range=[7.0, 7.0], priors={"quenched_fraction": 0.0})
    lib = load_sed_library()
    gal = draw_galaxy(np.random.default_rng(3), cfg, lib)
    nuisance = dataclasses.replace(gal.nuisance, line_scale=line_scale, lya_ew_aa=0.0, quenched=quenched)
    return dataclasses.replace(gal, nuisance=nuisance), cfg, lib


def test_line_scale_changes_the_line_band_only() -> None:
    """At z = 7 [OIII]+Hbeta falls in F356W (4959-5007 A x 8 = 3.97-4.0 um is F444W's; Hbeta in F356W/F444W
    edge) and H-alpha beyond: scaling the lines moves F444W against F277W, whose rest 0.30-0.39 um holds
    only weak lines."""
    colours = {}
    for scale in (0.1, 3.0):
        gal, cfg, lib = _galaxy(scale)
        phot = galaxy_photometry(gal, cfg, lib)
        lum = (phot.weights[:len(cfg.bands)] @ phot.lum.T).sum(axis=1)
        b = {band: lum[i] for i, band in enumerate(cfg.bands)}
        colours[scale] = -2.5 * np.log10(b["F277W"] / b["F444W"])
    assert colours[3.0] - colours[0.1] > 0.3  # strong lines redden F277W - F444W by tenths of a mag


def test_forest_transmission_follows_the_galaxys_redshift() -> None:
    """The Lyman-alpha forest of a simulated z > 6 galaxy is the mean at its redshift times its
    sightline factor: at z = 7.9, where F090W sees only the forest, even the prior's most
    transparent sightline (factor 2) leaves under 2% of the continuum; at z = 6.0 most of F090W
    lies redward of Lyman-alpha."""
    from surveydust.simulate.foreground import high_z_photometry

    ratios = {}
    for z in (6.0, 7.9):
        sim = load_simulation_config(bands=("F115W",), redshift_range=[z, z],
                                     priors={"igm_forest_factor": [2.0, 2.0], "lya_ew_scale_aa": 0.0})
        _, flux, _ = high_z_photometry(np.random.default_rng(3), sim, ("F090W", "F115W"))
        ratios[z] = flux[0] / flux[1]
    assert ratios[7.9] < 0.02 and ratios[6.0] > 0.5, ratios


def test_correlated_noise_keeps_pixel_sigma_and_widens_apertures() -> None:
    rng = np.random.default_rng(4)
    ap = circular_aperture(32, 8.0)
    for sigma_px in (0.0, 0.8):
        noise = correlated_noise(rng, (4000, 32, 32), sigma_px)
        assert noise.std() == pytest.approx(1.0, rel=0.02)
        sums = noise[:, ap].sum(axis=1)
        assert sums.std() == pytest.approx(aperture_noise_factor(ap, sigma_px), rel=0.05)
    assert aperture_noise_factor(ap, 0.8) > 1.5 * aperture_noise_factor(ap, 0.0)


def test_labels_stay_exact_and_draws_are_recorded() -> None:
    cfg = load_simulation_config(n_galaxies=40, views_per_galaxy=1)
    out = simulate_galaxies(0, cfg.n_galaxies, cfg)
    # the A_V prior reaches from dust-free galaxies to a dusty tail (DTM = 0 included)
    dusty = out["A_V"].reshape(cfg.n_galaxies, -1)[:, 1:]
    assert np.mean(dusty < 0.1) > 0.1 and dusty.max() > 1.5
    dtm = np.resize(np.asarray(cfg.dtm_values), len(out["A_V"]))
    assert np.all(np.abs(out["A_V"][dtm == 0]) < 1e-6) and np.all(np.abs(out["EBV"][dtm == 0]) < 1e-6)
    assert np.all(out["A_V"] >= 0) and np.all(out["EBV"] >= 0)
    for name in RECORDED:
        per_galaxy = out[name].reshape(cfg.n_galaxies, -1)
        assert np.all(per_galaxy == per_galaxy[:, :1]), name  # one draw per galaxy, on all its images
    assert len(set(out["dust_law"].tolist())) > 1 or cfg.n_galaxies < 3
    attrs = {"simulation_config": cfg.to_json()}
    assert store_priors(attrs) == json.loads(cfg.priors.model_dump_json())
    assert store_priors({}) is None

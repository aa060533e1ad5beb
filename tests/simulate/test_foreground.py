"""The sky's mix in a simulated field: kinds, counts and redshifts in the truth table; the
foreground only adds light; switched off, the field is exactly the field without it; F090W as a
photometry-only band; the spectra behave like the populations they stand for."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from surveydust.config import load_foreground_config
from surveydust.physics import mjy_per_sr_to_njy, njy_to_ab
from surveydust.simulate import simulate_field
from surveydust.simulate.foreground import (
    KINDS,
    band_fluxes,
    brown_dwarf_sed,
    draw_sky_mix,
    expected_counts,
    extended_library,
)
from surveydust.simulate.imaging import igm_forest_transmission

SEVEN = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
#: contaminants boosted so that a small field holds every kind
BOOSTED = {"kinds": {"dusty": {"per_arcmin2": 250.0}, "balmer_break": {"per_arcmin2": 250.0},
                     "brown_dwarf": {"per_arcmin2": 250.0}}}
SMALL = {"n_galaxies": 4, "shape": (512, 512), "seed": 2}


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fg")
    simulate_field(root / "off", bands=SEVEN[1:], **SMALL)
    simulate_field(root / "on", bands=SEVEN[1:], foreground=BOOSTED, **SMALL)
    return {"off": root / "off", "on": root / "on"}


def test_truth_has_every_kind_with_counts_and_redshifts(fields: dict[str, Path]) -> None:
    truth = Table.read(fields["on"] / "demo_truth.ecsv")
    assert list(truth["id"]) == list(range(len(truth)))
    kinds = np.asarray(truth["kind"])
    assert set(kinds) == set(KINDS) and (kinds[:4] == "high_z").all() and (kinds[4:] != "high_z").all()
    assert truth.meta["n_high_z"] == 4
    cfg = load_foreground_config(**BOOSTED)
    sci = fits.getdata(fields["on"] / "demo_F277W_i2d.fits", "SCI")
    area = np.isfinite(sci).sum() * (0.03 / 60) ** 2
    for kind, mean in expected_counts(cfg, area).items():
        assert abs((kinds == kind).sum() - mean) < 5 * np.sqrt(mean) + 1, kind
    z = np.asarray(truth["redshift"])
    for kind, (lo, hi) in (("high_z", (6, 8)), ("foreground", (0.2, 6)), ("dusty", (2, 4)),
                           ("balmer_break", (1, 2.5))):
        assert ((z[kinds == kind] >= lo) & (z[kinds == kind] <= hi)).all(), kind
    assert (z[kinds == "brown_dwarf"] == 0).all()
    assert np.isnan(truth["dtm"][kinds != "high_z"]).all() and np.isfinite(truth["dtm"][:4]).all()
    assert (truth["A_V"][kinds == "dusty"] >= 1.5).all()
    for b in SEVEN[1:]:
        assert (truth[f"flux_{b}"] > 0).all()


def test_foreground_only_adds_light(fields: dict[str, Path]) -> None:
    off, on = (Table.read(fields[k] / "demo_truth.ecsv") for k in ("off", "on"))
    for name in off.colnames:
        np.testing.assert_array_equal(np.asarray(on[name][:4]), np.asarray(off[name]))
    pixar = fits.getheader(fields["on"] / "demo_F277W_i2d.fits", "SCI")["PIXAR_SR"]
    diff = mjy_per_sr_to_njy(fits.getdata(fields["on"] / "demo_F277W_i2d.fits", "SCI").astype(np.float64)
                             - fits.getdata(fields["off"] / "demo_F277W_i2d.fits", "SCI"), pixar)
    good = np.isfinite(diff)
    assert diff[good].min() > -1e-3  # the same noise: only light added
    added = on["flux_F277W"][4:].sum()
    assert 0.9 * added < diff[good].sum() <= added * 1.001


def test_foreground_off_is_the_field_without_it(fields: dict[str, Path], tmp_path: Path) -> None:
    simulate_field(tmp_path / "false", bands=SEVEN[1:], foreground=False, **SMALL)
    simulate_field(tmp_path / "none", bands=SEVEN[1:], foreground={"enabled": False, "density_scale": 5}, **SMALL)
    for name in ["demo_truth.ecsv", *(f"demo_{b}_i2d.fits" for b in SEVEN[1:])]:
        assert filecmp.cmp(fields["off"] / name, tmp_path / "false" / name, shallow=False), name
        assert filecmp.cmp(fields["off"] / name, tmp_path / "none" / name, shallow=False), name
    truth = Table.read(fields["off"] / "demo_truth.ecsv")
    assert "kind" not in truth.colnames and "foreground_config" not in truth.meta
    assert "NFOREGR" not in fits.getheader(fields["off"] / "demo_F277W_i2d.fits")


def test_f090w_is_a_photometry_only_band(tmp_path: Path) -> None:
    files = simulate_field(tmp_path, bands=SEVEN, n_galaxies=3, shape=(256, 256), seed=1, n_straddle=0)
    assert list(files.bands) == SEVEN
    truth = Table.read(files.truth)
    assert truth.meta["photometry_only_bands"] == ["F090W"] and truth.meta["bands"] == SEVEN
    assert (truth["flux_F090W"] < truth["flux_F115W"]).all()  # the Lyman break


def test_foreground_config_is_validated() -> None:
    assert not load_foreground_config().enabled
    with pytest.raises(ValueError, match="unknown kind"):
        load_foreground_config(kinds={"quasar": {"per_arcmin2": 1.0, "count_slope": 0.2}})
    with pytest.raises(ValueError, match="mag_range"):
        load_foreground_config(mag_range=[30.0, 20.0])
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        load_foreground_config(kinds={"dusty": {"per_arcmin2": -1.0}})


def test_spectra_behave() -> None:
    wave, lum, _ = extended_library()
    edge = np.searchsorted(wave, 12000.0)
    ratio = lum[..., edge + 1] / lum[..., edge - 1]
    assert wave[-1] >= 50000 and (np.abs(np.log(ratio)) < 0.1).all()  # the extension is continuous
    assert igm_forest_transmission(2.0) > igm_forest_transmission(4.0) > igm_forest_transmission(6.0)
    assert igm_forest_transmission(6.0) < 0.15 and igm_forest_transmission(0.5) == 1.0


def _dwarf_colours(teff: float) -> dict[str, float]:
    """AB colours of the simulator's brown dwarf at ``teff`` through the NIRCam bandpasses."""
    mags = dict(zip(SEVEN, njy_to_ab(band_fluxes(*brown_dwarf_sed(teff), 0.0, SEVEN, igm=False))))
    return {f"{a}-{b}": mags[a] - mags[b] for a in SEVEN for b in SEVEN if a != b}


def test_brown_dwarfs_have_the_colours_of_t_dwarfs() -> None:
    """NIRCam colours of T dwarfs (brown_dwarf_sed's docstring): F090W dropout, blue F115W-F150W
    and F150W-F200W (CH4 and CIA in H and K), F115W - F277W < -0.8 and F277W - F444W > 1.1 (the
    model-based selection of 500-1300 K dwarfs, Wang et al. 2023), F356W - F444W from ~0 (early T)
    to > 1 (late T, the CH4 3.3 um band), all getting more extreme as T_eff falls."""
    teffs = np.arange(500.0, 1301.0, 100.0)
    c = [_dwarf_colours(t) for t in teffs]
    for teff, col in zip(teffs, c):
        assert col["F090W-F115W"] > 2.0, teff
        assert -1.0 < col["F115W-F150W"] < 0.3, teff
        assert teff > 900 or col["F115W-F150W"] < 0.0, teff
        assert -1.2 < col["F150W-F200W"] < 0.0, teff
        assert col["F115W-F277W"] < -0.8 and col["F277W-F444W"] > 1.1, teff
        assert teff > 700 or col["F356W-F444W"] > 1.0, teff
        assert teff < 1200 or -0.3 < col["F356W-F444W"] < 0.6, teff
    for name in ("F356W-F444W", "F277W-F444W", "F150W-F444W"):
        assert (np.diff([col[name] for col in c]) < 0).all(), name  # redder as T_eff falls
    assert -1.2 < c[-1]["F150W-F444W"] < 0.0 and 1.8 < c[0]["F150W-F444W"] < 3.0
    assert c[0]["F115W-F150W"] < c[-1]["F115W-F150W"] - 0.2  # J - H bluer in late T than early T


def test_sky_mix_has_the_configured_proportions() -> None:
    mix = draw_sky_mix(300, SEVEN, seed=1, high_z_fraction=0.1)
    assert mix.flux_njy.shape == (300, 7) and (mix.flux_njy > 0).all()
    high = mix.kind == "high_z"
    assert 10 < high.sum() < 55 and (mix.redshift[high] >= 6).all() and (mix.redshift[~high] <= 6).all()
    assert (mix.kind == "foreground").sum() > 0.7 * (~high).sum()
    again = draw_sky_mix(300, SEVEN, seed=1, high_z_fraction=0.1)
    np.testing.assert_array_equal(mix.flux_njy, again.flux_njy)

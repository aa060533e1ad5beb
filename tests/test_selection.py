"""Photometric redshifts and the z > 6 selection before the dust step, on a field with the sky's mix.

A small seven-band field (F090W as a photometry-only band) with z > 6 galaxies and the sky's
foreground (ordinary galaxies at z 0.2-6, dusty z 2-4 and Balmer-break z 1-2.5 galaxies and brown
dwarfs at raised densities) is simulated as FITS, ingested and catalogued on the session's
LocalCluster.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from surveydust.config import load_catalogue_config
from surveydust.detect import FLAGS
from surveydust.infer import mix_percentiles, run_catalogue, select_sources
from surveydust.photoz import SELECTION_REASONS, pz_quantiles
from surveydust.posterior import LEVELS, LOG_OFFSETS, NOMINAL_Z

SEVEN = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
LW = ["F277W", "F356W", "F444W"]
NOT_HIGH_Z = FLAGS["not_high_z"]
FOREGROUND = {"density_scale": 1.0, "kinds": {"dusty": {"per_arcmin2": 40.0}, "balmer_break": {"per_arcmin2": 60.0},
                                              "brown_dwarf": {"per_arcmin2": 15.0}}}


@pytest.fixture(scope="module")
def mix(tmp_path_factory, client) -> dict:
    from surveydust.simulate import simulate_field
    from surveydust.stores.mosaic import ingest_mosaic

    root = tmp_path_factory.mktemp("mix")
    files = simulate_field(root / "fits", n_galaxies=12, shape=(512, 512), bands=SEVEN, seed=5, foreground=FOREGROUND)
    stores = {}
    for name, bands in (("seven", SEVEN), ("lw", LW)):
        stores[name] = root / f"{name}.zarr"
        ingest_mosaic(stores[name], {b: str(files.bands[b]) for b in bands}, field="mix", chunk=256, client=client,
                      progress=False)
    return {"root": root, "truth": files.truth, **stores}


@pytest.fixture(scope="module")
def default(mix, client):
    return run_catalogue(mix["seven"], client=client, progress=False)


def _truth_of(cat, truth: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per catalogue source: matched (within 0.15"), the true redshift and kind of the nearest injected source."""
    tab = Table.read(truth)
    ra, dec = cat["ra"].values[:, None], cat["dec"].values[:, None]
    sep = np.hypot((ra - np.asarray(tab["ra_centroid"])[None]) * np.cos(np.deg2rad(dec)),
                   dec - np.asarray(tab["dec_centroid"])[None]) * 3600
    j = sep.argmin(axis=1)
    return sep.min(axis=1) < 0.15, np.asarray(tab["redshift"])[j], np.asarray(tab["kind"])[j].astype(str)


def _write_redshifts(path: Path, cat, rows: np.ndarray, z: np.ndarray) -> Path:
    Table({"ra": cat["ra"].values[rows], "dec": cat["dec"].values[rows], "z": z}).write(path, format="ascii.csv")
    return path


def test_low_z_sources_get_not_high_z_and_no_dust(mix, default) -> None:
    cat = default
    assert {"z_phot", "z_phot_p16", "z_phot_p84", "p_high_z", "delta_chi2", "high_z_reason", "selected_by"} \
        <= set(cat.data_vars)
    assert cat["z_phot"].attrs["units"] == "" and "P(z > 6)" in cat["p_high_z"].attrs["long_name"]
    assert cat.attrs["photoz"]["bands"] == SEVEN  # F090W too, which no network uses
    p = cat["p_high_z"].values
    assert np.all((p >= 0) & (p <= 1)) and np.all(cat["z_phot_p16"].values <= cat["z_phot_p84"].values)
    flagged = (cat["flag"].values & NOT_HIGH_Z) > 0
    cfg = load_catalogue_config()
    reason = cat["high_z_reason"].values.astype(str)
    np.testing.assert_array_equal(flagged, reason != "")  # no spectroscopic z here: the photo-z criteria decide
    assert flagged[p < cfg.p_high_z_min].all() and set(reason) <= {"", *SELECTION_REASONS}
    assert (cat["delta_chi2"].values[~flagged] >= cfg.delta_chi2_min).all()
    a_v = cat["A_V"].values[:, 0]
    assert np.isnan(a_v[flagged]).all() and np.isnan(cat["log_ssfr"].values[flagged, 0]).all()
    assert np.isfinite(a_v[~flagged]).all()
    assert set(cat["selected_by"].values[~flagged]) == {"photoz"} and set(cat["selected_by"].values[flagged]) == {""}
    matched, z_true, _ = _truth_of(cat, mix["truth"])
    low, high = matched & (z_true < 4), matched & (z_true > 6)
    assert low.sum() >= 5 and high.sum() >= 3, (low.sum(), high.sum())
    assert flagged[low].mean() >= 0.7  # most low-z sources are kept from the dust step
    assert (~flagged[high]).sum() >= 1 and np.median(p[high]) > np.median(p[low])


def test_spectroscopic_z_in_range_gets_dust_whatever_p_high_z(mix, default, client, tmp_path: Path) -> None:
    p = default["p_high_z"].values
    lowest = np.argsort(p)[:2]  # two sources the photometry puts at low z
    assert p[lowest[0]] < load_catalogue_config().p_high_z_min
    table = _write_redshifts(tmp_path / "spec.csv", default, lowest, np.array([7.0, 2.0]))
    cat = run_catalogue(mix["seven"], client=client, redshifts=table, progress=False)
    flag, a_v = cat["flag"].values, cat["A_V"].values[:, 0]
    i, j = lowest  # the same sources in the same order (rows sorted by tile, y, x)
    assert cat["selected_by"].values[i] == "spec_z" and not flag[i] & NOT_HIGH_Z and np.isfinite(a_v[i])
    # a spectroscopic z of 2: outside the training range and not z > 6
    assert flag[j] & NOT_HIGH_Z and flag[j] & FLAGS["z_out_of_range"] and np.isnan(a_v[j])
    others = np.setdiff1d(np.arange(cat.sizes["source"]), lowest)
    np.testing.assert_allclose(a_v[others], default["A_V"].values[others, 0], rtol=1e-5)


def test_all_sources_predicts_every_source_still_flagged(mix, default, client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="surveydust"):
        cat = run_catalogue(mix["seven"], client=client, progress=False, all_sources=True)
    assert np.isfinite(cat["A_V"].values[:, 0]).all()
    ood = FLAGS["out_of_distribution"]  # the model's own verdict on sources it now predicts
    keep = np.uint16(0xFFFF ^ ood)
    np.testing.assert_array_equal(cat["flag"].values & keep, default["flag"].values & keep)  # not_high_z kept
    kept = (default["flag"].values & NOT_HIGH_Z) == 0
    np.testing.assert_allclose(cat["A_V"].values[kept], default["A_V"].values[kept], rtol=1e-5)
    n_sel = int(kept.sum())
    line = [r.getMessage() for r in caplog.records if "z > 6 selection" in r.getMessage()]
    assert len(line) == 1 and f"0 by spectroscopic z, {n_sel} by the photo-z criteria" in line[0], line
    assert f"{cat.sizes['source'] - n_sel} not selected (predicted anyway" in line[0]


def test_lw_only_mosaic_needs_redshifts_for_the_dust_step(mix, default, client, caplog, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot see the Lyman break") as err:
        run_catalogue(mix["lw"], client=client, progress=False)
    assert "\n" not in str(err.value) and "--redshifts" in str(err.value) and "--all-sources" in str(err.value)
    rows = np.argsort(default["p_high_z"].values)[-2:]
    table = _write_redshifts(tmp_path / "spec.csv", default, rows, np.array([6.5, 7.5]))
    with caplog.at_level(logging.WARNING, logger="surveydust"):
        cat = run_catalogue(mix["lw"], client=client, redshifts=table, progress=False)
    warned = [r.getMessage() for r in caplog.records if "cannot see the Lyman break" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    has_z = np.isfinite(cat["z"].values)
    assert has_z.sum() == 2 and np.isfinite(cat["A_V"].values[has_z, 0]).all()
    assert np.isnan(cat["A_V"].values[~has_z, 0]).all() and (cat["flag"].values[~has_z] & NOT_HIGH_Z).all()
    anyway = run_catalogue(mix["lw"], client=client, progress=False, all_sources=True)
    assert np.isfinite(anyway["A_V"].values[:, 0]).all() and (anyway["flag"].values & NOT_HIGH_Z).all()


def test_pz_mixed_intervals_are_at_least_as_wide_as_with_the_true_z(mix, default, client) -> None:
    cat_true = run_catalogue(mix["seven"], client=client, redshifts=mix["truth"], progress=False)
    # every source through its p(z) (all_sources), so the z > 6 galaxies the criteria reject count too
    anyway = run_catalogue(mix["seven"], client=client, progress=False, all_sources=True)
    matched, z_true, kind = _truth_of(anyway, mix["truth"])
    rows = matched & (kind == "high_z") & np.isfinite(cat_true["z"].values) & (z_true >= 6) & (z_true <= 8)
    assert rows.sum() >= 4
    for q in ("A_V", "log_ssfr"):
        mixed = anyway[f"{q}_p84"].values[rows, 0] - anyway[f"{q}_p16"].values[rows, 0]
        fixed = cat_true[f"{q}_p84"].values[rows, 0] - cat_true[f"{q}_p16"].values[rows, 0]
        assert np.median(mixed) >= 0.99 * np.median(fixed), (q, mixed, fixed)


def test_mixture_of_one_distribution_is_itself_and_of_shifted_ones_wider() -> None:
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=(50, 1)), rng.uniform(0.1, 0.5, size=(50, 1))
    pct = mu + sigma * np.asarray(NOMINAL_Z)  # log sSFR: Gaussian percentiles
    one = mix_percentiles(pct[:, None, :], "log_ssfr", LOG_OFFSETS)
    np.testing.assert_allclose(one, pct, atol=0.02 * sigma.max())
    two = mix_percentiles(np.stack([pct - 0.5, pct + 0.5], axis=1), "log_ssfr", LOG_OFFSETS)
    assert np.all(two[:, 3] - two[:, 1] > pct[:, 3] - pct[:, 1]) and np.all(np.diff(two, axis=1) >= 0)
    np.testing.assert_allclose(two[:, LEVELS.index(0.5)], pct[:, 2], atol=0.05)
    dust = mix_percentiles(np.stack([np.maximum(pct, 0)] * 3, axis=1), "A_V", LOG_OFFSETS)
    assert np.all(dust >= 0)
    # draws whose 2.5 and 16 percentiles are 0 (mass at A_V = 0, a dust-free galaxy): the mixture's
    # are 0 too, exactly; where only the 2.5 percentiles are 0, the mixture's 16 percentile is not
    atom = np.array([[0.0, 0.0, 0.05, 0.2, 0.5], [0.0, 0.0, 0.1, 0.3, 0.7], [0.0, 0.0, 0.02, 0.1, 0.3]])
    mixed = mix_percentiles(atom[None], "A_V", LOG_OFFSETS)[0]
    assert mixed[0] == 0.0 and mixed[1] == 0.0 and 0.02 < mixed[2] < 0.1 and np.all(np.diff(mixed[1:]) > 0)
    partial = atom.copy()
    partial[:, 1] = [0.01, 0.02, 0.005]
    assert mix_percentiles(partial[None], "A_V", LOG_OFFSETS)[0, 1] > 0.0


def test_selection_rules_and_pz_draws() -> None:
    cfg = load_catalogue_config()
    z = np.array([7.0, 2.0, np.nan, np.nan, 9.0])
    high_z = np.array([False, True, True, False, False])  # what the photo-z criteria say
    predict, not_high, by = select_sources(z, high_z, cfg, use_photoz=True)
    np.testing.assert_array_equal(predict, [True, True, True, False, True])
    np.testing.assert_array_equal(not_high, [False, True, False, True, False])
    assert list(by) == ["spec_z", "spec_z", "photoz", "", "spec_z"]
    predict, not_high, _ = select_sources(z, high_z, cfg.model_copy(update={"all_sources": True}), use_photoz=False)
    assert predict.all() and list(not_high) == [False, True, True, True, False]
    grid = np.round(np.arange(0, 15.001, 0.02), 6)
    pz = np.exp(-0.5 * ((grid[None] - np.array([[7.0], [2.0]])) / 0.3) ** 2)
    pz[1, grid > 4] = 0.0
    draws = pz_quantiles(pz, grid, (np.arange(6) + 0.5) / 6, (6.0, 8.0))
    assert np.all((draws >= 6) & (draws <= 8)) and np.all(np.diff(draws, axis=1) > 0)
    assert abs(np.median(draws[0]) - 7.0) < 0.05  # centred on the peak inside the range
    np.testing.assert_allclose(draws[1], 6 + 2 * (np.arange(6) + 0.5) / 6, atol=0.02)  # no mass in range: flat

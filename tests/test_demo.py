"""The built-in demo: a field with the sky's mix, its z > 6 selection counted against the truth,
and the dust skill of the selected sources that are truly z > 6 (the interlopers counted, not scored)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

from surveydust.bundle import read_meta, richest_bundle
from surveydust.demo import make_demo_field, selection_summary, skill, summary_lines
from surveydust.infer import run_catalogue
from surveydust.stores.catalogue import FLAGS

DEMO_BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
DEFAULT = richest_bundle(DEMO_BANDS)  # the model the demo uses on its six bands
CNN = "CNN " + "+".join(read_meta(DEFAULT)["bands"])
#: 640 x 640 px (0.09 arcmin^2): the foreground's ~600 arcmin^-2 give ~50 sources around 30 z > 6 galaxies
SIZE = 640


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, client) -> tuple[object, Path]:
    """A small demo field with the sky's mix, catalogued without a redshift table (one tile)."""
    store, truth = make_demo_field(tmp_path_factory.mktemp("mixed"), n_galaxies=30, size=SIZE, seed=3,
                                   client=client, progress=False, foreground=True)
    return run_catalogue(store, client=client, progress=False), truth


def _truth_of_each_source(cat, truth: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independently of the demo's matching: each source's nearest injected centroid (flat sky),
    matched within 0.1 arcsec; its true redshift and kind (NaN / "" unmatched)."""
    table = Table.read(truth)
    ra, dec = cat["ra"].values[:, None], cat["dec"].values[:, None]
    sep = np.hypot((ra - np.asarray(table["ra_centroid"])[None]) * np.cos(np.deg2rad(dec)),
                   dec - np.asarray(table["dec_centroid"])[None]) * 3600
    ok, idx = sep.min(axis=1) <= 0.1, sep.argmin(axis=1)
    return (np.where(ok, np.asarray(table["redshift"])[idx], np.nan),
            np.where(ok, np.asarray(table["kind"], str)[idx], ""))


def test_selection_is_counted_against_the_truth(mixed) -> None:
    cat, truth = mixed
    table = Table.read(truth)
    s = selection_summary(cat, truth)
    assert set(s["injected"]) >= {"high_z", "foreground"} and s["injected"]["high_z"] == 30
    assert sum(s["injected"].values()) == len(table)
    z, kind = _truth_of_each_source(cat, truth)
    assert (kind == "foreground").any(), "no foreground source detected: the field has no mix"
    by = cat["selected_by"].values.astype(object)
    selected, high = by != "", z > 6
    assert s["detected"] == cat.sizes["source"] and s["matched"] == int((kind != "").sum())
    assert s["selected"] == int(selected.sum()) == s["selected_photoz"] > 0 and s["selected_spec_z"] == 0
    assert s["rule"].startswith(f"P(z>6) >= {cat.attrs['catalogue_config']['p_high_z_min']:g}")
    assert s["true_high_z_selected"] == int((selected & high).sum())
    assert s["interlopers"] == int((selected & ~high).sum()) == s["selected"] - s["true_high_z_selected"]
    assert sum(s["interlopers_by_kind"].values()) == s["interlopers"]
    assert s["true_high_z_detected"] == int(high.sum())
    assert s["true_high_z_not_selected"] == int((high & ~selected).sum())
    assert s["true_high_z_not_selected"] + s["true_high_z_selected"] == s["true_high_z_detected"]
    np.testing.assert_array_equal(s["_interloper"], selected & ~high)
    # selected by the photo-z (P(z>6) among its criteria): every selected source got dust, the others
    # none and the flag not_high_z
    assert (cat["p_high_z"].values[selected] >= cat.attrs["catalogue_config"]["p_high_z_min"]).all()
    assert np.isfinite(cat["A_V"].values[selected, 0]).all() and np.isnan(cat["A_V"].values[~selected, 0]).all()
    assert ((cat["flag"].values[~selected] & FLAGS["not_high_z"]) > 0).all()


def test_skill_scores_only_the_selected_true_high_z_sources(mixed) -> None:
    from surveydust.compare import good_sources, truth_values

    cat, truth = mixed
    table = skill(cat, truth)
    assert table.colnames == ["quantity", "method", "N", "MAE", "MAE_constant", "spearman"]
    rows = {(r["quantity"], r["method"]): r for r in table}
    assert {("A_V", CNN), ("EBV", CNN), ("log_ssfr", CNN), ("A_V", "Meurer")} <= set(rows)
    z, _ = _truth_of_each_source(cat, truth)
    scored = (cat["selected_by"].values.astype(object) != "") & (z > 6) & good_sources(cat)
    sel = table.meta["selection"]
    assert table.meta["sources"] == int(scored.sum()) == sel["scored"] > 0
    assert table.meta["catalogue_sources"] == cat.sizes["source"]
    assert not any(k.startswith("_") for k in sel)  # no arrays in the table's meta
    true = truth_values(cat, truth)
    constants = read_meta(DEFAULT).get("constant_guess", {})
    for q in ("A_V", "EBV", "log_ssfr"):
        est = cat[q].values[:, 0]
        ok = scored & np.isfinite(est) & np.isfinite(true[q])
        r = rows[(q, CNN)]
        assert r["N"] == ok.sum() > 0
        assert r["MAE"] == pytest.approx(np.mean(np.abs(est[ok] - true[q][ok])), rel=1e-6)
        const = constants.get(q, np.median(true[q][ok]))
        assert r["MAE_constant"] == pytest.approx(np.mean(np.abs(const - true[q][ok])), rel=1e-6)
        assert np.isnan(r["spearman"]) or -1 <= r["spearman"] <= 1
    # the Meurer baseline is scored on the same sources
    assert rows[("A_V", "Meurer")]["N"] == int((scored & np.isfinite(cat["A_V_meurer"].values)).sum())


def _toy(tmp_path: Path) -> tuple[xr.Dataset, Path]:
    """Five z > 6 galaxies and three z = 2 galaxies in a truth table, and a catalogue of them and
    one spurious source: sources 0-3 (z > 6; 3 flagged low_snr), 5 (z = 2) and 8 (spurious)
    selected by the photo-z, the others not; the interlopers' dust far off their truth."""
    ra, dec = 150.0 + 1e-3 * np.arange(8), np.full(8, 2.0)
    truth = Table({"ra_centroid": ra, "dec_centroid": dec, "redshift": [6.5, 6.9, 7.2, 7.5, 6.2, 2.0, 2.1, 2.2],
                   "kind": ["high_z"] * 5 + ["foreground"] * 3, "A_V": [0.1, 0.4, 0.8, 1.2, 0.5, 0.3, 0.6, 0.9],
                   "EBV": np.linspace(0.0, 0.3, 8), "log_ssfr": np.linspace(-9.0, -8.0, 8)})
    truth.write(tmp_path / "truth.ecsv")
    n = 9
    a_v = np.array([0.2, 0.5, 0.6, 1.0, np.nan, 5.0, np.nan, np.nan, 7.0])
    selected_by = np.array(["photoz"] * 4 + ["", "photoz", "", "", "photoz"], dtype=object)
    flag = np.where(np.arange(n) == 3, FLAGS["low_snr"], 0) | np.where(selected_by == "", FLAGS["not_high_z"], 0)
    cat = xr.Dataset(
        {"ra": ("source", np.append(ra + 2e-6, 151.0)), "dec": ("source", np.append(dec, 2.0)),
         "selected_by": ("source", selected_by), "flag": ("source", flag.astype(np.uint16)),
         **{q: (("source", "model"), v[:, None]) for q, v in
            (("A_V", a_v), ("EBV", a_v / 4), ("log_ssfr", np.where(np.isfinite(a_v), -8.5, np.nan)))},
         "A_V_meurer": ("source", np.full(n, 0.5))},
        coords={"model": ["toy"]}, attrs={"catalogue_config": {"p_high_z_min": 0.3}, "models": []})
    return cat, tmp_path / "truth.ecsv"


def test_interlopers_are_counted_not_scored(tmp_path: Path) -> None:
    cat, truth = _toy(tmp_path)
    s = selection_summary(cat, truth)
    assert s["injected"] == {"high_z": 5, "foreground": 3} and (s["detected"], s["matched"]) == (9, 8)
    assert (s["selected"], s["selected_photoz"], s["selected_spec_z"]) == (6, 6, 0)
    assert (s["true_high_z_selected"], s["interlopers"], s["scored"]) == (4, 2, 3)
    assert s["interlopers_by_kind"] == {"foreground": 1, "unmatched": 1} and s["interlopers_z"] == [2.0, 2.0]
    assert (s["true_high_z_detected"], s["true_high_z_not_selected"]) == (5, 1)
    assert s["purity"] == pytest.approx(4 / 6) and s["completeness"] == pytest.approx(4 / 5)
    assert s["rule"] == "P(z>6) >= 0.3"
    rows = {(r["quantity"], r["method"]): r for r in skill(cat, truth)}
    r = rows[("A_V", "CNN toy")]
    assert r["N"] == 3 and r["MAE"] == pytest.approx(np.mean([0.1, 0.1, 0.2]))
    assert r["MAE_constant"] == pytest.approx(np.mean(np.abs(np.array([0.1, 0.4, 0.8]) - 0.4)))
    assert r["spearman"] == pytest.approx(1.0)
    assert rows[("A_V", "Meurer")]["N"] == 3
    text = "\n".join(summary_lines(s, skill(cat, truth)))
    assert "2 interlopers (1 ordinary galaxy, 1 spurious detection, true z 2.0-2.0)" in text
    assert "the 2 interlopers got dust values too" in text


def test_summary_says_the_selection_and_the_interlopers(mixed) -> None:
    cat, truth = mixed
    table = skill(cat, truth)
    s = table.meta["selection"]
    text = "\n".join(summary_lines(s, table, {"spurious": 0}))
    assert f"no redshift table (most sources of a survey have none): z > 6 selection by the photometric redshift " \
           f"({s['rule']})" in text
    assert f"detected: {s['detected']} sources" in text
    assert f"selected as z > 6: {s['selected']}, of those truly z > 6: {s['true_high_z_selected']}" in text
    assert f"detected but not selected: {s['true_high_z_not_selected']} of {s['true_high_z_detected']}" in text
    assert f"dust skill on the {s['scored']} selected sources that are truly z > 6" in text
    assert all(line in text for line in table.pformat(max_lines=-1, max_width=-1))
    assert ("got dust values too" in text) == (s["interlopers"] > 0)
    # with a redshift table the summary says so, and an empty selection reads without interlopers
    none = {**s, "selected_spec_z": 4, "interlopers": 0, "interlopers_by_kind": {}, "interlopers_z": []}
    text = "\n".join(summary_lines(none, table))
    assert "redshift table: 4 sources took a spectroscopic z" in text and "interlopers" not in text


def test_demo_tiles_unless_a_tile_size_is_given() -> None:
    from surveydust.config import load_catalogue_config
    from surveydust.demo import DEMO_TILE_PIX, _demo_config

    assert _demo_config(None, {}).tile_pix == DEMO_TILE_PIX
    assert _demo_config(None, {"p_high_z_min": 0.5}).p_high_z_min == 0.5
    assert _demo_config(load_catalogue_config(None, tile_pix=512), {}).tile_pix == 512


@pytest.mark.slow  # the full demo field (1280 x 1280 px, 120 z > 6 galaxies and the sky's mix): ~1 min on 2 cores
def test_run_demo_scores_the_selected_sources_against_the_truth(tmp_path: Path, client) -> None:
    from surveydust.demo import DemoResult, run_demo

    result = run_demo(tmp_path / "demo", client=client, progress=False, export_format="ecsv")
    assert isinstance(result, DemoResult)
    assert result.paths["catalogue"] == tmp_path / "demo" / "catalogue.zarr"
    assert result.paths["export"] == tmp_path / "demo" / "catalogue.ecsv" and result.paths["export"].is_file()
    assert result.paths["figure"].read_bytes()[:4] == b"\x89PNG"
    cat, sel = result.catalogue, result.selection
    assert list(cat["model"].values) == [CNN.removeprefix("CNN ")]
    # F090W is in the field, for photometry and the photo-z only: the network reads the six wide bands
    assert list(cat["band"].values) == ["F090W", *DEMO_BANDS]
    assert cat.attrs["photoz"]["bands"] == ["F090W", *DEMO_BANDS]
    assert cat.attrs["catalogue_config"]["tile_pix"] == 256 and cat.attrs["redshifts_file"] == ""
    # the sky's mix, and no redshift table: every source selected for dust was selected by P(z>6)
    assert sel["injected"]["high_z"] == 120 and sel["injected"]["foreground"] > 100
    assert sel["selected"] == sel["selected_photoz"] > 20 and sel["selected_spec_z"] == 0
    assert sel["true_high_z_selected"] > sel["interlopers"]
    assert result.match["matched"] >= 60 and result.match["spurious"] <= 10, result.match
    written = Table.read(result.paths["skill"])
    assert written.colnames == result.skill.colnames and written.meta["selection"] == result.skill.meta["selection"]
    assert written.meta["summary"] == result.summary[:-1]  # all but the line naming the files written
    assert any(line.startswith("selected as z > 6") for line in result.summary)
    rows = {(r["quantity"], r["method"]): r for r in result.skill}
    for q in ("A_V", "EBV", "log_ssfr"):
        r = rows[(q, CNN)]
        assert 10 < r["N"] <= sel["scored"] and np.isfinite([r["MAE"], r["MAE_constant"]]).all()

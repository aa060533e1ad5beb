"""Evaluation of real (tiny, briefly trained) Keras bundles on a simulated store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from surveydust.config import load_training_config
from surveydust.evaluate import (
    BASELINE,
    METRICS,
    MEURER,
    TARGETS,
    density_levels,
    evaluate,
    residual_metrics,
    slug,
)
from surveydust.preprocess import colour_features, select_samples
from surveydust.stores.training import open_training_store

BANDS_1 = ("F277W",)
BANDS_3 = ("F277W", "F356W", "F444W")
STORE_BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]  # UV bands: Meurer's A_V too
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z3, NOZ3 = "CNN F277W+F356W+F444W +z", "CNN F277W+F356W+F444W no z"
BASELINE_Z = BASELINE + " +z"
CNNS = ("CNN F277W", Z3, NOZ3)


def make_bundle(client, store: Path, path: Path, bands: tuple[str, ...], *, use_redshift: bool,
                epochs: int = 2, store_id: str | None = None, store_path: Path | None = None) -> Path:
    """A tiny network fitted for ``epochs`` by :func:`surveydust.train.fit_bundle` on a Dask
    worker (as ``train`` does, without augmentation) on the store's training galaxies."""
    from surveydust.train import Part, fit_bundle, prepare_training

    cfg = load_training_config(bands=list(bands), snr_min=0.0, test_fraction=0.2, validation_fraction=0.25,
                               calibration_fraction=0.375, max_epochs=epochs, batch_size=16,
                               use_redshift=use_redshift, model={"conv_filters": [8, 16], "dense_units": [16]})
    split, meta = prepare_training(store, cfg)
    if store_id is not None:
        meta["training_store"]["store_id"] = store_id
    if store_path is not None:
        meta["training_store"]["path"] = str(store_path)
    parts = {"train": Part(str(store), split.train), "validation": Part(str(store), split.validation),
             "calibration": Part(str(store), split.calibration)}
    return Path(client.submit(fit_bundle, parts, cfg, str(path), meta, pure=False).result())


@pytest.fixture(scope="module")
def world(client, tmp_path_factory):
    """A 10-galaxy six-band store, a 1-band bundle and a 3-band bundle that takes redshifts,
    and their evaluation."""
    from surveydust.simulate import simulate

    tmp = tmp_path_factory.mktemp("evaluate")
    store = simulate(tmp / "s.zarr", client=client, progress=False, n_galaxies=10, views_per_galaxy=1,
                     bands=STORE_BANDS)
    bundles = [make_bundle(client, store, tmp / "b1", BANDS_1, use_redshift=False),
               make_bundle(client, store, tmp / "b3", BANDS_3, use_redshift=True)]
    result = evaluate(bundles, store, tmp / "out", block_samples=8)  # several blocks per model
    return {"tmp": tmp, "store": store, "bundles": bundles, "result": result}


def _held_out_samples(store: Path, bundle: Path) -> tuple[np.ndarray, object]:
    """Independent of surveydust.evaluate: the bundle's test galaxies in the store."""
    from surveydust.bundle import load_model

    p = load_model(bundle)
    ds = open_training_store(store)
    cfg = load_training_config(**p.meta["training_config"])
    selected = select_samples(ds, cfg)
    idx = selected[np.isin(ds["galaxy_id"].values[selected], p.meta["split"]["test_galaxies"])]
    return idx, p


def test_table_layout(world):
    table = world["result"].table
    names = [*CNNS, BASELINE_Z, MEURER]
    assert list(table["model"].values) == names
    assert list(table["target"].values) == list(TARGETS)
    assert set(METRICS) <= set(table.data_vars)
    assert {"MAE_constant", "MAE_ratio", "spearman", "slope", "CRPS"} <= set(METRICS)
    fitted = table.sel(model=[*CNNS, BASELINE_Z])
    for m in ("N", "MAE", "MSE", "std", "variance", "bias"):
        assert np.isfinite(fitted[m].values).all(), m
    # (the colour baseline's trees, fitted on ~30 samples, may predict one value: no rank order)
    assert np.isfinite(table["spearman"].sel(target="log_ssfr", model=list(CNNS)).values).all()
    predicted = fitted.sel(target=["A_V", "EBV", "log_ssfr"])  # R_V is derived: no constant guess of its own
    for m in ("MAE_constant", "MAE_ratio"):
        assert np.isfinite(predicted[m].values).all(), m
    np.testing.assert_allclose(table["variance"], table["std"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(table["MSE"], table["variance"] + table["bias"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(predicted["MAE_ratio"], predicted["MAE"] / predicted["MAE_constant"], rtol=1e-9)
    assert (table["held_out"].values == 1).all()
    # the same samples for every method, scored on the same constant guess
    assert len(set(table["n_samples"].values.tolist())) == 1
    np.testing.assert_allclose(table["MAE_constant"].sel(model=Z3), table["MAE_constant"].sel(model=NOZ3))


def test_metrics_match_direct_computation(world):
    from scipy.stats import spearmanr

    from surveydust.posterior import crps_from_percentiles

    table = world["result"].table
    for bundle, name, with_z in zip([*world["bundles"], world["bundles"][1]], CNNS, (False, True, False)):
        idx, p = _held_out_samples(world["store"], bundle)
        ds = open_training_store(world["store"]).isel(sample=idx)
        pred = p.predict(ds["image"].sel(band=list(p.bands)).values, ds["redshift"].values if with_z else None)
        col = table.sel(model=name)
        for t in ("A_V", "EBV", "log_ssfr", "R_V"):
            true, guess = ds[t].values.astype(float), pred[t].values.astype(float)
            ok = np.isfinite(true) & np.isfinite(guess)
            r = guess[ok] - true[ok]
            assert col["N"].sel(target=t) == ok.sum()
            np.testing.assert_allclose(col["MAE"].sel(target=t), np.abs(r).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["MSE"].sel(target=t), (r**2).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["bias"].sel(target=t), r.mean(), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(col["spearman"].sel(target=t), spearmanr(true[ok], guess[ok]).statistic,
                                       rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(col["slope"].sel(target=t), np.polyfit(true[ok], guess[ok], 1)[0],
                                       rtol=1e-3, atol=1e-6)
            if t == "R_V":  # derived: no posterior, no constant guess
                assert np.isnan(col["CRPS"].sel(target=t)) and np.isnan(col["coverage_68"].sel(target=t))
                continue
            const = p.meta["constant_guess"][t]
            np.testing.assert_allclose(col["MAE_constant"].sel(target=t), np.abs(true[ok] - const).mean(), rtol=1e-5)
            pct = np.column_stack([pred[f"{t}_p025"], pred[f"{t}_p16"], pred[t], pred[f"{t}_p84"],
                                   pred[f"{t}_p975"]]).astype(float)[ok]
            inside = (true[ok] >= pct[:, 1]) & (true[ok] <= pct[:, 3])
            np.testing.assert_allclose(col["coverage_68"].sel(target=t), inside.mean(), atol=1e-9)
            np.testing.assert_allclose(col["CRPS"].sel(target=t), crps_from_percentiles(true[ok], pct).mean(),
                                       rtol=1e-4)
        assert col["N"].sel(target="R_V") <= col["N"].sel(target="A_V") == idx.size


def test_a_redshift_model_is_scored_with_and_without_z(world):
    preds = world["result"].predictions
    np.testing.assert_array_equal(preds[Z3]["store_index"], preds[NOZ3]["store_index"])
    assert not np.allclose(preds[Z3]["log_ssfr"], preds[NOZ3]["log_ssfr"])  # the redshift reached the network
    assert BASELINE not in preds and BASELINE_Z in preds  # the widest bundle takes z: so does its baseline


def test_only_held_out_galaxies(world):
    store = open_training_store(world["store"])
    for bundle, name in zip(world["bundles"], CNNS):
        _, p = _held_out_samples(world["store"], bundle)
        split = p.meta["split"]
        test = set(split["test_galaxies"])
        train = set(np.unique(store["galaxy_id"].values)) - test - set(split["validation_galaxies"]) \
            - set(split["calibration_galaxies"])
        assert train and len(split["calibration_galaxies"]) >= 2
        got = set(world["result"].predictions[name]["galaxy_id"].values.tolist())
        assert got == test and not got & train
    for other in (BASELINE_Z, MEURER):
        assert set(world["result"].predictions[other]["galaxy_id"].values.tolist()) == got


def test_coverage_baseline_and_meurer(world):
    table = world["result"].table
    cnn = table.sel(model=list(CNNS), target=["A_V", "EBV", "log_ssfr"])
    for m in ("coverage_68", "coverage_95", "CRPS"):
        v = cnn[m].values
        assert np.isfinite(v).all(), m
    assert ((cnn["coverage_68"] >= 0) & (cnn["coverage_95"] <= 1)).all()
    assert (cnn["coverage_95"] >= cnn["coverage_68"]).all()
    assert (cnn["CRPS"] > 0).all()
    base = table.sel(model=BASELINE_Z)
    assert np.isfinite(base["MAE"].values).all()
    assert np.isnan(base["coverage_68"].values).all() and np.isnan(base["CRPS"].values).all()  # no posteriors
    preds = world["result"].predictions
    assert (preds[BASELINE_Z]["A_V"] >= 0).all() and (preds[BASELINE_Z]["EBV"] >= 0).all()
    meurer = table.sel(model=MEURER)
    assert meurer["N"].sel(target="A_V") > 0 and np.isfinite(meurer["MAE"].sel(target="A_V"))
    for t in ("EBV", "R_V", "log_ssfr"):
        assert meurer["N"].sel(target=t) == 0  # A_V only


def test_files(world):
    from astropy.table import Table

    out = world["tmp"] / "out"
    names = ["cnn-f277w.png", "cnn-f277w-f356w-f444w-z.png", "cnn-f277w-f356w-f444w-no-z.png",
             "baseline-colours-z.png", "meurer-uv-slope.png", "calibration.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name
    expected = {out / n for n in names} | {out / f for f in ("table.csv", "table.ecsv", "bias_by_av.ecsv",
                                                           "skill_by_snr.ecsv")}
    assert set(world["result"].paths.values()) >= expected
    ecsv = Table.read(out / "table.ecsv", format="ascii.ecsv")
    csv = Table.read(out / "table.csv", format="ascii.csv")
    for t in (ecsv, csv):
        assert t.colnames == ["target", "metric", "unit", *CNNS, BASELINE_Z, MEURER]
        assert len(t) == len(TARGETS) * len(METRICS) + 2
    row = (ecsv["target"] == "A_V") & (ecsv["metric"] == "MAE")
    np.testing.assert_allclose(ecsv["CNN F277W"][row][0],
                               world["result"].table["MAE"].sel(target="A_V", model="CNN F277W"))
    assert ecsv["unit"][row][0] == "mag"
    ratio = (ecsv["target"] == "A_V") & (ecsv["metric"] == "MAE_ratio")
    assert ecsv["unit"][ratio][0] in ("", None) or np.ma.is_masked(ecsv["unit"][ratio][0])
    assert ecsv.meta["residual_units"]["log_ssfr"] == "dex"
    assert ecsv.meta["models"]["CNN F277W"]["samples"].startswith("held-out")


@pytest.mark.parametrize(("name", "by", "first", "last"), [("bias_by_av", "true_A_V", "0-0.1", "1.5-inf"),
                                                        ("skill_by_snr", "snr", "0-10", "50-inf")])
def test_binned_skill_tables(world, name, by, first, last):
    from astropy.table import Table

    binned = Table.read(world["tmp"] / "out" / f"{name}.ecsv", format="ascii.ecsv")
    assert world["result"].paths[name] == world["tmp"] / "out" / f"{name}.ecsv"
    table = world["result"].table
    assert binned.colnames[0] == f"{by}_bin" and binned[f"{by}_bin"][0] == first and binned[f"{by}_bin"][-1] == last
    for model in table["model"].values:
        n = np.asarray(binned[f"{model}: N"], float)
        assert n.sum() == table["N"].sel(target="A_V", model=model)  # every sample in one bin
        for key in ("bias", "MAE"):  # the bins' N-weighted means are the whole table's
            v = np.asarray(binned[f"{model}: {key}"], float)
            np.testing.assert_allclose(np.nansum(v * n) / n.sum(), table[key].sel(target="A_V", model=model),
                                       rtol=1e-6, atol=1e-9)
        assert f"{model}: spearman" in binned.colnames


def test_bundle_band_missing_from_store(world, tmp_path):
    from surveydust.bundle import save_bundle
    from surveydust.model import build_model

    cfg = load_training_config(bands=["F090W"])
    model = build_model(("F090W",), 32, 3, cfg.model, cfg.loss)
    meta = {"bands": ["F090W"], "targets": list(cfg.targets), "crop": 32, "loss": cfg.loss,
            "training_config": cfg.model_dump(mode="json"),
            "training_store": {"path": "x", "store_id": "x"},
            "split": {"seed": 0, "test_galaxies": [0], "validation_galaxies": [1]},
            "target_scaling": {t: [0.0, 1.0] for t in cfg.targets}}
    bundle = save_bundle(model, tmp_path / "f090w", meta)
    with pytest.raises(ValueError, match=r"needs band\(s\) \['F090W'\], which store .* lacks"):
        evaluate([bundle], world["store"], tmp_path / "out")


def test_bundle_on_another_store(world, client, tmp_path, caplog):
    """A store of other galaxies (another seed): every selected sample, not held out; the
    baseline still fitted on the bundle's own training galaxies."""
    from surveydust.simulate import simulate

    other = simulate(tmp_path / "other.zarr", client=client, progress=False, n_galaxies=3, views_per_galaxy=1,
                     bands=STORE_BANDS, seed=11)
    with caplog.at_level(logging.WARNING, logger="surveydust.evaluate"):
        res = evaluate([world["bundles"][0]], other, tmp_path / "out")
    assert list(res.table["model"].values) == ["CNN F277W", BASELINE, MEURER]  # no z: nor its baseline
    assert (res.table["held_out"].values == 0).all()
    cfg = load_training_config(bands=list(BANDS_1), snr_min=0.0)
    selected = select_samples(open_training_store(other), cfg)
    for name in res.predictions:
        np.testing.assert_array_equal(np.sort(res.predictions[name]["store_index"].values), selected)
    assert "not trained on store" in caplog.text


def test_bundle_whose_training_store_is_gone(world, client, tmp_path, caplog):
    """Another store id and no training store at the recorded path: all selected samples, no
    colour baseline (nothing to fit it on), Meurer's A_V still."""
    bundle = make_bundle(client, world["store"], tmp_path / "foreign", BANDS_1, use_redshift=False, epochs=1,
                         store_id="someotherstore", store_path=tmp_path / "gone.zarr")
    meta = json.loads((bundle / "bundle.json").read_text())
    recorded = meta["training_store"]
    assert (recorded["path"], recorded["store_id"]) == (str(tmp_path / "gone.zarr"), "someotherstore")
    with caplog.at_level(logging.WARNING, logger="surveydust.evaluate"):
        res = evaluate([bundle], world["store"], tmp_path / "out")
    assert list(res.table["model"].values) == ["CNN F277W", MEURER]
    assert (res.table["held_out"].values == 0).all()
    cfg = load_training_config(bands=list(BANDS_1), snr_min=0.0)
    selected = select_samples(open_training_store(world["store"]), cfg)
    assert res.predictions["CNN F277W"].sizes["sample"] == selected.size
    assert "not trained on store" in caplog.text and "baseline skipped" in caplog.text


def test_residual_metrics_by_hand():
    true = np.array([0.0, 1.0, 2.0, np.nan, 4.0])
    pred = np.array([0.5, 0.5, 2.0, 1.0, np.nan])
    pct = np.array([[-1.0, -0.5, 0.5, 1.0, 2.0],    # truth 0 inside both intervals
                    [0.4, 0.45, 0.5, 0.55, 0.6],    # truth 1 outside both
                    [np.nan] * 5,                   # no posterior: left out of coverage and CRPS
                    [0.0, 0.5, 1.0, 1.5, 2.0],
                    [0.0, 0.5, 1.0, 1.5, 2.0]])
    m = residual_metrics(true, pred, pct, constant=1.0)
    assert m["N"] == 3
    assert m["MAE"] == pytest.approx(1.0 / 3)
    assert m["MSE"] == pytest.approx(0.5 / 3)
    assert m["bias"] == pytest.approx(0.0)
    assert m["variance"] == pytest.approx(np.var([0.5, -0.5, 0.0]))
    assert m["MAE_constant"] == pytest.approx(2.0 / 3) and m["MAE_ratio"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(1.5 / np.sqrt(2 * 1.5))  # ranks (1, 2, 3) vs (1.5, 1.5, 3)
    assert m["slope"] == pytest.approx(0.75)
    assert m["coverage_68"] == pytest.approx(0.5) and m["coverage_95"] == pytest.approx(0.5)
    assert m["CRPS"] == pytest.approx((0.226 + 0.4484) / 2)  # pinball losses worked out by hand
    bare = residual_metrics(true, pred)
    assert np.isnan(bare["coverage_95"]) and np.isnan(bare["CRPS"]) and np.isnan(bare["MAE_constant"])
    assert np.isnan(bare["MAE_ratio"])
    assert residual_metrics(np.array([np.nan]), np.array([1.0]))["N"] == 0
    flat = residual_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    assert np.isnan(flat["spearman"]) and np.isnan(flat["slope"])  # a constant prediction has no rank order


def test_colour_features_and_levels():
    images = np.zeros((2, 3, 32, 32))
    images[:, 0, 16, 16], images[:, 1, 16, 16], images[:, 2, 16, 16] = 100.0, 10.0, 0.0
    f = colour_features(images, crop=32, radius_pix=8.0)
    assert f.shape == (2, 6)
    np.testing.assert_allclose(f[0], [2.0, 1.0, 0.0, -2.5, -5.0, -2.5])  # floor 1 nJy: log10 = 0
    density = np.zeros((10, 10))
    density[5, 5], density[2, 2] = 9.0, 1.0
    levels = density_levels(density, (0.95, 0.5))
    assert list(levels) == [1.0, 9.0]
    assert slug("CNN F277W+F356W+F444W") == "cnn-f277w-f356w-f444w" and slug(BASELINE) == "baseline-colours"

"""Evaluation of real (tiny, briefly trained) Keras bundles on a simulated store."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from surveydust.config import load_training_config
from surveydust.evaluate import (
    BASELINE,
    METRICS,
    TARGETS,
    density_levels,
    evaluate,
    model_name,
    residual_metrics,
    slug,
)
from surveydust.preprocess import colour_features, network_inputs, select_samples, split_by_galaxy
from surveydust.stores.training import open_training_store

BANDS_1 = ("F277W",)
BANDS_3 = ("F277W", "F356W", "F444W")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_bundle(store: Path, path: Path, bands: tuple[str, ...], *, epochs: int = 2,
                store_id: str | None = None) -> Path:
    """Fit the paper's CNN for ``epochs`` on the store's training galaxies and save a
    bundle with the same ``bundle.json`` keys as :func:`surveydust.train.train`."""
    import keras

    from surveydust.bundle import save_bundle
    from surveydust.model import build_model, compile_model

    cfg = load_training_config(bands=list(bands), snr_min=0.0, test_fraction=0.34,
                               validation_fraction=0.5, max_epochs=epochs, batch_size=16)
    ds = open_training_store(store)
    split = split_by_galaxy(ds["galaxy_id"].values, select_samples(ds, cfg), cfg)
    train = ds.isel(sample=split.train)
    x = network_inputs(train["image"].sel(band=list(bands)).values, bands, cfg.crop)
    y = np.stack([train[t].values.astype(float) for t in cfg.targets], axis=1)
    mean, std = y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
    compile_model(model, cfg.loss, cfg.learning_rate)
    model.fit(x, ((y - mean) / std).astype(np.float32), epochs=epochs, batch_size=cfg.batch_size, verbose=0)
    inference = build_model(bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
    inference.set_weights(model.get_weights())
    meta = {
        "bands": list(bands), "targets": list(cfg.targets), "crop": cfg.crop, "loss": cfg.loss,
        "training_config": cfg.model_dump(mode="json"),
        "training_store": {"path": str(store), "store_id": store_id or ds.attrs["store_id"]},
        "split": {"seed": cfg.seed, "test_galaxies": split.test_galaxies,
                  "validation_galaxies": split.validation_galaxies},
        "target_scaling": {t: [float(mean[i]), float(std[i])] for i, t in enumerate(cfg.targets)},
    }
    return save_bundle(inference, path, meta)


@pytest.fixture(scope="module")
def world(client, tmp_path_factory):
    """A 6-galaxy store, a 1-band and a 3-band bundle, and their evaluation."""
    from surveydust.simulate import simulate

    tmp = tmp_path_factory.mktemp("evaluate")
    store = simulate(tmp / "s.zarr", client=client, progress=False, n_galaxies=6, views_per_galaxy=1,
                     bands=list(BANDS_3))
    bundles = [make_bundle(store, tmp / "b1", BANDS_1), make_bundle(store, tmp / "b3", BANDS_3)]
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
    names = [model_name(BANDS_1), model_name(BANDS_3), BASELINE]
    assert list(table["model"].values) == names == ["CNN F277W", "CNN F277W+F356W+F444W", BASELINE]
    assert list(table["target"].values) == list(TARGETS)
    assert set(METRICS) <= set(table.data_vars)
    for m in ("N", "MAE", "MSE", "std", "variance", "bias"):
        assert np.isfinite(table[m].values).all(), m
    np.testing.assert_allclose(table["variance"], table["std"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(table["MSE"], table["variance"] + table["bias"] ** 2, rtol=1e-9)
    assert (table["held_out"].values == 1).all()


def test_metrics_match_direct_computation(world):
    table = world["result"].table
    for bundle, bands in zip(world["bundles"], (BANDS_1, BANDS_3)):
        idx, p = _held_out_samples(world["store"], bundle)
        ds = open_training_store(world["store"]).isel(sample=idx)
        pred = p.predict(ds["image"].sel(band=list(bands)).values)
        col = table.sel(model=model_name(bands))
        for t in ("A_V", "EBV", "log_ssfr", "R_V"):
            true, guess = ds[t].values.astype(float), pred[t].values.astype(float)
            ok = np.isfinite(true) & np.isfinite(guess)
            r = guess[ok] - true[ok]
            assert col["N"].sel(target=t) == ok.sum()
            np.testing.assert_allclose(col["MAE"].sel(target=t), np.abs(r).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["MSE"].sel(target=t), (r**2).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["bias"].sel(target=t), r.mean(), rtol=1e-4, atol=1e-7)
        assert col["N"].sel(target="R_V") <= col["N"].sel(target="A_V") == idx.size


def test_only_held_out_galaxies(world):
    store = open_training_store(world["store"])
    for bundle in world["bundles"]:
        _, p = _held_out_samples(world["store"], bundle)
        test = set(p.meta["split"]["test_galaxies"])
        train = set(np.unique(store["galaxy_id"].values)) - test - set(p.meta["split"]["validation_galaxies"])
        got = set(world["result"].predictions[model_name(p.bands)]["galaxy_id"].values.tolist())
        assert got == test and not got & train
    assert set(world["result"].predictions[BASELINE]["galaxy_id"].values.tolist()) == got


def test_coverage_and_baseline(world):
    table = world["result"].table
    cnn = table.sel(model=[model_name(BANDS_1), model_name(BANDS_3)])
    for m in ("coverage_68", "coverage_95"):
        v = cnn[m].values
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
    assert (cnn["coverage_95"] >= cnn["coverage_68"]).all()
    base = table.sel(model=BASELINE)
    assert np.isfinite(base["MAE"].values).all()
    assert np.isnan(base["coverage_68"].values).all()  # the baseline gives no uncertainties


def test_files(world):
    from astropy.table import Table

    out = world["tmp"] / "out"
    names = ["cnn-f277w.png", "cnn-f277w-f356w-f444w.png", "baseline-colours.png", "calibration.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name
    expected = {out / n for n in names} | {out / "table.csv", out / "table.ecsv"}
    assert set(world["result"].paths.values()) >= expected
    ecsv = Table.read(out / "table.ecsv", format="ascii.ecsv")
    csv = Table.read(out / "table.csv", format="ascii.csv")
    for t in (ecsv, csv):
        assert t.colnames == ["target", "metric", "unit", "CNN F277W", "CNN F277W+F356W+F444W", BASELINE]
        assert len(t) == len(TARGETS) * len(METRICS) + 2
    row = (ecsv["target"] == "A_V") & (ecsv["metric"] == "MAE")
    np.testing.assert_allclose(ecsv["CNN F277W"][row][0],
                               world["result"].table["MAE"].sel(target="A_V", model="CNN F277W"))
    assert ecsv["unit"][row][0] == "mag"
    assert ecsv.meta["residual_units"]["log_ssfr"] == "dex"
    assert ecsv.meta["models"]["CNN F277W"]["samples"].startswith("held-out")


def test_bundle_band_missing_from_store(world, tmp_path):
    from surveydust.bundle import save_bundle
    from surveydust.model import build_model

    cfg = load_training_config(bands=["F150W"])
    model = build_model(("F150W",), 32, 3, cfg.model, cfg.loss)
    meta = {"bands": ["F150W"], "targets": list(cfg.targets), "crop": 32, "loss": cfg.loss,
            "training_config": cfg.model_dump(mode="json"),
            "training_store": {"path": "x", "store_id": "x"},
            "split": {"seed": 0, "test_galaxies": [0], "validation_galaxies": [1]},
            "target_scaling": {t: [0.0, 1.0] for t in cfg.targets}}
    bundle = save_bundle(model, tmp_path / "f150w", meta)
    with pytest.raises(ValueError, match=r"needs band\(s\) \['F150W'\], which store .* lacks"):
        evaluate([bundle], world["store"], tmp_path / "out")


def test_bundle_from_another_store(world, tmp_path, caplog):
    import json

    bundle = tmp_path / "foreign"
    shutil.copytree(world["bundles"][0], bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["training_store"]["store_id"] = "someotherstore"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="surveydust.evaluate"):
        res = evaluate([bundle], world["store"], tmp_path / "out")
    assert list(res.table["model"].values) == ["CNN F277W"]  # baseline skipped: no known training set
    assert res.table["held_out"].item() == 0
    cfg = load_training_config(bands=list(BANDS_1), snr_min=0.0)
    selected = select_samples(open_training_store(world["store"]), cfg)
    assert res.predictions["CNN F277W"].sizes["sample"] == selected.size
    assert "not trained on store" in caplog.text and "baseline skipped" in caplog.text


def test_residual_metrics_by_hand():
    true = np.array([0.0, 1.0, 2.0, np.nan, 4.0])
    pred = np.array([0.5, 0.5, 2.0, 1.0, np.nan])
    err = np.array([1.0, 0.1, np.nan, 1.0, 1.0])
    m = residual_metrics(true, pred, err)
    assert m["N"] == 3
    assert m["MAE"] == pytest.approx(1.0 / 3)
    assert m["MSE"] == pytest.approx(0.5 / 3)
    assert m["bias"] == pytest.approx(0.0)
    assert m["variance"] == pytest.approx(np.var([0.5, -0.5, 0.0]))
    assert m["coverage_68"] == pytest.approx(0.5)  # |0.5|/1 inside, |0.5|/0.1 outside
    assert np.isnan(residual_metrics(true, pred)["coverage_95"])
    assert residual_metrics(np.array([np.nan]), np.array([1.0]))["N"] == 0


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

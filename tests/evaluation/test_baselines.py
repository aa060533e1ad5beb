"""The baselines without morphology: trees on aperture colours and Meurer's A_V from the UV slope."""

from __future__ import annotations

import json
import logging

import numpy as np

from surveydust.config import load_training_config
from surveydust.evaluation import evaluate
from surveydust.evaluation.baselines import BASELINE, MEURER
from surveydust.preprocess import colour_features, select_samples
from surveydust.stores.training import open_training_store

BASELINE_Z = BASELINE + " +z"


def test_baseline_and_meurer(evaluation_world):
    table = evaluation_world["result"].table
    base = table.sel(model=BASELINE_Z)
    assert np.isfinite(base["MAE"].values).all()
    assert np.isnan(base["coverage_68"].values).all() and np.isnan(base["CRPS"].values).all()  # no posteriors
    preds = evaluation_world["result"].predictions
    assert (preds[BASELINE_Z]["A_V"] >= 0).all() and (preds[BASELINE_Z]["EBV"] >= 0).all()
    meurer = table.sel(model=MEURER)
    assert meurer["N"].sel(target="A_V") > 0 and np.isfinite(meurer["MAE"].sel(target="A_V"))
    for t in ("EBV", "R_V", "log_ssfr"):
        assert meurer["N"].sel(target=t) == 0  # A_V only


def test_bundle_whose_training_store_is_gone(evaluation_world, make_bundle, tmp_path, caplog):
    """Another store id and no training store at the recorded path: all selected samples, no
    colour baseline (nothing to fit it on), Meurer's A_V still."""
    store = evaluation_world["store"]
    bundle = make_bundle(store, tmp_path / "foreign", ("F277W",), use_redshift=False, epochs=1,
                         store_id="someotherstore", store_path=tmp_path / "gone.zarr")
    meta = json.loads((bundle / "bundle.json").read_text())
    recorded = meta["training_store"]
    assert (recorded["path"], recorded["store_id"]) == (str(tmp_path / "gone.zarr"), "someotherstore")
    with caplog.at_level(logging.WARNING, logger="surveydust.evaluation"):
        res = evaluate([bundle], store, tmp_path / "out")
    assert list(res.table["model"].values) == ["CNN F277W", MEURER]
    assert (res.table["held_out"].values == 0).all()
    cfg = load_training_config(bands=["F277W"], snr_min=0.0)
    selected = select_samples(open_training_store(store), cfg)
    assert res.predictions["CNN F277W"].sizes["sample"] == selected.size
    assert "not trained on store" in caplog.text and "baseline skipped" in caplog.text


def test_colour_features():
    images = np.zeros((2, 3, 32, 32))
    images[:, 0, 16, 16], images[:, 1, 16, 16], images[:, 2, 16, 16] = 100.0, 10.0, 0.0
    f = colour_features(images, crop=32, radius_pix=8.0)
    assert f.shape == (2, 6)
    np.testing.assert_allclose(f[0], [2.0, 1.0, 0.0, -2.5, -5.0, -2.5])  # floor 1 nJy: log10 = 0

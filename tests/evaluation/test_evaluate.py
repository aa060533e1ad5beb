"""The entry point ``surveydust.evaluate``: bundles scored on a store, and what it refuses."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import surveydust
from surveydust.config import load_training_config
from surveydust.evaluation import evaluate
from surveydust.evaluation.baselines import BASELINE, MEURER
from surveydust.preprocess import select_samples
from surveydust.stores.training import open_training_store


def test_public_entry_point(tmp_path):
    assert surveydust.evaluate is evaluate
    with pytest.raises(ValueError, match="no model bundles"):
        evaluate([], tmp_path / "store.zarr", tmp_path / "out")


def test_bundle_band_missing_from_store(evaluation_world, tmp_path):
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
        evaluate([bundle], evaluation_world["store"], tmp_path / "out")


def test_bundle_on_another_store(evaluation_world, client, tmp_path, caplog):
    """A store of other galaxies (another seed): every selected sample, not held out; the
    baseline still fitted on the bundle's own training galaxies."""
    from surveydust.simulate import simulate

    bands = [str(b) for b in open_training_store(evaluation_world["store"])["band"].values]
    other = simulate(tmp_path / "other.zarr", client=client, progress=False, n_galaxies=3, views_per_galaxy=1,
                     bands=bands, seed=11)
    with caplog.at_level(logging.WARNING, logger="surveydust.evaluation"):
        res = evaluate([evaluation_world["bundles"][0]], other, tmp_path / "out")
    assert list(res.table["model"].values) == ["CNN F277W", BASELINE, MEURER]  # no z: nor its baseline
    assert (res.table["held_out"].values == 0).all()
    cfg = load_training_config(bands=["F277W"], snr_min=0.0)
    selected = select_samples(open_training_store(other), cfg)
    for name in res.predictions:
        np.testing.assert_array_equal(np.sort(res.predictions[name]["store_index"].values), selected)
    assert "not trained on store" in caplog.text

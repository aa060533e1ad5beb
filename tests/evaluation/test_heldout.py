"""Each bundle's held-out samples, rebuilt from its bundle.json, and its predictions on them."""

from __future__ import annotations

import numpy as np

from surveydust.evaluation.baselines import BASELINE, MEURER
from surveydust.evaluation.heldout import image_blocks, model_name, truths
from surveydust.stores.training import open_training_store

Z3, NOZ3 = "CNN F277W+F356W+F444W +z", "CNN F277W+F356W+F444W no z"


def test_only_held_out_galaxies(evaluation_world, held_out_samples):
    world = evaluation_world
    store = open_training_store(world["store"])
    for bundle, name in zip(world["bundles"], ("CNN F277W", Z3)):
        _, p = held_out_samples(world["store"], bundle)
        split = p.meta["split"]
        test = set(split["test_galaxies"])
        train = set(np.unique(store["galaxy_id"].values)) - test - set(split["validation_galaxies"]) \
            - set(split["calibration_galaxies"])
        assert train and len(split["calibration_galaxies"]) >= 2
        got = set(world["result"].predictions[name]["galaxy_id"].values.tolist())
        assert got == test and not got & train
    for other in (BASELINE + " +z", MEURER):
        assert set(world["result"].predictions[other]["galaxy_id"].values.tolist()) == got


def test_a_redshift_model_is_scored_with_and_without_z(evaluation_world):
    preds = evaluation_world["result"].predictions
    np.testing.assert_array_equal(preds[Z3]["store_index"], preds[NOZ3]["store_index"])
    assert not np.allclose(preds[Z3]["log_ssfr"], preds[NOZ3]["log_ssfr"])  # the redshift reached the network
    assert BASELINE not in preds and BASELINE + " +z" in preds  # the widest bundle takes z: so does its baseline


def test_image_blocks_and_truths(evaluation_world):
    ds = open_training_store(evaluation_world["store"])
    idx = np.array([3, 1, 3, 0, 2])
    blocks = list(image_blocks(ds, idx, ["F444W", "F277W"], block_samples=2))
    assert [b.shape[0] for b in blocks] == [2, 2, 1] and all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks),
                                  ds["image"].sel(band=["F444W", "F277W"]).values[idx].astype(np.float32))
    true = truths(ds, idx)
    np.testing.assert_array_equal(true["A_V"], ds["A_V"].values[idx])
    np.testing.assert_array_equal(true["snr"], ds["snr"].sel(band="F277W").values[idx])
    assert model_name(("F277W", "F356W")) == "CNN F277W+F356W"

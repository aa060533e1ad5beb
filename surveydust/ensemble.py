"""Deep ensembles: networks trained on the same split from different initial weights and
batch orders (``fit_seed``), combined into one bundle.

The bundle's model feeds the same inputs to every member and returns, per target,
one Gaussian with the mean and variance of the equal-weight mixture of the
members' Gaussians (:class:`surveydust.model.MixtureMoments`; Lakshminarayanan
et al. 2017). The percentiles are calibrated again, on the same calibration
galaxies the members were calibrated on (which none of them trained on), so a
:class:`surveydust.bundle.Predictor` uses an ensemble like any other bundle.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from surveydust.backend import keras_module
from surveydust.bundle import MODEL_FILE, read_meta, save_bundle
from surveydust.config import load_training_config
from surveydust.stores.base import check_output_path, replace_atomically
from surveydust.stores.training import open_training_store
from surveydust.train import Part, calibration_levels, prepare_training

#: metadata every member must share (the same inputs, outputs, targets' space and split)
SHARED_META = ("bands", "targets", "crop", "loss", "uses_redshift", "posterior", "target_scaling")
SHARED_SPLIT = ("protocol", "seed", "test_galaxies", "validation_galaxies", "calibration_galaxies")


def combine_bundles(members: Sequence[Path | str], out: Path | str, store: Path | str | None = None,
                    overwrite: bool = False) -> Path:
    """Combine trained bundles of one split into an ensemble bundle at ``out``; return its path.

    ``store``: the training store the members were trained on, to calibrate the
    ensemble on their calibration galaxies [default: the path recorded in the
    members' metadata]. Raises ValueError for fewer than two members or members
    that differ in bands, targets, loss, target scaling, split or training store.
    """
    out = check_output_path(out, overwrite, "bundle")
    metas = check_members([Path(m) for m in members])
    store = Path(store) if store is not None else Path(metas[0]["training_store"]["path"])
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        bundle = write_ensemble([str(m) for m in members], str(store), str(Path(tmp) / "bundle"))
        replace_atomically(Path(bundle), out)
    return out


def check_members(members: Sequence[Path]) -> list[dict[str, Any]]:
    """Read the members' metadata; raise ValueError unless they can be combined."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 bundles, got {len(members)}")
    metas = [read_meta(m) for m in members]
    first = metas[0]
    if first["loss"] != "gaussian_nll":
        raise ValueError(f"only gaussian_nll bundles can be combined ({members[0]} has loss {first['loss']})")
    for path, meta in zip(members[1:], metas[1:], strict=True):
        differ = [k for k in SHARED_META if meta.get(k) != first.get(k)]
        differ += [f"split {k}" for k in SHARED_SPLIT if meta["split"].get(k) != first["split"].get(k)]
        if meta["training_store"]["store_id"] != first["training_store"]["store_id"]:
            differ.append("training store")
        if differ:
            raise ValueError(f"{path} cannot join {members[0]} in an ensemble: they differ in "
                             f"{', '.join(differ)} (train members with the same store, bands and seed, "
                             "and different fit_seed)")
    return metas


def write_ensemble(members: Sequence[str], store: str, out: str) -> str:
    """Build, calibrate and save the ensemble of bundles ``members`` at ``out`` (may run as a
    Dask task on a worker); the calibration galaxies are read from ``store``."""
    keras = keras_module()
    from surveydust.model import ensemble_model  # imports Keras
    metas = check_members([Path(m) for m in members])
    first = metas[0]
    cfg = load_training_config(**first["training_config"])
    store_id = open_training_store(store).attrs.get("store_id")
    if store_id != first["training_store"]["store_id"]:
        raise ValueError(f"{store} is not the training store of these bundles (store id {store_id}, "
                         f"theirs {first['training_store']['store_id']})")
    split, _ = prepare_training(store, cfg)
    if not np.array_equal(split.calibration_galaxies, first["split"]["calibration_galaxies"]):
        raise ValueError(f"the split of {store} under these bundles' settings no longer gives their "
                         "calibration galaxies (settings changed since they were trained)")
    scaling = first["target_scaling"]
    mean = np.array([scaling[t][0] for t in cfg.targets])
    std = np.array([scaling[t][1] for t in cfg.targets])
    nets = [keras.saving.load_model(Path(m) / MODEL_FILE, compile=False, safe_mode=True) for m in members]
    model = ensemble_model(nets)
    meta = {k: v for k, v in first.items() if k not in ("checksums", "format_version", "keras_backend",
                                                         "history", "epochs_run", "calibration")}
    meta["ensemble"] = {
        "combination": "equal-weight mixture of the members' Gaussians, moment-matched (network space)",
        "members": [{"model_id": m["checksums"][MODEL_FILE][:12],
                     "fit_seed": load_training_config(**m["training_config"]).weights_seed,
                     "epochs_run": m.get("epochs_run"), "history": m.get("history", {})} for m in metas],
    }
    meta["training_config"] = {**first["training_config"], "fit_seed": None, "ensemble": len(members)}
    meta["calibration"] = calibration_levels(model, Part(store, split.calibration), cfg, mean, std)
    save_bundle(model, Path(out), meta)
    return out

"""Train a CNN on a training store: select, split by galaxy, augment on Dask,
fit on a Dask worker (a GPU worker when the cluster has one), write a bundle.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.base
import numpy as np

import surveydust
from surveydust.augment import augment_store
from surveydust.bundle import save_bundle
from surveydust.cluster import open_client, worker_resources
from surveydust.config import TrainingConfig, load_training_config
from surveydust.preprocess import Split, feature_stats, network_inputs, select_samples, split_by_galaxy
from surveydust.stores.training import check_output_path, open_training_store, replace_atomically

logger = logging.getLogger(__name__)
EPOCH_TOPIC = "surveydust-epoch"


def train(
    store: Path | str,
    out: Path | str,
    config: TrainingConfig | Path | str | None = None,
    *,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train on ``store`` and write a model bundle to ``out``; return its path.

    ``config`` (a :class:`TrainingConfig`, a YAML file, or None for the
    defaults) with ``overrides`` (e.g. ``bands=["F277W"]``) on top. Heavy work
    runs on ``client`` or on a cluster from the ``cluster`` profile.
    """
    cfg = load_training_config(config, **overrides)
    out = check_output_path(out, overwrite)
    split, meta = prepare_training(store, cfg)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp, \
            open_client(client, profile=cluster, workers=workers) as c:
        augmented = augment_store(store, Path(tmp) / "augmented.zarr", split.train, config=cfg.augment,
                                  bands=cfg.bands, targets=cfg.targets, seed=cfg.seed, client=c,
                                  progress=progress)
        gpu = any("GPU" in r for r in worker_resources(c).values())
        token = dask.base.tokenize(cfg.model_dump_json(), meta["training_store"], meta["created"])
        topic = f"{EPOCH_TOPIC}-{token}"
        if progress:
            c.subscribe_topic(topic, _print_epoch)
        try:
            future = c.submit(fit_bundle, str(augmented), str(store), split.validation, cfg,
                              str(Path(tmp) / "bundle"), meta, topic, key=f"fit-model-{token}",
                              resources={"GPU": 1} if gpu else None, pure=False)
            bundle = Path(future.result())
        finally:
            if progress:
                c.unsubscribe_topic(topic)
        replace_atomically(bundle, out)
    return out


def prepare_training(store: Path | str, cfg: TrainingConfig) -> tuple[Split, dict[str, Any]]:
    """Select and split ``store``'s samples for ``cfg``; return the split and the bundle metadata."""
    ds = open_training_store(store)
    selected = select_samples(ds, cfg)
    split = split_by_galaxy(ds["galaxy_id"].values, selected, cfg)
    meta = {
        "surveydust_version": surveydust.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bands": list(cfg.bands), "targets": list(cfg.targets), "crop": cfg.crop, "loss": cfg.loss,
        "training_config": cfg.model_dump(mode="json"),
        "training_store": {"path": str(Path(store).resolve()), "store_id": ds.attrs["store_id"]},
        "split": {"seed": cfg.seed, "test_galaxies": split.test_galaxies,
                  "validation_galaxies": split.validation_galaxies,
                  "n_samples": {"train": split.train.size, "validation": split.validation.size,
                                "test": split.test.size}},
    }
    return split, meta


def _arrays(ds: Any, cfg: TrainingConfig) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, list]]:
    """Network inputs, labels and the feature statistics (for out-of-distribution scores)."""
    images = ds["image"].sel(band=list(cfg.bands)).values
    labels = np.stack([ds[t].values.astype(np.float64) for t in cfg.targets], axis=1)
    return network_inputs(images, cfg.bands, cfg.crop), labels, feature_stats(images, cfg.crop)


def _print_epoch(event: tuple[float, dict[str, Any]]) -> None:
    info = event[1]
    losses = ", ".join(f"{k} {v:.4f}" for k, v in info.items() if "loss" in k and isinstance(v, float))
    print(f"epoch {info['epoch']}/{info['epochs']}: {losses}", file=sys.stderr, flush=True)


def _epoch_reporter(topic: str | None, epochs: int) -> Any:
    """Keras callback that sends each epoch's losses to the client as a Dask event."""
    import keras
    from distributed import get_worker

    class EpochEvents(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            try:
                worker = get_worker()
            except ValueError:  # not running on a Dask worker
                return
            worker.log_event(topic, {"epoch": epoch + 1, "epochs": epochs,
                                     **{k: float(v) for k, v in (logs or {}).items()}})

    return EpochEvents()


def fit_bundle(train_store: str, store: str, validation: np.ndarray, cfg: TrainingConfig,
               out: str, meta: dict[str, Any], topic: str | None = None,
               callbacks: Sequence[Any] = ()) -> str:
    """Fit the network (runs as one Dask task on a worker) and save the bundle to ``out``.

    Each epoch's losses go to the Dask event ``topic`` (printed by ``train``);
    extra Keras ``callbacks`` run after early stopping (e.g. trial pruning).
    """
    import keras

    from surveydust.model import build_model, compile_model

    keras.utils.set_random_seed(cfg.seed)
    with dask.config.set(scheduler="synchronous"):  # read on this worker, not through the cluster
        x, y, ood = _arrays(open_training_store(train_store), cfg)
        xv, yv, _ = _arrays(open_training_store(store).isel(sample=validation), cfg)
    if cfg.loss == "gaussian_nll":
        mean, std = y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6)
    else:
        mean, std = np.zeros(y.shape[1]), np.ones(y.shape[1])
    model = build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
    compile_model(model, cfg.loss, cfg.learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                         restore_best_weights=True)
    callbacks = [stop, *callbacks] + ([_epoch_reporter(topic, cfg.max_epochs)] if topic else [])
    history = model.fit(x, ((y - mean) / std).astype(np.float32), batch_size=cfg.batch_size,
                        epochs=cfg.max_epochs, shuffle=True, verbose=0, callbacks=callbacks,
                        validation_data=(xv, ((yv - mean) / std).astype(np.float32)))
    meta = {**meta,
            "target_scaling": {t: [float(mean[i]), float(std[i])] for i, t in enumerate(cfg.targets)},
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "epochs_run": len(history.history["loss"]), "n_train_augmented": int(len(y)), "ood": ood}
    inference = build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
    inference.set_weights(model.get_weights())  # uncompiled: no optimizer state in the bundle
    save_bundle(inference, Path(out), meta)
    logger.info("trained %s on %d samples for %d epochs", cfg.bands, len(y), meta["epochs_run"])
    return out

"""Train a CNN on a training store and write it as a calibrated model bundle.

Select, split, augment on Dask, fit on a Dask worker (a GPU worker when the
cluster has one) with batches streamed from the augmented Zarr store,
calibrate the percentiles on galaxies training never saw, write a bundle.

Two protocols (``split``): ``galaxy`` (the default) holds out whole galaxies
for test, validation and calibration before augmenting, so no rotated or
re-dusted copy of a test galaxy is ever trained on; ``paper`` augments every
selected sample first and then splits the augmented samples at random, as the
paper's section 2.4.1 did (rotated copies of test images sit in training: use
it only to compare with the paper's Table 2).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.base
import numpy as np

from surveydust.augment import augment_store
from surveydust.backend import keras_module
from surveydust.bundle import (
    MODEL_FILE,
    check_ensemble_members,
    read_meta,
    save_bundle,
    store_redshift_range,
    write_meta,
)
from surveydust.cluster import Compute, gpu_workers
from surveydust.config import AugmentConfig, TrainingConfig, load_training_config
from surveydust.errors import InputError
from surveydust.posterior import MIN_CALIBRATION_SAMPLES, calibrate, describe, log_offsets, to_network
from surveydust.preprocess import Split, crop_centre, network_inputs, select_samples, split_by_galaxy
from surveydust.provenance import VERSION
from surveydust.simulate.priors import store_priors
from surveydust.stores.base import check_output_path, replace_atomically
from surveydust.stores.training import open_training_store
from surveydust.transforms import allowed_transforms, apply_transform, extra_noise_sigma

logger = logging.getLogger(__name__)
EPOCH_TOPIC = "surveydust-epoch"
LR_PATIENCE = 3  # epochs without improvement before the learning rate is halved


@dataclass(frozen=True)
class Part:
    """Samples ``index`` of the training store at ``path`` (one part of a split)."""

    path: str
    index: np.ndarray


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
    runs on ``client`` or on a cluster from the ``cluster`` profile; the fit
    task trains with every core of its worker's machine (:func:`use_all_cores`).
    """
    cfg = load_training_config(config, **overrides)
    out = check_output_path(out, overwrite, "bundle")
    split, meta = prepare_training(store, cfg)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp, \
            Compute(client, cluster, workers, progress).open() as c:
        parts, meta = _parts(str(store), Path(tmp) / "augmented.zarr", split, cfg, meta, c, progress)
        gpu = bool(gpu_workers(c))
        token = dask.base.tokenize(cfg.model_dump_json(), meta["training_store"], meta["created"])
        topic = f"{EPOCH_TOPIC}-{token}"
        if progress:
            c.subscribe_topic(topic, _print_epoch)
        try:
            resources = {"GPU": 1} if gpu else None
            futures = [c.submit(fit_bundle, parts, member_config(cfg, k), str(Path(tmp) / f"member{k}"), meta,
                                topic, label=f"network {k + 1}/{cfg.ensemble}" if cfg.ensemble > 1 else None,
                                key=f"fit-model-{token}-{k}", resources=resources, pure=False)
                       for k in range(cfg.ensemble)]  # on several workers (GPUs) they train side by side
            if cfg.ensemble > 1:
                futures = [c.submit(write_ensemble, futures, str(store), str(Path(tmp) / "bundle"),
                                    key=f"ensemble-{token}", resources=resources, pure=False)]
            bundle = Path(futures[0].result())
        finally:
            if progress:
                c.unsubscribe_topic(topic)
        replace_atomically(bundle, out)
    return out


def member_config(cfg: TrainingConfig, k: int) -> TrainingConfig:
    """The configuration of ensemble member ``k``: fit seed ``weights_seed + k``, same split."""
    return cfg if cfg.ensemble == 1 else cfg.model_copy(update={"fit_seed": cfg.weights_seed + k, "ensemble": 1})


def prepare_training(store: Path | str, cfg: TrainingConfig) -> tuple[Split, dict[str, Any]]:
    """Select and split ``store``'s samples for ``cfg``; return the split and the bundle metadata.

    With ``split: paper`` the galaxy split still picks validation and
    calibration galaxies; its ``train`` and ``test`` are then augmented
    together and split by sample in :func:`_parts`.
    """
    ds = open_training_store(store)
    selected = select_samples(ds, cfg)
    split = split_by_galaxy(ds["galaxy_id"].values, selected, cfg)
    if cfg.loss == "gaussian_nll" and split.calibration.size < MIN_CALIBRATION_SAMPLES:
        raise InputError(f"only {split.calibration.size} calibration samples ({split.calibration_galaxies.size} "
                         f"galaxies, calibration_fraction {cfg.calibration_fraction:g}): need at least "
                         f"{MIN_CALIBRATION_SAMPLES}; raise calibration_fraction or simulate more galaxies")
    meta = {
        "surveydust_version": VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bands": list(cfg.bands), "targets": list(cfg.targets), "crop": cfg.crop, "loss": cfg.loss,
        "uses_redshift": cfg.use_redshift, "posterior": describe(log_offsets(cfg.dust_offset_mag)),
        "training_config": cfg.model_dump(mode="json"),
        "training_store": {"path": str(Path(store).resolve()), "store_id": ds.attrs["store_id"],
                           "redshift_range": store_redshift_range(ds), "priors": store_priors(ds.attrs)},
        "split": {"protocol": cfg.split, "seed": cfg.seed, "test_galaxies": split.test_galaxies,
                  "validation_galaxies": split.validation_galaxies,
                  "calibration_galaxies": split.calibration_galaxies,
                  "n_samples": {"train": split.train.size, "validation": split.validation.size,
                                "calibration": split.calibration.size, "test": split.test.size}},
    }
    return split, meta


def augments_per_batch(cfg: TrainingConfig) -> bool:
    """Whether rotations, flips and noise are drawn afresh per batch from the stored training
    galaxies (``augment.per_batch`` with the galaxy split) rather than written as copies first."""
    return cfg.augment.per_batch and cfg.split == "galaxy"


def _parts(store: str, augmented: Path, split: Split, cfg: TrainingConfig, meta: dict[str, Any],
           client: Any, progress: bool) -> tuple[dict[str, Part], dict[str, Any]]:
    """Train, validation and calibration parts (and, for ``paper``, its sample-level test).

    The training part is the training galaxies of ``store`` itself when they are
    augmented per batch; otherwise their augmented copies, written to
    ``augmented`` on the cluster (for ``paper``: the test samples' too, split
    by sample afterwards).
    """
    held_out = {"validation": Part(store, split.validation), "calibration": Part(store, split.calibration)}
    if augments_per_batch(cfg):
        return {"train": Part(store, split.train), **held_out}, meta
    to_augment = split.train if cfg.split == "galaxy" else np.concatenate([split.train, split.test])
    augment_store(store, augmented, np.sort(to_augment), config=cfg.augment, bands=cfg.bands,
                  targets=cfg.targets, seed=cfg.seed, client=client, progress=progress)
    ds = open_training_store(augmented)
    if cfg.split == "galaxy":
        return {"train": Part(str(augmented), np.arange(ds.sizes["sample"])), **held_out}, meta
    order = np.random.default_rng([cfg.seed, 2]).permutation(ds.sizes["sample"])
    n_test = round(cfg.test_fraction * order.size)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    pairs = np.column_stack([ds["source_sample"].values[test], ds["transform"].values[test]])
    split_meta = {**meta["split"], "test_galaxies": [], "paper_test": pairs,
                  "n_samples": {**meta["split"]["n_samples"], "train": int(train.size), "test": int(test.size)}}
    return {"train": Part(str(augmented), train), **held_out}, {**meta, "split": split_meta}


def _print_epoch(event: tuple[float, dict[str, Any]]) -> None:
    info = event[1]
    losses = ", ".join(f"{k} {v:.4f}" for k, v in info.items() if "loss" in k and isinstance(v, float))
    rate = f", {info['samples_per_s']:.0f} samples/s" if "samples_per_s" in info else ""
    label = f"{info['label']}: " if info.get("label") else ""
    print(f"{label}epoch {info['epoch']}/{info['epochs']}: {losses}{rate}", file=sys.stderr, flush=True)


def _epoch_reporter(topic: str | None, epochs: int, samples_per_epoch: int, label: str | None = None) -> Any:
    """Keras callback that sends each epoch's losses and speed to the client as a Dask event."""
    import time

    import keras
    from distributed import get_worker

    class EpochEvents(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            try:
                worker = get_worker()
            except ValueError:  # not running on a Dask worker
                return
            rate = samples_per_epoch / max(time.perf_counter() - self.t0, 1e-9)
            worker.log_event(topic, {"epoch": epoch + 1, "epochs": epochs, "samples_per_s": rate, "label": label,
                                     **{k: float(v) for k, v in (logs or {}).items()}})

    return EpochEvents()


def use_all_cores(threads: int | None = None) -> int:
    """Let this process's numerical libraries use ``threads`` cores (None: every core it may run on).

    A Dask nanny starts workers with ``OMP_NUM_THREADS=1`` (and friends), which
    makes TensorFlow/oneDNN train on one core. Effective only before the
    backend is first imported in the process; returns the thread count.
    """
    n = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(n)
    return n


def target_values(ds: Any, cfg: TrainingConfig) -> np.ndarray:
    """Labels ``(n, target)`` of a store in the network's space: transformed for the
    likelihood (:func:`surveydust.posterior.to_network`), as they are for ``mape``."""
    if cfg.loss != "gaussian_nll":
        return np.stack([ds[t].values.astype(np.float64) for t in cfg.targets], axis=1)
    offsets = log_offsets(cfg.dust_offset_mag)
    return np.stack([to_network(t, ds[t].values, offsets) for t in cfg.targets], axis=1)


class StoreBatches:
    """Batches streamed from a training store (made a ``keras.utils.PyDataset`` by
    :func:`store_batches`).

    Every epoch visits the chunks in a new random order, in windows of chunks
    whose samples of this part fit ``shuffle_buffer_mb``; the samples of a
    window are mixed freely, so a batch holds many galaxies, not the copies of
    a few (a store keeps each galaxy's views together). When the whole part
    fits one window it is read once and kept. A ``redshift_dropout`` fraction
    of each batch is shown without its redshift.

    With ``augment`` (per-batch augmentation, ``augment.per_batch``), every
    sample of every batch gets a random dihedral transform (rotations by 90
    degrees with ``rotations``, left-right flips with ``flips``) and fresh
    Gaussian noise of ``u * noise * noise_sigma[band]`` per pixel (``u``
    uniform in 0..1, drawn per sample) before it is normalised, so the network
    never sees the same pixels twice.
    """

    def __init__(self, part: Part, cfg: TrainingConfig, mean: np.ndarray, std: np.ndarray,
                 shuffle: bool = True, augment: AugmentConfig | None = None) -> None:
        ds = open_training_store(part.path)
        self.image = ds["image"].sel(band=list(cfg.bands)).data
        self.chunk = self.image.chunks[0][0]
        self.index = np.sort(np.asarray(part.index))
        self.y = ((target_values(ds.isel(sample=self.index), cfg) - mean) / std).astype(np.float32)
        self.z = ds["redshift"].values[self.index].astype(np.float64) if cfg.use_redshift else None
        self.capacity = max(1, int(cfg.shuffle_buffer_mb * 2 ** 20 // (4 * len(cfg.bands) * cfg.crop ** 2)))
        self.augment = augment
        self.transforms = allowed_transforms(augment.rotations, augment.flips) if augment else None
        self.noise = None if augment is None or augment.noise == 0 else \
            extra_noise_sigma(ds, cfg.bands, augment.noise, part.path)
        self.cfg, self.shuffle, self.epoch = cfg, shuffle, 0
        self._lock = threading.Lock()
        self._loaded: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._plan = self._epoch_order()  # one tuple, swapped whole: prefetch threads never mix epochs

    def __len__(self) -> int:
        return int(np.ceil(self.index.size / self.cfg.batch_size))

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
        """Positions into ``self.index`` for this epoch, the window of each, and each window's chunks."""
        block = self.index // self.chunk
        rng = np.random.default_rng([self.cfg.weights_seed, 3, self.epoch])
        blocks, counts = np.unique(block, return_counts=True)
        if self.shuffle:
            perm = rng.permutation(blocks.size)
            blocks, counts = blocks[perm], counts[perm]
        windows: list[tuple[int, ...]] = []
        start, held = 0, 0
        for i, n in enumerate(counts):  # greedy: chunks in turn while their samples fit the buffer
            if i > start and held + n > self.capacity:
                windows.append(tuple(sorted(blocks[start:i].tolist())))
                start, held = i, 0
            held += n
        windows.append(tuple(sorted(blocks[start:].tolist())))
        order = [np.flatnonzero(np.isin(block, w)) for w in windows]
        if self.shuffle:
            order = [rng.permutation(o) for o in order]
        window_of = np.repeat(np.arange(len(windows)), [o.size for o in order])
        return np.concatenate(order), window_of, windows

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._plan = self._epoch_order()

    def _window_images(self, window: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Store indices and centred crops ``(n, band, crop, crop)`` [nJy] of this part's samples
        in ``window``'s chunks, read once (reading a new window drops all but the last one read)."""
        with self._lock:
            if window not in self._loaded:
                for old in list(self._loaded)[:-1]:
                    del self._loaded[old]
                sample = self.index[np.isin(self.index // self.chunk, window)]
                crops = []
                for b in window:
                    rows = sample[sample // self.chunk == b] - b * self.chunk
                    chunk = np.asarray(self.image[b * self.chunk:(b + 1) * self.chunk].compute(scheduler="synchronous"))
                    crops.append(np.ascontiguousarray(crop_centre(chunk[rows], self.cfg.crop), dtype=np.float32))
                self._loaded[window] = (sample, np.concatenate(crops))
            return self._loaded[window]

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        order, window_of, windows = self._plan
        span = slice(i * self.cfg.batch_size, (i + 1) * self.cfg.batch_size)
        pos, window_of = order[span], window_of[span]
        sample = self.index[pos]
        images = np.empty((pos.size, len(self.cfg.bands), self.cfg.crop, self.cfg.crop), np.float32)
        for w in np.unique(window_of):
            stored, crops = self._window_images(windows[w])
            mine = window_of == w
            images[mine] = crops[np.searchsorted(stored, sample[mine])]
        rng = np.random.default_rng([self.cfg.weights_seed, 5, self.epoch, i])
        if self.augment is not None:
            images = self._augmented(images, rng)
        z = np.full(pos.size, np.nan) if self.z is None else self.z[pos].copy()
        if self.shuffle and self.z is not None:
            z[rng.random(pos.size) < self.cfg.redshift_dropout] = np.nan
        return network_inputs(images, self.cfg.crop, z, self.cfg.model.colour_inputs), self.y[pos]

    def _augmented(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random allowed dihedral transform per image, then fresh noise (see the class docstring)."""
        code = rng.choice(self.transforms, size=len(images))
        out = np.empty_like(images)
        for c in np.unique(code):
            out[code == c] = apply_transform(images[code == c], int(c))
        if self.noise is not None:
            amplitude = rng.random(len(images)).astype(np.float32)[:, None, None, None]
            sigma = self.noise.astype(np.float32)[None, :, None, None]
            out += amplitude * sigma * rng.standard_normal(out.shape, np.float32)
        return out


def store_batches(part: Part, cfg: TrainingConfig, mean: np.ndarray, std: np.ndarray,
                  shuffle: bool = True, augment: AugmentConfig | None = None, workers: int = 2) -> Any:
    """A ``keras.utils.PyDataset`` of :class:`StoreBatches` (``workers`` prefetching threads)."""
    import keras

    class _Dataset(StoreBatches, keras.utils.PyDataset):
        def __init__(self) -> None:
            keras.utils.PyDataset.__init__(self, workers=workers, use_multiprocessing=False, max_queue_size=16)
            StoreBatches.__init__(self, part, cfg, mean, std, shuffle, augment)

    return _Dataset()


def _in_memory(part: Part, cfg: TrainingConfig, with_redshift: bool = True) -> tuple[dict[str, np.ndarray], Any]:
    """Network inputs and the store subset of a (small) part, read at once."""
    ds = open_training_store(part.path).isel(sample=np.sort(part.index))
    z = ds["redshift"].values if (cfg.use_redshift and with_redshift) else None
    return network_inputs(ds["image"].sel(band=list(cfg.bands)).values, cfg.crop, z, cfg.model.colour_inputs), ds


def fit_bundle(parts: dict[str, Part], cfg: TrainingConfig, out: str, meta: dict[str, Any],
               topic: str | None = None, callbacks: Sequence[Any] = (), threads: int | None = None,
               label: str | None = None) -> str:
    """Fit the network (runs as one Dask task on a worker), calibrate it, save the bundle to ``out``.

    ``parts``: ``train`` (streamed), ``validation`` (early stopping) and
    ``calibration`` (:func:`surveydust.posterior.calibrate`). Each epoch's
    losses go to the Dask event ``topic`` (printed by ``train``); extra Keras
    ``callbacks`` run after early stopping (e.g. trial pruning). ``threads``:
    cores to train with (None: all of this machine's, :func:`use_all_cores`); ``label`` names
    the network in the epoch events (an ensemble member).
    """
    threads = use_all_cores(threads)
    keras = keras_module()

    from surveydust.model import build_model, compile_model

    keras.utils.set_random_seed(cfg.weights_seed)
    with dask.config.set(scheduler="synchronous"):  # read on this worker, not through the cluster
        train_ds = open_training_store(parts["train"].path).isel(sample=np.sort(parts["train"].index))
        y = target_values(train_ds, cfg)
        mean, std = (y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6)) if cfg.loss == "gaussian_nll" \
            else (np.zeros(y.shape[1]), np.ones(y.shape[1]))
        batches = store_batches(parts["train"], cfg, mean, std,
                                augment=cfg.augment if augments_per_batch(cfg) else None)
        xv, val_ds = _in_memory(parts["validation"], cfg)
        yv = ((target_values(val_ds, cfg) - mean) / std).astype(np.float32)
        model = compile_model(build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss),
                              cfg.loss, cfg.learning_rate, cfg.weight_decay, cfg.ema_momentum)
        # averaged weights (when on) for validation, early stopping and the bundle: first in the list
        ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema_momentum > 0 else []
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                             restore_best_weights=True)
        schedule = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=LR_PATIENCE)
        report = [_epoch_reporter(topic, cfg.max_epochs, batches.index.size, label)] if topic else []
        history = model.fit(batches, epochs=cfg.max_epochs, shuffle=False, verbose=0,
                            callbacks=[*ema, stop, schedule, *callbacks, *report], validation_data=(xv, yv))
        inference = build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
        inference.set_weights(model.get_weights())  # uncompiled: no optimizer state in the bundle
        ood = ood_statistics(inference, parts, cfg)
        meta = {**meta, "training_config": cfg.model_dump(mode="json"),
                "target_scaling": {t: [float(mean[i]), float(std[i])] for i, t in enumerate(cfg.targets)},
                "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
                "epochs_run": len(history.history["loss"]), "n_train_augmented": int(batches.index.size),
                "training_threads": threads, "ood": ood,
                "constant_guess": {t: float(np.nanmedian(train_ds[t].values))
                                   for t in (*cfg.targets, "R_V") if t in train_ds}}
        if cfg.loss == "gaussian_nll":
            meta["calibration"] = calibration_offsets(inference, parts["calibration"], cfg, mean, std)
    save_bundle(inference, Path(out), meta)
    logger.info("trained %s on %d samples for %d epochs", cfg.bands, batches.index.size, meta["epochs_run"])
    return out


def ood_statistics(model: Any, parts: dict[str, Part], cfg: TrainingConfig) -> dict[str, Any]:
    """The bundle's out-of-distribution statistics (:func:`surveydust.ood.fit_ood`): the last hidden
    layer's activations and the noise-aware colour distribution (with and without redshift) of the
    validation galaxies, and the threshold that flags :data:`surveydust.ood.FLAG_SHARE` of the calibration
    galaxies' stamps (with redshift)."""
    import keras

    from surveydust.ood import colour_values, feature_layer, fit_ood

    layer = feature_layer(model)
    features = keras.Model(model.inputs, model.get_layer(layer).output)
    spaces, redshift = {}, {}
    for key in ("validation", "calibration"):
        x, ds = _in_memory(parts[key], cfg)
        spaces[key] = {"features": np.asarray(features.predict(x, batch_size=1024, verbose=0)),
                       "colour_likelihood": colour_values(ds["image"].sel(band=list(cfg.bands)).values, cfg.crop)}
        redshift[key] = ds["redshift"].values
    return fit_ood(spaces["validation"], spaces["calibration"], redshift["validation"], redshift["calibration"],
                   layer=layer)


def refit_ood(bundle: Path | str, out: Path | str, store: Path | str | None = None, *,
              fresh: bool = False, overwrite: bool = False) -> Path:
    """Copy ``bundle`` to ``out`` with out-of-distribution statistics of this release
    (:func:`ood_statistics`), computed from the validation and calibration galaxies of ``store``.

    By default ``store`` is the bundle's training store (the path it recorded); it must be that very
    store, by its ``store_id``, so that the split is the same and no training galaxy becomes a
    reference. With ``fresh=True`` it must be another store, of galaxies the network never saw
    (simulated with another seed, e.g. by a later simulator whose physics the statistics should
    describe); its galaxies are split as training would split them, and the store is recorded in the
    bundle's ``ood["store"]``. The network and its calibration are unchanged. Ensembles carry no OOD
    statistics.
    """
    import shutil

    import keras

    bundle = Path(bundle)
    meta = read_meta(bundle)
    if meta.get("ensemble"):
        raise InputError(f"{bundle} is an ensemble: its members' features are not outputs of the mixture")
    store = Path(store or meta["training_store"]["path"])
    store_id = open_training_store(store).attrs.get("store_id")
    if fresh and store_id == meta["training_store"]["store_id"]:
        raise InputError(f"{store} is the training store of {bundle}: fresh statistics need another store")
    if not fresh and store_id != meta["training_store"]["store_id"]:
        raise InputError(f"{store} is not the training store of {bundle} (store_id differs); "
                         "pass fresh=True for a store of galaxies the network never saw")
    if fresh and (shared := _shared_galaxies(store, meta["training_store"])):
        raise InputError(f"{store} repeats {shared} galaxies of the training store of {bundle} (the same seed and "
                         "settings draw the same galaxies): simulate the fresh store with another seed")
    out = check_output_path(out, overwrite, "bundle", inputs=[bundle, store])
    cfg = load_training_config(**meta["training_config"])
    split, _ = prepare_training(store, cfg)
    parts = {"validation": Part(str(store), split.validation), "calibration": Part(str(store), split.calibration)}
    model = keras.saving.load_model(bundle / MODEL_FILE, compile=False, safe_mode=True)
    ood = ood_statistics(model, parts, cfg)
    if fresh:
        ood["store"] = {"path": str(store), "store_id": store_id}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        shutil.copy2(bundle / MODEL_FILE, staged / MODEL_FILE)
        write_meta(staged, {k: v for k, v in meta.items() if k != "checksums"} | {"ood": ood})
        replace_atomically(staged, out)
    return out


def _shared_galaxies(store: Path, training_store: dict[str, Any]) -> int:
    """Galaxies of ``store`` whose redshift and stellar mass equal those of a galaxy of the training store
    ``training_store`` (a bundle's record of it; 0 when that store is not on this machine)."""
    try:
        train = open_training_store(training_store["path"])
    except (ValueError, OSError):
        return 0
    if train.attrs.get("store_id") != training_store["store_id"]:
        return 0

    def galaxies(ds: Any) -> set[tuple[float, float]]:
        return set(zip(ds["redshift"].values.tolist(), ds["log_mstar"].values.tolist(), strict=True))

    return len(galaxies(open_training_store(store)) & galaxies(train))


def calibration_offsets(model: Any, part: Part, cfg: TrainingConfig, mean: np.ndarray,
                       std: np.ndarray) -> dict[str, Any]:
    """Calibrated percentile offsets [sigma] per target, with and without redshift (when the model takes one)."""
    import keras

    from surveydust.model import sigma_from_raw

    out: dict[str, Any] = {"n_samples": int(np.asarray(part.index).size)}
    for key, with_z in (("with_redshift", True), ("without_redshift", False)):
        if key == "with_redshift" and not cfg.use_redshift:
            continue
        x, ds = _in_memory(part, cfg, with_redshift=with_z)
        raw = np.asarray(model.predict(x, batch_size=1024, verbose=0), dtype=np.float64)
        n = len(cfg.targets)
        mu = raw[:, :n] * std + mean
        sigma = np.asarray(keras.ops.convert_to_numpy(sigma_from_raw(raw[:, n:])), dtype=np.float64) * std
        out[key] = calibrate({t: ds[t].values for t in cfg.targets},
                             {t: mu[:, i] for i, t in enumerate(cfg.targets)},
                             {t: sigma[:, i] for i, t in enumerate(cfg.targets)}, log_offsets(cfg.dust_offset_mag))
    return out


def write_ensemble(members: Sequence[str], store: str | None, out: str) -> str:
    """Build, calibrate and save the ensemble of bundles ``members`` at ``out`` (may run as a
    Dask task on a worker); the calibration galaxies are read from ``store`` (None: the
    training store recorded in the members' metadata)."""
    keras = keras_module()
    from surveydust.model import ensemble_model

    metas = check_ensemble_members([Path(m) for m in members])
    first = metas[0]
    store = first["training_store"]["path"] if store is None else store
    cfg = load_training_config(**first["training_config"])
    split, found = prepare_training(store, cfg)
    if found["training_store"]["store_id"] != first["training_store"]["store_id"]:
        raise InputError(f"{store} is not the training store of these bundles (store id "
                         f"{found['training_store']['store_id']}, theirs {first['training_store']['store_id']})")
    if not np.array_equal(split.calibration_galaxies, first["split"]["calibration_galaxies"]):
        raise InputError(f"the split of {store} under these bundles' settings no longer gives their "
                         "calibration galaxies (settings changed since they were trained)")
    scaling = first["target_scaling"]
    mean = np.array([scaling[t][0] for t in cfg.targets])
    std = np.array([scaling[t][1] for t in cfg.targets])
    nets = [keras.saving.load_model(Path(m) / MODEL_FILE, compile=False, safe_mode=True) for m in members]
    model = ensemble_model(nets)
    # no OOD statistics: the members' feature layers are not outputs of the mixture (its ``ood`` is NaN)
    meta = {k: v for k, v in first.items() if k not in ("checksums", "format_version", "keras_backend",
                                                         "history", "epochs_run", "calibration", "ood")}
    meta["ensemble"] = {
        "combination": "equal-weight mixture of the members' Gaussians, moment-matched (network space)",
        "members": [{"model_id": m["checksums"][MODEL_FILE][:12],
                     "fit_seed": load_training_config(**m["training_config"]).weights_seed,
                     "epochs_run": m.get("epochs_run"), "history": m.get("history", {})} for m in metas],
    }
    meta["training_config"] = {**first["training_config"], "fit_seed": None, "ensemble": len(members)}
    meta["calibration"] = calibration_offsets(model, Part(store, split.calibration), cfg, mean, std)
    save_bundle(model, Path(out), meta)
    return out

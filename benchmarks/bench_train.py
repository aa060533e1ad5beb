"""Training and inference throughput of the CNN on this machine's CPU.

Measured in one run, against a baseline taken in the same run and process, both
with every core of the machine (:func:`surveydust.train.use_all_cores`, called
before TensorFlow loads):

1. ``plain fit``: build, compile and ``model.fit`` on in-memory numpy arrays of
   the training samples (network inputs and standardised targets prepared
   beforehand, shuffled by Keras, validation on the validation galaxies): the
   baseline.
2. ``surveydust fit``: :func:`surveydust.train.fit_bundle` on the same samples,
   streamed from the Zarr training store (:class:`StoreBatches`: windows of chunks
   as large as ``shuffle_buffer_mb``, the whole part here, galaxies mixed across
   batches, redshift dropout), with the same validation data, then
   its calibration and bundle writing; twice: without augmentation
   (``augment.per_batch: false`` on the training store itself: the cost of
   streaming alone) and with the default per-batch augmentation (a random
   rotation/flip and fresh noise per sample, then the normalisation: what
   ``train`` runs). The goal is at least 0.9 of the baseline's samples per
   second.

Both are reported as samples per second over the whole call (``n_train x
epochs / wall time``: build, fit and, for fit_bundle, loading, calibration and
bundle writing) and over the epochs alone (from a Keras callback timing each
epoch; the first epoch, which traces the training step, is left out when there
are two or more). Then ``Predictor.predict`` on nJy images against
``model.predict`` on prepared inputs.

Run:  .venv/bin/python benchmarks/bench_train.py [--galaxies N] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from surveydust.train import use_all_cores


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def epoch_timer():
    """A Keras callback that records the wall time of each epoch in ``.seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self.t0)

    return EpochTimer()


def epoch_rate(n: int, seconds: list[float]) -> float:
    """Samples/s over the epochs after the first (all of them when there is one)."""
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return n * len(steady) / sum(steady)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=160, help="galaxies in the store (x 44 images)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
    args = parser.parse_args()
    threads = use_all_cores()  # before anything imports TensorFlow, as fit_bundle does on a worker

    import keras

    from surveydust.bundle import load_model
    from surveydust.cluster import get_client
    from surveydust.config import load_training_config
    from surveydust.model import build_model, compile_model
    from surveydust.preprocess import network_inputs
    from surveydust.simulate import simulate
    from surveydust.stores.training import open_training_store
    from surveydust.train import Part, fit_bundle, prepare_training, target_values

    cfg = load_training_config(max_epochs=args.epochs, patience=args.epochs + 1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        with get_client("local", workers=2) as client:  # closed before anything is timed
            store = simulate(Path(tmp) / "s.zarr", client=client, progress=False, n_galaxies=args.galaxies)
        split, meta = prepare_training(store, cfg)
        parts = {"train": Part(str(store), split.train), "validation": Part(str(store), split.validation),
                 "calibration": Part(str(store), split.calibration)}
        ds = open_training_store(store)
        n_train = split.train.size
        chunk = ds["image"].data.chunks[0][0]

        # the baseline's arrays: the same samples, inputs and standardised targets as fit_bundle's
        train = ds.isel(sample=split.train)
        x = network_inputs(train["image"].sel(band=list(cfg.bands)).values, cfg.crop, train["redshift"].values,
                           cfg.model.colour_inputs)
        y = target_values(train, cfg)
        mean, std = y.mean(axis=0), np.maximum(y.std(axis=0), 1e-6)
        y = ((y - mean) / std).astype(np.float32)
        val = ds.isel(sample=split.validation)
        xv = network_inputs(val["image"].sel(band=list(cfg.bands)).values, cfg.crop, val["redshift"].values,
                            cfg.model.colour_inputs)
        yv = ((target_values(val, cfg) - mean) / std).astype(np.float32)

        def plain_fit(timer=None, epochs: int = args.epochs) -> None:  # from scratch, like fit_bundle
            keras.utils.set_random_seed(cfg.seed)
            model = compile_model(build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss),
                                  cfg.loss, cfg.learning_rate, cfg.weight_decay, cfg.ema_momentum)
            model.fit(x, y, epochs=epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
                      validation_data=(xv, yv), callbacks=[timer] if timer else [])

        plain_fit(epochs=1)  # warm-up: TensorFlow start-up, for both
        plain_timer = epoch_timer()
        plain_s = timed(lambda: plain_fit(plain_timer))
        plain, plain_epoch = n_train * args.epochs / plain_s, epoch_rate(n_train, plain_timer.seconds)
        rows = []
        for label, per_batch in (("no augmentation", False), ("per-batch augmentation", True)):
            run_cfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"per_batch": per_batch})})
            timer, out = epoch_timer(), Path(tmp) / f"bundle-{per_batch}"
            seconds = timed(lambda c=run_cfg, o=out, t=timer: fit_bundle(parts, c, str(o), meta, callbacks=[t]))
            rows.append((f"fit_bundle, {label}", n_train * args.epochs / seconds,
                         epoch_rate(n_train, timer.seconds)))

        predictor = load_model(out)
        images = ds["image"].sel(band=list(predictor.bands)).values
        z = ds["redshift"].values
        xp = network_inputs(images, cfg.crop, z, predictor.colour_inputs)
        predictor.predict(images, z)  # warm-up: traces the predict function for these shapes
        predictor.model.predict(xp, batch_size=1024, verbose=0)
        n = len(images)
        pred_ours = n / timed(lambda: predictor.predict(images, z))
        pred_plain = n / timed(lambda: predictor.model.predict(xp, batch_size=1024, verbose=0))

    import tensorflow as tf

    print(f"{n_train} training samples (of {n}; store chunks of {chunk}), {args.epochs} epochs, "
          f"batch {cfg.batch_size}, bands {'+'.join(cfg.bands)}, {cfg.model.architecture} "
          f"{list(cfg.model.conv_filters)}; {threads} cores (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"TF intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'all'})\n")
    print(f"{'what':<46}{'samples/s':>11}{'ratio':>7}{'epochs only':>13}{'ratio':>7}")
    print(f"{'plain model.fit (numpy in memory)':<46}{plain:>11.0f}{1.0:>7.2f}{plain_epoch:>13.0f}{1.0:>7.2f}")
    for label, ours, ours_epoch in rows:
        print(f"{label:<46}{ours:>11.0f}{ours / plain:>7.2f}{ours_epoch:>13.0f}{ours_epoch / plain_epoch:>7.2f}")
    print(f"{'model.predict (prepared inputs)':<46}{pred_plain:>11.0f}{1.0:>7.2f}")
    print(f"{'Predictor.predict (nJy images)':<46}{pred_ours:>11.0f}{pred_ours / pred_plain:>7.2f}")
    for label, ours, ours_epoch in rows:
        print(f"\n{label} / plain fit: {ours / plain:.2f} over the whole call, {ours_epoch / plain_epoch:.2f} "
              f"over the epochs (goal >= 0.9)", end="")
    print()


if __name__ == "__main__":
    main()

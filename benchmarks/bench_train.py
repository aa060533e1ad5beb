"""Training and inference throughput of the CNN on this machine's CPU.

Measured in one run, against baselines taken in the same run:

1. ``plain fit``: build, compile and ``model.fit`` on in-memory numpy arrays
   (the network inputs already built, validation on half of them): the baseline.
2. ``surveydust fit``: :func:`surveydust.train.fit_bundle` on the same samples
   read from a Zarr training store (loading, normalisation, fit of the same
   number of epochs, bundle writing), divided into samples per second of
   training; the goal is to be no more than 10% slower than the baseline.
3. ``predict``: :meth:`Predictor.predict` on images in nJy (normalisation
   included) against ``model.predict`` on prepared inputs.

Run:  .venv/bin/python benchmarks/bench_train.py [--galaxies N] [--epochs E]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from surveydust.bundle import load_model
from surveydust.cluster import get_client
from surveydust.config import load_training_config
from surveydust.model import build_model, compile_model
from surveydust.preprocess import network_inputs
from surveydust.simulate import simulate
from surveydust.stores.training import open_training_store
from surveydust.train import fit_bundle


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=40, help="galaxies in the store (x 44 images)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs")
    args = parser.parse_args()
    cfg = load_training_config(max_epochs=args.epochs, patience=args.epochs + 1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        with get_client("local", workers=2) as client:
            store = simulate(Path(tmp) / "s.zarr", client=client, progress=False, n_galaxies=args.galaxies)
        ds = open_training_store(store)
        n = ds.sizes["sample"]
        half = np.arange(n // 2, n)
        x = network_inputs(ds["image"].sel(band=list(cfg.bands)).values, cfg.bands, cfg.crop)
        y = np.stack([ds[t].values for t in cfg.targets], axis=1).astype(np.float32)

        xv = {k: v[half] for k, v in x.items()}

        def plain_fit() -> None:  # from scratch, like fit_bundle: build, compile, fit
            model = compile_model(build_model(cfg.bands, cfg.crop, 3, cfg.model), cfg.loss, cfg.learning_rate)
            model.fit(x, y, epochs=args.epochs, batch_size=cfg.batch_size, verbose=0,
                      validation_data=(xv, y[half]))

        plain_fit()  # warm-up: TensorFlow start-up
        plain = n * args.epochs / timed(plain_fit)
        meta = {"bands": list(cfg.bands), "targets": list(cfg.targets), "crop": cfg.crop, "loss": cfg.loss}
        out = Path(tmp) / "bundle"
        # fit_bundle trains on the whole store and validates on half of it, like the baseline
        ours = n * args.epochs / timed(lambda: fit_bundle(str(store), str(store), half, cfg, str(out), meta))

        predictor = load_model(out)
        images = ds["image"].sel(band=list(predictor.bands)).values
        predictor.predict(images)  # warm-up: traces the predict function for these shapes
        predictor.model.predict(x, batch_size=1024, verbose=0)
        pred_ours = n / timed(lambda: predictor.predict(images))
        pred_plain = n / timed(lambda: predictor.model.predict(x, batch_size=1024, verbose=0))

    print(f"{n} samples, {args.epochs} epochs, batch {cfg.batch_size}, bands {'+'.join(cfg.bands)}\n")
    print(f"{'what':<40}{'samples/s':>12}{'ratio':>8}")
    print(f"{'plain model.fit (numpy in memory)':<40}{plain:>12.0f}{1.0:>8.2f}")
    print(f"{'surveydust fit_bundle (Zarr -> bundle)':<40}{ours:>12.0f}{ours / plain:>8.2f}")
    print(f"{'model.predict (prepared inputs)':<40}{pred_plain:>12.0f}{1.0:>8.2f}")
    print(f"{'Predictor.predict (nJy images)':<40}{pred_ours:>12.0f}{pred_ours / pred_plain:>8.2f}")


if __name__ == "__main__":
    main()

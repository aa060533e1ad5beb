"""How much of the dust signal noise hides: the colour baseline on noisy and on noiseless photometry.

The skill of any method is bounded twice: by noise, and by what even perfect
photometry cannot tell apart (older or more metal-rich stars redden like dust;
the dust geometry sets how much reddening a given A_V gives). This script
separates the two for the built-in simulator. For a training store and a test
store (made with different seeds) it simulates their noiseless twins: the same
configuration and seed at a depth of ``--deep-mag`` AB in every band, so every
galaxy, view, dust-to-metal ratio and label is the same and only the noise
amplitude differs (checked). It takes the test samples the noisy store's
selection keeps (SNR(F277W) >= 5) and fits the colour baseline of
:mod:`surveydust.evaluation.baselines` (:func:`~surveydust.evaluation.baselines.fit_colour_baseline`
on :func:`~surveydust.evaluation.baselines.colour_baseline_features`: log aperture
fluxes, all colours and z, of the training galaxies' selected samples, read in
blocks) twice: on the
noisy photometry and on the noiseless twin's. It prints, per target, MAE,
the constant guess's MAE (training median) and Spearman overall and in bins
of the noisy SNR(F277W), and the ratio noiseless / noisy.

Run:  .venv/bin/python benchmarks/skill_ceiling.py --train-store T.zarr --test-store S.zarr
      [--train-galaxies 1500] [--deep-mag 40] [--workers 2]
(about 5 minutes of simulation on 2 cores for 1,500 + 400 galaxies).
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import pairwise
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

TARGETS = ("A_V", "EBV", "log_ssfr")
SNR_BINS = (5.0, 10.0, 20.0, 50.0, np.inf)


def deep_twin(store: Path, out: Path, n_galaxies: int, deep_mag: float, client) -> Path:
    """The store's first ``n_galaxies`` galaxies again, noiseless (depth ``deep_mag`` in every band)."""
    from surveydust.config import simulation_config_from_json
    from surveydust.simulate import simulate
    from surveydust.stores.training import open_training_store

    cfg = simulation_config_from_json(open_training_store(store).attrs["simulation_config"])
    return simulate(out, cfg, client=client, progress=False, n_galaxies=n_galaxies,
                    depth={b: deep_mag for b in cfg.bands})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-store", type=Path, required=True)
    parser.add_argument("--test-store", type=Path, required=True)
    parser.add_argument("--train-galaxies", type=int, default=1500)
    parser.add_argument("--deep-mag", type=float, default=40.0, help="5-sigma AB depth of the twins")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from surveydust.cluster import get_client
    from surveydust.config import load_training_config
    from surveydust.evaluation.baselines import colour_baseline_features, fit_colour_baseline
    from surveydust.preprocess import select_samples
    from surveydust.stores.training import open_training_store

    cfg = load_training_config()
    bands = list(cfg.bands)
    noisy = {k: open_training_store(p) for k, p in (("train", args.train_store), ("test", args.test_store))}
    n_gal = {"train": args.train_galaxies, "test": int(noisy["test"]["galaxy_id"].values.max()) + 1}
    with tempfile.TemporaryDirectory(prefix="ceiling-", dir=args.test_store.parent) as tmp:
        with get_client("local", workers=args.workers) as client:
            deep = {k: open_training_store(deep_twin(p, Path(tmp) / f"{k}.zarr", n_gal[k], args.deep_mag, client))
                    for k, p in (("train", args.train_store), ("test", args.test_store))}
        idx = {}
        for k, ds in noisy.items():
            noisy[k] = ds.isel(sample=slice(0, deep[k].sizes["sample"]))
            for t in TARGETS:  # the same galaxies and labels: only the noise differs
                np.testing.assert_array_equal(noisy[k][t].values, deep[k][t].values)
            idx[k] = select_samples(noisy[k], cfg)
        snr = noisy["test"]["snr"].sel(band=cfg.snr_band).values[idx["test"]]
        truth = {t: noisy["test"][t].values[idx["test"]] for t in TARGETS}
        constant = {t: float(np.median(noisy["train"][t].values[idx["train"]])) for t in TARGETS}
        pred = {}
        for name, stores in (("noisy", noisy), ("noiseless", deep)):
            x_train = colour_baseline_features(stores["train"], idx["train"], bands, cfg.crop, with_z=True)
            x_test = colour_baseline_features(stores["test"], idx["test"], bands, cfg.crop, with_z=True)
            y_train = {t: stores["train"][t].values[idx["train"]] for t in TARGETS}
            pred[name] = fit_colour_baseline(x_train, y_train, x_test, TARGETS)

    print(f"colour baseline (6 bands + z) trained on {idx['train'].size} samples of {n_gal['train']} galaxies, "
          f"tested on {idx['test'].size} samples of {n_gal['test']} other galaxies (noisy SNR({cfg.snr_band}) >= "
          f"{cfg.snr_min:g}); noiseless twins at {args.deep_mag:g} AB\n")
    print(f"{'target':<9}{'SNR bin':<10}{'N':>6}{'const MAE':>10}{'noisy MAE':>10}{'rho':>6}"
          f"{'noiseless MAE':>14}{'rho':>6}{'MAE ratio':>10}")
    edges = list(pairwise(SNR_BINS))
    for t in TARGETS:
        for lo, hi in [(SNR_BINS[0], np.inf), *edges]:
            m = (snr >= lo) & (snr < hi)
            mae = {k: float(np.mean(np.abs(pred[k][t][m] - truth[t][m]))) for k in pred}
            rho = {k: float(spearmanr(pred[k][t][m], truth[t][m])[0]) for k in pred}
            label = "all" if hi == np.inf and lo == SNR_BINS[0] else f"{lo:g}-{hi:g}"
            print(f"{t:<9}{label:<10}{m.sum():>6}{np.mean(np.abs(truth[t][m] - constant[t])):>10.3f}"
                  f"{mae['noisy']:>10.3f}{rho['noisy']:>6.2f}{mae['noiseless']:>14.3f}{rho['noiseless']:>6.2f}"
                  f"{mae['noiseless'] / mae['noisy']:>10.2f}")


if __name__ == "__main__":
    main()

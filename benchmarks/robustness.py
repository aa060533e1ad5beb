"""The shift suite: how the shipped networks fare when one thing lies outside what they were trained on.

For every shift of :data:`surveydust.robustness.SHIFTS` (one piece of physics or instrument outside
the training prior; ``in_domain`` is the prior itself) it simulates a test store of fresh galaxies
(``--seed``, not the training seed: split by galaxy), predicts A_V with each bundle, with redshift,
on the images with SNR(F277W) >= 5, and prints per shift and bundle: N, Spearman, MAE and the
constant guess's MAE, the colour baseline's Spearman and MAE (gradient boosting on aperture fluxes,
colours and z, fitted in this run on ``--baseline-galaxies`` of the bundle's training store), the
median bias, 68/95% coverage on all and on unflagged sources, the share flagged out of distribution
and the detector's AUROC against the in-domain stamps, and galaxy-bootstrap standard errors
(``*_err``) of the Spearman, the unflagged 68% coverage and the unflagged median bias. Tables go
to ``OUT/robustness.ecsv``.

Run:  .venv/bin/python benchmarks/robustness.py --out artefacts/robustness [--n-galaxies 300]
      [--in-domain-galaxies 1000]
      [--bundle six-band --bundle three-band] [--shift in_domain --shift extreme_lines] [--workers 2]
(about 1 minute of simulation per shift and 300 galaxies on 2 cores; stores are kept in OUT/stores
and reused while this version's simulator would make them the same: --overwrite replaces one that
it would not.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PSF_DIR = REPO.parent / "shared" / "data" / "nircam_psf"
VIEWS = 2  # views per test galaxy: more independent galaxies for the same simulation time
COLUMNS = ("N", "spearman", "MAE", "MAE_constant", "baseline_spearman", "baseline_MAE", "median_bias",
           "coverage_68", "coverage_95", "coverage_68_unflagged", "coverage_95_unflagged",
           "median_bias_unflagged", "flagged", "AUROC",
           "spearman_err", "coverage_68_unflagged_err", "median_bias_unflagged_err")


def shift_store(name: str, out: Path, n_galaxies: int, seed: int, client, overwrite: bool = False) -> Path:
    """The test store of shift ``name``: simulated once, then reused while it holds what this version's
    simulator would make for these settings (another version's store is replaced only with
    ``overwrite``)."""
    from surveydust.config import load_simulation_config, simulation_config_from_json
    from surveydust.errors import InputError
    from surveydust.robustness import shift_settings
    from surveydust.simulate import simulate
    from surveydust.stores.base import existing_kind
    from surveydust.stores.training import open_training_store

    path = out / "stores" / f"{name}.zarr"
    settings = dict(shift_settings(name, PSF_DIR if PSF_DIR.is_dir() else None), n_galaxies=n_galaxies, seed=seed,
                    views_per_galaxy=VIEWS)
    if existing_kind(path) == "training":
        try:
            same = simulation_config_from_json(open_training_store(path).attrs["simulation_config"]) \
                == load_simulation_config(**settings)
        except InputError:  # written by a version whose settings this one cannot read
            same = False
        if same:
            return path
        if not overwrite:
            raise SystemExit(f"error: {path} was simulated with other settings or another simulator version; "
                             "pass --overwrite to simulate it again, or choose another --out")
    return simulate(path, client=client, progress=False, overwrite=True, **settings)


def colour_baseline(predictor, stores: dict[str, Path], n_galaxies: int) -> dict[str, tuple[float, float]]:
    """(Spearman, MAE) of the colour baseline for A_V on each store's SNR >= 5 images, fitted on the
    bundle's training store (its first ``n_galaxies`` galaxies' selected images)."""
    from scipy.stats import spearmanr

    from surveydust.evaluation.baselines import colour_baseline_features, fit_colour_baseline
    from surveydust.stores.training import open_training_store

    try:
        train = open_training_store(predictor.meta["training_store"]["path"])
    except (ValueError, OSError):  # the bundle's training store is not on this machine
        return {name: (np.nan, np.nan) for name in stores}
    keep = np.flatnonzero((train["snr"].sel(band="F277W").values >= 5)
                          & (train["galaxy_id"].values < n_galaxies))
    x_train = colour_baseline_features(train, keep, predictor.bands, predictor.crop, True)
    out = {}
    for name, path in stores.items():
        ds = open_training_store(path)
        idx = np.flatnonzero(ds["snr"].sel(band="F277W").values >= 5)
        x = colour_baseline_features(ds, idx, predictor.bands, predictor.crop, True)
        pred = fit_colour_baseline(x_train, {"A_V": train["A_V"].values[keep]}, x, ["A_V"])["A_V"]
        truth = ds["A_V"].values[idx]
        out[name] = (float(spearmanr(truth, pred).statistic), float(np.abs(pred - truth).mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bundle", action="append", help="shipped bundle name (six-band, ...) or folder")
    parser.add_argument("--shift", action="append", help="shift name (default: all)")
    parser.add_argument("--n-galaxies", type=int, default=300, help="test galaxies per shift")
    parser.add_argument("--in-domain-galaxies", type=int, default=1000,
                        help="test galaxies of the in-domain world (the reference of the flagged share, "
                             "the AUROC and the skill goal)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline-galaxies", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true",
                        help="simulate again a test store in OUT/stores made with other settings or simulator")
    args = parser.parse_args()

    from astropy.table import Table

    from surveydust.bundle import load_model, shipped_bundles
    from surveydust.cluster import get_client
    from surveydust.robustness import SHIFTS, predict_store, score_shift
    from surveydust.stores.training import open_training_store

    shipped = {p.name: p for p in shipped_bundles().values()}
    bundles = [shipped.get(b, Path(b)) for b in (args.bundle or ["six-band", "three-band", "one-band"])]
    names = args.shift or list(SHIFTS)
    if "in_domain" not in names:
        names.insert(0, "in_domain")
    with get_client("local", workers=args.workers) as client:
        stores = {n: shift_store(n, args.out, args.in_domain_galaxies if n == "in_domain" else args.n_galaxies,
                                 args.seed, client, args.overwrite) for n in names}
    galaxies = {n: open_training_store(s)["galaxy_id"].values for n, s in stores.items()}
    rows = []
    for path in bundles:
        predictor = load_model(path)
        constant = float(predictor.meta["constant_guess"]["A_V"])
        results = {n: predict_store(predictor, s) for n, s in stores.items()}
        reference = results["in_domain"][0]["ood"].values if "ood" in results["in_domain"][0] else None
        baseline = colour_baseline(predictor, stores, args.baseline_galaxies)
        for n, (result, truth, idx) in results.items():
            row = score_shift(result, truth, constant, reference, galaxy=galaxies[n][idx])
            row["baseline_spearman"], row["baseline_MAE"] = baseline[n]
            rows.append({"bundle": path.name, "shift": n, **{c: row[c] for c in COLUMNS}})
            print(f"{path.name:>10} {n:>16} " + " ".join(f"{c}={row[c]:.3g}" for c in COLUMNS), flush=True)
    table = Table(rows=rows)
    for c in COLUMNS[1:]:
        table[c].format = ".3f"
    table.meta.update({"n_galaxies": args.n_galaxies, "in_domain_galaxies": args.in_domain_galaxies,
                       "seed": args.seed, "snr_cut": "SNR(F277W) >= 5",
                       "target": "A_V [mag]", "with_redshift": True})
    args.out.mkdir(parents=True, exist_ok=True)
    table.write(args.out / "robustness.ecsv", overwrite=True)
    table.pprint_all()


if __name__ == "__main__":
    main()

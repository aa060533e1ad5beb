"""Run-time cost of photometric redshifts and the z > 6 selection in ``run_catalogue``, and the
selection's counts, on one simulated field with the sky's mix, all in one run.

1. A ``--size`` x ``--size`` px field (0.03"/px) in ``--bands`` (default the seven bands F090W +
   the six wide bands; ``--bands six`` drops F090W) at CEERS depth with ``--galaxies`` z > 6
   galaxies and the sky's foreground at its configured densities (``foreground=True``:
   ~600 arcmin^-2 ordinary galaxies to AB 29.5, dusty, Balmer-break galaxies, brown dwarfs;
   ``configs/simulation.yaml``), ingested in ``--chunk`` px chunks (the tiles).
2. On a ``LocalCluster`` of ``--workers`` one-thread workers (start-up not timed), after one
   untimed warm-up call of each variant (workers import, load the model, trace TensorFlow), the
   two variants are timed alternately ``--repeats`` times (so both see the same machine load):

   - *today*: ``photoz=False, all_sources=True``: every source predicted once, without a redshift,
     exactly the pipeline before photometric redshifts existed;
   - *photo-z*: the defaults: template photo-z per source from every band, the z > 6 selection
     (``p_high_z_min``), p(z)-mixed predictions (``photoz_draws`` draws) of the selected sources.

   - *photo-z, all*: the same with ``all_sources=True``: every source through the p(z) draws, the
     worst case (a field where every source is selected).

   Printed: the wall seconds of each call, the median ratio photo-z / today (goal <= 1.3) and the
   driver's one-time template build (cached after the first call, in the warm-up).
3. The selection's counts (matched to the truth within 0.15"), pooled over ``--fields`` fields
   (seeds ``--seed``, ``--seed`` + 1, ...; only the first is timed): sources detected,
   selected by the photo-z criteria (surveydust.photoz.select_high_z), of those truly z > 6, true
   z > 6 detected and selected (completeness),
   purity on this field (its own share of z > 6 galaxies, not re-weighted).
4. Dust of the selected sample: on the true z > 6 galaxies the photo-z selects, A_V with the
   p(z)-mixed redshift input (the photo-z run) against the same sources with their true redshift
   (a run with the truth table as ``--redshifts``): N, Spearman, MAE, 68/95% coverage, median bias.

Run:  nice -n 15 .venv/bin/python benchmarks/bench_selection.py [--size 2048] [--galaxies 40]
      [--bands seven|six] [--workers 1] [--repeats 3] [--fields 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

SEVEN = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--galaxies", type=int, default=40)
    parser.add_argument("--bands", choices=["seven", "six"], default="seven")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--fields", type=int, default=1,
                        help="fields (seeds seed, seed + 1, ...) pooled for the selection and dust tables; "
                             "the first one is timed")
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from surveydust.cluster import get_client
    from surveydust.infer import run_catalogue

    bands = SEVEN if args.bands == "seven" else SEVEN[1:]
    pooled: list[dict[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, get_client("local", workers=args.workers) as client:
        for k in range(args.fields):
            store, files = make_field(Path(tmp) / f"field{k}", args, bands, args.seed + k, client)
            cat = time_variants(store, args, client) if k == 0 else run_catalogue(store, client=client,
                                                                                    progress=False)
            with_true_z = run_catalogue(store, client=client, progress=False, redshifts=files.truth)
            pooled.append(matched_columns(cat, with_true_z, Table.read(files.truth)))
    columns = {key: np.concatenate([f[key] for f in pooled]) for key in pooled[0]}
    print(f"\n# selection (p_high_z_min {cat.attrs['catalogue_config']['p_high_z_min']}) on {args.fields} field(s): "
          f"{len(columns['snr'])} sources detected, {int(columns['matched'].sum())} matched to the truth")
    print_selection(columns)
    print_dust_skill(columns)


def make_field(folder: Path, args: argparse.Namespace, bands: list[str], seed: int, client) -> tuple[Path, object]:
    """Simulate one field with the sky's mix and ingest it; return its store and the simulated files."""
    from surveydust.simulate import simulate_field
    from surveydust.stores.mosaic import ingest_mosaic

    t0 = time.perf_counter()
    files = simulate_field(folder / "fits", n_galaxies=args.galaxies, shape=(args.size, args.size),
                           bands=bands, seed=seed, foreground=True)
    truth = Table.read(files.truth)
    kinds = {str(k): int((truth["kind"] == k).sum()) for k in np.unique(truth["kind"])}
    print(f"# field seed {seed}: {args.size} x {args.size} px ({(args.size * 0.03 / 60) ** 2:.2f} arcmin^2), bands "
          f"{','.join(bands)}, CEERS depth, injected {kinds}; simulated in {time.perf_counter() - t0:.0f} s")
    store = folder / "field.zarr"
    ingest_mosaic(store, {b: str(p) for b, p in files.bands.items()}, field="bench", chunk=args.chunk,
                  client=client, progress=False)
    return store, files


def time_variants(store: Path, args: argparse.Namespace, client):
    """Time today / photo-z / photo-z all alternately on ``store``; print the table; return the
    photo-z catalogue."""
    from surveydust.infer import run_catalogue

    variants = {"today": {"photoz": False, "all_sources": True}, "photo-z": {},
                "photo-z, all": {"all_sources": True}}
    cats = {}
    for name, kw in variants.items():  # warm-up: imports, model, TensorFlow traces, template grid
        t = time.perf_counter()
        cats[name] = run_catalogue(store, client=client, progress=False, **kw)
        print(f"# warm-up {name}: {time.perf_counter() - t:.1f} s")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, kw in variants.items():
            t = time.perf_counter()
            run_catalogue(store, client=client, progress=False, **kw)
            times[name].append(time.perf_counter() - t)
    ratios = [p / t for p, t in zip(times["photo-z"], times["today"])]
    worst = [p / t for p, t in zip(times["photo-z, all"], times["today"])]
    n = cats["today"].sizes["source"]
    print(f"\n{'variant':14s} {'wall s (each call)':34s} {'median':>7s} {'ms/source':>10s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:14s} {' '.join(f'{t:6.2f}' for t in ts):34s} {med:7.2f} {1e3 * med / max(n, 1):10.2f}")
    print(f"ratio photo-z / today: median {statistics.median(ratios):.2f} "
          f"(calls: {', '.join(f'{r:.2f}' for r in ratios)}); goal <= 1.3")
    draws = cats["photo-z"].attrs["catalogue_config"]["photoz_draws"]
    print(f"ratio photo-z with all_sources (every source through {draws} p(z) draws: the worst case, a field "
          f"of z > 6 galaxies only) / today: median {statistics.median(worst):.2f}")
    return cats["photo-z"]


def matched_columns(cat, with_true_z, truth: Table) -> dict[str, np.ndarray]:
    """Per detected source of one field: match to the truth (0.15"), true z and A_V, SNR(F277W),
    whether the photo-z selected it and whether the true-z run predicted it, and A_V (median and
    percentiles) of both runs."""
    from surveydust.evaluation.metrics import percentile_array

    if not np.allclose(cat["x"].values, with_true_z["x"].values):
        raise RuntimeError("the two runs detected different sources")
    ra, dec = cat["ra"].values[:, None], cat["dec"].values[:, None]
    sep = np.hypot((ra - np.asarray(truth["ra_centroid"])[None]) * np.cos(np.deg2rad(dec)),
                   dec - np.asarray(truth["dec_centroid"])[None]) * 3600
    matched = sep.min(axis=1) < 0.15
    nearest = sep.argmin(axis=1)
    one = [c.isel(model=0) if "model" in c.dims else c for c in (cat, with_true_z)]
    return {"matched": matched, "snr": cat["snr"].sel(band="F277W").values,
            "z_true": np.where(matched, np.asarray(truth["redshift"])[nearest], np.nan),
            "a_v": np.where(matched, np.asarray(truth["A_V"])[nearest], np.nan),
            "selected": cat["selected_by"].values == "photoz",
            "spec_z": with_true_z["selected_by"].values == "spec_z",
            "av_pz": one[0]["A_V"].values, "pct_pz": percentile_array(one[0], "A_V"),
            "av_true_z": one[1]["A_V"].values, "pct_true_z": percentile_array(one[1], "A_V")}


def print_selection(c: dict[str, np.ndarray]) -> None:
    """Completeness and purity of the photo-z selection in SNR(F277W) bins (this field's own share of
    z > 6 galaxies, not re-weighted)."""
    high = c["matched"] & (c["z_true"] > 6)
    print(f"{'SNR(F277W)':>10s} {'detected':>9s} {'true z>6':>9s} {'selected':>9s} {'sel & z>6':>10s} "
          f"{'completeness':>13s} {'purity':>7s}")
    for cut in (0.0, 5.0, 10.0):
        s = c["snr"] >= cut
        tp, ns, nh = int((c["selected"] & high & s).sum()), int((c["selected"] & s).sum()), int((high & s).sum())
        print(f"{'>= ' + format(cut, 'g'):>10s} {int(s.sum()):9d} {nh:9d} {ns:9d} {tp:10d} "
              f"{tp / nh if nh else float('nan'):13.2f} {tp / ns if ns else float('nan'):7.2f}")


def print_dust_skill(c: dict[str, np.ndarray]) -> None:
    """A_V skill of the true z > 6 galaxies the photo-z selects, with the p(z)-mixed redshift input
    and with their true z (the same detections)."""
    from surveydust.evaluation.metrics import residual_metrics

    rows = c["selected"] & c["matched"] & (c["z_true"] > 6) & c["spec_z"]
    print(f"\n# A_V of the {int(rows.sum())} true z > 6 galaxies the photo-z selects: with p(z) vs with their true z")
    print(f"{'redshift input':16s} {'N':>4s} {'spearman':>9s} {'MAE':>6s} {'cov68':>6s} {'cov95':>6s} {'bias':>7s}")
    for name, key in (("p(z) draws", "pz"), ("true z", "true_z")):
        m = residual_metrics(c["a_v"][rows], c[f"av_{key}"][rows], c[f"pct_{key}"][rows])
        print(f"{name:16s} {m['N']:4.0f} {m['spearman']:9.3f} {m['MAE']:6.3f} {m['coverage_68']:6.2f} "
              f"{m['coverage_95']:6.2f} {m['median_bias']:+7.3f}")


if __name__ == "__main__":
    main()

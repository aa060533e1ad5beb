"""Throughput of the distributed hyper-parameter search, 1 worker against 2.

Measured in one run, on one small simulated store, so that the ratios are
taken on the same (noisy) machine at the same time:

For each cluster size (1, then 2 worker processes of a ``LocalCluster``,
``get_client("local", workers=k)``), in a fresh study folder:

1. warm-up (not timed): cluster start-up, then :func:`surveydust.tune.tune`
   with ``trials=2``. This writes the augmented training split into the study
   folder (done once per study) and, with 2 workers, runs one trial on each
   worker so that every worker has imported TensorFlow and fitted once.
2. timed: ``tune`` again on the same folder with ``trials=2+N``: the study
   resumes and runs only the N new trials. The wall time covers everything
   that call does (loading the store and the journal, asking Optuna, Dask
   scheduling, the trials, telling Optuna, ``trials.ecsv`` and the plots).

The trials are tiny (1-2 conv blocks of 4-8 filters, two dense layers of 4-8
units, 2 epochs, no pruning) and drawn by the ``random`` sampler from the same
seed after the same number of warm-up trials, so both runs train the same N
networks. From the trial table (``start``/``end`` measured on the worker):

* trials/hour = N / wall * 3600, and the speed-up 2 workers vs 1 (goal >= 1.8x);
* mean in-task time of a trial (``end - start``);
* overhead per trial = (wall * workers - sum of in-task times) / N: the
  worker-seconds per trial not spent inside a trial (driver, scheduler, idle
  workers waiting for the next trial or for the last one to end);
* busy = sum of in-task times / (wall * workers); max par = most trials seen
  running at once; cores = CPU seconds of all worker processes (every thread,
  ``time.process_time`` on each worker) / wall: how many of the machine's cores
  the trials kept busy, and CPU s/trial = those CPU seconds / N (the work of
  a trial, whatever else the machine is doing). A worker whose TensorFlow
  already uses most cores leaves little for a second worker on the same
  machine; other processes on the machine show as cores well below workers.

Run:  .venv/bin/python benchmarks/bench_tune.py [--trials N] [--galaxies G]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: no TensorFlow start-up chatter

import argparse
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from surveydust.cluster import get_client
from surveydust.simulate import simulate
from surveydust.tune import tune

WORKERS = (1, 2)
WARMUP_TRIALS = max(WORKERS)  # the same for every cluster size: the same sampler seed on resume
BANDS = ["F277W", "F356W", "F444W"]
SPACE = {"conv_layers": {"low": 1, "high": 2}, "conv_filters": {"low": 4, "high": 8},
         "dense_units": {"low": 4, "high": 8},
         "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"low": 32, "high": 64}}
TRAINING = {"snr_min": 0, "model": {"dense_units": [8, 8]}}
EPOCHS = 2


def _seconds(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def bench(store: Path, out: Path, workers: int, trials: int) -> dict:
    """Warm up, then time a resumed search of ``trials`` new trials on ``workers`` workers."""
    def run(client, total: int):
        return tune(store, out, client=client, progress=False, trials=total, max_epochs=EPOCHS,
                    sampler="random", pruner="none", search_space=SPACE, training_overrides=TRAINING)

    t0 = time.perf_counter()
    with get_client("local", workers=workers) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        warm = run(client, WARMUP_TRIALS)
        warmup = time.perf_counter() - t0 - startup
        cpu0 = sum(client.run(time.process_time).values())
        t1 = time.perf_counter()
        table = run(client, WARMUP_TRIALS + trials)
        wall = time.perf_counter() - t1
        cpu = sum(client.run(time.process_time).values()) - cpu0  # all threads of every worker process
    timed = table[~np.isin(table["trial"], warm["trial"])]
    in_task = np.array([_seconds(r["start"], r["end"]) for r in timed])
    states = {s: int((timed["state"] == s).sum()) for s in sorted(set(timed["state"]))}
    return {"workers": workers, "startup": startup, "warmup": warmup, "wall": wall, "n": len(timed),
            "per_hour": len(timed) / wall * 3600, "in_task": in_task.mean(),
            "overhead": (wall * workers - in_task.sum()) / len(timed),
            "busy": in_task.sum() / (wall * workers), "cores": cpu / wall, "cpu": cpu / len(timed),
            "states": states, "epochs": float(np.mean(timed["epochs"])),
            "overlap": _max_overlap(timed)}


def _max_overlap(table) -> int:
    """Most trials of ``table`` running at the same moment (from their start/end times)."""
    events = sorted([(dt.datetime.fromisoformat(r["start"]), 1) for r in table]
                    + [(dt.datetime.fromisoformat(r["end"]), -1) for r in table], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="timed trials per cluster size (default 8)")
    parser.add_argument("--galaxies", type=int, default=14,
                        help="galaxies in the store, 1 view each (default 14)")
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("surveydust").setLevel(logging.WARNING)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        with get_client("local", workers=2) as client:
            store = simulate(Path(tmp) / "s.zarr", client=client, progress=False, n_galaxies=args.galaxies,
                             views_per_galaxy=1, bands=BANDS)
        for k in WORKERS:
            results.append(bench(store, Path(tmp) / f"study-{k}w", k, args.trials))

    print(f"\nstore: {args.galaxies} galaxies x 1 view, bands {'+'.join(BANDS)}; {os.cpu_count()} CPUs")
    print(f"trials: {EPOCHS} epochs, no pruning, random sampler over 1-2 conv blocks of 4-8 filters,\n"
          f"  2 dense layers of 4-8 units, batch 32-64 (the same {args.trials} trials for every cluster size)")
    print(f"timed: a resumed tune() of {args.trials} new trials after cluster start-up and a warm-up "
          f"tune() of {WARMUP_TRIALS} trials\n  (augmented split written, TensorFlow loaded on every worker); "
          "overhead/trial = (wall x workers - sum in-task) / trials;\n"
          "  cores = worker-process CPU seconds (all threads) / wall; CPU s/trial = the same / trials\n")
    print(f"{'workers':>7}{'startup s':>11}{'warm-up s':>11}{'timed s':>9}{'trials/h':>10}{'ratio':>7}"
          f"{'in-task s':>11}{'overhead s':>12}{'busy':>6}{'max par':>9}{'cores':>7}{'CPU s/trial':>13}  states")
    base = results[0]["per_hour"]
    for r in results:
        states = ", ".join(f"{n} {s}" for s, n in r["states"].items())
        print(f"{r['workers']:>7}{r['startup']:>11.1f}{r['warmup']:>11.1f}{r['wall']:>9.1f}{r['per_hour']:>10.0f}"
              f"{r['per_hour'] / base:>7.2f}{r['in_task']:>11.2f}{r['overhead']:>12.2f}{r['busy']:>6.0%}"
              f"{r['overlap']:>9}{r['cores']:>7.2f}{r['cpu']:>13.2f}  {states}")
    speedup = results[-1]["per_hour"] / base
    print(f"\nspeed-up 2 workers vs 1: {speedup:.2f}x  (goal >= 1.8x: {'met' if speedup >= 1.8 else 'NOT met'})")
    print(f"in-task time per trial, 2 workers vs 1: {results[-1]['in_task'] / results[0]['in_task']:.2f}x  "
          "(> 1: trials slow each other down, e.g. sharing cores)")


if __name__ == "__main__":
    main()

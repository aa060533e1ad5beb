"""Throughput of the built-in simulator, in process and through Dask + Zarr.

Measured in one run, so that every ratio is against a baseline taken on the
same (noisy) machine at the same time:

1. ``baseline``: :func:`simulate_galaxies` ``(0, N)`` in this process on one
   core (BLAS/OpenMP threads pinned to 1), after a one-galaxy warm-up call.
   Pure simulation: no Dask, no Zarr.
2. ``dask Nw``: :func:`simulate` of the same N galaxies into a Zarr store in a
   temporary folder, through a real ``LocalCluster`` of 1 and then 2 worker
   processes (``get_client("local", workers=k)``). The cluster is started, and
   each worker warmed up with one tiny store, before timing; the start-up time
   is reported on its own. ``galaxies_per_task`` gives at least 4 tasks per
   worker for the largest cluster (the same task size for every cluster).

Each configuration is timed ``--repeat`` times and the best run is kept. The
table gives images/s, images/s per core, the speed-up of 2 workers over 1
(goal >= 1.8x), the efficiency of Dask with 1 worker against the in-process
baseline (the cost of Zarr writing + scheduling), and the projected wall time
of a 30,000-image store on 2 workers.

Run:  .venv/bin/python benchmarks/bench_simulate.py [--galaxies N] [--repeat R]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per process, before numpy loads

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from surveydust.cluster import get_client
from surveydust.config import SimulationConfig, load_simulation_config
from surveydust.simulate.run import simulate, simulate_galaxies

WORKERS = (1, 2)
TASKS_PER_WORKER = 4
TARGET_IMAGES = 30_000


def best_of(repeat: int, fn: Callable[[int], None]) -> float:
    """Smallest wall time [s] of ``repeat`` calls ``fn(i)``."""
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_dask(cfg: SimulationConfig, workers: int, repeat: int, tmp: Path) -> tuple[float, float]:
    """(startup s, best run s) of ``simulate`` on a LocalCluster of ``workers`` workers."""
    t0 = time.perf_counter()
    with get_client("local", workers=workers) as client:
        client.wait_for_workers(workers)
        simulate(tmp / f"warm-{workers}.zarr", cfg, client=client, progress=False,
                 n_galaxies=workers, galaxies_per_task=1)  # imports + SED library on every worker
        startup = time.perf_counter() - t0
        run = best_of(repeat, lambda i: simulate(tmp / f"w{workers}-{i}.zarr", cfg, client=client,
                                                 progress=False))
    return startup, run


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=int, default=96, help="galaxies per run (default 96)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration; best kept")
    args = parser.parse_args()

    per_task = max(1, args.galaxies // (TASKS_PER_WORKER * max(WORKERS)))
    cfg = load_simulation_config(n_galaxies=args.galaxies, galaxies_per_task=per_task)
    n_img = cfg.n_samples
    n_tasks = -(-args.galaxies // per_task)
    print(f"{args.galaxies} galaxies = {n_img} images, {per_task} galaxies/task ({n_tasks} tasks), "
          f"best of {args.repeat}, {os.cpu_count()} CPUs")

    simulate_galaxies(0, 1, cfg)  # warm-up: imports, SED library, PSF kernels
    base = n_img / best_of(args.repeat, lambda i: simulate_galaxies(0, args.galaxies, cfg))
    rows: list[tuple[str, int, float, float | None]] = [("baseline in-process", 1, base, None)]
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        for k in WORKERS:
            startup, run = bench_dask(cfg, k, args.repeat, Path(tmp))
            rows.append((f"dask {k} worker{'s' * (k > 1)} + zarr", k, n_img / run, startup))

    print(f"\n{'configuration':<24}{'cores':>6}{'images/s':>10}{'img/s/core':>12}{'startup s':>11}")
    for name, cores, rate, startup in rows:
        up = "-" if startup is None else f"{startup:.1f}"
        print(f"{name:<24}{cores:>6}{rate:>10.1f}{rate / cores:>12.1f}{up:>11}")
    rate1, rate2, start2 = rows[1][2], rows[2][2], rows[2][3] or 0.0
    speedup = rate2 / rate1
    print(f"\nspeed-up 2 workers vs 1:           {speedup:.2f}x  (goal >= 1.8x: "
          f"{'met' if speedup >= 1.8 else 'NOT met'})")
    print(f"efficiency dask 1 worker/baseline: {rate1 / base:.0%}  (Zarr writing + scheduling overhead)")
    print(f"projected {TARGET_IMAGES:,} images on 2 workers: {TARGET_IMAGES / rate2:.0f} s "
          f"(+ {start2:.0f} s startup)")


if __name__ == "__main__":
    main()

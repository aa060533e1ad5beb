"""Stage table of the survey path FITS -> catalogue: where the time goes, all in one run.

Measured in one run, on one simulated field, so that every ratio is against a
baseline taken on the same (noisy) machine at the same time:

1. A field of ``--size`` x ``--size`` pixels in F277W, F356W and F444W (the
   shipped three-band model's bands) with ``--galaxies`` mock galaxies, made by
   ``bench_catalogue.make_field`` (JWST ``i2d``-style FITS, one file per band
   with SCI, ERR, WHT; fields above 8192 px repeat a 4096 px one). Mpix below
   are sky pixels of the field (``size**2 / 1e6``, each in three bands).
2. I/O baseline: ``shutil.copyfile`` of the three FITS files into the scratch
   folder (no fsync), right after they were written, so the page cache is as
   warm for the copy as for the ingest that follows; MB/s of FITS bytes.
3. Ingest: :func:`surveydust.ingest_mosaic` with the default chunk
   (``DEFAULT_CHUNK``) on a ``LocalCluster`` of the largest ``--workers``
   count (start-up not timed), MB/s of FITS read (SCI + ERR + WHT) and its
   ratio to the copy's MB/s.
4. In-process tile loop on ONE core: the script sets ``OMP_NUM_THREADS``,
   ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``TF_NUM_INTRAOP_THREADS``
   and ``TF_NUM_INTEROP_THREADS`` to 1 before numpy or TensorFlow load, like a
   one-thread Dask worker (the ``LocalCluster`` workers inherit them). Tiles
   are ``run_catalogue``'s: ``make_tiles(shape, block_pix(store_chunk(...)))``
   with a halo of ``max(halo_pix, crop // 2 + 1)``, ``crop`` that of the shipped
   three-band bundle. After one untimed warm-up tile (and predicts of batch 1
   and 2, so TensorFlow has traced a function for any batch size), each stage
   is timed over all tiles (``time.perf_counter``, and ``time.process_time``
   for CPU seconds): read (``mosaic_reader(store).read(*box)``), detection image
   (``detection_image`` on the detection bands), smoothing (``smooth``),
   detection (``find_sources``), stamps (``cut_stamps`` on sci and err at the
   sources the tile owns), photometry (``aperture_photometry``); then
   ``measure_tile`` as a whole (a check on the sum of its stages: it also does
   the geometry flags and the WCS) and prediction = ``predict_tile`` on
   ``measure_tile``'s output (NaN -> 0, ``Predictor.predict``, OOD score,
   flags). Separately, the whole ``catalogue_tile`` loop over all tiles: the
   in-process single-core throughput that is the reference of the share column
   and of the cluster ratios.
5. The hardware's own scaling, no Dask: for each ``--workers`` count N > 1, N
   plain processes (``multiprocessing`` spawn, the same one-thread settings)
   each run the ``catalogue_tile`` loop on every N-th tile, after the same
   warm-up, released together by a barrier; wall = until the last finishes.
   Its ratio to N x the single-core rate is what this machine gives a second
   process (shared memory bandwidth and caches, the other load), the ceiling
   of any N-worker cluster; ``run_catalogue``'s ratio to it is Dask's own cost.
6. ``run_catalogue(store, client=client)`` (``out=None``) on a ``LocalCluster``
   of each ``--workers`` count: start-up not timed; each worker predicts
   batches of 1 and 2 and runs ``catalogue_tile`` on one tile (``client.run``)
   first, then one call is timed by ``bench_catalogue.timed_catalogue`` (which
   samples every worker's RSS every 0.5 s with psutil and collects the task
   stream). In-task = sum of the compute durations of the ``catalogue-tile-``
   tasks; overhead = wall x workers - in-task (scheduling, transfers, the
   driver's assembly of the catalogue, idle workers at the end); the ratio
   Mpix/s / (workers x in-process single-core Mpix/s). The catalogue returned
   by the largest cluster is written once with ``write_catalogue``.
7. End to end: ingest + ``run_catalogue`` seconds on the largest cluster
   (start-ups and catalogue writing not included), Mpix/s from FITS to
   catalogue.

The header also prints the glibc malloc variables the Dask nanny sets in its
workers (``distributed.nanny.pre-spawn-environ``: ``MALLOC_TRIM_THRESHOLD_``),
which the in-process loop runs without: setting it fixes glibc's mmap
threshold at 128 KiB, so every large numpy temporary of a worker is a fresh
``mmap`` (page faults), which can make a worker's tile time a multiple of the
in-process one.

No timing is asserted. On a machine shared with other jobs the wall times
follow the other load; the CPU seconds are printed next to them (in-process:
this process, all threads; cluster: every worker plus the driver, which runs
the scheduler).

Run:  .venv/bin/python benchmarks/bench_stages.py [--size 4096] [--galaxies 1200]
      [--workers 1,2] [--tmp DIR] [--seed 0]
(``Dask dashboard: ...`` lines on stderr can be ignored: ``2>/dev/null``.)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
             "TF_NUM_INTEROP_THREADS"):
    os.environ[_var] = "1"  # one core, like a one-thread Dask worker; before numpy / TensorFlow load
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
#: what glibc malloc read at this process's start (a Nanny later copies its pre-spawn-environ into os.environ)
MALLOC_AT_START = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}

import argparse
import logging
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import dask
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_catalogue import BANDS, GB, MB, disk_needed, make_field, timed_catalogue

from surveydust.bundle import default_bundle_path
from surveydust.cluster import get_client
from surveydust.config import load_catalogue_config
from surveydust.detect import (
    aperture_photometry,
    cut_stamps,
    detection_image,
    find_sources,
    make_tiles,
    smooth,
)
from surveydust.infer import _predictor, catalogue_tile, measure_tile, predict_tile
from surveydust.stores.catalogue import write_catalogue
from surveydust.stores.mosaic import DEFAULT_CHUNK, block_pix, ingest_mosaic, mosaic_reader, open_mosaic, store_chunk

SIM_MAX = 8192  # make_field simulates up to this edge in one piece, above it repeats a BASE field
BASE = 4096
STAGES = ("read", "detection image", "smoothing", "detection", "stamps", "photometry", "prediction")
LABELS = {
    "read": "read (mosaic_reader.read)",
    "detection image": "detection image (detection_image)",
    "smoothing": "smoothing (smooth)",
    "detection": "detection (find_sources)",
    "stamps": "stamps (cut_stamps sci + err)",
    "photometry": "photometry (aperture_photometry)",
    "prediction": "prediction (predict_tile)",
    "measure": "(check) measure_tile, whole",
}
GOAL_INGEST = 0.5  # ingest MB/s over copy MB/s
GOAL_OVERHEAD = 0.20  # of wall x workers
GOAL_SCALING = 0.8  # Mpix/s over N x in-process single-core Mpix/s, for N = 2
GOAL_E2E = 3.0  # Mpix/s FITS -> catalogue, 8192^2 x 3 field on 2 cores


class Clock:
    """Wall and CPU seconds accumulated per stage name."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, fn, *args):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[name] += time.perf_counter() - t0
        self.cpu[name] += time.process_time() - c0
        return out


def tile_stages(store: str, tile, halo: int, crop: int, bundles: list[str], cfg, clock: Clock) -> int:
    """One tile through the stages of ``measure_tile`` / ``predict_tile``, each timed; sources owned."""
    n = measure_stages(store, tile, halo, crop, cfg, clock)  # its arrays are freed before the check below
    measured = clock("measure", measure_tile, store, tile, halo, crop, cfg, None)
    clock("prediction", predict_tile, measured, bundles, cfg)
    if len(measured[0]["x"]) != n:
        print(f"WARNING: tile {tile.index}: {n} sources from the stages, {len(measured[0]['x'])} from "
              "measure_tile", flush=True)
    return n


def measure_stages(store: str, tile, halo: int, crop: int, cfg, clock: Clock) -> int:
    """The stages of ``measure_tile`` up to the photometry, each timed; the number of sources the tile owns."""
    shape = mosaic_reader(store).shape
    y0, y1, x0, x1 = tile.with_halo(halo, shape)
    sci, err = clock("read", lambda: mosaic_reader(store).read(y0, y1, x0, x1))
    reader = mosaic_reader(store)
    det = [list(reader.bands).index(b) for b in cfg.detection_bands]
    snr, valid = clock("detection image", lambda: detection_image(sci[det], err[det]))
    if valid.any():
        smoothed = clock("smoothing", smooth, snr, cfg.smooth_fwhm_pix)
        x, y, _ = clock("detection", find_sources, smoothed, snr, valid, cfg)
    else:  # a tile of NaN border: detect() returns no source
        x, y = np.zeros(0), np.zeros(0)
    x, y = x + x0, y + y0
    own = tile.owns(x, y)
    x, y = x[own], y[own]
    stamps = clock("stamps", cut_stamps, sci, x - x0, y - y0, crop)
    err_stamps = clock("stamps", cut_stamps, err, x - x0, y - y0, crop)
    clock("photometry", aperture_photometry, stamps, err_stamps, cfg.aperture_arcsec / reader.pixel_scale_arcsec)
    return int(x.size)


def warm_predict(path: str) -> None:
    """Predict batches of 1 and 2 (TensorFlow traces a function for any batch size after them)."""
    p = _predictor(path)
    for n in (1, 2):
        p.predict(np.zeros((n, len(p.bands), p.crop, p.crop), np.float32))


def _plain_loop(store: str, tiles: list, halo: int, bundles: list[str], cfg, barrier, queue) -> None:
    """One plain process: warm up like a worker, wait for the others, time the catalogue_tile loop."""
    warm_predict(bundles[0])
    catalogue_tile(store, tiles[0], halo, bundles, cfg, None)
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for tile in tiles:
        catalogue_tile(store, tile, halo, bundles, cfg, None)
    queue.put((time.perf_counter() - t0, time.process_time() - c0))


def plain_processes(n: int, store: str, tiles: list, halo: int, bundles: list[str], cfg) -> tuple[float, float]:
    """Wall seconds (release to last finish) and CPU seconds of ``n`` plain processes, each running
    the catalogue_tile loop on every n-th tile (no Dask)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_plain_loop, args=(store, tiles[i::n], halo, bundles, cfg, barrier, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait(timeout=3600)  # a child that failed breaks it: no endless wait
    t0 = time.perf_counter()
    done = [queue.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return wall, sum(cpu for _, cpu in done)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    """Run the benchmark and print the stage table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="mosaic edge [pixels] (default 4096)")
    parser.add_argument("--galaxies", type=int, default=1200,
                        help="simulated galaxies (of the 4096 px base field above 8192 px; default 1200)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None,
                        help="folder for the scratch folder (FITS, copy, store; default: system tmp); "
                             "the scratch folder is removed at the end")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    big = max(workers)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    logging.getLogger("surveydust").setLevel(logging.ERROR)

    tmp_root = args.tmp or Path(tempfile.gettempdir())
    need = disk_needed(args.size) + args.size**2 * 4 * len(BANDS) * 3  # + the copy of the FITS
    free = shutil.disk_usage(tmp_root).free
    if free < 1.5 * need + 5 * GB:  # bench_catalogue's margin
        raise SystemExit(f"refused: a {args.size} px field needs up to {need / GB:.1f} GB in {tmp_root}, "
                         f"which has {free / GB:.1f} GB free (want >= {(1.5 * need + 5 * GB) / GB:.0f} GB)")

    mpix = args.size**2 / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-", dir=args.tmp))
    try:
        # 1. the field
        tile_pix_expected = block_pix(DEFAULT_CHUNK)  # simulate_field puts galaxies across these tile boundaries
        t0 = time.perf_counter()
        files, _truth, how = make_field(tmp, args.size, args.galaxies, args.seed, SIM_MAX, BASE, tile_pix_expected)
        field_s = time.perf_counter() - t0
        fits_mb = sum(p.stat().st_size for p in files.values()) / MB
        print(f"field: {args.size} x {args.size} px = {mpix:.1f} Mpix x {len(BANDS)} bands ({'+'.join(BANDS)}; "
              f"{how}), {fits_mb:,.0f} MB of FITS, made in {field_s:.0f} s", flush=True)

        # 2. I/O baseline: a plain copy, after the files were written (page cache as warm as for the ingest)
        copy_dir = tmp / "copy"
        copy_dir.mkdir()
        t0 = time.perf_counter()
        for p in files.values():
            shutil.copyfile(p, copy_dir / p.name)
        copy_s = time.perf_counter() - t0
        shutil.rmtree(copy_dir)

        # 3. ingest
        store = tmp / "field.zarr"
        with get_client("local", workers=big) as client:
            client.wait_for_workers(big)
            t0 = time.perf_counter()
            ingest_mosaic(store, {b: str(p) for b, p in files.items()}, client=client, progress=False)
            ingest_s = time.perf_counter() - t0
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / MB
        print(f"copy {copy_s:.1f} s, ingest {ingest_s:.1f} s ({big} workers)", flush=True)

        # 4. in-process, one core
        cfg = load_catalogue_config(None)
        bundle = str(default_bundle_path(BANDS))
        predictor = _predictor(bundle)
        crop = predictor.crop
        halo = max(cfg.halo_pix, crop // 2 + 1)
        mosaic = open_mosaic(store)
        chunk = store_chunk(mosaic)
        shape = (mosaic.sizes["y"], mosaic.sizes["x"])
        tile_pix = cfg.tile_pix or block_pix(chunk)
        tiles = make_tiles(shape, tile_pix)
        centre = tiles[len(tiles) // 2]
        bundles = [bundle]
        warm_predict(bundle)
        tile_stages(str(store), centre, halo, crop, bundles, cfg, Clock())  # warm-up, not timed
        catalogue_tile(str(store), centre, halo, bundles, cfg, None)
        clock = Clock()
        n_stage = sum(tile_stages(str(store), t, halo, crop, bundles, cfg, clock) for t in tiles)
        t0, c0 = time.perf_counter(), time.process_time()
        n_loop = sum(len(catalogue_tile(str(store), t, halo, bundles, cfg, None)["x"]) for t in tiles)
        loop_s, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
        ref = mpix / loop_s  # in-process single-core Mpix/s
        print(f"in-process: stages {sum(clock.wall.values()):.1f} s, catalogue_tile loop {loop_s:.1f} s", flush=True)

        # 5. n plain processes, no Dask: the hardware's scaling
        plain = {k: plain_processes(k, str(store), tiles, halo, bundles, cfg) for k in workers if 1 < k <= len(tiles)}
        for k, (wall, _) in plain.items():
            print(f"{k} plain processes: {wall:.1f} s", flush=True)

        # 6. run_catalogue on each cluster
        warm_tile = (str(store), centre, halo, bundles, cfg, None)
        results, startups, ds_big = {}, {}, None
        for k in workers:
            t0 = time.perf_counter()
            with get_client("local", workers=k) as client:
                client.wait_for_workers(k)
                startups[k] = time.perf_counter() - t0
                client.run(warm_predict, bundle)
                r = timed_catalogue(client, store, None, "tile", warm_tile)
            results[k] = r
            if k == big:
                ds_big = r["ds"]
            print(f"run_catalogue {k} worker(s): {r['wall']:.1f} s", flush=True)
        t0 = time.perf_counter()
        write_catalogue(ds_big, tmp / "cat.zarr", overwrite=False)
        write_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the table
    e2e_s = ingest_s + results[big]["wall"]
    copy_rate, ingest_rate = fits_mb / copy_s, fits_mb / ingest_s
    print(f"\nfield {args.size} x {args.size} px ({mpix:.1f} Mpix) x {len(BANDS)} bands, {fits_mb:,.0f} MB FITS "
          f"(SCI+ERR+WHT), store {store_mb:,.0f} MB (chunk {chunk}); {len(tiles)} tiles of {tile_pix} px, halo "
          f"{halo} px, stamps {crop} px; model {'+'.join(predictor.bands)}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    spawn_env = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    malloc = {k: v for k, v in spawn_env.items() if k.startswith("MALLOC_")}
    print(f"malloc settings: workers {malloc or 'none'} (distributed.nanny.pre-spawn-environ), "
          f"this process at its start {MALLOC_AT_START or 'none'}")
    print("share = seconds / in-process catalogue_tile loop; Mpix = sky pixels of the field (x 3 bands)\n")
    w = 44
    print(f"{'stage':<{w}}{'seconds [s]':>12}{'CPU [s]':>9}{'Mpix/s':>9}{'share [%]':>11}  note")
    rows = [
        ("FITS copy (shutil.copyfile)", copy_s, None, mpix / copy_s, None,
         f"{copy_rate:,.0f} MB/s; after the FITS were written"),
        (f"ingest_mosaic ({big} workers)", ingest_s, None, mpix / ingest_s, None,
         f"{ingest_rate:,.0f} MB/s of FITS; {ingest_rate / copy_rate:.2f} x copy"),
    ]
    print_rows(rows, w)
    print(f"-- in-process, one core, {len(tiles)} tiles (after 1 warm-up tile); {n_stage} sources --")
    rows = [(LABELS[s], clock.wall[s], clock.cpu[s], mpix / clock.wall[s] if clock.wall[s] else None,
             100 * clock.wall[s] / loop_s, "") for s in STAGES]
    stage_sum = sum(clock.wall[s] for s in STAGES)
    stage_cpu = sum(clock.cpu[s] for s in STAGES)
    rows.append(("sum of the stages", stage_sum, stage_cpu, mpix / stage_sum, 100 * stage_sum / loop_s, ""))
    measured_parts = sum(clock.wall[s] for s in STAGES[:-1])
    rows.append((LABELS["measure"], clock.wall["measure"], clock.cpu["measure"], mpix / clock.wall["measure"],
                 100 * clock.wall["measure"] / loop_s, f"its stages above: {measured_parts:.2f} s"))
    rows.append(("catalogue_tile loop (reference)", loop_s, loop_cpu, ref, 100.0, f"{n_loop} sources"))
    print_rows(rows, w)
    print("-- cluster --")
    rows = [(f"{k} plain processes, no Dask (ceiling)", wall, cpu, mpix / wall, None,
             f"{mpix / wall / (k * ref):.2f} x {k} x in-process") for k, (wall, cpu) in plain.items()]
    rows += [(f"run_catalogue ({k} worker{'s' * (k > 1)})", r["wall"], r["cpu"], mpix / r["wall"], None,
              f"{r['n']} sources") for k, r in results.items()]
    rows.append(("catalogue writing (write_catalogue)", write_s, None, None, None,
                 f"{results[big]['n']} sources, in-process"))
    rows.append((f"end to end: ingest + run_catalogue ({big} w.)", e2e_s, None, mpix / e2e_s, None,
                 f"with writing {mpix / (e2e_s + write_s):.2f} Mpix/s"))
    print_rows(rows, w)

    print(f"\n{'workers':>7}{'wall [s]':>10}{'Mpix/s':>8}{'in-task [s]':>13}{'overhead [s]':>14}"
          f"{'overhead [%]':>14}{'vs N x 1-core':>15}{'CPU [s]':>9}{'RSS before [MB]':>17}{'peak [MB]':>11}"
          f"{'start-up [s]':>14}")
    for k, r in results.items():
        over = r["wall"] * k - r["in_task"]
        print(f"{k:>7}{r['wall']:>10.2f}{mpix / r['wall']:>8.2f}{r['in_task']:>13.2f}{over:>14.2f}"
              f"{100 * over / (r['wall'] * k):>14.1f}{mpix / r['wall'] / (k * ref):>15.2f}{r['cpu']:>9.1f}"
              f"{r['rss_before'] / MB:>17,.0f}{r['rss_peak'] / MB:>11,.0f}{startups[k]:>14.1f}")
        if r["restarted"]:
            print(f"{'':>7}(a worker process died and was replaced during this call)")
    print("in-task: sum of the catalogue-tile task compute times; overhead = wall x workers - in-task; "
          "vs N x 1-core = Mpix/s / (workers x in-process catalogue_tile Mpix/s); CPU: workers + driver; "
          "RSS: largest worker's, before and peak during the call (sampled every 0.5 s); start-up not timed\n")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    ratio = ingest_rate / copy_rate
    print(f"ingest / copy MB/s: {ratio:.2f}  (goal >= {GOAL_INGEST}: {verdict(ratio >= GOAL_INGEST)})")
    for k, r in results.items():
        share = (r["wall"] * k - r["in_task"]) / (r["wall"] * k)
        print(f"overhead, {k} worker{'s' * (k > 1)}: {100 * share:.1f}% of wall x workers  "
              f"(goal <= {100 * GOAL_OVERHEAD:.0f}%: {verdict(share <= GOAL_OVERHEAD)})")
    for k, r in results.items():
        scale = mpix / r["wall"] / (k * ref)
        goal = f"  (goal >= {GOAL_SCALING} for 2 workers: {verdict(scale >= GOAL_SCALING)})" if k == 2 else ""
        print(f"Mpix/s / ({k} x in-process single-core Mpix/s), {k} worker{'s' * (k > 1)}: {scale:.2f}{goal}")
        if k in plain:
            print(f"  of which the machine: {k} plain processes reach {mpix / plain[k][0] / (k * ref):.2f}; "
                  f"Dask against them: {plain[k][0] / r['wall']:.2f}")
    e2e = mpix / e2e_s
    print(f"end to end FITS -> catalogue, {big} workers: {e2e:.2f} Mpix/s  (goal >= {GOAL_E2E} Mpix/s for an "
          f"8192^2 x 3 field on 2 cores; this field {args.size}^2: {verdict(e2e >= GOAL_E2E)})")


def print_rows(rows: list[tuple], w: int) -> None:
    for name, seconds, cpu, rate, share, note in rows:
        line = f"{name:<{w}}{seconds:>12.2f}{fmt(cpu, '.2f'):>9}{fmt(rate, '.2f'):>9}{fmt(share, '.1f'):>11}  {note}"
        print(line.rstrip())


if __name__ == "__main__":
    main()

"""Throughput and worker memory of bulk inference (``run_catalogue``) against a hand-written loop.

Measured in one run, on one simulated field, so that every ratio is against a
baseline taken on the same (noisy) machine at the same time:

0. A field of ``--size`` x ``--size`` pixels in F277W, F356W and F444W (the
   shipped model's bands) with ``--galaxies`` mock galaxies:
   :func:`surveydust.simulate.simulate_field` writes JWST ``i2d``-style FITS
   (SCI, ERR, WHT in MJy/sr with PIXAR_SR) and a truth table; the FITS are
   ingested with :func:`surveydust.ingest_mosaic` in ``--chunk`` pixel chunks
   (1024 by default), which are also ``run_catalogue``'s tiles. Above
   ``--sim-max`` pixels (8192) the simulator would need tens of GB of memory
   (it holds every band, float64 temporaries and a distance transform of the
   whole field), so a ``--base`` field (4096 px, no NaN border) is simulated
   and repeated over the large grid, streamed strip by strip into the FITS
   files with a new WCS and a 40 px NaN border; its truth table is repeated too.
   The positions table is a CSV of ``id, ra, dec`` from the truth table's
   light-weighted centroids (``ra_centroid``, ``dec_centroid``).
1. ``(a)`` the baseline a user writes by hand: open the three FITS files
   (memmap) and their WCS once, then per source ``Cutout2D(sci, SkyCoord(ra,
   dec), size=32, wcs=wcs, mode="partial", fill_value=nan)`` per band, times
   ``1e15 * PIXAR_SR`` (MJy/sr -> nJy per pixel, the stores' unit), NaN -> 0
   (as ``run_catalogue`` does), the three bands stacked, normalised as the
   bundle expects and Keras' ``model.predict`` called on it. Timed on the first ``--baseline-sources``
   sources after two untimed predicts (TensorFlow warm-up: after batches of 1
   and 2, Keras has traced a function for any batch size); model loading is
   not timed. ``(a')`` is the same loop with one batched predict at the end,
   to show how much of (a) is the per-call cost of Keras.
2. ``(b)`` ``run_catalogue(store, sources=positions.csv, client=client)`` on
   a ``LocalCluster`` of 1 and of 2 workers (``get_client("local",
   workers=N)``, one thread each), every source of the table.
3. ``(c)`` ``run_catalogue(store, client=client)``: detection on the whole
   mosaic, photometry and prediction; megapixels/s of the mosaic and
   sources/s of the detected sources.

Warm-up: cluster start-up is not timed. Each worker loads the model once per
process and keeps it (``surveydust.infer._PREDICTORS``), and TensorFlow traces
its predict function on first use, so with ``--warmup run`` (the default up to
``--sim-max`` pixels) every ``run_catalogue`` call is made twice on the same
client and only the second one is timed. With ``--warmup tile`` (the default
above, where a second whole-mosaic run would double a long benchmark) each
worker instead runs :func:`surveydust.infer.catalogue_tile` on one tile of the
mosaic (``client.run``) before the timed call. ``run_catalogue`` writes no
catalogue store here (``out=None``: a fresh scratch folder per call), so the
second call recomputes every tile.

Memory: during the timed (c) run a background thread samples the RSS of every
worker process (``psutil``, via ``client.run``) every 0.5 s; the peak of any
one worker is printed with its RSS just before the run, next to the mosaic
size and the size of one tile read (core + halo, sci + err, all bands).
``ru_maxrss`` is no use: Linux carries it over from the parent process.
Also printed: CPU seconds / wall (cores kept busy, see below), the in-task time of
the tile tasks (``get_task_stream``), and two checks: (b) against (a) on the
same sources (``Cutout2D``'s ``ceil(x - 16)`` and ``cut_stamps``'
``rint(x - 15.5)`` give the same stamp origin, so A_V should agree), and (c)
matched to the truth table (:func:`surveydust.demo.match_truth`).

On a machine shared with other jobs the wall times follow the other load, so
the CPU seconds of the work are printed too: for (a) the benchmark process's
(all threads), for (b) and (c) those of every worker process plus the driver
process (``run_catalogue`` itself and the scheduler, which a ``LocalCluster``
runs in the driver), as CPU ms per source.

Run:  .venv/bin/python benchmarks/bench_catalogue.py [--size 2048] [--galaxies 300]
      [--chunk 1024] [--workers 1,2] [--only all|sources|mosaic] [--tmp DIR]
(--size 20000 --only mosaic: ~14 GB of FITS plus the store; refused when the
disk has too little free space.)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: no TensorFlow start-up chatter

import argparse
import contextlib
import logging
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
from astropy.io import fits
from astropy.table import Table

from surveydust.bundle import default_bundle_path, load_model
from surveydust.cluster import get_client
from surveydust.config import load_catalogue_config
from surveydust.demo import match_truth
from surveydust.detect import make_tiles
from surveydust.infer import catalogue_tile, run_catalogue
from surveydust.preprocess import network_inputs
from surveydust.simulate import simulate_field
from surveydust.simulate.field import field_wcs
from surveydust.stores.mosaic import ingest_mosaic, open_mosaic

BANDS = ("F277W", "F356W", "F444W")
STAMP = 32
MB = 1e6
GB = 1e9
SAMPLE_S = 0.5  # worker RSS sampling period [s]
STRIP = 256  # rows per write when tiling a large field
BORDER = 40  # NaN border of a tiled field [pixels] (simulate_field's default)
EDGE = 20  # galaxies of a tiled field kept this far inside the border [pixels]


# --------------------------------------------------------------------------- the field


def disk_needed(size: int) -> float:
    """Bytes of FITS (3 bands x SCI/ERR/WHT) plus an uncompressed store (sci + err)."""
    return size**2 * 4 * len(BANDS) * (3 + 2)


def make_field(tmp: Path, size: int, galaxies: int, seed: int, sim_max: int, base: int,
               chunk: int) -> tuple[dict, Path, str]:
    """FITS files per band and the truth table; how they were made (one line)."""
    if size <= sim_max:
        # simulate_field puts 4 galaxies across tile boundaries: those of the store's chunks
        files = simulate_field(tmp / "fits", n_galaxies=galaxies, shape=(size, size), bands=list(BANDS), seed=seed,
                               tile_pix=chunk)
        return files.bands, files.truth, f"simulate_field, {galaxies} galaxies"
    base_files = simulate_field(tmp / "base", n_galaxies=galaxies, shape=(base, base), bands=list(BANDS), seed=seed,
                                border_pix=0, corner_cut=0.0, noise_variation=0.0, n_straddle=0)
    truth = Table.read(base_files.truth)
    wcs = field_wcs((size, size), tuple(truth.meta["centre"]), truth.meta["rotation_deg"],
                    truth.meta["pixel_scale_arcsec"])
    (tmp / "fits").mkdir()
    files = {}
    for band in BANDS:
        files[band] = tmp / "fits" / f"big_{band}_i2d.fits"
        write_tiled(base_files.bands[band], files[band], size, wcs.to_header())
        base_files.bands[band].unlink()
    big = tile_truth(truth, base, size, wcs)
    path = tmp / "fits" / "big_truth.ecsv"
    big.write(path, format="ascii.ecsv")
    reps = -(-size // base)
    return files, path, (f"a {base} px simulate_field of {galaxies} galaxies repeated {reps} x {reps} "
                         f"({len(big)} galaxies)")


def write_tiled(src: Path, out: Path, size: int, wcs_header: fits.Header) -> None:
    """Repeat the SCI/ERR/WHT images of ``src`` over ``size`` x ``size`` pixels, strip by strip."""
    with fits.open(src) as hdul:
        for ext in ("SCI", "ERR", "WHT"):
            data = np.asarray(hdul[ext].data, dtype=np.float32)
            header = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", size),
                                  ("NAXIS2", size), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", ext)])
            header.extend(wcs_header)
            for key in ("BUNIT", "PIXAR_SR", "PIXAR_A2", "FILTER"):
                if key in hdul[ext].header:
                    header[key] = hdul[ext].header[key]
            blank = np.float32(0.0 if ext == "WHT" else np.nan)
            n = data.shape[0]
            stream = fits.StreamingHDU(str(out), header)  # adds an empty primary first
            for y in range(0, size, STRIP):
                rows = np.arange(y, min(y + STRIP, size))
                block = np.tile(data[rows % n], (1, -(-size // n)))[:, :size]
                block[:, :BORDER] = blank
                block[:, size - BORDER:] = blank
                block[(rows < BORDER) | (rows >= size - BORDER)] = blank
                stream.write(block.astype(">f4"))
            stream.close()


def tile_truth(truth: Table, base: int, size: int, wcs) -> Table:
    """The base field's truth repeated like its pixels, with positions on the large grid."""
    parts = []
    for oy in range(0, size, base):
        for ox in range(0, size, base):
            x, y = np.asarray(truth["x_centroid"]) + ox, np.asarray(truth["y_centroid"]) + oy
            keep = (x >= BORDER + EDGE) & (x < size - BORDER - EDGE) & (y >= BORDER + EDGE) & (y < size - BORDER - EDGE)
            part = truth[keep]["A_V", "EBV", "log_ssfr"]
            part["x_centroid"], part["y_centroid"] = x[keep], y[keep]
            parts.append(part)
    from astropy.table import vstack

    big = vstack(parts)
    big["ra_centroid"], big["dec_centroid"] = wcs.all_pix2world(big["x_centroid"], big["y_centroid"], 0)
    big.add_column(np.arange(len(big)), name="id", index=0)
    return big


def write_positions(truth_path: Path, out: Path) -> Table:
    """CSV ``id, ra, dec`` [deg] of the truth table's light-weighted centroids."""
    truth = Table.read(truth_path)
    table = Table({"id": np.asarray(truth["id"]), "ra": np.asarray(truth["ra_centroid"], float),
                   "dec": np.asarray(truth["dec_centroid"], float)})
    table["ra"].info.format = table["dec"].info.format = ".10f"
    table.write(out, format="ascii.csv")
    return table


# --------------------------------------------------------------------------- (a) by hand


def hand_written(files: dict[str, Path], table: Table, n: int, predictor, batched: bool) -> tuple[float, float, dict]:
    """Wall and CPU seconds of the Cutout2D loop on the first ``n`` rows; A_V by id."""
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS

    t0, c0 = time.perf_counter(), time.process_time()
    hduls = [fits.open(files[b], memmap=True) for b in predictor.bands]
    scis = [h["SCI"].data for h in hduls]
    wcss = [WCS(h["SCI"].header) for h in hduls]
    to_njy = [1e15 * h["SCI"].header["PIXAR_SR"] for h in hduls]
    a_v, stamps = {}, []
    i_av, scale_av = predictor.targets.index("A_V"), predictor.meta["target_scaling"]["A_V"]
    for row in table[:n]:
        pos = SkyCoord(row["ra"], row["dec"], unit="deg")
        stamp = np.stack([Cutout2D(sci, pos, size=STAMP, wcs=wcs, mode="partial", fill_value=np.nan).data * f
                          for sci, wcs, f in zip(scis, wcss, to_njy)])
        stamp = np.nan_to_num(stamp.astype(np.float32), nan=0.0)
        if batched:
            stamps.append(stamp)
        else:  # the issue's baseline: Keras' model.predict per source
            raw = predictor.model.predict(network_inputs(stamp[None], predictor.crop, colours=predictor.colour_inputs),
                                          verbose=0)
            a_v[int(row["id"])] = float(raw[0, i_av] * scale_av[1] + scale_av[0])
    if batched:
        result = predictor.predict(np.stack(stamps))
        a_v = dict(zip(np.asarray(table["id"][:n]).astype(int).tolist(), result["A_V"].values.tolist()))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    for h in hduls:
        h.close()
    return seconds, cpu, a_v


# --------------------------------------------------------------------------- (b), (c) run_catalogue


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _tile_seconds(stream: list) -> float:
    """In-task (compute) seconds of the catalogue tile tasks in a task stream."""
    total = 0.0
    for task in stream:
        if str(task.get("key", "")).startswith("catalogue-tile"):
            total += sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
    return total


def timed_catalogue(client, store: Path, sources: Path | None, warmup: str, warm_tile) -> dict:
    """Warm up, then time one ``run_catalogue`` call; sample worker RSS meanwhile."""
    from distributed import get_task_stream

    def call():
        return run_catalogue(store, sources=sources, client=client, progress=False)

    if warmup == "run":
        call()
    else:
        client.run(catalogue_tile, *warm_tile)
    before = client.run(_rss)
    pids = client.run(os.getpid)
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            # a worker going away mid-call (CommClosedError): keep sampling the others
            with contextlib.suppress(Exception):
                for addr, rss in client.run(_rss).items():
                    peak[addr] = max(peak.get(addr, 0), rss)
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0 = sum(client.run(time.process_time).values()) + time.process_time()
    sampler.start()
    with get_task_stream(client=client) as ts:
        t0 = time.perf_counter()
        ds = call()
        wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    for addr, rss in client.run(_rss).items():
        peak[addr] = max(peak.get(addr, 0), rss)
    cpu = sum(client.run(time.process_time).values()) + time.process_time() - cpu0
    restarted = sorted(set(pids.values()) - set(client.run(os.getpid).values()))
    if restarted:
        print(f"WARNING: worker process(es) {restarted} died during the timed call and were replaced: its wall "
              "time includes the lost tiles and a restart, its CPU seconds miss the dead worker's", flush=True)
    return {"ds": ds, "wall": wall, "n": int(ds.sizes["source"]), "cpu": cpu, "in_task": _tile_seconds(ts.data),
            "rss_before": max(before.values()), "rss_peak": max(peak.values()), "restarted": restarted}


# --------------------------------------------------------------------------- main


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="mosaic edge [pixels] (default 2048)")
    parser.add_argument("--galaxies", type=int, default=300,
                        help="simulated galaxies (of the base field when the field is tiled; default 300)")
    parser.add_argument("--chunk", type=int, default=1024, help="store chunk = tile edge [pixels] (default 1024)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    parser.add_argument("--only", choices=("all", "sources", "mosaic"), default="all",
                        help="sources: (a) and (b) only; mosaic: (c) only (default all)")
    parser.add_argument("--baseline-sources", type=int, default=100,
                        help="sources timed in the hand-written baseline (default 100)")
    parser.add_argument("--warmup", choices=("run", "tile"), default=None,
                        help="run: time the second of two identical calls; tile: one tile per worker first "
                             "(default: run up to --sim-max pixels, tile above)")
    parser.add_argument("--sim-max", type=int, default=8192,
                        help="largest field simulated in one piece; larger ones repeat a --base field")
    parser.add_argument("--base", type=int, default=4096, help="edge of the repeated field [pixels] (default 4096)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None,
                        help="folder for the FITS and the store (default: system tmp)")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    warmup = args.warmup or ("run" if args.size <= args.sim_max else "tile")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    logging.getLogger("surveydust").setLevel(logging.ERROR)

    tmp_root = args.tmp or Path(tempfile.gettempdir())
    free = shutil.disk_usage(tmp_root).free
    need = disk_needed(args.size)
    if free < 1.5 * need + 5 * GB:
        raise SystemExit(f"refused: a {args.size} px field needs up to {need / GB:.1f} GB in {tmp_root}, "
                         f"which has {free / GB:.1f} GB free (want >= {(1.5 * need + 5 * GB) / GB:.0f} GB)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-catalogue-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        files, truth_path, how = make_field(tmp, args.size, args.galaxies, args.seed, args.sim_max,
                                              args.base, args.chunk)
        sim_s = time.perf_counter() - t0
        store = tmp / "field.zarr"
        t0 = time.perf_counter()
        with get_client("local", workers=2) as client:
            ingest_mosaic(store, {b: str(p) for b, p in files.items()}, field="bench", chunk=args.chunk,
                          client=client, progress=False)
        ingest_s = time.perf_counter() - t0
        positions = tmp / "positions.csv"
        table = write_positions(truth_path, positions)
        fits_mb = sum(p.stat().st_size for p in files.values()) / MB
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / MB

        cfg = load_catalogue_config(None)
        mosaic = open_mosaic(store)
        predictor = load_model()
        halo = max(cfg.halo_pix, predictor.crop // 2 + 1)
        tiles = make_tiles((args.size, args.size), args.chunk)
        centre = tiles[len(tiles) // 2]
        warm_tile = (str(store), centre, halo, [str(default_bundle_path())], cfg, None)
        tile_read_mb = (min(args.chunk, args.size) + 2 * halo) ** 2 * len(BANDS) * 2 * 4 / MB
        mosaic_mb = mosaic["sci"].nbytes * 2 / MB
        mpix = args.size**2 / 1e6

        rows, base = [], {}
        if args.only != "mosaic":
            n_base = min(args.baseline_sources, len(table))
            for n in (1, 2):  # TensorFlow warm-up: after two batch sizes Keras traces one for any size
                predictor.predict(np.zeros((n, len(BANDS), STAMP, STAMP), np.float32))
            for name, batched in (("(a) by hand: Cutout2D + predict per source", False),
                                  ("(a') by hand, one batched predict", True)):
                seconds, cpu, a_v = hand_written(files, table, n_base, predictor, batched)
                base.setdefault("a_v", a_v)
                rows.append({"what": name, "workers": "-", "n": n_base, "wall": seconds, "cpu": cpu, "mpix": None})
            base["rate"] = rows[0]["n"] / rows[0]["wall"]
            base["cpu"] = rows[0]["cpu"] / rows[0]["n"]

        results: dict[tuple[str, int], dict] = {}
        startups: dict[int, float] = {}
        for k in workers:
            t0 = time.perf_counter()
            with get_client("local", workers=k) as client:
                client.wait_for_workers(k)
                startup = startups[k] = time.perf_counter() - t0
                if args.only != "mosaic":
                    r = timed_catalogue(client, store, positions, warmup, warm_tile)
                    results["b", k] = r
                    rows.append({"what": "(b) run_catalogue(sources=positions.csv)", "workers": k, "n": r["n"],
                                 "wall": r["wall"], "cpu": r["cpu"], "mpix": None, "r": r, "startup": startup})
                if args.only != "sources":
                    r = timed_catalogue(client, store, None, warmup, warm_tile)
                    results["c", k] = r
                    rows.append({"what": "(c) run_catalogue() detect + predict", "workers": k, "n": r["n"],
                                 "wall": r["wall"], "cpu": r["cpu"], "mpix": mpix, "r": r, "startup": startup})
                    with warnings.catch_warnings():  # nanmean of an all-NaN column: not ours to report
                        warnings.simplefilter("ignore", RuntimeWarning)
                        r["truth"] = match_truth(r["ds"], truth_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nfield: {args.size} x {args.size} px, {'+'.join(BANDS)} ({how}), made in {sim_s:.0f} s; "
          f"{len(table)} positions")
    print(f"FITS (SCI+ERR+WHT) {fits_mb:,.0f} MB; store {store_mb:,.0f} MB on disk, sci+err {mosaic_mb:,.0f} MB "
          f"as float32; ingested in {ingest_s:.0f} s with chunk {args.chunk} (2 workers)")
    print(f"tiles: {len(tiles)} of {args.chunk} px, halo {halo} px (one tile read, sci+err of {len(BANDS)} bands: "
          f"{tile_read_mb:.0f} MB); model: shipped bundle {'+'.join(predictor.bands)}, crop {predictor.crop}; "
          f"{os.cpu_count()} CPUs")
    timed = ("the second of two identical calls on the same client" if warmup == "run"
             else "one call, after each worker ran one tile (catalogue_tile)")
    print(f"timed: {timed}; cluster start-up not timed\n")
    print(f"{'what':<46}{'workers':>8}{'sources':>9}{'time s':>8}{'sources/s':>11}{'Mpix/s':>8}{'vs (a)':>8}"
          f"{'CPU ms/src':>11}{'cores':>7}{'busy':>6}{'RSS MB':>8}{'peak MB':>9}")
    for row in rows:
        r = row.get("r")
        rate = row["n"] / row["wall"]
        mp = f"{row['mpix'] / row['wall']:.2f}" if row["mpix"] else "-"
        vs = f"{rate / base['rate']:.1f}x" if base else "-"
        extra = f"{'-':>7}{'-':>6}{'-':>8}{'-':>9}"
        if r:
            extra = (f"{r['cpu'] / r['wall']:>7.2f}{r['in_task'] / (r['wall'] * row['workers']):>6.0%}"
                     f"{r['rss_before'] / MB:>8,.0f}{r['rss_peak'] / MB:>9,.0f}")
        per = f"{row['cpu'] / row['n'] * 1e3:.1f}" if row["n"] else "-"
        print(f"{row['what']:<46}{row['workers']:>8}{row['n']:>9}{row['wall']:>8.2f}{rate:>11.1f}{mp:>8}{vs:>8}"
              f"{per:>11}{extra}")
    print("\nCPU ms/src: CPU time of the benchmark process (a), of the workers + driver (b, c), per source;\n"
          "cores = CPU time / wall; busy = in-task time of the tile tasks / (wall x workers); "
          "RSS = largest worker RSS just before the timed call, peak = largest sampled during it")
    print("cluster start-up (not timed): " + ", ".join(f"{k} worker{'s' * (k > 1)} {s:.1f} s"
                                                       for k, s in startups.items()))

    if base:
        for k in workers:
            if ("b", k) in results:
                r = results["b", k]
                ratio = r["n"] / r["wall"] / base["rate"]
                print(f"(b)/(a) sources/s, {k} worker{'s' * (k > 1)}: {ratio:.1f}x  "
                      f"(goal >= 20x: {'met' if ratio >= 20 else 'NOT met'}); CPU per source "
                      f"{base['cpu'] / (r['cpu'] / r['n']):.1f}x less")
    if len(workers) > 1:
        lo, hi = workers[0], workers[-1]
        for part in ("b", "c"):
            if (part, lo) in results and (part, hi) in results:
                a, b = results[part, lo], results[part, hi]
                print(f"speed-up ({part}) {hi} workers vs {lo}: {a['wall'] / b['wall']:.2f}x  "
                      f"(CPU s {a['cpu']:.1f} vs {b['cpu']:.1f})")
    for k in workers:
        if ("c", k) in results:
            r = results["c", k]
            print(f"(c) {k} worker{'s' * (k > 1)}: peak worker RSS {r['rss_peak'] / MB:,.0f} MB "
                  f"(+{(r['rss_peak'] - r['rss_before']) / MB:,.0f} MB over its RSS before the call) for a "
                  f"{mosaic_mb:,.0f} MB mosaic and {tile_read_mb:.0f} MB tile reads")
    if base and ("b", workers[0]) in results:
        ds = results["b", workers[0]]["ds"]
        model = ds["model"].values[0]
        ids = ds["input_id"].values.astype(int)
        ours = dict(zip(ids.tolist(), ds["A_V"].sel(model=model).values.tolist()))
        common = [i for i in base["a_v"] if i in ours]
        diff = np.abs(np.array([ours[i] - base["a_v"][i] for i in common]))
        if diff.size:
            print(f"check (b) vs (a): {len(common)} common sources, |A_V difference| median {np.median(diff):.2g}, "
                  f"max {diff.max():.2g} mag")
    for k in workers:
        if ("c", k) in results:
            m = results["c", k]["truth"]
            print(f"check (c) vs truth ({k} worker{'s' * (k > 1)}): {m['matched']} matched, {m['missed']} missed, "
                  f"{m['spurious']} other detections")
            break


if __name__ == "__main__":
    main()

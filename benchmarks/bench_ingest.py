"""Throughput and memory of ``ingest_mosaic`` against a plain in-process copy.

Measured in one run, so that every ratio is against a baseline taken on the
same (noisy) machine at the same time:

0. A synthetic 3-band mosaic (F277W, F356W, F444W) of ``--size`` x ``--size``
   pixels is written as JWST-pipeline-like FITS files (empty primary, SCI, ERR,
   WHT extensions, big-endian float32, MJy/sr with PIXAR_SR, a few NaN and
   zero-weight pixels). It stays in the page cache for every configuration.
1. ``baseline``: in a fresh process, per band, ``np.asarray`` of the memmapped
   SCI, ERR and WHT arrays (the whole band in memory), the same conversion to
   nJy and no-data mask in numpy, and a plain ``zarr`` write of sci and err
   with the same chunks and compressor. One core, no Dask, no checksums.
2. ``dask Nw``: :func:`surveydust.ingest_mosaic` of the same files into a
   temporary store on a fresh ``LocalCluster`` of 1 and then 2 single-threaded
   worker processes (start-up and a warm-up ingest of a small mosaic excluded,
   reported separately). Includes the SHA-256 checksums of the inputs, whose
   in-process cost is printed on its own line.

Throughput is input FITS bytes read (SCI + ERR + WHT) per second. Peak RSS is
the largest ``psutil`` RSS sampled every 0.1 s during the run (of the baseline
process; of any one worker; ``ru_maxrss`` is no use here: Linux carries it over
from the parent across fork and exec). One plane is ``size^2 x 4`` bytes: the
point of the streaming design is that worker memory stays near a few chunks,
whatever the mosaic size, while the baseline grows with the band.

Run:  .venv/bin/python benchmarks/bench_ingest.py [--size 8000|20000] [--chunk 2048] [--tmp DIR]
(8000: 2.3 GB of FITS, a few minutes on 2 cores; 20000: 14 GB.)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per process, before numpy loads

import argparse
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from astropy.io import fits
from astropy.wcs import WCS

from surveydust.cluster import get_client
from surveydust.provenance import sha256
from surveydust.stores.mosaic import ingest_mosaic, open_mosaic

BANDS = ("F277W", "F356W", "F444W")
WORKERS = (1, 2)
PIXAR_SR = 2.1154e-14
MB = 1e6
SAMPLE_S = 0.1  # RSS sampling period [s]


def make_header() -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.15, -27.79]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    theta = np.deg2rad(-61.57)  # JADES GOODS-S orientation
    w.wcs.pc = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    h = w.to_header()
    h["BUNIT"] = "MJy/sr"
    h["PIXAR_SR"] = PIXAR_SR
    return h


def write_band(path: Path, size: int, seed: int) -> None:
    """SCI/ERR/WHT file of ``size`` x ``size``, streamed in row strips (never a whole plane in memory)."""
    rng = np.random.default_rng(seed)
    strip = 512
    for name in ("SCI", "ERR", "WHT"):
        header = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", size),
                              ("NAXIS2", size), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", name)])
        header.extend(make_header())
        stream = fits.StreamingHDU(str(path), header)  # adds an empty primary first
        for y in range(0, size, strip):
            n = min(strip, size - y)
            err = rng.uniform(0.0015, 0.0025, (n, size)).astype(np.float32)
            if name == "SCI":
                block = (rng.standard_normal((n, size)) * 0.002).astype(np.float32)
                block[:, :3] = np.nan  # a no-data edge
            elif name == "ERR":
                block = err
            else:
                block = (1.0 / err.astype(np.float64) ** 2).astype(np.float32)
                if y == 0:
                    block[:2] = 0.0  # zero weight = no data
            stream.write(block.astype(">f4"))
        stream.close()


def baseline(files: dict[str, Path], out: Path, chunk: int, result: mp.Queue) -> None:
    """Whole band in memory, numpy conversion, plain zarr write (runs in its own process)."""
    import zarr

    from surveydust.stores.base import zarr_compressor

    t0 = time.perf_counter()
    size = fits.getheader(files[BANDS[0]], "SCI")["NAXIS1"]
    root = zarr.open_group(out, mode="w")
    arrays = {name: root.create_array(name, shape=(len(BANDS), size, size), chunks=(1, chunk, chunk),
                                      dtype="float32", compressors=[zarr_compressor()])
              for name in ("sci", "err")}
    for b, band in enumerate(BANDS):
        with fits.open(files[band], memmap=True) as hdul:
            factor = 1e15 * hdul["SCI"].header["PIXAR_SR"]
            sci = np.asarray(hdul["SCI"].data).astype(np.float32) * np.float32(factor)
            err = np.asarray(hdul["ERR"].data).astype(np.float32) * np.float32(factor)
            wht = np.asarray(hdul["WHT"].data)
            bad = ~np.isfinite(sci) | ~(wht > 0) | ~(err > 0)
            sci[bad] = np.nan
            err[bad] = np.nan
            del wht
        arrays["sci"][b] = sci
        arrays["err"][b] = err
        del sci, err
    result.put(time.perf_counter() - t0)


def run_baseline(files: dict[str, Path], out: Path, chunk: int) -> tuple[float, int]:
    """(seconds, peak sampled RSS) of :func:`baseline` in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=baseline, args=(files, out, chunk, queue))
    proc.start()
    child, peak = psutil.Process(proc.pid), 0
    while proc.is_alive() and queue.empty():
        try:
            peak = max(peak, child.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(SAMPLE_S)
    seconds = queue.get()
    proc.join()
    return seconds, peak


def _rss() -> int:
    return psutil.Process().memory_info().rss


def bench_dask(files: dict[str, Path], small: dict[str, Path], out: Path, chunk: int, workers: int
               ) -> tuple[float, float, int]:
    """(startup s, run s, peak sampled RSS of any worker)."""
    t0 = time.perf_counter()
    with get_client("local", workers=workers, threads_per_worker=1) as client:
        client.wait_for_workers(workers)
        ingest_mosaic(out.with_name(f"warm-{workers}.zarr"), small, chunk=chunk, client=client, progress=False)
        startup = time.perf_counter() - t0
        peak: dict[str, int] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for addr, rss in client.run(_rss).items():
                    peak[addr] = max(peak.get(addr, 0), rss)
                done.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t1 = time.perf_counter()
        ingest_mosaic(out, files, chunk=chunk, client=client, progress=False)
        seconds = time.perf_counter() - t1
        done.set()
        sampler.join()
    return startup, seconds, max(peak.values())


def check_equal(a: Path, b: Path, chunk: int) -> bool:
    """Dask store and baseline store hold the same numbers (first chunk row of every band)."""
    import zarr

    ds = open_mosaic(a)
    ref = zarr.open_group(b, mode="r")
    ok = True
    for name in ("sci", "err"):
        x = ds[name][:, :chunk].values
        y = ref[name][:, :chunk]
        ok &= bool(np.allclose(x, y, rtol=1e-6, equal_nan=True))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000, help="mosaic edge [pixels] (default 8000; try 20000)")
    parser.add_argument("--chunk", type=int, default=2048, help="chunk edge [pixels] (default 2048)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the FITS and stores (default: system tmp)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.tmp))
    try:
        files = {band: tmp / f"{band.lower()}_i2d.fits" for band in BANDS}
        small = {band: tmp / f"{band.lower()}_small.fits" for band in BANDS}
        t0 = time.perf_counter()
        for i, band in enumerate(BANDS):
            write_band(files[band], args.size, seed=i)
            write_band(small[band], 256, seed=10 + i)
        in_bytes = sum(p.stat().st_size for p in files.values())
        plane_mb = args.size**2 * 4 / MB
        print(f"{len(BANDS)} bands x {args.size} x {args.size} px, SCI+ERR+WHT float32: {in_bytes / MB:,.0f} MB "
              f"of FITS ({plane_mb:,.0f} MB per plane), written in {time.perf_counter() - t0:.0f} s; "
              f"chunk {args.chunk}; {os.cpu_count()} CPUs")
        with fits.open(files[BANDS[0]]) as hdul:  # sanity: the files are readable FITS
            assert hdul["SCI"].shape == (args.size, args.size)

        base_s, base_rss = run_baseline(files, tmp / "baseline.zarr", args.chunk)
        t0 = time.perf_counter()
        for path in files.values():
            sha256(path)
        sha_s = time.perf_counter() - t0
        rows = [("baseline numpy + zarr", 1, base_s, None, base_rss)]
        for k in WORKERS:
            out = tmp / f"dask-{k}.zarr"
            startup, seconds, peak = bench_dask(files, small, out, args.chunk, k)
            rows.append((f"dask {k} worker{'s' * (k > 1)}", k, seconds, startup, peak))
            equal = check_equal(out, tmp / "baseline.zarr", args.chunk)
            shutil.rmtree(out)
            if not equal:
                print(f"WARNING: dask {k} store differs from the baseline")

        print(f"\n{'configuration':<24}{'cores':>6}{'time s':>8}{'MB/s':>8}{'startup s':>11}"
              f"{'peak RSS MB':>13}")
        for name, cores, seconds, startup, peak in rows:
            up = "-" if startup is None else f"{startup:.1f}"
            print(f"{name:<24}{cores:>6}{seconds:>8.1f}{in_bytes / MB / seconds:>8.0f}{up:>11}"
                  f"{peak / MB:>13,.0f}")
        t1, t2 = rows[1][2], rows[2][2]
        print(f"\nspeed-up 2 workers vs 1:            {t1 / t2:.2f}x")
        print(f"dask 1 worker vs baseline (speed):  {base_s / t1:.2f}x")
        print(f"dask 2 workers vs baseline (speed): {base_s / t2:.2f}x")
        print(f"peak RSS per worker vs baseline:    {rows[1][4] / base_rss:.2f}x (1 worker), "
              f"{rows[2][4] / base_rss:.2f}x (2 workers); one plane is {plane_mb:,.0f} MB")
        print(f"SHA-256 of the inputs (in every dask run, not in the baseline): {sha_s:.1f} s on one core "
              f"({in_bytes / MB / sha_s:.0f} MB/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Throughput of the SED fits (``surveydust.sedfit.fit_sed``): sources per minute on 1 and 2 workers.

A catalogue of ``--sources`` z = 7 galaxies (default 8) is made in memory from
Bagpipes models in the fit's own family (log-normal SFH with tmax 0.3-1.2 Gyr,
fwhm 0.3-1.2 Gyr, log mass formed 8.5-9.5, Z 0.1-0.4 Z_sun, log U -3..-2,
Calzetti A_V 0.05-1.5 mag, seed 0) in the eight NIRCam bands F090W-F444W, with
Gaussian noise of ``--noise`` nJy per band (2 nJy: 5 sigma = 29.0 AB).

For a ``LocalCluster`` of 1 and then of 2 workers (``--workers``; one thread each),
``fit_sed(catalogue, n_live=--n-live, client=client)`` fits every source, one
Dask task each. Not timed: cluster start-up and Bagpipes' import on every
worker (``client.run``, one worker at a time). Printed per cluster size: wall
time, sources/min and its ratio to 1 worker, worker CPU seconds per source
(``time.process_time`` of every worker process, all threads) and cores kept
busy (worker CPU s / wall), the load average before the run, and the median
|A_V_sed - A_V| over the sources as a check that the fits are sane.

On a machine shared with other jobs the wall times (and so the ratio) follow
the other load; CPU seconds per source do not, and wall ~ CPU per source on an
idle core.

Run:  .venv/bin/python benchmarks/bench_sedfit.py [--sources 8] [--n-live 100] [--noise 2] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from surveydust.cluster import get_client
from surveydust.sedfit import filter_curves, fit_sed, import_bagpipes

BANDS = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
WORKERS = (1, 2)
REDSHIFT = 7.0


def make_catalogue(n: int, noise_njy: float, seed: int = 0) -> xr.Dataset:
    """``n`` Bagpipes model galaxies at z = 7 in the catalogue layout (fluxes in nJy)."""
    bagpipes = import_bagpipes()
    rng = np.random.default_rng(seed)
    truth = {"tmax": rng.uniform(0.3, 1.2, n), "fwhm": rng.uniform(0.3, 1.2, n),
             "massformed": rng.uniform(8.5, 9.5, n), "metallicity": 10 ** rng.uniform(-1, np.log10(0.4), n),
             "logU": rng.uniform(-3, -2, n), "A_V": rng.uniform(0.05, 1.5, n)}
    flux = np.zeros((n, len(BANDS)))
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        paths = []
        for band, curve in filter_curves(BANDS).items():
            paths.append(str(Path(tmp) / f"{band}.txt"))
            np.savetxt(paths[-1], curve)
        for i in range(n):
            comps = {"redshift": REDSHIFT,
                     "lognormal": {k: float(truth[k][i]) for k in ("tmax", "fwhm", "massformed", "metallicity")},
                     "dust": {"type": "Calzetti", "Av": float(truth["A_V"][i])},
                     "nebular": {"logU": float(truth["logU"][i])}}
            flux[i] = bagpipes.model_galaxy(comps, filt_list=paths, phot_units="mujy").photometry * 1e3
    flux += rng.normal(0.0, noise_njy, flux.shape)
    ds = xr.Dataset(coords={"source": np.arange(n), "band": np.array(BANDS, dtype=object),
                            "model": np.array(["F277W+F356W+F444W"], dtype=object)})
    ds["flux"] = (("source", "band"), flux)
    ds["flux_err"] = (("source", "band"), np.full_like(flux, noise_njy))
    ds["z"] = ("source", np.full(n, REDSHIFT))
    ds["flag"] = ("source", np.zeros(n, dtype=np.uint16))
    ds["A_V_true"] = ("source", truth["A_V"])
    return ds


def bench(cat: xr.Dataset, workers: int, n_live: int) -> dict[str, float]:
    with get_client("local", workers=workers) as client:
        client.wait_for_workers(workers)
        for address in client.scheduler_info()["workers"]:  # one at a time, not timed
            client.run(import_bagpipes, workers=[address])
        load = os.getloadavg()[0]
        cpu0 = sum(client.run(time.process_time).values())
        t0 = time.perf_counter()
        out = fit_sed(cat, n_live=n_live, client=client, progress=False)
        wall = time.perf_counter() - t0
        cpu = sum(client.run(time.process_time).values()) - cpu0
    n = cat.sizes["source"]
    err = np.abs(out["A_V_sed"].values - cat["A_V_true"].values)
    inside = (out["A_V_sed_lo"].values <= cat["A_V_true"].values) & (cat["A_V_true"].values <= out["A_V_sed_hi"].values)
    return {"workers": workers, "wall": wall, "per_min": n / wall * 60, "cpu": cpu / n, "cores": cpu / wall,
            "load": load, "mae": float(np.nanmedian(err)), "inside": float(inside.mean()),
            "fitted": int(np.isfinite(out["A_V_sed"].values).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=8, help="sources to fit per cluster size (default 8)")
    parser.add_argument("--n-live", type=int, default=100, help="nautilus live points (default 100)")
    parser.add_argument("--workers", type=lambda v: [int(k) for k in v.split(",")], default=list(WORKERS),
                        help="cluster sizes to run, in this order (default 1,2)")
    parser.add_argument("--noise", type=float, default=2.0, help="flux error per band [nJy] (default 2)")
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("surveydust").setLevel(logging.WARNING)

    cat = make_catalogue(args.sources, args.noise)
    print(f"{args.sources} z = {REDSHIFT:g} Bagpipes model galaxies, {len(BANDS)} bands, noise {args.noise:g} nJy; "
          f"n_live {args.n_live}; {os.cpu_count()} CPUs")
    print("timed: fit_sed() after cluster start-up and Bagpipes imported on every worker; cores = worker CPU s / "
          "wall;\n  load = 1-min load average just before the run (other jobs on the machine count too)\n")
    print(f"{'workers':>7}{'wall s':>9}{'sources/min':>13}{'CPU s/source':>14}{'cores':>7}"
          f"{'load':>6}{'fitted':>8}{'med |dA_V|':>12}{'A_V in 16-84%':>15}", flush=True)
    results = {}
    for k in args.workers:  # each row printed as soon as it is measured
        r = results[k] = bench(cat, k, args.n_live)
        print(f"{r['workers']:>7}{r['wall']:>9.1f}{r['per_min']:>13.2f}{r['cpu']:>14.1f}"
              f"{r['cores']:>7.2f}{r['load']:>6.1f}{r['fitted']:>8}{r['mae']:>12.2f}{r['inside']:>15.0%}", flush=True)
    if 1 in results and 2 in results:
        print(f"\nspeed-up 2 workers vs 1: {results[2]['per_min'] / results[1]['per_min']:.2f}x; CPU s per source "
              f"2 vs 1: {results[2]['cpu'] / results[1]['cpu']:.2f}x (> 1: fits slow each other down, e.g. shared "
              "cores)")


if __name__ == "__main__":
    main()

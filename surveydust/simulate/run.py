"""Generate a training store with the built-in simulator, in parallel on Dask.

Sample order is galaxy-major: ``sample = (galaxy * n_views + view) * n_dtm + i_dtm``.
Every galaxy draws from its own random stream ``default_rng([seed, galaxy])``,
so a store is identical for a given seed whatever the number of workers or
the task size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from surveydust.cluster import open_client, run_with_progress
from surveydust.config import SimulationConfig, load_simulation_config
from surveydust.instrument import pixel_noise_njy, psf_kernel
from surveydust.physics import kpc_per_arcsec
from surveydust.quantities import r_v
from surveydust.simulate.imaging import PSFSet, galaxy_photometry, observe
from surveydust.simulate.morphology import draw_view, render_maps
from surveydust.simulate.population import draw_galaxy
from surveydust.simulate.sed_library import load_sed_library
from surveydust.stores.base import check_output_path
from surveydust.stores.training import annotate, write_training_store

#: per-sample variables a simulation task returns, with their dtypes
TASK_OUTPUTS = {"image": np.float32, "A_V": np.float32, "EBV": np.float32, "log_ssfr": np.float32,
                "redshift": np.float32, "log_mstar": np.float32, "log_sfr": np.float32, "snr": np.float32}


def noise_sigma(cfg: SimulationConfig) -> np.ndarray:
    """Per-pixel noise sigma [nJy] of each band at the configured depth."""
    depth = cfg.depth_mag()
    return np.array([pixel_noise_njy(depth[b], cfg.pixel_scale_arcsec) for b in cfg.bands])


def simulate_galaxies(start: int, stop: int, cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """Simulate galaxies ``start .. stop-1`` with all their views and DTM values."""
    lib = load_sed_library()
    kernels = np.stack([psf_kernel(b, cfg.pixel_scale_arcsec, cfg.psf, cfg.psf_dir) for b in cfg.bands])
    psfs = PSFSet(kernels, cfg.stamp_size)
    sigma = noise_sigma(cfg)
    rows: dict[str, list[Any]] = {k: [] for k in TASK_OUTPUTS}
    for g in range(start, stop):
        rng = np.random.default_rng([cfg.seed, g])
        gal = draw_galaxy(rng, cfg, lib)
        phot = galaxy_photometry(gal, cfg, lib)
        pix_kpc = cfg.pixel_scale_arcsec * kpc_per_arcsec(gal.redshift)
        for _ in range(cfg.views_per_galaxy):
            maps = render_maps(gal, draw_view(rng), cfg.stamp_size, pix_kpc, cfg.oversample)
            for dtm in cfg.dtm_values:
                obs = observe(maps, phot, gal, dtm, cfg, psfs, sigma, rng)
                for key, value in (("image", obs.image), ("A_V", obs.a_v), ("EBV", obs.ebv),
                                   ("log_ssfr", gal.log_ssfr), ("redshift", gal.redshift),
                                   ("log_mstar", gal.log_mstar), ("log_sfr", gal.log_sfr),
                                   ("snr", obs.snr)):
                    rows[key].append(value)
    return {k: np.asarray(v, dtype=TASK_OUTPUTS[k]) for k, v in rows.items()}


def _lazy_dataset(cfg: SimulationConfig) -> xr.Dataset:
    """The whole store as a Dataset of dask arrays, one task per galaxy chunk."""
    per_gal = cfg.views_per_galaxy * len(cfg.dtm_values)
    n_band, n_pix = len(cfg.bands), cfg.stamp_size
    parts: dict[str, list[da.Array]] = {k: [] for k in TASK_OUTPUTS}
    token = dask.base.tokenize(cfg.to_json())  # keys unique per configuration
    for g0 in range(0, cfg.n_galaxies, cfg.galaxies_per_task):
        g1 = min(g0 + cfg.galaxies_per_task, cfg.n_galaxies)
        task = dask.delayed(simulate_galaxies, pure=True)(
            g0, g1, cfg, dask_key_name=f"simulate-galaxies-{token}-{g0}")
        n = (g1 - g0) * per_gal
        shapes = {"image": (n, n_band, n_pix, n_pix), "snr": (n, n_band)}
        for key, dtype in TASK_OUTPUTS.items():
            parts[key].append(da.from_delayed(task[key], shape=shapes.get(key, (n,)), dtype=dtype))
    arrays = {k: da.concatenate(v) for k, v in parts.items()}

    sample = np.arange(cfg.n_samples)
    dims = {"image": ("sample", "band", "y", "x"), "snr": ("sample", "band")}
    ds = xr.Dataset({k: (dims.get(k, ("sample",)), v) for k, v in arrays.items()})
    ds["dtm"] = ("sample", np.resize(np.asarray(cfg.dtm_values, np.float32), cfg.n_samples))
    ds["R_V"] = xr.apply_ufunc(r_v, ds["A_V"], ds["EBV"], dask="parallelized",
                               output_dtypes=[np.float32])
    ds["noise_sigma"] = ("band", noise_sigma(cfg).astype(np.float32))
    ds["noise_sigma"].attrs.update(units="nJy", description="per-pixel Gaussian noise sigma")
    ds = ds.assign_coords(
        sample=sample,
        band=list(cfg.bands),
        galaxy_id=("sample", sample // per_gal),
        view=("sample", (sample // len(cfg.dtm_values)) % cfg.views_per_galaxy),
    )
    ds = annotate(ds, cfg.pixel_scale_arcsec)
    ds.attrs.update(generator="surveydust.simulate", seed=cfg.seed,
                    simulation_config=cfg.to_json(), stamp_size=cfg.stamp_size)
    return ds


def simulate(
    out: Path | str,
    config: SimulationConfig | Path | str | None = None,
    *,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Simulate a training store of mock z = 6-8 galaxies and write it to ``out``.

    Parameters
    ----------
    out : path of the Zarr store to write.
    config : a :class:`SimulationConfig`, a YAML file, or None for the defaults;
        ``overrides`` (e.g. ``n_galaxies=64, seed=1``) are applied on top.
    client : an existing ``distributed.Client``; otherwise one is made from
        ``cluster`` (profile name) and ``workers`` and closed afterwards.
    overwrite : replace an existing store (only once the new one is complete).
    """
    cfg = load_simulation_config(config, **overrides)
    out = check_output_path(out, overwrite, "training")
    ds = _lazy_dataset(cfg)
    chunk = cfg.galaxies_per_task * cfg.views_per_galaxy * len(cfg.dtm_values)
    with open_client(client, profile=cluster, workers=workers) as c:
        compute: Callable[[Any], None] = lambda delayed: run_with_progress(c, delayed, progress)
        return write_training_store(ds, out, overwrite=overwrite, chunk_samples=chunk, compute=compute)

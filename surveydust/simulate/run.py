"""Write a training store of simulated galaxies, in parallel on Dask.

Each galaxy is drawn and rendered by :mod:`surveydust.simulate.render` (the
simulator's one rendering chain); this module runs galaxies as Dask tasks and
writes the store.

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

from surveydust.cluster import Compute, run_with_progress
from surveydust.config import SimulationConfig, load_simulation_config
from surveydust.quantities import r_v
from surveydust.simulate.morphology import draw_view
from surveydust.simulate.priors import RECORDED
from surveydust.simulate.render import draw_with_photometry, galaxy_instrument, noise_sigma, render_galaxy
from surveydust.simulate.sed_library import load_sed_library
from surveydust.stores.base import check_output_path
from surveydust.stores.training import annotate, write_training_store

#: per-sample numbers a simulation task returns besides ``image`` and ``snr``: labels and galaxy
#: properties, then the galaxy's draw of the nuisance priors
SCALARS = ("A_V", "EBV", "log_ssfr", "redshift", "log_mstar", "log_sfr", "metallicity", "sersic_n", *RECORDED)
#: per-sample variables a simulation task returns, with their dtypes
TASK_OUTPUTS = {"image": np.float32, "snr": np.float32, **{k: np.float32 for k in SCALARS}}


def simulate_galaxies(start: int, stop: int, cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """Simulate galaxies ``start .. stop-1`` with all their views and dust-to-metal ratios.

    Parameters
    ----------
    start, stop : int
        Galaxy indices; galaxy ``g`` draws from ``default_rng([cfg.seed, g])``.
    cfg : SimulationConfig
        The simulation config (views per galaxy, ``dtm_values``, bands, stamps, depth).

    Returns
    -------
    dict of numpy.ndarray
        :data:`TASK_OUTPUTS` per sample in galaxy-major order: ``image`` (sample, band, y, x)
        [nJy per pixel], ``snr`` (sample, band), and the :data:`SCALARS` (labels [mag,
        log10 yr^-1], galaxy properties and its nuisance draws).
    """
    lib = load_sed_library()
    rows: dict[str, list[Any]] = {k: [] for k in TASK_OUTPUTS}
    for g in range(start, stop):
        rng = np.random.default_rng([cfg.seed, g])
        gal, phot = draw_with_photometry(rng, cfg, lib)
        psfs, sigma = galaxy_instrument(gal, cfg)
        per_galaxy = {"log_ssfr": gal.log_ssfr, "redshift": gal.redshift, "log_mstar": gal.log_mstar,
                      "log_sfr": gal.log_sfr, "metallicity": gal.metallicity, "sersic_n": gal.sersic_n,
                      **gal.nuisance.as_record()}
        for _ in range(cfg.views_per_galaxy):
            for obs in render_galaxy(gal, phot, draw_view(rng), cfg.dtm_values, cfg, psfs, sigma, rng):
                for key, value in (("image", obs.image), ("A_V", obs.a_v), ("EBV", obs.ebv), ("snr", obs.snr),
                                   *per_galaxy.items()):
                    rows[key].append(value)
    return {k: np.asarray(v, dtype=TASK_OUTPUTS[k]) for k, v in rows.items()}


def _packed(galaxies: np.ndarray, cfg: SimulationConfig) -> np.ndarray:
    """One task: simulate the ``galaxies`` (consecutive indices) and pack each sample's image,
    SNR and scalars into one row (one Dask array for the whole store keeps the graph small)."""
    out = simulate_galaxies(int(galaxies[0]), int(galaxies[-1]) + 1, cfg)
    n = len(out["A_V"])
    return np.column_stack([out["image"].reshape(n, -1), out["snr"], *(out[k][:, None] for k in SCALARS)])


def _lazy_dataset(cfg: SimulationConfig) -> xr.Dataset:
    """The whole store as a Dataset of dask arrays, one task per galaxy chunk."""
    per_gal = cfg.views_per_galaxy * len(cfg.dtm_values)
    n_band, n_pix = len(cfg.bands), cfg.stamp_size
    n_image = n_band * n_pix * n_pix
    token = dask.base.tokenize(cfg.to_json())  # keys unique per configuration
    galaxies = da.arange(cfg.n_galaxies, chunks=cfg.galaxies_per_task)
    packed = galaxies.map_blocks(
        _packed, cfg, dtype=np.float32, new_axis=1, name=f"simulate-galaxies-{token}",
        chunks=(tuple(c * per_gal for c in galaxies.chunks[0]), (n_image + n_band + len(SCALARS),)))
    ds = xr.Dataset({
        "image": (("sample", "band", "y", "x"), packed[:, :n_image].reshape(cfg.n_samples, n_band, n_pix, n_pix)),
        "snr": (("sample", "band"), packed[:, n_image:n_image + n_band]),
        **{k: ("sample", packed[:, n_image + n_band + i]) for i, k in enumerate(SCALARS)},
    })
    sample = np.arange(cfg.n_samples)
    ds["dtm"] = ("sample", np.resize(np.asarray(cfg.dtm_values, np.float32), cfg.n_samples))
    ds["R_V"] = xr.apply_ufunc(r_v, ds["A_V"], ds["EBV"], dask="parallelized",
                               output_dtypes=[np.float32])
    ds["noise_sigma"] = ("band", noise_sigma(cfg).astype(np.float32))
    ds["noise_sigma"].attrs.update(units="nJy", description="per-pixel Gaussian noise sigma at the configured "
                                   "depth (each galaxy's is scaled by its depth_offset_mag)")
    for name, text in RECORDED.items():
        ds[name].attrs["description"] = f"nuisance prior draw: {text}"
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
    with Compute(client, cluster, workers, progress).open() as c:
        compute: Callable[[Any], None] = lambda delayed: run_with_progress(c, delayed, progress)
        return write_training_store(ds, out, overwrite=overwrite, chunk_samples=chunk, compute=compute)

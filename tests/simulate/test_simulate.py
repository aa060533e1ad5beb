"""The built-in simulator: store layout, physical sanity of the labels, determinism,
and safe writing. Physics checks run the simulator in-process on small samples;
store checks go through a real Dask LocalCluster and real Zarr stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from surveydust.cluster import get_client
from surveydust.config import load_simulation_config, simulation_config_from_json
from surveydust.instrument import KNOWN_BANDS, band_weights
from surveydust.quantities import r_v
from surveydust.simulate import simulate
from surveydust.simulate.priors import FIXED_PRIORS
from surveydust.simulate.run import simulate_galaxies
from surveydust.simulate.sed_library import load_sed_library
from surveydust.stores.training import LABELS, open_training_store

SMALL = {"n_galaxies": 5, "galaxies_per_task": 2}
VERY_DEEP = {b: 40.0 for b in KNOWN_BANDS}  # practically noiseless


@pytest.fixture(scope="module")
def store(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "sims.zarr"
    return simulate(out, client=client, progress=False, **SMALL)


@pytest.fixture(scope="module")
def physics_sample() -> dict[str, np.ndarray]:
    """Twelve noiseless galaxies x 4 views x 11 DTM values, simulated in-process with the nuisance
    physics fixed (the radiative-transfer mechanics are tested here; the priors in test_priors)."""
    cfg = load_simulation_config(n_galaxies=12, depth=VERY_DEEP, priors=FIXED_PRIORS)
    out = simulate_galaxies(0, cfg.n_galaxies, cfg)
    n_dtm = len(cfg.dtm_values)
    shape = (cfg.n_galaxies * cfg.views_per_galaxy, n_dtm)
    out = {k: v.reshape(shape + v.shape[1:]) for k, v in out.items()}
    out["dtm"] = np.broadcast_to(np.asarray(cfg.dtm_values), shape)
    out["bands"] = np.array(cfg.bands)
    return out


def test_store_opens_with_xarray(store: Path) -> None:
    ds = xr.open_zarr(store)
    assert ds["image"].dims == ("sample", "band", "y", "x")
    assert ds["image"].dtype == np.float32 and ds["image"].attrs["units"] == "nJy"
    assert ds.sizes == {"sample": 5 * 4 * 11, "band": 6, "y": 32, "x": 32}
    assert [str(b) for b in ds["band"].values] == ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
    for name in (*LABELS, "snr"):
        assert name in ds.data_vars
    assert ds["snr"].dims == ("sample", "band")
    assert {"galaxy_id", "view", "band"} <= set(ds.coords)
    assert np.bincount(ds["galaxy_id"].values).tolist() == [44] * 5
    assert sorted(set(ds["view"].values.tolist())) == [0, 1, 2, 3]
    assert ds["A_V"].attrs["units"] == "mag" and ds["log_ssfr"].attrs["units"] == "log10(yr^-1)"
    assert ds.attrs["complete"] and ds.attrs["store_kind"] == "training"
    assert ds["image"].chunks[0][0] == 2 * 44  # one Zarr chunk per Dask task


def test_config_in_attrs_regenerates(store: Path) -> None:
    ds = open_training_store(store)
    cfg = simulation_config_from_json(ds.attrs["simulation_config"])
    assert cfg.n_galaxies == 5 and ds.attrs["seed"] == cfg.seed == 0
    again = simulate_galaxies(3, 4, cfg)  # galaxy 3 alone, in this process
    stored = ds.isel(sample=ds["galaxy_id"].values == 3)
    np.testing.assert_array_equal(stored["image"].values, again["image"])
    np.testing.assert_array_equal(stored["A_V"].values, again["A_V"])


def test_same_seed_same_store_whatever_the_workers(store: Path, tmp_path: Path) -> None:
    with get_client("local", workers=1) as one:
        other = simulate(tmp_path / "one.zarr", client=one, progress=False,
                         n_galaxies=5, galaxies_per_task=3)
    a, b = open_training_store(store), open_training_store(other)
    for name in ("image", "A_V", "EBV", "log_ssfr", "snr"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    different = simulate_galaxies(0, 1, load_simulation_config(seed=1))
    assert not np.array_equal(different["image"], a["image"].values[:44])


def test_labels_physically_sane(physics_sample) -> None:
    a_v, ebv = physics_sample["A_V"], physics_sample["EBV"]
    assert (a_v >= 0).all() and (ebv >= 0).all()
    assert np.abs(a_v[:, 0]).max() < 1e-5 and np.abs(ebv[:, 0]).max() < 1e-5  # DTM = 0: no dust
    assert (np.diff(a_v, axis=1) > 0).all()  # A_V rises with DTM for every galaxy and view
    assert np.isfinite(physics_sample["log_ssfr"]).all()
    assert (-10.5 < physics_sample["log_ssfr"]).all() and (physics_sample["log_ssfr"] < -6.5).all()
    assert a_v[:, -1].max() > 1.5  # dusty tail as in the paper's training set (A_V > 2)


def test_redder_with_more_dust(physics_sample) -> None:
    bands = list(physics_sample["bands"])
    flux = physics_sample["image"].sum(axis=(-2, -1))          # (galaxy-view, dtm, band)
    colour = -2.5 * np.log10(flux[..., bands.index("F277W")] / flux[..., bands.index("F444W")])
    a_v = physics_sample["A_V"]
    dusty = a_v[:, -1] > 0.3
    assert dusty.sum() >= 10
    assert (colour[dusty, -1] > colour[dusty, 0] + 0.05).all()
    # across DTM values for one galaxy and view, F277W - F444W follows A_V (it saturates, and
    # turns slightly bluer, once optically thick regions black out: the grey-attenuation regime)
    for row in np.flatnonzero(dusty):
        assert np.corrcoef(a_v[row], colour[row])[0, 1] > 0.8


def test_effective_r_v_depends_on_geometry(physics_sample) -> None:
    rv = r_v(physics_sample["A_V"], physics_sample["EBV"])
    dtm = physics_sample["dtm"]
    low = np.nanmedian(rv[np.isclose(dtm, 0.1)])
    high = np.nanmedian(rv[dtm >= 0.8])
    assert abs(low - 4.05) < 0.6, low  # thin dust: close to the local Calzetti law
    assert high > 4.5 and high > low + 0.5, high  # thick, clumpy dust: greyer, as in the paper


def test_snr_tracks_depth() -> None:
    shallow = simulate_galaxies(0, 2, load_simulation_config(n_galaxies=2, depth="ceers"))
    deep = simulate_galaxies(0, 2, load_simulation_config(n_galaxies=2, depth="jades"))
    ratio = np.median(deep["snr"] / shallow["snr"], axis=0)
    assert (ratio > 1.5).all()


def test_nebular_lines_brighten_f356w_at_z7() -> None:
    """[OIII]+Hbeta of a 0-10 Myr population add > 0.1 mag to F356W at z = 7."""
    lib = load_sed_library()
    wave = lib.wave_aa.astype(float)
    spec = lib.lum[0, 3].astype(float)
    window = (wave > 4500) & (wave < 5600)
    line_free = (wave > 5100) & (wave < 5600)
    continuum = spec.copy()
    continuum[window] = np.median(spec[line_free])
    w = band_weights(wave, "F356W", 7.0)
    assert 2.5 * np.log10((w * spec).sum() / (w * continuum).sum()) > 0.1


def test_existing_store_refused_then_replaced(store: Path, client) -> None:
    with pytest.raises(FileExistsError, match="--overwrite"):
        simulate(store, client=client, progress=False, **SMALL)


def test_failed_run_keeps_old_store(tmp_path: Path, client) -> None:
    """A run that fails half-way leaves neither a partial store nor a damaged old one."""
    out = simulate(tmp_path / "s.zarr", client=client, progress=False, n_galaxies=2, views_per_galaxy=1)
    old_id = open_training_store(out).attrs["store_id"]
    psf_dir = tmp_path / "psf"
    psf_dir.mkdir()
    for band in KNOWN_BANDS:  # PSF files without a pixel scale: tasks fail on the workers
        fits.PrimaryHDU(np.ones((41, 41))).writeto(psf_dir / f"{band.lower()}_psf.fits")
    with pytest.raises(ValueError, match="PIXELSCL"):
        simulate(out, client=client, progress=False, overwrite=True, n_galaxies=2,
                 psf="fits", psf_dir=psf_dir)
    assert open_training_store(out).attrs["store_id"] == old_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psf", "s.zarr"]  # no partial leftovers


def test_incomplete_store_is_refused(store: Path, tmp_path: Path) -> None:
    import shutil

    import zarr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    zarr.open_group(copy, mode="r+").attrs["complete"] = False
    zarr.consolidate_metadata(copy)
    with pytest.raises(ValueError, match="incomplete"):
        open_training_store(copy)
    with pytest.raises(FileNotFoundError):
        open_training_store(tmp_path / "nothing.zarr")


@pytest.mark.shared
def test_real_webbpsf_models(shared_data, tmp_path: Path, client) -> None:
    out = simulate(tmp_path / "psf.zarr", client=client, progress=False, n_galaxies=1,
                   psf="fits", psf_dir=shared_data / "nircam_psf")
    ds = open_training_store(out)
    assert np.isfinite(ds["image"].values).all()
    assert json.loads(ds.attrs["simulation_config"])["psf"] == "fits"

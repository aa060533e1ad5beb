"""Shared fixtures: one real Dask LocalCluster for the test session, the small simulated stores
and tiny bundles several test modules use, the console script, and paths to data. Test modules
take these as fixtures and never import one another."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from surveydust.cluster import get_client

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def client():
    """A two-worker process-based LocalCluster shared by the tests (closed at the end)."""
    with get_client("local", workers=2) as c:
        yield c


@pytest.fixture
def shared_data() -> Path:
    """The read-only reference data next to the checkout; skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (only in the project workspace)")
    return SHARED_DATA


def kill_worker_running(client, key_prefix: str, delay_s: float = 1.0, timeout_s: float = 120.0) -> Future:
    """From a background thread: kill (``os._exit``) the first worker seen running a task
    whose key starts with ``key_prefix``. The future's result says whether one was killed."""

    def watch() -> bool:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for worker, keys in client.processing().items():
                if any(str(k).startswith(key_prefix) for k in keys):
                    time.sleep(delay_s)
                    with contextlib.suppress(Exception):
                        client.run(os._exit, 1, workers=[worker], wait=False)
                    return True
            time.sleep(0.1)
        return False

    return ThreadPoolExecutor(1).submit(watch)


@pytest.fixture(scope="session")
def kill_worker():
    """:func:`kill_worker_running`, for the tests that kill a worker mid-task."""
    return kill_worker_running


def run_console_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed ``surveydust`` console script with ``args``, in a subprocess (as a user runs it)."""
    exe = Path(sys.executable).with_name("surveydust")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


@pytest.fixture(scope="session")
def console_script():
    """:func:`run_console_script`: ``console_script("train", "--store", ...)`` gives the finished process."""
    return run_console_script


# ---------------------------------------------------------------- small simulated training stores

#: bands of the tiny training store (the training default is the six wide bands)
TRAINING_BANDS = ["F277W", "F356W", "F444W"]
#: galaxies per simulation task of the tiny training store: 2 x 11 = 22 samples per Zarr chunk
TRAINING_CHUNK_GALAXIES = 2


@pytest.fixture(scope="session")
def make_training_store(client, tmp_path_factory):
    """A function simulating a new tiny training store: 14 galaxies x 1 view x 11 dust-to-metal
    ratios in the three long-wavelength bands, in 7 Zarr chunks of 22 samples. Each call gives
    the same galaxies in a store of its own (its own ``store_id``)."""
    from surveydust.simulate import simulate

    def make() -> Path:
        return simulate(tmp_path_factory.mktemp("train") / "s.zarr", client=client, progress=False, n_galaxies=14,
                        views_per_galaxy=1, bands=TRAINING_BANDS, galaxies_per_task=TRAINING_CHUNK_GALAXIES)

    return make


@pytest.fixture(scope="session")
def training_store(make_training_store) -> Path:
    """The session's tiny training store (see :func:`make_training_store`); training, ensemble and
    tuning tests read it, none writes to it."""
    return make_training_store()


@pytest.fixture(scope="session")
def tiny_training() -> dict:
    """``train`` keywords of a tiny, fast network on :func:`training_store` (two epochs; several
    chunks per augmentation task, so batches stream)."""
    return {"snr_min": 0.0, "max_epochs": 2, "batch_size": 8, "bands": TRAINING_BANDS, "calibration_fraction": 0.3,
            "model": {"conv_filters": [4, 8], "dense_units": [8]},
            "augment": {"samples_per_task": 128}}


@pytest.fixture(scope="session")
def one_band_store(client, tmp_path_factory) -> Path:
    """12 galaxies x 1 view x 11 dust-to-metal ratios in F277W only (read, never written to)."""
    from surveydust.simulate import simulate

    return simulate(tmp_path_factory.mktemp("one_band") / "s.zarr", client=client, progress=False, n_galaxies=12,
                    views_per_galaxy=1, bands=["F277W"])


def check_bundle_predictions(bundle: Path, store: Path) -> None:
    """The bundle's predictions on its test galaxies of ``store`` (the first 30 samples when it held
    none out), with and without redshifts: dust never negative, percentiles finite and ordered."""
    from surveydust.bundle import load_model
    from surveydust.stores.training import open_training_store

    p = load_model(bundle)
    ds = open_training_store(store)
    test = np.flatnonzero(np.isin(ds["galaxy_id"].values, p.meta["split"]["test_galaxies"])) \
        if p.meta["split"]["test_galaxies"] else np.arange(30)
    images = ds["image"].sel(band=list(p.bands)).values[test]
    for z in (ds["redshift"].values[test], None):
        pred = p.predict(images, z)
        for t in ("A_V", "EBV"):
            assert (pred[t].values >= 0).all() and (pred[f"{t}_p025"].values >= 0).all(), t
        for t in p.targets:
            cols = np.column_stack([pred[f"{t}_p025"], pred[f"{t}_p16"], pred[t], pred[f"{t}_p84"],
                                    pred[f"{t}_p975"]])
            assert np.isfinite(cols).all(), t
            assert (np.diff(cols, axis=1) >= 0).all(), t  # p025 <= p16 <= median <= p84 <= p975


@pytest.fixture(scope="session", name="check_bundle_predictions")
def check_bundle_predictions_fixture():
    """:func:`check_bundle_predictions` (asserts; returns nothing)."""
    return check_bundle_predictions


# ---------------------------------------------------------------- stamps and a second Keras backend


def stamps(n: int = 50, bands: int = 3) -> np.ndarray:
    """``n`` noisy 32 x 32 px stamps of ``bands`` bands with a bright central source (seeded)."""
    rng = np.random.default_rng(1)
    img = rng.normal(0, 0.5, size=(n, bands, 32, 32)).astype(np.float32)
    img[:, :, 14:18, 14:18] += rng.uniform(5, 50, size=(n, bands, 1, 1))
    return img


@pytest.fixture(scope="session", name="stamps")
def stamps_fixture():
    """:func:`stamps`: ``stamps(n, bands)`` gives the same images every call."""
    return stamps


#: prediction columns compared between Keras backends
BACKEND_VARIABLES = ("A_V", "EBV", "log_ssfr", "A_V_err", "EBV_p975")


def backend_predictions(bundle: Path | None, backend: str, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of ``bundle`` (None: the shipped default) on :func:`stamps` at z = 7: here, and in
    a fresh process on Keras ``backend``; each is the stacked :data:`BACKEND_VARIABLES`."""
    from surveydust.bundle import load_model

    predictor = load_model(bundle)
    img = stamps(bands=len(predictor.bands))
    expected = predictor.predict(img, 7.0)
    here = np.stack([expected[v].values for v in BACKEND_VARIABLES])
    np.save(tmp_path / "img.npy", img)
    code = (f"import numpy as np, keras; from surveydust.bundle import load_model; "
            f"assert keras.backend.backend() == {backend!r}; "
            f"ds = load_model({str(bundle) if bundle else None!r}).predict(np.load({str(tmp_path / 'img.npy')!r}), "
            f"7.0); np.save({str(tmp_path / 'out.npy')!r}, np.stack([ds[v].values for v in {BACKEND_VARIABLES!r}]))")
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return here, np.load(tmp_path / "out.npy")


@pytest.fixture(scope="session", name="backend_predictions")
def backend_predictions_fixture():
    """:func:`backend_predictions`: ``(here, on_backend) = backend_predictions(bundle, "jax", tmp_path)``."""
    return backend_predictions


#: bands of the evaluation tests' store: the UV bands give Meurer's A_V too
EVALUATION_STORE_BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]


@pytest.fixture(scope="session")
def make_bundle(client):
    """A function fitting a tiny network for ``epochs`` by :func:`surveydust.train.fit_bundle` on a
    Dask worker (as ``train`` does, without augmentation) on a store's training galaxies; it returns
    the bundle's path. ``store_id`` and ``store_path`` replace the training store it records."""
    from surveydust.config import load_training_config
    from surveydust.train import Part, fit_bundle, prepare_training

    def make(store: Path, path: Path, bands: tuple[str, ...], *, use_redshift: bool, epochs: int = 2,
             store_id: str | None = None, store_path: Path | None = None) -> Path:
        cfg = load_training_config(bands=list(bands), snr_min=0.0, test_fraction=0.2, validation_fraction=0.25,
                                   calibration_fraction=0.375, max_epochs=epochs, batch_size=16,
                                   use_redshift=use_redshift, model={"conv_filters": [8, 16], "dense_units": [16]})
        split, meta = prepare_training(store, cfg)
        if store_id is not None:
            meta["training_store"]["store_id"] = store_id
        if store_path is not None:
            meta["training_store"]["path"] = str(store_path)
        parts = {name: Part(str(store), getattr(split, name)) for name in ("train", "validation", "calibration")}
        return Path(client.submit(fit_bundle, parts, cfg, str(path), meta, pure=False).result())

    return make


@pytest.fixture(scope="session")
def evaluation_world(client, make_bundle, tmp_path_factory) -> dict:
    """A 10-galaxy six-band store, a 1-band bundle and a 3-band bundle that takes redshifts,
    and their evaluation (``tmp``, ``store``, ``bundles``, ``result``; files in ``tmp / "out"``)."""
    from surveydust.evaluation import evaluate
    from surveydust.simulate import simulate

    tmp = tmp_path_factory.mktemp("evaluate")
    store = simulate(tmp / "s.zarr", client=client, progress=False, n_galaxies=10, views_per_galaxy=1,
                     bands=EVALUATION_STORE_BANDS)
    bundles = [make_bundle(store, tmp / "b1", ("F277W",), use_redshift=False),
               make_bundle(store, tmp / "b3", ("F277W", "F356W", "F444W"), use_redshift=True)]
    result = evaluate(bundles, store, tmp / "out", block_samples=8)  # several blocks per model
    return {"tmp": tmp, "store": store, "bundles": bundles, "result": result}


@pytest.fixture(scope="session")
def held_out_samples():
    """A function giving ``(store indices, Predictor)`` of a bundle's test galaxies in a store,
    computed independently of :mod:`surveydust.evaluation`."""
    import numpy as np

    from surveydust.bundle import load_model
    from surveydust.config import load_training_config
    from surveydust.preprocess import select_samples
    from surveydust.stores.training import open_training_store

    def held_out(store: Path, bundle: Path) -> tuple:
        p = load_model(bundle)
        ds = open_training_store(store)
        selected = select_samples(ds, load_training_config(**p.meta["training_config"]))
        return selected[np.isin(ds["galaxy_id"].values[selected], p.meta["split"]["test_galaxies"])], p

    return held_out

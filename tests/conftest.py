"""Shared fixtures: one real Dask LocalCluster for the test session, paths to data."""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

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

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

"""Shared fixtures: one real Dask LocalCluster for the test session, paths to data."""

from __future__ import annotations

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

"""Provenance helpers: the package version and file checksums recorded in stores and bundles."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    VERSION = version("surveydust")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0.0.0+unknown"


def sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""What every surveydust Zarr store shares: the codec, the output-path rule, the atomic
writer and the opener that refuses foreign or incomplete stores.

A store is written to a hidden temporary sibling directory and moved into
place only when complete (attrs ``complete = True``, ``store_kind``,
``store_id``, ``surveydust_version``), so an interrupted write never leaves a
store that looks finished, and an existing store is replaced only after its
successor is whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from surveydust.provenance import VERSION

logger = logging.getLogger(__name__)


def zarr_compressor() -> BloscCodec:
    """The Blosc codec of surveydust's Zarr stores (lossless)."""
    # lz4 writes ~5x faster than zstd here and noisy float32 compresses ~1.15x either way
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def existing_kind(path: Path) -> str | None:
    """What surveydust output lies at ``path``: a store kind (``training``, ``mosaic``,
    ``catalogue``), ``bundle``, or None (anything else, or nothing readable)."""
    import json

    if (path / "bundle.json").is_file():
        return "bundle"
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs.get("store_kind") if isinstance(attrs, dict) else None


def check_output_path(path: Path | str, overwrite: bool, kind: str | None = None) -> Path:
    """Refuse an existing output unless ``overwrite``; create missing parent folders.

    With ``overwrite`` an existing ``path`` is replaced only when it is a
    surveydust output of the same ``kind`` (a store kind or ``bundle``):
    anything else there (another kind of store, a folder of your files) is
    refused, so ``--overwrite`` never deletes what surveydust did not write.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if path.exists() and kind is not None and existing_kind(path) != kind:
        found = existing_kind(path)
        what = f"a surveydust {found} {'bundle' if found == 'bundle' else 'store'}" if found else \
            "not a surveydust output"
        raise FileExistsError(f"{path} exists and is {what}, not a {kind} "
                              f"{'bundle' if kind == 'bundle' else 'store'}: refusing to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output folder {path.parent}: {exc.strerror}") from None
    return path


def write_store_atomically(
    ds: xr.Dataset,
    path: Path,
    *,
    store_kind: str,
    encoding: dict,
    compute: Callable[[object], Mapping | None] | None = None,
) -> Path:
    """Write ``ds`` as a surveydust Zarr store of kind ``store_kind`` at ``path``, atomically.

    Sets the attrs ``store_kind``, ``store_id``, ``surveydust_version``,
    ``chunk_counts`` (chunk files written per array, so a lost one is noticed) and
    ``complete`` (False while writing). The store is written to a hidden
    temporary sibling, marked complete and only then moved into place (an old
    store at ``path`` is replaced after that). ``compute`` receives the delayed
    write (without it, dask's current scheduler computes it); a mapping it
    returns is added to the attrs together with ``complete = True`` (e.g.
    checksums computed alongside the write).
    """
    ds = ds.assign_attrs(
        store_kind=store_kind,
        store_id=uuid.uuid4().hex,
        surveydust_version=VERSION,
        complete=False,
    )
    remove_stale_partials(path)
    tmp = path.with_name(f".{path.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with _quiet_consolidation():
            delayed = ds.to_zarr(tmp, mode="w", encoding=encoding, compute=False, consolidated=True)
        extra = delayed.compute() if compute is None else compute(delayed)
        attrs = zarr.open_group(tmp, mode="r+").attrs
        attrs.update({**(extra if isinstance(extra, Mapping) else {}), "chunk_counts": chunk_counts(tmp),
                      "complete": True})
        with _quiet_consolidation():
            zarr.consolidate_metadata(tmp)
        replace_atomically(tmp, path)
    except BaseException:
        _remove_late_writes(tmp)
        raise
    return path


def _remove_late_writes(path: Path, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Remove the temporary store ``path`` of a failed write, and again while a task that was
    already running when its computation failed still writes a chunk into it."""
    deadline = time.monotonic() + timeout_s
    shutil.rmtree(path, ignore_errors=True)
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < min(quiet_until, deadline):
        time.sleep(0.1)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            quiet_until = time.monotonic() + quiet_s


def remove_stale_partials(path: Path) -> None:
    """Delete the temporary siblings of ``path`` (``.<name>.partial-<host>-<pid>-<id>``) whose
    writer was killed (SIGKILL, a node lost): its process on this host is gone."""
    from surveydust.runs import may_be_alive

    for partial in path.parent.glob(f".{path.name}.partial-*"):
        host, pid, _ = (partial.name.split(".partial-", 1)[1].rsplit("-", 2) + ["", ""])[:3]
        if pid.isdigit() and not may_be_alive(int(pid), host):
            shutil.rmtree(partial, ignore_errors=True)
            logger.info("removed %s, left by a killed run (pid %s)", partial.name, pid)


@contextlib.contextmanager
def _quiet_consolidation() -> Iterator[None]:
    """Consolidated metadata is not yet in the Zarr 3 spec, but xarray and zarr-python
    read it; silence zarr's reminder about that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def replace_atomically(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is removed only after the move."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def open_complete_store(path: Path | str, store_kind: str, what: str, **open_kwargs: Any) -> xr.Dataset:
    """Open a surveydust Zarr store of ``store_kind`` lazily; refuse missing, foreign or
    incomplete ones with a one-line error (``what`` names the store in messages)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # stores not consolidated are refused below anyway
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            ds = xr.open_zarr(path, **open_kwargs)
    except Exception as exc:  # zarr raises several types for non-stores
        raise ValueError(f"{path} is not a readable Zarr store ({type(exc).__name__})") from None
    if ds.attrs.get("store_kind") != store_kind:
        raise ValueError(f"{path} is not a surveydust {what} (store_kind={ds.attrs.get('store_kind')!r})")
    if not ds.attrs.get("complete", False):
        raise ValueError(f"{what} {path} is incomplete (an interrupted write?)")
    found = chunk_counts(path)
    for name, n in (ds.attrs.get("chunk_counts") or {}).items():
        if found.get(name, 0) < n:
            raise ValueError(f"{what} {path} is damaged: array {name!r} has {found.get(name, 0)} of its {n} chunk "
                             "files (deleted or lost); write it again")
    return ds


def chunk_counts(path: Path | str) -> dict[str, int]:
    """Chunk files per array of the Zarr v3 store at ``path`` (``<array>/c/...``; chunks that
    are all fill value are not written, so this is what was written, not the grid size)."""
    counts = {}
    for meta in Path(path).glob("*/zarr.json"):
        c = meta.parent / "c"
        counts[meta.parent.name] = sum(len(files) for _, _, files in os.walk(c)) if c.is_dir() else 0
    return counts


__all__ = ["check_output_path", "chunk_counts", "existing_kind", "open_complete_store", "replace_atomically",
           "write_store_atomically", "zarr_compressor"]

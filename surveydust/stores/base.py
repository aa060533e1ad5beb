"""The rules every surveydust output follows: where it may be written, and written whole.

The codec, the output-path rule, the atomic writers and the opener that
refuses foreign or incomplete stores.

A store is written to a hidden temporary sibling directory and moved into
place only when complete (attrs ``complete = True``, ``store_kind``,
``store_id``, ``surveydust_version``), so an interrupted write never leaves a
store that looks finished, and an existing store is replaced only after its
successor is whole. Table and figure files (exports, ``evaluate``,
``compare``, the demo) carry a mark of their kind and are renamed into place
whole. :func:`check_output_path` is the one rule every writer applies before
work starts: it replaces only a surveydust output of the same kind, with
``overwrite``, and never writes over or into a run's inputs or into another
store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from surveydust.errors import InputError
from surveydust.provenance import VERSION, sha256

logger = logging.getLogger(__name__)


def zarr_compressor() -> BloscCodec:
    """The Blosc codec of surveydust's Zarr stores (lossless)."""
    # lz4 writes ~5x faster than zstd here and noisy float32 compresses ~1.15x either way
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def existing_kind(path: Path | str) -> str | None:
    """What surveydust output lies at ``path``: a store kind (``training``, ``mosaic``,
    ``catalogue``) or ``bundle`` for a folder, the kind marked in a file surveydust wrote
    (:func:`write_output_table`, :func:`write_output_figure`), or None (anything else,
    or nothing readable)."""
    import json

    path = Path(path)
    if path.is_file():
        return _file_kind(path)
    if (path / "bundle.json").is_file():
        return "bundle"
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs.get("store_kind") if isinstance(attrs, dict) else None


def check_output_path(path: Path | str, overwrite: bool, kind: str | None = None, *,
                      inputs: Iterable[Path | str | None] = ()) -> Path:
    """The output-path rule of every surveydust writer; returns the path to write.

    Checked before any work starts, each failure one line:

    * a symbolic link is resolved and the rule applies to its target (which is
      then replaced, the link kept); a link to nothing is refused;
    * an existing ``path`` is refused unless ``overwrite``, and even then
      unless it is a surveydust output of the same ``kind`` (a store kind,
      ``bundle``, or the kind marked in a table or figure file) that holds no
      other surveydust output and none of the ``inputs``: ``--overwrite``
      never deletes what surveydust did not write;
    * ``path`` must not be one of the run's ``inputs`` (None entries are
      skipped) nor lie inside one, nor inside any surveydust store or bundle.

    Missing parent folders are created.
    """
    path = resolve_output_link(path)
    real_inputs = _real_paths(inputs)
    if path.exists():
        _check_replaceable(path, overwrite, kind, real_inputs)
    _check_location(path, real_inputs)
    _make_folder(path.parent)
    return path


def check_output_folder(folder: Path | str, names: Iterable[str], overwrite: bool, kind: str, *,
                        inputs: Iterable[Path | str | None] = ()) -> Path:
    """:func:`check_output_path` for a folder of output files (``evaluate``, ``compare``, the
    demo): ``folder`` may exist and hold other files, but must not be an input, nor lie inside
    one or inside a surveydust store or bundle; each file ``names`` in it is checked with
    ``kind`` and ``inputs``. Returns the folder (the target of a link), created if missing."""
    folder = resolve_output_link(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder: give a folder for the outputs")
    real_inputs = _real_paths(inputs)
    _check_location(folder, real_inputs)
    for name in names:
        check_output_path(folder / name, overwrite, kind, inputs=real_inputs)
    _make_folder(folder)
    return folder


def resolve_output_link(path: Path | str) -> Path:
    """``path``, or the target of a symbolic link at ``path`` (a link to nothing is refused)."""
    path = Path(path)
    if not path.is_symlink():
        return path
    target = path.resolve()
    if not target.exists():
        raise FileNotFoundError(f"{path} is a symbolic link to {target}, which does not exist: "
                                "give the output's real path")
    return target


def _real_paths(paths: Iterable[Path | str | None]) -> list[Path]:
    return [Path(p).resolve() for p in paths if p is not None and str(p) != ""]


def _noun(kind: str | None, path: Path) -> str:
    """What an output of ``kind`` is called (``catalogue store``, ``bundle``, ``demo file``)."""
    if kind == "bundle":
        return "bundle"
    return f"{kind} file" if path.is_file() or path.suffix.lower() in OUTPUT_FILE_SUFFIXES else f"{kind} store"


def _check_replaceable(path: Path, overwrite: bool, kind: str | None, inputs: list[Path]) -> None:
    """Refuse to replace ``path`` unless ``overwrite`` and it is a surveydust ``kind`` output
    holding no input and no other surveydust output."""
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if kind is None:
        return
    found = existing_kind(path)
    if found != kind:
        what = f"a surveydust {_noun(found, path)}" if found else "not a surveydust output"
        raise FileExistsError(f"{path} exists and is {what}, not a {_noun(kind, path)}: refusing to replace it")
    real = path.resolve()
    held = [p for p in inputs if real in p.parents]
    if held:
        raise FileExistsError(f"{path} holds {held[0]}, an input of this run: refusing to replace it")
    nested = [c for c in sorted(path.iterdir()) if c.is_dir() and existing_kind(c) is not None] \
        if path.is_dir() else []
    if nested:
        raise FileExistsError(f"{path} holds another surveydust output ({nested[0].name}, a "
                              f"{_noun(existing_kind(nested[0]), nested[0])}): refusing to replace it; "
                              "move that out first")


def _check_location(path: Path, inputs: list[Path]) -> None:
    """Refuse an output that is an input, lies inside one, or lies inside a surveydust store or bundle."""
    real = path.resolve()
    for p in inputs:
        if real == p:
            raise InputError(f"{path} is an input of this run: a run never writes over its own inputs; "
                             "choose another output")
        if p in real.parents:
            raise InputError(f"{path} lies inside {p}, an input of this run: choose an output outside it")
    for parent in real.parents:
        found = existing_kind(parent)
        if found is not None:
            raise InputError(f"{path} lies inside the surveydust {_noun(found, parent)} {parent}: write "
                             "outputs outside surveydust stores and bundles")


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {folder}: {exc.strerror}") from None


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
    tmp = _partial_sibling(path)
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


def may_be_alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` on ``host`` may still run: False only when it is on this
    machine and gone (another machine's process cannot be checked, so it is respected)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_partials(path: Path) -> None:
    """Delete the temporary siblings of ``path`` (``.<name>.partial-<host>-<pid>-<id>``) whose
    writer was killed (SIGKILL, a node lost): its process on this host is gone."""
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


def write_atomically(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Write one file atomically: ``write`` fills a hidden temporary sibling, which is then
    renamed to ``path`` (replacing an old file in one step).

    The one way surveydust writes a file whole (tables, figures, FITS mosaics, run
    parts); a folder is moved into place by :func:`replace_atomically`.

    Parameters
    ----------
    path : pathlib.Path or str
        The file to write (its folder must exist).
    write : callable
        Called once with the temporary path (same folder, same suffix, so a writer that
        picks its format from the suffix, or appends one as :func:`numpy.savez` does,
        still writes it); it must create that file.

    Returns
    -------
    pathlib.Path
        ``path``. When ``write`` fails, the temporary file is removed and ``path`` is
        left as it was.
    """
    path = Path(path)
    tmp = _partial_sibling(path, path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_atomically(src: Path, dst: Path) -> None:
    """Move the finished folder (or file) ``src`` to ``dst``; an old ``dst`` is removed only
    after the move. ``src`` must lie on ``dst``'s file system (a sibling, as
    :func:`write_store_atomically` and :func:`write_atomically` make them)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


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
    except Exception as exc:  # noqa: BLE001 (zarr raises several types for non-stores)
        raise InputError(f"{path} is not a readable Zarr store ({type(exc).__name__})") from None
    if ds.attrs.get("store_kind") != store_kind:
        raise InputError(f"{path} is not a surveydust {what} (store_kind={ds.attrs.get('store_kind')!r})")
    if not ds.attrs.get("complete", False):
        raise InputError(f"{what} {path} is incomplete (an interrupted write?)")
    found = chunk_counts(path)
    for name, n in (ds.attrs.get("chunk_counts") or {}).items():
        if found.get(name, 0) < n:
            raise InputError(f"{what} {path} is damaged: array {name!r} has {found.get(name, 0)} of its {n} chunk "
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


# --------------------------------------------------------------------------- marked output files

#: key of the mark in an ECSV table's meta and a PNG's text chunks; a FITS table's header
#: keyword is :data:`FITS_OUTPUT_KEY`; a CSV file has no place for one, so the ECSV of the
#: same name beside it records its checksum (:data:`CSV_CHECKSUM_KEY`)
OUTPUT_KEY = "surveydust_output"
FITS_OUTPUT_KEY = "SDUSTOUT"
CSV_CHECKSUM_KEY = "surveydust_csv_sha256"
OUTPUT_FILE_SUFFIXES = (".fits", ".ecsv", ".csv", ".png")
_TABLE_FORMATS = {".fits": "fits", ".ecsv": "ascii.ecsv"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_READ = 1 << 20  # longest ECSV header line and PNG chunk read when looking for a mark [bytes]


def write_output_table(table: Any, path: Path | str, kind: str, *, with_csv: bool = False) -> Path:
    """Write an astropy ``table`` to ``path`` (``.fits``, ``.ecsv``) marked as a surveydust
    output of ``kind``, atomically (a temporary sibling, then renamed).

    ``with_csv``: also write the table as a CSV of the same name (``.csv``), first, and
    record its checksum in the ECSV, which is how the CSV is known as surveydust's.
    """
    path = Path(path)
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path.name}: marked tables are .fits or .ecsv files")
    table = table.copy(copy_data=False)
    marks = {FITS_OUTPUT_KEY if fmt == "fits" else OUTPUT_KEY: kind}
    if with_csv:
        csv = path.with_suffix(".csv")
        write_atomically(csv, lambda tmp: table.write(tmp, format="ascii.csv"))
        marks[CSV_CHECKSUM_KEY] = sha256(csv)
    table.meta = {**marks, **table.meta}
    return write_atomically(path, lambda tmp: table.write(tmp, format=fmt))


def write_output_figure(figure: Any, path: Path | str, kind: str, **savefig: Any) -> Path:
    """Save a matplotlib ``figure`` as a PNG at ``path`` marked as a surveydust output of ``kind``
    (a PNG text chunk), atomically; ``savefig`` goes to ``Figure.savefig`` (e.g. ``dpi``)."""
    def save(tmp: Path) -> None:
        figure.savefig(tmp, format="png", metadata={OUTPUT_KEY: kind}, **savefig)

    return write_atomically(Path(path), save)


def _partial_sibling(path: Path, suffix: str = "") -> Path:
    """A hidden temporary sibling of ``path`` that :func:`remove_stale_partials` recognises."""
    return path.with_name(f".{path.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                          f"{suffix}")


def _file_kind(path: Path) -> str | None:
    """The kind marked in a table or figure file surveydust wrote; None for any other file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".fits":
            return _fits_mark(path)
        if suffix == ".ecsv":
            return _ecsv_marks(path).get(OUTPUT_KEY)
        if suffix == ".png":
            return _png_mark(path)
        if suffix == ".csv":
            twin = _ecsv_marks(path.with_suffix(".ecsv"))
            return twin.get(OUTPUT_KEY) if twin.get(CSV_CHECKSUM_KEY) == sha256(path) else None
    except Exception:  # noqa: BLE001 (an unreadable or foreign file is simply not surveydust's)
        return None
    return None


def _fits_mark(path: Path) -> str | None:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, lazy_load_hdus=True) as hdul:
            for hdu in hdul[:2]:
                mark = hdu.header.get(FITS_OUTPUT_KEY)
                if mark is not None:
                    return str(mark)
    return None


def _ecsv_marks(path: Path) -> dict[str, str]:
    """The surveydust marks in the comment header of an ECSV file (an empty dict when none)."""
    marks = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in iter(lambda: f.readline(_MAX_READ), ""):
            if not line.startswith("#"):
                break
            found = re.match(r"#\s*(?:-\s*)?\{?\s*(surveydust_\w+):\s*['\"]?([\w.+-]+)", line)
            if found:
                marks[found.group(1)] = found.group(2)
    return marks


def _png_mark(path: Path) -> str | None:
    """The :data:`OUTPUT_KEY` text chunk of a PNG file (read up to its image data)."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            size, chunk = struct.unpack(">I4s", f.read(8))
            if chunk in (b"IDAT", b"IEND") or size > _MAX_READ:
                return None
            data = f.read(size)
            f.read(4)  # CRC
            key, _, value = data.partition(b"\0")
            if chunk == b"tEXt" and key.decode("latin-1") == OUTPUT_KEY:
                return value.decode("latin-1")


__all__ = ["FITS_OUTPUT_KEY", "OUTPUT_KEY", "check_output_folder", "check_output_path", "chunk_counts",
           "existing_kind", "may_be_alive", "open_complete_store", "replace_atomically", "resolve_output_link",
           "write_atomically", "write_output_figure", "write_output_table", "write_store_atomically", "zarr_compressor"]

"""Mosaic store: ingest survey FITS mosaics (one per band, common pixel grid) into Zarr, and open it.

Layout (xarray Dataset in Zarr v3)::

    sci(band, y, x)   float32, flux per pixel [nJy]; NaN where there is no data
    err(band, y, x)   float32, 1-sigma error per pixel [nJy]; NaN where sci is NaN
    coord band        filter names ("F277W", ...), in wavelength order
    Zarr chunks       (1, chunk, chunk), chunk = 512 by default

    attrs: store_kind="mosaic", store_id, complete, surveydust_version, field,
           wcs_header (celestial WCS of the common grid, FITS header string),
           pixel_scale_arcsec, shape [ny, nx], units="nJy",
           input {band: {sci, err, wht, hdu, bunit, pixar_sr, to_njy, sha256 {path: hex}}}

A pixel has no data (NaN in ``sci`` and ``err``) where the input is not
finite, where a weight map is given and the weight is not > 0, or where an
error is known (from ERR, or 1/sqrt(WHT)) and is not finite and > 0 (JWST
pipeline mosaics set ERR = 0 and WHT = 0 outside the coverage). Without ERR
and WHT, ``err`` is all NaN.

Input images are read block by block in Dask tasks (one block of one band per
task, by :func:`surveydust.stores.fits.read_block`: FITS parsing, units and
WCS live in :mod:`surveydust.stores.fits`) and written to a hidden temporary sibling of the output, which
is moved into place only when complete: no process ever holds a whole band, and
an interrupted ingest leaves nothing that looks finished.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from dask.base import tokenize

from surveydust.cluster import Compute, run_with_progress
from surveydust.detect import PixelGrid
from surveydust.errors import InputError
from surveydust.provenance import sha256
from surveydust.runs import OutputLock
from surveydust.stores.base import (
    check_output_path,
    open_complete_store,
    write_store_atomically,
    zarr_compressor,
)
from surveydust.stores.fits import ROLES, BandSource, check_common_grid, pixel_scale_arcsec, read_block, resolve_bands

__all__ = ["BLOCK_PIX", "DEFAULT_CHUNK", "STORE_KIND", "MosaicReader", "block_pix", "ingest_mosaic", "mosaic_reader",
           "mosaic_wcs", "open_mosaic", "store_chunk"]

logger = logging.getLogger(__name__)
STORE_KIND = "mosaic"
DEFAULT_CHUNK = 512  # Zarr chunk edge [pixels]: small, so a tile's halo decompresses little beyond the tile
BLOCK_PIX = 2048  # edge [pixels] of one ingest task's block and of a catalogue tile, rounded to whole chunks
MIN_CHUNK = 16


# --------------------------------------------------------------------------- public API


def ingest_mosaic(
    out: Path | str,
    bands: Mapping[str, Path | str | Mapping[str, Path | str | None]],
    *,
    field: str | None = None,
    chunk: int | None = None,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write FITS mosaics, one per band on a common pixel grid, as a mosaic store.

    Parameters
    ----------
    out
        Store to write (Zarr folder, e.g. ``goods-s.zarr``).
    bands
        ``{band: source}``. A source is either the path of one FITS file with
        extensions ``SCI`` and optionally ``ERR`` and ``WHT`` (JWST pipeline
        ``i2d`` / JADES style; a file with neither ``SCI`` nor ``ERR``/``WHT``
        extensions is read as a plain image), or a mapping ``{"sci": path,
        "err": path or None, "wht": path or None}`` of separate files (each
        image in the HDU named like its role, else the primary HDU or the
        first extension with data). Band names are NIRCam filters
        (:data:`surveydust.instrument.KNOWN_BANDS`), any case; the store keeps
        them in wavelength order.
    field
        Field name recorded in the attrs [default: ``out``'s name without suffix].
    chunk
        Zarr chunk edge [pixels]; chunks are ``(1, chunk, chunk)`` [default:
        ``DEFAULT_CHUNK``, 512]. Each Dask task reads and writes a block of
        :func:`block_pix` pixels (whole chunks, about ``BLOCK_PIX``).
    client, cluster, workers
        Dask client to run on, or the cluster profile and worker count of a
        new one (closed afterwards).
    overwrite
        Replace an existing mosaic store (only once the new one is complete).
    progress
        Show a progress bar (when stderr is a terminal).

    The output follows :func:`surveydust.stores.base.check_output_path`: never
    one of the input files, nor inside a surveydust store or bundle; a
    symbolic link is resolved; while it is written, ``.<name>.lock`` beside it
    refuses a second run on the same output. One file (or one file's data)
    given for two bands is refused; a ``FILTER`` (or ``PUPIL``) keyword that
    names another NIRCam band than the one it is given for is logged as a
    warning (the name given wins).

    ``BUNIT`` must be ``MJy/sr`` (converted with ``PIXAR_SR``, or the pixel
    area of the WCS when absent) or ``nJy`` (kept); other flux-density or
    surface-brightness units astropy understands (``uJy``, ``10*nJy``,
    ``Jy/sr``) are converted too. ``ERR`` is in the units of ``SCI`` (its own
    ``BUNIT`` when it has one); ``WHT`` is an inverse variance in units of
    ``SCI``, used for ``err = 1/sqrt(WHT)`` when no ``ERR`` is given and for
    the no-data mask. A pixel is NaN in ``sci`` and ``err`` where the input
    is not finite, the weight is not > 0, or the error is not finite and > 0.
    Input files are checksummed (SHA-256) on the workers while the store is
    written.

    Returns the store path. Raises FileNotFoundError for a missing file,
    FileExistsError for an existing ``out`` without ``overwrite``, and
    ValueError for unknown bands, missing ``SCI``, unsupported units, bands on
    different pixel grids and other unusable input.
    """
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < MIN_CHUNK:
        raise InputError(f"chunk must be an integer >= {MIN_CHUNK} pixels, got {chunk!r}")
    chunk = int(chunk)
    inputs = _input_paths(bands)
    out = check_output_path(out, overwrite, STORE_KIND, inputs=inputs)
    with OutputLock(out):
        check_output_path(out, overwrite, STORE_KIND, inputs=inputs)  # a run that held the lock may have written it
        written = _ingest(out, bands, field=field, chunk=chunk, client=client, cluster=cluster, workers=workers,
                          progress=progress)
    for band in zarr.open_group(written, mode="r").attrs.get("empty_bands", []):
        logger.warning("band %s has no valid pixel (all NaN, zero weight or bad error): it is ingested, "
                       "but no source can be measured in it", band)
    return written


def _ingest(out: Path, bands: Mapping[str, Any], *, field: str | None, chunk: int, client: Any, cluster: str | None,
            workers: int | None, progress: bool) -> Path:
    """Check the bands and write them to the store ``out`` (checked and locked by the caller)."""
    sources = resolve_bands(bands)
    check_common_grid(sources)
    ds = _build_dataset(sources, chunk)
    inputs = {s.band: _input_record(s) for s in sources}
    ds.attrs.update(
        field=str(field) if field is not None else (out.stem or out.name),
        wcs_header=sources[0].wcs.to_header_string(relax=True),  # relax: keeps SIP terms if any
        pixel_scale_arcsec=pixel_scale_arcsec(sources[0].wcs),
        shape=list(sources[0].shape),
        units="nJy",
        input=inputs,
    )
    encoding = {name: {"chunks": (1, chunk, chunk), "compressors": [zarr_compressor()]}
                for name in ("sci", "err")}
    paths = sorted({p.path for s in sources for p in s.planes if p is not None})
    checksums = {p: dask.delayed(sha256, pure=True)(p, dask_key_name=f"sha256-{tokenize(p)}")
                 for p in paths}

    def compute(write: Any) -> dict[str, Any]:
        has_data = ds["sci"].notnull().any(("y", "x")).data  # shares the block reads with the write
        finished = dask.delayed(_finish, pure=False)(write, inputs, checksums, has_data)
        return run_with_progress(c, finished, progress)

    with Compute(client, cluster, workers, progress).open() as c:
        return write_store_atomically(ds, out, store_kind=STORE_KIND, encoding=encoding, compute=compute)


def block_pix(chunk: int) -> int:
    """The multiple of ``chunk`` nearest :data:`BLOCK_PIX` (at least one chunk) [pixels]: the
    edge of an ingest task's block and the default catalogue tile of a store chunked so."""
    return max(chunk, round(BLOCK_PIX / chunk) * chunk)


def store_chunk(ds: xr.Dataset) -> int:
    """The Zarr chunk edge [pixels] of an open mosaic store."""
    return int(ds["sci"].encoding.get("chunks", (1, DEFAULT_CHUNK, DEFAULT_CHUNK))[-1])


def open_mosaic(path: Path | str) -> xr.Dataset:
    """Open a complete mosaic store lazily (dask-backed, one dask chunk per Zarr chunk)."""
    ds = open_complete_store(path, STORE_KIND, "mosaic store", chunks={})
    missing = [v for v in ("sci", "err") if v not in ds]
    if missing:
        raise InputError(f"mosaic store {path} lacks {', '.join(missing)}")
    return ds


def mosaic_wcs(ds: xr.Dataset) -> WCS:
    """Celestial WCS of a mosaic store's pixel grid (0-based pixel = array index [y, x])."""
    header = fits.Header.fromstring(ds.attrs["wcs_header"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


@dataclass(frozen=True)
class MosaicReader:
    """A complete mosaic store opened for reading pixel boxes straight from Zarr (no
    xarray or Dask layer per read): what a tile task needs, parsed once."""

    path: str
    store_id: str
    bands: tuple[str, ...]
    shape: tuple[int, int]
    pixel_scale_arcsec: float
    wcs: WCS
    sci: Any
    err: Any

    @property
    def grid(self) -> PixelGrid:
        """The store's bands, shape, pixel scale and WCS (what the tile kernels need)."""
        return PixelGrid(self.bands, self.shape, self.pixel_scale_arcsec, self.wcs)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """``sci`` and ``err`` ``(band, y, x)`` [nJy per pixel, float32] of the box ``[y0, y1) x [x0, x1)``;
        a chunk that cannot be decoded is a one-line ValueError naming the array and the box."""
        out = []
        for name, array in (("sci", self.sci), ("err", self.err)):
            try:
                out.append(np.asarray(array[:, y0:y1, x0:x1], dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 (codec and I/O errors of a damaged chunk)
                raise InputError(f"mosaic store {self.path} is damaged: a chunk of {name!r} in y {y0}:{y1}, "
                                 f"x {x0}:{x1} cannot be read ({type(exc).__name__}); ingest it again") from None
        return out[0], out[1]


_READERS: dict[str, MosaicReader] = {}


def mosaic_reader(path: Path | str) -> MosaicReader:
    """The mosaic store at ``path`` as a :class:`MosaicReader`, opened once per process
    (opened again when the store at ``path`` was replaced: a new ``store_id``)."""
    key = str(Path(path).resolve())
    cached = _READERS.get(key)
    if cached is not None and _store_id(key) == cached.store_id:
        return cached
    ds = open_mosaic(path)  # kind, completeness and variables checked once
    group = zarr.open_group(key, mode="r")
    reader = MosaicReader(path=key, store_id=str(ds.attrs.get("store_id", "")),
                          bands=tuple(str(b) for b in ds["band"].values), shape=(ds.sizes["y"], ds.sizes["x"]),
                          pixel_scale_arcsec=float(ds.attrs["pixel_scale_arcsec"]), wcs=mosaic_wcs(ds),
                          sci=group["sci"], err=group["err"])
    _READERS[key] = reader
    return reader


def _store_id(path: str) -> str | None:
    """The ``store_id`` of the Zarr group at ``path``; None when it is not one (the full open says why)."""
    try:
        return zarr.open_group(path, mode="r").attrs.get("store_id")
    except Exception:  # noqa: BLE001 (zarr raises several types for non-stores)
        return None


# --------------------------------------------------------------------------- input checks


def _input_paths(bands: Any) -> list[Path]:
    """The file paths named in a ``bands`` mapping (not yet checked), for the output-path rule."""
    if not isinstance(bands, Mapping):
        return []
    specs = [v for spec in bands.values() for v in (spec.values() if isinstance(spec, Mapping) else [spec])]
    return [Path(p) for p in specs if isinstance(p, (str, os.PathLike))]


def _refuse_same_data(inputs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse two bands whose science files have the same SHA-256 (one mosaic copied under two names)."""
    seen: dict[str, tuple[str, str]] = {}
    for band, record in inputs.items():
        digest = record["sha256"][record["sci"]]
        other, path = seen.setdefault(digest, (band, record["sci"]))
        if other != band:
            raise InputError(f"bands {other} and {band} have the same science data ({Path(path).name} and "
                             f"{Path(record['sci']).name}, SHA-256 {digest[:12]}...): one mosaic given twice?")


def _input_record(s: BandSource) -> dict[str, Any]:
    return {
        "sci": s.sci.path,
        "err": s.err.path if s.err else None,
        "wht": s.wht.path if s.wht else None,
        "hdu": {role: p.hdu if p else None for role, p in zip(ROLES, s.planes, strict=True)},
        "bunit": s.bunit,
        "pixar_sr": s.pixar_sr,
        "to_njy": s.sci.to_njy,
        "sha256": {},
    }


def _finish(_written: Any, inputs: Mapping[str, Mapping[str, Any]], checksums: Mapping[str, str],
            has_data: np.ndarray) -> dict:
    """Attrs to record once the data are written: ``input`` with each band's file checksums.

    Bands without a single valid pixel (``has_data`` per band) are listed in ``empty_bands``.
    """
    done = {}
    for band, record in inputs.items():
        paths = dict.fromkeys(record[role] for role in ROLES if record[role])
        done[band] = {**record, "sha256": {p: checksums[p] for p in paths}}
    _refuse_same_data(done)
    return {"input": done, "empty_bands": [b for b, ok in zip(inputs, np.asarray(has_data)) if not ok]}


# --------------------------------------------------------------------------- lazy reading


class _BlockReader:
    """Array-like ``(2, band, y, x)`` view of the inputs ([0] = sci, [1] = err, nJy):
    each ``__getitem__`` opens the FITS files (memmap) and reads only the block asked for."""

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(self, sources: Sequence[BandSource]):
        self.planes = [s.planes for s in sources]
        ny, nx = sources[0].shape
        self.shape = (2, len(sources), ny, nx)

    def __dask_tokenize__(self) -> tuple:
        stamps = [(p.path, os.stat(p.path).st_mtime_ns) for ps in self.planes for p in ps if p is not None]
        return ("surveydust-mosaic-reader", tuple(map(tuple, self.planes)), tuple(stamps))

    def __getitem__(self, key: Any) -> np.ndarray:
        """Basic indexing (slices with step 1 along y and x, ints or slices elsewhere)."""
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * 4
        part_key, band_key, *yx = key[:4]
        bands = range(self.shape[1])[band_key] if isinstance(band_key, slice) else [band_key]
        ys, xs = (slice(*(k if isinstance(k, slice) else slice(k, k + 1)).indices(n)[:2])
                  for k, n in zip(yx, self.shape[2:], strict=True))
        out = np.empty((2, len(bands), max(ys.stop - ys.start, 0), max(xs.stop - xs.start, 0)), np.float32)
        if out.size:
            for j, b in enumerate(bands):
                read_block(self.planes[b], ys, xs, out=out[:, j])
        squeeze = tuple(0 if not isinstance(k, slice) else slice(None) for k in yx)
        return out[(part_key, slice(None) if isinstance(band_key, slice) else 0, *squeeze)]



def _build_dataset(sources: Sequence[BandSource], chunk: int) -> xr.Dataset:
    reader = _BlockReader(sources)
    block = block_pix(chunk)
    pair = da.from_array(reader, chunks=(2, 1, block, block), meta=np.empty((0, 0, 0, 0), np.float32),
                         name=f"read-mosaic-{tokenize(reader, chunk)}")
    dims = ("band", "y", "x")
    ds = xr.Dataset(
        {"sci": (dims, pair[0]), "err": (dims, pair[1])},
        # object strings become Zarr 3's variable-length UTF-8 (fixed-width <U has no v3 spec)
        coords={"band": np.array([s.band for s in sources], dtype=object)},
    )
    ds["sci"].attrs.update(units="nJy", description="flux per pixel; NaN where there is no data")
    ds["err"].attrs.update(units="nJy", description="1-sigma error per pixel; NaN where sci is NaN")
    missing = [s.band for s in sources if s.err is None and s.wht is None]
    if missing:
        warnings.warn(f"no ERR or WHT for {', '.join(missing)}: err is NaN there", UserWarning, stacklevel=4)
    return ds

"""Read FITS images: the HDU to use, SCI/ERR/WHT, the unit (to nJy per pixel), the celestial WCS and pixel blocks.

The one place surveydust parses FITS images. Mosaic ingest
(:mod:`surveydust.stores.mosaic`) resolves each band's files with
:func:`resolve_bands` (JWST pipeline ``i2d`` / JADES style files with ``SCI``,
``ERR`` and ``WHT`` extensions, separate files, or plain images; no pixel data
read) and reads blocks of them with :func:`read_block`; the SKIRT reader
(:mod:`surveydust.stores.skirt`) takes its cubes' unit and pixel scale from
:func:`flux_to_njy_factor` and :func:`header_pixel_scales_arcsec`.
:func:`parse_flux_unit` is the one parser of ``BUNIT`` values.

Pixels are read through a numpy memmap at the data offset found once in the
header (no header parsed per block); scaled (``BSCALE``/``BZERO``/``BLANK``) or
tile-compressed images through astropy's ``hdu.section``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_area, proj_plane_pixel_scales

from surveydust.errors import InputError
from surveydust.instrument import KNOWN_BANDS, check_bands
from surveydust.physics import njy_per_pixel_factor, pixel_area_sr

__all__ = [
    "GRID_TOLERANCE_PIX",
    "ROLES",
    "BandSource",
    "Plane",
    "check_common_grid",
    "flux_to_njy_factor",
    "grid_offset_pix",
    "header_pixel_scales_arcsec",
    "parse_flux_unit",
    "pixel_scale_arcsec",
    "read_block",
    "resolve_bands",
]

logger = logging.getLogger(__name__)

#: bands whose pixel->sky mappings differ by more than this [pixels] are refused
GRID_TOLERANCE_PIX = 1e-3
ROLES = ("sci", "err", "wht")
_SURFACE_BRIGHTNESS = u.MJy / u.sr
# spellings astropy does not parse (FITS files are often upper-case)
_UNIT_ALIASES = {"mjy/sr": _SURFACE_BRIGHTNESS, "mjy sr-1": _SURFACE_BRIGHTNESS, "njy": u.nJy}


@dataclass(frozen=True)
class Plane:
    """One 2-D image HDU on disk, and how to turn its values into nJy."""

    path: str
    hdu: int  # index in the HDU list
    to_njy: float  # multiply the values (for a weight map: 1/sqrt(values)) by this
    shape: tuple[int, int]
    #: byte offset and big-endian dtype of the raw pixels, for reading through a numpy
    #: memmap (no header parsing per block); None for scaled (BSCALE/BZERO/BLANK) or
    #: tile-compressed data, which are read through astropy's ``hdu.section``
    offset: int | None
    dtype: str


@dataclass(frozen=True)
class BandSource:
    """Where one band's science, error and weight images are, checked (no pixel data read)."""

    band: str
    sci: Plane
    err: Plane | None
    wht: Plane | None
    shape: tuple[int, int]
    wcs: WCS  # celestial WCS of the science image
    bunit: str
    pixar_sr: float | None

    @property
    def planes(self) -> tuple[Plane, Plane | None, Plane | None]:
        """``(sci, err, wht)``, as :func:`read_block` takes them."""
        return self.sci, self.err, self.wht


# --------------------------------------------------------------------------- units


def parse_flux_unit(text: str) -> u.UnitBase | None:
    """The astropy unit a FITS ``BUNIT`` value names; None when it names none.

    Parameters
    ----------
    text : str
        The keyword's value (e.g. ``"MJy/sr"``, ``"MJy / sr"``, ``"nJy"``, ``"10*nJy"``).

    Returns
    -------
    astropy.units.UnitBase or None
        astropy's strict reading, else one of the spellings astropy does not parse
        (upper-case ``MJY/SR``, ``MJy sr-1``, ``NJY``; case and spaces ignored).
    """
    try:
        return u.Unit(text, parse_strict="raise")
    except (ValueError, TypeError):
        return _UNIT_ALIASES.get(" ".join(text.lower().split()))


def flux_to_njy_factor(bunit: Any, area_sr: float, *, file: str, hdu: int | None = None,
                       band: str | None = None) -> float:
    """Factor that turns image values in ``bunit`` into flux per pixel [nJy].

    Parameters
    ----------
    bunit : Any
        The ``BUNIT`` value (None or blank when the header has none): a surface
        brightness (MJy/sr, Jy/sr, ...) or a flux density per pixel (nJy, uJy, ...).
    area_sr : float
        Solid angle of one pixel [sr] (used for surface brightness only).
    file, hdu, band : str, int or None, str or None
        File name, HDU index and band named in the one-line errors.

    Returns
    -------
    float
        nJy per pixel per unit of the image values.

    Raises
    ------
    ValueError
        When there is no unit, or it is neither a surface brightness nor a flux density.
    """
    where = f"{band}: " if band else ""
    expected = "expected MJy/sr (surface brightness) or nJy (flux per pixel)"
    text = "" if bunit is None else str(bunit).strip()
    if not text:
        at = f" (HDU {hdu})" if hdu is not None else ""
        raise InputError(f"{where}{file}{at} has no BUNIT; {expected}")
    unit = parse_flux_unit(text)
    factor = njy_per_pixel_factor(unit, area_sr) if unit is not None else None
    if factor is None:
        raise InputError(f"{where}BUNIT {text!r} of {file} is not supported: it is neither a surface brightness "
                         f"(MJy/sr) nor a flux per pixel (nJy); {expected}")
    return factor


# --------------------------------------------------------------------------- bands and their files


def resolve_bands(bands: Mapping[str, Any]) -> list[BandSource]:
    """Find and check every band's science, error and weight images (headers only, no pixel data).

    Parameters
    ----------
    bands : mapping
        ``{band: source}``: a source is the path of one FITS file with extensions ``SCI``
        and optionally ``ERR`` and ``WHT`` (a file with none of them is read as a plain
        image), or ``{"sci": path, "err": path or None, "wht": path or None}`` (each image
        in the HDU named like its role, else the first HDU with data). Band names are
        NIRCam filters, any case.

    Returns
    -------
    list of BandSource
        In wavelength order, each with its planes' factors to nJy per pixel (``BUNIT``
        MJy/sr with ``PIXAR_SR`` [sr] or the WCS pixel area, nJy, or any other surface
        brightness or flux density astropy reads) and the science image's celestial WCS.

    Raises
    ------
    FileNotFoundError
        For a missing file.
    ValueError
        For an unknown band, one science file given for two bands (the same path, or links
        to one file), a missing ``SCI``, an unsupported unit, a non-RA/Dec WCS, an error or
        weight image off the science image's grid, a truncated file; one line each.
    """
    if not isinstance(bands, Mapping) or not bands:
        raise InputError("no bands given: pass {band: FITS path} (CLI: --band F277W=file.fits)")
    names = dict(zip(check_bands(list(bands)), bands.values(), strict=True))
    sources = [_resolve_band(name, names[name]) for name in KNOWN_BANDS if name in names]
    _refuse_shared_files(sources)
    return sources


def _refuse_shared_files(sources: Sequence[BandSource]) -> None:
    """Refuse one science file (same path, or a link to it) given for two bands."""
    owner: dict[tuple[int, int], str] = {}
    for s in sources:
        st = os.stat(s.sci.path)
        band = owner.setdefault((st.st_dev, st.st_ino), s.band)
        if band != s.band:
            raise InputError(f"bands {band} and {s.band} are given the same file {Path(s.sci.path).name}: "
                             "give each band its own mosaic")


def _warn_filter_mismatch(band: str, loc: _Located) -> None:
    """Log a warning when the FITS ``FILTER`` (or ``PUPIL``) keyword names another NIRCam band."""
    said = {str(v).strip().upper() for v in (_keyword(loc, "FILTER"), _keyword(loc, "PUPIL")) if v is not None}
    named = sorted(said & set(KNOWN_BANDS))
    if named and band not in said:
        logger.warning("%s: the FILTER keyword of %s says %s; ingesting it as %s, as given (check the --band "
                       "names)", band, loc.path.name, "/".join(named), band)


def _resolve_band(band: str, spec: Any) -> BandSource:
    if isinstance(spec, Mapping):
        unknown = sorted(set(map(str, spec)) - set(ROLES))
        if unknown:
            raise InputError(f"{band}: unknown key(s) {', '.join(unknown)}; expected sci, err, wht")
        if spec.get("sci") is None:
            raise InputError(f"{band}: no sci file given")
        files = {role: _existing(band, role, spec.get(role)) for role in ROLES}
        located = {role: _locate_image(band, role, path) if path else None for role, path in files.items()}
    elif isinstance(spec, (str, os.PathLike)):
        path = _existing(band, "mosaic", spec)
        located = _locate_extensions(band, path)
    else:
        raise InputError(f"{band}: expected a FITS path or {{'sci': ..., 'err': ..., 'wht': ...}}, "
                         f"got {type(spec).__name__}")
    return _band_source(band, located)


def _existing(band: str, role: str, path: Any) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{band}: {role} file {path} does not exist")
    return path.resolve()


def _open(band: str, path: Path) -> fits.HDUList:
    try:
        with warnings.catch_warnings():  # truncation is reported by _plane, as one line
            warnings.filterwarnings("ignore", message="File may have been truncated")
            return fits.open(path, memmap=True, lazy_load_hdus=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{band}: {path.name} is not a readable FITS file ({exc})") from None


def _has_image(hdu: Any) -> bool:
    return hdu.is_image and bool(hdu.header.get("NAXIS", 0)) and all(
        hdu.header.get(f"NAXIS{i}", 0) > 0 for i in range(1, hdu.header["NAXIS"] + 1))


def _extname(hdu: Any) -> str:
    return str(hdu.header.get("EXTNAME", "")).strip().upper()


@dataclass(frozen=True)
class _Located:
    """An image HDU found on disk, with the headers needed to interpret it."""

    path: Path
    index: int
    header: fits.Header
    primary: fits.Header
    shape: tuple[int, ...]
    compressed: bool
    offset: int  # byte offset of the data in the file


def _located(path: Path, hdul: fits.HDUList, index: int) -> _Located:
    hdu = hdul[index]
    compressed = isinstance(hdu, fits.CompImageHDU)
    return _Located(path=path, index=index, header=hdu.header.copy(), primary=hdul[0].header.copy(),
                    shape=tuple(hdu.shape), compressed=compressed,
                    offset=-1 if compressed else int(hdu.fileinfo()["datLoc"]))


def _locate_extensions(band: str, path: Path) -> dict[str, _Located | None]:
    """SCI/ERR/WHT extensions of one file; a plain image when it has none of them."""
    with _open(band, path) as hdul:
        names = [_extname(h) for h in hdul]
        found = {role: names.index(role.upper()) if role.upper() in names else None for role in ROLES}
        if found["sci"] is None:
            if found["err"] is not None or found["wht"] is not None:
                listed = ", ".join(n or str(i) for i, n in enumerate(names))
                raise InputError(f"{band}: {path.name} has no SCI extension (extensions: {listed})")
            images = [i for i, h in enumerate(hdul) if _has_image(h)]
            if not images:
                raise InputError(f"{band}: {path.name} has no SCI extension and no image data")
            found["sci"] = images[0]
        return {role: _located(path, hdul, i) if i is not None else None for role, i in found.items()}


def _locate_image(band: str, role: str, path: Path) -> _Located:
    """The HDU named like ``role`` (SCI/ERR/WHT), else the first HDU with image data."""
    with _open(band, path) as hdul:
        names = [_extname(h) for h in hdul]
        if role.upper() in names:
            return _located(path, hdul, names.index(role.upper()))
        images = [i for i, h in enumerate(hdul) if _has_image(h)]
        if not images:
            raise InputError(f"{band}: {role} file {path.name} has no image data")
        return _located(path, hdul, images[0])


def _keyword(loc: _Located, key: str) -> Any:
    return loc.header.get(key, loc.primary.get(key))


def _band_source(band: str, located: Mapping[str, _Located | None]) -> BandSource:
    sci = located["sci"]
    assert sci is not None
    if len(sci.shape) != 2:
        raise InputError(f"{band}: science image in {sci.path.name} is not 2-D (shape {sci.shape})")
    wcs = _celestial_wcs(band, sci)
    if wcs is None:
        raise InputError(f"{band}: {sci.path.name} (HDU {sci.index}) has no celestial WCS (CTYPE RA---/DEC--)")
    _warn_filter_mismatch(band, sci)
    bunit = _keyword(sci, "BUNIT")
    pixar = _keyword(sci, "PIXAR_SR")
    pixar_sr = float(pixar) if isinstance(pixar, (int, float)) and math.isfinite(pixar) and pixar > 0 else None
    sci_factor = _to_njy(band, sci, bunit, pixar_sr, wcs)
    planes: dict[str, Plane | None] = {"sci": _plane(sci, sci_factor)}
    for role in ("err", "wht"):
        loc = located[role]
        if loc is None:
            planes[role] = None
            continue
        if loc.shape != sci.shape:
            raise InputError(f"{band}: {role} image {loc.path.name} has shape {_fmt_shape(loc.shape)}, "
                             f"science image {_fmt_shape(sci.shape)}")
        other = _celestial_wcs(band, loc)
        if other is not None:
            offset = grid_offset_pix(wcs, other, sci.shape)
            if offset > GRID_TOLERANCE_PIX:
                raise InputError(f"{band}: {role} image {loc.path.name} is not on the science image's pixel "
                                 f"grid (WCS differ by {offset:.3g} pixels)")
        if role == "err":
            own = _keyword(loc, "BUNIT")
            own_pixar = _keyword(loc, "PIXAR_SR")
            own_pixar = float(own_pixar) if isinstance(own_pixar, (int, float)) and own_pixar > 0 else pixar_sr
            factor = _to_njy(band, loc, own, own_pixar, wcs) if own else sci_factor
        else:
            factor = sci_factor  # err = 1/sqrt(WHT) is in the science units
        planes[role] = _plane(loc, factor)
    return BandSource(band=band, sci=planes["sci"], err=planes["err"], wht=planes["wht"],
                      shape=(int(sci.shape[0]), int(sci.shape[1])), wcs=wcs,
                      bunit=str(bunit).strip(), pixar_sr=pixar_sr)


_BITPIX_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _plane(loc: _Located, factor: float) -> Plane:
    h = loc.header
    scaled = h.get("BSCALE", 1) != 1 or h.get("BZERO", 0) != 0 or "BLANK" in h
    dtype = _BITPIX_DTYPES.get(h.get("BITPIX"), "")
    shape = (int(loc.shape[0]), int(loc.shape[1]))
    offset = None if loc.compressed or scaled or not dtype else loc.offset
    if offset is not None:
        need = offset + np.dtype(dtype).itemsize * shape[0] * shape[1]
        size = loc.path.stat().st_size
        if size < need:
            raise InputError(f"{loc.path.name} (HDU {loc.index}) is truncated: {size} bytes, "
                             f"its header needs {need}")
    return Plane(path=str(loc.path), hdu=loc.index, to_njy=float(factor), shape=shape, offset=offset,
                 dtype=dtype)


def _fmt_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(n) for n in shape)


def _celestial_wcs(band: str, loc: _Located) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(loc.header, naxis=2)
        except Exception as exc:  # noqa: BLE001 (astropy/wcslib raise many types for bad headers)
            raise InputError(f"{band}: unreadable WCS in {loc.path.name} ({exc})") from None
    if not wcs.has_celestial or wcs.wcs.lng != 0 or wcs.wcs.lat != 1:
        return None
    ctype = [str(c).upper() for c in list(wcs.wcs.ctype)[:2]]
    if not (ctype[0].startswith("RA") and ctype[1].startswith("DEC")):
        raise InputError(f"{band}: {loc.path.name} has a {ctype[0].split('-')[0]}/{ctype[1].split('-')[0]} WCS; "
                         "catalogues give ICRS ra/dec, so reproject the mosaic to RA/Dec (CTYPE RA---TAN, DEC--TAN)")
    return wcs.celestial



def _to_njy(band: str, loc: _Located, bunit: Any, pixar_sr: float | None, wcs: WCS) -> float:
    """Factor that turns the values of ``loc`` into flux per pixel [nJy]: the pixel area is
    ``PIXAR_SR`` [sr] when given, else that of the WCS."""
    area = pixar_sr if pixar_sr is not None else pixel_area_sr(math.sqrt(proj_plane_pixel_area(wcs)) * 3600)
    return flux_to_njy_factor(bunit, area, file=loc.path.name, hdu=loc.index, band=band)


def grid_offset_pix(ref: WCS, other: WCS, shape: Sequence[int]) -> float:
    """Largest distance [pixels of ``ref``] between ``ref``'s pixels and the pixels of
    ``other`` mapped through the sky, over the four corners and the centre of ``shape``."""
    ny, nx = shape
    px = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2], float)
    py = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2], float)
    with np.errstate(all="ignore"):
        try:
            lon, lat = other.all_pix2world(px, py, 0)
            bx, by = ref.all_world2pix(lon, lat, 0)
        except Exception:  # noqa: BLE001 (no convergence: not the same grid)
            return math.inf
        dist = np.hypot(bx - px, by - py)
    return float(np.max(dist)) if np.all(np.isfinite(dist)) else math.inf


def check_common_grid(sources: Sequence[BandSource]) -> None:
    """Refuse bands whose shapes differ or whose WCS differ by > GRID_TOLERANCE_PIX."""
    ref = sources[0]
    for s in sources[1:]:
        if s.shape != ref.shape:
            raise InputError(f"bands {ref.band} and {s.band} are not on one pixel grid: shapes "
                             f"{_fmt_shape(ref.shape)} and {_fmt_shape(s.shape)}; reproject them onto a "
                             "common grid first")
        offset = grid_offset_pix(ref.wcs, s.wcs, ref.shape)
        if offset > GRID_TOLERANCE_PIX:
            raise InputError(f"bands {ref.band} and {s.band} are not on one pixel grid: their WCS differ by "
                             f"{offset:.3g} pixels (tolerance {GRID_TOLERANCE_PIX:g}); reproject them onto a "
                             "common grid first")


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel edge [arcsec] of a celestial WCS."""
    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)



# --------------------------------------------------------------------------- pixel blocks


def _raw(plane: Plane, ys: slice, xs: slice) -> np.ndarray:
    """One block of one image HDU in its stored dtype: a view into a numpy memmap (unmapped
    when the view is dropped), or astropy's ``section`` read of scaled or tile-compressed data."""
    if plane.offset is not None:
        return np.memmap(plane.path, dtype=plane.dtype, mode="r", offset=plane.offset, shape=plane.shape)[ys, xs]
    with fits.open(plane.path, memmap=False, lazy_load_hdus=True) as hdul:  # section reads only the block
        return hdul[plane.hdu].section[ys, xs]


def _read_njy(out: np.ndarray, plane: Plane, ys: slice, xs: slice) -> np.ndarray:
    """Fill the float32 ``out`` with one block in nJy: byte order, type and units in one pass."""
    np.multiply(_raw(plane, ys, xs), np.float32(plane.to_njy), out=out, casting="unsafe")
    return out


def read_block(planes: tuple[Plane, Plane | None, Plane | None], ys: slice, xs: slice,
               out: np.ndarray | None = None) -> np.ndarray:
    """``[sci, err]`` of one block of one band, flux per pixel [nJy], NaN where there is no data.

    A pixel has no data where the science value is not finite, the weight (when given) is
    not > 0, or the error (from ERR, or 1/sqrt(WHT)) is not finite and > 0. Float32
    arithmetic for float32 inputs: values are within ~1e-7 (relative) of a float64
    conversion. The weight map is compared and rooted where it lies, never copied.

    Parameters
    ----------
    planes : tuple
        ``(sci, err, wht)`` :class:`Plane` s of one band (:attr:`BandSource.planes`).
    ys, xs : slice
        The block's rows and columns [pixels] (step 1).
    out : numpy.ndarray, optional
        float32 array of shape ``(2, ny, nx)`` to fill (allocated when None).

    Returns
    -------
    numpy.ndarray
        ``out``: ``[0]`` science, ``[1]`` 1-sigma error [nJy per pixel], float32.
    """
    sci_p, err_p, wht_p = planes
    ys, xs = (slice(*sl.indices(n)[:2]) for sl, n in zip((ys, xs), sci_p.shape, strict=True))
    if out is None:
        out = np.empty((2, ys.stop - ys.start, xs.stop - xs.start), np.float32)
    sci, err = out[0], out[1]
    _read_njy(sci, sci_p, ys, xs)
    good = np.isfinite(sci)
    if wht_p is not None:
        wht = _raw(wht_p, ys, xs)
        good &= wht > 0
    if err_p is not None:
        _read_njy(err, err_p, ys, xs)
    elif wht_p is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            np.sqrt(wht, out=err, casting="unsafe")
            np.divide(np.float32(wht_p.to_njy), err, out=err)
    else:
        err.fill(np.nan)
    if err_p is not None or wht_p is not None:
        with np.errstate(invalid="ignore"):
            good &= err > 0
            good &= err < np.inf
    bad = np.logical_not(good, out=good)
    np.copyto(sci, np.float32(np.nan), where=bad)
    np.copyto(err, np.float32(np.nan), where=bad)
    return out



# --------------------------------------------------------------------------- pixel scale from header keywords


def header_pixel_scales_arcsec(header: fits.Header, file: str) -> tuple[float, float]:
    """Pixel size along x and y [arcsec] from the header keywords of the first two axes.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header with a ``CDi_j`` matrix, or ``CDELT1/2`` (with optional ``PCi_j``), in
        ``CUNIT1/2`` (deg when absent), or ``PIXELSCL`` [arcsec/pixel].
    file : str
        File name named in the one-line errors.

    Returns
    -------
    tuple of float
        (x, y) pixel size [arcsec].

    Raises
    ------
    ValueError
        When the header gives no pixel scale, a non-angle ``CUNIT``, or a scale that is
        not finite and > 0.
    """
    cd = _cd_matrix_deg(header)
    if cd is not None:
        sx, sy = np.hypot(cd[0, 0], cd[1, 0]), np.hypot(cd[0, 1], cd[1, 1])
    elif "PIXELSCL" in header:
        sx = sy = float(header["PIXELSCL"]) / 3600.0
    else:
        raise InputError(f"{file}: no pixel scale in the header (CDELT1/2, CDi_j or PIXELSCL)")
    if not (sx > 0 and sy > 0 and np.isfinite(sx * sy)):
        raise InputError(f"{file}: invalid pixel scale {sx * 3600:g} x {sy * 3600:g} arcsec")
    return float(sx * 3600.0), float(sy * 3600.0)


def _cd_matrix_deg(header: fits.Header) -> np.ndarray | None:
    """The 2x2 CD matrix [deg/pixel] of the first two axes, or None."""
    try:
        unit = [u.Unit(str(header.get(f"CUNIT{i}", "deg")).strip() or "deg").to(u.deg) for i in (1, 2)]
    except (ValueError, u.UnitsError):
        raise InputError(f"CUNIT1/2 = {header.get('CUNIT1')!r}/{header.get('CUNIT2')!r} is not an angle") from None
    if any(f"CD{i}_{j}" in header for i in (1, 2) for j in (1, 2)):
        cd = np.array([[header.get(f"CD{i}_{j}", 0.0) for j in (1, 2)] for i in (1, 2)], float)
    elif "CDELT1" in header and "CDELT2" in header:
        pc = np.array([[header.get(f"PC{i}_{j}", float(i == j)) for j in (1, 2)] for i in (1, 2)], float)
        cd = pc * np.array([header["CDELT1"], header["CDELT2"]], float)[:, None]
    else:
        return None
    return cd * np.array(unit)[:, None]

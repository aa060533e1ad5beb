"""Tiles, source detection, photometry and stamps on a piece of a mosaic.

A mosaic is cut into tiles (the store's chunks by default). A tile task reads
its tile plus a halo, detects sources on a noise-weighted detection image,
and keeps the sources whose centroid lies in the tile's *core*: every source
belongs to exactly one tile, whatever boundary it sits on. Pixels are in the
mosaic's 0-based (x, y) pixel-centre convention; fluxes in nJy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from surveydust.config import CatalogueConfig
from surveydust.instrument import circular_aperture

FWHM_PER_SIGMA = 2.3548  # of a Gaussian
SUB_OBJECT_LIMIT = 4096  # most components SEP follows while deblending one segment
#: what each flag bit of a catalogue's ``flag`` (and of :meth:`surveydust.bundle.Predictor.predict`'s
#: ``flag``) means, and what to do with such a source
FLAG_DESCRIPTIONS = {
    "edge": "the stamp reaches off the mosaic",
    "masked": "NaN pixels in the stamp (counted as no flux)",
    "low_snr": "SNR below the model's training cut: outside what it was trained and calibrated on",
    "out_of_distribution": "unlike the training set (ood above ood_threshold): the percentiles are not "
                           "calibrated for this source (in the shift suite the 68/95% intervals of flagged "
                           "extreme line emitters held 47/78% of the truths, A_V biased +0.27 mag): read "
                           "its dust as indicative only",
    "blended": "deblended from a larger segment",
    "no_redshift": "no redshift given, or an impossible one such as -99 (predicted without one)",
    "no_data": "a band a model needs has no valid pixel in the stamp: no prediction",
    "z_out_of_range": "a redshift outside a model's training range: no prediction",
    "not_high_z": "not selected as a z > 6 galaxy (no spectroscopic z in a model's range and P(z>6) below "
                  "p_high_z_min, or a spectroscopic z below 6): no dust prediction (NaN), unless the run "
                  "predicted every source (--all-sources), when its dust assumes a z > 6 galaxy it likely is not",
}
#: flag bits of a catalogue's ``flag`` (meanings: :data:`FLAG_DESCRIPTIONS`)
FLAGS = {name: 1 << i for i, name in enumerate(FLAG_DESCRIPTIONS)}


@dataclass(frozen=True)
class PixelGrid:
    """What a tile kernel needs to know of its mosaic: the band names, the shape (ny, nx)
    [pixels], the pixel scale [arcsec] and the celestial WCS (an ``astropy.wcs.WCS``;
    0-based pixel = array index [y, x])."""

    bands: tuple[str, ...]
    shape: tuple[int, int]
    pixel_scale_arcsec: float
    wcs: Any


@dataclass(frozen=True)
class Tile:
    """A tile core ``[y0, y1) x [x0, x1)`` of the mosaic (0-based pixels) and its number."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int

    def with_halo(self, halo: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The pixel box read for this tile: the core plus ``halo``, clipped to ``shape``."""
        return (max(self.y0 - halo, 0), min(self.y1 + halo, shape[0]),
                max(self.x0 - halo, 0), min(self.x1 + halo, shape[1]))

    def owns(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether mosaic positions (x, y) round into this tile's core."""
        xi, yi = np.floor(np.asarray(x) + 0.5), np.floor(np.asarray(y) + 0.5)
        return (yi >= self.y0) & (yi < self.y1) & (xi >= self.x0) & (xi < self.x1)


def make_tiles(shape: tuple[int, int], size: int) -> list[Tile]:
    """Tiles of ``size`` x ``size`` pixels covering ``shape`` (ny, nx), row by row."""
    ny, nx = shape
    boxes = [(y, min(y + size, ny), x, min(x + size, nx)) for y in range(0, ny, size) for x in range(0, nx, size)]
    return [Tile(i, *box) for i, box in enumerate(boxes)]


def detection_image(sci: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted sum of bands ``(band, y, x)`` as a per-pixel SNR image (float32).

    Returns the image and the mask of pixels with data in every band (NaN
    science or non-positive/NaN error anywhere masks the pixel); masked pixels are 0.
    Band by band into preallocated 2-d buffers (no full-cube temporaries).
    """
    sci, err = np.asarray(sci, np.float32), np.asarray(err, np.float32)
    shape = sci.shape[1:]
    num, den, valid = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.ones(shape, bool)
    w, term, ok = np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, bool)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for s, e in zip(sci, err, strict=True):
            np.reciprocal(np.multiply(e, e, out=w), out=w)  # inverse variance
            np.isfinite(w, out=ok)
            ok &= e > 0
            ok &= np.isfinite(s)
            valid &= ok
            np.copyto(w, 0, where=~ok)
            np.copyto(np.multiply(s, w, out=term), 0, where=~ok)
            num += term
            den += w
        np.divide(num, np.sqrt(den, out=den), out=num)
    np.copyto(num, 0, where=~valid)
    return num, valid


def detect(sci: np.ndarray, err: np.ndarray, cfg: CatalogueConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect sources on bands ``(band, y, x)``; return centroids x, y [pixels] and a blended flag.

    The detection image (:func:`detection_image`) is smoothed (:func:`smooth`)
    and its sources found (:func:`find_sources`). Masked pixels are never part
    of a detection; a tile without data has no sources.
    """
    snr, valid = detection_image(sci, err)
    if not valid.any():  # a tile of NaN border
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool)
    return find_sources(smooth(snr, cfg.smooth_fwhm_pix), snr, valid, cfg)


def smooth(image: np.ndarray, fwhm_pix: float) -> np.ndarray:
    """``image`` convolved with a normalised Gaussian of ``fwhm_pix`` [pixels] (separable,
    out to 4 sigma; zero beyond the edges); ``fwhm_pix`` <= 0 returns ``image``."""
    from scipy import ndimage

    if fwhm_pix <= 0:
        return image
    return ndimage.gaussian_filter(image, fwhm_pix / FWHM_PER_SIGMA, mode="constant", cval=0.0, truncate=4.0)


def find_sources(smoothed: np.ndarray, snr: np.ndarray, valid: np.ndarray,
                 cfg: CatalogueConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sources of a smoothed detection image: ``cfg.npixels`` 8-connected pixels above
    ``cfg.threshold`` (outside the mask ``~valid``), optionally deblended by SExtractor's
    multi-thresholding (32 levels, ``cfg.deblend_contrast``) with SEP. Centroids x, y
    [pixels] are ``snr``-weighted within each segment; ``blended`` marks sources split
    off a larger segment."""
    import sep

    sep.set_extract_pixstack(max(300_000, snr.size))  # a tile may be one big segment
    sep.set_sub_object_limit(SUB_OBJECT_LIMIT)
    objects, segments = sep.extract(np.ascontiguousarray(smoothed, dtype=np.float32), cfg.threshold, mask=~valid,
                                    minarea=cfg.npixels, filter_kernel=None, deblend_nthresh=32,
                                    deblend_cont=cfg.deblend_contrast if cfg.deblend else 1.0, clean=False,
                                    segmentation_map=True)
    x, y = _centroids(snr, segments, len(objects))
    blended = (objects["flag"] & sep.OBJ_MERGED) > 0
    good = np.isfinite(x) & np.isfinite(y)
    return x[good], y[good], blended[good]


def _centroids(weight: np.ndarray, segments: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``weight``-weighted centroids (x, y) of segments 1..n of a segmentation map (positive weights only)."""
    label = segments.ravel()
    on = np.flatnonzero(label > 0)
    w = np.maximum(weight.ravel()[on], 0).astype(np.float64)
    yy, xx = np.divmod(on, weight.shape[1])
    idx = label[on] - 1
    total = np.bincount(idx, w, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(idx, w * xx, n) / total, np.bincount(idx, w * yy, n) / total


def stamp_origins(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left pixel of the ``size`` x ``size`` stamps centred on (x, y).

    A stamp's centre is at ``origin + (size - 1) / 2`` as in the training
    stores (a galaxy sits at the stamp centre to within half a pixel).
    """
    half = (size - 1) / 2.0
    return np.rint(np.asarray(x) - half).astype(int), np.rint(np.asarray(y) - half).astype(int)


def cut_stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Stamps ``(n, band, size, size)`` (float32) centred on (x, y) of ``image`` ``(band, ny, nx)``.

    One fancy index per band into a preallocated array (no padded copy of the image);
    pixels outside the image are NaN.
    """
    _, ny, nx = image.shape
    x0, y0 = stamp_origins(x, y, size)
    rows = y0[:, None] + np.arange(size)[None, :]
    cols = x0[:, None] + np.arange(size)[None, :]
    outside = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
    rows, cols = np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]
    stamps = np.empty((len(x0), image.shape[0], size, size), dtype=np.float32)
    for b, plane in enumerate(image):
        stamps[:, b] = plane[rows, cols]
    if outside.any():
        np.copyto(stamps, np.float32(np.nan), where=outside[:, None])
    return stamps


def aperture_photometry(stamps: np.ndarray, errors: np.ndarray, radius_pix: float) -> tuple[np.ndarray, np.ndarray]:
    """Flux [nJy] and its error in a circular aperture at the centre of stamps ``(n, band, y, x)``.

    NaN pixels count as zero flux (and are flagged by the caller); the error
    is the quadrature sum of the per-pixel errors.
    """
    ap = circular_aperture(stamps.shape[-1], radius_pix)
    flux = np.nansum(stamps[..., ap], axis=-1)
    err = np.sqrt(np.nansum(errors[..., ap] ** 2, axis=-1))
    return flux, err


__all__ = ["Tile", "aperture_photometry", "cut_stamps", "detect", "detection_image", "find_sources",
           "make_tiles", "smooth", "stamp_origins"]

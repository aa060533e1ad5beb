"""Tiles, source detection, photometry and stamps on a piece of a mosaic.

A mosaic is cut into tiles (the store's chunks by default). A tile task reads
its tile plus a halo, detects sources on a noise-weighted detection image,
and keeps the sources whose centroid lies in the tile's *core*: every source
belongs to exactly one tile, whatever boundary it sits on. Pixels are in the
mosaic's 0-based (x, y) pixel-centre convention; fluxes in nJy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from surveydust.config import CatalogueConfig
from surveydust.instrument import circular_aperture

#: flag bits of the catalogue's ``flag`` variable
FLAGS = {"edge": 1, "masked": 2, "low_snr": 4, "out_of_distribution": 8, "blended": 16, "no_redshift": 32}


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
    """Inverse-variance weighted sum of bands ``(band, y, x)`` as a per-pixel SNR image.

    Returns the image and the mask of pixels with data in every band (NaN
    science or non-positive/NaN error anywhere masks the pixel).
    """
    valid = np.all(np.isfinite(sci) & np.isfinite(err) & (err > 0), axis=0)
    ivar = np.where(valid, 1.0 / np.where(valid, err, 1.0) ** 2, 0.0)
    num = np.where(valid, np.nan_to_num(sci), 0.0) * ivar
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(valid, num.sum(axis=0) / np.sqrt(ivar.sum(axis=0)), 0.0)
    return snr.astype(np.float32), valid


def detect(sci: np.ndarray, err: np.ndarray, cfg: CatalogueConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect sources on bands ``(band, y, x)``; return centroids x, y and a blended flag.

    The detection image (:func:`detection_image`) is smoothed with a Gaussian
    of ``cfg.smooth_fwhm_pix``, thresholded at ``cfg.threshold`` with
    ``cfg.npixels`` connected pixels, and optionally deblended. Masked pixels
    are never part of a detection. Centroids are flux-weighted on the
    unsmoothed detection image.
    """
    from astropy.convolution import Gaussian2DKernel, convolve
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources
    from photutils.utils.exceptions import NoDetectionsWarning

    snr, valid = detection_image(sci, err)
    empty = np.zeros(0)
    if not valid.any():  # a tile of NaN border (photutils refuses an all-True mask)
        return empty, empty, np.zeros(0, dtype=bool)
    smoothed = snr
    if cfg.smooth_fwhm_pix > 0:
        kernel = Gaussian2DKernel(cfg.smooth_fwhm_pix / 2.3548)
        smoothed = convolve(snr, kernel, mask=~valid, nan_treatment="fill", fill_value=0.0,
                            preserve_nan=False, normalize_kernel=True)
    with warnings.catch_warnings():  # an empty tile (e.g. all NaN) is not worth a warning
        warnings.simplefilter("ignore", NoDetectionsWarning)
        segm = detect_sources(smoothed, cfg.threshold, cfg.npixels, mask=~valid)
    if segm is None:
        return empty, empty, np.zeros(0, dtype=bool)
    parents = segm.data.copy()
    if cfg.deblend:
        segm = deblend_sources(smoothed, segm, cfg.npixels, contrast=cfg.deblend_contrast, progress_bar=False)
    cat = SourceCatalog(np.where(valid, snr, 0.0), segm, convolved_data=smoothed, mask=~valid)
    x, y = np.asarray(cat.x_centroid, float), np.asarray(cat.y_centroid, float)
    blended = _children_per_parent(parents, segm.data)[segm.labels]
    good = np.isfinite(x) & np.isfinite(y)
    return x[good], y[good], blended[good]


def _children_per_parent(parents: np.ndarray, children: np.ndarray) -> np.ndarray:
    """For each child label: whether its parent segment was split into several children."""
    on = children > 0
    pairs = np.unique(np.stack([children[on], parents[on]]), axis=1)
    n_children = np.bincount(pairs[1], minlength=parents.max() + 1)
    out = np.zeros(children.max() + 1, dtype=bool)
    out[pairs[0]] = n_children[pairs[1]] > 1
    return out


def stamp_origins(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left pixel of the ``size`` x ``size`` stamps centred on (x, y).

    A stamp's centre is at ``origin + (size - 1) / 2`` as in the training
    stores (a galaxy sits at the stamp centre to within half a pixel).
    """
    half = (size - 1) / 2.0
    return np.rint(np.asarray(x) - half).astype(int), np.rint(np.asarray(y) - half).astype(int)


def cut_stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Stamps ``(n, band, size, size)`` centred on (x, y) of ``image`` ``(band, ny, nx)``.

    Vectorised (one fancy index); pixels outside the image are NaN.
    """
    n_band, ny, nx = image.shape
    padded = np.pad(image, ((0, 0), (size, size), (size, size)), constant_values=np.nan)
    x0, y0 = stamp_origins(x, y, size)
    rows = (y0 + size)[:, None] + np.arange(size)[None, :]
    cols = (x0 + size)[:, None] + np.arange(size)[None, :]
    rows = np.clip(rows, 0, ny + 2 * size - 1)
    cols = np.clip(cols, 0, nx + 2 * size - 1)
    stamps = padded[:, rows[:, :, None], cols[:, None, :]]  # (band, n, size, size)
    return np.ascontiguousarray(stamps.transpose(1, 0, 2, 3), dtype=np.float32)


def aperture_photometry(stamps: np.ndarray, errors: np.ndarray, radius_pix: float) -> tuple[np.ndarray, np.ndarray]:
    """Flux [nJy] and its error in a circular aperture at the centre of stamps ``(n, band, y, x)``.

    NaN pixels count as zero flux (and are flagged by the caller); the error
    is the quadrature sum of the per-pixel errors.
    """
    ap = circular_aperture(stamps.shape[-1], radius_pix)
    flux = np.nansum(stamps[..., ap], axis=-1)
    err = np.sqrt(np.nansum(errors[..., ap] ** 2, axis=-1))
    return flux, err


__all__ = ["FLAGS", "Tile", "aperture_photometry", "cut_stamps", "detect", "detection_image", "make_tiles",
           "stamp_origins"]

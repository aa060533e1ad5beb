"""Pure image transforms of training images: dihedral rotations and flips, extra noise, HOG.

Arrays in, arrays out: no Dask, no store, no cluster. The store writer
(:mod:`surveydust.augment`), per-batch augmentation (:mod:`surveydust.train`)
and the held-out set (:mod:`surveydust.evaluation.heldout`) all take their
transforms from here, so a copy made on disk and a copy made in a batch are
the same image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from surveydust.errors import InputError

__all__ = [
    "HOG_CELL",
    "HOG_ORIENTATIONS",
    "TRANSFORMS",
    "allowed_transforms",
    "apply_transform",
    "extra_noise_sigma",
    "hog_image",
]

#: dihedral transform codes (``transform`` coordinate). Rotations are
#: ``np.rot90(image, k, axes=(y, x))``, i.e. k x 90 degrees counter-clockwise as
#: numpy prints an array (clockwise when shown with ``origin="lower"``); the flip
#: reverses the x axis (left-right) and comes *before* the rotation.
TRANSFORMS: dict[int, str] = {
    0: "identity",
    1: "rot90",
    2: "rot180",
    3: "rot270",
    4: "fliplr",
    5: "fliplr+rot90",
    6: "fliplr+rot180",
    7: "fliplr+rot270",
}

#: HOG image: cell size [pixels] and number of unsigned orientation bins (0-180 deg)
HOG_CELL = 4
HOG_ORIENTATIONS = 9


def allowed_transforms(rotations: bool, flips: bool) -> np.ndarray:
    """Transform codes made for every sample.

    Parameters
    ----------
    rotations : bool
        Include the rotations by 90, 180 and 270 degrees (codes 1, 2, 3).
    flips : bool
        Include the left-right flip (4), and with ``rotations`` the flipped-then-rotated
        copies (5, 6, 7).

    Returns
    -------
    numpy.ndarray
        int8 codes of :data:`TRANSFORMS`: {0}, {0, 4}, {0, 1, 2, 3} or 0..7.
    """
    codes = [0]
    if rotations:
        codes += [1, 2, 3]
    if flips:
        codes += [4, 5, 6, 7] if rotations else [4]
    return np.array(codes, dtype=np.int8)


def apply_transform(image: np.ndarray, code: int) -> np.ndarray:
    """Apply dihedral transform ``code`` to the last two axes (y, x) of ``image``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(..., y, x)`` array in any units (flux per pixel [nJy] for stamps).
    code : int
        Transform code of :data:`TRANSFORMS` (0..7).

    Returns
    -------
    numpy.ndarray
        The transformed image, same units (a view where numpy allows it).

    Raises
    ------
    ValueError
        For a code not in :data:`TRANSFORMS`.
    """
    if code not in TRANSFORMS:
        raise InputError(f"unknown transform code {code}; known: {sorted(TRANSFORMS)}")
    if code >= 4:
        image = image[..., ::-1]
    return np.rot90(image, code % 4, axes=(-2, -1))


def extra_noise_sigma(ds: xr.Dataset, bands: Sequence[str], factor: float, store: Any) -> np.ndarray | None:
    """Per-band sigma [nJy per pixel] of the extra Gaussian noise added to augmented copies.

    Parameters
    ----------
    ds : xarray.Dataset
        An open training store, with ``noise_sigma(band)`` [nJy] when it records one.
    bands : sequence of str
        Bands to take, in this order.
    factor : float
        Multiple of the store's per-pixel noise sigma to add (dimensionless).
    store : Any
        The store's path, named in the warning.

    Returns
    -------
    numpy.ndarray or None
        ``factor`` x ``noise_sigma`` [nJy] of ``bands`` (float64), or None, with a
        warning, when the store records no ``noise_sigma``.
    """
    if "noise_sigma" not in ds or ds["noise_sigma"].dims != ("band",):
        warnings.warn(f"training store {store} records no noise_sigma; no extra noise is added",
                      UserWarning, stacklevel=3)
        return None
    return factor * np.asarray(ds["noise_sigma"].sel(band=list(bands)).values, np.float64)


def _hog_stencils(cell: int, n_orient: int) -> np.ndarray:
    """(n_orient, cell, cell) anti-aliased line through the cell centre, along the edge
    direction (perpendicular to the gradient) of each orientation bin; peak 1."""
    c = (cell - 1) / 2
    yy, xx = np.mgrid[0:cell, 0:cell] - c
    out = np.empty((n_orient, cell, cell))
    for b in range(n_orient):
        theta = (b + 0.5) * np.pi / n_orient  # gradient direction of the bin centre
        # distance of each pixel centre from the line through the centre along the
        # edge, i.e. |projection on the gradient direction|
        dist = np.abs(xx * np.cos(theta) + yy * np.sin(theta))
        out[b] = np.clip(1.0 - dist, 0.0, 1.0)
    return out


def hog_image(images: np.ndarray, cell: int = HOG_CELL, n_orient: int = HOG_ORIENTATIONS) -> np.ndarray:
    """Histogram-of-oriented-gradients picture of ``images``.

    Gradients by central differences (:func:`numpy.gradient`); per cell of
    ``cell`` x ``cell`` pixels the gradient magnitudes are summed into
    ``n_orient`` unsigned orientation bins (0-180 degrees). Each cell of the
    output draws, for each bin, a line through the cell centre along the edge
    direction (perpendicular to the bin's gradient direction) with intensity
    equal to that bin's sum -- the usual HOG visualisation (as scikit-image's
    ``hog(..., visualize=True)``), without block normalisation. Edges that do
    not fill a whole cell are zero-padded.

    Parameters
    ----------
    images : numpy.ndarray
        ``(..., y, x)`` images (flux per pixel, e.g. [nJy]).
    cell : int
        Cell edge [pixels].
    n_orient : int
        Number of orientation bins over 0-180 degrees.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``images``, in the images' units per pixel.
    """
    images = np.asarray(images, dtype=np.float32)
    ny, nx = images.shape[-2:]
    py, px = -ny % cell, -nx % cell
    if py or px:
        pad = [(0, 0)] * (images.ndim - 2) + [(0, py), (0, px)]
        images = np.pad(images, pad)
    gy, gx = np.gradient(images, axis=(-2, -1))
    mag = np.hypot(gx, gy)
    theta = np.mod(np.arctan2(gy, gx), np.pi)
    which = np.minimum((theta * (n_orient / np.pi)).astype(np.int64), n_orient - 1)
    lead = images.shape[:-2]
    n_img = int(np.prod(lead, dtype=np.int64))
    ncy, ncx = images.shape[-2] // cell, images.shape[-1] // cell
    # flat histogram index (image, cell_y, cell_x, orientation) of every pixel
    cell_id = (np.arange(ncy * cell)[:, None] // cell) * ncx + np.arange(ncx * cell)[None, :] // cell
    index = (np.arange(n_img)[:, None, None] * (ncy * ncx) + cell_id) * n_orient
    index = index + which.reshape(n_img, ncy * cell, ncx * cell)
    hist = np.bincount(index.ravel(), weights=mag.ravel().astype(np.float64),
                       minlength=n_img * ncy * ncx * n_orient)
    hist = hist.reshape(n_img * ncy * ncx, n_orient)
    stencils = _hog_stencils(cell, n_orient).reshape(n_orient, cell * cell)
    pic = (hist @ stencils).reshape(n_img, ncy, ncx, cell, cell).transpose(0, 1, 3, 2, 4)
    pic = pic.reshape(*lead, ncy * cell, ncx * cell)
    return pic[..., :ny, :nx].astype(np.float32)

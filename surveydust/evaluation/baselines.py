"""Baselines without the images' morphology: trees on aperture colours and Meurer's UV slope.

The colour baseline (``baseline (colours)``) is a gradient-boosted tree per
target on integrated photometry only: log10 aperture fluxes and all colours of
the widest bundle's bands (and the redshift when that bundle takes it), trained
on that bundle's training galaxies. What the CNNs gain over it is what the
images' morphology adds. ``Meurer (UV slope)`` is A_V from the UV slope of the
aperture fluxes at the true redshift (:mod:`surveydust.uvslope`), where the store
has at least two bands bluer than F277W.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from surveydust.evaluation.heldout import (
    BLOCK_SAMPLES,
    Plan,
    constant_guesses,
    held_out,
    image_blocks,
    result_dataset,
    truths,
)
from surveydust.posterior import LOG_OFFSETS
from surveydust.preprocess import NORM_APERTURE_PIX, colour_features, select_samples
from surveydust.quantities import MIN_PREDICTED_EBV_FOR_RV, PREDICTED, r_v
from surveydust.stores.training import open_training_store

logger = logging.getLogger(__name__)

BASELINE = "baseline (colours)"
MEURER = "Meurer (UV slope)"
BASELINE_APERTURE_ARCSEC = 0.25  # radius of the baseline's photometry aperture
UV_BANDS = ("F090W", "F115W", "F150W", "F200W")  # bands bluer than F277W, for Meurer's UV slope


def _aperture_radius_pix(ds: xr.Dataset) -> float:
    """The baseline aperture's radius [pixels] in the store's pixel scale."""
    scale = ds.attrs.get("pixel_scale_arcsec")
    return BASELINE_APERTURE_ARCSEC / float(scale) if scale else NORM_APERTURE_PIX


def colour_baseline_features(ds: xr.Dataset, idx: np.ndarray, bands: Sequence[str], crop: int,
                             with_z: bool, block_samples: int = BLOCK_SAMPLES,
                             transforms: np.ndarray | None = None) -> np.ndarray:
    """The colour baseline's features of samples ``idx``.

    Parameters
    ----------
    ds : xarray.Dataset
        A training store.
    idx : numpy.ndarray
        Store indices.
    bands : sequence of str
        The bands measured.
    crop : int
        Side [pixels] of the centred crop the photometry is measured on.
    with_z : bool
        Append the true redshift as a last feature.
    block_samples : int, optional
        Samples read at once.
    transforms : numpy.ndarray, optional
        A dihedral transform code per sample (a ``paper``-protocol test set).

    Returns
    -------
    numpy.ndarray
        ``(len(idx), n_features)``: log10 fluxes [nJy] in 0.25" apertures, all
        colours [mag] and, ``with_z``, the redshift.
    """
    radius = _aperture_radius_pix(ds)
    x = np.concatenate([colour_features(images, crop, radius)
                        for images in image_blocks(ds, idx, bands, block_samples, transforms)])
    return np.column_stack([x, truths(ds, idx)["redshift"]]) if with_z else x


def _training_samples(plan: Plan) -> tuple[xr.Dataset, np.ndarray] | None:
    """The bundle's training store and its training samples (None when the store is gone)."""
    recorded = plan.predictor.meta.get("training_store", {})
    path = Path(recorded.get("path", ""))
    try:
        train_ds = open_training_store(path)
    except (ValueError, FileNotFoundError, OSError):
        logger.warning("baseline skipped: %s's training store %s cannot be opened", plan.name, path)
        return None
    if train_ds.attrs.get("store_id") != recorded.get("store_id"):
        logger.warning("baseline skipped: %s now holds another store than %s was trained on", path, plan.name)
        return None
    selected = select_samples(train_ds, plan.cfg)
    gid = train_ds["galaxy_id"].values[selected]
    train = selected[~np.isin(gid, plan.not_training())]
    if plan.protocol == "paper":
        test = np.asarray(plan.split["paper_test"], dtype=np.int64).reshape(-1, 2)[:, 0]
        train = train[~np.isin(train, test)]
    return (train_ds, train) if train.size else None


def fit_colour_baseline(x_train: np.ndarray, y_train: dict[str, np.ndarray], x_test: np.ndarray,
                        targets: Sequence[str]) -> dict[str, np.ndarray]:
    """Fit one gradient-boosted tree per target and predict ``x_test``.

    Parameters
    ----------
    x_train, x_test : numpy.ndarray
        ``(n, n_features)`` features of :func:`colour_baseline_features`.
    y_train : dict of str to numpy.ndarray
        ``(n,)`` training labels per target (A_V and E(B-V) [mag], log sSFR [log10(yr^-1)]).
    targets : sequence of str
        The targets fitted.

    Returns
    -------
    dict of str to numpy.ndarray
        Predictions per target for ``x_test``, in its units; the non-negative
        targets (A_V, E(B-V)) floored at 0.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    return {t: np.maximum(HistGradientBoostingRegressor(random_state=0).fit(x_train, y_train[t]).predict(x_test),
                          0.0 if t in LOG_OFFSETS else -np.inf) for t in targets}


def baselines(ds: xr.Dataset, plan: Plan, block_samples: int) -> dict[str, xr.Dataset]:
    """The baselines on the held-out samples of ``plan``.

    Parameters
    ----------
    ds : xarray.Dataset
        The training store evaluated on.
    plan : Plan
        The widest bundle: its bands, its training galaxies (the trees' training
        set) and whether it takes redshifts (so do the trees).
    block_samples : int
        Samples read at once.

    Returns
    -------
    dict of str to xarray.Dataset
        Results (:func:`surveydust.evaluation.heldout.result_dataset`) of
        :data:`BASELINE` (``+z`` when with redshift; left out when the bundle's
        training store is gone) and :data:`MEURER` (left out without UV bands).
    """
    found = _training_samples(plan)
    out: dict[str, xr.Dataset] = {}
    test, transforms = held_out(ds, plan)
    p, with_z = plan.predictor, plan.predictor.uses_redshift
    attrs = {"bundle": "", "bands": "+".join(p.bands), "model_id": "", "held_out": int(plan.same_store),
             **constant_guesses(p)}
    if found is not None:
        train_ds, train = found
        x_train = colour_baseline_features(train_ds, train, p.bands, p.crop, with_z, block_samples)
        x_test = colour_baseline_features(ds, test, p.bands, p.crop, with_z, block_samples, transforms)
        means = fit_colour_baseline(x_train, truths(train_ds, train), x_test,
                                    [t for t in PREDICTED if t in p.targets])
        if {"A_V", "EBV"} <= set(means):
            means["R_V"] = r_v(means["A_V"], means["EBV"], MIN_PREDICTED_EBV_FOR_RV)
        logger.info("baseline: trained on %d samples (%d galaxies), %d features of bands %s%s", train.size,
                    np.unique(train_ds["galaxy_id"].values[train]).size, x_train.shape[1], "+".join(p.bands),
                    " and z" if with_z else "")
        out[BASELINE + (" +z" if with_z else "")] = result_dataset(ds, test, means, attrs)
    meurer = meurer_a_v(ds, test, block_samples, transforms)
    if meurer is not None:
        out[MEURER] = result_dataset(ds, test, {"A_V": meurer}, {**attrs, "bands": "UV bands at the true z"})
    return out


def meurer_a_v(ds: xr.Dataset, idx: np.ndarray, block_samples: int,
               transforms: np.ndarray | None) -> np.ndarray | None:
    """Meurer's A_V from the UV slope of the aperture fluxes at the true redshift.

    Parameters
    ----------
    ds : xarray.Dataset
        A training store (with ``noise_sigma`` per band [nJy per pixel]).
    idx : numpy.ndarray
        Store indices.
    block_samples : int
        Samples read at once.
    transforms : numpy.ndarray or None
        A dihedral transform code per sample.

    Returns
    -------
    numpy.ndarray or None
        ``(len(idx),)`` A_V [mag]; None without ``noise_sigma`` or at least two
        of :data:`UV_BANDS`.
    """
    from surveydust.uvslope import uv_slopes

    bands = [str(b) for b in ds["band"].values]
    if sum(b in UV_BANDS for b in bands) < 2 or "noise_sigma" not in ds:
        return None
    radius = _aperture_radius_pix(ds)
    flux = np.concatenate([10 ** colour_features(im, ds.sizes["x"], radius)[:, :len(bands)]
                           for im in image_blocks(ds, idx, bands, block_samples, transforms)])
    npix = np.pi * radius**2
    err = np.broadcast_to(ds["noise_sigma"].values[None, :] * np.sqrt(npix), flux.shape)
    return uv_slopes(flux, err, bands, truths(ds, idx)["redshift"])["A_V_meurer"]

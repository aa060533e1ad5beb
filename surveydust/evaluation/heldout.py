"""Rebuild each bundle's held-out samples from its ``bundle.json`` and predict them.

For every bundle the samples it never saw are rebuilt: its training config's
selection (SNR cut, finite pixels and labels) applied to the store, then only
the galaxies of its test split. When the store is not the one the bundle was
trained on there is no split to honour: all selected samples are used, a
warning is logged and the result's ``held_out`` is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.bundle import Predictor
from surveydust.config import TrainingConfig, load_training_config
from surveydust.errors import InputError
from surveydust.posterior import LEVEL_NAMES
from surveydust.preprocess import select_samples
from surveydust.quantities import PREDICTED, SCORED, r_v
from surveydust.transforms import apply_transform

logger = logging.getLogger(__name__)

BLOCK_SAMPLES = 16384  # samples read and predicted at once (3 bands x 32^2 float32: 200 MB)
SNR_BAND = "F277W"  # the selection band of every shipped bundle


@dataclass(frozen=True)
class Plan:
    """One bundle with its training config and the samples its selection keeps.

    Attributes
    ----------
    name : str
        The model's column name (:func:`model_name`, made distinct).
    predictor : surveydust.bundle.Predictor
        The loaded bundle.
    cfg : surveydust.config.TrainingConfig
        Its training config (the selection to rebuild).
    selected : numpy.ndarray
        Store indices its selection keeps.
    same_store : bool
        Whether the store is the one it was trained on (its split applies).
    """

    name: str
    predictor: Predictor
    cfg: TrainingConfig
    selected: np.ndarray
    same_store: bool

    @property
    def split(self) -> dict[str, Any]:
        """The bundle's recorded split (galaxy ids per part, its protocol)."""
        return self.predictor.meta["split"]

    @property
    def protocol(self) -> str:
        """``galaxy`` (split by galaxy) or ``paper`` (augment, then split samples at random)."""
        return self.split.get("protocol", "galaxy")

    def not_training(self) -> np.ndarray:
        """Galaxy ids that training never saw: test, validation and calibration."""
        return np.concatenate([np.asarray(self.split.get(k, []), dtype=np.int64) for k in
                               ("test_galaxies", "validation_galaxies", "calibration_galaxies")])


def model_name(bands: Sequence[str]) -> str:
    """Column name of a CNN, e.g. ``CNN F277W+F356W+F444W``."""
    return "CNN " + "+".join(bands)


def _model_names(predictors: Sequence[Predictor]) -> list[str]:
    names = [model_name(p.bands) + (" [paper split]" if p.meta["split"].get("protocol") == "paper" else "")
             for p in predictors]
    return [f"{n} [{p.model_id[:8]}]" if names.count(n) > 1 else n for n, p in zip(names, predictors)]


def _training_config(p: Predictor) -> TrainingConfig:
    stored = p.meta.get("training_config")
    if stored is None:
        logger.warning("bundle %s has no training config: default selection for its bands", p.path)
        return load_training_config(bands=list(p.bands), targets=list(p.targets), crop=p.crop)
    return load_training_config(**stored)


def _check_bands(ds: xr.Dataset, p: Predictor, store: Path) -> None:
    have = [str(b) for b in ds["band"].values]
    missing = [b for b in p.bands if b not in have]
    if missing:
        raise InputError(f"bundle {p.path} needs band(s) {missing}, which store {store} lacks "
                         f"(it has {have})")


def plans(ds: xr.Dataset, predictors: list[Predictor], store: Path) -> list[Plan]:
    """A :class:`Plan` per bundle, one pass over the store's images per distinct selection.

    Parameters
    ----------
    ds : xarray.Dataset
        The training store evaluated on.
    predictors : list of surveydust.bundle.Predictor
        The loaded bundles.
    store : pathlib.Path
        The store's path (for messages).

    Returns
    -------
    list of Plan
        In the order of ``predictors``.

    Raises
    ------
    ValueError
        When a bundle needs a band the store lacks.
    """
    out, selections = [], {}
    for name, p in zip(_model_names(predictors), predictors):
        _check_bands(ds, p, store)
        cfg = _training_config(p)
        key = (cfg.bands, cfg.targets, cfg.snr_band, cfg.snr_min)
        if key not in selections:
            selections[key] = select_samples(ds, cfg)
        same = ds.attrs.get("store_id") == p.meta.get("training_store", {}).get("store_id")
        if not same:
            logger.warning("%s (%s) was not trained on store %s: evaluating on all its selected samples "
                           "(held out only if the store holds other galaxies, e.g. another seed)",
                           name, p.path, store)
        elif p.meta["split"].get("protocol") == "paper":
            logger.warning("%s was trained with the paper's protocol (augment, then split samples at "
                           "random): rotated copies of its test images were in its training set, so its "
                           "scores are not those of unseen galaxies", name)
        out.append(Plan(name, p, cfg, selections[key], same))
    return out


def held_out(ds: xr.Dataset, plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples to evaluate ``plan`` on.

    Parameters
    ----------
    ds : xarray.Dataset
        The training store evaluated on.
    plan : Plan
        The bundle and its selection.

    Returns
    -------
    idx : numpy.ndarray
        Store indices: the test galaxies' selected samples on the bundle's own
        store (its random test samples for a ``paper``-protocol bundle), every
        selected sample on another store.
    transforms : numpy.ndarray or None
        The dihedral transform code of each sample of a ``paper``-protocol test
        set; None otherwise.

    Raises
    ------
    ValueError
        When no sample remains.
    """
    transforms = None
    if not plan.same_store:
        idx = plan.selected
    elif plan.protocol == "paper":
        pairs = np.asarray(plan.split["paper_test"], dtype=np.int64).reshape(-1, 2)
        idx, transforms = pairs[:, 0], pairs[:, 1]
    else:
        gid = ds["galaxy_id"].values[plan.selected]
        idx = plan.selected[np.isin(gid, plan.split["test_galaxies"])]
    if idx.size == 0:
        raise InputError(f"no held-out samples for {plan.name} ({plan.predictor.path}): none of its "
                         f"test galaxies pass its selection in this store")
    return idx, transforms


def image_blocks(ds: xr.Dataset, idx: np.ndarray, bands: Sequence[str], block_samples: int = BLOCK_SAMPLES,
                 transforms: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The images of samples ``idx``, ``block_samples`` at a time.

    Parameters
    ----------
    ds : xarray.Dataset
        A training store.
    idx : numpy.ndarray
        Store indices (repeats allowed).
    bands : sequence of str
        The bands, in the order wanted.
    block_samples : int, optional
        Samples read per block.
    transforms : numpy.ndarray, optional
        A dihedral transform code per sample of ``idx``
        (:func:`surveydust.transforms.apply_transform`).

    Yields
    ------
    numpy.ndarray
        ``(n, band, y, x)`` float32 images [nJy], in the order of ``idx``.
    """
    image = ds["image"].sel(band=list(bands))
    for start in range(0, idx.size, block_samples):
        part = idx[start:start + block_samples]
        uniq, inverse = np.unique(part, return_inverse=True)
        block = np.asarray(image.isel(sample=uniq).values, dtype=np.float32)[inverse]
        if transforms is not None:
            block = np.stack([apply_transform(im, int(c))
                              for im, c in zip(block, transforms[start:start + block_samples])])
        yield block


def truths(ds: xr.Dataset, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The true labels of samples ``idx``.

    Parameters
    ----------
    ds : xarray.Dataset
        A training store.
    idx : numpy.ndarray
        Store indices (repeats allowed).

    Returns
    -------
    dict of str to numpy.ndarray
        ``A_V`` and ``EBV`` [mag], ``log_ssfr`` [log10(yr^-1)], ``redshift``,
        ``snr`` (in :data:`SNR_BAND`; NaN when the store lacks it) and ``R_V`` =
        A_V / E(B-V) (NaN where E(B-V) <= 1e-4 mag), each ``(len(idx),)``.
    """
    uniq, inverse = np.unique(idx, return_inverse=True)
    labels = ds[[*PREDICTED, "redshift"]].isel(sample=uniq).compute()
    out = {t: labels[t].values.astype(np.float64)[inverse] for t in (*PREDICTED, "redshift")}
    out["snr"] = ds["snr"].sel(band=SNR_BAND).values[uniq][inverse] if SNR_BAND in ds["band"].values \
        else np.full(idx.size, np.nan)
    out["R_V"] = r_v(out["A_V"], out["EBV"])
    return out


def predict_plan(ds: xr.Dataset, plan: Plan, block_samples: int, with_z: bool) -> xr.Dataset:
    """The bundle of ``plan`` on its held-out samples (:func:`held_out`).

    Parameters
    ----------
    ds : xarray.Dataset
        The training store evaluated on.
    plan : Plan
        The bundle and its selection.
    block_samples : int
        Samples read and predicted at once.
    with_z : bool
        Give the network the true redshifts (only for a bundle that takes them).

    Returns
    -------
    xarray.Dataset
        Truths and predictions (:func:`result_dataset`) with attrs ``bundle``,
        ``bands``, ``model_id``, ``held_out`` and the constant guesses.
    """
    idx, transforms = held_out(ds, plan)
    p = plan.predictor
    z = truths(ds, idx)["redshift"] if with_z else None
    preds = []
    for i, images in enumerate(image_blocks(ds, idx, p.bands, block_samples, transforms)):
        preds.append(p.predict(images, None if z is None else z[i * block_samples:i * block_samples + len(images)]))
    pred = xr.concat(preds, dim="sample")
    columns = {v: pred[v].values.astype(np.float64) for v in pred.data_vars}
    attrs = {"bundle": str(p.path), "bands": "+".join(p.bands), "model_id": p.model_id,
             "held_out": int(plan.same_store), **constant_guesses(p)}
    result = result_dataset(ds, idx, columns, attrs)
    logger.info("%s%s: %d samples of %d galaxies; MAE %s", plan.name, " +z" if with_z else "", idx.size,
                np.unique(result["galaxy_id"].values).size,
                ", ".join(f"{t} {np.nanmean(np.abs(result[t] - result[f'true_{t}'])):.3g}" for t in p.targets))
    return result


def constant_guesses(p: Predictor) -> dict[str, float]:
    """The bundle's constant guesses (training medians, units of each target) as ``constant_<T>`` attrs."""
    return {f"constant_{t}": float(v) for t, v in p.meta.get("constant_guess", {}).items()}


def result_dataset(ds: xr.Dataset, idx: np.ndarray, columns: dict[str, np.ndarray],
                   attrs: dict[str, Any]) -> xr.Dataset:
    """One model's evaluation result: truths and predictions over samples ``idx``.

    Parameters
    ----------
    ds : xarray.Dataset
        The training store evaluated on.
    idx : numpy.ndarray
        Store indices of the samples.
    columns : dict of str to numpy.ndarray
        Predicted columns (``<T>``, ``<T>_err``, ``<T>_p16`` ...) in the units
        of each quantity; those missing are NaN.
    attrs : dict
        Attributes of the result (bundle, bands, constant guesses ...).

    Returns
    -------
    xarray.Dataset
        Over ``sample`` (coordinates ``galaxy_id``, ``store_index``): ``snr``,
        ``true_<T>`` and the predicted columns of every quantity of
        :data:`surveydust.quantities.SCORED`.
    """
    true = truths(ds, idx)
    nan = np.full(idx.size, np.nan)
    res = xr.Dataset(coords={"sample": np.arange(idx.size),
                             "galaxy_id": ("sample", ds["galaxy_id"].values[idx]),
                             "store_index": ("sample", idx)})
    res["snr"] = ("sample", true["snr"])
    for t in SCORED:
        res[f"true_{t}"] = ("sample", true[t])
        for v in (t, f"{t}_err", *(f"{t}_{n}" for n in LEVEL_NAMES if n != "p50")):
            res[v] = ("sample", columns.get(v, nan))
    res.attrs.update(attrs)
    return res


def warn_if_samples_differ(results: dict[str, xr.Dataset]) -> None:
    """Log a warning when the models of ``results`` were evaluated on different samples."""
    sets = {name: frozenset(r["store_index"].values.tolist()) for name, r in results.items()}
    if len(set(sets.values())) > 1:
        logger.warning("the models are evaluated on different samples (different splits or selections): "
                       "%s; compare their metrics with care", {n: len(s) for n, s in sets.items()})

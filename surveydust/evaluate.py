"""Evaluate model bundles on held-out galaxies: the paper's Table 2, Figs. 6-8 and a
non-image baseline.

For every bundle the samples it never saw are rebuilt from its ``bundle.json``:
its training config's selection (SNR cut, finite pixels and labels) applied to
the store, then only the galaxies of its test split. When the store is not the
one the bundle was trained on there is no split to honour: all selected samples
are used, a warning is logged and ``held_out`` is 0 in the table.

Residuals are ``predicted - true``. Per target (E(B-V) [mag], A_V [mag], R_V
[dimensionless], log sSFR [log10(yr^-1)], residuals in dex) and model the table
gives N, MAE, MSE, standard deviation and variance (population, ddof=0, so
MSE = variance + bias^2) of the residuals, the mean residual (bias) and the
fraction of truths inside the predicted 68% and 95% Gaussian intervals
(mean +- 1 sigma, +- 1.96 sigma; NaN for models without uncertainties).

The baseline (``baseline (colours)``) is a gradient-boosted tree per target on
integrated photometry only: log10 aperture fluxes and all colours of the widest
bundle's bands, trained on that bundle's training galaxies. What the CNNs gain
over it is what the images' morphology adds.

Outputs in ``out/``: ``table.csv``, ``table.ecsv``, ``<model-slug>.png`` per
model (true vs predicted with density contours, histograms, residuals) and
``calibration.png``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

from surveydust.augment import apply_transform
from surveydust.bundle import Predictor, load_model
from surveydust.config import TrainingConfig, load_training_config
from surveydust.figures import subplots
from surveydust.posterior import LEVEL_NAMES, LEVELS, LOG_OFFSETS, coverage, crps_from_percentiles
from surveydust.preprocess import NORM_APERTURE_PIX, colour_features, select_samples
from surveydust.quantities import MIN_EBV_FOR_RV, MIN_PREDICTED_EBV_FOR_RV, PREDICTED, r_v
from surveydust.stores.base import check_output_folder, write_output_figure, write_output_table
from surveydust.stores.training import open_training_store

logger = logging.getLogger(__name__)

TARGETS = ("EBV", "A_V", "R_V", "log_ssfr")  # the order of the paper's Table 2
TARGET_LABELS = {"EBV": "E(B-V) [mag]", "A_V": "A_V [mag]", "R_V": "R_V = A_V / E(B-V)",
                 "log_ssfr": "log sSFR [yr^-1]"}
RESIDUAL_UNITS = {"EBV": "mag", "A_V": "mag", "R_V": "", "log_ssfr": "dex"}
METRICS = ("N", "MAE", "MAE_constant", "MAE_ratio", "spearman", "slope", "CRPS", "MSE", "std",
           "variance", "bias", "coverage_68", "coverage_95")
METRIC_DESCRIPTIONS = {
    "N": "samples with finite truth and prediction",
    "MAE": "mean |predicted - true|",
    "MAE_constant": "MAE of always guessing the training median (the skill-free reference)",
    "MAE_ratio": "MAE / MAE_constant (1 = no skill beyond a constant guess)",
    "spearman": "Spearman rank correlation of predicted and true",
    "slope": "least-squares slope of predicted on true (1 = unbiased; < 1: squeezed to the middle)",
    "CRPS": "continuous ranked probability score (from the 2.5/16/50/84/97.5 percentiles; "
            "NaN without posteriors)",
    "MSE": "mean (predicted - true)^2",
    "std": "standard deviation of predicted - true (ddof=0)",
    "variance": "variance of predicted - true (ddof=0)",
    "bias": "mean of predicted - true",
    "coverage_68": "fraction of truths inside the predicted 16-84% interval (nominal 0.6827)",
    "coverage_95": "fraction of truths inside the predicted 2.5-97.5% interval (nominal 0.95)",
}
NOMINAL = {"coverage_68": 0.6827, "coverage_95": 0.95}
Z_95 = 1.96
AV_BINS = (0.0, 0.1, 0.3, 0.6, 1.0, 1.5, np.inf)  # [mag] bins of true A_V for the bias table
SNR_BINS = (0.0, 10.0, 20.0, 50.0, np.inf)  # bins of SNR in the selection band
SNR_BAND = "F277W"  # the selection band of every shipped bundle
BASELINE = "baseline (colours)"
OUTPUT_KIND = "evaluation"  # the mark on the files evaluate writes (surveydust.stores.base)
#: files every evaluation writes (beside one figure per model, ``<slug>.png``)
FIXED_OUTPUTS = ("table.csv", "table.ecsv", "bias_by_av.ecsv", "skill_by_snr.ecsv", "calibration.png")
MEURER = "Meurer (UV slope)"
BASELINE_APERTURE_ARCSEC = 0.25  # radius of the baseline's photometry aperture
BLOCK_SAMPLES = 16384  # samples read and predicted at once (3 bands x 32^2 float32: 200 MB)
CONTOUR_FRACTIONS = (0.95, 0.70, 0.50, 0.30, 0.10)  # of points enclosed, outermost first
RV_NOTE = (f"R_V rows use only samples with finite true R_V (true E(B-V) > {MIN_EBV_FOR_RV:g} mag) "
           f"and finite predicted R_V (predicted E(B-V) > {MIN_PREDICTED_EBV_FOR_RV:g} mag); see its N")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` made.

    ``table``: metrics (data variables named as :data:`METRICS`) over
    ``(target, model)``; ``predictions``: per model, one Dataset over the
    evaluated samples (store ``sample`` coordinate, ``galaxy_id``) with
    ``true_<T>``, ``<T>`` and ``<T>_err`` for every target T; ``paths``:
    ``csv``, ``ecsv``, ``calibration`` and one figure per model name.
    """

    table: xr.Dataset
    predictions: dict[str, xr.Dataset]
    paths: dict[str, Path]


@dataclass(frozen=True)
class _Plan:
    """One bundle with its training config and the samples its selection keeps."""

    name: str
    predictor: Predictor
    cfg: TrainingConfig
    selected: np.ndarray
    same_store: bool

    @property
    def split(self) -> dict[str, Any]:
        return self.predictor.meta["split"]

    @property
    def protocol(self) -> str:
        return self.split.get("protocol", "galaxy")

    def not_training(self) -> np.ndarray:
        """Galaxy ids that training never saw: test, validation and calibration."""
        return np.concatenate([np.asarray(self.split.get(k, []), dtype=np.int64) for k in
                               ("test_galaxies", "validation_galaxies", "calibration_galaxies")])


def evaluate(bundles: Sequence[Path | str], store: Path | str, out: Path | str, *,
             include_baseline: bool = True, block_samples: int = BLOCK_SAMPLES,
             overwrite: bool = False) -> Evaluation:
    """Evaluate ``bundles`` on the held-out galaxies of training store ``store``.

    On a bundle's own training store only its test galaxies are used (for a
    ``paper``-protocol bundle its random test samples, with a warning: rotated
    copies of them were trained on); on another store, e.g. one simulated with
    a fresh seed, every selected sample. A bundle that takes redshifts is
    scored with them (``+z``) and without (``no z``). Beside the CNNs: the
    constant guess (training median, ``MAE_constant``), a gradient-boosting
    baseline on aperture colours of the widest bundle's bands (and z when it
    takes z) fitted on that bundle's training galaxies, and Meurer's A_V from
    the UV slope when the store has short-wavelength bands.

    Writes ``table.csv``, ``table.ecsv``, ``bias_by_av.ecsv``, a figure per
    model and ``calibration.png`` into ``out`` (created if missing). Images are
    read and predicted ``block_samples`` at a time. Raises ValueError when a
    bundle needs a band the store lacks or no held-out sample remains.

    Files of those names already in ``out`` are refused unless ``overwrite``,
    and even then replaced only when an earlier ``evaluate`` wrote them; ``out``
    must not be or lie inside a bundle, the store or any other surveydust store
    (:func:`surveydust.stores.base.check_output_folder`; the fixed names are
    checked before any work, the per-model figures before anything is written).
    """
    if not bundles:
        raise ValueError("no model bundles to evaluate")
    inputs = [*bundles, store]
    out = check_output_folder(out, FIXED_OUTPUTS, overwrite, OUTPUT_KIND, inputs=inputs)
    ds = open_training_store(store)
    with dask.config.set(scheduler="threads"):  # local reads, even when a distributed client exists
        plans = _plans(ds, [load_model(b) for b in bundles], Path(store))
        results = {}
        for p in plans:
            for with_z in (True, False) if p.predictor.uses_redshift else (False,):
                name = p.name + ((" +z" if with_z else " no z") if p.predictor.uses_redshift else "")
                results[name] = _evaluate_bundle(ds, p, block_samples, with_z)
        if include_baseline:
            widest = max(plans, key=lambda p: len(p.predictor.bands))
            results.update(_baselines(ds, widest, block_samples))
    _warn_if_samples_differ(results)
    table = metrics_table(results)
    check_output_folder(out, [f"{slug(name)}.png" for name in results], overwrite, OUTPUT_KIND, inputs=inputs)
    paths = write_table(table, out)
    for key, by, bins in (("bias_by_av", "true_A_V", AV_BINS), ("skill_by_snr", "snr", SNR_BINS)):
        paths[key] = write_output_table(binned_skill(results, by, bins), out / f"{key}.ecsv", OUTPUT_KIND)
    for name, result in results.items():
        paths[name] = plot_model(result, name, out / f"{slug(name)}.png")
    paths["calibration"] = plot_calibration(table, out / "calibration.png")
    return Evaluation(table=table, predictions=results, paths=paths)


# ---------------------------------------------------------------- samples and predictions


def model_name(bands: Sequence[str]) -> str:
    """Column name of a CNN, e.g. ``CNN F277W+F356W+F444W``."""
    return "CNN " + "+".join(bands)


def slug(name: str) -> str:
    """File-name form of a model name: ``CNN F277W+F356W`` -> ``cnn-f277w-f356w``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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
        raise ValueError(f"bundle {p.path} needs band(s) {missing}, which store {store} lacks "
                         f"(it has {have})")


def _plans(ds: xr.Dataset, predictors: list[Predictor], store: Path) -> list[_Plan]:
    plans, selections = [], {}  # one pass over the images per distinct selection
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
        plans.append(_Plan(name, p, cfg, selections[key], same))
    return plans


def _held_out(ds: xr.Dataset, plan: _Plan) -> tuple[np.ndarray, np.ndarray | None]:
    """Store indices (and dihedral transforms, for a paper-protocol test) to evaluate ``plan`` on."""
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
        raise ValueError(f"no held-out samples for {plan.name} ({plan.predictor.path}): none of its "
                         f"test galaxies pass its selection in this store")
    return idx, transforms


def image_blocks(ds: xr.Dataset, idx: np.ndarray, bands: Sequence[str],
                 block_samples: int = BLOCK_SAMPLES,
                 transforms: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Images ``(n, band, y, x)`` [nJy] of samples ``idx`` (each turned by its dihedral
    ``transforms`` code when given), ``block_samples`` at a time."""
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
    """True labels of samples ``idx``; R_V = A_V / E(B-V), NaN where E(B-V) <= 1e-4 mag."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    labels = ds[[*PREDICTED, "redshift"]].isel(sample=uniq).compute()
    out = {t: labels[t].values.astype(np.float64)[inverse] for t in (*PREDICTED, "redshift")}
    out["snr"] = ds["snr"].sel(band=SNR_BAND).values[uniq][inverse] if SNR_BAND in ds["band"].values \
        else np.full(idx.size, np.nan)
    out["R_V"] = r_v(out["A_V"], out["EBV"])
    return out


def _evaluate_bundle(ds: xr.Dataset, plan: _Plan, block_samples: int, with_z: bool) -> xr.Dataset:
    idx, transforms = _held_out(ds, plan)
    p = plan.predictor
    z = truths(ds, idx)["redshift"] if with_z else None
    preds = []
    for i, images in enumerate(image_blocks(ds, idx, p.bands, block_samples, transforms)):
        preds.append(p.predict(images, None if z is None else z[i * block_samples:i * block_samples + len(images)]))
    pred = xr.concat(preds, dim="sample")
    columns = {v: pred[v].values.astype(np.float64) for v in pred.data_vars}
    attrs = {"bundle": str(p.path), "bands": "+".join(p.bands), "model_id": p.model_id,
             "held_out": int(plan.same_store), **_constants(p)}
    result = _result(ds, idx, columns, attrs)
    logger.info("%s%s: %d samples of %d galaxies; MAE %s", plan.name, " +z" if with_z else "", idx.size,
                np.unique(result["galaxy_id"].values).size,
                ", ".join(f"{t} {np.nanmean(np.abs(result[t] - result[f'true_{t}'])):.3g}" for t in p.targets))
    return result


def _constants(p: Predictor) -> dict[str, float]:
    """The bundle's constant guesses (training medians) as ``constant_<T>`` attrs."""
    return {f"constant_{t}": float(v) for t, v in p.meta.get("constant_guess", {}).items()}


def _result(ds: xr.Dataset, idx: np.ndarray, columns: dict[str, np.ndarray], attrs: dict[str, Any]) -> xr.Dataset:
    """Truths and predicted columns (``<T>``, ``<T>_err``, ``<T>_p16``...; NaN where missing)
    over samples ``idx``."""
    true = truths(ds, idx)
    nan = np.full(idx.size, np.nan)
    res = xr.Dataset(coords={"sample": np.arange(idx.size),
                             "galaxy_id": ("sample", ds["galaxy_id"].values[idx]),
                             "store_index": ("sample", idx)})
    res["snr"] = ("sample", true["snr"])
    for t in TARGETS:
        res[f"true_{t}"] = ("sample", true[t])
        for v in (t, f"{t}_err", *(f"{t}_{n}" for n in LEVEL_NAMES if n != "p50")):
            res[v] = ("sample", columns.get(v, nan))
    res.attrs.update(attrs)
    return res


def _warn_if_samples_differ(results: dict[str, xr.Dataset]) -> None:
    sets = {name: frozenset(r["store_index"].values.tolist()) for name, r in results.items()}
    if len(set(sets.values())) > 1:
        logger.warning("the models are evaluated on different samples (different splits or selections): "
                       "%s; compare their metrics with care", {n: len(s) for n, s in sets.items()})


# ---------------------------------------------------------------- baselines


def _aperture_radius_pix(ds: xr.Dataset) -> float:
    scale = ds.attrs.get("pixel_scale_arcsec")
    return BASELINE_APERTURE_ARCSEC / float(scale) if scale else NORM_APERTURE_PIX


def colour_baseline_features(ds: xr.Dataset, idx: np.ndarray, bands: Sequence[str], crop: int,
                             with_z: bool, block_samples: int = BLOCK_SAMPLES,
                             transforms: np.ndarray | None = None) -> np.ndarray:
    """The colour baseline's features of samples ``idx``: log10 fluxes [nJy] in 0.25" apertures,
    all colours [mag] and, ``with_z``, the redshift; read ``block_samples`` at a time."""
    radius = _aperture_radius_pix(ds)
    x = np.concatenate([colour_features(images, crop, radius)
                        for images in image_blocks(ds, idx, bands, block_samples, transforms)])
    return np.column_stack([x, truths(ds, idx)["redshift"]]) if with_z else x


def _training_samples(plan: _Plan) -> tuple[xr.Dataset, np.ndarray] | None:
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
    """Predictions for ``x_test`` of one gradient-boosted tree per target fitted on ``x_train``,
    ``y_train`` (features of :func:`colour_baseline_features`); the non-negative targets (A_V, E(B-V)) floored at 0."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    return {t: np.maximum(HistGradientBoostingRegressor(random_state=0).fit(x_train, y_train[t]).predict(x_test),
                          0.0 if t in LOG_OFFSETS else -np.inf) for t in targets}


def _baselines(ds: xr.Dataset, plan: _Plan, block_samples: int) -> dict[str, xr.Dataset]:
    """Gradient-boosted trees on colours (+ z when the bundle takes z), fitted on ``plan``'s
    training galaxies; Meurer's A_V where the store has UV bands."""
    found = _training_samples(plan)
    out: dict[str, xr.Dataset] = {}
    test, transforms = _held_out(ds, plan)
    p, with_z = plan.predictor, plan.predictor.uses_redshift
    attrs = {"bundle": "", "bands": "+".join(p.bands), "model_id": "", "held_out": int(plan.same_store),
             **_constants(p)}
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
        out[BASELINE + (" +z" if with_z else "")] = _result(ds, test, means, attrs)
    meurer = _meurer(ds, test, block_samples, transforms)
    if meurer is not None:
        out[MEURER] = _result(ds, test, {"A_V": meurer}, {**attrs, "bands": "UV bands at the true z"})
    return out


def _meurer(ds: xr.Dataset, idx: np.ndarray, block_samples: int,
            transforms: np.ndarray | None) -> np.ndarray | None:
    """Meurer's A_V from the UV slope of the aperture fluxes at the true redshift (None without
    at least two bands bluer than F277W)."""
    from surveydust.uvslope import uv_slopes

    bands = [str(b) for b in ds["band"].values]
    if sum(b in ("F090W", "F115W", "F150W", "F200W") for b in bands) < 2 or "noise_sigma" not in ds:
        return None
    radius = _aperture_radius_pix(ds)
    flux = np.concatenate([10 ** colour_features(im, ds.sizes["x"], radius)[:, :len(bands)]
                           for im in image_blocks(ds, idx, bands, block_samples, transforms)])
    npix = np.pi * radius**2
    err = np.broadcast_to(ds["noise_sigma"].values[None, :] * np.sqrt(npix), flux.shape)
    return uv_slopes(flux, err, bands, truths(ds, idx)["redshift"])["A_V_meurer"]


# ---------------------------------------------------------------- metrics and table


def residual_metrics(true: np.ndarray, pred: np.ndarray, pct: np.ndarray | None = None,
                     constant: float = np.nan) -> dict[str, float]:
    """Metrics of ``pred - true`` over samples where both are finite (units of the target).

    ``pct``: the ``(n, 5)`` percentiles at :data:`surveydust.posterior.LEVELS`
    (coverage and CRPS use the samples where they are finite; NaN without);
    ``constant``: the constant guess (training median) for ``MAE_constant``.
    """
    from scipy.stats import spearmanr

    true, pred = np.asarray(true, float), np.asarray(pred, float)
    pct = np.full((true.size, len(LEVELS)), np.nan) if pct is None else np.asarray(pct, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    if r.size == 0:
        return {m: (0.0 if m == "N" else np.nan) for m in METRICS}
    t, p, q = true[ok], pred[ok], pct[ok]
    has = np.isfinite(q).all(axis=1)
    mae_const = float(np.abs(t - constant).mean()) if np.isfinite(constant) else np.nan
    mae = float(np.abs(r).mean())
    varied = r.size > 2 and np.ptp(t) > 0 and np.ptp(p) > 0
    return {"N": float(r.size), "MAE": mae, "MAE_constant": mae_const,
            "MAE_ratio": mae / mae_const if mae_const > 0 else np.nan,
            "spearman": float(spearmanr(t, p).statistic) if varied else np.nan,
            "slope": float(np.polyfit(t, p, 1)[0]) if varied else np.nan,
            "CRPS": float(crps_from_percentiles(t[has], q[has]).mean()) if has.any() else np.nan,
            "MSE": float((r**2).mean()), "std": float(r.std()), "variance": float(r.var()),
            "bias": float(r.mean()),
            "coverage_68": coverage(t[has], q[has, 1], q[has, 3]) if has.any() else np.nan,
            "coverage_95": coverage(t[has], q[has, 0], q[has, 4]) if has.any() else np.nan}


def percentile_array(result: xr.Dataset, target: str) -> np.ndarray:
    """The ``(n, 5)`` percentiles of ``target`` in an evaluation result (NaN where absent)."""
    n = result.sizes["sample"]
    cols = [result[f"{target}_{name}"].values if f"{target}_{name}" in result else
            (result[target].values if name == "p50" else np.full(n, np.nan)) for name in LEVEL_NAMES]
    return np.column_stack(cols).astype(float)


def binned_skill(results: dict[str, xr.Dataset], by: str, bins: Sequence[float],
                 target: str = "A_V") -> Any:
    """Per model in bins of ``by`` (``true_A_V`` or ``snr``): N, bias (mean predicted - true),
    MAE and Spearman of ``target`` (its units)."""
    from astropy.table import Table
    from scipy.stats import spearmanr

    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        row: list[Any] = [f"{lo:g}-{hi:g}"]
        for r in results.values():
            true, pred = r[f"true_{target}"].values, r[target].values
            inside = (r[by].values >= lo) & (r[by].values < hi) & np.isfinite(pred) & np.isfinite(true)
            t, p = true[inside], pred[inside]
            rho = spearmanr(t, p).statistic if t.size > 2 and np.ptp(p) > 0 and np.ptp(t) > 0 else np.nan
            row += [int(inside.sum()), float(np.mean(p - t)) if t.size else np.nan,
                    float(np.mean(np.abs(p - t))) if t.size else np.nan, float(rho)]
        rows.append(row)
    names = [f"{by}_bin"] + [f"{n}: {k}" for n in results for k in ("N", "bias", "MAE", "spearman")]
    out = Table(rows=rows, names=names)
    out.meta["description"] = f"{target} per model in bins of {by}: N, mean predicted - true, MAE, Spearman"
    return out


def metrics_table(results: dict[str, xr.Dataset]) -> xr.Dataset:
    """Table 2 and skill: every metric of :data:`METRICS` over ``(target, model)``."""
    names = list(results)
    values = {name: {t: residual_metrics(r[f"true_{t}"].values, r[t].values, percentile_array(r, t),
                                         float(r.attrs.get(f"constant_{t}", np.nan)))
                     for t in TARGETS} for name, r in results.items()}
    table = xr.Dataset(
        {m: (("target", "model"), np.array([[values[n][t][m] for n in names] for t in TARGETS]))
         for m in METRICS},
        coords={"target": list(TARGETS), "model": names,
                "unit": ("target", [RESIDUAL_UNITS[t] for t in TARGETS]),
                **{key: ("model", [results[n].attrs[key] for n in names])
                   for key in ("bands", "bundle", "model_id", "held_out")},
                "n_samples": ("model", [results[n].sizes["sample"] for n in names]),
                "n_galaxies": ("model", [np.unique(results[n]["galaxy_id"].values).size for n in names])})
    for m in METRICS:
        table[m].attrs["description"] = METRIC_DESCRIPTIONS[m]
    table.attrs.update(residual="predicted - true", r_v_note=RV_NOTE)
    return table


def metric_unit(metric: str, unit: str) -> str:
    """Unit of ``metric`` for a target in ``unit``: squared for MSE and variance."""
    if metric in ("N", "coverage_68", "coverage_95", "MAE_ratio", "spearman", "slope") or not unit:
        return ""
    return f"{unit}2" if metric in ("MSE", "variance") else unit


def to_astropy(table: xr.Dataset) -> Any:
    """The paper's layout: a row per (target, metric), a column per model.

    Two extra rows per model (target ``all``): ``held_out`` (1: the bundle's
    test galaxies; 0: all selected samples of a store it was not trained on)
    and ``n_galaxies``.
    """
    from astropy.table import Table

    models = [str(m) for m in table["model"].values]
    rows = [(t, m, metric_unit(m, str(table["unit"].sel(target=t).values)),
             *[float(table[m].sel(target=t, model=n)) for n in models])
            for t in TARGETS for m in METRICS]
    rows += [("all", key, "", *[float(table[key].sel(model=n)) for n in models])
             for key in ("held_out", "n_galaxies")]
    out = Table(rows=rows, names=["target", "metric", "unit", *models],
                dtype=[str, str, str, *[float] * len(models)])
    out.meta.update(_table_meta(table, models))
    for n in models:
        out[n].description = (f"bands {table['bands'].sel(model=n).item()}; bundle "
                              f"{table['bundle'].sel(model=n).item() or '(none)'}")
    return out


def _table_meta(table: xr.Dataset, models: list[str]) -> dict[str, Any]:
    return {
        "description": "Residual (predicted - true) statistics per target and model (the paper's Table 2)",
        "target_units": {t: TARGET_LABELS[t] for t in TARGETS},
        "residual_units": {t: RESIDUAL_UNITS[t] or "dimensionless" for t in TARGETS},
        "metrics": METRIC_DESCRIPTIONS,
        "r_v_note": RV_NOTE,
        "models": {n: {"bands": table["bands"].sel(model=n).item(),
                       "bundle": table["bundle"].sel(model=n).item(),
                       "model_id": table["model_id"].sel(model=n).item(),
                       "samples": ("held-out test galaxies of the bundle's training store"
                                   if table["held_out"].sel(model=n).item()
                                   else "all selected samples: the store is not the bundle's training store"),
                       "n_samples": int(table["n_samples"].sel(model=n)),
                       "n_galaxies": int(table["n_galaxies"].sel(model=n))} for n in models},
    }


def write_table(table: xr.Dataset, out: Path) -> dict[str, Path]:
    """Write ``table.csv`` and ``table.ecsv`` (with units and notes in its meta; its mark vouches for the CSV)."""
    ecsv = write_output_table(to_astropy(table), out / "table.ecsv", OUTPUT_KIND, with_csv=True)
    return {"csv": ecsv.with_suffix(".csv"), "ecsv": ecsv}


# ---------------------------------------------------------------- figures


def density_levels(density: np.ndarray, fractions: Sequence[float] = CONTOUR_FRACTIONS) -> np.ndarray:
    """Density values whose super-level sets enclose ``fractions`` of the total.

    Fractions ordered outermost (largest) first give increasing levels.
    """
    d = np.sort(density.ravel())[::-1]
    cum = np.cumsum(d) / d.sum()
    return np.array([d[min(int(np.searchsorted(cum, f)), d.size - 1)] for f in fractions])


def _limits(true: np.ndarray, pred: np.ndarray, target: str) -> tuple[float, float]:
    q = (2, 98) if target == "R_V" else (0.2, 99.8)
    lo, hi = np.percentile(np.concatenate([true, pred]), q)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return float(lo - pad), float(hi + pad)


def _scatter_panel(ax: Any, true: np.ndarray, pred: np.ndarray, target: str) -> None:
    lims = _limits(true, pred, target)
    ax.scatter(true, pred, s=3, color="tab:blue", alpha=float(np.clip(300 / true.size, 0.05, 0.8)), lw=0)
    ax.plot(lims, lims, color="red", lw=1)
    _contours(ax, true, pred, lims)
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_xlabel(f"true {TARGET_LABELS[target]}")
    ax.set_ylabel(f"predicted {TARGET_LABELS[target]}")


def _contours(ax: Any, true: np.ndarray, pred: np.ndarray, lims: tuple[float, float]) -> None:
    """Density contours enclosing 95/70/50/30/10% of the points (smoothed 2D histogram)."""
    inside = (true >= lims[0]) & (true <= lims[1]) & (pred >= lims[0]) & (pred <= lims[1])
    if inside.sum() < 10:
        return
    bins = int(np.clip(2 * np.sqrt(inside.sum()), 10, 60))
    hist, edges, _ = np.histogram2d(true[inside], pred[inside], bins=bins, range=[lims, lims])
    density = gaussian_filter(hist, sigma=1.5)
    levels, first = np.unique(density_levels(density), return_index=True)
    levels, first = levels[levels > 0], first[levels > 0]
    if levels.size == 0:
        return
    centres = 0.5 * (edges[1:] + edges[:-1])
    cs = ax.contour(centres, centres, density.T, levels=levels, colors="k", linewidths=0.8)
    labels = {lev: f"{CONTOUR_FRACTIONS[i]:.0%}" for lev, i in zip(levels, first)}
    ax.clabel(cs, fmt=labels, fontsize=6)


def _hist_panel(ax: Any, true: np.ndarray, pred: np.ndarray, target: str) -> None:
    bins = np.linspace(*_limits(true, pred, target), 40)
    ax.hist(pred, bins=bins, color="tab:blue", alpha=0.7, label="predicted")
    ax.hist(true, bins=bins, histtype="step", color="red", lw=1.2, label="true")
    ax.set_xlabel(TARGET_LABELS[target])
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)


def _residual_panel(ax: Any, residual: np.ndarray, target: str) -> None:
    m = residual_metrics(np.zeros_like(residual), residual)
    lo, hi = np.percentile(residual, (1, 99)) if target == "R_V" else (residual.min(), residual.max())
    bins = np.linspace(lo, hi, 40) if hi > lo else 40
    unit = RESIDUAL_UNITS[target]
    ax.hist(residual, bins=bins, color="0.4",
            label=f"MAE {m['MAE']:.3g} {unit}\nstd {m['std']:.3g} {unit}\nbias {m['bias']:.3g} {unit}")
    ax.axvline(0.0, color="red", lw=1)
    ax.set_xlabel(f"predicted - true {TARGET_LABELS[target].split(' [')[0]}")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)


def plot_model(result: xr.Dataset, name: str, path: Path) -> Path:
    """Figs. 6-8 for one model: a row per target (true vs predicted with density
    contours and the 1:1 line; true and predicted histograms; residuals)."""
    rows = []
    for t in TARGETS:
        true, pred = result[f"true_{t}"].values, result[t].values
        ok = np.isfinite(true) & np.isfinite(pred)
        if ok.sum() >= 2:
            rows.append((t, true[ok], pred[ok]))
    fig, axes = subplots(max(len(rows), 1), 3, figsize=(14, 3.8 * max(len(rows), 1)), squeeze=False)
    for ax_row, (t, true, pred) in zip(axes, rows):
        _scatter_panel(ax_row[0], true, pred, t)
        _hist_panel(ax_row[1], true, pred, t)
        _residual_panel(ax_row[2], pred - true, t)
    held = "held-out test galaxies" if result.attrs["held_out"] else "all selected samples (other store)"
    fig.suptitle(f"{name}: {result.sizes['sample']} samples, "
                 f"{np.unique(result['galaxy_id'].values).size} galaxies ({held})")
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=90)


def plot_calibration(table: xr.Dataset, path: Path) -> Path:
    """Coverage of the predicted 68% and 95% intervals per target and model vs nominal."""
    fig, axes = subplots(1, len(TARGETS), figsize=(4 * len(TARGETS), 4), squeeze=False)
    nominal = np.array(list(NOMINAL.values()))
    for ax, t in zip(axes[0], TARGETS):
        ax.plot([0.5, 1.0], [0.5, 1.0], color="0.5", ls="--", lw=1, label="ideal")
        for n in table["model"].values:
            cov = np.array([float(table[k].sel(target=t, model=n)) for k in NOMINAL])
            if np.isfinite(cov).all():
                ax.plot(nominal, cov, "o-", label=str(n))
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("fraction of truths inside")
        ax.set_title(TARGET_LABELS[t])
        ax.legend(fontsize=7, loc="lower right")
    no_err = [str(n) for n in table["model"].values if np.isnan(table["coverage_68"].sel(model=n)).all()]
    fig.suptitle("calibration of the predicted uncertainties"
                 + (f" (no uncertainties: {', '.join(no_err)})" if no_err else ""))
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=90)

"""Skill metrics of predictions against truths: the one place they are computed.

:func:`residual_metrics` scores one set of predictions of one quantity
(residuals ``predicted - true`` over the samples where both are finite); every
other table of skill in the package is built from it: :func:`metrics_table`
(the paper's Table 2, per quantity and model), :func:`binned_skill` (the same
in bins of true A_V or of SNR), :func:`surveydust.compare.pair_metrics`
(method against method), :func:`surveydust.demo.skill` (the demo field against
its truth) and :func:`surveydust.robustness.score_shift` (the shift suite).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import xarray as xr

from surveydust.posterior import LEVEL_NAMES, LEVELS, coverage, crps_from_percentiles
from surveydust.quantities import MIN_EBV_FOR_RV, MIN_PREDICTED_EBV_FOR_RV, RESIDUAL_UNITS, SCORED

#: the metrics of the evaluation table, in its row order
METRICS = ("N", "MAE", "MAE_constant", "MAE_ratio", "spearman", "slope", "CRPS", "MSE", "std",
           "variance", "bias", "coverage_68", "coverage_95")
#: every metric :func:`residual_metrics` returns: the table's and the median residual
RESIDUAL_METRICS = (*METRICS, "median_bias")
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
    "median_bias": "median of predicted - true",
}
#: nominal coverage of the predicted intervals
NOMINAL = {"coverage_68": 0.6827, "coverage_95": 0.95}
RV_NOTE = (f"R_V rows use only samples with finite true R_V (true E(B-V) > {MIN_EBV_FOR_RV:g} mag) "
           f"and finite predicted R_V (predicted E(B-V) > {MIN_PREDICTED_EBV_FOR_RV:g} mag); see its N")


def residual_metrics(true: np.ndarray, pred: np.ndarray, pct: np.ndarray | None = None,
                     constant: float = np.nan) -> dict[str, float]:
    """Skill of ``pred`` against ``true`` over the samples where both are finite.

    Parameters
    ----------
    true, pred : numpy.ndarray
        ``(n,)`` true and predicted values of one quantity, in its units (e.g.
        A_V [mag], log sSFR [log10(yr^-1)]); NaN marks a missing value.
    pct : numpy.ndarray, optional
        ``(n, 5)`` predicted percentiles at :data:`surveydust.posterior.LEVELS`
        [units of the quantity]. Coverage and CRPS use the samples where all five
        are finite; NaN without them.
    constant : float, optional
        The constant guess (the training median) [units of the quantity] scored
        as ``MAE_constant``; NaN leaves ``MAE_constant`` and ``MAE_ratio`` NaN.

    Returns
    -------
    dict of str to float
        Every metric of :data:`RESIDUAL_METRICS` (see :data:`METRIC_DESCRIPTIONS`):
        ``N``; ``MAE``, ``MAE_constant``, ``std``, ``bias`` and ``median_bias`` in
        the quantity's units; ``MSE`` and ``variance`` in its units squared;
        ``MAE_ratio``, ``spearman``, ``slope`` and the coverages dimensionless;
        ``CRPS`` in its units. ``N`` is 0 and everything else NaN when no sample
        is finite; ``spearman`` and ``slope`` are NaN unless more than two samples
        and both truth and prediction vary.
    """
    from scipy.stats import spearmanr

    true, pred = np.asarray(true, float), np.asarray(pred, float)
    pct = np.full((true.size, len(LEVELS)), np.nan) if pct is None else np.asarray(pct, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    if r.size == 0:
        return {m: (0.0 if m == "N" else np.nan) for m in RESIDUAL_METRICS}
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
            "coverage_95": coverage(t[has], q[has, 0], q[has, 4]) if has.any() else np.nan,
            "median_bias": float(np.median(r))}


def percentile_array(result: xr.Dataset, target: str) -> np.ndarray:
    """The predicted percentiles of ``target`` in an evaluation result.

    Parameters
    ----------
    result : xarray.Dataset
        One model's predictions over dimension ``sample``, with ``<target>`` (the
        median) and optionally ``<target>_p025``, ``<target>_p16`` ... columns.
    target : str
        The quantity, e.g. ``"A_V"``.

    Returns
    -------
    numpy.ndarray
        ``(n, 5)`` percentiles at :data:`surveydust.posterior.LEVELS` [units of
        ``target``]; NaN where a column is absent.
    """
    n = len(result[target])  # samples of a prediction, or sources of a catalogue
    cols = [result[f"{target}_{name}"].values if f"{target}_{name}" in result else
            (result[target].values if name == "p50" else np.full(n, np.nan)) for name in LEVEL_NAMES]
    return np.column_stack(cols).astype(float)


def metrics_table(results: dict[str, xr.Dataset]) -> xr.Dataset:
    """The paper's Table 2 and skill: every metric of :data:`METRICS` per quantity and model.

    Parameters
    ----------
    results : dict of str to xarray.Dataset
        Per model name, its predictions over ``sample`` with ``true_<T>``, ``<T>``
        and percentile columns of every quantity T of
        :data:`surveydust.quantities.SCORED`, and attrs ``constant_<T>`` (the
        constant guess), ``bands``, ``bundle``, ``model_id`` and ``held_out``.

    Returns
    -------
    xarray.Dataset
        One variable per metric over ``(target, model)`` (each with its
        ``description``), coordinates ``unit`` (the residual's unit per target:
        mag, dex or dimensionless), ``bands``, ``bundle``, ``model_id``,
        ``held_out``, ``n_samples`` and ``n_galaxies`` per model.
    """
    names = list(results)
    values = {name: {t: residual_metrics(r[f"true_{t}"].values, r[t].values, percentile_array(r, t),
                                         float(r.attrs.get(f"constant_{t}", np.nan)))
                     for t in SCORED} for name, r in results.items()}
    table = xr.Dataset(
        {m: (("target", "model"), np.array([[values[n][t][m] for n in names] for t in SCORED]))
         for m in METRICS},
        coords={"target": list(SCORED), "model": names,
                "unit": ("target", [RESIDUAL_UNITS[t] for t in SCORED]),
                **{key: ("model", [results[n].attrs[key] for n in names])
                   for key in ("bands", "bundle", "model_id", "held_out")},
                "n_samples": ("model", [results[n].sizes["sample"] for n in names]),
                "n_galaxies": ("model", [np.unique(results[n]["galaxy_id"].values).size for n in names])})
    for m in METRICS:
        table[m].attrs["description"] = METRIC_DESCRIPTIONS[m]
    table.attrs.update(residual="predicted - true", r_v_note=RV_NOTE)
    return table


def binned_skill(results: dict[str, xr.Dataset], by: str, bins: Sequence[float], target: str = "A_V") -> Any:
    """Skill of every model in bins of ``by``.

    Parameters
    ----------
    results : dict of str to xarray.Dataset
        Per model name, its predictions (as for :func:`metrics_table`) with the
        column ``by``.
    by : str
        The binning column: ``true_A_V`` [mag] or ``snr`` (in the selection band).
    bins : sequence of float
        Bin edges in the units of ``by``; a bin holds ``lo <= value < hi``.
    target : str, optional
        The quantity scored.

    Returns
    -------
    astropy.table.Table
        A row per bin (``<by>_bin``, e.g. ``0-0.1``) and, per model, the columns
        ``<model>: N``, ``<model>: bias`` (mean predicted - true), ``<model>: MAE``
        (both in the units of ``target``) and ``<model>: spearman``.
    """
    from astropy.table import Table

    rows = []
    for lo, hi in pairwise(bins):
        row: list[Any] = [f"{lo:g}-{hi:g}"]
        for r in results.values():
            inside = (r[by].values >= lo) & (r[by].values < hi)
            m = residual_metrics(r[f"true_{target}"].values[inside], r[target].values[inside])
            row += [int(m["N"]), m["bias"], m["MAE"], m["spearman"]]
        rows.append(row)
    names = [f"{by}_bin"] + [f"{n}: {k}" for n in results for k in ("N", "bias", "MAE", "spearman")]
    out = Table(rows=rows, names=names)
    out.meta["description"] = f"{target} per model in bins of {by}: N, mean predicted - true, MAE, Spearman"
    return out

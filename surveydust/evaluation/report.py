"""Write an evaluation's tables and figures: the paper's Table 2, binned skill and Figs. 6-8.

Outputs in the evaluation folder: ``table.csv`` and ``table.ecsv`` (a row per
quantity and metric, a column per model; units and notes in the ECSV's meta),
``bias_by_av.ecsv`` and ``skill_by_snr.ecsv`` (A_V skill in bins of true A_V
and of SNR), ``<model-slug>.png`` per model (true vs predicted with density
contours, histograms, residuals) and ``calibration.png`` (coverage of the
predicted intervals against nominal).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

from surveydust.evaluation.metrics import (
    METRIC_DESCRIPTIONS,
    METRICS,
    NOMINAL,
    RV_NOTE,
    binned_skill,
    residual_metrics,
)
from surveydust.figures import subplots
from surveydust.quantities import LABELS, RESIDUAL_UNITS, SCORED
from surveydust.stores.base import write_output_figure, write_output_table

OUTPUT_KIND = "evaluation"  # the mark on the files evaluate writes (surveydust.stores.base)
#: files every evaluation writes (beside one figure per model, ``<slug>.png``)
FIXED_OUTPUTS = ("table.csv", "table.ecsv", "bias_by_av.ecsv", "skill_by_snr.ecsv", "calibration.png")
AV_BINS = (0.0, 0.1, 0.3, 0.6, 1.0, 1.5, np.inf)  # [mag] bins of true A_V for the bias table
SNR_BINS = (0.0, 10.0, 20.0, 50.0, np.inf)  # bins of SNR in the selection band
CONTOUR_FRACTIONS = (0.95, 0.70, 0.50, 0.30, 0.10)  # of points enclosed, outermost first


def slug(name: str) -> str:
    """File-name form of a model name: ``CNN F277W+F356W`` -> ``cnn-f277w-f356w``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def figure_names(results: dict[str, xr.Dataset]) -> list[str]:
    """The per-model figure files of an evaluation, ``<slug>.png``."""
    return [f"{slug(name)}.png" for name in results]


def write_report(results: dict[str, xr.Dataset], table: xr.Dataset, out: Path) -> dict[str, Path]:
    """Write every table and figure of an evaluation into ``out``.

    Parameters
    ----------
    results : dict of str to xarray.Dataset
        Per model name, its truths and predictions
        (:func:`surveydust.evaluation.heldout.result_dataset`).
    table : xarray.Dataset
        Their metrics (:func:`surveydust.evaluation.metrics.metrics_table`).
    out : pathlib.Path
        The evaluation folder, already checked
        (:func:`surveydust.stores.base.check_output_folder`).

    Returns
    -------
    dict of str to pathlib.Path
        ``csv``, ``ecsv``, ``bias_by_av``, ``skill_by_snr``, one figure per
        model name and ``calibration``.
    """
    paths = write_table(table, out)
    for key, by, bins in (("bias_by_av", "true_A_V", AV_BINS), ("skill_by_snr", "snr", SNR_BINS)):
        paths[key] = write_output_table(binned_skill(results, by, bins), out / f"{key}.ecsv", OUTPUT_KIND)
    for name, result in results.items():
        paths[name] = plot_model(result, name, out / f"{slug(name)}.png")
    paths["calibration"] = plot_calibration(table, out / "calibration.png")
    return paths


# ---------------------------------------------------------------- tables


def metric_unit(metric: str, unit: str) -> str:
    """Unit of ``metric`` for a quantity whose residuals are in ``unit``: squared for MSE and variance."""
    if metric in ("N", "coverage_68", "coverage_95", "MAE_ratio", "spearman", "slope") or not unit:
        return ""
    return f"{unit}2" if metric in ("MSE", "variance") else unit


def to_astropy(table: xr.Dataset) -> Any:
    """The paper's layout of a metrics table.

    Parameters
    ----------
    table : xarray.Dataset
        Metrics over ``(target, model)`` (:func:`surveydust.evaluation.metrics.metrics_table`).

    Returns
    -------
    astropy.table.Table
        A row per (target, metric) with its ``unit``, a column per model; two
        extra rows per model (target ``all``): ``held_out`` (1: the bundle's
        test galaxies; 0: all selected samples of a store it was not trained
        on) and ``n_galaxies``.
    """
    from astropy.table import Table

    models = [str(m) for m in table["model"].values]
    rows = [(t, m, metric_unit(m, str(table["unit"].sel(target=t).values)),
             *[float(table[m].sel(target=t, model=n)) for n in models])
            for t in SCORED for m in METRICS]
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
    """The ECSV meta of the table: units, metric descriptions and what each model was scored on."""
    return {
        "description": "Residual (predicted - true) statistics per target and model (the paper's Table 2)",
        "target_units": {t: LABELS[t] for t in SCORED},
        "residual_units": {t: RESIDUAL_UNITS[t] or "dimensionless" for t in SCORED},
        "metrics": {m: METRIC_DESCRIPTIONS[m] for m in METRICS},
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
    """Write ``table.csv`` and ``table.ecsv`` (units and notes in its meta; its mark vouches for the CSV).

    Parameters
    ----------
    table : xarray.Dataset
        Metrics over ``(target, model)``.
    out : pathlib.Path
        The evaluation folder.

    Returns
    -------
    dict of str to pathlib.Path
        ``csv`` and ``ecsv``.
    """
    ecsv = write_output_table(to_astropy(table), out / "table.ecsv", OUTPUT_KIND, with_csv=True)
    return {"csv": ecsv.with_suffix(".csv"), "ecsv": ecsv}


# ---------------------------------------------------------------- figures


def density_levels(density: np.ndarray, fractions: Sequence[float] = CONTOUR_FRACTIONS) -> np.ndarray:
    """Density values whose super-level sets enclose ``fractions`` of the total.

    Parameters
    ----------
    density : numpy.ndarray
        A non-negative density on a grid (any shape).
    fractions : sequence of float, optional
        Fractions of the total to enclose; ordered outermost (largest) first
        they give increasing levels.

    Returns
    -------
    numpy.ndarray
        One level per fraction, in the units of ``density``.
    """
    d = np.sort(density.ravel())[::-1]
    cum = np.cumsum(d) / d.sum()
    return np.array([d[min(int(np.searchsorted(cum, f)), d.size - 1)] for f in fractions])


def _limits(true: np.ndarray, pred: np.ndarray, target: str) -> tuple[float, float]:
    """Axis limits [units of ``target``] holding nearly all points, padded by 5%."""
    q = (2, 98) if target == "R_V" else (0.2, 99.8)
    lo, hi = np.percentile(np.concatenate([true, pred]), q)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return float(lo - pad), float(hi + pad)


def _scatter_panel(ax: Any, true: np.ndarray, pred: np.ndarray, target: str) -> None:
    """True vs predicted with the 1:1 line and density contours."""
    lims = _limits(true, pred, target)
    ax.scatter(true, pred, s=3, color="tab:blue", alpha=float(np.clip(300 / true.size, 0.05, 0.8)), lw=0)
    ax.plot(lims, lims, color="red", lw=1)
    _contours(ax, true, pred, lims)
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_xlabel(f"true {LABELS[target]}")
    ax.set_ylabel(f"predicted {LABELS[target]}")


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
    """Histograms of the predicted and the true values."""
    bins = np.linspace(*_limits(true, pred, target), 40)
    ax.hist(pred, bins=bins, color="tab:blue", alpha=0.7, label="predicted")
    ax.hist(true, bins=bins, histtype="step", color="red", lw=1.2, label="true")
    ax.set_xlabel(LABELS[target])
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)


def _residual_panel(ax: Any, residual: np.ndarray, target: str) -> None:
    """Histogram of the residuals with their MAE, standard deviation and bias."""
    m = residual_metrics(np.zeros_like(residual), residual)
    lo, hi = np.percentile(residual, (1, 99)) if target == "R_V" else (residual.min(), residual.max())
    bins = np.linspace(lo, hi, 40) if hi > lo else 40
    unit = RESIDUAL_UNITS[target]
    ax.hist(residual, bins=bins, color="0.4",
            label=f"MAE {m['MAE']:.3g} {unit}\nstd {m['std']:.3g} {unit}\nbias {m['bias']:.3g} {unit}")
    ax.axvline(0.0, color="red", lw=1)
    ax.set_xlabel(f"predicted - true {LABELS[target].split(' [')[0]}")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)


def plot_model(result: xr.Dataset, name: str, path: Path) -> Path:
    """Figs. 6-8 for one model.

    Parameters
    ----------
    result : xarray.Dataset
        The model's truths and predictions.
    name : str
        The model's name (the title).
    path : pathlib.Path
        The PNG file written.

    Returns
    -------
    pathlib.Path
        ``path``: a row per quantity with at least two finite pairs (true vs
        predicted with density contours and the 1:1 line; true and predicted
        histograms; residuals), in each quantity's units.
    """
    rows = []
    for t in SCORED:
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
    """Coverage of the predicted 68% and 95% intervals per quantity and model against nominal.

    Parameters
    ----------
    table : xarray.Dataset
        Metrics over ``(target, model)``.
    path : pathlib.Path
        The PNG file written.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    fig, axes = subplots(1, len(SCORED), figsize=(4 * len(SCORED), 4), squeeze=False)
    nominal = np.array(list(NOMINAL.values()))
    for ax, t in zip(axes[0], SCORED):
        ax.plot([0.5, 1.0], [0.5, 1.0], color="0.5", ls="--", lw=1, label="ideal")
        for n in table["model"].values:
            cov = np.array([float(table[k].sel(target=t, model=n)) for k in NOMINAL])
            if np.isfinite(cov).all():
                ax.plot(nominal, cov, "o-", label=str(n))
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("fraction of truths inside")
        ax.set_title(LABELS[t])
        ax.legend(fontsize=7, loc="lower right")
    no_err = [str(n) for n in table["model"].values if np.isnan(table["coverage_68"].sel(model=n)).all()]
    fig.suptitle("calibration of the predicted uncertainties"
                 + (f" (no uncertainties: {', '.join(no_err)})" if no_err else ""))
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=90)

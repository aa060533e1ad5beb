"""Evaluate model bundles on held-out galaxies: the entry point :func:`evaluate`.

The steps live in one module each, which import nothing heavy until used (so
:mod:`surveydust.compare` and :mod:`surveydust.demo` can import the metrics
alone):

* :mod:`~surveydust.evaluation.heldout`: each bundle's held-out samples,
  rebuilt from its ``bundle.json``, and its predictions on them;
* :mod:`~surveydust.evaluation.baselines`: the colour baseline (trees on
  aperture colours) and Meurer's A_V from the UV slope;
* :mod:`~surveydust.evaluation.metrics`: the skill metrics, the one place they
  are computed (also for ``compare``, the demo and the shift suite);
* :mod:`~surveydust.evaluation.report`: the tables and figures written.

Residuals are ``predicted - true``; for every quantity (E(B-V) [mag], A_V
[mag], R_V [dimensionless], log sSFR [log10(yr^-1)], residuals in dex) and
model the table gives N, MAE, the constant guess's MAE, Spearman's rank
correlation, slope, CRPS, MSE, standard deviation and variance (population,
ddof=0, so MSE = variance + bias^2), the mean residual (bias) and the fraction
of truths inside the predicted 68% and 95% intervals (NaN for models without
uncertainties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from surveydust.errors import InputError

if TYPE_CHECKING:
    import xarray as xr


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` made.

    Attributes
    ----------
    table : xarray.Dataset
        Metrics (data variables named as
        :data:`surveydust.evaluation.metrics.METRICS`) over ``(target, model)``.
    predictions : dict of str to xarray.Dataset
        Per model, one Dataset over the evaluated samples (store ``sample``
        coordinate ``store_index``, ``galaxy_id``) with ``true_<T>``, ``<T>`` and
        ``<T>_err`` for every quantity T, in its units.
    paths : dict of str to pathlib.Path
        ``csv``, ``ecsv``, ``bias_by_av``, ``skill_by_snr``, ``calibration`` and
        one figure per model name.
    """

    table: xr.Dataset
    predictions: dict[str, xr.Dataset]
    paths: dict[str, Path]


def evaluate(bundles: Sequence[Path | str], store: Path | str, out: Path | str, *,
             include_baseline: bool = True, block_samples: int | None = None,
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

    Parameters
    ----------
    bundles : sequence of path
        Model bundles.
    store : path
        A training store (Zarr).
    out : path
        The folder written (created if missing): ``table.csv``, ``table.ecsv``,
        ``bias_by_av.ecsv``, ``skill_by_snr.ecsv``, a figure per model and
        ``calibration.png``. It must not be or lie inside a bundle, the store or
        any other surveydust store (:func:`surveydust.stores.base.check_output_folder`;
        the fixed names are checked before any work, the per-model figures before
        anything is written).
    include_baseline : bool, optional
        Also score the colour baseline and Meurer's A_V.
    block_samples : int, optional
        Samples read and predicted at once [default:
        :data:`surveydust.evaluation.heldout.BLOCK_SAMPLES`].
    overwrite : bool, optional
        Replace files of those names in ``out``, and only those an earlier
        ``evaluate`` wrote; without it they are refused.

    Returns
    -------
    Evaluation
        The metrics table, the predictions per model and the files written.

    Raises
    ------
    ValueError
        When no bundle is given, a bundle needs a band the store lacks, no
        held-out sample remains, or ``out`` is refused.
    """
    import dask

    from surveydust.bundle import load_model
    from surveydust.evaluation.baselines import baselines
    from surveydust.evaluation.heldout import BLOCK_SAMPLES, plans, predict_plan, warn_if_samples_differ
    from surveydust.evaluation.metrics import metrics_table
    from surveydust.evaluation.report import FIXED_OUTPUTS, OUTPUT_KIND, figure_names, write_report
    from surveydust.stores.base import check_output_folder
    from surveydust.stores.training import open_training_store

    if not bundles:
        raise InputError("no model bundles to evaluate")
    block_samples = BLOCK_SAMPLES if block_samples is None else block_samples
    inputs = [*bundles, store]
    out = check_output_folder(out, FIXED_OUTPUTS, overwrite, OUTPUT_KIND, inputs=inputs)
    ds = open_training_store(store)
    with dask.config.set(scheduler="threads"):  # local reads, even when a distributed client exists
        planned = plans(ds, [load_model(b) for b in bundles], Path(store))
        results = {}
        for p in planned:
            for with_z in (True, False) if p.predictor.uses_redshift else (False,):
                name = p.name + ((" +z" if with_z else " no z") if p.predictor.uses_redshift else "")
                results[name] = predict_plan(ds, p, block_samples, with_z)
        if include_baseline:
            widest = max(planned, key=lambda p: len(p.predictor.bands))
            results.update(baselines(ds, widest, block_samples))
    warn_if_samples_differ(results)
    table = metrics_table(results)
    check_output_folder(out, figure_names(results), overwrite, OUTPUT_KIND, inputs=inputs)
    return Evaluation(table=table, predictions=results, paths=write_report(results, table, out))


__all__ = ["Evaluation", "evaluate"]

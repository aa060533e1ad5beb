"""Compare the dust and sSFR estimates in a catalogue with each other (the paper's section 3.2).

Methods found in the catalogue: each CNN model (``A_V``, ``log_ssfr`` per
``model``), Meurer's IRX-beta relation (``A_V_meurer``), SED fits when present
(``A_V_sed``, ``log_ssfr_sed_<Myr>``, from :mod:`surveydust.sedfit`), and the simulated
truth when a truth table is given (matched by position). For every pair: N,
MAE, standard deviation and variance of the differences (like the paper's
Figs. 9-11 and their numbers, from :func:`surveydust.evaluation.metrics.residual_metrics`),
as an ECSV table, plus one scatter figure per quantity with all pairs.
"""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.errors import InputError
from surveydust.evaluation.metrics import residual_metrics
from surveydust.quantities import LABELS, PREDICTED
from surveydust.sources import TRUTH_MATCH_ARCSEC, nearest, read_table
from surveydust.stores.catalogue import FLAGS

logger = logging.getLogger(__name__)

OUTPUT_KIND = "comparison"  # the mark on the files compare writes (surveydust.stores.base)
TABLE = "comparison.ecsv"
QUALITY_FLAGS = ("edge", "masked", "low_snr", "out_of_distribution")


def methods(cat: xr.Dataset, quantity: str) -> dict[str, np.ndarray]:
    """Estimates of ``quantity`` per method, each an array over the catalogue's sources."""
    out = {f"CNN {m}": cat[quantity].sel(model=m).values.astype(float) for m in cat["model"].values}
    if quantity == "A_V" and "A_V_meurer" in cat:
        out["Meurer"] = cat["A_V_meurer"].values.astype(float)
    for name in sorted(cat.data_vars):  # A_V_sed -> "SED"; log_ssfr_sed_10 -> "SED 10 Myr"
        timescale = name.removeprefix(f"{quantity}_sed").removeprefix("_")
        if name.startswith(f"{quantity}_sed") and (timescale == "" or timescale.isdigit()):
            out["SED" + (f" {timescale} Myr" if timescale else "")] = cat[name].values.astype(float)
    return out


def truth_values(cat: xr.Dataset, truth: Path | str,
                 radius_arcsec: float = TRUTH_MATCH_ARCSEC) -> dict[str, np.ndarray]:
    """Truth per catalogue source (NaN where no injected galaxy lies within ``radius_arcsec``)."""
    table = read_table(truth, "truth")
    ra = table["ra_centroid"] if "ra_centroid" in table.colnames else table["ra"]
    dec = table["dec_centroid"] if "dec_centroid" in table.colnames else table["dec"]
    idx, _, ok = nearest(cat["ra"].values, cat["dec"].values, np.asarray(ra), np.asarray(dec), radius_arcsec)
    return {q: np.where(ok, np.asarray(table[q], float)[idx], np.nan) for q in PREDICTED if q in table.colnames}


def good_sources(cat: xr.Dataset, flagged: bool = False) -> np.ndarray:
    """Sources to compare: those without :data:`QUALITY_FLAGS` (all with ``flagged``)."""
    bad = sum(FLAGS[f] for f in QUALITY_FLAGS)
    return np.ones(cat.sizes["source"], bool) if flagged else (cat["flag"].values & bad) == 0


def pair_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How two methods' estimates of one quantity differ, over sources where both are finite.

    Parameters
    ----------
    a, b : numpy.ndarray
        ``(n,)`` estimates per source, in the quantity's units (e.g. A_V [mag]).

    Returns
    -------
    dict of str to float
        ``N`` (an int), and of ``a - b``: ``MAE``, ``std`` and ``mean`` in the
        quantity's units, ``variance`` in its units squared (NaN when ``N`` is 0);
        from :func:`surveydust.evaluation.metrics.residual_metrics` with ``b`` as the truth.
    """
    m = residual_metrics(b, a)
    return {"N": int(m["N"]), "MAE": m["MAE"], "std": m["std"], "variance": m["variance"], "mean": m["bias"]}


def compare(catalogue: Path | str | xr.Dataset, out: Path | str, truth: Path | str | None = None,
            flagged: bool = False, overwrite: bool = False) -> Any:
    """Write ``comparison.ecsv`` and ``compare_<quantity>.png`` to ``out``; return the table.

    Sources flagged edge, masked, low_snr or out_of_distribution are left out
    unless ``flagged`` (blended and no_redshift ones are kept). Existing files of
    those names in ``out`` are refused unless ``overwrite``, and even then
    replaced only when an earlier ``compare`` wrote them
    (:func:`surveydust.stores.base.check_output_folder`); ``out`` must not be
    or lie inside the catalogue, the truth table, or any surveydust store.
    """
    from astropy.table import Table

    from surveydust.stores.base import check_output_folder, write_output_table
    from surveydust.stores.catalogue import open_catalogue

    cat = catalogue if isinstance(catalogue, xr.Dataset) else open_catalogue(catalogue)
    keep = good_sources(cat, flagged)
    truths = truth_values(cat, truth) if truth is not None else {}
    estimates = _estimates(cat, keep, truths)
    rows = [{"quantity": quantity, "method_a": a, "method_b": b, **pair_metrics(est[a], est[b])}
            for quantity, est in estimates.items() for a, b in combinations(est, 2)]
    if not rows:
        raise InputError("the catalogue has fewer than two estimates to compare")
    figures = {q: f"compare_{q}.png" for q, est in estimates.items() if len(est) >= 2}
    inputs = [None if isinstance(catalogue, xr.Dataset) else catalogue, truth]
    out = check_output_folder(out, [TABLE, *figures.values()], overwrite, OUTPUT_KIND, inputs=inputs)
    for quantity, name in figures.items():
        _plot(estimates[quantity], LABELS[quantity], out / name)
    table = Table(rows=rows)
    for name in ("MAE", "std", "variance", "mean"):
        table[name].info.format = ".4g"
    table.meta["sources"] = int(keep.sum())
    table.meta["note"] = "differences are method_a - method_b" + ("" if flagged else
                                                                  f"; sources without {', '.join(QUALITY_FLAGS)} flags")
    write_output_table(table, out / TABLE, OUTPUT_KIND)
    logger.info("compared %d sources: %s", int(keep.sum()), out / TABLE)
    return table


def _estimates(cat: xr.Dataset, keep: np.ndarray, truths: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per quantity with any estimate: the kept sources' estimate per method (and ``truth``)."""
    out = {}
    for quantity in PREDICTED:
        est = {k: v[keep] for k, v in methods(cat, quantity).items()}
        if est and quantity in truths:
            est["truth"] = truths[quantity][keep]
        if est:
            out[quantity] = est
    return out


def _plot(est: dict[str, np.ndarray], label: str, path: Path) -> Path | None:
    from surveydust.figures import subplots
    from surveydust.stores.base import write_output_figure

    pairs = list(combinations(est, 2))
    if not pairs:
        return None
    fig, axes = subplots(1, len(pairs), figsize=(3.6 * len(pairs), 3.6), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        ok = np.isfinite(est[a]) & np.isfinite(est[b])
        ax.scatter(est[b][ok], est[a][ok], s=8, alpha=0.7)
        lo = np.nanmin([est[a][ok].min(initial=0), est[b][ok].min(initial=0)])
        hi = np.nanmax([est[a][ok].max(initial=1), est[b][ok].max(initial=1)])
        ax.plot([lo, hi], [lo, hi], "r-", lw=1)
        m = pair_metrics(est[a], est[b])
        ax.set_title(f"MAE {m['MAE']:.2f}, sigma {m['std']:.2f} (N={m['N']})", fontsize=9)
        ax.set_xlabel(f"{b}: {label}", fontsize=8)
        ax.set_ylabel(f"{a}: {label}", fontsize=8)
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=110)


__all__ = ["compare", "good_sources", "methods", "pair_metrics", "truth_values"]

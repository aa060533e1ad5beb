"""The built-in demo: a small simulated JWST field with known truth, run end to end offline.

:func:`run_demo` (what ``surveydust run-catalogue --demo`` calls) simulates
the field (:func:`make_demo_field`: FITS files in the JWST ``i2d`` layout,
ingested into a mosaic store), makes its catalogue with the injected redshifts
as the redshift table, and scores it against the truth (:func:`skill`): per
quantity and method N, MAE, the MAE of a constant guess and Spearman's rank
correlation, over the same sources ``surveydust compare`` uses, plus a
true-vs-predicted figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surveydust.sources import TRUTH_MATCH_ARCSEC, nearest

logger = logging.getLogger(__name__)

DEMO_TILE_PIX = 256  # small tiles, so the demo has several tiles and sources on their boundaries
DEMO_GALAXIES = 120
DEMO_SIZE = 1280  # pixels (38" at 0.03"/px)
OUTPUT_KIND = "demo"  # the mark on the demo's own files (surveydust.stores.base)
SKILL_FILE = "skill.ecsv"
FIGURE_FILE = "truth_vs_predicted.png"


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made: the catalogue, its truth match, the skill table and paths."""

    catalogue: Any
    match: dict[str, Any]
    skill: Any
    paths: dict[str, Path]


def make_demo_field(directory: Path | str, *, n_galaxies: int = DEMO_GALAXIES, size: int = DEMO_SIZE,
                    seed: int = 0, client: Any = None, overwrite: bool = False,
                    progress: bool = True, priors: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Simulate the demo field into ``directory``; return (mosaic store, truth table) paths.

    ``n_galaxies`` galaxies from the built-in simulator on a ``size`` x
    ``size`` pixel (0.03"/px) six-band field with a rotated WCS, CEERS-like
    noise and NaN borders, written as FITS and ingested in 256-pixel chunks.
    ``priors`` replaces some of the simulator's nuisance priors (``configs/simulation.yaml``).
    """
    from surveydust.simulate import simulate_field
    from surveydust.stores.base import check_output_path
    from surveydust.stores.mosaic import ingest_mosaic

    directory = Path(directory)
    store = check_output_path(directory / "field.zarr", overwrite, "mosaic")
    files = simulate_field(directory / "fits", n_galaxies=n_galaxies, shape=(size, size), seed=seed,
                           overwrite=overwrite, priors=priors)
    logger.info("simulated %d galaxies on a %d x %d field: %s", n_galaxies, size, size, directory / "fits")
    ingest_mosaic(store, {b: str(p) for b, p in files.bands.items()}, field="demo", chunk=DEMO_TILE_PIX,
                  client=client, overwrite=overwrite, progress=progress)
    return store, files.truth


def run_demo(directory: Path | str = "demo", *, out: Path | str | None = None, model: Any = None,
             client: Any = None, export_format: str | None = None, overwrite: bool = False,
             progress: bool = True, **catalogue_options: Any) -> DemoResult:
    """Simulate the demo field in ``directory``, make its catalogue (``out``, default
    ``directory/catalogue.zarr``), and score it against the injected truth.

    Writes ``skill.ecsv`` and ``truth_vs_predicted.png`` next to the catalogue.
    Every output (the field store, the catalogue, its export and these two
    files) is checked before the field is simulated: one that exists is
    refused unless ``overwrite``, and replaced only when an earlier demo wrote
    it (:func:`surveydust.stores.base.check_output_path`).
    """
    from surveydust.infer import run_catalogue
    from surveydust.stores.base import check_output_folder, check_output_path, write_output_table
    from surveydust.stores.catalogue import check_outputs

    directory = Path(directory)
    out = Path(out) if out is not None else directory / "catalogue.zarr"
    export_to = out.with_suffix(f".{export_format}") if export_format else None
    field = [directory / "field.zarr", directory / "fits"]  # the catalogue run's inputs, made here
    inputs = [*field, *(model if isinstance(model, (list, tuple)) else [model]),
              catalogue_options.get("sources"), catalogue_options.get("redshifts")]
    check_output_path(field[0], overwrite, "mosaic")
    out, export_to = check_outputs(out, export_to, overwrite, inputs)
    check_output_folder(out.parent, [SKILL_FILE, FIGURE_FILE], overwrite, OUTPUT_KIND, inputs=inputs)
    store, truth = make_demo_field(directory, client=client, overwrite=overwrite, progress=progress)
    catalogue_options.setdefault("tile_pix", DEMO_TILE_PIX)
    redshifts = catalogue_options.pop("redshifts", None) or truth  # injected z stand in for spectroscopy
    cat = run_catalogue(store, out, model=model, redshifts=redshifts, client=client, export_to=export_to,
                        overwrite=overwrite, progress=progress, **catalogue_options)
    table = skill(cat, truth)
    paths = {"catalogue": out, "skill": write_output_table(table, out.parent / SKILL_FILE, OUTPUT_KIND),
             "figure": plot_truth(cat, truth, out.parent / FIGURE_FILE)}
    if export_to is not None:
        paths["export"] = export_to
    return DemoResult(catalogue=cat, match=match_truth(cat, truth), skill=table, paths=paths)


def match_truth(catalogue: Any, truth: Path | str, radius_arcsec: float = TRUTH_MATCH_ARCSEC) -> dict[str, Any]:
    """Match catalogue sources to the injected galaxies' light-weighted centroids
    (nearest within ``radius_arcsec``): the numbers of matches, missed galaxies
    (mostly those below the detection limit) and spurious sources, and the
    median separation [arcsec]."""
    from surveydust.sources import read_table

    truth = read_table(truth, "truth")
    n_cat = catalogue.sizes["source"]
    idx, sep, ok = nearest(np.asarray(truth["ra_centroid"]), np.asarray(truth["dec_centroid"]),
                           catalogue["ra"].values, catalogue["dec"].values, radius_arcsec)
    return {"matched": int(ok.sum()), "missed": int((~ok).sum()),
            "spurious": int(n_cat - np.unique(idx[ok]).size),
            "median_sep_arcsec": float(np.median(sep[ok])) if ok.any() else np.nan}


def _constants(cat: Any) -> dict[str, float]:
    """The constant guess per quantity: the training median of the first model's bundle."""
    from surveydust.bundle import read_meta

    for model in cat.attrs.get("models", []):
        try:
            return dict(read_meta(Path(model["path"])).get("constant_guess", {}))
        except (ValueError, OSError, KeyError, TypeError):
            continue
    return {}


def skill(cat: Any, truth: Path | str) -> Any:
    """Skill of every method of the catalogue against the demo field's truth.

    Scored by :func:`surveydust.evaluation.metrics.residual_metrics` over the
    sources ``compare`` uses (no edge, masked, low_snr or out_of_distribution
    flag) that match an injected galaxy.

    Parameters
    ----------
    cat : xarray.Dataset
        A catalogue (:func:`surveydust.stores.catalogue.open_catalogue`).
    truth : path
        The field's truth table (positions, A_V and E(B-V) [mag], log sSFR [log10(yr^-1)]).

    Returns
    -------
    astropy.table.Table
        A row per quantity and method: ``N``, ``MAE`` and ``MAE_constant`` (of
        the constant guess: the model's training median, the truth's own median
        when unknown) in the quantity's units, and ``spearman``.
    """
    from astropy.table import Table

    from surveydust.compare import good_sources, methods, truth_values
    from surveydust.evaluation.metrics import residual_metrics
    from surveydust.quantities import PREDICTED

    keep = good_sources(cat)
    true = truth_values(cat, truth)
    constants = _constants(cat)
    rows = []
    for q in (q for q in PREDICTED if q in true):
        for name, est in methods(cat, q).items():
            ok = keep & np.isfinite(est) & np.isfinite(true[q])
            const = constants.get(q, float(np.median(true[q][ok])) if ok.any() else np.nan)
            m = residual_metrics(true[q][ok], est[ok], constant=const)
            rows.append({"quantity": q, "method": name, "N": int(m["N"]), "MAE": m["MAE"],
                         "MAE_constant": m["MAE_constant"], "spearman": m["spearman"]})
    table = Table(rows=rows)
    for name in ("MAE", "MAE_constant", "spearman"):
        table[name].info.format = ".3g"
    table.meta.update(sources=int(keep.sum()), catalogue_sources=int(cat.sizes["source"]),
                      note="sources without edge, masked, low_snr or out_of_distribution flags, matched "
                           f"to an injected galaxy within {TRUTH_MATCH_ARCSEC} arcsec (as in compare)")
    return table


def plot_truth(cat: Any, truth: Path | str, path: Path) -> Path:
    """True vs predicted A_V, E(B-V) and log sSFR per method (16-84% bars for CNNs)."""
    from surveydust.compare import good_sources, methods, truth_values
    from surveydust.figures import subplots
    from surveydust.quantities import LABELS, PREDICTED
    from surveydust.stores.base import write_output_figure

    keep, true = good_sources(cat), truth_values(cat, truth)
    quantities = [q for q in PREDICTED if q in true]
    fig, axes = subplots(1, len(quantities), figsize=(4.2 * len(quantities), 4.0), squeeze=False)
    for ax, q in zip(axes[0], quantities):
        for name, est in methods(cat, q).items():
            ok = keep & np.isfinite(est) & np.isfinite(true[q])
            model = name.removeprefix("CNN ")
            if name.startswith("CNN ") and f"{q}_p16" in cat:
                lo = est[ok] - cat[f"{q}_p16"].sel(model=model).values[ok]
                hi = cat[f"{q}_p84"].sel(model=model).values[ok] - est[ok]
                ax.errorbar(true[q][ok], est[ok], yerr=[lo, hi], fmt="o", ms=3, lw=0.6, label=name)
            else:
                ax.plot(true[q][ok], est[ok], "s", ms=3, label=name)
        lims = np.array(ax.get_xlim() + ax.get_ylim())
        ax.plot([lims.min(), lims.max()], [lims.min(), lims.max()], "r-", lw=1)
        ax.set_xlabel(f"true {LABELS[q]}")
        ax.set_ylabel(f"predicted {LABELS[q]}")
        ax.legend(fontsize=7)
    fig.suptitle(f"demo field: {int(keep.sum())} sources without quality flags")
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=100)


__all__ = ["DemoResult", "make_demo_field", "match_truth", "plot_truth", "run_demo", "skill"]

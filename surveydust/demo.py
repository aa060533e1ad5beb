"""The built-in demo: a small simulated JWST field with known truth, run end to end offline.

:func:`run_demo` (what ``surveydust run-catalogue --demo`` calls) simulates the field
(:func:`make_demo_field`: FITS files in the JWST ``i2d`` layout, ingested into a mosaic
store) with the sky's mix (:mod:`surveydust.simulate.foreground`: ordinary galaxies at
z ~ 0.2-6, dusty and Balmer-break galaxies and brown dwarfs at the densities of
``configs/simulation.yaml``) around its z = 6-8 galaxies, and makes its catalogue the way a
survey would: without a redshift table (spectroscopy covers few of a mosaic's sources), so the
dust step runs on the sources the photometric redshifts select as z > 6 (P(z>6) >=
``p_high_z_min`` and the catalogue's other photo-z criteria), their dust mixed over p(z).
It then scores the catalogue against the
truth: the selection (:func:`selection_summary`: detected, selected, truly z > 6, missed)
and the dust of the selected sources that are truly z > 6 (:func:`skill`: per quantity
and method N, MAE, the MAE of a constant guess and Spearman's rank correlation), with a
true-vs-predicted figure; :attr:`DemoResult.summary` says it all in a few lines.
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
#: z = 6-8 galaxies injected: far above the sky's density (a few per cent of a mosaic's
#: detections), so that the selected sample is large enough to score the dust
DEMO_GALAXIES = 120
DEMO_SIZE = 1280  # pixels (38" at 0.03"/px)
#: the demo field's bands, as in JADES: F090W (photometry and photo-z only; it sees the Lyman break
#: of z = 6-7.3 galaxies, which lies blueward of F115W) and the six wide bands of the shipped network
DEMO_BANDS = ("F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
OUTPUT_KIND = "demo"  # the mark on the demo's own files (surveydust.stores.base)
SKILL_FILE = "skill.ecsv"
FIGURE_FILE = "truth_vs_predicted.png"
#: flags that keep a selected z > 6 galaxy out of the skill table (those ``compare`` leaves out)
SCORE_NOTE = "without edge, masked, low_snr or out_of_distribution flags"
#: the truth table's kinds as the summary names them, singular and plural (``unmatched``: no
#: injected source within the match radius)
KIND_NAMES = {"high_z": ("z > 6 galaxy", "z > 6 galaxies"),
              "foreground": ("ordinary galaxy", "ordinary galaxies"),
              "dusty": ("dusty galaxy", "dusty galaxies"),
              "balmer_break": ("Balmer-break galaxy", "Balmer-break galaxies"),
              "brown_dwarf": ("brown dwarf", "brown dwarfs"),
              "unmatched": ("spurious detection", "spurious detections")}


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made: the catalogue, its truth match, the z > 6 selection's counts
    (:func:`selection_summary`), the skill table, the summary lines and the paths written."""

    catalogue: Any
    match: dict[str, Any]
    skill: Any
    paths: dict[str, Path]
    selection: dict[str, Any]
    summary: list[str]


def make_demo_field(directory: Path | str, *, n_galaxies: int = DEMO_GALAXIES, size: int = DEMO_SIZE,
                    seed: int = 0, client: Any = None, overwrite: bool = False,
                    progress: bool = True, priors: dict[str, Any] | None = None,
                    foreground: bool | dict[str, Any] = False,
                    bands: tuple[str, ...] | None = None) -> tuple[Path, Path]:
    """Simulate a demo field into ``directory``; return (mosaic store, truth table) paths.

    ``n_galaxies`` galaxies from the built-in simulator on a ``size`` x
    ``size`` pixel (0.03"/px) field in ``bands`` (default the simulator's six wide bands) with a
    rotated WCS, CEERS-like noise and NaN borders, written as FITS and ingested in 256-pixel chunks.
    ``priors`` replaces some of the simulator's nuisance priors (``configs/simulation.yaml``).
    ``foreground`` adds the sky's mix (:func:`surveydust.simulate.simulate_field`): True at the
    densities of ``configs/simulation.yaml``, a mapping to change them; :func:`run_demo` turns
    it on, the default (off) keeps the z > 6-only fields other tests build on.
    """
    from surveydust.simulate import simulate_field
    from surveydust.stores.base import check_output_path
    from surveydust.stores.mosaic import ingest_mosaic

    directory = Path(directory)
    store = check_output_path(directory / "field.zarr", overwrite, "mosaic")
    files = simulate_field(directory / "fits", n_galaxies=n_galaxies, shape=(size, size), seed=seed,
                           overwrite=overwrite, priors=priors, foreground=foreground, bands=bands)
    logger.info("simulated %d galaxies%s on a %d x %d field: %s", n_galaxies,
                " and the sky's foreground" if foreground else "", size, size, directory / "fits")
    ingest_mosaic(store, {b: str(p) for b, p in files.bands.items()}, field="demo", chunk=DEMO_TILE_PIX,
                  client=client, overwrite=overwrite, progress=progress)
    return store, files.truth


def _demo_config(config: Any, overrides: dict[str, Any]) -> Any:
    """The catalogue settings of the demo: ``config`` (object, YAML or None) with ``overrides``,
    and tiles of :data:`DEMO_TILE_PIX` unless a tile size was given."""
    from surveydust.config import load_catalogue_config

    cfg = load_catalogue_config(config, **overrides)
    return cfg if cfg.tile_pix is not None else load_catalogue_config(cfg, tile_pix=DEMO_TILE_PIX)


def run_demo(directory: Path | str = "demo", *, out: Path | str | None = None, model: Any = None,
             client: Any = None, export_format: str | None = None, overwrite: bool = False,
             progress: bool = True, foreground: bool | dict[str, Any] = True,
             sources: Path | str | None = None, redshifts: Path | str | None = None,
             config: Any = None, **config_overrides: Any) -> DemoResult:
    """Simulate the demo field in ``directory``, make its catalogue (``out``, default
    ``directory/catalogue.zarr``), and score it against the injected truth.

    The field (:data:`DEMO_BANDS`: F090W and the six wide bands) holds :data:`DEMO_GALAXIES`
    z = 6-8 galaxies and (``foreground``) the sky's mix around them. No redshift table is used
    unless ``redshifts`` (or ``sources``) gives one: the dust step runs on the sources the photo-z
    selects (P(z>6) >= ``p_high_z_min`` of ``config``, and the catalogue's other criteria), with
    p(z)-mixed predictions. ``config`` and ``config_overrides`` (e.g. ``p_high_z_min=0.5``) are
    the catalogue settings (:func:`surveydust.config.load_catalogue_config`); the tiles are
    :data:`DEMO_TILE_PIX` px unless they set ``tile_pix``.

    Writes ``skill.ecsv`` (with the selection's counts and the summary in its meta) and
    ``truth_vs_predicted.png`` next to the catalogue. Every output (the field store, the
    catalogue, its export and these two files) is checked before the field is simulated: one
    that exists is refused unless ``overwrite``, and replaced only when an earlier demo wrote
    it (:func:`surveydust.stores.base.check_output_path`).
    """
    from surveydust.infer import run_catalogue
    from surveydust.stores.base import check_output_folder, check_output_path, write_output_table
    from surveydust.stores.catalogue import check_outputs

    directory = Path(directory)
    out = Path(out) if out is not None else directory / "catalogue.zarr"
    export_to = out.with_suffix(f".{export_format}") if export_format else None
    cfg = _demo_config(config, config_overrides)  # bad settings fail before any work
    field = [directory / "field.zarr", directory / "fits"]  # the catalogue run's inputs, made here
    inputs = [*field, *(model if isinstance(model, (list, tuple)) else [model]), sources, redshifts]
    check_output_path(field[0], overwrite, "mosaic")
    out, export_to = check_outputs(out, export_to, overwrite, inputs)
    check_output_folder(out.parent, [SKILL_FILE, FIGURE_FILE], overwrite, OUTPUT_KIND, inputs=inputs)
    store, truth = make_demo_field(directory, client=client, overwrite=overwrite, progress=progress,
                                   foreground=foreground, bands=DEMO_BANDS)
    cat = run_catalogue(store, out, model=model, sources=sources, redshifts=redshifts, config=cfg, client=client,
                        export_to=export_to, overwrite=overwrite, progress=progress)
    table = skill(cat, truth)
    selection = table.meta["selection"]
    match = match_truth(cat, truth)
    lines = summary_lines(selection, table, match)
    table.meta["summary"] = lines
    paths = {"catalogue": out, "skill": write_output_table(table, out.parent / SKILL_FILE, OUTPUT_KIND),
             "figure": plot_truth(cat, truth, out.parent / FIGURE_FILE)}
    if export_to is not None:
        paths["export"] = export_to
    return DemoResult(catalogue=cat, match=match, skill=table, paths=paths, selection=selection,
                      summary=[*lines, f"wrote {paths['skill']} and {paths['figure']}"])


def match_truth(catalogue: Any, truth: Path | str, radius_arcsec: float = TRUTH_MATCH_ARCSEC) -> dict[str, Any]:
    """Match catalogue sources to the injected sources' light-weighted centroids
    (nearest within ``radius_arcsec``): the numbers of matches, missed sources
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


def source_truth(cat: Any, truth: Path | str, radius_arcsec: float = TRUTH_MATCH_ARCSEC) -> dict[str, np.ndarray]:
    """Per catalogue source, its injected source (the nearest light-weighted centroid within
    ``radius_arcsec``, as :func:`surveydust.compare.truth_values`): ``matched``, the true
    ``redshift`` (NaN unmatched) and ``kind`` (``high_z``, ``foreground``, ``dusty``,
    ``balmer_break``, ``brown_dwarf``; ``""`` unmatched; ``high_z`` for every source of a
    field without foreground)."""
    from surveydust.sources import read_table

    table = read_table(truth, "truth")
    idx, _, ok = nearest(cat["ra"].values, cat["dec"].values, np.asarray(table["ra_centroid"]),
                         np.asarray(table["dec_centroid"]), radius_arcsec)
    kinds = np.asarray(table["kind"], str) if "kind" in table.colnames else np.full(len(table), "high_z")
    return {"matched": ok, "redshift": np.where(ok, np.asarray(table["redshift"], float)[idx], np.nan),
            "kind": np.where(ok, kinds[idx] if len(kinds) else "", "")}


def selection_summary(cat: Any, truth: Path | str) -> dict[str, Any]:
    """The z > 6 selection of a catalogue against the truth, in counts of catalogue sources.

    Returns
    -------
    dict
        ``injected`` (per kind), ``detected``, ``matched``, ``selected`` (dust predicted:
        ``selected_by`` set; ``selected_photoz`` and ``selected_spec_z`` of them), ``rule``
        (:func:`selection_rule`), ``true_high_z_selected``, ``interlopers`` (selected, not a z > 6
        galaxy) with ``interlopers_by_kind`` (``unmatched``: no injected source within the
        match radius) and ``interlopers_z`` (their true z range), ``true_high_z_detected``,
        ``true_high_z_not_selected``, ``scored`` (selected, truly z > 6, without quality flags:
        the skill table's sources), ``purity`` and ``completeness``; also the boolean arrays
        ``_selected``, ``_true_high_z``, ``_scored``, ``_interloper`` (not for tables).
    """
    from surveydust.compare import good_sources
    from surveydust.photoz import HIGH_Z
    from surveydust.sources import read_table

    table = read_table(truth, "truth")
    injected = ({str(k): int((table["kind"] == k).sum()) for k in dict.fromkeys(table["kind"])}
                if "kind" in table.colnames else {"high_z": len(table)})
    st = source_truth(cat, truth)
    n = cat.sizes["source"]
    # selected_by reads back from Zarr as numpy's variable-width StringDType: compare as objects
    by = np.asarray(cat["selected_by"].values).astype(object) if "selected_by" in cat else np.full(n, "spec_z", object)
    selected = by != ""
    with np.errstate(invalid="ignore"):
        high = st["matched"] & (st["redshift"] > HIGH_Z)
    interloper = selected & ~high
    scored = selected & high & good_sources(cat)
    kinds = np.where(st["matched"], st["kind"], "unmatched")[interloper]
    z_int = st["redshift"][interloper & st["matched"]]
    tp, n_sel, n_high = int((selected & high).sum()), int(selected.sum()), int(high.sum())
    return {
        "injected": injected, "detected": int(n), "matched": int(st["matched"].sum()),
        "selected": n_sel, "selected_photoz": int((selected & (by != "spec_z")).sum()),
        "selected_spec_z": int((by == "spec_z").sum()), "rule": selection_rule(cat),
        "true_high_z_selected": tp, "interlopers": int(interloper.sum()),
        "interlopers_by_kind": {str(k): int((kinds == k).sum()) for k in dict.fromkeys(kinds)},
        "interlopers_z": [float(z_int.min()), float(z_int.max())] if z_int.size else [],
        "true_high_z_detected": n_high, "true_high_z_not_selected": int((high & ~selected).sum()),
        "scored": int(scored.sum()),
        "purity": tp / n_sel if n_sel else float("nan"), "completeness": tp / n_high if n_high else float("nan"),
        "_selected": selected, "_true_high_z": high, "_scored": scored, "_interloper": interloper,
    }


def selection_rule(cat: Any) -> str:
    """How the catalogue selected its sources without a spectroscopic z, in words: P(z>6) >=
    ``p_high_z_min``, and the name of the function with the other criteria where the
    catalogue's photo-z provenance names one."""
    p_min = cat.attrs.get("catalogue_config", {}).get("p_high_z_min")
    rule = f"P(z>6) >= {p_min:g}" if p_min is not None else "the photometric redshift"
    other = cat.attrs.get("photoz", {}).get("selection") if isinstance(cat.attrs.get("photoz"), dict) else None
    return f"{rule} and the other criteria of {other.removeprefix('surveydust.')}" if other else rule


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
    """Skill of every method of the catalogue against the demo field's truth, over the
    sources selected for the dust step that are truly z > 6 galaxies.

    Scored by :func:`surveydust.evaluation.metrics.residual_metrics` over the selected sources
    (``selected_by`` set: by P(z>6) or a spectroscopic z) that match an injected z > 6 galaxy
    and have none of the flags ``compare`` leaves out (edge, masked, low_snr,
    out_of_distribution). Interlopers (selected sources that are not z > 6 galaxies) are
    counted, not scored: the networks know only z = 6-8 galaxies, so their dust values
    mean nothing.

    Parameters
    ----------
    cat : xarray.Dataset
        A catalogue (:func:`surveydust.stores.catalogue.open_catalogue`).
    truth : path
        The field's truth table (positions, redshift, A_V and E(B-V) [mag], log sSFR
        [log10(yr^-1)], and ``kind`` with a foreground).

    Returns
    -------
    astropy.table.Table
        A row per quantity and method: ``N``, ``MAE`` and ``MAE_constant`` (of
        the constant guess: the model's training median, the truth's own median
        when unknown) in the quantity's units, and ``spearman``. Its meta: ``sources``
        (the scored sources), ``catalogue_sources`` and ``selection``
        (:func:`selection_summary`, without its arrays).
    """
    from astropy.table import Table

    from surveydust.compare import methods, truth_values
    from surveydust.evaluation.metrics import residual_metrics
    from surveydust.quantities import PREDICTED

    selection = selection_summary(cat, truth)
    keep = selection["_scored"]
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
    table = Table(rows=rows, names=["quantity", "method", "N", "MAE", "MAE_constant", "spearman"],
                  dtype=[str, str, int, float, float, float])
    for name in ("MAE", "MAE_constant", "spearman"):
        table[name].info.format = ".3g"
    table.meta.update(sources=int(keep.sum()), catalogue_sources=int(cat.sizes["source"]),
                      selection={k: v for k, v in selection.items() if not k.startswith("_")},
                      note=f"sources selected for the dust step that match an injected z > 6 galaxy within "
                           f"{TRUTH_MATCH_ARCSEC} arcsec, {SCORE_NOTE} (as in compare)")
    return table


def summary_lines(selection: dict[str, Any], table: Any, match: dict[str, Any] | None = None) -> list[str]:
    """The demo's summary: the field, the z > 6 selection's counts against the truth, the skill
    table over the selected true z > 6 galaxies (``table``, from :func:`skill`) and the interlopers."""
    from surveydust.config import FOREGROUND_KINDS

    inj = selection["injected"]
    n_high, n_fg = inj.get("high_z", 0), sum(v for k, v in inj.items() if k != "high_z")
    threshold = selection["rule"]
    if n_fg:
        kinds = ", ".join(_count(inj.get(k, 0), *KIND_NAMES[k]) for k in FOREGROUND_KINDS)
        share = 100 * n_high / (n_high + n_fg)
        lines = [(f"demo field: {n_high} z = 6-8 galaxies and {n_fg} sources of the sky's mix at z < 6 ({kinds}; "
                  "the densities of configs/simulation.yaml)"),
                 (f"  z > 6 galaxies are {share:.0f}% of the injected sources (a few per cent in a real mosaic), "
                  "so the dust score has a sample")]
    else:
        lines = [f"demo field: {n_high} z = 6-8 galaxies, no foreground"]
    if selection["selected_spec_z"]:
        lines.append(f"redshift table: {selection['selected_spec_z']} sources took a spectroscopic z and are "
                     f"selected by it, the others by {threshold}")
    else:
        lines.append(f"no redshift table (most sources of a survey have none): z > 6 selection by the photometric "
                     f"redshift ({threshold}); dust mixed over p(z)")
    spurious = f", {match['spurious']} spurious" if match is not None else ""
    lines.append(f"detected: {selection['detected']} sources ({selection['matched']} matched to an injected "
                 f"source within {TRUTH_MATCH_ARCSEC:g}\"{spurious})")
    by_kind = ", ".join(_count(v, *KIND_NAMES.get(k, (k, k))) for k, v in selection["interlopers_by_kind"].items())
    z_range = selection["interlopers_z"]
    interlopers = (f"; {_count(selection['interlopers'], 'interloper', 'interlopers')} ({by_kind}"
                   + (f", true z {z_range[0]:.1f}-{z_range[1]:.1f}" if z_range else "") + ")"
                   if selection["interlopers"] else "")
    lines.append(f"selected as z > 6: {selection['selected']}, of those truly z > 6: "
                 f"{selection['true_high_z_selected']} (purity {selection['purity']:.2f}){interlopers}")
    lines.append(f"z > 6 galaxies detected but not selected: {selection['true_high_z_not_selected']} of "
                 f"{selection['true_high_z_detected']} (completeness {selection['completeness']:.2f})")
    lines.append(f"dust skill on the {selection['scored']} selected sources that are truly z > 6, {SCORE_NOTE}:")
    lines += [f"  {line}" for line in table.pformat(max_lines=-1, max_width=-1)]
    if selection["interlopers"]:
        lines.append(f"the {_count(selection['interlopers'], 'interloper', 'interlopers')} got dust values too: "
                     "the networks' answer for a z = 6-8 galaxy, meaningless for anything else however plausible; "
                     "not scored")
    return lines


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def plot_truth(cat: Any, truth: Path | str, path: Path) -> Path:
    """True vs predicted A_V, E(B-V) and log sSFR per method (16-84% bars for CNNs) for the
    scored sources (:func:`skill`), and the CNN values of the interlopers (grey crosses)."""
    from surveydust.compare import methods, truth_values
    from surveydust.figures import subplots
    from surveydust.quantities import LABELS, PREDICTED
    from surveydust.stores.base import write_output_figure

    selection = selection_summary(cat, truth)
    keep, interloper, true = selection["_scored"], selection["_interloper"], truth_values(cat, truth)
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
            bad = interloper & np.isfinite(est) & np.isfinite(true[q])
            if name.startswith("CNN ") and bad.any():
                ax.plot(true[q][bad], est[bad], "x", color="0.5", ms=4,
                        label=f"{name}, interlopers (z < 6, not scored)")
        lims = np.array(ax.get_xlim() + ax.get_ylim())
        ax.plot([lims.min(), lims.max()], [lims.min(), lims.max()], "r-", lw=1)
        ax.set_xlabel(f"true {LABELS[q]}")
        ax.set_ylabel(f"predicted {LABELS[q]}")
        ax.legend(fontsize=7)
    fig.suptitle(f"demo field: {int(keep.sum())} sources selected as z > 6 that are z > 6 galaxies, "
                 "without quality flags")
    fig.tight_layout()
    return write_output_figure(fig, path, OUTPUT_KIND, dpi=100)


__all__ = ["DemoResult", "make_demo_field", "match_truth", "plot_truth", "run_demo", "selection_summary", "skill",
           "source_truth", "summary_lines"]

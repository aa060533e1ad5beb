"""Bulk inference on a mosaic store: tiled detection (or given positions), stamps, CNN predictions.

One Dask task per tile (``catalogue-tile-<run>-<n>`` on the dashboard) reads
the tile plus a halo from the mosaic store on the worker (straight from Zarr,
the store opened once per worker process), finds its sources (detection, or
the ``--sources`` positions that fall in its core), measures aperture
photometry, cuts all stamps with one vectorised index and predicts with every
model (:func:`measure_tile`, which reads the tile and calls the pure kernel
:func:`measure`, then :func:`predict_tile`). Each worker loads a model bundle
once and keeps it for all its tiles. When workers advertise a
``GPU`` resource, the two steps are separate tasks (``measure-tile-...`` on any
worker, ``catalogue-tile-...`` asking for a GPU), so only the predictions wait
for a GPU worker.

Photometric redshifts and the z > 6 selection (``photoz``, ``p_high_z_min``, ``delta_chi2_min``,
``z_low_max``, ``blue_veto_snr``, ``star_delta_chi2``, ``all_sources`` in
``configs/catalogue.yaml``): after the aperture photometry, each tile task fits every source's
photometry in all bands with data (F090W too) with the template fit of
:func:`surveydust.photoz.fit_photoz` (``z_phot``, ``z_phot_p16``, ``z_phot_p84``, ``p_high_z``;
the template grid is built once by the driver and sent to the tasks) and applies the z > 6
criteria of deep-field searches, :func:`surveydust.photoz.select_high_z` (P(z > 6), a chi^2 gap
to the best low-z solution, no detection blueward of the break, not a brown dwarf;
``delta_chi2``, ``high_z_reason``). Dust is then predicted for sources with a spectroscopic z,
or without one but selected by those criteria: their
networks' redshift input takes ``photoz_draws`` stratified draws from p(z) restricted to the
training range, and the percentiles are those of the mixture of the draws' predictions
(:func:`mix_percentiles`). Other sources keep photometry and ``z_phot``, NaN dust and the flag
``not_high_z`` (with ``all_sources`` they are predicted anyway, still flagged).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from surveydust.bundle import Predictor, load_model, read_meta, richest_bundle, training_redshift_range
from surveydust.cluster import Compute, gpu_workers
from surveydust.config import CatalogueConfig, load_catalogue_config
from surveydust.detect import PixelGrid, Tile, aperture_photometry, cut_stamps, detect, make_tiles
from surveydust.errors import InputError
from surveydust.instrument import pivot_wavelength_aa
from surveydust.photoz import (
    HIGH_Z,
    SYS_ERR,
    Z_GRID_STEP,
    TemplateGrid,
    default_z_grid,
    fit_photoz,
    pz_quantiles,
    select_high_z,
    template_grid,
)
from surveydust.posterior import LEVEL_NAMES, LEVELS, NOMINAL_Z, from_network, to_network
from surveydust.provenance import VERSION
from surveydust.runs import run_parts
from surveydust.sources import match_redshifts, redshift_table, source_positions
from surveydust.stores.catalogue import (
    FLAG_DESCRIPTIONS,
    FLAGS,
    assemble,
    check_outputs,
    column_suffix,
    export,
    write_catalogue,
)
from surveydust.uvslope import meurer_av, uv_slopes

logger = logging.getLogger(__name__)

#: a band bluer than this one (pivot) is needed to see the Lyman break of z = 6-8 galaxies
BREAK_BAND = "F150W"
#: quantile-function samples per p(z) draw when the draws' predictions are mixed
MIX_SAMPLES = 100


@dataclass(frozen=True)
class PhotoZSetup:
    """What a tile task needs for photometric redshifts and the z > 6 selection.

    Attributes
    ----------
    templates : the template fluxes of the bands with data (None in predict-only tasks).
    z_grid : the redshift grid of p(z).
    select : whether the photo-z selects sources for the dust step (False where no band with data is
        bluer than :data:`BREAK_BAND`: the photometry cannot see the break).
    criteria : the thresholds of :func:`surveydust.photoz.select_high_z` (its keywords), from the
        catalogue configuration.
    """

    templates: TemplateGrid | None
    z_grid: np.ndarray
    select: bool
    criteria: dict[str, float]


def run_catalogue(
    store: Path | str,
    out: Path | str | None = None,
    *,
    model: Path | str | list[Path | str] | None = None,
    sources: Path | str | None = None,
    redshifts: Path | str | None = None,
    config: CatalogueConfig | Path | str | None = None,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    export_to: Path | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Any:
    """Detect (or take) sources on a mosaic store and predict their dust and sSFR.

    Parameters
    ----------
    store : mosaic store (Zarr, from :func:`surveydust.ingest_mosaic`).
    out : catalogue store to write (Zarr); None returns the catalogue only.
    model : model bundle folder(s); None: the shipped bundle with the most bands the
        mosaic has data in (six wide bands, else F277W+F356W+F444W, else F277W). Several
        bundles (e.g. 1-band and 3-band) run in the same pass, labelled by their bands
        (:func:`model_labels`). A given bundle needing a band without data is an error.
    sources : table (CSV, FITS, ECSV) with RA/Dec columns in degrees (and
        optionally an id and a redshift ``z``): predict at those positions
        instead of detecting. Rows without usable RA/Dec and positions off the
        mosaic's data are counted and left out, impossible redshifts (e.g. -99) read
        as missing (:func:`surveydust.sources.source_positions`), not errors.
    redshifts : table with RA/Dec [deg] and a redshift column (``z``,
        ``z_spec``, ``redshift``), e.g. a spectroscopic catalogue: each source
        without a ``z`` takes the redshift of the nearest entry within
        ``redshift_match_arcsec`` (for the UV-slope bands, the networks and SED fits);
        rows without usable RA/Dec or redshift are counted and left out.
    config : detection settings (``configs/catalogue.yaml``), ``overrides`` on top (e.g.
        ``all_sources=True``, ``p_high_z_min=0.8``, ``delta_chi2_min=9``, ``photoz=False``).
    export_to : also write a ``.fits`` or ``.ecsv`` table.

    With ``photoz`` (the default) every source gets ``z_phot``, ``z_phot_p16``, ``z_phot_p84``,
    ``p_high_z`` (P(z > 6)), ``delta_chi2`` and ``high_z_reason``, and dust only where it has a
    spectroscopic z (from ``sources`` or ``redshifts``) or the z > 6 criteria of
    :func:`surveydust.photoz.select_high_z` select it; the others get NaN dust and the flag
    ``not_high_z`` (``all_sources``: predicted anyway, still flagged). A mosaic without a band
    bluer than F150W cannot see the Lyman break of z = 6-8 galaxies: there the dust step needs
    ``sources`` or ``redshifts`` (or ``all_sources``), else this is a ValueError.

    A source whose redshift lies outside a model's training range, or whose stamp has a
    model band without a valid pixel, gets NaN from that model and the flag
    ``z_out_of_range`` or ``no_data``. The counts of every flag and of every reason a table
    row was left out are logged at the end (and kept in the attrs' ``input_checks``).

    Returns the catalogue as an in-memory ``xarray.Dataset`` (dim ``source``).
    """
    job = _plan(store, model, sources, redshifts, load_catalogue_config(config, **overrides))
    out_path, export_to = check_outputs(out, export_to, overwrite, [store, sources, redshifts, *job.bundles])

    def finish(columns: dict[str, np.ndarray]) -> Any:
        ds = job.assemble(columns)
        if out_path is not None:
            write_catalogue(ds, out_path, overwrite=overwrite)
        if export_to is not None:
            export(ds, export_to, overwrite=overwrite)
        return ds

    return run_parts(out_path, job.inputs(), [t.index for t in job.tiles], job.submit, finish,
                     compute=Compute(client, cluster, workers, progress), describe=_tile_progress,
                     announce=job.announce, scratch_prefix="surveydust-catalogue-")


@dataclass
class _CatalogueJob:
    """A catalogue run, planned and checked before any cluster starts: its tiles, models, tables and
    settings; :func:`run_parts` drives it (:meth:`submit` the tiles, :meth:`assemble` the columns)."""

    store: str
    mosaic: Any
    cfg: CatalogueConfig
    bundles: list[Path]
    metas: list[dict[str, Any]]
    labels: list[str]
    tiles: list[Tile]
    tile_size: int
    halo: int
    crop: int
    photoz: PhotoZSetup | None
    positions: dict[str, np.ndarray] | None
    z_table: dict[str, np.ndarray] | None
    checks: dict[str, dict[str, int]]
    sources: Path | str | None
    redshifts: Path | str | None

    def inputs(self) -> tuple:
        """Everything the catalogue depends on (the run's token)."""
        return (self.mosaic.attrs.get("store_id"), [m["checksums"] for m in self.metas], self.cfg.to_json(),
                None if self.positions is None else {k: v.tolist() for k, v in self.positions.items()},
                None if self.z_table is None else {k: v.tolist() for k, v in self.z_table.items()})

    def announce(self, n: int, done: int) -> str:
        return (f"{n} tiles of {self.tile_size} x {self.tile_size} pixels ({done} done before), halo {self.halo} px, "
                f"models: {', '.join(self.labels)}")

    def submit(self, client: Any, todo: list[int], token: str) -> dict[int, Any]:
        return _submit_tiles(client, [self.tiles[i] for i in todo], self.store, self.halo, self.crop,
                             [str(p) for p in self.bundles], self.cfg, self.positions, self.z_table, token, self.photoz)

    def assemble(self, columns: dict[str, np.ndarray]) -> Any:
        """The catalogue of the tiles' columns, with redshifts, UV slopes and provenance; its summary logged."""
        if not len(columns.get("x", ())):
            logger.warning("no sources detected: the catalogue is empty")
        ds = assemble(columns, list(self.mosaic["band"].values), self.labels,
                      _provenance(self.mosaic, self.bundles, self.metas, self.labels, self.cfg, self.sources,
                                  self.redshifts, self.checks, self.photoz))
        if self.z_table is not None:
            add_redshifts(ds, self.z_table, self.cfg.redshift_match_arcsec, Path(self.redshifts).name)
        add_uv_slopes(ds, self.cfg.default_redshift)
        _describe_photoz(ds)
        _log_summary(ds, self.checks, dict(zip(self.labels, map(training_redshift_range, self.metas))))
        return ds


def _plan(store: Path | str, model: Path | str | list[Path | str] | None, sources: Path | str | None,
          redshifts: Path | str | None, cfg: CatalogueConfig) -> _CatalogueJob:
    """Open and check the mosaic store, the models, the tables and the settings of a catalogue run."""
    from surveydust.stores.mosaic import block_pix, mosaic_wcs, open_mosaic, store_chunk

    mosaic = open_mosaic(store)
    data_bands = bands_with_data(mosaic)
    bundles = _bundle_paths(model, data_bands)
    metas = [read_meta(p) for p in bundles]
    labels = model_labels(bundles, metas)
    _check_bands(mosaic, metas, labels, cfg, detecting=sources is None)
    if sources is None:
        cfg = _detection_bands(cfg, data_bands)
    photoz = _photoz_setup(cfg, data_bands, spectroscopic=sources is not None or redshifts is not None)
    positions, z_table, checks = _read_tables(sources, redshifts, mosaic_wcs(mosaic), mosaic.sel(band=data_bands))
    tile_size = cfg.tile_pix or block_pix(store_chunk(mosaic))
    crop = max(int(m["crop"]) for m in metas)
    return _CatalogueJob(str(store), mosaic, cfg, bundles, metas, labels,
                         make_tiles((mosaic.sizes["y"], mosaic.sizes["x"]), tile_size), tile_size,
                         max(cfg.halo_pix, crop // 2 + 1), crop, photoz, positions, z_table, checks, sources,
                         redshifts)


def sees_break(bands: list[str]) -> bool:
    """Whether photometry in ``bands`` can see the Lyman break of z = 6-8 galaxies: a band bluer
    (by pivot wavelength) than :data:`BREAK_BAND` (F090W, F115W; a LW-only mosaic cannot)."""
    return any(pivot_wavelength_aa(b) < pivot_wavelength_aa(BREAK_BAND) for b in bands)


def _photoz_setup(cfg: CatalogueConfig, data_bands: list[str], spectroscopic: bool) -> PhotoZSetup | None:
    """The photo-z templates of the bands with data (built here once, sent to the tile tasks), or
    None without ``cfg.photoz``; a one-line error (or warning) where the selection cannot work."""
    see = sees_break(data_bands)
    if not see and not spectroscopic and not cfg.all_sources:
        raise InputError(f"the mosaic's bands with data ({', '.join(data_bands)}) cannot see the Lyman break of "
                         f"z = 6-8 galaxies (none bluer than {BREAK_BAND}), so P(z>6) cannot select them: give "
                         "--redshifts or --sources with redshifts for the dust step, or --all-sources to predict "
                         "every source anyway (flagged not_high_z)")
    if not see:
        logger.warning("the mosaic's bands (%s) cannot see the Lyman break of z = 6-8 galaxies (none bluer than %s): "
                       "no selection by P(z>6); dust for sources with a spectroscopic z%s", ", ".join(data_bands),
                       BREAK_BAND, " and, flagged not_high_z, every other source (all_sources)" if cfg.all_sources
                       else " only")
    elif not cfg.photoz and not spectroscopic and not cfg.all_sources:
        logger.warning("photoz is off and no redshifts are given: no source is selected for the dust step "
                       "(give --redshifts or --sources, or --all-sources)")
    if not cfg.photoz:
        return None
    z_grid = default_z_grid()
    criteria = {"p_min": cfg.p_high_z_min, "delta_chi2_min": cfg.delta_chi2_min, "z_low_max": cfg.z_low_max,
                "veto_snr": cfg.blue_veto_snr, "star_delta_chi2": cfg.star_delta_chi2}
    return PhotoZSetup(template_grid(data_bands, z_grid), z_grid, select=see, criteria=criteria)


def _read_tables(sources: Path | str | None, redshifts: Path | str | None, wcs: Any,
                 mosaic: Any) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None,
                                   dict[str, dict[str, int]]]:
    """The positions of a sources table and the entries of a redshifts table (None where not
    given), and per table the rows left out or read as missing, by reason; before any cluster
    starts, a sources table without a position on the mosaic's data is an error."""
    checks: dict[str, dict[str, int]] = {}
    positions = source_positions(sources, wcs, mosaic, checks.setdefault("sources", {})) \
        if sources is not None else None
    if positions is not None and not len(positions["x"]):
        raise InputError("no sources: none of the given positions lies on the mosaic's data")
    z_table = redshift_table(redshifts, checks.setdefault("redshifts", {})) if redshifts is not None else None
    return positions, z_table, checks


def model_labels(paths: list[Path], metas: list[dict[str, Any]]) -> list[str]:
    """The models' names in a catalogue (its ``model`` coordinate), all distinct, also as column names
    (:func:`surveydust.stores.catalogue.column_suffix`): each model's bands (``F277W+F356W+F444W``);
    models that share their bands get their bundle folder's name too (``F277W+F356W+F444W_run2``),
    and a number where even those are the same."""
    bands = ["+".join(m["bands"]) for m in metas]
    wanted = [b if bands.count(b) == 1 else f"{b}_{column_suffix(p.resolve().name)}" for b, p in zip(bands, paths)]
    labels: list[str] = []
    for label in wanted:
        unique, k = label, 1
        while column_suffix(unique) in map(column_suffix, labels):
            k += 1
            unique = f"{label}_{k}"
        labels.append(unique)
    return labels


def bands_with_data(mosaic: Any) -> list[str]:
    """The bands of a mosaic store with at least one valid pixel (ingest records the others as
    ``empty_bands``)."""
    empty = set(mosaic.attrs.get("empty_bands", []))
    return [str(b) for b in mosaic["band"].values if str(b) not in empty]


def _bundle_paths(model: Path | str | list[Path | str] | None, bands: list[str]) -> list[Path]:
    """The given bundles, or the shipped one with the most of ``bands`` (the mosaic's bands that hold data)."""
    if model is None:
        path = richest_bundle(bands)
        logger.info("model: the shipped %s bundle (the richest the mosaic's bands allow)",
                    "+".join(read_meta(path)["bands"]))
        return [path]
    paths = [Path(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"model bundle {p} does not exist")
    return paths


def _check_bands(mosaic: Any, metas: list[dict[str, Any]], labels: list[str], cfg: CatalogueConfig,
                 detecting: bool) -> None:
    """One-line errors for bands the models or the detection need that the mosaic store lacks, and for
    model bands without a single valid pixel."""
    have = set(mosaic["band"].values)
    need = {b for m in metas for b in m["bands"]} | (set(cfg.detection_bands) if detecting else set())
    missing = sorted(need - have)
    if missing:
        raise InputError(f"the mosaic store has no band(s) {missing} (it has {sorted(have)}); "
                         "they are needed by the model(s) or the detection image")
    data = set(bands_with_data(mosaic))
    for label, meta in zip(labels, metas):
        empty = sorted(set(meta["bands"]) - data)
        if empty:
            raise InputError(f"band(s) {empty} of the mosaic store hold no data (no valid pixel): model {label} "
                             "needs them; give a model without them, or none (the richest whose bands hold data)")


def _detection_bands(cfg: CatalogueConfig, data_bands: list[str]) -> CatalogueConfig:
    """``cfg`` with the detection bands that hold data (a warning names the others; none is an error)."""
    empty = [b for b in cfg.detection_bands if b not in data_bands]
    if not empty:
        return cfg
    kept = tuple(b for b in cfg.detection_bands if b in data_bands)
    if not kept:
        raise InputError(f"no detection band holds data ({', '.join(empty)} have no valid pixel): set "
                         f"detection_bands to bands with data ({', '.join(data_bands) or 'none'})")
    logger.warning("detection band(s) %s hold no data (no valid pixel): detecting on %s", ", ".join(empty),
                   ", ".join(kept))
    return cfg.model_copy(update={"detection_bands": kept})


def _submit_tiles(client: Any, todo: list[Tile], store: str, halo: int, size: int, bundles: list[str],
                  cfg: CatalogueConfig, positions: dict[str, np.ndarray] | None,
                  z_table: dict[str, np.ndarray] | None, token: str,
                  photoz: PhotoZSetup | None = None) -> dict[int, Any]:
    """One future per tile to do (tile index -> future of its columns); with ``positions``,
    tiles holding none of them are skipped."""
    gpu = bool(gpu_workers(client))
    # the templates (a few MB) go to the workers once, not inside every tile task
    setup = client.scatter(photoz, broadcast=True, hash=False) if photoz is not None and todo else photoz
    light = None if photoz is None else replace(photoz, templates=None)  # predictions need p(z) only
    futures = {}
    for tile in todo:
        mine = None
        if positions is not None:
            own = tile.owns(positions["x"], positions["y"])
            if not own.any():
                continue  # no given position here: the tile is not even read
            mine = {k: v[own] for k, v in positions.items()}
        key = f"catalogue-tile-{token[:8]}-{tile.index}"
        if gpu:
            futures[tile.index] = _submit_gpu_tile(client, key, store, tile, halo, size, bundles, cfg, mine, z_table,
                                                   setup, light)
        else:  # one task: the stamps never leave the worker
            futures[tile.index] = client.submit(catalogue_tile, store, tile, halo, bundles, cfg, mine, z_table,
                                                setup, key=key, pure=False)
    return futures


def _submit_gpu_tile(client: Any, key: str, store: str, tile: Tile, halo: int, size: int, bundles: list[str],
                     cfg: CatalogueConfig, positions: dict[str, np.ndarray] | None,
                     z_table: dict[str, np.ndarray] | None, photoz: Any = None,
                     light: PhotoZSetup | None = None) -> Any:
    """The future of one tile's columns on workers with GPUs: detection and stamps on any worker's CPU
    (``measure-tile-...``), then only the predictions ask for a GPU (``catalogue-tile-...``). Given
    positions go ``cfg.sources_per_batch`` at a time, row by row (each batch reads only its strip of
    the tile), so no task holds more stamps than that."""
    order = None if positions is None else np.lexsort((positions["x"], positions["y"]))
    batches = [None] if positions is None else [
        {k: v[order[b]] for k, v in positions.items()} for b in _batches(len(order), cfg.sources_per_batch)]
    parts = []
    for i, batch in enumerate(batches):
        suffix = "" if len(batches) == 1 else f".{i}"
        measured = client.submit(measure_tile, store, tile, halo, size, cfg, batch, z_table, photoz,
                                 key=key.replace("catalogue-tile-", "measure-tile-") + suffix, pure=False)
        parts.append(client.submit(predict_tile, measured, bundles, cfg, light, key=key + suffix, pure=False,
                                   resources={"GPU": 1}))
    return parts[0] if len(parts) == 1 else client.submit(concat_columns, parts, key=key, pure=False)


def _batches(n: int, size: int) -> list[slice]:
    """Slices of ``range(n)`` of at most ``size`` (one empty slice when ``n`` is 0)."""
    return [slice(i, i + size) for i in range(0, max(n, 1), size)]


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Columns of several batches of one tile, concatenated along the source axis."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _tile_progress() -> Any:
    """``describe`` for :meth:`ResumableRun.collect`: tiles done, sources so far, seconds."""
    start, sources = time.perf_counter(), [0]

    def describe(n: int, total: int, columns: dict[str, np.ndarray]) -> str:
        sources[0] += len(columns["x"])
        return f"tile {n}/{total} done: {sources[0]} sources so far ({time.perf_counter() - start:.0f} s)"
    return describe


_PREDICTORS: dict[str, Predictor] = {}


def _predictor(path: str) -> Predictor:
    """The bundle at ``path``, loaded once per worker process."""
    if path not in _PREDICTORS:
        _PREDICTORS[path] = load_model(path)
    return _PREDICTORS[path]


def catalogue_tile(store: str, tile: Tile, halo: int, bundles: list[str], cfg: CatalogueConfig,
                   positions: dict[str, np.ndarray] | None,
                   z_table: dict[str, np.ndarray] | None = None,
                   photoz: PhotoZSetup | None = None) -> dict[str, np.ndarray]:
    """Sources, photometry and predictions of one tile (a Dask task on a CPU worker): the tile is
    read and its sources found once, then ``cfg.sources_per_batch`` sources at a time are
    measured (:func:`measure_tile`'s steps) and predicted (:func:`predict_tile`), so the memory
    held does not grow with the number of sources in the tile."""
    from surveydust.stores.mosaic import mosaic_reader

    size = max(p.crop for p in map(_predictor, bundles))
    mosaic = mosaic_reader(store)
    box = tile.with_halo(halo, mosaic.shape)
    sci, err = mosaic.read(*box)
    found = _tile_sources(sci, err, box, tile, cfg, positions, mosaic.bands)
    parts = [predict_tile(measure(mosaic.grid, sci, err, box, tile, size, cfg, {k: v[b] for k, v in found.items()},
                                   z_table, photoz), bundles, cfg, photoz)
             for b in _batches(len(found["x"]), cfg.sources_per_batch)]
    return concat_columns(parts)


def measure_tile(store: str, tile: Tile, halo: int, size: int, cfg: CatalogueConfig,
                 positions: dict[str, np.ndarray] | None,
                 z_table: dict[str, np.ndarray] | None = None,
                 photoz: PhotoZSetup | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sources of one tile (detected, or the given ``positions`` in its core), their
    aperture photometry [nJy], geometry flags, sky positions and redshifts, photometric
    redshifts (with ``photoz``: :func:`add_photoz`), and their
    ``size`` x ``size`` stamps ``(source, band, y, x)`` [nJy]; pure CPU work.

    A source's ``z`` comes from ``positions``, else the nearest entry of ``z_table``
    (NaN where neither has one)."""
    from surveydust.stores.mosaic import mosaic_reader

    mosaic = mosaic_reader(store)
    box = tile.with_halo(halo, mosaic.shape)
    if positions is not None and len(positions["y"]):  # only the rows the positions need
        box = (max(box[0], int(np.floor(positions["y"].min())) - halo),
               min(box[1], int(np.ceil(positions["y"].max())) + halo + 1), box[2], box[3])
    sci, err = mosaic.read(*box)
    found = _tile_sources(sci, err, box, tile, cfg, positions, mosaic.bands)
    return measure(mosaic.grid, sci, err, box, tile, size, cfg, found, z_table, photoz)


#: columns of a sources table that a catalogue keeps (besides the positions)
INPUT_COLUMNS = ("input_id", "z", "beta_input", "beta_input_err")


def _tile_sources(sci: np.ndarray, err: np.ndarray, box: tuple[int, int, int, int], tile: Tile,
                  cfg: CatalogueConfig, positions: dict[str, np.ndarray] | None,
                  bands: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The sources of a tile read as ``sci``, ``err`` ``(band, y, x)`` over ``box`` (y0, y1, x0, x1):
    mosaic ``x``, ``y`` [pixels] and ``blended``, detected in its core, or the given ``positions``
    (with their :data:`INPUT_COLUMNS`)."""
    if positions is not None:
        return {"x": positions["x"], "y": positions["y"], "blended": np.zeros(len(positions["x"]), dtype=bool),
                **{k: v for k, v in positions.items() if k in INPUT_COLUMNS}}
    det = [bands.index(b) for b in cfg.detection_bands]
    x, y, blended = detect(sci[det], err[det], cfg)
    x, y = x + box[2], y + box[0]
    own = tile.owns(x, y)
    return {"x": x[own], "y": y[own], "blended": blended[own]}


def measure(grid: PixelGrid, sci: np.ndarray, err: np.ndarray, box: tuple[int, int, int, int], tile: Tile, size: int,
            cfg: CatalogueConfig, found: dict[str, np.ndarray], z_table: dict[str, np.ndarray] | None = None,
            photoz: PhotoZSetup | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The pure measuring kernel of a tile (arrays in, columns and stamps out; no I/O): columns and
    stamps (see :func:`measure_tile`) of the sources ``found`` (:func:`_tile_sources`) in ``sci``,
    ``err`` ``(band, y, x)`` [nJy per pixel] read over ``box`` (y0, y1, x0, x1) of a mosaic ``grid``."""
    columns = {k: v for k, v in found.items() if k in INPUT_COLUMNS}
    x, y, x0, y0 = found["x"], found["y"], box[2], box[0]
    stamps = cut_stamps(sci, x - x0, y - y0, size)
    flux, flux_err = aperture_photometry(stamps, cut_stamps(err, x - x0, y - y0, size),
                                         cfg.aperture_arcsec / grid.pixel_scale_arcsec)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)
    flag = _geometry_flags(x, y, size, grid.shape, stamps) | np.where(found["blended"], FLAGS["blended"], 0)
    ra, dec = grid.wcs.all_pix2world(x, y, 0)
    z = columns["z"] if "z" in columns else np.full(x.size, np.nan)
    if z_table is not None:
        z = np.where(np.isfinite(z), z, match_redshifts(ra, dec, z_table, cfg.redshift_match_arcsec)["z"])
    columns.update(ra=ra, dec=dec, x=x, y=y, tile=np.full(x.size, tile.index), flux=flux, flux_err=flux_err,
                   snr=snr, flag=flag.astype(np.uint16), band=np.array(grid.bands), model_z=z)
    if photoz is not None:
        columns.update(add_photoz(flux, flux_err, list(grid.bands), photoz))
    return columns, stamps


#: the photometric-redshift columns of a catalogue: name -> description (all dimensionless)
PHOTOZ_COLUMNS = {
    "z_phot": "photometric redshift: the peak of p(z) of the template fit (surveydust.photoz.fit_photoz)",
    "z_phot_p16": "16th percentile of p(z)",
    "z_phot_p84": "84th percentile of p(z)",
    "p_high_z": "P(z > 6) from p(z)",
    "delta_chi2": "chi^2 of the best fit at z < z_low_max minus that of the best at z >= 6 (likelihood only)",
    "high_z_reason": "the first z > 6 criterion a source fails (surveydust.photoz.SELECTION_REASONS), empty if none",
}


def add_photoz(flux: np.ndarray, flux_err: np.ndarray, bands: list[str], photoz: PhotoZSetup) -> dict[str, np.ndarray]:
    """Photometric-redshift columns (:data:`PHOTOZ_COLUMNS`) of aperture fluxes and errors [nJy]
    ``(source, band)`` in ``bands``, fitted in the template bands (those with data), with the z > 6
    criteria of :func:`surveydust.photoz.select_high_z`; and, for the predictions and not in the
    catalogue, the p(z) ``_pz`` ``(source, z)`` on ``photoz.z_grid`` (float32) and whether the
    criteria select the source, ``_high_z``."""
    grid = photoz.templates
    assert grid is not None, "photometric redshifts need the templates"
    cols = [bands.index(b) for b in grid.bands]
    f, e = flux[:, cols], flux_err[:, cols]
    bad = ~(np.isfinite(e) & (e > 0))
    f, e = np.where(bad, np.nan, f), np.where(bad, np.inf, e)
    fit = fit_photoz(f, e, grid.bands, templates=grid)
    selection = select_high_z(f, e, grid.bands, fit, **photoz.criteria)
    return {"z_phot": fit.z_phot.astype(np.float32), "z_phot_p16": fit.z16.astype(np.float32),
            "z_phot_p84": fit.z84.astype(np.float32), "p_high_z": fit.p_high_z.astype(np.float32),
            "delta_chi2": selection.delta_chi2.astype(np.float32), "high_z_reason": selection.reason.astype("U16"),
            "_pz": fit.pz.astype(np.float32), "_high_z": selection.selected}


def predict_tile(measured: tuple[dict[str, np.ndarray], np.ndarray], bundles: list[str],
                 cfg: CatalogueConfig, photoz: PhotoZSetup | None = None) -> dict[str, np.ndarray]:
    """A tile's columns (from :func:`measure_tile`: ``(columns, stamps)``) with every model's
    predictions ``(source, model)`` and flags added; a Dask task of its own on GPU workers
    (each worker process loads a model once and keeps it). Only sources the selection keeps
    (:func:`select_sources`) are predicted (every source with ``cfg.all_sources``); those without
    a spectroscopic z through the mixture of ``cfg.photoz_draws`` draws from their p(z)."""
    columns, stamps = dict(measured[0]), measured[1]
    bands, z = list(columns.pop("band")), columns.pop("model_z")
    pz, high_z = columns.pop("_pz", None), columns.pop("_high_z", None)
    predict, not_high, by = select_sources(z, high_z, cfg, photoz is not None and photoz.select)
    draws = (pz, photoz.z_grid) if photoz is not None and pz is not None else None
    preds, model_flags = _predict_all([_predictor(p) for p in bundles], stamps, columns["snr"], bands, cfg, z,
                                      predict, draws)
    columns.update(preds)
    columns["selected_by"] = by
    columns["flag"] = (columns["flag"] | model_flags | np.where(not_high, FLAGS["not_high_z"], 0)).astype(np.uint16)
    return columns


def select_sources(z: np.ndarray, high_z: np.ndarray | None, cfg: CatalogueConfig,
                   use_photoz: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The z > 6 selection before the dust step, per source: whether to predict, whether to flag
    ``not_high_z``, and why it was selected (``selected_by``: ``"spec_z"``, ``"photoz"`` or ``""``).

    A source with a spectroscopic ``z`` is predicted (a model flags a z outside its training range,
    and one below 6 is also ``not_high_z``); one without is predicted when ``use_photoz`` and the
    photo-z criteria select it (``high_z``: :func:`surveydust.photoz.select_high_z`), else flagged
    ``not_high_z`` and predicted only with ``cfg.all_sources``."""
    spec = np.isfinite(z)
    by_phot = ~spec & np.asarray(high_z, bool) if use_photoz and high_z is not None else np.zeros(len(z), bool)
    with np.errstate(invalid="ignore"):
        not_high = (~spec & ~by_phot) | (spec & (z < HIGH_Z))
    predict = spec | by_phot | cfg.all_sources
    by = np.where(spec, "spec_z", np.where(by_phot, "photoz", "")).astype("U8")
    return predict, not_high, by


def _geometry_flags(x: np.ndarray, y: np.ndarray, size: int, shape: tuple[int, int],
                    stamps: np.ndarray) -> np.ndarray:
    from surveydust.detect import stamp_origins

    x0, y0 = stamp_origins(x, y, size)
    edge = (x0 < 0) | (y0 < 0) | (x0 + size > shape[1]) | (y0 + size > shape[0])
    masked = ~np.isfinite(stamps).all(axis=(1, 2, 3)) & ~edge
    return np.where(edge, FLAGS["edge"], 0) | np.where(masked, FLAGS["masked"], 0)


def _predict_all(predictors: list[Predictor], stamps: np.ndarray, snr: np.ndarray, bands: list[str],
                 cfg: CatalogueConfig, redshift: np.ndarray, predict: np.ndarray | None = None,
                 draws: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Predictions and OOD scores ``(source, model)``, and flags (low SNR for the first
    model's selection, out of distribution for any model; no data and z out of range, with
    NaN predictions, where a model cannot predict: :meth:`Predictor.predict`).

    Only the sources in ``predict`` (all when None) are predicted, the others get NaN; with
    ``draws`` (p(z) ``(source, z)`` and its grid) those without a ``redshift`` are predicted at
    ``cfg.photoz_draws`` redshifts drawn from p(z) in each model's training range and the
    predictions mixed (:func:`predict_over_pz`)."""
    out: dict[str, list[np.ndarray]] = {}
    flag = np.zeros(len(stamps), dtype=np.uint16)
    predict = np.ones(len(stamps), bool) if predict is None else predict
    for i, p in enumerate(predictors):
        images = stamps[:, [bands.index(b) for b in p.bands]]
        result = predict_over_pz(p, images, redshift, predict, draws, cfg.photoz_draws, cfg.batch_size)
        for name in result:
            if name != "flag":
                out.setdefault(name, []).append(result[name])
        flag |= result["flag"]
        with np.errstate(invalid="ignore"):
            flag |= np.where(result["ood"] > cfg.ood_threshold, FLAGS["out_of_distribution"], 0
                             ).astype(np.uint16)
        if i == 0 and p.snr_band in bands:
            low = ~(snr[:, bands.index(p.snr_band)] >= p.snr_min)
            flag |= np.where(low, FLAGS["low_snr"], 0).astype(np.uint16)
    return {k: np.stack(v, axis=1) for k, v in out.items()}, flag


def predict_over_pz(p: Predictor, images: np.ndarray, redshift: np.ndarray, predict: np.ndarray,
                    draws: tuple[np.ndarray, np.ndarray] | None, n_draws: int,
                    batch_size: int = 1024) -> dict[str, np.ndarray]:
    """One model's outputs (:meth:`Predictor.predict`'s variables and ``flag``, per source; NaN and
    flag 0 where not ``predict``): sources with a ``redshift`` at it; without one, when ``draws``
    (p(z) ``(source, z)`` and its grid) are given and the model takes a redshift, at ``n_draws``
    stratified draws (the ``(k + 0.5) / n_draws`` quantiles) of p(z) restricted to the model's
    training range, mixed (:func:`mix_percentiles`), so the intervals carry the redshift's
    uncertainty; otherwise without a redshift."""
    n = len(images)
    spec = np.isfinite(redshift)
    mixed = predict & ~spec & (draws is not None) & p.uses_redshift
    fixed = np.flatnonzero(predict & ~mixed)
    if fixed.size == n:  # every source at its own redshift (or none): no copy of the stamps
        return _as_columns(p.predict(images, redshift, batch_size=batch_size))
    parts = [(fixed, _as_columns(p.predict(images[fixed], redshift[fixed], batch_size=batch_size)))]
    rows = np.flatnonzero(mixed)
    if rows.size:
        pz, z_grid = draws  # type: ignore[misc]
        levels = (np.arange(n_draws) + 0.5) / n_draws
        zs = pz_quantiles(pz[rows], z_grid, levels, p.redshift_range)
        sub = images[rows]
        # several draws in one call where they fit in max(rows, batch_size) stamps: few calls, bounded memory
        per_call = max(1, min(n_draws, max(batch_size // rows.size, 1)))
        runs = []
        for k in range(0, n_draws, per_call):
            ks = range(k, min(k + per_call, n_draws))
            res = p.predict(np.concatenate([sub] * len(ks)) if len(ks) > 1 else sub,
                            np.concatenate([zs[:, j] for j in ks]), batch_size=batch_size)
            runs += [res.isel(sample=slice(i * rows.size, (i + 1) * rows.size)) for i in range(len(ks))]
        parts.append((rows, _as_columns(mix_predictions(p, runs))))
    template = parts[0][1]
    out = {k: np.full(n, np.nan, dtype=v.dtype) if k != "flag" else np.zeros(n, np.uint16)
           for k, v in template.items()}
    for idx, cols in parts:
        for k, v in cols.items():
            out[k][idx] = v
    return out


def _as_columns(result: Any) -> dict[str, np.ndarray]:
    cols = {name: result[name].values for name in result.data_vars}
    cols["flag"] = result["flag"].values.astype(np.uint16)
    return cols


def mix_predictions(p: Predictor, runs: list[Any]) -> Any:
    """The mixture of one model's predictions of the same sources at several redshifts (each a
    :meth:`Predictor.predict` Dataset): per target the percentiles of the equal-weight mixture
    (:func:`mix_percentiles`), the median as the value, ``*_err`` and ``R_V`` from them as in
    ``Predictor.predict``, the mean OOD score, the first run's flags."""
    median, pct = {}, {}
    for t in p.targets:
        v = np.stack([np.stack([r[t if name == "p50" else f"{t}_{name}"].values.astype(np.float64)
                                for name in LEVEL_NAMES], axis=1) for r in runs], axis=1)
        if np.isfinite(v).any():
            pct[t] = mix_percentiles(v, t, p.offsets)
            median[t] = pct[t][:, LEVELS.index(0.5)]
        else:  # a model without percentiles: the mean of the values
            pct[t] = np.full(v[:, 0].shape, np.nan)
            median[t] = np.mean([r[t].values for r in runs], axis=0)
    ood = np.mean([r["ood"].values for r in runs], axis=0)
    return p.to_dataset(median, pct, runs[0]["flag"].values, ood)


def mix_percentiles(values: np.ndarray, target: str, offsets: dict[str, float]) -> np.ndarray:
    """Percentiles at :data:`surveydust.posterior.LEVELS` of an equal-weight mixture of
    distributions, each given by its percentiles at those levels.

    ``values`` ``(n, k, level)``: ``k`` distributions per source. Each distribution's quantile
    function is taken as piecewise linear in the network's space of ``target``
    (:func:`surveydust.posterior.to_network`: ``ln(x + c)`` for dust) against the normal score of
    the level (exact for the network's Gaussians; linear beyond the outer levels), sampled at
    :data:`MIX_SAMPLES` evenly spaced levels; the pooled samples' quantiles (Hazen positions, so
    one distribution returns its own percentiles) are the mixture's, and for A_V and E(B-V) a level
    the pooled mass at 0 reaches is 0 (the draws' atom at 0 stays one). Returns ``(n, level)``."""
    from scipy.special import ndtri

    x = to_network(target, values, offsets)
    s = np.asarray(NOMINAL_Z)
    u = ndtri((np.arange(MIX_SAMPLES) + 0.5) / MIX_SAMPLES)
    j = np.clip(np.searchsorted(s, u) - 1, 0, len(s) - 2)
    w = (u - s[j]) / (s[j + 1] - s[j])
    samples = (x[..., j] + w * (x[..., j + 1] - x[..., j])).reshape(len(x), -1)
    mixed = from_network(target, np.quantile(samples, LEVELS, axis=1, method="hazen").T, offsets)
    if target in offsets:
        # a non-negative target's mass at 0 (an atom: the percentiles at 0) is an atom of the
        # mixture too; the interpolated quantile would lift a level at its edge just above 0
        at_zero = (samples <= to_network(target, np.zeros(1), offsets)).mean(axis=1, keepdims=True)
        mixed = np.where(np.asarray(LEVELS)[None, :] <= at_zero, 0.0, mixed)
    return mixed


def add_redshifts(ds: Any, table: dict[str, np.ndarray], radius_arcsec: float, name: str) -> None:
    """Fill a catalogue's missing ``z`` (and ``beta_input``, ``beta_input_err`` when the table has
    them) from the nearest entry of a redshift ``table`` (:func:`surveydust.sources.redshift_table`,
    read from file ``name``) within ``radius_arcsec``, in place; ``z_sep`` [arcsec] records each
    match's separation."""
    n = ds.sizes["source"]
    z = ds["z"].values.astype(float) if "z" in ds else np.full(n, np.nan)
    matched = match_redshifts(ds["ra"].values, ds["dec"].values, table, radius_arcsec)
    take = ~np.isfinite(z) & np.isfinite(matched["z"])
    for key in ("z", "beta_input", "beta_input_err"):
        if key in matched:
            values = ds[key].values.astype(float) if key in ds else np.full(n, np.nan)
            values[take] = matched[key][take]
            ds[key] = ("source", values)
    ds["z_sep"] = ("source", np.where(take, matched["sep"], np.nan))
    ds["z_sep"].attrs.update(units="arcsec", long_name=f"separation of the redshift's match in {name}")
    logger.info("%d of %d sources took a redshift from %s (nearest within %g arcsec)", int(take.sum()), n,
                name, radius_arcsec)


def add_uv_slopes(ds: Any, default_redshift: float) -> None:
    """Add ``beta``, ``A_V_meurer`` (and errors, bands used) to a catalogue, in place.

    The band choice uses each source's ``z`` (from the sources table); sources
    without one get ``default_redshift`` and the ``no_redshift`` flag. Sources
    with a ``beta_input`` (a UV slope from the sources or redshifts table) take
    it instead of the fit (``beta_bands`` = ``"input"``).
    """
    n = ds.sizes["source"]
    z = ds["z"].values.astype(float) if "z" in ds else np.full(n, np.nan)
    missing = ~np.isfinite(z)
    fits = uv_slopes(ds["flux"].values, ds["flux_err"].values, list(ds["band"].values),
                     np.where(missing, default_redshift, z))
    for name, values in fits.items():
        ds[name] = ("source", values.astype(object) if values.dtype.kind == "U" else values)
    for name in ("A_V_meurer", "A_V_meurer_err"):
        ds[name].attrs["units"] = "mag"
    if "beta_input" in ds:  # UV slopes measured elsewhere (e.g. spectra) replace the photometric fit
        given = np.isfinite(ds["beta_input"].values)
        beta, beta_err = ds["beta_input"].values[given], ds["beta_input_err"].values[given]
        av, av_err = meurer_av(beta, beta_err)
        for key, values in zip(("beta", "beta_err", "A_V_meurer", "A_V_meurer_err"), (beta, beta_err, av, av_err)):
            ds[key].values[given] = values
        ds["beta_bands"].values[given] = "input"
    ds["beta"].attrs["long_name"] = "UV continuum slope (f_lambda ~ lambda^beta)"
    ds["flag"].values[:] = ds["flag"].values | np.where(missing, FLAGS["no_redshift"], 0).astype(np.uint16)
    if missing.any():
        logger.info("%d of %d sources have no redshift: UV-slope bands chosen for z = %g (flag no_redshift)",
                    int(missing.sum()), n, default_redshift)


def _provenance(mosaic: Any, bundles: list[Path], metas: list[dict[str, Any]], labels: list[str],
                cfg: CatalogueConfig, sources: Path | str | None, redshifts: Path | str | None,
                checks: dict[str, dict[str, int]], photoz: PhotoZSetup | None = None) -> dict[str, Any]:
    return {
        "photoz": {} if photoz is None else {
            "method": "template fit (surveydust.photoz.fit_photoz): templates of the package's stellar-population "
                      "library through the NIRCam throughputs, luminosity prior",
            "bands": list(photoz.templates.bands) if photoz.templates is not None else [],
            "z_grid": {"min": float(photoz.z_grid[0]), "max": float(photoz.z_grid[-1]), "n": len(photoz.z_grid),
                       "spacing": f"even in ln(1 + z), step {Z_GRID_STEP}"},
            "sys_err": SYS_ERR, "high_z": HIGH_Z, "selects": bool(photoz.select),
            "selection": "surveydust.photoz.select_high_z", "criteria": dict(photoz.criteria),
            "pz": "not stored: fit_photoz(flux, flux_err, bands) on the catalogue's photometry gives it again"},
        "surveydust_version": VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mosaic_store_id": mosaic.attrs.get("store_id", ""),
        "field": mosaic.attrs.get("field", ""),
        "models": [{"name": label, "path": str(p.resolve()), "sha256": m["checksums"],
                    "redshift_range": list(training_redshift_range(m))} for label, p, m in zip(labels, bundles, metas)],
        "catalogue_config": cfg.model_dump(mode="json"),
        "sources_file": str(Path(sources).resolve()) if sources is not None else "",
        "redshifts_file": str(Path(redshifts).resolve()) if redshifts is not None else "",
        "input_checks": checks,
        "flag_meanings": ", ".join(f"{v}={k}" for k, v in FLAGS.items()),
        "flag_descriptions": {k: FLAG_DESCRIPTIONS[k] for k in FLAGS},
        "pixel_convention": "x, y are 0-based pixel centres of the mosaic",
    }


def _describe_photoz(ds: Any) -> None:
    """Units and descriptions of the photo-z and selection columns, in place."""
    for name, text in PHOTOZ_COLUMNS.items():
        if name in ds:
            ds[name].attrs.update(units="", long_name=text)
    if "selected_by" in ds:
        ds["selected_by"].attrs["long_name"] = ("why dust was predicted: spec_z (a spectroscopic z), photoz (the "
                                                "z > 6 criteria of surveydust.photoz.select_high_z: P(z>6), "
                                                "delta chi^2, no blue detection, not a brown dwarf) or empty "
                                                "(not selected)")


def selection_counts(ds: Any) -> dict[str, int]:
    """Sources selected for the dust step by a spectroscopic z, by the photo-z criteria, and not selected."""
    by = ds["selected_by"].values if "selected_by" in ds else np.full(ds.sizes["source"], "", dtype=object)
    return {"spectroscopic z": int((by == "spec_z").sum()), "photo-z": int((by == "photoz").sum()),
            "not selected": int((by == "").sum())}


def _log_summary(ds: Any, checks: dict[str, dict[str, int]], ranges: dict[str, tuple[float, float]]) -> None:
    """The run summary: sources and each flag's count, the z > 6 selection's counts, each input
    table's rows left out or read as missing per reason, and a warning for sources the models could
    not predict."""
    flags = ds["flag"].values
    n = {name: int(((flags & bit) > 0).sum()) for name, bit in FLAGS.items()}
    logger.info("catalogue: %d sources (flags: %s)", ds.sizes["source"], ", ".join(f"{k} {v}" for k, v in n.items()))
    counts = selection_counts(ds)
    predicted = ("predicted anyway (all_sources), flagged not_high_z"
                 if ds.attrs.get("catalogue_config", {}).get("all_sources") else "NaN dust, flag not_high_z")
    logger.info("z > 6 selection for the dust step: %d by spectroscopic z, %d by the photo-z criteria, "
                "%d not selected (%s)", counts["spectroscopic z"], counts["photo-z"], counts["not selected"], predicted)
    for table, counts in checks.items():
        logger.info("%s table: %s", table, ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    if n["no_data"]:
        logger.warning("%d sources have a band without a single valid pixel in their stamp: no prediction "
                       "(NaN, flag no_data)", n["no_data"])
    if n["z_out_of_range"]:
        trained = "; ".join(f"{label} z {low:g}-{high:g}" for label, (low, high) in ranges.items())
        logger.warning("%d sources have a redshift outside the training range of a model (%s): no prediction "
                       "(NaN, flag z_out_of_range)", n["z_out_of_range"], trained)


__all__ = ["PHOTOZ_COLUMNS", "PhotoZSetup", "add_photoz", "add_redshifts", "add_uv_slopes", "bands_with_data",
           "catalogue_tile", "concat_columns", "measure", "measure_tile", "mix_percentiles", "mix_predictions",
           "model_labels", "predict_over_pz", "predict_tile", "run_catalogue", "sees_break", "select_sources",
           "selection_counts"]

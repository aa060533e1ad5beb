"""Bulk inference on a mosaic store: tiled detection (or given positions), stamps, CNN predictions.

One Dask task per tile (``catalogue-tile-<run>-<n>`` on the dashboard) reads
the tile plus a halo from the mosaic store on the worker (straight from Zarr,
the store opened once per worker process), finds its sources (detection, or
the ``--sources`` positions that fall in its core), measures aperture
photometry, cuts all stamps with one vectorised index and predicts with every
model (:func:`measure_tile`, then :func:`predict_tile`). Each worker loads a
model bundle once and keeps it for all its tiles. When workers advertise a
``GPU`` resource, the two steps are separate tasks (``measure-tile-...`` on any
worker, ``catalogue-tile-...`` asking for a GPU), so only the predictions wait
for a GPU worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import dask
import dask.base
import numpy as np

from surveydust.bundle import Predictor, load_model, read_meta, richest_bundle
from surveydust.cluster import open_client, worker_resources
from surveydust.config import CatalogueConfig, load_catalogue_config
from surveydust.detect import Tile, aperture_photometry, cut_stamps, detect, make_tiles
from surveydust.preprocess import ood_score
from surveydust.provenance import VERSION
from surveydust.runs import ResumableRun
from surveydust.sources import match_redshifts, redshift_table, source_positions
from surveydust.stores.catalogue import FLAGS, assemble, export, write_catalogue
from surveydust.uvslope import meurer_av, uv_slopes

logger = logging.getLogger(__name__)


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
        mosaic has (six wide bands, else F277W+F356W+F444W, else F277W). Several
        bundles (e.g. 1-band and 3-band) run in the same pass.
    sources : table (CSV, FITS, ECSV) with RA/Dec columns in degrees (and
        optionally an id and a redshift ``z``): predict at those positions
        instead of detecting. Positions off the mosaic are counted, not errors.
    redshifts : table with RA/Dec [deg] and a redshift column (``z``,
        ``z_spec``, ``redshift``), e.g. a spectroscopic catalogue: each source
        without a ``z`` takes the redshift of the nearest entry within
        ``redshift_match_arcsec`` (for the UV-slope bands and SED fits).
    config : detection settings (``configs/catalogue.yaml``), ``overrides`` on top.
    export_to : also write a ``.fits`` or ``.ecsv`` table.

    Returns the catalogue as an in-memory ``xarray.Dataset`` (dim ``source``).
    """
    from surveydust.stores.mosaic import block_pix, mosaic_wcs, open_mosaic, store_chunk

    cfg = load_catalogue_config(config, **overrides)
    mosaic = open_mosaic(store)
    bundles = _bundle_paths(model, [str(b) for b in mosaic["band"].values])
    metas = [read_meta(p) for p in bundles]
    _check_bands(mosaic, metas, cfg, detecting=sources is None)
    wcs = mosaic_wcs(mosaic)
    positions = source_positions(sources, wcs, mosaic) if sources is not None else None
    if positions is not None and not len(positions["x"]):  # before any cluster starts
        raise ValueError("no sources: none of the given positions lies on the mosaic's data")
    z_table = redshift_table(redshifts) if redshifts is not None else None
    shape = (mosaic.sizes["y"], mosaic.sizes["x"])
    tile_size = cfg.tile_pix or block_pix(store_chunk(mosaic))
    crop = max(int(m["crop"]) for m in metas)
    halo = max(cfg.halo_pix, crop // 2 + 1)
    tiles = make_tiles(shape, tile_size)
    token = dask.base.tokenize(mosaic.attrs.get("store_id"), [m["checksums"] for m in metas], cfg.to_json(),
                               None if positions is None else {k: v.tolist() for k, v in positions.items()},
                               None if z_table is None else {k: v.tolist() for k, v in z_table.items()})
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        from surveydust.stores.base import check_output_path

        check_output_path(out_path, overwrite, "catalogue")
    with ResumableRun(out_path, token, scratch_prefix="surveydust-catalogue-") as run:
        todo = [t for t in tiles if t.index not in run.done]
        logger.info("%d tiles of %d x %d pixels (%d done before), halo %d px, models: %s", len(tiles),
                    tile_size, tile_size, len(tiles) - len(todo), halo, ", ".join(_name(m) for m in metas))
        if todo:
            with open_client(client, profile=cluster, workers=workers) as c:
                futures = _submit_tiles(c, todo, str(store), halo, crop, [str(p) for p in bundles], cfg, positions,
                                        z_table, token)
                run.collect(futures, _tile_progress() if progress else None)
        columns = run.results()
        if not len(columns.get("x", ())):
            logger.warning("no sources detected: the catalogue is empty")
        ds = assemble(columns, list(mosaic["band"].values), [_name(m) for m in metas],
                      _provenance(mosaic, bundles, metas, cfg, sources, redshifts))
        if z_table is not None:
            add_redshifts(ds, z_table, cfg.redshift_match_arcsec, Path(redshifts).name)
        add_uv_slopes(ds, cfg.default_redshift)
        _log_summary(ds)
        if out_path is not None:
            write_catalogue(ds, out_path, overwrite=overwrite)
        if export_to is not None:
            export(ds, export_to, overwrite=overwrite)
    return ds


def _name(meta: dict[str, Any]) -> str:
    """A model's name in the catalogue: its bands, e.g. ``F277W+F356W+F444W``."""
    return "+".join(meta["bands"])


def _bundle_paths(model: Path | str | list[Path | str] | None, bands: list[str]) -> list[Path]:
    """The given bundles, or the shipped one with the most of the mosaic's ``bands``."""
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


def _check_bands(mosaic: Any, metas: list[dict[str, Any]], cfg: CatalogueConfig, detecting: bool) -> None:
    have = set(mosaic["band"].values)
    need = {b for m in metas for b in m["bands"]} | (set(cfg.detection_bands) if detecting else set())
    missing = sorted(need - have)
    if missing:
        raise ValueError(f"the mosaic store has no band(s) {missing} (it has {sorted(have)}); "
                         "they are needed by the model(s) or the detection image")


def _submit_tiles(client: Any, todo: list[Tile], store: str, halo: int, size: int, bundles: list[str],
                  cfg: CatalogueConfig, positions: dict[str, np.ndarray] | None,
                  z_table: dict[str, np.ndarray] | None, token: str) -> dict[int, Any]:
    """One future per tile to do (tile index -> future of its columns); with ``positions``,
    tiles holding none of them are skipped."""
    gpu = any("GPU" in r for r in worker_resources(client).values())
    futures = {}
    for tile in todo:
        mine = None
        if positions is not None:
            own = tile.owns(positions["x"], positions["y"])
            if not own.any():
                continue  # no given position here: the tile is not even read
            mine = {k: v[own] for k, v in positions.items()}
        key = f"catalogue-tile-{token[:8]}-{tile.index}"
        if gpu:  # detection on any worker's CPU, then only the prediction asks for a GPU
            measured = client.submit(measure_tile, store, tile, halo, size, cfg, mine, z_table,
                                     key=f"measure-tile-{token[:8]}-{tile.index}", pure=False)
            futures[tile.index] = client.submit(predict_tile, measured, bundles, cfg, key=key, pure=False,
                                                resources={"GPU": 1})
        else:  # one task: the stamps never leave the worker
            futures[tile.index] = client.submit(catalogue_tile, store, tile, halo, bundles, cfg, mine, z_table,
                                                key=key, pure=False)
    return futures


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
                   z_table: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Sources, photometry and predictions of one tile (a Dask task on a CPU worker):
    :func:`measure_tile` then :func:`predict_tile`."""
    size = max(p.crop for p in map(_predictor, bundles))
    return predict_tile(measure_tile(store, tile, halo, size, cfg, positions, z_table), bundles, cfg)


def measure_tile(store: str, tile: Tile, halo: int, size: int, cfg: CatalogueConfig,
                 positions: dict[str, np.ndarray] | None,
                 z_table: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sources of one tile (detected, or the given ``positions`` in its core), their
    aperture photometry [nJy], geometry flags, sky positions and redshifts, and their
    ``size`` x ``size`` stamps ``(source, band, y, x)`` [nJy]; pure CPU work.

    A source's ``z`` comes from ``positions``, else the nearest entry of ``z_table``
    (NaN where neither has one)."""
    from surveydust.stores.mosaic import mosaic_reader

    mosaic = mosaic_reader(store)
    y0, y1, x0, x1 = tile.with_halo(halo, mosaic.shape)
    sci, err = mosaic.read(y0, y1, x0, x1)
    bands = list(mosaic.bands)
    columns: dict[str, np.ndarray] = {}
    if positions is None:
        det = [bands.index(b) for b in cfg.detection_bands]
        x, y, blended = detect(sci[det], err[det], cfg)
        x, y = x + x0, y + y0
        own = tile.owns(x, y)
        x, y, blended = x[own], y[own], blended[own]
    else:
        x, y = positions["x"], positions["y"]
        blended = np.zeros(x.size, dtype=bool)
        columns.update({k: v for k, v in positions.items() if k in ("input_id", "z", "beta_input",
                                                                      "beta_input_err")})
    stamps = cut_stamps(sci, x - x0, y - y0, size)
    err_stamps = cut_stamps(err, x - x0, y - y0, size)
    flux, flux_err = aperture_photometry(stamps, err_stamps, cfg.aperture_arcsec / mosaic.pixel_scale_arcsec)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)
    flag = _geometry_flags(x, y, size, mosaic.shape, stamps) | np.where(blended, FLAGS["blended"], 0)
    ra, dec = mosaic.wcs.all_pix2world(x, y, 0)
    z = columns["z"] if "z" in columns else np.full(x.size, np.nan)
    if z_table is not None:
        z = np.where(np.isfinite(z), z, match_redshifts(ra, dec, z_table, cfg.redshift_match_arcsec)["z"])
    columns.update(ra=ra, dec=dec, x=x, y=y, tile=np.full(x.size, tile.index), flux=flux, flux_err=flux_err,
                   snr=snr, flag=flag.astype(np.uint16), band=np.array(bands), model_z=z)
    return columns, stamps


def predict_tile(measured: tuple[dict[str, np.ndarray], np.ndarray], bundles: list[str],
                 cfg: CatalogueConfig) -> dict[str, np.ndarray]:
    """A tile's columns (from :func:`measure_tile`: ``(columns, stamps)``) with every model's
    predictions ``(source, model)`` and flags added; a Dask task of its own on GPU workers
    (each worker process loads a model once and keeps it)."""
    columns, stamps = dict(measured[0]), measured[1]
    bands, z = list(columns.pop("band")), columns.pop("model_z")
    preds, model_flags = _predict_all([_predictor(p) for p in bundles], stamps, columns["snr"], bands, cfg, z)
    columns.update(preds)
    columns["flag"] = (columns["flag"] | model_flags).astype(np.uint16)
    return columns


def _geometry_flags(x: np.ndarray, y: np.ndarray, size: int, shape: tuple[int, int],
                    stamps: np.ndarray) -> np.ndarray:
    from surveydust.detect import stamp_origins

    x0, y0 = stamp_origins(x, y, size)
    edge = (x0 < 0) | (y0 < 0) | (x0 + size > shape[1]) | (y0 + size > shape[0])
    masked = ~np.isfinite(stamps).all(axis=(1, 2, 3)) & ~edge
    return np.where(edge, FLAGS["edge"], 0) | np.where(masked, FLAGS["masked"], 0)


def _predict_all(predictors: list[Predictor], stamps: np.ndarray, snr: np.ndarray, bands: list[str],
                 cfg: CatalogueConfig, redshift: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Predictions and OOD scores ``(source, model)``, and flags (low SNR for the first
    model's selection, out of distribution for any model)."""
    out: dict[str, list[np.ndarray]] = {}
    flag = np.zeros(len(stamps), dtype=np.uint16)
    for i, p in enumerate(predictors):
        images = np.nan_to_num(stamps[:, [bands.index(b) for b in p.bands]], nan=0.0)
        result = p.predict(images, redshift, batch_size=cfg.batch_size)
        for name in result.data_vars:
            out.setdefault(name, []).append(result[name].values)
        stats = p.meta.get("ood")
        ood = ood_score(images, p.crop, stats) if stats else np.full(len(images), np.nan)
        out.setdefault("ood", []).append(ood.astype(np.float32))
        flag |= np.where(ood > cfg.ood_sigma, FLAGS["out_of_distribution"], 0).astype(np.uint16)
        if i == 0 and p.snr_band in bands:
            low = ~(snr[:, bands.index(p.snr_band)] >= p.snr_min)
            flag |= np.where(low, FLAGS["low_snr"], 0).astype(np.uint16)
    return {k: np.stack(v, axis=1) for k, v in out.items()}, flag


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


def _provenance(mosaic: Any, bundles: list[Path], metas: list[dict[str, Any]], cfg: CatalogueConfig,
                sources: Path | str | None, redshifts: Path | str | None) -> dict[str, Any]:
    return {
        "surveydust_version": VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mosaic_store_id": mosaic.attrs.get("store_id", ""),
        "field": mosaic.attrs.get("field", ""),
        "models": [{"name": _name(m), "path": str(p.resolve()), "sha256": m["checksums"]}
                   for p, m in zip(bundles, metas)],
        "catalogue_config": cfg.model_dump(mode="json"),
        "sources_file": str(Path(sources).resolve()) if sources is not None else "",
        "redshifts_file": str(Path(redshifts).resolve()) if redshifts is not None else "",
        "flag_meanings": ", ".join(f"{v}={k}" for k, v in FLAGS.items()),
        "pixel_convention": "x, y are 0-based pixel centres of the mosaic",
    }


def _log_summary(ds: Any) -> None:
    flags = ds["flag"].values
    counts = ", ".join(f"{name} {int(((flags & bit) > 0).sum())}" for name, bit in FLAGS.items())
    logger.info("catalogue: %d sources (flags: %s)", ds.sizes["source"], counts)


__all__ = ["add_redshifts", "add_uv_slopes", "catalogue_tile", "measure_tile", "predict_tile", "run_catalogue"]

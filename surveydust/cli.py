"""``surveydust`` command line: a thin shell over the Python API.

Every command turns bad input into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import click
import yaml

from surveydust.backend import VERBOSE_ENV, verbose
from surveydust.errors import InputError
from surveydust.provenance import VERSION

EXIT_INTERRUPTED = 130
#: what an interrupted run of a resumable command keeps (its re-run does only the rest)
_KEPT_WHEN_INTERRUPTED = {"run-catalogue": "finished tiles", "fit-sed": "finished fits", "tune": "finished trials"}


def _interrupted_message() -> str:
    """The one line that ends an interrupted command (what is kept, and how to go on)."""
    ctx = click.get_current_context(silent=True)
    kept = _KEPT_WHEN_INTERRUPTED.get(ctx.info_name if ctx is not None else "")
    if kept and not ctx.params.get("demo"):  # the demo's re-run makes its field again (--overwrite)
        return f"interrupted: {kept} are kept, re-run the same command to resume; nothing half-written was kept"
    return "interrupted: nothing half-written was kept"


def _friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report what the user can act on (:class:`~surveydust.errors.InputError`, a file that exists,
    is missing or cannot be written) as ``Error: <one line>`` (exit 1), an interrupt (Ctrl-C,
    SIGTERM) as one ``interrupted: ...`` line (exit 130), and anything else, a bug, with its
    traceback and a line asking for a report (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (InputError, OSError) as exc:
            raise click.ClickException((str(exc).splitlines() or [type(exc).__name__])[0]) from None
        except KeyboardInterrupt:
            click.echo(_interrupted_message(), err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception:
            if verbose():
                raise
            traceback.print_exc()
            click.echo(f"surveydust {VERSION} failed unexpectedly: this is a bug, please report it with the "
                       "traceback above and the command you ran.", err=True)
            sys.exit(1)

    return wrapper


def _bands(value: str | None, upper: bool = True) -> list[str] | None:
    """A comma-separated list (band names upper-cased)."""
    items = [b.strip() for b in value.split(",") if b.strip()] if value else []
    return [b.upper() if upper else b for b in items] or None


def _settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, values parsed as YAML (numbers, lists, ...)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise click.BadParameter(f"{pair!r}: the value is not valid YAML ({first})", param_hint="--set") from None
    return out


def _nested(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"augment.hog": True}`` -> ``{"augment": {"hog": True}}``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


cluster_options = [
    click.option("--cluster", "cluster", default=None, metavar="PROFILE",
                 help="Dask cluster profile (local, address, slurm, pbs, or your own; "
                      "see configs/cluster.yaml). Default: local."),
    click.option("--workers", type=int, default=None,
                 help="Number of Dask workers (local: processes; slurm/pbs: workers to scale to)."),
    click.option("--jobs", type=int, default=None, help="Number of batch jobs to submit (slurm/pbs profiles)."),
]


def with_cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(cluster_options):
        func = option(func)
    return func


class _LazyClient:
    """The Dask client of a command's --cluster/--workers/--jobs, started on first use.

    The API checks its inputs before it touches the client, so bad input is
    reported at once, without starting (and waiting for) a cluster.
    """

    def __init__(self, cluster: str | None, workers: int | None, jobs: int | None) -> None:
        self._args, self._client = (cluster, workers, jobs), None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            from surveydust.cluster import get_client

            cluster, workers, jobs = self._args
            self._client = get_client(cluster, workers=workers, jobs=jobs)
        return getattr(self._client, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()


def _client(cluster: str | None, workers: int | None, jobs: int | None) -> _LazyClient:
    return _LazyClient(cluster, workers, jobs)


def _terminated(signum: int, frame: Any) -> None:
    """SIGINT / SIGTERM handler: stop the command with ``KeyboardInterrupt`` (it cleans up and says so
    in one line), and, unless ``-v``, silence the log lines of the shutdown that follows (Dask's
    scheduler and nannies complain about workers that go away).

    Parameters
    ----------
    signum
        The signal received.
    frame
        The interrupted frame (unused).
    """
    if not verbose():
        logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt(f"signal {signum}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="surveydust")
@click.option("-v", "--verbose", is_flag=True,
              help="Also debug lines, TensorFlow's start-up lines and Dask's worker messages.")
def main(verbose: bool) -> None:
    """surveydust: dust attenuation (A_V, E(B-V), R_V) and sSFR of z > 6 galaxies
    from JWST/NIRCam images with CNNs, at survey scale on Dask.

    Images are flux per pixel in nJy at 0.03 arcsec/pixel; A_V and E(B-V) in
    magnitudes; sSFR as log10(yr^-1) over 100 Myr.
    """
    signal.signal(signal.SIGTERM, _terminated)  # what SLURM sends at walltime: clean up like Ctrl-C
    signal.signal(signal.SIGINT, _terminated)  # Ctrl-C (local workers ignore it: see surveydust.backend)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("surveydust")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # worker processes inherit it
    else:  # "Worker process still alive after 4.0 seconds, killing": TensorFlow workers exit slowly
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Training store to write (Zarr).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="YAML file merged over the defaults (configs/simulation.yaml).")
@click.option("--n-galaxies", type=int, default=None, help="Galaxies to simulate [default: 600].")
@click.option("--views", "views_per_galaxy", type=int, default=None,
              help="Orientations per galaxy [default: 4].")
@click.option("--seed", type=int, default=None, help="Random seed; same seed, same store [default: 0].")
@click.option("--bands", default=None, help="Comma-separated NIRCam bands [default: F115W..F444W].")
@click.option("--depth", default=None, help="Noise depth preset: ceers or jades [default: ceers].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other simulation setting, e.g. --set dust_opacity=0.3 (repeatable).")
@with_cluster_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store (after the new one is complete).")
@click.option("--plots/--no-plots", default=True, help="Write labels.png and stamps.png next to the store.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def simulate(out: Path, config: Path | None, bands: str | None, settings: tuple[str, ...],
             cluster: str | None, workers: int | None, jobs: int | None, overwrite: bool, plots: bool,
             quiet: bool, **options: Any) -> None:
    """Simulate mock z = 6-8 galaxies with known dust into a training store.

    Each galaxy is imaged in every view at every dust-to-metal ratio
    (n_galaxies x views x 11 images), with PSF and CEERS/JADES-like noise.
    Labels: A_V, EBV, R_V, log_ssfr, dtm, redshift, log_mstar, log_sfr, snr.
    """
    from surveydust.simulate import simulate as run_simulation

    overrides = {**options, **_settings(settings), "bands": _bands(bands)}
    with _client(cluster, workers, jobs) as client:
        path = run_simulation(out, config, client=client, overwrite=overwrite, progress=not quiet, **overrides)
    click.echo(f"wrote {path}")
    if plots:
        _write_plots(path)


def _write_plots(store: Path, out_dir: Path | None = None) -> None:
    from surveydust.figures import plot_training_store
    from surveydust.stores import open_training_store

    out_dir = out_dir or store.with_name(f"{store.stem}_plots")
    for figure in plot_training_store(open_training_store(store), out_dir):
        click.echo(f"wrote {figure}")


@main.command("ingest-sims")
@click.argument("cubes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--properties", type=click.Path(path_type=Path), required=True,
              help="CSV/ECSV table: target, inclination, azimuth (or file), A_V, EBV, log_ssfr[, dtm, ...].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Training store to write (Zarr).")
@click.option("--bands", default=None, help="Comma-separated bands [default: all known bands in every cube].")
@click.option("--stamp-size", type=int, default=32, show_default=True, help="Output stamp size [pixels].")
@click.option("--pixel-scale", type=float, default=0.03, show_default=True, help="Output pixel scale [arcsec].")
@with_cluster_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def ingest_sims(cubes: tuple[Path, ...], properties: Path, out: Path, bands: str | None, stamp_size: int,
                pixel_scale: float, cluster: str | None, workers: int | None, jobs: int | None, overwrite: bool,
                quiet: bool) -> None:
    """Read SKIRT mock NIRCam cubes (TNG50 format) into a training store.

    CUBES are FITS files named <TARGET>_i<incl>_a<azim>_z<z>_NIRCam_{short,long}.fits
    with filter names in EXTn keywords, in MJy/sr; they are converted to nJy,
    resampled to --pixel-scale and cropped/padded to --stamp-size.
    """
    from surveydust.stores.skirt import ingest_skirt

    with _client(cluster, workers, jobs) as client:
        path = ingest_skirt(list(cubes), properties, out, bands=_bands(bands), stamp_size=stamp_size,
                            pixel_scale_arcsec=pixel_scale, overwrite=overwrite, client=client,
                            progress=not quiet)
    click.echo(f"wrote {path}")


@main.command("plot-store")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the PNGs [default: <store>_plots next to the store].")
@_friendly_errors
def plot_store(store: Path, out: Path | None) -> None:
    """Plot label distributions and example stamps of a training store."""
    _write_plots(store, out)


@main.command("train")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Training store (Zarr).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model bundle folder to write.")
@click.option("--bands", default=None, help="Comma-separated bands [default: the six wide bands "
                                            "F115W..F444W; the paper's: F277W,F356W,F444W or F277W].")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="YAML file merged over the defaults (configs/training.yaml).")
@click.option("--split", type=click.Choice(["galaxy", "paper"]), default=None,
              help="galaxy: hold out whole galaxies [default]; paper: augment first, then split samples "
                   "85/15 at random as the paper did (rotated copies of test images are trained on; "
                   "only to compare with its Table 2).")
@click.option("--targets", default=None,
              help="Comma-separated targets of one network [default: A_V,EBV,log_ssfr]; e.g. A_V for the "
                   "paper's one model per target.")
@click.option("--loss", type=click.Choice(["gaussian_nll", "mape"]), default=None,
              help="gaussian_nll: calibrated posterior per target [default]; mape: the paper's loss "
                   "(means only).")
@click.option("--max-epochs", type=int, default=None, help="Most epochs (early stopping usually ends sooner).")
@click.option("--seed", type=int, default=None, help="Seed of the split, augmentation and weights.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other training setting, e.g. --set snr_min=3 --set augment.noise=1 "
                   "--set ensemble=3 (three networks, one bundle).")
@with_cluster_options
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle (after the new one is complete).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def train_command(store: Path, out: Path, bands: str | None, targets: str | None, config: Path | None,
                  settings: tuple[str, ...],
                  cluster: str | None, workers: int | None, jobs: int | None, overwrite: bool, quiet: bool,
                  **options: Any) -> None:
    """Train a CNN on a training store and write a model bundle.

    Selects SNR >= 5 samples, holds out 15% of the galaxies for testing and,
    of the rest, 15% for early stopping and 15% for calibrating the
    percentiles; fits on a Dask worker (a GPU worker when there is one) with
    batches streamed from Zarr and every core of that machine, each sample
    rotated, flipped and noised afresh in every batch (with --split paper the
    copies are written first, on Dask). The bundle predicts A_V and E(B-V) [mag, never
    negative] and log sSFR [log10 yr^-1] with calibrated 2.5/16/50/84/97.5
    percentiles, using the redshift when a source has one; R_V is derived.
    """
    from surveydust.train import train

    overrides = {**options, **_nested(_settings(settings)), "bands": _bands(bands),
                 "targets": _bands(targets, upper=False)}
    with _client(cluster, workers, jobs) as client:
        path = train(store, out, config, client=client, overwrite=overwrite, progress=not quiet, **overrides)
    click.echo(f"wrote {path}")


@main.command("ensemble")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Ensemble bundle folder to write.")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="The members' training store, for calibration [default: the path in their bundle.json].")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle (after the new one is complete).")
@_friendly_errors
def ensemble_command(bundles: tuple[Path, ...], out: Path, store: Path | None, overwrite: bool) -> None:
    """Combine bundles trained on the same split into one ensemble bundle.

    Members must share the training store, bands, targets and split seed, and
    differ in their fit seed (e.g. --set fit_seed=1); `surveydust train --set
    ensemble=N` trains and combines N at once. The ensemble predicts, per
    target, the mean and variance of the members' Gaussians (wider where they
    disagree), with percentiles calibrated again on the calibration galaxies.
    """
    from surveydust.ensemble import combine_bundles

    click.echo(f"wrote {combine_bundles(list(bundles), out, store, overwrite=overwrite)}")


@main.command("evaluate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE... STORE")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for table.csv, table.ecsv and the figures.")
@click.option("--baseline/--no-baseline", default=True,
              help="Also fit a gradient-boosting model on integrated colours (what morphology adds).")
@click.option("--overwrite", is_flag=True,
              help="Replace the files an earlier evaluate wrote in --out (never other files).")
@_friendly_errors
def evaluate_command(paths: tuple[Path, ...], out: Path, baseline: bool, overwrite: bool) -> None:
    """Score model bundles on the held-out galaxies of a training store.

    The paper's Table 2 (MAE, MSE, std and variance of residuals) for E(B-V),
    A_V, R_V and sSFR, models side by side; coverage of the 68% and 95%
    intervals; true-vs-predicted, histogram and residual figures (Fig. 6-8).
    """
    from surveydust.evaluation import evaluate
    from surveydust.evaluation.report import to_astropy

    if len(paths) < 2:
        raise click.UsageError("give at least one BUNDLE and then the STORE")
    result = evaluate(list(paths[:-1]), paths[-1], out, include_baseline=baseline, overwrite=overwrite)
    to_astropy(result.table).pprint_all()
    for path in result.paths.values():
        click.echo(f"wrote {path}")


@main.command("tune")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Training store (Zarr).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Study folder; an existing study there is resumed.")
@click.option("--bands", default=None, help="Comma-separated bands [default: the six wide bands F115W..F444W].")
@click.option("--trials", type=int, default=None, help="Trials in the study, counting earlier runs [default: 200].")
@click.option("--max-epochs", type=int, default=None, help="Most epochs per trial [default: 30].")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default=None,
              help="Stop trials that do worse than the others [default: median].")
@click.option("--search-space", "search_space", type=click.Path(path_type=Path), default=None,
              help="YAML file merged over configs/tuning.yaml (its search_space replaces the default).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="Training settings that are not searched (YAML, merged over configs/training.yaml).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other training setting, e.g. --set snr_min=3 --set loss=mape.")
@with_cluster_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def tune_command(store: Path, out: Path, bands: str | None, search_space: Path | None, config: Path | None,
                 settings: tuple[str, ...], cluster: str | None, workers: int | None, jobs: int | None,
                 quiet: bool, **options: Any) -> None:
    """Bayesian hyper-parameter search (Optuna TPE), one trial per Dask (GPU) worker.

    The paper's Table 1 search space by default: 1-4 conv blocks of 4-64
    filters, 1-4 dense layers of 8-64 units, learning rate 1e-4..1e-2,
    batch 16-64. Poor trials are pruned against the others; re-running the
    same command on the same --out resumes the study. Writes trials.ecsv,
    loss.png, importance.png and the best trial's bundle (best-model/).
    """
    from surveydust.config import load_tuning_config
    from surveydust.tune import tune

    training = {**_nested(_settings(settings)), "bands": _bands(bands)}
    tuning = load_tuning_config(search_space, **options)  # bad settings fail before the cluster starts
    with _client(cluster, workers, jobs) as client:
        table = tune(store, out, tuning, config, client=client, progress=not quiet, training_overrides=training)
    table[[c for c in table.colnames if c not in ("start", "end")]].pprint_all()
    click.echo(f"wrote {out}")


def _band_paths(pairs: tuple[str, ...], option: str) -> dict[str, Path]:
    """``BAND=PATH`` pairs -> ``{BAND: Path}`` (band names upper-cased)."""
    out: dict[str, Path] = {}
    for pair in pairs:
        band, sep, path = pair.partition("=")
        band = band.strip().upper()
        if not sep or not band or not path.strip():
            raise click.BadParameter(f"expected BAND=FITS, got {pair!r}", param_hint=option)
        if band in out:
            raise click.BadParameter(f"band {band} given twice", param_hint=option)
        out[band] = Path(path.strip())
    return out


@main.command("ingest-mosaic")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--band", "band_files", multiple=True, required=True, metavar="BAND=FITS",
              help="Mosaic of one band, e.g. --band F277W=f277w_i2d.fits (repeatable): a file with SCI "
                   "[ERR, WHT] extensions, or a plain science image (then give --err/--wht files).")
@click.option("--err", "err_files", multiple=True, metavar="BAND=FITS",
              help="Separate 1-sigma error image of a band, in the units of its science image (repeatable).")
@click.option("--wht", "wht_files", multiple=True, metavar="BAND=FITS",
              help="Separate weight (inverse-variance) image of a band; zero weight = no data (repeatable).")
@click.option("--field", default=None, help="Field name recorded in the store [default: OUT without .zarr].")
@click.option("--chunk", type=int, default=None,
              help="Zarr chunk edge [pixels]; chunks are 1 band x CHUNK x CHUNK [default: 512]. "
                   "Catalogue tiles are whole chunks, about 2048 px.")
@with_cluster_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store (after the new one is complete).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def ingest_mosaic_command(out: Path, band_files: tuple[str, ...], err_files: tuple[str, ...],
                          wht_files: tuple[str, ...], field: str | None, chunk: int | None, cluster: str | None,
                          workers: int | None, jobs: int | None, overwrite: bool, quiet: bool) -> None:
    """Ingest FITS survey mosaics (one per band, one pixel grid) into a mosaic store OUT (Zarr).

    Input BUNIT MJy/sr (converted with PIXAR_SR, or the WCS pixel area) or
    nJy. The store holds sci and err (band, y, x) as float32 flux per pixel
    in nJy, NaN where there is no data (NaN input, zero weight, no error),
    with the WCS, pixel scale and SHA-256 checksums of the inputs. Bands must
    share one pixel grid (same shape, WCS within 0.001 pixel). Blocks are read
    and written in parallel on Dask workers; no process holds a whole band.
    One file, or one file's data, given for two bands is refused; a FILTER
    keyword that names another band than the one given is a warning.
    """
    from surveydust.stores.mosaic import ingest_mosaic, open_mosaic

    bands: dict[str, Any] = dict(_band_paths(band_files, "--band"))
    extra = {"err": _band_paths(err_files, "--err"), "wht": _band_paths(wht_files, "--wht")}
    for role, paths in extra.items():
        unknown = sorted(set(paths) - set(bands))
        if unknown:
            raise click.BadParameter(f"band(s) {', '.join(unknown)} have no --band image", param_hint=f"--{role}")
    for band in {*extra["err"], *extra["wht"]}:
        bands[band] = {"sci": bands[band], "err": extra["err"].get(band), "wht": extra["wht"].get(band)}
    with _client(cluster, workers, jobs) as client:
        path = ingest_mosaic(out, bands, field=field, chunk=chunk, client=client, overwrite=overwrite,
                             progress=not quiet)
    ds = open_mosaic(path)
    ny, nx = ds.attrs["shape"]
    click.echo(f"wrote {path}: {', '.join(map(str, ds['band'].values))}, {ny} x {nx} pixels at "
               f"{ds.attrs['pixel_scale_arcsec']:.4g} arcsec/pixel, nJy")


@main.command("run-catalogue")
@click.argument("store", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Catalogue store to write (Zarr; required) [default with --demo: demo/catalogue.zarr; "
                   "the demo field goes into its folder].")
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
              help="Model bundle folder; repeat to run 1-band and 3-band models in one pass "
                   "[default: the shipped bundle with the most bands the mosaic has].")
@click.option("--sources", type=click.Path(path_type=Path), default=None,
              help="CSV/FITS/ECSV table with RA/Dec [deg] (and optional id, z): predict at these positions "
                   "instead of detecting.")
@click.option("--redshifts", type=click.Path(path_type=Path), default=None,
              help="CSV/FITS/ECSV table with RA/Dec [deg] and z (e.g. a spectroscopic catalogue): sources "
                   "without a z take the nearest entry's within redshift_match_arcsec (0.2\"), for the "
                   "UV-slope bands and SED fits [--demo: none; it selects its z > 6 sources by the photometric "
                   "redshift, as a survey would].")
@click.option("--format", "export_format", type=click.Choice(["fits", "ecsv"]), default=None,
              help="Also export the catalogue as a FITS or ECSV table next to --out.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="Detection settings (YAML, merged over configs/catalogue.yaml).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any detection setting, e.g. --set threshold=2 --set tile_pix=1024.")
@click.option("--demo", is_flag=True,
              help="Simulate a small demo field (F090W and the six wide bands) with known truth (offline): z = 6-8 "
                   "galaxies among the "
                   "sky's mix of lower-redshift galaxies and brown dwarfs; run on it and score the z > 6 selection "
                   "and the dust of the selected sources.")
@click.option("--all-sources", is_flag=True,
              help="Predict dust for every source, also those the z > 6 selection drops (no spectroscopic z and "
                   "not selected by the photo-z criteria): they keep the flag not_high_z.")
@click.option("--p-high-z-min", type=click.FloatRange(0, 1), default=None,
              help="P(z>6) from the photometric redshift a source without a spectroscopic z needs for the "
                   "dust step, with the other z > 6 criteria of configs/catalogue.yaml (default: its "
                   "p_high_z_min).")
@with_cluster_options
@click.option("--overwrite", is_flag=True,
              help="Replace the catalogue, its --format table (and the demo's files) of an earlier run; "
                   "never files surveydust did not write, nor the run's inputs.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@_friendly_errors
def run_catalogue_command(store: Path | None, out: Path | None, models: tuple[Path, ...], sources: Path | None,
                          redshifts: Path | None, export_format: str | None, config: Path | None,
                          settings: tuple[str, ...], demo: bool, all_sources: bool, p_high_z_min: float | None,
                          cluster: str | None, workers: int | None, jobs: int | None, overwrite: bool,
                          quiet: bool) -> None:
    """Detect galaxies on a mosaic STORE (from ingest-mosaic) and predict their dust and sSFR.

    Tiles (whole store chunks, about 2048 px, plus a halo) are Dask tasks: detection on the
    inverse-variance weighted long-wavelength bands, aperture photometry
    (nJy), 32x32 stamps, CNN predictions of A_V, E(B-V), R_V [mag] and
    log sSFR [log10 yr^-1] with uncertainties. Finished tiles are kept: an
    interrupted run, re-run, does only the rest.

    Each source gets a photometric redshift (z_phot, its 16/84 percentiles and P(z>6)) from all
    bands with data; dust only where it has a spectroscopic z (--redshifts, --sources) or P(z>6)
    >= p_high_z_min, the others NaN and the flag not_high_z (--all-sources: predicted anyway).
    """
    from surveydust.config import load_catalogue_config
    from surveydust.demo import run_demo
    from surveydust.infer import run_catalogue
    from surveydust.stores.base import resolve_output_link
    from surveydust.stores.mosaic import open_mosaic

    if demo == (store is not None):
        raise click.UsageError("give a mosaic STORE, or --demo (not both)")
    selection = {"all_sources": True if all_sources else None, "p_high_z_min": p_high_z_min}
    settings_cfg = load_catalogue_config(config, **{**_settings(settings), **selection})  # fail before any work
    if store is not None:
        open_mosaic(store)
    if demo:
        out = out or Path("demo") / "catalogue.zarr"
    if out is None:
        raise click.UsageError("give --out CATALOGUE.zarr: the catalogue store to write")
    out = resolve_output_link(out)  # a link: its target is the output (checked, with the export, by the run)
    export_to = out.with_suffix(f".{export_format}") if export_format else None
    with _client(cluster, workers, jobs) as client:
        if demo:
            result = run_demo(out.parent, out=out, model=list(models) or None, client=client,
                              export_format=export_format, overwrite=overwrite, progress=not quiet,
                              sources=sources, redshifts=redshifts, config=settings_cfg)
            cat = result.catalogue
        else:
            cat = run_catalogue(store, out, model=list(models) or None, sources=sources, redshifts=redshifts,
                                config=settings_cfg, client=client, export_to=export_to, overwrite=overwrite,
                                progress=not quiet)
    click.echo(f"{cat.sizes['source']} sources; wrote {out}" + (f" and {export_to}" if export_to else ""))
    from surveydust.infer import selection_counts

    click.echo("dust step: " + ", ".join(f"{v} selected by {k}" if k != "not selected" else f"{v} not selected"
                                         for k, v in selection_counts(cat).items()))
    if demo:  # the field's mix, the z > 6 selection against the truth, the dust skill, the files written
        for line in result.summary:
            click.echo(line)


@main.command("compare")
@click.argument("catalogue", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the table and figures.")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="Truth table (ra, dec, A_V, log_ssfr), e.g. demo/fits/demo_truth.ecsv: adds 'truth'.")
@click.option("--flagged", is_flag=True, help="Also use sources with flags set.")
@click.option("--overwrite", is_flag=True,
              help="Replace the files an earlier compare wrote in --out (never other files).")
@_friendly_errors
def compare_command(catalogue: Path, out: Path, truth: Path | None, flagged: bool, overwrite: bool) -> None:
    """Compare the CNN, Meurer (UV slope) and SED-fit estimates of a catalogue pair by pair.

    For A_V [mag] and log sSFR [yr^-1]: N, MAE, standard deviation and
    variance of the differences (comparison.ecsv) and scatter plots
    (compare_A_V.png, compare_log_ssfr.png), as in the paper's Figs. 9-11.
    """
    from surveydust.compare import compare

    table = compare(catalogue, out, truth=truth, flagged=flagged, overwrite=overwrite)
    table.pprint_all()
    click.echo(f"wrote {out}")


@main.command("fit-sed")
@click.argument("catalogue", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Catalogue store to write (Zarr) [default: update CATALOGUE in place, atomically].")
@click.option("--n-live", type=int, default=100, show_default=True,
              help="Live points of the nautilus sampler per source (fewer: faster, rougher posteriors).")
@click.option("--default-redshift", type=float, default=7.0, show_default=True,
              help="Redshift of sources without z (they carry the no_redshift flag); Bagpipes allows up to 10.")
@click.option("--av-prior", type=click.Choice(["log", "uniform"]), default="log", show_default=True,
              help="A_V prior: log-uniform 1e-4..10 mag (the paper's; unconstrained fits come out near 0) "
                   "or uniform 0..4 mag.")
@with_cluster_options
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out store and fit again sources that already have SED results.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@_friendly_errors
def fit_sed_command(catalogue: Path, out: Path | None, n_live: int, default_redshift: float, av_prior: str,
                    cluster: str | None, workers: int | None, jobs: int | None, overwrite: bool,
                    quiet: bool) -> None:
    """Fit the photometry of a CATALOGUE's sources with Bagpipes, one Dask task per source.

    Needs the [sed] extra (pip install 'surveydust[sed]'). Every band with a
    filter curve (fluxes nJy, errors raised to at least 5% of the flux), at the
    source's z: log-normal SFH, Calzetti dust (A_V prior: --av-prior),
    nebular log U -4..-2. Adds A_V_sed [mag] and log_ssfr_sed_10 / _100
    [log10 yr^-1, SFR over the last 10 / 100 Myr], each with _lo/_hi (16th/84th
    percentiles), for sources without edge or masked flags; 30-45 CPU s
    per source and core at --n-live 100. Finished sources are kept: an
    interrupted run, re-run, fits only the rest. Compare with `surveydust compare`.
    """
    from surveydust.sedfit import fit_sed, import_bagpipes

    try:
        import_bagpipes()
    except ModuleNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    with _client(cluster, workers, jobs) as client:  # started only when there is a source to fit
        cat = fit_sed(catalogue, out, n_live=n_live, av_prior=av_prior, default_redshift=default_redshift,
                      client=client, overwrite=overwrite, progress=not quiet)
    fitted = int(cat["A_V_sed"].notnull().sum())
    click.echo(f"{fitted} of {cat.sizes['source']} sources have SED fits; wrote {out or catalogue}")

"""SED fits of catalogue photometry with Bagpipes, one Dask task per source (optional step).

Needs the ``[sed]`` extra (``pip install 'surveydust[sed]'``: Bagpipes and the
nautilus sampler); Bagpipes is imported only when a fit is asked for.

Data
    Every catalogue band with a known filter curve (the NIRCam curves of
    astro-sedpy, as used by :mod:`surveydust.instrument`; other bands are left
    out with a warning). Per source, the bands with a finite flux and a
    positive error are fitted (at least ``MIN_BANDS``; fewer: not fitted).
    Fluxes and errors go from nJy to microJy (Bagpipes' unit); each error is
    raised to at least ``ERROR_FLOOR`` (5%) of the band's absolute flux, which
    stands for calibration and model errors that the aperture errors leave out
    (and makes noiseless photometry fittable).

Model (the paper's section 2.3.3, log-normal SFH, where it says; Bagpipes'
BC03 models with a Kroupa IMF):

- redshift: fixed, the source's ``z`` (from a ``--sources`` table), else
  ``default_redshift`` (such sources carry the ``no_redshift`` flag)
- SFH: ``lognormal``: ``tmax`` (age of the Universe at the peak) and
  ``fwhm`` uniform in 0.01 Gyr .. 2 t_U(z) (a peak after the time
  of observation is a rising SFH), log10 mass formed uniform in 5..12
- metallicity: log-uniform 0.005..5 Z_sun (Bagpipes' BC03 grid; the paper's
  1e-6..10 Z_sun reaches beyond it)
- dust: Calzetti, A_V log-uniform 1e-4..10 mag (the paper's prior; ``av_prior="log"``)
  or uniform 0..4 mag (``av_prior="uniform"``)
- nebular: log U uniform -4..-2 (the paper's range)

Sampler
    nautilus with ``n_live`` live points on Bagpipes' own prior transform and
    likelihood (``bagpipes.fitting.fitted_model``), run in memory: Bagpipes'
    ``fit`` class writes ``./pipes/`` into the process's working directory
    (there is no setting for it), silently loads old results when a result
    file of the same name exists, and is not safe for several fits in one
    worker process. Each source's sampler is seeded with its index.

Results
    Per source, over an equal-weight posterior sample of up to ``N_POSTERIOR``
    points (median and 16th/84th percentiles as ``_lo``/``_hi``):
    ``A_V_sed`` [mag]; ``log_ssfr_sed_10`` and ``log_ssfr_sed_100``
    [log10 yr^-1]: the posterior SFH's mean SFR over the last 10 or 100 Myr
    divided by its stellar mass (Bagpipes' ``stellar_mass``: living stars and
    remnants), floored at ``LOG_SSFR_FLOOR``; ``z_sed`` (the redshift used),
    ``nbands_sed`` and ``chi2_sed`` (the best posterior point's chi-squared).

One Dask task per source (``fit-sed-<run>-<index>`` on the dashboard); each
finished source is kept in a hidden ``.<name>-sed.parts`` folder next to the
output, so an interrupted run, re-run with the same inputs and settings, fits
only the rest.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import importlib
import io
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.cluster import Compute
from surveydust.errors import InputError
from surveydust.instrument import NIRCAM_BANDS, bandpass
from surveydust.provenance import VERSION
from surveydust.quantities import UNITS as QUANTITY_UNITS
from surveydust.runs import run_parts
from surveydust.stores.catalogue import FLAGS, open_catalogue, write_catalogue

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'surveydust[sed]'"
ERROR_FLOOR = 0.05  # fraction of |flux|
MIN_BANDS = 3
SKIP_FLAGS = ("edge", "masked")  # photometry not to be trusted: left out unless given by index
TIMESCALES_MYR = (10, 100)
N_POSTERIOR = 500
# nautilus' neural networks per bound. Bagpipes uses 4; training them was half of a fit's
# CPU time, and 1 gave the same A_V posteriors (within sampling noise) 1.3x faster.
N_NETWORKS = 1
LOG_SSFR_FLOOR = -14.0
NJY_PER_UJY = 1e3

#: A_V priors [mag]: the paper's log-uniform one, and a flat one. With a few broad bands the
#: data often leave A_V open, and then the prior sets the answer: log-uniform puts 60% of its
#: weight below 0.1 mag, so unconstrained fits come out near 0; flat gives wide posteriors.
AV_PRIORS = {"log": ((1e-4, 10.0), "log_10"), "uniform": ((0.0, 4.0), "uniform")}
METALLICITY_RANGE = (0.005, 5.0)  # Z_sun, log-uniform
LOG_U_RANGE = (-4.0, -2.0)
LOG_MASS_FORMED_RANGE = (5.0, 12.0)
SFH_TIME_MIN_GYR = 0.01

#: units of the fitted quantities: those of the quantities they estimate (surveydust.quantities)
UNITS = {f"{q}_sed": QUANTITY_UNITS[q] for q in ("A_V", "log_ssfr")}


_LOCK = threading.Lock()
_QUIETED = False


def import_bagpipes() -> Any:
    """Import Bagpipes (its start-up lines hidden) and check nautilus; one clear error line when
    they are missing.

    The first import ever writes Bagpipes' IGM table into its install folder,
    so :func:`fit_sed` calls this on the client before any worker imports it.
    """
    try:
        with _LOCK:  # stdout is swapped only around the first import, by one thread at a time
            if "bagpipes" in sys.modules:
                import bagpipes
            else:
                with contextlib.redirect_stdout(io.StringIO()):
                    import bagpipes
            import nautilus  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"SED fitting needs Bagpipes and nautilus (no module {exc.name!r}): "
                                  f"{INSTALL_HINT}") from None
    return bagpipes


def _quiet_bagpipes() -> None:
    """Once per process: hide Bagpipes' warnings and its likelihood's "lnlike was nan" lines.

    Parts of the log-normal prior box (fwhm much wider than tmax) make
    Bagpipes' SFH solver fail; the likelihood then returns zero probability,
    warns and prints a line per call. Swapping ``sys.stdout`` around a fit is
    not safe with several threads per worker, so the print of that one
    module is replaced instead.
    """
    global _QUIETED
    with _LOCK:
        if _QUIETED:
            return
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"bagpipes\.")
        module = importlib.import_module("bagpipes.fitting.fitted_model")  # the module, not its class
        module.print = lambda *args, **kwargs: None
        _QUIETED = True


def age_of_universe_gyr(redshift: float) -> float:
    """Age of the Universe at ``redshift`` in Bagpipes' cosmology (H0 = 70, Omega_m = 0.3)."""
    from bagpipes import utils

    return float(np.interp(redshift, utils.z_array, utils.age_at_z))


def av_prior_setting(name: str) -> tuple[tuple[float, float], str]:
    """The A_V range [mag] and Bagpipes prior kind of ``AV_PRIORS[name]``; a clear error for other names."""
    if name not in AV_PRIORS:
        raise InputError(f"av_prior must be one of {', '.join(AV_PRIORS)}, got {name!r}")
    return AV_PRIORS[name]


def fit_instructions(redshift: float, av_prior: str = "log") -> dict[str, Any]:
    """Bagpipes ``fit_instructions`` at a fixed redshift (the priors of the module docstring;
    ``av_prior`` one of ``AV_PRIORS``)."""
    av_range, av_kind = av_prior_setting(av_prior)
    t_univ = age_of_universe_gyr(redshift)
    return {
        "redshift": float(redshift),
        "lognormal": {"tmax": (SFH_TIME_MIN_GYR, 2.0 * t_univ), "fwhm": (SFH_TIME_MIN_GYR, 2.0 * t_univ),
                      "massformed": LOG_MASS_FORMED_RANGE,
                      "metallicity": METALLICITY_RANGE, "metallicity_prior": "log_10"},
        "dust": {"type": "Calzetti", "Av": av_range, "Av_prior": av_kind},
        "nebular": {"logU": LOG_U_RANGE},
    }


def filter_curves(bands: list[str]) -> dict[str, np.ndarray]:
    """Filter curves ``(n, 2)`` [Angstrom, transmission] of the bands that have one (astro-sedpy)."""
    from sedpy import observate

    curves = {}
    for band in bands:
        try:
            if band in NIRCAM_BANDS:
                wave, thr = bandpass(band)
            else:
                filt = observate.load_filters([f"jwst_{band.lower()}"])[0]
                wave, thr = np.asarray(filt.wavelength, float), np.asarray(filt.transmission, float)
        except (ValueError, OSError):
            logger.warning("no filter curve for band %s: it is left out of the SED fits", band)
            continue
        curves[band] = np.column_stack([wave, thr])
    return curves


def photometry_ujy(flux_njy: np.ndarray, err_njy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluxes and floored errors in microJy and which bands are usable (finite, error > 0)."""
    flux = np.asarray(flux_njy, float) / NJY_PER_UJY
    err = np.fmax(np.asarray(err_njy, float) / NJY_PER_UJY, ERROR_FLOOR * np.abs(flux))
    use = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    return flux, err, use


def fit_photometry(flux_ujy: np.ndarray, err_ujy: np.ndarray, curves: list[np.ndarray], redshift: float, *,
                   n_live: int = 100, av_prior: str = "log", seed: int = 0) -> dict[str, float]:
    """Fit one source's photometry [microJy] at a fixed redshift; no error floor is added here.

    ``curves``: one ``(n, 2)`` filter curve [Angstrom, transmission] per band.
    Returns the result columns of the module docstring (without ``z_sed``).
    """
    bagpipes = import_bagpipes()
    from bagpipes.fitting import fitted_model
    from bagpipes.models.star_formation_history import star_formation_history
    from nautilus import Sampler

    phot = np.column_stack([np.asarray(flux_ujy, float), np.asarray(err_ujy, float)])
    instructions = fit_instructions(redshift, av_prior)
    _quiet_bagpipes()
    with tempfile.TemporaryDirectory(prefix="surveydust-sed-") as tmp:
        paths = []
        for k, curve in enumerate(curves):
            paths.append(os.path.join(tmp, f"band{k}.txt"))
            np.savetxt(paths[-1], curve)
        galaxy = bagpipes.galaxy("source", lambda _: phot, filt_list=paths, spectrum_exists=False)
        model = fitted_model(galaxy, instructions)
        sampler = Sampler(lambda u: model.prior.transform(np.array(u, dtype=float)), model.lnlike,
                          n_dim=model.ndim, n_live=n_live, n_networks=N_NETWORKS, seed=seed)
        sampler.run(verbose=False, n_eff=0, discard_exploration=False)  # as Bagpipes' fit runs it
        points, log_w, log_l = sampler.posterior()
    rng = np.random.default_rng(seed)
    weights = np.exp(log_w - log_w.max())
    take = rng.choice(len(points), size=N_POSTERIOR, p=weights / weights.sum())
    samples = points[take]
    params = list(model.params)
    out = _percentiles("A_V_sed", samples[:, params.index("dust:Av")])
    sfh = star_formation_history(_components(instructions, params, samples[0]))
    ssfr = np.zeros((len(TIMESCALES_MYR), len(samples)))
    for j, values in enumerate(samples):
        sfh.update(_components(instructions, params, values))
        for k, timescale in enumerate(TIMESCALES_MYR):
            recent = sfh.ages < timescale * 1e6
            sfr = np.sum(sfh.sfh[recent] * sfh.age_widths[recent]) / np.sum(sfh.age_widths[recent])
            ssfr[k, j] = np.log10(sfr) - sfh.stellar_mass if sfr > 0 else -np.inf
    for k, timescale in enumerate(TIMESCALES_MYR):
        out.update(_percentiles(f"log_ssfr_sed_{timescale}", np.maximum(ssfr[k], LOG_SSFR_FLOOR)))
    out["nbands_sed"] = float(len(phot))
    out["chi2_sed"] = float(-2.0 * (log_l.max() - model.K_phot))
    return out


def _percentiles(name: str, values: np.ndarray) -> dict[str, float]:
    lo, med, hi = np.percentile(values, (16, 50, 84))
    return {name: float(med), f"{name}_lo": float(lo), f"{name}_hi": float(hi)}


def _components(instructions: dict[str, Any], params: list[str], values: np.ndarray) -> dict[str, Any]:
    """Model components with the fitted parameters (``"dust:Av"``, ...) set to ``values``."""
    comps = copy.deepcopy(instructions)
    for name, value in zip(params, values):
        comp, key = name.split(":")
        comps[comp][key] = float(value)
    return comps


def result_names() -> list[str]:
    """The catalogue variables a fit adds."""
    names = [f"{base}{s}" for base in ["A_V_sed", *(f"log_ssfr_sed_{t}" for t in TIMESCALES_MYR)]
             for s in ("", "_lo", "_hi")]
    return [*names, "z_sed", "nbands_sed", "chi2_sed"]


def fit_sed(
    catalogue: Path | str | xr.Dataset,
    out: Path | str | None = None,
    *,
    n_live: int = 100,
    av_prior: str = "log",
    sources: Any = None,
    default_redshift: float = 7.0,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> xr.Dataset:
    """Fit every selected source's photometry with Bagpipes and add the results to the catalogue.

    Parameters
    ----------
    catalogue : catalogue store (Zarr, from ``run_catalogue``) or its Dataset.
    out : catalogue store to write; None updates the ``catalogue`` store in
        place (atomically), or, for a Dataset, writes nothing.
    n_live : nautilus live points (100: 30-45 CPU s per source with 8 bands).
    av_prior : ``"log"`` (log-uniform 1e-4..10 mag, the paper's) or ``"uniform"`` (0..4 mag).
    sources : catalogue row indices (0-based) to fit; None: every source
        without the edge or masked flag (faint sources are fitted: their
        posteriors are broad).
    default_redshift : redshift of sources without ``z`` (they carry the
        ``no_redshift`` flag). Bagpipes models redshifts up to 10.
    client, cluster, workers : a Dask client, or the profile and worker count
        of one to start for this call.
    overwrite : replace an existing ``out`` and fit again sources that already
        have SED results (else they are kept and not fitted).

    Returns the catalogue with the variables of :func:`result_names` (NaN for
    sources not fitted), units in their attrs and the settings in the
    ``sed_fit`` attribute.
    """
    bagpipes = import_bagpipes()  # once here, before the workers do (they race on the first import)
    if isinstance(n_live, bool) or not isinstance(n_live, int) or n_live < 10:
        raise InputError(f"n_live must be an integer >= 10, got {n_live!r}")
    av_prior_setting(av_prior)
    max_z = float(bagpipes.config.max_redshift)
    if not 0 < default_redshift <= max_z:
        raise InputError(f"default_redshift must be in (0, {max_z:g}] (Bagpipes' range), got {default_redshift}")
    cat, out_path = _open_for_update(catalogue, out, overwrite)
    curves = filter_curves([str(b) for b in cat["band"].values])
    if not curves:
        raise InputError("no band of the catalogue has a filter curve for Bagpipes")
    settings = {"n_live": n_live, "default_redshift": default_redshift, "error_floor": ERROR_FLOOR,
                "av_prior": av_prior, "bands": list(curves),
                "instructions_at_z7": repr(fit_instructions(7.0, av_prior)),
                "n_posterior": N_POSTERIOR, "timescales_myr": list(TIMESCALES_MYR)}
    if not overwrite and "A_V_sed" in cat and np.isfinite(cat["A_V_sed"].values).any():
        _check_same_settings(cat.attrs.get("sed_fit", {}), settings)
    jobs = {j["index"]: j for j in _jobs(cat, curves, _selection(cat, sources), default_redshift, max_z, overwrite)}

    def submit(client: Any, todo: list[int], token: str) -> dict[int, Any]:
        [shared] = client.scatter([list(curves.values())], broadcast=True, hash=False)
        options = {"n_live": n_live, "av_prior": av_prior}
        return {i: client.submit(fit_task, jobs[i], shared, options, key=f"fit-sed-{token[:8]}-{i}", pure=False)
                for i in todo}

    def finish(results: dict[str, np.ndarray]) -> xr.Dataset:
        ds = _merge(cat, results, {**settings, "bagpipes_version": _version("bagpipes"), "surveydust_version": VERSION,
                                   "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        if out_path is not None:
            write_catalogue(ds, out_path, overwrite=True if out is None else overwrite)
            logger.info("wrote %s", out_path)
        return ds

    return run_parts(out_path, (settings, [(j["index"], j["flux"], j["err"], j["redshift"]) for j in jobs.values()]),
                     list(jobs), submit, finish, compute=Compute(client, cluster, workers, progress),
                     describe=_fit_progress, scratch_prefix="surveydust-sedfit-", parts_suffix="-sed",
                     announce=lambda n, done: f"SED fits of {n} sources ({done} done before) in {len(curves)} bands "
                                              f"({', '.join(curves)}), n_live {n_live}, {av_prior} A_V prior")


def _open_for_update(catalogue: Path | str | xr.Dataset, out: Path | str | None,
                     overwrite: bool) -> tuple[xr.Dataset, Path | None]:
    """The catalogue to fit (a copy of a Dataset, or the store opened) and where the result goes:
    ``out`` (checked), else the catalogue store itself (updated atomically), else nowhere."""
    if isinstance(catalogue, xr.Dataset):
        cat, source_path = catalogue.copy(), None
    else:
        source_path = Path(catalogue)
        cat = open_catalogue(source_path)
    if out is None:
        return cat, source_path
    from surveydust.stores.base import check_output_path

    check_output_path(Path(out), overwrite, "catalogue", inputs=[source_path])  # in place: no out
    return cat, Path(out)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def _check_same_settings(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to add fits made with other settings to a catalogue's kept SED results."""
    changed = [k for k in ("av_prior", "n_live", "default_redshift", "error_floor", "bands")
               if old.get(k) != new[k]]
    if changed:
        was = ", ".join(f"{k} {old.get(k)!r}" for k in changed)
        raise InputError(f"the catalogue has SED results made with other settings ({was}); "
                         "pass overwrite to fit every source again with the new ones")


def _selection(cat: xr.Dataset, sources: Any) -> np.ndarray:
    n = cat.sizes["source"]
    if sources is None:
        bad = sum(FLAGS[f] for f in SKIP_FLAGS)
        flags = cat["flag"].values if "flag" in cat else np.zeros(n, np.uint16)
        keep = np.flatnonzero((flags & bad) == 0)
        if keep.size < n:
            logger.info("%d of %d sources flagged %s are not fitted (give their indices to fit them)",
                        n - keep.size, n, " or ".join(SKIP_FLAGS))
        return keep
    index = np.unique(np.atleast_1d(np.asarray(sources)))
    if index.size and (index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= n):
        raise InputError(f"sources must be row indices 0..{n - 1} of the catalogue, got {sources!r}")
    return index.astype(int)


def _jobs(cat: xr.Dataset, curves: dict[str, np.ndarray], index: np.ndarray, default_redshift: float,
          max_z: float, overwrite: bool) -> list[dict[str, Any]]:
    """One fit per selected source that has a usable redshift and enough bands."""
    bands = [str(b) for b in cat["band"].values]
    cols = [bands.index(b) for b in curves]
    flux = cat["flux"].values[:, cols]
    err = cat["flux_err"].values[:, cols]
    z = cat["z"].values.astype(float) if "z" in cat else np.full(cat.sizes["source"], np.nan)
    z = np.where(np.isfinite(z), z, default_redshift)
    if not overwrite and "A_V_sed" in cat:
        fitted = np.isfinite(cat["A_V_sed"].values[index])
        if fitted.any():
            logger.info("%d sources already have SED results and are kept (overwrite to fit them again)",
                        int(fitted.sum()))
            index = index[~fitted]
    jobs, few, bad_z = [], 0, 0
    for i in index:
        f, e, use = photometry_ujy(flux[i], err[i])
        if not 0 < z[i] <= max_z:
            bad_z += 1
        elif use.sum() < MIN_BANDS:
            few += 1
        else:
            jobs.append({"index": int(i), "flux": f, "err": e, "use": use, "redshift": float(z[i])})
    if few:
        logger.warning("%d sources have fewer than %d bands with a flux and an error: not fitted", few, MIN_BANDS)
    if bad_z:
        logger.warning("%d sources have a redshift outside Bagpipes' range (0, %g]: not fitted", bad_z, max_z)
    return jobs


def fit_task(job: dict[str, Any], curves: list[np.ndarray], options: dict[str, Any]) -> dict[str, np.ndarray]:
    """One source's fit (a Dask task; ``options``: keywords of :func:`fit_photometry`): its result
    columns, one row."""
    use = job["use"]
    result = fit_photometry(job["flux"][use], job["err"][use], [c for c, u in zip(curves, use) if u],
                            job["redshift"], seed=job["index"], **options)
    columns = {k: np.array([v]) for k, v in result.items()}
    columns.update(source=np.array([job["index"]]), z_sed=np.array([job["redshift"]]))
    return columns


def _fit_progress() -> Any:
    """``describe`` for :meth:`ResumableRun.collect`: fits done, the source, its A_V, seconds."""
    start = time.perf_counter()

    def describe(n: int, total: int, columns: dict[str, np.ndarray]) -> str:
        return (f"SED fit {n}/{total} done: source {int(columns['source'][0])}, "
                f"A_V = {float(columns['A_V_sed'][0]):.2f} ({time.perf_counter() - start:.0f} s)")
    return describe


def _merge(cat: xr.Dataset, results: dict[str, np.ndarray], settings: dict[str, Any]) -> xr.Dataset:
    """The catalogue with the result columns; earlier results of sources not fitted now are kept."""
    n = cat.sizes["source"]
    rows = results.get("source", np.zeros(0, int)).astype(int)
    for name in result_names():
        values = cat[name].values.astype(float) if name in cat else np.full(n, np.nan)
        if name in results:
            values[rows] = results[name]
        cat[name] = ("source", values)
        base = name.removesuffix("_lo").removesuffix("_hi")
        unit = UNITS.get(base) or UNITS.get(base.rsplit("_", 1)[0])
        if unit:
            cat[name].attrs["units"] = unit
    cat["A_V_sed"].attrs["long_name"] = "A_V of the Bagpipes fit (Calzetti), posterior median"
    for t in TIMESCALES_MYR:
        cat[f"log_ssfr_sed_{t}"].attrs["long_name"] = f"log sSFR over the last {t} Myr of the Bagpipes fit"
    cat["chi2_sed"].attrs["long_name"] = "chi-squared of the best posterior point over nbands_sed bands"
    cat.attrs["sed_fit"] = settings
    return cat


__all__ = ["filter_curves", "fit_instructions", "fit_photometry", "fit_sed", "import_bagpipes", "result_names"]

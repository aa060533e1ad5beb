"""The shift suite: skill, bias, coverage and out-of-distribution flags on worlds a network never saw.

Each shift is a test store simulated with one piece of physics or instrument outside the
training prior (``configs/simulation.yaml``), everything else as in training, from a seed the
training store did not use (fresh galaxies: a split by galaxy). :func:`score_shift` predicts
A_V on the images a network would keep (its SNR cut), with redshift, and reports skill next
to the constant guess, the median bias, the 68/95% coverage of its percentiles on all and on
unflagged sources, the share flagged out of distribution, and the detector's AUROC against the
in-domain scores (how well the flag separates the shifted world from the training one); given
each image's galaxy, also galaxy-bootstrap standard errors (:func:`galaxy_bootstrap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from surveydust.bundle import Predictor
from surveydust.config import load_catalogue_config
from surveydust.errors import InputError
from surveydust.evaluation.heldout import image_blocks
from surveydust.evaluation.metrics import percentile_array, residual_metrics
from surveydust.simulate.priors import FIXED_PRIORS
from surveydust.stores.training import open_training_store

#: shift name -> simulation settings that put one thing outside the training prior
SHIFTS: dict[str, dict[str, Any]] = {
    "in_domain": {},
    # Milky Way dust (Fitzpatrick 1999, R_V = 3.1, a strong 2175 A bump): not in the training mix
    "mw_dust_law": {"priors": {"dust_laws": ["mw"]}},
    # no nebular lines at all (the prior reaches down to 0.1 x the library's)
    "no_lines": {"priors": {"line_scale": [0.005, 0.01], "lya_ew_scale_aa": 0.0}},
    # [OIII]+Hbeta stronger than any training galaxy's (the prior stops at 3 x)
    "extreme_lines": {"priors": {"line_scale": [5.0, 8.0]}},
    # the real WebbPSF models instead of Moffat profiles (needs their folder: psf_dir)
    "webbpsf": {"psf": "fits", "priors": {"psf_fwhm_scale": [1.0, 1.0]}},
    # noise correlated over 1.5-2 px (the prior stops at 0.8 px)
    "correlated_noise": {"priors": {"noise_correlation_px": [1.5, 2.0]}},
    # 0.8-1.2 mag shallower than CEERS (the prior stops at 0.3)
    "shallow": {"priors": {"depth_offset_mag": [-1.2, -0.8]}},
    # bulge-like smooth components and many clumps (the prior stops at n = 4 and 5 clumps)
    "morphology": {"priors": {"sersic_n": [4.5, 6.0], "clumps_mean": [7.0, 9.0]}},
    # every galaxy recently quenched (15% in the prior): Balmer breaks without lines
    "all_quenched": {"priors": {"quenched_fraction": 1.0}},
    # the simulator before its nuisance physics became priors (one dust law, line strength, SFH
    # scatter, PSF and depth; FIXED_PRIORS): a narrower world inside the prior, where a network
    # trained on it can be compared with one trained on the prior (what robustness costs there)
    "previous_simulator": {"priors": dict(FIXED_PRIORS)},
}


def shift_settings(name: str, psf_dir: Path | None = None) -> dict[str, Any]:
    """Simulation settings of shift ``name`` (see :data:`SHIFTS`); ``webbpsf`` needs ``psf_dir``."""
    if name not in SHIFTS:
        raise InputError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    settings = dict(SHIFTS[name])
    if settings.get("psf") == "fits":
        if psf_dir is None:
            raise InputError(f"shift {name!r} needs the WebbPSF folder (psf_dir)")
        settings["psf_dir"] = str(psf_dir)
    return settings


def predict_store(predictor: Predictor, store: Path | str, snr_band: str = "F277W", snr_min: float = 5.0,
                  block_samples: int = 4096) -> tuple[Any, np.ndarray, np.ndarray]:
    """Predictions (with redshift) for the samples of ``store`` with SNR(``snr_band``) >= ``snr_min``.

    Returns ``(predictions, truth A_V [mag], sample index)``."""
    import xarray as xr

    ds = open_training_store(store)
    idx = np.flatnonzero(ds["snr"].sel(band=snr_band).values >= snr_min)
    z = ds["redshift"].values[idx]
    parts = [predictor.predict(block, redshift=z[i:i + len(block)])
             for i, block in zip(range(0, idx.size, block_samples),
                                 image_blocks(ds, idx, predictor.bands, block_samples))]
    return xr.concat(parts, dim="sample"), ds["A_V"].values[idx], idx


def auroc(in_domain: np.ndarray, shifted: np.ndarray) -> float:
    """Area under the ROC curve of a score separating ``shifted`` (positive) from ``in_domain``."""
    from sklearn.metrics import roc_auc_score

    a, b = in_domain[np.isfinite(in_domain)], shifted[np.isfinite(shifted)]
    if not a.size or not b.size:
        return np.nan
    return float(roc_auc_score(np.r_[np.zeros(a.size), np.ones(b.size)], np.r_[a, b]))


#: metrics of :func:`score_shift` given a galaxy-bootstrap standard error (``<metric>_err``)
BOOTSTRAP_METRICS = ("spearman", "coverage_68_unflagged", "median_bias_unflagged")
#: galaxy-bootstrap resamples behind each ``<metric>_err``
N_BOOTSTRAP = 200


def galaxy_bootstrap(truth: np.ndarray, pred: np.ndarray, pct: np.ndarray, flagged: np.ndarray,
                     galaxy: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, float]:
    """Standard errors of :data:`BOOTSTRAP_METRICS` from resampling whole galaxies.

    A test galaxy contributes many images (views x dust-to-metal ratios), so its images are not
    independent: resampling images would understate the error. Each resample draws as many
    galaxies as there are, with replacement, and keeps all of their images.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        ``(n,)`` true and predicted values [units of the quantity].
    pct : numpy.ndarray
        ``(n, 5)`` predicted percentiles at :data:`surveydust.posterior.LEVELS`.
    flagged : numpy.ndarray
        ``(n,)`` bool, out of distribution.
    galaxy : numpy.ndarray
        ``(n,)`` galaxy id of each image.
    n_boot : int, optional
        Resamples.
    seed : int, optional
        Seed of the resampling.

    Returns
    -------
    dict of str to float
        ``<metric>_err`` for each of :data:`BOOTSTRAP_METRICS` (standard deviation over the
        resamples; NaN with fewer than two galaxies).
    """
    ids, members = np.unique(galaxy, return_inverse=True)
    if ids.size < 2:
        return {f"{m}_err": np.nan for m in BOOTSTRAP_METRICS}
    groups = np.split(np.argsort(members, kind="stable"), np.cumsum(np.bincount(members))[:-1])
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(n_boot):
        i = np.concatenate([groups[g] for g in rng.integers(0, ids.size, ids.size)])
        every = residual_metrics(truth[i], pred[i], pct[i])
        keep = i[~flagged[i]]
        clean = residual_metrics(truth[keep], pred[keep], pct[keep])
        draws["spearman"].append(every["spearman"])
        draws["coverage_68_unflagged"].append(clean["coverage_68"])
        draws["median_bias_unflagged"].append(clean["median_bias"])
    return {f"{m}_err": float(np.nanstd(v)) for m, v in draws.items()}


def score_shift(result: Any, truth: np.ndarray, constant: float,
                reference_ood: np.ndarray | None = None, target: str = "A_V",
                galaxy: np.ndarray | None = None) -> dict[str, float]:
    """One row of the suite's table for predictions ``result`` (from :func:`predict_store`).

    Parameters
    ----------
    result : xarray.Dataset
        Predictions over ``sample`` (``<target>``, its percentiles and ``ood``).
    truth : numpy.ndarray
        ``(n,)`` true values of ``target`` [mag for A_V].
    constant : float
        The constant guess (the training median) [units of ``target``].
    reference_ood : numpy.ndarray, optional
        In-domain OOD scores for the AUROC.
    target : str, optional
        The quantity scored.
    galaxy : numpy.ndarray, optional
        ``(n,)`` galaxy id of each sample: adds the galaxy-bootstrap errors of
        :func:`galaxy_bootstrap` (``<metric>_err``).

    Returns
    -------
    dict of str to float
        ``N``, ``spearman``, ``MAE``, ``MAE_constant``, ``median_bias`` [units of
        ``target``], coverage of the 68/95% intervals on all and on unflagged
        sources, ``median_bias_unflagged``, ``flagged`` (share out of distribution:
        score above the catalogue's ``ood_threshold``) and ``AUROC`` of the OOD
        score against ``reference_ood``; all but the last two from
        :func:`surveydust.evaluation.metrics.residual_metrics`; with ``galaxy``, also
        ``spearman_err``, ``coverage_68_unflagged_err`` and ``median_bias_unflagged_err``.
    """
    pred = result[target].values
    pct = percentile_array(result, target)
    ood = result["ood"].values if "ood" in result else np.full(pred.size, np.nan)
    flagged = ood > load_catalogue_config().ood_threshold  # as run_catalogue flags them
    every = residual_metrics(truth, pred, pct, constant)
    clean = residual_metrics(truth[~flagged], pred[~flagged], pct[~flagged], constant)
    ok = np.isfinite(truth) & np.isfinite(pred)
    errors = galaxy_bootstrap(truth, pred, pct, flagged, np.asarray(galaxy)) if galaxy is not None else {}
    return {**errors, "N": every["N"], "spearman": every["spearman"], "MAE": every["MAE"],
            "MAE_constant": every["MAE_constant"], "median_bias": every["median_bias"],
            "coverage_68": every["coverage_68"], "coverage_95": every["coverage_95"],
            "coverage_68_unflagged": clean["coverage_68"], "coverage_95_unflagged": clean["coverage_95"],
            "median_bias_unflagged": clean["median_bias"],
            "flagged": float(np.mean(flagged[ok])) if ok.any() else np.nan,
            "AUROC": auroc(reference_ood, ood) if reference_ood is not None else np.nan}

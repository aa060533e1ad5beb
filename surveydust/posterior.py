"""Posteriors of the predicted quantities: from the network's Gaussians to calibrated percentiles.

The network's target space, its transforms back to physical units, and
percentiles calibrated on galaxies that training never saw.

The network predicts, per target, a Gaussian (mean, sigma) in a transformed
and standardised space. Dust is non-negative, so A_V and E(B-V) are modelled
as ``t = ln(x + c)`` with a small offset ``c`` (:data:`LOG_OFFSETS`): the
predicted distribution of ``x = exp(t) - c`` is a shifted log-normal, and its
percentiles are clipped at 0 (a dust-free galaxy is a point mass at 0 mag).
log sSFR [log10(yr^-1)] is modelled as it is. Every percentile is a monotonic
function of the Gaussian's, so percentiles map one to one.

Calibration (post-hoc quantile recalibration, Kuleshov et al. 2018): on the
calibration galaxies the standardised residual ``r = (t - mu) / sigma`` of
every truth is computed; the percentile at level ``p`` is then read at
``mu + z(p) sigma``, with ``z(p)`` the empirical ``p``-quantile of ``r``
(the same as recalibrating the levels ``Phi(r)``, but kept in units of sigma:
a network that is too sure of itself leaves residuals of many sigma, whose
levels round to 1 in double precision and would make two percentiles equal).
On the calibration set this makes every interval hold its nominal fraction
exactly; held-out coverage is what ``evaluate`` reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtri

from surveydust.errors import InputError

#: offset c [mag] of ``ln(x + c)`` for the non-negative targets (about the smallest
#: A_V, resp. E(B-V), that NIRCam colours of a z ~ 7 galaxy can tell from zero)
LOG_OFFSETS = {"A_V": 0.05, "EBV": 0.0125}
EBV_OFFSET_RATIO = 0.25  # E(B-V) offset / A_V offset (about 1 / R_V)


def log_offsets(av_offset_mag: float) -> dict[str, float]:
    """The offsets of ``ln(x + c)`` for an A_V offset [mag] (E(B-V)'s is a quarter of it)."""
    return {"A_V": float(av_offset_mag), "EBV": float(av_offset_mag) * EBV_OFFSET_RATIO}
#: percentile levels of every prediction (``<T>_p025`` ... ``<T>_p975`` in outputs)
LEVELS = (0.025, 0.16, 0.5, 0.84, 0.975)
#: offsets [sigma] of an uncalibrated Gaussian's percentiles at :data:`LEVELS`
NOMINAL_Z = tuple(float(z) for z in ndtri(LEVELS))
LEVEL_NAMES = ("p025", "p16", "p50", "p84", "p975")
MIN_CALIBRATION_SAMPLES = 20


def to_network(target: str, values: np.ndarray, offsets: Mapping[str, float] = LOG_OFFSETS) -> np.ndarray:
    """Physical values of ``target`` to the network's (unstandardised) space."""
    values = np.asarray(values, dtype=np.float64)
    c = offsets.get(target)
    return values if c is None else np.log(np.maximum(values, 0.0) + c)


def from_network(target: str, values: np.ndarray, offsets: Mapping[str, float] = LOG_OFFSETS) -> np.ndarray:
    """Inverse of :func:`to_network`; non-negative targets clipped at 0."""
    values = np.asarray(values, dtype=np.float64)
    c = offsets.get(target)
    return values if c is None else np.maximum(np.exp(values) - c, 0.0)


def residual(target: str, truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray,
             offsets: Mapping[str, float] = LOG_OFFSETS) -> np.ndarray:
    """Standardised residual ``(t - mean) / sigma`` of ``truth`` in network space."""
    return (to_network(target, truth, offsets) - mean) / sigma


def calibrate(truth: Mapping[str, np.ndarray], mean: Mapping[str, np.ndarray],
              sigma: Mapping[str, np.ndarray], offsets: Mapping[str, float] = LOG_OFFSETS) -> dict[str, list[float]]:
    """Per target the calibrated offsets ``z(p)`` [sigma] at :data:`LEVELS` (finite truths only)."""
    out = {}
    for t in mean:
        r = residual(t, truth[t], mean[t], sigma[t], offsets)
        r = r[np.isfinite(r)]
        if r.size < MIN_CALIBRATION_SAMPLES:
            raise InputError(f"only {r.size} calibration samples for {t}: need at least {MIN_CALIBRATION_SAMPLES}")
        out[t] = [float(q) for q in np.quantile(r, LEVELS)]
    return out


def z_from_levels(levels: Sequence[float]) -> list[float]:
    """Offsets [sigma] of calibrated Gaussian levels in (0, 1) (how bundle format 2 stored them)."""
    return [float(z) for z in ndtri(np.asarray(levels, dtype=np.float64))]


def percentiles(target: str, mean: np.ndarray, sigma: np.ndarray, z: Sequence[float] | None = None,
                offsets: Mapping[str, float] = LOG_OFFSETS) -> np.ndarray:
    """Percentiles ``(n, 5)`` in physical units at :data:`LEVELS`; ``z`` are the
    calibrated offsets [sigma] (None: :data:`NOMINAL_Z`, uncalibrated)."""
    z = np.asarray(NOMINAL_Z if z is None else z, dtype=np.float64)
    t = np.asarray(mean, np.float64)[:, None] + np.asarray(sigma, np.float64)[:, None] * z[None, :]
    return from_network(target, t, offsets)


def crps_from_percentiles(truth: np.ndarray, pct: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score per sample from its :data:`LEVELS` percentiles.

    The quantile (pinball) form ``CRPS = 2 * mean_p rho_p(y - q_p)`` over the five
    levels: a coarse but proper approximation, in the target's units.
    """
    p = np.asarray(LEVELS)[None, :]
    d = np.asarray(truth, np.float64)[:, None] - pct
    return 2.0 * np.mean(np.where(d >= 0, p * d, (p - 1.0) * d), axis=1)


def coverage(truth: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Fraction of finite truths inside [low, high] (NaN when none)."""
    ok = np.isfinite(truth) & np.isfinite(low) & np.isfinite(high)
    return float(np.mean((truth[ok] >= low[ok]) & (truth[ok] <= high[ok]))) if ok.any() else np.nan


def describe(offsets: Mapping[str, float] = LOG_OFFSETS) -> dict[str, Any]:
    """What a bundle records about its posterior model (``bundle.json`` ``posterior``)."""
    return {"offsets": dict(offsets), "transform": {t: f"ln(x + {c:g})" for t, c in offsets.items()},
            "levels": list(LEVELS), "calibration": "quantile recalibration on calibration galaxies"}

"""Out-of-distribution scores of stamps against a network's training set.

How unlike the training set a stamp is, in the network's own learned features and in colour
space, given each stamp's own noise.

Two distances are measured for each stamp:

- ``features``: the Mahalanobis distance of the activations of the network's last hidden layer
  (what the network "sees"; Lee et al. 2018 use the same distance on penultimate features);
- ``colour_likelihood``: the chi^2 of the stamp's adjacent-band aperture colours against the
  in-domain colour distribution at its redshift, with the stamp's own photometric errors added
  to that distribution's intrinsic covariance (a Gaussian "extreme deconvolution" fit, Bovy et
  al. 2011, whose mean runs quadratically with redshift). The errors come from the stamp itself:
  the robust scatter of its outer pixels and their pixel-to-pixel correlation (drizzled mosaics
  correlate noise). A bright stamp with a 1 mag line excess stands out; a faint one whose
  colours are noise does not, as it should not.

Each distance is divided by its 99th percentile over in-domain reference stamps (the validation
galaxies); the score is the larger of the two, divided by the threshold that flags ``flag_share``
(5%, the top of the 2-5% the project allows: a flag costs a user nothing but a warning, an unflagged
shifted source costs a wrong interval) of the held-out calibration galaxies' stamps. A score above 1 is flagged
``out_of_distribution``: the source is unlike what the network was trained on, and its
percentiles are not calibrated for it.

The statistics live in the bundle's metadata (``ood``, ``kind`` in :data:`KINDS`). Bundles of the
previous kind (``features+colours``: a plain Mahalanobis distance of all colour pairs) are still
scored as they were; bundles made before either carry the flux-only statistics of
:func:`surveydust.preprocess.feature_stats`, scored by :func:`surveydust.preprocess.ood_score`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from surveydust.instrument import aperture_noise_factor, circular_aperture
from surveydust.preprocess import NORM_APERTURE_PIX, colour_features, crop_centre

KIND = "features+colour_likelihood"
#: kinds of statistics scored by :func:`ood_scores` (the first one made by the previous release)
KINDS = ("features+colours", KIND)
#: share of in-domain (calibration-galaxy) stamps flagged by construction
FLAG_SHARE = 0.05
#: percentile of the reference distances that scales each space's distance to ~1
SPACE_SCALE_PERCENTILE = 99.0
#: smallest scale of a space and smallest threshold (constant features would give 0 and NaN scores)
MIN_SCALE = 1e-9
#: ridge added to each covariance, relative to its mean variance (ReLU features are often constant)
RIDGE = 1e-3
#: pixels farther than this from the stamp centre measure its noise [pixels]
BACKGROUND_RADIUS_PIX = 11.0
#: magnitude error given to a band without a positive flux (no colour information) [mag]
MAX_MAG_ERR = 50.0
#: redshift about which the colour mean's quadratic runs
Z_PIVOT = 7.0
#: iterations of the extreme-deconvolution fit (converged to < 1e-4 mag in tests)
XD_ITERATIONS = 50
#: correlation lengths [pixels] at which the aperture noise factor is tabulated
_CORRELATION_GRID_PX = np.linspace(0.0, 3.0, 31)


def feature_layer(model: Any) -> str | None:
    """Name of the network's last hidden (dense) layer, or None when it has none (an ensemble)."""
    names = [layer.name for layer in model.layers if layer.name.startswith("dense")]
    return max(names, key=lambda n: int(n.removeprefix("dense") or 0)) if names else None


def colours(images: np.ndarray, crop: int) -> np.ndarray:
    """Aperture colours [mag] of every band pair of images ``(n, band, y, x)`` [nJy] (no
    brightness: a fainter copy of a training galaxy is not out of distribution); ``(n, 0)`` for one band."""
    return colour_features(images, crop, NORM_APERTURE_PIX)[:, images.shape[1]:]


@cache
def _pixels(crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of the aperture's and the background's pixels in a ``crop`` x ``crop`` cut, and
    the background's mask ``(crop * crop,)`` (computed once per crop)."""
    background = ~circular_aperture(crop, BACKGROUND_RADIUS_PIX).ravel()
    return np.flatnonzero(circular_aperture(crop, NORM_APERTURE_PIX)), np.flatnonzero(background), background


def _row_medians(a: np.ndarray) -> np.ndarray:
    """Median of each row of ``a`` ``(rows, m)`` [float64], as :func:`numpy.median` gives it for rows
    without NaN, from one partial sort of ``a`` in place (its rows are reordered); NaN without columns."""
    if a.shape[1] == 0:
        return np.full(len(a), np.nan)
    h = a.shape[1] // 2
    a.partition(h, axis=1)  # a[:, h] is the (h+1)-th smallest, a[:, :h] the h below it
    upper = a[:, h].astype(np.float64)
    return upper if a.shape[1] % 2 else 0.5 * (a[:, :h].max(axis=1) + upper)


def _lag_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` over the last two axes of ``(rows, y, x)`` views, without a temporary."""
    return np.einsum("nyx,nyx->n", a, b).astype(np.float64)


#: band-stamps measured at a time by :func:`aperture_photometry` (its float32 temporaries stay in cache)
PHOTOMETRY_ROWS = 2048


def _correlation_length(masked: np.ndarray, quiet: np.ndarray) -> np.ndarray:
    """Gaussian correlation length [pixels] of the noise of ``(rows, y, x)`` stamps from the correlation
    of horizontally and vertically adjacent pixels that are both quiet (``masked``: the sky-subtracted
    pixels where ``quiet``, else 0; ``quiet``: 1 or 0, of the same dtype): ``rho = sum(a b) / sum((a^2
    + b^2) / 2)`` over those pairs, and ``rho = exp(-1 / (4 s^2))`` for white noise smoothed by a
    Gaussian of ``s``; 0 for white noise. Six lag products, no FFT."""
    num = _lag_sum(masked[:, :, 1:], masked[:, :, :-1]) + _lag_sum(masked[:, 1:], masked[:, :-1])
    # a pair counts a^2 only where its partner b is quiet too (``masked`` is 0 where a is not)
    sq = np.multiply(masked, masked)
    den = 0.5 * (_lag_sum(sq[:, :, 1:], quiet[:, :, :-1]) + _lag_sum(sq[:, :, :-1], quiet[:, :, 1:])
                 + _lag_sum(sq[:, 1:], quiet[:, :-1]) + _lag_sum(sq[:, :-1], quiet[:, 1:]))
    rho = np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 1e-6, 0.99)
    return np.where(rho > 0.02, np.sqrt(-1.0 / (4.0 * np.log(rho))), 0.0)


def aperture_photometry(images: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Aperture fluxes and their noise [nJy] of images ``(n, band, y, x)`` [nJy].

    The flux is the sum inside the central :data:`~surveydust.preprocess.NORM_APERTURE_PIX`
    aperture of the ``crop`` x ``crop`` centre; its noise is the robust (MAD) scatter of the
    pixels beyond :data:`BACKGROUND_RADIUS_PIX` times the aperture's noise factor for their
    measured pixel-to-pixel correlation (``sqrt(n_pixels)`` for white noise).

    Float32 images are measured in float32 (the flux summed in float64), :data:`PHOTOMETRY_ROWS`
    band-stamps at a time: the medians are partial sorts of the background pixels, the correlation
    six lag products. The noise agrees with a float64 measurement to float32 round-off (~1e-6
    relative), the flux exactly.
    """
    images = np.asarray(images)
    dtype = np.float32 if images.dtype in (np.float16, np.float32) else np.float64
    cut = crop_centre(images, crop)
    n, n_band = cut.shape[:2]
    rows = cut.reshape(n * n_band, crop, crop)  # a view unless the cut is not contiguous enough
    flux, sigma, length = np.empty((3, len(rows)))
    for i in range(0, len(rows), PHOTOMETRY_ROWS):
        part = slice(i, i + PHOTOMETRY_ROWS)
        flux[part], sigma[part], length[part] = _photometry_rows(rows[part], dtype)
    error = sigma * np.interp(length, _CORRELATION_GRID_PX, _noise_factors(crop))
    return flux.reshape(n, n_band), error.reshape(n, n_band)


def _photometry_rows(rows: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aperture flux, background MAD scatter and correlation length of ``(rows, crop, crop)`` cuts."""
    crop = rows.shape[-1]
    flat = np.ascontiguousarray(rows, dtype=dtype).reshape(len(rows), crop * crop)
    aperture, background, background_mask = _pixels(crop)
    flux = np.take(flat, aperture, axis=1).sum(axis=1, dtype=np.float64)
    sky = np.take(flat, background, axis=1)  # a copy: partitioned in place below
    has_nan = np.isnan(sky).any(axis=1) if np.isnan(sky.sum()) else np.zeros(len(sky), bool)
    level = _row_medians(sky)
    np.abs(np.subtract(sky, level[:, None].astype(dtype), out=sky), out=sky)
    sigma = 1.4826 * _row_medians(sky)
    level[has_nan] = sigma[has_nan] = np.nan  # as np.median: a NaN sky pixel makes both NaN
    masked = np.subtract(flat, level[:, None].astype(dtype))
    quiet = np.less(np.abs(masked), (3.0 * sigma[:, None]).astype(dtype))
    quiet &= background_mask
    np.copyto(masked, dtype(0), where=~quiet)  # the sky-subtracted pixel where quiet, else 0 (NaN too)
    shape = (len(rows), crop, crop)
    return flux, sigma, _correlation_length(masked.reshape(shape), quiet.astype(dtype).reshape(shape))


@cache
def _noise_factors(crop: int) -> np.ndarray:
    """The aperture's noise factor at each of :data:`_CORRELATION_GRID_PX` (computed once per crop)."""
    aperture = circular_aperture(crop, NORM_APERTURE_PIX)
    return np.array([aperture_noise_factor(aperture, s) for s in _CORRELATION_GRID_PX])


def colour_errors(flux: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent-band colours [mag] ``(n, band - 1)`` and their noise covariance ``(n, band - 1,
    band - 1)`` [mag^2] from aperture fluxes and errors ``(n, band)`` [nJy] (bands in wavelength
    order). A band without positive flux gets a :data:`MAX_MAG_ERR` magnitude error: no colour information."""
    positive = np.maximum(flux, 1e-3 * np.maximum(error, 1e-12))
    mag = -2.5 * np.log10(np.maximum(positive, 1e-12))
    mag_err = np.minimum(2.5 / np.log(10.0) * error / positive, MAX_MAG_ERR)
    n_band = flux.shape[1]
    jac = np.eye(n_band - 1, n_band) - np.eye(n_band - 1, n_band, k=1)
    return mag @ jac.T, np.einsum("ij,nj,kj->nik", jac, mag_err**2, jac)


def colour_values(images: np.ndarray, crop: int) -> dict[str, np.ndarray]:
    """What the ``colour_likelihood`` space needs of images ``(n, band, y, x)`` [nJy]: adjacent-band
    colours and their noise covariance (:func:`aperture_photometry`, :func:`colour_errors`)."""
    c, cov = colour_errors(*aperture_photometry(images, crop))
    return {"colours": c, "noise": cov}


def _redshift_basis(z: np.ndarray | None, n: int) -> np.ndarray:
    if z is None:
        return np.ones((n, 1))
    t = np.asarray(z, dtype=np.float64) - Z_PIVOT
    return np.column_stack([np.ones_like(t), t, t * t])


def _deconvolved(c: np.ndarray, noise: np.ndarray, basis: np.ndarray) -> dict[str, Any]:
    """Mean coefficients and intrinsic covariance of colours ``c`` with per-stamp ``noise``
    covariances: a one-Gaussian extreme deconvolution (Bovy et al. 2011) whose mean is ``basis @ coef``."""
    coef = np.linalg.lstsq(basis, c, rcond=None)[0]
    weight = 1.0 / (1.0 + np.trace(noise, axis1=1, axis2=2))
    cov = np.atleast_2d(np.cov((c - basis @ coef).T, aweights=weight))
    for _ in range(XD_ITERATIONS):
        mean = basis @ coef
        gain = np.einsum("ij,njk->nik", cov, np.linalg.inv(cov[None] + noise))
        expected = mean + np.einsum("nij,nj->ni", gain, c - mean)
        coef = np.linalg.lstsq(basis, expected, rcond=None)[0]
        r = expected - basis @ coef
        cov = (r.T @ r + np.sum(cov[None] - gain @ cov[None], axis=0)) / len(c)
    return {"coef": coef.tolist(), "cov": cov.tolist(), "scale": 1.0}


def _chi(values: dict[str, np.ndarray], fit: dict[str, Any], z: np.ndarray | None) -> np.ndarray:
    c = values["colours"]
    d = c - _redshift_basis(z, len(c)) @ np.asarray(fit["coef"])
    total = np.asarray(fit["cov"])[None] + values["noise"]
    return np.sqrt(np.maximum(np.einsum("ni,ni->n", d, np.linalg.solve(total, d[..., None])[..., 0]), 0.0))


def _colour_space(values: dict[str, np.ndarray], redshift: np.ndarray) -> dict[str, Any]:
    space = {}
    for key, z in (("with_redshift", redshift), ("without_redshift", None)):
        fit = _deconvolved(values["colours"], values["noise"], _redshift_basis(z, len(values["colours"])))
        fit["scale"] = _scale(_chi(values, fit, z))
        space[key] = fit
    return space


def _colour_distance(values: dict[str, np.ndarray], space: dict[str, Any], redshift: np.ndarray | None) -> np.ndarray:
    z = np.full(len(values["colours"]), np.nan) if redshift is None else np.asarray(redshift, dtype=np.float64)
    known = np.isfinite(z)
    out = np.empty(len(z))
    for key, rows, zz in (("with_redshift", known, z[known]), ("without_redshift", ~known, None)):
        if rows.any():
            sub = {k: v[rows] for k, v in values.items()}
            out[rows] = _chi(sub, space[key], zz) / space[key]["scale"]
    return out


def _scale(distances: np.ndarray) -> float:
    """The :data:`SPACE_SCALE_PERCENTILE` of in-domain distances; :data:`MIN_SCALE` when they are all
    ~0 (a network whose features are constant: no spread to scale by)."""
    return max(float(np.percentile(distances, SPACE_SCALE_PERCENTILE)), MIN_SCALE)


def _space(reference: np.ndarray) -> dict[str, Any]:
    x = np.asarray(reference, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov += np.eye(len(cov)) * RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12)
    space = {"mean": mean.tolist(), "precision": np.linalg.inv(cov).tolist(), "scale": 1.0}
    space["scale"] = _scale(_distance(x, space))
    return space


def _distance(x: np.ndarray, space: dict[str, Any], redshift: np.ndarray | None = None) -> np.ndarray:
    d = np.asarray(x, dtype=np.float64) - np.asarray(space["mean"])
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(space["precision"]), d), 0.0)) \
        / space["scale"]


#: distance per space name: ``(values, space statistics, redshift or None) -> distance / scale``
_DISTANCES = {"features": _distance, "colours": _distance, "colour_likelihood": _colour_distance}


def _combined(spaces: dict[str, dict[str, Any]], values: dict[str, Any], redshift: np.ndarray | None) -> np.ndarray:
    return np.max([_DISTANCES[name](values[name], space, redshift) for name, space in spaces.items()], axis=0)


def _fitted_space(name: str, values: Any, redshift: np.ndarray) -> dict[str, Any] | None:
    if name == "colour_likelihood":
        return _colour_space(values, redshift) if values["colours"].shape[1] > 0 else None
    return _space(values) if values.shape[1] > 0 else None


def fit_ood(reference: dict[str, Any], calibration: dict[str, Any], reference_redshift: np.ndarray,
            calibration_redshift: np.ndarray, flag_share: float = FLAG_SHARE,
            layer: str | None = None) -> dict[str, Any]:
    """Statistics of the OOD score, for a bundle's metadata.

    Parameters
    ----------
    reference : per space (``features``: last-hidden-layer activations ``(n, units)``;
        ``colour_likelihood``: :func:`colour_values`), in-domain stamps not trained on
        (the validation galaxies) that fix each space's distribution.
    calibration : the same for other in-domain stamps (the calibration galaxies); the
        threshold flags ``flag_share`` of them, scored with their redshifts.
    reference_redshift, calibration_redshift : the stamps' redshifts.
    layer : the feature layer's name (recorded).
    """
    spaces = {}
    for name, values in reference.items():
        space = _fitted_space(name, values, np.asarray(reference_redshift, dtype=np.float64))
        if space is not None:
            spaces[name] = space
    threshold = max(float(np.quantile(_combined(spaces, calibration, calibration_redshift), 1.0 - flag_share)),
                    MIN_SCALE)
    n_ref = len(reference["features"]) if "features" in reference else len(reference_redshift)
    return {"kind": KIND, "spaces": spaces, "threshold": threshold, "flag_share": flag_share,
            "layer": layer, "n_reference": n_ref, "n_calibration": len(calibration_redshift)}


def photometric_values(images: np.ndarray, crop: int, stats: dict[str, Any]) -> dict[str, Any]:
    """What the photometric spaces of ``stats`` need of images ``(n, band, y, x)`` [nJy] (NaN pixels 0)."""
    spaces = stats["spaces"]
    out: dict[str, Any] = {}
    if "colours" in spaces:
        out["colours"] = colours(images, crop)
    if "colour_likelihood" in spaces:
        out["colour_likelihood"] = colour_values(images, crop)
    return out


def ood_scores(values: dict[str, Any], stats: dict[str, Any], redshift: np.ndarray | None = None) -> np.ndarray:
    """Score per stamp in units of the bundle's threshold: above 1 is out of distribution.

    ``values`` holds each space of ``stats["spaces"]`` (see :func:`fit_ood`, :func:`photometric_values`);
    ``redshift`` per stamp (NaN where unknown: the colour space's redshift-free fit)."""
    return _combined(stats["spaces"], values, redshift) / stats["threshold"]

"""Out-of-distribution scores: how unlike a network's training set a stamp is, in the network's own
learned features and in colour space.

Two Mahalanobis distances are measured for each stamp: in the activations of the network's last
hidden layer (what the network "sees"; Lee et al. 2018 use the same distance on penultimate
features) and in the aperture colours of its bands (what a line, a dust law or an SED the
simulator never made changes first). Each is divided by its 99th percentile over in-domain
reference stamps; the score is the larger of the two, divided by the threshold that flags
``flag_share`` (3%) of the held-out calibration galaxies' stamps. A score above 1 is flagged
``out_of_distribution``: such a source is unlike what the network was trained on, and its
percentiles are not calibrated for it.

The statistics live in the bundle's metadata (``ood``, ``kind: features+colours``); bundles made
before them carry the flux-only statistics of :func:`surveydust.preprocess.feature_stats`, scored by
:func:`surveydust.preprocess.ood_score` in sigma.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from surveydust.preprocess import NORM_APERTURE_PIX, colour_features

KIND = "features+colours"
#: share of in-domain (calibration-galaxy) stamps flagged by construction
FLAG_SHARE = 0.03
#: percentile of the reference distances that scales each space's distance to ~1
SPACE_SCALE_PERCENTILE = 99.0
#: ridge added to each covariance, relative to its mean variance (ReLU features are often constant)
RIDGE = 1e-3


def feature_layer(model: Any) -> str | None:
    """Name of the network's last hidden (dense) layer, or None when it has none (an ensemble)."""
    names = [layer.name for layer in model.layers if layer.name.startswith("dense")]
    return sorted(names, key=lambda n: int(n.removeprefix("dense") or 0))[-1] if names else None


def colours(images: np.ndarray, crop: int) -> np.ndarray:
    """Aperture colours [mag] of every band pair of images ``(n, band, y, x)`` [nJy] (no
    brightness: a fainter copy of a training galaxy is not out of distribution); ``(n, 0)`` for one band."""
    return colour_features(images, crop, NORM_APERTURE_PIX)[:, images.shape[1]:]


def _space(reference: np.ndarray) -> dict[str, Any]:
    x = np.asarray(reference, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov += np.eye(len(cov)) * RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12)
    space = {"mean": mean.tolist(), "precision": np.linalg.inv(cov).tolist(), "scale": 1.0}
    space["scale"] = float(np.percentile(_distance(x, space), SPACE_SCALE_PERCENTILE))
    return space


def _distance(x: np.ndarray, space: dict[str, Any]) -> np.ndarray:
    d = np.asarray(x, dtype=np.float64) - np.asarray(space["mean"])
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(space["precision"]), d), 0.0)) \
        / space["scale"]


def _combined(spaces: dict[str, dict[str, Any]], values: dict[str, np.ndarray]) -> np.ndarray:
    return np.max([_distance(values[name], space) for name, space in spaces.items()], axis=0)


def fit_ood(reference: dict[str, np.ndarray], calibration: dict[str, np.ndarray],
            flag_share: float = FLAG_SHARE, layer: str | None = None) -> dict[str, Any]:
    """Statistics of the OOD score, for a bundle's metadata.

    Parameters
    ----------
    reference : per space (``features``: last-hidden-layer activations ``(n, units)``;
        ``colours``: :func:`colours` ``(n, n_pairs)``), in-domain stamps not trained on
        (the validation galaxies) that fix each space's mean and covariance.
    calibration : the same for other in-domain stamps (the calibration galaxies); the
        threshold flags ``flag_share`` of them.
    layer : the feature layer's name (recorded).
    """
    spaces = {name: _space(x) for name, x in reference.items() if x.shape[1] > 0}
    threshold = float(np.quantile(_combined(spaces, calibration), 1.0 - flag_share))
    return {"kind": KIND, "spaces": spaces, "threshold": threshold, "flag_share": flag_share,
            "layer": layer, "n_reference": int(len(next(iter(reference.values())))),
            "n_calibration": int(len(next(iter(calibration.values()))))}


def ood_scores(values: dict[str, np.ndarray], stats: dict[str, Any]) -> np.ndarray:
    """Score per stamp in units of the bundle's threshold: above 1 is out of distribution.

    ``values`` holds each space of ``stats["spaces"]`` (see :func:`fit_ood`)."""
    return _combined(stats["spaces"], values) / stats["threshold"]

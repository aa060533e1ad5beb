"""Prepare samples for a network the same way in training and inference.

Selection, galaxy-level splits and the per-image normalisation, in one
implementation, so a bundle sees at inference exactly what it saw in training.

Normalisation: every sample is divided by one number, the flux [nJy] summed
over all its bands inside a central 0.24" (8 pixel) radius aperture (floored
at 1 nJy), times the aperture's pixel count, so that pixels are of order 1 and
colours between bands are kept, then through ``arcsinh``. ``log10`` of that
flux goes to the network as an extra input (brightness carries mass, hence sSFR,
information), with the redshift when it is known and, with ``model.colour_inputs``,
each band's share of the aperture flux (the integrated colours).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import xarray as xr

from surveydust.config import TrainingConfig
from surveydust.errors import InputError
from surveydust.instrument import circular_aperture

logger = logging.getLogger(__name__)

NORM_APERTURE_PIX = 8.0
NORM_FLOOR_NJY = 1.0
MIN_GALAXIES_PER_SPLIT = 2
REDSHIFT_CENTRE = 7.0
#: columns of the network's ``aux`` input
AUX_FEATURES = ("log10_flux_nJy", "z_minus_7", "z_known")


def crop_centre(images: np.ndarray, crop: int) -> np.ndarray:
    """Centred ``crop`` x ``crop`` cut of ``(..., y, x)`` images."""
    ny, nx = images.shape[-2:]
    if crop > min(ny, nx):
        raise InputError(f"crop {crop} is larger than the {ny}x{nx} images")
    y0, x0 = (ny - crop) // 2, (nx - crop) // 2
    return images[..., y0:y0 + crop, x0:x0 + crop]


def network_inputs(images: np.ndarray, crop: int, redshift: np.ndarray | None = None,
                   colours: bool = False) -> dict[str, np.ndarray]:
    """Network inputs from images ``(n, band, y, x)`` in nJy (bands in the model's order).

    Returns ``{"image": (n, crop, crop, band), "aux": (n, 3 [+ band])}``
    float32: the normalised stamp through ``arcsinh`` (linear in the faint
    outskirts, logarithmic in bright cores), and :data:`AUX_FEATURES`.
    ``redshift`` (NaN where unknown; None: unknown for all) enters as ``z -
    7`` with a flag saying it is known (0 and 0 where it is not). With
    ``colours`` each band's share of the aperture flux follows
    (:func:`band_shares`): the integrated colours a photometric method uses,
    given to the dense layers directly.
    """
    cut = crop_centre(np.asarray(images, dtype=np.float32), crop)
    aperture = circular_aperture(crop, NORM_APERTURE_PIX)
    per_band = cut[:, :, aperture].sum(axis=2)
    scale = np.maximum(per_band.sum(axis=1), NORM_FLOOR_NJY)
    normed = np.arcsinh(cut * (np.float32(aperture.sum()) / scale[:, None, None, None]))
    aux = aux_features(np.log10(scale), redshift)
    if colours:
        aux = np.column_stack([aux, band_shares(per_band, scale)]).astype(np.float32)
    return {"image": np.ascontiguousarray(normed.transpose(0, 2, 3, 1)), "aux": aux}


def band_shares(per_band: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``arcsinh(n_band * f_b / scale)`` of aperture fluxes ``f_b`` ``(n, band)`` [nJy] and their
    floored sum ``scale``: about 1 for a flat spectrum, logarithmic for bright bands, linear
    (and negative with noise) for faint ones such as bands below the Lyman break."""
    n_band = per_band.shape[1]
    return np.arcsinh(n_band * per_band / scale[:, None]).astype(np.float32)


def aux_width(n_bands: int, colours: bool) -> int:
    """Columns of the ``aux`` input: :data:`AUX_FEATURES`, plus one per band with ``colours``."""
    return len(AUX_FEATURES) + (n_bands if colours else 0)


def aux_features(log_flux: np.ndarray, redshift: np.ndarray | None = None) -> np.ndarray:
    """The ``aux`` input ``(n, 3)`` float32 (:data:`AUX_FEATURES`): log10 flux [nJy], ``z - 7``
    and a flag saying z is known (0 and 0 where ``redshift`` is NaN or None)."""
    log_flux = np.asarray(log_flux, dtype=np.float64).reshape(-1)
    n = log_flux.size
    z = np.full(n, np.nan) if redshift is None else np.asarray(redshift, dtype=np.float64).reshape(-1)
    if z.size != n:
        raise InputError(f"got {z.size} redshifts for {n} images")
    known = np.isfinite(z)
    return np.column_stack([log_flux, np.where(known, z - REDSHIFT_CENTRE, 0.0), known]).astype(np.float32)


@dataclass(frozen=True)
class Split:
    """Sample indices (into the store) and galaxy ids of each part of a split."""

    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    test_galaxies: np.ndarray
    validation_galaxies: np.ndarray
    calibration_galaxies: np.ndarray


def select_samples(ds: xr.Dataset, cfg: TrainingConfig) -> np.ndarray:
    """Indices of samples that pass the SNR cut and hold no NaN pixel in the bands."""
    missing = [b for b in (*cfg.bands, cfg.snr_band) if b not in ds["band"].values]
    if missing:
        raise InputError(f"store has no band(s) {missing}; it has {[str(b) for b in ds['band'].values]}")
    lacking = [t for t in cfg.targets if t not in ds]
    if lacking:
        raise InputError(f"store has no label(s) {lacking}")
    snr = ds["snr"].sel(band=cfg.snr_band).values
    labels_ok = np.all([np.isfinite(ds[t].values) for t in cfg.targets], axis=0)
    finite = np.isfinite(ds["image"].sel(band=list(cfg.bands))).all(("band", "y", "x")).values
    if (~finite).any():
        logger.warning("dropped %d of %d samples with NaN pixels", int((~finite).sum()), finite.size)
    if np.isnan(snr).all():
        logger.warning("the store has no SNR values (noiseless mocks?): no SNR cut applied")
        passed = np.ones_like(finite)
    else:
        passed = snr >= cfg.snr_min
    keep = np.flatnonzero(passed & finite & labels_ok)
    logger.info("selected %d of %d samples (SNR(%s) >= %g)", keep.size, snr.size, cfg.snr_band, cfg.snr_min)
    return keep


def split_by_galaxy(galaxy_id: np.ndarray, selected: np.ndarray, cfg: TrainingConfig) -> Split:
    """Split ``selected`` sample indices by galaxy: test, then validation and
    calibration from the rest.

    Every view and DTM copy of a galaxy lands on one side; deterministic from
    ``cfg.seed``. Validation galaxies stop training early; calibration galaxies
    are seen only after training, to calibrate the predicted percentiles.
    """
    gids = np.unique(galaxy_id[selected])
    rng = np.random.default_rng([cfg.seed, 1])
    order = rng.permutation(gids)
    n_test = round(cfg.test_fraction * gids.size)
    n_val = round(cfg.validation_fraction * (gids.size - n_test))
    n_cal = round(cfg.calibration_fraction * (gids.size - n_test))
    if min(n_test, n_val, n_cal, gids.size - n_test - n_val - n_cal) < MIN_GALAXIES_PER_SPLIT:
        raise InputError(f"only {gids.size} galaxies pass the selection: too few for a "
                         f"{cfg.test_fraction:.0%} test / {cfg.validation_fraction:.0%} validation / "
                         f"{cfg.calibration_fraction:.0%} calibration split "
                         f"(need >= {MIN_GALAXIES_PER_SPLIT} galaxies in each part); simulate more galaxies")
    parts = np.split(order, np.cumsum([n_test, n_val, n_cal]))
    test_g, val_g, cal_g = (np.sort(p) for p in parts[:3])
    of = galaxy_id[selected]
    return Split(
        train=selected[np.isin(of, parts[3])],
        validation=selected[np.isin(of, val_g)],
        calibration=selected[np.isin(of, cal_g)],
        test=selected[np.isin(of, test_g)],
        test_galaxies=test_g,
        validation_galaxies=val_g,
        calibration_galaxies=cal_g,
    )


def colour_features(images: np.ndarray, crop: int, radius_pix: float) -> np.ndarray:
    """Integrated photometry of images ``(n, band, y, x)`` [nJy].

    Columns: log10 of the flux [nJy] inside a central ``radius_pix`` aperture
    of the ``crop`` x ``crop`` centre, per band (floored at 1 nJy), then the
    colours [mag] ``-2.5 log10(f_i / f_j)`` of every band pair ``i < j``.
    """
    cut = crop_centre(np.asarray(images, dtype=np.float64), crop)
    mask = circular_aperture(crop, radius_pix)
    log_flux = np.log10(np.maximum(cut[:, :, mask].sum(axis=-1), NORM_FLOOR_NJY))
    colours = [-2.5 * (log_flux[:, i] - log_flux[:, j]) for i, j in combinations(range(log_flux.shape[1]), 2)]
    return np.column_stack([log_flux, *colours])


def feature_stats(images: np.ndarray, crop: int) -> dict[str, list]:
    """Mean and covariance of the log10 aperture fluxes of training images ``(n, band, y, x)``.

    Stored in model bundles (``ood``) to score how far a new stamp is from
    the training set (:func:`ood_score`).
    """
    logf = colour_features(images, crop, NORM_APERTURE_PIX)[:, : images.shape[1]]
    cov = np.atleast_2d(np.cov(logf, rowvar=False))
    return {"mean": logf.mean(axis=0).tolist(), "cov": cov.tolist(), "aperture_pix": NORM_APERTURE_PIX}


def ood_score(images: np.ndarray, crop: int, stats: dict[str, list]) -> np.ndarray:
    """Mahalanobis distance of images' log10 aperture fluxes from the training set's (``stats``).

    About 1-3 for stamps like the training set; large for ones unlike any of
    it (much brighter or fainter, or with colours it never had).
    """
    logf = colour_features(images, crop, float(stats["aperture_pix"]))[:, : images.shape[1]]
    d = logf - np.asarray(stats["mean"])
    inv = np.linalg.pinv(np.atleast_2d(np.asarray(stats["cov"])))
    return np.sqrt(np.einsum("ni,ij,nj->n", d, inv, d))

"""Tiles, detection, stamps and photometry on small synthetic images (real SEP detection)."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.config import load_catalogue_config
from surveydust.detect import (
    aperture_photometry,
    cut_stamps,
    detect,
    detection_image,
    make_tiles,
    stamp_origins,
)


def _gaussians(shape, positions, sigma=2.0, amp=50.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for x, y in positions:
        img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img


def test_every_pixel_belongs_to_exactly_one_tile_core() -> None:
    tiles = make_tiles((300, 520), 128)
    assert len(tiles) == 3 * 5
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.49, 519.49, 5000), rng.uniform(-0.49, 299.49, 5000)
    owners = np.sum([t.owns(x, y) for t in tiles], axis=0)
    assert (owners == 1).all()
    # a position exactly on a boundary goes to one side only
    assert sum(bool(t.owns(np.array([127.5]), np.array([10.0]))[0]) for t in tiles) == 1
    assert tiles[-1].with_halo(32, (300, 520)) == (256 - 32, 300, 512 - 32, 520)


def test_stamps_are_centred_like_the_training_stores() -> None:
    image = np.arange(2 * 50 * 60, dtype=np.float32).reshape(2, 50, 60)
    stamps = cut_stamps(image, np.array([30.0, 0.0]), np.array([20.0, 49.0]), 8)
    x0, y0 = stamp_origins(np.array([30.0]), np.array([20.0]), 8)
    assert stamps.shape == (2, 2, 8, 8)
    np.testing.assert_array_equal(stamps[0], image[:, y0[0]:y0[0] + 8, x0[0]:x0[0] + 8])
    assert x0[0] + 3.5 == pytest.approx(30.0, abs=0.5)
    assert np.isnan(stamps[1]).any() and np.isfinite(stamps[1]).any()  # off the image: NaN


def test_detection_finds_sources_not_masked_pixels_and_flags_blends() -> None:
    cfg = load_catalogue_config()
    rng = np.random.default_rng(1)
    shape = (120, 160)
    truth = [(30.3, 40.7), (100.0, 80.2), (140.5, 20.0)]
    pair = [(60.0, 100.0), (67.0, 100.0)]  # two touching sources
    sci = _gaussians(shape, truth + pair)[None].repeat(3, axis=0) + rng.normal(0, 1.0, (3, *shape))
    err = np.ones_like(sci)
    sci[:, :, :10] = np.nan  # a masked strip with a bright "source" under the mask
    err[:, 50:60, 140:150] = 0.0
    sci[:, 50:60, 140:150] = 1000.0
    x, y, blended = detect(sci, err, cfg)
    found = [np.hypot(x - tx, y - ty).min() for tx, ty in truth + pair]
    assert max(found) < 0.5, found
    assert not ((x > 138) & (x < 152) & (y > 48) & (y < 62)).any()  # nothing in the zero-weight box
    near_pair = np.hypot(x - 63.5, y - 100.0) < 6
    assert blended[near_pair].all() and not blended[~near_pair].any()
    assert len(x) == 5


def test_detection_image_is_snr_and_masks_missing_data() -> None:
    sci = np.full((2, 4, 4), 3.0)
    err = np.full((2, 4, 4), 1.0)
    err[1, 0, 0] = np.nan
    snr, valid = detection_image(sci, err)
    assert snr[1, 1] == pytest.approx(6.0 / np.sqrt(2.0))
    assert not valid[0, 0] and snr[0, 0] == 0.0


def test_aperture_photometry_sums_flux_and_errors_in_quadrature() -> None:
    stamps = np.ones((1, 1, 32, 32))
    flux, err = aperture_photometry(stamps, 2.0 * stamps, 3.0)
    n = ((np.arange(32) - 15.5)[:, None] ** 2 + (np.arange(32) - 15.5)[None, :] ** 2 <= 9).sum()
    assert flux[0, 0] == n and err[0, 0] == pytest.approx(2.0 * np.sqrt(n))


def test_a_tile_without_data_has_no_sources() -> None:
    """An all-NaN tile (the border of a rotated mosaic) or one with no valid error gives an
    empty detection, not an error."""
    cfg = load_catalogue_config()
    sci = np.full((3, 64, 64), np.nan)
    err = np.ones_like(sci)
    x, y, blended = detect(sci, err, cfg)
    assert x.size == y.size == blended.size == 0
    x, y, _ = detect(np.ones((3, 64, 64)), np.zeros((3, 64, 64)), cfg)  # zero weight everywhere
    assert x.size == 0


def test_detection_on_a_simulated_field_is_as_complete_as_the_photutils_pipeline(tmp_path, client) -> None:
    """A 1536 x 1536 px three-band field of 150 simulated galaxies (FITS, ingested), detected
    whole. The photutils pipeline SEP replaced (astropy convolution, detect_sources,
    deblend_sources, SourceCatalog centroids) found 84 sources on this field: 79 of the 150
    injected galaxies within 0.1", 5 spurious, median offset 10.0 mas."""
    from astropy.table import Table

    from surveydust.compare import nearest
    from surveydust.demo import TRUTH_MATCH_ARCSEC
    from surveydust.simulate import simulate_field
    from surveydust.simulate.priors import FIXED_PRIORS
    from surveydust.stores.mosaic import ingest_mosaic, mosaic_reader

    files = simulate_field(tmp_path / "fits", n_galaxies=150, shape=(1536, 1536), bands=["F277W", "F356W", "F444W"],
                           seed=11, priors=FIXED_PRIORS)  # the galaxies the photutils count was made on
    mosaic = mosaic_reader(ingest_mosaic(tmp_path / "m.zarr", {b: str(p) for b, p in files.bands.items()},
                                         client=client, progress=False))
    sci, err = mosaic.read(0, 1536, 0, 1536)
    x, y, blended = detect(sci, err, load_catalogue_config())
    ra, dec = mosaic.wcs.all_pix2world(x, y, 0)
    truth = Table.read(files.truth)
    idx, sep, ok = nearest(np.asarray(truth["ra_centroid"]), np.asarray(truth["dec_centroid"]), ra, dec,
                           TRUTH_MATCH_ARCSEC)
    spurious = x.size - np.unique(idx[ok]).size
    assert ok.sum() >= 79 and spurious <= 5, (ok.sum(), spurious)
    assert np.median(sep[ok]) < 0.011  # arcsec
    assert blended.dtype == bool and blended.size == x.size

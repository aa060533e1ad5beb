"""Selection, galaxy-level splits and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from surveydust.config import load_training_config
from surveydust.preprocess import AUX_FEATURES, aux_width, crop_centre, network_inputs, select_samples, split_by_galaxy

BANDS = ["F277W", "F356W", "F444W"]  # the fake store's (the config's default is the six wide bands)


def fake_store(n_gal: int = 40, per_gal: int = 8, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    n = n_gal * per_gal
    ds = xr.Dataset(
        {"image": (("sample", "band", "y", "x"), rng.normal(size=(n, 3, 40, 40)).astype(np.float32)),
         "snr": (("sample", "band"), rng.uniform(0, 20, size=(n, 3))),
         **{t: ("sample", rng.normal(size=n)) for t in ("A_V", "EBV", "log_ssfr")}},
        coords={"band": ["F277W", "F356W", "F444W"], "galaxy_id": ("sample", np.repeat(np.arange(n_gal), per_gal))},
    )
    return ds


def test_split_never_shares_a_galaxy() -> None:
    ds = fake_store()
    cfg = load_training_config(bands=BANDS)
    selected = select_samples(ds, cfg)
    split = split_by_galaxy(ds["galaxy_id"].values, selected, cfg)
    gid = ds["galaxy_id"].values
    samples = (split.train, split.validation, split.calibration, split.test)
    parts = [set(gid[s]) for s in samples]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not parts[i] & parts[j], (i, j)
    assert parts[3] == set(split.test_galaxies.tolist()) and parts[1] == set(split.validation_galaxies.tolist())
    assert parts[2] == set(split.calibration_galaxies.tolist())
    # every selected sample is in exactly one part
    np.testing.assert_array_equal(np.sort(np.concatenate(samples)), np.sort(selected))
    n_gal = len(set().union(*parts))
    assert len(parts[3]) == round(0.15 * n_gal)
    rest = n_gal - len(parts[3])
    assert len(parts[1]) == round(0.15 * rest) and len(parts[2]) == round(0.15 * rest)
    again = split_by_galaxy(gid, select_samples(ds, cfg), cfg)
    np.testing.assert_array_equal(again.test, split.test)  # deterministic from the seed
    np.testing.assert_array_equal(again.calibration, split.calibration)
    other = split_by_galaxy(gid, select_samples(ds, cfg), load_training_config(bands=BANDS, seed=5))
    assert set(other.test_galaxies.tolist()) != set(split.test_galaxies.tolist())


def test_calibration_fraction_sets_the_calibration_galaxies() -> None:
    ds = fake_store(n_gal=60)
    gid = ds["galaxy_id"].values
    cfg = load_training_config(bands=BANDS, snr_min=0.0, calibration_fraction=0.3)
    split = split_by_galaxy(gid, select_samples(ds, cfg), cfg)
    rest = 60 - round(0.15 * 60)
    assert split.calibration_galaxies.size == round(0.3 * rest)
    assert split.validation_galaxies.size == round(0.15 * rest)
    assert set(gid[split.calibration]) == set(split.calibration_galaxies.tolist())
    with pytest.raises(ValueError, match="validation_fraction \\+ calibration_fraction"):
        load_training_config(bands=BANDS, validation_fraction=0.5, calibration_fraction=0.5)


def test_selection_snr_nan_and_labels() -> None:
    ds = fake_store()
    ds["image"][0, 1, 5, 5] = np.nan
    ds["A_V"][1] = np.nan
    cfg = load_training_config(bands=BANDS, snr_min=10.0)
    keep = select_samples(ds, cfg)
    assert 0 not in keep and 1 not in keep
    assert (ds["snr"].sel(band="F277W").values[keep] >= 10).all()
    with pytest.raises(ValueError, match=r"no band\(s\) \['F444W'\]"):
        select_samples(ds.sel(band=["F277W", "F356W"]), cfg)
    with pytest.raises(ValueError, match="no label"):
        select_samples(ds.drop_vars("EBV"), cfg)


def test_too_few_galaxies() -> None:
    ds = fake_store(n_gal=5)
    cfg = load_training_config(bands=BANDS, snr_min=0.0)
    with pytest.raises(ValueError, match="only 5 galaxies pass the selection"):
        split_by_galaxy(ds["galaxy_id"].values, select_samples(ds, cfg), cfg)


def test_normalisation_keeps_colours() -> None:
    images = np.zeros((2, 3, 40, 40), np.float32)
    images[:, :, 20, 20] = [[10.0, 20.0, 30.0], [100.0, 200.0, 300.0]]
    out = network_inputs(images, 32)
    assert set(out) == {"image", "aux"}
    assert out["image"].shape == (2, 32, 32, 3)
    assert out["aux"].shape == (2, len(AUX_FEATURES)) == (2, 3) and out["aux"].dtype == np.float32
    np.testing.assert_allclose(out["aux"][:, 0], [np.log10(60), np.log10(600)], rtol=1e-6)
    n_ap = 208  # pixels within 8 px of the centre of a 32 x 32 crop
    # pixels are arcsinh of the flux-normalised stamp: sinh undoes it, and each band keeps its
    # share of the flux (the colours), whatever the brightness
    for i, frac in enumerate((1 / 6, 2 / 6, 3 / 6)):
        np.testing.assert_allclose(np.sinh(out["image"][..., i]).sum(axis=(1, 2)), frac * n_ap, rtol=1e-5)
    np.testing.assert_allclose(out["image"][0], out["image"][1], rtol=1e-6)
    np.testing.assert_allclose(out["image"][0, 16, 16], np.arcsinh(np.array([1, 2, 3]) / 6 * n_ap), rtol=1e-6)
    with pytest.raises(ValueError, match="larger than"):
        crop_centre(images, 64)


def test_network_inputs_are_float32() -> None:
    out = network_inputs(np.ones((2, 3, 40, 40), np.float32), 32)
    assert out["image"].dtype == np.float32 and out["aux"].dtype == np.float32


def test_redshift_enters_aux_with_a_known_flag() -> None:
    images = np.ones((3, 2, 32, 32), np.float32)
    for z in (None, np.full(3, np.nan)):
        aux = network_inputs(images, 32, z)["aux"]
        np.testing.assert_array_equal(aux[:, 1:], 0.0)  # unknown: 0 and flag 0
    aux = network_inputs(images, 32, np.array([7.5, np.nan, 6.0]))["aux"]
    np.testing.assert_allclose(aux[:, 1], [0.5, 0.0, -1.0])
    np.testing.assert_array_equal(aux[:, 2], [1.0, 0.0, 1.0])
    # the image part does not depend on the redshift
    np.testing.assert_array_equal(network_inputs(images, 32, np.array([7.5, np.nan, 6.0]))["image"],
                                  network_inputs(images, 32)["image"])
    with pytest.raises(ValueError, match="got 2 redshifts for 3 images"):
        network_inputs(images, 32, np.array([7.0, 8.0]))


def test_faint_stamps_are_floored_not_blown_up() -> None:
    images = np.zeros((1, 1, 32, 32), np.float32)
    images[0, 0, 16, 16] = -5.0  # negative total flux (noise): the 1 nJy floor divides
    out = network_inputs(images, 32)
    assert out["aux"][0, 0] == 0.0 and np.isfinite(out["image"]).all()
    np.testing.assert_allclose(out["image"][0, 16, 16, 0], np.arcsinh(-5.0 * 208), rtol=1e-6)


def test_ood_score_is_small_for_training_like_stamps_and_large_for_others() -> None:
    from surveydust.preprocess import feature_stats, ood_score

    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.5, size=(400, 3, 1, 1)) * np.ones((1, 1, 32, 32))
    images = base * (1.0 + 0.1 * rng.normal(size=(400, 3, 1, 1)))
    stats = feature_stats(images, 32)
    typical = ood_score(images[:100], 32, stats)
    assert np.median(typical) < 2.5
    odd = images[:5].copy()
    odd[:, 0] *= 1000.0  # one band far brighter than anything seen: a colour never trained on
    assert (ood_score(odd, 32, stats) > 10).all()


def test_colour_inputs_give_each_bands_share_of_the_aperture_flux() -> None:
    images = np.zeros((2, 3, 40, 40), np.float32)
    images[:, :, 20, 20] = [[10.0, 20.0, 30.0], [100.0, 200.0, 300.0]]
    images[:, :, 0, 0] = 1e4  # outside the crop and the aperture: no effect
    plain, coloured = network_inputs(images, 32), network_inputs(images, 32, colours=True)
    assert coloured["aux"].shape == (2, aux_width(3, True)) == (2, 6) and coloured["aux"].dtype == np.float32
    np.testing.assert_array_equal(coloured["aux"][:, :3], plain["aux"])
    np.testing.assert_array_equal(coloured["image"], plain["image"])
    # arcsinh(n_band x share): 3 x (1/6, 2/6, 3/6), the same at any brightness
    np.testing.assert_allclose(coloured["aux"][:, 3:], np.arcsinh([[0.5, 1.0, 1.5]] * 2), rtol=1e-6)
    # a faint band below the Lyman break: its share goes negative with noise, smoothly
    images[1, 0, 20, 20] = -50.0
    assert network_inputs(images, 32, colours=True)["aux"][1, 3] < 0

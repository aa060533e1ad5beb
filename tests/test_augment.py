"""Augmentation of a training store: copies and their transforms, carried labels,
balancing, noise level, HOG channel, determinism and refused inputs (the pure
transforms themselves: tests/test_transforms.py). Stores are
real Zarr, written through the session's real Dask LocalCluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from surveydust.augment import augment_store, balance_copies, plan_augmentation
from surveydust.config import AugmentConfig, load_training_config
from surveydust.simulate import simulate
from surveydust.simulate.priors import FIXED_PRIORS
from surveydust.stores.training import LABELS, open_training_store, write_training_store
from surveydust.transforms import TRANSFORMS, allowed_transforms, apply_transform, hog_image

BANDS = ["F277W", "F356W", "F444W"]
TARGETS = ["A_V", "EBV", "log_ssfr"]
N_IN = 33  # 3 galaxies x 1 view x 11 dust-to-metal ratios


def cfg(**kw) -> AugmentConfig:
    base = load_training_config().augment.model_dump()
    return AugmentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def store(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aug") / "s.zarr"
    return simulate(out, client=client, progress=False, n_galaxies=3, views_per_galaxy=1, priors=FIXED_PRIORS)


@pytest.fixture(scope="module")
def source(store: Path) -> xr.Dataset:
    return open_training_store(store).load()


def _augment(store, out, client, samples=None, **kw):
    samples = np.arange(N_IN) if samples is None else samples
    return augment_store(store, out, samples, config=cfg(**kw), bands=BANDS, targets=TARGETS,
                         seed=7, client=client, progress=False)


@pytest.fixture(scope="module")
def dihedral(store, client, tmp_path_factory) -> xr.Dataset:
    """All 8 transforms, no noise, no balancing, a few samples per task."""
    out = tmp_path_factory.mktemp("aug") / "d8.zarr"
    _augment(store, out, client, noise=0.0, balance=False, hog=True, samples_per_task=50, rotations=True, flips=True)
    return open_training_store(out).load()


def test_sizes_follow_the_documented_formula(dihedral, source) -> None:
    assert dihedral.sizes == {"sample": 8 * N_IN, "band": 3, "y": 32, "x": 32}
    assert [str(b) for b in dihedral["band"].values] == BANDS
    assert np.bincount(dihedral["transform"].values).tolist() == [N_IN] * 8
    assert np.bincount(dihedral["source_sample"].values).tolist() == [8] * N_IN
    assert np.all(np.diff(dihedral["source_sample"].values) >= 0)  # plan order, not shuffled
    labels = {t: source[t].values for t in TARGETS}
    for rot, flip, k in ((False, False, 1), (False, True, 2), (True, False, 4), (True, True, 8)):
        plan = plan_augmentation(np.arange(N_IN), labels, config=cfg(rotations=rot, flips=flip, balance=False),
                                 targets=TARGETS, seed=0)
        assert plan["source"].size == k * N_IN
        assert sorted(set(plan["transform"].tolist())) == allowed_transforms(rot, flip).tolist()
    assert len(TRANSFORMS) == 8


def test_transforms_are_the_dihedral_group(dihedral, source) -> None:
    src = source["image"].sel(band=BANDS).values
    img, tr, ss = dihedral["image"].values, dihedral["transform"].values, dihedral["source_sample"].values
    for i in range(img.shape[0]):
        want = src[ss[i]]
        if tr[i] == 0:
            assert np.array_equal(img[i], want)  # bit-identical original
        elif tr[i] <= 3:
            np.testing.assert_array_equal(img[i], np.rot90(want, tr[i], axes=(-2, -1)))
        else:
            np.testing.assert_array_equal(img[i], np.rot90(want[..., ::-1], tr[i] - 4, axes=(-2, -1)))
    # the 8 copies of an asymmetric image all differ
    first = img[ss == 0]
    assert len({a.tobytes() for a in first}) == 8


def test_labels_and_coords_carried_over(dihedral, source) -> None:
    ss = dihedral["source_sample"].values
    for name in (*LABELS, "galaxy_id", "view"):
        np.testing.assert_array_equal(dihedral[name].values, source[name].values[ss])
    np.testing.assert_array_equal(dihedral["snr"].values, source["snr"].sel(band=BANDS).values[ss])
    np.testing.assert_array_equal(dihedral["noise_sigma"].values, source["noise_sigma"].sel(band=BANDS).values)
    assert dihedral.attrs["pixel_scale_arcsec"] == source.attrs["pixel_scale_arcsec"]
    assert dihedral.attrs["source_store_id"] == source.attrs["store_id"] != dihedral.attrs["store_id"]
    assert dihedral["image"].attrs["units"] == "nJy"


def test_hog_channel(dihedral) -> None:
    hog = dihedral["hog"]
    assert hog.dims == ("sample", "band", "y", "x") and hog.dtype == np.float32
    assert np.all(np.isfinite(hog.values)) and np.all(hog.values >= 0)
    np.testing.assert_allclose(hog.values[:5], hog_image(dihedral["image"].values[:5]), rtol=1e-6)


def test_balancing_raises_rare_values(store, source, client, tmp_path) -> None:
    out = _augment(store, tmp_path / "bal.zarr", client, rotations=True, flips=False, noise=0.5,
                   balance=True, max_copies=6)
    ds = open_training_store(out)
    a_v_in, a_v_out = source["A_V"].values, ds["A_V"].values
    high = np.quantile(a_v_in, 0.8)
    assert (a_v_out > high).mean() > 1.3 * (a_v_in > high).mean()
    # bins of the input histogram become more even
    edges = np.histogram_bin_edges(a_v_in, bins=10)
    h_in, h_out = np.histogram(a_v_in, edges)[0], np.histogram(a_v_out, edges)[0]
    assert h_out.std() / h_out.mean() < h_in.std() / h_in.mean()
    extra = ds.sizes["sample"] - 4 * N_IN
    assert extra > 0
    assert set(np.unique(ds["transform"].values).tolist()) == {0, 1, 2, 3}
    per_source = np.bincount(ds["source_sample"].values, minlength=N_IN)
    assert per_source.min() == 4 and per_source[np.argmax(a_v_in)] > 4  # the dustiest is replicated
    assert per_source.sum() - 4 * N_IN == extra


def test_balance_copies_rules() -> None:
    rng = np.random.default_rng(0)
    flat = {"a": np.repeat(np.arange(5.0), 4)}
    assert balance_copies(flat, ["a"], 5, 4, rng).tolist() == [0] * 20
    skew = {"a": np.r_[np.zeros(20), 1.0, np.nan], "b": np.r_[np.zeros(20), 0.0, 0.0]}
    got = balance_copies(skew, ["a", "b"], 2, 3, np.random.default_rng(1))
    assert got.tolist() == [0] * 20 + [3, 0]  # weight 20 clipped to 3; NaN -> 0
    gauss = {"a": rng.normal(size=500)}
    a = balance_copies(gauss, ["a"], 10, 8, np.random.default_rng(5))
    b = balance_copies(gauss, ["a"], 10, 8, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.dtype.kind == "i" and a.min() == 0 and a.max() == 8
    tails = np.abs(gauss["a"]) > 2
    assert a[tails].mean() > a[~tails].mean()
    with pytest.raises(ValueError, match="no labels"):
        balance_copies(gauss, ["b"], 10, 8, rng)


def test_same_seed_same_store_whatever_the_tasks(store, client, tmp_path) -> None:
    picks = np.array([30, 2, 5, 6, 7, 11, 12, 20, 21, 29, 31, 32])
    kw = {"noise": 0.5, "balance": True, "hog": False}
    a = open_training_store(_augment(store, tmp_path / "a.zarr", client, picks, samples_per_task=7, **kw))
    b = open_training_store(_augment(store, tmp_path / "b.zarr", client, picks, samples_per_task=1000, **kw))
    assert a["image"].chunks[0][0] == 7 and b.sizes["sample"] == a.sizes["sample"]
    for name in ("image", "source_sample", "transform", "A_V", "snr", "galaxy_id"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert sorted(set(a["source_sample"].values.tolist())) == sorted(picks.tolist())


def test_noise_level(store, source, client, tmp_path) -> None:
    out = _augment(store, tmp_path / "noise.zarr", client, rotations=True, flips=False, noise=0.5,
                   balance=False)
    ds = open_training_store(out).load()
    src = source["image"].sel(band=BANDS).values
    tr, ss, img = ds["transform"].values, ds["source_sample"].values, ds["image"].values
    base = np.stack([apply_transform(src[s], t) for s, t in zip(ss, tr, strict=True)])
    diff = img - base
    assert np.array_equal(diff[tr == 0], np.zeros_like(diff[tr == 0]))  # originals untouched
    sigma = source["noise_sigma"].sel(band=BANDS).values
    std = diff[tr != 0].std(axis=(0, 2, 3))
    np.testing.assert_allclose(std, 0.5 * sigma, rtol=0.1)


def test_store_without_noise_sigma_warns(source, client, tmp_path) -> None:
    bare = write_training_store(source.drop_vars("noise_sigma"), tmp_path / "bare.zarr")
    with pytest.warns(UserWarning, match="noise_sigma"):
        out = _augment(bare, tmp_path / "o.zarr", client, rotations=False, flips=True, noise=1.0,
                       balance=False)
    ds = open_training_store(out)
    assert "noise_sigma" not in ds
    src = source["image"].sel(band=BANDS).values
    np.testing.assert_array_equal(ds["image"].values[1], src[0][..., ::-1])


@pytest.mark.parametrize(("samples", "kw", "match"), [
    (np.array([], dtype=int), {}, "empty"),
    (np.array([0, 33]), {}, "out of range"),
    (np.array([-1]), {}, "out of range"),
    (np.array([0.5]), {}, "integer"),
    (np.arange(3), {"bands": ["F277W", "F770W"]}, "F770W"),
    (np.arange(3), {"targets": ["A_V", "nope"]}, "nope"),
])
def test_bad_inputs(store, client, tmp_path, samples, kw, match) -> None:
    args = {"config": cfg(), "bands": BANDS, "targets": TARGETS, "seed": 0, "client": client, "progress": False}
    args.update(kw)
    with pytest.raises(ValueError, match=match) as info:
        augment_store(store, tmp_path / "x.zarr", samples, **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.zarr").exists()


def test_existing_output_refused_before_work(store, client, tmp_path) -> None:
    out = tmp_path / "exists.zarr"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        augment_store(store, out, np.array([], dtype=int), config=cfg(), bands=BANDS, targets=TARGETS,
                      seed=0, client=client)
    with pytest.raises(ValueError, match="input store"):
        augment_store(store, store, np.arange(3), config=cfg(), bands=BANDS, targets=TARGETS,
                      seed=0, client=client, overwrite=True)
    assert open_training_store(store).sizes["sample"] == N_IN

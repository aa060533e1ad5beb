"""Training: batches streamed from a Zarr store, and tiny real ``train`` runs (both split
protocols) on a small simulated store with a real LocalCluster and real Keras."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surveydust.config import load_training_config
from surveydust.preprocess import network_inputs, select_samples
from surveydust.stores.training import open_training_store
from surveydust.train import Part, StoreBatches, target_values

BANDS = ["F277W", "F356W", "F444W"]  # the bands of the session's training_store (tests/conftest.py)


@pytest.fixture(scope="module")
def store(training_store: Path) -> Path:
    return training_store


def _epoch(batches: StoreBatches, reference: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Store indices of every batch of one epoch (found by image), and the aux of each batch."""
    samples, aux = [], []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x["image"].shape[1:] == reference.shape[1:] and x["image"].dtype == np.float32
        d = np.abs(x["image"][:, None] - reference[None]).max(axis=(2, 3, 4))
        found = d.argmin(axis=1)
        assert (d[np.arange(found.size), found] < 1e-5).all()  # every image is one of the store's
        samples.append(found)
        aux.append(x["aux"])
        # labels travel with their images
        np.testing.assert_allclose(y, batches.y[np.searchsorted(batches.index, found)], rtol=0, atol=0)
    batches.on_epoch_end()
    return samples, aux


def test_store_batches_visit_every_sample_once_per_epoch_in_a_new_order(store: Path) -> None:
    ds = open_training_store(store)
    n = ds.sizes["sample"]
    chunk = ds["image"].data.chunks[0][0]
    assert chunk == 22 and n == 154
    cfg = load_training_config(bands=BANDS, batch_size=16)
    index = np.setdiff1d(np.arange(n), np.arange(0, n, 5))  # a part of the store, not all of it
    mean, std = np.zeros(3), np.ones(3)
    batches = StoreBatches(Part(str(store), index), cfg, mean, std)
    assert len(batches) == int(np.ceil(index.size / 16))
    images = ds["image"].sel(band=BANDS).values
    reference = network_inputs(images, cfg.crop)["image"]
    # the labels are the targets in the network's space (ln(x + c) for dust)
    np.testing.assert_allclose(batches.y, target_values(ds.isel(sample=index), cfg), rtol=1e-6)

    orders = []
    for _ in range(3):
        samples, aux = _epoch(batches, reference)
        seen = np.concatenate(samples)
        assert seen.size == index.size
        np.testing.assert_array_equal(np.sort(seen), index)  # each sample of the part exactly once
        assert all(s.size == 16 for s in samples[:-1])
        # the whole part fits the shuffle buffer: batches mix galaxies from many chunks
        assert np.median([np.unique(s // chunk).size for s in samples[:-1]]) >= 5
        # log flux of the right image in aux[:, 0]
        np.testing.assert_allclose(np.concatenate(aux)[:, 0], network_inputs(images[seen], cfg.crop)["aux"][:, 0],
                                   rtol=1e-6)
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # the order of the chunks changes too, not only the order inside them
    chunk_orders = {tuple(pd.unique(o // chunk)) for o in orders}
    assert len(chunk_orders) > 1
    again = StoreBatches(Part(str(store), index), cfg, mean, std)
    np.testing.assert_array_equal(np.concatenate(_epoch(again, reference)[0]), orders[0])  # seeded


@pytest.mark.parametrize("part", ["all", "every third"])
def test_store_batches_stream_in_windows_of_chunks_the_buffer_holds(store: Path, part: str) -> None:
    ds = open_training_store(store)
    chunk = ds["image"].data.chunks[0][0]
    cfg = load_training_config(bands=BANDS, batch_size=16, shuffle_buffer_mb=1)
    index = np.arange(ds.sizes["sample"])[::1 if part == "all" else 3]
    batches = StoreBatches(Part(str(store), index), cfg, np.zeros(3), np.ones(3))
    assert batches.capacity == 2 ** 20 // (4 * len(BANDS) * cfg.crop ** 2)  # 85 samples
    reference = network_inputs(ds["image"].sel(band=BANDS).values, cfg.crop)["image"]
    for _ in range(2):
        windows = list(batches._plan[2])
        held = [np.isin(index // chunk, w).sum() for w in windows]
        # windows are filled by the part's samples, not whole chunks: the buffer holds 3 chunks of
        # 22 samples, or 7 chunks of every third sample
        assert all(n <= batches.capacity for n in held) and len(windows) == (3 if part == "all" else 1)
        samples, _ = _epoch(batches, reference)
        seen = np.concatenate(samples)
        np.testing.assert_array_equal(np.sort(seen), index)
        # a window's samples come before the next window's: at most two windows in memory
        window_of_chunk = {b: k for k, w in enumerate(windows) for b in w}
        order = np.array([window_of_chunk[b] for b in seen // chunk])
        assert (np.diff(order) >= 0).all()
        assert len(batches._loaded) <= 2


def test_store_batches_without_shuffle_are_in_store_order_with_every_redshift(store: Path) -> None:
    ds = open_training_store(store)
    cfg = load_training_config(bands=BANDS, batch_size=50, redshift_dropout=1.0)
    index = np.arange(ds.sizes["sample"])
    batches = StoreBatches(Part(str(store), index), cfg, np.zeros(3), np.ones(3), shuffle=False)
    reference = network_inputs(ds["image"].sel(band=BANDS).values, cfg.crop)["image"]
    samples, aux = _epoch(batches, reference)
    seen = np.concatenate(samples)
    assert np.array_equal(np.sort(seen), index)
    aux = np.concatenate(aux)
    z = ds["redshift"].values[seen]
    np.testing.assert_allclose(aux[:, 1], z - 7.0, rtol=1e-5)  # validation-like: no dropout
    assert (aux[:, 2] == 1).all()


@pytest.mark.parametrize("dropout", [0.0, 0.25, 0.6, 1.0])
def test_redshift_dropout_fraction_is_honoured(store: Path, dropout: float) -> None:
    ds = open_training_store(store)
    cfg = load_training_config(bands=BANDS, batch_size=32, redshift_dropout=dropout)
    index = np.arange(ds.sizes["sample"])
    batches = StoreBatches(Part(str(store), index), cfg, np.zeros(3), np.ones(3))
    known, shown = [], 0
    z_all = ds["redshift"].values
    for _ in range(4):  # 4 x 154 = 616 samples
        for i in range(len(batches)):
            x, _ = batches[i]
            aux = x["aux"]
            known.append(aux[:, 2])
            # a known z is one of the store's; a dropped one is 0 with flag 0
            assert ((aux[:, 2] == 1) | (aux[:, 1] == 0)).all()
            assert np.isin(np.round(aux[aux[:, 2] == 1, 1] + 7.0, 4), np.round(z_all, 4)).all()
            shown += len(aux)
        batches.on_epoch_end()
    dropped = 1.0 - np.concatenate(known).mean()
    assert shown == 4 * index.size
    if dropout in (0.0, 1.0):
        assert dropped == dropout
    else:
        assert abs(dropped - dropout) < 0.06, dropped  # ~4 binomial sigma at n = 616


def test_no_redshift_input_when_the_config_says_so(store: Path) -> None:
    cfg = load_training_config(bands=BANDS, use_redshift=False, redshift_dropout=0.0)
    batches = StoreBatches(Part(str(store), np.arange(40)), cfg, np.zeros(3), np.ones(3))
    x, _ = batches[0]
    assert (x["aux"][:, 1:3] == 0).all()  # z - 7 and the known flag


def test_per_batch_augmentation_draws_every_dihedral_transform_of_the_stored_image(store: Path) -> None:
    from surveydust.transforms import apply_transform

    ds = open_training_store(store)
    cfg = load_training_config(bands=BANDS, batch_size=32, augment={"noise": 0.0})
    index = np.arange(ds.sizes["sample"])
    batches = StoreBatches(Part(str(store), index), cfg, np.zeros(3), np.ones(3), augment=cfg.augment)
    images = ds["image"].sel(band=BANDS).values
    variants = np.stack([network_inputs(apply_transform(images, c), cfg.crop)["image"] for c in range(8)])
    flat = variants.reshape(8 * len(index), -1).astype(np.float64)
    codes = []
    for _ in range(2):
        for i in range(len(batches)):
            x, y = batches[i]
            a = x["image"].reshape(len(y), -1).astype(np.float64)
            dist = (a ** 2).sum(1)[:, None] + (flat ** 2).sum(1)[None] - 2 * a @ flat.T
            code, sample = np.unravel_index(dist.argmin(axis=1), (8, len(index)))
            # each image is exactly one stored sample under one transform, without noise
            np.testing.assert_allclose(x["image"], variants[code, sample], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(y, batches.y[sample])  # labels travel with their images
            codes.append(code)
        batches.on_epoch_end()
    seen = np.bincount(np.concatenate(codes), minlength=8)
    assert (seen > 0).all() and seen.sum() == 2 * index.size  # all 8 transforms, drawn afresh


def test_per_batch_noise_is_fresh_and_at_most_the_configured_level(store: Path) -> None:
    ds = open_training_store(store)
    cfg = load_training_config(bands=BANDS, augment={"noise": 0.5, "rotations": False, "flips": False})
    batches = StoreBatches(Part(str(store), np.arange(40)), cfg, np.zeros(3), np.ones(3), augment=cfg.augment)
    images = ds["image"].sel(band=BANDS).values[:40]
    sigma = 0.5 * ds["noise_sigma"].sel(band=BANDS).values
    rng = np.random.default_rng(0)
    first, second = batches._augmented(images, rng), batches._augmented(images, rng)
    for out in (first, second):
        resid_std = (out - images).std(axis=(2, 3)) / sigma  # per image and band, in units of the level
        assert (resid_std < 1.1).all() and 0.3 < resid_std.mean() < 0.7  # u * level, u uniform in 0..1
        # one amplitude per image, shared by its bands
        assert np.allclose(resid_std / resid_std[:, :1], 1.0, atol=0.25)
    assert not np.allclose(first, second)  # a new realisation every time


def test_hog_or_balance_need_stored_copies() -> None:
    with pytest.raises(ValueError, match="per_batch=false"):
        load_training_config(augment={"hog": True})
    assert load_training_config(augment={"hog": True, "per_batch": False}).augment.hog
    assert load_training_config(split="paper", augment={"balance": True}).augment.balance


def test_use_all_cores_sets_the_thread_variables() -> None:
    code = ("import os; os.environ['OMP_NUM_THREADS'] = '1'; from surveydust.train import use_all_cores; "
            "n = use_all_cores(); print(n, os.environ['OMP_NUM_THREADS'], os.environ['TF_NUM_INTRAOP_THREADS'], "
            "use_all_cores(3), os.environ['MKL_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    n = len(os.sched_getaffinity(0))
    assert out.stdout.split() == [str(n), str(n), str(n), "3", "3"]


# ---------------------------------------------------------------- tiny real training runs


@pytest.fixture(scope="module")
def galaxy_bundle(store: Path, client, tmp_path_factory, tiny_training: dict) -> Path:
    from surveydust.train import train

    return train(store, tmp_path_factory.mktemp("train") / "bundle", client=client, progress=False, **tiny_training)


def test_tiny_train_makes_a_calibrated_bundle(galaxy_bundle: Path, store: Path, check_bundle_predictions) -> None:
    from surveydust.bundle import read_meta

    meta = read_meta(galaxy_bundle)
    assert meta["bands"] == BANDS and meta["uses_redshift"] is True and meta["epochs_run"] == 2
    assert meta["training_store"]["store_id"] == open_training_store(store).attrs["store_id"]
    split = meta["split"]
    assert split["protocol"] == "galaxy" and "paper_test" not in split
    parts = [set(split[k]) for k in ("test_galaxies", "validation_galaxies", "calibration_galaxies")]
    assert all(len(p) >= 2 for p in parts)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert meta["n_train_augmented"] == split["n_samples"]["train"]  # augmented per batch: no copies
    cal = meta["calibration"]
    assert cal["n_samples"] == split["n_samples"]["calibration"] >= 20
    for key in ("with_redshift", "without_redshift"):
        for t in meta["targets"]:
            z = cal[key][t]  # offsets [sigma]: finite and increasing however sure of itself the network is
            assert len(z) == 5 and np.isfinite(z).all() and all(a < b for a, b in pairwise(z)), (key, t)
    ds = open_training_store(store)
    selected = select_samples(ds, load_training_config(**meta["training_config"]))
    train = selected[~np.isin(ds["galaxy_id"].values[selected], list(set().union(*parts)))]
    assert train.size == split["n_samples"]["train"]
    for t in meta["targets"]:  # the training median (rotated copies share their labels)
        assert meta["constant_guess"][t] == pytest.approx(float(np.median(ds[t].values[train])), rel=1e-5)
    assert meta["training_threads"] == len(os.sched_getaffinity(0))
    assert len(meta["history"]["loss"]) == 2 and np.isfinite(meta["history"]["val_loss"]).all()
    check_bundle_predictions(galaxy_bundle, store)


def test_bundle_flags_its_stated_share_of_calibration_galaxies(galaxy_bundle: Path, store: Path) -> None:
    """The OOD statistics (learned features and noise-aware colours) flag ``FLAG_SHARE`` of the calibration
    galaxies' stamps by construction (how well they separate shifted worlds: benchmarks/robustness.py;
    the scores: test_ood)."""
    from surveydust.bundle import load_model
    from surveydust.ood import FLAG_SHARE, KIND

    p = load_model(galaxy_bundle)
    ood = p.meta["ood"]
    assert ood["kind"] == KIND and ood["layer"].startswith("dense") and ood["flag_share"] == FLAG_SHARE
    assert set(ood["spaces"]) == {"features", "colour_likelihood"}
    _assert_flags_stated_share(p, store)


def _assert_flags_stated_share(p, store: Path) -> None:
    """Predictor ``p`` flags its stated share of the stamps of ``store``'s calibration galaxies."""
    ds = open_training_store(store)
    cal = np.flatnonzero(np.isin(ds["galaxy_id"].values, p.meta["split"]["calibration_galaxies"]))
    cal = cal[ds["snr"].sel(band=p.snr_band).values[cal] >= p.snr_min]
    images = ds["image"].sel(band=list(p.bands)).values[cal]
    score = p.predict(images, ds["redshift"].values[cal])["ood"].values
    assert np.isfinite(score).all()
    assert np.mean(score > 1.0) == pytest.approx(p.meta["ood"]["flag_share"], abs=1.5 / len(cal) + 0.01)


def test_refit_ood_copies_the_network_with_fresh_statistics(galaxy_bundle: Path, store: Path, make_training_store,
                                                          tmp_path: Path) -> None:
    """``refit_ood`` gives a bundle the statistics training would give it today, from its own
    training store only, and changes nothing else; the input bundle is untouched."""
    from surveydust.bundle import META_FILE, MODEL_FILE, read_meta
    from surveydust.train import refit_ood

    before = (galaxy_bundle / META_FILE).read_bytes()
    out = refit_ood(galaxy_bundle, tmp_path / "refit", store)
    old, new = read_meta(galaxy_bundle), read_meta(out)
    assert (galaxy_bundle / META_FILE).read_bytes() == before
    assert (out / MODEL_FILE).read_bytes() == (galaxy_bundle / MODEL_FILE).read_bytes()
    assert {k: v for k, v in new.items() if k not in ("ood", "checksums")} == \
        {k: v for k, v in old.items() if k not in ("ood", "checksums")}
    assert new["ood"]["threshold"] == pytest.approx(old["ood"]["threshold"], rel=1e-6)
    with pytest.raises(ValueError, match="not the training store"):
        refit_ood(galaxy_bundle, tmp_path / "other", make_training_store())
    with pytest.raises(ValueError, match="is the training store"):
        refit_ood(galaxy_bundle, tmp_path / "other", store, fresh=True)
    with pytest.raises(ValueError, match="repeats 14 galaxies of the training store"):  # same seed: same galaxies
        refit_ood(galaxy_bundle, tmp_path / "other", make_training_store(), fresh=True)
    with pytest.raises(FileExistsError):
        refit_ood(galaxy_bundle, out, store)


def test_refit_ood_on_a_fresh_store_describes_its_galaxies(galaxy_bundle: Path, client, tmp_path: Path) -> None:
    """Statistics refitted on a store of galaxies the network never saw (another seed) flag the stated
    share of that store's calibration galaxies, and record the store; the network and its calibration
    are unchanged."""
    from surveydust.bundle import MODEL_FILE, load_model, read_meta
    from surveydust.simulate import simulate
    from surveydust.train import refit_ood

    fresh = simulate(tmp_path / "fresh.zarr", client=client, progress=False, n_galaxies=14, views_per_galaxy=1,
                     bands=BANDS, galaxies_per_task=2, seed=5)
    out = refit_ood(galaxy_bundle, tmp_path / "refit", fresh, fresh=True)
    old, new = read_meta(galaxy_bundle), read_meta(out)
    assert (out / MODEL_FILE).read_bytes() == (galaxy_bundle / MODEL_FILE).read_bytes()
    assert new["calibration"] == old["calibration"]
    assert new["ood"]["store"]["store_id"] == open_training_store(fresh).attrs["store_id"]
    assert new["ood"]["threshold"] != pytest.approx(old["ood"]["threshold"], rel=1e-6)
    _assert_flags_stated_share(load_model(out), fresh)  # the same galaxy ids are calibration galaxies there


def test_tiny_train_paper_protocol(store: Path, client, tmp_path: Path, tiny_training: dict,
                                   check_bundle_predictions) -> None:
    from surveydust.bundle import read_meta
    from surveydust.train import train

    bundle = train(store, tmp_path / "paper", client=client, progress=False, split="paper",
                   **{**tiny_training, "max_epochs": 1})
    meta = read_meta(bundle)
    split = meta["split"]
    assert split["protocol"] == "paper" and split["test_galaxies"] == []
    pairs = np.asarray(split["paper_test"])
    assert pairs.ndim == 2 and pairs.shape[1] == 2 and len(pairs) == split["n_samples"]["test"]
    n_augmented = split["n_samples"]["train"] + split["n_samples"]["test"]
    assert len(pairs) == round(0.15 * n_augmented) and meta["n_train_augmented"] == split["n_samples"]["train"]
    assert set(pairs[:, 1].tolist()) <= set(range(8))  # rotations and flips, stored as copies
    ds = open_training_store(store)
    held = set(split["validation_galaxies"]) | set(split["calibration_galaxies"])
    assert not set(ds["galaxy_id"].values[pairs[:, 0]].tolist()) & held  # never a validation/calibration one
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    check_bundle_predictions(bundle, store)


def test_averaged_weights_stay_near_the_start_of_a_short_fit(tiny_training: dict) -> None:
    """What ``fit_bundle`` does with ``ema_momentum``: an average over the last ~1,000 steps of
    an 8-step fit stays near the initial weights; the raw weights move away."""
    import keras

    from surveydust.model import build_model, compile_model

    cfg = load_training_config(**tiny_training)
    rng = np.random.default_rng(0)
    x = {"image": rng.random((64, cfg.crop, cfg.crop, len(BANDS)), np.float32),
         "aux": rng.random((64, 3 + len(BANDS)), np.float32)}
    y = rng.random((64, 3), np.float32)
    moved = {}
    for m in (0.0, 0.999):
        model = build_model(cfg.bands, cfg.crop, len(cfg.targets), cfg.model, cfg.loss)
        start = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        compile_model(model, cfg.loss, 0.01, ema_momentum=m)
        swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if m else []
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y), callbacks=swap)
        end = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        moved[m] = sum(float(np.sum((e - s) ** 2)) for e, s in zip(end, start, strict=True))
    assert moved[0.999] < 0.2 * moved[0.0], moved


def test_tiny_train_with_averaged_weights(store: Path, client, tmp_path: Path, tiny_training: dict,
                                          check_bundle_predictions) -> None:
    from surveydust.bundle import read_meta
    from surveydust.train import train

    bundle = train(store, tmp_path / "ema", client=client, progress=False, ema_momentum=0.9,
                   **{**tiny_training, "max_epochs": 1})
    assert read_meta(bundle)["training_config"]["ema_momentum"] == 0.9
    check_bundle_predictions(bundle, store)

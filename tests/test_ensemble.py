"""Deep ensembles: the mixture layer against numpy, and real tiny trainings combined on a
real LocalCluster (``train`` with ``ensemble`` and ``combine_bundles`` of separate runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def store(training_store: Path) -> Path:
    return training_store


@pytest.fixture(scope="module")
def one_epoch(tiny_training: dict) -> dict:
    """The tiny training of tests/conftest.py, stopped after one epoch."""
    return {**tiny_training, "max_epochs": 1}


def _softplus_sigma(raw: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, raw) + 1e-3


def test_mixture_moments_are_the_mean_and_variance_of_the_members_mixture() -> None:
    import keras

    from surveydust.model import MixtureMoments, raw_from_sigma, sigma_from_raw

    rng = np.random.default_rng(1)
    members = [rng.normal(0, 1, (50, 6)).astype(np.float32) for _ in range(3)]
    out = keras.ops.convert_to_numpy(MixtureMoments()([keras.ops.convert_to_tensor(m) for m in members]))
    stacked = np.stack(members).astype(np.float64)
    mean, sigma = stacked[..., :3], _softplus_sigma(stacked[..., 3:])
    m = mean.mean(axis=0)
    variance = (sigma ** 2 + mean ** 2).mean(axis=0) - m ** 2
    np.testing.assert_allclose(out[:, :3], m, atol=1e-5)
    np.testing.assert_allclose(_softplus_sigma(out[:, 3:].astype(np.float64)), np.sqrt(variance), rtol=1e-4)
    # disagreement only widens: the layer's sigma is never below the members' rms sigma
    assert (_softplus_sigma(out[:, 3:].astype(np.float64)) >= np.sqrt((sigma ** 2).mean(axis=0)) * (1 - 1e-4)).all()
    s = np.array([0.0011, 0.01, 0.5, 3.0, 40.0], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sigma_from_raw(raw_from_sigma(s))), s, rtol=1e-4)


def _raw(predictor, store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs of ``predictor`` on the first 40 samples, and the inputs used."""
    from surveydust.preprocess import network_inputs
    from surveydust.stores.training import open_training_store

    ds = open_training_store(store).isel(sample=slice(0, 40))
    x = network_inputs(ds["image"].sel(band=list(predictor.bands)).values, predictor.crop,
                       ds["redshift"].values, predictor.colour_inputs)
    return np.asarray(predictor.model.predict_on_batch(x), np.float64), x


def test_train_with_ensemble_trains_members_with_their_own_seeds(store: Path, client, tmp_path: Path, one_epoch: dict,
                                                                 check_bundle_predictions, backend_predictions) -> None:
    from surveydust.bundle import load_model
    from surveydust.train import train

    bundle = train(store, tmp_path / "ens", client=client, progress=False, ensemble=2, **one_epoch)
    p = load_model(bundle)
    members = p.meta["ensemble"]["members"]
    assert [m["fit_seed"] for m in members] == [0, 1] and members[0]["model_id"] != members[1]["model_id"]
    assert p.meta["training_config"]["ensemble"] == 2 and len(members[0]["history"]["loss"]) == 1
    raw, x = _raw(p, store)
    nets = [p.model.get_layer(f"member{k}") for k in range(2)]
    means = np.stack([np.asarray(n.predict_on_batch(x))[:, :3] for n in nets])
    assert np.abs(means[0] - means[1]).max() > 1e-3  # different networks
    np.testing.assert_allclose(raw[:, :3], means.mean(axis=0), atol=1e-5)
    check_bundle_predictions(bundle, store)
    if importlib.util.find_spec("jax") is not None:  # the mixture layer on another backend, same numbers
        want, got = backend_predictions(bundle, "jax", tmp_path)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_combine_bundles_of_separate_runs_and_refuse_other_splits(store: Path, client, tmp_path: Path, one_epoch: dict,
                                                                  check_bundle_predictions) -> None:
    from surveydust.bundle import load_model, read_meta
    from surveydust.ensemble import combine_bundles
    from surveydust.train import train

    a = train(store, tmp_path / "a", client=client, progress=False, **one_epoch)
    b = train(store, tmp_path / "b", client=client, progress=False, fit_seed=7, **one_epoch)
    out = combine_bundles([a, b], tmp_path / "ab")
    meta = read_meta(out)
    assert [m["model_id"] for m in meta["ensemble"]["members"]] == [load_model(a).model_id, load_model(b).model_id]
    assert [m["fit_seed"] for m in meta["ensemble"]["members"]] == [0, 7]
    assert meta["calibration"]["n_samples"] == read_meta(a)["calibration"]["n_samples"]
    raw = {k: _raw(load_model(p), store)[0] for k, p in (("a", a), ("b", b), ("ab", out))}
    np.testing.assert_allclose(raw["ab"][:, :3], (raw["a"][:, :3] + raw["b"][:, :3]) / 2, atol=1e-5)
    check_bundle_predictions(out, store)

    other = train(store, tmp_path / "c", client=client, progress=False, seed=3, **one_epoch)
    with pytest.raises(ValueError, match="differ in .*split seed"):
        combine_bundles([a, other], tmp_path / "ac")
    with pytest.raises(ValueError, match="at least 2"):
        combine_bundles([a], tmp_path / "a1")
    with pytest.raises(FileExistsError):
        combine_bundles([a, b], tmp_path / "ab")
    assert not (tmp_path / "ac").exists()


def test_cli_ensemble_bad_members_are_one_line_errors(tmp_path: Path, console_script) -> None:
    from surveydust.bundle import default_bundle_path

    six, three = default_bundle_path(), default_bundle_path(["F277W", "F356W", "F444W"])
    for members, message in (([six], "at least 2 bundles"), ([six, three], "differ in bands")):
        r = console_script("ensemble", *map(str, members), "--out", str(tmp_path / "e"))
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "e").exists()

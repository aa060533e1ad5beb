"""Model bundles: save, checks on load, prediction output, and a second Keras backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surveydust.bundle import MODEL_FILE, META_FILE, load_model, save_bundle
from surveydust.config import load_training_config
from surveydust.model import build_model

TARGETS = ["A_V", "EBV", "log_ssfr"]
SCALING = {"A_V": [0.4, 0.3], "EBV": [0.08, 0.05], "log_ssfr": [-8.2, 0.3]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    cfg = load_training_config()
    model = build_model(cfg.bands, 32, 3, cfg.model)
    meta = {"bands": list(cfg.bands), "targets": TARGETS, "crop": 32, "loss": "gaussian_nll",
            "target_scaling": SCALING}
    return save_bundle(model, tmp_path_factory.mktemp("b") / "bundle", meta)


def images(n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.normal(0, 0.5, size=(n, 3, 32, 32)).astype(np.float32)
    img[:, :, 14:18, 14:18] += rng.uniform(5, 50, size=(n, 3, 1, 1))
    return img


def test_predict_dataset(bundle: Path) -> None:
    predictor = load_model(bundle)
    assert predictor.bands == ("F277W", "F356W", "F444W")
    ds = predictor.predict(images(), batch_size=16)  # batched internally
    for name in ("A_V", "EBV", "R_V", "log_ssfr"):
        assert ds[name].shape == (50,) and np.isfinite(ds[f"{name}_err"]).all()
        assert (ds[f"{name}_err"] > 0).all()
    assert ds["A_V"].attrs["units"] == "mag"
    np.testing.assert_allclose(ds["R_V"], ds["A_V"] / ds["EBV"], rtol=1e-5)
    assert predictor.predict(images()[:0]).sizes["sample"] == 0
    with pytest.raises(ValueError, match="expected images"):
        predictor.predict(images()[:, :2])


def test_bundle_checks(bundle: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / MODEL_FILE).unlink()
    with pytest.raises(ValueError, match="model.keras is missing"):
        load_model(broken)
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    meta = json.loads((old / META_FILE).read_text())
    (old / META_FILE).write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(ValueError, match="format version 0"):
        load_model(old)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / MODEL_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="checksum"):
        load_model(tampered)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


VARIABLES = ("A_V", "EBV", "log_ssfr", "A_V_err")


def predict_on_backend(bundle: Path | None, backend: str, tmp_path: Path) -> np.ndarray:
    """Predictions of ``bundle`` (None: the shipped one) in a fresh process on ``backend``."""
    np.save(tmp_path / "img.npy", images())
    code = (f"import numpy as np, keras; from surveydust.bundle import load_model; "
            f"assert keras.backend.backend() == {backend!r}; "
            f"ds = load_model({str(bundle) if bundle else None!r}).predict(np.load({str(tmp_path / 'img.npy')!r})); "
            f"np.save({str(tmp_path / 'out.npy')!r}, np.stack([ds[v].values for v in {VARIABLES!r}]))")
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(tmp_path / "out.npy")


@pytest.mark.parametrize("shipped", [False, True], ids=["new-bundle", "shipped-bundle"])
def test_loads_on_jax_backend(bundle: Path, tmp_path: Path, shipped: bool) -> None:
    pytest.importorskip("jax")
    path = None if shipped else bundle
    expected = load_model(path).predict(images())
    want = np.stack([expected[v].values for v in VARIABLES])
    assert np.isfinite(want).all()
    np.testing.assert_allclose(predict_on_backend(path, "jax", tmp_path), want, rtol=1e-4, atol=1e-5)


def test_shipped_bundle() -> None:
    predictor = load_model()
    assert predictor.bands == ("F277W", "F356W", "F444W")
    assert predictor.meta["loss"] == "gaussian_nll"
    assert sum(f.stat().st_size for f in predictor.path.iterdir()) < 5 * 2**20
    ds = predictor.predict(images())
    assert (ds["A_V_err"] > 0).all() and np.isfinite(ds["log_ssfr"]).all()

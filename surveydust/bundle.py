"""Model bundles: a directory with everything needed to predict.

::

    bundle/
      model.keras     the Keras 3 model (loaded in safe mode, compile=False)
      bundle.json     bands, targets, crop, target scaling, loss, training config,
                      training-store id, split (test / validation galaxy ids),
                      metrics, Keras backend, SHA-256 of model.keras

:func:`load_model` returns a :class:`Predictor` whose ``predict`` takes images
``(n, band, y, x)`` in nJy (training-store units) and returns an
``xarray.Dataset`` of ``A_V``, ``EBV``, ``R_V``, ``log_ssfr`` and their ``*_err``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.preprocess import network_inputs
from surveydust.provenance import sha256

FORMAT_VERSION = 1
MODEL_FILE, META_FILE = "model.keras", "bundle.json"
MIN_EBV_FOR_RV = 1e-3
PREPROCESS_BATCHES = 8
OUTPUT_UNITS = {"A_V": "mag", "EBV": "mag", "R_V": "", "log_ssfr": "log10(yr^-1)"}


def save_bundle(model: Any, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` and ``meta`` (plus format version and checksum) into ``path``.

    Pass an uncompiled model: a compiled one also stores its optimizer state (3x larger).
    """
    import keras

    path.mkdir(parents=True, exist_ok=True)
    model.save(path / MODEL_FILE)
    meta = {**meta, "format_version": FORMAT_VERSION, "keras_backend": keras.backend.backend(),
            "checksums": {MODEL_FILE: sha256(path / MODEL_FILE)}}
    (path / META_FILE).write_text(json.dumps(meta, indent=2, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def default_bundle_path() -> Path:
    """The bundle shipped with the package (trained on the built-in simulator)."""
    return Path(str(resources.files("surveydust") / "data" / "bundles" / "default"))


def read_meta(path: Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` (existence, format version, checksum)."""
    meta_file, model_file = path / META_FILE, path / MODEL_FILE
    for f in (meta_file, model_file):
        if not f.is_file():
            raise ValueError(f"{path} is not a complete model bundle: {f.name} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{meta_file} is not valid JSON") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"bundle {path} has format version {meta.get('format_version')}; "
                         f"this surveydust reads version {FORMAT_VERSION}: retrain or upgrade")
    if sha256(model_file) != meta["checksums"][MODEL_FILE]:
        raise ValueError(f"{model_file} does not match its checksum in {META_FILE} (modified or corrupt)")
    return meta


class Predictor:
    """A loaded bundle. ``bands``/``targets`` say what it needs and gives."""

    def __init__(self, path: Path | str):
        import keras

        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.bands: tuple[str, ...] = tuple(self.meta["bands"])
        self.targets: tuple[str, ...] = tuple(self.meta["targets"])
        self.crop: int = int(self.meta["crop"])
        self.loss: str = self.meta["loss"]
        scaling = self.meta["target_scaling"]
        self._mean = np.array([scaling[t][0] for t in self.targets])
        self._std = np.array([scaling[t][1] for t in self.targets])
        self.model = keras.saving.load_model(self.path / MODEL_FILE, compile=False, safe_mode=True)

    @property
    def model_id(self) -> str:
        """Short id: the first 12 hex digits of the model file's SHA-256."""
        return self.meta["checksums"][MODEL_FILE][:12]

    def predict(self, images: np.ndarray, batch_size: int = 1024) -> xr.Dataset:
        """Predict from images ``(n, band, y, x)`` [nJy] with bands in ``self.bands`` order."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != len(self.bands):
            raise ValueError(f"expected images (n, {len(self.bands)} bands {list(self.bands)}, y, x), "
                             f"got shape {images.shape}")
        n = len(self.targets)
        step = PREPROCESS_BATCHES * batch_size  # normalise a slice at a time: bounded memory
        raw = np.concatenate([
            self._forward(network_inputs(images[i:i + step], self.bands, self.crop), batch_size)
            for i in range(0, len(images), step)
        ]) if len(images) else np.zeros((0, 2 * n))
        mean = raw[:, :n] * self._std + self._mean
        if self.loss == "gaussian_nll":
            import keras

            from surveydust.model import sigma_from_raw  # the loss's own sigma

            err = keras.ops.convert_to_numpy(sigma_from_raw(raw[:, n:])) * self._std
        else:
            err = np.full_like(mean, np.nan)
        return self._dataset(mean, err)

    def _forward(self, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
        """Network outputs; one ``predict_on_batch`` for a single batch (``predict`` has
        ~0.1 s of fixed cost per call, which dominated small tiles)."""
        if len(next(iter(inputs.values()))) <= batch_size:
            return np.asarray(self.model.predict_on_batch(inputs))
        return self.model.predict(inputs, batch_size=batch_size, verbose=0)

    def _dataset(self, mean: np.ndarray, err: np.ndarray) -> xr.Dataset:
        ds = xr.Dataset()
        for i, t in enumerate(self.targets):
            ds[t] = ("sample", mean[:, i].astype(np.float32))
            ds[f"{t}_err"] = ("sample", err[:, i].astype(np.float32))
        if {"A_V", "EBV"} <= set(self.targets):
            a, e = ds["A_V"].values.astype(float), ds["EBV"].values.astype(float)
            sa, se = ds["A_V_err"].values.astype(float), ds["EBV_err"].values.astype(float)
            ok = e > MIN_EBV_FOR_RV
            with np.errstate(divide="ignore", invalid="ignore"):
                rv = np.where(ok, a / e, np.nan)
                rv_err = np.abs(rv) * np.hypot(sa / np.abs(a), se / e)
            ds["R_V"] = ("sample", rv.astype(np.float32))
            ds["R_V_err"] = ("sample", rv_err.astype(np.float32))
        for name in list(ds.data_vars):
            ds[name].attrs["units"] = OUTPUT_UNITS[name.removesuffix("_err")]
        ds.attrs.update(model_id=self.model_id, bands=list(self.bands))
        return ds


def load_model(path: Path | str | None = None) -> Predictor:
    """Load a model bundle (None: the bundle shipped with surveydust)."""
    path = default_bundle_path() if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model bundle {path} does not exist")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return Predictor(path)

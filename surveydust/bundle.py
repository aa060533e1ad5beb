"""Model bundles: a directory with everything needed to predict.

::

    bundle/
      model.keras     the Keras 3 model (loaded in safe mode, compile=False)
      bundle.json     bands, targets, crop, target scaling and transforms, loss,
                      whether it takes redshifts, training config, training-store
                      id, split (protocol; test / validation / calibration
                      galaxies), calibrated percentile offsets [sigma], Keras backend,
                      SHA-256 of model.keras and of the metadata itself

:func:`load_model` returns a :class:`Predictor` whose ``predict`` takes images
``(n, band, y, x)`` in nJy (training-store units) and optional redshifts and
returns an ``xarray.Dataset`` of ``A_V``, ``EBV``, ``R_V``, ``log_ssfr``, their
``*_err`` and calibrated percentiles. Shipped bundles live in
``surveydust/data/bundles/<name>/``, one per band set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.backend import keras_module
from surveydust.config import load_training_config
from surveydust.detect import FLAGS
from surveydust.errors import InputError
from surveydust.ood import KINDS as OOD_KINDS
from surveydust.ood import ood_scores, photometric_values
from surveydust.posterior import LEVEL_NAMES, LEVELS, LOG_OFFSETS, percentiles, z_from_levels
from surveydust.preprocess import AUX_FEATURES, network_inputs, ood_score
from surveydust.provenance import sha256
from surveydust.quantities import MIN_PREDICTED_EBV_FOR_RV, UNITS, quantity, r_v
from surveydust.sources import check_redshifts

FORMAT_VERSION = 3
#: older formats read_meta still reads (2: calibration as Gaussian levels in (0, 1))
UPGRADABLE_VERSIONS = (2,)
MODEL_FILE, META_FILE = "model.keras", "bundle.json"
PREPROCESS_BATCHES = 8
#: flux-space distance [sigma] that flagged a stamp in bundles made before feature-space OOD statistics
LEGACY_OOD_SIGMA = 5.0
REQUIRED_META = ("bands", "targets", "crop", "loss", "target_scaling", "checksums")
SHIPPED = "bundles"  # folder of the shipped bundles inside surveydust/data
#: metadata every member of an ensemble must share (the same inputs, outputs, targets' space and split)
ENSEMBLE_SHARED_META = ("bands", "targets", "crop", "loss", "uses_redshift", "posterior", "target_scaling")
ENSEMBLE_SHARED_SPLIT = ("protocol", "seed", "test_galaxies", "validation_galaxies", "calibration_galaxies")


def meta_checksum(meta: dict[str, Any]) -> str:
    """SHA-256 of a bundle's metadata (canonical JSON, without its ``checksums``)."""
    body = {k: v for k, v in meta.items() if k != "checksums"}
    text = json.dumps(body, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_bundle(model: Any, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``model`` and ``meta`` (plus format version and checksums) into ``path``.

    Pass an uncompiled model: a compiled one also stores its optimizer state (3x larger).
    The checksums cover the model file and the metadata itself.
    """
    import keras

    path.mkdir(parents=True, exist_ok=True)
    model.save(path / MODEL_FILE)
    return write_meta(path, {**meta, "keras_backend": keras.backend.backend()})


def write_meta(path: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as the metadata of the bundle folder ``path`` (whose model file is in place),
    with the format version and the checksums of the model file and the metadata."""
    meta = json.loads(json.dumps({**meta, "format_version": FORMAT_VERSION}, default=_jsonable))
    meta["checksums"] = {MODEL_FILE: sha256(path / MODEL_FILE), META_FILE: meta_checksum(meta)}
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def shipped_bundles() -> dict[tuple[str, ...], Path]:
    """The bundles shipped with the package (trained on the built-in simulator), by band set."""
    root = Path(str(resources.files("surveydust") / "data" / SHIPPED))
    found = {}
    for d in sorted(p for p in root.iterdir() if (p / META_FILE).is_file()):
        found[tuple(json.loads((d / META_FILE).read_text())["bands"])] = d
    return found


def default_bundle_path(bands: Sequence[str] | None = None) -> Path:
    """The shipped bundle for exactly ``bands`` (any order); None: the one with the most bands."""
    shipped = shipped_bundles()
    if bands is None:
        return shipped[max(shipped, key=len)]
    want = {b.upper() for b in bands}
    for have, path in shipped.items():
        if set(have) == want:
            return path
    raise InputError(f"no shipped bundle for bands {sorted(want)}; shipped: "
                     + "; ".join("+".join(b) for b in shipped))


def richest_bundle(available: Sequence[str]) -> Path:
    """The shipped bundle with the most bands, all of which are in ``available``."""
    have = {b.upper() for b in available}
    usable = {bands: p for bands, p in shipped_bundles().items() if set(bands) <= have}
    if not usable:
        raise InputError(f"no shipped bundle can run on bands {sorted(have)}: every one needs "
                         + " or ".join("+".join(b) for b in shipped_bundles()))
    return usable[max(usable, key=len)]


def store_redshift_range(ds: xr.Dataset) -> list[float]:
    """The redshift range [low, high] of a training store: the ``redshift_range`` of the simulation
    config that wrote it (built-in simulator), else the lowest and highest redshift of its samples."""
    config = ds.attrs.get("simulation_config")
    if config:
        return [float(v) for v in json.loads(config)["redshift_range"]]
    z = ds["redshift"].values
    z = z[np.isfinite(z)]
    return [float(z.min()), float(z.max())] if z.size else [np.nan, np.nan]


def training_redshift_range(meta: dict[str, Any]) -> tuple[float, float]:
    """The redshift range [low, high] a bundle was trained on: ``training_store.redshift_range`` of its
    metadata; for bundles made before it was recorded (the shipped ones), the built-in simulator's
    default ``redshift_range`` (configs/simulation.yaml), which they were trained on."""
    recorded = meta.get("training_store", {}).get("redshift_range")
    if recorded is None:
        from surveydust.config import load_simulation_config

        recorded = load_simulation_config().redshift_range
    return float(recorded[0]), float(recorded[1])


def read_meta(path: Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` (existence, format version, keys, checksums)."""
    meta_file, model_file = path / META_FILE, path / MODEL_FILE
    for f in (meta_file, model_file):
        if not f.is_file():
            raise InputError(f"{path} is not a complete model bundle: {f.name} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{meta_file} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in (FORMAT_VERSION, *UPGRADABLE_VERSIONS):
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise InputError(f"bundle {path} has format version {version}; "
                         f"this surveydust reads version {FORMAT_VERSION}: retrain or upgrade")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(f"{meta_file} lacks {', '.join(missing)}: not a complete bundle")
    sums = meta["checksums"]
    if not isinstance(sums, dict) or sha256(model_file) != sums.get(MODEL_FILE):
        raise InputError(f"{model_file} does not match its checksum in {META_FILE} (modified or corrupt)")
    if meta_checksum(meta) != sums.get(META_FILE):
        raise InputError(f"{meta_file} does not match its checksum (edited or corrupt): retrain, "
                         "or restore the bundle")
    return _upgraded(meta)


def _upgraded(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata of an older format as :data:`FORMAT_VERSION` has it (a copy; checksums unchanged):
    format 2 stored the calibration as Gaussian levels in (0, 1), format 3 as offsets [sigma]."""
    if meta["format_version"] == FORMAT_VERSION:
        return meta
    if "calibration" in meta:
        meta = {**meta, "calibration": {key: part if key == "n_samples" else
                                        {t: z_from_levels(v) for t, v in part.items()}
                                        for key, part in meta["calibration"].items()}}
    return {**meta, "format_version": FORMAT_VERSION}


def check_ensemble_members(members: Sequence[Path]) -> list[dict[str, Any]]:
    """Read the members' metadata; raise ValueError unless they can be combined."""
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least 2 bundles, got {len(members)}")
    metas = [read_meta(m) for m in members]
    first = metas[0]
    if first["loss"] != "gaussian_nll":
        raise InputError(f"only gaussian_nll bundles can be combined ({members[0]} has loss {first['loss']})")
    for path, meta in zip(members[1:], metas[1:], strict=True):
        differ = [k for k in ENSEMBLE_SHARED_META if meta.get(k) != first.get(k)]
        differ += [f"split {k}" for k in ENSEMBLE_SHARED_SPLIT if meta["split"].get(k) != first["split"].get(k)]
        if meta["training_store"]["store_id"] != first["training_store"]["store_id"]:
            differ.append("training store")
        if differ:
            raise InputError(f"{path} cannot join {members[0]} in an ensemble: they differ in "
                             f"{', '.join(differ)} (train members with the same store, bands and seed, "
                             "and different fit_seed)")
    return metas


class Predictor:
    """A loaded bundle. ``bands``/``targets`` say what it needs and gives;
    ``uses_redshift`` whether a redshift sharpens its predictions."""

    def __init__(self, path: Path | str):
        keras = keras_module()
        import surveydust.model  # noqa: F401  (registers the custom layers a bundle's model may use)

        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.bands: tuple[str, ...] = tuple(self.meta["bands"])
        self.targets: tuple[str, ...] = tuple(self.meta["targets"])
        self.crop: int = int(self.meta["crop"])
        self.loss: str = self.meta["loss"]
        self.uses_redshift: bool = bool(self.meta.get("uses_redshift", False))
        self.redshift_range: tuple[float, float] = training_redshift_range(self.meta)
        self.offsets: dict[str, float] = dict(self.meta.get("posterior", {}).get("offsets", LOG_OFFSETS))
        train = load_training_config(**self.meta.get("training_config", {}))  # merged over today's defaults
        self.snr_band, self.snr_min = train.snr_band, train.snr_min  # its training selection
        scaling = self.meta["target_scaling"]
        self._mean = np.array([scaling[t][0] for t in self.targets])
        self._std = np.array([scaling[t][1] for t in self.targets])
        self.model = keras.saving.load_model(self.path / MODEL_FILE, compile=False, safe_mode=True)
        # the model's aux width says whether it takes colours (bundles older than the setting do not)
        self.colour_inputs: bool = self.model.get_layer("aux").output.shape[-1] > len(AUX_FEATURES)
        self._network = self.model
        if self.meta.get("ood", {}).get("kind") in OOD_KINDS:  # one pass gives outputs and learned features
            layer = self.model.get_layer(self.meta["ood"]["layer"])
            self._network = keras.Model(self.model.inputs, [self.model.output, layer.output])

    @property
    def model_id(self) -> str:
        """Short id: the first 12 hex digits of the model file's SHA-256."""
        return self.meta["checksums"][MODEL_FILE][:12]

    @property
    def name(self) -> str:
        """``<bands>`` plus ``+z`` when the model takes redshifts, e.g. ``F277W+F356W+F444W+z``."""
        return "+".join(self.bands) + ("+z" if self.uses_redshift else "")

    def predict(self, images: np.ndarray, redshift: np.ndarray | float | None = None,
                batch_size: int = 1024) -> xr.Dataset:
        """Predict from images ``(n, band, y, x)`` [nJy] with bands in ``self.bands`` order.

        ``redshift``: one value or one per image (NaN where unknown; ignored by
        models without a redshift input). Returns per target the median
        (``A_V``...), the 2.5/16/84/97.5 percentiles (``A_V_p025``...,
        calibrated on held-out galaxies), ``*_err`` = (p84 - p16) / 2, and
        ``R_V`` = A_V / E(B-V) of the medians; A_V and E(B-V) are never negative.

        NaN pixels count as no flux (0). An image with a band without a single finite
        pixel, or with a redshift outside the training range ``self.redshift_range``
        (also in models without a redshift input: they never saw such a galaxy), gets NaN and
        its reason in the coordinate ``flag`` (bits :data:`surveydust.detect.FLAGS`
        ``no_data``, ``z_out_of_range``; 0 for a prediction). A redshift that is not NaN
        and not physical (e.g. -99; see :func:`surveydust.sources.check_redshifts`) is a
        ValueError.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != len(self.bands):
            raise InputError(f"expected images (n, {len(self.bands)} bands {list(self.bands)}, y, x), "
                             f"got shape {images.shape}")
        z = check_redshifts(redshift, len(images))
        flag = self.input_flags(images, z, PREPROCESS_BATCHES * batch_size)
        z = z if self.uses_redshift else np.full(len(images), np.nan)
        n = len(self.targets)
        raw = np.full((len(images), int(self.model.outputs[0].shape[-1])), np.nan)
        ood = np.full(len(images), np.nan)
        usable = np.flatnonzero(flag == 0)
        step = PREPROCESS_BATCHES * batch_size  # normalise a slice at a time: bounded memory
        for i in range(0, usable.size, step):
            rows = usable[i:i + step]
            block = np.asarray(images[rows], dtype=np.float32)
            np.copyto(block, np.float32(0), where=~np.isfinite(block))  # NaN pixels: no flux
            photometry = self._ood_photometry(block)
            inputs = network_inputs(block, self.crop, z[rows], self.colour_inputs)
            del block  # one normalised copy of the slice at a time: bounded memory
            raw[rows], features = self._forward(inputs, batch_size)
            ood[rows] = self._ood(photometry, features, z[rows])
        mean = raw[:, :n] * self._std + self._mean
        if self.loss != "gaussian_nll":
            pct = {t: np.full((len(images), len(LEVELS)), np.nan) for t in self.targets}
            return self.to_dataset({t: np.maximum(mean[:, i], 0.0) if t in self.offsets else mean[:, i]
                                  for i, t in enumerate(self.targets)}, pct, flag, ood)
        import keras

        from surveydust.model import sigma_from_raw  # the loss's own sigma

        sigma = np.asarray(keras.ops.convert_to_numpy(sigma_from_raw(raw[:, n:])), np.float64) * self._std
        pct = {t: self._percentiles(t, mean[:, i], sigma[:, i], np.isfinite(z))
               for i, t in enumerate(self.targets)}
        return self.to_dataset({t: pct[t][:, LEVELS.index(0.5)] for t in self.targets}, pct, flag, ood)

    def input_flags(self, images: np.ndarray, redshift: np.ndarray, step: int = 8192) -> np.ndarray:
        """Per image (``(n, band, y, x)``, bands in ``self.bands`` order) the reasons it cannot be
        predicted (uint16 bits of :data:`surveydust.detect.FLAGS`): ``no_data`` where a band has no
        finite pixel, ``z_out_of_range`` where a known ``redshift`` lies outside
        ``self.redshift_range``; 0 where it can. Read ``step`` images at a time."""
        has_data = np.concatenate([np.isfinite(images[i:i + step]).any(axis=(2, 3)).all(axis=1)
                                   for i in range(0, len(images), step)]) if len(images) else np.zeros(0, bool)
        low, high = self.redshift_range
        with np.errstate(invalid="ignore"):
            outside = np.isfinite(redshift) & ((redshift < low) | (redshift > high))
        flag = np.where(has_data, 0, FLAGS["no_data"]) | np.where(outside, FLAGS["z_out_of_range"], 0)
        return flag.astype(np.uint16)

    def _percentiles(self, target: str, mean: np.ndarray, sigma: np.ndarray, has_z: np.ndarray) -> np.ndarray:
        """Calibrated percentiles; the offsets calibrated with redshifts for sources that have one."""
        cal = self.meta.get("calibration", {})
        out = percentiles(target, mean, sigma, cal.get("without_redshift", {}).get(target), self.offsets)
        if has_z.any() and "with_redshift" in cal:
            out[has_z] = percentiles(target, mean[has_z], sigma[has_z], cal["with_redshift"][target], self.offsets)
        return out

    def _forward(self, inputs: dict[str, np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Network outputs and (for bundles with feature-space OOD statistics) the last hidden
        layer's activations, one ``predict_on_batch`` per ``batch_size`` images (``predict`` has
        ~0.1 s of fixed cost per call, which dominated small tiles, and its data pipeline
        doubled the memory a call holds)."""
        batches = [self._network.predict_on_batch({k: v[i:i + batch_size] for k, v in inputs.items()})
                   for i in range(0, len(inputs["image"]), batch_size)]
        if self._network is self.model:
            return np.concatenate([np.asarray(b) for b in batches]), None
        return (np.concatenate([np.asarray(b[0]) for b in batches]),
                np.concatenate([np.asarray(b[1]) for b in batches]))

    def _ood_photometry(self, block: np.ndarray) -> dict[str, Any] | np.ndarray | None:
        """What the OOD score needs of the images ``block`` (NaN pixels already 0): per photometric
        space its values (:func:`surveydust.ood.photometric_values`), or for bundles with the older
        flux-only statistics the score itself (flux Mahalanobis [sigma] over
        :data:`LEGACY_OOD_SIGMA`); None without statistics."""
        stats = self.meta.get("ood")
        if not stats:
            return None
        if stats.get("kind") not in OOD_KINDS:
            return ood_score(block, self.crop, stats) / LEGACY_OOD_SIGMA
        return photometric_values(block, self.crop, stats)

    def _ood(self, photometry: dict[str, Any] | np.ndarray | None, features: np.ndarray | None,
             redshift: np.ndarray) -> np.ndarray:
        """Out-of-distribution scores in units of the bundle's threshold (above 1: unlike the training
        set; :mod:`surveydust.ood`), from :meth:`_ood_photometry`, the learned ``features`` and the
        stamps' ``redshift`` (NaN where unknown)."""
        if photometry is None:
            return np.nan
        if features is None:
            return photometry
        return ood_scores({"features": features, **photometry}, self.meta["ood"], redshift)

    def to_dataset(self, median: dict[str, np.ndarray], pct: dict[str, np.ndarray], flag: np.ndarray,
                   ood: np.ndarray) -> xr.Dataset:
        """The Dataset :meth:`predict` returns, from per target the ``median`` ``(n,)`` and the
        percentiles ``pct`` ``(n, level)`` at :data:`surveydust.posterior.LEVELS` (NaN: none), the
        ``flag`` bits and the ``ood`` scores per source: ``*_err``, ``R_V`` and units as ``predict``
        gives them (e.g. for a mixture of several predictions of the same sources)."""
        ds = xr.Dataset(coords={"flag": ("sample", flag)})
        ds["flag"].attrs["flag_meanings"] = ", ".join(f"{FLAGS[k]}={k}" for k in ("no_data", "z_out_of_range"))
        for t in self.targets:
            ds[t] = ("sample", median[t].astype(np.float32))
            ds[f"{t}_err"] = ("sample", (0.5 * (pct[t][:, 3] - pct[t][:, 1])).astype(np.float32))
            for level, name in zip(LEVELS, LEVEL_NAMES):
                if level != 0.5:
                    ds[f"{t}_{name}"] = ("sample", pct[t][:, LEVELS.index(level)].astype(np.float32))
        if {"A_V", "EBV"} <= set(self.targets):
            a, e = ds["A_V"].values.astype(float), ds["EBV"].values.astype(float)
            sa, se = ds["A_V_err"].values.astype(float), ds["EBV_err"].values.astype(float)
            rv = r_v(a, e, MIN_PREDICTED_EBV_FOR_RV)
            with np.errstate(divide="ignore", invalid="ignore"):
                rv_err = np.abs(rv) * np.hypot(sa / np.abs(a), se / e)
            ds["R_V"] = ("sample", rv.astype(np.float32))
            ds["R_V_err"] = ("sample", rv_err.astype(np.float32))
        for name in list(ds.data_vars):
            ds[name].attrs["units"] = UNITS[quantity(name)]
        ds["ood"] = ("sample", ood.astype(np.float32))
        ds["ood"].attrs.update(units="", description="out-of-distribution score in units of the bundle's "
                               "threshold (above 1: unlike the training set; surveydust.ood)")
        ds.attrs.update(model_id=self.model_id, bands=list(self.bands), uses_redshift=int(self.uses_redshift),
                        redshift_range=list(self.redshift_range))
        return ds


def load_model(path: Path | str | None = None, bands: Sequence[str] | None = None) -> Predictor:
    """Load a model bundle: ``path``, or the shipped bundle for ``bands`` (None and None:
    the shipped bundle with the most bands)."""
    if path is not None and bands is not None:
        raise InputError("give a bundle path or bands, not both")
    path = default_bundle_path(bands) if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model bundle {path} does not exist")
    return Predictor(path)

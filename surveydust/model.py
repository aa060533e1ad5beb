"""Keras 3 networks and losses (runs on the TensorFlow, JAX or PyTorch backend).

The paper's network: one branch per band of ``Conv2D 3x3 -> BatchNorm ->
MaxPool 2x2 -> ReLU`` blocks, branches concatenated (with ``log_flux``), dense
layers, Dropout before the output. Targets are standardised; with the
``gaussian_nll`` loss the network outputs a mean and a log standard deviation
per target (heteroscedastic Gaussian likelihood), with ``mape`` only means
(the paper's mean absolute percentage error).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from surveydust.config import ModelConfig

SIGMA_FLOOR = 1e-3


def sigma_from_raw(raw):
    """Standard deviation from the network's raw output: softplus(raw) + 1e-3.

    Softplus (rather than exp) keeps gradients bounded when a prediction is far
    off early in training, which otherwise kills the ReLUs into constant outputs.
    """
    return ops.softplus(raw) + SIGMA_FLOOR


@keras.saving.register_keras_serializable(package="surveydust")
def gaussian_nll(y_true, y_pred):
    """Negative log-likelihood of ``y_true`` under N(mean, sigma^2), per sample
    (constant dropped). ``y_pred`` holds the means, then the raw sigma outputs."""
    n = ops.shape(y_true)[-1]
    mean, sigma = y_pred[..., :n], sigma_from_raw(y_pred[..., n:])
    z = (y_true - mean) / sigma
    return ops.mean(0.5 * z * z + ops.log(sigma), axis=-1)


@keras.saving.register_keras_serializable(package="surveydust")
def mape(y_true, y_pred):
    """The paper's mean absolute percentage error (undefined for targets at 0)."""
    return 100.0 * ops.mean(ops.abs((y_true - y_pred) / ops.maximum(ops.abs(y_true), 1e-7)), axis=-1)


LOSSES = {"gaussian_nll": gaussian_nll, "mape": mape}


def _branch(inp: keras.KerasTensor, filters: tuple[int, ...], name: str) -> keras.KerasTensor:
    x = inp
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return layers.Flatten(name=f"{name}_flat")(x)


def build_model(bands: tuple[str, ...], crop: int, n_targets: int, cfg: ModelConfig,
                loss: str = "gaussian_nll") -> keras.Model:
    """The multi-branch CNN: inputs ``band_<BAND>`` (crop, crop, 1) and ``log_flux`` (1,)."""
    band_inputs = [keras.Input((crop, crop, 1), name=f"band_{b}") for b in bands]
    log_flux = keras.Input((1,), name="log_flux")
    x = layers.Concatenate(name="merge")(
        [_branch(inp, cfg.conv_filters, f"b{i}") for i, inp in enumerate(band_inputs)] + [log_flux])
    for i, units in enumerate(cfg.dense_units):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    n_out = 2 * n_targets if loss == "gaussian_nll" else n_targets
    out = layers.Dense(n_out, name="output")(x)
    return keras.Model([*band_inputs, log_flux], out, name="surveydust_cnn")


def compile_model(model: keras.Model, loss: str, learning_rate: float) -> keras.Model:
    """Adam with the chosen loss; XLA off (slower than plain TF on CPU, and sticky in .keras files)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LOSSES[loss], jit_compile=False)
    return model

"""Keras 3 networks and losses (runs on the TensorFlow, JAX or PyTorch backend).

Two architectures over the same inputs (``image`` with the bands as channels,
``aux`` with log flux and redshift): the paper's, one branch per band of
``Conv2D 3x3 -> BatchNorm -> MaxPool 2x2 -> ReLU`` blocks concatenated, and an
early-fusion stack where all bands enter the first convolution. Dense layers
and Dropout follow. Targets are transformed (:mod:`surveydust.posterior`) and
standardised; with the ``gaussian_nll`` loss the network outputs a mean and a
raw standard deviation per target (heteroscedastic Gaussian likelihood), with
``mape`` only means (the paper's mean absolute percentage error).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from surveydust.config import ModelConfig
from surveydust.preprocess import aux_width

SIGMA_FLOOR = 1e-3


def sigma_from_raw(raw):
    """Standard deviation from the network's raw output: softplus(raw) + 1e-3.

    Softplus (rather than exp) keeps gradients bounded when a prediction is far
    off early in training, which otherwise kills the ReLUs into constant outputs.
    """
    return ops.softplus(raw) + SIGMA_FLOOR


def raw_from_sigma(sigma):
    """Inverse of :func:`sigma_from_raw` (sigma at the floor maps to a very negative raw value)."""
    x = ops.maximum(sigma - SIGMA_FLOOR, 1e-6)
    return ops.where(x > 20.0, x, ops.log(ops.expm1(ops.minimum(x, 20.0))))  # softplus^-1; linear beyond 20


@keras.saving.register_keras_serializable(package="surveydust")
class MixtureMoments(layers.Layer):
    """An equal-weight mixture of the members' Gaussians as one Gaussian of the same mean and
    variance (a deep ensemble), in and out in the ``gaussian_nll`` layout (means, raw sigmas)."""

    def call(self, members):
        stacked = ops.stack(members, axis=0)
        n = stacked.shape[-1] // 2
        mean, sigma = stacked[..., :n], sigma_from_raw(stacked[..., n:])
        m = ops.mean(mean, axis=0)
        variance = ops.mean(sigma * sigma + mean * mean, axis=0) - m * m
        return ops.concatenate([m, raw_from_sigma(ops.sqrt(ops.maximum(variance, 0.0)))], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def ensemble_model(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the :class:`MixtureMoments` of ``members`` (same inputs,
    ``gaussian_nll`` outputs); each member is nested under the name ``member<k>``."""
    inputs = [keras.Input(t.shape[1:], name=t.name.split(":")[0]) for t in members[0].inputs]
    nested = [keras.Model(m.inputs, m.output, name=f"member{k}") for k, m in enumerate(members)]
    out = MixtureMoments(name="mixture")([m(inputs) for m in nested])
    return keras.Model(inputs, out, name=f"ensemble_of_{len(members)}")


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


def _branch(x: keras.KerasTensor, filters: tuple[int, ...], name: str) -> keras.KerasTensor:
    """The paper's branch: per block Conv2D 3x3 -> BatchNorm -> MaxPool 2x2 -> ReLU."""
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return layers.Flatten(name=f"{name}_flat")(x)


def _fusion(x: keras.KerasTensor, filters: tuple[int, ...]) -> keras.KerasTensor:
    """Early fusion: all bands as channels; per block two Conv2D 3x3 -> BatchNorm -> ReLU,
    then MaxPool 2x2 (not after the last); global average pooling."""
    for i, f in enumerate(filters):
        for j in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = layers.BatchNormalization(name=f"bn{i}_{j}")(x)
            x = layers.Activation("relu", name=f"relu{i}_{j}")(x)
        if i < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return layers.GlobalAveragePooling2D(name="gap")(x)


def build_model(bands: tuple[str, ...], crop: int, n_targets: int, cfg: ModelConfig,
                loss: str = "gaussian_nll") -> keras.Model:
    """The CNN: inputs ``image`` (crop, crop, n_bands) and ``aux`` (:data:`AUX_FEATURES`, then with
    ``cfg.colour_inputs`` each band's share of the aperture flux).

    ``cfg.architecture`` ``branches`` is the paper's (one branch per band,
    concatenated), ``fusion`` feeds the bands as channels of one stack, so
    resolved colours reach the first convolution.
    """
    image = keras.Input((crop, crop, len(bands)), name="image")
    aux = keras.Input((aux_width(len(bands), cfg.colour_inputs),), name="aux")
    if cfg.architecture == "fusion":
        features = [_fusion(image, cfg.conv_filters)]
    else:
        features = [_branch(image[..., i:i + 1], cfg.conv_filters, f"b{i}") for i in range(len(bands))]
    x = layers.Concatenate(name="merge")([*features, aux])
    for i, units in enumerate(cfg.dense_units):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    n_out = 2 * n_targets if loss == "gaussian_nll" else n_targets
    out = layers.Dense(n_out, name="output")(x)
    return keras.Model([image, aux], out, name=f"surveydust_{cfg.architecture}")


def compile_model(model: keras.Model, loss: str, learning_rate: float, weight_decay: float = 0.0,
                  ema_momentum: float = 0.0) -> keras.Model:
    """Adam (AdamW with decoupled ``weight_decay`` > 0) with the chosen loss; XLA off (slower
    than plain TF on CPU, and sticky in .keras files). With ``ema_momentum`` > 0 the optimizer
    also keeps an exponential moving average of the weights (use it with
    ``keras.callbacks.SwapEMAWeights``)."""
    ema = {"use_ema": ema_momentum > 0, "ema_momentum": ema_momentum}
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **ema) if weight_decay > 0 \
        else keras.optimizers.Adam(learning_rate, **ema)
    model.compile(optimizer=optimizer, loss=LOSSES[loss], jit_compile=False)
    return model

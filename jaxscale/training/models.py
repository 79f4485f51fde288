"""Flax image classifiers, registered by name.

Every model takes float32[N, H, W, C] (channels_last, already scaled) and returns float32
logits [N, num_classes]. `train` switches dropout on and BatchNorm to batch statistics.
`dtype` is the compute dtype of convolutions and dense layers (bfloat16 on accelerators);
parameters, BatchNorm statistics and the logits stay float32. None (the default) computes in
the parameters' dtype.

Register a new model with `register_model("name")` on a function
`(num_classes, **kwargs) -> flax.linen.Module`; `get_model(name, num_classes)` builds it.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

# Keras' BatchNormalization defaults (the tutorial's): momentum 0.99, epsilon 1e-3.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
# Keras' default kernel initialiser. Flax's default (LeCun normal) gives the first conv 16x
# the weight variance; on raw-pixel inputs (the tutorial's `center` row feeds -33..222) that
# made training unstable (97.2 % after 5 epochs where Keras reports 99.12 %).
KERAS_KERNEL_INIT = nn.initializers.glorot_uniform()


class SmallCNN(nn.Module):
    """The tutorial's small CNN: Conv32-Pool-Conv64-Pool-Dense64-Dense10 (ReLU, valid padding),
    initialised as Keras initialises it (Glorot-uniform kernels, zero biases).

    Attributes:
      num_classes: logits per image.
      dtype: compute dtype of the layers (None: the parameters').
    """

    num_classes: int = 10
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout or BatchNorm
        layer = dict(kernel_init=KERAS_KERNEL_INIT, dtype=self.dtype)
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID", **layer)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID", **layer)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64, **layer)(x))
        return _logits(nn.Dense(self.num_classes, **layer)(x), self.dtype)


class BNCNN(nn.Module):
    """The BatchNorm CNN, with BatchNorm really in the graph.

    Conv32-BN-ReLU, Conv32-BN-ReLU, Pool, Conv64-BN-ReLU, Conv64-BN-ReLU, Pool, Flatten,
    Dense512-BN-ReLU, Dropout, Dense(num_classes). Convolutions feeding BatchNorm have no bias
    (BN's offset replaces it).

    Attributes:
      num_classes: logits per image.
      dropout_rate: dropout before the last layer (0.2 as in the tutorial; 0 disables).
      axis_name: the pmap axis over which BatchNorm averages its batch statistics, so every
        device normalises with the statistics of the whole global batch; None when the whole
        batch is one array (single device, or jit over a mesh).
      dtype: compute dtype of the convolutions and dense layers (None: the parameters').
    """

    num_classes: int = 10
    dropout_rate: float = 0.2
    axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        def bn(y):
            return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                epsilon=BN_EPSILON, axis_name=self.axis_name,
                                dtype=self.dtype)(y)

        for features in (32, 32):
            x = nn.relu(bn(nn.Conv(features, (3, 3), padding="VALID", use_bias=False,
                                   dtype=self.dtype)(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        for features in (64, 64):
            x = nn.relu(bn(nn.Conv(features, (3, 3), padding="VALID", use_bias=False,
                                   dtype=self.dtype)(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(bn(nn.Dense(512, use_bias=False, dtype=self.dtype)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return _logits(nn.Dense(self.num_classes, dtype=self.dtype)(x), self.dtype)


def _logits(logits: jnp.ndarray, dtype) -> jnp.ndarray:
    """Logits for the loss: float32 when the layers compute in a narrower dtype."""
    return logits if dtype is None else logits.astype(jnp.promote_types(dtype, jnp.float32))


MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: registers `builder(num_classes, **kwargs) -> nn.Module` under `name`."""
    def decorate(builder):
        if name in MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = builder
        return builder
    return decorate


@register_model("small_cnn")
def _small_cnn(num_classes: int, **kwargs) -> nn.Module:
    kwargs.pop("axis_name", None)
    kwargs.pop("dropout_rate", None)
    return SmallCNN(num_classes=num_classes, **kwargs)


@register_model("bn_cnn")
def _bn_cnn(num_classes: int, **kwargs) -> nn.Module:
    return BNCNN(num_classes=num_classes, **kwargs)


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """A registered model.

    Args:
      name: a key of `MODELS` ("small_cnn", "bn_cnn").
      num_classes: logits per image.
      **kwargs: model options: `axis_name` (pmap axis for BatchNorm), `dropout_rate`,
        `dtype` (compute dtype);
        an option given as None keeps the model's default (it is not passed to the builder),
        and models without an option ignore it.

    Raises:
      ValueError: unknown name, or num_classes < 1.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[name](num_classes, **{k: v for k, v in kwargs.items() if v is not None})


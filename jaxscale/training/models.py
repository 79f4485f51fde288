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

from jaxscale.training.layers import conv2d, max_pool2, space_to_depth

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


class SpeedrunNet(nn.Module):
    """The speedrun recipes' network (`jaxscale.training.recipes`, `make speedrun`).

    space-to-depth, then [conv kxk (no bias) - BatchNorm - ReLU - (2x2 max pool)] per width,
    flatten, [Dense(hidden) (no bias) - BatchNorm - ReLU] when hidden > 0,
    Dense(num_classes). Flax's default (LeCun normal) kernels. Built from
    `jaxscale.training.layers`, so its train step is as fast inside `lax.scan` as alone.

    Attributes:
      num_classes: logits per image.
      widths: output channels of each convolution.
      pools: whether a 2x2 max pool follows each convolution (as many as widths).
      hidden: width of the hidden dense layer (0: none).
      kernel_size: k of every k x k convolution (VALID padding).
      space_to_depth: block of the input's space-to-depth (1: none); must divide H and W.
      bn_momentum, bn_epsilon: BatchNorm's.
      axis_name: the pmap axis of BatchNorm's batch statistics (see `BNCNN`).
      dtype: compute dtype of the convolutions and dense layers (None: the parameters').
    """

    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64)
    pools: tuple[bool, ...] = (True, False)
    hidden: int = 256
    kernel_size: int = 3
    space_to_depth: int = 2
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if len(self.widths) != len(self.pools):
            raise ValueError(f"widths {self.widths} and pools {self.pools} differ in length")

        def bn(y, name):
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                epsilon=self.bn_epsilon, axis_name=self.axis_name,
                                dtype=self.dtype, name=name)(y)

        x = space_to_depth(x, self.space_to_depth)
        k = self.kernel_size
        for i, (width, pool) in enumerate(zip(self.widths, self.pools)):
            kernel = self.param(f"conv{i}", nn.initializers.lecun_normal(),
                                (k, k, x.shape[-1], width))
            if self.dtype is not None:
                x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
            x = nn.relu(bn(conv2d(x, kernel), f"bn{i}"))
            if pool:
                x = max_pool2(x)
        x = x.reshape(x.shape[0], -1)
        if self.hidden:
            x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="hidden")(x)
            x = nn.relu(bn(x, "bn_hidden"))
        return _logits(nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x),
                       self.dtype)


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


@register_model("speedrun_net")
def _speedrun_net(num_classes: int, **kwargs) -> nn.Module:
    kwargs.pop("dropout_rate", None)
    return SpeedrunNet(num_classes=num_classes, **kwargs)


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """A registered model.

    Args:
      name: a key of `MODELS` ("small_cnn", "bn_cnn", "speedrun_net").
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


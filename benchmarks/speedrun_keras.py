"""The Keras 3 (JAX backend) peer of the speedrun: Keras' best equivalent of the recipe.

`model.fit` on NumPy arrays in memory (a `keras.utils.PyDataset` of index batches of one
per-epoch shuffle with the remainder dropped, as ours: `fit` on bare arrays would end every
epoch with a partial batch, i.e. a second compiled shape, and carry it over), the same
layers (a space-to-depth layer written with `keras.ops`, Conv2D without bias, BatchNorm with
the same momentum and epsilon, ReLU, MaxPooling2D, Flatten, Dense), the same initial
distributions (VarianceScaling(1, fan_in, truncated_normal) is Flax's lecun_normal), batch,
epochs, label smoothing and one-cycle schedule (a LearningRateSchedule of the same
breakpoints). Where Keras has no exact equivalent:

- SGD: Keras' Nesterov update puts the learning rate inside the momentum buffer (identical to
  PyTorch's and optax's for a constant rate, close under a schedule);
- coupled weight decay: Keras' optimizer `weight_decay` is decoupled, so an L2 regulariser of
  weight_decay / 2 on every kernel, bias, BN scale and offset gives the same gradient term;
- translation: `RandomTranslation(shift / 28, fill_mode="constant", interpolation="nearest")`
  draws continuous offsets and rounds them, ours draws whole pixels;
- rotation / shift / zoom: Keras' RandomRotation, RandomTranslation and RandomZoom layers with
  the same ranges and fill, each resampling the image in turn (ours composes them into one
  affine map and resamples once; RandomZoom's factor and ImageDataGenerator's zoom differ in
  how they parametrise a zoom of the same range).

The test accuracy after each epoch comes from `model.evaluate` in a callback; the compile
time is not separable in `fit`, so `compile_s` is the wall time of its first train batch
(compile + one step).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from benchmarks.speedrun_config import RECIPES, SpeedrunConfig  # noqa: E402


def build_model(config: SpeedrunConfig, image_shape=(28, 28, 1), num_classes: int = 10):
    """The recipe's network as a keras.Sequential taking uint8 or float [N, H, W, C] pixels."""
    import keras
    from keras import layers, ops

    block = config.space_to_depth

    class SpaceToDepth(layers.Layer):
        def call(self, x):
            n, h, w, c = ops.shape(x)
            x = ops.reshape(x, (n, h // block, block, w // block, block, c))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
            return ops.reshape(x, (n, h // block, w // block, block * block * c))

        def compute_output_shape(self, shape):
            n, h, w, c = shape
            return (n, h // block, w // block, block * block * c)

    def l2():
        return keras.regularizers.L2(config.weight_decay / 2) if config.weight_decay else None

    init = keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
    stack = [keras.Input(image_shape), layers.Rescaling(1.0 / 255.0)]
    if config.shift:
        factor = config.shift / image_shape[0]
        stack.append(layers.RandomTranslation(factor, factor, fill_mode="constant",
                                              interpolation="nearest", fill_value=0.0))
    stack += augmentation_layers(dict(config.augment), image_shape)
    if block > 1:
        stack.append(SpaceToDepth())
    for features, pool in zip(config.widths, config.pools):
        stack += [layers.Conv2D(features, config.kernel_size, use_bias=False,
                                kernel_initializer=init, kernel_regularizer=l2()),
                  layers.BatchNormalization(momentum=config.bn_momentum,
                                            epsilon=config.bn_epsilon,
                                            gamma_regularizer=l2(), beta_regularizer=l2()),
                  layers.ReLU()]
        if pool:
            stack.append(layers.MaxPooling2D(2))
    stack.append(layers.Flatten())
    if config.hidden:
        stack += [layers.Dense(config.hidden, use_bias=False, kernel_initializer=init,
                               kernel_regularizer=l2()),
                  layers.BatchNormalization(momentum=config.bn_momentum,
                                            epsilon=config.bn_epsilon,
                                            gamma_regularizer=l2(), beta_regularizer=l2()),
                  layers.ReLU()]
    stack += [layers.Dense(num_classes, kernel_initializer=init, kernel_regularizer=l2(),
                           bias_regularizer=l2())]
    return keras.Sequential(stack)


def augmentation_layers(augment: dict, image_shape) -> list:
    """Keras 3 preprocessing layers for ImageDataGenerator keywords: RandomRotation,
    RandomTranslation, RandomZoom (each resamples on its own, bilinear, edges repeated)."""
    from keras import layers

    unknown = sorted(set(augment) - {"rotation_range", "zoom_range", "width_shift_range",
                                     "height_shift_range"})
    if unknown:
        raise ValueError(f"the Keras peer cannot apply augment keywords {unknown}")
    stack = []
    if augment.get("rotation_range"):
        stack.append(layers.RandomRotation(augment["rotation_range"] / 360.0,
                                           fill_mode="nearest"))
    width = augment.get("width_shift_range", 0.0)
    height = augment.get("height_shift_range", 0.0)
    if width or height:
        def fraction(spec, size):
            return spec / size if isinstance(spec, int) else spec
        stack.append(layers.RandomTranslation(fraction(height, image_shape[0]),
                                              fraction(width, image_shape[1]),
                                              fill_mode="nearest"))
    zoom = augment.get("zoom_range", 0.0)
    if zoom:
        low, high = (1 - zoom, 1 + zoom) if isinstance(zoom, (int, float)) else zoom
        # RandomZoom's factor f scales by 1 + f (f > 0 zooms out), ImageDataGenerator's
        # zoom z in [low, high] scales the sampled coordinates by z (z > 1 zooms out)
        stack.append(layers.RandomZoom((low - 1, high - 1), (low - 1, high - 1),
                                       fill_mode="nearest"))
    return stack


def run(recipe: str, seed: int, *, split: str = "test", t0: float, data_dir=None,
        npz: str | None = None, epochs: int | None = None) -> dict:
    """Trains one recipe with one seed in Keras 3; returns a record like `run_jax`'s."""
    import dataclasses

    import keras
    from keras import ops

    from benchmarks.speedrun_data import load_split

    phases = {"imports": time.time() - t0}
    config = RECIPES[recipe]
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    keras.utils.set_random_seed(seed)
    train_x, train_y, eval_x, eval_y = load_split(split, data_dir, npz)
    phases["data"] = time.time() - t0
    n = len(train_y)
    per_epoch = config.steps_per_epoch(n)
    total = config.total_steps(n)
    xs, ys = config.lr_breakpoints(total)

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            rising = ys[0] + (ys[1] - ys[0]) * step / max(xs[1], 1.0)
            falling = ys[1] + (ys[2] - ys[1]) * (step - xs[1]) / max(xs[2] - xs[1], 1.0)
            return ops.where(step <= xs[1], rising, falling)

    model = build_model(config, train_x.shape[1:])
    model.compile(optimizer=keras.optimizers.SGD(OneCycle(), momentum=config.momentum,
                                                 nesterov=True),
                  loss=keras.losses.CategoricalCrossentropy(
                      from_logits=True, label_smoothing=config.label_smoothing),
                  metrics=[])
    targets = np.eye(10, dtype=np.float32)[train_y]

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self):
            return per_epoch

        def __getitem__(self, index):
            rows = self.order[index]
            return train_x[rows], targets[rows]

        def on_epoch_end(self):
            self.order = self.rng.permutation(n)[: per_epoch * config.batch_size].reshape(
                per_epoch, config.batch_size)
    curve = []
    timing = {"eval_s": 0.0}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0 and "first" not in timing:
                timing["first"] = time.time()

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0 and "compile_s" not in timing:
                timing["compile_s"] = time.time() - timing["first"]

        def on_epoch_end(self, epoch, logs=None):
            start = time.time()
            predictions = self.model.predict(eval_x, batch_size=config.eval_batch_size,
                                             verbose=0)
            correct = int((predictions.argmax(-1) == eval_y).sum())
            now = time.time()
            timing["eval_s"] += now - start
            curve.append({"epoch": epoch + 1, "seconds": now - t0,
                          "accuracy": correct / len(eval_y)})

    fit_start = time.time()
    model.fit(Batches(), epochs=config.epochs, verbose=0, callbacks=[Clock()])
    train_s = time.time() - fit_start - timing["eval_s"]
    return {"system": "keras", "recipe": recipe, "seed": seed, "split": split,
            "accuracy": curve[-1]["accuracy"], "time_to_end_s": curve[-1]["seconds"],
            "compile_s": timing.get("compile_s", 0.0), "phases": phases, "train_s": train_s,
            "eval_s": timing["eval_s"], "images_per_s": total * config.batch_size / train_s,
            "curve": curve, "versions": {"keras": keras.__version__}}

"""The peer: the same work done the Keras way, timed in the same process on the same data.

- statistics: what Keras' `ImageDataGenerator.fit` does for featurewise statistics, in NumPy
  (`numpy_fit_stats`, always available) and Keras' own `fit` (when keras is installed);
- scaling: `ImageDataGenerator(**keywords).flow(x, batch_size, shuffle=False)` producing float32
  batches. Keras converts x to float32 once when the iterator is built (not timed, generous to
  Keras); each `next()` runs its per-image Python loop (`standardize` image by image), which is
  what is timed;
- training: Keras 3 (`KERAS_BACKEND=jax`) `train_on_batch` of the same BatchNorm CNN at batch
  64, fed float32 [0, 1] batches already in host memory (the Keras way: scaled before the step).

Keras is an optional extra: every function returning Keras figures returns None without it.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from benchmarks.timing import Timing, measure  # noqa: E402
from jaxscale import scaling  # noqa: E402

ZCA_FIT_IMAGES = 4096

def keras_mode_keywords(mode: str) -> dict:
    """Keras' keywords of a jaxscale mode name (`jaxscale.scaling.keras_keywords`)."""
    return scaling.keras_keywords(scaling.scaling_config(mode))


def keras_version() -> str | None:
    """keras.__version__, or None when it is not installed."""
    try:
        import keras
    except ImportError:
        return None
    return keras.__version__


def _legacy_generator_class():
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        return None
    return ImageDataGenerator


def keras_generator(mode: str, **extra):
    """Keras' legacy ImageDataGenerator for a jaxscale mode name, or None without keras."""
    cls = _legacy_generator_class()
    if cls is None:
        return None
    keywords = keras_mode_keywords(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**keywords, **extra)


def numpy_fit_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What Keras' `fit` computes for featurewise_center + std: float32 copy, np.mean, np.std.

    Args:
      images: uint8[N, H, W, C].

    Returns:
      (mean, std), float32[C] each.
    """
    x = np.asarray(images, dtype=np.float32)
    return np.mean(x, axis=(0, 1, 2)), np.std(x, axis=(0, 1, 2))


def keras_fit_fn(mode: str = "standardize"):
    """`fit(images)` running Keras' own `ImageDataGenerator.fit`; None without keras."""
    generator = keras_generator(mode)
    if generator is None:
        return None

    def fit(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            generator.fit(x)
        return None

    return fit


def keras_flow_iterator(images: np.ndarray, mode: str, *, batch_size: int,
                        augment: dict | None = None):
    """Keras' `flow` iterator of a mode (and an augmentation recipe), fitted; None without keras.

    Featurewise modes are fitted here (not timed). ZCA is fitted on at most `ZCA_FIT_IMAGES`
    images: Keras 3 takes the SVD of the whole data (a minute for MNIST on 2 cores), and what
    `flow` then does per image (a D x D matrix-vector product) does not depend on how many
    images the matrix came from.
    """
    generator = keras_generator(mode, **(augment or {}))
    if generator is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if generator.featurewise_center or generator.zca_whitening or \
                generator.featurewise_std_normalization:
            generator.fit(images[:ZCA_FIT_IMAGES] if generator.zca_whitening else images)
        return generator.flow(images, batch_size=batch_size, shuffle=False, seed=0)


def keras_flow_timing(images: np.ndarray, mode: str, *, batch_size: int, batches: int,
                      repeats: int = 3, augment: dict | None = None) -> Timing | None:
    """Keras' `flow` producing float32 batches: one warm-up batch, then each repeat times
    `batches` calls of `next()`. None without keras."""
    iterator = keras_flow_iterator(images, mode, batch_size=batch_size, augment=augment)
    if iterator is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure(lambda _: next(iterator), [None], items=batch_size, repeats=repeats,
                       warmup=1, calls_per_repeat=batches)


def keras_bn_cnn(image_shape=(28, 28, 1), num_classes: int = 10, learning_rate=1e-3):
    """Keras 3's twin of `jaxscale.models.BNCNN` (None without keras).

    Conv32-BN-ReLU, Conv32-BN-ReLU, Pool, Conv64-BN-ReLU, Conv64-BN-ReLU, Pool, Flatten,
    Dense512-BN-ReLU, Dropout 0.2, Dense(num_classes); 3x3 valid convolutions without bias,
    BatchNorm momentum 0.99 and epsilon 1e-3, Adam at `learning_rate` (a float or a Keras
    schedule; 1e-3 as jaxscale's TrainConfig default), integer labels, metric accuracy.
    """
    try:
        import keras
    except ImportError:
        return None
    layers = keras.layers

    def conv(filters):
        return [layers.Conv2D(filters, 3, padding="valid", use_bias=False),
                layers.BatchNormalization(momentum=0.99, epsilon=1e-3), layers.ReLU()]

    model = keras.Sequential([
        keras.Input(image_shape), *conv(32), *conv(32), layers.MaxPooling2D(),
        *conv(64), *conv(64), layers.MaxPooling2D(), layers.Flatten(),
        layers.Dense(512, use_bias=False), layers.BatchNormalization(momentum=0.99,
                                                                     epsilon=1e-3),
        layers.ReLU(), layers.Dropout(0.2), layers.Dense(num_classes)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    return model


def keras_train_timing(images: np.ndarray, labels: np.ndarray, *, batch_size: int = 64,
                       steps: int = 20, repeats: int = 3, warmup: int = 3
                       ) -> Timing | None:
    """Keras 3 `train_on_batch` of `keras_bn_cnn` on float32 [0, 1] batches; None without it.

    Batches are sliced in turn from the data (several buffers); each repeat is `steps` steps.
    """
    model = keras_bn_cnn(tuple(images.shape[1:]))
    if model is None:
        return None
    n_batches = max(1, min(len(images) // batch_size, steps))
    batches = [(images[i * batch_size:(i + 1) * batch_size].astype(np.float32) / 255.0,
                labels[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]
    return measure(lambda b: model.train_on_batch(*b), batches, items=batch_size,
                   repeats=repeats, warmup=warmup, calls_per_repeat=steps)


def keras_small_cnn(image_shape=(28, 28, 1), num_classes: int = 10):
    """The tutorial's small CNN exactly as it builds it in Keras 3 (None without keras):
    Conv32-Pool-Conv64-Pool-Flatten-Dense64-Dense(softmax), ReLU, valid padding, Keras'
    default initialisers; Adam (Keras' defaults) and categorical cross-entropy."""
    try:
        import keras
    except ImportError:
        return None
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(image_shape), layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(), layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(64, activation="relu"),
        layers.Dense(num_classes, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_tutorial_accuracy(mode: str, train_images: np.ndarray, train_labels: np.ndarray,
                            test_images: np.ndarray, test_labels: np.ndarray, *, seed: int,
                            epochs: int = 5, batch_size: int = 64, model: str = "small_cnn",
                            augment: dict | None = None, schedule: str = "constant"
                            ) -> float | None:
    """Test accuracy (percent) of a tutorial's recipe run by Keras itself; None without keras.

    The tutorials' steps: `ImageDataGenerator(<mode's keywords>, <augment keywords>)`, `fit`
    on the training images, `flow` over train (augmented) and test (not) at `batch_size`, the
    model `fit` for `epochs` (every batch of the flow for the small CNN, as tutorial 000;
    `N // batch_size` steps for the BN CNN, as tutorial 001), then `evaluate` on the test
    flow. `keras.utils.set_random_seed(seed)` seeds initialisation, shuffling and
    augmentation.

    Args:
      mode: a `jaxscale.scaling.MODES` name ("normalize", "center", "standardize", ...).
      train_images, test_images: uint8[N, H, W, C]; train_labels, test_labels: int[N].
      model: "small_cnn" (`keras_small_cnn`, one-hot labels) or "bn_cnn" (`keras_bn_cnn`).
      augment: Keras augmentation keywords for the training flow
        (`jaxscale.augmentation.keras_keywords`).
      schedule: "constant" Adam 1e-3, or "cosine" from 1e-3 to 0 over the run (bn_cnn only).
    """
    if model not in ("small_cnn", "bn_cnn"):
        raise ValueError(f"no Keras twin for model {model!r}")
    if schedule != "constant" and model != "bn_cnn":
        raise ValueError("a learning-rate schedule is only wired for the bn_cnn twin")
    train_generator = keras_generator(mode, **(augment or {}))
    if train_generator is None:
        return None
    # The test flow scales only; it needs its own generator (fitted alike) when training augments.
    test_generator = keras_generator(mode) if augment else train_generator
    import keras
    keras.utils.set_random_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    if model == "small_cnn":
        train_targets = keras.utils.to_categorical(train_labels, num_classes)
        test_targets = keras.utils.to_categorical(test_labels, num_classes)
    else:
        train_targets, test_targets = np.asarray(train_labels), np.asarray(test_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_generator.fit(train_images)
        if test_generator is not train_generator:
            test_generator.fit(train_images)
        train_flow = train_generator.flow(train_images, train_targets, batch_size=batch_size)
        test_flow = test_generator.flow(test_images, test_targets, batch_size=batch_size)
        shape = tuple(train_images.shape[1:])
        if model == "small_cnn":
            network, steps = keras_small_cnn(shape, num_classes), len(train_flow)
        else:
            steps = len(train_images) // batch_size
            rate = (1e-3 if schedule == "constant" else
                    keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps * epochs))
            network = keras_bn_cnn(shape, num_classes, learning_rate=rate)
        network.fit(train_flow, steps_per_epoch=steps, epochs=epochs, verbose=0)
        _, accuracy = network.evaluate(test_flow, steps=len(test_flow), verbose=0)
    return float(accuracy) * 100.0

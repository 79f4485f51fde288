"""End to end: the tutorial's small CNN trained by Keras on jaxscale's flow reaches the accuracy
Keras' own ImageDataGenerator gives it, on real MNIST with the same seed (issue 15)."""

import os
import warnings

import numpy as np
import pytest

import jaxscale
from jaxscale.data.datasets import load_dataset

pytestmark = pytest.mark.slow


def tutorial_cnn(keras):
    """Tutorial 000's model, as it writes it (Keras 3 spelling)."""
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)), layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)), layers.Flatten(), layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def tutorial_accuracy(generator_class, keras, train, test, *, seed: int, steps: int) -> float:
    """The tutorial's steps with `generator_class` as ImageDataGenerator: percent accuracy."""
    keras.utils.set_random_seed(seed)
    train_y = keras.utils.to_categorical(train.labels, 10)
    test_y = keras.utils.to_categorical(test.labels, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datagen = generator_class(rescale=1.0 / 255.0)
        train_iterator = datagen.flow(train.images, train_y, batch_size=64)
        test_iterator = datagen.flow(test.images, test_y, batch_size=64)
        model = tutorial_cnn(keras)
        model.fit(train_iterator, steps_per_epoch=steps, epochs=1, verbose=0)
        _, accuracy = model.evaluate(test_iterator, steps=len(test_iterator), verbose=0)
    return 100.0 * accuracy


def test_tutorial_cnn_on_our_flow_reaches_keras_accuracy(mnist_dir):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    import keras
    train = load_dataset("mnist", "train", data_dir=mnist_dir, source="raw")
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="raw")
    steps = 600  # 38400 images: past the steep part of the curve, ~1 minute per side
    ours = tutorial_accuracy(jaxscale.ImageDataGenerator, keras, train, test, seed=0,
                             steps=steps)
    theirs = tutorial_accuracy(legacy.ImageDataGenerator, keras, train, test, seed=0,
                               steps=steps)
    print(f"test accuracy after {steps} steps: jaxscale flow {ours:.2f} %, Keras flow "
          f"{theirs:.2f} %")
    assert ours > 95.0 and theirs > 95.0
    assert abs(ours - theirs) <= 0.5


def python_blocks(path):
    text = open(path).read()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_docs_keras_examples_run_and_print_what_the_page_shows(tmp_path, mnist_dir):
    import subprocess
    import sys
    from PIL import Image
    pytest.importorskip("keras")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    page = os.path.join(root, "docs", "keras.md")
    tutorial, folders = python_blocks(page)
    train = load_dataset("mnist", "train", data_dir=mnist_dir, source="raw")
    digits = tmp_path / "digits"
    for i in range(1000):
        (digits / str(train.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(train.images[i, ..., 0]).save(digits / str(train.labels[i]) / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": root, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    shown = open(page).read()
    for code in (tutorial, folders.replace("/tmp/digits", str(digits))):
        done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = [line for line in done.stdout.splitlines() if line.strip()]
        for line in printed:
            if "step" in line or "Accuracy" in line:
                continue  # timings and the accuracy vary by machine
            assert line in shown, line

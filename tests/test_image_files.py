"""Folders and dataframes of image files: reading, flow_from_directory / flow_from_dataframe and
load_image_folder, against Keras itself on the same files (written here from real MNIST)."""

import os
import warnings

import numpy as np
import pytest

import jaxscale
from jaxscale.data import image_files
from jaxscale.data.datasets import load_dataset

PIL = pytest.importorskip("PIL.Image")


def keras_image():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip("keras.src.legacy.preprocessing.image")


def keras_generator(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras_image().ImageDataGenerator(**kwargs)


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """The first 40 MNIST test digits: uint8[40, 28, 28], labels int[40]."""
    test = load_dataset("mnist", "test", data_dir=mnist_dir, source="raw")
    return test.images[:40, ..., 0], test.labels[:40]


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, digits):
    """digits/<label>/<i>.png for the digits 0, 1, 2, 7 among the first 40, grayscale PNG."""
    root = tmp_path_factory.mktemp("png") / "digits"
    images, labels = digits
    for i, (image, label) in enumerate(zip(images, labels)):
        if label in (0, 1, 2, 7):
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            PIL.fromarray(image, "L").save(root / str(label) / f"{i:03d}.png")
    (root / "7" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, digits):
    """colour/<a|b>/<i>.jpg: MNIST digits tinted to RGB, at varied sizes, as JPEG; and a
    nested subfolder, which Keras' listing walks into."""
    root = tmp_path_factory.mktemp("jpeg") / "colour"
    images, _ = digits
    rng = np.random.default_rng(0)
    for i, image in enumerate(images[:12]):
        tint = rng.uniform(0.3, 1.0, 3)
        rgb = (image[..., None] * tint).astype(np.uint8)
        size = (28 + 3 * i, 28 + 5 * (i % 4))  # (width, height), several aspect ratios
        folder = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(rgb, "RGB").resize(size).save(folder / f"{i:02d}.jpg", quality=90)
    return root


# --------------------------------------------------------------------------- single images

@pytest.mark.parametrize("color_mode", ["grayscale", "rgb", "rgba"])
@pytest.mark.parametrize("target_size, interpolation, keep", [
    (None, "nearest", False), ((20, 24), "nearest", False), ((32, 16), "bilinear", False),
    ((24, 24), "bicubic", True), ((16, 30), "lanczos", True)])
def test_load_image_reads_what_keras_load_img_reads(jpeg_folder, color_mode, target_size,
                                                    interpolation, keep):
    from keras.src.utils import image_utils
    keras_image()
    for path in sorted(jpeg_folder.rglob("*.jpg"))[:4]:
        ours = image_files.load_image(path, color_mode=color_mode, target_size=target_size,
                                      interpolation=interpolation, keep_aspect_ratio=keep)
        theirs = image_utils.img_to_array(image_utils.load_img(
            path, color_mode=color_mode, target_size=target_size,
            interpolation=interpolation, keep_aspect_ratio=keep))
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, theirs)


def test_sixteen_bit_grayscale_is_read_as_eight_bits(tmp_path):
    # Documented difference: Keras keeps 16-bit values (float32 0..65535).
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    PIL.fromarray(values).save(tmp_path / "deep.png")  # mode I;16
    ours = image_files.load_image(tmp_path / "deep.png", color_mode="grayscale")
    np.testing.assert_array_equal(ours[..., 0], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize("kwargs, message", [
    ({"color_mode": "cmyk"}, "color mode"), ({"interpolation": "cubic"}, "interpolation"),
    ({"target_size": (0, 5)}, "target_size"), ({"target_size": 28}, "target_size")])
def test_bad_image_options_raise(png_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxscale.ImageDataGenerator().flow_from_directory(png_folder, **kwargs)


# ------------------------------------------------------------------------ flow_from_directory

def assert_same_batches(ours, theirs, batches):
    for _ in range(batches):
        a, b = next(ours), next(theirs)
        a, b = (a, b) if isinstance(b, tuple) else ((a,), (b,))
        assert len(a) == len(b)
        for o, k in zip(a, b):
            assert np.asarray(o).shape == k.shape
            np.testing.assert_allclose(np.asarray(o), k, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("class_mode", ["categorical", "binary", "sparse", "input", None])
def test_flow_from_directory_gives_keras_pixels_and_labels(png_folder, class_mode):
    keras_image()
    classes = ["1", "7"] if class_mode == "binary" else None
    kwargs = dict(target_size=(28, 28), color_mode="grayscale", classes=classes,
                  class_mode=class_mode, batch_size=5, shuffle=False)
    theirs = keras_generator(rescale=1 / 255).flow_from_directory(png_folder, **kwargs)
    ours = jaxscale.ImageDataGenerator(rescale=1 / 255).flow_from_directory(png_folder,
                                                                            **kwargs)
    assert ours.filenames == theirs.filenames and ours.class_indices == theirs.class_indices
    np.testing.assert_array_equal(ours.classes, theirs.classes)
    assert (len(ours), ours.samples, ours.num_classes, ours.image_shape) == (
        len(theirs), theirs.samples, theirs.num_classes, theirs.image_shape)
    assert_same_batches(ours, theirs, len(ours))


@pytest.mark.parametrize("color_mode, target_size, interpolation, keep", [
    ("rgb", (20, 24), "bilinear", False), ("grayscale", (28, 28), "nearest", True),
    ("rgba", (16, 16), "bicubic", True)])
def test_flow_from_directory_resizes_jpegs_as_keras(jpeg_folder, color_mode, target_size,
                                                    interpolation, keep):
    keras_image()
    kwargs = dict(target_size=target_size, color_mode=color_mode, class_mode="sparse",
                  batch_size=4, shuffle=False, interpolation=interpolation,
                  keep_aspect_ratio=keep)
    theirs = keras_generator(featurewise_center=False).flow_from_directory(jpeg_folder,
                                                                           **kwargs)
    ours = jaxscale.ImageDataGenerator().flow_from_directory(jpeg_folder, **kwargs)
    assert ours.filenames == theirs.filenames
    assert any(os.sep + "deep" + os.sep in f for f in ours.filenames)
    assert_same_batches(ours, theirs, len(ours))


@pytest.mark.parametrize("subset", ["training", "validation"])
def test_flow_from_directory_subsets_split_each_class_folder_as_keras(png_folder, subset):
    keras_image()
    kwargs = dict(target_size=(28, 28), color_mode="grayscale", class_mode="sparse",
                  batch_size=4, shuffle=False, subset=subset)
    theirs = keras_generator(validation_split=0.3).flow_from_directory(png_folder, **kwargs)
    ours = jaxscale.ImageDataGenerator(validation_split=0.3).flow_from_directory(png_folder,
                                                                                 **kwargs)
    assert ours.filenames == theirs.filenames and 0 < ours.samples < 20
    assert_same_batches(ours, theirs, len(ours))


def test_flow_from_directory_follows_links_only_when_asked(tmp_path, png_folder):
    root = tmp_path / "linked"
    (root / "a").mkdir(parents=True)
    os.symlink(png_folder / "1", root / "a" / "ones")
    plain = jaxscale.ImageDataGenerator().flow_from_directory(root, target_size=(28, 28))
    followed = jaxscale.ImageDataGenerator().flow_from_directory(root, target_size=(28, 28),
                                                                 follow_links=True)
    assert plain.samples == 0 and followed.samples == len(list((png_folder / "1").iterdir()))
    with pytest.raises(ValueError, match="no images"):
        next(plain)


def test_directory_flows_are_shuffled_augmented_and_fit_a_keras_model(png_folder):
    keras_image()
    import keras
    gen = jaxscale.ImageDataGenerator(rescale=1 / 255, rotation_range=10, zoom_range=0.1)
    flow = gen.flow_from_directory(png_folder, target_size=(28, 28), color_mode="grayscale",
                                   class_mode="sparse", batch_size=4, seed=3, decode_workers=2)
    assert isinstance(flow, keras.utils.PyDataset)
    epoch = np.concatenate([np.asarray(flow[i][1]) for i in range(len(flow))])
    np.testing.assert_array_equal(np.sort(epoch), np.sort(flow.classes.astype(np.float32)))
    assert not np.array_equal(epoch, flow.classes)  # shuffled
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(flow, epochs=1, verbose=0)
    assert model.predict(gen.flow_from_directory(png_folder, target_size=(28, 28),
                                                 color_mode="grayscale", class_mode=None,
                                                 shuffle=False, batch_size=8),
                         verbose=0).shape == (flow.samples, 4)


def test_channels_first_directory_flow_transposes_on_device(png_folder):
    kwargs = dict(target_size=(28, 28), color_mode="rgb", class_mode=None, batch_size=6,
                  shuffle=False)
    last = next(jaxscale.ImageDataGenerator().flow_from_directory(png_folder, **kwargs))
    first = jaxscale.ImageDataGenerator(data_format="channels_first").flow_from_directory(
        png_folder, **kwargs)
    assert first.image_shape == (3, 28, 28)
    np.testing.assert_array_equal(np.asarray(next(first)),
                                  np.transpose(np.asarray(last), (0, 3, 1, 2)))


def test_image_file_reader_serves_the_data_pipeline(png_folder):
    listing = image_files.list_directory(png_folder)
    reader = image_files.ImageFileReader([png_folder / f for f in listing.filenames],
                                         listing.classes, target_size=(28, 28),
                                         color_mode="grayscale", workers=2)
    from jaxscale.data.pipeline import HostSource
    batches = list(HostSource(reader).batches(0, 0, 8))
    images = np.concatenate([np.asarray(b.images)[np.asarray(b.mask)] for b in batches])
    labels = np.concatenate([np.asarray(b.labels)[np.asarray(b.mask)] for b in batches])
    direct, direct_labels = reader.read(np.arange(len(reader)))
    order = np.argsort(labels * 1000 + images.reshape(len(images), -1).sum(1), kind="stable")
    expect = np.argsort(direct_labels * 1000 + direct.reshape(len(direct), -1).sum(1),
                        kind="stable")
    np.testing.assert_array_equal(images[order], direct[expect])
    assert reader.num_classes == 4 and reader.image_shape == (28, 28, 1)


# ------------------------------------------------------------------------ flow_from_dataframe

@pytest.fixture(scope="module")
def frame(png_folder):
    pandas = pytest.importorskip("pandas")
    names = sorted(str(p.relative_to(png_folder)) for p in png_folder.rglob("*.png"))
    labels = [os.path.dirname(n) for n in names]
    return pandas.DataFrame({
        "filename": names + ["missing.png", "7/notes.txt"],
        "class": labels + ["0", "7"],
        "tags": [[lab, "odd" if int(lab) % 2 else "even"] for lab in labels] + [["0"], ["7"]],
        "value": np.arange(len(names) + 2, dtype=np.float64) / 3,
        "second": np.arange(len(names) + 2) % 5,
        "weight": np.linspace(0.5, 2.0, len(names) + 2),
    })


@pytest.mark.parametrize("class_mode, y_col, weight_col, classes", [
    ("categorical", "class", None, None),
    ("categorical", "tags", "weight", None),      # multi-label one-hot
    ("sparse", "class", "weight", ["7", "1", "2"]),
    ("binary", "class", None, ["0", "1"]),
    ("raw", "value", None, None),
    ("raw", ["value", "second"], "weight", None),
    ("multi_output", ["value", "second"], None, None),
    ("input", "class", None, None),
    (None, "class", None, None),
])
def test_flow_from_dataframe_gives_keras_batches(png_folder, frame, class_mode, y_col,
                                                 weight_col, classes):
    keras_image()
    kwargs = dict(directory=str(png_folder), y_col=y_col, weight_col=weight_col,
                  classes=classes, class_mode=class_mode, target_size=(28, 28),
                  color_mode="grayscale", batch_size=6, shuffle=False)
    with warnings.catch_warnings(record=True) as keras_warnings:
        warnings.simplefilter("always")
        theirs = keras_generator(rescale=1 / 255).flow_from_dataframe(frame, **kwargs)
    with warnings.catch_warnings(record=True) as our_warnings:
        warnings.simplefilter("always")
        ours = jaxscale.ImageDataGenerator(rescale=1 / 255).flow_from_dataframe(frame,
                                                                                **kwargs)
    keras_messages = sorted(str(w.message) for w in keras_warnings if "invalid" in
                            str(w.message))
    assert sorted(str(w.message) for w in our_warnings if "invalid" in str(w.message)) == (
        keras_messages) and keras_messages
    assert ours.filenames == theirs.filenames and ours.samples == theirs.samples
    if class_mode not in ("raw", "multi_output", "input", None):
        assert ours.class_indices == theirs.class_indices and ours.classes == theirs.classes
    for _ in range(len(ours)):
        a, b = next(ours), next(theirs)
        flat_a = [a] if not isinstance(a, (tuple, list)) else [
            z for part in a for z in (part if isinstance(part, list) else [part])]
        flat_b = [b] if not isinstance(b, (tuple, list)) else [
            z for part in b for z in (part if isinstance(part, list) else [part])]
        assert [type(p) for p in (a if isinstance(a, tuple) else (a,))
                if isinstance(p, list)] == [type(p) for p in (
                    b if isinstance(b, tuple) else (b,)) if isinstance(p, list)]
        assert len(flat_a) == len(flat_b)
        for o, k in zip(flat_a, flat_b):
            np.testing.assert_allclose(np.asarray(o, np.float64), np.asarray(k, np.float64),
                                       rtol=1e-6, atol=1e-6)


def test_flow_from_dataframe_rejects_what_keras_rejects(frame, png_folder):
    gen = jaxscale.ImageDataGenerator()
    with pytest.raises(TypeError, match="y_col must be a list"):
        gen.flow_from_dataframe(frame, str(png_folder), y_col="class",
                                class_mode="multi_output")
    with pytest.raises(ValueError, match="there must be 2 classes"):
        gen.flow_from_dataframe(frame, str(png_folder), class_mode="binary")
    with pytest.raises(ValueError, match="Invalid class_mode"):
        gen.flow_from_dataframe(frame, str(png_folder), class_mode="onehot")
    with pytest.raises(TypeError, match="must be numeric"):
        gen.flow_from_dataframe(frame, str(png_folder), weight_col="class")
    # Keras warns of class_mode "other" and, as for any frame, of the rows whose file is not
    # a valid image (the frame's last two)
    with pytest.warns(DeprecationWarning, match="class_mode"), \
            pytest.warns(UserWarning, match="2 invalid image filename"):
        gen.flow_from_dataframe(frame, str(png_folder), y_col="value", class_mode="other",
                                target_size=(28, 28))


def test_unvalidated_dataframe_keeps_every_name(frame, png_folder):
    kept = frame.iloc[:-2]
    ours = jaxscale.ImageDataGenerator().flow_from_dataframe(
        kept, str(png_folder), validate_filenames=False, target_size=(28, 28),
        class_mode="sparse")
    assert ours.samples == len(kept)


# -------------------------------------------------------------------------- load_image_folder

def test_load_image_folder_is_the_unshuffled_directory_flow_as_uint8(png_folder):
    folder = jaxscale.load_image_folder(png_folder, image_size=(28, 28),
                                        color_mode="grayscale", workers=2)
    assert isinstance(folder, jaxscale.Dataset)
    assert folder.images.dtype == np.uint8 and folder.images.shape[1:] == (28, 28, 1)
    assert folder.class_names == ("0", "1", "2", "7") and folder.num_classes == 4
    flow = jaxscale.ImageDataGenerator().flow_from_directory(
        png_folder, target_size=(28, 28), color_mode="grayscale", class_mode="sparse",
        shuffle=False, batch_size=len(folder))
    images, labels = next(flow)
    np.testing.assert_array_equal(folder.images, np.asarray(images).astype(np.uint8))
    np.testing.assert_array_equal(folder.labels, np.asarray(labels))
    assert list(folder.filenames) == flow.filenames
    part = folder.take(slice(2, 5))
    assert part.filenames == folder.filenames[2:5] and len(part) == 3


def test_load_image_folder_validation_split_is_per_class(png_folder):
    train = jaxscale.load_image_folder(png_folder, image_size=(28, 28), validation_split=0.34,
                                       subset="training")
    val = jaxscale.load_image_folder(png_folder, image_size=(28, 28), validation_split=0.34,
                                     subset="validation")
    # 5, 7, 3 and 5 digits per class: int(0.34 * n) of each held out
    assert len(val) == 1 + 2 + 1 + 1 and len(train) == 20 - len(val)
    assert set(val.labels.tolist()) == {0, 1, 2, 3}
    assert not set(train.filenames) & set(val.filenames)
    with pytest.raises(ValueError, match="subset"):
        jaxscale.load_image_folder(png_folder, validation_split=0.25)


def test_decoding_processes_report_a_broken_file_and_keep_working(tmp_path, png_folder):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    good = sorted(png_folder.rglob("*.png"))[:3]
    reader = image_files.ImageFileReader([*good, broken], target_size=(28, 28),
                                         color_mode="grayscale", workers=2)
    try:
        with pytest.raises(ValueError, match="decoding an image failed"):
            reader.read_images(np.arange(4))
        np.testing.assert_array_equal(reader.read_images(np.arange(3)),
                                      image_files.ImageFileReader(
                                          good, target_size=(28, 28), color_mode="grayscale",
                                          workers=1).read_images(np.arange(3)))
    finally:
        reader.close()

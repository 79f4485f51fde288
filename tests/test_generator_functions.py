"""Keras' module-level image functions against Keras itself, same seeds and images."""

import os

import numpy as np
import pytest

from jaxscale.generator import functions


@pytest.fixture(scope="module")
def keras_image():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return pytest.importorskip("keras.src.legacy.preprocessing.image")


def image(shape=(3, 12, 12), seed=0, dtype=np.float32):
    values = np.random.default_rng(seed).uniform(0, 255, shape)
    return values.astype(dtype)


CHANNELS_FIRST = {}
CHANNELS_LAST = {"row_axis": 0, "col_axis": 1, "channel_axis": 2}


@pytest.mark.parametrize("name, args", [
    ("random_rotation", (30,)), ("random_shift", (0.2, 0.2)), ("random_shear", (20,)),
    ("random_zoom", ((0.7, 1.3),)),
])
@pytest.mark.parametrize("axes", [CHANNELS_FIRST, CHANNELS_LAST])
@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_random_geometry_equals_keras_after_the_same_numpy_seed(keras_image, name, args, axes,
                                                                fill_mode):
    x = image() if not axes else np.transpose(image(), (1, 2, 0)).copy()
    np.random.seed(3)
    ours = getattr(functions, name)(x, *args, fill_mode=fill_mode, cval=7.0, **axes)
    np.random.seed(3)
    theirs = getattr(keras_image, name)(x, *args, fill_mode=fill_mode, cval=7.0, **axes)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    # bilinear weights in float32 on values up to 255: a few float32 ulps of 255
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_random_shift_moves_columns_by_the_width_range(keras_image):
    # Documented difference: Keras moves columns by hrg * height and rows by wrg * width.
    x = np.zeros((1, 10, 10), np.float32)
    x[0, :, 5] = 100.0  # one bright column

    def column_centre(out):
        middle_row = out[0, 5]
        return float((np.arange(10) * middle_row).sum() / middle_row.sum())

    np.random.seed(4)
    tx = np.random.uniform(-0.3, 0.3) * 10  # the first draw: the column shift
    np.random.seed(4)
    ours = functions.random_shift(x, 0.3, 0.0, fill_mode="constant")
    assert abs(tx) > 0.5
    assert column_centre(ours) == pytest.approx(5 - tx, abs=1e-4)  # content moves left by tx
    np.random.seed(4)
    keras = keras_image.random_shift(x, 0.3, 0.0, fill_mode="constant")
    assert column_centre(keras) == pytest.approx(5.0, abs=1e-6)  # Keras moved rows instead


def test_apply_affine_transform_keeps_integer_dtypes_as_keras(keras_image):
    x = image(dtype=np.uint8)
    params = dict(theta=20, tx=1.3, ty=-0.7, shear=5, zx=1.1, zy=0.9)
    ours = functions.apply_affine_transform(x, **params)
    theirs = keras_image.apply_affine_transform(x, **params)
    assert ours.dtype == np.uint8
    # scipy rounds half up from float64, we from float32: a .5 within rounding may differ
    assert np.abs(ours.astype(int) - theirs).max() <= 1 and np.mean(ours != theirs) < 0.01


def test_identity_affine_transform_returns_the_image(keras_image):
    x = image()
    np.testing.assert_array_equal(functions.apply_affine_transform(x), x)


@pytest.mark.parametrize("channel_axis", [0, 2])
def test_channel_shift_equals_keras(keras_image, channel_axis):
    x = image() if channel_axis == 0 else np.transpose(image(), (1, 2, 0)).copy()
    np.random.seed(5)
    ours = functions.random_channel_shift(x, 60.0, channel_axis=channel_axis)
    np.random.seed(5)
    theirs = keras_image.random_channel_shift(x, 60.0, channel_axis=channel_axis)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(functions.apply_channel_shift(x, -20.0, channel_axis),
                               keras_image.apply_channel_shift(x, -20.0, channel_axis),
                               atol=1e-4)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("low", [0.0, -50.0])
def test_brightness_equals_keras_up_to_its_8_bit_rounding(keras_image, scale, low):
    x = np.transpose(image(), (1, 2, 0)).copy() + low
    np.random.seed(2)
    ours = functions.random_brightness(x, (0.5, 1.5), scale)
    np.random.seed(2)
    theirs = keras_image.random_brightness(x, (0.5, 1.5), scale)
    # Keras truncates to uint8 (< 1 level), scales by <= 1.5 and rounds (0.5 level), in
    # units of the image's range over 255 when it maps back to the image's own range
    levels = 1.5 * 1 + 0.5
    unit = 1.0 if (scale or low >= 0) else (x.max() - x.min()) / 255
    np.testing.assert_allclose(ours, theirs, atol=levels * unit + 1e-3)


def test_functions_check_their_arguments_as_keras(keras_image):
    x = image()
    for module in (functions, keras_image):
        with pytest.raises(ValueError, match="distinct"):
            module.apply_affine_transform(x, theta=10, row_axis=1, col_axis=1)
        with pytest.raises(ValueError, match="multi-channel"):
            module.apply_affine_transform(x[0], theta=10)
        with pytest.raises(ValueError, match="zoom_range"):
            module.random_zoom(x, (0.9,))
        with pytest.raises(ValueError, match="brightness_range"):
            module.random_brightness(np.transpose(x, (1, 2, 0)), (0.9,))

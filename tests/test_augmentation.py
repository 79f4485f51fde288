"""jaxscale.augmentation against jnp.roll / jnp.rot90, hand-made fills, scipy and Keras."""

import numpy as np
import pytest
import scipy.ndimage

import jax
import jax.numpy as jnp

from jaxscale import augmentation as aug
from jaxscale.augmentation import AugmentConfig, Transforms

MODES = ("constant", "nearest", "reflect", "wrap", "grid-wrap")
KERAS_MODES = ("constant", "nearest", "reflect", "wrap")


def random_images(n=4, h=12, w=12, c=1, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, c))
    return (x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(dtype)


def one(**params):
    """Transforms for a single image from Keras-style parameters."""
    return aug.transforms_from_dicts([params])


def keras_image_module():
    pytest.importorskip("keras")
    from keras.src.legacy.preprocessing import image as keras_image
    return keras_image


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_identity_config_only_converts_to_float32(dtype, data_format):
    x = random_images(3, 5, 7, 3, dtype=dtype)
    if data_format == "channels_first":
        x = np.transpose(x, (0, 3, 1, 2))
    config = AugmentConfig(data_format=data_format)
    assert config.is_identity
    out = aug.augment_jit(jax.random.PRNGKey(0), x, config)
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), x.astype(np.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", [0, 1])
def test_identity_transform_with_geometry_enabled_is_exact(mode, order):
    x = random_images(2, 6, 9)
    config = AugmentConfig(rotation_range=30, fill_mode=mode, interpolation_order=order)
    out = aug.apply_transforms(x, Transforms.identity(2), config)
    np.testing.assert_allclose(np.asarray(out), x, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("tx,ty", [(2, 0), (0, -3), (3, 1), (-1, -2)])
def test_integer_shifts_equal_roll_in_the_interior(mode, order, tx, ty):
    x = random_images(1, 10, 11)
    config = AugmentConfig(width_shift_range=5, fill_mode=mode, interpolation_order=order)
    out = np.asarray(aug.apply_transforms(x, one(tx=tx, ty=ty), config))[0]
    # tx moves the content left by tx columns, ty up by ty rows (Keras' apply_transform).
    rolled = np.asarray(jnp.roll(x[0], (-ty, -tx), axis=(0, 1)))
    inner = (slice(3, -3), slice(3, -3))
    np.testing.assert_allclose(out[inner], rolled[inner], atol=1e-5)


@pytest.mark.parametrize("theta,k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
def test_right_angle_rotations_equal_rot90_counter_clockwise(theta, k):
    x = random_images(1, 9, 9, 2)
    config = AugmentConfig(rotation_range=360, fill_mode="constant", cval=-1.0)
    out = np.asarray(aug.apply_transforms(x, one(theta=theta), config))[0]
    np.testing.assert_allclose(out, np.rot90(x[0], k, axes=(0, 1)), atol=1e-5)


def test_rotation_direction_is_keras_direction():
    keras_image = keras_image_module()
    x = np.zeros((7, 7, 1), np.float32)
    x[0, 2, 0] = 1.0  # an asymmetric mark: the direction shows
    expected = keras_image.apply_affine_transform(
        x, theta=90, row_axis=0, col_axis=1, channel_axis=2, fill_mode="constant", order=1)
    out = np.asarray(aug.apply_transforms(x[None], one(theta=90),
                                          AugmentConfig(rotation_range=90)))[0]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out, np.rot90(x, 1, axes=(0, 1)), atol=1e-5)
    assert not np.allclose(out, np.rot90(x, -1, axes=(0, 1)))


@pytest.mark.parametrize("mode,expected", [
    ("constant", [9, 9, 1, 2, 3]),
    ("nearest", [1, 1, 1, 2, 3]),
    ("reflect", [2, 1, 1, 2, 3]),    # d c b a | a b c d
    ("wrap", [3, 4, 1, 2, 3]),       # scipy/Keras: period n - 1
    ("grid-wrap", [4, 5, 1, 2, 3]),  # period n, as jnp.roll
])
@pytest.mark.parametrize("order", [0, 1])
def test_each_fill_mode_on_a_hand_made_image(mode, expected, order):
    x = np.array([1, 2, 3, 4, 5], np.float32).reshape(1, 1, 5, 1)
    config = AugmentConfig(width_shift_range=3, fill_mode=mode, cval=9.0,
                           interpolation_order=order)
    out = aug.apply_transforms(x, one(tx=-2), config)  # content moves right by 2
    np.testing.assert_allclose(np.asarray(out).reshape(5), expected, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("hw", [(12, 12), pytest.param((9, 14), marks=pytest.mark.numerics)])
def test_resample_agrees_with_scipy_affine_transform(mode, order, hw):
    rng = np.random.default_rng(1)
    x = rng.random(hw + (2,)).astype(np.float32)
    config = AugmentConfig(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                           shear_range=20, zoom_range=0.3, horizontal_flip=True,
                           vertical_flip=True)
    transforms = aug.sample_transforms(jax.random.PRNGKey(3), 6, hw, config)
    matrices = np.asarray(aug.transform_matrices(transforms, hw), np.float64)
    for matrix in matrices:
        ours = np.asarray(aug.resample(jnp.asarray(x), jnp.asarray(matrix, jnp.float32),
                                       fill_mode=mode, cval=-2.0, order=order))
        ref = np.stack([scipy.ndimage.affine_transform(
            x[..., ch].astype(np.float64), matrix[:2, :2], matrix[:2, 2], order=order,
            mode=mode, cval=-2.0) for ch in range(2)], axis=-1)
        if order == 1:
            np.testing.assert_allclose(ours, ref, atol=1e-4)
        else:  # a coordinate within float32 error of a half-pixel may round either way
            assert np.mean(np.abs(ours - ref) > 1e-4) < 0.01


@pytest.mark.numerics
@pytest.mark.parametrize("mode", KERAS_MODES)
def test_matches_keras_apply_affine_transform(mode):
    keras_image = keras_image_module()
    x = random_images(1, 16, 16, 3, seed=2)[0]
    config = AugmentConfig(rotation_range=30, width_shift_range=0.2, height_shift_range=0.2,
                           shear_range=15, zoom_range=0.25, fill_mode=mode, cval=0.5)
    transforms = aug.sample_transforms(jax.random.PRNGKey(5), 5, (16, 16), config)
    ours = np.asarray(aug.apply_transforms(np.repeat(x[None], 5, 0), transforms, config))
    for i, p in enumerate(aug.transforms_to_dicts(transforms, config)):
        expected = keras_image.apply_affine_transform(
            x, p["theta"], p["tx"], p["ty"], p["shear"], p["zx"], p["zy"], row_axis=0,
            col_axis=1, channel_axis=2, fill_mode=mode, cval=0.5, order=1)
        np.testing.assert_allclose(ours[i], expected, atol=1e-4)


@pytest.mark.numerics
def test_matches_keras_apply_transform_with_flips_and_channel_shift():
    keras_image = keras_image_module()
    config = AugmentConfig(rotation_range=20, width_shift_range=0.1, horizontal_flip=True,
                           vertical_flip=True, channel_shift_range=40.0)
    keras_gen = keras_image.ImageDataGenerator(
        rotation_range=20, width_shift_range=0.1, horizontal_flip=True, vertical_flip=True,
        channel_shift_range=40.0)
    x = random_images(8, 10, 10, 3, seed=4) * 255
    transforms = aug.sample_transforms(jax.random.PRNGKey(1), 8, (10, 10), config)
    ours = np.asarray(aug.apply_transforms(x, transforms, config))
    dicts = aug.transforms_to_dicts(transforms, config)
    assert {d["flip_horizontal"] for d in dicts} == {True, False}
    for i, p in enumerate(dicts):
        np.testing.assert_allclose(ours[i], keras_gen.apply_transform(x[i], p), atol=2e-3)


@pytest.mark.parametrize("flag,axis", [("horizontal_flip", 2), ("vertical_flip", 1)])
def test_flips_are_exact_and_happen_half_the_time(flag, axis):
    x = np.repeat(random_images(1, 6, 8), 400, axis=0)
    out = np.asarray(aug.augment_jit(jax.random.PRNGKey(0), x, AugmentConfig(**{flag: True})))
    flipped = np.all(np.isclose(out, np.flip(x, axis)), axis=(1, 2, 3))
    same = np.all(np.isclose(out, x), axis=(1, 2, 3))
    np.testing.assert_array_equal(flipped ^ same, True)
    assert 0.42 < flipped.mean() < 0.58


def test_brightness_multiplies_clips_and_varies_per_sample():
    x = np.full((300, 4, 4, 1), 100, np.uint8)
    x[:, 0, 0] = 200
    out = np.asarray(aug.augment_jit(jax.random.PRNGKey(2), x,
                                     AugmentConfig(brightness_range=(0.5, 1.5))))
    factors = out[:, 1, 1, 0] / 100.0
    assert 0.5 <= factors.min() < 0.55 and 1.45 < factors.max() <= 1.5
    assert abs(factors.mean() - 1.0) < 0.05
    np.testing.assert_allclose(out[:, 0, 0, 0], np.minimum(200 * factors, 255), rtol=1e-5)
    assert len(np.unique(np.round(factors, 5))) == 300


def test_channel_shift_adds_one_intensity_clipped_to_the_image_range():
    rng = np.random.default_rng(0)
    x = np.repeat(rng.uniform(50, 150, (1, 5, 5, 3)).astype(np.float32), 300, axis=0)
    x[:, 0, 0, :] = [0.0, 255.0, 100.0]
    out = np.asarray(aug.augment_jit(jax.random.PRNGKey(4), x,
                                     AugmentConfig(channel_shift_range=30.0)))
    shifts = out[:, 2, 2, 0] - x[:, 2, 2, 0]
    assert -30 <= shifts.min() < -27 and 27 < shifts.max() <= 30
    expected = np.clip(x + shifts[:, None, None, None], 0.0, 255.0)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert len(np.unique(np.round(shifts, 4))) == 300


def test_sampled_parameters_cover_their_ranges():
    config = AugmentConfig(rotation_range=8, width_shift_range=0.08, height_shift_range=0.25,
                           shear_range=0.3, zoom_range=(0.8, 1.1))
    t = jax.tree_util.tree_map(np.asarray, aug.sample_transforms(
        jax.random.PRNGKey(0), 20000, (28, 40), config))
    for values, lo, hi in [(t.theta, -8, 8), (t.shear, -0.3, 0.3), (t.zx, 0.8, 1.1),
                           (t.zy, 0.8, 1.1), (t.tx, -0.08 * 40, 0.08 * 40),
                           (t.ty, -0.25 * 28, 0.25 * 28)]:
        span = hi - lo
        assert lo <= values.min() < lo + 0.01 * span and hi - 0.01 * span < values.max() <= hi
        assert abs(values.mean() - (lo + hi) / 2) < 0.02 * span
        assert abs(values.std() - span / np.sqrt(12)) < 0.02 * span  # uniform
    assert abs(np.corrcoef(t.zx, t.zy)[0, 1]) < 0.03  # drawn independently


@pytest.mark.parametrize("spec,size,expected", [
    (3, 28, {-2, -1, 0, 1, 2}),                   # int k: whole pixels in (-k, k), as Keras
    ((2, 5), 28, {-5, -2, 2, 5}),                 # choices times a random sign
    ((0.25, 0.5), 8, {-4, -2, 2, 4}),             # fractional choices times the size
])
def test_shift_choices_follow_keras(spec, size, expected):
    config = AugmentConfig(width_shift_range=spec)
    t = aug.sample_transforms(jax.random.PRNGKey(1), 2000, (size, size), config)
    assert set(np.round(np.asarray(t.tx), 5).tolist()) == expected


def test_same_key_same_output_and_samples_differ():
    x = np.repeat(random_images(1, 28, 28, dtype=np.uint8), 8, axis=0)
    a = aug.augment_jit(jax.random.PRNGKey(7), x, aug.SEED_RECIPE)
    b = aug.augment_jit(jax.random.PRNGKey(7), x, aug.SEED_RECIPE)
    c = aug.augment_jit(jax.random.PRNGKey(8), x, aug.SEED_RECIPE)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1.0
    pairwise = np.abs(np.asarray(a)[:, None] - np.asarray(a)[None]).max(axis=(2, 3, 4))
    assert (pairwise + np.eye(8) * 1e9).min() > 1.0  # every image got its own transform


@pytest.mark.parametrize("config", [aug.SEED_RECIPE, AugmentConfig(
    horizontal_flip=True, brightness_range=(0.8, 1.2), channel_shift_range=10.0,
    fill_mode="reflect", interpolation_order=0, rotation_range=30)])
def test_channels_first_equals_channels_last_transposed(config):
    x = random_images(4, 10, 13, 3, dtype=np.uint8)
    last = aug.augment_jit(jax.random.PRNGKey(3), x, config)
    first = aug.augment_jit(jax.random.PRNGKey(3), np.transpose(x, (0, 3, 1, 2)),
                            config.replace(data_format="channels_first"))
    assert first.shape == (4, 3, 10, 13)
    np.testing.assert_allclose(np.asarray(first), np.transpose(np.asarray(last), (0, 3, 1, 2)),
                               atol=1e-5)


def test_seed_recipe_and_augment_config():
    assert aug.SEED_RECIPE.zoom_range == (0.92, 1.08)
    assert aug.SEED_RECIPE.rotation_range == 8 and not aug.SEED_RECIPE.is_identity
    assert hash(aug.SEED_RECIPE) == hash(AugmentConfig(
        rotation_range=8, width_shift_range=0.08, height_shift_range=0.08, shear_range=0.3,
        zoom_range=[0.92, 1.08]))
    assert aug.augment_config(width_shift_range=[1, 2]).width_shift_range == (1, 2)
    with pytest.raises(TypeError, match="featurewise_center"):
        aug.augment_config(featurewise_center=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"rotation_range": -1}, "rotation_range"),
    ({"shear_range": float("nan")}, "shear_range"),
    ({"zoom_range": 1.5}, "zoom_range"),
    ({"zoom_range": (1.2, 0.8)}, "zoom_range"),
    ({"zoom_range": (0.5, 1.0, 2.0)}, "zoom_range"),
    ({"width_shift_range": -0.1}, "width_shift_range"),
    ({"height_shift_range": ()}, "height_shift_range"),
    ({"brightness_range": 0.5}, "brightness_range"),
    ({"brightness_range": (1.5, 0.5)}, "brightness_range"),
    ({"fill_mode": "mirror"}, "fill_mode"),
    ({"interpolation_order": 3}, "interpolation_order"),
    ({"cval": "black"}, "cval"),
    ({"horizontal_flip": "yes"}, "horizontal_flip"),
    ({"data_format": "NHWC"}, "data_format"),
])
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_bad_images_raise():
    with pytest.raises(ValueError, match="rank-4"):
        aug.augment(jax.random.PRNGKey(0), np.zeros((28, 28, 1)), aug.SEED_RECIPE)
    with pytest.raises(ValueError, match="channels"):
        aug.augment(jax.random.PRNGKey(0), np.zeros((2, 1, 28, 28)), aug.SEED_RECIPE)


def test_eager_equals_jit_and_uint8_equals_float_input():
    x = random_images(3, 14, 14, 1, dtype=np.uint8)
    key = jax.random.PRNGKey(11)
    eager = np.asarray(aug.augment(key, x, aug.SEED_RECIPE))
    # float32 rounding differs between fused and unfused code: ~1 ulp of 255
    np.testing.assert_allclose(eager, np.asarray(aug.augment_jit(key, x, aug.SEED_RECIPE)),
                               atol=1e-3)
    from_float = aug.augment_jit(key, x.astype(np.float32), aug.SEED_RECIPE)
    np.testing.assert_allclose(np.asarray(from_float), eager, atol=1e-3)
    assert eager.dtype == np.float32 and 0 <= eager.min() and eager.max() <= 255


# ---- NaN/inf, transform dicts, array-likes (issue 16) ----


def test_augment_jit_refuses_nan_images_unless_unchecked():
    x = random_images()
    x[0, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="augment_jit: images contains NaN or inf"):
        aug.augment_jit(jax.random.PRNGKey(0), x, aug.SEED_RECIPE)
    out = aug.augment_jit(jax.random.PRNGKey(0), x, aug.SEED_RECIPE, check=False)
    assert np.isnan(np.asarray(out)).any()


def test_apply_transforms_jit_refuses_nan_parameters():
    transforms = one(theta=10.0).replace(theta=jnp.array([jnp.nan]))
    config = AugmentConfig(rotation_range=10)
    with pytest.raises(ValueError, match="apply_transforms_jit: the transform parameters"):
        aug.apply_transforms_jit(random_images(n=1), transforms, config)


@pytest.mark.parametrize("params,message", [
    ({"theta": float("nan")}, "'theta' must be finite, got nan"),
    ({"zx": float("inf")}, "'zx' must be finite"),
    ({"tx": "3"}, "'tx' must be a real number, got str"),
    ({"tx": [1.0, 2.0]}, "'tx' must be a real number, got list"),
    ({"thetaa": 5.0}, r"unknown transform parameter\(s\) \['thetaa'\]"),
    ([("theta", 1.0)], "must be dicts with Keras' keys, got list"),
])
def test_transform_dicts_are_validated(params, message):
    # a NaN theta made every output pixel NaN; a misspelt key was ignored
    with pytest.raises(ValueError, match=message):
        aug.transforms_from_dicts([params])


def test_numpy_scalars_and_bools_are_accepted_as_transform_parameters():
    got = aug.transforms_from_dicts([{"theta": np.float32(5), "flip_horizontal": np.True_,
                                      "flip_vertical": False, "brightness": None}])
    assert float(got.theta[0]) == 5.0 and float(got.flip_horizontal[0]) == 1.0
    assert float(got.brightness[0]) == 1.0


@pytest.mark.parametrize("fn", ["augment", "augment_jit"])
def test_nested_lists_augment_like_arrays(fn):
    x = random_images(n=2, h=5, w=5)
    f = getattr(aug, fn)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(np.asarray(f(key, x.tolist(), aug.SEED_RECIPE)),
                                  np.asarray(f(key, x, aug.SEED_RECIPE)))


def keras_source_coordinates(params, height, width):
    """float64 (row, col)[H, W] that Keras' apply_transform reads for every output pixel:
    its matrix built as Keras builds it (x, y order, centre, then swapped), flips after."""
    theta, shear = np.deg2rad(params["theta"]), np.deg2rad(params["shear"])
    matrix = (np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                        [0, 0, 1]])
              @ np.array([[1, 0, params["tx"]], [0, 1, params["ty"]], [0, 0, 1]])
              @ np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
              @ np.diag([params["zx"], params["zy"], 1.0]))
    o_x, o_y = height / 2 - 0.5, width / 2 - 0.5
    matrix = (np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ matrix
              @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]]))
    matrix = matrix[[1, 0]][:, [1, 0, 2]]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    if params["flip_vertical"]:
        rows = height - 1 - rows
    if params["flip_horizontal"]:
        cols = width - 1 - cols
    return (matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 2],
            matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 2])


@pytest.mark.parametrize("params", [{"tx": 5e-4}, {"tx": -5e-4}, {"ty": 5e-4},
                                    {"ty": -5e-4}])
def test_constant_fill_beyond_float_rounding_of_the_edge_is_filled_as_keras(params):
    # A coordinate 5e-4 px outside the image is outside for scipy; a tolerance wider than
    # float32 rounding (1e-3 once) read the edge pixel there instead of cval.
    keras_image = keras_image_module()
    image = random_images(1, 28, 28, 1, seed=3)[0] * 250 + 5
    full = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
            "flip_horizontal": False, "flip_vertical": False, **params}
    keras_gen = keras_image.ImageDataGenerator(fill_mode="constant", cval=0.0)
    expected = keras_gen.apply_transform(image, full)
    assert (expected == 0).sum() == 28  # one filled row or column
    config = AugmentConfig(rotation_range=1, fill_mode="constant", cval=0.0)
    ours = np.asarray(aug.apply_transforms(image[None], one(**params), config))[0]
    np.testing.assert_allclose(ours, expected, atol=1e-3)


@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_constant_fill_exactly_on_the_edge_is_inside_as_keras(flips):
    keras_image = keras_image_module()
    image = random_images(1, 12, 12, 1, seed=4)[0] * 250 + 5
    params = {"theta": 0.0, "tx": 2.0, "ty": -3.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
              "flip_horizontal": flips[0], "flip_vertical": flips[1]}
    expected = keras_image.ImageDataGenerator(fill_mode="constant", cval=-1.0).apply_transform(
        image, params)
    config = AugmentConfig(rotation_range=1, fill_mode="constant", cval=-1.0)
    ours = np.asarray(aug.apply_transforms(image[None], aug.transforms_from_dicts([params]),
                                           config))[0]
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert (ours == -1.0).sum() == 12 * 2 + 12 * 3 - 2 * 3  # exactly the shifted-out band


def test_constant_fill_agrees_with_keras_except_within_float32_rounding_of_an_edge():
    # Random transforms on images without dark borders (MNIST's black borders would hide a
    # wrong inside/outside call): every pixel matches Keras, except where Keras' float64
    # source coordinate lies within the float32 rounding bound of an edge, which float32
    # cannot place on either side (documented in jaxscale.augmentation).
    keras_image = keras_image_module()
    n, size = 200, 28
    config = AugmentConfig(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1,
                           shear_range=10, zoom_range=0.1, horizontal_flip=True,
                           vertical_flip=True, fill_mode="constant")
    keras_gen = keras_image.ImageDataGenerator(fill_mode="constant")
    images = random_images(n, size, size, 1, seed=5) * 250 + 5
    transforms = aug.sample_transforms(jax.random.PRNGKey(0), n, (size, size), config)
    ours = np.asarray(aug.apply_transforms_jit(images, transforms, config))
    matrices = aug.transform_matrices(transforms, (size, size))
    tolerances = np.asarray(jax.vmap(lambda m: jnp.stack(
        aug.border_tolerance(m, (size, size))))(matrices))
    ambiguous_pixels = 0
    for i, params in enumerate(aug.transforms_to_dicts(transforms, config)):
        expected = keras_gen.apply_transform(images[i], params)
        wrong = np.abs(ours[i] - expected)[..., 0] > 1e-2
        src = keras_source_coordinates(params, size, size)
        near_edge = np.zeros_like(wrong)
        for coord, tol in zip(src, tolerances[i]):
            near_edge |= np.minimum(np.abs(coord), np.abs(coord - (size - 1))) <= tol
        assert not np.any(wrong & ~near_edge), (i, params)
        ambiguous_pixels += int(near_edge.sum())
    assert ambiguous_pixels <= 5  # about 1 in 1000 images of this recipe


def test_exact_edge_coordinates_are_inside_where_keras_float64_is_erratic():
    # Documented difference: a 180 degree turn maps the border onto the border exactly;
    # Keras' float64 matrix lands a few of those coordinates 1e-15 outside and fills them.
    keras_image = keras_image_module()
    image = random_images(1, 28, 28, 1, seed=6)[0] * 250 + 5
    keras_out = keras_image.apply_affine_transform(image, theta=180, row_axis=0, col_axis=1,
                                                   channel_axis=2, fill_mode="constant",
                                                   cval=-1.0)
    assert 0 < (keras_out == -1.0).sum() < 4 * 28  # some border pixels, Keras' rounding
    config = AugmentConfig(rotation_range=180, fill_mode="constant", cval=-1.0)
    ours = np.asarray(aug.apply_transforms(image[None], one(theta=180.0), config))[0]
    # float32 cos/sin put coordinates up to the rounding bound (border_tolerance, ~3e-5 px)
    # off the grid; neighbouring pixels differ by < 250: values within 250 * 3e-5
    atol = 250 * float(max(aug.border_tolerance(aug.transform_matrices(
        one(theta=180.0), (28, 28))[0], (28, 28))))
    assert (ours == -1.0).sum() == 0
    np.testing.assert_allclose(ours, np.rot90(image, 2, axes=(0, 1)), atol=atol)
    filled = keras_out == -1.0
    np.testing.assert_allclose(ours[~filled], keras_out[~filled], atol=atol)

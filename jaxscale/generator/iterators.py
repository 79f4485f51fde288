"""The flow iterators: batches of an array, a folder or a dataframe of image files.

Keras' Sequence semantics: `len(it)` batches per epoch, `it[i]` is batch i of the current
epoch's order, `on_epoch_end()` starts the next epoch (a new order when shuffling), `next(it)`
hands out the batches in turn, epoch after epoch, and the last batch of an epoch is smaller
when the batch size does not divide N. The order of an epoch is `jaxscale.data.pipeline.
epoch_order(seed, epoch, N)`; the augmentation of batch i draws from the flow's seed, the epoch
and the batch's first row, so a batch is the same whichever way it is asked for.

Speed: batches are gathered (arrays) or decoded (files), augmented and scaled on the device by
one compiled call for up to `batches_per_call` consecutive batches, which returns them as
separate arrays; handing one out is then no further dispatch. A reader that goes through an
epoch in order (`next`, Keras' `fit(shuffle=False)`, `evaluate`, `predict`) gets every batch that
way; random access (Keras' `fit` shuffles the batch indices by default) computes the batch
asked for alone. File iterators decode the files of the next call in a background thread.

Keras: when Keras is already imported (`"keras" in sys.modules`) at the time `flow` is called,
the iterator is also a `keras.utils.PyDataset`, so `model.fit(it)`, `evaluate` and `predict`
take it. The class is made on first use (`keras_iterator_class`); jaxscale itself never
imports Keras. Batches are jax.Arrays, which Keras' JAX backend takes without a host copy; on
the TensorFlow and PyTorch backends they come as NumPy arrays. `use_multiprocessing` is refused
(with a warning): the work is on the device already, and forked workers cannot use JAX; thread
`workers` are fine.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import sys
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale import augmentation, scaling
from jaxscale.augmentation import AugmentConfig
from jaxscale.data.image_files import (
    WHITE_LIST_FORMATS,
    ImageFileReader,
    check_image_options,
    list_directory,
)
from jaxscale.data.pipeline import epoch_order
from jaxscale.scaling import ScalingConfig, ScalingParams
from jaxscale.validation import finite, raise_on_flags

# One compiled call computes at most this many batches, and about this many output bytes.
MAX_BATCHES_PER_CALL = 32
CALL_BYTES = 16 << 20


def batches_per_call(batch_size: int, image_values: int, num_batches: int) -> int:
    """How many consecutive batches one compiled call computes: enough to amortise the
    dispatch (up to MAX_BATCHES_PER_CALL), at most about CALL_BYTES of float32 output."""
    by_bytes = CALL_BYTES // max(1, batch_size * image_values * 4)
    return int(max(1, min(MAX_BATCHES_PER_CALL, by_bytes, num_batches)))


def resolve_seed(seed: int | None) -> int:
    """The seed, or one drawn from NumPy's global generator when None: like Keras, whose
    iterators draw from it, `np.random.seed` / `keras.utils.set_random_seed` make unseeded
    flows reproducible."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return int(seed)


# --------------------------------------------------------------------------- Keras' PyDataset

_KERAS_CLASSES: dict[type, type] = {}
_KERAS_LOCK = threading.Lock()


def keras_backend() -> str | None:
    """The backend of an already imported Keras 3, or None (Keras is never imported here)."""
    if "keras" not in sys.modules:
        return None
    try:
        from keras import config
        return config.backend()
    except Exception:  # an old or broken Keras: behave as without it
        return None


def keras_iterator_class(cls: type) -> type:
    """`cls` and `keras.utils.PyDataset` in one class, made once per class; `cls` itself when
    Keras is not imported. `cls`'s methods come first, so its Sequence semantics hold."""
    if keras_backend() is None:
        return cls
    with _KERAS_LOCK:
        if cls not in _KERAS_CLASSES:
            from keras.utils import PyDataset
            _KERAS_CLASSES[cls] = type(cls.__name__, (cls, PyDataset), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__, "__reduce__": _reduce_to_plain,
                "_inputs_as_tuple": True})
        return _KERAS_CLASSES[cls]


def _reduce_to_plain(self):
    # Pickled as the plain class: the Keras-made class is not importable by name.
    plain = type(self).__mro__[1]
    return (_rebuild, (plain, self.__getstate__()))


def _rebuild(cls, state):
    obj = cls.__new__(keras_iterator_class(cls))
    obj.__setstate__(state)
    return obj


# ------------------------------------------------------------------------- the compiled call

def _augment_batches(batch, key, epoch, first_row, sizes, config: AugmentConfig):
    """Augments consecutive batches of `sizes`, batch k with the key of its first row (as a
    flow batch computed alone would be)."""
    hw = batch.shape[2:4] if config.data_format == "channels_first" else batch.shape[1:3]
    epoch_key = jax.random.fold_in(key, epoch)
    starts = first_row + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    full = sum(1 for s in sizes if s == sizes[0])
    keys = jax.vmap(lambda s: jax.random.fold_in(epoch_key, s))(jnp.asarray(starts[:full]))
    parts = jax.vmap(lambda k: augmentation.sample_transforms(k, sizes[0], hw, config))(keys)
    transforms = jax.tree_util.tree_map(lambda a: a.reshape(-1), parts)
    if full < len(sizes):  # the smaller last batch of an epoch
        last = augmentation.sample_transforms(
            jax.random.fold_in(epoch_key, starts[-1]), sizes[-1], hw, config)
        transforms = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]),
                                            transforms, last)
    return augmentation.apply_transforms(batch, transforms, config)


@functools.partial(jax.jit, static_argnames=("sizes", "config", "augment_config", "out_dtype",
                                             "to_channels_first", "check"))
def _flow_call(images, extras, order, first_row, params, key, epoch, *,
               sizes: tuple[int, ...], config: ScalingConfig,
               augment_config: AugmentConfig | None, out_dtype: str | None,
               to_channels_first: bool = False, check: bool = False):
    """Consecutive batches of `sizes` images, augmented (if a config is given) and scaled.

    With `order` (int32[N]) the rows are order[first_row:first_row + sum(sizes)] of the
    device-resident `images` and of every array in `extras`; with order None, `images` and
    `extras` are the rows themselves (decoded files). Returns one tuple (x, *extras) per batch
    and bool[]: with `check`, whether every scaled value is finite (else True).
    """
    total = sum(sizes)
    if order is not None:
        rows = jax.lax.dynamic_slice_in_dim(order, first_row, total)
        images = jnp.take(images, rows, axis=0)
        extras = tuple(jnp.take(e, rows, axis=0) for e in extras)
    if to_channels_first:
        images = jnp.transpose(images, (0, 3, 1, 2))
    if augment_config is not None:
        images = _augment_batches(images, key, epoch, first_row, sizes, augment_config)
    x = scaling.scale(images, config, params)
    if out_dtype is not None:
        x = x.astype(out_dtype)
    cuts = np.cumsum(sizes)[:-1].tolist()
    xs = jnp.split(x, cuts)
    parts = [jnp.split(e, cuts) for e in extras]
    return (tuple((xs[k], *(p[k] for p in parts)) for k in range(len(sizes))),
            finite(x) if check else jnp.bool_(True))


def _is_numeric(array: np.ndarray) -> bool:
    return array.dtype.kind in "biuf"


# ------------------------------------------------------------------------------ the iterators

class _IntKnob:
    """A Keras `PyDataset` knob (`workers`, `max_queue_size`) that Keras' adapters read and
    set: kept as an int in `_<name>`."""

    def __set_name__(self, owner, name: str) -> None:
        self.attribute = f"_{name}"

    def __get__(self, instance, owner=None):
        return self if instance is None else getattr(instance, self.attribute)

    def __set__(self, instance, value) -> None:
        setattr(instance, self.attribute, int(value))


class Iterator:
    """What every flow iterator shares: epochs, the batch cache, Keras' Sequence protocol.

    Subclasses set `self.n` and implement `_compute(first_batch, count)` (the batches, in
    their Keras structure) and `_batch_rows(index)`.

    Attributes (Keras' names): n, batch_size, shuffle, seed, batch_index, total_batches_seen,
    index_array (the current epoch's order), epoch (how many epochs have ended).
    """

    white_list_formats = WHITE_LIST_FORMATS

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int | None, *,
                 image_values: int):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.n, self.batch_size, self.shuffle = int(n), int(batch_size), bool(shuffle)
        self.seed = resolve_seed(seed)
        self.epoch = 0
        self.batch_index = 0
        self.total_batches_seen = 0
        self._order = None
        self._cache: dict[int, object] = {}
        self._expected = 0
        self._lock = threading.RLock()
        self._batches_per_call = batches_per_call(self.batch_size, image_values, len(self))
        # Keras' PyDataset attributes (read by its data adapters).
        self._workers, self._use_multiprocessing, self._max_queue_size = 1, False, 10
        backend = keras_backend()
        self._numpy_output = backend is not None and backend != "jax"
        self._host_dtype = None
        self.save_to_dir, self.save_prefix, self.save_format = None, "", "png"

    # -- Keras' PyDataset knobs
    workers = _IntKnob()
    max_queue_size = _IntKnob()

    @property
    def use_multiprocessing(self) -> bool:
        return False

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        if value:
            warnings.warn("jaxscale flow iterators compute batches on the device; worker "
                          "processes cannot share it (JAX does not survive a fork), so "
                          "use_multiprocessing stays False: use threads (workers) instead",
                          stacklevel=2)

    @property
    def num_batches(self) -> int:
        return len(self)

    # -- epochs
    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = epoch_order(self.seed, self.epoch, self.n, shuffle=self.shuffle)
        return self._order

    @property
    def index_array(self) -> np.ndarray:
        """The current epoch's order: int32[N] row indices (Keras' `index_array`)."""
        return self._epoch_order()

    def _batch_rows(self, index: int) -> np.ndarray:
        return self._epoch_order()[index * self.batch_size:(index + 1) * self.batch_size]

    def _sizes(self, first: int, count: int) -> tuple[int, ...]:
        return tuple(min(self.batch_size, self.n - i * self.batch_size)
                     for i in range(first, first + count))

    def on_epoch_begin(self) -> None:
        """Called by Keras at the start of an epoch; nothing to do."""

    def on_epoch_end(self) -> None:
        """Starts the next epoch: a new order (when shuffling) and new augmentation draws."""
        with self._lock:
            self.epoch += 1
            self._order = None
            self._cache = {}
            self._expected = 0

    def reset(self) -> None:
        """`next()` starts again from the first batch of the current epoch."""
        with self._lock:
            self.batch_index = 0

    # -- batches
    def _check_index(self, index) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int, got {type(index).__name__}")
        length = len(self)
        if index >= length:
            raise ValueError(f"Asked to retrieve element {index}, but the Sequence has length "
                             f"{length}")
        if index < 0:
            index += length
            if index < 0:
                raise ValueError(f"batch index {index - length} is out of range for "
                                 f"{length} batches")
        return int(index)

    def _batch(self, index: int):
        """Batch `index` of the current epoch, from the cache or computed (lock held)."""
        if self.n == 0:
            raise ValueError("this iterator has no images")
        batch = self._cache.get(index)
        if batch is None:
            per_call = self._batches_per_call
            if abs(index - self._expected) <= 2:  # a reader going through the epoch in order
                first = index - index % per_call
                count = min(per_call, len(self) - first)
                self._cache = dict(zip(range(first, first + count),
                                       self._compute(first, count)))
                batch = self._cache[index]
            else:
                batch = self._compute(index, 1)[0]
        self._expected = index + 1
        self.total_batches_seen += 1
        self._save(index, batch)
        return self._output(batch)

    # Keras' adapters take a batch without targets only as a NumPy array or a tuple (x,):
    # as a PyDataset, it[i] gives (x,) for those (next() still gives x).
    _inputs_as_tuple = False

    def __getitem__(self, index):
        index = self._check_index(index)
        with self._lock:
            batch = self._batch(index)
        return (batch,) if self._inputs_as_tuple and not isinstance(batch, tuple) else batch

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            batch = self._batch(self.batch_index)
            self.batch_index += 1
            if self.batch_index >= len(self):
                self.batch_index = 0
                self.on_epoch_end()
            return batch

    next = __next__  # Keras 2's iterators had .next(); the tutorials call it

    def _compute(self, first: int, count: int) -> list:
        raise NotImplementedError

    # -- outputs
    def _output(self, batch):
        """The batch as handed out: NumPy on Keras' other backends, x cast for float64."""
        if not (self._numpy_output or self._host_dtype):
            return batch
        batch = jax.tree_util.tree_map(
            lambda leaf: np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf, batch)
        if self._host_dtype:
            batch = self._with_x(batch, np.asarray(self._x_of(batch), self._host_dtype))
        return batch

    @staticmethod
    def _x_of(batch):
        x = batch[0] if isinstance(batch, tuple) else batch
        return x[0] if isinstance(x, list) else x

    @staticmethod
    def _with_x(batch, new_x):
        if isinstance(batch, tuple):
            head = batch[0]
            head = [new_x, *head[1:]] if isinstance(head, list) else new_x
            return (head, *batch[1:])
        return [new_x, *batch[1:]] if isinstance(batch, list) else new_x

    def _save(self, index: int, batch) -> None:
        """Keras' save_to_dir: every image of the batch as a file, scaled to 0..255."""
        if not self.save_to_dir:
            return
        from PIL import Image
        x = np.asarray(self._x_of(batch), np.float32)
        if getattr(self, "data_format", "channels_last") == "channels_first":
            x = np.transpose(x, (0, 2, 3, 1))
        for image, row in zip(x, self._batch_rows(index)):
            image = image - image.min()
            if image.max() != 0:
                image = image / image.max()
            image = (image * 255).astype(np.uint8)
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
            name = (f"{self.save_prefix}_{int(row)}_{np.random.randint(self._hash_range)}"
                    f".{self.save_format}")
            Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(
                os.path.join(self.save_to_dir, name))

    _hash_range = int(1e4)

    # -- pickling (a Keras-made class pickles as its plain class)
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()


class _DeviceScaled(Iterator):
    """An iterator whose batches are augmented and scaled by `_flow_call`."""

    def _setup_scaling(self, config: ScalingConfig, params: ScalingParams,
                       augment_config: AugmentConfig | None, out_dtype: str | None,
                       host_dtype: str | None, check_finite: bool = True):
        self.config, self.params = config, params
        self.check_finite = check_finite
        self._check_cache = {}
        self.augment_config = augment_config
        self._out_dtype = out_dtype
        self._host_dtype = host_dtype
        # Its own stream, so turning augmentation on does not change the shuffle order.
        self.augment_key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 1)

    def _needs_check(self, images) -> bool:
        """Whether the batches of `images` need the NaN/inf check: not when they are integers
        and `scaling.output_bound` shows that no output can reach the output dtype's largest
        value (the params were checked finite by the generator), so the common uint8 path
        does not pay the check (its cost: the `<mode>/checked` rows of `make bench`)."""
        if not self.check_finite:
            return False
        dtype = np.dtype(images.dtype)
        if not np.issubdtype(dtype, np.integer):
            return True
        if dtype not in self._check_cache:
            info = np.iinfo(dtype)
            bound = float(max(abs(int(info.min)), int(info.max)))
            augment = self.augment_config
            if augment is not None:  # resampling mixes pixels and cval convexly (order <= 1)
                bright = max(1.0, *(augment.brightness_range or (1.0,)))
                bound = max(bound, abs(float(augment.cval))) * bright + float(
                    augment.channel_shift_range)
            largest = float(jnp.finfo(self._out_dtype or self.config.dtype).max)
            self._check_cache[dtype] = not (
                2.0 * scaling.output_bound(self.config, self.params, bound) < largest)
        return self._check_cache[dtype]

    def _call(self, images, extras, order, first: int, count: int, *,
              to_channels_first: bool = False):
        check = self._needs_check(images)
        batches, batches_finite = _flow_call(
            images, tuple(extras), order, first * self.batch_size, self.params,
            self.augment_key, self.epoch, sizes=self._sizes(first, count),
            config=self.config, augment_config=self.augment_config,
            out_dtype=self._out_dtype, to_channels_first=to_channels_first,
            check=check)
        if check:
            # the generator checked its params, flow its images: only float32 overflow or a
            # preprocessing_function (or NaN decoded from files) can bring NaN/inf here
            raise_on_flags(batches_finite[None], (
                "a scaled batch holds NaN or inf: float32 overflowed, or the "
                "preprocessing_function produced them",), caller=type(self).__name__)
        return batches


class NumpyArrayIterator(_DeviceScaled):
    """Batches of a device-resident array (see `ImageDataGenerator.flow`).

    The images stay on the device in their own dtype (uint8 stays uint8); numeric labels,
    sample weights and extra inputs too. A batch is (x, y) or (x, y, sample_weight), or x
    alone without y, as in Keras; with extra inputs x is [images, *extras].
    """

    def __init__(self, x, y, *, config: ScalingConfig, params: ScalingParams,
                 batch_size: int = 32, shuffle: bool = False, sample_weight=None,
                 seed: int | None = None, x_misc=(), augment_config: AugmentConfig | None = None,
                 out_dtype: str | None = None, host_dtype: str | None = None,
                 save_to_dir=None, save_prefix: str = "", save_format: str = "png",
                 check_finite: bool = True):
        self.x = jnp.asarray(x)
        n = int(self.x.shape[0])
        if n == 0:
            raise ValueError("flow got no images")
        self.data_format = config.data_format
        super().__init__(n, batch_size, shuffle, seed,
                         image_values=math.prod(self.x.shape[1:]))
        self._setup_scaling(config, params, augment_config, out_dtype, host_dtype,
                            check_finite)
        self.x_misc = [np.asarray(a) for a in x_misc]
        self.y = None if y is None else np.asarray(y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.save_to_dir, self.save_prefix, self.save_format = (save_to_dir, save_prefix,
                                                                save_format)
        # Every extra array in output order; numeric ones live on the device.
        self._extras = [*self.x_misc, *(a for a in (self.y, self.sample_weight)
                                        if a is not None)]
        self._on_device = [_is_numeric(a) for a in self._extras]
        self._device_extras = tuple(jnp.asarray(a) for a, dev in
                                    zip(self._extras, self._on_device) if dev)
        self._device_order = None

    def on_epoch_end(self) -> None:
        with self._lock:
            super().on_epoch_end()
            self._device_order = None

    def _compute(self, first: int, count: int) -> list:
        order = self._epoch_order()
        if self._device_order is None:
            self._device_order = jnp.asarray(order)
        outputs = self._call(self.x, self._device_extras, self._device_order, first, count)
        batches = []
        start = first * self.batch_size
        for (x, *device_parts), size in zip(outputs, self._sizes(first, count)):
            rows = order[start:start + size]
            start += size
            device_parts = iter(device_parts)
            parts = [next(device_parts) if dev else array[rows]
                     for array, dev in zip(self._extras, self._on_device)]
            misc = parts[:len(self.x_misc)]
            rest = parts[len(self.x_misc):]
            head = [x, *misc] if misc else x
            batches.append(head if self.y is None else (head, *rest))
        return batches


FlowIterator = NumpyArrayIterator  # the first release's name


class _FileIterator(_DeviceScaled):
    """Batches decoded from image files on the host, then augmented and scaled on the device.

    Subclasses set `self.filepaths`, `self.classes` (class indices), `self.class_mode` and
    implement `_targets(rows)`.
    """

    _hash_range = int(1e7)
    # The keywords both file iterators take besides their own, with Keras' defaults.
    FILE_OPTIONS = {"target_size": (256, 256), "color_mode": "rgb",
                    "interpolation": "nearest", "keep_aspect_ratio": False, "batch_size": 32,
                    "shuffle": True, "seed": None, "save_to_dir": None, "save_prefix": "",
                    "save_format": "png", "augment_config": None, "out_dtype": None,
                    "host_dtype": None, "decode_workers": None, "check_finite": True}

    @classmethod
    def _file_options(cls, given: dict) -> dict:
        """`FILE_OPTIONS` updated with `given`, the image options checked before any file is
        listed."""
        unknown = set(given) - set(cls.FILE_OPTIONS)
        if unknown:
            raise TypeError(f"{cls.__name__} got unexpected keyword(s) {sorted(unknown)}")
        options = {**cls.FILE_OPTIONS, **given}
        check_image_options(options["target_size"], options["color_mode"],
                            options["interpolation"])
        return options

    def _setup_files(self, filepaths, config: ScalingConfig, params: ScalingParams,
                     options: dict):
        """The reader of `filepaths`, the epochs, the scaling and the save options."""
        target_size, color_mode, interpolation, keep_aspect_ratio = (
            options["target_size"], options["color_mode"], options["interpolation"],
            options["keep_aspect_ratio"])
        self.target_size = check_image_options(target_size, color_mode, interpolation)
        self.color_mode, self.interpolation = color_mode, interpolation
        self.keep_aspect_ratio, self.data_format = keep_aspect_ratio, config.data_format
        self.reader = ImageFileReader(filepaths, None, target_size=self.target_size,
                                      color_mode=color_mode, interpolation=interpolation,
                                      keep_aspect_ratio=keep_aspect_ratio,
                                      workers=options["decode_workers"])
        height, width, channels = self.reader.image_shape
        self.image_shape = ((height, width, channels) if self.data_format == "channels_last"
                            else (channels, height, width))
        Iterator.__init__(self, len(self.reader), options["batch_size"], options["shuffle"],
                          options["seed"], image_values=height * width * channels)
        self._prefetched = None
        self._prefetcher = None
        self._setup_scaling(config, params, options["augment_config"], options["out_dtype"],
                            options["host_dtype"], options["check_finite"])
        self.save_to_dir, self.save_prefix, self.save_format = (
            options["save_to_dir"], options["save_prefix"], options["save_format"])

    @property
    def filepaths(self) -> list[str]:
        """Absolute paths (as given) of every image, in the listing's order."""
        return self.reader.filepaths

    def _rows(self, first: int, count: int) -> np.ndarray:
        start = first * self.batch_size
        return self._epoch_order()[start:start + sum(self._sizes(first, count))]

    def _compute(self, first: int, count: int) -> list:
        key = (self.epoch, first, count)
        prefetched, self._prefetched = self._prefetched, None
        rows = self._rows(first, count)
        if prefetched is not None and prefetched[0] == key:
            images = prefetched[1].result()
        else:
            images = self.reader.read_images(rows)
        if count > 1 and first + count < len(self):  # read the next call's files meanwhile
            next_count = min(count, len(self) - first - count)
            if self._prefetcher is None:
                self._prefetcher = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="jaxscale-prefetch")
            self._prefetched = ((self.epoch, first + count, next_count),
                                self._prefetcher.submit(self.reader.read_images,
                                                        self._rows(first + count, next_count)))
        targets = self._targets(rows)
        numeric = [_is_numeric(t) for t in targets]
        outputs = self._call(images, [t for t, num in zip(targets, numeric) if num], None,
                             first, count,
                             to_channels_first=self.data_format == "channels_first")
        batches, start = [], 0
        for (x, *device_parts), size in zip(outputs, self._sizes(first, count)):
            device_parts = iter(device_parts)
            parts = [next(device_parts) if num else t[start:start + size]
                     for t, num in zip(targets, numeric)]
            start += size
            batches.append(self._structure(x, parts))
        return batches

    def _structure(self, x, parts):
        if self.class_mode is None:
            return x
        if self.class_mode == "input":
            return (x, x, *parts)
        if self.class_mode == "multi_output":
            y, rest = list(parts[:-1] if self._has_weights else parts), (
                parts[-1:] if self._has_weights else [])
            return (x, y, *rest)
        return (x, *parts)

    _has_weights = False

    def on_epoch_end(self) -> None:
        with self._lock:
            super().on_epoch_end()
            self._prefetched = None

    def close(self) -> None:
        """Stops the decoding processes and the prefetching thread (both start again when
        needed)."""
        self.reader.close()
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True)
            self._prefetcher = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_prefetched"], state["_prefetcher"] = None, None
        return state


def _check_class_mode(class_mode, allowed) -> None:
    if class_mode not in allowed:
        raise ValueError(f"Invalid class_mode: {class_mode}; expected one of: "
                         f"{set(allowed)}")


class DirectoryIterator(_FileIterator):
    """Batches of the image files in a folder with one subfolder per class (see
    `ImageDataGenerator.flow_from_directory`).

    Attributes (Keras'): directory, filenames (relative to directory), filepaths, classes
    (int32[N] class index of every file), class_indices ({name: index}), num_classes,
    samples, image_shape, class_mode, labels (= classes).
    """

    allowed_class_modes = ("categorical", "binary", "sparse", "input", None)

    def __init__(self, directory, *, config: ScalingConfig, params: ScalingParams,
                 classes=None, class_mode: str | None = "categorical",
                 follow_links: bool = False, split: tuple[float, float] | None = None,
                 subset: str | None = None, label_dtype: str = "float32", **file_options):
        """`file_options`: the keywords of `FILE_OPTIONS` (target_size, color_mode, ...)."""
        _check_class_mode(class_mode, self.allowed_class_modes)
        options = self._file_options(file_options)
        self.directory, self.class_mode, self.split, self.subset = (directory, class_mode,
                                                                    split, subset)
        listing = list_directory(directory, classes=classes, follow_links=follow_links,
                                 split=split)
        self.filenames = listing.filenames
        self.classes = listing.classes
        self.class_indices = listing.class_indices
        self.num_classes = len(self.class_indices)
        self.samples = len(self.filenames)
        print(f"Found {self.samples} images belonging to {self.num_classes} classes.")
        self._label_dtype = label_dtype
        self._setup_files([os.path.join(directory, f) for f in self.filenames], config, params,
                          options)

    @property
    def labels(self) -> np.ndarray:
        return self.classes

    @property
    def sample_weight(self):
        return None

    def _targets(self, rows) -> list[np.ndarray]:
        classes = self.classes[rows]
        if self.class_mode in ("binary", "sparse"):
            return [classes.astype(self._label_dtype)]
        if self.class_mode == "categorical":
            return [np.eye(self.num_classes, dtype=self._label_dtype)[classes]]
        return []


class DataFrameIterator(_FileIterator):
    """Batches of the image files named in a dataframe column (see
    `ImageDataGenerator.flow_from_dataframe`).

    Attributes (Keras'): directory, filenames (the x_col values kept), filepaths, classes
    (class index per file, a list per file for multi-label), class_indices, labels,
    sample_weight, samples, image_shape, class_mode.
    """

    allowed_class_modes = ("binary", "categorical", "input", "multi_output", "raw", "sparse",
                           None)

    def __init__(self, dataframe, directory=None, *, config: ScalingConfig,
                 params: ScalingParams, x_col: str = "filename", y_col="class",
                 weight_col: str | None = None, classes=None,
                 class_mode: str | None = "categorical",
                 split: tuple[float, float] | None = None, subset: str | None = None,
                 validate_filenames: bool = True, label_dtype: str = "float32",
                 **file_options):
        """`file_options`: the keywords of `FILE_OPTIONS` (target_size, color_mode, ...)."""
        options = self._file_options(file_options)
        df = dataframe.copy()
        self.directory = directory or ""
        self.class_mode, self.split, self.subset = class_mode, split, subset
        self._label_dtype = label_dtype
        self._check_params(df, x_col, y_col, weight_col, classes)
        if validate_filenames:
            df = self._filter_valid_filepaths(df, x_col)
        labelled = class_mode not in ("input", "multi_output", "raw", None)
        if labelled:
            df, classes = self._filter_classes(df, y_col, classes)
            self.class_indices = dict(zip(classes, range(len(classes))))
        if split:
            df = df.iloc[int(split[0] * len(df)):int(split[1] * len(df)), :]
        if labelled:
            self.classes = [[self.class_indices[c] for c in label]
                            if isinstance(label, (list, tuple)) else self.class_indices[label]
                            for label in df[y_col]]
            single = all(not isinstance(c, list) for c in self.classes)
            self._class_array = np.asarray(self.classes, np.int64) if single else None
        self.filenames = df[x_col].tolist()
        self._sample_weight = df[weight_col].values if weight_col else None
        self._has_weights = weight_col is not None
        if class_mode == "multi_output":
            self._targets_all = [np.array(df[col].tolist()) for col in y_col]
        elif class_mode == "raw":
            self._targets_all = df[y_col].values
        self.samples = len(self.filenames)
        validated = "validated" if validate_filenames else "non-validated"
        if labelled:
            print(f"Found {self.samples} {validated} image filenames belonging to "
                  f"{len(self.class_indices)} classes.")
        else:
            print(f"Found {self.samples} {validated} image filenames.")
        self._setup_files([os.path.join(self.directory, f) for f in self.filenames], config,
                          params, options)

    def _check_params(self, df, x_col, y_col, weight_col, classes):
        _check_class_mode(self.class_mode, self.allowed_class_modes)
        if self.class_mode == "multi_output" and not isinstance(y_col, list):
            raise TypeError(f'If class_mode="{self.class_mode}", y_col must be a list. '
                            f"Received {type(y_col).__name__}.")
        if not all(df[x_col].apply(lambda x: isinstance(x, str))):
            raise TypeError(f"All values in column x_col={x_col} must be strings.")
        if self.class_mode in ("binary", "sparse"):
            if not all(df[y_col].apply(lambda x: isinstance(x, str))):
                raise TypeError(f'If class_mode="{self.class_mode}", y_col="{y_col}" column '
                                "values must be strings.")
        if self.class_mode == "binary":
            if classes:
                if len(set(classes)) != 2:
                    raise ValueError('If class_mode="binary" there must be 2 classes. '
                                     f"{len(set(classes))} class/es were given.")
            elif df[y_col].nunique() != 2:
                raise ValueError('If class_mode="binary" there must be 2 classes. '
                                 f"Found {df[y_col].nunique()} classes.")
        if self.class_mode == "categorical":
            if not all(df[y_col].apply(lambda x: isinstance(x, (str, list, tuple)))):
                raise TypeError(f'If class_mode="{self.class_mode}", y_col="{y_col}" column '
                                "values must be type string, list or tuple.")
        if classes and self.class_mode in ("input", "multi_output", "raw", None):
            warnings.warn(f'`classes` will be ignored given the class_mode="{self.class_mode}"',
                          stacklevel=3)
        if weight_col and not issubclass(df[weight_col].dtype.type, np.number):
            raise TypeError(f"Column weight_col={weight_col} must be numeric.")

    @staticmethod
    def _filter_classes(df, y_col, classes):
        df = df.copy()

        def keep(labels):
            if isinstance(labels, (list, tuple)):
                return [c for c in labels if c in classes] or None
            if isinstance(labels, str):
                return labels if labels in classes else None
            raise TypeError(f"Expect string, list or tuple but found {type(labels)} in "
                            f"{y_col} column ")

        if classes:
            classes = list(dict.fromkeys(classes))
            df[y_col] = df[y_col].apply(keep)
        else:
            found = set()
            for value in df[y_col]:
                found.update(value if isinstance(value, (list, tuple)) else [value])
            classes = sorted(found)
        return df.dropna(subset=[y_col]), classes

    def _filter_valid_filepaths(self, df, x_col):
        paths = df[x_col].map(lambda name: os.path.join(self.directory, name))
        valid = paths.apply(lambda p: p.lower().endswith(WHITE_LIST_FORMATS)
                            and os.path.isfile(p))
        invalid = int((~valid).sum())
        if invalid:
            warnings.warn(f'Found {invalid} invalid image filename(s) in x_col="{x_col}". '
                          "These filename(s) will be ignored.", stacklevel=4)
        return df[valid]

    @property
    def labels(self):
        if self.class_mode in ("multi_output", "raw"):
            return self._targets_all
        return self.classes

    @property
    def sample_weight(self):
        return self._sample_weight

    def _targets(self, rows) -> list[np.ndarray]:
        mode = self.class_mode
        if mode in ("binary", "sparse"):
            targets = [self._class_array[rows].astype(self._label_dtype)]
        elif mode == "categorical":
            y = np.zeros((len(rows), len(self.class_indices)), self._label_dtype)
            if self._class_array is not None:
                y[np.arange(len(rows)), self._class_array[rows]] = 1.0
            else:  # multi-label: a list of classes per file
                for i, r in enumerate(rows):
                    y[i, self.classes[r]] = 1.0
            targets = [y]
        elif mode == "multi_output":
            targets = [output[rows] for output in self._targets_all]
        elif mode == "raw":
            targets = [self._targets_all[rows]]
        elif mode == "input":
            targets = []
        else:
            return []
        if self._sample_weight is not None:
            targets.append(self._sample_weight[rows])
        return targets

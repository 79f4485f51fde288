"""Folders and dataframes of image files, listed, decoded and resized on the host as Keras does.

The listing is Keras' (`flow_from_directory`): one class per subfolder, sorted by name (or the
`classes` given, in their order), files sorted within each (`os.walk`, subfolders included),
extensions `WHITE_LIST_FORMATS`, and a validation split taken per class folder. Images are read
as Keras' `load_img` reads them (`load_image`): Pillow decodes, converts to the color mode
("grayscale", "rgb", "rgba") and resizes to `target_size` with Pillow's filter of that name,
after a centre crop to the target's aspect ratio with `keep_aspect_ratio`. So the pixels are
Keras' pixels. Decoding small files is mostly Python work inside Pillow, which threads cannot
run in parallel, so `ImageFileReader` splits a batch over `workers` decoding processes: plain
interpreters running `_pil_decode.py` (NumPy and Pillow only), fed file names over a pipe.

Images come out as uint8[N, H, W, C] (channels_last): scaling and augmentation run on the
device. One difference from Keras: 16- and 32-bit grayscale images (Pillow modes "I;16",
"I"), which Keras keeps at their bit depth in float32, are reduced to 8 bits here (value /
256 for 16-bit, clipped to 0..255 for 32-bit).

`load_image_folder` reads a whole folder into a `Dataset` (uint8 NHWC + int32 labels) for the
device-resident path, like Keras' `image_dataset_from_directory`; `ImageFileReader` is a
`jaxscale.data.pipeline.Reader` for the streaming path (`HostSource`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import warnings
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxscale.data import _pil_decode
from jaxscale.data._pil_decode import load_image
from jaxscale.data.datasets import Dataset

__all__ = ["COLOR_MODES", "INTERPOLATIONS", "WHITE_LIST_FORMATS", "DirectoryListing",
           "ImageFileReader", "ImageFolder", "list_directory", "load_image",
           "load_image_folder"]

WHITE_LIST_FORMATS = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff")
COLOR_MODES = {"grayscale": 1, "rgb": 3, "rgba": 4}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")


def check_image_options(target_size, color_mode: str, interpolation: str) -> tuple[int, int]:
    """Validates the options every reader takes; returns target_size as (height, width)."""
    if color_mode not in COLOR_MODES:
        raise ValueError(f'Invalid color mode: {color_mode}; expected "rgb", "rgba", or '
                         '"grayscale".')
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Invalid interpolation method {interpolation} specified. Supported "
                         f"methods are {', '.join(INTERPOLATIONS)}")
    size = tuple(target_size) if isinstance(target_size, (tuple, list)) else ()
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"target_size must be (height, width) of positive ints, got "
                         f"{target_size!r}")
    return int(size[0]), int(size[1])


def _valid_files(directory: str, formats: tuple[str, ...], follow_links: bool):
    """(root, filename) of every file with an allowed extension, in Keras' order."""
    for root, _, files in sorted(os.walk(directory, followlinks=follow_links),
                                 key=lambda entry: entry[0]):
        for name in sorted(files):
            if name.lower().endswith(".tiff"):
                warnings.warn('Using ".tiff" files with multiple bands will cause distortion. '
                              "Please verify your output.")
            if name.lower().endswith(formats):
                yield root, name


@dataclasses.dataclass(frozen=True)
class DirectoryListing:
    """The files of a class-per-subfolder directory, in Keras' order.

    Attributes:
      filenames: paths relative to the directory ("class/file.png").
      classes: int32[N], the class index of every file.
      class_indices: {class name: index}.
    """

    filenames: list[str]
    classes: np.ndarray
    class_indices: dict[str, int]


def list_directory(directory, *, classes: Sequence[str] | None = None,
                   follow_links: bool = False,
                   split: tuple[float, float] | None = None,
                   formats: tuple[str, ...] = WHITE_LIST_FORMATS) -> DirectoryListing:
    """Lists a folder with one subfolder per class as Keras' `flow_from_directory` does.

    Args:
      directory: the folder.
      classes: subfolder names to use, in this order (their indices); None: every subfolder,
        sorted.
      follow_links: follow symbolic links to subfolders.
      split: (start, stop) fractions of each class folder's sorted files to keep, e.g.
        (0, 0.2) for a validation subset of 20 %; None: all.
      formats: allowed file extensions (lower case, without the dot).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} does not exist or is not a folder")
    if not classes:
        classes = [name for name in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, name))]
    classes = list(classes)
    class_indices = dict(zip(classes, range(len(classes))))
    filenames, labels = [], []
    for name in classes:
        folder = os.path.join(directory, name)
        files = list(_valid_files(folder, formats, follow_links))
        if split is not None:
            files = files[int(split[0] * len(files)):int(split[1] * len(files))]
        for root, file in files:
            filenames.append(os.path.join(name, os.path.relpath(os.path.join(root, file),
                                                                folder)))
            labels.append(class_indices[name])
    return DirectoryListing(filenames, np.asarray(labels, np.int32), class_indices)


def default_workers() -> int:
    """Decoding processes: the CPUs this process may use (at least 1, at most 16)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


class _DecodeWorkers:
    """Worker processes running `_pil_decode.serve`, one request in flight per worker."""

    def __init__(self, count: int):
        script = os.path.abspath(_pil_decode.__file__)
        self.processes = [subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE)
                          for _ in range(count)]
        self._finalizer = weakref.finalize(self, _stop, self.processes)

    def decode(self, paths: list, options: dict, image_shape) -> list[np.ndarray]:
        """`paths` split over the workers, decoded; the parts in order."""
        parts = [list(p) for p in np.array_split(np.asarray(paths, dtype=object),
                                                 len(self.processes)) if len(p)]
        busy = self.processes[:len(parts)]
        for process, part in zip(busy, parts):
            pickle.dump((part, options, image_shape), process.stdin,
                        protocol=pickle.HIGHEST_PROTOCOL)
            process.stdin.flush()
        results = []
        for process in busy:
            try:
                status, value = pickle.load(process.stdout)
            except EOFError:
                raise RuntimeError(f"an image decoding worker exited (code "
                                   f"{process.poll()}); see its messages above") from None
            if status != "ok":
                raise ValueError(f"decoding an image failed: {value}")
            results.append(value)
        return results

    def close(self) -> None:
        self._finalizer()


def _stop(processes) -> None:
    for process in processes:
        try:
            process.stdin.close()
        except OSError:
            pass
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


class ImageFileReader:
    """A `jaxscale.data.pipeline.Reader` over image files: decodes only the rows asked for.

    Args:
      filepaths: one path per example.
      labels: int[N] class indices, or None (all 0).
      target_size: (height, width) every image is resized to.
      color_mode: "grayscale", "rgb" or "rgba".
      interpolation: Pillow's resize filter, by Keras' name.
      keep_aspect_ratio: centre-crop to the target's aspect ratio before resizing.
      num_classes: None: max(labels) + 1.
      workers: decoding processes (`default_workers()` when None), started on the first
        read of several files; 1 decodes in the calling thread.

    Attributes:
      image_shape: (height, width, channels).
    """

    def __init__(self, filepaths: Sequence, labels=None, *, target_size=(256, 256),
                 color_mode: str = "rgb", interpolation: str = "nearest",
                 keep_aspect_ratio: bool = False, num_classes: int | None = None,
                 workers: int | None = None):
        height, width = check_image_options(target_size, color_mode, interpolation)
        self.filepaths = [os.fspath(p) for p in filepaths]
        n = len(self.filepaths)
        self.labels = (np.zeros(n, np.int32) if labels is None
                       else np.asarray(labels).astype(np.int32))
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [N] with N = {n} files, got shape "
                             f"{self.labels.shape}")
        self.num_classes = int(num_classes if num_classes is not None
                               else (int(self.labels.max()) + 1 if n else 0))
        self.image_shape = (height, width, COLOR_MODES[color_mode])
        self.options = {"color_mode": color_mode, "target_size": (height, width),
                        "interpolation": interpolation, "keep_aspect_ratio": keep_aspect_ratio}
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._pool = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stops the decoding processes (they start again on the next read)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def read_images(self, rows) -> np.ndarray:
        """The images at `rows` (int[B]): uint8[B, H, W, C]."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        paths = [self.filepaths[r] for r in rows]
        if self.workers == 1 or len(paths) < 2:
            return _pil_decode.decode_files(paths, self.options, self.image_shape)
        with self._lock:
            if self._pool is None:
                self._pool = _DecodeWorkers(self.workers)
            try:
                parts = self._pool.decode(paths, self.options, self.image_shape)
            except RuntimeError:
                self._pool.close()
                self._pool = None
                raise
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8[B, H, W, C], labels int32[B]) of the examples at `rows`."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        return self.read_images(rows), self.labels[rows]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder(Dataset):
    """A `Dataset` read from a folder of image files, with where each example came from.

    Attributes (besides Dataset's):
      class_names: the class of each label index (the subfolder names).
      filenames: each example's path relative to the folder, in the order of `images`.
    """

    class_names: tuple[str, ...] = ()
    filenames: tuple[str, ...] = ()

    def take(self, rows: slice | np.ndarray, split: str | None = None) -> "ImageFolder":
        taken = super().take(rows, split)
        names = np.asarray(self.filenames, dtype=object)[rows]
        return dataclasses.replace(taken, filenames=tuple(names.tolist()))


def load_image_folder(directory, *, image_size: tuple[int, int] = (256, 256),
                      color_mode: str = "rgb", class_names: Sequence[str] | None = None,
                      interpolation: str = "bilinear", follow_links: bool = False,
                      crop_to_aspect_ratio: bool = False, validation_split: float = 0.0,
                      subset: str | None = None, workers: int | None = None) -> ImageFolder:
    """A folder with one subfolder of image files per class, read into a `Dataset`.

    The device-resident twin of Keras' `image_dataset_from_directory`: the same arguments
    by the same names, but one uint8 array in host memory instead of a float32 tf.data
    pipeline; batching, shuffling, scaling and augmentation happen later, on the device.

    Args:
      directory: the folder; each subfolder is a class.
      image_size: (height, width) every image is resized to.
      color_mode: "grayscale", "rgb" or "rgba" (1, 3 or 4 channels).
      class_names: subfolders to read, in the order of their label indices; None: all,
        sorted.
      interpolation: Pillow's resize filter ("bilinear" as image_dataset_from_directory).
      follow_links: follow symbolic links to subfolders.
      crop_to_aspect_ratio: centre-crop to the target aspect ratio before resizing.
      validation_split, subset: hold out the first `validation_split` of each class
        folder's sorted files ("validation") or keep the rest ("training"), as
        `flow_from_directory` does (Keras' image_dataset_from_directory shuffles the files
        before splitting instead).
      workers: decoding processes (`default_workers()` when None).

    Returns:
      ImageFolder (a Dataset): images uint8[N, H, W, C], labels int32[N], in the listing's
      order (class by class, files sorted); `class_names` and `filenames` say which is which.
    """
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if (validation_split > 0) != (subset is not None):
        raise ValueError("validation_split and subset go together: validation_split > 0 "
                         "needs subset='training' or 'validation', and subset needs "
                         f"validation_split > 0 (got {validation_split}, {subset!r})")
    split = None
    if subset is not None:
        if subset not in ("training", "validation"):
            raise ValueError(f'Invalid subset name: {subset}; expected "training" or '
                             '"validation".')
        split = (0.0, validation_split) if subset == "validation" else (validation_split, 1.0)
    listing = list_directory(directory, classes=class_names, follow_links=follow_links,
                             split=split)
    if not listing.filenames:
        raise ValueError(f"no image files ({', '.join(WHITE_LIST_FORMATS)}) found in the "
                         f"class subfolders of {os.fspath(directory)!r}")
    reader = ImageFileReader([os.path.join(directory, f) for f in listing.filenames],
                             listing.classes, target_size=image_size, color_mode=color_mode,
                             interpolation=interpolation,
                             keep_aspect_ratio=crop_to_aspect_ratio,
                             num_classes=len(listing.class_indices), workers=workers)
    try:
        images, labels = reader.read(np.arange(len(reader)))
    finally:
        reader.close()
    name = Path(os.fspath(directory)).name
    return ImageFolder(images, labels, name, "all" if subset is None else subset,
                       len(listing.class_indices),
                       class_names=tuple(listing.class_indices),
                       filenames=tuple(listing.filenames))

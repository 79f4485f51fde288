"""Image classification datasets as uint8 NHWC arrays: tensorflow-datasets, offline too.

`load_dataset("mnist")` goes through tensorflow-datasets (tfds), so any image classification
dataset tfds knows (mnist, fashion_mnist, cifar10, ...) loads by name. With no network, point
`data_dir` (or the environment variable `JAXSCALE_DATA_DIR`) at the folder holding the
dataset's original files (for MNIST its four `*-ubyte.gz` files): tfds takes them from there as
its *manual directory*, checks them against its own registered checksums and prepares the
dataset once under `JAXSCALE_CACHE_DIR` (default `~/.cache/jaxscale/tfds`). Preparation is
guarded by a file lock, so parallel test workers or processes prepare it once.

`source="raw"` reads the IDX files of MNIST and Fashion-MNIST directly with NumPy (no
TensorFlow), after checking each file's size and SHA-256 against the registered values. Either
way a missing, truncated or corrupt file raises `DatasetFileError` naming the file and what was
expected: never a silently short dataset.

Order: the raw reader keeps the files' order; tfds stores records in its own (fixed, shuffled)
order, so the two sources hold the same examples in different orders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from jaxscale.data.sharding import process_shard

SOURCES = ("auto", "tfds", "raw")
SUBSETS = ("training", "validation")
DATA_DIR_ENV = "JAXSCALE_DATA_DIR"
CACHE_DIR_ENV = "JAXSCALE_CACHE_DIR"


class DatasetFileError(ValueError):
    """A dataset file is missing, truncated, corrupt or has the wrong checksum."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image classification dataset, in host memory.

    Attributes:
      images: uint8[N, H, W, C].
      labels: int32[N], in [0, num_classes).
      name: the dataset's name ("mnist").
      split: the split it was read from ("train", "test", "train[:1000]", ...), with the
        validation subset and process shard appended when those were asked for.
      num_classes: number of classes.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    num_classes: int

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"Dataset images must be uint8[N, H, W, C], got "
                             f"{self.images.dtype}{list(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"Dataset labels must be [N] with N = {self.images.shape[0]}, "
                             f"got shape {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])

    def take(self, rows: slice | np.ndarray, split: str | None = None) -> "Dataset":
        """The examples at `rows` (a slice or an index array), as a new Dataset."""
        return dataclasses.replace(self, images=self.images[rows], labels=self.labels[rows],
                                   split=self.split if split is None else split)


@dataclasses.dataclass(frozen=True)
class RawFile:
    """An original file, with the size and SHA-256 that tfds registers for it."""

    filename: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class RawFormat:
    """Where each split of a dataset lives in its original IDX files."""

    num_classes: int
    splits: dict  # split name -> (images RawFile, labels RawFile)


def _idx_pair(prefix, image_size, image_sha, label_size, label_sha):
    return (RawFile(f"{prefix}-images-idx3-ubyte.gz", image_size, image_sha),
            RawFile(f"{prefix}-labels-idx1-ubyte.gz", label_size, label_sha))


# Sizes and SHA-256 sums as registered by tensorflow-datasets 4.9 (url_checksums/*.txt).
RAW_FORMATS: dict[str, RawFormat] = {
    "mnist": RawFormat(10, {
        "train": _idx_pair(
            "train",
            9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "test": _idx_pair(
            "t10k",
            1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }),
    "fashion_mnist": RawFormat(10, {
        "train": _idx_pair(
            "train",
            26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "test": _idx_pair(
            "t10k",
            4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    }),
}

_IDX_MAGIC = {2049: 1, 2051: 3}  # labels: [N]; images: [N, H, W]


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, expected: RawFile) -> None:
    """Checks that `path` exists with the expected size and SHA-256.

    Raises:
      DatasetFileError: naming the file and the expected vs actual size or checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(
            f"{path}: file not found (expected {expected.filename}, {expected.size} bytes, "
            f"sha256 {expected.sha256})")
    size = path.stat().st_size
    if size != expected.size:
        raise DatasetFileError(
            f"{path}: expected {expected.size} bytes, found {size} "
            f"({'truncated' if size < expected.size else 'too long'}; re-download it)")
    actual = sha256_of(path)
    if actual != expected.sha256:
        raise DatasetFileError(
            f"{path}: wrong checksum: expected sha256 {expected.sha256}, got {actual} "
            "(corrupt or a different file; re-download it)")


def read_idx(path: str | Path, expected: RawFile | None = None) -> np.ndarray:
    """Reads one gzip-compressed IDX file (MNIST's format) into a uint8 array.

    Args:
      path: a `*-idx1-ubyte.gz` (labels) or `*-idx3-ubyte.gz` (images) file.
      expected: size and SHA-256 to verify before decoding; None skips the check (the
        header and the data length are still checked).

    Returns:
      uint8[N] for labels, uint8[N, H, W] for images.

    Raises:
      DatasetFileError: missing file, wrong size or checksum, corrupt gzip stream, unknown
        magic number, or fewer/more bytes than the header announces.
    """
    path = Path(path)
    if expected is not None:
        verify_file(path, expected)
    elif not path.is_file():
        raise DatasetFileError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetFileError(f"{path}: corrupt or truncated gzip stream: {err}") from err
    if len(raw) < 8:
        raise DatasetFileError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DatasetFileError(
            f"{path}: not an IDX file of uint8 labels or images: magic number {magic}, "
            f"expected 2049 (labels) or 2051 (images)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"{path}: truncated IDX header ({len(raw)} < {header} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = int(np.prod(dims))
    found = len(raw) - header
    if found != expected_bytes:
        raise DatasetFileError(
            f"{path}: header announces shape {dims} = {expected_bytes} bytes of data, "
            f"found {found} ({'truncated' if found < expected_bytes else 'trailing bytes'})")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def resolve_data_dir(name: str, data_dir: str | Path | None) -> Path | None:
    """The folder holding `name`'s original files: `data_dir/name` if it exists, else
    `data_dir`; `data_dir` defaults to `$JAXSCALE_DATA_DIR`; None when neither is set."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        return None
    data_dir = Path(data_dir).expanduser()
    return data_dir / name if (data_dir / name).is_dir() else data_dir


def cache_dir() -> Path:
    """Where tfds-prepared datasets are kept: `$JAXSCALE_CACHE_DIR` or ~/.cache/jaxscale/tfds."""
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/jaxscale/tfds").expanduser()


_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


def _raw_split(split: str, raw: RawFormat, name: str) -> tuple[str, re.Match]:
    """Parses "train", "test[:1000]" or "train[10%:]" into (base split, slice match); a
    percent bound is rounded down to a whole example."""
    match = _SLICE.match(split.replace(" ", ""))
    if not match or match.group(1) not in raw.splits:
        raise ValueError(f"{name} has splits {sorted(raw.splits)} (optionally sliced, e.g. "
                         f"'train[:1000]' or 'train[:10%]'), got split {split!r}")
    return match.group(1), match


def _apply_slice(match, n: int) -> slice:
    def bound(text, percent):
        if not text:
            return None
        return int(text) * n // 100 if percent else int(text)
    if match.group(2) is None and match.group(4) is None:
        return slice(None)
    return slice(bound(match.group(2), match.group(3)), bound(match.group(4), match.group(5)))


def _load_raw(name: str, split: str, data_dir: str | Path | None) -> Dataset:
    if name not in RAW_FORMATS:
        raise ValueError(f"source='raw' reads {sorted(RAW_FORMATS)}, not {name!r}; use "
                         "source='tfds' for other datasets")
    raw = RAW_FORMATS[name]
    folder = resolve_data_dir(name, data_dir)
    if folder is None:
        raise ValueError(f"source='raw' needs data_dir or ${DATA_DIR_ENV}: the folder holding "
                         f"{name}'s original files")
    base, match = _raw_split(split, raw, name)
    image_file, label_file = raw.splits[base]
    images = read_idx(folder / image_file.filename, image_file)
    labels = read_idx(folder / label_file.filename, label_file)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFileError(
            f"{folder / image_file.filename} holds {images.shape[0]} images but "
            f"{folder / label_file.filename} holds {labels.shape[0]} labels")
    rows = _apply_slice(match, images.shape[0])
    return Dataset(images[rows, :, :, None], labels[rows].astype(np.int32), name, split,
                   raw.num_classes)


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive advisory lock on `path` (POSIX), so only one process prepares a dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, tfds' own atomic rename still applies
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "source='tfds' needs tensorflow-datasets (pip install 'jaxscale[tfds]'); "
            f"source='raw' reads {sorted(RAW_FORMATS)} without it") from err
    return tfds


def tfds_builder(name: str, data_dir: str | Path | None = None, *,
                 file_format: str = "tfrecord"):
    """A prepared tfds builder for `name`, cached under `cache_dir()`.

    When the original files are in a local folder (`data_dir` / `$JAXSCALE_DATA_DIR`) they are
    used as tfds' manual directory: no network. The folder must hold the dataset's original
    files (for datasets in `RAW_FORMATS` they are verified by size and SHA-256; for others at
    least one of the files tfds would download must be there), else `DatasetFileError` names
    what is missing instead of tfds going to the network. `file_format="array_record"`
    prepares a random-access copy (see `load_data_source`) in `cache_dir()/array_record`.

    Raises:
      ValueError: `name` is not a tfds dataset (the message suggests close names).
      DatasetFileError: the local folder lacks the dataset's files, or tfds rejects them.
    """
    tfds = _import_tfds()
    cache = cache_dir() if file_format == "tfrecord" else cache_dir() / file_format
    folder = resolve_data_dir(name, data_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetFileError(f"cannot create the dataset cache {cache} ({error}); set "
                               f"${CACHE_DIR_ENV} to a writable folder") from error
    with file_lock(cache / f".{name}.lock"):
        try:
            builder = tfds.builder(name, data_dir=str(cache), file_format=file_format)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(_unknown_dataset(name, tfds)) from None
        if not builder.is_prepared():
            if folder is not None:
                _check_manual_folder(name, builder, folder)
            config = tfds.download.DownloadConfig(
                manual_dir=None if folder is None else str(folder))
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as err:
                if "checksum" in type(err).__name__.lower() or "checksum" in str(err).lower():
                    raise DatasetFileError(f"tfds rejected {name}'s files in {folder}: {err}"
                                           ) from err
                raise
    return builder


def _damaged_cache(builder, error) -> str:
    """What to tell about a prepared copy whose records fail to read: the damaged shard files
    (each one read on its own to find them) and how to rebuild it."""
    folder = Path(builder.data_dir)
    bad = []
    try:
        import tensorflow as tf
        for shard in sorted(folder.glob("*.tfrecord*")):
            try:
                for _ in tf.data.TFRecordDataset(str(shard)):
                    pass
            except Exception:  # noqa: BLE001 - DataLossError
                bad.append(str(shard))
    except ImportError:
        pass
    where = ", ".join(bad) if bad else f"a shard in {folder}"
    return (f"the prepared copy of {builder.name} is damaged: {where} ({error}); delete "
            f"{folder} and it is prepared again from the original files")


def _unknown_dataset(name: str, tfds) -> str:
    import difflib
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else (
        "image classification datasets include mnist, fashion_mnist, cifar10, cifar100")
    return f"unknown dataset {name!r}: tensorflow-datasets has no builder of that name; {hint}"


def _check_manual_folder(name: str, builder, folder: Path) -> None:
    """Raises DatasetFileError unless `folder` holds `name`'s original files."""
    if name in RAW_FORMATS:
        for pair in RAW_FORMATS[name].splits.values():
            for expected in pair:
                verify_file(folder / expected.filename, expected)
        return
    wanted = sorted({url.rstrip("/").rsplit("/", 1)[-1] for url in (builder.url_infos or {})})
    if wanted and not any((folder / file).exists() for file in wanted):
        raise DatasetFileError(
            f"{folder} holds none of {name}'s original files ({', '.join(wanted)}); put them "
            f"there, or leave out data_dir (and ${DATA_DIR_ENV}) to let tfds download {name}")


@dataclasses.dataclass(frozen=True, eq=False)
class RecordSource:
    """Random access to a dataset on disk, for datasets that do not fit in memory.

    Reads only the records asked for (tfds' ArrayRecord format), in the same order as
    `load_dataset(name, split, source="tfds")`, so `jaxscale.data.pipeline.HostSource` over it
    yields the same batches as the resident path over the loaded arrays.

    Attributes:
      source: the tfds data source (`builder.as_data_source(split)`).
      image_key, label_key: its feature names.
      name, split, num_classes: as in `Dataset`.
      image_shape: (H, W, C).
    """

    source: object
    image_key: str
    label_key: str
    name: str
    split: str
    num_classes: int
    image_shape: tuple

    def __len__(self) -> int:
        return len(self.source)

    def read(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8[B, H, W, C], labels int32[B]) of the records at `rows` (int[B])."""
        records = self.source.__getitems__([int(r) for r in rows])
        images = np.stack([np.asarray(r[self.image_key], np.uint8) for r in records])
        labels = np.asarray([r[self.label_key] for r in records], np.int32)
        return images, labels

    get_batch = read  # the name of the first release


def load_data_source(name: str, split: str = "train", *,
                     data_dir: str | Path | None = None) -> RecordSource:
    """A random-access `RecordSource` of one split, prepared once (offline from `data_dir`
    as in `load_dataset`) as tfds ArrayRecord files under `cache_dir()/array_record`."""
    builder = tfds_builder(name, data_dir, file_format="array_record")
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise ValueError(f"{name} is not a supervised (image, label) dataset in tfds")
    if info.splits and split.split("[")[0] not in info.splits:
        raise ValueError(f"{name} has splits {sorted(info.splits)}, got split {split!r}")
    image_key, label_key = info.supervised_keys
    return RecordSource(builder.as_data_source(split=split), image_key, label_key, name,
                        split, int(info.features[label_key].num_classes),
                        tuple(info.features[image_key].shape))


def tfds_images(name: str, split: str, data_dir=None, **builder_kwargs):
    """The tfds builder of a supervised dataset of fixed-shape images, checked.

    Returns:
      (builder, image_key, label_key, image_shape [H, W, C]).

    Raises:
      ValueError: not an (image, label) dataset, images of no fixed [H, W, C] shape
        (resize variable-size datasets with a tfds pipeline), or an unknown split (named).
    """
    builder = tfds_builder(name, data_dir, **builder_kwargs)
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise ValueError(f"{name} is not a supervised (image, label) dataset in tfds")
    image_key, label_key = info.supervised_keys
    image_shape = tuple(info.features[image_key].shape)
    if len(image_shape) != 3 or None in image_shape:
        raise ValueError(f"{name}'s images have shape {image_shape}; jaxscale needs a fixed "
                         "[H, W, C] (resize variable-size datasets with a tfds pipeline)")
    if info.splits and split.split("[")[0] not in info.splits:
        raise ValueError(f"{name} has splits {sorted(info.splits)}, got split {split!r}")
    return builder, image_key, label_key, image_shape


def _load_tfds(name: str, split: str, data_dir, *, shard: tuple[int, int] | None,
               validation: tuple[float, str] | None) -> Dataset:
    tfds = _import_tfds()
    builder, image_key, label_key, _ = tfds_images(name, split, data_dir)
    info = builder.info
    read = split
    # Slice in tfds when split sizes are known (only that part is read); without metadata
    # (e.g. under tfds.testing.mock_data) read the split and slice the arrays.
    sliced_by_tfds = bool(info.splits)
    if validation is not None and sliced_by_tfds:
        fraction, subset = validation
        if "[" in split:
            raise ValueError("validation_split needs a whole split name such as 'train', "
                             f"got {split!r}")
        n_val = int(info.splits[split].num_examples * fraction)
        read = f"{split}[:{n_val}]" if subset == "validation" else f"{split}[{n_val}:]"
    if shard is not None and sliced_by_tfds:
        read = tfds.even_splits(read, n=shard[1], drop_remainder=True)[shard[0]]
    try:
        if sliced_by_tfds:
            images, labels = tfds.as_numpy(builder.as_dataset(split=read, batch_size=-1,
                                                              as_supervised=True))
        else:
            # batch_size=-1 means "the split's size", unknown here: read in finite batches.
            parts = list(tfds.as_numpy(builder.as_dataset(split=read, batch_size=4096,
                                                          as_supervised=True)))
    except Exception as error:  # noqa: BLE001 - TensorFlow's DataLossError and kin
        if "DataLoss" in type(error).__name__ or "corrupted record" in str(error) or \
                "truncated record" in str(error):
            raise DatasetFileError(_damaged_cache(builder, error)) from error
        raise
    if not sliced_by_tfds:
        if not parts:
            raise ValueError(f"{name} split {read!r} is empty")
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    num_classes = int(info.features[label_key].num_classes)
    dataset = Dataset(np.asarray(images, np.uint8), np.asarray(labels, np.int32), name, split,
                      num_classes)
    if not sliced_by_tfds:
        if validation is not None:
            dataset = dataset.take(_validation_rows(len(dataset), validation))
        if shard is not None:
            dataset = dataset.take(process_shard(len(dataset), process_index=shard[0],
                                                  process_count=shard[1]))
    return dataset


def _tfds_available() -> bool:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _check_validation(validation_split: float, subset: str | None):
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS} or None, got {subset!r}")
    if (validation_split > 0) != (subset is not None):
        raise ValueError("validation_split and subset go together: validation_split > 0 needs "
                         "subset='training' or 'validation', and subset needs "
                         f"validation_split > 0 (got {validation_split}, {subset!r})")
    return (validation_split, subset) if subset is not None else None


def _validation_rows(n: int, validation: tuple[float, str]) -> slice:
    n_val = int(n * validation[0])
    return slice(0, n_val) if validation[1] == "validation" else slice(n_val, n)


def _suffix(validation, shard) -> str:
    suffix = "" if validation is None else f":{validation[1]}"
    return suffix + ("" if shard is None else f":process{shard[0]}of{shard[1]}")


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path | None = None,
                 source: str = "auto", validation_split: float = 0.0,
                 subset: str | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Dataset:
    """Loads one split of an image classification dataset as uint8 NHWC + int32 labels.

    Args:
      name: a tfds dataset name: "mnist", "fashion_mnist", "cifar10", ...
      split: "train", "test", or a tfds slice such as "train[:1000]" or "train[:10%]".
      data_dir: folder holding the original files (for MNIST the four `*-ubyte.gz` files),
        or its parent with a `name/` subfolder; defaults to `$JAXSCALE_DATA_DIR`. None and
        unset: tfds downloads (needs network) unless already prepared in `cache_dir()`.
      source: "tfds" (tensorflow-datasets, preparing from `data_dir` offline), "raw" (read
        MNIST / Fashion-MNIST IDX files with NumPy, verified by SHA-256) or "auto" (tfds when
        installed, else raw).
      validation_split: fraction of the split held out, taken from its start as Keras'
        `ImageDataGenerator(validation_split=...)` does; needs `subset`.
      subset: "training" (the rest) or "validation" (the held-out start).
      process_index, process_count: read only this process's equal, contiguous part of the
        (sub)set, remainder dropped so every process gets the same count. Both None: the
        whole set. With tfds only that part is read; raw files are gzip, so they are decoded
        whole and sliced. Use `load_process_shard` for jax's own process index and count.

    Returns:
      Dataset with images uint8[N, H, W, C] and labels int32[N].

    Raises:
      DatasetFileError: a file is missing, truncated, corrupt or fails its checksum.
      ValueError: unknown source, split or subset, or an out-of-range fraction.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    validation = _check_validation(validation_split, subset)
    shard = None
    if (process_index is None) != (process_count is None):
        raise ValueError("give both process_index and process_count, or neither")
    if process_count is not None:
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, {process_count}), "
                             f"got {process_index}")
        shard = (process_index, process_count)
    if source == "auto":
        source = "tfds" if _tfds_available() or name not in RAW_FORMATS else "raw"
    if source == "tfds":
        dataset = _load_tfds(name, split, data_dir, shard=shard, validation=validation)
    else:
        dataset = _load_raw(name, split, data_dir)
        if validation is not None:
            dataset = dataset.take(_validation_rows(len(dataset), validation))
        if shard is not None:
            dataset = dataset.take(process_shard(len(dataset), process_index=shard[0],
                                                  process_count=shard[1]))
    if len(dataset) == 0:
        raise ValueError(f"{name} split {split!r}{_suffix(validation, shard)} is empty")
    return dataclasses.replace(dataset, split=split + _suffix(validation, shard))


def load_process_shard(name: str, split: str = "train", **kwargs) -> Dataset:
    """`load_dataset` restricted to this process's part: `jax.process_index()` of
    `jax.process_count()` equal contiguous parts (every host of a multi-host job calls it)."""
    import jax
    return load_dataset(name, split, process_index=jax.process_index(),
                        process_count=jax.process_count(), **kwargs)


def synthetic_dataset(num_examples: int, image_shape: tuple[int, int, int] = (28, 28, 1),
                      num_classes: int = 10, seed: int = 0) -> Dataset:
    """A learnable random dataset for tests and benchmarks without real data.

    Each class has a fixed random template; an image is its class template blended with
    noise, so a model can learn the labels.

    Returns:
      Dataset "synthetic" with images uint8[num_examples, *image_shape], labels int32 drawn
      uniformly from [0, num_classes).
    """
    if num_examples < 1 or num_classes < 1:
        raise ValueError(f"need num_examples >= 1 and num_classes >= 1, got "
                         f"{num_examples}, {num_classes}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (num_classes, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    noise = rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8)
    images = (templates[labels].astype(np.uint16) * 3 + noise) // 4
    return Dataset(images.astype(np.uint8), labels, "synthetic", "train", num_classes)

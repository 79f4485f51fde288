"""jaxscale.data.datasets: real MNIST through tfds (offline) and the raw reader, file errors."""

import gzip
import hashlib

import numpy as np
import pytest

import jaxscale.data.datasets as datasets
from jaxscale.data.datasets import Dataset, DatasetFileError, RawFile, load_dataset

# Facts computed with plain NumPy from the original files (../shared/data/SOURCES.md).
MNIST = {
    "train": dict(n=60000, pixel_sum=1567298545,
                  counts=[5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
    "test": dict(n=10000, pixel_sum=264923200,
                 counts=[980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
}


def reference_idx(path):
    """The IDX file decoded with nothing but gzip and NumPy (independent of the loader)."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw[4 + 4 * ndim:], np.uint8).reshape(dims)


def have_tfds():
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


needs_tfds = pytest.mark.skipif(not have_tfds(), reason="tensorflow-datasets not installed")


@pytest.fixture(scope="module")
def mnist_raw(mnist_dir):
    return {split: load_dataset("mnist", split, data_dir=mnist_dir, source="raw")
            for split in ("train", "test")}


@pytest.fixture(scope="module")
def mnist_tfds(mnist_dir):
    if not have_tfds():
        pytest.skip("tensorflow-datasets not installed")
    return {split: load_dataset("mnist", split, data_dir=mnist_dir, source="tfds")
            for split in ("train", "test")}


# --- real MNIST ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("source", ["raw", "tfds"])
def test_mnist_facts(request, source, split):
    data = request.getfixturevalue(f"mnist_{source}")[split]
    facts = MNIST[split]
    assert data.images.shape == (facts["n"], 28, 28, 1)
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int32
    assert (data.name, data.split, data.num_classes) == ("mnist", split, 10)
    np.testing.assert_array_equal(np.bincount(data.labels, minlength=10), facts["counts"])
    assert int(data.images.sum(dtype=np.int64)) == facts["pixel_sum"]


def test_mnist_raw_first_image_matches_plain_numpy(mnist_raw, mnist_dir):
    train = mnist_raw["train"]
    reference = reference_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    assert int(train.labels[0]) == 5
    assert int(train.images[0].sum()) == 27525 == int(reference[0].sum(dtype=np.int64))
    np.testing.assert_array_equal(train.images[:100, ..., 0], reference[:100])


def test_mnist_tfds_holds_the_raw_examples(mnist_raw, mnist_tfds):
    # tfds stores records in its own order: compare as sorted multisets of (label, image).
    raw, tf = mnist_raw["test"], mnist_tfds["test"]

    def sorted_rows(d):
        flat = np.concatenate([d.labels[:, None].astype(np.uint8),
                               d.images.reshape(len(d), -1)], axis=1)
        return flat[np.lexsort(flat.T[::-1])]

    np.testing.assert_array_equal(sorted_rows(raw), sorted_rows(tf))
    # tfds' fixed order (SOURCES.md): its first training image.
    assert (int(mnist_tfds["train"].labels[0]),
            int(mnist_tfds["train"].images[0].sum())) == (4, 16400)


@pytest.mark.parametrize("source", ["raw", pytest.param("tfds", marks=needs_tfds)])
@pytest.mark.parametrize("subset,expected", [("validation", 6000), ("training", 54000)])
def test_validation_split(mnist_dir, source, subset, expected):
    part = load_dataset("mnist", data_dir=mnist_dir, source=source, validation_split=0.1,
                        subset=subset)
    assert len(part) == expected
    assert part.split == f"train:{subset}"


def test_validation_split_is_the_start_like_keras(mnist_raw, mnist_dir):
    val = load_dataset("mnist", data_dir=mnist_dir, source="raw", validation_split=0.25,
                       subset="validation")
    train = load_dataset("mnist", data_dir=mnist_dir, source="raw", validation_split=0.25,
                         subset="training")
    np.testing.assert_array_equal(np.concatenate([val.labels, train.labels]),
                                  mnist_raw["train"].labels)


@pytest.mark.parametrize("source", ["raw", pytest.param("tfds", marks=needs_tfds)])
def test_process_shards_are_equal_disjoint_parts(mnist_dir, source):
    shards = [load_dataset("mnist", "test", data_dir=mnist_dir, source=source,
                           process_index=i, process_count=3) for i in range(3)]
    assert [len(s) for s in shards] == [3333] * 3
    whole = load_dataset("mnist", "test", data_dir=mnist_dir, source=source)
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]),
                                  whole.labels[:9999])
    assert shards[2].split == "test:process2of3"


@pytest.mark.parametrize("split,expected", [("test[:1000]", 1000), ("test[-10:]", 10),
                                            ("test[10%:20%]", 1000)])
def test_raw_split_slices(mnist_raw, mnist_dir, split, expected):
    part = load_dataset("mnist", split, data_dir=mnist_dir, source="raw")
    assert len(part) == expected
    if split == "test[:1000]":
        np.testing.assert_array_equal(part.labels, mnist_raw["test"].labels[:1000])


def test_data_dir_from_environment_and_parent_folder(mnist_dir, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(mnist_dir.parent))
    assert len(load_dataset("mnist", "test[:5]", source="raw")) == 5


# --- code paths of other tfds datasets ----------------------------------------------------

@needs_tfds
@pytest.mark.parametrize("name,shape", [("fashion_mnist", (28, 28, 1)),
                                        ("cifar10", (32, 32, 3))])
def test_other_tfds_datasets_with_mock_data(name, shape, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    with tfds.testing.mock_data(num_examples=20):
        data = load_dataset(name, "test", source="tfds")
        val = load_dataset(name, "train", source="tfds", validation_split=0.25,
                           subset="validation")
    assert data.images.shape == (20, *shape) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int32 and data.num_classes == 10
    assert 0 <= data.labels.min() and data.labels.max() < 10
    assert len(val) == 5


# --- file errors ----------------------------------------------------------------------------

def write_idx(path, array, magic, *, cut=0):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    body = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(body[:len(body) - cut] if cut else body))
    return path


def as_expected(path):
    data = path.read_bytes()
    return RawFile(path.name, len(data), hashlib.sha256(data).hexdigest())


def test_read_idx_roundtrip(tmp_path):
    images = np.arange(3 * 4 * 5).reshape(3, 4, 5).astype(np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", images, 2051)
    np.testing.assert_array_equal(datasets.read_idx(path, as_expected(path)), images)


def test_read_idx_truncated_data_is_an_error(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((3, 4, 5)), 2051, cut=7)
    with pytest.raises(DatasetFileError, match=r"x-idx3-ubyte.gz.*60 bytes of data, found 53 "
                                               r"\(truncated\)"):
        datasets.read_idx(path)


def test_read_idx_truncated_gzip_is_an_error(tmp_path):
    path = write_idx(tmp_path / "y-idx1-ubyte.gz", np.arange(100), 2049)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetFileError, match="y-idx1-ubyte.gz: corrupt or truncated gzip"):
        datasets.read_idx(path)


def test_read_idx_bad_magic_is_an_error(tmp_path):
    path = write_idx(tmp_path / "z.gz", np.arange(10), 1234)
    with pytest.raises(DatasetFileError, match="z.gz: .*magic number 1234"):
        datasets.read_idx(path)


def fake_mnist(folder):
    """Four small, well-formed IDX files with MNIST's names (wrong checksums, of course)."""
    folder.mkdir(exist_ok=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.ones((n, 28, 28)), 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n), 2049)
    return folder


def test_wrong_size_names_file_and_sizes(tmp_path):
    folder = fake_mnist(tmp_path / "mnist")
    size = (folder / "train-images-idx3-ubyte.gz").stat().st_size
    with pytest.raises(DatasetFileError, match=rf"train-images-idx3-ubyte.gz: expected 9912422 "
                                               rf"bytes, found {size} \(truncated"):
        load_dataset("mnist", data_dir=folder, source="raw")


def test_wrong_checksum_names_file_and_both_sums(tmp_path, monkeypatch):
    folder = fake_mnist(tmp_path / "mnist")
    path = folder / "t10k-labels-idx1-ubyte.gz"
    # Register the right size but another checksum: the content check must catch it.
    fake = as_expected(path)
    wrong = RawFile(fake.filename, fake.size, "0" * 64)
    images = as_expected(folder / "t10k-images-idx3-ubyte.gz")
    monkeypatch.setitem(datasets.RAW_FORMATS, "mnist", datasets.RawFormat(
        10, {"test": (images, wrong)}))
    with pytest.raises(DatasetFileError, match=rf"t10k-labels-idx1-ubyte.gz: wrong checksum: "
                                               rf"expected sha256 0{{64}}, got {fake.sha256}"):
        load_dataset("mnist", "test", data_dir=folder, source="raw")


def test_mismatched_counts_is_an_error(tmp_path, monkeypatch):
    folder = fake_mnist(tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(3), 2049)
    monkeypatch.setitem(datasets.RAW_FORMATS, "mnist", datasets.RawFormat(10, {"test": (
        as_expected(folder / "t10k-images-idx3-ubyte.gz"),
        as_expected(folder / "t10k-labels-idx1-ubyte.gz"))}))
    with pytest.raises(DatasetFileError, match="holds 4 images but .* holds 3 labels"):
        load_dataset("mnist", "test", data_dir=folder, source="raw")


def test_missing_file_names_it(tmp_path):
    folder = fake_mnist(tmp_path / "mnist")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetFileError, match="t10k-images-idx3-ubyte.gz: file not found"):
        load_dataset("mnist", "test", data_dir=folder, source="raw")


@needs_tfds
def test_tfds_checks_local_files_before_preparing(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "cache"))
    folder = fake_mnist(tmp_path / "mnist")
    with pytest.raises(DatasetFileError, match="-ubyte.gz: expected .* bytes, found"):
        load_dataset("mnist", data_dir=folder, source="tfds")


@pytest.mark.parametrize("source", ["raw", pytest.param("tfds", marks=needs_tfds)])
def test_missing_split_is_an_error(mnist_dir, source):
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\].*'validation'"):
        load_dataset("mnist", "validation", data_dir=mnist_dir, source=source)


@pytest.mark.parametrize("kwargs,match", [
    (dict(source="web"), "source must be one of"),
    (dict(validation_split=0.2), "validation_split and subset go together"),
    (dict(subset="validation"), "validation_split and subset go together"),
    (dict(validation_split=1.5, subset="training"), r"validation_split must be in \[0, 1\)"),
    (dict(validation_split=0.1, subset="val"), "subset must be one of"),
    (dict(process_index=0), "give both process_index and process_count"),
    (dict(process_index=3, process_count=3), r"process_index must be in \[0, 3\)"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", data_dir=tmp_path, **kwargs)


def test_raw_needs_a_known_dataset_and_a_folder(monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="source='raw' reads"):
        load_dataset("cifar10", source="raw")
    with pytest.raises(ValueError, match="source='raw' needs data_dir"):
        load_dataset("mnist", source="raw")


# --- synthetic data and the Dataset record --------------------------------------------------

@pytest.mark.parametrize("shape,classes", [((28, 28, 1), 10), ((8, 6, 3), 4)])
def test_synthetic_dataset(shape, classes):
    a = datasets.synthetic_dataset(50, shape, classes, seed=3)
    b = datasets.synthetic_dataset(50, shape, classes, seed=3)
    c = datasets.synthetic_dataset(50, shape, classes, seed=4)
    assert a.images.shape == (50, *shape) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int32 and a.labels.max() < classes and a.num_classes == classes
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_synthetic_images_carry_their_class():
    data = datasets.synthetic_dataset(400, (8, 8, 1), 2, seed=0)
    means = [data.images[data.labels == k].mean(axis=0) for k in range(2)]
    # Nearest class mean recovers the labels: the data is learnable.
    dist = [np.abs(data.images - m).sum(axis=(1, 2, 3)) for m in means]
    assert np.mean(np.argmin(dist, axis=0) == data.labels) > 0.95


def test_dataset_checks_its_arrays():
    with pytest.raises(ValueError, match=r"uint8\[N, H, W, C\], got float32\[2, 3, 3\]"):
        Dataset(np.zeros((2, 3, 3), np.float32), np.zeros(2, np.int32), "x", "train", 2)
    with pytest.raises(ValueError, match=r"labels must be \[N\] with N = 2"):
        Dataset(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(3, np.int32), "x", "train", 2)


# --- random-access source for datasets that do not fit in memory ---------------------------

# Slow on a cold cache: preparing the ArrayRecord copy takes 15-30 s.
@pytest.mark.slow
@needs_tfds
def test_record_source_reads_tfds_order(mnist_dir, mnist_tfds):
    source = datasets.load_data_source("mnist", "test", data_dir=mnist_dir)
    assert (len(source), source.num_classes, source.image_shape) == (10000, 10, (28, 28, 1))
    rows = np.array([0, 9999, 17, 17])
    images, labels = source.get_batch(rows)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, mnist_tfds["test"].images[rows])
    np.testing.assert_array_equal(labels, mnist_tfds["test"].labels[rows])


@pytest.mark.parametrize("tfds_installed,first_label", [(True, 4), (False, 5)])
def test_auto_source_prefers_tfds(mnist_dir, monkeypatch, tfds_installed, first_label):
    if tfds_installed and not have_tfds():
        pytest.skip("tensorflow-datasets not installed")
    monkeypatch.setattr(datasets, "_tfds_available", lambda: tfds_installed)
    data = load_dataset("mnist", "train[:3]", data_dir=mnist_dir)
    # tfds' own record order starts with a 4, the raw files with a 5.
    assert int(data.labels[0]) == first_label


def test_load_process_shard_single_process_is_everything(mnist_dir):
    shard = datasets.load_process_shard("mnist", "test[:100]", data_dir=mnist_dir, source="raw")
    assert len(shard) == 100 and shard.split == "test[:100]:process0of1"


@needs_tfds
def test_a_misspelt_dataset_name_is_one_short_error(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'mnsit'.*did you mean mnist") as err:
        load_dataset("mnsit", source="tfds")
    assert len(str(err.value).splitlines()) == 1 and len(str(err.value)) < 300


@needs_tfds
def test_a_folder_without_the_datasets_files_fails_before_any_download(mnist_dir, tmp_path,
                                                                       monkeypatch):
    import time
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DatasetFileError, match=f"{mnist_dir} holds none of cifar10's original "
                       r"files \(cifar-10-binary.tar.gz\)"):
        load_dataset("cifar10", data_dir=mnist_dir, source="tfds")
    assert time.monotonic() - start < 30  # no network retries (they took 208 s)


@needs_tfds
def test_a_damaged_prepared_copy_names_the_shard(mnist_dir, mnist_tfds, tmp_path, monkeypatch):
    import shutil
    prepared = datasets.cache_dir()
    shutil.copytree(prepared / "mnist", tmp_path / "mnist")
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path))
    shard = sorted((tmp_path / "mnist").rglob("mnist-test.tfrecord*"))[0]
    shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
    with pytest.raises(DatasetFileError, match=f"damaged: {shard} .*delete"):
        load_dataset("mnist", "test", data_dir=mnist_dir, source="tfds")


def test_an_unwritable_cache_is_named(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(blocker / "cache"))
    with pytest.raises(DatasetFileError, match=f"cannot create the dataset cache {blocker}"):
        load_dataset("mnist", source="tfds")

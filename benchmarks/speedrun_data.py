"""The speedrun's data: every worker, ours and the peers', reads the same arrays the same way.

The driver (`benchmarks.speedrun`) reads MNIST once with `load_split` and writes it with
`save_split`; each worker process then reads that file with NumPy alone.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
VALIDATION_SIZE = 10000


def data_folder(data_dir: str | Path | None = None) -> Path:
    """The folder of MNIST's IDX files: `data_dir`, `$JAXSCALE_DATA_DIR` or the shared one."""
    return Path(data_dir or os.environ.get("JAXSCALE_DATA_DIR") or DEFAULT_DATA)


def load_split(split: str, data_dir: str | Path | None = None, npz: str | None = None):
    """(train_images uint8[N,28,28,1], train_labels int32[N], eval_images, eval_labels).

    split "test": the 60,000 training images, evaluated on the 10,000 test images.
    split "validation": train[10000:] (50,000), evaluated on train[:10000] (Keras'
    validation_split convention: the held-out part is the start).
    npz: a file written by `save_split` (the driver reads MNIST once and every worker, ours
    and the peers', reads this with NumPy alone, so no worker pays for importing another
    framework's reader).
    """
    import numpy as np

    if npz:
        with np.load(npz) as arrays:
            return tuple(arrays[name] for name in SPLIT_ARRAYS)
    from jaxscale.data.datasets import load_dataset

    folder = data_folder(data_dir)
    train = load_dataset("mnist", "train", source="raw", data_dir=folder)
    images, labels = train.images, train.labels.astype(np.int32)
    if split == "validation":
        return (images[VALIDATION_SIZE:], labels[VALIDATION_SIZE:],
                images[:VALIDATION_SIZE], labels[:VALIDATION_SIZE])
    if split != "test":
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    test = load_dataset("mnist", "test", source="raw", data_dir=folder)
    return images, labels, test.images, test.labels.astype(np.int32)


SPLIT_ARRAYS = ("train_images", "train_labels", "eval_images", "eval_labels")


def save_split(path: str | Path, split: str, data_dir=None) -> Path:
    """Writes `load_split(split, data_dir)` to an uncompressed .npz for the workers."""
    import numpy as np

    np.savez(path, **dict(zip(SPLIT_ARRAYS, load_split(split, data_dir))))
    return Path(path)

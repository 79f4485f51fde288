"""The images every benchmark uses: real MNIST when its files are here, else synthetic.

Real MNIST is read from the four original `.gz` files (NumPy, checksum-verified) in
`--data-dir`, `$JAXSCALE_DATA_DIR`, or the shared data folder next to the checkout; without
them a synthetic MNIST-shaped set of the same size is generated, so `make bench` works offline
on a fresh machine. The source is recorded in every result.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

MNIST_TRAIN_SIZE = 60000
MNIST_SHAPE = (28, 28, 1)
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclasses.dataclass(frozen=True, eq=False)
class BenchData:
    """Images and labels for the benchmarks.

    Attributes:
      images: uint8[N, 28, 28, 1].
      labels: int32[N].
      source: "mnist (<folder>)" or "synthetic (<why>)".
    """

    images: np.ndarray
    labels: np.ndarray
    source: str

    @property
    def is_real(self) -> bool:
        return self.source.startswith("mnist")


def candidate_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Folders that may hold MNIST's files, in the order they are tried."""
    dirs = [data_dir, os.environ.get("JAXSCALE_DATA_DIR"), _SHARED]
    found = []
    for d in dirs:
        if d:
            d = Path(d)
            found.extend([d, d / "mnist"])
    return found


def load_bench_data(data_dir: str | Path | None = None, *,
                    num_examples: int = MNIST_TRAIN_SIZE, seed: int = 0) -> BenchData:
    """MNIST's training images (the first `num_examples`), or synthetic ones of that shape.

    Never raises for missing data: the reason for falling back is kept in `source`.
    """
    import jaxscale.data.datasets as datasets

    why = "no MNIST files found"
    for folder in candidate_dirs(data_dir):
        if (folder / "train-images-idx3-ubyte.gz").exists():
            try:
                train = datasets.load_dataset("mnist", "train", data_dir=folder, source="raw")
            except (ValueError, OSError) as error:
                why = f"MNIST at {folder} unreadable: {error}"
                continue
            n = min(num_examples, len(train))
            return BenchData(train.images[:n], train.labels[:n].astype(np.int32),
                             f"mnist ({folder})")
    return synthetic_bench_data(num_examples, seed=seed, why=why)


def synthetic_bench_data(num_examples: int, *, seed: int = 0, why: str = "asked for"
                         ) -> BenchData:
    """MNIST-shaped uint8 images with learnable labels (`jaxscale.data.datasets.synthetic_dataset`)."""
    from jaxscale.data.datasets import synthetic_dataset
    data = synthetic_dataset(num_examples, MNIST_SHAPE, 10, seed)
    return BenchData(data.images, data.labels, f"synthetic ({why})")

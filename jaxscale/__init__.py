"""jaxscale: Keras ImageDataGenerator's scaling and augmentation as jitted JAX functions."""

from jaxscale.statistics import (
    DatasetStats,
    allreduce_stats,
    batch_stats,
    compute_stats,
    empty_stats,
    load_stats,
    merge_stacked_stats,
    merge_stats,
    merge_stats_across_hosts,
    save_stats,
    update_stats,
)
from jaxscale.augmentation import (
    FILL_MODES,
    SEED_RECIPE,
    AugmentConfig,
    Transforms,
    apply_transforms,
    augment,
    augment_config,
    augment_jit,
    sample_transforms,
    transform_matrices,
)
from jaxscale.data.datasets import (
    Dataset,
    DatasetFileError,
    load_data_source,
    load_dataset,
    load_process_shard,
    synthetic_dataset,
)
from jaxscale.generator import ImageDataGenerator
from jaxscale.cpu import tune_host_allocator
from jaxscale.data.pipeline import (
    ArrayReader,
    Batch,
    HostSource,
    ResidentSource,
    epoch_batches,
    epoch_order,
    take_rows,
)
from jaxscale.data.sharding import Placement
from jaxscale.scaling import (
    MODES,
    ScalingConfig,
    ScalingParams,
    fit_scaling,
    load_scaling,
    save_scaling,
    scale,
    scale_jit,
    scaling_config,
)

__version__ = "0.1.0"

_LEGACY_PIPELINE = ("DeviceDataset", "epoch_indices", "epoch_key", "gather_batch",
                    "put_on_device", "resident_batches", "scan_epoch", "stream_batches",
                    "take_batch")


def __getattr__(name):
    # The first release's pipeline functions, deprecated (see jaxscale.pipeline).
    if name in _LEGACY_PIPELINE:
        import jaxscale.pipeline as legacy
        return getattr(legacy, name)
    raise AttributeError(f"module 'jaxscale' has no attribute {name!r}")

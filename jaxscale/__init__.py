"""jaxscale: Keras ImageDataGenerator's scaling and augmentation as jitted JAX functions.

The public API, by layer (each name lives in one module; import it from here):

- the core: dataset statistics (`jaxscale.statistics`), scaling modes (`jaxscale.scaling`),
  augmentation (`jaxscale.augmentation`) and the Keras facade (`jaxscale.generator`);
- data (`jaxscale.data`): datasets, and the one input pipeline (resident or streamed);
- training (`jaxscale.training`): config, steps, runners, loop, models, checkpoints;
- CPU tuning (`jaxscale.cpu`).

`tests/test_api.py` pins this list; modules behind it may move.
"""

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
from jaxscale.cpu import tune_host_allocator
from jaxscale.data.datasets import (
    Dataset,
    DatasetFileError,
    load_data_source,
    load_dataset,
    load_process_shard,
    synthetic_dataset,
)
from jaxscale.data.image_files import ImageFileReader, load_image_folder
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
from jaxscale.generator import ImageDataGenerator
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
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.loop import TrainResult, evaluate, train
from jaxscale.training.models import MODELS, get_model, register_model
from jaxscale.training.runners import make_runner
from jaxscale.training.steps import TrainState, create_train_state, make_eval_step, make_train_step

__version__ = "0.1.0"

__all__ = [
    # statistics
    "DatasetStats", "allreduce_stats", "batch_stats", "compute_stats", "empty_stats",
    "load_stats", "merge_stacked_stats", "merge_stats", "merge_stats_across_hosts",
    "save_stats", "update_stats",
    # scaling
    "MODES", "ScalingConfig", "ScalingParams", "fit_scaling", "load_scaling", "save_scaling",
    "scale", "scale_jit", "scaling_config",
    # augmentation
    "FILL_MODES", "SEED_RECIPE", "AugmentConfig", "Transforms", "apply_transforms",
    "augment", "augment_config", "augment_jit", "sample_transforms", "transform_matrices",
    # the Keras facade
    "ImageDataGenerator",
    # data
    "ArrayReader", "Batch", "Dataset", "DatasetFileError", "HostSource", "ImageFileReader",
    "Placement", "ResidentSource", "epoch_batches", "epoch_order", "load_data_source",
    "load_dataset", "load_image_folder", "load_process_shard", "synthetic_dataset",
    "take_rows",
    # training
    "MODELS", "TrainConfig", "TrainResult", "TrainState", "create_train_state", "evaluate",
    "get_model", "make_eval_step", "make_optimizer", "make_runner", "make_train_step",
    "register_model", "train",
    # CPU tuning
    "tune_host_allocator",
]

_LEGACY_PIPELINE = ("DeviceDataset", "epoch_indices", "epoch_key", "gather_batch",
                    "put_on_device", "resident_batches", "scan_epoch", "stream_batches",
                    "take_batch")


def __getattr__(name):
    # The first release's pipeline functions, deprecated (see jaxscale.pipeline).
    if name in _LEGACY_PIPELINE:
        import jaxscale.pipeline as legacy
        return getattr(legacy, name)
    raise AttributeError(f"module 'jaxscale' has no attribute {name!r}")

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

__version__ = "0.1.0"

"""Training: config, steps, runners (one device, pmap, mesh), the loop, models, checkpoints,
multi-host and the command line.

The first release's `jaxscale.training` was one module; the names it had that still exist are
importable from here. Renamed or moved ones forward with a DeprecationWarning for one release:
`auto_parallel` (`runners.resolve_parallel`), `augment_config` (`config.resolve_augment`) and the
benchmark helpers, now in the source tree's `benchmarks` package (`count_compiles`,
`benchmark_train_step`, `benchmark_train_variants`).
"""

from __future__ import annotations

import importlib
import warnings

from jaxscale.training.config import (
    OPTIMIZERS,
    PARALLEL,
    SCHEDULES,
    TrainConfig,
    make_optimizer,
)
from jaxscale.training.loop import TrainResult, evaluate, train
from jaxscale.training.steps import (
    TrainState,
    create_train_state,
    make_eval_step,
    make_train_step,
)

_MOVED = {"count_compiles": "benchmarks.timing",
          "benchmark_train_step": "benchmarks.bench_train",
          "benchmark_train_variants": "benchmarks.bench_train"}


def __getattr__(name: str):
    if name in _MOVED:
        try:
            module = importlib.import_module(_MOVED[name])
        except ImportError:
            raise AttributeError(f"jaxscale.training.{name} moved to the benchmarks package "
                                 f"of jaxscale's source tree ({_MOVED[name]})") from None
        warnings.warn(f"jaxscale.training.{name} moved to {_MOVED[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(module, name)
    if name == "augment_config":
        from jaxscale.training.config import resolve_augment
        warnings.warn("jaxscale.training.augment_config is "
                      "jaxscale.training.config.resolve_augment", DeprecationWarning,
                      stacklevel=2)
        return resolve_augment
    raise AttributeError(f"module 'jaxscale.training' has no attribute {name!r}")


def auto_parallel(devices: int | None = None) -> str:
    """Deprecated: `jaxscale.training.runners.resolve_parallel("auto", devices)`."""
    from jaxscale.training.runners import resolve_parallel
    warnings.warn("jaxscale.training.auto_parallel(devices) is "
                  "jaxscale.training.runners.resolve_parallel('auto', devices)",
                  DeprecationWarning, stacklevel=2)
    return resolve_parallel("auto", devices)

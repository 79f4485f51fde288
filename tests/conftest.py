"""Test configuration: 8 host CPU devices so pmap/sharding paths run without accelerators."""

import os
import tempfile

# Must happen before jax is imported anywhere in the test process. Appended, so that a
# developer's own XLA_FLAGS (e.g. `--xla_cpu_max_isa=AVX2`, as `make test` runs the numerics
# tests) still get the 8 devices the pmap and mesh tests need.
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
if DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS", ""), f"{DEVICE_COUNT_FLAG}=8"]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Most of a training test's time is XLA compiling the same step programs again (every train()
# builds its own); JAX's persistent compilation cache turns the repeats into loads. The key
# holds the program, the compile options, XLA_FLAGS and the versions, so it cannot go stale.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"jaxscale-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(os.environ.get(
    "JAXSCALE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """../shared/data/mnist with the four original files, or skip with the reason."""
    path = SHARED_DATA / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {path} (set JAXSCALE_SHARED_DATA)")
    return path

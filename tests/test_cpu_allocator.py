"""The allocator tuning really moves large buffers from mmap to the heap, and can be refused."""

import json
import os
import subprocess
import sys

import pytest

from jaxscale import cpu as host_allocator

GLIBC = host_allocator._glibc() is not None

# Runs in a fresh interpreter, so this test process's allocator is left as it was: tunes (or
# not), mallocs 64 MiB, and reports how many bytes glibc holds in mmapped blocks for it.
_PROBE = r"""
import ctypes, json, sys
from jaxscale.cpu import tune_host_allocator, _glibc
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = _glibc()
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
line = tune_host_allocator() if sys.argv[1] == "tuned" else "untouched"
before = libc.mallinfo2().hblkhd
pointer = libc.malloc(64 << 20)
after = libc.mallinfo2().hblkhd
libc.free(pointer)
print(json.dumps({"line": line, "mmapped": after - before}))
"""


def _probe(mode: str, env_switch: str | None = None) -> dict:
    env = None
    if env_switch is not None:
        env = dict(os.environ, **{host_allocator.ALLOCATOR_ENV: env_switch})
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                          text=True, check=True, env=env)
    return json.loads(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_large_buffer_comes_from_the_heap_once_tuned():
    untouched = _probe("untouched")
    tuned = _probe("tuned")
    assert untouched["mmapped"] >= 64 << 20  # glibc's default: a fresh mmap per large buffer
    assert tuned["line"].startswith("glibc ") and "256 MiB" in tuned["line"]
    assert tuned["line"].endswith("1 arena")
    assert tuned["mmapped"] == 0


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_environment_switch_leaves_the_allocator_alone():
    switched_off = _probe("tuned", env_switch="0")
    assert switched_off["line"] == f"unchanged: {host_allocator.ALLOCATOR_ENV}=0"
    assert switched_off["mmapped"] >= 64 << 20


# Threads that malloc get arenas of their own unless tuned; malloc_stats (stderr) lists them.
_ARENA_PROBE = r"""
import ctypes, sys, threading
from jaxscale.cpu import tune_host_allocator, _glibc
libc = _glibc()
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "tuned":
    tune_host_allocator()
kept = []
threads = [threading.Thread(target=lambda: kept.append(libc.malloc(1 << 20))) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("mode,one_arena", [("untouched", False), ("tuned", True)])
def test_threads_share_one_arena_once_tuned(mode, one_arena):
    done = subprocess.run([sys.executable, "-c", _ARENA_PROBE, mode], capture_output=True,
                          text=True, check=True)
    arenas = [line for line in done.stderr.splitlines() if line.startswith("Arena ")]
    assert arenas and (len(arenas) == 1) == one_arena


@pytest.mark.parametrize("kwargs,message", [
    ({"mmap_threshold": 0}, "thresholds must be positive"),
    ({"trim_threshold": -1}, "thresholds must be positive"),
    ({"arena_max": 0}, "arena_max must be positive")])
def test_non_positive_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        host_allocator.tune_host_allocator(**kwargs)

"""Deprecated: moved to `jaxscale.cpu`."""

from jaxscale._moved import moved_module

__getattr__ = moved_module(__name__, "jaxscale.cpu",
                           renamed={"ENV_SWITCH": "jaxscale.cpu:ALLOCATOR_ENV"})

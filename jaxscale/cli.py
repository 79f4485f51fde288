"""Deprecated: moved to `jaxscale.training.cli`."""

from jaxscale._moved import moved_module

__getattr__ = moved_module(__name__, "jaxscale.training.cli")

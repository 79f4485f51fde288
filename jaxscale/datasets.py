"""Deprecated: moved to `jaxscale.data.datasets`."""

from jaxscale._moved import moved_module

__getattr__ = moved_module(__name__, "jaxscale.data.datasets")

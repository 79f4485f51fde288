"""Deprecated: moved to `jaxscale.training.runners` (the runner's programs now take chunks of
steps from a `jaxscale.data.pipeline` source)."""

from jaxscale._moved import moved_module

__getattr__ = moved_module(__name__, "jaxscale.training.runners", "jaxscale.data.sharding",
                           renamed={"AXIS": "jaxscale.data.sharding:PMAP_AXIS",
                                    "MESH_AXIS": "jaxscale.data.sharding:DATA_AXIS"})

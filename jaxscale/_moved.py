"""Old module paths kept importable for one release: attribute access warns and forwards.

    # jaxscale/datasets.py
    __getattr__ = moved_module(__name__, "jaxscale.data.datasets")

`from jaxscale.datasets import load_dataset` then still works, with a DeprecationWarning that
names the new home.
"""

from __future__ import annotations

import importlib
import warnings


def moved_module(old: str, *new: str, renamed: dict[str, str] | None = None):
    """A module-level `__getattr__` for the old module `old`, forwarding every name to the
    first of the modules `new` that has it (`renamed` maps old names to "module:name")."""
    renamed = renamed or {}

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in renamed:
            module, _, target = renamed[name].partition(":")
            candidates = [(module, target)]
        else:
            candidates = [(module, name) for module in new]
        for module, target in candidates:
            value = getattr(importlib.import_module(module), target, _MISSING)
            if value is not _MISSING:
                warnings.warn(f"{old}.{name} moved to {module}.{target}; the old path goes "
                              "away in the next release", DeprecationWarning, stacklevel=2)
                return value
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to "
                             f"{', '.join(new)})")

    return __getattr__


_MISSING = object()

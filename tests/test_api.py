"""The public surface and the architecture: the curated names, documented; the core never
imports the trainer; no import cycles; no private name used across modules."""

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import jaxscale

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = sorted([
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
])
# The core and the data layer: they never import the trainer.
CORE = ("statistics", "scaling", "augmentation", "validation", "reductions", "generator",
        "data", "cpu")


def test_the_public_names_are_pinned_and_documented():
    assert sorted(jaxscale.__all__) == PUBLIC
    for name in PUBLIC:
        value = getattr(jaxscale, name)
        if callable(value) and not isinstance(value, dict):
            assert (value.__doc__ or "").strip(), f"jaxscale.{name} has no docstring"


def test_importing_the_public_surface_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        importlib.reload(jaxscale)


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, name: str, modules: dict) -> set[str]:
    """The package modules `path` imports, lazy (in-function) imports included."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = base.split(".")[:len(base.split(".")) - node.level + 1]
                module = ".".join(parts + ([module] if module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph(package: str) -> dict[str, set[str]]:
    modules = _modules(package)
    return {name: _imports(path, name, modules) - {package} for name, path in modules.items()}


@pytest.mark.parametrize("package", ["jaxscale", "benchmarks"])
def test_no_import_cycles(package):
    graph = _graph(package)
    # a cycle exists iff some module reaches itself
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            module = stack.pop()
            assert module != start, f"import cycle through {start}"
            if module not in seen:
                seen.add(module)
                stack.extend(graph.get(module, ()))


def test_the_core_never_imports_the_trainer():
    graph = _graph("jaxscale")
    shims = {"jaxscale.training", "jaxscale.parallel", "jaxscale.checkpoint", "jaxscale.cli",
             "jaxscale.models", "jaxscale.distributed"}
    core = [name for name in graph if name.count(".") and name.split(".")[1] in CORE]
    assert "jaxscale.scaling" in core and "jaxscale.data.pipeline" in core
    for name in core:
        trainer = {m for m in graph[name] if m.startswith("jaxscale.training") or m in shims}
        assert not trainer, f"{name} imports {sorted(trainer)}"


@pytest.mark.parametrize("package", ["jaxscale", "benchmarks"])
def test_no_private_name_is_used_across_modules(package):
    modules = _modules(package)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    ("jaxscale", "benchmarks")) and node.module != name:
                private = [a.name for a in node.names if a.name.startswith("_")
                           and not a.name.startswith("__")
                           and f"{node.module}.{a.name}" not in modules]
                assert not private, f"{name} imports private {private} from {node.module}"
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(("jaxscale", "benchmarks")) and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                raise AssertionError(f"{name} uses {node.value.id}.{node.attr}")

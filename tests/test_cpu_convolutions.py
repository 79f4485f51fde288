"""Steps compiled for CPU run XLA's own convolutions, not YNNPACK's; elsewhere nothing changes."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale import cpu as compiler_options
from jaxscale.data.pipeline import ResidentSource
from jaxscale.training.config import TrainConfig, make_optimizer
from jaxscale.training.runners import make_runner
from jaxscale.training.steps import create_train_state
from jaxscale.cpu import YNN_FUSION_OPTION, step_compiler_options
from jaxscale.scaling import scaling_config

CPU = jax.devices("cpu")


def _ynn_ops(hlo_text: str) -> set[str]:
    """Opcodes (convolution, dot, ...) inside the computations YNNPACK fusions call."""
    called = set(re.findall(r'calls=(%[\w.-]+)[^\n]*"kind":"__ynn_fusion"', hlo_text))
    ops = set()
    for name in called:
        body = re.search(re.escape(name) + r" [^\n]*\{\n(.*?)\n\}", hlo_text, re.S).group(1)
        ops.update(re.findall(r"= \S+ (convolution|dot)\(", body))
    return ops


def _conv_and_dot(x, w, a, b):
    conv = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv, a @ b


def _args():
    key = jax.random.PRNGKey(0)
    # The BN CNN's second convolution at batch 64 (XLA's cost model hands small ones to its
    # own convolution anyway).
    return (jax.random.normal(key, (64, 26, 26, 32)), jax.random.normal(key, (3, 3, 32, 32)),
            jax.random.normal(key, (64, 128)), jax.random.normal(key, (128, 32)))


def test_cpu_steps_take_convolutions_off_ynnpack_and_keep_dots_on_it(monkeypatch):
    monkeypatch.delenv(compiler_options.CONVOLUTIONS_ENV, raising=False)
    options = step_compiler_options(CPU[:1])
    assert options == {YNN_FUSION_OPTION: compiler_options.YNN_WITHOUT_CONVOLUTIONS}
    default = jax.jit(_conv_and_dot).lower(*_args()).compile().as_text()
    ours = jax.jit(_conv_and_dot, compiler_options=options).lower(*_args()).compile().as_text()
    # This jaxlib's default hands both to YNNPACK; ours only the dot. If a jaxlib upgrade
    # changes the default, this fails and the option list needs another look.
    assert _ynn_ops(default) == {"convolution", "dot"}
    assert _ynn_ops(ours) == {"dot"}


def test_both_libraries_compute_the_same_convolution():
    args = _args()
    ours = jax.jit(_conv_and_dot, compiler_options=step_compiler_options(CPU[:1]))(*args)
    default = jax.jit(_conv_and_dot)(*args)
    for a, b in zip(ours, default):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_accelerators_keep_xla_defaults(platform):
    assert step_compiler_options([types.SimpleNamespace(platform=platform)]) == {}
    assert step_compiler_options([CPU[0], types.SimpleNamespace(platform=platform)]) == {}


def test_environment_chooses(monkeypatch):
    monkeypatch.setenv(compiler_options.CONVOLUTIONS_ENV, "ynnpack")
    assert step_compiler_options(CPU[:1]) == {}
    monkeypatch.setenv(compiler_options.CONVOLUTIONS_ENV, "XLA")
    assert step_compiler_options(CPU[:1]) != {}
    monkeypatch.setenv(compiler_options.CONVOLUTIONS_ENV, "onednn")
    with pytest.raises(ValueError, match="JAXSCALE_XLA_CPU_CONVOLUTIONS"):
        step_compiler_options(CPU[:1])
    monkeypatch.delenv(compiler_options.CONVOLUTIONS_ENV)
    # A user who set the option process-wide keeps it: ours would replace theirs.
    monkeypatch.setenv("XLA_FLAGS", f"--{YNN_FUSION_OPTION}=+individual_convolution")
    assert step_compiler_options(CPU[:1]) == {}


def test_a_jaxlib_that_refuses_the_option_keeps_defaults(monkeypatch):
    monkeypatch.setattr(compiler_options, "YNN_WITHOUT_CONVOLUTIONS", "NO_SUCH_FUSION_TYPE")
    compiler_options._accepted_options.cache_clear()
    try:
        assert step_compiler_options(CPU[:1]) == {}
    finally:
        monkeypatch.undo()
        compiler_options._accepted_options.cache_clear()
    assert step_compiler_options(CPU[:1]) != {}


@pytest.mark.parametrize("kind,library", [("none", "xla"), ("mesh", "xla"), ("none", "ynnpack")])
def test_runner_steps_use_the_options(kind, library, monkeypatch):
    monkeypatch.setenv(compiler_options.CONVOLUTIONS_ENV, library)
    config = TrainConfig(model="bn_cnn", batch_size=64, eval_batch_size=64)
    tx = make_optimizer(config, 1)
    runner = make_runner(kind, config, tx, scaling_config("normalize"), devices=CPU[:1])
    source = ResidentSource((np.zeros((64, 28, 28, 1), np.uint8), np.zeros(64, np.int32)),
                            placement=runner.placement)
    state = runner.put_state(create_train_state(runner.model, tx, (28, 28, 1),
                                                jax.random.PRNGKey(0)))
    chunk = next(source.epoch(0, 0, 64))
    text = runner.train.lower(state, runner.train_sums(), source.data, chunk,
                              runner.put_key(0)).compile().as_text()
    assert "convolution(" in text
    assert ("convolution" in _ynn_ops(text)) == (library == "ynnpack")
    # every convolution in the layout XLA:CPU's fast convolutions take: under a lax.scan the
    # weight-gradient ones came out as f01b_i01o->01bf, run by a naive loop (a much slower step)
    assert set(re.findall(r"dim_labels=([\w>-]+)", text)) == {"b01f_01io->b01f"}

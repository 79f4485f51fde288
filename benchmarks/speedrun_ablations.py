"""Where the speedrun's speed comes from: the recipe's train step against variants that each
undo one choice, timed interleaved in one process (images/s, best and median of rounds), and
the compile time of the initial state with each key implementation.

    python -m benchmarks.speedrun_ablations [--recipe speedrun99] [--rounds 6] [--steps 39]

Variants (all train the same net on the same device-resident data):
  recipe                   lax.scan over `steps` steps in one call, conv2d's canonical VJP
  xla_conv_vjp_in_scan     the same scan with JAX's own convolution gradient (jax-ml/jax#12868:
                           XLA:CPU runs weight gradients inside loops as naive loop nests)
  one_step_per_call        `steps` calls of the jitted single step
  host_batches             one step per call, each batch gathered and scaled on the host and
                           copied in (what a host data loader does)
  xla_default_options      the recipe without jaxscale.cpu's compiler options (YNNPACK
                           convolutions)
Writes benchmarks/results/ablations-<hardware>.json (`ablations-cpu.json`), from which
`make docs-tables` makes docs/speedrun.md's ablation table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import report
from benchmarks import speedrun_recipe as sr
from jaxscale.training import models
from jaxscale.cpu import step_compiler_options, tune_host_allocator

RESULTS = Path(__file__).resolve().parent / "results"


def conv2d_xla_vjp(x, kernel):
    """`layers.conv2d` with JAX's own gradient: what the recipe's convolution is timed against."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@contextlib.contextmanager
def xla_conv_vjp():
    """Makes SpeedrunNet use `lax.conv_general_dilated` and JAX's own gradient while active."""
    canonical = models.conv2d
    models.conv2d = conv2d_xla_vjp
    try:
        yield
    finally:
        models.conv2d = canonical


def variants(config, images, labels, steps: int):
    """{name: (run(state) -> state, images per call)}, each compiled before timing."""
    n = len(labels)
    total = config.total_steps(n)
    rows = sr.epoch_rows(0, 0, n, config.batch_size)[:steps]
    key = sr.step_key(0)
    options = step_compiler_options(jax.devices())
    state = sr.init_state_jit(config, 0, images.shape[1:], total_steps=total)
    host_images, host_labels = np.asarray(images), np.asarray(labels)
    made = {}

    def scan(opts):
        return jax.jit(functools.partial(sr.train_steps, config, total), compiler_options=opts
                       ).lower(state, images, labels, rows, key).compile()

    recipe = scan(options)
    made["recipe"] = lambda s: recipe(s, images, labels, rows, key)[0]
    with xla_conv_vjp():
        xla_vjp = scan(options)
    made["xla_conv_vjp_in_scan"] = lambda s: xla_vjp(s, images, labels, rows, key)[0]
    single = jax.jit(functools.partial(sr.train_step, config, total),
                     compiler_options=options).lower(state, images, labels, rows[0], key
                                                     ).compile()

    def one_step_per_call(s):
        for r in rows:
            s, _ = single(s, images, labels, r, key)
        return s

    made["one_step_per_call"] = one_step_per_call
    batch_rows = np.arange(config.batch_size, dtype=np.int32)
    fed = jax.jit(functools.partial(sr.train_step, config, total), compiler_options=options
                  ).lower(state, host_images[:config.batch_size],
                          host_labels[:config.batch_size], batch_rows, key).compile()

    def host_batches(s):
        for r in rows:
            s, _ = fed(s, host_images[r], host_labels[r], batch_rows, key)
        return s

    made["host_batches"] = host_batches
    default = scan({})
    made["xla_default_options"] = lambda s: default(s, images, labels, rows, key)[0]
    return made, state, steps * config.batch_size


def init_compile_seconds(config, image_shape) -> dict:
    """Seconds to compile the initial state with threefry and with rbg keys."""
    out = {}
    for impl in ("threefry2x32", "rbg"):
        def init(seed, impl=impl):
            key = jax.random.key(seed, impl=impl)
            variables = sr.make_model(config).init(key, jnp.zeros((1, *image_shape)))
            return variables
        start = time.perf_counter()
        jax.jit(init).lower(0).compile()
        out[impl] = time.perf_counter() - start
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speedrun_ablations",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="speedrun99")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=39)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tune_host_allocator()
    from benchmarks import data as bench_data
    from benchmarks.run import run_metadata

    config = sr.RECIPES[args.recipe]
    data = bench_data.load_bench_data()
    images, labels = jax.device_put(data.images), jax.device_put(data.labels)
    made, state, items = variants(config, images, labels, args.steps)
    states = {name: jax.block_until_ready(run(state)) for name, run in made.items()}  # warm
    seconds = {name: [] for name in made}
    for _ in range(args.rounds):
        for name, run in made.items():
            start = time.perf_counter()
            states[name] = jax.block_until_ready(run(states[name]))
            seconds[name].append(time.perf_counter() - start)
    rows = []
    base = items / float(np.median(seconds["recipe"]))
    for name, times in seconds.items():
        rate = items / float(np.median(times))
        rows.append({"bench": "speedrun", "name": name, "images_per_s": rate,
                     "images_per_s_max": items / min(times), "seconds_repeats": times,
                     "spread": (max(times) - min(times)) / float(np.median(times)),
                     "vs_recipe": rate / base})
    compile_s = init_compile_seconds(config, data.images.shape[1:])
    rows.append({"bench": "speedrun", "name": "init_compile_s", **compile_s})
    print(f"{'variant':<24} {'img/s median':>13} {'img/s best':>11} {'vs recipe':>10}")
    for row in rows[:-1]:
        print(f"{row['name']:<24} {row['images_per_s']:>13,.0f} {row['images_per_s_max']:>11,.0f} "
              f"{row['vs_recipe']:>9.2f}x")
    print(f"init compile: threefry {compile_s['threefry2x32']:.2f} s, rbg {compile_s['rbg']:.2f} s")
    meta = run_metadata(data.source, quick=False)
    meta.update({"recipe": args.recipe, "steps_per_call": args.steps, "rounds": args.rounds})
    name = f"ablations-{report.hardware_name(meta['backend'], meta['device'])}.json"
    path = report.write_json(args.out / name, meta, rows)
    print(f"wrote {path}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()

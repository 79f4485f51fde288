"""Images per second of on-device augmentation vs Keras' ImageDataGenerator, same run.

The recipe is the seed tutorial's (`jaxscale.augmentation.SEED_RECIPE`: rotation 8, shifts
0.08, shear 0.3, zoom 0.08) on MNIST-shaped uint8 batches. Rows:

- augment_jit: `augment_jit(key, batch, SEED_RECIPE)` on a device-resident batch;
- flow: `jaxscale.ImageDataGenerator(**recipe, rescale=1/255).flow(x, batch_size=...)`, one
  jitted gather + augment + scale per batch;
- fused_train_step: a jitted SGD step of a CNN shaped like the seed tutorial's (conv32, conv32,
  pool, conv64, conv64, pool, dense512, dense10, with BatchNorm) with and without augmentation
  inside the step. `augment_share` = time of the augmentation alone / time of the plain step
  (`step_difference_share`, the fused-minus-plain difference, is also reported but is
  dominated by noise on a shared CPU).
  The CNN is defined here as a stand-in until the trainer's step can be called.

`keras_images_per_s` is Keras 3's `ImageDataGenerator(**recipe).flow(x, batch_size)` timed in
the same process on the same data (None when keras is missing); `ratio` = ours / Keras.

Run: `python -m benchmarks.bench_augment [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxscale  # noqa: E402
from benchmarks.timing import best_of  # noqa: E402
from jaxscale import augmentation, scaling  # noqa: E402

RECIPE = dict(rotation_range=8, width_shift_range=0.08, height_shift_range=0.08,
              shear_range=0.3, zoom_range=0.08)
SEED = 0


def _images(n: int) -> np.ndarray:
    """MNIST-shaped uint8 noise images (the resampler's cost does not depend on content)."""
    rng = np.random.default_rng(SEED)
    return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def keras_images_per_s(x: np.ndarray, batch_size: int, batches: int) -> float | None:
    """Keras' ImageDataGenerator.flow with the recipe; None when keras is not installed."""
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flow = ImageDataGenerator(**RECIPE, rescale=1 / 255).flow(
            x.astype(np.float32), batch_size=batch_size, shuffle=False, seed=SEED)
        next(flow)
        start = time.perf_counter()
        for _ in range(batches):
            next(flow)
        return batches * batch_size / (time.perf_counter() - start)


def _augment_rows(x, repeats, keras_rate, batch_sizes):
    rows = []
    for batch_size in batch_sizes:
        batch = jax.device_put(x[:batch_size])
        key = jax.random.PRNGKey(SEED)
        for order in (1, 0):
            config = augmentation.SEED_RECIPE.replace(interpolation_order=order)
            seconds = best_of(
                lambda: augmentation.augment_jit(key, batch, config).block_until_ready(),
                repeats)
            rows.append(_row(f"augment_jit/order{order}", batch_size, batch_size / seconds,
                             keras_rate))
    return rows


def _flow_row(x, batch_size, batches, keras_rate):
    flow = jaxscale.ImageDataGenerator(**RECIPE, rescale=1 / 255).flow(
        x, batch_size=batch_size, seed=SEED)
    next(flow)[0].block_until_ready()

    def epoch_part():
        for _ in range(batches):
            out = next(flow)
        out.block_until_ready()

    seconds = best_of(epoch_part, 2)
    return _row("flow", batch_size, batches * batch_size / seconds, keras_rate)


def _fused_rows(x, batch_size, repeats):
    """Train-step time of a seed-shaped CNN with and without augmentation in the step."""
    import flax.linen as nn
    import optax

    class SeedCNN(nn.Module):
        @nn.compact
        def __call__(self, images, train: bool):
            h = images
            for features, pool in ((32, False), (32, True), (64, False), (64, True)):
                h = nn.Conv(features, (3, 3), padding="VALID")(h)
                h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
                if pool:
                    h = nn.max_pool(h, (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(512)(h)))
            return nn.Dense(10)(h)

    model, tx = SeedCNN(), optax.adam(1e-3)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    opt_state = tx.init(variables["params"])
    config = scaling.scaling_config("normalize")
    batch = jax.device_put(x[:batch_size])
    labels = jnp.asarray(np.arange(batch_size) % 10)

    def make_step(with_augment: bool):
        @jax.jit
        def step(variables, opt_state, key, images, labels):
            if with_augment:
                images = augmentation.augment(key, images, augmentation.SEED_RECIPE)
            images = scaling.scale(images, config)

            def loss_fn(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]}, images,
                    train=True, mutable=["batch_stats"])
                onehot = jax.nn.one_hot(labels, 10)
                return optax.softmax_cross_entropy(logits, onehot).mean(), updates

            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                variables["params"])
            changes, opt_state = tx.update(grads, opt_state, variables["params"])
            params = optax.apply_updates(variables["params"], changes)
            return {"params": params, **updates}, opt_state, loss
        return step

    steps = {flag: make_step(flag) for flag in (False, True)}
    key = jax.random.PRNGKey(1)
    augment_only = jax.jit(lambda k, b: augmentation.augment(k, b, augmentation.SEED_RECIPE))
    timed = {
        "plain": lambda: steps[False](variables, opt_state, key, batch, labels)[2],
        "fused": lambda: steps[True](variables, opt_state, key, batch, labels)[2],
        "augment": lambda: augment_only(key, batch),
    }
    for fn in timed.values():
        fn().block_until_ready()
    # Interleaved, best of `repeats`: other load on a shared CPU hits all three alike.
    best = {name: float("inf") for name in timed}
    for _ in range(repeats):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn().block_until_ready()
            best[name] = min(best[name], time.perf_counter() - start)
    return [{"bench": "augment", "name": "fused_train_step", "batch_size": batch_size,
             "images_per_s": batch_size / best["fused"],
             "plain_step_images_per_s": batch_size / best["plain"],
             "keras_images_per_s": None, "ratio": None,
             # the augmentation's own time over the step's: the difference of two step
             # timings is below the noise of a shared CPU
             "augment_share": best["augment"] / best["plain"],
             "step_difference_share": (best["fused"] - best["plain"]) / best["fused"],
             "device": str(jax.devices()[0].platform)}]


def _row(name, batch_size, rate, keras_rate):
    return {"bench": "augment", "name": name, "batch_size": batch_size, "images_per_s": rate,
            "keras_images_per_s": keras_rate,
            "ratio": None if not keras_rate else rate / keras_rate,
            "augment_share": None, "device": str(jax.devices()[0].platform)}


def run(quick: bool = False) -> list[dict]:
    """Times the seed recipe every way; returns one row per measurement.

    Row keys: bench, name, batch_size, images_per_s, keras_images_per_s, ratio,
    augment_share (fused rows only, else None), device; fused rows add
    plain_step_images_per_s and step_difference_share.
    """
    x = _images(4096 if quick else 16384)
    repeats = 3 if quick else 10
    keras_rate = keras_images_per_s(x, 1024, 2 if quick else 6)
    rows = _augment_rows(x, repeats, keras_rate, (128, 1024))
    rows.append(_flow_row(x, 1024, 3 if quick else 12, keras_rate))
    for batch_size in ((64,) if quick else (64, 512)):
        rows.extend(_fused_rows(x, batch_size, repeats))
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    rows = run(quick=parser.parse_args().quick)
    print(f"{'name':<22} {'batch':>6} {'images/s':>12} {'keras img/s':>12} {'ratio':>8} "
          f"{'aug share':>9}")
    for r in rows:
        print(f"{r['name']:<22} {r['batch_size']:>6} {r['images_per_s']:>12,.0f} "
              f"{_fmt(r['keras_images_per_s'], '12,.0f'):>12} {_fmt(r['ratio'], '8.1f'):>8} "
              f"{_fmt(r['augment_share'], '9.1%'):>9}")
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")


if __name__ == "__main__":
    main()

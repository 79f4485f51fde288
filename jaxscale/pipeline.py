"""Device-resident input pipeline: shuffling and batching as index arrays on device.

The dataset lives on the device once, as uint8; an epoch is an int32[steps, batch] array of
indices drawn from a `jax.random` key, and a step gathers its rows inside the jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def epoch_indices(key: jax.Array, num_examples: int, batch_size: int, *,
                  shuffle: bool = True) -> tuple[jax.Array, jax.Array]:
    """Indices and validity mask of every batch of one epoch.

    Args:
      key: PRNG key for this epoch (fold the epoch number into a run key for a new order
        every epoch).
      num_examples: dataset size N.
      batch_size: B.
      shuffle: random order (else 0..N-1).

    Returns:
      (indices int32[S, B], mask bool[S, B]) with S = ceil(N / B). The last batch is padded
      with index 0 and mask False, so every step has the same shape (no recompilation).
    """
    order = (jax.random.permutation(key, num_examples) if shuffle
             else jnp.arange(num_examples))
    steps = -(-num_examples // batch_size)
    padded = steps * batch_size
    order = jnp.concatenate([order, jnp.zeros((padded - num_examples,), order.dtype)])
    mask = jnp.arange(padded) < num_examples
    return (order.astype(jnp.int32).reshape(steps, batch_size), mask.reshape(steps, batch_size))

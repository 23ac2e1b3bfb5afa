"""Test accuracy and loss of a model (SPEC §2.5): top-1 accuracy and mean cross-entropy, `train=False`
(BatchNorm uses its running statistics)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def make_evaluate(model, batch_size: int = 1000) -> Callable:
    """Builds `evaluate(variables, x_test, y_test) -> (accuracy, mean_loss)`.

    The test set is processed in batches of `min(batch_size, N)` examples sliced on device; the last
    batch is the window `[N - b, N)` with its already-counted head masked out, so every batch has the
    same shape (one compilation per test-set size) and each example counts exactly once. Batches are
    dispatched from a host loop (XLA:CPU runs convolutions inside a compiled loop slowly, jax#12868)
    and the totals are read once at the end.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      batch_size: examples per forward pass (>= 1).

    Returns:
      `evaluate(variables, x_test [N, H, W, C], y_test [N] int, index=None) -> (accuracy, mean_loss)`
      (with `index` `[V]` int: on the samples `x_test[index]` only, e.g. a validation hold-out of
      the training set, gathered batch by batch), both
      float32 scalars (jax arrays): accuracy = fraction of `argmax(logits) == y` (first maximum
      on ties, as `torch.argmax`), mean_loss = mean cross-entropy. Pass device arrays (host arrays
      are copied on every call).
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")

    def batch_sums(variables, x, y, start, skip, b, index=None):
        if index is None:
            xb = jax.lax.dynamic_slice_in_dim(x, start, b, axis=0)
            yb = jax.lax.dynamic_slice_in_dim(y, start, b, axis=0).astype(jnp.int32)
        else:  # a subset of `x` (a validation hold-out): gather the window's samples
            ib = jax.lax.dynamic_slice_in_dim(index, start, b, axis=0)
            xb, yb = jnp.take(x, ib, axis=0), jnp.take(y, ib, axis=0).astype(jnp.int32)
        valid = jnp.arange(b) >= skip
        logits, _ = model.apply(variables, xb, False)
        logits = logits.astype(jnp.float32)
        correct = jnp.where(valid, jnp.argmax(logits, axis=-1) == yb, False).sum()
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return correct, jnp.where(valid, ce, 0.0).sum()

    batch_fn = jax.jit(batch_sums, static_argnums=(5,))

    def evaluate(variables, x_test, y_test, index=None):
        x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
        n = x_test.shape[0] if index is None else index.shape[0]
        if n == 0 or y_test.shape != (x_test.shape[0],):
            raise ValueError(f"x_test {x_test.shape} and y_test {y_test.shape} must be [N, ...] and [N], N >= 1"
                             + ("." if index is None else f", index {index.shape} non-empty."))
        b = min(batch_size, n)
        correct = jnp.int32(0)
        loss = jnp.float32(0.0)
        for start in range(0, n, b):
            s = min(start, n - b)
            c, batch_loss = batch_fn(variables, x_test, y_test, jnp.int32(s), jnp.int32(start - s), b, index)
            correct, loss = correct + c, loss + batch_loss
        return correct.astype(jnp.float32) / n, loss / n

    return evaluate

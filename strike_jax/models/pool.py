"""Max pooling as PyTorch's `MaxPool2d`, in two forms: `lax.reduce_window` and strided slices.

The gradient of `lax.reduce_window` max is XLA's `select_and_scatter`, which XLA:CPU runs slowly:
measured on the 2-core development CPU (shared, so noisy; medians of 5), 2x2 pooling of
`[64, 28, 28, 16]` (the small CNN's first layer at batch 64): forward 0.7 ms, gradient 25 ms; as
the maximum of four strided slices: 0.5 ms and 0.6 ms. `[128, 8, 8, 64]` (AlexNet-CIFAR's first
pool): gradient 12 ms vs 0.4 ms.

The "slices" form takes the maximum over the `window x window` strided slices of the (-inf padded)
input, records which tap won, and its custom gradient sends each window's output gradient to that
tap: the *first* maximal element in row-major window order, as `select_and_scatter` and PyTorch's
`max_pool2d` backward do (ties are not split as the gradient of `jnp.maximum` would split them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

POOL_IMPLS = ("lax", "slices")


def _out(n: int, window: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - window) // stride + 1


def _taps(xp: Array, window: int, stride: int, ho: int, wo: int) -> list[Array]:
    b, _, _, c = xp.shape
    return [lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1)) for i in range(window) for j in range(window)]


def _max_pool_slices(x: Array, window: int, stride: int, padding: int) -> Array:
    b, h, w, c = x.shape
    ho, wo = _out(h, window, stride, padding), _out(w, window, stride, padding)
    pad_cfg = ((0, 0), (padding, padding), (padding, padding), (0, 0))

    def pad(v):
        return jnp.pad(v, pad_cfg, constant_values=-jnp.inf) if padding else v

    def forward(x):
        taps = _taps(pad(x), window, stride, ho, wo)
        y, idx = taps[0], jnp.zeros(taps[0].shape, jnp.int32)
        for i, t in enumerate(taps[1:], start=1):
            # strictly greater: the first maximum wins ties; a NaN wins (and propagates) as in PyTorch
            better = (t > y) | jnp.isnan(t)
            y, idx = jnp.where(better, t, y), jnp.where(better, i, idx)
        return y, idx

    @jax.custom_vjp
    def pool(x):
        return forward(x)[0]

    def pool_fwd(x):
        # The winning tap is kept from the forward pass: comparing a recomputed input with the
        # output in the backward pass is not safe, as XLA may recompute a fused producer (e.g.
        # ReLU(BatchNorm)) with different rounding, and no tap would then match.
        return forward(x)

    def pool_bwd(idx, dy):
        # The adjoint of taking the taps of the padded input (the pad value plays no part in it).
        untap = jax.linear_transpose(lambda v: _taps(jnp.pad(v, pad_cfg), window, stride, ho, wo),
                                     jax.ShapeDtypeStruct((b, h, w, c), dy.dtype))
        zero = jnp.zeros_like(dy)
        return untap([jnp.where(idx == i, dy, zero) for i in range(window * window)])

    pool.defvjp(pool_fwd, pool_bwd)
    return pool(x)


def max_pool(x: Array, window: int, stride: int | None = None, padding: int = 0, impl: str = "lax") -> Array:
    """PyTorch `MaxPool2d(window, stride, padding)` (floor mode; padding counts as -inf). NHWC.

    Args:
      x: `[B, H, W, C]`.
      window: the square window's side.
      stride: defaults to `window`.
      padding: `-inf` rows / columns on every side.
      impl: "lax" (`lax.reduce_window`; its gradient is `select_and_scatter`) or "slices" (module
        docstring; the CPU choice). Both give the same values and gradients.

    Returns:
      `[B, Ho, Wo, C]`, `Ho = (H + 2 * padding - window) // stride + 1`.
    """
    stride = window if stride is None else stride
    if impl == "lax":
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if impl == "slices":
        return _max_pool_slices(x, window, stride, padding)
    raise ValueError(f"max_pool impl={impl!r}; allowed: {', '.join(map(repr, POOL_IMPLS))}.")

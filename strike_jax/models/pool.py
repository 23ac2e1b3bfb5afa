"""Max pooling as PyTorch's `MaxPool2d`, in two forms: `lax.reduce_window` and strided slices.

The gradient of `lax.reduce_window` max is XLA's `select_and_scatter`, which XLA:CPU runs slowly:
measured on the 2-core development CPU (shared, so noisy; medians of 5), 2x2 pooling of
`[64, 28, 28, 16]` (the small CNN's first layer at batch 64): forward 0.7 ms, gradient 25 ms; as
the maximum of four strided slices: 0.5 ms and 0.6 ms. `[128, 8, 8, 64]` (AlexNet-CIFAR's first
pool): gradient 12 ms vs 0.4 ms.

The "slices" form takes the maximum over the `window x window` strided slices of the (-inf padded)
input, and its custom gradient sends each window's output gradient to the *first* maximal element
in row-major window order, as `select_and_scatter` and PyTorch's `max_pool2d` backward do (ties
are not split as the gradient of `jnp.maximum` would split them).
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
        y = taps[0]
        for t in taps[1:]:
            y = jnp.maximum(y, t)
        return y

    @jax.custom_vjp
    def pool(x):
        return forward(x)

    def pool_fwd(x):
        y = forward(x)
        return y, (x, y)

    def pool_bwd(res, dy):
        x, y = res
        taps, untap = jax.vjp(lambda v: _taps(pad(v), window, stride, ho, wo), x)
        found = jnp.zeros(y.shape, bool)
        grads = []
        for t in taps:  # the first maximal tap of each window takes the whole gradient
            sel = (t == y) & ~found
            found = found | sel
            grads.append(jnp.where(sel, dy, jnp.zeros_like(dy)))
        return untap(grads)

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

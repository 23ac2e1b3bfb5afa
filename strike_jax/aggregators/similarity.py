"""Uncentred inner products for the rules that compare directions (FLTrust, FoolsGold,
ClippedClustering) or clip by norm (SignGuard, Clipping, ARC).

Cosine similarities need the *uncentred* Gram matrix `X X^T` (`ops.centred_gram` centres the
columns, which changes angles), so it is accumulated here with the same blocked walk over columns
(`ops.scan_columns`, Kahan-compensated block sums): one pass over `X`, no `[n, d]` temporary.
Rows holding NaN/Inf give non-finite diagonal entries; the entries between finite rows are
unaffected (entry `(i, j)` only reads rows `i` and `j`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops

Array = jax.Array


@jax.jit
def gram(x: Array) -> Array:
    """`X X^T` (`[n, d]` -> `[n, n]`, exactly symmetric), accumulated over column blocks."""
    n = x.shape[0]

    def piece(xb, sb):
        return None, (xb @ xb.T,)

    _, (g,) = ops.scan_columns(x, piece, (), (jnp.zeros((n, n), x.dtype),), compensated=True)
    return 0.5 * (g + g.T)


@jax.jit
def norms_and_dots(x: Array, v: Array) -> tuple[Array, Array]:
    """`(||x_i||^2, <x_i, v>)` for every row in one blocked pass. `[n, d]`, `[d]` -> `[n]`, `[n]`."""
    n = x.shape[0]

    def piece(xb, sb):
        return None, ((xb * xb) @ jnp.ones((xb.shape[1],), xb.dtype), xb @ sb[0])

    zeros = jnp.zeros((n,), x.dtype)
    _, (sq, dots) = ops.scan_columns(x, piece, (jnp.asarray(v, x.dtype),), (zeros, zeros))
    return sq, dots


@jax.jit
def row_sq_norms(x: Array) -> Array:
    """`||x_i||^2` for every row (one blocked pass; NaN/Inf for non-finite rows). `[n, d]` -> `[n]`."""
    n = x.shape[0]

    def piece(xb, sb):
        return None, ((xb * xb) @ jnp.ones((xb.shape[1],), xb.dtype),)

    _, (sq,) = ops.scan_columns(x, piece, (), (jnp.zeros((n,), x.dtype),))
    return sq


def safe_norm(sq: Array) -> Array:
    """`sqrt(sq)` with a finite gradient at 0 (double `where`)."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def cosine_from_gram(g: Array) -> tuple[Array, Array]:
    """Cosine similarities from an uncentred Gram matrix.

    Args:
      g: `[n, n]` from `gram`.

    Returns:
      `(cos [n, n], ok [n])`: `ok` flags finite rows with a non-zero norm; `cos` is 0 wherever a
      row is not `ok` (its direction is undefined), 1 on the diagonal of `ok` rows, and clipped to
      `[-1, 1]` (rounding can push it out).
    """
    diag = jnp.diagonal(g)
    ok = jnp.isfinite(diag) & (diag > 0)
    both = ok[:, None] & ok[None, :]
    nrm = safe_norm(jnp.where(ok, diag, 0.0))
    denom = jnp.where(both, nrm[:, None] * nrm[None, :], 1.0)
    cos = jnp.clip(jnp.where(both, g, 0.0) / denom, -1.0, 1.0)
    return jnp.where(both, cos, 0.0), ok


@jax.jit
def scale_rows(x: Array, scale: Array) -> Array:
    """`x * scale[:, None]` (one fused pass; `scale` `[n]`)."""
    return x * scale.astype(x.dtype)[:, None]

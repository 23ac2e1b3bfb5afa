"""Gradient skew as numbers (SPEC §8; paper Section 3): how asymmetric the honest updates are.

`gradient_skew` returns, for one round's honest updates:

* the Fisher skewness `g1 = m3 / m2^(3/2)` (biased moment estimator) of the honest rows' coordinates
  along their first principal component,
* the distance from the honest mean to the coordinate-wise lower median (the length of STRIKE's
  search direction `u_search`), and its ratio to the mean distance of the honest rows to their mean.

First principal component: the top right singular vector `v` of the centred honest rows `Y`
(`[h, d]`). It is computed from the small `[n, n]` Gram matrix `K = Y Y^T` (rows outside the mask
zeroed): with `K a = lambda a` (top eigenpair), `v = Y^T a / sqrt(lambda)` and the projections are
`t = Y v = sqrt(lambda) * a`, so nothing of size `d` beyond one pass over `U` is needed.

Sign convention: an eigenvector's sign is arbitrary and the skewness flips with it. We orient `v`
so that `<mu - med, v> >= 0`, i.e. `v` points from the coordinate-wise median towards the mean
(if that inner product is exactly 0, so that the skewness is >= 0). With this orientation a
**positive** skewness means the long tail of the honest updates along PC1 lies on the mean's side
of the median (the dense bulk, where STRIKE hides, lies on the median's side): the configuration
Pearson's rule (mean - median has the sign of the skewness) predicts. A negative value means the
mean-median offset and the third moment along PC1 disagree. The value is invariant to negating
all updates. `abs_skewness` is the orientation-free magnitude.

References: SPEC.md §8 ("Gradient skew as a number"); paper Section 3 and Figures 1, 2, 5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from strike_jax import ops

Array = jax.Array


class SkewStats(NamedTuple):
    """Scalars describing the skew of one round's honest updates (all float scalars).

    Attributes:
      skewness: Fisher skewness along PC1, oriented from the median towards the mean (module doc).
      abs_skewness: `|skewness|`.
      median_mean_distance: `||med - mu||` (lower median, SPEC §1).
      mean_distance: `mean_i ||H_i - mu||` over the honest rows.
      median_ratio: `median_mean_distance / mean_distance` (0 when the rows are all equal).
      explained_variance: fraction of the total variance on PC1 (`lambda / trace K`; 0 if none).
    """

    skewness: Array
    abs_skewness: Array
    median_mean_distance: Array
    mean_distance: Array
    median_ratio: Array
    explained_variance: Array


def _safe_div(a: Array, b: Array) -> Array:
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), jnp.zeros_like(a))


def fisher_skewness(values: Array, mask: Array) -> Array:
    """Biased-moment Fisher skewness `m3 / m2^(3/2)` of the masked entries of `values` (`[n]`).

    Returns 0 when `m2 == 0` (fewer than two distinct values), never NaN.
    """
    m = mask.astype(values.dtype)
    k = jnp.maximum(m.sum(), 1.0)
    mean = (m * values).sum() / k
    c = jnp.where(mask, values - mean, 0.0)
    m2 = (c * c).sum() / k
    m3 = (c * c * c).sum() / k
    return _safe_div(m3, m2 * jnp.sqrt(m2))


def gradient_skew(updates: Array, mask: Array | None = None, *, chunk: int | None = None,
                  backend: ops.Backend | None = None) -> SkewStats:
    """The gradient-skew diagnostic of SPEC §8 for the rows of `updates` where `mask` is True.

    Args:
      updates: `[n, d]` update matrix.
      mask: `[n]` bool, the honest rows (may be traced); None means all rows.
      chunk: columns per block of the single pass over `updates` (static; default per `backend`).
      backend: `ops.Backend` (static; default the platform's).

    Returns:
      `SkewStats` (jit- and vmap-safe; no NaN for degenerate inputs: fewer than 3 distinct rows give
      skewness 0).
    """
    n, _ = updates.shape
    dtype = updates.dtype
    mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    m = mask.astype(dtype)
    w = ops.mean_weights(mask, dtype)
    st = ops.column_stats(updates, w, gram=True, chunk=chunk, backend=backend)
    mu = st.centre
    med = ops.masked_lower_median(updates, mask, backend=backend)
    k = st.gram * (m[:, None] * m[None, :])
    evals, evecs = jnp.linalg.eigh(k)
    lam = jnp.maximum(evals[-1], 0.0)
    a = evecs[:, -1] * m
    proj = jnp.sqrt(lam) * a
    # Orientation: <mu - med, v> = a . (Y (mu - med)) / sqrt(lambda); only its sign matters.
    offset = mu - med
    r = ops.centred_matvec(updates, mu, offset, chunk=chunk, backend=backend) * m
    side = jnp.vdot(a, r)
    g1 = fisher_skewness(proj, mask)
    sign = jnp.where(side > 0, 1.0, jnp.where(side < 0, -1.0, jnp.where(g1 >= 0, 1.0, -1.0)))
    skewness = (sign * g1).astype(dtype)
    med_dist = jnp.sqrt(jnp.vdot(offset, offset))
    row_dists = jnp.sqrt(jnp.maximum(jnp.diagonal(st.gram), 0.0))
    mean_dist = (w * row_dists).sum()
    trace = jnp.maximum(jnp.trace(k), 0.0)
    return SkewStats(
        skewness=skewness,
        abs_skewness=jnp.abs(skewness),
        median_mean_distance=med_dist,
        mean_distance=mean_dist,
        median_ratio=_safe_div(med_dist, mean_dist),
        explained_variance=_safe_div(lam, trace),
    )


__all__ = ["SkewStats", "fisher_skewness", "gradient_skew"]

"""Per-row influence on the aggregate, and the Byzantine rows' share of its deviation (issue 10,
part 3).

**Sensitivity.** For a rule `F: [n, d] -> [d]`, row `i`'s Jacobian block is
`J_i = dF/dx_i` (`[d, d]`). `influence` reports `s_i = ||J_i||_F / sqrt(d)`, the root mean square
of `J_i`'s singular values: the row's *effective weight* in the aggregate. The Mean gives
`1/n` to every row; a coordinate-wise median gives `sqrt(fraction of coordinates where row i is
the median)`; a selection rule gives 0 to the rows it discards. Rules are piecewise smooth, so
`J_i` is the Jacobian of the current piece (exact almost everywhere; see
tests/test_gradients.py).

* exact (`d <= max_exact_d`, or `exact=True`): the full Jacobian by reverse mode
  (`jax.jacrev`, `[d, n, d]`, d VJPs).
* estimated (large `d`): `||J_i||_F^2 = E ||J_i^T v||^2` for `v ~ N(0, I_d)` (Hutchinson's
  trace estimator applied to `J_i J_i^T`), averaged over `probes` VJPs computed as one vmapped
  program. The estimator of `||J_i||_F^2` is unbiased with variance
  `2 ||J_i J_i^T||_F^2 / probes <= 2 ||J_i||_F^4 / probes`: a relative standard error of at most
  `sqrt(2 / probes)` (0.25 with 32 probes), and much less when `J_i` has many comparable singular
  values (e.g. `1/n` times the identity for the Mean: `sqrt(2 / (d * probes))`). `sensitivity_se`
  reports the empirical standard error (delta method on the square root).

**Byzantine share.** With `mu` the honest mean and `D = F(U) - mu`, every rule here is
translation- and positively scale-equivariant around `mu` (except CClip, whose centre and radius
are absolute, and RFA's `eps`), so by Euler's theorem on the piece containing `U`,
`D = sum_i J_i (x_i - mu)`. Splitting the sum into Byzantine and honest rows,
`c_B = sum_{i in B} J_i (x_i - mu)` and `c_H`, is exact (two JVPs), and

    byzantine_share = <c_B, D> / <c_B + c_H, D>,

the fraction of the deviation (projected on its own direction) that the Byzantine rows cause;
`honest_share = 1 - byzantine_share`. `euler_residual = ||c_B + c_H - D|| / ||D||` is ~0 for the
equivariant rules and measures how far a rule is from it otherwise (then the shares are those of
the linearisation).

The decomposition is local: it credits each row with what its own value contributes on the
current piece of the rule. An attack that works through the *selection* (which honest rows end up
as the median, which rows Krum keeps) moves no aggregate coordinate through its own value, and gets
share 0 even when it doubles the deviation (STRIKE against the median does exactly this).
`counterfactual_share = 1 - ||F(U') - mu||^2 / ||D||^2`, with `U'` = `U` whose Byzantine rows are
set to the honest mean `mu`, measures that global effect: the part of the squared deviation that
disappears when the Byzantine rows are neutralised (it can be negative: rows at `mu` still move
order statistics).

References: paper Definition 1 (deviation from the honest mean); Hutchinson, "A stochastic
estimator of the trace of the influence matrix", 1990; Koh & Liang, "Understanding black-box
predictions via influence functions", ICML 2017 (influence as a derivative).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax.analysis.robustness import as_aggregate_fn

Array = jax.Array


class Influence(NamedTuple):
    """Output of `influence`.

    Attributes:
      sensitivity: `[n]` `||J_i||_F / sqrt(d)` (exact or estimated).
      sensitivity_se: `[n]` standard error of the estimate (zeros when exact).
      byzantine_share: scalar, the Byzantine rows' share of the deviation (module docstring;
        NaN when the deviation is 0).
      honest_share: scalar, `1 - byzantine_share`.
      deviation: scalar `||F(U) - mu||`.
      euler_residual: scalar `||c_B + c_H - D|| / ||D||`.
      counterfactual_share: scalar `1 - ||F(U') - mu||^2 / ||D||^2` (module docstring; NaN when the
        deviation is 0).
      exact: Python bool, whether `sensitivity` is exact.
    """

    sensitivity: Array
    sensitivity_se: Array
    byzantine_share: Array
    honest_share: Array
    deviation: Array
    euler_residual: Array
    counterfactual_share: Array
    exact: bool


def influence(aggregator: Any, updates: Array, *, f: int, key: Array, byzantine_mask: Array | None = None,
              exact: bool | None = None, max_exact_d: int = 512, probes: int = 32) -> Influence:
    """Per-row sensitivity of the aggregate and the Byzantine rows' share of its deviation.

    Args:
      aggregator: an `Aggregator` (given `f`, its `init` state and `key`) or a callable
        `U [n, d] -> [d]`.
      updates: `[n, d]` the matrix the server receives (Byzantine rows already replaced).
      f: the rule's Byzantine count; also the default mask's size.
      key: PRNG key (the rule's randomness and the probes).
      byzantine_mask: `[n]` bool (default: the first `f` rows, SPEC §2's Byzantine ids).
      exact: force the exact Jacobian (True) or the estimate (False); None: exact iff
        `d <= max_exact_d`.
      max_exact_d: the largest `d` handled exactly by default.
      probes: random probes of the estimate (>= 2).

    Returns:
      `Influence`.
    """
    updates = jnp.asarray(updates)
    if updates.ndim != 2:
        raise ValueError(f"updates must be [n, d]; got shape {tuple(updates.shape)}.")
    n, d = updates.shape
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= f < n:
        raise ValueError(f"f={f!r} must be an integer in [0, n) with n={n}.")
    if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 2:
        raise ValueError(f"probes={probes!r} must be an integer >= 2.")
    if byzantine_mask is None:
        mask = jnp.arange(n) < f
    else:
        mask = jnp.asarray(byzantine_mask, bool)
        if mask.shape != (n,):
            raise ValueError(f"byzantine_mask must have shape ({n},); got {tuple(mask.shape)}.")
    if bool(jnp.all(mask)):
        raise ValueError("influence needs at least one honest row (the deviation is from their mean).")
    use_exact = d <= max_exact_d if exact is None else bool(exact)
    k_rule, k_probe = jax.random.split(key)
    fn = as_aggregate_fn(aggregator, f, k_rule, updates)
    return _influence(fn, updates, mask, k_probe, use_exact, int(probes))


def _influence(fn, updates, mask, key, use_exact, probes):
    n, d = updates.shape
    dtype = updates.dtype
    honest = (~mask).astype(dtype)
    mu = (honest / honest.sum()) @ updates

    @jax.jit
    def shares(u):
        out = fn(u)
        dev = out - mu
        centred = u - mu
        t_b = jnp.where(mask[:, None], centred, 0.0)
        t_h = jnp.where(mask[:, None], 0.0, centred)
        c_b = jax.jvp(fn, (u,), (t_b,))[1]
        c_h = jax.jvp(fn, (u,), (t_h,))[1]
        dd = jnp.vdot(dev, dev)
        tot = jnp.vdot(c_b + c_h, dev)
        share = jnp.where(tot != 0, jnp.vdot(c_b, dev) / jnp.where(tot != 0, tot, 1.0), jnp.nan)
        resid = jnp.where(dd > 0, jnp.linalg.norm(c_b + c_h - dev) / jnp.sqrt(jnp.where(dd > 0, dd, 1.0)), 0.0)
        neutral = fn(jnp.where(mask[:, None], mu, u)) - mu
        cf = jnp.where(dd > 0, 1.0 - jnp.vdot(neutral, neutral) / jnp.where(dd > 0, dd, 1.0), jnp.nan)
        return share, jnp.sqrt(dd), resid, cf

    share, dev_norm, resid, cf = shares(updates)

    if use_exact:
        jac = jax.jit(jax.jacrev(fn))(updates)  # [d, n, d]
        sq = jnp.sum(jnp.square(jac), axis=(0, 2))
        sens = jnp.sqrt(sq / d)
        se = jnp.zeros_like(sens)
    else:
        @jax.jit
        def estimate(u, key):
            _, vjp = jax.vjp(fn, u)
            v = jax.random.normal(key, (probes, d), dtype)
            rows = jax.vmap(lambda p: jnp.sum(jnp.square(vjp(p)[0]), axis=1))(v)  # [probes, n]
            return rows.mean(axis=0), rows.std(axis=0, ddof=1) / np.sqrt(probes)

        sq, sq_se = estimate(updates, key)
        sens = jnp.sqrt(sq / d)
        # delta method: se(sqrt(x)) = se(x) / (2 sqrt(x))
        se = jnp.where(sq > 0, sq_se / (2.0 * jnp.sqrt(jnp.where(sq > 0, sq, 1.0)) * np.sqrt(d)), 0.0)
    return Influence(sens, se, share, 1.0 - share, dev_norm, resid, cf, bool(use_exact))


__all__ = ["Influence", "influence"]

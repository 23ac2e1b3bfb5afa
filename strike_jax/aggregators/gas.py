"""GAS: gradient splitting (Liu, Chen, Lyu, Wu, Wu & Chen, ICML 2023, "Byzantine-robust learning on
heterogeneous data via gradient splitting", arXiv 2302.06079; the authors' code
`YuchenLiu-a/byzantine-gas`, `server/base.py: gas_aggregate, split`).

On heterogeneous data a robust rule's selection is unreliable in the full `d`-dimensional space
(the curse of dimensionality: the honest spread hides a Byzantine shift). GAS applies the base
rule to `p` low-dimensional pieces of the gradient and only uses each piece's aggregate as a
reference point to score the clients:

1. Splitting: draw a random permutation `perm` of the `d` coordinates (a new one every round, from
   the round's key) and cut it into consecutive chunks of `c = ceil(d / p)` coordinates (as
   `torch.chunk(perm, p)` does in the authors' code: `ceil(d / c)` groups, which is `p` when
   `c` divides evenly and fewer otherwise, `d` single coordinates when `p >= d`; the last chunk
   may be shorter).
2. Identification: for every group `G_j`, aggregate the clients' sub-vectors with the base rule,
   `a_j = base(X[:, G_j], f)`, and add each client's distance to it to its score,
   `s_i += ||X_i[G_j] - a_j||` (Euclidean, not squared).
3. Aggregation: average the `n - f` clients with the lowest total score (ties by row index).

Base rules (`base`): `"krum"` is the authors' `agg_krum`, i.e. Multi-Krum averaging the `n - f`
rows with the lowest Krum scores (this library's `multikrum`); `"bulyan"` is this library's
Bulyan (the published rule with rescoring, `aggregators.bulyan`; the authors' `agg_bulyan` skips
the rescoring, the shortcut SPEC §7 rejects). The limit on `f` is the base rule's: `(n - 3) // 2`
for Krum, `(n - 3) // 4` for Bulyan (both for the `n` rows of every group).

Rows holding NaN/Inf: each group's base rule treats a row non-finite in that group as infinitely
far (SPEC §7), and a row non-finite anywhere scores `+inf`, so it is never averaged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.aggregators.base import require_key, rule_stage
from strike_jax.aggregators.bulyan import _bulyan, bulyan_limit
from strike_jax.aggregators.distance import _multikrum, krum_limit
from strike_jax.registry import choice, integer, register
from strike_jax.stages import Stage

Array = jax.Array

#: The base rules GAS can wrap: `name -> (group aggregate(updates, f, backend), limit(n))`.
BASES = {
    "krum": (lambda x, f, backend: _multikrum(x, f, select=None, offset=2, backend=backend), krum_limit),
    "bulyan": (lambda x, f, backend: _bulyan(x, f, backend=backend), bulyan_limit),
}


def gas_groups(d: int, p: int) -> tuple[int, int]:
    """`(c, m)`: the chunk size `ceil(d / p)` and the number of groups `ceil(d / c)` (the
    `torch.chunk` split of the authors' code; `m <= p`)."""
    c = -(-d // p)
    return c, -(-d // c)


def gas_scores(updates: Array, f: Array, key: Array, *, p: int, base: str,
               backend: ops.Backend | None = None) -> Array:
    """GAS's identification scores (steps 1-2 of the module docstring).

    Args:
      updates: `[n, d]`.
      f: Byzantine count for the base rule (traced ok; already within its limit).
      key: PRNG key of the coordinate permutation (`jax.random.permutation(key, d)`).
      p: number of groups asked for (static).
      base: "krum" or "bulyan" (static).
      backend: `ops.Backend` (static).

    Returns:
      `[n]` scores, `+inf` for a row holding NaN/Inf anywhere.
    """
    n, d = updates.shape
    c, m = gas_groups(d, p)
    perm = jax.random.permutation(key, d)
    # Consecutive chunks of the permuted coordinates, zero-padded to m * c: a zero column adds
    # nothing to a distance, and every base rule maps it to 0.
    xp = jnp.pad(jnp.take(updates, perm, axis=1), ((0, 0), (0, m * c - d)))
    groups = xp.reshape(n, m, c).transpose(1, 0, 2)  # [m, n, c]
    aggregate = BASES[base][0]
    ref = jax.vmap(lambda g: aggregate(g, f, backend))(groups)  # [m, c]
    sq = jnp.sum((groups - ref[:, None, :]) ** 2, axis=2)  # [m, n]
    score = jnp.sqrt(jnp.where(jnp.isnan(sq), jnp.inf, sq)).sum(axis=0)
    return jnp.where(jnp.isnan(score), jnp.inf, score)


@functools.partial(jax.jit, static_argnames=("p", "base", "backend"))
def _gas(updates: Array, f: Array, key: Array, *, p: int, base: str, backend: ops.Backend) -> Array:
    n = updates.shape[0]
    # A selection is piecewise constant: gradients flow through the final average only.
    score = gas_scores(jax.lax.stop_gradient(updates), f, key, p=p, base=base, backend=backend)
    ok = ops.finite_rows(updates, backend=backend)
    chosen = ops.smallest_k_mask(jnp.where(ok, score, jnp.inf), n - f) & ok
    return ops.masked_mean_safe(updates, chosen, ok)


@register("rule", "gas", p=integer(low=1), base=choice(*BASES))
def gas(p=1000, base="krum", *, backend: ops.Backend | None = None) -> Stage:
    """GAS (Liu et al., ICML 2023; see the module docstring): score every client on `p` random
    coordinate groups against the base rule's aggregate of each group, average the `n - f`
    lowest total scores.

    Args:
      p: number of coordinate groups (static; 1000 in the authors' code). The split is
        `torch.chunk`'s: chunks of `ceil(d / p)` coordinates, so fewer than `p` groups when that
        does not divide evenly (`d` groups of one coordinate when `p >= d`).
      base: "krum" (Multi-Krum's `n - f` average, the authors' `agg_krum`) or "bulyan" (static).
      backend: `ops.Backend` (resolved now).

    Returns:
      A rule `Stage`; `update` needs `ctx.key` (the round's coordinate permutation). A concrete
      `f` above the base rule's limit raises, a traced one is clamped to it.

    Cost: the base rule on `[n, d / p]` pieces, vmapped over the groups: Krum `O(n^2 d)` in all;
    Bulyan `O(n^2 d)` for the distances plus `p` selections of `O(n^3)` element-wise work.
    """
    backend = ops.resolve(backend)

    def core(updates, state, f, key):
        return _gas(updates, f, require_key("gas", key), p=p, base=base, backend=backend), state

    return rule_stage("gas", core, limit=BASES[base][1], needs_key=True)


__all__ = ["BASES", "gas", "gas_groups", "gas_scores"]

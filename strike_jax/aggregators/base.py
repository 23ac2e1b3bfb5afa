"""Rules and pre-aggregators as stages, `f` handling, and the adapters of `aggregators.get`.

A rule is a `strike_jax.stages.Stage` of kind "rule": `update(U [n, d], state, ctx) -> (g [d],
state, ctx)`; a pre-aggregator one of kind "preaggregator": `update(U, state, ctx) -> (U' [n', d],
state, ctx')` with `ctx'.f` the rescaled Byzantine count. `ctx.f` may be a Python int or a traced
integer: a concrete `f` above a stage's limit raises `ValueError` naming the limit; a traced `f` is
clamped to it (as the reference does). `f` is required everywhere (`f=0` for none).

`aggregators.get` wraps a stage in a thin adapter for existing users:

    rule.init(updates) -> state;  rule.aggregate(updates, state, *, f, key) -> (vector [d], state)
                                  (FLTrust: also `root_update=g0 [d]`; FoolsGold: `clients=ids [n]`)
    pre.init(updates) -> state;   pre.apply(updates, state, *, f, key) -> (updates' [n', d], f', state)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops
from strike_jax.registry import is_traced
from strike_jax.stages import (
    EmptyState,
    RoundContext,
    Stage,
    as_stage,
    check_updates,
    empty_init,
    make_stage,
    no_limit,
)
from strike_jax.stages import (
    chain as chain_stages,
)

Array = jax.Array


def majority_limit(n: int) -> int:
    """`(n - 1) // 2`: the most Byzantine rows a rule that needs an honest majority tolerates (the
    median and the rules built on it: Median, TrMean/RBTM, RFA, Aksel)."""
    return (n - 1) // 2


def resolve_f(f: Any, limit: int | None, rule: str, n: int) -> Array:
    """Checks a concrete `f` against the stage's limit (ValueError) or clamps a traced one.

    Args:
      f: Byzantine count: int, numpy integer, or (traced) integer array of shape `[]`.
      limit: the most the stage tolerates for `n` rows (None: no limit beyond `n - 1`).
      rule: the stage's name, for messages.
      n: number of rows.

    Returns:
      `f` as an int32 scalar array in `[0, limit]`.
    """
    if f is None:
        raise ValueError(f"{rule}: f (the number of Byzantine rows) is required; pass f=0 for none.")
    hi = n - 1 if limit is None else limit
    if not is_traced(f):
        arr = np.asarray(f)
        if arr.shape != () or not (np.issubdtype(arr.dtype, np.integer) or float(arr) == int(arr)):
            raise ValueError(f"{rule}: f must be a non-negative integer scalar, got {f!r}.")
        fc = int(arr)
        if fc < 0:
            raise ValueError(f"{rule}: f={fc} is negative; f counts Byzantine rows (>= 0).")
        if limit is not None and fc > limit:
            raise ValueError(
                f"{rule} tolerates at most f={limit} Byzantine rows among n={n} (its limit); got f={fc}.")
        return jnp.asarray(min(fc, max(hi, 0)), jnp.int32)
    return jnp.clip(jnp.asarray(f).astype(jnp.int32), 0, max(hi, 0))


def require_key(name: str, key: Array | None) -> Array:
    if key is None:
        raise ValueError(f"{name} is randomised: pass key=jax.random.PRNGKey(...) (got key=None).")
    return key


def check_rows(name: str, n: int, max_rows: int | None, cost: str) -> None:
    """Refuses, before any work, more rows than a rule whose cost is super-quadratic in `n` accepts.

    Raises:
      ValueError: one line naming `n`, the limit and the rule's cost.
    """
    if max_rows is not None and n > max_rows:
        raise ValueError(f"{name}: n={n} rows is not allowed; allowed: n <= {max_rows} (its cost is {cost}); use "
                         "fewer clients per round, bucketing first, or another rule.")


def rule_stage(name: str, core: Callable, *, limit: Callable[[int], int | None] = no_limit,
               init: Callable = empty_init, needs_key: bool = False, check_f: Callable | None = None,
               with_ctx: bool = False, max_rows: int | None = None, cost: str = "", **info: Any) -> Stage:
    """A rule as a Stage from `core(updates, state, f, key) -> (vector [d], state)`.

    `update` checks the input's shape (chex), resolves `ctx.f` against `limit(n)` (`resolve_f`, or
    `check_f(f, n)` for a rule with its own check: what it returns is what `core` receives as `f`)
    and, if `needs_key`, requires `ctx.key`. With `with_ctx`, `core` also receives the round
    context (`core(updates, state, f, key, ctx)`: rules reading `ctx.clients` or
    `ctx.root_update`). With `max_rows`, more rows raise ValueError (`check_rows`, naming `cost`)
    both in `update` and in `max_f` (so a run is refused before any data loads).
    """
    if max_rows is not None:
        inner = limit

        def limit(n):
            check_rows(name, n, max_rows, cost)
            return inner(n)

    def update(x, state, ctx):
        check_updates(name, x)
        n = x.shape[0]
        check_rows(name, n, max_rows, cost)
        key = require_key(name, ctx.key) if needs_key else ctx.key
        f = check_f(ctx.f, n) if check_f is not None else resolve_f(ctx.f, limit(n), name, n)
        g, state = core(x, state, f, key, ctx) if with_ctx else core(x, state, f, key)
        return g, state, ctx

    return make_stage(name, "rule", init, update, max_f=limit, needs_key=needs_key, **info)


def selection_dists(updates: Array, backend: ops.Backend) -> tuple[Array, Array]:
    """`(d2 [n, n], finite [n])` for rules that only *select* rows by distance (Krum, Bulyan).

    Squared distances from one centred Gram pass (`ops.pairwise_sq_dists_finite`); rows holding
    NaN/Inf are `+inf` from everything (SPEC §7). Under `stop_gradient`: a selection is piecewise
    constant, so gradients flow through the final average only.
    """
    d2, finite = ops.pairwise_sq_dists_finite(updates, backend=backend)
    return jax.lax.stop_gradient(d2), finite


def sum_smallest(values: Array, k: Array) -> Array:
    """Row-wise sum of the `k` smallest entries of `values` (`[n, m]`, `k` traced; +inf allowed
    beyond the k-th)."""
    s = jnp.sort(values, axis=1)
    take = jnp.arange(values.shape[1])[None, :] < k
    return jnp.where(take, s, 0.0).sum(axis=1)


# --------------------------------------------------------------------------- adapters for users


class Aggregator(NamedTuple):
    """A robust aggregation rule for existing users: `[n, d]` updates -> `[d]` vector (SPEC §7).

    Attributes:
      name: registry name.
      init: `init(updates or shape) -> state`.
      aggregate: `aggregate(updates, state, *, f, key=None, clients=None, root_update=None) ->
        (vector, state)`; `f` is required; `clients` (`[n]` int ids) and `root_update` (`[d]`) go
        to the round context (FoolsGold, FLTrust need them).
      max_f: `max_f(n) -> int | None`, the most Byzantine rows the rule tolerates (None: no limit).
      hparams: the hyper-parameters it was built with.
      stage: the underlying `Stage`.
    """

    name: str
    init: Callable[[Any], Any]
    aggregate: Callable[..., tuple[Array, Any]]
    max_f: Callable[[int], int | None]
    hparams: Mapping[str, Any]
    stage: Stage | None = None


class PreAggregator(NamedTuple):
    """A pre-aggregation step for existing users: `[n, d]` -> `[n', d]`, `f -> f'` (NNM, bucketing).

    Attributes:
      name: registry name.
      init: `init(updates or shape) -> state`.
      apply: `apply(updates, state, *, f, key=None) -> (updates', f', state)`; `f` is required.
      output_rows: `output_rows(n) -> n'` (static).
      max_f: `max_f(n) -> int | None`.
      hparams: the hyper-parameters it was built with.
      stage: the underlying `Stage`.
    """

    name: str
    init: Callable[[Any], Any]
    apply: Callable[..., tuple[Array, Any, Any]]
    output_rows: Callable[[int], int]
    max_f: Callable[[int], int | None]
    hparams: Mapping[str, Any]
    stage: Stage | None = None


def _rule_aggregator(stage: Stage) -> Aggregator:
    """The `Aggregator` adapter of a stage of kind "rule"."""

    def aggregate(updates, state, *, f=None, key=None, clients=None, root_update=None):
        if f is None:
            raise ValueError(f"{stage.name}: f (the number of Byzantine rows) is required; pass f=0 for none.")
        ctx = RoundContext(None, f, key, clients=clients, root_update=root_update)
        g, state, _ = stage.update(updates, state, ctx)
        return g, state

    return Aggregator(stage.name, stage.init, aggregate, stage.max_f, stage.hparams, stage)


def as_aggregator(stage: Stage) -> Aggregator | PreAggregator:
    """The adapter of a rule or pre-aggregator stage (`aggregators.get` returns these)."""

    if stage.kind == "rule":
        return _rule_aggregator(stage)
    if stage.kind == "preaggregator":

        def apply(updates, state, *, f=None, key=None):
            if f is None:
                raise ValueError(f"{stage.name}: f (the number of Byzantine rows) is required; pass f=0 for none.")
            out, state, ctx = stage.update(updates, state, RoundContext(None, f, key))
            return out, ctx.f, state

        return PreAggregator(stage.name, stage.init, apply, stage.output_rows, stage.max_f, stage.hparams, stage)
    raise ValueError(f"{stage.name!r} is an {stage.kind}, not a rule or pre-aggregator.")


def chain(*stages: Any) -> Aggregator:
    """Composes pre-aggregators with a rule: `chain(get("nnm"), get("bucketing", s=2), get("median"))`.

    The pre-aggregators run in the given order, which must be NNM before bucketing (SPEC §7), and
    the last stage must be an aggregation rule. `f` is rescaled by each stage (bucketing:
    `ceil(f/s)`), and the rule checks (concrete) or clamps (traced) the rescaled `f` against its
    limit for the rescaled row count; `max_f` is the composed limit. Randomness: with several
    stages `keys = jax.random.split(key, len(stages))`, stage `i` gets `keys[i]` (a single stage
    gets `key`); with `key=None` every stage gets None (a stage that needs a key then raises).
    See `strike_jax.stages.chain`, of which this is the adapter.

    Returns:
      An `Aggregator` named like `"nnm+bucketing+median"`; its state is the tuple of the stages'.
    """
    if not stages:
        raise ValueError("chain needs at least an aggregation rule.")
    parts = [as_stage(s) for s in stages]
    if parts[-1].kind != "rule":
        raise ValueError(f"chain: the last stage must be an aggregation rule, got {parts[-1].name!r}.")
    for p in parts[:-1]:
        if p.kind != "preaggregator":
            raise ValueError(f"chain: {p.name!r} is not a pre-aggregator (nnm, bucketing); "
                             "only the last stage may be a rule.")
    return _rule_aggregator(chain_stages(*parts))  # a chain has the kind of its last stage: a rule


__all__ = [
    "Aggregator",
    "EmptyState",
    "PreAggregator",
    "as_aggregator",
    "chain",
    "check_rows",
    "empty_init",
    "majority_limit",
    "require_key",
    "resolve_f",
    "rule_stage",
    "selection_dists",
    "sum_smallest",
]

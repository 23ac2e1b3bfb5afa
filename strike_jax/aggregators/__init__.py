"""Robust aggregation rules and pre-aggregators over the `[n, d]` update matrix (SPEC §1, §7).

Every rule and pre-aggregator is a `strike_jax.stages.Stage` (`stages.get("rule", "median")`),
registered in `strike_jax.registry`; `get` wraps one in a thin adapter for existing users:

```python
from strike_jax import aggregators
rule = aggregators.get("multikrum")
state = rule.init(updates)                                   # updates: [n, d] (or its shape)
g, state = rule.aggregate(updates, state, f=10, key=key)     # g: [d]; f is required (f=0: none)
pre = aggregators.get("bucketing", s=2)                      # a pre-aggregator
mixed, f2, pstate = pre.apply(updates, pre.init(updates), f=10, key=key)   # [ceil(n/2), d], ceil(f/2)
both = aggregators.chain(aggregators.get("nnm"), aggregators.get("bucketing", s=2),
                         aggregators.get("median"))          # an aggregator again
```

Rules (`names()`, hyper-parameters with defaults; traceable ones marked `~`): `mean`,
`median(midpoint=False)`, `trmean`, `rbtm` (the same rule), `krum`, `multikrum`,
`rfa(iters=8, eps~=1e-7)`, `aksel`, `cclip(tau~=10.0, iters=1)` (stateful),
`dnc(c~=1.0, niters=1, b=1000)` (needs `key`), `bulyan`; issue 11: `meamed`, `monna(idx=0)`,
`mda(max_subsets=100000)`, `smea(max_subsets=20000)` (exact searches over `C(n, f)` subsets: the
bound is part of their limit), `caf`, `signguard(lower~=0.1, upper~=3.0, fraction=0.1)` (needs
`key`), `clippedclustering(max_tau~=1e5, capacity=100000)` (stateful), `fltrust` (round input
`root_update [d]`: `aggregate(..., root_update=g0)` or `RoundContext.root_update`),
`foolsgold(num_clients, sketch=None, seed=0)` (stateful; `num_clients` required; round input
`clients [n]`: `aggregate(..., clients=ids)` or `RoundContext.clients`); issue 23:
`gas(p=1000, base="krum")` (gradient splitting, needs `key`);
pre-aggregators (`preaggregator_names()`): `nnm(include_self=True)`, `bucketing(s=2)` (needs
`key`), `clipping(c~=2.0)`, `arc`, `uniformity(tau~=0.1)` (issue 23). `hparam_spec(name)` gives each one's
allowed values.

Every rule is a pure function of arrays, safe under `jit`, `vmap` (also over `f`) and `grad`;
`f` may be a traced integer (clamped to the rule's limit) or a Python int (checked against it:
ValueError naming the limit). Rows with NaN/Inf count as infinitely far from everything (SPEC §7):
with at most `f` of them every robust rule returns a finite vector. Each rule's array code is one
jitted function compiled once per input shape and static hyper-parameters.

Speed (XLA:CPU, see `strike_jax.ops` and `experiments/bench_aggregators.py`): coordinate-wise
order statistics by a fused sorting network (or an exact radix selection for many rows), distances
by one centred Gram pass over column blocks, every average as `w @ X`.
"""

from __future__ import annotations

from typing import Any

from strike_jax import ops, registry
from strike_jax.aggregators.base import (
    Aggregator,
    EmptyState,
    PreAggregator,
    as_aggregator,
    chain,
    majority_limit,
    resolve_f,
)

# The order of these imports is the registration order, which fixes the order of `names()`.
# isort: off
from strike_jax.aggregators.coordinatewise import mean, median, rbtm, trmean, trmean_limit
from strike_jax.aggregators.distance import aksel, cclip, krum, krum_limit, krum_scores, multikrum, rfa
from strike_jax.aggregators.dnc import dnc
from strike_jax.aggregators.bulyan import bulyan, bulyan_limit
from strike_jax.aggregators.preagg import bucketing, nnm
# Issue 11 (registered after the rules above, which keep their places in `names()`).
from strike_jax.aggregators.robust_means import caf, mda, meamed, monna, smea
from strike_jax.aggregators.clustering import clippedclustering, signguard
from strike_jax.aggregators.trusted import fltrust
from strike_jax.aggregators.foolsgold import FoolsGoldState, foolsgold
from strike_jax.aggregators.clipping import arc, clipping
# Issue 23: defences aimed at skew and uniformity (registered after the ones above).
from strike_jax.aggregators.gas import gas
from strike_jax.aggregators.uniformity import uniformity
# isort: on

PREAGGREGATORS = ("bucketing", "nnm", "clipping", "arc", "uniformity")


def names() -> tuple[str, ...]:
    """The aggregation rules `get` accepts (the pre-aggregators are `preaggregator_names()`)."""
    return registry.names("rule")


def rule_names() -> tuple[str, ...]:
    """The aggregation rules (the same as `names()`)."""
    return names()


def preaggregator_names() -> tuple[str, ...]:
    """The pre-aggregators `get` accepts (NNM, bucketing, Clipping, ARC)."""
    return registry.names("preaggregator")


def hparam_spec(name: str) -> dict[str, registry.Param]:
    """`{hyper-parameter: Param(default, traceable, allowed, check)}` of a rule or pre-aggregator."""
    entry = registry.find(name, ("rule", "preaggregator"), "aggregator")
    return dict(entry.params)


def get(name: str, *, backend: ops.Backend | None = None, **hparams: Any) -> Aggregator | PreAggregator:
    """Builds a rule or pre-aggregator by name, as an adapter (`.aggregate` or `.apply`).

    Args:
      name: one of `names()` or `preaggregator_names()`.
      backend: `ops.Backend` for its array code (resolved now; None: the platform's default).
      **hparams: its hyper-parameters (see the module docstring / `hparam_spec`). Traced values
        are accepted, unchecked, for the traceable ones.

    Raises:
      ValueError: unknown name or hyper-parameter (the message lists the allowed ones), or an
        invalid concrete value.
    """
    entry = registry.find(name, ("rule", "preaggregator"), "aggregator")
    return as_aggregator(registry.build(entry.kind, name, backend=ops.resolve(backend), **hparams))


__all__ = [
    "Aggregator", "EmptyState", "FoolsGoldState", "PREAGGREGATORS", "PreAggregator", "aksel", "arc", "bucketing",
    "bulyan", "bulyan_limit", "caf", "cclip", "chain", "clippedclustering", "clipping", "dnc", "fltrust",
    "foolsgold", "gas", "get", "hparam_spec", "krum", "krum_limit", "krum_scores", "majority_limit", "mda", "mean",
    "meamed", "median", "monna", "multikrum", "names", "nnm", "preaggregator_names", "rbtm", "resolve_f", "rfa",
    "rule_names", "signguard", "smea", "trmean", "trmean_limit", "uniformity",
]

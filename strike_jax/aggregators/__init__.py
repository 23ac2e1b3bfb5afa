"""Robust aggregation rules and pre-aggregators over the `[n, d]` update matrix (SPEC §1, §7).

```python
from strike_jax import aggregators
rule = aggregators.get("multikrum")
state = rule.init(updates)                                   # updates: [n, d]
g, state = rule.aggregate(updates, state, f=10, key=key)     # g: [d]
pre = aggregators.get("bucketing", s=2)                      # a pre-aggregator
mixed, f2, pstate = pre.apply(updates, pre.init(updates), f=10, key=key)   # [ceil(n/2), d], ceil(f/2)
both = aggregators.chain(aggregators.get("nnm"), aggregators.get("bucketing", s=2),
                         aggregators.get("median"))          # an aggregator again
```

Rules (`get` names, hyper-parameters with defaults): `mean`, `median(midpoint=False)`, `trmean`,
`rbtm` (the same rule), `krum`, `multikrum`, `rfa(iters=8, eps=1e-7)`, `aksel`,
`cclip(tau=10.0, iters=1)` (stateful), `dnc(c=1.0, niters=1, b=1000)` (needs `key`), `bulyan`;
pre-aggregators: `bucketing(s=2)` (needs `key`), `nnm(include_self=True)`.

Every rule is a pure function of arrays, safe under `jit`, `vmap` (also over `f`) and `grad`;
`f` may be a traced integer (clamped to the rule's limit) or a Python int (checked against it:
ValueError naming the limit). Rows with NaN/Inf count as infinitely far from everything (SPEC §7):
with at most `f` of them every robust rule returns a finite vector. Each rule object compiles its
array code once per input shape (also when called outside `jit`).

Speed (XLA:CPU, see `strike_jax.ops` and `experiments/bench_aggregators.py`): coordinate-wise
order statistics by a fused sorting network (or an exact radix selection for many rows), distances
by one centred Gram pass over column blocks, every average as `w @ X`.
"""

from __future__ import annotations

from typing import Any, Callable

from strike_jax.aggregators.base import Aggregator, PreAggregator, resolve_f
from strike_jax.aggregators.bulyan import bulyan, bulyan_limit
from strike_jax.aggregators.clipping import arc, clipping
from strike_jax.aggregators.clustering import clippedclustering, signguard
from strike_jax.aggregators.coordinatewise import mean, median, trmean, trmean_limit
from strike_jax.aggregators.distance import aksel, cclip, krum, krum_limit, krum_scores, multikrum, rfa
from strike_jax.aggregators.dnc import dnc
from strike_jax.aggregators.foolsgold import foolsgold
from strike_jax.aggregators.preagg import bucketing, chain, nnm
from strike_jax.aggregators.robust_means import caf, mda, meamed, monna, smea
from strike_jax.aggregators.trusted import fltrust

_BUILDERS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "mean": (mean, {}),
    "median": (median, {"midpoint": False}),
    "trmean": (lambda: trmean("trmean"), {}),
    "rbtm": (lambda: trmean("rbtm"), {}),
    "krum": (krum, {}),
    "multikrum": (lambda: multikrum(), {}),
    "rfa": (rfa, {"iters": 8, "eps": 1e-7}),
    "aksel": (aksel, {}),
    "cclip": (cclip, {"tau": 10.0, "iters": 1}),
    "dnc": (dnc, {"c": 1.0, "niters": 1, "b": 1000}),
    "bulyan": (bulyan, {}),
    "bucketing": (bucketing, {"s": 2}),
    "nnm": (nnm, {"include_self": True}),
    "meamed": (meamed, {}),
    "monna": (monna, {"idx": 0}),
    "mda": (mda, {"max_subsets": 100_000}),
    "smea": (smea, {"max_subsets": 20_000}),
    "caf": (caf, {}),
    "signguard": (signguard, {"lower": 0.1, "upper": 3.0, "fraction": 0.1}),
    "clippedclustering": (clippedclustering, {"max_tau": 1e5, "capacity": 100_000}),
    "fltrust": (fltrust, {}),
    "foolsgold": (foolsgold, {"num_clients": None, "sketch": None, "seed": 0}),
    "clipping": (clipping, {"c": 2.0}),
    "arc": (arc, {}),
}

PREAGGREGATORS = ("bucketing", "nnm", "clipping", "arc")


def names() -> tuple[str, ...]:
    """Every name `get` accepts (rules and pre-aggregators)."""
    return tuple(_BUILDERS)


def rule_names() -> tuple[str, ...]:
    """The aggregation rules (names that are not pre-aggregators)."""
    return tuple(n for n in _BUILDERS if n not in PREAGGREGATORS)


def get(name: str, **hparams: Any) -> Aggregator | PreAggregator:
    """Builds a rule or pre-aggregator by name.

    Args:
      name: one of `names()`.
      **hparams: its hyper-parameters (see `names()` / each builder's docstring).

    Raises:
      ValueError: unknown name or hyper-parameter (the message lists the allowed ones), or an
        invalid concrete value.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown aggregator {name!r}; allowed: {', '.join(names())}.")
    build, allowed = _BUILDERS[name]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise ValueError(f"{name}: unknown hyper-parameter(s) {unknown}; allowed: {listing}.")
    return build(**hparams)


__all__ = [
    "Aggregator", "PreAggregator", "aksel", "bucketing", "bulyan", "bulyan_limit", "cclip", "chain", "dnc",
    "get", "krum", "krum_limit", "krum_scores", "mean", "median", "multikrum", "names", "nnm", "resolve_f",
    "rfa", "rule_names", "trmean", "trmean_limit",
]

"""The stage protocol of the server pipeline (in the spirit of optax's `GradientTransformation`).

Every attack, pre-aggregator and aggregation rule is a `Stage`: a pair of pure functions over the
round's `[n, d]` update matrix and a small `RoundContext`:

    state = stage.init(jax.ShapeDtypeStruct((n, d), jnp.float32))     # an [n, d] array also works
    out, state, ctx = stage.update(U, state, RoundContext(byzantine_mask, f, key))

* an attack returns `[n, d]` with the Byzantine rows replaced (honest rows bit-exact);
* a pre-aggregator returns `[n', d]` and a context with the `f` the next stage must tolerate;
* a rule returns the `[d]` aggregate.

`chain(attack, nnm, bucketing, rule)` composes any such sequence into one Stage: the whole server
pipeline is one `update`. `f` may be a Python int (checked against each stage's limit) or a traced
integer (clamped), so a vectorised simulation never recompiles when `f` changes.
`inject_hyperparams` builds a stage whose traceable hyper-parameters live in its state (optax's
`inject_hyperparams`), so that runs differing only in them (`nu`, `tau`, `z`, ...) share one
compiled program under `vmap` over a leading run axis of states.

Keys (`chain`): when the first stage is an attack it receives `fold_in(key, 0)` and the rest of
the chain `fold_in(key, 1)`; several aggregation stages split their key
(`jax.random.split(key, m)`, stage `i` gets `keys[i]`), a single one receives it whole. This is
what `strike_jax.training.round` does with `attack_key` / `aggregator_key`.
"""

from __future__ import annotations

import numbers
import types
from typing import Any, Callable, Mapping, NamedTuple

import chex
import jax
import jax.numpy as jnp

from strike_jax import ops, registry
from strike_jax.config import PREAGGREGATION_ORDERS  # config imports stages lazily: no cycle
from strike_jax.errors import InputError

Array = jax.Array

KINDS = registry.KINDS

_ORDER = {"attack": 0, "preaggregator": 1, "rule": 2}
# SPEC §7: NNM is applied before bucketing when both are on. The uniformity filter (issue 23) sees
# the raw rows first: NNM and bucketing blend rows and would hide the duplicates it looks for.
_PREAGG_ORDER = {"uniformity": -1, "nnm": 0, "bucketing": 1}
#: `info` flags a chain has when any of its stages has them.
_ANY_FLAGS = ("stateful", "needs_key", "needs_clients", "needs_root_update", "needs_flipped_rows")


class RoundContext(NamedTuple):
    """What a stage needs beyond the matrix.

    Attributes:
      byzantine_mask: `[n]` bool, the rows of the current matrix that are Byzantine (None after a
        pre-aggregator that mixes rows into buckets).
      f: the Byzantine count the stage must tolerate (Python int or traced int scalar).
      key: this stage's PRNG key (None: a randomised stage raises).
      clients: `[n]` int32 sampled client ids (per-client state across rounds, e.g. FoolsGold).
      root_update: `[d]` the server's own update on a clean root set (FLTrust).
      downstream: for white-box attacks, the `Stage` made of the stages after the attack (set by
        `chain`).
      downstream_state: the current state of `downstream` (set with it), so that a white-box attack
        simulates the defence as it really is this round (its state and, for injected stages, this
        run's hyper-parameters) rather than a freshly initialised copy.
      attacked: set by `chain` in the context it returns: the `[n, d]` matrix its attack produced
        (what the aggregation received; the input itself when the chain has no attack), so that
        the server reports it without re-running the chain's parts.
      flipped: `[n, d]` each sampled client's gradient on its round's batch with flipped labels
        (ByzFL's LabelFlipping, `labelflip(mode="honest_mean")`, whose stage has
        `info["needs_flipped_rows"]`; the simulation fills it for such an attack), else None.
    """

    byzantine_mask: Array | None
    f: Any
    key: Array | None
    clients: Array | None = None
    root_update: Array | None = None
    downstream: Any = None
    downstream_state: Any = None
    attacked: Array | None = None
    flipped: Array | None = None


class EmptyState(NamedTuple):
    """The state of a stateless stage (an empty pytree)."""


def empty_init(shape: Any) -> EmptyState:
    """`init` of a stateless stage: `shape` (a `jax.ShapeDtypeStruct` or an array) is unused."""
    del shape
    return EmptyState()


def no_limit(n: int) -> None:
    """`max_f` of a stage that tolerates any number of Byzantine rows (or claims nothing)."""
    del n
    return None


def same_rows(n: int) -> int:
    return n


def one_row(n: int) -> int:
    del n
    return 1


def same_f(f: Any) -> Any:
    return f


class Stage(NamedTuple):
    """One stage of the server pipeline (see the module docstring).

    Attributes:
      name: registry name (a chain: the names joined by "+").
      kind: "attack", "preaggregator" or "rule" (a chain: the kind of its last stage).
      init: `init(shape) -> state`; `shape` is the `[n, d]` input's `jax.ShapeDtypeStruct` (an
        array also works).
      update: `update(x, state, ctx) -> (x', state', ctx')` (see the module docstring).
      max_f: `max_f(n) -> int | None`, the most Byzantine rows tolerated among `n` input rows
        (None: no limit is claimed).
      output_rows: `n -> n'` (attacks: `n`; rules: 1).
      hparams: read-only mapping of the hyper-parameters it was built with.
      output_f: `f -> f'` for a concrete `f` (bucketing: `ceil(f / s)`; others: `f`).
      parts: for a chain, its stages (flattened); else `()`.
      info: read-only flags: `data_level` (the attack acts on the Byzantine clients' training data:
        LabelFlip), `label_map` (its label map), `stateful` (state carries information between
        rounds), `needs_key` (update needs `ctx.key`), `needs_clients` (update needs
        `ctx.clients`: FoolsGold), `needs_root_update` (update needs `ctx.root_update`: FLTrust).
    """

    name: str
    kind: str
    init: Callable[[Any], Any]
    update: Callable[[Array, Any, RoundContext], tuple[Array, Any, RoundContext]]
    max_f: Callable[[int], int | None]
    output_rows: Callable[[int], int]
    hparams: Mapping[str, Any]
    output_f: Callable[[Any], Any] = same_f
    parts: tuple = ()
    info: Mapping[str, Any] = types.MappingProxyType({})


def make_stage(name: str, kind: str, init: Callable, update: Callable, *, max_f: Callable = no_limit,
               output_rows: Callable | None = None, hparams: Mapping[str, Any] | None = None,
               output_f: Callable = same_f, **info: Any) -> Stage:
    """A `Stage` with read-only `hparams`/`info`; `output_rows` defaults to `n` (1 for a rule)."""
    if kind not in _ORDER:
        raise ValueError(f"make_stage: kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")
    rows = output_rows or (one_row if kind == "rule" else same_rows)
    return Stage(name, kind, init, update, max_f, rows, types.MappingProxyType(dict(hparams or {})), output_f,
                 (), types.MappingProxyType(info))


def as_stage(obj: Any) -> Stage:
    """`obj` as a `Stage`: a Stage, or an object with a `.stage` (the adapters of `aggregators.get`
    and `attacks.get`)."""
    if isinstance(obj, Stage):
        return obj
    stage = getattr(obj, "stage", None)
    if isinstance(stage, Stage):
        return stage
    raise ValueError(f"{getattr(obj, 'name', obj)!r} is not a stage (from strike_jax.stages.get, "
                     "aggregators.get or attacks.get).")


def shape_of(x: Any) -> jax.ShapeDtypeStruct:
    """The `jax.ShapeDtypeStruct` of an array or of a shape struct."""
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


# ------------------------------------------------------------------------------- shape checks


def check_updates(owner: str, x: Any) -> None:
    """chex checks at a stage's boundary: `x` is an `[n, d]` matrix with `n >= 1`."""
    chex.assert_rank(x, 2, custom_message=f"{owner}: the updates must be an [n, d] matrix")
    chex.assert_axis_dimension_gt(x, 0, 0, custom_message=f"{owner}: the updates need at least one row")


def check_mask(owner: str, mask: Any, n: int) -> None:
    """chex check: `mask` is an `[n]` vector."""
    chex.assert_shape(mask, (n,), custom_message=f"{owner}: byzantine_mask must be [n] with n={n}")


# ------------------------------------------------------------------------------------ chaining


def _key_split(key: Array | None, m: int) -> list:
    if key is None:
        return [None] * m
    if m == 1:
        return [key]
    return list(jax.random.split(key, m))


def chain(*stages: Any, preaggregation_order: str = "spec") -> Stage:
    """Composes stages into one: `chain(attack, nnm, bucketing, rule)` (any part optional).

    The order must be: at most one attack, first; pre-aggregators (NNM before bucketing, SPEC
    §7; with `preaggregation_order="given"` in any order, as ByzFL's ordered `pre_aggregators`
    list); at most one rule, last. Chains inside are flattened. The state is the tuple of the
    stages' states; `f` is rescaled by each stage (`ctx.f`), and each stage checks (concrete) or
    clamps (traced) it against its own limit for its input rows. Keys: see the module docstring.
    A white-box attack receives `ctx.downstream`, the chain of the stages after it.

    `max_f(n)` is the composed limit: the largest `f` that every stage accepts after the rows and
    `f` have been rescaled by the stages before it (bucketing: `n -> ceil(n/s)`,
    `f -> ceil(f/s)`); None when no stage claims a limit.

    Returns:
      `Stage` named like `"strike+nnm+bucketing+median"`, of the kind of its last stage.

    Raises:
      ValueError: an empty chain, or stages out of order.
    """
    flat: list[Stage] = []
    for s in stages:
        s = as_stage(s)
        flat.extend(s.parts or (s,))
    if not flat:
        raise ValueError("chain needs at least one stage.")
    names = [s.name for s in flat]
    kinds = [_ORDER[s.kind] for s in flat]
    if kinds != sorted(kinds) or kinds.count(0) > 1 or kinds.count(2) > 1:
        raise ValueError(f"chain: stages must be an attack (at most one, first), pre-aggregators, then a rule "
                         f"(at most one, last); got {names} of kinds {[s.kind for s in flat]}.")
    if preaggregation_order not in PREAGGREGATION_ORDERS:
        raise ValueError(f"chain: preaggregation_order={preaggregation_order!r} is not allowed; allowed: "
                         f"{', '.join(PREAGGREGATION_ORDERS)}.")
    pre = [s.name for s in flat if s.kind == "preaggregator"]
    order = [_PREAGG_ORDER.get(p, 0) for p in pre]
    if preaggregation_order == "spec" and order != sorted(order):
        raise ValueError(f"chain: pre-aggregators must run uniformity first and NNM before bucketing (bucketing "
                         f"last); got {pre}.")
    if len(flat) == 1:
        return flat[0]
    has_attack = flat[0].kind == "attack"
    agg = flat[1:] if has_attack else flat
    downstream = chain(*agg, preaggregation_order=preaggregation_order) if has_attack and agg else None

    def init(shape):
        cur = shape_of(shape)
        states = []
        for s in flat:
            states.append(s.init(cur))
            cur = jax.ShapeDtypeStruct((s.output_rows(cur.shape[0]), cur.shape[1]), cur.dtype)
        return tuple(states)

    def update(x, state, ctx):
        key = ctx.key
        new_states = []
        cur = ctx
        attacked = x
        if has_attack:
            k_attack = None if key is None else jax.random.fold_in(key, 0)
            key = None if key is None else jax.random.fold_in(key, 1)
            ds_state = state[1] if len(agg) == 1 else tuple(state[1:])
            x, st, cur = flat[0].update(x, state[0], cur._replace(key=k_attack, downstream=downstream,
                                                                   downstream_state=ds_state))
            new_states.append(st)
            attacked = x
        keys = _key_split(key, len(agg))
        for i, s in enumerate(agg):
            x, st, cur = s.update(x, state[len(new_states)],
                                  cur._replace(key=keys[i], downstream=None, downstream_state=None))
            new_states.append(st)
        return x, tuple(new_states), cur._replace(key=ctx.key, downstream=ctx.downstream,
                                                  downstream_state=ctx.downstream_state, attacked=attacked)

    def feasible(n, f):
        limited = False
        for s in flat:
            lim = s.max_f(n)
            if lim is not None:
                limited = True
                if f > lim:
                    return False, True
            f, n = s.output_f(f), s.output_rows(n)
        return True, limited

    def max_f(n):
        _, limited = feasible(n, 0)
        if not limited:
            return None
        best = -1
        for f in range(n + 1):
            if not feasible(n, f)[0]:
                break
            best = f
        return best

    def output_rows(n):
        for s in flat:
            n = s.output_rows(n)
        return n

    def output_f(f):
        for s in flat:
            f = s.output_f(f)
        return f

    info = {
        "data_level": any(s.info.get("data_level", False) for s in flat),
        "label_map": next((s.info["label_map"] for s in flat if s.info.get("label_map") is not None), None),
        **{flag: any(s.info.get(flag, False) for s in flat) for flag in _ANY_FLAGS},
    }
    hparams = {"stages": names}
    return Stage("+".join(names), flat[-1].kind, init, update, max_f, output_rows,
                 types.MappingProxyType(hparams), output_f, tuple(flat), types.MappingProxyType(info))


class Selection(NamedTuple):
    """A choice among stages of one kind made by an index at run time (`lax.switch`).

    A sweep of `A` attacks x `D` rules compiles one server program holding every attack once and
    every rule once (`A + D` branches), instead of one program per pair (`A x D`). The state is the
    tuple of the branches' states, so every branch returns the same structure; only the selected
    branch's entry changes. The index must not be batched under `vmap` (a batched index makes
    `lax.switch` run every branch and select): runs that differ in their choice run one batch after
    another through the same executable, each with its own scalar index.

    Attributes:
      branches: the stages, all of one kind ("attack" or "rule").
    """

    branches: tuple

    def init(self, shape: Any) -> tuple:
        """The tuple of every branch's initial state."""
        return tuple(b.init(shape) for b in self.branches)

    def at(self, index: Any) -> Stage:
        """The stage that runs branch `index` (a traced int32 scalar, or a Python int)."""
        branches = self.branches

        def update(x, state, ctx):
            def make(i):
                def run(x, state):
                    out, st, _ = branches[i].update(x, state[i], ctx)
                    return out, state[:i] + (st,) + state[i + 1:]
                return run

            out, state = jax.lax.switch(index, [make(i) for i in range(len(branches))], x, state)
            return out, state, ctx

        def max_f(n):
            limits = [b.max_f(n) for b in branches]
            limits = [lim for lim in limits if lim is not None]
            return min(limits) if limits else None

        first = branches[0]
        info = {flag: any(b.info.get(flag, False) for b in branches)
                for flag in _ANY_FLAGS + ("data_level", "white_box")}
        return Stage("select(" + "|".join(b.name for b in branches) + ")", first.kind, self.init, update, max_f,
                     first.output_rows, types.MappingProxyType({"branches": [b.name for b in branches]}),
                     first.output_f, (), types.MappingProxyType(info))


def select(branches: Any) -> Selection:
    """A `Selection` over `branches` (stages of one kind, "attack" or "rule", same output shape).

    Raises:
      ValueError: no branch, or branches of different or unsupported kinds.
    """
    branches = tuple(as_stage(b) for b in branches)
    if not branches:
        raise ValueError("select needs at least one stage.")
    kinds = {b.kind for b in branches}
    if len(kinds) != 1 or not kinds <= {"attack", "rule"}:
        raise ValueError(f"select: branches must all be attacks or all rules; got kinds {sorted(kinds)}.")
    return Selection(branches)


def check_f(stage: Any, n: int, f: int, *, allow_beyond_breakdown: bool = False) -> int | None:
    """Checks a run's Byzantine count against a stage's (or a whole pipeline's) limit, before any work.

    Args:
      stage: a `Stage` (e.g. `chain(attack, nnm, bucketing, rule)`) or an adapter from
        `aggregators.get`/`chain` or `attacks.get`.
      n: rows entering the stage (clients per round).
      f: Byzantine rows among them (a concrete int, Python or NumPy).
      allow_beyond_breakdown: accept `f` above the limit (for studies beyond the breakdown point;
        traced `f` is then clamped by the rules).

    Returns:
      The limit `stage.max_f(n)` (None: no limit).

    Raises:
      ValueError: `f` not an integer in `[0, n]`, or above the limit without the opt-in.
    """
    stage = as_stage(stage)
    if isinstance(f, bool) or not isinstance(f, numbers.Integral) or not 0 <= f <= n:
        raise InputError(f"f={f!r} is not allowed; allowed: an integer in [0, n={n}].")
    f = int(f)
    limit = stage.max_f(n)
    if limit is not None and f > limit and not allow_beyond_breakdown:
        raise InputError(f"{stage.name} tolerates at most f={limit} Byzantine rows among n={n}; got f={f} "
                         "(pass allow_beyond_breakdown=True to run beyond the rule's breakdown point).")
    return limit


# ------------------------------------------------------------------------ injected hyper-parameters


class InjectState(NamedTuple):
    """State of a stage built by `inject_hyperparams`.

    Attributes:
      hparams: `{name: float32 scalar}`, the traceable hyper-parameters (a leading run axis under
        a vectorised simulation).
      inner: the wrapped stage's state.
    """

    hparams: Mapping[str, Array]
    inner: Any


def inject_hyperparams(kind: str, name: str, *, backend: ops.Backend | None = None, **hparams: Any) -> Stage:
    """A stage whose TRACEABLE hyper-parameters live in its state (optax's `inject_hyperparams`).

    `init` returns `InjectState(hparams={name: float32 scalar}, inner=...)` holding the values
    given here; `update` rebuilds the stage with the values read from the state (traced under
    jit/vmap) and the static ones given here. So `jax.vmap(stage.update, in_axes=(None, 0, None))`
    over states with different `nu` (or `tau`, `z`, ...) runs every value in one compiled program,
    and a stage built here with other values has the same `update`. `max_f` and `hparams` are
    those of the values given here.

    Args:
      kind: "attack", "preaggregator" or "rule".
      name: a registered name.
      backend: `ops.Backend`, resolved now (None: the platform's default).
      **hparams: the hyper-parameters (validated now).

    Returns:
      `Stage`.
    """
    backend = ops.resolve(backend)
    spec = registry.hparam_spec(kind, name)
    values = registry.validate(kind, name, hparams)
    template = registry.build(kind, name, backend=backend, **values)
    injected = tuple(k for k, p in spec.items() if p.traceable)
    static = {k: v for k, v in values.items() if k not in injected}

    def init(shape):
        return InjectState({k: jnp.asarray(values[k], jnp.float32) for k in injected}, template.init(shape))

    def update(x, state, ctx):
        inner = registry.build(kind, name, backend=backend, **static, **state.hparams)
        out, inner_state, ctx = inner.update(x, state.inner, ctx)
        return out, InjectState(state.hparams, inner_state), ctx

    return template._replace(init=init, update=update,
                             info=types.MappingProxyType({**template.info, "injected": injected}))


def get(kind: str, name: str, *, inject: bool = False, backend: ops.Backend | None = None, **hparams: Any) -> Stage:
    """Builds a registered stage by kind and name.

    Args:
      kind: "attack", "preaggregator" or "rule".
      name: one of `registry.names(kind)`.
      inject: keep the traceable hyper-parameters in the state (`inject_hyperparams`).
      backend: `ops.Backend`, resolved now (None: the platform's default).
      **hparams: the stage's hyper-parameters (`registry.hparam_spec(kind, name)`).

    Raises:
      ValueError: unknown name or hyper-parameter, or a bad value.
    """
    if inject:
        return inject_hyperparams(kind, name, backend=backend, **hparams)
    return registry.build(kind, name, backend=ops.resolve(backend), **hparams)


def identity_attack() -> Stage:
    """The attack stage "none": returns the matrix unchanged (keeps the chain's key layout)."""

    def update(x, state, ctx):
        return x, state, ctx

    return make_stage("none", "attack", empty_init, update)


def server_pipeline(defence: str, *, attack: str | None = None, preaggregation: tuple[str, ...] = (),
                    attack_params: Mapping[str, Any] | None = None,
                    defence_params: Mapping[str, Any] | None = None,
                    preaggregation_params: Mapping[str, Mapping[str, Any]] | None = None,
                    inject: bool = False, backend: ops.Backend | None = None,
                    preaggregation_order: str = "spec") -> Stage:
    """The whole server pipeline `chain(attack, nnm, bucketing, rule)` from names.

    Args:
      defence: a rule name.
      attack: an attack name; None or "none" for the identity (the chain keeps the key layout of
        an attacked run, so the defence's randomness does not depend on the attack).
      preaggregation: pre-aggregator names (applied NNM first, then bucketing, SPEC §7; with
        `preaggregation_order="given"` in the order given).
      attack_params, defence_params: hyper-parameters; `preaggregation_params`: `{name: {...}}`.
      inject: build every stage with `inject_hyperparams`.
      backend: `ops.Backend`, resolved now.

    Returns:
      `Stage` of kind "rule": `update(U, state, RoundContext(mask, f, key)) -> (g [d], state, ctx)`.
    """
    backend = ops.resolve(backend)
    if attack in (None, "none"):
        if attack_params:
            raise InputError(f"attack_params={dict(attack_params)!r} given without an attack.")
        att = identity_attack()
    else:
        att = get("attack", attack, inject=inject, backend=backend, **dict(attack_params or {}))
    pp = dict(preaggregation_params or {})
    unknown = sorted(set(pp) - set(preaggregation))
    if unknown:
        raise InputError(f"preaggregation_params for {unknown} not in preaggregation={tuple(preaggregation)}.")
    if preaggregation_order == "spec":
        preaggregation = tuple(sorted(preaggregation, key=lambda p: _PREAGG_ORDER.get(p, 0)))
    pres = [get("preaggregator", p, inject=inject, backend=backend, **dict(pp.get(p, {})))
            for p in preaggregation]
    rule = get("rule", defence, inject=inject, backend=backend, **dict(defence_params or {}))
    return chain(att, *pres, rule, preaggregation_order=preaggregation_order)


__all__ = [
    "EmptyState",
    "InjectState",
    "KINDS",
    "PREAGGREGATION_ORDERS",
    "RoundContext",
    "Selection",
    "Stage",
    "as_stage",
    "chain",
    "check_f",
    "check_mask",
    "check_updates",
    "empty_init",
    "get",
    "identity_attack",
    "inject_hyperparams",
    "make_stage",
    "no_limit",
    "select",
    "server_pipeline",
    "shape_of",
]


# ------------------------------------------------------------------------------ user functions


def from_function(fn: Callable[..., Any], *, kind: str = "rule", name: str,
                  max_f: Callable[[int], int | None] | None = None) -> Stage:
    """A `Stage` from a plain function over the round's `[n, d]` matrix (bring your own rule).

    * `kind="rule"`: `fn(U [n, d]) -> [d]`, the aggregate;
    * `kind="attack"`: `fn(U [n, d], mask [n] bool) -> [n, d]`; only the Byzantine rows of its
      output are used (the honest rows are kept bit-exact, whatever `fn` returns for them);
    * `kind="preaggregator"`: `fn(U [n, d]) -> [n, d]` (same rows; `f` passes through).

    `fn` may also take keyword parameters `f` (the Byzantine count: an int32 scalar, traced under
    a vectorised simulation; for a rule, checked against `max_f(n)` when concrete and clamped to
    it when traced, as the library's rules do) and `key` (a PRNG key; the stage then needs one).
    `fn` must be traceable by JAX (`jnp` operations, no Python branches on values).

    Register the stage (`strike_jax.registry.register_stage`, or `strike_jax.register`) to use it
    by name in `Config(defence=name)` / `Config(attack=name)`.

    Args:
      fn: the function (see above).
      kind: "rule", "attack" or "preaggregator".
      name: its name (for registration, messages and `Stage.name`).
      max_f: `max_f(n) -> int | None`, the most Byzantine rows it tolerates among `n` (None: no
        limit claimed).

    Returns:
      A stateless `Stage` with `info["fingerprint"]` (`registry.fingerprint` of `fn`, `kind`,
      `max_f`), so a result can record which code ran.

    Raises:
      ValueError: a bad `kind`, `name` or `fn` (one line naming it and what is allowed).

    Examples:
      >>> import jax.numpy as jnp
      >>> from strike_jax import stages
      >>> rule = stages.from_function(lambda U, f: jnp.sort(U, axis=0)[f], name="doc_fth_smallest",
      ...                             max_f=lambda n: n - 1)
      >>> U = jnp.array([[3.0, 0.0], [1.0, 5.0], [2.0, 4.0]])
      >>> rule.update(U, rule.init(U), stages.RoundContext(None, 1, None))[0]
      Array([2., 4.], dtype=float32)
    """
    if kind not in _ORDER:
        raise ValueError(f"from_function: kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")
    if not isinstance(name, str) or not name or "+" in name:
        raise ValueError(f"from_function: name={name!r} is not allowed; allowed: a non-empty string without '+'.")
    if not callable(fn):
        raise ValueError(f"from_function: fn={fn!r} is not allowed; allowed: a function.")
    if max_f is not None and not callable(max_f):
        raise ValueError(f"from_function: max_f={max_f!r} is not allowed; allowed: None or a function n -> int.")
    import inspect

    params: Mapping[str, Any]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    takes = {k for k in ("f", "key") if var_kw or k in params}
    needs_key = "key" in takes
    limit = max_f or no_limit
    fp = registry.fingerprint((kind, fn, max_f))

    def call(*args, f, key):
        extra = {}
        if "f" in takes:
            extra["f"] = f
        if "key" in takes:
            if key is None:
                raise ValueError(f"{name} takes a PRNG key: pass key=jax.random.PRNGKey(...) (got key=None).")
            extra["key"] = key
        return fn(*args, **extra)

    info: dict[str, Any] = {"needs_key": needs_key, "fingerprint": fp}
    if kind == "rule":
        from strike_jax.aggregators.base import rule_stage

        def rule_core(x, state, f, key):
            out = jnp.asarray(call(x, f=f, key=key))
            chex.assert_shape(out, x.shape[1:], custom_message=f"{name}: the rule must return a [d] vector")
            return out.astype(x.dtype), state

        return rule_stage(name, rule_core, limit=limit, **info)
    if kind == "attack":
        from strike_jax.attacks.base import attack_stage

        def attack_core(x, mask, state, key):
            out = jnp.asarray(call(x, mask, f=mask.sum().astype(jnp.int32), key=key))
            chex.assert_shape(out, x.shape, custom_message=f"{name}: the attack must return the [n, d] matrix")
            return jnp.where(mask[:, None], out.astype(x.dtype), x), state

        return attack_stage(name, attack_core, **info)

    def update(x, state, ctx):
        check_updates(name, x)
        out = jnp.asarray(call(x, f=ctx.f, key=ctx.key))
        chex.assert_shape(out, x.shape, custom_message=f"{name}: the pre-aggregator must return [n, d]")
        return out.astype(x.dtype), state, ctx._replace(byzantine_mask=None)

    return make_stage(name, "preaggregator", empty_init, update, max_f=limit, **info)


__all__.append("from_function")

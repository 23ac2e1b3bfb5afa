"""Robust rules, pre-aggregators and attacks inside any optax loop.

optax (>= 0.2.7) composes per-example (here: per-client) updates with
`optax.experimental.aggregating`: an `Aggregator` maps updates with a leading client axis
`[n, *params]` to one update `[*params]`, and `process(preprocessor, aggregator, postprocessor)`
chains a per-client transformation, the aggregator and an ordinary optimizer. This module puts the
library's stages (`strike_jax.stages`) in those slots, for any pytree of parameters:

```python
import optax
from optax.experimental import aggregating
from strike_jax import optax as sj_optax

opt = aggregating.process(
    optax.identity(),                                     # or sj_optax.preaggregator("nnm", f=2)
    sj_optax.aggregator("median", f=2),                   # any rule: a name or a Stage
    optax.sgd(0.1),
)
state = opt.init(params)
grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, client_batches)   # leading axis n
updates, state = opt.update(grads, state)
params = optax.apply_updates(params, updates)
```

Each transformation ravels the per-client pytree into the `[n, d]` matrix the stages work on
(leaves in `jax.tree_util` order, cast to their common dtype) and unravels the result. Its state
holds the Byzantine count `f` (an int32 scalar: `jax.vmap` over states with different `f` runs
them in one program), the PRNG key of a randomised stage (split at every update, so an optimizer
loop need not pass keys) and the stages' own states. Round inputs may be given per call as
`extra_args`, which `process` and `optax.chain` forward: `f=` (overrides the state's), `key=`
(used as is; the state's key is then not advanced), `byzantine_mask=` (`[n]` bool; default: the
first `f` rows, as `strike_jax.simulate` places its Byzantine clients), `clients=` (`[n]` ids:
FoolsGold) and `root_update=` (a pytree like the parameters: FLTrust).

Everything is a pure function of arrays: `jax.jit`, `jax.vmap` (over `f`, keys or a run axis of
states) and `jax.grad` (through the updates) work, as for the stages themselves.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.experimental import aggregating

from strike_jax import ops, stages

__all__ = ["StageState", "aggregator", "attack", "preaggregator"]

Array = jax.Array


class StageState(NamedTuple):
    """The state of a transformation of this module.

    Attributes:
      f: the Byzantine count, int32 scalar (None when it must be given per call as `f=`).
      key: the PRNG key of the next update (None for a stage that needs none, or when keys are
        given per call).
      stage: the wrapped stage's (or chain's) state.
    """

    f: Array | None
    key: Array | None
    stage: Any


def _stage(obj: Any, kind: str, backend: ops.Backend | None, hparams: dict[str, Any]) -> stages.Stage:
    if isinstance(obj, str):
        return stages.get(kind, obj, backend=backend, **hparams)
    if hparams:
        raise ValueError(f"hyper-parameters {sorted(hparams)} are not allowed with a built stage; allowed: "
                         "pass them when building it, or give the stage by name.")
    st = stages.as_stage(obj)
    if st.kind != kind:
        raise ValueError(f"{st.name!r} is a {st.kind}; allowed here: a {kind}.")
    return st


def _check_f(f: Any) -> Array | None:
    if f is None:
        return None
    if isinstance(f, bool) or not (isinstance(f, (int, np.integer)) or
                                   (hasattr(f, "dtype") and jnp.issubdtype(f.dtype, jnp.integer))):
        raise ValueError(f"f={f!r} is not allowed; allowed: a non-negative integer (the Byzantine count) or None.")
    if not isinstance(f, jax.core.Tracer) and int(np.asarray(f)) < 0:
        raise ValueError(f"f={f!r} is not allowed; allowed: a non-negative integer.")
    return jnp.asarray(f, jnp.int32)


def _ravel(tree: Any, owner: str) -> tuple[Array, Any, int]:
    """`(U [n, d], unravel_row, n)` of a pytree whose every leaf has the leading client axis."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        raise ValueError(f"{owner}: the per-client updates are an empty pytree.")
    ns = {str(leaf.shape[0]) if leaf.ndim else "none (a scalar)" for leaf in leaves}
    if len(ns) != 1 or not leaves[0].ndim:
        raise ValueError(f"{owner}: every leaf of the per-client updates needs the same leading client axis; "
                         f"got leading sizes {sorted(ns)}.")
    n = int(leaves[0].shape[0])
    dtype = jnp.result_type(*leaves)
    U = jnp.concatenate([leaf.reshape(n, -1).astype(dtype) for leaf in leaves], axis=1)
    specs = [(leaf.shape[1:], leaf.dtype) for leaf in leaves]

    def unravel_row(v: Array) -> Any:
        out, off = [], 0
        for shape, dt in specs:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(v[off:off + size].reshape(shape).astype(dt))
            off += size
        return jax.tree_util.tree_unflatten(treedef, out)

    return U, unravel_row, n


def _flat_row(tree: Any) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])


def _transform(pipe: stages.Stage, f: Any, key: Array | None, num_clients: int | None,
               byzantine_first: bool):
    """`(init, update)` running `pipe` on the ravelled per-client updates; `update` returns the
    stage's raw output (`[d]` or `[n', d]`) and an `unravel_row`."""
    f0 = _check_f(f)
    if num_clients is not None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"num_clients={num_clients!r} is not allowed; allowed: an int >= 1 or None.")
        if f is not None and not isinstance(f, jax.core.Tracer):
            stages.check_f(pipe, num_clients, int(np.asarray(f)))

    def init(params: Any) -> StageState:
        leaves = jax.tree_util.tree_leaves(params)
        d = sum(int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        shape = jax.ShapeDtypeStruct((num_clients or 1, d), dtype)
        return StageState(f0, key, pipe.init(shape))

    def run(per_client: Any, state: StageState, extra: dict[str, Any]):
        U, unravel_row, n = _ravel(per_client, pipe.name)
        want = jax.eval_shape(pipe.init, jax.ShapeDtypeStruct(U.shape, U.dtype))
        want_leaves, want_def = jax.tree_util.tree_flatten(want)
        got_leaves, got_def = jax.tree_util.tree_flatten(state.stage)
        if str(want_def) != str(got_def) or any(jnp.shape(w) != jnp.shape(g) for w, g in zip(want_leaves, got_leaves)):
            raise ValueError(f"{pipe.name}: its state depends on the number of clients: pass num_clients={n} when "
                             "building the transformation.")
        f_now = _check_f(extra["f"]) if extra.get("f") is not None else state.f
        if f_now is None:
            raise ValueError(f"{pipe.name}: f (the number of Byzantine rows) is required: pass f= when building the "
                             "transformation or as an extra argument of update.")
        new_key = state.key
        if extra.get("key") is not None:
            round_key = extra["key"]
        elif state.key is not None:
            new_key, round_key = jax.random.split(state.key)
        else:
            round_key = None
            if pipe.info.get("needs_key", False):
                raise ValueError(f"{pipe.name} is randomised: pass key=jax.random.PRNGKey(...) when building the "
                                 "transformation (kept and split in its state) or as an extra argument of update.")
        mask = extra.get("byzantine_mask")
        if mask is None and byzantine_first:
            mask = jnp.arange(n) < f_now
        root = extra.get("root_update")
        ctx = stages.RoundContext(mask, f_now, round_key, clients=extra.get("clients"),
                                  root_update=None if root is None else _flat_row(root))
        out, stage_state, _ = pipe.update(U, state.stage, ctx)
        return out, unravel_row, StageState(state.f, new_key, stage_state)

    return init, run


def aggregator(rule: Any, *, f: int | None, preaggregation: Sequence[Any] = (), attack: Any = None,
               key: Array | None = None, num_clients: int | None = None, backend: ops.Backend | None = None,
               **hparams: Any) -> aggregating.Aggregator:
    """A rule (after optional pre-aggregators and an attack) as an optax `Aggregator`.

    `update(per_client_updates, state, params=None, **extra_args) -> (update, state)` maps a
    pytree whose leaves have a leading client axis `n` to one update shaped like the parameters:
    it runs `stages.chain(attack, *preaggregation, rule)` on the ravelled `[n, d]` matrix with the
    round context built from the state and `extra_args` (see the module docstring). Use it as the
    `aggregator` of `optax.experimental.aggregating.process`, or alone.

    Args:
      rule: a rule name (`registry.names("rule")`) or a rule `Stage` (`stages.get`,
        `stages.from_function`, `aggregators.get(...)`).
      f: the Byzantine count the rule must tolerate (kept in the state as an int32 scalar, so
        `jax.vmap` over states runs several `f` at once); None: give `f=` to every `update`.
      preaggregation: pre-aggregator names or stages, applied in order before the rule (NNM before
        bucketing, SPEC §7); `f` is rescaled through them (bucketing: `ceil(f/s)`).
      attack: None, an attack name or an attack `Stage`: it replaces the Byzantine rows (the
        first `f` rows, or `extra_args["byzantine_mask"]`) before aggregation (a simulation of
        Byzantine clients inside one optax loop).
      key: PRNG key for randomised stages (DnC, bucketing, attacks), kept in the state and split
        at every update; None when no stage needs one (or when `key=` is given per call).
      num_clients: the number of clients `n`, only for stages whose state depends on it and to
        check `f` against the rule's limit now (else on the first update).
      backend: `ops.Backend` for stages built by name.
      **hparams: the rule's hyper-parameters when `rule` is a name.

    Returns:
      `optax.experimental.aggregating.Aggregator`; its state is a `StageState`.

    Raises:
      ValueError: unknown names, bad hyper-parameters, stages out of order, `f` above the rule's
        limit for `num_clients`, a randomised stage without a key.

    Examples:
      >>> import jax.numpy as jnp
      >>> from strike_jax import optax as sj_optax
      >>> agg = sj_optax.aggregator("median", f=1)
      >>> per_client = {"w": jnp.array([[1.0, 2.0], [2.0, 9.0], [3.0, 4.0]]), "b": jnp.array([0.0, 1.0, 5.0])}
      >>> update, state = agg.update(per_client, agg.init({"w": jnp.zeros(2), "b": jnp.zeros(())}))
      >>> update["w"], update["b"]
      (Array([2., 4.], dtype=float32), Array(1., dtype=float32))
    """
    parts = []
    if attack is not None:
        parts.append(_stage(attack, "attack", backend, {}))
    parts += [_stage(p, "preaggregator", backend, {}) for p in preaggregation]
    parts.append(_stage(rule, "rule", backend, dict(hparams)))
    pipe = stages.chain(*parts)
    _require_key(pipe, key)
    init, run = _transform(pipe, f, key, num_clients, byzantine_first=attack is not None)

    def update(per_client_updates, state, params=None, **extra_args):
        del params
        g, unravel_row, state = run(per_client_updates, state, extra_args)
        return unravel_row(g), state

    return aggregating.Aggregator(init, update)


def _require_key(pipe: stages.Stage, key: Any) -> None:
    # A missing key is caught again at update time (a key may come per call); refusing here would
    # forbid that, so only a clear type error is raised now.
    if key is not None and not hasattr(key, "dtype"):
        raise ValueError(f"{pipe.name}: key={key!r} is not allowed; allowed: a jax.random key or None.")


def _rows_transform(pipe: stages.Stage, f: Any, key: Any, num_clients: int | None,
                    byzantine_first: bool) -> optax.GradientTransformationExtraArgs:
    _require_key(pipe, key)
    init, run = _transform(pipe, f, key, num_clients, byzantine_first)

    def update(per_client_updates, state, params=None, **extra_args):
        del params
        rows, unravel_row, state = run(per_client_updates, state, extra_args)
        return jax.vmap(unravel_row)(rows), state

    return optax.GradientTransformationExtraArgs(init, update)


def preaggregator(stage: Any, *, f: int | None, key: Array | None = None, num_clients: int | None = None,
                  backend: ops.Backend | None = None, **hparams: Any) -> optax.GradientTransformationExtraArgs:
    """A pre-aggregator (NNM, bucketing, clipping, ARC) for the `preprocessor` slot of
    `optax.experimental.aggregating.process`: per-client updates `[n, *params]` ->
    `[n', *params]`.

    The aggregator after it sees `n'` rows: give it the rescaled count
    `stages.get("preaggregator", name).output_f(f)` (NNM keeps `f`; bucketing with `s` makes it
    `ceil(f/s)`), or use `aggregator(rule, f=f, preaggregation=(name,))`, which rescales it.

    Args:
      stage: a pre-aggregator name (`registry.names("preaggregator")`) or `Stage`.
      f, key, num_clients, backend: as for `aggregator`.
      **hparams: its hyper-parameters when `stage` is a name.

    Returns:
      `optax.GradientTransformationExtraArgs`; its state is a `StageState`.
    """
    return _rows_transform(_stage(stage, "preaggregator", backend, dict(hparams)), f, key, num_clients, False)


def attack(stage: Any, *, f: int | None, key: Array | None = None, num_clients: int | None = None,
           backend: ops.Backend | None = None, **hparams: Any) -> optax.GradientTransformationExtraArgs:
    """An attack for the `preprocessor` slot (or first in an `optax.chain` there): replaces the
    Byzantine rows of the per-client updates (the first `f`, or `extra_args["byzantine_mask"]`);
    the honest rows pass bit-exact. An omniscient attack sees the undefended matrix only (in
    `aggregator(rule, attack=...)` a white-box attack sees the defence too).

    Args:
      stage: an attack name (`registry.names("attack")`) or `Stage` (`stages.from_function`).
      f, key, num_clients, backend: as for `aggregator`.
      **hparams: its hyper-parameters when `stage` is a name.

    Returns:
      `optax.GradientTransformationExtraArgs`; its state is a `StageState`.
    """
    return _rows_transform(_stage(stage, "attack", backend, dict(hparams)), f, key, num_clients, True)

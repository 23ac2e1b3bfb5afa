"""The server half of a round (SPEC §2 steps 3-4): attack, pre-aggregation, rule, `w += g`, metrics
(DSGD, `Config.algorithm="dsgd"`: the worker momenta are updated and sent, and the server steps
`w <- w - lr_t (g + wd w)`; see `_server`).

The server pipeline is one `stages.chain(attack, nnm, bucketing, rule)`; a round of one run is
`server_step`, a round of a batch of runs `make_device_server` (the step vmapped over the run axis
and jitted). A *grid* (`ServerGrid`) holds several attacks and several rules in one program: each
batch of runs picks its attack and its rule by index (`stages.select`), so a sweep of `A` attacks x
`D` rules compiles one server program holding `A + D` branches instead of `A x D` programs.

Keys: the round's server key goes to `pipeline.update` whole; the chain gives the attack
`fold_in(key, 0)` and the aggregation `fold_in(key, 1)` (`stages` module docstring).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import ops, sharding, stages
from strike_jax.errors import InputError
from strike_jax.training.round import RoundOutput, RunState, ServerHparams, TrainOutput
from strike_jax.training.schedule import round_key

Array = jax.Array


class RoundMetrics(NamedTuple):
    """Scalars the server computes every round (float32 unless noted; `[R]` for a batch of runs).

    Attributes:
      num_byzantine: f, Byzantine clients among the sampled ones (int32).
      aggregate_norm: ||g||.
      dist_to_honest_mean: ||g - mean of the honest updates|| (the honest updates as computed, before
        the attack).
      cos_to_honest_mean: cosine between g and the honest mean.
      skewness: Fisher skewness of the honest updates along their first principal component (SPEC §8);
        NaN when the diagnostic is off.
      median_mean_distance: ||lower median - mean|| of the honest updates (SPEC §8); NaN when off.
      finite: whether g is finite (False ends the run as diverged; bool).
      train_loss: mean local training loss of the honest clients (of all clients if none is honest).
    """

    num_byzantine: Array
    aggregate_norm: Array
    dist_to_honest_mean: Array
    cos_to_honest_mean: Array
    skewness: Array
    median_mean_distance: Array
    finite: Array
    train_loss: Array


def server_step(w, updates, byzantine_mask, stage_state, key, pipeline, *, with_skew: bool = False,
                train_loss=None, clients=None, root_update=None, tolerated_f=None, server_lr=None,
                server_weight_decay=0.0, flipped=None, honest_mean=None):
    """The server side of one round of one run, pure.

    Args:
      w: `[d]` global model (flat).
      updates: `[n, d]` honestly computed updates of the sampled clients.
      byzantine_mask: `[n]` bool.
      stage_state: the pipeline's state.
      key: the round's server key (`schedule.round_key`).
      pipeline: the server pipeline, `stages.chain(attack, nnm, bucketing, rule)` as
        `stages.server_pipeline` builds it (its first part is the attack, "none" included).
      with_skew: compute the gradient-skew diagnostic (about one pass over `U`).
      train_loss: `[n]` local losses (for the metric), or None.
      clients: `[n]` int32 sampled client ids (`RoundContext.clients`: FoolsGold's history).
      root_update: `[d]` the server's own update on its root set (`RoundContext.root_update`: FLTrust).
      tolerated_f: the Byzantine count the pre-aggregators and rule are told (`RoundContext.f`;
        int scalar, may be traced; negative or None: the real count `byzantine_mask.sum()`). The
        attack reads the real count from the mask.
      server_lr: None: FedAvg's `w' = w + g`; else DSGD's server SGD step `w' = w - server_lr *
        (g + server_weight_decay * w)` (the rows are gradients, `g` their aggregate).
      flipped: `[n, d]` the clients' flipped-label gradients (`RoundContext.flipped`), or None.
      honest_mean: `[d]` the mean of the honest rows of `updates` when the caller has it
        (`TrainOutput.honest_mean`); None: computed here.

    Returns:
      `(w', stage_state', RoundMetrics, sent)`; `sent` is the `[n, d]` matrix the aggregation
      received (`RoundContext.attacked`). A non-finite aggregate leaves `w` unchanged and sets
      `metrics.finite = False`.
    """
    from strike_jax.analysis import skew as skew_lib

    honest = ~byzantine_mask
    if honest_mean is None:
        honest_mean = ops.masked_mean(updates, honest)
    if with_skew:
        diag = skew_lib.gradient_skew(updates, honest)
        skewness, med_dist = diag.skewness, diag.median_mean_distance
    else:
        skewness = med_dist = jnp.float32(jnp.nan)
    f = byzantine_mask.sum()
    told = f if tolerated_f is None else jnp.where(tolerated_f >= 0, tolerated_f, f).astype(f.dtype)
    ctx = stages.RoundContext(byzantine_mask, told, key, clients=clients, root_update=root_update, flipped=flipped)
    g, stage_state, out_ctx = pipeline.update(updates, stage_state, ctx)
    sent = out_ctx.attacked
    finite = jnp.all(jnp.isfinite(g))
    stepped = w + g if server_lr is None else w - server_lr * (g + server_weight_decay * w)
    w_new = jnp.where(finite, stepped, w)
    g_safe = jnp.where(finite, g, 0.0)
    gn = jnp.linalg.norm(g_safe)
    hn = jnp.linalg.norm(honest_mean)
    if train_loss is None:
        tl = jnp.float32(jnp.nan)
    else:
        weights = jnp.where(honest.any(), honest, True).astype(jnp.float32)
        tl = (weights * train_loss).sum() / jnp.maximum(weights.sum(), 1.0)
    metrics = RoundMetrics(
        num_byzantine=f.astype(jnp.int32),
        aggregate_norm=jnp.where(finite, gn, jnp.inf),
        dist_to_honest_mean=jnp.where(finite, jnp.linalg.norm(g_safe - honest_mean), jnp.inf),
        cos_to_honest_mean=jnp.where(
            finite & (gn > 0) & (hn > 0), jnp.vdot(g_safe, honest_mean) / jnp.maximum(gn * hn, 1e-30), 0.0),
        skewness=jnp.asarray(skewness, jnp.float32),
        median_mean_distance=jnp.asarray(med_dist, jnp.float32),
        finite=finite,
        train_loss=jnp.asarray(tl, jnp.float32),
    )
    return w_new, stage_state, metrics, sent


def metrics_to_dict(m) -> dict[str, Any]:
    """Host-side conversion of one run's RoundMetrics to plain Python numbers (JSON friendly)."""
    out: dict[str, Any] = {}
    for k, v in m._asdict().items():
        v = np.asarray(v)
        if v.dtype == bool:
            out[k] = bool(v)
        elif np.issubdtype(v.dtype, np.integer):
            out[k] = int(v)
        else:  # a diagnostic that was not computed is NaN on the device, null in the record
            out[k] = None if np.isnan(v) else float(v)
    return out


# ---------------------------------------------------------------------------------------------
# Several attacks and rules in one program.


class ServerGrid(NamedTuple):
    """Attacks x rules (with the same pre-aggregation between them) as one server pipeline whose
    attack and rule are chosen per call by index (`stages.select`).

    The grid's state is `(attack states (one per attack), *pre-aggregator states, rule states
    (one per rule))`; a run's own state (that of `chain(attack, *preaggregation, rules[j])`) is
    placed in it by `embed` and taken out by `extract`, so a run's checkpoint does not depend on
    which grid ran it.

    Attributes:
      attacks: the attack stages (the identity attack for "none").
      preaggregation: the pre-aggregator stages, in order.
      rules: the rule stages.
      preaggregation_order: "spec" or "given" (`stages.chain`: pre-aggregators in any order).
    """

    attacks: tuple
    preaggregation: tuple
    rules: tuple
    preaggregation_order: str = "spec"

    def at(self, attack_index: Any, rule_index: Any) -> stages.Stage:
        """The pipeline of one (attack, rule) pair; indices may be traced (unbatched) int32 scalars."""
        return stages.chain(stages.select(self.attacks).at(attack_index), *self.preaggregation,
                            stages.select(self.rules).at(rule_index), preaggregation_order=self.preaggregation_order)

    def init(self, shape: Any) -> tuple:
        shape = stages.shape_of(shape)
        rows = shape.shape[0]
        states = [tuple(a.init(shape) for a in self.attacks)]
        cur = shape
        for p in self.preaggregation:
            states.append(p.init(cur))
            rows = p.output_rows(rows)
            cur = jax.ShapeDtypeStruct((rows, shape.shape[1]), shape.dtype)
        states.append(tuple(r.init(cur) for r in self.rules))
        return tuple(states)

    def embed(self, attack_index: int, rule_index: int, run_state: tuple, template: tuple) -> tuple:
        """The grid state holding `run_state` (of one pair's chain) at the pair's entries; the other
        branches keep `template`'s (a grid `init`)."""
        attacks, *pre, rules = template
        attacks = attacks[:attack_index] + (run_state[0],) + attacks[attack_index + 1:]
        rules = rules[:rule_index] + (run_state[-1],) + rules[rule_index + 1:]
        return (attacks, *run_state[1:-1], rules)

    def extract(self, attack_index: int, rule_index: int, grid_state: tuple) -> tuple:
        """One pair's chain state out of the grid's."""
        attacks, *pre, rules = grid_state
        return (attacks[attack_index], *pre, rules[rule_index])


def worker_momentum(momentum, clients, gradients, b):
    """DSGD's worker momentum: rows `clients` of `momentum [N, d]` become `b m_i + (1 - b) g_i`
    (`gradients [n, d]`); returns `(momentum', the new rows [n, d])` (the rows the clients send)."""
    rows = b * momentum[clients] + (1.0 - b) * gradients
    return momentum.at[clients].set(rows), rows


def _server(pipeline, with_skew: bool, with_updates: bool) -> Callable:
    """The server side of a round for one run of a batch, pure (vmap it over runs).

    DSGD (the state has a momentum buffer): the training half took one step of size 1 without
    momentum, decay or clipping from the global model, so a client's row is `-g_i`; its worker
    momentum is updated here (`worker_momentum`) and sent instead, the root update (FLTrust) is
    turned into a gradient alike, and the server takes an SGD step on the aggregate."""

    def server_one(state_r: RunState, seed, end_round, hp, t: TrainOutput):
        dsgd = state_r.momentum is not None
        updates, root_update, momentum = t.updates, t.root_update, state_r.momentum
        if dsgd:
            momentum, updates = worker_momentum(momentum, t.clients, -t.updates, hp.momentum)
            root_update = None if root_update is None else -root_update
        w, stage_state, metrics, sent = server_step(
            state_r.w, updates, t.byzantine_mask, state_r.stage_state, round_key(seed, state_r.round), pipeline,
            with_skew=with_skew, train_loss=t.train_loss, clients=t.clients, root_update=root_update,
            tolerated_f=hp.tolerated_f, server_lr=hp.server_lr(state_r.round) if dsgd else None,
            server_weight_decay=hp.weight_decay, flipped=t.flipped,
            honest_mean=None if dsgd else t.honest_mean)  # DSGD sends momenta: their mean is the server's
        act = state_r.active
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(act, a, b), new, old)  # noqa: E731
        nxt = state_r.round + act.astype(jnp.int32)
        new = RunState(w=keep(w, state_r.w), stage_state=keep(stage_state, state_r.stage_state), round=nxt,
                       active=act & metrics.finite & (nxt < end_round),
                       momentum=None if momentum is None else keep(momentum, state_r.momentum))
        return new, (metrics, *((updates, t.byzantine_mask, sent) if with_updates else (None, None, None)))

    return server_one


def make_device_server(pipeline, *, with_skew: bool = False, with_updates: bool = False, mesh=None,
                       layout: str = "rows", recycle: bool = False) -> ServerRound:
    """The server half of a round for a whole batch of runs (attack, pre-aggregation, rule, `w += g`,
    metrics), one jitted program.

    Args:
      pipeline: the server pipeline of one run (`stages.server_pipeline(..., inject=True)`: the runs
        of a batch share its `update`, their numbers are in the stacked state), or a `ServerGrid`
        (then the program takes the pair's indices, the same for every run of a call).
      with_skew: compute the gradient-skew diagnostic.
      with_updates: also return the round's matrices (`RoundOutput`).
      mesh: a `sharding.make_mesh` mesh: the matrix comes sharded by rows and the program is
        partitioned by XLA (GSPMD) in the `layout` it is given.
      layout: "rows" (the training's sharding: reductions over the clients become partial sums
        reduced across devices), "columns" (an all-to-all first: coordinate-wise work is local)
        or "replicated" (gathered: every device runs the whole server step). The new state and the
        metrics come out replicated.
      recycle: the update matrix is donated too and comes back as a third output, the `[R, n, d]`
        buffer the next round's training writes into (`training.round.writes_into`; one device,
        not with `with_updates`): the attack's rows are written into it in place and no round
        allocates a fresh matrix.

    Returns:
      `server_round(state, consts, train_output, pair=None) -> (state', RoundOutput)`, `state`
      donated; `pair` is an int32 `[2]` array `(attack index, rule index)` for a grid. Of `consts`
      only the seeds, the end rounds and the server's numbers (`ServerHparams`) reach the compiled
      program; `state.momentum` (DSGD's worker momentum) makes it a DSGD round. `server_round.jitted` is the
      underlying `jax.jit` object (for ahead-of-time lowering).
    """
    if layout not in sharding.SERVER_LAYOUTS:
        raise InputError(f"layout={layout!r} is not allowed; allowed: {', '.join(map(repr, sharding.SERVER_LAYOUTS))}.")
    grid = isinstance(pipeline, ServerGrid)
    constrain = lambda t: t  # noqa: E731
    if mesh is not None:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        D = mesh.shape[sharding.CLIENTS_AXIS]
        spec = {"rows": P(None, sharding.CLIENTS_AXIS), "columns": P(None, None, sharding.CLIENTS_AXIS),
                "replicated": P()}[layout]
        axis = {"rows": 1, "columns": 2, "replicated": None}[layout]

        def constrain(t):
            if axis is not None and t.updates.shape[axis] % D:  # uneven: left to XLA
                return t
            return t._replace(updates=jax.lax.with_sharding_constraint(t.updates, NamedSharding(mesh, spec)))

    if recycle and (mesh is not None or with_updates):
        raise ValueError("recycle=True needs one device and with_updates=False.")

    def server_all(state: RunState, seed, end_round, hp, t: TrainOutput, pair, updates=None):
        pipe = pipeline.at(pair[0], pair[1]) if grid else pipeline
        server_one = _server(pipe, with_skew, with_updates or recycle)
        if recycle:
            t = t._replace(updates=updates)
        new, (metrics, *extra) = jax.vmap(server_one)(state, seed, end_round, hp,
                                                      constrain(t)._replace(overflow=None))
        if recycle:  # the matrix the aggregation received, written over the donated updates
            return new, RoundOutput(metrics, state.active, t.overflow), extra[2]
        return new, RoundOutput(metrics, state.active, t.overflow, *extra)

    if mesh is None:
        compiled = jax.jit(server_all, donate_argnums=(0, 6) if recycle else (0,))
    else:
        rep = sharding.replicated(mesh)
        compiled = jax.jit(server_all, donate_argnums=(0,), out_shardings=(rep, RoundOutput(
            rep, rep, rep, None, None, None)))

    return ServerRound(compiled, recycle)


class ServerRound:
    """`server_round(state, consts, train_output, pair=None) -> (state', RoundOutput)` (with
    `recycle`: `(state', RoundOutput, spare [R, n, d])`); `jitted` is the underlying `jax.jit`
    object (called as `jitted(state, seed, end_round, server_hparams, t, pair)`; with `recycle`
    `jitted(state, seed, end_round, server_hparams, t without its updates, pair, updates)`; for
    ahead-of-time lowering)."""

    def __init__(self, jitted, recycle: bool = False):
        self.jitted = jitted
        self.recycle = recycle

    def __call__(self, state: RunState, consts, t: TrainOutput, pair=None):
        if pair is None:
            pair = np.zeros(2, np.int32)
        if self.recycle:
            return self.jitted(state, consts.seed, consts.end_round, consts.server, t._replace(updates=None), pair,
                               t.updates)
        return self.jitted(state, consts.seed, consts.end_round, consts.server, t, pair)


__all__ = ["RoundMetrics", "ServerGrid", "ServerHparams", "make_device_server", "metrics_to_dict", "server_step",
           "worker_momentum"]

"""Running every sampled client's local training: execution strategies with identical results.

`make_client_updates(model, cfg, strategy)` returns
`client_updates(variables, x_train, y_train, batch_idx [n,S,B], batch_mask [n,S,B], flip [n]) ->
(U [n, d] float32, LocalStats of [n] arrays)`, `U[i] = flatten(w_i after local training) -
flatten(variables)` (SPEC §1; layout of `strike_jax.training.local.flatten_variables`).

Strategies (all compute the same function; they differ in how XLA sees the clients):

- `"packed"`: one jitted program; the clients' real steps are packed into `L` lanes that each train
  a list of clients one after another (`training.packed`, `schedule.pack_lanes`), one loop over
  steps of a `vmap` over lanes. No padded steps beyond the packing's slack, device memory bounded
  by `L` models in flight. The path of the vectorised simulation (`training.round`).
- `"vmap"`: the packed program with one lane per client (`L = n`), each padded to the longest
  client: the classic vmapped layout (about half of the work is masked on a Dirichlet(0.5) split).
- `"map"`: the packed program with a single lane (every client after another in one program).
- `"steps"`: a host loop over clients *and* their real steps, calling one jitted SGD step (buffers
  donated from the second step of a client on); each client's row is written into `U` in place.
  Nothing runs inside a compiled loop or conditional, so on XLA:CPU convolutions stay fast
  (jax#12868) and are not grouped (a vmapped convolution is a grouped one, several times slower).
- `"loop"`: one jitted per-client program (steps unrolled) called from a host loop.
- `"auto"`: measured (`choose_strategy`): a few timed steps of the candidates on the actual shapes,
  scaled to the round (cached per model, shapes and backend).

Nothing recompiles across rounds: all per-round inputs are arrays of fixed shape and dtype.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax.training import schedule
from strike_jax.training.local import (
    LocalConfig,
    LocalStats,
    make_local_step,
    make_local_train,
    write_delta_row,
)
from strike_jax.training.packed import make_packed_train

Array = jax.Array

STRATEGIES = ("packed", "vmap", "map", "steps", "loop")
DEVICE_STRATEGIES = ("packed", "vmap", "map")
# Lanes of the packed layout are shrunk until at most this share of their steps is idle.
MAX_PADDED_FRACTION = 0.10


class ClientUpdates(Protocol):
    def __call__(self, variables: Any, x_train: Array, y_train: Array, batch_idx: Array,
                 batch_mask: Array, flip: Array | None = None, hp: Any = None) -> tuple[Array, LocalStats]:
        ...


# ---------------------------------------------------------------------------------------------
# Lanes.


@jax.jit
def _makespans_impl(steps, lanes_marker):
    L = lanes_marker.shape[0]
    return jax.vmap(lambda s: schedule.lpt_makespan(s, L))(steps)


def makespans(steps_per_round: np.ndarray, lanes: int) -> np.ndarray:
    """`[k]` longest-lane loads of packing each row of `steps_per_round` (`[k, n]`) into `lanes` lanes."""
    return np.asarray(_makespans_impl(jnp.asarray(steps_per_round, jnp.int32), jnp.zeros((lanes,), bool)))


def default_lanes(n: int, max_lanes: int | None = None, backend: str | None = None) -> int:
    """The default lane count: on a CPU the largest power of two up to `n / 4` (a lane trains four
    clients or more, so longest-first packing leaves little idle, and a CPU's throughput hardly grows
    with more lanes); on an accelerator `n / 2` (a step costs about the same for more lanes, so fewer
    sequential steps win: measured on an H200, 50 Fashion-MNIST MLP clients, 8 lanes took 15.8 ms a
    round, one lane per client 13.5 ms although half its steps were idle). Capped by `max_lanes`.
    Depends on the structure only, so runs that differ in numbers (seed, beta) get the same lanes
    and can share a program."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        cap = max(1, n // 2)
        return cap if max_lanes is None else max(1, min(cap, max_lanes))
    cap = n // 4 if max_lanes is None else min(n // 4, max_lanes)
    return 1 << (max(1, cap).bit_length() - 1)


def choose_lanes(steps_per_round: np.ndarray, n: int, lanes: int | None = None,
                 max_lanes: int | None = None) -> tuple[int, int, float]:
    """`(L, T, padded fraction)` of the packed layout.

    Args:
      steps_per_round: `[k, n]` real local steps of the sampled clients in every planned round.
      n: clients per round.
      lanes: a fixed L (clipped to `[1, n]`), or None: `default_lanes(n, max_lanes)`, halved while
        more than `MAX_PADDED_FRACTION` of the lane steps would be idle (a split dominated by a few
        huge clients).
      max_lanes: memory bound on L.

    Returns:
      `T` is the longest round's makespan; the padded fraction is over the rounds' own makespans
      (what a packed round runs: `1 - real steps / (L * sum of makespans)`).
    """
    steps_per_round = np.asarray(steps_per_round, np.int32).reshape(-1, n)

    def plan(L):
        spans = makespans(steps_per_round, L)
        padded = 1.0 - steps_per_round.sum() / max(1, L * int(spans.sum()))
        return L, max(int(spans.max()), 1), float(padded)

    if lanes is not None:
        return plan(max(1, min(int(lanes), n)))
    out = plan(default_lanes(n, max_lanes))
    while out[2] > MAX_PADDED_FRACTION and out[0] > 1:
        out = plan(out[0] // 2)
    return out


def strategy_lanes(strategy: str, steps_per_round: np.ndarray, n: int, lanes: int | None = None,
                   max_lanes: int | None = None) -> tuple[int, int, float]:
    """`choose_lanes` for a device strategy: "vmap" one lane per client, "map" one lane."""
    if strategy == "vmap":
        return choose_lanes(steps_per_round, n, n)
    if strategy == "map":
        return choose_lanes(steps_per_round, n, 1)
    return choose_lanes(steps_per_round, n, lanes, max_lanes)


# ---------------------------------------------------------------------------------------------
# Choosing by measurement.

_MEASURED: dict[Any, dict[str, float]] = {}


def measure_strategies(model, cfg: LocalConfig, x_train, y_train, *, batch_size: int, lanes: int,
                       lane_steps: int, total_steps: int, repeats: int = 3) -> dict[str, float]:
    """Estimated seconds of one client round per candidate strategy, from a few timed steps.

    "packed": a loop of 3 steps of the lane-vmapped step (as the packed program runs them) scaled to
    `lane_steps`; "steps": single dispatched steps (as the host loop runs them) scaled to
    `total_steps`. Cached per (model, shapes, lanes, optimizer structure, backend), and on disk
    beside the compilation cache when that is on (`strike_jax.compile_cache`: the CLI and sweeps).
    """
    key = (model.name, tuple(x_train.shape[1:]), str(x_train.dtype), batch_size, lanes, model.num_classes,
           cfg.structure(), jax.default_backend())
    if key not in _MEASURED:
        from strike_jax import compile_cache

        stored = compile_cache.load_measurement(key)
        _MEASURED[key] = stored or _per_step_times(model, cfg, x_train, y_train, batch_size, lanes, repeats)
        if stored is None:
            compile_cache.store_measurement(key, _MEASURED[key])
    per = _MEASURED[key]
    return {"packed": per["packed"] * lane_steps, "steps": per["steps"] * total_steps}


def _per_step_times(model, cfg, x_train, y_train, batch_size, lanes, repeats) -> dict[str, float]:
    ls = make_local_step(model, cfg)
    variables = model.init(jax.random.PRNGKey(0))
    params, bs = variables["params"], variables.get("batch_stats", {})
    opt = ls.init_opt(params)
    hp = cfg.hparams()
    k = 3
    base = jnp.arange(batch_size, dtype=jnp.int32)
    mask = jnp.ones((batch_size,), bool)
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)

    def one(state, i):
        p, b, o = state
        idx = (base + i * batch_size) % x_train.shape[0]
        p, b, o, loss = ls.step(p, b, o, x_train, y_train, idx, mask, False, hp)
        return (p, b, o), loss

    stacked = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (lanes, *a.shape)), (params, bs, opt))
    loop = jax.jit(lambda st: jax.lax.fori_loop(0, k, lambda i, c: jax.vmap(lambda s: one(s, i)[0])(c), st))
    single = jax.jit(lambda p, b, o, i: one((p, b, o), i))

    def timed(fn):
        jax.block_until_ready(fn())
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best = min(best, time.perf_counter() - t)
        return best

    def steps_run():
        st = (params, bs, opt)
        for i in range(k):
            st, loss = single(*st, jnp.int32(i))
        return loss

    return {"packed": timed(lambda: loop(stacked)) / k, "steps": timed(steps_run) / k}


def resolve_auto(*, platform: str, model: str, d: int, input_size: int, batch_size: int, lanes: int) -> str:
    """TEMPORARY (replaced by the repro branch): the deterministic choice of "auto"."""
    del platform, model, d, input_size, batch_size, lanes
    return "packed"


def choose_strategy(estimates: dict[str, float], *, prefer: str = "packed", slack: float = 1.1) -> str:
    """The strategy "auto" runs: the fastest measured one, except that the one-program `prefer`
    (no per-step dispatch, no schedule transfer, fused with the server step in a simulation) is kept
    within `slack` of it."""
    fastest = min(estimates, key=estimates.get)
    if prefer in estimates and estimates[prefer] <= slack * estimates[fastest]:
        return prefer
    return fastest


# ---------------------------------------------------------------------------------------------
# Schedules.


def _check_schedule(idx_shape, idx_dtype, mask_shape, flip_shape) -> None:
    if len(idx_shape) != 3 or tuple(idx_shape) != tuple(mask_shape):
        raise ValueError(f"batch_idx {tuple(idx_shape)} and batch_mask {tuple(mask_shape)} must both be [n, S, B].")
    if not np.issubdtype(idx_dtype, np.integer):
        raise ValueError(f"batch_idx must hold integers, got dtype {idx_dtype}.")
    if flip_shape is not None and tuple(flip_shape) != (idx_shape[0],):
        raise ValueError(f"flip {tuple(flip_shape)} must be [n] = [{idx_shape[0]}].")


def _prepare(batch_idx, batch_mask, flip):
    """The schedule as host arrays (int32 / bool)."""
    idx = np.asarray(batch_idx)
    mask = np.asarray(batch_mask)
    flip = None if flip is None else np.asarray(flip)
    _check_schedule(idx.shape, idx.dtype, mask.shape, None if flip is None else flip.shape)
    flip = np.zeros((idx.shape[0],), bool) if flip is None else flip
    return idx.astype(np.int32, copy=False), mask.astype(bool, copy=False), flip.astype(bool, copy=False)


def _dim(variables) -> int:
    """d, the length of the update vector of `variables` (parameters and batch statistics)."""
    return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(variables))


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# ---------------------------------------------------------------------------------------------
# Strategies.


def make_client_updates(model, cfg: LocalConfig, strategy: str = "auto", *, lanes: int | None = None) -> ClientUpdates:
    """Builds the function that trains all sampled clients from `variables` and returns their updates.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig`.
      strategy: "auto", "packed", "vmap", "map", "steps" or "loop" (module docstring).
      lanes: "packed" only: a fixed lane count (None: `choose_lanes`).

    Returns:
      `client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None) -> (U, stats)`:
      `variables` the global model; `x_train` `[N, H, W, C]`, `y_train` `[N]` (pass device arrays);
      `batch_idx` `[n, S, B]` int; `batch_mask` `[n, S, B]` bool; `flip` `[n]` bool (LabelFlip
      clients) or None; `hp` a `LocalHparams` of (traced) optimizer numbers replacing `cfg`'s (one
      compiled program serves every value). A step without a real example is padding; a client's
      real steps run in order. `U` `[n, d]` float32; `stats` a `LocalStats` of `[n]` arrays.
      `client_updates.strategy` is the strategy used ("auto" resolves at the first call and keeps it).
    """
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; allowed: 'auto', {', '.join(map(repr, STRATEGIES))}.")
    if lanes is not None and not (isinstance(lanes, int) and lanes >= 1):
        raise ValueError(f"lanes={lanes!r} must be an int >= 1 or None.")
    if strategy == "auto":
        return _make_auto(model, cfg, lanes)
    if strategy == "steps":
        fn = _make_steps_strategy(model, cfg)
    elif strategy == "loop":
        fn = _make_loop_strategy(model, cfg)
    else:
        fn = _make_packed_strategy(model, cfg, strategy, lanes)
    fn.strategy = strategy
    return fn


def _make_auto(model, cfg, lanes) -> ClientUpdates:
    chosen: dict[str, Any] = {}

    def client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None):
        if "fn" not in chosen:
            idx, mask, _ = _prepare(batch_idx, batch_mask, flip)
            steps = mask.any(axis=2).sum(axis=1)[None, :]
            L, T, _ = choose_lanes(steps, idx.shape[0], lanes)
            est = measure_strategies(model, cfg, x_train, y_train, batch_size=idx.shape[2], lanes=L, lane_steps=T,
                                     total_steps=int(steps.sum()))
            name = choose_strategy(est)
            chosen["fn"] = make_client_updates(model, cfg, name, lanes=lanes)
            client_updates.strategy = name
            client_updates.estimates = est
        return chosen["fn"](variables, x_train, y_train, batch_idx, batch_mask, flip, hp)

    client_updates.strategy = "auto"
    return client_updates


def _make_packed_strategy(model, cfg: LocalConfig, strategy: str, lanes: int | None) -> ClientUpdates:
    """"packed" / "vmap" / "map" over a per-client padded schedule: the plan is made on the host
    (each client's real steps, compacted to the front), the training is one jitted program."""
    train = make_packed_train(model, cfg)

    @jax.jit
    def run(variables, x_train, y_train, steps, order, batch_idx, batch_mask, flip, hp, lane_marker, cap_marker):
        L, T = lane_marker.shape[0], cap_marker.shape[0]
        plan, makespan = schedule.pack_lanes(steps, L, T)
        j = jnp.minimum(plan.slot, steps.shape[0] - 1)
        s = order[j, plan.step]
        idx = batch_idx[j, s]
        mask = batch_mask[j, s] & (plan.slot < steps.shape[0])[..., None]
        one = lambda a: jnp.expand_dims(a, 0)  # noqa: E731 - a batch of one run
        U, stats = train(jax.tree_util.tree_map(one, variables), x_train, y_train, jax.tree_util.tree_map(one, plan),
                         one(idx), one(mask), one(flip), jax.tree_util.tree_map(one, hp), jnp.minimum(makespan, T))
        return U[0], jax.tree_util.tree_map(lambda a: a[0], stats)

    def client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None):
        idx, mask, flip = _prepare(batch_idx, batch_mask, flip)
        n = idx.shape[0]
        real = mask.any(axis=2)                                    # [n, S]
        steps = real.sum(axis=1).astype(np.int32)
        order = np.argsort(~real, axis=1, kind="stable").astype(np.int32)  # real steps first, in order
        L, T, _ = strategy_lanes(strategy, steps[None], n, lanes)
        # Capacity rounded up to a power of two: schedules of one shape rarely recompile.
        return run(variables, jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(steps), jnp.asarray(order),
                   jnp.asarray(idx), jnp.asarray(mask), jnp.asarray(flip), cfg.hparams() if hp is None else hp,
                   jnp.zeros((L,), bool), jnp.zeros((_pow2(T),), bool))

    return client_updates


def _make_loop_strategy(model, cfg: LocalConfig) -> ClientUpdates:
    """"loop": one jitted per-client program (steps unrolled), called from a host loop, each call
    writing its row of `U` in place (all dispatched asynchronously)."""
    local_train = make_local_train(model, cfg, unroll_steps=True)

    def per_client_into(U, i, variables, x_train, y_train, idx, mask, flip, hp):
        new_vars, stats = local_train(variables, x_train, y_train, idx, mask, flip, hp)
        return write_delta_row(U, i, new_vars, variables), stats

    row_fn = jax.jit(per_client_into, donate_argnums=(0,))
    stack_stats = jax.jit(lambda stats: jax.tree_util.tree_map(lambda *s: jnp.stack(s), *stats))

    def client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None):
        idx, mask, flip = _prepare(batch_idx, batch_mask, flip)
        x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
        hp = cfg.hparams() if hp is None else hp
        U = jnp.zeros((idx.shape[0], _dim(variables)), jnp.float32)
        stats = []
        for i in range(idx.shape[0]):
            U, st = row_fn(U, np.int32(i), variables, x_train, y_train, idx[i], mask[i], flip[i], hp)
            stats.append(st)
        return U, stack_stats(stats)

    return client_updates


def _make_steps_strategy(model, cfg: LocalConfig) -> ClientUpdates:
    """"steps": host loop over clients and their real steps, one jitted SGD step."""
    ls = make_local_step(model, cfg)
    has_bs = model.has_batch_stats
    step_keep = jax.jit(ls.step)  # a client's first step reads the global model: never donate it
    step_donate = jax.jit(ls.step, donate_argnums=(0, 1, 2))
    init_opt = jax.jit(ls.init_opt)

    def _write_row(U, i, params, batch_stats, variables):
        new = {"params": params, "batch_stats": batch_stats} if has_bs else {"params": params}
        return write_delta_row(U, i, new, variables)

    # In place (U is donated): no [n, d] stack of n separate rows.
    write_row = jax.jit(_write_row, donate_argnums=(0,))

    def _loss_stats(losses, weights, owner, n):
        # `losses` has a fixed length n * S (skipped steps are zeros with weight 0): no retracing.
        w = jnp.asarray(weights, jnp.float32)
        sums = jax.ops.segment_sum(jnp.stack(losses) * w, owner, num_segments=n)
        counts = jax.ops.segment_sum(w, owner, num_segments=n)
        return sums / jnp.maximum(counts, 1.0)

    loss_stats = jax.jit(_loss_stats, static_argnums=(3,))

    def client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None):
        idx, mask, flip = _prepare(batch_idx, batch_mask, flip)
        x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
        hp = cfg.hparams() if hp is None else hp
        n, S, _ = idx.shape
        counts = mask.sum(axis=2)  # [n, S], on the host
        active = counts >= ls.min_examples
        params = variables["params"]
        bs0 = variables.get("batch_stats", {}) if has_bs else {}
        opt0 = init_opt(params)
        zero = jnp.zeros((), jnp.float32)
        U = jnp.zeros((n, _dim(variables)), jnp.float32)
        losses = []
        for i in range(n):
            p, bs, o = params, bs0, opt0
            first = True
            for s in range(S):
                if not active[i, s]:
                    losses.append(zero)
                    continue
                fn = step_keep if first else step_donate
                p, bs, o, loss = fn(p, bs, o, x_train, y_train, idx[i, s], mask[i, s], flip[i], hp)
                losses.append(loss)
                first = False
            if not first:  # a client without a step keeps its zero row
                U = write_row(U, np.int32(i), p, bs, variables)
        weights = np.where(active, counts, 0).astype(np.float32).reshape(-1)
        owner = np.repeat(np.arange(n, dtype=np.int32), S)
        stats = LocalStats(
            loss=loss_stats(losses, weights, owner, n),
            num_steps=jnp.asarray(active.sum(axis=1).astype(np.int32)),
            num_examples=jnp.asarray(np.where(active, counts, 0).sum(axis=1).astype(np.int32)),
        )
        return U, stats

    return client_updates

"""Running every sampled client's local training: execution strategies with identical results.

Every strategy trains from one plan of the round, drawn on the device from `(seed, round)`
(`strike_jax.training.schedule`: `client_batches` -> a `ClientBatches`); they differ only in how XLA
sees the clients:

- `"packed"`: one jitted program; the clients' real steps are packed into `L` lanes that each train
  a list of clients one after another (`schedule.lane_schedule`, `training.packed`), one loop over
  steps of a `vmap` over lanes. No padded steps beyond the packing's slack, device memory bounded
  by `L` models in flight. The path of the vectorised simulation (`training.round`).
- `"vmap"`: one lane per client, each padded to its round's longest client (the classic vmapped
  layout: about half of the work is masked on a Dirichlet(0.5) split, none when every client takes
  the same number of steps), the clients in chunks of `L` (memory: `client_chunk`); every client's
  first step is one batched gradient at the shared global model and rows are written as slices
  (`training.packed.make_client_train`). With several devices: the packed program with one lane
  per client of a device's block.
- `"map"`: the packed program with a single lane (every client after another in one program).
- `"steps"`: a host loop over clients *and* their real steps of the plan's per-client layout
  (`schedule.padded_schedule`), calling one jitted SGD step (buffers donated from the second step
  of a client on); each client's row is written into `U` in place. Nothing runs inside a compiled
  loop or conditional, so on XLA:CPU convolutions stay fast (jax#12868) and are not grouped (a
  vmapped convolution is a grouped one, several times slower).
- `"loop"`: one jitted per-client program (steps unrolled) called from a host loop, on the same
  per-client layout.

`"auto"` is resolved before anything runs by a fixed rule of the backend and the model
(`resolve_auto`: no timing, so one config gives one strategy, hence one set of numbers, on any
machine load); `measure_strategies` / `choose_strategy` time the candidates instead, as an explicit
opt-in.

Builders:

- `make_client_updates(model, cfg, strategy)`: the host-loop strategies ("steps", "loop") on a
  per-client layout `(batch_idx, batch_mask)` (what `training.round.make_host_round` calls);
- `make_plan_updates(model, cfg, strategy, batch_size=...)`: any strategy on a `ClientBatches` (one
  run's round outside the simulation: benchmarks, tests).

Nothing recompiles across rounds: all per-round inputs are arrays of fixed shape and dtype.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol, TypeVar

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
from strike_jax.training.packed import make_client_train, make_packed_train

Array = jax.Array
_F = TypeVar("_F", bound=Callable)

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


# The "vmap" layout's chunk of clients is sized so that its temporaries (~6 model-sized buffers a
# client) stay within this many bytes: XLA:CPU allocates a program's temporaries afresh at every call
# and their first touch (page faults) costs more than the arithmetic on them. Measured: 10,000
# Fashion-MNIST MLP clients (d = 101,770) one step each, 2-core CPU, loaded, process CPU time of a
# round: chunks of 32 17.1-19.1 s, 128 15.9-17.1 s, 512 19.2-19.7 s, 1,024 18.7-21.9 s.
VMAP_CHUNK_BYTES = 512 << 20


def client_chunk(n: int, lanes: int | None = None, max_lanes: int | None = None) -> int:
    """Clients the "vmap" layout trains together: `lanes` if given, else all `n` up to the memory
    bound `max_lanes` (then the largest power of two below it, so that similar configs share a
    program); at most `n`."""
    if lanes is not None:
        return max(1, min(int(lanes), n))
    if max_lanes is None or max_lanes >= n:
        return n
    return 1 << (max(1, int(max_lanes)).bit_length() - 1)


def vmap_layout(steps_per_round: np.ndarray, n: int, lanes: int | None = None,
                max_lanes: int | None = None) -> tuple[int, int, float]:
    """`(C, T, padded fraction)` of the "vmap" layout: chunks of `C` clients (`client_chunk`), every
    client padded to its round's longest (`T` the longest over the rounds); the padded fraction is
    `1 - real steps / (n * sum of the rounds' longest)`."""
    steps_per_round = np.asarray(steps_per_round, np.int32).reshape(-1, n)
    longest = steps_per_round.max(axis=1)
    padded = 1.0 - steps_per_round.sum() / max(1, n * int(longest.sum()))
    return client_chunk(n, lanes, max_lanes), max(int(longest.max()), 1), float(padded)


def strategy_lanes(strategy: str, steps_per_round: np.ndarray, n: int, lanes: int | None = None,
                   max_lanes: int | None = None) -> tuple[int, int, float]:
    """The lanes of a device strategy: "packed" `choose_lanes`, "vmap" `vmap_layout` (chunks of
    clients, one lane each), "map" one lane."""
    if strategy == "vmap":
        return vmap_layout(steps_per_round, n, lanes, max_lanes)
    if strategy == "map":
        return choose_lanes(steps_per_round, n, 1)
    return choose_lanes(steps_per_round, n, lanes, max_lanes)


# ---------------------------------------------------------------------------------------------
# Choosing: a fixed rule ("auto"), and measurement as an explicit opt-in.

HOST_STRATEGIES = ("steps", "loop")
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def resolve_auto(*, platform: str, model: str, d: int, input_size: int, batch_size: int, lanes: int,
                 is_conv: bool | None = None, uniform_steps: bool = False) -> str:
    """The strategy `strategy="auto"` runs: a fixed rule of the backend and the model, no timing.

    The same config therefore gets the same strategy, hence the same numbers (strategies agree only
    to float rounding), on any machine and under any load, and a resumed run never switches.

    The rule, from the committed measurements (`python -m experiments.bench_strategies`):

    * an accelerator (`platform` "gpu", "cuda", "rocm", "tpu"): "packed". On an H200
      (experiments/results/bench_strategies_gpu.md) packed took 277 ms a round for AlexNet-CIFAR
      against 405 ms for "steps" and 470 ms for "vmap"; for the Fashion-MNIST MLP 15.8 ms against
      374 ms for "steps" ("vmap" 13.5 ms, within 1.2x: not a clear win, and "packed" is the path
      that bounds device memory by the lanes). TPUs are not measured; they get the one-program
      path for the same reason as GPUs (a dispatch per step costs more than a step).
    * a CPU and a model without convolutions: "packed" (bench_strategies_cpu.md: digits MLP 6.2 ms
      against 10.3 ms "steps" and 9.8 ms "vmap"; Fashion-MNIST MLP 375 ms against 452 ms "steps"),
      except when every client takes the same number of steps (`uniform_steps`: `local_steps`, or
      every client within one batch of `B`): then "vmap", whose per-client layout has nothing to
      pad and whose first step is one batched gradient at the shared global model
      (experiments/results/bench_scale_cpu_fmnist.md: 10,000 Fashion-MNIST clients of 6 images,
      one step each).
    * a CPU and a convolutional model: "steps". In every convolutional case of
      bench_strategies_cpu.md (small CNN on digits and Fashion-MNIST, FEMNIST CNN at B = 32 and 128,
      LEAF CNN) "steps" was the fastest or within 1.02x of it ("loop" at FEMNIST CNN B = 128), and
      the one-program layouts 2-11x slower (vmapped convolutions in a compiled loop, jax#12868):
      digits small CNN "packed" 1557 ms against 353 ms "steps" (4.4x), "vmap" 7.7x; per lane step
      "packed" cost 6.9x and 10.9x a single step for the small CNN on Fashion-MNIST and the FEMNIST
      CNN (`_per_step_times`, 2-core CPU, loaded).

    `d`, `input_size`, `batch_size` and `lanes` are the shapes a finer rule would read; in the
    measured range (d 9,610 to 6.6M, 64 to 3,072 input values, B 32 to 128, 2 to 25 lanes) no
    winner changed with them, so this rule does not use them yet (they are checked, and part of
    the signature so that a refined table needs no change in callers).

    Args:
      platform: the backend the run uses (`jax.default_backend()`: "cpu", "gpu", "tpu"; "cuda",
        "rocm" are read as "gpu").
      model: a registered model name (`strike_jax.models.names()`), unless `is_conv` is given.
      d: parameters (and BatchNorm statistics) of the model, >= 1.
      input_size: values per example (H * W * C), >= 1.
      batch_size: B, >= 1.
      lanes: the packed layout's lanes, >= 1.
      uniform_steps: every client that can be sampled takes the same number of local steps (a
        property of the config and its partition, so the rule stays a fixed one).

    Returns:
      "packed", "vmap" or "steps".

    Raises:
      ValueError: one line naming the bad value and what is allowed.
    """
    from strike_jax import models

    if not isinstance(platform, str) or platform.lower() not in ("cpu",) + _ACCELERATORS:
        raise ValueError(f"platform={platform!r} is not allowed; allowed: 'cpu', "
                         + ", ".join(map(repr, _ACCELERATORS)) + ".")
    # is_conv: whether the model has convolutions (a user's model passes its spec's `is_conv`).
    if is_conv is None and model not in models.names():
        raise ValueError(f"model={model!r} is not allowed; allowed: {', '.join(models.names())}.")
    for name, value in (("d", d), ("input_size", input_size), ("batch_size", batch_size), ("lanes", lanes)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1.")
    if platform.lower() in _ACCELERATORS:
        return "packed"
    if is_conv is None:  # building the spec traces nothing; "lax" skips the CPU convolution planner
        is_conv = models.get(model, 1, (8, 8, 1), conv_impl="lax").is_conv
    if is_conv:
        return "steps"
    return "vmap" if uniform_steps else "packed"


_MEASURED: dict[Any, dict[str, float]] = {}


def measure_strategies(model, cfg: LocalConfig, x_train, y_train, *, batch_size: int, lanes: int,
                       lane_steps: int, total_steps: int, repeats: int = 3) -> dict[str, float]:
    """Estimated seconds of one client round per candidate strategy, from a few timed steps: the
    explicit, machine- and load-dependent opt-in beside the fixed `resolve_auto` (a run that picks
    by it should record the pick: its numbers depend on it).

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


def choose_strategy(estimates: dict[str, float], *, prefer: str = "packed", slack: float = 1.1) -> str:
    """The strategy "auto" runs: the fastest measured one, except that the one-program `prefer`
    (no per-step dispatch, no schedule transfer, fused with the server step in a simulation) is kept
    within `slack` of it."""
    fastest = min(estimates, key=estimates.__getitem__)
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


def make_client_updates(model, cfg: LocalConfig, strategy: str = "steps") -> ClientUpdates:
    """Builds a host-loop strategy: trains all sampled clients of a per-client layout from `variables`.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig`.
      strategy: "steps" or "loop" (module docstring). The device strategies ("packed", "vmap",
        "map") train inside one program from the plan itself: `make_plan_updates`, or the
        simulation's round (`training.round.make_device_train`); "auto" is resolved by the caller
        (`resolve_auto`).

    Returns:
      `client_updates(variables, x_train, y_train, batch_idx, batch_mask, flip=None, hp=None) -> (U, stats)`:
      `variables` the global model; `x_train` `[N, H, W, C]`, `y_train` `[N]` (pass device arrays);
      `batch_idx` `[n, S, B]` int and `batch_mask` `[n, S, B]` bool, the round's plan in the
      per-client layout (`schedule.padded_schedule`); `flip` `[n]` bool (LabelFlip clients) or None;
      `hp` a `LocalHparams` of (traced) optimizer numbers replacing `cfg`'s (one compiled program
      serves every value). A step without a real example is padding; a client's real steps run in
      order. `U` `[n, d]` float32; `stats` a `LocalStats` of `[n]` arrays. `client_updates.strategy`
      is the strategy.
    """
    if strategy not in HOST_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed here; allowed: "
                         f"{', '.join(map(repr, HOST_STRATEGIES))} (the device strategies "
                         f"{', '.join(map(repr, DEVICE_STRATEGIES))} train from the plan: make_plan_updates; "
                         "'auto': resolve_auto).")
    fn = _make_steps_strategy(model, cfg) if strategy == "steps" else _make_loop_strategy(model, cfg)
    return _with_strategy(fn, strategy)


def _with_strategy(fn: _F, strategy: str) -> _F:
    """`fn` itself, with `fn.strategy = strategy` (the attribute callers read)."""
    fn.strategy = strategy  # type: ignore[attr-defined]  # functions take attributes; Callable types declare none
    return fn


def make_plan_updates(model, cfg: LocalConfig, strategy: str, *, batch_size: int,
                      lanes: int | None = None) -> Callable:
    """Builds any strategy on one run's round plan (a `schedule.ClientBatches`).

    The device strategies pack the plan into lanes on the device (`schedule.lane_schedule`, the
    simulation's layout: "packed" `choose_lanes`, "vmap" one lane per client, "map" one lane); the
    host-loop strategies train its per-client layout (`schedule.padded_schedule`). Every strategy
    sees the same batches in the same order, so they agree up to float rounding.

    Args:
      model, cfg: as `make_client_updates`.
      strategy: one of `STRATEGIES`.
      batch_size: B of the plan (static).
      lanes: "packed" only: a fixed lane count (None: `choose_lanes`).

    Returns:
      `updates(variables, x_train, y_train, cb, flip=None, hp=None) -> (U [n, d], LocalStats of [n])`,
      `cb` the round's `ClientBatches` (`schedule.client_batches`), `flip` `[n]` bool or None.
      Capacities (lane steps, padded steps) are rounded up to powers of two, so rounds of one
      partition rarely recompile. `updates.strategy` is the strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not allowed; allowed: {', '.join(map(repr, STRATEGIES))}.")
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1):
        raise ValueError(f"lanes={lanes!r} is not allowed; allowed: an integer >= 1 or None.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1.")

    def _flip(cb, flip):
        return jnp.zeros(cb.clients.shape, bool) if flip is None else jnp.asarray(flip, bool)

    if strategy in HOST_STRATEGIES:
        host = make_client_updates(model, cfg, strategy)
        padded = jax.jit(schedule.padded_schedule, static_argnames=("batch_size", "num_steps"))

        def host_updates(variables, x_train, y_train, cb, flip=None, hp=None):
            S = _pow2(int(jax.device_get(cb.steps).max(initial=1)))
            idx, mask = padded(cb, batch_size=batch_size, num_steps=S)
            return host(variables, x_train, y_train, idx, mask, _flip(cb, flip), hp)

        return _with_strategy(host_updates, strategy)

    if strategy == "vmap":
        return _with_strategy(_make_vmap_plan_updates(model, cfg, batch_size, lanes), strategy)
    train = make_packed_train(model, cfg)

    @jax.jit
    def run(variables, x_train, y_train, cb, flip, hp, lane_marker, cap_marker):
        L, T = lane_marker.shape[0], cap_marker.shape[0]
        plan, makespan, idx, mask = schedule.lane_schedule(cb, lanes=L, lane_steps=T, batch_size=batch_size)
        one = lambda a: jnp.expand_dims(a, 0)  # noqa: E731 - a batch of one run
        U, stats = train(jax.tree_util.tree_map(one, variables), x_train, y_train, jax.tree_util.tree_map(one, plan),
                         one(idx), one(mask), one(flip), jax.tree_util.tree_map(one, hp), jnp.minimum(makespan, T))
        return U[0], jax.tree_util.tree_map(lambda a: a[0], stats)

    def updates(variables, x_train, y_train, cb, flip=None, hp=None):
        steps = np.asarray(jax.device_get(cb.steps), np.int32)
        L, T, _ = strategy_lanes(strategy, steps[None], steps.shape[0], lanes)
        return run(variables, jnp.asarray(x_train), jnp.asarray(y_train), cb, _flip(cb, flip),
                   cfg.hparams() if hp is None else hp, jnp.zeros((L,), bool), jnp.zeros((_pow2(T),), bool))

    return _with_strategy(updates, strategy)


def _make_vmap_plan_updates(model, cfg: LocalConfig, batch_size: int, lanes: int | None) -> Callable:
    """"vmap" on one run's plan: the per-client layout padded to the round's longest client, trained
    in chunks of `lanes` clients (None: all `n` at once), `training.packed.make_client_train`."""
    train = make_client_train(model, cfg)

    @jax.jit
    def run(variables, x_train, y_train, cb, flip, hp, chunk_marker, cap_marker):
        idx, mask = schedule.padded_schedule(cb, batch_size=batch_size, num_steps=cap_marker.shape[0])
        one = lambda a: jnp.expand_dims(a, 0)  # noqa: E731 - a batch of one run
        U, stats = train(jax.tree_util.tree_map(one, variables), x_train, y_train, one(idx), one(mask), one(flip),
                         jax.tree_util.tree_map(one, hp), chunk_marker.shape[0], cb.steps.max())
        return U[0], jax.tree_util.tree_map(lambda a: a[0], stats)

    def updates(variables, x_train, y_train, cb, flip=None, hp=None):
        n = int(cb.clients.shape[0])
        S = _pow2(int(jax.device_get(cb.steps).max(initial=1)))
        flip = jnp.zeros((n,), bool) if flip is None else jnp.asarray(flip, bool)
        return run(variables, jnp.asarray(x_train), jnp.asarray(y_train), cb, flip,
                   cfg.hparams() if hp is None else hp, jnp.zeros((min(n, lanes or n),), bool), jnp.zeros((S,), bool))

    return updates


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

"""Empirical (f, kappa)-robustness of an aggregation rule (issue 10, part 2).

Definition 1 of the paper (Allouah et al. 2023): a rule `F` is (f, kappa)-robust if for every
input and every set S of `n - f` rows,
`||F(x) - mean_S||^2 <= kappa * (1/|S|) sum_{i in S} ||x_i - mean_S||^2`. Given the honest rows
`H` (`[h, d]`, playing S) and `f`, `empirical_kappa` searches the `f` Byzantine rows `B` for the
largest

    ratio(B) = ||F(B ∪ H) - mean(H)||^2 / ((1/h) sum_i ||H_i - mean(H)||^2)

by gradient ascent through the rule (`attacks.gradient.ascend`: normalised-gradient steps in units
of the honest RMS spread, adaptive step, monotone), restarts vmapped in one jitted program. The
restarts start from the Byzantine rows of every registered attack that is a function of the
round's matrix (`matrix_attacks()`; white-box ones get this very defence as `ctx.downstream`), and from random
rows around the honest mean at several distances. The best ratio found is a **lower bound** on the
rule's kappa (for S = the honest rows).

A rule with no finite kappa (Mean) shows it twice: its estimate keeps growing with the search
budget (the ascent's step grows geometrically while the ratio keeps rising), and the result
reports `unbounded` (then `kappa = inf`): along the ray `mean(H) + t (B* - mean(H))` through the
best rows `B*`, the ratio at `t = 1e4` exceeds 100 times the larger of the ratio at `t = 1e2` and
the best ratio found (a rule with kappa < inf keeps every ratio below kappa, at every `t`). The
probe only looks along that ray: `unbounded = False` is evidence, not proof (e.g. RFA with a fixed
number of Weiszfeld iterations from the mean has, strictly, no finite kappa, but its iterate only
leaves the honest cloud for Byzantine rows ~1e7 spreads away).

Row layout: the Byzantine rows come first, `U = [B; H]` (SPEC §2: Byzantine clients are the first
ids); the Byzantine rows' "own honest updates" (BitFlip's input) are the honest rows
`H[i mod h]`, `i < f`. The rule sees `f` (concrete: a value above its limit raises), its `init`
state for `U`, and the fixed `key` (randomised rules such as DnC and bucketing are thus one fixed
function of `U`). Stateful rules (CClip) are evaluated from their initial state.

References: paper Definition 1; Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing
by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (upper bounds on
kappa per rule; the lower bound `kappa >= f / (n - 2f)` for every rule).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import registry
from strike_jax.attacks.base import downstream_defence
from strike_jax.attacks.gradient import ascend, honest_stats
from strike_jax.stages import RoundContext, Stage, make_stage, shape_of

Array = jax.Array


class KappaResult(NamedTuple):
    """Output of `empirical_kappa`.

    Attributes:
      kappa: the estimate: the largest ratio found, or `inf` when `unbounded`.
      kappa_found: the largest ratio found (finite).
      unbounded: True when the ray probe shows the ratio growing without bound (module doc).
      byzantine: `[f, d]` rows reaching `kappa_found`.
      attack_ratios: `{attack name: realised ratio}` of the library's attacks on these rows.
      init_names: `[R]` label of every restart (an attack name, or `random<k>`): the attacks that
        ignore the rule, then the white-box ones (but `gradient` when read off), then random.
      initial_ratios: `[R]` ratio at each restart's start.
      restart_ratios: `[R]` ratio at each restart's end.
      trace: `[steps]` the best ratio over all restarts after each step (non-decreasing).
      traces: `[R, steps]` every restart's best ratio after each step.
      probe_ratios: `[2]` ratios along the ray at `t = 1e2, 1e4` (NaN if not probed).
      honest_spread: `(1/h) sum ||H_i - mean(H)||^2`, the ratio's denominator.
    """

    kappa: float
    kappa_found: float
    unbounded: bool
    byzantine: np.ndarray
    attack_ratios: dict
    init_names: tuple
    initial_ratios: np.ndarray
    restart_ratios: np.ndarray
    trace: np.ndarray
    probe_ratios: np.ndarray
    honest_spread: float
    traces: np.ndarray


#: Attacks left out of the initialisations: data-level (LabelFlip changes training, not rows) and
#: the reliability test `nonfinite` (non-finite rows have no ratio).
EXCLUDED = ("labelflip", "nonfinite")
PROBE_T = (1e2, 1e4)


def matrix_attacks() -> tuple[str, ...]:
    """The registered attacks that are functions of the round's update matrix (and a key): every
    attack but the data-level ones and `nonfinite`."""
    return tuple(n for n in registry.names("attack")
                 if n not in EXCLUDED and not registry.build("attack", n).info.get("data_level", False))


def is_white_box(name: str) -> bool:
    """Whether the attack `name` reads the defence (`ctx.downstream`; its stage's `info["white_box"]`)."""
    return bool(registry.build("attack", name).info.get("white_box", False))


def as_defence(aggregator: Any) -> Stage:
    """The defence as a `Stage`: a Stage (a rule or a chain of pre-aggregators and a rule), an
    adapter of `aggregators.get` / `aggregators.chain` (its `.stage`), or a callable `U [n, d] ->
    [d]` (wrapped as a stateless rule stage named "custom").

    Raises:
      ValueError: anything else, or a stage that is not a rule (an attack, a lone pre-aggregator).
    """
    stage = getattr(aggregator, "stage", aggregator)
    if isinstance(stage, Stage):
        if stage.kind != "rule":
            raise ValueError(f"aggregator {stage.name!r} is a {stage.kind}; expected a rule or a chain ending in one.")
        return stage
    if callable(aggregator):
        return make_stage("custom", "rule", lambda shape: (), lambda x, s, ctx: (aggregator(x), s, ctx))
    raise ValueError(f"aggregator={aggregator!r} must be a rule Stage, an Aggregator (aggregators.get / chain) "
                     "or a callable U [n, d] -> [d].")


def as_aggregate_fn(aggregator: Any, f: int, key: Array | None, shape: Any) -> Callable[[Array], Array]:
    """`U [n, d] -> [d]`: the defence (`as_defence`) with `f`, its `init` state for `shape` and
    `key` bound (`attacks.base.downstream_defence`, as a white-box attack sees it)."""
    defence = as_defence(aggregator)
    return downstream_defence(shape_of(shape), defence, RoundContext(None, f, key, downstream=defence))[1]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    return int(value)


def attack_rows(attack_names: Sequence[str], honest: Array, f: int, defence: Stage | None,
                keys: Array) -> dict[str, Array]:
    """`{name: [f, d] Byzantine rows}` each attack sends against `honest` (rows first, module doc).

    Every attack is its registered stage with its default hyper-parameters, called with the round
    context `(mask, f, keys[i], downstream=defence)`: white-box attacks optimise against `defence`
    (from its `init` state), the others ignore it.
    """
    h = honest.shape[0]
    own = honest[jnp.arange(f) % h]
    u = jnp.concatenate([own, honest])
    mask = jnp.arange(f + h) < f
    out = {}
    for i, name in enumerate(attack_names):
        attack = registry.build("attack", name)
        ctx = RoundContext(mask, f, keys[i], downstream=defence)
        sent, _, _ = attack.update(u, attack.init(shape_of(u)), ctx)
        out[name] = sent[:f]
    return out


_BLACK_BOX_CACHE: dict = {}


def _black_box_rows(names: tuple, f: int) -> Callable:
    """A jitted `(honest, keys) -> [len(names), f, d]` for attacks that do not look at the rule:
    compiled once per (names, f, shape) and shared by every rule."""
    fn = _BLACK_BOX_CACHE.get((names, f))
    if fn is None:
        def rows(honest, keys):
            got = attack_rows(names, honest, f, None, keys)
            return jnp.stack([got[n] for n in names])
        fn = _BLACK_BOX_CACHE[(names, f)] = jax.jit(rows)
    return fn


def random_rows(key: Array, honest: Array, f: int, count: int) -> Array:
    """`[count, f, d]` random Byzantine rows around the honest mean `mu`: restart `k` puts its rows
    at distance `t_k * r` from `mu` (`r` the honest RMS spread, `t_k` log-spaced in [0.05, 8]: near
    the mean the Byzantine values sit inside every coordinate's honest range, where coordinate-wise
    rules still feel them), along one shared random direction for even `k` (all rows equal) and
    independent ones for odd `k`."""
    h, d = honest.shape
    mu, r = honest_stats(honest, jnp.zeros((h,), bool))
    r = jnp.where(r > 0, r, 1.0)
    t = jnp.geomspace(0.05, 8.0, max(count, 1))[:count].astype(honest.dtype)
    z = jax.random.normal(key, (count, f, d), honest.dtype)
    shared = (jnp.arange(count) % 2 == 0)[:, None, None]
    z = jnp.where(shared, z[:, :1, :], z)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=2, keepdims=True), 1e-30)
    return mu + (t[:, None, None] * r) * z


def empirical_kappa(aggregator: Any, honest: Array, f: int, *, key: Array, steps: int = 100, restarts: int = 8,
                    lr: float = 0.5, attacks: Sequence[str] | None = None, probe: bool = True) -> KappaResult:
    """The largest (f, kappa) ratio gradient ascent finds against `aggregator` (module docstring).

    Cost: one compiled program per call (the rule's value and gradient inside a `lax.scan`, the
    white-box attacks, the probe); the attacks that ignore the rule are compiled once per shape and
    shared between calls. The `gradient` attack is the ascent from STRIKE's rows with its default
    hyper-parameters (`attacks.get("gradient")`: 50 steps, lr 0.5): when `lr` is that lr, `steps
    >= 50` and "strike" is among the starts, its ratio is read off that restart after 50 steps
    (the same algorithm; only the random directions tried on plateaus differ) instead of running
    it twice.

    Args:
      aggregator: an `Aggregator` (`aggregators.get(...)`, `aggregators.chain(...)`), given
        `f=f`, its `init` state and `key`; or a callable `U [f + h, d] -> [d]`.
      honest: `[h, d]` honest rows (finite), `h >= 1`.
      f: number of Byzantine rows (Python int >= 1).
      key: PRNG key (the rule's randomness, the random restarts, the attacks' keys).
      steps: ascent iterations per restart (>= 0).
      restarts: random restarts (>= 0), besides one per attack.
      lr: initial step length in units of the honest RMS spread.
      attacks: names of the attacks to start from and report (default `matrix_attacks()`).
      probe: run the ray probe for unboundedness.

    Returns:
      `KappaResult` (host NumPy values).

    Raises:
      ValueError: bad shapes or counts, non-finite `honest`, or `f` above the rule's limit.
    """
    honest = jnp.asarray(honest)
    if honest.ndim != 2 or honest.shape[0] < 1 or honest.shape[1] < 1:
        raise ValueError(f"honest must be a [h, d] matrix with h, d >= 1; got shape {tuple(honest.shape)}.")
    if not jnp.issubdtype(honest.dtype, jnp.floating):
        honest = honest.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(honest))):
        raise ValueError("honest rows must be finite (found NaN/Inf).")
    f = _check_int("f", f, 1)
    steps = _check_int("steps", steps, 0)
    restarts = _check_int("restarts", restarts, 0)
    if not float(lr) > 0:
        raise ValueError(f"lr={lr!r} must be > 0.")
    names = tuple(matrix_attacks() if attacks is None else attacks)
    unknown = sorted(set(names) - set(registry.names("attack")))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; allowed: {list(matrix_attacks())}.")
    if not names and restarts == 0:
        raise ValueError("empirical_kappa needs at least one start: pass restarts >= 1 or some attacks.")
    h, d = honest.shape
    dtype = honest.dtype
    k_rule, k_rand, k_att, k_asc = jax.random.split(key, 4)
    defence = as_defence(aggregator)
    shape = jax.ShapeDtypeStruct((f + h, d), dtype)
    fn = as_aggregate_fn(defence, f, k_rule, shape)
    # Tracing checks f against the rule's limit (ValueError) before anything is compiled.
    jax.eval_shape(fn, shape)

    grad_defaults = registry.build("attack", "gradient").hparams
    read_off = ("gradient" in names and "strike" in names and steps >= grad_defaults["steps"]
                and float(lr) == float(grad_defaults["lr"]) and float(grad_defaults["nu"]) == 1.0)
    white = tuple(n for n in names if is_white_box(n) and not (read_off and n == "gradient"))
    black = tuple(n for n in names if not is_white_box(n))
    starts_names = black + white  # the order of the restarts; "gradient" read off if `read_off`
    labels = list(starts_names) + [f"random{k}" for k in range(restarts)]
    keys_att = {n: jax.random.fold_in(k_att, i) for i, n in enumerate(names)}  # per attack name
    black_rows = None
    if black:
        black_rows = _black_box_rows(black, f)(honest, jnp.stack([keys_att[n] for n in black]))

    # One program per call: the white-box attacks, the random starts, the vmapped ascent and the
    # ray probe (eager dispatch of the many small steps would cost more than the search itself).
    @jax.jit
    def run(hon, black_rows, k_rand, k_asc):
        mu = hon.mean(axis=0)
        spread = jnp.mean(jnp.sum(jnp.square(hon - mu), axis=1))
        denom = jnp.where(spread > 0, spread, 1.0)

        def ratio(b):
            g = fn(jnp.concatenate([b.astype(dtype), hon]))
            return jnp.sum(jnp.square(g - mu)) / denom

        parts = [] if black_rows is None else [black_rows]
        for n in white:
            # White-box attacks simulate the defence with their own key (they do not know the
            # server's randomness); their ratio is measured with the rule's key like every start.
            parts.append(attack_rows((n,), hon, f, defence, [keys_att[n]])[n][None])
        if restarts:
            parts.append(random_rows(k_rand, hon, f, restarts))
        b0 = jnp.concatenate(parts)
        keys = jax.random.split(k_asc, b0.shape[0])
        res = jax.vmap(lambda b, k: ascend(ratio, b, steps=steps, lr=lr, scale=jnp.sqrt(denom), key=k))(b0, keys)
        vals = jnp.where(jnp.isnan(res.value), -jnp.inf, res.value)
        b_best = res.x[jnp.argmax(vals)]
        probe_vals = jax.vmap(lambda t: ratio(mu + t * (b_best - mu)))(jnp.asarray(PROBE_T, dtype))
        return res, b_best, probe_vals, spread

    res, b_best, probe_out, spread = run(honest, black_rows, k_rand, k_asc)
    values = np.asarray(res.value, np.float64)
    values = np.where(np.isnan(values), -np.inf, values)
    kappa_found = float(values.max())
    probe_vals = np.full((2,), np.nan)
    unbounded = False
    if probe:
        probe_vals = np.asarray(probe_out, np.float64)
        unbounded = bool(np.isfinite(probe_vals[1]) and probe_vals[1] > 100.0 * max(probe_vals[0], kappa_found)
                         or (not np.isfinite(probe_vals[1]) and np.isfinite(kappa_found)))
    traces = np.asarray(res.trace, np.float64)
    traces = np.where(np.isnan(traces), -np.inf, traces)
    trace = traces.max(axis=0) if traces.size else np.zeros((0,))
    init_vals = np.asarray(res.initial_value, np.float64)
    attack_ratios = {n: float(init_vals[i]) for i, n in enumerate(starts_names)}
    if read_off:
        attack_ratios["gradient"] = float(traces[starts_names.index("strike"), grad_defaults["steps"] - 1])
    attack_ratios = {n: attack_ratios[n] for n in names}
    return KappaResult(
        kappa=float("inf") if unbounded else kappa_found,
        kappa_found=kappa_found,
        unbounded=unbounded,
        byzantine=np.asarray(b_best),
        attack_ratios=attack_ratios,
        init_names=tuple(labels),
        initial_ratios=init_vals,
        restart_ratios=values,
        trace=trace,
        probe_ratios=probe_vals,
        honest_spread=float(spread),
        traces=traces,
    )


# --- theoretical bounds ------------------------------------------------------------------------


def theoretical_kappa(rule: str, n: int, f: int) -> float | None:
    """Upper bound on kappa from the literature, or None where none is known here.

    With `n` rows, `f` Byzantine, `q = f / (n - 2f)` (Allouah et al. 2023, "Fixing by Mixing",
    Table 1 / Propositions; constants as published there):

    * `mean`: unbounded (`inf`) for `f >= 1`.
    * `trmean` / `rbtm` (coordinate-wise trimmed mean): `6 q (1 + q)`.
    * `median` (coordinate-wise): `4 (1 + q)^2`.
    * `rfa` (geometric median; RFA approximates it with 8 smoothed Weiszfeld steps): `4 (1 + q)^2`.
    * `krum`: `6 (1 + q)`. (Multi-Krum is not in that table: its first robustness proof is
      Bareilles, Bouaziz, Fageot, El-Mhamdi, arXiv 2602.03899, 2026, whose bounds are not
      reproduced here; None.)
    * `nnm+X`: `8 f / (n - f) * (kappa_X + 1)` (NNM composed with an (f, kappa_X)-robust rule).
    * every rule: at least `f / (n - 2f)` (the same paper's lower bound; `lower_kappa`).

    Multi-Krum, Aksel, CClip, DnC, Bulyan and bucketing chains get None (no bound in that form
    here). RFA with a fixed number of Weiszfeld steps from the mean is not the geometric median:
    far enough Byzantine rows move it without bound (measured by `empirical_kappa`'s probe), so
    the GM bound describes the limit of the iteration, not the rule as run.
    """
    if not 0 <= 2 * f < n:
        return None
    q = f / (n - 2 * f)
    if rule.startswith("nnm+"):
        inner = theoretical_kappa(rule[4:], n, f)
        return None if inner is None else 8.0 * f / (n - f) * (inner + 1.0)
    table = {
        "mean": float("inf") if f >= 1 else 0.0,
        "trmean": 6 * q * (1 + q),
        "rbtm": 6 * q * (1 + q),
        "median": 4 * (1 + q) ** 2,
        "rfa": 4 * (1 + q) ** 2,
        "krum": 6 * (1 + q),
    }
    return table.get(rule)


def lower_kappa(n: int, f: int) -> float:
    """`f / (n - 2f)`: no rule is (f, kappa)-robust with a smaller kappa (Allouah et al. 2023)."""
    return f / (n - 2 * f)


__all__ = ["EXCLUDED", "KappaResult", "as_aggregate_fn", "as_defence", "attack_rows", "empirical_kappa", "is_white_box",
           "lower_kappa", "matrix_attacks", "random_rows", "theoretical_kappa"]

"""The baseline attacks of the paper's Table 1 (SPEC §6), plus a reliability-testing attack.

`H` = the honest rows of the round (or, when no honest client was sampled, the Byzantine rows' own
honestly computed updates: `base.reference_mask`), `mu` their mean, `sigma` their coordinate-wise
biased std. Unless stated, all Byzantine clients send the same vector. Every attack is a pure
function of `(updates, byzantine_mask)` with a possibly traced `f = byzantine_mask.sum()`.

References:
  BitFlip / sign flipping: Allen-Zhu et al. 2020; Karimireddy et al. 2022.
  LIE: Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019.
  IPM: Xie, Koyejo, Gupta, "Fall of Empires", UAI 2020.
  MinMax / MinSum: Shejwalkar, Houmansadr, "Manipulating the Byzantine", NDSS 2021.
  Mimic: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from strike_jax import ops
from strike_jax.attacks.base import attack_stage, reference_mask, replace_rows, row_attack
from strike_jax.registry import choice, integer, optional, real, register
from strike_jax.stages import Stage

Array = jax.Array


# ----------------------------------------------------------------------------------------- BitFlip


@register("attack", "bitflip")
def bitflip(*, backend: ops.Backend | None = None) -> Stage:
    """BitFlip: each Byzantine client sends minus its own honest update (SPEC §6)."""
    del backend

    def core(updates, mask, state, key):
        return jnp.where(mask[:, None], -updates, updates), state

    return attack_stage("bitflip", core)


# --------------------------------------------------------------------------------------------- LIE


#: LIE's direction: "minus" sends `mu - z * sigma` (SPEC §6, update space); "plus" sends
#: `mu + z * sigma` (ByzFL 0.0.11's `ALittleIsEnough`, written for gradient-space rows).
LIE_SIGNS = ("minus", "plus")


def lie_vector(updates: Array, byzantine_mask: Array, z=1.5, *, ddof: int = 0, sign: str = "minus",
               backend: ops.Backend | None = None) -> Array:
    """`mu - z * sigma` over H (SPEC §6 LIE), or `mu + z * sigma` with `sign="plus"`. `[n, d]`, `[n]`
    -> `[d]`.

    `sigma` is the coordinate-wise std with `ddof` delta degrees of freedom: 0 (SPEC §1, biased) or
    1 (ByzFL: `sqrt(var(H, ddof=1))`), i.e. the biased std times `sqrt(h / (h - ddof))` for the `h`
    rows of H. Where `h <= ddof` (one honest row and `ddof = 1`: ByzFL gives NaN) the std is
    undefined and taken as 0, so the rows are `mu`.
    """
    if sign not in LIE_SIGNS:
        raise ValueError(f"lie: sign={sign!r} is not allowed; allowed: {', '.join(map(repr, LIE_SIGNS))}.")
    ref = reference_mask(byzantine_mask)
    st = ops.column_stats(updates, ops.mean_weights(ref, updates.dtype), gram=False, backend=backend)
    sigma = st.sigma
    if ddof:
        h = ref.sum().astype(updates.dtype)
        dof = h - ddof
        sigma = sigma * jnp.where(dof > 0, jnp.sqrt(h / jnp.where(dof > 0, dof, 1.0)), 0.0)
    step = jnp.asarray(z, updates.dtype) * sigma
    return st.centre - step if sign == "minus" else st.centre + step


@register("attack", "lie", z=real(), ddof=integer(low=0), sign=choice(*LIE_SIGNS))
def lie(z=1.5, ddof=0, sign="minus", *, backend: ops.Backend | None = None) -> Stage:
    """A Little Is Enough: Byzantine clients send `mu - z * sigma` (SPEC §6; z = 1.5; `z` traceable).

    ByzFL 0.0.11's `ALittleIsEnough(tau)` is `lie(z=tau, ddof=1, sign="plus")` on gradient-space
    rows (ByzFL's DSGD sends momenta); on update-space rows (`-lr` times them) the same attack is
    `lie(z=tau, ddof=1)` (the mean flips sign, the std does not).

    Args:
      z: the factor (> 0; traceable).
      ddof: 0 (default: biased std, SPEC §1) or more (1: ByzFL's sample std); static.
      sign: "minus" (default) or "plus"; static.

    Raises:
      ValueError: a concrete `z` that is not a finite number > 0, or a bad `ddof`/`sign`.
    """
    backend = ops.resolve(backend)
    return row_attack("lie", lambda u, m: lie_vector(u, m, z, ddof=ddof, sign=sign, backend=backend))


# --------------------------------------------------------------------------------------------- IPM


def ipm_vector(updates: Array, byzantine_mask: Array, eps=0.1) -> Array:
    """`-eps * mu` over H (SPEC §6 IPM). `[n, d]`, `[n]` -> `[d]`."""
    mu = ops.masked_mean(updates, reference_mask(byzantine_mask))
    return -jnp.asarray(eps, updates.dtype) * mu


@register("attack", "ipm", eps=real())
def ipm(eps=0.1, *, backend: ops.Backend | None = None) -> Stage:
    """Inner Product Manipulation: Byzantine clients send `-eps * mu` (SPEC §6; eps = 0.1; `eps`
    traceable).

    Raises:
      ValueError: a concrete `eps` that is not a finite number > 0.
    """
    del backend
    return row_attack("ipm", lambda u, m: ipm_vector(u, m, eps))


# ---------------------------------------------------------------------------------- MinMax, MinSum

#: The NDSS'21 search (SPEC §6): start and initial step, stopping threshold.
NDSS_LAMBDA0 = 10.0
NDSS_TOL = 1e-5
#: Static bound on the search's iterations (it stops after ~20-40; later iterations are no-ops).
NDSS_MAX_ITERS = 100


def ndss_search(feasible: Callable[[Array], Array], dtype=jnp.float32, *, lam0: float | Array = NDSS_LAMBDA0,
                tol: float = NDSS_TOL, max_iters: int = NDSS_MAX_ITERS) -> Array:
    """The NDSS'21 scalar search of MinMax/MinSum, returning the last **feasible** lambda.

    `lam = lam0, step = lam0, lam_ok = 0`; while `|lam_ok - lam| > tol`: if `feasible(lam)`:
    `lam_ok = lam; lam += step / 2` else `lam -= step / 2`; then `step /= 2`.

    Difference to the reference code (Shejwalkar & Houmansadr; the paper's code base): it returns
    the last *tried* `lam`, which may be infeasible by up to `tol`; we return `lam_ok` (SPEC §6),
    which is 0 when nothing was feasible. The loop has a static trip count (`fori_loop`, finished
    iterations are no-ops) so it works under jit/vmap.

    Args:
      feasible: scalar `lam` -> scalar bool (pure, traceable).
      dtype: dtype of `lam`.
      lam0, tol, max_iters: see above.

    Returns:
      scalar `lam_ok`.
    """

    def body(_, carry):
        lam, step, lam_ok = carry
        active = jnp.abs(lam_ok - lam) > tol
        ok = feasible(lam)
        lam_ok = jnp.where(active & ok, lam, lam_ok)
        lam = jnp.where(active, jnp.where(ok, lam + 0.5 * step, lam - 0.5 * step), lam)
        step = jnp.where(active, 0.5 * step, step)
        return lam, step, lam_ok

    init = (jnp.asarray(lam0, dtype), jnp.asarray(lam0, dtype), jnp.zeros((), dtype))
    return lax.fori_loop(0, max_iters, body, init)[2]


class LambdaAttackResult(NamedTuple):
    """MinMax / MinSum output.

    Attributes:
      vector: `[d]` `mu - lam * sigma`.
      lam: scalar, the last feasible lambda.
      mean: `[d]` `mu`.
      sigma: `[d]` `sigma`.
    """

    vector: Array
    lam: Array
    mean: Array
    sigma: Array


def _lambda_attack(updates: Array, byzantine_mask: Array, kind: str, backend: ops.Backend | None) -> LambdaAttackResult:
    ref = reference_mask(byzantine_mask)
    dtype = updates.dtype
    # One pass: mu, sigma, the Gram matrix of the rows centred at mu, q_i = <H_i - mu, sigma>.
    # ||mu - lam sigma - H_i||^2 = A_i + 2 lam q_i + lam^2 ||sigma||^2 with A_i = ||H_i - mu||^2.
    st = ops.column_stats(updates, ops.mean_weights(ref, dtype), gram=True, backend=backend)
    a = jnp.diagonal(st.gram)
    d2, _ = ops.sq_dists_from_gram(st.gram)
    if kind == "minmax":
        threshold = ops.masked_max_pairwise(d2, ref)

        def feasible(lam):
            vals = a + 2.0 * lam * st.dots + (lam * lam) * st.dev_sq_norm
            return jnp.max(jnp.where(ref, vals, -jnp.inf)) <= threshold

    else:
        row_sums = jnp.where(ref[None, :], d2, 0.0).sum(axis=1)
        threshold = jnp.max(jnp.where(ref, row_sums, -jnp.inf))
        h = ref.sum().astype(dtype)
        sum_a = jnp.where(ref, a, 0.0).sum()
        sum_q = jnp.where(ref, st.dots, 0.0).sum()

        def feasible(lam):
            return sum_a + 2.0 * lam * sum_q + h * (lam * lam) * st.dev_sq_norm <= threshold

    lam = ndss_search(feasible, dtype)
    return LambdaAttackResult(st.centre - lam * st.sigma, lam, st.centre, st.sigma)


def minmax_vector(updates: Array, byzantine_mask: Array, *, backend: ops.Backend | None = None) -> LambdaAttackResult:
    """MinMax (SPEC §6): `mu - lam * sigma`, the largest `lam` (NDSS search) with
    `max_i ||mal - H_i|| <= max_{i,j} ||H_i - H_j||`. Distances from one centred Gram pass; each
    search step is O(n) (squared distances are quadratics in `lam`)."""
    return _lambda_attack(updates, byzantine_mask, "minmax", backend)


def minsum_vector(updates: Array, byzantine_mask: Array, *, backend: ops.Backend | None = None) -> LambdaAttackResult:
    """MinSum (SPEC §6): `mu - lam * sigma`, the largest `lam` (NDSS search) with
    `sum_i ||mal - H_i||^2 <= max_i sum_j ||H_i - H_j||^2`."""
    return _lambda_attack(updates, byzantine_mask, "minsum", backend)


@register("attack", "minmax")
def minmax(*, backend: ops.Backend | None = None) -> Stage:
    """MinMax attack (Shejwalkar & Houmansadr 2021; SPEC §6). See `minmax_vector`, `ndss_search`."""
    backend = ops.resolve(backend)
    return row_attack("minmax", lambda u, m: minmax_vector(u, m, backend=backend).vector)


@register("attack", "minsum")
def minsum(*, backend: ops.Backend | None = None) -> Stage:
    """MinSum attack (Shejwalkar & Houmansadr 2021; SPEC §6). See `minsum_vector`, `ndss_search`."""
    backend = ops.resolve(backend)
    return row_attack("minsum", lambda u, m: minsum_vector(u, m, backend=backend).vector)


# ------------------------------------------------------------------------------------------- Mimic


class MimicState(NamedTuple):
    """Mimic's state across rounds.

    Attributes:
      z: `[d]` unit direction (zeros before the first round).
      t: int32 scalar, the number of rounds seen (0 before the first).
    """

    z: Array
    t: Array


def _normalise(v: Array, fallback: Array) -> Array:
    nrm = jnp.sqrt(jnp.vdot(v, v))
    return jnp.where(nrm > 0, v / jnp.where(nrm > 0, nrm, 1.0), fallback)


class MimicResult(NamedTuple):
    """Mimic output: `vector` `[d]` (= `updates[target]`), `target` int32 index, new `state`."""

    vector: Array
    target: Array
    state: MimicState


def mimic_step(updates: Array, byzantine_mask: Array, state: MimicState, key: Array, *,
               backend: ops.Backend | None = None) -> MimicResult:
    """One round of Mimic (SPEC §6; Karimireddy et al. 2022).

    First round (`t == 0`): `z0 ~ N(0, I)` from `key`, `w_i = <H_i - mu, z0>`,
    `z = normalise(sum_i w_i H_i)`. Later rounds: `w_i = <H_i - mu, z>`,
    `z_hat = normalise(sum_i w_i H_i)`, `z = normalise((t z + z_hat) / (t + 1))`. All Byzantine
    clients copy `H_{i*}`, `i* = argmax_i |<H_i, z>|` (the first on ties). Degenerate cases never give
    NaN: a zero `sum_i w_i H_i` (e.g. `h == 1`) leaves `z` at the previous (or initial) direction.

    Args:
      updates: `[n, d]`.
      byzantine_mask: `[n]` bool.
      state: `MimicState`.
      key: PRNG key (used only when `t == 0`).

    Returns:
      `MimicResult`.
    """
    dtype = updates.dtype
    d = updates.shape[1]
    ref = reference_mask(byzantine_mask)
    mu = ops.masked_mean(updates, ref)
    t = jnp.asarray(state.t, jnp.int32)
    first = t == 0
    direction = lax.cond(first, lambda: jax.random.normal(key, (d,), dtype), lambda: state.z.astype(dtype))
    w = jnp.where(ref, ops.centred_matvec(updates, mu, direction, backend=backend), 0.0)
    start = _normalise(direction, jnp.zeros_like(direction))
    z_hat = _normalise(ops.weighted_rows(w, updates), jnp.zeros_like(direction))
    # At t == 0 the previous z does not enter (t * z = 0), so z = z_hat.
    z = _normalise(t.astype(dtype) * state.z.astype(dtype) + z_hat, start)
    scores = jnp.where(ref, jnp.abs(updates @ z), -jnp.inf)
    target = jnp.argmax(scores).astype(jnp.int32)
    # The row as a one-hot product, not a dynamic slice: XLA:CPU fuses a slice of `updates` into the
    # row write, which then cannot reuse a donated `updates` buffer in place (an extra [n, d] copy,
    # measured); a dot's output is a buffer of its own. Exact for finite rows (x * 1 + 0 * others).
    vector = ops.weighted_rows(jax.nn.one_hot(target, updates.shape[0], dtype=dtype), updates)
    return MimicResult(vector, target, MimicState(z, t + 1))


def mimic_fixed_vector(updates: Array, byzantine_mask: Array, target) -> Array:
    """ByzFL 0.0.11's `Mimic(epsilon=target)`: the row of the `target`-th honest client (0-based, in
    row order among the rows of H). `[n, d]`, `[n]` -> `[d]`.

    `target` may be traced. ByzFL raises when `target >= h`; a traced count cannot, so here the last
    row of H is copied then (the same clamping as a traced `f` above a rule's limit, SPEC §7).
    """
    ref = reference_mask(byzantine_mask)
    rank = jnp.cumsum(ref) - 1
    t = jnp.minimum(jnp.asarray(target, jnp.int32), ref.sum() - 1)
    pick = (ref & (rank == t)).astype(updates.dtype)
    return ops.weighted_rows(pick, updates)


@register("attack", "mimic", target=optional(integer(low=0)))
def mimic(target=None, *, backend: ops.Backend | None = None) -> Stage:
    """Mimic (stateful; SPEC §6): Byzantine clients copy the honest update that is most extreme
    along a slowly averaged top principal direction. `update` needs a `key` (first round's z0).
    The state advances on every call, also in rounds without Byzantine clients.

    Args:
      target: None (default: the adaptive choice above), or an int `i >= 0`: always copy the `i`-th
        honest row (ByzFL's `Mimic(epsilon=i)`, which copies `honest_vectors[i]`; its default is
        0); static. See `mimic_fixed_vector`. With a target the stage is stateless and needs no key.
    """
    backend = ops.resolve(backend)
    if target is not None:
        return row_attack("mimic", lambda u, m: mimic_fixed_vector(u, m, target))

    def init(shape):
        return MimicState(jnp.zeros((shape.shape[1],), shape.dtype), jnp.zeros((), jnp.int32))

    def core(updates, mask, state, key):
        res = mimic_step(updates, mask, state, key, backend=backend)
        return replace_rows(updates, mask, res.vector), res.state

    return attack_stage("mimic", core, init=init, needs_key=True, stateful=True)


# --------------------------------------------------------------------------------------- NonFinite

NONFINITE_VALUES = ("nan", "inf", "-inf", "mixed")


def nonfinite_row(n: int, d: int, value: str, dtype) -> Array:
    """`[n, d]` matrix of non-finite values: all NaN, +Inf or -Inf, or (`"mixed"`) the cycle
    NaN, +Inf, -Inf over `(row + column) % 3` so that rows differ."""
    if value == "nan":
        return jnp.full((n, d), jnp.nan, dtype)
    if value == "inf":
        return jnp.full((n, d), jnp.inf, dtype)
    if value == "-inf":
        return jnp.full((n, d), -jnp.inf, dtype)
    pattern = (lax.broadcasted_iota(jnp.int32, (n, d), 0) + lax.broadcasted_iota(jnp.int32, (n, d), 1)) % 3
    return jnp.where(pattern == 0, jnp.nan, jnp.where(pattern == 1, jnp.inf, -jnp.inf)).astype(dtype)


@register("attack", "nonfinite", value=choice(*NONFINITE_VALUES))
def nonfinite(value="nan", *, backend: ops.Backend | None = None) -> Stage:
    """Byzantine rows full of NaN / Inf, for testing that defences and the simulation are reliable
    (not in the paper).

    Args:
      value: one of `"nan"`, `"inf"`, `"-inf"`, `"mixed"` (NaN, +Inf, -Inf cycling over the
        entries; static: it selects the pattern).

    Raises:
      ValueError: an unknown `value`.
    """
    del backend

    def core(updates, mask, state, key):
        n, d = updates.shape
        bad = nonfinite_row(n, d, value, updates.dtype)
        return jnp.where(mask[:, None], bad, updates), state

    return attack_stage("nonfinite", core)


__all__ = [
    "LIE_SIGNS",
    "LambdaAttackResult",
    "MimicResult",
    "MimicState",
    "NONFINITE_VALUES",
    "bitflip",
    "ipm",
    "ipm_vector",
    "lie",
    "lie_vector",
    "mimic",
    "mimic_fixed_vector",
    "mimic_step",
    "minmax",
    "minmax_vector",
    "minsum",
    "minsum_vector",
    "ndss_search",
    "nonfinite",
    "nonfinite_row",
]

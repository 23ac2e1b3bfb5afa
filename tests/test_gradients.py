"""Exact gradients through every rule and pre-aggregation chain, checked by central finite
differences in float64 (issue 10, part 1).

For each rule `F` of `aggregators.rule_names()`, each pre-aggregator alone, and a few chains
(`CHAINS` and `nnm+bucketing+trmean`; bucketing with a fixed key, so a chain is one fixed
function): at a
generic input `X` (`[13, 3]` standard normal rows, drawn so that no two values of a column, no two
pairwise distances and no two scores are closer than the finite-difference step can reach), the
reverse-mode Jacobian `dF/dX` and the gradient of a nonlinear scalar objective
`phi(X) = <w, F(X)> + ||F(X) - c||^2 / 2` match central differences with step `h = 1e-6`:
`|autodiff - fd| <= 1e-6 + 1e-6 |fd|` (truncation error O(h^2) and rounding O(eps/h) ~ 1e-10
for these O(1) values, so the tolerance leaves a wide margin and any wrong term, e.g. a missing
1/n or a gradient through a stop-gradient'ed selection that should be there, fails it).

Subgradients at kinks (documented by the tests at the end). Every rule here is piecewise smooth:
selections (Krum / Multi-Krum scores, Bulyan's repeated Krum, Aksel's threshold, DnC's
filtering, NNM's neighbourhoods, the ranks of Median / TrMean / Bulyan's window) are piecewise
constant, so the gradient is that of the current piece: the selected rows' average weights.
That is the exact gradient almost everywhere (the tests above, away from ties). On a tie:

* order statistics (Median, TrMean, Bulyan's window) share the band's weight evenly among tied
  entries (`ops._band_sum_ad_jvp`): the average of the one-sided gradients, a Clarke subgradient;
* selections by score (Krum, Multi-Krum, DnC, NNM) break ties by row index (SPEC §7), and the
  gradient is that of the selected rows: the one-sided gradient of the side the tie-break picks;
* RFA's distances use `max(dist, eps)` and a double `where` at 0 (finite gradients when the
  iterate meets a row), CClip's `min(1, tau / dist)` takes the clipped branch's gradient at
  `dist == tau` exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import aggregators as A

KEY = jax.random.PRNGKey(3)
N, D, F = 13, 3, 2
H = 1e-6
RTOL = ATOL = 1e-6

RULES = list(A.rule_names())
# Every rule alone and both pre-aggregators alone: a chain's gradient is then the chain rule of
# these. A few chains check the composition itself (bucketing rescales f to ceil(f/2); NNM in
# front of a rule reading round inputs; NNM + bucketing in SPEC §7's order).
# Not NNM + FoolsGold / SignGuard: NNM at this size maps the rows onto a few exact duplicates (each
# row's n - f nearest neighbours are mostly the same set), where FoolsGold (cosine 1) and SignGuard
# (mean-shift clusters) jump, so finite differences across the tie are meaningless; both rules'
# gradients are tested alone.
CHAINS = ["bucketing+trmean", "bucketing+krum", "bucketing+dnc", "nnm+median", "nnm+rfa", "nnm+cclip",
          "nnm+fltrust", "nnm+caf"]
CASES = RULES + ["nnm", "bucketing"] + CHAINS + ["nnm+bucketing+trmean"]


def _generic_input(seed: int) -> np.ndarray:
    """`[N, D]` float64 rows whose column values, pairwise squared distances and distances to the
    column means are separated by far more than the finite-difference step."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((N, D))
        cols = np.sort(x, axis=0)
        d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)[np.triu_indices(N, 1)]
        if np.diff(cols, axis=0).min() > 1e-3 and np.diff(np.sort(d2)).min() > 1e-4:
            return x


# CClip's radius is set so that some rows are clipped and some are not (both branches tested; the
# default tau = 10 clips nothing at this scale).
HPARAMS = {"cclip": {"tau": 1.5}, "foolsgold": {"num_clients": N}}
# Round inputs of the rules that need them (fixed, so each case is one function of U): FLTrust's
# root update and FoolsGold's client ids.
ROUND_INPUTS = {"fltrust": {"root_update": np.linspace(-1.0, 1.0, D)}, "foolsgold": {"clients": np.arange(N)}}


def _fn(case: str):
    """`U [N, D] -> output` (a `[D]` aggregate, or the pre-aggregated matrix for a lone stage)."""
    stages = case.split("+")
    if len(stages) == 1 and stages[0] in A.PREAGGREGATORS:
        pre = A.get(stages[0])
        return lambda u: pre.apply(u, pre.init(u), f=F, key=KEY)[0]
    built = [A.get(s, **HPARAMS.get(s, {})) for s in stages]
    rule = A.chain(*built) if len(built) > 1 else built[0]
    extra = {k: jnp.asarray(v) for s in stages for k, v in ROUND_INPUTS.get(s, {}).items()}
    return lambda u: rule.aggregate(u, rule.init(u), f=F, key=KEY, **extra)[0]


@pytest.mark.parametrize("case", CASES)
def test_jacobian_and_objective_gradient_match_finite_differences(case, x64):
    x = _generic_input(0)
    if case == "cclip":
        norms = np.linalg.norm(x, axis=1)  # distances to CClip's initial centre 0
        assert (norms > 1.5).any() and (norms < 1.5).any() and np.abs(norms - 1.5).min() > 1e-3
    fn = _fn(case)
    out_shape = jax.eval_shape(fn, jnp.asarray(x)).shape
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal(out_shape))
    c = jnp.asarray(rng.standard_normal(out_shape))

    def aug(u):
        # The aggregate (flattened) and the scalar objective phi of it, so that one reverse-mode
        # program gives both the Jacobian of F and the gradient of phi (phi's cotangent
        # `w + F - c` is not constant: a genuine vector-Jacobian product).
        out = fn(u)
        phi = jnp.sum(w * out) + 0.5 * jnp.sum(jnp.square(out - c))
        return jnp.concatenate([out.reshape(-1), phi[None]])

    jac = np.asarray(jax.jit(jax.jacrev(aug))(jnp.asarray(x))).reshape(-1, N * D)  # [m + 1, N*D]
    assert jac.dtype == np.float64
    # Central differences of the forward function alone (the rules' own compiled code).
    fwd = jax.jit(aug)
    fd = np.empty_like(jac)
    for k in range(N * D):
        e = np.zeros(N * D)
        e[k] = H
        e = e.reshape(N, D)
        fd[:, k] = (np.asarray(fwd(jnp.asarray(x + e))) - np.asarray(fwd(jnp.asarray(x - e)))) / (2 * H)
    np.testing.assert_allclose(jac[:-1], fd[:-1], rtol=RTOL, atol=ATOL, err_msg=f"{case}: Jacobian of F")
    np.testing.assert_allclose(jac[-1], fd[-1], rtol=RTOL, atol=ATOL, err_msg=f"{case}: gradient of phi")
    # Not vacuous: the aggregate depends on its input.
    assert np.abs(fd[:-1]).max() > 1e-3


# --- subgradients at kinks ------------------------------------------------------------------------


def test_median_at_a_tie_gets_the_average_of_the_one_sided_gradients(x64):
    # Column 0: the lower median's row and the next one in sorted order tied exactly.
    x = _generic_input(2)
    order = np.argsort(x[:, 0])
    m = order[(N - 1) // 2]
    other = order[(N - 1) // 2 + 1]
    x[other, 0] = x[m, 0]
    rule = A.get("median")
    fn = jax.jit(lambda u: rule.aggregate(u, (), f=0)[0][0])
    g = np.asarray(jax.grad(fn)(jnp.asarray(x)))[:, 0]
    # One-sided: nudge the tie apart both ways; each side's gradient picks one of the two rows.
    sides = []
    for s in (+1, -1):
        y = x.copy()
        y[other, 0] += s * 1e-7
        sides.append(np.asarray(jax.grad(fn)(jnp.asarray(y)))[:, 0])
    np.testing.assert_allclose(sorted(np.flatnonzero(sides[0] + sides[1])), sorted([m, other]))
    np.testing.assert_allclose(g, 0.5 * (sides[0] + sides[1]), atol=1e-12)


def test_krum_at_a_tie_gets_the_gradient_of_the_row_the_tie_break_selects(x64):
    # Two identical rows have identical scores; SPEC §7 breaks the tie by row index.
    x = _generic_input(3)
    rule = A.get("krum")
    fn = jax.jit(lambda u: rule.aggregate(u, (), f=F)[0])
    winner = int(np.argmin([np.linalg.norm(np.asarray(fn(jnp.asarray(x))) - r) for r in x]))
    x = np.concatenate([x[:winner + 1], x[winner:winner + 1], x[winner + 1:-1]])  # duplicate the winner
    jac = np.asarray(jax.jacrev(fn)(jnp.asarray(x)))  # [D, N, D]
    used = np.flatnonzero(np.abs(jac).sum(axis=(0, 2)))
    assert used.tolist() == [winner]  # the earlier copy, with the identity as its block
    np.testing.assert_allclose(jac[:, winner, :], np.eye(D), atol=1e-12)

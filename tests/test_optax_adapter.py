"""strike_jax.optax: rules, pre-aggregators and attacks in optax's `aggregating` slots, equal to
the stages called by hand on the ravelled `[n, d]` matrix; jit, vmap over f, grad."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from optax.experimental import aggregating

from strike_jax import optax as sj_optax
from strike_jax import stages
from strike_jax.stages import RoundContext

N_CLIENTS, BATCH = 5, 8


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(3)(x)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_CLIENTS, BATCH, 4)).astype(np.float32)
    y = rng.integers(0, 3, (N_CLIENTS, BATCH))
    params = Net().init(jax.random.PRNGKey(seed), x[0])["params"]

    def loss(p, xb, yb):
        logits = Net().apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    grads_fn = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))
    return params, jnp.asarray(x), jnp.asarray(y), grads_fn


def _by_hand(params, x, y, grads_fn, pipe, f, lr, steps, key=None, byzantine_first=False):
    """The same training with the stage called on the ravelled matrix."""
    flat, unravel = ravel_pytree(params)
    state = pipe.init(jax.ShapeDtypeStruct((N_CLIENTS, flat.size), flat.dtype))
    for _ in range(steps):
        grads = grads_fn(unravel(flat), x, y)
        U = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
        sub = None
        if key is not None:
            key, sub = jax.random.split(key)
        mask = (jnp.arange(N_CLIENTS) < f) if byzantine_first else None
        g, state, _ = pipe.update(U, state, RoundContext(mask, f, sub))
        flat = flat - lr * g
    return unravel(flat)


def _with_optax(params, x, y, grads_fn, agg, lr, steps, preprocessor=None, jit=True):
    opt = aggregating.process(preprocessor or optax.identity(), agg, optax.sgd(lr))
    state = opt.init(params)

    def step(params, state):
        grads = grads_fn(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def _close(a, b, tol=1e-6):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


@pytest.mark.parametrize("rule, f", [("median", 1), ("trmean", 2), ("multikrum", 1)])
def test_sgd_through_the_adapter_equals_the_rule_by_hand(rule, f):
    params, x, y, grads_fn = _problem()
    agg = sj_optax.aggregator(rule, f=f)
    assert isinstance(agg, aggregating.Aggregator)
    got, _ = _with_optax(params, x, y, grads_fn, agg, 0.5, 3)
    want = _by_hand(params, x, y, grads_fn, stages.get("rule", rule), f, 0.5, 3)
    _close(got, want)
    eager, _ = _with_optax(params, x, y, grads_fn, agg, 0.5, 1, jit=False)
    _close(eager, _by_hand(params, x, y, grads_fn, stages.get("rule", rule), f, 0.5, 1))


def test_key_lives_in_the_state_and_preaggregation_rescales_f():
    params, x, y, grads_fn = _problem(1)
    key = jax.random.PRNGKey(7)
    agg = sj_optax.aggregator("median", f=2, preaggregation=("bucketing",), key=key)
    got, state = _with_optax(params, x, y, grads_fn, agg, 0.3, 3)
    pipe = stages.chain(stages.get("preaggregator", "bucketing"), stages.get("rule", "median"))
    _close(got, _by_hand(params, x, y, grads_fn, pipe, 2, 0.3, 3, key=key))
    agg_state = state[1]
    assert isinstance(agg_state, sj_optax.StageState) and int(agg_state.f) == 2
    assert not np.array_equal(np.asarray(agg_state.key), np.asarray(key))  # split at every update
    with pytest.raises(ValueError, match="bucketing\\+median is randomised: pass key="):
        a = sj_optax.aggregator("median", f=1, preaggregation=("bucketing",))
        grads = grads_fn(params, x, y)
        a.update(grads, a.init(params))


def test_preaggregator_in_the_preprocessor_slot():
    params, x, y, grads_fn = _problem(2)
    got, _ = _with_optax(params, x, y, grads_fn, sj_optax.aggregator("median", f=1), 0.3, 2,
                         preprocessor=sj_optax.preaggregator("nnm", f=1))
    want, _ = _with_optax(params, x, y, grads_fn, sj_optax.aggregator("median", f=1, preaggregation=("nnm",)),
                          0.3, 2)
    _close(got, want)
    pipe = stages.chain(stages.get("preaggregator", "nnm"), stages.get("rule", "median"))
    _close(got, _by_hand(params, x, y, grads_fn, pipe, 1, 0.3, 2))


def test_attack_injects_byzantine_rows_in_the_same_chain():
    params, x, y, grads_fn = _problem(3)
    flip = stages.from_function(lambda U, mask: -10.0 * U, kind="attack", name="t_optax_flip")
    got, _ = _with_optax(params, x, y, grads_fn, sj_optax.aggregator("median", f=2, attack=flip), 0.3, 2)
    pipe = stages.chain(flip, stages.get("rule", "median"))
    _close(got, _by_hand(params, x, y, grads_fn, pipe, 2, 0.3, 2, byzantine_first=True))
    # the attack alone in the preprocessor slot: only the first f rows change, bit-exact elsewhere
    tx = sj_optax.attack(flip, f=2)
    grads = grads_fn(params, x, y)
    out, _ = tx.update(grads, tx.init(params))
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_array_equal(a[2:], b[2:])
        np.testing.assert_allclose(a[:2], -10.0 * b[:2], rtol=1e-6)
    # with a library attack and a mask given per call
    lie = sj_optax.attack("lie", f=0)
    mask = jnp.array([False, True, False, False, True])
    out, _ = jax.jit(lambda g, s: lie.update(g, s, byzantine_mask=mask, f=2))(grads, lie.init(params))
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_array_equal(a[~np.asarray(mask)], b[~np.asarray(mask)])
        assert not np.array_equal(a[1], b[1])


def test_vmap_over_f_jit_and_grad():
    params, x, y, grads_fn = _problem(4)
    grads = grads_fn(params, x, y)
    agg = sj_optax.aggregator("trmean", f=0)
    state = agg.init(params)
    rule = stages.get("rule", "trmean")
    U = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
    many = jax.jit(jax.vmap(lambda f: ravel_pytree(agg.update(grads, state, f=f)[0])[0]))(jnp.arange(3))
    for f in range(3):
        np.testing.assert_allclose(many[f], rule.update(U, (), RoundContext(None, f, None))[0], rtol=1e-6, atol=1e-7)
    # f in the state: vmap over a run axis of states
    states = jax.vmap(lambda f: state._replace(f=f))(jnp.arange(3, dtype=jnp.int32))
    by_state = jax.vmap(lambda s: ravel_pytree(agg.update(grads, s)[0])[0])(states)
    np.testing.assert_allclose(by_state, many, rtol=1e-6, atol=1e-7)
    # grad through the aggregation, against the rule's own gradient on the matrix
    w = jax.random.normal(jax.random.PRNGKey(0), U.shape[1:])
    g_tree = jax.grad(lambda gr: ravel_pytree(agg.update(gr, state, f=1)[0])[0] @ w)(grads)
    g_mat = jax.grad(lambda u: rule.update(u, (), RoundContext(None, 1, None))[0] @ w)(U)
    np.testing.assert_allclose(jax.vmap(lambda g: ravel_pytree(g)[0])(g_tree), g_mat, rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(g_mat)).sum() > 0


def test_user_rule_and_errors():
    params, x, y, grads_fn = _problem(5)
    grads = grads_fn(params, x, y)
    mine = stages.from_function(lambda U, f: jnp.median(U, axis=0), name="t_optax_rule", max_f=lambda n: (n - 1) // 2)
    agg = sj_optax.aggregator(mine, f=1)
    out, _ = agg.update(grads, agg.init(params))
    want = jax.tree_util.tree_map(lambda g: jnp.median(g, axis=0), grads)
    _close(out, want)
    with pytest.raises(ValueError, match="t_optax_rule tolerates at most f=2"):
        sj_optax.aggregator(mine, f=3, num_clients=5)
    with pytest.raises(ValueError, match="f \\(the number of Byzantine rows\\) is required"):
        a = sj_optax.aggregator("median", f=None)
        a.update(grads, a.init(params))
    with pytest.raises(ValueError, match="same leading client axis"):
        agg.update({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4, 2))}, agg.init({"a": jnp.zeros(2), "b": jnp.zeros(2)}))
    with pytest.raises(ValueError, match="f=-1 is not allowed"):
        sj_optax.aggregator("median", f=-1)
    with pytest.raises(ValueError, match="is a rule; allowed here: a preaggregator"):
        sj_optax.preaggregator(stages.get("rule", "median"), f=1)
    with pytest.raises(ValueError, match="Unknown rule 'nope'"):
        sj_optax.aggregator("nope", f=1)

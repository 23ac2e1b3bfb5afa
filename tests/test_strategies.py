"""Execution strategies give the same updates; nothing recompiles across rounds; evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import models
from strike_jax import training


def _counting(model):
    """The model with a trace counter: `apply` runs in Python only while jax traces."""
    count = {"n": 0}

    def apply(*args, **kwargs):
        count["n"] += 1
        return model.apply(*args, **kwargs)

    return model._replace(apply=apply), count


def _schedule(rng, n, S, B, N):
    idx = rng.integers(0, N, size=(n, S, B)).astype(np.int32)
    mask = np.ones((n, S, B), bool)
    sizes = rng.integers(1, S * B + 1, size=n)
    sizes[0] = S * B - 1  # a partial last batch
    sizes[1] = 1 if n > 1 else sizes[1]  # a client with one example (a skipped batch for BatchNorm)
    for i, m in enumerate(sizes):
        mask[i].reshape(-1)[m:] = False
    return idx, mask


def _reference_rows(local, variables, X, Y, idx, mask, flip):
    """Per client: flatten(local_train(...)) - flatten(variables), one client at a time."""
    flat0, _ = training.flatten_variables(variables)
    rows = []
    for i in range(idx.shape[0]):
        new, _ = local(variables, X, Y, idx[i], mask[i], flip[i])
        rows.append(np.asarray(training.flatten_variables(new)[0] - flat0))
    return np.stack(rows)


@pytest.mark.parametrize(
    "name,strategies,with_reference",
    [
        ("mlp", [("steps", None), ("loop", None), ("vmap", None), ("packed", 2), ("packed", None), ("map", None)],
         True),
        # BatchNorm in lanes (masked statistics, skipped size-1 batch) against the per-client loop;
        # the per-client program itself is checked against NumPy in test_local_training.py.
        ("small_cnn_bn", [("steps", None), ("packed", 2)], False),
    ],
)
def test_strategies_agree_and_do_not_recompile(name, strategies, with_reference):
    base = models.get(name, 5, (4, 4, 1))
    model, traces = _counting(base)
    cfg = training.LocalConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, clip_norm=2.0, num_classes=5)
    variables = jax.jit(base.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    N, n, S, B = 40, 3, 3, 4
    X = jnp.asarray(rng.normal(size=(N, 4, 4, 1)).astype(np.float32))
    Y = jnp.asarray(rng.integers(0, 5, size=N).astype(np.int32))
    schedules = [_schedule(rng, n, S, B, N) for _ in range(2)]
    flips = [np.array([False, True, False]), np.array([True, False, True])]
    refs = ref_stats = None
    if with_reference:
        local = jax.jit(training.make_local_train(base, cfg))
        refs = [_reference_rows(local, variables, X, Y, idx, mask, flip)
                for (idx, mask), flip in zip(schedules, flips)]
    d = models.num_params(base) + models.num_batch_stats(base)
    for strategy, chunk in strategies:
        cu = training.make_client_updates(model, cfg, strategy, lanes=chunk)
        assert cu.strategy == strategy
        outs, stats_r = [], []
        for r, ((idx, mask), flip) in enumerate(zip(schedules, flips)):
            U, stats = cu(variables, X, Y, idx, mask, flip)
            if r == 0:
                after_first = traces["n"]
            assert U.shape == (n, d) and U.dtype == jnp.float32
            assert stats.loss.shape == stats.num_steps.shape == stats.num_examples.shape == (n,)
            outs.append(np.asarray(U))
            stats_r.append([np.asarray(a) for a in stats])
        # The second round (new schedule and flags, same shapes) did not trace anything again.
        assert traces["n"] == after_first, f"{strategy}/{chunk} retraced"
        if refs is None:  # the first strategy is the reference of the others
            refs = outs
        if ref_stats is None:
            ref_stats = stats_r
        for r in range(2):
            np.testing.assert_allclose(outs[r], refs[r], rtol=1e-5, atol=1e-6, err_msg=f"{strategy}/{chunk} round {r}")
            np.testing.assert_allclose(stats_r[r][0], ref_stats[r][0], rtol=1e-5)  # loss
            np.testing.assert_array_equal(stats_r[r][1], ref_stats[r][1])  # steps
            np.testing.assert_array_equal(stats_r[r][2], ref_stats[r][2])  # examples
    assert not np.allclose(refs[0], refs[1])  # the two rounds really differ
    if base.has_batch_stats:
        # Client 1 has a single example: its only batch is skipped, its update is exactly zero.
        idx, mask = schedules[0]
        assert mask[1].sum() == 1
        assert np.all(refs[0][1] == 0.0)
        assert np.any(refs[0][0] != 0.0)


def test_auto_measures_and_bad_strategy():
    model = models.get("mlp", 3, (2, 2, 1))
    cfg = training.LocalConfig(0.1, 0.0, 0.0, None, 3)
    variables = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(30, 2, 2, 1)).astype(np.float32))
    Y = jnp.asarray(rng.integers(0, 3, size=30).astype(np.int32))
    idx, mask = _schedule(rng, 8, 3, 4, 30)
    auto = training.make_client_updates(model, cfg)
    assert auto.strategy == "auto"
    U, _ = auto(variables, X, Y, idx, mask)
    est = auto.estimates
    assert set(est) == {"packed", "steps"} and all(v > 0 for v in est.values())
    assert auto.strategy == training.choose_strategy(est) in ("packed", "steps")
    ref, _ = training.make_client_updates(model, cfg, auto.strategy)(variables, X, Y, idx, mask)
    np.testing.assert_array_equal(np.asarray(U), np.asarray(ref))
    # The choice: the fastest, but the one-program "packed" within 10% of it.
    assert training.choose_strategy({"packed": 1.05, "steps": 1.0}) == "packed"
    assert training.choose_strategy({"packed": 2.0, "steps": 1.0}) == "steps"
    with pytest.raises(ValueError, match="strategy"):
        training.make_client_updates(model, cfg, "pmap")
    with pytest.raises(ValueError, match="lanes"):
        training.make_client_updates(model, cfg, "packed", lanes=0)
    cu = training.make_client_updates(model, cfg, "steps")
    with pytest.raises(ValueError, match=r"\[n, S, B\]"):
        cu(variables, jnp.zeros((4, 2, 2, 1)), jnp.zeros(4, jnp.int32),
           np.zeros((2, 3), np.int32), np.ones((2, 3), bool))


def test_choose_lanes():
    steps = np.array([[5, 3, 3, 2, 2, 1, 4, 4, 6, 2, 3, 5]])
    L, T, padded = training.choose_lanes(steps, 12)
    assert L == training.default_lanes(12) == (2 if jax.default_backend() == "cpu" else 6)
    assert T == training.makespans(steps, L).max()
    assert padded == pytest.approx(1 - 40 / (L * T))
    assert training.choose_lanes(steps, 12, lanes=12)[:2] == (12, 6)
    assert training.choose_lanes(steps, 12, lanes=1)[1:] == (40, 0.0)
    # One huge client: the default lanes would idle, so they are halved down to what packs well.
    skew = np.array([[40] + [1] * 39])
    assert training.choose_lanes(skew, 40)[0] < training.default_lanes(40)
    assert training.choose_lanes(skew, 40)[2] <= training.MAX_PADDED_FRACTION
    assert training.default_lanes(50, backend="cpu") == 8 and training.default_lanes(3, backend="cpu") == 1
    assert training.default_lanes(50, 4, backend="cpu") == 4 and training.default_lanes(50, backend="gpu") == 25
    assert training.default_lanes(50, 16, backend="gpu") == 16


# ------------------------------------------------------------------------------------------------
# Evaluation.


def _np_mlp_logits(params, x):
    h = np.maximum(x.reshape(len(x), -1) @ np.asarray(params["fc1"]["kernel"], np.float64)
                   + np.asarray(params["fc1"]["bias"], np.float64), 0.0)
    return h @ np.asarray(params["fc2"]["kernel"], np.float64) + np.asarray(params["fc2"]["bias"], np.float64)


@pytest.mark.parametrize("batch_size", [5, 100])
def test_evaluate_matches_numpy(batch_size):
    model = models.get("mlp", 4, (2, 2, 1), hidden=(8,))
    variables = jax.jit(model.init)(jax.random.PRNGKey(4))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(23, 2, 2, 1)).astype(np.float32)  # 23: the last batch of 5 is partial
    logits = _np_mlp_logits(variables["params"], x.astype(np.float64))
    y = logits.argmax(axis=1)
    y[:9] = (y[:9] + 1) % 4  # 9 wrong -> accuracy 14/23
    y = y.astype(np.int32)
    z = logits - logits.max(axis=1, keepdims=True)
    ce = -(z[np.arange(23), y] - np.log(np.exp(z).sum(axis=1)))
    acc, loss = training.make_evaluate(model, batch_size=batch_size)(variables, x, y)
    assert float(acc) == pytest.approx(14 / 23, abs=1e-7)
    np.testing.assert_allclose(float(loss), ce.mean(), rtol=1e-5)


def test_evaluate_rejects_bad_input():
    model = models.get("mlp", 4, (2, 2, 1))
    with pytest.raises(ValueError, match="batch_size"):
        training.make_evaluate(model, batch_size=0)
    ev = training.make_evaluate(model)
    with pytest.raises(ValueError, match="y_test"):
        ev(model.init(jax.random.PRNGKey(0)), np.zeros((3, 2, 2, 1), np.float32), np.zeros(2, np.int32))

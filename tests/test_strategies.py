"""Execution strategies train from one plan and give the same updates; nothing recompiles across
rounds; "auto" is a fixed rule; evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import models
from strike_jax import training
from strike_jax.training import schedule, strategies


def _counting(model):
    """The model with a trace counter: `apply` runs in Python only while jax traces."""
    count = {"n": 0}

    def apply(*args, **kwargs):
        count["n"] += 1
        return model.apply(*args, **kwargs)

    return model._replace(apply=apply), count


def _table(sizes, N, rng):
    """A client index table: client i holds `sizes[i]` distinct samples of `0..N-1`."""
    perm = rng.permutation(N)
    index = np.zeros((len(sizes), max(sizes)), np.int32)
    off = 0
    for i, m in enumerate(sizes):
        index[i, :m] = perm[off:off + m]
        off += m
    return jnp.asarray(index), jnp.asarray(np.asarray(sizes, np.int32))


def _plans(index, counts, B, rounds):
    """The rounds' plans (`schedule.client_batches`, all clients), the one input of every strategy."""
    plan = jax.jit(lambda r: schedule.client_batches(index, counts, 0, r, per_round=index.shape[0], batch_size=B,
                                                     local_epochs=1))
    return [plan(r) for r in range(rounds)]


def _reference_rows(local, variables, X, Y, cb, B, flip):
    """Per client: flatten(local_train(...)) - flatten(variables), one client at a time, on the
    plan's per-client layout."""
    idx, mask = schedule.padded_schedule(cb, batch_size=B, num_steps=int(np.asarray(cb.steps).max()))
    flat0, _ = training.flatten_variables(variables)
    rows = []
    for i in range(idx.shape[0]):
        new, _ = local(variables, X, Y, idx[i], mask[i], flip[i])
        rows.append(np.asarray(training.flatten_variables(new)[0] - flat0))
    return np.stack(rows)


@pytest.mark.parametrize(
    "name,strategies,with_reference",
    [
        ("mlp", [("steps", None), ("loop", None), ("vmap", None), ("vmap", 2), ("packed", 2), ("packed", None),
                 ("map", None)],
         True),
        # BatchNorm in lanes (masked statistics, skipped size-1 batch) against the per-client loop;
        # the per-client program itself is checked against NumPy in test_local_training.py.
        ("small_cnn_bn", [("steps", None), ("packed", 2), ("vmap", 2)], False),
    ],
)
def test_strategies_agree_on_the_plan_and_do_not_recompile(name, strategies, with_reference):
    base = models.get(name, 5, (4, 4, 1))
    model, traces = _counting(base)
    cfg = training.LocalConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, clip_norm=2.0, num_classes=5)
    variables = jax.jit(base.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    N, B = 40, 4
    # Sizes: a partial last batch (11), a client with one example (a skipped batch for BatchNorm), 7.
    index, counts = _table([11, 1, 7], N, rng)
    n = 3
    X = jnp.asarray(rng.normal(size=(N, 4, 4, 1)).astype(np.float32))
    Y = jnp.asarray(rng.integers(0, 5, size=N).astype(np.int32))
    plans = _plans(index, counts, B, 2)
    flips = [np.array([False, True, False]), np.array([True, False, True])]
    refs = ref_stats = None
    if with_reference:
        local = jax.jit(training.make_local_train(base, cfg))
        refs = [_reference_rows(local, variables, X, Y, cb, B, flip) for cb, flip in zip(plans, flips)]
    d = models.num_params(base) + models.num_batch_stats(base)
    for strategy, chunk in strategies:
        cu = training.make_plan_updates(model, cfg, strategy, batch_size=B, lanes=chunk)
        assert cu.strategy == strategy
        outs, stats_r = [], []
        for r, (cb, flip) in enumerate(zip(plans, flips)):
            U, stats = cu(variables, X, Y, cb, flip)
            if r == 0:
                after_first = traces["n"]
            assert U.shape == (n, d) and U.dtype == jnp.float32
            assert stats.loss.shape == stats.num_steps.shape == stats.num_examples.shape == (n,)
            outs.append(np.asarray(U))
            stats_r.append([np.asarray(a) for a in stats])
        # The second round (new plan and flags, same shapes) did not trace anything again.
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
        # Real steps ceil(m / B) and every sample once (BatchNorm skips the one-example batch).
        np.testing.assert_array_equal(stats_r[0][1], [3, 0 if base.has_batch_stats else 1, 2])
        np.testing.assert_array_equal(stats_r[0][2], [11, 0 if base.has_batch_stats else 1, 7])
    assert not np.allclose(refs[0], refs[1])  # the two rounds really differ
    if base.has_batch_stats:
        # Client 1 has a single example: its only batch is skipped, its update is exactly zero.
        assert np.all(refs[0][1] == 0.0)
        assert np.any(refs[0][0] != 0.0)


def test_resolve_auto_is_a_fixed_rule_of_backend_and_model(monkeypatch):
    """"auto" never times anything (a timing would make the strategy, hence the numbers, depend on the
    machine's load): the measurement and every clock are off limits while it resolves."""
    def no_timing(*a, **k):
        raise AssertionError("resolve_auto timed something")

    monkeypatch.setattr(strategies, "_per_step_times", no_timing)
    monkeypatch.setattr(strategies, "measure_strategies", no_timing)
    monkeypatch.setattr(strategies.time, "perf_counter", no_timing)
    shapes = dict(d=101_770, input_size=784, batch_size=64, lanes=8)
    # experiments/results/bench_strategies_{cpu,gpu}.md
    assert training.resolve_auto(platform="cpu", model="mlp", **shapes) == "packed"
    for conv in ("small_cnn", "femnist_cnn", "leaf_cnn", "alexnet_cifar", "resnet18", "small_cnn_bn"):
        assert training.resolve_auto(platform="cpu", model=conv, **shapes) == "steps", conv
    for platform in ("gpu", "cuda", "tpu"):
        for m in ("mlp", "alexnet_cifar", "small_cnn"):
            assert training.resolve_auto(platform=platform, model=m, **shapes) == "packed"
    assert training.resolve_auto(platform="cpu", model="digits_mlp", d=9_610, input_size=64, batch_size=32,
                                 lanes=1) == "packed"
    # Every client the same number of steps (bench_scale_cpu_fmnist.md): the per-client layout on a
    # CPU for models without convolutions; convolutions and accelerators keep their rule.
    assert training.resolve_auto(platform="cpu", model="mlp", uniform_steps=True, **shapes) == "vmap"
    assert training.resolve_auto(platform="cpu", model="small_cnn", uniform_steps=True, **shapes) == "steps"
    assert training.resolve_auto(platform="gpu", model="mlp", uniform_steps=True, **shapes) == "packed"


def test_vmap_layout_chunks_and_padding():
    steps = np.array([[1, 1, 1, 1, 1], [2, 1, 0, 1, 1]])
    C, T, padded = training.vmap_layout(steps, 5)
    assert (C, T) == (5, 2) and padded == pytest.approx(1 - 10 / (5 * 1 + 5 * 2))
    assert training.vmap_layout(steps[:1], 5)[2] == 0.0
    assert training.client_chunk(10_000, max_lanes=1_800) == 1_024  # a power of two below the memory bound
    assert training.client_chunk(10, max_lanes=1_800) == 10 and training.client_chunk(10, lanes=3) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(platform="npu"), r"^platform='npu' is not allowed; allowed: 'cpu', 'gpu'"),
    (dict(model="vgg"), r"^model='vgg' is not allowed; allowed: femnist_cnn"),
    (dict(d=0), r"^d=0 is not allowed; allowed: an integer >= 1\.$"),
    (dict(batch_size=2.5), r"^batch_size=2\.5 is not allowed"),
    (dict(lanes=True), r"^lanes=True is not allowed"),
])
def test_resolve_auto_rejects_bad_input_in_one_line(kwargs, match):
    args = dict(platform="cpu", model="mlp", d=10, input_size=4, batch_size=2, lanes=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        training.resolve_auto(**args)


def test_measurement_is_an_explicit_opt_in(monkeypatch):
    """`measure_strategies` scales per-step times to the round; `choose_strategy` keeps the one-program
    "packed" within 10% of the fastest."""
    calls = []

    def fake(model, cfg, x, y, batch_size, lanes, repeats):
        calls.append((batch_size, lanes))
        return {"packed": 0.5, "steps": 0.01}

    monkeypatch.setattr(strategies, "_per_step_times", fake)
    monkeypatch.setattr(strategies, "_MEASURED", {})
    from strike_jax import compile_cache

    monkeypatch.setattr(compile_cache, "load_measurement", lambda key: None)
    monkeypatch.setattr(compile_cache, "store_measurement", lambda key, value: None)
    model = models.get("mlp", 3, (2, 2, 1))
    cfg = training.LocalConfig(0.1, 0.0, 0.0, None, 3)
    x, y = np.zeros((30, 2, 2, 1), np.float32), np.zeros(30, np.int32)
    est = training.measure_strategies(model, cfg, x, y, batch_size=4, lanes=2, lane_steps=6, total_steps=12)
    assert est == {"packed": 3.0, "steps": pytest.approx(0.12)} and calls == [(4, 2)]
    training.measure_strategies(model, cfg, x, y, batch_size=4, lanes=2, lane_steps=6, total_steps=12)
    assert len(calls) == 1  # cached per shapes
    assert training.choose_strategy(est) == "steps"
    assert training.choose_strategy({"packed": 1.05, "steps": 1.0}) == "packed"
    assert training.choose_strategy({"packed": 2.0, "steps": 1.0}) == "steps"


def test_bad_strategies_and_schedules():
    model = models.get("mlp", 3, (2, 2, 1))
    cfg = training.LocalConfig(0.1, 0.0, 0.0, None, 3)
    variables = model.init(jax.random.PRNGKey(0))
    for device in training.DEVICE_STRATEGIES + ("auto",):
        with pytest.raises(ValueError, match=rf"^strategy='{device}' is not allowed here; allowed: 'steps', 'loop'"):
            training.make_client_updates(model, cfg, device)
    with pytest.raises(ValueError, match=r"^strategy='pmap' is not allowed; allowed: 'packed'"):
        training.make_plan_updates(model, cfg, "pmap", batch_size=4)
    with pytest.raises(ValueError, match=r"^lanes=0 is not allowed"):
        training.make_plan_updates(model, cfg, "packed", batch_size=4, lanes=0)
    with pytest.raises(ValueError, match=r"^batch_size=0 is not allowed"):
        training.make_plan_updates(model, cfg, "steps", batch_size=0)
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

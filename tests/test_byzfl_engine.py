"""ByzFL's runs on the engine (issue 22, items 2-3): ByzFL's partitions from a `Config`, the validation
hold-out and its accuracy, the evaluation at round 0, pre-aggregators in the given order, ByzFL's random
horizontal flip of the training images. Small: digits, an MLP, a few rounds."""

from __future__ import annotations

import numpy as np
import pytest

from strike_jax import byzfl
from strike_jax import data as data_lib
from strike_jax.config import Config
from strike_jax.data import partition as P
from strike_jax.errors import InputError
from strike_jax.simulation import components


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=6, clients_per_round=6, rounds=2, batch_size=16,
                partition="iid", seed=3, strategy="packed", algorithm="dsgd", momentum=0.9, server_lr=0.5,
                attack="none", defence="mean", byzantine_ratio=0.0, max_test_samples=64)
    base.update(overrides)
    return Config(**base)


def _spec(dd, **bc):
    cfg = {"benchmark_config": {"nb_steps": 5, "f": 2, "nb_honest_clients": 4, "data_distribution_seed": 3,
                                "data_distribution": dd, **bc},
           "aggregator": {"name": "TrMean"}, "attack": {"name": "SignFlipping"}, "evaluation_and_results": {}}
    spec, = byzfl.expand(cfg)
    return spec


# ------------------------------------------------------------------------------------ partitions


@pytest.mark.parametrize("dd,kind,changes", [
    ({"name": "gamma_similarity_niid", "distribution_parameter": 0.5}, "gamma_similarity_niid", {"gamma": 0.5}),
    ({"name": "extreme_niid"}, "extreme_niid", {}),
])
def test_byzfl_partitions_from_a_config_equal_split_clients(dd, kind, changes):
    ds = components.load_dataset(tiny())
    spec = _spec(dd, size_train_set=1.0)
    cfg = tiny(partition=kind, num_clients=6, byzantine_ratio=2 / 6, attack="signflip", byzantine_data=False,
               data_seed=3, **changes)
    part = components.make_partition(cfg, ds)
    want, val = byzfl.split_clients(spec, ds.y_train)
    assert val.size == 0 and part.num_clients == 6
    # The Byzantine clients 0, 1 hold nothing; the honest ones exactly ByzFL's split.
    assert [a.size for a in part.indices[:2]] == [0, 0]
    assert [a.tolist() for a in part.indices[2:]] == [a.tolist() for a in want.indices]
    assert np.array_equal(np.sort(np.concatenate(part.indices)), np.arange(len(ds.y_train)))
    if kind == "extreme_niid":  # sorted by label: each honest client holds few classes
        assert max(len(np.unique(ds.y_train[a])) for a in part.indices[2:]) <= 4


def test_gamma_interpolates_and_is_validated():
    ds = components.load_dataset(tiny())
    classes = [np.mean([len(np.unique(ds.y_train[a])) for a in components.make_partition(
        tiny(partition="gamma_similarity_niid", gamma=g), ds).indices]) for g in (0.0, 1.0)]
    assert classes[0] < 4 and classes[1] == 10
    for g in (-0.1, 1.5):
        with pytest.raises(InputError, match=r"Config.gamma=.* need 0 <= gamma <= 1"):
            tiny(gamma=g)


def test_the_legacy_partitions_are_unchanged():
    # No hold-out: the split every run made before (positions over the kept samples, from the seed).
    ds = components.load_dataset(tiny())
    for cfg, want in ((tiny(partition="iid"), P.iid(len(ds.y_train), 6, 3)),
                      (tiny(partition="dirichlet", beta=1.0), P.dirichlet(ds.y_train, 6, 1.0, 3))):
        got = components.make_partition(cfg, ds)
        assert [a.tolist() for a in got.indices] == [a.tolist() for a in want.indices]


# ------------------------------------------------------------------------------------ validation


def _final_w(run_dir) -> np.ndarray:
    import os

    from strike_jax.simulation import store

    with np.load(os.path.join(run_dir, store.CHECKPOINT)) as z:
        return np.asarray(z["w"])


def _accuracy_by_hand(cfg: Config, w: np.ndarray, idx: np.ndarray) -> float:
    import jax.numpy as jnp

    from strike_jax import training

    ds = components.load_dataset(cfg)
    model = components.make_model(cfg, ds)
    _, unravel = training.flatten_variables(components.init_variables(model, cfg.seed))
    logits, _ = model.apply(unravel(jnp.asarray(w)), jnp.asarray(ds.x_train[idx]), False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == ds.y_train[idx]))


# One validation config for these tests (the round -1 test too), so they share compiled programs.
def _val(**changes) -> Config:
    return tiny(validation_fraction=0.2, **changes)


@pytest.mark.parametrize("strategy", ["packed", "steps"])
def test_validation_accuracy_is_the_global_models_on_the_hold_out(tmp_path, strategy):
    from strike_jax import simulate

    cfg = _val(strategy=strategy)
    ds = components.load_dataset(cfg)
    part, val = components.make_split(cfg, ds)
    assert val.size == len(ds.y_train) - int(0.8 * len(ds.y_train))
    assert not np.intersect1d(np.concatenate(part.indices), val).size  # held out from every client
    assert np.array_equal(np.sort(np.concatenate(list(part.indices) + [val])), np.arange(len(ds.y_train)))
    res = simulate(cfg, run_dir=str(tmp_path))
    last = res["rounds"][-1]
    assert last["val_accuracy"] == pytest.approx(_accuracy_by_hand(cfg, _final_w(tmp_path), val), abs=1e-6)
    assert res["final_val_accuracy"] == last["val_accuracy"]
    assert res["best_val_accuracy"] == max(h["val_accuracy"] for h in res["rounds"])
    assert all("val_accuracy" in h and "val_loss" in h for h in res["rounds"])
    # ByzFL's kinds hold out the same way (split_clients agrees: the first test above).
    gp, gv = components.make_split(_val(partition="gamma_similarity_niid", gamma=0.5), ds)
    assert gv.size == val.size and not np.intersect1d(np.concatenate(gp.indices), gv).size


def test_validation_in_a_batch_equals_each_run_alone():
    from strike_jax import simulate, simulate_many

    cfgs = [_val(data_seed=s) for s in (1, 2)]
    together = simulate_many(cfgs)
    for c, r in zip(cfgs, together):
        alone = simulate(c)
        assert [h["val_accuracy"] for h in r["rounds"]] == [h["val_accuracy"] for h in alone["rounds"]]
        assert r["batch"]["runs"] == 2


def test_no_validation_keeps_the_history():
    from strike_jax import simulate

    res = simulate(tiny())
    assert not any(k.startswith("val_") for h in res["rounds"] for k in h)
    assert "best_val_accuracy" not in res
    with pytest.raises(InputError, match="validation_fraction"):
        tiny(validation_fraction=1.0)


# ------------------------------------------------------------------------------------ round -1


def _test_accuracy_by_hand(cfg: Config, w: np.ndarray) -> float:
    import jax.numpy as jnp

    from strike_jax import training

    ds = components.load_dataset(cfg)
    model = components.make_model(cfg, ds)
    _, unravel = training.flatten_variables(components.init_variables(model, cfg.seed))
    x, y = ds.x_test[:cfg.max_test_samples], ds.y_test[:cfg.max_test_samples]
    logits, _ = model.apply(unravel(jnp.asarray(w)), jnp.asarray(x), False)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == y))


def test_eval_at_start_records_the_initial_model_and_survives_a_resume(tmp_path):
    from strike_jax import simulate, training

    cfg = _val(eval_at_start=True, rounds=3)
    ds = components.load_dataset(cfg)
    w0 = np.asarray(training.flatten_variables(components.init_variables(components.make_model(cfg, ds),
                                                                         cfg.seed))[0])
    whole = simulate(cfg)
    first = whole["rounds"][0]
    assert first["round"] == -1 and [h["round"] for h in whole["rounds"]] == [-1, 0, 1, 2]
    assert first["accuracy"] == pytest.approx(_test_accuracy_by_hand(cfg, w0), abs=1e-6)
    val = components.make_split(cfg, ds)[1]
    assert first["val_accuracy"] == pytest.approx(_accuracy_by_hand(cfg, w0, val), abs=1e-6)
    assert whole["completed_rounds"] == 3 and whole["finished"]
    # Stopped after one round and resumed: round -1 once, from the checkpoint, the same numbers.
    simulate(cfg, run_dir=str(tmp_path), stop_after=1, checkpoint_every=1)
    resumed = simulate(cfg, run_dir=str(tmp_path))
    assert [h["round"] for h in resumed["rounds"]] == [-1, 0, 1, 2]
    for a, b in zip(whole["rounds"], resumed["rounds"]):
        assert {k: a[k] for k in ("accuracy", "val_accuracy") if k in a} == \
            {k: b[k] for k in ("accuracy", "val_accuracy") if k in b}
    # Without it the history starts at round 0 (eval_at_start is a host-loop number: same program).
    assert simulate(cfg.replace(eval_at_start=False))["rounds"][0]["round"] == 0


def test_init_seed_draws_the_initial_model_apart_from_the_training_seed():
    """ByzFL's training seeds share the data seed's initial model: `init_seed` gives the initial
    model its own seed, per run inside a batch."""
    from strike_jax import simulate_many, training

    cfg = _val(eval_at_start=True, rounds=1)
    model = components.make_model(cfg, components.load_dataset(cfg))

    def w0(seed):
        return np.asarray(training.flatten_variables(components.init_variables(model, seed))[0])

    runs = [cfg.replace(seed=3, init_seed=7), cfg.replace(seed=4, init_seed=7), cfg.replace(seed=3)]
    assert components.init_seed(runs[0]) == 7 and components.init_seed(runs[2]) == 3
    first = [r["rounds"][0] for r in simulate_many(runs)]
    assert all(h["round"] == -1 for h in first)
    assert not np.array_equal(w0(7), w0(3))
    for h, seed in zip(first, (7, 7, 3)):
        assert h["accuracy"] == pytest.approx(_test_accuracy_by_hand(cfg, w0(seed)), abs=1e-6)
    with pytest.raises(InputError, match="init_seed"):
        cfg.replace(init_seed=-1)


# ------------------------------------------------------------------------ pre-aggregation order


def test_given_order_is_the_stages_composed_by_hand_in_that_order():
    import jax
    import jax.numpy as jnp

    from strike_jax import stages

    pre = ("bucketing", "nnm")
    cfg = tiny(attack="signflip", byzantine_ratio=1 / 6, defence="median", preaggregation=pre,
               preaggregation_order="given", preaggregation_params={"bucketing": {"s": 2}})
    assert cfg.preaggregation == pre and tiny(preaggregation=pre).preaggregation == ("nnm", "bucketing")
    U = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    mask = jnp.arange(6) < 1
    key = jax.random.PRNGKey(7)
    ctx = stages.RoundContext(mask, 1, key)

    def run(config):
        pipe = components.make_pipeline(config)
        return np.asarray(pipe.update(U, pipe.init(U), ctx)[0])

    # By hand: the chain's keys (attack: fold_in(key, 0); the three aggregation stages split fold_in(key, 1)).
    parts = [stages.get("attack", "signflip"), stages.get("preaggregator", "bucketing", s=2),
             stages.get("preaggregator", "nnm"), stages.get("rule", "median")]
    x, st, c = parts[0].update(U, parts[0].init(U), ctx._replace(key=jax.random.fold_in(key, 0)))
    for stage, k in zip(parts[1:], jax.random.split(jax.random.fold_in(key, 1), 3)):
        x, st, c = stage.update(x, stage.init(x), c._replace(key=k))
    np.testing.assert_allclose(run(cfg), np.asarray(x), rtol=1e-6, atol=1e-7)
    assert not np.allclose(run(cfg), run(cfg.replace(preaggregation_order="spec")))
    with pytest.raises(InputError, match="preaggregation_order"):
        tiny(preaggregation_order="byzfl")


def test_given_order_runs_in_the_simulation():
    import jax
    import jax.numpy as jnp

    from strike_jax import simulate, stages
    from strike_jax.simulation.batch import Grid

    cfg = tiny(attack="signflip", byzantine_ratio=1 / 6, defence="median", preaggregation=("bucketing", "nnm"),
               preaggregation_order="given", byzantine_data=False, rounds=2)
    # The batch's grid pipeline keeps the order (and equals the run's own pipeline).
    grid = Grid([cfg], None).server_grid
    U = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    ctx = stages.RoundContext(jnp.arange(6) < 1, 1, jax.random.PRNGKey(2))
    pipe = components.make_pipeline(cfg, inject=True)
    at = grid.at(0, 0)
    assert [p.name for p in at.parts[1:3]] == ["bucketing", "nnm"]
    np.testing.assert_allclose(np.asarray(at.update(U, grid.init(U), ctx)[0]),
                               np.asarray(pipe.update(U, pipe.init(U), ctx)[0]), rtol=1e-6)
    res = simulate(cfg)
    assert all(h["finite"] for h in res["rounds"]) and res["completed_rounds"] == 2


# ------------------------------------------------------------------------------------ hflip


def test_flip_bits_mark_and_hflip():
    import jax
    import jax.numpy as jnp

    from strike_jax.data import augment

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(40))
    bits = np.asarray(augment.flip_bits(keys, 64))
    assert 0.4 < bits.mean() < 0.6 and len({r.tobytes() for r in bits}) == 40  # fair, one stream per key
    np.testing.assert_array_equal(np.asarray(augment.flip_bits(keys, 16)), bits[:, :16])  # padding-free
    idx = jnp.arange(64, dtype=jnp.int32)
    back, flip = augment.unmark(augment.mark(idx, bits[0]))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(idx))
    np.testing.assert_array_equal(np.asarray(flip), bits[0])
    x = np.random.default_rng(0).normal(size=(4, 3, 5, 2)).astype(np.float32)
    out = np.asarray(augment.hflip(x, jnp.array([True, False, True, False])))
    np.testing.assert_array_equal(out[[0, 2]], x[[0, 2], :, ::-1])
    np.testing.assert_array_equal(out[[1, 3]], x[[1, 3]])
    assert byzfl.random_hflip is augment.random_hflip
    with pytest.raises(ValueError, match=r"must be \[B, H, W, C\]"):
        augment.hflip(x[0], jnp.array([True]))


def test_the_plan_draws_the_flips_and_the_step_applies_them():
    import jax
    import jax.numpy as jnp

    from strike_jax import training
    from strike_jax.data import augment
    from strike_jax.training import schedule

    cfg = tiny()
    ds = components.load_dataset(cfg)
    table = data_lib.make_client_data(components.make_partition(cfg, ds).indices, 16)
    plan = jax.jit(schedule.client_batches, static_argnames=("per_round", "batch_size", "local_epochs", "augment"))
    args = (jnp.asarray(table.index), jnp.asarray(table.counts), 3, 1)
    plain = plan(*args, per_round=6, batch_size=16, local_epochs=1)
    marked = plan(*args, per_round=6, batch_size=16, local_epochs=1, augment=True)
    back, flip = augment.unmark(marked.order)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(plain.order))  # the same samples, same order
    assert 0.3 < float(np.asarray(flip).mean()) < 0.7
    other = plan(jnp.asarray(table.index), jnp.asarray(table.counts), 3, 2, per_round=6, batch_size=16,
                 local_epochs=1, augment=True)
    assert not np.array_equal(np.asarray(augment.unmark(other.order)[1]), np.asarray(flip))  # new round, new flips
    # The local step on marked indices is the plain step on the mirrored images.
    model = components.make_model(cfg, ds)
    variables = components.init_variables(model, 0)
    lc = training.LocalConfig(0.1, 0.0, 0.0, None, 10)
    step_aug = training.make_local_step(model, lc._replace(augmentation=("hflip",))).step
    step = training.make_local_step(model, lc).step
    idx, fl = np.asarray(back[0, 0, :16]), np.asarray(flip[0, 0, :16])
    x = np.asarray(ds.x_train).copy()
    mirrored = x[idx].copy()
    mirrored[fl] = mirrored[fl][:, :, ::-1]
    mask = jnp.ones(16, bool)
    opt = training.make_local_step(model, lc).init_opt(variables["params"])
    a = step_aug(variables["params"], {}, opt, jnp.asarray(x), jnp.asarray(ds.y_train), marked.order[0, 0, :16],
                 mask, False)[0]
    b = step(variables["params"], {}, opt, jnp.asarray(mirrored), jnp.asarray(ds.y_train[idx]), jnp.arange(16),
             mask, False)[0]
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6), a, b)
    c = step(variables["params"], {}, opt, jnp.asarray(x), jnp.asarray(ds.y_train), jnp.asarray(idx), mask, False)[0]
    assert fl.any() and not np.allclose(np.asarray(jax.tree_util.tree_leaves(a)[0]),
                                        np.asarray(jax.tree_util.tree_leaves(c)[0]))


def test_hflip_is_the_same_in_every_strategy_and_batch():
    from strike_jax import simulate, simulate_many

    cfg = tiny(augmentation=("hflip",))
    keys = ("aggregate_norm", "train_loss", "accuracy")
    packed = simulate(cfg)
    steps = simulate(cfg.replace(strategy="steps"))
    for a, b in zip(packed["rounds"], steps["rounds"]):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6)
    batch = simulate_many([cfg, cfg.replace(seed=4)])
    assert batch[0]["batch"]["runs"] == 2
    assert [h["aggregate_norm"] for h in batch[0]["rounds"]] == pytest.approx(
        [h["aggregate_norm"] for h in packed["rounds"]], rel=1e-5)
    plain = simulate(cfg.replace(augmentation=()))  # tiny(): the program of test_no_validation_keeps_the_history
    assert [h["aggregate_norm"] for h in plain["rounds"]] != pytest.approx(
        [h["aggregate_norm"] for h in packed["rounds"]], rel=1e-5)


def test_hflip_needs_images():
    import types

    with pytest.raises(InputError, match="augmentation"):
        tiny(augmentation=("crop",))
    flat = types.SimpleNamespace(x_train=np.zeros((10, 16), np.float32))
    with pytest.raises(InputError, match=r"augmentation=\('hflip',\) is not allowed with dataset='digits'.*\(16,\)"):
        components.check_augmentation(tiny(augmentation=("hflip",)), flat)
    components.check_augmentation(tiny(), flat)  # no augmentation: any data
    components.check_augmentation(tiny(augmentation=("hflip",)), components.load_dataset(tiny()))


# ------------------------------------------------------------------------------- LabelFlipping


def _labelflip(**changes) -> Config:
    return tiny(attack="labelflip", attack_params={"mode": "honest_mean"}, byzantine_ratio=2 / 6,
                byzantine_data=False, clients_per_round=5, rounds=2, **changes)


def _flipped_mean_by_hand(cfg: Config, round_index: int = 0) -> np.ndarray:
    """ByzFL's LabelFlipping vector at the initial model: the mean over the round's honest clients of
    their gradient (eval mode, no momentum) on their batch with labels C - 1 - y."""
    import jax
    import jax.numpy as jnp
    import optax

    from strike_jax import training
    from strike_jax.training import schedule

    ds = components.load_dataset(cfg)
    model = components.make_model(cfg, ds)
    w0, unravel = training.flatten_variables(components.init_variables(model, cfg.seed))
    table = data_lib.make_client_data(components.make_partition(cfg, ds).indices, cfg.batch_size)
    cb = jax.jit(schedule.client_batches, static_argnames=("per_round", "batch_size", "local_epochs", "max_samples",
                                                           "local_steps"))(
        jnp.asarray(table.index), jnp.asarray(table.counts), cfg.seed, round_index, per_round=cfg.clients_per_round,
        batch_size=cfg.batch_size, local_epochs=1, max_samples=len(ds.y_train), local_steps=1)
    idx, mask = schedule.padded_schedule(cb, batch_size=cfg.batch_size, num_steps=1)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def loss(flat, i, m):
        logits, _ = model.apply(unravel(flat), x[i], False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, 9 - y[i].astype(jnp.int32))
        return jnp.where(m, ce, 0.0).sum() / jnp.maximum(m.sum(), 1)

    honest = [j for j, c in enumerate(np.asarray(cb.clients)) if c >= cfg.num_byzantine]
    grads = [np.asarray(jax.grad(loss)(w0, idx[j, 0], mask[j, 0]), np.float64) for j in honest]
    return np.mean(grads, axis=0)


@pytest.mark.parametrize("strategy", ["packed", "vmap", "steps"])
def test_labelflip_honest_mean_sends_the_honest_clients_flipped_gradient(strategy):
    from strike_jax import simulate

    cfg = _labelflip(strategy=strategy)
    seen = {}
    simulate(cfg, on_updates=lambda r, U, byz, sent: seen.setdefault(r, (np.asarray(byz), np.asarray(sent))))
    byz, sent = seen[0]
    want = _flipped_mean_by_hand(cfg)
    assert byz.sum() >= 1
    for row in sent[byz]:
        np.testing.assert_allclose(row, want, rtol=2e-4, atol=1e-6)
    assert not np.allclose(sent[~byz].mean(0), want, atol=1e-3)  # the honest momenta are not it


def test_labelflip_honest_mean_needs_dsgd():
    from strike_jax import simulate

    with pytest.raises(InputError, match="LabelFlipping.*allowed: algorithm='dsgd'"):
        simulate(_labelflip(algorithm="fedavg", server_lr=1.0))

"""DSGD with worker momentum (issue 22, item 1): `Config(algorithm="dsgd")` against a float64 NumPy
reference, batching, resume, `tolerated_f`, data-less Byzantine clients, `local_steps`."""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reference_aggregators as ref
from strike_jax import data as data_lib
from strike_jax import options, simulate, simulate_many, training
from strike_jax.config import Config
from strike_jax.errors import InputError
from strike_jax.simulation import components, plan, store
from strike_jax.simulation.settings import DEFAULT
from strike_jax.training import schedule

# The plan's batches, jitted (eagerly its sorts take seconds).
client_batches = jax.jit(schedule.client_batches, static_argnames=(
    "per_round", "batch_size", "local_epochs", "max_samples", "include_last", "local_steps", "batch_order"))
METRICS = ("aggregate_norm", "dist_to_honest_mean", "cos_to_honest_mean", "train_loss", "accuracy", "loss")


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=6, clients_per_round=4, rounds=3, batch_size=16,
                partition="dirichlet", beta=1.0, seed=3, strategy="packed", algorithm="dsgd", momentum=0.9,
                server_lr=0.5, server_weight_decay=0.01, lr_milestones=(2,), lr_decay=0.1, attack="none",
                defence="mean", byzantine_ratio=0.0, max_test_samples=64)
    base.update(overrides)
    return Config(**base)


def final_state(run_dir: str) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(os.path.join(run_dir, store.CHECKPOINT)) as z:
        return np.asarray(z["w"]), (np.asarray(z["momentum"]) if "momentum" in z else None)


def reference_dsgd(cfg: Config, rule_f: int = 0):
    """Float64 DSGD of one run (attack "none"): the plan's batches, each sampled client's gradient at
    the global model (`jax.grad` of the mean cross-entropy), `m_i <- b m_i + (1 - b) g_i`, the
    coordinate-wise trimmed mean with `rule_f` (0: the mean), `w <- w - lr_t (agg + wd w)`.
    Returns `(w, momentum [N, d], rows sent per round, gradients per round)`."""
    ds = components.load_dataset(cfg)
    model = components.make_model(cfg, ds)
    w0, unravel = training.flatten_variables(components.init_variables(model, cfg.seed))
    table = data_lib.make_client_data(components.make_partition(cfg, ds).indices, cfg.batch_size)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def loss(flat, idx, mask):
        logits, _ = model.apply(unravel(flat), x[idx], True, mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx].astype(jnp.int32))
        return jnp.where(mask, ce, 0.0).sum() / jnp.maximum(mask.sum(), 1)

    grad = jax.jit(jax.grad(loss))
    w = np.asarray(w0, np.float64)
    m = np.zeros((cfg.num_clients, w.size))
    b, sent, grads = cfg.momentum, [], []
    for r in range(cfg.rounds):
        cb = client_batches(jnp.asarray(table.index), jnp.asarray(table.counts), cfg.seed, r,
                                     per_round=cfg.clients_per_round, batch_size=cfg.batch_size, local_epochs=1,
                                     max_samples=len(ds.y_train), local_steps=1, batch_order=cfg.batch_order)
        idx, mask = schedule.padded_schedule(cb, batch_size=cfg.batch_size, num_steps=1)
        clients = np.asarray(cb.clients)
        grads.append({})
        for j, c in enumerate(clients):
            g = np.asarray(grad(jnp.asarray(w, jnp.float32), idx[j, 0], mask[j, 0]), np.float64)
            m[c] = b * m[c] + (1 - b) * g
            grads[-1][int(c)] = g
        rows = m[clients]
        sent.append(rows.copy())
        agg = ref.trmean(rows, rule_f) if rule_f else rows.mean(axis=0)
        lr = cfg.server_lr * cfg.lr_decay ** sum(r >= t for t in cfg.lr_milestones)
        w = w - lr * (agg + cfg.server_weight_decay * w)
    return w, m, sent, grads


def test_dsgd_equals_the_float64_reference(tmp_path):
    # Partial participation (4 of 6): a client's momentum waits, unchanged, for its next round; a
    # milestone at round 2 decays the server's step.
    cfg = tiny()
    rows = []
    res = simulate(cfg, run_dir=str(tmp_path), on_updates=lambda r, U, byz, sent: rows.append(np.asarray(sent)))
    assert res["finished"] and not res["diverged"]
    w_ref, m_ref, sent_ref, grads = reference_dsgd(cfg)
    w, m = final_state(str(tmp_path))
    for r, (got, want) in enumerate(zip(rows, sent_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"rows sent in round {r}")
    np.testing.assert_allclose(m, m_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
    # The host loop's strategy (per-client training, the same server program) too.
    simulate(cfg.replace(strategy="steps"), run_dir=str(tmp_path / "steps"))
    w_steps, m_steps = final_state(str(tmp_path / "steps"))
    np.testing.assert_allclose(m_steps, m_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w_steps, w_ref, rtol=1e-4, atol=1e-6)
    # The momentum persists: a client sampled in rounds 0 and 1 sends b m + (1 - b) g_1, far from the
    # (1 - b) g_1 of a momentum reset every round.
    both = sorted(set(grads[0]) & set(grads[1]))
    assert both, "the test needs a client sampled twice"
    j = sorted(grads[1]).index(both[0])
    fresh = (1 - cfg.momentum) * grads[1][both[0]]
    assert np.abs(rows[1][j] - fresh).max() > 0.1 * np.abs(rows[1][j]).max()
    np.testing.assert_allclose(rows[1][j] - fresh, cfg.momentum * (1 - cfg.momentum) * grads[0][both[0]],
                               rtol=1e-3, atol=1e-6)


def test_dsgd_in_the_epochs_batch_order_equals_the_float64_reference(tmp_path):
    # Every client every round (the "epochs" order's condition), ~240 images each in batches of 128:
    # round 2 starts each client's second epoch, after a partial last batch.
    cfg = tiny(num_clients=6, clients_per_round=6, batch_size=128, batch_order="epochs")
    simulate(cfg, run_dir=str(tmp_path))
    w_ref, m_ref, _, _ = reference_dsgd(cfg)
    w, m = final_state(str(tmp_path))
    np.testing.assert_allclose(m, m_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
    assert np.abs(w_ref - reference_dsgd(cfg.replace(batch_order="round"))[0]).max() > 1e-4


def test_tolerated_f_reaches_the_rule(tmp_path):
    # No attack (real f = 0); the rule is told f = 1: a trimmed mean dropping a row at each end.
    cfg = tiny(rounds=2, defence="trmean", tolerated_f=1)
    simulate(cfg, run_dir=str(tmp_path))
    w, _ = final_state(str(tmp_path))
    w_told = reference_dsgd(cfg, rule_f=1)[0]
    w_mean = reference_dsgd(cfg, rule_f=0)[0]
    assert np.abs(w_told - w_mean).max() > 1e-4, "the test needs f to matter"
    np.testing.assert_allclose(w, w_told, rtol=1e-4, atol=1e-6)


def test_tolerated_f_is_checked_against_the_rules_limit_instead_of_the_real_f():
    # 1 real Byzantine client of 6; trmean tolerates f <= 2 of 6 (n > 2f)... the told f is checked.
    with pytest.raises(InputError, match="f=3|f = 3|3"):
        components.check_config(tiny(num_clients=6, clients_per_round=6, defence="trmean", attack="signflip",
                                     byzantine_ratio=0.1, tolerated_f=3))
    components.check_config(tiny(num_clients=6, clients_per_round=6, defence="trmean", attack="signflip",
                                 byzantine_ratio=0.4, tolerated_f=2))


def test_batch_of_runs_equals_each_alone():
    configs = [tiny(seed=0, momentum=0.9, server_lr=0.5, defence="trmean"),
               tiny(seed=1, momentum=0.5, server_lr=0.2, server_weight_decay=0.0, lr_milestones=(1, 2),
                    defence="trmean", tolerated_f=1),
               tiny(seed=0, momentum=0.0, server_lr=1.0, lr_milestones=(), data_seed=7, defence="trmean")]
    batched = simulate_many(configs)
    assert [r["batch"]["runs"] for r in batched] == [3, 3, 3]
    for cfg, res in zip(configs, batched):
        alone = simulate(cfg)
        assert len(res["rounds"]) == len(alone["rounds"]) == cfg.rounds
        for ra, rb in zip(res["rounds"], alone["rounds"]):
            for k in METRICS:
                if ra.get(k) is not None:
                    np.testing.assert_allclose(ra[k], rb[k], rtol=1e-4, atol=1e-6, err_msg=f"{k} {ra['round']}")


def test_resume_is_exact(tmp_path):
    cfg = tiny(rounds=4, attack="signflip", byzantine_ratio=0.1, defence="trmean", lr_milestones=(1, 3))
    straight = simulate(cfg, run_dir=str(tmp_path / "straight"), checkpoint_every=100)
    first = simulate(cfg, run_dir=str(tmp_path / "resumed"), stop_after=2)
    assert first["completed_rounds"] == 2 and not first["finished"]
    _, m_mid = final_state(str(tmp_path / "resumed"))
    assert m_mid is not None and m_mid.shape[0] == cfg.num_clients and np.abs(m_mid).sum() > 0
    resumed = simulate(cfg, run_dir=str(tmp_path / "resumed"))
    assert resumed["completed_rounds"] == 4
    for ra, rb in zip(straight["rounds"], resumed["rounds"]):
        for k in METRICS:
            if ra.get(k) is not None:
                assert ra[k] == rb[k], (k, ra["round"])
    w_a, m_a = final_state(str(tmp_path / "straight"))
    w_b, m_b = final_state(str(tmp_path / "resumed"))
    np.testing.assert_array_equal(w_a, w_b)
    np.testing.assert_array_equal(m_a, m_b)


def test_a_checkpoint_holding_other_momenta_is_refused(tmp_path):
    cfg = tiny(rounds=2)
    simulate(cfg, run_dir=str(tmp_path), stop_after=1)
    path = os.path.join(str(tmp_path), store.CHECKPOINT)
    w, m = final_state(str(tmp_path))
    stage_state = components.make_pipeline(cfg, inject=True).init(
        jax.ShapeDtypeStruct((cfg.clients_per_round, w.size), jnp.float32))
    assert store.load_checkpoint(path, cfg, stage_state, w, momentum_like=m)[-1].shape == m.shape
    for like in (None, np.zeros((cfg.num_clients + 1, w.size), np.float32)):
        with pytest.raises(store.CheckpointError, match="momentum"):
            store.load_checkpoint(path, cfg, stage_state, w, momentum_like=like)


def test_byzantine_clients_without_data():
    cfg = tiny(num_clients=8, clients_per_round=8, byzantine_ratio=0.25, attack="signflip", defence="trmean",
               byzantine_data=False, partition="iid", data_seed=5)
    ds = components.load_dataset(cfg)
    part = components.make_partition(cfg, ds)
    f = cfg.num_byzantine
    assert f == 2 and [len(a) for a in part.indices[:f]] == [0, 0]
    honest = data_lib.iid(len(ds.y_train), cfg.num_clients - f, seed=5)  # only the honest are partitioned
    for a, b in zip(part.indices[f:], honest.indices):
        np.testing.assert_array_equal(a, b)
    run = plan.Run(cfg, None, [])
    plan.prepare(run, DEFAULT)
    assert run.steps[:, :f].sum() == 0 and (run.steps[:, f:] == 1).all()
    res = simulate(cfg)
    assert res["finished"] and not res["diverged"] and res["rounds"][-1]["num_byzantine"] == f
    # The data seed, not the training seed, draws the split.
    assert components.make_partition(cfg.replace(seed=9), ds).indices[f].tolist() == part.indices[f].tolist()
    assert components.make_partition(cfg.replace(data_seed=6), ds).indices[f].tolist() != part.indices[f].tolist()


def test_a_data_level_attack_needs_byzantine_data():
    with pytest.raises(InputError, match="byzantine_data=False"):
        components.check_config(tiny(num_clients=6, clients_per_round=6, byzantine_ratio=0.2, attack="labelflip",
                                     byzantine_data=False))


def test_local_steps_draw_the_batches_of_epochs():
    # A client of at most B samples takes one step an epoch, so local_steps=3 trains on the batches
    # of local_epochs=3 (the same epoch orders, keyed by (client, epoch)); a client without data
    # takes no step.
    index = jnp.asarray([[0, 1, 2, 0], [3, 4, 5, 6], [0, 0, 0, 0]], jnp.int32)
    counts = jnp.asarray([3, 4, 0], jnp.int32)
    kw = dict(per_round=3, batch_size=4, max_samples=7)
    a = client_batches(index, counts, 2, 5, local_epochs=1, local_steps=3, **kw)
    b = client_batches(index, counts, 2, 5, local_epochs=3, **kw)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.steps, [3, 3, 0])
    ia, ma = schedule.padded_schedule(a, batch_size=4, num_steps=3)
    ib, mb = schedule.padded_schedule(b, batch_size=4, num_steps=3)
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(np.where(ma, ia, -1), np.where(mb, ib, -1))
    # A client of 4 samples in batches of 2: two steps an epoch, then the next epoch's order.
    c = client_batches(index[1:2], counts[1:2], 2, 5, per_round=1, batch_size=2, local_epochs=1,
                                max_samples=7, local_steps=3)
    ic, mc = schedule.padded_schedule(c, batch_size=2, num_steps=3)
    assert np.asarray(mc).all() and sorted(np.asarray(ic[0, :2]).ravel().tolist()) == [3, 4, 5, 6]
    assert set(np.asarray(ic[0, 2]).tolist()) <= {3, 4, 5, 6}


def test_local_steps_plan_every_client_with_data_the_same_steps():
    cfg = Config(dataset="digits", model="mlp", num_clients=6, clients_per_round=4, rounds=2, batch_size=16,
                 local_steps=3)
    run = plan.Run(cfg, None, [])
    plan.prepare(run, DEFAULT)
    assert (run.steps == 3).all()


@pytest.mark.parametrize("changes, match", [
    (dict(algorithm="sgd"), "algorithm"),
    (dict(algorithm="dsgd", local_steps=2), "local_steps"),
    (dict(local_steps=2, local_epochs=2), "local_epochs"),
    (dict(server_lr=0.5), "server_lr"),
    (dict(algorithm="dsgd", server_lr=0.0), "server_lr"),
    (dict(algorithm="dsgd", lr_milestones=(3, 2)), "lr_milestones"),
    (dict(algorithm="dsgd", lr_decay=0.0), "lr_decay"),
    (dict(tolerated_f=-1), "tolerated_f"),
    (dict(data_seed=-1), "data_seed"),
    (dict(byzantine_data=False), "byzantine_data"),
])
def test_bad_settings_are_one_line_errors(changes, match):
    with pytest.raises(InputError, match=match) as e:
        Config(**changes)
    assert "\n" not in str(e.value)


def test_options_offer_the_new_fields():
    p = argparse.ArgumentParser()
    options.add_config_options(p)
    args = p.parse_args(["--algorithm", "dsgd", "--lr-milestones", "3,5", "--no-byzantine-data", "--attack",
                         "signflip", "--tolerated-f", "1", "--server-lr", "0.5", "--data-seed", "4"])
    cfg = Config(**options.overrides(args))
    assert (cfg.algorithm, cfg.lr_milestones, cfg.byzantine_data, cfg.tolerated_f, cfg.server_lr,
            cfg.data_seed) == ("dsgd", (3, 5), False, 1, 0.5, 4)
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert options.parse_set("lr_milestones=10,20") == ("lr_milestones", (10, 20))
    assert options.parse_grid("lr_milestones=10+20,none").values == ((10, 20), ())


def test_dsgd_takes_one_step_a_round():
    assert Config(algorithm="dsgd").local_steps == 1
    assert Config(algorithm="dsgd") == Config(algorithm="dsgd", local_steps=1)

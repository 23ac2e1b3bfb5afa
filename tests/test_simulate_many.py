"""Runs as a batch: `simulate_many` equals running each config alone, one program per group."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from strike_jax import simulate, simulate_many
from strike_jax.config import Config
from strike_jax.training import MAX_PADDED_FRACTION

TIMING_KEYS = ("time_train_s", "time_server_s", "time_round_s")
METRICS = ("aggregate_norm", "dist_to_honest_mean", "cos_to_honest_mean", "train_loss", "accuracy", "loss")


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=10, clients_per_round=10, rounds=3,
                batch_size=32, partition="dirichlet", beta=0.5, seed=0, strategy="packed",
                attack="strike", defence="median")
    base.update(overrides)
    return Config(**base)


def assert_same_history(a, b, rtol=1e-4, atol=1e-5):
    assert len(a["rounds"]) == len(b["rounds"])
    for ra, rb in zip(a["rounds"], b["rounds"]):
        assert ra["round"] == rb["round"] and ra["n"] == rb["n"]
        assert ra["num_byzantine"] == rb["num_byzantine"] and ra["finite"] == rb["finite"]
        for k in METRICS:
            assert (k in ra) == (k in rb)
            if k in ra and ra[k] is not None:
                np.testing.assert_allclose(ra[k], rb[k], rtol=rtol, atol=atol, err_msg=f"round {ra['round']} {k}")


def test_batch_equals_each_run_alone():
    configs = [tiny(seed=0, attack_params={"nu": 1.0}, byzantine_ratio=0.2),
               tiny(seed=1, attack_params={"nu": 0.5}, byzantine_ratio=0.3),
               tiny(seed=2, attack_params={"nu": 2.0}, byzantine_ratio=0.1, lr=0.05),
               tiny(seed=1, attack_params={"nu": 1.5}, byzantine_ratio=0.0, beta=0.3)]
    batched = simulate_many(configs)
    assert all(r["batch"]["runs"] == 4 for r in batched)
    assert len({tuple(h["num_byzantine"] for h in r["rounds"]) for r in batched}) > 1, "f must differ"
    for cfg, res in zip(configs, batched):
        alone = simulate(cfg)
        assert alone["batch"]["runs"] == 1
        assert_same_history(res, alone)
        assert res["config"] == cfg.to_dict()


def test_groups_by_structure_and_keeps_order():
    configs = [tiny(seed=0, defence="median"), tiny(seed=0, defence="mean"), tiny(seed=1, defence="median"),
               tiny(seed=0, defence="median", attack="lie", attack_params={"z": 1.0})]
    results = simulate_many(configs)
    assert [r["config"]["defence"] for r in results] == ["median", "mean", "median", "median"]
    assert [r["batch"]["runs"] for r in results] == [2, 1, 2, 1]
    assert_same_history(results[2], simulate(configs[2]))


def test_a_group_compiles_once_for_all_its_batches():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    group = [tiny(seed=s, attack_params={"nu": nu}, byzantine_ratio=br)
             for s, nu, br in ((0, 0.5, 0.2), (1, 1.0, 0.3), (2, 1.5, 0.1), (3, 2.0, 0.2))]
    res = simulate_many(group, max_runs_per_program=2)
    assert [r["batch"]["runs"] for r in res] == [2, 2, 2, 2]
    assert [r["batch"]["new_program"] for r in res] == [True, True, False, False]
    # A later sweep over other numbers of the same runs (seeds, hence partitions, kept) compiles
    # nothing, and neither does another defence's group (the training program is shared).
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        compiles.clear()
        again = [c.replace(attack_params={"nu": 0.25}, byzantine_ratio=0.4, lr=0.05, rounds=4) for c in group]
        res = simulate_many(again, max_runs_per_program=2)
    finally:
        jax.monitoring.clear_event_listeners()
    assert all(r["completed_rounds"] == 4 for r in res)
    assert not compiles, f"{len(compiles)} compilations for a batch of an already compiled group"
    other_defence = simulate_many([c.replace(defence="trmean") for c in group], max_runs_per_program=2)
    assert all(r["completed_rounds"] == 3 for r in other_defence)


def test_grid_compiles_each_attack_and_rule_once_and_equals_each_run_alone():
    """An attack x defence grid: one server program holding every attack and rule once (not one
    per pair), one training program; every run equals the same run alone."""
    from strike_jax.simulation import ProgramCache

    attacks, defences = ("mimic", "strike"), ("median", "cclip")  # stateful attack and rule among them
    configs = [tiny(attack=a, defence=d, seed=1) for a in attacks for d in defences]
    cache = ProgramCache()
    grid = simulate_many(configs, programs=cache)
    kinds = [k.kind for k in cache.compiled_keys()]
    assert kinds.count("server") == 1 and kinds.count("train") == 1 and kinds.count("eval") == 1
    server_key = next(k for k in cache.compiled_keys() if k.kind == "server")
    assert [len(b) for b in server_key.branches] == [len(attacks), len(defences)]
    assert all(r["batch"]["grid"] == [len(attacks), len(defences)] for r in grid)
    # Each attack and each rule alone once (the diagonal), through one fresh cache: one training
    # program, a server program per pair.
    alone_cache = ProgramCache()
    for i in range(len(attacks)):
        cfg, res = configs[i * len(defences) + i], grid[i * len(defences) + i]
        assert_same_history(res, simulate_many([cfg], programs=alone_cache)[0])
    # Different pairs give different runs (the index really selects).
    norms = {tuple(h["aggregate_norm"] for h in r["rounds"]) for r in grid}
    assert len(norms) == len(configs)


def test_a_run_checkpointed_in_a_grid_resumes_alone(tmp_path):
    """A checkpoint holds the run's own state (not the grid's), so a run started in a grid resumes
    alone (and the reverse) exactly."""
    configs = [tiny(attack=a, defence=d, rounds=4) for a in ("mimic", "lie") for d in ("cclip", "median")][:3]
    dirs = [str(tmp_path / f"run{i}") for i in range(len(configs))]
    part = simulate_many(configs, run_dirs=dirs, stop_after=2, checkpoint_every=1)
    assert all(p["completed_rounds"] == 2 for p in part)
    resumed = simulate(configs[0], run_dir=dirs[0])
    assert resumed["finished"] and resumed["completed_rounds"] == 4
    assert_same_history(resumed, simulate(configs[0]))


def test_batch_resumes_exactly(tmp_path):
    configs = [tiny(seed=s, attack="mimic", defence="cclip", defence_params={"tau": tau}, rounds=4)
               for s, tau in ((0, 10.0), (1, 5.0))]  # stateful attack and rule, traced tau
    straight = simulate_many(configs)
    dirs = [str(tmp_path / f"run{i}") for i in range(2)]
    part = simulate_many(configs, run_dirs=dirs, stop_after=2, checkpoint_every=1)
    assert all(p["completed_rounds"] == 2 and not p["finished"] for p in part)
    resumed = simulate_many(configs, run_dirs=dirs)
    for a, b in zip(resumed, straight):
        assert a["finished"]
        strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]  # noqa: E731
        assert strip(a["rounds"]) == strip(b["rounds"])
    # Finished runs are returned as stored.
    again = simulate_many(configs, run_dirs=dirs)
    assert [a["rounds"] for a in again] == [r["rounds"] for r in resumed]


@pytest.mark.parametrize("strategy", ["steps", "vmap", "map"])
def test_strategies_give_the_same_run(strategy):
    cfg = tiny(rounds=2, attack="lie", defence="trmean", num_clients=12, clients_per_round=8)
    packed = simulate(cfg)
    other = simulate(cfg.replace(strategy=strategy))
    assert other["batch"]["strategy"] == strategy
    assert_same_history(packed, other, rtol=2e-3, atol=2e-4)


def test_uniform_rounds_resolve_to_vmap_and_match_packed():
    """Every client one step (`local_steps=1`): "auto" picks the per-client layout ("vmap": chunks of
    clients, the first step a batched gradient at the shared model), which matches "packed"; two runs
    batched in it (chunks of 3 rows of 8: the last chunk overlaps) each match themselves alone."""
    cfg = tiny(rounds=2, attack="lie", defence="median", num_clients=12, clients_per_round=8, partition="iid",
               local_steps=1, strategy="auto")
    auto = simulate(cfg)
    assert auto["batch"]["strategy"] == "vmap" and auto["batch"]["padded_fraction"] == 0.0
    assert_same_history(simulate(cfg.replace(strategy="packed")), auto, rtol=2e-3, atol=2e-4)
    configs = [cfg.replace(lanes=3), cfg.replace(lanes=3, seed=1, lr=0.05)]
    batched = simulate_many(configs)
    assert [r["batch"]["runs"] for r in batched] == [2, 2] and batched[0]["batch"]["lanes"] == 3
    for c, res in zip(configs, batched):
        assert_same_history(res, simulate(c))


def test_vmap_rounds_recycle_the_update_matrix(monkeypatch):
    """The "vmap" layout writes each round's matrix into the buffer the previous round's server
    handed back (`training.round.writes_into`): one `[R, n, d]` buffer is allocated for the whole
    run, not one per round, and the numbers equal a run whose loop reads the matrices (which
    allocates a fresh one every round)."""
    from strike_jax.simulation import programs

    cfg = tiny(rounds=3, attack="lie", defence="median", num_clients=12, clients_per_round=8, partition="iid",
               local_steps=1, strategy="vmap")
    allocated = []

    class CountingNumpy:
        def __getattr__(self, name):
            return getattr(jax.numpy, name)

        def zeros(self, shape, *args, **kwargs):
            allocated.append(tuple(shape))
            return jax.numpy.zeros(shape, *args, **kwargs)

    monkeypatch.setattr(programs, "jnp", CountingNumpy())
    recycled = simulate(cfg)
    assert recycled["batch"]["strategy"] == "vmap" and allocated == [(1, 8, allocated[0][2])]
    allocated.clear()
    read = simulate(cfg, on_updates=lambda *a: None)
    assert len(allocated) == 3
    assert_same_history(read, recycled)


def test_host_loop_batch_uses_each_runs_numbers():
    configs = [tiny(strategy="steps", rounds=2, seed=s, lr=lr, momentum=m, attack="lie", attack_params={"z": z})
               for s, lr, m, z in ((0, 0.1, 0.9, 1.5), (1, 0.02, 0.5, 1.0))]
    batched = simulate_many(configs)
    assert [r["batch"]["runs"] for r in batched] == [2, 2]
    for cfg, res in zip(configs, batched):
        assert_same_history(res, simulate(cfg))


def test_padding_is_bounded():
    res = simulate(tiny(rounds=1, num_clients=20, clients_per_round=20))
    assert res["batch"]["strategy"] == "packed" and res["batch"]["padded_fraction"] <= MAX_PADDED_FRACTION
    vm = simulate(tiny(rounds=1, num_clients=20, clients_per_round=20, strategy="vmap"))
    assert vm["batch"]["lanes"] == 20 and vm["batch"]["padded_fraction"] > res["batch"]["padded_fraction"]


def test_bad_calls():
    with pytest.raises(TypeError, match="Config"):
        simulate_many([{"dataset": "digits"}])
    with pytest.raises(ValueError, match="run_dirs"):
        simulate_many([tiny()], run_dirs=[None, None])
    with pytest.raises(ValueError, match="single config"):
        simulate_many([tiny(), tiny(seed=1)], on_updates=lambda *a: None)
    with pytest.raises(ValueError, match="strategy"):
        tiny(strategy="bogus")


def test_fltrust_root_set_and_foolsgold_clients():
    from strike_jax import simulation
    from strike_jax.simulation import DEFAULT, Run, prepare

    cfg = tiny(defence="fltrust", root_samples=50, rounds=2)
    run = Run(cfg, None, [])
    prepare(run, DEFAULT)
    # The root set is the table's extra last client; with the clients it covers the training set once.
    table = run.table
    assert table.num_clients == cfg.num_clients + 1 and table.counts[-1] == 50
    ds = simulation.load_dataset(cfg)
    seen = np.concatenate([table.index[i, :table.counts[i]] for i in range(table.num_clients)])
    assert sorted(seen.tolist()) == list(range(len(ds.y_train)))
    packed = simulate(cfg)
    steps = simulate(cfg.replace(strategy="steps"))
    assert_same_history(packed, steps, rtol=2e-3, atol=2e-4)
    # FoolsGold gets the sampled client ids (partial participation: they change every round).
    fg = simulate_many([tiny(defence="foolsgold", clients_per_round=5, seed=s) for s in (0, 1)])
    assert all(r["completed_rounds"] == 3 and r["batch"]["runs"] == 2 for r in fg)

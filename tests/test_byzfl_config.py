"""ByzFL 0.0.11 benchmark configs (issue 22, item 4, parsing): the grid expansion against ByzFL's
rules worked out by hand, the mapping to our names, one-line errors, data folders, random_hflip."""

from __future__ import annotations

import copy
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import byzfl, registry

# ByzFL's documented example (`byzfl.benchmark.benchmark.default_config`, what `run_benchmark`
# writes when no config.json exists), written out here.
EXAMPLE = {
    "benchmark_config": {
        "training_algorithm": {"name": "DSGD", "parameters": {}},
        "nb_steps": 800,
        "device": "cuda",
        "training_seed": 0,
        "nb_training_seeds": 3,
        "nb_honest_clients": 10,
        "f": [1, 2, 3, 4],
        "data_distribution_seed": 0,
        "nb_data_distribution_seeds": 1,
        "data_distribution": [{"name": "gamma_similarity_niid", "distribution_parameter": [1.0, 0.66, 0.33, 0.0]}],
    },
    "model": {"name": "cnn_mnist", "dataset_name": "mnist", "nb_labels": 10, "loss": "NLLLoss",
              "learning_rate": 0.1, "learning_rate_decay": 1.0, "milestones": []},
    "aggregator": [{"name": "GeometricMedian", "parameters": {"nu": 0.1, "T": 3}},
                   {"name": "TrMean", "parameters": {}}],
    "pre_aggregators": [{"name": "Clipping", "parameters": {}}, {"name": "NNM", "parameters": {}}],
    "honest_clients": {"momentum": 0.9, "weight_decay": 0.0001, "batch_size": 25},
    "attack": [{"name": "SignFlipping", "parameters": {}},
               {"name": "Optimal_InnerProductManipulation", "parameters": {}},
               {"name": "Optimal_ALittleIsEnough", "parameters": {}}],
    "evaluation_and_results": {"evaluation_delta": 50, "batch_size_evaluation": 128, "evaluate_on_test": True,
                               "store_per_client_metrics": True, "store_models": False, "data_folder": "./data",
                               "results_directory": "./results"},
}


def _key(r):
    return (r.f, r.partition.get("gamma"), r.rule.name, r.attack.name, r.seed, r.data_seed)


def test_documented_example_expands_to_288_runs_in_byzfl_order():
    runs = byzfl.expand(EXAMPLE)
    # By hand from ByzFL's rules: the first key varies slowest (f, then gamma inside benchmark_config;
    # then aggregator, then attack), pre_aggregators is one pipeline, then 3 training seeds per
    # setting, then 1 data seed; tolerated_f = f (no tolerated_f key); nb_workers = 10 + f.
    want = [(f, g, rule, att, seed, 0)
            for f in (1, 2, 3, 4) for g in (1.0, 0.66, 0.33, 0.0) for rule in ("rfa", "trmean")
            for att in ("signflip", "opt_ipm", "opt_lie") for seed in (0, 1, 2)]
    assert len(runs) == 288 == len(want)
    assert [_key(r) for r in runs] == want
    assert [r.index for r in runs] == list(range(288))
    r = runs[0]
    assert (r.num_honest, r.num_clients, r.tolerated_f, r.steps, r.local_steps) == (10, 11, 1, 800, 1)
    assert r.algorithm == "dsgd" and r.model == "cnn_mnist" and r.dataset == "mnist" and r.num_classes == 10
    assert r.load_kwargs == {"standardize": True} and r.augmentation == () and r.eval_augmentation == ()
    assert (r.lr, r.lr_decay, r.milestones, r.momentum, r.weight_decay, r.batch_size) == (0.1, 1.0, (), 0.9, 1e-4, 25)
    assert (r.eval_every, r.eval_batch, r.evaluate_on_test, r.train_fraction) == (50, 128, True, 0.8)
    assert r.partition == {"kind": "gamma_similarity_niid", "gamma": 1.0}
    assert [(p.name, dict(p.params)) for p in r.preaggregators] == [("clipping", {"c": 2.0}), ("nnm", {})]
    assert (r.rule.name, dict(r.rule.params)) == ("rfa", {"start": "zero", "eps": 0.1, "iters": 3})
    assert r.attack.name == "signflip"
    # ByzFL's per-run settings carry the declared f into every stage.
    assert r.setting["aggregator"]["parameters"]["f"] == 1
    assert all(p["parameters"]["f"] == 1 for p in r.setting["pre_aggregators"])
    assert r.folder == ("mnist_cnn_mnist_n_11_f_1_d_1_gamma_similarity_niid_1.0_GeometricMedian_Clipping_NNM_"
                        "SignFlipping_lr_0.1_mom_0.9_wd_0.0001")
    # Every run owns its setting (ByzFL shares nested dicts in some configs).
    assert runs[0].setting["aggregator"] is not runs[1].setting["aggregator"]


def test_issue_grid_nnm_three_rules_five_attacks():
    cfg = copy.deepcopy(EXAMPLE)
    cfg["benchmark_config"].update(f=2, nb_training_seeds=1, nb_steps=10,
                                   data_distribution={"name": "gamma_similarity_niid", "distribution_parameter": 0.5})
    cfg["model"]["dataset_name"] = "fashionmnist"
    cfg["pre_aggregators"] = [{"name": "NNM"}]
    cfg["aggregator"] = [{"name": "TrMean"}, {"name": "GeometricMedian"}, {"name": "MultiKrum"}]
    cfg["attack"] = [{"name": a} for a in ("SignFlipping", "InnerProductManipulation", "ALittleIsEnough",
                                           "Optimal_InnerProductManipulation", "Optimal_ALittleIsEnough")]
    runs = byzfl.expand(cfg)
    assert len(runs) == 15
    assert [(r.rule.name, r.attack.name) for r in runs] == list(itertools.product(
        ("trmean", "rfa", "multikrum"), ("signflip", "ipm", "lie", "opt_ipm", "opt_lie")))
    r = runs[1 * 5 + 2]  # GeometricMedian defaults, ALIE defaults
    assert dict(r.rule.params) == {"start": "zero", "eps": 0.1, "iters": 3}
    assert dict(r.attack.params) == {"ddof": 1, "sign": "plus", "z": 1.5}
    assert dict(runs[1].attack.params) == {"eps": 2.0}
    assert dict(runs[10].rule.params) == {"neighbours": "n-f-1"}
    assert runs[0].dataset == "fashion_mnist" and runs[0].augmentation == ("hflip",)
    assert runs[0].eval_augmentation == ("hflip",) and runs[0].load_kwargs == {"standardize": False}
    assert all(r.num_clients == 12 and r.tolerated_f == 2 for r in runs)


def _small(**bc):
    cfg = {"benchmark_config": {"nb_steps": 5, "f": 1, **bc},
           "aggregator": {"name": "TrMean"}, "attack": {"name": "SignFlipping"},
           "evaluation_and_results": {}}
    return cfg


def test_tolerated_f_filters_and_declares():
    # tolerated_f given (as an axis): runs with f > tolerated_f are dropped; stages get tolerated_f.
    runs = byzfl.expand(_small(f=[1, 2, 3], tolerated_f=[2, 3]))
    assert [(r.f, r.tolerated_f) for r in runs] == [(1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]
    assert [r.setting["aggregator"]["parameters"]["f"] for r in runs] == [2, 3, 2, 3, 3]
    assert all(r.num_clients == 10 + r.f for r in runs)
    # set_honest_clients_as_clients: nb_honest_clients is the total.
    r, = byzfl.expand(_small(f=3, nb_honest_clients=12, set_honest_clients_as_clients=True))
    assert (r.num_clients, r.num_honest, r.f) == (12, 9, 3)


def test_seeds_fan_out_training_outer_data_inner():
    runs = byzfl.expand(_small(training_seed=5, nb_training_seeds=2, data_distribution_seed=7,
                               nb_data_distribution_seeds=3))
    assert [(r.seed, r.data_seed) for r in runs] == [(5, 7), (5, 8), (5, 9), (6, 7), (6, 8), (6, 9)]


def test_nested_axes_pipelines_and_milestones():
    cfg = _small()
    cfg["aggregator"] = [{"name": "GeometricMedian", "parameters": {"nu": [0.1, 1.0], "T": [3, 5]}},
                         {"name": "Median"}]
    cfg["pre_aggregators"] = [[{"name": "Bucketing", "parameters": {"s": 2}}, {"name": "NNM"}],
                              [{"name": "ARC"}], []]
    cfg["model"] = {"milestones": [[10, 20], [30]], "learning_rate": [0.1, 0.05]}
    cfg["honest_clients"] = {"momentum": 0.0}
    runs = byzfl.expand(cfg)
    # The config's top-level key order is benchmark_config, aggregator, attack,
    # evaluation_and_results, pre_aggregators, model, honest_clients (added in that order), so the
    # aggregator axis (GM nu x T = 4, then Median) varies slowest, then the pipelines (3), then the
    # model's milestones (2), then its learning rates (2).
    assert list(cfg) == ["benchmark_config", "aggregator", "attack", "evaluation_and_results", "pre_aggregators",
                         "model", "honest_clients"]
    assert len(runs) == 5 * 3 * 2 * 2
    keys = [(r.rule.name, dict(r.rule.params).get("eps"), dict(r.rule.params).get("iters"),
             tuple(p.name for p in r.preaggregators), r.milestones, r.lr) for r in runs]
    pipes = (("bucketing", "nnm"), ("arc",), ())
    want = [(rule, nu, t, p, m, lr)
            for rule, nu, t in (("rfa", 0.1, 3), ("rfa", 0.1, 5), ("rfa", 1.0, 3), ("rfa", 1.0, 5),
                                ("median", None, None))
            for p in pipes for m in ((10, 20), (30,)) for lr in (0.1, 0.05)]
    assert keys == want
    b = runs[0].preaggregators[0]
    assert dict(b.params) == {"s": 2, "rescale_f": False}
    # A one-level milestones list is one schedule, not an axis.
    cfg["model"] = {"milestones": [100, 200]}
    cfg["aggregator"] = {"name": "Median"}
    cfg["pre_aggregators"] = [{"name": "Clipping", "parameters": {"c": 1.0}}, {"name": "NNM"}]
    runs = byzfl.expand(cfg)
    assert len(runs) == 1 and runs[0].milestones == (100, 200)
    assert [p.name for p in runs[0].preaggregators] == ["clipping", "nnm"]


def test_combinations_rules():
    got = byzfl.combinations({"a": [1, 2], "b": {"c": [3, 4], "d": []}, "pre_aggregators": [{"x": [1, 2]}],
                              "e": [[5, 6], 7]})
    want = [{"a": a, "b": {"c": c, "d": []}, "pre_aggregators": [{"x": [1, 2]}], "e": e}
            for a in (1, 2) for c in (3, 4) for e in ([5, 6], 7)]
    assert got == want


def test_defaults_of_a_minimal_config():
    r, = byzfl.expand(_small())
    assert (r.model, r.dataset, r.batch_size, r.momentum, r.weight_decay, r.lr) == ("cnn_mnist", "mnist", 32, 0.9, 1e-4, 0.1)
    assert (r.num_honest, r.seed, r.data_seed, r.train_fraction, r.steps) == (10, 0, 0, 0.8, 5)
    assert r.partition == {"kind": "iid"} and r.preaggregators == () and r.results_directory == "./results"


def test_partitions_and_fedavg():
    cfg = _small(data_distribution=[{"name": "dirichlet_niid", "distribution_parameter": 0.5},
                                    {"name": "extreme_niid"}, {"name": "iid"}],
                 training_algorithm={"name": "FedAvg", "parameters": {"proportion_selected_clients": 0.5,
                                                                     "local_steps_per_client": 4}})
    runs = byzfl.expand(cfg)
    assert [r.partition for r in runs] == [{"kind": "dirichlet", "beta": 0.5, "min_size": 0},
                                           {"kind": "extreme_niid"}, {"kind": "iid"}]
    assert all((r.algorithm, r.local_steps, r.participation) == ("fedavg", 4, 0.5) for r in runs)
    assert runs[1].folder.startswith("mnist_cnn_mnist_n_11_f_1_d_1_extreme_niid_None_TrMean__SignFlipping")


ERRORS = [
    (lambda c: c["benchmark_config"].update(nb_stepz=3), r"unsupported key\(s\) \['nb_stepz'\] in benchmark_config"),
    (lambda c: c.update(aggregator={"name": "Bulyan"}), r"aggregator 'Bulyan' is not supported; allowed: Average"),
    (lambda c: c.update(attack={"name": "SignFlipping", "parameters": {"tau": 1.0}}),
     r"attack SignFlipping parameter 'tau' is not supported; allowed: none"),
    (lambda c: c.update(aggregator={"name": "GeometricMedian", "parameters": {"nu": -1.0}}),
     r"aggregator GeometricMedian: rfa: eps=-1.0 is not allowed"),
    (lambda c: c.update(aggregator={"name": "MoNNA", "parameters": {"idx": 3}}),
     r"MoNNA parameter idx=3 is not supported; only ByzFL's default 0"),
    (lambda c: c.update(model={"name": "ResNet50"}), r"model 'ResNet50' is not supported; allowed: cnn_mnist"),
    (lambda c: c.update(model={"dataset_name": "emnist"}), r"dataset_name 'emnist' is not supported"),
    (lambda c: c.update(model={"loss": "MSELoss"}), r"loss 'MSELoss' is not supported"),
    (lambda c: c["benchmark_config"].update(data_distribution={"name": "gamma_similarity_niid",
                                                               "distribution_parameter": 1.5}),
     r"distribution_parameter=1.5 is not allowed; allowed: a number >= 0 and <= 1"),
    (lambda c: c["benchmark_config"].update(data_distribution={"name": "power_law"}),
     r"data_distribution 'power_law' is not supported"),
    (lambda c: c.update(attack={"name": "NoAttack"}), r"f=1 with attack NoAttack is not allowed"),
    (lambda c: c.update(honest_clients={"momentum": 1.0}), r"momentum=1.0 is not allowed; allowed: a number in \[0, 1\)"),
    (lambda c: c["benchmark_config"].update(training_algorithm={"name": "FedAvg", "parameters": {}}),
     r"FedAvg needs training_algorithm.parameters.proportion_selected_clients"),
    (lambda c: c.update(extra={}), r"unknown section\(s\) \['extra'\]"),
    (lambda c: c.pop("attack"), r"missing section\(s\) \['attack'\]"),
]


@pytest.mark.parametrize("edit,msg", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_one_line_errors(edit, msg):
    cfg = _small()
    edit(cfg)
    with pytest.raises(ValueError, match=msg) as e:
        byzfl.expand(cfg)
    assert "\n" not in str(e.value)


def test_every_mapped_stage_builds():
    # Each table entry names a registered stage and its defaults validate.
    for table, kind in ((byzfl.AGGREGATORS, "rule"), (byzfl.PREAGGREGATORS, "preaggregator"),
                        (byzfl.ATTACKS, "attack")):
        for name in table:
            spec = byzfl.map_stage(kind, {"name": name, "parameters": {"f": 1}})
            if spec.name != "none":
                registry.build(kind, spec.name, **spec.params)


def test_load_config_and_data_folder(tmp_path):
    path = tmp_path / "config.json"
    cfg = _small()
    cfg["model"] = {"dataset_name": "fashionmnist"}
    root = tmp_path / "data"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    cfg["evaluation_and_results"]["data_folder"] = str(root)
    path.write_text(json.dumps(cfg))
    loaded = byzfl.load_config(path)
    assert loaded == cfg
    r, = byzfl.expand(loaded)
    assert r.data_dir == str(raw)
    # Not there: None (our loaders' usual places).
    assert byzfl.find_data_dir(str(tmp_path / "nowhere"), "fashionmnist") is None
    # IDX files directly in data_folder.
    assert byzfl.find_data_dir(str(raw), "fashionmnist") == str(raw)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        byzfl.load_config(bad)
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="is not valid JSON"):
        byzfl.load_config(bad)


def test_random_hflip():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 5, 7, 2))
    y = jax.jit(byzfl.random_hflip)(jax.random.PRNGKey(1), x)
    xn, yn = np.asarray(x), np.asarray(y)
    same = np.array([np.array_equal(a, b) for a, b in zip(xn, yn)])
    flipped = np.array([np.array_equal(a[:, ::-1], b) for a, b in zip(xn, yn)])
    assert (same ^ flipped).all() and 16 < flipped.sum() < 48
    z = byzfl.random_hflip(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(np.asarray(z), yn)  # a pure function of the key
    assert byzfl.random_hflip(jax.random.PRNGKey(2), jnp.zeros((3, 4, 4, 1), jnp.uint8)).dtype == jnp.uint8
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, C\]"):
        byzfl.random_hflip(jax.random.PRNGKey(0), jnp.zeros((4, 4, 1)))


@pytest.mark.parametrize("dd,kind", [({"name": "gamma_similarity_niid", "distribution_parameter": 0.5}, "gamma_similarity_niid"),
                                     ({"name": "extreme_niid"}, "extreme_niid"), ({"name": "iid"}, "iid"),
                                     ({"name": "dirichlet_niid", "distribution_parameter": 1.0}, "dirichlet")])
def test_split_clients(dd, kind):
    labels = np.random.default_rng(0).integers(0, 10, 500)
    r, = byzfl.expand(_small(data_distribution=dd, nb_honest_clients=6, data_distribution_seed=3))
    part, val = byzfl.split_clients(r, labels)
    assert part.kind == kind and part.num_clients == 6 and val.size == 100
    got = np.concatenate(list(part.indices) + [val])
    assert np.array_equal(np.sort(got), np.arange(500))  # every sample once: clients + validation
    again, val2 = byzfl.split_clients(r, labels)
    assert np.array_equal(val, val2) and all(np.array_equal(a, b) for a, b in zip(part.indices, again.indices))
    if kind == "extreme_niid":
        train = np.setdiff1d(np.arange(500), val)
        assert [a.tolist() for a in part.indices] == [
            a.tolist() for a in np.array_split(train[np.lexsort((train, labels[train]))], 6)]

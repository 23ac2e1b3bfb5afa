"""`strike_jax.byzfl.run` and `strike-jax byzfl` (issue 22, item 4): a small ByzFL config end to end on
a generated IDX data set in torchvision's layout, ByzFL's result files and summaries, resume, the
grid's run count and order by ByzFL's rules, and one-line errors. No network, no torch."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from strike_jax import byzfl, byzfl_results, cli

STEPS, DELTA = 4, 2


def _write_idx(path, array):
    arr = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.tobytes())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A tiny MNIST in torchvision's layout (`<root>/MNIST/raw/...`, decompressed): each class a
    bright square in its own place, so a few DSGD steps learn something."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, m in (("train", 240), ("t10k", 60)):
        y = rng.integers(0, 10, m)
        x = rng.integers(0, 40, (m, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c:2 * c + 6, 4:10] = 255
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return str(root)


def small_config(data_root, results, **bench):
    """f in [1, 2] with tolerated_f 1 (f=2 dropped), two attacks, two training seeds: 4 runs."""
    bc = {"training_algorithm": {"name": "DSGD", "parameters": {}}, "nb_steps": STEPS, "device": "cpu",
          "training_seed": 5, "nb_training_seeds": 2, "nb_honest_clients": 4, "f": [1, 2], "tolerated_f": 1,
          "data_distribution_seed": 0, "nb_data_distribution_seeds": 1,
          "data_distribution": [{"name": "iid", "distribution_parameter": 1.0}], "size_train_set": 0.8}
    bc.update(bench)
    return {
        "benchmark_config": bc,
        "model": {"name": "logreg_mnist", "dataset_name": "mnist", "nb_labels": 10, "loss": "NLLLoss",
                  "learning_rate": 0.1, "learning_rate_decay": 1.0, "milestones": []},
        "aggregator": {"name": "TrMean", "parameters": {}},
        "pre_aggregators": [{"name": "NNM", "parameters": {}}],
        "honest_clients": {"momentum": 0.9, "weight_decay": 0.0001, "batch_size": 8},
        "attack": [{"name": "SignFlipping", "parameters": {}}, {"name": "ALittleIsEnough", "parameters": {}}],
        "evaluation_and_results": {"evaluation_delta": DELTA, "batch_size_evaluation": 32, "evaluate_on_test": True,
                                   "store_per_client_metrics": False, "store_models": False,
                                   "data_folder": data_root, "results_directory": str(results)},
    }


def test_grid_count_and_order_by_byzfl_rules(tmp_path):
    cfg = small_config("/nowhere", tmp_path)
    runs = byzfl.expand(cfg)
    # By hand: f=2 > tolerated_f=1 dropped; attack axis, then 2 training seeds (5, 6) per setting.
    assert [(r.f, r.tolerated_f, r.attack.name, r.seed, r.data_seed) for r in runs] == [
        (1, 1, "signflip", 5, 0), (1, 1, "signflip", 6, 0), (1, 1, "lie", 5, 0), (1, 1, "lie", 6, 0)]
    configs = [byzfl.to_config(r) for r in runs]
    c = configs[0]
    assert (c.num_clients, c.clients_per_round, c.num_byzantine, c.tolerated_f, c.byzantine_data) == (5, 5, 1, 1, False)
    assert (c.algorithm, c.rounds, c.eval_every, c.momentum, c.server_lr, c.server_weight_decay) == (
        "dsgd", STEPS, DELTA, 0.9, 0.1, 0.0001)
    assert (c.seed, c.data_seed, c.partition, c.defence, c.preaggregation) == (5, 0, "iid", "trmean", ("nnm",))
    assert configs[1].seed == 6 and configs[2].attack == "lie"
    # ByzFL builds its models under the data seed: its training seeds share one initial model.
    assert [c.init_seed for c in configs] == [0, 0, 0, 0]


def test_pipeline_order_and_partition_map_to_config(tmp_path):
    cfg = small_config("/nowhere", tmp_path, f=1, nb_training_seeds=1,
                       data_distribution={"name": "gamma_similarity_niid", "distribution_parameter": 0.5})
    cfg["attack"] = {"name": "SignFlipping"}
    cfg["pre_aggregators"] = [{"name": "Bucketing", "parameters": {"s": 2}}, {"name": "NNM"}]
    (r,) = byzfl.expand(cfg)
    c = byzfl.to_config(r)
    # ByzFL runs its list in the given order; strike_jax's SPEC order would put NNM first.
    assert (c.preaggregation, c.preaggregation_order) == (("bucketing", "nnm"), "given")
    assert (c.partition, c.gamma, c.validation_fraction, c.eval_at_start) == ("gamma_similarity_niid", 0.5,
                                                                                pytest.approx(0.2), True)
    assert (c.algorithm, c.local_steps, c.batch_order) == ("dsgd", 1, "epochs")  # ByzFL's DataLoader iteration
    cfg["pre_aggregators"] = [{"name": "NNM"}, {"name": "Bucketing", "parameters": {"s": 2}}]
    assert byzfl.to_config(byzfl.expand(cfg)[0]).preaggregation_order == "spec"  # the same order either way


def _read(path):
    return np.atleast_1d(np.genfromtxt(path, delimiter=","))


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results") / "res"
    path = results.parent / "config.json"
    cfg = small_config(data_root, results)
    path.write_text(json.dumps(cfg))
    out = byzfl.run(path, plots=True)
    return cfg, path, str(results), out


def test_run_writes_byzfl_layout(finished):
    cfg, _, results, out = finished
    specs = byzfl.expand(cfg)
    assert out["results_directory"] == results and len(out["runs"]) == 4
    assert json.load(open(os.path.join(results, "config.json")))["benchmark_config"]["nb_training_seeds"] == 2
    for spec, r in zip(specs, out["runs"]):
        d = os.path.join(results, spec.folder)
        assert spec.folder.startswith("mnist_logreg_mnist_n_5_f_1_d_1_iid_None_TrMean_NNM_")
        t = f"tr_seed_{spec.seed}_dd_seed_{spec.data_seed}"
        test = _read(os.path.join(d, f"test_accuracy_{t}.txt"))
        val = _read(os.path.join(d, f"val_accuracy_{t}.txt"))
        loss = _read(os.path.join(d, f"train_loss_{t}.txt"))
        assert test.shape == val.shape == (1 + math.ceil(STEPS / DELTA),)  # steps 0, 2, 4
        assert loss.shape == (STEPS,) and np.isfinite(loss).all() and np.isfinite(test).all()
        hist = {h["round"] + 1: h for h in r["result"]["rounds"]}
        np.testing.assert_allclose(test[1:], [hist[s]["accuracy"] for s in (2, 4)], atol=5e-5)
        np.testing.assert_allclose(loss, [hist[s]["train_loss"] for s in range(1, STEPS + 1)], atol=5e-5)
        # One config.json per folder, the last seed's (ByzFL overwrites it run after run).
        assert json.load(open(os.path.join(d, "config.json")))["benchmark_config"]["training_seed"] == 6
        assert os.path.exists(os.path.join(d, "day.txt")) and os.path.exists(os.path.join(d, f"train_time_{t}.txt"))
        assert os.path.exists(os.path.join(byzfl_results.run_dir(results, spec), "result.json"))


def test_summaries_follow_byzfl(finished):
    cfg, _, results, out = finished
    specs = byzfl.expand(cfg)

    def seed_mean(kind, attack):
        rows = [_read(os.path.join(results, s.folder, f"{kind}_tr_seed_{s.seed}_dd_seed_{s.data_seed}.txt"))
                for s in specs if s.setting["attack"]["name"] == attack]
        return np.mean(rows, axis=0)

    attacks = ("SignFlipping", "ALittleIsEnough")
    s = json.load(open(os.path.join(results, byzfl_results.SUMMARY_JSON)))
    # Worst case over attacks of the best seed-mean test accuracy; rows: heterogeneity, cols: f.
    (test,) = s["test_heatmaps"]
    assert test["cols"] == [1] and test["rows"] == [None]
    assert test["values"][0][0] == pytest.approx(min(seed_mean("test_accuracy", a).max() for a in attacks), abs=1e-4)
    (loss,) = s["loss_heatmaps"]
    assert loss["values"][0][0] == pytest.approx(max(seed_mean("train_loss", a).min() for a in attacks), abs=1e-4)
    (best,) = s["best_defence_heatmaps"]
    assert best["values"] == test["values"]  # one aggregator
    (hp,) = s["hyperparameters"]
    assert (hp["lr"], hp["momentum"], hp["weight_decay"], hp["by_validation"]) == (0.1, 0.9, 0.0001, True)
    assert hp["min_over_attacks_val_acc"] == pytest.approx(
        min(seed_mean("val_accuracy", a).max() for a in attacks), abs=1e-4)
    (curve,) = s["curves"]
    assert curve["steps"] == [0, 2, 4]
    runs = np.array([_read(os.path.join(results, sp.folder, f"test_accuracy_tr_seed_{sp.seed}_dd_seed_0.txt"))
                     for sp in specs if sp.setting["attack"]["name"] == "SignFlipping"])
    np.testing.assert_allclose(curve["attacks"]["SignFlipping"]["ci95"], 1.96 * runs.std(axis=0) / math.sqrt(2),
                               atol=1e-4)
    # ByzFL's own files for its plotting functions, and our figures.
    hdir = os.path.join(results, "best_hyperparameters", "hyperparameters")
    (hfile,) = os.listdir(hdir)
    assert hfile == "mnist_logreg_mnist_n_5_f_1_d_1_iid_None_NNM_TrMean.txt"
    np.testing.assert_allclose(np.loadtxt(os.path.join(hdir, hfile)), [0.1, 0.9, 0.0001])
    plots = sorted(os.listdir(os.path.join(results, "plots")))
    assert "test_mnist_logreg_mnist_iid_NNM_TrMean_nb_honest_clients_4_tolerated_f_1.png" in plots
    assert "train_loss_mnist_logreg_mnist_iid_NNM_TrMean_nb_honest_clients_4_tolerated_f_1.png" in plots
    assert "best_test_mnist_logreg_mnist_iid_NNM_nb_honest_clients_4_tolerated_f_1.png" in plots
    assert any(p.endswith("_plot.png") for p in plots)


def test_cli_reruns_resume_finished_runs(finished, capsys):
    cfg, path, results, out = finished
    specs = byzfl.expand(cfg)
    stamps = {s.index: os.path.getmtime(os.path.join(byzfl_results.run_dir(results, s), "result.json"))
              for s in specs}
    # Finished runs come back as stored (nothing retrained: their result files untouched).
    assert cli.main(["byzfl", str(path), "--quiet", "--no-plots"]) == 0
    assert "4/4 runs finished" in capsys.readouterr().out
    assert all(os.path.getmtime(os.path.join(byzfl_results.run_dir(results, s), "result.json")) == t
               for s in specs for i, t in stamps.items() if i == s.index)
    # A run whose directory is gone is run again; the others stay as they were.
    gone = specs[1]
    import shutil

    before = _read(os.path.join(results, gone.folder, f"test_accuracy_tr_seed_{gone.seed}_dd_seed_0.txt"))
    shutil.rmtree(byzfl_results.run_dir(results, gone))
    assert cli.main(["byzfl", str(path), "--quiet", "--no-plots", "--results-dir", results]) == 0
    for s in specs:
        new = os.path.getmtime(os.path.join(byzfl_results.run_dir(results, s), "result.json"))
        assert (new == stamps[s.index]) == (s.index != gone.index)
    after = _read(os.path.join(results, gone.folder, f"test_accuracy_tr_seed_{gone.seed}_dd_seed_0.txt"))
    np.testing.assert_allclose(after, before, atol=1e-4)  # the same run again: the same numbers


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["model"].update(colour="red"), r"unsupported key\(s\) \['colour'\] in model"),
    (lambda c: c.update(attack={"name": "Nope"}), r"attack 'Nope' is not supported; allowed: NoAttack"),
    (lambda c: c["benchmark_config"].update(training_algorithm={"name": "FedAvg", "parameters": {
        "proportion_selected_clients": 1.0, "local_steps_per_client": 2}}), r"FedAvg is not supported"),
    (lambda c: c["benchmark_config"].update(f=3, tolerated_f=2), r"no run left after the expansion"),
])
def test_bad_config_is_one_line_before_any_work(tmp_path, capsys, edit, message):
    cfg = small_config(str(tmp_path / "nodata"), tmp_path / "res")
    edit(cfg)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        byzfl.run(path)
    assert cli.main(["byzfl", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("strike-jax: error: ByzFL config") and "\n" not in err
    assert not (tmp_path / "res").exists()  # refused before writing anything
    assert cli.main(["byzfl", str(tmp_path / "missing.json")]) == 2

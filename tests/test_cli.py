"""`strike-jax` in process (issue 20 item 6): a successful `run` with its parameter flags, `demo`
small, `sweep` with a grid and its resume, two configs and one run directory, and the exit codes
(bad input: one line, exit 2; anything else: a traceback, exit 1). The options layer
(`strike_jax.options`) is checked for every `Config` field.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest

from strike_jax import cli, options, simulation, sweep
from strike_jax.config import Config, field_types
from strike_jax.errors import InputError

TINY = ["--dataset", "digits", "--model", "mlp", "--num-clients", "4", "--clients-per-round", "4", "--rounds", "2",
        "--batch-size", "64", "--quiet"]


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _mtimes(root) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs if f == "result.json"}


# ---------------------------------------------------------------------------------------------
# run


def test_run_with_parameter_flags_and_a_second_config_in_its_run_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["run", *TINY, "--attack", "strike", "--nu", "0.5", "--defence", "cclip", "--defence-param", "tau=5",
            "--defence-param", "iters=2", "--run-dir", str(run_dir)]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "digits strike vs cclip: best accuracy" in out and "finished, 2 rounds" in out
    res = json.load(open(run_dir / "result.json"))
    assert res["finished"] and res["completed_rounds"] == 2
    assert res["config"]["attack_params"] == {"nu": 0.5}
    assert res["config"]["defence_params"] == {"tau": 5.0, "iters": 2}
    assert res["config"]["num_clients"] == 4
    # The same config again: the finished run is reused, nothing rewritten.
    before = _mtimes(run_dir)
    assert run_cli(argv, capsys)[0] == 0 and _mtimes(run_dir) == before
    # Another config into the same run directory: refused with one line naming what differs.
    code, out, err = run_cli([*argv[:-2], "--run-dir", str(run_dir), "--defence-param", "tau=6"], capsys)
    assert code == 2 and err.count("\n") == 1 and "defence_params" in err, err
    assert _mtimes(run_dir) == before


def test_run_attack_param(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(["run", *TINY, "--rounds", "1", "--attack", "lie", "--attack-param", "z=1.5",
                              "--defence", "median", "--out", str(out_json)], capsys)
    assert code == 0, err
    res = json.load(open(out_json))
    assert res["config"]["attack"] == "lie" and res["config"]["attack_params"] == {"z": 1.5}
    assert res["completed_rounds"] == 1


def test_demo_small(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--rounds", "1", "--attacks", "none,lie", "--defences", "median",
                              "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert "1 rounds, seed 0: best test accuracy" in out and "strongest attack per defence: median: lie" in out
    table = json.load(open(tmp_path / "demo.json"))
    assert set(table) == {"none", "lie"} and set(table["lie"]) == {"median"}
    assert 0.0 <= table["lie"]["median"]["best_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------
# sweep


def test_sweep_grid_resume_and_guard(tmp_path, capsys):
    res = tmp_path / "res"
    argv = ["sweep", *TINY, "--rounds", "1", "--defence", "median", "--grid", "attack=lie,strike",
            "--grid", "nu=0.5,1", "--results-dir", str(res)]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    payload = json.load(open(res / "sweep.json"))
    assert payload["stats"]["computed"] == 3 and payload["stats"]["reused"] == 0  # LIE once, STRIKE per nu
    table = payload["tables"][""]
    assert table["rows"] == ["LIE", "STRIKE (ν=0.5)", "STRIKE (ν=1)"] and table["cols"] == ["Median"]
    for row in table["rows"]:
        cell = table["cells"][row]["Median"]
        assert 0.0 <= cell["mean"] <= 1.0 and cell["seeds"] == [0]
    assert sorted(r["run_id"] for r in payload["runs"]) == sorted(os.listdir(res / "runs"))
    md = open(res / "sweep.md").read()
    assert "| STRIKE (ν=0.5) |" in md and "| attack | Median |" in md
    before = _mtimes(res / "runs")
    assert len(before) == 3
    # Second call: nothing runs, same table.
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    again = json.load(open(res / "sweep.json"))
    assert again["stats"]["computed"] == 0 and again["stats"]["reused"] == 3
    assert again["tables"] == payload["tables"] and _mtimes(res / "runs") == before
    # --dry-run lists the runs and their state.
    code, out, err = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0 and out.count(" done ") == 3 and "3 runs (3 already done, 0 to run)" in out
    # Another grid into the same tables: refused before any run, unless --overwrite.
    code, out, err = run_cli([*argv[:-2], "--grid", "seed=0-1", "--results-dir", str(res)], capsys)
    assert code == 2 and err.count("\n") == 1 and "holds a result computed with another setting" in err
    assert _mtimes(res / "runs") == before


def test_sweep_bad_grids_are_one_line(tmp_path, capsys):
    res = tmp_path / "res"
    for grid, match in [("foo=1", "unknown grid key 'foo'"), ("seed=a", "Config.seed needs an integer"),
                        ("defence=median,foo", "unknown defence 'foo'"), ("seed=3-1", "needs a <= b")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["sweep", "--grid", grid, "--results-dir", str(res)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and match in err, err
    code, _, err = run_cli(["sweep", "--attack", "lie", "--grid", "nu=1,2", "--results-dir", str(res)], capsys)
    assert code == 2 and "grid key 'nu' applies to no run" in err and err.count("\n") == 1
    assert not res.exists()


def test_grid_configs_semantics():
    base = Config(dataset="digits", model="mlp", num_clients=4, clients_per_round=4, defence="median")
    axes = [options.parse_grid(t) for t in ("attack=lie,strike", "defence=median,dnc", "seed=0-2", "nu=0.5,1,2")]
    configs = options.grid_configs(base, axes)
    assert len(configs) == 2 * 3 * (1 + 3) and len({sweep.run_id(c) for c in configs}) == len(configs)
    assert all(c.attack_params == {} for c in configs if c.attack == "lie")
    assert sorted({c.attack_params["nu"] for c in configs if c.attack == "strike"}) == [0.5, 1.0, 2.0]
    # Explicit stages, pre-aggregator hyper-parameters, tuple fields.
    cfgs = options.grid_configs(base, [options.parse_grid("preagg=none,nnm+bucketing"),
                                     options.parse_grid("bucketing.s=2,3")])
    assert [(c.preaggregation, dict(c.preaggregation_params)) for c in cfgs] == [
        ((), {}), (("nnm", "bucketing"), {"bucketing": {"s": 2}}), (("nnm", "bucketing"), {"bucketing": {"s": 3}})]
    cfgs = options.grid_configs(base.replace(defence="cclip"), [options.parse_grid("defence.tau=1,2")])
    assert [c.defence_params["tau"] for c in cfgs] == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# two configs, one run directory


def test_equal_configs_run_once_different_configs_never_share(tmp_path, monkeypatch):
    a = Config(attack="strike", attack_params={"nu": 1})
    b = Config(attack="strike", attack_params={"nu": 1.0})
    c = Config(attack="strike", attack_params={"nu": 2.0})
    seen = {}

    def fake(configs, run_dirs, **kw):
        seen["configs"], seen["dirs"] = list(configs), list(run_dirs)
        return [{"config": cfg.to_dict(), "finished": True} for cfg in configs]

    monkeypatch.setattr(simulation, "simulate_many", fake)
    results = sweep.run_sweep([a, b, c], str(tmp_path))
    assert seen["configs"] == [a, c] and len(set(seen["dirs"])) == 2  # a and b are one run
    assert results[0] is results[1] and results[2] is not results[0]
    # A run directory holding another config's result does not count as this config's run.
    d = tmp_path / sweep.run_id(c)
    d.mkdir()
    (d / "result.json").write_text(json.dumps({"finished": True, "config": a.to_dict()}))
    assert not sweep.finished(c, str(tmp_path))
    (d / "result.json").write_text(json.dumps({"finished": True, "config": c.to_dict()}))
    assert sweep.finished(c, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# exit codes


@pytest.mark.parametrize("error,code", [(InputError("x=3 is not allowed; allowed: 1 or 2."), 2),
                                        (RuntimeError("internal"), 1), (ValueError("a bug's ValueError"), 1)],
                         ids=["input", "runtime", "valueerror"])
def test_exit_codes(error, code, monkeypatch, capsys):
    def boom(*a, **k):
        raise error

    monkeypatch.setattr(simulation, "simulate", boom)
    got, out, err = run_cli(["run", *TINY], capsys)
    assert got == code
    if code == 2:
        assert err == "strike-jax: error: x=3 is not allowed; allowed: 1 or 2.\n"
    else:  # a bug: its traceback, then one line saying so
        assert err.startswith("Traceback (most recent call last):") and type(error).__name__ in err
        assert "internal error" in err.splitlines()[-1]


def test_bad_options_exit_2_one_line(capsys):
    for argv, match in [(["--num-clients", "2.5"], "Config.num_clients needs an integer"),
                        (["--seed", "True"], "Config.seed needs an integer"),
                        (["--beta", "x"], "Config.beta needs a number"),
                        (["--preagg", "nnm,foo"], "unknown pre-aggregator 'foo'"),
                        (["--attack-param", "nu"], "expects KEY=VALUE"),
                        (["--set", "rounds=None"], "not None")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["run", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and match in err, (argv, err)
    code, _, err = run_cli(["run", "--num-clients", "4", "--clients-per-round", "5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Config.clients_per_round=5 is invalid" in err


# ---------------------------------------------------------------------------------------------
# the options layer


SAMPLE = {int: ("7", 7), float: ("1", 1.0), str: None, bool: None, tuple: ("nnm,bucketing", ("nnm", "bucketing"))}
STRINGS = {"dataset": "synthetic", "data_dir": "/data/x", "model": "mlp", "partition": "iid", "attack": "lie",
           "defence": "cclip", "strategy": "loop", "algorithm": "dsgd", "preaggregation_order": "given",
           "batch_order": "epochs"}
INT_TUPLE = ("3,5", (3, 5))
PARAMS = {"attack_params": ["nu=2"], "defence_params": ["tau=5"], "dataset_params": ["image_size=8"],
          "preaggregation_params": ["bucketing.s=3"]}


def test_every_config_field_is_an_option_of_its_type():
    parser = argparse.ArgumentParser()
    options.add_config_options(parser)
    default = Config()
    for name, ft in field_types().items():
        flag = options.flag(name)
        on = ft.base is bool and getattr(default, name) is True  # on by default: `--no-...` turns it off
        if on:
            flag = "--no-" + flag[2:]
        sample = INT_TUPLE if ft.item is int else SAMPLE.get(ft.base)
        if name in PARAMS:
            argv = [a for v in PARAMS[name] for a in (flag, v)]
        elif ft.base is bool:
            argv = [flag]
        elif ft.base is str:
            argv = [flag, STRINGS[name]]
        else:
            argv = [flag, sample[0]]
        got = options.overrides(parser.parse_args(argv))
        assert list(got) == [name], (name, got)
        value = got[name]
        if ft.base is bool:
            assert value is (not on)
        elif ft.base is str:
            assert value == STRINGS[name]
        elif ft.base is dict:
            assert isinstance(value, dict) and value
        else:
            assert value == sample[1] and type(value) is type(sample[1]), name
        if ft.optional:
            assert options.overrides(parser.parse_args([flag, "None"]))[name] is None
    ns = parser.parse_args(["--nu", "1.5", "--attack-param", "nu=2", "--attack-param", "foo='a b'"])
    assert options.overrides(ns) == {"attack_params": {"nu": 1.5, "foo": "a b"}}


def test_parse_set_checks_fields_and_types():
    assert options.parse_set("strategy=loop") == ("strategy", "loop")
    assert options.parse_set("num_clients=30") == ("num_clients", 30)
    assert options.parse_set("beta=1") == ("beta", 1.0) and type(options.parse_set("beta=1")[1]) is float
    assert options.parse_set("clip_norm=None") == ("clip_norm", None)
    assert options.parse_set("skew_metrics=True") == ("skew_metrics", True)
    assert options.parse_set("preaggregation=nnm,bucketing") == ("preaggregation", ("nnm", "bucketing"))
    assert options.parse_set("preaggregation=clipping") == ("preaggregation", ("clipping",))
    assert options.parse_set("defence_params={'tau': 5.0}") == ("defence_params", {"tau": 5.0})
    assert options.parse_set("data_dir=/data/x") == ("data_dir", "/data/x")
    with pytest.raises(argparse.ArgumentTypeError) as e:
        options.parse_set("foo=1")
    fields = list(Config.__dataclass_fields__)
    assert str(e.value).startswith("unknown Config field 'foo'; allowed: " + ", ".join(fields[:3]))
    assert all(f in str(e.value) for f in fields)
    for bad, need in [("rounds=abc", "an integer"), ("rounds=2.5", "an integer"), ("beta=x", "a number"),
                      ("skew_metrics=1", "True or False"), ("attack_params=3", "a dict"),
                      ("rounds=None", "not None"), ("seed=True", "an integer"), ("rounds", "FIELD=VALUE"),
                      ("attack=foo", "unknown attack 'foo'"), ("preaggregation=median", "unknown pre-aggregator")]:
        with pytest.raises(argparse.ArgumentTypeError, match=need):
            options.parse_set(bad)


def test_grid_study_splits_tables_by_other_varied_fields(tmp_path, monkeypatch, capsys):
    """No runs: `simulate_many` is replaced by a table of numbers; the tables must put attacks in
    rows, defences in columns, seeds in cells, and every other varied field in its own table."""
    from strike_jax import studies

    acc = {("lie", 0.1): 0.3, ("lie", 0.5): 0.5, ("strike", 0.1): 0.2, ("strike", 0.5): 0.4}

    def fake(configs, run_dirs, **kw):
        return [{"config": c.to_dict(), "finished": True, "diverged": False,
                 "best_accuracy": acc[(c.attack, c.beta)] + 0.01 * c.seed} for c in configs]

    monkeypatch.setattr(simulation, "simulate_many", fake)
    base = Config(dataset="digits", model="mlp", num_clients=4, clients_per_round=4, rounds=1, defence="median")
    axes = [options.parse_grid(t) for t in ("beta=0.1,0.5", "attack=lie,strike", "seed=0-1")]
    args = argparse.Namespace(results_dir=str(tmp_path), out_dir=str(tmp_path / "runs"), script="t", root=None,
                              dry_run=False, quiet=True, overwrite=False)
    assert studies.grid_study(args, base, options.grid_configs(base, axes), axes) == 0
    payload = json.load(open(tmp_path / "sweep.json"))
    assert payload["split_by"] == ["beta"] and list(payload["tables"]) == ["beta=0.1", "beta=0.5"]
    for beta in (0.1, 0.5):
        t = payload["tables"][f"beta={beta}"]
        assert t["rows"] == ["LIE", "STRIKE"] and t["cols"] == ["Median"]
        for a, row in (("lie", "LIE"), ("strike", "STRIKE")):
            cell = t["cells"][row]["Median"]
            assert cell["seeds"] == [0, 1] and cell["mean"] == pytest.approx(acc[(a, beta)] + 0.005)
            assert cell["std"] == pytest.approx(0.005)
    md = open(tmp_path / "sweep.md").read()
    assert md.count("### strike-jax sweep") == 2 and "; beta=0.5" in md and "**20.50 ± 0.50**" in md
    assert len(payload["runs"]) == 8 and payload["grid"] == {"beta": [0.1, 0.5], "attack": ["lie", "strike"],
                                                              "seed": [0, 1]}

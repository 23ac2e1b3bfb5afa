"""Unit tests of the sweep scripts' library: `strike_jax.report` (cells, tables, result files) and
the command-line helpers of `strike_jax.sweep` (no simulation runs here; `--set` and the other
`Config` options are tested with the options layer in test_cli.py).

Cells are checked against plain Python/NumPy references; the option types and the result guard
against the messages and exit codes a user sees.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import pytest

from strike_jax import registry, report, sweep
from strike_jax.config import Config, preset


def _fake_results(configs, table):
    out = []
    for c in configs:
        key = (c.attack, c.defence) if c.attack != "strike" else (c.attack, c.defence, sweep.nu_of(c))
        out.append({"best_accuracy": table[key][c.seed], "diverged": False})
    return out


# ---------------------------------------------------------------------------------------------
# Cells


def test_mean_std_drops_nan_and_none():
    m, s = report.mean_std([0.2, float("nan"), 0.4, None])
    assert (m, s) == pytest.approx((0.3, 0.1))
    assert all(math.isnan(x) for x in report.mean_std([None, float("nan")]))


def test_grid_and_strike_cell_is_best_over_nu():
    base = preset("digits", rounds=2)
    configs = sweep.grid(base, ("lie", "strike"), ("median", "dnc"), (0, 1), nu_grid=(0.5, 1.0))
    # lie: 2 defences x 2 seeds; strike: 2 defences x 2 nus x 2 seeds.
    assert len(configs) == 4 + 8
    assert len({sweep.run_id(c) for c in configs}) == len(configs)
    assert all(c.attack_params == {} for c in configs if c.attack == "lie")
    # nu=1.0 is lower on median, nu=0.5 on dnc.
    table = {("lie", "median"): [0.8, 0.6], ("lie", "dnc"): [0.9, 0.7],
             ("strike", "median", 0.5): [0.5, 0.7], ("strike", "median", 1.0): [0.4, 0.5],
             ("strike", "dnc", 0.5): [0.3, 0.1], ("strike", "dnc", 1.0): [0.6, 0.6]}
    cells = report.attack_cells(configs, _fake_results(configs, table))
    ref = lambda v: (float(np.mean(v)), float(np.std(v)))  # noqa: E731
    assert (cells["lie"]["median"]["mean"], cells["lie"]["median"]["std"]) == pytest.approx(ref([0.8, 0.6]))
    assert cells["lie"]["median"]["seeds"] == [0, 1]
    assert cells["strike"]["median"]["nu"] == 1.0
    assert cells["strike"]["median"]["mean"] == pytest.approx(0.45)
    assert cells["strike"]["dnc"]["nu"] == 0.5
    assert (cells["strike"]["dnc"]["mean"], cells["strike"]["dnc"]["std"]) == pytest.approx(ref([0.3, 0.1]))
    assert set(cells["strike"]["dnc"]["per_nu"]) == {"0.5", "1"}
    md = report.markdown_table("t", "attack", ["lie", "strike", "none"], ["median", "dnc"],
                               {**cells, "none": {"median": {"mean": 0.01, "std": 0.0}}}, reference_rows=("none",))
    # The lowest attack of each column is bold; the reference row never is.
    assert "**45.00 ± 5.00**" in md and "**20.00 ± 10.00**" in md and "**1.00" not in md
    assert "| Multi" not in md and "| Median | DnC |" in md and "| STRIKE |" in md
    json.dumps(report.jsonable({"cells": cells, 1.5: float("nan"), "c": base}), allow_nan=False)


def test_strike_cell_skips_nan_nu_and_ties_go_to_the_smallest_nu():
    base = preset("digits", rounds=2)
    configs = sweep.grid(base, ("strike",), ("median",), (0,), nu_grid=(2.0, 0.5, 1.0))
    table = {("strike", "median", 0.5): [0.4], ("strike", "median", 1.0): [0.4],
             ("strike", "median", 2.0): [float("nan")]}
    cell = report.attack_cells(configs, _fake_results(configs, table))["strike"]["median"]
    assert cell["nu"] == 0.5 and list(cell["per_nu"]) == ["0.5", "1", "2"]
    assert report.lowest({"a": {"mean": float("nan")}, "b": {"mean": 0.3}}) == "b"
    assert report.lowest({"a": {"mean": float("nan")}}) is None


def test_one_seed_prints_the_mean_alone():
    one = report.make_cell([(0, 0.8440, False)])
    two = report.make_cell([(0, 0.80, False), (1, 0.90, False)])
    half = report.make_cell([(0, 0.70, False), (1, float("nan"), False)])
    assert report.format_cell(one) == "84.40"
    assert report.format_cell(two) == "85.00 ± 5.00"
    assert report.format_cell(half) == "70.00"  # one seed with a value
    assert report.format_cell(report.make_cell([(0, float("nan"), True)])) == "n/a"
    assert report.format_cell(None) == "—"
    assert report.format_cell(report.make_cell([(0, 0.5, True), (1, 0.7, False)])) == "60.00 ± 10.00†"
    assert report.format_cell(dict(one, nu=0.5), nu=True) == "84.40 (ν=0.5)"
    assert report.format_cell(two, scale=1, spec=".3f", std_spec=".1g") == "0.850 ± 0.05"
    md = report.markdown_table("t", "attack", ["lie"], ["median"], {"lie": {"median": one}})
    assert "± 0.00" not in md and "**84.40**" in md


def test_describe_and_footer():
    args = argparse.Namespace(seeds=(0, 1), scale="local")
    line = report.describe(preset("digits"), args)
    assert line.startswith("digits (mlp), N=20 clients, n=20 per round, Dirichlet β=0.5, Byzantine ratio 0.2")
    assert line.endswith("seeds 0,1, scale=local")
    foot = report.run_footer({"runs": 3, "computed": 1, "reused": 2, "out_dir": "x", "wall_time_s": 1.4})
    assert "Runs: 3 (1 computed in this invocation, 2 reused) in `x`" in foot and report.CELLS_NOTE in foot


# ---------------------------------------------------------------------------------------------
# Result files


def _args(tmp_path, overwrite=False):
    return argparse.Namespace(script="t", overwrite=overwrite, root=str(tmp_path))


def test_check_results_refuses_another_setting(tmp_path, capsys):
    stem = str(tmp_path / "results" / "table1_digits")
    base = preset("digits", rounds=20)
    spec = {"seeds": [0, 1], "nu_grid": [0.5, 1.0], "attacks": ["lie", "none"], "base_config": base}
    args = _args(tmp_path)
    report.check_results(stem, spec, args)  # no file yet
    report.write_results(stem, "| md |\n", {**spec, "cells": {}, "stats": {}})
    assert json.load(open(stem + ".json"))["base_config"]["rounds"] == 20
    assert not [f for f in os.listdir(tmp_path / "results") if f.startswith(".tmp-")]
    capsys.readouterr()
    report.check_results(stem, dict(spec), args)  # the same setting: rewriting it is fine
    for change, named in [({"seeds": [0]}, "seeds: [1] only there"),
                          ({"attacks": ["lie"]}, 'attacks: ["none"] only there'),
                          ({"base_config": base.replace(rounds=3)}, "base_config.rounds: 20 there, 3 here")]:
        with pytest.raises(SystemExit) as e:
            report.check_results(stem, {**spec, **change}, args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "--overwrite" in err
        assert err.startswith("t: error: results/table1_digits.json holds a result computed with another setting")
        report.check_results(stem, {**spec, **change}, _args(tmp_path, overwrite=True))
    # A result written before a Config field existed is the same setting if every recorded field agrees.
    stored = json.load(open(stem + ".json"))
    del stored["base_config"]["skew_metrics"]
    with open(stem + ".json", "w") as fh:
        json.dump(stored, fh)
    report.check_results(stem, spec, args)
    with pytest.raises(SystemExit):
        report.check_results(stem, {**spec, "base_config": base.replace(skew_metrics=True, rounds=3)}, args)
    # Something that is not JSON is not silently replaced either.
    with open(stem + ".json", "w") as fh:
        fh.write("{not json")
    with pytest.raises(SystemExit):
        report.check_results(stem, spec, args)
    assert "cannot be read" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Options


def test_parse_seeds_and_lists():
    assert sweep.parse_seeds("3") == (0, 1, 2)
    assert sweep.parse_seeds("0,4,7") == (0, 4, 7)
    assert sweep.parse_seeds("2-4") == (2, 3, 4)
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            sweep.parse_seeds(bad)
    assert sweep.parse_floats("0.5,1") == (0.5, 1.0)
    assert sweep.parse_ints("2, 6") == (2, 6)
    for parse, bad in ((sweep.parse_floats, "x"), (sweep.parse_ints, "1.5"), (sweep.parse_ints, ",")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_names_type_checks_registry_names():
    attacks = sweep.names_type("attack")
    assert attacks("lie, strike") == ("lie", "strike")
    assert attacks("none") == ("none",)  # no attack is allowed where attacks are
    for name in registry.names("attack"):
        assert attacks(name) == (name,)
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown attack 'foo'; allowed: none, .*strike"):
        attacks("lie,foo")
    rules = sweep.names_type("rule")
    assert rules("krum,dnc") == ("krum", "dnc")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown defence 'none'; allowed: .*multikrum"):
        rules("none")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown defence 'nnm'"):
        rules("nnm")  # a pre-aggregator is not a rule
    assert sweep.names_type("rule", single=True)("dnc") == "dnc"
    with pytest.raises(argparse.ArgumentTypeError, match="one name"):
        sweep.names_type("rule", single=True)("dnc,median")
    assert sweep.names_type(("a", "b"))("b,a") == ("b", "a")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown name 'c'; allowed: a, b"):
        sweep.names_type(("a", "b"))("c")


def test_parser_errors_are_one_line_exit_2(tmp_path, capsys):
    p = sweep.make_parser(str(tmp_path / "exp" / "demo.py"), "doc")
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--scale", "huge"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo: error: argument --scale: invalid choice: 'huge'")
    args = sweep.parse_args(p, ["--seeds", "1"])
    assert args.seeds == (0,) and args.dataset == "digits" and args.results_dir == str(tmp_path / "exp" / "results")
    assert args.out_dir == str(tmp_path / "exp" / "runs" / "demo") and args.root == str(tmp_path)
    assert sweep.parse_args(p, ["--scale", "paper"]).seeds == (0, 1, 2, 3, 4)


def test_heatmap_draws_every_cell(tmp_path):
    pytest.importorskip("matplotlib")
    drawn = {}
    real_save = report.save_figure

    def save(fig, path):
        ax = fig.axes[0]
        drawn["texts"] = [t.get_text() for t in ax.texts]
        drawn["outlined"] = [(p.get_x(), p.get_y()) for p in ax.patches]
        drawn["rows"] = [t.get_text() for t in ax.get_yticklabels()]
        real_save(fig, path)

    report.save_figure = save
    try:
        path = str(tmp_path / "h.png")
        report.heatmap(path, "t", ["median", "mean"], ["none", "lie"],
                       {"median": {"none": 89.6, "lie": 40.2}, "mean": {"none": 90.0, "lie": math.nan}},
                       marked={"median": "lie", "mean": "lie"}, labels={"mean": {"lie": "div"}})
    finally:
        report.save_figure = real_save
    assert drawn["texts"] == ["90", "40", "90", "div"] and drawn["rows"] == ["Median", "Mean"]
    assert drawn["outlined"] == [(0.5, -0.5), (0.5, 0.5)]  # the marked cells: column 1 of rows 0 and 1
    assert os.path.getsize(path) > 0

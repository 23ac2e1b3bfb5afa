"""Smoke and unit tests of the paper-reproduction scripts in `experiments/` (SPEC §8).

The scripts are imported as modules of the `experiments` package (as `python -m experiments.<name>`
runs them, without editing `sys.path`). The LLE helpers are checked against plain NumPy
references; bad options must stop a script with one line and exit code 2 before any data loads or
run starts; the README's commands must not replace a committed result with another setting; two
scripts (Table 1 and the LLE figure) run end to end at a tiny scale (digits, 2 rounds, 1 seed) into
temporary folders, and a second invocation must reuse the finished runs instead of recomputing them
(the library parts are tested in test_report.py).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from strike_jax import report, simulation, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def _load(name: str):
    return importlib.import_module(f"experiments.{name}")


def test_row_space_coordinates_keep_distances_and_lle_rule():
    lle = _load("figure_lle")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 300)).astype(np.float32)
    x[8] = x[7]  # a duplicate row (all Byzantine clients send the same vector)
    y = lle.row_space_coordinates(x)
    x64 = x.astype(np.float64)
    for i in range(9):
        for j in range(9):
            ref = math.sqrt(sum((x64[i, k] - x64[j, k]) ** 2 for k in range(300)))
            assert np.linalg.norm(y[i] - y[j]) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert lle.lle_neighbors(20, 21) == 2
    assert lle.lle_neighbors(100, 101) == 10
    assert lle.lle_neighbors(50, 4) == 3  # capped below the number of points
    e = lle.embed_round(x, np.array([False] * 6 + [True] * 3), x, include_byzantine=True)
    assert len(e["honest"]) == 6 and len(e["byzantine"]) == 3 and len(e["mean"]) == 2
    assert np.isfinite(np.asarray(e["honest"])).all()


# ---------------------------------------------------------------------------------------------
# End to end at a tiny scale


def _mtimes(root: str) -> dict[str, float]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f == "result.json":
                out[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return out


def test_table1_runs_and_resumes(tmp_path, capsys):
    table1 = _load("table1")
    out, res = str(tmp_path / "runs"), str(tmp_path / "results")
    argv = ["--rounds", "2", "--seeds", "1", "--attacks", "lie,strike", "--defences", "median,dnc",
            "--nu-grid", "1.0", "--out-dir", out, "--results-dir", res, "--quiet", "--no-plot"]
    assert table1.main(argv) == 0
    with open(os.path.join(res, "table1_digits.json")) as fh:
        payload = json.load(fh)
    assert payload["stats"]["computed"] == 4 and payload["stats"]["reused"] == 0
    for a in ("lie", "strike"):
        for d in ("median", "dnc"):
            cell = payload["cells"][a][d]
            assert 0.0 <= cell["mean"] <= 1.0 and cell["seeds"] == [0]
    assert payload["cells"]["strike"]["median"]["nu"] == 1.0
    md = open(os.path.join(res, "table1_digits.md")).read()
    assert "| STRIKE |" in md and "| LIE |" in md
    rows = [line for line in md.splitlines() if line.startswith("| LIE |") or line.startswith("| STRIKE |")]
    assert len(rows) == 2 and not any("±" in r for r in rows)  # one seed: the value alone
    cell = payload["cells"]["lie"]["median"]
    assert f"{100 * cell['mean']:.2f}" in rows[0]
    before = _mtimes(out)
    assert len(before) == 4
    # Second invocation: nothing recomputed, same numbers.
    assert table1.main(argv) == 0
    with open(os.path.join(res, "table1_digits.json")) as fh:
        again = json.load(fh)
    assert again["stats"]["computed"] == 0 and again["stats"]["reused"] == 4
    assert again["cells"] == payload["cells"]
    assert _mtimes(out) == before
    assert not [f for f in os.listdir(res) if f.startswith(".tmp-")]
    # Another setting into the same results: refused before anything runs, unless --overwrite.
    stored = open(os.path.join(res, "table1_digits.json")).read()
    with pytest.raises(SystemExit) as e:
        table1.main([*argv, "--seeds", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "table1_digits.json holds a result computed with another setting (seeds: [1] only here)" in err
    assert open(os.path.join(res, "table1_digits.json")).read() == stored and _mtimes(out) == before
    with pytest.raises(SystemExit) as e:
        table1.main([*argv, "--seeds", "2", "--overwrite", "--dry-run"])
    assert e.value.code == 0


def test_figure_lle_strike(tmp_path):
    lle = _load("figure_lle")
    out, res = str(tmp_path / "runs"), str(tmp_path / "results")
    argv = ["--rounds", "1", "--seeds", "1", "--vis-rounds", "0", "--attack", "strike", "--defence", "median",
            "--out-dir", out, "--results-dir", res, "--quiet"]
    assert lle.main(argv) == 0
    stem = os.path.join(res, "figure_lle_digits_strike_median")
    with open(stem + ".json") as fh:
        payload = json.load(fh)
    assert sorted(payload["embeddings"]) == ["0"]
    e = payload["embeddings"]["0"]
    n = payload["config"]["clients_per_round"]
    f = math.ceil(payload["config"]["byzantine_ratio"] * payload["config"]["num_clients"])
    assert len(e["honest"]) == n - f and len(e["byzantine"]) == f
    assert len(payload["skew_by_round"]) == 1
    assert all(math.isfinite(h["skewness"]) for h in payload["skew_by_round"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert os.path.getsize(stem + ".png") > 0
    # Cached embeddings: a second invocation only redraws.
    cache = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("lle_")]
    assert len(cache) == 1
    t = os.stat(cache[0]).st_mtime_ns
    assert lle.main(argv + ["--no-plot"]) == 0
    assert os.stat(cache[0]).st_mtime_ns == t


# ---------------------------------------------------------------------------------------------
# Bad options: one line, exit code 2, before any data loads or run starts; nothing written


def _forbid(monkeypatch, *, data: bool):
    def fail(*a, **k):
        raise AssertionError("work started on bad input")

    monkeypatch.setattr(sweep, "run_sweep", fail)
    monkeypatch.setattr(simulation, "simulate_many", fail)
    if data:
        monkeypatch.setattr(simulation, "load_dataset", fail)


ATTACK_NAMES = "allowed: none, strike, bitflip"
BAD_OPTIONS = [
    ("table1", ["--attacks", "lie,foo"], f"argument --attacks: unknown attack 'foo'; {ATTACK_NAMES}"),
    ("table1", ["--defences", "median,foo"], "unknown defence 'foo'; allowed: mean, median"),
    ("table2_nnm", ["--attacks", "bar"], f"unknown attack 'bar'; {ATTACK_NAMES}"),
    ("table2_nnm", ["--defences", "nnm"], "unknown defence 'nnm'; allowed: mean, median"),
    ("figure7_nu", ["--baselines", "foo"], f"unknown attack 'foo'; {ATTACK_NAMES}"),
    ("figure7_nu", ["--defences", "foo"], "unknown defence 'foo'"),
    ("figure8_beta", ["--defence", "foo"], "unknown defence 'foo'"),
    ("figure9_f", ["--attacks", "foo"], "unknown attack 'foo'"),
    ("figure10_n", ["--attacks", "strike,foo"], "unknown attack 'foo'"),
    ("figure_lle", ["--attack", "foo"], "unknown attack 'foo'"),
    ("figure_lle", ["--defence", "foo"], "unknown defence 'foo'"),
    ("table1", ["--set", "foo=1"], "unknown Config field 'foo'; allowed: dataset, data_dir, dataset_params, model"),
    ("table1", ["--set", "rounds=abc"], "rounds='abc': Config.rounds needs an integer"),
    ("skew_vs_beta", ["--set", "byzantine_ratio=1.5"], "Config.byzantine_ratio=1.5 is invalid: need 0 <= r < 1"),
    ("figure7_nu", ["--set", "clients_per_round=50"], "Config.clients_per_round=50 is invalid"),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("script,argv,message", BAD_OPTIONS, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_OPTIONS])
def test_bad_options_stop_with_one_line(tmp_path, monkeypatch, capsys, script, argv, message, dry_run):
    _forbid(monkeypatch, data=True)
    mod = _load(script)
    out, res = tmp_path / "runs", tmp_path / "results"
    with pytest.raises(SystemExit) as e:
        mod.main([*argv, "--out-dir", str(out), "--results-dir", str(res), "--quiet"]
                 + (["--dry-run"] if dry_run else []))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{script}: error: ") and message in err, err
    assert not out.exists() and not res.exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_byzantine_count_beyond_a_rule_stops_before_any_run(tmp_path, monkeypatch, capsys, dry_run):
    _forbid(monkeypatch, data=dry_run)
    argv = ["--attacks", "lie", "--defences", "median,krum", "--seeds", "1", "--set", "byzantine_ratio=0.45",
            "--out-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    with pytest.raises(SystemExit) as e:
        _load("table1").main(argv + (["--dry-run"] if dry_run else []))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "krum tolerates at most f=8 Byzantine rows among n=20; got f=9" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_runs_as_a_module_without_sys_path_edits():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-m", "experiments.table1", "--attacks", "foo", "--dry-run"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("table1: error: argument --attacks: unknown attack 'foo'; allowed: none,")
    for name in os.listdir(EXPERIMENTS):
        if name.endswith(".py"):
            assert "sys.path" not in re.sub(r'""".*?"""', "", open(os.path.join(EXPERIMENTS, name)).read(),
                                            flags=re.S), name


def test_readme_commands_do_not_replace_committed_results(monkeypatch):
    """Every `python -m experiments.<sweep script>` command of experiments/README.md either writes
    where no result is, or reproduces the committed result's setting (so never overwrites it with
    other numbers; the quick commands write under another --results-dir)."""
    monkeypatch.chdir(ROOT)
    readme = open(os.path.join(EXPERIMENTS, "README.md")).read()
    commands = re.findall(r"^python -m experiments\.(\w+)(.*)$", readme, flags=re.M)
    commands = [(name, rest) for name, rest in commands if not name.startswith("bench_")]
    assert len(commands) >= 20 and {n for n, _ in commands} >= {"table1", "table2_nnm", "figure_lle"}
    real = report.check_results
    checked = []

    class Checked(Exception):
        pass

    def check(stem, spec, args):
        real(stem, spec, args)  # exits 2 on another setting
        checked.append(stem)
        raise Checked

    monkeypatch.setattr(report, "check_results", check)
    for name, rest in commands:
        argv = shlex.split(rest.split("#")[0])
        with pytest.raises(Checked):
            _load(name).main([os.path.expanduser(a) for a in argv] + ["--dry-run", "--quiet"])
    committed = {os.path.join(EXPERIMENTS, "results", f[:-5]) for f in os.listdir(os.path.join(EXPERIMENTS, "results"))
                 if f.endswith(".json") and not f.startswith("bench_")}
    assert committed <= {os.path.abspath(s) for s in checked}  # each committed result has its command


# ---------------------------------------------------------------------------------------------
# The worst-case table (issue 11)


def test_worst_case_runs_and_resumes(tmp_path, capsys):
    wc = _load("worst_case")
    out, res = str(tmp_path / "runs"), str(tmp_path / "results")
    argv = ["--rounds", "1", "--attacks", "signflip,lie", "--defences", "mean,median", "--out-dir", out,
            "--results-dir", res, "--quiet", "--no-plot"]
    assert wc.main(argv) == 0
    with open(os.path.join(res, "worst_case_digits.json")) as fh:
        payload = json.load(fh)
    assert payload["seeds"] == [0] and payload["excluded"] == {}
    assert payload["stats"]["computed"] == 6 and payload["stats"]["reused"] == 0  # + the no-attack column
    cells = payload["cells"]
    assert set(cells) == {"none", "signflip", "lie"}
    for d in ("mean", "median"):
        vals = {a: cells[a][d]["mean"] for a in ("signflip", "lie")}
        assert all(0.0 <= v <= 1.0 for v in vals.values())
        assert payload["worst"][d] == min(vals, key=vals.get)
    md = open(os.path.join(res, "worst_case_digits.md")).read()
    for d in ("mean", "median"):
        a = payload["worst"][d]
        row = next(line for line in md.splitlines() if line.startswith(f"| {report.display(d)} | "))
        assert f"{100 * cells[a][d]['mean']:.2f} | {wc.label(a)} |" in row
    assert "| SignFlip |" in md and "| no attack |" in md
    before = _mtimes(out)
    assert len(before) == 6
    # Second invocation: nothing recomputed, same table.
    assert wc.main(argv) == 0
    with open(os.path.join(res, "worst_case_digits.json")) as fh:
        again = json.load(fh)
    assert again["stats"]["computed"] == 0 and again["stats"]["reused"] == 6
    assert again["cells"] == cells and _mtimes(out) == before
    # Another setting into the same results is refused before anything runs.
    with pytest.raises(SystemExit) as e:
        wc.main([*argv, "--attacks", "lie"])
    assert e.value.code == 2 and "worst_case_digits.json holds a result computed with another setting" in \
        capsys.readouterr().err


def test_worst_case_columns_exclusions_and_worst():
    wc = _load("worst_case")
    from strike_jax import registry
    from strike_jax.config import preset

    variants = wc.attack_variants()
    assert "none" not in variants and {"strike", "fang", "fang_krum"} <= set(variants)
    assert variants["fang_krum"] == ("fang", {"target": "krum"})
    assert {name for name, _ in variants.values()} == set(registry.names("attack"))
    assert set(wc.default_attacks()) == set(variants) - set(wc.OPT_IN) and set(wc.OPT_IN) <= set(variants)
    # Fashion-MNIST's n = 50, f = 10 is beyond MDA's exact search: left out, with the reason.
    why = wc.runnable(preset("fashion_mnist").replace(defence="mda", attack="lie"))
    assert why is not None and "mda tolerates at most f=3" in why
    assert wc.runnable(preset("digits").replace(defence="mda", attack="lie")) is None
    # MoNNA trusts an honest row: the Byzantine clients are ids 0 .. f-1, the rows in client order.
    assert wc.RULE_PARAMS["monna"](preset("digits")) == {"idx": 19}
    cell = report.make_cell
    cells = {"lie": cell([(0, 0.5, False)]), "ipm": cell([(0, 0.3, False)]), "nonfinite": cell([(0, math.nan, True)])}
    assert wc.worst_attack(cells) == "nonfinite"  # a diverged run is worse than any accuracy
    del cells["nonfinite"]
    assert wc.worst_attack(cells) == "ipm"
    assert wc.verdicts(cells["ipm"], cell([(0, 0.9, False)]), 0.1) == ["degraded"]
    assert wc.verdicts(cell([(0, 0.15, False)]), cell([(0, 0.2, False)]), 0.1) == ["broken"]

"""Bad input fails fast and clearly; nothing is lost on interruption; results people can share (issue 12)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys

import jax
import numpy as np
import pytest

from strike_jax import cli, simulate
from strike_jax.config import Config, preset
from strike_jax.simulation import CHECKPOINT, RESULT, ROUNDS_CSV, Interrupted, read_checkpoint_meta

TIMING_KEYS = ("time_train_s", "time_server_s", "time_round_s")


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=6, clients_per_round=6, rounds=3, batch_size=32,
                attack="lie", defence="median")
    base.update(overrides)
    return Config(**base)


def strip(history):
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in history]


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# --- one-line errors before any work --------------------------------------------------------------


@pytest.mark.parametrize("argv,match", [
    (["--attack", "lie", "--defence", "krum", "--byzantine-ratio", "0.45"], "krum tolerates at most f=8"),
    (["--attack", "lie", "--defence", "median", "--byzantine-ratio", "0.6"], "median tolerates at most f=9"),
    (["--data-dir", "/tmp"], "takes no data_dir"),
])
def test_cli_rejects_before_any_data_loads(argv, match, capsys, tmp_path, monkeypatch):
    from strike_jax import simulation

    def boom(*a, **k):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(simulation, "load_dataset", boom)
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["run", "--preset", "digits", "--run-dir", str(run_dir), *argv], capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists() or not any(run_dir.iterdir())  # nothing written


@pytest.mark.parametrize("argv,match", [
    (["--defence", "nnm"], "use --preagg nnm"),
    (["--attack", "foo"], "unknown attack 'foo'"),
    (["--preagg", "median"], "unknown pre-aggregator"),
    (["--strategy", "fast"], "invalid choice"),
])
def test_cli_rejects_bad_names(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--preset", "digits", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_beyond_breakdown_needs_the_opt_in_and_is_recorded():
    cfg = tiny(num_clients=10, clients_per_round=10, byzantine_ratio=0.5, rounds=1)
    with pytest.raises(ValueError, match="tolerates at most f=4"):
        simulate(cfg)
    res = simulate(cfg.replace(allow_beyond_breakdown=True))
    assert res["config"]["allow_beyond_breakdown"] is True
    assert res["rounds"][0]["num_byzantine"] == 5 and res["rounds"][0]["f_above_limit"] is True


def test_run_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli(["run", "--preset", "digits", "--run-dir", str(f), "--quiet"], capsys)
    assert code == 2 and "is a file" in err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, _, err = run_cli(["run", "--preset", "digits", "--run-dir", str(ro / "x"), "--quiet"], capsys)
        assert code == 2 and "cannot be created" in err


def test_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    assert "strike" in text and "median" in text and "(default 'median')" not in text
    assert "(default 'mean')" in text and "{auto,measure,packed" in text and "(default 10)" in text


# --- interruption, resume, extension --------------------------------------------------------------


def test_ctrl_c_checkpoints_and_resumes_exactly(tmp_path):
    cfg = tiny(rounds=5, attack="mimic", defence="cclip")  # stateful attack and rule
    straight = simulate(cfg)
    run_dir = str(tmp_path / "run")

    def interrupt_after_round(r, *arrays):
        if r == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as e:
        simulate(cfg, run_dir=run_dir, on_updates=interrupt_after_round, checkpoint_every=100)
    assert "after round 2 of 5" in e.value.message and "resume" in e.value.message
    meta = read_checkpoint_meta(os.path.join(run_dir, CHECKPOINT))
    assert meta["next_round"] == 2 and len(meta["history"]) == 2
    resumed = simulate(cfg, run_dir=run_dir)
    assert strip(resumed["rounds"]) == strip(straight["rounds"])


def test_cli_ctrl_c_exits_130_with_a_resume_hint(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "strike_jax.cli", "run", "--preset", "digits", "--rounds", "100000", "--run-dir",
           str(run_dir), "--quiet", "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait until the run is in its round loop (first checkpoint written)
            if (run_dir / ROUNDS_CSV).exists() or proc.poll() is not None:
                break
            import time

            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    meta = read_checkpoint_meta(str(run_dir / CHECKPOINT))
    assert meta["next_round"] >= 5 and len(meta["history"]) == meta["next_round"]


def test_time_based_checkpoints(tmp_path):
    run_dir = str(tmp_path / "run")
    simulate(tiny(rounds=4), run_dir=run_dir, checkpoint_every=1000, checkpoint_seconds=1e-9, stop_after=2)
    assert read_checkpoint_meta(os.path.join(run_dir, CHECKPOINT))["next_round"] == 2


def test_extending_a_finished_run_continues_it(tmp_path):
    run_dir = str(tmp_path / "run")
    short = simulate(tiny(rounds=2), run_dir=run_dir)
    assert short["finished"]
    longer = simulate(tiny(rounds=4), run_dir=run_dir)
    assert longer["completed_rounds"] == 4 and strip(longer["rounds"][:2]) == strip(short["rounds"])
    assert strip(longer["rounds"]) == strip(simulate(tiny(rounds=4))["rounds"])
    with pytest.raises(ValueError, match="more than the 3 requested"):
        os.remove(os.path.join(run_dir, RESULT))
        simulate(tiny(rounds=3), run_dir=run_dir)


def test_config_mismatch_names_only_the_differing_fields(tmp_path):
    run_dir = str(tmp_path / "run")
    simulate(tiny(rounds=2), run_dir=run_dir, stop_after=1)
    with pytest.raises(ValueError) as e:
        simulate(tiny(rounds=2, seed=7, lr=0.05), run_dir=run_dir)
    msg = str(e.value)
    assert "seed: 0 there, 7 requested" in msg and "lr: 0.1 there, 0.05 requested" in msg
    assert "dataset" not in msg and len(msg.splitlines()) == 1


def test_mean_round_time_leaves_out_compiling_rounds(tmp_path):
    run_dir = str(tmp_path / "run")
    simulate(tiny(rounds=4), run_dir=run_dir, stop_after=2)
    res = simulate(tiny(rounds=4), run_dir=run_dir)
    assert res["compile_rounds"] == [0, 2]
    steady = [h["time_round_s"] for h in res["rounds"] if h["round"] in (1, 3)]
    assert res["mean_round_time_s"] == pytest.approx(np.mean(steady))


# --- results people can use -----------------------------------------------------------------------


def test_files_follow_the_umask_and_rounds_csv(tmp_path):
    old = os.umask(0o022)
    try:
        run_dir = tmp_path / "run"
        res = simulate(tiny(rounds=3), run_dir=str(run_dir))
    finally:
        os.umask(old)
    for name in (RESULT, CHECKPOINT, ROUNDS_CSV):
        assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o644, name
    lines = (run_dir / ROUNDS_CSV).read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 4 and header[0] == "round" and "accuracy" in header
    acc = [float(line.split(",")[header.index("accuracy")]) for line in lines[1:]]
    assert acc == [h["accuracy"] for h in res["rounds"]]


def test_plot_command_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    dirs = []
    for seed in (0, 1):
        d = tmp_path / f"run{seed}"
        simulate(tiny(rounds=2, seed=seed), run_dir=str(d))
        dirs.append(str(d))
    out = tmp_path / "curves.png"
    code, text, err = run_cli(["plot", *dirs, "--out", str(out)], capsys)
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", err
    code, _, err = run_cli(["plot", dirs[0], "--metric", "nope"], capsys)
    assert code == 2 and "allowed metrics" in err


def test_config_is_read_only_and_hashable():
    cfg = preset("digits", attack="strike", attack_params={"nu": 1.5})
    with pytest.raises(TypeError, match="read-only"):
        cfg.attack_params["nu"] = 2.0
    assert hash(cfg) == hash(Config.from_dict(json.loads(cfg.to_json())))
    assert {cfg: 1}[cfg.replace()] == 1


# --- training details -------------------------------------------------------------------------------


def test_labelflip_changes_only_byzantine_rows():
    rows = {}

    def keep(name):
        def cb(r, updates, byz, sent):
            if r == 0:
                rows[name] = (updates, byz)
        return cb

    cfg = tiny(rounds=1, defence="mean", byzantine_ratio=0.34)
    simulate(cfg.replace(attack="labelflip"), on_updates=keep("flip"))
    simulate(cfg.replace(attack="none"), on_updates=keep("none"))
    (flip, byz), (clean, _) = rows["flip"], rows["none"]
    assert byz.sum() == 3
    np.testing.assert_array_equal(flip[~byz], clean[~byz])
    assert all(not np.allclose(flip[i], clean[i]) for i in np.flatnonzero(byz))


def test_skew_diagnostic_is_a_switch():
    off = simulate(tiny(rounds=1))
    on = simulate(tiny(rounds=1, skew_metrics=True))
    assert off["rounds"][0]["skewness"] is None and np.isfinite(on["rounds"][0]["skewness"])
    assert off["rounds"][0]["accuracy"] == on["rounds"][0]["accuracy"]


def test_progress_bar_stays_and_shows_the_steady_rate_and_accuracy(capsys, monkeypatch):
    """tqdm's rate (and so its ETA) counts only the rounds after compiling. The bar's clock is a fake
    one the rounds advance (100 s for the compiling round, 2 s for each other): the shown rate is
    exactly 2 s a round, not (100 + 2 + 2) / 3."""
    import tqdm.std

    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])

    def tick(r, *arrays):
        clock[0] += 100.0 if r == 0 else 2.0

    simulate(tiny(rounds=3), progress=True, on_updates=tick)
    err = capsys.readouterr().err
    final = err.split("\r")[-1]  # what stays on screen after the run (an erased bar leaves "")
    assert final.endswith("\n") and "3/3" in final and "s/round=" in final and "acc=" in final, repr(final)
    assert "(compiling)" not in final
    rate = re.search(r"([0-9.]+)(round/s|s/round)[,\]]", final)
    seconds = 1 / float(rate[1]) if rate[2] == "round/s" else float(rate[1])
    assert seconds == pytest.approx(2.0), final


def test_host_rounds_time_training_after_it_finishes(monkeypatch):
    """Host-driven strategies dispatch every step asynchronously: a clock read before blocking on the
    updates would book the training under the server step. The training's result here passes through
    a host callback that moves the (patched) clock 1000 s forward when it runs, i.e. when the
    training has finished: the training time must include that jump, the server time must not."""
    import time

    from strike_jax import training

    offset = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + offset[0])
    make = training.make_client_updates

    def make_with_a_finish_line(model, cfg, strategy="steps"):
        inner = make(model, cfg, strategy)

        def client_updates(*args):
            U, stats = inner(*args)

            def finished(u):
                offset[0] += 1000.0
                return u

            return jax.pure_callback(finished, jax.ShapeDtypeStruct(U.shape, U.dtype), U), stats

        client_updates.strategy = inner.strategy
        return client_updates

    monkeypatch.setattr(training, "make_client_updates", make_with_a_finish_line)
    # Shapes no other test uses (batch 7, 3 local epochs, 5 clients): the program is built here.
    res = simulate(tiny(rounds=2, strategy="steps", num_clients=5, clients_per_round=5, local_epochs=3, batch_size=7,
                        attack="none", defence="mean"))
    for rec in res["rounds"]:
        assert rec["time_train_s"] >= 1000.0 and rec["time_server_s"] < 1000.0, rec

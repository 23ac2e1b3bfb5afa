"""ByzFL's own benchmark runner against `strike-jax byzfl` on the same config (issue 22, item 5).

    python -m experiments.bench_byzfl --peer-python /work/wt/_venvs/peers/bin/python
    python -m experiments.bench_byzfl --probe                  # ByzFL's step time, cnn_mnist vs fc_mnist
    python -m experiments.bench_byzfl --peer-only              # only ByzFL's side (its JSON, to reuse)
    python -m experiments.bench_byzfl --peer-results FILE      # reuse a finished ByzFL side
    python -m experiments.bench_byzfl --init-check 6           # honest runs over 6 data seeds (initial models)
    python -m experiments.bench_byzfl --batch-scaling 1,2,4    # our round time, R runs of one cell batched

One invocation writes a ByzFL 0.0.11 benchmark config (Fashion-MNIST from the Debian package, made
into torchvision's layout `<tmp>/FashionMNIST/raw/...` in a temporary folder), runs it with ByzFL's
`run_benchmark` in the peers' interpreter (`--peer-python`: a separate virtual environment with
torch and byzfl; ByzFL is never imported by strike_jax or this script's own process) and with
`strike_jax.byzfl.run` in a fresh process (so its wall time includes imports, data loading and
compilation), then reads both result folders (ByzFL's layout, written by both) and writes
`experiments/results/bench_byzfl_cpu.md` / `.json`: wall time per run and in total, steps per
second, every cell's final and best test accuracy from both (per seed, mean, spread) and the
speed-up.

Grid (>= 12 cells; ByzFL's example config otherwise: DSGD, 10 honest clients, lr 0.1, momentum 0.9,
weight decay 1e-4, batch 25, evaluation every 50 steps, `gamma_similarity_niid`): NNM + {TrMean,
GeometricMedian, MultiKrum, Median} x {SignFlipping, ALittleIsEnough, InnerProductManipulation}, f=2,
200 steps, 2 training seeds, gamma 1.0. Two departures from the example, both for ByzFL's time on
this CPU: no Optimal_* attacks (ByzFL's line search takes seconds a step) and `size_train_set` 1.0
(no validation split: with one hyper-parameter combination ByzFL's max-min choice has nothing to
choose, and its validation pass would double its evaluation time, which already dominates: ~10 s a
test-set pass on the loaded machine). The model is chosen by `--probe` (ByzFL's 5-step probe).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "experiments", "results")
FASHION_GZ = "/usr/share/datasets/fashion-mnist"
PEER_PYTHON = "/work/wt/_venvs/peers/bin/python"
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

AGGREGATORS = [{"name": "TrMean", "parameters": {}},
               {"name": "GeometricMedian", "parameters": {"nu": 0.1, "T": 3}},
               {"name": "MultiKrum", "parameters": {}},
               {"name": "Median", "parameters": {}}]
ATTACKS = [{"name": "SignFlipping", "parameters": {}},
           {"name": "ALittleIsEnough", "parameters": {}},
           {"name": "InnerProductManipulation", "parameters": {}}]


def bench_config(model: str, steps: int, seeds: int, data_folder: str, results_directory: str, *,
                 aggregators=None, attacks=None, evaluation_delta: int = 50, data_seeds: int = 1) -> dict:
    """The benchmark's ByzFL config (ByzFL's example values where the grid does not say otherwise)."""
    return {
        "benchmark_config": {
            "training_algorithm": {"name": "DSGD", "parameters": {}},
            "nb_steps": steps, "device": "cpu", "training_seed": 0, "nb_training_seeds": seeds,
            "nb_honest_clients": 10, "f": 2, "data_distribution_seed": 0, "nb_data_distribution_seeds": data_seeds,
            "data_distribution": [{"name": "gamma_similarity_niid", "distribution_parameter": 1.0}],
            "size_train_set": 1.0,
        },
        "model": {"name": model, "dataset_name": "fashionmnist", "nb_labels": 10, "loss": "NLLLoss",
                  "learning_rate": 0.1, "learning_rate_decay": 1.0, "milestones": []},
        "aggregator": AGGREGATORS if aggregators is None else aggregators,
        "pre_aggregators": [{"name": "NNM", "parameters": {}}],
        "honest_clients": {"momentum": 0.9, "weight_decay": 0.0001, "batch_size": 25},
        "attack": ATTACKS if attacks is None else attacks,
        "evaluation_and_results": {"evaluation_delta": evaluation_delta, "batch_size_evaluation": 128,
                                   "evaluate_on_test": True, "store_per_client_metrics": False,
                                   "store_models": False, "data_folder": data_folder,
                                   "results_directory": results_directory},
    }


def torchvision_layout(root: str) -> str:
    """Fashion-MNIST's four IDX files, decompressed, in `<root>/FashionMNIST/raw` (torchvision's
    layout, where its `FashionMNIST(download=True)` finds them without downloading)."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name in _FILES:
        dst = os.path.join(raw, name)
        if not os.path.exists(dst):
            with gzip.open(os.path.join(FASHION_GZ, name + ".gz"), "rb") as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
    return root


# ------------------------------------------------------------------------------- ByzFL's side


def peer_worker(workdir: str, threads: int | None) -> None:
    """Runs in the peers' interpreter: ByzFL's `run_benchmark` on `workdir/config.json` (it reads the
    config from the working directory), timed."""
    os.chdir(workdir)
    if threads:
        import torch  # the peers' venv only

        torch.set_num_threads(threads)
    from byzfl.benchmark import run_benchmark  # the peers' venv only

    t0 = time.perf_counter()
    run_benchmark(1)
    with open(os.path.join(workdir, "peer_time.json"), "w") as fh:
        json.dump({"wall_s": time.perf_counter() - t0}, fh)


PEER_THREADS: int | None = None  # --peer-threads


def run_peer(peer_python: str, cfg: dict, workdir: str, log=None) -> dict:
    """ByzFL's side in a subprocess; returns {"wall_s", "results_directory"}."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    env = dict(os.environ, PYTHONPATH="")
    cmd = [peer_python, os.path.abspath(__file__), "--peer-worker", workdir]
    if PEER_THREADS:
        env["OMP_NUM_THREADS"] = str(PEER_THREADS)
        cmd += ["--peer-threads", str(PEER_THREADS)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env,
                   stdout=log, stderr=subprocess.STDOUT if log else None)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "results_directory": cfg["evaluation_and_results"]["results_directory"]}


def probe(peer_python: str, root: str, models=("cnn_mnist", "fc_mnist")) -> dict:
    """ByzFL's seconds per step and per evaluation for cnn_mnist and fc_mnist: runs of 1 and 6 steps
    (each evaluates twice, at step 0 and after the last), read from ByzFL's own train_time files
    (its training loop, data loading excluded)."""
    out: dict = {}
    for steps in (1, 6):
        for model in models:
            work = os.path.join(root, f"probe_{model}_{steps}")
            cfg = bench_config(model, steps, 1, root, os.path.join(work, "results"),
                               aggregators=AGGREGATORS[:1], attacks=ATTACKS[:1], evaluation_delta=1000)
            run_peer(peer_python, cfg, work)
            res = os.path.join(work, "results")
            (folder,) = [d for d in os.listdir(res) if d.startswith(f"fashionmnist_{model}_")]
            out.setdefault(model, {})[steps] = float(np.loadtxt(os.path.join(res, folder,
                                                                              "train_time_tr_seed_0_dd_seed_0.txt")))
    for model, t in out.items():
        step = (t[6] - t[1]) / 5
        evaluation = max(t[1] - step, 0.0) / 2
        out[model] = {"run_1_step_s": t[1], "run_6_steps_s": t[6], "step_s": step, "evaluation_s": evaluation}
    return out


def byzfl_reads(peer_python: str, results_directory: str, plots: str) -> dict:
    """ByzFL's own `evaluate_results` functions run on strike_jax's results (in the peers'
    interpreter): whether they read them, and the figures they drew."""
    code = ("import sys\nfrom byzfl.benchmark import evaluate_results as E\n"
            "r, p = sys.argv[1], sys.argv[2]\n"
            "for f in (E.test_heatmap, E.loss_heatmap, E.aggregated_test_heatmap, E.test_accuracy_curve):\n"
            "    f(r, p)\n")
    proc = subprocess.run([peer_python, "-c", code, results_directory, plots], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH="", MPLBACKEND="Agg"))
    drawn = sorted(os.listdir(plots)) if os.path.isdir(plots) else []
    return {"ok": proc.returncode == 0 and "ERROR" not in proc.stdout, "figures": drawn,
            "output": (proc.stdout + proc.stderr)[-2000:]}


# ------------------------------------------------------------------------------ reading results


def read_layout(cfg: dict, results_directory: str) -> dict:
    """The finished runs of `cfg` (those with ByzFL's `train_time` file, written last) read from
    ByzFL's result layout (either side's): {folder: {seed: {"test_acc", "train_time_s", "end",
    "train_loss"}}}, `seed` the training seed (`"<seed>/dd<data seed>"` beyond the first data seed)."""
    from strike_jax import byzfl

    out: dict = {}
    for spec in byzfl.expand(cfg):
        d = os.path.join(results_directory, spec.folder)
        tag = f"tr_seed_{spec.seed}_dd_seed_{spec.data_seed}"
        t = os.path.join(d, f"train_time_{tag}.txt")
        if not os.path.exists(t):
            continue
        loss = os.path.join(d, f"train_loss_{tag}.txt")
        row = {"test_acc": np.atleast_1d(np.genfromtxt(os.path.join(d, f"test_accuracy_{tag}.txt"),
                                                       delimiter=",")).tolist(),
               "train_time_s": float(np.loadtxt(t)), "end": os.path.getmtime(t),
               "train_loss": (np.atleast_1d(np.genfromtxt(loss, delimiter=",")).tolist()
                              if os.path.exists(loss) else None),
               "data_seed": spec.data_seed}
        key = str(spec.seed) if spec.data_seed == cfg["benchmark_config"].get("data_distribution_seed", 0) \
            else f"{spec.seed}/dd{spec.data_seed}"
        out.setdefault(spec.folder, {})[key] = row
    return out


def peer_side(cfg: dict, results_directory: str, wall_s: float | None = None) -> dict:
    """ByzFL's side from its results folder. Without a measured `wall_s` (a run still going, or
    one started by hand), the wall time is taken from the files: from the results folder's
    config.json (written when `run_benchmark` starts) to the last finished run's train_time file."""
    from strike_jax import byzfl

    runs = read_layout(cfg, results_directory)
    done = sum(len(v) for v in runs.values())
    source = "measured around the subprocess"
    if wall_s is None:
        start = os.path.getmtime(os.path.join(results_directory, "config.json"))
        wall_s = max(r["end"] for v in runs.values() for r in v.values()) - start
        source = "file times: results/config.json to the last finished run's train_time file"
    return {"config": cfg, "results_directory": results_directory, "wall_s": wall_s, "wall_source": source,
            "finished_runs": done, "total_runs": len(byzfl.expand(cfg)), "runs_read": runs}


def cell_label(folder: str) -> str:
    parts = folder.split("_")
    i = parts.index("NNM")
    return f"NNM+{parts[i - 1]} / {parts[i + 1]}"


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def compare(peer_runs: dict, ours_runs: dict) -> list[dict]:
    cells = []
    for folder, ours in ours_runs.items():
        peer = peer_runs.get(folder, {})
        cells.append({"cell": cell_label(folder), "folder": folder,
                      "peer_seeds": sorted(peer), "ours_seeds": sorted(ours),
                      "peer_final": [r["test_acc"][-1] for r in peer.values()],
                      "ours_final": [r["test_acc"][-1] for r in ours.values()],
                      "peer_best": [max(r["test_acc"]) for r in peer.values()],
                      "ours_best": [max(r["test_acc"]) for r in ours.values()],
                      "peer_curves": {k: r["test_acc"] for k, r in peer.items()},
                      "ours_curves": {k: r["test_acc"] for k, r in ours.items()}})
    return cells


def _load_text(payload: dict) -> str:
    la = payload.get("load_average")
    if not la:
        return "load average not recorded"
    return ("load average (1, 5, 15 min) " + ", ".join(map(str, la["ours_start"])) + " when strike_jax started, "
            + ", ".join(map(str, la["ours_end"])) + " when it ended")


# ------------------------------------------------------------------------------- strike_jax's side


def command_line(argv) -> str:
    """This invocation as a command, the long free-text values (`--notes`, `--model-reason`) shown
    as placeholders (the table prints them in full)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv[:-1]):
        if a in ("--notes", "--model-reason"):
            argv[i + 1] = "<the notes paragraph below>" if a == "--notes" else "<the model reason above>"
    return "python -m experiments.bench_byzfl " + " ".join(argv)


def run_ours(cfg_peer: dict, data: str, workdir: str):
    """`strike-jax byzfl` on ByzFL's config in a fresh process (imports, data and compilation timed:
    JAX's persistent compilation cache, which `strike-jax` enables, off), results in
    `workdir/results` (removed first: nothing resumed). Returns (wall s, runs read, results folder,
    load average before, after)."""
    cfg_ours = json.loads(json.dumps(cfg_peer))
    cfg_ours["evaluation_and_results"]["data_folder"] = data
    ours_dir = os.path.join(workdir, "results")
    cfg_ours["evaluation_and_results"]["results_directory"] = ours_dir
    if os.path.exists(ours_dir):
        shutil.rmtree(ours_dir)
    os.makedirs(workdir, exist_ok=True)
    cfg_path = os.path.join(workdir, "config.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg_ours, fh, indent=2)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               STRIKE_JAX_CACHE_DIR="off")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "strike_jax.cli", "byzfl", cfg_path, "--quiet"], check=True, env=env)
    wall = time.perf_counter() - t0
    return wall, read_layout(cfg_ours, ours_dir), ours_dir, load_before, os.getloadavg()


def init_check(args, data: str, workdir: str) -> int:
    """The accuracy check of the initial model (`--init-check K`): honest runs only (f = 0, Average,
    no pre-aggregator), one training seed and K data seeds, on both sides. ByzFL builds its models
    under the data seed and only then reseeds with the training seed, so its training seeds share
    one initial model and their spread leaves out the initial model's; K data seeds draw K initial
    models on both sides (strike_jax's runner: `init_seed = data_seed`, ByzFL's convention).
    Writes `<out>_init.md` / `.json`."""
    cfg = bench_config(args.model, args.steps, 1, data, os.path.join(workdir, "init_byzfl", "results"),
                       aggregators=[{"name": args.check_rule, "parameters": {}}], attacks=ATTACKS[:1],
                       evaluation_delta=args.evaluation_delta)
    cfg["benchmark_config"].update(f=0, nb_data_distribution_seeds=args.init_check)
    if args.check_tolerated_f is not None:
        cfg["benchmark_config"]["tolerated_f"] = args.check_tolerated_f
    cfg["pre_aggregators"] = [{"name": p, "parameters": {}} for p in args.check_preagg.split(",") if p]
    # ByzFL skips runs whose results exist: remove them so that its time is this invocation's.
    shutil.rmtree(cfg["evaluation_and_results"]["results_directory"], ignore_errors=True)
    measured = run_peer(args.peer_python, cfg, os.path.join(workdir, "init_byzfl"))
    (peer,) = read_layout(cfg, measured["results_directory"]).values()
    ours_wall, ours_runs, _, load_before, load_after = run_ours(cfg, data, os.path.join(workdir, "init_ours"))
    (ours,) = ours_runs.values()
    rows = [{"data_seed": str(peer[k]["data_seed"]),
             "peer_final": peer[k]["test_acc"][-1], "ours_final": ours[k]["test_acc"][-1],
             "peer_curve": peer[k]["test_acc"], "ours_curve": ours[k]["test_acc"],
             "peer_loss0": peer[k]["train_loss"][0], "ours_loss0": ours[k]["train_loss"][0]}
            for k in sorted(peer, key=lambda k: peer[k]["data_seed"])]
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "command": command_line(None),
               "load_average": {"ours_start": [round(x, 2) for x in load_before],
                                "ours_end": [round(x, 2) for x in load_after]},
               "peer_wall_s": measured["wall_s"], "ours_wall_s": ours_wall, "rows": rows, "config": cfg,
               "notes": args.notes}
    from strike_jax import atomic

    atomic.write_json(args.out + "_init.json", payload)
    pf, of = [r["peer_final"] for r in rows], [r["ours_final"] for r in rows]
    pipeline = (" + ".join(f"`{p['name']}`" for p in cfg["pre_aggregators"] + [{"name": args.check_rule}])
                + ("" if cfg["pre_aggregators"] else " (no pre-aggregator)")
                + ("" if args.check_tolerated_f is None else f", the rules told f = {args.check_tolerated_f}"))
    lines = [
        "# ByzFL vs strike_jax: the initial model's share of the accuracy (no attack, K data seeds)",
        "",
        f"Measured {payload['date']}, 2-core CPU ({_load_text(payload)}). Command: `{payload['command']}`.",
        "",
        f"Config: the benchmark's (Fashion-MNIST, `{args.model}`, DSGD, 10 honest clients, lr 0.1, momentum 0.9, "
        f"weight decay 1e-4, batch 25, gamma_similarity_niid 1.0, {args.steps} steps) with f = 0, "
        f"{pipeline}, training seed 0 and data seeds 0 .. {len(rows) - 1}. ByzFL draws its initial model under "
        "the data seed (`set_random_seed(data_distribution_seed)` before it builds the models, then "
        "`set_random_seed(training_seed)`), so runs that differ only in the training seed start from one model; "
        "strike_jax's ByzFL runner does the same (`init_seed = data_seed`). Each row is one data seed: its own "
        "partition and initial model on each side (different random streams: torch's and JAX's).",
        "",
        "| data seed | ByzFL final test accuracy (%) | strike_jax final (%) | ByzFL step-0 train loss | "
        "strike_jax step-0 train loss |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['data_seed']} | {100 * r['peer_final']:.2f} | {100 * r['ours_final']:.2f} | "
                     f"{r['peer_loss0']:.4f} | {r['ours_loss0']:.4f} |")
    lines += [f"| mean ± std | {_stats(pf)} | {_stats(of)} | | |", "",
              "Test accuracy at each evaluation (%), mean over the data seeds: ByzFL "
              + ", ".join(f"{100 * v:.2f}" for v in np.mean([r["peer_curve"] for r in rows], axis=0))
              + "; strike_jax " + ", ".join(f"{100 * v:.2f}" for v in np.mean([r["ours_curve"] for r in rows], axis=0))
              + ".", "", f"Wall time: ByzFL {measured['wall_s']:.0f} s, strike_jax {ours_wall:.0f} s "
              "(a fresh process, compilation included).", "", args.notes, ""]
    atomic.write_text(args.out + "_init.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


def batch_scaling(args, data: str, workdir: str) -> int:
    """`--batch-scaling R1,R2,...`: where strike_jax's time per round goes, for one cell of the grid
    (NNM + TrMean / SignFlipping) run with R training seeds as one batch (`Settings(cpu_batch_bytes)`
    raised so that they share it): the steady round time per run, and with `time_halves` the
    training and server programs' times. In this process, after one compiling run per R. Writes
    `<out>_batch.md` / `.json`."""
    import statistics as st

    from strike_jax import atomic, byzfl
    from strike_jax.simulation import Settings, simulate_many

    rows = []
    for R in [int(v) for v in args.batch_scaling.split(",")]:
        cfg = bench_config(args.model, args.steps, R, data, os.path.join(workdir, "scaling"),
                           aggregators=AGGREGATORS[:1], attacks=ATTACKS[:1], evaluation_delta=10**6)
        _, configs, _ = byzfl.prepare(cfg)
        row = {"runs": R}
        for timed in (False, True):
            settings = Settings(cpu_batch_bytes=1 << 34, time_halves=timed)
            simulate_many(configs, settings=settings, checkpoint_every=10**6, checkpoint_seconds=None)  # compile
            t0 = time.perf_counter()
            res = simulate_many(configs, settings=settings, checkpoint_every=10**6, checkpoint_seconds=None)
            wall = time.perf_counter() - t0
            hist = res[0]["rounds"][5:]
            per_run = st.median(h["time_round_s"] for h in hist)  # the batch's round / R
            if timed:
                row["train_ms"] = 1e3 * R * st.median(h["time_train_s"] for h in hist)
                row["server_ms"] = 1e3 * R * st.median(h["time_server_s"] for h in hist)
            else:
                row.update(round_ms_per_run=1e3 * per_run, wall_s=wall)
        rows.append(row)
        print(row, flush=True)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command_line(None),
               "load_end": [round(x, 2) for x in os.getloadavg()], "steps": args.steps, "rows": rows}
    atomic.write_json(args.out + "_batch.json", payload)
    lines = ["# strike_jax's round on ByzFL's grid: one cell, R runs in one batch", "",
             f"Measured {payload['date']}, 2-core CPU (load average at the end "
             f"{', '.join(map(str, payload['load_end']))}). Command: `{payload['command']}`.", "",
             f"The cell NNM + TrMean / SignFlipping of the benchmark's config (`{args.model}`, DSGD, 10 honest + "
             f"f = 2, batch 25, {args.steps} steps, no evaluation but the last), R training seeds batched "
             "together; medians over the rounds after the fifth, the programs compiled by an earlier run in "
             "the same process. *Round per run*: the batch's round time over R (dispatch overlapped, as in "
             "real runs); *training* and *server*: the two programs of a round, each waited for "
             "(`Settings(time_halves=True)`), for the whole batch.", "",
             "| runs in the batch (R) | round per run (ms) | training program, batch (ms) | server program, batch (ms) "
             "| wall of the run (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runs']} | {r['round_ms_per_run']:.2f} | {r['train_ms']:.2f} | {r['server_ms']:.2f} | "
                     f"{r['wall_s']:.1f} |")
    lines += ["", args.notes, ""]
    atomic.write_text(args.out + "_batch.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


def write_table(payload: dict, path_md: str) -> None:
    p, o = payload["peer"], payload["ours"]
    steps = payload["steps"]
    lines = [
        "# ByzFL 0.0.11 `run_benchmark` vs `strike-jax byzfl`, same config, CPU",
        "",
        f"Measured {payload['date']} on a 2-core CPU shared with other agents ({_load_text(payload)}; every "
        "timing here is an upper bound). Command: `" + payload["command"] + "`.",
        "",
        f"Config: {payload['grid']}. Model `{payload['model']}`: {payload['model_reason']}",
        "",
    ]
    if payload.get("peer_source"):
        lines += [f"ByzFL's side: {payload['peer_source']}.", ""]
    if p["finished_runs"] < p["total_runs"]:
        lines += [f"**ByzFL finished {p['finished_runs']} of its {p['total_runs']} runs** before this table was "
                  "written; its per-run time is the mean over the finished ones, its whole-grid time extrapolated "
                  "from it.", ""]
    peer_run = p["wall_s"] / p["finished_runs"]
    ours_run = o["wall_s"] / o["runs"]
    lines += [
        "| | ByzFL (torch, one run at a time) | strike_jax (one fresh process, compile included) |",
        "|---|---|---|",
        f"| runs measured | {p['finished_runs']} | {o['runs']} |",
        f"| wall time of those runs | {p['wall_s']:.1f} s | {o['wall_s']:.1f} s |",
        f"| wall time, whole grid of {p['total_runs']} runs | {peer_run * p['total_runs']:.0f} s"
        f"{' (extrapolated)' if p['finished_runs'] < p['total_runs'] else ''} | {o['wall_s']:.1f} s |",
        f"| wall time per run | {peer_run:.1f} s | {ours_run:.2f} s |",
        f"| steps per second (runs x {steps} steps / wall) | {steps / peer_run:.2f} | {steps / ours_run:.1f} |",
        f"| speed-up (per run, end to end) | 1x | **{payload['speedup']:.0f}x** |",
        "",
        f"ByzFL's times include its evaluations (test set at steps 0, 50, 100, 150, 200) and its data loading "
        f"per run; ours include the process start, imports, data loading, compilation (JAX's persistent compilation "
        f"cache off: a cold start) and the same evaluations. "
        f"ByzFL ran with {payload['peer_threads']}.",
        "",
        "Test accuracy (%) after the last step, and the best over the evaluations (the value ByzFL's heatmaps "
        "take), mean ± std over the runs of the cell (training seed x data seed; a key `s/ddK` is training "
        "seed s on data seed K, and each data seed draws its own initial model on both sides):",
        "",
        "| cell | ByzFL final | strike_jax final | ByzFL best | strike_jax best | per seed final (ByzFL; strike_jax) |",
        "|---|---|---|---|---|---|",
    ]
    for c in payload["cells"]:
        lines.append(f"| {c['cell']} | {_stats(c['peer_final'])} | {_stats(c['ours_final'])} | "
                     f"{_stats(c['peer_best'])} | {_stats(c['ours_best'])} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in c['peer_final']) or 'not run'}; "
                     f"{', '.join(f'{100 * v:.1f}' for v in c['ours_final'])} |")
    r = payload["byzfl_reads_ours"]
    lines += ["", ("ByzFL's own `evaluate_results` functions (`test_heatmap`, `loss_heatmap`, "
                   "`aggregated_test_heatmap`, `test_accuracy_curve`) read strike_jax's result folders: "
                   + (f"yes, {len(r['figures'])} figures drawn." if r["ok"] else "**no**: " + r["output"][-300:]))]
    lines += ["", payload.get("notes", ""), ""]
    from strike_jax import atomic

    atomic.write_text(path_md, "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=PEER_PYTHON)
    ap.add_argument("--model", default="fc_mnist", choices=("cnn_mnist", "fc_mnist"))
    ap.add_argument("--model-reason", default="", help="why this model (stated in the table)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2, help="training seeds")
    ap.add_argument("--data-seeds", type=int, default=1,
                    help="data seeds (each its own partition and, as in ByzFL, its own initial model)")
    ap.add_argument("--workdir", default=None, help="where both sides' results go (default: a temporary folder)")
    ap.add_argument("--probe", action="store_true", help="only ByzFL's step and evaluation time per model")
    ap.add_argument("--probe-one", action="store_true", help="probe only --model")
    ap.add_argument("--peer-only", action="store_true", help="only ByzFL's side; writes --peer-json")
    ap.add_argument("--peer-json", default=None, help="where --peer-only writes ByzFL's side")
    ap.add_argument("--peer-results", default=None, help="reuse ByzFL's side from this JSON (--peer-only's)")
    ap.add_argument("--peer-dir", default=None,
                    help="reuse ByzFL's side from its results folder, finished or not (times from its files)")
    ap.add_argument("--peer-threads", type=int, default=None,
                    help="torch threads for ByzFL (default: torch's own choice)")
    ap.add_argument("--evaluation-delta", type=int, default=50)
    ap.add_argument("--init-check", type=int, default=0, metavar="K",
                    help="only the initial-model check: honest runs, K data seeds, both sides (writes <out>_init.md)")
    ap.add_argument("--check-rule", default="Average", help="--init-check: ByzFL's aggregator name")
    ap.add_argument("--check-preagg", default="", help="--init-check: ByzFL's pre-aggregators, comma-separated")
    ap.add_argument("--check-tolerated-f", type=int, default=None, help="--init-check: the f the rules are told")
    ap.add_argument("--batch-scaling", default="", metavar="R1,R2,...",
                    help="only strike_jax: one cell with R training seeds in one batch, time per round (writes "
                         "<out>_batch.md)")
    ap.add_argument("--notes", default="", help="a paragraph appended to the table")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only write the table again from this JSON (a finished invocation's), with --notes")
    ap.add_argument("--out", default=os.path.join(RESULTS, "bench_byzfl_cpu"))
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        peer_worker(args.peer_worker, args.peer_threads)
        return 0
    global PEER_THREADS
    PEER_THREADS = args.peer_threads
    if args.render:  # the table again from a finished invocation's JSON, with this --notes
        with open(args.render) as fh:
            payload = json.load(fh)
        payload["notes"] = args.notes or payload.get("notes", "")
        from strike_jax import atomic

        atomic.write_json(args.out + ".json", payload)
        write_table(payload, args.out + ".md")
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_byzfl_")
    os.makedirs(workdir, exist_ok=True)
    data = torchvision_layout(os.path.join(workdir, "data"))
    if args.init_check:
        return init_check(args, data, workdir)
    if args.batch_scaling:
        return batch_scaling(args, data, workdir)
    if args.probe:
        res = probe(args.peer_python, data, (args.model,) if args.probe_one else ("cnn_mnist", "fc_mnist"))
        print(json.dumps(res, indent=2))
        for model, r in res.items():
            est = 12 * args.seeds * (args.steps * r["step_s"] + (args.steps // 50 + 1) * r["evaluation_s"])
            print(f"{model}: {r['step_s']:.3f} s/step, {r['evaluation_s']:.2f} s/evaluation -> "
                  f"~{est / 60:.1f} min for 12 cells x {args.seeds} seeds x {args.steps} steps")
        return 0

    if args.peer_results:
        with open(args.peer_results) as fh:
            peer = json.load(fh)
        source = f"reused from `{args.peer_results}` (`--peer-results`), measured earlier by this script"
    elif args.peer_dir:
        with open(os.path.join(args.peer_dir, "config.json")) as fh:
            peer = peer_side(json.load(fh), args.peer_dir)
        source = (f"read from ByzFL's results folder (`--peer-dir`), started earlier by this script "
                  f"(`--peer-only` or a whole invocation); wall time from {peer['wall_source']}")
    else:
        cfg_peer = bench_config(args.model, args.steps, args.seeds, data, os.path.join(workdir, "byzfl", "results"),
                                evaluation_delta=args.evaluation_delta, data_seeds=args.data_seeds)
        measured = run_peer(args.peer_python, cfg_peer, os.path.join(workdir, "byzfl"))
        peer = peer_side(cfg_peer, measured["results_directory"], measured["wall_s"])
        source = "run by this invocation"
        if args.peer_only:
            path = args.peer_json or os.path.join(workdir, "peer.json")
            with open(path, "w") as fh:
                json.dump(peer, fh, indent=1)
            print(f"ByzFL side: {peer['wall_s']:.1f} s -> {path}")
            return 0
    cfg_peer = peer["config"]
    model, steps = cfg_peer["model"]["name"], cfg_peer["benchmark_config"]["nb_steps"]
    ours_wall, ours, ours_dir, load_before, load_after = run_ours(cfg_peer, data, os.path.join(workdir, "ours"))
    n_ours = sum(len(v) for v in ours.values())
    reads = byzfl_reads(args.peer_python, ours_dir, os.path.join(workdir, "ours", "byzfl_plots"))
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": {"ours_start": [round(x, 2) for x in load_before],
                         "ours_end": [round(x, 2) for x in load_after]},
        "command": command_line(argv),
        "model": model, "model_reason": args.model_reason or "chosen on the command line",
        "grid": "Fashion-MNIST, DSGD, 10 honest + f=2, gamma_similarity_niid 1.0, size_train_set 1.0, NNM + "
                "{TrMean, GeometricMedian, MultiKrum, Median} x {SignFlipping, ALittleIsEnough, "
                f"InnerProductManipulation}}, {steps} steps, {cfg_peer['benchmark_config']['nb_training_seeds']} "
                f"training seed(s) x {cfg_peer['benchmark_config']['nb_data_distribution_seeds']} data seed(s)",
        "steps": steps, "peer_source": source,
        "peer_threads": (f"{args.peer_threads} torch thread(s)" if args.peer_threads
                         else "torch's default threads"),
        "peer": {k: peer[k] for k in ("wall_s", "wall_source", "finished_runs", "total_runs")},
        "ours": {"wall_s": ours_wall, "runs": n_ours},
        "speedup": (peer["wall_s"] / peer["finished_runs"]) / (ours_wall / n_ours),
        "cells": compare(peer["runs_read"], ours),
        "notes": args.notes,
        "byzfl_reads_ours": reads,
        "config": cfg_peer,
    }
    from strike_jax import atomic

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic.write_json(args.out + ".json", payload)
    write_table(payload, args.out + ".md")
    print(open(args.out + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

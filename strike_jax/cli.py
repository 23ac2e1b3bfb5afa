"""`strike-jax`: the command-line entry point (a thin layer over `strike_jax.simulate`).

  strike-jax run --preset digits --attack strike --defence median [--nu 1.0] [--rounds 30] [--seed 0]
  strike-jax sweep --preset digits --grid attack=lie,strike --grid defence=median,dnc --grid seed=0-2
  strike-jax demo            # the README's main job: attacks x defences on the embedded digits data
  strike-jax plot RUN_DIR... # accuracy curves of finished or running runs (PNG)
  strike-jax byzfl CONFIG.json  # a ByzFL 0.0.11 benchmark config (its grid, result layout, summaries)
  strike-jax list            # what each registry accepts

Bad input (an unknown name, a value a field does not allow, more Byzantine clients than the defence
tolerates, a run directory that cannot be written or holds another config's run) is one line on
stderr and exit code 2, before any data loads (`strike_jax.errors.InputError`). Any other error is a
bug: its traceback and exit code 1. Ctrl-C finishes the current round, checkpoints, says how to
resume and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Sequence

from strike_jax import options
from strike_jax.errors import InputError

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _config_from_args(args):
    from strike_jax.config import Config, preset

    overrides = options.overrides(args)
    if args.preset:
        return preset(args.preset, **overrides)
    return Config(**overrides)


def cmd_run(args) -> int:
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        from strike_jax import distributed

        if None in (args.coordinator, args.num_processes, args.process_id):
            raise InputError("--coordinator, --num-processes and --process-id go together (every process of a "
                             "multi-process run passes all three).")
        # Before anything else touches jax: the devices of every process form one list.
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, cpu_devices=args.cpu_devices)
    import jax

    from strike_jax.simulation import check_config, check_run_dir, simulate, write_json

    config = _config_from_args(args)
    check_config(config)  # before any data loads
    check_run_dir(args.run_dir)
    t0 = time.perf_counter()
    result = simulate(config, run_dir=args.run_dir, progress=not args.quiet, checkpoint_every=args.checkpoint_every,
                      checkpoint_seconds=args.checkpoint_seconds or None)
    if jax.process_index() != 0:  # under jax.distributed only process 0 writes and reports
        return 0
    out = args.out
    if out:
        write_json(out, result)
    out = out or (os.path.join(args.run_dir, "result.json") if args.run_dir else None)
    status = f"diverged at round {result['diverged_round']}" if result["diverged"] else "finished"
    best = result["best_accuracy"]
    print(f"{config.dataset} {config.attack} vs {config.defence}: best accuracy "
          f"{'n/a' if best is None else f'{best:.4f}'} ({status}, {result['completed_rounds']} rounds, "
          f"{time.perf_counter() - t0:.1f} s)" + (f" -> {out}" if out else ""))
    return 0


DEMO_ATTACKS = ("none", "bitflip", "lie", "ipm", "minmax", "minsum", "mimic", "strike")
DEMO_DEFENCES = ("median", "multikrum", "dnc")


def cmd_demo(args) -> int:
    """Each attack against a few defences on digits; prints best accuracies (lower = stronger attack)."""
    from strike_jax.config import preset
    from strike_jax.simulation import simulate_many, write_json

    attacks = args.attacks or list(DEMO_ATTACKS)
    defences = args.defences or list(DEMO_DEFENCES)
    base = preset("digits", rounds=args.rounds, seed=args.seed)
    runs = [(a, d) for a in attacks for d in defences]
    configs = [base.replace(attack=a, defence=d) for a, d in runs]
    run_dirs = [os.path.join(args.out_dir, f"{a}__{d}") if args.out_dir else None for a, d in runs]
    t0 = time.perf_counter()
    bar = None
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="demo runs", unit="run")
    except ImportError:  # pragma: no cover
        pass
    results = simulate_many(configs, run_dirs=run_dirs, on_result=lambda c, r: bar.update(1) if bar else None)
    if bar is not None:
        bar.close()
    table = {(a, d): r for (a, d), r in zip(runs, results)}
    elapsed = time.perf_counter() - t0
    print()
    print(f"Digits, {base.num_clients} clients (Dirichlet beta={base.beta}), {base.num_byzantine} Byzantine, "
          f"{base.rounds} rounds, seed {base.seed}: best test accuracy (lower = stronger attack)")
    width = max(len(a) for a in attacks) + 2
    print("attack".ljust(width) + "".join(d.rjust(12) for d in defences))
    for a in attacks:
        row = a.ljust(width)
        for d in defences:
            r = table[(a, d)]
            b = r["best_accuracy"]
            row += ("n/a" if b is None else f"{100 * b:.1f}" + ("*" if r["diverged"] else "")).rjust(12)
        print(row)
    candidates = [a for a in attacks if a != "none"] or attacks
    strongest = {d: min(candidates, key=lambda a: table[(a, d)]["best_accuracy"] or 0.0) for d in defences}
    print("strongest attack per defence: " + ", ".join(f"{d}: {a}" for d, a in strongest.items()))
    print(f"({len(runs)} runs in {elapsed:.0f} s; * = diverged)")
    if args.out_dir:
        write_json(os.path.join(args.out_dir, "demo.json"), {
            a: {d: {"best_accuracy": table[(a, d)]["best_accuracy"], "diverged": table[(a, d)]["diverged"]}
                for d in defences} for a in attacks})
    return 0


def cmd_sweep(args) -> int:
    """A grid of runs (`--grid KEY=V1,V2`) from one base config; resumable; tables as the scripts'."""
    from strike_jax import studies

    base = _config_from_args(args)
    configs = options.grid_configs(base, args.grid or [])
    args.script = "strike-jax sweep"
    args.out_dir = os.path.join(args.results_dir, "runs")
    args.root = None
    try:
        return studies.grid_study(args, base, configs, args.grid or [], name=args.name)
    except SystemExit as e:  # sweep.usage_error (its line is printed) or the end of --dry-run
        return e.code if isinstance(e.code, int) else EXIT_USAGE


def cmd_plot(args) -> int:
    """Accuracy (or another per-round metric) against rounds for one or several run directories."""
    import json

    curves = []
    for run_dir in args.run_dirs:
        path = os.path.join(run_dir, "result.json")
        if os.path.exists(path):
            with open(path) as fh:
                res = json.load(fh)
            history, config = res["rounds"], res["config"]
        else:  # a run in progress: its checkpoint holds the history so far
            from strike_jax.simulation import read_checkpoint_meta

            meta = read_checkpoint_meta(os.path.join(run_dir, "checkpoint.npz"))
            if meta is None:
                raise InputError(f"{run_dir!r} holds no result.json or checkpoint.npz; allowed: run directories "
                                 "written by `strike-jax run --run-dir` or the experiment scripts.")
            history, config = meta["history"], meta["config"]
        pts = [(h["round"] + 1, h[args.metric]) for h in history if h.get(args.metric) is not None]
        if not pts:
            raise InputError(f"{run_dir!r} has no {args.metric!r} values; allowed metrics: "
                             f"{', '.join(sorted({k for h in history for k in h}))}.")
        label = f"{config.get('attack')} vs {config.get('defence')} (seed {config.get('seed')})"
        curves.append((label, pts))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plotting needs matplotlib: pip install 'strike_jax[plots]'.") from None
    from strike_jax.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in curves:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 60 else None, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(args.metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = args.out or os.path.join(args.run_dirs[0], f"{args.metric}.png")
    atomic_write(out, lambda fh: fig.savefig(fh, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def cmd_byzfl(args) -> int:
    """A ByzFL benchmark config: every run batched, ByzFL's result files and summaries."""
    from strike_jax import byzfl

    t0 = time.perf_counter()
    out = byzfl.run(args.config, results_dir=args.results_dir, progress=not args.quiet, plots=not args.no_plots)
    runs = out["runs"]
    done = sum(bool(r["result"].get("finished")) for r in runs)
    print(f"byzfl: {done}/{len(runs)} runs finished ({time.perf_counter() - t0:.1f} s) -> {out['results_directory']}")
    return 0


def _name(text: str) -> str:
    if not text or not text.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '-' and '_' only")
    return text


def cmd_list(args) -> int:
    from strike_jax import data, models, registry
    from strike_jax.config import PRESETS, STRATEGIES

    def line(label, names):
        print(f"{label:16s}" + ", ".join(names))

    line("presets:", sorted(PRESETS))
    line("datasets:", data.names())
    line("models:", models.names())
    line("attacks:", ("none",) + registry.names("attack"))
    line("defences:", registry.names("rule"))
    line("pre-aggregators:", registry.names("preaggregator"))
    line("strategies:", STRATEGIES)
    return 0


def _config_options(p: argparse.ArgumentParser) -> None:
    from strike_jax.config import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    options.add_config_options(p)
    p.add_argument("--set", action="append", type=options.parse_set, metavar="FIELD=VALUE", default=[],
                   help="any Config field as a Python literal, e.g. --set clip_norm=None (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from strike_jax import sweep

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="strike-jax", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one federated run under attack", formatter_class=fmt,
                       description="One federated run. Unset options take the preset's value, else the "
                                   "Config default shown in brackets.")

    _config_options(r)
    r.add_argument("--run-dir", dest="run_dir",
                   help="checkpoint here (result.json, rounds.csv); an interrupted run resumes, a finished one "
                        "is extended by a larger --rounds")
    r.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=10,
                   help="rounds between checkpoints (default 10)")
    r.add_argument("--checkpoint-seconds", dest="checkpoint_seconds", type=float, default=300.0,
                   help="also checkpoint after this many seconds; 0: off (default 300)")
    r.add_argument("--coordinator", metavar="HOST:PORT",
                   help="run across processes (jax.distributed): process 0's address, the same in every process")
    r.add_argument("--num-processes", dest="num_processes", type=int, help="processes taking part (with --coordinator)")
    r.add_argument("--process-id", dest="process_id", type=int, help="this process, 0 .. K-1 (with --coordinator)")
    r.add_argument("--cpu-devices", dest="cpu_devices", type=int,
                   help="CPU only: devices this process exposes (default 1; with --coordinator)")
    r.add_argument("--out", help="also write the result JSON here")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="a grid of runs (resumable), tables as the experiment scripts'",
                        formatter_class=fmt, description="""A grid of runs from one base config (--preset and the
options of `run`), each combination of the --grid values: e.g.

  strike-jax sweep --preset digits --rounds 5 --grid attack=lie,strike --grid defence=median,dnc \\
      --grid seed=0-2 --grid nu=0.5,1,2 --results-dir results/my_sweep

KEY is a Config field (attack, defence, seed, beta, num_clients, preagg, ...) or a hyper-parameter
of an attack or defence (nu, tau; attack.KEY / defence.KEY) or of a pre-aggregator (bucketing.s);
`a-b` is the integers a..b. A hyper-parameter applies to the runs whose stage has it (LIE runs once,
STRIKE once per nu). Each run gets a directory RESULTS_DIR/runs/<run id>: a second call runs only
what is missing. Tables (rows: attacks, columns: defences, cells: best accuracy mean ± std over
seeds, one table per value of the other varied fields) go to RESULTS_DIR/<name>.md and .json.""")
    _config_options(sw)
    sw.add_argument("--grid", action="append", type=options.parse_grid, metavar="KEY=V1,V2,...",
                    help="one axis of the grid (repeatable)")
    sw.add_argument("--results-dir", dest="results_dir", default="sweep_results",
                    help="tables here, run directories in RESULTS_DIR/runs (default sweep_results)")
    sw.add_argument("--name", default="sweep", type=_name, help="the tables' file name (default sweep)")
    sw.add_argument("--overwrite", action="store_true",
                    help="replace tables computed with another grid or base config")
    sw.add_argument("--dry-run", dest="dry_run", action="store_true", help="list the runs (done or to run) and exit")
    sw.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    sw.set_defaults(func=cmd_sweep)

    d = sub.add_parser("demo", help="attacks x defences on the embedded digits data (the README's main job)",
                       formatter_class=fmt)
    d.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    d.add_argument("--seed", type=int, default=0, help="(default 0)")
    d.add_argument("--attacks", type=sweep.names_type("attack"),
                   help=f"comma-separated (default: {','.join(DEMO_ATTACKS)})")
    d.add_argument("--defences", type=sweep.names_type("rule"),
                   help=f"comma-separated (default: {','.join(DEMO_DEFENCES)})")
    d.add_argument("--out-dir", dest="out_dir", help="keep each run's result (and resume) here")
    d.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plot", help="accuracy curves of run directories (PNG)", formatter_class=fmt)
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--metric", default="accuracy", help="a per-round field of rounds.csv (default accuracy)")
    pl.add_argument("--out", help="the PNG (default: RUN_DIR/<metric>.png of the first run)")
    pl.set_defaults(func=cmd_plot)

    bz = sub.add_parser("byzfl", help="run a ByzFL 0.0.11 benchmark config (resumable)", formatter_class=fmt,
                        description="Runs a ByzFL benchmark config (its grid expansion, every run batched "
                                    "and resumable) and writes ByzFL's result layout and summaries "
                                    "(docs/byzfl.md).")
    bz.add_argument("config", metavar="CONFIG.json")
    bz.add_argument("--results-dir", help="where the results go (default: the config's results_directory)")
    bz.add_argument("--no-plots", action="store_true", help="write the summaries' numbers, not their figures")
    bz.add_argument("--quiet", action="store_true", help="no progress bars")
    bz.set_defaults(func=cmd_byzfl)

    ls = sub.add_parser("list", help="list presets, datasets, models, attacks, defences, pre-aggregators")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from strike_jax.simulation import Interrupted

    args = build_parser().parse_args(argv)
    if args.func in (cmd_run, cmd_demo, cmd_byzfl):
        from strike_jax import compile_cache

        compile_cache.enable()
    try:
        return args.func(args)
    except InputError as e:  # bad input: one line, whenever it is found
        msg = " ".join(str(e).replace("pass allow_beyond_breakdown=True", "pass --allow-beyond-breakdown").split())
        print(f"strike-jax: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as e:
        print(f"strike-jax: {e.message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("strike-jax: interrupted; rounds since the last checkpoint are lost.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not the user's input: show where
        traceback.print_exc()
        print("strike-jax: internal error (a bug, not a problem with the options): the traceback above shows "
              "where.", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

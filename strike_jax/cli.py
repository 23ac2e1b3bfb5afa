"""`strike-jax`: the command-line entry point (a thin layer over `strike_jax.simulate`).

  strike-jax run --preset digits --attack strike --defence median [--nu 1.0] [--rounds 30] [--seed 0]
  strike-jax demo            # the README's main job: attacks x defences on the embedded digits data
  strike-jax plot RUN_DIR... # accuracy curves of finished or running runs (PNG)
  strike-jax list            # what each registry accepts

Bad input (an unknown name, a value a field does not allow, more Byzantine clients than the defence
tolerates, a run directory that cannot be written) is one line on stderr and exit code 2, before
any data loads. Ctrl-C finishes the current round, checkpoints, says how to resume and exits 130.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from typing import Any, Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_params(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _names(kind: str) -> tuple[str, ...]:
    from strike_jax import registry

    return registry.names(kind)


def _choice(kind: str, *, extra: tuple[str, ...] = ()):
    """An argparse type accepting a registered name of `kind` (one line naming the allowed ones)."""

    def parse(text: str) -> str:
        allowed = extra + _names(kind)
        if text in allowed:
            return text
        hint = ""
        if kind == "rule" and text in _names("preaggregator"):
            hint = f" ({text} is a pre-aggregator: use --preagg {text})"
        raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}{hint}; allowed: {', '.join(allowed)}")

    parse.__name__ = kind
    return parse


def _preaggs(text: str) -> tuple[str, ...]:
    names = tuple(p for p in text.split(",") if p)
    allowed = _names("preaggregator")
    bad = [p for p in names if p not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown pre-aggregator(s) {bad}; allowed: {', '.join(allowed)}")
    return names


_RUN_FIELDS = ("dataset", "data_dir", "model", "num_clients", "clients_per_round", "partition", "beta",
               "byzantine_ratio", "rounds", "batch_size", "lr", "momentum", "weight_decay", "eval_every",
               "seed", "strategy", "attack", "defence", "local_epochs", "max_test_samples", "lanes", "num_devices")


def _config_from_args(args):
    from strike_jax.config import Config, preset

    overrides: dict[str, Any] = {f: getattr(args, f) for f in _RUN_FIELDS if getattr(args, f, None) is not None}
    for flag in ("skew_metrics", "allow_beyond_breakdown"):
        if getattr(args, flag):
            overrides[flag] = True
    attack_params = _parse_params(args.attack_param, "--attack-param")
    if args.nu is not None:
        attack_params["nu"] = args.nu
    if attack_params:
        overrides["attack_params"] = attack_params
    defence_params = _parse_params(args.defence_param, "--defence-param")
    if defence_params:
        overrides["defence_params"] = defence_params
    if args.preagg:
        overrides["preaggregation"] = args.preagg
    if args.preset:
        return preset(args.preset, **overrides)
    return Config(**overrides)


def cmd_run(args) -> int:
    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        from strike_jax import distributed

        if None in (args.coordinator, args.num_processes, args.process_id):
            raise ValueError("--coordinator, --num-processes and --process-id go together (every process of a "
                             "multi-process run passes all three).")
        # Before anything else touches jax: the devices of every process form one list.
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, cpu_devices=args.cpu_devices)
    from strike_jax.simulation import check_config, check_run_dir, simulate, write_json
    import jax

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
                raise ValueError(f"{run_dir!r} holds no result.json or checkpoint.npz; allowed: run directories "
                                 "written by `strike-jax run --run-dir` or the experiment scripts.")
            history, config = meta["history"], meta["config"]
        pts = [(h["round"] + 1, h[args.metric]) for h in history if h.get(args.metric) is not None]
        if not pts:
            raise ValueError(f"{run_dir!r} has no {args.metric!r} values; allowed metrics: "
                             f"{', '.join(sorted({k for h in history for k in h}))}.")
        label = f"{config.get('attack')} vs {config.get('defence')} (seed {config.get('seed')})"
        curves.append((label, pts))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'strike_jax[plots]'.") from None
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


def build_parser() -> argparse.ArgumentParser:
    from strike_jax import data, models
    from strike_jax.config import PARTITIONS, PRESETS, STRATEGIES, Config

    default = Config()
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="strike-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one federated run under attack", formatter_class=fmt,
                       description="One federated run. Unset options take the preset's value, else the "
                                   "Config default shown in brackets.")
    r.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")

    def opt(flag, field, **kw):
        kw.setdefault("help", f"Config.{field} (default {getattr(default, field)!r})")
        r.add_argument(flag, dest=field, **kw)

    opt("--dataset", "dataset", choices=data.names())
    opt("--data-dir", "data_dir", help="where the data set lives (loaders that read files)")
    opt("--model", "model", choices=models.names())
    opt("--num-clients", "num_clients", type=int)
    opt("--clients-per-round", "clients_per_round", type=int)
    opt("--partition", "partition", choices=PARTITIONS)
    opt("--beta", "beta", type=float)
    opt("--byzantine-ratio", "byzantine_ratio", type=float)
    opt("--rounds", "rounds", type=int)
    opt("--local-epochs", "local_epochs", type=int)
    opt("--batch-size", "batch_size", type=int)
    opt("--lr", "lr", type=float)
    opt("--momentum", "momentum", type=float)
    opt("--weight-decay", "weight_decay", type=float)
    opt("--eval-every", "eval_every", type=int)
    opt("--max-test-samples", "max_test_samples", type=int)
    opt("--seed", "seed", type=int)
    opt("--strategy", "strategy", choices=STRATEGIES)
    opt("--lanes", "lanes", type=int)
    opt("--attack", "attack", type=_choice("attack", extra=("none",)), metavar="ATTACK",
        help="one of: none, " + ", ".join(_names("attack")) + f" (default {default.attack!r})")
    r.add_argument("--attack-param", action="append", metavar="KEY=VALUE", help="attack hyper-parameter (repeatable)")
    r.add_argument("--nu", type=float, help="STRIKE's strength (shortcut for --attack-param nu=...)")
    opt("--defence", "defence", type=_choice("rule"), metavar="RULE",
        help="one of: " + ", ".join(_names("rule")) + f" (default {default.defence!r})")
    r.add_argument("--defense", dest="defence", type=_choice("rule"), help=argparse.SUPPRESS)
    r.add_argument("--defence-param", action="append", metavar="KEY=VALUE", help="defence hyper-parameter (repeatable)")
    r.add_argument("--preagg", type=_preaggs, help="comma-separated pre-aggregators, from: "
                   + ", ".join(_names("preaggregator")) + " (default: none)")
    r.add_argument("--skew-metrics", dest="skew_metrics", action="store_true",
                   help="log the gradient-skew diagnostic every round")
    r.add_argument("--allow-beyond-breakdown", dest="allow_beyond_breakdown", action="store_true",
                   help="run with more Byzantine clients than the defence tolerates (recorded in the result)")
    r.add_argument("--run-dir", dest="run_dir",
                   help="checkpoint here (result.json, rounds.csv); an interrupted run resumes, a finished one "
                        "is extended by a larger --rounds")
    r.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=10,
                   help="rounds between checkpoints (default 10)")
    r.add_argument("--checkpoint-seconds", dest="checkpoint_seconds", type=float, default=300.0,
                   help="also checkpoint after this many seconds; 0: off (default 300)")
    opt("--num-devices", "num_devices", type=int)
    r.add_argument("--coordinator", metavar="HOST:PORT",
                   help="run across processes (jax.distributed): process 0's address, the same in every process")
    r.add_argument("--num-processes", dest="num_processes", type=int, help="processes taking part (with --coordinator)")
    r.add_argument("--process-id", dest="process_id", type=int, help="this process, 0 .. K-1 (with --coordinator)")
    r.add_argument("--cpu-devices", dest="cpu_devices", type=int,
                   help="CPU only: devices this process exposes (default 1; with --coordinator)")
    r.add_argument("--out", help="also write the result JSON here")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="attacks x defences on the embedded digits data (the README's main job)",
                       formatter_class=fmt)
    d.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    d.add_argument("--seed", type=int, default=0, help="(default 0)")
    d.add_argument("--attacks", type=lambda t: [_choice("attack", extra=("none",))(a) for a in t.split(",") if a],
                   help=f"comma-separated (default: {','.join(DEMO_ATTACKS)})")
    d.add_argument("--defences", type=lambda t: [_choice("rule")(a) for a in t.split(",") if a],
                   help=f"comma-separated (default: {','.join(DEMO_DEFENCES)})")
    d.add_argument("--out-dir", dest="out_dir", help="keep each run's result (and resume) here")
    d.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plot", help="accuracy curves of run directories (PNG)", formatter_class=fmt)
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--metric", default="accuracy", help="a per-round field of rounds.csv (default accuracy)")
    pl.add_argument("--out", help="the PNG (default: RUN_DIR/<metric>.png of the first run)")
    pl.set_defaults(func=cmd_plot)

    ls = sub.add_parser("list", help="list presets, datasets, models, attacks, defences, pre-aggregators")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from strike_jax.simulation import Interrupted

    args = build_parser().parse_args(argv)
    if args.func in (cmd_run, cmd_demo):
        from strike_jax import compile_cache

        compile_cache.enable()
    try:
        return args.func(args)
    except ValueError as e:
        msg = str(e).replace("pass allow_beyond_breakdown=True", "pass --allow-beyond-breakdown")
        print(f"strike-jax: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as e:
        print(f"strike-jax: {e.message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("strike-jax: interrupted; rounds since the last checkpoint are lost.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

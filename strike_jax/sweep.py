"""Resumable sweeps over configs, and the command line that sweep scripts (`experiments/`) share.

Every config gets its own run directory named by a hash of the config (`run_id`), so an
interrupted sweep started again skips finished runs, resumes the interrupted one from its
checkpoint, and never repeats or loses finished work; runs that differ only in numbers share one
compiled program (`strike_jax.simulate_many`). The same config always gives the same run directory,
so two scripts given the same `--out-dir` share their runs.

A sweep script (SPEC §8) is:

    parser = sweep.make_parser(__file__, __doc__)              # --scale --dataset --seeds --set ...
    args = sweep.parse_args(parser, argv)                      # scale-dependent defaults filled in
    base = sweep.base_config(args)                             # preset + --set; data checked on disk
    configs = sweep.grid(base, attacks, defences, args.seeds, nu_grid=args.nu_grid)
    results, stats = sweep.run_configs(configs, args)          # resumable; --dry-run stops here

and `strike_jax.report` turns the results into table cells, markdown and figures. Bad input (an
unknown attack, a `--set` field `Config` does not have, a value it refuses, a Byzantine count
beyond a rule's limit) stops the script with one line naming the value and what is allowed, exit
code 2, before any data loads or run starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, NoReturn, Sequence

from strike_jax import atomic, options
from strike_jax.config import Config, preset
from strike_jax.errors import InputError

#: STRIKE's `nu` grid of the paper (App. D.1): its table cell is the lowest over these.
NU_GRID = tuple(0.25 * i for i in range(1, 9))

# The paper's attacks and defences, in Table 1's order (names of `strike_jax.registry`).
BASELINE_ATTACKS: tuple[str, ...] = ("bitflip", "lie", "ipm", "minmax", "minsum", "mimic")
ATTACKS: tuple[str, ...] = BASELINE_ATTACKS + ("strike",)
DEFENCES: tuple[str, ...] = ("multikrum", "median", "rfa", "aksel", "cclip", "dnc", "rbtm")

SCALES = ("local", "paper")
LOCAL_DATASETS = ("digits", "fashion_mnist")
PAPER_DATASETS = ("cifar10", "imagenet12", "femnist")
# Local scale: a digits run of 20 rounds takes seconds on a laptop CPU; other local presets keep
# their own round count.
LOCAL_ROUNDS = {"digits": 20}
DEFAULT_SEEDS = {"local": 2, "paper": 5}

# Where the paper's data sets are expected, and how to get them (printed when they are missing).
DATA_HELP = {
    "cifar10": "CIFAR-10 via tensorflow-datasets: on a machine with tensorflow and network access run "
               "`tfds build cifar10 --file_format=array_record --data_dir=DIR`, copy DIR here and pass "
               "--data-dir DIR.",
    "imagenet12": "ImageNet-12: a folder with train/<class>/*.JPEG and val/<class>/*.JPEG for the 12 "
                  "classes; pass --data-dir <that folder>.",
    "femnist": "FEMNIST: LEAF's preprocessed JSON (data/train/*.json, data/test/*.json); pass "
               "--data-dir <leaf/data/femnist/data>.",
    "fashion_mnist": "Fashion-MNIST in IDX format (Debian's dataset-fashion-mnist package, or the "
                     "four *-ubyte.gz files); pass --data-dir <folder>.",
}
#: The `Config` fields every sweep script takes as options (the others through `--set`).
SCRIPT_FIELDS = ("data_dir", "rounds", "eval_every", "max_test_samples")
# Loaders without a default location.
NEEDS_DATA_DIR = ("imagenet12", "femnist")


# ---------------------------------------------------------------------------------------------
# Configs


def run_id(config: Config) -> str:
    """A stable short name for a config: the SHA-1 of its non-default fields, so adding a field to
    `Config` later does not rename (and recompute) finished runs."""
    return hashlib.sha1(json.dumps(config.non_default(), sort_keys=True).encode()).hexdigest()[:16]


def attack_config(base: Config, attack: str, defence: str, *, nu: float | None = None, seed: int = 0,
                  **changes: Any) -> Config:
    """`base` with one attack (STRIKE with its `nu`, default 1), one defence and one seed."""
    params: dict[str, Any] = {}
    if attack == "strike":
        params["nu"] = float(1.0 if nu is None else nu)
    return base.replace(attack=attack, attack_params=params, defence=defence, seed=seed, **changes)


def grid(base: Config, attacks: Iterable[str], defences: Iterable[str], seeds: Iterable[int],
         nu_grid: Sequence[float] = (1.0,), **changes: Any) -> list[Config]:
    """Every (defence, attack, seed) as a config, STRIKE once per `nu` in `nu_grid`."""
    out = []
    for d in defences:
        for a in attacks:
            for nu in (nu_grid if a == "strike" else (None,)):
                for s in seeds:
                    out.append(attack_config(base, a, d, nu=nu, seed=s, **changes))
    return out


def nu_of(config: Config) -> float | None:
    """STRIKE's `nu` of a config (None for every other attack)."""
    return config.attack_params.get("nu") if config.attack == "strike" else None


# ---------------------------------------------------------------------------------------------
# Running


def finished(config: Config, out_dir: str) -> bool:
    """Whether `<out_dir>/<run_id>/result.json` holds this config's finished run (what
    `simulate_many` would return as stored instead of running)."""
    path = os.path.join(out_dir, run_id(config), "result.json")
    try:
        with open(path) as fh:
            stored = json.load(fh)
    except (OSError, ValueError):
        return False
    return bool(stored.get("finished")) and config.same_run(stored.get("config", {}))


def run_sweep(
    configs: Sequence[Config],
    out_dir: str,
    *,
    progress: bool = True,
    on_result: Callable[[Config, dict], None] | None = None,
    max_runs_per_program: int | None = None,
) -> list[dict[str, Any]]:
    """Runs every config (skipping finished ones, resuming interrupted ones), as batches.

    Configs that differ only in numbers (seed, `nu`, Byzantine ratio, ...) run together as one
    compiled program (`strike_jax.simulation.simulate_many`); each keeps its own run directory.

    Args:
      configs: the runs (duplicates are run once).
      out_dir: one sub-directory per run (`<out_dir>/<run_id>/result.json` + checkpoint).
      progress: progress bars per batch.
      on_result: called after each run (e.g. to print a line).
      max_runs_per_program: cap on the runs batched together (default: what fits in memory).

    Returns:
      The results, in the order of `configs`.
    """
    from strike_jax import compile_cache
    from strike_jax.simulation import simulate_many

    compile_cache.enable()  # a rerun or resume of the script reads its programs back
    os.makedirs(out_dir, exist_ok=True)
    unique: dict[str, Config] = {}
    for cfg in configs:
        unique.setdefault(run_id(cfg), cfg)
    ids = list(unique)
    results = simulate_many([unique[i] for i in ids], run_dirs=[os.path.join(out_dir, i) for i in ids],
                            progress=progress, on_result=on_result, max_runs_per_program=max_runs_per_program)
    by_id = dict(zip(ids, results))
    return [by_id[run_id(c)] for c in configs]


def check_configs(configs: Iterable[Config], prog: str = "sweep") -> None:
    """Refuses (one line, exit code 2) a config whose attack, rules, hyper-parameters or Byzantine
    count the server pipeline does not accept (`simulation.check_config`); no data is loaded."""
    from strike_jax.simulation import check_config

    seen = set()
    for c in configs:
        key = c.to_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            check_config(c)
        except InputError as e:
            usage_error(prog, str(e))


def run_setting(config: Config) -> str:
    """A run's setting in a few words (data set, seed, attack, defence, n, f, split), for logs."""
    nu = nu_of(config)
    pre = "+".join(config.preaggregation)
    split = config.beta if config.partition == "dirichlet" else config.partition
    return (f"{config.dataset} seed={config.seed} {config.attack}{'' if nu is None else f'(nu={nu:g})'} vs "
            f"{pre + '+' if pre else ''}{config.defence} n={config.clients_per_round} f~{config.num_byzantine} "
            f"beta={split}")


def run_line(config: Config, result: dict) -> str:
    """One line describing a finished run (its setting and best accuracy), for logs."""
    b = result.get("best_accuracy")
    acc = "n/a" if b is None else f"{100 * b:.2f}%"
    return f"  {run_setting(config)}: best {acc}{' (diverged)' if result.get('diverged') else ''}"


def run_configs(configs: Sequence[Config], args: argparse.Namespace) -> tuple[list[dict], dict[str, Any]]:
    """Runs (or reuses) every config under `args.out_dir`; returns the results and run statistics.

    Every config is checked first (`check_configs`). Duplicate configs are run once. With
    `args.dry_run` nothing runs: the counts are printed and the process exits with code 0.

    Args:
      configs: the runs.
      args: the parsed options (`make_parser`): `script`, `out_dir`, `root`, `dry_run`, `quiet`.

    Returns:
      (results in the order of `configs`, {"runs", "reused", "computed", "wall_time_s", "out_dir"}),
      `out_dir` relative to the repository root when inside it.
    """
    check_configs(configs, args.script)
    unique: dict[str, Config] = {}
    for c in configs:
        unique.setdefault(run_id(c), c)
    todo = [c for c in unique.values() if not finished(c, args.out_dir)]
    reused = len(unique) - len(todo)
    print(f"{args.script}: {len(unique)} runs ({reused} already done, {len(todo)} to run) in {args.out_dir}",
          flush=True)
    if args.dry_run:
        raise SystemExit(0)
    ignore_runs(args.out_dir)
    t0 = time.perf_counter()

    def line(cfg: Config, res: dict) -> None:
        if not args.quiet:
            print(run_line(cfg, res), flush=True)

    results_u = run_sweep(list(unique.values()), args.out_dir, progress=not args.quiet, on_result=line)
    by_id = {run_id(c): r for c, r in zip(unique.values(), results_u)}
    wall = time.perf_counter() - t0
    stats = {"runs": len(unique), "reused": reused, "computed": len(todo), "wall_time_s": wall,
             "out_dir": display_path(args.out_dir, args.root)}
    print(f"{args.script}: {len(todo)} runs computed, {reused} reused, {wall:.0f} s", flush=True)
    return [by_id[run_id(c)] for c in configs], stats


def ignore_runs(out_dir: str) -> None:
    """Keeps run directories (checkpoints) out of git: a `.gitignore` of `*` in their `runs` root."""
    root = os.path.dirname(os.path.abspath(out_dir))
    if os.path.basename(root) == "runs" and not os.path.exists(os.path.join(root, ".gitignore")):
        try:
            atomic.write_text(os.path.join(root, ".gitignore"), "*\n")
        except OSError:
            pass


def display_path(path: str, root: str | None) -> str:
    """`path` relative to `root` when inside it (results name paths portably), else as given."""
    if root is None:
        return path
    a, r = os.path.abspath(path), os.path.abspath(root)
    return os.path.relpath(a, r) if os.path.commonpath([a, r]) == r else path


# ---------------------------------------------------------------------------------------------
# Command line


def usage_error(prog: str, message: str) -> NoReturn:
    """Prints `<prog>: error: <message>` (one line) to stderr and exits with code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, f"{message} (see --help)")


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"3"` -> seeds (0, 1, 2); `"0,4,7"` -> those seeds; `"2-4"` -> (2, 3, 4)."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        elif "-" in text.lstrip("-"):
            lo, hi = text.split("-", 1)
            seeds = tuple(range(int(lo), int(hi) + 1))
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a count (3 -> seeds 0,1,2), a list (0,4,7) or a range (2-4)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: need at least one seed, distinct and >= 0")
    return seeds


def _number_list(kind: type, what: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            vals = tuple(kind(v) for v in str(text).split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{text!r}: need at least one of the {what}")
        return vals

    return parse


#: argparse types: comma-separated floats / integers, e.g. `--nu-grid 0.5,1,2`.
parse_floats = _number_list(float, "numbers")
parse_ints = _number_list(int, "integers")


def allowed_names(kind: str) -> tuple[str, ...]:
    """Names accepted for `kind`: "attack" (`"none"` and the attack registry) or "rule"."""
    from strike_jax import registry

    return (("none",) if kind == "attack" else ()) + registry.names(kind)


def names_type(allowed: str | Sequence[str] | None = None, *, single: bool = False) -> Callable[[str], Any]:
    """An argparse type: a comma-separated list of names, each checked against `allowed`.

    Args:
      allowed: "attack" or "rule" (`strike_jax.registry`'s names, looked up when parsing; `"none"`
        allowed for attacks), a sequence of names, or None (any name).
      single: exactly one name (returned as a string, not a tuple).
    """
    label = {"attack": "attack", "rule": "defence"}.get(allowed, "name") if isinstance(allowed, str) else "name"

    def parse(text: str):
        vals = tuple(v.strip() for v in str(text).split(",") if v.strip())
        if not vals or (single and len(vals) != 1):
            raise argparse.ArgumentTypeError(f"{text!r}: need {'one name' if single else 'at least one name'}")
        names = allowed_names(allowed) if isinstance(allowed, str) else allowed
        if names is not None:
            bad = [v for v in vals if v not in names]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {label} {bad[0]!r}; allowed: {', '.join(names)}")
        return vals[0] if single else vals

    return parse


def make_parser(script_file: str, description: str | None, *, paper_dataset: str = "cifar10",
                local_dataset: str = "digits") -> ArgumentParser:
    """The options every sweep script shares.

    Args:
      script_file: the script's `__file__`: its name (`table1`) names the default run directory
        `<its folder>/runs/<name>` and its folder holds `results/` (the default `--results-dir`).
      description: the script's docstring (shown by `--help`).
      paper_dataset: the default `--dataset` at `--scale paper` (the paper's figure uses it).
      local_dataset: the default `--dataset` at `--scale local`.

    Returns:
      A parser to add the script's own options to; parse with `parse_args`.
    """
    script = os.path.splitext(os.path.basename(script_file))[0]
    here = os.path.dirname(os.path.abspath(script_file))
    p = ArgumentParser(prog=script, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(script=script, paper_dataset=paper_dataset, local_dataset=local_dataset,
                   experiments_dir=here, root=os.path.dirname(here))
    p.add_argument("--scale", choices=SCALES, default="local",
                   help="local: small presets that run here in minutes (default); paper: the paper's "
                        "presets (cifar10, imagenet12, femnist), which need the data on disk")
    p.add_argument("--dataset", help=f"a preset name (default: {local_dataset} at local scale, "
                                     f"{paper_dataset} at paper scale)")
    options.add_config_options(p, ("data_dir",),
                               helps={"data_dir": "where the data set lives (passed to the data layer)"})
    p.add_argument("--seeds", type=parse_seeds,
                   help="a count (3 -> 0,1,2), a list (0,4,7) or a range (2-4); default 2 at local "
                        "scale, 5 at paper scale")
    options.add_config_options(p, ("rounds", "eval_every", "max_test_samples"), helps={
        "rounds": "communication rounds (default: 20 for digits, else the preset's)",
        "eval_every": "evaluate every k rounds (default 1)",
        "max_test_samples": "evaluate on at most this many test samples (default: all)"})
    p.add_argument("--set", action="append", type=options.parse_set, metavar="FIELD=VALUE", default=[],
                   help="any other Config field, e.g. --set strategy=loop --set num_clients=30 (repeatable)")
    p.add_argument("--out-dir", dest="out_dir",
                   help=f"run directories (default: experiments/runs/{script}); resumable")
    p.add_argument("--results-dir", dest="results_dir", default=os.path.join(here, "results"),
                   help="where the tables and figures go (default: experiments/results)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result files that hold a result computed with another setting (without "
                        "it the script refuses, before running anything)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the figure")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print how many runs the experiment needs (and how many are done) and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses `argv` (a `make_parser` parser) and fills the scale-dependent defaults (`finish_args`)."""
    return finish_args(parser.parse_args(argv))


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the scale-dependent defaults of parsed options: dataset, seeds, out-dir."""
    if args.dataset is None:
        args.dataset = args.paper_dataset if args.scale == "paper" else args.local_dataset
    if args.seeds is None:
        args.seeds = tuple(range(DEFAULT_SEEDS[args.scale]))
    if args.out_dir is None:
        args.out_dir = os.path.join(args.experiments_dir, "runs", args.script)
    if args.scale == "local" and args.dataset in PAPER_DATASETS:
        print(f"note: --scale local with the paper data set {args.dataset!r}: using its paper preset "
              f"(pass --rounds to shorten it)", file=sys.stderr)
    return args


class DataMissing(SystemExit):
    """Raised (exit code 2) when the data set a preset needs is not on disk."""


def require_data(config: Config, prog: str = "sweep") -> Config:
    """Loads the data once (it stays cached for the runs) and fixes FEMNIST's client count.

    The FEMNIST preset partitions by writer (`partition="natural"`); the number of writers is only
    known once the LEAF files are read, and `simulate` insists `num_clients` matches it.

    Raises:
      DataMissing (SystemExit 2) with a message naming what to download when the data is missing.
    """
    from strike_jax import simulation

    if config.data_dir is None and config.dataset in NEEDS_DATA_DIR:
        print(f"The data set {config.dataset!r} needs --data-dir.\n{DATA_HELP[config.dataset]}", file=sys.stderr)
        raise DataMissing(2)
    try:
        ds = simulation.load_dataset(config)
    except (FileNotFoundError, OSError, ImportError) as e:
        msg = (f"The data set {config.dataset!r} is not available here ({type(e).__name__}: {e}).\n"
               f"{DATA_HELP.get(config.dataset, '')}\nThe paper-scale experiments need the real data on "
               f"disk; at --scale local use --dataset digits (embedded) or fashion_mnist.")
        print(msg, file=sys.stderr)
        raise DataMissing(2) from e
    except InputError as e:  # e.g. --data-dir for a data set that has none
        usage_error(prog, f"data set {config.dataset!r}: {e}")
    if config.partition == "natural":
        k = ds.num_natural_clients
        if k is None:
            usage_error(prog, f"{config.dataset!r} has no natural clients; use --set partition=dirichlet")
        if config.num_clients != k:
            config = config.replace(num_clients=k, clients_per_round=min(config.clients_per_round, k))
    return config


def base_config(args: argparse.Namespace, *, load_data: bool = True, **overrides: Any) -> Config:
    """The experiment's starting config: the preset for `--dataset` with the scale's defaults,
    the script's `overrides`, then the user's `--rounds` / `--set` / ... (the user wins).

    A config `Config` refuses stops the script (one line, exit code 2) before any data loads;
    then, unless `--dry-run` or `load_data=False`, the data set is loaded once (`require_data`).
    """
    fields: dict[str, Any] = {}
    if args.scale == "local" and args.dataset in LOCAL_ROUNDS:
        fields["rounds"] = LOCAL_ROUNDS[args.dataset]
    fields.update(overrides)
    fields.update(options.overrides(args, SCRIPT_FIELDS))
    try:
        config = preset(args.dataset, **fields)
    except InputError as e:
        usage_error(args.script, str(e))
    if load_data and not getattr(args, "dry_run", False):
        config = require_data(config, args.script)
    return config


__all__ = [
    "ATTACKS", "BASELINE_ATTACKS", "DEFENCES", "NU_GRID", "ArgumentParser", "DataMissing", "allowed_names",
    "attack_config", "base_config", "check_configs", "display_path", "finish_args", "finished",
    "grid", "ignore_runs", "make_parser", "names_type", "nu_of", "parse_args", "parse_floats", "parse_ints",
    "parse_seeds", "require_data", "run_configs", "run_id", "run_line", "run_setting", "run_sweep", "usage_error",
]

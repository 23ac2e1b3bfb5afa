"""Table cells, markdown tables, result files and figures of sweep experiments (SPEC §2.5, §8).

A cell of the paper's tables is the mean ± std (population std, over seeds) of each run's best test
accuracy over the rounds (`simulation.best_accuracy`); lower = stronger attack. STRIKE's cell is
its lowest mean over the `nu` grid (paper App. D.1), the chosen `nu` and every `nu`'s own cell
recorded in it. A cell is a plain dict, so that it goes into the result JSON as is:

    {"mean": float, "std": float, "seeds": [int], "values": [float], "diverged": int,
     # STRIKE only:
     "nu": float, "per_nu": {"0.5": cell, ...}}

NaN values (runs never evaluated) are left out of mean and std; a cell over one seed prints its
mean alone (no "± 0.00"). Result files are `<results-dir>/<name>_<dataset><suffix>.{md,json,png}`,
written atomically; `check_results` refuses, before anything runs, to replace a result computed
with another setting unless `--overwrite`. Figures need matplotlib (the `plots` extra): without it
they are skipped with a message.

Whole experiments (configs -> runs -> cells -> table, JSON and figure) are in `strike_jax.studies`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

from strike_jax import atomic, sweep
from strike_jax.config import Config

# A grouping key (`collect`). Mapping parameters below take `Any` keys (row and column names of any
# hashable type): Mapping is invariant in its key type.
_K = TypeVar("_K", bound=Hashable)

DISPLAY = {
    "bitflip": "BitFlip", "lie": "LIE", "ipm": "IPM", "minmax": "MinMax", "minsum": "MinSum",
    "mimic": "Mimic", "strike": "STRIKE", "none": "no attack", "labelflip": "LabelFlip",
    "multikrum": "Multi-Krum", "median": "Median", "rfa": "RFA", "aksel": "Aksel", "cclip": "CClip",
    "dnc": "DnC", "rbtm": "RBTM", "trmean": "TrMean", "mean": "Mean", "krum": "Krum", "bulyan": "Bulyan",
    "gradient": "Gradient", "opt_lie": "Opt-LIE", "opt_ipm": "Opt-IPM",
    "gas": "GAS", "uniformity": "Uniformity", "strike_diverse": "STRIKE (diverse)",
    "nonfinite": "NonFinite", "gaussian": "Gaussian", "signflip": "SignFlip", "fang": "Fang",
    "agr_tailored": "AGR-tailored", "meamed": "MeaMed", "monna": "MoNNA", "mda": "MDA", "smea": "SMEA",
    "caf": "CAF", "signguard": "SignGuard", "clippedclustering": "ClippedClustering", "fltrust": "FLTrust",
    "foolsgold": "FoolsGold", "nnm": "NNM", "bucketing": "Bucketing", "clipping": "Clipping", "arc": "ARC",
}

# Fixed colours so an attack looks the same in every figure; STRIKE stands out.
COLORS = {"bitflip": "tab:blue", "lie": "tab:orange", "ipm": "tab:green", "minmax": "tab:purple",
          "minsum": "tab:brown", "mimic": "tab:gray", "labelflip": "tab:olive", "strike": "crimson",
          "none": "black", "gradient": "darkred", "opt_lie": "tab:pink", "opt_ipm": "tab:cyan",
          "strike_diverse": "salmon"}

CELLS_NOTE = ("Cells: best test accuracy over the rounds (%), mean ± std over seeds (one seed: its value); "
              "lower = stronger attack; † = some seeds diverged (non-finite aggregate).")


def display(name: Hashable) -> str:
    """The paper's spelling of an attack or rule name (`"multikrum"` -> `"Multi-Krum"`); other keys
    as `str`."""
    return DISPLAY.get(name, str(name)) if isinstance(name, str) else str(name)


# ---------------------------------------------------------------------------------------------
# Cells


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and population std (numpy's default) of the finite-or-inf values; None and NaN left
    out; (NaN, NaN) when nothing is left."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def collect(configs: Sequence[Config], results: Sequence[Mapping[str, Any]],
            key: Callable[[Config], _K]) -> dict[_K, list[tuple[int, float, bool]]]:
    """Groups runs by `key(config)`: `{key: [(seed, best accuracy (NaN if never evaluated), diverged)]}`."""
    from strike_jax.simulation import best_accuracy

    out: dict[_K, list[tuple[int, float, bool]]] = {}
    for c, r in zip(configs, results):
        out.setdefault(key(c), []).append((c.seed, best_accuracy(r), bool(r.get("diverged"))))
    return out


def make_cell(runs: Sequence[tuple[int, float, bool]], **extra: Any) -> dict[str, Any]:
    """A table cell from `(seed, value, diverged)` triples: mean ± std over seeds and the per-seed
    values (see the module docstring); `extra` keys are added."""
    m, s = mean_std([v for _, v, _ in runs])
    cell = {"mean": m, "std": s, "seeds": [sd for sd, _, _ in runs], "values": [v for _, v, _ in runs],
            "diverged": sum(dv for _, _, dv in runs)}
    cell.update(extra)
    return cell


def lowest(cells: Mapping[Hashable, Mapping[str, Any]]) -> Hashable | None:
    """The key of the cell with the lowest mean (the strongest attack); a NaN mean is never chosen,
    ties go to the first key. None when no cell has a finite mean."""
    finite = [k for k, c in cells.items() if c["mean"] is not None and not math.isnan(c["mean"])]
    return min(finite, key=lambda k: cells[k]["mean"]) if finite else None


def attack_cells(configs: Sequence[Config], results: Sequence[Mapping[str, Any]],
                 col: Callable[[Config], Hashable] = lambda c: c.defence) -> dict[str, dict[Hashable, dict]]:
    """Cells keyed `[attack][col(config)]` (default: the defence).

    STRIKE's cell is its lowest mean over the `nu` values it was run with (App. D.1): that `nu`'s
    cell with `nu` and `per_nu` (`{f"{nu:g}": cell}`) added.
    """
    groups = collect(configs, results, lambda c: (c.attack, col(c), sweep.nu_of(c)))
    by_nu: dict[str, dict[Hashable, dict[Any, list]]] = {}
    for (a, cval, nu), runs in groups.items():
        by_nu.setdefault(a, {}).setdefault(cval, {})[nu] = runs
    out: dict[str, dict[Hashable, dict]] = {}
    for a, by_col in by_nu.items():
        for cval, runs_by_nu in by_col.items():
            if a != "strike":
                out.setdefault(a, {})[cval] = make_cell(runs_by_nu[None])
                continue
            per_nu = {nu: make_cell(runs_by_nu[nu]) for nu in sorted(runs_by_nu)}  # ties: the smallest nu
            best = lowest(per_nu)
            best = next(iter(per_nu)) if best is None else best
            out.setdefault(a, {})[cval] = dict(per_nu[best], nu=best,
                                               per_nu={f"{nu:g}": cell for nu, cell in per_nu.items()})
    return out


def _count(cell: Mapping[str, Any]) -> int | None:
    values = cell.get("values")
    if values is None:
        return None
    return sum(1 for v in values if v is not None and not math.isnan(v))


def format_cell(cell: Mapping[str, Any] | None, *, nu: bool = False, scale: float = 100.0, spec: str = ".2f",
                std_spec: str | None = None) -> str:
    """`mean ± std` (the paper's format: percent, two decimals); the mean alone for a cell over one
    seed; "n/a" for no value, "—" for no cell; `nu`: STRIKE's chosen `nu` appended; "†" when some
    seeds diverged.

    Args:
      scale, spec, std_spec: the numbers printed are `format(scale * x, spec)` (`std_spec` for the
        std; default `spec`).
    """
    if cell is None:
        return "—"
    m = cell["mean"]
    if m is None or math.isnan(m):
        return "n/a"
    txt = format(scale * m, spec)
    if _count(cell) != 1:
        txt += " ± " + format(scale * cell["std"], std_spec or spec)
    if nu and cell.get("nu") is not None:
        txt += f" (ν={cell['nu']:g})"
    if cell.get("diverged"):
        txt += "†"
    return txt


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown_table(title: str, row_header: str, rows: Sequence[Hashable], cols: Sequence[Hashable],
                   cells: Mapping[Any, Mapping[Any, Mapping[str, Any]]], *,
                   bold_min: bool = True, row_label: Callable[[Hashable], str] = display,
                   col_label: Callable[[Hashable], str] = display, show_nu: bool = False,
                   reference_rows: Sequence[Hashable] = ()) -> str:
    """A markdown table of cells (`format_cell`), under a `### title` heading.

    Args:
      title: the heading line.
      row_header: the first column's header.
      rows, cols: keys into `cells[row][col]`; a missing cell prints "—".
      bold_min: bold the lowest mean of each column (the strongest attack), ignoring
        `reference_rows` (e.g. "no attack").
      row_label, col_label: how keys are printed (default: `display`).
      show_nu: append STRIKE's chosen `nu` to its cells.
    """
    lines = [f"### {title}", "", f"| {row_header} | " + " | ".join(col_label(c) for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    best = {c: lowest({r: cells[r][c] for r in rows if r not in reference_rows and c in cells.get(r, {})})
            for c in cols}
    for r in rows:
        parts = []
        for c in cols:
            cell = cells.get(r, {}).get(c)
            txt = format_cell(cell, nu=show_nu)
            if (bold_min and cell is not None and r not in reference_rows and best[c] is not None
                    and cell["mean"] == cells[best[c]][c]["mean"]):
                txt = f"**{txt}**"
            parts.append(txt)
        lines.append(f"| {row_label(r)} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def strike_nu_note(cells: Mapping[str, Mapping[Hashable, Mapping[str, Any]]], cols: Sequence[Hashable],
                   nu_grid: Sequence[float]) -> str:
    """The line under a table saying which `nu` STRIKE's cell took in each column ("" without STRIKE)."""
    if "strike" not in cells:
        return ""
    nus = ", ".join(f"{display(c)} ν={cells['strike'][c]['nu']:g}" for c in cols if c in cells["strike"])
    return (f"\nSTRIKE's cell is its lowest mean over ν ∈ {{{', '.join(f'{v:g}' for v in nu_grid)}}}"
            f"; the chosen ν: {nus}.\n")


def describe(config: Config, args: argparse.Namespace, *, split: str | None = None,
             clients: str | None = None) -> str:
    """One line with the setting of an experiment (for captions): data set, model, clients, split,
    Byzantine ratio, rounds, `args.seeds`, `args.scale`; `split` / `clients` replace the split's /
    the client counts' text (e.g. "split varied")."""
    if split is None:
        split = f"Dirichlet β={config.beta:g}" if config.partition == "dirichlet" else config.partition
    if clients is None:
        clients = f"N={config.num_clients} clients, n={config.clients_per_round} per round"
    seeds = ",".join(str(s) for s in args.seeds)
    return (f"{config.dataset} ({config.model}), {clients}, {split}, Byzantine ratio "
            f"{config.byzantine_ratio:g}, {config.rounds} rounds, seeds {seeds}, scale={args.scale}")


def run_footer(stats: Mapping[str, Any], note: str = CELLS_NOTE) -> str:
    """The paragraph under a table: how many runs, computed or reused, where, how long; then `note`."""
    return (f"\nRuns: {stats['runs']} ({stats['computed']} computed in this invocation, {stats['reused']} "
            f"reused) in `{stats['out_dir']}`; this invocation took {stats['wall_time_s']:.0f} s. {note}\n")


# ---------------------------------------------------------------------------------------------
# Result files


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if k is None:
        return "null"
    return f"{k:g}" if isinstance(k, float) else str(k)


def jsonable(obj: Any) -> Any:
    """Strict JSON: dict keys to strings (floats as `%g`), tuples to lists, NaN to None, a `Config`
    to its dict."""
    if isinstance(obj, Config):
        return jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {_key(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def result_stem(args: argparse.Namespace, name: str, suffix: str = "") -> str:
    """`<args.results_dir>/<name>_<args.dataset><suffix>`: the result files without extension."""
    return os.path.join(args.results_dir, f"{name}_{args.dataset}{suffix}")


_MISSING = object()


def _short(v: Any) -> str:
    if v is _MISSING:
        return "absent"
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _differences(here: Any, there: Any, path: str, out: list[str]) -> None:
    if isinstance(here, Config):
        if not isinstance(there, Mapping):
            out.append(f"{path}: {_short(there)} there")
            return
        mine = jsonable(here)
        # Only the fields the stored result recorded: one written before a field existed is the same
        # setting when every field it has agrees.
        for k in there:
            if k in mine:
                _differences(mine[k], there[k], f"{path}.{k}", out)
        return
    if isinstance(here, Mapping) and isinstance(there, Mapping):
        mine = {_key(k): v for k, v in here.items()}
        for k in sorted(set(mine) | set(there)):
            _differences(mine.get(k, _MISSING), there.get(k, _MISSING), f"{path}.{k}" if path else k, out)
        return
    mine = here if here is _MISSING else jsonable(here)
    if mine == there:
        return
    if isinstance(mine, list) and isinstance(there, list):
        only_there = [v for v in there if v not in mine]
        only_here = [v for v in mine if v not in there]
        if only_there or only_here:
            parts = ([f"{_short(only_there)} only there"] if only_there else []) + (
                [f"{_short(only_here)} only here"] if only_here else [])
            out.append(f"{path}: {', '.join(parts)}")
            return
    out.append(f"{path}: {_short(there)} there, {_short(mine)} here")


def check_results(stem: str, spec: Mapping[str, Any], args: argparse.Namespace) -> None:
    """Refuses to go on (one line, exit code 2) when `<stem>.json` holds a result computed with
    another setting, unless `args.overwrite`. Call it before running anything.

    Args:
      stem: the result files without extension (`result_stem`).
      spec: what identifies the result (e.g. seeds, `nu` grid, attacks, the base `Config`), as it
        goes into the JSON payload; a `Config` is compared on the fields the stored one recorded.
      args: the parsed options (`script`, `overwrite`).
    """
    path = stem + ".json"
    if getattr(args, "overwrite", False) or not os.path.exists(path):
        return
    try:
        with open(path) as fh:
            stored = json.load(fh)
    except (OSError, ValueError) as e:
        diffs = [f"it cannot be read as JSON ({type(e).__name__})"]
    else:
        diffs = []
        stored = stored if isinstance(stored, Mapping) else {}
        for k, v in spec.items():
            _differences(v, stored.get(k, _MISSING), k, diffs)
    if diffs:
        more = f"; +{len(diffs) - 3} more" if len(diffs) > 3 else ""
        shown = sweep.display_path(path, getattr(args, "root", None))
        sweep.usage_error(args.script, f"{shown} holds a result computed with another setting ({'; '.join(diffs[:3])}"
                                       f"{more}); pass --overwrite to replace it, or --results-dir DIR to "
                                       f"write elsewhere")


def write_results(stem: str, markdown: str, payload: Mapping[str, Any]) -> None:
    """Writes `<stem>.md` and `<stem>.json` (`jsonable(payload)`) atomically, and prints the markdown."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    atomic.write_text(stem + ".md", markdown)
    atomic.write_json(stem + ".json", jsonable(payload))
    print(markdown)
    print(f"wrote {stem}.md and {stem}.json", flush=True)


# ---------------------------------------------------------------------------------------------
# Figures


def pyplot():
    """matplotlib.pyplot with the file-only backend, or None (and a message) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the figure (pip install 'strike_jax[plots]').",
              file=sys.stderr)
        return None
    return plt


def save_figure(fig, path: str) -> None:
    """Saves a figure atomically (temporary file in the same folder, then rename) and closes it."""
    import matplotlib.pyplot as plt

    fmt = os.path.splitext(path)[1][1:] or "png"
    try:
        atomic.atomic_write(path, lambda fh: fig.savefig(fh, dpi=130, bbox_inches="tight", format=fmt))
    finally:
        plt.close(fig)
    print(f"wrote {path}", flush=True)


def line_plot(path: str, title: str, xlabel: str, xs: Sequence[Any], series: Mapping[str, Mapping[Any, Mapping]],
              *, xticklabels: Sequence[str] | None = None) -> None:
    """One line per attack (`series[attack][x] = cell`), error bars = std over seeds."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pos = list(range(len(xs)))
    for name, by_x in series.items():
        ys = [100 * by_x[x]["mean"] if x in by_x else math.nan for x in xs]
        es = [100 * by_x[x]["std"] if x in by_x else 0.0 for x in xs]
        style = dict(marker="*", markersize=11, linewidth=2.2) if name == "strike" else dict(marker="o")
        ax.errorbar(pos, ys, yerr=es, capsize=3, label=display(name), color=COLORS.get(name), **style)
    ax.set_xticks(pos)
    ax.set_xticklabels(xticklabels or [_key(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    save_figure(fig, path)


def bar_plot(path: str, title: str, attacks: Sequence[str], defences: Sequence[str],
             cells: Mapping[str, Mapping[Any, Mapping]]) -> None:
    """Grouped bars: one group per defence, one bar per attack (as the paper's Figure 4)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(defences) + 2), 4.2))
    width = 0.8 / max(1, len(attacks))
    for i, a in enumerate(attacks):
        xs = [j + (i - (len(attacks) - 1) / 2) * width for j in range(len(defences))]
        ys = [100 * cells.get(a, {}).get(d, {"mean": math.nan})["mean"] for d in defences]
        es = [100 * cells.get(a, {}).get(d, {"std": 0.0})["std"] for d in defences]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=display(a), color=COLORS.get(a))
    ax.set_xticks(range(len(defences)))
    ax.set_xticklabels([display(d) for d in defences])
    ax.set_ylabel("best test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=len(attacks), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def heatmap(path: str, title: str, rows: Sequence[Hashable], cols: Sequence[Hashable],
            values: Mapping[Hashable, Mapping[Hashable, float]], *, marked: Mapping[Hashable, Hashable] | None = None,
            labels: Mapping[Hashable, Mapping[Hashable, str]] | None = None,
            row_label: Callable[[Hashable], str] = display, col_label: Callable[[Hashable], str] = display,
            vmin: float = 0.0, vmax: float = 100.0,
            cbar_label: str = "best test accuracy (%)") -> None:
    """A rows x cols heatmap of numbers (`values[row][col]`, e.g. accuracy in %), each cell printed.

    Args:
      path: the figure file (written atomically).
      title: the figure's title.
      rows, cols: keys into `values`; a missing or NaN value is drawn grey.
      values: the numbers.
      marked: `{row: col}`: cells outlined (e.g. each defence's worst attack).
      labels: `labels[row][col]` replaces a cell's printed number (e.g. "div" for a diverged run).
      row_label, col_label: how keys are printed.
      vmin, vmax: the colour scale's range.
    """
    plt = pyplot()
    if plt is None:
        return
    import numpy as np

    marked, labels = marked or {}, labels or {}
    grid = np.array([[values.get(r, {}).get(c, math.nan) for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(cols) + 2.5), max(3.0, 0.36 * len(rows) + 1.6)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            text = labels.get(r, {}).get(c)
            if text is None:
                text = "" if math.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
        if r in marked and marked[r] in cols:
            j = list(cols).index(marked[r])
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([col_label(c) for c in cols], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([row_label(r) for r in rows], fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02).set_label(cbar_label)
    save_figure(fig, path)


__all__ = [
    "CELLS_NOTE", "COLORS", "DISPLAY", "attack_cells", "bar_plot", "check_results", "collect", "describe",
    "display", "format_cell", "heatmap", "jsonable", "line_plot", "lowest", "make_cell", "markdown_table", "mean_std",
    "pyplot", "result_stem", "run_footer", "save_figure", "strike_nu_note", "write_results",
]

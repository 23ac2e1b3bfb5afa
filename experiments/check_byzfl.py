"""Compares the rules and attacks strike_jax shares with ByzFL on random odd-n inputs (not a test).

    python -m experiments.check_byzfl --byzfl-python /work/venvs/byzfl/bin/python

ByzFL (with PyTorch) lives in its own virtual environment, never a dependency of strike_jax: this
script (run with strike_jax's Python) writes the inputs to a temporary .npz file, runs itself in
the ByzFL environment with `--byzfl-worker` (which imports only NumPy and ByzFL), and compares.
For every rule and size it records the largest absolute difference over the trials in
`experiments/results/check_byzfl.md`.

Two input kinds per size: "random" (Gaussian rows) and "outliers" (f rows far away, a clear-cut
case). ByzFL's SMEA and CAF estimate the top eigenpair with one power-iteration step from a
random start (seeded here), where strike_jax computes it exactly (the papers' definition); their
differences on "random" inputs are expected and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (ByzFL class, uses f, kind)
SHARED = {
    "meamed": ("Meamed", True, "agg"),
    "monna": ("MoNNA", True, "agg"),
    "mda": ("MDA", True, "agg"),
    "smea": ("SMEA", True, "agg"),
    "caf": ("CAF", True, "agg"),
    "clipping": ("Clipping", False, "pre"),
    "arc": ("ARC", True, "pre"),
    "signflip": ("SignFlipping", False, "attack"),
}
SIZES = ((7, 5), (9, 20), (11, 8), (13, 30))
TRIALS = 5


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    cases = []
    for n, d in SIZES:
        for kind in ("random", "outliers"):
            for t in range(TRIALS):
                X = rng.normal(size=(n, d))
                f = (n - 1) // 2 if kind == "random" else max(1, n // 4)
                if kind == "outliers":
                    X[:f] += rng.normal(loc=8.0, size=(f, d))
                if t % 2:
                    X *= 3.0  # some rows above the clipping threshold
                cases.append({"n": n, "d": d, "kind": kind, "f": min(f, 3), "X": X.astype(np.float32)})
    return cases


def byzfl_worker(path_in: str, path_out: str) -> None:
    """Runs inside the ByzFL environment: NumPy + ByzFL only."""
    import types

    # ByzFL's package __init__ imports its training benchmark (`byzfl.benchmark`), hence
    # torchvision, whose compiled operators may not match the CPU torch wheel beside it. The rules
    # compared here never use the benchmark: an empty stand-in lets the import go through.
    sys.modules.setdefault("byzfl.benchmark", types.ModuleType("byzfl.benchmark"))
    import byzfl
    from byzfl.aggregators import preaggregators

    data = np.load(path_in)
    meta = json.loads(str(data["meta"]))
    out = {}
    for i, case in enumerate(meta):
        X = data[f"X{i}"].astype(np.float64)
        f = case["f"]
        for name, (cls, uses_f, kind) in SHARED.items():
            np.random.seed(1000 + i)  # ByzFL's SMEA/CAF draw their power-iteration start from np.random
            if kind == "agg":
                obj = getattr(byzfl, cls)(f=f) if uses_f else getattr(byzfl, cls)()
                res = obj(X.copy())
            elif kind == "pre":
                obj = getattr(preaggregators, cls)(f=f) if uses_f else getattr(preaggregators, cls)()
                res = obj(X.copy())
            else:
                res = byzfl.SignFlipping()(X[f:].copy())
            out[f"{name}_{i}"] = np.asarray(res, np.float64)
    np.savez(path_out, **out)


def strike_outputs(cases):
    import jax
    import jax.numpy as jnp

    from strike_jax import aggregators, attacks

    out = {}
    for i, case in enumerate(cases):
        X = jnp.asarray(case["X"])
        f = case["f"]
        for name, (_, _, kind) in SHARED.items():
            if kind == "agg":
                rule = aggregators.get(name)
                res = rule.aggregate(X, rule.init(X), f=f, key=jax.random.PRNGKey(0))[0]
            elif kind == "pre":
                res = aggregators.get(name).apply(X, (), f=f)[0]
            else:
                m = np.zeros(case["n"], bool)
                m[:f] = True
                res = attacks.get("signflip").apply(X, jnp.asarray(m), ())[0][0]
            out[f"{name}_{i}"] = np.asarray(res, np.float64)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--byzfl-python", default="/work/venvs/byzfl/bin/python")
    p.add_argument("--byzfl-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "experiments", "results", "check_byzfl.md"))
    args = p.parse_args(argv)
    if args.byzfl_worker:
        byzfl_worker(*args.byzfl_worker)
        return 0

    cases = make_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        meta = [{k: v for k, v in c.items() if k != "X"} for c in cases]
        np.savez(path_in, meta=json.dumps(meta), **{f"X{i}": c["X"] for i, c in enumerate(cases)})
        subprocess.run([args.byzfl_python, os.path.abspath(__file__), "--byzfl-worker", path_in, path_out],
                       check=True)
        theirs = dict(np.load(path_out))
        version = subprocess.run([args.byzfl_python, "-c", "import importlib.metadata as m; print(m.version('byzfl'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    ours = strike_outputs(cases)

    rows = []
    for name in SHARED:
        for (n, d) in SIZES:
            for kind in ("random", "outliers"):
                idx = [i for i, c in enumerate(cases) if (c["n"], c["d"], c["kind"]) == (n, d, kind)]
                diffs = [float(np.max(np.abs(ours[f"{name}_{i}"] - theirs[f"{name}_{i}"]))) for i in idx]
                scale = max(float(np.max(np.abs(theirs[f"{name}_{i}"]))) for i in idx)
                rows.append((name, n, d, kind, cases[idx[0]]["f"], max(diffs), sum(x > 1e-4 * max(scale, 1) for x in diffs),
                             len(idx)))
                print(f"{name:9s} n={n:2d} d={d:2d} {kind:8s} max|diff| {max(diffs):.2e}", flush=True)

    lines = [
        "# strike_jax vs ByzFL on shared rules (`experiments/check_byzfl.py`)",
        "",
        f"ByzFL {version} (NumPy inputs, float64) vs strike_jax (float32), {TRIALS} trials per row, odd n. "
        "`random`: Gaussian rows, f = min((n-1)//2, 3); `outliers`: f = min(max(1, n//4), 3) rows shifted by "
        "N(8, 1) per coordinate. Odd trials are scaled by 3 so that clipping acts. `mismatches`: trials whose max "
        "|diff| exceeds 1e-4 x max(1, max |ByzFL output|).",
        "",
        "| rule | n | d | inputs | f | max abs diff | mismatches / trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n, d, kind, f, diff, bad, tot in rows:
        lines.append(f"| {name} | {n} | {d} | {kind} | {f} | {diff:.2e} | {bad} / {tot} |")
    lines += [
        "",
        "Notes:",
        "- SMEA and CAF: ByzFL 0.0.11 estimates the top eigenvalue / eigenvector of the covariance with one "
        "power-iteration step from a random start (`max_iters=1`); strike_jax computes them exactly, as the papers "
        "define them (checked against float64 brute force in tests/test_aggregators_more.py). One step from a random "
        "start is a poor estimate (about the norm of the covariance applied to a random vector), so ByzFL's SMEA often "
        "picks another subset even with clear outliers, and CAF's weights (continuous in the eigenvector) differ "
        "on every input. These rows measure ByzFL's estimate, not an error of strike_jax.",
        "- Meamed: ByzFL uses `np.median` (midpoint for even n); on odd n it is the lower median used here.",
        "- signflip: ByzFL's `SignFlipping` is minus the mean of the honest vectors; strike_jax's `bitflip` "
        "(the paper's BitFlip) is minus each Byzantine client's own update.",
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

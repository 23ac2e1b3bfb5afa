"""Speed of every aggregation rule (and pre-aggregator) beside a plain NumPy version of it.

    python experiments/bench_aggregators.py                                # all sizes, all rules
    python experiments/bench_aggregators.py --sizes 50x1e6,1000x1e5 --repeats 5
    python experiments/bench_aggregators.py --rules median,trmean,krum --sizes 50x2.47e6

For every size `(n, d)` (default 50 x 1e6, 50 x 2.47e6 (AlexNet-CIFAR), 50 x 11.2e6 (ResNet-18),
1000 x 1e5) it builds float32 updates: `n - f` honest rows `N(mu, 1)` with a shared offset
`mu`, and `f = n // 5` (the paper's 20%) identical Byzantine rows `mu - 1.5` (a LIE-like shift);
MDA and SMEA run with `f` = their limit when it is lower (they enumerate `C(n, f)` subsets).
FLTrust gets the honest mean as its root update, FoolsGold the client ids `0..n-1` and a fresh
history (`num_clients = n`).
Then, for every rule of `aggregators.names()` and pre-aggregator of `aggregators.preaggregator_names()`:

* JAX: `jax.jit` of `aggregate` (or `apply` for the pre-aggregators) with the
  rule's default hyper-parameters, `f` and the key passed as traced arguments as in the
  simulation; the median of `--repeats` calls after one compiling call (reported separately);
* NumPy: the same rule written in vectorised NumPy (`np.partition` / `np.sort` along the client
  axis, `X @ X.T` Gram matrices, `w @ X` averages: fair baselines, not loops), median of
  `--numpy-repeats` calls;

checks that both agree (relative difference of the outputs; DnC and bucketing draw their
randomness differently, so only their shape is compared), and records the process's peak
resident memory after each rule (`ru_maxrss`, monotone over the run). Results are merged into
`experiments/results/bench_aggregators_<backend>.json` (a run over some sizes keeps the others)
and the table `..._<backend>.md` is rewritten from the merged results.

`--suite byzpy` instead runs ByzPy 0.1.4's published aggregator-latency workloads (its
`benchmarks/README.md`: `BYZPY_WORKLOADS`) with strike_jax here and ByzFL 0.0.11 and ByzPy (direct
and `ActorPool`) in a subprocess of `--peer-python` (`experiments/peers_byzpy.py`; a separate
environment with torch, byzfl and byzpy: never the project's dependencies; peers that do not
import leave their columns empty), on the same inputs; writes
`experiments/results/bench_aggregators_byzpy_<backend>.{json,md}`:

    python experiments/bench_aggregators.py --suite byzpy --peer-python /path/to/peers/bin/python
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from strike_jax.atomic import write_text  # noqa: E402
from strike_jax import aggregators  # noqa: E402

try:
    from experiments._machine import loaded
except ImportError:  # run as a script (`python experiments/bench_aggregators.py`): experiments/ is on the path
    from _machine import loaded  # type: ignore[no-redef]

DEFAULT_SIZES = ((50, 1_000_000), (50, 2_472_266), (50, 11_182_668), (1000, 100_000))
PREAGGREGATORS = aggregators.preaggregator_names()
ALL_NAMES = aggregators.names() + PREAGGREGATORS


# ----------------------------------------------------------------------------- NumPy baselines


def _lower_median(x):
    k = (x.shape[0] - 1) // 2
    return np.partition(x, k, axis=0)[k]


def _gram_dists(x):
    g = x @ x.T  # NumPy calls syrk for x @ x.T
    sq = np.diag(g)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def _krum_scores(d2, f, rows):
    sub = d2[np.ix_(rows, rows)] + np.diag(np.full(len(rows), np.inf))
    k = max(len(rows) - f - 2, 1)
    return np.sort(sub, axis=1)[:, :k].sum(axis=1)


def np_mean(x, f, rng):
    return x.mean(axis=0)


def np_median(x, f, rng):
    return _lower_median(x)


def np_trmean(x, f, rng):
    n = x.shape[0]
    b = min(f, (n - 1) // 2)
    # A full sort along the clients beat np.partition with two kth values here.
    return np.sort(x, axis=0)[b:n - b].mean(axis=0)


def np_multikrum(x, f, rng, select=None):
    n = x.shape[0]
    fp = min(f, (n - 3) // 2)
    scores = _krum_scores(_gram_dists(x), fp, np.arange(n))
    chosen = np.argsort(scores, kind="stable")[: (n - fp if select is None else select)]
    w = np.zeros(n, x.dtype)
    w[chosen] = 1.0 / len(chosen)
    return w @ x


def np_krum(x, f, rng):
    return np_multikrum(x, f, rng, select=1)


def np_rfa(x, f, rng, iters=8, eps=1e-7):
    z = x.mean(axis=0)
    for _ in range(iters):
        beta = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), eps)
        z = (beta / beta.sum()).astype(x.dtype) @ x
    return z


def np_aksel(x, f, rng):
    med = _lower_median(x)
    s = np.square(x - med).sum(axis=1)
    keep = s <= np.partition(s, (len(s) - 1) // 2)[(len(s) - 1) // 2]
    return (keep / keep.sum()).astype(x.dtype) @ x


def np_cclip(x, f, rng, tau=10.0):
    v = np.zeros(x.shape[1], x.dtype)
    diff = x - v
    scale = np.minimum(1.0, tau / np.maximum(np.linalg.norm(diff, axis=1), 1e-30))
    return v + (scale / x.shape[0]).astype(x.dtype) @ diff


def np_dnc(x, f, rng, b=1000):
    n, d = x.shape
    cols = rng.integers(0, d, size=b)
    sub = x[:, cols]
    cen = sub - sub.mean(axis=0)
    v = np.linalg.svd(cen, full_matrices=False)[2][0]
    scores = (cen @ v) ** 2
    good = np.ones(n, bool)
    good[np.argsort(-scores, kind="stable")[:f]] = False
    return (good / good.sum()).astype(x.dtype) @ x


def np_bulyan(x, f, rng):
    n = x.shape[0]
    d2 = _gram_dists(x)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        scores = _krum_scores(d2, f, np.asarray(remaining))
        best = remaining[int(np.argmin(scores))]
        selected.append(best)
        remaining.remove(best)
    sel = x[np.sort(selected)]
    beta = len(selected) - 2 * f
    med = _lower_median(sel)
    idx = np.argpartition(np.abs(sel - med), beta - 1, axis=0)[:beta]
    return np.take_along_axis(sel, idx, axis=0).mean(axis=0)


def np_bucketing(x, f, rng, s=2):
    xp = x[rng.permutation(x.shape[0])]
    return np.stack([xp[j:j + s].mean(axis=0) for j in range(0, x.shape[0], s)])


def np_nnm(x, f, rng):
    n = x.shape[0]
    d2 = _gram_dists(x)
    np.fill_diagonal(d2, -1.0)  # itself first
    nearest = np.argsort(d2, axis=1, kind="stable")[:, : n - f]
    w = np.zeros((n, n), x.dtype)
    np.put_along_axis(w, nearest, 1.0 / (n - f), axis=1)
    return w @ x


def np_meamed(x, f, rng):
    n = x.shape[0]
    f = min(f, (n - 1) // 2)
    med = _lower_median(x)
    idx = np.argpartition(np.abs(x - med), n - f - 1, axis=0)[: n - f]
    return np.take_along_axis(x, idx, axis=0).mean(axis=0)


def np_monna(x, f, rng, idx=0):
    n = x.shape[0]
    f = min(f, (n - 1) // 2)
    dist = np.square(x - x[idx]).sum(axis=1)
    dist[idx] = -1.0
    return _mean_of_rows(x, np.argsort(dist, kind="stable")[: n - f])


def _kept_subsets(n, f):
    return np.asarray(list(itertools.combinations(range(n), n - f)))


def _mean_of_rows(x, rows):
    w = np.zeros(x.shape[0], x.dtype)
    w[rows] = 1.0 / len(rows)
    return w @ x


def np_mda(x, f, rng):
    n = x.shape[0]
    d2 = _gram_dists(x)
    best, best_rows = np.inf, None
    for rows in _kept_subsets(n, f):
        diam = d2[np.ix_(rows, rows)].max()
        if diam < best:
            best, best_rows = diam, rows
    return _mean_of_rows(x, best_rows)


def np_smea(x, f, rng):
    n = x.shape[0]
    y = x - x.mean(axis=0)
    g = (y @ y.T).astype(np.float64)
    subsets = _kept_subsets(n, f)
    best, best_rows = np.inf, None
    for start in range(0, len(subsets), 2048):
        chunk = subsets[start:start + 2048]
        sub = g[chunk[:, :, None], chunk[:, None, :]]
        sub = sub - sub.mean(axis=1, keepdims=True)
        sub = sub - sub.mean(axis=2, keepdims=True)
        lam = np.linalg.eigvalsh(sub)[:, -1] / chunk.shape[1]
        i = int(np.argmin(lam))
        if lam[i] < best:
            best, best_rows = lam[i], chunk[i]
    return _mean_of_rows(x, best_rows)


def np_caf(x, f, rng):
    n = x.shape[0]
    y = x - x.mean(axis=0)
    g = (y @ y.T).astype(np.float64)
    c = np.ones(n)
    best, best_w = np.inf, c / n
    while c.sum() > n - 2 * f:
        w = c / c.sum()
        left = np.eye(n) - np.outer(np.ones(n), w)
        k = left @ g @ left.T
        sw = np.sqrt(w)
        evals, evecs = np.linalg.eigh(sw[:, None] * k * sw[None, :])
        lam = evals[-1]
        if lam < best:
            best, best_w = lam, w
        tau = (k @ (sw * evecs[:, -1])) ** 2 / max(lam, 1e-300)
        tmax = tau[c > 0].max()
        if tmax <= 0:
            break
        c = np.where(tau >= tmax * (1 - 1e-4), 0.0, np.clip(c * (1 - tau / tmax), 0.0, 1.0))
    return best_w.astype(x.dtype) @ x


def _clip_scale(norms, thr):
    return np.minimum(1.0, thr / np.maximum(norms, 1e-30))


def np_signguard(x, f, rng, fraction=0.1):
    from sklearn.cluster import MeanShift, estimate_bandwidth

    n, d = x.shape
    norms = np.linalg.norm(x, axis=1)
    med = np.sort(norms)[(n - 1) // 2]
    s1 = (norms > 0.1 * med) & (norms < 3.0 * med)
    m = max(int(fraction * d), 1)
    start = rng.integers(0, d - m + 1)
    blk = x[:, start:start + m]
    feats = np.stack([(blk > 0).mean(1), (blk == 0).mean(1), (blk < 0).mean(1)], axis=1)
    feats = feats / (feats.max(axis=0) + 1e-8)
    bw = estimate_bandwidth(feats, quantile=0.5)
    labels = MeanShift(bandwidth=bw if bw > 0 else None, cluster_all=False).fit(feats).labels_
    sizes = np.bincount(labels[labels >= 0])
    sel = s1 & (labels == np.argmax(sizes))
    w = np.where(sel, _clip_scale(norms, med), 0.0) / max(sel.sum(), 1)
    return w.astype(x.dtype) @ x


def np_clippedclustering(x, f, rng, max_tau=1e5):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = x.shape[0]
    g = x @ x.T
    norms = np.sqrt(np.diag(g))
    tau = min(np.sort(norms)[(n - 1) // 2], max_tau)
    dist = 1.0 - g / np.outer(norms, norms)
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform(np.maximum(dist, 0.0), checks=False), "average"), 2, "maxclust")
    big = np.argmax(np.bincount(labels))
    sel = labels == big
    w = np.where(sel, _clip_scale(norms, tau), 0.0) / sel.sum()
    return w.astype(x.dtype) @ x


def np_fltrust(x, f, rng, root=None):
    root = x[: x.shape[0] - f].mean(axis=0) if root is None else root  # the honest rows come first
    norms = np.linalg.norm(x, axis=1)
    r = np.linalg.norm(root)
    ts = np.maximum((x @ root) / (norms * r), 0.0)
    w = ts * r / norms / ts.sum()
    return w.astype(x.dtype) @ x


def np_foolsgold(x, f, rng, history=None):
    n = x.shape[0]
    history = np.zeros_like(x) if history is None else history  # [num_clients, d], clients 0..n-1
    clients = np.arange(n)
    history[clients] += x  # in place, as a stateful NumPy implementation would
    hist = history[clients]
    g = hist @ hist.T
    nrm = np.sqrt(np.diag(g))
    cs = g / np.outer(nrm, nrm)
    np.fill_diagonal(cs, 0.0)
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i]:
                cs[i, j] *= v[i] / v[j]
    wv = np.clip(1.0 - cs.max(axis=1), 0.0, 1.0)
    wv = wv / wv.max()
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = np.log(wv / (1 - wv)) + 0.5
    wv = np.clip(np.nan_to_num(wv, neginf=0.0), 0.0, 1.0)
    return (wv / n).astype(x.dtype) @ x


def np_clipping(x, f, rng, c=2.0):
    return x * _clip_scale(np.linalg.norm(x, axis=1), c).astype(x.dtype)[:, None]


def np_arc(x, f, rng):
    n = x.shape[0]
    norms = np.linalg.norm(x, axis=1)
    k = (2 * f * (n - f)) // n
    thr = np.sort(norms)[n - k - 1]
    return x * _clip_scale(norms, thr).astype(x.dtype)[:, None]


NUMPY = {
    "mean": np_mean, "median": np_median, "trmean": np_trmean, "rbtm": np_trmean, "krum": np_krum,
    "multikrum": np_multikrum, "rfa": np_rfa, "aksel": np_aksel, "cclip": np_cclip, "dnc": np_dnc,
    "bulyan": np_bulyan, "bucketing": np_bucketing, "nnm": np_nnm,
    "meamed": np_meamed, "monna": np_monna, "mda": np_mda, "smea": np_smea, "caf": np_caf,
    "signguard": np_signguard, "clippedclustering": np_clippedclustering, "fltrust": np_fltrust,
    "foolsgold": np_foolsgold, "clipping": np_clipping, "arc": np_arc,
}
RANDOMISED = ("dnc", "bucketing", "signguard")
# Extra inputs the simulation will supply: the server's root update (here the honest mean) and the
# sampled clients' ids (here 0..n-1, one history row per client).
ROUND_INPUTS = ("fltrust", "foolsgold")


# ----------------------------------------------------------------------------------- harness


def make_updates(n: int, d: int, f: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    mu = rng.normal(size=d).astype(np.float32)
    for i in range(n - f):  # row by row: no float64 [n, d] temporary
        x[i] = mu + rng.standard_normal(d, dtype=np.float32)
    x[n - f:] = mu - 1.5
    return x


def jax_callable(name: str, x: jax.Array, f: int):
    n = x.shape[0]
    agg = aggregators.get(name, num_clients=n) if name == "foolsgold" else aggregators.get(name)
    state = agg.init(x)
    if name in PREAGGREGATORS:
        return jax.jit(lambda u, f, key: agg.apply(u, state, f=f, key=key)[0])
    if name == "fltrust":
        root = jnp.mean(x[: n - f], axis=0)  # the honest rows come first (make_updates)
        return jax.jit(lambda u, f, key: agg.aggregate(u, state, f=f, key=key, root_update=root)[0])
    if name == "foolsgold":
        clients = jnp.arange(n)
        return jax.jit(lambda u, f, key: agg.aggregate(u, state, f=f, key=key, clients=clients)[0])
    return jax.jit(lambda u, f, key: agg.aggregate(u, state, f=f, key=key)[0])


def rule_f(name: str, n: int, f: int) -> int:
    """`f` for a rule: n // 5, or the rule's limit when lower (MDA and SMEA enumerate C(n, f)
    subsets: at n = 50 they accept f <= 3)."""
    if name in ("mda", "smea"):
        return min(f, aggregators.get(name).max_f(n))
    return f


def timed(fn, repeats: int) -> tuple[float, object]:
    out = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_size(n: int, d: int, rules, repeats: int, numpy_repeats: int) -> list[dict]:
    f = n // 5
    x_np = make_updates(n, d, f)
    x = jnp.asarray(x_np)
    key = jax.random.PRNGKey(0)
    rows = []
    f_all = f
    for name in rules:
        f = rule_f(name, n, f_all)
        fn = jax_callable(name, x, f)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x, f, key))
        first = time.perf_counter() - t0
        t_jax, out = timed(lambda: fn(x, f, key), repeats)
        out = np.asarray(out)
        rng = np.random.default_rng(0)
        t_np, ref = timed(lambda: NUMPY[name](x_np, f, rng), numpy_repeats)
        if name in RANDOMISED:
            agree = float("nan") if out.shape == np.shape(ref) else float("inf")
        else:
            agree = float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
        row = dict(rule=name, n=n, d=d, f=f, jax_s=t_jax, numpy_s=t_np, speedup=t_np / t_jax,
                   first_call_s=first, rel_diff=agree, peak_rss_gib=peak_rss_gib())
        rows.append(row)
        print(f"  {name:10s} jax {t_jax:8.4f} s   numpy {t_np:8.4f} s   x{t_np / t_jax:6.2f}   "
              f"first call {first:6.2f} s   rel.diff {agree:.1e}   peak RSS {row['peak_rss_gib']:.2f} GiB",
              flush=True)
        del fn, out, ref
        gc.collect()
    del x
    return rows


def parse_sizes(text: str):
    sizes = []
    for item in text.split(","):
        n, d = item.lower().split("x")
        sizes.append((int(float(n)), int(float(d))))
    return tuple(sizes)


def parse_rules(text: str):
    rules = tuple(r for r in text.split(",") if r)
    unknown = sorted(set(rules) - set(ALL_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown rules {unknown}; allowed: {', '.join(ALL_NAMES)}")
    return rules


def markdown(payload: dict) -> str:
    meta = payload["meta"]
    lines = [
        "# Aggregation rules: JAX vs NumPy (`experiments/bench_aggregators.py`)",
        "",
        f"Backend `{meta['backend']}` ({meta['device']}), jax {meta['jax']}, numpy {meta['numpy']}, "
        f"{meta['machine']}, {meta['cpus']} CPUs. float32 updates, f = n // 5; median of "
        f"{meta['repeats']} jitted calls after compilation (NumPy: {meta['numpy_repeats']}). Seconds; "
        "speed-up = NumPy time / JAX time. Pre-aggregators (nnm, bucketing, clipping, arc) return the matrix. "
        "Peak RSS is the process's maximum so far (monotone within a run).",
        "",
    ]
    sizes = sorted({(r["n"], r["d"]) for r in payload["results"]}, key=lambda s: (s[0], s[1]))
    for n, d in sizes:
        rows = [r for r in payload["results"] if r["n"] == n and r["d"] == d]
        lines += [f"## n = {n}, d = {d:,}", "",
                  "| rule | f | JAX (s) | NumPy (s) | speed-up | first call (s) | rel. diff | peak RSS (GiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            diff = "random" if r["rule"] in RANDOMISED else f"{r['rel_diff']:.1e}"
            lines.append(f"| {r['rule']} | {r['f']} | {r['jax_s']:.4f} | {r['numpy_s']:.4f} | {r['speedup']:.2f}x | "
                         f"{r['first_call_s']:.2f} | {diff} | {r['peak_rss_gib']:.2f} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ ByzPy's workloads (--suite byzpy)

#: ByzPy 0.1.4's published aggregator-latency workloads (its `benchmarks/README.md`: shapes, f and
#: parameters of each command), as `(key, label, strike_jax kind, strike_jax name, params)`.
#: `kind` is "rule", "pre" (pre-aggregator), "attack" or None (no strike_jax rule). Not included:
#: the README's "ParameterServer (Multi-Krum)" row, a 50-round MNIST training, not an aggregator call.
BYZPY_WORKLOADS = (
    dict(key="mda", label="Minimum Diameter Averaging (MDA)", n=30, d=2048, f=10, kind="rule", name="mda"),
    dict(key="smea", label="Smallest Maximum Eigenvalue Averaging (SMEA)", n=16, d=4096, f=5, kind="rule",
         name="smea"),
    dict(key="arc", label="Adaptive Robust Clipping (ARC, pre-agg)", n=256, d=65536, f=8, kind="pre", name="arc"),
    dict(key="trmean", label="Coordinate-wise Trimmed Mean", n=64, d=65536, f=8, kind="rule", name="trmean"),
    dict(key="median", label="Coordinate-wise Median (midpoint of the two middle values, as ByzFL)", n=64,
         d=65536, f=8, kind="rule", name="median", params=dict(midpoint=True)),
    dict(key="multikrum", label="Multi-Krum", n=80, d=65536, f=20, q=12, kind="rule", name="multikrum"),
    dict(key="geomed", label="Geometric Median", n=64, d=65536, f=8, kind="rule", name="rfa"),
    dict(key="caf", label="Covariance-bound Agnostic Filter (CAF)", n=64, d=65536, f=8, kind="rule", name="caf"),
    dict(key="monna", label="MoNNA", n=64, d=65536, f=8, kind="rule", name="monna", params=dict(idx=0)),
    dict(key="cclip", label="Centered Clipping", n=64, d=65536, f=8, tau=0.1, iters=10, kind="rule", name="cclip",
         params=dict(tau=0.1, iters=10)),
    dict(key="cge", label="Comparative Gradient Elimination", n=64, d=65536, f=8, kind=None, name=None),
    dict(key="ipm", label="Empire / Inner Product Manipulation attack", n=64, d=65536, f=8, tau=2.0,
         kind="attack", name="ipm", params=dict(eps=2.0)),
    dict(key="lie", label="Little / A Little Is Enough attack", n=96, d=65536, f=12, tau=1.5, kind="attack",
         name="lie", params=dict(z=1.5)),
    dict(key="gaussian", label="Gaussian attack", n=64, d=65536, f=8, kind="attack", name="gaussian"),
    dict(key="nnm", label="Nearest Neighbor Mixing (pre-agg)", n=196, d=4096, f=32, kind="pre", name="nnm"),
    dict(key="meamed", label="Mean-of-Medians (MeaMed)", n=64, d=65536, f=8, kind="rule", name="meamed"),
    dict(key="bucketing", label="Bucketing (pre-agg)", n=512, d=16384, f=8, s=32, kind="pre", name="bucketing",
         params=dict(s=32)),
    dict(key="clipping", label="Clipping (pre-agg)", n=256, d=65536, f=8, c=2.0, kind="pre", name="clipping",
         params=dict(c=2.0)),
)
#: Rows whose strike_jax output is not the same function of the inputs as the peers' (kept out of
#: the agreement column): different iteration rules, selection sizes, honest sets or randomness.
BYZPY_NOT_COMPARABLE = {
    "multikrum": "ByzPy averages q = 12 rows, ByzFL and strike_jax n - f",
    "geomed": "smoothed Weiszfeld with different iteration counts (strike_jax rfa: 8 steps)",
    "ipm": "strike_jax's attack uses the n - f honest rows, the peers all n",
    "lie": "strike_jax's attack uses the n - f honest rows, the peers all n",
    "gaussian": "random draw",
    "bucketing": "random bucket assignment",
}


def byzpy_strike_callable(w: dict):
    """A jitted `(x, key) -> output` of strike_jax for a ByzPy workload, or None (no such rule)."""
    if w["kind"] is None:
        return None
    params = w.get("params", {})
    n, f = w["n"], w["f"]
    if w["kind"] == "attack":
        from strike_jax.attacks import baselines, extra

        mask = jnp.arange(n) >= n - f  # the last f rows are Byzantine
        # The Byzantine vector, as the peers return it (the registry attack also writes it into a
        # copy of the `[n, d]` matrix, which inside a round is the server program's own buffer).
        vector = {"ipm": lambda u, key: baselines.ipm_vector(u, mask, **params),
                  "lie": lambda u, key: baselines.lie_vector(u, mask, **params),
                  "gaussian": lambda u, key: extra.gaussian_vector(key, u.shape[1], 0.0, 1.0, u.dtype)}
        return jax.jit(vector[w["name"]])
    agg = aggregators.get(w["name"], **params)
    limit = agg.max_f(n) if w["kind"] == "rule" else None
    if limit is not None and f > limit:
        raise ValueError(f"f={f} is not allowed for {w['name']} at n={n}; allowed: f <= {limit}")
    state = agg.init(jnp.zeros((n, w["d"]), jnp.float32))
    if w["kind"] == "pre":
        return jax.jit(lambda u, key: agg.apply(u, state, f=f, key=key)[0])
    return jax.jit(lambda u, key: agg.aggregate(u, state, f=f, key=key)[0])


def _time_calls(call, repeats: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(call())
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"status": "ok", "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "walls": walls}


def output_floor(x, repeats: int) -> dict:
    """What a pre-aggregator's `[n, d]` output costs before any arithmetic, on this machine: one
    read of `x` (`ones(n) @ x`), and `x * 1.0001` written into a fresh array (what every call that
    returns a new matrix pays: XLA:CPU, like torch's CPU allocator, takes large buffers fresh from
    the kernel, so each of its 4 KiB pages faults on first touch) and into a donated one (no faults)."""
    read = jax.jit(lambda u: jnp.ones((u.shape[0],), u.dtype) @ u)
    fresh = jax.jit(lambda u: u * 1.0001)
    donated = jax.jit(lambda u, out: out.at[:].set(u * 1.0001), donate_argnums=1)
    jax.block_until_ready((read(x), fresh(x)))
    buf = [jax.block_until_ready(donated(x, jnp.zeros_like(x)))]

    def into_donated():
        buf[0] = donated(x, buf[0])
        return buf[0]

    return {name: _time_calls(call, max(repeats, 5))["wall_s"]
            for name, call in (("read_s", lambda: read(x)), ("fresh_write_s", lambda: fresh(x)),
                               ("donated_write_s", into_donated))}


def run_byzpy_suite(keys, repeats: int, peer_python: str, pool_workers, timeout: float, workdir: str) -> dict:
    """strike_jax, then ByzFL and ByzPy (one subprocess in `peer_python`) on the same inputs."""
    import subprocess

    workloads = [dict(w) for w in BYZPY_WORKLOADS if w["key"] in keys]
    rows = []
    key = jax.random.PRNGKey(0)
    for w in workloads:
        x_np = np.random.default_rng(0).standard_normal((w["n"], w["d"]), dtype=np.float32)
        w["data"] = os.path.join(workdir, f"{w['key']}.npy")
        np.save(w["data"], x_np)
        row = dict(workload=w["key"], lib="strike_jax")
        try:
            fn = byzpy_strike_callable(w)
        except ValueError as exc:
            fn, row["status"] = None, f"refused: {exc}"
        if fn is None:
            row.setdefault("status", "no such rule in strike_jax")
        else:
            x = jnp.asarray(x_np)
            t0 = time.perf_counter()
            out = np.asarray(jax.block_until_ready(fn(x, key)))
            row["first_call_s"] = time.perf_counter() - t0
            row.update(_time_calls(lambda: fn(x, key), repeats))
            np.save(w["data"] + ".strike_jax.npy", out)
            row["out"] = w["data"] + ".strike_jax.npy"
            if w["kind"] == "pre":
                row["floor"] = output_floor(x, repeats)
        rows.append(row)
        print(f"  {w['key']:10s} strike_jax     {row['status'][:40]:40s} {row.get('wall_s', float('nan')) * 1e3:9.2f} ms",
              flush=True)
    spec = os.path.join(workdir, "spec.json")
    with open(spec, "w") as fh:
        json.dump({"workloads": workloads, "repeats": repeats, "timeout": timeout,
                   "pool_workers": list(pool_workers)}, fh)
    peer_out = os.path.join(workdir, "peers.json")
    worker = os.path.join(REPO_ROOT, "experiments", "peers_byzpy.py")
    peers = {"versions": {}, "results": []}
    try:
        subprocess.run([peer_python, worker, "--spec", spec, "--out", peer_out], check=True)
        with open(peer_out) as fh:
            peers = json.load(fh)
    except (OSError, subprocess.CalledProcessError) as exc:
        peers["error"] = f"peer run failed: {exc}"
    rows += peers.get("results", [])
    for r in rows:  # agreement with strike_jax where the rows compute the same function
        if r["lib"] == "strike_jax" or "out" not in r or r["workload"] in BYZPY_NOT_COMPARABLE:
            continue
        mine = next((s for s in rows if s["workload"] == r["workload"] and s["lib"] == "strike_jax"), None)
        if mine is None or "out" not in mine:
            continue
        a, b = np.load(mine["out"]).astype(np.float64), np.load(r["out"]).astype(np.float64)
        r["rel_diff"] = (float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
                         if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}")
    for r in rows:
        r.pop("out", None)
    return {"workloads": [{k: v for k, v in w.items() if k != "data"} for w in workloads], "rows": rows,
            "peer_versions": peers.get("versions", {}), "peer_error": peers.get("error")}


def _ratio(payload: dict, key: str):
    """Best peer wall time over strike_jax's for a workload (None when either did not run)."""
    rows = [r for r in payload["rows"] if r["workload"] == key and r["status"] == "ok"]
    mine = [r["wall_s"] for r in rows if r["lib"] == "strike_jax"]
    peers = [r["wall_s"] for r in rows if r["lib"] != "strike_jax"]
    return min(peers) / mine[0] if mine and peers else None


def byzpy_markdown(payload: dict) -> str:
    meta = payload["meta"]
    pools = [f"byzpy pool x{c}" for c in meta["pool_workers"]]
    lines = [
        "# Aggregator latency on ByzPy's workloads (`experiments/bench_aggregators.py --suite byzpy`)",
        "",
        f"Command: `{meta['command']}`. {meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, jax {meta['jax']}; "
        f"peers: {', '.join(f'{k} {v}' for k, v in payload['peer_versions'].items())}. "
        + (f"**Shared, loaded machine** (load average {meta['load_start']} at start, {meta['load_end']} at end, "
           "on 2 cores shared with other jobs): wall times carry that load; the CPU column (process CPU time, "
           "all threads) is the steadier comparison. " if loaded(meta["load_start"], meta["load_end"]) else
           f"Load average {meta['load_start']} at start, {meta['load_end']} at end, on 2 cores (this "
           "benchmark's own threads included). ")
        + (f"Every process (strike_jax's and the peers') ran with `GLIBC_TUNABLES={meta['glibc_tunables']}`"
           + (" (glibc's malloc backs large buffers with transparent huge pages: far fewer first-touch page "
              "faults). " if "hugetlb=1" in meta["glibc_tunables"] else ". ")
           if meta.get("glibc_tunables") else "glibc's default malloc (4 KiB pages). ")
        + "Every library gets the same float32 N(0, 1) inputs "
        "(`default_rng(0)`), as ByzPy's scripts do (a list of `n` torch vectors for the peers, one "
        "`[n, d]` array for strike_jax, jitted; its compile is the separate first call). Median over "
        f"{meta['repeats']} timed calls after one warm-up; a peer call taking over {meta['timeout']:g} s is "
        "stopped as ByzPy's README does (`--timeout 10`). ByzPy direct is `aggregate` / `pre_aggregate` / "
        "`apply`; its pool is `NodeScheduler.run` on an `ActorPool` of process actors (as its README's "
        "commands; ByzPy 0.1.4 needs torch < 2.6, installed here with torch 2.14.1 by `--no-deps`). The pool's "
        "CPU time is the calling process's only (its actors are other processes).",
        "",
        "| workload | n x d, f | strike_jax ms (CPU ms) | ByzFL ms (CPU ms) | ByzPy direct ms (CPU ms) | "
        + " | ".join(f"{p.replace('byzpy ', 'ByzPy ')} ms (CPU ms)" for p in pools)
        + " | best peer / strike_jax (wall) | agreement (max abs. diff / max abs. peer output) |",
        "|---" * (7 + len(pools)) + "|",
    ]
    notes = []
    for w in payload["workloads"]:
        cells, best, diffs = [], None, {}
        mine = next((r for r in payload["rows"] if r["workload"] == w["key"] and r["lib"] == "strike_jax"), None)
        for lib in ["strike_jax", "byzfl", "byzpy"] + pools:
            r = next((r for r in payload["rows"] if r["workload"] == w["key"] and r["lib"] == lib), None)
            if r is None:
                cells.append("not run")
                continue
            if r["status"] != "ok":
                cells.append(r["status"].split(":")[0])
                notes.append(f"{w['key']}, {lib}: {r['status'].splitlines()[0]}")
                continue
            cells.append(f"{r['wall_s'] * 1e3:.2f} ({r['cpu_s'] * 1e3:.1f})")
            if lib != "strike_jax":
                best = r["wall_s"] if best is None else min(best, r["wall_s"])
                if isinstance(r.get("rel_diff"), float) and lib in ("byzfl", "byzpy"):
                    diffs[{"byzfl": "ByzFL", "byzpy": "ByzPy"}[lib]] = r["rel_diff"]
        ratio = (f"{best / mine['wall_s']:.2f}x" if best is not None and mine is not None and mine["status"] == "ok"
                 else "-")
        agree = (", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) if diffs
                 else BYZPY_NOT_COMPARABLE.get(w["key"], "-"))
        lines.append(f"| {w['label']} | {w['n']} x {w['d']:,}, f = {w['f']} | " + " | ".join(cells)
                     + f" | {ratio} | {agree} |")
    lines += ["", "strike_jax's parameters: Multi-Krum selects n - f rows (ByzPy's command q = 12); Geometric "
              "Median is `rfa` (8 smoothed Weiszfeld steps; ByzFL 3, ByzPy up to 256 to tol 1e-6); attacks "
              "return the Byzantine row computed from the n - f honest rows of the same matrix (last f rows "
              "Byzantine), the peers from all n vectors; IPM `eps = tau = 2`, LIE `z = tau = 1.5`.", ""]
    below = [w["label"] for w in payload["workloads"] if _ratio(payload, w["key"]) is not None
             and _ratio(payload, w["key"]) < 3.0]
    lines += ["Target (issue 24): strike_jax at least 3x faster than the best peer on every row it runs. "
              + (f"Below 3x in this run: {'; '.join(below)}." if below else "Met on every row run here."), "",
              "Where the outputs differ, the rules differ (not a timing artefact): with torch inputs ByzPy's "
              "and ByzFL's medians are torch's lower median (`torch.median`), so ByzPy's Median and ByzFL's "
              "MeaMed (n = 64, even) differ from strike_jax's midpoint median and NumPy-convention MeaMed; "
              "ByzPy's Centered Clipping starts from the mean (`init='mean'`), ByzFL and strike_jax from zero; "
              "strike_jax's CAF follows the paper's algorithm and already differs from ByzFL's on every input "
              "(`experiments/results/check_byzfl.md`), ByzPy's uses 3 power iterations.", ""]
    floors = [(w, r["floor"], r["wall_s"]) for w in payload["workloads"] for r in payload["rows"]
              if r["workload"] == w["key"] and r["lib"] == "strike_jax" and r.get("floor")]
    if floors:
        lines += ["What a pre-aggregator's output costs before any arithmetic (same input, same process): "
                  "one read of the matrix (`ones(n) @ U`), and `U * 1.0001` written into a fresh matrix (what "
                  "every call returning a new `[n, d]` matrix pays, strike_jax's and the peers' alike: XLA:CPU and "
                  "torch take large buffers fresh from the kernel, and each 4 KiB page faults on first touch) and "
                  "into a donated one. Inside a training round the pre-aggregator's output feeds the rule in the "
                  "same program and is never returned.", "",
                  "| pre-aggregator | n x d | one read (ms) | fresh `[n, d]` write (ms) | donated write (ms) | "
                  "strike_jax (ms) | strike_jax / fresh write |", "|---|---|---|---|---|---|---|"]
        for w, fl, wall in floors:
            lines.append(f"| {w['label']} | {w['n']} x {w['d']:,} | {fl['read_s'] * 1e3:.2f} | "
                         f"{fl['fresh_write_s'] * 1e3:.2f} | {fl['donated_write_s'] * 1e3:.2f} | {wall * 1e3:.2f} | "
                         f"{wall / fl['fresh_write_s']:.2f}x |")
        lines.append("")
    if payload.get("peer_error"):
        lines += [f"Peers: {payload['peer_error']}", ""]
    if notes:
        lines += ["Rows that did not run:", ""] + [f"- {t}" for t in notes] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES,
                   help="comma-separated NxD, e.g. 50x1e6,1000x1e5 (default: the four paper-scale sizes)")
    p.add_argument("--rules", type=parse_rules, default=None, help="comma-separated names (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed JAX calls per rule (median)")
    p.add_argument("--numpy-repeats", type=int, default=3, help="timed NumPy calls per rule (median)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "experiments", "results"), help="output folder")
    p.add_argument("--tag", default="", help="results file name suffix: bench_aggregators[_TAG]_<backend>")
    p.add_argument("--suite", choices=("paper", "byzpy"), default="paper",
                   help="paper: the sizes above against NumPy; byzpy: ByzPy's published workloads against "
                        "ByzFL and ByzPy (see --peer-python)")
    p.add_argument("--workloads", default="", help="--suite byzpy: comma-separated keys (default: all)")
    p.add_argument("--peer-python", default=os.environ.get("STRIKE_PEER_PYTHON", sys.executable),
                   help="--suite byzpy: the interpreter of a separate environment with torch, byzfl and byzpy "
                        "(default $STRIKE_PEER_PYTHON or this one; peers that do not import are skipped)")
    p.add_argument("--pool-workers", default="2", help="--suite byzpy: ActorPool sizes, comma-separated")
    p.add_argument("--timeout", type=float, default=10.0, help="--suite byzpy: seconds per peer row")
    args = p.parse_args(argv)
    if args.suite == "byzpy":
        return main_byzpy(args)
    rules = args.rules or ALL_NAMES
    backend = jax.default_backend()
    results = []
    for n, d in args.sizes:
        print(f"n = {n}, d = {d:,} ({n * d * 4 / 2**30:.2f} GiB)", flush=True)
        results += bench_size(n, d, rules, args.repeats, args.numpy_repeats)

    os.makedirs(args.out, exist_ok=True)
    stem = "bench_aggregators" + (f"_{args.tag}" if args.tag else "")
    path = os.path.join(args.out, f"{stem}_{backend}.json")
    old = []
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh).get("results", [])
    done = {(r["rule"], r["n"], r["d"]) for r in results}
    merged = [r for r in old if (r["rule"], r["n"], r["d"]) not in done] + results
    payload = {
        "meta": {"backend": backend, "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                 "numpy": np.__version__, "machine": f"{platform.machine()} {platform.system()}",
                 "cpus": os.cpu_count(), "repeats": args.repeats, "numpy_repeats": args.numpy_repeats,
                 "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])},
        "results": merged,
    }
    write_text(path, json.dumps(payload, indent=1))
    write_text(path[:-5] + ".md", markdown(payload))
    print(f"wrote {path} and {path[:-5]}.md")
    return 0


def main_byzpy(args) -> int:
    import tempfile

    known = [w["key"] for w in BYZPY_WORKLOADS]
    keys = [k for k in args.workloads.split(",") if k] or known
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise SystemExit(f"--workloads {','.join(unknown)} is not allowed; allowed: {', '.join(known)}")
    pools = [int(c) for c in args.pool_workers.split(",") if c]
    load = lambda: " ".join(f"{v:.1f}" for v in os.getloadavg())  # noqa: E731
    meta = {"command": " ".join(["python experiments/bench_aggregators.py"] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()} "
            f"{platform.system()}", "cpus": os.cpu_count(), "jax": jax.__version__, "repeats": args.repeats,
            "timeout": args.timeout, "pool_workers": pools, "load_start": load(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    with tempfile.TemporaryDirectory() as work:
        payload = run_byzpy_suite(keys, args.repeats, args.peer_python, pools, args.timeout, work)
    meta["load_end"] = load()
    payload["meta"] = meta
    backend = jax.default_backend()
    stem = os.path.join(args.out, "bench_aggregators_byzpy" + (f"_{args.tag}" if args.tag else "") + f"_{backend}")
    os.makedirs(args.out, exist_ok=True)
    write_text(stem + ".json", json.dumps(payload, indent=1))
    write_text(stem + ".md", byzpy_markdown(payload))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

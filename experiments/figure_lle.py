"""Figures 1, 2, 5 and 6: Locally Linear Embedding of one round's client updates (paper App. A).

Runs FedAvg (no attack, plain mean; paper App. A.1: Dirichlet β = 0.1, f = 0, all clients of
the round) and, for a few rounds (6 drawn at random as in App. A.2, or `--vis-rounds`), embeds
the honest updates together with their mean (the "optimal gradient") in 2-D with LLE,
`n_neighbors = max(2, round(0.1 m))` for `m` sampled clients (raised until the neighbour graph is
connected: with few clients 2 neighbours can leave it in pieces, and LLE collapses each piece to a
point; identical rows are embedded once). The paper's picture: a dense group of honest updates lies
away from the mean (green star) — "gradient skew". With 20 clients the rule gives 2 neighbours and a
chain-like picture; `--n-neighbors 6` shows the geometry more clearly (not the paper's rule).

With `--attack strike --defence median` (Figure 6) the Byzantine clients send STRIKE's updates and
those (pink crosses) are embedded with the honest ones: they hide in the dense group.

The per-round skew diagnostic of the run's history (SPEC §8: Fisher skewness of the honest updates
along their first principal component, and ||lower median - mean||) is printed and recorded.

LLE only sees the updates through distances and local Gram matrices, so each round's rows are first
expressed exactly in an orthonormal basis of their (centred) row space (an `[m, m]` matrix, from the
Gram matrix in float64): the embedding is the one of the raw `[m, d]` rows, at a memory cost that
does not grow with the model (ResNet-18 rows are 11M long).

  python -m experiments.figure_lle                                 # digits, FedAvg (Figs 1, 2, 5)
  python -m experiments.figure_lle --attack strike --defence median   # Figure 6
  python -m experiments.figure_lle --scale paper --dataset cifar10 --data-dir ~/tensorflow_datasets

Outputs: experiments/results/figure_lle_<dataset>[_<attack>_<defence>][_k<n>].png / .md / .json.
The captured embeddings are kept beside the run (`<out-dir>/<run id>/lle_<tag>.json`): a second
invocation only redraws.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import numpy as np

from strike_jax import report, sweep
from strike_jax.simulation import best_accuracy

# Paper App. A.1: the visualisation runs' settings per data set.
PAPER_LLE = {
    "cifar10": dict(num_clients=100, clients_per_round=100, beta=0.1),
    "imagenet12": dict(num_clients=50, clients_per_round=50, beta=0.1),
    "femnist": dict(clients_per_round=100),
}


LLE_RULE = "k=max(2,round(0.1m)), raised until connected, duplicates once; v4"  # part of the cache key of embeddings


def build_parser():
    p = sweep.make_parser(__file__, __doc__, paper_dataset="cifar10")
    p.add_argument("--attack", type=sweep.names_type("attack", single=True), default="none",
                   help="none (Figs 1, 2, 5; default) or e.g. strike (Fig. 6)")
    p.add_argument("--defence", "--defense", dest="defence", type=sweep.names_type("rule", single=True),
                   help="the server's rule (default: mean without attack, median with one)")
    p.add_argument("--nu", type=float, default=1.0, help="STRIKE's nu (default 1)")
    p.add_argument("--beta", type=float, help="Dirichlet β (default 0.1, paper App. A.1)")
    p.add_argument("--clients", type=int,
                   help="clients, all taking part every round (default: the preset's at local scale; "
                        "App. A.1's at paper scale)")
    p.add_argument("--vis-rounds", dest="vis_rounds", type=sweep.parse_ints,
                   help="rounds to embed (0-based; default: 6 drawn at random, App. A.2)")
    p.add_argument("--num-vis", dest="num_vis", type=int, default=6, help="how many rounds to draw (default 6)")
    p.add_argument("--n-neighbors", dest="n_neighbors", type=int,
                   help="LLE neighbours, used as given (default: max(2, round(0.1 m)) for m clients in the "
                        "round, App. A.1, raised until the neighbour graph is connected)")
    return p


def lle_neighbors(m: int, n_points: int, override: int | None = None) -> int:
    """App. A.1's k = 0.1 m (at least 2), kept below the number of embedded points (LLE needs it)."""
    k = override if override is not None else max(2, int(round(0.1 * m)))
    return max(1, min(k, n_points - 1))


def connected_neighbors(coords: np.ndarray, k: int) -> int:
    """The smallest `k' >= k` whose (symmetrised) k'-nearest-neighbour graph is connected.

    LLE's embedding of a disconnected neighbour graph is degenerate: its bottom eigenvectors are
    the components' indicator vectors, so each component collapses to a point. With few clients
    (k = 0.1 m = 2 for 20 clients) that happens often, so k is raised until the graph is connected.
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import kneighbors_graph

    p = coords.shape[0]
    while k < p - 1:
        g = kneighbors_graph(coords, k, include_self=False)
        if connected_components(g + g.T, directed=False)[0] == 1:
            break
        k += 1
    return k


def row_space_coordinates(x: np.ndarray) -> np.ndarray:
    """Rows of `x` (`[p, d]`) as `[p, r]` coordinates with the same pairwise inner products after
    centring (so the same distances and local Gram matrices): `Y Y^T = (x - c)(x - c)^T`.

    Computed from the `[p, p]` Gram matrix of the centred rows, accumulated in float64 over column
    chunks (no float64 copy of `x`).
    """
    p, d = x.shape
    g = np.zeros((p, p), np.float64)
    step = max(1, (1 << 24) // max(p, 1))  # ~128 MB float64 blocks
    for lo in range(0, d, step):
        blk = x[:, lo:lo + step].astype(np.float64)
        blk -= blk.mean(axis=0)  # centring is per column, so per block is exact
        g += blk @ blk.T
    evals, evecs = np.linalg.eigh(g)
    keep = evals > evals.max() * 1e-12 if evals.max() > 0 else np.zeros_like(evals, bool)
    if not keep.any():
        return np.zeros((p, 1))
    return evecs[:, keep] * np.sqrt(evals[keep])


def embed_round(updates: np.ndarray, byzantine: np.ndarray, sent: np.ndarray, *, include_byzantine: bool,
                n_neighbors: int | None = None, seed: int = 0) -> dict:
    """LLE of one round: the honest updates, their mean and (optionally) what the Byzantine clients sent.

    Args:
      updates: `[m, d]` honestly computed updates of the round's clients.
      byzantine: `[m]` bool.
      sent: `[m, d]` what the server received (the attack's rows for Byzantine clients).
      include_byzantine: also embed `sent[byzantine]`.
      n_neighbors: LLE neighbours, used as given (default: `max(2, round(0.1 m))`, raised until the
        neighbour graph is connected; see `connected_neighbors`).

    Returns:
      {"honest": [[x, y], ...], "mean": [x, y], "byzantine": [[x, y], ...], "n_neighbors": k}.
    """
    from sklearn.manifold import LocallyLinearEmbedding

    byzantine = np.asarray(byzantine, bool)
    honest = np.asarray(updates)[~byzantine]
    if honest.shape[0] == 0:
        raise ValueError("embed_round: no honest client in this round")
    mean = honest.astype(np.float64).mean(axis=0).astype(honest.dtype)
    parts = [honest, mean[None]]
    byz = np.asarray(sent)[byzantine] if include_byzantine and byzantine.any() else np.zeros((0, honest.shape[1]))
    if byz.shape[0]:
        parts.append(byz.astype(honest.dtype))
    x = np.concatenate(parts, axis=0)
    # Identical rows (all Byzantine clients send one vector) are embedded once and share the
    # coordinates: duplicates carry no geometry, make LLE's local weights ill-posed and, with few
    # neighbours, form a component of their own that LLE collapses away from everything else.
    x = np.ascontiguousarray(x)
    slot: dict[bytes, int] = {}
    keep, remap = [], []
    for i, row in enumerate(x):
        j = slot.setdefault(hashlib.sha1(row.tobytes()).digest(), len(keep))
        if j == len(keep):
            keep.append(i)
        remap.append(j)
    keep = np.asarray(keep)
    coords = row_space_coordinates(x[keep])
    k_rule = lle_neighbors(updates.shape[0], keep.size, n_neighbors)
    k = k_rule if n_neighbors is not None else connected_neighbors(coords, k_rule)
    remap = np.asarray(remap)
    lle = LocallyLinearEmbedding(n_neighbors=k, n_components=2, eigen_solver="dense", random_state=seed)
    y = lle.fit_transform(coords)[remap]
    h = honest.shape[0]
    return {"honest": y[:h].tolist(), "mean": y[h].tolist(), "byzantine": y[h + 1:].tolist(), "n_neighbors": k,
            "n_neighbors_rule": k_rule, "byzantine_distinct": len(set(remap[h + 1:])),
            "reconstruction_error": float(lle.reconstruction_error_)}


def choose_rounds(rounds: int, num: int, seed: int) -> list[int]:
    """App. A.2: `num` rounds drawn at random (seeded) among the run's rounds, sorted."""
    rng = np.random.default_rng([seed, 7])
    return sorted(int(r) for r in rng.choice(rounds, size=min(num, rounds), replace=False))


def capture(config, run_dir: str, vis_rounds: list[int], *, include_byzantine: bool,
            n_neighbors: int | None) -> tuple[dict, dict]:
    """Runs (or resumes) the simulation and embeds the chosen rounds; both are cached in `run_dir`.

    Returns:
      (the run's result, {round: embedding}).
    """
    from strike_jax.simulation import simulate, write_json

    key = json.dumps([sorted(vis_rounds), include_byzantine, n_neighbors, LLE_RULE])
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = os.path.join(run_dir, f"lle_{tag}.json")
    captured: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path) as fh:
            stored = json.load(fh)
        if stored.get("config") == config.to_dict():
            captured = stored["rounds"]
    wanted = set(vis_rounds)

    def save():
        write_json(path, {"config": config.to_dict(), "vis_rounds": sorted(vis_rounds), "rounds": captured})

    def on_updates(r, updates, byz, sent):
        if r in wanted and str(r) not in captured:
            captured[str(r)] = embed_round(updates, byz, sent, include_byzantine=include_byzantine,
                                           n_neighbors=n_neighbors, seed=config.seed)
            save()

    missing = [r for r in vis_rounds if str(r) not in captured]
    result = simulate(config, run_dir=run_dir, on_updates=on_updates if missing else None)
    missing = [r for r in vis_rounds if str(r) not in captured and r < result["completed_rounds"]]
    if missing:
        # The run was finished (or resumed past these rounds) before they were captured: replay
        # it without touching the checkpoint, up to the last missing round (deterministic).
        simulate(config, run_dir=None, on_updates=on_updates, stop_after=max(missing) + 1)
    return result, captured


def main(argv=None) -> int:
    args = sweep.parse_args(build_parser(), argv)
    defence = args.defence or ("mean" if args.attack == "none" else "median")
    overrides = dict(PAPER_LLE.get(args.dataset, {})) if args.scale == "paper" else {}
    overrides["beta"] = 0.1 if args.beta is None else args.beta
    overrides["skew_metrics"] = True  # the table reports the skew of every round
    if args.clients is not None:
        overrides.update(num_clients=args.clients, clients_per_round=args.clients)
    base = sweep.base_config(args, **overrides)
    seed = args.seeds[0]
    config = sweep.attack_config(base, args.attack, defence, nu=args.nu, seed=seed)
    vis = sorted(set(args.vis_rounds)) if args.vis_rounds else choose_rounds(config.rounds, args.num_vis, seed)
    bad = [r for r in vis if not 0 <= r < config.rounds]
    if bad:
        sweep.usage_error(args.script, f"--vis-rounds {bad}: rounds are 0 .. {config.rounds - 1}")
    if len(args.seeds) > 1:
        print(f"figure_lle: one run is embedded; using seed {seed} of {list(args.seeds)}", file=sys.stderr)
    include_byz = args.attack != "none"
    suffix = "" if args.attack == "none" else f"_{args.attack}_{defence}"
    if args.n_neighbors is not None:
        suffix += f"_k{args.n_neighbors}"
    stem = report.result_stem(args, "figure_lle", suffix)
    spec = {"config": config, "scale": args.scale, "vis_rounds": vis}
    report.check_results(stem, spec, args)
    sweep.check_configs([config], args.script)
    run_dir = os.path.join(args.out_dir, sweep.run_id(config))
    print(f"figure_lle: {config.dataset}, {config.attack} vs {config.defence}, rounds to embed {vis} ({run_dir})",
          flush=True)
    if args.dry_run:
        return 0
    sweep.ignore_runs(args.out_dir)
    t0 = time.perf_counter()
    result, captured = capture(config, run_dir, vis, include_byzantine=include_byz, n_neighbors=args.n_neighbors)
    wall = time.perf_counter() - t0

    history = result["rounds"]
    skew = [{"round": h["round"], "skewness": h.get("skewness"), "median_mean_distance": h.get("median_mean_distance"),
             "accuracy": h.get("accuracy")} for h in history]
    by_round = {h["round"]: h for h in skew}
    figs = ("Figure 6 (STRIKE's updates hidden among the honest ones)" if include_byz
            else "Figures 1, 2, 5 (gradient skew)")
    split = f"Dirichlet β={config.beta:g}" if config.partition == "dirichlet" else config.partition
    lines = [f"### {figs}: LLE of the client updates",
             "",
             f"{config.dataset} ({config.model}), {config.num_clients} clients, {config.clients_per_round} per round, "
             f"{split}, attack {config.attack}{'' if not include_byz else f' (ν={args.nu:g})'} vs {config.defence}, "
             f"{config.rounds} rounds, seed {seed}, scale={args.scale}. Best accuracy "
             f"{100 * best_accuracy(result):.2f}%; the run took {result.get('wall_time_s') or 0:.0f} s, this "
             f"invocation {wall:.0f} s.",
             "",
             "| round | skewness (PC1) | ‖median − mean‖ | LLE neighbours | accuracy |",
             "|---|---|---|---|---|"]
    for r in vis:
        h = by_round.get(r, {})
        e = captured.get(str(r), {})
        acc = h.get("accuracy")
        lines.append(f"| {r} | {_num(h.get('skewness'))} | {_num(h.get('median_mean_distance'))} | "
                     f"{e.get('n_neighbors', '—')} | {'—' if acc is None else f'{100 * acc:.2f}%'} |")
    sk = [h["skewness"] for h in skew if h["skewness"] is not None and math.isfinite(h["skewness"])]
    if sk:
        lines += ["", f"Skewness over all {len(sk)} rounds: mean {np.mean(sk):.3f}, median {np.median(sk):.3f}, "
                      f"positive in {100 * np.mean(np.asarray(sk) > 0):.0f}% of rounds (positive: the dense "
                      "bulk lies on the median's side of the mean, as Pearson's rule predicts)."]
    md = "\n".join(lines) + "\n"
    payload = {**spec, "experiment": figs, "embeddings": captured, "skew_by_round": skew,
               "best_accuracy": result.get("best_accuracy"), "wall_time_s": wall,
               "run_dir": sweep.display_path(run_dir, args.root)}
    report.write_results(stem, md, payload)
    if args.plot:
        plot(stem + ".png", vis, captured, by_round, f"{figs.split(' (')[0]}: {config.dataset}, {split}, "
             f"{config.attack} vs {config.defence}")
    return 0


def _num(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def plot(path: str, vis: list[int], captured: dict, by_round: dict, title: str) -> None:
    plt = report.pyplot()
    if plt is None:
        return
    k = len(vis)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.1 * nrows), squeeze=False)
    legend_done = False
    for ax, r in zip(axes.flat, vis):
        e = captured.get(str(r))
        if e is None:
            ax.set_title(f"round {r}: not captured")
            continue
        hx = np.asarray(e["honest"])
        ax.scatter(hx[:, 0], hx[:, 1], s=28, facecolors="none", edgecolors="tab:blue", label="honest")
        if e["byzantine"]:
            bx = np.asarray(e["byzantine"])
            label = f"Byzantine ({len(bx)} sent, {e.get('byzantine_distinct', len(bx))} distinct)"
            ax.scatter(bx[:, 0], bx[:, 1], s=60, marker="x", color="hotpink", linewidths=2, label=label)
        ax.scatter([e["mean"][0]], [e["mean"][1]], s=220, marker="*", color="green", edgecolors="black",
                   linewidths=0.6, label="honest mean", zorder=5)
        s = by_round.get(r, {}).get("skewness")
        ax.set_title(f"round {r}" + ("" if s is None else f" (skew {s:.2f})"), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if not legend_done:
            ax.legend(fontsize=7, loc="best")
            legend_done = True
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    report.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())

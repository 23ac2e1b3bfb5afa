"""Brute-force NumPy float64 references of the rules and attacks of issue 11, written from the
papers with plain loops (direct distances, d-dimensional covariance matrices, explicit subset
enumeration). They share no code with `strike_jax`."""

from __future__ import annotations

import itertools
import math

import numpy as np


def _dist2(a, b):
    return float(sum((x - y) ** 2 for x, y in zip(a, b)))


def _norm(a):
    return math.sqrt(float(sum(x * x for x in a)))


def _lower_median(vals):
    v = sorted(vals)
    return v[(len(v) - 1) // 2]


def _mean_rows(X, rows):
    return np.mean(np.asarray([X[i] for i in rows], np.float64), axis=0)


# ------------------------------------------------------------------------------------ defences


def meamed(X, f):
    n, d = X.shape
    out = np.empty(d)
    for j in range(d):
        col = [float(v) for v in X[:, j]]
        med = _lower_median(col)
        kept = sorted(col, key=lambda v: (abs(v - med), v))[: n - f]
        out[j] = sum(kept) / len(kept)
    return out


def monna(X, f, idx=0):
    n = X.shape[0]
    order = sorted(range(n), key=lambda j: (-1.0 if j == idx else _dist2(X[idx], X[j]), j))
    return _mean_rows(X, order[: n - f])


def _removed_sets(n, f):
    """Removed-row sets in the order of the kept-row combinations (the first minimum wins)."""
    return [tuple(sorted(set(range(n)) - set(kept))) for kept in itertools.combinations(range(n), n - f)]


def mda(X, f):
    n = X.shape[0]
    best, best_rows = math.inf, None
    for removed in _removed_sets(n, f):
        rows = [i for i in range(n) if i not in removed]
        diam = max((_dist2(X[i], X[j]) for i in rows for j in rows), default=0.0)
        if diam < best:
            best, best_rows = diam, rows
    return _mean_rows(X, best_rows)


def _top_eig_cov(X, rows, weights=None):
    """`(lambda_max, v, mu)` of the (weighted) covariance in d dimensions."""
    P = np.asarray([X[i] for i in rows], np.float64)
    w = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64)
    mu = (w[:, None] * P).sum(axis=0) / w.sum()
    cov = np.zeros((X.shape[1], X.shape[1]))
    for wi, p in zip(w, P):
        cov += wi * np.outer(p - mu, p - mu)
    cov /= w.sum()
    evals, evecs = np.linalg.eigh(cov)
    return evals[-1], evecs[:, -1], mu


def smea(X, f):
    n = X.shape[0]
    best, best_rows = math.inf, None
    for removed in _removed_sets(n, f):
        rows = [i for i in range(n) if i not in removed]
        lam, _, _ = _top_eig_cov(X, rows)
        if lam < best:
            best, best_rows = lam, rows
    return _mean_rows(X, best_rows)


def caf(X, f):
    """Allouah, Guerraoui & Stephan 2025, Alg. 1, with the max of tau over weighted rows."""
    n = X.shape[0]
    c = np.ones(n)
    best_lam, best_mu = math.inf, X.mean(axis=0)  # f = 0: the loop never runs
    while c.sum() > n - 2 * f:
        rows = [i for i in range(n) if c[i] > 0]
        lam, v, mu = _top_eig_cov(X, rows, [c[i] for i in rows])
        if lam < best_lam:
            best_lam, best_mu = lam, mu
        tau = np.array([float(np.dot(X[i] - mu, v)) ** 2 for i in range(n)])
        tmax = max(tau[i] for i in rows)
        if tmax <= 0:
            break
        c = np.array([c[i] * (1 - tau[i] / tmax) if c[i] > 0 else 0.0 for i in range(n)])
        c = np.clip(c, 0.0, 1.0)
    return best_mu


def clipping(X, c=2.0):
    out = np.array(X, np.float64, copy=True)
    for i in range(len(out)):
        r = _norm(out[i])
        if r > c:
            out[i] = out[i] * (c / r)
    return out


def arc(X, f):
    n = X.shape[0]
    k = int((2 * f * (n - f)) // n)
    norms = [_norm(x) for x in X]
    order = sorted(range(n), key=lambda i: norms[i])  # ascending
    out = np.array(X, np.float64, copy=True)
    if k == 0:
        return out
    thr = norms[order[n - k - 1]]
    for i in order[n - k:]:
        if norms[i] > thr:
            out[i] = out[i] * (thr / norms[i])
    return out


def fltrust(X, g0):
    g0 = np.asarray(g0, np.float64)
    n0 = _norm(g0)
    ts, parts = [], []
    for x in X:
        r = _norm(x)
        cos = float(np.dot(x, g0)) / (r * n0)
        ts.append(max(cos, 0.0))
        parts.append(x * (n0 / r))
    if sum(ts) == 0:
        return np.zeros(X.shape[1])
    return sum(t * p for t, p in zip(ts, parts)) / sum(ts)


def _cos(a, b):
    return float(np.dot(a, b)) / (_norm(a) * _norm(b))


def foolsgold_weights(H):
    """Fung et al. 2020, Alg. 1 as the authors' code (diagonal similarity 0, kappa = 1)."""
    n = len(H)
    cs = [[0.0 if i == j else _cos(H[i], H[j]) for j in range(n)] for i in range(n)]
    v = [max(row) for row in cs]
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i]:
                cs[i][j] = cs[i][j] * v[i] / v[j]
    alpha = [min(max(1.0 - max(cs[i]), 0.0), 1.0) for i in range(n)]
    top = max(alpha)
    if top == 0:
        return [0.0] * n
    out = []
    for a in alpha:
        a = a / top
        if a == 1.0:
            a = 0.99
        w = 0.0 if a == 0 else math.log(a / (1 - a)) + 0.5
        out.append(min(max(w, 0.0), 1.0))
    return out


def foolsgold_round(history, X, clients):
    """One round: updates the dict `history` in place, returns the aggregate."""
    n = X.shape[0]
    for i, c in enumerate(clients):
        history[c] = history.get(c, np.zeros(X.shape[1])) + X[i]
    w = foolsgold_weights([history[c] for c in clients])
    return sum(w[i] * X[i] for i in range(n)) / n


def _meanshift_largest(points, quantile=0.5, max_iter=300):
    m = len(points)
    k = max(int(math.floor(quantile * m)), 1)
    bw = sum(sorted(math.sqrt(_dist2(p, q)) for q in points)[k - 1] for p in points) / m
    centres, counts = [], []
    for p in points:
        c = np.array(p, np.float64)
        it = 0
        cnt = 0
        while True:
            near = [q for q in points if math.sqrt(_dist2(q, c)) <= bw]
            if not near:
                break
            cnt = len(near)
            new = np.mean(near, axis=0)
            moved = math.sqrt(_dist2(new, c))
            c = new
            if moved <= 1e-3 * bw or it == max_iter:
                break
            it += 1
        centres.append(c)
        counts.append(cnt)
    order = sorted(range(m), key=lambda i: (-counts[i], i))
    kept = []
    for i in order:
        if counts[i] == 0:
            continue
        if all(math.sqrt(_dist2(centres[i], centres[j])) > bw for j in kept):
            kept.append(i)
    labels = []
    for p in points:
        ds = [math.sqrt(_dist2(p, centres[j])) for j in kept]
        t = int(np.argmin(ds))
        labels.append(t if ds[t] <= bw else -1)
    sizes = [labels.count(t) for t in range(len(kept))]
    best = int(np.argmax(sizes))
    return [i for i in range(m) if labels[i] == best]


def signguard(X, start, lower=0.1, upper=3.0, fraction=0.1):
    """`start`: the first coordinate of the sign block (the rule's randomness)."""
    n, d = X.shape
    norms = [_norm(x) for x in X]
    med = _lower_median(norms)
    s1 = {i for i in range(n) if lower * med < norms[i] < upper * med}
    m = max(int(fraction * d), 1)
    feats = []
    for x in X:
        blk = x[start:start + m]
        feats.append([sum(v > 0 for v in blk) / m, sum(v == 0 for v in blk) / m, sum(v < 0 for v in blk) / m])
    feats = np.asarray(feats, np.float64)
    feats = feats / (feats.max(axis=0) + 1e-8)
    s2 = set(_meanshift_largest([feats[i] for i in range(n)]))
    sel = sorted(s1 & s2)
    if not sel:
        return np.zeros(d)
    return sum(X[i] * min(1.0, med / norms[i]) for i in sel) / len(sel)


def _average_linkage_two(D):
    n = len(D)
    clusters = {i: [i] for i in range(n)}
    dist = {(i, j): D[i][j] for i in range(n) for j in range(i + 1, n)}
    while len(clusters) > 2:
        (a, b) = min(dist, key=lambda p: (dist[p], p))
        sa, sb = len(clusters[a]), len(clusters[b])
        for k in clusters:
            if k in (a, b):
                continue
            da = dist[(min(a, k), max(a, k))]
            db = dist[(min(b, k), max(b, k))]
            dist[(min(a, k), max(a, k))] = (sa * da + sb * db) / (sa + sb)
        clusters[a] = clusters[a] + clusters.pop(b)
        dist = {p: v for p, v in dist.items() if b not in p}
    groups = sorted(clusters.values(), key=lambda g: (-len(g), min(g)))
    return sorted(groups[0])


def clippedclustering(X, history, max_tau=1e5):
    """`history`: the list of norms seen in earlier rounds (extended in place)."""
    n, d = X.shape
    norms = [_norm(x) for x in X]
    history.extend(norms)
    tau = min(_lower_median(history), max_tau)
    D = [[1.0 - _cos(X[i], X[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    sel = _average_linkage_two(D)
    return sum(X[i] * min(1.0, tau / norms[i]) for i in sel) / len(sel)


# -------------------------------------------------------------------------------------- attacks


def honest_rows(byz):
    byz = np.asarray(byz, bool)
    h = [i for i in range(len(byz)) if not byz[i]]
    return h if h else [i for i in range(len(byz)) if byz[i]]


def signflip(U, byz):
    return -_mean_rows(np.asarray(U, np.float64), honest_rows(byz))


def fang_trim(U, byz, u, b=2.0):
    """Rows of the trim attack for uniform draws `u` (`[n, d]`, row i used by Byzantine row i)."""
    U = np.asarray(U, np.float64)
    H = honest_rows(byz)
    n, d = U.shape
    out = np.array(U, copy=True)
    for j in range(d):
        col = [U[i, j] for i in H]
        s = np.sign(sum(col))
        e = min(col) if s > 0 else max(col)
        for i in range(n):
            if not byz[i]:
                continue
            if s * e == 0:
                out[i, j] = 0.0
                continue
            # the interval beyond the extreme, opposite to the mean's direction
            other = e / b if s * e > 0 else b * e
            out[i, j] = e + (other - e) * float(u[i, j])
    return out


def krum_scores(P, f):
    n = len(P)
    k = max(n - f - 2, 1)
    out = []
    for i in range(n):
        ds = sorted(_dist2(P[i], P[j]) for j in range(n) if j != i)
        out.append(sum(ds[:k]))
    return out


def _with_rows(U, byz, row):
    out = [np.array(x, np.float64) for x in U]
    for i in range(len(out)):
        if byz[i]:
            out[i] = np.asarray(row, np.float64)
    return out


def fang_krum(U, byz, lam_min=1e-5):
    U = np.asarray(U, np.float64)
    n, d = U.shape
    H = honest_rows(byz)
    f = int(np.sum(byz))
    s = np.sign(_mean_rows(U, H))
    k = max(n - f - 2, 1)
    sums = []
    for i in H:
        ds = sorted(math.sqrt(_dist2(U[i], U[l])) for l in H if l != i)
        sums.append(sum(ds[:k]))
    lam = min(sums) / (max(n - 2 * f - 1, 1) * math.sqrt(d)) + max(_norm(U[i]) for i in H) / math.sqrt(d)
    fp = min(f, (n - 3) // 2)
    while True:
        P = _with_rows(U, byz, -lam * s)
        sc = krum_scores(P, fp)
        win = min(range(n), key=lambda i: (sc[i], i))
        if byz[win] or lam < lam_min:
            return -lam * s, lam
        lam *= 0.5


def ndss_search(feasible, lam0=10.0, tol=1e-5):
    lam, step, ok = lam0, lam0, 0.0
    while abs(ok - lam) > tol:
        if feasible(lam):
            ok = lam
            lam += step / 2
        else:
            lam -= step / 2
        step /= 2
    return ok


def hill_climb(objective, lam0=10.0, tol=1e-5):
    lam, step, ok, prev = lam0, lam0, 0.0, -1.0
    while abs(ok - lam) > tol:
        loss = objective(lam)
        if prev < loss:
            ok = lam
            lam += step / 2
        else:
            lam -= step / 2
        step /= 2
        prev = loss
    return ok


def agr_tailored(U, byz, rule, perturbation, rule_fn=None, lam0=10.0):
    """`rule_fn(matrix [n, d] float64, f) -> [d]` for objective rules."""
    U = np.asarray(U, np.float64)
    n, d = U.shape
    H = honest_rows(byz)
    f = int(np.sum(byz))
    P = np.asarray([U[i] for i in H])
    mu = P.mean(axis=0)
    if perturbation == "std":
        dev = np.sqrt(((P - mu) ** 2).mean(axis=0))
    elif perturbation == "unit":
        dev = mu / _norm(mu)
    else:
        dev = np.sign(mu)
    fp = min(f, (n - 3) // 2)
    if rule in ("krum", "multikrum", "bulyan"):
        def feasible(lam):
            rows = _with_rows(U, byz, mu - lam * dev)
            sc = krum_scores(rows, fp)
            order = sorted(range(n), key=lambda i: (sc[i], i))
            if rule == "krum":
                return bool(byz[order[0]])
            chosen = set(order[: n - fp])
            return all(i in chosen for i in range(n) if byz[i])
        lam = ndss_search(feasible, lam0)
    else:
        def objective(lam):
            rows = np.asarray(_with_rows(U, byz, mu - lam * dev))
            return _norm(rule_fn(rows, f) - mu)
        lam = hill_climb(objective, lam0)
    return mu - lam * dev, lam


# ------------------------------------------------------------- ByzFL 0.0.11's conventions (issue 22)
# Written from ByzFL's formulas (its aggregators/attacks docstrings and update rules), plain loops in
# float64. H is the list of honest rows in ByzFL's order.


def byzfl_krum_scores(X, f):
    """Mean squared distance of each row to its n - f - 1 nearest other rows (ByzFL: the sorted
    squared distances at positions 1 .. n - f - 1, position 0 being the row itself)."""
    n = X.shape[0]
    out = []
    for i in range(n):
        d = sorted(_dist2(X[i], X[j]) for j in range(n) if j != i)
        kept = d[: n - f - 1]
        out.append(sum(kept) / len(kept))
    return out


def byzfl_multikrum(X, f):
    n = X.shape[0]
    sc = byzfl_krum_scores(X, f)
    order = sorted(range(n), key=lambda i: (sc[i], i))
    return _mean_rows(X, order[: n - f])


def byzfl_krum(X, f):
    sc = byzfl_krum_scores(X, f)
    best = min(range(len(sc)), key=lambda i: (sc[i], i))
    return np.asarray(X[best], np.float64)


def byzfl_geometric_median(X, nu=0.1, T=3):
    """ByzFL GeometricMedian: z = 0; T times beta_i = max(||x_i - z||, nu), z = sum_i (x_i / beta_i) /
    sum_i (1 / beta_i) (its alpha = 1/n cancels)."""
    n, d = X.shape
    z = [0.0] * d
    for _ in range(T):
        inv = [1.0 / max(math.sqrt(_dist2(X[i], z)), nu) for i in range(n)]
        z = [sum(inv[i] * float(X[i][j]) for i in range(n)) / sum(inv) for j in range(d)]
    return np.asarray(z)


def byzfl_alie(H, tau=1.5):
    """ByzFL ALittleIsEnough: mean + tau * sqrt(var(H, ddof=1)) per coordinate."""
    h, d = len(H), len(H[0])
    out = []
    for j in range(d):
        col = [float(H[i][j]) for i in range(h)]
        m = sum(col) / h
        var = sum((v - m) ** 2 for v in col) / (h - 1)
        out.append(m + tau * math.sqrt(var))
    return np.asarray(out)


def byzfl_arc(X, f):
    """ByzFL ARC: k = int((2 f / n) (n - f)) largest-norm rows clipped to the norm of the
    (n - k)-th smallest (ties by row order, as Python's stable sort)."""
    X = [list(map(float, r)) for r in X]
    n = len(X)
    mags = sorted(((_norm(r), i) for i, r in enumerate(X)), key=lambda t: t[0])
    k = int((2 * f / n) * (n - f))
    cut = n - k
    thr = mags[cut - 1][0]
    for nrm, i in mags[cut:]:
        if nrm > thr:
            X[i] = [v * thr / nrm for v in X[i]]
    return np.asarray(X)


# ------------------------------------------------------------------------------ issue 23 (loops)
# GAS (Liu et al., ICML 2023; the authors' `gas_aggregate` / `split`), the uniformity
# pre-aggregator and the diverse STRIKE, written from their definitions (the GAS paper / code, the
# module docstrings' step lists, the paper's STRIKE constraint), not from strike_jax.


def gas(X, f, perm, p, base):
    """`perm`: the round's coordinate permutation; `base`: "krum" (Multi-Krum's n - f average, the
    authors' `agg_krum`) or "bulyan" (the published Bulyan)."""
    import reference_aggregators as ra

    X = np.asarray(X, np.float64)
    n, d = X.shape
    c = -(-d // p)  # torch.chunk: chunks of ceil(d / p), the last one shorter
    chunks = [list(perm[s:s + c]) for s in range(0, d, c)]
    rule = ra.multikrum if base == "krum" else ra.bulyan
    scores = [0.0] * n
    for cols in chunks:
        G = X[:, cols]
        a = rule(G, f)
        for i in range(n):
            scores[i] += math.sqrt(_dist2(G[i], a))
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return _mean_rows(X, order[:n - f])


def uniformity(X, f, tau=0.1):
    """The uniformity pre-aggregator on finite rows: returns the new matrix."""
    X = np.asarray(X, np.float64)
    n = len(X)
    nn = [min(math.sqrt(_dist2(X[i], X[j])) for j in range(n) if j != i) for i in range(n)]
    scale = _lower_median(nn)
    suspicious = [i for i in range(n) if nn[i] <= tau * scale]
    flagged = sorted(suspicious, key=lambda i: (nn[i], i))[:f]
    kept = [i for i in range(n) if i not in flagged]
    out = np.array(X, copy=True)
    for i in flagged:
        out[i] = _mean_rows(X, kept)
    return out, flagged


def strike_diverse(U, byz, nu=1.0, spread=0.5, tol=1e-5):
    """The diverse STRIKE's Byzantine rows, `{row: vector}` (the h > f case), plus S and D."""
    import reference_attacks as rfa

    U = np.asarray(U, np.float64)
    n = len(byz)
    mu, med, S = rfa.strike_selection(U, byz)
    gS = rfa.mean(U[S])
    dev = np.sign(gS - mu) * rfa.std(U[S])
    D = rfa.diameter(U[S])
    direction = med - mu
    # S by decreasing projection on the search direction, ties by row index
    ranked = sorted(S, key=lambda i: (-float(U[i] @ direction), i))
    out = {}
    k = 0
    for r in range(n):
        if not byz[r]:
            continue
        m = ranked[k % len(S)]
        s = spread / (1 + k // len(S))
        c = gS + s * (U[m] - gS)

        def F(a):
            return max(rfa.dist(c + a * dev, U[i]) for i in S) - D

        lo, hi, doublings = 0.0, 1.0, 0
        while F(hi) < 0 and doublings < 60:
            lo, hi = hi, 2.0 * hi
            doublings += 1
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if F(mid) <= 0:
                lo = mid
            else:
                hi = mid
        out[r] = c + nu * lo * dev
        k += 1
    return out, S, D

"""Splitting a training set over clients: Dirichlet label skew, IID, natural (SPEC §4), and
ByzFL's gamma-similarity and extreme non-IID splits (ByzFL 0.0.11 `DataDistributor`), with
ByzFL's train/validation hold-out.

Every partition assigns each sample to exactly one client and is a pure function of its
arguments (randomness from `np.random.default_rng(seed)`; for ByzFL's splits, the "data seed").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from strike_jax.errors import InputError

__all__ = [
    "Partition",
    "dirichlet",
    "dirichlet_cut_points",
    "dirichlet_split",
    "extreme_niid",
    "gamma_similarity_niid",
    "holdout",
    "iid",
    "natural",
    "partition_seed",
    "split_training_set",
]


class Partition(NamedTuple):
    """Sample indices of every client.

    Attributes:
      indices: one int64 array per client (client `i` = `indices[i]`), indices into the training
        set. Together they cover `0..N_train-1` exactly once.
      kind: `"dirichlet"`, `"iid"` or `"natural"`.
      proportions: for Dirichlet, the accepted draw `P` of shape `[C, N]` (row `c` = `P_c`, for
        the `c`-th class of `np.unique(labels)`); else `None`.
      tries: number of Dirichlet draws made until one was accepted (1 for the others).
    """

    indices: tuple[np.ndarray, ...]
    kind: str
    proportions: np.ndarray | None = None
    tries: int = 1

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    @property
    def num_samples(self) -> int:
        return int(sum(a.size for a in self.indices))

    def counts(self) -> np.ndarray:
        """`[num_clients]` int64 sample counts `m_i`."""
        return np.array([a.size for a in self.indices], dtype=np.int64)

    def owner(self) -> np.ndarray:
        """`[num_samples]` int32: the client of each sample."""
        out = np.full(self.num_samples, -1, np.int32)
        for i, a in enumerate(self.indices):
            out[a] = i
        return out

    def class_counts(self, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
        """`[num_clients, num_classes]` int64: how many samples of each class each client holds."""
        labels = np.asarray(labels)
        c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        return np.stack([np.bincount(labels[a], minlength=c) for a in self.indices]).astype(np.int64)

    def summary(self, labels: np.ndarray | None = None) -> dict[str, Any]:
        """Count statistics as plain Python values (CLI, benchmarks)."""
        m = self.counts()
        out = {
            "kind": self.kind,
            "num_clients": self.num_clients,
            "num_samples": self.num_samples,
            "tries": self.tries,
            "min": int(m.min()),
            "median": float(np.median(m)),
            "mean": float(m.mean()),
            "max": int(m.max()),
        }
        if labels is not None:
            cc = self.class_counts(labels)
            out["classes_per_client_mean"] = float((cc > 0).sum(1).mean())
            out["classes_per_client_min"] = int((cc > 0).sum(1).min())
        return out


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def _check_num_clients(num_clients, num_samples: int) -> int:
    if isinstance(num_clients, (bool, np.bool_)) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise InputError(f"num_clients must be an int >= 1, got {num_clients!r}.")
    if num_clients > num_samples:
        raise InputError(
            f"num_clients={num_clients} exceeds the number of samples ({num_samples}): some client "
            "would be empty. Use at most as many clients as samples."
        )
    return int(num_clients)


def dirichlet_cut_points(proportions: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """Cut points of SPEC §4's rule: `floor(cumsum(P_c) * N_c)` with the ends fixed.

    Args:
      proportions: `[C, N]` rows on the simplex.
      class_sizes: `[C]` samples per class `N_c`.

    Returns:
      `[C, N + 1]` int64 boundaries `b`: client `i` takes positions `b[c, i]:b[c, i+1]` of class
      `c`'s shuffled indices; `b[c, 0] = 0`, `b[c, N] = N_c` (the last client takes the rest, so
      float rounding of `cumsum` can never drop a sample).
    """
    p = np.asarray(proportions, np.float64)
    sizes = np.asarray(class_sizes, np.int64)
    inner = np.floor(np.cumsum(p, axis=1)[:, :-1] * sizes[:, None]).astype(np.int64)
    inner = np.minimum(inner, sizes[:, None])
    return np.concatenate([np.zeros((p.shape[0], 1), np.int64), inner, sizes[:, None]], axis=1)


def dirichlet_split(labels: np.ndarray, proportions: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """One Dirichlet assignment given the proportions (SPEC §4, without the retry).

    For every class `c` of `np.unique(labels)` in ascending order: `rng.permutation` of its sample
    indices (ascending before permuting), cut at `dirichlet_cut_points`; client `i` takes piece
    `i`. A client's list is its pieces concatenated in class order (not shuffled here).

    Args:
      labels: `[N_train]` int labels.
      proportions: `[C, N]`, `C = len(np.unique(labels))`.
      rng: consumed: one permutation per class.

    Returns:
      `N` int64 index arrays.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    p = np.asarray(proportions)
    if p.ndim != 2 or p.shape[0] != classes.size:
        raise InputError(f"proportions must be [num_classes={classes.size}, num_clients], got {p.shape}.")
    per_class = [np.flatnonzero(labels == c) for c in classes]
    bounds = dirichlet_cut_points(p, np.array([a.size for a in per_class]))
    pieces: list[list[np.ndarray]] = [[] for _ in range(p.shape[1])]
    for c, idx in enumerate(per_class):
        idx = rng.permutation(idx)
        for i in range(p.shape[1]):
            pieces[i].append(idx[bounds[c, i] : bounds[c, i + 1]])
    return [np.concatenate(x).astype(np.int64) for x in pieces]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    beta: float,
    seed: int,
    min_size: int = 10,
    max_tries: int = 1000,
) -> Partition:
    """Dirichlet label-skew split (SPEC §4; Hsu et al. 2019 as used by the paper).

    With `rng = np.random.default_rng(seed)` and the classes `np.unique(labels)` (`C` of them):

    1. draw `P = rng.dirichlet(beta * 1_N, size=C)` (row `c` is `P_c ~ Dir(beta * 1_N)`); client
       `i`'s size is `sum_c (b[c, i+1] - b[c, i])` with `b = dirichlet_cut_points(P, N_c)`;
       if some client has fewer than `min_size` samples, draw again (the whole `P`), at most
       `max_tries` times;
    2. `dirichlet_split(labels, P, rng)`: shuffle each class, cut, client `i` takes piece `i`;
    3. shuffle each client's list: `rng.permutation`, clients in order.

    The sizes depend only on `P`, so the class shuffles are drawn once, after acceptance (the
    same distribution as reshuffling on every try, which SPEC §4 describes, at less cost). No
    balancing trick (unlike some reference code bases).

    Args:
      labels: `[N_train]` int labels.
      num_clients: `N`.
      beta: concentration `> 0` (small = skewed).
      seed: non-negative int.
      min_size: the retry threshold (10 in SPEC §4).
      max_tries: draws before giving up.

    Returns:
      `Partition(kind="dirichlet", proportions=P, tries=t)`.

    Raises:
      ValueError: `beta <= 0`, `num_clients` above the sample count or `num_clients * min_size`
        above it, or no acceptable draw in `max_tries` (lower `num_clients` or raise `beta`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a non-empty 1-d int array, got {labels.dtype} {labels.shape}.")
    seed = _check_seed(seed)
    n = _check_num_clients(num_clients, labels.size)
    if not (np.isfinite(beta) and beta > 0):
        raise InputError(f"beta must be a finite number > 0, got {beta!r}.")
    if int(min_size) < 0 or int(max_tries) < 1:
        raise InputError(f"need min_size >= 0 and max_tries >= 1, got {min_size}, {max_tries}.")
    if n * int(min_size) > labels.size:
        raise InputError(
            f"{n} clients x min_size {min_size} exceeds the {labels.size} samples: no split can "
            "satisfy it. Lower num_clients or min_size."
        )
    classes, class_sizes = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    smallest = -1
    for tries in range(1, int(max_tries) + 1):  # noqa: B007 (read after the loop: Partition.tries)
        p = rng.dirichlet(np.full(n, float(beta)), size=classes.size)
        if not np.all(np.isfinite(p)):
            raise InputError(f"Dirichlet draw with beta={beta} gave non-finite proportions; raise beta.")
        sizes = np.diff(dirichlet_cut_points(p, class_sizes), axis=1).sum(0)
        smallest = max(smallest, int(sizes.min()))
        if sizes.min() >= min_size:
            break
    else:
        raise InputError(
            f"dirichlet: no draw in max_tries={max_tries} gave every one of {n} clients at least "
            f"{min_size} samples (best smallest client: {smallest}) with beta={beta}. Lower "
            "num_clients, raise beta, or raise max_tries."
        )
    pieces = dirichlet_split(labels, p, rng)
    indices = tuple(rng.permutation(a) for a in pieces)
    return Partition(indices=indices, kind="dirichlet", proportions=p, tries=tries)


def iid(num_samples: int, num_clients: int, seed: int) -> Partition:
    """IID split: `np.random.default_rng(seed).permutation(num_samples)` cut into `num_clients`
    nearly equal consecutive chunks (`np.array_split`: the first `num_samples % N` get one more).

    Raises:
      ValueError: more clients than samples (a client would be empty), bad seed.
    """
    if isinstance(num_samples, (bool, np.bool_)) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise InputError(f"num_samples must be an int >= 1, got {num_samples!r}.")
    seed = _check_seed(seed)
    n = _check_num_clients(num_clients, int(num_samples))
    perm = np.random.default_rng(seed).permutation(int(num_samples)).astype(np.int64)
    return Partition(indices=tuple(np.array_split(perm, n)), kind="iid")


def natural(client_ids: np.ndarray) -> Partition:
    """The natural partition given by per-sample owner ids (e.g. FEMNIST writers).

    Client `k` holds the samples with `client_ids == k`, in ascending index order (local
    training reshuffles every round).

    Args:
      client_ids: `[N_train]` ints; ids must be `0..K-1`, every id present.

    Raises:
      ValueError: negative ids, or an id in `0..max` with no sample (that client would be empty).
    """
    ids = np.asarray(client_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"client_ids must be a non-empty 1-d int array, got {ids.dtype} {ids.shape}.")
    if ids.min() < 0:
        raise InputError(f"client_ids must be >= 0, got min {ids.min()}.")
    counts = np.bincount(ids)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise InputError(
            f"natural: client ids {empty[:10].tolist()}{'...' if empty.size > 10 else ''} have no "
            "samples (ids must be 0..K-1, all present). Renumber them, e.g. "
            "np.unique(client_ids, return_inverse=True)[1]."
        )
    order = np.argsort(ids, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return Partition(indices=tuple(a.astype(np.int64) for a in np.split(order, bounds)), kind="natural")


# ------------------------------------------------------------------------------ ByzFL's splits


def _check_order(order, num_samples: int | None) -> np.ndarray:
    """The candidate sample indices as int64 (distinct, non-negative)."""
    idx = np.asarray(order)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"order must be a 1-d int array of sample indices, got {idx.dtype} {idx.shape}.")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or (num_samples is not None and idx.max() >= num_samples)):
        raise ValueError(f"order holds indices outside 0..{num_samples - 1 if num_samples else '?'}.")
    if np.unique(idx).size != idx.size:
        raise ValueError("order must not repeat a sample index.")
    return idx


def _sorted_by_label(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    # ByzFL sorts the pairs (label, index): by label, then by sample index.
    return idx[np.lexsort((idx, labels[idx]))]


def extreme_niid(labels: np.ndarray, num_clients: int, order: np.ndarray | None = None) -> Partition:
    """ByzFL's `extreme_niid`: the samples sorted by (label, index), cut into `num_clients`
    nearly equal consecutive chunks (`np.array_split`: the first `m % N` get one more).

    Deterministic: no seed. With 10 classes and 10 clients of equal class sizes every client holds
    one class.

    Args:
      labels: `[N_train]` int labels of the whole training set.
      num_clients: `N` (ByzFL gives data to the honest clients only: pass their number).
      order: the sample indices to split (default all, `0..N_train-1`); e.g. `holdout`'s training
        part. Their order does not matter (they are sorted).

    Returns:
      `Partition(kind="extreme_niid")` covering exactly the samples of `order`.

    Raises:
      ValueError: bad labels, `num_clients` < 1 or above the number of samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-d int array, got {labels.dtype} {labels.shape}.")
    idx = np.arange(labels.size, dtype=np.int64) if order is None else _check_order(order, labels.size)
    n = _check_num_clients(num_clients, idx.size)
    return Partition(indices=tuple(np.array_split(_sorted_by_label(labels, idx), n)), kind="extreme_niid")


def gamma_similarity_niid(labels: np.ndarray, num_clients: int, gamma: float, seed: int,
                          order: np.ndarray | None = None) -> Partition:
    """ByzFL's `gamma_similarity_niid` (Allouah et al. 2023): a fraction `gamma` of the data spread
    IID, the rest split extremely non-IID.

    With `idx` = `order` (default: `np.random.default_rng(seed).permutation(N_train)`, standing for
    the random order of ByzFL's `random_split` subset) and `k = int(len(idx) * gamma)` (Python's
    truncation of the float product, as ByzFL):

    1. the first `k` indices of `idx`, shuffled (`rng.permutation`; ByzFL's `random.shuffle`), cut
       into `num_clients` nearly equal chunks (`np.array_split`);
    2. the other `len(idx) - k` indices sorted by (label, index) and cut the same way
       (`extreme_niid`);
    3. client `i` holds chunk `i` of step 1 followed by chunk `i` of step 2.

    `gamma = 1` is an IID split, `gamma = 0` `extreme_niid`. Which samples land in the IID part
    depends on `idx`'s order: with `order` in dataset order ByzFL's rule takes the *first* `k`
    samples of the dataset (what ByzFL does when given a whole dataset rather than a subset).

    Args:
      labels: `[N_train]` int labels.
      num_clients: `N` (the honest clients).
      gamma: the IID fraction, a float in `[0, 1]` (ByzFL's `distribution_parameter`).
      seed: the data seed (non-negative int).
      order: the sample indices to split, in ByzFL's `idx` order (e.g. `holdout`'s training part).

    Returns:
      `Partition(kind="gamma_similarity_niid")`; clients may be empty only if there are fewer
      samples than clients in a part (ByzFL's rule; refused here: see Raises).

    Raises:
      ValueError: `gamma` outside `[0, 1]`, bad labels/seed, or fewer samples than clients.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-d int array, got {labels.dtype} {labels.shape}.")
    if isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma={gamma!r} is not allowed; allowed: a number in [0, 1].")
    rng = np.random.default_rng(_check_seed(seed))
    idx = rng.permutation(labels.size).astype(np.int64) if order is None else _check_order(order, labels.size)
    n = _check_num_clients(num_clients, idx.size)
    k = int(idx.size * float(gamma))
    iid_part = np.array_split(rng.permutation(idx[:k]), n)
    niid_part = np.array_split(_sorted_by_label(labels, idx[k:]), n)
    return Partition(indices=tuple(np.concatenate([a, b]).astype(np.int64) for a, b in zip(iid_part, niid_part)),
                     kind="gamma_similarity_niid")


def holdout(num_samples: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ByzFL's train/validation split (`torch.utils.data.random_split(dataset, [t, N - t])` with
    `t = int(train_fraction * N)`): a random permutation of `0..N-1`, its first `t` entries for
    training and the rest for validation, both in permuted order (pass the first as `order` to
    `gamma_similarity_niid` / `extreme_niid` to split it as ByzFL does).

    Args:
      num_samples: `N` (>= 1).
      train_fraction: in `(0, 1]` (ByzFL's `size_train_set`, default 0.8; 1 = no validation set).
      seed: the data seed.

    Returns:
      `(train, validation)` int64 index arrays, disjoint, together `0..N-1`.
    """
    if isinstance(num_samples, (bool, np.bool_)) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
    if isinstance(train_fraction, (bool, np.bool_)) or not isinstance(train_fraction, (int, float, np.floating)) \
            or not 0.0 < float(train_fraction) <= 1.0:
        raise ValueError(f"train_fraction={train_fraction!r} is not allowed; allowed: a number in (0, 1].")
    perm = np.random.default_rng(_check_seed(seed)).permutation(int(num_samples)).astype(np.int64)
    t = int(float(train_fraction) * int(num_samples))
    if t < 1:
        raise ValueError(f"train_fraction={train_fraction!r} leaves no training sample out of {num_samples}.")
    return perm[:t], perm[t:]


# ------------------------------------------------------------------ the one split of a run

#: Partition kinds of `split_training_set`; the last two are ByzFL's.
KINDS = ("dirichlet", "iid", "natural", "gamma_similarity_niid", "extreme_niid")


def partition_seed(data_seed: int) -> int:
    """The partition's seed when a hold-out is drawn first: the hold-out draws from `data_seed`
    itself, the partition from this independent stream (`SeedSequence([data_seed, 1])`)."""
    return int(np.random.SeedSequence([int(data_seed), 1]).generate_state(1)[0])


def split_training_set(labels: np.ndarray, num_clients: int, *, kind: str, seed: int, beta: float = 0.5,
                       gamma: float = 1.0, min_size: int = 10, validation_fraction: float = 0.0,
                       exclude: np.ndarray | None = None,
                       client_ids: np.ndarray | None = None) -> tuple[Partition, np.ndarray]:
    """A run's whole data split: the validation hold-out, then the clients' partition (the one
    implementation behind `strike_jax.simulation` and `strike_jax.byzfl.split_clients`).

    1. `keep`: the training samples not in `exclude` (e.g. the server's root set), ascending.
    2. With `validation_fraction > 0`, or a ByzFL kind ("gamma_similarity_niid", "extreme_niid":
       ByzFL always draws its `random_split`, also with `size_train_set = 1`): `holdout(len(keep),
       1 - validation_fraction, seed)` over `keep` (ByzFL's `random_split`: the training part in
       its random order, the validation part the rest), and the partition draws from
       `partition_seed(seed)`. Otherwise no hold-out, the training part is `keep` in order and the
       partition draws from `seed` (the split of every run before validation sets existed).
    3. The training part split over `num_clients` clients: `dirichlet(labels, beta, min_size)`,
       `iid`, `natural(client_ids)`, `gamma_similarity_niid(gamma)` (in the hold-out's order, as
       ByzFL) or `extreme_niid`.

    Args:
      labels: `[N_train]` int labels of the whole training set.
      num_clients: clients given data (ByzFL: the honest ones).
      kind: one of `KINDS`.
      seed: the data seed.
      beta, min_size: Dirichlet's concentration and retry threshold.
      gamma: the IID share of `gamma_similarity_niid`, in [0, 1].
      validation_fraction: the held-out share, in [0, 1) (ByzFL's `1 - size_train_set`; the training
        part has `int((1 - validation_fraction) * len(keep))` samples, with `1 - validation_fraction`
        rounded to 12 decimals so that ByzFL's `size_train_set` comes back exactly).
      exclude: training indices given to no client and not held out.
      client_ids: `[N_train]` owner ids for `kind="natural"`.

    Returns:
      `(partition, validation)`: a `Partition` of `num_clients` clients with indices into the whole
      training set, and the validation indices (int64, empty without a hold-out); disjoint, and
      together with `exclude` they cover the training set once.

    Raises:
      InputError: an unknown kind, a fraction outside its range, or the partition's own errors.
    """
    labels = np.asarray(labels)
    if kind not in KINDS:
        raise InputError(f"partition kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")
    vf = float(validation_fraction)
    if not 0.0 <= vf < 1.0:
        raise InputError(f"validation_fraction={validation_fraction!r} is not allowed; allowed: 0 <= v < 1.")
    keep = np.arange(labels.size, dtype=np.int64)
    if exclude is not None:
        keep = np.setdiff1d(keep, np.asarray(exclude, np.int64))
    held = vf > 0 or kind in ("gamma_similarity_niid", "extreme_niid")
    validation = np.zeros(0, np.int64)
    train, pseed = keep, int(seed)
    if held:
        try:
            pos_train, pos_val = holdout(int(keep.size), round(1.0 - vf, 12), int(seed))
        except ValueError as e:
            raise InputError(str(e)) from None
        train, validation, pseed = keep[pos_train], keep[pos_val], partition_seed(int(seed))
    try:
        if kind == "gamma_similarity_niid":
            return gamma_similarity_niid(labels, num_clients, gamma, pseed, order=train), validation
        if kind == "extreme_niid":
            return extreme_niid(labels, num_clients, order=train), validation
        if kind == "dirichlet":
            pos = dirichlet(labels[train], num_clients, beta, seed=pseed, min_size=min_size)
        elif kind == "iid":
            pos = iid(int(train.size), num_clients, seed=pseed)
        else:
            if client_ids is None:
                raise InputError("partition kind='natural' needs per-sample client ids; the data set has none.")
            pos = natural(np.asarray(client_ids)[train])
    except InputError:
        raise
    except ValueError as e:  # the ByzFL splits' own argument errors
        raise InputError(str(e)) from None
    return pos._replace(indices=tuple(train[a] for a in pos.indices)), validation

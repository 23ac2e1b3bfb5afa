"""ByzFL's data splits (issue 22, item 2): `gamma_similarity_niid`, `extreme_niid`, `holdout`,
against a plain-loop reference written from ByzFL 0.0.11's `DataDistributor` description, and their
properties."""

from __future__ import annotations

import numpy as np
import pytest

from strike_jax import data
from strike_jax.data import partition as P


def _chunks(seq, n):
    # np.array_split by hand: the first len % n chunks get one more element.
    q, r = divmod(len(seq), n)
    out, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(list(seq[start:start + size]))
        start += size
    return out


def ref_extreme(labels, idx, n):
    ordered = [i for _, i in sorted((int(labels[i]), int(i)) for i in idx)]
    return _chunks(ordered, n)


def ref_gamma(labels, n, gamma, seed, order=None):
    # ByzFL: idx (a random_split order), k = int(len(idx) * gamma); the first k shuffled and cut,
    # the rest sorted by (label, index) and cut; client i = iid chunk i + niid chunk i. The random
    # draws are made in the same order as strike_jax's (a permutation for idx, one for the shuffle).
    rng = np.random.default_rng(seed)
    idx = [int(i) for i in (rng.permutation(len(labels)) if order is None else order)]
    k = int(len(idx) * gamma)
    iid = _chunks([int(i) for i in rng.permutation(np.array(idx[:k], np.int64))], n)
    niid = ref_extreme(labels, idx[k:], n)
    return [iid[i] + niid[i] for i in range(n)]


def _labels(num, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, num)


@pytest.mark.parametrize("num,n,gamma,seed", [(103, 4, 0.5, 0), (200, 10, 0.66, 3), (57, 7, 0.33, 1),
                                              (60, 6, 0.0, 2), (60, 6, 1.0, 2)])
def test_gamma_matches_reference(num, n, gamma, seed):
    labels = _labels(num, 5, seed)
    got = P.gamma_similarity_niid(labels, n, gamma, seed)
    want = ref_gamma(labels, n, gamma, seed)
    assert got.kind == "gamma_similarity_niid" and got.num_clients == n
    for g, w in zip(got.indices, want):
        assert g.dtype == np.int64 and g.tolist() == w


def test_gamma_with_order_matches_reference():
    labels = _labels(150, 10, 4)
    train, _ = P.holdout(150, 0.8, seed=9)
    got = P.gamma_similarity_niid(labels, 5, 0.5, 9, order=train)
    want = ref_gamma(labels, 5, 0.5, 9, order=train)
    assert [g.tolist() for g in got.indices] == want
    assert sorted(np.concatenate(got.indices).tolist()) == sorted(train.tolist())


@pytest.mark.parametrize("num,n", [(100, 10), (103, 4), (9, 9)])
def test_extreme_matches_reference(num, n):
    labels = _labels(num, 3, num)
    got = P.extreme_niid(labels, n)
    assert [g.tolist() for g in got.indices] == ref_extreme(labels, range(num), n)
    order = np.random.default_rng(1).permutation(num)[: num - 2]
    got = P.extreme_niid(labels, min(n, num - 2), order=order)
    assert [g.tolist() for g in got.indices] == ref_extreme(labels, order, min(n, num - 2))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.66, 1.0])
def test_every_sample_once_and_sizes(gamma):
    labels = _labels(1003, 10, 5)
    p = P.gamma_similarity_niid(labels, 10, gamma, seed=11)
    allidx = np.concatenate(p.indices)
    assert np.array_equal(np.sort(allidx), np.arange(1003))
    m = p.counts()
    assert m.max() - m.min() <= 2  # one chunk of each part, each within 1 of the others


def test_gamma_extremes():
    # 10 equal classes over 10 clients: gamma = 0 gives one class each (extreme_niid); gamma = 1 is
    # IID: every client sees every class in about equal numbers.
    labels = np.repeat(np.arange(10), 300)
    p0 = P.gamma_similarity_niid(labels, 10, 0.0, seed=0)
    assert [g.tolist() for g in p0.indices] == [g.tolist() for g in P.extreme_niid(labels, 10).indices]
    assert ((p0.class_counts(labels, 10) > 0).sum(1) == 1).all()
    cc = P.gamma_similarity_niid(labels, 10, 1.0, seed=0).class_counts(labels, 10)
    assert (cc > 0).all() and np.abs(cc - 30).max() < 20
    # Half IID: each client holds 150 IID samples (all classes) + 150 of mostly one class (the
    # non-IID part is a random half of every class, so a chunk of 150 may straddle two classes).
    cc = P.gamma_similarity_niid(labels, 10, 0.5, seed=0).class_counts(labels, 10)
    assert (cc.max(1) >= 120).all() and ((cc > 0).sum(1) >= 8).all()


def test_seeded_and_pure():
    labels = _labels(300, 10, 6)
    a = P.gamma_similarity_niid(labels, 6, 0.4, seed=3)
    b = P.gamma_similarity_niid(labels, 6, 0.4, seed=3)
    c = P.gamma_similarity_niid(labels, 6, 0.4, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices))
    assert any(not np.array_equal(x, y) for x, y in zip(a.indices, c.indices))


def test_holdout():
    tr, va = P.holdout(100, 0.8, seed=2)
    assert tr.size == 80 and va.size == 20
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(100))
    tr2, va2 = P.holdout(100, 0.8, seed=2)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr, va = P.holdout(10, 1.0, seed=0)
    assert tr.size == 10 and va.size == 0
    assert P.holdout(7, 0.3, seed=0)[0].size == int(0.3 * 7)


def test_bad_input():
    labels = _labels(50, 3)
    with pytest.raises(ValueError, match=r"gamma=1\.5 is not allowed; allowed: a number in \[0, 1\]"):
        P.gamma_similarity_niid(labels, 5, 1.5, 0)
    with pytest.raises(ValueError, match="num_clients"):
        P.extreme_niid(labels, 51)
    with pytest.raises(ValueError, match="seed"):
        P.gamma_similarity_niid(labels, 5, 0.5, -1)
    with pytest.raises(ValueError, match="repeat"):
        P.extreme_niid(labels, 2, order=[1, 1, 2])
    with pytest.raises(ValueError, match="outside"):
        P.extreme_niid(labels, 2, order=[1, 50])
    with pytest.raises(ValueError, match="train_fraction=0 is not allowed"):
        P.holdout(10, 0, 0)


def test_exported():
    assert data.gamma_similarity_niid is P.gamma_similarity_niid
    assert data.extreme_niid is P.extreme_niid and data.holdout is P.holdout

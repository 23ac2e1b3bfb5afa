"""Device-drawn round plans: sampling, per-epoch permutations, lane packing (training.schedule)."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax.training import schedule


def _perms(keys, sizes, width, bound=None):
    bits = schedule.position_bits(bound or width)
    return np.asarray(schedule.permutation_rows(schedule.random_words(keys, width, bits), jnp.asarray(sizes), bits))


def test_permutation_rows_are_permutations_then_identity_padding():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    sizes = [0, 1, 7, 16, 16]
    out = _perms(keys, sizes, 16)
    for row, m in zip(out, sizes):
        assert sorted(row[:m].tolist()) == list(range(m))
        assert row[m:].tolist() == list(range(m, 16))
    assert out[3].tolist() != out[4].tolist()  # different keys, different orders


def test_permutation_rows_are_uniform():
    # All 24 orders of 4 elements, 12,000 draws: each expected 500 times (binomial std ~22).
    keys = jax.random.split(jax.random.PRNGKey(1), 12000)
    out = _perms(keys, np.full(12000, 4), 8)[:, :4]
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for row in out:
        counts[tuple(row.tolist())] += 1
    assert all(abs(c - 500) < 6 * 22 for c in counts.values()), counts
    chi2 = sum((c - 500) ** 2 / 500 for c in counts.values())
    assert chi2 < 60  # 23 degrees of freedom: p(chi2 > 60) ~ 4e-5


def test_order_does_not_depend_on_padding():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    narrow = _perms(keys, [5, 9, 12], 12, bound=4096)
    wide = _perms(keys, [5, 9, 12], 40, bound=4096)
    for a, b, m in zip(narrow, wide, [5, 9, 12]):
        assert a[:m].tolist() == b[:m].tolist()


def test_wide_rows_use_more_passes():
    assert schedule._passes(schedule.position_bits(100)) == 2
    assert schedule._passes(schedule.position_bits(5000)) == 3
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    out = _perms(keys, [5000, 4999], 5000)
    assert sorted(out[0].tolist()) == list(range(5000)) and out[1, -1] == 4999


def _table(counts, seed=0):
    rng = np.random.default_rng(seed)
    total = int(sum(counts))
    perm = rng.permutation(total)
    index = np.zeros((len(counts), max(counts)), np.int32)
    parts, off = [], 0
    for i, m in enumerate(counts):
        index[i, :m] = perm[off:off + m]
        parts.append(perm[off:off + m])
        off += m
    return jnp.asarray(index), jnp.asarray(np.asarray(counts, np.int32)), parts


@pytest.mark.parametrize("epochs", [1, 2])
def test_client_batches_visit_each_sample_once_per_epoch(epochs):
    counts = [5, 12, 1, 9]
    index, cnt, parts = _table(counts)
    B = 4
    cb = schedule.client_batches(index, cnt, 3, 7, per_round=4, batch_size=B, local_epochs=epochs)
    S = int(np.asarray(cb.steps).max())
    idx, mask = map(np.asarray, schedule.padded_schedule(cb, batch_size=B, num_steps=S))
    for j, m in enumerate(counts):
        per_epoch = math.ceil(m / B)
        assert int(cb.steps[j]) == epochs * per_epoch
        real = idx[j][mask[j]]
        for e in range(epochs):
            seen = real[e * m:(e + 1) * m]
            assert sorted(seen.tolist()) == sorted(parts[j].tolist())
        # real steps first, the last batch of each epoch partial, then padding
        assert mask[j, :epochs * per_epoch].any(axis=1).all() and not mask[j, epochs * per_epoch:].any()
        assert mask[j, per_epoch - 1].sum() == m - (per_epoch - 1) * B
    if epochs == 2:  # a fresh permutation per epoch
        j = 1
        assert idx[j][mask[j]][:12].tolist() != idx[j][mask[j]][12:].tolist()


def test_client_order_depends_on_seed_round_and_client_only():
    counts = [30] * 8
    index, cnt, _ = _table(counts)
    full = schedule.client_batches(index, cnt, 1, 2, per_round=8, batch_size=8, local_epochs=1)
    again = schedule.client_batches(index, cnt, 1, 2, per_round=8, batch_size=8, local_epochs=1)
    np.testing.assert_array_equal(full.order, again.order)
    part = schedule.client_batches(index, cnt, 1, 2, per_round=3, batch_size=8, local_epochs=1)
    for j, c in enumerate(np.asarray(part.clients)):
        np.testing.assert_array_equal(part.order[j], full.order[c])
    other_round = schedule.client_batches(index, cnt, 1, 3, per_round=8, batch_size=8, local_epochs=1)
    other_seed = schedule.client_batches(index, cnt, 2, 2, per_round=8, batch_size=8, local_epochs=1)
    assert not np.array_equal(full.order, other_round.order) and not np.array_equal(full.order, other_seed.order)


def test_sample_clients_traced_seed_matches_host():
    f = jax.jit(lambda s, r: schedule.sample_clients(s, r, 40, 7))
    a = np.asarray(f(5, 11))
    assert len(set(a.tolist())) == 7 and np.all(np.diff(a) > 0) and a.max() < 40
    np.testing.assert_array_equal(a, np.asarray(schedule.sample_clients(5, 11, 40, 7)))
    with pytest.raises(ValueError, match="per_round"):
        schedule.sample_clients(0, 0, 5, 0)


@pytest.mark.parametrize("steps,lanes", [([5, 3, 3, 2, 2, 1, 0, 4], 3), ([7], 1), ([2, 2, 2, 2], 4),
                                         ([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)])
def test_pack_lanes_runs_every_step_once_in_order(steps, lanes):
    T = schedule.lane_makespan(np.asarray(steps), lanes)
    plan, makespan = schedule.pack_lanes(jnp.asarray(steps, jnp.int32), lanes, T)
    assert int(makespan) == T
    slot, k, first, last = map(np.asarray, plan)
    n = len(steps)
    for j, s in enumerate(steps):
        where = np.argwhere(slot == j)
        assert len(where) == s
        if s == 0:
            continue
        assert len(set(where[:, 1].tolist())) == 1  # one lane
        ts = where[:, 0]
        assert (np.diff(ts) == 1).all()  # consecutive steps
        assert k[slot == j].tolist() == list(range(s))
        assert first[slot == j].tolist() == [True] + [False] * (s - 1)
        assert last[slot == j].tolist() == [False] * (s - 1) + [True]
    assert ((slot == n) == ~(first | last | (slot < n))).all()
    # LPT: no lane idles while a longer remainder waits elsewhere beyond the bound
    assert T <= math.ceil(sum(steps) / lanes) + max(steps)


def test_lane_batches_equal_the_padded_schedule():
    counts = [7, 3, 12, 1, 6]
    index, cnt, _ = _table(counts)
    B, L = 2, 2
    cb = schedule.client_batches(index, cnt, 0, 4, per_round=5, batch_size=B, local_epochs=2)
    steps = np.asarray(cb.steps)
    T = schedule.lane_makespan(steps, L)
    plan, _ = schedule.pack_lanes(cb.steps, L, T)
    li, lm = map(np.asarray, schedule.lane_batches(cb, plan, batch_size=B))
    pi, pm = map(np.asarray, schedule.padded_schedule(cb, batch_size=B, num_steps=int(steps.max())))
    slot = np.asarray(plan.slot)
    for j, s in enumerate(steps):
        where = np.argwhere(slot == j)
        np.testing.assert_array_equal(li[where[:, 0], where[:, 1]], pi[j, :s])
        np.testing.assert_array_equal(lm[where[:, 0], where[:, 1]], pm[j, :s])
    assert not lm[slot == len(counts)].any()  # idle lane steps are fully masked

"""Client index tables (SPEC §3) and the round plan's per-client layout over them (the plan itself,
its sampling and permutations: tests/test_schedule.py)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from strike_jax import data
from strike_jax.training import schedule


def _uneven_partition():
    # Sizes 1, 5, 8, 13, 13; indices scattered over a 40-sample set.
    perm = np.random.default_rng(0).permutation(40)
    sizes = [1, 5, 8, 13, 13]
    parts, start = [], 0
    for s in sizes:
        parts.append(perm[start : start + s])
        start += s
    return data.Partition(indices=tuple(parts), kind="iid")


def test_make_client_data_table():
    part = _uneven_partition()
    cd = data.make_client_data(part, batch_size=4)
    assert cd.index.shape == (5, 13) and cd.index.dtype == np.int32
    assert cd.counts.dtype == np.int32 and cd.counts.tolist() == [1, 5, 8, 13, 13]
    assert cd.batch_size == 4 and cd.num_steps == math.ceil(13 / 4)
    for i, a in enumerate(part.indices):
        np.testing.assert_array_equal(cd.index[i, : a.size], a)
        assert (cd.index[i, a.size :] == 0).all()
    np.testing.assert_array_equal(cd.real_steps(), [1, 2, 2, 4, 4])
    assert data.schedule_nbytes(3, cd) == 3 * 4 * 4 * 5


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        data.make_client_data(_uneven_partition(), bad)


def _plan(cd, seed, rnd):
    """The round's per-client layout from the one plan (`training.schedule`), as host arrays."""
    def plan(index, counts):
        cb = schedule.client_batches(index, counts, seed, rnd, per_round=cd.num_clients, batch_size=cd.batch_size,
                                     local_epochs=cd.local_epochs)
        return (cb.clients, *schedule.padded_schedule(cb, batch_size=cd.batch_size, num_steps=cd.num_steps))

    return tuple(np.asarray(a) for a in jax.jit(plan)(cd.index, cd.counts))


def test_table_layout_is_the_plans_layout():
    """`make_client_data`'s `num_steps` is the longest client's steps: the plan's per-client layout
    fits it exactly, real steps first, the last batch partial, masked slots inside the client's own
    samples."""
    part = _uneven_partition()
    cd = data.make_client_data(part, batch_size=4)
    clients, idx, mask = _plan(cd, seed=11, rnd=5)
    assert idx.shape == mask.shape == (5, cd.num_steps, 4) and idx.dtype == np.int32
    for j, c in enumerate(clients):
        own = part.indices[c]
        np.testing.assert_array_equal(np.sort(idx[j][mask[j]]), np.sort(own))
        assert np.isin(idx[j][~mask[j]], own).all()  # masked slots gather in bounds, from the client's rows
        full, rest = divmod(own.size, 4)
        expect = [4] * full + ([rest] if rest else [])
        assert mask[j].sum(1).tolist() == expect + [0] * (cd.num_steps - len(expect))
        assert int(cd.real_steps()[c]) == len(expect)


def test_empty_client_is_fully_masked():
    part = data.Partition(indices=(np.array([3, 1, 2]), np.array([], np.int64)), kind="dirichlet")
    cd = data.make_client_data(part, batch_size=2)
    clients, idx, mask = _plan(cd, seed=0, rnd=0)
    assert clients.tolist() == [0, 1]
    assert not mask[1].any() and (idx[1] == 0).all()
    assert mask[0].sum() == 3


def test_dirichlet_clients_use_an_index_table_not_copies():
    ds = data.load("synthetic", num_clients=1, samples_per_client=500, image_shape=(2, 2, 1), seed=0)
    part = data.dirichlet(ds.y_train, 20, beta=0.3, seed=0)
    cd = data.make_client_data(part, batch_size=16)
    assert cd.index.nbytes == 20 * int(part.counts().max()) * 4
    _, idx, mask = _plan(cd, seed=0, rnd=0)
    seen = np.sort(idx[mask])
    np.testing.assert_array_equal(seen, np.arange(500))  # one epoch of every client covers the data once

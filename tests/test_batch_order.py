"""`Config.batch_order="epochs"` (issue 22): each client's steps run on through its epochs across
rounds, one keyed pseudo-random shuffle an epoch (`schedule.feistel_permutation`, checked against a
NumPy reference and for uniformity), the last batch of an epoch partial, as ByzFL's clients iterate
their `DataLoader`."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from strike_jax import options, simulate
from strike_jax.config import Config
from strike_jax.errors import InputError
from strike_jax.training import schedule

M32 = 0xFFFFFFFF

stream = jax.jit(schedule.client_orders, static_argnames=(
    "batch_size", "local_epochs", "max_samples", "local_steps", "augment", "batch_order"))


def np_mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def np_feistel(p: int, size: int, keys) -> int:
    """The network of `feistel_permutation`, one position at a time in Python integers."""
    half = (max(size - 1, 1).bit_length() + 1) // 2
    mask = (1 << half) - 1

    def enc(x):
        left, right = x >> half, x & mask
        for k in keys:
            left, right = right, left ^ (np_mix32(right ^ int(k)) & mask)
        return (left << half) | right

    x = enc(p)
    while x >= size:
        x = enc(x)
    return x


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 100, 6000])
def test_feistel_permutation_is_the_reference_bijection(size):
    keys = np.asarray(jax.random.bits(jax.random.PRNGKey(size), (6,), jnp.uint32))
    got = np.asarray(jax.jit(schedule.feistel_permutation)(jnp.arange(size), size, jnp.asarray(keys)))
    assert sorted(got.tolist()) == list(range(size))
    probe = range(size) if size <= 100 else np.random.default_rng(0).choice(size, 50, replace=False)
    assert [got[p] for p in probe] == [np_feistel(int(p), size, keys) for p in probe]


@pytest.mark.parametrize("size", [5, 37])
def test_feistel_permutation_spreads_every_position_uniformly(size):
    # Over random keys, where position p lands is uniform on 0..size-1 (a chi-square per position,
    # far below what a biased network gives: the identity scores 36 * K here).
    K = 3000
    keys = jax.random.bits(jax.random.PRNGKey(1), (K, 6), jnp.uint32)
    q = np.asarray(jax.jit(jax.vmap(lambda k: schedule.feistel_permutation(jnp.arange(size), size, k)))(keys))
    counts = np.zeros((size, size))
    np.add.at(counts, (np.broadcast_to(np.arange(size), q.shape), q), 1)
    chi2 = ((counts - K / size) ** 2 / (K / size)).sum(axis=1)
    dof = size - 1
    assert chi2.max() < dof + 8 * np.sqrt(2 * dof), chi2
    # Consecutive positions are not tied: p and p + 1 land next to each other about 2 / size of the time.
    adjacent = (np.abs(q[:, 1:] - q[:, :-1]) == 1).mean()
    assert abs(adjacent - 2 / size) < 0.05


def _plan(index, counts, t, *, B, steps=1, augment=False, clients=None):
    clients = jnp.arange(index.shape[0]) if clients is None else clients
    cb = stream(jnp.asarray(index, jnp.int32), jnp.asarray(counts, jnp.int32), jnp.asarray(clients, jnp.int32), 4, t,
                batch_size=B, local_epochs=1, max_samples=100, local_steps=steps, augment=augment,
                batch_order="epochs")
    idx, mask = schedule.padded_schedule(cb, batch_size=B, num_steps=steps)
    return cb, np.asarray(idx), np.asarray(mask)


def test_each_epoch_visits_every_sample_once_last_batch_partial():
    sizes = [7, 10, 0, 3]
    index = np.zeros((4, 10), np.int32)
    for c, m in enumerate(sizes):
        index[c, :m] = 100 * (c + 1) + np.arange(m)
    B = 3
    seen = {c: [] for c in range(4)}
    for t in range(8):                                     # epochs of 3, 4, -, 1 steps
        cb, idx, mask = _plan(index, sizes, t, B=B)
        np.testing.assert_array_equal(cb.steps, [1, 1, 0, 1])
        for c in range(4):
            seen[c].append(idx[c, 0][mask[c, 0]].tolist())
    assert seen[2] == [[]] * 8                             # no data: no step
    for c, m in enumerate(sizes):
        if not m:
            continue
        S = -(-m // B)
        for e in range(8 // S):
            batches = seen[c][e * S:(e + 1) * S]
            assert [len(b) for b in batches] == [B] * (S - 1) + [m - (S - 1) * B]
            assert sorted(sum(batches, [])) == index[c, :m].tolist(), (c, e)
    assert sum(seen[1][:4], []) != sum(seen[1][4:8], [])   # a new shuffle each epoch


def test_steps_continue_across_rounds_and_ignore_padding_and_neighbours():
    index = np.arange(40, dtype=np.int32).reshape(4, 10)
    sizes = [10, 9, 5, 8]
    one = [_plan(index, sizes, t, B=4)[1:] for t in range(6)]
    for t in range(2):                                     # round t of 3 steps = rounds 3t .. 3t + 2 of one
        _, idx, mask = _plan(index, sizes, t, B=4, steps=3)
        for i in range(3):
            np.testing.assert_array_equal(mask[:, i], one[3 * t + i][1][:, 0])
            np.testing.assert_array_equal(np.where(mask[:, i], idx[:, i], -1),
                                          np.where(one[3 * t + i][1][:, 0], one[3 * t + i][0][:, 0], -1))
    # Client 2 alone, in a wider table: the same batches.
    wide = np.pad(index, ((0, 0), (0, 6)))
    _, idx, mask = _plan(wide, sizes, 3, B=4, clients=[2])
    np.testing.assert_array_equal(np.where(mask[0], idx[0], -1), np.where(one[3][1][2], one[3][0][2], -1))


def test_flips_are_drawn_per_visit():
    index = np.arange(64, dtype=np.int32).reshape(1, 64)
    flips = []
    for t in range(4):
        cb, idx, mask = _plan(index, [64], t, B=16, augment=True)
        assert mask.all()
        flips.append(idx[0, 0] < 0)
        np.testing.assert_array_equal(np.sort(np.where(idx[0, 0] < 0, -1 - idx[0, 0], idx[0, 0])),
                                      np.sort(np.asarray(_plan(index, [64], t, B=16)[1][0, 0])))
    assert 0.3 < np.mean(flips) < 0.7


@pytest.mark.parametrize("changes, match", [
    (dict(batch_order="shuffled"), "batch_order"),
    (dict(batch_order="epochs"), "local_steps"),
    (dict(batch_order="epochs", algorithm="dsgd", clients_per_round=10), "every client"),
])
def test_bad_batch_orders_are_one_line_errors(changes, match):
    with pytest.raises(InputError, match=match) as e:
        Config(**changes)
    assert "\n" not in str(e.value)


def test_options_offer_batch_order():
    p = argparse.ArgumentParser()
    options.add_config_options(p)
    cfg = Config(**options.overrides(p.parse_args(["--algorithm", "dsgd", "--clients-per-round", "20",
                                                   "--batch-order", "epochs"])))
    assert cfg.batch_order == "epochs" and Config.from_dict(cfg.to_dict()) == cfg


def test_every_strategy_trains_the_same_epochs_order():
    base = Config(dataset="digits", model="mlp", algorithm="dsgd", num_clients=6, clients_per_round=6, rounds=3,
                  batch_size=128, seed=2, attack="signflip", defence="trmean", byzantine_ratio=0.2, server_lr=0.5,
                  max_test_samples=64, batch_order="epochs", eval_every=3)
    # 6 clients of ~240 images in batches of 128: the third round starts every client's second epoch.
    runs = {s: simulate(base.replace(strategy=s)) for s in ("packed", "vmap", "steps")}
    for s in ("vmap", "steps"):
        assert len(runs[s]["rounds"]) == 3
        for ra, rb in zip(runs["packed"]["rounds"], runs[s]["rounds"]):
            np.testing.assert_allclose(ra["train_loss"], rb["train_loss"], rtol=1e-4, err_msg=s)
            np.testing.assert_allclose(ra["aggregate_norm"], rb["aggregate_norm"], rtol=1e-4, err_msg=s)

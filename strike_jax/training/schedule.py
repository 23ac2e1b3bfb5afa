"""A round's plan drawn on the device from `(seed, round)`: sampled clients, batches, lanes (SPEC §2-3).

Everything random in a round is a pure function of the run's seed and the round index, computed by
jitted code (so a round can be one device program, and a resumed run draws exactly the same):

* **Clients** (SPEC §2.1): `n` of the `N` clients uniformly without replacement (the first `n` of a
  random permutation of `0..N-1`, sorted), from `key(seed, SAMPLING_TAG, round)`; all `N` in order
  when `n == N`.
* **Batches** (SPEC §3): client `c`'s local epoch `e` in round `t` visits its `m_c` samples in the
  order of a uniformly random permutation drawn from `fold_in(key(seed, SCHEDULE_TAG, t), c * E + e)` (independent
  of which other clients were sampled); real step `k` of the client is epoch `k // S_c`, batch
  `k % S_c` (`S_c = ceil(m_c / B)`), i.e. permuted positions `b*B .. b*B+B-1`, the last one partial.
* **Lanes**: the `n` clients' `sum_j s_j` real steps (`s_j = E * S_{c_j}`) are packed into `L` lanes
  of `T` steps; each lane trains a list of clients one after another (LPT: longest client first, to
  the least-loaded lane), so no lane pads a short client to the longest one. `T` is static (fixed for
  a run); `plan_lanes` reports the padded fraction `1 - sum_j s_j / (L * T)`.

Permutations are sorts of random keys. A single-array sort is ~6x faster than a key/value sort on
XLA:CPU (measured: 50 x 2376 keys, 4.9 ms vs 32 ms for `argsort`), so each pass sorts one uint32
word packing random high bits with the position in the low bits; passes are repeated until a pair of
positions ties in every pass with probability below 2**-40 (two passes up to 4,096 samples per
client, three up to 65,536), as `jax.random.permutation` does with its repeated rounds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import _require_partitionable_threefry

Array = jax.Array

# Stream tags: every random draw of a run is derived from (seed, tag, round, ...), so that a resumed
# run, or the same run with another attack, samples exactly the same clients and batches.
SAMPLING_TAG = 1
SERVER_TAG = 2
INIT_TAG = 3
SCHEDULE_TAG = 4
AUGMENT_TAG = 5
EPOCH_TAG = 6  # the "epochs" batch order: one key per (client, epoch), `stream_orders`

_TIE_BITS = 40  # repeat sort passes until ties in every pass have probability < 2**-40 per pair


def run_key(seed) -> Array:
    """The root key of a run (`seed` may be traced)."""
    return jax.random.PRNGKey(jnp.asarray(seed, jnp.uint32))


def stream_key(seed, tag: int, round_index) -> Array:
    """`key(seed, tag, round)`: the key of one random stream of one round."""
    return jax.random.fold_in(jax.random.fold_in(run_key(seed), tag), round_index)


def round_key(seed, round_index) -> Array:
    """The server's key of a round (attack and defence randomness)."""
    return stream_key(seed, SERVER_TAG, round_index)


def sample_clients(seed, round_index, num_clients: int, per_round: int) -> Array:
    """The sorted ids of the `per_round` clients of a round (SPEC §2.1), jit-able.

    Args:
      seed, round_index: int scalars (may be traced).
      num_clients: N (static).
      per_round: n (static), `1 <= n <= N`.

    Returns:
      `[n]` int32, strictly increasing.
    """
    if not 1 <= per_round <= num_clients:
        raise ValueError(f"per_round={per_round} must be in [1, num_clients={num_clients}].")
    if per_round == num_clients:
        return jnp.arange(num_clients, dtype=jnp.int32)
    idx_bits = position_bits(num_clients)
    bits = random_words(stream_key(seed, SAMPLING_TAG, round_index)[None], num_clients, idx_bits)
    perm = permutation_rows(bits, jnp.full((1,), num_clients, jnp.int32), idx_bits)[0]
    return jnp.sort(perm[:per_round]).astype(jnp.int32)


def position_bits(width: int) -> int:
    """Bits that hold a position `< width` in the packed sort keys."""
    bits = max(1, math.ceil(math.log2(max(width, 2))))
    if bits > 24:
        raise ValueError(f"a client with {width} samples is beyond the packed sort (at most 2**24).")
    return bits


def _passes(idx_bits: int) -> int:
    return max(2, math.ceil(_TIE_BITS / (32 - idx_bits)))


def random_words(keys: Array, width: int, idx_bits: int) -> Array:
    """`[k, passes, width]` uint32 random words for `permutation_rows`. Word `(p, i)` of a key does not
    depend on `width` (counter `i * passes + p`), so a row's order is the same whatever padding."""
    _require_partitionable_threefry()  # checked when traced: the flag may change after import
    passes = _passes(idx_bits)
    return jax.vmap(lambda k: jax.random.bits(k, (width, passes), jnp.uint32).T)(keys)


def permutation_rows(words: Array, sizes: Array, idx_bits: int) -> Array:
    """One uniformly random permutation of `0..sizes[i]-1` per row, padded to the row width.

    Args:
      words: `[k, passes, width]` uint32 random words (`random_words`).
      sizes: `[k]` int, `0 <= sizes[i] <= width` (may be traced).
      idx_bits: `position_bits(bound)` for a bound on the width; fixed for a data set, so that the
        order of a row does not depend on how far it is padded.

    Returns:
      `[k, width]` int32: row `i` holds a random order of `0..sizes[i]-1` in its first `sizes[i]`
      slots, then `sizes[i]..width-1` in order.
    """
    k, passes, width = words.shape
    if width > (1 << idx_bits):
        raise ValueError(f"rows of width {width} need idx_bits >= {position_bits(width)}, got {idx_bits}.")
    pos = jnp.arange(width, dtype=jnp.uint32)
    real = pos[None, :] < sizes.astype(jnp.uint32)[:, None]
    top = jnp.uint32((1 << (32 - idx_bits)) - 1)
    low = jnp.uint32((1 << idx_bits) - 1)
    perm = jnp.broadcast_to(pos, (k, width))
    for p in range(passes):
        # Padding slots get the largest key, so real positions always occupy the first sizes[i] slots.
        hi = jnp.where(real, words[:, p] >> idx_bits, top)
        order = jax.lax.sort((hi << idx_bits) | pos[None, :], dimension=1) & low
        perm = jnp.take_along_axis(perm, order.astype(jnp.int32), axis=1)
    return perm.astype(jnp.int32)


class ClientBatches(NamedTuple):
    """The sampled clients of a round and the sample order of each local epoch.

    Attributes:
      clients: `[n]` int32 sorted client ids.
      counts: `[n]` int32 samples `m_j` of each.
      steps: `[n]` int32 real local steps `s_j = E * ceil(m_j / B)`.
      order: `[n, E, W]` int32 global sample indices in visiting order (`W = ceil(max_m / B) * B`;
        slots past `m_j` hold the client's first sample, masked); with `sizes`, `[n, s, B]`: row
        `k` is step `k`'s batch.
      sizes: None, or `[n, s]` int32 real samples of each step's batch (the "epochs" batch order,
        `stream_orders`: a step's batch is given directly, not as a slice of an epoch's order).
    """

    clients: Array
    counts: Array
    steps: Array
    order: Array
    sizes: Array | None = None


def local_step_counts(m, batch_size: int, local_epochs: int, local_steps: int | None = None):
    """Real local steps of clients holding `m` samples (NumPy or jax, any shape): `E * ceil(m / B)`
    epochs' worth, or `local_steps` for every client holding data (0 for an empty one)."""
    xp = jnp if isinstance(m, jax.Array) else np
    if local_steps is None:
        return local_epochs * (-(-m // batch_size))
    return xp.where(m > 0, local_steps, 0)


def epochs_drawn(local_epochs: int, local_steps: int | None = None) -> int:
    """Epoch orders drawn per client and round: `E`, or `local_steps` (a client of at most `B`
    samples takes one step an epoch, so `local_steps` steps may need that many epochs; the draw
    depends on the config only, never on the partition, so a run's batches do not depend on which
    runs share its batch)."""
    return local_epochs if local_steps is None else local_steps


def client_batches(index: Array, counts: Array, seed, round_index, *, per_round: int, batch_size: int,
                   local_epochs: int, max_samples: int | None = None, include_last: bool = False,
                   local_steps: int | None = None, augment: bool = False,
                   batch_order: str = "round") -> ClientBatches:
    """Samples the round's clients and draws every local epoch's sample order (jit-able, one run).

    Args:
      index: `[N, max_m]` int32 client index table (`strike_jax.data.ClientData.index`).
      counts: `[N]` int32 sample counts.
      seed, round_index: int scalars (may be traced).
      per_round: n (static).
      batch_size: B (static).
      local_epochs: E (static).
      max_samples: a bound on any client's sample count that does not depend on the partition (the
        training set's size): it fixes the sort's key layout, so that a client's order is the same
        whatever the index table's padding (runs batched together pad to the widest). None: the
        table's width.
      include_last: the table's last row is not a client that can be sampled (the server's root
        set): the `per_round` clients are sampled among the others and the last row is appended
        (then `n = per_round + 1` rows below).
      local_steps: every client holding data takes this many steps (its batches run on through
        `epochs_drawn` fresh epoch orders) instead of `local_epochs` epochs; None: epochs.
      augment: draw a random horizontal flip for every visiting position (`client_orders`).
      batch_order: "round" (fresh epoch orders every round) or "epochs" (`stream_orders`).
    """
    return client_orders(index, counts, round_clients(index.shape[0], seed, round_index, per_round=per_round,
                                                      include_last=include_last),
                         seed, round_index, batch_size=batch_size, local_epochs=local_epochs, max_samples=max_samples,
                         local_steps=local_steps, augment=augment, batch_order=batch_order)


def round_clients(num_rows: int, seed, round_index, *, per_round: int, include_last: bool = False) -> Array:
    """The rows of the client table trained in a round: the `per_round` sampled clients
    (`sample_clients`, sorted), then the table's last row when `include_last` (the root set).
    `[per_round (+ 1)]` int32."""
    num_clients = num_rows - 1 if include_last else num_rows
    clients = sample_clients(seed, round_index, num_clients, per_round)
    if include_last:
        clients = jnp.concatenate([clients, jnp.full((1,), num_clients, jnp.int32)])
    return clients


def client_orders(index: Array, counts: Array, clients: Array, seed, round_index, *, batch_size: int,
                  local_epochs: int, max_samples: int | None = None, valid: Array | None = None,
                  local_steps: int | None = None, augment: bool = False, batch_order: str = "round") -> ClientBatches:
    """Every local epoch's sample order of the given clients (`client_batches` without the sampling).

    Client `c`'s orders depend on `(seed, round, c)` only, so any subset of a round's clients (a
    device's block of them, `training.round` with several devices) gets exactly the orders it has
    in the whole round.

    Args:
      index, counts, seed, round_index, batch_size, local_epochs, max_samples, local_steps: as
        `client_batches`.
      clients: `[k]` int32 rows of the table.
      valid: optional `[k]` bool; invalid entries (padding) get no samples and no steps.
      augment: every visiting position `p` of client `c`'s epoch `e` also gets a fair coin from
        `fold_in(key(seed, AUGMENT_TAG, round), c * E + e)` (`data.augment.flip_bits`): the image
        is mirrored (ByzFL's `RandomHorizontalFlip`) where it is 1, stored in the order as
        `data.augment.mark`'s `-1 - index` (the local step reads it back: `LocalConfig.augmentation`).
      batch_order: "round": the above; "epochs": `stream_orders` (needs `local_steps`).
    """
    if batch_order == "epochs":
        if local_steps is None:
            raise ValueError("batch_order='epochs' needs local_steps (a client's steps continue across rounds).")
        return stream_orders(index, counts, clients, seed, round_index, batch_size=batch_size,
                             local_steps=local_steps, valid=valid, augment=augment)
    if batch_order != "round":
        raise ValueError(f"batch_order={batch_order!r}: allowed 'round' or 'epochs'.")
    max_m = index.shape[1]
    width = -(-max_m // batch_size) * batch_size
    idx_bits = position_bits(max(width, -(-(max_samples or 0) // batch_size) * batch_size))
    m = counts[clients].astype(jnp.int32)
    if valid is not None:
        m = jnp.where(valid, m, 0)
    key = stream_key(seed, SCHEDULE_TAG, round_index)
    steps = local_step_counts(m, batch_size, local_epochs, local_steps)
    local_epochs = epochs_drawn(local_epochs, local_steps)
    # Row (client c, epoch e) has the key fold_in(key, c * E + e): independent of the other clients.
    rows = (clients[:, None] * local_epochs + jnp.arange(local_epochs)[None, :]).reshape(-1)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(rows)
    perm = permutation_rows(random_words(keys, width, idx_bits), jnp.repeat(m, local_epochs), idx_bits)
    perm = perm.reshape(clients.shape[0], local_epochs, width)
    table = jnp.pad(index[clients], ((0, 0), (0, width - max_m)))             # [n, W]
    first = table[:, :1]
    order = jnp.where(perm < m[:, None, None],
                      jnp.take_along_axis(table[:, None, :], jnp.minimum(perm, max_m - 1), axis=2),
                      first[:, None, :])
    if augment:
        from strike_jax.data import augment as augment_lib

        akey = stream_key(seed, AUGMENT_TAG, round_index)
        flips = augment_lib.flip_bits(jax.vmap(lambda i: jax.random.fold_in(akey, i))(rows), width)
        order = augment_lib.mark(order, flips.reshape(order.shape))
    return ClientBatches(clients, m, steps.astype(jnp.int32), order.astype(jnp.int32))


_FEISTEL_ROUNDS = 6


def _mix32(x: Array) -> Array:
    """A bijective 32-bit integer mixer (xor-shift / multiply, "lowbias32" of C. Wellons'
    hash-prospector), the Feistel network's round function."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def feistel_permutation(positions: Array, size: Array, round_keys: Array) -> Array:
    """A keyed pseudo-random bijection of `0..size-1`, evaluated only at the given positions.

    A balanced Feistel network on `2h` bits (`2^(2h) >= size`, `< 4 size`), `round_keys.shape[-1]`
    rounds of `L, R <- R, L ^ (mix32(R ^ key) mod 2^h)`, with cycle walking (re-encrypt while the
    value is `>= size`): a permutation of `0..size-1` for any keys, whose entries cost `O(rounds)`
    each, so a step's batch needs no sort of the whole epoch (Black & Rogaway 2002, "Ciphers with
    arbitrary finite domains"). Not uniform over all `size!` orders: a keyed pseudo-random
    permutation, as a data loader's shuffle needs.

    Args:
      positions: int array (any shape), positions `< size` (others give unspecified values).
      size: int array broadcastable to `positions`, `1 <= size <= 2^24` (`size <= 0`: unspecified).
      round_keys: uint32 `[..., rounds]`, its leading axes broadcastable to `positions`.

    Returns:
      int32 array of `positions`' shape: the images of `positions`.
    """
    size = jnp.asarray(size, jnp.int32)
    bits = 32 - jax.lax.clz(jnp.maximum(size - 1, 1).astype(jnp.uint32))   # bits of size - 1 (>= 1)
    half = ((bits + 1) // 2).astype(jnp.uint32)
    mask = (jnp.uint32(1) << half) - jnp.uint32(1)
    keys = jnp.asarray(round_keys, jnp.uint32)

    def encrypt(x):
        left, right = x >> half, x & mask
        for r in range(keys.shape[-1]):
            left, right = right, left ^ (_mix32(right ^ keys[..., r]) & mask)
        return (left << half) | right

    limit = size.astype(jnp.uint32)
    x = encrypt(jnp.asarray(positions, jnp.uint32))
    # Cycle walking: the walk from a position < size returns below size (at worst at the position).
    x = jax.lax.while_loop(lambda v: jnp.any(v >= limit), lambda v: jnp.where(v >= limit, encrypt(v), v), x)
    return x.astype(jnp.int32)


def stream_orders(index: Array, counts: Array, clients: Array, seed, round_index, *, batch_size: int,
                  local_steps: int, valid: Array | None = None, augment: bool = False) -> ClientBatches:
    """The "epochs" batch order: each client's steps run on through its epochs across rounds, as a
    PyTorch `DataLoader(shuffle=True)` iterated without restart (ByzFL's clients).

    Every client trains every round (`Config.batch_order` checks it), so client `c`'s `i`-th step of
    round `t` is its step `k = t * local_steps + i` overall: epoch `e = k // S_c`, batch `b = k % S_c`
    (`S_c = ceil(m_c / B)`), the epoch order's positions `b*B .. min(b*B + B, m_c) - 1` (the epoch's
    last batch is partial). Epoch `e`'s order is `feistel_permutation` keyed by
    `key(seed, EPOCH_TAG, c, e)`, evaluated at those positions only. With `augment`, the visit of
    position `p` is mirrored where a hash of `(p, key)` is odd (one coin per visit, as
    `RandomHorizontalFlip` draws at each load).

    Args:
      index, counts, clients, seed, round_index, batch_size, valid, augment: as `client_orders`.
      local_steps: steps per round (static).

    Returns:
      `ClientBatches` with `order [n, local_steps, B]` and `sizes [n, local_steps]`.
    """
    B, S = batch_size, local_steps
    m = counts[clients].astype(jnp.int32)
    if valid is not None:
        m = jnp.where(valid, m, 0)
    per_epoch = jnp.maximum(-(-m // B), 1)                                            # [n]
    k = jnp.asarray(round_index, jnp.int32) * S + jnp.arange(S, dtype=jnp.int32)      # [S]
    epoch = k[None, :] // per_epoch[:, None]                                          # [n, S]
    batch = k[None, :] % per_epoch[:, None]
    pos = batch[..., None] * B + jnp.arange(B, dtype=jnp.int32)                       # [n, S, B]
    live = pos < m[:, None, None]
    base = jax.random.fold_in(run_key(seed), EPOCH_TAG)
    words = jax.vmap(jax.vmap(lambda c, e: jax.random.bits(
        jax.random.fold_in(jax.random.fold_in(base, c), e), (_FEISTEL_ROUNDS + 1,), jnp.uint32),
        in_axes=(None, 0)))(clients, epoch)                                           # [n, S, rounds + 1]
    q = feistel_permutation(jnp.where(live, pos, 0), jnp.maximum(m, 1)[:, None, None], words[..., None, :-1])
    table = index[clients]
    order = jnp.take_along_axis(table, jnp.minimum(q, table.shape[1] - 1).reshape(q.shape[0], -1), axis=1)
    order = jnp.where(live, order.reshape(q.shape), table[:, :1, None])
    if augment:
        from strike_jax.data import augment as augment_lib

        coin = _mix32(_mix32(pos.astype(jnp.uint32) ^ words[..., -1:]))
        order = augment_lib.mark(order, live & ((coin >> 31) == 1))
    sizes = jnp.clip(m[:, None] - batch * B, 0, B)
    steps = local_step_counts(m, B, 1, S)
    return ClientBatches(clients, m, steps.astype(jnp.int32), order.astype(jnp.int32), sizes.astype(jnp.int32))


def padded_schedule(cb: ClientBatches, *, batch_size: int, num_steps: int,
                    slots: int | None = None) -> tuple[Array, Array]:
    """The classic per-client layout: `(batch_idx [n, S, B], batch_mask [n, S, B])`, client `j`'s real
    steps first (`S >= max_j s_j`), then fully masked padding steps (for the per-client strategies).
    `slots`: a step's batch slots instead of `B` (fewer only when every client holds at most
    `slots` samples, `batch_slots`)."""
    k = jnp.arange(num_steps)
    return jax.vmap(lambda o, m, z, s: _client_batch(o, m, z, s, k, batch_size, slots))(
        cb.order, cb.counts, cb.sizes, cb.steps)


def batch_slots(batch_size: int, max_samples_per_client: int) -> int:
    """Slots a step's batch needs: `B`, or fewer when no client holds `B` samples (then every
    client's epoch is one batch of at most `max_samples_per_client` real examples, and the other
    slots would be masked work: 10,000 IID clients of 6 Fashion-MNIST images with B = 64 spend 90%
    of every step on masked slots). A power of two, so that similar partitions share programs."""
    need = 1 << max(0, int(max_samples_per_client) - 1).bit_length()
    return int(max(1, min(int(batch_size), need)))


def _step_batch(order: Array, m: Array, s: Array, k: Array, batch_size: int,
                slots: int | None = None) -> tuple[Array, Array]:
    """Batches of real steps `k` (any shape) of one client: `order [E, W]`, `m` samples, `s` steps.
    Returns `(idx [..., slots], mask [..., slots])` (`slots` defaults to `B`; fewer slots are only
    valid when `m <= slots`, see `batch_slots`); steps `k >= s` are fully masked."""
    slots = batch_size if slots is None else slots
    per_epoch = jnp.maximum(-(-m // batch_size), 1)
    e = jnp.clip(k // per_epoch, 0, order.shape[0] - 1)
    pos = (k % per_epoch)[..., None] * batch_size + jnp.arange(slots)
    idx = order[e[..., None], jnp.minimum(pos, order.shape[1] - 1)]
    mask = (pos < m) & (k < s)[..., None]
    return idx, mask


def _client_batch(order: Array, m: Array, sizes: Array | None, s: Array, k: Array, batch_size: int,
                  slots: int | None) -> tuple[Array, Array]:
    """One client's batches of steps `k`: from its epoch orders (`_step_batch`), or from its
    per-step rows when `sizes` is given (`stream_orders`, `_stream_step_batch`)."""
    if sizes is None:
        return _step_batch(order, m, s, k, batch_size, slots)
    return _stream_step_batch(order, sizes, s, k, slots)


def _stream_step_batch(order: Array, sizes: Array, s: Array, k: Array, slots: int | None = None
                       ) -> tuple[Array, Array]:
    """`_step_batch` for `stream_orders`' rows (`order [s, B]`, `sizes [s]`): row `k` is step `k`'s
    batch (its real samples first, at most `slots` of them, `batch_slots`)."""
    slots = order.shape[1] if slots is None else slots
    kk = jnp.clip(k, 0, order.shape[0] - 1)
    pos = jnp.arange(slots)
    idx = order[kk[..., None], pos]
    mask = (pos < sizes[kk][..., None]) & (k < s)[..., None]
    return idx, mask


# ---------------------------------------------------------------------------------------------
# Lanes


class LanePlan(NamedTuple):
    """Which client each lane trains at each of its `T` steps (`n` = idle).

    Attributes:
      slot: `[T, L]` int32 row of `U` (position in the sampled list) the lane works for, `n` if idle.
      step: `[T, L]` int32 the client's real step index at that time.
      first: `[T, L]` bool, the client's first step (the lane restarts from the global model).
      last: `[T, L]` bool, the client's last step (its update is written to `U[slot]`).
    """

    slot: Array
    step: Array
    first: Array
    last: Array


def pack_lanes(steps: Array, num_lanes: int, num_steps: int) -> tuple[LanePlan, Array]:
    """Packs clients' step counts into `L` lanes of `T` steps, longest first to the least-loaded lane.

    Args:
      steps: `[n]` int real steps per client (may be traced).
      num_lanes: L (static).
      num_steps: T (static); must be at least the packing's makespan (see `lane_makespan`).

    Returns:
      `(LanePlan, makespan)`; `makespan` (int32 scalar) is the longest lane's load. Clients that do
      not fit in `T` are silently cut: callers size `T` with `lane_makespan` on the same inputs.
    """
    n = steps.shape[0]
    lane, start, makespan = _lpt(steps, num_lanes)
    t = jnp.arange(num_steps)
    # Mark each client's start on its lane's timeline, then forward-fill: at time t a lane works for
    # the client that started most recently on it.
    marker = jnp.full((num_lanes, num_steps + 1), -1, jnp.int32)
    owner = jnp.full((num_lanes, num_steps + 1), n, jnp.int32)
    live = steps > 0
    at = jnp.where(live, start, num_steps)  # empty clients write to the spare column
    marker = marker.at[lane, at].set(jnp.where(live, start, -1), mode="drop")
    owner = owner.at[lane, at].set(jnp.where(live, jnp.arange(n, dtype=jnp.int32), n), mode="drop")
    began = jax.lax.cummax(marker[:, :num_steps], axis=1)                       # [L, T]
    slot = jnp.take_along_axis(owner, jnp.maximum(began, 0), axis=1)
    k = t[None, :] - began
    s_of = jnp.where(slot < n, steps[jnp.minimum(slot, n - 1)], 0)
    busy = (began >= 0) & (k < s_of)
    slot = jnp.where(busy, slot, n)
    k = jnp.where(busy, k, 0)
    plan = LanePlan(slot=slot.T, step=k.T.astype(jnp.int32), first=(busy & (k == 0)).T,
                    last=(busy & (k == s_of - 1)).T)
    return plan, makespan


def _lpt(steps: Array, num_lanes: int) -> tuple[Array, Array, Array]:
    """Longest-processing-time-first assignment: `(lane [n], start [n], makespan)`."""
    n = steps.shape[0]
    order = jnp.argsort(-steps.astype(jnp.int32), stable=True)

    def put(i, carry):
        lane, start, load = carry
        j = order[i]
        least = jnp.argmin(load)
        return lane.at[j].set(least), start.at[j].set(load[least]), load.at[least].add(steps[j])

    lane, start, load = jax.lax.fori_loop(
        0, n, put, (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32), jnp.zeros((num_lanes,), jnp.int32)))
    return lane, start, load.max()


def lpt_makespan(steps: Array, num_lanes: int) -> Array:
    """The longest lane's load when `pack_lanes` packs `steps` (`[n]`, may be traced) into `num_lanes`."""
    return _lpt(steps, num_lanes)[2]


def lane_makespan(steps: np.ndarray, num_lanes: int) -> int:
    """Host version of the packing's longest lane (same LPT rule as `pack_lanes`), for sizing `T`."""
    steps = np.asarray(steps, np.int64)
    load = np.zeros(num_lanes, np.int64)
    for j in np.argsort(-steps, kind="stable"):
        load[int(np.argmin(load))] += steps[j]
    return int(load.max()) if steps.size else 0


def lane_schedule(cb: ClientBatches, *, lanes: int, lane_steps: int, batch_size: int,
                  slots: int | None = None) -> tuple[LanePlan, Array, Array, Array]:
    """The packed layout of a round's plan: `pack_lanes` of the clients' steps into `lanes` lanes of
    `lane_steps` steps, and each lane step's batch (`lane_batches`).

    Returns:
      `(plan, makespan, idx [T, L, S], mask [T, L, S])`; `makespan > lane_steps` means clients were
      cut (callers size `lane_steps` with `lane_makespan` / `training.choose_lanes`).
    """
    plan, makespan = pack_lanes(cb.steps, lanes, lane_steps)
    idx, mask = lane_batches(cb, plan, batch_size=batch_size, slots=slots)
    return plan, makespan, idx, mask


def lane_batches(cb: ClientBatches, plan: LanePlan, *, batch_size: int,
                 slots: int | None = None) -> tuple[Array, Array]:
    """`(idx [T, L, S], mask [T, L, S])`: the batch each lane trains on at each step (idle: masked).
    `S = slots` (default `B`; fewer only when every client holds at most `slots` samples,
    `batch_slots`): the same real examples, in the same order, in fewer masked slots."""
    n = cb.clients.shape[0]
    j = jnp.minimum(plan.slot, n - 1)
    sizes = cb.sizes

    def one(jj, kk):
        return _client_batch(cb.order[jj], cb.counts[jj], None if sizes is None else sizes[jj], cb.steps[jj], kk,
                             batch_size, slots)

    idx, mask = jax.vmap(jax.vmap(one))(j, plan.step)
    return idx, mask & (plan.slot < n)[..., None]

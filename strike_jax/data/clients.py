"""Device-ready client data: a padded index table into the shared training arrays (SPEC §3).

Layout and its cost
-------------------
Images are never copied per client. Every client is a row of one index table into the shared
`x_train`/`y_train`:

* `ClientData.index`: `[num_clients, max_m]` int32, padded with 0 -> `num_clients * max_m * 4`
  bytes (FEMNIST, 3,597 writers x ~470 samples: ~7 MB; Fashion-MNIST over 1,000 Dirichlet(0.5)
  clients: see `experiments/results/bench_data.md`).
* A round's batches are drawn from this table on the device, from `(seed, round)`:
  `strike_jax.training.schedule` is the one definition of client `c`'s batches in round `t`
  (`client_batches`; its per-client layout `padded_schedule` is `batch_idx [n, S, B]` int32 plus
  `batch_mask [n, S, B]` bool -> `n * S * B * 5` bytes, `schedule_nbytes`; 50 clients x 30 steps
  x 128: ~1 MB). Training gathers `x_train[batch_idx]` on the device, one step at a time.

`S = E * ceil(max_i m_i / B)` is fixed by the partition, so the schedule's shape, and hence every
jitted training function, is the same in every round.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from strike_jax.data.partition import Partition

__all__ = [
    "ClientData",
    "make_client_data",
    "schedule_nbytes",
]


class ClientData(NamedTuple):
    """Host-side (NumPy) client table; see the module docstring for the layout.

    Attributes:
      index: `[num_clients, max_m]` int32 indices into the shared training arrays, padded with 0.
      counts: `[num_clients]` int32 sample counts `m_i`.
      batch_size: `B`.
      num_steps: `S = local_epochs * ceil(max_i m_i / B)`, the same in every round.
      local_epochs: `E` (SPEC §2: 1).
    """

    index: np.ndarray  # type: ignore[assignment]  # a field named like tuple.index(): mypy sees an override; the name is public API
    counts: np.ndarray
    batch_size: int
    num_steps: int
    local_epochs: int = 1

    @property
    def num_clients(self) -> int:
        return int(self.counts.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        return self.num_steps // self.local_epochs

    def real_steps(self) -> np.ndarray:
        """`[num_clients]` int32: steps with at least one real example (`E * ceil(m_i / B)`)."""
        return (self.local_epochs * -(-self.counts // self.batch_size)).astype(np.int32)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def make_client_data(partition: Partition | Sequence[np.ndarray], batch_size: int, local_epochs: int = 1) -> ClientData:
    """Turn a partition into the padded index table.

    Args:
      partition: a `Partition` (or a sequence of per-client index arrays).
      batch_size: `B >= 1`.
      local_epochs: `E >= 1`.

    Returns:
      `ClientData`. An empty client (possible only with `dirichlet(min_size=0)`) gets no steps
      (`training.schedule.client_batches`).

    Raises:
      ValueError: `batch_size < 1`, `local_epochs < 1`, no clients, negative or >= 2**31 indices.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    local_epochs = _check_int("local_epochs", local_epochs, 1)
    parts = partition.indices if isinstance(partition, Partition) else tuple(partition)
    if len(parts) == 0:
        raise ValueError("make_client_data: the partition has no clients.")
    counts = np.array([np.size(a) for a in parts], dtype=np.int64)
    max_m = int(counts.max())
    if max_m == 0:
        raise ValueError("make_client_data: every client is empty.")
    index = np.zeros((len(parts), max_m), np.int32)
    for i, a in enumerate(parts):
        a = np.asarray(a)
        if a.size and (a.min() < 0 or a.max() >= 2**31):
            raise ValueError(f"make_client_data: client {i} has indices outside [0, 2**31).")
        index[i, : a.size] = a
    steps = local_epochs * (-(-max_m // batch_size))
    return ClientData(index=index, counts=counts.astype(np.int32), batch_size=batch_size,
                      num_steps=steps, local_epochs=local_epochs)


def schedule_nbytes(n: int, client_data: ClientData) -> int:
    """Bytes of one round's per-client schedule (`training.schedule.padded_schedule`) for `n`
    clients: `n * S * B * (4 + 1)`."""
    return int(n) * client_data.num_steps * client_data.batch_size * 5

"""Running one simulation across processes (hosts) with JAX's own runtime (`jax.distributed`).

Every process runs the same program on the same config: `initialize` connects them, after which
`jax.devices()` lists every process's devices, and a config with `num_devices = jax.device_count()`
spreads each round's clients over all of them (`strike_jax.training.round.make_device_train`: a
`jax.sharding.Mesh` across processes, `shard_map` for local training, XLA's partitioner for the
server step). Every process loads the data and derives the plan itself (both are functions of the
config), holds the replicated state, and reads the same metrics; only process 0 writes run files.
There is no scheduler of our own: collectives go through JAX (Gloo between CPU processes, NCCL
between GPUs).

    # on every host (process_id 0 .. K-1), the same command:
    strike-jax run --preset fashion_mnist --num-devices 8 \\
        --coordinator 10.0.0.1:12345 --num-processes 2 --process-id $ID

On one machine (CPU processes talking over loopback) this is what `tests/test_sharding.py` runs.
"""

from __future__ import annotations

import jax


def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               cpu_devices: int | None = None, timeout_s: int = 300) -> None:
    """Connects this process to the others (`jax.distributed.initialize`); call it first, before any
    jax computation.

    Args:
      coordinator_address: `host:port` of process 0 (every process passes the same).
      num_processes: K, the processes taking part.
      process_id: this process, `0 <= process_id < K`.
      cpu_devices: on CPU, devices this process exposes (`jax_num_cpu_devices`; default 1). Ignored
        by accelerator back-ends, whose devices are the local chips.
      timeout_s: how long to wait for the other processes.

    Raises:
      ValueError: a bad process count or id, or a coordinator address without a port (one line).
    """
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes={num_processes!r} is not allowed; allowed: an int >= 1.")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise ValueError(f"process_id={process_id!r} is not allowed; allowed: 0 .. {num_processes - 1}.")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address={coordinator_address!r} is not allowed; allowed: 'host:port'.")
    if cpu_devices is not None:
        if not (isinstance(cpu_devices, int) and cpu_devices >= 1):
            raise ValueError(f"cpu_devices={cpu_devices!r} is not allowed; allowed: an int >= 1.")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    # CPU processes exchange collectives through Gloo (the default in recent jax; set for older ones).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)


def is_main_process() -> bool:
    """True in process 0 (the one that writes files and prints)."""
    return jax.process_index() == 0


__all__ = ["initialize", "is_main_process"]

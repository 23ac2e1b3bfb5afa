"""Devices: the mesh the clients are spread over, placement, host transfer, and `jax.distributed`.

One device: nothing here is used. Several devices (`Config.num_devices`): a 1-d
`jax.sharding.Mesh` over the clients (`make_mesh`), local training under `shard_map`
(`training.round.make_device_train`), the server step on the row-sharded `[n, d]` matrix through
XLA's partitioner (`server.make_device_server`, layout "rows" by default: measured at n = 10,000 on
4 host devices, 8.6 s a round vs 34.6 s gathered; experiments/bench_scale.py).

Several processes (hosts) run one simulation with JAX's own runtime (`jax.distributed`): every
process runs the same program on the same config; `initialize` connects them, after which
`jax.devices()` lists every process's devices, and a config with `num_devices = jax.device_count()`
spreads each round's clients over all of them. Every process loads the data and derives the plan
itself (both are functions of the config), holds the replicated state, and reads the same metrics;
only process 0 writes run files (`writes_files`). Collectives go through JAX (Gloo between CPU
processes, NCCL between GPUs).

    # on every host (process_id 0 .. K-1), the same command:
    strike-jax run --preset fashion_mnist --num-devices 8 \\
        --coordinator 10.0.0.1:12345 --num-processes 2 --process-id $ID

On one machine (CPU processes talking over loopback) this is what `tests/test_sharding.py` runs.
"""

from __future__ import annotations

import jax
import numpy as np

from strike_jax.errors import InputError

#: The mesh axis the clients (rows of the update matrix) are spread over.
CLIENTS_AXIS = "clients"
#: How the server half lays out the `[R, n, d]` matrix on a mesh (`server.make_device_server`).
SERVER_LAYOUTS = ("rows", "columns", "replicated")


def make_mesh(num_devices: int, devices=None):
    """A 1-d `jax.sharding.Mesh` over the first `num_devices` of `devices` (default `jax.devices()`,
    every process's devices under `jax.distributed`), axis `CLIENTS_AXIS`.

    Raises:
      ValueError: fewer devices than asked (one line naming how to get more).
    """
    from jax.sharding import Mesh

    devices = jax.devices() if devices is None else list(devices)
    if not (isinstance(num_devices, int) and 1 <= num_devices <= len(devices)):
        raise InputError(
            f"num_devices={num_devices!r} is not allowed; allowed: 1 .. {len(devices)} (the devices jax sees: "
            f"{len(devices)} {devices[0].platform}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before jax is imported; across hosts call strike_jax.sharding.initialize first).")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise InputError(f"num_devices={num_devices} is not allowed under jax.distributed with "
                         f"{jax.process_count()} processes; allowed: all {len(devices)} devices (every process "
                         "must hold part of the mesh).")
    return Mesh(np.asarray(devices[:num_devices]), (CLIENTS_AXIS,))


def replicated(mesh):
    """The `NamedSharding` of an array held whole by every device of `mesh`."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def put_replicated(mesh, x):
    """A host array placed whole on every device of `mesh` (a global array under jax.distributed:
    every process passes the same value)."""
    return jax.device_put(np.asarray(x), replicated(mesh))


def to_host(tree):
    """Host (NumPy) copies of device arrays; arrays spread over several processes
    (`jax.distributed`) are gathered (every process must call this at the same point)."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, tree)


def writes_files() -> bool:
    """Only the first process writes run files under `jax.distributed` (they all hold the same values)."""
    return jax.process_index() == 0


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
        raise InputError(f"num_processes={num_processes!r} is not allowed; allowed: an int >= 1.")
    if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
        raise InputError(f"process_id={process_id!r} is not allowed; allowed: 0 .. {num_processes - 1}.")
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"coordinator_address={coordinator_address!r} is not allowed; allowed: 'host:port'.")
    if cpu_devices is not None:
        if not (isinstance(cpu_devices, int) and cpu_devices >= 1):
            raise InputError(f"cpu_devices={cpu_devices!r} is not allowed; allowed: an int >= 1.")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    # CPU processes exchange collectives through Gloo (the default in recent jax; set for older ones).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)


def is_main_process() -> bool:
    """True in process 0 (the one that writes files and prints)."""
    return jax.process_index() == 0


__all__ = ["CLIENTS_AXIS", "SERVER_LAYOUTS", "initialize", "is_main_process", "make_mesh", "put_replicated",
           "replicated", "to_host", "writes_files"]

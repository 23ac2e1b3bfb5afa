"""`Settings`: the knobs of the simulation engine that are not part of an experiment's config.

A `Config` says what to simulate (and fixes its numbers); `Settings` says how the engine runs it on
this machine: how the server lays out a sharded matrix, how many runs share a batch on a CPU, how
far ahead lanes are planned. None of them changes a run's numbers beyond float rounding, so none is
part of a run's identity. Pass `settings=` to `simulate`/`simulate_many`; `DEFAULT` is used
otherwise.
"""

from __future__ import annotations

import dataclasses

from strike_jax import sharding
from strike_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the engine runs (see the module docstring).

    Attributes:
      server_layout: how the server step lays out the row-sharded `[R, n, d]` matrix with several
        devices: "rows", "columns" or "replicated" (`server.make_device_server`; "rows" measured
        fastest at n = 10,000 on 4 host devices, experiments/bench_scale.py).
      cpu_batch_bytes: on a CPU, runs share a batch only while their update matrices total this
        many bytes (`R n d` floats). Measured on the 2-core development CPU (experiments/bench_sweep.py
        and a 4-round check, quiet machine): digits MLP (n d = 0.7 MiB a run), 8 runs batched took
        0.007 s a round per run vs 0.010 s one after another; Fashion-MNIST MLP (19 MiB a run),
        0.65 s vs 0.48 s. Runs that do not share a batch still share the compiled programs.
      plan_horizon: under partial participation, lanes are sized for the worst of the first
        `max(rounds, plan_horizon)` rounds (so the lane length does not depend on `rounds`) ...
      plan_budget: ... while the plan's sampled client-rounds stay below this (the planning is a
        host-side packing per round); beyond, fewer rounds choose the lanes and the lanes'
        capacity is the packing's worst case over any sample.
      compile_ahead: compile the next batch's programs on a background thread while the current
        batch runs (XLA compiles off the Python thread), and the first batch's training, server
        and evaluation programs concurrently.
      time_halves: wait for each half of a device round (training, server) and record their times
        in the history (`time_train_s`, `time_server_s`); costs the overlap of the two halves (for
        benchmarks).
    """

    server_layout: str = "rows"
    cpu_batch_bytes: int = 8 << 20
    plan_horizon: int = 1000
    plan_budget: int = 200_000
    compile_ahead: bool = True
    time_halves: bool = False

    def __post_init__(self):
        if self.server_layout not in sharding.SERVER_LAYOUTS:
            raise InputError(f"server_layout={self.server_layout!r} is not allowed; allowed: "
                             f"{', '.join(map(repr, sharding.SERVER_LAYOUTS))}.")
        for name in ("cpu_batch_bytes", "plan_horizon", "plan_budget"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"Settings {name}={v!r} is not allowed; allowed: an int >= 1.")


DEFAULT = Settings()

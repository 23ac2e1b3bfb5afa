"""Subprocess worker of tests/test_sharding.py: runs small simulations and prints their metrics as
one JSON line. Not a test module (no `test_` prefix): it must run in a fresh interpreter, because
the host device count (`XLA_FLAGS`) and `jax.distributed` are fixed when jax starts.

    python tests/sharding_worker.py CONFIGS_JSON NUM_DEVICES[,NUM_DEVICES...] [COORD PROCS ID]

CONFIGS_JSON: {name: Config fields, plus optional "layout" (the server's, `simulation.Settings.server_layout`)
and "devices" (the device counts to run this one with, instead of NUM_DEVICES)}.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The per-round numbers compared between layouts.
KEYS = ("n", "num_byzantine", "aggregate_norm", "dist_to_honest_mean", "cos_to_honest_mean", "train_loss",
        "accuracy", "loss")


def main(argv):
    configs, devices = json.loads(argv[0]), [int(x) for x in argv[1].split(",")]
    if len(argv) > 2:  # a multi-process run: connect before any jax computation
        from strike_jax import distributed

        distributed.initialize(argv[2], int(argv[3]), int(argv[4]), cpu_devices=1, timeout_s=120)
    import jax

    from strike_jax import simulation
    from strike_jax.config import Config

    out = {}
    for name, kw in configs.items():
        layout = kw.pop("layout", "rows")
        settings = simulation.Settings(server_layout=layout)
        for D in kw.pop("devices", devices):
            r = simulation.simulate(Config(**kw, num_devices=D), settings=settings)
            out[f"{name}/{D}/{layout}"] = [{k: h.get(k) for k in KEYS} for h in r["rounds"]]
    # Which server programs were compiled, by (devices, layout): the column layout must be a program
    # of its own, not the rows one reused from the cache.
    out["server_programs"] = sorted({f"{len(k.mesh or (0,))}/{k.layout}" for k in simulation.PROGRAMS.compiled_keys()
                                     if k.kind == "server"})
    if jax.process_index() == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])

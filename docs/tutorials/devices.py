"""Tutorial (e): runs spread over several devices.

`Config(num_devices=k)` splits a batch of runs over `k` devices (GPUs, or CPU host devices). On a
CPU, XLA shows one device unless told otherwise before JAX starts, so this script sets
`XLA_FLAGS=--xla_force_host_platform_device_count=2` first (in a notebook: restart the kernel, or
run it as a script like this one). Run: `python docs/tutorials/devices.py`.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before JAX is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import jax  # noqa: E402

from strike_jax import preset, simulate_many  # noqa: E402

print("devices:", jax.devices())
assert jax.device_count() >= 2, "XLA_FLAGS must be set before jax is imported"

# Four seeds of one setting: a batch of 4 runs, 2 per device.
configs = [preset("digits", attack="lie", defence="median", rounds=2, seed=s, num_devices=2) for s in range(4)]
results = simulate_many(configs)
for cfg, res in zip(configs, results):
    print(f"seed {cfg.seed}: best accuracy {res['best_accuracy']:.3f}")

# A run's history does not depend on its batch or on the devices: the same config alone on one
# device gives the same numbers up to float32 rounding (tests/test_sharding.py checks it).

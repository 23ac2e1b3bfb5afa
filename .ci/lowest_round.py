"""CI: on the environment `uv pip install --resolution lowest-direct -e .` made, checks that every core
dependency is installed at exactly its pyproject.toml floor, then imports strike_jax and runs a
two-round simulation on the embedded digits data (a few seconds)."""

import os
import re
from importlib.metadata import version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml")) as fh:
    block = re.search(r"^dependencies = \[(.*?)^\]", fh.read(), re.M | re.S)[1]
floors = dict(re.findall(r'^\s*"([A-Za-z0-9_.-]+)>=([0-9.]+)"', block, re.M))
assert {"jax", "flax", "optax", "chex", "numpy"} <= set(floors), floors


def norm(v):
    return tuple(int(p) for p in v.split("."))


def padded(v, n=3):
    t = norm(v)
    return t + (0,) * (n - len(t))


wrong = {name: (version(name), floor) for name, floor in floors.items() if padded(version(name)) != padded(floor)}
assert not wrong, f"not at their floors (installed, floor): {wrong}"
assert version("jaxlib") == version("jax"), (version("jaxlib"), version("jax"))

import strike_jax  # noqa: E402

result = strike_jax.simulate(strike_jax.Config(dataset="digits", model="mlp", num_clients=6, clients_per_round=6,
                                               rounds=2, batch_size=32, attack="lie", defence="median"))
assert result["completed_rounds"] == 2 and 0.0 < result["rounds"][-1]["accuracy"] <= 1.0, result["rounds"]
print("lowest versions OK: " + ", ".join(f"{n} {version(n)}" for n in sorted(floors) + ["jaxlib"])
      + f"; 2 rounds, accuracy {result['rounds'][-1]['accuracy']:.3f}")

"""Tutorial (c): your own flax model on your own arrays, with your own rule, in a simulation.

`data.from_arrays` turns NHWC arrays into the library's `Dataset` (partitions work on it),
`models.from_flax` turns a flax module into a `ModelSpec`, `stages.from_function` a function into
a rule. Registered by name (`strike_jax.register`), they are used by `Config` like the built-in
ones; `fingerprint` identifies each by content for a result to record.
Run: `python docs/tutorials/own_model_data.py`.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

import strike_jax
from strike_jax import Config, data, models, stages

# 1. Data: 10 classes of 6x6 grey images (here generated; any NHWC array with int labels works).
rng = np.random.default_rng(0)
templates = rng.standard_normal((10, 6, 6, 1))
y = rng.integers(0, 10, 1200)
x = (templates[y] + 0.5 * rng.standard_normal((1200, 6, 6, 1))).astype(np.float32)
ds = data.from_arrays(x[:1000], y[:1000], x[1000:], y[1000:], name="my_shapes")
print(ds.summary())


# 2. Model: any flax linen module called as module(x) or module(x, train=..., mask=...).
class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


model = models.from_flax(TinyCNN(), input_shape=(6, 6, 1), num_classes=10, name="my_tiny_cnn")
print("parameters:", models.num_params(model))


# 3. Rule: the coordinate-wise median of the rows closest to the coordinate-wise median.
def median_of_closest(U, f):
    med = jnp.median(U, axis=0)
    dist = jnp.linalg.norm(U - med, axis=1)
    keep = jnp.argsort(dist) < U.shape[0] - f  # rank < n - f
    return jnp.sum(jnp.where(keep[:, None], U, 0.0), axis=0) / keep.sum()


rule = stages.from_function(median_of_closest, kind="rule", name="my_closest", max_f=lambda n: (n - 1) // 2)

for obj in (ds, model, rule):
    strike_jax.register(obj)  # registering the same object again is a no-op
    print(f"registered {obj.name!r}: fingerprint {strike_jax.fingerprint(obj)}")

# 4. Simulate by name: 10 clients, 2 of them running the library's LIE attack.
config = Config(dataset="my_shapes", model="my_tiny_cnn", defence="my_closest", attack="lie",
                num_clients=10, clients_per_round=10, byzantine_ratio=0.2, rounds=3, batch_size=32,
                partition="dirichlet", beta=1.0, root_samples=10)
result = strike_jax.simulate(config)
for r in result["rounds"]:
    print(f"round {r['round']}: accuracy {r['accuracy']:.3f}, loss {r['loss']:.3f}")
assert result["finished"]

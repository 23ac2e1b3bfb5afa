"""Tutorial (d): a robust rule inside an ordinary optax training loop.

Per-client gradients (a leading client axis on every leaf of the parameter pytree) go through
`optax.experimental.aggregating.process(preprocessor, aggregator, optimizer)`; the library gives
the aggregator (`strike_jax.optax.aggregator`) and, optionally, a pre-aggregator or an attack for
the preprocessor slot. Here 2 of 8 clients send sign-flipped, scaled gradients: the mean diverges
from the honest direction, the median does not. Run: `python docs/tutorials/optax_loop.py`.
"""

import flax.linen as nn
import jax
import numpy as np
import optax
from optax.experimental import aggregating

from strike_jax import optax as sj_optax
from strike_jax import stages

N, F, BATCH = 8, 2, 32


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


rng = np.random.default_rng(0)
centres = rng.standard_normal((3, 5)) * 2
y = rng.integers(0, 3, (N, BATCH))
x = (centres[y] + rng.standard_normal((N, BATCH, 5))).astype(np.float32)
params0 = Net().init(jax.random.PRNGKey(0), x[0])["params"]


def loss(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(Net().apply({"params": params}, xb), yb).mean()


per_client_grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))
# The Byzantine clients (the first F rows) send -10 times their gradient.
flip = stages.from_function(lambda U, mask: -10.0 * U, kind="attack", name="flip10")


def train(rule, steps=30):
    opt = aggregating.process(
        sj_optax.attack(flip, f=F),            # Byzantine rows injected in the same chain
        sj_optax.aggregator(rule, f=F),        # the robust rule (f and any key live in its state)
        optax.sgd(0.1),
    )
    state = opt.init(params0)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(per_client_grads(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    params = params0
    for _ in range(steps):
        params, state = step(params, state)
    return float(jax.vmap(loss, in_axes=(None, 0, 0))(params, x, y).mean())


losses = {rule: train(rule) for rule in ("mean", "median")}
for rule, value in losses.items():
    print(f"{rule:>7}: training loss after 30 steps under attack = {value:.3g}")
assert losses["median"] < 1.0 < losses["mean"]

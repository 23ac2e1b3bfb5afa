"""Tutorial (a): your own aggregation rule, its empirical kappa and its rows' influence.

A rule is a function of the round's `[n, d]` update matrix. `stages.from_function` makes it a
stage the library can simulate, attack and analyse; `empirical_kappa` searches Byzantine rows
maximising its (f, kappa) ratio (Definition 1 of the paper) and `influence` measures how much
each row moves its output. Run: `python docs/tutorials/own_rule.py`.
"""

import jax
import jax.numpy as jnp

from strike_jax import analysis, registry, stages


# 1. The rule: a coordinate-wise trimmed mean dropping the f largest and f smallest values.
#    `f` arrives as an int32 scalar (traced in a vectorised simulation): no Python branching on it.
def trimmed_mean(U, f):
    n = U.shape[0]
    keep = (jnp.arange(n) >= f) & (jnp.arange(n) < n - f)
    return (jnp.sort(U, axis=0) * keep[:, None]).sum(axis=0) / keep.sum()


rule = stages.from_function(trimmed_mean, kind="rule", name="my_trimmed_mean", max_f=lambda n: (n - 1) // 2)
registry.register_stage(rule)  # now Config(defence="my_trimmed_mean") and stages.get find it
print("registered:", stages.get("rule", "my_trimmed_mean").name, "fingerprint", registry.fingerprint(rule))

# 2. Its empirical kappa for n = 10 rows, f = 2 of them Byzantine.
key = jax.random.PRNGKey(0)
honest = jax.random.normal(key, (8, 16))
# (Restarts from two of the library's attacks and two random ones; the default starts from all of them.)
kappa = analysis.empirical_kappa(rule, honest, 2, key=key, steps=20, restarts=2, attacks=("lie", "ipm"), probe=False)
print(f"empirical kappa of my_trimmed_mean (n=10, f=2): {kappa.kappa_found:.3f}; "
      f"the library's trmean: theoretical bound {analysis.theoretical_kappa('trmean', 10, 2)}")
mean_kappa = analysis.empirical_kappa(stages.get("rule", "mean"), honest, 2, key=key, steps=20, restarts=2,
                                      attacks=("lie", "ipm"), probe=False)
print(f"the mean, for comparison: {mean_kappa.kappa_found:.3g} (it has no finite kappa)")
assert kappa.kappa_found < mean_kappa.kappa_found

# 3. Influence: each row's effective weight in the aggregate, on a matrix whose 2 Byzantine rows
#    (the first ones) are the rows the search found.
U = jnp.concatenate([jnp.asarray(kappa.byzantine), honest])
inf = analysis.influence(rule, U, f=2, key=key)
print("per-row sensitivity:", jnp.round(inf.sensitivity, 3))
print(f"Byzantine share of the deviation: {float(inf.byzantine_share):.3f}, counterfactual share: "
      f"{float(inf.counterfactual_share):.3f}")

"""Tutorial (b): a nu x f x seed sweep of STRIKE against the median, and its plot.

`simulate_many` runs configs that differ only in numbers (STRIKE's `nu`, the Byzantine ratio, the
seed) as one batch: one compiled round for all of them. Each result's best test accuracy is the
paper's table cell (lower = stronger attack). Run: `python docs/tutorials/sweep_plot.py [OUT_DIR]`
(the figure goes to OUT_DIR, default a temporary directory).
"""

import itertools
import os
import sys
import tempfile

import numpy as np

from strike_jax import preset, simulate_many

NUS = (0.5, 2.0)
RATIOS = (0.1, 0.2)  # f = 2 and 4 of the 20 digits clients
SEEDS = (0, 1)
ROUNDS = 3  # the paper runs hundreds; a few keep the tutorial fast

configs = [preset("digits", attack="strike", attack_params={"nu": nu}, defence="median", byzantine_ratio=r,
                  seed=s, rounds=ROUNDS)
           for nu, r, s in itertools.product(NUS, RATIOS, SEEDS)]
results = simulate_many(configs)
acc = np.array([res["best_accuracy"] for res in results]).reshape(len(NUS), len(RATIOS), len(SEEDS))

print("best accuracy, mean over seeds (rows: nu, columns: f):")
for i, nu in enumerate(NUS):
    print(f"  nu={nu:<4}", "  ".join(f"f={configs[0].replace(byzantine_ratio=r).num_byzantine}: "
                                     f"{acc[i, j].mean():.3f}" for j, r in enumerate(RATIOS)))

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # the plots extra: pip install 'strike_jax[plots]'
    plt = None
if plt is not None:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    fig, ax = plt.subplots(figsize=(4, 3))
    for j, r in enumerate(RATIOS):
        ax.errorbar(NUS, acc[:, j].mean(axis=1), yerr=acc[:, j].std(axis=1), marker="o", capsize=3,
                    label=f"f = {configs[0].replace(byzantine_ratio=r).num_byzantine}")
    ax.set_xlabel("STRIKE nu")
    ax.set_ylabel("best test accuracy")
    ax.set_title("STRIKE vs median, digits")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "sweep_nu_f.png")
    fig.savefig(path, dpi=100)
    print("figure:", path)

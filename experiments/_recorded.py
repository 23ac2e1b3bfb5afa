"""Update matrices of real rounds, recorded once and cached, for the analysis scripts
(`robustness_kappa.py`, `worst_nu.py`, `influence.py`), plus a synthetic skewed source.

A source is recorded with `strike_jax.simulate(config, on_updates=...)`: the callback receives every
round's honestly computed updates `[n, d]` and the Byzantine mask. The runs train under STRIKE
against the coordinate-wise median (a defence that keeps training sane), so later rounds come
from a model that has learnt something. The honest rows of the chosen round and the round's
Byzantine clients' own (honest) updates are kept in
`<cache>/<source>_r<round>.npz` (`honest [h, d]`, `own [f, d]`, `f`); a second call loads them.
"""

from __future__ import annotations

import os
import time

import numpy as np

from strike_jax.atomic import atomic_write

EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Local presets as the issue suggests: digits (20 clients, 4 Byzantine, MLP, d = 9,610) and
# Fashion-MNIST with the MLP (50 clients, 10 Byzantine, d = 101,770), 3 rounds each.
SOURCES = {
    "digits": dict(preset="digits", overrides=dict(rounds=3)),
    "fashion_mnist": dict(preset="fashion_mnist", overrides=dict(model="mlp", rounds=3)),
}
DEFAULT_ROUND = 2
CACHE = os.path.join(EXPERIMENTS_DIR, "runs", "recorded_updates")


class Round(dict):
    """`honest [h, d]`, `own [f, d]` (the Byzantine clients' honest updates), `f`, `source`, `round`."""


def record(source: str, rnd: int = DEFAULT_ROUND, cache: str = CACHE, quiet: bool = False) -> Round:
    """The honest rows (and the Byzantine clients' own updates) of round `rnd` of a source."""
    if source == "synthetic":
        return synthetic()
    if source not in SOURCES:
        raise SystemExit(f"unknown source {source!r}; allowed: synthetic, {', '.join(SOURCES)}")
    path = os.path.join(cache, f"{source}_r{rnd}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return Round(honest=z["honest"], own=z["own"], f=int(z["f"]), source=source, round=rnd)
    from strike_jax import config as config_lib
    from strike_jax import simulate

    spec = SOURCES[source]
    cfg = config_lib.preset(spec["preset"], **{**spec["overrides"], "rounds": max(spec["overrides"]["rounds"], rnd + 1),
                                               "attack": "strike", "defence": "median"})
    got = {}

    def grab(r, updates, byz, sent):
        if r == rnd:
            got["honest"] = np.asarray(updates[~byz], np.float32)
            got["own"] = np.asarray(updates[byz], np.float32)

    t0 = time.perf_counter()
    simulate(cfg, on_updates=grab, stop_after=rnd + 1)
    if not quiet:
        print(f"recorded {source} round {rnd}: honest {got['honest'].shape}, f={len(got['own'])} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    os.makedirs(cache, exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, honest=got["honest"], own=got["own"], f=len(got["own"])))
    return Round(honest=got["honest"], own=got["own"], f=len(got["own"]), source=source, round=rnd)


def synthetic(h: int = 16, d: int = 500, f: int = 4, seed: int = 0) -> Round:
    """Skewed synthetic updates: a common direction scaled by an exponential (heavy right tail:
    most rows near the base vector, a few far out, as Dirichlet-skewed clients) plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=d)
    direction = rng.normal(size=d)
    rows = base + rng.exponential(size=(h + f, 1)) * direction + 0.3 * rng.normal(size=(h + f, d))
    rows = (rows / np.sqrt(d)).astype(np.float32)
    return Round(honest=rows[:h], own=rows[h:], f=f, source="synthetic", round=0)

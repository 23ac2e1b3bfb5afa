"""The run directory (`strike_jax.simulation.store`): versioned checkpoints that refuse what they do
not hold, and a batch in which one run diverges while the others go on."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from strike_jax import simulate, simulate_many
from strike_jax.config import Config
from strike_jax.simulation import store


def tiny(**overrides) -> Config:
    base = dict(dataset="digits", model="mlp", num_clients=8, clients_per_round=8, rounds=3, batch_size=32,
                seed=0, strategy="packed", attack="lie", defence="median")
    base.update(overrides)
    return Config(**base)


def _checkpoint(tmp_path, cfg):
    run_dir = str(tmp_path / "run")
    simulate(cfg, run_dir=run_dir, stop_after=1, checkpoint_every=1)
    return run_dir, os.path.join(run_dir, store.CHECKPOINT)


def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
    cfg = tiny()
    run_dir, path = _checkpoint(tmp_path, cfg)
    with open(path, "wb") as fh:
        fh.write(b"not a checkpoint")
    with pytest.raises(store.CheckpointError) as e:
        simulate(cfg, run_dir=run_dir)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "corrupt" in msg


def test_checkpoint_of_another_state_or_format_is_refused(tmp_path):
    cfg = tiny(defence="cclip")  # a rule with a [d] state
    run_dir, path = _checkpoint(tmp_path, cfg)
    meta = store.read_checkpoint_meta(path)
    assert meta["format"] == store.CHECKPOINT_FORMAT and meta["strategy"] == "packed" and meta["lanes"] >= 1
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    # Another state: one leaf of another shape (e.g. a checkpoint written by other code).
    leaf = next(k for k in arrays if k.startswith("stage_") and arrays[k].size > 1)
    bad = dict(arrays, **{leaf: np.zeros(arrays[leaf].size + 1, arrays[leaf].dtype)})
    np.savez(path, **bad)
    with pytest.raises(store.CheckpointError, match="another state") as e:
        simulate(cfg, run_dir=run_dir)
    assert path in str(e.value) and "\n" not in str(e.value)
    # Another format version.
    meta["format"] = store.CHECKPOINT_FORMAT + 1
    np.savez(path, **dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8)))
    with pytest.raises(store.CheckpointError, match="format"):
        simulate(cfg, run_dir=run_dir)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    run_dir, path = _checkpoint(tmp_path, tiny())
    with pytest.raises(store.CheckpointError, match="another config"):
        simulate(tiny(seed=1), run_dir=run_dir)


def test_a_diverging_run_stops_while_its_batch_goes_on():
    ok, wild = tiny(rounds=4), tiny(rounds=4, lr=1e30)
    batched = simulate_many([ok, wild])
    assert [r["batch"]["runs"] for r in batched] == [2, 2]
    assert batched[1]["diverged"] and batched[1]["completed_rounds"] < 4
    assert not batched[0]["diverged"] and batched[0]["completed_rounds"] == 4
    alone = simulate(ok)
    for a, b in zip(batched[0]["rounds"], alone["rounds"]):
        np.testing.assert_allclose(a["aggregate_norm"], b["aggregate_norm"], rtol=1e-4)

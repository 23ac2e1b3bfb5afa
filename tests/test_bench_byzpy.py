"""`experiments/bench_aggregators.py --suite byzpy` without the peers installed: the strike_jax
rows run, the peer columns are reported as not run (never an exception), and the table renders."""

import sys

import numpy as np
import pytest

from experiments import bench_aggregators as B


def test_byzpy_suite_skips_peers_that_do_not_import(tmp_path, monkeypatch):
    # Small shapes instead of ByzPy's (the harness, not the timing, is under test).
    small = tuple(dict(w, n=8, d=64, f=1) for w in B.BYZPY_WORKLOADS if w["key"] in ("median", "lie", "cge"))
    monkeypatch.setattr(B, "BYZPY_WORKLOADS", small)
    payload = B.run_byzpy_suite(["median", "lie", "cge"], 1, sys.executable, [2], 5.0, str(tmp_path))
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch does not import" in payload["peer_error"]
        assert all(r["lib"] == "strike_jax" for r in payload["rows"])
    mine = {r["workload"]: r for r in payload["rows"] if r["lib"] == "strike_jax"}
    assert mine["median"]["status"] == "ok" and mine["lie"]["status"] == "ok"
    assert mine["cge"]["status"] == "no such rule in strike_jax"
    payload["meta"] = dict(command="test", date="-", machine="-", cpus=2, jax="-", repeats=1, timeout=5.0,
                           pool_workers=[2], load_start="-", load_end="-")
    text = B.byzpy_markdown(payload)
    assert "| Coordinate-wise Median" in text and "not run" in text


def test_byzpy_strike_callable_refuses_f_above_the_rules_limit():
    w = dict(B.BYZPY_WORKLOADS[0])  # MDA at n = 30, f = 10: C(30, 10) subsets
    assert w["key"] == "mda"
    with pytest.raises(ValueError, match="f=10 is not allowed"):
        B.byzpy_strike_callable(w)
    med = dict(next(w for w in B.BYZPY_WORKLOADS if w["key"] == "median"), n=5, d=3, f=1)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    import jax

    out = np.asarray(B.byzpy_strike_callable(med)(x, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(out, np.median(x, axis=0))

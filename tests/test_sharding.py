"""Sharded rounds (`Config.num_devices`, issue 13): the same run over 4 host devices, and over two
processes joined by `jax.distributed`, equals the one-device run within float32 tolerance.

Each case runs in a fresh interpreter (`tests/sharding_worker.py`): the host device count
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and `jax.distributed` are fixed when jax
starts, and the rest of the suite keeps one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from strike_jax.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "sharding_worker.py")
TINY = dict(dataset="digits", model="mlp", rounds=2, strategy="packed", eval_every=1, max_test_samples=50)
# Partial participation with 10 clients over 4 devices (uneven blocks: 3, 3, 3, 1 padded), STRIKE
# against a coordinate-wise rule in the server's row layout and in the column layout.
PARTIAL = dict(TINY, num_clients=20, clients_per_round=10, attack="strike", defence="median", byzantine_ratio=0.2,
               seed=3)
# A root set (FLTrust: 12 clients + the server's row = 13 trained rows) against a Gram-matrix rule.
ROOT_SET = dict(TINY, num_clients=12, clients_per_round=12, attack="lie", defence="fltrust", byzantine_ratio=0.25,
                seed=1, rounds=1)
# DSGD (issue 22): the workers' momenta [N, d] live in the replicated state, the rows come sharded.
DSGD = dict(TINY, num_clients=8, clients_per_round=6, attack="signflip", defence="trmean", byzantine_ratio=0.2,
            algorithm="dsgd", server_lr=0.5, lr_milestones=[1], seed=3)
# ... in the "epochs" batch order (every client every round; the device's block plans its own batches).
DSGD_EPOCHS = dict(DSGD, clients_per_round=8, batch_size=64, batch_order="epochs")


def _env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    return env


def _worker(configs: dict, devices: str, *extra: str, env: dict, timeout: float = 300) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKER, json.dumps(configs), devices, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _close(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["n"] == rb["n"] and ra["num_byzantine"] == rb["num_byzantine"]
        for k in ("aggregate_norm", "dist_to_honest_mean", "cos_to_honest_mean", "train_loss", "accuracy", "loss"):
            if ra[k] is None:
                assert rb[k] is None, k
                continue
            np.testing.assert_allclose(rb[k], ra[k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def four_devices():
    """One interpreter with 4 host devices runs every one-device and four-device case."""
    configs = {"partial": PARTIAL, "partial_columns": dict(PARTIAL, layout="columns", devices=[4]),
               "root": ROOT_SET, "dsgd": DSGD, "dsgd_epochs": DSGD_EPOCHS}
    return _result(_worker(configs, "1,4", env=_env(4)))


def test_four_host_devices_equal_one_device(four_devices):
    res = four_devices
    assert len(res) == 10
    # The rows and columns layouts on 4 devices are two programs (the program key holds the layout).
    assert {"4/rows", "4/columns"} <= set(res["server_programs"])
    _close(res["partial/1/rows"], res["partial/4/rows"])
    _close(res["root/1/rows"], res["root/4/rows"])
    _close(res["dsgd/1/rows"], res["dsgd/4/rows"])
    _close(res["dsgd_epochs/1/rows"], res["dsgd_epochs/4/rows"])
    # The server step partitioned along the coordinates (an all-to-all first) computes the same.
    _close(res["partial/1/rows"], res["partial_columns/4/columns"])


def test_two_processes_equal_one_process(four_devices):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [_worker({"partial": PARTIAL}, "2", f"127.0.0.1:{port}", "2", str(i), env=_env(1)) for i in range(2)]
    results = [_result(p) for p in procs]
    assert results[1] == {}  # only process 0 reports
    _close(four_devices["partial/1/rows"], results[0]["partial/2/rows"])


def test_num_devices_above_device_count_is_refused_before_data_loads():
    from strike_jax.simulation import check_config

    with pytest.raises(ValueError, match=r"num_devices=64 is not allowed; allowed: 1 \.\. 1"):
        check_config(Config(**dict(PARTIAL, num_devices=64)))
    with pytest.raises(ValueError, match="num_devices"):
        Config(**dict(PARTIAL, num_devices=0))

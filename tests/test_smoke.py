"""The package: its listing matches its modules, lazy imports resolve to the right objects, the
version is the distribution's, the JAX setting the batches rely on is enforced, the CLI lists."""

import importlib
import os
import pkgutil
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import strike_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_listing_is_the_packages_modules_and_resolves_lazily():
    on_disk = {m.name for m in pkgutil.iter_modules(strike_jax.__path__)}
    assert set(strike_jax._SUBMODULES) == on_disk  # a new module must be listed (dir, lazy access)
    assert set(strike_jax._SUBMODULES) <= set(dir(strike_jax)) and set(strike_jax.__all__) <= set(dir(strike_jax))
    for name, where in strike_jax._ATTRIBUTES.items():
        module, _, attr = where.partition(":")  # "module:attribute" where the names differ
        assert getattr(strike_jax, name) is getattr(importlib.import_module(module), attr or name), name
    assert strike_jax.simulation is importlib.import_module("strike_jax.simulation")
    with pytest.raises(AttributeError, match="has no attribute 'simulat'"):
        strike_jax.simulat  # noqa: B018


def test_version_is_the_distributions():
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:  # (no tomllib on Python 3.10)
        assert strike_jax.__version__ == re.search(r'^version = "([^"]+)"$', fh.read(), re.M)[1]


def test_importing_the_package_pulls_neither_the_training_stack_nor_the_simulation():
    code = ("import sys, strike_jax, strike_jax.aggregators; "
            "print(sorted(m for m in sys.modules if m.startswith(('strike_jax.training', 'strike_jax.simulation', "
            "'flax'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_refuses_legacy_threefry_in_one_line():
    env = dict(os.environ, JAX_THREEFRY_PARTITIONABLE="0")
    p = subprocess.run([sys.executable, "-c", "import strike_jax"], capture_output=True, text=True, env=env)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1 and last.startswith("ImportError: jax_threefry_partitionable=False is not allowed; "
                                                 "allowed: True"), p.stderr


def test_the_plan_checks_threefry_when_traced_and_why(monkeypatch):
    """The flag can change after import: the plan's draw checks it. Without the check, the legacy
    threefry would give a client another order when its row is padded wider (runs batched together)."""
    from strike_jax.training import schedule

    keys = jax.random.split(jax.random.PRNGKey(3), 2)

    def order(width):
        bits = schedule.position_bits(64)
        draw = jax.jit(lambda k: schedule.permutation_rows(schedule.random_words(k, width, bits),
                                                           jax.numpy.asarray([20, 20]), bits))
        return np.asarray(draw(keys))[:, :20]

    narrow = order(20)
    np.testing.assert_array_equal(order(40), narrow)
    try:
        jax.config.update("jax_threefry_partitionable", False)
        with pytest.raises(RuntimeError, match=r"^jax_threefry_partitionable=False is not allowed"):
            order(40)
        monkeypatch.setattr(schedule, "_require_partitionable_threefry", lambda: None)
        assert not np.array_equal(order(40), order(20))  # what the check prevents
    finally:
        jax.config.update("jax_threefry_partitionable", True)


def test_cli_entry_point_lists_the_registries(capsys):
    from strike_jax import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "strike" in out and "multikrum" in out and "nnm" in out and "packed" in out

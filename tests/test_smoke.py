"""The package imports lazily, lists its parts, and its entry points exist."""

import importlib
import subprocess
import sys

import strike_jax


def test_package_lists_and_imports_its_parts():
    assert strike_jax.__version__.count(".") == 2
    names = dir(strike_jax)
    for sub in ("aggregators", "attacks", "data", "models", "training", "analysis", "ops", "stages",
                "registry", "simulation", "sweep", "report"):
        assert sub in names
        assert importlib.import_module(f"strike_jax.{sub}").__name__ == f"strike_jax.{sub}"
    assert callable(strike_jax.simulate) and callable(strike_jax.simulate_many)
    assert strike_jax.Config().dataset == "digits"


def test_importing_aggregators_does_not_pull_the_training_stack():
    code = ("import sys, strike_jax.aggregators; "
            "print(any(m.startswith('strike_jax.training') or m == 'flax' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_entry_point_lists_the_registries(capsys):
    from strike_jax import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "strike" in out and "multikrum" in out and "nnm" in out and "packed" in out

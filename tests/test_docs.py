"""The documentation: the site builds with warnings as errors, every tutorial script runs, the
README's Python blocks and the docstring examples (`>>>`) run as doctests."""

import doctest
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import strike_jax

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", STRIKE_JAX_CACHE_DIR="off", MPLBACKEND="Agg")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in ("index.html", "api/optax/index.html", "tutorials/index.html", "paper/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    # the API reference is generated from the docstrings, the tutorials are the scripts themselves
    assert "aggregating.Aggregator" in (tmp_path / "site" / "api/optax/index.html").read_text()
    assert "my_trimmed_mean" in (tmp_path / "site" / "tutorials/index.html").read_text()
    print(f"mkdocs build: {time.perf_counter() - start:.1f} s")


def test_every_tutorial_is_listed_on_the_tutorials_page():
    page = (ROOT / "docs" / "tutorials.md").read_text()
    assert len(TUTORIALS) == 5
    for script in TUTORIALS:
        assert f'--8<-- "docs/tutorials/{script.name}"' in page, script.name


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    if script.stem == "sweep_plot" and "figure:" in proc.stdout:
        assert (tmp_path / "sweep_nu_f.png").stat().st_size > 0


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


# The README shows a reader's sizes; the test runs the same code at sizes that compile and run in
# seconds (the code paths do not depend on them): d = 1,000 instead of 100,000, 2 rounds of digits.
_SMALLER = (("100_000", "1_000"), ("rounds=20", "rounds=2"))


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's Python blocks, in order, in one namespace (as a reader pastes them)."""
    from strike_jax import config

    blocks = _readme_blocks()
    assert blocks
    monkeypatch.chdir(tmp_path)  # the blocks write run directories relative to the working directory
    monkeypatch.setitem(config.PRESETS, "digits", {**config.PRESETS["digits"], "rounds": 2})
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        for big, small in _SMALLER:
            block = block.replace(big, small)
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 (name the block that failed)
            raise AssertionError(f"README.md python block {i + 1} failed: {type(e).__name__}: {e}") from e


def _modules_with_examples() -> list[str]:
    out = []
    for info in pkgutil.walk_packages(strike_jax.__path__, "strike_jax."):
        if info.name.endswith("__main__"):
            continue
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and ">>>" in Path(spec.origin).read_text():
            out.append(info.name)
    return out


MODULES = _modules_with_examples()


def test_docstring_examples_are_collected():
    assert {"strike_jax.optax", "strike_jax.stages", "strike_jax.fingerprints", "strike_jax.data.user",
            "strike_jax.models.user"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=flags)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' but no collected example"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"

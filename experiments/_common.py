"""Deprecated shim: the shared plumbing of the experiment scripts now lives in the library,
`strike_jax.sweep` (options, configs, resumable runs) and `strike_jax.report` (cells, tables,
result files, figures). This module re-exports them for scripts written against the old
`experiments/_common.py` (`import _common as C`); new scripts import the library directly and run as
`python -m experiments.<name>`. Delete it once no script imports it.
"""

from __future__ import annotations

import os

from strike_jax.report import *  # noqa: F401,F403
from strike_jax.sweep import *  # noqa: F401,F403

EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EXPERIMENTS_DIR)

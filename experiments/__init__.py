"""The paper-reproduction and benchmark scripts (SPEC §8), run from the repository root as
`python -m experiments.<name>` (see experiments/README.md). The shared machinery lives in the
library: `strike_jax.sweep` (options, configs, resumable runs) and `strike_jax.report` (cells,
tables, result files, figures)."""

"""Federated runs: `simulate(config)` and `simulate_many(configs)`, batched, checkpointed, resumable.

The package follows a run from its config to its result, one concept a module:

- `settings`: `Settings`, how the engine runs on this machine (not part of a run's identity);
- `components`: config -> dataset, partition, model, server pipeline; checks before any data loads;
- `plan`: a run's plan (partition, local steps, lanes, strategy, memory);
- `store`: the run directory (versioned checkpoint, result, rounds.csv);
- `batch`: a batch of runs on the device (data, constants, stacked state, the round's shape);
- `programs`: the compiled programs, their typed key and the cache that shares them;
- `loop`: the host loop over a batch's rounds;
- `api`: `simulate`, `simulate_many`, `summarize`, `best_accuracy`.
"""

from strike_jax.sharding import to_host
from strike_jax.simulation.api import best_accuracy, simulate, simulate_many, summarize
from strike_jax.simulation.batch import Batch, Grid
from strike_jax.simulation.components import (
    DATASETS,
    RUN_NUMBERS,
    check_config,
    defence_params,
    group_key,
    init_variables,
    load_dataset,
    make_model,
    make_partition,
    make_pipeline,
    pipeline_structure,
    program_key,
    root_set,
    round_f_to_check,
)
from strike_jax.simulation.loop import Interrupted
from strike_jax.simulation.plan import Run, device_blocks, plan_rounds, plan_steps, prepare
from strike_jax.simulation.programs import PROGRAMS, ProgramCache, ProgramKey
from strike_jax.simulation.settings import DEFAULT, Settings
from strike_jax.simulation.store import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    RESULT,
    ROUNDS_CSV,
    CheckpointError,
    check_run_dir,
    read_checkpoint_meta,
    write_json,
    write_rounds_csv,
)

__all__ = [
    "Batch", "CHECKPOINT", "CHECKPOINT_FORMAT", "CheckpointError", "DATASETS", "DEFAULT", "Grid", "Interrupted",
    "PROGRAMS", "ProgramCache", "ProgramKey", "RESULT", "ROUNDS_CSV", "RUN_NUMBERS", "Run", "Settings",
    "best_accuracy", "check_config", "check_run_dir", "defence_params", "device_blocks", "group_key",
    "init_variables", "load_dataset", "make_model", "make_partition", "make_pipeline", "pipeline_structure",
    "plan_rounds", "plan_steps", "prepare", "program_key", "read_checkpoint_meta", "root_set", "round_f_to_check",
    "simulate", "simulate_many", "summarize", "to_host", "write_json", "write_rounds_csv",
]

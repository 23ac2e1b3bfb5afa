"""Local training of the clients (SPEC §3), execution strategies, evaluation, and the round (`round`).

Public API:

- `LocalConfig`, `LocalStats`, `make_local_train(model, cfg)`: one client's epoch with PyTorch SGD
  semantics over a padded batch schedule; `make_local_step`: the single step it is made of.
- Execution strategies ("packed", "vmap", "map", "steps", "loop"), all training from the round's one
  plan (`schedule`): `make_plan_updates(model, cfg, strategy, batch_size=...)` any of them on a
  `schedule.ClientBatches`; `make_client_updates(model, cfg, "steps" | "loop")` the host loops on
  the plan's per-client layout; `resolve_auto(...)` the fixed rule "auto" follows
  (`measure_strategies` / `choose_strategy`: timing, an explicit opt-in); `choose_lanes`,
  `strategy_lanes`, `makespans`: the packed layout's lanes.
- `schedule`: the round's plan drawn on the device (clients, batches, lanes); `packed`: lanes of
  clients trained back to back; `round`: a round of a batch of runs as pure functions.
- `flatten_variables(variables) -> (flat, unflatten)`, `unflatten(flat, like)`: the update layout
  (parameters, then BatchNorm statistics).
- `make_evaluate(model)`: test accuracy and loss.
"""

from strike_jax.training.evaluate import make_evaluate
from strike_jax.training.local import (
    LocalConfig,
    LocalHparams,
    LocalStats,
    LocalStep,
    clip_by_global_norm_torch,
    default_skip,
    flat_delta,
    flatten_variables,
    make_flipped_gradients,
    make_local_step,
    make_local_train,
    make_optimizer,
    num_params,
    unflatten,
    write_delta_row,
)
from strike_jax.training.strategies import (
    DEVICE_STRATEGIES,
    HOST_STRATEGIES,
    MAX_PADDED_FRACTION,
    STRATEGIES,
    VMAP_CHUNK_BYTES,
    choose_lanes,
    choose_strategy,
    client_chunk,
    default_lanes,
    make_client_updates,
    make_plan_updates,
    makespans,
    measure_strategies,
    resolve_auto,
    strategy_lanes,
    vmap_layout,
)

__all__ = [
    "LocalConfig", "LocalStats", "LocalStep", "make_local_train", "make_local_step", "default_skip",
    "make_optimizer", "clip_by_global_norm_torch",
    "flatten_variables", "unflatten", "flat_delta", "write_delta_row", "num_params",
    "make_client_updates", "make_plan_updates", "resolve_auto", "choose_strategy", "STRATEGIES",
    "DEVICE_STRATEGIES", "HOST_STRATEGIES", "MAX_PADDED_FRACTION", "VMAP_CHUNK_BYTES",
    "choose_lanes", "client_chunk", "vmap_layout",
    "default_lanes", "makespans", "measure_strategies", "strategy_lanes", "make_evaluate",
    "LocalHparams", "make_flipped_gradients",
]

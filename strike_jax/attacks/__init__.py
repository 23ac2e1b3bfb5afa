"""Byzantine attacks (SPEC §6): STRIKE and the baselines of the paper's Table 1.

Every attack is a `strike_jax.stages.Stage` (`stages.get("attack", "strike", nu=1.0)`),
registered in `strike_jax.registry`; `get` wraps one in a thin adapter for existing users:

    attack = strike_jax.attacks.get("strike", nu=1.0)
    state = attack.init(updates)
    updates, state = attack.apply(updates, byzantine_mask, state, key=key)

`names()` lists the registry. STRIKE's stages are public functions of the module
`strike_jax.attacks.strike` (`search_direction`, `select_skewed`, `hidden_vector`, `bisect_alpha`,
`strike_vector`; also reachable as `strike_jax.attacks.strike_stages`); its registry builder is
`strike_jax.attacks.strike_attack`.
"""

from __future__ import annotations

from typing import Any

from strike_jax import ops, registry
from strike_jax.attacks import strike
from strike_jax.attacks.base import Attack, EmptyState, as_attack, reference_mask
from strike_jax.attacks.baselines import (
    MimicState,
    bitflip,
    ipm,
    lie,
    mimic,
    minmax,
    minsum,
    nonfinite,
)
from strike_jax.attacks.labelflip import flip_labels, labelflip
from strike_jax.attacks.strike import strike_attack, strike_vector

#: The module of STRIKE's stages under a second name (kept for existing imports).
strike_stages = strike


def names() -> tuple[str, ...]:
    """The registered attack names."""
    return registry.names("attack")


def hparam_names(name: str) -> tuple[str, ...]:
    """The hyper-parameters `get(name, ...)` accepts."""
    return tuple(registry.hparam_spec("attack", name))


def hparam_spec(name: str) -> dict[str, registry.Param]:
    """`{hyper-parameter: Param(default, traceable, allowed, check)}` of an attack."""
    return registry.hparam_spec("attack", name)


def get(name: str, *, backend: ops.Backend | None = None, **hparams: Any) -> Attack:
    """Builds an attack by name, as an adapter (`.init`, `.apply`).

    Args:
      name: one of `names()`.
      backend: `ops.Backend` for its array code (resolved now; None: the platform's default).
      **hparams: its hyper-parameters (e.g. `nu` for STRIKE, `z` for LIE, `eps` for IPM, `value`
        for nonfinite). Traced values are accepted unchecked for the traceable ones.

    Returns:
      `Attack`.

    Raises:
      ValueError: unknown name or hyper-parameter (the message lists the allowed ones), or an
        invalid concrete value.
    """
    return as_attack(registry.build("attack", name, backend=ops.resolve(backend), **hparams))


__all__ = [
    "Attack",
    "EmptyState",
    "MimicState",
    "bitflip",
    "flip_labels",
    "get",
    "hparam_names",
    "hparam_spec",
    "ipm",
    "labelflip",
    "lie",
    "mimic",
    "minmax",
    "minsum",
    "names",
    "nonfinite",
    "reference_mask",
    "strike",
    "strike_attack",
    "strike_stages",
    "strike_vector",
]

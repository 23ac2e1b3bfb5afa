"""Byzantine attacks (SPEC §6): STRIKE and the baselines of the paper's Table 1.

    attack = strike_jax.attacks.get("strike", nu=1.0)
    state = attack.init(updates)
    updates, state = attack.apply(updates, byzantine_mask, state, key=key)

`names()` lists the registry. STRIKE's stages are public functions of the module
`strike_jax.attacks.strike` (`from strike_jax.attacks.strike import search_direction, ...`), also
reachable as `strike_jax.attacks.strike_stages`: the package attribute `strike` is the builder
`strike(nu=1.0)`, which shadows the submodule's name.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

# Bind the STRIKE module under a name of its own before the builder `strike` shadows it.
from strike_jax.attacks import strike as strike_stages  # noqa: I001  (order matters)
from strike_jax.attacks.base import Attack, EmptyState, reference_mask
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
from strike_jax.attacks.gradient import WHITE_BOX, gradient, opt_ipm, opt_lie
from strike_jax.attacks.labelflip import flip_labels, labelflip
from strike_jax.attacks.strike import strike, strike_vector

_REGISTRY: dict[str, Callable[..., Attack]] = {
    "strike": strike,
    "bitflip": bitflip,
    "labelflip": labelflip,
    "lie": lie,
    "ipm": ipm,
    "minmax": minmax,
    "minsum": minsum,
    "mimic": mimic,
    "nonfinite": nonfinite,
    "gradient": gradient,
    "opt_lie": opt_lie,
    "opt_ipm": opt_ipm,
}


def names() -> tuple[str, ...]:
    """The registered attack names."""
    return tuple(_REGISTRY)


def hparam_names(name: str) -> tuple[str, ...]:
    """The hyper-parameters `get(name, ...)` accepts."""
    return tuple(inspect.signature(_builder(name)).parameters)


def _builder(name: str) -> Callable[..., Attack]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown attack {name!r}; allowed: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def get(name: str, **hparams: Any) -> Attack:
    """Builds an attack by name.

    Args:
      name: one of `names()`.
      **hparams: its hyper-parameters (e.g. `nu` for STRIKE, `z` for LIE, `eps` for IPM, `value`
        for nonfinite). Traced values are accepted unchecked.

    Returns:
      `Attack`.

    Raises:
      ValueError: unknown name or hyper-parameter (the message lists the allowed ones), or an
        invalid concrete value.
    """
    builder = _builder(name)
    allowed = tuple(inspect.signature(builder).parameters)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for attack {name!r}; allowed: {list(allowed) or 'none'}."
        )
    return builder(**hparams)


__all__ = [
    "Attack",
    "EmptyState",
    "MimicState",
    "bitflip",
    "flip_labels",
    "get",
    "hparam_names",
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
    "strike_stages",
    "strike_vector",
]

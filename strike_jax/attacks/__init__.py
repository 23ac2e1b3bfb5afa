"""Byzantine attacks (SPEC §6): STRIKE, the baselines of the paper's Table 1, and ByzFL's / the
NDSS'21 code's attacks (issue 11).

Every attack is a `strike_jax.stages.Stage` (`stages.get("attack", "strike", nu=1.0)`),
registered in `strike_jax.registry`; `get` wraps one in a thin adapter for existing users:

    attack = strike_jax.attacks.get("strike", nu=1.0)
    state = attack.init(updates)
    updates, state = attack.apply(updates, byzantine_mask, state, key=key)

Attacks (`names()`, hyper-parameters with defaults; traceable ones marked `~`): `strike(nu~=1.0)`,
`bitflip`, `lie(z~=1.5)`, `ipm(eps~=0.1)`, `minmax`, `minsum`, `mimic` (stateful, needs `key`),
`nonfinite(value="nan")`, `labelflip` (data level); issue 11: `gaussian(mu~=0.0, sigma~=1.0)`
(needs `key`), `signflip` (every Byzantine client sends minus the honest mean; `bitflip` is minus
each one's own update), `fang(target="trmean", b~=2.0)` (Fang et al. 2020: the trim attack on
"trmean"/"median", needs `key`; the Krum attack for "krum"), `agr_tailored(rule="multikrum",
perturbation="std", lam0~=10.0)` (Shejwalkar & Houmansadr 2021; white box: in a pipeline it
attacks the round's real downstream chain, `ctx.downstream`, else the rule `rule`); issue 10 (white
box, the same way): `gradient(steps=50, lr~=0.5, nu~=1.0, rule="median")` (gradient ascent through
the defence from STRIKE's rows), `opt_lie(rule="median")`, `opt_ipm(rule="median")` (ByzFL's
optimised LIE / IPM: the factor grid evaluated against the defence); issue 23:
`strike_diverse(nu~=1.0, spread~=0.5)` (STRIKE with `f` distinct vectors inside the skewed set).
`hparam_spec(name)` gives each one's allowed values.

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

# The order of these imports is the registration order, which fixes the order of `names()`.
# isort: off
from strike_jax.attacks.labelflip import flip_labels, labelflip
from strike_jax.attacks.strike import strike_attack, strike_vector
# Issue 11 (registered after the attacks above, which keep their places in `names()`).
from strike_jax.attacks.extra import gaussian, signflip
from strike_jax.attacks.fang import fang
from strike_jax.attacks.agr_tailored import agr_tailored
# Issue 10: white-box attacks that optimise against the round's defence.
from strike_jax.attacks.gradient import WHITE_BOX, gradient, opt_ipm, opt_lie
# Issue 23: STRIKE with f distinct Byzantine vectors (the paper's STRIKE is unchanged).
from strike_jax.attacks.strike_diverse import strike_diverse
# isort: on

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
    "WHITE_BOX",
    "agr_tailored",
    "bitflip",
    "fang",
    "flip_labels",
    "gaussian",
    "get",
    "gradient",
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
    "opt_ipm",
    "opt_lie",
    "reference_mask",
    "signflip",
    "strike",
    "strike_attack",
    "strike_diverse",
    "strike_stages",
    "strike_vector",
]

"""One registry for the stages of the server pipeline: attacks, pre-aggregators and rules.

Each entry is a builder `builder(**hparams, backend=None) -> Stage` registered with

    @registry.register("rule", "cclip", tau=registry.real(), iters=registry.integer(low=1))
    def cclip(tau=10.0, iters=1, *, backend=None) -> Stage: ...

The hyper-parameters' defaults are read from the builder's signature (the one place they are
written); `register` declares, for each, what values are allowed and whether it is

* TRACEABLE: a real number that may be a traced scalar without changing the program's structure
  (STRIKE `nu`, LIE `z`, IPM `eps`, CClip `tau`, RFA `eps`, DnC `c`), so that runs differing
  only in it share one compiled program (`strike_jax.stages.inject_hyperparams`); or
* STATIC: ints, bools and strings that set shapes, loops or code paths (RFA `iters`, DnC
  `niters`/`b`, bucketing `s`, median `midpoint`, NNM `include_self`, nonfinite `value`), and
  `optional(...)` ones where None switches a path (FoolsGold `sketch`).

The decorator validates every call of the builder (by name through `build` or directly): a
concrete bad value raises one line naming it and what is allowed; a traced value is accepted for a
traceable hyper-parameter unchecked, and refused for a static one. It also sets the built stage's
`hparams` to the full, validated values. Keyword-only arguments (`backend`) are build options, not
hyper-parameters.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from strike_jax.errors import InputError
from strike_jax.fingerprints import fingerprint

#: The kinds of stage, in pipeline order.
KINDS = ("attack", "preaggregator", "rule")

_NO_DEFAULT = object()


class Param(NamedTuple):
    """One hyper-parameter of a registered builder.

    Attributes:
      default: its default (the builder's signature).
      traceable: True when the value may be a traced scalar (see the module docstring).
      allowed: what values are allowed, in words (for messages).
      check: `check(value) -> value'` for a concrete value (normalising it, e.g. `2.0 -> 2` for an
        int); raises `ValueError` or `TypeError` when the value is not allowed.
      type: the value's type for a config's identity (`normalize`): "real", "integer", "flag",
        "choice"; an `optional` one has its inner param's type.
    """

    default: Any
    traceable: bool
    allowed: str
    check: Callable[[Any], Any]
    type: str = "any"


class Entry(NamedTuple):
    """A registered builder: `kind`, `name`, the validating `builder`, the undecorated `raw`
    builder and its hyper-parameters `params` (`{name: Param}`)."""

    kind: str
    name: str
    builder: Callable[..., Any]
    raw: Callable[..., Any]
    params: Mapping[str, Param]


_ENTRIES: dict[tuple[str, str], Entry] = {}


def is_traced(value: Any) -> bool:
    """True for a value being traced by jit/vmap/grad (it has no concrete value to check)."""
    return isinstance(value, jax.core.Tracer)


# ------------------------------------------------------------------------ hyper-parameter kinds


def _real_scalar(value: Any) -> float:
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError("not a real number")
    arr = np.asarray(value)
    if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError("not a real scalar")
    return float(arr)


def real(*, low: float | None = 0.0, strict: bool = True, high: float | None = None,
         traceable: bool = True) -> Param:
    """A finite real scalar `> low` (`>= low` unless `strict`; no bound for `low=None`) and
    `<= high` (when given); traceable by default."""
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    if high is not None:
        bound += f"{' and' if bound else ''} <= {high:g}"

    def check(value):
        x = _real_scalar(value)
        if not math.isfinite(x) or (low is not None and (x <= low if strict else x < low)):
            raise ValueError("out of range")
        if high is not None and x > high:
            raise ValueError("out of range")
        return value

    return Param(_NO_DEFAULT, traceable, f"a finite real number{bound}", check, "real")


def integer(*, low: int = 1) -> Param:
    """A static integer `>= low` (an integral float such as `2.0` is accepted as `2`)."""

    def check(value):
        x = _real_scalar(value)
        if not math.isfinite(x) or x != int(x) or x < low:
            raise ValueError("out of range")
        return int(x)

    return Param(_NO_DEFAULT, False, f"an integer >= {low}", check, "integer")


def flag() -> Param:
    """A static bool."""

    def check(value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError("not a bool")
        return bool(value)

    return Param(_NO_DEFAULT, False, "True or False", check, "flag")


def choice(*options: str) -> Param:
    """A static string among `options`."""

    def check(value):
        if not isinstance(value, str) or value not in options:
            raise ValueError("not an option")
        return value

    return Param(_NO_DEFAULT, False, "one of " + ", ".join(map(repr, options)), check, "choice")


def optional(param: Param) -> Param:
    """`None` or a value `param` accepts (static: None switches a code path). For a builder
    argument whose None means "off" (FoolsGold's `sketch`) or "must be given" (its `num_clients`:
    the builder then raises naming it)."""

    def check(value):
        return None if value is None else param.check(value)

    return Param(_NO_DEFAULT, False, f"None or {param.allowed}", check, param.type)


def check_value(owner: str, name: str, value: Any, param: Param) -> Any:
    """Validates one hyper-parameter value (normalised on success).

    Raises:
      InputError: one line naming `owner`, the value and what is allowed.
    """
    if is_traced(value):
        if param.traceable:
            return value
        raise InputError(f"{owner}: {name} is static (it sets shapes or loops) and cannot be a traced value; "
                         f"allowed: {param.allowed}.")
    try:
        return param.check(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise InputError(f"{owner}: {name}={value!r} is not allowed; allowed: {param.allowed}.")


# ----------------------------------------------------------------------------------- registering


def register(kind: str, name: str, **params: Param) -> Callable:
    """Decorator registering `builder` as `(kind, name)` with hyper-parameters `params`.

    The builder's positional-or-keyword parameters are its hyper-parameters (defaults from its
    signature; each must be declared in `params`); keyword-only ones are build options. The
    returned builder validates its arguments on every call (`check_value`) and records them as
    the stage's `hparams`.
    """
    if kind not in KINDS:
        raise ValueError(f"register: kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")

    def deco(builder: Callable) -> Callable:
        sig = inspect.signature(builder)
        hps = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if {p.name for p in hps} != set(params) or any(p.default is p.empty for p in hps):
            raise TypeError(f"register({kind!r}, {name!r}): declare every hyper-parameter of "
                            f"{builder.__name__} with a default; got {sorted(params)}.")
        spec = types.MappingProxyType({p.name: params[p.name]._replace(default=p.default) for p in hps})

        @functools.wraps(builder)
        def build(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            given = dict(bound.arguments)
            values = {k: check_value(name, k, given.pop(k, p.default), p) for k, p in spec.items()}
            return builder(**values, **given)._replace(hparams=types.MappingProxyType(values))

        old = _ENTRIES.get((kind, name))
        if old is not None:
            # Re-running the definition (a notebook cell, a re-imported module) registers the same
            # code again: a no-op that keeps the first entry. Other code under a taken name is refused.
            if fingerprint(old.raw) == fingerprint(builder):
                return old.builder
            raise ValueError(f"register: {kind} {name!r} is already registered with other code; "
                             "choose another name.")
        _ENTRIES[(kind, name)] = Entry(kind, name, build, builder, spec)
        return build

    return deco


def _load() -> None:
    # The builders register themselves when their packages are imported.
    importlib.import_module("strike_jax.aggregators")
    importlib.import_module("strike_jax.attacks")


def names(kind: str) -> tuple[str, ...]:
    """The registered names of `kind` ("attack", "preaggregator" or "rule"), in registration order."""
    _load()
    if kind not in KINDS:
        raise InputError(f"kind={kind!r} is not allowed; allowed: {', '.join(KINDS)}.")
    return tuple(n for k, n in _ENTRIES if k == kind)


def find(name: str, kinds: tuple[str, ...] = KINDS, label: str | None = None) -> Entry:
    """The entry called `name` among `kinds`.

    Raises:
      InputError: an unknown name, listing the allowed ones (`label` names the kind in the message).
    """
    _load()
    for k in kinds:
        if (k, name) in _ENTRIES:
            return _ENTRIES[(k, name)]
    allowed = [n for k in kinds for n in names(k)]
    label = label or "/".join(kinds)
    raise InputError(f"Unknown {label} {name!r}; allowed: {', '.join(allowed)}.")


def hparam_spec(kind: str, name: str) -> dict[str, Param]:
    """`{hyper-parameter: Param(default, traceable, allowed, check)}` of a registered builder."""
    return dict(find(name, (kind,), kind).params)


def validate(kind: str, name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The full hyper-parameters of `(kind, name)`: `hparams` checked and merged with the defaults.

    Raises:
      InputError: an unknown name or hyper-parameter, or a bad value (one line naming it and what is
        allowed).
    """
    entry = find(name, (kind,), kind)
    unknown = sorted(set(hparams) - set(entry.params))
    if unknown:
        listing = ", ".join(f"{k}={p.default!r}" for k, p in entry.params.items()) or "none"
        raise InputError(f"{name}: unknown hyper-parameter(s) {unknown}; allowed: {listing}.")
    return {k: check_value(name, k, hparams.get(k, p.default), p) for k, p in entry.params.items()}


def normalize(kind: str, name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """`hparams` with each number in its declared type, so that equal values are equal in every
    form (`{"nu": 1}` and `{"nu": 1.0}` hash and serialise alike: `strike_jax.config.Config`).

    A real hyper-parameter given as a Python or NumPy int or float becomes a Python float; an
    integer one given as an integral number becomes a Python int. Nothing is checked here (bad
    values, unknown names and unknown hyper-parameters pass through unchanged, for `validate`
    to refuse); traced values pass through.
    """
    entry = _ENTRIES.get((kind, name))
    if entry is None:
        _load()
        entry = _ENTRIES.get((kind, name))
    if entry is None:
        return dict(hparams)
    out = {}
    for k, v in hparams.items():
        p = entry.params.get(k)
        if p is not None and isinstance(v, (int, float, np.integer, np.floating)) \
                and not isinstance(v, (bool, np.bool_)):
            if p.type == "real":
                v = float(v)
            elif p.type == "integer" and math.isfinite(v) and v == int(v):
                v = int(v)
        out[k] = v
    return out


def build(kind: str, name: str, *, backend: Any = None, **hparams: Any) -> Any:
    """Builds the stage `(kind, name)` with validated `hparams` (see `validate`).

    Args:
      kind: "attack", "preaggregator" or "rule".
      name: one of `names(kind)`.
      backend: `strike_jax.ops.Backend` for the stage's array code (None: the platform's default).
      **hparams: its hyper-parameters.

    Returns:
      `strike_jax.stages.Stage`.
    """
    values = validate(kind, name, hparams)
    return _ENTRIES[(kind, name)].builder(**values, backend=backend)


# ------------------------------------------------------------------------------ user objects


#: User objects registered by name: `{(category, name): (object, fingerprint)}`; categories are
#: "dataset", "model" and the stage kinds.
_USER: dict[tuple[str, str], tuple[Any, str]] = {}


def claim(category: str, name: str, obj: Any, *, builtin: bool = False) -> bool:
    """Records the user object `obj` as `(category, name)`.

    Returns True when newly recorded, False when the same object (equal `fingerprint`) already is
    (re-running a notebook cell is a no-op).

    Raises:
      ValueError: `name` is empty or not a string, is a built-in name (`builtin`), or is taken by a
        different object.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name={name!r} is not allowed; allowed: a non-empty string.")
    fp = fingerprint(obj)
    old = _USER.get((category, name))
    if old is not None:
        if old[1] == fp:
            return False
        raise ValueError(f"register: {category} {name!r} is already registered with a different object "
                         f"(fingerprint {old[1]}, this one {fp}); choose another name.")
    if builtin:
        raise ValueError(f"register: {category} {name!r} is a built-in name; choose another name.")
    _USER[(category, name)] = (obj, fp)
    return True


def registered(category: str, name: str) -> Any | None:
    """The user object registered as `(category, name)`, or None."""
    entry = _USER.get((category, name))
    return None if entry is None else entry[0]


def register_stage(stage: Any) -> Any:
    """Registers a user's stage (`stages.from_function`, or any `Stage`) under its kind and name,
    so that `stages.get(kind, name)`, `server_pipeline` and `simulate(Config(defence=name))` find
    it. It takes no hyper-parameters. Re-registering the same stage is a no-op.

    Returns:
      `stage`.

    Raises:
      ValueError: the name is a built-in stage's or is taken by a different stage.
    """
    from strike_jax import stages  # noqa: PLC0415 (stages imports this module)

    st = stages.as_stage(stage)
    _load()
    taken = (st.kind, st.name) in _ENTRIES and registered(st.kind, st.name) is None
    if claim(st.kind, st.name, st, builtin=taken):

        def build(*, backend: Any = None) -> Any:
            del backend  # a user stage is built once, by the user
            return st

        _ENTRIES[(st.kind, st.name)] = Entry(st.kind, st.name, build, build, types.MappingProxyType({}))
    return stage


def register_object(obj: Any) -> Any:
    """Registers a user's data set, model or stage by its name (`strike_jax.register`): a
    `Dataset` (`data.register`), a `ModelSpec` (`models.register`) or a `Stage` / adapter
    (`register_stage`).

    Returns:
      `obj`.
    """
    from strike_jax import data, models  # noqa: PLC0415

    if isinstance(obj, data.Dataset):
        return data.register(obj)
    if isinstance(obj, models.ModelSpec):
        return models.register(obj)
    from strike_jax import stages  # noqa: PLC0415

    try:
        stages.as_stage(obj)
    except ValueError:
        raise ValueError(f"register: {type(obj).__name__} is not allowed; allowed: a Dataset "
                         "(data.from_arrays), a ModelSpec (models.from_flax) or a Stage "
                         "(stages.from_function).") from None
    return register_stage(obj)


__all__ = [
    "Entry",
    "KINDS",
    "Param",
    "build",
    "check_value",
    "choice",
    "claim",
    "find",
    "fingerprint",
    "flag",
    "hparam_spec",
    "integer",
    "is_traced",
    "names",
    "normalize",
    "optional",
    "real",
    "register",
    "register_object",
    "register_stage",
    "registered",
    "validate",
]

"""One options layer: command-line options built from `Config`'s fields (issue 19).

`strike-jax run`, `strike-jax sweep` and the `experiments/` scripts take `Config` fields as options
built here from the dataclass itself (`strike_jax.config.field_types`: `dataclasses.fields` and
`typing.get_type_hints`, not annotation strings), so a new field is an option everywhere at once and
every option parses to the field's type:

    --num-clients 30            int fields (2.5 and True are refused)
    --beta 1                    float fields (stored as 1.0)
    --clip-norm None            optional fields take None
    --skew-metrics              bool fields are switches
    --preagg nnm,bucketing      the tuple of pre-aggregator names
    --attack strike --nu 1.5    registry names (one line listing the allowed ones)
    --attack-param nu=1.5       attack / defence / data set hyper-parameters, KEY=VALUE (repeatable)
    --defence-param tau=5
    --preagg-param bucketing.s=3
    --set FIELD=VALUE           any field as a Python literal (`--set clip_norm=None`)

Every bad value is one line: argparse's `<prog>: error: argument --x: ...` (exit code 2).
`overrides(args)` collects the fields the command line set (unset options stay out, so a preset's
values apply); `parse_set` / `coerce_field` check one `FIELD=VALUE`.

A sweep's grid is options too: `parse_grid` reads one `--grid KEY=V1,V2` axis (a field or a
hyper-parameter, values checked like the field's option) and `grid_configs` applies every
combination of the axes to a base config (`strike-jax sweep`, `strike_jax.studies.grid_study`).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from strike_jax.config import (
    ALGORITHMS,
    BATCH_ORDERS,
    PARTITIONS,
    PREAGGREGATION_ORDERS,
    STRATEGIES,
    Config,
    check_field,
    field_need,
    field_types,
)
from strike_jax.errors import InputError

#: Fields with their own spelling on the command line (others: `--field-name`).
FLAGS = {"preaggregation": "--preagg", "defence": "--defence"}
#: The default of every field's option: an option not given is absent from the parsed namespace, so
#: that `--clip-norm None` (set to None) differs from no `--clip-norm` (the preset's value).
UNSET = argparse.SUPPRESS
#: String fields offered as argparse choices (the others' names are checked by their type).
CHOICE_FIELDS = ("dataset", "model", "partition", "strategy", "algorithm", "preaggregation_order")
#: Mapping fields and their KEY=VALUE option.
PARAM_FLAGS = {"attack_params": "--attack-param", "defence_params": "--defence-param",
               "dataset_params": "--dataset-param", "preaggregation_params": "--preagg-param"}


def flag(name: str) -> str:
    """The option of a `Config` field: `num_clients` -> `--num-clients`."""
    return PARAM_FLAGS.get(name) or FLAGS.get(name) or "--" + name.replace("_", "-")


def parse_value(text: str) -> Any:
    """A Python literal (`3`, `0.5`, `None`, `True`, `{'nu': 2.0}`, `(8, 8, 1)`), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def allowed_names(field: str) -> tuple[str, ...] | None:
    """The names a string field accepts (looked up in the registries when asked), or None (any)."""
    if field == "attack":
        from strike_jax import registry

        return ("none",) + registry.names("attack")
    if field == "defence":
        from strike_jax import registry

        return registry.names("rule")
    if field == "preaggregation":
        from strike_jax import registry

        return registry.names("preaggregator")
    if field == "dataset":
        from strike_jax import data

        return data.names()
    if field == "model":
        from strike_jax import models

        return models.names()
    return {"partition": PARTITIONS, "strategy": STRATEGIES, "algorithm": ALGORITHMS,
            "preaggregation_order": PREAGGREGATION_ORDERS, "batch_order": BATCH_ORDERS}.get(field)


_LABEL = {"defence": "defence", "attack": "attack", "preaggregation": "pre-aggregator", "dataset": "data set"}


def _check_names(field: str, names: Sequence[str]) -> None:
    allowed = allowed_names(field)
    if allowed is None:
        return
    bad = [n for n in names if n not in allowed]
    if bad:
        hint = ""
        if field == "defence" and bad[0] in (allowed_names("preaggregation") or ()):
            hint = f" ({bad[0]} is a pre-aggregator: use --preagg {bad[0]})"
        raise argparse.ArgumentTypeError(f"unknown {_LABEL.get(field, field)} {bad[0]!r}{hint}; allowed: "
                                         f"{', '.join(allowed)}")


def coerce_field(name: str, value: Any) -> Any:
    """`value` for the `Config` field `name`, checked against the field's type (`config.check_field`)
    and, for names, the registries; a string for a tuple field is split at commas
    (`preaggregation=nnm,bucketing`).

    Raises:
      argparse.ArgumentTypeError: an unknown field (listing the allowed ones) or a value of the
        wrong type (one line naming it and what the field needs).
    """
    types = field_types()
    if name not in types:
        raise argparse.ArgumentTypeError(f"unknown Config field {name!r}; allowed: {', '.join(types)}")
    ft = types[name]
    if value is None and not ft.optional:
        raise argparse.ArgumentTypeError(f"{name}={value!r}: Config.{name} needs a value ({field_need(name)}), "
                                         "not None")
    if ft.base is tuple and isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip() and v.strip().lower() != "none")
    if ft.item is int and isinstance(value, tuple):  # integers from the command line's text
        value = tuple(parse_value(v) if isinstance(v, str) else v for v in value)
    try:
        value = check_field(name, value)
    except InputError:
        raise argparse.ArgumentTypeError(f"{name}={value!r}: Config.{name} needs {field_need(name)}") from None
    if isinstance(value, str):
        _check_names(name, (value,))
    elif isinstance(value, tuple):
        _check_names(name, value)
    return value


def field_type(name: str) -> Callable[[str], Any]:
    """An argparse type for the `Config` field `name`: the text parsed to the field's type (a
    literal for numbers, None for an optional field; names checked against the registries)."""
    ft = field_types()[name]

    def parse(text: str) -> Any:
        if ft.base is str:
            value: Any = None if (ft.optional and text == "None") else text
        elif ft.base is tuple:
            value = text
        else:
            value = parse_value(text)
            if ft.optional and isinstance(value, str) and value.lower() == "none":
                value = None
        return coerce_field(name, value)

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def parse_set(text: str) -> tuple[str, Any]:
    """An argparse type for `--set FIELD=VALUE`: the value is a Python literal (`3`, `0.5`, `None`,
    `True`, `{'nu': 2.0}`) or else a plain string, checked by `coerce_field`."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE, e.g. strategy=loop")
    name, raw = (s.strip() for s in text.split("=", 1))
    return name, coerce_field(name, parse_value(raw))


def parse_param(text: str) -> tuple[str, Any]:
    """An argparse type for `--attack-param KEY=VALUE` (the value a Python literal, else a string);
    the stage's registry checks key and value (`simulation.check_config`)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    return k.strip(), parse_value(v.strip())


def parse_preagg_param(text: str) -> tuple[str, str, Any]:
    """An argparse type for `--preagg-param NAME.KEY=VALUE` (e.g. `bucketing.s=3`)."""
    key, value = parse_param(text)
    name, dot, hp = key.partition(".")
    if not dot or not name or not hp:
        raise argparse.ArgumentTypeError(f"expects NAME.KEY=VALUE (e.g. bucketing.s=3), got {text!r}")
    _check_names("preaggregation", (name,))
    return name, hp, value


def add_config_options(parser: argparse.ArgumentParser, fields: Iterable[str] | None = None, *,
                       default: Config | None = None, nu: bool = True,
                       helps: Mapping[str, str] | None = None) -> None:
    """Adds an option for each `Config` field in `fields` (default: all) to `parser`.

    Options not given are absent from the namespace (`UNSET`) and from `overrides(args)`, so a
    preset's values apply. Bool
    fields are switches; mapping fields take repeatable KEY=VALUE (`PARAM_FLAGS`); `nu`: also
    `--nu` (STRIKE's strength, a shortcut for `--attack-param nu=...`) when `attack_params` is in.

    Args:
      parser: where the options go.
      fields: the fields to offer, in that order.
      default: the config whose values the help shows (default `Config()`).
      helps: help texts replacing the generated ones, by field.
    """
    default = default or Config()
    types = field_types()
    for name in (fields or types):
        ft = types[name]
        dflt = getattr(default, name)
        if name in PARAM_FLAGS:
            if name == "preaggregation_params":
                parser.add_argument(PARAM_FLAGS[name], dest=name, action="append", type=parse_preagg_param,
                                    default=UNSET, metavar="NAME.KEY=VALUE",
                                    help="pre-aggregator hyper-parameter (repeatable)")
            else:
                what = {"attack_params": "attack", "defence_params": "defence", "dataset_params": "data set loader"}
                parser.add_argument(PARAM_FLAGS[name], dest=name, action="append", type=parse_param, default=UNSET,
                                    metavar="KEY=VALUE", help=f"{what[name]} hyper-parameter (repeatable)")
            if name == "attack_params" and nu:
                parser.add_argument("--nu", type=_nu, help="STRIKE's strength (shortcut for --attack-param nu=...)")
            continue
        custom = (helps or {}).get(name)
        if ft.base is bool:
            if dflt is True:  # on by default: the option turns it off
                parser.add_argument("--no-" + flag(name)[2:], dest=name, action="store_false", default=UNSET,
                                    help=custom or f"Config.{name}=False (default {dflt!r})")
                continue
            parser.add_argument(flag(name), dest=name, action="store_true", default=UNSET,
                                help=custom or f"Config.{name} (default {dflt!r})")
            continue
        allowed = allowed_names(name)
        if name in CHOICE_FIELDS:  # a short fixed list: argparse shows it as {a,b,...}
            parser.add_argument(flag(name), dest=name, choices=allowed, default=UNSET,
                                help=custom or f"Config.{name} (default {dflt!r})")
            continue
        if name == "preaggregation":
            text = "comma-separated pre-aggregators, from: " + ", ".join(allowed or ()) + " (default: none)"
        elif allowed is not None:
            text = f"one of: {', '.join(allowed)} (default {dflt!r})"
        else:
            text = f"Config.{name}: {field_need(name)} (default {dflt!r})"
        metavar = {"defence": "RULE", "preaggregation": "NAMES", "data_dir": "DIR"}.get(name, name.upper())
        parser.add_argument(flag(name), dest=name, type=field_type(name), metavar=metavar, default=UNSET,
                            help=custom or text)
        if name == "defence":
            parser.add_argument("--defense", dest="defence", type=field_type(name), default=UNSET,
                                help=argparse.SUPPRESS)


def _nu(text: str) -> float:
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return float(value)


def overrides(args: argparse.Namespace, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The `Config` fields set on the command line (options of `add_config_options`, `--nu`, `--set`),
    as `Config(**...)` / `preset(name, **...)` keyword arguments; `--set` wins.

    Args:
      args: the parsed options.
      fields: the fields `add_config_options` was given (default: all).
    """
    out: dict[str, Any] = {}
    given = vars(args)
    for name in (fields or field_types()):
        if name not in given:  # not on the command line (`UNSET`): the preset's or default value
            continue
        value = given[name]
        if name == "preaggregation_params":
            pp: dict[str, dict[str, Any]] = {}
            for pre, hp, v in value:
                pp.setdefault(pre, {})[hp] = v
            out[name] = pp
        elif name in PARAM_FLAGS:
            out[name] = dict(value)
        else:
            out[name] = value
    if getattr(args, "nu", None) is not None:
        out["attack_params"] = {**out.get("attack_params", {}), "nu": args.nu}
    out.update(dict(getattr(args, "set", None) or ()))
    return out


# ---------------------------------------------------------------------------------------------
# Grids of any field (`strike-jax sweep --grid KEY=V1,V2`)

#: Other spellings of grid keys.
GRID_ALIASES = {"preagg": "preaggregation", "defense": "defence"}


class Axis(NamedTuple):
    """One `--grid` axis.

    Attributes:
      key: as written (`nu`, `seed`, `defence.tau`).
      kind: "field" (a `Config` field), "attack" / "defence" (a hyper-parameter of the config's
        attack / defence), "param" (of whichever of the two declares it) or "preagg" (of the
        pre-aggregator `stage`).
      name: the field or hyper-parameter.
      values: the values, parsed (`Config` fields to their types).
      stage: the pre-aggregator of a "preagg" axis, else "".
    """

    key: str
    kind: str
    name: str
    values: tuple
    stage: str = ""


def _declares(kind: str, stage: str, hparam: str) -> bool:
    from strike_jax import registry

    if kind == "attack" and stage == "none":
        return False
    try:
        return hparam in registry.hparam_spec(kind, stage)
    except InputError:
        return False


def _declared_anywhere(hparam: str) -> list[str]:
    from strike_jax import registry

    return [f"{k} {n}" for k in ("attack", "rule") for n in registry.names(k) if _declares(k, n, hparam)]


_RANGE = re.compile(r"^(\d+)-(\d+)$")


def _items(text: str, *, ranges: bool) -> list[str]:
    out: list[str] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        m = _RANGE.match(item) if ranges else None
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise argparse.ArgumentTypeError(f"{item!r}: a range a-b needs a <= b")
            out.extend(str(i) for i in range(lo, hi + 1))
        else:
            out.append(item)
    return out


def parse_grid(text: str) -> Axis:
    """An argparse type for `--grid KEY=V1,V2,...`: one axis of a sweep.

    KEY is a `Config` field (`seed`, `attack`, `defence`, `beta`, `num_clients`, `preaggregation`
    or `preagg`, ...), a hyper-parameter of an attack or defence (`nu`, `tau`; `attack.nu` or
    `defence.tau` when both could mean it) or of a pre-aggregator (`bucketing.s`). Values are
    comma-separated; `a-b` is the integers a..b for numbers (`seed=0-2`); a pre-aggregation value
    joins names with `+` (`preagg=none,nnm,nnm+bucketing`). Each value is checked like the option
    of its field (`strike_jax.options`).
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=V1,V2,... (e.g. defence=median,dnc or seed=0-2)")
    key, raw = (t.strip() for t in text.split("=", 1))
    name = GRID_ALIASES.get(key, key.replace("-", "_"))
    types = field_types()
    if name in types:
        ft = types[name]
        if ft.base is dict:
            raise argparse.ArgumentTypeError(f"grid key {key!r}: vary one hyper-parameter at a time "
                                             "(e.g. nu=0.5,1 or defence.tau=5,10)")
        if ft.base is tuple:
            parts = [v.strip() for v in raw.split(",") if v.strip()]
            values = tuple(coerce_field(name, () if p == "none" else tuple(p.split("+"))) for p in parts)
        else:
            parse = field_type(name)
            values = tuple(parse(v) for v in _items(raw, ranges=ft.base is int))
        axis = Axis(key, "field", name, values)
    else:
        stage, dot, hparam = name.rpartition(".")
        if dot and stage in ("attack", "defence"):
            kind = stage
            if not _declared_anywhere(hparam):
                raise argparse.ArgumentTypeError(f"grid key {key!r}: no attack or defence has a hyper-parameter "
                                                 f"{hparam!r}")
        elif dot:
            parse_preagg_param(f"{name}=0")  # checks the pre-aggregator's name
            if not _declares("preaggregator", stage, hparam):
                raise argparse.ArgumentTypeError(f"grid key {key!r}: the pre-aggregator {stage} has no "
                                                 f"hyper-parameter {hparam!r}")
            kind = "preagg"
        else:
            hparam, stage, kind = name, "", "param"
            if not _declared_anywhere(hparam):
                raise argparse.ArgumentTypeError(
                    f"unknown grid key {key!r}; allowed: a Config field ({', '.join(types)}), a hyper-parameter of "
                    "an attack or defence (e.g. nu, tau, or attack.KEY / defence.KEY) or of a pre-aggregator "
                    "(e.g. bucketing.s)")
        values = tuple(parse_value(v) for v in _items(raw, ranges=True))
        axis = Axis(key, kind, hparam, values, stage if kind == "preagg" else "")
    if not axis.values:
        raise argparse.ArgumentTypeError(f"{text!r}: need at least one value")
    if len(set(map(repr, axis.values))) != len(axis.values):
        raise argparse.ArgumentTypeError(f"{text!r}: a value is repeated")
    return axis


def grid_configs(base: Config, axes: Sequence[Axis]) -> list[Config]:
    """Every combination of the axes' values applied to `base`, in the axes' order (the last
    varies fastest), without duplicates (equal configs are one run).

    A hyper-parameter applies to the configs whose attack (or defence, or pre-aggregator) declares
    it, so `attack=lie,strike` x `nu=0.5,1` is LIE once and STRIKE twice; `base`'s own attack /
    defence hyper-parameters (`--nu`, `--attack-param`) likewise follow a grid of attacks or
    defences.

    Raises:
      InputError: a hyper-parameter that no config of the grid declares (or both its attack and
        its defence do, without `attack.` / `defence.`), or a combination `Config` refuses.
    """
    keys = {"attack": "attack_params", "defence": "defence_params"}
    used: dict[str, bool] = {a.key: False for a in axes}
    base_used = {(kind, k): False for kind in keys for k in getattr(base, keys[kind])}
    out: dict[Config, Config] = {}
    for combo in itertools.product(*(a.values for a in axes)):
        fields = {a.name: v for a, v in zip(axes, combo) if a.kind == "field"}
        stages = {"attack": fields.get("attack", base.attack), "defence": fields.get("defence", base.defence)}
        preaggs = fields.get("preaggregation", base.preaggregation)
        params: dict[str, dict[str, Any]] = {}
        for kind, field in keys.items():
            kept = {}
            for k, v in getattr(base, field).items():
                if stages[kind] == getattr(base, kind) or _declares(_KIND[kind], stages[kind], k):
                    kept[k] = v
                    base_used[(kind, k)] = True
            params[field] = kept
        pre_params = {p: dict(v) for p, v in base.preaggregation_params.items() if p in preaggs}
        for a, v in zip(axes, combo):
            if a.kind == "preagg":
                if a.stage in preaggs:
                    pre_params.setdefault(a.stage, {})[a.name] = v
                    used[a.key] = True
            elif a.kind in ("attack", "defence", "param"):
                hits = [kind for kind in keys if a.kind in (kind, "param")
                        and _declares(_KIND[kind], stages[kind], a.name)]
                if len(hits) > 1:
                    raise InputError(f"grid key {a.key!r} is a hyper-parameter of both the attack "
                                     f"{stages['attack']} and the defence {stages['defence']}; write "
                                     f"attack.{a.name} or defence.{a.name}.")
                if hits:
                    params[keys[hits[0]]][a.name] = v
                    used[a.key] = True
            else:
                used[a.key] = True
        cfg = base.replace(**fields, **params, preaggregation_params=pre_params)
        out.setdefault(cfg, cfg)  # equal configs are one run (Config normalises its numbers)
    for (kind, k), u in base_used.items():
        if not u:
            raise InputError(f"{kind} hyper-parameter {k!r} applies to no run: no {kind} of the grid has it.")
    for k, u in used.items():
        if not u:
            raise InputError(f"grid key {k!r} applies to no run: no attack, defence or pre-aggregator of the grid "
                             "has that hyper-parameter (strike-jax list shows the stages).")
    return list(out.values())


_KIND = {"attack": "attack", "defence": "rule"}


__all__ = [
    "CHOICE_FIELDS", "FLAGS", "GRID_ALIASES", "PARAM_FLAGS", "UNSET", "Axis", "add_config_options", "allowed_names",
    "coerce_field", "field_type", "flag", "grid_configs", "overrides", "parse_grid", "parse_param",
    "parse_preagg_param", "parse_set", "parse_value",
]

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
"""

from __future__ import annotations

import argparse
import ast
from typing import Any, Callable, Iterable, Mapping, Sequence

from strike_jax.config import STRATEGIES, PARTITIONS, Config, check_field, field_need, field_types
from strike_jax.errors import InputError

#: Fields with their own spelling on the command line (others: `--field-name`).
FLAGS = {"preaggregation": "--preagg", "defence": "--defence"}
#: The default of every field's option: an option not given is absent from the parsed namespace, so
#: that `--clip-norm None` (set to None) differs from no `--clip-norm` (the preset's value).
UNSET = argparse.SUPPRESS
#: String fields offered as argparse choices (the others' names are checked by their type).
CHOICE_FIELDS = ("dataset", "model", "partition", "strategy")
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
    return {"partition": PARTITIONS, "strategy": STRATEGIES}.get(field)


_LABEL = {"defence": "defence", "attack": "attack", "preaggregation": "pre-aggregator", "dataset": "data set"}


def _check_names(field: str, names: Sequence[str]) -> None:
    allowed = allowed_names(field)
    bad = [n for n in names if allowed is not None and n not in allowed]
    if bad:
        hint = ""
        if field == "defence" and bad[0] in allowed_names("preaggregation"):
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
        value = tuple(v.strip() for v in value.split(",") if v.strip())
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
                parser.add_argument(PARAM_FLAGS[name], dest=name, action="append", type=parse_preagg_param, default=UNSET,
                                    metavar="NAME.KEY=VALUE", help="pre-aggregator hyper-parameter (repeatable)")
            else:
                what = {"attack_params": "attack", "defence_params": "defence", "dataset_params": "data set loader"}
                parser.add_argument(PARAM_FLAGS[name], dest=name, action="append", type=parse_param, default=UNSET,
                                    metavar="KEY=VALUE", help=f"{what[name]} hyper-parameter (repeatable)")
            if name == "attack_params" and nu:
                parser.add_argument("--nu", type=_nu, help="STRIKE's strength (shortcut for --attack-param nu=...)")
            continue
        custom = (helps or {}).get(name)
        if ft.base is bool:
            parser.add_argument(flag(name), dest=name, action="store_true", default=UNSET,
                                help=custom or f"Config.{name} (default {dflt!r})")
            continue
        allowed = allowed_names(name)
        if name in CHOICE_FIELDS:  # a short fixed list: argparse shows it as {a,b,...}
            parser.add_argument(flag(name), dest=name, choices=allowed, default=UNSET,
                                help=custom or f"Config.{name} (default {dflt!r})")
            continue
        if name == "preaggregation":
            text = "comma-separated pre-aggregators, from: " + ", ".join(allowed) + " (default: none)"
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


__all__ = [
    "CHOICE_FIELDS", "FLAGS", "PARAM_FLAGS", "UNSET", "add_config_options", "allowed_names", "coerce_field", "field_type", "flag",
    "overrides", "parse_param", "parse_preagg_param", "parse_set", "parse_value",
]

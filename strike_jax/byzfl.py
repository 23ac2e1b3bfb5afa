"""ByzFL 0.0.11 benchmark configs on strike_jax: reading a config, its grid expansion, and the
mapping of every run to our names (issue 22, item 4, the parsing half).

ByzFL (EPFL) runs a benchmark from one JSON file (`byzfl.benchmark.run_benchmark`); its
list-valued keys form a grid. This module reproduces ByzFL 0.0.11's expansion rules exactly
(written from its `benchmark.py`, no code shared) and maps each run to strike_jax's data sets,
models, partitions, attacks, pre-aggregators and rules:

    cfg = load_config("config.json")
    runs = expand(cfg)          # [RunSpec], in ByzFL's order, one per (setting, training seed, data seed)

**Expansion** (`combinations` then `expand`), in ByzFL's order:

1. Optional keys get ByzFL's defaults first (`benchmark_config`: `nb_honest_clients` 10,
   `set_honest_clients_as_clients` False, `training_seed` 0, `nb_training_seeds` 1,
   `data_distribution_seed` 0, `nb_data_distribution_seeds` 1, `size_train_set` 0.8;
   `evaluation_and_results.results_directory` "./results").
2. Every list-valued key is an axis, at any depth, and the keys of a dict combine as a Cartesian
   product, the first key varying slowest. A list item that is a dict is itself expanded (so
   `"aggregator": [{"name": "TrMean"}, {"name": "GeometricMedian", "parameters": {"nu": [0.1, 1.0]}}]`
   gives three aggregators); an item that is a list is one value. `pre_aggregators` and
   `milestones` are values, not axes (a pipeline, a schedule), unless their first item is itself a
   list: then each item is one value (`"pre_aggregators": [[...], [...]]` is an axis of pipelines).
   An empty list is one value.
3. Missing `parameters` become `{}`, a missing `pre_aggregators` `[]`, a missing
   `training_algorithm` DSGD (FedAvg must give `proportion_selected_clients` in (0, 1] and a
   positive int `local_steps_per_client`).
4. Without a `benchmark_config.tolerated_f` key, `tolerated_f = f`; with one, runs with
   `f > tolerated_f` are dropped. The aggregator and every pre-aggregator get `f = tolerated_f`.
5. `nb_workers = nb_honest_clients + f` (with `set_honest_clients_as_clients`, `nb_workers` is
   the given `nb_honest_clients` and the honest count becomes `nb_workers - f`).
6. Seeds fan out: each setting becomes `nb_training_seeds` runs (`training_seed + i`), each of
   those `nb_data_distribution_seeds` runs (`data_distribution_seed + j`).

One deliberate difference: ByzFL does not copy the value of a list axis whose items are lists
(an axis of pre-aggregator pipelines), nor a nested dict when no list axis follows it at the top
level, so runs share those objects and its step 4 leaves the *last* run's `tolerated_f` in all of
them (checked: with `tolerated_f` and pipelines both axes, ByzFL's pre-aggregators get the wrong
`f`). Here every run owns its copy and gets its own `tolerated_f` (ByzFL's intended behaviour);
apart from that the settings are identical to ByzFL 0.0.11's own functions' (checked on the
documented example and two larger grids with ByzFL's functions run from its wheel).

**Mapping** (`RunSpec`): ByzFL's names to ours, with ByzFL's conventions selected through our
options (strike_jax's defaults differ; see `AGGREGATORS`, `PREAGGREGATORS`, `ATTACKS`). Unsupported
keys and values raise a one-line `ValueError` naming them. ByzFL itself ignores unknown keys; here
they are errors, since a misspelt key would silently run a different experiment.

Known convention differences that remain (for the report of a side-by-side comparison):
`logreg_mnist` trains a softmax (ByzFL: sigmoid outputs under NLLLoss); `Optimal_*` attacks search
a fixed grid (`strike_jax.attacks.gradient`) instead of ByzFL's 20-step line search; `MoNNA`
trusts our default row (ByzFL: `idx`, the first honest client in its row order); `CAF`/`SMEA` use
exact top eigenvalues (ByzFL: one power iteration from a random vector); Dirichlet splits
are drawn without ByzFL's class-index order (the same distribution, `min_size=0`: no retry).

ByzFL's Fashion-MNIST preprocessing (`RandomHorizontalFlip`, `ToTensor`: pixels in [0, 1], no
normalisation, for the training, validation *and* test images) is `random_hflip`
(`strike_jax.data.augment`, re-exported here; in the simulation `Config.augmentation`, training images only).

References:
  ByzFL 0.0.11 (`pip download byzfl==0.0.11`): `byzfl/benchmark/benchmark.py` (expansion),
  `benchmark/train.py` (one run), `benchmark/managers.py` (defaults, result folders),
  `fed_framework/*` (DSGD, models, data distribution), `aggregators/*`, `attacks/attacks.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

# ByzFL's `RandomHorizontalFlip()` (re-exported; the simulation's `Config.augmentation=("hflip",)`
# draws the same flips as part of a round's plan).
from strike_jax.data.augment import random_hflip
from strike_jax.data.idx import find_idx_files
from strike_jax.errors import InputError

if TYPE_CHECKING:
    from strike_jax.config import Config

Array = jax.Array

BYZFL_VERSION = "0.0.11"

#: Keys whose list value is one value (not an axis) unless its first item is a list (ByzFL's
#: `restriction_list`).
RESTRICTED = ("pre_aggregators", "milestones")

_SECTIONS = ("benchmark_config", "model", "aggregator", "pre_aggregators", "honest_clients", "attack",
             "evaluation_and_results")

#: Every key ByzFL 0.0.11 reads, per section (`ParamsManager`, `train.py`, `benchmark.py`);
#: `nb_workers` is written by the expansion (a given value is overwritten, as in ByzFL).
_KNOWN = {
    "benchmark_config": ("training_algorithm", "nb_steps", "device", "training_seed", "nb_training_seeds",
                         "nb_honest_clients", "f", "tolerated_f", "set_honest_clients_as_clients",
                         "size_train_set", "data_distribution_seed", "nb_data_distribution_seeds",
                         "data_distribution", "nb_workers"),
    "model": ("name", "dataset_name", "nb_labels", "loss", "learning_rate", "learning_rate_decay", "milestones",
              "optimizer_name"),
    "honest_clients": ("momentum", "weight_decay", "batch_size"),
    "evaluation_and_results": ("evaluation_delta", "batch_size_evaluation", "evaluate_on_test",
                               "store_per_client_metrics", "store_models", "data_folder", "results_directory"),
    "training_algorithm": ("name", "parameters"),
    "data_distribution": ("name", "distribution_parameter"),
    "stage": ("name", "parameters"),
}

#: ByzFL's `ensure_optional_config_parameters` (applied before the expansion).
_OPTIONAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "benchmark_config": {"nb_honest_clients": 10, "set_honest_clients_as_clients": False, "training_seed": 0,
                         "nb_training_seeds": 1, "data_distribution_seed": 0, "nb_data_distribution_seeds": 1,
                         "size_train_set": 0.8},
    "evaluation_and_results": {"results_directory": "./results"},
}

#: ByzFL's `ParamsManager` defaults for the keys a run may omit.
_RUN_DEFAULTS = {
    ("benchmark_config", "nb_steps"): 1000,
    ("benchmark_config", "f"): 0,
    ("model", "name"): "cnn_mnist",
    ("model", "dataset_name"): "mnist",
    ("model", "nb_labels"): 10,
    ("model", "loss"): "NLLLoss",
    ("model", "optimizer_name"): "SGD",
    ("model", "learning_rate"): 0.1,
    ("model", "learning_rate_decay"): 1.0,
    ("model", "milestones"): [],
    ("honest_clients", "momentum"): 0.9,
    ("honest_clients", "weight_decay"): 1e-4,
    ("honest_clients", "batch_size"): 32,
    ("evaluation_and_results", "evaluation_delta"): 50,
    ("evaluation_and_results", "batch_size_evaluation"): 128,
    ("evaluation_and_results", "evaluate_on_test"): True,
    ("evaluation_and_results", "store_per_client_metrics"): True,
    ("evaluation_and_results", "store_models"): False,
    ("evaluation_and_results", "data_folder"): "./data",
}

# ----------------------------------------------------------------------------------- name maps

#: ByzFL data set -> (ours, number of classes, torchvision folder, our loader's keyword arguments,
#: ByzFL's training-set augmentation).
DATASETS: dict[str, tuple[str, int, str | None, dict[str, Any], tuple[str, ...]]] = {
    "mnist": ("mnist", 10, "MNIST", {"standardize": True}, ()),
    "fashionmnist": ("fashion_mnist", 10, "FashionMNIST", {"standardize": False}, ("hflip",)),
    "cifar10": ("cifar10", 10, None, {}, ("crop32_pad4", "hflip")),
}
#: ByzFL's augmentation of the evaluation (validation and test) images: Fashion-MNIST flips them too.
EVAL_AUGMENTATION = {"fashionmnist": ("hflip",)}

#: ByzFL model -> ours (ByzFL builds every model with its default 10 outputs).
MODELS = {"cnn_mnist": "cnn_mnist", "fc_mnist": "fc_mnist", "logreg_mnist": "logreg_mnist",
          "cnn_cifar": "cnn_cifar", "ResNet18": "resnet18_cifar"}

#: Losses: ByzFL's MNIST models output log-probabilities (NLLLoss on them is the cross-entropy);
#: the CIFAR models output logits (CrossEntropyLoss).
LOSSES = ("NLLLoss", "CrossEntropyLoss")

# ByzFL name -> (our name, {their parameter: (our hyper-parameter, their default)}, fixed options).
# A parameter mapped to None must keep ByzFL's default (unsupported otherwise).
_StageTable = dict[str, tuple[str, dict[str, tuple[str | None, Any]], dict[str, Any]]]
AGGREGATORS: _StageTable = {
    "Average": ("mean", {}, {}),
    "Median": ("median", {}, {}),  # torch.median is the lower median, our default
    "TrMean": ("trmean", {}, {}),
    "GeometricMedian": ("rfa", {"nu": ("eps", 0.1), "T": ("iters", 3)}, {"start": "zero"}),
    "Krum": ("krum", {}, {"neighbours": "n-f-1"}),
    "MultiKrum": ("multikrum", {}, {"neighbours": "n-f-1"}),
    "CenteredClipping": ("cclip", {"tau": ("tau", 100.0), "L": ("iters", 1), "m": (None, None)}, {}),
    "MDA": ("mda", {}, {}),
    "MoNNA": ("monna", {"idx": (None, 0)}, {}),
    "Meamed": ("meamed", {}, {}),
    "CAF": ("caf", {}, {}),
    "SMEA": ("smea", {}, {}),
}
PREAGGREGATORS: _StageTable = {
    "NNM": ("nnm", {}, {}),
    "Bucketing": ("bucketing", {"s": ("s", 1)}, {"rescale_f": False}),
    "Clipping": ("clipping", {"c": ("c", 2.0)}, {}),
    "ARC": ("arc", {}, {}),
}
#: ByzFL's DSGD sends gradient-space rows (momenta), hence ALIE's `sign="plus"`.
ATTACKS: _StageTable = {
    "NoAttack": ("none", {}, {}),
    "SignFlipping": ("signflip", {}, {}),
    "InnerProductManipulation": ("ipm", {"tau": ("eps", 2.0)}, {}),
    "ALittleIsEnough": ("lie", {"tau": ("z", 1.5)}, {"ddof": 1, "sign": "plus"}),
    "Optimal_InnerProductManipulation": ("opt_ipm", {"evals": (None, 20), "start": (None, 0.0),
                                                     "delta": (None, 10.0), "ratio": (None, 0.8)}, {}),
    "Optimal_ALittleIsEnough": ("opt_lie", {"evals": (None, 20), "start": (None, 0.0), "delta": (None, 10.0),
                                            "ratio": (None, 0.8)}, {}),
    "Mimic": ("mimic", {"epsilon": ("target", 0)}, {}),
    "Inf": ("nonfinite", {}, {"value": "inf"}),
    "Gaussian": ("gaussian", {"mu": ("mu", 0.0), "sigma": ("sigma", 1.0)}, {}),
    "LabelFlipping": ("labelflip", {}, {"mode": "honest_mean"}),
}
#: Parameters ByzFL's runner injects into every stage (`f`) or attack (the defence it attacks).
_INJECTED = ("f", "agg", "pre_agg_list", "aggregator_info")

PARTITIONS = ("iid", "gamma_similarity_niid", "dirichlet_niid", "extreme_niid")


# --------------------------------------------------------------------------------- the config


def load_config(path: str | os.PathLike) -> dict:
    """Reads a ByzFL benchmark config (JSON).

    Returns:
      The config as a dict (unchanged; `expand` applies the defaults).

    Raises:
      ValueError: not a JSON object, or a required section (`benchmark_config`,
        `evaluation_and_results`, `aggregator`, `attack`; ByzFL fails without them) missing.
      FileNotFoundError: no file at `path`.
    """
    with open(os.fspath(path), encoding="utf-8") as fh:
        try:
            cfg = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(path)!r} is not valid JSON: {err}") from None
    check_sections(cfg)
    return cfg


def check_sections(cfg: Any) -> None:
    """One-line errors for a config that is not an object, lacks a required section or has an
    unknown one."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a ByzFL config must be a JSON object; got {type(cfg).__name__}.")
    missing = [k for k in ("benchmark_config", "evaluation_and_results", "aggregator", "attack") if k not in cfg]
    if missing:
        raise ValueError(f"ByzFL config: missing section(s) {missing}; ByzFL {BYZFL_VERSION} requires them.")
    unknown = sorted(set(cfg) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"ByzFL config: unknown section(s) {unknown}; allowed: {', '.join(_SECTIONS)}.")


def _variants(value: Any, key: str | None = None) -> list:
    """All values `value` stands for under ByzFL's rules (see the module docstring, step 2)."""
    if isinstance(value, dict):
        keys = list(value)
        per_key = [_variants(value[k], k) for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*per_key)]
    if isinstance(value, list):
        if not value or (key in RESTRICTED and not isinstance(value[0], list)):
            return [value]
        out = []
        for item in value:
            out.extend(_variants(item) if isinstance(item, dict) else [item])
        return out
    return [value]


def combinations(cfg: Mapping[str, Any]) -> list[dict]:
    """ByzFL's `generate_all_combinations(cfg, ["pre_aggregators", "milestones"])`: every setting of
    the grid, in ByzFL's order, each an independent deep copy."""
    return [copy.deepcopy(v) for v in _variants(dict(cfg))]


def _with_optional_defaults(cfg: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(dict(cfg))
    for section, defaults in _OPTIONAL_DEFAULTS.items():
        if not isinstance(out.get(section), dict):
            raise ValueError(f"ByzFL config: {section} must be an object; got {out.get(section)!r}.")
        for k, v in defaults.items():
            out[section].setdefault(k, v)
    return out


def _ensure_key_parameters(s: dict) -> None:
    for name in ("aggregator", "attack"):
        if not isinstance(s[name], dict) or "name" not in s[name]:
            raise ValueError(f"ByzFL config: each {name} must be an object with a 'name'; got {s[name]!r}.")
        s[name].setdefault("parameters", {})
    s.setdefault("pre_aggregators", [])
    if not isinstance(s["pre_aggregators"], list):
        raise ValueError(f"ByzFL config: pre_aggregators must be a list; got {s['pre_aggregators']!r}.")
    for p in s["pre_aggregators"]:
        if not isinstance(p, dict) or "name" not in p:
            raise ValueError(f"ByzFL config: each pre-aggregator must be an object with a 'name'; got {p!r}.")
        p.setdefault("parameters", {})
    bc = s["benchmark_config"]
    bc.setdefault("training_algorithm", {"name": "DSGD", "parameters": {}})
    ta = bc["training_algorithm"]
    if ta.get("name") == "FedAvg":
        tp = ta.get("parameters", {})
        if "proportion_selected_clients" not in tp:
            raise ValueError("ByzFL config: FedAvg needs training_algorithm.parameters.proportion_selected_clients.")
        p = tp["proportion_selected_clients"]
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
            raise ValueError(f"ByzFL config: proportion_selected_clients={p!r} is not allowed; "
                             "allowed: a number in (0, 1].")
        if "local_steps_per_client" not in tp:
            raise ValueError("ByzFL config: FedAvg needs training_algorithm.parameters.local_steps_per_client.")
        k = tp["local_steps_per_client"]
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"ByzFL config: local_steps_per_client={k!r} is not allowed; allowed: an int >= 1.")


def settings(cfg: Mapping[str, Any]) -> list[dict]:
    """ByzFL's expanded run settings (the dicts its `run_benchmark` trains), in its order: defaults,
    the grid, `tolerated_f` (filter or copy of `f`), stage `f`, `nb_workers`, then the seeds.

    Raises:
      ValueError: a missing or malformed section (one line).
    """
    check_sections(cfg)
    data = _with_optional_defaults(cfg)
    declared = "tolerated_f" in data["benchmark_config"]
    runs = []
    for s in combinations(data):
        _ensure_key_parameters(s)
        bc = s["benchmark_config"]
        f = bc.get("f", 0)
        if not declared:
            bc["tolerated_f"] = f
        elif bc["tolerated_f"] < f:
            continue
        s["aggregator"]["parameters"]["f"] = bc["tolerated_f"]
        for p in s["pre_aggregators"]:
            p["parameters"]["f"] = bc["tolerated_f"]
        if bc["set_honest_clients_as_clients"]:
            bc["nb_workers"] = bc["nb_honest_clients"]
            bc["nb_honest_clients"] = bc["nb_workers"] - f
        else:
            bc["nb_workers"] = bc["nb_honest_clients"] + f
        runs.append(s)
    return _fan_out(_fan_out(runs, "nb_training_seeds", "training_seed"),
                    "nb_data_distribution_seeds", "data_distribution_seed")


def _fan_out(runs: list, count_key: str, seed_key: str) -> list:
    """Each run repeated `benchmark_config[count_key]` times with `seed_key` counting up from its value."""
    out = []
    for s in runs:
        for i in range(s["benchmark_config"][count_key]):
            t = copy.deepcopy(s)
            t["benchmark_config"][seed_key] = s["benchmark_config"][seed_key] + i
            out.append(t)
    return out


# ------------------------------------------------------------------------------------ mapping


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of a run in our names: `name` (registry) and `params` (its hyper-parameters)."""

    name: str
    params: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One ByzFL run in strike_jax's terms.

    Attributes:
      index: position in ByzFL's run order.
      setting: the expanded ByzFL setting (what ByzFL saves as the run's `config.json`).
      folder: ByzFL's result folder name for it (`FileManager`), without the results directory.
      algorithm: "dsgd" (one mini-batch gradient per honest client and step, worker momentum kept
        across the run, the server's SGD step on the aggregate) or "fedavg".
      steps: `nb_steps` (DSGD steps, or FedAvg rounds).
      local_steps: mini-batch steps per client and round (1 for DSGD; FedAvg's
        `local_steps_per_client`).
      participation: FedAvg's `proportion_selected_clients` (1.0 for DSGD).
      num_honest: honest clients (the only ones holding data).
      f: real Byzantine clients.
      tolerated_f: the `f` given to the aggregator and pre-aggregators.
      num_clients: `num_honest + f` (ByzFL's `nb_workers`).
      dataset: our data set name (`strike_jax.data.load`); `load_kwargs` its loader's arguments
        (preprocessing), `data_dir` the folder found from `data_folder` (None: our usual places).
      num_classes: classes (ByzFL's `nb_labels`; also its label-flip map `C - 1 - y`).
      model: our model name (`strike_jax.models.get`).
      loss: ByzFL's loss name (both allowed ones are our cross-entropy on logits; see the module
        docstring for `logreg_mnist`).
      partition: `{"kind": "iid" | "gamma_similarity_niid" | "extreme_niid" | "dirichlet", ...}`
        with `gamma` / `beta` (and `min_size=0` for Dirichlet); `strike_jax.data.partition`.
      data_seed: ByzFL's `data_distribution_seed` (partition, validation split).
      seed: ByzFL's `training_seed` (initial model, batches, attack randomness).
      train_fraction: ByzFL's `size_train_set` (the rest is the validation set, `partition.holdout`).
      lr, lr_decay, milestones: the server's (and FedAvg clients') SGD step size, decayed by
        `lr_decay` at each step in `milestones` (`MultiStepLR`).
      momentum: the honest clients' momentum `b` (`m <- b m + (1 - b) g`).
      weight_decay: the server SGD's weight decay (ByzFL adds it at the server step, not to the
        clients' gradients).
      batch_size: the honest clients' mini-batch size.
      attack, preaggregators, rule: our stages, with ByzFL's conventions as hyper-parameters; the
        pre-aggregators in ByzFL's order (which may differ from SPEC §7's).
      eval_every: `evaluation_delta` (steps between evaluations; also at step 0 and after the last).
      eval_batch: `batch_size_evaluation`.
      evaluate_on_test: test accuracy as well as validation accuracy.
      augmentation: the training images' random augmentation ("hflip": `random_hflip`;
        "crop32_pad4": a random 32x32 crop of the 4-padded image).
      eval_augmentation: the same for the validation and test images (ByzFL flips Fashion-MNIST's).
      results_directory: ByzFL's `results_directory`.
    """

    index: int
    setting: Mapping[str, Any]
    folder: str
    algorithm: str
    steps: int
    local_steps: int
    participation: float
    num_honest: int
    f: int
    tolerated_f: int
    num_clients: int
    dataset: str
    load_kwargs: Mapping[str, Any]
    data_dir: str | None
    num_classes: int
    model: str
    loss: str
    partition: Mapping[str, Any]
    data_seed: int
    seed: int
    train_fraction: float
    lr: float
    lr_decay: float
    milestones: tuple[int, ...]
    momentum: float
    weight_decay: float
    batch_size: int
    attack: StageSpec
    preaggregators: tuple[StageSpec, ...]
    rule: StageSpec
    eval_every: int
    eval_batch: int
    evaluate_on_test: bool
    augmentation: tuple[str, ...]
    eval_augmentation: tuple[str, ...]
    results_directory: str


def _get(s: Mapping[str, Any], section: str, key: str) -> Any:
    sec = s.get(section, {})
    if key in sec:
        return sec[key]
    return _RUN_DEFAULTS[(section, key)]


def _check_keys(where: str, d: Mapping[str, Any], allowed) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"ByzFL config: unsupported key(s) {unknown} in {where}; allowed: {', '.join(allowed)}.")


def _num(where: str, value: Any, kind: type, low: float | None = None, high: float | None = None,
         strict_low: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value) == int(value)
    if ok and low is not None:
        ok = value > low if strict_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = "" if low is None else f" {'>' if strict_low else '>='} {low:g}"
        rng += "" if high is None else f"{' and' if rng else ''} <= {high:g}"
        raise ValueError(f"ByzFL config: {where}={value!r} is not allowed; allowed: "
                         f"{'an int' if kind is int else 'a number'}{rng}.")
    return int(value) if kind is int else float(value)


def map_stage(kind: str, info: Mapping[str, Any]) -> StageSpec:
    """One ByzFL aggregator / pre-aggregator / attack (`{"name", "parameters"}`) in our names.

    Args:
      kind: "rule", "preaggregator" or "attack".
      info: the ByzFL object (after the expansion: scalar parameters).

    Raises:
      ValueError: an unsupported name or parameter (one line naming it and what is allowed).
    """
    table = {"rule": AGGREGATORS, "preaggregator": PREAGGREGATORS, "attack": ATTACKS}[kind]
    label = {"rule": "aggregator", "preaggregator": "pre-aggregator", "attack": "attack"}[kind]
    _check_keys(label, info, _KNOWN["stage"])
    name = info["name"]
    if name not in table:
        raise ValueError(f"ByzFL config: {label} {name!r} is not supported; allowed: {', '.join(table)}.")
    ours, pmap, fixed = table[name]
    params = dict(info.get("parameters", {}))
    if not isinstance(params, dict):
        raise ValueError(f"ByzFL config: {label} {name} parameters must be an object; got {params!r}.")
    out = dict(fixed)
    for k, v in params.items():
        if k in _INJECTED:
            continue
        if k not in pmap:
            allowed = ", ".join(p for p, (o, _) in pmap.items() if o is not None) or "none"
            raise ValueError(f"ByzFL config: {label} {name} parameter {k!r} is not supported; allowed: {allowed}.")
        target, default = pmap[k]
        if target is None:
            if v != default:
                raise ValueError(f"ByzFL config: {label} {name} parameter {k}={v!r} is not supported; "
                                 f"only ByzFL's default {default!r}.")
            continue
        out[target] = v
    for target, default in pmap.values():
        if target is not None and target not in out:
            out[target] = default
    # Our registry validates the values (one line naming them); map its message to the config's names.
    from strike_jax import registry

    try:
        registry.validate(kind, ours, out) if ours != "none" else None
    except ValueError as err:
        raise ValueError(f"ByzFL config: {label} {name}: {err}") from None
    return StageSpec(ours, dict(out))


def _partition(dd: Any) -> dict:
    if not isinstance(dd, dict):
        raise ValueError(f"ByzFL config: data_distribution must be an object; got {dd!r}.")
    _check_keys("data_distribution", dd, _KNOWN["data_distribution"])
    name = dd.get("name", "iid")
    if name not in PARTITIONS:
        raise ValueError(f"ByzFL config: data_distribution {name!r} is not supported; "
                         f"allowed: {', '.join(PARTITIONS)}.")
    p = dd.get("distribution_parameter", 1.0)
    if name == "iid":
        return {"kind": "iid"}
    if name == "extreme_niid":
        return {"kind": "extreme_niid"}
    if name == "gamma_similarity_niid":
        return {"kind": "gamma_similarity_niid",
                "gamma": _num("distribution_parameter", p, float, 0.0, 1.0)}
    return {"kind": "dirichlet", "beta": _num("distribution_parameter", p, float, 0.0, strict_low=True),
            "min_size": 0}


def find_data_dir(data_folder: str | None, dataset: str) -> str | None:
    """The folder of IDX files for a ByzFL data set under `data_folder`, if it holds them.

    Looks in torchvision's layout first (`<data_folder>/<MNIST|FashionMNIST>/raw`, as ByzFL's users
    have it), then in `data_folder` itself. Returns None when neither holds the four files (then
    our loaders look in their usual places: Debian's Fashion-MNIST package, TFDS).
    """
    folder = DATASETS[dataset][2] if dataset in DATASETS else None
    if data_folder is None or folder is None:
        return None
    for d in (os.path.join(data_folder, folder, "raw"), data_folder):
        if os.path.isdir(d) and find_idx_files(d)[0] is not None:
            return d
    return None


def folder_name(s: Mapping[str, Any]) -> str:
    """ByzFL's result folder of a run (`FileManager`): data set, model, `n`, `f`, `d`, the
    distribution and its parameter (None for iid / extreme_niid), rule, pre-aggregators, attack,
    lr, momentum, weight decay."""
    bc = s["benchmark_config"]
    dd = bc.get("data_distribution", {"name": "iid", "distribution_parameter": 1.0})
    dname = dd.get("name", "iid")
    dparam = None if dname in ("iid", "extreme_niid") else dd.get("distribution_parameter", 1.0)
    pre = "_".join(p["name"] for p in s["pre_aggregators"])
    return (f"{_get(s, 'model', 'dataset_name')}_{_get(s, 'model', 'name')}_n_{bc['nb_workers']}_f_{bc.get('f', 0)}_"
            f"d_{bc['tolerated_f']}_{dname}_{dparam}_{s['aggregator']['name']}_{pre}_{s['attack']['name']}_"
            f"lr_{_get(s, 'model', 'learning_rate')}_mom_{_get(s, 'honest_clients', 'momentum')}_"
            f"wd_{_get(s, 'honest_clients', 'weight_decay')}")


def map_setting(s: Mapping[str, Any], index: int = 0) -> RunSpec:
    """One expanded ByzFL setting (`settings`) as a `RunSpec`.

    Raises:
      ValueError: an unsupported key or value (one line naming it and what is allowed).
    """
    for section in ("benchmark_config", "model", "honest_clients", "evaluation_and_results"):
        _check_keys(section, s.get(section, {}), _KNOWN[section])
    bc = s["benchmark_config"]
    ta = bc["training_algorithm"]
    _check_keys("training_algorithm", ta, _KNOWN["training_algorithm"])
    algo = ta.get("name", "DSGD")
    if algo not in ("DSGD", "FedAvg"):
        raise ValueError(f"ByzFL config: training_algorithm {algo!r} is not supported; allowed: DSGD, FedAvg.")
    tp = ta.get("parameters", {}) or {}
    if algo == "DSGD":
        _check_keys("training_algorithm.parameters (DSGD)", tp, ())
        local_steps, participation = 1, 1.0
    else:
        _check_keys("training_algorithm.parameters (FedAvg)", tp,
                    ("proportion_selected_clients", "local_steps_per_client"))
        local_steps, participation = tp["local_steps_per_client"], float(tp["proportion_selected_clients"])

    dataset = _get(s, "model", "dataset_name")
    if dataset not in DATASETS:
        raise ValueError(f"ByzFL config: dataset_name {dataset!r} is not supported; allowed: {', '.join(DATASETS)}.")
    ours_ds, classes, _, load_kwargs, augmentation = DATASETS[dataset]
    model = _get(s, "model", "name")
    if model not in MODELS:
        raise ValueError(f"ByzFL config: model {model!r} is not supported; allowed: {', '.join(MODELS)}.")
    nb_labels = _num("nb_labels", _get(s, "model", "nb_labels"), int, 2)
    if nb_labels != classes:
        raise ValueError(f"ByzFL config: nb_labels={nb_labels} is not allowed for {dataset}; allowed: {classes} "
                         "(ByzFL's models have 10 outputs).")
    loss = _get(s, "model", "loss")
    if loss not in LOSSES:
        raise ValueError(f"ByzFL config: loss {loss!r} is not supported; allowed: {', '.join(LOSSES)}.")
    if _get(s, "model", "optimizer_name") != "SGD":
        raise ValueError(f"ByzFL config: optimizer_name {_get(s, 'model', 'optimizer_name')!r} is not supported; "
                         "allowed: SGD.")
    milestones = _get(s, "model", "milestones")
    if not isinstance(milestones, list) or not all(isinstance(m, int) and not isinstance(m, bool) for m in milestones):
        raise ValueError(f"ByzFL config: milestones={milestones!r} is not allowed; allowed: a list of ints.")
    attack_name = s["attack"]["name"]
    f = _num("f", bc.get("f", 0), int, 0)
    if f > 0 and attack_name == "NoAttack":
        raise ValueError(f"ByzFL config: f={f} with attack NoAttack is not allowed (ByzFL raises); "
                         "set f to 0 or name an attack.")
    if algo == "FedAvg" and attack_name == "LabelFlipping":
        raise ValueError("ByzFL config: FedAvg with attack LabelFlipping is not allowed (ByzFL raises).")
    momentum = _num("momentum", _get(s, "honest_clients", "momentum"), float, 0.0)
    if momentum >= 1:
        raise ValueError(f"ByzFL config: momentum={momentum!r} is not allowed; allowed: a number in [0, 1).")
    er = s["evaluation_and_results"]
    data_folder = er.get("data_folder", _RUN_DEFAULTS[("evaluation_and_results", "data_folder")])
    return RunSpec(
        index=index,
        setting=copy.deepcopy(dict(s)),
        folder=folder_name(s),
        algorithm=algo.lower(),
        steps=_num("nb_steps", _get(s, "benchmark_config", "nb_steps"), int, 1),
        local_steps=local_steps,
        participation=participation,
        num_honest=_num("nb_honest_clients", bc["nb_honest_clients"], int, 1),
        f=f,
        tolerated_f=_num("tolerated_f", bc["tolerated_f"], int, 0),
        num_clients=int(bc["nb_workers"]),
        dataset=ours_ds,
        load_kwargs=dict(load_kwargs),
        data_dir=find_data_dir(data_folder, dataset),
        num_classes=nb_labels,
        model=MODELS[model],
        loss=loss,
        partition=_partition(bc.get("data_distribution", {"name": "iid", "distribution_parameter": 1.0})),
        data_seed=_num("data_distribution_seed", bc["data_distribution_seed"], int, 0),
        seed=_num("training_seed", bc["training_seed"], int, 0),
        train_fraction=_num("size_train_set", bc["size_train_set"], float, 0.0, 1.0, strict_low=True),
        lr=_num("learning_rate", _get(s, "model", "learning_rate"), float, 0.0, strict_low=True),
        lr_decay=_num("learning_rate_decay", _get(s, "model", "learning_rate_decay"), float, 0.0, 1.0, strict_low=True),
        milestones=tuple(milestones),
        momentum=momentum,
        weight_decay=_num("weight_decay", _get(s, "honest_clients", "weight_decay"), float, 0.0),
        batch_size=_num("batch_size", _get(s, "honest_clients", "batch_size"), int, 1),
        attack=map_stage("attack", s["attack"]),
        preaggregators=tuple(map_stage("preaggregator", p) for p in s["pre_aggregators"]),
        rule=map_stage("rule", s["aggregator"]),
        eval_every=_num("evaluation_delta", _get(s, "evaluation_and_results", "evaluation_delta"), int, 1),
        eval_batch=_num("batch_size_evaluation", _get(s, "evaluation_and_results", "batch_size_evaluation"), int, 1),
        evaluate_on_test=bool(_get(s, "evaluation_and_results", "evaluate_on_test")),
        augmentation=augmentation,
        eval_augmentation=EVAL_AUGMENTATION.get(dataset, ()),
        results_directory=str(er["results_directory"]),
    )


def expand(cfg: Mapping[str, Any]) -> list[RunSpec]:
    """Every run of a ByzFL config, in ByzFL's order, mapped to our names (`settings` +
    `map_setting`).

    Raises:
      ValueError: a malformed config or an unsupported key/value (one line naming it), before any
        run is built.
    """
    return [map_setting(s, i) for i, s in enumerate(settings(cfg))]


# ------------------------------------------------------------------------------- to our Config

#: Config fields the mapping needs beyond the DSGD ones, with the ByzFL feature that needs each
#: (issue 22, item 2, added separately): while a field is missing, a config using the feature is a
#: one-line error, never a run that silently differs.
_NEEDS = {
    "partition_gamma": ("gamma", "data_distribution gamma_similarity_niid / extreme_niid"),
    "validation": ("validation_fraction", "size_train_set < 1 (ByzFL's validation split)"),
    "eval_at_start": ("eval_at_start", "ByzFL's evaluation at step 0"),
    "given_order": ("preaggregation_order", "pre_aggregators in an order other than strike_jax's"),
    "augmentation": ("augmentation", "ByzFL's random horizontal flip"),
}


def _config_fields() -> frozenset[str]:
    from strike_jax.config import Config

    return frozenset(f.name for f in dataclasses.fields(Config))


def _need(feature: str, spec: RunSpec) -> None:
    field, what = _NEEDS[feature]
    if field not in _config_fields():
        raise InputError(f"ByzFL config: {what} is not supported yet (needs strike_jax's Config.{field}); "
                         f"run {spec.folder!r} uses it.")


def _byzfl_fields(spec: RunSpec) -> dict[str, Any]:
    """The Config fields of ByzFL's data handling and evaluation (partition, validation split,
    evaluation at step 0, augmentation, the pre-aggregators' given order)."""
    from strike_jax.config import preaggregation_order

    kw: dict[str, Any] = {}
    kind = spec.partition["kind"]
    if kind in ("gamma_similarity_niid", "extreme_niid"):
        _need("partition_gamma", spec)
        kw["partition"] = kind
        if kind == "gamma_similarity_niid":
            kw["gamma"] = spec.partition["gamma"]
    elif kind == "dirichlet":
        kw.update(partition="dirichlet", beta=spec.partition["beta"])
    else:
        kw["partition"] = "iid"
    if spec.train_fraction < 1:
        _need("validation", spec)
        kw["validation_fraction"] = 1.0 - spec.train_fraction
    _need("eval_at_start", spec)
    kw["eval_at_start"] = True
    if spec.augmentation:
        _need("augmentation", spec)
        unsupported = [a for a in spec.augmentation if a != "hflip"]
        if unsupported:
            raise InputError(f"ByzFL config: {spec.dataset}'s training augmentation {unsupported} (ByzFL's "
                             "RandomCrop(32, padding=4)) is not supported; allowed: data sets with at most a random "
                             "horizontal flip (mnist, fashionmnist).")
        kw["augmentation"] = tuple(spec.augmentation)
    pre = tuple(p.name for p in spec.preaggregators)
    if len(set(pre)) != len(pre):
        raise InputError(f"ByzFL config: pre_aggregators {[p.name for p in spec.preaggregators]} repeat a stage; "
                         "allowed: each pre-aggregator once.")
    if pre and preaggregation_order(pre) != pre:
        _need("given_order", spec)
        kw["preaggregation_order"] = "given"
    # ByzFL also flips Fashion-MNIST's validation and test images at random; strike_jax evaluates them
    # as they are (docs/byzfl.md: a remaining convention difference).
    return kw


def to_config(spec: RunSpec) -> Config:
    """The strike_jax `Config` of one ByzFL run.

    DSGD with worker momentum (`algorithm="dsgd"`: the clients' momentum `b`, the server's SGD step
    `lr` with weight decay and `MultiStepLR` milestones), `num_clients = honest + f` with the
    Byzantine clients `0 .. f-1` holding no data (`byzantine_data=False`, ByzFL gives data to the
    honest clients only), every client every step, each client's batches running on through its
    epochs (`batch_order="epochs"`: ByzFL's clients iterate their shuffled `DataLoader` without
    restart, the last batch of an epoch partial), the rules told `tolerated_f`, the partition
    and the initial model drawn from `data_seed` (ByzFL builds its models before it reseeds with the
    training seed, so its training seeds share one initial model: `init_seed = data_seed`) and
    everything else from `seed`, an evaluation every `evaluation_delta` steps (and at step 0 and after
    the last, as ByzFL).

    Raises:
      InputError: a feature strike_jax cannot run the ByzFL way (one line naming it).
    """
    from strike_jax.config import Config

    if spec.algorithm != "dsgd":
        raise InputError("ByzFL config: training_algorithm FedAvg is not supported (ByzFL's FedAvg averages model "
                         "weights with each client's optimiser state kept across rounds; strike_jax's aggregates "
                         "updates); allowed: DSGD.")
    kw = _byzfl_fields(spec)
    pre = tuple(p.name for p in spec.preaggregators)
    attack = spec.attack.name if spec.f > 0 else "none"
    config = Config(
        dataset=spec.dataset, data_dir=spec.data_dir, dataset_params=dict(spec.load_kwargs), model=spec.model,
        num_clients=spec.num_clients, clients_per_round=spec.num_clients,
        byzantine_ratio=spec.f / spec.num_clients, byzantine_data=False, rounds=spec.steps,
        batch_size=spec.batch_size, momentum=spec.momentum, clip_norm=None,
        attack=attack, attack_params=dict(spec.attack.params) if attack != "none" else {},
        defence=spec.rule.name, defence_params=dict(spec.rule.params),
        preaggregation=pre, preaggregation_params={p.name: dict(p.params) for p in spec.preaggregators if p.params},
        eval_every=spec.eval_every, seed=spec.seed, data_seed=spec.data_seed, init_seed=spec.data_seed,
        tolerated_f=spec.tolerated_f,
        algorithm="dsgd", local_steps=1, batch_order="epochs", server_lr=spec.lr, server_weight_decay=spec.weight_decay,
        lr_milestones=tuple(spec.milestones), lr_decay=spec.lr_decay, **kw)
    if config.num_byzantine != spec.f:  # ceil(r * N) must give back f exactly
        raise InputError(f"ByzFL config: f={spec.f} of {spec.num_clients} clients does not map to strike_jax's "
                         f"byzantine_ratio (got {config.num_byzantine}).")
    return config


def _val_key() -> str | None:
    """The history key of the validation accuracy (set with `Config.validation_fraction`)."""
    return "val_accuracy" if "validation_fraction" in _config_fields() else None


def prepare(cfg: Mapping[str, Any], results_dir: str | os.PathLike | None = None
            ) -> tuple[list[RunSpec], list[Config], str]:
    """Every check of a ByzFL config that can fail before any work: the expansion, each run's
    mapping and `Config`, its pipeline and `f` (`simulation.check_config`), duplicate result
    folders, the results directory.

    Returns:
      `(specs, configs, results_directory)`.

    Raises:
      InputError: one line naming the key or value.
    """
    from strike_jax.simulation import check_config

    try:
        specs = expand(cfg)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None
    if not specs:
        raise InputError("ByzFL config: no run left after the expansion (every f > tolerated_f); allowed: at least "
                         "one f <= tolerated_f.")
    configs = [to_config(s) for s in specs]
    seen: dict[tuple, int] = {}
    for s in specs:
        key = (s.folder, s.seed, s.data_seed)
        if key in seen:
            raise InputError(f"ByzFL config: runs {seen[key]} and {s.index} write the same result files "
                             f"({s.folder}, training seed {s.seed}, data seed {s.data_seed}); ByzFL's folder name "
                             "holds only data set, model, n, f, d, distribution, rules, attack, lr, momentum, "
                             "weight decay: make those differ.")
        seen[key] = s.index
    for c in dict.fromkeys(configs):
        check_config(c)
    out = os.fspath(results_dir) if results_dir is not None else specs[0].results_directory
    from strike_jax.simulation import check_run_dir

    check_run_dir(out)
    return specs, configs, out


def run(path: str | os.PathLike | Mapping[str, Any], *, results_dir: str | os.PathLike | None = None,
        progress: bool = False, plots: bool = True, settings=None) -> dict[str, Any]:
    """Runs a ByzFL 0.0.11 benchmark config on strike_jax and writes ByzFL's results and summaries.

    All runs go through one `simulate_many` call (runs that differ only in numbers share a batch;
    each attack and rule is compiled once), each with its own run directory inside its ByzFL
    folder, so a rerun returns finished runs as stored and resumes interrupted ones exactly.

    Args:
      path: the config file (or the config as a dict).
      results_dir: where the results go (default: the config's `results_directory`, relative to
        the working directory as in ByzFL).
      progress: progress bars.
      plots: draw the summary figures (matplotlib); the numbers are written either way.
      settings: `simulation.Settings`.

    Returns:
      {"results_directory", "runs": [{"folder", "seed", "data_seed", "result"}], "summary"}.

    Raises:
      InputError: an unsupported key or value, before any data loads (one line).
    """
    from strike_jax import byzfl_results as R
    from strike_jax.simulation import simulate_many

    try:
        cfg = load_config(path) if not isinstance(path, Mapping) else dict(path)
    except OSError as err:
        raise InputError(f"ByzFL config {os.fspath(path)!r} cannot be read ({err.strerror}).") from None  # type: ignore[arg-type]
    except ValueError as err:
        raise InputError(str(err)) from None
    specs, configs, out = prepare(cfg, results_dir)
    os.makedirs(out, exist_ok=True)
    from strike_jax import atomic

    atomic.write_json(os.path.join(out, "config.json"), _with_optional_defaults(cfg), indent=4)
    dirs = [R.run_dir(out, s) for s in specs]
    # A checkpoint at each of ByzFL's evaluations (and every minute): a DSGD round is one step, so
    # the default (every 10 rounds) would spend more time writing than training.
    results = simulate_many(configs, run_dirs=dirs, progress=progress, settings=settings,
                            checkpoint_every=max(10, min(c.eval_every for c in configs)), checkpoint_seconds=60.0)
    val_key = _val_key()
    arrays = []
    for spec, res in zip(specs, results):
        arr = R.run_arrays(res, spec, val_key if spec.train_fraction < 1 else None)
        R.write_run(out, spec, res, arr)
        arrays.append(arr)
    summary = R.summarize(out, specs, arrays, declared="tolerated_f" in cfg["benchmark_config"], plots=plots)
    return {"results_directory": out, "summary": summary,
            "runs": [{"folder": s.folder, "seed": s.seed, "data_seed": s.data_seed, "result": r}
                     for s, r in zip(specs, results)]}


# ----------------------------------------------------------------------------------- data


def load_data(spec: RunSpec):
    """The run's data set (`strike_jax.data.load`): from `spec.data_dir` when `data_folder` holds it
    (torchvision's layout or the IDX files directly), else from our loaders' usual places, with
    ByzFL's preprocessing (`spec.load_kwargs`; augmentation is `spec.augmentation`, applied per
    batch). CIFAR-10 comes from TFDS (torchvision's pickled `cifar-10-batches-py` is not read)."""
    from strike_jax import data

    kwargs = dict(spec.load_kwargs)
    if spec.data_dir is not None:
        kwargs["data_dir"] = spec.data_dir
    return data.load(spec.dataset, **kwargs)


def split_clients(spec: RunSpec, labels) -> tuple[Any, np.ndarray]:
    """ByzFL's data preparation for one run: the train/validation hold-out, then the honest
    clients' partition of the training part (`strike_jax.data.partition.split_training_set`, the
    split the simulation makes from the run's `Config`).

    Args:
      spec: the run.
      labels: `[N_train]` int labels of the whole training set.

    Returns:
      `(partition, validation)`: a `strike_jax.data.Partition` of `spec.num_honest` clients (indices
      into the training set; Byzantine clients hold no data, as in ByzFL) and the validation
      indices (empty when `train_fraction` is 1). Both from `spec.data_seed` only.
    """
    from strike_jax.data import partition as P

    p = spec.partition
    return P.split_training_set(np.asarray(labels), spec.num_honest, kind=p["kind"], seed=spec.data_seed,
                                beta=p.get("beta", 0.5), gamma=p.get("gamma", 1.0), min_size=p.get("min_size", 10),
                                validation_fraction=1.0 - spec.train_fraction)


__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "BYZFL_VERSION",
    "DATASETS",
    "MODELS",
    "PARTITIONS",
    "PREAGGREGATORS",
    "RunSpec",
    "StageSpec",
    "check_sections",
    "combinations",
    "expand",
    "find_data_dir",
    "folder_name",
    "load_config",
    "load_data",
    "map_setting",
    "map_stage",
    "random_hflip",
    "prepare",
    "run",
    "settings",
    "split_clients",
    "to_config",
]

"""Experiment configuration: one frozen dataclass and the paper's / local presets (SPEC §2).

A `Config` fully determines a run: same config (seed included) -> same history. Equal configs are
one run: every field is checked against its type when the config is made (an integer field refuses
2.5 and True, a float field stores 1 as 1.0, an unknown pre-aggregator is refused, each with one
line naming the value and what is allowed: `strike_jax.errors.InputError`), and numbers inside the
hyper-parameter mappings are stored in the type the registry (or the data set's loader) declares,
so that `Config(attack_params={"nu": 1}) == Config(attack_params={"nu": 1.0})` also hash alike and
get one run directory (`strike_jax.sweep.run_id`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from typing import Any, Mapping, NamedTuple

from strike_jax.errors import InputError

PARTITIONS = ("dirichlet", "iid", "natural", "gamma_similarity_niid", "extreme_niid")
ALGORITHMS = ("fedavg", "dsgd")
BATCH_ORDERS = ("round", "epochs")
#: `Config.preaggregation_order` (`stages.chain`'s `preaggregation_order`).
PREAGGREGATION_ORDERS = ("spec", "given")
#: `Config.augmentation` (`strike_jax.data.augment`).
AUGMENTATIONS = ("hflip",)
MAPPING_FIELDS = ("dataset_params", "attack_params", "defence_params", "preaggregation_params")


def _hash_value(v: Any) -> Any:
    try:
        hash(v)
    except TypeError:
        return json.dumps(v, sort_keys=True, default=str)
    return v


class FrozenDict(dict):
    """A read-only, hashable dict (a `Config` field): change a config with `Config.replace`."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("Config mappings are read-only; make a new config with Config.replace(...).")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __hash__(self):
        # Python's own hash agrees with `==` (hash(1) == hash(1.0)), unlike a JSON text.
        return hash(frozenset((k, _hash_value(v)) for k, v in self.items()))


def _freeze(x: Any) -> Any:
    """Mappings to `FrozenDict`, sequences to tuples, NumPy scalars to Python numbers (recursively),
    so that a config is immutable, hashable, and equal to itself after a JSON round trip."""
    if isinstance(x, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        return x.item()
    return x


def _plain(x: Any) -> Any:
    """The JSON form of a frozen value: dicts and lists."""
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


_SEQUENCES = (tuple, list, collections.abc.Sequence)


def _by_hint(value: Any, hint: Any) -> Any:
    """`value` with its numbers in the type `hint` declares (`float`: 1 -> 1.0; `int`: 2.0 -> 2;
    unions and sequences of those); anything else unchanged (the loader or rule checks it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and _is_number(value):
        return float(value)
    if hint is int and _is_number(value) and float(value).is_integer():
        return int(value)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if _is_number(value):
            nums = [a for a in kinds if a in (int, float)]
            return _by_hint(value, nums[0]) if len(nums) == 1 else value
        if isinstance(value, tuple):
            seqs = [a for a in kinds if typing.get_origin(a) in _SEQUENCES]
            return _by_hint(value, seqs[0]) if len(seqs) == 1 else value
        return value
    if isinstance(value, tuple) and args and origin in _SEQUENCES:
        inner = args[0] if (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        if inner is not None:
            return tuple(_by_hint(v, inner) for v in value)
    return value


def _normalize_dataset_params(dataset: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset's loader arguments with numbers in the types its signature declares."""
    from strike_jax import data

    hints = data.load_arg_types(dataset)
    return {k: _by_hint(v, hints[k]) if k in hints else v for k, v in params.items()}


class FieldType(NamedTuple):
    """The type of a `Config` field: `base` is int, float, bool, str, tuple (of names, or of
    integers when `item` is int) or dict (a mapping); `optional` when None is allowed."""

    base: type
    optional: bool
    item: type | None = None


@functools.cache
def _field_types() -> dict[str, FieldType]:
    out = {}
    for name, hint in typing.get_type_hints(Config).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        inner = [a for a in args if a is not type(None)] if optional else [hint]
        base = typing.get_origin(inner[0]) or inner[0]
        if base in (Mapping, collections.abc.Mapping):
            base = dict
        item = None
        if base is tuple:
            item = typing.get_args(inner[0])[0] if typing.get_args(inner[0]) else str
        out[name] = FieldType(base, optional, item)
    return out


def field_types() -> dict[str, FieldType]:
    """`{field: FieldType}` of every `Config` field, read from the dataclass's type hints (the one
    definition the command-line options are built from: `strike_jax.options`)."""
    return dict(_field_types())


_NEEDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
          tuple: "a comma-separated list of names", dict: "a dict, e.g. {'nu': 1.0}"}


def field_need(name: str) -> str:
    """What a field needs, in words ("an integer or None")."""
    ft = _field_types()[name]
    need = "a comma-separated list of integers" if ft.item is int else _NEEDS[ft.base]
    return need + (" or None" if ft.optional else "")


def check_field(name: str, value: Any) -> Any:
    """`value` checked against the type of the field `name` and normalised: a float field stores
    a Python float (`1` -> `1.0`), an integer field a Python int (NumPy ints too; `2.5`, `2.0` and
    booleans are refused), a tuple field a tuple of names, a path a string.

    Raises:
      InputError: an unknown field, or a value of the wrong type (one line naming it).
    """
    types_ = _field_types()
    if name not in types_:
        raise InputError(f"unknown Config field {name!r}; allowed: {', '.join(types_)}.")
    ft = types_[name]
    if value is None and ft.optional:
        return None
    ok = False
    if ft.base is bool:
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        value = bool(value) if ok else value
    elif ft.base is int:
        ok = isinstance(value, numbers.Integral) and _is_number(value)
        value = int(value) if ok else value
    elif ft.base is float:
        ok = _is_number(value)
        value = float(value) if ok else value
    elif ft.base is str:
        if name == "data_dir" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        ok = isinstance(value, str)
    elif ft.base is tuple and ft.item is int:
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, numbers.Integral) and _is_number(v)
                                                      for v in value)
        value = tuple(int(v) for v in value) if ok else value
    elif ft.base is tuple:
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif ft.base is dict:
        ok = isinstance(value, Mapping)
    if not ok:
        raise InputError(f"Config.{name}={value!r} is invalid: need {field_need(name)}.")
    return value


STRATEGIES = ("auto", "measure", "packed", "vmap", "map", "steps", "loop")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one federated run needs.

    Attributes:
      dataset: a name from `strike_jax.data.names()`.
      data_dir: where the dataset lives on disk (None: the source's default / embedded data).
      dataset_params: extra arguments of the dataset's loader (`strike_jax.data.load`), e.g.
        `{"image_size": 64}` for imagenet12 or the shape of a `synthetic` dataset.
      model: a name from `strike_jax.models.names()`.
      num_clients: N, clients in the partition.
      clients_per_round: n, clients sampled per round (uniformly without replacement).
      partition: "dirichlet" (SPEC §4), "iid", "natural" (the dataset's own client ids), or ByzFL's
        "gamma_similarity_niid" (a share `gamma` spread IID, the rest sorted by label) and
        "extreme_niid" (sorted by label, cut in equal chunks); ByzFL's kinds always split a random
        order of the training set (ByzFL's `random_split`). One implementation:
        `data.partition.split_training_set` (also `byzfl.split_clients`).
      beta: Dirichlet concentration.
      gamma: the IID share of "gamma_similarity_niid", in [0, 1] (ByzFL's `distribution_parameter`;
        1: IID, 0: extreme non-IID).
      byzantine_ratio: r; the Byzantine clients are the first ceil(r * N) client ids (SPEC §2).
      rounds: communication rounds.
      local_epochs: local epochs per round (the paper uses 1).
      batch_size, lr, momentum, weight_decay, clip_norm: local SGD (SPEC §3).
      attack: a name from `strike_jax.attacks.names()`, or "none".
      attack_params: its hyper-parameters (e.g. {"nu": 1.0} for STRIKE).
      defence: a rule from `strike_jax.aggregators.names()`.
      defence_params: its hyper-parameters.
      preaggregation: pre-aggregators applied before the rule (`strike_jax.registry.names
        ("preaggregator")`: nnm, bucketing, clipping, arc), each at most once, e.g. ("nnm",),
        ("nnm", "bucketing"); with `preaggregation_order="spec"` they run in the given order except
        that bucketing runs last (SPEC §7: NNM before bucketing), and the config stores them in
        that order (the function `preaggregation_order`); with "given" exactly in the given order.
      preaggregation_order: "spec" (SPEC §7's order, above) or "given" (the pre-aggregators run in
        the order `preaggregation` lists them, as ByzFL's ordered `pre_aggregators` list; e.g.
        ("bucketing", "nnm"), or Clipping after NNM).
      preaggregation_params: {name: {hparam: value}}.
      eval_every: evaluate the global model every k rounds (and always after the last round).
      eval_at_start: also evaluate the initial global model (ByzFL evaluates at step 0): the
        history's first record is `{"round": -1, "accuracy", "loss"[, "val_accuracy", "val_loss"]}`
        (records are labelled by the 0-based round just run, so the initial model, after 0 rounds,
        is round -1: `round + 1` rounds done). It counts in `best_accuracy`, not in
        `completed_rounds`; a resumed run keeps it from its checkpoint and never re-evaluates.
      augmentation: random augmentation of every training image: () or ("hflip",), ByzFL's
        `RandomHorizontalFlip(p=0.5)` (`data.augment`): each image of every local step is mirrored
        left-right with probability 1/2, drawn from `(seed, round, client, epoch, position)` by the
        round's plan, so every strategy and batch trains on the same images. Images (4-d data) only;
        the test and validation images are not flipped.
      validation_fraction: the share of the training set held out as a validation set (ByzFL's
        `1 - size_train_set`), drawn from the data seed before the clients' partition
        (`data.partition.holdout`; root set excluded); every evaluation also records the global
        model's accuracy and loss on it (`val_accuracy`, `val_loss` in the history;
        `best_val_accuracy`, `final_val_accuracy` in the result). 0: no validation set.
      seed: the run's seed (partition, init, sampling, schedules, attack and defence keys).
      strategy: how clients are trained: "auto" (a fixed rule from the model, shapes and platform:
        `training.resolve_auto`; recorded in the checkpoint and result, kept on resume), "measure"
        (timed on this machine: an explicit opt-in whose choice may differ between machines),
        "packed" (lanes of clients back to back, one device program per round), "vmap" (one padded
        lane per client, in chunks of `lanes` clients; the first step one batched gradient at the
        shared global model), "map" (one lane), or the host loops "steps" and "loop".
      lanes: lanes of the packed strategy, clients per chunk of "vmap" (None: chosen from the
        clients' step counts and memory).
      max_test_samples: evaluate on at most this many test samples (None: all).
      skew_metrics: compute the gradient-skew diagnostic every round (about one pass over `U`).
      allow_beyond_breakdown: run with more Byzantine clients than the pipeline's rules tolerate
        (`stages.check_f` refuses such a config otherwise); a study beyond the breakdown point.
      root_samples: size of the server's clean root set, for rules that need one (FLTrust: 100
        in its paper): drawn from the training set from the seed and excluded from the clients; the
        server trains on it like a client every round. Unused by other rules.
      num_devices: devices the run is spread over (a `jax.sharding.Mesh` over the first
        `num_devices` of `jax.devices()`, all processes' under `jax.distributed`): each device
        trains its own block of the round's clients, and the server step runs on the sharded
        update matrix (`strike_jax.training.round`). 1: one device, as before. Results equal the
        one-device run up to float rounding. `lanes` is then per device; device strategies only.
      algorithm: "fedavg" (SPEC §2: clients train locally from the global model, the server adds
        the aggregate of their updates) or "dsgd" (distributed SGD with worker momentum, Karimireddy
        et al. 2021, ByzFL: each sampled client computes one mini-batch gradient `g_i` at the global
        model per round, keeps `m_i <- b m_i + (1 - b) g_i` across rounds (`b = momentum`) and sends
        `m_i`; the server steps `w <- w - lr_t (aggregate + server_weight_decay * w)`). DSGD uses
        `momentum` as the workers' `b` and ignores `lr`, `weight_decay` and `clip_norm`. A model's
        BatchNorm statistics are columns of the row like its parameters (a client's row holds
        `old - new` statistics after its step, the server steps them like the parameters, weight
        decay included).
      local_steps: mini-batch steps each client takes per round instead of `local_epochs` epochs
        (its batches continue through fresh epochs of its data; a client without data takes none).
        DSGD: 1 (None becomes 1; the only value it allows).
      batch_order: "round" (default): every round each client visits its data in fresh epoch
        orders (SPEC §3; with `local_steps`, a round's steps start a new epoch). "epochs": a
        client's steps run on through its epochs across rounds, each epoch one shuffle (a
        keyed pseudo-random permutation, `training.schedule.stream_orders`) and its last batch
        partial, as a PyTorch `DataLoader(shuffle=True)` iterated without restart (ByzFL's
        clients). Needs `local_steps` and `clients_per_round == num_clients` (a client's step
        count is then the round's).
      server_lr, server_weight_decay: the DSGD server's SGD step size and weight decay.
      lr_milestones, lr_decay: the DSGD server's step size is `server_lr * lr_decay ** k` in a round
        `t` with `k` milestones `<= t` (PyTorch's `MultiStepLR`, stepped once per round).
      tolerated_f: the Byzantine count the pre-aggregators and rule are told (and checked against
        their limit instead of the real one); None: the real count. The attack always knows the real
        one. Under partial participation the rules get this fixed number every round.
      data_seed: the seed of the data split (partition, root set); None: `seed`.
      init_seed: the seed of the initial model; None: `seed`. ByzFL draws its initial model from the
        data-distribution seed, so its training seeds share one model (`strike_jax.byzfl` sets
        `init_seed = data_seed`).
      byzantine_data: False: the Byzantine clients `0 .. f-1` hold no data and only the honest
        clients are partitioned (ByzFL's setting); needs an attack that does not train on data.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    dataset_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model: str = "small_cnn"
    num_clients: int = 20
    clients_per_round: int = 20
    partition: str = "dirichlet"
    beta: float = 0.5
    gamma: float = 1.0
    byzantine_ratio: float = 0.2
    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float | None = 2.0
    attack: str = "none"
    attack_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    defence: str = "mean"
    defence_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preaggregation: tuple[str, ...] = ()
    preaggregation_params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    preaggregation_order: str = "spec"
    eval_every: int = 1
    eval_at_start: bool = False
    augmentation: tuple[str, ...] = ()
    validation_fraction: float = 0.0
    seed: int = 0
    strategy: str = "auto"
    max_test_samples: int | None = None
    lanes: int | None = None
    skew_metrics: bool = False
    allow_beyond_breakdown: bool = False
    root_samples: int = 100
    num_devices: int = 1
    algorithm: str = "fedavg"
    local_steps: int | None = None
    batch_order: str = "round"
    server_lr: float = 1.0
    server_weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    tolerated_f: int | None = None
    data_seed: int | None = None
    init_seed: int | None = None
    byzantine_data: bool = True

    def __post_init__(self):
        # Normalise every field so that configs compare, hash and serialise the same whatever the
        # caller passed (ints or floats, lists or tuples, dicts), also after a JSON round trip;
        # mappings are read-only.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name)))
        for name in MAPPING_FIELDS:
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        self._normalize_hparams()
        if self.algorithm == "dsgd" and self.local_steps is None:  # one gradient a round: the same run
            object.__setattr__(self, "local_steps", 1)
        self.validate()

    def _normalize_hparams(self) -> None:
        """Numbers of the hyper-parameter mappings in their declared types (the registry's
        `Param.type`, the loader's signature), preaggregation in the order it runs."""
        from strike_jax import registry

        def put(name, value):
            object.__setattr__(self, name, _freeze(value))

        if self.attack_params and self.attack != "none":
            put("attack_params", registry.normalize("attack", self.attack, self.attack_params))
        if self.defence_params:
            put("defence_params", registry.normalize("rule", self.defence, self.defence_params))
        if self.preaggregation_params:
            put("preaggregation_params", {
                p: registry.normalize("preaggregator", p, v) if isinstance(v, Mapping) else v
                for p, v in self.preaggregation_params.items()})
        if self.dataset_params:
            put("dataset_params", _normalize_dataset_params(self.dataset, self.dataset_params))
        if self.preaggregation:
            allowed = registry.names("preaggregator")
            unknown = [p for p in self.preaggregation if p not in allowed]
            if unknown or len(set(self.preaggregation)) != len(self.preaggregation):
                raise InputError(f"Config.preaggregation={self.preaggregation!r} is invalid: allowed: a subset "
                                 f"of ({', '.join(allowed)}), each once.")
            if self.preaggregation_order != "given":
                object.__setattr__(self, "preaggregation", preaggregation_order(self.preaggregation))

    @property
    def num_byzantine(self) -> int:
        """ceil(r * N): the fixed Byzantine client ids are 0 .. num_byzantine - 1 (SPEC §2)."""
        import math

        # Round before ceil so 0.2 * 50 = 10.000000000000002 does not become 11.
        return int(math.ceil(round(self.byzantine_ratio * self.num_clients, 9)))

    def validate(self) -> None:
        """Checks the values of the fields (their types are checked when the config is made).

        Raises:
          InputError: one line naming the field, its value and what is allowed.
        """
        def bad(field: str, value: Any, allowed: str):
            raise InputError(f"Config.{field}={value!r} is invalid: {allowed}.")

        if self.num_clients < 1:
            bad("num_clients", self.num_clients, "need at least 1 client")
        if not 1 <= self.clients_per_round <= self.num_clients:
            bad("clients_per_round", self.clients_per_round, f"need 1 <= n <= num_clients={self.num_clients}")
        if any(a not in AUGMENTATIONS for a in self.augmentation) or len(set(self.augmentation)) != len(
                self.augmentation):
            bad("augmentation", self.augmentation, f"allowed: each of {', '.join(AUGMENTATIONS)} at most once")
        if self.preaggregation_order not in PREAGGREGATION_ORDERS:
            bad("preaggregation_order", self.preaggregation_order, f"allowed: {', '.join(PREAGGREGATION_ORDERS)}")
        if self.partition not in PARTITIONS:
            bad("partition", self.partition, f"allowed: {', '.join(PARTITIONS)}")
        if self.partition == "dirichlet" and not self.beta > 0:
            bad("beta", self.beta, "the Dirichlet concentration must be > 0")
        if not 0.0 <= self.gamma <= 1.0:
            bad("gamma", self.gamma, "need 0 <= gamma <= 1 (the IID share of gamma_similarity_niid)")
        if not 0.0 <= self.byzantine_ratio < 1.0:
            bad("byzantine_ratio", self.byzantine_ratio, "need 0 <= r < 1")
        if self.rounds < 1:
            bad("rounds", self.rounds, "need at least 1 round")
        if self.local_epochs < 1:
            bad("local_epochs", self.local_epochs, "need at least 1 local epoch")
        if self.batch_size < 1:
            bad("batch_size", self.batch_size, "need batch_size >= 1")
        if not self.lr > 0:
            bad("lr", self.lr, "the learning rate must be > 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", self.momentum, "need 0 <= momentum < 1")
        if self.weight_decay < 0:
            bad("weight_decay", self.weight_decay, "need weight_decay >= 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            bad("clip_norm", self.clip_norm, "need clip_norm > 0 or None (no clipping)")
        if self.eval_every < 1:
            bad("eval_every", self.eval_every, "need eval_every >= 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            bad("validation_fraction", self.validation_fraction, "need 0 <= validation_fraction < 1")
        if self.strategy not in STRATEGIES:
            bad("strategy", self.strategy, f"allowed: {', '.join(STRATEGIES)}")
        if self.max_test_samples is not None and self.max_test_samples < 1:
            bad("max_test_samples", self.max_test_samples, "need an int >= 1 or None (all)")
        if self.lanes is not None and self.lanes < 1:
            bad("lanes", self.lanes, "need an int >= 1 or None (automatic)")
        if self.seed < 0:
            bad("seed", self.seed, "need an int >= 0")
        if self.root_samples < 1:
            bad("root_samples", self.root_samples, "need an int >= 1")
        if self.num_devices < 1:
            bad("num_devices", self.num_devices, "need an int >= 1")
        if self.algorithm not in ALGORITHMS:
            bad("algorithm", self.algorithm, f"allowed: {', '.join(ALGORITHMS)}")
        if self.local_steps is not None and self.local_steps < 1:
            bad("local_steps", self.local_steps, "need an int >= 1 or None (local_epochs epochs)")
        if self.local_steps is not None and self.local_epochs != 1:
            bad("local_epochs", self.local_epochs, f"local_steps={self.local_steps} replaces the epochs: allowed "
                "only local_epochs=1 with local_steps")
        if self.batch_order not in BATCH_ORDERS:
            bad("batch_order", self.batch_order, f"allowed: {', '.join(BATCH_ORDERS)}")
        if self.batch_order == "epochs" and self.local_steps is None:
            bad("batch_order", self.batch_order, "needs local_steps (or algorithm='dsgd'): a client's steps run on "
                "across rounds")
        if self.batch_order == "epochs" and self.clients_per_round != self.num_clients:
            bad("batch_order", self.batch_order, f"needs every client every round (clients_per_round="
                f"{self.clients_per_round} < num_clients={self.num_clients})")
        if self.algorithm == "dsgd" and self.local_steps not in (None, 1):
            bad("local_steps", self.local_steps, "algorithm='dsgd' takes one gradient per round: allowed 1 or None")
        if not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            bad("server_lr", self.server_lr, "need a finite number > 0")
        if not (self.server_weight_decay >= 0 and math.isfinite(self.server_weight_decay)):
            bad("server_weight_decay", self.server_weight_decay, "need a finite number >= 0")
        if not 0 < self.lr_decay <= 1:
            bad("lr_decay", self.lr_decay, "need 0 < lr_decay <= 1")
        if any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            bad("lr_milestones", self.lr_milestones, "need increasing rounds >= 1")
        if self.algorithm == "fedavg":
            for name, default in (("server_lr", 1.0), ("server_weight_decay", 0.0), ("lr_milestones", ())):
                if getattr(self, name) != default:
                    bad(name, getattr(self, name), f"the server optimizer is DSGD's: allowed only {default!r} "
                        "with algorithm='fedavg'")
        if self.tolerated_f is not None and not 0 <= self.tolerated_f < self.clients_per_round:
            bad("tolerated_f", self.tolerated_f, f"need 0 <= tolerated_f < clients_per_round="
                f"{self.clients_per_round} or None (the real count)")
        for name in ("data_seed", "init_seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                bad(name, getattr(self, name), "need an int >= 0 or None (seed)")
        if not self.byzantine_data and self.num_byzantine >= self.num_clients:
            bad("byzantine_data", self.byzantine_data, "with no data for the Byzantine clients at least one "
                "honest client must remain")
        if not self.byzantine_data and self.attack == "none" and self.num_byzantine > 0:
            bad("byzantine_data", self.byzantine_data, "without an attack the clients 0 .. f-1 are honest and "
                "need data: allowed only with an attack (or byzantine_ratio=0)")
        if self.num_devices > 1 and self.strategy in ("steps", "loop"):
            bad("strategy", self.strategy, f"num_devices={self.num_devices} runs on the device path: allowed "
                "'auto', 'packed', 'vmap' or 'map'")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (dicts, lists, numbers, strings)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"Unknown config fields {unknown}; allowed: {sorted(names)}.")
        d = dict(d)
        if "preaggregation" in d:
            d["preaggregation"] = tuple(d["preaggregation"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from the defaults: a run's identity that survives new fields."""
        default = Config().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != default.get(k)}

    def same_run(self, stored: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> bool:
        """Whether a stored `to_dict()` (possibly from an older version with fewer fields) is this
        config (the fields in `ignore` may differ)."""
        return not self.differences(stored, ignore=ignore)

    def differences(self, stored: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """`{field: (stored value, this value)}` for the fields where a stored `to_dict()` differs
        (missing fields count as their defaults; an unreadable config differs in `"config"`)."""
        try:
            other = Config.from_dict(stored)
        except (ValueError, TypeError) as e:
            return {"config": (str(e), "this config")}
        return {f.name: (_plain(getattr(other, f.name)), _plain(getattr(self, f.name)))
                for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(other, f.name) != getattr(self, f.name)}


# The paper's settings (SPEC §2, Table 5). They need the real datasets on disk.
_PAPER = dict(rounds=200, local_epochs=1, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
              clip_norm=2.0, byzantine_ratio=0.2, partition="dirichlet", beta=0.5)

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(_PAPER, dataset="cifar10", model="alexnet_cifar", num_clients=50, clients_per_round=50),
    "imagenet12": dict(_PAPER, dataset="imagenet12", model="resnet18", num_clients=50, clients_per_round=50),
    "femnist": dict(_PAPER, dataset="femnist", model="femnist_cnn", partition="natural", rounds=800,
                    lr=0.5, momentum=0.5, num_clients=3597, clients_per_round=10),
    # Local presets: data that exists on every machine (digits ships with scikit-learn; Fashion-MNIST
    # from Debian's dataset-fashion-mnist). Scaled so a run takes seconds to minutes on 2 CPU cores.
    # digits: an MLP (one round of 20 clients takes ~20 ms here; the small CNN ~150 ms and needs two
    # local epochs to learn as fast) reaching ~90% without attack in 20 rounds.
    "digits": dict(dataset="digits", model="mlp", num_clients=20, clients_per_round=20,
                   partition="dirichlet", beta=0.5, rounds=20, batch_size=16, lr=0.1, momentum=0.9,
                   weight_decay=1e-4, clip_norm=2.0, byzantine_ratio=0.2),
    "fashion_mnist": dict(dataset="fashion_mnist", model="small_cnn", num_clients=50, clients_per_round=50,
                          partition="dirichlet", beta=0.5, rounds=50, batch_size=64, lr=0.05, momentum=0.9,
                          weight_decay=1e-4, clip_norm=2.0, byzantine_ratio=0.2),
}


def preset(name: str, **overrides: Any) -> Config:
    """A preset config with overrides, e.g. `preset("digits", attack="strike", defence="median")`.

    For the FEMNIST preset pass `num_clients=` the number of LEAF writers on disk (a natural
    partition with another count raises an error naming the right one); 3597 is the paper's.
    """
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}; allowed: {', '.join(sorted(PRESETS))}.")
    return Config(**{**PRESETS[name], **overrides})


def preaggregation_order(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Pre-aggregator names in the order the server pipeline applies them
    (`strike_jax.stages.server_pipeline`: stable by SPEC §7's rank, NNM before bucketing, bucketing
    last; others keep their given order), so that two configs naming the same pipeline are equal."""
    from strike_jax.stages import _PREAGG_ORDER  # the pipeline's rule, defined once there

    return tuple(sorted(names, key=lambda p: _PREAGG_ORDER.get(p, 0)))

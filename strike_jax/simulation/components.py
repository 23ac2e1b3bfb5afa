"""From a `Config` to the run's parts: dataset, partition, model, initial weights, server pipeline,
and every check that can refuse a config before any data loads (SPEC §2, §4, §7).
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import data as data_lib
from strike_jax import models as model_lib
from strike_jax import ops, registry, stages, training
from strike_jax.config import Config
from strike_jax.errors import InputError
from strike_jax.training import schedule

# Config fields that are per-run numbers inside a batch, or only steer the host loop (everything
# else is structure: it shapes the compiled programs).
RUN_NUMBERS = ("seed", "beta", "gamma", "byzantine_ratio", "lr", "momentum", "weight_decay", "clip_norm",
               "attack_params", "defence_params", "preaggregation_params", "rounds", "eval_every", "eval_at_start",
               "server_lr", "server_weight_decay", "lr_milestones", "lr_decay", "tolerated_f", "data_seed",
               "init_seed", "byzantine_data")
# Structure that only the server program sees: runs that differ in it share the training program,
# and one grid server program holds every attack and every rule once (`server.ServerGrid`).
SERVER_ONLY = ("attack", "defence")


class DatasetCache:
    """Datasets loaded in this process, by `(name, data_dir, params)`: a sweep loads each once."""

    def __init__(self):
        self._data: dict[Any, Any] = {}

    def get(self, config: Config):
        key = (config.dataset, config.data_dir, json.dumps(config.dataset_params, sort_keys=True))
        if key not in self._data:
            kwargs = dict(config.dataset_params)
            if config.data_dir:
                kwargs["data_dir"] = config.data_dir
            self._data[key] = data_lib.load(config.dataset, **kwargs)
        return self._data[key]

    def clear(self) -> None:
        self._data.clear()


#: The process's dataset cache (`load_dataset`).
DATASETS = DatasetCache()


def load_dataset(config: Config):
    """The config's dataset (cached per process in `DATASETS`)."""
    return DATASETS.get(config)


ROOT_TAG = 5


def data_seed(config: Config) -> int:
    """The seed of the run's data split: `data_seed`, else `seed`."""
    return config.seed if config.data_seed is None else config.data_seed


def root_set(config: Config, ds) -> np.ndarray:
    """The server's clean root set (FLTrust): `root_samples` training samples drawn from
    `(data seed, ROOT_TAG)`, sorted; they are excluded from the clients' partition."""
    n = len(ds.y_train)
    if config.root_samples >= n:
        raise InputError(f"root_samples={config.root_samples} is not allowed; allowed: fewer than the {n} "
                         f"training samples of {config.dataset!r}.")
    rng = np.random.default_rng([data_seed(config), ROOT_TAG])
    return np.sort(rng.choice(n, size=config.root_samples, replace=False))


def make_split(config: Config, ds, exclude: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """The run's split of the training set (SPEC §4; `data.partition.split_training_set`, the one
    implementation `strike_jax.byzfl.split_clients` shares), from its data seed (`data_seed`), over
    the samples not in `exclude` (the root set): `validation_fraction` of them held out first (the
    validation set), the rest partitioned by `partition` (`beta`, `gamma`). With
    `byzantine_data=False` only the honest clients `f .. N-1` are given data (ByzFL); the
    Byzantine clients `0 .. f-1` get none.

    Returns:
      `(partition of num_clients clients, validation indices [V] int64)` (V = 0 without a hold-out).
    """
    empty = 0 if config.byzantine_data else config.num_byzantine
    holders = config.num_clients - empty
    if config.partition == "natural" and ds.client_ids is None:
        raise InputError(f"partition='natural' needs a dataset with client ids; {config.dataset!r} has none.")
    part, validation = data_lib.split_training_set(
        ds.y_train, holders, kind=config.partition, seed=data_seed(config), beta=config.beta, gamma=config.gamma,
        validation_fraction=config.validation_fraction, exclude=exclude, client_ids=ds.client_ids)
    if config.partition == "natural" and part.num_clients != holders:
        raise InputError(
            f"num_clients={config.num_clients} but the natural partition of {config.dataset!r} has "
            f"{part.num_clients} clients; set num_clients={part.num_clients + empty}."
        )
    if empty:
        part = part._replace(indices=(np.zeros(0, np.int64),) * empty + tuple(part.indices))
    return part, validation


def make_partition(config: Config, ds, exclude: np.ndarray | None = None):
    """The clients' partition of `make_split` (without the validation indices)."""
    return make_split(config, ds, exclude)[0]


def check_augmentation(config: Config, ds) -> None:
    """Refuses an augmentation the data cannot take (one line): "hflip" needs images `[N, H, W, C]`."""
    if "hflip" in config.augmentation and np.ndim(ds.x_train) != 4:
        raise InputError(f"augmentation=('hflip',) is not allowed with dataset={config.dataset!r}: its samples have "
                         f"shape {tuple(np.shape(ds.x_train)[1:])}; allowed: image data [N, H, W, C].")


def make_model(config: Config, ds):
    """The config's model; raw (uint8) stored data is normalised on the device inside `apply`."""
    model = model_lib.get(config.model, num_classes=ds.num_classes, input_shape=tuple(ds.x_train.shape[1:]))
    if not ds.preprocessing.applied:
        raw_apply = model.apply

        def apply(variables, x, train, mask=None):
            return raw_apply(variables, ds.normalize(x), train, mask)

        model = model._replace(apply=apply)
    return model


def init_seed(config: Config) -> int:
    """The seed of the run's initial model: `init_seed`, else `seed`."""
    return config.seed if config.init_seed is None else config.init_seed


def init_variables(model, seed: int, programs=None):
    """The run's initial model, from `key(seed, INIT_TAG)`: one compiled initialiser per model, kept
    in `programs` (a `programs.ProgramCache`; default the process's)."""
    from strike_jax.simulation.programs import PROGRAMS, ProgramKey

    def build():
        return jax.jit(lambda s: model.init(jax.random.fold_in(jax.random.PRNGKey(s), schedule.INIT_TAG)))

    key = ProgramKey("init", (model.name, model.num_classes, model.input_shape, model.module), None, 1, "")
    init = (PROGRAMS if programs is None else programs).get(key, build)
    return init(jnp.asarray(seed, jnp.uint32))


def defence_params(config: Config) -> dict:
    """The rule's hyper-parameters, filled in from the config where the rule has them and the config
    leaves them out: `num_clients` (a rule keeping per-client state: FoolsGold), and MoNNA's trusted
    row `idx`, set to the last row: the simulation puts the Byzantine clients in rows `0 .. f-1`, so
    the rule's own default (row 0) would trust an attacker."""
    params = dict(config.defence_params)
    spec = registry.hparam_spec("rule", config.defence)
    if "num_clients" in spec and params.get("num_clients") is None:
        params["num_clients"] = config.num_clients
    if config.defence == "monna" and params.get("idx") is None:
        params["idx"] = config.clients_per_round - 1
    return params


#: The config fields that may name a user's object, and their registry category.
USER_ROLES = {"dataset": "dataset", "model": "model", "attack": "attack", "defence": "rule"}


def register_user_objects(configs, objects: dict) -> None:
    """Registers the user objects passed to `simulate` (`dataset=`, `model=`, `attack=`, `defence=`)
    under their names (`registry.register_object`: the same object again is a no-op), after
    checking that every config names them.

    Raises:
      InputError: a config naming another object for that role, or a name taken by another object.
    """
    for role, obj in objects.items():
        if obj is None:
            continue
        name = getattr(obj, "name", None)
        for c in configs:
            if getattr(c, role) != name:
                raise InputError(f"{role}={name!r} was passed, but a config names {role}={getattr(c, role)!r}; "
                                 f"allowed: configs with {role}={name!r} (a Config names the object, the call "
                                 "supplies it).")
        try:
            registry.register_object(obj)
        except ValueError as e:
            raise InputError(str(e)) from None


def user_fingerprints(config: Config) -> dict[str, str]:
    """`{role: fingerprint}` of the user objects a config names (registered by `strike_jax.register`
    or passed to `simulate`); empty for the library's own."""
    out = {}
    for role, category in USER_ROLES.items():
        name = getattr(config, role)
        if registry.registered(category, name) is not None:
            out[role] = registry.fingerprint(registry.registered(category, name))
    return out


def server_backend(config: Config, d: int) -> ops.Backend:
    """The row operations' forms for this run's server step, from its shapes and length
    (`ops.Backend.for_run`): a short run does not pay seconds of compiling to save milliseconds."""
    return ops.Backend.for_run(n=config.clients_per_round, d=d, rounds=config.rounds)


def make_pipeline(config: Config, *, inject: bool = False, backend: ops.Backend | None = None):
    """The run's server pipeline `stages.chain(attack, nnm, bucketing, rule)` (`stages.server_pipeline`);
    with `inject`, the numeric hyper-parameters live in its state (runs of a batch stack them)."""
    return stages.server_pipeline(
        config.defence, attack=config.attack, preaggregation=config.preaggregation,
        attack_params=config.attack_params, defence_params=defence_params(config),
        preaggregation_params=config.preaggregation_params, inject=inject, backend=backend,
        preaggregation_order=config.preaggregation_order)


def _static_hparams(kind: str, name: str, params) -> tuple:
    """A stage's hyper-parameters that shape its program (the traceable ones are per-run numbers)."""
    spec = registry.hparam_spec(kind, name)
    values = registry.validate(kind, name, params)
    return (kind, name, tuple(sorted((k, repr(v)) for k, v in values.items() if not spec[k].traceable)))


def attack_structure(config: Config) -> tuple:
    """What of the attack must be equal for runs to share its branch of a server program."""
    if config.attack in ("none", None):
        return ("attack", "none", ())
    return _static_hparams("attack", config.attack, config.attack_params)


def rule_structure(config: Config) -> tuple:
    """What of the rule must be equal for runs to share its branch of a server program."""
    return _static_hparams("rule", config.defence, defence_params(config))


def preaggregation_structure(config: Config) -> tuple:
    return tuple(_static_hparams("preaggregator", p, config.preaggregation_params.get(p, {}))
                 for p in config.preaggregation)


def pipeline_structure(config: Config) -> tuple:
    """What of the server pipeline must be equal for runs to share a batch."""
    return (attack_structure(config),) + preaggregation_structure(config) + (rule_structure(config),)


def training_flags(config: Config) -> tuple:
    """What of the pipeline shapes the training program: a data-level attack (LabelFlip: the
    Byzantine clients train on flipped labels, `label_map`) and a rule that needs the server's own
    root update (FLTrust: the root set is trained every round)."""
    info = make_pipeline(config).info
    # `label_map` is the attack's module-level function (`attacks.labelflip.flip_labels`): hashable.
    return (bool(info.get("data_level", False)), info.get("label_map"), bool(info.get("needs_root_update", False)),
            bool(info.get("needs_flipped_rows", False)))


def round_f_to_check(config: Config) -> int:
    """The Byzantine count checked against the pipeline's limit: the exact `f` under full
    participation, the expected one under partial participation (a sampled round may hold more;
    the rules then clamp it, as the reference does, and the round records `f_above_limit`)."""
    if config.tolerated_f is not None:  # what the rules are told, whatever the real count
        return config.tolerated_f
    num_byz = config.num_byzantine if config.attack not in ("none", None) else 0
    if config.clients_per_round == config.num_clients:
        return num_byz
    return min(config.clients_per_round, math.ceil(config.clients_per_round * num_byz / config.num_clients))


def check_config(config: Config):
    """Everything about a config that can be refused before any data loads: names, hyper-parameters,
    the pipeline's limit on `f` (`stages.check_f`). Returns the (non-injected) pipeline."""
    kwargs = dict(config.dataset_params)
    if config.data_dir:
        kwargs["data_dir"] = config.data_dir
    data_lib.check_load_args(config.dataset, **kwargs)
    if config.model not in model_lib.names():
        raise InputError(f"model {config.model!r} is not allowed; allowed: {', '.join(model_lib.names())}.")
    if config.num_devices > jax.device_count():
        raise InputError(
            f"num_devices={config.num_devices} is not allowed; allowed: 1 .. {jax.device_count()} (the "
            f"{jax.default_backend()} devices jax sees; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before jax is imported; across hosts call strike_jax.distributed.initialize first).")
    pipe = make_pipeline(config)
    stages.check_f(pipe, config.clients_per_round, round_f_to_check(config),
                   allow_beyond_breakdown=config.allow_beyond_breakdown)
    if pipe.info.get("needs_flipped_rows", False) and (config.algorithm != "dsgd" or config.num_devices > 1):
        raise InputError(f"attack={config.attack!r} with {dict(config.attack_params)} (ByzFL's LabelFlipping: the "
                         "honest clients' flipped-label gradients) is not allowed with "
                         f"algorithm={config.algorithm!r}, num_devices={config.num_devices}; allowed: "
                         "algorithm='dsgd' on one device.")
    if not config.byzantine_data and pipe.info.get("data_level", False):
        raise InputError(f"byzantine_data=False is not allowed with attack={config.attack!r}: its Byzantine clients "
                         "train on their own data; allowed: byzantine_data=True, or an attack on the updates.")
    return pipe


def local_config(config: Config) -> training.LocalConfig:
    """The clients' local optimizer (its numbers and structure): the config's SGD for FedAvg; for
    DSGD one plain step of size 1 (no momentum, decay or clipping), whose update is `-g` (the
    worker momentum and the server's step live in the server half, `server.worker_momentum`)."""
    if config.algorithm == "dsgd":
        return training.LocalConfig(1.0, 0.0, 0.0, None, 1)
    return training.LocalConfig(config.lr, config.momentum, config.weight_decay, config.clip_norm, 1)


def program_key(config: Config) -> tuple:
    """Configs with equal keys share their compiled programs (training, evaluation and one grid
    server program holding each of their attacks and rules once): they differ only in per-run
    numbers, in the attack or in the rule, and train alike (`training_flags`)."""
    d = config.to_dict()
    structure = {k: v for k, v in d.items() if k not in RUN_NUMBERS + SERVER_ONLY}
    local = local_config(config)
    return (json.dumps(structure, sort_keys=True, default=str), local.structure(), preaggregation_structure(config),
            training_flags(config))


def group_key(config: Config) -> tuple:
    """Configs with equal keys can run as one batch (they differ only in per-run numbers)."""
    return program_key(config) + (attack_structure(config), rule_structure(config))



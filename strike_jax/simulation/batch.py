"""A batch of runs on the device: data, per-run constants, the stacked state, the round's shape.

The runs of a batch share their structure, attack and rule (`components.group_key`) and differ in
numbers only; they are stacked on a leading run axis `R`. Batches of one *program group*
(`components.program_key`: same model, data, clients, pre-aggregation, optimizer structure) share
their programs: shapes come from the whole group, and the server program is the group's grid of
attacks x rules (`server.ServerGrid`), the batch choosing its pair by index (`pair`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from strike_jax import server, sharding, training
from strike_jax.simulation import components, plan, store
from strike_jax.simulation.settings import Settings
from strike_jax.training import round as round_lib
from strike_jax.training import schedule
from strike_jax.training.local import LocalHparams


class Grid:
    """The attacks and rules of a program group, each built once (injected) from the first config
    that names it; `index(config)` is a config's `(attack, rule)` pair of branch indices."""

    def __init__(self, configs, backend):
        self.attack_keys: list = []
        self.rule_keys: list = []
        attacks, rules = [], []
        pre = None
        for c in configs:
            pipe = None
            if components.attack_structure(c) not in self.attack_keys:
                pipe = components.make_pipeline(c, inject=True, backend=backend)
                self.attack_keys.append(components.attack_structure(c))
                attacks.append(pipe.parts[0])
            if components.rule_structure(c) not in self.rule_keys:
                pipe = pipe or components.make_pipeline(c, inject=True, backend=backend)
                self.rule_keys.append(components.rule_structure(c))
                rules.append(pipe.parts[-1])
            if pre is None:
                pipe = pipe or components.make_pipeline(c, inject=True, backend=backend)
                pre = tuple(pipe.parts[1:-1])
        self.server_grid = server.ServerGrid(tuple(attacks), pre, tuple(rules),
                                             configs[0].preaggregation_order)
        self.branches = (tuple(self.attack_keys), tuple(self.rule_keys))

    def index(self, config) -> tuple[int, int]:
        return (self.attack_keys.index(components.attack_structure(config)),
                self.rule_keys.index(components.rule_structure(config)))


class Batch:
    """A batch of runs of one group: data, model, consts, state, the round's shape and strategy."""

    def __init__(self, runs: list[plan.Run], *, group: list[plan.Run], grid: Grid, settings: Settings,
                 programs, with_updates: bool = False):
        self.runs = runs
        self.programs = programs
        self.group = group  # every run of the program group: shapes come from all of them
        self.settings = settings
        self.with_updates = with_updates
        cfg = runs[0].config
        self.cfg = cfg
        self.structure = components.program_key(cfg)
        self.backend = runs[0].backend
        self.grid = grid.server_grid
        self.grid_branches = grid.branches
        self.pair_index = grid.index(cfg)
        self.pair = np.asarray(self.pair_index, np.int32)
        ds = components.load_dataset(cfg)
        self.ds = ds
        self.model = components.make_model(cfg, ds)
        # Several devices: one mesh; every array the round reads is placed on all of them.
        self.mesh = None if cfg.num_devices == 1 else sharding.make_mesh(cfg.num_devices)
        put = jnp.asarray if self.mesh is None else functools.partial(sharding.put_replicated, self.mesh)
        tables = [r.table for r in runs]
        # Padded to a power of two: later calls whose partitions differ a little reuse the program too.
        width = plan.pow2(max(r.table.index.shape[1] for r in group))
        self.width = width
        index = np.stack([np.pad(t.index, ((0, 0), (0, width - t.index.shape[1]))) for t in tables])
        counts = np.stack([t.counts for t in tables])
        # Each run's own pipeline: its limit, and the structure of its state (checkpoints).
        self.run_pipes = [components.make_pipeline(r.config, inject=True, backend=self.backend) for r in runs]
        self.limit = self.run_pipes[0].max_f(cfg.clients_per_round)
        info = self.run_pipes[0].info
        self.flip = bool(info.get("data_level", False))
        # ByzFL's LabelFlipping: the training half also computes the flipped-label gradients.
        self.flipped_rows = bool(info.get("needs_flipped_rows", False))
        self.dsgd = cfg.algorithm == "dsgd"
        # DSGD: the clients' step is one plain SGD step of size 1 from the global model, so a row is
        # `-g_i` (the server half keeps the worker momentum: `server.worker_momentum`).
        local = components.local_config(cfg)
        self.local_cfg = training.LocalConfig(
            lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay, clip_norm=local.clip_norm,
            num_classes=ds.num_classes, label_map=info.get("label_map"), augmentation=cfg.augmentation)
        local_hp = LocalHparams(*(jnp.asarray([0.0 if v is None else v for v in vals], np.float32) for vals in zip(
            *[tuple(components.local_config(r.config))[:4] for r in runs])))
        # Milestones padded to the program group's most (a round never reached), so that the
        # group's batches share the server program.
        self.milestones_width = max(len(r.config.lr_milestones) for r in group)
        never = np.iinfo(np.int32).max
        server_hp = round_lib.ServerHparams(
            tolerated_f=np.asarray([-1 if r.config.tolerated_f is None else r.config.tolerated_f for r in runs],
                                   np.int32),
            momentum=np.asarray([r.config.momentum for r in runs], np.float32),
            lr=np.asarray([r.config.server_lr for r in runs], np.float32),
            weight_decay=np.asarray([r.config.server_weight_decay for r in runs], np.float32),
            lr_decay=np.asarray([r.config.lr_decay for r in runs], np.float32),
            milestones=np.asarray([list(r.config.lr_milestones) + [never] * (self.milestones_width
                                                                             - len(r.config.lr_milestones))
                                   for r in runs], np.int32).reshape(len(runs), self.milestones_width))
        self.consts = jax.tree_util.tree_map(put, round_lib.RunConsts(
            seed=np.asarray([r.config.seed for r in runs], np.int32),
            num_byzantine=np.asarray([r.config.num_byzantine if cfg.attack != "none" else 0 for r in runs], np.int32),
            index=np.asarray(index), counts=np.asarray(counts), local=local_hp,
            end_round=np.asarray([r.config.rounds for r in runs], np.int32), server=server_hp))
        self.x_train, self.y_train = put(ds.x_train), put(ds.y_train)
        x_test, y_test = ds.x_test, ds.y_test
        if cfg.max_test_samples is not None:
            x_test, y_test = x_test[: cfg.max_test_samples], y_test[: cfg.max_test_samples]
        self.x_test, self.y_test = put(x_test), put(y_test)
        # The runs' validation hold-outs `[R, V]` (V is the same for every run of a program group:
        # `validation_fraction` is structure); None without one.
        self.val_index = (put(np.stack([r.validation for r in runs]).astype(np.int32))
                          if cfg.validation_fraction > 0 else None)
        self._init_state(put)
        self._shape()

    def _init_state(self, put) -> None:
        """Initial state, then each run's checkpoint where it has one; each run's own chain state is
        placed in the grid's (`ServerGrid.embed`)."""
        runs = self.runs
        flat0 = [training.flatten_variables(
            components.init_variables(self.model, components.init_seed(r.config), self.programs)) for r in runs]
        self.unravel = flat0[0][1]
        d = flat0[0][0].shape[0]
        self.d = d
        shape_struct = jax.ShapeDtypeStruct((self.cfg.clients_per_round, d), jnp.float32)
        template = self.grid.init(shape_struct)
        a, r_ = self.pair_index
        states = []
        for i, r in enumerate(runs):
            stage_state = self.run_pipes[i].init(shape_struct)
            w = np.asarray(flat0[i][0])
            # DSGD's worker momenta start at zero (`RunState.momentum`).
            momentum = np.zeros((self.cfg.num_clients, d), np.float32) if self.dsgd else None
            ckpt = None if r.run_dir is None else os.path.join(r.run_dir, store.CHECKPOINT)
            if ckpt is not None and os.path.exists(ckpt):
                w, stage_state, r.start_round, r.history, r.compile_rounds, meta, momentum = store.load_checkpoint(
                    ckpt, r.config, stage_state, w, momentum_like=momentum)
                store.check_fingerprints(ckpt, meta.get("user_objects", {}), r.fingerprints)
                r.diverged_round = next((h["round"] for h in r.history if not h.get("finite", True)), None)
            states.append((w, self.grid.embed(a, r_, stage_state, template), momentum))
        stack = lambda *xs: np.stack([np.asarray(x) for x in xs])  # noqa: E731
        self.state = jax.tree_util.tree_map(put, round_lib.RunState(
            w=stack(*[s[0] for s in states]),
            stage_state=jax.tree_util.tree_map(stack, *[s[1] for s in states]),
            round=np.asarray([r.start_round for r in runs], np.int32),
            active=np.asarray([r.diverged_round is None and r.start_round < r.config.rounds for r in runs]),
            momentum=stack(*[s[2] for s in states]) if self.dsgd else None))

    def run_stage_state(self, stage_state, i: int):
        """Run `i`'s own chain state (its checkpoint's) out of the batch's stacked grid state."""
        one = jax.tree_util.tree_map(lambda a: a[i], stage_state)
        return self.grid.extract(*self.pair_index, one)

    def _shape(self) -> None:
        cfg, n = self.cfg, self.cfg.clients_per_round
        D = cfg.num_devices
        runs, group = self.runs, self.group
        steps = plan.device_blocks(np.concatenate([r.steps for r in runs]), D)
        trained = runs[0].steps.shape[1]  # n, plus the root set
        group_steps = plan.device_blocks(np.concatenate([r.steps for r in group]), D)
        # "vmap" on one device: chunks of clients, each padded to its round's longest (no packing).
        per_client = runs[0].strategy == "vmap" and D == 1
        if per_client:
            L, _, padded = training.vmap_layout(steps, steps.shape[1], runs[0].lanes)
            T = training.vmap_layout(group_steps, steps.shape[1], L)[1]
        else:
            L, _, padded = training.choose_lanes(steps, steps.shape[1], runs[0].lanes)
            T = training.choose_lanes(group_steps, steps.shape[1], L)[1]
        if plan.plan_rounds(cfg, self.settings)[1]:  # the plan saw a few rounds only: any round fits the worst case
            bound = plan.longest_client if per_client else plan.lane_capacity_bound
            T = max(T, max(bound(r.table, r.config, trained, L) for r in group))
        # Capacities rounded up to a power of two, so that later calls whose partitions differ a
        # little reuse the program (a round runs its own makespan, not the capacity).
        self.shape = round_lib.RoundShape(n, cfg.batch_size, cfg.local_epochs, L, plan.pow2(T),
                                          plan.pow2(int(group_steps.max())), int(self.ds.x_train.shape[0]),
                                          runs[0].root, schedule.batch_slots(cfg.batch_size, self.width), D,
                                          cfg.local_steps, "hflip" in cfg.augmentation, per_client, cfg.batch_order)
        self.calibration = None
        self.new_program = True  # set by simulate_many: whether it compiled a program of its own
        strategy = runs[0].strategy
        if strategy == "measure":
            self.calibration = training.measure_strategies(
                self.model, self.local_cfg, self.x_train, self.y_train, batch_size=cfg.batch_size, lanes=L,
                lane_steps=int(training.makespans(steps, L).max()), total_steps=int(steps.sum(axis=1).max()))
            strategy = training.choose_strategy(self.calibration)
            for r in runs:
                r.strategy = strategy
        self.strategy = strategy
        self.device = strategy in training.DEVICE_STRATEGIES
        self.padded_fraction = padded if self.device else 0.0
        # The training writes its matrix into a donated buffer: the server's, handed back each round
        # (`recycle`), unless the loop reads the matrices (`with_updates`).
        self.writes_into = self.device and round_lib.writes_into(self.shape, self.mesh)
        self.recycle = self.writes_into and not self.with_updates

    def describe(self) -> dict[str, Any]:
        """How the batch ran (a result's `batch` entry)."""
        return {"runs": len(self.runs), "strategy": self.strategy, "lanes": self.shape.lanes,
                "devices": self.shape.devices, "batch_slots": self.shape.batch_slots,
                "lane_steps": self.shape.lane_steps, "padded_fraction": round(self.padded_fraction, 4),
                "calibration_s": self.calibration, "grid": [len(self.grid_branches[0]), len(self.grid_branches[1])]}

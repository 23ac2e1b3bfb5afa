"""One local training step of every model, strike_jax against PyTorch; vmapped lanes; the CIFAR round.

    python -m experiments.bench_steps                       # all sections, CPU sizes of the paper
    python -m experiments.bench_steps --sections steps,lanes --reps 10
    python -m experiments.bench_steps --include-resnet      # + ResNet-18 at 224x224, batch 128 (slow)
    python -m experiments.bench_steps --quick --results-dir /tmp/x   # shrunk sizes (rehearsal)

PyTorch is an optional extra (`pip install 'strike_jax[bench]'`, CPU wheel): never a core or test
dependency. Without it the PyTorch columns are skipped (the script says so). PyTorch runs with
`torch.set_num_threads(<cores>)`, in the same process, interleaved with the JAX calls.

A step is what `strike_jax.training.make_local_step` does (SPEC §3) and the same in PyTorch:
gather the batch from the training set, forward, mean cross-entropy, backward, clip the gradient
to global norm 2 (`clip_grad_norm_`), SGD with weight decay 1e-4 (added after clipping) and
heavy-ball momentum 0.9. Times are medians of `--reps` calls after warm-up (the JAX step is jitted
with its buffers donated, as the "steps" strategy runs it).

Sections (`--sections`, comma-separated; default all but `layers`):

* `steps`: every model at its paper batch size (AlexNet-CIFAR 128, small CNN 64 at 28x28x1, LEAF CNN
  and FEMNIST CNN 32, MLP 64; ResNet-18 128 at 224x224 with `--include-resnet`): strike_jax with
  `conv_impl="lax"` (XLA's convolution and `reduce_window` pooling: the code before the
  convolution chooser), with the default `conv_impl="auto"`, and PyTorch; the ratios.
* `ab`: the step under `--baseline-impl` against the default, interleaved in 8 rounds of 10 calls
  each (a before/after of a change to the convolution policy on a shared machine).
* `lanes`: the step `jax.vmap`ped over L lanes (8 and 50) each with its own parameters and batch,
  against the L lanes' steps run one after another (the same jitted single step); small CNN
  (28x28x1, batch 64) and AlexNet-CIFAR (batch 128). `conv_impl="lax"` (a grouped convolution
  under vmap) as the reference at L = 8.
* `scan`: S = 8 steps (one CIFAR client's epoch) as a rolled `lax.scan`, unrolled in one program,
  and as a host loop of the jitted step; and the scan vmapped over 8 lanes.
* `round`: the paper's CIFAR-10 round, 50 clients x 1000 samples (32x32x3), batch 128, one local
  epoch (8 steps each, the last with 104 examples): strike_jax's `training.make_plan_updates` on
  the round's plan (`training.schedule`; each strategy given by `--round-strategies`; the fastest
  is reported) against PyTorch training the clients one after another on the same batches (the
  plan's per-client layout; fresh optimizer per client, update = new - old weights).
* `layers`: per convolution layer of the paper models and per pass (forward, input gradient,
  kernel gradient), every form of `strike_jax.models.conv` alone (and vmapped over 8 lanes), next
  to the form the "cpu" policy picks: the measurements behind the choice.

Writes `<results-dir>/bench_steps_<backend>.json` and `.md` (atomically); the machine's load average
before and after is recorded (other processes share the cores: compare within one run).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from strike_jax import models, training  # noqa: E402
from strike_jax.atomic import write_json, write_text  # noqa: E402
from strike_jax.models import conv as conv_lib  # noqa: E402
from strike_jax.models import pool as pool_lib  # noqa: E402
from strike_jax.training import schedule as schedule_lib  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY, CLIP = 0.05, 0.9, 1e-4, 2.0

# name: (registry name, input shape, classes, paper batch)
STEP_CASES = {
    "alexnet_cifar": ("alexnet_cifar", (32, 32, 3), 10, 128),
    "small_cnn": ("small_cnn", (28, 28, 1), 10, 64),
    "leaf_cnn": ("leaf_cnn", (28, 28, 1), 62, 32),
    "femnist_cnn": ("femnist_cnn", (28, 28, 1), 62, 32),
    "mlp": ("mlp", (28, 28, 1), 10, 64),
    "resnet18": ("resnet18", (224, 224, 3), 12, 128),
}
DISPLAY = {"alexnet_cifar": "AlexNet-CIFAR (32x32x3)", "small_cnn": "small CNN (28x28x1)",
           "leaf_cnn": "LEAF CNN (28x28x1)", "femnist_cnn": "FEMNIST CNN (28x28x1)", "mlp": "MLP (28x28x1)",
           "resnet18": "ResNet-18 (224x224x3)"}


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _median_ms(ts):
    return 1e3 * statistics.median(ts)


CPU_TIMES: dict = {}  # name -> process CPU seconds per call of the last `interleaved` (all threads)


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """Calls every `fns[name]()` `warmup` times, then `reps` rounds of one call each, in rotating
    order (a load change on the shared machine then touches all alike). Returns name -> wall times
    (s); the process CPU times of the same calls are left in `CPU_TIMES` (less sensitive to other
    processes than wall time, though spinning worker threads count too)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {n: [] for n in names}
    CPU_TIMES.clear()
    CPU_TIMES.update({n: [] for n in names})
    for r in range(reps):
        for j in range(len(names)):
            name = names[(j + r) % len(names)]
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
            CPU_TIMES[name].append(time.process_time() - c0)
    return times


# ------------------------------------------------------------------------------------------------
# PyTorch (optional).


def import_torch(threads: int, backend: str):
    """PyTorch, or None (with a message) when it is not installed. On a GPU backend PyTorch runs on
    CUDA (cuDNN autotuning on) when it can, else the PyTorch columns are skipped."""
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: the PyTorch columns are skipped (install the optional extra: "
              "pip install 'strike_jax[bench]', a CPU build of torch).", flush=True)
        return None
    torch.set_num_threads(threads)
    if backend == "gpu":
        if not torch.cuda.is_available():
            print("PyTorch has no CUDA device: the PyTorch columns are skipped on this GPU run.", flush=True)
            return None
        torch.backends.cudnn.benchmark = True
    return torch


def _torch_device(torch) -> str:
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def torch_model(torch, name: str, shape, classes: int):
    """The registry model `name` in PyTorch (NCHW), PyTorch's default initialisation."""
    nn = torch.nn
    h, w, c = shape
    if name == "alexnet_cifar":
        return nn.Sequential(
            nn.Conv2d(c, 64, 11, 4, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(256 * (h // 32) * (w // 32), classes))
    if name in ("small_cnn", "femnist_cnn", "leaf_cnn"):
        k, c1, c2, hidden = {"small_cnn": (3, 16, 32, 64), "femnist_cnn": (5, 16, 32, 512),
                             "leaf_cnn": (5, 32, 64, 2048)}[name]
        return nn.Sequential(
            nn.Conv2d(c, c1, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), hidden), nn.ReLU(), nn.Linear(hidden, classes))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, 128), nn.ReLU(), nn.Linear(128, classes))
    if name == "resnet18":
        return _torch_resnet18(torch, classes)
    raise ValueError(name)


def _torch_resnet18(torch, classes):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for b in range(2):
            layers.append(Block(cin, cout, 2 if (stage > 0 and b == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


class TorchTrainer:
    """PyTorch's step on the same data: index the batch, forward, CE, backward, clip, SGD."""

    def __init__(self, torch, name, shape, classes, x_nhwc: np.ndarray, y: np.ndarray):
        self.torch = torch
        self.device = _torch_device(torch)
        self.model = torch_model(torch, name, shape, classes).to(self.device)
        self.x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(self.device)
        self.y = torch.from_numpy(y.astype(np.int64)).to(self.device)
        self.loss = torch.nn.CrossEntropyLoss()
        self.params = list(self.model.parameters())
        self.opt = self.fresh_optimizer()

    def fresh_optimizer(self):
        return self.torch.optim.SGD(self.params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self, idx: np.ndarray, opt=None):
        torch = self.torch
        opt = self.opt if opt is None else opt
        i = torch.from_numpy(idx.astype(np.int64)).to(self.device)
        xb, yb = self.x.index_select(0, i), self.y.index_select(0, i)
        opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        opt.step()
        return loss

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# strike_jax.


def _cfg(classes):
    return training.LocalConfig(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, clip_norm=CLIP,
                                num_classes=classes)


class JaxStepper:
    """The jitted local step of `model` with its state carried between calls (buffers donated)."""

    def __init__(self, model, classes, x, y, batch, seed=0):
        ls = training.make_local_step(model, _cfg(classes))
        variables = jax.jit(model.init)(jax.random.PRNGKey(seed))
        self.params = variables["params"]
        self.bs = variables.get("batch_stats", {})
        self.opt = jax.jit(ls.init_opt)(self.params)
        self.fn = jax.jit(ls.step, donate_argnums=(0, 1, 2))
        self.x, self.y = x, y
        self.mask = jnp.ones((batch,), bool)
        self.flip = jnp.asarray(False)
        self.loss = None

    def step(self, idx):
        self.params, self.bs, self.opt, self.loss = self.fn(
            self.params, self.bs, self.opt, self.x, self.y, idx, self.mask, self.flip)
        return self.loss

    def sync(self):
        jax.block_until_ready((self.params, self.loss))


def _data(rng, n, shape, classes):
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    return x, y


def bench_steps(args, torch) -> list[dict]:
    rows = []
    names = [n for n in STEP_CASES if n != "resnet18" or args.include_resnet]
    if args.models:
        names = [n for n in names if n in args.models]
    for name in names:
        reg, shape, classes, batch = STEP_CASES[name]
        if args.quick:
            batch = max(4, batch // 16)
            if name == "resnet18":
                shape, batch = (32, 32, 3), 4
        rng = np.random.default_rng(0)
        n_data = 4 * batch
        x_np, y_np = _data(rng, n_data, shape, classes)
        x, y = jnp.asarray(x_np), jnp.asarray(y_np)
        batches = [rng.permutation(n_data)[:batch].astype(np.int32) for _ in range(8)]
        dev_batches = [jnp.asarray(b) for b in batches]
        resolved = models.get(reg, classes, shape).conv_impl
        # Where "auto" is "lax" (accelerators) the two columns are one measurement.
        impls = {"lax": args.baseline_impl, "auto": "auto"} if resolved != "lax" else {"lax": "lax"}
        steppers, compile_s = {}, {}
        for label, impl in impls.items():
            model = models.get(reg, classes, shape, conv_impl=impl)
            st = JaxStepper(model, classes, x, y, batch)
            t0 = time.perf_counter()
            st.step(dev_batches[0])
            st.sync()
            compile_s[label] = time.perf_counter() - t0
            steppers[label] = st
        n_params = models.num_params(models.get(reg, classes, shape))
        counter = {"i": 0}

        def jax_call(st):
            def call():
                counter["i"] += 1
                st.step(dev_batches[counter["i"] % len(dev_batches)])
                st.sync()
            return call

        fns = {f"jax_{k}": jax_call(v) for k, v in steppers.items()}
        if torch is not None:
            tt = TorchTrainer(torch, reg, shape, classes, x_np, y_np)
            if tt.num_params() != n_params:
                raise RuntimeError(f"{name}: PyTorch model has {tt.num_params()} parameters, strike_jax {n_params}.")

            def torch_call():
                counter["i"] += 1
                tt.step(batches[counter["i"] % len(batches)])
                tt.sync()
            fns["torch"] = torch_call
        reps = args.reps
        if name == "resnet18":
            reps = max(3, reps // 10)
        load0 = _load()
        times = interleaved(fns, reps)
        row = dict(model=name, batch=batch, params=n_params, conv_impl=resolved, reps=reps, load_before=load0,
                   load_after=_load(), compile_s=compile_s)
        for k, ts in times.items():
            row[f"{k}_ms"] = _median_ms(ts)
            row[f"{k}_min_ms"] = 1e3 * min(ts)
            row[f"{k}_cpu_ms"] = _median_ms(CPU_TIMES[k])
        if "jax_auto_ms" not in row:
            for suffix in ("ms", "min_ms", "cpu_ms"):
                row[f"jax_auto_{suffix}"] = row[f"jax_lax_{suffix}"]
            compile_s["auto"] = compile_s["lax"]
        if torch is not None:
            row["ratio_before"] = row["jax_lax_ms"] / row["torch_ms"]
            row["ratio_after"] = row["jax_auto_ms"] / row["torch_ms"]
        row["speedup"] = row["jax_lax_ms"] / row["jax_auto_ms"]
        rows.append(row)
        print(f"[steps] {name:14s} B={batch:3d}  (CPU ms: " + ", ".join(
            f"{k} {row[k + '_cpu_ms']:.1f}" for k in fns) + ")", flush=True)
        print(f"[steps] {name:14s} B={batch:3d}  before {row['jax_lax_ms']:8.2f} ms  auto({resolved}) "
              f"{row['jax_auto_ms']:8.2f} ms" + (f"  torch {row['torch_ms']:8.2f} ms  ratio {row['ratio_before']:.2f}"
                                                 f" -> {row['ratio_after']:.2f}" if torch is not None else "")
              + f"  load {load0}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Lanes: the step vmapped over per-lane parameters vs the lanes one after another.


def _lane_setup(reg, shape, classes, batch, lanes, impl, seed=0):
    model = models.get(reg, classes, shape, conv_impl=impl)
    ls = training.make_local_step(model, _cfg(classes))
    rng = np.random.default_rng(seed)
    n_data = 4 * batch
    x_np, y_np = _data(rng, n_data, shape, classes)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    keys = jax.random.split(jax.random.PRNGKey(seed), lanes)
    variables = jax.jit(jax.vmap(model.init))(keys)
    params = variables["params"]
    bs = variables.get("batch_stats", {})
    opt = jax.jit(jax.vmap(ls.init_opt))(params)
    idx = jnp.asarray(np.stack([rng.permutation(n_data)[:batch] for _ in range(lanes)]).astype(np.int32))
    mask = jnp.ones((lanes, batch), bool)
    flip = jnp.zeros((lanes,), bool)
    return model, ls, x, y, params, bs, opt, idx, mask, flip


def bench_ab(args) -> list[dict]:
    """`ab`: the local step under `--baseline-impl` against the default `auto`, interleaved: 8 rounds,
    each 10 calls of one then 10 of the other (medians over the 80 calls each; wall and process CPU
    time). Steadier than the `steps` section's single block per form on a shared machine."""
    rows = []
    names = [n for n in STEP_CASES if n != "resnet18"]
    if args.models:
        names = [n for n in names if n in args.models]
    for name in names:
        reg, shape, classes, batch = STEP_CASES[name]
        rng = np.random.default_rng(0)
        x_np, y_np = _data(rng, 4 * batch, shape, classes)
        x, y = jnp.asarray(x_np), jnp.asarray(y_np)
        idx = [jnp.asarray(rng.permutation(4 * batch)[:batch].astype(np.int32)) for _ in range(4)]
        forms = {"before": args.baseline_impl, "auto": "auto"}
        st = {k: JaxStepper(models.get(reg, classes, shape, conv_impl=v), classes, x, y, batch)
              for k, v in forms.items()}
        for s in st.values():
            for i in range(3):
                s.step(idx[i % 4])
                s.sync()
        wall: dict = {k: [] for k in st}
        cpu: dict = {k: [] for k in st}
        for _ in range(8):
            for k, s in st.items():
                for i in range(10):
                    t, c = time.perf_counter(), time.process_time()
                    s.step(idx[i % 4])
                    s.sync()
                    wall[k].append(time.perf_counter() - t)
                    cpu[k].append(time.process_time() - c)
        row = {"model": name, "batch": batch, "baseline_impl": args.baseline_impl,
               "conv_impl": models.get(reg, classes, shape).conv_impl}
        for k in st:
            row[f"{k}_ms"] = 1e3 * float(np.median(wall[k]))
            row[f"{k}_cpu_ms"] = 1e3 * float(np.median(cpu[k]))
        row["ratio"] = row["auto_ms"] / row["before_ms"]
        print(f"[ab] {name:14s} {args.baseline_impl} {row['before_ms']:.2f} ms  auto {row['auto_ms']:.2f} ms  "
              f"auto/before {row['ratio']:.3f}  load {list(os.getloadavg())}", flush=True)
        rows.append(row)
    return rows


def bench_lanes(args) -> list[dict]:
    rows = []
    cases = [("small_cnn", "small_cnn", (28, 28, 1), 10, 64), ("alexnet_cifar", "alexnet_cifar", (32, 32, 3), 10, 128)]
    lane_counts = (2,) if args.quick else tuple(args.lanes)
    for name, reg, shape, classes, batch in cases:
        if args.quick:
            batch = max(4, batch // 16)
        for lanes in lane_counts:
            auto_is_lax = models.get(reg, classes, shape).conv_impl == "lax"
            impls = ["auto"] + (["lax"] if lanes == lane_counts[0] and not auto_is_lax else [])
            for impl in impls:
                model, ls, x, y, params, bs, opt, idx, mask, flip = _lane_setup(reg, shape, classes, batch, lanes, impl)
                vstep = jax.jit(jax.vmap(ls.step, in_axes=(0, 0, 0, None, None, 0, 0, 0)), donate_argnums=(0, 1, 2))
                one = jax.jit(ls.step, donate_argnums=(0, 1, 2))
                unstack = lambda t, i: jax.tree_util.tree_map(lambda a: a[i], t)  # noqa: E731
                state = {"v": (params, bs, opt)}
                seq = {"s": [tuple(jax.tree_util.tree_map(jnp.copy, unstack(t, i)) for t in (params, bs, opt))
                             for i in range(lanes)]}
                t0 = time.perf_counter()
                out = vstep(*state["v"], x, y, idx, mask, flip)
                jax.block_until_ready(out)
                compile_v = time.perf_counter() - t0
                state["v"] = out[:3]

                def run_v():
                    out = vstep(*state["v"], x, y, idx, mask, flip)
                    jax.block_until_ready(out)
                    state["v"] = out[:3]

                def run_seq():
                    new = []
                    for i in range(lanes):
                        p, b, o, loss = one(*seq["s"][i], x, y, idx[i], mask[i], flip[i])
                        new.append((p, b, o))
                    jax.block_until_ready(new)
                    seq["s"] = new

                reps = max(3, args.reps // (4 if lanes > 8 else 2))
                if impl == "lax" and name == "alexnet_cifar":
                    reps = 3
                load0 = _load()
                times = interleaved({"vmap": run_v, "sequential": run_seq}, reps, warmup=1)
                row = dict(model=name, batch=batch, lanes=lanes, conv_impl=models.get(reg, classes, shape,
                                                                                      conv_impl=impl).conv_impl,
                           vmap_ms=_median_ms(times["vmap"]), sequential_ms=_median_ms(times["sequential"]),
                           vmap_cpu_ms=_median_ms(CPU_TIMES["vmap"]), sequential_cpu_ms=_median_ms(CPU_TIMES["sequential"]),
                           compile_vmap_s=compile_v, reps=reps, load_before=load0, load_after=_load())
                row["ratio"] = row["vmap_ms"] / row["sequential_ms"]
                rows.append(row)
                print(f"[lanes] {name:14s} B={batch} L={lanes:2d} {row['conv_impl']:4s} vmap {row['vmap_ms']:9.1f} ms  "
                      f"sequential {row['sequential_ms']:9.1f} ms  ratio {row['ratio']:.2f}  (CPU time "
                      f"{row['vmap_cpu_ms']:.0f} vs {row['sequential_cpu_ms']:.0f} ms)  load {load0}", flush=True)
                del state, seq
    return rows


# ------------------------------------------------------------------------------------------------
# Scan: S steps rolled in a lax.scan, unrolled, or a host loop.


def bench_scan(args) -> list[dict]:
    rows = []
    S = 2 if args.quick else 8
    cases = [("small_cnn", "small_cnn", (28, 28, 1), 10, 64), ("alexnet_cifar", "alexnet_cifar", (32, 32, 3), 10, 128)]
    for name, reg, shape, classes, batch in cases:
        if args.quick:
            batch = max(4, batch // 16)
        impls = ["auto"] + (["lax"] if name == "small_cnn" else [])
        for impl in impls:
            model, ls, x, y, params, bs, opt, idx, mask, flip = _lane_setup(reg, shape, classes, batch, S, impl)
            p0 = jax.tree_util.tree_map(lambda a: a[0], params)
            b0 = jax.tree_util.tree_map(lambda a: a[0], bs)
            o0 = jax.tree_util.tree_map(lambda a: a[0], opt)

            def body(carry, inp):
                p, b, o = carry
                i, m = inp
                p, b, o, loss = ls.step(p, b, o, x, y, i, m, jnp.asarray(False))
                return (p, b, o), loss

            def scanned(p, b, o, idx, mask):
                return jax.lax.scan(body, (p, b, o), (idx, mask))

            def unrolled(p, b, o, idx, mask):
                carry, losses = (p, b, o), []
                for s in range(S):
                    carry, loss = body(carry, (idx[s], mask[s]))
                    losses.append(loss)
                return carry, jnp.stack(losses)

            f_scan, f_unroll = jax.jit(scanned), jax.jit(unrolled)
            one = jax.jit(ls.step)
            lanes = 8 if not args.quick else 2
            vscan = jax.jit(jax.vmap(scanned, in_axes=(0, 0, 0, None, None)))
            pl = jax.tree_util.tree_map(lambda a: jnp.stack([a] * lanes), (p0, b0, o0))
            compile_s = {}
            for label, f, a in (("scan", f_scan, (p0, b0, o0, idx, mask)), ("unrolled", f_unroll, (p0, b0, o0, idx, mask)),
                                (f"vmap{lanes}_scan", vscan, (*pl, idx, mask))):
                t0 = time.perf_counter()
                jax.block_until_ready(f(*a))
                compile_s[label] = time.perf_counter() - t0

            def host():
                c = (p0, b0, o0)
                for s in range(S):
                    *c, loss = one(*c, x, y, idx[s], mask[s], jnp.asarray(False))
                jax.block_until_ready(c)

            fns = {"scan": lambda: jax.block_until_ready(f_scan(p0, b0, o0, idx, mask)),
                   "unrolled": lambda: jax.block_until_ready(f_unroll(p0, b0, o0, idx, mask)),
                   "host_loop": host,
                   f"vmap{lanes}_scan": lambda: jax.block_until_ready(vscan(*pl, idx, mask))}
            reps = max(3, args.reps // 5)
            load0 = _load()
            times = interleaved(fns, reps, warmup=1)
            row = dict(model=name, batch=batch, steps=S, lanes=lanes, reps=reps, load_before=load0, load_after=_load(),
                       conv_impl=model.conv_impl, compile_s=compile_s, **{f"{k}_ms": _median_ms(v) for k, v in times.items()},
                       cpu_ms={k: _median_ms(v) for k, v in CPU_TIMES.items()})
            rows.append(row)
            print(f"[scan]  {name:14s} {model.conv_impl:4s} S={S} " + "  ".join(
                f"{k} {row[k + '_ms']:8.1f} ms" for k in fns) + f"  load {load0}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# The CIFAR-10 round.


def bench_round(args, torch) -> dict:
    n, per, batch, classes, shape = (50, 1000, 128, 10, (32, 32, 3))
    if args.quick:
        n, per, batch = 2, 32, 16
    S = math.ceil(per / batch)
    rng = np.random.default_rng(0)
    x_np, y_np = _data(rng, n * per, shape, classes)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    model = models.get("alexnet_cifar", classes, shape)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0))
    cfg = _cfg(classes)

    # Client i holds samples i * per .. (i + 1) * per - 1; round r's plan (all n clients) is drawn on
    # the device, and PyTorch trains on its per-client layout: the same batches in the same order.
    index = jnp.arange(n * per, dtype=jnp.int32).reshape(n, per)
    counts = jnp.full((n,), per, jnp.int32)
    plan = jax.jit(lambda r: schedule_lib.client_batches(index, counts, 0, r, per_round=n, batch_size=batch,
                                                         local_epochs=1))
    layout = jax.jit(lambda cb: schedule_lib.padded_schedule(cb, batch_size=batch, num_steps=S))

    rounds = 1 if args.quick else args.round_reps
    plans = [plan(r) for r in range(rounds + 1)]
    schedules = [tuple(np.asarray(a) for a in layout(cb)) for cb in plans]
    flip = np.zeros(n, bool)
    out = dict(clients=n, samples_per_client=per, batch=batch, steps_per_client=S, conv_impl=model.conv_impl,
               rounds=rounds, strategies={})
    fns, ref = {}, None
    for strategy in args.round_strategies:
        cu = training.make_plan_updates(model, cfg, strategy, batch_size=batch)
        t0 = time.perf_counter()
        U, _ = cu(variables, x, y, plans[0], flip)
        U.block_until_ready()
        first = time.perf_counter() - t0
        ref = np.asarray(U) if ref is None else ref
        err = float(np.abs(np.asarray(U) - ref).max())
        out["strategies"][strategy] = dict(first_call_s=first, max_abs_diff_vs_first=err)
        print(f"[round] strike_jax {strategy}: first call {first:.1f} s", flush=True)
        fns[f"jax_{strategy}"] = functools.partial(
            lambda cu, r: cu(variables, x, y, plans[1 + r % rounds], flip)[0].block_until_ready(), cu)
    if torch is not None:
        tt = TorchTrainer(torch, "alexnet_cifar", shape, classes, x_np, y_np)
        global_state = {k: v.clone() for k, v in tt.model.state_dict().items()}

        def torch_round(r):
            idx, mask = schedules[1 + r % rounds]
            rows = []
            flat0 = torch.cat([p.detach().reshape(-1) for p in global_state.values()])
            for i in range(n):
                tt.model.load_state_dict(global_state)
                opt = tt.fresh_optimizer()
                for s in range(S):
                    tt.step(idx[i, s][mask[i, s]], opt)
                rows.append(torch.cat([p.detach().reshape(-1) for p in tt.model.state_dict().values()]) - flat0)
            out = torch.stack(rows)
            tt.sync()
            return out

        fns["torch"] = torch_round
    times = {k: [] for k in fns}
    load0 = _load()
    for r in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f(r)
            times[name].append(time.perf_counter() - t0)
        print(f"[round] {r + 1}/{rounds}: " + "  ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    for k, v in times.items():
        out[f"{k}_s"] = statistics.median(v)
    jax_keys = [k for k in times if k.startswith("jax_")]
    best = min(jax_keys, key=lambda k: out[f"{k}_s"])
    out["jax_best"] = best[4:]
    out["jax_best_s"] = out[f"{best}_s"]
    if torch is not None:
        out["ratio"] = out["jax_best_s"] / out["torch_s"]
    out["load_before"], out["load_after"] = load0, _load()
    return out


# ------------------------------------------------------------------------------------------------
# Layers: every form of every pass of every convolution of the paper models.


def bench_layers(args) -> list[dict]:
    rows = []
    cases = [("alexnet_cifar", (32, 32, 3), 10, 128), ("small_cnn", (28, 28, 1), 10, 64),
             ("femnist_cnn", (28, 28, 1), 62, 32), ("leaf_cnn", (28, 28, 1), 62, 32)]
    rng = np.random.default_rng(0)
    for reg, shape, classes, batch in cases:
        if args.quick:
            batch = max(4, batch // 8)
        model = models.get(reg, classes, shape, conv_impl="cpu")
        for lname, layer in models.conv_plans(model, batch).items():
            cs = layer.shape
            for lanes in (None, 8) if not args.quick else (None, 2):
                lead = () if lanes is None else (lanes,)
                x = jnp.asarray(rng.normal(size=lead + (cs.batch, cs.height, cs.width, cs.in_channels)).astype(np.float32))
                k = jnp.asarray(0.05 * rng.normal(size=lead + (*cs.kernel, cs.in_channels, cs.out_channels)).astype(np.float32))
                ho, wo = cs.out_hw
                dy = jnp.asarray(rng.normal(size=lead + (cs.batch, ho, wo, cs.out_channels)).astype(np.float32))
                first = lname == "conv1"
                fns = {}
                for pass_name, forms in conv_lib._PASS_FORMS.items():
                    if pass_name == "input_grad" and first:
                        continue  # the first layer's input gradient is never computed
                    for form in forms:
                        if form == "dense" and cs.height * cs.width > 4 * cs.kernel[0] * cs.kernel[1]:
                            continue
                        if form == "lax" and lanes is not None and reg == "alexnet_cifar" and not first:
                            continue  # grouped convolution at 2x2-4x4: seconds per call
                        plan = conv_lib.ConvPlan(*(form if p == pass_name else "lax" for p in conv_lib.ConvPlan._fields))
                        if pass_name == "forward":
                            f = lambda x, k, dy, plan=plan: conv_lib.conv2d(x, k, cs.strides, cs.padding, plan)  # noqa: E731
                        else:
                            which = 0 if pass_name == "input_grad" else 1

                            def f(x, k, dy, plan=plan, which=which):
                                return jax.vjp(lambda x, k: conv_lib.conv2d(x, k, cs.strides, cs.padding, plan),
                                               x, k)[1](dy)[which]
                        if lanes is not None:
                            f = jax.vmap(f)
                        jf = jax.jit(f)
                        fns[(pass_name, form)] = (lambda jf=jf: jax.block_until_ready(jf(x, k, dy)))
                times = interleaved(fns, max(3, args.reps // 3), warmup=1)
                chosen = layer.plan if lanes is None else layer.lane_plan
                for (pass_name, form), ts in times.items():
                    rows.append(dict(model=reg, layer=lname, shape=list(cs), lanes=lanes or 1, pass_=pass_name,
                                     form=form, ms=_median_ms(ts), gflops=cs.flops(form) * (lanes or 1) / 1e9,
                                     chosen=(chosen is not None and getattr(chosen, pass_name) == form)
                                     or (chosen is None and form == "lax")))
                print(f"[layers] {reg} {lname} {tuple(cs)} lanes={lanes or 1}: " + "  ".join(
                    f"{p[:2]}.{f} {_median_ms(t):.2f}" for (p, f), t in times.items()), flush=True)
        # max pooling after each layer of the model (2x2): both forms, value + gradient
    return rows


# ------------------------------------------------------------------------------------------------
# Output.


def to_markdown(res) -> str:
    env = res["env"]
    L = [f"# One local training step: strike_jax vs PyTorch ({env['backend']}: {env['device']})", "",
         f"Generated by `experiments/bench_steps.py` on {env['date']}; jax {env['jax']}"
         + (f", PyTorch {env['torch']} ({env['torch_threads']} threads)" if env.get("torch") else ", PyTorch absent")
         + f"; {env['cpus']} CPUs ({env.get('usable_cpus', env['cpus'])} usable by the process). Load average (1, 5, 15 min) at start {env['load_start']}, end {env['load_end']} "
         "(a shared machine: compare numbers within a row, measured interleaved). Step = batch gather, "
         "forward, mean cross-entropy, backward, clip to global norm 2, SGD (momentum 0.9, weight decay "
         "1e-4); median of the step's calls after warm-up.", ""]
    if res.get("steps"):
        base = res.get("baseline_impl", "lax")
        what = ("`conv_impl=\"lax\"` (XLA's convolution and `reduce_window` pooling, the code before the "
                "convolution chooser)" if base == "lax" else f"`conv_impl={base!r}` (`--baseline-impl`)")
        L += ["## Steps", "",
              f"`{base}`: {what}; `auto`: the default (`conv_impl` it resolves to in brackets). Ratio = "
              "strike_jax / PyTorch (below 1: strike_jax faster).", "",
              f"| model | batch | params | strike_jax {base} (ms) | strike_jax auto (ms) | PyTorch (ms) | ratio before | "
              "ratio after | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["steps"]:
            t = r.get("torch_ms")
            L.append(f"| {DISPLAY[r['model']]} | {r['batch']} | {r['params']:,} | {r['jax_lax_ms']:.2f} | "
                     f"{r['jax_auto_ms']:.2f} ({r['conv_impl']}) | " + (f"{t:.2f}" if t else "-") + " | "
                     + (f"{r['ratio_before']:.2f}x | {r['ratio_after']:.2f}x" if t else "- | -")
                     + f" | {r['speedup']:.1f}x |")
        L += ["", "Process CPU time per step (ms, all threads; less disturbed by other processes than wall time, "
              "though threads that spin while waiting count too):", "",
              f"| model | strike_jax {base} | strike_jax auto | PyTorch |", "|---|---|---|---|"]
        for r in res["steps"]:
            t = r.get("torch_cpu_ms")
            L.append(f"| {DISPLAY[r['model']]} | {r['jax_lax_cpu_ms']:.1f} | {r['jax_auto_cpu_ms']:.1f} | "
                     + (f"{t:.1f}" if t else "-") + " |")
        L.append("")
    if res.get("ab"):
        L += ["## The step before and after, interleaved (`ab`)", "",
              "8 rounds of 10 calls of each form in turn; medians over the 80 calls. Ratio < 1: the default "
              "(`auto`) is faster.", "",
              "| model | batch | before (conv_impl) | before (ms) | auto (ms) | auto / before | CPU before (ms) | "
              "CPU auto (ms) |", "|---|---|---|---|---|---|---|---|"]
        for r in res["ab"]:
            L.append(f"| {DISPLAY[r['model']]} | {r['batch']} | `{r['baseline_impl']}` | {r['before_ms']:.2f} | "
                     f"{r['auto_ms']:.2f} ({r['conv_impl']}) | {r['ratio']:.3f} | {r['before_cpu_ms']:.1f} | "
                     f"{r['auto_cpu_ms']:.1f} |")
        L.append("")
    if res.get("lanes"):
        L += ["## Vmapped lanes (per-lane parameters and batches)", "",
              "One call of the step `jax.vmap`ped over L lanes vs the L lanes' steps one after another (the same "
              "jitted single step). Ratio < 1: the vmapped call is faster.", "",
              "| model | batch | lanes | conv_impl | vmap (ms) | one after another (ms) | ratio | vmap compile (s) |",
              "|---|---|---|---|---|---|---|---|"]
        for r in res["lanes"]:
            L.append(f"| {r['model']} | {r['batch']} | {r['lanes']} | {r['conv_impl']} | {r['vmap_ms']:.1f} | "
                     f"{r['sequential_ms']:.1f} | {r['ratio']:.2f} | {r['compile_vmap_s']:.1f} |")
        L.append("")
    if res.get("scan"):
        L += ["## Steps in a compiled loop", "",
              "S steps of one client: a rolled `lax.scan`, unrolled in one program, a host loop of the jitted step, "
              "and the scan vmapped over lanes (per-lane parameters, the same batches).", ""]
        keys = [k[:-3] for k in res["scan"][0] if k.endswith("_ms")]
        L += ["| model | conv_impl | S | " + " | ".join(f"{k} (ms)" for k in keys) + " |",
              "|---|---|---|" + "---|" * len(keys)]
        for r in res["scan"]:
            L.append(f"| {r['model']} | {r['conv_impl']} | {r['steps']} | " + " | ".join(
                f"{r[k + '_ms']:.1f}" for k in keys) + " |")
        L.append("")
    if res.get("round"):
        r = res["round"]
        L += ["## The CIFAR-10 round", "",
              f"{r['clients']} clients x {r['samples_per_client']} samples (32x32x3), batch {r['batch']}, one local "
              f"epoch ({r['steps_per_client']} steps per client), AlexNet-CIFAR, conv_impl {r['conv_impl']}; median "
              f"of {r['rounds']} rounds after a first (compiling) one. PyTorch trains the clients one after another.", "",
              "| runner | round (s) | first call (s) |", "|---|---|---|"]
        for s, d in r["strategies"].items():
            L.append(f"| strike_jax `{s}` | {r['jax_' + s + '_s']:.2f} | {d['first_call_s']:.1f} |")
        if "torch_s" in r:
            L.append(f"| PyTorch | {r['torch_s']:.2f} | - |")
            L += ["", f"Fastest strike_jax strategy `{r['jax_best']}`: {r['ratio']:.2f}x PyTorch's time."]
        L.append("")
    if res.get("layers"):
        L += ["## Convolution forms per layer and pass", "",
              "Each pass alone (`lax` elsewhere), median ms; `*` = the form the \"cpu\" policy picks (for lanes > 1: "
              "the lane plan, under vmap with per-lane kernels). GFLOP/s from the form's own FLOP count.", "",
              "| model | layer | input | lanes | pass | " + " | ".join(conv_lib._PASS_FORMS["kernel_grad"]) + " |",
              "|---|---|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in res["layers"]:
            groups.setdefault((r["model"], r["layer"], tuple(r["shape"]), r["lanes"], r["pass_"]), {})[r["form"]] = r
        for (m, lname, shape, lanes, p), forms in groups.items():
            cells = []
            for f in conv_lib._PASS_FORMS["kernel_grad"]:
                if f not in forms:
                    cells.append("-")
                    continue
                r = forms[f]
                cells.append(f"{r['ms']:.2f}{'*' if r['chosen'] else ''} ({r['gflops'] / r['ms'] * 1e3:.0f})")
            b, h, w, ci, co, kern, st, pd = shape
            L.append(f"| {m} | {lname} | {b}x{h}x{w}x{ci}->{co} k{kern[0]} s{st[0]} p{pd[0]} | {lanes} | {p} | "
                     + " | ".join(cells) + " |")
        L.append("")
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="steps,lanes,scan,round",
                    help="comma-separated: steps, lanes, scan, round, layers (default: all but layers)")
    ap.add_argument("--models", default="", help="steps section: comma-separated subset of " + ",".join(STEP_CASES))
    ap.add_argument("--include-resnet", action="store_true", help="steps section: ResNet-18 at 224x224, batch 128")
    ap.add_argument("--reps", type=int, default=30, help="timed calls per step (median)")
    ap.add_argument("--lanes", default="8,50", help="lanes section: lane counts")
    ap.add_argument("--round-reps", type=int, default=3, help="timed CIFAR rounds (median)")
    ap.add_argument("--round-strategies", default="steps,loop", help="strategies of training.make_plan_updates to time")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    ap.add_argument("--baseline-impl", default="lax",
                    help="steps section: the conv_impl of the 'before' column (default lax; e.g. lax/lax/lax: "
                         "XLA's convolution for every pass with the cpu policy's pooling)")
    ap.add_argument("--threads", type=int, default=0,
                    help="PyTorch threads (default: the CPUs this process may use); for a one-core "
                         "comparison run under `taskset -c 0` with --threads 1 (XLA then sizes its "
                         "thread pool to the one CPU too)")
    ap.add_argument("--quick", action="store_true", help="shrunk sizes and repetitions (a rehearsal, e.g. on CPU)")
    ap.add_argument("--results-dir", default=os.path.join(REPO_ROOT, "experiments", "results"))
    ap.add_argument("--tag", default="", help="suffix of the output files (default: the backend)")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.lanes = [int(v) for v in args.lanes.split(",") if v]
    args.round_strategies = [s for s in args.round_strategies.split(",") if s]
    if args.quick:
        args.reps = min(args.reps, 3)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"steps", "ab", "lanes", "scan", "round", "layers"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    backend = jax.default_backend()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or usable
    torch = None if args.no_torch else import_torch(threads, backend)
    env = dict(backend=backend, device=str(jax.devices()[0].device_kind), jax=jax.__version__,
               torch=None if torch is None else torch.__version__, torch_threads=threads if torch else None,
               cpus=os.cpu_count(), usable_cpus=usable, platform=platform.platform(), date=time.strftime("%Y-%m-%d %H:%M"),
               load_start=_load(), quick=args.quick, argv=sys.argv[1:])
    print(f"backend {backend} ({env['device']}), jax {jax.__version__}, torch {env['torch']}, load {env['load_start']}",
          flush=True)
    res = {"env": env}
    if "steps" in sections:
        res["steps"] = bench_steps(args, torch)
        res["baseline_impl"] = args.baseline_impl
    if "ab" in sections:
        res["ab"] = bench_ab(args)
    if "lanes" in sections:
        res["lanes"] = bench_lanes(args)
    if "scan" in sections:
        res["scan"] = bench_scan(args)
    if "round" in sections:
        res["round"] = bench_round(args, torch)
    if "layers" in sections:
        res["layers"] = bench_layers(args)
    env["load_end"] = _load()
    tag = args.tag or backend
    base = os.path.join(args.results_dir, f"bench_steps_{tag}")
    write_json(base + ".json", res)
    write_text(base + ".md", to_markdown(res) + "\n")
    print(f"wrote {base}.md and .json", flush=True)


if __name__ == "__main__":
    main()

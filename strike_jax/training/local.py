"""One client's local training with PyTorch SGD semantics (SPEC §3), and the update-vector layout.

One step on a batch (`idx [B]` into the shared training set, `mask [B]`):

1. `loss = mean cross-entropy over the real examples` (`mask` True), labels flipped `y -> C-1-y`
   for a LabelFlip client (SPEC §6);
2. `g = grad(loss)`; clip to global L2 norm `c` as `torch.nn.utils.clip_grad_norm_` does:
   `g *= min(1, c / (||g|| + 1e-6))`;
3. `d = g + wd * w` (weight decay after clipping, on every parameter, BatchNorm's too);
4. `buf = momentum * buf + d` (`buf` starts at 0 every round: a fresh optimizer each round);
5. `w = w - lr * buf` (no dampening, no Nesterov).

A step whose mask is all False (padding, so that clients with different sample counts share one
shape) is an exact no-op: parameters, momentum buffer and BatchNorm statistics come out
bit-identical (a select on CPU, a `lax.cond` elsewhere; see `default_skip`). For BatchNorm models
a batch with a single real example is skipped too (SPEC §3), and batch statistics use the real
examples only.

The update vector (SPEC §1): `flatten_variables(variables)` ravels `(params, batch_stats)` in that
order (`jax.flatten_util.ravel_pytree` of the tuple; inside each, jax's tree order, i.e. sorted
dict keys), so the first `num_params` coordinates are the parameters and the rest the running
statistics. The server applies `w += g` to all of it, BatchNorm statistics included.

References:
  SPEC.md §1, §3, §6; PyTorch `torch.optim.SGD`, `torch.nn.utils.clip_grad_norm_`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from strike_jax.data import augment as augment_lib

Array = jax.Array
Variables = dict[str, Any]


class LocalConfig(NamedTuple):
    """Local SGD hyper-parameters (SPEC §2 table, §3).

    Attributes:
      lr: learning rate (> 0).
      momentum: heavy-ball momentum in [0, 1).
      weight_decay: L2 coefficient added to the clipped gradient (>= 0).
      clip_norm: global L2 norm the gradient is clipped to every step, or None for no clipping.
      num_classes: classes, for label flipping.
      clip_eps: PyTorch's `clip_grad_norm_` divides by `norm + 1e-6` (the default); 0 gives optax's
        `clip_by_global_norm` up to rounding.
      label_map: `label_map(y, num_classes) -> y'`, the labels a flipped (LabelFlip) client trains on
        (`strike_jax.attacks` gives it as `Attack.label_map`); None: SPEC §6's `C - 1 - y`.
      augmentation: `("hflip",)`: the batch indices carry a horizontal flip per image
        (`data.augment.mark`, drawn by the round's plan) and the step mirrors those images; `()`:
        plain indices.

    The numbers `lr`, `momentum`, `weight_decay` and `clip_norm` fix only defaults: the step also
    takes them as (traced) arrays (`LocalHparams`), so runs that differ in them share one compiled
    program. What they fix statically is the optimizer's structure: clipping on/off, weight decay
    on/off, momentum on/off (`structure()`).
    """

    lr: float
    momentum: float
    weight_decay: float
    clip_norm: float | None
    num_classes: int
    clip_eps: float = 1e-6
    label_map: Callable[[Any, int], Any] | None = None
    augmentation: tuple = ()

    def hparams(self) -> LocalHparams:
        """The numbers as a `LocalHparams` of float32 scalars (clip_norm 0 when clipping is off)."""
        return LocalHparams(*(jnp.float32(0.0 if v is None else v)
                              for v in (self.lr, self.momentum, self.weight_decay, self.clip_norm)))

    def structure(self) -> tuple[bool, bool, bool]:
        """`(clip, decay, momentum)`: which parts of the optimizer exist (static)."""
        return self.clip_norm is not None, self.weight_decay > 0, self.momentum > 0


class LocalHparams(NamedTuple):
    """The local optimizer's numbers as (possibly traced, possibly batched) float32 arrays."""

    lr: Array
    momentum: Array
    weight_decay: Array
    clip_norm: Array


class LocalStats(NamedTuple):
    """What one client's local training reports (scalars; `[n]` after `make_client_updates`).

    Attributes:
      loss: mean training cross-entropy over the real examples of the steps taken (each step's loss
        before its update), 0 if no step was taken.
      num_steps: steps taken (int32).
      num_examples: real examples seen in the steps taken (int32).
    """

    loss: Array
    num_steps: Array
    num_examples: Array


def _check_config(cfg: LocalConfig) -> None:
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr={cfg.lr!r} must be a finite number > 0.")
    if not (isinstance(cfg.momentum, (int, float)) and 0.0 <= cfg.momentum < 1.0):
        raise ValueError(f"momentum={cfg.momentum!r} must be in [0, 1).")
    if not (isinstance(cfg.weight_decay, (int, float)) and math.isfinite(cfg.weight_decay)
            and cfg.weight_decay >= 0):
        raise ValueError(f"weight_decay={cfg.weight_decay!r} must be a finite number >= 0.")
    if cfg.clip_norm is not None and not (isinstance(cfg.clip_norm, (int, float))
                                          and math.isfinite(cfg.clip_norm) and cfg.clip_norm > 0):
        raise ValueError(f"clip_norm={cfg.clip_norm!r} must be None or a finite number > 0.")
    if not (isinstance(cfg.num_classes, int) and cfg.num_classes >= 1):
        raise ValueError(f"num_classes={cfg.num_classes!r} must be an int >= 1.")
    if not (isinstance(cfg.clip_eps, (int, float)) and cfg.clip_eps >= 0):
        raise ValueError(f"clip_eps={cfg.clip_eps!r} must be a number >= 0.")


def clip_by_global_norm_torch(max_norm: float | Array, eps: float = 1e-6) -> optax.GradientTransformation:
    """`g *= min(1, max_norm / (||g||_2 + eps))` over the whole pytree (`torch.nn.utils.clip_grad_norm_`).

    With `eps = 0` this equals `optax.clip_by_global_norm` up to rounding.
    """

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(1.0, jnp.asarray(max_norm, jnp.float32) / (norm + eps))
        return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(cfg: LocalConfig, hp: LocalHparams | None = None) -> optax.GradientTransformation:
    """clip -> add weight decay -> heavy-ball SGD, i.e. PyTorch's `SGD(lr, momentum, weight_decay)` after
    `clip_grad_norm_` (SPEC §3).

    Args:
      cfg: the structure (which parts exist) and the default numbers.
      hp: the numbers as (traced) arrays instead of `cfg`'s; the state's structure depends on `cfg`
        only, so one compiled step serves every `hp`.
    """
    _check_config(cfg)
    clip, decay, momentum = cfg.structure()
    # Without `hp`, the config's Python numbers (clip_norm is read only when clipping is on).
    nums: tuple[float | Array, ...] = (
        (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.clip_norm or 0.0) if hp is None else tuple(hp)
    )
    lr, mom, wd, clip_norm = nums
    parts = []
    if clip:
        parts.append(clip_by_global_norm_torch(clip_norm, float(cfg.clip_eps)))
    if decay:
        parts.append(optax.add_decayed_weights(wd))
    parts.append(optax.sgd(lr, momentum=mom if momentum else None))
    return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------
# The update-vector layout.


def _split(variables: Variables) -> tuple[Any, Any]:
    return variables["params"], variables.get("batch_stats", {})


def _ravel_leaves(leaves: list[Array], lead: tuple[int, ...] = ()) -> Array:
    """`concatenate([a.reshape(*lead, -1) for a in leaves], axis=-1)`, the layout of `ravel_pytree`
    (for each index of the leading axes `lead`, shared by every leaf).

    Written as in-place `dynamic_update_slice`s into a zero buffer: XLA:CPU's concatenate of a few
    large operands (what `ravel_pytree` emits) ran at well under 1 GB/s (e.g. ~80 ms for one 6.6M
    LEAF-CNN vector, and slower still fused with a subtraction), where the update slices run at
    memory speed (~3 ms).
    """
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    sizes = [math.prod(a.shape[len(lead):]) for a in leaves]
    out = jnp.zeros((*lead, sum(sizes)), dtype)
    off = 0
    for a, size in zip(leaves, sizes):
        out = jax.lax.dynamic_update_slice(out, a.reshape(*lead, size).astype(dtype), (0,) * len(lead) + (off,))
        off += size
    return out


_ravel_jit = jax.jit(_ravel_leaves, static_argnums=(1,))


def flatten_variables(variables: Variables) -> tuple[Array, Callable[[Array], Variables]]:
    """Ravel `variables` to one vector, parameters first, then BatchNorm statistics (SPEC §1).

    Args:
      variables: `{"params": ...}` or `{"params": ..., "batch_stats": ...}`.

    Returns:
      `(flat [d], unflatten)` where `unflatten(flat') -> variables` of the same structure (keeps the
      `batch_stats` key exactly when `variables` has it). The order is that of
      `jax.flatten_util.ravel_pytree((params, batch_stats))`: within each, jax's tree order (sorted
      dict keys).
    """
    has_bs = "batch_stats" in variables
    leaves, treedef = jax.tree_util.tree_flatten(_split(variables))
    specs = [(a.shape, a.dtype) for a in leaves]
    flat = _ravel_jit(leaves)

    def unflatten(vec: Array) -> Variables:
        out, off = [], 0
        for shape, dtype in specs:
            size = math.prod(shape)
            out.append(vec[off:off + size].reshape(shape).astype(dtype))
            off += size
        params, bs = jax.tree_util.tree_unflatten(treedef, out)
        return {"params": params, "batch_stats": bs} if has_bs else {"params": params}

    return flat, unflatten


def unflatten(vec: Array, like: Variables) -> Variables:
    """`flatten_variables(like)[1](vec)`: a flat `[d]` vector back to variables shaped like `like`."""
    return flatten_variables(like)[1](vec)


def num_params(variables: Variables) -> int:
    """Coordinates of the update vector that are trainable parameters (the rest are BN statistics)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))


def flat_delta(new: Variables, old: Variables) -> Array:
    """`flatten(new) - flatten(old)` (the update `u_i`, SPEC §1), taken leaf by leaf and written into
    one `[d]` float32 vector (see `_ravel_leaves`)."""
    return _ravel_leaves(jax.tree_util.tree_leaves(jax.tree_util.tree_map(jnp.subtract, _split(new), _split(old))))


def write_delta_row(U: Array, i: Array, new: Variables, old: Variables) -> Array:
    """`U.at[i].set(flat_delta(new, old))` leaf by leaf, in place when `U` is donated. `U` `[n, d]`."""
    off = 0
    for a, b in zip(jax.tree_util.tree_leaves(_split(new)), jax.tree_util.tree_leaves(_split(old))):
        U = jax.lax.dynamic_update_slice(U, (a - b).reshape(1, -1).astype(U.dtype),
                                         (jnp.asarray(i, jnp.int32), jnp.int32(off)))
        off += math.prod(a.shape)
    return U


# ------------------------------------------------------------------------------------------------
# Local training.


class LocalStep(NamedTuple):
    """One SGD step as pure functions (see `make_local_step`)."""

    init_opt: Callable[[Any], Any]
    step: Callable[..., tuple[Any, Any, Any, Array]]
    min_examples: int


def make_local_step(model, cfg: LocalConfig) -> LocalStep:
    """The unconditional local step, shared by `make_local_train` and the host-loop strategies.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig`.

    Returns:
      `LocalStep(init_opt, step, min_examples)`:
      `init_opt(params) -> opt_state` (zero momentum: a fresh optimizer every round);
      `step(params, batch_stats, opt_state, x_train, y_train, idx [B], mask [B], flip, hp=None) ->
      (params, batch_stats, opt_state, loss)` (`hp`: a `LocalHparams` of traced numbers replacing
      `cfg`'s; `flip`: train on `cfg.label_map(y)`) always updates (callers skip steps with fewer than
      `min_examples` real examples: 1, or 2 for BatchNorm models); `batch_stats` is `{}` for models
      without BatchNorm; `loss` is the mean cross-entropy over the real examples before the update.
    """
    _check_config(cfg)
    tx = make_optimizer(cfg)
    num_classes = cfg.num_classes
    label_map = cfg.label_map or (lambda y, c: c - 1 - y)
    has_bs = model.has_batch_stats

    def loss_fn(params, batch_stats, x, y, mask):
        variables = {"params": params, "batch_stats": batch_stats} if has_bs else {"params": params}
        logits, new_bs = model.apply(variables, x, True, mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        count = mask.sum()
        # `where`, not a product: a padded slot can never leak a NaN into the sum.
        loss = jnp.where(mask, ce, 0.0).sum() / jnp.maximum(count, 1).astype(jnp.float32)
        return loss, new_bs

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    augment = "hflip" in cfg.augmentation

    def step(params, batch_stats, opt_state, x_train, y_train, idx, mask, flip, hp=None):
        x, idx = _batch_images(x_train, idx, augment)
        y = jnp.take(y_train, idx, axis=0).astype(jnp.int32)
        y = jnp.where(jnp.asarray(flip, bool), jnp.asarray(label_map(y, num_classes), jnp.int32), y)
        (loss, new_bs), grads = grad_fn(params, batch_stats, x, y, mask)
        updates, new_opt = (tx if hp is None else make_optimizer(cfg, hp)).update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if not has_bs:
            new_bs = batch_stats
        return new_params, new_bs, new_opt, loss

    # BatchNorm needs two examples for a batch variance; PyTorch's reference skips size-1 batches.
    return LocalStep(init_opt=tx.init, step=step, min_examples=2 if has_bs else 1)


def _batch_images(x_train, idx, augment: bool):
    """The batch's images `x_train[idx]` and the plain sample indices: with `augment`, `idx`
    carries each image's horizontal flip (`data.augment.mark`), decoded and applied here."""
    if not augment:
        return jnp.take(x_train, idx, axis=0), idx
    idx, mirror = augment_lib.unmark(idx)
    return augment_lib.hflip(jnp.take(x_train, idx, axis=0), mirror), idx


def make_flipped_gradients(model, cfg: LocalConfig) -> Callable:
    """ByzFL 0.0.11's LabelFlipping rows (`Client.compute_gradients` with `LabelFlipping`): each
    client's gradient of the mean cross-entropy on its batch with flipped labels
    (`cfg.label_map`, SPEC §6's `C - 1 - y` by default) at the given model in eval mode (BatchNorm
    with its running statistics, as ByzFL's `model.eval()`), without momentum or weight decay: the
    raw gradient, not a worker momentum (ByzFL sends `get_flat_flipped_gradients`). Images are
    augmented as the training step does (`cfg.augmentation`).

    Returns:
      `flipped(variables, x_train, y_train, idx [n, B], mask [n, B]) -> [n, d]` float32 rows in the
      layout of `flatten_variables` (the parameters' gradient, zeros for BatchNorm statistics); a
      client with no real example gets zeros.
    """
    label_map = cfg.label_map or (lambda y, c: c - 1 - y)
    augment = "hflip" in cfg.augmentation

    def one(variables, x_train, y_train, idx, mask):
        x, idx = _batch_images(x_train, idx, augment)
        y = jnp.asarray(label_map(jnp.take(y_train, idx, axis=0).astype(jnp.int32), cfg.num_classes), jnp.int32)

        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, False)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
            return jnp.where(mask, ce, 0.0).sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32)

        g = jax.grad(loss)(variables["params"])
        stats = jax.tree_util.tree_map(jnp.zeros_like, variables.get("batch_stats", {}))
        return _ravel_leaves(jax.tree_util.tree_leaves((g, stats))).astype(jnp.float32)

    return jax.vmap(one, in_axes=(None, None, None, 0, 0))


def default_skip() -> str:
    """How a padding step is skipped by default: "select" on CPU, "cond" elsewhere.

    XLA:CPU runs convolutions inside a `lax.cond` branch (a nested computation) ~5x slower than at
    top level (measured: small CNN, batch 64, 28x28: 40 ms per step at top level, 191 ms inside a
    cond; the same effect as jax#12868 for loops), so on CPU the step is always computed and its
    result discarded with a select. On GPU a cond skips the padded step's work.
    """
    return "select" if jax.default_backend() == "cpu" else "cond"


def make_local_train(model, cfg: LocalConfig, *, unroll_steps: bool = True, skip: str | None = None) -> Callable:
    """Builds one client's local training (one epoch over a padded batch schedule), pure and unjitted.

    Args:
      model: a `strike_jax.models.ModelSpec`.
      cfg: `LocalConfig`.
      unroll_steps: True unrolls the `S` steps in the traced program (a Python loop; on CPU a rolled
        `lax.scan` around convolutions runs slowly, jax#12868; compile time grows with `S`); False
        rolls them into a `lax.scan` (one copy of the step: fast compiles, the choice on GPU).
      skip: how a padding step becomes a no-op: "select" computes the step and keeps the old
        values with `jnp.where` (exact; the fast choice on CPU), "cond" branches with `lax.cond`
        (skips the work; `vmap` turns it into a select). None: `default_skip()`.

    Returns:
      `local_train(variables, x_train, y_train, batch_idx, batch_mask, flip_labels, hp=None) ->
      (new_variables, LocalStats)`, to be wrapped in `jax.jit` / `jax.vmap` (`hp`: a `LocalHparams`
      of traced numbers replacing `cfg`'s):

      - `variables`: the global model (`{"params", ["batch_stats"]}`);
      - `x_train` `[N, H, W, C]` float32, `y_train` `[N]` int: the shared training set;
      - `batch_idx` `[S, B]` int32: global sample indices (in bounds even where masked);
      - `batch_mask` `[S, B]` bool: real examples; an all-False row is a padding step (no-op);
      - `flip_labels` bool scalar: train on `y -> num_classes - 1 - y` (LabelFlip).

      Shapes are static: new schedules of the same `[S, B]` never retrace.
    """
    local_step = make_local_step(model, cfg)
    skip = default_skip() if skip is None else skip
    if skip not in ("select", "cond"):
        raise ValueError(f"skip={skip!r}; allowed: 'select', 'cond'.")
    has_bs = model.has_batch_stats
    min_examples = local_step.min_examples

    def local_train(variables, x_train, y_train, batch_idx, batch_mask, flip_labels, hp=None):
        if batch_idx.ndim != 2 or batch_idx.shape != batch_mask.shape:
            raise ValueError(
                f"batch_idx {batch_idx.shape} and batch_mask {batch_mask.shape} must both be [S, B].")
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {}) if has_bs else {}
        opt_state = local_step.init_opt(params)

        def do(state, idx, mask):
            p, bs, o = state
            p, bs, o, loss = local_step.step(p, bs, o, x_train, y_train, idx, mask, flip_labels, hp)
            return (p, bs, o), loss

        def step(carry, inputs):
            idx, mask = inputs
            state, loss_sum, n_steps, n_ex = carry
            count = mask.sum().astype(jnp.int32)
            active = count >= min_examples
            if skip == "cond":
                state, loss = jax.lax.cond(
                    active, lambda st: do(st, idx, mask), lambda st: (st, jnp.float32(0.0)), state)
            else:
                new_state, loss = do(state, idx, mask)
                # A select keeps the old values bit for bit on an inactive step.
                state = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new_state, state)
            loss_sum = loss_sum + jnp.where(active, loss * count.astype(jnp.float32), 0.0)
            n_steps = n_steps + active.astype(jnp.int32)
            n_ex = n_ex + jnp.where(active, count, 0)
            return (state, loss_sum, n_steps, n_ex), None

        carry = ((params, batch_stats, opt_state), jnp.float32(0.0), jnp.int32(0), jnp.int32(0))
        if unroll_steps:
            for s in range(batch_idx.shape[0]):
                carry, _ = step(carry, (batch_idx[s], batch_mask[s]))
        else:
            carry, _ = jax.lax.scan(step, carry, (batch_idx, batch_mask))
        (params, batch_stats, _), loss_sum, n_steps, n_ex = carry
        new_vars = {"params": params, "batch_stats": batch_stats} if has_bs else {"params": params}
        stats = LocalStats(
            loss=loss_sum / jnp.maximum(n_ex, 1).astype(jnp.float32), num_steps=n_steps, num_examples=n_ex)
        return new_vars, stats

    return local_train

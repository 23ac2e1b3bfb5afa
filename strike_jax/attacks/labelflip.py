"""LabelFlip: a data-level attack (SPEC §6), and ByzFL's LabelFlipping.

`mode="own"` (default, SPEC §6): Byzantine clients train honestly on flipped labels `y -> C - 1 - y`
and send that update. The attack therefore acts in training, not on the update matrix: the
simulation applies `label_map` to the labels of Byzantine clients, and `apply` leaves their
(already poisoned) rows unchanged.

`mode="honest_mean"` (ByzFL 0.0.11's `LabelFlipping`, whose Byzantine clients hold no data): every
honest client also computes its gradient on the same mini-batch with flipped labels (ByzFL: in
eval mode, i.e. BatchNorm with its running statistics, and without momentum), and all Byzantine
clients send the mean of those flipped-label rows over the honest clients. The simulation supplies
them as the round context's `flipped` field (`[n, d]`, row `i` = client `i`'s flipped-label row;
Byzantine rows ignored); the stage's `info["needs_flipped_rows"]` says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax import ops
from strike_jax.attacks.base import attack_stage, reference_mask, replace_rows
from strike_jax.registry import choice, register
from strike_jax.stages import Stage

#: "own": SPEC §6; "honest_mean": ByzFL's LabelFlipping (see the module docstring).
LABELFLIP_MODES = ("own", "honest_mean")


def flip_labels(y, num_classes):
    """`C - 1 - y` (SPEC §6). Works on Python ints, NumPy and JAX integer arrays (dtype kept).

    Args:
      y: integer labels in `[0, num_classes)`, any shape.
      num_classes: `C` (>= 1; may be traced).

    Raises:
      ValueError: a concrete `num_classes` < 1.
    """
    if isinstance(num_classes, int) and num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1.")
    return (num_classes - 1) - y


def labelflip_mean_vector(flipped: jax.Array, byzantine_mask: jax.Array) -> jax.Array:
    """ByzFL's LabelFlipping vector: the mean of the flipped-label rows of H (the honest rows, or the
    Byzantine rows' own when no honest client was sampled, SPEC §6). `[n, d]`, `[n]` -> `[d]`."""
    return ops.masked_mean(flipped, reference_mask(byzantine_mask))


@register("attack", "labelflip", mode=choice(*LABELFLIP_MODES))
def labelflip(mode="own", *, backend: ops.Backend | None = None) -> Stage:
    """LabelFlip.

    Args:
      mode: "own" (default, SPEC §6): `info["data_level"]`, `info["label_map"](y, C) = C - 1 - y`;
        `update` is the identity on the matrix. "honest_mean" (ByzFL): `info["needs_flipped_rows"]`
        and `label_map`; `update` replaces the Byzantine rows by `labelflip_mean_vector(ctx.flipped,
        mask)` and raises if the round context carries no `flipped` rows. Static.
    """
    del backend
    if mode == "own":

        def core(updates, mask, state, key):
            return updates, state

        return attack_stage("labelflip", core, data_level=True, label_map=flip_labels)

    def core_ctx(updates, mask, state, key, ctx):
        flipped = getattr(ctx, "flipped", None)
        if flipped is None:
            raise ValueError("labelflip(mode='honest_mean') needs the round context's `flipped` rows (each "
                             "client's gradient on flipped labels); this simulation does not supply them.")
        flipped = jnp.asarray(flipped, updates.dtype)
        if flipped.shape != updates.shape:
            raise ValueError(f"labelflip: ctx.flipped has shape {flipped.shape}; expected {updates.shape} "
                             "(the update matrix's).")
        return replace_rows(updates, mask, labelflip_mean_vector(flipped, mask)), state

    return attack_stage("labelflip", core_ctx, with_ctx=True, needs_flipped_rows=True, label_map=flip_labels)


__all__ = ["LABELFLIP_MODES", "flip_labels", "labelflip", "labelflip_mean_vector"]

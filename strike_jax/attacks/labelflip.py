"""LabelFlip: a data-level attack (SPEC §6).

Byzantine clients train honestly on flipped labels `y -> C - 1 - y` and send that update. The
attack therefore acts in training, not on the update matrix: the simulation applies `label_map` to
the labels of Byzantine clients, and `apply` leaves their (already poisoned) rows unchanged.
"""

from __future__ import annotations

from strike_jax import ops
from strike_jax.attacks.base import attack_stage
from strike_jax.registry import register
from strike_jax.stages import Stage


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


@register("attack", "labelflip")
def labelflip(*, backend: ops.Backend | None = None) -> Stage:
    """LabelFlip (SPEC §6): `info["data_level"]`, `info["label_map"](y, C) = C - 1 - y`; `update` is
    the identity on the matrix."""
    del backend

    def core(updates, mask, state, key):
        return updates, state

    return attack_stage("labelflip", core, data_level=True, label_map=flip_labels)


__all__ = ["flip_labels", "labelflip"]

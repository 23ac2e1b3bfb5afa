"""Random augmentation of training images: ByzFL's `RandomHorizontalFlip()` (p = 0.5).

Two forms of one operation (`hflip`, the mirror of the selected images):

* `random_hflip(key, images)`: one Bernoulli(1/2) draw per image from `key` (a batch on its own).
* In the simulation (`Config.augmentation=("hflip",)`) the draws are part of a round's plan:
  `flip_bits` gives every visiting position of a client's epoch order one fair coin from
  `(seed, round, client, epoch)` (`training.schedule.client_orders`), and the flip travels with the
  sample index (`mark`: a flipped sample's index is stored as `-1 - index`), so every strategy
  (packed lanes, vmap, the host loops) and every batch of runs trains on the same flipped images;
  the local step reads them back with `unmark` and applies `hflip`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from strike_jax.config import AUGMENTATIONS  # the names a `Config` may give

Array = jax.Array



def check_images(shape, what: str = "images") -> None:
    """Refuses anything but a batch of images `[..., H, W, C]` with a batch axis (4-d or more)."""
    if len(shape) < 4:
        raise ValueError(f"random_hflip: {what} must be [B, H, W, C]; got shape {tuple(shape)}.")


def hflip(images: Array, flip: Array) -> Array:
    """`images [..., B, H, W, C]` with those where `flip [..., B]` (bool) mirrored left-right (the W
    axis). Exact: a selection, no arithmetic; the dtype is kept."""
    images = jnp.asarray(images)
    check_images(images.shape)
    return jnp.where(jnp.asarray(flip, bool)[..., None, None, None], jnp.flip(images, axis=-2), images)


def random_hflip(key: Array, images: Array) -> Array:
    """ByzFL's `RandomHorizontalFlip()` (p = 0.5) on a batch: each image independently mirrored
    left-right with probability 1/2 (one Bernoulli draw per image from `key`).

    Args:
      key: PRNG key.
      images: `[B, H, W, C]` (NHWC; or `[..., B, H, W, C]` with the draws over all leading axes).

    Returns:
      The images, the same shape and dtype. Pure and jittable.
    """
    images = jnp.asarray(images)
    check_images(images.shape)
    return hflip(images, jax.random.bernoulli(key, 0.5, images.shape[:-3]))


def flip_bits(keys: Array, width: int) -> Array:
    """`[k, width]` bool fair coins, one row per key (`[k]` keys). Position `i` of a row does not
    depend on `width` (the top bit of the row's `i`-th random word, threefry's partitionable
    counters), so a client's draws are the same whatever the padding of its batch."""
    return jax.vmap(lambda k: (jax.random.bits(k, (width,), jnp.uint32) >> 31) == 1)(keys)


def mark(index: Array, flip: Array) -> Array:
    """Sample indices with the flip folded in: `-1 - index` where `flip` (int32)."""
    index = jnp.asarray(index, jnp.int32)
    return jnp.where(flip, -1 - index, index)


def unmark(index: Array) -> tuple[Array, Array]:
    """`(index, flip)` from `mark`'s indices."""
    index = jnp.asarray(index)
    flip = index < 0
    return jnp.where(flip, -1 - index, index), flip


__all__ = ["AUGMENTATIONS", "check_images", "flip_bits", "hflip", "mark", "random_hflip", "unmark"]

"""A seeded synthetic image data set with natural clients, for tests and scaling benchmarks."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from strike_jax.data.base import Dataset, describe, make_dataset
from strike_jax.errors import InputError

__all__ = ["load_synthetic"]


def load_synthetic(
    num_clients: int = 10,
    samples_per_client: int | Sequence[int] = 32,
    image_shape: Sequence[int] = (8, 8, 1),
    num_classes: int = 10,
    num_test: int = 200,
    *,
    label_alpha: float | None = None,
    separation: float = 1.0,
    noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Gaussian class clusters split over natural clients.

    Generation (one `np.random.default_rng(seed)`, in this order): class means
    `mu = separation * N(0, 1)` of shape `[C, *image_shape]`; per client `k` (in order) its labels,
    uniform over classes, or from the client's class distribution `p_k ~ Dir(label_alpha * 1_C)`
    when `label_alpha` is given (label skew); then the training noise; then `num_test` uniform
    test labels and their noise. An image is `mu[y] + noise * N(0, I)` (float32, no further
    preprocessing), so a linear model separates the classes when `separation/noise` is large.

    Args:
      num_clients: number of natural clients `K`.
      samples_per_client: int (all equal) or `K` ints (uneven clients; each >= 1).
      image_shape: `(H, W, C)`.
      num_classes: `C`.
      num_test: test-set size.
      label_alpha: Dirichlet concentration of each client's label distribution, or `None`.
      separation: scale of the class means.
      noise: std of the per-pixel noise.
      seed: everything is a function of the arguments.

    Returns:
      `Dataset` with `client_ids[i]` = owner of training sample `i` (samples grouped by client).
    """
    num_clients = int(num_clients)
    if num_clients < 1:
        raise InputError(f"synthetic: num_clients must be >= 1, got {num_clients}.")
    counts = np.broadcast_to(np.asarray(samples_per_client, dtype=np.int64), (num_clients,)).copy()
    if np.ndim(samples_per_client) not in (0, 1) or counts.min() < 1:
        raise InputError(
            f"synthetic: samples_per_client must be an int >= 1 or {num_clients} ints >= 1, "
            f"got {samples_per_client!r}."
        )
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"synthetic: image_shape must be (H, W, C) with positive sizes, got {image_shape!r}.")
    if int(num_classes) < 2 or int(num_test) < 1:
        raise InputError(f"synthetic: need num_classes >= 2 and num_test >= 1, got {num_classes}, {num_test}.")
    if label_alpha is not None and not label_alpha > 0:
        raise InputError(f"synthetic: label_alpha must be > 0 or None, got {label_alpha}.")
    c = int(num_classes)
    rng = np.random.default_rng(seed)
    means = (separation * rng.standard_normal((c,) + shape)).astype(np.float32)
    labels = []
    for k in range(num_clients):
        if label_alpha is None:
            labels.append(rng.integers(0, c, size=counts[k]))
        else:
            p = rng.dirichlet(np.full(c, float(label_alpha)))
            labels.append(rng.choice(c, size=counts[k], p=p))
    y_train = np.concatenate(labels).astype(np.int32)
    x_train = rng.standard_normal((y_train.size,) + shape, dtype=np.float32)
    x_train *= np.float32(noise)
    x_train += means[y_train]
    y_test = rng.integers(0, c, size=int(num_test)).astype(np.int32)
    x_test = rng.standard_normal((y_test.size,) + shape, dtype=np.float32)
    x_test *= np.float32(noise)
    x_test += means[y_test]
    return make_dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=c,
        preprocessing=describe(1.0, None, None, True),
        client_ids=np.repeat(np.arange(num_clients, dtype=np.int32), counts),
        meta={"source": "synthetic", "seed": seed, "label_alpha": label_alpha,
              "separation": separation, "noise": noise},
    )

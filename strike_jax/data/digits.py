"""scikit-learn's embedded 8x8 digits (the no-download default data set)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from strike_jax.data.base import Dataset, check_dtype, describe, finish_images, make_dataset
from strike_jax.errors import InputError

__all__ = ["load_digits", "stratified_split"]


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split.

    For every class `c` in ascending order: permute its sample indices with
    `np.random.default_rng(seed)` (one generator, classes in order) and put the first
    `round(test_fraction * n_c)` into the test set. Both index arrays are returned sorted.

    Args:
      labels: `[N]` int labels.
      test_fraction: in (0, 1).
      seed: non-negative int.

    Returns:
      `(train_idx, test_idx)`, int64, disjoint, covering `0..N-1`.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * idx.size))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """`(images [1797, 8, 8] float64, labels [1797] int32)` as `sklearn.datasets.load_digits` gives.

    Reads scikit-learn's embedded `datasets/data/digits.csv.gz` directly (64 pixels then the
    label per row, the file `load_digits` parses): importing `sklearn.datasets` costs ~4 s.
    Falls back to `load_digits` if the file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int32)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, np.int32)


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype: str = "float32") -> Dataset:
    """The 1,797 8x8 digits of `sklearn.datasets.load_digits` (no download).

    Preprocessing: pixel values 0..16 divided by 16 (to [0, 1]); no standardisation. The split
    is `stratified_split(y, test_fraction, seed)`: with the defaults (0.2, seed 0) 1,438 train and
    359 test images, every class 20% in test (rounded).

    Args:
      test_fraction: fraction of each class put in the test set.
      seed: split seed.
      dtype: `"float32"` (final values) or `"uint8"` (raw 0..16; `Dataset.normalize` divides).

    Returns:
      `Dataset` with images `[N, 8, 8, 1]`, 10 classes.
    """
    dtype = check_dtype(dtype)
    images, y = _read_digits()
    raw = images.astype(np.uint8)[..., None]  # values are integers 0..16
    train, test = stratified_split(y, test_fraction, seed)
    x = finish_images("digits", raw, 1.0 / 16.0, None, None, dtype)
    return make_dataset(
        name="digits",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        num_classes=10,
        preprocessing=describe(1.0 / 16.0, None, None, dtype == "float32"),
        meta={"source": "sklearn.datasets.load_digits", "split": f"stratified {test_fraction} test, seed {seed}"},
    )

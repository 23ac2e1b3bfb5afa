"""The `Dataset` container shared by every source, its preprocessing record, and input checks.

Storage and normalisation (one rule for every source)
-----------------------------------------------------
A source stores its images NHWC in one of two ways, chosen by its `dtype` argument:

* `dtype="float32"` (the default for every source except ImageNet-12 and EMNIST): `x_train` /
  `x_test` already hold the final float32 values of SPEC §4 (scaled to [0, 1], then standardised
  with the per-channel mean/std where the source has them). `Dataset.normalize` is the identity.
* `dtype="uint8"`: the raw 8-bit pixels are stored (4x less memory: ImageNet-12 at 224x224x3 is
  ~2.4 GB as uint8 but ~9.4 GB as float32) and `Dataset.normalize(x_batch)` turns a gathered batch
  into the same float32 values on the device, inside the jitted step.

Consumers (local training, evaluation) therefore always write `x = dataset.normalize(x_train[idx])`
and get identical numbers whichever storage was chosen (up to float32 rounding of the two
equivalent formulas, < 1e-6 relative). `Preprocessing.applied` says which case holds.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from strike_jax.errors import InputError

__all__ = [
    "Dataset",
    "Preprocessing",
    "DataNotFoundError",
    "make_dataset",
    "check_dir",
    "check_dtype",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class DataNotFoundError(FileNotFoundError, ValueError):
    """Data files or directories are missing. Both a `FileNotFoundError` and a `ValueError`."""


class Preprocessing(NamedTuple):
    """How stored pixels map to the model's float32 input (SPEC §4).

    `final = (stored * scale - mean) / std` per channel (`mean`/`std` `None`: no standardisation).

    Attributes:
      scale: factor taking stored values to [0, 1] (1/255 for 8-bit pixels, 1/16 for digits).
      mean: per-channel mean subtracted after scaling, or `None`.
      std: per-channel std divided by after centring, or `None`.
      applied: `True` when `x_train`/`x_test` already hold the final float32 values.
      description: a human-readable summary (shown by the CLI).
    """

    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    applied: bool
    description: str = ""

    def apply(self, x):
        """Map stored values (NumPy or JAX array, `[..., C]`) to final float32 values.

        Works under `jit` (only `astype` and broadcasting arithmetic with NumPy constants).
        """
        x = x.astype(np.float32) * np.float32(self.scale)
        if self.mean is not None:
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            x = (x - mean) / std
        return x


class Dataset(NamedTuple):
    """Train and test arrays of one data set plus what is needed to use them.

    Attributes:
      name: registry name (`strike_jax.data.names()`).
      x_train: `[N_train, H, W, C]` float32 (preprocessed) or uint8 (raw; see `normalize`).
      y_train: `[N_train]` int32 labels in `[0, num_classes)`.
      x_test: `[N_test, H, W, C]`, same dtype as `x_train`.
      y_test: `[N_test]` int32.
      num_classes: number of classes `C`.
      preprocessing: a `Preprocessing` record.
      client_ids: `[N_train]` int32 natural owner of each training sample (FEMNIST writers,
        synthetic clients), ids `0..K-1` all present; `None` when the source has no natural split.
      meta: extra information (source path, split rule, writer names, ...); a plain dict so the
        container pickles.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    preprocessing: Preprocessing
    client_ids: np.ndarray | None = None
    meta: Mapping[str, Any] = _EMPTY

    @property
    def input_shape(self) -> tuple[int, ...]:
        """`(H, W, C)` of one example."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def num_natural_clients(self) -> int | None:
        """Number of natural clients (`max(client_ids) + 1`), or `None`."""
        return None if self.client_ids is None else int(self.client_ids.max()) + 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the image, label and client-id arrays."""
        arrays = [self.x_train, self.y_train, self.x_test, self.y_test]
        if self.client_ids is not None:
            arrays.append(self.client_ids)
        return int(sum(a.nbytes for a in arrays))

    def normalize(self, x):
        """Final float32 model input for a batch of stored images (NumPy or JAX, jit-safe).

        Args:
          x: `[..., H, W, C]` values gathered from `x_train`/`x_test`.

        Returns:
          float32 array of the same shape: `x` itself (cast) when the preprocessing is already
          applied, else `Preprocessing.apply(x)`.
        """
        if self.preprocessing.applied:
            return x if x.dtype == np.float32 else x.astype(np.float32)
        return self.preprocessing.apply(x)

    def as_float32(self) -> Dataset:
        """The same data with the preprocessing applied on the host (float32 storage)."""
        if self.preprocessing.applied:
            return self
        return self._replace(
            x_train=self.preprocessing.apply(self.x_train),
            x_test=self.preprocessing.apply(self.x_test),
            preprocessing=self.preprocessing._replace(applied=True),
        )

    def subset(
        self,
        train: np.ndarray | None = None,
        test: np.ndarray | None = None,
    ) -> Dataset:
        """Keep the given train/test sample indices (e.g. for reduced-scale runs).

        Natural client ids are re-numbered `0..K'-1` over the clients that keep a sample, in
        the order of their old ids.

        Args:
          train: int indices into the training set (`None`: keep all).
          test: int indices into the test set (`None`: keep all).
        """
        out = self
        if train is not None:
            train = np.asarray(train)
            cid = None
            if self.client_ids is not None:
                _, cid = np.unique(self.client_ids[train], return_inverse=True)
                cid = cid.astype(np.int32)
            out = out._replace(x_train=self.x_train[train], y_train=self.y_train[train], client_ids=cid)
        if test is not None:
            test = np.asarray(test)
            out = out._replace(x_test=self.x_test[test], y_test=self.y_test[test])
        return make_dataset(**out._asdict())

    def summary(self) -> dict[str, Any]:
        """Shapes, dtypes and sizes as plain Python values (for the CLI and benchmarks)."""
        out = {
            "name": self.name,
            "x_train": [list(self.x_train.shape), str(self.x_train.dtype)],
            "y_train": [list(self.y_train.shape), str(self.y_train.dtype)],
            "x_test": [list(self.x_test.shape), str(self.x_test.dtype)],
            "y_test": [list(self.y_test.shape), str(self.y_test.dtype)],
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.description,
            "preprocessing_applied": self.preprocessing.applied,
            "natural_clients": self.num_natural_clients,
            "nbytes": self.nbytes,
        }
        return out


def _check_images(name: str, x: np.ndarray, what: str) -> None:
    if x.ndim != 4:
        raise InputError(f"{name}: {what} must be NHWC (4-d), got shape {x.shape}.")
    if x.dtype not in (np.float32, np.uint8):
        raise InputError(f"{name}: {what} must be float32 or uint8, got {x.dtype}.")


def _check_labels(name: str, y: np.ndarray, n: int, num_classes: int, what: str) -> None:
    if y.shape != (n,):
        raise InputError(f"{name}: {what} must have shape ({n},), got {y.shape}.")
    if y.dtype != np.int32:
        raise InputError(f"{name}: {what} must be int32, got {y.dtype}.")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(
            f"{name}: {what} must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]."
        )


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    preprocessing: Preprocessing,
    client_ids: np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Dataset:
    """Validate and build a `Dataset` (every source goes through here).

    Raises:
      ValueError: on inconsistent shapes, dtypes, label ranges or client ids.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise InputError(f"{name}: num_classes must be >= 1, got {num_classes}.")
    _check_images(name, x_train, "x_train")
    _check_images(name, x_test, "x_test")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise InputError(
            f"{name}: train/test images differ: {x_train.shape[1:]} {x_train.dtype} vs "
            f"{x_test.shape[1:]} {x_test.dtype}."
        )
    if x_train.shape[0] == 0:
        raise InputError(f"{name}: the training set is empty.")
    _check_labels(name, y_train, x_train.shape[0], num_classes, "y_train")
    _check_labels(name, y_test, x_test.shape[0], num_classes, "y_test")
    if preprocessing.applied != (x_train.dtype == np.float32):
        raise InputError(
            f"{name}: preprocessing.applied={preprocessing.applied} but images are {x_train.dtype}."
        )
    if preprocessing.mean is not None:
        c = x_train.shape[-1]
        if len(preprocessing.mean) != c or len(preprocessing.std or ()) != c:
            raise InputError(f"{name}: mean/std need {c} channel values, got {preprocessing}.")
    if client_ids is not None:
        client_ids = np.asarray(client_ids)
        if client_ids.shape != (x_train.shape[0],) or client_ids.dtype != np.int32:
            raise InputError(
                f"{name}: client_ids must be int32 of shape ({x_train.shape[0]},), "
                f"got {client_ids.dtype} {client_ids.shape}."
            )
        present = np.bincount(client_ids, minlength=1) if client_ids.min() >= 0 else None
        if present is None or not np.all(present > 0):
            raise InputError(f"{name}: client_ids must cover 0..K-1 with every id present.")
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        preprocessing=preprocessing,
        client_ids=client_ids,
        meta=dict(meta or {}),
    )


def check_dir(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """Return `path` as a string if it is an existing directory, else raise `DataNotFoundError`."""
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        msg = f"{what}: directory {path!r} does not exist."
        raise DataNotFoundError(msg + (" " + hint if hint else ""))
    return path


def check_dtype(dtype: str, allowed: Sequence[str] = ("float32", "uint8")) -> str:
    """Validate a storage dtype name (`"float32"` or `"uint8"`)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in allowed:
        raise InputError(f"dtype must be one of {tuple(allowed)}, got {dtype!r}.")
    return name


def finish_images(
    name: str,
    x: np.ndarray,
    scale: float,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    dtype: str,
) -> np.ndarray:
    """Convert raw integer pixels `x` to the requested storage (`uint8` raw or final float32)."""
    if dtype == "uint8":
        return np.ascontiguousarray(x, dtype=np.uint8)
    pre = Preprocessing(scale, None if mean is None else tuple(mean), None if std is None else tuple(std), False)
    return np.ascontiguousarray(pre.apply(x))


def describe(scale: float, mean, std, applied: bool) -> Preprocessing:
    """Build a `Preprocessing` with a readable description."""
    text = "x" if scale == 1.0 else f"x/{1.0 / scale:g}"
    if mean is not None:
        text = f"({text} - mean{tuple(round(m, 4) for m in mean)}) / std{tuple(round(s, 4) for s in std)}"
    text += " [applied on host, float32]" if applied else " [stored uint8; Dataset.normalize per batch]"
    return Preprocessing(
        float(scale),
        None if mean is None else tuple(float(m) for m in mean),
        None if std is None else tuple(float(s) for s in std),
        applied,
        text,
    )

"""A user's own arrays as a `Dataset` (`from_arrays`) and registering it by name (`register`).

```python
ds = data.from_arrays(x_train, y_train, x_test, y_test, name="my_data")
data.register(ds)              # now data.load("my_data") and Config(dataset="my_data") find it
part = data.dirichlet(ds.y_train, 10, beta=0.5, seed=0)   # partitions work on it as on any source
```
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from strike_jax.data.base import Dataset, describe, make_dataset

__all__ = ["from_arrays", "register"]


def _images(name: str, x: Any, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        hint = f" (add a channel axis: {what}[..., None])" if x.ndim == 3 else ""
        raise ValueError(f"from_arrays: {what} of shape {x.shape} is not allowed; allowed: NHWC "
                         f"[N, H, W, C] images{hint}.")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == np.bool_:
        raise ValueError(f"from_arrays: {what} of dtype {x.dtype} is not allowed; allowed: real numbers or uint8.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"from_arrays: {what} holds NaN or Inf values; allowed: finite values.")
    return x


def _labels(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"from_arrays: {what} of shape {y.shape} and dtype {y.dtype} is not allowed; "
                         "allowed: a vector of integer class labels.")
    return y.astype(np.int32)


def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, name: str,
                num_classes: int | None = None, client_ids: Any = None,
                meta: Mapping[str, Any] | None = None) -> Dataset:
    """A `Dataset` from NumPy (or JAX) arrays, the same container `data.load` returns.

    Real-valued images are stored as float32 and used as given (preprocess them first); `uint8`
    images are stored raw and scaled by 1/255 on the device (`Dataset.normalize`).

    Args:
      x_train: `[N, H, W, C]` training images (NHWC; add `[..., None]` for one channel).
      y_train: `[N]` integer labels in `[0, num_classes)`.
      x_test: `[M, H, W, C]` test images (same `H, W, C` and dtype kind).
      y_test: `[M]` integer labels.
      name: the name to register it under (`register`) and to report.
      num_classes: the number of classes (None: `max(label) + 1` over both splits).
      client_ids: `[N]` int natural owner of each training sample, ids `0..K-1` all present, for
        `partition="natural"` (None: no natural split).
      meta: extra information kept with it.

    Returns:
      `Dataset`.

    Raises:
      ValueError: a bad shape, dtype or label (one line naming it and what is allowed).

    Examples:
      >>> import numpy as np
      >>> from strike_jax import data
      >>> x, y = np.zeros((12, 4, 4, 1), np.float32), np.arange(12) % 3
      >>> ds = data.from_arrays(x[:10], y[:10], x[10:], y[10:], name="doc_data")
      >>> ds.num_classes, ds.input_shape, ds.num_train
      (3, (4, 4, 1), 10)
      >>> data.iid(ds.num_train, 2, seed=0).num_clients
      2
    """
    xtr, xte = _images(name, x_train, "x_train"), _images(name, x_test, "x_test")
    if xtr.dtype != xte.dtype:
        raise ValueError(f"from_arrays: x_train is {xtr.dtype} but x_test is {xte.dtype}; allowed: both uint8 "
                         "or both real.")
    ytr, yte = _labels(y_train, "y_train"), _labels(y_test, "y_test")
    if num_classes is None:
        num_classes = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    raw = xtr.dtype == np.uint8
    pre = describe(1.0 / 255.0 if raw else 1.0, None, None, not raw)
    cid = None if client_ids is None else np.asarray(client_ids).astype(np.int32)
    return make_dataset(name=name, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, num_classes=num_classes,
                        preprocessing=pre, client_ids=cid, meta={"source": "arrays", **dict(meta or {})})


def register(ds: Dataset) -> Dataset:
    """Registers a user's data set under `ds.name`: `data.load(ds.name)`, `data.names()` and
    `simulate(Config(dataset=ds.name, ...))` then find it. Re-registering the same data (equal
    `registry.fingerprint`) is a no-op.

    Returns:
      `ds`.

    Raises:
      ValueError: not a `Dataset`, a built-in name, or the name taken by different data.
    """
    from strike_jax import data, registry  # the loader table lives in the package

    if not isinstance(ds, Dataset):
        raise ValueError(f"data.register: {type(ds).__name__} is not allowed; allowed: a Dataset "
                         "(data.from_arrays or data.load).")
    builtin = ds.name in data._LOADERS and registry.registered("dataset", ds.name) is None
    if registry.claim("dataset", ds.name, ds, builtin=builtin):

        def load_registered() -> Dataset:
            return ds

        data._LOADERS[ds.name] = load_registered
    return ds

"""Data: sources -> partition -> client index table (a round's batches: `strike_jax.training.schedule`).

```python
from strike_jax import data
ds = data.load("fashion_mnist")                       # Dataset (NHWC, labels int32)
part = data.dirichlet(ds.y_train, 50, beta=0.5, seed=0)   # or data.iid(...), data.natural(ds.client_ids)
cd = data.make_client_data(part, batch_size=128)      # [N, max_m] index table, fixed num_steps

from strike_jax.training import schedule                 # round t's clients and batches, drawn on the device
cb = schedule.client_batches(cd.index, cd.counts, seed, t, per_round=n, batch_size=128, local_epochs=1)
idx, mask = schedule.padded_schedule(cb, batch_size=128, num_steps=cd.num_steps)   # [n, S, B] each
x = ds.normalize(x_train_on_device[idx[:, s]])        # identity for float32 storage
```

Sources (`load(name, **kwargs)`; `names()`):

| name | where the data comes from | shape | classes | preprocessing (SPEC §4) | default storage |
|---|---|---|---|---|---|
| digits | scikit-learn, embedded | 8x8x1 | 10 | /16; stratified 80/20 split, seed 0 | float32 |
| fashion_mnist | IDX (Debian / `data_dir`) or TFDS | 28x28x1 | 10 | /255 (`standardize=True`: mean/std) | float32 |
| mnist | IDX in `data_dir` or TFDS | 28x28x1 | 10 | /255 (`standardize=True`: mean/std) | float32 |
| emnist | TFDS `emnist/<variant>` | 28x28x1 | 62 (byclass) | /255, transposed upright | uint8 |
| cifar10 | TFDS | 32x32x3 | 10 | /255, CIFAR mean/std | float32 |
| femnist | LEAF JSON (`data_dir`) | 28x28x1 | 62 | none (LEAF's [0, 1]) | float32 |
| imagenet12 | image folder (`data_dir`) | 224x224x3 | 12 | resize 256, crop 224, ImageNet mean/std | uint8 |
| synthetic | generated, seeded | any | any | none | float32 |

"float32" storage holds final values; "uint8" holds raw pixels and `Dataset.normalize` maps a
gathered batch to the same final values on the device (see `strike_jax.data.base`). Always pass
batches through `Dataset.normalize`.
"""

from __future__ import annotations

import inspect
import typing
from typing import Callable

from strike_jax.data.base import DataNotFoundError, Dataset, Preprocessing, make_dataset
from strike_jax.data.clients import ClientData, make_client_data, schedule_nbytes
from strike_jax.data.digits import load_digits
from strike_jax.data.idx import load_fashion_mnist, load_mnist, read_idx
from strike_jax.data.image_folder import load_image_folder, load_imagenet12
from strike_jax.data.leaf import load_femnist
from strike_jax.data.partition import (
    Partition,
    dirichlet,
    dirichlet_cut_points,
    dirichlet_split,
    extreme_niid,
    gamma_similarity_niid,
    holdout,
    iid,
    natural,
    split_training_set,
)
from strike_jax.data.synthetic import load_synthetic
from strike_jax.data.tfds_source import load_cifar10, load_emnist, load_tfds
from strike_jax.data.user import from_arrays, register
from strike_jax.errors import InputError

__all__ = [
    "check_load_args",
    "ClientData",
    "DataNotFoundError",
    "Dataset",
    "Partition",
    "Preprocessing",
    "dirichlet",
    "dirichlet_cut_points",
    "dirichlet_split",
    "extreme_niid",
    "from_arrays",
    "gamma_similarity_niid",
    "holdout",
    "iid",
    "load",
    "load_arg_types",
    "load_cifar10",
    "load_digits",
    "load_emnist",
    "load_fashion_mnist",
    "load_femnist",
    "load_image_folder",
    "load_imagenet12",
    "load_mnist",
    "load_synthetic",
    "load_tfds",
    "make_client_data",
    "make_dataset",
    "names",
    "natural",
    "make_partition",
    "read_idx",
    "register",
    "schedule_nbytes",
    "split_training_set",
]

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "digits": load_digits,
    "emnist": load_emnist,
    "fashion_mnist": load_fashion_mnist,
    "femnist": load_femnist,
    "imagenet12": load_imagenet12,
    "mnist": load_mnist,
    "synthetic": load_synthetic,
}


def names() -> tuple[str, ...]:
    """Registered data set names, sorted."""
    return tuple(sorted(_LOADERS))


def check_load_args(name: str, **kwargs) -> None:
    """Checks, without loading anything, that `load(name, **kwargs)` names a data set and only
    arguments its loader takes (e.g. `digits` ships with scikit-learn: it takes no `data_dir`).

    Raises:
      ValueError: one line naming the bad name or argument and what is allowed.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise InputError(f"unknown data set {name!r}; choose one of {names()}.") from None
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise InputError(f"data set {name!r} takes no {', '.join(unknown)}; its loader's arguments are: "
                         f"{', '.join(params) or 'none'}.")


def load_arg_types(name: str) -> dict[str, object]:
    """`{argument: type hint}` of a data set's loader (resolved, e.g. `float | None`); {} for an
    unknown name. `strike_jax.config.Config` stores `dataset_params` numbers in these types."""
    loader = _LOADERS.get(name)
    if loader is None:
        return {}
    try:
        hints = typing.get_type_hints(loader)
    except (NameError, TypeError):  # an annotation that does not resolve: no declared types
        return {}
    hints.pop("return", None)
    return hints


def load(name: str, **kwargs) -> Dataset:
    """Load a data set by name; `kwargs` go to its loader (e.g. `data_dir=`, `dtype=`).

    Raises:
      ValueError: unknown name or argument (`check_load_args`), or the loader's own errors.
    """
    check_load_args(name, **kwargs)
    return _LOADERS[name](**kwargs)


def make_partition(
    dataset: Dataset,
    num_clients: int | None = None,
    *,
    split: str = "dirichlet",
    beta: float = 0.5,
    seed: int = 0,
    min_size: int = 10,
) -> Partition:
    """Partition a data set's training samples: `split` in {"dirichlet", "iid", "natural"}.

    `natural` uses `dataset.client_ids` (`num_clients` must be `None` or equal their number).
    """
    if split == "dirichlet":
        if num_clients is None:
            raise InputError("make_partition: split='dirichlet' needs num_clients.")
        return dirichlet(dataset.y_train, num_clients, beta, seed, min_size=min_size)
    if split == "iid":
        if num_clients is None:
            raise InputError("make_partition: split='iid' needs num_clients.")
        return iid(dataset.num_train, num_clients, seed)
    if split == "natural":
        if dataset.client_ids is None:
            raise InputError(f"make_partition: {dataset.name!r} has no natural clients; use 'dirichlet' or 'iid'.")
        part = natural(dataset.client_ids)
        if num_clients is not None and num_clients != part.num_clients:
            raise InputError(
                f"make_partition: {dataset.name!r} has {part.num_clients} natural clients, "
                f"got num_clients={num_clients}."
            )
        return part
    raise InputError(f"make_partition: split must be 'dirichlet', 'iid' or 'natural', got {split!r}.")

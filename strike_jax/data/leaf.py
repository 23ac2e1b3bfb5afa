"""FEMNIST from LEAF's JSON output (Caldas et al. 2018), with its natural per-writer partition.

Layout (SPEC §4): `<dir>/train/*.json` and `<dir>/test/*.json`, each file
`{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats in [0, 1]], ...],
"y": [int, ...]}}}`. One client per writer of the train files; the test set is every writer's
test samples together; 62 classes; no normalisation.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from strike_jax.data.base import (
    DataNotFoundError,
    Dataset,
    check_dir,
    check_dtype,
    describe,
    make_dataset,
)
from strike_jax.errors import InputError

__all__ = ["load_femnist", "read_leaf_split"]


def _user_arrays(path: str, user: str, entry, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
        raise InputError(f"{path!r}: user_data[{user!r}] must have 'x' and 'y'.")
    if len(entry["x"]) == 0 and len(entry["y"]) == 0:
        return np.zeros((0, 28, 28, 1), np.float32 if dtype == "float32" else np.uint8), np.zeros(0, np.int32)
    x = np.asarray(entry["x"], dtype=np.float32)
    y = np.asarray(entry["y"])
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise InputError(
            f"{path!r}: user {user!r} has x of shape {x.shape} and y of shape {y.shape} "
            "(expected [m, 784] and [m])."
        )
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise InputError(f"{path!r}: user {user!r} has pixel values outside [0, 1].")
    if not np.issubdtype(y.dtype, np.integer) and not (
        np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))
    ):
        raise InputError(f"{path!r}: user {user!r} has non-integer labels.")
    x = x.reshape(-1, 28, 28, 1)
    if dtype == "uint8":
        # LEAF writes k/255 (8-bit grey / 255): rounding recovers k exactly.
        x = np.rint(x * 255.0).astype(np.uint8)
    return x, y.astype(np.int32)


def read_leaf_split(directory: str, dtype: str = "float32") -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Read every `*.json` of one LEAF split folder.

    Files are read in sorted name order; writers in each file's `users` order. A writer that
    appears in several files keeps the first occurrence's position and gets the later samples
    appended.

    Args:
      directory: e.g. `<dir>/train`.
      dtype: `"float32"` (values as written) or `"uint8"` (`rint(x * 255)`).

    Returns:
      `(users, xs, ys)`: writer names and, per writer, `[m, 28, 28, 1]` images and `[m]` int32.

    Raises:
      DataNotFoundError: no such folder or no JSON files in it.
      ValueError: a file that is not LEAF JSON (no `users`/`user_data`, bad shapes).
    """
    directory = check_dir(directory, "femnist", "Expected LEAF's output folder with train/ and test/.")
    files = sorted(glob.glob(os.path.join(directory, "*.json")))
    if not files:
        raise DataNotFoundError(f"femnist: no *.json files in {directory!r}.")
    order: dict[str, int] = {}
    xs: list[list[np.ndarray]] = []
    ys: list[list[np.ndarray]] = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                blob = json.load(fh)
        except json.JSONDecodeError as err:
            raise InputError(f"{path!r} is not valid JSON: {err}") from err
        if not isinstance(blob, dict) or "users" not in blob or "user_data" not in blob:
            keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
            raise InputError(f"{path!r} is not LEAF JSON: expected keys 'users' and 'user_data', got {keys}.")
        for user in blob["users"]:
            if user not in blob["user_data"]:
                raise InputError(f"{path!r}: user {user!r} is listed in 'users' but has no 'user_data'.")
            x, y = _user_arrays(path, user, blob["user_data"][user], dtype)
            if user not in order:
                order[user] = len(order)
                xs.append([])
                ys.append([])
            xs[order[user]].append(x)
            ys[order[user]].append(y)
        del blob  # the parsed JSON (Python floats) is ~10x the array size: free it per file
    users = list(order)
    x_per = [np.concatenate(p) if len(p) > 1 else p[0] for p in xs]
    y_per = [np.concatenate(p) if len(p) > 1 else p[0] for p in ys]
    return users, x_per, y_per


def load_femnist(data_dir: str, *, dtype: str = "float32", num_classes: int = 62) -> Dataset:
    """FEMNIST from LEAF JSON with one natural client per writer (SPEC §2, §4).

    Args:
      data_dir: LEAF's data folder holding `train/` and `test/` (e.g. `leaf/data/femnist/data`).
      dtype: `"float32"` (the values as written, no normalisation) or `"uint8"` (`rint(x*255)`,
        exact for LEAF's k/255 values, 4x less memory; `Dataset.normalize` divides by 255).
      num_classes: 62 (digits, upper and lower case letters).

    Returns:
      `Dataset` with images `[N, 28, 28, 1]`, `client_ids` `[N_train]` = writer index in order
      of first appearance in the sorted train files; `meta["writers"]` holds the names. Writers
      with no training samples get no client.
    """
    dtype = check_dtype(dtype)
    root = check_dir(data_dir, "femnist", "Pass LEAF's output folder holding train/ and test/ JSON files.")
    users, xtr, ytr = read_leaf_split(os.path.join(root, "train"), dtype)
    _, xte, yte = read_leaf_split(os.path.join(root, "test"), dtype)
    keep = [i for i, y in enumerate(ytr) if y.size > 0]
    users = [users[i] for i in keep]
    counts = np.array([ytr[i].size for i in keep])
    client_ids = np.repeat(np.arange(len(keep), dtype=np.int32), counts)
    return make_dataset(
        name="femnist",
        x_train=np.concatenate([xtr[i] for i in keep]),
        y_train=np.concatenate([ytr[i] for i in keep]),
        x_test=np.concatenate(xte),
        y_test=np.concatenate(yte),
        num_classes=num_classes,
        preprocessing=describe(1.0 if dtype == "float32" else 1 / 255, None, None, dtype == "float32"),
        client_ids=client_ids,
        meta={"source": "leaf", "path": root, "writers": tuple(users)},
    )

"""TensorFlow Datasets sources (CIFAR-10, MNIST, EMNIST, Fashion-MNIST) without TensorFlow.

Reads prepared copies through `tfds.data_source` (random access over ArrayRecord files; decoding
uses NumPy/Pillow, so TensorFlow is not needed). `tfds.load`/`tfds.as_numpy` need TensorFlow and
are not used. Downloads are off by default (`download=False`): a missing copy raises
`DataNotFoundError` saying how to prepare it. Preparing a copy (`tfds build`, or
`download=True`) encodes images with TensorFlow, so it must run where TensorFlow is installed;
the prepared ArrayRecord directory can then be used here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from strike_jax.data.base import (
    DataNotFoundError,
    Dataset,
    check_dtype,
    describe,
    finish_images,
    make_dataset,
)
from strike_jax.errors import InputError

__all__ = [
    "load_tfds",
    "load_cifar10",
    "load_emnist",
    "records_to_arrays",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "EMNIST_VARIANTS",
]

# SPEC §4.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
EMNIST_VARIANTS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "TFDS sources need tensorflow-datasets: pip install 'strike_jax[data]'."
        ) from err
    return tfds


def _read_all(source: Sequence[Any], chunk_size: int) -> list[Any]:
    """All records of a random-access source, read in chunks of `chunk_size` keys."""
    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    out: list[Any] = []
    for start in range(0, n, chunk_size):
        keys = list(range(start, min(n, start + chunk_size)))
        if getitems is not None:
            try:
                out.extend(getitems(keys))
                continue
            except TypeError:
                # tfds.testing.mock_data (TFDS 4.9.10) installs an unbound `__getitems__` on its
                # mock that fails with TypeError; real ArrayRecord sources never take this path.
                getitems = None
        out.extend(source[k] for k in keys)
    return out


def records_to_arrays(
    records: Sequence[Mapping[str, Any]],
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[np.ndarray, np.ndarray]:
    """Stack decoded TFDS records into `(images [N, H, W, C] uint8, labels [N] int32)`.

    Args:
      records: sequence of dicts with an image (`[H, W, C]` or `[H, W]` uint8) and an int label.
      image_key, label_key: dict keys.

    Raises:
      ValueError: empty input, a missing key, non-uint8 or ragged images.
    """
    if len(records) == 0:
        raise InputError("records_to_arrays: no records.")
    first = records[0]
    for key in (image_key, label_key):
        if key not in first:
            raise InputError(f"records_to_arrays: record has no {key!r} (keys: {sorted(first)}).")
    img0 = np.asarray(first[image_key])
    if img0.ndim == 2:
        img0 = img0[..., None]
    if img0.dtype != np.uint8 or img0.ndim != 3:
        raise InputError(f"records_to_arrays: expected [H, W, C] uint8 images, got {img0.dtype} {img0.shape}.")
    x = np.empty((len(records),) + img0.shape, np.uint8)
    y = np.empty((len(records),), np.int32)
    for i, rec in enumerate(records):
        img = np.asarray(rec[image_key])
        if img.ndim == 2:
            img = img[..., None]
        if img.shape != img0.shape:
            raise InputError(f"records_to_arrays: record {i} has image shape {img.shape}, expected {img0.shape}.")
        x[i] = img
        y[i] = int(rec[label_key])
    return x, y


def _not_prepared_message(tfds, tfds_name: str, data_dir: str | None) -> str:
    try:
        where = tfds.builder(tfds_name, data_dir=data_dir).data_dir
    except Exception:  # noqa: BLE001 - only used to improve the message
        where = data_dir or "the TFDS default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (
        f"TFDS data set {tfds_name!r} is not prepared in ArrayRecord format at {where!r}. "
        f"Prepare it where tensorflow and the network are available: `tfds build {tfds_name} "
        f"--file_format=array_record --data_dir=DIR`, then pass data_dir=DIR "
        "(or pass download=True here, which needs tensorflow and network access)."
    )


def load_tfds(
    tfds_name: str,
    *,
    name: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    train_split: str = "train",
    test_split: str = "test",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: str = "float32",
    transpose: bool = False,
    image_key: str = "image",
    label_key: str = "label",
    chunk_size: int = 4096,
) -> Dataset:
    """Load an image-classification TFDS data set into a `Dataset`.

    Preprocessing: pixels / 255, then `(x - mean) / std` per channel if `mean` is given.

    Args:
      tfds_name: TFDS name, with config (`"cifar10"`, `"emnist/byclass"`).
      name: `Dataset.name` (defaults to `tfds_name`).
      data_dir: TFDS data directory (`None`: TFDS's default).
      download: allow TFDS to download and prepare (default off; needs tensorflow + network).
      train_split, test_split: TFDS split names.
      mean, std: per-channel standardisation after /255.
      dtype: `"float32"` (final values) or `"uint8"` (raw; see `Dataset.normalize`).
      transpose: swap H and W (EMNIST).
      image_key, label_key: feature names.
      chunk_size: records read per batch.

    Returns:
      `Dataset`; `num_classes` from the label feature.

    Raises:
      ValueError: unknown TFDS name.
      DataNotFoundError: the data set is not prepared (the message says how to prepare it).
    """
    tfds = _import_tfds()
    dtype = check_dtype(dtype)
    name = name or tfds_name
    sources = {}
    for split in (train_split, test_split):
        try:
            sources[split] = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
        except tfds.core.registered.DatasetNotFoundError as err:
            raise InputError(f"{name}: TFDS has no data set called {tfds_name!r}.") from err
        except Exception as err:  # noqa: BLE001 - TFDS raises several types for "not prepared"
            raise DataNotFoundError(f"{name}: " + _not_prepared_message(tfds, tfds_name, data_dir)) from err
    info = sources[train_split].dataset_info
    try:
        num_classes = int(info.features[label_key].num_classes)
    except (KeyError, AttributeError) as err:
        raise InputError(f"{name}: TFDS feature {label_key!r} is not a ClassLabel.") from err

    def convert(split):
        x, y = records_to_arrays(_read_all(sources[split], chunk_size), image_key, label_key)
        if transpose:
            x = np.ascontiguousarray(np.swapaxes(x, 1, 2))
        return finish_images(name, x, 1 / 255, mean, std, dtype), y

    xtr, ytr = convert(train_split)
    xte, yte = convert(test_split)
    return make_dataset(
        name=name,
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        num_classes=num_classes,
        preprocessing=describe(1 / 255, mean, std, dtype == "float32"),
        meta={"source": "tfds", "tfds_name": tfds_name, "data_dir": data_dir,
              "splits": (train_split, test_split), "transposed": transpose},
    )


def load_cifar10(data_dir: str | None = None, *, download: bool = False, dtype: str = "float32") -> Dataset:
    """CIFAR-10 from TFDS: 50k/10k 32x32x3 images, 10 classes, the official test split.

    Preprocessing (SPEC §4): `(x/255 - (0.4914, 0.4822, 0.4465)) / (0.2023, 0.1994, 0.2010)`.
    float32 storage is 614 MB for the training set; `dtype="uint8"` stores 154 MB.
    """
    return load_tfds("cifar10", name="cifar10", data_dir=data_dir, download=download,
                     mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=dtype)


def load_emnist(
    data_dir: str | None = None,
    *,
    variant: str = "byclass",
    transpose: bool = True,
    download: bool = False,
    dtype: str = "uint8",
) -> Dataset:
    """EMNIST from TFDS (`emnist/<variant>`), 28x28x1, pixels / 255, no standardisation.

    `byclass` (default) has 62 classes like FEMNIST and 698k training images, so the default
    storage is uint8 (547 MB; float32 would be 2.2 GB). TFDS keeps EMNIST's raw orientation
    (transposed); `transpose=True` swaps H and W so images look like FEMNIST's.

    Args:
      variant: one of `EMNIST_VARIANTS`.
    """
    if variant not in EMNIST_VARIANTS:
        raise InputError(f"emnist: variant must be one of {EMNIST_VARIANTS}, got {variant!r}.")
    return load_tfds(f"emnist/{variant}", name="emnist", data_dir=data_dir, download=download,
                     dtype=dtype, transpose=transpose)

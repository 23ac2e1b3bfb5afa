"""IDX files (the MNIST file format) and the MNIST-family sources built on them.

Fashion-MNIST is found automatically in Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`), in any directory named with `data_dir=`, or in a prepared
TFDS copy. MNIST is read from IDX files in `data_dir` or from TFDS.

IDX format (LeCun et al.): a 4-byte magic `0x00 0x00 <type> <ndim>`, then `ndim` big-endian
uint32 sizes, then the data in C order (big-endian for multi-byte types). Files may be gzipped.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from strike_jax.data.base import (
    DataNotFoundError,
    Dataset,
    check_dir,
    check_dtype,
    describe,
    finish_images,
    make_dataset,
)
from strike_jax.errors import InputError

__all__ = [
    "read_idx",
    "find_idx_files",
    "load_idx_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Mean/std of the training pixels after /255, computed from the Debian copy (0.28604, 0.35302).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Stem of each of the four files (`<prefix><stem>-<kind>-idx<d>-ubyte[.gz]`); EMNIST says "test".
_ROLES = {
    "train_images": (("train",), "images", 3),
    "train_labels": (("train",), "labels", 1),
    "test_images": (("t10k", "test"), "images", 3),
    "test_labels": (("t10k", "test"), "labels", 1),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a NumPy array of its stored type and shape.

    Args:
      path: file path; gzip is detected from the content, not the name.

    Returns:
      The array (native byte order).

    Raises:
      DataNotFoundError: the file does not exist.
      ValueError: bad magic, unknown type code, or a size that does not match the header.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFoundError(f"IDX file {path!r} does not exist.")
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise InputError(f"{path!r} is not a readable (gzipped) IDX file: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InputError(
            f"{path!r} is not an IDX file: magic bytes {data[:4].hex() or '(empty)'} "
            "(expected 0000 then a type code 08/09/0b/0c/0d/0e and the number of dimensions)."
        )
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise InputError(f"{path!r}: truncated IDX header (ndim={ndim}).")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = memoryview(data)[4 + 4 * ndim :]
    if len(body) != expected:
        raise InputError(
            f"{path!r}: IDX header says shape {shape} ({expected} bytes of {dtype}) but the file "
            f"holds {len(body)} bytes."
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def find_idx_files(directory: str, prefix: str = "") -> tuple[dict[str, str] | None, list[str]]:
    """Look for the four MNIST-style IDX files in `directory`.

    Accepted names: `<prefix>{train,t10k,test}-{images,labels}-idx{3,1}-ubyte`, with `-` or `.`
    before `idx`, optionally ending in `.gz`.

    Returns:
      `(paths, missing)`: a dict role -> path when all four exist (else `None`), and the roles
      not found.
    """
    found, missing = {}, []
    names = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    for role, (stems, kind, d) in _ROLES.items():
        hit = None
        for stem in stems:
            for sep in ("-", "."):
                for ext in (".gz", ""):
                    name = f"{prefix}{stem}-{kind}{sep}idx{d}-ubyte{ext}"
                    if name in names:
                        hit = os.path.join(directory, name)
                        break
                if hit:
                    break
            if hit:
                break
        if hit:
            found[role] = hit
        else:
            missing.append(role)
    return (found if not missing else None), missing


def load_idx_dataset(
    name: str,
    directory: str,
    num_classes: int,
    *,
    prefix: str = "",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    dtype: str = "float32",
    transpose: bool = False,
) -> Dataset:
    """Build a `Dataset` from the four IDX files of an MNIST-style directory.

    Preprocessing: pixels / 255, then `(x - mean) / std` if `mean` is given.

    Args:
      name: data set name for messages and `Dataset.name`.
      directory: folder holding the files (see `find_idx_files`).
      num_classes: number of classes; labels outside `[0, num_classes)` raise.
      prefix: file-name prefix (e.g. `"emnist-byclass-"`).
      mean, std: per-channel standardisation after /255, or `None`.
      dtype: `"float32"` or `"uint8"` storage (see `strike_jax.data.base`).
      transpose: swap H and W (EMNIST's raw files are stored transposed).

    Returns:
      `Dataset` with images `[N, H, W, 1]`.
    """
    dtype = check_dtype(dtype)
    directory = check_dir(directory, name)
    paths, missing = find_idx_files(directory, prefix)
    if paths is None:
        raise DataNotFoundError(
            f"{name}: no IDX files for {missing} in {directory!r} (expected e.g. "
            f"{prefix}train-images-idx3-ubyte.gz, {prefix}t10k-labels-idx1-ubyte.gz)."
        )
    arrays = {role: read_idx(p) for role, p in paths.items()}
    for split in ("train", "test"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if xi.ndim != 3 or yi.ndim != 1 or xi.shape[0] != yi.shape[0]:
            raise InputError(
                f"{name}: {split} images {xi.shape} and labels {yi.shape} in {directory!r} do not "
                "match (expected [N, H, W] and [N])."
            )
        if xi.dtype != np.uint8:
            raise InputError(f"{name}: {paths[f'{split}_images']!r} holds {xi.dtype}, expected ubyte.")

    def images(a):
        a = a[..., None]
        return np.swapaxes(a, 1, 2) if transpose else a

    xtr = finish_images(name, images(arrays["train_images"]), 1 / 255, mean, std, dtype)
    xte = finish_images(name, images(arrays["test_images"]), 1 / 255, mean, std, dtype)
    return make_dataset(
        name=name,
        x_train=xtr,
        y_train=arrays["train_labels"].astype(np.int32),
        x_test=xte,
        y_test=arrays["test_labels"].astype(np.int32),
        num_classes=num_classes,
        preprocessing=describe(1 / 255, mean, std, dtype == "float32"),
        meta={"source": "idx", "path": directory},
    )


def _tfds_prepared(tfds_name: str, data_dir: str | None) -> bool:
    """Whether TFDS has a prepared copy of `tfds_name` (False when TFDS is not installed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return False
    try:
        return bool(tfds.builder(tfds_name, data_dir=data_dir).is_prepared())
    except Exception:  # noqa: BLE001 - any failure to inspect simply means "not usable here"
        return False


def _load_mnist_like(
    name: str,
    tfds_name: str,
    default_dirs: tuple[str, ...],
    data_dir: str | None,
    source: str,
    mean,
    std,
    dtype: str,
    download: bool,
) -> Dataset:
    from strike_jax.data import tfds_source

    if source not in ("auto", "idx", "tfds"):
        raise InputError(f"{name}: source must be 'auto', 'idx' or 'tfds', got {source!r}.")
    if source == "tfds":
        return tfds_source.load_tfds(
            tfds_name, name=name, data_dir=data_dir, download=download, mean=mean, std=std, dtype=dtype
        )
    if source == "idx":
        if data_dir is None and not default_dirs:
            raise InputError(f"{name}: source='idx' needs data_dir= (a folder of IDX files).")
        return load_idx_dataset(name, data_dir or default_dirs[0], 10, mean=mean, std=std, dtype=dtype)
    # auto: IDX in the named directory (or the default ones), then TFDS.
    looked = []
    candidates = (data_dir,) if data_dir is not None else default_dirs
    if data_dir is not None:
        check_dir(data_dir, name, "Pass a folder of IDX files or a TFDS data_dir.")
    for d in candidates:
        if find_idx_files(d)[0] is not None:
            return load_idx_dataset(name, d, 10, mean=mean, std=std, dtype=dtype)
        looked.append(f"IDX files in {d!r}")
    if download or _tfds_prepared(tfds_name, data_dir):
        return tfds_source.load_tfds(
            tfds_name, name=name, data_dir=data_dir, download=download, mean=mean, std=std, dtype=dtype
        )
    looked.append(f"a prepared TFDS copy of {tfds_name!r} (data_dir={data_dir or 'TFDS default'})")
    hint = (
        f"Install Debian's dataset-fashion-mnist, or pass data_dir= a folder with "
        f"train-images-idx3-ubyte.gz etc., or prepare TFDS: `tfds build {tfds_name} "
        "--file_format=array_record` (needs tensorflow)."
        if name == "fashion_mnist"
        else f"Pass data_dir= a folder with train-images-idx3-ubyte.gz etc., or prepare TFDS: "
        f"`tfds build {tfds_name} --file_format=array_record` (needs tensorflow)."
    )
    raise DataNotFoundError(f"{name}: data not found; looked for " + "; ".join(looked) + ". " + hint)


def load_fashion_mnist(
    data_dir: str | None = None,
    *,
    source: str = "auto",
    standardize: bool = False,
    dtype: str = "float32",
    download: bool = False,
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017), 60k train / 10k test 28x28 grey images, 10 classes.

    Preprocessing (our choice; Fashion-MNIST is the local stand-in for FEMNIST, whose SPEC §4
    preprocessing is "[0, 1], no normalisation"): pixels / 255. With `standardize=True`, also
    `(x - 0.2860) / 0.3530` (the training-set mean and std).

    Args:
      data_dir: folder with the four IDX files (or a TFDS data_dir). `None`: Debian's
        `/usr/share/datasets/fashion-mnist`, then TFDS's default directory.
      source: `"auto"` (IDX, then TFDS), `"idx"` or `"tfds"`.
      standardize: apply the mean/std above.
      dtype: `"float32"` or `"uint8"` storage.
      download: let TFDS download and prepare (needs network and tensorflow).

    Returns:
      `Dataset` with images `[N, 28, 28, 1]`.
    """
    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if standardize else (None, None)
    return _load_mnist_like(
        "fashion_mnist", "fashion_mnist", (DEBIAN_FASHION_MNIST_DIR,), data_dir, source, mean, std,
        check_dtype(dtype), download,
    )


def load_mnist(
    data_dir: str | None = None,
    *,
    source: str = "auto",
    standardize: bool = False,
    dtype: str = "float32",
    download: bool = False,
) -> Dataset:
    """MNIST, 60k/10k 28x28 digits. From IDX files in `data_dir`, else TFDS (`download=False`).

    Preprocessing: pixels / 255; with `standardize=True` also `(x - 0.1307) / 0.3081`.

    Args:
      data_dir: folder with the four IDX files, or a TFDS data_dir (`None`: TFDS default).
      source: `"auto"`, `"idx"` or `"tfds"`.
      standardize: apply the mean/std above.
      dtype: `"float32"` or `"uint8"` storage.
      download: let TFDS download and prepare (needs network and tensorflow).
    """
    mean, std = (MNIST_MEAN, MNIST_STD) if standardize else (None, None)
    return _load_mnist_like("mnist", "mnist", (), data_dir, source, mean, std, check_dtype(dtype), download)

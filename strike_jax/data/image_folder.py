"""Image-folder sources (ImageNet-12): `root/train/<class>/*`, `root/val/<class>/*`, with Pillow.

Pipeline per image (SPEC §4, torchvision's `Resize(256)` + `CenterCrop(224)` for PIL images):
convert to RGB; resize so the shorter side is `resize` (long side `int(resize * long / short)`,
bilinear with Pillow's antialiasing); crop `image_size` x `image_size` at the centre (offsets
`round((h - s) / 2)`, `round((w - s) / 2)`); keep uint8. Normalisation
`(x/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)` is applied per batch on the device by
`Dataset.normalize` (default `dtype="uint8"`): 12 classes x ~1.3k images at 224x224x3 are
~2.4 GB as uint8 but ~9.4 GB as float32. `dtype="float32"` applies it on the host instead.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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

__all__ = ["load_image_folder", "load_imagenet12", "preprocess_image", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def preprocess_image(path: str, image_size: int, resize: int) -> np.ndarray:
    """Load one image file: RGB, shorter side -> `resize`, centre crop `image_size`. -> `[S, S, 3]` uint8."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if w <= h:
                new_w, new_h = resize, int(resize * h / w)
            else:
                new_w, new_h = int(resize * w / h), resize
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), getattr(Image, "Resampling", Image).BILINEAR)
            top = int(round((new_h - image_size) / 2.0))
            left = int(round((new_w - image_size) / 2.0))
            img = img.crop((left, top, left + image_size, top + image_size))
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise InputError(f"{path!r} could not be read as an image: {err}") from err


def _list_split(split_dir: str, classes: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """Class names, image paths and label indices of one split folder (sorted, deterministic)."""
    found = sorted(
        d for d in os.listdir(split_dir) if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
    )
    if not found:
        raise DataNotFoundError(f"{split_dir!r} has no class sub-folders (expected {split_dir}/<class>/<images>).")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise InputError(f"{split_dir!r} has classes not in train/: {unknown}.")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for c in found:
        folder = os.path.join(split_dir, c)
        files = sorted(
            f for f in os.listdir(folder) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise DataNotFoundError(f"class folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        paths.extend(os.path.join(folder, f) for f in files)
        labels.extend([index[c]] * len(files))
    return classes, paths, labels


def load_image_folder(
    data_dir: str,
    *,
    name: str = "image_folder",
    train_dir: str = "train",
    test_dirs: tuple[str, ...] = ("val", "test"),
    image_size: int = 224,
    resize: int | None = None,
    mean: tuple[float, ...] | None = IMAGENET_MEAN,
    std: tuple[float, ...] | None = IMAGENET_STD,
    dtype: str = "uint8",
    num_workers: int | None = None,
) -> Dataset:
    """A classification data set stored as one folder per class.

    Args:
      data_dir: root holding `train/` and `val/` (or `test/`), each with one folder per class.
        Class indices follow the sorted train folder names.
      name: `Dataset.name`.
      train_dir: train folder name.
      test_dirs: candidate test folder names, first existing one used.
      image_size: side of the centre crop (224 for ImageNet; small values for tests).
      resize: shorter side before cropping (`None`: `round(image_size * 256 / 224)`, 256 at 224).
      mean, std: per-channel standardisation after /255 (`None`: none).
      dtype: `"uint8"` (default; `Dataset.normalize` standardises each batch) or `"float32"`.
      num_workers: decoding threads (Pillow releases the GIL); `None`: `min(8, os.cpu_count())`.

    Returns:
      `Dataset` with images `[N, image_size, image_size, 3]`; `meta["classes"]` the class names.
    """
    dtype = check_dtype(dtype)
    if int(image_size) < 1:
        raise InputError(f"{name}: image_size must be >= 1, got {image_size}.")
    image_size = int(image_size)
    resize = int(round(image_size * 256 / 224)) if resize is None else int(resize)
    if resize < image_size:
        raise InputError(f"{name}: resize ({resize}) must be >= image_size ({image_size}).")
    root = check_dir(data_dir, name, "Expected a folder with train/ and val/, one sub-folder per class.")
    train_path = check_dir(os.path.join(root, train_dir), name, f"{root!r} needs a {train_dir}/ folder.")
    test_path = next((os.path.join(root, d) for d in test_dirs if os.path.isdir(os.path.join(root, d))), None)
    if test_path is None:
        raise DataNotFoundError(f"{name}: {root!r} has none of the test folders {test_dirs}.")
    classes, tr_paths, tr_labels = _list_split(train_path, None)
    _, te_paths, te_labels = _list_split(test_path, classes)
    workers = num_workers or min(8, os.cpu_count() or 1)

    def decode(paths):
        out = np.empty((len(paths), image_size, image_size, 3), np.uint8)

        def one(i):
            out[i] = preprocess_image(paths[i], image_size, resize)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(len(paths))))
        return out

    xtr = finish_images(name, decode(tr_paths), 1 / 255, mean, std, dtype)
    xte = finish_images(name, decode(te_paths), 1 / 255, mean, std, dtype)
    return make_dataset(
        name=name,
        x_train=xtr,
        y_train=np.asarray(tr_labels, np.int32),
        x_test=xte,
        y_test=np.asarray(te_labels, np.int32),
        num_classes=len(classes),
        preprocessing=describe(1 / 255, mean, std, dtype == "float32"),
        meta={"source": "image_folder", "path": root, "classes": tuple(classes),
              "image_size": image_size, "resize": resize, "test_folder": os.path.basename(test_path)},
    )


def load_imagenet12(data_dir: str, *, image_size: int = 224, resize: int | None = None,
                    dtype: str = "uint8", num_workers: int | None = None) -> Dataset:
    """ImageNet-12 (the paper's 12-class subset) from an image folder; see `load_image_folder`.

    SPEC §4: shorter side 256, centre crop 224, ImageNet mean/std. Stored uint8 by default.
    """
    return load_image_folder(data_dir, name="imagenet12", image_size=image_size, resize=resize,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=dtype, num_workers=num_workers)

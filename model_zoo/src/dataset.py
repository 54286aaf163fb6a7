"""Data pipelines (``mindspore.dataset``): digits (built in), CIFAR-10/100, ImageNet folders.

Every pipeline yields batches of ``image`` (float32, NCHW, normalized) and ``label`` (int32).

========= ============================================================== ========= ========
name      source                                                         classes   size
========= ============================================================== ========= ========
digits    scikit-learn's bundled handwritten digits (1,797 real 8x8       10        32
          images), bilinearly upsampled and replicated to 3 channels;
          no download. Train: the first 1,438 images, test: the last 359
cifar10   CIFAR-10 binary version (``cifar-10-batches-bin``)             10        32
cifar100  CIFAR-100 binary version (``cifar-100-binary``)                100       32
imagenet  ``train/`` and ``val/`` folders of class folders of images     1000      224
========= ============================================================== ========= ========

Augmentation (``augment=None`` means: on for training, except digits):

* CIFAR (the paper's): random 32x32 crop of the image zero-padded by 4, random horizontal flip,
  then per-channel normalization; evaluation normalizes only.
* ImageNet: ``RandomCropDecodeResize`` (scale 0.08-1, ratio 3/4-4/3) + flip; evaluation:
  decode, resize the short side to ``image_size / 0.875`` (256 for 224), center crop.
* digits: random crop with ``image_size // 8`` padding (no flip: digits are not symmetric).

A missing or malformed data path raises :class:`DatasetLayoutError`, whose message says what
layout was expected. Note that MindSpore's CIFAR readers silently truncate or reject files that
do not hold exactly 10,000 records (50,000 for CIFAR-100's ``train.bin``), so sizes are checked
here first.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mindspore.dataset as ds
import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision
import numpy as np
from mindspore import dtype as mstype
from sklearn.datasets import load_digits

__all__ = ["DATASETS", "DatasetSpec", "DatasetLayoutError", "create_dataset", "digits_arrays"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-pixel std of the training set
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_RECORD = 1 + 32 * 32 * 3  # label byte + 3072 pixel bytes (R, G, B planes, row-major)
CIFAR100_RECORD = 2 + 32 * 32 * 3  # coarse label, fine label, pixels
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DIGITS_TEST_FRACTION = 0.2
ARCHIVE_DIRS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}


class DatasetLayoutError(ValueError):
    """A data path is missing or its contents do not have the expected layout."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a caller needs to know about a data set before building a network for it.

    Attributes:
        num_classes: number of labels (ImageNet: 1000 for the real set; the loader itself takes
            whatever class folders it finds).
        image_size: native input height = width, the default of ``create_dataset``.
        layout: the expected on-disk layout, quoted in error messages.
    """

    num_classes: int
    image_size: int
    layout: str


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(10, 32, "built in (scikit-learn's load_digits); no data_path"),
    "cifar10": DatasetSpec(
        10,
        32,
        "the CIFAR-10 binary version ('cifar-10-batches-bin'): data_batch_1.bin ... "
        f"data_batch_5.bin (train) and test_batch.bin (test), 10,000 records each, "
        f"{CIFAR10_RECORD} bytes per record (1 label byte + 3072 pixel bytes)",
    ),
    "cifar100": DatasetSpec(
        100,
        32,
        "the CIFAR-100 binary version ('cifar-100-binary'): train.bin (50,000 records) and "
        f"test.bin (10,000 records), {CIFAR100_RECORD} bytes per record (coarse label byte, "
        "fine label byte, 3072 pixel bytes)",
    ),
    "imagenet": DatasetSpec(
        1000,
        224,
        "train/ and val/ subfolders, each holding one folder per class (the same class folder "
        "names in both) of image files (" + ", ".join(IMAGE_EXTENSIONS) + ")",
    ),
}


def create_dataset(
    name: str,
    data_path: str | os.PathLike | None = None,
    batch_size: int = 128,
    train: bool = True,
    image_size: int | None = None,
    augment: bool | None = None,
    shuffle: bool | None = None,
    num_parallel_workers: int | None = None,
    shard_id: int | None = None,
    num_shards: int | None = None,
    drop_remainder: bool = True,
    seed: int | None = None,
) -> ds.Dataset:
    """Build the batched pipeline of data set ``name``.

    Args:
        name: a key of :data:`DATASETS` (case-insensitive).
        data_path: the data directory (see :data:`DATASETS` for each layout); ignored, with a
            warning, for ``digits``.
        batch_size: samples per batch (per shard).
        train: the training split (else the test / validation split).
        image_size: output height = width; ``None`` for the data set's native size. CIFAR is
            resized after augmentation when it differs from 32.
        augment: random augmentation; ``None`` means ``train`` (``False`` for digits).
        shuffle: shuffle the samples every epoch; ``None`` means ``train``.
        num_parallel_workers: threads of the map operations; ``None`` for ``min(8, cpus)``.
        shard_id: this worker's rank for data parallelism; give it with ``num_shards``.
        num_shards: number of data-parallel workers; each reads a disjoint ``1/num_shards``.
        drop_remainder: drop the last incomplete batch.
        seed: when given, sets ``mindspore.dataset.config`` seed (a process-wide setting that
            fixes shuffling and augmentation).

    Returns:
        A dataset with columns ``image`` (float32 ``[batch, 3, image_size, image_size]``) and
        ``label`` (int32 ``[batch]``).

    Raises:
        ValueError: unknown ``name`` or inconsistent arguments.
        DatasetLayoutError: a missing or malformed ``data_path``.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; available: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[key]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (shard_id is None) != (num_shards is None):
        raise ValueError(
            "give both shard_id and num_shards, or neither "
            f"(got shard_id={shard_id}, num_shards={num_shards})"
        )
    if shard_id is not None and num_shards is not None and not 0 <= shard_id < num_shards:
        raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}, {num_shards}")
    size = spec.image_size if image_size is None else int(image_size)
    if size < 8:
        raise ValueError(f"image_size must be >= 8, got {size}")
    augment = (train and key != "digits") if augment is None else augment
    shuffle = train if shuffle is None else shuffle
    workers = num_parallel_workers or min(8, os.cpu_count() or 1)
    if seed is not None:
        ds.config.set_seed(seed)
    source = dict(shuffle=shuffle, num_shards=num_shards, shard_id=shard_id)
    data = _BUILDERS[key](data_path, train, size, augment, workers, source)
    data = data.map(
        transforms.TypeCast(mstype.int32), input_columns="label", num_parallel_workers=workers
    )
    data = data.batch(batch_size, drop_remainder=drop_remainder)
    if data.get_dataset_size() == 0:
        raise ValueError(
            f"{key}: no batch of {batch_size} fits in this split/shard with "
            f"drop_remainder={drop_remainder}; lower batch_size"
        )
    return data


# --- digits ------------------------------------------------------------------------------------


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` 1-D bilinear resampling (half-pixel centers, edge clamp).

    This is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` along one
    axis; an image resizes as ``R @ img @ R.T``.
    """
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    r = np.zeros((n_out, n_in))
    np.add.at(r, (np.arange(n_out), lo), 1 - w)
    np.add.at(r, (np.arange(n_out), hi), w)
    return r


def digits_arrays(train: bool = True, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The digits split as arrays, before normalization.

    The 1,797 images of ``sklearn.datasets.load_digits`` (8x8, gray levels 0-16) are scaled to
    [0, 1], bilinearly upsampled to ``image_size`` and replicated to 3 channels. The split is
    deterministic: the last ``round(0.2 * 1797) = 359`` images are the test set.

    Returns:
        ``images`` float32 ``[n, image_size, image_size, 3]`` (HWC) and ``labels`` int32 ``[n]``.
    """
    bunch = load_digits()
    images = bunch.images.astype(np.float64) / 16.0
    labels = bunch.target.astype(np.int32)
    n_test = int(round(DIGITS_TEST_FRACTION * len(labels)))
    part = slice(None, -n_test) if train else slice(-n_test, None)
    r = _bilinear_matrix(images.shape[1], image_size)
    up = np.einsum("oh,nhw,pw->nop", r, images[part], r)
    rgb = np.repeat(up[..., None], 3, axis=-1).astype(np.float32)
    return np.ascontiguousarray(rgb), labels[part]


@functools.lru_cache(maxsize=8)
def _digits_stats(image_size: int) -> tuple[float, float]:
    train, _ = digits_arrays(True, image_size)
    return float(train.mean()), float(train.std())


def _digits(
    data_path: str | os.PathLike | None,
    train: bool,
    size: int,
    augment: bool,
    workers: int,
    source: dict,
) -> ds.Dataset:
    if data_path is not None:
        warnings.warn(f"digits is built in; data_path={str(data_path)!r} is ignored", stacklevel=3)
    images, labels = digits_arrays(train, size)
    mean, std = _digits_stats(size)  # training-split statistics, for both splits
    data = ds.NumpySlicesDataset((images, labels), column_names=["image", "label"], **source)
    ops: list = []
    if augment:
        ops.append(vision.RandomCrop(size, padding=size // 8))
    ops += [vision.Normalize([mean] * 3, [std] * 3), vision.HWC2CHW()]
    return data.map(ops, input_columns="image", num_parallel_workers=workers)


# --- CIFAR -------------------------------------------------------------------------------------


def _layout_error(key: str, path: Path | None, problem: str) -> DatasetLayoutError:
    where = f" in {path}" if path is not None else ""
    hint = ""
    nested = path / ARCHIVE_DIRS[key] if path is not None and key in ARCHIVE_DIRS else None
    if nested is not None and nested.is_dir():
        hint = f" (did you mean data_path='{nested}'?)"
    return DatasetLayoutError(f"{key}: {problem}. Expected {DATASETS[key].layout}{where}{hint}")


def _data_dir(key: str, data_path: str | os.PathLike | None) -> Path:
    if data_path is None:
        raise _layout_error(key, None, "data_path is required")
    path = Path(data_path)
    if not path.is_dir():
        raise _layout_error(key, path, f"'{path}' is not a directory")
    return path


def _check_records(key: str, path: Path, files: list[str], record: int, counts: list[int]) -> None:
    for fname, count in zip(files, counts, strict=True):
        f = path / fname
        if not f.is_file():
            raise _layout_error(key, path, f"{fname} is missing")
        nbytes = f.stat().st_size
        if nbytes != count * record:
            raise _layout_error(
                key,
                path,
                f"{fname} has {nbytes:,} bytes "
                f"({nbytes / record:,.2f} records), expected {count * record:,} "
                f"({count:,} records)",
            )


def _check_cifar10(data_path: str | os.PathLike | None, train: bool) -> Path:
    path = _data_dir("cifar10", data_path)
    if train:
        files = sorted(p.name for p in path.glob("data_batch_*.bin"))
        if not files:
            raise _layout_error("cifar10", path, "no data_batch_*.bin file")
        if tuple(files) != CIFAR10_TRAIN_FILES:
            warnings.warn(
                f"cifar10: training on {', '.join(files)} only (the full set has "
                f"{', '.join(CIFAR10_TRAIN_FILES)}) in {path}",
                stacklevel=4,  # the caller of create_dataset
            )
    else:
        files = ["test_batch.bin"]
    _check_records("cifar10", path, files, CIFAR10_RECORD, [10_000] * len(files))
    return path


def _check_cifar100(data_path: str | os.PathLike | None, train: bool) -> Path:
    path = _data_dir("cifar100", data_path)
    files, count = (["train.bin"], 50_000) if train else (["test.bin"], 10_000)
    _check_records("cifar100", path, files, CIFAR100_RECORD, [count])
    return path


def _cifar10(
    data_path: str | os.PathLike | None,
    train: bool,
    size: int,
    augment: bool,
    workers: int,
    source: dict,
) -> ds.Dataset:
    path = _check_cifar10(data_path, train)
    usage = "train" if train else "test"
    data = ds.Cifar10Dataset(str(path), usage=usage, num_parallel_workers=workers, **source)
    return _cifar_transforms(data, CIFAR10_MEAN, CIFAR10_STD, size, augment, workers)


def _cifar100(
    data_path: str | os.PathLike | None,
    train: bool,
    size: int,
    augment: bool,
    workers: int,
    source: dict,
) -> ds.Dataset:
    path = _check_cifar100(data_path, train)
    usage = "train" if train else "test"
    data = ds.Cifar100Dataset(str(path), usage=usage, num_parallel_workers=workers, **source)
    data = data.project(["image", "fine_label"]).rename(["fine_label"], ["label"])
    return _cifar_transforms(data, CIFAR100_MEAN, CIFAR100_STD, size, augment, workers)


def _cifar_transforms(
    data: ds.Dataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: int,
    augment: bool,
    workers: int,
) -> ds.Dataset:
    """uint8 HWC -> [crop 32 of 4-padded, flip] -> [resize] -> normalize -> float32 CHW."""
    ops: list = []
    if augment:
        ops += [vision.RandomCrop(32, padding=4), vision.RandomHorizontalFlip()]
    if size != 32:
        ops.append(vision.Resize((size, size)))
    ops += [vision.Normalize([255 * m for m in mean], [255 * s for s in std]), vision.HWC2CHW()]
    return data.map(ops, input_columns="image", num_parallel_workers=workers)


# --- ImageNet ----------------------------------------------------------------------------------


def _check_imagenet(data_path: str | os.PathLike | None, train: bool) -> Path:
    path = _data_dir("imagenet", data_path)
    split = path / ("train" if train else "val")
    if not split.is_dir():
        raise _layout_error("imagenet", path, f"no '{split.name}/' subfolder")
    classes = sorted(p for p in split.iterdir() if p.is_dir())
    if not classes:
        raise _layout_error("imagenet", path, f"'{split.name}/' has no class folders")
    first = classes[0]
    if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in first.iterdir()):
        raise _layout_error(
            "imagenet", path, f"class folder '{split.name}/{first.name}' has no image file"
        )
    return split


def _imagenet(
    data_path: str | os.PathLike | None,
    train: bool,
    size: int,
    augment: bool,
    workers: int,
    source: dict,
) -> ds.Dataset:
    split = _check_imagenet(data_path, train)
    data = ds.ImageFolderDataset(
        str(split),
        num_parallel_workers=workers,
        extensions=[*IMAGE_EXTENSIONS, *(e.upper() for e in IMAGE_EXTENSIONS)],
        **source,
    )
    if augment:
        ops: list = [
            vision.RandomCropDecodeResize(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
            vision.RandomHorizontalFlip(),
        ]
    else:
        ops = [vision.Decode(), vision.Resize(int(round(size / 0.875))), vision.CenterCrop(size)]
    ops += [
        vision.Normalize([255 * m for m in IMAGENET_MEAN], [255 * s for s in IMAGENET_STD]),
        vision.HWC2CHW(),
    ]
    return data.map(ops, input_columns="image", num_parallel_workers=workers)


# name -> builder(data_path, train, image_size, augment, workers, source kwargs)
_BUILDERS: dict[str, Callable[..., ds.Dataset]] = {
    "digits": _digits,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagenet": _imagenet,
}

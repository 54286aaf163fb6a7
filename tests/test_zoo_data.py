"""Model-zoo data pipelines: CIFAR binaries in the real format, digits, ImageNet folders, errors.

The oracles are the bytes we write (CIFAR), scikit-learn's arrays upsampled by torch (digits)
and solid-color images whose normalized value is known in closed form (ImageNet folders).
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore loads (see conftest)

from pathlib import Path

import mindspore.dataset.vision as vision
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from model_zoo.src.dataset import DatasetLayoutError, create_dataset, digits_arrays

RECORDS = 10_000  # Cifar10Dataset reads exactly 10,000 records per .bin file
N_DIGITS_TRAIN, N_DIGITS_TEST = 1438, 359
# The published normalization constants, written out here (not imported) so a wrong constant in
# the loader fails the tests.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batches(data):
    return list(data.create_dict_iterator(output_numpy=True, num_epochs=1))


def _concat(data):
    rows = _batches(data)
    return np.concatenate([r["image"] for r in rows]), np.concatenate([r["label"] for r in rows])


def _cifar_pixels(images: np.ndarray, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> np.ndarray:
    """Undo the CIFAR normalization: float NCHW -> uint8-valued float NCHW."""
    mean = 255 * np.asarray(mean)[:, None, None]
    std = 255 * np.asarray(std)[:, None, None]
    return images * std + mean


# --- CIFAR-10 in the real binary format ---------------------------------------------------------


def _write_cifar10_file(path: Path, seed: int) -> np.ndarray:
    """10,000 records of ``label byte + 3072 pixel bytes`` (R, G, B planes); returns them."""
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, (RECORDS, 3073), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, RECORDS)
    records.tofile(path)
    assert path.stat().st_size == 30_730_000
    return records


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar-10-batches-bin")
    train = _write_cifar10_file(root / "data_batch_1.bin", seed=1)
    test = _write_cifar10_file(root / "test_batch.bin", seed=2)
    return root, train, test


def test_cifar10_reads_back_records(cifar10_dir):
    root, _, test = cifar10_dir
    data = create_dataset("cifar10", root, batch_size=1000, train=False, drop_remainder=False)
    rows = _batches(data)
    assert len(rows) == 10
    labels = np.concatenate([r["label"] for r in rows])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, test[:, 0])
    first, last = rows[0]["image"], rows[-1]["image"]
    assert first.shape == (1000, 3, 32, 32) and first.dtype == np.float32
    for got, idx in [(first[:5], slice(0, 5)), (last[-3:], slice(RECORDS - 3, RECORDS))]:
        expected = test[idx, 1:].reshape(-1, 3, 32, 32).astype(np.float64)
        np.testing.assert_allclose(_cifar_pixels(got), expected, atol=2e-3)


@pytest.mark.slow
def test_cifar10_train_split_and_augmentation(cifar10_dir):
    root, train, _ = cifar10_dir
    kwargs = dict(batch_size=16, train=True, shuffle=False, seed=5)
    with pytest.warns(UserWarning, match="training on data_batch_1.bin only"):
        plain = _batches(create_dataset("cifar10", root, augment=False, **kwargs))
    with pytest.warns(UserWarning):
        augmented = _batches(create_dataset("cifar10", root, **kwargs))  # train: augment on
    assert len(plain) == len(augmented) == RECORDS // 16
    np.testing.assert_array_equal(plain[0]["label"], train[:16, 0])
    np.testing.assert_array_equal(augmented[0]["label"], train[:16, 0])
    np.testing.assert_allclose(
        _cifar_pixels(plain[0]["image"]), train[:16, 1:].reshape(-1, 3, 32, 32), atol=2e-3
    )
    # every augmented image is a 32x32 crop of the 4-zero-padded original, maybe flipped
    crops = np.rint(_cifar_pixels(augmented[0]["image"]))
    originals = np.pad(train[:16, 1:].reshape(-1, 3, 32, 32), ((0, 0), (0, 0), (4, 4), (4, 4)))
    shifted = 0
    for crop, padded in zip(crops, originals, strict=True):
        candidates = {
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(crop, _window(padded, dy, dx, flip))
        }
        assert candidates, "augmented image is not a padded crop / flip of its record"
        shifted += (4, 4, False) not in candidates
    assert shifted > 0, "augmentation changed nothing"


def _window(padded: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    window = padded[:, dy : dy + 32, dx : dx + 32]
    return window[..., ::-1] if flip else window


def test_cifar10_shards_partition_the_split(cifar10_dir):
    root, _, test = cifar10_dir
    labels = []
    for shard in range(2):
        data = create_dataset(
            "cifar10", root, batch_size=500, train=False, shard_id=shard, num_shards=2
        )
        assert data.get_dataset_size() == 10
        labels.append(_concat(data)[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(test[:, 0]))


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(3)
    records = rng.integers(0, 256, (RECORDS, 3074), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 20, RECORDS)  # coarse label
    records[:, 1] = rng.integers(0, 100, RECORDS)  # fine label: the one we train on
    records.tofile(tmp_path / "test.bin")
    images, labels = _concat(create_dataset("cifar100", tmp_path, batch_size=2500, train=False))
    np.testing.assert_array_equal(labels, records[:, 1])
    np.testing.assert_allclose(
        _cifar_pixels(images[:4], CIFAR100_MEAN, CIFAR100_STD),
        records[:4, 2:].reshape(-1, 3, 32, 32),
        atol=2e-3,
    )


# --- errors that say what layout was expected ---------------------------------------------------


def test_cifar10_layout_errors(tmp_path):
    layout = (
        r"data_batch_1.bin ... data_batch_5.bin .*test_batch.bin .*10,000 records each, 3073 bytes"
    )
    with pytest.raises(DatasetLayoutError, match=f"data_path is required.*{layout}"):
        create_dataset("cifar10")
    with pytest.raises(DatasetLayoutError, match=f"is not a directory.*{layout}"):
        create_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match=r"no data_batch_\*.bin file"):
        create_dataset("cifar10", tmp_path, train=True)
    with pytest.raises(DatasetLayoutError, match=f"test_batch.bin is missing.*{layout}"):
        create_dataset("cifar10", tmp_path, train=False)

    short = tmp_path / "short"
    short.mkdir()
    np.zeros((100, 3073), np.uint8).tofile(short / "test_batch.bin")
    with pytest.raises(
        DatasetLayoutError, match=r"307,300 bytes \(100.00 records\), expected 30,730,000"
    ):
        create_dataset("cifar10", short, train=False)

    parent = tmp_path / "download"
    (parent / "cifar-10-batches-bin").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="did you mean data_path=.*cifar-10-batches-bin"):
        create_dataset("cifar10", parent, train=False)


def test_cifar100_layout_errors(tmp_path):
    with pytest.raises(
        DatasetLayoutError, match=r"train.bin is missing.*50,000 records.*3074 bytes"
    ):
        create_dataset("cifar100", tmp_path)
    np.zeros((20_000, 3074), np.uint8).tofile(tmp_path / "test.bin")  # reader would truncate
    with pytest.raises(DatasetLayoutError, match=r"test.bin has 61,480,000 bytes"):
        create_dataset("cifar100", tmp_path, train=False)


def test_argument_errors(tmp_path):
    with pytest.raises(
        ValueError, match="unknown dataset 'mnist'; available: cifar10, cifar100, digits, imagenet"
    ):
        create_dataset("mnist")
    with pytest.raises(ValueError, match="both shard_id and num_shards"):
        create_dataset("digits", shard_id=0)
    with pytest.raises(ValueError, match="0 <= shard_id < num_shards"):
        create_dataset("digits", shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="no batch of 2000 fits"):
        create_dataset("digits", batch_size=2000)


# --- digits (the built-in default) --------------------------------------------------------------


def test_digits_splits_shapes_and_labels():
    target = load_digits().target
    for train, n, labels in [
        (True, N_DIGITS_TRAIN, target[:N_DIGITS_TRAIN]),
        (False, N_DIGITS_TEST, target[-N_DIGITS_TEST:]),
    ]:
        images, got = _concat(
            create_dataset(
                "digits", batch_size=256, train=train, shuffle=False, drop_remainder=False
            )
        )
        assert images.shape == (n, 3, 32, 32) and images.dtype == np.float32
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, labels)
        np.testing.assert_array_equal(images[:, 0], images[:, 2])  # gray replicated to RGB
        if train:  # normalized with the training split's own statistics
            assert abs(images.mean()) < 1e-4 and abs(images.std() - 1) < 1e-3
    assert N_DIGITS_TRAIN + N_DIGITS_TEST == len(target) == 1797


def test_digits_upsampling_is_bilinear():
    """Independent oracle: torch's bilinear interpolation (align_corners=False)."""
    images, _ = digits_arrays(train=False, image_size=32)
    source = torch.from_numpy(load_digits().images[-N_DIGITS_TEST:] / 16.0)[:, None]
    expected = torch.nn.functional.interpolate(
        source, size=(32, 32), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(images[..., 0], expected[:, 0].numpy(), atol=1e-6)


def test_digits_options():
    data = create_dataset("digits", batch_size=32, image_size=16, augment=True, seed=0)
    batch = _batches(data)[0]
    assert batch["image"].shape == (32, 3, 16, 16)
    sizes = [
        create_dataset(
            "digits", batch_size=1, train=True, shard_id=s, num_shards=2
        ).get_dataset_size()
        for s in range(2)
    ]
    assert sizes == [N_DIGITS_TRAIN // 2] * 2
    with pytest.warns(UserWarning, match="digits is built in"):
        create_dataset("digits", data_path="/data/cifar", batch_size=32)


# --- ImageNet folder layout ---------------------------------------------------------------------

COLORS = {"cat": (200, 30, 90), "dog": (10, 120, 250)}  # solid images: known normalized value


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for split, count in [("train", 3), ("val", 2)]:
        for cls, color in COLORS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            image = np.empty((40, 48, 3), np.uint8)
            image[:] = color
            for i in range(count):
                (folder / f"{i}.png").write_bytes(vision.encode_png(image).tobytes())
    (root / "train" / "dog" / "3.JPEG").write_bytes(vision.encode_jpeg(image, 100).tobytes())
    return root


def _normalized(color) -> np.ndarray:
    return (np.asarray(color) - 255 * np.asarray(IMAGENET_MEAN)) / (255 * np.asarray(IMAGENET_STD))


@pytest.mark.parametrize("train", [True, False], ids=["train", "val"])
def test_imagenet_folders(imagenet_dir, train):
    images, labels = _concat(
        create_dataset("imagenet", imagenet_dir, batch_size=1, train=train, image_size=32, seed=0)
    )
    assert images.shape == ((7, 3, 32, 32) if train else (4, 3, 32, 32))
    assert labels.dtype == np.int32
    assert sorted(labels.tolist()) == ([0, 0, 0, 1, 1, 1, 1] if train else [0, 0, 1, 1])
    expected = np.stack([_normalized(COLORS[["cat", "dog"][label]]) for label in labels])
    tol = 0.05 if train else 1e-4  # one JPEG in train (quality 100, still lossy)
    np.testing.assert_allclose(images.mean(axis=(2, 3)), expected, atol=tol)
    np.testing.assert_allclose(images.std(axis=(2, 3)), 0, atol=tol)


def test_imagenet_layout_errors(tmp_path):
    layout = "train/ and val/ subfolders, each holding one folder per class"
    with pytest.raises(DatasetLayoutError, match=f"no 'train/' subfolder.*{layout}"):
        create_dataset("imagenet", tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match="'train/' has no class folders"):
        create_dataset("imagenet", tmp_path)
    (tmp_path / "train" / "n01440764").mkdir()
    (tmp_path / "train" / "n01440764" / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="'train/n01440764' has no image file"):
        create_dataset("imagenet", tmp_path)

"""The data sources: synthetic images and the CIFAR-10 loader, on batches fabricated in its exact format."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from storage_impls.datasets import load_cifar10, synthetic


def test_synthetic_is_deterministic_and_typed():
    images, labels = synthetic(50, seed=3)
    again, again_labels = synthetic(50, seed=3)
    other, _ = synthetic(50, seed=4)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.dtype == np.int64 and set(labels) <= set(range(10))
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (16, 12, 4), (256, 256, 3)])
def test_synthetic_any_shape(shape):
    images, labels = synthetic(3, shape)
    assert images.shape == (3, *shape) and len(labels) == 3
    assert images.std() > 10  # content, not a flat colour


def test_synthetic_compresses_like_cifar():
    """Pillow's default PNG of a 32x32x3 image is 1.8-2.6 KB, as CIFAR-10 (~2 KB), not noise (~3.1 KB)."""
    images, _ = synthetic(300)
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        sizes.append(len(buffer.getvalue()))
    assert 1800 <= np.mean(sizes) <= 2600


def test_synthetic_refuses_bad_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        synthetic(0)
    with pytest.raises(ValueError, match="channels"):
        synthetic(2, (8, 8, 2))


def write_cifar_batches(directory, per_batch=4):
    """Fabricate data_batch_1..5 as CIFAR-10's python version stores them; return the expected images/labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for number in range(1, 6):
        batch_images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        batch_labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        rows = batch_images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R plane, G plane, B plane
        batch = {b"batch_label": f"training batch {number} of 5".encode(), b"labels": batch_labels,
                 b"data": rows, b"filenames": [b"x.png"] * per_batch}
        with open(directory / f"data_batch_{number}", "wb") as file:
            pickle.dump(batch, file, protocol=2)
        images.append(batch_images)
        labels += batch_labels
    return np.concatenate(images), np.array(labels)


def test_load_cifar10_reads_batches_in_numeric_order(tmp_path):
    expected_images, expected_labels = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"ignored")
    images, labels = load_cifar10(tmp_path / "cifar-10-batches-py")
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert labels.dtype == np.int64


def test_load_cifar10_doubles_on_request(tmp_path):
    expected_images, expected_labels = write_cifar_batches(tmp_path)
    images, labels = load_cifar10(tmp_path, double=True)
    np.testing.assert_array_equal(images, np.concatenate([expected_images, expected_images]))
    np.testing.assert_array_equal(labels, np.concatenate([expected_labels, expected_labels]))


def test_load_cifar10_missing_directory_or_batch(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("content", [b"garbage bytes", None, "wrong-shape", "no-labels"])
def test_load_cifar10_corrupt_batch(tmp_path, content):
    write_cifar_batches(tmp_path)
    batch_path = tmp_path / "data_batch_2"
    if content is None:
        batch_path.write_bytes(batch_path.read_bytes()[:100])
    elif content == "wrong-shape":
        batch_path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}))
    elif content == "no-labels":
        batch_path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    else:
        batch_path.write_bytes(content)
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_cifar10_refuses_foreign_objects(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(tmp_path)

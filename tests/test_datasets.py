"""The data sources: synthetic images of every dtype, the CIFAR-10 and MNIST loaders, on files fabricated
in their exact formats, and the image-folder loader on a fabricated folder."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from storage_impls import datasets
from storage_impls.core.base import SUPPORTED_DTYPES
from storage_impls.datasets import (
    MixedSizesError,
    folder_files,
    folder_mode,
    folder_shape,
    load_cifar10,
    load_folder,
    load_mnist,
    mnist_count,
    synthetic,
)

# sha256 of the images and of the labels synthetic() makes: the same bytes on every CPU (exact integer
# interpolation; the float32 matmul before it gave other bytes on other BLAS kernels, in 0.03 % of pixels by 1), so
# runs of different machines read the same images. (20, 1024, 1024, 1) spans two of its blocks.
UINT8_CHECKSUMS = {
    (50, (32, 32, 3), 0): (
        "eebdd900b2d864f88f5eadc2c1a46ced3cf51401363017f1798d42f1c016e12f",
        "2ca9df4e281e1c7985de4c4111100aa36b4b45346a12665579bc734dcb4e55cb",
    ),
    (7, (8, 8), 3): (
        "098d27cd8915021ffcbf756d2504cd390324325e9f441e1ffd2f565a2e79534b",
        "9d51599d7f0d246e3ef473dc37462d50eaf30698d760a3fc7f540fff693ee1c2",
    ),
    (5, (16, 12, 4), 1): (
        "3daa29cffc722258d142a612324a3861488a11ab033a8638886ff9f65358c409",
        "970bc1008c3c3ef9e284493ebab5009f6f12ed5e9de9cfecc78bd7734777a6f3",
    ),
    (2000, (32, 32, 3), 0): (
        "20b631542e15bfb1d6903818b7a18063fb4a2901244eaac3b771eaa45b2cb01b",
        "f430110f4dd95349eea3a4f43ffa0f86c53b4cf4bce6948baeb02073019872f0",
    ),
    (20, (1024, 1024, 1), 5): (
        "d0ecaa3d268e7e20fc5b402254f79c7472e9d6ed332eb0620d249211d00a535d",
        "538621f10178a20f2843b4796767bd205bad8f9a53df5a00b043c73ca9bd226b",
    ),
}


def test_synthetic_is_deterministic_and_typed():
    images, labels = synthetic(50, seed=3)
    again, again_labels = synthetic(50, seed=3)
    other, _ = synthetic(50, seed=4)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.dtype == np.int64 and set(labels) <= set(range(10))
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(images, other)


@pytest.mark.parametrize(("n", "shape", "seed"), list(UINT8_CHECKSUMS))
def test_synthetic_uint8_is_unchanged(n, shape, seed):
    images, labels = synthetic(n, shape, seed=seed)
    assert images.dtype == np.uint8 and images.shape == (n, *shape)
    assert (
        hashlib.sha256(images.tobytes()).hexdigest(),
        hashlib.sha256(labels.tobytes()).hexdigest(),
    ) == UINT8_CHECKSUMS[n, shape, seed]
    np.testing.assert_array_equal(synthetic(n, shape, seed=seed, dtype="uint8")[0], images)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (16, 12, 4), (256, 256, 3), (8, 8, 13), (3, 32, 32)])
def test_synthetic_any_shape(shape):
    images, labels = synthetic(3, shape)
    assert images.shape == (3, *shape) and len(labels) == 3
    assert images.std() > 10  # content, not a flat colour


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_synthetic_every_dtype_holds_the_uint8_pictures_widened(dtype):
    """Same pictures and labels as uint8, deterministic, spread over the dtype's range (floats: [0, 1))."""
    shape = (12, 10, 3)
    reference, reference_labels = synthetic(40, shape, seed=2)
    images, labels = synthetic(40, shape, seed=2, dtype=dtype)
    assert images.dtype == dtype and images.shape == (40, *shape) and images.flags.c_contiguous
    np.testing.assert_array_equal(labels, reference_labels)
    np.testing.assert_array_equal(synthetic(40, shape, seed=2, dtype=dtype)[0], images)
    assert not np.array_equal(synthetic(40, shape, seed=3, dtype=dtype)[0], images)
    if dtype.kind == "f":
        assert 0 <= images.min() and images.max() < 1
        assert np.abs(images.astype(np.float64) * 256 - reference - 0.5).max() <= 0.5 + 1e-6  # (v + u) / 256
        assert len(np.unique(images)) > len(np.unique(reference))  # the noise fills in between the 8-bit steps
    else:
        shift = 8 * dtype.itemsize - 8
        top = (images >> shift).astype(np.int64) + (128 if dtype.kind == "i" else 0)
        np.testing.assert_array_equal(top, reference)  # the 8-bit picture is the top byte
        info = np.iinfo(dtype)
        span = (int(images.max()) - int(images.min())) / (int(info.max) - int(info.min))
        assert span > 0.9 and (shift == 0 or np.any(images & ((1 << shift) - 1)))  # the full range, with fine noise


def test_synthetic_float32_chips():
    """The RocksDB write-up's chips: (3, 128, 128) float32, made as 3x128 images of 128 bands."""
    images, labels = synthetic(4, (3, 128, 128), seed=0, dtype=np.float32)
    assert images.shape == (4, 3, 128, 128) and images.dtype == np.float32 and len(labels) == 4
    assert not np.isnan(images).any() and 0.2 < images.std() * 4 < 2


def test_synthetic_memory_stays_bounded(monkeypatch):
    """However wide the dtype, temporaries stay within a few blocks: the output is the only large allocation."""
    monkeypatch.setattr(datasets, "SYNTHETIC_BLOCK_BYTES", 64 << 10)
    synthetic(64, (64, 64, 4), dtype=np.float64)  # first-call allocations (numpy's own caches) out of the way
    tracemalloc.start()
    try:
        images, _ = synthetic(64, (64, 64, 4), dtype=np.float64)  # 8 MiB of output
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - images.nbytes < 16 * (64 << 10)


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
    with pytest.raises(ValueError, match="2 or 3 dimensions"):
        synthetic(2, (2, 8, 8, 3))
    with pytest.raises(ValueError, match="every dimension"):
        synthetic(2, (8, 0))
    for dtype in (bool, np.complex64, object):
        with pytest.raises(TypeError, match="numeric dtype"):
            synthetic(2, (8, 8), dtype=dtype)


def write_cifar_batches(directory, per_batch=4):
    """Fabricate data_batch_1..5 as CIFAR-10's python version stores them; return the expected images/labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for number in range(1, 6):
        batch_images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        batch_labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        rows = batch_images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R plane, G plane, B plane
        batch = {
            b"batch_label": f"training batch {number} of 5".encode(),
            b"labels": batch_labels,
            b"data": rows,
            b"filenames": [b"x.png"] * per_batch,
        }
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


def write_idx(path, array: np.ndarray, magic: int | None = None, count: int | None = None) -> None:
    """Write ``array`` (uint8) as an idx file as MNIST's are made (``.gz``: gzipped); ``magic`` and ``count``
    override the header's."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    dims = (count if count is not None else len(array), *array.shape[1:])
    data = (
        magic.to_bytes(4, "big") + b"".join(side.to_bytes(4, "big") for side in dims) + array.astype(np.uint8).tobytes()
    )
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(directory, train=5, test=3, gz=False):
    """Fabricate MNIST's four idx files (``test=0``: no t10k files); return the expected images and labels."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    images, labels = [], []
    for part, count in (("train", train), ("t10k", test)):
        if count:
            part_images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
            part_labels = rng.integers(0, 10, count, dtype=np.uint8)
            write_idx(directory / f"{part}-images-idx3-ubyte{suffix}", part_images)
            write_idx(directory / f"{part}-labels-idx1-ubyte{suffix}", part_labels)
            images.append(part_images)
            labels.append(part_labels)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_mnist_reads_train_then_test(tmp_path, gz):
    expected_images, expected_labels = write_mnist(tmp_path, gz=gz)
    images, labels = load_mnist(tmp_path)
    assert (
        images.shape == (8, 28, 28)
        and images.dtype == np.uint8
        and images.flags.c_contiguous
        and images.flags.writeable
    )
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert mnist_count(tmp_path) == 8


def test_load_mnist_training_set_alone_and_mixed_compression(tmp_path):
    expected_images, expected_labels = write_mnist(tmp_path / "train-only", test=0)
    images, labels = load_mnist(tmp_path / "train-only")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert mnist_count(tmp_path / "train-only") == 5
    expected_images, _ = write_mnist(tmp_path / "mixed")
    labels_file = tmp_path / "mixed" / "t10k-labels-idx1-ubyte"
    (tmp_path / "mixed" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_file.read_bytes()))
    labels_file.unlink()
    np.testing.assert_array_equal(load_mnist(tmp_path / "mixed")[0], expected_images)


def test_load_mnist_missing_directory_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="lacks train-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()  # half a test set is a broken download, not "no test set"
    with pytest.raises(FileNotFoundError, match="lacks t10k-images-idx3-ubyte"):
        mnist_count(tmp_path)


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        ("truncated", "train-images-idx3-ubyte", r"3935 bytes, but its header \(5 images of 28x28\) needs 3936"),
        ("truncated-gz", "train-images-idx3-ubyte.gz", "not a readable gzip file"),
        ("not-gz", "t10k-labels-idx1-ubyte.gz", "not a readable gzip file"),
        ("header-only", "train-labels-idx1-ubyte", "shorter than the 8-byte header of idx labels"),
        ("wrong-magic", "train-images-idx3-ubyte", "magic number 0x00000801, expected 0x00000803"),
        ("images-as-labels", "train-labels-idx1-ubyte", "magic number 0x00000803, expected 0x00000801"),
        (
            "count-mismatch",
            "t10k-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte holds 3 images but .*t10k-labels-idx1-ubyte 2 labels",
        ),
        ("extra-bytes", "t10k-labels-idx1-ubyte", r"12 bytes, but its header \(3 labels\) needs 11"),
        ("not-28x28", "train-images-idx3-ubyte", "images of 32x24 pixels, MNIST's are 28x28"),
    ],
)
def test_load_mnist_damaged_file(tmp_path, damage, file, message):
    write_mnist(tmp_path, gz=file.endswith(".gz"))
    path = tmp_path / file
    rng = np.random.default_rng(0)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1])
    elif damage == "truncated-gz":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "not-gz":
        write_idx(path.with_suffix(""), rng.integers(0, 10, 3, dtype=np.uint8))
        path.write_bytes(path.with_suffix("").read_bytes())
        path.with_suffix("").unlink()
    elif damage == "header-only":
        path.write_bytes(path.read_bytes()[:6])
    elif damage == "wrong-magic":
        write_idx(path, rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), magic=0x00000801)
    elif damage == "images-as-labels":
        write_idx(path, rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    elif damage == "count-mismatch":
        write_idx(path, rng.integers(0, 10, 2, dtype=np.uint8))
    elif damage == "extra-bytes":
        path.write_bytes(path.read_bytes() + b"\0")
    elif damage == "not-28x28":
        write_idx(path, rng.integers(0, 256, (5, 32, 24), dtype=np.uint8))
    with pytest.raises(ValueError, match=message) as raised:
        load_mnist(tmp_path)
    assert str(path) in str(raised.value)


def write_image_folder(directory, wide: bool = True) -> dict[str, np.ndarray]:
    """Fabricate an image folder: classes cat and dog holding PNG, JPEG and WebP files of 32x32 (a grey one, an
    RGBA one, a corrupt one; with ``wide`` a 32x96 one whose centre third is blue between red margins), plus
    files the loader must ignore. Returns the pixels written, by path relative to ``directory``."""
    photos = synthetic(4, (32, 32, 3), seed=7)[0]
    wide_image = np.zeros((32, 96, 3), np.uint8)
    wide_image[:, :16, 0] = wide_image[:, 80:, 0] = 255  # red margins, outside what a center crop to a square needs
    wide_image[:, 16:80, 2] = 255
    written = {
        "cat/b_grey.png": synthetic(1, (32, 32), seed=8)[0][0],
        "cat/d_photo.jpg": photos[0],
        "cat/more/e_photo.webp": photos[1],
        "dog/f_alpha.PNG": np.dstack([photos[2], np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)]),
        "dog/g_photo.jpeg": photos[3],
        "stray.png": photos[0],  # outside the class sub-folders
        ".thumbs/x.png": photos[0],  # a hidden class
        "dog/.h_hidden.png": photos[0],
    }
    if wide:
        written["cat/a_wide.png"] = wide_image
    for name, pixels in written.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(directory / name, quality=90)
    (directory / "cat/c_broken.jpg").write_bytes(b"not an image at all")
    (directory / "dog/notes.txt").write_text("not an image either")
    return written


FOLDER_ORDER = [
    "cat/b_grey.png",
    "cat/c_broken.jpg",
    "cat/d_photo.jpg",
    "cat/more/e_photo.webp",
    "dog/f_alpha.PNG",
    "dog/g_photo.jpeg",
]  # load order without the wide image, which comes first


def test_folder_files_are_class_by_class_sorted_and_ignore_the_rest(tmp_path):
    write_image_folder(tmp_path)
    classes, files = folder_files(tmp_path)
    assert classes == ["cat", "dog"]
    assert [(path.relative_to(tmp_path).as_posix(), label) for path, label in files] == [
        ("cat/a_wide.png", 0),
        ("cat/b_grey.png", 0),
        ("cat/c_broken.jpg", 0),
        ("cat/d_photo.jpg", 0),
        ("cat/more/e_photo.webp", 0),
        ("dog/f_alpha.PNG", 1),
        ("dog/g_photo.jpeg", 1),
    ]


def test_load_folder_converts_resizes_center_crops_and_skips_the_corrupt_file(tmp_path):
    write_image_folder(tmp_path)
    folder = load_folder(tmp_path, (16, 16, 3))
    assert (
        folder.images.shape == (6, 16, 16, 3) and folder.images.dtype == np.uint8 and folder.images.flags.c_contiguous
    )
    assert folder.labels.tolist() == [0, 0, 0, 0, 1, 1] and folder.labels.dtype == np.int64
    assert folder.classes == ["cat", "dog"]
    assert [(path.relative_to(tmp_path).as_posix(), bool(reason)) for path, reason in folder.skipped] == [
        ("cat/c_broken.jpg", True)
    ]
    wide = folder.images[0].astype(int)  # scaled to 16 high, its middle 16 columns kept: blue, no red margin
    assert wide[..., 0].max() <= 1 and wide[..., 1].max() <= 1 and wide[..., 2].min() >= 254
    grey = folder.images[1]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])


def test_load_folder_keeps_the_pixels_of_images_already_at_the_shape(tmp_path):
    written = write_image_folder(tmp_path, wide=False)
    folder = load_folder(tmp_path, (32, 32, 3))
    assert folder.images.shape == (5, 32, 32, 3)
    expected = [
        np.repeat(written["cat/b_grey.png"][..., None], 3, axis=2),  # grey converted to RGB
        *(
            np.asarray(Image.open(tmp_path / name).convert("RGB"))
            for name in ("cat/d_photo.jpg", "cat/more/e_photo.webp")
        ),
        written["dog/f_alpha.PNG"][..., :3],  # the alpha dropped
        np.asarray(Image.open(tmp_path / "dog/g_photo.jpeg")),
    ]
    np.testing.assert_array_equal(folder.images, np.stack(expected))


def test_load_folder_without_a_shape_takes_the_shared_size_and_the_most_channels(tmp_path):
    write_image_folder(tmp_path, wide=False)
    assert folder_shape(folder_files(tmp_path)[1]) == (32, 32, 4)  # the RGBA image: everything RGBA
    folder = load_folder(tmp_path)
    assert folder.images.shape == (5, 32, 32, 4) and (folder.images[0, ..., 3] == 255).all()
    (tmp_path / "dog/f_alpha.PNG").unlink()
    assert load_folder(tmp_path).images.shape == (4, 32, 32, 3)  # the grey image in an RGB set is converted
    assert load_folder(tmp_path, limit=1).images.shape == (1, 32, 32)  # only the grey image is read


def test_load_folder_without_a_shape_refuses_mixed_sizes(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(MixedSizesError, match=r"a_wide.png is 32x96, .*b_grey.png is 32x32"):
        load_folder(tmp_path)


def test_load_folder_limit_reads_the_first_readable_images_in_order(tmp_path):
    write_image_folder(tmp_path, wide=False)
    calls = []
    folder = load_folder(tmp_path, (8, 8, 3), limit=2, progress=lambda *call: calls.append(call))
    assert len(folder.images) == 2 and calls == [(1, 2), (2, 2)]
    assert [path.name for path, _reason in folder.skipped] == ["c_broken.jpg"]  # passed over, the next one taken
    np.testing.assert_array_equal(folder.images, load_folder(tmp_path, (8, 8, 3)).images[:2])
    assert load_folder(tmp_path, (8, 8, 3), limit=1).skipped == []  # the corrupt file is never reached
    assert len(load_folder(tmp_path, (8, 8, 3), limit=6).images) == 5  # fewer readable images than asked


def test_load_folder_skips_a_truncated_file_whose_header_reads(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.fromarray(synthetic(1, (8, 8, 3))[0][0]).save(tmp_path / "cls/a.png")
    Image.fromarray(synthetic(1, (64, 64, 3))[0][0]).save(tmp_path / "cls/b.png")
    (tmp_path / "cls/b.png").write_bytes((tmp_path / "cls/b.png").read_bytes()[:200])
    with pytest.raises(MixedSizesError):
        folder_shape(folder_files(tmp_path)[1])  # its header still says 64x64
    folder = load_folder(tmp_path, (8, 8, 3))
    assert len(folder.images) == 1 and folder.skipped[0][0].name == "b.png" and "truncated" in folder.skipped[0][1]
    (tmp_path / "cls/a.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"none of the images is readable \(1 files, e\.g\. .*a\.png\)"):
        folder_shape(folder_files(tmp_path)[1][:1])


@pytest.mark.parametrize("name", ["x.bmp", "x.tif", "x.TIFF", "x.gif", "x.JPG"])
def test_load_folder_reads_every_image_extension(tmp_path, name):
    (tmp_path / "cls").mkdir()
    pixels = synthetic(1, (8, 8, 3))[0][0]
    Image.fromarray(pixels).save(tmp_path / "cls" / name)
    folder = load_folder(tmp_path)
    assert folder.images.shape == (1, 8, 8, 3) and folder.classes == ["cls"]
    if name.lower().endswith((".bmp", ".tif", ".tiff")):
        np.testing.assert_array_equal(folder.images[0], pixels)


def test_load_folder_refuses_a_folder_without_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"no images in {tmp_path}: expected one sub-folder per class"):
        load_folder(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "loose.png")  # not in a class sub-folder
    (tmp_path / "empty-class").mkdir()
    (tmp_path / "empty-class" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images in"):
        load_folder(tmp_path)


@pytest.mark.parametrize("shape", [(16, 16, 2), (16, 16, 1), (3, 16, 16), (16,), (2, 16, 16, 3)])
def test_folder_mode_refuses_other_shapes(shape):
    assert [folder_mode(ok) for ok in ((16, 16), (16, 16, 3), (16, 16, 4))] == ["L", "RGB", "RGBA"]
    with pytest.raises(ValueError, match="HxW \\(grey\\), HxWx3 \\(RGB\\) or HxWx4 \\(RGBA\\)"):
        folder_mode(shape)

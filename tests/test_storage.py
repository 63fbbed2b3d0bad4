"""Conformance tests every storage method must pass: subclass StoreTests and set ``method``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import storage_impls
from storage_impls import CorruptStoreError, ImageNotFoundError, MissingStoreError, open_store
from storage_impls.core.codecs import Png, get_codec
from storage_impls.datasets import synthetic

SHAPES = [(32, 32, 3), (8, 8), (8, 8, 1), (8, 8, 4), (256, 256, 3)]
ROUND_TRIP = [
    (shape, count) for shape in SHAPES for count in (1, 10, 1000) if not (shape == (256, 256, 3) and count == 1000)
]


def make_batch(count: int, shape=(32, 32, 3), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images plus labels spanning all of int64, so a narrowing label type cannot pass."""
    images, _ = synthetic(count, shape, seed=seed)
    labels = np.random.default_rng(seed).integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, count, dtype=np.int64)
    labels[0] = np.iinfo(np.int64).max
    return images, labels


LAYOUTS = [
    (np.uint16, (8, 8, 3)),
    (np.uint16, (8, 8)),
    (np.uint16, (8, 8, 4)),
    (np.int16, (8, 8)),
    (np.float32, (3, 16, 16)),
    (np.float64, (4, 4, 2)),
    (np.uint8, (8, 8, 13)),
    (np.float16, (8, 8)),
    (np.int8, (4, 4)),
    (np.uint32, (4, 4)),
    (np.int64, (4, 4, 1)),
]


def random_layout(count: int, dtype, shape) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images of random bytes viewed as ``dtype`` (every bit pattern: NaNs with payloads included)."""
    nbytes = count * int(np.prod(shape)) * np.dtype(dtype).itemsize
    images = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape(count, *shape)
    return images, np.arange(count, dtype=np.int64) * 7 - 3


def assert_bits_equal(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.dtype == expected.dtype and found.shape == expected.shape
    assert found.tobytes() == expected.tobytes()


def listing(directory: Path) -> dict[str, int]:
    """Every file below ``directory`` with its size, to show that a refused call wrote nothing."""
    return {str(path.relative_to(directory)): path.stat().st_size for path in directory.rglob("*") if path.is_file()}


class StoreTests:
    """The behaviour shared by all methods; backends add ``corrupt`` and ``fail_store_many`` hooks."""

    method: str

    @pytest.fixture
    def directory(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    @pytest.fixture
    def store(self, directory: Path):
        with open_store(self.method, directory) as store:
            yield store

    @pytest.fixture
    def filled(self, store):
        images, labels = make_batch(10)
        store.store_many(images, labels)
        return store, images, labels

    def corrupt(self, directory: Path) -> type[Exception]:
        """Damage a filled store so that opening or reading it fails; return the expected error."""
        raise NotImplementedError

    def ecosystem_read(self, directory: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """The images and labels, in id order, that the method's ecosystem reader (webdataset, pyarrow, lance,
        zarr-python, h5py, numpy, Pillow on disk's files) reads from a closed store's files; None: no such reader."""
        return None

    # -- round trips ------------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("shape", "count"),
        ROUND_TRIP,
        ids=lambda value: "x".join(map(str, value)) if isinstance(value, tuple) else str(value),
    )
    def test_store_many_read_many_round_trip(self, store, shape, count):
        images, labels = make_batch(count, shape)
        store.store_many(images, labels)
        read_images, read_labels = store.read_many(count)
        assert read_images.dtype == np.uint8 and read_images.shape == images.shape
        np.testing.assert_array_equal(read_images, images)
        assert read_labels.dtype == np.int64
        np.testing.assert_array_equal(read_labels, labels)

    @pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
    def test_store_single_read_single_round_trip(self, store, shape):
        images, labels = make_batch(2, shape)
        store.store_single(images[0], 0, int(labels[0]))
        store.store_single(images[1], 1, np.int64(labels[1]))
        for image_id in (0, 1):
            image, label = store.read_single(image_id)
            assert image.shape == shape and image.dtype == np.uint8
            np.testing.assert_array_equal(image, images[image_id])
            assert label == labels[image_id] and type(label) is int

    def test_read_single_from_many_and_read_many_prefix(self, filled):
        store, images, labels = filled
        image, label = store.read_single(7)
        np.testing.assert_array_equal(image, images[7])
        assert label == labels[7]
        read_images, read_labels = store.read_many(4)
        np.testing.assert_array_equal(read_images, images[:4])
        np.testing.assert_array_equal(read_labels, labels[:4])

    def test_read_many_fills_a_preallocated_array(self, filled):
        store, images, labels = filled
        out = np.zeros_like(images)
        read_images, read_labels = store.read_many(10, out=out)
        assert read_images is out
        np.testing.assert_array_equal(out, images)
        np.testing.assert_array_equal(read_labels, labels)

    def test_non_contiguous_input_round_trips(self, store):
        images, labels = make_batch(6)
        store.store_many(images[::2], labels[::2])
        np.testing.assert_array_equal(store.read_many(3)[0], images[::2])

    def test_persists_across_close_and_reopen(self, directory, filled):
        store, images, labels = filled
        store.store_single(images[0], 10, 42)
        store.close()
        with open_store(self.method, directory, "r") as reopened:
            assert len(reopened) == 11 and reopened.image_shape == images.shape[1:]
            read_images, read_labels = reopened.read_many(11)
        np.testing.assert_array_equal(read_images[:10], images)
        np.testing.assert_array_equal(read_images[10], images[0])
        np.testing.assert_array_equal(read_labels, [*labels, 42])

    def test_store_many_replaces_the_contents(self, filled):
        store, _, _ = filled
        images, labels = make_batch(3, (16, 16), seed=5)
        store.store_many(images, labels)
        assert len(store) == 3 and store.image_shape == (16, 16)
        np.testing.assert_array_equal(store.read_many(3)[0], images)

    def test_store_single_replaces_an_existing_id(self, filled):
        store, images, labels = filled
        store.store_single(images[9], 2, -1)
        image, label = store.read_single(2)
        np.testing.assert_array_equal(image, images[9])
        assert label == -1 and len(store) == 10
        np.testing.assert_array_equal(store.read_many(10)[1], [*labels[:2], -1, *labels[3:]])

    # -- compact: the files other tools read hold every write -----------------------------------
    def test_compact_puts_single_writes_where_other_tools_read_them(self, directory, filled):
        """After appends and replacements (of a stored image and of an appended one), ``compact()`` by a handle opened
        before them (it catches up first): the store and the ecosystem's reader read exactly the same images and
        labels; a compact by the writing handle then finds nothing left to fold."""
        store, images, labels = filled
        with open_store(self.method, directory) as other:
            for image_id, source, label in ((10, 3, 77), (11, 4, 78), (4, 0, -4), (10, 1, 79)):
                store.store_single(images[source], image_id, label)
            expected, expected_labels = np.concatenate([images, images[[1, 4]]]), np.array([*labels, 79, 78])
            expected[4], expected_labels[4] = images[0], -4
            other.compact()
            assert_bits_equal(other.read_many(12)[0], expected)
        before = listing(directory)
        store.compact()
        assert listing(directory) == before
        store.close()
        with open_store(self.method, directory, "r") as reader:
            read_images, read_labels = reader.read_batch(np.arange(12))
        assert_bits_equal(read_images, expected)
        np.testing.assert_array_equal(read_labels, expected_labels)
        found = self.ecosystem_read(directory)
        if found is None:
            pytest.skip(f"{self.method} has no ecosystem reader here")
        assert_bits_equal(found[0], expected)
        np.testing.assert_array_equal(found[1], expected_labels)

    def test_compact_of_an_empty_store_writes_nothing(self, store, directory):
        before = listing(directory)
        store.compact()
        assert listing(directory) == before and len(store) == 0

    def test_durable_writes_round_trip(self, directory):
        images, labels = make_batch(5)
        with open_store(self.method, directory, durable=True) as store:
            store.store_many(images, labels)
            store.store_single(images[0], 5, 3)
        with open_store(self.method, directory, "r") as store:
            np.testing.assert_array_equal(store.read_many(6)[0], np.concatenate([images, images[:1]]))

    def test_disk_usage_is_positive_and_grows_with_n(self, tmp_path):
        usages = []
        for count in (10, 100, 1000):
            with open_store(self.method, tmp_path / str(count)) as store:
                store.store_many(*make_batch(count))
                usages.append(store.disk_usage())
        assert all(usage.allocated > 0 and usage.apparent > 0 for usage in usages)
        assert usages[0].allocated < usages[1].allocated < usages[2].allocated
        assert usages[0].apparent < usages[1].apparent < usages[2].apparent

    # -- any dtype and band count, where the method holds it ---------------------------------
    @pytest.mark.parametrize(
        ("dtype", "shape"),
        LAYOUTS,
        ids=lambda value: "x".join(map(str, value)) if isinstance(value, tuple) else str(value),
    )
    def test_any_dtype_and_band_count_round_trips_bit_exact_or_is_refused(self, store, directory, dtype, shape):
        """Random bytes viewed as ``dtype`` (floats: every NaN payload, infinities, -0.0): what the method holds
        reads back bit for bit through every read; what it cannot hold is refused, naming the limit, unwritten."""
        images, labels = random_layout(5, dtype, shape)
        limit = store.layout_limit(np.dtype(dtype), shape, replacing=True)
        if limit:
            with pytest.raises(ValueError, match=re.escape(limit)):
                store.store_many(images, labels)
            with pytest.raises(ValueError, match=re.escape(limit)):
                store.store_single(images[0], 0, 1)
            assert listing(directory) == {".writer.lock": 0} and len(store) == 0
            return
        store.store_many(images[:4], labels[:4])
        store.store_single(images[4], 4, int(labels[4]))
        assert (store.image_dtype, store.image_shape) == (np.dtype(dtype), shape)
        read_images, read_labels = store.read_many(5)
        assert_bits_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)
        assert_bits_equal(store.read_batch([4, 0, 2])[0], images[[4, 0, 2]])
        assert_bits_equal(store.read_single(1)[0], images[1])
        with open_store(self.method, directory, "r") as reopened:
            assert (reopened.image_dtype, reopened.image_shape) == (np.dtype(dtype), shape)
            assert_bits_equal(reopened.read_many(5, out=np.empty_like(images))[0], images)

    def test_input_of_the_other_byte_order_is_stored_by_value(self, store):
        images = make_batch(3, (8, 8))[0].astype(np.uint16) * 257
        store.store_many(images.astype(">u2"), np.arange(3))
        assert store.image_dtype == np.dtype("=u2")
        np.testing.assert_array_equal(store.read_many(3)[0], images)

    # -- bad input: a clear error and nothing written ---------------------------------------
    @pytest.mark.parametrize(
        ("call", "error", "message"),
        [
            (lambda s, im, lb: s.store_many(im.astype(np.complex64), lb), TypeError, "numeric dtype"),
            (lambda s, im, lb: s.store_many(im > 9, lb), TypeError, "numeric dtype"),
            (lambda s, im, lb: s.store_many(im.tolist(), lb), TypeError, "numpy.ndarray"),
            (lambda s, im, lb: s.store_many(im[0, 0], lb[:32]), ValueError, "shape"),
            (lambda s, im, lb: s.store_many(im[:0], lb[:0]), ValueError, "empty batch"),
            (lambda s, im, lb: s.store_many(im, lb[:-1]), ValueError, "one per image"),
            (lambda s, im, lb: s.store_many(im, lb.astype(float)), TypeError, "integers"),
            (lambda s, im, lb: s.store_many(im, np.full(len(lb), 2**63, np.uint64)), ValueError, "int64"),
            (lambda s, im, lb: s.store_single(im[0].astype(object), 0, 1), TypeError, "numeric dtype"),
            (lambda s, im, lb: s.store_single(im, 0, 1), ValueError, "shape"),
            (lambda s, im, lb: s.store_single(im[0], 0, 1.5), TypeError, "label must be an integer"),
            (lambda s, im, lb: s.store_single(im[0], 0, True), TypeError, "label must be an integer"),
            (lambda s, im, lb: s.store_single(im[0], 0, 2**63), ValueError, "int64"),
            (lambda s, im, lb: s.store_single(im[0], -1, 1), ValueError, "non-negative"),
            (lambda s, im, lb: s.store_single(im[0], 1.0, 1), TypeError, "image_id"),
            (lambda s, im, lb: s.store_single(im[0], 1, 1), ValueError, "gap"),
        ],
        ids=[
            "complex-dtype",
            "bool-dtype",
            "list",
            "ndim",
            "empty",
            "length-mismatch",
            "float-labels",
            "label-overflow",
            "single-dtype",
            "single-ndim",
            "float-label",
            "bool-label",
            "label-out-of-range",
            "negative-id",
            "float-id",
            "gap-id",
        ],
    )
    def test_bad_input_on_an_empty_store_raises_and_writes_nothing(self, store, directory, call, error, message):
        images, labels = make_batch(4)
        before = listing(directory)
        with pytest.raises(error, match=message):
            call(store, images, labels)
        assert listing(directory) == before and len(store) == 0

    def test_bad_input_on_a_filled_store_leaves_it_intact(self, filled, directory):
        store, images, labels = filled
        before = listing(directory)
        with pytest.raises(ValueError, match="differs from the store"):
            store.store_single(images[0, :16], 3, 1)
        with pytest.raises(ValueError, match="gap"):
            store.store_single(images[0], 11, 1)
        with pytest.raises(ValueError, match="differs from the store"):
            store.store_single(images[0].astype(np.uint16), 3, 1)
        with pytest.raises(TypeError, match="numeric dtype"):
            store.store_many(images.astype(np.complex128), labels)
        assert listing(directory) == before
        np.testing.assert_array_equal(store.read_many(10)[0], images)

    @pytest.mark.parametrize(
        ("call", "error", "message"),
        [
            (lambda s: s.read_single(10), ImageNotFoundError, "never stored"),
            (lambda s: s.read_single(-1), ValueError, "non-negative"),
            (lambda s: s.read_single("0"), TypeError, "image_id"),
            (lambda s: s.read_many(11), ValueError, "holds 10"),
            (lambda s: s.read_many(0), ValueError, "cannot read 0"),
            (lambda s: s.read_many(2.0), TypeError, "integer"),
            (lambda s: s.read_many(2, out=np.empty((3, 32, 32, 3), np.uint8)), ValueError, "out must be"),
            (lambda s: s.read_many(2, out=np.empty((2, 32, 32, 3), np.int8)), ValueError, "out must be"),
        ],
        ids=["unknown-id", "negative-id", "str-id", "too-many", "zero", "float-count", "out-shape", "out-dtype"],
    )
    def test_bad_reads_raise(self, filled, call, error, message):
        store, _, _ = filled
        with pytest.raises(error, match=message):
            call(store)

    def test_unknown_id_is_a_key_error(self, store):
        with pytest.raises(KeyError, match="never stored"):
            store.read_single(0)

    def test_read_only_store_refuses_writes(self, directory, filled):
        filled[0].close()
        with open_store(self.method, directory, "r") as store:
            with pytest.raises(PermissionError, match="read-only"):
                store.store_single(filled[1][0], 0, 1)
            with pytest.raises(PermissionError, match="read-only"):
                store.compact()

    def test_closed_store_refuses_calls(self, filled):
        store, images, _ = filled
        store.close()
        store.close()
        with pytest.raises(ValueError, match="closed"):
            store.read_many(1)
        with pytest.raises(ValueError, match="closed"):
            store.store_single(images[0], 0, 1)
        with pytest.raises(ValueError, match="closed"):
            store.compact()

    def test_missing_store_cannot_be_opened_for_reading(self, tmp_path):
        with pytest.raises(MissingStoreError, match="no .* store|missing|does not exist"):
            open_store(self.method, tmp_path / "nothing-here", "r")
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError):
            open_store(self.method, tmp_path / "empty", "r")

    def test_corrupt_store_raises_not_crashes(self, directory, filled):
        store, _, _ = filled
        store.close()
        expected = self.corrupt(directory)
        with pytest.raises(expected):
            with open_store(self.method, directory, "r") as reopened:
                reopened.read_many(len(reopened))

    def test_killed_store_many_never_reads_as_complete(self, directory, filled):
        """SIGKILL a process in the middle of store_many: the store reads back as before or after, never a mix."""
        store, old_images, old_labels = filled
        store.close()
        new_images, new_labels = make_batch(3000, seed=9)
        child = textwrap.dedent(f"""
            import sys
            from storage_impls import open_store
            from tests.test_storage import make_batch
            images, labels = make_batch(3000, seed=9)
            store = open_store({self.method!r}, {str(directory)!r})
            print("ready", flush=True)
            store.store_many(images, labels)
            print("done", flush=True)
        """)
        for delay in (0.0, 0.01, 0.05, 0.2):
            process = subprocess.Popen(
                [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
            )
            assert process.stdout.readline() == "ready\n"
            _sleep_then_kill(process, delay)
            with open_store(self.method, directory, "r") as reopened:
                images, labels = reopened.read_many(len(reopened))
            if len(images) == len(old_images):
                np.testing.assert_array_equal(images, old_images)
                np.testing.assert_array_equal(labels, old_labels)
            else:
                np.testing.assert_array_equal(images, new_images)
                np.testing.assert_array_equal(labels, new_labels)


def _sleep_then_kill(process: subprocess.Popen, delay: float) -> None:
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


CODEC_CASES = ["raw", "png", "png-9", "jpeg-90", "jpeg-50", "webp-80", "webp-lossless"]


class CodecTests:
    """For a method taking the ``codec`` option: every codec round-trips (lossy ones to exactly decode(encode(x))),
    is recorded, and never mixes with another in one store."""

    method: str

    def variant(self, spec: str) -> str:
        """This class's method with ``codec=spec`` added to its options."""
        return f"{self.method}{',' if ':' in self.method else ':'}codec={spec}"

    @staticmethod
    def expected(spec: str, images: np.ndarray) -> np.ndarray:
        codec = get_codec(spec)
        out = np.empty_like(images)
        for image, target in zip(images, out):
            codec.decode_into(codec.encode(image), target)
        return out

    @pytest.mark.parametrize("spec", CODEC_CASES)
    @pytest.mark.parametrize("shape", [(16, 16, 3), (16, 16)], ids=["rgb", "grey"])
    def test_every_codec_round_trips_through_every_read(self, directory, spec, shape):
        images, labels = make_batch(6, shape)
        with open_store(self.variant(spec), directory) as store:
            if store.layout_limit(images.dtype, shape, replacing=True):
                pytest.skip(f"{spec} does not hold {shape}")
            store.store_many(images[:5], labels[:5])
            store.store_single(images[5], 5, int(labels[5]))
            assert store.codec_spec == get_codec(spec).spec
        want = self.expected(spec, images)
        if get_codec(spec).lossless:
            np.testing.assert_array_equal(want, images)
        with open_store(self.method, directory, "r") as store:  # no option: the store's codec
            assert store.codec_spec == get_codec(spec).spec
            assert_bits_equal(store.read_many(6)[0], want)
            assert_bits_equal(store.read_batch([5, 0, 3])[0], want[[5, 0, 3]])
            assert_bits_equal(store.read_single(2)[0], want[2])
            np.testing.assert_array_equal(store.read_many(6)[1], labels)

    def test_a_store_keeps_its_codec_for_single_writes_and_store_many_takes_the_option(self, directory):
        images, labels = make_batch(4, (16, 16, 3))
        with open_store(self.variant("jpeg-90"), directory) as store:
            store.store_many(images[:3], labels[:3])
        with open_store(self.variant("png"), directory) as store:
            store.store_single(images[3], 3, 9)  # into the jpeg store: encoded as jpeg
            assert store.codec_spec == "jpeg-90"
            assert_bits_equal(store.read_single(3)[0], self.expected("jpeg-90", images[3:4])[0])
            store.store_many(images, labels)  # replaces the contents: with this handle's option
            assert store.codec_spec == "png"
            assert_bits_equal(store.read_many(4)[0], images)

    @pytest.mark.parametrize(
        ("spec", "shape", "dtype"),
        [
            ("jpeg-90", (8, 8, 4), np.uint8),
            ("jpeg-90", (8, 8), np.uint16),
            ("webp-80", (8, 8), np.uint8),
            ("png", (8, 8, 2), np.uint8),
        ],
    )
    def test_a_codec_that_cannot_hold_the_images_is_refused_before_writing(self, directory, spec, shape, dtype):
        images, labels = random_layout(3, dtype, shape)
        with open_store(self.variant(spec), directory) as store:
            before = listing(directory)
            with pytest.raises(ValueError, match=f"cannot store images .*{spec.split('-')[0].upper()} holds"):
                store.store_many(images, labels)
            assert listing(directory) == before and len(store) == 0

    @pytest.mark.parametrize("spec", ["jpeg-0", "jpeg-101", "gif", "webp", "png-10"])
    def test_unknown_codecs_are_refused_listing_the_codecs(self, directory, spec):
        with pytest.raises(
            ValueError, match=f"codec='{spec}' is not allowed; use raw, png, png-0..png-9, jpeg-1..jpeg-100"
        ):
            open_store(self.variant(spec), directory)
        assert not directory.exists()


class TestDisk(CodecTests, StoreTests):
    method = "disk"

    def corrupt(self, directory):
        generation = directory / (directory / "CURRENT").read_text()
        (generation / "3.png").write_bytes(b"not a png")
        return CorruptStoreError

    def ecosystem_read(self, directory):
        """A listing of the generation ``CURRENT`` names, each ``<id>.png`` opened by Pillow, labels.csv by csv."""
        import csv

        from PIL import Image

        generation = directory / (directory / "CURRENT").read_text()
        with open(generation / "labels.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        assert [int(row["image_id"]) for row in rows] == list(range(len(rows)))
        assert sorted(path.name for path in generation.glob("*.png")) == sorted(
            f"{image_id}.png" for image_id in range(len(rows))
        )
        images = np.stack([np.asarray(Image.open(generation / f"{image_id}.png")) for image_id in range(len(rows))])
        return images, np.array([int(row["label"]) for row in rows], np.int64)

    def test_missing_png_names_the_file(self, directory, filled):
        generation = directory / (directory / "CURRENT").read_text()
        (generation / "4.png").unlink()
        with pytest.raises(MissingStoreError, match="4.png"):
            filled[0].read_many(10)

    @pytest.mark.parametrize(
        "damage, error",
        [
            (lambda data: data[:-1], "fails its checksum"),
            (lambda data: data + b"\0", "fails its checksum"),
            (lambda data: data * 40, "is over 71680 bytes"),
            (lambda data: bytes([data[0] ^ 1]) + data[1:], "fails its checksum"),
        ],
    )
    def test_raw_files_read_into_the_batch_are_checked(self, directory, damage, error):
        """codec=raw reads each file straight into the caller's array: a file of the wrong size or failing its CRC
        still gives the error naming it, and the other images read as stored."""
        images, labels = make_batch(8, shape=(32, 32, 3))
        with open_store("disk:codec=raw", directory) as store:
            store.store_many(images, labels)
        path = directory / (directory / "CURRENT").read_text() / "5.raw"
        path.write_bytes(damage(path.read_bytes()))
        with open_store("disk:codec=raw", directory, "r") as store:
            with pytest.raises(CorruptStoreError, match=f"5.raw.*{error}"):
                store.read_batch([2, 5])
            read, read_labels = store.read_batch([7, 0, 2])
        np.testing.assert_array_equal(read, images[[7, 0, 2]])
        np.testing.assert_array_equal(read_labels, labels[[7, 0, 2]])

    def test_missing_labels_csv_is_a_missing_store(self, directory, filled):
        generation = directory / (directory / "CURRENT").read_text()
        (generation / "labels.csv").unlink()
        with pytest.raises(MissingStoreError, match="labels.csv"):
            open_store("disk", directory, "r")

    def test_garbled_labels_csv_is_corrupt(self, directory, filled):
        generation = directory / (directory / "CURRENT").read_text()
        (generation / "labels.csv").write_text("image_id,label\n0,1\n2,x\n")
        with pytest.raises(CorruptStoreError, match="labels.csv"):
            open_store("disk", directory, "r")

    def test_failed_store_many_keeps_the_old_contents(self, monkeypatch, directory, filled):
        store, images, labels = filled
        calls = iter(range(10**6))
        real_encode = Png.encode

        def failing_encode(codec, image):
            if next(calls) == 5:
                raise OSError("disk full")
            return real_encode(codec, image)

        monkeypatch.setattr(Png, "encode", failing_encode)
        with pytest.raises(OSError, match="disk full"):
            store.store_many(*make_batch(20, seed=3))
        assert (directory / "CURRENT").is_file()
        assert len(list(directory.glob("gen-*"))) == 1
        with open_store("disk", directory, "r") as reopened:
            np.testing.assert_array_equal(reopened.read_many(10)[0], images)


class TestLmdb(CodecTests, StoreTests):
    method = "lmdb"

    def corrupt(self, directory):
        (directory / "data.mdb").write_bytes(os.urandom(20000))
        return CorruptStoreError

    def test_garbage_value_is_corrupt(self, directory, filled):
        import lmdb

        filled[0].close()
        with lmdb.open(str(directory)) as env, env.begin(write=True) as txn:
            txn.put((3).to_bytes(8, "big"), b"junk")
        with open_store("lmdb", directory, "r") as store:
            for read in (lambda: store.read_many(10), lambda: store.read_single(3), lambda: store.read_batch([5, 3])):
                with pytest.raises(CorruptStoreError, match="image 3: a value of 4 bytes"):
                    read()
            np.testing.assert_array_equal(store.read_single(4)[0], filled[1][4])

    def test_map_grows_instead_of_failing(self, directory, monkeypatch):
        import storage_impls.methods.lmdb.env

        monkeypatch.setattr(
            storage_impls.methods.lmdb.env, "MAP_SIZE", 1 << 20
        )  # a small map, as where address space is short
        images, labels = make_batch(20, (128, 128, 3))
        with open_store("lmdb", directory) as store:
            start = store._shared.env.info()["map_size"]
            for image_id in range(20):
                store.store_single(images[image_id], image_id, int(labels[image_id]))
            reader = open_store("lmdb", directory, "r")
            many_images, many_labels = make_batch(200, (128, 128, 3))
            store.store_many(many_images, many_labels)
            assert store._shared.env.info()["map_size"] > start and len(store) == 200
            np.testing.assert_array_equal(store.read_batch([199, 3])[0], many_images[[199, 3]])
            # growing the map ended the reader's snapshot (every read transaction of the process): it says so
            with pytest.raises(MissingStoreError, match="changed since this handle read it"):
                reader.read_many(20)
            reader.close()

    def test_values_are_raw_bytes_not_pickles(self, directory, filled):
        import lmdb

        filled[0].close()
        with lmdb.open(str(directory), readonly=True) as env, env.begin() as txn:
            value = txn.get((0).to_bytes(8, "big"))
        assert value[:2] == b"IM" and value[16:] == filled[1][0].tobytes()

    def test_float32_chips_are_raw_little_endian_bytes_after_a_24_byte_prefix(self, directory, store):
        import lmdb

        images, labels = random_layout(3, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        store.close()
        with lmdb.open(str(directory), readonly=True) as env, env.begin() as txn:
            value = txn.get((2).to_bytes(8, "big"))
        assert value[:2] == b"IM" and value[4:8] == b"<f4\0"
        assert int.from_bytes(value[24:32], "little", signed=True) == labels[2] and value[32:] == images[2].tobytes()


def h5py_read(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` and ``labels`` of a closed hdf5 store's ``images.h5``, as plain h5py reads them."""
    import h5py

    with h5py.File(directory / "images.h5", "r") as file:
        return file["images"][()], file["labels"][()]


class TestHdf5(CodecTests, StoreTests):
    method = "hdf5"
    ecosystem_read = staticmethod(h5py_read)

    def corrupt(self, directory):
        path = directory / "images.h5"
        path.write_bytes(path.read_bytes()[:3000])
        return CorruptStoreError

    def test_label_dataset_is_int64_and_images_native_uint8(self, directory, filled):
        import h5py

        filled[0].close()
        with h5py.File(directory / "images.h5", "r") as file:
            assert file["images"].dtype == np.uint8 and file["labels"].dtype == np.int64
            assert file["images"].chunks is None  # contiguous: read_direct at memcpy speed

    def test_h5py_reads_float32_chips_as_stored(self, directory, store):
        import h5py

        images, labels = random_layout(4, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        store.close()
        with h5py.File(directory / "images.h5", "r") as file:
            assert file["images"].dtype == np.dtype("<f4") and file["images"].shape == (4, 3, 16, 16)
            assert_bits_equal(file["images"][()], images)
            np.testing.assert_array_equal(file["labels"][()], labels)

    def test_store_single_appends_to_the_journal_and_keeps_the_checkpoint(self, directory, filled):
        """store_single never rewrites images.h5 (no 'r+' open, no conversion); every read path overlays the journal."""
        store, images, labels = filled
        before = (directory / "images.h5").stat()
        for image_id in (10, 11, 12, 4):
            store.store_single(images[image_id % 10][::-1].copy(), image_id, 100 + image_id)
        after = (directory / "images.h5").stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        assert (directory / "images.h5.journal").stat().st_size > 4 * images[0].nbytes
        expected = np.concatenate([images, images[:3, ::-1]])
        expected[4] = images[4, ::-1]
        expected_labels = np.array([*labels, 110, 111, 112])
        expected_labels[4] = 104
        with open_store("hdf5", directory, "r") as reader:
            for handle in (store, reader):
                np.testing.assert_array_equal(handle.read_many(13)[0], expected)
                np.testing.assert_array_equal(handle.read_many(13)[1], expected_labels)
                ids = np.array([12, 4, 0, 4, 11, 3])
                batch, batch_labels = handle.read_batch(ids)
                np.testing.assert_array_equal(batch, expected[ids])
                np.testing.assert_array_equal(batch_labels, expected_labels[ids])
                assert handle.read_single(11)[1] == 111 and handle.read_single(9)[1] == labels[9]

    def test_fresh_store_first_write_is_only_a_journal(self, directory, store):
        image = make_batch(1)[0][0]
        store.store_single(image, 0, 5)
        assert sorted(path.name for path in directory.iterdir()) == [".writer.lock", "images.h5.journal"]
        with open_store("hdf5", directory, "r") as reader:
            assert len(reader) == 1 and reader.image_shape == image.shape
            np.testing.assert_array_equal(reader.read_batch([0, 0])[0], [image, image])

    def test_journal_is_folded_into_a_new_checkpoint(self, directory, store, monkeypatch):
        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 5)
        images, labels = make_batch(23, (8, 8, 3))
        tokens = set()
        for image_id in range(23):
            store.store_single(images[image_id], image_id, int(labels[image_id]))
            if (directory / "images.h5").exists():
                tokens.add(store._checkpoint.token)
        assert len(tokens) == 2  # folded after 6 records, then after 7 more (past max(5, N) records)
        assert len(store._journal.entries) == 10
        with open_store("hdf5", directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(23)[0], images)
            np.testing.assert_array_equal(reader.read_many(23)[1], labels)

    def test_file_without_our_datasets_is_corrupt(self, directory):
        import h5py

        directory.mkdir()
        with h5py.File(directory / "images.h5", "w") as file:
            file["something"] = np.zeros(3)
        with pytest.raises(CorruptStoreError, match="not written by storage_impls.hdf5 version"):
            open_store("hdf5", directory, "r")

    # -- encoded images (hdf5:codec=...) ----------------------------------------------------------------
    @pytest.mark.parametrize("spec", ["jpeg-90", "png"])
    def test_h5py_reads_each_encoded_image_as_its_file(self, directory, spec):
        """``encoded[offsets[i]:offsets[i+1]]`` is image i's file: Pillow decodes what h5py returns to what the store
        reads."""
        import io

        import h5py
        from PIL import Image

        images, labels = make_batch(12, (16, 16, 3))
        with open_store(f"hdf5:codec={spec}", directory) as store:
            store.store_many(images, labels)
            read = store.read_many(12)[0]
        with h5py.File(directory / "images.h5", "r") as file:
            assert (file.attrs["codec"], file.attrs["dtype"], tuple(file.attrs["image_shape"])) == (
                spec.encode(),
                b"|u1",
                (16, 16, 3),
            )
            offsets, encoded = file["offsets"][()], file["encoded"]
            assert encoded.dtype == np.uint8 and encoded.chunks is None and offsets.dtype == np.int64
            assert offsets[0] == 0 and offsets[-1] == len(encoded) and len(offsets) == 13 and "images" not in file
            decoded = np.stack(
                [np.asarray(Image.open(io.BytesIO(encoded[offsets[i] : offsets[i + 1]].tobytes()))) for i in range(12)]
            )
            np.testing.assert_array_equal(file["labels"][()], labels)
        np.testing.assert_array_equal(decoded, read)

    def test_a_lossy_image_is_encoded_once_and_folds_copy_its_bytes(self, directory, monkeypatch):
        """A fresh jpeg store's single writes (a journal naming its codec), folded twice into checkpoints: each image
        is encoded once, the checkpoint holds the journal record's bytes, and reads are identical before and after."""
        import json

        import storage_impls.core.journal
        from storage_impls.core.codecs import PillowLossy

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 3)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        encodes = []
        real_encode = PillowLossy.encode
        monkeypatch.setattr(PillowLossy, "encode", lambda codec, image: encodes.append(1) or real_encode(codec, image))
        images, labels = make_batch(9, (16, 16, 3))
        with open_store("hdf5:codec=jpeg-90", directory) as store:
            for image_id in range(4):
                store.store_single(images[image_id], image_id, int(labels[image_id]))
            header = json.loads((directory / "images.h5.journal").read_bytes().split(b"\n")[0])
            assert header["codec"] == "jpeg-90" and not (directory / "images.h5").exists()
            record, before = store._journal.read(2), store.read_single(2)[0]
            tokens = set()
            for image_id in range(4, 9):  # folds 4 records before writing id 4, and 4 before id 8
                store.store_single(images[image_id], image_id, int(labels[image_id]))
                tokens.add(store._checkpoint.token)
                if image_id == 5:
                    record_5, before_5 = store._journal.read(5), store.read_single(5)[0]
            assert len(tokens) == 2 and store._checkpoint.count == 8 and len(encodes) == 9
            assert bytes(store._checkpoint.payloads(np.array([2]))[0][0]) == record
            assert bytes(store._checkpoint.payloads(np.array([5]))[0][0]) == record_5
            assert_bits_equal(store.read_single(2)[0], before)
            assert_bits_equal(store.read_batch([5, 2])[0], np.stack([before_5, before]))
        with open_store("hdf5", directory, "r") as reader:
            assert reader.codec_spec == "jpeg-90"
            assert_bits_equal(reader.read_many(9)[0], CodecTests.expected("jpeg-90", images))
            np.testing.assert_array_equal(reader.read_many(9)[1], labels)

    def test_damaged_encoded_bytes_fail_their_checksum(self, directory):
        import h5py

        images, labels = make_batch(10, (16, 16, 3))
        with open_store("hdf5:codec=jpeg-90", directory, checksum=True) as store:
            store.store_many(images, labels)
        path = directory / "images.h5"
        with h5py.File(path, "r") as file:
            at = file["encoded"].id.get_offset() + int(file["offsets"][5]) + 200
        data = bytearray(path.read_bytes())
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        with open_store("hdf5", directory, "r") as store:
            for read in (lambda: store.read_single(5), lambda: store.read_batch([1, 5]), lambda: store.read_many(10)):
                with pytest.raises(CorruptStoreError, match="images.h5: image 5 fails its checksum"):
                    read()
            assert_bits_equal(store.read_batch([4, 6])[0], CodecTests.expected("jpeg-90", images[[4, 6]]))

    @pytest.mark.parametrize("spec", ["jpeg-90", "png", "webp-80"])
    def test_an_image_cut_short_is_corrupt_without_checksums(self, directory, spec):
        """No checksums: image 5's end offset moved back to half its length (so image 6 starts inside it). The codec
        tells: both raise CorruptStoreError naming their image, never decode to something else; the others read."""
        import h5py

        images, labels = make_batch(10, (16, 16, 3))
        with open_store(f"hdf5:codec={spec}", directory) as store:
            store.store_many(images, labels)
        with h5py.File(directory / "images.h5", "r") as file:
            offsets, at = file["offsets"][()], file["offsets"].id.get_offset()
        with open(directory / "images.h5", "r+b") as file:
            file.seek(at + 6 * 8)
            file.write(int((offsets[5] + offsets[6]) // 2).to_bytes(8, "little"))
        with open_store("hdf5", directory, "r") as store:
            for image_id in (5, 6):
                for read in (lambda: store.read_single(image_id), lambda: store.read_batch([0, image_id])):
                    with pytest.raises(CorruptStoreError, match=f"image {image_id} is not a readable {spec} image"):
                        read()
            with pytest.raises(CorruptStoreError, match=f"image 5 is not a readable {spec} image"):
                store.read_many(10)
            assert_bits_equal(store.read_batch([4, 7, 9])[0], CodecTests.expected(spec, images[[4, 7, 9]]))


def chunk_extents(path: Path, name: str = "images") -> list[tuple[int, int, int]]:
    """(first image, file offset, stored bytes) of each chunk of a chunked dataset, in the order of its images."""
    import h5py

    with h5py.File(path, "r") as file:
        dataset = file[name].id
        chunks = map(dataset.get_chunk_info, range(dataset.get_num_chunks()))
        return sorted((info.chunk_offset[0], info.byte_offset, info.size) for info in chunks)


class TestHdf5Lzf(StoreTests):
    """Raw pixels in lzf-compressed chunks of 16 images (``hdf5:compression=...,chunks=...``), read through h5py."""

    method = "hdf5:compression=lzf,chunks=16"
    ecosystem_read = staticmethod(h5py_read)

    def corrupt(self, directory):
        path = directory / "images.h5"
        path.write_bytes(path.read_bytes()[:3000])
        return CorruptStoreError

    @pytest.mark.parametrize(
        ("spec", "compression", "per_chunk"),
        [
            ("compression=lzf,chunks=16", "lzf", 16),
            ("compression=gzip", "gzip", 21),
            ("chunks=1", None, 1),
            ("compression=gzip,chunks=5000", "gzip", 300),
        ],
    )
    def test_h5py_reads_the_chunked_dataset_as_asked(self, directory, spec, compression, per_chunk):
        """Plain h5py: ``images`` has the compression and chunks asked (compression alone: whole images up to 64 KiB,
        21 of 32x32x3; chunks past the images held: one chunk of them all), and reads as stored."""
        import h5py

        images, labels = make_batch(300)
        with open_store(f"hdf5:{spec}", directory) as store:
            store.store_many(images, labels)
        with h5py.File(directory / "images.h5", "r") as file:
            dataset = file["images"]
            assert (dataset.compression, dataset.chunks) == (compression, (per_chunk, 32, 32, 3))
            assert not dataset.shuffle and not dataset.fletcher32
            assert dataset.compression_opts == (4 if compression == "gzip" else None)  # h5py's default gzip level
            assert_bits_equal(dataset[()], images)
            assert_bits_equal(dataset[[3, 77, 299]], images[[3, 77, 299]])
            np.testing.assert_array_equal(file["labels"][()], labels)
            assert file["labels"].chunks is None

    def test_layout_is_recorded_reused_by_a_plain_open_and_switched_by_store_many(self, directory, monkeypatch):
        """A plain ``hdf5`` handle writes the recorded layout; a store_many with another handle's options writes theirs
        (one option named: the other at its default); store_single and folds keep the store's, whatever the handle
        says."""
        import h5py

        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        images, labels = make_batch(40)

        def layout():
            with h5py.File(directory / "images.h5", "r") as file:
                attrs = {key: file.attrs[key] for key in ("compression", "chunks") if key in file.attrs}
                return file["images"].compression, file["images"].chunks, attrs

        with open_store(self.method, directory) as store:
            store.store_many(images[:20], labels[:20])
        assert layout() == ("lzf", (16, 32, 32, 3), {"compression": b"lzf", "chunks": 16})
        with open_store("hdf5", directory) as store:
            store.store_many(images[:30], labels[:30])
            assert layout() == ("lzf", (16, 32, 32, 3), {"compression": b"lzf", "chunks": 16})
        with open_store("hdf5:compression=gzip,chunks=4", directory) as store:
            for image_id in range(30, 36):  # folds keep the store's layout
                store.store_single(images[image_id], image_id, int(labels[image_id]))
            assert store._checkpoint.count > 30 and layout()[:2] == ("lzf", (16, 32, 32, 3))
            store.store_many(images, labels)
            assert layout() == ("gzip", (4, 32, 32, 3), {"compression": b"gzip", "chunks": 4})
        with open_store("hdf5:chunks=8", directory) as store:
            store.store_many(images, labels)
            assert layout() == (None, (8, 32, 32, 3), {"chunks": 8})
        with open_store("hdf5:compression=none", directory) as store:
            store.store_many(images, labels)  # neither compression nor chunks: contiguous again
            assert layout() == (None, None, {})
            assert store._checkpoint.pixels is not None  # read through the map again
        with open_store("hdf5", directory, "r") as store:
            assert_bits_equal(store.read_many(40)[0], images)

    @pytest.mark.parametrize(
        ("attribute", "value", "message"),
        [
            (
                "chunks",
                np.int64(8),
                r"images are in chunks \(10, 32, 32, 3\) filtered by lzf, but its attributes record "
                r"compression=lzf,chunks=8",
            ),
            ("compression", np.bytes_("gzip"), "filtered by lzf, but its attributes record compression=gzip,chunks=16"),
            ("compression", np.bytes_("zstd"), "'zstd' and chunks 16 are not a layout"),
            ("compression", None, "filtered by lzf, but its attributes record chunks=16"),
            ("compression and chunks", None, "dataset /images is not 30720 contiguous bytes"),
        ],
    )
    def test_recorded_layout_that_is_not_the_datasets_is_corrupt(self, directory, filled, attribute, value, message):
        import h5py

        filled[0].close()
        with h5py.File(directory / "images.h5", "r+") as file:
            if value is None:  # removed
                for name in attribute.split(" and "):
                    del file.attrs[name]
            else:
                file.attrs[attribute] = value
        with pytest.raises(CorruptStoreError, match=message):
            open_store("hdf5", directory, "r")

    def test_a_fresh_stores_first_fold_uses_the_handles_layout(self, directory, monkeypatch):
        import h5py

        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 3)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        images, labels = make_batch(6, (8, 8, 3))
        with open_store("hdf5:compression=gzip,chunks=2", directory) as store:
            for image_id in range(6):
                store.store_single(images[image_id], image_id, int(labels[image_id]))
        with h5py.File(directory / "images.h5", "r") as file:
            assert (file["images"].compression, file["images"].chunks) == ("gzip", (2, 8, 8, 3))
        with open_store("hdf5", directory, "r") as store:
            assert_bits_equal(store.read_many(6)[0], images)

    def test_a_codec_with_compression_or_chunks_is_refused(self, directory):
        """At open when the handle names both; at store_many when the codec is the store's (nothing written, single
        writes go on in the store's codec); a store_many with a codec drops the store's layout (encoded: contiguous)."""
        import h5py

        for spec in ("hdf5:codec=png,compression=gzip", "hdf5:chunks=4,codec=jpeg-90"):
            with pytest.raises(
                ValueError,
                match=r"applies to raw pixels only \(codec=raw\); (png|jpeg-90) images are already compressed",
            ):
                open_store(spec, directory)
            assert not directory.exists()
        open_store("hdf5:codec=raw,compression=lzf", directory).close()  # raw pixels: fine
        open_store("hdf5:codec=png,compression=none", directory).close()  # the default: nothing to refuse
        images, labels = make_batch(5, (16, 16, 3))
        with open_store("hdf5:codec=jpeg-90", directory) as store:
            store.store_many(images[:4], labels[:4])
        before = listing(directory)
        with open_store("hdf5:chunks=4", directory) as store:
            with pytest.raises(ValueError, match="chunks=4 applies to raw pixels only .* jpeg-90 images"):
                store.store_many(images, labels)
            assert listing(directory) == before
            store.store_single(images[4], 4, 4)
            assert store.codec_spec == "jpeg-90" and len(store) == 5
        with open_store(f"{self.method},codec=raw", directory) as store:
            store.store_many(images, labels)
            assert store._checkpoint.chunked is not None
        with open_store("hdf5:codec=png", directory) as store:
            store.store_many(images, labels)
        with h5py.File(directory / "images.h5", "r") as file:
            assert file.attrs["codec"] == b"png" and "compression" not in file.attrs and file["encoded"].chunks is None

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("compression=zstd", "compression='zstd' is not allowed; use none, gzip, lzf"),
            ("compression=gzip-9", "compression='gzip-9' is not allowed; use none, gzip, lzf"),
            ("chunks=0", "chunks='0' is not allowed; use an integer 1..4294967295"),
            ("chunks=-2", "chunks='-2' is not allowed; use an integer 1..4294967295"),
            ("chunks=auto", "chunks='auto' is not allowed; use an integer 1..4294967295"),
            (
                "shuffle=1",
                "unknown option 'shuffle'; hdf5 takes compression (none, gzip, lzf); chunks (an integer "
                "1..4294967295); codec",
            ),
        ],
    )
    def test_bad_values_are_refused_listing_what_is_allowed(self, directory, spec, message):
        with pytest.raises(ValueError, match=re.escape(message)):
            open_store(f"hdf5:{spec}", directory)
        assert not directory.exists()

    def test_options_as_keywords_are_checked_too(self, directory):
        from storage_impls.methods.hdf5.chunked import Layout

        with pytest.raises(ValueError, match=re.escape("chunks=0 is not allowed; use an integer 1..4294967295")):
            open_store("hdf5", directory, chunks=0)
        with pytest.raises(ValueError, match="compression=lzf applies to raw pixels only"):
            open_store("hdf5", directory, compression="lzf", codec="webp-80")
        assert not directory.exists()
        with open_store("hdf5", directory, chunks=3, compression="gzip") as store:
            store.store_many(*make_batch(7))
            assert store._checkpoint.layout == Layout("gzip", 3) and store._checkpoint.chunked.per_chunk == 3

    def test_read_batch_reads_each_chunk_once_and_scatters(self, directory, monkeypatch):
        """Any ids (repeats, any order, runs across chunks, one chunk, sorted): one H5Dread per chunk touched (one for
        a run of consecutive ids), journal records in their places."""
        from storage_impls.methods.hdf5.chunked import ChunkedImages

        images, labels = make_batch(100, (8, 8, 3))
        reads = []
        real_read = ChunkedImages.read
        monkeypatch.setattr(
            ChunkedImages,
            "read",
            lambda self, start, out: reads.append((start, len(out))) or real_read(self, start, out),
        )
        with open_store(self.method, directory) as store:
            store.store_many(images, labels)
            cases = {
                (5, 3, 5, 90, 17, 16, 99, 0, 0): 4,
                (20, 21, 22, 23): 1,
                (15, 16, 17, 18, 40): 3,
                (10, 12, 14): 1,
                tuple(range(100)): 1,
                tuple(range(99, -1, -1)): 1,
                tuple(range(0, 100, 3)): 7,
            }
            for ids, chunk_reads in cases.items():
                reads.clear()
                batch, batch_labels = store.read_batch(list(ids))
                assert len(reads) == chunk_reads, (ids, reads)
                assert_bits_equal(batch, images[list(ids)])
                np.testing.assert_array_equal(batch_labels, labels[list(ids)])
            store.store_single(images[0], 50, 7)
            store.store_single(images[1], 100, 8)
            expected = np.concatenate([images, images[1:2]])
            expected[50] = images[0]
            ids = [100, 50, 49, 51, 100, 3]
            assert_bits_equal(store.read_batch(ids)[0], expected[ids])
            assert store.read_batch(ids)[1].tolist() == [8, 7, labels[49], labels[51], 8, labels[3]]
            assert_bits_equal(store.read_many(101)[0], expected)

    @pytest.mark.parametrize("spec", ["hdf5:chunks=4", "hdf5:compression=lzf,chunks=16"])
    def test_checksums_are_verified_in_chunks(self, directory, spec):
        """checksum=True: a bit flipped in image 6's uncompressed chunk fails its checksum through every read; in an lzf
        chunk, the checksum of an image of the chunk or its decompression fails, never reads as other data."""
        images, labels = make_batch(20, (8, 8, 3))
        with open_store(spec, directory, checksum=True) as store:
            store.store_many(images, labels)
        lzf = "lzf" in spec
        extents = {first: (at, size) for first, at, size in chunk_extents(directory / "images.h5")}
        at, size = extents[0 if lzf else 4]  # the chunk of image 6
        data = bytearray((directory / "images.h5").read_bytes())
        data[at + (size // 2 if lzf else 2 * 192 + 50)] ^= 0x08
        (directory / "images.h5").write_bytes(bytes(data))
        match = "fails its checksum|images [0-9]+..[0-9]+ cannot be read" if lzf else "image 6 fails its checksum"
        with open_store("hdf5", directory, "r") as store:
            reads = [lambda: store.read_many(20), lambda: store.read_batch(np.arange(16)[::-1])]
            if not lzf:
                reads += [lambda: store.read_single(6), lambda: store.read_batch([1, 6])]
            for read in reads:
                with pytest.raises(CorruptStoreError, match=match):
                    read()
            assert_bits_equal(store.read_batch([19, 18])[0], images[[19, 18]])

    def test_a_fold_copies_whole_chunks_a_block_at_a_time(self, directory, monkeypatch):
        """A fold copies the store a block at a time, each of whole chunks (HDF5 need not read back a chunk it wrote in
        part): it reads back right and takes no more room than store_many's file of the same images."""
        import storage_impls.core.journal
        import storage_impls.methods.hdf5.store

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 0)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # fold before every append
        monkeypatch.setattr(
            storage_impls.methods.hdf5.store, "COPY_BLOCK_BYTES", 37 * 192
        )  # 37 images: rounded down to 32
        images, labels = make_batch(300, (8, 8, 3))
        with open_store(self.method, directory) as store:
            store.store_many(images[:299], labels[:299])
            store.store_single(images[299], 299, int(labels[299]))  # folds the journal (empty) first
            store.store_single(images[0], 3, 1)  # folds 299 images: 10 blocks
            folded = (directory / "images.h5").stat().st_size
            expected = images.copy()
            expected[3] = images[0]
            assert_bits_equal(store.read_many(300)[0], expected)
        with open_store(self.method, directory / "fresh") as store:
            store.store_many(images[:300], labels[:300])
        assert folded <= (directory / "fresh" / "images.h5").stat().st_size + 256


class TestHdf5Chunked(StoreTests):
    """One uncompressed chunk per image (``hdf5:chunks=1``)."""

    method = "hdf5:chunks=1"
    corrupt = TestHdf5Lzf.corrupt
    ecosystem_read = staticmethod(h5py_read)


def test_registry_names_the_methods():
    assert storage_impls.METHODS == (
        "disk",
        "lmdb",
        "hdf5",
        "rocksdb",
        "npy-files",
        "npz",
        "npy-memmap",
        "webdataset",
        "parquet",
        "lance",
        "zarr",
    )
    with pytest.raises(
        ValueError, match="unknown storage method 'tiff'; known methods: disk, lmdb, hdf5, rocksdb, npy-files"
    ):
        open_store("tiff", "/nonexistent")


def test_missing_optional_package_names_what_to_install(monkeypatch, tmp_path):
    for module in [name for name in sys.modules if name.startswith("storage_impls.methods.hdf5")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="needs the package 'h5py'.*pip install h5py"):
        open_store("hdf5", tmp_path)


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        open_store("disk", tmp_path, "w")


# -- a store opened by the wrong method ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stores_of_each_method(tmp_path_factory) -> dict[str, Path]:
    """A filled store of every installed method."""
    root = tmp_path_factory.mktemp("methods")
    images, labels = make_batch(3, (8, 8, 3))
    for method in storage_impls.registry.installed_methods():
        with open_store(method, root / method) as store:
            store.store_many(images, labels)
    return {method: root / method for method in storage_impls.registry.installed_methods()}


@pytest.mark.parametrize("mode", ["r", "a"])
@pytest.mark.parametrize(
    ("writer", "opener"),
    [(writer, opener) for writer in storage_impls.METHODS for opener in storage_impls.METHODS if writer != opener],
)
def test_a_store_opened_by_another_method_is_refused_naming_its_method(stores_of_each_method, writer, opener, mode):
    missing = sorted({writer, opener} - stores_of_each_method.keys())
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed here")
    directory = stores_of_each_method[writer]
    before = listing(directory)
    with pytest.raises(
        CorruptStoreError, match=f"holds a {re.escape(writer)} store .*open it with method '{re.escape(writer)}'"
    ):
        open_store(opener, directory, mode)
    assert listing(directory) == before


class TestHdf5Willneed(TestHdf5):
    """Every hdf5 test again with the per-batch prefetch (``advice=willneed``), raw and encoded."""

    method = "hdf5:advice=willneed"

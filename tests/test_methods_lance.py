"""The lance method: conformance, codec and fault tests, plus its own: datasets that pylance reads (raw pixels, or
encoded files any decoder reads), Lance datasets of another schema or damaged, single writes as Lance versions,
compaction (which never re-encodes), and snapshots."""

from __future__ import annotations

import io
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lance", reason="the lance method needs pylance: pip install image-storage-bench[lance]")

import lance  # noqa: E402
import pyarrow as pa  # noqa: E402

import storage_impls.methods.lance.format as lance_format  # noqa: E402
import storage_impls.methods.lance.store as lance_method  # noqa: E402
from storage_impls import CorruptStoreError, MissingStoreError, open_store  # noqa: E402
from storage_impls.core.codecs import PillowLossy  # noqa: E402
from storage_impls.core.records import checksum_of  # noqa: E402
from tests.faults import (  # noqa: E402
    REPO,
    FaultTests,
    check_consistent,
    kill_after,
    labelled_batch,
    leftovers,
    pixels_for,
    run_child,
    spy_fsync,
)
from tests.test_storage import CodecTests, StoreTests, assert_bits_equal, listing, make_batch, random_layout  # noqa: E402


def dataset_folder(directory: Path) -> Path:
    """The Lance dataset the store's metadata names."""
    meta = json.loads((directory / "lance.json").read_text().splitlines()[0])
    return directory / f"images-{meta['token']}.lance"


def pixels(table: pa.Table, dtype, shape) -> np.ndarray:
    """The image column of ``table`` as an array of images, decoded as any Lance user would."""
    return np.frombuffer(table.column("image").combine_chunks().buffers()[1], dtype).reshape(len(table), *shape)


OURS = lance_format.schema(np.dtype(np.uint8), (32, 32, 3), False).metadata  # what a store of 32x32x3 uint8 records


def image_table(images: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None) -> pa.Table:
    """A table of the store's columns, written as another tool would (nullable fields, no metadata)."""
    count = len(images)
    image = pa.FixedSizeBinaryArray.from_buffers(pa.binary(images[0].nbytes), count, [None, pa.py_buffer(images)])
    return pa.table({"id": np.arange(count) if ids is None else ids, "label": labels, "image": image})


class TestLance(CodecTests, StoreTests):
    method = "lance"

    def corrupt(self, directory):
        path = next((dataset_folder(directory) / "data").iterdir())
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return CorruptStoreError

    def ecosystem_read(self, directory):
        dataset = lance.dataset(str(dataset_folder(directory)))
        table = dataset.to_table().sort_by("id")
        meta = dataset.schema.metadata
        dtype, shape = np.dtype(meta[b"storage_impls.dtype"].decode()), tuple(json.loads(meta[b"storage_impls.shape"]))
        assert table.column("id").to_pylist() == list(range(len(table)))
        return pixels(table, dtype, shape), table.column("label").to_numpy()

    # -- interop: pylance reads what the store wrote ------------------------------------------
    def test_pylance_reads_the_same_rows(self, directory, filled):
        store, images, labels = filled
        store.store_single(images[9], 10, 77)  # an append: a new fragment
        store.store_single(images[0], 4, -4)  # a replacement: a deletion and a new fragment
        expected, expected_labels = np.concatenate([images, images[9:]]), np.array([*labels, 77])
        expected[4], expected_labels[4] = images[0], -4
        table = lance.dataset(str(dataset_folder(directory))).to_table().sort_by("id")
        assert table.schema.names == ["id", "label", "image"]
        assert table.column("id").to_pylist() == list(range(11))
        np.testing.assert_array_equal(table.column("label").to_numpy(), expected_labels)
        np.testing.assert_array_equal(pixels(table, np.uint8, (32, 32, 3)), expected)

    def test_float32_chips_decode_from_the_schema_metadata(self, directory, store):
        images, labels = random_layout(4, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        dataset = lance.dataset(str(dataset_folder(directory)))
        meta = dataset.schema.metadata
        dtype, shape = np.dtype(meta[b"storage_impls.dtype"].decode()), tuple(json.loads(meta[b"storage_impls.shape"]))
        assert (dtype, shape) == (np.dtype("<f4"), (3, 16, 16))
        assert dataset.schema.field("image").type == pa.binary(3 * 16 * 16 * 4)
        assert_bits_equal(pixels(dataset.to_table(), dtype, shape), images)
        assert set(meta) == set(OURS) and "codec" not in json.loads(
            (directory / "lance.json").read_text().splitlines()[0]
        )

    # -- codecs: encoded files in a binary column, encoded once --------------------------------
    def test_pylance_reads_encoded_files_any_decoder_reads(self, directory):
        """``lance:codec=jpeg-90``: a plain ``lance.dataset`` reads each image's JPEG file and the codec from the
        schema; Pillow decodes exactly what the store reads; the checksums cover the stored bytes."""
        images, labels = make_batch(12, (16, 16, 3))
        with open_store("lance:codec=jpeg-90", directory, checksum=True) as store:
            store.store_many(images[:10], labels[:10])
            store.store_single(images[10], 10, int(labels[10]))
            store.store_single(images[11], 2, int(labels[11]))
            read, read_labels = store.read_many(11)
        dataset = lance.dataset(str(dataset_folder(directory)))
        assert dataset.schema.field("image").type == pa.binary()
        assert dataset.schema.metadata[b"storage_impls.codec"] == b"jpeg-90"
        table = dataset.to_table().sort_by("id")
        files = [value.as_py() for value in table.column("image")]
        assert all(file[:3] == b"\xff\xd8\xff" for file in files)  # JPEG files, as written
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(file))) for file in files])
        np.testing.assert_array_equal(decoded, read)
        np.testing.assert_array_equal(table.column("label").to_numpy(), read_labels)
        sums = [checksum_of(file, int(label) & (2**64 - 1)) for file, label in zip(files, read_labels.tolist())]
        assert table.column("checksum").to_pylist() == sums

    def test_compaction_copies_encoded_images_never_re_encodes(self, directory, monkeypatch):
        """A lossy image is encoded exactly once: reads before and after compaction are identical, bytes too."""
        monkeypatch.setattr(lance_method, "COMPACT_VERSIONS", 3)
        encodes = []
        real_encode = PillowLossy.encode
        monkeypatch.setattr(
            PillowLossy, "encode", lambda codec, image: (encodes.append(1), real_encode(codec, image))[1]
        )
        images, labels = make_batch(12, (16, 16, 3))
        with open_store("lance:codec=webp-80", directory) as store:
            store.store_many(images[:8], labels[:8])
            for image_id, source in ((8, 8), (1, 9), (4, 10)):  # an append, two replacements: 4 versions
                store.store_single(images[source], image_id, int(labels[source]))
            assert len(encodes) == 11
            folder = dataset_folder(directory)
            before, files = store.read_many(9)[0], set(lance.dataset(str(folder)).to_table()["image"].to_pylist())
            store.store_single(images[11], 9, 0)  # compacts (rewrites every fragment) first
            dataset = lance.dataset(str(folder))
            assert len(encodes) == 12 and len(dataset.versions()) == 2 and len(dataset.get_fragments()) == 2
            after = store.read_many(10)[0]
        assert_bits_equal(after[:9], before)
        assert files <= set(dataset.to_table()["image"].to_pylist())  # the same encoded files, copied
        with open_store("lance", directory, "r") as reader:
            assert_bits_equal(reader.read_batch(np.arange(10)[::-1])[0], after[::-1])

    def test_dataset_of_another_codec_is_corrupt_naming_it(self, directory):
        images, labels = make_batch(4, (16, 16, 3))
        with open_store("lance:codec=jpeg-90", directory) as store:
            store.store_many(images, labels)
        folder = dataset_folder(directory)
        table = lance.dataset(str(folder)).to_table()
        shutil.rmtree(folder)
        metadata = {**table.schema.metadata, b"storage_impls.codec": b"png"}
        lance.write_dataset(table.replace_schema_metadata(metadata), str(folder))
        with pytest.raises(CorruptStoreError, match=f"{folder} is not .* in jpeg-90: .*'storage_impls.codec': 'png'"):
            open_store(self.method, directory, "r")

    def test_bytes_that_do_not_decode_are_corrupt_naming_the_image(self, directory):
        images, labels = make_batch(4, (16, 16, 3))
        with open_store("lance:codec=jpeg-90", directory) as store:
            store.store_many(images, labels)
            expected = store.read_many(4)[0]
        folder = dataset_folder(directory)
        table = lance.dataset(str(folder)).to_table()
        files = table["image"].to_pylist()
        files[2] = files[2][:60]  # a JPEG cut short
        shutil.rmtree(folder)
        lance.write_dataset(table.set_column(2, table.schema.field("image"), pa.array(files, pa.binary())), str(folder))
        with open_store(self.method, directory, "r") as reader:
            for read in (lambda: reader.read_many(4), lambda: reader.read_batch([3, 2]), lambda: reader.read_single(2)):
                with pytest.raises(CorruptStoreError, match=f"{folder}: image 2 is not a readable jpeg-90 image"):
                    read()
            assert_bits_equal(reader.read_batch([3, 1])[0], expected[[3, 1]])

    def test_file_format_is_pinned_and_store_many_writes_one_version(self, directory, filled):
        dataset = lance.dataset(str(dataset_folder(directory)))
        assert dataset.data_storage_version == lance_method.DATA_STORAGE_VERSION
        assert dataset.version == 1 and len(dataset.get_fragments()) == 1

    # -- bad input: CorruptStoreError naming the dataset, nothing written ---------------------
    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (
                lambda images, labels: image_table(images, labels).drop_columns(["image"]),
                r"schema is \(id int64, label int64\)",
            ),
            (lambda images, labels: image_table(images, labels.astype(np.float64)), "label double"),
            (lambda images, labels: image_table(images[:, :16].copy(), labels), r"image fixed_size_binary\[1536\]"),
            (lambda images, labels: image_table(images, labels), "with metadata {}"),  # no dtype and shape recorded
            (
                lambda images, labels: image_table(images, labels).replace_schema_metadata(
                    {**OURS, b"storage_impls.dtype": b"<f4"}
                ),
                "'storage_impls.dtype': '<f4'",
            ),
            (
                lambda images, labels: image_table(images, labels, np.arange(10) * 2).replace_schema_metadata(OURS),
                "ids of version 1 are not 0..9",
            ),
        ],
        ids=["missing-column", "other-label-type", "other-image-size", "no-metadata", "other-dtype", "other-ids"],
    )
    def test_lance_dataset_of_another_schema_is_corrupt_naming_it(self, directory, filled, make, message):
        store, images, labels = filled
        store.close()
        folder = dataset_folder(directory)
        shutil.rmtree(folder)
        lance.write_dataset(make(images, labels), str(folder))
        before = listing(directory)
        with pytest.raises(CorruptStoreError, match=f"{folder}.*{message}"):
            open_store(self.method, directory, "r")
        with open_store(self.method, directory) as writer, pytest.raises(CorruptStoreError, match=message):
            writer.read_many(1)
        assert listing(directory) == before

    def test_lance_dataset_of_another_tool_is_refused(self, tmp_path):
        directory = tmp_path / "theirs"
        lance.write_dataset(image_table(*make_batch(3, (8, 8, 3))), str(directory))
        before = listing(directory)
        with pytest.raises(CorruptStoreError, match=f"{directory} is a Lance dataset written by another tool"):
            open_store(self.method, directory, "r")
        assert listing(directory) == before
        with pytest.raises(CorruptStoreError, match="another tool"):
            open_store(self.method, directory, "a")
        assert listing(directory).keys() - before.keys() <= {".writer.lock"}  # ImageStore creates the lock first

    def test_truncated_data_file_is_corrupt_naming_the_dataset(self, directory, filled):
        filled[0].close()
        folder = dataset_folder(directory)
        path = next((folder / "data").iterdir())
        path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(CorruptStoreError, match=f"{folder}: Lance cannot read it"):
            with open_store(self.method, directory, "r") as store:
                store.read_batch([3, 1])

    def test_damaged_metadata_is_corrupt_and_store_many_repairs_it(self, directory, filled):
        store, images, labels = filled
        store.close()
        path = directory / "lance.json"
        path.write_bytes(path.read_bytes().replace(b'"checksum":false', b'"checksum":true'))
        with pytest.raises(CorruptStoreError, match="lance.json.*fails its checksum"):
            open_store(self.method, directory, "r")
        with open_store(self.method, directory) as writer:
            with pytest.raises(CorruptStoreError, match="store_many replaces"):
                writer.read_many(1)
            writer.store_many(images[:3], labels[:3])
        with open_store(self.method, directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(3)[0], images[:3])
        assert len(list(directory.glob("images-*.lance"))) == 1

    # -- single writes are Lance versions; compaction -------------------------------------------
    def test_each_single_write_commits_one_lance_version(self, directory, filled):
        store, images, _ = filled
        folder = dataset_folder(directory)
        store.store_single(images[1], 10, 5)  # append
        store.store_single(images[2], 3, 6)  # replace
        dataset = lance.dataset(str(folder))
        assert dataset.version == 3 and dataset_folder(directory) == folder
        operations = [type(dataset.read_transaction(version).operation).__name__ for version in (2, 3)]
        assert operations == ["Append", "Update"]
        fragments = dataset.get_fragments()
        assert [fragment.metadata.physical_rows for fragment in fragments] == [10, 1, 1]
        assert fragments[0].metadata.deletion_file.num_deleted_rows == 1
        with open_store(self.method, directory, "r") as reader:
            assert reader.read_single(3)[1] == 6 and len(reader) == 11
            np.testing.assert_array_equal(reader.read_batch([10, 3, 0])[0], images[[1, 2, 0]])

    def test_versions_are_compacted_and_cleaned_past_the_threshold(self, directory, store, monkeypatch):
        monkeypatch.setattr(lance_method, "COMPACT_VERSIONS", 5)
        images, labels = make_batch(40, (8, 8, 3))
        store.store_many(images[:10], labels[:10])
        expected, expected_labels = images[:10].copy(), labels[:10].copy()
        rng = np.random.default_rng(0)
        for step in range(30):
            image_id = 10 + step // 2 if step % 2 == 0 else int(rng.integers(0, 10 + step // 2))
            store.store_single(images[10 + step], image_id, int(labels[10 + step]))
            if image_id == len(expected):
                expected = np.concatenate([expected, images[10 + step : 11 + step]])
                expected_labels = np.append(expected_labels, 0)
            expected[image_id], expected_labels[image_id] = images[10 + step], labels[10 + step]
            folder = dataset_folder(directory)
            assert len(list((folder / "_versions").glob("*.manifest"))) <= 6
        dataset = lance.dataset(str(folder))
        fragments, data_files = len(dataset.get_fragments()), len(list((folder / "data").iterdir()))
        assert fragments <= 6 and data_files <= fragments + 5  # files of the versions since the last cleanup stay
        with open_store(self.method, directory, "r") as reader:
            assert len(reader) == 25
            np.testing.assert_array_equal(reader.read_many(25)[0], expected)
            np.testing.assert_array_equal(reader.read_many(25)[1], expected_labels)
            np.testing.assert_array_equal(reader.read_batch(np.arange(25)[::-1])[0], expected[::-1])

    def test_reads_span_take_blocks(self, directory, filled, monkeypatch):
        store, images, labels = filled
        monkeypatch.setattr(lance_format, "TAKE_BLOCK_BYTES", 3 * images[0].nbytes)
        store.store_single(images[0], 5, 1)
        expected = images.copy()
        expected[5] = images[0]
        np.testing.assert_array_equal(store.read_many(10)[0], expected)
        ids = np.array([9, 5, 5, 0, 3, 8, 1])
        np.testing.assert_array_equal(store.read_batch(ids)[0], expected[ids])

    def test_read_many_scans_rows_that_hold_their_ids_in_order(self, directory, filled, monkeypatch):
        """A scan is faster than a take of every row: read_many scans while rows 0..n-1 hold ids 0..n-1."""
        store, images, labels = filled
        takes = []
        real_take = lance_format.Snapshot.take
        monkeypatch.setattr(
            lance_format.Snapshot,
            "take",
            lambda self, ids, *rest: (takes.append(len(ids)), real_take(self, ids, *rest)),
        )
        store.store_single(images[1], 10, 1)  # an append keeps the order
        np.testing.assert_array_equal(store.read_many(11)[0], np.concatenate([images, images[1:2]]))
        store.store_single(images[0], 5, 0)  # a replacement moves id 5 to the end
        np.testing.assert_array_equal(store.read_many(5)[0], images[:5])
        assert takes == []
        expected = np.concatenate([images, images[1:2]])
        expected[5] = images[0]
        with open_store(self.method, directory, "r") as reader:
            for handle in (store, reader):
                read_images, read_labels = handle.read_many(11)
                np.testing.assert_array_equal(read_images, expected)
                np.testing.assert_array_equal(read_labels, [*labels[:5], 0, *labels[6:], 1])
        assert takes == [11, 11]

    def test_killed_compaction_leaves_a_readable_store(self, directory):
        """Writers killed at random points while every second write compacts: the store reads back whole."""
        with open_store(self.method, directory) as store:
            store.store_many(*labelled_batch(range(20)))
        code = f"""
import sys
import numpy as np
import storage_impls.methods.lance.store
from storage_impls import open_store
from tests.faults import pixels_for
storage_impls.methods.lance.store.COMPACT_VERSIONS = 2
rng = np.random.default_rng(int(sys.argv[1]))
store = open_store("lance", {str(directory)!r})
print("ready", flush=True)
while True:
    label = int(rng.integers(0, 2**40))
    store.store_single(pixels_for(label), int(rng.integers(0, len(store) + 1)), label)
"""
        for kill in range(6):
            child = subprocess.Popen(
                [sys.executable, "-c", code, str(kill)], cwd=REPO, stdout=subprocess.PIPE, text=True
            )
            assert child.stdout.readline() == "ready\n"
            kill_after(child, random.Random(kill).random() * 0.3)
            with open_store(self.method, directory, "r") as store:
                assert check_consistent(store) >= 20
        with open_store(self.method, directory) as store:
            store.store_single(pixels_for(1), 0, 1)
            check_consistent(store)
        assert leftovers(directory) == []

    # -- snapshots ----------------------------------------------------------------------------
    def test_reader_keeps_its_version_across_single_writes(self, directory, filled):
        store, images, labels = filled
        reader = open_store(self.method, directory, "r")
        store.store_single(images[9], 0, 99)
        store.store_single(images[9], 10, 98)
        assert len(reader) == 10 and reader.read_single(0)[1] == labels[0]
        np.testing.assert_array_equal(reader.read_batch([0, 9])[0], images[[0, 9]])
        reader.close()

    def test_reader_of_a_compacted_or_replaced_store_is_told_to_open_again(self, directory, filled, monkeypatch):
        store, images, labels = filled
        monkeypatch.setattr(lance_method, "COMPACT_VERSIONS", 2)
        reader = open_store(self.method, directory, "r")
        for image_id in (1, 2, 3, 4):  # the fourth write compacts and removes the version the reader holds
            store.store_single(images[0], image_id, 0)
        with pytest.raises(MissingStoreError, match="replaced or compacted since this handle opened it"):
            reader.read_many(10)
        reader.close()
        reader = open_store(self.method, directory, "r")
        store.store_many(images[::-1].copy(), labels[::-1].copy())
        with pytest.raises(MissingStoreError, match="open it again"):
            reader.read_batch([1])
        reader.close()

    def test_write_after_a_commit_by_another_handle_catches_up(self, directory, filled):
        store, images, labels = filled
        with open_store(self.method, directory) as other:
            other.store_single(images[3], 10, 30)
            other.store_single(images[4], 2, 40)
        store.store_single(images[9], 11, 99)  # appends after the other handle's append
        with open_store(self.method, directory, "r") as reader:
            assert len(reader) == 12 and reader.read_many(12)[1].tolist() == [*labels[:2], 40, *labels[3:], 30, 99]


class TestLanceFaults(FaultTests):
    method = "lance"
    snapshot_can_expire = True  # Lance reads files when asked; a compaction's cleanup or store_many removes them


class TestLancePngFaults(FaultTests):
    """Encoded images: a variable-length ``binary`` column of PNG files, checksums over those bytes."""

    method = "lance:codec=png"
    snapshot_can_expire = True


def test_a_process_forked_after_lance_ran_is_refused_not_crashed(tmp_path):
    """Lance crashed (SIGSEGV) or hung in a third of the processes forked after it ran: such a process is refused."""
    directory = str(tmp_path / "store")
    result = run_child(f"""
        import os, warnings
        from storage_impls import open_store
        from tests.faults import check_consistent, labelled_batch
        warnings.simplefilter("ignore")  # lance warns at every fork
        with open_store("lance", {directory!r}) as store:
            store.store_many(*labelled_batch(range(5)))
            reader = open_store("lance", {directory!r}, "r")
            pid = os.fork()
            if pid == 0:
                outcomes = []
                for attempt in (lambda: open_store("lance", {directory!r}, "r"), lambda: reader.read_batch([1]),
                                lambda: store.store_single(labelled_batch([9])[0][0], 0, 9)):
                    try:
                        attempt()
                        outcomes.append("ran")
                    except RuntimeError as error:
                        outcomes.append("refused" if "spawn" in str(error) else str(error))
                print(*outcomes, flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            print(check_consistent(reader), check_consistent(store))
    """)
    assert result.returncode == 0 and result.stdout.split() == ["refused"] * 3 + ["5", "5"], result.stderr
    assert lance_method.LanceStore.fork_safe is False  # what a loader asks before it forks workers


def _read_in_a_spawned_process(directory: str) -> list[int]:
    with open_store("lance", directory, "r") as store:
        return store.read_batch([4, 0])[1].tolist()


def test_a_spawned_process_opens_and_reads(tmp_path):
    with open_store("lance", tmp_path / "store") as store:
        store.store_many(*labelled_batch(range(5)))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            assert pool.apply(_read_in_a_spawned_process, (str(tmp_path / "store"),)) == [4, 0]


def test_durable_writes_fsync(tmp_path, monkeypatch):
    """durable=True fsyncs the files it writes and the folders it renames into; the default fsyncs nothing."""
    calls = spy_fsync(monkeypatch)
    for durable in (False, True):
        calls.clear()
        with open_store("lance", tmp_path / f"lance-{durable}", durable=durable) as store:
            store.store_many(*labelled_batch(range(3)))
            many = len(calls)
            store.store_single(pixels_for(3), 3, 3)
            store.store_single(pixels_for(4), 1, 4)
        assert bool(many) == durable and (len(calls) > many) == durable

"""The parquet method: conformance and fault tests, plus its own: the file read by pyarrow (and pandas or
polars where installed), the file's layout (schema, row groups, encodings, its own metadata), the zstd
variant, read_batch reading only the row groups it needs, page checksums, and Parquet files this store
did not write (another tool's table, another schema, a missing column, a truncated file)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage_impls.registry import _REGISTRY

pa = pytest.importorskip("pyarrow", reason=f"parquet needs pyarrow: {_REGISTRY['parquet'].install_hint}")
import pyarrow.parquet as pq  # noqa: E402

from storage_impls import CorruptStoreError, open_store  # noqa: E402
from storage_impls.core import checkpointed  # noqa: E402
from storage_impls.methods import parquet  # noqa: E402
from tests.faults import FaultTests, labelled_batch, pixels_for, spy_fsync  # noqa: E402
from tests.test_methods_numpy import NumpyStoreTests, checkpoint  # noqa: E402
from tests.test_storage import CodecTests, listing, make_batch, random_layout  # noqa: E402


def parquet_file(directory: Path) -> Path:
    """The live Parquet file of a parquet store."""
    return checkpoint(directory, "parquet") / parquet.IMAGES


def store_meta(directory: Path) -> dict:
    return json.loads((directory / "parquet.json").read_text().splitlines()[0])


def rewrite(path: Path, table: pa.Table, **options) -> None:
    """Replace ``path`` with ``table`` written by plain ``pq.write_table`` (as another tool would)."""
    path.unlink()
    pq.write_table(table, path, **options)


class TestParquet(CodecTests, NumpyStoreTests):
    """The conformance class and what every checkpointed method does (metadata, journal), then parquet's own."""

    method = "parquet"

    def corrupt(self, directory):
        path = parquet_file(directory)
        path.write_bytes(path.read_bytes()[:-1])
        return CorruptStoreError

    def ecosystem_read(self, directory):
        table = pq.read_table(parquet_file(directory))
        description = json.loads(table.schema.metadata[parquet.KEY])
        assert table["id"].to_pylist() == list(range(table.num_rows))
        pixels = np.frombuffer(table["image"].combine_chunks().buffers()[1], description["dtype"])
        return pixels.reshape(-1, *description["image_shape"]), table["label"].to_numpy()

    # -- read by its own ecosystem --------------------------------------------------------------
    @pytest.mark.parametrize("reader", ["pyarrow", "pandas", "polars"])
    def test_other_readers_read_the_same_rows(self, directory, store, reader):
        images, labels = make_batch(300)
        store.store_many(images, labels)
        path = parquet_file(directory)
        if reader == "pyarrow":
            table = pq.read_table(path)
            ids, found_labels = table["id"].to_numpy(), table["label"].to_numpy()
            pixels = [value.as_py() for value in table["image"]]
        elif reader == "pandas":
            pandas = pytest.importorskip("pandas", reason="pandas is not installed: pip install pandas")
            frame = pandas.read_parquet(path)
            ids, found_labels, pixels = frame["id"].to_numpy(), frame["label"].to_numpy(), list(frame["image"])
        else:
            polars = pytest.importorskip("polars", reason="polars is not installed: pip install polars")
            frame = polars.read_parquet(path)
            ids, found_labels, pixels = frame["id"].to_numpy(), frame["label"].to_numpy(), frame["image"].to_list()
        np.testing.assert_array_equal(ids, np.arange(300))
        np.testing.assert_array_equal(found_labels, labels)
        assert [np.frombuffer(value, np.uint8).reshape(32, 32, 3).tobytes() for value in pixels] == [
            image.tobytes() for image in images
        ]

    def test_the_file_describes_its_images(self, directory, store):
        """dtype and shape are in the file's key-value metadata as in the store's: float32 chips read back from the file
        alone."""
        images, labels = random_layout(70, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        table = pq.read_table(parquet_file(directory))
        description = json.loads(table.schema.metadata[parquet.KEY])
        meta = store_meta(directory)
        assert description == {
            "format": "storage_impls.parquet",
            "dtype": "<f4",
            "image_shape": [3, 16, 16],
            "count": 70,
            "row_group_images": 32,
        }
        assert {key: meta[key] for key in description} == description
        pixels = np.frombuffer(table["image"].combine_chunks().buffers()[1], description["dtype"])
        assert pixels.reshape(-1, *description["image_shape"]).tobytes() == images.tobytes()

    def test_single_writes_reach_the_file_when_the_journal_is_folded(self, directory, filled, monkeypatch):
        """Other readers see the checkpoint: a store_single waits in the journal until the next fold (or store_many)."""
        import storage_impls.core.journal

        store, images, labels = filled
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        store.store_single(images[0], 10, 5)
        assert pq.read_table(parquet_file(directory)).num_rows == 10
        for image_id in (11, 12, 13):
            store.store_single(images[image_id - 10], image_id, image_id)
        table = pq.read_table(parquet_file(directory))
        assert table.num_rows >= 13 and table["label"].to_pylist()[10:13] == [5, 11, 12]

    # -- the file's layout ----------------------------------------------------------------------
    def test_schema_encodings_and_row_groups(self, directory, store):
        images, labels = make_batch(200)
        store.store_many(images, labels)
        file = pq.ParquetFile(parquet_file(directory))
        assert file.schema_arrow.remove_metadata().equals(
            pa.schema(
                [
                    pa.field("id", pa.int64(), nullable=False),
                    pa.field("label", pa.int64(), nullable=False),
                    pa.field("image", pa.binary(32 * 32 * 3), nullable=False),
                ]
            )
        )
        metadata = file.metadata
        assert [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)] == [32] * 6 + [8]
        for index in range(metadata.num_row_groups):
            group = metadata.row_group(index)
            assert group.sorting_columns == (pq.SortingColumn(0),)
            identifiers, image = group.column(0), group.column(2)
            assert image.compression == "UNCOMPRESSED" and not image.has_dictionary_page
            assert "PLAIN" in image.encodings and not {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & set(image.encodings)
            assert not image.is_stats_set  # min/max of images would be two more images per row group
            assert identifiers.statistics.min == 32 * index and identifiers.statistics.max == min(199, 32 * index + 31)

    @pytest.mark.parametrize(
        ("dtype", "shape", "per_group"),
        [
            (np.uint8, (32, 32, 3), 32),
            (np.uint8, (8, 8), 1536),
            (np.float32, (4, 4), 1536),
            (np.uint8, (256, 256, 3), 1),
        ],
    )
    def test_row_groups_hold_row_group_bytes_of_pixels(self, dtype, shape, per_group):
        assert (
            parquet.row_group_images(np.dtype(dtype), shape)
            == per_group
            == max(1, parquet.ROW_GROUP_BYTES // (int(np.prod(shape)) * np.dtype(dtype).itemsize))
        )

    def test_zstd_variant_is_recorded_and_kept(self, directory):
        images, labels = make_batch(100)
        with open_store("parquet:compression=zstd", directory) as store:
            store.store_many(images, labels)
            store.store_single(images[3], 100, 7)
            np.testing.assert_array_equal(store.read_batch([100, 5, 99, 32])[0], images[[3, 5, 99, 32]])
        assert store_meta(directory)["compression"] == "zstd"
        assert pq.ParquetFile(parquet_file(directory)).metadata.row_group(0).column(2).compression == "ZSTD"
        with open_store("parquet", directory) as store:  # no option: the store's compression is kept
            store.store_many(images[:50], labels[:50])
            assert store_meta(directory)["compression"] == "zstd"
        with open_store("parquet", directory, compression="none") as store:
            store.store_many(images, labels)
            np.testing.assert_array_equal(store.read_many(100)[0], images)
        assert pq.ParquetFile(parquet_file(directory)).metadata.row_group(0).column(2).compression == "UNCOMPRESSED"
        with pytest.raises(ValueError, match="compression='lz4' is not allowed; use none, zstd"):
            open_store("parquet:compression=lz4", directory)

    def test_zstd_round_trips_any_dtype_bit_exact(self, directory):
        images, labels = random_layout(150, np.float16, (8, 8))
        with open_store("parquet:compression=zstd", directory) as store:
            store.store_many(images, labels)
            ids = np.array([149, 0, 768 % 150, 77, 77])
            assert store.read_batch(ids)[0].tobytes() == images[ids].tobytes()
            assert store.read_many(150)[0].tobytes() == images.tobytes()

    # -- reads ----------------------------------------------------------------------------------
    def test_read_batch_reads_only_the_row_groups_it_needs_once_each(self, directory, store, monkeypatch):
        images, labels = make_batch(1000)
        store.store_many(images, labels)
        file = store._checkpoint._file
        calls = []
        real = file.read_row_groups
        monkeypatch.setattr(
            file,
            "read_row_groups",
            lambda groups, **options: (calls.append((list(groups), options)), real(groups, **options))[1],
        )
        monkeypatch.setattr(parquet.pa, "OSFile", lambda *args: pytest.fail("a read opened the file again"))
        ids = np.array([999, 5, 70, 6, 999, 640])
        batch, batch_labels = store.read_batch(ids)
        np.testing.assert_array_equal(batch, images[ids])
        np.testing.assert_array_equal(batch_labels, labels[ids])
        assert calls == [([0, 2, 20, 31], {"columns": ["label", "image"], "use_threads": False})]
        calls.clear()
        np.testing.assert_array_equal(store.read_many(130)[0], images[:130])
        assert calls == [([0, 1, 2, 3, 4], {"columns": ["label", "image"], "use_threads": False})]
        assert store._checkpoint._file is file

    def test_the_file_is_read_with_pread_without_pre_buffering(self, directory, filled, monkeypatch):
        """Measured on local disk: pre_buffer's coalesced reads made shuffled batches 1.7-1.9x slower; no memory map."""
        opened = []
        real = pq.ParquetFile
        monkeypatch.setattr(
            parquet.pq,
            "ParquetFile",
            lambda source, **options: (opened.append((source, options)), real(source, **options))[1],
        )
        with open_store(self.method, directory, "r", checksum=True) as reader:  # the store's setting wins: no checksums
            reader.read_batch([3, 1])
        [(source, options)] = opened
        assert type(source) is pa.OSFile and options == {"pre_buffer": False, "page_checksum_verification": False}

    def test_reader_keeps_its_snapshot_across_commits(self, directory, filled):
        """The file stays open: a later commit that removes its folder cannot take a reader's snapshot away."""
        store, images, labels = filled
        with open_store(self.method, directory, "r") as reader:
            store.store_many(images[::-1].copy(), labels[::-1].copy())
            assert not (reader._checkpoint.path).exists()
            np.testing.assert_array_equal(reader.read_many(10)[0], images)
            np.testing.assert_array_equal(reader.read_batch([3, 1])[1], labels[[3, 1]])

    def test_page_checksums_are_written_and_verified(self, directory):
        images, labels = make_batch(200)
        with open_store(self.method, directory, checksum=True) as store:
            store.store_many(images, labels)
        path = parquet_file(directory)
        data = bytearray(path.read_bytes())
        data[data.index(images[130].tobytes()) + 100] ^= 1  # a pixel of image 130, in row group 4
        path.write_bytes(bytes(data))
        with pytest.raises(OSError, match="CRC"):  # pyarrow's own verification finds it too
            pq.ParquetFile(path, page_checksum_verification=True).read_row_group(4)
        with open_store(self.method, directory, "r") as store:
            np.testing.assert_array_equal(store.read_batch([1, 199])[0], images[[1, 199]])
            with pytest.raises(CorruptStoreError, match=f"{path}: row group 4 .images 128..159. cannot be read.*CRC"):
                store.read_batch([1, 130])

    # -- Parquet files this store did not write: CorruptStoreError naming the file, nothing written ----------
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (lambda table: table.cast(pa.schema([field.with_nullable(True) for field in table.schema])), "schema"),
            (lambda table: table.drop_columns(["label"]), "schema"),
            (lambda table: table.append_column("extra", pa.array(np.zeros(len(table), np.int32))), "schema"),
            (
                lambda table: table.set_column(
                    1, pa.field("label", pa.int32(), False), table["label"].cast(pa.int32(), safe=False)
                ),
                "schema",
            ),
            (
                lambda table: table.set_column(
                    2, pa.field("image", pa.binary(), False), table["image"].cast(pa.binary())
                ),
                "schema",
            ),
            (lambda table: table.replace_schema_metadata(None), "no readable image_storage_bench metadata"),
            (lambda table: table.replace_schema_metadata({parquet.KEY: json.dumps({"dtype": "<f4"})}), "describes"),
        ],
        ids=[
            "nullable-columns",
            "missing-column",
            "extra-column",
            "int32-labels",
            "variable-binary",
            "no-description",
            "other-description",
        ],
    )
    def test_a_table_from_another_tool_is_corrupt_and_nothing_is_written(self, directory, filled, change, message):
        store, images, _ = filled
        store.close()
        path = parquet_file(directory)
        rewrite(path, change(pq.read_table(path)))
        self.assert_refused(directory, path, message, images[0])

    def test_an_image_column_of_another_width_is_corrupt(self, directory, filled):
        """The images of another dtype (or shape) than the store records: the column's width differs."""
        store, images, labels = filled
        store.close()
        path = parquet_file(directory)
        table = pq.read_table(path)
        wide = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(2 * images[0].nbytes), 10, [None, pa.py_buffer(images.astype(np.uint16))]
        )
        rewrite(path, table.set_column(2, pa.field("image", wide.type, False), wide))
        self.assert_refused(directory, path, r"image: fixed_size_binary\[6144\]", images[0])

    def test_row_groups_of_another_size_are_corrupt(self, directory, store):
        images, labels = make_batch(200)
        store.store_many(images, labels)
        store.close()
        path = parquet_file(directory)
        rewrite(path, pq.read_table(path), row_group_size=50, compression="none")
        self.assert_refused(directory, path, r"row groups of \[50\], expected 200 in groups of 32", images[0])

    @pytest.mark.parametrize(
        "keep",
        [lambda size: 0, lambda size: 4, lambda size: size // 2, lambda size: size - 8],
        ids=["empty", "magic-only", "half", "footer-cut"],
    )
    def test_a_truncated_file_is_corrupt(self, directory, filled, keep):
        store, images, _ = filled
        store.close()
        path = parquet_file(directory)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
        self.assert_refused(directory, path, "not a readable Parquet file", images[0])

    def assert_refused(self, directory: Path, path: Path, message: str, image: np.ndarray) -> None:
        """Opening for reading raises CorruptStoreError naming ``path``; a writer's reads and store_single too, writing
        nothing."""
        before = listing(directory)
        with pytest.raises(CorruptStoreError, match=f"{path}.*{message}"):
            open_store(self.method, directory, "r")
        with open_store(self.method, directory) as writer:
            with pytest.raises(CorruptStoreError, match=str(path)):
                writer.read_batch([0])
            with pytest.raises(CorruptStoreError, match=str(path)):
                writer.store_single(image, 0, 1)
        assert listing(directory) == before


class TestParquetFaults(FaultTests):
    method = "parquet"


class TestParquetPngFaults(FaultTests):
    """Encoded images: a variable-length ``binary`` column, journal records of PNG bytes."""

    method = "parquet:codec=png"


def test_pyarrow_reads_encoded_images_as_bytes_any_decoder_reads(tmp_path):
    """``parquet:codec=jpeg-90``: the ``image`` column holds each image's JPEG file; Pillow decodes what the store
    reads."""
    images, labels = make_batch(40, (16, 16, 3))
    with open_store("parquet:codec=jpeg-90", tmp_path / "s") as store:
        store.store_many(images, labels)
        read = store.read_many(40)[0]
    table = pq.read_table(parquet_file(tmp_path / "s"))
    assert table.schema.field("image").type == pa.binary()
    assert json.loads(table.schema.metadata[parquet.KEY])["codec"] == "jpeg-90"
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(value.as_py()))) for value in table["image"]])
    np.testing.assert_array_equal(decoded, read)
    np.testing.assert_array_equal(table["label"].to_numpy(), labels)


def test_durable_writes_fsync(tmp_path, monkeypatch):
    """durable=True fsyncs the file it writes and the folders it renames into; the default fsyncs nothing."""
    calls = spy_fsync(monkeypatch)
    for durable in (False, True):
        calls.clear()
        with open_store("parquet", tmp_path / f"store-{durable}", durable=durable) as store:
            store.store_many(*labelled_batch(range(3)))
            store.store_single(pixels_for(3), 3, 3)
        assert bool(calls) == durable


def test_encoded_reads_hold_a_block_of_payloads_at_a_time(tmp_path, monkeypatch):
    """read_many of an encoded store asks for payloads a block at a time (checkpointed.COPY_BLOCK_BYTES of raw
    images)."""
    images, labels = make_batch(50, (8, 8, 3))
    with open_store("parquet:codec=png", tmp_path / "s") as store:
        store.store_many(images, labels)
        monkeypatch.setattr(checkpointed, "COPY_BLOCK_BYTES", 8 * 8 * 3 * 7)
        asked = []
        real = type(store._checkpoint).payloads
        monkeypatch.setattr(
            type(store._checkpoint), "payloads", lambda self, ids: (asked.append(len(ids)), real(self, ids))[1]
        )
        read, read_labels = store.read_many(50)
    np.testing.assert_array_equal(read, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert asked == [7] * 7 + [1]

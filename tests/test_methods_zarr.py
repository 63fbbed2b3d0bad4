"""The zarr method: conformance, codec and fault tests (with either reader), then its own: zarr-python reads the
same pixels and labels (with a codec: each image's encoded file, which Pillow decodes), nodes from another tool and
damaged or missing files are refused naming the file, and the design choices (whole-shard writes, balanced shards,
every chunk written, the pread reader, snapshots, fork)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="the zarr method needs zarr 3: pip install image-storage-bench[zarr]")

import storage_impls.methods.zarr.format  # noqa: E402
import storage_impls.methods.zarr.store  # noqa: E402
from storage_impls import CorruptStoreError, MissingStoreError, open_store  # noqa: E402
from storage_impls.core.codecs import get_codec  # noqa: E402
from storage_impls.methods.zarr.store import ZarrStore, live_group  # noqa: E402
from tests.faults import FaultTests, labelled_batch, pixels_for, run_child, spy_fsync  # noqa: E402
from tests.test_storage import CodecTests, StoreTests, assert_bits_equal, listing, make_batch, random_layout  # noqa: E402

VARIANTS = [
    f"zarr:compression={compression},reader={reader}"
    for compression in ("none", "blosc", "zstd")
    for reader in ("pread", "zarr")
]


def shard(directory, index=0, ndim=3):
    """The file of shard ``index`` of the live group's images."""
    return live_group(directory).joinpath("images", "c", str(index), *["0"] * ndim)


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 4 images of 8x8x3 uint8 (and label chunks of 4), so that a small store spans several files."""
    monkeypatch.setattr(storage_impls.methods.zarr.format, "SHARD_BYTES", 4 * 8 * 8 * 3)
    monkeypatch.setattr(storage_impls.methods.zarr.format, "LABEL_CHUNK", 4)


class TestZarr(CodecTests, StoreTests):
    method = "zarr"

    def corrupt(self, directory):
        path = shard(directory)
        path.write_bytes(path.read_bytes()[:-1])  # the index at the end no longer matches its CRC-32C
        return CorruptStoreError

    def ecosystem_read(self, directory):
        group = zarr.open_group(live_group(directory), mode="r")
        return group["images"][:], group["labels"][:]

    # -- zarr-python reads what the store wrote ---------------------------------------------------
    @pytest.mark.parametrize("spec", VARIANTS[::2])
    @pytest.mark.parametrize("checksum", [False, True])
    def test_zarr_open_group_reads_the_same_pixels_and_labels(self, tmp_path, spec, checksum):
        images, labels = random_layout(9, np.float32, (3, 16, 16))  # every bit pattern, NaN payloads included
        with open_store(spec, tmp_path, checksum=checksum) as store:
            store.store_many(images, labels)
        group = zarr.open_group(live_group(tmp_path), mode="r")
        for image_id in (0, 4, 8):
            assert_bits_equal(group["images"][image_id], images[image_id])
            assert group["labels"][image_id] == labels[image_id]
        assert_bits_equal(group["images"].oindex[[8, 2, 2]], images[[8, 2, 2]])
        array = group["images"]
        assert (array.chunks, array.shards, array.filters) == ((1, 3, 16, 16), (9, 3, 16, 16), ())
        names = [codec.to_dict()["name"] for codec in array.compressors]
        compression = spec.split("compression=")[1].split(",")[0]
        assert names == ([] if compression == "none" else [compression]) + ["crc32c"] * checksum

    def test_uint8_photos_read_by_zarr_as_stored(self, directory, filled):
        _, images, labels = filled
        group = zarr.open_group(live_group(directory), mode="r")
        np.testing.assert_array_equal(group["images"][3], images[3])
        np.testing.assert_array_equal(group["images"][:], images)
        np.testing.assert_array_equal(group["labels"][:], labels)
        assert group["images"].dtype == np.uint8 and group["labels"].dtype == np.int64

    # -- codecs: each image's encoded file, one element of a variable-length bytes array --------------
    @pytest.mark.parametrize("checksum", [False, True])
    def test_an_encoded_store_holds_each_image_file_and_the_group_records_the_codec(self, tmp_path, checksum):
        images, labels = make_batch(9, (16, 16, 3))
        with open_store("zarr:codec=png", tmp_path, checksum=checksum) as store:
            store.store_many(images, labels)
        folder = live_group(tmp_path)
        group = zarr.open_group(folder, mode="r")
        array = group["images"]
        assert dict(group.attrs) == {"format": "storage_impls.zarr", "format_version": 1, "codec": "png"}
        assert (array.shape, array.chunks, array.shards) == ((9,), (1,), (9,))
        metadata = json.loads((folder / "images" / "zarr.json").read_text())
        assert metadata["data_type"] == "variable_length_bytes" and metadata["fill_value"] == ""
        inner = [codec["name"] for codec in metadata["codecs"][0]["configuration"]["codecs"]]
        assert inner == ["vlen-bytes"] + ["crc32c"] * checksum
        assert array[4:5][0] == get_codec("png").encode(images[4])  # image 4's PNG file, as encoded
        np.testing.assert_array_equal(group["labels"][:], labels)

    def test_the_raw_codec_is_the_layout_of_a_store_without_one(self, tmp_path):
        images, labels = make_batch(5, (8, 8, 3))
        for spec in ("zarr", "zarr:codec=raw"):
            with open_store(spec, tmp_path / spec) as store:
                store.store_many(images, labels)
                assert store.codec_spec == "raw"
            assert "codec" not in json.loads((tmp_path / spec / "zarr.json").read_text().splitlines()[0])
        files = [
            sorted((path.relative_to(folder), path.read_bytes()) for path in folder.rglob("*") if path.is_file())
            for folder in (live_group(tmp_path / "zarr"), live_group(tmp_path / "zarr:codec=raw"))
        ]
        assert files[0] == files[1]
        assert (
            dict(zarr.open_group(live_group(tmp_path / "zarr"), mode="r").attrs)
            == storage_impls.methods.zarr.format.GROUP_ATTRIBUTES
        )

    def test_a_group_recording_another_codec_is_refused_naming_it(self, tmp_path):
        with open_store("zarr:codec=jpeg-90", tmp_path) as store:
            store.store_many(*make_batch(4, (8, 8, 3)))
        zarr.open_group(live_group(tmp_path), mode="a").update_attributes({"codec": "png"})
        with pytest.raises(
            CorruptStoreError, match=r"ckpt-\w+/zarr.json: .*another codec .*'png'.*expected .*'jpeg-90'"
        ):
            open_store(self.method, tmp_path, "r")

    @pytest.mark.parametrize("reader", ["pread", "zarr"])
    def test_a_fold_copies_the_encoded_files_without_encoding_them_again(self, tmp_path, reader, monkeypatch):
        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        images, labels = make_batch(8, (16, 16, 3))
        with open_store(f"zarr:codec=jpeg-90,reader={reader}", tmp_path) as store:
            store.store_many(images[:4], labels[:4])
            for image_id in range(4, 8):
                store.store_single(images[image_id], image_id, int(labels[image_id]))
            assert_bits_equal(store.read_many(8)[0], self.expected("jpeg-90", images))
        files = zarr.open_group(live_group(tmp_path), mode="r")["images"][:]
        assert len(files) == 7 and list(files) == [get_codec("jpeg-90").encode(image) for image in images[:7]]

    @pytest.mark.parametrize("reader", ["pread", "zarr"])
    @pytest.mark.parametrize("offset", [0, 8 + 20], ids=["vlen-count", "png-header"])
    def test_a_damaged_encoded_chunk_is_corrupt_naming_its_shard_or_image(self, tmp_path, reader, offset):
        images, labels = make_batch(6, (8, 8, 3))
        with open_store("zarr:codec=png", tmp_path) as store:
            store.store_many(images, labels)
        flip(shard(tmp_path, ndim=0), offset)  # image 0's chunk comes first: its element count, or its PNG's IHDR
        with open_store(f"zarr:reader={reader}", tmp_path, "r") as store:
            np.testing.assert_array_equal(store.read_batch([5, 1])[0], images[[5, 1]])
            for read in (lambda: store.read_batch([1, 0]), lambda: store.read_many(6), lambda: store.read_single(0)):
                with pytest.raises(
                    CorruptStoreError,
                    match=r"images/c/0: .* not one vlen-bytes element|images/c/0 is damaged|image 0 is not a readable "
                    r"png",
                ):
                    read()

    # -- the pread reader and zarr-python's agree ---------------------------------------------------
    @pytest.mark.parametrize("codec", ["raw", "png"])
    @pytest.mark.parametrize("checksum", [False, True])
    @pytest.mark.parametrize("compression", ["none", "blosc", "zstd"])
    def test_both_readers_read_the_same_across_shards(self, tmp_path, small_shards, compression, checksum, codec):
        images, labels = make_batch(11, (8, 8, 3))  # shards of 4, 4 and 3 images
        with open_store(f"zarr:compression={compression},codec={codec}", tmp_path, checksum=checksum) as store:
            store.store_many(images, labels)
        assert len(list((live_group(tmp_path) / "images" / "c").iterdir())) == 3
        ids = np.array([10, 0, 4, 4, 3, 7, 8, 1])
        for reader in ("pread", "zarr"):
            with open_store(f"zarr:reader={reader}", tmp_path, "r") as store:
                read_images, read_labels = store.read_many(11)
                np.testing.assert_array_equal(read_images, images)
                np.testing.assert_array_equal(read_labels, labels)
                np.testing.assert_array_equal(store.read_many(6)[0], images[:6])
                batch, batch_labels = store.read_batch(ids)
                np.testing.assert_array_equal(batch, images[ids])
                np.testing.assert_array_equal(batch_labels, labels[ids])
                np.testing.assert_array_equal(store.read_single(9)[0], images[9])

    # -- bad input: another tool's nodes, wrong arrays, damaged or missing files -------------------
    @pytest.mark.parametrize("mode", ["r", "a"])
    @pytest.mark.parametrize("zarr_format", [2, 3])
    def test_zarr_group_of_another_tool_is_refused_and_left_alone(self, directory, mode, zarr_format):
        group = zarr.open_group(directory, mode="w", zarr_format=zarr_format)
        group.create_array("images", shape=(4, 8, 8), dtype="uint8")[:] = 7
        before = listing(directory)
        marker = "zarr.json" if zarr_format == 3 else ".zgroup"
        refusal = f"{marker} .zarr v{zarr_format} metadata. belongs to a zarr node written by another tool"
        with pytest.raises(CorruptStoreError, match=refusal):
            open_store(self.method, directory, mode)
        assert listing(directory) == before

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (
                lambda folder, n: zarr.open_group(folder, mode="w").create_array(
                    "images", shape=(n, 32, 32, 3), dtype="uint8"
                ),
                r"ckpt-\w+/zarr.json: a zarr group written by another tool",
            ),
            (
                lambda folder, n: _replace_images(folder, shape=(n, 32, 32, 3), dtype="float32"),
                r"images/zarr.json: images is not the array this store wrote .*data_type .*float32.*, expected .*uint8",
            ),
            (
                lambda folder, n: _replace_images(folder, shape=(n + 1, 32, 32, 3), dtype="uint8"),
                r"images/zarr.json: images is not the array this store wrote .*shape \(11, 32, 32, 3\), expected \(10, "
                r"32, 32, 3\)",
            ),
            (
                lambda folder, n: _replace_images(folder, shape=(n, 32, 32, 3), dtype="uint8", shards=None),
                r"images/zarr.json: images is not the array this store wrote \(chunk_grid",
            ),
            (
                lambda folder, n: (folder / "images" / "zarr.json").write_text(
                    '{"zarr_format": 3, "node_type": "array"'
                ),
                r"images/zarr.json is not readable zarr v3 metadata",
            ),
            (lambda folder, n: shutil.rmtree(folder / "labels"), r"labels/zarr.json is missing"),
        ],
        ids=["group-of-another-tool", "wrong-dtype", "wrong-shape", "unsharded", "cut-json", "missing-labels"],
    )
    def test_foreign_or_wrong_array_in_the_group_is_refused_naming_the_file(self, directory, filled, make, message):
        store, images, labels = filled
        store.close()
        folder = live_group(directory)
        make(folder, len(images))
        before = listing(directory)
        with pytest.raises((CorruptStoreError, MissingStoreError), match=message):
            open_store(self.method, directory, "r")
        with open_store(self.method, directory) as writer:  # a writer opens it, refuses reads, writes nothing ...
            with pytest.raises(CorruptStoreError, match=message):
                writer.read_batch([0])
            assert listing(directory) == before
            writer.store_many(images, labels)  # ... until store_many replaces the damaged contents
            np.testing.assert_array_equal(writer.read_many(10)[0], images)

    @pytest.mark.parametrize("reader", ["pread", "zarr"])
    @pytest.mark.parametrize(
        ("damage", "message"),
        [
            (lambda path: path.write_bytes(path.read_bytes()[:-5]), "index fails its CRC-32C|damaged"),
            (lambda path: path.write_bytes(path.read_bytes()[:100]), "too short for the index|damaged"),
            (lambda path: flip(path, path.stat().st_size - 20), "index fails its CRC-32C|damaged"),
            (lambda path: flip(path, 5 * (32 * 32 * 3 + 4) + 7), "fails its CRC-32C|damaged"),  # image 5's pixels
        ],
        ids=["cut-index", "cut-to-100-bytes", "flipped-index", "flipped-pixel"],
    )
    def test_damaged_shard_is_corrupt_naming_the_file(self, tmp_path, reader, damage, message):
        images, labels = make_batch(10)
        with open_store(self.method, tmp_path, checksum=True) as store:
            store.store_many(images, labels)
        damage(shard(tmp_path))
        before = listing(tmp_path)
        with open_store(f"zarr:reader={reader}", tmp_path, "r") as store:
            for read in (lambda: store.read_many(10), lambda: store.read_batch([9, 5]), lambda: store.read_single(5)):
                with pytest.raises(CorruptStoreError, match=rf"c/0/0/0/0.*({message})"):
                    read()
        assert listing(tmp_path) == before

    def test_missing_shard_names_the_file(self, tmp_path, small_shards):
        with open_store(self.method, tmp_path) as store:
            store.store_many(*make_batch(10, (8, 8, 3)))
        shard(tmp_path, 1).unlink()
        for reader in ("pread", "zarr"):
            with pytest.raises(MissingStoreError, match="images/c/1/0/0/0 is missing"):
                open_store(f"zarr:reader={reader}", tmp_path, "r")

    def test_damaged_label_chunk_names_the_file(self, tmp_path, small_shards):
        images, labels = make_batch(10, (8, 8, 3))
        with open_store(self.method, tmp_path, checksum=True) as store:
            store.store_many(images, labels)
        flip(live_group(tmp_path) / "labels" / "c" / "1", 3)
        with pytest.raises(CorruptStoreError, match="labels/c/1 is damaged.*checksum"):
            open_store(self.method, tmp_path, "r")

    # -- design choices ------------------------------------------------------------------------------
    def test_each_shard_is_written_once_whole_and_never_read_back(self, tmp_path, small_shards, monkeypatch):
        """store_many writes shard-aligned blocks: zarr writes each shard file once and reads none back (no read-
        modify-write; its partial-write path looks for an existing shard and finds none)."""
        calls = []
        real_set, real_get = zarr.storage.LocalStore.set, zarr.storage.LocalStore.get

        async def spy_set(store, key, value):
            calls.append(("set", key))
            return await real_set(store, key, value)

        async def spy_get(store, key, prototype=None, byte_range=None):
            value = await real_get(store, key, prototype, byte_range)
            calls.append(("get", key, value is not None))
            return value

        real_open = ZarrStore._open_checkpoint
        monkeypatch.setattr(zarr.storage.LocalStore, "set", spy_set)
        monkeypatch.setattr(zarr.storage.LocalStore, "get", spy_get)
        monkeypatch.setattr(
            ZarrStore, "_open_checkpoint", lambda *args: (calls.append(("opened", "")), real_open(*args))[1]
        )
        with open_store(self.method, tmp_path) as store:
            store.store_many(*make_batch(11, (8, 8, 3)))
        shard_calls = [call for call in calls[: calls.index(("opened", ""))] if "/c/" in call[1]]  # the writing
        assert sorted(call[1] for call in shard_calls if call[0] == "set") == [
            f"images/c/{index}/0/0/0" for index in range(3)
        ] + [f"labels/c/{index}" for index in range(3)]
        assert not [call for call in shard_calls if call[0] == "get" and call[2]]

    def test_shards_are_balanced_and_recorded(self, directory, store):
        from storage_impls.methods.zarr.format import shard_images

        assert shard_images(np.dtype(np.uint8), (32, 32, 3), 100_000) == 20_000  # 5 shards of 61 MB, not 4 full + 1
        assert shard_images(np.dtype(np.uint8), (32, 32, 3), 10) == 10
        assert shard_images(np.dtype(np.uint8), (256, 256, 3), 1000) == 334  # 3 shards of 64 MiB target
        store.store_many(*make_batch(10))
        meta = json.loads((directory / "zarr.json").read_text().splitlines()[0])
        assert (meta["shard_images"], meta["compression"]) == (10, "none")

    @pytest.mark.parametrize("reader", ["pread", "zarr"])
    def test_every_chunk_is_written_so_zeros_and_negative_zeros_are_stored(self, tmp_path, reader):
        """Chunks equal to the fill value are written too (zarr skips them by default, and -0.0 == 0.0 would read
        back as +0.0); a chunk missing from an index is therefore damage."""
        images = np.zeros((4, 8, 8), np.float32)
        images[1] = -0.0
        with open_store(f"zarr:reader={reader}", tmp_path) as store:
            store.store_many(images, np.arange(4))
            assert_bits_equal(store.read_many(4)[0], images)
            assert_bits_equal(store.read_batch([1, 0])[0], images[[1, 0]])
        index = np.frombuffer(shard(tmp_path, ndim=2).read_bytes()[-4 - 16 * 4 : -4], "<u8").reshape(4, 2)
        assert (index[:, 1] == 8 * 8 * 4).all()

    def test_compression_is_recorded_and_kept_by_later_writers(self, directory):
        images, labels = make_batch(20)
        with open_store("zarr:compression=zstd", directory) as store:
            store.store_many(images, labels)
        with open_store(self.method, directory) as store:  # no option: the store's compression
            store.store_many(images[:5], labels[:5])
        assert json.loads((directory / "zarr.json").read_text().splitlines()[0])["compression"] == "zstd"
        assert zarr.open_group(live_group(directory), mode="r")["images"].compressors[0].to_dict()["name"] == "zstd"
        with pytest.raises(ValueError, match="compression='lz4' is not allowed; use none, blosc, zstd"):
            open_store("zarr:compression=lz4", directory)

    def test_pread_reader_keeps_its_snapshot_and_the_zarr_reader_is_told_to_open_again(self, directory, filled):
        store, images, labels = filled
        readers = {reader: open_store(f"zarr:reader={reader}", directory, "r") for reader in ("pread", "zarr")}
        store.store_many(images[::-1].copy(), labels[::-1].copy())
        np.testing.assert_array_equal(readers["pread"].read_batch([3, 1])[0], images[[3, 1]])
        np.testing.assert_array_equal(readers["pread"].read_many(10)[0], images)
        with pytest.raises(MissingStoreError, match="open it again"):
            readers["zarr"].read_batch([3, 1])  # never zeros: the strict LocalStore raises for the deleted shard
        for reader in readers.values():
            reader.close()

    def test_single_writes_reach_zarr_readers_when_the_journal_is_folded(self, directory, filled, monkeypatch):
        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        store, images, labels = filled
        store.store_single(images[0], 10, 5)
        assert zarr.open_group(live_group(directory), mode="r")["images"].shape[0] == 10  # in the journal only
        for image_id in (11, 12, 13):
            store.store_single(images[image_id - 10], image_id, image_id)
        group = zarr.open_group(live_group(directory), mode="r")
        assert group["images"].shape[0] >= 13 and group["labels"][10] == 5
        np.testing.assert_array_equal(group["images"][11], images[1])

    def test_a_forked_child_reads_through_zarr(self, tmp_path):
        """zarr-python resets its event-loop thread in a forked child (fork_safe stays True): a child that closes
        the handle it inherited (as storage_impls.loader does) and opens its own reads, with either reader."""
        with open_store(self.method, tmp_path / "store") as store:
            store.store_many(*labelled_batch(range(6)))
        result = run_child(f"""
            import os, signal
            from storage_impls import open_store
            from tests.faults import check_consistent
            inherited = open_store("zarr:reader=zarr", {str(tmp_path / 'store')!r}, "r")
            check_consistent(inherited)  # zarr's event-loop thread now runs in this process
            pid = os.fork()
            if pid == 0:
                signal.alarm(30)  # a hang fails the test instead of blocking it
                inherited.close()
                counts = []
                for spec in ("zarr", "zarr:reader=zarr"):
                    with open_store(spec, {str(tmp_path / 'store')!r}, "r") as store:
                        counts.append(check_consistent(store))
                os._exit(0 if counts == [6, 6] else 1)
            print(os.waitpid(pid, 0)[1], check_consistent(inherited))
        """)
        assert result.returncode == 0 and result.stdout.split() == ["0", "6"], result.stderr


def _replace_images(folder, **spec):
    """Put an array made by plain zarr (``spec``) where the group's ``images`` was."""
    shutil.rmtree(folder / "images")
    zarr.open_group(folder, mode="a").create_array(
        "images", chunks=(1, *spec["shape"][1:]), shards=spec.pop("shards", spec["shape"]), **spec
    )


def test_missing_zarr_names_what_to_install(monkeypatch, tmp_path):
    import sys

    for module in [name for name in sys.modules if name.startswith("storage_impls.methods.zarr")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r"needs the package 'zarr'.*pip install image-storage-bench\[zarr\]"):
        open_store("zarr", tmp_path)


def test_durable_writes_fsync(tmp_path, monkeypatch):
    """durable=True fsyncs every file and folder zarr wrote; the default (and zarr itself) fsyncs nothing."""
    calls = spy_fsync(monkeypatch)
    for durable in (False, True):
        calls.clear()
        with open_store("zarr", tmp_path / str(durable), durable=durable) as store:
            store.store_many(*labelled_batch(range(3)))
            store.store_single(pixels_for(3), 3, 3)
        assert (len(calls) > 8) if durable else not calls  # 6 files and 7 folders of a group, then metadata


class TestZarrFaults(FaultTests):
    """The default reads through zarr-python, which opens shard files per call, so its snapshot can expire."""

    method = "zarr"
    snapshot_can_expire = True


class TestZarrThroughPread(StoreTests):
    """The same store read by this package's own reader (``reader=pread``: the shard index, one preadv per image)."""

    method = "zarr:reader=pread"
    corrupt = TestZarr.corrupt
    ecosystem_read = TestZarr.ecosystem_read
    test_killed_store_many_never_reads_as_complete = None  # the write path is the default's, tested there


class TestZarrThroughPreadFaults(FaultTests):
    """The fault tests that read, with every shard file held open from the open (a snapshot that cannot expire).
    Those that only write (kills, two writers, a full disk) run once, above: both readers share the write path."""

    method = "zarr:reader=pread"
    test_kill_at_random_points_never_mixes = test_concurrent_writers_leave_a_consistent_store = None
    test_full_disk_keeps_the_store_as_it_was = test_second_writer_times_out_and_readers_go_on = None
    test_store_many_repairs_a_damaged_store = None


class TestZarrCodecsThroughPread(CodecTests):
    """The codec tests with the pread reader."""

    method = "zarr:reader=pread"

    @pytest.fixture
    def directory(self, tmp_path):
        return tmp_path / "store"

    def test_the_reader_is_pread(self, directory):
        with open_store(self.variant("png"), directory) as store:
            store.store_many(*make_batch(3, (8, 8, 3)))
            assert store._checkpoint.reader == "pread" and len(store._checkpoint.fds) == 1


class TestZarrPngFaults(FaultTests):
    """Encoded images (a vlen-bytes element each), journal records of PNG bytes folded without encoding again."""

    method = "zarr:codec=png"
    snapshot_can_expire = True


class TestZarrPngThroughPreadFaults(TestZarrThroughPreadFaults):
    method = "zarr:codec=png,reader=pread"


def test_zarr_python_alone_reads_each_image_file_and_pillow_decodes_what_the_store_reads(tmp_path):
    """``zarr:codec=jpeg-90``: in a process that never imports this package, zarr-python opens the group and gets each
    image's JPEG file as bytes (the group's attributes name the codec); Pillow decodes them to what the store reads."""
    images, labels = make_batch(40, (16, 16, 3))
    with open_store("zarr:codec=jpeg-90", tmp_path / "store", checksum=True) as store:
        store.store_many(images, labels)
        read = store.read_many(40)[0]
    result = run_child(f"""
        import io, sys
        import numpy as np
        import zarr
        from PIL import Image
        group = zarr.open_group({str(live_group(tmp_path / "store"))!r}, mode="r")
        assert group.attrs["codec"] == "jpeg-90", dict(group.attrs)
        files = group["images"][:]  # an object array: one bytes object per image
        assert [type(data) for data in files] == [bytes] * 40 and files[0][:2] == b"\\xff\\xd8"
        assert list(group["images"].oindex[[39, 0, 7]]) == [files[39], files[0], files[7]]
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(data))) for data in files])
        assert not [name for name in sys.modules if name.startswith("storage_impls")]
        np.save({str(tmp_path / "decoded.npy")!r}, decoded)
        np.save({str(tmp_path / "labels.npy")!r}, group["labels"][:])
    """)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "decoded.npy"), read)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)


@pytest.mark.parametrize("spec", ["zarr:compression=blosc", "zarr:compression=zstd,reader=zarr"])
def test_damaged_compressed_stores_give_typed_errors_never_wrong_data(tmp_path, spec):
    """Every file of a checksummed, compressed store truncated and flipped: a typed error or the right data."""
    faults = FaultTests()
    faults.method = spec
    faults.test_damaged_files_give_typed_errors_never_wrong_data(tmp_path)

"""The webdataset method: conformance, codec and fault tests, plus its own: WebDataset's own pipeline reads the
shards (and they are byte for byte what webdataset's TarWriter writes, raw and encoded), the one-member layout
and its size, encoded samples (``.cls`` + ``.jpg``) and their index, the shard size option, the journal,
snapshots, and truncated, damaged and foreign shards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from storage_impls.registry import _REGISTRY

wds = pytest.importorskip(
    "webdataset", reason=f"webdataset needs the webdataset package: {_REGISTRY['webdataset'].install_hint}"
)

from storage_impls import CorruptStoreError, MissingStoreError, open_store  # noqa: E402
from storage_impls.core.codecs import get_codec  # noqa: E402
from storage_impls.core.records import write_meta  # noqa: E402
from storage_impls.methods.webdataset.format import MemberLayout, archive_bytes, sample_dtype, shard_bytes  # noqa: E402
from storage_impls.methods.webdataset.store import DEFAULT_SHARD_SIZE  # noqa: E402
from storage_impls.registry import canonical_spec  # noqa: E402
from tests.faults import FaultTests, labelled_batch, pixels_for, spy_fsync  # noqa: E402
from tests.test_storage import CodecTests, StoreTests, assert_bits_equal, listing, make_batch, random_layout  # noqa: E402

METHOD = "webdataset"


def meta(directory: Path) -> dict:
    return json.loads((directory / "webdataset.json").read_text().splitlines()[0])


def checkpoint(directory: Path) -> Path:
    """The live checkpoint folder: the shards, the index and the checksums."""
    return directory / f"ckpt-{meta(directory)['token']}"


def shards(directory: Path) -> list[str]:
    return [str(path) for path in sorted(checkpoint(directory).glob("shard-*.tar"))]


def key(image_id: int) -> str:
    return f"{image_id:012d}"


def record(image: np.ndarray, label: int) -> np.ndarray:
    """The .npy record of one member, as numpy makes it."""
    value = np.zeros((), sample_dtype(image.dtype, image.shape))
    value["image"], value["label"] = image, label
    return value


def write_foreign_shard(path: Path, samples: list[dict]) -> None:
    """A shard written by webdataset's own TarWriter."""
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


class TestWebDataset(CodecTests, StoreTests):
    method = METHOD

    def corrupt(self, directory):
        path = Path(shards(directory)[0])
        data = bytearray(path.read_bytes())
        data[3 * 4096 + 5] ^= 0xFF  # the name in member 3's tar header
        path.write_bytes(bytes(data))
        return CorruptStoreError

    def ecosystem_read(self, directory):
        samples = list(wds.WebDataset(shards(directory), shardshuffle=False).decode())
        assert [sample["__key__"] for sample in samples] == [key(image_id) for image_id in range(len(samples))]
        return np.stack([sample["npy"]["image"] for sample in samples]), np.array(
            [sample["npy"]["label"] for sample in samples]
        )

    # -- what other tools read -----------------------------------------------------------------
    @pytest.mark.parametrize(
        ("dtype", "shape"),
        [(np.uint8, (32, 32, 3)), (np.float32, (3, 16, 16)), (np.uint16, (8, 8))],
        ids=["uint8-rgb", "float32-chips", "uint16-grey"],
    )
    def test_webdataset_pipeline_reads_the_same_samples(self, directory, dtype, shape):
        """wds.WebDataset(shards).decode() yields every image (bit for bit) and label, keyed by id, in id order."""
        images, labels = random_layout(300, dtype, shape)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
        assert len(shards(directory)) > 1
        samples = list(wds.WebDataset(shards(directory), shardshuffle=False).decode())
        assert [sample["__key__"] for sample in samples] == [key(image_id) for image_id in range(300)]
        for sample, image, label in zip(samples, images, labels):
            assert_bits_equal(sample["npy"]["image"], image)
            assert sample["npy"]["label"] == label
        with open_store(METHOD, directory, "r") as store:  # and this store reads what WebDataset read
            assert_bits_equal(store.read_batch(np.arange(300)[::-1])[0], images[::-1])

    def test_shards_are_what_webdatasets_tarwriter_writes(self, tmp_path, directory, filled):
        """Byte for byte: the same members, headers (mode, owner, mtime), end of archive and padding."""
        _, images, labels = filled
        reference = tmp_path / "reference.tar"
        with wds.TarWriter(str(reference), mtime=meta(directory)["mtime"]) as writer:
            for image_id, (image, label) in enumerate(zip(images, labels)):
                writer.write({"__key__": key(image_id), "npy": record(image, label)})
        assert Path(shards(directory)[0]).read_bytes() == reference.read_bytes()

    def test_one_member_per_image_is_the_smallest_layout(self, tmp_path, directory, filled):
        """The measured choice: at 32x32x3 a member of pixels and label takes 4096 bytes, raw pixels (.u8) + .cls 4608,
        the conventional .npy + .cls pair 5120, and 7168 as TarWriter writes it by default (its time.time() mtime has a
        fraction, which tarfile's default PAX format keeps in an extended header of 1024 bytes per member)."""
        _, images, labels = filled
        assert os.path.getsize(shards(directory)[0]) == shard_bytes(10, 4096)
        sizes = {}
        for name, mtime, encode in [
            ("raw+cls", 1, lambda image, label: {"u8": image.tobytes(), "cls": int(label)}),
            ("npy+cls", 1, lambda image, label: {"npy": image, "cls": int(label)}),
            ("npy+cls, float mtime", 1.5, lambda image, label: {"npy": image, "cls": int(label)}),
        ]:
            path = tmp_path / "other.tar"
            with wds.TarWriter(str(path), mtime=mtime) as writer:
                for image_id, (image, label) in enumerate(zip(images, labels)):
                    writer.write({"__key__": key(image_id), **encode(image, label)})
            sizes[name] = path.stat().st_size
        assert sizes == {
            "raw+cls": shard_bytes(10, 4608),
            "npy+cls": shard_bytes(10, 5120),
            "npy+cls, float mtime": shard_bytes(10, 7168),
        }

    # -- shards, index and options -------------------------------------------------------------
    def test_shard_size_option_is_recorded_and_kept(self, directory):
        images, labels = make_batch(100)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
        assert (meta(directory)["shard_size"], meta(directory)["shard_images"], meta(directory)["shards"]) == (
            65536,
            14,
            8,
        )
        assert all(os.path.getsize(path) <= 65536 for path in shards(directory))
        with open_store(METHOD, directory) as store:  # no option: the recorded size
            store.store_many(images[:50], labels[:50])
            assert meta(directory)["shard_size"] == 65536 and len(shards(directory)) == 4
            np.testing.assert_array_equal(store.read_batch([49, 0, 15, 30])[0], images[[49, 0, 15, 30]])
        with open_store(METHOD, directory / "new") as store:
            store.store_many(images[:2], labels[:2])
        assert meta(directory / "new")["shard_size"] == DEFAULT_SHARD_SIZE == 100 << 20
        assert canonical_spec(f"{METHOD}:shard_size=1048576") == f"{METHOD}:shard_size=1MiB"
        with pytest.raises(ValueError, match="shard_size='big' is not allowed"):
            open_store(f"{METHOD}:shard_size=big", directory)

    def test_index_holds_each_members_offset(self, directory):
        images, labels = make_batch(40)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
        index = np.load(checkpoint(directory) / "index.npy")
        assert index.dtype == np.dtype("<i8") and index.shape == (40, 2)
        for image_id in (0, 14, 15, 39):
            shard, offset = index[image_id]
            with open(shards(directory)[shard], "rb") as file:
                file.seek(offset)
                assert file.read(16) == f"{key(image_id)}.npy".encode()
                file.seek(offset + 512)
                value = np.lib.format.read_array(file)
            np.testing.assert_array_equal(value["image"], images[image_id])
            assert value["label"] == labels[image_id]

    def test_index_that_does_not_match_the_shards_is_corrupt(self, directory, filled):
        path = checkpoint(directory) / "index.npy"
        index = np.load(path)
        np.save(path, index[[1, 0, *range(2, 10)]])
        with pytest.raises(CorruptStoreError, match="index.npy does not match the shards"):
            open_store(METHOD, directory, "r")

    def test_metadata_out_of_step_with_the_shards_is_corrupt(self, directory, filled):
        written = meta(directory)
        write_meta(directory / "webdataset.json", {**written, "shard_images": 3}, durable=False)
        with pytest.raises(CorruptStoreError, match="webdataset.json: not a webdataset store's metadata"):
            open_store(METHOD, directory, "r")

    def test_huge_images_are_refused_before_anything_is_written(self, store):
        assert "2147483647 bytes" in store.layout_limit(np.dtype(np.uint8), (65535, 65535))
        assert store.layout_limit(np.dtype(np.float64), (4096, 4096, 4)) is None

    # -- damaged and foreign shards: CorruptStoreError naming the file, nothing written ----------
    def test_truncated_shard_is_corrupt_naming_the_file(self, directory):
        images, labels = make_batch(40)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
        path = Path(shards(directory)[1])
        os.truncate(path, path.stat().st_size - 512)
        before = listing(directory)
        with pytest.raises(CorruptStoreError, match=f"{re.escape(str(path))} is 60928 bytes, expected 61440"):
            open_store(METHOD, directory, "r")
        with open_store(METHOD, directory) as store:
            with pytest.raises(CorruptStoreError, match="shard-000001.tar is 60928 bytes"):
                store.read_many(1)
        assert listing(directory) == before

    def test_shard_cut_short_while_open_is_corrupt(self, directory):
        images, labels = make_batch(40)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
        with open_store(METHOD, directory, "r") as reader:
            reader.read_many(40)  # every shard open
            os.truncate(shards(directory)[2], 4096)
            with pytest.raises(CorruptStoreError, match="shard-000002.tar ends before the members its index names"):
                reader.read_batch([1, 33])
            with pytest.raises(CorruptStoreError, match="shard-000002.tar ends before"):
                reader.read_many(40)
            np.testing.assert_array_equal(reader.read_batch([1, 16])[0], images[[1, 16]])

    @pytest.mark.parametrize(
        "samples",
        [
            lambda images, labels: [{"__key__": key(i), "jpg": bytes(1000), "cls": 7} for i in range(len(images))],
            lambda images, labels: [{"__key__": key(i), "npy": image} for i, image in enumerate(images)],
            lambda images, labels: [
                {"__key__": key(i), "npy": record(image.view(np.int8), label)}
                for i, (image, label) in enumerate(zip(images, labels))
            ],
            lambda images, labels: [
                {"__key__": f"img{i:09d}", "npy": record(image, label)}
                for i, (image, label) in enumerate(zip(images, labels))
            ],
        ],
        ids=["other-members", "npy-without-label", "other-dtype", "other-keys"],
    )
    def test_shard_from_another_tool_is_corrupt_naming_the_file(self, directory, filled, samples):
        """A shard written by webdataset's TarWriter in place of this store's: refused by its size or, where
        the size matches, by the first member's header; nothing is written."""
        _, images, labels = filled
        path = Path(shards(directory)[0])
        path.unlink()
        write_foreign_shard(path, samples(images, labels))
        before = listing(directory)
        with pytest.raises(
            CorruptStoreError,
            match=f"{re.escape(str(path))}(: the member at byte 0 is not 000000000000.npy| is \\d+ bytes)",
        ):
            with open_store(METHOD, directory, "r") as store:
                store.read_batch([0])
        with pytest.raises(CorruptStoreError, match=re.escape(str(path))):
            with open_store(METHOD, directory, "r") as store:
                store.read_many(10)
        assert listing(directory) == before

    def test_tar_shards_of_another_tool_in_the_directory_are_refused(self, tmp_path):
        directory = tmp_path / "shards"
        directory.mkdir()
        images, labels = make_batch(3)
        write_foreign_shard(directory / "shard-000000.tar", [{"__key__": key(0), "npy": images[0], "cls": 1}])
        for mode in ("r", "a"):
            with pytest.raises(CorruptStoreError, match="shard-000000.tar is a tar shard this package did not write"):
                open_store(METHOD, directory, mode)
        assert sorted(listing(directory)) == [".writer.lock", "shard-000000.tar"]  # the lock file opening "a" makes

    def test_damaged_member_header_names_shard_and_byte(self, directory, filled):
        _, images, _ = filled
        path = Path(shards(directory)[0])
        data = bytearray(path.read_bytes())
        data[5 * 4096 + 512 + 20] ^= 0x01  # inside member 5's .npy header
        path.write_bytes(bytes(data))
        with open_store(METHOD, directory, "r") as store:
            with pytest.raises(
                CorruptStoreError, match="shard-000000.tar: the member at byte 20480 is not 000000000005.npy"
            ):
                store.read_batch([2, 5])
            with pytest.raises(CorruptStoreError, match="member at byte 20480 is not 000000000005.npy"):
                store.read_many(10)
            np.testing.assert_array_equal(store.read_batch([4, 6])[0], images[[4, 6]])

    def test_a_flipped_pixel_or_label_fails_its_checksum(self, directory):
        images, labels = make_batch(10)
        with open_store(METHOD, directory, checksum=True) as store:
            store.store_many(images, labels)
        path = Path(shards(directory)[0])
        data = bytearray(path.read_bytes())
        data[7 * 4096 + 640 + 100] ^= 1  # a pixel of image 7
        data[3 * 4096 + 640 + 3072] ^= 1  # the label of image 3
        path.write_bytes(bytes(data))
        with open_store(METHOD, directory, "r") as store:
            with pytest.raises(CorruptStoreError, match="image 7 fails its checksum"):
                store.read_batch([1, 7])
            with pytest.raises(CorruptStoreError, match="image 3 fails its checksum"):
                store.read_many(10)
            np.testing.assert_array_equal(store.read_single(6)[0], images[6])

    # -- the journal and snapshots ---------------------------------------------------------------
    def test_store_single_goes_to_the_journal_until_folded_into_new_shards(self, directory, filled, monkeypatch):
        import storage_impls.core.journal

        store, images, labels = filled
        folder = checkpoint(directory)
        before = sorted((path.name, path.stat().st_mtime_ns) for path in folder.iterdir())
        store.store_single(images[1], 4, 5)
        store.store_single(images[2], 10, 6)
        assert (
            checkpoint(directory) == folder
            and sorted((path.name, path.stat().st_mtime_ns) for path in folder.iterdir()) == before
        )
        assert len(list(wds.WebDataset(shards(directory), shardshuffle=False))) == 10  # shards hold the checkpoint only
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        store.store_single(images[3], 11, 7)  # the journal is folded first
        store.store_single(images[4], 12, 8)
        assert checkpoint(directory) != folder and not folder.exists()
        samples = list(wds.WebDataset(shards(directory), shardshuffle=False).decode())
        assert [int(sample["npy"]["label"]) for sample in samples] == [*labels[:4], 5, *labels[5:], 6, 7]
        np.testing.assert_array_equal(samples[4]["npy"]["image"], images[1])
        with open_store(METHOD, directory, "r") as reader:
            assert len(reader) == 13 and reader.read_single(12)[1] == 8

    def test_reader_keeps_open_shards_and_is_told_to_open_again_for_others(self, directory):
        images, labels = make_batch(40)
        with open_store(f"{METHOD}:shard_size=64KiB", directory) as store:
            store.store_many(images, labels)
            reader = open_store(METHOD, directory, "r")
            reader.read_batch([0])  # opens shard 0 only
            store.store_many(images[::-1].copy(), labels[::-1].copy())
        np.testing.assert_array_equal(reader.read_batch([3, 1])[0], images[[3, 1]])  # still open: the snapshot's
        with pytest.raises(MissingStoreError, match="open it again"):
            reader.read_batch([39])
        reader.close()


class TestWebDatasetFaults(FaultTests):
    method = METHOD
    snapshot_can_expire = True  # shards are opened when first read


class TestWebDatasetPngFaults(FaultTests):
    """Encoded samples: ``.cls`` + ``.png`` members of varying size, an index of offsets and lengths, journal records of
    PNG bytes."""

    method = f"{METHOD}:codec=png"
    snapshot_can_expire = True


# -- encoded samples: WebDataset's own convention, <key>.cls + <key>.jpg -----------------------------------
JPEG = f"{METHOD}:codec=jpeg-90"


def test_encoded_shards_are_what_webdatasets_tarwriter_writes(tmp_path):
    """Byte for byte: ``{"__key__", "cls": label, "jpg": the encoded file}`` per image, in TarWriter's member order."""
    images, labels = make_batch(50)
    with open_store(JPEG, tmp_path / "s") as store:
        store.store_many(images, labels)
    reference, jpeg = tmp_path / "reference.tar", get_codec("jpeg-90")
    with wds.TarWriter(str(reference), mtime=meta(tmp_path / "s")["mtime"]) as writer:
        for image_id, (image, label) in enumerate(zip(images, labels)):
            writer.write({"__key__": key(image_id), "jpg": jpeg.encode(image), "cls": int(label)})
    [shard] = shards(tmp_path / "s")
    assert Path(shard).read_bytes() == reference.read_bytes()
    assert {name: meta(tmp_path / "s")[name] for name in ("codec", "shards")} == {"codec": "jpeg-90", "shards": 1}
    assert "shard_images" not in meta(tmp_path / "s")  # samples differ in size: the index places them


def test_webdataset_pipeline_decodes_a_jpeg_store_as_the_store_reads_it(tmp_path):
    """``wds.WebDataset(shards).decode("rgb8").to_tuple("jpg", "cls")``: the pixels and labels the store reads, in id
    order."""
    images, labels = make_batch(300)
    with open_store(f"{JPEG},shard_size=64KiB", tmp_path / "s") as store:
        store.store_many(images, labels)
        read, read_labels = store.read_many(300)
    assert len(shards(tmp_path / "s")) > 1
    samples = list(
        wds.WebDataset(shards(tmp_path / "s"), shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "cls")
    )
    assert [sample[0] for sample in samples] == [key(image_id) for image_id in range(300)]
    assert_bits_equal(np.stack([sample[1] for sample in samples]), read)
    assert [sample[2] for sample in samples] == read_labels.tolist() == labels.tolist()
    assert not np.array_equal(read, images)  # lossy: the store and WebDataset agree on the decoded JPEG


def test_encoded_shards_fill_up_to_the_shard_size(tmp_path):
    """Samples differ in size: each shard takes as many as fit in shard_size (at least one), the index places them."""
    images, labels = make_batch(400)
    with open_store(f"{METHOD}:codec=png,shard_size=64KiB", tmp_path / "s") as store:
        store.store_many(images, labels)
    paths = shards(tmp_path / "s")
    assert len(paths) == meta(tmp_path / "s")["shards"] > 1 and all(os.path.getsize(path) <= 65536 for path in paths)
    index = np.load(checkpoint(tmp_path / "s") / "index.npy")
    assert index.dtype == np.dtype("<i8") and index.shape == (400, 3)
    png = get_codec("png")
    for image_id in (0, 1, 399, *np.flatnonzero(np.diff(index[:, 0])) + 1):  # shard starts too
        shard, offset, length = index[image_id]
        data = Path(paths[shard]).read_bytes()
        assert data[offset : offset + 16] == f"{key(image_id)}.cls".encode()
        assert data[offset + 512 : offset + 1024].rstrip(b"\0") == str(labels[image_id]).encode()
        assert data[offset + 1024 : offset + 1040] == f"{key(image_id)}.png".encode()
        assert data[offset + 1536 : offset + 1536 + length] == png.encode(images[image_id])
    sizes = 1536 + -(-index[:, 2] // 512) * 512
    for shard, path in enumerate(paths):
        assert os.path.getsize(path) == archive_bytes(int(sizes[index[:, 0] == shard].sum()))


def test_bytes_per_image_of_jpeg_samples_against_raw_members(tmp_path):
    """At 32x32x3 a sample takes 1536 bytes of headers and label block plus the JPEG padded to 512: at quality 90
    the synthetic images' JPEGs (980-1040 bytes) take 2560 or 3072 bytes per image (2662 on average here, 35 % less
    than a raw member's 4096, though the JPEG itself is a third of the pixels' 3072)."""
    images, labels = make_batch(100)
    with open_store(JPEG, tmp_path / "s") as store:
        store.store_many(images, labels)
    lengths = np.load(checkpoint(tmp_path / "s") / "index.npy")[:, 2]
    assert lengths.tolist() == [len(get_codec("jpeg-90").encode(image)) for image in images]
    sizes = 1536 + -(-lengths // 512) * 512
    assert (
        set(sizes.tolist()) == {2560, 3072}
        and sizes.mean() < 0.7 * MemberLayout(np.dtype(np.uint8), (32, 32, 3), 0).size == 0.7 * 4096
    )


def test_folding_the_journal_copies_encoded_files(tmp_path, monkeypatch):
    """Single writes hold their JPEG in the journal; the fold writes those same bytes as samples (encoded once)."""
    import storage_impls.core.journal

    images, labels = make_batch(12)
    with open_store(JPEG, tmp_path / "s", checksum=True) as store:
        store.store_many(images[:10], labels[:10])
        store.store_single(images[10], 3, -5)
        before = store.read_many(10)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 1)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        folder = checkpoint(tmp_path / "s")
        store.store_single(images[11], 10, 2**63 - 1)
        store.store_single(images[11], 11, -(2**63))  # the journal (ids 3 and 10) is folded first
        assert checkpoint(tmp_path / "s") != folder
        assert_bits_equal(store.read_many(10)[0], before[0])
    samples = list(wds.WebDataset(shards(tmp_path / "s"), shardshuffle=False))
    jpeg = get_codec("jpeg-90")
    assert [sample["jpg"] for sample in samples] == [
        jpeg.encode(image) for image in [*images[:3], images[10], *images[4:10], images[11]]
    ]
    assert [int(sample["cls"]) for sample in samples] == [*labels[:3], -5, *labels[4:10], 2**63 - 1]
    with open_store(JPEG, tmp_path / "s", "r") as store:
        assert store.read_batch([11, 10, 3])[1].tolist() == [-(2**63), 2**63 - 1, -5]


def test_damaged_encoded_samples_name_shard_and_byte(tmp_path):
    """Headers and the label's text are compared with what the store writes for each id; the encoded bytes and the
    label's value are covered by checksum=True."""
    images, labels = make_batch(20)
    with open_store(JPEG, tmp_path / "s", checksum=True) as store:
        store.store_many(images, labels)
        expected = store.read_many(20)[0]
    path = Path(shards(tmp_path / "s")[0])
    index = np.load(checkpoint(tmp_path / "s") / "index.npy")
    pristine = path.read_bytes()
    shard = re.escape(str(path))
    cases = [
        (
            3,
            1024 + 5,
            rf"{shard}: the sample at byte {index[3, 1]} is not 000000000003.cls and .jpg",
        ),  # the .jpg member's name
        (
            4,
            512 + 25,
            rf"{shard}: the sample at byte {index[4, 1]} is not 000000000004",
        ),  # a byte after the label's text
        (5, 512, rf"{shard}: the sample at byte {index[5, 1]} is not 000000000005"),  # the label's first character
        (6, 1536 + 200, "image 6 fails its checksum"),
    ]  # inside the JPEG
    for image_id, offset, message in cases:
        data = bytearray(pristine)
        data[index[image_id, 1] + offset] = ord("x")
        path.write_bytes(bytes(data))
        with open_store(JPEG, tmp_path / "s", "r") as store:
            with pytest.raises(CorruptStoreError, match=message):
                store.read_many(20)
            with pytest.raises(CorruptStoreError, match=message):
                store.read_batch([0, image_id])
            assert_bits_equal(store.read_batch([19, 0])[0], expected[[19, 0]])
    path.write_bytes(pristine)
    np.save(checkpoint(tmp_path / "s") / "index.npy", index[:, :2].copy())
    with pytest.raises(
        CorruptStoreError, match="index.npy holds int64 of shape .20, 2., expected int64 of shape .20, 3."
    ):
        open_store(JPEG, tmp_path / "s", "r")


def test_durable_writes_fsync(tmp_path, monkeypatch):
    """durable=True fsyncs the shards, the index and the folders; the default fsyncs nothing."""
    calls = spy_fsync(monkeypatch)
    for durable in (False, True):
        calls.clear()
        with open_store(METHOD, tmp_path / str(durable), durable=durable) as store:
            store.store_many(*labelled_batch(range(3)))
            store.store_single(pixels_for(3), 3, 3)
        assert len(calls) >= 4 * durable and bool(calls) == durable


def test_member_layout_at_common_sizes():
    """Bytes per image of the one-member layout: 512 of tar header, 128 of .npy header, pixels, label, padding."""
    sizes = {
        shape: MemberLayout(np.dtype(np.uint8), shape, 0).size
        for shape in [(32, 32, 3), (28, 28), (64, 64, 3), (256, 256, 3)]
    }
    assert sizes == {(32, 32, 3): 4096, (28, 28): 1536, (64, 64, 3): 13312, (256, 256, 3): 197632}

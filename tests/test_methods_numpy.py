"""The numpy methods (npy-files, npz, npy-memmap): conformance and fault tests, plus their own:
files that plain numpy reads, damaged and foreign files, the journal, and snapshots."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from storage_impls import CorruptStoreError, MissingStoreError, open_store
from storage_impls.methods.npz import SHARD_BYTES
from tests.faults import FaultTests, labelled_batch, pixels_for, run_child, spy_fsync
from tests.test_storage import StoreTests, make_batch, random_layout


def checkpoint(directory: Path, method: str) -> Path:
    """The live checkpoint folder of a numpy-method store."""
    meta = json.loads((directory / f"{method.partition(':')[0]}.json").read_text().splitlines()[0])
    return directory / f"ckpt-{meta['token']}"


class NumpyStoreTests(StoreTests):
    """What the three numpy methods share beyond the conformance class."""

    @property
    def pointer(self) -> str:
        """The store's metadata file (a variant's is its method's)."""
        return f"{self.method.partition(':')[0]}.json"

    def test_metadata_records_dtype_shape_and_count(self, directory, filled):
        meta = json.loads((directory / self.pointer).read_text().splitlines()[0])
        assert (meta["dtype"], meta["image_shape"], meta["count"]) == ("|u1", [32, 32, 3], 10)

    def test_damaged_metadata_is_corrupt_and_store_many_repairs_it(self, directory, filled):
        store, images, labels = filled
        store.close()
        path = directory / self.pointer
        path.write_bytes(path.read_bytes().replace(b'"count":10', b'"count":11'))
        with pytest.raises(CorruptStoreError, match=f"{self.pointer}.*fails its checksum"):
            open_store(self.method, directory, "r")
        with open_store(self.method, directory) as writer:
            with pytest.raises(CorruptStoreError, match="store_many replaces"):
                writer.read_many(1)
            with pytest.raises(CorruptStoreError):
                writer.store_single(images[0], 0, 1)
            with pytest.raises(CorruptStoreError, match="store_many replaces"):
                writer.compact()
            writer.store_many(images[:3], labels[:3])
        with open_store(self.method, directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(3)[0], images[:3])
        assert len(list(directory.glob("ckpt-*"))) == 1

    def test_journal_is_folded_into_a_new_checkpoint(self, directory, store, monkeypatch):
        import storage_impls.core.journal

        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 5)
        monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
        images, labels = make_batch(23, (8, 8, 3))
        for image_id in range(23):
            store.store_single(images[image_id], image_id, int(labels[image_id]))
        assert len(list(directory.glob("ckpt-*"))) == 1 and len(store._journal.entries) == 4  # folded after 6, 12, 18
        with open_store(self.method, directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(23)[0], images)
            np.testing.assert_array_equal(reader.read_batch(np.arange(23)[::-1])[1], labels[::-1])

    def test_store_single_appends_to_the_journal_and_keeps_the_checkpoint(self, directory, filled):
        store, images, _ = filled
        folder = checkpoint(directory, self.method)
        before = sorted((path.name, path.stat().st_mtime_ns) for path in folder.iterdir())
        store.store_single(images[1], 4, 5)
        store.store_single(images[2], 10, 6)
        assert sorted((path.name, path.stat().st_mtime_ns) for path in folder.iterdir()) == before
        with open_store(self.method, directory, "r") as reader:
            assert reader.read_single(4)[1] == 5 and len(reader) == 11
            np.testing.assert_array_equal(reader.read_batch([10, 4, 0])[0], images[[2, 1, 0]])

    def test_foreign_file_in_the_metadata_slot_is_corrupt(self, directory):
        directory.mkdir()
        (directory / self.pointer).write_text('{"format": "something else"}\n')
        with pytest.raises(CorruptStoreError, match=self.pointer):
            open_store(self.method, directory, "r")

    def test_write_after_a_commit_by_another_handle_catches_up(self, directory, filled):
        store, images, labels = filled
        with open_store(self.method, directory) as other:
            other.store_many(images[:4], labels[:4])
        store.store_single(images[9], 4, 99)  # appends to the other handle's 4 images
        assert len(store) == 5
        with open_store(self.method, directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(5)[0], np.concatenate([images[:4], images[9:]]))


class TestNpyMemmap(NumpyStoreTests):
    method = "npy-memmap"

    def corrupt(self, directory):
        path = checkpoint(directory, self.method) / "images.npy"
        path.write_bytes(path.read_bytes()[:-1])
        return CorruptStoreError

    def ecosystem_read(self, directory):
        folder = checkpoint(directory, self.method)
        return np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy")

    def test_files_are_plain_npy_and_load_with_a_memory_map(self, directory, filled):
        _, images, labels = filled
        folder = checkpoint(directory, self.method)
        mapped = np.load(folder / "images.npy", mmap_mode="r")
        assert isinstance(mapped, np.memmap) and mapped.dtype == np.uint8
        np.testing.assert_array_equal(mapped, images)
        np.testing.assert_array_equal(np.load(folder / "labels.npy"), labels)

    def test_float32_chips_load_with_np_load(self, directory, store):
        images, labels = random_layout(4, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        mapped = np.load(checkpoint(directory, self.method) / "images.npy", mmap_mode="r")
        assert mapped.dtype == np.dtype("<f4") and mapped.tobytes() == images.tobytes()

    def test_a_flipped_pixel_fails_its_checksum(self, directory):
        images, labels = make_batch(10)
        with open_store(self.method, directory, checksum=True) as store:
            store.store_many(images, labels)
        path = checkpoint(directory, self.method) / "images.npy"
        data = bytearray(path.read_bytes())
        data[-images[0].nbytes * 3] ^= 1  # image 7
        path.write_bytes(bytes(data))
        with open_store(self.method, directory, "r") as store:
            with pytest.raises(CorruptStoreError, match="image 7 fails its checksum"):
                store.read_batch([1, 7])
            np.testing.assert_array_equal(store.read_single(6)[0], images[6])

    def test_other_array_in_images_npy_is_corrupt(self, directory, filled):
        path = checkpoint(directory, self.method) / "images.npy"
        path.unlink()
        np.save(path, np.zeros((10, 32, 32, 3), np.float32))
        with pytest.raises(CorruptStoreError, match="images.npy holds float32 of shape .10, 32, 32, 3.*expected uint8"):
            open_store(self.method, directory, "r")

    def test_reader_keeps_its_snapshot_across_commits(self, directory, filled):
        store, images, labels = filled
        reader = open_store(self.method, directory, "r")
        store.store_many(images[::-1].copy(), labels[::-1].copy())
        np.testing.assert_array_equal(reader.read_many(10)[0], images)
        np.testing.assert_array_equal(reader.read_batch([3, 1])[0], images[[3, 1]])
        reader.close()

    def test_full_disk_never_maps_unallocated_pages(self, tmp_path):
        """store_many on a full disk raises NoSpaceError in a process that lives (no SIGBUS from the map)."""
        from tests.faults import small_fs_unavailable

        if reason := small_fs_unavailable():
            pytest.skip(reason)
        mount = tmp_path / "small"
        mount.mkdir()
        result = run_child(
            f"""
            import numpy as np
            from storage_impls import NoSpaceError, open_store
            with open_store("npy-memmap", {str(mount / 'store')!r}) as store:
                try:
                    store.store_many(np.zeros((300, 64, 64, 3), np.uint8), np.arange(300))
                except NoSpaceError as error:
                    print("no space:", error)
        """,
            small_fs=(mount, "2m"),
        )
        assert result.returncode == 0 and "no space" in result.stdout, result.stderr


class TestNpz(NumpyStoreTests):
    method = "npz"

    def corrupt(self, directory):
        path = checkpoint(directory, self.method) / "shard-000000.npz"
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
        return CorruptStoreError

    def ecosystem_read(self, directory):
        images, labels = [], []
        for path in sorted(checkpoint(directory, self.method).glob("shard-*.npz")):
            with np.load(path) as shard:
                images.append(shard["images"])
                labels.append(shard["labels"])
        return np.concatenate(images), np.concatenate(labels)

    def test_shards_load_with_np_load(self, directory, store):
        images, labels = make_batch(700, (64, 64, 3))
        store.store_many(images, labels)
        per_shard = SHARD_BYTES // (64 * 64 * 3)
        shards = sorted(checkpoint(directory, self.method).glob("shard-*.npz"))
        assert len(shards) == -(-700 // per_shard)
        with np.load(shards[1]) as shard:
            np.testing.assert_array_equal(shard["images"], images[per_shard : 2 * per_shard])
            np.testing.assert_array_equal(shard["labels"], labels[per_shard : 2 * per_shard])
        assert zipfile.ZipFile(shards[0]).getinfo("images.npy").compress_type == zipfile.ZIP_DEFLATED
        ids = np.array([699, 0, per_shard, 5, per_shard + 1, 699])
        np.testing.assert_array_equal(store.read_batch(ids)[0], images[ids])

    def test_reader_of_a_replaced_store_is_told_to_open_again(self, directory, filled):
        store, images, labels = filled
        reader = open_store(self.method, directory, "r")
        store.store_many(images[::-1].copy(), labels[::-1].copy())
        with pytest.raises(MissingStoreError, match="open it again"):
            reader.read_many(10)
        reader.close()


class TestNpyFiles(NumpyStoreTests):
    method = "npy-files"

    def corrupt(self, directory):
        (checkpoint(directory, self.method) / "3.npy").write_bytes(b"not an npy file")
        return CorruptStoreError

    def ecosystem_read(self, directory):
        folder = checkpoint(directory, self.method)
        labels = np.load(folder / "labels.npy")
        return np.stack([np.load(folder / f"{image_id}.npy") for image_id in range(len(labels))]), labels

    def test_each_image_is_an_npy_file(self, directory, filled):
        _, images, labels = filled
        folder = checkpoint(directory, self.method)
        np.testing.assert_array_equal(np.load(folder / "7.npy"), images[7])
        np.testing.assert_array_equal(np.load(folder / "labels.npy"), labels)
        assert len(list(folder.glob("*.npy"))) == 11

    @pytest.mark.parametrize(
        ("damage", "message"),
        [
            (lambda path: path.unlink(), "4.npy is missing"),
            (lambda path: path.write_bytes(path.read_bytes() + b"x"), "4.npy is 3201 bytes"),
            (lambda path: np.save(path, np.zeros((32, 32), np.uint8)), r"4.npy holds uint8 of shape \(32, 32\)"),
        ],
        ids=["missing", "trailing-byte", "other-shape"],
    )
    def test_bad_image_file_names_the_file(self, directory, filled, damage, message):
        damage(checkpoint(directory, self.method) / "4.npy")
        with open_store(self.method, directory, "r") as store:
            with pytest.raises((CorruptStoreError, MissingStoreError), match=message):
                store.read_batch([1, 4])
            np.testing.assert_array_equal(store.read_single(3)[0], filled[1][3])

    @pytest.mark.parametrize("character", "{()}")
    def test_header_with_a_flipped_bracket_is_corrupt(self, directory, filled, character):
        """numpy parses a .npy header as Python: an unbalanced bracket raised tokenize.TokenError, untyped."""
        path = checkpoint(directory, self.method) / "4.npy"
        data = bytearray(path.read_bytes())
        data[data.index(character.encode())] ^= 0xFF
        path.write_bytes(bytes(data))
        with open_store(self.method, directory, "r") as store:
            with pytest.raises(CorruptStoreError, match="4.npy is not a readable .npy file"):
                store.read_batch([1, 4])


class TestNpyMemmapFaults(FaultTests):
    method = "npy-memmap"


class TestNpzFaults(FaultTests):
    method = "npz"
    snapshot_can_expire = True


class TestNpyFilesFaults(FaultTests):
    method = "npy-files"
    snapshot_can_expire = True


def test_durable_writes_fsync(tmp_path, monkeypatch):
    """durable=True fsyncs the files it writes and the folders it renames into; the default fsyncs nothing."""
    calls = spy_fsync(monkeypatch)
    for method in ("npy-files", "npz", "npy-memmap"):
        for durable in (False, True):
            calls.clear()
            with open_store(method, tmp_path / f"{method}-{durable}", durable=durable) as store:
                store.store_many(*labelled_batch(range(3)))
                store.store_single(pixels_for(3), 3, 3)
            assert bool(calls) == durable, method


class TestNpyMemmapWillneed(TestNpyMemmap):
    """Every npy-memmap test again with the per-batch prefetch (``advice=willneed``)."""

    method = "npy-memmap:advice=willneed"

"""The rocksdb method: conformance and fault tests, plus its own: plain rocksdict reads the store, variants
and their recorded settings, logs cut short (the marks), wrong-method opens, and the write session."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage_impls.registry import _REGISTRY

rocksdict = pytest.importorskip("rocksdict", reason=f"rocksdb needs rocksdict: {_REGISTRY['rocksdb'].install_hint}")

from storage_impls import CorruptStoreError, MissingStoreError, get_store_class, open_store  # noqa: E402
from storage_impls.core.records import HEADER, KEY, parse_layout  # noqa: E402
from tests.faults import REPO, FaultTests, labelled_batch, pixels_for  # noqa: E402
from tests.test_storage import CodecTests, StoreTests, make_batch, random_layout  # noqa: E402


def meta(directory: Path) -> dict:
    return json.loads((directory / "rocksdb.json").read_text().splitlines()[0])


def database(directory: Path) -> Path:
    """The live database folder of a rocksdb store."""
    return directory / f"db-{meta(directory)['token']}"


class TestRocksdb(CodecTests, StoreTests):
    method = "rocksdb"

    def corrupt(self, directory):
        sst = max(database(directory).glob("*.sst"), key=lambda path: path.stat().st_size)
        data = bytearray(sst.read_bytes())
        data[len(data) // 3] ^= 0xFF  # inside a data block: its CRC fails
        sst.write_bytes(bytes(data))
        return CorruptStoreError

    def test_plain_rocksdict_reads_float32_chips(self, directory, store):
        images, labels = random_layout(3, np.float32, (3, 16, 16))
        store.store_many(images, labels)
        store.close()
        db = rocksdict.Rdict(
            str(database(directory)), rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
        )
        try:
            value = db[KEY.pack(1)]
        finally:
            db.close()
        layout = parse_layout(value)
        assert (layout.dtype, layout.shape) == ("<f4", (3, 16, 16))
        assert value[HEADER.size : HEADER.size + layout.pixel_bytes] == images[1].tobytes()

    def test_plain_rocksdict_reads_the_store(self, directory, filled):
        store, images, labels = filled
        store.store_single(images[3], 10, 77)
        store.close()
        db = rocksdict.Rdict(
            str(database(directory)), rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
        )
        try:
            keys, values = zip(*db.items())
        finally:
            db.close()
        assert list(keys) == [KEY.pack(image_id) for image_id in range(11)]
        for image_id, value in enumerate(values):
            layout = parse_layout(value)
            assert (layout.dtype, layout.shape) == ("|u1", (32, 32, 3))
            pixels = np.frombuffer(value, np.uint8, layout.pixel_bytes, HEADER.size).reshape(layout.shape)
            np.testing.assert_array_equal(pixels, images[3] if image_id == 10 else images[image_id])
            assert HEADER.unpack_from(value)[-1] == (77 if image_id == 10 else labels[image_id])

    def test_settings_are_recorded_and_used_by_later_opens(self, directory):
        images, labels = make_batch(50)
        with open_store("rocksdb:compression=zstd,bloom_bits=4,block_cache=1MiB", directory) as store:
            store.store_many(images, labels)
        assert {key: meta(directory)[key] for key in ("compression", "bloom_bits", "block_cache")} == {
            "compression": "zstd",
            "bloom_bits": 4,
            "block_cache": 1 << 20,
        }
        with open_store("rocksdb", directory) as store:  # no options given: the store's are kept
            store.store_single(images[0], 50, 1)
            store.store_many(images[:20], labels[:20])
            np.testing.assert_array_equal(store.read_batch([19, 0])[0], images[[19, 0]])
        assert meta(directory)["compression"] == "zstd"
        options_file = max(database(directory).glob("OPTIONS-*"))
        assert "kZSTD" in options_file.read_text()

    def test_zstd_compresses(self, tmp_path):
        images = np.zeros((500, 32, 32, 3), np.uint8)
        usage = {}
        for spec in ("rocksdb", "rocksdb:compression=zstd"):
            with open_store(spec, tmp_path / spec.replace(":", "_")) as store:
                store.store_many(images, np.arange(500))
                np.testing.assert_array_equal(store.read_many(500)[0], images)
                usage[spec] = store.disk_usage().apparent
        assert usage["rocksdb:compression=zstd"] * 4 < usage["rocksdb"]

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("rocksdb:compression=brotli", "compression='brotli' is not allowed; use none, lz4, zstd"),
            ("rocksdb:bloom_bits=many", "bloom_bits='many' is not allowed; use an integer 0..64"),
            ("rocksdb:block_cache=lots", "block_cache='lots' is not allowed; use a size in bytes"),
            ("rocksdb:cache=1MiB", "unknown option 'cache'; rocksdb takes compression"),
        ],
    )
    def test_unknown_option_values_are_refused(self, spec, message):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            get_store_class(spec)

    def test_keyword_option_values_are_checked(self, directory):
        with pytest.raises(ValueError, match="compression='snappy' is not allowed"):
            open_store("rocksdb", directory, compression="snappy")

    def test_log_cut_short_is_corrupt_not_an_older_state(self, directory, filled):
        """RocksDB reads a MANIFEST that lost its last records as a crash (an older state); the marks catch it."""
        store, images, _ = filled
        store.store_single(images[0], 10, 5)
        store.store_single(images[1], 11, 6)
        store.close()
        manifest = max(database(directory).glob("MANIFEST-*"))
        data = manifest.read_bytes()
        manifest.write_bytes(data[: len(data) // 2])
        with pytest.raises(CorruptStoreError, match="cut short|damaged"):
            with open_store(self.method, directory, "r") as reader:
                reader.read_many(len(reader))
        with open_store(self.method, directory) as writer:  # a writer sees it too, and store_many repairs
            with pytest.raises(CorruptStoreError):
                writer.store_single(images[2], 0, 1)
            writer.store_many(images[:2], np.array([1, 2]))
        with open_store(self.method, directory, "r") as reader:
            np.testing.assert_array_equal(reader.read_many(2)[0], images[:2])

    def test_writer_catches_up_with_a_killed_writers_commit(self, directory, filled):
        """A put committed by a writer killed before it raised the marks is found by the next writer."""
        store, images, labels = filled
        recorded = (directory / "rocksdb.json").read_bytes()
        store.store_single(images[5], 10, 50)
        (directory / "rocksdb.json").write_bytes(recorded)  # as if killed between the put and the marks
        with open_store(self.method, directory) as other:
            assert len(other) == 11
            other.store_single(images[6], 11, 60)
            assert len(other) == 12
        with open_store(self.method, directory, "r") as reader:
            assert reader.read_batch([10, 11])[1].tolist() == [50, 60]

    def test_single_writes_merge_their_runs_into_the_oldest_every_cycle(self, directory, store):
        """Universal compaction keeps at most L0_COMPACT_FILES sorted runs, and merges them all into the oldest once
        per single_write_cycle() (upkeeps counts those merges); every write stays readable, by plain rocksdict too."""
        from storage_impls.methods.rocksdb.format import L0_COMPACT_FILES

        images, labels = make_batch(240, (8, 8))
        store.store_many(images[:200], labels[:200])
        cycle, rng = store.single_write_cycle(), np.random.default_rng(1)
        expected = {image_id: image_id for image_id in range(200)}
        for write in range(3 * cycle + 2):
            image_id = len(store) if write % 2 == 0 else int(rng.integers(0, len(store)))
            source = 200 + write % 40
            store.store_single(images[source], image_id, int(labels[source]))
            expected[image_id] = source
            db = rocksdict.Rdict(
                str(database(directory)), rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
            )
            files = db.live_files()
            db.close()
            runs = sum(1 for file in files if file["level"] == 0) + len({file["level"] for file in files} - {0})
            assert runs <= L0_COMPACT_FILES, files
        assert store.upkeeps >= 2, (store.upkeeps, cycle)
        ids = np.array(sorted(expected))
        with open_store(self.method, directory, "r") as reader:
            read, read_labels = reader.read_batch(ids)
        np.testing.assert_array_equal(read, images[[expected[i] for i in ids]])
        np.testing.assert_array_equal(read_labels, labels[[expected[i] for i in ids]])

    def test_reader_keeps_its_snapshot_across_commits(self, directory, filled):
        store, images, labels = filled
        reader = open_store(self.method, directory, "r")
        store.store_many(images[::-1].copy(), labels[::-1].copy())
        store.store_single(images[0], 3, 1)
        assert not (directory / f"db-{reader._meta['token']}").exists()  # its files are open, not in the folder
        np.testing.assert_array_equal(reader.read_many(10)[0], images)
        np.testing.assert_array_equal(reader.read_batch([3, 1])[1], labels[[3, 1]])
        reader.close()

    def test_readers_take_no_lock(self, directory, filled):
        """A reader opened while a writer session holds RocksDB's own LOCK (and ours) opens and reads."""
        store, images, _ = filled
        session = rocksdict.Rdict(str(database(directory)), rocksdict.Options(raw_mode=True))
        try:
            with open_store(self.method, directory, "r") as reader:
                np.testing.assert_array_equal(reader.read_many(10)[0], images)
        finally:
            session.close()


@pytest.mark.parametrize(("writer", "reader"), [("lmdb", "rocksdb"), ("npz", "rocksdb"), ("hdf5", "rocksdb")])
def test_another_methods_store_is_refused_by_name(tmp_path, writer, reader):
    pytest.importorskip({"lmdb": "lmdb", "hdf5": "h5py", "npz": "numpy"}[writer])
    with open_store(writer, tmp_path / "s") as store:
        store.store_many(*labelled_batch(range(3)))
    for mode in ("r", "a"):
        with pytest.raises(CorruptStoreError, match=f"holds a {writer} store .*open it with method '{writer}'"):
            open_store(reader, tmp_path / "s", mode)


class TestRocksdbFaults(FaultTests):
    method = "rocksdb"


def test_damage_inside_compressed_blocks(tmp_path):
    """The damage test of FaultTests on the zstd variant: flips inside compressed blocks."""
    case = TestRocksdbFaults()
    case.method = "rocksdb:compression=zstd"
    case.test_damaged_files_give_typed_errors_never_wrong_data(tmp_path)


def test_durable_store_single_syncs_the_log(tmp_path, monkeypatch):
    """durable=True puts with WriteOptions.sync; the default does not."""
    import storage_impls.methods.rocksdb.store

    created = []
    real = rocksdict.WriteOptions
    monkeypatch.setattr(
        storage_impls.methods.rocksdb.store.rocksdict, "WriteOptions", lambda: created.append(real()) or created[-1]
    )
    for durable in (False, True):
        with open_store("rocksdb", tmp_path / str(durable), durable=durable) as store:
            store.store_many(*labelled_batch(range(3)))
            store.store_single(pixels_for(3), 3, 3)
    assert [options.sync for options in created] == [False, True]


RACE_IDS, RACE_SECONDS, RACE_READERS = 48, 8.0, 2


def race_labels(generation: int) -> np.ndarray:
    """The labels of the state after ``generation``: write g > RACE_IDS put label g at id g % RACE_IDS (the
    first RACE_IDS generations are the first store_many's labels 0..RACE_IDS-1)."""
    ids = np.arange(RACE_IDS)
    last = generation - (generation - ids) % RACE_IDS
    return np.where(last >= RACE_IDS, last, ids)


def race_writer(directory: str, seconds: float) -> int:
    """Single-write sessions (a store_many now and then) for ``seconds`` from when this process is ready (its
    imports done: on a loaded machine they took the whole run when timed from the parent); the last generation."""
    generation, until = RACE_IDS - 1, time.time() + seconds
    with open_store("rocksdb", directory) as store:
        while time.time() < until:
            generation += 1
            if generation % 97 == 0:  # a database switch
                store.store_many(*labelled_batch(race_labels(generation), (4, 4)))
            else:
                store.store_single(pixels_for(generation, (4, 4)), generation % RACE_IDS, generation)
    return generation


def race_reader(directory: str, seconds: float) -> tuple[int, list[str]]:
    """Fresh read-only handles for ``seconds``: each must read one committed state, none older than the last; the
    handles opened (told to open again included) and what was wrong."""
    handles, seen, wrong, until = 0, 0, [], time.time() + seconds
    while time.time() < until and len(wrong) < 3:
        handles += 1
        try:
            with open_store("rocksdb", directory, "r") as store:
                images, labels = store.read_batch(np.arange(RACE_IDS))
        except MissingStoreError:  # "open it again": a commit removed files of this handle's snapshot
            continue
        newest = int(labels.max())
        if newest < seen or not np.array_equal(labels, race_labels(newest)):
            wrong.append(f"handle {handles}: labels {labels.tolist()}, state {newest}, previous handle's {seen}")
        elif not np.array_equal(images, labelled_batch(labels, (4, 4))[0]):
            wrong.append(f"handle {handles}: an image beside another label")
        seen = max(seen, newest)
    return handles, wrong


def test_readers_opening_during_single_writes_read_one_newer_state(tmp_path):
    """A writer's single-write sessions (and database switches) and readers opening handle after handle, in
    processes: every handle reads one committed state, never older than the one the reader's previous handle
    read (the soak test's check, on the race between a read-only open and a write session's close). With
    read-only instances opened in the store's folder itself it failed 5 runs of 5 (a handle one write behind
    its reader's previous one: test_a_write_log_gone_after_the_listing_is_an_error_not_an_older_state)."""
    directory = str(tmp_path / "s")
    with open_store("rocksdb", directory) as store:
        store.store_many(*labelled_batch(range(RACE_IDS), (4, 4)))
    with multiprocessing.get_context("spawn").Pool(RACE_READERS + 1) as pool:
        writer = pool.apply_async(race_writer, (directory, RACE_SECONDS))
        results = pool.starmap(race_reader, [(directory, RACE_SECONDS)] * RACE_READERS)
        written = writer.get(timeout=60)
    wrong = [message for _, messages in results for message in messages]
    assert not wrong, wrong
    assert written > RACE_IDS and sum(handles for handles, _ in results) > 10, (written, results)


def test_a_write_log_gone_after_the_listing_is_an_error_not_an_older_state(tmp_path, monkeypatch):
    """The soak's stale view, step by step: a read-only open reads the MANIFEST, then finds the write-ahead logs
    by listing the folder. A writer's session that closes in between flushes its put into an SST file the
    MANIFEST as read does not name, and deletes the log: an open in the store's folder finds no log and reads
    the state before the put, silently. The reader's private folder of links is made from one listing taken
    before RocksDB reads anything, so the log it lists and then misses is an error (and the store opens again)."""
    from storage_impls.methods.rocksdb import format as rocksdb_format

    directory = tmp_path / "s"
    with open_store("rocksdb", directory) as store:
        store.store_many(*labelled_batch(range(4)))
    folder, settings = database(directory), {name: meta(directory)[name] for name in rocksdb_format.OPTIONS}
    session = (  # a session killed after its put: the value only in the log, the MANIFEST as before a flush
        "import json, os, sys; from pathlib import Path; from storage_impls.methods.rocksdb.format import open_db; "
        "db = open_db(Path(sys.argv[1]), json.loads(sys.argv[2]), read_only=False); "
        "db.put(bytes(8), b'new'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", session, str(folder), json.dumps(settings)], cwd=REPO, check=True, timeout=60)
    logs = [path for path in folder.iterdir() if re.fullmatch(r"\d+\.log", path.name)]
    logged = rocksdb_format.open_db(folder, settings, read_only=True)
    assert logs and logged[bytes(8)] == b"new"
    logged.close()
    unlogged = tmp_path / "unlogged"  # the folder as the racing open lists it: the log gone
    shutil.copytree(folder, unlogged, ignore=lambda _, names: [name for name in names if name.endswith(".log")])
    plain = rocksdict.Rdict(
        str(unlogged), rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
    )
    assert plain[bytes(8)] != b"new"  # the state before the put, and no error
    plain.close()
    listing = rocksdb_format.checked_names

    def listed_then_closed(path: Path) -> list[str]:
        names = listing(path)
        for log in logs:  # the session closes right after the reader's listing: its log goes
            log.unlink()
        return names

    monkeypatch.setattr(rocksdb_format, "checked_names", listed_then_closed)
    with pytest.raises(Exception, match="No such file") as raised:
        rocksdb_format.open_db(folder, settings, read_only=True)
    assert rocksdb_format.is_rocks_error(raised.value)

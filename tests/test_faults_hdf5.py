"""Fault tests of the HDF5 method: the shared ones (tests/faults.py) plus HDF5's own: a full disk
while HDF5 writes its metadata, readers holding images.h5 during commits, handles catching up
with other writers, every metadata byte damaged, per-image checksums, kills during compaction,
stale temporaries and journals."""

from __future__ import annotations

import errno
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from storage_impls import CorruptStoreError, open_store
from storage_impls.core.journal import RECORD
from tests.faults import (
    CHILD_TIMEOUT,
    DAMAGE_CHILD,
    KILLS,
    REPO,
    FaultTests,
    check_consistent,
    kill_after,
    labelled_batch,
    leftovers,
    pixels_for,
    run_child,
    small_fs_unavailable,
)


class TestHdf5Faults(FaultTests):
    method = "hdf5"


class TestHdf5PngFaults(FaultTests):
    """Encoded images: ``encoded`` bytes and ``offsets`` in images.h5, journal records of PNG bytes."""

    method = "hdf5:codec=png"


class TestHdf5LzfFaults(FaultTests):
    """Chunked, lzf-compressed images that HDF5 writes itself (through FailSafeFile) and h5py reads."""

    method = "hdf5:compression=lzf,chunks=4"


LZF = TestHdf5LzfFaults.method


def raw_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """(offset, end) of each dataset's bytes in a checkpoint file; a chunked dataset's by chunk, ``name[i]``."""
    ranges = {}
    with h5py.File(path, "r") as file:
        for name in file:
            dataset = file[name].id
            if dataset.get_offset() is not None:
                ranges[name] = (dataset.get_offset(), dataset.get_offset() + dataset.get_storage_size())
                continue
            for index in range(dataset.get_num_chunks()):
                info = dataset.get_chunk_info(index)
                ranges[f"{name}[{index}]"] = (info.byte_offset, info.byte_offset + info.size)
    return ranges


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# -- a full disk --------------------------------------------------------------------
@pytest.mark.parametrize(("method", "reserve"), [("hdf5", "default"), ("hdf5", "none"), (LZF, "default")])
def test_full_disk_while_hdf5_writes_metadata_or_data(tmp_path, method, reserve):
    """store_many, a compaction and a fresh store's first store_single on a disk left with 0 to 40 KiB:
    NoSpaceError (ENOSPC), contents as before, no temporaries, clean close and exit. ``none`` lifts the
    free-space check so that HDF5's own metadata writes meet the full disk; chunked (lzf) images are written by
    HDF5 itself, metadata and chunks, with no free-space check."""
    reason = small_fs_unavailable()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "small"
    mount.mkdir()
    result = run_child(
        f"""
        import json, os
        import storage_impls.methods.hdf5.format, storage_impls.core.journal
        from pathlib import Path
        from storage_impls import NoSpaceError, open_store
        from tests.faults import check_consistent, labelled_batch, leftovers, pixels_for
        if {reserve!r} == "none":
            storage_impls.methods.hdf5.format.METADATA_RESERVE = 0
        # every store_single folds the journal first
        storage_impls.core.journal.COMPACT_MIN_RECORDS, storage_impls.core.journal.COMPACT_FRACTION = 0, 10**9
        mount, report = Path({str(mount)!r}), []
        for leave in (0, 2048, 4096, 8192, 12288, 40960):
            for path in mount.iterdir():
                [p.unlink() for p in path.iterdir()] if path.is_dir() else path.unlink()
            store, fresh = open_store({method!r}, mount / "store"), open_store({method!r}, mount / "fresh")
            store.store_many(*labelled_batch(range(30)))
            store.store_single(pixels_for(7), 30, 7)
            free = os.statvfs(mount)
            with open(mount / "filler", "wb") as filler:
                filler.write(b"x" * max(0, free.f_bavail * free.f_frsize - leave))
            outcome = {{}}
            for name, write in (("store_many", lambda: store.store_many(*labelled_batch(range(100, 400)))),
                                ("store_single", lambda: store.store_single(pixels_for(8), 31, 8)),
                                ("fresh", lambda: fresh.store_single(pixels_for(9), 0, 9))):
                try:
                    write()
                    outcome[name] = "fit"
                except NoSpaceError as error:
                    outcome[name] = [error.errno, str(error)]
            outcome["after"] = check_consistent(store)
            outcome["fresh_files"] = sorted(os.listdir(mount / "fresh"))
            store.close()
            fresh.close()
            with open_store({method!r}, mount / "store", "r") as reader:
                outcome["reopened"] = check_consistent(reader)
            outcome["leftovers"] = leftovers(mount)
            report.append(outcome)
        print(json.dumps(report))
    """,
        small_fs=(mount, "1m"),
    )
    assert result.returncode == 0, result.stderr
    for outcome in json.loads(result.stdout):
        assert outcome["store_many"][0] == errno.ENOSPC and "no space left" in outcome["store_many"][1], outcome
        assert outcome["leftovers"] == [], outcome
        assert outcome["after"] == outcome["reopened"] == (32 if outcome["store_single"] == "fit" else 31), outcome
        assert outcome["fresh"] == "fit" or (
            outcome["fresh"][0] == errno.ENOSPC and outcome["fresh_files"] == [".writer.lock"]
        ), outcome
    assert json.loads(result.stdout)[0]["fresh"] != "fit"


# -- readers during commits; handles catch up before writing ---------------------------
def test_reader_holding_images_h5_never_fails_a_commit(tmp_path):
    """A process holding images.h5 open with h5py (HDF5's shared lock) and a store handle: every
    store_many and store_single succeeds, the reader keeps its snapshot, a new handle sees the writes."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(20)))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, h5py
        from storage_impls import open_store
        from tests.faults import check_consistent
        file = h5py.File({str(directory / "images.h5")!r}, "r")
        store = open_store("hdf5", {str(directory)!r}, "r")
        print("holding", flush=True)
        sys.stdin.readline()
        print(check_consistent(store), len(file["labels"]), flush=True)
    """),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        with open_store("hdf5", directory) as store:
            for step in range(3):
                store.store_many(*labelled_batch(np.arange(10 + step) + 100 * step))
                store.store_single(pixels_for(7), len(store), 7)
                assert check_consistent(store) == 11 + step
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "20 20\n"
    finally:
        holder.kill()
        holder.wait()
    with open_store("hdf5", directory, "r") as store:
        assert check_consistent(store) == 13


def test_handle_catches_up_with_other_writers_before_writing(tmp_path):
    """A handle never acts on a store it did not read: after another handle's store_many, appends and
    compactions, its store_single sees the new length and keeps the other writes."""
    directory = tmp_path / "store"
    first, second = open_store("hdf5", directory), open_store("hdf5", directory)
    first.store_many(*labelled_batch(range(10)))
    assert len(second) == 0
    second.store_single(pixels_for(50), 10, 50)  # appends after the 10 it had not seen
    second.store_many(*labelled_batch(range(100, 103)))
    with pytest.raises(ValueError, match="gap"):
        first.store_single(pixels_for(51), 10, 51)
    first.store_single(pixels_for(51), 3, 51)
    second.store_single(pixels_for(52), 1, 52)
    first.store_single(pixels_for(53), 4, 53)
    expected = [100, 52, 102, 51, 53]
    for handle in (first, second):
        handle.store_single(pixels_for(expected[0]), 0, expected[0])
        assert check_consistent(handle) == 5
        assert handle.read_many(5)[1].tolist() == expected
    first.close()
    second.close()


def test_reader_keeps_its_snapshot_through_commits(tmp_path):
    """What a reader sees during and after commits: the checkpoint and journal records committed when it opened."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as writer:
        writer.store_many(*labelled_batch(range(10)))
        writer.store_single(pixels_for(40), 2, 40)
        reader = open_store("hdf5", directory, "r")
        writer.store_single(pixels_for(41), 3, 41)
        writer.store_single(pixels_for(42), 10, 42)
        assert reader.read_many(10)[1].tolist() == [0, 1, 40, *range(3, 10)]
        writer.store_many(*labelled_batch(range(200, 205)))
        assert check_consistent(reader) == 10 and reader.read_many(10)[1].tolist() == [0, 1, 40, *range(3, 10)]
        reader.close()


# -- damaged files -----------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "checksum"), [("hdf5", False), ("hdf5", True), ("hdf5:codec=png", False), (LZF, False), (LZF, True)]
)
def test_damaged_metadata_and_journal_never_read_as_other_data(tmp_path, method, checksum):
    """Every byte of images.h5's metadata and of the journal flipped (even offsets in one run, odd in the
    other), each file truncated at many sizes, read in a child that must live: a typed error or the
    stored data. Without checksums the raw pixel (or encoded, or compressed chunks') and label bytes are not
    flipped (nothing could tell), but an encoded store's ``offsets`` are (the PNGs they would misplace do not
    decode), and a chunked store's chunk index is (metadata); with checksums, a sample of all of those too."""
    pristine = tmp_path / "pristine"
    with open_store(method, pristine, checksum=checksum) as store:
        store.store_many(*labelled_batch(range(12)))
        store.store_single(pixels_for(99), 3, 99)
        store.store_single(pixels_for(98), 12, 98)
    raw = {name: extent for name, extent in raw_ranges(pristine / "images.h5").items() if name != "offsets" or checksum}
    cases = []
    for name in ("images.h5", "images.h5.journal"):
        size = (pristine / name).stat().st_size
        cases += [
            (name, "truncate", length)
            for length in sorted({0, 1, 47, 512, 2048, 4096, size // 2, size - 48, size - 8, size - 1})
            if 0 <= length < size
        ]
        offsets = [
            offset
            for offset in range(checksum, size, 2)  # even bytes in one run, odd in the other
            if name != "images.h5" or not any(start <= offset < end for start, end in raw.values())
        ]
        if checksum and name == "images.h5":
            offsets += random.Random(1).sample([o for start, end in raw.values() for o in range(start, end)], 200)
        cases += [(name, "flip", offset) for offset in offsets]
    result = run_child(
        DAMAGE_CHILD.format(method=method, pristine=str(pristine), work=str(tmp_path / "work"), cases=cases),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    bad = [(case, outcome) for case, outcome in zip(cases, outcomes) if outcome.startswith(("WRONG", "UNTYPED"))]
    assert not bad, f"{len(bad)} of {len(cases)} damaged stores misbehaved: {bad[:10]}"
    assert sum(outcome.startswith("typed") for outcome in outcomes) > len(cases) // 2


@pytest.mark.parametrize("damage", ["superblock", "truncated", "journal"])
def test_damaged_store_opens_for_repair(tmp_path, damage):
    """Mode "a" opens a damaged store: reads and store_single raise CorruptStoreError, store_many repairs it."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(10)))
        store.store_single(pixels_for(70), 10, 70)
    if damage == "superblock":
        flip_bit(directory / "images.h5", 20)
    elif damage == "truncated":
        (directory / "images.h5").write_bytes((directory / "images.h5").read_bytes()[:-100])
    else:
        flip_bit(directory / "images.h5.journal", (directory / "images.h5.journal").stat().st_size - 5)
    with pytest.raises(CorruptStoreError):
        open_store("hdf5", directory, "r")
    with open_store("hdf5", directory) as store:
        for call in (
            lambda: store.read_single(0),
            lambda: store.read_batch([0]),
            lambda: len(store),
            lambda: store.store_single(pixels_for(1), 0, 1),
        ):
            with pytest.raises(CorruptStoreError, match="store_many replaces"):
                call()
        store.store_many(*labelled_batch(range(300, 305)))
        store.store_single(pixels_for(71), 5, 71)
        assert check_consistent(store) == 6
    with open_store("hdf5", directory, "r") as store:
        assert check_consistent(store) == 6


# -- checksums -----------------------------------------------------------------------
def test_checksum_catches_a_flipped_bit_with_the_image_id(tmp_path):
    directory = tmp_path / "store"
    with open_store("hdf5", directory, checksum=True) as store:
        store.store_many(*labelled_batch(range(20)))
    images_at = raw_ranges(directory / "images.h5")["images"][0]
    labels_at = raw_ranges(directory / "images.h5")["labels"][0]
    flip_bit(directory / "images.h5", images_at + 7 * int(np.prod((8, 8, 3))) + 100, 3)
    flip_bit(directory / "images.h5", labels_at + 8 * 12 + 7, 6)  # the sign bit of label 12
    for option in (None, False, True):  # later handles verify what the store records, whatever they pass
        with open_store("hdf5", directory, "r", checksum=option) as store:
            for image_id in (7, 12):
                for read in (lambda: store.read_single(image_id), lambda: store.read_batch([3, image_id, 4])):
                    with pytest.raises(CorruptStoreError, match=f"image {image_id} fails its checksum"):
                        read()
            with pytest.raises(CorruptStoreError, match="image 7 fails"):
                store.read_many(20)
            assert store.read_single(3)[1] == 3 and store.read_batch([19, 0])[1].tolist() == [19, 0]


def test_checksum_setting_is_kept_until_a_store_many_changes_it(tmp_path, monkeypatch):
    import storage_impls.core.journal

    monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 2)
    monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
    directory = tmp_path / "store"

    def recorded() -> bool:
        with h5py.File(directory / "images.h5", "r") as file:
            return bool(file.attrs["checksum"]) and "checksums" in file

    with open_store("hdf5", directory, checksum=True) as store:
        store.store_many(*labelled_batch(range(5)))
    assert recorded()
    with open_store("hdf5", directory) as store:
        for image_id in range(5, 9):  # compactions keep the store's setting
            store.store_single(pixels_for(image_id), image_id, image_id)
        assert store._checkpoint.count > 5 and recorded()
        store.store_many(*labelled_batch(range(6)))  # checksum=None keeps it
        assert recorded()
    with open_store("hdf5", directory, checksum=False) as store:
        store.store_many(*labelled_batch(range(6)))
    assert not recorded()


# -- kills, temporaries, the journal -------------------------------------------------------------
def test_kill_during_compactions_never_mixes(tmp_path):
    """Every store_single folds the journal into a new checkpoint: kills land in the middle of compactions."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(300)))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import storage_impls.core.journal
        from storage_impls import open_store
        from tests.faults import pixels_for
        storage_impls.core.journal.COMPACT_MIN_RECORDS, storage_impls.core.journal.COMPACT_FRACTION = 1, 10**9
        rng = np.random.default_rng(int(sys.argv[1]))
        store = open_store("hdf5", {str(directory)!r})
        print("ready", flush=True)
        while True:
            label = int(rng.integers(0, 2**40))
            store.store_single(pixels_for(label), int(rng.integers(0, len(store) + 1)), label)
    """)
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", code, str(kill)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        kill_after(child, random.Random(kill).choice([0.0, 0.002, 0.01, 0.03, 0.08]))
        with open_store("hdf5", directory, "r") as store:
            assert check_consistent(store) >= 300
    with open_store("hdf5", directory) as store:
        store.store_single(pixels_for(1), 0, 1)
        check_consistent(store)
    assert leftovers(directory) == []


def test_stale_temporaries_are_ignored_and_removed_by_the_next_writer(tmp_path):
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(5)))
    for name in (".images.h5.0123.tmp", ".images.h5.journal.999.tmp"):
        (directory / name).write_bytes(b"half a file")
    with open_store("hdf5", directory, "r") as reader:
        assert check_consistent(reader) == 5
    with open_store("hdf5", directory) as writer:
        writer.store_single(pixels_for(9), 5, 9)
    assert leftovers(directory) == []


def test_unfinished_journal_record_is_ignored_then_truncated(tmp_path):
    """Bytes past the journal's commit word (an append killed half way) are not read, and the next append drops them."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(5)))
        store.store_single(pixels_for(9), 5, 9)
    journal = directory / "images.h5.journal"
    committed = journal.stat().st_size
    with open(journal, "ab") as file:
        file.write(bytes(range(200)))
    with open_store("hdf5", directory, "r") as reader:
        assert check_consistent(reader) == 6
    with open_store("hdf5", directory) as writer:
        writer.store_single(pixels_for(10), 6, 10)
    assert journal.stat().st_size == committed + RECORD.size + pixels_for(10).nbytes
    with open_store("hdf5", directory, "r") as reader:
        assert check_consistent(reader) == 7


def test_stale_journal_of_an_older_checkpoint_is_ignored(tmp_path):
    """A journal left by a store_many killed between its rename and removing the journal: not read, then replaced."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(5)))
        store.store_single(pixels_for(9), 5, 9)
    old_journal = (directory / "images.h5.journal").read_bytes()
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(50, 53)))
    (directory / "images.h5.journal").write_bytes(old_journal)
    with open_store("hdf5", directory, "r") as reader:
        assert check_consistent(reader) == 3
    with open_store("hdf5", directory) as store:
        store.store_single(pixels_for(8), 3, 8)
    with open_store("hdf5", directory, "r") as reader:
        assert check_consistent(reader) == 4 and reader.read_many(4)[1].tolist() == [50, 51, 52, 8]


def test_readers_open_while_a_writer_compacts(tmp_path):
    """Readers opening between the checkpoint's rename and the journal's removal never pair a checkpoint with the wrong
    journal."""
    directory = tmp_path / "store"
    with open_store("hdf5", directory) as store:
        store.store_many(*labelled_batch(range(30)))
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import storage_impls.core.journal
        from storage_impls import open_store
        from tests.faults import pixels_for
        storage_impls.core.journal.COMPACT_MIN_RECORDS, storage_impls.core.journal.COMPACT_FRACTION = 2, 10**9
        with open_store("hdf5", {str(directory)!r}) as store:
            for step in range(300):
                store.store_single(pixels_for(step), step % 30, step)
    """),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    reads = 0
    while writer.poll() is None:
        with open_store("hdf5", directory, "r") as store:
            assert check_consistent(store) == 30
        reads += 1
    assert writer.wait(CHILD_TIMEOUT) == 0, writer.stderr.read()
    assert reads > 0

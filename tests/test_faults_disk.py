"""Fault tests of the disk method: the shared ones (tests/faults.py) plus its own: store_single as one
journal record, handles catching up with other writers, PNGs over Pillow's decompression-bomb limit,
planted PNGs of another size or mode, damaged metadata, single-bit flips, kills during compactions,
a full disk during compactions, stale temporaries and folders."""

from __future__ import annotations

import errno
import json
import random
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage_impls import CorruptStoreError, MissingStoreError, open_store
from tests.faults import (
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


class TestDiskFaults(FaultTests):
    method = "disk"
    snapshot_can_expire = True  # PNGs are opened when read: a later store_many removes a reader's generation


def generation(directory: Path) -> Path:
    return directory / (directory / "CURRENT").read_text()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def plant(directory: Path, image_id: int, data: bytes) -> None:
    """Put ``data`` in place of image ``image_id``'s PNG, with its checksum in labels.csv made to match,
    so that only the PNG's own checks can tell."""
    folder = generation(directory)
    (folder / f"{image_id}.png").write_bytes(data)
    lines = (folder / "labels.csv").read_text().splitlines(keepends=True)
    fields = lines[1 + image_id].rstrip("\n").split(",")
    if len(fields) == 3:
        from storage_impls.methods.disk.format import image_crc

        fields[2] = str(image_crc(data, int(fields[1])))
        lines[1 + image_id] = ",".join(fields) + "\n"
        (folder / "labels.csv").write_text("".join(lines))


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file in ``folder``."""
    return {path.name: (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}


# -- the cost of one write: one journal record, nothing else rewritten ---------------------------
def test_store_single_appends_one_journal_record_and_rewrites_nothing(tmp_path):
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(300)))
        folder = generation(directory)
        before = snapshot(folder)
        store.store_single(pixels_for(7), 3, 7)
        store.store_single(pixels_for(8), 300, 8)
        assert snapshot(folder) == before  # labels.csv and the PNGs untouched: O(1), whatever N
        assert sorted(path.name for path in directory.iterdir()) == sorted(
            [".writer.lock", "CURRENT", "journal", folder.name]
        )
        assert check_consistent(store) == 301 and store.read_many(301)[1][[3, 300]].tolist() == [7, 8]


def test_compaction_links_unchanged_pngs_into_a_new_generation(tmp_path, monkeypatch):
    import storage_impls.core.journal

    monkeypatch.setattr(storage_impls.core.journal, "COMPACT_MIN_RECORDS", 3)
    monkeypatch.setattr(storage_impls.core.journal, "COMPACT_FRACTION", 10**9)  # past the minimum alone
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(10)))
        old = generation(directory)
        inode = (old / "0.png").stat().st_ino
        for image_id in (1, 10, 11, 2, 4):  # the fifth write folds the first four into a new generation
            store.store_single(pixels_for(100 + image_id), image_id, 100 + image_id)
        new = generation(directory)
        assert new != old and not old.exists() and (new / "0.png").stat().st_ino == inode
        assert (
            store.read_many(12)[1].tolist() == [0, 101, 102, 3, 104, *range(5, 10), 110, 111]
            and check_consistent(store) == 12
        )
    with open_store("disk", directory, "r") as store:
        assert check_consistent(store) == 12


# -- a handle never acts on a store it did not read ---------------------------------------
def test_handle_catches_up_with_other_writers_before_writing(tmp_path):
    directory = tmp_path / "store"
    first, second = open_store("disk", directory), open_store("disk", directory)
    first.store_many(*labelled_batch(range(10)))
    assert len(second) == 0
    second.store_single(pixels_for(50), 10, 50)  # appends after the 10 it had not seen
    second.store_many(*labelled_batch(range(100, 103)))
    with pytest.raises(ValueError, match="gap"):
        first.store_single(pixels_for(51), 10, 51)
    first.store_single(pixels_for(51), 3, 51)
    second.store_single(pixels_for(52), 1, 52)
    for handle in (first, second):
        handle.store_single(pixels_for(100), 0, 100)
        assert check_consistent(handle) == 4 and handle.read_many(4)[1].tolist() == [100, 52, 102, 51]
    first.close()
    second.close()


# -- what a store accepted it reads back; planted PNGs never read as images -----------------
@pytest.mark.parametrize("side", [12, 20], ids=["over-the-warning-limit", "over-the-error-limit"])
def test_images_over_pillows_decompression_bomb_limit_read_back(tmp_path, monkeypatch, side):
    """Pillow's limit scaled down to 100 pixels (the real one is ~179 M): 12x12 images would warn, 20x20 fail."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    images, labels = labelled_batch(range(3), (side, side, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_store("disk", tmp_path / "store") as store:
            store.store_many(images, labels)
            store.store_single(images[0], 3, 0)
            assert check_consistent(store) == 4


def test_planted_pngs_of_another_size_or_mode_are_corrupt(tmp_path):
    """A decompression bomb (a 65535x65535 header, a few bytes of data), a 16x16 RGB, a palette and a
    16-bit PNG planted in a store of 8x8x3 images: CorruptStoreError naming the image, in a child that lives."""
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(10)))
    header = struct.pack(">IIBBBBB", 65535, 65535, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(4096)))
        + png_chunk(b"IEND", b"")
    )
    planted = {5: bomb}
    for image_id, image in (
        (6, Image.fromarray(np.zeros((16, 16, 3), np.uint8))),
        (7, Image.new("P", (8, 8))),
        (8, Image.fromarray(np.zeros((8, 8), np.uint16))),
    ):
        path = tmp_path / f"{image_id}.png"
        image.save(path)
        planted[image_id] = path.read_bytes()
    for image_id, data in planted.items():
        plant(directory, image_id, data)
    result = run_child(f"""
        import json, warnings
        from storage_impls import CorruptStoreError, open_store
        warnings.simplefilter("error")
        outcomes = {{}}
        with open_store("disk", {str(directory)!r}, "r") as store:
            for image_id in (5, 6, 7, 8):
                for name, read in (("single", lambda: store.read_single(image_id)),
                                   ("batch", lambda: store.read_batch([0, image_id])),
                                   ("many", lambda: store.read_many(image_id + 1))):
                    try:
                        read()
                        outcomes[f"{{image_id}} {{name}}"] = "READ"
                    except CorruptStoreError as error:
                        outcomes[f"{{image_id}} {{name}}"] = str(error)
                    except Exception as error:
                        outcomes[f"{{image_id}} {{name}}"] = f"UNTYPED {{type(error).__name__}}: {{error}}"
        print(json.dumps(outcomes))
    """)
    assert result.returncode == 0, result.stderr
    for case, outcome in json.loads(result.stdout).items():
        image_id = int(case.split()[0]) if "many" not in case else 5
        assert f"image {image_id}" in outcome and f"{image_id}.png" in outcome, (case, outcome)


# -- damaged metadata names the file ------------------------------------------------------
DAMAGED_METADATA = {
    "meta-directory": ("meta.json", None),
    "meta-not-utf8": ("meta.json", b'{"format": "\xff\xfe"}'),
    "meta-list": ("meta.json", b"[1, 2]"),
    "meta-types": (
        "meta.json",
        b'{"format": "storage_impls.disk", "format_version": 2, "image_shape": "8x8", "count": "10"}',
    ),
    "meta-missing-keys": ("meta.json", b'{"format": "storage_impls.disk", "format_version": 2}'),
    "meta-absurd-count": (
        "meta.json",
        b'{"format": "storage_impls.disk", "format_version": 2, "image_shape": [8, 8, 3], "count": '
        b'100000000000000000000}',
    ),
    "meta-huge": ("meta.json", b" " * 10**6),
    "labels-directory": ("labels.csv", None),
    "labels-short": ("labels.csv", b"image_id,label,crc32\n0,0,1\n"),
    "labels-not-ascii": ("labels.csv", "image_id,label,crc32\n0,\u0661,1\n".encode()),
    "current-directory": ("CURRENT", None),
    "current-garbage": ("CURRENT", b"../../etc"),
    "current-empty": ("CURRENT", b""),
}


@pytest.mark.parametrize("case", DAMAGED_METADATA)
def test_damaged_metadata_is_corrupt_naming_the_file_and_store_many_repairs(tmp_path, case):
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(10)))
    name, data = DAMAGED_METADATA[case]
    path = directory / name if name == "CURRENT" else generation(directory) / name
    path.unlink()
    path.mkdir() if data is None else path.write_bytes(data)
    with pytest.raises(CorruptStoreError, match=name):
        open_store("disk", directory, "r")
    with open_store("disk", directory) as store:  # mode "a" opens a damaged store, so that store_many can repair it
        for call in (lambda: store.read_single(0), lambda: len(store), lambda: store.store_single(pixels_for(1), 0, 1)):
            with pytest.raises(CorruptStoreError, match="store_many replaces"):
                call()
        store.store_many(*labelled_batch(range(300, 305)))
        store.store_single(pixels_for(71), 5, 71)
        assert check_consistent(store) == 6
    with open_store("disk", directory, "r") as store:
        assert check_consistent(store) == 6


def test_single_bit_flips_never_read_as_other_data(tmp_path):
    """Bit 0 of every byte of CURRENT, meta.json, labels.csv and the journal, and of a sample of PNG bytes,
    flipped (a digit of a label becomes another digit): a typed error or the stored data, in a child that lives."""
    pristine = tmp_path / "pristine"
    with open_store("disk", pristine) as store:
        store.store_many(*labelled_batch(range(12)))
        store.store_single(pixels_for(99), 3, 99)
        store.store_single(pixels_for(98), 12, 98)
    cases = []
    for path in sorted(p for p in pristine.rglob("*") if p.is_file() and p.name != ".writer.lock"):
        name, size = str(path.relative_to(pristine)), path.stat().st_size
        offsets = range(size) if not name.endswith(".png") else random.Random(name).sample(range(size), min(size, 12))
        cases += [(name, "flip", offset) for offset in offsets]
    child = DAMAGE_CHILD.replace("data[where] ^= 0xFF", "data[where] ^= 0x01")
    assert child != DAMAGE_CHILD
    result = run_child(
        child.format(method="disk", pristine=str(pristine), work=str(tmp_path / "work"), cases=cases), timeout=600
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    bad = [(case, outcome) for case, outcome in zip(cases, outcomes) if outcome.startswith(("WRONG", "UNTYPED"))]
    assert not bad, f"{len(bad)} of {len(cases)} damaged stores misbehaved: {bad[:10]}"


# -- kills; temporaries -------------------------------------------------------------------
def test_kill_during_compactions_never_mixes(tmp_path):
    """Every store_single folds the journal into a new generation: kills land in the middle of compactions."""
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(100)))
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import storage_impls.core.journal
        from storage_impls import open_store
        from tests.faults import pixels_for
        storage_impls.core.journal.COMPACT_MIN_RECORDS, storage_impls.core.journal.COMPACT_FRACTION = 1, 10**9
        rng = np.random.default_rng(int(sys.argv[1]))
        store = open_store("disk", {str(directory)!r})
        print("ready", flush=True)
        while True:
            label = int(rng.integers(0, 2**40))
            store.store_single(pixels_for(label), int(rng.integers(0, len(store) + 1)), label)
    """)
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", code, str(kill)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        kill_after(child, random.Random(kill).choice([0.0, 0.002, 0.01, 0.03, 0.08]))
        with open_store("disk", directory, "r") as store:
            assert check_consistent(store) >= 100
    with open_store("disk", directory) as store:
        store.store_single(pixels_for(1), 0, 1)
        check_consistent(store)
    assert leftovers(directory) == [] and len(list(directory.glob("gen-*"))) == 1


def test_stale_temporaries_and_folders_are_ignored_and_removed_by_the_next_writer(tmp_path):
    directory = tmp_path / "store"
    with open_store("disk", directory) as store:
        store.store_many(*labelled_batch(range(5)))
    live = generation(directory).name
    for name in (".CURRENT.0123.tmp", ".journal.999.tmp"):
        (directory / name).write_bytes(b"half a file")
    (directory / ("gen-" + "0" * 32)).mkdir()
    (directory / ("gen-" + "0" * 32) / "0.png").write_bytes(b"a killed store_many's image")
    with open_store("disk", directory, "r") as reader:
        assert check_consistent(reader) == 5
    with open_store("disk", directory) as writer:
        writer.store_single(pixels_for(9), 5, 9)
    assert sorted(path.name for path in directory.iterdir()) == sorted([".writer.lock", "CURRENT", "journal", live])


def test_reader_of_a_replaced_generation_is_told_to_open_again(tmp_path):
    directory = tmp_path / "store"
    with open_store("disk", directory) as writer:
        writer.store_many(*labelled_batch(range(5)))
        with open_store("disk", directory, "r") as reader:
            writer.store_many(*labelled_batch(range(10, 15)))
            with pytest.raises(MissingStoreError, match="open it again"):
                reader.read_batch([1])


# -- a full disk during store_many, compactions and a fresh store's first write -------
def test_full_disk_during_compactions_keeps_the_store(tmp_path):
    reason = small_fs_unavailable()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "small"
    mount.mkdir()
    result = run_child(
        f"""
        import json, os, shutil
        import storage_impls.core.journal
        from pathlib import Path
        from storage_impls import NoSpaceError, open_store
        from tests.faults import check_consistent, labelled_batch, leftovers, pixels_for
        # every store_single folds the journal first
        storage_impls.core.journal.COMPACT_MIN_RECORDS, storage_impls.core.journal.COMPACT_FRACTION = 0, 10**9
        mount, report = Path({str(mount)!r}), []
        for leave in (0, 1024, 4096, 8192, 16384, 40960):
            for path in mount.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            store, fresh = open_store("disk", mount / "store"), open_store("disk", mount / "fresh")
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
            with open_store("disk", mount / "store", "r") as reader:
                outcome["reopened"] = check_consistent(reader)
            outcome["leftovers"] = leftovers(mount) + sorted(p.name for p in (mount / "store").glob("gen-*"))[1:]
            report.append(outcome)
        print(json.dumps(report))
    """,
        small_fs=(mount, "1m"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for outcome in report:
        assert outcome["store_many"][0] == errno.ENOSPC and "no space left" in outcome["store_many"][1], outcome
        assert outcome["leftovers"] == [], outcome
        assert outcome["after"] == outcome["reopened"] == (32 if outcome["store_single"] == "fit" else 31), outcome
        assert outcome["fresh"] == "fit" or (
            outcome["fresh"][0] == errno.ENOSPC and outcome["fresh_files"] == [".writer.lock"]
        ), outcome
    assert report[0]["store_single"] != "fit" and report[0]["fresh"] != "fit"


def test_handle_keeps_its_own_copy_of_the_labels_it_stored(tmp_path):
    """store_many's caller may reuse its labels array: the handle's view must not change with it."""
    images, labels = labelled_batch(range(5))
    with open_store("disk", tmp_path / "store") as store:
        store.store_many(images, labels)
        labels[:] = 99
        assert check_consistent(store) == 5 and store.read_many(5)[1].tolist() == [0, 1, 2, 3, 4]

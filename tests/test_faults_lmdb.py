"""Fault tests of the LMDB method: the shared ones (tests/faults.py) plus LMDB's own: truncated and
damaged ``data.mdb`` (read in a child: LMDB maps the file), value headers of another layout,
py-lmdb's errors, one environment per store and process, lockless readers of read-only files,
a full disk (data.mdb not left grown), a huge image's peak memory, per-image checksums."""

from __future__ import annotations

import errno
import json
import random
import stat
from pathlib import Path

import lmdb
import pytest

import storage_impls.methods.lmdb.env
from storage_impls import CorruptStoreError, StoreError, open_store
from storage_impls.core.records import KEY
from tests.faults import (
    DAMAGE_CHILD,
    FaultTests,
    check_consistent,
    labelled_batch,
    pixels_for,
    run_child,
    small_fs_unavailable,
)

SHAPE = (8, 8, 3)


class TestLmdbFaults(FaultTests):
    method = "lmdb"


def fill(directory: Path, labels, **options) -> None:
    with open_store("lmdb", directory, **options) as store:
        store.store_many(*labelled_batch(labels))


def raw_value(directory: Path, image_id: int) -> bytes:
    """The value LMDB holds for ``image_id`` (no store handle may be open on ``directory`` in this process)."""
    with lmdb.open(str(directory), readonly=True, lock=False) as env, env.begin() as txn:
        return txn.get(KEY.pack(image_id))


def raw_put(directory: Path, values: dict[int, bytes]) -> None:
    """Write values under ids with plain LMDB, bypassing the store (as damage or another program would)."""
    with lmdb.open(str(directory)) as env, env.begin(write=True) as txn:
        for image_id, value in values.items():
            txn.put(KEY.pack(image_id), value)


def value_offset(directory: Path, image_id: int) -> int:
    """Where the value of ``image_id`` starts in data.mdb."""
    value, data = raw_value(directory, image_id), (directory / "data.mdb").read_bytes()
    assert data.count(value) == 1
    return data.index(value)


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def every_read_raises(store, image_id: int, match: str) -> None:
    """read_single, read_batch and read_many of a range holding ``image_id`` raise CorruptStoreError matching
    ``match``."""
    for read in (
        lambda: store.read_single(image_id),
        lambda: store.read_batch([image_id, 0, image_id]),
        lambda: store.read_many(len(store)),
    ):
        with pytest.raises(CorruptStoreError, match=match):
            read()


# -- a truncated or damaged data.mdb ------------------------------------------------------
def test_truncated_data_mdb_names_the_file_and_sizes(tmp_path):
    """data.mdb cut to 0 bytes, one page, half, all but one page: CorruptStoreError naming the file,
    the size found and the size expected, never SIGBUS (in a child); mode "a" opens and store_many repairs."""
    pristine = tmp_path / "pristine"
    fill(pristine, range(300))
    size = (pristine / "data.mdb").stat().st_size
    cuts = [0, 4096, size // 2, size - 4096]
    result = run_child(f"""
        import json, shutil
        from pathlib import Path
        from storage_impls import CorruptStoreError, open_store
        from tests.faults import check_consistent, labelled_batch
        report = []
        for cut in {cuts!r}:
            work = Path({str(tmp_path / "work")!r}) / str(cut)
            shutil.copytree({str(pristine)!r}, work)
            with open(work / "data.mdb", "r+b") as file:
                file.truncate(cut)
            outcome = {{"cut": cut, "path": str(work / "data.mdb")}}
            try:
                open_store("lmdb", work, "r")
                outcome["r"] = "opened"
            except CorruptStoreError as error:
                outcome["r"] = str(error)
            with open_store("lmdb", work) as store:
                try:
                    store.read_single(0)
                    outcome["a_read"] = "read"
                except CorruptStoreError as error:
                    outcome["a_read"] = str(error)
                store.store_many(*labelled_batch(range(7)))
            with open_store("lmdb", work, "r") as store:
                outcome["repaired"] = check_consistent(store)
            report.append(outcome)
        print(json.dumps(report))
    """)
    assert result.returncode == 0, result.stderr
    for outcome in json.loads(result.stdout):
        message, expected = outcome["r"], 2 * 4096 if outcome["cut"] < 8192 else size
        assert message.startswith(
            f"{outcome['path']} is truncated: {outcome['cut']} bytes, expected at least {expected}"
        ), outcome
        assert outcome["a_read"].startswith(message), outcome
        assert outcome["repaired"] == 7, outcome


@pytest.mark.parametrize("big", [False, True], ids=["leaf-values", "overflow-values"])
def test_every_page_header_of_data_mdb_damaged(tmp_path, big):
    """Every byte of both meta records, each other page's first 96 bytes (page header, node pointers and
    nodes) flipped one by one, 200 random flips elsewhere, cuts around every page boundary, read in a
    child that must live: a typed error or the stored data, never wrong data. Small values live in leaf
    pages (a two-level tree), large ones (12 KiB) in overflow pages."""
    pristine = tmp_path / "pristine"
    shape = (64, 64, 3) if big else SHAPE
    with open_store("lmdb", pristine, checksum=True) as store:
        store.store_many(*labelled_batch(range(6 if big else 200), shape))
        store.store_single(pixels_for(99, shape), 3, 99)
    size = (pristine / "data.mdb").stat().st_size
    offsets = {page + byte for page in range(0, size, 4096) for byte in range(160 if page < 8192 else 96)}
    offsets |= set(random.Random(size).sample(range(size), 200))
    cases = [("data.mdb", "flip", offset) for offset in sorted(offsets)]
    cases += [
        ("data.mdb", "truncate", cut)
        for page in range(0, size, 4096)
        for cut in (page - 1, page, page + 1)
        if 0 <= cut < size
    ]
    result = run_child(
        DAMAGE_CHILD.format(method="lmdb", pristine=str(pristine), work=str(tmp_path / "work"), cases=cases),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    bad = [(case, outcome) for case, outcome in zip(cases, outcomes) if outcome.startswith(("WRONG", "UNTYPED"))]
    assert not bad, f"{len(bad)} of {len(cases)} damaged stores misbehaved: {bad[:10]}"
    assert sum(outcome.startswith("typed") for outcome in outcomes) > len(cases) // 4


@pytest.mark.parametrize("image_id", [0, 5])
def test_flipped_value_header_bytes_name_the_image_id(tmp_path, image_id):
    """Without checksums: every byte of a value's prefix (magic, version, channels, height, width) flipped,
    one bit or all: CorruptStoreError naming the id from every read, never an image of another shape."""
    pristine = tmp_path / "pristine"
    fill(pristine, range(12))
    start = value_offset(pristine, image_id)
    for byte in range(8):
        for mask in (0x01, 0x02, 0xFF):
            work = tmp_path / f"work-{byte}-{mask}"
            work.mkdir()
            (work / "data.mdb").write_bytes((pristine / "data.mdb").read_bytes())
            flip(work / "data.mdb", start + byte, mask)
            with open_store("lmdb", work, "r") as store:
                every_read_raises(store, image_id, f"image {image_id}")
                assert store.read_single(11)[1] == 11 and store.image_shape == SHAPE


def test_values_of_another_layout_name_the_image_id(tmp_path):
    """A value with a valid header of another shape, one cut short, one with a byte too many: CorruptStoreError naming
    the id."""
    directory = tmp_path / "store"
    fill(directory, range(12))
    good = {image_id: raw_value(directory, image_id) for image_id in (5, 6, 7)}
    other_shape = good[5][:3] + b"\x01" + good[5][4:16] + bytes(8 * 8)  # a valid (8, 8, 1) value
    for image_id, value in ((5, other_shape), (6, good[6][:4]), (7, good[7] + b"\x00")):
        raw_put(directory, {image_id: value})
        with open_store("lmdb", directory, "r") as store:
            every_read_raises(store, image_id, f"image {image_id}")
        raw_put(directory, {image_id: good[image_id]})
    with open_store("lmdb", directory, "r") as store:
        assert check_consistent(store) == 12


@pytest.mark.parametrize(
    "error",
    [lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadValsizeError, lmdb.InvalidError, lmdb.ReadersFullError],
)
def test_py_lmdb_errors_become_typed_errors(tmp_path, monkeypatch, error):
    """An lmdb.Error raised inside a read (here injected into the transactions' get and cursors) is
    CorruptStoreError for damage and StoreError otherwise, naming the store, for every read method."""
    directory = tmp_path / "store"
    fill(directory, range(6))
    armed: list[Exception] = []

    class Cursor:
        def __init__(self, cursor):
            self._cursor = cursor

        def __getattr__(self, name):
            return getattr(self._cursor, name)

        def iternext(self, *args, **kwargs):
            if armed:
                raise armed[0]
            return self._cursor.iternext(*args, **kwargs)

    class Txn:
        def __init__(self, txn):
            self._txn = txn

        def __getattr__(self, name):
            return getattr(self._txn, name)

        def __enter__(self):
            self._txn.__enter__()
            return self

        def __exit__(self, *exc_info):
            return self._txn.__exit__(*exc_info)

        def get(self, *args, **kwargs):
            if armed:
                raise armed[0]
            return self._txn.get(*args, **kwargs)

        def cursor(self, *args, **kwargs):
            return Cursor(self._txn.cursor(*args, **kwargs))

    class Env:
        def __init__(self, env):
            self._env = env

        def __getattr__(self, name):
            return getattr(self._env, name)

        def begin(self, *args, **kwargs):
            return Txn(self._env.begin(*args, **kwargs))

    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda *args, **kwargs: Env(real_open(*args, **kwargs)))
    with open_store("lmdb", directory, "r") as store:
        armed.append(error("mdb_get: injected"))
        expected = CorruptStoreError if error is not lmdb.ReadersFullError else StoreError
        for read in (lambda: store.read_single(2), lambda: store.read_batch([2, 1]), lambda: store.read_many(6)):
            with pytest.raises(expected, match=str(directory)) as raised:
                read()
            assert "injected" in str(raised.value) and not isinstance(raised.value, lmdb.Error)
            assert isinstance(raised.value, CorruptStoreError) == (expected is CorruptStoreError)
        armed.clear()
        assert check_consistent(store) == 6


# -- two handles in one process, read-only files -----------------------------------------
def test_reader_opened_before_a_writer_shares_its_environment(tmp_path):
    """A reader first, then a writer, then a second reader on one store in one process: one LMDB environment,
    each handle its own snapshot; closing any one leaves the others working; the last close closes it."""
    directory = tmp_path / "store"
    fill(directory, range(10))
    reader = open_store("lmdb", directory, "r")
    writer = open_store("lmdb", directory)
    assert writer._shared is reader._shared
    writer.store_many(*labelled_batch(range(100, 104)))
    with pytest.raises(ValueError, match="durable"):
        open_store("lmdb", directory, durable=True)
    late_reader = open_store("lmdb", directory, "r")
    assert reader.read_many(10)[1].tolist() == list(range(10))  # its snapshot, not the writer's commit
    assert late_reader.read_many(4)[1].tolist() == list(range(100, 104))
    writer.close()
    assert check_consistent(reader) == 10 and check_consistent(late_reader) == 4
    reader.close()
    assert check_consistent(late_reader) == 4
    late_reader.close()
    assert not storage_impls.methods.lmdb.env._shared


@pytest.mark.parametrize("lock_file", ["writable", "read-only", "absent"])
def test_read_only_store_opens_readonly_and_lockless_where_needed(tmp_path, lock_file):
    """A 0444 data.mdb in a 0555 folder, read by a user without privileges: readonly=True, with LMDB's lock
    where lock.mdb can be opened for writing, else (0444 or absent: none can be created) lock=False;
    the store reads back whole and nothing is created."""
    directory = tmp_path / "ro" / "store"
    fill(directory, range(10))
    if lock_file == "absent":
        (directory / "lock.mdb").unlink()
    names = sorted(path.name for path in directory.iterdir())
    for path in [directory, *directory.iterdir()]:
        writable = lock_file == "writable" and path.name == "lock.mdb"
        path.chmod(0o555 if path.is_dir() else 0o666 if writable else 0o444)
    try:
        result = run_child(
            f"""
            import json
            from storage_impls import open_store
            from tests.faults import check_consistent
            with open_store("lmdb", {str(directory)!r}, "r") as store:
                flags = store._shared.env.flags()
                print(json.dumps([check_consistent(store), flags["readonly"], flags["lock"]]))
        """,
            unprivileged=True,
        )
    finally:
        for path in [directory, *directory.iterdir()]:
            path.chmod(stat.S_IRWXU)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [10, True, lock_file == "writable"]
    assert sorted(path.name for path in directory.iterdir()) == names


# -- a full disk --------------------------------------------------------------------------
def test_full_disk_leaves_data_mdb_as_it_was(tmp_path):
    """store_many and store_single on a disk left with 0 to 256 KiB: NoSpaceError (ENOSPC) naming the
    store, the store reads back as before, data.mdb not grown; a fresh store's first store_many too."""
    reason = small_fs_unavailable()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "small"
    mount.mkdir()
    result = run_child(
        f"""
        import json, os, shutil
        from pathlib import Path
        import numpy as np
        from storage_impls import NoSpaceError, open_store
        from tests.faults import check_consistent, labelled_batch, leftovers, pixels_for
        mount, report = Path({str(mount)!r}), []

        def attempt(outcome, name, write, data):
            before = data.stat().st_size if data.exists() else None
            try:
                write()
                outcome[name] = "fit"
            except NoSpaceError as error:
                outcome[name] = [error.errno, str(error), before, data.stat().st_size if data.exists() else None]

        for leave in (0, 4096, 16384, 65536, 262144):
            for path in list(mount.iterdir()):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            store = open_store("lmdb", mount / "store")
            store.store_many(*labelled_batch(range(40)))
            free = os.statvfs(mount)
            with open(mount / "filler", "wb") as filler:
                filler.write(b"x" * max(0, free.f_bavail * free.f_frsize - leave))
            outcome, data = {{"leave": leave}}, mount / "store" / "data.mdb"
            attempt(outcome, "store_many", lambda: store.store_many(*labelled_batch(np.arange(20000) + 100)), data)
            outcome["after_store_many"] = check_consistent(store)
            appended = 40
            while appended < 20000:
                attempt(
                    outcome, "store_single", lambda: store.store_single(pixels_for(appended), appended, appended), data
                )
                if outcome["store_single"] != "fit":
                    break
                appended += 1
            outcome["appended"] = appended
            outcome["after_store_single"] = check_consistent(store)
            store.close()
            with open_store("lmdb", mount / "store", "r") as reader:
                outcome["reopened"] = check_consistent(reader)
            (mount / "filler").unlink()
            with open(mount / "filler", "wb") as filler:
                free = os.statvfs(mount)
                filler.write(b"x" * max(0, free.f_bavail * free.f_frsize - leave))
            try:
                with open_store("lmdb", mount / "fresh") as fresh:
                    attempt(
                        outcome,
                        "fresh",
                        lambda: fresh.store_many(*labelled_batch(range(5000))),
                        mount / "fresh" / "data.mdb",
                    )
            except NoSpaceError as error:
                outcome["fresh"] = [error.errno, str(error), None, None]
            outcome["leftovers"] = leftovers(mount)
            report.append(outcome)
        print(json.dumps(report))
    """,
        small_fs=(mount, "2m"),
    )
    assert result.returncode == 0, result.stderr
    for outcome in json.loads(result.stdout):
        for name in ("store_many", "store_single", "fresh"):
            code, message, before, after = outcome[name]
            assert code == errno.ENOSPC and "no space left on device" in message and str(mount) in message, outcome
            assert after is None or before is None or after <= before, (name, outcome)
        assert outcome["after_store_many"] == 40, outcome
        assert outcome["after_store_single"] == outcome["reopened"] == outcome["appended"], outcome
        assert outcome["leftovers"] == [], outcome


# -- store_many of a huge image ------------------------------------------------------------
def test_huge_image_costs_at_most_one_extra_copy_in_memory(tmp_path):
    """store_many and store_single of one 300 MB image (10000 x 10000 x 3): the peak resident memory
    (VmHWM) grows by less than 1.5x the image above what the process held with the image in memory
    (LMDB's own dirty copy is 1x; a staging copy besides would make it 2x); the image reads back."""
    result = run_child(
        f"""
        import hashlib, json
        import numpy as np
        from storage_impls import open_store

        def status(field):
            with open("/proc/self/status") as file:
                return next(int(line.split()[1]) * 1024 for line in file if line.startswith(field + ":"))

        def reset_peak():
            try:
                with open("/proc/self/clear_refs", "w") as file:
                    file.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
            except OSError:
                pass

        rng = np.random.default_rng(0)
        shape = (10000, 10000, 3)
        image = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(1, *shape)
        growth = {{}}
        with open_store("lmdb", {str(tmp_path / "store")!r}) as store:
            reset_peak()
            before = status("VmRSS")
            store.store_many(image, [7])
            growth["store_many"] = status("VmHWM") - before
            del image
            second = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape)
            reset_peak()
            before = status("VmRSS")
            store.store_single(second, 0, 8)
            growth["store_single"] = status("VmHWM") - before
            read, label = store.read_single(0)
            growth["same"] = label == 8 and hashlib.sha1(read).digest() == hashlib.sha1(second).digest()
        print(json.dumps(growth))
    """,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout)
    image = 10000 * 10000 * 3
    assert growth["same"]
    assert growth["store_many"] < 1.5 * image, (
        f"store_many grew the peak by {growth['store_many'] / image:.2f}x the image"
    )
    assert growth["store_single"] < 1.5 * image, (
        f"store_single grew the peak by {growth['store_single'] / image:.2f}x the image"
    )


# -- checksums -------------------------------------------------------------------------
def test_checksum_catches_a_flipped_bit_with_the_image_id(tmp_path):
    """checksum=True: a flipped pixel bit (id 7), a flipped label sign bit (id 12), and two values swapped
    between ids (3 and 4) raise CorruptStoreError naming the id, for every later handle whatever it passes."""
    directory = tmp_path / "store"
    fill(directory, range(20), checksum=True)
    data = directory / "data.mdb"
    flip(data, value_offset(directory, 7) + 24 + 100, 1 << 3)  # a pixel: header is 24 bytes with a checksum
    flip(data, value_offset(directory, 12) + 23, 1 << 7)  # the label's sign bit
    raw_put(directory, {3: raw_value(directory, 4), 4: raw_value(directory, 3)})
    for option in (None, False, True):
        with open_store("lmdb", directory, "r", checksum=option) as store:
            for image_id in (7, 12, 3):
                for read in (lambda: store.read_single(image_id), lambda: store.read_batch([2, image_id, 5])):
                    with pytest.raises(CorruptStoreError, match=f"image {image_id} fails its checksum"):
                        read()
            with pytest.raises(CorruptStoreError, match="image 3 fails its checksum"):
                store.read_many(20)
            assert store.read_single(2)[1] == 2 and store.read_batch([19, 0])[1].tolist() == [19, 0]


def test_checksum_setting_is_recorded_in_the_store(tmp_path):
    """checksum=True at store_many is recorded in the values (version 2); store_single follows the store
    whatever its handle passes; store_many with None keeps the setting, with False drops it."""
    directory = tmp_path / "store"

    def versions() -> set[int]:
        with lmdb.open(str(directory), readonly=True, lock=False) as env, env.begin() as txn:
            return {value[2] for value in txn.cursor().iternext(keys=False)}

    fill(directory, range(5), checksum=True)
    assert versions() == {2}
    with open_store("lmdb", directory, checksum=False) as store:
        store.store_single(pixels_for(5), 5, 5)
        store.store_single(pixels_for(6), 0, 6)
    assert versions() == {2}
    with open_store("lmdb", directory) as store:
        store.store_many(*labelled_batch(range(3)))
    assert versions() == {2}
    with open_store("lmdb", directory, checksum=False) as store:
        store.store_many(*labelled_batch(range(3)))
        store.store_single(pixels_for(3), 3, 3)
    assert versions() == {1}
    with open_store("lmdb", directory, "r") as store:
        assert check_consistent(store) == 4

"""Fault tests every storage method must pass: subclass FaultTests and set ``method``.

Faults that happen in real life: a writer killed at a random point, two writers at once, a
reader opening during every commit, a full disk (a real, small tmpfs in a user namespace, so
no root is needed), damaged files, a relative path and a ``chdir``, two handles in one
process, read-only files. Anything that could kill an interpreter runs in a child process,
which must exit normally. Images are made from their labels (``pixels_for``), so a store
that pairs an image with another write's label is caught wherever it is read.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from storage_impls import MissingStoreError, StoreLockedError, get_store_class, open_store
from storage_impls.core.base import ImageStore
from storage_impls.core.locking import LOCK_FILE

REPO = Path(__file__).resolve().parent.parent
SHAPE = (8, 8, 3)
KILLS = int(os.environ.get("FAULT_KILLS", "6" if os.environ.get("CI") else "20"))  # per method and operation
CHILD_TIMEOUT = 120


def pixels_for(label: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """The image that goes with ``label``: any image read beside another label is a mix."""
    return np.random.default_rng(label & 0xFFFFFFFF).integers(0, 256, shape, dtype=np.uint8)


def labelled_batch(labels: list[int] | np.ndarray, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int64)
    return np.stack([pixels_for(int(label), shape) for label in labels]), labels


def spy_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors ``os.fsync`` is called on from now (each still fsynced), for the durability tests."""
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    return calls


def check_consistent(store) -> int:
    """Assert every stored image matches its label, through read_many, read_batch and read_single; return len."""
    count = len(store)
    if count == 0:
        return 0
    images, labels = store.read_many(count)
    for image, label in zip(images, labels):
        np.testing.assert_array_equal(
            image, pixels_for(int(label), image.shape), err_msg=f"label {label} has another write's image"
        )
    ids = np.random.default_rng(count).permutation(count)
    batch, batch_labels = store.read_batch(ids)
    np.testing.assert_array_equal(batch, images[ids])
    np.testing.assert_array_equal(batch_labels, labels[ids])
    image, label = store.read_single(count - 1)
    np.testing.assert_array_equal(image, images[-1])
    assert label == labels[-1]
    return count


def run_child(
    code: str, *, timeout: float = CHILD_TIMEOUT, unprivileged: bool = False, small_fs: tuple[Path, str] | None = None
) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child; fail the test if it died of a signal. ``unprivileged``: as root,
    drop every capability, so that permission bits bind as they do for any user. ``small_fs``:
    (directory, size) mounts a tmpfs of that size there, in a user and mount namespace of the child's own."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if small_fs is not None:
        directory, size = small_fs
        command = [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"',
            str(directory),
            *command,
        ]
    if unprivileged and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-all", "--", *command]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode >= 0, f"child killed by signal {-result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@cache
def small_fs_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted in a user namespace here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True, text=True
    )
    return None if probe.returncode == 0 else f"the OS refuses a tmpfs in a user namespace: {probe.stderr.strip()}"


def kill_after(process: subprocess.Popen, delay: float) -> None:
    """SIGKILL ``process`` after ``delay`` seconds unless it has finished by then."""
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def leftovers(directory: Path) -> list[str]:
    """Temporary files below ``directory`` (what a killed or failed write may leave behind)."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.name.endswith(".tmp"))


def damage_cases(directory: Path) -> list[tuple[str, str, int]]:
    """(file, kind, offset or size) for every file of a store: truncations and byte flips."""
    cases = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != LOCK_FILE):
        size, name = path.stat().st_size, str(path.relative_to(directory))
        cases += [
            (name, "truncate", length)
            for length in sorted({0, min(4096, size // 2), size // 2, max(0, size - 4096), max(0, size - 1)})
            if length < size
        ]
        offsets = {0, size // 2, size - 1, *random.Random(name).sample(range(size), min(3, size))} if size else set()
        cases += [(name, "flip", offset) for offset in sorted(offsets)]
    return cases


DAMAGE_CHILD = """
    import json, shutil, sys
    from pathlib import Path
    import numpy as np
    from storage_impls import StoreError, open_store
    from tests.faults import check_consistent

    method, pristine, work, cases = {method!r}, Path({pristine!r}), Path({work!r}), {cases!r}
    with open_store(method, pristine, "r") as store:
        expected = store.read_many(len(store))
    outcomes = []
    for name, kind, where in cases:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        path = work / name
        if kind == "truncate":
            with open(path, "r+b") as file:
                file.truncate(where)
        else:
            data = bytearray(path.read_bytes())
            data[where] ^= 0xFF
            path.write_bytes(bytes(data))
        try:
            with open_store(method, work, "r") as store:
                images, labels = store.read_many(len(store))
                batch, batch_labels = store.read_batch(np.arange(len(store))[::-1])
                single = store.read_single(len(store) - 1)
            same = (np.array_equal(images, expected[0]) and np.array_equal(labels, expected[1])
                    and np.array_equal(batch, images[::-1]) and np.array_equal(batch_labels, labels[::-1]))
            outcomes.append("same" if same else "WRONG DATA")
        except StoreError as error:
            outcomes.append("typed " + type(error).__name__)
        except Exception as error:
            outcomes.append(f"UNTYPED {{type(error).__name__}}: {{error}}")
    print(json.dumps(outcomes))
"""


class FaultTests:
    """Faults every method must survive; subclasses set ``method``."""

    method: str
    #: True where a reader's snapshot can be removed by a later store_many (the PNG folder's old
    #: generation): its reads then raise MissingStoreError ("open the store again"), never wrong data.
    snapshot_can_expire = False

    @pytest.fixture
    def directory(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    def fill(self, directory: Path, labels, **options) -> None:
        with open_store(self.method, directory, **options) as store:
            store.store_many(*labelled_batch(labels))

    # -- paths and handles --------------------------------------------------------------------
    def test_relative_path_survives_chdir(self, tmp_path, monkeypatch):
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        monkeypatch.chdir(tmp_path / "a")
        with open_store(self.method, "store") as store:
            store.store_many(*labelled_batch(range(5)))
            monkeypatch.chdir(tmp_path / "b")
            store.store_single(pixels_for(5), 5, 5)
            assert store.disk_usage().allocated > 0
            assert check_consistent(store) == 6
        assert list((tmp_path / "b").iterdir()) == []
        with open_store(self.method, tmp_path / "a" / "store", "r") as store:
            assert check_consistent(store) == 6

    def test_two_handles_in_one_process(self, directory):
        self.fill(directory, range(10))
        writer = open_store(self.method, directory)
        reader = open_store(self.method, directory, "r")
        other_reader = open_store(self.method, directory, "r")
        writer.store_single(pixels_for(100), 10, 100)
        second_writer = open_store(self.method, directory)
        second_writer.store_single(pixels_for(101), 11, 101)  # catches up with the first writer's append
        assert len(second_writer) == 12
        writer.close()
        assert check_consistent(reader) >= 10 and check_consistent(other_reader) >= 10
        reader.close()
        assert check_consistent(other_reader) >= 10
        other_reader.close()
        second_writer.close()
        with open_store(self.method, directory, "r") as store:
            assert check_consistent(store) == 12

    def test_read_only_files_open_for_reading(self, tmp_path):
        """A store whose files the reader cannot write (0444 files, 0555 folders) opens and reads."""
        directory = tmp_path / "ro" / "store"
        self.fill(directory, range(10))
        for path in [directory, *directory.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            result = run_child(
                f"""
                from storage_impls import open_store
                from tests.faults import check_consistent
                with open_store({self.method!r}, {str(directory)!r}, "r") as store:
                    print(check_consistent(store))
            """,
                unprivileged=True,
            )
        finally:
            for path in [directory, *directory.rglob("*")]:
                path.chmod(stat.S_IRWXU)
        assert result.returncode == 0 and result.stdout.strip() == "10", result.stderr

    # -- writers ------------------------------------------------------------------------------
    def test_second_writer_times_out_and_readers_go_on(self, directory):
        self.fill(directory, range(5))
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            import time
            from pathlib import Path
            from storage_impls.core.locking import writer_lock
            with writer_lock(Path({str(directory)!r}), 10):
                print("holding", flush=True)
                time.sleep(30)
        """),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline() == "holding\n"
            with open_store(self.method, directory, lock_timeout=0.2) as store:
                with pytest.raises(StoreLockedError, match="another writer"):
                    store.store_single(pixels_for(9), 5, 9)
                with pytest.raises(StoreLockedError):
                    store.store_many(*labelled_batch([7]))
            with open_store(self.method, directory, "r") as reader:
                assert check_consistent(reader) == 5
        finally:
            holder.kill()
            holder.wait()
        with open_store(self.method, directory) as store:
            store.store_single(pixels_for(9), 5, 9)
            assert check_consistent(store) == 6

    def test_concurrent_writers_leave_a_consistent_store(self, directory):
        self.fill(directory, range(20))
        writer = """
            import numpy as np
            from storage_impls import open_store
            from tests.faults import labelled_batch, pixels_for
            rng = np.random.default_rng({seed})
            with open_store({method!r}, {directory!r}) as store:
                for step in range(40):
                    if step % 10 == 9:
                        store.store_many(*labelled_batch(rng.integers(0, 2**40, 20 + step)))
                    else:
                        label = int(rng.integers(0, 2**40))  # ids 0..20 exist or append whatever the other writer did:
                        store.store_single(pixels_for(label), int(rng.integers(0, 21)), label)  # len() may be stale
        """
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(writer.format(seed=seed, method=self.method, directory=str(directory))),
                ],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        for child in children:
            _, errors = child.communicate(timeout=CHILD_TIMEOUT)
            assert child.returncode == 0, errors
        with open_store(self.method, directory, "r") as store:
            check_consistent(store)
        self.fill(directory, range(3))
        with open_store(self.method, directory, "r") as store:
            assert check_consistent(store) == 3

    def test_reader_during_every_commit(self, directory):
        """Readers open and read while a writer commits over and over: the writer never fails, readers never see a
        mix."""
        self.fill(directory, range(30))
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            import numpy as np
            from storage_impls import open_store
            from tests.faults import labelled_batch, pixels_for
            with open_store({self.method!r}, {str(directory)!r}) as store:
                for step in range(60):
                    if step % 3 == 0:
                        store.store_many(*labelled_batch(np.arange(30) + 1000 * step))
                    else:
                        store.store_single(pixels_for(step), step % 30, step)
        """),
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        reads = 0
        while writer.poll() is None:
            try:
                with open_store(self.method, directory, "r") as store:
                    assert check_consistent(store) == 30
                reads += 1
            except MissingStoreError:
                if not self.snapshot_can_expire:
                    raise
        assert writer.returncode == 0, writer.stderr.read()
        assert reads > 0

    # -- kills --------------------------------------------------------------------------------
    @pytest.mark.parametrize("operation", ["store_single", "store_many", "compact"])
    def test_kill_at_random_points_never_mixes(self, directory, operation):
        if operation == "compact" and get_store_class(self.method)._fold is ImageStore._fold:
            pytest.skip(f"{self.method}: compact() has nothing to fold (every write goes into the container)")
        self.fill(directory, range(50))
        single = "store.store_single(pixels_for(label), int(rng.integers(0, len(store) + 1)), label)"
        loop = {
            "store_single": single,
            "store_many": "store.store_many(*labelled_batch(np.arange(200) + label))",
            "compact": f"{single}; store.compact()",
        }[operation]
        code = textwrap.dedent(f"""
            import sys
            import numpy as np
            from storage_impls import open_store
            from tests.faults import labelled_batch, pixels_for
            rng = np.random.default_rng(int(sys.argv[1]))
            store = open_store({self.method!r}, {str(directory)!r})
            print("ready", flush=True)
            while True:
                label = int(rng.integers(0, 2**40))
                {loop}
        """)
        delays = random.Random(operation).choices([0.0, 0.001, 0.005, 0.02, 0.05, 0.1], k=KILLS)
        for kill, delay in enumerate(delays):
            child = subprocess.Popen(
                [sys.executable, "-c", code, str(kill)], cwd=REPO, stdout=subprocess.PIPE, text=True
            )
            assert child.stdout.readline() == "ready\n"
            kill_after(child, delay + random.Random(kill).random() * 0.02)
            with open_store(self.method, directory, "r") as store:
                assert check_consistent(store) >= 50
        with open_store(self.method, directory) as store:  # the next writer cleans up after the killed ones
            store.store_single(pixels_for(1), 0, 1)
            check_consistent(store)
        assert leftovers(directory) == []

    # -- damaged files ------------------------------------------------------------------------
    def test_damaged_files_give_typed_errors_never_wrong_data(self, tmp_path):
        """Every file of a checksummed store truncated and flipped: a typed error or the right data, in a child that
        lives."""
        pristine = tmp_path / "pristine"
        with open_store(self.method, pristine, checksum=True) as store:
            store.store_many(*labelled_batch(range(12)))
            store.store_single(pixels_for(99), 3, 99)
            store.store_single(pixels_for(98), 12, 98)
        cases = damage_cases(pristine)
        result = run_child(
            DAMAGE_CHILD.format(method=self.method, pristine=str(pristine), work=str(tmp_path / "work"), cases=cases)
        )
        assert result.returncode == 0, result.stderr
        outcomes = json.loads(result.stdout)
        bad = [(case, outcome) for case, outcome in zip(cases, outcomes) if outcome.startswith(("WRONG", "UNTYPED"))]
        assert not bad, f"{len(bad)} of {len(cases)} damaged stores misbehaved: {bad[:10]}"

    def test_store_many_repairs_a_damaged_store(self, directory):
        """Every file cut in half: opening for writing still works, and store_many makes the store whole (in a
        child)."""
        self.fill(directory, range(10))
        result = run_child(f"""
            from pathlib import Path
            from storage_impls import open_store
            from storage_impls.core.locking import LOCK_FILE
            from tests.faults import check_consistent, labelled_batch
            directory = Path({str(directory)!r})
            for path in directory.rglob("*"):
                if path.is_file() and path.name != LOCK_FILE:
                    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            with open_store({self.method!r}, directory) as store:
                store.store_many(*labelled_batch(range(500, 505)))
            with open_store({self.method!r}, directory, "r") as store:
                print(check_consistent(store))
        """)
        assert result.returncode == 0 and result.stdout.strip() == "5", result.stderr

    # -- a full disk --------------------------------------------------------------------------
    def test_full_disk_keeps_the_store_as_it_was(self, tmp_path):
        reason = small_fs_unavailable()
        if reason:
            pytest.skip(reason)
        mount = tmp_path / "small"
        mount.mkdir()
        result = run_child(
            f"""
            import errno, json
            import numpy as np
            from storage_impls import NoSpaceError, open_store
            from tests.faults import check_consistent, labelled_batch, leftovers, pixels_for
            from pathlib import Path
            directory = Path({str(mount)!r}) / "store"
            report = {{}}
            with open_store({self.method!r}, directory) as store:
                store.store_many(*labelled_batch(range(40)))
                try:
                    store.store_many(*labelled_batch(np.arange(20000) + 100))
                    report["store_many"] = "fit"
                except NoSpaceError as error:
                    report["store_many"] = [error.errno, str(error)]
                report["after_store_many"] = check_consistent(store)
                report["stored_singles"] = 0
                for image_id in range(40, 40 + 20000):
                    try:
                        store.store_single(pixels_for(image_id), image_id, image_id)
                    except NoSpaceError as error:
                        report["store_single"] = [error.errno, str(error)]
                        break
                    report["stored_singles"] += 1
                report["after_store_single"] = check_consistent(store)
            with open_store({self.method!r}, directory, "r") as store:
                report["reopened"] = check_consistent(store)
            report["leftovers"] = leftovers(directory)
            print(json.dumps(report))
        """,
            small_fs=(mount, "1m"),
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["store_many"][0] == errno.ENOSPC and "no space left" in report["store_many"][1]
        assert report["after_store_many"] == 40
        assert report["store_single"][0] == errno.ENOSPC and "store" in report["store_single"][1]
        assert report["after_store_single"] == report["reopened"] == 40 + report["stored_singles"]
        assert report["leftovers"] == []

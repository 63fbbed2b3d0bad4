"""Larger-than-memory reads (``--cache limited``): reader processes in a memory cgroup too small for the store.

MLPerf Storage asks for a dataset of at least 5x the machine's memory, so that the page cache cannot hold it. A
suite cell cannot fill a disk with 5x RAM, so it shrinks the memory instead: the cell's reader processes join a
memory cgroup whose limit is a fraction of the store's bytes (``--limited-fraction``, default 1/5). The page cache
pages a process reads are charged to its cgroup, and a cgroup at its limit reclaims its own pages, so at most that
fraction of the store stays cached for them, however often they read it.

cgroup v2 (``memory.max``) where a cgroup2 hierarchy has the memory controller; else cgroup v1
(``memory.limit_in_bytes``) where its memory hierarchy is mounted (hybrid machines mount both, the memory
controller on v1). The cgroup is made below the test process's own one (v2: where the memory controller is
enabled for children, trying the hierarchy's root next); making it needs write access there, usually root.
``unavailable()`` says what is missing, and the suite refuses ``--cache limited`` with it.

What counts: memory charged after a process joins (neither version moves earlier charges here: v1's
``move_charge_at_immigrate`` stays off), so the workers' interpreter and imports are not counted, while the
page cache they fill during an epoch, and any memory they allocate reading, is. Memory they allocate competes
with the cache: a method that allocates more than the limit while reading is killed by the cgroup's OOM killer
(the cell then fails with SIGKILL). The epoch's shared memory is charged to the parent, which zeroes it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

PROC_MOUNTS, PROC_CGROUP = Path("/proc/mounts"), Path("/proc/self/cgroup")
DEFAULT_FRACTION = 0.2  # MLPerf Storage: a dataset at least 5x the memory


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be made here; the message says what is missing."""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(file system type, mount point, options) of each cgroup mount."""
    try:
        lines = PROC_MOUNTS.read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            mounts.append((fields[2], fields[1], set(fields[3].split(","))))
    return mounts


def _own_path(version: int) -> str:
    """This process's cgroup path in the v2 hierarchy (``0::/path``) or v1's memory one (``N:...memory...:/path``)."""
    for line in PROC_CGROUP.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (version == 1 and "memory" in controllers.split(",")):
            return path.lstrip("/")
    return ""


def _v2_parent(root: Path) -> Path | None:
    """A cgroup2 folder whose children get the memory controller: this process's own, else the hierarchy's root."""
    for candidate in (root / _own_path(2), root):
        control = candidate / "cgroup.subtree_control"
        try:
            if "memory" not in control.read_text().split():
                control.write_text("+memory")  # refused while the cgroup has processes (v2's no-internal-process rule)
            return candidate
        except OSError:
            continue
    return None


def _locate() -> tuple[int, Path]:
    """(version, the folder to make the cgroup in); CgroupUnavailable naming what is missing."""
    mounts = _mounts()
    for kind, point, _ in mounts:
        if kind == "cgroup2" and "memory" in (Path(point) / "cgroup.controllers").read_text().split():
            parent = _v2_parent(Path(point))
            if parent is None:
                raise CgroupUnavailable(
                    f"cgroup v2 at {point} has the memory controller, but it cannot be enabled for "
                    f"children of this process's cgroup or of the root (cgroup.subtree_control: "
                    f"needs root, or a delegated cgroup without processes)"
                )
            return 2, parent
    for kind, point, options in mounts:
        if kind == "cgroup" and "memory" in options:
            parent = Path(point) / _own_path(1)
            if not os.access(parent, os.W_OK):
                raise CgroupUnavailable(
                    f"cgroup v1 memory hierarchy at {point}: no permission to make a cgroup in {parent} (run as root)"
                )
            return 1, parent
    raise CgroupUnavailable(
        "no memory cgroup is mounted: neither cgroup v2 with the memory controller nor cgroup v1's "
        "memory hierarchy (see /proc/mounts)"
    )


def unavailable() -> str | None:
    """None when a memory cgroup can be made here (made and removed to check), else what is missing."""
    try:
        with MemoryCgroup() as cgroup:
            cgroup.limit(1 << 30)
    except CgroupUnavailable as error:
        return str(error)
    except OSError as error:
        return f"making a memory cgroup failed: {error}"
    return None


class MemoryCgroup:
    """A new memory cgroup, unlimited until ``limit`` is called; ``add`` moves processes in, ``close`` removes it
    (after moving back any process still inside)."""

    def __init__(self) -> None:
        self.version, parent = _locate()
        self.limit_bytes: int | None = None
        self.cache_bytes = self.other_bytes = 0
        self.path = parent / f"image-storage-bench-{uuid.uuid4().hex[:12]}"
        self._parent = parent
        self.path.mkdir()

    def _write(self, name: str, text: str) -> None:
        (self.path / name).write_text(text)

    def limit(self, cache_bytes: int, other_bytes: int = 0) -> None:
        """Limit the memory charged to the cgroup to ``other_bytes`` (what its processes need besides the page cache)
        plus ``cache_bytes``; the kernel reclaims the cgroup's page cache first to stay under it. Resets the peak."""
        self.cache_bytes, self.other_bytes = int(cache_bytes), int(other_bytes)
        self.limit_bytes = self.cache_bytes + self.other_bytes
        self._write("memory.max" if self.version == 2 else "memory.limit_in_bytes", str(self.limit_bytes))
        if self.version == 1:
            self._write("memory.max_usage_in_bytes", "0")

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup (its later charges count against the limit)."""
        self._write("cgroup.procs", str(pid))

    def usage_bytes(self) -> int:
        """Memory charged to the cgroup now: its processes' memory and the page cache they read."""
        return int((self.path / ("memory.current" if self.version == 2 else "memory.usage_in_bytes")).read_text())

    def file_bytes(self) -> int:
        """The page cache charged to the cgroup (memory.stat's ``file`` in v2, ``cache`` in v1)."""
        key = "file" if self.version == 2 else "cache"
        for line in (self.path / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        return 0

    def peak_bytes(self) -> int | None:
        """The most memory charged to the cgroup at once since ``limit`` (cgroup v1; None on v2, whose
        ``memory.peak`` counts from the cgroup's start)."""
        if self.version == 2:
            return None
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def close(self) -> None:
        """Move any process still inside back to the parent cgroup, then remove the cgroup."""
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self._parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # it ended meanwhile
        self.path.rmdir()

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

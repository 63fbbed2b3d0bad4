"""What a cell costs besides time: CPU (worker processes included), peak memory and bytes at the device per round.

CPU comes from ``getrusage`` (user + system of this process and of the children it has waited for) plus, for
worker processes alive when the rounds start, their ``/proc/<pid>/stat``; device bytes from ``/proc/<pid>/io``
(``read_bytes``/``write_bytes``: bytes the process made the kernel read from the device or dirtied for it to
write, its waited-for children included; Linux only), the peak from ``VmHWM`` after resetting it through
``/proc/self/clear_refs`` (Linux; elsewhere the growth of ``ru_maxrss``, which only moves when the process's
lifetime peak grows).
"""

from __future__ import annotations

import math
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

NO_DEVICE_IO = "device bytes not measured: /proc/self/io is not available on this system"


def _cpu() -> tuple[float, float]:
    """User and system seconds of this process and of the children it has waited for."""
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + waited.ru_utime, own.ru_stime + waited.ru_stime


_SELF_IO: list[int] = []  # a descriptor kept open on /proc/self/io: pread at 0 re-reads it in ~2 µs


def _device(pid: str) -> tuple[int, int] | None:
    """(read_bytes, write_bytes) of this process ("self") or of a child; None where /proc/<pid>/io is missing."""
    try:
        if pid == "self":
            if not _SELF_IO:
                _SELF_IO.append(os.open("/proc/self/io", os.O_RDONLY))
            words = os.pread(_SELF_IO[0], 4096, 0).split()
        else:
            fd = os.open(f"/proc/{pid}/io", os.O_RDONLY)
            try:
                words = os.read(fd, 4096).split()
            finally:
                os.close(fd)
    except OSError:
        return None
    counters = dict(zip(words[::2], words[1::2]))
    if b"read_bytes:" not in counters or b"write_bytes:" not in counters:
        return None
    return int(counters[b"read_bytes:"]), int(counters[b"write_bytes:"])


def _child(pid: int) -> list[float]:
    """[user s, system s, read bytes, write bytes] of a live child (zeros once it is gone: getrusage counts it then)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return [0.0, 0.0, 0, 0]
    tick = os.sysconf("SC_CLK_TCK")
    return [int(fields[11]) / tick, int(fields[12]) / tick, *(_device(str(pid)) or (0, 0))]


def live_children() -> list[int]:
    """Processes whose parent is this one, alive now (Linux; empty elsewhere)."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rpartition(")")[2].split()[1] == me:
                found.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return found


def _other_counters(children: Sequence[int]) -> list[float]:
    """[user s, system s, read bytes, write bytes] of the live ``children`` plus this process's device bytes
    (NaN where they cannot be read)."""
    total = [0.0, 0.0, *(_device("self") or (math.nan, math.nan))]
    for pid in children:
        total = [a + b for a, b in zip(total, _child(pid))]
    return total


def _status_bytes(field: str) -> int | None:
    """A "kB" field of /proc/self/status in bytes, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _max_rss() -> int:
    """The process's lifetime peak RSS in bytes (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak resident memory above the level at start: VmHWM reset at start on Linux, else ru_maxrss growth."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = _status_bytes("VmRSS")
            self.resettable = self.start is not None
        except OSError:
            self.resettable = False
        if not self.resettable:
            self.start = _max_rss()

    def increase(self) -> int:
        peak = _status_bytes("VmHWM") if self.resettable else _max_rss()
        return max(0, (peak or 0) - self.start)


class Meter:
    """Measures the timed rounds: the window around them minus every untimed setup inside it (wrap the setup).

    A wrapped setup reads the CPU clock first and last, so the cost of its own readings counts as setup; what
    remains per round besides the target is pytest-benchmark's bookkeeping, a few microseconds.
    """

    def __init__(self) -> None:
        self.children = live_children()  # worker processes started before the rounds
        self.in_setups = [0.0] * 6  # user, system, then the other counters of _other_counters
        self.started = [*_cpu(), *_other_counters(self.children)]
        self.peak = PeakMemory()

    def wrap(self, setup: Callable[[], Any]) -> Callable[[], Any]:
        def measured_setup() -> Any:
            cpu_before = _cpu()
            others_before = _other_counters(self.children)
            result = setup()
            others_after = _other_counters(self.children)
            cpu_after = _cpu()
            spent = [a - b for a, b in zip((*cpu_after, *others_after), (*cpu_before, *others_before))]
            self.in_setups = [a + b for a, b in zip(self.in_setups, spent)]
            return result

        return measured_setup

    def per_round(self, rounds: int) -> dict[str, Any]:
        """extra_info fields: each counter's mean per timed round, and the peak memory increase."""
        ended = [*_cpu(), *_other_counters(self.children)]
        user, system, child_user, child_system, read, write = (
            a - b - c for a, b, c in zip(ended, self.started, self.in_setups)
        )
        user, system = user + child_user, system + child_system
        fields: dict[str, Any] = {
            "cpu_s": (user + system) / rounds,
            "cpu_user_s": user / rounds,
            "cpu_system_s": system / rounds,
            "peak_rss_increase_bytes": self.peak.increase(),
        }
        if math.isnan(read):
            fields["resources_note"] = NO_DEVICE_IO
        else:
            fields["device_read_bytes"] = max(0, read) / rounds
            fields["device_write_bytes"] = max(0, write) / rounds
        return fields

"""Readable units for times and sizes, shared by every table and chart."""

from __future__ import annotations

from collections.abc import Iterable

TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))
BYTE_UNITS = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0))


def _unit(values: Iterable[float], units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    """Largest unit in which the biggest value is at least 1 (the smallest unit if all are tiny)."""
    biggest = max((abs(value) for value in values), default=0.0)
    return next((unit for unit in units if biggest >= unit[1]), units[-1])


def time_unit(seconds: Iterable[float]) -> tuple[str, float]:
    """("ms", 1e-3) and the like: a unit that keeps the biggest of these times readable."""
    return _unit(seconds, TIME_UNITS)


def byte_unit(sizes: Iterable[float]) -> tuple[str, float]:
    """("MB", 1e6) and the like (decimal units, as du -B and the MB/s column use)."""
    return _unit(sizes, BYTE_UNITS)


def format_seconds(seconds: float) -> str:
    name, scale = time_unit([seconds])
    return f"{seconds / scale:.3g} {name}"


def format_bytes(size: float) -> str:
    name, scale = byte_unit([size])
    return f"{size / scale:.3g} {name}"

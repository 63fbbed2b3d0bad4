"""Options of method variants (``method:key=value,...``): what each option allows and how its text is parsed.

Each store class declares the options it takes in ``OPTIONS`` (name -> ``Option``); the registry checks a
spec's options with ``check_options`` and binds them to the class. Sizes take a unit: ``64MiB``, ``1GiB``,
``500kB``, ``1048576`` (bytes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from storage_impls.core.codecs import CODECS, get_codec


class Option(NamedTuple):
    """One option a method takes: ``parse`` turns a text (or an already typed value) into the value, or
    raises ValueError; ``allowed`` says what it accepts; ``format`` spells a value canonically."""

    parse: Callable[[object], object]
    allowed: str
    format: Callable[[object], str] = str


def choice(*values: str) -> Option:
    """One of ``values``."""

    def parse(value: object) -> str:
        if value not in values:
            raise ValueError
        return value

    return Option(parse, ", ".join(values))


def integer(low: int, high: int) -> Option:
    """An integer from ``low`` to ``high``."""

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise ValueError
        number = int(value)
        if not low <= number <= high:
            raise ValueError
        return number

    return Option(parse, f"an integer {low}..{high}")


FLAG_TEXTS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}


def flag() -> Option:
    """On or off: a bool, or true/false, yes/no, on/off, 1/0; spelled ``true`` or ``false``."""

    def parse(value: object) -> bool:
        if isinstance(value, bool):
            return value
        if not isinstance(value, str) or value.strip().lower() not in FLAG_TEXTS:
            raise ValueError
        return FLAG_TEXTS[value.strip().lower()]

    return Option(parse, "true or false", lambda value: str(value).lower())


def codec() -> Option:
    """An image codec (codecs.py), spelled canonically."""

    def parse(value: object) -> str:
        return get_codec(value).spec

    return Option(parse, CODECS)


SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def byte_size() -> Option:
    """A number of bytes, with an optional unit (B, kB, MB, GB, KiB, MiB, GiB)."""

    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            if value < 0:
                raise ValueError
            return value
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if not match or match[2].lower() not in SIZE_UNITS:
            raise ValueError
        return int(match[1]) * SIZE_UNITS[match[2].lower()]

    def format_size(value: object) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if value and value % SIZE_UNITS[unit.lower()] == 0:
                return f"{value // SIZE_UNITS[unit.lower()]}{unit}"
        return str(value)

    return Option(parse, "a size in bytes such as 1048576, 512KiB, 64MiB or 1GiB", format_size)


def check_options(method: str, declared: dict[str, Option], given: dict[str, object]) -> dict[str, object]:
    """``given`` options parsed by what ``declared`` allows (None values dropped); ValueError listing what is
    allowed."""
    parsed = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in declared:
            takes = "; ".join(f"{key} ({option.allowed})" for key, option in declared.items()) or "no options"
            raise ValueError(f"{method}: unknown option {name!r}; {method} takes {takes}")
        try:
            parsed[name] = declared[name].parse(value)
        except (ValueError, TypeError):
            raise ValueError(f"{method}: {name}={value!r} is not allowed; use {declared[name].allowed}") from None
    return parsed

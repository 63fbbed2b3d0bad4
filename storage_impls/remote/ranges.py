"""Byte ranges of a batch: coalesced where they touch or overlap, in offset order, and the parts cut back out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Span(NamedTuple):
    """Bytes ``start`` .. ``stop`` - 1 of object ``key``."""

    key: str
    start: int
    stop: int


def coalesce(spans: Sequence[Span]) -> tuple[list[Span], list[tuple[int, int]]]:
    """The requests that fetch ``spans``: per object, in offset order, one request per run of spans that touch or
    overlap (never bytes no span asked for); and for each span, (its request, its offset inside that request)."""
    order = sorted(range(len(spans)), key=lambda index: (spans[index].key, spans[index].start))
    requests: list[Span] = []
    where: list[tuple[int, int]] = [(0, 0)] * len(spans)
    for index in order:
        key, start, stop = spans[index]
        if start < 0 or stop < start:
            raise ValueError(f"bytes {start}..{stop} of {key} are not a range")
        last = requests[-1] if requests else None
        if last is not None and last.key == key and start <= last.stop:
            requests[-1] = Span(key, last.start, max(last.stop, stop))
        else:
            requests.append(Span(key, start, stop))
        where[index] = (len(requests) - 1, start - requests[-1].start)
    return requests, where

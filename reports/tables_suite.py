"""More published tables from suite runs: the tutorial's grid, single writes amortised, shuffled epochs in detail,
read-ahead by page cache, loaders, remote epochs and a plain per-method summary; and the tables of script figures
(reports.figures). Same contract as reports.tables: a shaper takes the runs a block names and returns a Table.
"""

from __future__ import annotations

from collections.abc import Sequence

from reports.figures import Figure
from reports.loaders import PEER, READ_BATCH, loader_points, loader_rows
from reports.markdown import format_rate
from reports.remote import remote_points
from reports.results import Cell, Run
from reports.tables import DASH, PublishedCells, Table, _disk, _rate, _workers
from reports.units import format_seconds


def _seconds(value: object) -> str:
    return DASH if value is None else format_seconds(float(value))  # type: ignore[arg-type]


def _median(cell: Cell | None) -> str:
    return DASH if cell is None else format_seconds(cell.stats["median"])


def _cutoffs(cells: PublishedCells, operation: str) -> list[int]:
    return sorted({cell.n_images for cell in cells.cells if cell.operation == operation})


def tutorial(runs: Sequence[Run]) -> Table:
    """The tutorial's grid: store_many and read_many medians at every image count per method, with ours/floor and
    the store's size at the largest."""
    cells = PublishedCells(runs)
    counts = _cutoffs(cells, "store_many")
    top = counts[-1] if counts else 0
    rows = []
    for method in cells.methods:
        store = {n: cells.find(method, "store_many", n) for n in counts}
        read = {n: cells.find(method, "read_many", n) for n in counts}
        rows.append(
            (
                f"`{method}`",
                *(f"{_median(store[n])} / {_median(read[n])}" for n in counts),
                f"{cells.ratio(store.get(top))}, {cells.ratio(read.get(top))}",
                _disk(store.get(top)),
            )
        )
    return Table(
        (
            "method",
            *(f"{n:,}: store_many / read_many" for n in counts),
            f"ours/floor at {top:,} (store, read)",
            f"on disk at {top:,}",
        ),
        tuple(rows),
    )


def single_writes(runs: Sequence[Run]) -> Table:
    """Single writes: store_single into a fresh store, then per write into a filled store amortised over whole
    cycles of upkeep at the smallest and largest image count, their ratio (the O(1) target: at most 2), and the
    p99 and max of every write at the largest."""
    cells = PublishedCells(runs)
    counts = _cutoffs(cells, "store_single_into")
    low, high = (counts[0], counts[-1]) if counts else (0, 0)
    rows = []
    for method in cells.methods:
        first, last = (cells.find(method, "store_single_into", n) for n in (low, high))
        ratio = DASH if first is None or last is None else f"{last.seconds_per_image / first.seconds_per_image:.2f}"
        info = {} if last is None else last.extra_info
        rows.append(
            (
                f"`{method}`",
                _median(cells.find(method, "store_single")),
                DASH if first is None else format_seconds(first.seconds_per_image),
                DASH if last is None else format_seconds(last.seconds_per_image),
                ratio,
                _seconds(info.get("write_p99_s")),
                _seconds(info.get("write_max_s")),
                str(info.get("upkeeps", DASH)),
                cells.ratio(last),
            )
        )
    return Table(
        (
            "method",
            "store_single, fresh store",
            f"into {low:,}, amortised per write",
            f"into {high:,}, amortised per write",
            f"{high:,} / {low:,}",
            f"p99 at {high:,}",
            f"max at {high:,}",
            "upkeeps timed",
            "ours/floor",
        ),
        tuple(rows),
    )


def shuffled(runs: Sequence[Run]) -> Table:
    """Shuffled epochs in detail: a row per method and worker count (every cache the runs have), images/s, ours/floor,
    shuffled over sequential images/s, batch latency, first batch and worker start-up."""
    cells = PublishedCells(runs)
    rows = []
    for cell in cells.cells:
        if cell.operation != "read_random":
            continue
        info = cell.extra_info
        sequential = cells.find(cell.method, "read_many", cell.n_images)
        rows.append(
            (
                f"`{cell.method}`",
                f"{cell.n_images:,} {cell.variant}",
                _rate(cell),
                cells.ratio(cell),
                DASH if sequential is None else f"{sequential.seconds_per_image / cell.seconds_per_image:.2f}",
                _seconds(info.get("batch_p50_s")),
                _seconds(info.get("batch_p99_s")),
                _seconds(info.get("first_batch_s")),
                _seconds(info.get("startup_s")),
            )
        )
    return Table(
        (
            "method",
            "epoch",
            "images/s",
            "ours/floor",
            "shuffled/sequential",
            "batch p50",
            "p99",
            "first batch",
            "startup",
        ),
        tuple(rows),
    )


def readahead(runs: Sequence[Run]) -> Table:
    """Read-ahead: a row per variant, the median epoch in each page-cache regime with its ratio to the floor
    (warm: gather; cold and limited: file-read-cold) and, limited, the share of the store cached at the end."""
    cells = PublishedCells(runs)
    caches = [
        cache
        for cache in ("warm", "cold", "limited")
        if any(cell.extra_info.get("cache") == cache for cell in cells.cells if cell.operation == "read_random")
    ]

    def shown(method: str, cache: str) -> str:
        cell = cells.find(method, "read_random", cache=cache)
        if cell is None:
            return DASH
        ratio, _, flag = cells.ratio(cell).partition(" ")  # "2.10" or "0.80 ⚠" (flagged below its floor)
        text = f"{format_seconds(cell.stats['median'])} ({ratio}x{' ' + flag if flag else ''})"
        cached = cell.extra_info.get("resident_fraction_after")
        return text if cache != "limited" or cached is None else f"{text}, {cached:.0%} cached"

    methods = [method for method in cells.methods if cells.find(method, "read_random")]
    return Table(
        ("variant", *caches), tuple((f"`{method}`", *(shown(method, cache) for cache in caches)) for method in methods)
    )


def methods(runs: Sequence[Run]) -> Table:
    """Per method at the largest image count: images/s of store_many, read_many and warm shuffled epochs by worker
    count, and the store's size on disk."""
    cells = PublishedCells(runs)
    count, workers = cells.largest("store_many"), _workers(cells)
    rows = tuple(
        (
            f"`{method}`",
            _rate(cells.find(method, "store_many", count)),
            _rate(cells.find(method, "read_many", count)),
            *(_rate(cells.find(method, "read_random", workers=w, cache="warm")) for w in workers),
            _disk(cells.find(method, "store_many", count)),
        )
        for method in cells.methods
    )
    return Table(
        (
            "method",
            f"store_many {count:,}, img/s",
            f"read_many {count:,}, img/s",
            *(f"shuffled, {w} worker{'s' * (w > 1)}, img/s" for w in workers),
            "on disk",
        ),
        rows,
    )


def loaders(runs: Sequence[Run]) -> Table:
    """Loader cells: images/s per loader and num_workers, and the DataLoader at 0 workers over read_batch alone."""
    rows = loader_rows(loader_points(runs))
    workers = sorted({count for row in rows for count in row.images_per_s if count is not None})
    alone = {  # read_batch alone by setting and method, whose label is "<method> (read_batch alone)"
        (row.setting, row.label.split(" ")[0]): row.images_per_s[None]
        for row in rows
        if row.kind == READ_BATCH and None in row.images_per_s
    }
    table = []
    for row in rows:
        column = {0: None} if row.kind == READ_BATCH else {}  # read_batch alone runs in this process: the w0 column
        rates = [
            format_rate(row.images_per_s[key]) if (key := column.get(w, w)) in row.images_per_s else DASH
            for w in workers
        ]
        bound, w0 = alone.get((row.setting, row.label)), row.images_per_s.get(0)
        over = DASH if bound is None or w0 is None or row.kind == PEER else f"{bound / w0:.2f}x"
        table.append((row.label, *rates, over))
    return Table(
        ("loader", *(f"num_workers={w}, img/s" for w in workers), "DataLoader w0 time over read_batch alone"),
        tuple(table),
    )


def remote(runs: Sequence[Run]) -> Table:
    """Remote epochs: a row per cell, images/s beside its floor, requests per image, read amplification and the
    first batch (stage-then-read methods: the download too)."""
    rows = tuple(
        (
            f"`{point.label}`",
            point.order,
            point.network,
            str(point.workers),
            format_rate(point.images_per_s),
            DASH if point.floor_images_per_s is None else format_rate(point.floor_images_per_s),
            DASH if point.requests_per_image is None else f"{point.requests_per_image:.3g}",
            DASH if point.read_amplification is None else f"{point.read_amplification:.2f}",
            format_seconds(point.first_batch_s),
            _seconds(point.stage_s),
        )
        for point in remote_points(runs)
    )
    return Table(
        (
            "method",
            "order",
            "network",
            "workers",
            "images/s",
            "floor images/s",
            "requests/image",
            "read amplification",
            "first batch",
            "download (stage)",
        ),
        rows,
    )


def figure(figures: Sequence[Figure]) -> Table:
    """A script's saved table (reports.figures), as the script formatted it; several figures of one kind stack."""
    header = figures[0].header
    return Table(header, tuple(row for item in figures for row in item.rows))


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def costs(runs: Sequence[Run]) -> Table:
    """What each kept run cost: its file (the block's first line gives its command), its cells and the wall time of
    its session (machine_info.session_s)."""
    rows = []
    for run in runs:
        info = run.machine_info
        seconds = info.get("session_s")
        rows.append(
            (
                f"`{run.path.name}`",
                f"{len(run.cells):,}",
                DASH if seconds is None else _duration(float(seconds)),
            )
        )
    return Table(("run", "cells", "time"), tuple(rows))

"""The tables published in README.md and docs/benchmarks.md, shaped from saved runs (``python -m reports publish``).

Each shaper takes the runs a block names and returns a Table (header and rows of text); reports.publish draws it
as Markdown. Shapers only pick and format what reports.results, reports.floors and reports.codecs already
compute, so a published table says what report.md says about the same run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from reports.codecs import codec_views
from reports.floors import floor_checks
from reports.markdown import format_rate
from reports.results import Cell, Run
from reports.shape import method_cells
from reports.units import format_bytes, format_seconds

DASH = "–"


class Table(NamedTuple):
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


class PublishedCells:
    """The method cells of one or more runs of one setting (a default run and its cold-cache twin), by what tells
    them apart in a published table, with each cell's ours/floor from its own run."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.cells = [cell for run in runs for cell in method_cells(run)]
        self.checks = {key: check for run in runs for key, check in floor_checks(run.cells).items()}

    @property
    def methods(self) -> list[str]:
        """Methods in the order of first appearance (the suite's order)."""
        return list(dict.fromkeys(cell.method for cell in self.cells))

    def largest(self, operation: str) -> int:
        return max((cell.n_images for cell in self.cells if cell.operation == operation), default=0)

    def find(self, method: str, operation: str, n_images: int | None = None, **extra: object) -> Cell | None:
        """The cell of this method and operation (at n_images when given) whose extra_info has ``extra``."""
        return next(
            (
                cell
                for cell in self.cells
                if cell.method == method
                and cell.operation == operation
                and n_images in (None, cell.n_images)
                and all(cell.extra_info.get(field) == value for field, value in extra.items())
            ),
            None,
        )

    def ratio(self, cell: Cell | None) -> str:
        """ours/floor, marked ⚠ where the cell is flagged below its floor (reports.floors: a bug until explained)."""
        check = None if cell is None else self.checks.get(cell.key)
        return DASH if check is None else f"{check.ratio:.2f}" + (" ⚠" if check.implausible else "")


def _rate(cell: Cell | None) -> str:
    """Images/s of a cell at its median (single writes: amortised), or a dash."""
    return DASH if cell is None else format_rate(1 / cell.seconds_per_image)


def _pair(values: Iterable[str]) -> str:
    return " / ".join(values)


def _disk(cell: Cell | None, per_image: bool = False) -> str:
    size = None if cell is None else cell.extra_info.get("disk_usage", {}).get("allocated_bytes")
    return DASH if size is None else format_bytes(size / cell.n_images if per_image else size)


def _workers(cells: PublishedCells) -> list[int]:
    return sorted({int(cell.extra_info["workers"]) for cell in cells.cells if cell.operation == "read_random"})


def results(runs: Sequence[Run]) -> Table:
    """README's results: per method, store_many and read_many at the largest image count, the shuffled epoch with
    the most workers, warm, and the store's size on disk."""
    cells = PublishedCells(runs)
    count = cells.largest("store_many")
    workers = max(_workers(cells), default=1)
    rows = []
    for method in cells.methods:
        store, read = (cells.find(method, operation, count) for operation in ("store_many", "read_many"))
        shuffled = cells.find(method, "read_random", workers=workers, cache="warm", batch_size=256)
        rows.append(
            (
                f"`{method}`",
                DASH if store is None else format_seconds(store.stats["median"]),
                DASH if read is None else format_seconds(read.stats["median"]),
                _rate(shuffled),
                _disk(store),
            )
        )
    return Table(
        (
            "method",
            f"store_many {count:,}",
            f"read_many {count:,}",
            f"shuffled epoch, {workers} workers (images/s)",
            "on disk (`du`)",
        ),
        tuple(rows),
    )


def workloads(runs: Sequence[Run]) -> Table:
    """docs/benchmarks.md's "which format for which workload": images/s of every workload per method at the
    largest image count, shuffled epochs by page cache (warm, cold, limited: those the runs have) and workers, bytes
    per image and single writes."""
    cells = PublishedCells(runs)
    count, workers = cells.largest("store_many"), _workers(cells)
    caches = [
        cache
        for cache in ("warm", "cold", "limited")
        if any(cell.extra_info.get("cache") == cache for cell in cells.cells if cell.operation == "read_random")
    ]
    into = sorted({cell.n_images for cell in cells.cells if cell.operation == "store_single_into"})
    into_counts = [into[0], into[-1]] if into else []

    def shuffled(method: str, cache: str) -> str:
        return _pair(_rate(cells.find(method, "read_random", cache=cache, workers=w, batch_size=256)) for w in workers)

    def milliseconds(cell: Cell | None) -> str:
        return DASH if cell is None else f"{cell.seconds_per_image * 1e3:.2f}"

    rows = tuple(
        (
            f"`{method}`",
            _rate(cells.find(method, "store_many", count)),
            _rate(cells.find(method, "read_many", count)),
            *(shuffled(method, cache) for cache in caches),
            _disk(cells.find(method, "store_many", count), per_image=True),
            milliseconds(cells.find(method, "store_single")),
            _pair(milliseconds(cells.find(method, "store_single_into", n)) for n in into_counts),
        )
        for method in cells.methods
    )
    by = " / ".join(map(str, workers))
    return Table(
        (
            "method",
            "store_many, img/s",
            "read_many, img/s",
            *(f"shuffled {cache} {by} workers, img/s" for cache in caches),
            "on disk per image",
            "store_single fresh, ms",
            f"store_single into {' / '.join(f'{n:,}' for n in into_counts)}, amortised ms per write",
        ),
        rows,
    )


def codecs(runs: Sequence[Run]) -> Table:
    """docs/benchmarks.md's codec tables: per method variant, bytes on disk per image and over raw pixels, store,
    sequential and shuffled (1 worker, warm) images/s, ours/floor of each and PSNR; fastest sequential read first."""
    cells = PublishedCells(runs)
    count = cells.largest("store_many")
    rows = []
    for view in codec_views(runs):
        for row in view.rows:
            store, read = (cells.find(row.method, operation, count) for operation in ("store_many", "read_many"))
            shuffled = cells.find(row.method, "read_random", workers=1, cache="warm", batch_size=view.batch_size)
            psnr = DASH if row.codec is None else "lossless" if row.psnr_db is None else f"{row.psnr_db:.1f}"
            rows.append(
                (
                    row.sequential.images_per_s if row.sequential else 0.0,
                    (
                        f"`{row.method}`",
                        DASH if row.disk_bytes_per_image is None else format_bytes(row.disk_bytes_per_image),
                        DASH if row.ratio is None else f"{row.ratio:.3f}×",
                        _rate(store),
                        _rate(read),
                        _rate(shuffled),
                        ", ".join(cells.ratio(cell) for cell in (store, read, shuffled)),
                        psnr,
                    ),
                )
            )
    return Table(
        (
            "method",
            "on disk per image",
            "× raw",
            "store_many img/s",
            "read_many img/s",
            "shuffled img/s",
            "ours/floor (store, read, shuffled)",
            "PSNR dB",
        ),
        tuple(row for _, row in sorted(rows, key=lambda item: -item[0])),
    )

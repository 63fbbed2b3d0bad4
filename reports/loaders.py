"""The loader part of the report: ours through a DataLoader beside the loaders people use (benchmarks/test_loader.py).

Load: ``loader_points(runs)`` reduces each cell of the operations ``loader`` (ImageDataset through a DataLoader),
``loader_peer`` (a peer's loader) and ``read_batches`` (the same batches by read_batch alone) to a LoaderPoint.
Shape: ``loader_rows(points)`` puts them in a table, a row per loader and a column per worker count, for each run,
image count and shape, and batch size. Draw: ``plot_loaders(ax, rows, ...)`` and ``write_loader_charts``. Text:
``loader_section``. Runs without loader cells give no points, no charts and an empty section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reports.markdown import format_rate, markdown_table
from reports.results import Run

if TYPE_CHECKING:
    from matplotlib.axes import Axes

OURS, PEER, READ_BATCH = "loader", "loader_peer", "read_batches"
KINDS = {OURS: "ImageDataset", READ_BATCH: "read_batch alone", PEER: "peer"}
CAPTION = (
    "Images per second of one shuffled epoch through torch's DataLoader, a panel per image size: ours "
    "(ImageDataset handing whole batches over) in blue, the peers in grey, read_batch alone (no DataLoader, "
    "the same batches) as a hatched bar; a bar per worker count."
)


@dataclass(frozen=True)
class LoaderPoint:
    """One loader cell of one run."""

    run_index: int
    kind: str  # OURS, PEER or READ_BATCH
    name: str  # the method or the peer
    n_images: int
    image_shape: tuple[int, ...]
    batch_size: int
    workers: int | None  # None for read_batch alone
    median_s: float
    load_average: float | None  # the machine's 1-minute load average before the cell

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.median_s

    @property
    def label(self) -> str:
        return f"{self.name} ({KINDS[self.kind]})" if self.kind != OURS else self.name

    @property
    def setting(self) -> tuple:
        """What a row of the table shares: run, image count and shape, batch size."""
        return (self.run_index, self.n_images, self.image_shape, self.batch_size)


def loader_points(runs: Sequence[Run]) -> tuple[LoaderPoint, ...]:
    """Every loader cell of every run, ours first, then read_batch alone, then the peers."""
    points = [
        LoaderPoint(
            run_index=run_index,
            kind=cell.operation,
            name=cell.method,
            n_images=cell.n_images,
            image_shape=cell.image_shape,
            batch_size=int(cell.extra_info["batch_size"]),
            workers=None if cell.operation == READ_BATCH else int(cell.extra_info["workers"]),
            median_s=cell.stats["median"],
            load_average=cell.extra_info.get("load_average_before"),
        )
        for run_index, run in enumerate(runs)
        for cell in run.cells
        if cell.operation in KINDS
    ]
    return tuple(
        sorted(
            points, key=lambda point: (*point.setting, list(KINDS).index(point.kind), point.name, point.workers or 0)
        )
    )


@dataclass(frozen=True)
class LoaderRow:
    """A loader's images/s by worker count (None: read_batch alone) in one setting."""

    setting: tuple
    kind: str
    label: str
    images_per_s: Mapping[int | None, float]


def loader_rows(points: Sequence[LoaderPoint]) -> list[LoaderRow]:
    rows: dict[tuple, dict[int | None, float]] = {}
    kinds: dict[tuple, str] = {}
    for point in points:
        key = (point.setting, point.label)
        rows.setdefault(key, {})[point.workers] = point.images_per_s
        kinds[key] = point.kind
    return [LoaderRow(setting, kinds[setting, label], label, values) for (setting, label), values in rows.items()]


def _setting_title(setting: tuple, run_labels: Sequence[str]) -> str:
    run_index, n_images, shape, batch_size = setting
    run = f"{run_labels[run_index]}:\n" if len(run_labels) > 1 else ""
    return f"{run}{n_images:,} images of {'x'.join(map(str, shape))}, batches of {batch_size}"


def plot_loaders(ax: Axes, rows: Sequence[LoaderRow], title: str) -> None:
    """Horizontal bars of images/s (log axis), a group per loader, a bar per worker count."""
    from matplotlib.patches import Patch

    from reports.draw import add_legend

    workers = sorted({count for row in rows for count in row.images_per_s if count is not None})
    height = 0.8 / max(1, len(workers))
    colours = {OURS: "tab:blue", PEER: "tab:grey", READ_BATCH: "tab:blue"}
    for position, row in enumerate(rows):
        for index, (count, rate) in enumerate(sorted(row.images_per_s.items(), key=lambda item: item[0] or 0)):
            offset = 0.0 if count is None else (index - (len(row.images_per_s) - 1) / 2) * height
            ax.barh(
                position + offset,
                rate,
                height=height,
                color=colours[row.kind],
                alpha=1.0 if count is None else 0.45 + 0.55 * workers.index(count) / max(1, len(workers) - 1),
                hatch="//" if row.kind == READ_BATCH else None,
                edgecolor="white",
            )
    ax.set_yticks(range(len(rows)), [row.label for row in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images per second (median epoch)")
    ax.set_title(title)
    add_legend(
        ax,
        [
            Patch(color="tab:blue", alpha=0.45 + 0.55 * index / max(1, len(workers) - 1), label=f"w{count}")
            for index, count in enumerate(workers)
        ],
    )


def write_loader_charts(points: Sequence[LoaderPoint], run_labels: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Draw ``loaders`` (a panel per setting) as PNG and SVG in ``out_dir``; {name: png path}, empty without cells."""
    if not points:
        return {}
    import matplotlib.pyplot as plt

    from reports.draw import RC, STYLE

    rows = loader_rows(points)
    settings = list(dict.fromkeys(row.setting for row in rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.style.context(STYLE), plt.rc_context(RC):
        most = max(sum(row.setting == setting for row in rows) for setting in settings)
        figure = plt.figure(figsize=(6.5 * len(settings), 1.0 + 0.45 * most), layout="constrained")
        axes = figure.subplots(1, len(settings), squeeze=False)[0]
        for ax, setting in zip(axes, settings):
            plot_loaders(ax, [row for row in rows if row.setting == setting], _setting_title(setting, run_labels))
        figure.suptitle("Shuffled epochs through a DataLoader: ours beside the usual loaders")
        figure.savefig(out_dir / "loaders.png", metadata={"Software": None})
        figure.savefig(out_dir / "loaders.svg", metadata={"Date": None, "Creator": None})
        plt.close(figure)
    return {"loaders": out_dir / "loaders.png"}


def loader_table(rows: Sequence[LoaderRow]) -> str:
    """A row per loader, images/s per worker count (read_batch alone in the w0 column: it runs in this process)."""
    workers = sorted({count for row in rows for count in row.images_per_s if count is not None})
    return markdown_table(
        ("loader", *(f"images/s, num_workers={count}" for count in workers)),
        (
            (
                row.label,
                *(
                    format_rate(row.images_per_s[key])
                    if (key := None if row.kind == READ_BATCH and count == 0 else count) in row.images_per_s
                    else "–"
                    for count in workers
                ),
            )
            for row in rows
        ),
    )


def loader_section(points: Sequence[LoaderPoint], run_labels: Sequence[str], charts: Mapping[str, Path]) -> str:
    """The "Loaders" section of report.md, or "" without loader cells."""
    if not points:
        return ""
    loads = [point.load_average for point in points if point.load_average is not None]
    parts = [
        "## Loaders: ours beside the usual ones",
        "",
        "Each cell is one shuffled epoch through `torch.utils.data.DataLoader`, every id read once, checked bit for "
        "bit after the timing. Ours is `ImageDataset` handing whole batches over "
        "(`storage_impls.loader.batch_loader`); "
        "read_batch alone reads the same batches in the training process without a DataLoader; the peers read their "
        "own files of the same images (benchmarks/peers.py)."
        + (
            f" The machine's 1-minute load average before the cells: {min(loads):.1f} to {max(loads):.1f}."
            if loads
            else ""
        ),
        "",
    ]
    if "loaders" in charts:
        parts += [f"![loaders]({charts['loaders'].name})", "", CAPTION, ""]
    rows = loader_rows(points)
    for setting in dict.fromkeys(row.setting for row in rows):
        parts += [
            f"### {_setting_title(setting, run_labels).replace(chr(10), ' ')}",
            "",
            loader_table([row for row in rows if row.setting == setting]),
            "",
        ]
    return "\n".join(parts)

"""The training-read part of the report: read_random cells (shuffled batches, worker processes, warm or cold cache).

Shape: ``training_points(runs)`` reduces each read_random cell to a TrainingPoint (images/s, its ratio to the
same run's sequential read_many at the same image count, per-batch latency, time to first batch, start-up) and
``throughput_curves(points, against)`` lines them up against batch size or worker count. Draw:
``plot_throughput(ax, ...)`` and ``write_training_charts(points, labels, out_dir)``. Text:
``training_section(points, labels, charts)``, the Markdown section. Runs without read_random cells give no
points, no charts and an empty section.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reports.markdown import format_rate, markdown_table
from reports.results import Run
from reports.shape import method_cells
from reports.units import format_seconds

if TYPE_CHECKING:
    from matplotlib.axes import Axes

OPERATION = "read_random"
CACHE_ORDER = ("warm", "cold", "limited")
Axis = Literal["batch_size", "workers"]
AXIS_NAMES = {"batch_size": ("batch size (images)", "b"), "workers": ("worker processes", "w")}
CHART_TITLES = {
    "read_random_batch_size": "Shuffled epoch: images/s against batch size",
    "read_random_workers": "Shuffled epoch: images/s against worker processes",
}
CAPTIONS = {
    "read_random_batch_size": "Images per second of one shuffled epoch against the batch size, a panel per page-cache "
    "state; colour is the method, line style the worker count, marker the run.",
    "read_random_workers": "Images per second of one shuffled epoch against the number of reader processes (w1 is one "
    "worker process, like num_workers=1), a panel per page-cache state; line style is the batch size.",
}


@dataclass(frozen=True)
class TrainingPoint:
    """One read_random cell of one run, with what the training charts and table show."""

    run_index: int
    method: str
    n_images: int
    image_shape: tuple[int, ...]
    batch_size: int
    workers: int
    cache: str
    median_s: float  # one epoch
    mb_per_s: float
    sequential_images_per_s: float | None  # read_many of the same run at the same image count and shape
    batch_p50_s: float | None
    batch_p99_s: float | None
    first_batch_s: float | None
    startup_s: float | None
    resident_fraction_before: float | None

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.median_s

    @property
    def random_over_sequential(self) -> float | None:
        """read_random images/s over read_many images/s: how much a shuffled, batched epoch costs over a scan."""
        return self.images_per_s / self.sequential_images_per_s if self.sequential_images_per_s else None


@dataclass(frozen=True)
class Curve:
    """Images/s of one method in one run against batch size or workers, the other settings fixed."""

    run_index: int
    method: str
    cache: str
    fixed: str  # the other setting, as the test id writes it: "w2" or "b256" (plus the image count when runs mix them)
    x: tuple[int, ...]
    y: tuple[float, ...]


def training_points(runs: Sequence[Run]) -> tuple[TrainingPoint, ...]:
    """Every read_random cell of every run (floor cells left out), by run, method, cache, batch size, workers."""
    points = []
    for run_index, run in enumerate(runs):
        cells = method_cells(run)
        sequential = {
            (cell.method, cell.n_images, cell.image_shape): cell.n_images / cell.stats["median"]
            for cell in cells
            if cell.operation == "read_many"
        }
        for cell in cells:
            if cell.operation != OPERATION:
                continue
            info = cell.extra_info
            points.append(
                TrainingPoint(
                    run_index=run_index,
                    method=cell.method,
                    n_images=cell.n_images,
                    image_shape=cell.image_shape,
                    batch_size=int(info["batch_size"]),
                    workers=int(info["workers"]),
                    cache=str(info["cache"]),
                    median_s=cell.stats["median"],
                    mb_per_s=cell.raw_bytes / 1e6 / cell.stats["median"],
                    sequential_images_per_s=sequential.get((cell.method, cell.n_images, cell.image_shape)),
                    **{
                        field: _number(info.get(field))
                        for field in (
                            "batch_p50_s",
                            "batch_p99_s",
                            "first_batch_s",
                            "startup_s",
                            "resident_fraction_before",
                        )
                    },
                )
            )
    return tuple(sorted(points, key=_order))


def _number(value: object) -> float | None:
    return None if value is None else float(value)


def _order(point: TrainingPoint) -> tuple:
    cache = CACHE_ORDER.index(point.cache) if point.cache in CACHE_ORDER else len(CACHE_ORDER)
    return (point.run_index, point.n_images, point.image_shape, point.method, cache, point.batch_size, point.workers)


def throughput_curves(points: Sequence[TrainingPoint], against: Axis) -> list[Curve]:
    """Lines of images/s against ``against`` (batch_size or workers), one per run, method, cache and other setting."""
    other: Axis = "workers" if against == "batch_size" else "batch_size"
    mixed_counts = len({(point.n_images, point.image_shape) for point in points}) > 1
    grouped: dict[tuple, list[TrainingPoint]] = defaultdict(list)
    for point in points:
        fixed = f"{AXIS_NAMES[other][1]}{getattr(point, other)}"
        if mixed_counts:
            fixed += f" n={point.n_images:,} {'x'.join(map(str, point.image_shape))}"
        grouped[point.run_index, point.method, point.cache, fixed].append(point)
    curves = []
    for (run_index, method, cache, fixed), line in grouped.items():
        line.sort(key=lambda point: getattr(point, against))
        curves.append(
            Curve(
                run_index,
                method,
                cache,
                fixed,
                tuple(getattr(point, against) for point in line),
                tuple(point.images_per_s for point in line),
            )
        )
    return curves


def chart_axes(points: Sequence[TrainingPoint]) -> list[Axis]:
    """The settings worth a chart: those with at least two values in some run (one value is no trend)."""
    runs = {point.run_index for point in points}
    return [
        axis
        for axis in AXIS_NAMES
        if any(len({getattr(point, axis) for point in points if point.run_index == run}) > 1 for run in runs)
    ]


def plot_throughput(
    ax: Axes,
    curves: Sequence[Curve],
    against: Axis,
    cache: str,
    methods: Sequence[str],
    run_labels: Sequence[str],
    *,
    legend: bool = True,
) -> None:
    """Images/s (log axis) against batch size or workers for one cache state: colour = method, line style = the
    fixed setting, marker = run."""
    from matplotlib.lines import Line2D

    from reports.draw import RUN_LINESTYLES, RUN_MARKERS, add_legend, colour_map

    colours = colour_map(methods)
    fixed_values = sorted({curve.fixed for curve in curves}, key=lambda text: (len(text), text))
    styles = {fixed: RUN_LINESTYLES[index % len(RUN_LINESTYLES)] for index, fixed in enumerate(fixed_values)}
    for curve in curves:
        if curve.cache == cache:
            ax.plot(
                curve.x,
                curve.y,
                color=colours[curve.method],
                linestyle=styles[curve.fixed],
                marker=RUN_MARKERS[curve.run_index % len(RUN_MARKERS)],
                markersize=5,
            )
    ax.set_yscale("log")
    if against == "batch_size":
        ax.set_xscale("log", base=2)
    ticks = sorted({x for curve in curves for x in curve.x})
    ax.set_xticks(ticks, [str(x) for x in ticks])
    ax.set_xlabel(AXIS_NAMES[against][0])
    ax.set_ylabel("images per second (median epoch)")
    ax.set_title(f"{cache} page cache")
    if legend:
        handles = [Line2D([], [], color=colours[method], linewidth=2.5, label=method) for method in methods]
        handles += [Line2D([], [], color="grey", linestyle=styles[fixed], label=fixed) for fixed in fixed_values]
        if len(run_labels) > 1:
            handles += [
                Line2D(
                    [], [], color="grey", linestyle="none", marker=RUN_MARKERS[index % len(RUN_MARKERS)], label=label
                )
                for index, label in enumerate(run_labels)
            ]
        add_legend(ax, handles)


def write_training_charts(points: Sequence[TrainingPoint], run_labels: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Draw read_random_batch_size and read_random_workers (those with two or more values) as PNG and SVG in
    ``out_dir``; returns {name: png path}, empty without read_random cells."""
    import matplotlib.pyplot as plt

    from reports.draw import RC, STYLE

    written: dict[str, Path] = {}
    methods = sorted({point.method for point in points})
    caches = [cache for cache in CACHE_ORDER if any(point.cache == cache for point in points)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.style.context(STYLE), plt.rc_context(RC):
        for against in chart_axes(points):
            name = f"read_random_{against}"
            curves = throughput_curves(points, against)
            figure = plt.figure(figsize=(4.5 * len(caches) + 3, 5), layout="constrained")
            axes = figure.subplots(1, len(caches), sharey=True, squeeze=False)[0]
            for ax, cache in zip(axes, caches):
                plot_throughput(ax, curves, against, cache, methods, run_labels, legend=cache == caches[-1])
            figure.suptitle(CHART_TITLES[name])
            figure.savefig(out_dir / f"{name}.png", metadata={"Software": None})
            figure.savefig(out_dir / f"{name}.svg", metadata={"Date": None, "Creator": None})
            plt.close(figure)
            written[name] = out_dir / f"{name}.png"
    return written


def _seconds(value: float | None) -> str:
    return "–" if value is None else format_seconds(value)


def training_table(points: Sequence[TrainingPoint]) -> str:
    """A row per read_random cell: throughput, ratio to the sequential read, per-batch latency, first batch,
    start-up."""
    mixed_counts = len({(point.n_images, point.image_shape) for point in points}) > 1
    return markdown_table(
        (
            *(("images",) if mixed_counts else ()),
            "method",
            "cache",
            "batch",
            "workers",
            "images/s",
            "MB/s",
            "random / sequential",
            "batch p50",
            "batch p99",
            "first batch",
            "start-up",
            "cached before",
        ),
        (
            (
                *((f"{point.n_images:,} of {'x'.join(map(str, point.image_shape))}",) if mixed_counts else ()),
                point.method,
                point.cache,
                point.batch_size,
                point.workers,
                format_rate(point.images_per_s),
                format_rate(point.mb_per_s),
                "–" if point.random_over_sequential is None else f"{point.random_over_sequential:.2f}×",
                _seconds(point.batch_p50_s),
                _seconds(point.batch_p99_s),
                _seconds(point.first_batch_s),
                _seconds(point.startup_s),
                "–" if point.resident_fraction_before is None else f"{point.resident_fraction_before:.1%}",
            )
            for point in points
        ),
    )


def training_section(points: Sequence[TrainingPoint], run_labels: Sequence[str], charts: Mapping[str, Path]) -> str:
    """The "Training reads" section of report.md (charts linked by file name), or "" without read_random cells."""
    if not points:
        return ""
    parts = [
        "## Training reads: shuffled epochs",
        "",
        "Each `read_random` cell reads every stored image exactly once, in batches taken in order from a seeded "
        "permutation, with `read_batch` in reader processes (w1 is one worker process, like a DataLoader's "
        "`num_workers=1`; the parent only coordinates). Images/s is the image count over the median epoch; random / "
        "sequential divides it by the same run's `read_many` at the same image count (1.0: shuffling and batching cost"
        " nothing). Batch p50 and p99 are the times of single `read_batch` calls in the measured epochs; first batch "
        "is from the start of an epoch to the first batch in (a median over epochs); start-up (starting the workers "
        "and opening their stores) comes before the first epoch and is not in images/s. Cold rounds start with the "
        "store dropped from the page cache; cached before is the largest share still cached at the start of a measured"
        " round (a virtual machine's host may still cache what the guest dropped).",
        "",
    ]
    for name, path in charts.items():
        if name in CAPTIONS:
            parts += [f"![{name}]({path.name})", "", CAPTIONS[name], ""]
    for run_index, label in enumerate(run_labels):
        rows = [point for point in points if point.run_index == run_index]
        if rows:
            parts += [f"### {label}", "", training_table(rows), ""]
    return "\n".join(parts)

"""Charts of shaped benchmark data, written as PNG and SVG.

Plot functions take shaped data and an Axes; write_charts lays them out in figures and saves
them. Colour encodes the method, marker and line style the run, so several runs share a chart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from reports.shape import Shaped  # noqa: E402
from reports.units import byte_unit, time_unit  # noqa: E402

STYLE = "seaborn-v0_8-whitegrid"
RC = {"svg.hashsalt": "image-storage-report", "figure.dpi": 100, "savefig.dpi": 120, "legend.fontsize": "small"}
RUN_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
RUN_LINESTYLES = ("-", "--", ":", "-.")
LEGEND_ROWS = 16  # a taller legend would squeeze the plot of a 5-inch figure to nothing
RUN_HATCHES = ("", "//", "..", "xx", "\\\\", "++")
OPERATION_LINESTYLES = {"store_many": "-", "read_many": "--"}
SPREAD_NAMES = {"iqr": "q1–q3", "range": "min–max"}


def colour_map(names: Sequence[str]) -> dict[str, str]:
    """A distinct colour per name: matplotlib's ten default colours first, then their paler twins, then 40 more."""
    tab20 = matplotlib.colormaps["tab20"].colors
    palette = [
        to_hex(colour)
        for colour in (
            *tab20[0::2],
            *tab20[1::2],
            *matplotlib.colormaps["tab20b"].colors,
            *matplotlib.colormaps["tab20c"].colors,
        )
    ]
    return {name: palette[index % len(palette)] for index, name in enumerate(names)}


def _run_style(run_index: int) -> dict[str, str]:
    return {
        "marker": RUN_MARKERS[run_index % len(RUN_MARKERS)],
        "linestyle": RUN_LINESTYLES[run_index % len(RUN_LINESTYLES)],
    }


def add_legend(ax: Axes, handles: Sequence[Artist]) -> None:
    """One legend outside the plot on the right, so it never hides data (in columns of LEGEND_ROWS entries)."""
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        borderaxespad=0,
        ncols=math.ceil(len(handles) / LEGEND_ROWS),
    )


def _method_handles(names: Sequence[str]) -> list[Artist]:
    colours = colour_map(names)
    return [Line2D([], [], color=colours[name], linewidth=2.5, label=name) for name in names]


def _run_handles(shaped: Shaped, hatched: bool = False, linestyle: str | None = None) -> list[Artist]:
    """Grey legend entries telling runs apart (none for a single run): by hatch, or by marker and line style."""
    if len(shaped.labels) < 2:
        return []
    if hatched:
        return [
            Patch(facecolor="grey", edgecolor="white", hatch=RUN_HATCHES[index % len(RUN_HATCHES)], label=label)
            for index, label in enumerate(shaped.labels)
        ]
    return [
        Line2D(
            [],
            [],
            color="grey",
            **{**_run_style(index), **({"linestyle": linestyle} if linestyle else {})},
            label=label,
        )
        for index, label in enumerate(shaped.labels)
    ]


def _bar_width(shaped: Shaped) -> float:
    return 0.8 / len(shaped.labels)


def _bar_x(shaped: Shaped, name: str, run_index: int) -> float:
    """Bars are grouped by method (one tick per name), side by side per run."""
    return shaped.names.index(name) + (run_index - (len(shaped.labels) - 1) / 2) * _bar_width(shaped)


def plot_time(ax: Axes, shaped: Shaped, operations: Sequence[str], *, loglog: bool) -> None:
    """Median seconds per round against images per round, with the run's spread as error bars.

    With one operation, line style tells runs apart; with two, it tells the operations apart and
    the marker tells the runs apart.
    """
    series_list = shaped.of(*operations)
    colours = colour_map(shaped.names)
    by_operation = len(operations) > 1
    unit, scale = time_unit(value for series in series_list for value in series.hi)
    for series in series_list:
        y = [value / scale for value in series.y]
        errors = [
            [(mid - lo) / scale for mid, lo in zip(series.y, series.lo)],
            [(hi - mid) / scale for mid, hi in zip(series.y, series.hi)],
        ]
        style = _run_style(series.run_index)
        if by_operation:
            style["linestyle"] = OPERATION_LINESTYLES[series.operation]
        ax.errorbar(series.x, y, yerr=errors, color=colours[series.name], markersize=5, capsize=3, **style)
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("images per round")
    ax.set_ylabel(f"median time per round ({unit})")
    handles = _method_handles(shaped.names) + _run_handles(shaped, linestyle="none" if by_operation else None)
    if by_operation:
        handles += [
            Line2D([], [], color="grey", linestyle=OPERATION_LINESTYLES[operation], label=operation.replace("_", " "))
            for operation in operations
        ]
    add_legend(ax, handles)


def plot_single(ax: Axes, shaped: Shaped, operation: str, *, legend: bool = True) -> None:
    """Bars of the median time of one single-image operation per method, grouped by method, one bar per run."""
    series_list = shaped.of(operation)
    colours = colour_map(shaped.names)
    unit, scale = time_unit(value for series in series_list for value in series.hi)
    for series in series_list:
        median, lo, hi = series.y[0], series.lo[0], series.hi[0]
        ax.bar(
            _bar_x(shaped, series.name, series.run_index),
            median / scale,
            width=_bar_width(shaped),
            color=colours[series.name],
            hatch=RUN_HATCHES[series.run_index % len(RUN_HATCHES)],
            edgecolor="white",
            yerr=[[(median - lo) / scale], [(hi - median) / scale]],
            capsize=4,
            error_kw={"ecolor": "black", "elinewidth": 1},
        )
    ax.set_xticks(range(len(shaped.names)), shaped.names)
    ax.set_ylabel(f"median time per image ({unit})")
    ax.set_title(operation.replace("_", " "))
    if legend and len(shaped.labels) > 1:
        add_legend(ax, _run_handles(shaped, hatched=True))


def plot_disk_stacked(ax: Axes, shaped: Shaped) -> None:
    """Per method, one bar per run: each cutoff's store size stacked on the running total of the smaller cutoffs."""
    unit, scale = byte_unit(stack.tops[-1] for stack in shaped.disk)
    cutoffs = sorted({cutoff for stack in shaped.disk for cutoff in stack.cutoffs})
    cmap = plt.get_cmap("viridis")
    cutoff_colours = {cutoff: cmap(index / max(len(cutoffs) - 1, 1)) for index, cutoff in enumerate(cutoffs)}
    for stack in shaped.disk:
        x = _bar_x(shaped, stack.name, stack.run_index)
        for cutoff, size, bottom in zip(stack.cutoffs, stack.segments, stack.bottoms):
            ax.bar(
                x,
                size / scale,
                bottom=bottom / scale,
                width=_bar_width(shaped),
                color=cutoff_colours[cutoff],
                edgecolor="white",
                hatch=RUN_HATCHES[stack.run_index % len(RUN_HATCHES)],
            )
        ax.annotate(
            f"{stack.tops[-1] / scale:.3g}",
            (x, stack.tops[-1] / scale),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
            fontsize="small",
        )
    ax.set_xticks(range(len(shaped.names)), shaped.names)
    ax.set_ylabel(f"{shaped.disk_kind} size, all cutoffs stacked ({unit})")
    cutoff_handles = [
        Patch(color=cutoff_colours[cutoff], label=f"store of {cutoff:,} images") for cutoff in reversed(cutoffs)
    ]
    add_legend(ax, cutoff_handles + _run_handles(shaped, hatched=True))
    ax.margins(y=0.08)


def plot_bytes_per_image(ax: Axes, shaped: Shaped) -> None:
    """Store size divided by image count, against image count: fixed overhead shows at small cutoffs."""
    colours = colour_map(shaped.names)
    sizes = [value for stack in shaped.disk for value in stack.per_image]
    unit, scale = byte_unit(sizes)
    for stack in shaped.disk:
        ax.plot(
            stack.cutoffs,
            [value / scale for value in stack.per_image],
            color=colours[stack.name],
            **_run_style(stack.run_index),
        )
    ax.set_xscale("log")
    if max(sizes) > 10 * min(sizes):  # log only when overhead makes the range wide; small ranges read better from 0
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(sizes) / scale * 1.08)
    ax.set_xlabel("images in the store")
    ax.set_ylabel(f"{shaped.disk_kind} size per image ({unit})")
    add_legend(ax, _method_handles(shaped.names) + _run_handles(shaped))


def plot_floor_ratio(ax: Axes, shaped: Shaped, operation: str, *, legend: bool = True) -> None:
    """ours/floor of one operation against images per round, log-log, with the floor itself as a line at 1.0."""
    colours = colour_map(shaped.floor_names)
    for series in shaped.floor_series:
        if series.operation == operation:
            ax.plot(series.x, series.ratio, color=colours[series.name], markersize=5, **_run_style(series.run_index))
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images per round")
    ax.set_ylabel("ours / floor (same run)")
    ax.set_title(operation.replace("_", " "))
    if legend:
        add_legend(ax, _method_handles(shaped.floor_names) + _run_handles(shaped))


def _floor_chart(figure: Figure, shaped: Shaped) -> None:
    operations = shaped.floor_operations
    axes = figure.subplots(1, len(operations), sharey=True, squeeze=False)[0]
    for ax, operation in zip(axes, operations):
        plot_floor_ratio(ax, shaped, operation, legend=operation == operations[-1])


def _time_chart(operations: Sequence[str], loglog: bool) -> Callable[[Figure, Shaped], None]:
    return lambda figure, shaped: plot_time(figure.subplots(), shaped, operations, loglog=loglog)


def _single_chart(figure: Figure, shaped: Shaped) -> None:
    for ax, operation in zip(figure.subplots(1, 2), ("store_single", "read_single")):
        plot_single(ax, shaped, operation, legend=operation == "read_single")


# name -> (title, what it needs to have data, how to draw it)
CHARTS: dict[str, tuple[str, Callable[[Shaped], bool], Callable[[Figure, Shaped], None]]] = {
    "store_many_linear": (
        "Store many images: median time per round (bars {spread})",
        lambda s: bool(s.of("store_many")),
        _time_chart(["store_many"], False),
    ),
    "store_many_loglog": (
        "Store many images: median time per round, log-log (bars {spread})",
        lambda s: bool(s.of("store_many")),
        _time_chart(["store_many"], True),
    ),
    "read_many_linear": (
        "Read many images: median time per round (bars {spread})",
        lambda s: bool(s.of("read_many")),
        _time_chart(["read_many"], False),
    ),
    "read_many_loglog": (
        "Read many images: median time per round, log-log (bars {spread})",
        lambda s: bool(s.of("read_many")),
        _time_chart(["read_many"], True),
    ),
    "read_store_loglog": (
        "Store (solid) and read (dashed) many images, log-log (bars {spread})",
        lambda s: bool(s.of("store_many", "read_many")),
        _time_chart(["store_many", "read_many"], True),
    ),
    "single_image": (
        "One image at a time: median time (bars {spread})",
        lambda s: bool(s.of("store_single", "read_single")),
        _single_chart,
    ),
    "disk_usage_stacked": (
        "Disk usage after store_many, each cutoff stacked on the running total",
        lambda s: bool(s.disk),
        lambda f, s: plot_disk_stacked(f.subplots(), s),
    ),
    "disk_bytes_per_image": (
        "Disk usage per image",
        lambda s: bool(s.disk),
        lambda f, s: plot_bytes_per_image(f.subplots(), s),
    ),
    "floor_ratio": (
        "Each cell over its floor in the same run (1.0: the hardware or library alone)",
        lambda s: bool(s.floor_series),
        _floor_chart,
    ),
}


def write_charts(shaped: Shaped, out_dir: Path) -> dict[str, Path]:
    """Draw every chart that has data as <name>.png and <name>.svg; returns {name: png path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with plt.style.context(STYLE), plt.rc_context(RC):
        for name, (title, has_data, draw) in CHARTS.items():
            if not has_data(shaped):
                continue
            wide = len(shaped.labels) > 1 or name == "single_image"
            width = (
                max(11 if wide else 8, 3.5 * len(shaped.floor_operations) + 2.5)
                if name == "floor_ratio"
                else (11 if wide else 8)
            )
            entries = len(shaped.floor_names) if name == "floor_ratio" else len(shaped.names)
            width += 3.2 * (math.ceil(entries / LEGEND_ROWS) - 1)  # each further legend column
            figure = plt.figure(figsize=(width, 5.5 if wide else 5), layout="constrained")
            draw(figure, shaped)
            figure.suptitle(title.format(spread=SPREAD_NAMES[shaped.spread]))
            figure.savefig(out_dir / f"{name}.png", metadata={"Software": None})
            figure.savefig(out_dir / f"{name}.svg", metadata={"Date": None, "Creator": None})
            plt.close(figure)
            written[name] = out_dir / f"{name}.png"
    return written

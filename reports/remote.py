"""The object-storage part of the report: epochs read from a bucket (benchmarks/test_read_remote.py, --object-store).

Load: ``remote_points(runs)`` reduces each ``read_remote`` cell to a RemotePoint: images/s (a stage-then-read cell's
over its download and its epoch together), time to the first batch, requests per image, read amplification (bytes
fetched over bytes stored), peak requests in flight, and its floor (its own requests fetched again as plain GETs).
Shape: ``remote_settings`` groups them by run, image count and shape, batch size and network; ``rtt_curves`` puts a
method's images/s against the network's round trip where the runs have several. Draw: ``write_remote_charts``.
Text: ``remote_section``. Runs without remote cells give no points, no charts and an empty section.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reports.markdown import format_rate, markdown_table
from reports.results import Run
from reports.units import format_seconds

if TYPE_CHECKING:
    from matplotlib.axes import Axes

OPERATION = "read_remote"
STAGED = " (stage then read)"
PANELS = (
    ("images_per_s", "images per second (median epoch)", True),
    ("first_batch_s", "seconds to the first batch", True),
    ("read_amplification", "bytes fetched / bytes stored", False),
)
CAPTION = (
    "One epoch read from the bucket, a row of panels per network setting: images per second (a stage-then-read "
    "method's over its download and its epoch), seconds to the first batch (from the already started workers' go; a "
    "stage-then-read method's includes its download), and bytes fetched over bytes stored. A bar per order and "
    "worker count; a black tick marks the floor: the same requests fetched again as plain concurrent GETs."
)
RTT_CAPTION = "Images per second against the network's round trip (runs with different --network), per method."


@dataclass(frozen=True)
class RemotePoint:
    """One read_remote cell of one run."""

    run_index: int
    method: str
    n_images: int
    image_shape: tuple[int, ...]
    batch_size: int
    workers: int
    order: str  # "shuffle" or "stream-buf<images>"
    network: str  # "none" or the shaping, e.g. "rtt=20ms,rate=1gbit"
    reads_remote: bool  # False: stage then read
    median_s: float  # the epoch
    stage_s: float | None
    first_batch_s: float
    requests_per_image: float | None
    read_amplification: float | None
    peak_requests: int | None
    floor_s: float | None

    @property
    def total_s(self) -> float:
        return self.median_s + (self.stage_s or 0.0)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.total_s

    @property
    def floor_images_per_s(self) -> float | None:
        return None if self.floor_s is None else self.n_images / self.floor_s

    @property
    def label(self) -> str:
        return self.method if self.reads_remote else f"{self.method}{STAGED}"

    @property
    def variant(self) -> str:
        return f"{self.order} w{self.workers}"

    @property
    def rtt_ms(self) -> float:
        """The network's round trip as named in the cell (0 without shaping)."""
        return rtt_ms(self.network)

    @property
    def setting(self) -> tuple:
        """What a panel shares: run, image count and shape, batch size, network."""
        return (self.run_index, self.n_images, self.image_shape, self.batch_size, self.network)


def rtt_ms(network: str) -> float:
    """``"rtt=20ms,rate=1gbit"`` -> 20.0; ``"none"`` or no rtt -> 0.0."""
    found = re.search(r"rtt=([\d.]+)(ms|s)\b", network)
    return 0.0 if found is None else float(found[1]) * (1.0 if found[2] == "ms" else 1000.0)


def _number(value: object) -> float | None:
    return None if value is None else float(value)


def remote_points(runs: Sequence[Run]) -> tuple[RemotePoint, ...]:
    """Every read_remote cell of every run, by setting, method, order and workers."""
    points = []
    for run_index, run in enumerate(runs):
        for cell in run.cells:
            if cell.operation != OPERATION:
                continue
            info = cell.extra_info
            remote = bool(info.get("reads_remote", True))
            counted = remote is False or info.get("requests_counted", True)
            stage_s = None if remote else _number(info.get("stage_s"))
            points.append(
                RemotePoint(
                    run_index=run_index,
                    method=cell.method,
                    n_images=cell.n_images,
                    image_shape=cell.image_shape,
                    batch_size=int(info["batch_size"]),
                    workers=int(info["workers"]),
                    order=str(info["order"]),
                    network=str(info.get("network", "none")),
                    reads_remote=remote,
                    median_s=cell.stats["median"],
                    stage_s=stage_s,
                    first_batch_s=float(info["first_batch_s"]) + (stage_s or 0.0),
                    requests_per_image=_number(info.get("requests_per_image")) if counted else None,
                    read_amplification=_number(info.get("read_amplification")) if counted else None,
                    peak_requests=info.get("peak_concurrent_requests") if counted else None,
                    floor_s=_number(info.get("floor_s")),
                )
            )
    return tuple(sorted(points, key=lambda p: (*p.setting, not p.reads_remote, p.method, p.order, p.workers)))


def remote_settings(points: Sequence[RemotePoint]) -> dict[tuple, list[RemotePoint]]:
    """The points of each setting (a row of panels, a table), in order."""
    settings: dict[tuple, list[RemotePoint]] = {}
    for point in points:
        settings.setdefault(point.setting, []).append(point)
    return settings


@dataclass(frozen=True)
class RttCurve:
    """Images/s of one method, order and worker count against the round trip, over the runs' networks."""

    label: str
    variant: str
    rtt_ms: tuple[float, ...]
    images_per_s: tuple[float, ...]


def rtt_curves(points: Sequence[RemotePoint]) -> list[RttCurve]:
    """A curve per method, order, workers, image count and shape and batch size that was read at two or more round
    trips (over all runs: each run has one network); none otherwise."""
    grouped: dict[tuple, dict[float, float]] = defaultdict(dict)
    for point in points:
        key = (point.label, point.variant, point.n_images, point.image_shape, point.batch_size)
        grouped[key][point.rtt_ms] = point.images_per_s
    return [
        RttCurve(label, variant, *map(tuple, zip(*sorted(values.items()))))
        for (label, variant, *_), values in grouped.items()
        if len(values) > 1
    ]


def setting_title(setting: tuple, run_labels: Sequence[str]) -> str:
    run_index, n_images, shape, batch_size, network = setting
    run = f"{run_labels[run_index]}: " if len(run_labels) > 1 else ""
    shaping = "no shaping" if network == "none" else network
    return f"{run}{n_images:,} images of {'x'.join(map(str, shape))}, batches of {batch_size}, {shaping}"


def plot_remote(ax: Axes, points: Sequence[RemotePoint], field: str, label: str, log: bool) -> None:
    """Horizontal bars of ``field``, a group per method, a bar per order and worker count (the floor ticked)."""
    from reports.draw import add_legend, colour_map

    methods = list(dict.fromkeys(point.label for point in points))
    variants = sorted({point.variant for point in points})
    colours = colour_map(variants)
    height = 0.8 / max(1, len(variants))
    for point in points:
        value = getattr(point, field)
        if value is None:
            continue
        y = methods.index(point.label) + (variants.index(point.variant) - (len(variants) - 1) / 2) * height
        ax.barh(y, value, height=height, color=colours[point.variant], edgecolor="white")
        if field == "images_per_s" and point.floor_images_per_s is not None:
            ax.plot([point.floor_images_per_s] * 2, [y - height / 2, y + height / 2], color="black", linewidth=1.5)
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    if field == PANELS[-1][0]:
        from matplotlib.patches import Patch

        add_legend(ax, [Patch(color=colours[variant], label=variant) for variant in variants])


def plot_rtt(ax: Axes, curves: Sequence[RttCurve]) -> None:
    """Images/s (log axis) against the round trip: a line per method, order and workers."""
    from reports.draw import add_legend, colour_map

    colours = colour_map(sorted({curve.label for curve in curves}))
    styles = dict(zip(sorted({curve.variant for curve in curves}), ("-", "--", ":", "-.") * 8))
    for curve in curves:
        ax.plot(
            curve.rtt_ms,
            curve.images_per_s,
            color=colours[curve.label],
            linestyle=styles[curve.variant],
            marker="o",
            label=f"{curve.label} {curve.variant}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("round trip (ms)")
    ax.set_ylabel("images per second (median epoch)")
    add_legend(ax, ax.get_lines())


def write_remote_charts(points: Sequence[RemotePoint], run_labels: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Draw ``read_remote`` (a row of PANELS per setting) and, with two or more round trips, ``read_remote_rtt``, as
    PNG and SVG in ``out_dir``; {name: png path}, empty without remote cells."""
    if not points:
        return {}
    import matplotlib.pyplot as plt

    from reports.draw import RC, STYLE

    settings = remote_settings(points)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with plt.style.context(STYLE), plt.rc_context(RC):
        most = max(len({point.label for point in group}) for group in settings.values())
        figure = plt.figure(figsize=(17, (1.2 + 0.5 * most) * len(settings)), layout="constrained")
        rows = figure.subfigures(len(settings), 1, squeeze=False)[:, 0]
        for row, (setting, group) in zip(rows, settings.items()):
            axes = row.subplots(1, len(PANELS), sharey=True)
            for ax, (field, label, log) in zip(axes, PANELS):
                plot_remote(ax, group, field, label, log)
            row.suptitle(setting_title(setting, run_labels))
        written["read_remote"] = _save(plt, figure, out_dir, "read_remote")
        if curves := rtt_curves(points):
            figure = plt.figure(figsize=(9, 5), layout="constrained")
            plot_rtt(figure.subplots(), curves)
            figure.suptitle("Epochs from object storage against the round trip")
            written["read_remote_rtt"] = _save(plt, figure, out_dir, "read_remote_rtt")
    return written


def _save(plt, figure, out_dir: Path, name: str) -> Path:
    figure.savefig(out_dir / f"{name}.png", metadata={"Software": None})
    figure.savefig(out_dir / f"{name}.svg", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    return out_dir / f"{name}.png"


def _shown(value: float | None, show) -> str:
    return "–" if value is None else show(value)


def remote_table(points: Sequence[RemotePoint]) -> str:
    """A row per cell of one setting."""
    return markdown_table(
        (
            "method",
            "order",
            "workers",
            "images/s",
            "floor images/s",
            "first batch",
            "requests/image",
            "read amplification",
            "peak in flight",
            "download (stage)",
        ),
        (
            (
                point.label,
                point.order,
                point.workers,
                format_rate(point.images_per_s),
                _shown(point.floor_images_per_s, format_rate),
                format_seconds(point.first_batch_s),
                _shown(point.requests_per_image, lambda value: f"{value:.3g}"),
                _shown(point.read_amplification, lambda value: f"{value:.2f}×"),
                _shown(point.peak_requests, str),
                _shown(point.stage_s, format_seconds),
            )
            for point in points
        ),
    )


def remote_section(points: Sequence[RemotePoint], run_labels: Sequence[str], charts: Mapping[str, Path]) -> str:
    """The "Object storage" section of report.md, or "" without remote cells."""
    if not points:
        return ""
    parts = [
        "## Object storage: epochs read from a bucket",
        "",
        "Each `read_remote` cell reads one epoch of a store from an S3 bucket by reader processes, every id once, "
        "checked bit for bit after the timing: `shuffle` in read_random's shuffled batches, `stream-buf<N>` in "
        "storage order through a shuffle buffer of N images per worker. Methods whose library reads local files "
        "only are staged (downloaded) then read: their images/s and first batch include the download. Requests "
        "per image, read amplification (bytes fetched over bytes stored) and the peak of requests in flight (one "
        "worker's client) are the client's counts; – where the method's own client makes the requests (lance). "
        "The floor is the same requests fetched again by the same clients as plain concurrent GETs.",
        "",
    ]
    for name, caption in (("read_remote", CAPTION), ("read_remote_rtt", RTT_CAPTION)):
        if name in charts:
            parts += [f"![{name}]({charts[name].name})", "", caption, ""]
    for setting, group in remote_settings(points).items():
        parts += [f"### {setting_title(setting, run_labels)}", "", remote_table(group), ""]
    return "\n".join(parts)

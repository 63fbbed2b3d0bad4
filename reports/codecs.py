"""The codec part of the report: bytes on disk per image against read speed, one point per method variant.

Shape: ``codec_views(runs, disk_kind)`` gives a CodecView per run and image shape/dtype, with a VariantRow per
method variant (``disk:codec=jpeg-90``): its codec, the store_many bytes on disk per image, the sequential
(read_many) and shuffled (read_random: 1 worker, warm cache) images/s, and the PSNR of a lossy codec. Draw:
``plot_bytes_vs_speed(ax, view, read)`` and ``write_codec_charts(views, labels, out_dir)``. Text:
``codec_section(views, labels, charts)``, the Markdown section.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from reports.markdown import format_rate, markdown_table
from reports.results import DEFAULT_DTYPE, Cell, Run
from reports.shape import method_cells
from reports.units import byte_unit, format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

Read = Literal["sequential", "shuffled"]
READS: dict[Read, str] = {"sequential": "read_many", "shuffled": "read_random"}
DEFAULT_BATCH_SIZE = 256  # the suite's default --batch-sizes (conftest.py)
SHUFFLED_SETTINGS = {"workers": 1, "cache": "warm"}
LOG_SPREAD = 10  # an axis turns logarithmic when its largest value is this many times its smallest
LOSSY_MARKER, LOSSLESS_MARKER = "^", "o"
# label offsets in points (and whether to draw a leader line), tried in order: close to the point, then farther out
LABEL_OFFSETS = [
    (dx * reach, dy * reach, reach > 1)
    for reach in (1, 3)
    for dx, dy in ((5, 4), (5, -4), (-5, 4), (-5, -4), (0, 7), (0, -7))
]
MARKER_PIXELS = 5  # half the side of the box kept free around each point


@dataclass(frozen=True)
class Speed:
    """Images per second of the read cell a variant is charted with."""

    images_per_s: float
    n_images: int


@dataclass(frozen=True)
class VariantRow:
    """One method variant of one view: its codec, its size on disk and its read speeds."""

    method: str
    codec: str | None  # None for runs made before the codec was recorded
    disk_bytes_per_image: float | None
    raw_bytes_per_image: float | None
    sequential: Speed | None
    shuffled: Speed | None
    psnr_db: float | None  # lossy codecs only

    @property
    def ratio(self) -> float | None:
        """Bytes on disk over raw pixel bytes, per image (below 1: the store compresses)."""
        if self.disk_bytes_per_image is None or not self.raw_bytes_per_image:
            return None
        return self.disk_bytes_per_image / self.raw_bytes_per_image

    def speed(self, read: Read) -> Speed | None:
        return self.sequential if read == "sequential" else self.shuffled


@dataclass(frozen=True)
class CodecView:
    """The variants of one run at one image shape and dtype."""

    run_index: int
    image_shape: tuple[int, ...]
    dtype: str
    disk_kind: str
    batch_size: int | None  # of the shuffled reads charted, None without read_random cells
    rows: tuple[VariantRow, ...]

    @property
    def images(self) -> str:
        return f"{'x'.join(map(str, self.image_shape))} {self.dtype}"

    def points(self, read: Read) -> list[VariantRow]:
        """Variants with both a size on disk and this read's speed."""
        return [row for row in self.rows if row.disk_bytes_per_image is not None and row.speed(read) is not None]

    @property
    def panels(self) -> list[Read]:
        """The reads with at least two points: a single point compares nothing."""
        return [read for read in READS if len(self.points(read)) >= 2]

    def chart_name(self, several_runs: bool) -> str:
        name = f"bytes_vs_speed_{'x'.join(map(str, self.image_shape))}_{self.dtype}"
        return f"{name}_run{self.run_index + 1}" if several_runs else name


def _largest(cells: Sequence[Cell]) -> Cell | None:
    return max(cells, key=lambda cell: cell.n_images, default=None)


def _speed(cell: Cell | None) -> Speed | None:
    return None if cell is None else Speed(cell.n_images / cell.stats["median"], cell.n_images)


def _shuffled_batch_size(cells: Sequence[Cell]) -> int | None:
    """The suite's default batch size when these read_random cells have it, else the largest they have."""
    sizes = {int(cell.extra_info["batch_size"]) for cell in cells}
    return DEFAULT_BATCH_SIZE if DEFAULT_BATCH_SIZE in sizes else max(sizes, default=None)


def _first(cells: Sequence[Cell], field: str) -> object:
    return next((cell.extra_info[field] for cell in cells if field in cell.extra_info), None)


def _charted_shuffled(cells: Sequence[Cell]) -> list[Cell]:
    """The read_random cells with the settings the chart compares (1 worker, warm cache), any batch size."""
    return [
        cell
        for cell in cells
        if cell.operation == READS["shuffled"]
        and all(cell.extra_info.get(key) == value for key, value in SHUFFLED_SETTINGS.items())
    ]


def _row(method: str, cells: Sequence[Cell], disk_kind: str, batch_size: int | None) -> VariantRow:
    """The variant's numbers: sizes from its largest measured store_many, speeds from its largest reads."""
    field = f"{disk_kind}_bytes"
    store = _largest(
        [cell for cell in cells if cell.operation == "store_many" and field in cell.extra_info.get("disk_usage", {})]
    )
    shuffled = [cell for cell in _charted_shuffled(cells) if int(cell.extra_info["batch_size"]) == batch_size]
    codec, psnr = _first(cells, "codec"), _first(cells, "psnr_db")
    return VariantRow(
        method=method,
        codec=None if codec is None else str(codec),
        disk_bytes_per_image=None if store is None else store.extra_info["disk_usage"][field] / store.n_images,
        raw_bytes_per_image=None if store is None else store.raw_bytes / store.n_images,
        sequential=_speed(_largest([cell for cell in cells if cell.operation == READS["sequential"]])),
        shuffled=_speed(_largest(shuffled)),
        psnr_db=None if psnr is None else float(psnr),
    )


def codec_views(runs: Sequence[Run], disk_kind: str = "allocated") -> tuple[CodecView, ...]:
    """A view per run and image shape/dtype that has a store_many or read cell, a row per method variant in it."""
    views = []
    operations = ("store_many", *READS.values())
    for run_index, run in enumerate(runs):
        groups: dict[tuple[tuple[int, ...], str], dict[str, list[Cell]]] = defaultdict(lambda: defaultdict(list))
        for cell in method_cells(run):
            if cell.operation in operations:
                groups[cell.image_shape, str(cell.extra_info.get("dtype", DEFAULT_DTYPE))][cell.method].append(cell)
        for (image_shape, dtype), by_method in sorted(groups.items()):
            batch_size = _shuffled_batch_size(
                [cell for cells in by_method.values() for cell in _charted_shuffled(cells)]
            )
            rows = tuple(_row(method, cells, disk_kind, batch_size) for method, cells in sorted(by_method.items()))
            views.append(CodecView(run_index, image_shape, dtype, disk_kind, batch_size, rows))
    return tuple(views)


def _counts(rows: Sequence[VariantRow], read: Read) -> str:
    """The image count the variants read, "10,000 images", or its range when they differ."""
    counts = sorted({speed.n_images for row in rows if (speed := row.speed(read))})
    return (
        f"{counts[0]:,} images" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,} images (each variant's largest)"
    )


def panel_title(view: CodecView, read: Read) -> str:
    points = view.points(read)
    if read == "sequential":
        return f"sequential: read_many of {_counts(points, read)}"
    return f"shuffled: read_random of {_counts(points, read)}, batch {view.batch_size}, 1 worker, warm cache"


def _overlap(a: Bbox, b: Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def place_labels(ax: Axes, xs: Sequence[float], ys: Sequence[float], names: Sequence[str]) -> list[Annotation]:
    """Label each point with the offset (from LABEL_OFFSETS) whose text overlaps other labels, the points and
    the outside of the axes least; far offsets get a leader line. The figure's layout must be final.
    Returns the annotations."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(list(zip(xs, ys)))
    taken = [
        Bbox.from_extents(x - MARKER_PIXELS, y - MARKER_PIXELS, x + MARKER_PIXELS, y + MARKER_PIXELS)
        for x, y in centres
    ]
    placed = []
    for x, y, name in zip(xs, ys, names):
        best = None
        for dx, dy, far in LABEL_OFFSETS:
            text = ax.annotate(
                name,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize="x-small",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top",
                arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5, "shrinkB": 3} if far else None,
            )
            box = text.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in taken) + box.width * box.height - _overlap(box, frame)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])
        placed.append(best[1])
    return placed


def plot_bytes_vs_speed(ax: Axes, view: CodecView, read: Read, *, legend: bool = True) -> None:
    """Images/s against bytes on disk per image of one read: colour = container (the method without its options),
    marker = lossy or lossless; axes turn logarithmic over a wide spread. Labels are placed by place_labels."""
    from matplotlib.lines import Line2D

    from reports.draw import add_legend, colour_map

    rows = view.points(read)
    containers = sorted({row.method.split(":")[0] for row in view.rows})
    colours = colour_map(containers)
    sizes = [row.disk_bytes_per_image for row in rows]
    unit, scale = byte_unit(sizes)
    for row in rows:
        ax.scatter(
            row.disk_bytes_per_image / scale,
            row.speed(read).images_per_s,
            s=36,
            zorder=3,
            color=colours[row.method.split(":")[0]],
            marker=LOSSY_MARKER if row.psnr_db is not None else LOSSLESS_MARKER,
        )
    speeds = [row.speed(read).images_per_s for row in rows]
    for values, set_scale in ((sizes, ax.set_xscale), (speeds, ax.set_yscale)):
        if max(values) > LOG_SPREAD * min(values):
            set_scale("log")
    ax.margins(0.15)
    ax.set_xlabel(f"{view.disk_kind} bytes on disk per image ({unit})")
    ax.set_ylabel("images per second (median round)")
    ax.set_title(panel_title(view, read), fontsize="medium")
    if legend:
        handles = [Line2D([], [], color=colours[name], marker="s", linestyle="none", label=name) for name in containers]
        handles += [
            Line2D([], [], color="grey", marker=marker, linestyle="none", label=label)
            for marker, label in ((LOSSLESS_MARKER, "lossless"), (LOSSY_MARKER, "lossy (PSNR in the table)"))
        ]
        add_legend(ax, handles)


def write_codec_charts(views: Sequence[CodecView], run_labels: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Draw the bytes-against-speed chart of every view with a panel as PNG and SVG; returns {name: png path}."""
    import matplotlib.pyplot as plt

    from reports.draw import RC, STYLE

    written: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.style.context(STYLE), plt.rc_context(RC):
        for view in views:
            if not view.panels:
                continue
            name = view.chart_name(len(run_labels) > 1)
            figure = plt.figure(figsize=(6 * len(view.panels) + 2.5, 5.5), layout="constrained")
            axes = figure.subplots(1, len(view.panels), squeeze=False)[0]
            for ax, read in zip(axes, view.panels):
                plot_bytes_vs_speed(ax, view, read, legend=read == view.panels[-1])
            title = f"Bytes on disk against read speed: {view.images} images"
            figure.suptitle(title + (f" · {run_labels[view.run_index]}" if len(run_labels) > 1 else ""))
            figure.canvas.draw()  # settle the layout, then keep it while the labels are placed
            figure.set_layout_engine("none")
            for ax, read in zip(axes, view.panels):
                rows = view.points(read)
                _, scale = byte_unit(row.disk_bytes_per_image for row in rows)
                place_labels(
                    ax,
                    [row.disk_bytes_per_image / scale for row in rows],
                    [row.speed(read).images_per_s for row in rows],
                    [row.method for row in rows],
                )
            figure.savefig(out_dir / f"{name}.png", metadata={"Software": None})
            figure.savefig(out_dir / f"{name}.svg", metadata={"Date": None, "Creator": None})
            plt.close(figure)
            written[name] = out_dir / f"{name}.png"
    return written


def _dash(value: float | None, render: Callable[[float], str]) -> str:
    return "–" if value is None else render(value)


def _rate(speed: Speed | None) -> str:
    return _dash(speed and speed.images_per_s, format_rate)


def _psnr(row: VariantRow) -> str:
    if row.psnr_db is not None:
        return f"{row.psnr_db:.1f}"
    return "–" if row.codec is None else "lossless"


def codec_table(view: CodecView) -> str:
    """A row per method variant: codec, bytes on disk per image and its ratio to raw pixels, read speeds, PSNR."""
    return markdown_table(
        (
            "method variant",
            "codec",
            "bytes on disk per image",
            "ratio to raw pixels",
            "sequential images/s",
            "shuffled images/s",
            "PSNR dB",
        ),
        (
            (
                f"`{row.method}`",
                row.codec or "–",
                _dash(row.disk_bytes_per_image, format_bytes),
                _dash(row.ratio, lambda r: f"{r:.3g}×"),
                _rate(row.sequential),
                _rate(row.shuffled),
                _psnr(row),
            )
            for row in view.rows
        ),
    )


def _chart_note(view: CodecView) -> str:
    """Why a chart or one of its panels is missing, or ""."""
    if not view.panels:
        return (
            "No chart: fewer than two method variants have both bytes on disk (a store_many cell with disk usage) "
            "and a read speed."
        )
    left_out = [read for read in READS if read not in view.panels]
    return "".join(
        f"The {read} panel is left out: fewer than two method variants have both bytes on disk and a "
        f"{READS[read]} cell{' with 1 worker and a warm cache' if read == 'shuffled' else ''}."
        for read in left_out
    )


def codec_section(views: Sequence[CodecView], run_labels: Sequence[str], charts: Mapping[str, Path]) -> str:
    """The "Bytes on disk against read speed" section of report.md (charts linked by file name), "" without views."""
    if not views:
        return ""
    parts = [
        "## Bytes on disk against read speed",
        "",
        "One point and one row per method variant (a method with its options, such as `disk:codec=jpeg-90`). Bytes on "
        f"disk per image: the {views[0].disk_kind} size of the variant's store_many store at the largest image count it"
        " stored, divided by that count; the ratio divides it by the raw pixel bytes of one image (below 1: the store "
        "compresses). Sequential: images/s of read_many at the variant's largest image count; shuffled: images/s of "
        "read_random (one shuffled epoch) with 1 worker, a warm page cache and the run's default batch size. PSNR (dB)"
        " is what a lossy codec lost against the source images; the reads are checked against the decoded images "
        "exactly.",
        "",
    ]
    several_runs = len(run_labels) > 1
    for view in views:
        heading = f"### {view.images} images" + (f" · {run_labels[view.run_index]}" if several_runs else "")
        parts += [heading, ""]
        name = view.chart_name(several_runs)
        if name in charts:
            parts += [f"![{name}]({charts[name].name})", ""]
        note = _chart_note(view)
        if note:
            parts += [note, ""]
        parts += [codec_table(view), ""]
    return "\n".join(parts)

"""report.md: the tables, the charts and where each run came from, as GitHub-flavoured Markdown."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from statistics import geometric_mean

from reports.floors import FloorCheck, describe_implausible, floor_checks, is_floor
from reports.results import OPERATIONS, Cell, CellKey, Run
from reports.shape import Shaped, describe_missing, method_cells, ratios, speedups
from reports.units import format_bytes, format_seconds

CAPTIONS = {
    "store_many_linear": "Time to store a whole cutoff's images in one round, linear axes: how the cost grows at "
    "scale.",
    "store_many_loglog": "The same on log-log axes, so the small cutoffs and the per-call overhead are visible.",
    "read_many_linear": "Time to read a whole cutoff's images back in one round, linear axes.",
    "read_many_loglog": "The same on log-log axes.",
    "read_store_loglog": "Store (solid) and read (dashed) together, log-log: the gap between writing and reading each "
    "method.",
    "single_image": "Storing and reading one image per call: median per method, error bars show the spread of rounds.",
    "disk_usage_stacked": "Size of each cutoff's store after store_many, stacked on the running total of the smaller "
    "cutoffs; the number on top is the total for all cutoffs.",
    "disk_bytes_per_image": "Store size divided by image count: fixed overhead dominates small stores, per-image cost "
    "large ones.",
    "floor_ratio": "Each cell's median over its floor's, measured in the same run (log axis): 1.0 (the line) is what "
    "the hardware or library does alone with the same images; below it the cell did less work than the floor.",
}
SPREAD_NAMES = {"iqr": "q1–q3 (interquartile range)", "range": "min–max"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def format_rate(value: float) -> str:
    """Three significant digits without exponent notation: 0.123, 45.6, 1,234."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ordered(cells: Iterable[Cell]) -> list[Cell]:
    return sorted(
        cells, key=lambda cell: (OPERATIONS.index(cell.operation), cell.image_shape, cell.n_images, cell.method)
    )


def _images(key: CellKey, mixed_shapes: bool) -> str:
    """Image count, plus the shape when runs mix shapes and the variant (batch size, workers, cache) if any."""
    count = f"{key.n_images:,} of {'x'.join(map(str, key.image_shape))}" if mixed_shapes else f"{key.n_images:,}"
    return f"{count} {key.variant}" if key.variant else count


def _ratio(check: FloorCheck | None) -> str:
    if check is None:
        return "–"
    return f"{check.ratio:.2f}×" + (" ⚠" if check.implausible else "")


def _per_image(cell: Cell, field: str, scale: float, unit: Callable[[float], str]) -> str:
    """A per-round resource of extra_info per image (times scale), or – when the run did not record it."""
    value = cell.extra_info.get(field)
    return "–" if value is None else unit(value / cell.images_per_round * scale)


def provenance(run: Run, label: str) -> str:
    """Where and how a run was made: machine, CPU, OS, Python, libraries, filesystem, commit, date."""
    machine, commit = run.machine_info, run.commit_info
    cpu = machine.get("cpu", {})
    storage = machine.get("storage", {})
    libraries = ", ".join(f"{name} {version}" for name, version in machine.get("libraries", {}).items())
    settings = {
        f"{name}: {', '.join(sorted({str(cell.extra_info.get(name, '?')) for cell in run.cells}))}"
        for name in ("dataset", "dtype", "durable")
    }
    rows = [
        ("run", label),
        ("file", f"`{run.path}`"),
        ("date (UTC)", run.datetime),
        ("machine", f"{machine.get('node', '?')} ({machine.get('machine', '?')})"),
        ("CPU", f"{cpu.get('brand_raw', '?')} × {cpu.get('count', '?')}"),
        ("OS", f"{machine.get('system', '?')} {machine.get('release', '')}".strip()),
        ("Python", f"{machine.get('python_implementation', '')} {machine.get('python_version', '?')}".strip()),
        ("libraries", libraries or "?"),
        (
            "filesystem",
            f"{storage.get('filesystem', '?')} on {storage.get('device', '?')} at {storage.get('mount_point', '?')} "
            f"(stores in `{storage.get('path', '?')}`)",
        ),
        (
            "commit",
            f"`{commit.get('id', '?')}`{' (dirty)' if commit.get('dirty') else ''} on {commit.get('branch', '?')}",
        ),
        ("settings", "; ".join(sorted(settings))),
        ("image shape", ", ".join(sorted({"x".join(map(str, cell.image_shape)) for cell in run.cells}))),
    ]
    return markdown_table(("", "value"), rows)


def median_table(run: Run, mixed_shapes: bool) -> str:
    """Median seconds per round, with ours/floor beside it: a row per (operation, image count), a column per method."""
    cells = method_cells(run)
    checks = floor_checks(run.cells)
    methods = sorted({cell.method for cell in cells})
    rows: dict[tuple, dict[str, str]] = {}
    for cell in _ordered(cells):
        text = format_seconds(cell.stats["median"]) + (f" ({_ratio(checks[cell.key])})" if cell.key in checks else "")
        rows.setdefault((cell.operation, _images(cell.key, mixed_shapes)), {})[cell.method] = text
    return markdown_table(
        ("operation", "images", *methods),
        ((*slot, *(values.get(m, "–") for m in methods)) for slot, values in rows.items()),
    )


def _resources(cell: Cell) -> tuple[str, str, str]:
    """CPU seconds per 1000 images and device bytes read and written per image, per round."""
    return (
        _per_image(cell, "cpu_s", 1000, lambda value: f"{value:.3g}"),
        _per_image(cell, "device_read_bytes", 1, format_bytes),
        _per_image(cell, "device_write_bytes", 1, format_bytes),
    )


def throughput_table(run: Run, mixed_shapes: bool) -> str:
    """Images/s and MB/s of pixels at the median, ours/floor, the speed-up over the slowest method, and resources."""
    up = speedups(run)
    checks = floor_checks(run.cells)
    return markdown_table(
        (
            "operation",
            "images",
            "method",
            "median",
            "images/s",
            "MB/s",
            "floor",
            "ours/floor",
            "speed-up vs slowest",
            "CPU s / 1000 images",
            "device read / image",
            "device write / image",
        ),
        (
            (
                cell.operation,
                _images(cell.key, mixed_shapes),
                cell.method,
                format_seconds(cell.stats["median"]),
                format_rate(1 / cell.seconds_per_image),
                format_rate(cell.bytes_per_image / 1e6 / cell.seconds_per_image),
                cell.extra_info.get("floor") or "–",
                _ratio(checks.get(cell.key)),
                f"{up[cell.key]:.2f}×",
                *_resources(cell),
            )
            for cell in _ordered(method_cells(run))
        ),
    )


def single_writes_table(run: Run, mixed_shapes: bool) -> str | None:
    """store_single_into cells: the cost of a write amortised over whole cycles of the method's upkeep (journal folds,
    compactions), beside the median, p99 and max of the writes timed one by one."""
    cells = [cell for cell in _ordered(method_cells(run)) if "write_amortised_s" in cell.extra_info]
    if not cells:
        return None

    def seconds(cell: Cell, field: str) -> str:
        return format_seconds(cell.extra_info[field]) if field in cell.extra_info else "–"

    return markdown_table(
        ("images in the store", "method", "amortised per write", "p50", "p99", "max", "writes timed", "amortised over"),
        (
            (
                _images(cell.key, mixed_shapes),
                cell.method,
                *(seconds(cell, field) for field in ("write_amortised_s", "write_p50_s", "write_p99_s", "write_max_s")),
                str(cell.extra_info.get("writes_timed", "–")),
                f"{cell.extra_info.get('amortised_writes', '–')} writes, "
                f"{cell.extra_info.get('upkeep_cycles', 0)} upkeep cycles",
            )
            for cell in cells
        ),
    )


def floor_table(run: Run, mixed_shapes: bool) -> str | None:
    """The floor cells: median, spread, throughput, their own ratio to memcpy, and resources."""
    floors = [cell for cell in run.cells if is_floor(cell)]
    if not floors:
        return None
    checks = floor_checks(run.cells)
    return markdown_table(
        (
            "floor",
            "images",
            "median",
            "q1–q3",
            "images/s",
            "MB/s",
            "ours/memcpy",
            "CPU s / 1000 images",
            "device read / image",
            "device write / image",
        ),
        (
            (
                cell.method,
                _images(cell.key, mixed_shapes),
                format_seconds(cell.stats["median"]),
                f"{format_seconds(cell.stats['q1'])}–{format_seconds(cell.stats['q3'])}",
                format_rate(cell.n_images / cell.stats["median"]),
                format_rate(cell.raw_bytes / 1e6 / cell.stats["median"]),
                _ratio(checks.get(cell.key)),
                *_resources(cell),
            )
            for cell in sorted(floors, key=lambda cell: (cell.method, cell.key))
        ),
    )


def implausible(run: Run) -> list[str]:
    """One line per cell faster than its floor by more than the floor's spread."""
    checks = floor_checks(run.cells)
    return [
        describe_implausible(cell, checks[cell.key])
        for cell in _ordered(run.cells)
        if cell.key in checks and checks[cell.key].implausible
    ]


def disk_table(run: Run, mixed_shapes: bool) -> str | None:
    """Measured store sizes (du and du --apparent-size) of the store cells, and per image."""
    cells = [cell for cell in _ordered(run.cells) if "disk_usage" in cell.extra_info]
    if not cells:
        return None

    def size(cell: Cell, kind: str, per_image: bool = False) -> str:
        value = cell.extra_info["disk_usage"].get(f"{kind}_bytes")
        return "–" if value is None else format_bytes(value / cell.n_images if per_image else value)

    return markdown_table(
        ("operation", "images", "method", "allocated", "apparent", "allocated per image", "apparent per image"),
        (
            (
                cell.operation,
                _images(cell.key, mixed_shapes),
                cell.method,
                size(cell, "allocated"),
                size(cell, "apparent"),
                size(cell, "allocated", True),
                size(cell, "apparent", True),
            )
            for cell in cells
        ),
    )


def comparison(runs: Sequence[Run], labels: Sequence[str], mixed_shapes: bool) -> str:
    """Per cell, each later run's median over the first run's, with the geometric mean per run."""
    base = {cell.key: cell for cell in runs[0].cells}
    per_run = [ratios(runs[0], run) for run in runs[1:]]
    keys = [cell.key for cell in _ordered(runs[0].cells) if any(cell.key in run_ratios for run_ratios in per_run)]
    header = ("operation", "images", "method", f"median: {labels[0]}", *(f"{label} / first" for label in labels[1:]))
    rows = [
        (
            key.operation,
            _images(key, mixed_shapes),
            key.method,
            format_seconds(base[key].stats["median"]),
            *(f"{run_ratios[key]:.2f}" if key in run_ratios else "–" for run_ratios in per_run),
        )
        for key in keys
    ]
    means = [
        f"- **{label}**: geometric mean {geometric_mean(run_ratios.values()):.2f} over {len(run_ratios)} shared cells"
        if run_ratios
        else f"- **{label}**: no cells in common with the first run"
        for label, run_ratios in zip(labels[1:], per_run)
    ]
    return "\n".join(
        [
            f"Each run's median time per round divided by the first run's ({labels[0]}), cell by cell: "
            "below 1 is faster than the first run, above 1 slower.",
            "",
            *means,
            "",
            markdown_table(header, rows),
        ]
    )


def render(shaped: Shaped, charts: Mapping[str, Path], sections: Sequence[str] = ()) -> str:
    """The whole report.md text; chart images are linked by file name, so they must sit beside it. ``sections``
    (Markdown, such as the training-read section) go after the charts and the comparison, before each run's tables."""
    runs, labels = shaped.runs, shaped.labels
    mixed_shapes = len({cell.image_shape for run in runs for cell in run.cells}) > 1
    parts = [
        "# Image storage benchmark report",
        "",
        f"Times are the median seconds per round; spread in charts is {SPREAD_NAMES[shaped.spread]}. "
        f"Disk charts use {shaped.disk_kind} bytes. Sizes are decimal (1 MB = 10⁶ bytes).",
        "",
        "Runs:",
        "",
    ]
    parts += [f"{index}. **{label}** — `{run.path}`" for index, (run, label) in enumerate(zip(runs, labels), 1)]
    if any(shaped.missing):
        parts += [
            "",
            "## Missing cells",
            "",
            "Compared with the full grid (every method in any run × every image count in any run × the four "
            "operations):",
            "",
        ]
        parts += [
            f"- **{label}**: {describe_missing(missing)}" for label, missing in zip(labels, shaped.missing) if missing
        ]
    flagged = [(label, line) for run, label in zip(runs, labels) for line in implausible(run)]
    if flagged:
        parts += [
            "",
            "## ⚠ Implausible cells",
            "",
            "Faster than their floor (measured in the same run) beyond noise: the cell's q3 below the floor's "
            "q1 and its median 10 % or more below the floor's. The cell did not "
            "do the work (a lazy read, a cache the benchmark did not intend) or the floor is wrong. A bug until "
            "explained.",
            "",
        ]
        parts += [f"- **{label}**: {line}" for label, line in flagged]
    parts += ["", "## Charts", ""]
    for name, path in charts.items():
        parts += [f"![{name}]({path.name})", "", CAPTIONS[name], ""]
    if len(runs) > 1:
        parts += ["## Comparison between runs", "", comparison(runs, labels, mixed_shapes), ""]
    parts += [section for section in sections if section]
    for run, label in zip(runs, labels):
        parts += [
            f"## Run: {label}",
            "",
            "### Provenance",
            "",
            provenance(run, label),
            "",
            "### Median time per round",
            "",
            median_table(run, mixed_shapes),
            "",
            "### Throughput, floors, speed-up and resources",
            "",
            "Pixel throughput at the median; `ours/floor` is the median over the floor's median in the same run "
            "(⚠: implausibly below the floor); speed-up is how many times faster than the slowest method at the same "
            "operation and image count; CPU (user + system, worker processes included) and bytes read from and written "
            "to the device are per round, measured around the timed rounds.",
            "",
            throughput_table(run, mixed_shapes),
            "",
        ]
        single = single_writes_table(run, mixed_shapes)
        if single:
            parts += [
                "### Single writes into a filled store",
                "",
                "Each write timed on its own; amortised: the "
                "mean over whole cycles of the method's periodic upkeep (journal folds, compactions), which the "
                "median leaves out. images/s above counts the images written.",
                "",
                single,
                "",
            ]
        floors = floor_table(run, mixed_shapes)
        if floors:
            parts += [
                "### Floors",
                "",
                "What the hardware or a library does alone with the same images in the same run "
                "(docs/benchmarks.md); `ours/memcpy` bounds each floor in turn.",
                "",
                floors,
                "",
            ]
        disk = disk_table(run, mixed_shapes)
        if disk:
            parts += [
                "### Disk usage",
                "",
                "Store size after one round, as `du` (allocated) and `du --apparent-size` count it.",
                "",
                disk,
                "",
            ]
    return "\n".join(parts)


def write_report(shaped: Shaped, charts: Mapping[str, Path], out_dir: Path, sections: Sequence[str] = ()) -> Path:
    path = out_dir / "report.md"
    path.write_text(render(shaped, charts, sections), encoding="utf-8")
    return path

"""report.md: the tables, the charts and where each run came from, as GitHub-flavoured Markdown."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import geometric_mean

from reports.load import OPERATIONS, Cell, Run
from reports.shape import CellKey, Shaped, describe_missing, format_bytes, format_seconds, ratios, speedups

CAPTIONS = {
    "store_many_linear": "Time to store a whole cutoff's images in one round, linear axes: how the cost grows at scale.",
    "store_many_loglog": "The same on log-log axes, so the small cutoffs and the per-call overhead are visible.",
    "read_many_linear": "Time to read a whole cutoff's images back in one round, linear axes.",
    "read_many_loglog": "The same on log-log axes.",
    "read_store_loglog": "Store (solid) and read (dashed) together, log-log: the gap between writing and reading each method.",
    "single_image": "Storing and reading one image per call: median per method, error bars show the spread of rounds.",
    "disk_usage_stacked": "Size of each cutoff's store after store_many, stacked on the running total of the smaller cutoffs; "
                          "the number on top is the total for all cutoffs.",
    "disk_bytes_per_image": "Store size divided by image count: fixed overhead dominates small stores, per-image cost large ones.",
}
SPREAD_NAMES = {"iqr": "q1–q3 (interquartile range)", "range": "min–max"}


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: float) -> str:
    """Three significant digits without exponent notation: 0.123, 45.6, 1,234."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ordered(cells: Iterable[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda cell: (OPERATIONS.index(cell.operation), cell.image_shape, cell.n_images, cell.method))


def _images(key: CellKey, mixed_shapes: bool) -> str:
    shape = "x".join(map(str, key[3]))
    return f"{key[2]:,} of {shape}" if mixed_shapes else f"{key[2]:,}"


def provenance(run: Run, label: str) -> str:
    """Where and how a run was made: machine, CPU, OS, Python, libraries, filesystem, commit, date."""
    machine, commit = run.machine_info, run.commit_info
    cpu = machine.get("cpu", {})
    storage = machine.get("storage", {})
    libraries = ", ".join(f"{name} {version}" for name, version in machine.get("libraries", {}).items())
    settings = {f"{name}: {', '.join(sorted({str(cell.extra_info.get(name, '?')) for cell in run.cells}))}" for name in ("dataset", "durable")}
    rows = [
        ("run", label),
        ("file", f"`{run.path}`"),
        ("date (UTC)", run.datetime),
        ("machine", f"{machine.get('node', '?')} ({machine.get('machine', '?')})"),
        ("CPU", f"{cpu.get('brand_raw', '?')} × {cpu.get('count', '?')}"),
        ("OS", f"{machine.get('system', '?')} {machine.get('release', '')}".strip()),
        ("Python", f"{machine.get('python_implementation', '')} {machine.get('python_version', '?')}".strip()),
        ("libraries", libraries or "?"),
        ("filesystem", f"{storage.get('filesystem', '?')} on {storage.get('device', '?')} at {storage.get('mount_point', '?')} "
                       f"(stores in `{storage.get('path', '?')}`)"),
        ("commit", f"`{commit.get('id', '?')}`{' (dirty)' if commit.get('dirty') else ''} on {commit.get('branch', '?')}"),
        ("settings", "; ".join(sorted(settings))),
        ("image shape", ", ".join(sorted({"x".join(map(str, cell.image_shape)) for cell in run.cells}))),
    ]
    return _table(("", "value"), rows)


def median_table(run: Run, mixed_shapes: bool) -> str:
    """Median seconds per round: a row per (operation, image count), a column per method."""
    methods = sorted({cell.method for cell in run.cells})
    rows: dict[tuple, dict[str, str]] = {}
    for cell in _ordered(run.cells):
        rows.setdefault((cell.operation, _images(cell.key, mixed_shapes)), {})[cell.method] = format_seconds(cell.stats["median"])
    return _table(("operation", "images", *methods), ((*slot, *(values.get(m, "–") for m in methods)) for slot, values in rows.items()))


def throughput_table(run: Run, mixed_shapes: bool) -> str:
    """Images/s and MB/s of pixels at the median, and the speed-up over the slowest method."""
    up = speedups(run)
    return _table(
        ("operation", "images", "method", "median", "images/s", "MB/s", "speed-up vs slowest"),
        ((cell.operation, _images(cell.key, mixed_shapes), cell.method, format_seconds(cell.stats["median"]),
          _rate(cell.n_images / cell.stats["median"]), _rate(cell.raw_bytes / 1e6 / cell.stats["median"]), f"{up[cell.key]:.2f}×")
         for cell in _ordered(run.cells)),
    )


def disk_table(run: Run, mixed_shapes: bool) -> str | None:
    """Measured store sizes (du and du --apparent-size) of the store cells, and per image."""
    cells = [cell for cell in _ordered(run.cells) if "disk_usage" in cell.extra_info]
    if not cells:
        return None

    def size(cell: Cell, kind: str, per_image: bool = False) -> str:
        value = cell.extra_info["disk_usage"].get(f"{kind}_bytes")
        return "–" if value is None else format_bytes(value / cell.n_images if per_image else value)

    return _table(
        ("operation", "images", "method", "allocated", "apparent", "allocated per image", "apparent per image"),
        ((cell.operation, _images(cell.key, mixed_shapes), cell.method, size(cell, "allocated"), size(cell, "apparent"),
          size(cell, "allocated", True), size(cell, "apparent", True)) for cell in cells),
    )


def comparison(runs: Sequence[Run], labels: Sequence[str], mixed_shapes: bool) -> str:
    """Per cell, each later run's median over the first run's, with the geometric mean per run."""
    base = {cell.key: cell for cell in runs[0].cells}
    per_run = [ratios(runs[0], run) for run in runs[1:]]
    keys = [cell.key for cell in _ordered(runs[0].cells) if any(cell.key in run_ratios for run_ratios in per_run)]
    header = ("operation", "images", "method", f"median: {labels[0]}", *(f"{label} / first" for label in labels[1:]))
    rows = [(key[0], _images(key, mixed_shapes), key[1], format_seconds(base[key].stats["median"]),
             *(f"{run_ratios[key]:.2f}" if key in run_ratios else "–" for run_ratios in per_run)) for key in keys]
    means = [f"- **{label}**: geometric mean {geometric_mean(run_ratios.values()):.2f} over {len(run_ratios)} shared cells"
             if run_ratios else f"- **{label}**: no cells in common with the first run" for label, run_ratios in zip(labels[1:], per_run)]
    return "\n".join([
        f"Each run's median time per round divided by the first run's ({labels[0]}), cell by cell: "
        "below 1 is faster than the first run, above 1 slower.", "", *means, "", _table(header, rows),
    ])


def render(shaped: Shaped, charts: Mapping[str, Path]) -> str:
    """The whole report.md text; chart images are linked by file name, so they must sit beside it."""
    runs, labels = shaped.runs, shaped.labels
    mixed_shapes = len({cell.image_shape for run in runs for cell in run.cells}) > 1
    parts = ["# Image storage benchmark report", "",
             f"Times are the median seconds per round; spread in charts is {SPREAD_NAMES[shaped.spread]}. "
             f"Disk charts use {shaped.disk_kind} bytes. Sizes are decimal (1 MB = 10⁶ bytes).", "", "Runs:", ""]
    parts += [f"{index}. **{label}** — `{run.path}`" for index, (run, label) in enumerate(zip(runs, labels), 1)]
    if any(shaped.missing):
        parts += ["", "## Missing cells", "",
                  "Compared with the full grid (every method in any run × every image count in any run × the four operations):", ""]
        parts += [f"- **{label}**: {describe_missing(missing)}" for label, missing in zip(labels, shaped.missing) if missing]
    parts += ["", "## Charts", ""]
    for name, path in charts.items():
        parts += [f"![{name}]({path.name})", "", CAPTIONS[name], ""]
    if len(runs) > 1:
        parts += ["## Comparison between runs", "", comparison(runs, labels, mixed_shapes), ""]
    for run, label in zip(runs, labels):
        parts += [f"## Run: {label}", "", "### Provenance", "", provenance(run, label), "",
                  "### Median time per round", "", median_table(run, mixed_shapes), "",
                  "### Throughput and speed-up", "",
                  "Pixel throughput at the median; speed-up is how many times faster than the slowest method at the same "
                  "operation and image count.", "", throughput_table(run, mixed_shapes), ""]
        disk = disk_table(run, mixed_shapes)
        if disk:
            parts += ["### Disk usage", "", "Store size after one round, as `du` (allocated) and `du --apparent-size` count it.", "", disk, ""]
    return "\n".join(parts)


def write_report(shaped: Shaped, charts: Mapping[str, Path], out_dir: Path) -> Path:
    path = out_dir / "report.md"
    path.write_text(render(shaped, charts), encoding="utf-8")
    return path

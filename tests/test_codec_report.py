"""reports/codecs.py on fabricated runs: method variants with lossless and lossy codecs, whose bytes on disk and
read speeds are set here, so the table's numbers are known; a run without shuffled reads; a run of one variant."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from reports.codecs import (
    codec_section,
    codec_table,
    codec_views,
    place_labels,
    plot_bytes_vs_speed,
    write_codec_charts,
)
from reports.results import load_run

SHAPE = (64, 64, 3)
RAW = 64 * 64 * 3  # pixel bytes per image
CUTOFFS = (100, 1000)
# method variant -> (codec, psnr_db, allocated bytes per image, read_many seconds per image, read_random seconds per
# image)
VARIANTS = {
    "disk": ("png", None, 9000, 40e-6, 80e-6),
    "disk:codec=jpeg-90": ("jpeg-90", 38.25, 2000, 50e-6, 100e-6),
    "lmdb": ("raw", None, 12500, 5e-6, 20e-6),
    "lmdb:codec=webp-80": ("webp-80", 35.5, 1500, 60e-6, 125e-6),
    "hdf5": ("raw", None, 12300, 4e-6, 25e-6),
}


def bench(operation: str, method: str, n_images: int, seconds: float, **extra) -> dict:
    """One benchmark entry as the suite writes it, every round taking `seconds`."""
    codec, psnr, *_ = VARIANTS[method]
    info = {
        "suite": "image-storage",
        "operation": operation,
        "method": method,
        "n_images": n_images,
        "image_shape": list(SHAPE),
        "dtype": "uint8",
        "raw_bytes": n_images * RAW,
        "codec": codec,
        "images_per_s": n_images / seconds,
        **extra,
    }
    if psnr is not None:
        info["psnr_db"] = psnr
    stats = {name: seconds for name in ("median", "min", "max", "q1", "q3", "mean")} | {
        "rounds": 3,
        "data": [seconds] * 3,
    }
    return {"name": f"test_{operation}[{method}-{n_images}]", "extra_info": info, "stats": stats}


def make_run(variants=tuple(VARIANTS), shuffled: bool = True) -> dict:
    benchmarks = []
    for method in variants:
        _, _, disk, sequential, random = VARIANTS[method]
        for n in CUTOFFS:
            # the small store carries a fixed overhead: the larger one must be the one charted
            usage = {"allocated_bytes": disk * n + 50_000 * (n == CUTOFFS[0]), "apparent_bytes": (disk - 100) * n}
            benchmarks.append(bench("store_many", method, n, 1e-3 * n, disk_usage=usage))
            benchmarks.append(bench("read_many", method, n, sequential * n * (2 if n == CUTOFFS[0] else 1)))
        if shuffled:
            n = CUTOFFS[-1]
            for batch, workers, cache, factor in (
                (256, 1, "warm", 1),
                (64, 1, "warm", 3),
                (256, 2, "warm", 0.5),
                (256, 1, "cold", 4),
            ):
                benchmarks.append(
                    bench("read_random", method, n, random * n * factor, batch_size=batch, workers=workers, cache=cache)
                )
    floor = bench("floor", "disk", 1000, 1e-3)
    floor["extra_info"]["method"] = "floor-files-read"
    benchmarks.append(floor)
    return {
        "machine_info": {"node": "bench"},
        "commit_info": {},
        "datetime": "2026-11-21T10:00:00+00:00",
        "benchmarks": benchmarks,
    }


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the section's table, by method variant, cells stripped."""
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| `")
    ]
    return {row[0].strip("`"): row[1:] for row in rows}


@pytest.fixture
def full(tmp_path):
    return codec_views([load_run(write(tmp_path / "full.json", make_run()))])


def test_rows_take_the_largest_store_and_reads_and_the_charted_shuffled_settings(full):
    (view,) = full
    assert (view.image_shape, view.dtype, view.batch_size) == (SHAPE, "uint8", 256)
    rows = {row.method: row for row in view.rows}
    assert list(rows) == sorted(VARIANTS)  # no floor cell
    for method, (codec, psnr, disk, sequential, random) in VARIANTS.items():
        row = rows[method]
        assert (row.codec, row.psnr_db) == (codec, psnr)
        assert row.disk_bytes_per_image == disk and row.ratio == pytest.approx(disk / RAW)
        assert row.sequential.n_images == 1000 and row.sequential.images_per_s == pytest.approx(1 / sequential)
        assert row.shuffled.n_images == 1000 and row.shuffled.images_per_s == pytest.approx(1 / random)
    assert view.panels == ["sequential", "shuffled"]


def test_apparent_sizes(tmp_path):
    (view,) = codec_views([load_run(write(tmp_path / "run.json", make_run()))], "apparent")
    assert {row.method: row.disk_bytes_per_image for row in view.rows} == {m: v[2] - 100 for m, v in VARIANTS.items()}


def test_the_table_has_the_numbers(full):
    rows = table_rows(codec_table(full[0]))
    assert rows["disk:codec=jpeg-90"] == ["jpeg-90", "2 KB", "0.163×", "20,000", "10,000", "38.2"]
    assert rows["lmdb:codec=webp-80"] == ["webp-80", "1.5 KB", "0.122×", "16,667", "8,000", "35.5"]
    assert rows["lmdb"] == ["raw", "12.5 KB", "1.02×", "200,000", "50,000", "lossless"]
    assert rows["disk"] == ["png", "9 KB", "0.732×", "25,000", "12,500", "lossless"]


def test_the_chart_is_written_with_both_panels(full, tmp_path):
    charts = write_codec_charts(full, ["run"], tmp_path)
    assert list(charts) == ["bytes_vs_speed_64x64x3_uint8"]
    png = charts["bytes_vs_speed_64x64x3_uint8"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert png.with_suffix(".svg").stat().st_size > 20_000
    text = codec_section(full, ["run"], charts)
    assert text.startswith("## Bytes on disk against read speed")
    assert "![bytes_vs_speed_64x64x3_uint8](bytes_vs_speed_64x64x3_uint8.png)" in text
    assert "left out" not in text and "No chart" not in text
    assert len(table_rows(text)) == len(VARIANTS)


def test_labels_do_not_overlap_when_points_crowd():
    import matplotlib.pyplot as plt

    from reports.codecs import CodecView, Speed, VariantRow

    rows = tuple(
        VariantRow(
            f"method{index}:codec=jpeg-{90 - index}",
            f"jpeg-{90 - index}",
            2000 + 10 * index,
            RAW,
            Speed(10_000 + 50 * index, 1000),
            None,
            30.0,
        )
        for index in range(6)
    )
    view = CodecView(0, SHAPE, "uint8", "allocated", None, rows)
    figure = plt.figure(figsize=(8, 5))
    ax = figure.subplots()
    plot_bytes_vs_speed(ax, view, "sequential")
    figure.canvas.draw()
    labels = place_labels(
        ax,
        [row.disk_bytes_per_image / 1000 for row in rows],
        [row.sequential.images_per_s for row in rows],
        [row.method for row in rows],
    )
    renderer = figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    plt.close(figure)
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))


def test_a_run_without_shuffled_reads_draws_the_sequential_panel(tmp_path):
    views = codec_views([load_run(write(tmp_path / "run.json", make_run(shuffled=False)))])
    (view,) = views
    assert view.batch_size is None and view.panels == ["sequential"]
    charts = write_codec_charts(views, ["run"], tmp_path)
    assert charts["bytes_vs_speed_64x64x3_uint8"].stat().st_size > 10_000
    text = codec_section(views, ["run"], charts)
    assert "The shuffled panel is left out" in text
    assert table_rows(text)["hdf5"] == ["raw", "12.3 KB", "1×", "250,000", "–", "lossless"]


def test_a_run_of_one_variant_skips_the_chart_with_a_note(tmp_path):
    views = codec_views([load_run(write(tmp_path / "run.json", make_run(variants=("disk:codec=jpeg-90",))))])
    assert views[0].panels == []
    assert write_codec_charts(views, ["run"], tmp_path) == {}
    assert not list(tmp_path.glob("*.png"))
    text = codec_section(views, ["run"], {})
    assert "No chart: fewer than two method variants" in text and "![" not in text
    assert table_rows(text) == {"disk:codec=jpeg-90": ["jpeg-90", "2 KB", "0.163×", "20,000", "10,000", "38.2"]}


def test_the_default_batch_size_or_else_the_largest(tmp_path):
    document = make_run()
    document["benchmarks"] = [entry for entry in document["benchmarks"] if entry["extra_info"].get("batch_size") != 256]
    (view,) = codec_views([load_run(write(tmp_path / "run.json", document))])
    assert view.batch_size == 64
    assert {row.method: row.shuffled.images_per_s for row in view.rows} == pytest.approx(
        {m: 1 / (3 * v[4]) for m, v in VARIANTS.items()}
    )


def test_runs_without_codec_fields_show_dashes(tmp_path):
    document = make_run(variants=("lmdb", "hdf5"))
    for entry in document["benchmarks"]:
        entry["extra_info"].pop("codec")
    (view,) = codec_views([load_run(write(tmp_path / "run.json", document))])
    assert table_rows(codec_table(view))["lmdb"] == ["–", "12.5 KB", "1.02×", "200,000", "50,000", "–"]


def test_the_command_puts_the_section_and_a_chart_per_run_in_the_report(tmp_path, capsys):
    from reports.cli import main

    first = write(tmp_path / "a.json", make_run())
    second = write(tmp_path / "b.json", make_run(variants=("lmdb",)))
    out = tmp_path / "out"
    assert main([str(first), str(second), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert report.count("## Bytes on disk against read speed") == 1
    assert "![bytes_vs_speed_64x64x3_uint8_run1](bytes_vs_speed_64x64x3_uint8_run1.png)" in report
    assert "No chart" in report  # the second run has a single variant
    assert (out / "bytes_vs_speed_64x64x3_uint8_run1.png").stat().st_size > 20_000
    assert not (out / "bytes_vs_speed_64x64x3_uint8_run2.png").exists()
    assert report.index("## Bytes on disk against read speed") < report.index("## Run: ")

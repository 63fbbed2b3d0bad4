"""reports/training.py on a small real run of the suite (tests/data/run-training-small.json), made with

    pytest benchmarks --cutoffs 100,500 --batch-sizes 32,128 --workers 1,2 --cache warm,cold \\
        -k "read_many or test_read_random" --benchmark-max-time 0.01 --benchmark-json tests/data/run-training-small.json

(read_many and read_random of every method, plus the floor cells they bring along), and on older runs without
read_random cells, which must give an empty section.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.results import load_run
from reports.training import (
    chart_axes,
    throughput_curves,
    training_points,
    training_section,
    training_table,
    write_training_charts,
)

DATA = Path(__file__).parent / "data"
RUN = DATA / "run-training-small.json"
METHODS = ("disk", "hdf5", "lmdb")


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(RUN.read_text())


@pytest.fixture(scope="module")
def points():
    return training_points([load_run(RUN)])


def test_the_fixture_is_a_small_real_run(document):
    assert RUN.stat().st_size < 200_000
    names = [bench["name"] for bench in document["benchmarks"]]
    assert sum(name.startswith("test_read_random[") for name in names) == 24
    assert any(name.startswith("test_floor_gather[") for name in names)  # a floor cell with a batch size, to leave out


def test_a_point_per_read_random_cell_with_its_numbers(points, document):
    assert len(points) == 24
    assert {(point.method, point.batch_size, point.workers, point.cache) for point in points} == {
        (method, batch, workers, cache)
        for method in METHODS
        for batch in (32, 128)
        for workers in (1, 2)
        for cache in ("warm", "cold")
    }
    cells = {bench["name"]: bench for bench in document["benchmarks"]}
    point = next(
        point
        for point in points
        if (point.method, point.batch_size, point.workers, point.cache) == ("lmdb", 128, 2, "cold")
    )
    cell = cells["test_read_random[lmdb-500-b128-w2-cold]"]
    sequential = cells["test_read_many[lmdb-500]"]
    assert point.n_images == 500 and point.image_shape == (32, 32, 3)
    assert point.images_per_s == pytest.approx(cell["extra_info"]["images_per_s"])
    assert point.mb_per_s == pytest.approx(cell["extra_info"]["mb_per_s"])
    assert point.random_over_sequential == pytest.approx(point.images_per_s / (500 / sequential["stats"]["median"]))
    for field in ("batch_p50_s", "batch_p99_s", "first_batch_s", "startup_s", "resident_fraction_before"):
        assert getattr(point, field) == cell["extra_info"][field]
    assert all((point.resident_fraction_before is None) == (point.cache == "warm") for point in points)


def test_curves_against_workers_and_batch_size(points):
    by_workers = throughput_curves(points, "workers")
    assert len(by_workers) == 3 * 2 * 2 and all(curve.x == (1, 2) for curve in by_workers)
    assert {curve.fixed for curve in by_workers} == {"b32", "b128"}
    by_batch = throughput_curves(points, "batch_size")
    assert len(by_batch) == 12 and all(curve.x == (32, 128) for curve in by_batch)
    curve = next(curve for curve in by_batch if (curve.method, curve.cache, curve.fixed) == ("disk", "warm", "w1"))
    assert curve.y == tuple(
        point.images_per_s for point in points if (point.method, point.cache, point.workers) == ("disk", "warm", 1)
    )
    assert chart_axes(points) == ["batch_size", "workers"]
    assert chart_axes([point for point in points if point.batch_size == 32]) == ["workers"]  # one batch size: no trend


def test_charts_are_written_as_png_and_svg(points, tmp_path):
    charts = write_training_charts(points, ["run"], tmp_path)
    assert list(charts) == ["read_random_batch_size", "read_random_workers"]
    for png in charts.values():
        assert png.stat().st_size > 0 and png.with_suffix(".svg").stat().st_size > 0


def test_the_section_has_a_table_per_run_and_the_charts(points, tmp_path):
    charts = write_training_charts(points, ["run a"], tmp_path)
    text = training_section(points, ["run a"], {**charts, "read_many_linear": tmp_path / "read_many_linear.png"})
    assert text.startswith("## Training reads: shuffled epochs")
    assert "![read_random_workers](read_random_workers.png)" in text and "read_many_linear" not in text
    assert "### run a" in text
    assert "| lmdb | cold | 128 | 2 |" in text
    assert sum(line.startswith("|") for line in text.splitlines()) == 1 + 1 + 24  # header, separator, a row per cell
    assert "host may still cache" in text


def test_two_runs_share_the_charts_and_get_a_table_each(tmp_path):
    runs = [load_run(RUN), load_run(RUN)]
    points = training_points(runs)
    assert {point.run_index for point in points} == {0, 1}
    assert len(throughput_curves(points, "workers")) == 2 * 12
    text = training_section(points, ["first", "second"], write_training_charts(points, ["first", "second"], tmp_path))
    assert "### first" in text and "### second" in text


def test_cells_without_latencies_or_a_sequential_read_show_dashes(document, tmp_path):
    for bench in document["benchmarks"]:
        for field in ("batch_p50_s", "batch_p99_s", "first_batch_s", "startup_s"):
            bench["extra_info"].pop(field, None)
    document["benchmarks"] = [
        bench for bench in document["benchmarks"] if not bench["name"].startswith("test_read_many")
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    points = training_points([load_run(path)])
    assert all(point.random_over_sequential is None and point.batch_p50_s is None for point in points)
    row = next(line for line in training_table(points).splitlines() if line.startswith("| disk | warm | 32 | 1 |"))
    assert row.endswith("| – | – | – | – | – | – |")


@pytest.mark.parametrize("name", ["run-small.json", "run-full.json", "pair-a.json"])
def test_runs_without_read_random_give_nothing(name, tmp_path):
    points = training_points([load_run(DATA / name)])
    assert points == ()
    assert write_training_charts(points, ["old"], tmp_path) == {}
    assert list(tmp_path.iterdir()) == []
    assert training_section(points, ["old"], {}) == ""


def test_the_command_puts_the_training_section_and_charts_in_the_report(tmp_path):
    from reports.cli import main

    assert main([str(RUN), "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert (
        "## Training reads: shuffled epochs" in report and "![read_random_workers](read_random_workers.png)" in report
    )
    assert report.index("## Training reads") < report.index("## Run: ")
    assert (tmp_path / "read_random_workers.svg").exists() and (tmp_path / "read_random_batch_size.png").exists()

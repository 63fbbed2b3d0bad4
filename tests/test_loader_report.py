"""reports/loaders.py on a small real run of the loader cells (tests/data/run-loaders-tiny.json), made with

    pytest benchmarks --cutoffs 40 --batch-sizes 16 --image-shape 8x8x3 --methods hdf5 \\
        -k "test_loader and (hdf5 or tensordataset or litdata)" --benchmark-max-time 0.01 --benchmark-min-rounds 2 \\
        --benchmark-json tests/data/run-loaders-tiny.json

and on a run without loader cells, which must give no points, no chart and an empty section.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.loaders import loader_points, loader_rows, loader_section, write_loader_charts
from reports.results import load_run
from reports.shape import missing_cells

DATA = Path(__file__).parent / "data"
RUN = DATA / "run-loaders-tiny.json"


@pytest.fixture(scope="module")
def points():
    return loader_points([load_run(RUN)])


def test_a_point_per_loader_cell_ours_first(points):
    assert [(point.kind, point.name, point.workers) for point in points] == [
        ("loader", "hdf5", 0),
        ("loader", "hdf5", 2),
        ("read_batches", "hdf5", None),
        ("loader_peer", "litdata", 0),
        ("loader_peer", "litdata", 2),
        ("loader_peer", "tensordataset", 0),
        ("loader_peer", "tensordataset", 2),
    ]
    cells = {cell.key[:2] + (cell.variant,): cell for cell in load_run(RUN).cells}
    cell = cells["loader", "hdf5", "b16-w2"]
    assert points[1].images_per_s == pytest.approx(cell.extra_info["images_per_s"])
    assert all(point.load_average is not None and point.batch_size == 16 for point in points)


def test_rows_put_worker_counts_side_by_side(points):
    rows = loader_rows(points)
    assert [row.label for row in rows] == ["hdf5", "hdf5 (read_batch alone)", "litdata (peer)", "tensordataset (peer)"]
    assert set(rows[0].images_per_s) == {0, 2} and set(rows[1].images_per_s) == {None}


def test_section_and_chart(points, tmp_path):
    charts = write_loader_charts(points, ["run"], tmp_path)
    assert charts == {"loaders": tmp_path / "loaders.png"} and (tmp_path / "loaders.svg").stat().st_size > 0
    section = loader_section(points, ["run"], charts)
    assert "![loaders](loaders.png)" in section and "### 40 images of 8x8x3, batches of 16" in section
    assert "| litdata (peer) |" in section and "load average" in section
    assert "| hdf5 (read_batch alone) | " in section  # in the num_workers=0 column, the others "–"


def test_peers_are_not_missing_methods():
    assert missing_cells([load_run(RUN)]) == ((),)


def test_runs_without_loader_cells_give_nothing(tmp_path):
    runs = [load_run(path) for path in sorted(DATA.glob("run-training-small.json"))]
    assert loader_points(runs) == ()
    assert write_loader_charts((), ["run"], tmp_path) == {} and loader_section((), ["run"], {}) == ""

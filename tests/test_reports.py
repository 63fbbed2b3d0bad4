"""Tests of the reports package: loading, shaping, drawing and the command line.

The fixture runs in tests/data/ are made by make_run below (test_fixtures_are_reproducible checks
that they still match), so their numbers are known here without reading them back.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from reports.cli import main
from reports.draw import CHARTS
from reports.results import Cell, ReportInputError, load_run, resolve_inputs
from reports.shape import missing_cells, ratios, shape, speedups, unique_labels

DATA = Path(__file__).parent / "data"
METHODS = ("disk", "lmdb", "hdf5")
CUTOFFS = (10, 100, 1000, 10000, 100000)
SHAPE = (32, 32, 3)
IMAGE_BYTES = 32 * 32 * 3
# (fixed seconds, seconds per image) per method and operation, roughly what a laptop SSD gives
COSTS = {
    "disk": {"store": (2e-4, 3e-4), "read": (1e-4, 1.5e-4)},
    "lmdb": {"store": (1e-3, 1e-5), "read": (2e-4, 8e-6)},
    "hdf5": {"store": (2e-3, 2e-6), "read": (1e-3, 1e-6)},
}
# (fixed bytes, bytes per image) of a store: apparent and allocated
DISK_COSTS = {"disk": (40, 3300, 4096), "lmdb": (8192, 3200, 3250), "hdf5": (2048, 3072, 3100)}
FIXTURES = {
    "run-full.json": {"node": "bench-a", "seed": 1},
    "pair-a.json": {"node": "bench-a", "seed": 2},
    "pair-b.json": {
        "node": "bench-b",
        "seed": 3,
        "speed": 0.6,
        "cpu": "AMD Ryzen 9 7950X",
        "datetime": "2026-11-21T14:30:00.000000+00:00",
        "commit": "f00dcafe" * 5,
    },
}


def _stats(data: list[float]) -> dict:
    q1, _, q3 = statistics.quantiles(data, n=4) if len(data) > 1 else (data[0],) * 3
    return {
        "min": min(data),
        "max": max(data),
        "mean": statistics.fmean(data),
        "stddev": statistics.stdev(data) if len(data) > 1 else 0.0,
        "rounds": len(data),
        "median": statistics.median(data),
        "iqr": q3 - q1,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": 0,
        "stddev_outliers": 0,
        "outliers": "0;0",
        "ld15iqr": min(data),
        "hd15iqr": max(data),
        "ops": 1 / statistics.fmean(data),
        "total": sum(data),
        "data": data,
        "iterations": 1,
    }


def make_cell(method: str, operation: str, n_images: int, seconds: float, rng: random.Random) -> dict:
    """One benchmark entry as the suite writes it, with rounds scattered around `seconds`."""
    rounds = 50 if n_images == 1 else max(2, min(20, int(2 / seconds)))
    data = [round(seconds * rng.uniform(0.9, 1.25), 9) for _ in range(rounds)]
    stats = _stats(data)
    extra = {
        "suite": "image-storage",
        "operation": operation,
        "method": method,
        "n_images": n_images,
        "image_shape": list(SHAPE),
        "raw_bytes": n_images * IMAGE_BYTES,
        "dataset": "synthetic",
        "durable": False,
        "images_per_s": n_images / stats["median"],
        "mb_per_s": n_images * IMAGE_BYTES / 1e6 / stats["median"],
    }
    if operation.startswith("store"):
        fixed, apparent, allocated = DISK_COSTS[method]
        extra["disk_usage"] = {
            "allocated_bytes": fixed + allocated * n_images,
            "apparent_bytes": fixed + apparent * n_images,
        }
    cutoff = n_images
    return {
        "group": f"{operation} {cutoff}",
        "name": f"test_{operation}[{method}-{cutoff}]",
        "fullname": f"benchmarks/test_storage.py::test_{operation}[{method}-{cutoff}]",
        "params": {"method": method, "cutoff": cutoff},
        "param": f"{method}-{cutoff}",
        "extra_info": extra,
        "options": {
            "disable_gc": False,
            "timer": "perf_counter",
            "min_rounds": 1,
            "max_time": 1.0,
            "min_time": 5e-06,
            "warmup": False,
        },
        "stats": stats,
    }


def model_seconds(method: str, operation: str, n_images: int, speed: float = 1.0) -> float:
    fixed, per_image = COSTS[method][operation.split("_")[0]]
    return speed * (fixed + per_image * n_images)


def make_run(
    node: str = "bench-a",
    seed: int = 0,
    speed: float = 1.0,
    cpu: str = "Intel(R) Core(TM) i7-1185G7",
    datetime: str = "2026-11-21T10:03:12.123456+00:00",
    commit: str = "0123456789abcdef" * 2 + "01234567",
    methods=METHODS,
    cutoffs=CUTOFFS,
) -> dict:
    """A whole pytest-benchmark document of the suite: single cells and every (method, cutoff) of the many cells."""
    rng = random.Random(seed)
    benchmarks = []
    for method in methods:
        for operation in ("store_single", "read_single"):
            benchmarks.append(make_cell(method, operation, 1, model_seconds(method, operation, 1, speed), rng))
        for operation in ("store_many", "read_many"):
            for cutoff in cutoffs:
                benchmarks.append(
                    make_cell(method, operation, cutoff, model_seconds(method, operation, cutoff, speed), rng)
                )
    benchmarks.append(
        {
            "group": None,
            "name": "test_other_suite",
            "fullname": "other.py::test_other_suite",
            "params": None,
            "param": None,
            "extra_info": {},
            "options": {},
            "stats": _stats([0.001, 0.002]),
        }
    )
    return {
        "machine_info": {
            "node": node,
            "processor": "x86_64",
            "machine": "x86_64",
            "python_compiler": "GCC 12.2.0",
            "python_implementation": "CPython",
            "python_implementation_version": "3.11.9",
            "python_version": "3.11.9",
            "python_build": ["main", "Apr  2 2024 08:25:04"],
            "release": "6.1.0-18-amd64",
            "system": "Linux",
            "cpu": {"brand_raw": cpu, "count": 8, "arch": "X86_64", "bits": 64},
            "storage": {
                "path": "/tmp/pytest-of-bench/stores",
                "filesystem": "ext4",
                "mount_point": "/",
                "device": "/dev/nvme0n1p2",
                "free_bytes": 123456789012,
            },
            "libraries": {
                "numpy": "2.1.3",
                "Pillow": "11.0.0",
                "h5py": "3.12.1",
                "hdf5": "1.14.5",
                "lmdb": "1.5.1",
                "lmdb_library": "0.9.31",
                "matplotlib": "3.11.0",
                "storage_impls": "0.1.0",
            },
        },
        "commit_info": {
            "id": commit,
            "time": "2026-11-20T18:00:00+01:00",
            "author_time": "2026-11-20T18:00:00+01:00",
            "dirty": False,
            "project": "image-storage",
            "branch": "main",
        },
        "benchmarks": benchmarks,
        "datetime": datetime,
        "version": "5.3.1",
    }


def write_fixtures(directory: Path = DATA) -> None:
    """(Re)write the committed fixture runs."""
    for name, options in FIXTURES.items():
        (directory / name).write_text(json.dumps(make_run(**options), indent=1) + "\n", encoding="utf-8")


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


# --- fixtures and loading -------------------------------------------------------------------


def test_fixtures_are_reproducible(tmp_path):
    write_fixtures(tmp_path)
    for name in FIXTURES:
        assert (tmp_path / name).read_text() == (DATA / name).read_text(), (
            f"regenerate tests/data/{name} with write_fixtures()"
        )
        assert (DATA / name).stat().st_size < 200_000


def test_load_keeps_only_suite_cells():
    run = load_run(DATA / "run-full.json")
    assert len(run.cells) == 3 * (2 + 2 * 5)
    assert all(isinstance(cell, Cell) and cell.image_shape == SHAPE for cell in run.cells)
    cell = next(cell for cell in run.cells if cell.key[:5] == ("read_many", "lmdb", 1000, SHAPE, ""))
    assert "data" not in cell.stats and cell.data and len(cell.data) == cell.stats["rounds"]
    assert run.label == "bench-a · 2026-11-21 10:03 · 0123456"


def test_resolve_inputs(tmp_path):
    machine = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    old = write_json(machine / "0001_abc_20261121_100000.json", make_run(datetime="2026-11-21T10:00:00+00:00"))
    new = write_json(machine / "0002_abc_20261121_110000.json", make_run(datetime="2026-11-21T11:00:00+00:00"))
    assert resolve_inputs([], tmp_path / ".benchmarks") == [new]
    assert resolve_inputs(["0001"], tmp_path / ".benchmarks") == [old]
    assert resolve_inputs([str(tmp_path / ".benchmarks"), str(old)]) == [old, new]
    assert resolve_inputs([str(machine / "*.json")]) == [old, new]
    with pytest.raises(ReportInputError, match="no run with id 7"):
        resolve_inputs(["7"], tmp_path / ".benchmarks")


# --- shaping --------------------------------------------------------------------------------


def test_series_medians_land_in_their_slot():
    run = load_run(DATA / "run-full.json")
    shaped = shape([run])
    by_key = {cell.key[:5]: cell for cell in run.cells}
    assert shaped.names == ("disk", "hdf5", "lmdb")
    for series in shaped.series:
        for x, y, lo, hi in zip(series.x, series.y, series.lo, series.hi):
            cell = by_key[series.operation, series.name, x, SHAPE, ""]
            assert (y, lo, hi) == (cell.stats["median"], cell.stats["q1"], cell.stats["q3"])
    store_disk = next(s for s in shaped.series if (s.name, s.operation) == ("disk", "store_many"))
    assert store_disk.x == CUTOFFS
    assert store_disk.y[-1] == pytest.approx(model_seconds("disk", "store_many", 100000), rel=0.3)
    assert (
        shape([run], spread="range").series[0].lo[0]
        == by_key[shaped.series[0].operation, shaped.series[0].name, shaped.series[0].x[0], SHAPE, ""].stats["min"]
    )


def test_disk_stacks_are_running_totals():
    shaped = shape([load_run(DATA / "run-full.json")])
    hdf5 = next(stack for stack in shaped.disk if stack.name == "hdf5")
    fixed, _, allocated = DISK_COSTS["hdf5"]
    assert hdf5.segments == tuple(fixed + allocated * cutoff for cutoff in CUTOFFS)
    assert hdf5.bottoms == (0, *(sum(hdf5.segments[:i]) for i in range(1, 5)))
    assert hdf5.tops[-1] == sum(hdf5.segments)
    assert hdf5.per_image[-1] == pytest.approx(allocated, rel=0.01)
    apparent = next(
        stack for stack in shape([load_run(DATA / "run-full.json")], disk_kind="apparent").disk if stack.name == "hdf5"
    )
    assert apparent.segments[0] == fixed + DISK_COSTS["hdf5"][1] * 10


def test_speedups_ratios_and_labels():
    a, b = load_run(DATA / "pair-a.json"), load_run(DATA / "pair-b.json")
    up = {key[:5]: value for key, value in speedups(a).items()}
    assert up["store_many", "disk", 100000, SHAPE, ""] == 1.0  # disk is the slowest store
    assert up["store_many", "hdf5", 100000, SHAPE, ""] > 10
    assert statistics.median(ratios(a, b).values()) == pytest.approx(0.6, rel=0.1)
    assert unique_labels([a, b]) == ("bench-a · 2026-11-21 10:03 · 0123456", "bench-b · 2026-11-21 14:30 · f00dcaf")
    assert unique_labels([a, a]) == (a.label, a.label + " (2)")


def test_missing_cells_against_full_grid(tmp_path):
    partial = load_run(write_json(tmp_path / "partial.json", make_run(methods=("disk", "lmdb"), cutoffs=(10, 100))))
    full = load_run(DATA / "run-full.json")
    missing_full, missing_partial = missing_cells([full, partial])
    assert missing_full == ()
    assert ("store_single", "hdf5", 1) in missing_partial
    assert ("read_many", "lmdb", 100000) in missing_partial
    assert len(missing_partial) == 2 + 2 * 5 + 2 * 2 * 3


# --- the command line -----------------------------------------------------------------------


def expected_files(out: Path, floors: bool = False) -> list[Path]:
    """report.md, report.html and every chart; the floor chart only for runs with floor cells."""
    names = [name for name in CHARTS if floors or name != "floor_ratio"]
    return [out / "report.md", out / "report.html"] + [
        out / f"{name}.{ext}" for name in names for ext in ("png", "svg")
    ]


def test_report_of_one_run(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli([DATA / "run-full.json", "--out", out], capsys)
    assert code == 0, err
    assert err == ""
    for path in expected_files(out):
        assert path.stat().st_size > 0, path
    report = (out / "report.md").read_text()
    assert "![" in report and "disk_usage_stacked.png" in report
    assert "Intel(R) Core(TM) i7-1185G7" in report and "ext4" in report and "h5py" in report
    assert "Missing" not in report


def test_report_is_deterministic(tmp_path, capsys):
    for out in ("one", "two"):
        assert run_cli([DATA / "run-full.json", "--out", tmp_path / out], capsys)[0] == 0
    for name in ("disk_usage_stacked.svg", "read_store_loglog.svg", "report.md", "report.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_report_of_two_machines(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(
        [DATA / "pair-a.json", DATA / "pair-b.json", "--out", out, "--disk", "apparent", "--spread", "range"], capsys
    )
    assert code == 0, err
    assert all(path.stat().st_size > 0 for path in expected_files(out))
    report = (out / "report.md").read_text()
    assert "bench-a · 2026-11-21 10:03 · 0123456" in report and "bench-b · 2026-11-21 14:30 · f00dcaf" in report
    assert "AMD Ryzen 9 7950X" in report
    assert "## Comparison between runs" in report and "0.6" in report
    assert "bench-b · 2026-11-21 14:30 · f00dcaf" in (out / "read_many_loglog.svg").read_text()


def test_partial_run_draws_and_says_what_is_missing(tmp_path, capsys):
    partial = write_json(tmp_path / "partial.json", make_run(methods=("disk", "lmdb"), cutoffs=(10, 100)))
    out = tmp_path / "out"
    code, err = run_cli([DATA / "run-full.json", partial, "--out", out], capsys)
    assert code == 0
    assert err.count("\n") == 1 and str(partial) in err and "missing" in err and "hdf5" in err
    assert "## Missing cells" in (out / "report.md").read_text()
    assert (out / "store_many_loglog.png").stat().st_size > 0


def test_latest_run_from_benchmarks_dir(tmp_path, capsys, monkeypatch):
    machine = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    write_json(machine / "0001_x.json", make_run(node="old", datetime="2026-11-20T10:00:00+00:00"))
    write_json(machine / "0002_x.json", make_run(node="new", datetime="2026-11-21T10:00:00+00:00"))
    monkeypatch.chdir(tmp_path)
    assert run_cli([], capsys)[0] == 0
    assert "new · 2026-11-21" in (tmp_path / "reports" / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"machine_info": {}}', "no 'benchmarks' list"),
        ("[1, 2]", "no 'benchmarks' list"),
        (
            '{"benchmarks": [], "machine_info": {}, "commit_info": {}, "datetime": "2026-11-21T10:00:00"}',
            "no cells of this suite",
        ),
        (
            '{"benchmarks": [{"name": "t", "extra_info": {"suite": "image-storage", "operation": "read_many"}, '
            '"stats": {}}],'
            ' "machine_info": {}, "commit_info": {}, "datetime": "2026-11-21T10:00:00"}',
            "benchmark 't': missing extra_info.method",
        ),
        ('{"benchmarks": [], "commit_info": {}, "datetime": "2026-11-21T10:00:00"}', "missing 'machine_info'"),
        ("\xff\xfe", "cannot read"),
    ],
)
def test_bad_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content.encode("latin-1"))
    code, err = run_cli([bad, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(bad) in err and message in err and "Traceback" not in err


def test_missing_stats_field_is_reported(tmp_path, capsys):
    document = make_run()
    del document["benchmarks"][3]["stats"]["q3"]
    bad = write_json(tmp_path / "bad.json", document)
    code, err = run_cli([bad], capsys)
    assert code == 2 and "missing stats.q3" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.json"], "missing.json: no such file or directory"),
        (["nothing-*.json"], "nothing-*.json: glob matched no files"),
        (["--benchmarks-dir", "empty"], "empty: no benchmark runs"),
        (["--benchmarks-dir", "absent"], "absent: no such directory"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.skipif(not (DATA / "run-small.json").exists(), reason="no real run dropped in tests/data yet")
def test_report_of_real_small_run(tmp_path, capsys):
    code, err = run_cli([DATA / "run-small.json", "--out", tmp_path], capsys)
    assert code == 0, err
    assert (tmp_path / "report.md").stat().st_size > 0

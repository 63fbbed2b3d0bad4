"""Floors: the rule from cells to floors (benchmarks.floors), the codec floors in a run of the suite, cells against
floors (reports.floors), and the implausible flag in report.md for a run doctored to beat its floor."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.floor_inputs import encode_all
from benchmarks.floors import (
    CODEC_STEPS,
    FLOORS,
    IO_FLOORS,
    OPERATIONS,
    UNFLOORED,
    NoFloorError,
    codec_spec,
    floor_codecs,
    floor_counts,
    floor_images,
    floor_names,
    floor_of_test,
    floors_of_cell,
)
from reports import results
from reports.cli import main as report_main
from reports.floors import describe_implausible, floor_checks
from reports.results import Cell, load_run
from storage_impls import METHODS
from storage_impls.core.codecs import PILLOW_FREE_BLOCKS, get_codec
from storage_impls.datasets import synthetic
from tests.test_benchmarks import run_suite
from tests.test_reports import make_cell, make_run

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SHAPE = (32, 32, 3)


def suite_tests() -> set[str]:
    """Names of the test functions of every benchmark module (each one times an operation or a floor)."""
    return {
        node.name
        for path in BENCHMARKS.glob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def suite_operations() -> set[str]:
    return {name.removeprefix("test_") for name in suite_tests() if not name.startswith("test_floor_")}


# --- the rule -------------------------------------------------------------------------------

CODEC_VARIANTS = (
    "lmdb:codec=png-0",
    "lmdb:codec=jpeg-1",
    "disk:codec=jpeg-100",
    "rocksdb:codec=webp-80",
    "disk:codec=webp-lossless",
    "lmdb:codec=raw",
)


def names_a_floor(name: str) -> bool:
    """A floor with a test: one of FLOORS, or ``<spec>-encode`` / ``<spec>-decode`` of a codec spelled canonically."""
    if name in FLOORS:
        return True
    for step in (*CODEC_STEPS.values(), *IO_FLOORS):  # <spec>-encode, <spec>-decode, <spec>-<io floor> on encoded bytes
        spec = name.removesuffix(f"-{step}")
        if spec != name and get_codec(spec).spec == spec != "raw":
            return True
    return False


def test_every_method_and_operation_of_the_suite_has_a_floor():
    """Fails when a method is registered or an operation added without a floor the rule can name."""
    assert {"store_single", "read_single", "store_many", "read_many"} <= suite_operations()
    for operation in suite_operations() - UNFLOORED.keys():  # the loader cells, each beside its reference
        assert operation in OPERATIONS, (
            f"operation {operation!r} of the suite has no floor in benchmarks.floors.OPERATIONS"
        )
        assert operation in results.OPERATIONS, f"operation {operation!r} of the suite is unknown to reports.results"
        for method in (*METHODS, *CODEC_VARIANTS):
            for cache in ("warm", "cold"):
                names = floor_names(method, operation, cache)
                assert names and all(map(names_a_floor, names)), (method, operation, cache)


def test_every_floor_has_its_cell():
    assert {f"test_floor_{name.replace('-', '_')}" for name in FLOORS} <= suite_tests()
    assert {f"test_floor_{step}" for step in CODEC_STEPS.values()} <= suite_tests()
    assert floor_of_test("test_floor_file_read_cold", {"cutoff": 10}) == "file-read-cold"
    assert floor_of_test("test_floor_encode", {"codec": "webp-lossless", "cutoff": 1}) == "webp-lossless-encode"
    assert floor_of_test("test_floor_file_read", {"codec": "raw", "cutoff": 1}) == "file-read"
    assert floor_of_test("test_floor_mapped_copy", {"codec": "jpeg-90", "cutoff": 1}) == "jpeg-90-mapped-copy"


@pytest.mark.parametrize(
    ("method", "operation", "cache", "expected"),
    [
        ("lmdb", "store_many", "warm", ("file-write",)),
        ("hdf5", "read_many", "warm", ("mapped-copy",)),  # reads_through_map: a copy from mapped pages
        ("npy-memmap", "read_single", "warm", ("mapped-copy",)),
        ("zarr:reader=pread", "read_many", "warm", ("file-read",)),
        (
            "disk",
            "read_many",
            "warm",
            ("png-files-read", "png-decode"),
        ),  # an encoding method's I/O floor moves its bytes
        ("disk", "store_single", "warm", ("png-encode", "png-files-write")),
        ("lmdb", "read_random", "warm", ("gather",)),
        ("hdf5", "read_random", "cold", ("file-read-cold",)),
        ("disk", "read_random", "warm", ("png-files-read", "png-decode")),
        # single writes into a filled store: an append where the method appends (a journal), else a new file
        ("lmdb", "store_single_into", "warm", ("file-write",)),
        ("hdf5", "store_single_into", "warm", ("file-append",)),
        ("npy-files", "store_single_into", "warm", ("file-append",)),
        ("disk", "store_single_into", "warm", ("png-encode", "png-file-append")),
        ("hdf5", "store_single", "warm", ("file-write",)),
        # the rule reads traits, codec and operation only: a method needs no entry of its own
        ("rocksdb", "read_many", "warm", ("file-read",)),
        ("npy-files", "store_many", "warm", ("files-write",)),
        ("lmdb:codec=png", "read_many", "warm", ("png-mapped-copy", "png-decode")),
        ("disk:codec=raw", "store_many", "warm", ("files-write",)),
        # a codec's floor is the exact spec the store uses: quality and level matter, spelled as codecs.py does
        ("lmdb:codec=jpeg-90", "read_many", "warm", ("jpeg-90-mapped-copy", "jpeg-90-decode")),
        ("webdataset:codec=jpeg-90", "read_many", "warm", ("jpeg-90-file-read", "jpeg-90-decode")),
        ("lmdb:codec=jpeg-50", "store_many", "warm", ("jpeg-50-encode", "jpeg-50-file-write")),
        ("disk:codec=webp-lossless", "read_random", "warm", ("webp-lossless-files-read", "webp-lossless-decode")),
        ("rocksdb:codec=png-9", "store_single", "warm", ("png-9-encode", "png-9-file-write")),
        ("lmdb:codec=png-6", "read_single", "warm", ("png-mapped-copy", "png-decode")),
        ("disk", "read_random", "cold", ("png-file-read-cold", "png-decode")),
        ("floor-file-read", "floor", "warm", ("memcpy",)),
        ("floor-png-encode", "floor", "warm", ("memcpy",)),
        ("floor-memcpy", "floor", "warm", ()),
        ("floor-jpeg-90-file-read", "floor", "warm", ()),  # moves fewer bytes than the pixels memcpy copies
    ],
)
def test_the_rule(method, operation, cache, expected):
    assert floor_names(method, operation, cache) == expected


def test_what_has_no_floor_says_so():
    with pytest.raises(NoFloorError, match="operation 'scan'"):
        floor_names("lmdb", "scan")
    with pytest.raises(NoFloorError, match="unknown codec 'gif'"):
        floor_names("lmdb:codec=gif", "read_many")
    with pytest.raises(NoFloorError, match="unknown storage method 'tape'"):
        floor_names("tape", "read_many")


def test_the_codec_is_the_stores_spec_and_its_floors_run_only_for_the_methods_codecs():
    """A variant's codec, spelled as codecs.py does, else the class's DEFAULT_CODEC; floor cells over those specs."""
    assert codec_spec("disk:codec=webp-80") == "webp-80" and codec_spec("lmdb:codec=png-6") == "png"
    assert (codec_spec("disk"), codec_spec("hdf5"), codec_spec("lmdb"), codec_spec("disk:codec=raw")) == (
        "png",
        "raw",
        "raw",
        "raw",
    )
    assert floor_codecs(["hdf5"]) == floor_codecs(METHODS) == ("png",)  # png always: `pytest benchmarks/test_floors.py`
    assert floor_codecs(
        ["lmdb:codec=jpeg-90", "disk", "disk:codec=raw", "rocksdb:codec=jpeg-90", "lmdb:codec=jpeg-50"]
    ) == ("png", "jpeg-90", "jpeg-50")


def test_floor_image_counts_and_cells():
    assert (
        floor_images("store_single_into", 1000) == 2 and floor_images("read_many", 1000) == 1000
    )  # two writes a round
    assert floor_counts([10, 100]) == [1, 2, 10, 100]
    assert floor_images("floor", 10) == 10
    assert floors_of_cell("disk", "store_single", {"method": "disk", "cutoff": 1}) == {
        ("png-encode", 1, None),
        ("png-files-write", 1, None),
        ("memcpy", 1, None),
    }
    assert floors_of_cell("hdf5", "read_random", {"n_images": 100, "batch_size": 64, "cache": "warm"}) == {
        ("gather", 100, 64),
        ("memcpy", 100, None),
    }
    assert floors_of_cell("lmdb", "scan", {"cutoff": 10}) == set()
    assert floors_of_cell("lmdb:codec=jpeg-90", "read_many", {"cutoff": 10}) == {
        ("jpeg-90-mapped-copy", 10, None),
        ("jpeg-90-decode", 10, None),
        ("memcpy", 10, None),
    }


# --- codec floors in a run of the suite -----------------------------------------------------


def test_codec_floors_run_with_the_exact_codec_of_each_cell(tmp_path):
    """jpeg-90, jpeg-50 and webp-lossless cells each get their codec's floor cells, run with that spec, verified (a
    lossy floor against decode(encode(x)): against the source a JPEG floor would fail), and a floor_ratio."""
    methods = "lmdb:codec=jpeg-90,lmdb:codec=jpeg-50,disk:codec=webp-lossless"
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        methods,
        "-k",
        "store_many or read_many or store_single",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    benches = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    floors = {bench["name"]: bench["extra_info"] for bench in benches if bench["name"].startswith("test_floor_")}
    cells = [bench for bench in benches if not bench["name"].startswith("test_floor_")]
    assert {(info["method"].removeprefix("floor-"), info["n_images"], None) for info in floors.values()} == set().union(
        *(
            floors_of_cell(bench["extra_info"]["method"], bench["extra_info"]["operation"], bench["params"])
            for bench in cells
        )
    )
    assert floors["test_floor_encode[jpeg-90-10]"]["method"] == "floor-jpeg-90-encode"
    assert floors["test_floor_decode[jpeg-50-10]"]["floor"] == "memcpy"
    assert {"floor-jpeg-90-encode", "floor-jpeg-50-decode", "floor-webp-lossless-decode"} <= {
        info["method"] for info in floors.values()
    }
    by_name = {bench["name"]: bench for bench in benches}
    read = by_name["test_read_many[lmdb:codec=jpeg-90-10]"]["extra_info"]
    assert read["floor"] == "jpeg-90-mapped-copy+jpeg-90-decode" and read["floor_n_images"] == 10
    # the ratio is over the faster of the floor cells and their rounds interleaved with the cell's
    # (benchmarks/interleave.py)
    separately = (
        by_name["test_floor_mapped_copy[jpeg-90-10]"]["stats"]["median"]
        + by_name["test_floor_decode[jpeg-90-10]"]["stats"]["median"]
    )
    assert read["floor_ratio"] == pytest.approx(
        by_name["test_read_many[lmdb:codec=jpeg-90-10]"]["stats"]["median"]
        / min(separately, read["floor_interleaved"]["median"])
    )
    # the I/O floor moves the JPEG bytes the store holds, several times fewer than the pixels
    jpeg = floors["test_floor_mapped_copy[jpeg-90-10]"]
    assert jpeg["payload_bytes"] == sum(map(len, encode_all(get_codec("jpeg-90"), synthetic(10, SHAPE, seed=0)[0])))
    single = by_name["test_store_single[disk:codec=webp-lossless-1]"]["extra_info"]
    assert single["floor"] == "webp-lossless-encode+webp-lossless-files-write" and single["floor_ratio"] > 0
    assert all(bench["extra_info"]["floor_ratio"] > 0 for bench in cells)


def test_a_codec_floor_is_skipped_when_the_codec_cannot_hold_the_images():
    """RGBA images: JPEG cannot hold them, so its floor is skipped with its cells, saying why; PNG's runs."""
    result = run_suite(
        "--cutoffs",
        "2",
        "--image-shape",
        "8x8x4",
        "--methods",
        "lmdb:codec=jpeg-90,disk",
        "-k",
        "read_many",
        "--benchmark-disable",
        "-rs",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "4 passed, 3 skipped" in result.stdout
    )  # memcpy, png-files-read, png-decode, disk; jpeg-90-mapped-copy, -decode, lmdb
    assert (
        "jpeg-90 cannot hold these images: JPEG holds uint8 images of shape (H, W) or (H, W, 3), not uint8 (8, 8, 4)"
        in result.stdout
    )


# --- cells against floors -------------------------------------------------------------------


def cell(
    method: str,
    seconds: float,
    n_images: int = 100,
    q1: float | None = None,
    q3: float | None = None,
    operation: str = "read_many",
    **extra,
) -> Cell:
    q1 = seconds * 0.98 if q1 is None else q1
    q3 = seconds * 1.02 if q3 is None else q3
    return Cell(
        operation=operation,
        method=method,
        n_images=n_images,
        image_shape=SHAPE,
        stats={"median": seconds, "q1": q1, "q3": q3, "min": q1, "max": q3},
        data=None,
        extra_info={"method": method, **extra},
    )


def test_ratios_sum_composite_floors_and_divide_by_workers():
    cells = [
        cell("floor-files-read", 0.2),
        cell("floor-png-decode", 0.6),
        cell("floor-file-read", 0.01),
        cell("floor-gather", 0.05, batch_size=64),
        cell("floor-gather", 0.04, batch_size=256),
        cell("disk", 1.0, floor="files-read+png-decode", floor_n_images=100),
        cell("hdf5", 0.012, floor="file-read", floor_n_images=100),
        cell(
            "lmdb",
            0.1,
            operation="read_random",
            floor="gather",
            floor_n_images=100,
            batch_size=256,
            workers=2,
            cache="warm",
        ),
        cell("lmdb", 0.1, operation="store_single", floor="file-write", floor_n_images=1),  # its floor did not run
    ]
    checks = floor_checks(cells)
    by_method = {key[1]: check for key, check in checks.items() if not key[1].startswith("floor-")}
    assert set(by_method) == {"disk", "hdf5", "lmdb"}
    assert by_method["disk"].floor_seconds == pytest.approx(0.8) and by_method["disk"].ratio == pytest.approx(1.25)
    assert by_method["disk"].floor_q1 == pytest.approx(0.2 * 0.98 + 0.6 * 0.98) and by_method[
        "disk"
    ].q3 == pytest.approx(1.02)
    assert by_method["hdf5"].ratio == pytest.approx(1.2)
    assert by_method["lmdb"].floor_seconds == pytest.approx(0.02) and by_method["lmdb"].ratio == pytest.approx(5.0)
    assert not any(check.implausible for check in checks.values())


@pytest.mark.parametrize(
    ("median", "q3", "flagged"),
    [
        (0.0095, 0.0097, False),  # distributions overlap: the cell's q3 above the floor's q1
        (0.0091, 0.0094, False),  # apart, but only 9 % below the floor: within the margin
        (0.0089, 0.0094, True),  # apart and 11 % below
        (0.0050, 0.0120, False),  # far below at the median, but its rounds spread over the floor's: noise, not a flag
    ],
)
def test_a_cell_is_implausible_only_apart_from_its_floor_and_beyond_the_margin(median, q3, flagged):
    floor = cell("floor-file-read", 0.010, q1=0.0095, q3=0.0105)
    check = next(iter(floor_checks([floor, cell("hdf5", median, q1=median * 0.98, q3=q3, floor="file-read")]).values()))
    assert check.implausible is flagged


def paired_cell(pairs: int, cpu: float, **floors_cpu: float) -> list[Cell]:
    """A shuffled jpeg-90 read 40 % below its floor in wall time, every round apart, with ``pairs`` interleaved pairs
    and ``cpu`` seconds of CPU a round, beside its two floor cells (CPU per round from ``floors_cpu``)."""
    gather_cpu, decode_cpu = floors_cpu.get("gather", 0.001), floors_cpu.get("decode", 0.19)
    interleaved = {"median": 1.0, "q1": 0.98, "q3": 1.02, "rounds": pairs, "ratio_q1": 0.5, "ratio_q3": 0.7}
    return [
        cell("floor-jpeg-90-gather", 0.001, batch_size=256, cpu_s=gather_cpu),
        cell("floor-jpeg-90-decode", 1.0, cpu_s=decode_cpu),
        cell(
            "hdf5:codec=jpeg-90",
            0.6,
            operation="read_random",
            floor="jpeg-90-gather+jpeg-90-decode",
            floor_n_images=100,
            batch_size=256,
            workers=1,
            cache="warm",
            cpu_s=cpu,
            floor_interleaved=interleaved,
        ),
    ]


@pytest.mark.parametrize(
    ("pairs", "cpu", "floors_cpu", "flagged"),
    [
        (2, 0.15, {}, False),  # apart in wall time, but 0.79x its floor's CPU: load, not less work
        (2, 0.05, {}, True),  # and a quarter of the floor's CPU: it did not do the work
        (5, 0.15, {}, True),  # five pairs: the round-by-round test stands alone (a parallel cell)
        (2, 0.001, {"decode": 0.01}, True),  # a floor below MIN_CPU_S: its CPU is not compared, wall time decides
    ],
)
def test_a_cell_with_few_rounds_is_flagged_only_if_it_also_used_less_cpu(pairs, cpu, floors_cpu, flagged):
    check = next(
        check for key, check in floor_checks(paired_cell(pairs, cpu, **floors_cpu)).items() if key[1].startswith("hdf5")
    )
    assert check.ratio == pytest.approx(0.6)  # against the faster timing of the floor: its interleaved rounds
    assert check.implausible is flagged
    if flagged and check.cpu_compared:
        assert "CPU" in describe_implausible(paired_cell(pairs, cpu)[-1], check)


# --- a doctored run -------------------------------------------------------------------------

FLOOR_COSTS = {
    "memcpy": 1e-7,
    "file-write": 2e-6,
    "file-append": 1e-6,
    "file-read": 5e-7,
    "mapped-copy": 3e-7,
    "files-write": 3e-5,
    "files-read": 5e-6,
    "png-encode": 8e-5,
    "png-decode": 5e-5,
}


def floor_cost(name: str) -> float:
    """Seconds per image of a floor in run_with_floors: an I/O floor on PNG bytes costs what it does on pixels."""
    return FLOOR_COSTS.get(name, FLOOR_COSTS.get(name.removeprefix("png-"), 0.0))


def run_with_floors(seed: int = 0, speed: float = 1.0, cutoffs=(10, 100, 1000), **slower: float) -> dict:
    """make_run's document plus the floor cells each method cell names, as the suite writes them."""
    document = make_run(seed=seed, speed=speed, cutoffs=cutoffs)
    rng = random.Random(seed)
    needed = set()
    for bench in document["benchmarks"]:
        info = bench["extra_info"]
        if not info:
            continue
        names = floor_names(info["method"], info["operation"])
        count = floor_images(info["operation"], info["n_images"])
        info.update(floor="+".join(names), floor_n_images=count)
        needed |= {(name, count) for name in (*names, "memcpy")}
        factor = slower.get(info["method"], 1.0)
        bench["stats"]["data"] = [value * factor for value in bench["stats"]["data"]]
        for name in ("median", "min", "max", "q1", "q3", "mean"):
            bench["stats"][name] *= factor
    for name, count in sorted(needed):
        floor = make_cell("hdf5", "read_many", count, speed * (2e-6 + floor_cost(name) * count), rng)
        floor["extra_info"].update(
            operation="floor",
            method=f"floor-{name}",
            **({"floor": "memcpy", "floor_n_images": count} if name != "memcpy" else {}),
        )
        floor["name"] = f"test_floor_{name.replace('-', '_')}[{count}]"
        document["benchmarks"].append(floor)
    return document


def doctored(document: dict, method: str, operation: str, n_images: int, factor: float) -> dict:
    """The run with one cell's every round made ``factor`` times as long (0.1: ten times faster)."""
    for bench in document["benchmarks"]:
        info = bench["extra_info"]
        if (info.get("method"), info.get("operation"), info.get("n_images")) == (method, operation, n_images):
            bench["stats"]["data"] = [value * factor for value in bench["stats"]["data"]]
            for name in ("median", "min", "max", "q1", "q3", "mean"):
                bench["stats"][name] *= factor
    return document


def test_doctored_run_is_flagged_in_the_report(tmp_path, capsys):
    """hdf5's read_many at 1000 images made 100x faster: faster than reading the raw file, so flagged."""
    honest = tmp_path / "honest.json"
    honest.write_text(json.dumps(run_with_floors()))
    assert report_main([str(honest), "--out", str(tmp_path / "honest")]) == 0
    assert "Implausible" not in (tmp_path / "honest" / "report.md").read_text()
    bad = tmp_path / "doctored.json"
    bad.write_text(json.dumps(doctored(run_with_floors(), "hdf5", "read_many", 1000, 0.01)))
    assert report_main([str(bad), "--out", str(tmp_path / "bad")]) == 0
    report = (tmp_path / "bad" / "report.md").read_text()
    assert "## ⚠ Implausible cells" in report
    flagged = [line for line in report.splitlines() if line.startswith("- **") and "faster than its floor" in line]
    assert len(flagged) == 1 and "read_many hdf5 n=1000" in flagged[0] and "floor mapped-copy" in flagged[0]
    assert "⚠" in next(line for line in report.splitlines() if line.startswith("| read_many | 1,000 | hdf5 |"))


def test_report_shows_ours_over_floor_and_draws_the_ratio_chart(tmp_path):
    document = run_with_floors()
    lmdb = next(bench for bench in document["benchmarks"] if bench["name"] == "test_store_many[lmdb-100]")
    lmdb["extra_info"].update(
        cpu_s=0.5, cpu_user_s=0.4, cpu_system_s=0.1, device_read_bytes=0.0, device_write_bytes=100 * 4096.0
    )
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    assert report_main([str(path), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    run = load_run(path)
    disk = next(c for c in run.cells if c.key[:5] == ("read_many", "disk", 100, SHAPE, ""))
    expected = disk.stats["median"] / sum(
        c.stats["median"]
        for c in run.cells
        if c.method in ("floor-png-files-read", "floor-png-decode") and c.n_images == 100
    )
    row = next(line for line in report.splitlines() if line.startswith("| read_many | 100 | disk |"))
    assert "png-files-read+png-decode" in row and f"{expected:.2f}×" in row and row.endswith("| – | – | – |")
    resources = next(line for line in report.splitlines() if line.startswith("| store_many | 100 | lmdb |"))
    assert resources.endswith("| 5 | 0 B | 4.1 KB |")  # CPU s per 1000 images, device bytes read and written per image
    assert "### Floors" in report and "| floor-png-decode | 100 |" in report
    assert "![floor_ratio](floor_ratio.png)" in report
    assert (tmp_path / "out" / "floor_ratio.png").stat().st_size > 0
    assert (
        "floor-" not in (tmp_path / "out" / "read_many_loglog.svg").read_text()
    )  # floors are not methods in the charts


@pytest.mark.parametrize("environment", [{}, {"PILLOW_BLOCKS_MAX": "5"}])
def test_decoding_keeps_freed_pillow_blocks_unless_the_environment_says(environment):
    """A fresh process (a reader worker) importing the codecs keeps freed Pillow image blocks for the next decode, as
    the floors' long-lived process in effect does; a PILLOW_BLOCKS_MAX of the user's wins."""
    code = "import storage_impls.core.codecs; from PIL import Image; print(Image.core.get_blocks_max())"
    env = {key: value for key, value in os.environ.items() if key != "PILLOW_BLOCKS_MAX"} | environment
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert int(found) == int(environment.get("PILLOW_BLOCKS_MAX", PILLOW_FREE_BLOCKS))

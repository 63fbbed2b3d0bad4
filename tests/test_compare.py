"""`python -m reports compare` on small runs written to tmp_path following docs/benchmark-json.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reports.compare import main

SHAPE = [32, 32, 3]
MACHINE = {
    "node": "ci-runner",
    "machine": "x86_64",
    "system": "Linux",
    "release": "6.5.0",
    "python_version": "3.11.9",
    "python_implementation": "CPython",
    "cpu": {"brand_raw": "AMD EPYC 7763", "count": 4},
    "storage": {"path": "/tmp", "filesystem": "ext4", "mount_point": "/", "device": "/dev/sda1", "free_bytes": 10**10},
    "libraries": {"numpy": "2.4.6", "h5py": "3.12.1", "lmdb": "1.5.1"},
}


def write_run(
    path: Path,
    seconds: dict[tuple[str, str, int], float],
    *,
    rounds: int = 10,
    seed: int = 0,
    machine: dict | None = None,
    extra_info: dict[tuple[str, str, int], dict] | None = None,
) -> Path:
    """A pytest-benchmark JSON file whose cell (operation, method, cutoff) has lognormal rounds around seconds[...]
    and, where given, more extra_info."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for (operation, method, cutoff), median in seconds.items():
        data = (median * rng.lognormal(0.0, 0.02, rounds)).tolist()
        q1, q3 = np.percentile(data, [25, 75])
        benchmarks.append(
            {
                "name": f"test_{operation}[{method}-{cutoff}]",
                "group": f"{operation} {cutoff}",
                "params": {"method": method, "cutoff": cutoff},
                "extra_info": {
                    "suite": "image-storage",
                    "operation": operation,
                    "method": method,
                    "n_images": cutoff,
                    "image_shape": SHAPE,
                    "dataset": "synthetic",
                    "durable": False,
                    **(extra_info or {}).get((operation, method, cutoff), {}),
                },
                "stats": {
                    "median": float(np.median(data)),
                    "min": min(data),
                    "max": max(data),
                    "mean": float(np.mean(data)),
                    "q1": float(q1),
                    "q3": float(q3),
                    "rounds": rounds,
                    "data": data,
                },
            }
        )
    document = {
        "machine_info": machine or MACHINE,
        "commit_info": {"id": f"{seed:040x}", "branch": "main", "dirty": False},
        "datetime": "2025-01-01T00:00:00+00:00",
        "version": "5.3.1",
        "benchmarks": benchmarks,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def grid(scale: float = 1.0, **slower: float) -> dict[tuple[str, str, int], float]:
    """read_many times for three methods at two cutoffs; slower={"lmdb": 1.3} multiplies one method's times."""
    base = {"disk": 2e-3, "lmdb": 5e-4, "hdf5": 4e-4}
    return {
        ("read_many", method, cutoff): scale * seconds * cutoff / 10 * slower.get(method, 1.0)
        for method, seconds in base.items()
        for cutoff in (10, 100)
    }


def other_machine(**changes) -> dict:
    machine = json.loads(json.dumps(MACHINE))
    machine["cpu"].update(changes.get("cpu", {}))
    machine.update({key: value for key, value in changes.items() if key != "cpu"})
    return machine


def test_same_timings_exit_0_and_write_markdown_and_json(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(tmp_path / "head.json", grid(), seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "read_many lmdb n=100 32x32x3" in printed and "\n0 slower, 0 faster" in printed
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert document["mode"] == "absolute" and len(document["cells"]) == 6 and document["uncertainty"] == "rounds"
    assert document["base"] == [{"path": str(base), "label": "ci-runner · 2025-01-01 00:00 · 0000000"}]
    assert {cell["verdict"] for cell in document["cells"]} <= {"unchanged", "inconclusive"}
    assert document["summary"]["slower"] == 0 and 0.95 <= document["ci_level"] < 1
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert markdown.startswith("# Benchmark comparison") and "| read_many hdf5 n=10 32x32x3 |" in markdown


def test_slower_cell_exits_1_and_is_the_only_one_flagged(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(tmp_path / "head.json", grid(lmdb=1.3), seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {cell["method"] for cell in cells if cell["verdict"] == "slower"} == {"lmdb"}
    slower = next(cell for cell in cells if cell["verdict"] == "slower")
    assert slower["ratio"] == pytest.approx(1.3, rel=0.05) and slower["ci"][0] > 1.1 and slower["p_adjusted"] < 0.05
    assert "slower" in capsys.readouterr().out


def test_speedup_exits_0(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(tmp_path / "head.json", grid(disk=0.7), seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    verdicts = {
        cell["method"]: cell["verdict"] for cell in json.loads((tmp_path / "compare.json").read_text())["cells"]
    }
    assert verdicts["disk"] == "faster"


def test_output_is_deterministic(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(tmp_path / "head.json", grid(hdf5=1.04), seed=2)
    main([str(base), str(head), "--out", str(tmp_path / "a")])
    main([str(base), str(head), "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "compare.json").read_text() == (tmp_path / "b" / "compare.json").read_text()


def test_too_few_rounds_are_inconclusive_not_a_verdict(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), rounds=3, seed=1)
    head = write_run(tmp_path / "head.json", grid(lmdb=1.5), rounds=3, seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {cell["verdict"] for cell in cells} == {"inconclusive"}
    assert all("only 3 rounds" in cell["reason"] and cell["ratio"] is None for cell in cells)


def test_missing_raw_data_is_inconclusive(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    document = json.loads(base.read_text())
    for bench in document["benchmarks"]:
        del bench["stats"]["data"]
    base.write_text(json.dumps(document))
    head = write_run(tmp_path / "head.json", grid(lmdb=1.5), seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    assert all(
        "no raw timings" in cell["reason"] for cell in json.loads((tmp_path / "compare.json").read_text())["cells"]
    )


@pytest.mark.parametrize("problem", ["missing", "not json", "other suite"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, problem):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = tmp_path / "head.json"
    if problem == "not json":
        head.write_text("{")
    elif problem == "other suite":
        head.write_text(
            json.dumps(
                {"machine_info": MACHINE, "commit_info": {}, "datetime": "2025-01-01T00:00:00", "benchmarks": []}
            )
        )
    assert main([str(base), str(head)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m reports compare: error: ") and str(head) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_run_ids_are_looked_up_in_the_benchmarks_dir(tmp_path):
    runs = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    runs.mkdir(parents=True)
    write_run(runs / "0001_aaaa_20250101_000000.json", grid(), seed=1)
    write_run(runs / "0002_bbbb_20250102_000000.json", grid(lmdb=1.3), seed=2)
    assert main(["0001", "0002", "--benchmarks-dir", str(tmp_path / ".benchmarks")]) == 1
    assert main(["0001", "0009", "--benchmarks-dir", str(tmp_path / ".benchmarks")]) == 2


def test_other_machine_is_refused_naming_the_fields(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(
        tmp_path / "head.json",
        grid(),
        seed=2,
        machine=other_machine(cpu={"brand_raw": "Intel Xeon", "count": 8}, release="6.8.0"),
    )
    assert main([str(base), str(head)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cross-machine" in err
    assert "cpu.brand_raw" in err and "cpu.count" in err and "release" in err
    assert "system" not in err and "storage.filesystem" not in err


def test_cross_machine_compares_ratios_to_the_reference_method(tmp_path):
    """HEAD's machine is 2x slower overall and its lmdb 1.3x slower still: only lmdb is flagged, hdf5 is not
    compared."""
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(
        tmp_path / "head.json",
        grid(scale=2.0, lmdb=1.3),
        seed=2,
        machine=other_machine(cpu={"brand_raw": "Intel Xeon"}, storage={**MACHINE["storage"], "filesystem": "xfs"}),
    )
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 2  # absolute times would be meaningless
    assert main([str(base), str(head), "--cross-machine", "--out", str(tmp_path)]) == 1
    document = json.loads((tmp_path / "compare.json").read_text())
    assert document["mode"] == "reference" and document["reference_method"] == "hdf5"
    assert any("storage.filesystem" in line for line in document["fingerprint_differences"])
    verdicts = {(cell["method"], cell["n_images"]): cell for cell in document["cells"]}
    assert set(verdicts) == {("disk", 10), ("disk", 100), ("lmdb", 10), ("lmdb", 100)}
    assert {key for key, cell in verdicts.items() if cell["verdict"] == "slower"} == {("lmdb", 10), ("lmdb", 100)}
    assert verdicts[("lmdb", 100)]["base"] == pytest.approx(5e-4 / 4e-4, rel=0.05)
    assert verdicts[("lmdb", 100)]["ratio"] == pytest.approx(1.3, rel=0.05)
    assert verdicts[("disk", 100)]["ratio"] == pytest.approx(1.0, abs=0.05)


def test_cross_machine_without_reference_cells_is_bad_input(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(tmp_path / "head.json", grid(), seed=2)
    assert main([str(base), str(head), "--cross-machine", "--reference-method", "zarr"]) == 2
    assert "no zarr cell in all runs" in capsys.readouterr().err


def test_library_version_differences_are_listed_not_refused(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head = write_run(
        tmp_path / "head.json",
        grid(),
        seed=2,
        machine=other_machine(libraries={**MACHINE["libraries"], "h5py": "3.13.0", "zarr": "3.0.0"}),
    )
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    expected = ["h5py: 3.12.1 -> 3.13.0", "zarr: missing -> 3.0.0"]
    assert json.loads((tmp_path / "compare.json").read_text())["library_differences"] == expected
    printed = capsys.readouterr().out
    assert all(line in printed for line in expected)
    assert "h5py: 3.12.1 -> 3.13.0" in (tmp_path / "compare.md").read_text()


def test_cells_in_one_run_only_are_noted(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    head_cells = {key: value for key, value in grid().items() if key[2] == 10}
    head = write_run(tmp_path / "head.json", head_cells, seed=2)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    assert len(document["cells"]) == 3
    assert document["not_compared"] == [
        "only in base: read_many disk n=100 32x32x3, read_many hdf5 n=100 32x32x3, read_many lmdb n=100 32x32x3"
    ]


@pytest.mark.parametrize(
    ("field", "base_value", "head_value", "shown"),
    [
        ("durable", False, True, "durable: False != True"),
        ("dataset", "synthetic", "cifar10", "dataset: synthetic != cifar10"),
        ("dtype", "uint8", "uint16", "dtype: uint8 != uint16"),
        ("launcher", "pytest", "mpi", "launcher: pytest != mpi"),
        ("codec", "raw", "jpeg-90", "codec: raw != jpeg-90"),
        ("image_shape", [32, 32, 3], [64, 64, 3], "image_shape: 32x32x3 != 64x64x3"),
    ],
)
def test_cells_that_differ_in_what_they_measure_are_refused_naming_the_difference(
    tmp_path, capsys, field, base_value, head_value, shown
):
    """A durable run against a non-durable one (or another dataset, dtype, launcher, codec, shape) pairs no cell:
    compare exits 2, listing the difference; where only some cells differ, those are noted and the others compared."""
    every = {key: {field: base_value} for key in grid()}
    base = write_run(tmp_path / "base.json", grid(), seed=1, extra_info=every)
    head = write_run(tmp_path / "head.json", grid(), seed=2, extra_info={key: {field: head_value} for key in grid()})
    assert main([str(base), str(head)]) == 2
    error = capsys.readouterr().err
    assert f"not comparable ({shown}, base != head): read_many disk n=10" in error and error.count("\n") == 1
    one = {**every, ("read_many", "lmdb", 100): {field: head_value}}
    head = write_run(tmp_path / "head.json", grid(), seed=2, extra_info=one)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    assert len(document["cells"]) == 5
    assert document["not_compared"] == [
        f"not comparable ({shown}, base != head): read_many lmdb n=100 "
        f"{'x'.join(map(str, base_value if field == 'image_shape' else SHAPE))}"
    ]


def test_fields_old_runs_did_not_record_take_the_values_those_runs_had(tmp_path):
    """A run from before dtype, launcher and codec were recorded pairs with a new run of the same cells."""
    from reports.results import cell_identity, load_run

    base = write_run(tmp_path / "base.json", grid(), seed=1)
    recorded = {
        key: {"dtype": "uint8", "launcher": "pytest", "codec": "png" if key[1] == "disk" else "raw"} for key in grid()
    }
    head = write_run(tmp_path / "head.json", grid(), seed=2, extra_info=recorded)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    assert len(json.loads((tmp_path / "compare.json").read_text())["cells"]) == 6
    old = next(
        cell for cell in load_run(Path(__file__).parent / "data" / "run-full.json").cells if cell.method == "disk"
    )
    assert {field: value for field, value in cell_identity(old).items() if field not in ("operation", "n_images")} == {
        "method": "disk",
        "image_shape": (32, 32, 3),
        "dtype": "uint8",
        "dataset": "synthetic",
        "durable": False,
        "launcher": "pytest",
        "codec": "png",
        "cache": None,
        "batch_size": None,
        "workers": None,
    }


def test_invalid_settings_exit_2(tmp_path):
    base = write_run(tmp_path / "base.json", grid(), seed=1)
    with pytest.raises(SystemExit) as exit_info:
        main([str(base), str(base), "--alpha", "1.5"])
    assert exit_info.value.code == 2


def write_runs(folder: Path, scales: list[float], seed: int, machine: dict | None = None, **slower: float) -> Path:
    """One run per scale in folder: scale is the whole run's drift (every cell of the run that much slower)."""
    folder.mkdir()
    for index, scale in enumerate(scales):
        write_run(folder / f"run-{index}.json", grid(scale=scale, **slower), seed=seed + index, machine=machine)
    return folder


# whole runs drifting by up to +-12 %, as seen between runs of the same commit on the development machine
DRIFT = [0.90, 1.05, 0.96, 1.12, 1.0]


def test_several_runs_per_side_absorb_drift_between_runs(tmp_path, capsys):
    """A/A with drifting runs: the runs' own spread keeps every cell from being flagged; one pair of runs is fooled."""
    base = write_runs(tmp_path / "base", DRIFT, seed=10)
    head = write_runs(tmp_path / "head", DRIFT[::-1], seed=20)
    assert main([str(base), str(head), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "5 base and 5 head runs: each run counts once" in printed and "and 4 more runs" in printed
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert document["uncertainty"] == "runs" and len(document["base"]) == len(document["head"]) == 5
    assert document["summary"]["slower"] == document["summary"]["faster"] == 0
    assert "  - `" in (tmp_path / "out" / "compare.md").read_text()  # each run listed
    assert main([str(base / "run-0.json"), str(head / "run-1.json")]) == 1  # 0.90 vs 1.12: rounds alone cannot tell


def test_several_runs_per_side_find_a_slowdown_beyond_the_drift(tmp_path):
    base = write_runs(tmp_path / "base", [1.0, 1.02, 0.98, 1.01, 0.99], seed=10)
    head = write_runs(tmp_path / "head", [0.99, 1.01, 1.0, 0.98, 1.02], seed=20, lmdb=1.3)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {cell["method"] for cell in cells if cell["verdict"] == "slower"} == {"lmdb"}
    lmdb = next(cell for cell in cells if cell["method"] == "lmdb")
    assert lmdb["ratio"] == pytest.approx(1.3, rel=0.03) and lmdb["head"] / lmdb["base"] == pytest.approx(lmdb["ratio"])


def test_several_runs_per_side_across_machines_compare_ratios_to_the_reference(tmp_path):
    base = write_runs(tmp_path / "base", [1.0, 1.05, 0.95], seed=10)
    head = write_runs(tmp_path / "head", [2.0, 2.1, 1.9], seed=20, machine=other_machine(cpu={"count": 8}), lmdb=1.3)
    assert main([str(base), str(head), "--cross-machine", "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {(cell["method"], cell["verdict"]) for cell in cells} <= {
        ("lmdb", "slower"),
        ("disk", "unchanged"),
        ("disk", "inconclusive"),
    }
    assert all(cell["verdict"] == "slower" for cell in cells if cell["method"] == "lmdb")


def test_runs_can_be_named_by_glob(tmp_path):
    base = write_runs(tmp_path / "base", [1.0, 1.01, 0.99], seed=10)
    head = write_runs(tmp_path / "head", [1.0, 0.99], seed=20)
    assert main([str(base / "run-*.json"), str(head / "run-[01].json"), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    assert len(document["base"]) == 3 and len(document["head"]) == 2 and "3 degrees of freedom" in document["model"]


@pytest.mark.parametrize(
    ("base_scales", "head_scales", "message"),
    [
        ([1.0, 1.0, 1.0], [1.0], "BASE names 3 run(s) and HEAD 1: give one run per side, or at least two per side"),
        ([1.0], [1.0, 1.0], "BASE names 1 run(s) and HEAD 2"),
    ],
)
def test_one_run_against_several_is_refused(tmp_path, capsys, base_scales, head_scales, message):
    """A lone run's own drift cannot be told from a change, whatever the other side shows."""
    base = write_runs(tmp_path / "base", base_scales, seed=10)
    head = write_runs(tmp_path / "head", head_scales, seed=20)
    assert main([str(base), str(head)]) == 2
    assert message in capsys.readouterr().err


def test_the_same_run_on_both_sides_is_refused(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs", [1.0, 1.0, 1.0], seed=10)
    assert main([str(runs / "run-[01].json"), str(runs / "run-[12].json")]) == 2
    err = capsys.readouterr().err
    assert "names the same run as BASE" in err and "run-1.json" in err and "run-0.json" not in err


def test_a_run_from_another_machine_among_several_is_refused_by_name(tmp_path, capsys):
    base = write_runs(tmp_path / "base", [1.0, 1.0], seed=10)
    write_run(base / "run-2.json", grid(), seed=12, machine=other_machine(cpu={"count": 8}))
    head = write_runs(tmp_path / "head", [1.0, 1.0], seed=20)
    assert main([str(base), str(head)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"python -m reports compare: error: {base / 'run-2.json'}: not the machine of {base / 'run-0.json'}"
    )
    assert "cpu.count: 4 != 8" in err


def test_cells_missing_from_some_runs_are_noted_not_compared(tmp_path):
    base = write_runs(tmp_path / "base", [1.0, 1.0], seed=10)
    write_run(base / "run-2.json", {key: value for key, value in grid().items() if key[2] == 10}, seed=12)
    head = write_runs(tmp_path / "head", [1.0, 1.0], seed=20)
    assert main([str(base), str(head), "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    assert len(document["cells"]) == 3
    assert document["not_compared"] == [
        "not in every base run: read_many disk n=100 32x32x3, read_many hdf5 n=100 32x32x3, "
        "read_many lmdb n=100 32x32x3"
    ]


# --- --normalise floor ----------------------------------------------------------------------

FLOOR_OF = {"disk": "files-read+png-decode", "lmdb": "file-read", "hdf5": "file-read"}


def floor_grid(machine: float = 1.0, **slower: float) -> tuple[dict, dict]:
    """grid() plus the floor cells of its read_many cells, everything ``machine`` times slower; and the cells'
    floors."""
    seconds = grid(scale=machine, **slower)
    floors = {"file-read": 1e-4, "files-read": 5e-4, "png-decode": 1e-3}
    for cutoff in (10, 100):
        seconds.update(
            {("floor", f"floor-{name}", cutoff): machine * value * cutoff / 10 for name, value in floors.items()}
        )
    extra = {key: {"floor": FLOOR_OF[key[1]], "floor_n_images": key[2]} for key in seconds if key[0] == "read_many"}
    return seconds, extra


def test_floor_normalisation_cancels_a_slower_machine(tmp_path, capsys):
    """HEAD's whole machine is 1.3x slower, cells and floors alike: absolute times say slower, ratios to floors do
    not."""
    seconds, extra = floor_grid()
    base = write_run(tmp_path / "base.json", seconds, seed=1, extra_info=extra)
    head = write_run(tmp_path / "head.json", floor_grid(machine=1.3)[0], seed=2, extra_info=extra)
    assert main([str(base), str(head)]) == 1
    assert main([str(base), str(head), "--normalise", "floor", "--out", str(tmp_path / "out")]) == 0
    assert "ratios to each cell's floor within each run (--normalise floor)" in capsys.readouterr().out
    document = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert document["mode"] == "floor" and document["summary"]["slower"] == 0
    assert {cell["method"] for cell in document["cells"]} == {"disk", "lmdb", "hdf5"}  # floor cells are not compared
    disk = next(cell for cell in document["cells"] if (cell["method"], cell["n_images"]) == ("disk", 100))
    assert disk["base"] == pytest.approx(2e-2 / (5e-3 + 1e-2), rel=0.05) and disk["ratio"] == pytest.approx(
        1.0, abs=0.05
    )


def test_floor_normalisation_finds_a_slowdown_of_one_method(tmp_path):
    seconds, extra = floor_grid()
    slowed, _ = floor_grid(lmdb=1.3)
    base = write_run(tmp_path / "base.json", seconds, seed=1, extra_info=extra)
    head = write_run(tmp_path / "head.json", slowed, seed=2, extra_info=extra)
    assert main([str(base), str(head), "--normalise", "floor", "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {cell["method"] for cell in cells if cell["verdict"] == "slower"} == {"lmdb"}


def test_floor_normalisation_with_several_runs_per_side(tmp_path):
    for side, seed, machines in (("base", 10, [1.0, 1.1, 0.95]), ("head", 20, [1.2, 0.9, 1.05])):
        (tmp_path / side).mkdir()
        for index, machine in enumerate(machines):
            seconds, extra = floor_grid(machine=machine, **({"hdf5": 1.3} if side == "head" else {}))
            write_run(tmp_path / side / f"run-{index}.json", seconds, seed=seed + index, extra_info=extra)
    assert main([str(tmp_path / "base"), str(tmp_path / "head"), "--normalise", "floor", "--out", str(tmp_path)]) == 1
    cells = json.loads((tmp_path / "compare.json").read_text())["cells"]
    assert {cell["method"] for cell in cells if cell["verdict"] == "slower"} == {"hdf5"}
    assert main([str(tmp_path / "base"), str(tmp_path / "head"), "--out", str(tmp_path)]) == 0  # the drift hides it


def test_cells_without_their_floor_are_noted(tmp_path):
    seconds, extra = floor_grid()
    base = write_run(tmp_path / "base.json", seconds, seed=1, extra_info=extra)
    without = {key: value for key, value in seconds.items() if key[1] != "floor-png-decode"}
    head = write_run(tmp_path / "head.json", without, seed=2, extra_info=extra)
    assert main([str(base), str(head), "--normalise", "floor", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    assert {cell["method"] for cell in document["cells"]} == {"lmdb", "hdf5"}
    assert any(
        note.startswith("not compared, no floor in all runs: read_many disk n=10") for note in document["not_compared"]
    )

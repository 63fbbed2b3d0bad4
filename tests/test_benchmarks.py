"""The benchmark suite itself, run in a subprocess at tiny cutoffs: options, verification, JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_suite(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real run of the whole grid at cutoffs 10 and 20, saved as JSON."""
    directory = tmp_path_factory.mktemp("run")
    result = run_suite("--cutoffs", "10,20", "--benchmark-json", str(directory / "run.json"),
                       "--benchmark-max-time", "0.01", "--storage-dir", str(directory / "stores"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((directory / "stores").iterdir()) == []  # the run folder is removed at the end
    return json.loads((directory / "run.json").read_text())


def test_every_cell_runs_with_params_and_extra_info(tiny_run):
    cells = {bench["name"]: bench for bench in tiny_run["benchmarks"]}
    expected = {f"test_{operation}[{method}-{cutoff}]" for method in ("disk", "lmdb", "hdf5")
                for operation, cutoffs in (("store_single", (1,)), ("read_single", (1,)),
                                           ("store_many", (10, 20)), ("read_many", (10, 20)),
                                           ("store_single_into", (10, 20)))
                for cutoff in cutoffs}
    assert set(cells) == expected
    into = cells["test_store_single_into[disk-20]"]
    assert into["extra_info"]["images_per_round"] == 2
    assert into["extra_info"]["images_per_s"] == pytest.approx(2 / into["stats"]["median"])
    store = cells["test_store_many[lmdb-20]"]
    assert store["params"] == {"method": "lmdb", "cutoff": 20}
    info = store["extra_info"]
    assert info["suite"] == "image-storage" and info["operation"] == "store_many" and info["method"] == "lmdb"
    assert info["n_images"] == 20 and info["image_shape"] == [32, 32, 3] and info["raw_bytes"] == 20 * 3072
    assert info["durable"] is False and info["dataset"] == "synthetic"
    assert info["disk_usage"]["allocated_bytes"] > 0 and info["disk_usage"]["apparent_bytes"] > 0
    assert info["images_per_s"] == pytest.approx(20 / store["stats"]["median"])
    assert info["mb_per_s"] == pytest.approx(20 * 3072 / 1e6 / store["stats"]["median"])
    for bench in tiny_run["benchmarks"]:
        assert bench["stats"]["rounds"] >= 10 and len(bench["stats"]["data"]) == bench["stats"]["rounds"]
        assert ("disk_usage" in bench["extra_info"]) == bench["extra_info"]["operation"].startswith("store")


def test_machine_info_explains_storage_numbers(tiny_run):
    machine = tiny_run["machine_info"]
    assert machine["storage"]["filesystem"] and machine["storage"]["free_bytes"] > 0
    assert set(machine["libraries"]) >= {"numpy", "Pillow", "h5py", "hdf5", "lmdb", "lmdb_library", "matplotlib"}


def test_a_broken_read_fails_its_cell():
    result = run_suite("--cutoffs", "10", "--methods", "hdf5", "-k", "read", "-p", "tests.broken_reads",
                       "--benchmark-disable")
    assert result.returncode == 1
    assert "hdf5 read_many: 10 of 10 images differ from what was stored" in result.stdout
    assert "hdf5 read_single: 1 of 1 images differ" in result.stdout


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--cutoffs", "10,ten"], {}, "'ten' is not a positive whole number"),
    (["--methods", "disk,zarr"], {}, "unknown method 'zarr'"),
    (["--dataset", "imagenet"], {}, "'imagenet' is not a dataset"),
    (["--dataset", "cifar10:/no/such/folder"], {}, "does not exist"),
    (["--image-shape", "32x32x2"], {}, "'32x32x2' is not an image shape"),
    ([], {"IMAGE_BENCH_CUTOFFS": "0"}, "'0' is not a positive whole number"),
    (["--cutoffs", "10000000000"], {}, "lower --cutoffs"),
    (["-n", "2"], {}, "must not run under pytest-xdist"),
])
def test_bad_options_are_usage_errors(args, env, message):
    result = run_suite(*args, "--collect-only", env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_options_are_documented_in_help():
    result = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=REPO, capture_output=True, text=True)
    for option in ("--cutoffs", "--methods", "--dataset", "--image-shape", "--storage-dir", "--durable", "IMAGE_BENCH_CUTOFFS"):
        assert option in result.stdout


def test_plain_pytest_collects_only_the_tests():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True)
    assert "benchmarks/" not in result.stdout and "tests/test_storage.py" in result.stdout


def test_durable_and_cifar_runs(tmp_path):
    from tests.test_datasets import write_cifar_batches

    write_cifar_batches(tmp_path / "cifar", per_batch=3)
    result = run_suite("--cutoffs", "10", "--methods", "disk,lmdb", "--durable", "--dataset", f"cifar10:{tmp_path / 'cifar'}",
                       "--benchmark-json", str(tmp_path / "run.json"), "--benchmark-max-time", "0.01")
    assert result.returncode == 0, result.stdout + result.stderr
    cells = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    assert {cell["extra_info"]["dataset"] for cell in cells} == {"cifar10"}
    assert all(cell["extra_info"]["durable"] for cell in cells)

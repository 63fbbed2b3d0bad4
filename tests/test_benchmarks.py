"""The benchmark suite itself, run in a subprocess at tiny cutoffs: options, verification, JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.codec_reference import NoReferenceError, psnr_floor_db, reference_images
from benchmarks.floors import floor_names, floors_of_cell
from benchmarks.verify import verify, verify_images

REPO = Path(__file__).resolve().parent.parent


def run_suite(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


ONE_RUN = pytest.mark.xdist_group("tiny_run")  # its tests share one worker, so the run is made once


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real run of the whole grid at cutoffs 10 and 20, saved as JSON."""
    directory = tmp_path_factory.mktemp("run")
    result = run_suite(
        "--cutoffs",
        "10,20",
        "--benchmark-json",
        str(directory / "run.json"),
        "--benchmark-max-time",
        "0.01",
        "--storage-dir",
        str(directory / "stores"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((directory / "stores").iterdir()) == []  # the run folder is removed at the end
    return json.loads((directory / "run.json").read_text())


@ONE_RUN
def test_every_cell_runs_with_params_and_extra_info(tiny_run):
    cells = {bench["name"]: bench for bench in tiny_run["benchmarks"]}
    expected = {
        f"test_{operation}[{method}-{cutoff}]"
        for method in ("disk", "lmdb", "hdf5")
        for operation, cutoffs in (
            ("store_single", (1,)),
            ("read_single", (10, 20)),
            ("store_many", (10, 20)),
            ("read_many", (10, 20)),
            ("store_single_into", (10, 20)),
        )
        for cutoff in cutoffs
    }
    assert expected <= set(cells)
    into = cells["test_store_single_into[disk-20]"]
    assert into["extra_info"]["images_per_round"] == 2
    amortised = into["extra_info"]  # images/s counts the images written, at their cost amortised over two folds
    assert amortised["images_per_s"] == pytest.approx(1 / amortised["write_amortised_s"])
    # a journal folds past 256 records: two folds in 2 * 257 + 1 writes, the first from the filled store on
    assert (
        amortised["upkeep_cycles"] == 2
        and amortised["amortised_writes"] == 2 * amortised["upkeep_cycle"] + 1 == 2 * 257 + 1
    )
    assert amortised["write_p50_s"] <= amortised["write_p99_s"] <= amortised["write_max_s"]
    assert (
        amortised["writes_timed"] == 2 * (into["stats"]["rounds"] + 1) >= 2 * 257 + 1
    )  # the warm-up round's writes too
    read_one = cells["test_read_single[hdf5-20]"]["extra_info"]  # one image of a random id of a store of 20
    assert (read_one["n_images"], read_one["images_per_round"], read_one["floor_n_images"]) == (20, 1, 1)
    store = cells["test_store_many[lmdb-20]"]
    assert store["params"] == {"method": "lmdb", "cutoff": 20}
    info = store["extra_info"]
    assert info["suite"] == "image-storage" and info["operation"] == "store_many" and info["method"] == "lmdb"
    assert info["n_images"] == 20 and info["image_shape"] == [32, 32, 3] and info["raw_bytes"] == 20 * 3072
    assert info["durable"] is False and info["dataset"] == "synthetic" and info["dtype"] == "uint8"
    assert info["disk_usage"]["allocated_bytes"] > 0 and info["disk_usage"]["apparent_bytes"] > 0
    assert info["images_per_s"] == pytest.approx(20 / store["stats"]["median"])
    assert info["mb_per_s"] == pytest.approx(20 * 3072 / 1e6 / store["stats"]["median"])
    for bench in tiny_run["benchmarks"]:
        least = 5 if bench["name"].startswith("test_floor_") else 10  # floors of a second or more get 5 rounds
        assert bench["stats"]["rounds"] >= least and len(bench["stats"]["data"]) == bench["stats"]["rounds"]
        assert ("disk_usage" in bench["extra_info"]) == bench["extra_info"]["operation"].startswith("store")


@ONE_RUN
def test_floors_run_beside_their_cells(tiny_run):
    """Exactly the floor cells the method cells need ran, verified like cells, and every method cell has its ratio."""
    floors = {
        (
            bench["extra_info"]["method"].removeprefix("floor-"),
            bench["extra_info"]["n_images"],
            bench["extra_info"].get("batch_size"),
        )
        for bench in tiny_run["benchmarks"]
        if bench["name"].startswith("test_floor_")
    }
    methods = [bench for bench in tiny_run["benchmarks"] if not bench["name"].startswith("test_floor_")]
    assert floors == set().union(
        *(
            floors_of_cell(bench["extra_info"]["method"], bench["extra_info"]["operation"], bench["params"])
            for bench in methods
        )
    )
    for bench in tiny_run["benchmarks"]:
        info = bench["extra_info"]
        if not floor_names(info["method"], info["operation"]):
            assert "floor" not in info  # memcpy, and I/O floors on PNG bytes (fewer bytes than memcpy's pixels)
            continue
        floors = [
            floor
            for floor in tiny_run["benchmarks"]
            if floor["extra_info"]["method"] in {f"floor-{name}" for name in info["floor"].split("+")}
            and floor["extra_info"]["n_images"] == info["floor_n_images"]
            and floor["extra_info"].get("batch_size") in (None, info.get("batch_size"))
        ]
        assert len(floors) == len(info["floor"].split("+"))
        # the floor's rounds also ran interleaved with the cell's (benchmarks/interleave.py)
        interleaved = info["floor_interleaved"]
        assert (
            0 < interleaved["rounds"] <= min(bench["stats"]["rounds"], 30)
            and interleaved["q1"] <= interleaved["median"]
        )
        floor = min(interleaved["median"], sum(floor["stats"]["median"] for floor in floors))  # the faster timing of it
        assert info["floor_ratio"] == pytest.approx(bench["stats"]["median"] / (floor / info.get("workers", 1)))
    disk = cells_named(tiny_run, "test_read_many[disk-20]")["extra_info"]
    assert disk["floor"] == "png-files-read+png-decode" and disk["floor_n_images"] == 20
    assert cells_named(tiny_run, "test_store_single[lmdb-1]")["extra_info"]["floor"] == "file-write"


def cells_named(run: dict, name: str) -> dict:
    return next(bench for bench in run["benchmarks"] if bench["name"] == name)


@ONE_RUN
def test_every_cell_records_what_it_cost(tiny_run):
    for bench in tiny_run["benchmarks"]:
        info = bench["extra_info"]
        assert info["cpu_s"] > 0 and info["cpu_s"] == pytest.approx(info["cpu_user_s"] + info["cpu_system_s"])
        assert info["peak_rss_increase_bytes"] >= 0
        assert info["device_read_bytes"] >= 0 and info["device_write_bytes"] >= 0
    # a store dirties at least the pixel bytes it stores, which Linux counts as bytes to write to the device
    assert cells_named(tiny_run, "test_store_many[lmdb-20]")["extra_info"]["device_write_bytes"] >= 20 * 3072
    assert cells_named(tiny_run, "test_floor_file_write[raw-20]")["extra_info"]["device_write_bytes"] >= 20 * 3072


def test_a_long_cell_reports_its_rounds_and_the_time_left():
    result = run_suite(
        "--cutoffs", "10", "--methods", "hdf5", "-k", "read", "-p", "tests.slow_rounds", "--benchmark-max-time", "0.01"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [
        line for line in result.stdout.splitlines() if line.startswith("image-storage: test_read_many[hdf5-10]: round")
    ]
    assert lines[0].startswith("image-storage: test_read_many[hdf5-10]: round 1 of 10, 0 s elapsed, about 1 s left")
    assert len(lines) == 10 and lines[-1].startswith("image-storage: test_read_many[hdf5-10]: round 10 of 10")
    assert "cells done" in result.stdout and " to go: about " in result.stdout


def test_a_cell_beating_its_floor_is_flagged_at_the_end_and_fails_a_strict_run():
    args = (
        "--cutoffs",
        "10",
        "--methods",
        "npy-files",
        "-k",
        "read_many",
        "-p",
        "tests.slow_floor",
        "--benchmark-max-time",
        "0.01",
    )
    result = run_suite(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.split("implausible cells (faster than their floor)")[1]
    assert "read_many npy-files n=10" in summary and "faster than its floor files-read" in summary
    strict = run_suite(*args, "--strict-floors")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "FAILED read_many npy-files n=10" in strict.stdout.split("FAILED (--strict-floors): implausible cells")[1]


def collected(*args: str, path: str = "benchmarks") -> list[str]:
    """The ids that would run, in order, at cutoffs 10 and 100."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            path,
            "-p",
            "no:cacheprovider",
            "--cutoffs",
            "10,100",
            "--collect-only",
            "-q",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return [line.split("::")[1] for line in result.stdout.splitlines() if "::" in line]


def test_floor_cells_follow_the_cells_they_bound():
    """-k selects method cells; exactly their floors run, each just before its first cell; floors alone on request."""
    assert collected("--methods", "hdf5", "-k", "read_many") == [
        "test_floor_memcpy[10]",
        "test_floor_mapped_copy[raw-10]",
        "test_read_many[hdf5-10]",
        "test_floor_memcpy[100]",
        "test_floor_mapped_copy[raw-100]",
        "test_read_many[hdf5-100]",
    ]
    names = collected("-k", "not read_many and not read_single and not read_random")
    assert not any(
        name.startswith(("test_floor_file_read", "test_floor_decode", "test_floor_gather")) for name in names
    )
    assert names.index("test_floor_encode[png-1]") < names.index("test_store_single[disk-1]")
    floors = collected(path="benchmarks/test_floors.py")  # at 1, 2 (store_single_into's two writes), 10 and 100 images
    assert len(floors) == 4 * (1 + 7 * 2 + 2) and not any(
        "cold" in name for name in floors
    )  # memcpy, I/O raw and png, codec
    assert sum("cold" in name for name in collected("--cache", "warm,cold", path="benchmarks/test_floors.py")) == 4 * 2


@ONE_RUN
def test_machine_info_explains_storage_numbers(tiny_run):
    machine = tiny_run["machine_info"]
    assert machine["storage"]["filesystem"] and machine["storage"]["free_bytes"] > 0
    assert set(machine["libraries"]) >= {"numpy", "Pillow", "h5py", "hdf5", "lmdb", "lmdb_library", "matplotlib"}


def test_verify_compares_bit_for_bit():
    """A NaN read back equals the NaN stored; -0.0 for 0.0, another NaN payload or another dtype is a difference."""
    stored = np.array([[[np.nan, -0.0], [1.5, 2.0]], [[0.25, np.inf], [-1.0, 3.0]]], np.float32)
    labels = np.array([4, 7])
    verify("m read_many", stored.copy(), labels.copy(), stored, labels)
    verify_images("m read_many", np.asfortranarray(stored), stored)  # any memory layout
    signed_zero, other_nan = stored.copy(), stored.copy()
    signed_zero[0, 0, 1] = 0.0
    other_nan.view(np.uint32)[0, 0, 0] ^= 1
    for read in (signed_zero, other_nan):
        with pytest.raises(pytest.fail.Exception, match="m read_many: 1 of 2 images differ from what was stored"):
            verify_images("m read_many", read, stored)
    with pytest.raises(
        pytest.fail.Exception, match=r"m read_many returned float64 \(2, 2, 2\), stored float32 \(2, 2, 2\)"
    ):
        verify_images("m read_many", stored.astype(np.float64), stored)
    with pytest.raises(pytest.fail.Exception, match="m read_many: labels differ"):
        verify("m read_many", stored, labels[::-1], stored, labels)


def test_a_broken_read_fails_its_cell():
    result = run_suite(
        "--cutoffs", "10", "--methods", "hdf5", "-k", "read", "-p", "tests.broken_reads", "--benchmark-disable"
    )
    assert result.returncode == 1
    assert "hdf5 read_many: 10 of 10 images differ from what was stored" in result.stdout
    assert "hdf5 read_single: 1 of 1 images differ" in result.stdout and "test_read_single[hdf5-10]" in result.stdout


def test_lossy_codecs_verify_against_pillow_and_record_psnr(tmp_path):
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "disk:codec=jpeg-90,disk:codec=webp-lossless",
        "-k",
        "many",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = {cell["name"]: cell["extra_info"] for cell in json.loads((tmp_path / "run.json").read_text())["benchmarks"]}
    jpeg, webp = cells["test_read_many[disk:codec=jpeg-90-10]"], cells["test_read_many[disk:codec=webp-lossless-10]"]
    assert jpeg["codec"] == "jpeg-90" and 28 <= jpeg["psnr_db"] < 60 and jpeg["psnr_floor_db"] == 28
    assert webp["codec"] == "webp-lossless" and "psnr_db" not in webp and "psnr_floor_db" not in webp


def test_a_codec_returning_other_pixels_fails_its_cell():
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "disk:codec=jpeg-90",
        "-k",
        "read_many",
        "-p",
        "tests.broken_codec",
        "--benchmark-disable",
    )
    assert result.returncode == 1
    assert re.search(r"disk:codec=jpeg-90 read_many: \d+ of 10 images differ from what was stored", result.stdout), (
        result.stdout
    )


def test_a_decoder_returning_zeros_fails_every_lossy_cell_and_codec_floor(tmp_path):
    """The reference is Pillow's, not the store's codec module: zeros from every lossy decode (tests/zeroing_codec.py,
    imported by every process, read_random's workers too) fail each cell and floor of that codec on its PSNR floor."""
    (tmp_path / "sitecustomize.py").write_text("import tests.zeroing_codec\n")
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "disk:codec=jpeg-90,lmdb:codec=webp-90",
        "--workers",
        "1",
        "--batch-sizes",
        "8",
        "--benchmark-disable",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    failed = set(re.findall(r"^FAILED \S+::(\S+)", result.stdout, re.MULTILINE))
    lossy = {
        f"{test}[{method}-{count}]"
        for method in ("disk:codec=jpeg-90", "lmdb:codec=webp-90")
        for test, count in (
            ("test_store_single", 1),
            ("test_read_single", 10),
            ("test_store_many", 10),
            ("test_read_many", 10),
            ("test_store_single_into", 10),
        )
    }
    lossy |= {f"test_read_random[{method}-10-b8-w1-warm]" for method in ("disk:codec=jpeg-90", "lmdb:codec=webp-90")}
    floors = {  # encode also at 2: the floor of store_single_into, two writes a round
        f"test_floor_{step}[{codec}-{count}]"
        for step, counts in (("encode", (1, 2, 10)), ("decode", (1, 10)))
        for codec in ("jpeg-90", "webp-90")
        for count in counts
    }
    assert failed == lossy | floors, result.stdout
    assert (
        "disk:codec=jpeg-90 read_many: PSNR 5.7 dB against the source images, below jpeg-90's floor of 28 dB"
        in result.stdout
    )


def test_the_pillow_reference_is_what_the_stores_codecs_give_and_meets_its_floor():
    """Pillow alone and storage_impls.core.codecs agree pixel for pixel on the suite's data; every lossy spec reaches
    its PSNR floor there, image by image, and zeros do not."""
    from storage_impls.core.codecs import get_codec, psnr_db
    from storage_impls.datasets import synthetic

    for shape in ((32, 32, 3), (28, 28), (16, 16, 4)):
        images, _ = synthetic(40, shape, seed=0)
        for spec in ("jpeg-1", "jpeg-25", "jpeg-50", "jpeg-90", "jpeg-100", "webp-1", "webp-50", "webp-90"):
            codec = get_codec(spec)
            if codec.limit(images.dtype, shape):
                continue
            reference, ours = reference_images(spec, images), np.empty_like(images)
            for image, target in zip(images, ours):
                codec.decode_into(codec.encode(image), target)
            assert np.array_equal(reference, ours), (spec, shape)
            least = min(psnr_db(image, back) for image, back in zip(images, reference))
            assert least >= psnr_floor_db(spec), (spec, shape)
            assert psnr_db(images, np.zeros_like(images)) < psnr_floor_db(spec)
    assert reference_images("png", images) is images and psnr_floor_db("webp-lossless") is None
    qualities = (100, 90, 89, 50, 49, 25, 24, 1)
    assert [psnr_floor_db(f"jpeg-{quality}") for quality in qualities] == [28, 28, 23, 23, 21, 21, 13, 13]
    with pytest.raises(NoReferenceError, match="no independent reference for codec 'avif-50'"):
        psnr_floor_db("avif-50")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--cutoffs", "10,ten"], {}, "'ten' is not a positive whole number"),
        (["--methods", "disk,tiff"], {}, "unknown storage method 'tiff'"),
        (["--methods", "hdf5:chunk=1"], {}, "hdf5: unknown option 'chunk'"),
        (["--methods", "npz:"], {}, "'' is not key=value"),
        (["--dataset", "imagenet"], {}, "'imagenet' is not a dataset"),
        (["--dataset", "cifar10:/no/such/folder"], {}, "does not exist"),
        (["--image-shape", "32x32x3x1"], {}, "'32x32x3x1' is not an image shape"),
        (["--image-shape", "32x0"], {}, "'32x0' is not an image shape"),
        (["--dtype", "bool"], {}, "'bool' is not an image dtype: use one of uint8, uint16"),
        ([], {"IMAGE_BENCH_DTYPE": "complex64"}, "'complex64' is not an image dtype"),
        (["--dataset", "mnist:/no/such/folder"], {}, "MNIST folder '/no/such/folder' does not exist"),
        (["--dataset", "folder:/no/such/folder"], {}, "image folder '/no/such/folder' does not exist"),
        (
            ["--dataset", "mnist:tests"],
            {},
            "--dataset mnist:tests: MNIST directory tests lacks train-images-idx3-ubyte",
        ),
        (
            ["--dataset", "mnist:tests", "--image-shape", "32x32"],
            {},
            "--image-shape applies to synthetic data only: MNIST images are 28x28",
        ),
        (
            ["--dataset", "cifar10:tests", "--dtype", "float32"],
            {},
            "--dtype applies to synthetic data only: CIFAR-10 images are uint8",
        ),
        ([], {"IMAGE_BENCH_CUTOFFS": "0"}, "'0' is not a positive whole number"),
        (["--cutoffs", "10000000000"], {}, "lower --cutoffs"),
        (["-n", "2"], {}, "must not run under pytest-xdist"),
    ],
)
def test_bad_options_are_usage_errors(args, env, message):
    result = run_suite(*args, "--collect-only", env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_methods_take_variants_whose_options_may_contain_commas():
    result = run_suite(
        "--methods", "lmdb, rocksdb:compression=zstd,bloom_bits=10", "--collect-only", "-q", "-k", "read_single"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_read_single[lmdb-10]" in result.stdout
    assert "test_read_single[rocksdb:compression=zstd,bloom_bits=10-10]" in result.stdout


def test_options_are_documented_in_help():
    result = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=REPO, capture_output=True, text=True)
    for option in (
        "--cutoffs",
        "--methods",
        "--dataset",
        "mnist:PATH",
        "folder:PATH",
        "--image-shape",
        "3x128x128",
        "--dtype",
        "float32",
        "--storage-dir",
        "--durable",
        "IMAGE_BENCH_CUTOFFS",
        "IMAGE_BENCH_DTYPE",
        "--object-store",
        "--network",
        "rtt=20ms,rate=1gbit",
        "--remote-cutoffs",
        "--remote-workers",
        "--shuffle-buffer",
    ):
        assert option in result.stdout


def test_plain_pytest_collects_only_the_tests():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert "benchmarks/" not in result.stdout and "tests/test_storage.py" in result.stdout


def test_durable_and_cifar_runs(tmp_path):
    from tests.test_datasets import write_cifar_batches

    write_cifar_batches(tmp_path / "cifar", per_batch=3)
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "disk,lmdb",
        "--durable",
        "--dataset",
        f"cifar10:{tmp_path / 'cifar'}",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    assert {cell["extra_info"]["dataset"] for cell in cells} == {"cifar10"}
    assert all(cell["extra_info"]["durable"] for cell in cells)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--dtype", "float32", "--image-shape", "3x128x128"], {}),
        (["--image-shape", "28x28"], {"IMAGE_BENCH_DTYPE": "uint16"}),
        (["--image-shape", "64x64x13", "--dtype", "int16"], {}),
    ],
)
def test_any_dtype_and_image_shape_are_accepted(args, env):
    result = run_suite(*args, "--collect-only", "-q", "-k", "read_single", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_memory_check_counts_the_dtype():
    """Images that fit in memory as uint8 are refused as float64, eight times their size."""
    from benchmarks.machine import available_memory

    count = int(0.8 * available_memory() / (2 * 3072 * 4))  # a quarter of the budget as uint8, twice it as float64
    for dtype, code in (("uint8", 0), ("float64", 4)):
        result = run_suite("--cutoffs", str(count), "--dtype", dtype, "--collect-only", "-q", "-k", "read_single")
        assert result.returncode == code, result.stdout + result.stderr
    assert f"--cutoffs {count} of 32x32x3 float64 images need" in result.stderr and "lower --cutoffs" in result.stderr


def test_mnist_runs_at_its_own_shape(tmp_path):
    from tests.test_datasets import write_mnist

    write_mnist(tmp_path / "mnist", train=8, test=4, gz=True)
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "lmdb,hdf5",
        "--dataset",
        f"mnist:{tmp_path / 'mnist'}",
        "-k",
        "not read_random",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    assert {
        (cell["extra_info"]["dataset"], cell["extra_info"]["dtype"], tuple(cell["extra_info"]["image_shape"]))
        for cell in cells
    } == {("mnist", "uint8", (28, 28))}
    too_many = run_suite("--cutoffs", "13", "--dataset", f"mnist:{tmp_path / 'mnist'}", "--collect-only")
    assert (
        too_many.returncode == 4
        and f"--cutoffs 13 exceeds the 12 MNIST images in {tmp_path / 'mnist'}" in too_many.stderr
    )


def test_an_image_folder_runs_with_its_class_table_and_skipped_file(tmp_path):
    from tests.test_datasets import write_image_folder

    write_image_folder(tmp_path / "pets")
    result = run_suite(
        "--dataset",
        f"folder:{tmp_path / 'pets'}",
        "--image-shape",
        "16x16x3",
        "--cutoffs",
        "5",
        "--methods",
        "hdf5",
        "-k",
        "read_many",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipped unreadable {tmp_path / 'pets' / 'cat' / 'c_broken.jpg'}: " in result.stdout
    assert "1 unreadable files skipped" in result.stdout
    assert f"5 images of 16x16x3 from {tmp_path / 'pets'}, labels of its 2 classes: 0 cat, 1 dog" in result.stdout
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["machine_info"]["dataset"] == {
        "name": "folder",
        "path": str(tmp_path / "pets"),
        "classes": {"cat": 0, "dog": 1},
        "skipped": ["cat/c_broken.jpg"],
    }
    cells = [cell for cell in run["benchmarks"] if cell["name"] == "test_read_many[hdf5-5]"]
    assert [(cell["extra_info"]["dataset"], cell["extra_info"]["image_shape"]) for cell in cells] == [
        ("folder", [16, 16, 3])
    ]
    too_few = run_suite(
        "--dataset",
        f"folder:{tmp_path / 'pets'}",
        "--image-shape",
        "16x16x3",
        "--cutoffs",
        "7",
        "--methods",
        "hdf5",
        "-k",
        "read_many",
    )
    assert too_few.returncode == 4, too_few.stdout + too_few.stderr
    assert f"--cutoffs 7 exceeds the 6 readable images in {tmp_path / 'pets'}" in too_few.stdout + too_few.stderr


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("empty", [], "--dataset folder:{path}: no images in {path}: expected one sub-folder per class"),
        (
            "mixed",
            [],
            "images of different sizes: {path}/cat/a_wide.png is 32x96, {path}/cat/b_grey.png is 32x32: "
            "pass --image-shape (HxW, HxWx3 or HxWx4)",
        ),
        ("mixed", ["--cutoffs", "8", "--image-shape", "16x16"], "--cutoffs 8 exceeds the 7 images in {path}"),
        ("mixed", ["--dtype", "float32"], "--dtype applies to synthetic data only: folder images are uint8"),
        ("mixed", ["--image-shape", "16x16x2"], "HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), not 16x16x2"),
    ],
)
def test_bad_image_folders_are_usage_errors(tmp_path, content, args, message):
    from tests.test_datasets import write_image_folder

    path = tmp_path / "pets"
    path.mkdir()
    if content == "mixed":
        write_image_folder(path)
    result = run_suite("--dataset", f"folder:{path}", "--cutoffs", "5", *args, "--collect-only")
    assert result.returncode == 4, result.stdout + result.stderr
    assert message.format(path=path) in result.stderr and "Traceback" not in result.stderr


def test_float32_chips_run_and_verify_bit_for_bit(tmp_path):
    """The write-up's layout, channel-first float32, through the methods that store raw bytes; PNG cannot hold it:
    disk's cells are skipped saying so."""
    result = run_suite(
        "--cutoffs",
        "10",
        "--methods",
        "hdf5,npy-memmap,disk",
        "--dtype",
        "float32",
        "--image-shape",
        "3x8x8",
        "--benchmark-json",
        str(tmp_path / "run.json"),
        "--benchmark-max-time",
        "0.01",
        "-rs",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "disk cannot store these images: PNG holds uint8 or uint16 images, not float32" in result.stdout
    cells = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    store = cells_named({"benchmarks": cells}, "test_store_many[hdf5-10]")["extra_info"]
    assert (
        store["dtype"] == "float32" and store["image_shape"] == [3, 8, 8] and store["raw_bytes"] == 10 * 3 * 8 * 8 * 4
    )
    assert {cell["extra_info"]["dtype"] for cell in cells} == {"float32"}
    assert not [cell for cell in cells if cell["extra_info"].get("method") == "disk"]


def test_long_cells_get_fewer_rounds_unless_min_rounds_is_given(tmp_path):
    def rounds(*args: str) -> set[int]:
        result = run_suite(
            "--cutoffs",
            "10",
            "--methods",
            "hdf5",
            "-k",
            "read_many",
            "-p",
            "tests.long_rounds",
            "--benchmark-max-time",
            "0.000001",
            "--benchmark-json",
            str(tmp_path / "run.json"),
            *args,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        run = json.loads((tmp_path / "run.json").read_text())
        return {bench["stats"]["rounds"] for bench in run["benchmarks"] if bench["name"].startswith("test_read_many")}

    assert rounds() == {5}
    assert rounds("--benchmark-min-rounds", "7") == {7}


def test_the_tutorial_grid_is_one_word_and_not_the_default():
    tutorial = run_suite("--cutoffs", "tutorial", "--methods", "hdf5", "--collect-only", "-q", "-k", "read_many")
    assert "test_read_many[hdf5-100000]" in tutorial.stdout, tutorial.stdout + tutorial.stderr
    default = run_suite("--methods", "hdf5", "--collect-only", "-q", "-k", "read_many")
    assert "test_read_many[hdf5-10000]" in default.stdout and "hdf5-100000" not in default.stdout

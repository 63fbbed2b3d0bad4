"""The training-read cells: the reader pool (benchmarks/workers.py), the cold cache (benchmarks/cache.py), and
test_read_random run in a subprocess at tiny cutoffs with workers 1,2 and cache warm,cold (limited: in a memory
cgroup, where one can be made).

Reads are broken inside the spawned workers through a ``sitecustomize`` module on PYTHONPATH, which every new
Python process runs at start-up: READ_RANDOM_BREAK=zeros, fail or hang changes what hdf5's read_batch does,
twice makes every worker read every batch.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cache as page_cache
from benchmarks import memlimit
from benchmarks.workers import EpochPlan, ReaderPool, WorkerError, latency_summary
from storage_impls import METHODS
from storage_impls.datasets import synthetic
from storage_impls.methods.hdf5.store import Hdf5Store
from tests.test_benchmarks import REPO, run_suite

SHAPE = (8, 8, 3)
COUNT = 30
SITECUSTOMIZE = """
import os
import time

kind = os.environ.get("READ_RANDOM_BREAK")
if kind == "twice":
    from benchmarks.workers import EpochPlan

    EpochPlan.share = lambda self, worker, workers: tuple(range(self.n_batches))
elif kind in ("zeros", "fail", "hang"):
    from storage_impls.methods.hdf5.store import Hdf5Store

    def broken(self, ids, out, labels):
        if kind == "fail":
            raise OSError("disk on fire")
        if kind == "hang":
            time.sleep(3600)
        out.fill(0)
        labels.fill(0)

    Hdf5Store._read_batch_into = broken
"""


@pytest.fixture(scope="module")
def breakage_path(tmp_path_factory) -> str:
    """A PYTHONPATH holding the sitecustomize above (and the repository, for benchmarks.workers)."""
    directory = tmp_path_factory.mktemp("sitecustomize")
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return os.pathsep.join([str(directory), str(REPO)])


@pytest.fixture
def break_reads(breakage_path, monkeypatch):
    """``break_reads(kind)``: worker processes started from now on break their reads that way."""

    def apply(kind: str) -> None:
        monkeypatch.setenv("PYTHONPATH", breakage_path)
        monkeypatch.setenv("READ_RANDOM_BREAK", kind)

    return apply


# -- the reader pool -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return synthetic(COUNT, SHAPE, seed=1)


@pytest.fixture(scope="module")
def hdf5_dir(data, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hdf5")
    with Hdf5Store(directory) as store:
        store.store_many(*data)
    return directory


def test_plan_deals_every_id_out_once():
    plan = EpochPlan.shuffled(COUNT, 8, seed=5)
    assert sorted(plan.permutation) == list(range(COUNT)) and list(plan.permutation) != list(range(COUNT))
    assert np.array_equal(plan.permutation, EpochPlan.shuffled(COUNT, 8, seed=5).permutation)  # seeded
    assert plan.n_batches == 4 and plan.positions(3) == slice(24, 30)
    shares = [plan.share(worker, 3) for worker in range(3)]
    assert sorted(batch for share in shares for batch in share) == [0, 1, 2, 3]
    assert np.array_equal(plan.reads_per_id(np.array([1, 1, 1, 1])), np.ones(COUNT))
    assert plan.reads_per_id(np.array([1, 2, 1, 0])).tolist().count(0) == 6  # the short last batch, unread


@pytest.mark.parametrize("workers", [1, 2, 5])  # 5 workers for 4 batches: one has nothing to do
def test_pool_reads_every_id_once_into_shared_memory(hdf5_dir, data, workers):
    plan = EpochPlan.shuffled(COUNT, 8, seed=0)
    with ReaderPool("hdf5", hdf5_dir, plan, SHAPE, workers) as pool:
        for _ in range(3):
            pool.prepare_round()
            pool.run_epoch()
        pool.close_stores()
        pool.open_stores()
        pool.prepare_round()
        pool.run_epoch()
        images, labels = pool.read_back()
        epochs = pool.epochs()
        name = pool._shm.name
        assert pool.startup_s > 0
    assert not Path("/dev/shm", name.lstrip("/")).exists()  # unlinked
    assert len(epochs) == 4 and all(epoch.exactly_once for epoch in epochs)
    np.testing.assert_array_equal(images, data[0])
    np.testing.assert_array_equal(labels, data[1])
    summary = latency_summary(epochs)
    assert 0 < summary["batch_p50_s"] <= summary["batch_p99_s"] <= summary["batch_max_s"]
    assert 0 < summary["first_batch_s"] < 60


def test_pool_clears_buffers_so_a_skipped_epoch_shows(hdf5_dir):
    plan = EpochPlan.shuffled(COUNT, 8, seed=0)
    with ReaderPool("hdf5", hdf5_dir, plan, SHAPE, 1) as pool:
        pool.prepare_round()
        pool.run_epoch()
        pool.prepare_round()  # a round prepared but never run leaves zeros, not the last epoch's images
        images, labels = pool.read_back()
    assert not images.any() and (labels == -1).all()


def test_pool_counts_a_batch_read_twice(hdf5_dir, monkeypatch):
    monkeypatch.setattr(EpochPlan, "share", lambda self, worker, workers: tuple(range(self.n_batches)))
    with ReaderPool("hdf5", hdf5_dir, EpochPlan.shuffled(COUNT, 8, seed=0), SHAPE, 2) as pool:
        pool.prepare_round()
        pool.run_epoch()
        (epoch,) = pool.epochs()
    assert not epoch.exactly_once and set(epoch.reads_per_id.tolist()) == {2}


def test_a_killed_worker_fails_the_epoch_with_its_exit_code(hdf5_dir):
    with ReaderPool("hdf5", hdf5_dir, EpochPlan.shuffled(COUNT, 8, seed=0), SHAPE, 2) as pool:
        victim = pool._processes[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        pool.prepare_round()
        with pytest.raises(WorkerError, match=r"worker 1 .* killed by SIGKILL \(exit code -9\)"):
            pool.run_epoch()
    assert not any(process.is_alive() for process in pool._processes)


def test_a_failing_read_fails_the_epoch_with_the_workers_traceback(hdf5_dir, break_reads):
    break_reads("fail")
    with ReaderPool("hdf5", hdf5_dir, EpochPlan.shuffled(COUNT, 8, seed=0), SHAPE, 2) as pool:
        pool.prepare_round()
        with pytest.raises(WorkerError, match=r"(?s)exited with code 1.*OSError: disk on fire"):
            pool.run_epoch()


def test_a_hanging_worker_times_out_and_is_killed(hdf5_dir, break_reads):
    break_reads("hang")
    with ReaderPool("hdf5", hdf5_dir, EpochPlan.shuffled(COUNT, 8, seed=0), SHAPE, 1, timeout=2) as pool:
        pool.prepare_round()
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"worker\(s\) \[0\] sent no 'done' and made no progress for 2 s"):
            pool.run_epoch()
        assert time.monotonic() - start < 10
    assert not pool._processes[0].is_alive()


def test_a_store_that_cannot_open_fails_at_start_and_leaves_nothing(tmp_path, monkeypatch):
    made, real = [], shared_memory.SharedMemory  # this pool's blocks: other xdist workers make their own

    def recorded(*args, **kwargs):
        block = real(*args, **kwargs)
        made.append(block.name)
        return block

    monkeypatch.setattr(shared_memory, "SharedMemory", recorded)
    with pytest.raises(WorkerError, match="MissingStoreError"):
        ReaderPool("hdf5", tmp_path / "missing", EpochPlan.shuffled(COUNT, 8, seed=0), SHAPE, 2)
    assert made and not any(Path("/dev/shm", name.lstrip("/")).exists() for name in made)


# -- the cold cache --------------------------------------------------------------------------------
def test_evict_drops_a_store_from_the_page_cache(hdf5_dir):
    if reason := page_cache.supported():
        pytest.skip(reason)
    for path in page_cache.store_files(hdf5_dir):
        path.read_bytes()
    assert page_cache.resident_fraction(hdf5_dir) > 0.5
    assert page_cache.evict(hdf5_dir) <= page_cache.MAX_RESIDENT_FRACTION


def test_a_mapped_file_stays_cached_and_residency_shows_it(tmp_path):
    if reason := page_cache.supported():
        pytest.skip(reason)
    path = tmp_path / "mapped"
    path.write_bytes(os.urandom(1 << 20))
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        bytes(mapped)  # touch every page through the map
        assert page_cache.evict(tmp_path) > page_cache.MAX_RESIDENT_FRACTION
    assert page_cache.evict(tmp_path) <= page_cache.MAX_RESIDENT_FRACTION


# -- the suite's cells, in a subprocess ------------------------------------------------------------
def run_random(*args: str, env: dict | None = None):
    return run_suite(
        "-k",
        "read_random",
        "--cutoffs",
        f"10,{COUNT}",
        "--image-shape",
        "x".join(map(str, SHAPE)),
        "--batch-sizes",
        "8",
        *args,
        env=env,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("run")
    result = run_random(
        "--methods",
        "disk,lmdb,hdf5",
        "--workers",
        "1,2",
        "--cache",
        "warm,cold",
        "--benchmark-max-time",
        "0.01",
        "--benchmark-json",
        str(directory / "run.json"),
        "--storage-dir",
        str(directory / "stores"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((directory / "stores").iterdir()) == []
    return json.loads((directory / "run.json").read_text())


def random_cells(run: dict) -> dict[str, dict]:
    """The read_random cells of a run (the floor cells they bring along left out)."""
    return {bench["name"]: bench for bench in run["benchmarks"] if bench["name"].startswith("test_read_random[")}


def test_cells_have_ids_params_and_extra_info(tiny_run):
    cells = random_cells(tiny_run)
    assert set(cells) == {
        f"test_read_random[{method}-{COUNT}-b8-w{workers}-{cache}]"
        for method in ("disk", "lmdb", "hdf5")
        for workers in (1, 2)
        for cache in ("warm", "cold")
    }
    cell = cells[f"test_read_random[lmdb-{COUNT}-b8-w2-cold]"]
    assert cell["params"] == {"method": "lmdb", "n_images": COUNT, "batch_size": 8, "workers": 2, "cache": "cold"}
    assert cell["group"] == f"read_random {COUNT} b8 cold"
    info = cell["extra_info"]
    assert info["suite"] == "image-storage" and info["operation"] == "read_random" and info["method"] == "lmdb"
    assert info["n_images"] == COUNT and info["image_shape"] == list(SHAPE) and info["raw_bytes"] == COUNT * 192
    assert (info["batch_size"], info["workers"], info["cache"], info["n_batches"], info["permutation_seed"]) == (
        8,
        2,
        "cold",
        4,
        0,
    )
    assert 0 < info["batch_p50_s"] <= info["batch_p99_s"] <= info["batch_max_s"]
    assert 0 < info["first_batch_s"] and 0 < info["startup_s"]
    assert 0 < info["resident_fraction_before"] <= 1  # once the workers had reopened it: a tiny store is read whole
    assert info["images_per_s"] == pytest.approx(COUNT / cell["stats"]["median"])
    assert info["mb_per_s"] == pytest.approx(COUNT * 192 / 1e6 / cell["stats"]["median"])
    for bench in cells.values():
        assert bench["stats"]["rounds"] >= 10
        assert ("resident_fraction_before" in bench["extra_info"]) == (bench["params"]["cache"] == "cold")


def test_by_default_one_cutoff_batch_size_and_cache_and_two_worker_counts():
    result = run_suite("-k", "read_random", "--cutoffs", "10,20", "--collect-only", "-q")
    most = min(os.cpu_count() or 1, 8)
    assert sorted(
        line.split("::")[-1] for line in result.stdout.splitlines() if "::test_read_random[" in line
    ) == sorted(f"test_read_random[{method}-20-b256-w{workers}-warm]" for method in METHODS for workers in {1, most})


def test_a_broken_read_in_the_workers_fails_its_cell(breakage_path):
    result = run_random(
        "--methods",
        "hdf5",
        "--workers",
        "2",
        "--benchmark-disable",
        env={"PYTHONPATH": breakage_path, "READ_RANDOM_BREAK": "zeros"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"hdf5 read_random: {COUNT} of {COUNT} images differ from what was stored" in result.stdout


def test_an_epoch_that_reads_ids_twice_fails_its_cell(breakage_path):
    result = run_random(
        "--methods",
        "lmdb",
        "--workers",
        "2",
        "--benchmark-disable",
        env={"PYTHONPATH": breakage_path, "READ_RANDOM_BREAK": "twice"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"lmdb read_random: epoch 0 read {COUNT} of {COUNT} ids other than once (from 2 to 2 times)" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "0"], {}, "'0' is not a positive whole number of worker processes"),
        ([], {"IMAGE_BENCH_WORKERS": "1,x"}, "'x' is not a positive whole number of worker processes"),
        (["--batch-sizes", "0"], {}, "'0' is not a positive whole number of images per batch"),
        (["--cache", "hot"], {}, "unknown cache state 'hot'"),
        (["--cache", "warm,"], {}, "unknown cache state ''"),
    ],
)
def test_bad_options_are_usage_errors(args, env, message):
    result = run_suite(*args, "--collect-only", env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_method_with_slow_random_reads_runs_them_only_when_named():
    by_default = run_random("--benchmark-disable", "-k", "npz", "-rs")
    assert by_default.returncode == 0, by_default.stdout + by_default.stderr
    assert (
        "npz runs read_random only when --methods names it: each image read at random decompresses" in by_default.stdout
    )
    named = run_random("--methods", "npz", "--workers", "1", "--benchmark-disable", "-rs")
    assert named.returncode == 0 and "skipped" not in named.stdout and "test_read_random.py ." in named.stdout, (
        named.stdout + named.stderr
    )


def test_a_write_round_removes_a_previous_output_unless_it_is_many_files_per_image(tmp_path, monkeypatch):
    """start_write_round: a container's output goes, and one file per image of few images (its pages are reused);
    one file per image of many images stays (deleting many files slows creating the next ones tenfold on ext4),
    whatever extra files a method left beside them; dirty pages are written back either way."""
    synced = []
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    monkeypatch.setattr(page_cache, "REMOVE_MAX_FILES", 3)
    single, container, few, many = tmp_path / "round.raw", tmp_path / "container", tmp_path / "few", tmp_path / "many"
    single.write_bytes(b"x")
    for folder, count in ((container, 5), (few, 5), (many, 4)):  # few: 3 images plus two files of the method's own
        (folder / "sub").mkdir(parents=True)
        for index in range(count):
            (folder / "sub" / f"{index}.png").write_bytes(b"x")
    for previous, images, file_per_image in (
        (single, 100, False),
        (container, 100, False),
        (few, 3, True),
        (many, 4, True),
        (None, 1, False),
    ):
        page_cache.start_write_round(previous, images, file_per_image)
    assert not single.exists() and not container.exists() and not few.exists()
    assert len(list((many / "sub").iterdir())) == 4
    assert len(synced) == 5


def test_a_cold_round_is_refused_when_opening_left_much_of_a_large_store_cached(tmp_path):
    """Residency is judged once the readers have reopened the store: above 5 % and 8 MiB is too much; a tiny store read
    whole by its open, or 12 % of a small one, is not."""
    (tmp_path / "big").write_bytes(bytes(100 << 20))
    (tmp_path / "small").write_bytes(bytes(40 << 20))
    assert "10.0% of the store (10.5 MB) was in the page cache" in page_cache.too_resident(tmp_path / "big", 0.1)
    assert page_cache.too_resident(tmp_path / "big", 0.05) is None
    assert page_cache.too_resident(tmp_path / "small", 0.12) is None


def test_a_methods_own_read_cache_is_sized_below_the_store(tmp_path, data):
    """RocksDB's block cache (32 MiB by default, a whole 10 000-image store) is set to 1/16 of the store in shuffled
    cells, unless the method spec sets it; methods without a cache of their own get no option."""
    from storage_impls import get_store_class

    rocksdb = get_store_class("rocksdb")
    with rocksdb(tmp_path / "rocksdb") as store:
        store.store_many(*data)
    size = sum(path.stat().st_size for path in page_cache.store_files(tmp_path / "rocksdb"))
    assert page_cache.read_cache_options(rocksdb, "rocksdb", tmp_path / "rocksdb") == {"block_cache": size // 16}
    named = get_store_class("rocksdb:block_cache=1MiB")
    assert page_cache.read_cache_options(named, "rocksdb:block_cache=1MiB", tmp_path / "rocksdb") == {}
    assert page_cache.read_cache_options(Hdf5Store, "hdf5", tmp_path / "rocksdb") == {}
    with rocksdb(tmp_path / "rocksdb", "r", block_cache=size // 16) as store:
        assert store.settings["block_cache"] == size // 16


@pytest.mark.skipif(bool(memlimit.unavailable()), reason=f"no memory cgroup here: {memlimit.unavailable()}")
def test_limited_cells_run_in_a_memory_cgroup_and_record_limit_and_residency(tmp_path):
    result = run_suite(
        "-k",
        "read_random",
        "--cutoffs",
        "10,400",
        "--image-shape",
        "64x64x3",
        "--batch-sizes",
        "64",
        "--methods",
        "hdf5:advice=willneed,lmdb:readahead=false",
        "--workers",
        "1",
        "--cache",
        "limited",
        "--limited-fraction",
        "1/4",
        "--benchmark-max-time",
        "0.01",
        "--benchmark-json",
        str(tmp_path / "run.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = random_cells(json.loads((tmp_path / "run.json").read_text()))
    assert set(cells) == {
        f"test_read_random[{method}-400-b64-w1-limited]" for method in ("hdf5:advice=willneed", "lmdb:readahead=false")
    }
    for cell in cells.values():
        info = cell["extra_info"]
        assert info["cache"] == "limited" and info["memory_limit_fraction"] == 0.25
        store_bytes = info["memory_cache_bytes"] / 0.25  # a quarter of the store's files
        assert info["raw_bytes"] <= store_bytes <= 1.5 * info["raw_bytes"]
        assert info["memory_limit_bytes"] == info["memory_cache_bytes"] + info["memory_workers_bytes"]
        assert info["cgroup_version"] in (1, 2) and (info["cgroup_peak_bytes"] or 0) <= info["memory_limit_bytes"]
        assert info["resident_fraction_before"] == info["resident_fraction_opened"] <= 0.25  # what the open read
        cached = info["resident_fraction_after"] * store_bytes
        assert 0 < cached <= info["memory_limit_bytes"]  # the workers' slack may hold cache too (1 MiB each)


def test_a_cgroup_holds_the_processes_added_and_goes_away(tmp_path):
    if reason := memlimit.unavailable():
        pytest.skip(reason)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with memlimit.MemoryCgroup() as cgroup:
            cgroup.limit(48 << 20, 16 << 20)
            cgroup.add(process.pid)
            assert str(process.pid) in (cgroup.path / "cgroup.procs").read_text().split()
            limit_file = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
            assert int((cgroup.path / limit_file).read_text()) == 64 << 20
        assert not cgroup.path.exists()
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("fraction", ["0", "1.5", "x", "1/0"])
def test_a_bad_limited_fraction_is_a_usage_error(fraction):
    result = run_suite("--limited-fraction", fraction, "--collect-only")
    assert result.returncode == 4 and "is not a fraction above 0 and at most 1" in result.stderr, result.stderr

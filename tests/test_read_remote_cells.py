"""The remote cells (benchmarks/test_read_remote.py): the stream epoch's plan and its reads in the reader pool, the
cells skipped without --object-store, a tiny run with ``--object-store local`` (s3rver, else moto, on 127.0.0.1)
whose cells pass and record their fields, an RTT sweep in one run, a broken read failing its cell, and
reports/remote.py shaping what they recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.object_store import s3rver
from benchmarks.remote_epochs import StreamPlan
from benchmarks.workers import ReaderPool
from reports.remote import remote_points, remote_section, rtt_curves, rtt_ms, write_remote_charts
from reports.results import load_run
from storage_impls.datasets import synthetic
from storage_impls.methods.hdf5.store import Hdf5Store
from tests.test_benchmarks import run_suite
from tests.test_read_random import breakage_path  # noqa: F401 - fixture

pytest.importorskip("obstore", reason="remote reads need obstore: pip install image-storage-bench[s3]")
if s3rver() is None:
    pytest.importorskip(
        "moto.server", reason="--object-store local needs s3rver or moto: pip install image-storage-bench[s3]"
    )

TINY = (
    "--cutoffs",
    "10,48",
    "--batch-sizes",
    "16",
    "--image-shape",
    "8x8x3",
    "--shuffle-buffer",
    "20",
    "--remote-workers",
    "1,2",
)
CELLS = {
    f"test_read_remote[{method}-48-b16-w{workers}-{order}-none]"
    for method in ("webdataset", "lmdb")
    for workers in (1, 2)
    for order in ("shuffle", "stream-buf20")
}


# -- the stream epoch ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_images", "batch_size", "buffer", "workers"), [(50, 8, 20, 2), (48, 16, 0, 1), (7, 3, 5, 3)]
)
def test_a_stream_epoch_sends_every_id_out_once_after_its_chunk_is_read(n_images, batch_size, buffer, workers):
    plan = StreamPlan.streamed(n_images, batch_size, buffer, workers, seed=0)
    assert sorted(plan.permutation.tolist()) == list(range(n_images))
    for worker in range(workers):
        batches = plan.share(worker, workers)
        before = plan.chunks_before[list(batches)]
        assert np.all(np.diff(before) >= 0) and before[-1] == len(batches)  # the last batch waits for every chunk
        for batch, read in zip(batches, before):
            chunks = batches[:read]  # a batch holds only ids of the chunks its worker has read
            ids = plan.permutation[plan.positions(batch)]
            assert set((ids // batch_size).tolist()) <= set(chunks)
    if buffer == 0:
        assert plan.permutation.tolist() == list(range(n_images))  # no buffer: storage order


def test_a_larger_buffer_waits_longer_for_the_first_batch():
    small, large = (StreamPlan.streamed(256, 16, buffer, 2, seed=0) for buffer in (16, 96))
    assert small.chunks_before[0] == 2 and large.chunks_before[0] == 7  # 96 held, then 16 more out: 112 = 7 chunks
    assert small.permutation.tolist() != large.permutation.tolist()


def test_the_pool_reads_a_stream_epoch_and_answers_calls(tmp_path):
    images, labels = synthetic(40, (8, 8, 3), seed=1)
    with Hdf5Store(tmp_path / "hdf5") as store:
        store.store_many(images, labels)
    plan = StreamPlan.streamed(40, 8, 12, 2, seed=3)
    with ReaderPool("hdf5", tmp_path / "hdf5", plan, (8, 8, 3), 2) as pool:
        pool.prepare_round()
        pool.run_epoch()
        (epoch,) = pool.epochs()
        read_images, read_labels = pool.read_back()
        assert pool.call(_count_of) == [40, 40]
    assert epoch.exactly_once and np.array_equal(read_images, images) and np.array_equal(read_labels, labels)


def _count_of(store) -> int:
    return len(store)


# -- the cells ----------------------------------------------------------------------------------------------------
def test_without_an_object_store_the_cells_are_skipped():
    result = run_suite(*TINY, "--methods", "webdataset", "-k", "test_read_remote", "--benchmark-disable", "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 skipped" in result.stdout and "remote cells need --object-store" in result.stdout


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory) -> Path:
    """A tiny run of the remote cells of a method read remotely and one staged, saved as JSON."""
    path = tmp_path_factory.mktemp("remote") / "run.json"
    result = run_suite(
        *TINY,
        "--object-store",
        "local",
        "--methods",
        "webdataset,lmdb",
        "-k",
        "test_read_remote",
        "--benchmark-max-time",
        "0.01",
        "--benchmark-min-rounds",
        "2",
        "--benchmark-json",
        str(path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def test_the_cells_pass_and_record_their_fields(remote_run):
    document = json.loads(remote_run.read_text())
    cells = {bench["name"]: bench["extra_info"] for bench in document["benchmarks"]}
    assert set(cells) == CELLS
    shuffled = cells["test_read_remote[webdataset-48-b16-w2-shuffle-none]"]
    assert (shuffled["operation"], shuffled["method"], shuffled["order"], shuffled["network"]) == (
        "read_remote",
        "webdataset",
        "shuffle",
        "none",
    )
    assert shuffled["reads_remote"] and shuffled["requests_counted"] and shuffled["workers"] == 2
    assert 0 < shuffled["requests_per_image"] <= 1  # a request per image at most, neighbours coalesced
    assert 0.9 < shuffled["read_amplification"] < 1.1  # every image once, tar headers included
    assert 1 <= shuffled["peak_concurrent_requests"] <= shuffled["peak_concurrent_requests_all_workers"]
    assert shuffled["floor_s"] > 0 and shuffled["first_batch_s"] > 0 and shuffled["images_per_s"] > 0
    streamed = cells["test_read_remote[webdataset-48-b16-w1-stream-buf20-none]"]
    assert streamed["shuffle_buffer"] == 20 and streamed["requests_per_image"] < shuffled["requests_per_image"]
    staged = cells["test_read_remote[lmdb-48-b16-w2-shuffle-none]"]
    assert not staged["reads_remote"] and staged["stage_s"] > 0 and staged["read_amplification"] == 1.0
    assert staged["stage_then_read_s"] == pytest.approx(staged["stage_s"] + staged["epoch_s"])
    assert "floor_s" not in staged
    assert document["machine_info"]["object_store"]["network"] == "none"


def test_several_networks_run_in_one_session_each_shaped_once_before_its_cells():
    result = run_suite(
        *TINY,
        "--object-store",
        "local",
        "--network",
        "rtt=0ms,rtt=30ms",
        "--methods",
        "lmdb",
        "--remote-workers",
        "1",
        "-k",
        "test_read_remote and shuffle",
        "--benchmark-disable",
        "-v",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    order = [line for line in lines if "image-storage: object store" in line or "PASSED" in line]
    assert len(order) == 4, result.stdout
    assert "the shaping adds" in order[0] and "lmdb-48-b16-w1-shuffle-rtt=0ms]" in order[1]
    assert "the shaping adds" in order[2] and "lmdb-48-b16-w1-shuffle-rtt=30ms]" in order[3]


def test_a_broken_remote_read_fails_its_cell(breakage_path):  # noqa: F811 - the fixture
    result = run_suite(
        *TINY,
        "--object-store",
        "local",
        "--methods",
        "hdf5",
        "--remote-workers",
        "1",
        "-k",
        "test_read_remote and shuffle",
        "--benchmark-disable",
        env={"PYTHONPATH": breakage_path, "READ_RANDOM_BREAK": "zeros"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "hdf5 read_remote shuffle: 48 of 48 images differ from what was stored" in result.stdout


# -- the report ---------------------------------------------------------------------------------------------------
def test_the_report_shapes_the_cells(remote_run, tmp_path):
    document = json.loads(remote_run.read_text())
    for bench in document["benchmarks"]:  # the same cells again, as a run through a 20 ms round trip
        bench["extra_info"]["network"] = "rtt=20ms,rate=1gbit"
        bench["stats"]["median"] *= 2
    shaped = tmp_path / "shaped.json"
    shaped.write_text(json.dumps(document))
    points = remote_points([load_run(remote_run), load_run(shaped)])
    assert len(points) == 2 * len(CELLS)
    staged = next(point for point in points if point.method == "lmdb")
    assert staged.label == "lmdb (stage then read)" and staged.total_s == staged.median_s + staged.stage_s
    remote = next(point for point in points if point.method == "webdataset" and point.order == "shuffle")
    assert remote.floor_images_per_s > 0 and remote.requests_per_image > 0
    curves = rtt_curves(points)
    assert len(curves) == len(CELLS) and all(curve.rtt_ms == (0.0, 20.0) for curve in curves)
    assert rtt_ms("none") == 0 and rtt_ms("rtt=5ms") == 5
    charts = write_remote_charts(points, ["a", "b"], tmp_path)
    assert set(charts) == {"read_remote", "read_remote_rtt"} and (tmp_path / "read_remote.svg").stat().st_size > 0
    section = remote_section(points, ["a", "b"], charts)
    assert "![read_remote_rtt](read_remote_rtt.png)" in section
    assert "### b: 48 images of 8x8x3, batches of 16, rtt=20ms,rate=1gbit" in section
    assert "| lmdb (stage then read) | shuffle | 2 |" in section
    assert remote_points([load_run(remote_run)])[0].run_index == 0 and remote_section((), ["a"], {}) == ""

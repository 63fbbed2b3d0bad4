"""Training reads from object storage (docs/remote.md; run with ``--object-store local`` or a bucket's URL, skipped
without): ``test_read_remote[webdataset-1000-b256-w2-shuffle-none]`` reads one epoch of a store of 1000 images
(--remote-cutoffs) from the bucket by 2 reader processes (--remote-workers; benchmarks/workers.py, as read_random),
in batches of 256 (--batch-sizes), through the network named last (``none``, or the ``--network`` shaping).

Orders: ``shuffle`` is read_random's epoch (batches of a seeded permutation); ``stream-buf256`` reads in storage
order through a shuffle buffer of 256 images per worker (--shuffle-buffer; benchmarks/remote_epochs.py), as
WebDataset's shard streaming and litdata do. Methods whose library reads local files only (registry trait
``reads-remote`` false) are "stage then read": the store is downloaded (timed apart, ``stage_s``, the median of
STAGE_ROUNDS) and the epoch read from the local copy.

Untimed: writing the store locally (the session's fixed-seed images) and uploading it, once per session; starting the
workers and opening their stores (``startup_s``); zeroing the workers' request counters before each round (each
request's byte range is then kept: an append to a list, beside a request's round trip). After the rounds, untimed:
every epoch checked (every id exactly once, the last one's pixels and labels as stored), the last round's requests and
bytes (each worker's client counts its own), then the floor: that round's requests fetched again by the same
workers' clients as plain concurrent GETs (no coalescing, no format's work), FLOOR_ROUNDS times, or fewer (one at
least) once they took --benchmark-max-time. Lance's requests are its own client's: not counted, no floor. The
suite's minimum of rounds is FEW_MIN_ROUNDS here (benchmarks/conftest.py): every round is a server's work.
"""

from __future__ import annotations

import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.remote_epochs import StreamPlan, replay_recorded, request_counts, start_counting, summed
from benchmarks.test_read_random import explicitly_named
from benchmarks.workers import EpochPlan, ReaderPool, latency_summary
from storage_impls import ImageStore
from storage_impls.registry import READS_REMOTE, has_trait

PERMUTATION_SEED = 0
STAGE_ROUNDS = 3  # downloads of a stage-then-read store, their median is stage_s
FLOOR_ROUNDS = 3  # replays of the last round's requests at most (fewer past --benchmark-max-time), median: floor_s


@dataclass(frozen=True)
class Uploaded:
    """A store in the bucket: its URL and the bytes of its objects."""

    url: str
    stored_bytes: int


@pytest.fixture(scope="session")
def uploaded_stores(object_bucket, filled_store_dirs: Callable[[str, int], Path]) -> Callable[[str, int], Uploaded]:
    """``get(method, n)``: the store of the first ``n`` images, written locally and uploaded once (untimed), read
    through every network of the run."""
    from storage_impls.remote import upload

    made: dict[tuple[str, int], Uploaded] = {}

    def get(method: str, count: int) -> Uploaded:
        if (method, count) not in made:
            url = object_bucket.url(f"{re.sub(r'[^A-Za-z0-9]+', '-', method)}-{count}")
            files = upload(filled_store_dirs(method, count), url, object_bucket.direct_options)
            made[method, count] = Uploaded(url, sum(files.values()))
        return made[method, count]

    return get


@dataclass
class RemoteEpochs:
    """A cell's reader processes over the bucket's store (or its staged copy), and what staging it cost."""

    pool: ReaderPool
    uploaded: Uploaded
    remote: bool  # read from the bucket; False: stage then read
    staged: dict[str, float]  # stage-then-read: stage_s, stage_requests, stage_bytes


def _stage(uploaded: Uploaded, storage_options: dict, folder: Path) -> dict[str, float]:
    """Download the store STAGE_ROUNDS times into fresh folders, timed; the last copy stays in ``folder``."""
    from storage_impls.remote import STATS, stage

    seconds = []
    for _ in range(STAGE_ROUNDS):
        shutil.rmtree(folder, ignore_errors=True)
        STATS.reset()
        start = time.perf_counter()
        stage(uploaded.url, folder, storage_options)
        seconds.append(time.perf_counter() - start)
    return {"stage_s": statistics.median(seconds), "stage_requests": STATS.requests, "stage_bytes": STATS.bytes}


@pytest.fixture
def remote_epochs(
    request: pytest.FixtureRequest,
    store_class: type[ImageStore],
    object_store,
    uploaded_stores: Callable[[str, int], Uploaded],
    storage_root: Path,
    dataset,
    method: str,
    remote_images: int,
    batch_size: int,
    remote_workers: int,
    order: str,
) -> Iterator[RemoteEpochs]:
    """The store uploaded, the plan made, the workers started and their stores opened (or the store staged first):
    all untimed. (``store_class`` skips the cell when the method's package is missing.)"""
    if order == "shuffle" and store_class.slow_random_reads and not explicitly_named(request.config, method):
        pytest.skip(f"{method} runs shuffled epochs only when --methods names it: {store_class.slow_random_reads}")
    uploaded = uploaded_stores(method, remote_images)
    if order == "shuffle":
        plan = EpochPlan.shuffled(remote_images, batch_size, PERMUTATION_SEED)
    else:
        buffer = int(order.removeprefix("stream-buf"))
        plan = StreamPlan.streamed(remote_images, batch_size, buffer, remote_workers, PERMUTATION_SEED)
    remote, staged, location = has_trait(method, READS_REMOTE), {}, uploaded.url
    options = {"storage_options": object_store.storage_options}
    if not remote:
        folder = storage_root / "staged" / request.node.name.replace("/", "_")
        staged, location, options = _stage(uploaded, object_store.storage_options, folder), str(folder), {}
    shape, dtype = dataset.images.shape[1:], dataset.images.dtype
    with ReaderPool(method, location, plan, shape, remote_workers, image_dtype=dtype, store_options=options) as pool:
        yield RemoteEpochs(pool, uploaded, remote, staged)
    if not remote:
        shutil.rmtree(location, ignore_errors=True)


def _check_epochs(what: str, pool: ReaderPool, expected, n_images: int) -> None:
    """Every epoch so far read every id exactly once; the last one's pixels and labels are the stored ones."""
    for number, epoch in enumerate(pool.epochs()):
        if not epoch.exactly_once:
            wrong = int((epoch.reads_per_id != 1).sum())
            pytest.fail(f"{what}: epoch {number} read {wrong} ids other than once", pytrace=False)
    expected.check(what, *pool.read_back(), slice(0, n_images))


def test_read_remote(
    request,
    measure,
    record,
    benchmark,
    object_store,
    remote_epochs,
    expected,
    method,
    remote_images,
    batch_size,
    remote_workers,
    order,
    network,
):
    pool, uploaded, n_images = remote_epochs.pool, remote_epochs.uploaded, remote_images
    what = f"{method} read_remote {order}"

    def prepare():
        pool.prepare_round()
        if remote_epochs.remote:
            pool.call(start_counting, True)
        return (), {}

    record(n_images)
    benchmark.group = f"read_remote {n_images} b{batch_size} {network}"
    benchmark.extra_info.update(
        batch_size=batch_size,
        workers=remote_workers,
        order=order,
        network=network,
        permutation_seed=PERMUTATION_SEED,
        n_batches=pool.plan.n_batches,
        startup_s=pool.startup_s,
        reads_remote=remote_epochs.remote,
        stored_bytes=uploaded.stored_bytes,
        stored_bytes_per_image=uploaded.stored_bytes / n_images,
        **({"shuffle_buffer": pool.plan.buffer} if isinstance(pool.plan, StreamPlan) else {}),
    )
    measure(pool.run_epoch, prepare, few=True)
    timed = benchmark.stats.stats.rounds if benchmark.stats else 1
    benchmark.extra_info.update(latency_summary(pool.epochs()[-timed:]))
    _check_epochs(what, pool, expected, n_images)
    info = benchmark.extra_info
    if not remote_epochs.remote:
        median = benchmark.stats.stats.median if benchmark.stats else float("nan")
        info.update(
            remote_epochs.staged,
            epoch_s=median,
            stage_then_read_s=remote_epochs.staged["stage_s"] + median,
            first_batch_with_stage_s=remote_epochs.staged["stage_s"] + info["first_batch_s"],
            requests_per_image=remote_epochs.staged["stage_requests"] / n_images,
            bytes_fetched_per_image=remote_epochs.staged["stage_bytes"] / n_images,
            read_amplification=remote_epochs.staged["stage_bytes"] / uploaded.stored_bytes,
        )
        return
    epoch = summed(pool.call(request_counts))  # the last timed round's requests, each one's range recorded
    if not epoch["requests"]:  # lance's own client makes its requests: not counted (docs/remote.md)
        info["requests_counted"] = False
        return
    info.update(
        requests_counted=True,
        requests=epoch["requests"],
        requests_per_image=epoch["requests"] / n_images,
        bytes_fetched=epoch["bytes"],
        bytes_fetched_per_image=epoch["bytes"] / n_images,
        read_amplification=epoch["bytes"] / uploaded.stored_bytes,
        peak_concurrent_requests=epoch["peak"],
        peak_concurrent_requests_all_workers=epoch["peak_sum"],
    )
    seconds: list[float] = []
    budget = float(request.config.getoption("benchmark_max_time"))
    while len(seconds) < FLOOR_ROUNDS and (not seconds or sum(seconds) < budget):
        start = time.perf_counter()
        fetched = sum(pool.call(replay_recorded))
        seconds.append(time.perf_counter() - start)
    if fetched != epoch["bytes"]:
        pytest.fail(f"{what}: the floor fetched {fetched} bytes, the epoch it replays {epoch['bytes']}", pytrace=False)
    info.update(
        floor_s=statistics.median(seconds),
        floor_images_per_s=n_images / statistics.median(seconds),
        floor_rounds=len(seconds),
    )

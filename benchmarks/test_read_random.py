"""Training-style reads: one epoch of shuffled batches, read by worker processes, from a warm or cold page cache.

A cell such as ``test_read_random[lmdb-100000-b256-w2-warm]`` reads a store holding the largest cutoff's
images: every id exactly once, in batches of 256 ids taken in order from a permutation drawn with
PERMUTATION_SEED (the same epoch every round, so rounds compare), by 2 reader processes (benchmarks/workers.py).

Timed: one epoch, from the signal to the already started workers until the last batch is in. Untimed:
starting the workers and opening their stores (``startup_s``; a method's own cache of the store's data, such as
RocksDB's block cache, sized at 1/16 of the store: ``read_cache_bytes``), clearing the shared buffers before each
round, and in cold cells closing the stores, dropping their files from the page cache (benchmarks/cache.py),
reopening them, then measuring what of the store is cached (``resident_fraction_before``). Limited cells
(``--cache limited``) are cold cells whose workers run in a memory cgroup holding a fraction of the store
(benchmarks/memlimit.py): the dataset does not fit in their memory. Afterwards, every
epoch must have read every id exactly once, and the last epoch's images and labels must equal what was stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import cache as page_cache
from benchmarks import memlimit
from benchmarks.workers import EpochPlan, ReaderPool, latency_summary
from storage_impls import METHODS, ImageStore

PERMUTATION_SEED = 0
WORKER_SLACK_BYTES = 1 << 20  # a limited cell's allowance per worker for memory it allocates beyond what it did before


def explicitly_named(config: pytest.Config, method: str) -> bool:
    """Whether --methods (or IMAGE_BENCH_METHODS) named ``method``, rather than the default of every method."""
    return config.getoption("methods") != tuple(METHODS) and method in config.getoption("methods")


@pytest.fixture
def store_dir(filled_store_dirs: Callable[[str, int], Path], method: str, n_images: int) -> Path:
    return filled_store_dirs(method, n_images)


@pytest.fixture
def read_cache(store_class: type[ImageStore], method: str, store_dir: Path) -> dict[str, int]:
    """The workers' store options: a cache of the method's own sized below the store (benchmarks.cache)."""
    return page_cache.read_cache_options(store_class, method, store_dir)


@pytest.fixture
def reader_pool(
    request: pytest.FixtureRequest,
    store_class: type[ImageStore],
    method: str,
    store_dir: Path,
    dataset,
    n_images: int,
    batch_size: int,
    workers: int,
    cache: str,
    read_cache: dict[str, int],
) -> Iterator[ReaderPool]:
    """The cell's worker processes, started and their stores opened (untimed); stopped and cleaned up afterwards.
    (``store_class`` skips the cell when the method's package is missing.)"""
    if cache != "warm" and (reason := page_cache.supported()):
        pytest.skip(reason)
    if store_class.slow_random_reads and not explicitly_named(request.config, method):
        pytest.skip(f"{method} runs read_random only when --methods names it: {store_class.slow_random_reads}")
    plan = EpochPlan.shuffled(n_images, batch_size, PERMUTATION_SEED)
    with ReaderPool(
        method,
        store_dir,
        plan,
        dataset.images.shape[1:],
        workers,
        image_dtype=dataset.images.dtype,
        store_options=read_cache,
    ) as pool:
        yield pool


@pytest.fixture
def reader_cgroup(
    request: pytest.FixtureRequest, reader_pool: ReaderPool, store_dir: Path, cache: str
) -> Iterator[memlimit.MemoryCgroup | None]:
    """A limited cell's memory cgroup, holding its workers (None for other cells). Its limit is what the workers
    need besides the page cache (measured after one untimed cold epoch in the cgroup, plus WORKER_SLACK_BYTES each)
    plus --limited-fraction of the store's bytes. Removed before the workers stop: they go back to the parent."""
    if cache != "limited":
        yield None
        return
    with memlimit.MemoryCgroup() as cgroup:
        for pid in reader_pool.pids:
            cgroup.add(pid)
        reader_pool.close_stores()
        page_cache.evict(store_dir)
        reader_pool.open_stores()
        reader_pool.prepare_round()
        reader_pool.run_epoch()  # untimed (checked like the others): the workers' own allocations settle in the cgroup
        reader_pool.close_stores()
        page_cache.evict(store_dir)  # what stays charged to the cgroup is the workers' own memory
        store_bytes = sum(path.stat().st_size for path in page_cache.store_files(store_dir))
        cgroup.limit(
            int(request.config.getoption("limited_fraction") * store_bytes),
            cgroup.usage_bytes() - cgroup.file_bytes() + WORKER_SLACK_BYTES * len(reader_pool.pids),
        )
        reader_pool.open_stores()
        yield cgroup


def test_read_random(
    request,
    measure,
    record,
    benchmark,
    reader_pool,
    reader_cgroup,
    read_cache,
    store_dir,
    expected,
    method,
    n_images,
    batch_size,
    workers,
    cache,
):
    resident: list[float] = []

    opened: list[float] = []  # limited: share of the store cached once the workers opened it, per round
    after: list[float] = []  # limited: share cached at the end of each epoch

    def prepare():
        """Untimed: clear the shared buffers; for a cold or limited round, drop the closed store from the page cache,
        let the workers open it again, and only then measure what is cached: what opening read counts against the
        round."""
        reader_pool.prepare_round()
        if cache != "warm":
            if cache == "limited" and resident:
                after.append(page_cache.resident_fraction(store_dir))
            reader_pool.close_stores()
            page_cache.evict(store_dir)
            reader_pool.open_stores()
            resident.append(page_cache.resident_fraction(store_dir))
            if problem := page_cache.too_resident(store_dir, resident[-1]):
                pytest.fail(f"{method} read_random: {problem}", pytrace=False)
            if cache == "limited":
                opened.append(resident[-1])
        return (), {}

    record(n_images)
    benchmark.group = f"read_random {n_images} b{batch_size} {cache}"
    benchmark.extra_info.update(
        batch_size=batch_size,
        workers=workers,
        cache=cache,
        permutation_seed=PERMUTATION_SEED,
        n_batches=reader_pool.plan.n_batches,
        startup_s=reader_pool.startup_s,
        **({"read_cache_bytes": next(iter(read_cache.values()))} if read_cache else {}),
    )
    measure(reader_pool.run_epoch, prepare)

    epochs = reader_pool.epochs()
    for number, epoch in enumerate(epochs):
        if not epoch.exactly_once:
            counts = epoch.reads_per_id
            pytest.fail(
                f"{method} read_random: epoch {number} read {int((counts != 1).sum())} of {len(counts)} ids other "
                f"than once (from {counts.min()} to {counts.max()} times)",
                pytrace=False,
            )
    expected.check(f"{method} read_random", *reader_pool.read_back(), slice(0, n_images))
    timed = benchmark.stats.stats.rounds if benchmark.stats else 1  # the measured rounds are the last ones
    benchmark.extra_info.update(latency_summary(epochs[-timed:]))
    if cache != "warm":
        benchmark.extra_info["resident_fraction_before"] = max(resident[-timed:])
    if cache == "limited":
        after.append(page_cache.resident_fraction(store_dir))
        benchmark.extra_info.update(
            memory_limit_bytes=reader_cgroup.limit_bytes,
            memory_workers_bytes=reader_cgroup.other_bytes,
            memory_cache_bytes=reader_cgroup.cache_bytes,
            memory_limit_fraction=request.config.getoption("limited_fraction"),
            cgroup_version=reader_cgroup.version,
            cgroup_peak_bytes=reader_cgroup.peak_bytes(),
            resident_fraction_opened=max(opened[-timed:]),
            resident_fraction_after=max(after[-timed:]),
        )

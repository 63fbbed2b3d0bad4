"""The tutorial's four experiments, per storage method and image count (cutoff: the images a store holds; one
image read or written per round for the single-image operations), and the cost of one write into a store that
already holds ``cutoff`` images.

Each cell times only the operation on an open store, then checks, untimed, that what was
read (or what a store wrote, read back from disk) is exactly what was stored (for a lossy codec:
exactly what Pillow's own encode and decode give, and no further from the source than the codec's
PSNR floor: benchmarks/codec_reference.py).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.buffers import page_aligned_empty
from storage_impls import ImageStore


def test_store_single(measure, record, fresh_stores, dataset, expected, method, cutoff):
    image, label = dataset.images[0], int(dataset.labels[0])
    record(cutoff)
    measure(lambda store: store.store_single(image, 0, label), lambda: ((fresh_stores.open_next(),), {}))
    with fresh_stores.reopen_last() as stored:
        read_image, read_label = stored.read_single(0)
        expected.check(f"{method} store_single", read_image[np.newaxis], np.array([read_label]), slice(0, 1))
        record(cutoff, stored.disk_usage())


def test_read_single(measure, record, read_store, expected, method, cutoff):
    """Each round reads one image, of an id drawn at random (seeded) from the cutoff's store, so that where an image
    lies in a large store counts."""
    rng, ids = np.random.default_rng(0), []

    def next_id():
        ids.append(int(rng.integers(0, cutoff)))
        return (ids[-1],), {}

    record(cutoff, images_per_round=1)
    image, label = measure(read_store.read_single, next_id)
    expected.check(f"{method} read_single", image[np.newaxis], np.array([label]), np.array(ids[-1:]))


def test_store_many(measure, record, fresh_stores, dataset, expected, method, cutoff):
    images, labels = dataset.images[:cutoff], dataset.labels[:cutoff]
    record(cutoff)
    measure(lambda store: store.store_many(images, labels), lambda: ((fresh_stores.open_next(),), {}))
    with fresh_stores.reopen_last() as stored:
        expected.check(f"{method} store_many", *stored.read_many(cutoff), slice(0, cutoff))
        record(cutoff, stored.disk_usage())


def test_read_many(measure, record, read_store, dataset, expected, method, cutoff):
    out = page_aligned_empty((cutoff, *dataset.images.shape[1:]), dataset.images.dtype)

    def clear_out():
        """Each round starts from zeros, so the check below proves the last round read every image."""
        out.fill(0)
        return (), {}

    record(cutoff)
    images, labels = measure(lambda: read_store.read_many(cutoff, out=out), clear_out)
    assert images is out
    expected.check(f"{method} read_many", images, labels, slice(0, cutoff))


@pytest.fixture
def store_filled_to_cutoff(
    store_class: type[ImageStore], storage_root, dataset, cutoff, request, pytestconfig
) -> Iterator[ImageStore]:
    """A writable store of its own holding the first ``cutoff`` images (filled untimed, removed after the cell)."""
    directory = storage_root / "into" / request.node.name.replace("/", "_")
    with store_class(directory, durable=pytestconfig.getoption("durable")) as store:
        store.store_many(dataset.images[:cutoff], dataset.labels[:cutoff])
        yield store
    shutil.rmtree(directory, ignore_errors=True)


UPKEEP_CYCLES = 2  # whole cycles of a method's periodic upkeep that the amortised cost of a single write spans
# rounds beyond the cycles, for the cycle lengthening as appends grow the store: a journal folds past N records, half
# the writes append, so the second cycle is up to 1.5x the first (2.5 cycles' writes in all)
CYCLE_MARGIN = 1.3


def amortised(seconds: list[float], upkeeps: list[int]) -> dict[str, float | int]:
    """The cost per write of single writes timed one by one from a store that ``store_many`` just wrote (where every
    method's upkeep cycle starts), ``upkeeps[i]`` the handle's upkeep count before write i and ``upkeeps[i + 1]``
    after it: the mean over the first UPKEEP_CYCLES whole cycles (through the write that ran the UPKEEP_CYCLES-th
    upkeep; every write when the method had fewer upkeeps), with the median, p99 and max of all the writes."""
    runs = [index for index in range(len(seconds)) if upkeeps[index + 1] > upkeeps[index]]
    whole = len(runs) >= UPKEEP_CYCLES
    window = seconds[: runs[UPKEEP_CYCLES - 1] + 1] if whole else seconds
    return {
        "write_amortised_s": float(np.mean(window)),
        "write_p50_s": float(np.median(seconds)),
        "write_p99_s": float(np.percentile(seconds, 99)),
        "write_max_s": float(max(seconds)),
        "writes_timed": len(seconds),
        "amortised_writes": len(window),
        "upkeeps": len(runs),
        "upkeep_cycles": UPKEEP_CYCLES if whole else 0,
    }


def test_store_single_into(measure, record, benchmark, store_filled_to_cutoff, dataset, expected, method, cutoff):
    """Each round: one append (id len(store)) and one replace (a random existing id), as a dataset that grows and
    gets corrected does. The rounds span UPKEEP_CYCLES whole cycles of the method's periodic upkeep (a journal fold, a
    compaction: ImageStore.single_write_cycle) or more, and each write is also timed on its own (the warm-up round's
    too: the first write starts the first cycle), so that the cell reports what a write costs amortised over whole
    cycles, upkeep included, beside its median, p99 and max; the amortised cost must not grow with the store."""
    store, rng = store_filled_to_cutoff, np.random.default_rng(0)
    images, labels = dataset.images, dataset.labels
    written_from: dict[int, int] = {}  # id -> index of the source image written there last
    seconds: list[float] = []
    upkeeps: list[int] = []

    def next_writes():
        appended = len(store)
        replaced = int(rng.integers(0, appended))
        sources = [int(index) for index in rng.integers(0, len(images), 2)]
        return (appended, replaced, *sources), {}

    def write(appended, replaced, append_source, replace_source):
        for image_id, source in ((appended, append_source), (replaced, replace_source)):
            start = time.perf_counter()
            store.store_single(images[source], image_id, int(labels[source]))
            seconds.append(time.perf_counter() - start)
            upkeeps.append(store.upkeeps)
            written_from[image_id] = source

    record(cutoff, images_per_round=2)
    cycle, first = store.single_write_cycle(), store.upkeeps
    # a round is two writes (the warm-up round's included): enough rounds for UPKEEP_CYCLES cycles of writes
    least = math.ceil(CYCLE_MARGIN * (UPKEEP_CYCLES * cycle + 1) / 2) if cycle > 1 else 0
    measure(write, next_writes, least_rounds=least)
    if benchmark.enabled:
        benchmark.extra_info.update(amortised(seconds, [first, *upkeeps]), upkeep_cycle=cycle)
    store.close()
    with type(store)(store.directory, "r") as stored:
        touched = np.array(sorted(written_from))
        sources = np.array([written_from[image_id] for image_id in touched])
        assert len(stored) == cutoff + sum(1 for image_id in written_from if image_id >= cutoff)
        expected.check(f"{method} store_single_into", *stored.read_batch(touched), sources)
        record(cutoff, stored.disk_usage(), images_per_round=2)

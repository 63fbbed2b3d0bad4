"""The read-ahead options: ``advice`` of the memory-mapped methods (core/advice.py) and lmdb's ``readahead``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage_impls import open_store
from storage_impls.core import advice
from storage_impls.registry import canonical_spec, get_store_class

PAGE = advice.PAGE


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("hdf5:advice=willneed", "hdf5:advice=willneed"),
        ("hdf5:advice=random,codec=png", "hdf5:codec=png,advice=random"),
        ("npy-memmap:advice=normal", "npy-memmap:advice=normal"),
        ("lmdb:readahead=off", "lmdb:readahead=false"),
        ("lmdb:readahead=1,codec=jpeg-90", "lmdb:codec=jpeg-90,readahead=true"),
    ],
)
def test_options_are_variants_spelled_one_way(spec, canonical):
    assert canonical_spec(spec) == canonical


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hdf5:advice=sequential", "hdf5: advice='sequential' is not allowed; use auto, random, normal, willneed"),
        ("npy-memmap:advice=WILLNEED", "npy-memmap: advice='WILLNEED' is not allowed"),
        ("lmdb:readahead=maybe", "lmdb: readahead='maybe' is not allowed; use true or false"),
    ],
)
def test_bad_values_name_what_is_allowed(spec, message):
    with pytest.raises(ValueError, match=message):
        get_store_class(spec)


def fadvised(monkeypatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, what: calls.append((offset, length)))
    return calls


def test_prefetch_asks_once_per_run_of_adjacent_pages(monkeypatch):
    calls = fadvised(monkeypatch)
    starts = np.array([5 * PAGE + 10, 100, 6 * PAGE, PAGE + 1, 40 * PAGE - 1])
    advice.prefetch(3, starts, starts + 3000)
    # pages 0, 1 (100 and PAGE+1 run to page 1), 5-6 and 6 merged, 39-40
    assert calls == [(0, 2 * PAGE), (5 * PAGE, 2 * PAGE), (39 * PAGE, 2 * PAGE)]


def test_prefetch_merges_a_row_inside_a_longer_one(monkeypatch):
    calls = fadvised(monkeypatch)
    advice.prefetch(3, np.array([0, PAGE, 3 * PAGE]), np.array([10 * PAGE, 2 * PAGE, 4 * PAGE]))
    assert calls == [(0, 10 * PAGE)]


@pytest.mark.parametrize("method", ["hdf5", "hdf5:codec=png", "npy-memmap"])
def test_willneed_prefetches_exactly_the_batch_and_reads_it(tmp_path, monkeypatch, method):
    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), np.uint8)
    with open_store(method, tmp_path) as store:
        store.store_many(images, np.arange(40))
    calls = fadvised(monkeypatch)
    variant = f"{method}{',' if ':' in method else ':'}advice="
    with open_store(variant + "willneed", tmp_path, "r") as store:
        ids = np.array([31, 2, 17])
        got, labels = store.read_batch(ids)
    np.testing.assert_array_equal(got, images[ids])
    np.testing.assert_array_equal(labels, ids)
    assert 1 <= len(calls) <= 3 and all(offset % PAGE == 0 and length % PAGE == 0 for offset, length in calls)
    with open_store(variant + "random", tmp_path, "r") as store:
        calls.clear()
        store.read_batch(np.array([1, 2]))
    assert calls == []


def test_lmdb_readahead_option_reaches_the_environment(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    with open_store("lmdb", tmp_path) as store:
        store.store_many(images, np.arange(3))
    for spec, expected in (("lmdb:readahead=false", False), ("lmdb", True)):  # a tiny store fits: auto reads ahead
        with open_store(spec, tmp_path, "r") as store:
            assert store.readahead is expected
            np.testing.assert_array_equal(store.read_batch(np.array([2, 0]))[0], images[[2, 0]])


def test_auto_reads_around_a_file_that_fits_and_prefetches_batches_of_one_that_does_not(monkeypatch):
    monkeypatch.setattr(advice, "_available_memory", lambda: 100 << 20)
    assert advice.resolve("auto", 50 << 20) == "normal" and advice.resolve("auto", (50 << 20) + 1) == "willneed"
    assert advice.resolve("random", 1) == "random"
    monkeypatch.setattr(advice, "_available_memory", lambda: None)
    assert advice.resolve("auto", 1 << 50) == "normal"


def test_available_memory_is_at_most_memavailable():
    available = advice._available_memory()
    assert available is None or 0 <= available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_windows_cover_the_batch_once_each_prefetched_before_it_is_gathered(monkeypatch):
    calls = fadvised(monkeypatch)
    row = 3 * PAGE
    starts = np.arange(0, 40 * row, row)[::-1].copy()  # 40 rows of 12 KiB, in any order
    monkeypatch.setattr(advice, "WINDOW_BYTES", 10 * row)
    seen = []
    for part in advice.windows(3, starts, starts + row):
        prefetched = [range(offset, offset + length) for offset, length in calls]
        assert all(any(start in done for done in prefetched) for start in starts[part].tolist())
        seen += list(range(part.start, part.stop))
    assert seen == list(range(40)) and len(calls) == 4  # four windows of ten adjacent rows, one run each

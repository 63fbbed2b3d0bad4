"""The soak test's two roles, each run as its own process (``python -m tests.soak writer|readers ...``).

The writer replays a seeded ``History``: generation g is one write, a ``store_single`` (an append or a
replacement) or, now and then, a ``store_many``, and every image it writes carries its (generation, id): the
label is ``g << 32 | id`` and the pixels are that label's 8 bytes over and over. It calls ``compact()`` every
``COMPACT_EVERY`` writes. Readers (processes forked from one) open a read-only handle, read a few batches of
random ids, close it, and again. A reader replays the same history, so it checks every batch against the
store's states: each image is its label's, each id is the one asked for, and every image of the batches read
through one handle holds the version that one committed state has for its id, a state no older than the one the
reader's previous handle read. Each process prints one JSON line of figures when its time is up.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from storage_impls import MissingStoreError, get_store_class, open_store

SHAPE = (16, 16, 3)  # 768 bytes: 96 copies of the label's 8 bytes
MANY_EVERY = 150  # a store_many about once in this many writes
MANY_COUNTS = (200, 1200)  # a store_many writes this many images (low inclusive, high exclusive)
MAX_COUNT = 2000  # appends stop here; replacements go on
COMPACT_EVERY = 100  # the writer compacts after this many writes (the journal folds by itself past 256)
BATCHES_PER_HANDLE, BATCH_SIZE = 2, 64
WARM_UP = 0.25  # a reader's RSS and descriptors are taken as its baseline once this fraction of its time is over
LOCK_TIMEOUT = 5.0  # the writer's: readers never take the lock, so it never waits for it
MAX_ERRORS_SHOWN = 5


def label_of(generation: int, image_id: int) -> int:
    return generation << 32 | image_id


def images_for(labels: np.ndarray) -> np.ndarray:
    """The images that carry ``labels``: each label's 8 bytes repeated over the image."""
    words = np.repeat(np.asarray(labels, "<i8")[:, None], np.prod(SHAPE) // 8, axis=1)
    return words.view(np.uint8).reshape(len(labels), *SHAPE)


class History:
    """The writer's writes, generation 1, 2, ..., made from ``seed`` alone, so that a reader can replay them; it
    keeps only the state after the last generation replayed (so its memory does not grow with the run)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.generation, self.count = 0, 0
        self.versions = np.zeros(max(MAX_COUNT, MANY_COUNTS[1]), np.int64)  # id -> the generation it holds

    def advance(self) -> tuple[str, int]:
        """Replay the next generation: ("many", count) or ("single", id)."""
        self.generation += 1
        if self.count == 0 or self._rng.integers(MANY_EVERY) == 0:
            self.count = int(self._rng.integers(*MANY_COUNTS))
            self.versions[: self.count] = self.generation
            return "many", self.count
        append = self.count < MAX_COUNT and self._rng.integers(2) == 0
        image_id = self.count if append else int(self._rng.integers(self.count))
        self.versions[image_id] = self.generation
        self.count += append
        return "single", image_id

    def state(self, generation: int) -> np.ndarray:
        """The generation each id holds once ``generation`` (not before the last one replayed) has committed."""
        while self.generation < generation:
            self.advance()
        return self.versions[: self.count]


def write(method: str, directory: str, seed: int, ready: Callable[[], float]) -> dict:
    """Replay the history into the store: its first generation, then ``ready()`` gives the time.time() to stop at."""
    history, figures = History(seed), {"writes": 0, "store_many": 0, "compacts": 0, "max_write_seconds": 0.0}
    with open_store(method, directory, lock_timeout=LOCK_TIMEOUT) as store:
        until = 0.0
        while history.generation == 0 or time.time() < until:
            kind, value = history.advance()
            generation = history.generation
            started = time.perf_counter()
            if kind == "many":
                labels = np.array([label_of(generation, image_id) for image_id in range(value)], np.int64)
                store.store_many(images_for(labels), labels)
                figures["store_many"] += 1
            else:
                label = label_of(generation, value)
                store.store_single(images_for(np.array([label]))[0], value, label)
            if generation % COMPACT_EVERY == 0:
                store.compact()
                figures["compacts"] += 1
            figures["max_write_seconds"] = max(figures["max_write_seconds"], time.perf_counter() - started)
            figures["writes"] += 1
            if generation == 1:
                until = ready()
    return figures


def check_handle(history: History, reads: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Raise AssertionError unless the batches one handle read hold one committed state's images and labels, a
    state no older than the one ``history`` was checked against last (a handle opened later never reads older
    data). The state is taken at the newest generation read (or that last one): no write in between touched an id
    read, or its version would have been read."""
    newest = previous = history.generation
    for ids, images, labels in reads:
        np.testing.assert_array_equal(labels & 0xFFFFFFFF, ids, err_msg="an image of another id")
        np.testing.assert_array_equal(images, images_for(labels), err_msg="an image beside another write's label")
        newest = max(newest, int((labels >> 32).max()))
    state = history.state(newest)
    for ids, _, labels in reads:
        assert ids.max() < len(state), f"id {ids.max()} read, but generation {newest} holds {len(state)} images"
        found, expected = labels >> 32, state[ids]
        wrong = np.flatnonzero(found != expected)[:5]
        assert not len(wrong), (
            f"not one committed state (generation {newest}; the previous handle's {previous}): "
            f"ids {ids[wrong].tolist()} hold generations {found[wrong].tolist()}, "
            f"expected {expected[wrong].tolist()}"
        )


def usage() -> tuple[int, int]:
    """(resident bytes, open file descriptors) of this process."""
    with open("/proc/self/statm") as file:
        resident_pages = int(file.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE"), len(os.listdir("/proc/self/fd"))


def read(method: str, directory: str, seed: int, reader: int, until: float) -> dict:
    """Read random batches through one fresh handle after another until ``until``; check each handle's batches."""
    history, rng = History(seed), np.random.default_rng(1000 + reader)
    warm = time.time() + WARM_UP * (until - time.time())
    figures = {"handles": 0, "batches": 0, "expired": 0, "errors": 0, "first_errors": [], "rss": [], "fds": []}
    while time.time() < until:
        try:
            with open_store(method, directory, "r") as store:
                reads = []
                for _ in range(BATCHES_PER_HANDLE):
                    ids = rng.integers(0, len(store), BATCH_SIZE)
                    reads.append((ids, *store.read_batch(ids)))
            check_handle(history, reads)
            figures["batches"] += len(reads)
        except MissingStoreError:  # a commit removed files this handle had yet to open: "open it again"
            figures["expired"] += 1
        except Exception as error:  # noqa: BLE001 -- every other error is a failure the test reports
            figures["errors"] += 1
            if len(figures["first_errors"]) < MAX_ERRORS_SHOWN:
                figures["first_errors"].append(f"{type(error).__name__}: {error}"[:500])
        figures["handles"] += 1
        if time.time() >= warm:
            rss, fds = usage()
            figures["rss"].append(rss)
            figures["fds"].append(fds)
    samples = {name: figures.pop(name) for name in ("rss", "fds")}
    for name, values in samples.items():  # growth past the baseline taken once warm
        figures[f"{name}_baseline"] = values[0] if values else 0
        figures[f"{name}_growth"] = max(values) - values[0] if values else 0
    figures["samples"] = len(samples["rss"])
    return figures


def _ready() -> float:
    """Tell the test the store exists, and read from it when to stop."""
    print("ready", flush=True)
    return float(sys.stdin.readline())


def read_in_processes(method: str, directory: str, seed: int, until: float, readers: int) -> list[dict]:
    """``read`` in ``readers`` processes forked from this one, which imports the method's packages but never opens
    a store (nothing crosses the fork; a method that is not fork-safe gets a fresh forkserver), their figures in
    reader order."""
    cls = get_store_class(method)
    context = multiprocessing.get_context("fork" if cls.fork_safe else "forkserver")
    if not cls.fork_safe:
        context.set_forkserver_preload([cls.__module__])
    with context.Pool(readers) as pool:
        return pool.starmap(read, [(method, directory, seed, reader, until) for reader in range(readers)])


def main() -> None:
    """``writer METHOD DIR SEED`` (then reads the time to stop at from stdin) or ``readers METHOD DIR SEED UNTIL N``;
    prints the figures as one JSON line."""
    role, method, directory, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if role == "writer":
        figures = write(method, directory, seed, _ready)
    else:
        figures = read_in_processes(method, directory, seed, float(sys.argv[5]), int(sys.argv[6]))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()

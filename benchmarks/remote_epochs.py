"""What the remote cells (benchmarks/test_read_remote.py) run in their reader processes besides read_random's epoch:
a stream epoch (storage order through a shuffle buffer), and the object-store client's counters and recorded
requests, read and replayed in each worker (``ReaderPool.call``: every process has its own client and counters).

A stream epoch reads as WebDataset's shard streaming and litdata do: worker ``w`` of ``W`` reads the chunks
``w, w + W, ...`` of ``batch_size`` consecutive ids in storage order (a chunk: one ``read_batch`` of a run of ids,
which the remote readers fetch as one coalesced range per shard or file) into a shuffle buffer of ``buffer``
images; once the buffer holds more than that, each image read sends a random one of the buffer out (WebDataset's
``shuffle(bufsize)``), and at the end the rest leave in random order. Its batches are the images in the order they
leave, ``batch_size`` at a time, dealt as read_random's are (batch ``k`` of worker ``w`` is batch ``w + k W`` of the
epoch). The order is a function of the seed: ``StreamPlan.streamed`` works it out once in the parent (untimed),
with, for each batch, how many of its worker's chunks must have been read before it can leave; the worker reads
chunks until then and sends the batch out of what it holds. So the epoch's permutation is known to the parent and
the pool's exactly-once and pixel checks apply unchanged; the time to the first batch includes filling the buffer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.workers import EpochPlan
from storage_impls import ImageStore
from storage_impls.remote import STATS


@dataclass(frozen=True)
class StreamPlan(EpochPlan):
    """A stream epoch (module docstring): ``permutation`` is the order images leave the shuffle buffers in;
    ``chunks_before[k]``: the chunks batch ``k``'s worker has read when it leaves."""

    buffer: int = 0
    chunks_before: np.ndarray | None = None

    @classmethod
    def streamed(cls, n_images: int, batch_size: int, buffer: int, workers: int, seed: int) -> StreamPlan:
        rng = np.random.default_rng(seed)
        n_batches = math.ceil(n_images / batch_size)
        order, before = np.empty(n_images, np.int64), np.zeros(n_batches, np.int64)
        for worker in range(workers):
            chunks = range(worker, n_batches, workers)
            held: list[int] = []
            left: list[int] = []  # ids in the order they leave the buffer
            read_when: list[int] = []  # the chunks read when each left
            for read, chunk in enumerate(chunks, start=1):
                for image in range(chunk * batch_size, min((chunk + 1) * batch_size, n_images)):
                    held.append(image)
                    if len(held) > buffer:
                        left.append(_take(held, rng))
                        read_when.append(read)
            while held:
                left.append(_take(held, rng))
                read_when.append(len(chunks))
            start = 0
            for chunk in chunks:  # this worker's k-th batch out takes the k-th of its places in the epoch
                size = min(batch_size, n_images - chunk * batch_size)
                order[chunk * batch_size : chunk * batch_size + size] = left[start : start + size]
                before[chunk] = read_when[start + size - 1]
                start += size
        return cls(order, batch_size, buffer, before)

    def read_share(
        self, store: ImageStore, worker: int, batches: tuple[int, ...], arrays: dict[str, np.ndarray]
    ) -> None:
        """In worker ``worker``: read its chunks (the same indexes as its ``batches``) in storage order and send each
        batch out of the buffer into its place in shared memory once its chunks are read; a batch's time runs from
        the end of the previous one (the reads it waited for included)."""
        images, labels = arrays["images"], arrays["labels"]
        seconds, finished, reads = arrays["batch_seconds"], arrays["finished"], arrays["reads"][worker]
        held: dict[int, tuple[np.ndarray, int]] = {}  # id -> (its image, a view into the chunk read, its label)
        read = 0
        for batch in batches:
            start = time.perf_counter()
            while read < self.chunks_before[batch]:
                chunk = batches[read]
                ids = np.arange(chunk * self.batch_size, min((chunk + 1) * self.batch_size, len(self.permutation)))
                chunk_images, chunk_labels = store.read_batch(ids)
                held.update(zip(ids.tolist(), zip(chunk_images, chunk_labels.tolist())))
                read += 1
            where = self.positions(batch)
            leaving = [held.pop(image) for image in self.permutation[where].tolist()]
            np.stack([image for image, _ in leaving], out=images[where])
            labels[where] = [label for _, label in leaving]
            end = time.perf_counter()
            seconds[batch], finished[batch] = end - start, end
            reads[batch] += 1


def _take(held: list[int], rng: np.random.Generator) -> int:
    """A random one of ``held``, removed (swapped with the last first: order inside a buffer is no one's)."""
    index = int(rng.integers(len(held)))
    held[index], held[-1] = held[-1], held[index]
    return held.pop()


# -- run in the workers through ReaderPool.call -------------------------------------------------------------------
_RECORDED: list = []  # this worker's requests of its last recorded epoch, for replay_recorded


def start_counting(store: ImageStore, record: bool) -> None:
    """Zero this process's client counters; ``record``: also keep each request's span, for the floor."""
    STATS.reset(record=record)


def request_counts(store: ImageStore) -> dict[str, int]:
    """This process's requests, bytes and peak requests in flight since ``start_counting``; the spans recorded since
    are kept for ``replay_recorded``."""
    if STATS.recorded is not None:
        _RECORDED[:] = STATS.recorded
    return {"requests": STATS.requests, "bytes": STATS.bytes, "peak": STATS.peak_concurrent}


def replay_recorded(store: ImageStore) -> int:
    """The floor's work in this process: its recorded requests again, as plain concurrent GETs by its client."""
    return store.location.replay(_RECORDED)


def summed(per_worker: list[dict[str, int]]) -> dict[str, int]:
    """Requests and bytes over the workers; the peak in flight: the largest of one worker's (each has its own
    client), and their sum (what the server may have seen at once at most)."""
    return {
        "requests": sum(part["requests"] for part in per_worker),
        "bytes": sum(part["bytes"] for part in per_worker),
        "peak": max(part["peak"] for part in per_worker),
        "peak_sum": sum(part["peak"] for part in per_worker),
    }

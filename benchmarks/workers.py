"""Reader processes for the training-read cells: what a DataLoader's ``num_workers`` does, without torch.

``ReaderPool`` starts ``workers`` processes with the ``spawn`` context, so that no store handle crosses
a fork; each opens its own read-only handle on the store (the class of the method, or method variant,
named by ``method``, through ``open_store``: the directory may be an object-store URL) and reports ready. In each epoch
(``run_epoch``, the timed region of a cell) the parent tells every worker to go and waits: worker ``w``
reads batches ``w, w + workers, ...`` of the plan (dealt out round-robin, as a DataLoader does) with
``read_batch`` straight into one block of ``multiprocessing.shared_memory``, each batch at its place in
the epoch, and records per batch how long the read took, when it finished and that it was read. The
epoch ends when the last worker reports its last batch. (The plan reads: ``EpochPlan.read_share``; the remote
cells' stream plan reads otherwise, benchmarks/remote_epochs.py. ``call`` runs a function on every worker's store,
for what only a worker knows, such as its object-store client's counters.) ``workers=1`` is one reader process
(``num_workers=1``), never the parent, so every worker count runs the same protocol. Workers persist
across the rounds of a cell; their start-up and store open is ``startup_s``, outside every round.

No wait hangs: each has a timeout (``timeout`` seconds without news, where news is a reply or, during
an epoch, a finished batch); a worker that dies or raises fails the epoch with its exit code or its
traceback. ``close`` stops the workers (killing them if they do not stop) and unlinks the shared memory.
Batch times are ``time.perf_counter`` readings, which Linux and macOS take from one system-wide clock,
so the parent can compare them with its own.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from storage_impls import ImageStore, open_store

CONTEXT = multiprocessing.get_context("spawn")
DEFAULT_TIMEOUT = 120.0  # seconds a wait may go without news before the pool gives up
STOP_TIMEOUT = 10.0  # seconds a worker gets to stop (then to die of SIGTERM) before it is killed
POLL_SECONDS = 1.0  # how often a silent wait checks the workers' progress
SHM_DIR = Path("/dev/shm")


class WorkerError(RuntimeError):
    """A reader process died, raised, or stayed silent past the timeout."""


@dataclass(frozen=True)
class EpochPlan:
    """One epoch: every id of the store once, in ``permutation`` order, cut into batches of ``batch_size``
    (the last one shorter when the count does not divide)."""

    permutation: np.ndarray
    batch_size: int

    @classmethod
    def shuffled(cls, n_images: int, batch_size: int, seed: int) -> EpochPlan:
        """Ids 0..n_images-1 in the order of a permutation drawn with ``seed`` (numpy's default generator)."""
        return cls(np.random.default_rng(seed).permutation(n_images), batch_size)

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.permutation) / self.batch_size)

    def positions(self, batch: int) -> slice:
        """Where batch ``batch`` sits in the epoch (and in the permutation)."""
        return slice(batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.permutation)))

    def share(self, worker: int, workers: int) -> tuple[int, ...]:
        """The batches worker ``worker`` of ``workers`` reads: every ``workers``-th, from its own index."""
        return tuple(range(worker, self.n_batches, workers))

    def reads_per_id(self, batch_reads: np.ndarray) -> np.ndarray:
        """How many times each id was read, given how many times each batch was read."""
        lengths = np.minimum(self.batch_size, len(self.permutation) - np.arange(self.n_batches) * self.batch_size)
        weights = np.repeat(batch_reads, lengths)
        return np.bincount(self.permutation, weights=weights, minlength=len(self.permutation)).astype(np.int64)

    def read_share(
        self, store: ImageStore, worker: int, batches: tuple[int, ...], arrays: dict[str, np.ndarray]
    ) -> None:
        """In a worker: read ``batches`` of the epoch with ``read_batch`` straight into their places in shared memory,
        timing each (a plan that reads otherwise, such as benchmarks/remote_epochs.py's stream, overrides this)."""
        images, labels = arrays["images"], arrays["labels"]
        seconds, finished, reads = arrays["batch_seconds"], arrays["finished"], arrays["reads"][worker]
        for batch in batches:
            where = self.positions(batch)
            start = time.perf_counter()
            labels[where] = store.read_batch(self.permutation[where], out=images[where])[1]
            end = time.perf_counter()
            seconds[batch], finished[batch] = end - start, end
            reads[batch] += 1


@dataclass(frozen=True)
class Epoch:
    """What one epoch's workers recorded, copied out of shared memory after it."""

    batch_seconds: np.ndarray  # each batch's read_batch call, by batch index
    first_batch_s: float  # from the go signal to the first finished batch
    reads_per_id: np.ndarray  # 1 everywhere when every id was read exactly once

    @property
    def exactly_once(self) -> bool:
        return bool(np.all(self.reads_per_id == 1))


def latency_summary(epochs: list[Epoch]) -> dict[str, float]:
    """Per-batch read times over these epochs (p50, p99, max) and the median time to the first batch."""
    seconds = np.concatenate([epoch.batch_seconds for epoch in epochs])
    return {
        "batch_p50_s": float(np.percentile(seconds, 50)),
        "batch_p99_s": float(np.percentile(seconds, 99)),
        "batch_max_s": float(seconds.max()),
        "first_batch_s": float(np.median([epoch.first_batch_s for epoch in epochs])),
    }


Layout = dict[str, tuple[tuple[int, ...], str, int]]  # name -> (shape, dtype, byte offset)


def _layout(
    n_images: int, image_shape: tuple[int, ...], image_dtype: np.dtype, n_batches: int, workers: int
) -> tuple[Layout, int]:
    """The arrays the workers fill, packed into one block (64-byte aligned), and the block's size."""
    fields = {
        "images": ((n_images, *image_shape), np.dtype(image_dtype).str),
        "labels": ((n_images,), "int64"),
        "batch_seconds": ((n_batches,), "float64"),
        "finished": ((n_batches,), "float64"),  # perf_counter when each batch was in
        "reads": ((workers, n_batches), "int64"),  # a row per worker: no two processes write one counter
    }
    layout, offset = {}, 0
    for name, (shape, dtype) in fields.items():
        layout[name] = (shape, dtype, offset)
        offset += -(-math.prod(shape) * np.dtype(dtype).itemsize // 64) * 64
    return layout, offset


def _views(buffer: memoryview, layout: Layout) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype, buffer=buffer, offset=offset) for name, (shape, dtype, offset) in layout.items()
    }


@dataclass(frozen=True)
class _WorkerSpec:
    """Everything a worker needs, pickled once at its start: never an open handle."""

    index: int
    method: str  # a method or variant spec, resolved in the worker (variant classes are made at run time)
    directory: str
    store_options: dict
    shm_name: str
    layout: Layout
    plan: EpochPlan
    batches: tuple[int, ...]

    def open(self) -> ImageStore:
        """A read-only handle: ``directory`` may be an object-store URL (``store_options`` then hold
        ``storage_options``)."""
        return open_store(self.method, self.directory, "r", **self.store_options)


def _worker_main(spec: _WorkerSpec, conn: Connection) -> None:
    """A reader process: open the store, then obey "read", "close", "open", a call (``ReaderPool.call``) and "stop"
    until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops the workers
    shm = shared_memory.SharedMemory(spec.shm_name)
    arrays = _views(shm.buf, spec.layout)
    store = None
    try:
        store = spec.open()
        conn.send(("ready",))
        while (command := conn.recv()) != "stop":
            if command == "read":
                spec.plan.read_share(store, spec.index, spec.batches, arrays)
                conn.send(("done",))
            elif isinstance(command, tuple):  # ("call", function, args): function(store, *args)
                conn.send(("result", command[1](store, *command[2])))
            elif command == "close":
                store.close()
                conn.send(("closed",))
            elif command == "open":
                store = spec.open()
                conn.send(("ready",))
    except EOFError:
        pass  # the parent is gone: nothing left to report to
    except BaseException:  # noqa: BLE001  (any failure is reported, then the process exits with code 1)
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        sys.exit(1)
    finally:
        if store is not None:
            store.close()
        arrays.clear()
        shm.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


class ReaderPool:
    """``workers`` spawned reader processes over one store, reading ``plan``'s epochs into shared memory.

    Use as a context manager (or call ``close``). Per round: ``prepare_round`` (untimed), ``run_epoch``
    (timed); for a cold round ``close_stores`` and ``open_stores`` around dropping the page cache.
    ``epochs()`` returns what every finished epoch recorded; ``read_back()`` the last epoch's pixels.
    """

    def __init__(
        self,
        method: str,
        directory: Path,
        plan: EpochPlan,
        image_shape: tuple[int, ...],
        workers: int,
        *,
        image_dtype: np.dtype | str = np.uint8,
        store_options: dict | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.plan, self.workers, self.timeout = plan, workers, timeout
        layout, size = _layout(len(plan.permutation), tuple(image_shape), image_dtype, plan.n_batches, workers)
        if SHM_DIR.is_dir() and size > shutil.disk_usage(SHM_DIR).free:
            raise MemoryError(
                f"the epoch buffer needs {size / 1e9:.2f} GB of shared memory, {SHM_DIR} has "
                f"{shutil.disk_usage(SHM_DIR).free / 1e9:.2f} GB free: lower --cutoffs or --image-shape"
            )
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self._arrays = _views(self._shm.buf, layout)
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._epochs: list[Epoch] = []
        self._started: float | None = None  # perf_counter of the last epoch's go signal, until it is accounted
        self._closed = False
        start = time.perf_counter()
        try:
            for index in range(workers):
                spec = _WorkerSpec(
                    index,
                    method,
                    str(directory),
                    dict(store_options or {}),
                    self._shm.name,
                    layout,
                    plan,
                    plan.share(index, workers),
                )
                parent_end, child_end = CONTEXT.Pipe()
                process = CONTEXT.Process(
                    target=_worker_main, args=(spec, child_end), name=f"image-storage-reader-{index}", daemon=True
                )
                process.start()
                child_end.close()  # so that the parent sees EOF if the worker dies
                self._processes.append(process)
                self._conns.append(parent_end)
            self._collect("ready")
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - start  # spawning, imports and store open of every worker

    @property
    def pids(self) -> tuple[int, ...]:
        """The worker processes' ids."""
        return tuple(process.pid for process in self._processes)

    def prepare_round(self) -> None:
        """Untimed, before each epoch: record the previous epoch, then clear everything workers write, so that
        an epoch that skips work cannot pass on an earlier epoch's data."""
        self._account()
        for name, array in self._arrays.items():
            array.fill(-1 if name == "labels" else 0)

    def run_epoch(self) -> None:
        """The timed region: tell every worker to read its share, return when the last batch is in."""
        self._started = time.perf_counter()
        self._broadcast("read", "done", progress=lambda: int(self._arrays["reads"].sum()))

    def call(self, function: Callable, *args: object) -> list:
        """Every worker runs ``function(its store, *args)`` (a module-level function: it is pickled) at once;
        their results, by worker. For what a worker process knows and the parent does not (its own counters)."""
        return self._broadcast(("call", function, args), "result")

    def close_stores(self) -> None:
        """Every worker closes its store handle (and with it any memory map), as a cold round needs."""
        self._broadcast("close", "closed")

    def open_stores(self) -> None:
        """Every worker opens its store again."""
        self._broadcast("open", "ready")

    def epochs(self) -> list[Epoch]:
        """What every epoch run so far recorded, in order (the first is the measuring run's warm-up)."""
        self._account()
        return list(self._epochs)

    def read_back(self) -> tuple[np.ndarray, np.ndarray]:
        """The last epoch's images and labels put back in id order: copies, so that nothing outside the
        pool holds a view of its shared memory."""
        images, labels = self._arrays["images"], self._arrays["labels"]
        in_order = np.empty_like(images), np.empty_like(labels)
        in_order[0][self.plan.permutation], in_order[1][self.plan.permutation] = images, labels
        return in_order

    def close(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL, if they do not stop in time) and unlink the shared memory."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send("stop")
            except OSError:
                pass  # that worker is gone already
        for process in self._processes:
            process.join(min(STOP_TIMEOUT, self.timeout))
        for force in ("terminate", "kill"):
            for process in self._processes:
                if process.is_alive():
                    getattr(process, force)()
                    process.join(STOP_TIMEOUT)
        for conn in self._conns:
            conn.close()
        self._arrays.clear()
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _account(self) -> None:
        """Copy the last epoch's records out of shared memory, once."""
        if self._started is None:
            return
        finished = self._arrays["finished"]
        self._epochs.append(
            Epoch(
                batch_seconds=self._arrays["batch_seconds"].copy(),
                first_batch_s=float(finished.min() - self._started),
                reads_per_id=self.plan.reads_per_id(self._arrays["reads"].sum(axis=0)),
            )
        )
        self._started = None

    def _broadcast(self, command: str | tuple, reply: str, progress: Callable[[], int] = lambda: 0) -> list:
        """Send ``command`` to every worker and wait until each has replied ``reply`` (what came with the replies, by
        worker); WorkerError if one dies, raises, or no news comes (no reply and no change in ``progress``) for
        ``timeout`` seconds."""
        for index, conn in enumerate(self._conns):
            try:
                conn.send(command)
            except OSError:  # its end of the pipe is closed: the worker is gone
                raise self._failure(index, None) from None
        return self._collect(reply, progress)

    def _collect(self, expected: str, progress: Callable[[], int] = lambda: 0) -> list:
        """Each worker's reply ``expected`` (what came with it, by worker); WorkerError as for ``_broadcast``."""
        pending, results = set(range(self.workers)), [None] * self.workers
        last_progress, deadline = progress(), time.monotonic() + self.timeout
        while pending:
            waiting = [self._conns[index] for index in pending] + [self._processes[index].sentinel for index in pending]
            ready = wait(waiting, timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            for index in sorted(pending):
                if self._conns[index] in ready or self._processes[index].sentinel in ready:
                    reply, *payload = self._receive(index)
                    if reply != expected:
                        raise WorkerError(f"worker {index} replied {reply!r}, expected {expected!r}")
                    results[index] = payload[0] if payload else None
                    pending.discard(index)
            if ready:
                deadline = time.monotonic() + self.timeout
            elif (now_progress := progress()) != last_progress:
                last_progress, deadline = now_progress, time.monotonic() + self.timeout
            elif time.monotonic() >= deadline:
                raise WorkerError(
                    f"worker(s) {sorted(pending)} sent no {expected!r} and made no progress for {self.timeout:.0f} s"
                )
        return results

    def _receive(self, index: int) -> tuple:
        """Worker ``index``'s reply (its word, then what came with it); WorkerError (with its exit code and
        traceback) if it failed or died."""
        conn = self._conns[index]
        try:
            message = conn.recv() if conn.poll() else None
        except EOFError:
            message = None
        if message is not None and message[0] != "error":
            return message
        raise self._failure(index, message[1] if message else None)

    def _failure(self, index: int, error: str | None) -> WorkerError:
        """The error of a worker that failed, naming its exit code and, if it sent one, its traceback."""
        process = self._processes[index]
        process.join(STOP_TIMEOUT)
        detail = f":\n{error}" if error else " without a word"
        return WorkerError(
            f"reader worker {index} (pid {process.pid}) failed and {_describe_exit(process.exitcode)}{detail}"
        )

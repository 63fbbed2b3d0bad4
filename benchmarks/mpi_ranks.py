"""Each rank's side of benchmarks/mpi.py: collectives that cannot hang, one error message for all ranks, the rank's
share of an epoch, its reading (``RankReader``) and the checks of what it read.

Every collective goes through ``Guard``: it is started non-blocking (``Ibarrier``, ``Iallgather``, ...) and polled until
it completes. A rank that waits longer than ``timeout`` seconds at one collective (ranks other than 0: PEER_GRACE_S
more, so that only rank 0 speaks unless it is the one stuck) prints where it waited and calls ``MPI_Abort``, which ends
every rank of the job: a rank stuck in I/O, or gone without MPI noticing, cannot hang the others. A failure on one
rank never ends that rank alone (its peers would wait for it in their next collective): ``Guard.run`` and
``Guard.exchange`` catch it and allgather every rank's error after each step, so that all ranks learn together, rank 0
prints the errors once and every rank raises ``RankFailure`` with the same exit status.

What a rank read is checked two ways, untimed: each image and label against the reference rank 0 sent (a 64-bit hash
and the label of every image), and the ids read, whose count and ``id_digest`` the ranks add up to check that every id
was read exactly once. This module does not import mpi4py (the communicator is passed in), so that tests can use
``id_digest`` and ``share`` without starting MPI.
"""

from __future__ import annotations

import math
import pickle
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from benchmarks import cache as page_cache
from benchmarks.machine import available_memory
from benchmarks.mpi_reference import image_hashes
from benchmarks.workers import EpochPlan
from storage_impls import ImageStore, MissingStoreError, StoreError

if TYPE_CHECKING:
    from mpi4py import MPI

T = TypeVar("T")
EXIT_TIMEOUT = 3  # exit status of a job that a timed-out wait ended with MPI_Abort
PEER_GRACE_S = 10.0  # ranks other than 0 wait this much longer: one message (rank 0's), unless rank 0 is stuck
ABORT_DELAY_S = 1.0  # between printing why and MPI_Abort: the launcher may drop output it has not forwarded yet
SPIN_S = 0.001  # a wait polls without sleeping for this long (the barrier before a timed epoch is about this short)
MAX_PAUSE_S = 0.01  # then it sleeps between polls: a tenth of the time waited so far, at most this
CLOCK_PINGS, CLOCK_TAG = 16, 7  # Guard.clock_offset: pings per rank, and their MPI tag
MEMORY_SHARE = 0.8  # a node's ranks may fill this share of its available memory with buffers and references
MESSAGE_ERRORS = (OSError, ValueError, ImportError, MemoryError, StoreError)  # their message says it all
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


class RankFailure(Exception):
    """A step failed on some rank: raised on every rank alike, after rank 0 has printed why."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def describe(error: BaseException) -> str:
    """One line for an error: its message, plus its type and where it was raised when it is not an expected one."""
    if isinstance(error, MESSAGE_ERRORS):
        return str(error) or type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def share(permutation: np.ndarray, rank: int, ranks: int) -> np.ndarray:
    """Rank ``rank``'s ids of an epoch: every ``ranks``-th id of the permutation from position ``rank``, as torch's
    DistributedSampler deals them, without its padding (it repeats ids until ``ranks`` divides the count): shares
    differ by at most one id and together hold every id exactly once."""
    return np.ascontiguousarray(permutation[rank::ranks])


def id_digest(ids: np.ndarray) -> int:
    """Sum, modulo 2**64, of a 64-bit mix (splitmix64's finaliser) of each id. Digests of disjoint parts add up to
    the digest of the whole, and an id read twice or never changes the sum (but for a 2**-64 chance), so the ranks'
    digests of an epoch add up to ``id_digest(np.arange(n))`` exactly when every id was read once."""
    mixed = np.asarray(ids).astype(np.uint64) + _MIX[0]
    mixed = (mixed ^ (mixed >> np.uint64(30))) * _MIX[1]
    mixed = (mixed ^ (mixed >> np.uint64(27))) * _MIX[2]
    mixed ^= mixed >> np.uint64(31)
    return int(mixed.sum(dtype=np.uint64))


def _rank_list(failures: Sequence[tuple[int, str]]) -> str:
    """ "rank 1 on node3", "ranks 1, 4 on node3, node7", "ranks 1, 2, 3, ... (40 ranks) on ..."."""
    ranks = [str(rank) for rank, _ in failures]
    shown = ", ".join(ranks) if len(ranks) <= 8 else f"{', '.join(ranks[:3])}, ... ({len(ranks)} ranks)"
    hosts = list(dict.fromkeys(host for _, host in failures))
    shown_hosts = ", ".join(hosts) if len(hosts) <= 4 else f"{', '.join(hosts[:3])}, ... ({len(hosts)} nodes)"
    return f"{'rank' if len(ranks) == 1 else 'ranks'} {shown} on {shown_hosts}"


class Guard:
    """The job's collectives, each bounded by ``timeout`` seconds of waiting; ``prog`` starts every message."""

    def __init__(self, comm: MPI.Intracomm, timeout: float, prog: str) -> None:
        self.comm, self.timeout, self.prog = comm, timeout, prog
        self.rank, self.size, self.host = comm.Get_rank(), comm.Get_size(), platform.node()
        self.limit = timeout if self.rank == 0 else timeout + PEER_GRACE_S

    def barrier(self, what: str, spin: bool = False) -> None:
        """Wait for every rank; ``spin``: poll without sleeping, so that all ranks leave within microseconds (the
        start of a timed epoch), at the cost of a busy core while waiting."""
        self._wait(self.comm.Ibarrier(), what, spin)

    def clock_offset(self, hosts: Sequence[str], what: str, pings: int = CLOCK_PINGS) -> tuple[float, float | None]:
        """(this rank's ``time.perf_counter`` minus rank 0's at the same instant, the round trip that measured it), so
        that every rank's times go on rank 0's clock. On rank 0's node the offset is 0, measured by nothing:
        ``perf_counter`` is CLOCK_MONOTONIC, one clock for the whole machine. A rank on another node pings rank 0
        ``pings`` times (Cristian's algorithm; rank 0 answers each such rank in turn) and keeps the ping of the
        shortest round trip, whose offset is off by at most half that round trip."""
        buffer, best = np.zeros(1), (math.inf, 0.0)
        for peer in (rank for rank, host in enumerate(hosts) if host != hosts[0]):
            for _ in range(pings if self.rank in (0, peer) else 0):
                if self.rank == 0:
                    self._wait(self.comm.Irecv(buffer, source=peer, tag=CLOCK_TAG), what, spin=True)
                    buffer[0] = time.perf_counter()
                    self._wait(self.comm.Isend(buffer, dest=peer, tag=CLOCK_TAG), what, spin=True)
                    continue
                sent = time.perf_counter()
                self._wait(self.comm.Isend(buffer, dest=0, tag=CLOCK_TAG), what, spin=True)
                self._wait(self.comm.Irecv(buffer, source=0, tag=CLOCK_TAG), what, spin=True)
                back = time.perf_counter()
                best = min(best, (back - sent, (sent + back) / 2 - float(buffer[0])))
        self.barrier(what)
        return (0.0, None) if hosts[self.rank] == hosts[0] else (best[1], best[0])

    def allgather(self, value: Any, what: str) -> list[Any]:
        """Every rank's ``value`` (pickled), in rank order, on every rank."""
        data = np.frombuffer(bytearray(pickle.dumps(value)), np.uint8)
        sizes = np.empty(self.size, np.int64)
        self._wait(self.comm.Iallgather(np.array([data.size], np.int64), sizes), what)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        received = np.empty(int(sizes.sum()), np.uint8)
        self._wait(self.comm.Iallgatherv(data, [received, (sizes.tolist(), offsets.tolist())]), what)
        return [
            pickle.loads(received[start : start + size].tobytes()) for start, size in zip(offsets, sizes, strict=True)
        ]

    def bcast(self, value: Any, what: str) -> Any:
        """Rank 0's ``value`` (pickled) on every rank."""
        data = np.frombuffer(bytearray(pickle.dumps(value)), np.uint8) if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], np.int64)
        self._wait(self.comm.Ibcast(size, root=0), what)
        if data is None:
            data = np.empty(int(size[0]), np.uint8)
        self._wait(self.comm.Ibcast(data, root=0), what)
        return value if self.rank == 0 else pickle.loads(data.tobytes())

    def exchange(self, what: str, error: str | None, payload: Any = None, code: int = 1) -> list[Any]:
        """Every rank's ``payload`` in rank order; if any rank brings an ``error``, rank 0 prints every error
        (once per distinct message) and every rank raises RankFailure(``code``)."""
        gathered = self.allgather((error, self.host, payload), what)
        failures = [(rank, host, message) for rank, (message, host, _) in enumerate(gathered) if message]
        if failures:
            if self.rank == 0:
                self._report(what, failures)
            raise RankFailure(code)
        return [payload for _, _, payload in gathered]

    def run(self, what: str, action: Callable[[], T], code: int = 1) -> T:
        """``action()`` on this rank, then an exchange of errors: its result where every rank succeeded."""
        try:
            result, error = action(), None
        except Exception as exc:  # noqa: BLE001  (every failure must reach the other ranks, not end this one)
            result, error = None, describe(exc)
        self.exchange(what, error, code=code)
        return result

    def fail_all(self, message: str, code: int = 1) -> None:
        """End a step that every rank found failed from the same gathered figures: rank 0 prints ``message``."""
        if self.rank == 0:
            print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        raise RankFailure(code)

    def _report(self, what: str, failures: Sequence[tuple[int, str, str]]) -> None:
        messages = list(dict.fromkeys(message for _, _, message in failures))
        if len(failures) == self.size and len(messages) == 1:  # the same on every rank: the input, not a rank
            print(f"{self.prog}: error: {messages[0]}", file=sys.stderr, flush=True)
            return
        for message in messages:
            ranks = _rank_list([(rank, host) for rank, host, text in failures if text == message])
            print(f"{self.prog}: error: {ranks}, {what}: {message}", file=sys.stderr, flush=True)

    def _wait(self, request: MPI.Request, what: str, spin: bool = False) -> None:
        """Poll ``request`` until it completes (sleeping between polls after SPIN_S, unless ``spin``); past ``timeout``
        seconds (PEER_GRACE_S more on ranks other than 0), say so and abort every rank."""
        start = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - start
            if waited > self.limit:
                print(
                    f"{self.prog}: error: rank {self.rank} on {self.host} waited {self.limit:g} s for the other "
                    f"ranks at {what}: a rank is stuck or gone; ending every rank (if this step takes longer on "
                    "this cluster, raise --timeout)",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(ABORT_DELAY_S)
                self.comm.Abort(EXIT_TIMEOUT)
            if waited > SPIN_S and not spin:
                time.sleep(min(MAX_PAUSE_S, waited / 10))


@dataclass(frozen=True)
class StoreInfo:
    """What rank 0 tells every rank about the store."""

    directory: str | None  # the store rank 0 built; None: each rank opens its own --store
    n_images: int  # ids 0..n_images-1 make an epoch
    image_shape: tuple[int, ...]
    dtype: str

    @property
    def image_bytes(self) -> int:
        return math.prod(self.image_shape) * np.dtype(self.dtype).itemsize


def check_memory(needed: int, what: str) -> None:
    """MemoryError unless ``needed`` bytes fit in this node's share for buffers (MEMORY_SHARE of what is available)."""
    if needed > MEMORY_SHARE * available_memory():
        raise MemoryError(
            f"{what} need {needed / 1e9:.2f} GB, this node has {available_memory() / 1e9:.2f} GB "
            "available: lower --images (or run fewer ranks per node)"
        )


class RankReader:
    """One rank's reading: its own read-only handle, its own buffer (its share of an epoch) and its records."""

    def __init__(
        self,
        cls: type[ImageStore],
        directory: Path,
        info: StoreInfo,
        batch_size: int,
        rank: int,
        ranks: int,
        node_ranks: int,
        hint: str,
        store_options: dict | None = None,
    ) -> None:
        self.cls, self.directory, self.info, self.batch_size, self.hint = cls, directory, info, batch_size, hint
        self.store_options = dict(store_options or {})
        self.rank, self.ranks = rank, ranks
        count = len(range(rank, info.n_images, ranks))
        check_memory(
            node_ranks * (count * (info.image_bytes + 8) + 16 * info.n_images),
            f"the buffers and references of the {node_ranks} ranks on this node",
        )
        self.images = np.zeros((count, *info.image_shape), info.dtype)
        self.labels = np.full(count, -1, np.int64)
        self.store: ImageStore | None = None
        start = time.perf_counter()
        self.open()
        self.startup_s = time.perf_counter() - start

    def open(self) -> None:
        try:
            store = self.cls(self.directory, "r", **self.store_options)
        except MissingStoreError as error:
            raise MissingStoreError(f"{error} ({self.hint})") from None
        seen = (len(store), store.image_shape, str(store.image_dtype))
        if seen[0] < self.info.n_images or seen[1:] != (self.info.image_shape, self.info.dtype):
            store.close()
            raise ValueError(
                f"the store at {self.directory} holds {seen[0]} images of {seen[1]} {seen[2]} here, rank 0 "
                f"saw {self.info.n_images} of {self.info.image_shape} {self.info.dtype}: the path names different "
                "stores on different nodes"
            )
        self.store = store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def prepare(self, permutation: np.ndarray) -> None:
        """Untimed: this epoch's share and batches; the buffer cleared, so that a skipped read cannot pass."""
        self.ids = share(permutation, self.rank, self.ranks)
        self.plan = EpochPlan(self.ids, self.batch_size)
        self.images.fill(0)
        self.labels.fill(-1)
        self.seconds = np.zeros(self.plan.n_batches)
        self.reads = np.zeros(self.plan.n_batches, np.int64)

    def read(self) -> tuple[float, float, float, str | None]:
        """The timed region: every batch of the share into the buffer. (start, end: this rank's perf_counter; seconds
        to the first batch; error)."""
        start = time.perf_counter()
        first, error = math.nan, None
        try:
            for batch in range(self.plan.n_batches):
                where = self.plan.positions(batch)
                begun = time.perf_counter()
                self.labels[where] = self.store.read_batch(self.ids[where], out=self.images[where])[1]
                end = time.perf_counter()
                self.seconds[batch] = end - begun
                self.reads[batch] += 1
                if batch == 0:
                    first = end - start
        except Exception as exc:  # noqa: BLE001  (reported to every rank by the exchange that follows)
            error = describe(exc)
        return start, time.perf_counter(), first, error

    def check(self, hashes: np.ndarray, labels: np.ndarray) -> tuple[int, int, str | None]:
        """Untimed: (ids read, their digest, error if an image or label read differs from the reference)."""
        lengths = np.minimum(self.batch_size, len(self.ids) - np.arange(self.plan.n_batches) * self.batch_size)
        read = np.repeat(self.ids, np.repeat(self.reads, lengths))
        wrong = (image_hashes(self.images) != hashes[self.ids]) | (self.labels != labels[self.ids])
        error = None
        if wrong.any():
            error = (
                f"{np.count_nonzero(wrong)} of {len(wrong)} images or labels read differ from what was stored "
                f"(the first: id {self.ids[wrong][0]})"
            )
            if self.info.directory:
                error += f"; if an earlier run built {self.directory}, remove it and rank 0 builds it anew"
        return len(read), id_digest(read), error


def check_resident(directory: Path) -> float:
    """The share of the store's pages in this node's page cache once every rank has reopened it after the drop;
    ValueError when it is more than a cold epoch may start with (benchmarks.cache.too_resident)."""
    resident = page_cache.resident_fraction(directory)
    if problem := page_cache.too_resident(directory, resident):
        raise ValueError(f"on this node {problem}: does another process hold it open or mapped?")
    return resident

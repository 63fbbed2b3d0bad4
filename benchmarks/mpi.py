"""The shuffled training epoch of the read_random cells, read by MPI ranks on one machine or many (docs/cluster.md):
``mpiexec -n R python -m benchmarks.mpi --method lmdb [--store PATH] [--output run.json] ...``.

Rank 0 builds the store (the suite's synthetic images, seed 0, under --scratch, which every rank must see; kept
for later runs) or checks the one --store names, and makes the reference every read is checked against: a
64-bit hash and the label of each image, of the images it stored (for a --store or a lossy codec: of the store's
``read_many``), broadcast to every rank. Each rank opens its own read-only handle and fills its own buffer.
Epoch e (0 is an untimed warm-up, 1..K are measured) deals ``default_rng(permutation_seed + e).permutation(N)``
out as torch's DistributedSampler does, without padding (benchmarks.mpi_ranks.share), and each rank reads its
share in batches with ``read_batch``. Timed per rank: from leaving a barrier to its last batch; the epoch takes
the slowest rank's time. Untimed, after each epoch: each rank's images and labels against the reference, and the
ranks' counts and digests of the ids read against every id exactly once. ``--cache cold``: before each epoch the
ranks close their handles, one rank per node drops the store from its node's page cache (benchmarks.cache), and
they reopen. A new permutation each epoch, as DistributedSampler's ``set_epoch`` gives, unlike the single-machine
cells' one repeated epoch: repeated, each node would read the same share every epoch, which its page cache holds.

The run is one read_random cell (workers = ranks) in pytest-benchmark JSON (benchmarks.mpi_output), which
``python -m reports`` and ``python -m reports compare`` read; ``--append`` adds it to an earlier run's file, so that
runs with R = 1, 2, 4, ... make one scaling chart. Every wait between ranks is bounded by --timeout
(benchmarks.mpi_ranks).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import numpy as np

from benchmarks import cache as page_cache
from benchmarks.mpi_output import UsageError, build_document, read_document, summary, write_output
from benchmarks.mpi_ranks import (
    ABORT_DELAY_S,
    Guard,
    RankFailure,
    RankReader,
    StoreInfo,
    check_memory,
    check_resident,
    describe,
    id_digest,
)
from benchmarks.mpi_reference import check_content, describe_dataset, load_dataset, reference
from benchmarks.options import DatasetSpec, parse_dataset, parse_dtype, parse_shape
from storage_impls import ImageStore, MissingStoreError, get_store_class
from storage_impls.registry import canonical_spec

PROG = "python -m benchmarks.mpi"
DEFAULT_IMAGES, DEFAULT_SHAPE, DEFAULT_TIMEOUT = 10_000, (32, 32, 3), 600.0
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")  # the launcher's rank, before MPI


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised, to be printed once, and whose help only rank 0 prints."""

    rank = 0

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().strip()}")

    def _print_message(self, message: str, file=None) -> None:
        if self.rank == 0:
            super()._print_message(message, file)


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Read shuffled epochs of one store with every MPI rank (run under mpiexec, "
        "mpirun or srun) and write the run as pytest-benchmark JSON.",
    )
    parser.add_argument("--method", required=True, help="storage method or variant (lmdb, hdf5, disk:codec=png, ...)")
    parser.add_argument(
        "--store",
        type=Path,
        help="read this existing store of --method, at a path every rank sees "
        "(default: rank 0 builds one of synthetic images under --scratch)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("."),
        help="where rank 0 builds the store, on a filesystem every rank sees; the store is kept and "
        "reused by later runs (default: the current directory)",
    )
    parser.add_argument(
        "--images",
        type=_positive,
        help=f"images per epoch (default {DEFAULT_IMAGES:,}; with --store all it holds, or its ids 0..N-1)",
    )
    parser.add_argument(
        "--image-shape", type=parse_shape, help="shape of the synthetic images: HxW or HxWxC (default 32x32x3)"
    )
    parser.add_argument("--dtype", type=parse_dtype, help="dtype of the synthetic images (default uint8)")
    parser.add_argument(
        "--dataset",
        type=parse_dataset,
        default=DatasetSpec("synthetic"),
        help="the images the store holds, which every read is checked against: synthetic (the suite's, "
        "seed 0; the default), cifar10:PATH, mnist:PATH or folder:PATH, as the suite takes them",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=256, help="ids per read_batch call of each rank (default %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        "--epochs",
        type=_positive,
        default=10,
        help="measured epochs, after one untimed warm-up epoch (default %(default)s)",
    )
    parser.add_argument(
        "--cache",
        choices=("warm", "cold"),
        default="warm",
        help="cold: drop the store from each node's page cache before every epoch (default %(default)s)",
    )
    parser.add_argument(
        "--permutation-seed",
        type=int,
        default=0,
        help="epoch e reads the permutation of seed + e (default %(default)s)",
    )
    parser.add_argument("--output", type=Path, help="write the run here as pytest-benchmark JSON")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the cell to the --output file of earlier runs (replacing one of the same name)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help="seconds a rank waits for the others at any one step before it ends the job (default %(default)g)",
    )
    return parser


def check_arguments(args: argparse.Namespace, rank: int) -> type[ImageStore]:
    """The store class of --method, once the options agree with each other (and, on rank 0, --append's file)."""
    if args.store is not None and (args.image_shape is not None or args.dtype is not None):
        raise UsageError("--image-shape and --dtype describe the synthetic images rank 0 makes: a --store has its own")
    if args.append and args.output is None:
        raise UsageError("--append needs --output")
    if args.cache == "cold" and (reason := page_cache.supported()):
        raise UsageError(reason)
    if rank == 0 and args.append and args.output.exists():
        read_document(args.output)
    return get_store_class(args.method)


def prepare_store(args: argparse.Namespace, cls: type[ImageStore]) -> tuple[StoreInfo, np.ndarray, np.ndarray, Path]:
    """Rank 0: open --store, or build the store of --dataset under --scratch (reusing one an earlier run built);
    its description, the reference (hash, label) of every image of the epoch, made from the dataset
    (benchmarks.mpi_reference), and the store's path."""
    if args.store is not None:
        with cls(args.store, "r") as store:
            count, shape, dtype, codec = len(store), tuple(store.image_shape), store.image_dtype, store.codec_spec
        n_images = args.images or count
        if not 1 <= n_images <= count:
            raise ValueError(
                f"the {args.method} store at {args.store} holds {count} images, "
                f"{'none to read' if not count else f'not --images {n_images}'}"
            )
        made = count if args.dataset.name == "synthetic" else n_images
        check_memory(2 * made * math.prod(shape) * dtype.itemsize, f"rank 0's copy of {describe_dataset(args.dataset)}")
        images, labels = load_dataset(args.dataset, n_images, shape, dtype, made)
        return StoreInfo(None, n_images, shape, str(dtype)), *reference(codec, images, labels), args.store
    count = args.images or DEFAULT_IMAGES
    shape = args.image_shape or (DEFAULT_SHAPE if args.dataset.name == "synthetic" else None)
    dtype = np.dtype(np.uint8) if args.dtype is None else args.dtype
    if shape is not None:
        check_memory(
            2 * count * math.prod(shape) * dtype.itemsize, f"rank 0's copy of {describe_dataset(args.dataset)}"
        )
    images, labels = load_dataset(args.dataset, count, shape, dtype)
    info = StoreInfo(None, count, tuple(images.shape[1:]), str(images.dtype))
    prefix = "" if args.dataset.name == "synthetic" else f"{args.dataset.name}-"
    name = (
        f"{re.sub(r'[^A-Za-z0-9._=-]+', '_', canonical_spec(args.method))}-{prefix}{count}-"
        f"{'x'.join(map(str, info.image_shape))}-{info.dtype}"
    )
    directory = (args.scratch / "image-storage-mpi" / name).resolve()
    try:
        with cls(directory, "r") as store:
            holds = (len(store), store.image_shape, store.image_dtype) == (count, info.image_shape, images.dtype)
    except MissingStoreError:
        holds = False
    with cls(directory, "r" if holds else "a") as store:
        if not holds:
            store.store_many(images, labels)
        codec = store.codec_spec
    return dataclasses.replace(info, directory=str(directory)), *reference(codec, images, labels), directory


def _check(
    cls: type[ImageStore],
    info: StoreInfo,
    hashes: np.ndarray,
    labels: np.ndarray,
    directory: Path,
    dataset: DatasetSpec,
) -> str:
    """Rank 0, untimed: the store's content digest, once its images and labels are the dataset's."""
    hint = (
        "an earlier run built it: remove it and rank 0 builds it anew"
        if info.directory
        else f"it was checked against {describe_dataset(dataset)}: name what it holds with --dataset"
    )
    with cls(directory, "r") as store:
        return check_content(store, hashes, labels, f"the {cls.method} store at {directory}", hint)


def run(args: argparse.Namespace, cls: type[ImageStore], guard: Guard) -> None:
    """Every step of the run, on every rank; rank 0 writes the output."""
    started = datetime.now(timezone.utc).isoformat()
    hosts = guard.allgather(guard.host, "start-up")
    prepared = guard.run(
        "preparing the store", lambda: prepare_store(args, cls) if guard.rank == 0 else None, code=EXIT_BAD_INPUT
    )
    info, hashes, labels = guard.bcast(prepared and prepared[:3], "sending the store's description and reference")
    if guard.size > info.n_images:
        guard.fail_all(
            f"{guard.size} ranks for {info.n_images} images: every rank needs at least one image per epoch; "
            "run fewer ranks or more --images",
            code=EXIT_BAD_INPUT,
        )
    store_digest = guard.run(
        "checking the store's content against the dataset",
        lambda: None if guard.rank else _check(cls, *prepared, args.dataset),
    )
    directory = Path(info.directory) if info.directory else args.store
    hint = (
        "--store must name a store that every rank sees, on a shared filesystem"
        if info.directory is None
        else "rank 0 built it under --scratch, which every rank must see: a folder on a shared filesystem"
    )
    read_cache = guard.bcast(
        guard.run(
            "sizing the readers' own cache",
            lambda: None if guard.rank else page_cache.read_cache_options(cls, args.method, directory),
        ),
        "sending the readers' cache size",
    )  # benchmarks.cache: below the store, as the suite's
    reader = guard.run(
        "opening the store",
        lambda: RankReader(
            cls, directory, info, args.batch_size, guard.rank, guard.size, hosts.count(guard.host), hint, read_cache
        ),
        code=EXIT_BAD_INPUT,
    )
    leader = hosts.index(guard.host) == guard.rank  # one rank per node drops the node's page cache
    offset, round_trip = guard.clock_offset(hosts, "synchronising the clocks")  # perf_counter here minus rank 0's
    expected = id_digest(np.arange(info.n_images))
    epochs: list[dict] = []
    for epoch in range(args.rounds + 1):
        resident = None
        if args.cache == "cold":
            guard.run(f"closing the stores before epoch {epoch}", reader.close)
            guard.run(
                f"dropping the store from the page cache before epoch {epoch}",
                lambda: page_cache.evict(directory) if leader else None,
            )
            guard.run(f"reopening the stores before epoch {epoch}", reader.open)
            resident = guard.run(
                f"measuring what stayed cached before epoch {epoch}",  # once every rank has opened
                lambda: check_resident(directory) if leader else None,
            )
        permutation = np.random.default_rng(args.permutation_seed + epoch).permutation(info.n_images)
        guard.run(f"preparing epoch {epoch}", functools.partial(reader.prepare, permutation))
        guard.barrier(f"the start of epoch {epoch}", spin=True)
        start, end, first, error = reader.read()
        timings = guard.exchange(f"reading epoch {epoch}", error, (end - start, first, start - offset, end - offset))
        count, digest, error = reader.check(hashes, labels)
        tallies = guard.exchange(f"checking epoch {epoch}", error, (count, digest))
        total, digests = sum(tally[0] for tally in tallies), sum(tally[1] for tally in tallies) % 2**64
        if (total, digests) != (info.n_images, expected):
            guard.fail_all(
                f"epoch {epoch}: the ranks read {total} ids of {info.n_images}, with digest {digests:#x} where "
                f"every id once gives {expected:#x}: ids were read twice or never"
            )
        epochs.append(
            {
                "seconds": [timing[0] for timing in timings],
                "first": [timing[1] for timing in timings],
                "span": max(timing[3] for timing in timings) - min(timing[2] for timing in timings),
                "digests": [d for _, d in tallies],
                "batch_seconds": reader.seconds.copy(),
                "resident": resident,
            }
        )
    reader.close()
    measured = epochs[1:]
    mine = {
        "startup_s": reader.startup_s,
        "batches": reader.plan.n_batches,
        "images": len(reader.ids),
        "clock_offset_s": offset,
        "clock_round_trip_s": round_trip,
        "batch_seconds": np.concatenate([epoch["batch_seconds"] for epoch in measured]),
        "resident": None if measured[0]["resident"] is None else max(epoch["resident"] for epoch in measured),
    }
    figures = guard.allgather(mine, "collecting the per-rank figures")

    def finish() -> str | None:
        """Rank 0: the JSON written (before anything is printed, so that a closed stdout loses nothing), the summary."""
        if guard.rank:
            return None
        document = build_document(args, info, directory, hosts, epochs, figures, expected, started, guard.timeout)
        document["benchmarks"][0]["extra_info"].update(
            store_digest=store_digest, **({"read_cache_bytes": next(iter(read_cache.values()))} if read_cache else {})
        )
        if args.output is not None:
            write_output(args.output, document, args.append)
        return summary(document["benchmarks"][0], directory if info.directory else None, args.output)

    text = guard.run("writing the output", finish)
    if text:
        print(text, flush=True)


def _launcher_rank() -> str | None:
    return next((os.environ[name] for name in RANK_VARIABLES if name in os.environ), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run on every rank; the exit status is the same on all (2: bad input, 1: a failed read or check, 3: a timeout)."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:
        if _launcher_rank() in (None, "0"):
            print(
                f"{PROG}: error: cannot use MPI ({error}): pip install 'image-storage-bench[mpi]' installs mpi4py and "
                "MPICH's mpiexec",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT
    comm = MPI.COMM_WORLD
    parser = build_parser()
    parser.rank = comm.Get_rank()
    args, cls, error = None, None, None
    try:
        args = parser.parse_args(argv)
        cls = check_arguments(args, comm.Get_rank())
    except Exception as exc:  # noqa: BLE001  (reported once, by rank 0, after every rank has parsed)
        error = describe(exc)
    guard = Guard(comm, args.timeout if args else DEFAULT_TIMEOUT, PROG)
    try:
        guard.exchange("reading the arguments", error, code=EXIT_BAD_INPUT)
        run(args, cls, guard)
    except RankFailure as failure:
        return failure.code
    except Exception:  # noqa: BLE001  (a bug: end every rank rather than leave them waiting for this one)
        print(f"{PROG}: rank {comm.Get_rank()} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        time.sleep(ABORT_DELAY_S)
        comm.Abort(EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())

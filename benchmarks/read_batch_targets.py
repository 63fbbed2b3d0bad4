"""`python -m benchmarks.read_batch_targets`: each method's ``read_batch`` beside what an expert would write
without this package, in one process on the same stores, for the targets of docs/benchmarks.md:

- a method's own library alone, where the method names one (``ImageStore.library_reader``: lmdb's raw py-lmdb
  ``txn.get`` loop, Pillow alone on disk's PNG files);
- else a numpy memmap gather of one ``.npy`` (``np.take(mm, ids, axis=0, out=, mode="clip")``).

Warm page cache, batches of ``--batch`` ids from a seeded permutation, one epoch per repeat, median of
``--repeats``; every batch is checked against the source once, outside the timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.machine import argv_of, save_figure
from storage_impls import get_store_class, open_store
from storage_impls.datasets import synthetic
from storage_impls.registry import installed_methods

Reader = Callable[[np.ndarray, np.ndarray], None]  # (ids, out) -> fills out


def epoch_seconds(read: Reader, batches: Sequence[np.ndarray], out: np.ndarray, repeats: int) -> float:
    """Median seconds of reading every batch once into ``out`` (one untimed warm-up epoch first)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for ids in batches:
            read(ids, out[: len(ids)])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def checked(read: Reader, batches: Sequence[np.ndarray], out: np.ndarray, images: np.ndarray, name: str) -> Reader:
    for ids in batches:
        read(ids, out[: len(ids)])
        if not np.array_equal(out[: len(ids)], images[ids]):
            raise AssertionError(f"{name}: a batch differs from the source")
    return read


def gather_reference(images: np.ndarray, folder: Path) -> Reader:
    path = folder / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    return lambda ids, out: np.take(mapped, ids, axis=0, out=out, mode="clip")  # "clip": out unbuffered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.read_batch_targets", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--methods",
        default=",".join(method for method in installed_methods() if not get_store_class(method).slow_random_reads),
        help="comma-separated (default: every installed method whose random reads are not slow)",
    )
    parser.add_argument("--save", type=Path, help="also save the table as JSON for `python -m reports publish`")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    images, labels = synthetic(args.images)
    order = np.random.default_rng(0).permutation(args.images)
    batches = [order[start : start + args.batch] for start in range(0, args.images, args.batch)]
    out = np.empty((args.batch, *images.shape[1:]), np.uint8)
    with tempfile.TemporaryDirectory(prefix="read-batch-targets-") as scratch:
        root = Path(scratch)
        gather = checked(gather_reference(images, root), batches, out, images, "gather")
        gather_s = epoch_seconds(gather, batches, out, args.repeats)
        print(f"{'method':<12} {'read_batch img/s':>17} {'reference':<28} {'ref img/s':>11} {'ratio':>6}")
        print(f"{'(floor)':<12} {'':>17} {'memmap gather':<28} {args.images / gather_s:>11,.0f}")
        rows = [("(floor)", "", "memmap gather", f"{args.images / gather_s:,.0f}", "")]
        for method in args.methods.split(","):
            get_store_class(method)
            with open_store(method, root / method) as store:
                store.store_many(images, labels)
            with open_store(method, root / method, "r") as store:
                ours = checked(lambda ids, out_: store.read_batch(ids, out=out_), batches, out, images, method)
                ours_s = epoch_seconds(ours, batches, out, args.repeats)
            name, reference = get_store_class(method).library_reader(root / method, images.shape[1:]) or (
                "memmap gather",
                None,
            )
            reference_s = (
                gather_s
                if reference is None
                else epoch_seconds(checked(reference, batches, out, images, name), batches, out, args.repeats)
            )
            print(
                f"{method:<12} {args.images / ours_s:>17,.0f} {name:<28} {args.images / reference_s:>11,.0f} "
                f"{reference_s / ours_s:>5.2f}x"
            )
            rows.append(
                (
                    f"`{method}`",
                    f"{args.images / ours_s:,.0f}",
                    name,
                    f"{args.images / reference_s:,.0f}",
                    f"{reference_s / ours_s:.2f}x",
                )
            )
    if args.save:
        header = ("method", "`read_batch` images/s", "reference", "reference images/s", "ours / reference")
        save_figure(
            args.save, "read_batch_targets", "benchmarks.read_batch_targets", argv_of(argv), started, header, rows
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m benchmarks.checksum_cost`: what ``checksum=True`` costs each method's ``store_many``, ``read_many`` and
``read_batch`` (every id once, batches of 256 from a seeded permutation), warm, the two settings alternating in one
process so a drift of the machine's load touches both; medians of ``--repeats``; every read checked once, untimed.
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
from storage_impls import open_store
from storage_impls.datasets import synthetic

HEADER = ("operation", "without", "with", "extra")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(method: str, root: Path, checksum: bool, images: np.ndarray, labels: np.ndarray, batch: int) -> dict:
    """Seconds of one store_many, read_many and read_batch epoch with or without checksums; the reads checked."""
    folder = root / f"{method}-{checksum}"
    with open_store(method, folder, checksum=checksum) as store:
        store_s = timed(lambda: store.store_many(images, labels))
    out = np.empty_like(images)
    order = np.random.default_rng(0).permutation(len(images))
    with open_store(method, folder, "r") as store:
        read_s = timed(lambda: store.read_many(len(images), out=out))
        if not np.array_equal(out, images):
            raise AssertionError(f"{method}: read_many differs from the source")
        batches = [order[start : start + batch] for start in range(0, len(order), batch)]
        batch_s = timed(lambda: [store.read_batch(ids, out=out[: len(ids)]) for ids in batches])
        if not np.array_equal(out[: len(batches[-1])], images[batches[-1]]):
            raise AssertionError(f"{method}: read_batch differs from the source")
    return {"store_many": store_s, "read_many": read_s, f"read_batch (batches of {batch})": batch_s}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checksum_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", required=True, help="comma-separated methods that support checksums")
    parser.add_argument("--save", type=Path, help="also save the table as JSON for `python -m reports publish`")
    args = parser.parse_args(argv)
    started, rows = datetime.now(timezone.utc), []
    images, labels = synthetic(args.images)
    for method in args.methods.split(","):
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for checksum in (False, True):  # alternating
                with tempfile.TemporaryDirectory(prefix="checksum-cost-") as scratch:
                    runs[checksum].append(measure(method, Path(scratch), checksum, images, labels, 256))
        for operation in runs[False][0]:
            without, with_ = (statistics.median(run[operation] for run in runs[flag]) for flag in (False, True))
            row = (f"{method} `{operation}`", f"{without * 1e3:.1f} ms", f"{with_ * 1e3:.1f} ms")
            rows.append((*row, f"{with_ / without - 1:+.0%}"))
            print(" | ".join(rows[-1]))
    if args.save:
        save_figure(args.save, "checksum_cost", "benchmarks.checksum_cost", argv_of(argv), started, HEADER, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

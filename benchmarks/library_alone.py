"""`python -m benchmarks.library_alone`: shuffled ``read_batch`` of a method beside its floor and beside its library
called alone, as the library's authors show it (no code of this package on the read path), in one process.

Load-proof by construction (issue 24: the 2-core VM runs at load 5-15): the readers take turns epoch by epoch
(floor, ours, library, floor, ...), and each epoch is timed in CPU seconds of the whole process
(``time.process_time``: the library's own threads count) and in wall seconds; medians over ``--repeats``. The floor
is the suite's warm ``read_random`` floor for the method (benchmarks/floors.py): the memory-mapped gather of one
``.npy`` (``np.take``), or for a file-per-image store the ``files-read`` loop (open, ``preadv`` into the slot,
close). Every reader is checked against the source images once, outside the timing.

The library alone is the method's ``ImageStore.library_reader`` (a plain reader of the folder the store wrote, as the
library's authors show it: pylance ``take``, pyarrow ``read_row_groups``, zarr-python ``oindex``, py-lmdb
``txn.get``), for a spec without options (a variant's layout may differ: ``disk:codec=raw`` has no PNG files). Not
for lmdb: py-lmdb opens an environment once per process, so its reader cannot run beside an open store (its figures
come from ``python -m benchmarks.read_batch_targets``, which reads one after the other).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.machine import argv_of, save_figure
from benchmarks.read_batch_targets import Reader, checked, gather_reference
from storage_impls import get_store_class, open_store
from storage_impls.datasets import synthetic


def files_floor(images: np.ndarray, folder: Path) -> Reader:
    """The floor of a file-per-image store (``files-read``): per image open, ``preadv`` into its slot, close."""
    folder.mkdir()
    for index, image in enumerate(images):
        (folder / f"{index}.raw").write_bytes(image.tobytes())
    names = [os.fsencode(folder / f"{index}.raw") for index in range(len(images))]

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        for image_id, row in zip(ids.tolist(), out.reshape(len(out), -1)):
            fd = os.open(names[image_id], os.O_RDONLY)
            try:
                os.preadv(fd, [row], 0)
            finally:
                os.close(fd)

    return read


def alternate(readers: dict[str, Reader], batches: Sequence[np.ndarray], out: np.ndarray, repeats: int) -> dict:
    """Median (CPU s, wall s) of one epoch per reader, the readers taking turns epoch by epoch (one warm-up each)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
    for repeat in range(repeats + 1):
        for name, read in readers.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for ids in batches:
                read(ids, out[: len(ids)])
            if repeat:
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return {name: tuple(statistics.median(t[i] for t in pairs) for i in (0, 1)) for name, pairs in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.library_alone", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lance,parquet,zarr,webdataset,disk:codec=raw")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--image-shape", default="32x32x3")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--save", type=Path, help="also save the table as JSON for `python -m reports publish`")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    shape = tuple(int(part) for part in args.image_shape.split("x"))
    images, labels = synthetic(args.images, shape)
    order = np.random.default_rng(0).permutation(args.images)
    batches = [order[start : start + args.batch] for start in range(0, args.images, args.batch)]
    out = np.empty((args.batch, *shape), np.uint8)
    print(
        f"{args.images} x {args.image_shape}, batches of {args.batch} ids of a seeded permutation (as the suite), "
        f"load {os.getloadavg()[0]:.1f}"
    )
    header = ("method", "reader", "CPU ms", "wall ms", "CPU / floor", "wall / floor")
    rows = []
    print(f"{'method':<18} {'reader':<30} {'CPU ms':>8} {'wall ms':>8} {'CPU/floor':>9} {'wall/floor':>10}")
    with tempfile.TemporaryDirectory(prefix="library-alone-") as scratch:
        root = Path(scratch)
        floors = {"gather": gather_reference(images, root), "files-read": files_floor(images, root / "files")}
        for method in args.methods.split(","):
            directory = root / method.replace(":", "_").replace("=", "-")
            with open_store(method, directory) as store:
                store.store_many(images, labels)
            floor = "files-read" if get_store_class(method).file_per_image else "gather"
            with open_store(method, directory, "r") as store:
                readers = {floor: floors[floor], "ours": lambda ids, out_, s=store: s.read_batch(ids, out=out_)}
                library = None if ":" in method else get_store_class(method).library_reader(directory, shape)
                if library is not None:
                    readers[library[0]] = library[1]
                readers = {key: checked(read, batches, out, images, f"{method} {key}") for key, read in readers.items()}
                result = alternate(readers, batches, out, args.repeats)
            base_cpu, base_wall = result[floor]
            for key, (cpu, wall) in result.items():
                row = (
                    method,
                    key,
                    f"{cpu * 1e3:.1f}",
                    f"{wall * 1e3:.1f}",
                    f"{cpu / base_cpu:.2f}x",
                    f"{wall / base_wall:.2f}x",
                )
                rows.append(row)
                print(f"{row[0]:<18} {row[1]:<30} {row[2]:>8} {row[3]:>8} {row[4]:>9} {row[5]:>10}")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    if args.save:
        save_figure(args.save, "library_alone", "benchmarks.library_alone", argv_of(argv), started, header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

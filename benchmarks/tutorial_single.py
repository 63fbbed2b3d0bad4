"""`python -m benchmarks.tutorial_single`: ``store_single`` into a fresh store, this package against the
tutorial's code for the same method, alternating in one loop on the same machine (the fault issue's target:
no slower than the tutorial's approach).

The tutorial's approaches, as its article writes them: disk saves ``<id>.png`` with Pillow and writes a
one-row CSV of the label; lmdb opens an environment (default flags: it fsyncs on commit), puts a pickled
image-and-label object in one write transaction and closes; hdf5 creates a file with an image dataset and a
label dataset and closes it. Each call writes into a new folder; medians of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.machine import argv_of, save_figure
from storage_impls import open_store

HEADER = ("method", "tutorial's code", "ours: open + store_single + close", "ratio", "ours: store_single", "ratio")


def tutorial_disk(folder: Path, image: np.ndarray, image_id: int, label: int) -> None:
    from PIL import Image

    Image.fromarray(image).save(folder / f"{image_id}.png")
    with open(folder / f"{image_id}.csv", "w", newline="") as file:
        csv.writer(file, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL).writerow([label])


def tutorial_lmdb(folder: Path, image: np.ndarray, image_id: int, label: int) -> None:
    import lmdb

    env = lmdb.open(str(folder / "single_lmdb"), map_size=image.nbytes * 10)
    with env.begin(write=True) as txn:
        txn.put(f"{image_id:08}".encode("ascii"), pickle.dumps({"image": image.tobytes(), "label": label}))
    env.close()


def tutorial_hdf5(folder: Path, image: np.ndarray, image_id: int, label: int) -> None:
    import h5py

    with h5py.File(folder / f"{image_id}.h5", "w") as file:
        file.create_dataset("image", np.shape(image), h5py.h5t.STD_U8BE, data=image)
        file.create_dataset("meta", np.shape(label), h5py.h5t.STD_U8BE, data=label)


TUTORIAL: dict[str, Callable[[Path, np.ndarray, int, int], None]] = {
    "disk": tutorial_disk,
    "lmdb": tutorial_lmdb,
    "hdf5": tutorial_hdf5,
}


def ours(method: str) -> Callable[[Path, np.ndarray, int, int], None]:
    def store(folder: Path, image: np.ndarray, image_id: int, label: int) -> None:
        with open_store(method, folder / "store") as store_:
            store_.store_single(image, image_id, label)

    return store


def seconds(write: Callable[[Path, np.ndarray, int, int], None], folder: Path, image: np.ndarray) -> float:
    start = time.perf_counter()
    write(folder, image, 0, 7)
    return time.perf_counter() - start


def seconds_on_open_store(method: str, folder: Path, image: np.ndarray) -> float:
    """``store_single`` alone on a store opened (and closed) untimed, as the suite's store_single cell times it."""
    with open_store(method, folder / "store") as store:
        start = time.perf_counter()
        store.store_single(image, 0, 7)
        return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tutorial_single", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--save", type=Path, help="also save the table as JSON for `python -m reports publish`")
    args = parser.parse_args(argv)
    started, rows = datetime.now(timezone.utc), []
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    print(
        f"{'method':<8} {'tutorial':>10} {'ours: open+store+close':>23} {'ratio':>6} {'ours: store_single':>19} "
        f"{'ratio':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="tutorial-single-") as scratch:
        for method, tutorial in TUTORIAL.items():
            results: dict[str, list[float]] = {"ours": [], "tutorial": [], "store": []}
            for rep in range(args.repeats):  # alternate, so drift hits all alike
                folders = {name: Path(scratch, method, name, str(rep)) for name in results}
                for folder in folders.values():
                    folder.mkdir(parents=True)
                results["ours"].append(seconds(ours(method), folders["ours"], image))
                results["tutorial"].append(seconds(tutorial, folders["tutorial"], image))
                results["store"].append(seconds_on_open_store(method, folders["store"], image))
            tutorial_s, ours_s, store_s = (statistics.median(results[name]) for name in ("tutorial", "ours", "store"))
            print(
                f"{method:<8} {tutorial_s * 1e3:>7.3f} ms {ours_s * 1e3:>20.3f} ms {ours_s / tutorial_s:>5.2f}x "
                f"{store_s * 1e3:>16.3f} ms {store_s / tutorial_s:>5.2f}x"
            )
            rows.append(
                (
                    method,
                    *(f"{value * 1e3:.3f} ms" for value in (tutorial_s, ours_s)),
                    f"{ours_s / tutorial_s:.2f}x",
                    f"{store_s * 1e3:.3f} ms",
                    f"{store_s / tutorial_s:.2f}x",
                )
            )
    if args.save:
        save_figure(args.save, "tutorial_single", "benchmarks.tutorial_single", argv_of(argv), started, HEADER, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

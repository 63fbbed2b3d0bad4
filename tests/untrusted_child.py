"""The child side of tests/test_untrusted.py: ``python -m tests.untrusted_child METHOD LIMIT WRITE JSON``.

Under an address-space limit of LIMIT bytes, for each planted store in JSON (a list of [name, path, expected
labels]): open it read-only and read everything back (read_many, read_batch, read_single), compared with the
images the labels say (faults.pixels_for); then, if WRITE is 1, open it to add one image. Print one JSON line
per store as it finishes: {"name", "read", "write", "rss_mb"}, each of the two "same", "typed <StoreError
subclass>", "WRONG DATA" or "UNTYPED ..." (write None when not asked), and the peak RSS so far.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np

from storage_impls import StoreError, open_store
from tests.faults import pixels_for


def read_all(method: str, path: str, expected: list[int]) -> str:
    with open_store(method, path, "r") as store:
        count = len(store)
        images, labels = store.read_many(count)
        batch, batch_labels = store.read_batch(np.arange(count)[::-1])
        single, single_label = store.read_single(count - 1)
    same = labels.tolist() == expected and all(
        np.array_equal(image, pixels_for(label, image.shape)) for image, label in zip(images, expected)
    )
    same = same and np.array_equal(batch, images[::-1]) and np.array_equal(batch_labels, labels[::-1])
    return "same" if same and np.array_equal(single, images[-1]) and single_label == labels[-1] else "WRONG DATA"


def add_one(method: str, path: str, expected: list[int]) -> str:
    with open_store(method, path, "a") as store:
        count = len(store)
        store.store_single(pixels_for(999, store.image_shape), count, 999)
        image, label = store.read_single(count)
    return "same" if label == 999 and np.array_equal(image, pixels_for(999, image.shape)) else "WRONG DATA"


def outcome(operation, *args: object) -> str:
    try:
        return operation(*args)
    except StoreError as error:
        return f"typed {type(error).__name__}"
    except Exception as error:  # noqa: BLE001 - what the test reports
        return f"UNTYPED {type(error).__name__}: {error}"


def peak_rss_mb() -> int:
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss would count the forking parent's
    memory too: Linux keeps the larger of the two across fork and exec, and pytest grows over a long run)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    method, limit, write, plants = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name, path, expected in plants:
        read = outcome(read_all, method, path, expected)
        write = outcome(add_one, method, path, expected) if write else None
        rss_mb = peak_rss_mb()  # the peak so far, of every plant
        print(json.dumps({"name": name, "read": read, "write": write, "rss_mb": rss_mb}), flush=True)


if __name__ == "__main__":
    main()

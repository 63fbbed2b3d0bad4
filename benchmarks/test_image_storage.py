"""The tutorial's four experiments, per storage method and image count (cutoff).

Each cell times only the operation on an open store, then checks, untimed, that what was
read (or what a store wrote, read back from disk) is exactly what was stored.
"""
from __future__ import annotations

import numpy as np

from benchmarks.verify import verify


def test_store_single(measure, record, fresh_stores, dataset, method, cutoff):
    image, label = dataset.images[0], int(dataset.labels[0])
    record(cutoff)
    measure(lambda store: store.store_single(image, 0, label), lambda: ((fresh_stores.open_next(),), {}))
    with fresh_stores.reopen_last() as stored:
        read_image, read_label = stored.read_single(0)
        verify(f"{method} store_single", read_image[np.newaxis], np.array([read_label]), dataset.images[:1], dataset.labels[:1])
        record(cutoff, stored.disk_usage())


def test_read_single(measure, record, read_store, dataset, method, cutoff):
    record(cutoff)
    image, label = measure(lambda: read_store.read_single(0), lambda: ((), {}))
    verify(f"{method} read_single", image[np.newaxis], np.array([label]), dataset.images[:1], dataset.labels[:1])


def test_store_many(measure, record, fresh_stores, dataset, method, cutoff):
    images, labels = dataset.images[:cutoff], dataset.labels[:cutoff]
    record(cutoff)
    measure(lambda store: store.store_many(images, labels), lambda: ((fresh_stores.open_next(),), {}))
    with fresh_stores.reopen_last() as stored:
        verify(f"{method} store_many", *stored.read_many(cutoff), images, labels)
        record(cutoff, stored.disk_usage())


def test_read_many(measure, record, read_store, dataset, method, cutoff):
    out = np.empty((cutoff, *dataset.images.shape[1:]), np.uint8)

    def clear_out():
        """Each round starts from zeros, so the check below proves the last round read every image."""
        out.fill(0)
        return (), {}

    record(cutoff)
    images, labels = measure(lambda: read_store.read_many(cutoff, out=out), clear_out)
    assert images is out
    verify(f"{method} read_many", images, labels, dataset.images[:cutoff], dataset.labels[:cutoff])

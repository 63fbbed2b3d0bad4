"""Store and read many images (any numeric dtype, 2- or 3-D) with labels, one interchangeable class per storage method.

>>> from storage_impls import open_store
>>> with open_store("hdf5", "/tmp/images") as store:
...     store.store_many(images, labels)
...     images, labels = store.read_many(len(images))
"""

from storage_impls.core.base import DiskUsage, ImageStore
from storage_impls.core.errors import (
    CorruptStoreError,
    ImageNotFoundError,
    LocalOnlyError,
    MissingStoreError,
    NoSpaceError,
    RemoteError,
    StoreError,
    StoreLockedError,
)
from storage_impls.registry import METHODS, get_store_class, open_store

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CorruptStoreError",
    "DiskUsage",
    "ImageNotFoundError",
    "ImageStore",
    "LocalOnlyError",
    "MissingStoreError",
    "NoSpaceError",
    "RemoteError",
    "StoreError",
    "StoreLockedError",
    "get_store_class",
    "open_store",
]

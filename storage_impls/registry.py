"""Method names to store classes, imported lazily so that a missing optional package only
matters to the method that needs it."""
from __future__ import annotations

import importlib
import os
from typing import NamedTuple

from storage_impls.base import ImageStore, Mode


class MethodSpec(NamedTuple):
    """Where a method's class lives and what to install when its package is missing."""

    module: str
    class_name: str
    install_hint: str


_REGISTRY: dict[str, MethodSpec] = {
    "disk": MethodSpec("storage_impls.disk", "DiskStore", "pip install Pillow"),
    "lmdb": MethodSpec("storage_impls.lmdb", "LmdbStore", "pip install lmdb"),
    "hdf5": MethodSpec("storage_impls.hdf5", "Hdf5Store", "pip install h5py"),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)


def get_store_class(method: str) -> type[ImageStore]:
    """Return the class implementing ``method``; ImportError says what to install if it is missing."""
    try:
        spec = _REGISTRY[method]
    except KeyError:
        raise ValueError(f"unknown storage method {method!r}; known methods: {', '.join(METHODS)}") from None
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        raise ImportError(
            f"storage method {method!r} needs the package {error.name!r}, which is not installed: {spec.install_hint}"
        ) from error
    return getattr(module, spec.class_name)


def open_store(method: str, directory: str | os.PathLike, mode: Mode = "a", **options: object) -> ImageStore:
    """Open the store of ``method`` in ``directory``; ``options`` (``durable``, ``checksum``, ``lock_timeout``) as for ImageStore."""
    return get_store_class(method)(directory, mode, **options)

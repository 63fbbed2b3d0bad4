"""Method names to store classes, imported lazily so that a missing optional package only
matters to the method that needs it; and method variants.

A *method spec* is a method name, optionally with options: ``method:key=value,key=value``, for
example ``rocksdb:compression=zstd,bloom_bits=10,block_cache=64MiB``. Each class declares the
options it takes in ``OPTIONS`` (name -> ``Option``: a parser and what it allows); an unknown
name or a value the parser refuses raises ValueError listing what is allowed. Parsed options
reach the class's constructor as keyword arguments (``get_store_class`` returns a subclass with
them bound; passing one of them again as a keyword is a TypeError). Sizes take a unit: ``64MiB``,
``1GiB``, ``500kB``, ``1048576`` (bytes). ``canonical_spec`` gives one spelling per variant
(options in the class's order), for run names and report labels.
"""
from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Callable
from typing import NamedTuple

from storage_impls.base import ImageStore, Mode


class MethodSpec(NamedTuple):
    """Where a method's class lives and what to install when its package is missing."""

    module: str
    class_name: str
    install_hint: str


class Option(NamedTuple):
    """One option a method takes: ``parse`` turns a text (or an already typed value) into the value, or
    raises ValueError; ``allowed`` says what it accepts; ``format`` spells a value canonically."""

    parse: Callable[[object], object]
    allowed: str
    format: Callable[[object], str] = str


_REGISTRY: dict[str, MethodSpec] = {
    "disk": MethodSpec("storage_impls.disk", "DiskStore", "pip install Pillow"),
    "lmdb": MethodSpec("storage_impls.lmdb", "LmdbStore", "pip install lmdb"),
    "hdf5": MethodSpec("storage_impls.hdf5", "Hdf5Store", "pip install h5py"),
    "rocksdb": MethodSpec("storage_impls.rocksdb", "RocksdbStore", "pip install image-storage-bench[rocksdb]"),
    "npy-files": MethodSpec("storage_impls.npy_files", "NpyFilesStore", "pip install numpy"),
    "npz": MethodSpec("storage_impls.npz", "NpzStore", "pip install numpy"),
    "npy-memmap": MethodSpec("storage_impls.npy_memmap", "NpyMemmapStore", "pip install numpy"),
    "webdataset": MethodSpec("storage_impls.webdataset", "WebDatasetStore", "pip install image-storage-bench[webdataset]"),
    "parquet": MethodSpec("storage_impls.parquet", "ParquetStore", "pip install image-storage-bench[parquet]"),
    "lance": MethodSpec("storage_impls.lance", "LanceStore", "pip install image-storage-bench[lance]"),
    "zarr": MethodSpec("storage_impls.zarr", "ZarrStore", "pip install image-storage-bench[zarr]"),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)


# -- option parsers ------------------------------------------------------------------------------
def choice(*values: str) -> Option:
    """One of ``values``."""
    def parse(value: object) -> str:
        if value not in values:
            raise ValueError
        return value
    return Option(parse, ", ".join(values))


def integer(low: int, high: int) -> Option:
    """An integer from ``low`` to ``high``."""
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise ValueError
        number = int(value)
        if not low <= number <= high:
            raise ValueError
        return number
    return Option(parse, f"an integer {low}..{high}")


def codec() -> Option:
    """An image codec (codecs.py), spelled canonically."""
    from storage_impls.codecs import CODECS, get_codec

    def parse(value: object) -> str:
        return get_codec(value).spec
    return Option(parse, CODECS)


SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def byte_size() -> Option:
    """A number of bytes, with an optional unit (B, kB, MB, GB, KiB, MiB, GiB)."""
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            if value < 0:
                raise ValueError
            return value
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if not match or match[2].lower() not in SIZE_UNITS:
            raise ValueError
        return int(match[1]) * SIZE_UNITS[match[2].lower()]

    def format_size(value: object) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if value and value % SIZE_UNITS[unit.lower()] == 0:
                return f"{value // SIZE_UNITS[unit.lower()]}{unit}"
        return str(value)
    return Option(parse, "a size in bytes such as 1048576, 512KiB, 64MiB or 1GiB", format_size)


def check_options(method: str, declared: dict[str, Option], given: dict[str, object]) -> dict[str, object]:
    """``given`` options parsed by what ``declared`` allows (None values dropped); ValueError listing what is allowed."""
    parsed = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in declared:
            takes = "; ".join(f"{key} ({option.allowed})" for key, option in declared.items()) or "no options"
            raise ValueError(f"{method}: unknown option {name!r}; {method} takes {takes}")
        try:
            parsed[name] = declared[name].parse(value)
        except (ValueError, TypeError):
            raise ValueError(f"{method}: {name}={value!r} is not allowed; use {declared[name].allowed}") from None
    return parsed


# -- specs --------------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"rocksdb:compression=zstd"`` -> ("rocksdb", {"compression": "zstd"}): syntax only, values unparsed."""
    if not isinstance(spec, str):
        raise TypeError(f"a storage method is a name such as 'lmdb' or 'rocksdb:compression=zstd', got {spec!r}")
    method, colon, rest = spec.partition(":")
    method = method.strip()
    if method not in _REGISTRY:
        raise ValueError(f"unknown storage method {method!r}; known methods: {', '.join(METHODS)}")
    options: dict[str, str] = {}
    if colon:
        for item in rest.split(","):
            name, equals, value = (part.strip() for part in item.partition("="))
            if not name or not equals or not value:
                raise ValueError(f"{spec!r}: options are written method:key=value,key=value; {item.strip()!r} is not key=value")
            if name in options:
                raise ValueError(f"{spec!r}: option {name!r} is given twice")
            options[name] = value
    return method, options


def _load_class(method: str) -> type[ImageStore]:
    spec = _REGISTRY[method]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        raise ImportError(
            f"storage method {method!r} needs the package {error.name!r}, which is not installed: {spec.install_hint}",
            name=error.name) from error
    return getattr(module, spec.class_name)


def get_store_class(spec: str) -> type[ImageStore]:
    """The class implementing ``spec`` (a method name, or ``method:key=value,...``: then a subclass with those
    options bound); ValueError for an unknown method or option, ImportError saying what to install."""
    method, texts = parse_spec(spec)
    cls = _load_class(method)
    declared = getattr(cls, "OPTIONS", {})
    options = check_options(method, declared, texts)
    return _variant(cls, tuple((name, options[name]) for name in declared if name in options)) if options else cls


def canonical_spec(spec: str) -> str:
    """One spelling per variant: the method, then its options in the order the class declares them."""
    cls = get_store_class(spec)
    return getattr(cls, "variant", cls.method)


@functools.cache
def _variant(cls: type[ImageStore], options: tuple[tuple[str, object], ...]) -> type[ImageStore]:
    """A subclass of ``cls`` whose constructor passes ``options`` as keyword arguments."""
    bound = dict(options)
    spec = f"{cls.method}:" + ",".join(f"{name}={cls.OPTIONS[name].format(value)}" for name, value in options)

    def __init__(self, directory: str | os.PathLike, mode: Mode = "a", **keywords: object) -> None:
        clash = sorted(bound.keys() & keywords.keys())
        if clash:
            raise TypeError(f"{spec} already sets {', '.join(clash)}")
        cls.__init__(self, directory, mode, **bound, **keywords)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__qualname__": f"{cls.__qualname__}[{spec}]", "variant": spec})


def open_store(spec: str, directory: str | os.PathLike, mode: Mode = "a", **options: object) -> ImageStore:
    """Open the store of ``spec`` (a method, or a variant) in ``directory``; ``options`` (``durable``,
    ``checksum``, ``lock_timeout``, and the method's own) as for its class."""
    return get_store_class(spec)(directory, mode, **options)


def installed_methods() -> tuple[str, ...]:
    """The registered methods whose packages are installed here, in registry order."""
    installed = []
    for method in METHODS:
        try:
            _load_class(method)
        except ImportError:
            continue
        installed.append(method)
    return tuple(installed)

"""The one table of storage methods: each method's name, where its class lives, the files that mark its
stores and what to install; classes are imported lazily, so a missing optional package only
matters to the method that needs it. Also method variants.

A *method spec* is a method name, optionally with options: ``method:key=value,key=value``, for
example ``rocksdb:compression=zstd,bloom_bits=10,block_cache=64MiB``. Each class declares the
options it takes in ``OPTIONS`` (core/options.py); an unknown name or a value the parser refuses
raises ValueError listing what is allowed. Parsed options reach the class's constructor as keyword
arguments (``get_store_class`` returns a subclass with them bound; passing one of them again as a
keyword is a TypeError). ``canonical_spec`` gives one spelling per variant (options in the class's
order), for run names and report labels.

Adding a method: its module or package under ``storage_impls/methods/``, one row here, one test module,
one extra in pyproject.toml (docs/architecture.md walks through it).
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import NamedTuple

from storage_impls.core.base import ImageStore, Mode
from storage_impls.core.codecs import get_codec
from storage_impls.core.errors import LocalOnlyError
from storage_impls.core.options import check_options
from storage_impls.core.records import register_markers

READS_REMOTE = "reads-remote"  # trait: reads a store from an object store by URL (the class's remote_reader)


class MethodSpec(NamedTuple):
    """One row: where a method's class lives, the files only its stores hold at their top (so that a
    directory of another method's store is refused naming it), what to install, and the traits the registry
    itself acts on before importing the class (``READS_REMOTE``). Traits the suite reads (``file_per_image``,
    ``reads_through_map``, ``fork_safe``...) are attributes of the class."""

    module: str
    class_name: str
    markers: tuple[str, ...]
    install_hint: str
    traits: frozenset[str] = frozenset()


REMOTE_HINT = "pip install image-storage-bench[s3]"  # the object-store client remote reads use


def _extra(name: str) -> str:
    return f"pip install image-storage-bench[{name}]"


_METHODS = "storage_impls.methods"
_REGISTRY: dict[str, MethodSpec] = {
    "disk": MethodSpec(
        f"{_METHODS}.disk.store", "DiskStore", ("CURRENT",), "pip install Pillow", frozenset({READS_REMOTE})
    ),
    "lmdb": MethodSpec(f"{_METHODS}.lmdb.store", "LmdbStore", ("data.mdb",), "pip install lmdb"),
    "hdf5": MethodSpec(
        f"{_METHODS}.hdf5.store",
        "Hdf5Store",
        ("images.h5", "images.h5.journal"),
        "pip install h5py",
        frozenset({READS_REMOTE}),
    ),
    "rocksdb": MethodSpec(f"{_METHODS}.rocksdb.store", "RocksdbStore", ("rocksdb.json",), _extra("rocksdb")),
    "npy-files": MethodSpec(
        f"{_METHODS}.npy_files", "NpyFilesStore", ("npy-files.json",), "pip install numpy", frozenset({READS_REMOTE})
    ),
    "npz": MethodSpec(f"{_METHODS}.npz", "NpzStore", ("npz.json",), "pip install numpy"),
    "npy-memmap": MethodSpec(f"{_METHODS}.npy_memmap", "NpyMemmapStore", ("npy-memmap.json",), "pip install numpy"),
    "webdataset": MethodSpec(
        f"{_METHODS}.webdataset.store",
        "WebDatasetStore",
        ("webdataset.json",),
        _extra("webdataset"),
        frozenset({READS_REMOTE}),
    ),
    "parquet": MethodSpec(
        f"{_METHODS}.parquet", "ParquetStore", ("parquet.json",), _extra("parquet"), frozenset({READS_REMOTE})
    ),
    "lance": MethodSpec(
        f"{_METHODS}.lance.store", "LanceStore", ("lance.json",), _extra("lance"), frozenset({READS_REMOTE})
    ),
    "zarr": MethodSpec(
        f"{_METHODS}.zarr.store", "ZarrStore", ("zarr.json",), _extra("zarr"), frozenset({READS_REMOTE})
    ),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)
REFERENCE_METHOD = "hdf5"  # what `reports compare --cross-machine` divides the other methods by, by default
for _name, _spec in _REGISTRY.items():
    register_markers(_name, _spec.markers)


def install_hint(method: str) -> str:
    """The command that installs what ``method`` (a name or a variant) needs."""
    return _REGISTRY[parse_spec(method)[0]].install_hint


def has_trait(method: str, trait: str) -> bool:
    """Whether ``method`` (a name or a variant) has ``trait`` (``READS_REMOTE``)."""
    return trait in _REGISTRY[parse_spec(method)[0]].traits


def codec_of(method: str) -> str:
    """The codec spec a method's store holds, spelled canonically: a variant's ``codec=`` option (``png-6`` ->
    ``png``), else the class's ``DEFAULT_CODEC`` (``raw`` where the method's package is missing); ValueError for an
    unknown method or codec."""
    name, options = parse_spec(method)
    if "codec" in options:
        return get_codec(options["codec"]).spec
    try:
        return getattr(_load_class(name), "DEFAULT_CODEC", "raw")
    except ImportError:
        return "raw"


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
                raise ValueError(
                    f"{spec!r}: options are written method:key=value,key=value; {item.strip()!r} is not key=value"
                )
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
            name=error.name,
        ) from error
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

    return type(
        cls.__name__,
        (cls,),
        {
            "__init__": __init__,
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}[{spec}]",
            "variant": spec,
        },
    )


def open_store(spec: str, directory: str | os.PathLike, mode: Mode = "a", **options: object) -> ImageStore:
    """Open the store of ``spec`` (a method, or a variant) in ``directory``; ``options`` (``durable``,
    ``checksum``, ``lock_timeout``, and the method's own) as for its class. ``directory`` may be an object-store
    URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``http(s)://``; then mode "r" and ``storage_options``, see
    docs/remote.md) for a method with the ``reads-remote`` trait; LocalOnlyError for the others."""
    if isinstance(directory, str) and "://" in directory:
        method, texts = parse_spec(spec)
        if not has_trait(method, READS_REMOTE):
            raise LocalOnlyError(
                f"{method} reads local files only, not {directory}: stage the store first "
                f"(storage_impls.registry.open_staged(spec, url, folder), or `python -m "
                f"storage_impls stage URL FOLDER`), then open the folder"
            )
        cls = _load_class(method)
        options = {**check_options(method, getattr(cls, "OPTIONS", {}), texts), **options}
        try:
            reader = cls.remote_reader()
        except ImportError as error:
            raise ImportError(
                f"reading {directory} needs the package {error.name!r}: {REMOTE_HINT}", name=error.name
            ) from error
        return reader(directory, mode, **options)
    return get_store_class(spec)(directory, mode, **options)


def open_staged(
    spec: str, url: str, folder: str | os.PathLike, storage_options: dict | None = None, **options: object
) -> ImageStore:
    """Stage then read: download the store at ``url`` into ``folder`` (new or empty), then open it read-only."""
    from storage_impls.remote import stage  # the object-store client: only when staging

    return open_store(spec, stage(url, folder, storage_options), "r", **options)


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

"""Which floor bounds each cell: a fixed rule from (method, operation, cache) to floor cells of the same run.

A floor is the least work any correct implementation could do for the same result on this machine, timed in the same
run (docs/benchmarks.md, "Floors"): ``memcpy``; I/O floors that move the bytes a method's store holds: ``file-write``
(a new file), ``file-append`` (one write per image appended to an open file), ``file-read`` (one pread of a file),
``mapped-copy`` (a copy from a mapped file's pages), ``files-write`` / ``files-read`` (one file per image),
``gather`` (shuffled batches from a mapped file), ``file-read-cold`` (a read after dropping the file from the page
cache); and per codec spec of storage_impls/core/codecs.py ``<spec>-encode`` / ``<spec>-decode`` (``png-encode``,
``jpeg-90-decode``). For a method that encodes, its I/O floor moves the encoded bytes: ``<spec>-<io floor>``
(``jpeg-90-file-read``, ``png-files-write``). A cell's floor is the sum of one I/O floor and, for a method that
encodes, its codec's floor, timed at the number of images one round of the cell moves. The rule reads traits of the
method's class (storage_impls.core.base.ImageStore), never its name, so a new method needs no entry here:

* layout: ``file_per_image`` (files floors) or one container;
* ``reads_through_map``: its reads copy out of a memory map it keeps (``mapped-copy``, else ``file-read``);
* ``appends_single_writes``: a single write into a filled store appends to an open file (``file-append``, else a
  new file);
* codec: a variant's ``codec=`` option (``lmdb:codec=jpeg-90``), else the class's ``DEFAULT_CODEC`` (``png`` for
  one method), else ``raw``, which has no codec floor;
* operation: writes, reads or shuffled reads (``OPERATIONS``); an unknown operation has no floor.

Floor cells are bounded by ``memcpy`` of the same bytes, which has no floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

from reports.results import FLOOR_PREFIX
from storage_impls.core.base import ImageStore
from storage_impls.core.codecs import RAW
from storage_impls.registry import codec_of, get_store_class, parse_spec

Kind = Literal["write", "read", "random"]

# one test each (benchmarks/test_floors.py); every one but memcpy also runs on each codec's encoded bytes
IO_FLOORS = (
    "file-write",
    "file-append",
    "file-read",
    "mapped-copy",
    "files-write",
    "files-read",
    "gather",
    "file-read-cold",
)
FLOORS = ("memcpy", *IO_FLOORS)
CODEC_STEPS: dict[Kind, str] = {"write": "encode", "read": "decode", "random": "decode"}  # test_floor_encode, _decode
FLOOR_TEST = "test_floor_"  # benchmarks/test_floors.py: test_floor_file_write times the floor "file-write"


class Operation(NamedTuple):
    kind: Kind
    images: int | None  # images one round moves whatever the cutoff; None: the cutoff's
    into_filled: bool = False  # writes into a store already holding the cutoff's images


OPERATIONS: dict[str, Operation] = {
    "store_single": Operation("write", 1),
    "store_single_into": Operation("write", 2, into_filled=True),  # one append and one replace a round
    "read_single": Operation("read", 1),
    "store_many": Operation("write", None),
    "read_many": Operation("read", None),
    "read_random": Operation("random", None),
}
#: operations of the suite that no floor bounds, and what they are measured against instead
UNFLOORED = {
    "read_batches": "the reference of the loader cells: read_batch alone, in the same run",
    "loader": "a DataLoader epoch, measured against read_batches of the same batches in the same run",
    "loader_peer": "another project's loader, measured beside ours in the same run",
    "read_remote": "an epoch from object storage, measured against its own requests fetched again as plain "
    "concurrent GETs (extra_info floor_s)",
}


class NoFloorError(LookupError):
    """The rule has no floor for this method and operation (an unknown operation, method or codec)."""


def codec_spec(method: str) -> str:
    """The codec spec a method's store holds (the registry's ``codec_of``); NoFloorError for an unknown method."""
    try:
        return codec_of(method)
    except ValueError as error:
        raise NoFloorError(f"no floor for method {method!r}: {error}") from None


def store_traits(method: str) -> type[ImageStore]:
    """The method's class, whose traits the rule reads (ImageStore's defaults when its package is missing: its
    cells skip)."""
    try:
        return get_store_class(parse_spec(method)[0])
    except ImportError:
        return ImageStore
    except ValueError as error:
        raise NoFloorError(f"no floor for method {method!r}: {error}") from None


def floor_of_test(function: str, params: Mapping[str, object]) -> str:
    """The floor a test of benchmarks/test_floors.py times, from its name and parameters: ``test_floor_file_write``
    -> ``file-write`` (on raw pixels), with ``codec`` ``png`` -> ``png-file-write``; ``test_floor_encode`` with
    ``codec`` ``jpeg-90`` -> ``jpeg-90-encode``."""
    name = function.removeprefix(FLOOR_TEST).replace("_", "-")
    return f"{params['codec']}-{name}" if params.get("codec", RAW.spec) != RAW.spec else name


def floor_codecs(methods: Iterable[str]) -> tuple[str, ...]:
    """The codec specs whose floors cells of ``methods`` may need, png first and always (``pytest
    benchmarks/test_floors.py`` times it whatever the methods); the codec floor tests run over these."""
    specs = dict.fromkeys(["png"])
    for method in methods:
        try:
            specs[codec_spec(method)] = None
        except NoFloorError:
            continue
    specs.pop(RAW.spec, None)
    return tuple(specs)


def floor_names(method: str, operation: str, cache: str = "warm") -> tuple[str, ...]:
    """The floors whose times add up to the floor of ``method`` doing ``operation`` (floor cells: memcpy, or none)."""
    if method.startswith(FLOOR_PREFIX):  # memcpy of the same pixels; memcpy, and I/O floors on encoded bytes: none
        name = method.removeprefix(FLOOR_PREFIX)
        encoded_io = name not in IO_FLOORS and any(name.endswith(f"-{io}") for io in IO_FLOORS)
        return () if name == "memcpy" or encoded_io else ("memcpy",)
    if operation not in OPERATIONS:
        raise NoFloorError(f"no floor for operation {operation!r}: add it to benchmarks.floors.OPERATIONS")
    kind, _, into_filled = OPERATIONS[operation]
    spec, traits = codec_spec(method), store_traits(method)
    files = traits.file_per_image
    if kind == "write":
        io = "file-append" if into_filled and traits.appends_single_writes else "files-write" if files else "file-write"
    elif cache in ("cold", "limited"):  # a sequential read reads each page once: a cache limit cannot slow it
        io = "file-read-cold"
    elif files:
        io = "files-read"
    elif kind == "random":
        io = "gather"
    else:
        io = "mapped-copy" if traits.reads_through_map else "file-read"
    if spec == RAW.spec:
        return (io,)
    io, codec_floor = f"{spec}-{io}", f"{spec}-{CODEC_STEPS[kind]}"
    return (codec_floor, io) if kind == "write" else (io, codec_floor)


def floor_images(operation: str, n_images: int) -> int:
    """Images one round of the floor moves: as many as one round of the cell (1 or 2 for the single-image
    operations, else the cell's own count)."""
    if operation in OPERATIONS and OPERATIONS[operation].images is not None:
        return OPERATIONS[operation].images
    return n_images


def floor_counts(cutoffs: Iterable[int]) -> list[int]:
    """The image counts floor cells run at: every count a round of some operation moves."""
    return sorted({*cutoffs, *(operation.images for operation in OPERATIONS.values() if operation.images)})


FloorCell = tuple[str, int, "int | None"]  # (floor name, images, batch size for gather)


def floor_keys(method: str, operation: str, params: Mapping[str, object]) -> tuple[FloorCell, ...]:
    """The floor cells whose medians add up to the floor of a cell with these test parameters (memcpy only for a
    floor cell); none if it has no floor."""
    images = floor_images(operation, int(params.get("cutoff", params.get("n_images", 1))))
    try:
        names = floor_names(method, operation, params.get("cache", "warm"))
    except NoFloorError:
        return ()
    return tuple((name, images, params.get("batch_size") if name.endswith("gather") else None) for name in names)


def floors_of_cell(method: str, operation: str, params: dict) -> set[FloorCell]:
    """The floor cells a method cell with these test parameters is compared with, memcpy included; none without a
    floor."""
    keys = floor_keys(method, operation, params)
    return set(keys) | {("memcpy", keys[0][1], None)} if keys else set()

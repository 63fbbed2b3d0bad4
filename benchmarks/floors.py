"""Which floor bounds each cell: a fixed rule from (method, operation, cache) to floor cells of the same run.

A floor is what the hardware or a library does alone with the same images (docs/benchmarks.md, "Floors"):
``memcpy``, ``file-write`` / ``file-read`` (one raw file, open), ``files-write`` / ``files-read`` (one file per
image), ``gather`` (shuffled batches from a memory-mapped ``.npy``), ``file-read-cold`` (a raw file read after
dropping it from the page cache) and, per codec spec of storage_impls/core/codecs.py, ``<spec>-encode`` /
``<spec>-decode`` (that codec in memory: ``png-encode``, ``jpeg-90-decode``, ``webp-lossless-encode``). A cell's
floor is the sum of one I/O floor and, for methods that encode images, its codec's floor, timed at the number
of images one round of the cell moves. The rule reads only three traits of a method, so a new method needs no
entry here:

* layout: one file per image (the registry's ``FILE_PER_IMAGE`` trait) or one container (everything else);
* codec: a variant's ``codec=`` option (``lmdb:codec=jpeg-90``), else the class's ``DEFAULT_CODEC`` (``disk``:
  ``png``), else ``raw``, which has no codec floor;
* operation: writes, reads or shuffled reads (``OPERATIONS``); an unknown operation has no floor.

Floor cells are bounded by ``memcpy`` of the same bytes, which has no floor.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from reports.results import FLOOR_PREFIX
from storage_impls.core.codecs import get_codec
from storage_impls.registry import FILE_PER_IMAGE, get_store_class, has_trait, parse_spec

Kind = Literal["write", "read", "random"]

FLOORS = ("memcpy", "file-write", "file-read", "files-write", "files-read", "gather", "file-read-cold")  # one test each
CODEC_STEPS: dict[Kind, str] = {"write": "encode", "read": "decode", "random": "decode"}  # test_floor_encode, _decode
FLOOR_TEST = "test_floor_"  # benchmarks/test_floors.py: test_floor_file_write times the floor "file-write"
# operation -> (what a round does, whether it moves one image whatever the cutoff)
OPERATIONS: dict[str, tuple[Kind, bool]] = {
    "store_single": ("write", True),
    "store_single_into": ("write", True),  # one image into a store already holding the cutoff's images
    "read_single": ("read", True),
    "store_many": ("write", False),
    "read_many": ("read", False),
    "read_random": ("random", False),
}


class NoFloorError(LookupError):
    """The rule has no floor for this method and operation (an unknown operation, method or codec)."""


def codec_spec(method: str) -> str:
    """The codec spec a method's store holds, spelled canonically: a variant's ``codec=`` option (``png-6`` ->
    ``png``), else the class's ``DEFAULT_CODEC`` (a method whose package is missing: ``raw``; its cells skip)."""
    try:
        name, options = parse_spec(method)
        if "codec" in options:
            return get_codec(options["codec"]).spec
    except ValueError as error:
        raise NoFloorError(f"no floor for method {method!r}: {error}") from None
    try:
        return getattr(get_store_class(name), "DEFAULT_CODEC", "raw")
    except ImportError:
        return "raw"


def floor_of_test(function: str, params: Mapping[str, object]) -> str:
    """The floor a test of benchmarks/test_floors.py times, from its name and parameters: ``test_floor_file_write``
    -> ``file-write``; ``test_floor_encode`` with ``codec`` ``jpeg-90`` -> ``jpeg-90-encode``."""
    name = function.removeprefix(FLOOR_TEST).replace("_", "-")
    return f"{params['codec']}-{name}" if "codec" in params else name


def floor_codecs(methods: Iterable[str]) -> tuple[str, ...]:
    """The codec specs whose floors cells of ``methods`` may need, png first and always (``pytest
    benchmarks/test_floors.py`` times it whatever the methods); the codec floor tests run over these."""
    specs = dict.fromkeys(["png"])
    for method in methods:
        try:
            specs[codec_spec(method)] = None
        except NoFloorError:
            continue
    specs.pop("raw", None)
    return tuple(specs)


def floor_names(method: str, operation: str, cache: str = "warm") -> tuple[str, ...]:
    """The floors whose times add up to the floor of ``method`` doing ``operation`` (floor cells: memcpy, or none)."""
    if method.startswith(FLOOR_PREFIX):
        return () if method == f"{FLOOR_PREFIX}memcpy" else ("memcpy",)
    if operation not in OPERATIONS:
        raise NoFloorError(f"no floor for operation {operation!r}: add it to benchmarks.floors.OPERATIONS")
    kind, _ = OPERATIONS[operation]
    spec = codec_spec(method)
    files = has_trait(method, FILE_PER_IMAGE)
    if kind == "write":
        io = "files-write" if files else "file-write"
    elif cache in ("cold", "limited"):  # a sequential read reads each page once: a cache limit cannot slow it
        io = "file-read-cold"
    elif kind == "random" and not files:
        io = "gather"
    else:
        io = "files-read" if files else "file-read"
    if spec == "raw":
        return (io,)
    codec_floor = f"{spec}-{CODEC_STEPS[kind]}"
    return (codec_floor, io) if kind == "write" else (io, codec_floor)


def floor_images(operation: str, n_images: int) -> int:
    """Images one round of the floor moves: one for the single-image operations, else the cell's own count."""
    if operation in OPERATIONS and OPERATIONS[operation][1]:
        return 1
    return n_images


FloorCell = tuple[str, int, "int | None"]  # (floor name, images, batch size for gather)


def floors_of_cell(method: str, operation: str, params: dict) -> set[FloorCell]:
    """The floor cells a method cell with these test parameters is compared with, memcpy included; none if it has no floor."""
    images = floor_images(operation, int(params.get("cutoff", params.get("n_images", 1))))
    try:
        names = floor_names(method, operation, params.get("cache", "warm"))
    except NoFloorError:
        return set()
    return {(name, images, params.get("batch_size") if name == "gather" else None) for name in names} | {("memcpy", images, None)}

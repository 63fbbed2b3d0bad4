"""Which floor bounds each cell: a fixed rule from (method, operation, cache) to floor cells of the same run.

A floor is what the hardware or a library does alone with the same images (docs/benchmarks.md, "Floors"):
``memcpy``, ``file-write`` / ``file-read`` (one raw file, open), ``files-write`` / ``files-read`` (one file per
image), ``png-encode`` / ``png-decode`` (the codec in memory), ``gather`` (shuffled batches from a memory-mapped
``.npy``) and ``file-read-cold`` (a raw file read after dropping it from the page cache). A cell's floor is
the sum of one I/O floor and, for methods that encode images, its codec's floor, timed at the number of images
one round of the cell moves. The rule reads only three traits of a method, so a new method needs no entry
unless it stores one file per image or encodes its images:

* layout: one file per image (``FILE_PER_IMAGE``) or one container (everything else);
* codec: ``png`` for ``disk``, a ``codec=`` option of a method variant (``lmdb:codec=png``), else ``raw``;
* operation: writes, reads or shuffled reads (``OPERATIONS``); an unknown operation has no floor.

Floor cells are bounded by ``memcpy`` of the same bytes, which has no floor.
"""
from __future__ import annotations

from typing import Literal

from reports.floors import FLOOR_PREFIX

Kind = Literal["write", "read", "random"]

FLOORS = ("memcpy", "file-write", "file-read", "files-write", "files-read", "png-encode", "png-decode", "gather",
          "file-read-cold")
# operation -> (what a round does, whether it moves one image whatever the cutoff)
OPERATIONS: dict[str, tuple[Kind, bool]] = {
    "store_single": ("write", True),
    "store_single_into": ("write", True),  # one image into a store already holding the cutoff's images
    "read_single": ("read", True),
    "store_many": ("write", False),
    "read_many": ("read", False),
    "read_random": ("random", False),
}
FILE_PER_IMAGE = frozenset({"disk", "npy-files"})
DEFAULT_CODECS = {"disk": "png"}  # methods that encode unless a variant says otherwise; all others store raw pixels
CODEC_FLOORS: dict[str, dict[Kind, str]] = {
    "raw": {},
    "png": {"write": "png-encode", "read": "png-decode", "random": "png-decode"},
}


class NoFloorError(LookupError):
    """The rule has no floor for this method and operation (an unknown operation or codec)."""


def codec(method: str) -> str:
    """The codec a method's store holds: a variant's ``codec=`` option (``jpeg-90`` -> ``jpeg``), else its default."""
    name, _, options = method.partition(":")
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key.strip() == "codec":
            return value.strip().split("-")[0]
    return DEFAULT_CODECS.get(name, "raw")


def floor_names(method: str, operation: str, cache: str = "warm") -> tuple[str, ...]:
    """The floors whose times add up to the floor of ``method`` doing ``operation`` (floor cells: memcpy, or none)."""
    if method.startswith(FLOOR_PREFIX):
        return () if method == f"{FLOOR_PREFIX}memcpy" else ("memcpy",)
    if operation not in OPERATIONS:
        raise NoFloorError(f"no floor for operation {operation!r}: add it to benchmarks.floors.OPERATIONS")
    kind, _ = OPERATIONS[operation]
    method_codec = codec(method)
    if method_codec not in CODEC_FLOORS:
        raise NoFloorError(f"no floor for codec {method_codec!r} of method {method!r}: add it to benchmarks.floors.CODEC_FLOORS")
    files = method.partition(":")[0] in FILE_PER_IMAGE
    if kind == "write":
        io = "files-write" if files else "file-write"
    elif cache == "cold":
        io = "file-read-cold"
    elif kind == "random" and not files:
        io = "gather"
    else:
        io = "files-read" if files else "file-read"
    codec_floor = CODEC_FLOORS[method_codec].get(kind)
    if codec_floor is None:
        return (io,)
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

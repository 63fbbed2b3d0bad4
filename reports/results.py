"""The results format, in one place: this suite's name, its operations, how floor cells are named, what
identifies a cell across runs, and how pytest-benchmark JSON runs are found and read (keeping only this
suite's cells). The benchmark suite writes what this module defines; every report reads it through here.

Only the fields documented in docs/benchmark-json.md are relied on. Every problem with the input
is raised as a ReportInputError whose message is one line naming the file, so the command line
can print it without a traceback.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from storage_impls.registry import codec_of

SUITE = "image-storage"  # extra_info["suite"] of every cell of this suite
FLOOR_PREFIX = "floor-"  # the method name of a floor cell: "floor-file-read"
OPERATIONS = (
    "store_single",
    "store_single_into",
    "read_single",
    "store_many",
    "read_many",
    "read_random",
    "floor",
    "read_batches",
    "loader",
    "loader_peer",
    "read_remote",
)  # read_batches and the loaders: benchmarks/test_loader.py (--loaders); read_remote: --object-store
PEER_OPERATIONS = ("loader_peer",)  # cells whose "method" names another project's loader, not a storage method
# extra_info fields that tell cells apart (order and network: the remote cells')
VARIANT_FIELDS = (("batch_size", "b"), ("workers", "w"), ("cache", ""), ("order", ""), ("network", ""))
DEFAULT_DTYPE = "uint8"  # cells of other dtypes carry theirs in the variant; runs before dtypes recorded none
REQUIRED_STATS = ("median", "min", "max", "q1", "q3")
REQUIRED_EXTRA_INFO = ("operation", "method", "n_images", "image_shape")
# what a cell's identity holds besides operation, method, n_images and image_shape, with the value of runs made
# before the field was recorded: every such run was a non-durable pytest run of the synthetic data; its codec was
# the store's codec as the registry tells it (the method's ``codec=`` option, else its class's default)
IDENTITY_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "dtype": DEFAULT_DTYPE,
        "dataset": "synthetic",
        "durable": False,
        "launcher": "pytest",
        "codec": None,
        "cache": None,
        "batch_size": None,
        "workers": None,
    }
)


class CellKey(NamedTuple):
    """Cell.key: everything that changes what a cell measures (``cell_identity``), for pairing cells across runs."""

    operation: str
    method: str
    n_images: int
    image_shape: tuple[int, ...]
    variant: str  # batch size, workers, cache, and the dtype unless uint8 (Cell.variant)
    codec: str  # "" for floor cells, whose method names their codec
    dataset: str
    durable: bool
    launcher: str  # "pytest" (the suite: in-process, or read_random's worker processes) or "mpi" (benchmarks/mpi.py)


class ReportInputError(Exception):
    """Bad input: str(err) is the one-line message naming the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Cell:
    """One benchmark of this suite: an operation by a method on n_images images."""

    operation: str
    method: str
    n_images: int
    image_shape: tuple[int, ...]
    stats: Mapping[str, float]
    data: tuple[float, ...] | None
    extra_info: Mapping[str, Any]

    @property
    def variant(self) -> str:
        """What else tells the cell apart, like its test id does: "b256-w2-warm", "float32"; "" for most cells."""
        parts = [f"{prefix}{self.extra_info[field]}" for field, prefix in VARIANT_FIELDS if field in self.extra_info]
        dtype = self.extra_info.get("dtype", DEFAULT_DTYPE)
        return "-".join(parts if dtype == DEFAULT_DTYPE else [*parts, dtype])

    @property
    def key(self) -> CellKey:
        """Identity of the cell across runs, from ``cell_identity``: cells of different keys never compare."""
        identity = cell_identity(self)
        return CellKey(
            self.operation,
            self.method,
            self.n_images,
            self.image_shape,
            self.variant,
            *(
                identity[field] or "" if field == "codec" else identity[field]
                for field in ("codec", "dataset", "durable", "launcher")
            ),
        )

    @property
    def raw_bytes(self) -> int:
        """Pixel bytes of the cell's ``n_images`` (extra_info.raw_bytes, else computed from the shape)."""
        return int(self.extra_info.get("raw_bytes", self.n_images * math.prod(self.image_shape)))

    @property
    def images_per_round(self) -> int:
        """Images one round writes or reads (extra_info.images_per_round): ``n_images``, except single-image cells
        (read_single: one; store_single_into: two writes into a store of ``n_images``, also in runs that did not
        record it)."""
        default = 2 if self.operation == "store_single_into" else self.n_images
        return int(self.extra_info.get("images_per_round", default))

    @property
    def seconds_per_image(self) -> float:
        """What one image costs: the median round over its images; single writes into a filled store amortised over
        whole cycles of the method's upkeep (``write_amortised_s``), where the run recorded it."""
        return float(self.extra_info.get("write_amortised_s", self.stats["median"] / self.images_per_round))

    @property
    def bytes_per_image(self) -> float:
        return self.raw_bytes / self.n_images


def cell_identity(cell: Cell) -> dict[str, Any]:
    """Everything that changes what a cell measures: operation, method, image count and shape, dtype, dataset, durable,
    launcher, codec, and for training reads cache, batch size and workers (None where a cell has none). A field a
    run did not record takes the value runs had before it was recorded (IDENTITY_DEFAULTS). The one place that
    decides which cells are the same cell: Cell.key, reports compare and reports history use it."""
    info = cell.extra_info
    identity = {
        "operation": cell.operation,
        "method": cell.method,
        "n_images": cell.n_images,
        "image_shape": cell.image_shape,
    }
    for field, default in IDENTITY_DEFAULTS.items():
        identity[field] = info.get(field, default)
    if identity["codec"] is None and not cell.method.startswith("floor-"):
        try:
            identity["codec"] = codec_of(cell.method)
        except ValueError:  # a method or codec this version does not know
            identity["codec"] = "raw"
    return identity


def identity_differences(base: Cell, head: Cell) -> list[str]:
    """The fields of ``cell_identity`` on which two cells differ, as "durable: False != True"."""
    ours, theirs = cell_identity(base), cell_identity(head)

    def shown(value: Any) -> str:
        return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return [
        f"{field}: {shown(ours[field])} != {shown(theirs[field])}" for field in ours if ours[field] != theirs[field]
    ]


@dataclass(frozen=True)
class Run:
    """One pytest-benchmark JSON document reduced to this suite's cells."""

    path: Path
    machine_info: Mapping[str, Any]
    commit_info: Mapping[str, Any]
    datetime: str
    cells: tuple[Cell, ...]

    @property
    def started(self) -> datetime:
        """Start of the run as an aware datetime (naive timestamps are taken as UTC)."""
        return _parse_datetime(self.datetime)

    @property
    def label(self) -> str:
        """Short human name: "node · YYYY-MM-DD HH:MM · commit[:7]" (parts that are unknown are left out)."""
        parts = [str(self.machine_info.get("node") or "unknown-node"), f"{self.started:%Y-%m-%d %H:%M}"]
        commit = self.commit_info.get("id")
        if commit:
            parts.append(str(commit)[:7])
        return " · ".join(parts)


def _parse_datetime(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _freeze(value: Any) -> Any:
    """Read-only view of nested JSON so frozen dataclasses are not mutable through their mappings."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(path, "no such file") from None
    except IsADirectoryError:
        raise ReportInputError(path, "is a directory, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReportInputError(path, f"cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportInputError(path, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None


def _parse_cell(path: Path, index: int, bench: Any) -> Cell | None:
    """The Cell of one `benchmarks` entry, or None when it belongs to another suite."""
    if not isinstance(bench, dict):
        raise ReportInputError(path, f"benchmarks[{index}] is not an object")
    extra = bench.get("extra_info")
    if not isinstance(extra, dict) or extra.get("suite") != SUITE:
        return None
    where = f"benchmark {bench.get('name', f'#{index}')!r}"
    missing = [f"extra_info.{field}" for field in REQUIRED_EXTRA_INFO if field not in extra]
    stats = bench.get("stats")
    if not isinstance(stats, dict):
        missing.append("stats")
        stats = {}
    missing += [f"stats.{field}" for field in REQUIRED_STATS if field not in stats]
    if missing:
        raise ReportInputError(path, f"{where}: missing {', '.join(missing)}")
    if extra["operation"] not in OPERATIONS:
        raise ReportInputError(path, f"{where}: unknown extra_info.operation {extra['operation']!r}")
    try:
        n_images = int(extra["n_images"])
        image_shape = tuple(int(dim) for dim in extra["image_shape"])
        numbers = {
            name: float(value) for name, value in stats.items() if name != "data" and isinstance(value, (int, float))
        }
        data = tuple(float(value) for value in stats["data"]) if stats.get("data") else None
    except (TypeError, ValueError):
        raise ReportInputError(path, f"{where}: n_images, image_shape or stats are not numbers") from None
    bad_stats = [name for name in REQUIRED_STATS if name not in numbers]
    if bad_stats:
        raise ReportInputError(path, f"{where}: stats.{bad_stats[0]} is not a number")
    return Cell(
        operation=extra["operation"],
        method=str(extra["method"]),
        n_images=n_images,
        image_shape=image_shape,
        stats=MappingProxyType(numbers),
        data=data,
        extra_info=_freeze(extra),
    )


def load_run(path: str | os.PathLike) -> Run:
    """Read one pytest-benchmark JSON file (autosave, --benchmark-json or --benchmark-save)."""
    path = Path(path)
    document = _read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        raise ReportInputError(path, "not pytest-benchmark JSON (no 'benchmarks' list)")
    for field in ("machine_info", "commit_info"):
        if not isinstance(document.get(field), dict):
            raise ReportInputError(path, f"missing {field!r} object")
    stamp = document.get("datetime")
    try:
        _parse_datetime(stamp)
    except (TypeError, ValueError):
        raise ReportInputError(path, f"missing or non-ISO 8601 'datetime': {stamp!r}") from None
    cells = [cell for index, bench in enumerate(document["benchmarks"]) if (cell := _parse_cell(path, index, bench))]
    if not cells:
        raise ReportInputError(path, f"no cells of this suite (no benchmark has extra_info.suite == {SUITE!r})")
    seen: set[tuple] = set()
    for cell in cells:
        if cell.key in seen:
            raise ReportInputError(path, f"two benchmarks for the same cell {cell.key}")
        seen.add(cell.key)
    return Run(
        path=path,
        machine_info=_freeze(document["machine_info"]),
        commit_info=_freeze(document["commit_info"]),
        datetime=stamp,
        cells=tuple(cells),
    )


def without_rounds(path: str | os.PathLike) -> dict[str, Any]:
    """A run's document with every benchmark's per-round timings (stats.data) left out: what a report reads of it,
    a quarter of its size, for runs kept in a repository (``reports compare`` needs the rounds)."""
    load_run(path)  # refuse what is not a run of this suite
    document = _read_json(Path(path))
    for bench in document["benchmarks"]:
        if isinstance(bench, dict) and isinstance(bench.get("stats"), dict):
            bench["stats"].pop("data", None)
    return document


def _json_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*.json") if path.is_file())


def _latest(files: list[Path]) -> Path:
    """Newest run by its `datetime`; files without a readable one fall back to name order (NNNN_)."""
    oldest = datetime.min.replace(tzinfo=timezone.utc)

    def started(path: Path) -> datetime:
        try:
            return _parse_datetime(json.loads(path.read_text(encoding="utf-8"))["datetime"])
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
            return oldest

    return max(files, key=lambda path: (started(path), path.name))


def resolve_inputs(inputs: Sequence[str], benchmarks_dir: str | os.PathLike = ".benchmarks") -> list[Path]:
    """Turn command-line inputs into JSON files, in the order given and without repeats.

    No inputs means the latest run under benchmarks_dir. Each input is a file, a directory (all
    *.json in it, recursively), a glob, or a pytest-benchmark run id such as "0003" (the NNNN_
    prefix of autosaved files under benchmarks_dir).
    """
    benchmarks_dir = Path(benchmarks_dir)
    if not inputs:
        if not benchmarks_dir.is_dir():
            raise ReportInputError(
                benchmarks_dir,
                "no such directory (run `pytest benchmarks --benchmark-autosave` first, or name JSON files)",
            )
        files = _json_files(benchmarks_dir)
        if not files:
            raise ReportInputError(benchmarks_dir, "no benchmark runs (*.json) found")
        return [_latest(files)]
    resolved: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = _json_files(path)
            if not found:
                raise ReportInputError(path, "directory holds no *.json files")
        elif path.exists():
            found = [path]
        elif re.fullmatch(r"\d+", text):
            prefix = f"{int(text):04d}_"
            found = (
                [file for file in _json_files(benchmarks_dir) if file.name.startswith(prefix)]
                if benchmarks_dir.is_dir()
                else []
            )
            if not found:
                raise ReportInputError(text, f"no run with id {text} (no {prefix}*.json under {benchmarks_dir})")
        elif glob.has_magic(text):
            matches = sorted(Path(match) for match in glob.glob(text, recursive=True))
            found = [file for match in matches for file in (_json_files(match) if match.is_dir() else [match])]
            if not found:
                raise ReportInputError(text, "glob matched no files")
        else:
            raise ReportInputError(path, "no such file or directory")
        resolved += [file for file in found if file not in resolved]
    return resolved

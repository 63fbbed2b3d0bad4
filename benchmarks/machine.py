"""Facts about this machine that explain storage numbers, recorded in every run's machine_info."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from reports.figures import figure_document


def describe_storage(path: Path) -> dict:
    """Filesystem type, mount point, device and free bytes of the filesystem holding ``path``."""
    given = path = Path(path).resolve()
    while not path.exists():  # the run folder may be gone already: describe the filesystem it was on
        path = path.parent
    mount = {"mount_point": None, "filesystem": "unknown", "device": None}
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                device, mount_point, filesystem = line.split()[:3]
                mount_point = mount_point.replace("\\040", " ")
                if _is_under(path, Path(mount_point)) and len(mount_point) >= len(mount["mount_point"] or ""):
                    mount = {"mount_point": mount_point, "filesystem": filesystem, "device": device}
    except OSError:
        pass  # not Linux: the filesystem stays unknown
    return {"path": str(given), **mount, "free_bytes": shutil.disk_usage(path).free}


def _is_under(path: Path, mount_point: Path) -> bool:
    return path == mount_point or mount_point in path.parents


def library_versions() -> dict[str, str]:
    """Versions of the Python packages and of the C libraries behind them (each installed method says its own)."""
    import matplotlib
    import numpy
    import PIL

    import storage_impls
    from storage_impls.registry import get_store_class, installed_methods

    versions = {"numpy": numpy.__version__, "Pillow": PIL.__version__}
    for method in installed_methods():
        versions.update(get_store_class(method).library_versions())
    return {**versions, "matplotlib": matplotlib.__version__, "storage_impls": storage_impls.__version__}


def available_memory() -> float:
    """Bytes of memory available for new arrays (Linux's MemAvailable), or infinity where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


def save_figure(
    path: Path,
    name: str,
    module: str,
    argv: Sequence[str],
    started: datetime,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> None:
    """Save a script's table for ``python -m reports publish`` (format: reports/figures.py) with this machine, the
    commit, the load average and the command that remakes it (``python -m MODULE ARGV``)."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.utils import get_commit_info

    machine_info = {
        **pytest_benchmark_generate_machine_info(),
        "command": shlex.join(("python", "-m", module, *argv)),
        "storage": describe_storage(Path(tempfile.gettempdir())),
        "load_average": list(os.getloadavg()),
    }
    document = figure_document(name, started, machine_info, get_commit_info(), header, rows)
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def argv_of(argv: Sequence[str] | None) -> list[str]:
    """A script's arguments as given: ``argv`` when called as a function, else the command line's."""
    return list(sys.argv[1:] if argv is None else argv)

"""Adds the benchmark suite's options (benchmarks/options.py) to pytest, and parametrises its training-read cells.

Every option can also be set with an environment variable (named in ``pytest --help``);
the command line wins. ``pytest`` alone runs ``tests/``; ``pytest benchmarks`` runs the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.options import OPTIONS, parse_flag

BENCHMARKS_DIR = Path(__file__).parent / "benchmarks"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("image-storage", "image storage benchmarks (pytest benchmarks)")
    for option, variable, default, parse, help_text in OPTIONS:
        default = os.environ.get(variable, default)
        shown = "" if default is None else f"; default {default}"
        group.addoption(option, type=parse, default=default, help=f"{help_text} [env {variable}{shown}]")
    group.addoption(
        "--durable",
        action="store_true",
        default=parse_flag(os.environ.get("IMAGE_BENCH_DURABLE", "")),
        help="fsync every store (files and folders) before it returns, for all methods [env IMAGE_BENCH_DURABLE=1]",
    )
    group.addoption(
        "--loaders",
        action="store_true",
        default=parse_flag(os.environ.get("IMAGE_BENCH_LOADERS", "")),
        help="also run the loader cells (benchmarks/test_loader.py: ours and the peers through a "
        "DataLoader; needs the [torch] and [peers] extras; not in the default run) "
        "[env IMAGE_BENCH_LOADERS=1]",
    )
    group.addoption(
        "--strict-floors",
        action="store_true",
        default=parse_flag(os.environ.get("IMAGE_BENCH_STRICT_FLOORS", "")),
        help="fail the run when a cell is flagged below its floor (default: the summary names it) "
        "[env IMAGE_BENCH_STRICT_FLOORS=1]",
    )
    soak = parser.getgroup("soak", "the soak test (tests/test_soak.py)")
    soak.addoption("--soak-seconds", type=float, default=8.0, help="seconds of load per method (default 8, as in CI)")
    soak.addoption(
        "--soak-methods",
        default=None,
        help="methods to soak, comma-separated, or all (every installed one; default lmdb,hdf5,disk,npy-memmap)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Keep every round's time in saved runs: `python -m reports compare` tests on them.
    if hasattr(config.option, "benchmark_save_data"):
        config.option.benchmark_save_data = True


@pytest.hookimpl(trylast=True)  # after benchmarks/conftest.py has parametrised the method, so ids start with it
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise the training-read cells of the suite: the largest cutoff (``n_images``), then batch size, workers
    and cache, giving ids like ``test_read_random[lmdb-100000-b256-w1-warm]`` and
    ``test_loader[lmdb-10000-b256-w0]``; the remote cells' image count, batch size, workers, order and network:
    ``test_read_remote[lmdb-1000-b256-w2-shuffle-none]``."""
    if BENCHMARKS_DIR not in metafunc.definition.path.parents:
        return
    option = metafunc.config.getoption
    remote_images = sorted({min(count, max(option("cutoffs"))) for count in option("remote_cutoffs")})
    orders = ("shuffle", *(f"stream-buf{size}" for size in option("shuffle_buffer")))
    axes = (
        ("n_images", (max(option("cutoffs")),), str),
        ("remote_images", remote_images, str),
        ("batch_size", option("batch_sizes"), lambda size: f"b{size}"),
        ("workers", option("workers"), lambda count: f"w{count}"),
        ("loader_workers", option("loader_workers"), lambda count: f"w{count}"),
        ("remote_workers", option("remote_workers"), lambda count: f"w{count}"),
        ("cache", option("cache"), str),
        ("order", orders, str),
        ("network", tuple(network.label for network in option("network", None) or ()) or ("none",), str),
    )
    for name, values, ids in axes:
        if name in metafunc.fixturenames:  # a network per session-wide group of cells: one shaped path at a time
            metafunc.parametrize(name, values, ids=ids, scope="session" if name == "network" else None)

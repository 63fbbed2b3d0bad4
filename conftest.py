"""Options of the benchmark suite (``pytest benchmarks``) and what each run records about the machine.

Every option can also be set with an environment variable (named in ``pytest --help``);
the command line wins. ``pytest`` alone runs ``tests/``; ``pytest benchmarks`` runs the suite.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage_impls import METHODS

DEFAULT_CUTOFFS = "10,100,1000,10000,100000"


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images come from: ``synthetic`` (made on the spot) or ``cifar10`` (python batches at ``path``)."""

    name: str
    path: Path | None = None


def parse_cutoffs(text: str) -> tuple[int, ...]:
    """``"10,100"`` -> (10, 100): image counts, positive, sorted, distinct."""
    values = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a positive whole number of images (e.g. --cutoffs 10,100,1000)")
        values.append(int(part))
    return tuple(sorted(set(values)))


def parse_methods(text: str) -> tuple[str, ...]:
    """``"disk,hdf5"`` -> ("disk", "hdf5"), each a name in storage_impls.METHODS."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(map(repr, unknown)) or repr(text)}; known: {','.join(METHODS)}")
    return names


def parse_dataset(text: str) -> DatasetSpec:
    """``synthetic`` or ``cifar10:PATH`` (the folder of CIFAR-10's python batches)."""
    if text == "synthetic":
        return DatasetSpec("synthetic")
    name, _, path = text.partition(":")
    if name != "cifar10" or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dataset: use synthetic or cifar10:PATH")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"CIFAR-10 folder {path!r} does not exist")
    return DatasetSpec("cifar10", Path(path))


def parse_shape(text: str) -> tuple[int, ...]:
    """``"256x256x3"`` -> (256, 256, 3); ``"64x64"`` is a grey image."""
    from storage_impls.base import check_image_shape

    try:
        shape = tuple(int(side) for side in text.lower().split("x"))
        check_image_shape(shape, "image shape")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image shape HxW or HxWxC with C in 1, 3, 4 ({error})") from None
    return shape


def parse_flag(text: str) -> bool:
    """Environment-variable form of a flag: 1/true/yes or 0/false/no/empty."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value (use 1 or 0)")


OPTIONS = [
    # (option, environment variable, default, parser, help)
    ("--cutoffs", "IMAGE_BENCH_CUTOFFS", DEFAULT_CUTOFFS, parse_cutoffs, "image counts of the *_many cells, comma-separated"),
    ("--methods", "IMAGE_BENCH_METHODS", ",".join(METHODS), parse_methods, "storage methods to time, comma-separated (default: all)"),
    ("--dataset", "IMAGE_BENCH_DATASET", "synthetic", parse_dataset,
     "synthetic (made on the spot, no download) or cifar10:PATH (CIFAR-10 python batches; doubled past 50000 images)"),
    ("--image-shape", "IMAGE_BENCH_SHAPE", "32x32x3", parse_shape, "shape of the synthetic images, HxW or HxWxC"),
    ("--storage-dir", "IMAGE_BENCH_STORAGE_DIR", None, Path,
     "folder to write the stores in (default: pytest's temporary folder); a run folder inside it is removed at the end"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("image-storage", "image storage benchmarks (pytest benchmarks)")
    for option, variable, default, parse, help_text in OPTIONS:
        default = os.environ.get(variable, default)
        group.addoption(option, type=parse, default=default, help=f"{help_text} [env {variable}; default {default}]")
    group.addoption("--durable", action="store_true", default=parse_flag(os.environ.get("IMAGE_BENCH_DURABLE", "")),
                    help="fsync every store (files and folders) before it returns, for all methods [env IMAGE_BENCH_DURABLE=1]")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Keep every round's time in saved runs: `python -m reports compare` tests on them.
    if hasattr(config.option, "benchmark_save_data"):
        config.option.benchmark_save_data = True

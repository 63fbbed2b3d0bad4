"""The benchmark suite's options: what each accepts, its environment variable and default, and the
parsers that check them (also used by the MPI runner, benchmarks/mpi.py). The root conftest.py adds
them to pytest."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from storage_impls import METHODS
from storage_impls.core.base import SUPPORTED_DTYPES, check_image_shape
from storage_impls.registry import canonical_spec, parse_spec

TUTORIAL_CUTOFFS = "10,100,1000,10000,100000"  # the tutorial's grid: `--cutoffs tutorial`
DEFAULT_CUTOFFS = "10,100,1000,10000"  # keeps the default run of every method within 20 minutes on 2 cores
MAX_DEFAULT_WORKERS = 8  # the default --workers is 1 and the core count, capped here
DEFAULT_WORKERS = ",".join(map(str, sorted({1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)})))
CACHE_STATES = ("warm", "cold", "limited")
DTYPE_NAMES = tuple(str(dtype) for dtype in SUPPORTED_DTYPES)  # --dtype's values
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's rule for a bucket's name
OBJECT_STORE_SYNTAX = "local or s3://BUCKET/PREFIX, optionally ?endpoint=http://HOST:PORT"
DATASET_FOLDERS = {"cifar10": "CIFAR-10", "mnist": "MNIST", "folder": "image"}  # datasets read from a folder: NAME:PATH


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images come from: ``synthetic`` (made on the spot), ``cifar10`` (python batches at ``path``),
    ``mnist`` (idx files at ``path``) or ``folder`` (image files in one sub-folder per class of ``path``)."""

    name: str
    path: Path | None = None


def _positive_ints(text: str, what: str, example: str, least: int = 1) -> tuple[int, ...]:
    """``"10,100"`` -> (10, 100): at least ``least`` (default: positive), sorted, distinct; the error names the bad
    value and gives ``example``."""
    values = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < least:
            kind = "positive whole number" if least == 1 else f"whole number (at least {least})"
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a {kind} of {what} (e.g. {example})")
        values.append(int(part))
    return tuple(sorted(set(values)))


def parse_cutoffs(text: str) -> tuple[int, ...]:
    """``"10,100"`` -> (10, 100): image counts, positive, sorted, distinct; ``tutorial`` is the tutorial's grid."""
    return _positive_ints(
        TUTORIAL_CUTOFFS if text.strip() == "tutorial" else text, "images", "--cutoffs 10,100,1000 or tutorial"
    )


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"64,256"`` -> (64, 256): images per batch of the read_random cells."""
    return _positive_ints(text, "images per batch", "--batch-sizes 64,256")


def parse_workers(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> (1, 2): reader processes of the read_random cells (a DataLoader's num_workers, at least 1)."""
    return _positive_ints(text, "worker processes", "--workers 1,2")


def parse_shuffle_buffers(text: str) -> tuple[int, ...]:
    """``"512"`` -> (512,): images each worker's shuffle buffer holds in the remote cells' stream epochs."""
    return _positive_ints(text, "images", "--shuffle-buffer 512")


def parse_loader_workers(text: str) -> tuple[int, ...]:
    """``"0,2"`` -> (0, 2): a DataLoader's num_workers in the loader cells (0: batches read in the training process)."""
    return _positive_ints(text, "worker processes", "--loader-workers 0,2", least=0)


def parse_cache(text: str) -> tuple[str, ...]:
    """``"warm,cold"`` -> ("warm", "cold"): page-cache state before each read_random round, in CACHE_STATES order."""
    names = {part.strip() for part in text.split(",")}
    unknown = sorted(names - set(CACHE_STATES))
    if unknown or not text.strip():
        raise argparse.ArgumentTypeError(
            f"unknown cache state {', '.join(map(repr, unknown)) or repr(text)}; "
            f"use warm, cold, limited or a list such as warm,cold"
        )
    return tuple(state for state in CACHE_STATES if state in names)


def parse_fraction(text: str) -> float:
    """``"0.2"`` or ``"1/5"`` -> 0.2: the share of a store's bytes that ``--cache limited`` lets its readers cache."""
    try:
        numerator, _, denominator = text.partition("/")
        value = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        value = 0.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction above 0 and at most 1 (e.g. 0.2 or 1/5)")
    return value


def parse_methods(text: str) -> tuple[str, ...]:
    """``"disk,hdf5"`` -> ("disk", "hdf5"): method names or variants (``rocksdb:compression=zstd,bloom_bits=10``:
    a ``key=value`` item belongs to the method before it), each checked by the registry and spelled canonically
    when its package is installed (otherwise its cells are skipped with the install hint)."""
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if "=" in item and ":" not in item and specs:
            specs[-1] += f",{item}"
        else:
            specs.append(item)
    try:
        checked = [_canonical(spec) for spec in specs if spec]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not checked:
        raise argparse.ArgumentTypeError(f"no method in {text!r}; known: {','.join(METHODS)}")
    return tuple(dict.fromkeys(checked))


def _canonical(spec: str) -> str:
    try:
        return canonical_spec(spec)
    except ImportError:
        parse_spec(spec)  # the syntax and the method name are still checked
        return spec


def parse_dataset(text: str) -> DatasetSpec:
    """``synthetic``, ``cifar10:PATH`` (the folder of CIFAR-10's python batches), ``mnist:PATH`` (the folder
    of MNIST's idx files) or ``folder:PATH`` (an image folder, one sub-folder per class); the folder's content is
    checked when the suite starts."""
    if text == "synthetic":
        return DatasetSpec("synthetic")
    name, _, path = text.partition(":")
    if name not in DATASET_FOLDERS or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dataset: use synthetic, cifar10:PATH, mnist:PATH or folder:PATH"
        )
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"{DATASET_FOLDERS[name]} folder {path!r} does not exist")
    return DatasetSpec(name, Path(path))


@dataclass(frozen=True)
class ObjectStoreSpec:
    """Where the remote cells read from (``--object-store``): ``local`` (bucket None: a server on 127.0.0.1, a
    fresh bucket) or a bucket and prefix on an S3-compatible endpoint (None: AWS_ENDPOINT_URL, else AWS itself)."""

    bucket: str | None = None
    prefix: str = ""
    endpoint: str | None = None


def parse_object_store(text: str) -> ObjectStoreSpec:
    """``local`` or ``s3://bucket/prefix?endpoint=http://host:9000`` (the query optional; credentials and region come
    from the AWS_* variables)."""
    if text.strip() == "local":
        return ObjectStoreSpec()
    parts = urlsplit(text.strip())
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    endpoint = query.pop("endpoint", None)
    problem = None
    if parts.scheme != "s3":
        problem = "only s3:// URLs"
    elif not BUCKET_NAME.fullmatch(parts.netloc):
        problem = f"{parts.netloc!r} is not a bucket name"
    elif query:
        problem = f"unknown query key {', '.join(query)} (only endpoint=)"
    elif endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        problem = f"endpoint {endpoint!r} is not an http:// or https:// URL"
    if problem:
        raise argparse.ArgumentTypeError(f"--object-store {text!r}: {problem}; use {OBJECT_STORE_SYNTAX}")
    return ObjectStoreSpec(parts.netloc, parts.path.strip("/"), endpoint.rstrip("/") if endpoint else None)


RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}  # tc's units, bits per second
SHAPERS = ("auto", "tbf", "proxy")  # what keeps --network's rate: tbf when root (auto), or the proxy
NETWORK_SYNTAX = (
    "rtt=20ms,rate=1gbit (rtt in ms, rate in kbit, mbit or gbit; either may be left out; "
    "shaper=tbf or shaper=proxy to choose what keeps the rate)"
)


@dataclass(frozen=True)
class NetworkSpec:
    """The round trip (seconds) and bandwidth (bits per second, None: unlimited) put between readers and server, and
    what keeps the rate (``shaper``: tbf where root and auto, else the proxy)."""

    rtt: float = 0.0
    rate: float | None = None
    shaper: str = "auto"

    @property
    def label(self) -> str:
        """``rtt=20ms,rate=1gbit``: the form cell ids and machine_info carry (the shaper is in machine_info)."""
        parts = [f"rtt={self.rtt * 1e3:g}ms"]
        if self.rate is not None:
            unit = next(unit for unit in ("gbit", "mbit", "kbit", "bit") if self.rate >= RATE_UNITS[unit])
            parts.append(f"rate={self.rate / RATE_UNITS[unit]:g}{unit}")
        return ",".join(parts)


def parse_network(text: str) -> NetworkSpec:
    """``rtt=20ms,rate=1gbit`` -> NetworkSpec(0.02, 1e9); ``shaper=proxy`` or ``shaper=tbf`` may follow."""
    values: dict[str, float] = {}
    shaper = "auto"
    for item in filter(None, (part.strip() for part in text.lower().split(","))):
        key, _, value = item.partition("=")
        if key == "shaper" and value in SHAPERS:
            shaper = value
            continue
        number = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|[kmg]?bit)", value.strip())
        unit = number and number.group(2)
        if key not in ("rtt", "rate") or key in values or not number or (unit == "ms") != (key == "rtt"):
            raise argparse.ArgumentTypeError(f"--network {text!r}: {item!r} is not understood; use {NETWORK_SYNTAX}")
        values[key] = float(number.group(1)) * (1e-3 if unit == "ms" else RATE_UNITS[unit])
    if not values or values.get("rate") == 0:
        raise argparse.ArgumentTypeError(f"--network {text!r}: use {NETWORK_SYNTAX}")
    return NetworkSpec(values.get("rtt", 0.0), values.get("rate"), shaper)


def parse_networks(text: str) -> tuple[NetworkSpec, ...]:
    """One network or several for an RTT sweep in one run: a key met again starts the next, so
    ``rtt=0ms,rtt=5ms,rtt=20ms`` is three networks and ``rtt=5ms,rate=1gbit,rtt=20ms,rate=1gbit`` two."""
    groups: list[list[str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key = item.partition("=")[0].strip().lower()
        if not groups or key in {other.partition("=")[0].strip().lower() for other in groups[-1]}:
            groups.append([])
        groups[-1].append(item)
    networks = tuple(parse_network(",".join(group)) for group in groups)
    labels = [network.label for network in networks]
    if not networks or len(set(labels)) < len(labels):
        raise argparse.ArgumentTypeError(f"--network {text!r}: each network once; use {NETWORK_SYNTAX}")
    return networks


def parse_shape(text: str) -> tuple[int, ...]:
    """``"256x256x3"`` -> (256, 256, 3); ``"28x28"`` is a grey image, ``"3x128x128"`` a channel-first one."""
    try:
        shape = tuple(int(side) for side in text.lower().split("x"))
        check_image_shape(shape, "image shape")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image shape HxW, HxWxC or CxHxW ({error})") from None
    return shape


def parse_dtype(text: str) -> np.dtype:
    """``"float32"`` -> numpy's float32: a dtype a store holds (storage_impls.core.base.SUPPORTED_DTYPES), by name."""
    name = text.strip().lower()
    if name not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image dtype: use one of {', '.join(DTYPE_NAMES)}")
    return np.dtype(name)


def parse_flag(text: str) -> bool:
    """Environment-variable form of a flag: 1/true/yes or 0/false/no/empty."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value (use 1 or 0)")


OPTIONS = [
    # (option, environment variable, default, parser, help)
    (
        "--cutoffs",
        "IMAGE_BENCH_CUTOFFS",
        DEFAULT_CUTOFFS,
        parse_cutoffs,
        "image counts of the *_many cells, comma-separated, or `tutorial` for 10,100,1000,10000,100000",
    ),
    (
        "--methods",
        "IMAGE_BENCH_METHODS",
        ",".join(METHODS),
        parse_methods,
        "storage methods to time, comma-separated (default: all)",
    ),
    (
        "--dataset",
        "IMAGE_BENCH_DATASET",
        "synthetic",
        parse_dataset,
        "synthetic (made on the spot, no download), cifar10:PATH (CIFAR-10 python batches; doubled past 50000 images), "
        "mnist:PATH (MNIST idx files, plain or .gz: train, then t10k if there; 70000 images) "
        "or folder:PATH (your images, one sub-folder per class: .png .jpg .jpeg .webp .bmp .tif .tiff .gif)",
    ),
    (
        "--image-shape",
        "IMAGE_BENCH_SHAPE",
        None,
        parse_shape,
        "shape of the synthetic images, HxW, HxWxC (any C) or CxHxW, e.g. 28x28 or 3x128x128 (default 32x32x3; "
        "cifar10 and mnist images have their own, 32x32x3 and 28x28; folder images are resized and center-cropped "
        "to HxW, HxWx3 or HxWx4, by default their own size)",
    ),
    (
        "--dtype",
        "IMAGE_BENCH_DTYPE",
        "uint8",
        parse_dtype,
        f"dtype of the synthetic images: {', '.join(DTYPE_NAMES)} (cifar10, mnist and folder images are uint8)",
    ),
    (
        "--storage-dir",
        "IMAGE_BENCH_STORAGE_DIR",
        None,
        Path,
        "folder to write the stores in (default: pytest's temporary folder); a run folder inside it is removed at the "
        "end",
    ),
    (
        "--batch-sizes",
        "IMAGE_BENCH_BATCH_SIZES",
        "256",
        parse_batch_sizes,
        "images per batch of the read_random cells, comma-separated",
    ),
    (
        "--workers",
        "IMAGE_BENCH_WORKERS",
        DEFAULT_WORKERS,
        parse_workers,
        "reader processes of the read_random cells, comma-separated (default: 1 and the core count, at most "
        f"{MAX_DEFAULT_WORKERS})",
    ),
    (
        "--loader-workers",
        "IMAGE_BENCH_LOADER_WORKERS",
        "0,2",
        parse_loader_workers,
        "num_workers of the DataLoader in the loader cells (--loaders), comma-separated, 0 allowed",
    ),
    (
        "--remote-cutoffs",
        "IMAGE_BENCH_REMOTE_CUTOFFS",
        "1000",
        parse_cutoffs,
        "images of the remote cells' stores (--object-store), comma-separated; at most the largest --cutoffs",
    ),
    (
        "--remote-workers",
        "IMAGE_BENCH_REMOTE_WORKERS",
        "2",
        parse_workers,
        "reader processes of the remote cells (--object-store), comma-separated (e.g. 1,2,4: a cell each)",
    ),
    (
        "--shuffle-buffer",
        "IMAGE_BENCH_SHUFFLE_BUFFER",
        "256",
        parse_shuffle_buffers,
        "images each reader's shuffle buffer holds in the remote cells' stream epochs, comma-separated: a cell each",
    ),
    (
        "--cache",
        "IMAGE_BENCH_CACHE",
        "warm",
        parse_cache,
        "page cache before each read_random round: warm, cold (the store's pages dropped, no root needed), limited "
        "(dropped, and the readers in a memory cgroup holding --limited-fraction of the store: needs root) or a list",
    ),
    (
        "--limited-fraction",
        "IMAGE_BENCH_LIMITED_FRACTION",
        "1/5",
        parse_fraction,
        "--cache limited: the share of the store's bytes its readers' memory cgroup holds (default 1/5, MLPerf's rule)",
    ),
    (
        "--object-store",
        "IMAGE_BENCH_OBJECT_STORE",
        None,
        parse_object_store,
        "where the remote cells read from: local (an S3 server on 127.0.0.1 for the run: s3rver when installed, "
        "else moto's, the [s3] extra) or "
        "s3://BUCKET/PREFIX[?endpoint=http://HOST:PORT] (any S3-compatible endpoint; credentials and region from "
        "the AWS_* variables; the run writes under a new prefix in it, removed at the end); default: no remote cells",
    ),
    (
        "--network",
        "IMAGE_BENCH_NETWORK",
        None,
        parse_networks,
        "round trip and bandwidth between the remote cells' readers and a server on 127.0.0.1, e.g. "
        "rtt=20ms,rate=1gbit, or several in one run (an RTT sweep: rtt=0ms,rtt=5ms,rtt=20ms,rtt=50ms; a key met "
        "again starts the next network) "
        "(a proxy delays each response; the rate by tbf in a network namespace when root, else by the proxy); "
        "measured before the cells run, which refuse to run when it is more than 20 %% off; default: none",
    ),
]

"""How each benchmark cell gets its data, its store, its rounds and its check.

Nothing but the operation itself is timed: the data are made once per session (fixed seed),
read cells read a store filled beforehand, and store cells write each round into a new,
empty folder opened in the round's setup. Folders of earlier rounds are removed after the
cell, never where the next round writes (on ext4, creating many files right after deleting
many is several times slower). Every cell checks what it read or stored afterwards.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from benchmarks.machine import available_memory, describe_storage, library_versions
from storage_impls import ImageStore, get_store_class
from storage_impls.datasets import CIFAR10_IMAGES, load_cifar10, synthetic

SUITE = "image-storage"  # extra_info["suite"]: marks the cells reports/ reads
MIN_ROUNDS = 10  # the suite's default floor: at 5 rounds a lone 10 % regression escapes `reports compare` 1 time in 5
MAX_ROUNDS = 200  # enough for the statistics, bounded in time for microsecond cells
PROGRESS_MIN_IMAGES = 10_000  # announce setup steps from this many images on
STORAGE_DIR_KEY = pytest.StashKey[Path]()  # where this run writes its stores, for machine_info


class Dataset(NamedTuple):
    name: str
    images: np.ndarray
    labels: np.ndarray


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before anything runs, option combinations that cannot work."""
    if not any(arg.startswith("--benchmark-min-rounds") for arg in config.invocation_params.args):
        config.option.benchmark_min_rounds = MIN_ROUNDS  # pytest-benchmark's own default is 5
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("the image storage benchmarks must not run under pytest-xdist (-n): "
                                "parallel workers share the disk and the cores and spoil every time; drop -n")
    cutoffs, shape = config.getoption("cutoffs"), config.getoption("image_shape")
    dataset = config.getoption("dataset")
    if dataset.name == "cifar10":
        if shape != (32, 32, 3):
            raise pytest.UsageError("--image-shape applies to synthetic data only: CIFAR-10 images are 32x32x3")
        if max(cutoffs) > 2 * CIFAR10_IMAGES:
            raise pytest.UsageError(f"--cutoffs {max(cutoffs)} exceeds CIFAR-10 doubled ({2 * CIFAR10_IMAGES} images)")
    needed = 2 * max(cutoffs) * math.prod(shape)  # the data plus one read buffer of the largest cell
    if needed > 0.8 * available_memory():
        raise pytest.UsageError(f"--cutoffs {max(cutoffs)} of {'x'.join(map(str, shape))} images need {needed / 1e9:.1f} GB of "
                                f"memory, {available_memory() / 1e9:.1f} GB is available: lower --cutoffs or --image-shape")


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add what explains storage numbers: the filesystem the stores were written to, library versions."""
    storage_dir = config.stash.get(STORAGE_DIR_KEY, None) or config.getoption("storage_dir") or Path.cwd()
    machine_info["storage"] = describe_storage(storage_dir)
    machine_info["libraries"] = library_versions()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every cell over method, then cutoff (ids like ``test_read_many[hdf5-1000]``)."""
    config = metafunc.config
    if "method" in metafunc.fixturenames:
        metafunc.parametrize("method", config.getoption("methods"))
    if "cutoff" in metafunc.fixturenames:
        single = metafunc.definition.originalname.endswith("_single")
        metafunc.parametrize("cutoff", (1,) if single else config.getoption("cutoffs"))


@contextlib.contextmanager
def progress(config: pytest.Config, what: str, count: int) -> Iterator[None]:
    """Say what a long setup step does and how long it took (steps under PROGRESS_MIN_IMAGES stay quiet)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or count < PROGRESS_MIN_IMAGES:
        yield
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # setup output is captured otherwise
        reporter.ensure_newline()
        reporter.write(f"image-storage: {what} ... ", flush=True)
    start = time.perf_counter()
    yield
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"{time.perf_counter() - start:.1f} s")


@pytest.fixture(scope="session")
def dataset(pytestconfig: pytest.Config) -> Dataset:
    """The images every cell uses, made or loaded once: the first ``cutoff`` of them feed a cell."""
    spec, shape = pytestconfig.getoption("dataset"), pytestconfig.getoption("image_shape")
    count = max(pytestconfig.getoption("cutoffs"))
    if spec.name == "cifar10":
        with progress(pytestconfig, f"loading CIFAR-10 from {spec.path}", CIFAR10_IMAGES):
            images, labels = load_cifar10(spec.path, double=count > CIFAR10_IMAGES)
        return Dataset("cifar10", images[:count], labels[:count])
    with progress(pytestconfig, f"making {count} synthetic {'x'.join(map(str, shape))} images", count):
        images, labels = synthetic(count, shape, seed=0)
    return Dataset("synthetic", images, labels)


@pytest.fixture(scope="session")
def storage_root(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This run's own folder for stores: inside --storage-dir or pytest's temporary folder; removed at the end."""
    parent = pytestconfig.getoption("storage_dir")
    if parent is None:
        root = tmp_path_factory.mktemp("image-storage")
    else:
        root = Path(parent) / f"image-storage-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True)
    pytestconfig.stash[STORAGE_DIR_KEY] = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store_class(method: str) -> type[ImageStore]:
    """The method's class; the cell is skipped, saying what to install, when its package is missing."""
    try:
        return get_store_class(method)
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture
def operation(request: pytest.FixtureRequest) -> str:
    """The cell's operation, named by its test: ``test_read_many`` times ``read_many``."""
    return request.node.originalname.removeprefix("test_")


@pytest.fixture(scope="session")
def filled_store_dirs(pytestconfig: pytest.Config, storage_root: Path, dataset: Dataset) -> Callable[[str, int], Path]:
    """``get(method, n)``: the folder of a store holding the first ``n`` images, filled once, untimed."""
    filled: dict[tuple[str, int], Path] = {}

    def get(method: str, count: int) -> Path:
        if (method, count) not in filled:
            directory = storage_root / "read" / f"{method}-{count}"
            with progress(pytestconfig, f"filling a {method} store with {count} images for reading", count):
                with get_store_class(method)(directory) as store:
                    store.store_many(dataset.images[:count], dataset.labels[:count])
            filled[(method, count)] = directory
        return filled[(method, count)]

    return get


@pytest.fixture
def read_store(store_class: type[ImageStore], method: str, cutoff: int,
               filled_store_dirs: Callable[[str, int], Path]) -> Iterator[ImageStore]:
    """A read-only handle on a store holding the cell's images."""
    with store_class(filled_store_dirs(method, cutoff), "r") as store:
        yield store


class FreshStores:
    """Opens each round's store in a new, empty folder, closing the previous one (all untimed)."""

    def __init__(self, store_class: type[ImageStore], cell_dir: Path, durable: bool) -> None:
        self.store_class, self.cell_dir, self.durable = store_class, cell_dir, durable
        self.current: ImageStore | None = None
        self.rounds = 0

    def open_next(self) -> ImageStore:
        if self.current is not None:
            self.current.close()
        self.rounds += 1
        self.current = self.store_class(self.cell_dir / f"round-{self.rounds}", durable=self.durable)
        return self.current

    def reopen_last(self) -> ImageStore:
        """The last round's store, closed and opened again read-only, to check what reached the disk."""
        self.current.close()
        return self.store_class(self.current.directory, "r")


@pytest.fixture
def fresh_stores(store_class: type[ImageStore], storage_root: Path, request: pytest.FixtureRequest,
                 pytestconfig: pytest.Config) -> Iterator[FreshStores]:
    cell_dir = storage_root / "store" / request.node.name.replace("/", "_")
    stores = FreshStores(store_class, cell_dir, pytestconfig.getoption("durable"))
    yield stores
    if stores.current is not None:
        stores.current.close()
    shutil.rmtree(cell_dir, ignore_errors=True)


@pytest.fixture
def measure(benchmark, pytestconfig: pytest.Config) -> Callable:
    """``measure(target, setup)``: one untimed warm-up round that also sizes the run, then the timed rounds.

    Rounds: enough to fill --benchmark-max-time, at least --benchmark-min-rounds (MIN_ROUNDS unless
    given), at most MAX_ROUNDS; ``setup`` runs before every round, outside the timing. Returns the target's result.
    """
    def run(target: Callable, setup: Callable[[], tuple[tuple, dict]]):
        args, kwargs = setup()
        start = time.perf_counter()
        target(*args, **kwargs)
        warm_up = time.perf_counter() - start
        budget = float(pytestconfig.getoption("benchmark_max_time"))
        rounds = min(MAX_ROUNDS, max(int(pytestconfig.getoption("benchmark_min_rounds")), math.ceil(budget / max(warm_up, 1e-9))))
        return benchmark.pedantic(target, setup=setup, rounds=rounds)

    return run


@pytest.fixture
def record(benchmark, pytestconfig: pytest.Config, dataset: Dataset, operation: str, method: str) -> Iterator[Callable]:
    """``record(n_images, disk_usage=None, images_per_round=None)``: what a reader of the JSON needs, set before
    the timed run; throughput (images_per_round, default n_images, per median round) is added once the rounds are done."""
    def describe(n_images: int, disk_usage=None, images_per_round: int | None = None) -> None:
        shape = dataset.images.shape[1:]
        benchmark.group = f"{operation} {n_images}"
        benchmark.extra_info.update(
            suite=SUITE, operation=operation, method=method, n_images=n_images, image_shape=list(shape),
            raw_bytes=n_images * math.prod(shape), dataset=dataset.name, durable=pytestconfig.getoption("durable"),
            images_per_round=n_images if images_per_round is None else images_per_round,
        )
        if disk_usage is not None:
            benchmark.extra_info["disk_usage"] = {"allocated_bytes": disk_usage.allocated, "apparent_bytes": disk_usage.apparent}

    yield describe
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        median = benchmark.stats.stats.median
        per_round = benchmark.extra_info["images_per_round"]
        benchmark.extra_info["images_per_s"] = per_round / median
        benchmark.extra_info["mb_per_s"] = per_round * benchmark.extra_info["raw_bytes"] / benchmark.extra_info["n_images"] / 1e6 / median

"""How each benchmark cell gets its data, its store, its rounds and its check.

Nothing but the operation itself is timed: the data are made once per session (fixed seed),
read cells read a store filled beforehand, and store cells write each round into a new,
empty folder opened in the round's setup. Folders of earlier rounds are removed after the
cell, never where the next round writes (on ext4, creating many files right after deleting
many is several times slower). Every cell checks what it read or stored afterwards.
"""

from __future__ import annotations

import math
import shlex
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import flags, interleave, memlimit
from benchmarks.cache import start_write_round
from benchmarks.data import DATASET_KEY, Dataset, data_shape, load_dataset
from benchmarks.floors import (
    FLOOR_PREFIX,
    FLOOR_TEST,
    NoFloorError,
    floor_counts,
    floor_images,
    floor_keys,
    floor_names,
    floor_of_test,
    floors_of_cell,
)
from benchmarks.loaders import order_loader_cells
from benchmarks.machine import available_memory, describe_storage, library_versions
from benchmarks.object_store import OBJECT_STORE_KEY, object_bucket, object_store  # noqa: F401 - fixtures
from benchmarks.progress import SuiteClock, announce, rounds_reporter, say
from benchmarks.resources import Meter
from benchmarks.stored import expected, references, store_class, store_profiles  # noqa: F401 - fixtures
from reports.results import SUITE
from storage_impls import ImageStore, get_store_class

MIN_ROUNDS = 10  # the suite's default floor: at 5 rounds a lone 10 % regression escapes `reports compare` 1 time in 5
FLOOR_MIN_ROUNDS = 5  # floor cells' default minimum: only floors of a second or more per round get fewer than 10
LONG_ROUND_S, LONG_MIN_ROUNDS = 5.0, 5  # by default, a cell whose warm-up round took 5 s or more gets at least 5 rounds
FEW_MIN_ROUNDS = 3  # by default, cells whose rounds are costly elsewhere (an object store's requests) get at least 3
MAX_ROUNDS = 200  # enough for the statistics, bounded in time for microsecond cells
STORAGE_DIR_KEY = pytest.StashKey[Path]()  # where this run writes its stores, for machine_info
TIMED_KEY = pytest.StashKey[list]()  # every cell's pytest-benchmark Metadata, for the floor ratios at the end
CLOCK_KEY = pytest.StashKey[SuiteClock]()
MIN_ROUNDS_KEY = pytest.StashKey[dict[str, int]]()  # the minimum rounds of method cells and of floor cells
ROUNDS_KEY = pytest.StashKey[tuple[float, int]]()  # per item: (median seconds per round, rounds), for the clock
STARTED_KEY = pytest.StashKey[float]()  # time.monotonic() when the session was configured, for machine_info


def pytest_configure(config: pytest.Config) -> None:
    """Set the minimum rounds; refuse, before anything runs, option combinations that cannot work."""
    config.stash[STARTED_KEY] = time.monotonic()
    given = int(config.option.benchmark_min_rounds)
    if not any(arg.startswith("--benchmark-min-rounds") for arg in config.invocation_params.args):
        config.option.benchmark_min_rounds = MIN_ROUNDS  # pytest-benchmark's own default is 5
        config.stash[MIN_ROUNDS_KEY] = {
            "cell": MIN_ROUNDS,
            "floor": FLOOR_MIN_ROUNDS,
            "long": LONG_MIN_ROUNDS,
            "few": FEW_MIN_ROUNDS,
        }
    else:
        config.stash[MIN_ROUNDS_KEY] = {"cell": given, "floor": given, "long": given, "few": given}
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(
            "the image storage benchmarks must not run under pytest-xdist (-n): "
            "parallel workers share the disk and the cores and spoil every time; drop -n"
        )
    if "limited" in _option(config, "cache", ("warm",)) and (missing := memlimit.unavailable()):
        raise pytest.UsageError(
            f"--cache limited runs the readers in a memory cgroup, which cannot be made here: {missing}"
        )
    cutoffs, shape, dtype = config.getoption("cutoffs"), data_shape(config), config.getoption("dtype")
    config.option.image_shape = shape  # from here on the shape of the session's images, whatever the dataset
    needed = 2 * max(cutoffs) * math.prod(shape) * dtype.itemsize  # the data plus one read buffer of the largest cell
    if needed > 0.8 * available_memory():
        raise pytest.UsageError(
            f"--cutoffs {max(cutoffs)} of {'x'.join(map(str, shape))} {dtype} images need {needed / 1e9:.1f} GB "
            f"of memory, {available_memory() / 1e9:.1f} GB is available: lower --cutoffs, --image-shape or --dtype"
        )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add what explains storage numbers: the filesystem the stores were written to, library versions; for an
    image folder its class-to-label table and the files skipped as unreadable; the object store of the remote cells
    (what it is, the network shaping, the round trip and throughput measured)."""
    storage_dir = config.stash.get(STORAGE_DIR_KEY, None) or config.getoption("storage_dir") or Path.cwd()
    machine_info["command"] = shlex.join(("pytest", *config.invocation_params.args))  # to re-run it as it was
    if STARTED_KEY in config.stash:  # what the run cost, saved at its end
        machine_info["session_s"] = round(time.monotonic() - config.stash[STARTED_KEY], 1)
    machine_info["storage"] = describe_storage(storage_dir)
    machine_info["libraries"] = library_versions()
    if DATASET_KEY in config.stash:
        machine_info["dataset"] = config.stash[DATASET_KEY]
    if OBJECT_STORE_KEY in config.stash:
        machine_info["object_store"] = config.stash[OBJECT_STORE_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every cell over method, then cutoff (ids like ``test_read_many[hdf5-1000]``; store_single writes one
    image into an empty store, so it has cutoff 1 only); floor cells over
    every image count a cell may need (one image and each cutoff), gather also over --batch-sizes (as ``batch``)."""
    config = metafunc.config
    name = metafunc.definition.originalname
    if name.startswith(FLOOR_TEST):
        metafunc.parametrize("cutoff", floor_counts(config.getoption("cutoffs")))
        if "batch" in metafunc.fixturenames:
            metafunc.parametrize("batch", _option(config, "batch_sizes", (256,)), ids=lambda size: f"b{size}")
        return
    if "method" in metafunc.fixturenames and "peer" not in metafunc.fixturenames:  # a peer is not a method
        metafunc.parametrize("method", config.getoption("methods"))
    if "cutoff" in metafunc.fixturenames:
        metafunc.parametrize("cutoff", (1,) if name == "test_store_single" else config.getoption("cutoffs"))


def _option(config: pytest.Config, name: str, default: tuple) -> tuple:
    """An option the top-level conftest may or may not define yet, as a tuple ("256,64" or (256, 64))."""
    value = config.getoption(name, default)
    if isinstance(value, str):
        return tuple(int(part) if part.strip().isdigit() else part.strip() for part in value.split(","))
    return tuple(value)


def _floor_cell(item: pytest.Item) -> tuple[str, int, int | None] | None:
    """(floor name, images, batch size) of a floor cell; None for any other item."""
    name = getattr(item, "originalname", "")
    if not name.startswith(FLOOR_TEST) or not hasattr(item, "callspec"):
        return None
    params = item.callspec.params
    return floor_of_test(name, params), params["cutoff"], params.get("batch")


def _method_cell(item: pytest.Item) -> tuple[str, str, dict] | None:
    """(method, operation, test parameters) of a method cell; None for floor cells and anything else."""
    params = getattr(item, "callspec", None)
    if params is None or "method" not in params.params or _floor_cell(item):
        return None
    return params.params["method"], item.originalname.removeprefix("test_"), params.params


def _floor_keys(item: pytest.Item) -> tuple[tuple, ...]:
    """The floor cells whose rounds a cell's rounds are interleaved with: its floors (a floor cell: memcpy)."""
    if (floor := _floor_cell(item)) is not None:
        return floor_keys(FLOOR_PREFIX + floor[0], "floor", item.callspec.params)
    cell = _method_cell(item)
    return floor_keys(*cell) if cell is not None else ()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Floor cells follow the cells they bound: -k and -m select the method cells, then exactly the floor cells
    that those need run, each just before the first cell that needs it (memcpy first), so that a floor and its
    cells see the machine in the same state. The loader cells run only when asked for, last (benchmarks/loaders.py).
    Where no method cell was collected (``pytest
    benchmarks/test_floors.py``), -k and -m select floor cells, the cold one only when --cache asks for cold cells.
    Then the clock of the remaining time starts."""
    floors = {floor: item for item in items if (floor := _floor_cell(item)) is not None}
    with_methods = any(_floor_cell(item) is None for item in items)
    if with_methods:
        items[:] = [item for item in items if _floor_cell(item) is None]
    yield
    if with_methods:  # what is left in floors afterwards, no selected cell needs
        ordered = []
        for item in items:
            if (cell := _method_cell(item)) is not None:
                first_needed = sorted(floors_of_cell(*cell), key=lambda floor: (floor[0] != "memcpy", floor))
                ordered += [floors.pop(floor) for floor in first_needed if floor in floors]
            ordered.append(item)
        items[:] = ordered
    else:
        cold = bool({"cold", "limited"} & set(_option(config, "cache", ("warm",))))
        floors = {item.nodeid: item for item in items if not cold and _floor_cell(item)[0].endswith("file-read-cold")}
        items[:] = [item for item in items if item.nodeid not in floors]
    unasked = order_loader_cells(config, items)
    if floors or unasked:
        config.hook.pytest_deselected(items=[*floors.values(), *unasked])
    config.stash[CLOCK_KEY] = SuiteClock(
        items, float(config.getoption("benchmark_max_time")), int(config.getoption("benchmark_min_rounds")), MAX_ROUNDS
    )


@pytest.fixture(scope="session")
def dataset(pytestconfig: pytest.Config) -> Dataset:
    """The images every cell uses, made or loaded once: the first ``cutoff`` of them feed a cell."""
    return load_dataset(pytestconfig)


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
            with announce(pytestconfig, f"filling a {method} store with {count} images for reading", count):
                with get_store_class(method)(directory) as store:
                    store.store_many(dataset.images[:count], dataset.labels[:count])
            filled[(method, count)] = directory
        return filled[(method, count)]

    return get


@pytest.fixture
def read_store(
    store_class: type[ImageStore], method: str, cutoff: int, filled_store_dirs: Callable[[str, int], Path]
) -> Iterator[ImageStore]:
    """A read-only handle on a store holding the cell's images."""
    with store_class(filled_store_dirs(method, cutoff), "r") as store:
        yield store


class FreshStores:
    """Opens each round's store in a new, empty folder, closing and removing the previous one, with no dirty
    pages left (cache.start_write_round; all untimed)."""

    def __init__(self, store_class: type[ImageStore], cell_dir: Path, durable: bool, images: int) -> None:
        self.store_class, self.cell_dir, self.durable, self.images = store_class, cell_dir, durable, images
        self.current: ImageStore | None = None
        self.rounds = 0

    def open_next(self) -> ImageStore:
        if self.current is not None:
            self.current.close()
        start_write_round(
            self.current.directory if self.current is not None else None, self.images, self.store_class.file_per_image
        )
        self.rounds += 1
        self.current = self.store_class(self.cell_dir / f"round-{self.rounds}", durable=self.durable)
        return self.current

    def reopen_last(self) -> ImageStore:
        """The last round's store, closed and opened again read-only, to check what reached the disk."""
        self.current.close()
        return self.store_class(self.current.directory, "r")


@pytest.fixture
def fresh_stores(
    store_class: type[ImageStore],
    storage_root: Path,
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    cutoff: int,
) -> Iterator[FreshStores]:
    cell_dir = storage_root / "store" / request.node.name.replace("/", "_")
    stores = FreshStores(store_class, cell_dir, pytestconfig.getoption("durable"), cutoff)
    yield stores
    if stores.current is not None:
        stores.current.close()
    shutil.rmtree(cell_dir, ignore_errors=True)


@pytest.fixture
def measure(benchmark, pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Callable:
    """``measure(target, setup)``: one untimed warm-up round that also sizes the run, then the timed rounds.

    Rounds: enough to fill --benchmark-max-time, at least --benchmark-min-rounds (unless given: MIN_ROUNDS,
    FLOOR_MIN_ROUNDS for floor cells, LONG_MIN_ROUNDS for a cell whose warm-up took LONG_ROUND_S or more, which
    keeps the default run within its time budget; FEW_MIN_ROUNDS when the cell asks with ``few``: the remote cells,
    whose rounds are a server's work), at most MAX_ROUNDS unless ``least_rounds`` asks for more (a cell
    that must span whole cycles of periodic work); ``setup`` runs before every round,
    outside the timing. Returns the target's result.
    The rounds of the floors the cell is compared with run interleaved with its own (benchmarks/interleave.py).
    Around the timed rounds it measures what they cost (benchmarks.resources: CPU, peak memory, device bytes, minus
    the setups) into extra_info, and a cell whose rounds take long reports them on the terminal as they go.
    """

    def run(target: Callable, setup: Callable[[], tuple[tuple, dict]], least_rounds: int = 0, few: bool = False):
        args, kwargs = setup()
        start = time.perf_counter()
        target(*args, **kwargs)
        warm_up = time.perf_counter() - start
        budget = float(pytestconfig.getoption("benchmark_max_time"))
        least = pytestconfig.stash[MIN_ROUNDS_KEY][
            "floor" if request.node.originalname.startswith(FLOOR_TEST) else "cell"
        ]
        if warm_up >= LONG_ROUND_S:
            least = min(least, pytestconfig.stash[MIN_ROUNDS_KEY]["long"])
        if few:
            least = min(least, pytestconfig.stash[MIN_ROUNDS_KEY]["few"])
        rounds = max(least_rounds, min(MAX_ROUNDS, max(least, math.ceil(budget / max(warm_up, 1e-9)))))
        meter = Meter()
        floors = interleave.rounds_of(pytestconfig, _floor_keys(request.node)) if benchmark.enabled else None
        interleaved = interleave.Interleaved(floors, rounds) if floors else None
        rounds_setup = setup if interleaved is None else interleaved.wrap(setup)
        reporting = rounds_reporter(pytestconfig, request.node.name, rounds, warm_up, rounds_setup)
        result = benchmark.pedantic(target, setup=meter.wrap(reporting), rounds=rounds)
        if benchmark.enabled:
            benchmark.extra_info.update(meter.per_round(rounds))
            if interleaved is not None:
                benchmark.extra_info["floor_interleaved"] = interleaved.stats(benchmark.stats.stats.data)
            if (floor := _floor_cell(request.node)) is not None:
                interleave.register(pytestconfig, floor, target, setup)
        return result

    return run


@pytest.fixture
def record(
    benchmark,
    pytestconfig: pytest.Config,
    dataset: Dataset,
    operation: str,
    method: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable]:
    """``record(n_images, disk_usage=None, images_per_round=None)``: what a reader of the JSON needs, set before
    the timed run, with the floor the cell is compared with (benchmarks.floors); throughput (images_per_round,
    default n_images, per median round) is added once the rounds are done."""

    def describe(n_images: int, disk_usage=None, images_per_round: int | None = None) -> None:
        shape = dataset.images.shape[1:]
        benchmark.group = f"{operation} {n_images}"
        benchmark.extra_info.update(
            suite=SUITE,
            operation=operation,
            method=method,
            n_images=n_images,
            image_shape=list(shape),
            dtype=str(dataset.images.dtype),
            raw_bytes=n_images * math.prod(shape) * dataset.images.itemsize,
            dataset=dataset.name,
            durable=pytestconfig.getoption("durable"),
            launcher="pytest",
            images_per_round=n_images if images_per_round is None else images_per_round,
        )
        params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
        try:
            floors = floor_names(method, operation, params.get("cache", "warm"))
        except NoFloorError:
            floors = ()
        if floors:
            benchmark.extra_info.update(floor="+".join(floors), floor_n_images=floor_images(operation, n_images))
        if disk_usage is not None:
            benchmark.extra_info["disk_usage"] = {
                "allocated_bytes": disk_usage.allocated,
                "apparent_bytes": disk_usage.apparent,
            }

    yield describe
    if benchmark.stats is not None and benchmark.stats.stats.median > 0:
        median = benchmark.stats.stats.median
        info = benchmark.extra_info
        per_round = info["images_per_round"]
        per_image = info.get("write_amortised_s", median / per_round)  # single writes into a store: amortised
        info["images_per_s"] = 1 / per_image
        info["mb_per_s"] = info["raw_bytes"] / info["n_images"] / 1e6 / per_image
        pytestconfig.stash.setdefault(TIMED_KEY, []).append(benchmark.stats)
        request.node.stash[ROUNDS_KEY] = (median, benchmark.stats.stats.rounds)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """Before pytest-benchmark saves the run: each cell's ``floor_ratio``; --strict-floors fails a run with a flag."""
    flags.finish(session, session.config.stash.get(TIMED_KEY, []))
    yield


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    flags.summary(terminalreporter, config, config.stash.get(TIMED_KEY, []))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Time each cell for the estimate of the remaining time, printed now and then after a cell."""
    clock = item.config.stash.get(CLOCK_KEY, None)
    if clock is not None:
        clock.start(item.nodeid)
    yield
    if clock is not None and (line := clock.finish(item.nodeid, item.stash.get(ROUNDS_KEY, None))):
        say(item.config, line)

"""benchmarks/mpi.py under a real ``mpiexec`` (the mpich wheel of the ``mpi`` extra puts one in the venv), two ranks
on this machine: every cheap method reads each id exactly once per epoch, the JSON goes through reports and compare,
and bad input (a store one rank cannot see, more ranks than images, an unknown method, a rank that never arrives,
wrong images, ids read twice or never) stops every rank with one message and a non-zero status, never a hang.

Skipped, saying why, without mpi4py or mpiexec. Reads are broken on purpose by a wrapper script that patches
the runner before calling its ``main``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.mpi_ranks import id_digest, share
from reports.cli import main as report_main
from reports.compare import main as compare_main
from reports.results import load_run
from storage_impls import get_store_class
from storage_impls.registry import installed_methods

REPO = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
TIMEOUT = 60  # seconds any one mpiexec may take here: far more than it needs, so a hang fails instead of waiting
IMAGES = 101  # odd, so that the two ranks' shares differ in size (51 and 50)
CHEAP = [method for method in installed_methods() if get_store_class(method).slow_random_reads is None]
BROKEN = """
import sys

import numpy as np
from mpi4py import MPI

from benchmarks import mpi, mpi_ranks
from storage_impls import ImageStore

kind = sys.argv.pop(1)
if kind == "zeros" and MPI.COMM_WORLD.Get_rank() == 1:  # rank 1 gets zeros from every read
    read_batch = ImageStore.read_batch

    def zeros(self, ids, out=None):
        images, labels = read_batch(self, ids, out=out)
        images[...] = 0
        return images, labels

    ImageStore.read_batch = zeros
elif kind == "same-share":  # every rank reads rank 0's share
    mpi_ranks.share = lambda permutation, rank, ranks: np.ascontiguousarray(permutation[::ranks])
elif kind == "other-node" and MPI.COMM_WORLD.Get_rank() == 1:  # rank 1 says it runs on another machine
    import platform

    platform.node = lambda: "node-b"
elif kind == "zero-decodes":  # every JPEG and WebP decode of every rank gives zeros
    import tests.zeroing_codec  # noqa: F401
sys.exit(mpi.main())
"""

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("mpi4py") is None,
        reason="mpi4py is not installed: pip install -e '.[mpi]' (mpi4py and MPICH's mpiexec)",
    ),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside this Python or on PATH: pip install -e '.[mpi]'"),
]


def _launcher() -> list[str]:
    """mpiexec, with what Open MPI's needs on a small machine (and as root); MPICH's hydra needs neither."""
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    if "Open MPI" not in version and "OpenRTE" not in version:
        return [MPIEXEC]
    return [MPIEXEC, "--oversubscribe", *(["--allow-run-as-root"] if os.geteuid() == 0 else [])]


def _run(cwd: Path, command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def mpiexec(cwd: Path, args: list[str], ranks: int = 2) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m benchmarks.mpi ARGS``, run from ``cwd``."""
    return _run(cwd, [*_launcher(), "-n", str(ranks), sys.executable, "-m", "benchmarks.mpi", *args])


def mpmd(cwd: Path, *commands: list[str]) -> subprocess.CompletedProcess:
    """One rank per command (``mpiexec -n 1 A : -n 1 B``), each command as mpiexec takes it
    (``-wdir DIR python ...``)."""
    launch = _launcher()
    for index, command in enumerate(commands):
        launch += [*([":"] if index else []), "-n", "1", *command]
    return _run(cwd, launch)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def test_mpi_shares_hold_every_id_once_and_digests_add_up():
    permutation = np.random.default_rng(0).permutation(IMAGES)
    shares = [share(permutation, rank, 3) for rank in range(3)]
    assert [len(part) for part in shares] == [34, 34, 33]
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(IMAGES))
    assert sum(id_digest(part) for part in shares) % 2**64 == id_digest(np.arange(IMAGES))
    assert id_digest(np.concatenate([shares[0], shares[0][:1], shares[1], shares[2]])) != id_digest(np.arange(IMAGES))


@pytest.mark.parametrize("method", CHEAP)
def test_mpi_two_ranks_read_every_id_once_per_epoch(tmp_path, method):
    result = mpiexec(
        tmp_path,
        [
            "--method",
            method,
            "--images",
            str(IMAGES),
            "--batch-size",
            "16",
            "--rounds",
            "2",
            "--output",
            "run.json",
            "--scratch",
            str(tmp_path),
        ],
    )
    assert result.returncode == 0, result.stderr
    assert "every id read once per epoch" in result.stdout
    document = json.loads((tmp_path / "run.json").read_text())
    (bench,) = document["benchmarks"]
    info = bench["extra_info"]
    assert (info["operation"], info["workers"], info["ranks"], info["nodes"]) == ("read_random", 2, 2, 1)
    assert [rank["images"] for rank in info["per_rank"]] == [51, 50]
    expected = id_digest(np.arange(IMAGES))
    assert int(info["ids_digest_expected"], 16) == expected
    for epoch in range(3):  # the warm-up and two measured epochs
        assert sum(int(rank["ids_digests"][epoch], 16) for rank in info["per_rank"]) % 2**64 == expected
    slowest = [max(epoch) for epoch in zip(*(rank["epoch_s"] for rank in info["per_rank"]), strict=True)]
    spans = bench["stats"]["data"]  # from the first rank's start to the last rank's end
    assert all(own <= span < own + 0.1 for own, span in zip(slowest, spans, strict=True))
    clocks = [(rank["clock_offset_s"], rank["clock_round_trip_s"]) for rank in info["per_rank"]]
    assert clocks == [(0, None)] * 2  # one machine, one clock
    assert info["dataset"] == "synthetic" and info["store_digest"].startswith("0x")
    assert ("read_cache_bytes" in info) == (get_store_class(method).read_cache_option is not None)  # rocksdb
    assert document["machine_info"]["storage"]["filesystem"]
    (cell,) = load_run(tmp_path / "run.json").cells
    assert cell.variant == "b16-w2-warm" and cell.operation == "read_random"


def test_mpi_scaling_runs_append_into_one_file_that_reports_and_compare_read(tmp_path, capsys):
    common = ["--method", "lmdb", "--images", "200", "--batch-size", "32", "--rounds", "3", "--scratch", str(tmp_path)]
    for ranks, output in ((1, "scaling.json"), (2, "scaling.json"), (2, "other.json")):
        result = mpiexec(tmp_path, [*common, "--output", output, "--append"], ranks=ranks)
        assert result.returncode == 0, result.stderr
    assert {cell.extra_info["workers"] for cell in load_run(tmp_path / "scaling.json").cells} == {1, 2}
    assert report_main([str(tmp_path / "scaling.json"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "read_random_workers.png").exists()  # images/s against ranks
    assert "| lmdb | warm | 32 | 2 |" in (tmp_path / "report" / "report.md").read_text()
    assert compare_main([str(tmp_path / "scaling.json"), str(tmp_path / "other.json")]) == 0  # 3 rounds: inconclusive
    assert "read_random lmdb n=200 32x32x3 b32-w2-warm" in capsys.readouterr().out


def test_mpi_cold_cache_drops_the_store_before_every_epoch(tmp_path):
    result = mpiexec(
        tmp_path,
        [
            "--method",
            "lmdb",
            "--images",
            "500",
            "--rounds",
            "2",
            "--cache",
            "cold",
            "--output",
            "run.json",
            "--scratch",
            str(tmp_path),
        ],
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "run.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["cache"] == "cold" and 0 <= info["resident_fraction_before"] <= 1  # once the ranks had reopened it
    assert [rank["resident_fraction_before"] is None for rank in info["per_rank"]] == [False, True]  # one rank per node


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder holding an lmdb store at store/ (built by a one-rank run)."""
    folder = tmp_path_factory.mktemp("mpi-store")
    result = mpiexec(folder, ["--method", "lmdb", "--images", "50", "--rounds", "1", "--scratch", str(folder)], ranks=1)
    assert result.returncode == 0, result.stderr
    (folder / "image-storage-mpi" / "lmdb-50-32x32x3-uint8").rename(folder / "store")
    return folder


def test_mpi_a_store_one_rank_cannot_see_stops_every_rank_with_one_message(store, tmp_path):
    command = [sys.executable, "-m", "benchmarks.mpi", "--method", "lmdb", "--store", "store", "--rounds", "1"]
    start = time.monotonic()
    result = mpmd(store, ["-wdir", str(store), *command], ["-wdir", str(tmp_path), *command])  # rank 1 sees no store/
    assert result.returncode == 2 and time.monotonic() - start < 20
    assert errors(result) == [
        f"python -m benchmarks.mpi: error: rank 1 on {os.uname().nodename}, opening the store: no lmdb "
        f"store at {tmp_path / 'store'}: directory does not exist (--store must name a store that "
        "every rank sees, on a shared filesystem)"
    ]


@pytest.mark.parametrize(
    ("args", "ranks", "message"),
    [
        (["--method", "lmdb", "--store", "missing"], 2, "no lmdb store at"),
        (
            ["--method", "lmdb", "--store", "store", "--images", "3"],
            4,
            "4 ranks for 3 images: every rank needs at least one",
        ),
        (["--method", "nosuch", "--store", "store"], 2, "unknown storage method 'nosuch'"),
        (["--method", "lmdb", "--store", "store", "--image-shape", "8x8"], 2, "--image-shape and --dtype describe"),
    ],
    ids=["missing-store", "more-ranks-than-images", "unknown-method", "shape-for-a-store"],
)
def test_mpi_bad_input_is_one_message_and_status_2(store, args, ranks, message):
    result = mpiexec(store, args, ranks=ranks)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = errors(result)
    assert message in line


def test_mpi_a_rank_that_never_arrives_ends_the_job_after_the_timeout(store):
    start = time.monotonic()
    result = mpmd(
        store,
        [sys.executable, "-m", "benchmarks.mpi", "--method", "lmdb", "--store", "store", "--timeout", "2"],
        [sys.executable, "-c", "import time; from mpi4py import MPI; time.sleep(60)"],
    )
    assert result.returncode == 3 and time.monotonic() - start < 20
    assert "rank 0 on" in result.stderr and "waited 2 s for the other ranks at reading the arguments" in result.stderr


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("zeros", "rank 1 on {host}, checking epoch 0: 25 of 25 images or labels read differ from what was stored"),
        ("same-share", "epoch 0: the ranks read 50 ids of 50, with digest"),
    ],
)
def test_mpi_wrong_reads_fail_the_epoch(store, tmp_path, kind, message):
    (tmp_path / "broken.py").write_text(BROKEN)
    command = [sys.executable, str(tmp_path / "broken.py"), kind, "--method", "lmdb", "--store", "store"]
    result = mpmd(store, command, command)
    assert result.returncode == 1
    (line,) = errors(result)
    assert message.format(host=os.uname().nodename) in line


def test_mpi_a_lossy_store_is_checked_against_pillow_not_against_its_own_decoder(tmp_path):
    """The reference of a jpeg-90 store is Pillow's encode and decode of the dataset: the store passes, and a decoder
    returning zeros on every rank fails the content check before any epoch, naming the store."""
    common = ["--method", "lmdb:codec=jpeg-90", "--images", "40", "--rounds", "1", "--scratch", str(tmp_path)]
    assert mpiexec(tmp_path, common).returncode == 0
    (tmp_path / "broken.py").write_text(BROKEN)
    result = mpmd(tmp_path, *[[sys.executable, str(tmp_path / "broken.py"), "zero-decodes", *common]] * 2)
    assert result.returncode == 1
    (line,) = errors(result)
    assert "checking the store's content against the dataset: the lmdb store at" in line
    assert "holds other images than the dataset" in line
    assert "40 of 40 images or labels differ (the first: id 0)" in line


def test_mpi_a_store_of_other_images_fails_its_content_check_unless_dataset_names_them(tmp_path):
    from PIL import Image

    from storage_impls.datasets import load_folder, synthetic

    images, labels = synthetic(12, (8, 8, 3), seed=5)
    with get_store_class("lmdb")(tmp_path / "other") as store:
        store.store_many(images, labels)
    result = mpiexec(tmp_path, ["--method", "lmdb", "--store", "other", "--rounds", "1"])
    assert result.returncode == 1
    (line,) = errors(result)
    assert "12 of 12 images or labels differ" in line and "name what it holds with --dataset" in line
    for index, image in enumerate(images):
        (tmp_path / "folder" / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "folder" / f"class{index % 2}" / f"{index:02}.png")
    folder = load_folder(tmp_path / "folder")
    with get_store_class("lmdb")(tmp_path / "pets") as store:
        store.store_many(folder.images, folder.labels)
    result = mpiexec(
        tmp_path,
        [
            "--method",
            "lmdb",
            "--store",
            "pets",
            "--dataset",
            f"folder:{tmp_path / 'folder'}",
            "--rounds",
            "1",
            "--output",
            "run.json",
        ],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run.json").read_text())["benchmarks"][0]["extra_info"]["dataset"] == "folder"


def test_mpi_a_rank_on_another_node_puts_its_times_on_rank_0s_clock(tmp_path):
    """A rank on another node (here: one that says so) measures its clock's offset by pings; the truth here is 0, so the
    offset is within half the round trip of it."""
    (tmp_path / "broken.py").write_text(BROKEN)
    command = [
        sys.executable,
        str(tmp_path / "broken.py"),
        "other-node",
        "--method",
        "lmdb",
        "--images",
        "40",
        "--rounds",
        "2",
        "--scratch",
        str(tmp_path),
        "--output",
        "run.json",
    ]
    result = mpmd(tmp_path, command, command)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "run.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["nodes"] == 2 and info["per_rank"][0]["clock_round_trip_s"] is None
    rank = info["per_rank"][1]
    assert 0 < rank["clock_round_trip_s"] < 1 and abs(rank["clock_offset_s"]) <= rank["clock_round_trip_s"] / 2 + 1e-6

"""Load held: one writer process (``store_single`` appends and replacements, a ``store_many`` now and then, a
``compact()`` every few dozen writes) and ``READERS`` reader processes reading random batches, on one store, for
``--soak-seconds`` per method (``--soak-methods``: lmdb, hdf5, disk and npy-memmap by default, ``all`` for every
installed method). Every batch must be one committed state's images and labels (tests/soak.py checks each), no
reader may fail, readers' memory and open descriptors must stay flat once warm, and the writer must never wait
out its ``lock_timeout`` (5 s; a StoreLockedError would fail it); its slowest write is reported. A reader told to
open the store again (MissingStoreError, where a commit removed the files of its snapshot) is counted, not failed:
that is the documented behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from storage_impls.registry import installed_methods
from tests.faults import CHILD_TIMEOUT, REPO
from tests.soak import History, check_handle, images_for, label_of

pytestmark = pytest.mark.soak

READERS = 8
SEED = 21
RSS_GROWTH_BOUND = 16 << 20  # bytes a reader may grow by once warm (allocator slack), whatever the run's length
FD_GROWTH_BOUND = 2  # a library may open a descriptor once, lazily (lance: 1); never one per handle
DEFAULT_METHODS = "lmdb,hdf5,disk,npy-memmap"


def soak_methods(text: str) -> list[str]:
    """``--soak-methods``: comma-separated methods, or ``all`` (every installed method)."""
    if text.strip() == "all":
        return list(installed_methods())
    return [part.strip() for part in text.split(",") if part.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "method" in metafunc.fixturenames:
        metafunc.parametrize("method", soak_methods(metafunc.config.getoption("soak_methods") or DEFAULT_METHODS))


def test_readers_read_committed_states_while_one_writer_writes(method, tmp_path, request, record_property):
    seconds = request.config.getoption("soak_seconds")
    if method not in installed_methods():
        pytest.skip(f"{method} is not installed here")
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("the readers' memory and descriptors are read from /proc (Linux)")
    directory, command = str(tmp_path / "store"), [sys.executable, "-m", "tests.soak"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": REPO}
    writer = subprocess.Popen([*command, "writer", method, directory, str(SEED)], stdin=subprocess.PIPE, **pipes)
    processes = [writer]
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        until = time.time() + seconds
        readers = [*command, "readers", method, directory, str(SEED), repr(until), str(READERS)]
        processes.append(subprocess.Popen(readers, **pipes))
        writer.stdin.write(f"{until!r}\n")
        writer.stdin.flush()
        outputs = [process.communicate(timeout=seconds + CHILD_TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (_, errors) in zip(processes, outputs):
        assert process.returncode == 0, errors
    wrote, read = (json.loads(output.splitlines()[-1]) for output, _ in outputs)
    figures = {
        "seconds": seconds,
        **wrote,
        "readers": READERS,
        **{name: sum(reader[name] for reader in read) for name in ("handles", "batches", "expired", "errors")},
        "rss_baseline_mib": round(max(reader["rss_baseline"] for reader in read) / 2**20, 1),
        "rss_growth_mib": round(max(reader["rss_growth"] for reader in read) / 2**20, 2),
        "fds_baseline": max(reader["fds_baseline"] for reader in read),
        "fds_growth": max(reader["fds_growth"] for reader in read),
        "samples_per_reader": min(reader["samples"] for reader in read),
    }
    record_property("soak", figures)
    print(f"\nsoak {method}: {json.dumps(figures)}")
    assert figures["errors"] == 0, [error for reader in read for error in reader["first_errors"]]
    assert wrote["writes"] > 1 and figures["batches"] > 0 and figures["samples_per_reader"] >= 2
    assert max(reader["rss_growth"] for reader in read) <= RSS_GROWTH_BOUND
    assert figures["fds_growth"] <= FD_GROWTH_BOUND


def test_the_check_refuses_a_mix_of_states_older_data_or_another_writes_image():
    """Not vacuous: the check passes a handle's batches read from one state, and fails a batch holding an image
    from before a replacement beside one from after it, a later handle reading an older state, and an image beside
    another write's label."""
    probe = History(SEED)
    while True:  # the first replacement, followed by a write of another id
        before = probe.count
        kind, image_id = probe.advance()
        if kind == "single" and image_id < before:
            break
    replaced = probe.generation
    kind, other = probe.advance()
    assert kind == "single" and other != image_id

    def read(ids: list[int], generation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        versions = History(SEED).state(generation)[ids]
        labels = np.array([label_of(int(version), one) for version, one in zip(versions, ids)], np.int64)
        return np.array(ids), images_for(labels), labels

    check_handle(History(SEED), [read([image_id], replaced + 1), read([other], replaced + 1)])
    with pytest.raises(AssertionError, match="not one committed state"):
        check_handle(History(SEED), [read([image_id], replaced - 1), read([other], replaced + 1)])
    history = History(SEED)
    check_handle(history, [read([image_id], replaced)])
    with pytest.raises(AssertionError, match="not one committed state"):
        check_handle(history, [read([image_id], replaced - 1)])  # a later handle, an older state
    ids, images, labels = read([image_id, other], replaced + 1)
    with pytest.raises(AssertionError, match="another write's label"):
        check_handle(History(SEED), [(ids, images[::-1].copy(), labels)])

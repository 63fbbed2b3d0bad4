"""Which methods sync in a non-durable write, counted with strace (README, "Durability"): none of this package's code
does, and of the libraries only RocksDB, on the files of its own database (SST files, MANIFEST, CURRENT, OPTIONS,
the write-ahead log, the database folder), which it syncs at every commit with no option to stop it.

Each method runs in a child Python under ``strace -f`` (its threads too): a first write to warm up, then, between two
marker writes to stderr, one ``store_single`` and one ``store_many``. Skipped without strace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from storage_impls.registry import installed_methods

REPO = Path(__file__).resolve().parent.parent
STRACE = shutil.which("strace")
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "msync", "syncfs", "sync")
LIBRARY_SYNCS = {"rocksdb": re.compile(r"/\.?db-[0-9a-f]+(\.tmp)?(/|$)")}  # method -> the paths its library syncs
CHILD = """
import os, sys
from storage_impls import get_store_class
from storage_impls.datasets import synthetic

images, labels = synthetic(20, (16, 16, 3), seed=0)
with get_store_class(sys.argv[1])(sys.argv[2], durable=sys.argv[3] == "durable") as store:
    store.store_many(images[:5], labels[:5])
    store.store_single(images[5], 5, int(labels[5]))
    os.write(2, b"MARK-START\\n")
    store.store_single(images[6], 6, int(labels[6]))
    store.store_many(images, labels)
    os.write(2, b"MARK-END\\n")
"""

pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed: apt-get install -y strace")


def sync_calls(tmp_path: Path, method: str, durable: bool) -> list[tuple[str, str]]:
    """(call, path) of every sync call between the markers, in every thread of the child."""
    log = tmp_path / "strace.log"
    trace = [STRACE, "-f", "-qq", "-y", "-o", str(log), "-e", f"trace={','.join(SYNC_CALLS)},write"]
    child = [sys.executable, "-c", CHILD, method, str(tmp_path / "store"), "durable" if durable else "-"]
    result = subprocess.run(
        [*trace, *child],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    between = log.read_text().split("MARK-START", 1)[1].split("MARK-END", 1)[0]
    pattern = re.compile(rf"\b({'|'.join(SYNC_CALLS)})\((?:\d+<([^>]*)>)?")
    return [(match[1], match[2] or "") for match in pattern.finditer(between)]


@pytest.mark.parametrize("method", installed_methods())
def test_a_non_durable_write_syncs_nothing_but_what_rocksdb_syncs_itself(tmp_path, method):
    calls = sync_calls(tmp_path, method, durable=False)
    library = LIBRARY_SYNCS.get(method)
    ours = [(call, path) for call, path in calls if not (library and library.search(path))]
    assert ours == [], f"{method} synced {Counter(call for call, _ in ours)} in a non-durable write: {ours[:5]}"
    if method in LIBRARY_SYNCS:
        assert calls, f"{method}'s library no longer syncs: update README's durability paragraph"


def test_the_count_sees_the_syncs_of_a_durable_write(tmp_path):
    assert any(call in ("fsync", "fdatasync") for call, _ in sync_calls(tmp_path, "lmdb", durable=True))

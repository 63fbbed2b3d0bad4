"""Stores made by strangers (issue 21, docs/security.md): a store directory is untrusted input.

Every method's store is planted with what a crafted download could hold in place of each of its files and
folders: a symbolic link to an outside copy, a dangling link into an outside folder, a link to /dev/zero,
a FIFO, a folder replaced by a link to an outside folder. Each planted store is opened read-only and read,
then opened to add an image, in a child process under a timeout and an address-space limit
(tests/untrusted_child.py); the outside ("victim") folder must be unchanged byte for byte after. Then the
crafted contents of each format (HDF5 external links, inflating npz members, absurd declared sizes, ...),
and read-only opens: mode "r" writes nothing, and every method reads a store on a read-only file system.

The default run plants on every top-level file and folder and on up to ``PER_FOLDER`` files of each folder;
``UNTRUSTED_SWEEP=1`` plants on every file (the figures in docs/security.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage_impls import open_store
from storage_impls.registry import installed_methods
from tests.faults import REPO, labelled_batch, pixels_for

METHODS = installed_methods()
LIMIT = 3 << 30  # address space of a child: a crafted store must not make a reader allocate gigabytes
SWEEP = bool(os.environ.get("UNTRUSTED_SWEEP"))
PER_FOLDER = 3
TIMEOUT = 240 if SWEEP else 90
LANCE_FOLDERS = ("_indices", "_deletions", "_transactions", "_versions", "data")  # planted whether there or not
FILE_PLANTS = ("outside-copy", "dangling", "dev-zero", "fifo")


def make_store(method: str, directory: Path) -> list[int]:
    """A store of 21 images with a replaced one (lance: past 16 versions, so that the next write cleans up);
    the labels it holds."""
    labels = list(range(20))
    with open_store(method, directory) as store:
        store.store_many(*labelled_batch(labels))
        store.store_single(pixels_for(20), 20, 20)
        labels.append(20)
        for version in range(17 if method == "lance" else 1):
            store.store_single(pixels_for(100 + version), 3, 100 + version)
            labels[3] = 100 + version
    return labels


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder``: its kind, and a regular file's content hash and mtime."""
    seen = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
            seen[str(path.relative_to(folder))] = (info.st_mode, digest, info.st_mtime_ns if digest else None)
    return seen


def targets(store: Path) -> tuple[list[str], list[str]]:
    """(files, folders) of ``store`` to plant on, relative to it."""
    files, folders = [], []
    for root, dirs, names in os.walk(store):
        relative = Path(root).relative_to(store)
        folders += [str(relative / name) for name in sorted(dirs)]
        chosen = sorted(names) if SWEEP or relative == Path(".") else sorted(names)[:PER_FOLDER]
        files += [str(relative / name) for name in chosen]
    return files, folders


def plant(store: Path, victim: Path, relative: str, kind: str) -> None:
    """Put ``kind`` in place of ``store/relative``, with whatever it points to in ``victim`` (outside the store)."""
    path = store / relative
    victim.mkdir(parents=True)
    if kind == "outside-folder":
        target = victim / "folder"
        if path.exists():
            shutil.move(path, target)
        else:
            target.mkdir()
            (target / "precious.txt").write_bytes(b"outside the store\n")
        path.symlink_to(target, target_is_directory=True)
        return
    if kind == "outside-copy":
        shutil.copy2(path, victim / "copy")
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to({"outside-copy": victim / "copy", "dangling": victim / "created", "dev-zero": "/dev/zero"}[kind])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, tuple[Path, list[int]]]:
    """A store of every method, made once: (its folder, the labels it holds)."""
    made = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp("pristine") / method
        made[method] = folder, make_store(method, folder)
    return made


def run_plants(method: str, plants: list[tuple[str, str, list[int]]], timeout: float = TIMEOUT) -> list[dict]:
    """Run tests/untrusted_child.py on ``plants``; its outcomes, one per plant (fails on a hang or a signal)."""
    command = [sys.executable, "-m", "tests.untrusted_child", method, str(LIMIT), json.dumps(plants)]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        done = (error.stdout or b"").decode().splitlines()
        hung = plants[len(done)][0] if len(done) < len(plants) else "?"
        pytest.fail(f"{method}: hung (no answer in {timeout} s) at {hung} after {len(done)} plants")
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    if result.returncode or len(outcomes) != len(plants):
        stuck = plants[len(outcomes)][0] if len(outcomes) < len(plants) else "?"
        pytest.fail(f"{method}: child exited {result.returncode} at {stuck}:\n{result.stderr[-3000:]}")
    return outcomes


@pytest.mark.parametrize("method", METHODS)
def test_planted_links_and_fifos_are_refused(method, pristine, tmp_path):
    """A link (to an outside copy, dangling, to /dev/zero, to an outside folder) or a FIFO in place of any file
    or folder: every open refuses it (CorruptStoreError naming it), nothing hangs, nothing outside changes."""
    source, labels = pristine[method]
    files, folders = targets(source)
    cases = [(relative, kind) for relative in files for kind in FILE_PLANTS]
    cases += [(relative, "outside-folder") for relative in folders]
    if method == "lance":
        images = next(name for name in folders if name.endswith(".lance"))
        cases += [(f"{images}/{name}", "outside-folder") for name in LANCE_FOLDERS if f"{images}/{name}" not in folders]
    plants = []
    for number, (relative, kind) in enumerate(cases):
        store = tmp_path / "stores" / str(number)
        shutil.copytree(source, store, symlinks=True)
        plant(store, tmp_path / "victim" / str(number), relative, kind)
        plants.append((f"{kind}:{relative}", str(store), labels))
    before = snapshot(tmp_path / "victim")
    outcomes = run_plants(method, plants)
    assert snapshot(tmp_path / "victim") == before, f"{method}: a planted store changed files outside it"
    wrong = [outcome for outcome in outcomes
             if {outcome["read"], outcome["write"]} != {"typed CorruptStoreError"}]
    assert not wrong, f"{method}: {len(wrong)} of {len(outcomes)} planted stores not refused: {wrong[:5]}"

"""Moving whole stores between a local folder and an object store: ``upload`` publishes a store (parallel multipart
uploads, sizes verified by a listing after), ``stage`` downloads one (every object, concurrently, sizes verified) for
the methods that read local files only ("stage then read")."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage_impls.core.errors import CorruptStoreError, MissingStoreError
from storage_impls.core.locking import LOCK_FILE
from storage_impls.core.records import is_temporary
from storage_impls.remote.client import CONCURRENCY, Location

FILE_CONCURRENCY = 4  # files uploaded or downloaded at once (each large one in parallel parts too)


def store_files(directory: Path) -> dict[str, int]:
    """The files of the store in ``directory`` (relative names, sizes): all but the writer lock and temporaries."""
    files = {}
    for root, folders, names in os.walk(directory):
        folders[:] = [name for name in folders if not is_temporary(name)]
        for name in names:
            path = Path(root, name)
            if name != LOCK_FILE and not is_temporary(name) and not path.is_symlink():
                files[path.relative_to(directory).as_posix()] = path.stat().st_size
    return files


def upload(directory: str | os.PathLike, url: str | Location, storage_options: dict | None = None) -> dict[str, int]:
    """Copy the store in ``directory`` to ``url`` (its files under that prefix) and check that every object has its
    file's size; returns the names and sizes. Upload a store no writer is changing (a snapshot)."""
    directory = Path(directory)
    location = url if isinstance(url, Location) else Location(url, storage_options)
    files = store_files(directory)
    if not files:
        raise MissingStoreError(f"{directory} holds no store files to upload")
    with ThreadPoolExecutor(FILE_CONCURRENCY) as pool:
        list(pool.map(lambda name: location.put(name, directory / name), files))
    found = location.list()
    wrong = [name for name, size in files.items() if found.get(name) != size]
    if wrong:
        raise CorruptStoreError(
            f"{location.name(wrong[0])} is {found.get(wrong[0])} bytes after the upload, the file "
            f"{directory / wrong[0]} {files[wrong[0]]}: the upload did not complete"
        )
    return files


def stage(url: str | Location, directory: str | os.PathLike, storage_options: dict | None = None) -> Path:
    """Download every object under ``url`` into ``directory`` (created; must be empty), checking sizes, and return
    it: a local store any method opens. The objects are taken as listed at the start: stage a store no one writes."""
    location = url if isinstance(url, Location) else Location(url, storage_options)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty: stage a store into a new folder")
    listed = location.list()
    if not listed:
        raise MissingStoreError(f"no store at {location.url}: nothing is stored under it")

    def fetch(name: str) -> None:
        data = location.get(name)
        if len(data) != listed[name]:
            raise CorruptStoreError(
                f"{location.name(name)} changed while it was staged ({len(data)} bytes, listed {listed[name]})"
            )
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    with ThreadPoolExecutor(min(CONCURRENCY, len(listed))) as pool:
        list(pool.map(fetch, listed))
    return directory

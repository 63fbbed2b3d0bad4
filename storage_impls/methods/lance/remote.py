"""lance from an object store: ``lance.json`` downloaded at open, then Lance's own object-store client reads the
dataset it names (``lance.dataset(url, storage_options=...)``: its manifests, then the pages a take needs, with its
own request scheduling); the same Snapshot and checks as a local store."""

from __future__ import annotations

import os

import lance

from storage_impls.core.errors import MissingStoreError
from storage_impls.methods.lance.format import Snapshot, lance_errors
from storage_impls.methods.lance.store import FOLDER, META, LanceStore
from storage_impls.remote.checkpointed import RemoteReads
from storage_impls.remote.client import Location


def lance_options(location: Location) -> dict[str, str]:
    """The location's storage options as Lance takes them (object_store's keys, text values), with plain HTTP
    allowed for an http:// endpoint as the package's client allows it."""
    options = {
        key: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in location.storage_options.items()
    }
    endpoint = options.get("endpoint") or options.get("aws_endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        options.setdefault("allow_http", "true")
    return options


class RemoteSnapshot(Snapshot):
    """A Snapshot of the dataset at ``folder``'s name under the store's location."""

    location: Location

    def _open_dataset(self) -> lance.LanceDataset:
        url = self.location.name(self.folder.name)
        try:
            return lance.dataset(url, storage_options=lance_options(self.location))
        except ValueError as error:  # lance: "Dataset at path ... was not found"
            if "not found" in str(error).lower():
                raise MissingStoreError(f"{url} is missing (no Lance dataset there)") from None
            raise


class RemoteLanceStore(RemoteReads, LanceStore):
    """A lance store read from an object store (read-only)."""

    STAGED = (META,)

    def _open_consistent(self) -> Snapshot | None:
        meta = self._read_meta()
        if meta is None:
            return None
        snapshot = RemoteSnapshot.__new__(RemoteSnapshot)
        snapshot.location = self.location
        with lance_errors(self.directory):
            snapshot.__init__(self.directory / FOLDER.format(token=meta["token"]), meta)
        return snapshot

    def _expired(self, snapshot: Snapshot) -> bool:
        return False  # a remote handle reads the version it opened; the store's objects are not watched

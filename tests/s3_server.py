"""A real S3 endpoint for tests: the server the suite's ``--object-store local`` runs (benchmarks/object_store.py:
s3rver when installed, else moto's, as s3fs's own tests use it) on 127.0.0.1, a fresh bucket per test module with
credentials and a non-default region set in the environment for that module only, and a proxy that cuts responses
short. Every socket is on 127.0.0.1; every loop is bounded."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import pytest

from benchmarks.object_store import LOCAL_CREDENTIALS, LOCAL_REGION, S3_HINT, local_s3_server, s3rver

pytest.importorskip("obstore", reason=f"remote reads need obstore: {S3_HINT}")
if s3rver() is None:
    pytest.importorskip("moto.server", reason=f"the S3 server needs s3rver or moto: {S3_HINT}")
boto3 = pytest.importorskip("boto3", reason=f"buckets are made with boto3: {S3_HINT}")

REGION = LOCAL_REGION  # not the default us-east-1: the client must take the region from the environment
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["access_key_id"],
    "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["secret_access_key"],
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class Bucket:
    """A bucket on the test server: ``url(prefix)`` names a store in it."""

    endpoint: str
    name: str

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION)


@pytest.fixture(scope="session")
def s3_server():
    """The local S3 server on 127.0.0.1 for the session."""
    with local_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server):
    return s3_server.endpoint


@pytest.fixture(scope="module")
def bucket(s3_server):
    """A fresh bucket; the module's tests run with the AWS variables pointing at the server."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("AWS_") or name.lower().endswith("_proxy")]:
            patch.delenv(name)  # no profile, no other endpoint, no proxy between the client and 127.0.0.1
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server.endpoint, "NO_PROXY": "127.0.0.1"}.items():
            patch.setenv(name, value)
        yield Bucket(s3_server.endpoint, s3_server.create_bucket(REGION))


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host, port) that closes each connection after relaying
    ``cut_after`` bytes of the response (None: relays all), for the first ``cuts`` connections (None: all)."""

    MAX_CONNECTIONS = 500  # the accept loop ends after this many

    def __init__(self, target: tuple[str, int], cut_after: int | None, cuts: int | None = None) -> None:
        self.target, self.cut_after, self.cuts = target, cut_after, cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set() and self.connections < self.MAX_CONNECTIONS:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            cut = self.cut_after if self.cuts is None or self.connections <= self.cuts else None
            threading.Thread(target=self._relay, args=(client, cut), daemon=True).start()

    def _relay(self, client: socket.socket, cut: int | None) -> None:
        upstream = socket.create_connection(self.target, timeout=10)
        client.settimeout(10)
        threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
        self._pipe(upstream, client, cut)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = source.recv(65536 if limit is None else min(65536, limit - sent))
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

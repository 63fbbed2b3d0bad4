"""The object store the remote cells read from (``--object-store``, docs/remote.md).

``local`` starts moto's S3 server on 127.0.0.1 for the session (a free port, a fresh bucket, stopped at the end;
tests/s3_server.py runs the same server); ``s3://BUCKET/PREFIX[?endpoint=URL]`` is any S3-compatible endpoint, with
credentials and region from the usual AWS_* variables. Either way the run writes under a prefix of its own (removed
at the end on a real endpoint). With ``--network`` the readers reach the server through a shaped path
(benchmarks/network.py), measured and checked before any cell runs; without it the direct path is measured too, and
both figures go into the run's machine_info.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from benchmarks.options import OBJECT_STORE_SYNTAX, NetworkSpec, ObjectStoreSpec
from benchmarks.progress import say

S3_HINT = "pip install image-storage-bench[s3]"
NEEDS_OPTION = f"remote cells need --object-store ({OBJECT_STORE_SYNTAX}; docs/remote.md)"
LOCAL_REGION = "eu-west-3"  # not the default us-east-1: clients must take the region from their options
LOCAL_CREDENTIALS = {"access_key_id": "test-key", "secret_access_key": "test-secret"}
OBJECT_STORE_KEY = pytest.StashKey[dict]()  # the object store's machine_info, for the run's machine_info


def unavailable(spec: ObjectStoreSpec | None) -> str | None:
    """Why the remote cells cannot run (None: they can): no ``--object-store``, or a client it needs is missing
    (obstore, and for ``local`` moto's server)."""
    if spec is None:
        return NEEDS_OPTION
    for module in ("obstore", *(("moto.server", "boto3", "flask") if spec.bucket is None else ())):
        try:
            __import__(module)
        except ImportError:
            what = "the obstore client" if module == "obstore" else "moto's S3 server"
            return f"remote cells need {what} ({module} is not installed): {S3_HINT}"
    return None


class LocalS3Server:
    """moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1, on a free port, until ``stop``; ``create_bucket`` makes
    a fresh, empty bucket. Nothing but 127.0.0.1 is listened on or reached. (Its HTTP server, werkzeug's, closes
    the connection after each response: every request opens a new one.)"""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def create_bucket(self, region: str = LOCAL_REGION) -> str:
        """A new bucket in ``region`` (its name: ``isb-`` and 12 random hex digits)."""
        import boto3

        name = f"isb-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=LOCAL_CREDENTIALS["access_key_id"],
            aws_secret_access_key=LOCAL_CREDENTIALS["secret_access_key"],
        )
        client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        return name

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ObjectStore:
    """A bucket and this run's prefix in it, and how the readers reach it.

    ``url(prefix)`` names a store under the run's prefix; ``storage_options`` is what ``open_store(...,
    storage_options=)`` and ``ImageDataset`` take (through the shaped path under ``--network``); ``direct_options``
    reach the server unshaped, for untimed setup such as ``upload``; ``network`` is the shaping for cell ids
    (``rtt=20ms,rate=1gbit`` or ``none``); ``machine_info`` says what the endpoint is and what was measured."""

    bucket: str
    run_prefix: str
    storage_options: dict
    direct_options: dict
    network: str = "none"
    machine_info: dict = field(default_factory=dict)

    def url(self, prefix: str = "") -> str:
        return "/".join(part for part in (f"s3://{self.bucket}", self.run_prefix, prefix.strip("/")) if part)


@contextlib.contextmanager
def open_object_store(
    spec: ObjectStoreSpec,
    network: NetworkSpec | None = None,
    report: Callable[[str], None] = print,
) -> Iterator[ObjectStore]:
    """The object store of ``spec`` for a run: started (``local``) or checked (a URL), then the path to it shaped
    (``network``), measured and verified; everything started is stopped at the end, a URL's run prefix emptied.
    Raises ``network.ShapingError`` when the shaped path is off its spec, RemoteError when the endpoint fails."""
    from benchmarks import network as shaping

    run_prefix = "/".join(filter(None, (spec.prefix, time.strftime("run-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6])))
    with contextlib.ExitStack() as stack:
        if spec.bucket is None:
            server = stack.enter_context(LocalS3Server())
            endpoint, bucket = server.endpoint, server.create_bucket()
            direct = {"endpoint": endpoint, "region": LOCAL_REGION, **LOCAL_CREDENTIALS}
            kind = f"local: moto {_version('moto')} on 127.0.0.1, bucket in {LOCAL_REGION}"
        else:
            endpoint, bucket = spec.endpoint or os.environ.get("AWS_ENDPOINT_URL"), spec.bucket
            direct = {"endpoint": spec.endpoint} if spec.endpoint else {}
            kind = f"S3-compatible endpoint {endpoint}" if endpoint else "AWS S3"
            stack.callback(_empty, f"s3://{bucket}/{run_prefix}", direct)
        store, found, proxy = ObjectStore(bucket, run_prefix, dict(direct), direct), {}, None
        if network is not None:
            path = stack.enter_context(shaping.shaped(network, endpoint))
            store.storage_options, store.network = {**direct, "endpoint": path.endpoint}, network.label
            found["shaping"], proxy = path.info(), path.proxy
        found.update(shaping.measure(store.url("_probe"), direct, store.storage_options, network, proxy))
        report(f"image-storage: object store {store.url()} ({kind}): {shaping.describe(found)}")
        store.machine_info = {"endpoint_kind": kind, "url": store.url(), "network": store.network, **found}
        shaping.check(network, found)
        yield store


def _empty(url: str, storage_options: dict) -> None:
    """Delete every object under ``url`` (this run's prefix on a real endpoint), in batches of 1000."""
    import obstore

    from storage_impls.remote import Location

    location = Location(url, storage_options)
    for batch in obstore.list(location.store, None, chunk_size=1000):
        obstore.delete(location.store, [item["path"] for item in batch])


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@pytest.fixture(scope="session")
def object_store(pytestconfig: pytest.Config) -> Iterator[ObjectStore]:
    """The session's object store (``--object-store``, shaped by ``--network``); skips the cells using it when the
    option or its clients are missing, fails them with the reason when the endpoint or the shaping is wrong."""
    spec: ObjectStoreSpec | None = pytestconfig.getoption("object_store", None)
    if reason := unavailable(spec):
        pytest.skip(reason)
    from benchmarks.netns import NamespaceError
    from benchmarks.network import ShapingError
    from storage_impls.core.errors import RemoteError

    network = pytestconfig.getoption("network", None)
    try:
        with open_object_store(spec, network, lambda line: say(pytestconfig, line)) as store:
            pytestconfig.stash[OBJECT_STORE_KEY] = store.machine_info
            yield store
    except (ShapingError, NamespaceError, RemoteError) as error:
        pytest.fail(f"remote cells refused: {error}", pytrace=False)

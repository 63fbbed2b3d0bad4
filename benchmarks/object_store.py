"""The object store the remote cells read from (``--object-store``, docs/remote.md).

``local`` starts an S3 server on 127.0.0.1 for the session (s3rver, the npm package, when installed: a few times
moto's requests/s; else moto's; a free port, a fresh bucket, stopped at the end; tests/s3_server.py runs the same);
``s3://BUCKET/PREFIX[?endpoint=URL]`` is any S3-compatible endpoint, with credentials and region from the usual AWS_*
variables. Either way the run writes under a prefix of its own (removed at the end on a real endpoint). Stores are
uploaded once (``object_bucket``); each ``--network`` (several make an RTT sweep in one run) is a shaped path to the
same bucket (``object_store``), measured and checked before its cells run; without ``--network`` the direct path
is measured. The figures go into the run's machine_info.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.options import OBJECT_STORE_SYNTAX, NetworkSpec, ObjectStoreSpec
from benchmarks.progress import say

S3_HINT = "pip install image-storage-bench[s3]"
S3RVER_HINT = "npm install -g s3rver@3.7.1"  # the faster local server; moto's is the fallback
NEEDS_OPTION = f"remote cells need --object-store ({OBJECT_STORE_SYNTAX}; docs/remote.md)"
LOCAL_REGION = "eu-west-3"  # not the default us-east-1: clients must take the region from their options
LOCAL_CREDENTIALS = {"access_key_id": "test-key", "secret_access_key": "test-secret"}
OBJECT_STORE_KEY = pytest.StashKey[dict]()  # the object store's machine_info, for the run's machine_info
S3RVER_LAUNCHER = Path(__file__).with_name("s3rver_cluster.js")
S3RVER_WORKERS = 2  # Node processes sharing the port: one event loop per core of the 2-core machines
START_TIMEOUT = 30.0  # seconds for a local server to listen


def unavailable(spec: ObjectStoreSpec | None) -> str | None:
    """Why the remote cells cannot run (None: they can): no ``--object-store``, or a client it needs is missing
    (obstore and boto3, and for ``local`` a server: s3rver, else moto's)."""
    if spec is None:
        return NEEDS_OPTION
    local = spec.bucket is None
    needed = ("obstore", *(("boto3",) if local else ()), *(("moto.server", "flask") if local and not s3rver() else ()))
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            what = {"obstore": "the obstore client", "boto3": "boto3"}.get(module, "an S3 server")
            return f"remote cells need {what} ({module} is not installed): {S3_HINT} (and {S3RVER_HINT})"
    return None


def s3rver() -> Path | None:
    """The folder of the s3rver npm package when it and node are installed (``npm install -g``), else None."""
    command, node = shutil.which("s3rver"), shutil.which("node")
    if command is None or node is None:
        return None
    package = Path(command).resolve().parent.parent  # s3rver/bin/s3rver.js -> s3rver
    return package if (package / "package.json").is_file() else None


class LocalS3Server:
    """An S3 server on 127.0.0.1, on a free port, until ``stop``; ``create_bucket`` makes a fresh, empty bucket.
    ``local_s3_server()`` picks the implementation. Nothing but 127.0.0.1 is listened on or reached."""

    endpoint: str
    kind: str  # what it is, for machine_info

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
        raise NotImplementedError

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3rverServer(LocalS3Server):
    """s3rver (npm; Node, objects in a temporary folder) in ``S3RVER_WORKERS`` processes sharing one port
    (benchmarks/s3rver_cluster.js), checking signatures against LOCAL_CREDENTIALS. Measured on the 2-core VM
    (loaded), small ranged GETs with obstore: about 2.5-3x moto's requests/s (docs/remote.md)."""

    def __init__(self, package: Path) -> None:
        self._folder = tempfile.mkdtemp(prefix="isb-s3rver-")
        arguments = [str(package), self._folder, str(S3RVER_WORKERS), *LOCAL_CREDENTIALS.values()]
        self._process = subprocess.Popen(
            # s3rver's ListObjectsV2 continuation tokens use DES, which OpenSSL 3 keeps in its legacy provider
            [shutil.which("node") or "node", "--openssl-legacy-provider", str(S3RVER_LAUNCHER), *arguments],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,  # never written: it closes when this process ends, and the server stops
            text=True,
            start_new_session=True,  # its workers are stopped with it, as one process group
        )
        ready = _first_line(self._process, START_TIMEOUT)
        if not ready.startswith("ready "):
            self.stop()
            raise RuntimeError(f"s3rver did not start (said {ready!r})")
        self.endpoint = f"http://127.0.0.1:{int(ready.split()[1])}"
        self.kind = f"s3rver {json.loads((package / 'package.json').read_text())['version']} x{S3RVER_WORKERS}"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)
        for stream in (self._process.stdin, self._process.stdout):
            if stream:
                stream.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class MotoServer(LocalS3Server):
    """moto's S3 server (``ThreadedMotoServer``, as s3fs's own tests use it): the fallback, 100-300 requests/s here.
    (Its HTTP server, werkzeug's, closes the connection after each response: every request opens a new one.)"""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.kind = f"moto {_version('moto')}"

    def stop(self) -> None:
        self._server.stop()


def local_s3_server() -> LocalS3Server:
    """The server ``--object-store local`` and the tests use: s3rver when installed, else moto's."""
    package = s3rver()
    return S3rverServer(package) if package else MotoServer()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line ``process`` prints, or "" when it prints none within ``timeout`` seconds or exits."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


@dataclass
class ObjectStore:
    """A bucket and this run's prefix in it, and how the readers reach it.

    ``url(prefix)`` names a store under the run's prefix; ``storage_options`` is what ``open_store(...,
    storage_options=)`` and ``ImageDataset`` take (through the shaped path under ``--network``); ``direct_options``
    reach the server unshaped, for untimed setup such as ``upload``; ``endpoint`` is the server's (None: AWS's);
    ``network`` is the shaping for cell ids (``rtt=20ms,rate=1gbit`` or ``none``); ``machine_info`` says what the
    endpoint is and what was measured."""

    bucket: str
    run_prefix: str
    storage_options: dict
    direct_options: dict
    endpoint: str | None = None
    network: str = "none"
    machine_info: dict = field(default_factory=dict)

    def url(self, prefix: str = "") -> str:
        return "/".join(part for part in (f"s3://{self.bucket}", self.run_prefix, prefix.strip("/")) if part)


@contextlib.contextmanager
def open_bucket(spec: ObjectStoreSpec) -> Iterator[ObjectStore]:
    """The bucket of ``spec`` for a run, unshaped: a local server started (stopped at the end) or a URL's endpoint,
    with a fresh run prefix (emptied at the end on a URL)."""
    run_prefix = "/".join(filter(None, (spec.prefix, time.strftime("run-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6])))
    with contextlib.ExitStack() as stack:
        if spec.bucket is None:
            server = stack.enter_context(local_s3_server())
            endpoint, bucket = server.endpoint, server.create_bucket()
            direct = {"endpoint": endpoint, "region": LOCAL_REGION, **LOCAL_CREDENTIALS}
            kind = f"local: {server.kind} on 127.0.0.1, bucket in {LOCAL_REGION}"
        else:
            endpoint, bucket = spec.endpoint or os.environ.get("AWS_ENDPOINT_URL"), spec.bucket
            direct = {"endpoint": spec.endpoint} if spec.endpoint else {}
            kind = f"S3-compatible endpoint {endpoint}" if endpoint else "AWS S3"
            stack.callback(_empty, f"s3://{bucket}/{run_prefix}", direct)
        store = ObjectStore(bucket, run_prefix, dict(direct), direct, endpoint)
        store.machine_info = {"endpoint_kind": kind, "url": store.url()}
        yield store


@contextlib.contextmanager
def shaped_path(
    bucket: ObjectStore, network: NetworkSpec | None, report: Callable[[str], None] = print
) -> Iterator[ObjectStore]:
    """``bucket`` reached through ``network`` (None: directly): the path shaped, measured and verified (shaping
    undone at the end). Raises ``network.ShapingError`` when the shaped path is off its spec."""
    from benchmarks import network as shaping

    with contextlib.ExitStack() as stack:
        store, found, proxy = dataclasses.replace(bucket, machine_info={}), {}, None
        if network is not None:
            path = stack.enter_context(shaping.shaped(network, bucket.endpoint))
            store.storage_options, store.network = {**bucket.direct_options, "endpoint": path.endpoint}, network.label
            found["shaping"], proxy = path.info(), path.proxy
        found.update(shaping.measure(store.url("_probe"), bucket.direct_options, store.storage_options, network, proxy))
        kind = bucket.machine_info["endpoint_kind"]
        report(f"image-storage: object store {store.url()} ({kind}): {shaping.describe(found)}")
        store.machine_info = {**bucket.machine_info, "network": store.network, **found}
        shaping.check(network, found)
        yield store


@contextlib.contextmanager
def open_object_store(
    spec: ObjectStoreSpec,
    network: NetworkSpec | None = None,
    report: Callable[[str], None] = print,
) -> Iterator[ObjectStore]:
    """The object store of ``spec`` through one ``network``: ``open_bucket`` then ``shaped_path``. Raises
    ``network.ShapingError`` when the shaped path is off its spec, RemoteError when the endpoint fails."""
    with open_bucket(spec) as bucket, shaped_path(bucket, network, report) as store:
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


REFUSED = "remote cells refused"


@pytest.fixture(scope="session")
def object_bucket(pytestconfig: pytest.Config) -> Iterator[ObjectStore]:
    """The session's bucket (``--object-store``), unshaped: stores are uploaded to it once for every network; skips
    the cells using it when the option or its clients are missing, fails them when the endpoint fails."""
    spec: ObjectStoreSpec | None = pytestconfig.getoption("object_store", None)
    if reason := unavailable(spec):
        pytest.skip(reason)
    from storage_impls.core.errors import RemoteError

    try:
        with open_bucket(spec) as bucket:
            yield bucket
    except RemoteError as error:
        pytest.fail(f"{REFUSED}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def network(pytestconfig: pytest.Config) -> str:
    """The network of a test the suite does not parametrise over ``--network`` (the root conftest does, for the
    cells): the first one asked for, or ``none``."""
    networks = pytestconfig.getoption("network", None)
    return networks[0].label if networks else "none"


@pytest.fixture(scope="session")
def object_store(pytestconfig: pytest.Config, object_bucket: ObjectStore, network: str) -> Iterator[ObjectStore]:
    """The bucket through the cell's ``network`` (one of ``--network``'s, or ``none``), set up once for the cells of
    that network (they run together); fails them with the reason when the shaping is off. machine_info keeps the
    first network's figures at its top and every network's under ``networks``."""
    from benchmarks.netns import NamespaceError
    from benchmarks.network import ShapingError
    from storage_impls.core.errors import RemoteError

    spec = {each.label: each for each in pytestconfig.getoption("network", None) or ()}.get(network)
    try:
        with shaped_path(object_bucket, spec, lambda line: say(pytestconfig, line)) as store:
            info = pytestconfig.stash.setdefault(OBJECT_STORE_KEY, {**store.machine_info, "networks": {}})
            info["networks"][network] = store.machine_info
            yield store
    except (ShapingError, NamespaceError, RemoteError) as error:
        pytest.fail(f"{REFUSED}: {error}", pytrace=False)

"""One object-store client per process (obstore: Rust's object_store, with pooled connections, bounded retries and
timeouts) and the requests every remote reader makes: a whole object, a batch of byte ranges fetched concurrently
(coalesced where they touch, in offset order), a listing, an upload.

Processes: obstore's runtime hangs in a process forked after it ran, so a forked child of a process that made a
client gets RuntimeError (start readers with spawn, as for lance); each spawned process makes its own client.

A ``Location`` is a URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``http(s)://``) plus ``storage_options``
(obstore's configuration keys, e.g. ``endpoint``, ``region``, ``access_key_id``; for S3 anything not given comes
from the usual ``AWS_*`` variables: ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ...). It pickles
as those two, and each process builds its own client on first use (a forked child never uses its parent's).
Errors: a missing object is MissingStoreError, an object shorter than a range asked of it CorruptStoreError
(truncated), anything else that fails after the retries RemoteError; never short or wrong bytes.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

try:  # optional (the [s3] extra): the methods import this package, and only a remote read needs the client
    import obstore
    from obstore.exceptions import BaseError, NotFoundError
    from obstore.store import from_url
except ImportError:
    obstore = None
    BaseError = NotFoundError = type("NoClient", (Exception,), {})  # never raised: nothing is requested without it

from storage_impls.core.errors import CorruptStoreError, MissingStoreError, RemoteError
from storage_impls.remote.ranges import Span, coalesce

SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https")
CONCURRENCY = 16  # requests in flight per process (a batch's ranges, an upload's parts)
RETRIES = 3  # per request, with object_store's backoff; then RemoteError
RETRY_TIMEOUT = timedelta(seconds=30)  # no request is retried past this
BODY_RETRIES = 2  # a response cut after its headers is asked for again this many times; then RemoteError
CLIENT_OPTIONS = {"timeout": "60s", "connect_timeout": "5s"}
# storage_options keys that configure the HTTP client rather than the store
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "timeout",
        "connect_timeout",
        "proxy_url",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "user_agent",
    }
)


def is_url(location: object) -> bool:
    """Whether ``location`` (a path or a URL) names an object store this package reads from."""
    return isinstance(location, str) and urlsplit(location).scheme.lower() in SCHEMES


@dataclass
class Stats:
    """What this process's client has fetched: GET requests, bytes, the most requests in flight at once, and (after
    ``reset(record=True)``) each request's span (stop -1: a whole object), which ``Location.replay(STATS.recorded)``
    makes again as plain concurrent GETs (a floor: the same ranges, no format's work).
    Counted per process: each reader process reports its own."""

    requests: int = 0
    bytes: int = 0
    peak_concurrent: int = 0
    recorded: list[Span] | None = None
    _in_flight: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self, span: Span) -> None:
        with self._lock:
            if self.recorded is not None:
                self.recorded.append(span)
            self.requests += 1
            self._in_flight += 1
            self.peak_concurrent = max(self.peak_concurrent, self._in_flight)

    def finished(self, size: int) -> None:
        with self._lock:
            self._in_flight -= 1
            self.bytes += size

    def reset(self, *, record: bool = False) -> None:
        """Zero the counts; ``record``: keep each request's span from now on (else stop keeping them)."""
        with self._lock:
            self.requests = self.bytes = self.peak_concurrent = 0
            self.recorded = [] if record else None


STATS = Stats()  # this process's, for the suite's requests per image and read amplification
_CLIENTS: dict[tuple, object] = {}
_CLIENT_PID: int | None = None  # the process that first made a client: obstore's runtime does not survive a fork
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """This process's request threads (a forked child makes its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="storage-remote"))
    return _POOL[1]


class Location:
    """A prefix in an object store (``url``) and how to reach it (``storage_options``); objects named relative to it."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        if not is_url(url):
            raise ValueError(f"{url!r} is not an object-store URL ({', '.join(f'{s}://' for s in SCHEMES)})")
        if obstore is None:
            raise ImportError(f"reaching {url} needs obstore: pip install image-storage-bench[s3]", name="obstore")
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def __reduce__(self) -> tuple:
        return Location, (self.url, self.storage_options)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def name(self, key: str) -> str:
        """The URL of object ``key``, for messages."""
        return f"{self.url}/{key}"

    @property
    def store(self) -> object:
        """This process's client for the location (built on first use in each process)."""
        global _CLIENT_PID
        ident = (os.getpid(), self.url, tuple(sorted(self.storage_options.items())))
        client = _CLIENTS.get(ident)
        if client is None:
            if _CLIENT_PID not in (None, os.getpid()):
                raise RuntimeError(
                    f"reading {self.url} in a process forked from process {_CLIENT_PID}, which had "
                    "used the object-store client (whose runtime hangs after a fork): start readers "
                    "with spawn or forkserver (multiprocessing.get_context('spawn'), "
                    "DataLoader(multiprocessing_context='spawn'))"
                )
            _CLIENT_PID = os.getpid()
            config = {k: v for k, v in self.storage_options.items() if k not in CLIENT_KEYS}
            options = {**CLIENT_OPTIONS, **{k: v for k, v in self.storage_options.items() if k in CLIENT_KEYS}}
            endpoint = config.get("endpoint") or config.get("aws_endpoint") or os.environ.get("AWS_ENDPOINT_URL", "")
            if endpoint.startswith("http://"):
                options.setdefault("allow_http", True)
            try:
                client = from_url(
                    self.url,
                    config=config or None,
                    client_options=options,
                    retry_config={"max_retries": RETRIES, "retry_timeout": RETRY_TIMEOUT},
                )
            except BaseError as error:
                raise RemoteError(f"cannot reach {self.url}: {_first_line(error)}") from None
            _CLIENTS[ident] = client
        return client

    # -- requests --------------------------------------------------------------------------------
    def get(self, key: str) -> memoryview:
        """The whole object ``key``."""
        STATS.started(Span(key, 0, -1))  # a whole object (its size unknown before the GET)
        data = b""
        try:
            data = self._call(key, lambda: obstore.get(self.store, key).bytes())
        finally:
            STATS.finished(len(data))
        return memoryview(data)

    def get_many(self, keys: Sequence[str]) -> list[memoryview]:
        """Whole objects ``keys``, one GET each, all in flight at once (up to CONCURRENCY)."""
        return list(_pool().map(self.get, keys)) if len(keys) > 1 else [self.get(key) for key in keys]

    def size(self, key: str) -> int:
        """The size of object ``key`` (one HEAD)."""
        return int(self._call(key, lambda: obstore.head(self.store, key))["size"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except MissingStoreError:
            return False
        return True

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` (relative to the location) and its size."""
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        found = {}
        for chunk in self._call(prefix, lambda: list(obstore.list(self.store, base or None))):
            for item in chunk:
                found[item["path"]] = int(item["size"])
        return found

    def replay(self, spans: Sequence[Span]) -> int:
        """Fetch ``spans`` as recorded (whole objects for stop -1), all in flight at once, uncoalesced; the bytes."""
        whole = [span.key for span in spans if span.stop < 0]
        ranged = [span for span in spans if span.stop >= 0]
        parts = list(_pool().map(self._range, ranged)) + self.get_many(whole)
        return sum(len(part) for part in parts)

    def fetch(self, spans: Sequence[Span]) -> list[memoryview]:
        """The bytes of each of ``spans``: touching spans coalesced into one request, requests in offset order,
        all in flight at once (up to CONCURRENCY); CorruptStoreError if an object ends before a span does."""
        requests, where = coalesce(spans)
        if not requests:
            return []
        results = list(_pool().map(self._range, requests)) if len(requests) > 1 else [self._range(requests[0])]
        return [
            results[request][offset : offset + spans[index].stop - spans[index].start]
            for index, (request, offset) in enumerate(where)
        ]

    def _range(self, span: Span) -> memoryview:
        if span.stop == span.start:
            return memoryview(b"")
        STATS.started(span)
        data = b""
        try:
            data = self._call(
                span.key, lambda: obstore.get_range(self.store, span.key, start=span.start, end=span.stop)
            )
        finally:
            STATS.finished(len(data))
        if len(data) != span.stop - span.start:
            raise CorruptStoreError(
                f"{self.name(span.key)} ends before byte {span.stop} ({len(data)} of "
                f"{span.stop - span.start} bytes from {span.start}): truncated, or not the store's"
            )
        return memoryview(data)

    def put(self, key: str, path: str | os.PathLike) -> None:
        """Upload the local file ``path`` as ``key`` (multipart, parts in flight at once, for large files)."""
        with open(path, "rb") as file:
            self._call(key, lambda: obstore.put(self.store, key, file, max_concurrency=CONCURRENCY), again=0)

    def _call(self, key: str, request, *, again: int = BODY_RETRIES):
        """``request()`` with obstore's errors typed; a response cut in its body (which obstore's own retries, of
        the request and its headers, leave to the caller) is asked for again up to ``again`` times."""
        for attempt in range(again + 1):
            try:
                return request()
            except (NotFoundError, FileNotFoundError):
                raise MissingStoreError(errno.ENOENT, "does not exist", self.name(key)) from None
            except (BaseError, OSError) as error:  # OSError: obstore's I/O errors, a connection cut, a timeout
                if attempt == again or not _cut_in_body(error):
                    raise RemoteError(f"{self.name(key)}: {_first_line(error)}") from None


def _cut_in_body(error: BaseException) -> bool:
    """Whether ``error`` is a response cut after its headers (hyper's "request or response body error")."""
    return "body error" in str(error)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

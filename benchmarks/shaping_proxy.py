"""A TCP proxy that makes a path to a local server look like a cloud network (``--network``; benchmarks/network.py).

The bytes of each response are held for the round trip (its first byte reaches the reader one round trip after the
request was sent, plus the server's time; the rest follows as from a delay line), every connection independently,
as concurrent requests on a real network are; requests pass at once (one timer per request, not two: on a busy
machine each timer fires late). A new connection costs no round trip of its own: moto's server closes every
connection after its response, where a cloud's endpoint keeps it open for the next request, so charging a handshake
would charge moto's connections, not the network's. With a ``rate``, bytes each way also cross one link shared by
all connections at that rate (serialised, then delayed): the proxy paces the bandwidth itself, for when tbf cannot
(no root). The proxy runs an asyncio loop in a thread of its own; it relays, never parses, so any
protocol passes (HTTP keep-alive, TLS). Bounded: at most MAX_CONNECTIONS open (more are closed at once), a connection
idle IDLE_TIMEOUT_S is closed, a connection's queued bytes are capped each way.
"""

from __future__ import annotations

import asyncio
import socket
import threading

CHUNK = 128 << 10  # bytes read at once
QUEUED_CHUNKS = 32  # chunks held per connection and direction (4 MiB): more than a round trip at 1 Gbit/s
MAX_CONNECTIONS = 1024  # open at once
IDLE_TIMEOUT_S = 300.0  # longer than HTTP clients keep idle pooled connections (90 s for object_store's)
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0


class Link:
    """One direction of the shared link: bytes leave in order at ``rate`` bits/s (None: at once), then take
    ``delay`` seconds to arrive."""

    def __init__(self, rate: float | None, delay: float) -> None:
        self.rate, self.delay, self.busy_until = rate, delay, 0.0

    def arrival(self, now: float, size: int) -> float:
        """When ``size`` bytes handed to the link at ``now`` have arrived at the far end."""
        if self.rate is None:
            return now + self.delay
        self.busy_until = max(now, self.busy_until) + size * 8 / self.rate
        return self.busy_until + self.delay


class ShapingProxy:
    """Relays connections made to ``listener`` (default: a new one on 127.0.0.1) to ``target`` (host, port), with a
    round trip of ``rtt`` seconds and, if given, a shared ``rate`` in bits/s. ``close`` stops it."""

    def __init__(
        self, target: tuple[str, int], rtt: float, rate: float | None = None, listener: socket.socket | None = None
    ) -> None:
        self.target, self.rtt = target, rtt
        self.listener = listener if listener is not None else socket.create_server(("127.0.0.1", 0))
        self.connections = self.open = self.refused = 0
        self._links = (Link(rate, 0.0), Link(rate, rtt))  # towards the server, towards the reader
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shaping-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._failure is not None:
            self.close()
            raise RuntimeError(f"the shaping proxy did not start: {self._failure}")

    def set_rtt(self, rtt: float) -> None:
        """Hold bytes for ``rtt`` seconds a round trip from now on (network.measure takes the proxy's own cost off)."""
        self.rtt = self._links[1].delay = rtt

    @property
    def endpoint(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to the starting thread, or ends a stopped proxy
            self._failure = error
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self.listener, limit=CHUNK)
        self._started.set()
        await self._stopped.wait()
        server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self.open += 1
        self.connections += 1
        upstream = None
        try:
            up_reader, upstream = await asyncio.wait_for(asyncio.open_connection(*self.target), CONNECT_TIMEOUT_S)
            await _together(
                self._relay(reader, upstream, self._links[0]), self._relay(up_reader, writer, self._links[1])
            )
        except (OSError, asyncio.TimeoutError):
            pass  # a peer went away or idled out: both ends are closed below, as a cut connection would be
        except asyncio.CancelledError:
            pass  # the proxy is closing (not re-raised: asyncio's streams report a cancelled connection as an error)
        finally:
            self.open -= 1
            for end in (writer, upstream):
                if end is not None:
                    end.close()

    async def _relay(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: Link) -> None:
        """Copy ``source`` to ``sink`` through ``link`` until end of stream (passed on as a half-close)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED_CHUNKS)

        async def receive() -> None:
            while True:
                data = await asyncio.wait_for(source.read(CHUNK), IDLE_TIMEOUT_S)
                await queue.put((link.arrival(loop.time(), len(data)), data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                arrival, data = await queue.get()
                if arrival > loop.time():
                    await asyncio.sleep(arrival - loop.time())
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()

        await _together(receive(), deliver())

    def close(self) -> None:
        """Stop accepting and relaying; the listener is closed."""
        if self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass  # the loop ended already
        self._thread.join(START_TIMEOUT_S)
        self.listener.close()

    def __enter__(self) -> ShapingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _together(*coroutines) -> None:
    """Run ``coroutines`` until all have ended; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        task.result()

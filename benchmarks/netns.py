"""A network namespace the suite makes for ``--network``'s rate (benchmarks/network.py): a veth pair from this
namespace into a new one, each end shaped by ``tbf`` at the rate (the kernel's token bucket: what a link's bandwidth
does to TCP, which a proxy's pacing only approximates), and a listening socket made inside it, where the shaping
proxy waits for the readers. Root only (``unavailable`` says why not); everything made is removed by ``close``, also
when making it failed half-way, and at exit. Addresses: a /30 in 10.0.0.0/8 that no route here covers.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import uuid

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 10.0
SUBNET_TRIES = 20  # random /30s tried before giving up
BURST_S = 0.002  # tbf's bucket, in seconds at the rate: at 1 Gbit/s 250 kB pass at once after an idle moment
TBF_LATENCY = "100ms"  # the most a packet waits in the bucket's queue
NAMESPACES = "/run/netns"


class NamespaceError(RuntimeError):
    """The namespace, its veth pair or its tbf could not be made (what failed is in the message)."""


def unavailable() -> str | None:
    """Why tbf in a namespace cannot be used here (None: it can)."""
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (iproute2)" if missing else None


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NamespaceError(f"{' '.join(command)}: {error}") from None
    if done.returncode != 0:
        raise NamespaceError(f"{' '.join(command)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 in 10.0.0.0/8 that no route or address of this namespace overlaps."""
    taken = [
        ipaddress.ip_network(route["dst"], strict=False)
        for route in json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
        if route.get("dst", "default") not in ("default",) and route["dst"][0].isdigit()
    ]
    for _ in range(SUBNET_TRIES):
        subnet = ipaddress.ip_network(
            f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(0, 256, 4)}/30"
        )
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise NamespaceError(f"no free /30 in 10.0.0.0/8 after {SUBNET_TRIES} tries")


def tbf_burst(rate: float) -> int:
    """tbf's bucket, in bytes: BURST_S at ``rate`` (bits/s), at least 16 KiB (above any MTU)."""
    return max(16 << 10, int(rate / 8 * BURST_S))


class Namespace:
    """A new network namespace reached from here over a veth pair whose ends are shaped by tbf at ``rate`` bits/s.
    ``inside`` is the namespace's address, ``listen()`` a socket listening on it."""

    def __init__(self, rate: float) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name, self.rate = f"isb-{tag}", rate
        self._outer, inner = f"isb{tag}o", f"isb{tag}i"  # at most 15 characters, the kernel's limit
        self._made = False
        atexit.register(self.close)
        try:
            subnet = _free_subnet()
            outer_address, self.inside = (str(host) for host in subnet.hosts())
            tbf = ("tbf", "rate", f"{int(rate)}bit", "burst", str(tbf_burst(rate)), "latency", TBF_LATENCY)
            _run("ip", "netns", "add", self.name)
            self._made = True
            _run("ip", "link", "add", self._outer, "type", "veth", "peer", "name", inner, "netns", self.name)
            _run("ip", "addr", "add", f"{outer_address}/30", "dev", self._outer)
            _run("ip", "link", "set", self._outer, "up")
            _run("ip", "-n", self.name, "addr", "add", f"{self.inside}/30", "dev", inner)
            _run("ip", "-n", self.name, "link", "set", inner, "up")
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            _run("tc", "qdisc", "add", "dev", self._outer, "root", *tbf)  # towards the namespace: requests
            _run("tc", "-n", self.name, "qdisc", "add", "dev", inner, "root", *tbf)  # out of it: responses
        except BaseException:
            self.close()
            raise
        self.description = (
            f"tbf at {int(rate)} bit/s (burst {tbf_burst(rate)} bytes, latency {TBF_LATENCY}) on both ends of "
            f"the veth pair {self._outer} into network namespace {self.name} ({subnet})"
        )

    def listen(self) -> socket.socket:
        """A TCP socket listening on the namespace's address (a free port), made by a thread that enters it."""
        made: list[socket.socket | BaseException] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(os.path.join(NAMESPACES, self.name)) as namespace:
                    if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                        raise NamespaceError(f"entering {self.name}: {os.strerror(ctypes.get_errno())}")
                made.append(socket.create_server((self.inside, 0)))
            except BaseException as error:  # reported to the caller
                made.append(error)

        thread = threading.Thread(target=inside, name=f"enter-{self.name}", daemon=True)  # the thread ends there
        thread.start()
        thread.join(COMMAND_TIMEOUT_S)
        if not made or isinstance(made[0], BaseException):
            raise NamespaceError(f"no socket listening in {self.name}: {made[0] if made else 'timed out'}")
        return made[0]

    def close(self) -> None:
        """Remove the namespace and the veth pair (removing either end removes both); safe to call twice."""
        atexit.unregister(self.close)
        if self._made:
            self._made = False
            for command in (("ip", "link", "del", self._outer), ("ip", "netns", "del", self.name)):
                try:
                    _run(*command)
                except NamespaceError:
                    pass  # already gone with the other

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

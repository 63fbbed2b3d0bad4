"""A cloud-like path between the remote cells' readers and the object store (``--network rtt=20ms,rate=1gbit``),
and the measurement that checks it before any cell runs.

The kernel here has no netem, so the round trip is added by a proxy on the way (benchmarks/shaping_proxy.py: each
request and each response held for half the round trip, every connection independently). The rate is kept by
``tbf`` on a veth pair into a network namespace the suite makes, the proxy listening inside it (root only:
benchmarks/netns.py), or else by the proxy itself, which paces every connection through one shared link. Shaping is
only for a server on 127.0.0.1.

``measure`` times small GETs (the round trip) and a larger one (the throughput) on the shaped path and on the
direct one, alternately, and ``check`` refuses a shaped path more than 20 % off its spec.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from benchmarks import netns
from benchmarks.options import NetworkSpec
from benchmarks.shaping_proxy import ShapingProxy

TOLERANCE = 0.2  # the shaped path may be this far off its spec
RTT_SLACK_S = 0.001  # ... or this much, for round trips of a few milliseconds (timer and scheduler noise)
PROBES = 20  # small GETs timed per path
WARM_UP = 10  # small GETs per path before any is timed
CALIBRATIONS = 3  # times the proxy's delay is measured and corrected, at most
LARGE_PROBES = 3  # large GETs timed per path
SMALL_BYTES = 1024
LARGE_SECONDS = 0.25  # the large object takes about this long at the spec's rate
LARGE_BYTES = (1 << 20, 32 << 20, 4 << 20)  # its least, most, and size when no rate is asked for
MEASURE_TIMEOUT_S = 120.0  # the whole measurement gives up after this
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ShapingError(RuntimeError):
    """The shaped path is not what ``--network`` asked for (or cannot be made here)."""


def large_bytes(network: NetworkSpec | None) -> int:
    """The size of the object timed for throughput: about LARGE_SECONDS at the spec's rate, within bounds."""
    least, most, default = LARGE_BYTES
    if network is None or network.rate is None:
        return default
    return int(min(most, max(least, network.rate / 8 * LARGE_SECONDS)))


def measure(url: str, direct: dict, shaped: dict, network: NetworkSpec | None, proxy: ShapingProxy | None) -> dict:
    """The round trip (PROBES small GETs: median and lower quartile) and throughput (the fastest of LARGE_PROBES GETs
    of a larger object, less a round trip) on the readers' path (``shaped``, the same as ``direct`` without
    ``--network``) and on the direct one, the two alternating, after WARM_UP GETs each; the probe objects are written
    under ``url`` first, directly. The round trip the shaping adds is the difference of the lower quartiles, and the
    throughput the best GET's, because a busy machine only ever adds time: ``check`` judges the shaping, not the
    load (the medians are recorded too). With a ``proxy``, its added round trip is measured first and its delay
    corrected by the difference (its own relaying; its timer firing late), up to CALIBRATIONS times until within
    half the tolerance; then the round trip is measured afresh for ``check``. Bounded in count and
    MEASURE_TIMEOUT_S."""
    import obstore

    from storage_impls.remote import Location

    paths = {"shaped": Location(url, shaped), "direct": Location(url, direct)}
    objects = {"small": os.urandom(SMALL_BYTES), "large": os.urandom(large_bytes(network))}
    for key, data in objects.items():
        obstore.put(paths["direct"].store, key, data)
    deadline = time.monotonic() + MEASURE_TIMEOUT_S

    def timed(key: str, count: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(count):
            for path, location in paths.items():
                if time.monotonic() > deadline:
                    raise ShapingError(f"measuring the path to the object store took over {MEASURE_TIMEOUT_S:g} s")
                start = time.perf_counter()
                size = len(location.get(key))
                times[path].append(time.perf_counter() - start)
                if size != len(objects[key]):
                    raise ShapingError(f"a probe GET of {location.name(key)} returned {size} of {len(objects[key])} B")
        return times

    timed("small", WARM_UP)  # clients made, connections and the server's threads started: slower, not counted
    correction = None
    if proxy is not None and network is not None:
        delay = network.rtt
        for _ in range(CALIBRATIONS):
            first = timed("small", PROBES)
            excess = _quartile(first["shaped"]) - _quartile(first["direct"]) - network.rtt
            if abs(excess) <= _allowed(network.rtt) / 2:
                break
            delay = max(0.0, delay - excess)
            proxy.set_rtt(delay)
        correction = delay - network.rtt
    small, large = timed("small", PROBES), timed("large", LARGE_PROBES)
    measured: dict = {}
    for path in paths:
        transfer = min(large[path]) - _quartile(small[path])
        measured[path] = {
            "rtt_ms": round(statistics.median(small[path]) * 1e3, 3),
            "rtt_p25_ms": round(_quartile(small[path]) * 1e3, 3),
            "throughput_mbit_s": round(len(objects["large"]) * 8 / transfer / 1e6, 1) if transfer > 0 else None,
            "probe_bytes": len(objects["large"]),
        }
    measured["added_rtt_ms"] = round((_quartile(small["shaped"]) - _quartile(small["direct"])) * 1e3, 3)
    if correction is not None:
        measured["proxy_correction_ms"] = round(correction * 1e3, 3)
    return {"measured": measured}


def _allowed(rtt: float) -> float:
    """How far a measured round trip may be from ``rtt``."""
    return max(TOLERANCE * rtt, RTT_SLACK_S)


def _quartile(values: list[float]) -> float:
    return statistics.quantiles(values, n=4)[0]


def describe(found: dict) -> str:
    """One line: the round trip and throughput measured on the readers' path (and the direct one when shaped)."""
    measured = found["measured"]
    shaped, direct = measured["shaped"], measured["direct"]
    text = f"round trip {shaped['rtt_ms']:.1f} ms (median), throughput {_rate(shaped)}"
    if "shaping" in found:
        text += (
            f" through {found['shaping']['how']} (direct: {direct['rtt_ms']:.1f} ms, "
            f"{_rate(direct)}; the shaping adds {measured['added_rtt_ms']:.1f} ms, the "
            f"proxy's delay corrected by {measured['proxy_correction_ms']:+.1f} ms)"
        )
    return text


def _rate(measured: dict) -> str:
    rate = measured["throughput_mbit_s"]
    return "too fast to time" if rate is None else f"{rate:.0f} Mbit/s"


def check(network: NetworkSpec | None, found: dict) -> None:
    """Raise ShapingError when the shaped path is more than TOLERANCE off ``network``: the round trip it adds
    (shaped less direct, so the server's own time is left out) and its throughput."""
    if network is None:
        return
    measured = found["measured"]
    problems = []
    added = measured["added_rtt_ms"] / 1e3
    if abs(added - network.rtt) > _allowed(network.rtt):
        problems.append(f"it adds a round trip of {added * 1e3:.1f} ms, not {network.rtt * 1e3:g} ms")
    if network.rate is not None:
        rate = (measured["shaped"]["throughput_mbit_s"] or math.inf) * 1e6
        if abs(rate - network.rate) > TOLERANCE * network.rate:
            problems.append(f"its throughput is {rate / 1e6:.0f} Mbit/s, not {network.rate / 1e6:g} Mbit/s")
            direct = (measured["direct"]["throughput_mbit_s"] or math.inf) * 1e6
            if direct < (1 - TOLERANCE) * network.rate:
                problems.append(
                    f"the server alone delivers {direct / 1e6:.0f} Mbit/s on this machine: ask for a lower rate"
                )
    if problems:
        raise ShapingError(
            f"the network path --network {network.label} asked for is more than {TOLERANCE:.0%} off: "
            f"{'; '.join(problems)} (a loaded machine? measure again, or change --network)"
        )


def loopback(endpoint: str | None) -> bool:
    """Whether ``endpoint`` (a URL) is on this machine's loopback, the only server ``--network`` shapes a path to."""
    return endpoint is not None and urlsplit(endpoint).hostname in LOOPBACK_HOSTS


@dataclass
class ShapedPath:
    """A shaped path to the server: the readers' ``endpoint``, the ``proxy`` on it, how the rate is kept
    (``rate_by``: "tbf", "proxy" or None) and a sentence saying how it is made."""

    endpoint: str
    proxy: ShapingProxy
    spec: str
    rate_by: str | None
    how: str

    def info(self) -> dict:
        return {"spec": self.spec, "rate_by": self.rate_by, "how": self.how}


@contextlib.contextmanager
def shaped(network: NetworkSpec, endpoint: str | None) -> Iterator[ShapedPath]:
    """A path to the server at ``endpoint`` (``http://127.0.0.1:PORT``) shaped as ``network``, until the block ends.
    The rate is kept by tbf in a namespace when the spec's shaper is ``auto`` and one can be made (root), or ``tbf``
    (ShapingError if none can); else, or with ``proxy``, by the proxy."""
    if not loopback(endpoint):
        raise ShapingError(
            f"--network shapes the path to a server on this machine (127.0.0.1) only, not to {endpoint or 'AWS'}, "
            "whose network is real: use --object-store local, or leave --network out"
        )
    target = urlsplit(endpoint)
    with contextlib.ExitStack() as stack:
        reason, namespace = netns.unavailable() if network.shaper != "proxy" else "shaper=proxy", None
        if network.rate is not None and reason is None:
            try:
                namespace = stack.enter_context(netns.Namespace(network.rate))
            except netns.NamespaceError as error:  # root, yet no namespaces here (a container without the right)
                reason = str(error)
        if network.shaper == "tbf" and network.rate is not None and namespace is None:
            raise ShapingError(f"--network {network.label},shaper=tbf: no tbf in a network namespace here: {reason}")
        if namespace is not None:
            proxy = ShapingProxy((target.hostname, target.port), network.rtt, None, namespace.listen())
            how = f"a proxy in network namespace {namespace.name} adding the round trip, and {namespace.description}"
        else:
            proxy = ShapingProxy((target.hostname, target.port), network.rtt, network.rate)
            paced = "" if network.rate is None else f", pacing the rate itself (no tbf: {reason})"
            how = f"a proxy on 127.0.0.1 adding the round trip{paced}"
        stack.callback(proxy.close)
        by = None if network.rate is None else "tbf" if namespace is not None else "proxy"
        yield ShapedPath(proxy.endpoint, proxy, network.label, by, how)

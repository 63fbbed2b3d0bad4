"""A cloud-like path between the remote cells' readers and the object store (``--network rtt=20ms,rate=1gbit``),
and the measurement that checks it before any cell runs.

The kernel here has no netem, so the round trip is added by a proxy on the way (benchmarks/shaping_proxy.py: each
request and each response held for half the round trip, every connection independently, a new connection one round
trip more, as a TCP handshake costs). The rate is kept by ``tbf`` on a veth pair into a network namespace the suite
makes, the proxy listening inside it (root only: benchmarks/netns.py), or else by the proxy itself, which paces
every connection through one shared link. Shaping is only for a server on 127.0.0.1.

``measure`` times small GETs (the round trip) and a larger one (the throughput) on the shaped path and on the
direct one, alternately, and ``check`` refuses a shaped path more than 20 % off its spec.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator

from benchmarks.options import NetworkSpec

TOLERANCE = 0.2  # the shaped path may be this far off its spec
RTT_SLACK_S = 0.001  # ... or this much, for round trips of a few milliseconds (timer and scheduler noise)
PROBES = 20  # small GETs timed per path
LARGE_PROBES = 3  # large GETs timed per path
SMALL_BYTES = 1024
LARGE_SECONDS = 0.25  # the large object takes about this long at the spec's rate
LARGE_BYTES = (1 << 20, 32 << 20, 4 << 20)  # its least, most, and size when no rate is asked for
MEASURE_TIMEOUT_S = 120.0  # the whole measurement gives up after this


class ShapingError(RuntimeError):
    """The shaped path is not what ``--network`` asked for (or cannot be made here)."""


def large_bytes(network: NetworkSpec | None) -> int:
    """The size of the object timed for throughput: about LARGE_SECONDS at the spec's rate, within bounds."""
    least, most, default = LARGE_BYTES
    if network is None or network.rate is None:
        return default
    return int(min(most, max(least, network.rate / 8 * LARGE_SECONDS)))


def measure(url: str, direct: dict, shaped: dict, network: NetworkSpec | None) -> dict:
    """Round trip (median of PROBES small GETs) and throughput (median of LARGE_PROBES GETs of a larger object, less
    a round trip) on the readers' path (``shaped``, the same as ``direct`` without ``--network``) and on the direct
    one, the two alternating; the probe objects are written under ``url`` first, directly. Bounded in count and
    MEASURE_TIMEOUT_S in time."""
    import obstore

    from storage_impls.remote import Location

    paths = {"shaped": Location(url, shaped), "direct": Location(url, direct)}
    small, large = os.urandom(SMALL_BYTES), os.urandom(large_bytes(network))
    obstore.put(paths["direct"].store, "small", small)
    obstore.put(paths["direct"].store, "large", large)
    deadline = time.monotonic() + MEASURE_TIMEOUT_S
    times: dict[str, dict[str, list[float]]] = {path: {"small": [], "large": []} for path in paths}
    for key, count in (("small", PROBES + 1), ("large", LARGE_PROBES)):  # the first small GET opens the connection
        for _ in range(count):
            for path, location in paths.items():
                if time.monotonic() > deadline:
                    raise ShapingError(f"measuring the path to the object store took over {MEASURE_TIMEOUT_S:g} s")
                start = time.perf_counter()
                data = location.get(key)
                times[path][key].append(time.perf_counter() - start)
                if len(data) != len(small if key == "small" else large):
                    raise ShapingError(f"a probe GET of {location.name(key)} returned {len(data)} bytes")
    measured = {}
    for path, found in times.items():
        rtt = statistics.median(found["small"][1:])
        transfer = statistics.median(found["large"]) - rtt
        measured[path] = {
            "rtt_ms": round(rtt * 1e3, 3),
            "throughput_mbit_s": round(len(large) * 8 / max(transfer, 1e-6) / 1e6, 1),
            "probe_bytes": len(large),
        }
    added = measured["shaped"]["rtt_ms"] - measured["direct"]["rtt_ms"]
    return {"measured": {**measured, "added_rtt_ms": round(added, 3)}}


def describe(found: dict) -> str:
    """One line: the round trip and throughput measured on the readers' path (and the direct one when shaped)."""
    measured = found["measured"]
    shaped, direct = measured["shaped"], measured["direct"]
    text = f"round trip {shaped['rtt_ms']:.1f} ms, throughput {shaped['throughput_mbit_s']:.0f} Mbit/s"
    if "shaping" in found:
        text += (
            f" through {found['shaping']['how']} (direct: {direct['rtt_ms']:.1f} ms, "
            f"{direct['throughput_mbit_s']:.0f} Mbit/s; the shaping adds {measured['added_rtt_ms']:.1f} ms)"
        )
    return text


def check(network: NetworkSpec | None, found: dict) -> None:
    """Raise ShapingError when the shaped path is more than TOLERANCE off ``network``: the round trip it adds
    (shaped less direct, so the server's own time is left out) and its throughput."""
    if network is None:
        return
    measured = found["measured"]
    problems = []
    added = measured["added_rtt_ms"] / 1e3
    if abs(added - network.rtt) > max(TOLERANCE * network.rtt, RTT_SLACK_S):
        problems.append(f"it adds a round trip of {added * 1e3:.1f} ms, not {network.rtt * 1e3:g} ms")
    if network.rate is not None:
        rate = measured["shaped"]["throughput_mbit_s"] * 1e6
        if abs(rate - network.rate) > TOLERANCE * network.rate:
            problems.append(f"its throughput is {rate / 1e6:.0f} Mbit/s, not {network.rate / 1e6:g} Mbit/s")
            direct = measured["direct"]["throughput_mbit_s"] * 1e6
            if direct < (1 - TOLERANCE) * network.rate:
                problems.append(
                    f"the server alone delivers {direct / 1e6:.0f} Mbit/s on this machine: ask for a lower rate"
                )
    if problems:
        raise ShapingError(
            f"the network path --network {network.label} asked for is more than {TOLERANCE:.0%} off: "
            f"{'; '.join(problems)} (a loaded machine? measure again, or change --network)"
        )


@contextlib.contextmanager
def shaped(network: NetworkSpec, endpoint: str | None) -> Iterator[str]:
    """The endpoint (``http://host:port``) of a path to ``endpoint`` shaped as ``network``, until the block ends."""
    raise ShapingError("--network is not built yet")
    yield endpoint

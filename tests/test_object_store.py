"""The suite's object store (``--object-store``, benchmarks/object_store.py) and its shaped network (``--network``,
benchmarks/network.py): moto's server on 127.0.0.1, a URL to an S3-compatible endpoint with credentials and a
non-default region, a proxy that adds the round trip and keeps the rate, the check that refuses a mis-shaped path,
and tbf in a network namespace when root. Every socket is on 127.0.0.1 or in a namespace a test made."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks import netns
from benchmarks.network import ShapingError, check, measure, shaped
from benchmarks.object_store import LOCAL_CREDENTIALS, LOCAL_REGION, S3_HINT, open_object_store, unavailable
from benchmarks.options import ObjectStoreSpec, parse_network, parse_object_store
from tests.s3_server import s3_server  # noqa: F401  (fixture)

obstore = pytest.importorskip("obstore", reason=f"remote reads need obstore: {S3_HINT}")

REPO = Path(__file__).resolve().parent.parent
REGION = "ap-southeast-2"  # neither the default nor the local server's
PROBE_TEST = """
import obstore
from storage_impls.remote import Location

def test_probe(object_store):
    location = Location(object_store.url("probe"), object_store.storage_options)
    obstore.put(location.store, "hello", b"hello")
    assert bytes(location.get("hello")) == b"hello"
    print("INFO", object_store.url("probe"), object_store.network, sorted(object_store.machine_info))
"""


def roundtrip(store, key: str = "x") -> bytes:
    from storage_impls.remote import Location

    location = Location(store.url("check"), store.storage_options)
    obstore.put(location.store, key, b"payload")
    return bytes(location.get(key))


def run_probe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """A pytest run of one test using the ``object_store`` fixture, with the suite's options (the root conftest)."""
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE_TEST))
    plugins = ("-p", "conftest", "-p", "benchmarks.object_store", "-p", "no:cacheprovider")  # the suite's options
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-s", str(tmp_path / "test_probe.py"), *args],
        cwd=REPO,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},  # no other plugin: a faster start
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_local_option_runs_a_server_with_a_fresh_bucket_through_the_network_asked_for(tmp_path):
    result = run_probe(tmp_path, "--object-store", "local", "--network", "rtt=50ms")
    assert result.returncode == 0, result.stdout + result.stderr
    info = next(line for line in result.stdout.splitlines() if line.startswith("INFO"))
    assert "s3://isb-" in info and "/run-" in info and " rtt=50ms " in info
    assert "'endpoint_kind', 'measured', 'network', 'shaping', 'url'" in info  # the probe's own path
    assert "image-storage: object store s3://isb-" in result.stdout and "the shaping adds" in result.stdout


def test_without_the_option_remote_cells_skip_naming_it():
    assert "--object-store" in unavailable(None) and "local" in unavailable(None)
    assert unavailable(ObjectStoreSpec()) is None  # the [s3] extra is installed here


def test_a_url_reaches_an_s3_compatible_endpoint_with_credentials_and_region_from_the_environment(
    s3_server,  # noqa: F811
    monkeypatch,
):
    bucket = s3_server.create_bucket(REGION)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_CREDENTIALS["secret_access_key"])
    monkeypatch.setenv("AWS_REGION", REGION)
    spec = parse_object_store(f"s3://{bucket}/datasets/cifar?endpoint={s3_server.endpoint}")
    assert spec == ObjectStoreSpec(bucket, "datasets/cifar", s3_server.endpoint)
    with open_object_store(spec, report=lambda line: None) as store:
        assert store.url("a").startswith(f"s3://{bucket}/datasets/cifar/run-")
        assert store.storage_options == {"endpoint": s3_server.endpoint}  # the rest from the environment
        assert roundtrip(store) == b"payload"
        assert store.machine_info["endpoint_kind"] == f"S3-compatible endpoint {s3_server.endpoint}"
        assert store.machine_info["measured"]["direct"]["rtt_ms"] > 0
    from obstore.store import S3Store

    left = S3Store(bucket, endpoint=s3_server.endpoint, region=REGION, client_options={"allow_http": True})
    assert obstore.list(left, "datasets/").collect() == [], "the run's prefix is emptied at the end"


def shaped_path(s3_server, network: str):  # noqa: F811
    """A bucket on the session's server and a path to it shaped as ``network``: (url, direct options, path)."""
    bucket = s3_server.create_bucket()
    direct = {"endpoint": s3_server.endpoint, "region": LOCAL_REGION, **LOCAL_CREDENTIALS}
    return f"s3://{bucket}/probe", direct, shaped(parse_network(network), s3_server.endpoint)


def test_the_proxy_adds_the_round_trip_to_concurrent_requests_independently_and_paces_the_rate(s3_server):  # noqa: F811
    from storage_impls.remote import Location
    from storage_impls.remote.ranges import Span

    url, direct, path = shaped_path(s3_server, "rtt=40ms,rate=48mbit,shaper=proxy")
    with path as found:
        assert found.rate_by == "proxy" and "pacing the rate itself" in found.how
        measured = measure(url, direct, {**direct, "endpoint": found.endpoint}, parse_network(found.spec), found.proxy)
        check(parse_network(found.spec), measured)  # within 20 %: no error
        added, rate = measured["measured"]["added_rtt_ms"], measured["measured"]["shaped"]["throughput_mbit_s"]
        assert 32 <= added <= 48 and 38 <= rate <= 58, measured
        location = Location(url, {**direct, "endpoint": found.endpoint})
        spans = [Span("small", start, start + 10) for start in range(0, 800, 100)]  # 8 requests, none touching
        whole = bytes(location.get("small"))
        start = time.perf_counter()
        parts = location.fetch(spans)
        took = time.perf_counter() - start
        assert [bytes(part) for part in parts] == [whole[span.start : span.stop] for span in spans]
        assert took < 8 * 0.04, f"8 concurrent requests took {took:.3f} s: delayed one after another"


def test_a_mis_shaped_path_is_refused_saying_what_is_off(s3_server):  # noqa: F811
    url, direct, path = shaped_path(s3_server, "rtt=60ms,rate=64mbit,shaper=proxy")
    with path as found:  # the path is 60 ms and 64 Mbit/s, the spec below 20 ms and 16 Mbit/s
        asked = parse_network("rtt=20ms,rate=16mbit")
        measured = measure(url, direct, {**direct, "endpoint": found.endpoint}, asked, None)
        with pytest.raises(
            ShapingError,
            match=r"more than 20% off: it adds a round trip of \d+\.\d ms, not 20 ms; its "
            r"throughput is \d+ Mbit/s, not 16 Mbit/s",
        ):
            check(asked, measured)
    with pytest.raises(ShapingError, match="127.0.0.1.* only, not to https://s3.example.com"):
        with shaped(parse_network("rtt=20ms"), "https://s3.example.com"):
            pass


@pytest.mark.skipif(
    netns.unavailable() is not None, reason=f"tbf in a network namespace needs root and iproute2: {netns.unavailable()}"
)
def test_tbf_on_a_veth_pair_into_a_namespace_keeps_the_rate_and_is_removed_even_on_failure(s3_server, monkeypatch):  # noqa: F811
    url, direct, path = shaped_path(s3_server, "rtt=30ms,rate=48mbit,shaper=tbf")
    with pytest.raises(RuntimeError, match="a cell failed"):
        with skip_without_namespaces(), path as found:
            name = found.how.split("network namespace ")[1].split()[0]
            assert found.rate_by == "tbf" and urlsplit(found.endpoint).hostname.startswith("10.")
            assert name in namespaces()
            measured = measure(
                url, direct, {**direct, "endpoint": found.endpoint}, parse_network(found.spec), found.proxy
            )
            check(parse_network(found.spec), measured)
            raise RuntimeError("a cell failed")
    assert name not in namespaces(), "the namespace outlives its run"
    before, made = namespaces(), []
    real_run = netns._run

    def failing_tc(*command):
        if command[0] == "tc":
            made.extend(set(namespaces()) - set(before))
            raise netns.NamespaceError("tc: no tbf here")
        return real_run(*command)

    monkeypatch.setattr(netns, "_run", failing_tc)
    with pytest.raises(netns.NamespaceError, match="no tbf"):
        netns.Namespace(48e6)
    assert made and not set(made) & set(namespaces()), "a half-made namespace is left"


@contextlib.contextmanager
def skip_without_namespaces():
    """Skips the test where root may not make network namespaces (a container without CAP_SYS_ADMIN) or the kernel
    has no veth or tbf."""
    try:
        yield
    except ShapingError as error:
        lacking = ("not permitted", "Permission denied", "qdisc kind is unknown", "Unknown device type")
        if any(words in str(error) for words in lacking):
            pytest.skip(f"no network namespaces here: {error}")
        raise


def namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_a_listing_longer_than_a_page_is_whole(s3_server):  # noqa: F811
    import asyncio

    from storage_impls.remote import Location

    direct = {"endpoint": s3_server.endpoint, "region": LOCAL_REGION, **LOCAL_CREDENTIALS}
    location = Location(f"s3://{s3_server.create_bucket()}/many", direct)
    names = [f"{number:04d}" for number in range(1001)]  # S3 answers 1000 keys a page: a continuation token follows

    async def put_all():
        limit = asyncio.Semaphore(16)

        async def put(name):
            async with limit:
                await obstore.put_async(location.store, name, b"x")

        await asyncio.gather(*(put(name) for name in names))

    asyncio.run(put_all())
    assert sorted(item["path"] for chunk in obstore.list(location.store) for item in chunk) == names


def test_several_networks_are_one_option_a_repeated_key_starting_the_next():
    from benchmarks.options import parse_networks

    sweep = parse_networks("rtt=0ms,rtt=5ms,rtt=20ms,rtt=50ms")
    assert [network.label for network in sweep] == ["rtt=0ms", "rtt=5ms", "rtt=20ms", "rtt=50ms"]
    pair = parse_networks("rtt=5ms,rate=1gbit,rtt=20ms,rate=1gbit,shaper=proxy")
    assert [(network.label, network.shaper) for network in pair] == [
        ("rtt=5ms,rate=1gbit", "auto"),
        ("rtt=20ms,rate=1gbit", "proxy"),
    ]
    assert [network.label for network in parse_networks("rtt=20ms,rate=1gbit")] == ["rtt=20ms,rate=1gbit"]
    for wrong in ("rtt=5ms,rtt=5ms", "", "rtt=5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_networks(wrong)

"""The suite's object store (``--object-store``, benchmarks/object_store.py) and its shaped network (``--network``,
benchmarks/network.py): moto's server on 127.0.0.1, a URL to an S3-compatible endpoint with credentials and a
non-default region, a proxy that adds the round trip and keeps the rate, the check that refuses a mis-shaped path,
and tbf in a network namespace when root. Every socket is on 127.0.0.1 or in a namespace a test made."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.object_store import LOCAL_CREDENTIALS, LOCAL_REGION, S3_HINT, open_object_store, unavailable
from benchmarks.options import ObjectStoreSpec, parse_object_store
from tests.s3_server import s3_endpoint, s3_server  # noqa: F401  (fixtures)

obstore = pytest.importorskip("obstore", reason=f"remote reads need obstore: {S3_HINT}")

REPO = Path(__file__).resolve().parent.parent
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
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "conftest",
        "-p",
        "benchmarks.object_store",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(
        [*command, "-s", "-rs", str(tmp_path / "test_probe.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_local_option_runs_a_server_with_a_fresh_bucket_and_stops_it(tmp_path):
    result = run_probe(tmp_path, "--object-store", "local")
    assert result.returncode == 0, result.stdout + result.stderr
    info = next(line for line in result.stdout.splitlines() if line.startswith("INFO"))
    assert "s3://isb-" in info and "/run-" in info and " none " in info and "'endpoint_kind'" in info
    assert "image-storage: object store s3://isb-" in result.stdout and "round trip" in result.stdout


def test_without_the_option_remote_cells_skip_naming_it():
    assert "--object-store" in unavailable(None) and "local" in unavailable(None)
    assert unavailable(ObjectStoreSpec()) is None  # the [s3] extra is installed here


def test_a_url_reaches_an_s3_compatible_endpoint_with_credentials_and_region_from_the_environment(
    s3_server,  # noqa: F811
    monkeypatch,
):
    bucket = s3_server.create_bucket("ap-southeast-2")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_CREDENTIALS["secret_access_key"])
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    spec = parse_object_store(f"s3://{bucket}/datasets/cifar?endpoint={s3_server.endpoint}")
    assert spec == ObjectStoreSpec(bucket, "datasets/cifar", s3_server.endpoint)
    with open_object_store(spec, report=lambda line: None) as store:
        assert store.url("a").startswith(f"s3://{bucket}/datasets/cifar/run-")
        assert store.storage_options == {"endpoint": s3_server.endpoint}  # the rest from the environment
        assert roundtrip(store) == b"payload"
        assert store.machine_info["endpoint_kind"] == f"S3-compatible endpoint {s3_server.endpoint}"
        assert store.machine_info["measured"]["direct"]["rtt_ms"] > 0
    listed = obstore.list(store_at(bucket, s3_server.endpoint), "datasets/").collect()
    assert listed == [], "the run's prefix is emptied at the end"


def store_at(bucket: str, endpoint: str):
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=endpoint,
        region=LOCAL_REGION,
        client_options={"allow_http": True},
        access_key_id=LOCAL_CREDENTIALS["access_key_id"],
        secret_access_key=LOCAL_CREDENTIALS["secret_access_key"],
    )

"""Remote reads from a real S3 server on 127.0.0.1 (tests/s3_server.py): every method that reads remotely reads
bit-exact what the local store reads; the local-only ones refuse, and read once staged; publishing verifies sizes;
a missing or truncated object and a server that cuts responses raise typed errors, never wrong data."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import uuid

import numpy as np
import pytest

from storage_impls import METHODS, open_store
from storage_impls.core.errors import CorruptStoreError, LocalOnlyError, MissingStoreError, RemoteError
from storage_impls.loader import ImageDataset
from storage_impls.registry import READS_REMOTE, _load_class, has_trait, installed_methods, open_staged
from storage_impls.remote import STATS, upload
from storage_impls.remote.ranges import Span, coalesce
from tests.s3_server import CuttingProxy, bucket, s3_endpoint, s3_server  # noqa: F401  (fixtures)

REMOTE = [method for method in METHODS if has_trait(method, READS_REMOTE)]
LOCAL_ONLY = [method for method in METHODS if not has_trait(method, READS_REMOTE)]
# variants read remotely besides the plain methods: an encoded layout where the method has codecs
VARIANTS = {
    "webdataset": ["webdataset:codec=png", "webdataset:shard_size=64KiB"],
    "parquet": ["parquet:codec=png,compression=zstd"],
    "hdf5": ["hdf5:codec=png"],
    "disk": ["disk:codec=raw"],
    "zarr": ["zarr:reader=pread", "zarr:codec=png,compression=zstd,reader=pread", "zarr:compression=blosc"],
}
COUNT, SHAPE = 60, (8, 8, 3)


def spec_params(methods):
    return [pytest.param(spec, id=spec) for method in methods for spec in [method, *VARIANTS.get(method, [])]]


def images_and_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (COUNT, *SHAPE), np.uint8), rng.integers(-5, 1000, COUNT)


def published(spec: str, tmp_path, bucket, *, journal: bool = True) -> tuple[str, object]:  # noqa: F811
    """A local store of ``spec`` (store_many, then store_single records in its journal where ``journal``), uploaded
    to a fresh prefix: (its URL, the local store open for reading)."""
    images, labels = images_and_labels()
    folder = tmp_path / "local"
    with open_store(spec, folder) as store:
        store.store_many(images[:-3] if journal else images, labels[:-3] if journal else labels)
        if journal:
            for image_id in (COUNT - 3, COUNT - 2, COUNT - 1, 5):
                store.store_single(images[image_id], image_id, int(labels[image_id]))
    url = bucket.url(uuid.uuid4().hex[:8])
    upload(folder, url)
    return url, open_store(spec, folder, "r")


def installed(spec: str) -> None:
    if spec.partition(":")[0] not in installed_methods():
        pytest.skip(f"{spec} is not installed")


def test_coalescing_joins_only_touching_ranges_in_offset_order():
    spans = [Span("b", 10, 20), Span("a", 30, 40), Span("a", 0, 10), Span("a", 5, 8), Span("a", 41, 50)]
    requests, where = coalesce(spans)
    assert requests == [Span("a", 0, 10), Span("a", 30, 40), Span("a", 41, 50), Span("b", 10, 20)]
    assert where == [(3, 0), (1, 0), (0, 0), (0, 5), (2, 0)]


def test_the_trait_and_the_classes_agree():
    for method in installed_methods():
        assert (_load_class(method).remote_reader() is not None) == has_trait(method, READS_REMOTE), method


@pytest.mark.parametrize("spec", spec_params(REMOTE))
def test_remote_reads_are_bit_exact(spec, tmp_path, bucket):  # noqa: F811
    installed(spec)
    url, local = published(spec, tmp_path, bucket)
    with local, open_store(spec, url, "r") as remote:
        assert len(remote) == len(local) == COUNT
        assert (remote.image_shape, remote.image_dtype) == (local.image_shape, local.image_dtype)
        for image_id in (0, 5, COUNT - 1):
            image, label = remote.read_single(image_id)
            expected, expected_label = local.read_single(image_id)
            assert np.array_equal(image, expected) and label == expected_label
        for got, expected in zip(remote.read_many(COUNT), local.read_many(COUNT)):
            assert np.array_equal(got, expected)
        ids = np.random.default_rng(1).permutation(COUNT)[:32]
        for got, expected in zip(remote.read_batch(ids), local.read_batch(ids)):
            assert np.array_equal(got, expected)


def test_a_shuffled_batch_is_fetched_concurrently_in_few_requests(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    url, local = published("webdataset", tmp_path, bucket, journal=False)
    local.close()
    with open_store("webdataset", url, "r") as remote:
        STATS.reset()
        remote.read_batch(np.arange(0, COUNT, 2))  # every other member: no two touch
        assert STATS.requests == COUNT // 2
        STATS.reset()
        remote.read_batch(np.arange(COUNT)[::-1])  # neighbours in one shard: one request
        assert STATS.requests == 1


@pytest.mark.parametrize("method", LOCAL_ONLY)
def test_local_only_methods_refuse_and_read_once_staged(method, tmp_path, bucket):  # noqa: F811
    installed(method)
    url, local = published(method, tmp_path, bucket, journal=False)
    with pytest.raises(LocalOnlyError, match="stage"):
        open_store(method, url, "r")
    with local, open_staged(method, url, tmp_path / "staged") as staged:
        for got, expected in zip(staged.read_many(COUNT), local.read_many(COUNT)):
            assert np.array_equal(got, expected)


def _read_in_worker(dataset: ImageDataset, ids: list[int]) -> tuple[np.ndarray, list[int]]:
    pairs = dataset.__getitems__(ids)
    return np.stack([image for image, _ in pairs]), [label for _, label in pairs]


def test_image_dataset_reads_a_remote_store_in_spawned_workers(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    url, local = published("webdataset", tmp_path, bucket)
    dataset = ImageDataset("webdataset", url)
    batches = [list(range(start, COUNT, 4)) for start in range(4)]
    with local, multiprocessing.get_context("spawn").Pool(2) as pool:
        for ids, (images, labels) in zip(batches, pool.starmap(_read_in_worker, [(dataset, ids) for ids in batches])):
            expected, expected_labels = local.read_batch(np.array(ids))
            assert np.array_equal(images, expected) and labels == expected_labels.tolist()


def test_a_forked_worker_refuses_and_leaves_the_parents_handle_working(tmp_path, bucket):  # noqa: F811
    installed("npy-files")
    url, local = published("npy-files", tmp_path, bucket)
    with local, ImageDataset("npy-files", url) as dataset:
        first = dataset[3]  # the parent's handle and mirror, inherited by the fork
        with multiprocessing.get_context("fork").Pool(1) as pool, pytest.raises(RuntimeError, match="spawn"):
            pool.apply(_read_in_worker, (dataset, [1, 2, 3]))
        again = dataset[3]  # the child's close of its copy left the parent's mirror in place
        assert np.array_equal(first[0], again[0]) and first[1] == again[1]


def _open_and_leave_open(url: str, roots) -> None:
    store = open_store("npy-files", url, "r")
    store.read_single(3)
    roots.put(str(store.staged.root))  # returns without close(): the process ends with the handle open


def test_a_handle_left_open_removes_its_mirror_when_its_process_ends(tmp_path, bucket):  # noqa: F811
    """The mirror holds store files in /dev/shm (memory): a handle nobody closed must not leave them there."""
    installed("npy-files")
    url, local = published("npy-files", tmp_path, bucket)
    local.close()
    context = multiprocessing.get_context("spawn")
    roots = context.Queue()
    child = context.Process(target=_open_and_leave_open, args=(url, roots))
    child.start()
    root = roots.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0
    assert not os.path.exists(root), f"{root} outlived its process"


def test_upload_verifies_sizes_and_the_cli_publishes(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    from storage_impls.__main__ import main

    images, labels = images_and_labels()
    with open_store("webdataset", tmp_path / "local") as store:
        store.store_many(images, labels)
    url = bucket.url("cli")
    assert main(["upload", str(tmp_path / "local"), url]) == 0
    with open_store("webdataset", url, "r") as remote:
        assert np.array_equal(remote.read_many(COUNT)[0], images)


def test_a_missing_store_a_missing_object_and_a_truncated_one_are_typed_errors(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    with pytest.raises(MissingStoreError, match="no webdataset store"):
        open_store("webdataset", bucket.url("nothing-here"), "r")
    url, local = published("webdataset:shard_size=64KiB", tmp_path, bucket, journal=False)
    local.close()
    prefix = url.split("/", 3)[3]
    client = bucket.client()
    shard = next(
        item["Key"]
        for item in client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)["Contents"]
        if item["Key"].endswith("shard-000001.tar")
    )
    body = client.get_object(Bucket=bucket.name, Key=shard)["Body"].read()
    with open_store("webdataset", url, "r") as remote:  # opened before the shard is cut: reads find it short
        client.put_object(Bucket=bucket.name, Key=shard, Body=body[:512])  # its one member cut
        with pytest.raises(CorruptStoreError, match="shard-000001.tar"):
            remote.read_many(COUNT)
    with pytest.raises(CorruptStoreError, match="shard-000001.tar"):
        open_store("webdataset", url, "r")  # its listed size is not the index's
    client.delete_object(Bucket=bucket.name, Key=shard)
    with pytest.raises(MissingStoreError, match="shard-000001.tar"):
        open_store("webdataset", url, "r")


@pytest.mark.parametrize("cuts", [None, 1], ids=["every-response-cut", "first-response-cut"])
def test_a_server_that_cuts_responses_gives_a_typed_error_or_the_right_bytes(cuts, tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    url, local = published("webdataset", tmp_path, bucket, journal=False)
    host, port = bucket.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)), cut_after=700, cuts=cuts)
    try:
        started = time.monotonic()
        options = {"storage_options": {"endpoint": proxy.endpoint}}
        try:
            with open_store("webdataset", url, "r", **options) as remote:
                images, labels = remote.read_batch(np.arange(COUNT))
        except RemoteError:
            assert cuts is None or proxy.connections > 1, "one cut response must be retried"
        else:
            assert cuts is not None, "every response was cut: no read can succeed"
            expected, expected_labels = local.read_batch(np.arange(COUNT))
            assert np.array_equal(images, expected) and np.array_equal(labels, expected_labels)
        assert time.monotonic() - started < 60
    finally:
        local.close()
        proxy.close()


def test_another_methods_store_is_refused_naming_it(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    url, local = published("webdataset", tmp_path, bucket, journal=False)
    local.close()
    with pytest.raises(CorruptStoreError, match="holds a webdataset store"):
        open_store("npy-files", url, "r")


def test_hdf5s_chunked_layout_refuses_with_the_stage_hint(tmp_path, bucket):  # noqa: F811
    url, local = published("hdf5:chunks=4", tmp_path, bucket, journal=False)
    local.close()
    with pytest.raises(LocalOnlyError, match="stage"):
        open_store("hdf5", url, "r")


def test_remote_stores_are_read_only(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    with pytest.raises(PermissionError, match="read-only"):
        open_store("webdataset", bucket.url("any"), "a")


def test_recorded_requests_replay_as_plain_gets(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    url, local = published("webdataset", tmp_path, bucket, journal=False)
    local.close()
    with open_store("webdataset", url, "r") as remote:
        STATS.reset(record=True)
        remote.read_batch(np.arange(0, COUNT, 3))
        recorded, fetched = list(STATS.recorded), STATS.bytes
        STATS.reset()
        assert remote.location.replay(recorded) == fetched and STATS.requests == len(recorded) == COUNT // 3


def test_an_endpoint_that_refuses_connections_is_a_remote_error_soon(tmp_path, bucket):  # noqa: F811
    installed("webdataset")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again before the client connects: refused
    started = time.monotonic()
    with pytest.raises(RemoteError):
        open_store("webdataset", bucket.url("any"), "r", storage_options={"endpoint": f"http://127.0.0.1:{port}"})
    assert time.monotonic() - started < 60

"""storage_impls.loader.ImageDataset: map-style access, whole batches by a list of ids, pickling into spawned
processes, a handle per process, an epoch that yields every sample exactly once, no torch imported by the package,
and a real torch DataLoader when torch is installed: the batch recipe (batch_loader, no second copy) and the
per-sample protocol."""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from storage_impls import METHODS, get_store_class, open_store
from storage_impls.datasets import synthetic
from storage_impls.loader import ImageDataset, InProcessBatches, ShuffledBatches, TensorBatches, batch_loader

COUNT = 50


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic(COUNT, (8, 8, 3), seed=3)[0]


@pytest.fixture(scope="module", params=METHODS)
def dataset(request, images, tmp_path_factory) -> ImageDataset:
    """A dataset over a store whose labels are the ids, so that every sample names itself."""
    try:
        get_store_class(request.param)
    except ImportError as error:
        pytest.skip(str(error))  # the registry's install hint
    directory = tmp_path_factory.mktemp(request.param)
    with open_store(request.param, directory) as store:
        store.store_many(images, np.arange(COUNT))
    with ImageDataset(request.param, directory) as dataset:
        yield dataset


def skip_unless_fork_safe(dataset: ImageDataset, start_method: str) -> None:
    method = dataset.method.partition(":")[0]
    if start_method == "fork" and not get_store_class(method).fork_safe:
        pytest.skip(f"{method} is not fork-safe (ImageStore.fork_safe): its loaders use spawn")


def check_epoch(samples: list[tuple[np.ndarray, int]], images: np.ndarray) -> None:
    """Every id exactly once, each with its own image."""
    labels = [int(label) for _, label in samples]
    assert sorted(labels) == list(range(COUNT))
    for image, label in samples:
        np.testing.assert_array_equal(np.asarray(image), images[label])


def test_map_style_access(dataset, images):
    assert len(dataset) == COUNT
    image, label = dataset[7]
    np.testing.assert_array_equal(image, images[7])
    assert label == 7
    batch = dataset.__getitems__([9, 2, 9])
    assert [label for _, label in batch] == [9, 2, 9]
    for image, label in batch:
        np.testing.assert_array_equal(image, images[label])
    with pytest.raises(IndexError, match="out of range"):
        dataset[COUNT]
    assert len(list(iter(dataset))) == COUNT  # the sequence protocol stops at IndexError


def test_a_list_of_ids_is_one_batch(dataset, images):
    for ids in ([9, 2, 9], np.array([4, 0]), (COUNT - 1,)):
        batch_images, batch_labels = dataset[ids]
        assert isinstance(batch_images, np.ndarray) and batch_images.shape == (len(ids), *images.shape[1:])
        np.testing.assert_array_equal(batch_images, images[list(ids)])
        assert batch_labels.dtype == np.int64 and batch_labels.tolist() == list(ids)
    out = np.empty((2, *images.shape[1:]), images.dtype)
    assert dataset.read_batch([5, 6], out=out)[0] is out
    np.testing.assert_array_equal(out, images[5:7])


def test_the_package_never_imports_torch(dataset):
    code = (
        "import sys, storage_impls, storage_impls.loader as loader; "
        f"dataset = loader.ImageDataset({dataset.method!r}, {str(dataset.directory)!r}); "
        "dataset[[0, 1]]; dataset[0]; loader.TensorBatches(dataset); assert 'torch' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr


def test_pickles_without_a_handle_and_reopens(dataset, images):
    dataset[0]
    state = pickle.dumps(dataset)
    assert b"Environment" not in state and b"h5py" not in state
    dataset.close()  # py-lmdb refuses a second handle on one path in one process; workers are other processes
    copy = pickle.loads(state)
    assert copy._store is None
    np.testing.assert_array_equal(copy[3][0], images[3])
    copy.close()
    assert copy._store is None
    np.testing.assert_array_equal(copy[4][0], images[4])  # opens again after close
    copy.close()


def test_bad_store_fails_on_first_use(tmp_path):
    dataset = ImageDataset("hdf5", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        len(dataset)


def test_an_epoch_yields_every_sample_exactly_once(dataset, images):
    order = np.random.default_rng(0).permutation(COUNT)
    samples = [
        sample for start in range(0, COUNT, 16) for sample in dataset.__getitems__(order[start : start + 16].tolist())
    ]
    check_epoch(samples, images)


def read_share(dataset: ImageDataset, ids: list[int], results) -> None:
    """In a worker process: report this process's pid, the pid the dataset's handle was opened in, and the samples."""
    samples = dataset.__getitems__(ids)
    results.put((os.getpid(), dataset._pid, [(np.array(image), label) for image, label in samples]))


@pytest.mark.parametrize("start_method", ["spawn", "fork"] if sys.platform == "linux" else ["spawn"])
def test_worker_processes_each_open_their_own_handle(dataset, images, start_method):
    """spawn pickles the dataset (no handle in it); fork hands the child the parent's dataset with its open handle,
    which the child must not use."""
    skip_unless_fork_safe(dataset, start_method)
    dataset[0]
    context = multiprocessing.get_context(start_method)
    results = context.Queue()
    workers = [
        context.Process(target=read_share, args=(dataset, list(range(worker, COUNT, 2)), results))
        for worker in range(2)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert all(pid == handle_pid != os.getpid() for pid, handle_pid, _ in reports)
    check_epoch([sample for _, _, samples in reports for sample in samples], images)


@pytest.mark.parametrize("start_method", ["spawn", "fork"] if sys.platform == "linux" else ["spawn"])
def test_torch_dataloader_with_workers_reads_an_epoch_exactly_once(dataset, images, start_method):
    torch = pytest.importorskip("torch")
    skip_unless_fork_safe(dataset, start_method)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=start_method,
        generator=torch.Generator().manual_seed(0),
    )
    samples = []
    for batch_images, batch_labels in loader:
        assert batch_images.dtype == torch.uint8 and batch_images.shape[1:] == images.shape[1:]
        assert batch_labels.dtype == torch.int64
        samples += zip(batch_images.numpy(), batch_labels.tolist())
    check_epoch(samples, images)


def test_torch_dataloader_reads_whole_batches(dataset, monkeypatch):
    torch = pytest.importorskip("torch")

    def one_at_a_time(self, index):
        raise AssertionError("DataLoader read one sample at a time instead of calling __getitems__")

    monkeypatch.setattr(ImageDataset, "__getitem__", one_at_a_time)
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=16))
    assert sum(len(labels) for _, labels in batches) == COUNT


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_loader_reads_an_epoch_exactly_once_bit_exact(dataset, images, workers):
    torch = pytest.importorskip("torch")
    context = "spawn" if workers and not get_store_class(dataset.method).fork_safe else None
    loader = batch_loader(
        dataset, 16, num_workers=workers, multiprocessing_context=context, generator=torch.Generator().manual_seed(0)
    )
    assert len(loader) == math.ceil(COUNT / 16)
    samples, orders = [], []
    for _ in range(2):
        for batch_images, batch_labels in loader:
            assert batch_images.dtype == torch.uint8 and batch_images.shape[1:] == images.shape[1:]
            assert batch_labels.dtype == torch.int64 and len(batch_labels) == len(batch_images) <= 16
            assert batch_images.is_shared() == (workers > 0)  # a worker reads into shared memory: no copy to cross
            samples += zip(batch_images.numpy(), batch_labels.tolist())
        check_epoch(samples, images)
        orders.append([label for _, label in samples])
        samples = []
    assert orders[0] != orders[1]  # shuffled anew each epoch


def test_batch_loader_keeps_the_batch_read_batch_filled(dataset, monkeypatch):
    """At num_workers=0 the tensors the loop gets are the very arrays read_batch filled: one read, no copy; the ids
    come as one int64 array per batch (no per-id Python work)."""
    torch = pytest.importorskip("torch")
    filled = []
    original = ImageDataset.read_batch

    def spy(self, ids, out=None):
        assert isinstance(ids, np.ndarray) and ids.dtype == np.int64
        filled.append(original(self, ids, out=out))
        return filled[-1]

    monkeypatch.setattr(ImageDataset, "read_batch", spy)
    batches = list(batch_loader(dataset, 16, shuffle=False))
    assert len(filled) == len(batches) == math.ceil(COUNT / 16)
    for (batch_images, batch_labels), (images, labels) in zip(batches, filled):
        assert isinstance(batch_images, torch.Tensor) and np.shares_memory(batch_images.numpy(), images)
        assert np.shares_memory(batch_labels.numpy(), labels)
    assert torch.cat([labels for _, labels in batches]).tolist() == list(range(COUNT))


def test_batch_loader_without_workers_needs_no_dataloader(dataset):
    """num_workers=0 and no other DataLoader option: the batches come from InProcessBatches (no DataLoader's fixed
    cost per batch); an option only a DataLoader honours (pin_memory here) or workers give a DataLoader."""
    torch = pytest.importorskip("torch")
    for options in ({}, {"num_workers": 0, "persistent_workers": False, "multiprocessing_context": None}):
        loader = batch_loader(dataset, 16, shuffle=False, **options)
        assert isinstance(loader, InProcessBatches) and len(loader) == math.ceil(COUNT / 16)
        assert [labels.tolist() for _, labels in loader] == [labels.tolist() for _, labels in loader]  # iterable again
    assert isinstance(batch_loader(dataset, 16, pin_memory=False), torch.utils.data.DataLoader)
    assert isinstance(batch_loader(dataset, 16, num_workers=1), torch.utils.data.DataLoader)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffled_batches_cut_one_permutation(drop_last):
    torch = pytest.importorskip("torch")
    batches = ShuffledBatches(10, 4, drop_last=drop_last, generator=torch.Generator().manual_seed(0))
    epochs = [list(batches), list(batches)]
    for epoch in epochs:
        assert len(epoch) == len(batches) == (2 if drop_last else 3)
        assert [len(ids) for ids in epoch] == ([4, 4] if drop_last else [4, 4, 2])
        ids = np.concatenate(epoch)
        assert ids.dtype == np.int64 and len(set(ids.tolist())) == len(ids) and ids.max() < 10
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    in_order = np.concatenate(list(ShuffledBatches(10, 4, shuffle=False)))
    np.testing.assert_array_equal(in_order, np.arange(10))
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(10, 0)


def test_tensor_batches_follow_any_batch_sampler(dataset, images):
    torch = pytest.importorskip("torch")
    batches = [[3, 1], [0, 2, 4]]
    loader = torch.utils.data.DataLoader(TensorBatches(dataset), sampler=batches, batch_size=None)
    assert [labels.tolist() for _, labels in loader] == batches
    assert len(TensorBatches(dataset)) == COUNT

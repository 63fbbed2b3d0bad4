"""The loader cells (benchmarks/test_loader.py): not in the default run, collected with readable ids when asked for,
run at tiny sizes when torch is installed, and an epoch that repeats or loses an id or a pixel fails its cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.loaders import EpochBatches, Epochs, LoaderUnderTest, sampled_ids
from tests.test_benchmarks import run_suite

TINY = ("--cutoffs", "10,40", "--batch-sizes", "16", "--image-shape", "8x8x3", "--methods", "hdf5,npy-memmap")


def collected(*args: str) -> list[str]:
    result = run_suite(*TINY, "--collect-only", "-q", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line.split("::")[-1] for line in result.stdout.splitlines() if "::" in line]


def test_loader_cells_are_not_in_the_default_run():
    names = collected()
    assert names and not any("loader" in name or "read_batches" in name for name in names)


def test_asked_for_they_run_last_with_readable_ids_ours_and_peers_taking_turns():
    names = collected("--loaders")
    loaders = [name for name in names if "loader" in name or "read_batches" in name]
    assert names[-len(loaders) :] == loaders  # after every other cell
    assert loaders[:4] == [
        "test_read_batches[hdf5-40-b16]",
        "test_loader[hdf5-40-b16-w0]",
        "test_loader_peer[tensordataset-40-b16-w0]",
        "test_read_batches[npy-memmap-40-b16]",
    ]
    assert {
        "test_loader[npy-memmap-40-b16-w2]",
        "test_loader_peer[litdata-40-b16-w2]",
        "test_loader_peer[wds-pipeline-40-b16-w0]",
        "test_loader_peer[imagefolder-jpeg-40-b16-w2]",
    } <= set(loaders)
    assert collected("-k", "test_loader and hdf5") == [
        "test_read_batches[hdf5-40-b16]",
        "test_loader[hdf5-40-b16-w0]",
        "test_loader[hdf5-40-b16-w2]",
    ]


def test_the_cells_run_at_tiny_sizes(tmp_path):
    pytest.importorskip("torch")
    result = run_suite(
        *TINY,
        "-k",
        "test_loader and (hdf5 or tensordataset)",
        "--benchmark-max-time",
        "0.01",
        "--benchmark-min-rounds",
        "2",
        "--benchmark-json",
        str(tmp_path / "run.json"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cells = {bench["name"]: bench for bench in json.loads((tmp_path / "run.json").read_text())["benchmarks"]}
    assert set(cells) == {
        "test_read_batches[hdf5-40-b16]",
        "test_loader[hdf5-40-b16-w0]",
        "test_loader[hdf5-40-b16-w2]",
        "test_loader_peer[tensordataset-40-b16-w0]",
        "test_loader_peer[tensordataset-40-b16-w2]",
    }
    info = cells["test_loader[hdf5-40-b16-w2]"]["extra_info"]
    assert (info["operation"], info["method"], info["workers"], info["batch_size"]) == ("loader", "hdf5", 2, 16)
    assert info["epochs_checked"] == cells["test_loader[hdf5-40-b16-w2]"]["stats"]["rounds"] + 1  # and the warm-up
    assert info["load_average_before"] >= 0 and info["images_per_s"] > 0
    peer = cells["test_loader_peer[tensordataset-40-b16-w0]"]["extra_info"]
    assert (peer["operation"], peer["method"]) == ("loader_peer", "tensordataset")
    assert cells["test_read_batches[hdf5-40-b16]"]["extra_info"]["operation"] == "read_batches"


class _Batches:
    """A loader of the sampler's batches that returns the images of ``pixels(ids)`` and, with ``carried``, the ids
    ``read(ids)`` (as litdata's and webdataset's samples carry theirs), else their labels."""

    def __init__(self, sampler, images, labels, read, pixels, carried):
        self.sampler, self.images, self.labels, self.carried = sampler, images, labels, carried
        self.read, self.pixels = read, pixels

    def __iter__(self):
        for ids in self.sampler:
            read = np.asarray(self.read(ids))
            yield self.images[np.asarray(self.pixels(read))], read if self.carried else self.labels[read]


def same(ids):
    return ids


def repeat_first(ids):
    return [ids[0], *ids[:-1]]  # one id twice, another never


def rotate(ids):
    return [*ids[1:], ids[0]]  # every id once, each with another's pixels


@pytest.mark.parametrize("carried", [False, True], ids=["sampled", "carried"])
@pytest.mark.parametrize(
    "read, pixels, message",
    [
        (same, same, None),
        (repeat_first, same, {False: "differ from what was stored", True: "other than once"}),
        (same, rotate, {False: "differ from what was stored", True: "differ from what was stored"}),
    ],
    ids=["right", "repeats", "mixed-up"],
)
def test_an_epoch_is_checked_exactly_once_and_bit_exact(read, pixels, message, carried):
    """A loader in the sampler's order is checked against the ids it was asked for (a wrong id shows as other
    pixels); one that shuffles by itself against the ids its samples carry."""
    images = np.random.default_rng(1).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(20) % 3
    sampler = EpochBatches(20, 8)
    loader = _Batches(sampler, images, labels, read, pixels, carried)
    ids = (lambda batches: np.concatenate([batch[1] for batch in batches])) if carried else sampled_ids(sampler)
    epochs = Epochs("fake loader", LoaderUnderTest(loader, ids, labels=not carried), images, labels)
    epochs.run()
    if message is None:
        epochs.check()
        assert epochs.checked == 1 and epochs.batches is None
    else:
        with pytest.raises(pytest.fail.Exception, match=message[carried]):
            epochs.check()

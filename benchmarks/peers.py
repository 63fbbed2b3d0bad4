"""The loaders people train with today, on the session's images, timed beside ours by the loader cells
(benchmarks/test_loader.py: ``test_loader_peer[litdata-10000-b256-w2]``). A peer is not a storage method: it
has its own files, written here once per session and image count (untimed), and its own loader.

- ``tensordataset``: the images in memory, ``torch.utils.data.TensorDataset``: the bound of a DataLoader that
  reads nothing.
- ``imagefolder-png`` / ``imagefolder-jpeg``: ``torchvision.datasets.ImageFolder`` over one PNG (or JPEG q90)
  file per image, a folder per label, decoded by Pillow; a JPEG epoch must return what Pillow decodes of the same
  files, made when the files are written.
- ``litdata``: ``litdata.optimize`` into a local folder (raw arrays, 64 MB chunks), read by ``StreamingDataset``
  with its own shuffle through ``StreamingDataLoader``.
- ``wds-pipeline``: webdataset's ``TarWriter`` shards (a ``.npy`` and a ``.cls`` per sample), read by its own
  pipeline (shard shuffle, sample shuffle buffer of 1000, decode, batch) through its ``WebLoader``.

The per-sample peers (TensorDataset, ImageFolder) get the cell's batch sampler and the default collate, as
``DataLoader(batch_size=256, shuffle=True)`` would; litdata and webdataset shuffle by themselves, so their samples
carry their ids in place of the label. A peer whose package is missing is skipped with the install hint.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.loaders import INSTALL_PEERS, EpochBatches, LoaderUnderTest, require_torch, sampled_ids

PEERS = ("tensordataset", "imagefolder-png", "imagefolder-jpeg", "litdata", "wds-pipeline")
JPEG_QUALITY = 90
LITDATA_CHUNK_BYTES = "64MB"
WDS_SHARDS = 8  # enough for the workers to split by shard
WDS_SHUFFLE_BUFFER = 1000


@dataclass(frozen=True)
class Prepared:
    """A peer's files for one image count, and the images a correct epoch returns (a lossy codec's decode)."""

    directory: Path
    images: np.ndarray


def _import(module: str):
    """A peer's package, or a skip with the install hint."""
    return pytest.importorskip(module, reason=f"{module} is not installed: {INSTALL_PEERS}")


def _worker_options(workers: int) -> dict:
    return {"num_workers": workers, "persistent_workers": workers > 0}


def prepare(peer: str, images: np.ndarray, labels: np.ndarray, directory: Path) -> Prepared:
    """Write ``peer``'s files for these images into ``directory`` (untimed, once per session and image count)."""
    directory.mkdir(parents=True, exist_ok=True)
    if peer.startswith("imagefolder-"):
        return _write_image_folder(images, labels, directory, peer.removeprefix("imagefolder-"))
    if peer == "litdata":
        _write_litdata(images, directory)
    elif peer == "wds-pipeline":
        _write_shards(images, directory)
    return Prepared(directory, images)


def loader(
    peer: str, prepared: Prepared, images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int
) -> LoaderUnderTest:
    """``peer``'s loader over its prepared files, ``workers`` worker processes, batches of ``batch_size``."""
    make: Callable[..., LoaderUnderTest] = {
        "tensordataset": _tensordataset,
        "imagefolder-png": _image_folder,
        "imagefolder-jpeg": _image_folder,
        "litdata": _litdata,
        "wds-pipeline": _wds_pipeline,
    }[peer]
    return make(prepared=prepared, images=images, labels=labels, batch_size=batch_size, workers=workers)


def supports(peer: str, images: np.ndarray) -> str | None:
    """Why ``peer`` cannot hold these images (None if it can): image files are 8-bit RGB here."""
    if peer.startswith("imagefolder-") and (images.dtype != np.uint8 or images.shape[1:][2:] != (3,)):
        return f"{peer} reads 8-bit RGB image files; the session's images are {images.dtype} {images.shape[1:]}"
    return None


# -- in memory -------------------------------------------------------------------------------------------------
def _tensordataset(*, images, labels, batch_size, workers, **_) -> LoaderUnderTest:
    torch = require_torch()
    sampler = EpochBatches(len(images), batch_size, lists=True)
    data = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    return LoaderUnderTest(
        torch.utils.data.DataLoader(data, batch_sampler=sampler, **_worker_options(workers)), sampled_ids(sampler)
    )


# -- torchvision ImageFolder ------------------------------------------------------------------------------------
def _write_image_folder(images: np.ndarray, labels: np.ndarray, directory: Path, codec: str) -> Prepared:
    """A file per image, ``<label>/<id>.png`` (or .jpg), and what Pillow decodes of each file."""
    decoded = np.empty_like(images)
    options = {"quality": JPEG_QUALITY} if codec == "jpeg" else {}
    for image_id, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = directory / f"{label:06d}"
        folder.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=codec.upper(), **options)
        (folder / f"{image_id:08d}.{'jpg' if codec == 'jpeg' else codec}").write_bytes(buffer.getvalue())
        decoded[image_id] = np.asarray(Image.open(buffer).convert("RGB"))
    return Prepared(directory, decoded)


def _hwc_tensor(image: Image.Image):
    """ImageFolder's transform: the decoded image as an (H, W, C) uint8 tensor, the layout the stores return."""
    import torch

    return torch.from_numpy(np.array(image))


def _image_folder(*, prepared, images, batch_size, workers, **_) -> LoaderUnderTest:
    torch = require_torch()
    datasets = _import("torchvision.datasets")
    data = datasets.ImageFolder(str(prepared.directory), transform=_hwc_tensor)
    if data.classes != [f"{label:06d}" for label in range(len(data.classes))]:
        pytest.skip("ImageFolder numbers its classes by folder: the session's labels must be 0..k-1, all present")
    sampler = EpochBatches(len(images), batch_size, lists=True)
    index_to_id = np.array([int(Path(path).stem) for path, _ in data.samples])
    return LoaderUnderTest(
        torch.utils.data.DataLoader(data, batch_sampler=sampler, **_worker_options(workers)),
        sampled_ids(sampler, index_to_id),
    )


# -- litdata ----------------------------------------------------------------------------------------------------
def _litdata_sample(source: str, image_id: int) -> tuple[np.ndarray, int]:
    """litdata.optimize's function: the image of ``image_id`` (from the source .npy) and its id."""
    return np.array(np.load(source, mmap_mode="r")[image_id]), image_id


def _write_litdata(images: np.ndarray, directory: Path) -> None:
    litdata = _import("litdata")
    source = directory / "source.npy"
    np.save(source, images)
    litdata.optimize(
        fn=functools.partial(_litdata_sample, str(source)),
        inputs=list(range(len(images))),
        output_dir=str(directory / "optimized"),
        chunk_bytes=LITDATA_CHUNK_BYTES,
        num_workers=1,
    )
    source.unlink()


def _litdata(*, prepared, batch_size, workers, **_) -> LoaderUnderTest:
    litdata = _import("litdata")
    data = litdata.StreamingDataset(str(prepared.directory / "optimized"), shuffle=True, seed=0)
    batches = litdata.StreamingDataLoader(data, batch_size=batch_size, **_worker_options(workers))
    return LoaderUnderTest(batches, _carried_ids, labels=False)


def _carried_ids(batches: list) -> np.ndarray:
    """The ids a self-shuffling peer's batches carry as their second field."""
    return np.concatenate([np.asarray(batch[1]) for batch in batches]).astype(np.int64)


# -- webdataset's own pipeline ----------------------------------------------------------------------------------
def _shard_paths(directory: Path) -> list[str]:
    return [str(directory / f"shard-{shard:04d}.tar") for shard in range(WDS_SHARDS)]


def _write_shards(images: np.ndarray, directory: Path) -> None:
    wds = _import("webdataset")
    for shard, path in enumerate(_shard_paths(directory)):
        with wds.TarWriter(path) as sink:
            for image_id in range(shard, len(images), WDS_SHARDS):
                sink.write({"__key__": f"{image_id:08d}", "npy": images[image_id], "cls": image_id})


def _wds_pipeline(*, prepared, batch_size, workers, **_) -> LoaderUnderTest:
    wds = _import("webdataset")
    pipeline = (
        wds.WebDataset(_shard_paths(prepared.directory), shardshuffle=WDS_SHARDS, empty_check=False)
        .shuffle(WDS_SHUFFLE_BUFFER)
        .decode()
        .to_tuple("npy", "cls")
        .batched(batch_size, partial=True)
    )
    return LoaderUnderTest(
        wds.WebLoader(pipeline, batch_size=None, **_worker_options(workers)), _carried_ids, labels=False
    )

"""What a method's store holds and gives back, asked of an empty store once per method (variant) and session:
whether it can hold the session's images at all, and the images a correct read returns, which for a lossy
codec are ``decode(encode(x))`` (made once per codec, untimed) rather than the source images.

Fixtures, imported by benchmarks/conftest.py: ``store_class`` (the cell's class, or a skip saying what to
install or what the method cannot hold), ``expected`` (the images and labels a cell verifies against; it
records the codec, and for a lossy codec its PSNR against the source, in the cell's ``extra_info``).
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from benchmarks.progress import announce
from storage_impls import ImageStore, get_store_class
from storage_impls.core.codecs import get_codec, psnr_db


class Profile(NamedTuple):
    """What an empty store of a class says: why it cannot hold the session's images (None if it can), its codec."""

    limit: str | None
    codec: str


class Expected(NamedTuple):
    """The session's images as a store of one codec returns them, and the labels."""

    images: np.ndarray
    labels: np.ndarray
    codec: str
    psnr_db: float | None  # of the images against the source, for a lossy codec


@pytest.fixture(scope="session")
def store_profiles(storage_root: Path, dataset) -> Callable[[type[ImageStore]], Profile]:
    profiles: dict[type[ImageStore], Profile] = {}

    def profile(cls: type[ImageStore]) -> Profile:
        if cls not in profiles:
            probe = storage_root / f"probe-{uuid.uuid4().hex[:8]}"
            with cls(probe) as store:
                profiles[cls] = Profile(store.layout_limit(dataset.images.dtype, dataset.images.shape[1:], replacing=True),
                                        store.codec_spec)
            shutil.rmtree(probe, ignore_errors=True)
        return profiles[cls]
    return profile


@pytest.fixture
def store_class(method: str, store_profiles: Callable[[type[ImageStore]], Profile]) -> type[ImageStore]:
    """The method's class; the cell is skipped, saying what to install when its package is missing, or why the
    method cannot hold the session's images."""
    try:
        cls = get_store_class(method)
    except ImportError as error:
        pytest.skip(str(error))
    limit = store_profiles(cls).limit
    if limit:
        pytest.skip(f"{method} cannot store these images: {limit}")
    return cls


@pytest.fixture(scope="session")
def decoded(pytestconfig: pytest.Config, dataset) -> Callable[[str], Expected]:
    """``get(codec)``: the session's images as that codec gives them back, made once per codec."""
    made: dict[str, Expected] = {}

    def get(spec: str) -> Expected:
        if spec not in made:
            codec = get_codec(spec)
            if codec.lossless:
                made[spec] = Expected(dataset.images, dataset.labels, spec, None)
            else:
                images = np.empty_like(dataset.images)
                with announce(pytestconfig, f"decoding the images as {spec} returns them", len(images)):
                    for source, target in zip(dataset.images, images):
                        codec.decode_into(codec.encode(source), target)
                made[spec] = Expected(images, dataset.labels, spec, psnr_db(dataset.images, images))
        return made[spec]
    return get


@pytest.fixture
def expected(store_class: type[ImageStore], store_profiles: Callable[[type[ImageStore]], Profile],
             decoded: Callable[[str], Expected], benchmark) -> Expected:
    """What the cell's reads must return (exactly), recorded with the codec in the cell's extra_info."""
    result = decoded(store_profiles(store_class).codec)
    benchmark.extra_info["codec"] = result.codec
    if result.psnr_db is not None:
        benchmark.extra_info["psnr_db"] = round(result.psnr_db, 3)
    return result

"""What a method's store holds and gives back, asked of an empty store once per method (variant) and session:
whether it can hold the session's images at all, and its codec; and the images a correct read returns, made
independently of the code under test (benchmarks/codec_reference.py: the source images, or for a lossy codec
Pillow's own encode and decode of them, once per codec and session, untimed).

Fixtures, imported by benchmarks/conftest.py: ``store_class`` (the cell's class, or a skip saying what to
install or what the method cannot hold), ``expected`` (what a cell verifies against, with ``Expected.check``;
it records the codec, and for a lossy codec its PSNR against the source and its floor, in the cell's
``extra_info``), ``references`` (``get(codec)``, for the codec floors).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from benchmarks.codec_reference import NoReferenceError, psnr_floor_db, reference_images
from benchmarks.progress import announce
from benchmarks.verify import verify, verify_images, verify_psnr
from storage_impls import ImageStore, get_store_class
from storage_impls.core.codecs import psnr_db


class Profile(NamedTuple):
    """What an empty store of a class says: why it cannot hold the session's images (None if it can), its codec."""

    limit: str | None
    codec: str


class Expected(NamedTuple):
    """The session's images as a correct store of one codec returns them, the labels, and the source images."""

    images: np.ndarray
    labels: np.ndarray
    codec: str
    source: np.ndarray
    psnr_db: float | None  # of the images against the source, for a lossy codec
    psnr_floor_db: float | None  # the least PSNR a read of a lossy codec may have (codec_reference.psnr_floor_db)

    def check(self, what: str, images: np.ndarray, labels: np.ndarray | None, where: slice | np.ndarray) -> None:
        """Fail the cell unless ``images`` (and ``labels``, None for floors) are exactly the reference at ``where``
        (a slice or an array of indexes of the session's images) and, for a lossy codec, reach its PSNR floor
        against the source images (checked first: it names what a decoder returning garbage lost)."""
        if self.psnr_floor_db is not None:
            verify_psnr(what, images, self.source[where], self.psnr_floor_db, self.codec)
        if labels is None:
            verify_images(what, images, self.images[where])
        else:
            verify(what, images, labels, self.images[where], self.labels[where])


@pytest.fixture(scope="session")
def store_profiles(storage_root: Path, dataset) -> Callable[[type[ImageStore]], Profile]:
    profiles: dict[type[ImageStore], Profile] = {}

    def profile(cls: type[ImageStore]) -> Profile:
        if cls not in profiles:
            probe = storage_root / f"probe-{uuid.uuid4().hex[:8]}"
            with cls(probe) as store:
                profiles[cls] = Profile(
                    store.layout_limit(dataset.images.dtype, dataset.images.shape[1:], replacing=True), store.codec_spec
                )
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
def references(pytestconfig: pytest.Config, dataset) -> Callable[[str], Expected]:
    """``get(codec)``: what a correct store of that codec returns for the session's images, made once per codec
    with Pillow alone (benchmarks.codec_reference); a codec it does not know fails the cell."""
    made: dict[str, Expected] = {}

    def get(spec: str) -> Expected:
        if spec not in made:
            try:
                floor = psnr_floor_db(spec)
            except NoReferenceError as error:
                pytest.fail(str(error), pytrace=False)
            if floor is None:
                made[spec] = Expected(dataset.images, dataset.labels, spec, dataset.images, None, None)
            else:
                with announce(pytestconfig, f"making the {spec} reference with Pillow", len(dataset.images)):
                    images = reference_images(spec, dataset.images)
                made[spec] = Expected(
                    images, dataset.labels, spec, dataset.images, psnr_db(dataset.images, images), floor
                )
        return made[spec]

    return get


@pytest.fixture
def expected(
    store_class: type[ImageStore],
    store_profiles: Callable[[type[ImageStore]], Profile],
    references: Callable[[str], Expected],
    benchmark,
) -> Expected:
    """What the cell's reads must return (exactly), recorded with the codec in the cell's extra_info."""
    result = references(store_profiles(store_class).codec)
    benchmark.extra_info["codec"] = result.codec
    if result.psnr_db is not None:
        benchmark.extra_info.update(psnr_db=round(result.psnr_db, 3), psnr_floor_db=result.psnr_floor_db)
    return result

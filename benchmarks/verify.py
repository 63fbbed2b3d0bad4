"""The check every cell runs, untimed, on what it read or stored."""

from __future__ import annotations

import math

import numpy as np
import pytest

from storage_impls.core.codecs import psnr_db


def verify(
    what: str, images: np.ndarray, labels: np.ndarray, expected_images: np.ndarray, expected_labels: np.ndarray
) -> None:
    """Fail the cell unless the pixels and labels are exactly the ones stored."""
    verify_images(what, images, expected_images)
    if not np.array_equal(labels, expected_labels):
        pytest.fail(f"{what}: labels differ from what was stored", pytrace=False)


def verify_images(what: str, images: np.ndarray, expected_images: np.ndarray) -> None:
    """Fail the cell unless the pixels are exactly the ones stored (floor cells have no labels): bit for bit,
    so that a float NaN equals itself and -0.0 differs from 0.0, as a store must keep them."""
    if images.shape != expected_images.shape or images.dtype != expected_images.dtype:
        pytest.fail(
            f"{what} returned {images.dtype} {images.shape}, stored {expected_images.dtype} {expected_images.shape}",
            pytrace=False,
        )
    differing = np.count_nonzero((_bytes_per_image(images) != _bytes_per_image(expected_images)).any(axis=1))
    if differing:
        pytest.fail(f"{what}: {differing} of {len(images)} images differ from what was stored", pytrace=False)


def _bytes_per_image(images: np.ndarray) -> np.ndarray:
    """(N, bytes of one image) uint8 view of a batch (a C-contiguous copy first if it is not one)."""
    return (
        np.ascontiguousarray(images).view(np.uint8).reshape(len(images), math.prod(images.shape[1:]) * images.itemsize)
    )


def verify_psnr(what: str, images: np.ndarray, source: np.ndarray, floor_db: float, codec: str) -> None:
    """Fail the cell when the lossy ``images`` read are further from the ``source`` images than ``codec``'s PSNR floor
    allows (benchmarks/codec_reference.py); images of another shape or dtype are left to ``verify_images``."""
    if images.shape != source.shape or images.dtype != source.dtype:
        return
    measured = psnr_db(source, images)
    if measured < floor_db:
        pytest.fail(
            f"{what}: PSNR {measured:.1f} dB against the source images, below {codec}'s floor of {floor_db:g} dB",
            pytrace=False,
        )

"""What a correct store of a codec returns, made from the source images with Pillow alone, never through
storage_impls: the reference a cell verifies its reads against, and the PSNR each lossy spec must reach.

A spec (``jpeg-90``, ``webp-80``, ``png-6``, ``webp-lossless``, ``raw``) is parsed here, independently of
storage_impls.core.codecs. Lossless specs give the source images back. ``jpeg-Q`` and ``webp-Q`` are Pillow's
encoder at quality Q with its defaults (JPEG: 4:2:0 chroma subsampling for RGB) and its decoder, which are
deterministic: a store that encodes with Pillow returns exactly these pixels, and a decoder that returns other
pixels (zeros, a pixel off) fails the cell.

PSNR floors (``psnr_floor_db``): a lossy read must also be close to the source, whatever it is compared with. One
rule for both families, by quality tier: 28 dB from Q = 90, 23 dB from 50, 21 dB from 25, 13 dB below. Each is the
least PSNR any single image reached at the tier's lowest quality on the suite's synthetic images (32x32x3, 256x256x3,
28x28 grey; the noisiest data the suite makes: jpeg-90 30.0 dB, jpeg-50 25.3, jpeg-25 23.2, jpeg-1 15.3; webp
higher), less 2 dB, rounded down. Photographs score higher (jpeg-90: 37 dB on 256x256x3 crops); a decoder that
returns zeros scores 5-6 dB (docs/benchmarks.md, "Lossy codecs").
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

LOSSY = re.compile(r"(jpeg|webp)-(\d{1,3})")  # jpeg-1..jpeg-100, webp-1..webp-100
LOSSLESS = re.compile(r"raw|png(-\d)?|webp-lossless")
PSNR_FLOORS_DB = ((90, 28.0), (50, 23.0), (25, 21.0), (1, 13.0))  # (lowest quality, floor): the first tier reached
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class NoReferenceError(ValueError):
    """A spec this module does not know, or images its codec cannot hold."""


def is_lossy(spec: str) -> bool:
    """Whether a read of a store of codec ``spec`` differs from the source images (NoReferenceError if unknown)."""
    if LOSSY.fullmatch(spec):
        return True
    if LOSSLESS.fullmatch(spec):
        return False
    raise NoReferenceError(f"no independent reference for codec {spec!r}: add it to benchmarks/codec_reference.py")


def psnr_floor_db(spec: str) -> float | None:
    """The least PSNR (dB, against the source) a read of a store of lossy codec ``spec`` may have; None if lossless."""
    if not is_lossy(spec):
        return None
    quality = int(LOSSY.fullmatch(spec)[2])
    return next(floor for lowest, floor in PSNR_FLOORS_DB if quality >= lowest)


def pillow_round_trip(spec: str, image: np.ndarray) -> np.ndarray:
    """One image as Pillow's encoder and decoder of lossy ``spec`` give it back (same shape and dtype)."""
    kind, quality = LOSSY.fullmatch(spec).groups()
    channels = image.shape[2] if image.ndim == 3 else 1
    if image.dtype != np.uint8 or channels not in MODES or image.ndim not in (2, 3):
        raise NoReferenceError(f"{spec} holds uint8 images of 1, 3 or 4 channels, not {image.dtype} {image.shape}")
    mode = MODES[channels]
    buffer = io.BytesIO()
    pixels = image.reshape(image.shape[0], image.shape[1]) if channels == 1 else image
    Image.fromarray(pixels).save(buffer, format=kind.upper(), quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(mode)).reshape(image.shape)


def reference_images(spec: str, images: np.ndarray) -> np.ndarray:
    """The images a correct store of codec ``spec`` returns for ``images``: themselves for a lossless codec."""
    if not is_lossy(spec):
        return images
    return np.stack([pillow_round_trip(spec, image) for image in images])

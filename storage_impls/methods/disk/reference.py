"""Pillow alone on a disk store's PNG files, as an expert would read them without this package (benchmarks
compare read_batch with it); the files are found once, before any timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from storage_impls.core.base import BatchReader


def pillow_reader(directory: Path) -> BatchReader:
    paths = {int(path.stem): str(path) for path in directory.rglob("*.png")}

    def read(ids: np.ndarray, out: np.ndarray) -> None:
        for slot, image_id in enumerate(ids.tolist()):
            with Image.open(paths[image_id]) as image:
                out[slot] = np.asarray(image)

    return read

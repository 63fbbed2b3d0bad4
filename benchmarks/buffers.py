"""Output buffers of the timed reads, allocated as an expert's loader would: starting on a page boundary."""

from __future__ import annotations

import math
import mmap

import numpy as np
from numpy.typing import DTypeLike

PAGE = mmap.PAGESIZE


def page_aligned_empty(shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """An uninitialised C-order array whose data starts on a page boundary, like the workers' shared memory.

    numpy's default allocation (glibc malloc) starts a large array 16 bytes into a page, and on the development
    VM (AMD EPYC) the kernel copies page-aligned file data into such a buffer 2.2x slower than into an aligned
    one (300 files of 196 KB read with preadv: 24 ms against 11 ms), while data at other file offsets copy fast
    either way: reads into unaligned buffers favoured formats whose pixels do not start on a page."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + PAGE, np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start : start + size].view(dtype).reshape(shape)

"""Arrow ``binary`` columns as views, for the methods that keep encoded images in one (parquet, lance)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def binary_values(chunk: pa.BinaryArray) -> list[memoryview]:
    """The values of a ``binary`` array as views of its data buffer (int32 offsets), no per-value copy."""
    offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4).tolist()
    data = memoryview(chunk.buffers()[2] or b"")
    return [data[begin:end] for begin, end in zip(offsets[:-1], offsets[1:])]

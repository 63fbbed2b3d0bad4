"""Makes every lossy (JPEG, WebP) decode of storage_impls return zeros, as a broken decoder would, on import:
as a pytest plugin (``-p tests.zeroing_codec``), or in every new process through a ``sitecustomize`` that imports
it (tests/test_benchmarks.py), so that read_random's spawned workers decode zeros too."""

from storage_impls.core.codecs import PillowLossy


def _zeros(self, data, target):
    target.fill(0)


PillowLossy.decode_into = _zeros

"""The ``codec`` option of the methods that can keep images encoded (codecs.py), in one place.

A store records its codec. ``store_many`` writes with the codec the handle was opened with (the
``codec`` option, e.g. ``lmdb:codec=jpeg-90``), else the store's, else the method's default;
``store_single`` and reads always use the store's, so one store never mixes codecs.
"""

from __future__ import annotations

import abc
import os

import numpy as np

from storage_impls.core.base import ImageStore, Mode
from storage_impls.core.codecs import Codec, get_codec
from storage_impls.core.errors import CorruptStoreError
from storage_impls.core.options import check_options
from storage_impls.core.options import codec as codec_option


def decode(codec: Codec, data: bytes | memoryview, target: np.ndarray, where: str) -> None:
    """Decode ``data`` into ``target`` (one image slot of the store's dtype and shape); CorruptStoreError naming
    ``where`` (a file, or a store and image id) unless it is exactly such an image in ``codec``. Callers decode a
    batch's images one by one, in their own thread: a thread pool measured no gain on 2 cores, where the read cells run
    one worker per core (docs/benchmarks.md, "Decoding with threads inside read_batch")."""
    try:
        codec.decode_into(data, target)
    except (
        Exception
    ) as error:  # the codec's ValueErrors; Pillow reports damaged data with OSError, SyntaxError, EOFError ...
        raise CorruptStoreError(
            f"{where} is not a readable {codec.spec} image of the store's images ({type(error).__name__}: {error})"
        ) from None


class EncodedStore(ImageStore):
    """A store whose images may be encoded; subclasses say what their store records (``recorded_codec``)."""

    OPTIONS = {"codec": codec_option()}
    DEFAULT_CODEC = "raw"

    def __init__(
        self, directory: str | os.PathLike, mode: Mode = "a", *, codec: str | None = None, **options: object
    ) -> None:
        chosen = check_options(self.method, self.OPTIONS, {"codec": codec}).get("codec")
        self._codec_option = None if chosen is None else get_codec(chosen)
        super().__init__(directory, mode, **options)

    @property
    @abc.abstractmethod
    def recorded_codec(self) -> str | None:
        """The codec the store records, None while it is empty."""

    @property
    def codec(self) -> Codec:
        """The codec of the store's images, or the one its first write will use."""
        recorded = self.recorded_codec
        if recorded is not None:
            return get_codec(recorded)
        return self._codec_option or get_codec(self.DEFAULT_CODEC)

    @property
    def codec_spec(self) -> str:
        return self.codec.spec

    def layout_limit(self, dtype: np.dtype, shape: tuple[int, ...], *, replacing: bool = False) -> str | None:
        return self.writing_codec(replacing).limit(dtype, shape)

    def writing_codec(self, replacing: bool) -> Codec:
        """The codec a write uses: ``store_many`` (``replacing``) this handle's option first."""
        return (self._codec_option or self.codec) if replacing else self.codec

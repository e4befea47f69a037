"""Reading a source: the caller's bytes or a read-only memory map of the path, and the one place
where a decoder's unexpected failure becomes a ``decode_error`` reject."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .types import DecodedImage, ImageReject, NormalizeConfig


def _decode_or_reject(
    decode, source, config: NormalizeConfig, what: str, expect_size: tuple[int, int] | None = None
) -> DecodedImage:
    """``decode(buffer, config, expect_size)``; any failure but an :class:`ImageReject` or a lack of
    memory becomes a ``decode_error`` reject (the file is rejected, the batch goes on)."""
    with _buffer(source) as buf:
        try:
            return decode(buf, config, expect_size)
        except (ImageReject, MemoryError):
            raise
        except Exception as exc:
            raise ImageReject("decode_error", f"{what}{type(exc).__name__}: {exc}") from exc


@contextmanager
def _buffer(source) -> Iterator:
    """The file's bytes as a buffer: the caller's bytes, or a read-only memory map of the path.

    (A file truncated by another process *while* it is being decoded would fault the map; files in
    an ingest tree are written atomically, so that does not happen there.)
    """
    if isinstance(source, (bytes, bytearray)):
        yield source
        return
    if isinstance(source, memoryview):
        yield source.tobytes()
        return
    with open(source, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield mapped
    finally:
        try:
            mapped.close()
        except BufferError:  # a traceback still holds a view on it: unmapped when collected
            pass

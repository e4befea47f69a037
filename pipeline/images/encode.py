"""Encoding: the normalised pixels as PNG (a hand-rolled Up-filtered writer, zlib-ng) or JPEG file bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

from .types import NormalizeConfig


def encode_file_bytes(pixels: np.ndarray, config: NormalizeConfig) -> bytes:
    """``pixels`` (uint8 or uint16, 2-D) as PNG (8/16-bit grayscale) or JPEG (8-bit) file bytes
    (``config.fmt``). Not to be confused with the dual encoder's ``encode_image`` (an embedding)."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {pixels.dtype} {pixels.shape}")
    if config.fmt == "jpg":
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG output needs uint8 pixels")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=config.jpeg_quality)
        return buf.getvalue()
    return _png_bytes(pixels, config.png_compress_level)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_up_scanlines(pixels: np.ndarray) -> np.ndarray:
    """The PNG scanlines of a 2-D uint8/uint16 image, each row with filter byte 2 (Up): the
    byte minus the byte above (the row above row 0 is zeros); 16-bit samples big-endian."""
    rows = pixels.shape[0]
    depth = 8 * pixels.dtype.itemsize
    raw = np.ascontiguousarray(pixels, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8)
    raw = raw.reshape(rows, -1)
    filtered = np.empty((rows, raw.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])
    return filtered


def _png_bytes(pixels: np.ndarray, level: int) -> bytes:
    """A grayscale PNG (8 or 16 bit), every row with the Up filter.

    Hand-rolled because Pillow's adaptive per-row filter choice costs several times the
    compression itself here. After the Up filter a radiograph is mostly small differences, so
    Huffman coding alone (level 1) compresses as well as zlib's run-length search and zlib-ng
    does it faster than the standard library's zlib (figures: BENCHMARKS.md, PNG and "Measured
    figures moved out of docstrings"); levels 2-9 are zlib-ng's deflate levels. The
    stream is standard zlib (any PNG reader); its bytes are fixed for a given zlib-ng version.
    """
    rows, columns = pixels.shape
    depth = 8 * pixels.dtype.itemsize
    filtered = png_up_scanlines(pixels)
    strategy = zlib_ng.Z_HUFFMAN_ONLY if level == 1 else zlib_ng.Z_DEFAULT_STRATEGY
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 15, 9, strategy)
    idat = compressor.compress(filtered.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", columns, rows, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")

"""Stored pixels: the Pixel Data read in place (native syntaxes), RLE segment by segment, or through
pydicom's decoders; BitsStored enforcement; Modality / VOI LUT tables."""

from __future__ import annotations

import functools
import mmap
import struct

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from .types import ImageReject, _PixelInfo

#: uncompressed syntaxes whose pixel buffer is read directly with ``np.frombuffer``
_DIRECT_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
_PIXEL_DATA = 0x7FE00010
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _stored_pixels(
    ds: Dataset, buf, syntax: UID, info: _PixelInfo, frame: bytes | None = None
) -> tuple[np.ndarray, int | None]:
    """The full-size stored values, and the BitsStored still to enforce (None: already done).

    Direct reads leave clearing / sign-extending the bits above BitsStored to :func:`_shrink`,
    which does it band by band while the band is in cache (and only where a band needs it).
    """
    big_endian_bytes = syntax == ExplicitVRBigEndian and info.bits_allocated == 8  # OW byte swap
    if syntax in _DIRECT_SYNTAXES and not big_endian_bytes:
        return _direct_pixels(ds, buf, syntax, info), info.bits_stored
    if syntax == RLELossless and frame is not None and _rle_decoder() is not None:
        return _rle_pixels(frame, info), info.bits_stored  # bits above BitsStored: as a direct read
    return _decoded_pixels(ds, buf, syntax, info), None


def _direct_pixels(ds: Dataset, buf, syntax: UID, info: _PixelInfo) -> np.ndarray:
    """Uncompressed pixel data viewed in place with ``np.frombuffer`` (no copy for large data)."""
    count = info.rows * info.columns
    dtype = np.dtype(
        f"{'>' if syntax == ExplicitVRBigEndian else '<'}{'i' if info.signed else 'u'}{info.bits_allocated // 8}"
    )
    data, offset, available = _pixel_buffer(ds, buf, syntax)
    if available < count * dtype.itemsize:
        raise ImageReject(
            "truncated",
            f"pixel data has {available} bytes, {info.rows}x{info.columns}x"
            f"{dtype.itemsize} = {count * dtype.itemsize} expected",
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(info.rows, info.columns)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _pixel_buffer(ds: Dataset, buf, syntax: UID) -> tuple[bytes | mmap.mmap, int, int]:
    """(buffer, offset, bytes available) of the Pixel Data value."""
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    # deferred (a RawDataElement without its value), and not deflated (offsets of a deflated
    # file are inflated ones)
    if isinstance(elem, RawDataElement) and elem.value is None and syntax != DeflatedExplicitVRLittleEndian:
        return buf, elem.value_tell, max(0, min(elem.length, len(buf) - elem.value_tell))
    try:
        data = ds.PixelData
    except Exception as exc:
        raise ImageReject("truncated", f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc
    return data, 0, len(data or b"")


def _valid_bits(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """Clear (unsigned) or sign-extend (signed) the bits above BitsStored, as pydicom does.

    One min/max check; the correction (a copy) only happens when some value needs it.
    """
    width = arr.dtype.itemsize * 8
    if bits_stored >= width:
        return arr
    flat = arr.reshape(-1) if arr.flags.c_contiguous else arr  # 1-D reductions are the fast ones
    if arr.dtype.kind == "u":
        maxval = (1 << bits_stored) - 1
        return arr & arr.dtype.type(maxval) if flat.max() > maxval else arr
    bound = 1 << (bits_stored - 1)
    if flat.min() >= -bound and flat.max() < bound:
        return arr
    shift = width - bits_stored
    unsigned = arr.view(arr.dtype.str.replace("i", "u")) << shift
    return unsigned.view(arr.dtype) >> shift


def _value_bound(dtype: np.dtype, bits_stored: int | None) -> int:
    """Largest magnitude a stored value can have (sizes the block-sum accumulators)."""
    bits = bits_stored or dtype.itemsize * 8
    return (1 << bits) - 1 if dtype.kind == "u" else 1 << (bits - 1)


@functools.lru_cache(maxsize=1)
def _rle_decoder():
    try:
        from rle.rle import decode_segment  # pylibjpeg-rle, a dependency
    except ImportError:
        return None
    return decode_segment


def _rle_pixels(frame: bytes, info: _PixelInfo) -> np.ndarray:
    """An RLE Lossless frame decoded segment by segment (pylibjpeg-rle), each segment's decoded
    length checked against Rows x Columns: the plugins keep the first Rows x Columns bytes of a
    longer segment without a word (a header with Rows halved decoded to the image's top half)."""
    decode = _rle_decoder()
    count = info.bits_allocated // 8  # the header's segment count (checked by _check_pixel_size)
    offsets = [*struct.unpack_from(f"<{count}I", frame, 4), len(frame)]
    expected = info.rows * info.columns
    planes = []
    for index in range(count):
        try:
            segment = decode(frame[offsets[index] : offsets[index + 1]])
        except Exception as exc:
            raise ImageReject("decode_error", f"RLE Lossless segment {index}: {type(exc).__name__}: {exc}") from exc
        if len(segment) not in (expected, expected + 1):  # one pad byte allowed
            raise ImageReject(
                "pixel_size_mismatch",
                f"RLE segment {index} decodes to {len(segment)} bytes, the header's {info.rows} rows x "
                f"{info.columns} columns = {expected}",
            )
        planes.append(np.frombuffer(segment, dtype=np.uint8, count=expected))
    if count == 1:
        arr = planes[0]
    else:  # segment 0: the most significant byte of each sample
        arr = planes[0].astype(np.uint16) << np.uint16(8)
        arr |= planes[1]
    if info.signed:
        arr = arr.view(np.int8 if count == 1 else np.int16)
    return arr.reshape(info.rows, info.columns)


def _decoded_pixels(ds: Dataset, buf, syntax: UID, info: _PixelInfo) -> np.ndarray:
    """Compressed (and odd) syntaxes: pydicom's decoders (pylibjpeg / Pillow plugins)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:
        cut = syntax.is_encapsulated and bytes(buf[-len(_SEQUENCE_DELIMITER) :]) != _SEQUENCE_DELIMITER
        if cut or "less than expected" in str(exc):
            raise ImageReject("truncated", f"{syntax.name} pixel data incomplete ({exc})") from exc
        raise ImageReject("decode_error", f"{syntax.name}: {type(exc).__name__}: {exc}") from exc
    if arr.shape != (info.rows, info.columns) or arr.dtype.kind not in "ui":
        raise ImageReject(
            "unsupported_pixels", f"decoder returned {arr.dtype} {arr.shape}, expected {(info.rows, info.columns)}"
        )
    return arr


def _lut_table(item: Dataset, syntax: UID, signed: bool) -> tuple[int, np.ndarray]:
    """(first stored value mapped, table) of a Modality/VOI LUT Sequence item."""
    entries, first, _bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    if signed and first >= 1 << 15:  # the descriptor's 2nd value is SS for signed images
        first -= 1 << 16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype=">u2" if syntax == ExplicitVRBigEndian else "<u2")
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if len(table) < entries:
        raise ImageReject("decode_error", f"LUT has {len(table)} entries, descriptor says {entries}")
    return first, table[:entries].astype(np.uint16)


def _apply_lut_table(stored: np.ndarray, item: Dataset, syntax: UID, signed: bool) -> np.ndarray:
    """The Modality LUT Sequence (rare): a full-size table lookup."""
    first, table = _lut_table(item, syntax, signed)
    index = np.clip(stored.astype(np.int64) - first, 0, len(table) - 1)
    return table[index]


def _encapsulated_frame(ds: Dataset, buf, syntax: UID) -> bytes | None:
    """The first frame of encapsulated pixel data (its fragments joined); None when the file ends
    inside the encapsulated value (or its items do not parse): the decoders then say why."""
    try:
        data, offset, available = _pixel_buffer(ds, buf, syntax)
        with memoryview(data) as view:
            value = bytes(view[offset : offset + available])
        if data is buf and value.rfind(_SEQUENCE_DELIMITER) < 0:
            return None  # the file ends inside the encapsulated pixel data
        return next(generate_frames(value, number_of_frames=1))
    except (ImageReject, MemoryError):
        raise
    except Exception:
        return None

"""JPEG 2000 DICOMs decoded at a reduced resolution level (OpenJPEG via Pillow), and the codestream
headers that decide whether that path is taken."""

from __future__ import annotations

import functools
import io
import struct
from typing import Any, cast

import numpy as np
from PIL import Image, features
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless

from .resize import _reduced_resize
from .types import _REDUCE_MIN_PIXELS, _PixelInfo

#: DICOM syntaxes whose codestream is decoded at a reduced resolution level (OpenJPEG via Pillow)
_J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


def _reduced_j2k(
    ds: Dataset, syntax: UID, info: _PixelInfo, size: tuple[int, int], frame: bytes | None
) -> tuple[np.ndarray, int] | None:
    """A JPEG 2000 DICOM decoded at resolution level r and area-resampled to ``size`` (float32, stored
    units, as :func:`_shrink` gives), and 2**r. None: the full decode is the way (not JPEG 2000, small,
    r would be 0, or anything unusual); the full path then decodes the file or rejects it with its
    reason, so nothing here rejects. ``frame``: the complete first frame (:func:`_check_pixel_size`).
    """
    if (
        syntax not in _J2K_SYNTAXES
        or info.rows * info.columns < _REDUCE_MIN_PIXELS
        or info.signed
        or (info.rows >> 1) < size[0]
        or (info.columns >> 1) < size[1]
        or ds.get("ModalityLUTSequence")
        or int(ds.get("NumberOfFrames") or 1) != 1
        or not _pillow_j2k()
    ):
        return None
    try:
        codestream = _j2k_codestream(frame)
        if codestream is None:
            return None
        header = _j2k_header(codestream)
        if header is None:
            return None
        rows, columns, precision, levels = header
        if (rows, columns) != (info.rows, info.columns) or precision > info.bits_stored:
            return None
        level = max((r for r in range(1, levels + 1) if rows >> r >= size[0] and columns >> r >= size[1]), default=0)
        if level == 0:
            return None
        reduced = _j2k_decode_level(codestream, level, rows, columns, precision)
    except MemoryError:
        raise
    except Exception:  # Pillow or OpenJPEG refused (e.g. a tile with fewer levels): decode in full
        return None
    if reduced is None:
        return None
    step = 1 << level
    # a level-r sample is centred on full-size pixel j * step (JPEG 2000's low-pass samples sit on even
    # positions), i.e. half a block minus half a pixel before its block's centre
    return _reduced_resize(reduced, step, step / 2 - 0.5, (info.rows, info.columns), size), step


@functools.lru_cache(maxsize=1)
def _pillow_j2k() -> bool:
    return bool(features.check_codec("jpg_2000"))


def _j2k_codestream(frame: bytes | None) -> bytes | None:
    """``frame`` when it is one complete J2K codestream (SOC SIZ ... EOC), else None."""
    if (
        frame is None
        or not frame.startswith(_J2K_SOC_SIZ)
        or not (frame.endswith(b"\xff\xd9") or frame.endswith(b"\xff\xd9\x00"))
    ):
        return None  # a JP2 wrapper, or a cut / odd codestream
    return frame


def _j2k_header(codestream: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, precision, decomposition levels) from the main header's SIZ and COD / COC
    segments; None for what the reduced path does not handle: several components, image offsets,
    subsampling, signed samples, a precision above 16."""
    (lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto, components) = struct.unpack_from(
        ">HHIIIIIIIIH", codestream, 4
    )
    ssiz, xrsiz, yrsiz = struct.unpack_from(">BBB", codestream, 42)
    precision = (ssiz & 0x7F) + 1
    if components != 1 or xosiz or yosiz or xrsiz != 1 or yrsiz != 1 or ssiz & 0x80 or precision > 16:
        return None
    levels, position = None, 4 + lsiz
    while position + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, position)
        if marker == 0xFF90:  # SOT: the main header ends
            break
        if marker == 0xFF52:  # COD: Scod, SGcod (4 bytes), then SPcod starting with the levels
            levels = codestream[position + 9] if levels is None else min(levels, codestream[position + 9])
        elif marker == 0xFF53:  # COC for component 0 (one component: Ccoc is one byte), Scoc, SPcoc
            levels = codestream[position + 6] if levels is None else min(levels, codestream[position + 6])
        position += 2 + length
    return (ysiz, xsiz, precision, levels) if levels else None


def _j2k_decode_level(codestream: bytes, level: int, rows: int, columns: int, precision: int) -> np.ndarray | None:
    """Resolution level ``level`` of a one-component codestream in stored units: (ceil(rows / 2**level),
    ceil(columns / 2**level)). Pillow's OpenJPEG decoder with ``reduce``; its ``load`` rounds the
    reduced size to the nearest integer where OpenJPEG's is the ceiling (odd sizes then fail), so the
    size and the tile's reduce argument are set here and ``load`` does nothing else."""
    image = Image.open(io.BytesIO(codestream), formats=("JPEG2000",))
    with image:
        step = 1 << level
        size = (-(-columns // step), -(-rows // step))
        (tile,) = image.tile
        # Pillow's stubs allow any tile args; the JPEG 2000 decoder's are this 5-tuple
        codec, _reduce, layers, fd, length = cast(tuple[Any, ...], tile.args)
        image._size = size
        image.tile = [tile._replace(extents=(0, 0, *size), args=(codec, level, layers, fd, length))]
        image.load()
        arr = np.asarray(image)
    if arr.shape != (size[1], size[0]) or arr.dtype not in (np.uint8, np.uint16):
        return None
    shift = arr.dtype.itemsize * 8 - precision  # Pillow scales samples up to fill 8 / 16 bits
    if shift > 0:
        if int(np.bitwise_or.reduce(arr, axis=None)) & ((1 << shift) - 1):
            return None  # not scaled up as expected: do not guess
        arr = arr >> arr.dtype.type(shift)
    return arr

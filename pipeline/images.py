"""Decode a chest X-ray DICOM and normalise it to a training-ready grayscale image, fast.

The image half of the ingest stage (library code: no Prefect here)::

    decoded = decode_dicom(path, NormalizeConfig(long_side=512))   # raises ImageReject
    decoded = decode_jpeg(path, NormalizeConfig(long_side=512))    # MIMIC-CXR-JPG files
    data = encode_file_bytes(decoded.pixels, config)               # PNG or JPEG bytes

Order of operations, chosen for speed (the expensive part is touching every full-size pixel once)::

    parse header -> stored pixels -> [Modality LUT Sequence] -> shrink -> rescale slope/intercept
        -> VOI LUT | window | robust min-max -> invert MONOCHROME1 -> quantise -> [pad]

* Stored pixels of uncompressed syntaxes are a zero-copy ``np.frombuffer`` view: on a memory map
  of the file (path input) or on the caller's bytes. Pixel data larger than ``_DEFER_BYTES`` is not
  read by pydicom at all (``defer_size``); its file offset is mapped instead. Compressed syntaxes go
  through ``ds.pixel_array`` (pydicom + pylibjpeg plugins).
* Shrinking is an integer-factor block mean (integer sums, exact) down to at most 2x the target,
  then an exact area resample (two small sparse products) of the float32 result to the exact
  size. Trailing rows and columns that do not fill a whole block (fewer than the factor, i.e.
  < 0.2 % of a radiograph) are dropped.
* A linear rescale (slope/intercept) commutes with averaging, so it is applied to the small image;
  so are the VOI LUT / window and the min-max percentiles (taken on a fixed sub-grid).
* MONOCHROME1 is inverted so that bright = dense. The min-max path inverts by negating the values,
  which is exact: a MONOCHROME1 file whose stored values are ``maxval - v`` gives the same bytes as
  the MONOCHROME2 file with values ``v`` (whenever the shrink is exact: no resize, or a power-of-two
  factor; otherwise they may differ by one level on rare rounding ties).
* Presentation LUT Shape is not applied: for DX images it is fixed by the photometric
  interpretation (INVERSE with MONOCHROME1), which is what display orientation follows here.

Decoding no more than needed (``NormalizeConfig.reduced_decode``, on by default), for images of at
least ``_REDUCE_MIN_PIXELS`` pixels (smaller ones cost a few ms in full and keep the exactness above;
for a reduced JPEG 2000 decode the MONOCHROME1 mirror holds within one level, as the integer wavelet
is not exactly odd):

* JPEG files (:func:`decode_jpeg`): libjpeg's DCT-domain scaling (Pillow's ``draft``) decodes at
  1/2, 1/4 or 1/8 size, the smallest scale whose size is still >= the target; the entropy decoding
  is not reduced (it is most of a full decode at quality 95, which bounds the gain).
* JPEG 2000 DICOMs: OpenJPEG decodes resolution level r (``reduce``), r the largest with
  ``stored >> r >= target`` on both sides (and <= the codestream's decomposition levels): the
  tier-1 decoding of the finer levels, most of the work, is skipped. The rest is the same as the
  full path (rescale, VOI LUT / window / min-max, MONOCHROME1 inversion); only unusual files (signed
  or multi-component codestreams, a precision above BitsStored, a Modality LUT Sequence, image
  offsets, an incomplete codestream, Pillow without OpenJPEG) take the full decode.
* Either way the reduced image is resampled as :func:`_shrink` resamples the full one (the same
  k x k block means, each taken as the area mean of the reduced pixels over the block, then the
  same area resample), so each output pixel weighs the same full-size pixels. A JPEG 2000 level-r
  sample is centred on full-size pixel ``j * 2**r``, not on its block's centre, and is placed there;
  a JPEG DCT-scaled pixel is its block's. The output is within a fraction of a gray level of the
  full decode + resize (mean |difference| ~0.3 of 255 on 3000-px radiographs, a few levels at most
  on sharp edges: ``benchmarks/bench_decode.py``).
"""

from __future__ import annotations

import functools
import io
import math
import mmap
import os
import re
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pydicom
from zlib_ng import zlib_ng
from PIL import Image, UnidentifiedImageError, features
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
)
from scipy import sparse

from ..data_contracts.enums import IMAGE_REJECT_REASONS as REJECT_REASONS  # the reasons a decoder gives

__all__ = ["REJECT_REASONS", "DecodedImage", "ImageReject", "NormalizeConfig", "decode_dicom",
           "decode_jpeg", "encode_file_bytes", "target_size"]

#: uncompressed syntaxes whose pixel buffer is read directly with ``np.frombuffer``
_DIRECT_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                              DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})
#: values longer than this are left unread by pydicom (the pixel data is mapped instead)
_DEFER_BYTES = 1 << 20
#: the robust min-max takes its percentiles on a regular sub-grid of at most this many pixels
_MINMAX_SAMPLES = 1 << 15
#: block sums run in bands of this many output rows (k * this many input rows stay in cache)
_BAND_ROWS = 32
_MINMAX_PERCENTILE = 0.5  # low percentile; the high one is 100 - this
_PIXEL_DATA = 0x7FE00010
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: reduced-resolution decoding only for images of at least this many stored pixels
_REDUCE_MIN_PIXELS = 1 << 20
#: DICOM syntaxes whose codestream is decoded at a reduced resolution level (OpenJPEG via Pillow)
_J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SYNTAX_NAME = "JPEG (MIMIC-CXR-JPG)"  #: DecodedImage.transfer_syntax of decode_jpeg's images
_EXIF_ORIENTATION = 0x0112


# ------------------------------------------------------------------------------------------
# public types
# ------------------------------------------------------------------------------------------
class ImageReject(Exception):
    """A file (DICOM or JPEG) that cannot become a training image; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self):  # picklable across process pools
        return type(self), (self.reason, self.message)


@dataclass(frozen=True)
class NormalizeConfig:
    long_side: int = 512  #: resize so the long side is this (aspect kept, never upscaled)
    pad_square: bool = False  #: zero-pad (centred) to long_side x long_side
    out_bits: int = 8  #: 8 or 16
    fmt: str = "png"  #: "png" or "jpg"
    png_compress_level: int = 1  #: 0 stored, 1 fastest (Huffman coding only), 2-9 deflate levels
    jpeg_quality: int = 95
    #: decode JPEG files / JPEG 2000 DICOMs at the smallest resolution still >= the target, then
    #: resize (False: decode the full image, then resize; the benchmark's baseline)
    reduced_decode: bool = True

    def __post_init__(self):
        if self.long_side < 1:
            raise ValueError(f"long_side must be >= 1, got {self.long_side}")
        if self.out_bits not in (8, 16):
            raise ValueError(f"out_bits must be 8 or 16, got {self.out_bits}")
        if self.fmt not in ("png", "jpg"):
            raise ValueError(f"fmt must be 'png' or 'jpg', got {self.fmt!r}")
        if self.fmt == "jpg" and self.out_bits != 8:
            raise ValueError("JPEG output needs out_bits=8")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be 0-9, got {self.png_compress_level}")


@dataclass
class DecodedImage:
    pixels: np.ndarray  #: uint8 / uint16 HxW, display orientation (bright = dense)
    transfer_syntax: str  #: UID name, e.g. "JPEG 2000 Image Compression (Lossless Only)"
    transfer_syntax_uid: str
    photometric: str
    bits_stored: int
    original_rows: int
    original_columns: int
    window_source: str  #: "voi_lut", "window", "minmax" or "identity" (JPEG: 0-255 as stored)
    #: the decoder's resolution reduction: 1 (full), 2/4/8 (JPEG DCT scaling), 2**r (JPEG 2000 level r)
    decode_scale: int = 1


@dataclass(frozen=True)
class _PixelInfo:
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str


# ------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------
def decode_dicom(source: str | os.PathLike | bytes, config: NormalizeConfig = NormalizeConfig(),
                 expect_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode ``source`` (a path or the file's bytes) to a normalised image; raises :class:`ImageReject`.

    A missing or unreadable path raises the usual ``OSError``: that is not a property of the image.
    Any other failure on a malformed file (odd header values, say) becomes a ``decode_error``.

    Decode or reject, never guess (header arithmetic, before any pixel is decoded): the Pixel Data
    length must be Rows x Columns x samples x frames x bytes per sample (one pad byte allowed), and a
    codestream's own size (JPEG 2000 SIZ, JPEG SOF, RLE segments) the header's, else
    ``pixel_size_mismatch``; ``expect_size`` (rows, columns), e.g. the metadata CSV's, must be the
    header's, else ``metadata_mismatch``; a JPEG 2000 / JPEG codestream with a marker code inside its
    entropy-coded data or tile-part lengths that do not add up is ``corrupt_data`` (the decoders
    installed report nothing for such data: OpenJPEG and libjpeg decode garbage without a word);
    encapsulated pixel data without a Transfer Syntax UID is ``unknown_transfer_syntax``.
    """
    return _decode_or_reject(_decode, source, config, "", expect_size)


def _decode_or_reject(decode, source, config: NormalizeConfig, what: str,
                      expect_size: tuple[int, int] | None = None) -> DecodedImage:
    """``decode(buffer, config, expect_size)``; any failure but an :class:`ImageReject` or a lack of
    memory becomes a ``decode_error`` reject (the file is rejected, the batch goes on)."""
    with _buffer(source) as buf:
        try:
            return decode(buf, config, expect_size)
        except (ImageReject, MemoryError):
            raise
        except Exception as exc:
            raise ImageReject("decode_error", f"{what}{type(exc).__name__}: {exc}") from exc


def decode_jpeg(source: str | os.PathLike | bytes, config: NormalizeConfig = NormalizeConfig(),
                expect_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode an 8-bit JPEG file (MIMIC-CXR-JPG) to a normalised image; raises :class:`ImageReject`.

    The JPEG's gray levels are display values (bright = dense) and are kept as they are
    (``window_source`` "identity"): 8-bit output is the resized image rounded, 16-bit output the
    same scale times 257. RGB / YCbCr files become gray (libjpeg's luma: the Y channel), an EXIF
    Orientation is applied to the output, CMYK is rejected. With ``config.reduced_decode`` (and at
    least ``_REDUCE_MIN_PIXELS`` pixels) libjpeg decodes at 1/2, 1/4 or 1/8 size, the smallest scale
    still >= the target (``decode_scale``), then the same resize as the full path gives the target
    size (``reduced_decode=False``: the full decode, then :func:`_shrink`, as for a DICOM).
    ``original_rows`` / ``original_columns``: the JPEG's full stored size (before any EXIF rotation);
    ``transfer_syntax`` "JPEG (MIMIC-CXR-JPG)", ``transfer_syntax_uid`` "", "MONOCHROME2", 8 bits.

    Reasons: ``truncated`` (empty, or cut before the image data or before its end), ``not_jpeg`` (no
    JPEG start-of-image marker), ``unsupported_pixels`` (CMYK or other layouts), ``corrupt_data`` (a
    marker code inside the entropy-coded data: libjpeg would resynchronise past it and decode garbage
    silently), ``metadata_mismatch`` (the JPEG's size is not ``expect_size``, the metadata CSV's
    rows and columns), ``decode_error``. Corrupt entropy data without a stray marker code is not
    detected (no decoder can). A missing or unreadable path raises the usual ``OSError``.
    """
    return _decode_or_reject(_decode_jpeg, source, config, "JPEG: ", expect_size)


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


def target_size(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    """(rows, columns) after scaling the long side to ``long_side``; never upscales."""
    longest = max(rows, columns)
    if longest <= long_side:
        return rows, columns
    scale = long_side / longest
    if rows >= columns:
        return long_side, max(1, round(columns * scale))
    return max(1, round(rows * scale)), long_side


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
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


def _decode(buf, config: NormalizeConfig, expect_size: tuple[int, int] | None = None) -> DecodedImage:
    if len(buf) == 0:
        raise ImageReject("truncated", "empty file")
    ds = _parse(buf)
    syntax = _transfer_syntax(ds)
    if "PixelData" not in ds:
        _reject_missing_pixels(ds, buf, syntax)
    _check_syntax_told(ds, buf)
    _check_decodable(syntax)
    info = _pixel_info(ds)
    _check_expected_size(info.rows, info.columns, expect_size, "DICOM header")
    frame = _check_pixel_size(ds, buf, syntax, info)  # the complete first frame of compressed data
    size = target_size(info.rows, info.columns, config.long_side)

    reduced = _reduced_j2k(ds, syntax, info, size, frame) if config.reduced_decode else None
    if reduced is not None:  # a JPEG 2000 resolution level, resized; None: anything unusual
        small, scale = reduced
    else:
        scale = 1
        stored, bits_to_enforce = _stored_pixels(ds, buf, syntax, info, frame)
        if ds.get("ModalityLUTSequence"):
            if bits_to_enforce:
                stored, bits_to_enforce = _valid_bits(stored, bits_to_enforce), None
            stored = _apply_lut_table(stored, ds.ModalityLUTSequence[0], syntax, info.signed)
        small = _shrink(stored, size, bits_to_enforce)
        del stored  # may be a view on the file's memory map
    _rescale(small, ds)
    unit, window_source = _display_range(small, ds, syntax, info)
    pixels = _quantise(unit, config.out_bits)
    if config.pad_square:
        pixels = _pad_square(pixels, config.long_side)
    return DecodedImage(
        pixels=pixels, transfer_syntax=syntax.name, transfer_syntax_uid=str(syntax),
        photometric=info.photometric, bits_stored=info.bits_stored, original_rows=info.rows,
        original_columns=info.columns, window_source=window_source, decode_scale=scale,
    )


def _parse(buf) -> Dataset:
    """Parse the header; large values (the pixel data) stay unread and are mapped later."""
    fp = buf if isinstance(buf, mmap.mmap) else io.BytesIO(buf)
    try:
        return pydicom.dcmread(fp, defer_size=_DEFER_BYTES)
    except InvalidDicomError:
        pass  # no DICM preamble: try it as a bare dataset below
    except Exception as exc:  # a valid preamble, then the parse ran off the data
        raise ImageReject("truncated", f"DICOM parse failed ({type(exc).__name__}: {exc}); file cut short?") from exc
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, defer_size=_DEFER_BYTES, force=True)
        looks_like_image = "PixelData" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:
        looks_like_image = False
    if not looks_like_image:
        raise ImageReject("not_dicom", "no DICM preamble and not a parseable DICOM dataset")
    return ds


def _reject_missing_pixels(ds: Dataset, buf, syntax: UID) -> None:
    """No Pixel Data element: a cut-off encapsulated value (pydicom drops it at EOF), or none."""
    tag = b"\x7f\xe0\x00\x10" if syntax == ExplicitVRBigEndian else b"\xe0\x7f\x10\x00"
    if syntax != DeflatedExplicitVRLittleEndian and buf.rfind(tag) >= 0:
        raise ImageReject("truncated", "the Pixel Data element starts but the file ends before it does")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise ImageReject("unsupported_pixels", "float pixel data is not supported")
    if syntax != DeflatedExplicitVRLittleEndian:
        cut = _element_cut_short(buf, syntax)
        if cut:
            raise ImageReject("truncated", f"the file ends inside its header ({cut}), before any pixel data")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReject("truncated", "no Pixel Data element, and the header ends before the image's Rows and "
                                       "Columns: a file cut short (or not an image)")
    raise ImageReject("no_pixel_data", "the dataset has no Pixel Data element")


def _element_cut_short(buf, syntax: UID) -> str | None:
    """The element the file ends inside (its declared length runs past the end of the file), or
    None when every element of the dataset is whole. Reads element headers only."""
    from pydicom.filereader import data_element_generator

    start = 0
    if bytes(buf[128:132]) == b"DICM" and len(buf) >= 144:  # after the file meta group (its length in (0002,0000))
        start = 144 + int.from_bytes(bytes(buf[140:144]), "little")
    fp = io.BytesIO(bytes(buf))
    fp.seek(start)
    try:
        for raw in data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=1):
            if raw.length != 0xFFFFFFFF and raw.value_tell + raw.length > len(buf):
                return f"element {raw.tag} declares {raw.length} bytes, {len(buf) - raw.value_tell} are there"
    except EOFError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - a header pydicom cannot walk: not evidence of a cut
        return None
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid).strip("\x00 "))
    implicit, little = ds.original_encoding  # a bare dataset: the encoding pydicom found
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_decodable(syntax: UID) -> None:
    if syntax in _DIRECT_SYNTAXES:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReject("unsupported_transfer_syntax",
                          f"no pixel data decoder for transfer syntax {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        raise ImageReject("unsupported_transfer_syntax",
                          f"transfer syntax {syntax.name} ({syntax}) needs one of: "
                          + "; ".join(decoder.missing_dependencies))


def _pixel_info(ds: Dataset) -> _PixelInfo:
    try:
        info = _PixelInfo(
            rows=int(ds.Rows), columns=int(ds.Columns), bits_allocated=int(ds.BitsAllocated),
            bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
            signed=int(ds.get("PixelRepresentation") or 0) == 1,
            photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReject("unsupported_pixels", f"incomplete Image Pixel module ({exc})") from None
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = int(ds.get("NumberOfFrames") or 1)
    if samples != 1 or info.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReject("unsupported_pixels",
                          f"not grayscale: {samples} samples/pixel, photometric {info.photometric!r}")
    if frames != 1:
        raise ImageReject("unsupported_pixels", f"multi-frame image ({frames} frames)")
    if info.bits_allocated not in (8, 16) or not 1 <= info.bits_stored <= info.bits_allocated:
        raise ImageReject("unsupported_pixels",
                          f"BitsAllocated {info.bits_allocated} / BitsStored {info.bits_stored} not supported")
    if info.rows < 1 or info.columns < 1:
        raise ImageReject("unsupported_pixels", f"empty image ({info.rows}x{info.columns})")
    return info


# ------------------------------------------------------------------------------------------
# decode or reject, never guess: sizes and structure from the headers, before any decoding
# ------------------------------------------------------------------------------------------
_UNDEFINED_LENGTH = 0xFFFFFFFF
_J2K_FAMILY = frozenset(UID(f"1.2.840.10008.1.2.4.{n}") for n in (90, 91, 92, 93, 201, 202, 203))
_JPEG_FAMILY = frozenset(UID(f"1.2.840.10008.1.2.4.{n}") for n in (50, 51, 57, 70, 80, 81))
_JPEG_LS = frozenset({UID("1.2.840.10008.1.2.4.80"), UID("1.2.840.10008.1.2.4.81")})
#: in a J2K tile-part's data (packet headers and code-block bytes) a 0xFF byte is never followed by
#: 0x90 or more (bit stuffing; ISO/IEC 15444-1 Annex A/B/C), except SOP / EPH markers when COD allows them
_J2K_MARKER_IN_DATA = re.compile(rb"\xff[\x90-\xff]")
_J2K_MARKER_IN_DATA_SOP_EPH = re.compile(rb"\xff[\x90\x93-\xff]")
#: the end of a JPEG scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00 nor RSTn
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_JPEG_LS_SCAN_END = re.compile(rb"\xff[\x80-\xff]")  # JPEG-LS stuffs a 0 bit: data bytes after 0xFF are < 0x80
#: markers that may follow a scan's data: EOI, DHT, SOS, DQT, DNL, DRI, DHP, EXP, COM, LSE, APPn
_JPEG_AFTER_SCAN = frozenset({0xD9, 0xC4, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, 0xF8, *range(0xE0, 0xF0)})
#: JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15; JPEG-LS SOF55)
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def _check_expected_size(rows: int, columns: int, expect: tuple[int, int] | None, what: str) -> None:
    """``expect`` (rows, columns: the metadata CSV's) against the file's own; a difference rejects."""
    if expect is None:
        return
    want_rows, want_columns = expect
    if (rows, columns) != (want_rows, want_columns):
        swapped = " (swapped)" if (rows, columns) == (want_columns, want_rows) else ""
        raise ImageReject("metadata_mismatch", f"the {what} says Rows x Columns {rows}x{columns}, the metadata CSV "
                                               f"{want_rows}x{want_columns}{swapped}")


def _check_syntax_told(ds: Dataset, buf) -> None:
    """Encapsulated (undefined-length) pixel data without a Transfer Syntax UID: which codec wrote
    it is not told, so it is not decoded (a native bare dataset's encoding is what pydicom parsed)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = getattr(elem, "length", None)
    if length != _UNDEFINED_LENGTH and not getattr(elem, "is_undefined_length", False):
        return
    head = b""
    if isinstance(elem, RawDataElement) and elem.value is None:
        head = bytes(buf[elem.value_tell: elem.value_tell + 64])
    elif isinstance(elem, RawDataElement):
        head = bytes(elem.value[:64])
    looks = next((name for magic, name in ((_J2K_SOC_SIZ, "a JPEG 2000 codestream"), (b"\xff\xd8\xff", "a JPEG stream"))
                  if head.find(magic) >= 0), "data of an unknown codec")
    raise ImageReject("unknown_transfer_syntax",
                      f"no Transfer Syntax UID in the file meta, and the pixel data is encapsulated (compressed; its "
                      f"first fragment looks like {looks}): which syntax it is is not told")


def _check_pixel_size(ds: Dataset, buf, syntax: UID, info: _PixelInfo) -> bytes | None:
    """The Pixel Data's size against the header (header arithmetic, no decoding; rejects on a
    difference); returns the complete first frame of encapsulated data (None: native, or cut)."""
    expected = info.rows * info.columns * (info.bits_allocated // 8)  # one sample, one frame (_pixel_info)
    if not syntax.is_encapsulated:
        _check_native_length(ds, buf, syntax, info, expected)
        return None
    frame = _encapsulated_frame(ds, buf, syntax)
    if frame is None:
        return None
    if syntax in _J2K_FAMILY:
        _check_j2k(frame, syntax, info)
    elif syntax in _JPEG_FAMILY:
        _check_jpeg_frame(frame, syntax, info)
    elif syntax == RLELossless and len(frame) >= 64:
        segments = struct.unpack_from("<I", frame)[0]
        if segments != info.bits_allocated // 8:
            raise ImageReject("pixel_size_mismatch", f"the RLE header has {segments} segment(s), the header's one "
                                                     f"sample of {info.bits_allocated} bits needs {info.bits_allocated // 8}")
    return frame


def _check_native_length(ds: Dataset, buf, syntax: UID, info: _PixelInfo, expected: int) -> None:
    """Native pixel data: its declared length is Rows x Columns x bytes (+1 pad byte when odd);
    a file that ends before its declared length is ``truncated``."""
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(elem, RawDataElement) and elem.length != _UNDEFINED_LENGTH:
        declared = elem.length
        if elem.value is None and syntax != DeflatedExplicitVRLittleEndian:
            available = max(0, min(declared, len(buf) - elem.value_tell))
        else:
            available = len(elem.value) if elem.value is not None else len(ds.PixelData or b"")
    else:
        declared = available = len(ds.PixelData or b"")
    shape = f"{info.rows} rows x {info.columns} columns x 1 sample x 1 frame x {info.bits_allocated // 8} byte(s)"
    if declared not in (expected, expected + (expected & 1)):
        raise ImageReject("pixel_size_mismatch", f"the Pixel Data is {declared} bytes, the header's {shape} "
                                                 f"= {expected} bytes")
    if available < expected:
        raise ImageReject("truncated", f"pixel data has {available} bytes, {shape} = {expected} expected "
                                       "(the file ends before its Pixel Data does)")


def _size_mismatch(what: str, found: tuple, info: _PixelInfo) -> ImageReject:
    rows, columns, components, precision = found
    return ImageReject("pixel_size_mismatch",
                       f"the {what} is {rows} rows x {columns} columns x {components} component(s) of {precision} bits, "
                       f"the header says {info.rows} x {info.columns} x 1 of at most {info.bits_allocated} bits")


def _check_j2k(frame: bytes, syntax: UID, info: _PixelInfo) -> None:
    start = frame.find(_J2K_SOC_SIZ, 0, 4096)  # 0, or inside a (non-conformant) JP2 wrapper
    if start < 0 or len(frame) < start + 42:
        return  # no codestream header to compare: the decoder says what it is
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, start + 8)
    components = struct.unpack_from(">H", frame, start + 40)[0]
    precision = (frame[start + 42] & 0x7F) + 1 if len(frame) > start + 42 else 0
    found = (ysiz - yosiz, xsiz - xosiz, components, precision)
    if found[:3] != (info.rows, info.columns, 1) or precision > info.bits_allocated:
        raise _size_mismatch("JPEG 2000 codestream (SIZ)", found, info)
    if syntax in _J2K_SYNTAXES and start == 0 and _j2k_codestream(frame) is not None:
        problem = _j2k_structure(frame)
        if problem:
            raise ImageReject("corrupt_data", f"{syntax.name}: {problem}")


def _check_jpeg_frame(frame: bytes, syntax: UID, info: _PixelInfo) -> None:
    found = _jpeg_sof(frame)
    if found is not None and ((found[0] and found[0] != info.rows) or found[1:3] != (info.columns, 1)
                              or found[3] > info.bits_allocated):
        raise _size_mismatch("JPEG frame header (SOF)", found, info)
    problem = _jpeg_structure(frame)
    if problem:
        raise ImageReject("corrupt_data", f"{syntax.name}: {problem}")


def _jpeg_sof(data) -> tuple[int, int, int, int] | None:
    """(lines, samples per line, components, precision) of a JPEG stream's SOF; None if not found."""
    pos, end = 2, min(len(data), 1 << 20)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _JPEG_SOF:
            if pos + 10 > len(data):
                return None
            precision, lines, samples, components = struct.unpack_from(">BHHB", data, pos + 4)
            return lines, samples, components, precision
        if marker == 0xDA:
            return None
        pos += 2 + length
    return None


def _jpeg_structure(data) -> str | None:
    """What is wrong with a JPEG stream's marker structure, or None: each scan's entropy-coded data
    must end at a marker that may follow a scan (EOI, DHT, SOS, ...), never at a stray marker code
    (libjpeg warns "Corrupt JPEG data" on stderr and decodes garbage). A stream cut short is left to
    the decoder (None)."""
    end = len(data)
    pos, ls, scans = 2, False, 0
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return f"no marker where one must start (byte {pos})"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > end:
            return None
        if marker == 0xF7:
            ls = True
        segment_end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker != 0xDA:
            pos = segment_end
            continue
        scans += 1
        pattern = _JPEG_LS_SCAN_END if ls else _JPEG_SCAN_END
        search = segment_end
        while True:
            found = pattern.search(data, search)
            if found is None:
                return None  # the stream ends inside the scan: cut short, the decoder's to say
            pos = found.start()
            while pos + 1 < end and data[pos + 1] == 0xFF:
                pos += 1
            if pos + 1 >= end:
                return None
            following = data[pos + 1]
            if ls and 0xD0 <= following <= 0xD7:  # JPEG-LS restart marker
                search = pos + 2
                continue
            break
        if following not in _JPEG_AFTER_SCAN:
            return f"marker code FF{following:02X} inside the entropy-coded data of scan {scans} (byte {pos})"
    return None


def _j2k_structure(codestream: bytes) -> str | None:
    """What is wrong with a complete J2K codestream's tile-part structure, or None: the tile-parts
    (SOT, Psot bytes each) must run from the main header to the EOC, and their data (packet headers
    and code-block bytes, bit-stuffed) must hold no marker code 0xFF90-0xFFFF but the SOP / EPH
    markers COD allows. OpenJPEG decodes a codestream with garbage in its code-block data without
    a word; garbage that forms such a code (a 2 KB stretch does with probability ~97 %) is caught.
    High-throughput code-blocks (HTJ2K) are not scanned."""
    end = len(codestream) - (2 if codestream.endswith(b"\xff\xd9") else 3)  # the EOC's position
    pos, sop_eph, ht = 2, False, False
    while True:  # main header: SIZ, COD, QCD, ... up to the first SOT
        if pos + 4 > end:
            return "the main header runs into the end of the codestream"
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker == 0xFF90:
            break
        if marker >> 8 != 0xFF or length < 2:
            return f"no marker segment where the main header goes on (byte {pos})"
        if marker == 0xFF52 and pos + 13 <= end:  # COD: Scod (SOP / EPH flags), ..., code-block style
            sop_eph |= bool(codestream[pos + 4] & 0x06)
            ht |= bool(codestream[pos + 12] & 0x40)
        pos += 2 + length
    while pos < end:
        if codestream[pos: pos + 2] != b"\xff\x90" or pos + 12 > end:
            return f"no tile-part (SOT) where the previous one ends (byte {pos})"
        lsot, tile, psot = struct.unpack_from(">HHI", codestream, pos + 2)
        part_end = pos + psot if psot else end
        if psot and (psot < 14 or part_end > end):
            return f"tile-part of tile {tile} at byte {pos} says {psot} bytes, {end - pos} are left before the EOC"
        header = pos + 2 + lsot
        while True:  # the tile-part header, up to SOD
            if header + 2 > part_end:
                return f"tile-part of tile {tile} at byte {pos} has no SOD"
            marker = struct.unpack_from(">H", codestream, header)[0]
            if marker == 0xFF93:
                break
            if marker >> 8 != 0xFF or header + 4 > part_end:
                return f"no marker segment in the tile-part header of tile {tile} (byte {header})"
            if marker == 0xFF52 and header + 13 <= part_end:
                sop_eph |= bool(codestream[header + 4] & 0x06)
                ht |= bool(codestream[header + 12] & 0x40)
            header += 2 + struct.unpack_from(">H", codestream, header + 2)[0]
        if not ht:
            found = (_J2K_MARKER_IN_DATA_SOP_EPH if sop_eph else _J2K_MARKER_IN_DATA).search(
                codestream, header + 2, part_end)
            if found is not None:
                code = codestream[found.start() + 1]
                return (f"marker code FF{code:02X} inside the data of tile {tile} (byte {found.start()} of "
                        f"{len(codestream)}): the entropy-coded data is corrupt")
        pos = part_end
    return None


# ------------------------------------------------------------------------------------------
# stored pixels
# ------------------------------------------------------------------------------------------
def _stored_pixels(ds: Dataset, buf, syntax: UID, info: _PixelInfo,
                   frame: bytes | None = None) -> tuple[np.ndarray, int | None]:
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
    dtype = np.dtype(f"{'>' if syntax == ExplicitVRBigEndian else '<'}{'i' if info.signed else 'u'}"
                     f"{info.bits_allocated // 8}")
    data, offset, available = _pixel_buffer(ds, buf, syntax)
    if available < count * dtype.itemsize:
        raise ImageReject("truncated", f"pixel data has {available} bytes, {info.rows}x{info.columns}x"
                                       f"{dtype.itemsize} = {count * dtype.itemsize} expected")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(info.rows, info.columns)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _pixel_buffer(ds: Dataset, buf, syntax: UID) -> tuple[object, int, int]:
    """(buffer, offset, bytes available) of the Pixel Data value."""
    elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    deferred = isinstance(elem, RawDataElement) and elem.value is None
    if deferred and syntax != DeflatedExplicitVRLittleEndian:  # offsets of a deflated file are inflated ones
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
            segment = decode(frame[offsets[index]: offsets[index + 1]])
        except Exception as exc:
            raise ImageReject("decode_error", f"RLE Lossless segment {index}: {type(exc).__name__}: {exc}") from exc
        if len(segment) not in (expected, expected + 1):  # one pad byte allowed
            raise ImageReject("pixel_size_mismatch",
                              f"RLE segment {index} decodes to {len(segment)} bytes, the header's {info.rows} rows x "
                              f"{info.columns} columns = {expected}")
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
        cut = syntax.is_encapsulated and bytes(buf[-len(_SEQUENCE_DELIMITER):]) != _SEQUENCE_DELIMITER
        if cut or "less than expected" in str(exc):
            raise ImageReject("truncated", f"{syntax.name} pixel data incomplete ({exc})") from exc
        raise ImageReject("decode_error", f"{syntax.name}: {type(exc).__name__}: {exc}") from exc
    if arr.shape != (info.rows, info.columns) or arr.dtype.kind not in "ui":
        raise ImageReject("unsupported_pixels",
                          f"decoder returned {arr.dtype} {arr.shape}, expected {(info.rows, info.columns)}")
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


# ------------------------------------------------------------------------------------------
# decoding no more than needed: JPEG files, JPEG 2000 DICOMs at a reduced resolution
# ------------------------------------------------------------------------------------------
def _decode_jpeg(buf, config: NormalizeConfig, expect_size: tuple[int, int] | None = None) -> DecodedImage:
    if len(buf) == 0:
        raise ImageReject("truncated", "empty file")
    if bytes(buf[:3]) != _JPEG_SOI:
        raise ImageReject("not_jpeg", f"no JPEG start-of-image marker (the file starts {bytes(buf[:8])!r})")
    problem = _jpeg_structure(buf)
    if problem:
        raise ImageReject("corrupt_data", f"JPEG: {problem}")
    try:
        image = Image.open(io.BytesIO(buf), formats=("JPEG",))
    except (UnidentifiedImageError, OSError) as exc:  # Pillow: not identified, or "Truncated File Read"
        raise _jpeg_failure(buf, exc, "header unreadable") from exc
    with image:
        columns, rows = image.size
        if rows < 1 or columns < 1:
            raise ImageReject("unsupported_pixels", f"empty image ({rows}x{columns})")
        _check_expected_size(rows, columns, expect_size, "JPEG")
        if image.mode not in ("L", "RGB"):
            raise ImageReject("unsupported_pixels", f"{image.mode} JPEG: only grayscale and RGB/YCbCr are handled")
        orientation = _exif_orientation(image)
        size = target_size(rows, columns, config.long_side)
        reduce = config.reduced_decode and rows * columns >= _REDUCE_MIN_PIXELS
        # libjpeg decodes to gray (from YCbCr: the Y channel) and, given a size, at the largest scale
        # 1/s (s = 8, 4, 2) with rows // s and columns // s still >= the target's
        image.draft("L", (size[1], size[0]) if reduce else None)
        scale = image.decoderconfig[0] if image.decoderconfig else 1
        try:
            image.load()
        except OSError as exc:  # e.g. "image file is truncated", "broken data stream ..."
            raise _jpeg_failure(buf, exc, "image data") from exc
        if image.mode != "L":  # a file draft could not set up (not a single-tile JPEG)
            image = image.convert("L")
        pixels = np.asarray(image)
    expected = (-(-rows // scale), -(-columns // scale))
    if pixels.shape != expected:
        raise ImageReject("decode_error", f"JPEG decoded to {pixels.shape} at 1/{scale}, expected {expected}")
    if scale > 1:  # DCT scaling: output pixel j stands for the block [j * s, (j + 1) * s)
        small = _reduced_resize(pixels, scale, 0.0, (rows, columns), size)
    else:
        small = _shrink(pixels, size)
    small *= np.float32(1.0 / 255.0)
    np.clip(small, 0.0, 1.0, out=small)
    out = _orient(_quantise(small, config.out_bits), orientation)
    if config.pad_square:
        out = _pad_square(out, config.long_side)
    return DecodedImage(
        pixels=out, transfer_syntax=_JPEG_SYNTAX_NAME, transfer_syntax_uid="", photometric="MONOCHROME2",
        bits_stored=8, original_rows=rows, original_columns=columns, window_source="identity",
        decode_scale=scale,
    )


def _jpeg_failure(buf, exc: Exception, what: str) -> ImageReject:
    """Pillow's error on a file that starts like a JPEG, as a reject: ``truncated`` when the file has
    no start-of-scan marker (it ends within the header) or Pillow says it is cut, else ``decode_error``."""
    detail = ("Pillow found no JPEG header it can read" if isinstance(exc, UnidentifiedImageError)
              else f"{type(exc).__name__}: {exc}")  # (the former names the BytesIO object)
    if buf.find(b"\xff\xda") < 0:
        return ImageReject("truncated", f"the JPEG ends before its image data starts ({detail})")
    if "truncated" in detail.lower():
        return ImageReject("truncated", f"the JPEG ends before its image data does ({detail})")
    return ImageReject("decode_error", f"JPEG {what}: {detail}")


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8; 1 when absent or unreadable: a bad EXIF block rejects nothing)."""
    try:
        value = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` as displayed under EXIF ``orientation`` (what Pillow's ``exif_transpose`` does)."""
    if orientation == 1:
        return pixels
    turned = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.T, 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1),
    }[orientation](pixels)
    return np.ascontiguousarray(turned)


def _reduced_j2k(ds: Dataset, syntax: UID, info: _PixelInfo, size: tuple[int, int],
                 frame: bytes | None) -> tuple[np.ndarray, int] | None:
    """A JPEG 2000 DICOM decoded at resolution level r and area-resampled to ``size`` (float32, stored
    units, as :func:`_shrink` gives), and 2**r. None: the full decode is the way (not JPEG 2000, small,
    r would be 0, or anything unusual); the full path then decodes the file or rejects it with its
    reason, so nothing here rejects. ``frame``: the complete first frame (:func:`_check_pixel_size`).
    """
    if (syntax not in _J2K_SYNTAXES or info.rows * info.columns < _REDUCE_MIN_PIXELS or info.signed
            or (info.rows >> 1) < size[0] or (info.columns >> 1) < size[1]
            or ds.get("ModalityLUTSequence") or int(ds.get("NumberOfFrames") or 1) != 1 or not _pillow_j2k()):
        return None
    try:
        codestream = _j2k_codestream(frame)
        header = _j2k_header(codestream) if codestream is not None else None
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


def _encapsulated_frame(ds: Dataset, buf, syntax: UID) -> bytes | None:
    """The first frame of encapsulated pixel data (its fragments joined); None when the file ends
    inside the encapsulated value (or its items do not parse): the decoders then say why."""
    try:
        data, offset, available = _pixel_buffer(ds, buf, syntax)
        with memoryview(data) as view:
            value = bytes(view[offset: offset + available])
        if data is buf and value.rfind(_SEQUENCE_DELIMITER) < 0:
            return None  # the file ends inside the encapsulated pixel data
        return next(generate_frames(value, number_of_frames=1))
    except (ImageReject, MemoryError):
        raise
    except Exception:
        return None


def _j2k_codestream(frame: bytes | None) -> bytes | None:
    """``frame`` when it is one complete J2K codestream (SOC SIZ ... EOC), else None."""
    if frame is None or not frame.startswith(_J2K_SOC_SIZ) or not (
            frame.endswith(b"\xff\xd9") or frame.endswith(b"\xff\xd9\x00")):
        return None  # a JP2 wrapper, or a cut / odd codestream
    return frame


def _j2k_header(codestream: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, precision, decomposition levels) from the main header's SIZ and COD / COC
    segments; None for what the reduced path does not handle: several components, image offsets,
    subsampling, signed samples, a precision above 16."""
    (lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto, components) = struct.unpack_from(
        ">HHIIIIIIIIH", codestream, 4)
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
        codec, _reduce, layers, fd, length = tile.args
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


def _reduced_resize(reduced: np.ndarray, step: int, offset: float, full_shape: tuple[int, int],
                    size: tuple[int, int]) -> np.ndarray:
    """Resample an image decoded at 1/``step`` size to ``size`` (float32) as :func:`_shrink` resamples
    the full-size image: the k x k block means (k = the factor ``_shrink`` picks; trailing partial
    blocks dropped), then the exact area resample of those to ``size``. Reduced pixel j stands for
    full-size pixels [j*step - offset, (j+1)*step - offset); a block mean is the area mean of the
    reduced pixels over the block. Both steps are one sparse product per axis."""
    rows, columns = size
    factor = max(1, min(full_shape[0] // rows, full_shape[1] // columns))
    image = reduced.astype(np.float32)
    tall = _reduced_weights(image.shape[0], rows, step, offset, full_shape[0], factor) @ image
    return np.ascontiguousarray((_reduced_weights(image.shape[1], columns, step, offset, full_shape[1], factor)
                                 @ tall.T).T)


@functools.lru_cache(maxsize=64)
def _reduced_weights(size_in: int, size_out: int, step: int, offset: float, full_size: int,
                     factor: int) -> sparse.csr_matrix:
    """(size_out x size_in) float32 weights of :func:`_reduced_resize` along one axis."""
    blocks = full_size // factor
    to_blocks = _footprint_weights(size_in, blocks, step, offset, blocks * factor)
    if blocks == size_out:
        return to_blocks
    return sparse.csr_matrix(_area_weights(blocks, size_out) @ to_blocks, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _footprint_weights(size_in: int, size_out: int, step: int, offset: float, extent: int) -> sparse.csr_matrix:
    """(size_out x size_in) float32: output i averages full-size [i*s, (i+1)*s), s = extent / size_out,
    input j covering full-size [j*step - offset, (j+1)*step - offset). Rows sum to 1 (at the edges,
    where the inputs cover only part of a footprint, the part they cover)."""
    scale = extent / size_out
    low = np.arange(size_out) * scale
    inputs = np.floor((low + offset) / step).astype(np.int64)[:, None] + np.arange(math.ceil(scale / step) + 2)
    start = np.maximum(low[:, None], inputs * step - offset)
    stop = np.minimum(low[:, None] + scale, (inputs + 1) * step - offset)
    overlap = np.where((inputs >= 0) & (inputs < size_in), np.clip(stop - start, 0.0, None), 0.0)
    keep = overlap > 1e-9
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    outputs = np.broadcast_to(np.arange(size_out)[:, None], inputs.shape)
    return sparse.csr_matrix((weights[keep].astype(np.float32), (outputs[keep], inputs[keep])),
                             shape=(size_out, size_in))


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------
def _shrink(stored: np.ndarray, size: tuple[int, int], bits_stored: int | None = None, *,
            enforce_bits: bool = True) -> np.ndarray:
    """Area-resample ``stored`` to ``size`` (rows, columns) as float32 in stored units.

    An integer block mean (factor k = the largest that keeps both sides >= target) does the bulk
    at memory speed; an exact area resample of the at most 2x larger result gives the exact size.
    ``bits_stored``: the values' BitsStored, enforced on the way (:func:`_valid_bits`) unless
    ``enforce_bits`` is false (then it only promises that the values fit).
    """
    rows, columns = size
    factor = min(stored.shape[0] // rows, stored.shape[1] // columns)
    enforce = bits_stored if enforce_bits else None
    if factor > 1:
        small = _block_sum(stored, factor, bits_stored, enforce).astype(np.float32)
        small *= np.float32(1.0 / (factor * factor))
    else:
        small = (_valid_bits(stored, enforce) if enforce else stored).astype(np.float32)
    if small.shape != (rows, columns):
        small = _area_resize(small, rows, columns)
    return small


def _area_resize(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Exact area averaging (each output pixel is the mean over its footprint), as two sparse
    products; faster than PIL's BOX filter (BENCHMARKS.md), which weights whole input pixels."""
    tall = _area_weights(image.shape[0], rows) @ image
    return np.ascontiguousarray((_area_weights(image.shape[1], columns) @ tall.T).T)


@functools.lru_cache(maxsize=64)
def _area_weights(size_in: int, size_out: int) -> sparse.csr_matrix:
    """(size_out x size_in) float32 matrix: output i averages input [i*s, (i+1)*s), s = in/out."""
    scale = size_in / size_out
    low = np.arange(size_out) * scale
    inputs = np.floor(low).astype(np.int64)[:, None] + np.arange(math.ceil(scale) + 1)
    overlap = np.minimum(low[:, None] + scale, inputs + 1) - np.maximum(low[:, None], inputs)
    keep = (overlap > 1e-9) & (inputs < size_in)
    outputs = np.broadcast_to(np.arange(size_out)[:, None], inputs.shape)
    weights = (overlap[keep] / scale).astype(np.float32)
    return sparse.csr_matrix((weights, (outputs[keep], inputs[keep])), shape=(size_out, size_in))


def _block_sum(arr: np.ndarray, k: int, bits_stored: int | None = None, enforce: int | None = None) -> np.ndarray:
    """Integer sums of k x k blocks (trailing partial blocks dropped).

    Works in bands of ``_BAND_ROWS`` output rows, so each band's k*_BAND_ROWS input rows are read
    from memory once and stay in cache for the BitsStored check and the k row adds, then the k
    strided column adds. Row sums stay uint16 when they cannot overflow (half the traffic).
    """
    rows, columns = arr.shape[0] // k, arr.shape[1] // k
    bound = _value_bound(arr.dtype, bits_stored)
    if arr.dtype.kind == "u":
        row_dtype = np.uint16 if k * bound <= 0xFFFF else np.uint32
        col_dtype = np.uint32 if k * k * bound <= 0xFFFFFFFF else np.uint64
    else:
        row_dtype = col_dtype = np.int32 if k * k * bound < 1 << 31 else np.int64
    out = np.empty((rows, columns), dtype=col_dtype)
    scratch = np.empty((min(rows, _BAND_ROWS), columns * k), dtype=row_dtype)
    for top in range(0, rows, _BAND_ROWS):
        bottom = min(rows, top + _BAND_ROWS)
        band = arr[top * k: bottom * k]  # full rows: contiguous, so the check is a fast 1-D max
        if enforce:
            band = _valid_bits(band, enforce)
        band = band[:, : columns * k]
        part, dest = scratch[: bottom - top], out[top:bottom]
        np.add(band[0::k], band[1::k], out=part, dtype=row_dtype)
        for i in range(2, k):
            np.add(part, band[i::k], out=part, dtype=row_dtype)
        np.add(part[:, 0::k], part[:, 1::k], out=dest, dtype=col_dtype)
        for j in range(2, k):
            np.add(dest, part[:, j::k], out=dest, dtype=col_dtype)
    return out


def _pad_square(pixels: np.ndarray, side: int) -> np.ndarray:
    rows, columns = pixels.shape
    side = max(side, rows, columns)
    out = np.zeros((side, side), dtype=pixels.dtype)
    top, left = (side - rows) // 2, (side - columns) // 2
    out[top: top + rows, left: left + columns] = pixels
    return out


# ------------------------------------------------------------------------------------------
# intensities
# ------------------------------------------------------------------------------------------
def _rescale(small: np.ndarray, ds: Dataset) -> None:
    """Rescale Slope/Intercept, in place (skipped when a Modality LUT Sequence was applied)."""
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if ds.get("ModalityLUTSequence") or slope in (None, ""):
        return
    slope, intercept = float(slope), float(intercept or 0.0)
    if slope != 1.0:
        small *= np.float32(slope)
    if intercept != 0.0:
        small += np.float32(intercept)


def _display_range(small: np.ndarray, ds: Dataset, syntax: UID, info: _PixelInfo) -> tuple[np.ndarray, str]:
    """Values in [0, 1], bright = dense, and what set the range ("voi_lut", "window", "minmax")."""
    inverse = info.photometric == "MONOCHROME1"
    for source, apply in (("voi_lut", _voi_lut), ("window", _window)):
        unit = apply(small, ds, syntax, info)
        if unit is not None:
            if inverse:
                np.subtract(np.float32(1.0), unit, out=unit)
            return unit, source
    if inverse:  # negating is exact, so MONOCHROME1 min-max is the exact mirror of MONOCHROME2
        np.negative(small, out=small)
    return _minmax(small), "minmax"


def _voi_lut(small: np.ndarray, ds: Dataset, syntax: UID, info: _PixelInfo) -> np.ndarray | None:
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    first, table = _lut_table(sequence[0], syntax, info.signed)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return None
    index = np.rint(small).astype(np.int64)
    index -= first
    np.clip(index, 0, len(table) - 1, out=index)
    unit = table.astype(np.float32)[index]
    unit -= np.float32(low)
    unit *= np.float32(1.0 / (high - low))
    return unit


def _first_value(value) -> float:
    return float(value[0]) if isinstance(value, (list, tuple, MultiValue)) else float(value)


def _window(small: np.ndarray, ds: Dataset, syntax: UID, info: _PixelInfo) -> np.ndarray | None:
    """WindowCenter/Width (first pair) with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID."""
    try:
        center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None
    if function == "SIGMOID":
        unit = (small - np.float32(center)) * np.float32(-4.0 / width)
        with np.errstate(over="ignore"):
            np.exp(unit, out=unit)
        unit += np.float32(1.0)
        np.reciprocal(unit, out=unit)
        return unit
    if function == "LINEAR_EXACT":
        unit = (small - np.float32(center)) * np.float32(1.0 / width)
    elif width <= 1:  # LINEAR with width 1 is a threshold at center - 0.5
        return (small > np.float32(center - 0.5)).astype(np.float32)
    else:  # LINEAR (PS3.3 C.11.2.1.2.1), also the fallback for unknown functions
        unit = (small - np.float32(center - 0.5)) * np.float32(1.0 / (width - 1))
    unit += np.float32(0.5)
    np.clip(unit, 0.0, 1.0, out=unit)
    return unit


def _minmax(small: np.ndarray) -> np.ndarray:
    """Robust min-max: the 0.5 / 99.5 percentiles (of a regular sub-grid) map to 0 / 1."""
    step = max(1, math.ceil(math.sqrt(small.size / _MINMAX_SAMPLES)))
    sample = small[::step, ::step].ravel()
    low_rank = int(_MINMAX_PERCENTILE / 100 * (sample.size - 1))
    high_rank = sample.size - 1 - low_rank  # symmetric ranks: exact under negation
    ranked = np.partition(sample, (low_rank, high_rank))
    low, high = float(ranked[low_rank]), float(ranked[high_rank])
    if high <= low:
        return np.zeros(small.shape, dtype=np.float32)
    unit = small - np.float32(low)
    unit *= np.float32(1.0 / (high - low))
    np.clip(unit, 0.0, 1.0, out=unit)
    return unit


def _quantise(unit: np.ndarray, bits: int) -> np.ndarray:
    maxval = (1 << bits) - 1
    unit *= np.float32(maxval)
    unit += np.float32(0.5)
    return unit.astype(np.uint8 if bits == 8 else np.uint16)


# ------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------
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
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))

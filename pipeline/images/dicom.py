"""A DICOM file to a normalised image: the header parse, its transfer syntax and pixel description,
and :func:`decode_dicom`, which runs checks, stored pixels, shrink and intensities in that order."""

from __future__ import annotations

import io
import mmap
import os
from typing import BinaryIO, cast

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .checks import _check_expected_size, _check_pixel_size, _check_syntax_told
from .intensity import _display_range, _quantise, _rescale
from .j2k import _reduced_j2k
from .pixels import _DIRECT_SYNTAXES, _apply_lut_table, _stored_pixels, _valid_bits
from .reading import _decode_or_reject
from .resize import _pad_square, _shrink, target_size
from .types import DecodedImage, ImageReject, NormalizeConfig, _PixelInfo

#: values longer than this are left unread by pydicom (the pixel data is mapped instead)
_DEFER_BYTES = 1 << 20


def decode_dicom(
    source: str | os.PathLike | bytes,
    config: NormalizeConfig = NormalizeConfig(),
    expect_size: tuple[int, int] | None = None,
) -> DecodedImage:
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
        pixels=pixels,
        transfer_syntax=syntax.name,
        transfer_syntax_uid=str(syntax),
        photometric=info.photometric,
        bits_stored=info.bits_stored,
        original_rows=info.rows,
        original_columns=info.columns,
        window_source=window_source,
        decode_scale=scale,
    )


def _parse(buf) -> Dataset:
    """Parse the header; large values (the pixel data) stay unread and are mapped later."""
    # an mmap is a binary file (read, seek, tell) that typeshed does not call a BinaryIO
    fp = cast(BinaryIO, buf) if isinstance(buf, mmap.mmap) else io.BytesIO(buf)
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
        raise ImageReject(
            "truncated",
            "no Pixel Data element, and the header ends before the image's Rows and "
            "Columns: a file cut short (or not an image)",
        )
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
            if not isinstance(raw, RawDataElement):
                # an undefined-length sequence comes as a DataElement, which has no length: the
                # walk stops there, as it always has (an AttributeError, caught below, before)
                return None
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
        raise ImageReject(
            "unsupported_transfer_syntax", f"no pixel data decoder for transfer syntax {syntax.name} ({syntax})"
        ) from None
    if not decoder.is_available:
        raise ImageReject(
            "unsupported_transfer_syntax",
            f"transfer syntax {syntax.name} ({syntax}) needs one of: " + "; ".join(decoder.missing_dependencies),
        )


def _pixel_info(ds: Dataset) -> _PixelInfo:
    try:
        info = _PixelInfo(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            bits_allocated=int(ds.BitsAllocated),
            bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
            signed=int(ds.get("PixelRepresentation") or 0) == 1,
            photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReject("unsupported_pixels", f"incomplete Image Pixel module ({exc})") from None
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = int(ds.get("NumberOfFrames") or 1)
    if samples != 1 or info.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReject(
            "unsupported_pixels", f"not grayscale: {samples} samples/pixel, photometric {info.photometric!r}"
        )
    if frames != 1:
        raise ImageReject("unsupported_pixels", f"multi-frame image ({frames} frames)")
    if info.bits_allocated not in (8, 16) or not 1 <= info.bits_stored <= info.bits_allocated:
        raise ImageReject(
            "unsupported_pixels", f"BitsAllocated {info.bits_allocated} / BitsStored {info.bits_stored} not supported"
        )
    if info.rows < 1 or info.columns < 1:
        raise ImageReject("unsupported_pixels", f"empty image ({info.rows}x{info.columns})")
    return info

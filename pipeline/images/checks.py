"""Decode or reject, never guess: sizes and structure from the headers (Pixel Data length, JPEG 2000
SIZ and tile-parts, JPEG SOF and scans, RLE segments, the metadata's size), before any decoding."""

from __future__ import annotations

import re
import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, RLELossless

from .j2k import _J2K_SOC_SIZ, _J2K_SYNTAXES, _j2k_codestream
from .pixels import _PIXEL_DATA, _encapsulated_frame
from .types import ImageReject, _PixelInfo

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
        raise ImageReject(
            "metadata_mismatch",
            f"the {what} says Rows x Columns {rows}x{columns}, the metadata CSV {want_rows}x{want_columns}{swapped}",
        )


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
        head = bytes(buf[elem.value_tell : elem.value_tell + 64])
    elif isinstance(elem, RawDataElement):
        head = bytes(elem.value[:64])
    looks = next(
        (
            name
            for magic, name in ((_J2K_SOC_SIZ, "a JPEG 2000 codestream"), (b"\xff\xd8\xff", "a JPEG stream"))
            if head.find(magic) >= 0
        ),
        "data of an unknown codec",
    )
    raise ImageReject(
        "unknown_transfer_syntax",
        f"no Transfer Syntax UID in the file meta, and the pixel data is encapsulated (compressed; its "
        f"first fragment looks like {looks}): which syntax it is is not told",
    )


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
            raise ImageReject(
                "pixel_size_mismatch",
                f"the RLE header has {segments} segment(s), the header's one "
                f"sample of {info.bits_allocated} bits needs "
                f"{info.bits_allocated // 8}",
            )
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
        raise ImageReject(
            "pixel_size_mismatch", f"the Pixel Data is {declared} bytes, the header's {shape} = {expected} bytes"
        )
    if available < expected:
        raise ImageReject(
            "truncated",
            f"pixel data has {available} bytes, {shape} = {expected} expected "
            "(the file ends before its Pixel Data does)",
        )


def _size_mismatch(what: str, found: tuple, info: _PixelInfo) -> ImageReject:
    rows, columns, components, precision = found
    return ImageReject(
        "pixel_size_mismatch",
        f"the {what} is {rows} rows x {columns} columns x {components} component(s) of "
        f"{precision} bits, "
        f"the header says {info.rows} x {info.columns} x 1 of at most {info.bits_allocated} bits",
    )


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
    if found is not None and (
        (found[0] and found[0] != info.rows) or found[1:3] != (info.columns, 1) or found[3] > info.bits_allocated
    ):
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
        if codestream[pos : pos + 2] != b"\xff\x90" or pos + 12 > end:
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
                codestream, header + 2, part_end
            )
            if found is not None:
                code = codestream[found.start() + 1]
                return (
                    f"marker code FF{code:02X} inside the data of tile {tile} (byte {found.start()} of "
                    f"{len(codestream)}): the entropy-coded data is corrupt"
                )
        pos = part_end
    return None

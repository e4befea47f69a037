"""JPEG files (MIMIC-CXR-JPG) to a normalised image: :func:`decode_jpeg`, with libjpeg's DCT-domain
scaling for a reduced decode, and the EXIF orientation."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .checks import _check_expected_size, _jpeg_structure
from .intensity import _quantise
from .reading import _decode_or_reject
from .resize import _pad_square, _reduced_resize, _shrink, target_size
from .types import _REDUCE_MIN_PIXELS, DecodedImage, ImageReject, NormalizeConfig

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SYNTAX_NAME = "JPEG (MIMIC-CXR-JPG)"  #: DecodedImage.transfer_syntax of decode_jpeg's images
_EXIF_ORIENTATION = 0x0112


def decode_jpeg(
    source: str | os.PathLike | bytes,
    config: NormalizeConfig = NormalizeConfig(),
    expect_size: tuple[int, int] | None = None,
) -> DecodedImage:
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
        gray: Image.Image = image
        if image.mode != "L":  # a file draft could not set up (not a single-tile JPEG)
            gray = image.convert("L")
        pixels = np.asarray(gray)
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
        pixels=out,
        transfer_syntax=_JPEG_SYNTAX_NAME,
        transfer_syntax_uid="",
        photometric="MONOCHROME2",
        bits_stored=8,
        original_rows=rows,
        original_columns=columns,
        window_source="identity",
        decode_scale=scale,
    )


def _jpeg_failure(buf, exc: Exception, what: str) -> ImageReject:
    """Pillow's error on a file that starts like a JPEG, as a reject: ``truncated`` when the file has
    no start-of-scan marker (it ends within the header) or Pillow says it is cut, else ``decode_error``."""
    detail = (
        "Pillow found no JPEG header it can read"
        if isinstance(exc, UnidentifiedImageError)
        else f"{type(exc).__name__}: {exc}"
    )  # (the former names the BytesIO object)
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
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.T,
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).T,
        8: lambda a: np.rot90(a, 1),
    }[orientation](pixels)
    return np.ascontiguousarray(turned)

"""Public types of the image decoder: :class:`ImageReject` (with :data:`REJECT_REASONS`),
:class:`NormalizeConfig`, :class:`DecodedImage`, and the header's pixel description."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...data_contracts.enums import IMAGE_REJECT_REASONS as REJECT_REASONS  # the reasons a decoder gives

#: reduced-resolution decoding only for images of at least this many stored pixels
_REDUCE_MIN_PIXELS = 1 << 20


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

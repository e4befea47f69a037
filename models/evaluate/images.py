"""Evaluation images: decode (DICOM through :mod:`offclip.pipeline.images`, PNG/JPEG through
PIL) to grayscale [0, 1], zero-pad (centred) to a square, resize to the model's input; the
:class:`Geometry` back to original pixels for the pointing game."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .datasets import EvalImage


class EvalImageError(Exception):
    """An image that cannot be evaluated; ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Geometry:
    """How an original image became the model's ``size`` x ``size`` input.

    The original (``original_rows`` x ``original_columns``) was decoded at ``decoded_rows`` x
    ``decoded_columns`` (a uniform shrink), zero-padded by ``top``/``left`` to a ``side`` x ``side``
    square (centred, as :func:`offclip.models.data.eval_transform`), then resized to ``size``.
    Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``).
    """

    original_rows: int
    original_columns: int
    decoded_rows: int
    decoded_columns: int
    side: int
    top: int
    left: int
    size: int

    @classmethod
    def of(cls, original: tuple[int, int], decoded: tuple[int, int], size: int) -> Geometry:
        rows, columns = decoded
        side = max(rows, columns)
        return cls(
            int(original[0]), int(original[1]), rows, columns, side, (side - rows) // 2, (side - columns) // 2, size
        )

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """Model-input pixel coordinates -> original image pixel coordinates."""
        xd = x * self.side / self.size - self.left
        yd = y * self.side / self.size - self.top
        return xd * self.original_columns / self.decoded_columns, yd * self.original_rows / self.decoded_rows


@dataclass
class PreparedImage:
    pixels: np.ndarray  #: float32 [size, size] in [0, 1]
    geometry: Geometry


def read_image_size(image: EvalImage) -> tuple[int, int]:
    """(rows, columns) of the original image, from its header."""
    if image.loader == "dicom":
        import pydicom

        ds = pydicom.dcmread(image.path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    from PIL import Image

    with Image.open(image.path) as im:
        return im.size[1], im.size[0]


def load_eval_image(image: EvalImage, size: int) -> PreparedImage:
    """Decode ``image`` to grayscale [0, 1] and bring it to ``size`` x ``size`` (pad, resize);
    raises :class:`EvalImageError` with a reason for a missing or unreadable file."""
    if not image.path.is_file():
        raise EvalImageError("missing_file", f"{image.path} does not exist")
    try:
        if image.loader == "dicom":
            unit, original = _decode_dicom(image.path, size)
        elif image.loader == "image":
            unit, original = _decode_picture(image.path, size)
        else:
            raise ValueError(f"unknown loader {image.loader!r}")
    except (EvalImageError, MemoryError):
        raise
    except Exception as exc:  # anything else a malformed file triggers: reject it, keep going
        raise EvalImageError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return _square(unit, original, size)


def _decode_dicom(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from ...pipeline.images import ImageReject, NormalizeConfig, decode_dicom

    try:
        decoded = decode_dicom(path, NormalizeConfig(long_side=size, out_bits=8))
    except ImageReject as exc:
        raise EvalImageError(exc.reason, exc.message) from exc
    unit = decoded.pixels.astype(np.float32) / np.float32(255.0)
    return unit, (decoded.original_rows, decoded.original_columns)


def _decode_picture(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG -> [0, 1]: 8-bit by /255; 16-bit and float images (PadChest's 16-bit PNGs use only
    part of the range) by a robust min-max (0.5th to 99.5th percentile)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            original = (im.size[1], im.size[0])
            if im.format == "JPEG":
                im.draft("L", (size, size))  # decode at a reduced scale (>= size) when large
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                array = np.asarray(im, dtype=np.float32)
                unit = _minmax(array)
            else:
                unit = np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
    except UnidentifiedImageError as exc:
        raise EvalImageError("not_an_image", str(exc)) from exc
    except OSError as exc:  # truncated or corrupt data
        raise EvalImageError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if unit.ndim != 2:
        raise EvalImageError("unsupported_pixels", f"expected a 2-D grayscale image, got shape {unit.shape}")
    return unit, original


def _minmax(array: np.ndarray) -> np.ndarray:
    step = max(1, int(math.sqrt(array.size / (1 << 16))))
    low, high = np.percentile(array[::step, ::step], [0.5, 99.5])
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _square(unit: np.ndarray, original: tuple[int, int], size: int) -> PreparedImage:
    import torch

    from ..data import eval_transform

    geometry = Geometry.of(original, unit.shape, size)
    pixels = eval_transform(torch.from_numpy(np.ascontiguousarray(unit)).unsqueeze(0), size)
    return PreparedImage(pixels.squeeze(0).numpy(), geometry)

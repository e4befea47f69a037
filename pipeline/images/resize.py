"""Geometry: the target size, the shrink (integer block means, then an exact area resample), the
same resample for an image decoded at a reduced resolution, and the square pad."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import sparse

from .pixels import _valid_bits, _value_bound

#: block sums run in bands of this many output rows (k * this many input rows stay in cache)
_BAND_ROWS = 32


def target_size(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    """(rows, columns) after scaling the long side to ``long_side``; never upscales."""
    longest = max(rows, columns)
    if longest <= long_side:
        return rows, columns
    scale = long_side / longest
    if rows >= columns:
        return long_side, max(1, round(columns * scale))
    return max(1, round(rows * scale)), long_side


def _shrink(
    stored: np.ndarray, size: tuple[int, int], bits_stored: int | None = None, *, enforce_bits: bool = True
) -> np.ndarray:
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
    row_dtype: type[np.integer[Any]]
    col_dtype: type[np.integer[Any]]
    if arr.dtype.kind == "u":
        row_dtype = np.uint16 if k * bound <= 0xFFFF else np.uint32
        col_dtype = np.uint32 if k * k * bound <= 0xFFFFFFFF else np.uint64
    else:
        row_dtype = col_dtype = np.int32 if k * k * bound < 1 << 31 else np.int64
    out = np.empty((rows, columns), dtype=col_dtype)
    scratch = np.empty((min(rows, _BAND_ROWS), columns * k), dtype=row_dtype)
    for top in range(0, rows, _BAND_ROWS):
        bottom = min(rows, top + _BAND_ROWS)
        band = arr[top * k : bottom * k]  # full rows: contiguous, so the check is a fast 1-D max
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
    out[top : top + rows, left : left + columns] = pixels
    return out


# ------------------------------------------------------------------------------------------
# an image decoded at a reduced resolution (JPEG DCT scaling, a JPEG 2000 level), resampled as _shrink does
# ------------------------------------------------------------------------------------------
def _reduced_resize(
    reduced: np.ndarray, step: int, offset: float, full_shape: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Resample an image decoded at 1/``step`` size to ``size`` (float32) as :func:`_shrink` resamples
    the full-size image: the k x k block means (k = the factor ``_shrink`` picks; trailing partial
    blocks dropped), then the exact area resample of those to ``size``. Reduced pixel j stands for
    full-size pixels [j*step - offset, (j+1)*step - offset); a block mean is the area mean of the
    reduced pixels over the block. Both steps are one sparse product per axis."""
    rows, columns = size
    factor = max(1, min(full_shape[0] // rows, full_shape[1] // columns))
    image = reduced.astype(np.float32)
    tall = _reduced_weights(image.shape[0], rows, step, offset, full_shape[0], factor) @ image
    return np.ascontiguousarray(
        (_reduced_weights(image.shape[1], columns, step, offset, full_shape[1], factor) @ tall.T).T
    )


@functools.lru_cache(maxsize=64)
def _reduced_weights(
    size_in: int, size_out: int, step: int, offset: float, full_size: int, factor: int
) -> sparse.csr_matrix:
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
    return sparse.csr_matrix(
        (weights[keep].astype(np.float32), (outputs[keep], inputs[keep])), shape=(size_out, size_in)
    )

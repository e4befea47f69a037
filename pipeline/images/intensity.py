"""Intensities: rescale slope / intercept, VOI LUT, window, robust min-max, MONOCHROME1 inversion,
quantisation to 8 or 16 bits."""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .pixels import _lut_table
from .types import _PixelInfo

#: the robust min-max takes its percentiles on a regular sub-grid of at most this many pixels
_MINMAX_SAMPLES = 1 << 15
_MINMAX_PERCENTILE = 0.5  # low percentile; the high one is 100 - this


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

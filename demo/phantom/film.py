"""Film and detector: the film curve from attenuation to display values, the output size
(upsampled from the working grid) with quantum-like noise, the working grid's size, boxes in
output pixels, argument checks, the allocator warm-up and a render's random streams."""

from __future__ import annotations

import math

import numpy as np

from ..lesions import Box, LesionSpec
from .anatomy import Anatomy
from .grid import _Ctx, _F, _resize

#: frontal/lateral maps are rendered on at most this many pixels, then upsampled
_MAX_WORK_PIXELS = 460_000
_MIN_SIZE = 16


def _film(an: Anatomy, A: np.ndarray, a0: float = 0.68) -> np.ndarray:
    """Sigmoid film/display curve: attenuation -> [0, 1] (air 0, dense 1), via a lookup table."""
    k = 3.5 * an.exposure
    lo, hi, n = -0.3, 2.2, 8192
    a = np.linspace(lo, hi, n)
    p0 = 1.0 / (1.0 + math.exp(k * a0))
    table = (1.0 / (1.0 + np.exp(-k * (a - a0))) - p0) / (1.0 - p0)
    table = np.clip(table, 0.0, 1.0) ** an.gamma
    table = (an.fog + (1.0 - an.fog) * table).astype(_F)
    idx = A - lo
    idx *= (n - 1) / (hi - lo)
    idx += 0.5
    np.clip(idx, 0, n - 1, out=idx)
    return table[idx.astype(np.int32)]


def _finish(an: Anatomy, P: np.ndarray, rows: int, cols: int, noise_rng: np.random.Generator):
    """Upsample to the output size, add signal-dependent noise and detector blur, clip to [0, 1].

    Quantum-like noise: uniform deviates with the wanted variance, made near-Gaussian by the
    blur; denser (brighter) regions received fewer photons and are noisier. At native working
    resolution the noise is white and the whole image gets a separable [1, 2, 1] / 4 blur. When
    the image is upsampled (>= 2x) the structure is already smooth, so the noise is drawn at half
    the output resolution and interpolated, which gives the same grain at a fraction of the cost.
    """
    work_pixels = P.shape[0] * P.shape[1]
    upsampled = P.shape != (rows, cols)
    if upsampled:
        P = _resize(P, rows, cols)
    coarse = rows * cols >= 4 * work_pixels
    if coarse:
        z = noise_rng.random(((rows + 1) // 2, (cols + 1) // 2), dtype=_F)
        z -= 0.5
        z = _resize(z, rows, cols)
        k = an.noise * math.sqrt(12.0) * 0.56  # same final grain as the blurred white noise
    else:
        z = noise_rng.random((rows, cols), dtype=_F)
        z -= 0.5
        k = an.noise * math.sqrt(12.0)
    sig = P * (0.8 * k)
    sig += 0.45 * k
    z *= sig
    del sig
    z += P
    out = z
    if not coarse:  # detector blur: separable [1, 2, 1] / 4
        if rows >= 3:
            tmp = out[:-2] + out[2:]
            tmp *= 0.5
            tmp += out[1:-1]
            tmp *= 0.5
            out[1:-1] = tmp
            del tmp
        if cols >= 3:
            tmp = out[:, :-2] + out[:, 2:]
            tmp *= 0.5
            tmp += out[:, 1:-1]
            tmp *= 0.5
            out[:, 1:-1] = tmp
            del tmp
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _work_shape(rows: int, cols: int) -> tuple[int, int]:
    n = rows * cols
    if n <= _MAX_WORK_PIXELS:
        return rows, cols
    f = math.sqrt(_MAX_WORK_PIXELS / n)
    return max(_MIN_SIZE, int(round(rows * f))), max(_MIN_SIZE, int(round(cols * f)))


def _to_boxes(ctx: _Ctx, rows: int, cols: int) -> list[Box]:
    fy, fx = rows / ctx.grid.rh, cols / ctx.grid.cw
    out = []
    for kind, (x0, y0, x1, y1) in ctx.boxes:
        bx0 = min(cols - 1, max(0, int(math.floor(x0 * fx))))
        by0 = min(rows - 1, max(0, int(math.floor(y0 * fy))))
        bx1 = min(cols, max(bx0 + 1, int(math.ceil(x1 * fx))))
        by1 = min(rows, max(by0 + 1, int(math.ceil(y1 * fy))))
        out.append(Box(kind, bx0, by0, bx1, by1))
    return out


def _check_args(rows: int, cols: int, lesions) -> None:
    if int(rows) < _MIN_SIZE or int(cols) < _MIN_SIZE:
        raise ValueError(f"image must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {rows}x{cols}")
    for spec in lesions:
        if not isinstance(spec, LesionSpec):
            raise TypeError(f"lesions must be LesionSpec, got {type(spec).__name__}")


_ALLOCATOR_WARMED = False


def _warm_allocator() -> None:
    """Allocate and free one large block, once per process.

    The renderer makes many short-lived image-sized temporaries. glibc's malloc serves blocks
    above its (adaptive) mmap threshold with fresh mmap()s, so each temporary costs hundreds of
    page faults (a large share of a demo-size render: BENCHMARKS.md). Freeing one large mmapped block raises that
    threshold (and the heap trim threshold) for the rest of the process, exactly as a program
    that once handled a big array would; other allocators simply ignore this.
    """
    global _ALLOCATOR_WARMED
    if not _ALLOCATOR_WARMED:
        _ALLOCATOR_WARMED = True
        np.empty(32_000_000, np.uint8)  # allocated and freed at once


def _streams(rng: np.random.Generator):
    seeds = rng.integers(0, 2**63 - 1, size=3, dtype=np.int64)
    return (np.random.default_rng(int(seeds[0])), np.random.default_rng(int(seeds[1])), int(seeds[2]))

"""The working grid and the render context: :class:`_Grid` (height-unit coordinates of the
working pixels, the study's rotation and shift applied), small helpers (smooth steps, resizing,
smooth noise, polylines, splines, strokes) and :class:`_Ctx` (the attenuation map, lung masks and
air, vessel markings, and the boxes of what is drawn)."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage, sparse

from .anatomy import Anatomy

_F = np.float32


def _ss(x, e0: float, e1: float):
    """Smoothstep from e0 to e1 (works with e0 > e1 for a falling edge)."""
    t = np.clip((x - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Grid:
    """The working pixel grid and its anatomy-frame coordinates."""

    def __init__(self, rh: int, cw: int, shift_x: float, shift_y: float, rotation: float):
        self.rh, self.cw = rh, cw
        self.c, self.s = math.cos(rotation), math.sin(rotation)
        self.dx, self.dy = shift_x, shift_y
        x0 = ((np.arange(cw, dtype=_F) + 0.5 - cw / 2.0) / rh)[None, :]
        y0 = ((np.arange(rh, dtype=_F) + 0.5) / rh - 0.5)[:, None]
        self.X = (self.c * x0 + self.s * y0 - self.dx).astype(_F)
        self.Y = (-self.s * x0 + self.c * y0 + (0.5 - self.dy)).astype(_F)
        self.px = 1.0 / rh  #: one pixel in height units
        self._yidx = None

    _LUT_LO, _LUT_HI, _LUT_N = -0.25, 1.25, 6000

    def ylut(self, fn: Callable, sl=None) -> np.ndarray:
        """Evaluate a 1-D function of Y on the grid (or window ``sl``) through a lookup table."""
        if self._yidx is None:
            k = (self._LUT_N - 1) / (self._LUT_HI - self._LUT_LO)
            idx = (self.Y - self._LUT_LO) * k + 0.5
            np.clip(idx, 0, self._LUT_N - 1, out=idx)
            self._yidx = idx.astype(np.int32)
        ys = np.linspace(self._LUT_LO, self._LUT_HI, self._LUT_N)
        table = np.asarray(fn(ys), dtype=_F)
        return table[self._yidx if sl is None else self._yidx[sl]]

    def to_px(self, x, y):
        """Anatomy coordinates -> (column, row) in pixel units (pixel centres at integers)."""
        x = np.asarray(x, dtype=np.float64) + self.dx
        y = np.asarray(y, dtype=np.float64) + self.dy - 0.5
        x0 = self.c * x - self.s * y
        y0 = self.s * x + self.c * y
        return x0 * self.rh + self.cw / 2.0 - 0.5, (y0 + 0.5) * self.rh - 0.5

    def rect_px(self, x0: float, x1: float, y0: float, y1: float):
        cols, rows = self.to_px([x0, x1, x0, x1], [y0, y0, y1, y1])
        return cols.min(), rows.min(), cols.max(), rows.max()

    def win(self, x0: float, x1: float, y0: float, y1: float, pad: int = 2):
        c0, r0, c1, r1 = self.rect_px(x0, x1, y0, y1)
        r0 = max(0, int(math.floor(r0)) - pad)
        c0 = max(0, int(math.floor(c0)) - pad)
        r1 = min(self.rh, int(math.ceil(r1)) + pad + 1)
        c1 = min(self.cw, int(math.ceil(c1)) + pad + 1)
        if r1 <= r0 or c1 <= c0:
            return None
        return (slice(r0, r1), slice(c0, c1))

    def rect_box(self, x0: float, x1: float, y0: float, y1: float):
        """Anatomy rect -> clipped pixel box (x0, y0, x1, y1), exclusive max, or None."""
        c0, r0, c1, r1 = self.rect_px(x0, x1, y0, y1)
        b = (
            max(0, int(math.floor(c0 + 0.5))),
            max(0, int(math.floor(r0 + 0.5))),
            min(self.cw, int(math.ceil(c1 + 0.5))),
            min(self.rh, int(math.ceil(r1 + 0.5))),
        )
        return b if b[2] > b[0] and b[3] > b[1] else None


@functools.lru_cache(maxsize=64)
def _interp_matrix(n_in: int, n_out: int, cubic: bool) -> sparse.csr_matrix:
    """Sparse (n_out, n_in) matrix resampling a 1-D signal (pixel-area aligned, edges clamped).

    ``cubic`` uses cubic B-spline weights (smooth, for noise fields); otherwise linear.
    """
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    if cubic:
        offs = (-1, 0, 1, 2)
        ws = ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    else:
        offs = (0, 1)
        ws = (1 - t, t)
    rows = np.concatenate([np.arange(n_out)] * len(offs))
    cols = np.concatenate([np.clip(i0 + o, 0, n_in - 1) for o in offs])
    vals = np.concatenate(ws).astype(_F)
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def _resize(a: np.ndarray, h: int, w: int, cubic: bool = False) -> np.ndarray:
    """Separable linear (or cubic B-spline) resampling of a 2-D array to (h, w)."""
    if a.shape == (h, w):
        return a
    ry = _interp_matrix(a.shape[0], h, cubic)
    rx = _interp_matrix(a.shape[1], w, cubic)
    # columns first on the small input, so the only large array is written once, contiguously
    cols_done = rx @ np.ascontiguousarray(a.T, dtype=_F)  # (w, h_in)
    out = ry @ np.ascontiguousarray(cols_done.T)  # (h, w)
    return out if out.dtype == _F else out.astype(_F)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Unit-ish variance smooth noise of the given shape with feature size ~cell_px."""
    h, w = shape
    ch = max(2, int(math.ceil(h / max(cell_px, 1.0))) + 1)
    cw = max(2, int(math.ceil(w / max(cell_px, 1.0))) + 1)
    coarse = rng.standard_normal((ch, cw)).astype(_F)
    # B-spline smoothing shrinks the variance by ~0.55 per axis: restore unit scale
    return _resize(coarse, h, w, cubic=True) * _F(2.1)


def _polyline(points: Sequence[tuple[float, float]], step: float) -> np.ndarray:
    """Densely resample a polyline (anatomy coords) with spacing ``step``; returns (n, 2)."""
    p = np.asarray(points, dtype=np.float64)
    seg = np.diff(p, axis=0)
    lens = np.hypot(seg[:, 0], seg[:, 1])
    out = [p[:1]]
    for a, d, length in zip(p[:-1], seg, lens):
        n = max(1, int(math.ceil(length / step)))
        t = (np.arange(1, n + 1) / n)[:, None]
        out.append(a + t * d)
    return np.concatenate(out)


def _spline(points: Sequence[tuple[float, float]], n: int = 64) -> np.ndarray:
    """Smooth Catmull-Rom curve through control points; returns (n_out, 2)."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    t = np.linspace(0, 1, n, endpoint=False)[:, None]
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-2][None, :])
    return np.concatenate(out)


def _stroke(grid: _Grid, curves: Sequence[np.ndarray], width: float, pad_units: float = 0.0):
    """Rasterise curves (anatomy coords) as soft lines ~``width`` wide (height units).

    Returns (window slices, profile in [0, 1]) or None when nothing lands in the image.
    """
    sigma = max(0.6, width * grid.rh / 2.5)
    pts = []
    for c in curves:
        dense = _polyline(c, step=0.4 / grid.rh)
        cols, rows = grid.to_px(dense[:, 0], dense[:, 1])
        pts.append(np.stack([cols, rows], axis=1))
    pts = np.concatenate(pts)
    pad = int(math.ceil(4 * sigma + pad_units * grid.rh)) + 2
    c0 = max(0, int(math.floor(pts[:, 0].min())) - pad)
    r0 = max(0, int(math.floor(pts[:, 1].min())) - pad)
    c1 = min(grid.cw, int(math.ceil(pts[:, 0].max())) + pad + 1)
    r1 = min(grid.rh, int(math.ceil(pts[:, 1].max())) + pad + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    h, w = r1 - r0, c1 - c0
    ci = np.rint(pts[:, 0]).astype(np.int64) - c0
    ri = np.rint(pts[:, 1]).astype(np.int64) - r0
    ok = (ci >= 0) & (ci < w) & (ri >= 0) & (ri < h)
    if not ok.any():
        return None
    canvas = np.bincount(ri[ok] * w + ci[ok], minlength=h * w).astype(_F).reshape(h, w)
    canvas = ndimage.gaussian_filter(canvas, sigma, mode="constant")
    # a straight line sampled every 0.4 px peaks at 2.5 / (sqrt(2 pi) sigma)
    canvas *= math.sqrt(2 * math.pi) * sigma / 2.5
    np.clip(canvas, 0.0, 1.0, out=canvas)
    return (slice(r0, r1), slice(c0, c1)), canvas


def _with_anatomy(ctx: "_Ctx", **changes) -> "_Ctx":
    """The same context (shared arrays), its anatomy modified in place."""
    ctx.an = replace(ctx.an, **changes)
    return ctx


class _Ctx:
    def __init__(self, an: Anatomy, grid: _Grid, view: str):
        self.an = an
        self.grid = grid
        self.view = view
        shape = (grid.rh, grid.cw)
        self.A = np.zeros(shape, _F)  #: attenuation map
        self.lung_m = {-1: np.zeros(shape, _F), 1: np.zeros(shape, _F)}  #: lung masks
        self.air = np.zeros(shape, _F)  #: lung air actually subtracted from A
        self.V = np.zeros(shape, _F)  #: vessel markings actually added to A
        self.boxes: list[tuple[str, tuple[int, int, int, int]]] = []

    def add_box(self, kind: str, box) -> None:
        if box is not None:
            self.boxes.append((kind, box))

    def apply(self, kind: str, sl, delta: np.ndarray, thr: float = 0.12) -> None:
        """Add ``delta`` inside window ``sl`` and record the box of its visible footprint."""
        if sl is None:
            return
        self.A[sl] += delta
        mag = np.abs(delta)
        peak = float(mag.max()) if mag.size else 0.0
        if peak <= 1e-6:
            return
        m = mag > thr * peak
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        r0, c0 = sl[0].start, sl[1].start
        self.add_box(kind, (c0 + int(cols[0]), r0 + int(rows[0]),
                            c0 + int(cols[-1]) + 1, r0 + int(rows[-1]) + 1))

"""Fast, deterministic synthetic chest radiographs ("phantoms") with lesions.

The demo world needs thousands of MIMIC-CXR-shaped images whose findings are known exactly, so
this module draws them from scratch: a per-study :class:`Anatomy` (sampled with
:func:`sample_anatomy`) is rendered as a frontal (:func:`render_frontal`, PA or AP) or lateral
(:func:`render_lateral`) radiograph, and every :class:`~offclip.demo.lesions.LesionSpec`
is drawn into it and reported back as a :class:`~offclip.demo.lesions.Box`.

How it works
------------
* Geometry lives in *height units*: ``Y`` runs from 0 (top row) to 1 (bottom row), ``X`` is
  measured from the image's vertical centre line in the same unit (so circles stay circles for
  any aspect ratio). The study's small rotation/shift is applied to the pixel grid, so anatomy is
  always described in an upright, centred frame. Patient right is image left (``X < 0``).
* Everything is composed as an additive *attenuation* map ``A`` (air outside the body = 0):
  soft tissue minus lung air, plus heart, mediastinum, bones, vessels and lesions. A monotone
  film curve maps ``A`` to display values in [0, 1] (1 = most attenuating, MONOCHROME2 bright).
* The map is rendered on a *working grid* of at most ``_MAX_WORK_PIXELS`` pixels (the default
  ~700x580 demo size renders natively); larger outputs are bilinearly upsampled from it, then
  quantum-like noise (signal-dependent, detector-blurred) is added at the output resolution.
  Structures and lesions are computed only inside their own bounding windows, 1-D functions of
  ``Y`` through lookup tables, and smooth fields at low resolution. Render times: BENCHMARKS.md,
  "Measured figures moved out of docstrings".
* Lesions either modify the :class:`Anatomy` before drawing (cardiomegaly, emphysema,
  hypoinflation, elevated diaphragm, scoliosis, aortic enlargement; boxed from the geometry) or
  add a local change to the attenuation map (boxed from where that change is visible). One table,
  ``_LESIONS``, holds every kind's renderers side by side: its anatomy change, its frontal
  drawer, its lateral geometry change and its lateral drawer (a kind with no lateral drawer is
  not drawn on the lateral view). Adding a kind means its functions and one row there.
* The caller's ``rng`` is used for exactly one draw (three seeds), which seed independent streams
  for anatomical texture, noise and lesions (one child stream per lesion). So a study rendered
  with and without a lesion, from the same rng state, differs only where that lesion is.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage, sparse

from ..data_contracts.enums import FRONTAL_VIEWS
from .lesions import LESION_KINDS, Box, LesionSpec

__all__ = [
    "Anatomy",
    "sample_anatomy",
    "render_frontal",
    "render_lateral",
    "cardiothoracic_ratio",
    "heart_width",
    "thoracic_width",
]

_F = np.float32
#: frontal/lateral maps are rendered on at most this many pixels, then upsampled
_MAX_WORK_PIXELS = 460_000
_MIN_SIZE = 16

_RIB = 0.095  #: rib attenuation
_YCEN = 0.6  #: lungs reach full width at this fraction of apex -> dome
_SEVERITY_SCALE = {"mild": 0.0, "moderate": 0.5, "severe": 1.0}


# ----------------------------------------------------------------------------------------------
# anatomy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Per-study anatomical jitter, in height units (see module docstring).

    ``X`` offsets are from the body midline (+ = image right = patient left); ``Y`` from the top.
    Fields suffixed ``_r`` / ``_l`` belong to the patient's right (image left) / left lung.
    """

    # pose
    shift_x: float = 0.0
    shift_y: float = 0.0
    rotation: float = 0.0  #: radians, positive = clockwise on the display
    # body outline
    neck_hw: float = 0.075
    shoulder_hw: float = 0.47
    shoulder_y: float = 0.12
    chest_hw: float = 0.385
    tissue: float = 1.0
    # lungs
    apex_r: float = 0.115
    apex_l: float = 0.12
    lung_off_r: float = 0.17  #: lung centre distance from the midline
    lung_off_l: float = 0.165
    lung_lat_r: float = 0.155  #: lateral semi-axis
    lung_lat_l: float = 0.15
    lung_med_r: float = 0.115  #: medial semi-axis
    lung_med_l: float = 0.11
    dome_r: float = 0.64  #: hemidiaphragm dome height (Y)
    dome_l: float = 0.665
    cp_depth: float = 0.075  #: costophrenic recess depth below the dome
    waist_r: float = 0.43  #: height at which the lung reaches its full width
    waist_l: float = 0.44
    lung_air: float = 0.44
    # per-side modifiers (1 = normal), used by lesions such as emphysema
    cp_scale_r: float = 1.0
    cp_scale_l: float = 1.0
    air_r: float = 1.0
    air_l: float = 1.0
    vessel_r: float = 1.0
    vessel_l: float = 1.0
    abdomen_y: float = 0.665  #: reference level of the upper abdomen (fixed per study)
    vessel: float = 1.0
    # heart and mediastinum
    heart_x: float = 0.05
    heart_y: float = 0.615
    heart_a: float = 0.152  #: long semi-axis
    heart_b: float = 0.105
    heart_angle: float = 0.5  #: long axis angle below the horizontal (radians)
    mediastinum_hw: float = 0.055
    knob_x: float = 0.058
    knob_y: float = 0.29
    knob_r: float = 0.028
    aorta_hw: float = 0.02
    aorta_bulge: float = 0.0  #: lateral bulge/tortuosity of the descending aorta
    trachea_x: float = -0.006
    trachea_hw: float = 0.017
    carina_y: float = 0.33
    # spine
    spine_x: float = 0.0
    spine_hw: float = 0.032
    vert_h: float = 0.056
    vert_phase: float = 0.3
    scoliosis: float = 0.0  #: lateral curvature amplitude (0 = straight)
    scoliosis_phase: float = 0.0
    # ribs and clavicles
    rib_y1: float = 0.105
    rib_y10: float = 0.615
    rib_gamma: float = 0.92
    rib_slope: float = -0.22
    rib_curve: float = 1.0
    rib_width: float = 0.42
    clav_y_med: float = 0.165
    clav_y_lat: float = 0.11
    clav_x_lat: float = 0.30
    clav_th: float = 0.02
    bone: float = 1.0
    # soft tissue extras
    breast: float = 0.0
    stomach_bubble: float = 1.0
    # film / detector
    exposure: float = 1.0
    gamma: float = 1.0
    noise: float = 0.03
    fog: float = 0.02


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _n(rng: np.random.Generator, mu: float, sd: float, k: float = 2.5) -> float:
    return float(mu + sd * np.clip(rng.standard_normal(), -k, k))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one study's anatomy (deterministic given ``rng``'s state). The groups below draw in
    a fixed order (keyword arguments are evaluated left to right): changing it changes every
    demo world."""
    dome_r = _n(rng, 0.64, 0.025)
    dome_l = dome_r + _n(rng, 0.025, 0.006)
    apex_r = _n(rng, 0.115, 0.012)
    chest_hw = _n(rng, 0.385, 0.015)
    lung_lat = _n(rng, 0.153, 0.01)
    heart_a = _n(rng, 0.152, 0.008)
    lung_med = _n(rng, 0.114, 0.007)
    female = rng.random() < 0.4
    an = Anatomy(
        **_sample_body(rng, chest_hw),
        **_sample_lungs(rng, dome_r, dome_l, apex_r, lung_lat, lung_med),
        **_sample_heart_mediastinum(rng, dome_l, heart_a),
        **_sample_skeleton(rng),
        **_sample_exposure(rng, female),
    )
    # keep normal studies normal: cardiothoracic ratio at most 0.5
    ctr = cardiothoracic_ratio(an)
    if ctr > 0.5:
        k = 0.5 / ctr
        an = replace(an, heart_a=an.heart_a * k, heart_b=an.heart_b * k)
    return an


def _sample_body(rng: np.random.Generator, chest_hw: float) -> dict:
    """Patient position, neck, shoulders, chest width, soft tissue."""
    return dict(
        shift_x=_n(rng, 0.0, 0.01),
        shift_y=_n(rng, 0.0, 0.01),
        rotation=math.radians(_n(rng, 0.0, 1.2)),
        neck_hw=_n(rng, 0.075, 0.007),
        shoulder_hw=_n(rng, 0.47, 0.025),
        shoulder_y=_n(rng, 0.12, 0.012),
        chest_hw=chest_hw,
        tissue=_n(rng, 1.0, 0.05),
    )


def _sample_lungs(rng: np.random.Generator, dome_r: float, dome_l: float, apex_r: float, lung_lat: float,
                  lung_med: float) -> dict:
    """Lung fields, diaphragm, aeration and vessels."""
    return dict(
        apex_r=apex_r,
        apex_l=apex_r + _n(rng, 0.005, 0.005),
        lung_off_r=_n(rng, 0.17, 0.007),
        lung_off_l=_n(rng, 0.165, 0.007),
        lung_lat_r=lung_lat + 0.005,
        lung_lat_l=lung_lat - 0.002,
        lung_med_r=lung_med,
        lung_med_l=lung_med - _n(rng, 0.004, 0.0015),
        dome_r=dome_r,
        dome_l=dome_l,
        cp_depth=_n(rng, 0.075, 0.008),
        waist_r=apex_r + _YCEN * (dome_r - apex_r),
        waist_l=apex_r + _YCEN * (dome_l - apex_r),
        abdomen_y=dome_l,
        lung_air=_n(rng, 0.44, 0.03),
        vessel=_n(rng, 1.0, 0.12),
    )


def _sample_heart_mediastinum(rng: np.random.Generator, dome_l: float, heart_a: float) -> dict:
    """Heart, mediastinum, aortic knob, trachea and carina."""
    return dict(
        heart_x=_n(rng, 0.05, 0.008),
        heart_y=dome_l - _n(rng, 0.05, 0.008),
        heart_a=heart_a,
        heart_b=heart_a * _n(rng, 0.74, 0.03),
        heart_angle=_n(rng, 0.5, 0.07),
        mediastinum_hw=_n(rng, 0.055, 0.005),
        knob_x=_n(rng, 0.05, 0.005),
        knob_y=_n(rng, 0.29, 0.012),
        knob_r=_n(rng, 0.026, 0.003),
        aorta_hw=_n(rng, 0.02, 0.002),
        trachea_x=_n(rng, -0.006, 0.004),
        trachea_hw=_n(rng, 0.017, 0.0015),
        carina_y=_n(rng, 0.33, 0.012),
    )


def _sample_skeleton(rng: np.random.Generator) -> dict:
    """Spine, ribs, clavicles, bone density."""
    return dict(
        spine_x=_n(rng, 0.0, 0.003),
        spine_hw=_n(rng, 0.032, 0.0025),
        vert_h=_n(rng, 0.056, 0.003),
        vert_phase=_u(rng, 0.0, 1.0),
        rib_y1=_n(rng, 0.105, 0.008),
        rib_y10=_n(rng, 0.615, 0.02),
        rib_gamma=_n(rng, 0.92, 0.03),
        rib_slope=_n(rng, -0.22, 0.04),
        rib_curve=_n(rng, 1.0, 0.1),
        rib_width=_n(rng, 0.42, 0.03),
        clav_y_med=_n(rng, 0.165, 0.01),
        clav_y_lat=_n(rng, 0.11, 0.01),
        clav_x_lat=_n(rng, 0.30, 0.015),
        clav_th=_n(rng, 0.02, 0.002),
        bone=_n(rng, 1.0, 0.08),
    )


def _sample_exposure(rng: np.random.Generator, female: bool) -> dict:
    """Breast shadow, stomach bubble, and the exposure: film curve, noise, fog."""
    return dict(
        breast=_u(rng, 0.5, 1.0) if female else 0.0,
        stomach_bubble=_u(rng, 0.3, 1.2),
        exposure=_n(rng, 1.0, 0.06),
        gamma=_n(rng, 1.0, 0.08),
        noise=_u(rng, 0.018, 0.045),
        fog=_u(rng, 0.01, 0.04),
    )


def _apply_view(an: Anatomy, view: str) -> Anatomy:
    if view == "PA":
        return an
    # AP: magnified heart, clavicles projected higher and flatter, slightly lower inspiration
    return replace(
        an,
        heart_a=an.heart_a * 1.1,
        heart_b=an.heart_b * 1.08,
        heart_y=an.heart_y - 0.01,
        mediastinum_hw=an.mediastinum_hw * 1.08,
        clav_y_med=an.clav_y_med - 0.045,
        clav_y_lat=an.clav_y_lat - 0.06,
        dome_r=an.dome_r - 0.02,
        dome_l=an.dome_l - 0.02,
    )


def _lung_params(an: Anatomy, s: int) -> tuple[float, float, float, float, float, float]:
    """(centre X, lateral semi-axis, medial semi-axis, apex Y, dome Y, costophrenic depth)."""
    if s < 0:
        return (-an.lung_off_r, an.lung_lat_r, an.lung_med_r, an.apex_r, an.dome_r, an.cp_depth * an.cp_scale_r)
    return (an.lung_off_l, an.lung_lat_l, an.lung_med_l, an.apex_l, an.dome_l, an.cp_depth * an.cp_scale_l)


def _sget(an: Anatomy, s: int, name: str) -> float:
    """Per-side field: ``name_r`` for s < 0 (patient right, image left), else ``name_l``."""
    return getattr(an, f"{name}_{'r' if s < 0 else 'l'}")


def _sreplace(an: Anatomy, sides: Sequence[int], **fns: Callable[[float], float]) -> Anatomy:
    """Apply ``fn(old) -> new`` to per-side fields ``name_r`` / ``name_l`` of the given sides."""
    changes = {}
    for s in sides:
        for name, fn in fns.items():
            key = f"{name}_{'r' if s < 0 else 'l'}"
            changes[key] = fn(getattr(an, key))
    return replace(an, **changes)


def heart_width(anatomy: Anatomy, view: str = "PA") -> float:
    """Horizontal extent of the cardiac silhouette, in height units."""
    an = _apply_view(anatomy, view)
    c, s = math.cos(an.heart_angle), math.sin(an.heart_angle)
    return 2.0 * math.sqrt((an.heart_a * c) ** 2 + (an.heart_b * s) ** 2)


def thoracic_width(anatomy: Anatomy) -> float:
    """Internal thoracic width (lateral lung margin to lateral lung margin), in height units."""
    xr, ar, *_ = _lung_params(anatomy, -1)
    xl, al, *_ = _lung_params(anatomy, +1)
    return (xl + al) - (xr - ar)


def cardiothoracic_ratio(anatomy: Anatomy, view: str = "PA") -> float:
    return heart_width(anatomy, view) / thoracic_width(anatomy)


# ----------------------------------------------------------------------------------------------
# grid and small helpers
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# render context
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# frontal anatomy
# ----------------------------------------------------------------------------------------------


def _body_half_width(an: Anatomy, Y):
    b = an.neck_hw + (an.shoulder_hw - an.neck_hw) * _ss(Y, 0.0, an.shoulder_y + 0.02)
    b = b - (an.shoulder_hw - an.chest_hw) * _ss(Y, an.shoulder_y + 0.1, 0.42)
    return b - 0.05 * np.maximum(Y - 0.45, 0.0)


def _lung_fy(an: Anatomy, s: int, grow: float = 0.0) -> Callable:
    """The Y-only term of the lung superellipse (0 below the widest level, 1 at the apex)."""
    xc, al, am, ya, yd, cp = _lung_params(an, s)
    ycen = _sget(an, s, "waist")

    def fy(y):
        t = np.maximum(ycen - y, 0.0) * (1.0 / (ycen - ya + grow))
        return t * t * t
    return fy


def _lung_shape(an: Anatomy, s: int, X, Y, grow: float = 0.0, fy=None):
    """Normalised superellipse radius ``rho`` (1 on the pleural margin) and diaphragm height."""
    xc, al, am, ya, yd, cp = _lung_params(an, s)
    dx = (X - xc) * s  # positive laterally
    lat = (dx > 0).astype(_F)
    q = lat * ((1.0 / (al + grow)) - (1.0 / am))
    q += 1.0 / am
    q *= dx
    fx = q * q
    rho = fx + (_lung_fy(an, s, grow)(Y) if fy is None else fy)
    np.sqrt(rho, out=rho)
    # diaphragm: deep lateral costophrenic recess, shallow medial cardiophrenic angle
    lat *= 0.75 * cp
    lat += 0.25 * cp
    fx *= lat
    fx += yd
    return rho, fx, dx


def _draw_lungs(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    for s in (-1, 1):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        x_lo, x_hi = sorted((xc - s * am, xc + s * al))
        sl = g.win(x_lo - 0.01, x_hi + 0.01, ya - 0.01, yd + cp + 0.01)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        rho, dia, dx = _lung_shape(an, s, X, Y, fy=g.ylut(_lung_fy(an, s), sl))
        m = 1.0 - rho
        m *= 0.5 * g.rh * min(al, am)
        np.clip(m, 0.0, 1.0, out=m)
        dia -= Y
        dia *= 0.6 * g.rh
        np.clip(dia, 0.0, 1.0, out=dia)
        m *= dia
        ctx.lung_m[s][sl] = m
        # thicker (darker) centrally, thinner against the chest wall; lower zones a bit darker
        rho *= rho
        np.subtract(1.0, rho, out=rho)
        np.clip(rho, 0.0, 1.0, out=rho)
        np.sqrt(rho, out=rho)
        rho *= 0.45
        rho += 0.55
        air = an.lung_air * _sget(an, s, "air")
        y_lo = _sget(an, s, "waist") + 0.25
        rho *= g.ylut(lambda y: air * (0.9 + 0.15 * _ss(y, ya, y_lo)), sl)
        rho *= m
        ctx.air[sl] += rho


def _draw_body(ctx: _Ctx, tex_rng: np.random.Generator) -> None:
    an, g = ctx.an, ctx.grid
    inv_b = g.ylut(lambda y: 1.0 / _body_half_width(an, y))
    prof = g.ylut(lambda y: np.clip(_body_half_width(an, y) / an.chest_hw, 0.35, 1.15)
                  * an.tissue * (0.92 + 0.16 * _ss(y, 0.55, 0.85)))
    t = g.X * inv_b
    t *= t
    np.subtract(1.0, t, out=t)
    np.clip(t, 0.0, 1.0, out=t)
    np.sqrt(t, out=t)
    t *= prof
    # gentle low-frequency mottle
    mottle = _smooth_noise(tex_rng, (g.rh, g.cw), g.rh / 6.0)
    mottle *= 0.025
    mottle += 1.0
    t *= mottle
    ctx.A += t


def _heart_field(an: Anatomy, X, Y):
    c, s = math.cos(an.heart_angle), math.sin(an.heart_angle)
    dx, dy = X - an.heart_x, Y - an.heart_y
    u = (c * dx + s * dy) / an.heart_a
    v = (-s * dx + c * dy) / an.heart_b
    return u * u + v * v


def _heart_extent(an: Anatomy):
    c, s = math.cos(an.heart_angle), math.sin(an.heart_angle)
    ex = math.sqrt((an.heart_a * c) ** 2 + (an.heart_b * s) ** 2)
    ey = math.sqrt((an.heart_a * s) ** 2 + (an.heart_b * c) ** 2)
    return an.heart_x - ex, an.heart_x + ex, an.heart_y - ey, an.heart_y + ey


def _mediastinum(ctx: _Ctx) -> np.ndarray:
    """Occupancy (0..1) of heart + mediastinum over the lungs; also adds their own density."""
    an, g = ctx.an, ctx.grid
    occ = np.zeros((g.rh, g.cw), _F)
    # heart
    hx0, hx1, hy0, hy1 = _heart_extent(an)
    sl = g.win(hx0, hx1, hy0, hy1)
    if sl is not None:
        r2 = _heart_field(an, g.X[sl], g.Y[sl])
        edge = np.clip((1.0 - r2) * (0.25 * g.rh * an.heart_b), 0.0, 1.0)
        occ[sl] = np.maximum(occ[sl], edge)
        ctx.A[sl] += 0.06 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    # superior mediastinum: a central column widening downwards, merging into the heart
    ytop, ybot = 0.0, max(an.dome_r, an.dome_l) + 0.02
    sl = g.win(-an.mediastinum_hw * 1.8, an.mediastinum_hw * 1.6, ytop, ybot)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        cx = 0.25 * an.trachea_x + 0.004
        x_right = cx - an.mediastinum_hw * (0.9 + 0.45 * _ss(Y, an.carina_y - 0.02, an.heart_y - 0.08)
                                            - 0.5 * _ss(Y, an.heart_y - 0.06, an.heart_y + 0.04))
        x_left = cx + an.mediastinum_hw * (0.85 + 0.5 * _ss(Y, an.carina_y, an.heart_y))
        m = np.clip(np.minimum(X - x_right, x_left - X) * (0.5 * g.rh), 0.0, 1.0)
        occ[sl] = np.maximum(occ[sl], m)
        ctx.A[sl] += 0.04 * m
    # aortic knob and descending aorta (patient left = image right)
    r = an.knob_r
    sl = g.win(an.knob_x - r - 0.01, an.knob_x + r + 0.01, an.knob_y - 1.3 * r - 0.01, an.knob_y + 1.3 * r + 0.01)
    if sl is not None:
        d2 = ((g.X[sl] - an.knob_x) ** 2 + ((g.Y[sl] - an.knob_y) / 1.3) ** 2) * (1.0 / (r * r))
        m = np.clip((1.0 - d2) * (0.2 * g.rh * r), 0.0, 1.0)
        occ[sl] = np.maximum(occ[sl], m)
        ctx.A[sl] += 0.05 * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    # main pulmonary artery segment below the knob (left heart border, upper part)
    px_, py_, prx, pry = an.knob_x - 0.01, an.carina_y + 0.06, 0.032, 0.05
    sl = g.win(px_ - prx, px_ + prx, py_ - pry, py_ + pry)
    if sl is not None:
        d2 = ((g.X[sl] - px_) / prx) ** 2 + ((g.Y[sl] - py_) / pry) ** 2
        m = np.clip((1.0 - d2) * (0.25 * g.rh * prx), 0.0, 1.0)
        occ[sl] = np.maximum(occ[sl], m)
    ax = an.knob_x - 0.35 * an.knob_r
    y0, y1 = an.knob_y, an.abdomen_y + 0.02
    sl = g.win(ax - an.aorta_hw - abs(an.aorta_bulge) - 0.01, ax + an.aorta_hw + abs(an.aorta_bulge) + 0.01,
               y0, y1)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        t = np.clip((Y - y0) / (y1 - y0), 0.0, 1.0)
        cx = ax - 0.012 * t + an.aorta_bulge * np.sin(np.pi * t) * (1.2 - t)
        hw = an.aorta_hw * (1.0 + 0.8 * an.aorta_bulge / max(an.aorta_hw, 1e-3) * np.sin(np.pi * t))
        m = np.clip((hw - np.abs(X - cx)) * (0.5 * g.rh), 0.0, 1.0) * _ss(Y, y0, y0 + 0.01)
        occ[sl] = np.maximum(occ[sl], 0.6 * m)
        ctx.A[sl] += 0.035 * m
    return occ


def _capsule_dist(X, Y, p0, p1):
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    L2 = ex * ex + ey * ey
    t = np.clip(((X - p0[0]) * ex + (Y - p0[1]) * ey) * (1.0 / L2), 0.0, 1.0)
    return np.sqrt((X - p0[0] - t * ex) ** 2 + (Y - p0[1] - t * ey) ** 2)


def _airways(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    car = (an.trachea_x + 0.004, an.carina_y)
    top = (an.trachea_x - 0.004, -0.02)
    rb = (car[0] - 0.045, car[1] + 0.055)
    lb = (car[0] + 0.06, car[1] + 0.05)
    segs = [(top, car, an.trachea_hw), (car, rb, an.trachea_hw * 0.75), (car, lb, an.trachea_hw * 0.7)]
    w0 = an.trachea_hw
    sl = g.win(min(rb[0], top[0]) - w0, lb[0] + w0, top[1], max(rb[1], lb[1]) + w0)
    if sl is None:
        return
    X, Y = g.X[sl], g.Y[sl]
    prof = None
    for p0, p1, w in segs:
        d = _capsule_dist(X, Y, p0, p1)
        p = np.sqrt(np.clip(1.0 - (d / w) ** 2, 0.0, 1.0))
        prof = p if prof is None else np.maximum(prof, p)
    cur = ctx.A[sl]
    ctx.A[sl] = cur - 0.16 * prof * np.clip((cur - 0.2) * 4.0, 0.0, 1.0)


def _spine_center(an: Anatomy, Y):
    c = an.spine_x
    if an.scoliosis:
        t = np.clip((Y - 0.12) / 0.76, 0.0, 1.0)
        c = c + an.scoliosis * np.sin(np.pi * t * 1.6 + an.scoliosis_phase) * np.sin(np.pi * t)
    return c


def _spine_field(an: Anatomy, X, Y):
    """Vertebral column density (bodies, end plates, disc spaces, pedicles, spinous processes)."""
    cx = _spine_center(an, Y)
    hw = an.spine_hw * (0.85 + 0.35 * Y)
    u = (X - cx) / hw
    body = np.clip(1.0 - u * u, 0.0, 1.0)
    col = np.sqrt(body)
    t = (Y - 0.02) / an.vert_h + an.vert_phase
    fr = t - np.floor(t)
    disc = _ss(fr, 0.80, 0.86) * _ss(fr, 1.0, 0.94)
    plates = np.exp(-((fr - 0.78) * 20.0) ** 2) + np.exp(-((fr - 0.02) * 20.0) ** 2)
    ped = np.exp(-(((np.abs(u) - 0.62) * 5.0) ** 2) - ((fr - 0.35) * 5.5) ** 2)
    spin = np.exp(-(u * 6.0) ** 2 - ((fr - 0.55) * 4.0) ** 2)
    dens = col * (0.6 - 0.2 * disc + 0.1 * plates) + 0.2 * ped + 0.1 * spin
    return dens * (body > 0)


def _draw_spine(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    amp = abs(an.scoliosis)
    w = an.spine_hw * 1.3 + amp
    sl = g.win(an.spine_x - w, an.spine_x + w, -0.02, 1.02)
    if sl is None:
        return
    X, Y = g.X[sl], g.Y[sl]
    ctx.A[sl] += (0.24 * an.bone) * _spine_field(an, X, Y)


def _rib_g(an: Anatomy, dd):
    """Posterior rib arc: vertical offset of a rib at lateral distance ``dd`` from the spine."""
    cage = an.chest_hw - 0.035
    k = np.maximum(dd - 0.68 * cage, 0.0)
    return (an.rib_slope + an.rib_curve * dd) * dd + 9.0 * k * k


def _rib_index(an: Anatomy, dd, Y):
    """Posterior-rib index coordinate: rib n (1-based) occupies [n-1, n-1+width).

    Spacing widens downwards: idx = 9 (phi + e phi (1 - phi)), e = 1 - rib_gamma.
    """
    phi = Y - _rib_g(an, dd)
    phi -= an.rib_y1
    phi *= 1.0 / (an.rib_y10 - an.rib_y1)
    e = 1.0 - an.rib_gamma
    idx = phi * (1.0 + e) - e * phi * phi
    idx *= 9.0
    return idx


def _rib_phi_y(an: Anatomy, idx: float, dd: float) -> float:
    """Inverse of :func:`_rib_index`: Y of rib coordinate ``idx`` at lateral distance ``dd``."""
    e = 1.0 - an.rib_gamma
    q = max(idx, 0.0) / 9.0
    phi = q if abs(e) < 1e-6 else ((1 + e) - math.sqrt((1 + e) ** 2 - 4 * e * q)) / (2 * e)
    return an.rib_y1 + float(_rib_g(an, dd)) + phi * (an.rib_y10 - an.rib_y1)


def _band_profile(fr, w):
    """Rib-like band for fr in [0, w): tube with denser cortex; 0 outside (fr in [0, 1))."""
    u = fr * (2.0 / w)
    u -= 1.0
    au = np.abs(u)
    inside = 1.0 - au
    inside *= 6.0
    np.clip(inside, 0.0, 1.0, out=inside)
    au *= au
    au *= 0.55
    au += 0.45
    inside *= au
    return inside


def _rib_field(an: Anatomy, X, Y, s: int, step: float = 0.0, x_step: float | None = None):
    """Posterior + anterior ribs of one side (s = -1 image left)."""
    dd = (X - an.spine_x) * s
    if x_step is not None:
        Y = Y - (dd > x_step).astype(_F) * step
    cage = an.chest_hw - 0.035
    np.maximum(dd, 0.0, out=dd)
    idx = _rib_index(an, dd, Y)
    valid = np.clip(idx * 20.0 + 1.0, 0.0, 1.0)  # ribs start at rib 1
    fr = idx - np.floor(idx)
    post = _band_profile(fr, an.rib_width)
    post *= valid
    # lateral end at the rib cage, medial end at the transverse processes, fainter low down
    lat = (cage - dd) * 60.0
    np.clip(lat, 0.0, 1.0, out=lat)
    med = (dd - an.spine_hw * 1.05) * 150.0
    np.clip(med, 0.0, 1.0, out=med)
    post *= lat
    post *= med
    lo = an.rib_y10 + 0.03
    post *= np.clip(1.0 - (Y - lo) * (0.45 / 0.12), 0.55, 1.0)
    post *= np.clip(0.85 + dd * 2.0, 0.85, 1.15)
    post *= np.clip((11.5 - idx) * 5.0, 0.0, 1.0)
    # anterior ribs: from the lateral wall sloping down towards the sternum, fading medially
    c_dd = cage - dd
    ya = Y - (0.38 + 0.6 * c_dd) * c_dd
    ia = (ya - (an.rib_y1 - 0.09)) * (1.0 / 0.066)
    fa = ia - np.floor(ia)
    ant = _band_profile(fa, 0.38)
    ant *= np.clip(ia * 20.0 + 1.0, 0.0, 1.0) * np.clip((6.4 - ia) * 5.0, 0.0, 1.0)
    ant *= np.clip((dd - 0.10) * (0.45 / 0.07), 0.0, 0.45)
    ant *= lat
    post += ant
    return post


def _draw_ribs(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    cage = an.chest_hw - 0.035
    y_bot = an.rib_y10 + float(_rib_g(an, cage)) + 0.22
    for s in (-1, 1):
        x0, x1 = sorted((an.spine_x + s * an.spine_hw, an.spine_x + s * (cage + 0.01)))
        sl = g.win(x0, x1, an.rib_y1 - 0.06, y_bot)
        if sl is None:
            continue
        ctx.A[sl] += (_RIB * an.bone) * _rib_field(an, g.X[sl], g.Y[sl], s)


def _draw_clavicles(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    for s in (-1, 1):
        xm, xl = 0.035, an.clav_x_lat
        x0, x1 = sorted((s * (xm - 0.01), s * (xl + 0.015)))
        y0 = min(an.clav_y_med, an.clav_y_lat) - 0.04
        y1 = max(an.clav_y_med, an.clav_y_lat) + 0.04
        sl = g.win(x0, x1, y0, y1)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        d = X * s
        t = (d - xm) / (xl - xm)
        tc = np.clip(t, 0.0, 1.0)
        yc = an.clav_y_med + (an.clav_y_lat - an.clav_y_med) * tc + 0.012 * np.sin(2 * np.pi * tc)
        th = an.clav_th * (1.15 - 0.3 * tc)
        fr = (Y - yc) / th + 0.5
        prof = _band_profile(np.clip(fr, 0.0, 1.0), 1.0)
        ends = _ss(t, -0.03, 0.02) * _ss(t, 1.04, 0.98)
        ctx.A[sl] += (0.2 * an.bone) * prof * ends


def _draw_shoulders(ctx: _Ctx) -> None:
    """Humeral heads and the lateral scapular margins (partly outside most fields of view)."""
    an, g = ctx.an, ctx.grid
    for s in (-1, 1):
        cx, cy, r = s * (an.shoulder_hw - 0.015), an.shoulder_y + 0.05, 0.075
        sl = g.win(cx - r, cx + r, cy - r, cy + r)
        if sl is None:
            continue
        d2 = ((g.X[sl] - cx) ** 2 + (g.Y[sl] - cy) ** 2) * (1.0 / (r * r))
        ball = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        ctx.A[sl] += (0.2 * an.bone) * (ball ** 0.5) * (0.7 + 0.3 * d2)
    if ctx.view == "AP":  # scapulae overlap the upper lateral lungs
        for s in (-1, 1):
            sl = g.win(s * 0.22 - 0.12, s * 0.22 + 0.12, 0.12, 0.5)
            if sl is None:
                continue
            X, Y = g.X[sl], g.Y[sl]
            edge = s * 0.21 + s * 0.12 * (Y - 0.15)
            m = np.clip((X - edge) * s * 200.0, 0.0, 1.0) * _ss(Y, 0.14, 0.2) * _ss(Y, 0.48, 0.4)
            ctx.A[sl] += 0.05 * an.bone * m


def _draw_soft_extras(ctx: _Ctx) -> None:
    an, g = ctx.an, ctx.grid
    # gastric air bubble under the left hemidiaphragm (image right)
    if an.stomach_bubble > 0:
        cx, cy, rx, ry = an.lung_off_l - 0.01, an.dome_l + 0.05, 0.045, 0.03
        sl = g.win(cx - rx, cx + rx, cy - ry, cy + ry)
        if sl is not None:
            X, Y = g.X[sl], g.Y[sl]
            d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
            flat = np.clip((cy + 0.4 * ry - Y) * 300.0, 0.0, 1.0)  # air-fluid level
            ctx.A[sl] -= 0.06 * an.stomach_bubble * np.clip((1.0 - d2) * 3.0, 0.0, 1.0) * flat
    # breast shadows over the lower zones
    if an.breast > 0:
        for s in (-1, 1):
            cx, cy, rx, ry = s * 0.2, an.abdomen_y - 0.02, 0.2, 0.13
            sl = g.win(cx - rx, cx + rx, cy - ry, cy + ry)
            if sl is None:
                continue
            X, Y = g.X[sl], g.Y[sl]
            d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
            m = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) * _ss(Y, cy - ry, cy)
            ctx.A[sl] += 0.09 * an.breast * m


def _vessel_tree(an: Anatomy, s: int, rng: np.random.Generator, hx0: float = 0.0,
                 step: float = 0.003):
    """Random branching pulmonary vessel tree from the hilum.

    Returns point arrays (x, y, weight, width) sampled every ~``step`` height units.
    """
    _, _, _, ya, yd, _ = _lung_params(an, s)
    hx = hx0 + s * 0.085
    hy = an.carina_y + 0.085
    base = np.radians([-100, -78, -55, -30, -5, 20, 45, 68, 90, 110])
    ang = base + rng.uniform(-0.1, 0.1, size=base.size)
    # lobar trunks start spread along the hilum; vertical trunks are longer (the lungs are tall)
    starts = np.stack([np.full(base.size, 0.0), 0.035 * np.sin(ang)], axis=1)
    reach_up, reach_down = hy - ya, _sget(an, s, "waist") + 0.2 - hy
    sin = np.sin(ang)
    reach = np.where(sin < 0, reach_up, reach_down) * np.abs(sin) + 0.2 * np.cos(ang) ** 2
    lengths = 0.26 * reach * rng.uniform(0.85, 1.15, size=base.size)
    widths = np.full(base.size, 1.0)
    segs = []
    depth_max = 6
    for depth in range(depth_max + 1):
        d = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        ends = starts + lengths[:, None] * d
        bend = rng.normal(0, 0.12, size=ang.size)[:, None] * lengths[:, None] * np.stack([-d[:, 1], d[:, 0]], axis=1)
        segs.append((starts, ends, bend, widths))
        if depth == depth_max:
            break
        n = ang.size
        # asymmetric dichotomy: one branch continues roughly straight, the other veers off
        a_main = rng.uniform(0.05, 0.25, size=n) * rng.choice([-1, 1], size=n)
        a_side = -np.sign(a_main) * rng.uniform(0.35, 0.75, size=n)
        ang = (ang[:, None] + np.stack([a_main, a_side], axis=1)).reshape(-1)
        starts = np.repeat(ends, 2, axis=0)
        lengths = (np.repeat(lengths, 2).reshape(n, 2) * np.stack(
            [rng.uniform(0.72, 0.9, size=n), rng.uniform(0.5, 0.7, size=n)], axis=1)).reshape(-1)
        widths = (np.repeat(widths, 2).reshape(n, 2) * np.array([0.8, 0.6])).reshape(-1)
    xs, ys, ws = [], [], []
    for a, b, bend, w in segs:
        seg_len = np.hypot(*(b - a).T)
        npts = int(np.clip(math.ceil(float(seg_len.max()) / step), 3, 24))
        t = np.linspace(0, 1, npts)[None, :, None]
        p = (a[:, None, :] + t * (b - a)[:, None, :] + (4 * t * (1 - t)) * bend[:, None, :]).reshape(-1, 2)
        xs.append(hx + s * p[:, 0])
        ys.append(hy + p[:, 1])
        # weight = width x point spacing, so the rasterised line density is independent of length
        ws.append(np.repeat(w * seg_len / (npts - 1), npts))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(
        [np.repeat(w, t_.size // w.size) for (_, _, _, w), t_ in zip(segs, xs)])


def _draw_vessels(ctx: _Ctx, tex_rng: np.random.Generator, occ: np.ndarray, hx0: float = 0.0,
                  hila: bool = True) -> None:
    an, g = ctx.an, ctx.grid
    f = 2  # vessel canvas at half resolution
    h, w = (g.rh + f - 1) // f, (g.cw + f - 1) // f
    step = 0.9 * f / g.rh
    parts = [_vessel_tree(an, s, tex_rng, hx0, step) for s in (-1, 1)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    wt = np.concatenate([p[2] for p in parts])
    width = np.concatenate([p[3] for p in parts])
    cols, rows = g.to_px(x, y)
    ci = np.rint((cols - (f - 1) / 2) / f).astype(np.int64)
    ri = np.rint((rows - (f - 1) / 2) / f).astype(np.int64)
    ok = (ci >= 0) & (ci < w) & (ri >= 0) & (ri < h)
    flat = ri * w + ci
    V = None
    for big, sigma_units in ((True, 0.0045), (False, 0.0018)):
        sel = ok & ((width > 0.5) == big)
        canvas = np.bincount(flat[sel], weights=wt[sel], minlength=h * w).astype(_F).reshape(h, w)
        sigma = max(0.6, sigma_units * g.rh / f)
        c = ndimage.gaussian_filter(canvas, sigma, truncate=3.0)
        # normalise so an isolated vessel of weight 1 peaks near 1
        c *= (math.sqrt(2 * math.pi) * sigma) * (g.rh / f)
        V = c if V is None else V + c
    # background parenchymal texture
    tex = _smooth_noise(tex_rng, (h, w), 0.012 * g.rh / f)
    np.clip(tex, 0.0, None, out=tex)
    tex *= 0.25
    V += tex
    np.clip(V, 0.0, 1.8, out=V)
    V = _resize(V, g.rh, g.cw)
    lung = ctx.lung_m[-1] * an.vessel_r
    lung += ctx.lung_m[1] * an.vessel_l
    np.clip(lung, 0.0, 1.0, out=lung)
    occ_w = occ * -0.75
    occ_w += 1.0
    lung *= occ_w
    lung *= 0.07 * an.vessel
    V *= lung
    ctx.V = V
    ctx.A += V
    # hila: lobulated vascular densities
    for s in ((-1, 1) if hila else ()):
        cx, cy = s * 0.09, an.carina_y + 0.085
        sl = g.win(cx - 0.05, cx + 0.05, cy - 0.07, cy + 0.07)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        d2 = ((X - cx) / 0.028) ** 2 + ((Y - cy) / 0.05) ** 2
        ctx.A[sl] += 0.08 * np.exp(-d2) * (1.0 - 0.5 * occ[sl])


# ----------------------------------------------------------------------------------------------
# lateral anatomy (height units; anterior = image left, spine on the right)
# ----------------------------------------------------------------------------------------------


def _lat_front(y):
    return -0.3 + 0.06 * (1.0 - _ss(y, 0.02, 0.22)) + 0.03 * _ss(y, 0.7, 1.0)


def _lat_back(y):
    return 0.3 + 0.015 * np.sin(np.pi * np.clip(y, 0, 1)) - 0.06 * (1.0 - _ss(y, 0.0, 0.18))


def _lat_spine(y):  # kyphotic spine (vertebral body centre)
    return 0.175 + 0.03 * np.sin(np.pi * np.clip(y, 0.0, 1.0))


@dataclass(frozen=True)
class _LateralShape:
    """What anatomy-changing lesions do to the lateral view (each kind's ``lateral_shape``)."""

    heart_k: float = 1.0  #: heart size factor
    emph: float = 0.0  #: hyperinflation: lower, flatter diaphragm, more lung air
    lift: float = 0.0  #: diaphragm raised by this much


@dataclass(frozen=True)
class _LateralFrame:
    """The lateral view's geometry, shared by its anatomy and its lesion drawers."""

    an: Anatomy
    shape: _LateralShape
    apex: float
    dome_a: float  #: anterior diaphragm
    dome_p: float  #: posterior diaphragm
    lx0: float  #: lung field, anterior edge
    lx1: float  #: lung field, posterior edge
    hil_y: float
    hx: float  #: heart centre and half axes
    hy: float
    ha: float
    hb: float


def _lateral_frame(an: Anatomy, sh: _LateralShape) -> _LateralFrame:
    emph, lift = sh.emph, sh.lift
    apex = min(an.apex_r, an.apex_l) - 0.015
    dome_a = min(an.dome_r, an.dome_l) - 0.07 + 0.06 * emph - lift
    dome_p = max(an.dome_r, an.dome_l) + 0.06 + 0.06 * emph - lift
    lx0, lx1 = -0.255 - 0.01 * emph, 0.235
    ha, hb = 0.13 * sh.heart_k, 0.118 * sh.heart_k
    hx, hy = -0.135 + 0.6 * (ha - 0.13), dome_a + 0.03 - 0.7 * hb
    return _LateralFrame(an, sh, apex, dome_a, dome_p, lx0, lx1, an.carina_y + 0.07, hx, hy, ha, hb)


def _lateral_body(ctx: _Ctx, tex_rng: np.random.Generator) -> np.ndarray:
    """Soft tissue (the beam crosses the full chest width, so it is thick everywhere) and the
    raised arms; returns the body mask (distance to the skin in pixels, clipped to [0, 1])."""
    an, g = ctx.an, ctx.grid
    rh = g.rh
    mid = g.ylut(lambda y: 0.5 * (_lat_front(y) + _lat_back(y)))
    inv_half = g.ylut(lambda y: 2.0 / (_lat_back(y) - _lat_front(y)))
    half_px = g.ylut(lambda y: 0.5 * (_lat_back(y) - _lat_front(y)) * 0.7 * rh)
    t = g.X - mid
    t *= inv_half
    np.abs(t, out=t)
    body = 1.0 - t  # distance to the skin, in half-widths
    body *= half_px
    np.clip(body, 0.0, 1.0, out=body)
    t *= t
    np.subtract(1.0, t, out=t)
    np.clip(t, 0.0, 1.0, out=t)
    np.sqrt(t, out=t)
    t *= 0.25
    t += 0.75
    t *= body
    t *= (0.98 * an.tissue) * (1.0 + 0.03 * _smooth_noise(tex_rng, (g.rh, g.cw), rh / 6.0))
    ctx.A += t
    del t
    # raised arms over the apices and upper posterior chest
    sl = g.win(-0.35, 0.4, -0.02, 0.44)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        arm = np.exp(-(((X - 0.02 - 0.35 * (Y - 0.1)) * (1.0 / 0.09)) ** 2)) * g.ylut(lambda y: _ss(y, 0.42, 0.12), sl)
        ctx.A[sl] += 0.12 * arm * body[sl]
    return body


def _lateral_vascular(g: _Grid, fr: _LateralFrame, lsl, X, Y):
    """Heart (anterior, on the anterior diaphragm) and aorta inside the lung window: returns
    (their occupancy of the lung field, the heart's normalised radius squared)."""
    an, hx, hy, ha, hb = fr.an, fr.hx, fr.hy, fr.ha, fr.hb
    hr2 = ((X - hx) * (1.0 / ha)) ** 2 + ((Y - hy) * (1.0 / hb)) ** 2
    heart = np.clip((1.0 - hr2) * (0.06 * g.rh * hb), 0.0, 1.0)
    # aortic arch over the hilum, ascending aorta in front, descending along the spine
    arch_r = np.sqrt(((X - 0.03) * (1.0 / 0.085)) ** 2 + ((Y - an.knob_y - 0.06) * (1.0 / 0.075)) ** 2)
    aorta = np.exp(-(((arch_r - 1.0) * (1.0 / 0.22)) ** 2)) * (Y < an.knob_y + 0.07)
    asc = np.exp(-(((X + 0.055) * (1.0 / 0.022)) ** 2))
    asc *= g.ylut(lambda y: _ss(y, an.knob_y + 0.05, an.knob_y + 0.08) * _ss(y, hy, hy - 0.05), lsl)
    sxw = g.ylut(_lat_spine, lsl)
    desc = np.exp(-(((X - sxw + 0.07) * (1.0 / 0.018)) ** 2))
    desc *= g.ylut(lambda y: _ss(y, an.knob_y + 0.05, an.knob_y + 0.09), lsl)
    vasc = np.maximum(np.maximum(aorta, asc), desc)
    return np.maximum(0.5 * heart, 0.3 * vasc), hr2


def _lateral_lungs(ctx: _Ctx, fr: _LateralFrame) -> np.ndarray:
    """The lung field (one mask, ``ctx.lung_m[-1]``), its air less what heart and aorta occupy;
    returns that occupancy (for the vessels)."""
    an, g = fr.an, ctx.grid
    rh, emph = g.rh, fr.shape.emph
    apex, dome_a, dome_p, lx0, lx1 = fr.apex, fr.dome_a, fr.dome_p, fr.lx0, fr.lx1
    lc, la = 0.5 * (lx0 + lx1), 0.5 * (lx1 - lx0)
    ycen = apex + 0.5 * (dome_p - apex)
    lsl = g.win(lx0, lx1, apex, dome_p)
    occ = np.zeros((g.rh, g.cw), _F)
    if lsl is None:
        return occ
    X, Y = g.X[lsl], g.Y[lsl]
    fy = g.ylut(lambda y: (np.maximum(ycen - y, 0.0) / (ycen - apex)) ** 3, lsl)
    q = (X - lc) * (1.0 / la)
    rho = q * q
    rho += fy
    np.sqrt(rho, out=rho)
    u = np.clip((X - lx0) * (1.0 / (lx1 - lx0)), 0.0, 1.0)
    dia = dome_a + (dome_p - dome_a) * u * u - (0.05 - 0.03 * emph) * np.sin(np.pi * u)
    lung = np.clip((1.0 - rho) * (0.15 * rh), 0.0, 1.0) * np.clip((dia - Y) * (0.6 * rh), 0.0, 1.0)
    ctx.lung_m[-1][lsl] = lung
    rho *= rho
    air = (an.lung_air * (0.85 + 0.3 * emph)) * lung * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - rho, 0.0, 1.0)))
    o, hr2 = _lateral_vascular(g, fr, lsl, X, Y)
    occ[lsl] = o
    air *= 1.0 - o
    ctx.air[lsl] = air
    ctx.A[lsl] -= air
    ctx.A[lsl] += 0.04 * np.sqrt(np.clip(1.0 - hr2, 0.0, 1.0))
    return occ


def _lateral_airways(ctx: _Ctx, fr: _LateralFrame) -> None:
    """Hilum, and the trachea as a lucent band running down and back to the carina."""
    an, g = fr.an, ctx.grid
    hil_y = fr.hil_y
    sl = g.win(-0.1, 0.16, hil_y - 0.15, hil_y + 0.15)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        ctx.A[sl] += 0.09 * np.exp(-((X - 0.03) * (1.0 / 0.045)) ** 2 - ((Y - hil_y) * (1.0 / 0.055)) ** 2)
    sl = g.win(-0.05, 0.06, -0.02, an.carina_y + 0.02)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        tx = -0.02 + 0.16 * np.clip(Y, 0.0, an.carina_y)
        trach = np.clip(1.0 - ((X - tx) * (1.0 / 0.016)) ** 2, 0.0, 1.0)
        trach *= g.ylut(lambda y: _ss(y, an.carina_y + 0.02, an.carina_y - 0.01), sl)
        cur = ctx.A[sl]
        cur -= 0.1 * np.sqrt(trach) * (cur > 0.3)


def _lateral_bones(ctx: _Ctx, body: np.ndarray) -> None:
    """Sternum, spine (vertebral bodies and posterior elements), posterior ribs crossing obliquely."""
    an, g = ctx.an, ctx.grid
    sl = g.win(-0.32, -0.2, 0.15, 0.62)
    if sl is not None:
        X = g.X[sl]
        stx = g.ylut(lambda y: _lat_front(y) + 0.018, sl)
        ster = np.clip(1.0 - ((X - stx) * (1.0 / 0.011)) ** 2, 0.0, 1.0)
        ster *= g.ylut(lambda y: _ss(y, 0.17, 0.2) * _ss(y, 0.6, 0.56), sl)
        ctx.A[sl] += 0.1 * an.bone * np.sqrt(ster)
    sl = g.win(0.1, 0.3, -0.02, 1.02)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        sxw = g.ylut(_lat_spine, sl)
        vb = _spine_field(replace(an, spine_x=0.0, spine_hw=0.036, scoliosis=0.0), X - sxw, Y)
        vb *= g.ylut(lambda y: 0.26 * an.bone * (1.0 - 0.25 * _ss(y, 0.4, 0.75)), sl)
        post = np.exp(-(((X - sxw - 0.07) * (1.0 / 0.022)) ** 2)) * g.ylut(lambda y: _ss(y, 0.02, 0.08), sl)
        vb += (0.08 * an.bone) * post
        ctx.A[sl] += vb
    sl = g.win(-0.03, 0.33, 0.0, 0.88)
    if sl is not None:
        X, Y = g.X[sl], g.Y[sl]
        rib_t = (Y - 0.5 * (X - 0.05) - 0.05) * (1.0 / 0.062)
        rf = rib_t - np.floor(rib_t)
        rib = _band_profile(rf, 0.4)
        rib *= np.clip((X + 0.02) * (1.0 / 0.14), 0.0, 1.0)
        rib *= body[sl]
        rib *= g.ylut(lambda y: 0.05 * an.bone * _ss(y, 0.85, 0.7), sl)
        ctx.A[sl] += rib


def _draw_lateral_anatomy(ctx: _Ctx, fr: _LateralFrame, tex_rng: np.random.Generator) -> None:
    body = _lateral_body(ctx, tex_rng)
    occ = _lateral_lungs(ctx, fr)
    _lateral_airways(ctx, fr)
    _lateral_bones(ctx, body)
    # pulmonary vessels radiating from the hilum
    _draw_vessels(_with_anatomy(ctx, vessel=fr.an.vessel * 0.6), tex_rng, occ, hx0=0.03, hila=False)


# ----------------------------------------------------------------------------------------------
# lesions: shared placement and shapes
# ----------------------------------------------------------------------------------------------

_BILATERAL_DEFAULT = ("edema", "emphysema", "hypoinflation", "fibrosis", "interstitial")


def _sev(spec: LesionSpec) -> float:
    return _SEVERITY_SCALE[spec.severity]


def _resolve(spec: LesionSpec, rng: np.random.Generator) -> tuple[str, str]:
    side = spec.side
    if side is None:
        if spec.kind in _BILATERAL_DEFAULT:
            side = "bilateral" if rng.random() < 0.8 else ("right" if rng.random() < 0.5 else "left")
        else:
            side = "right" if rng.random() < 0.5 else "left"
    zone = spec.zone
    if zone is None:
        zone = ("upper", "middle", "lower")[int(rng.integers(0, 3))]
    return side, zone


def _sides(side: str) -> tuple[int, ...]:
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}[side]


def _lung_rect(an: Anatomy, s: int, grow: float = 0.0):
    xc, al, am, ya, yd, cp = _lung_params(an, s)
    x0, x1 = sorted((xc - s * am, xc + s * (al + grow)))
    return x0, x1, ya - grow, yd + cp


def _zone_y(an: Anatomy, s: int, zone: str, rng: np.random.Generator) -> float:
    _, _, _, ya, yd, _ = _lung_params(an, s)
    lo, hi = {"upper": (0.12, 0.33), "middle": (0.38, 0.6), "lower": (0.64, 0.84)}[zone]
    return ya + (yd - ya) * float(rng.uniform(lo, hi))


def _lung_x_at(an: Anatomy, s: int, y: float, frac: float) -> float:
    """X at fraction ``frac`` of the lung's width at height ``y`` (0 = medial, 1 = lateral)."""
    xc, al, am, ya, yd, cp = _lung_params(an, s)
    ycen = _sget(an, s, "waist")
    fy = (max(ycen - y, 0.0) / (ycen - ya)) ** 3
    k = math.sqrt(max(1.0 - fy, 0.05))
    med, lat = xc - s * am * k, xc + s * al * k
    return med + (lat - med) * frac


def _place(an: Anatomy, s: int, zone: str, rng: np.random.Generator, lo=0.3, hi=0.85):
    y = _zone_y(an, s, zone, rng)
    return _lung_x_at(an, s, y, float(rng.uniform(lo, hi))), y


def _placed(ctx: _Ctx, side: str, zone: str, rng: np.random.Generator, lo=0.3, hi=0.85):
    """(side, x, y) of one placement per side of ``side``, each drawn just before its use."""
    for s in _sides(side):
        x, y = _place(ctx.an, s, zone, rng, lo, hi)
        yield s, x, y


def _lateral_place(fr: _LateralFrame, spec: LesionSpec, rng: np.random.Generator) -> tuple[float, float]:
    """Where a lesion sits on the lateral view (drawn for every kind with a lateral drawer)."""
    zone = spec.zone or ("upper", "middle", "lower")[int(rng.integers(0, 3))]
    zy = {"upper": (0.12, 0.32), "middle": (0.38, 0.58), "lower": (0.62, 0.8)}[zone]
    y = fr.apex + (fr.dome_a - fr.apex) * rng.uniform(*zy)
    x = rng.uniform(-0.08, 0.15) if zone != "lower" else rng.uniform(0.0, 0.16)
    return x, y


def _lung_mask_win(ctx: _Ctx, sl, sides=(-1, 1)):
    m = ctx.lung_m[sides[0]][sl]
    for s in sides[1:]:
        m = m + ctx.lung_m[s][sl]
    return np.clip(m, 0.0, 1.0)


def _disc(ctx, kind, x, y, r, dens, lobes: float = 0.0, rng=None, sharp=0.25, clip_lung=True):
    g = ctx.grid
    r = max(r, 0.9 / g.rh)  # at least about a pixel, so tiny images still show it
    R = r * (1.0 + lobes * 1.3)
    sl = g.win(x - R, x + R, y - R, y + R)
    if sl is None:
        return
    X, Y = g.X[sl] - x, g.Y[sl] - y
    d = np.sqrt(X * X + Y * Y)
    if lobes > 0 and rng is not None:
        th = np.arctan2(Y, X)
        p = rng.uniform(0, 2 * np.pi, size=3)
        rr = r * (1 + lobes * (np.sin(3 * th + p[0]) + 0.6 * np.sin(5 * th + p[1])
                               + 0.4 * np.sin(8 * th + p[2])) / 2.0)
    else:
        rr = r
    q = np.clip(1.0 - (d / rr) ** 2, 0.0, 1.0)
    edge = np.clip((rr - d) * (g.rh * sharp), 0.0, 1.0) if sharp else 1.0
    delta = dens * np.sqrt(q) * 0.6 + dens * 0.4 * edge * (q > 0)
    if clip_lung:
        delta = delta * (0.25 + 0.75 * _lung_mask_win(ctx, sl))
    ctx.apply(kind, sl, delta.astype(_F))


def _blob(ctx: _Ctx, kind: str, s: int, x: float, y: float, rx: float, ry: float,
          strength: float, rng: np.random.Generator, cell: float, patchy: float, hard: float):
    """Noise-modulated airspace opacity replacing a fraction of the local lung air."""
    g = ctx.grid
    sl = g.win(x - 1.3 * rx, x + 1.3 * rx, y - 1.3 * ry, y + 1.3 * ry)
    if sl is None:
        return
    X, Y = g.X[sl], g.Y[sl]
    d2 = ((X - x) / rx) ** 2 + ((Y - y) / ry) ** 2
    env = np.exp(-1.6 * d2)
    nz = _smooth_noise(rng, X.shape, cell * g.rh)
    field = env * (1.0 + patchy * nz) - 0.3
    m = np.clip(field * hard, 0.0, 1.0)
    m *= _lung_mask_win(ctx, sl, (s,))
    air = ctx.air[sl] + 0.06
    nz *= 0.08
    nz += 0.92 * strength
    delta = (nz * m) * air + ctx.V[sl] * 0.3 * m
    ctx.apply(kind, sl, delta.astype(_F), thr=0.15)


def _stroke_apply(ctx: _Ctx, kind: str, curves, width: float, dens) -> None:
    """Stroke ``curves`` and add them (``dens`` times the profile) to the attenuation map."""
    st = _stroke(ctx.grid, curves, width)
    if st is not None:
        ssl, prof = st
        ctx.apply(kind, ssl, (dens * prof).astype(_F), thr=0.2)


# ----------------------------------------------------------------------------------------------
# lesion kinds, each with its renderers side by side (the table, _LESIONS, follows):
#   modify(an, spec, side, rng) -> (anatomy, boxes(final anatomy, grid))   frontal anatomy change
#   frontal(ctx, spec, side, zone, rng)                                    frontal local drawing
#   lateral_shape(shape, sev) -> shape                                     lateral anatomy change
#   lateral(ctx, frame, spec, x, y, rng)                                   lateral drawing / box
# ----------------------------------------------------------------------------------------------

# --- cardiomegaly


def _cardiomegaly_modify(an: Anatomy, spec: LesionSpec, side: str, rng: np.random.Generator):
    target = 0.585 + 0.1 * _sev(spec) + rng.uniform(0.0, 0.04)
    k = max(1.12, target / cardiothoracic_ratio(an))
    new = replace(an, heart_a=an.heart_a * k, heart_b=an.heart_b * k,
                  heart_x=an.heart_x + 0.25 * (k - 1) * an.heart_a,
                  heart_y=an.heart_y - 0.15 * (k - 1) * an.heart_b)

    def boxes(fin, g):
        x0, x1, y0, y1 = _heart_extent(fin)
        return [g.rect_box(x0, x1, y0, min(y1, fin.dome_l + 0.03))]
    return new, boxes


def _cardiomegaly_lateral_shape(sh: _LateralShape, sev: float) -> _LateralShape:
    return replace(sh, heart_k=max(sh.heart_k, 1.22 + 0.15 * sev))


def _cardiomegaly_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    ctx.add_box(spec.kind, ctx.grid.rect_box(fr.hx - fr.ha, fr.hx + fr.ha, fr.hy - fr.hb,
                                             min(fr.hy + fr.hb, fr.dome_a + 0.04)))


# --- emphysema


def _emphysema_modify(an: Anatomy, spec: LesionSpec, side: str, rng: np.random.Generator):
    sev = _sev(spec)
    grow = 0.008 + 0.008 * sev
    sides = _sides(side)
    new = _sreplace(
        an, sides,
        dome=lambda v: v + 0.05 + 0.04 * sev,
        cp_scale=lambda v: v * (0.55 - 0.2 * sev),
        lung_lat=lambda v: v + grow,
        apex=lambda v: v - 0.01,
        air=lambda v: v * (1.22 + 0.12 * sev),
        vessel=lambda v: v * 0.55,
    )
    if len(sides) == 2:  # the heart sinks with the flattened diaphragm and looks narrow
        drop = 0.05 + 0.04 * sev
        new = replace(new, heart_y=an.heart_y + drop, heart_a=an.heart_a * 0.93,
                      heart_angle=an.heart_angle + 0.15)

    def boxes(fin, g):
        return [g.rect_box(*_lung_rect(fin, s)) for s in sides]
    return new, boxes


def _emphysema_lateral_shape(sh: _LateralShape, sev: float) -> _LateralShape:
    return replace(sh, emph=max(sh.emph, 0.6 + 0.4 * sev))


def _emphysema_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    ctx.add_box(spec.kind, ctx.grid.rect_box(fr.lx0, fr.lx1, fr.apex, fr.dome_p))


# --- hypoinflation and elevated diaphragm (raised domes)


def _raised_dome_modify(an: Anatomy, spec: LesionSpec, side: str, rng: np.random.Generator):
    sev = _sev(spec)
    if spec.kind == "elevated_diaphragm":
        sides = (-1,) if side == "right" else (1,)
        up = 0.05 + 0.05 * sev
    else:
        sides = _sides(side)
        up = 0.06 + 0.04 * sev
    new = _sreplace(an, sides, dome=lambda v: v - up)
    old = an

    def boxes(fin, g):
        out = []
        for s in sides:
            x0, x1, _, _ = _lung_rect(old, s)
            yd_old, yd_new = _sget(old, s, "dome"), _sget(fin, s, "dome")
            y1 = yd_old + max(_lung_params(old, s)[5], 0.085)
            out.append(g.rect_box(x0, x1, yd_new - 0.01, y1))
        return out
    return new, boxes


def _raised_dome_lateral_shape(sh: _LateralShape, sev: float) -> _LateralShape:
    return replace(sh, lift=max(sh.lift, 0.05 + 0.04 * sev))


def _raised_dome_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    ctx.add_box(spec.kind, ctx.grid.rect_box(fr.lx0, fr.lx1, fr.dome_a - 0.04, fr.dome_p + fr.shape.lift))


# --- scoliosis (frontal only)


def _scoliosis_modify(an: Anatomy, spec: LesionSpec, side: str, rng: np.random.Generator):
    amp = (0.025 + 0.03 * _sev(spec)) * (1 if rng.random() < 0.5 else -1)
    new = replace(an, scoliosis=amp, scoliosis_phase=float(rng.uniform(-0.4, 0.4)))

    def boxes(fin, g):
        ys = np.linspace(0.0, 1.0, 200)
        xc = _spine_center(fin, ys)
        moved = np.abs(xc - fin.spine_x) > 0.15 * abs(amp)
        ys_m = ys[moved]
        hw = fin.spine_hw * 1.3
        return [g.rect_box(float(xc.min()) - hw, float(xc.max()) + hw, float(ys_m.min()),
                           float(ys_m.max()))]
    return new, boxes


# --- aortic enlargement


def _aortic_enlargement_modify(an: Anatomy, spec: LesionSpec, side: str, rng: np.random.Generator):
    sev = _sev(spec)
    k = 1.35 + 0.35 * sev
    new = replace(an, knob_r=an.knob_r * k, knob_x=an.knob_x + (k - 1) * an.knob_r * 0.9,
                  knob_y=an.knob_y - 0.2 * (k - 1) * an.knob_r,
                  aorta_hw=an.aorta_hw * (1.1 + 0.2 * sev), aorta_bulge=0.012 + 0.016 * sev)

    def boxes(fin, g):
        ax = fin.knob_x - 0.35 * fin.knob_r
        x0 = min(fin.knob_x - fin.knob_r, ax - fin.aorta_hw - 0.012)
        x1 = max(fin.knob_x + fin.knob_r, ax + fin.aorta_hw + fin.aorta_bulge * 1.3)
        y1 = fin.knob_y + 0.5 * (fin.abdomen_y + 0.02 - fin.knob_y)
        return [g.rect_box(x0, x1, fin.knob_y - fin.knob_r, y1)]
    return new, boxes


def _aortic_enlargement_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    an, g, sev = fr.an, ctx.grid, _sev(spec)
    sl = g.win(-0.1, 0.16, an.knob_y - 0.05, an.knob_y + 0.2)
    if sl is not None:
        Xw, Yw = g.X[sl], g.Y[sl]
        ar_ = np.sqrt(((Xw - 0.03) / 0.085) ** 2 + ((Yw - an.knob_y - 0.06) / 0.075) ** 2)
        ring = np.exp(-(((ar_ - 1.0) / (0.3 + 0.15 * sev)) ** 2)) * (Yw < an.knob_y + 0.09)
        ctx.apply(spec.kind, sl, (0.08 * ring * (0.5 + ctx.air[sl])).astype(_F), thr=0.3)


# --- nodule, mass, granuloma (discs)


def _nodule_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    sev = _sev(spec)
    for _, x, y in _placed(ctx, side, zone, rng):
        _disc(ctx, spec.kind, x, y, 0.011 + 0.007 * sev + rng.uniform(0, 0.003), 0.13 + 0.04 * sev,
              lobes=0.05, rng=rng)


def _nodule_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    _disc(ctx, spec.kind, x, y, 0.012 + 0.007 * _sev(spec), 0.12, rng=rng)


def _mass_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    sev = _sev(spec)
    for _, x, y in _placed(ctx, side, zone, rng):
        _disc(ctx, spec.kind, x, y, 0.04 + 0.03 * sev + rng.uniform(0, 0.01), 0.17 + 0.05 * sev,
              lobes=0.15, rng=rng, sharp=0.1)


def _mass_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    _disc(ctx, spec.kind, x, y, 0.045 + 0.03 * _sev(spec), 0.15, lobes=0.12, rng=rng)


def _granuloma_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    sev = _sev(spec)
    for _, x, y in _placed(ctx, side, zone, rng):
        _disc(ctx, spec.kind, x, y, 0.0055 + 0.0025 * sev, 0.42, sharp=0.6)


def _granuloma_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    _disc(ctx, spec.kind, x, y, 0.006 + 0.002 * _sev(spec), 0.4, rng=rng)


# --- opacity, consolidation, pneumonia, infiltrate (airspace blobs; parameters in the table)


def _blob_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator, *,
                  size: float, strength: float, cell: float, patchy: float, hard: float):
    sev = _sev(spec)
    for s, x, y in _placed(ctx, side, zone, rng, 0.3, 0.75):
        r = size * (1.0 + 0.7 * sev) * rng.uniform(0.85, 1.15)
        _blob(ctx, spec.kind, s, x, y, r * rng.uniform(0.8, 1.15), r * rng.uniform(0.8, 1.2),
              strength * (0.85 + 0.2 * sev), rng, cell, patchy, hard)


def _blob_lateral(ctx, fr: _LateralFrame, spec, x, y, rng, *, strength: float) -> None:
    size = 0.06 * (1.0 + 0.6 * _sev(spec))
    _blob(ctx, spec.kind, -1, x, y, size, size * 0.9, strength, rng, 0.03, 0.6, 3.0)


# --- edema


def _kerley_b_lines(ctx: _Ctx, s: int, yd: float, sev: float, rng: np.random.Generator, sl, like):
    """Kerley B lines at the lateral base of lung ``s``, as a profile over window ``sl``
    (shaped like ``like``); None when none land in the image."""
    an, g = ctx.an, ctx.grid
    curves = []
    for _ in range(int(4 + 6 * sev)):
        yy = yd - rng.uniform(0.02, 0.14)
        xl = _lung_x_at(an, s, yy, 1.0) - s * 0.004
        curves.append(np.array([[xl, yy], [xl - s * rng.uniform(0.012, 0.025), yy]]))
    st = _stroke(g, curves, 0.0025)
    if st is None:
        return None
    ssl, prof = st
    lines = np.zeros_like(like)
    r0, c0 = sl[0].start, sl[1].start
    a0, a1 = max(ssl[0].start, r0), min(ssl[0].stop, sl[0].stop)
    b0, b1 = max(ssl[1].start, c0), min(ssl[1].stop, sl[1].stop)
    if a1 > a0 and b1 > b0:
        lines[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = prof[
            a0 - ssl[0].start:a1 - ssl[0].start, b0 - ssl[1].start:b1 - ssl[1].start]
    return lines


def _edema_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    for s in _sides(side):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        hx, hy = s * 0.1, an.carina_y + 0.11
        sl = g.win(*sorted((xc - s * am, xc + s * al)), ya, yd + cp)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        rx, ry = 0.11 + 0.05 * sev, 0.12 + 0.04 * sev
        d2 = ((X - hx) / rx) ** 2 + ((Y - hy) / ry) ** 2
        rho, _, _ = _lung_shape(an, s, X, Y)
        m = np.exp(-d2) * np.clip(1.15 - rho ** 3, 0.0, 1.0)
        m *= 1.0 + 0.35 * _smooth_noise(rng, X.shape, 0.03 * g.rh)
        m = np.clip(m, 0.0, 1.0) * ctx.lung_m[s][sl]
        delta = (0.45 + 0.25 * sev) * m * (ctx.air[sl] + 0.05)
        if sev > 0:  # Kerley B lines at the lateral bases
            lines = _kerley_b_lines(ctx, s, yd, sev, rng, sl, delta)
            if lines is not None:
                delta = delta + 0.06 * lines * ctx.lung_m[s][sl]
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.2)


def _edema_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:  # perihilar haze
    size = 0.06 * (1.0 + 0.6 * _sev(spec)) + 0.04
    _blob(ctx, spec.kind, -1, 0.03, fr.hil_y, size, size * 0.9, 0.55, rng, 0.03, 0.6, 3.0)


# --- pleural effusion


def _pleural_effusion_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    for s in _sides(side):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        h = 0.07 + 0.2 * sev ** 1.2 + rng.uniform(0, 0.03)  # rise above the costophrenic angle
        y_lat = yd + cp - h
        x0, x1 = sorted((xc - s * am, xc + s * (al + 0.01)))
        sl = g.win(x0, x1, y_lat - 0.03, yd + cp + 0.01)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        lat = (X - xc) * s / al  # 1 at the lateral wall
        # meniscus: highest against the lateral wall, concave upwards
        w = np.clip((1.0 - lat) * (1.0 / 1.5), 0.0, 1.0)
        w = 1.0 - w
        w *= w
        ym = y_lat + (0.02 + 0.3 * h) * (1.0 - w)
        fill = np.clip((Y - ym) * (1.0 / (0.02 + 1.5 / g.rh)), 0.0, 1.0)
        m = fill * ctx.lung_m[s][sl]
        delta = m * (ctx.air[sl] + ctx.V[sl])
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.15)


def _pleural_effusion_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    g, sev = ctx.grid, _sev(spec)
    lx0, lx1, dome_p = fr.lx0, fr.lx1, fr.dome_p
    h = 0.04 + 0.18 * sev
    sl = g.win(-0.05, lx1 + 0.02, dome_p - h - 0.08, dome_p + 0.02)
    if sl is not None:
        Xw, Yw = g.X[sl], g.Y[sl]
        uu = np.clip((Xw - lx0) / (lx1 - lx0), 0.0, 1.0)
        ym = dome_p - h + (0.04 + 0.5 * h) * (1.0 - uu) ** 1.5
        m = np.clip((Yw - ym) * g.rh / (0.025 * g.rh + 1.0), 0.0, 1.0) * ctx.lung_m[-1][sl]
        ctx.apply(spec.kind, sl, (m * (ctx.air[sl] * 0.9 + ctx.V[sl] + 0.04)).astype(_F))


# --- pneumothorax (frontal only)


def _pneumothorax_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    for s in _sides(side):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        tau = 0.1 + 0.12 * sev + rng.uniform(0, 0.03)
        ylim = ya + (yd - ya) * (0.4 + 0.45 * sev)
        x0, x1 = sorted((xc - s * am, xc + s * al))
        sl = g.win(x0, x1, ya - 0.01, ylim + 0.03)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        rho, dia, dx = _lung_shape(an, s, X, Y)
        s_in = 1.0 - tau
        region = _ss(rho, s_in - 0.004, s_in + 0.004) * _ss(Y, ylim + 0.03, ylim - 0.03)
        region *= _ss(dx, -0.45 * am, -0.2 * am)
        lm = ctx.lung_m[s][sl]
        lucent = region * lm * (ctx.V[sl] + 0.07 * ctx.air[sl] + 0.03)
        w = 0.0022 * (1.0 / max(al, 0.05))
        line = np.exp(-(((rho - s_in) / w) ** 2)) * _ss(Y, ylim + 0.03, ylim - 0.03)
        line *= _ss(dx, -0.45 * am, -0.2 * am) * lm
        delta = 0.07 * line - lucent
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.15)


# --- atelectasis


def _atelectasis_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    g = ctx.grid
    sev = _sev(spec)
    for s, x, y in _placed(ctx, side, zone if spec.zone else "lower", rng, 0.25, 0.7):
        L = 0.05 + 0.05 * sev + rng.uniform(0, 0.02)
        T = 0.007 + 0.008 * sev
        th = rng.uniform(-0.35, 0.35) - s * 0.15
        c, sn = math.cos(th), math.sin(th)
        sl = g.win(x - L, x + L, y - L, y + L)
        if sl is None:
            continue
        X, Y = g.X[sl] - x, g.Y[sl] - y
        u = (c * X + sn * Y) / L
        v = (-sn * X + c * Y) / T
        m = np.clip(1.0 - u * u, 0.0, 1.0) * np.exp(-(v * v) * 1.5)
        m *= 1.0 + 0.25 * _smooth_noise(rng, X.shape, 0.01 * g.rh)
        m = np.clip(m, 0.0, 1.0) * _lung_mask_win(ctx, sl, (s,))
        delta = m * (ctx.air[sl] * 0.9 + 0.05)
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.2)


def _atelectasis_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    sev = _sev(spec)
    _blob(ctx, spec.kind, -1, x, y, 0.06 + 0.03 * sev, 0.012 + 0.006 * sev, 0.9, rng, 0.02, 0.3, 4.0)


# --- fibrosis (coarse, peripheral, basal by default) and interstitial (fine) reticulation


def _reticular_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator, *,
                       coarse: bool):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    if spec.zone is None and coarse:
        zone = "lower"
    for s in _sides(side):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        lo, hi = {"upper": (0.0, 0.42), "middle": (0.3, 0.72), "lower": (0.55, 1.05)}[zone]
        y0, y1 = ya + (yd - ya) * lo, ya + (yd - ya) * hi
        x0, x1 = sorted((xc - s * am, xc + s * al))
        sl = g.win(x0, x1, y0, y1)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        cell = (0.011 if coarse else 0.007) * (1.0 + 0.3 * sev)
        nz = _smooth_noise(rng, X.shape, cell * g.rh)
        net = np.exp(-((nz / (0.22 + 0.08 * sev)) ** 2))
        band = _ss(Y, y0, y0 + 0.04) * _ss(Y, y1, y1 - 0.04)
        rho, _, dx = _lung_shape(an, s, X, Y)
        periph = np.clip(0.35 + rho, 0.0, 1.0) if coarse else 1.0
        m = net * band * periph * ctx.lung_m[s][sl]
        dens = (0.3 + 0.2 * sev) if coarse else (0.22 + 0.15 * sev)
        delta = dens * m * (ctx.air[sl] + 0.05)
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.25)


def _reticular_lateral(ctx, fr: _LateralFrame, spec, x, y, rng, *, top: float, cell: float) -> None:
    g, sev = ctx.grid, _sev(spec)
    y0 = fr.apex + (fr.dome_a - fr.apex) * top
    sl = g.win(fr.lx0, fr.lx1, y0, fr.dome_p)
    if sl is not None:
        nz = _smooth_noise(rng, g.X[sl].shape, cell * g.rh)
        m = np.exp(-((nz / (0.22 + 0.08 * sev)) ** 2)) * ctx.lung_m[-1][sl] * _ss(g.Y[sl], y0, y0 + 0.05)
        ctx.apply(spec.kind, sl, ((0.3 + 0.2 * sev) * m * (ctx.air[sl] + 0.05)).astype(_F), thr=0.25)


# --- pleural thickening (frontal only)


def _pleural_thickening_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    for s in _sides(side):
        xc, al, am, ya, yd, cp = _lung_params(an, s)
        apical = zone == "upper"
        y0, y1 = (ya - 0.01, ya + 0.12) if apical else (
            (ya + 0.2 * (yd - ya), ya + 0.55 * (yd - ya)) if zone == "middle"
            else (ya + 0.55 * (yd - ya), yd + cp))
        x0, x1 = sorted((xc - s * am, xc + s * (al + 0.01)))
        sl = g.win(x0, x1, y0, y1)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        rho, dia, dx = _lung_shape(an, s, X, Y)
        t = max(0.007 + 0.007 * sev, 1.5 / g.rh) / al
        m = _ss(rho, 1.0 - t - 0.006, 1.0 - t + 0.002) * _ss(Y, y0, y0 + 0.02) * _ss(Y, y1, y1 - 0.02)
        m *= _ss(dx, -0.3 * am, 0.0)
        m *= 1.0 + 0.2 * _smooth_noise(rng, X.shape, 0.02 * g.rh)
        m = np.clip(m, 0.0, 1.0) * ctx.lung_m[s][sl]
        delta = m * (ctx.air[sl] * 0.95 + 0.05)
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.2)


# --- calcification (the aortic knob's rim, or a cluster of dense specks)


def _calcification_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    kind, sev = spec.kind, _sev(spec)
    s = _sides(side)[0]
    if s > 0 and rng.random() < 0.6:  # calcified aortic knob rim
        r = an.knob_r * 1.02
        a0 = rng.uniform(-2.6, -2.2)
        a1 = rng.uniform(-0.7, -0.2) if sev > 0 else a0 + 1.0
        th = np.linspace(a0, a1, 24)
        curve = np.stack([an.knob_x + r * np.cos(th), an.knob_y + r * np.sin(th)], axis=1)
        _stroke_apply(ctx, kind, [curve], 0.0035 + 0.001 * sev, 0.32)
        return
    x, y = _place(an, s, zone, rng, 0.25, 0.8)
    n = int(3 + 4 * sev + rng.integers(0, 3))
    rad = 0.015 + 0.01 * sev
    pts = np.array([x, y]) + rng.uniform(-rad, rad, size=(n, 2))
    sl = g.win(x - rad - 0.01, x + rad + 0.01, y - rad - 0.01, y + rad + 0.01)
    if sl is None:
        return
    X, Y = g.X[sl], g.Y[sl]
    delta = np.zeros(X.shape, _F)
    for px_, py_ in pts:
        r = max(rng.uniform(0.0025, 0.0045), 0.9 / g.rh)
        d2 = ((X - px_) ** 2 + (Y - py_) ** 2) / (r * r)
        delta = np.maximum(delta, 0.38 * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) ** 0.5)
    ctx.apply(kind, sl, delta.astype(_F), thr=0.2)


def _calcification_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:  # the arch's rim
    ar_c = np.linspace(-2.6, -0.6, 20)
    curve = np.stack([0.03 + 0.085 * np.cos(ar_c), fr.an.knob_y + 0.06 + 0.075 * np.sin(ar_c)], axis=1)
    _stroke_apply(ctx, spec.kind, [curve], 0.0035, 0.3)


# --- hiatal hernia (a retrocardiac air-fluid bubble)


def _hiatal_hernia_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    r = 0.038 + 0.02 * sev + rng.uniform(0, 0.008)
    x = 0.02 + rng.uniform(-0.01, 0.02)
    y = an.dome_l - 0.55 * r
    sl = g.win(x - r, x + r, y - r, y + r)
    if sl is None:
        return
    X, Y = g.X[sl] - x, g.Y[sl] - y
    d2 = (X * X + Y * Y) / (r * r)
    inside = np.clip((1.0 - d2) * (0.3 * g.rh * r), 0.0, 1.0)
    level = -0.25 * r
    air = inside * np.clip((level - Y) * g.rh * 0.7, 0.0, 1.0)
    wall = np.exp(-(((np.sqrt(d2) - 1.0) * r / 0.004) ** 2))
    delta = 0.12 * inside * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) + 0.06 * inside - 0.19 * air
    delta += 0.03 * wall
    ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.15)


def _hiatal_hernia_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    g = ctx.grid
    r = 0.04 + 0.02 * _sev(spec)
    cx_, cy_ = 0.06, fr.dome_a + 0.01
    sl = g.win(cx_ - r, cx_ + r, cy_ - r, cy_ + r)
    if sl is not None:
        Xw, Yw = g.X[sl] - cx_, g.Y[sl] - cy_
        d2 = (Xw * Xw + Yw * Yw) / (r * r)
        inside = np.clip((1.0 - d2) * 0.3 * g.rh * r, 0.0, 1.0)
        airp = inside * np.clip((-0.25 * r - Yw) * g.rh * 0.7, 0.0, 1.0)
        ctx.apply(spec.kind, sl, (0.15 * inside - 0.2 * airp).astype(_F))


# --- rib fracture (frontal only)


def _fracture_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, g = ctx.an, ctx.grid
    sev = _sev(spec)
    for s in _sides(side):
        rib = int(rng.integers(4, 9)) - 1 + 0.5 * an.rib_width
        dd = rng.uniform(0.18, 0.26)
        if zone == "upper":
            rib = int(rng.integers(2, 5)) - 1 + 0.5 * an.rib_width
        elif zone == "lower":
            rib = int(rng.integers(6, 10)) - 1 + 0.5 * an.rib_width
        y = _rib_phi_y(an, rib, dd)
        x = an.spine_x + s * dd
        hw = 0.03
        sl = g.win(x - hw, x + hw, y - hw, y + hw)
        if sl is None:
            continue
        X, Y = g.X[sl], g.Y[sl]
        before = _rib_field(an, X, Y, s)
        step = (0.009 + 0.007 * sev) * (1 if rng.random() < 0.5 else -1)
        after = _rib_field(an, X, Y, s, step=step, x_step=dd)
        # fracture line: a thin lucent gap across the rib, and a local window around it
        gap = np.exp(-((((X - x) * s) / (0.0045 + 0.0015 * sev)) ** 2))
        local = np.exp(-(((X - x) / 0.022) ** 2) - ((Y - y) / 0.02) ** 2)
        after = after * (1.0 - 0.95 * gap)
        delta = (_RIB * an.bone) * (after - before) * local
        delta += 0.02 * local * np.exp(-(((X - x) / 0.008) ** 2)) * (before > 0.1)  # callus
        ctx.apply(spec.kind, sl, delta.astype(_F), thr=0.2)


# --- spondylosis (osteophytes at the disc levels)


def _spondylosis_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an = ctx.an
    sev = _sev(spec)
    n = int(2 + 2 * sev + rng.integers(0, 2))
    y_start = rng.uniform(0.35, 0.7 - 0.056 * n)
    curves = []
    for i in range(n):
        # disc level near y: find next end plate
        yy = y_start + i * an.vert_h
        t = (yy - 0.02) / an.vert_h + an.vert_phase
        yd_ = (math.floor(t) + 0.83 - an.vert_phase) * an.vert_h + 0.02
        cx = float(_spine_center(an, np.float64(yd_)))
        hw = an.spine_hw * (0.85 + 0.35 * yd_)
        for sd in (-1, 1):
            if rng.random() < 0.8:
                ln = 0.007 + 0.008 * sev + rng.uniform(0, 0.004)
                for dy in (-0.008, 0.008):
                    if rng.random() < 0.75:
                        p0 = (cx + sd * hw * 0.9, yd_ + dy * 1.2)
                        p1 = (cx + sd * (hw + ln), yd_ + dy * 0.3)
                        curves.append(np.array([p0, p1]))
    if not curves:
        cx = float(_spine_center(an, np.float64(y_start)))
        curves.append(np.array([(cx + an.spine_hw * 0.9, y_start), (cx + an.spine_hw + 0.01, y_start)]))
    _stroke_apply(ctx, spec.kind, curves, 0.005, 0.2 * an.bone)


def _spondylosis_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:
    an, sev = fr.an, _sev(spec)
    curves = []
    for k in range(int(3 + 2 * sev)):
        yy = 0.45 + an.vert_h * k
        xs = float(0.175 + 0.03 * np.sin(np.pi * yy)) - 0.036
        curves.append(np.array([(xs + 0.004, yy - 0.012), (xs - 0.012 - 0.006 * sev, yy - 0.003)]))
        curves.append(np.array([(xs + 0.004, yy + 0.012), (xs - 0.012 - 0.006 * sev, yy + 0.003)]))
    _stroke_apply(ctx, spec.kind, curves, 0.005, 0.2)


# --- device (lines, leads, wires, pacemaker, tubes: each adds curves and closed outlines)


def _central_line(an: Anatomy, s: int, rng: np.random.Generator, curves: list, blobs: list) -> None:
    start = (s * rng.uniform(0.2, 0.28), an.clav_y_lat + rng.uniform(0.03, 0.06))
    ctrl = [start, (s * 0.12, an.clav_y_med + 0.04), (s * 0.04 - 0.02, an.knob_y),
            (-0.025, an.carina_y + rng.uniform(0.05, 0.11))]
    if s < 0 and rng.random() < 0.5:  # right internal jugular approach
        ctrl = [(-0.06, -0.01), (-0.045, 0.1), (-0.03, an.knob_y),
                (-0.025, an.carina_y + rng.uniform(0.05, 0.11))]
    curves.append(_spline(ctrl, 24))


def _ecg_leads(an: Anatomy, s: int, rng: np.random.Generator, curves: list, blobs: list) -> None:
    for _ in range(int(rng.integers(3, 6))):
        cx_, cy_ = rng.uniform(-0.3, 0.3), rng.uniform(0.18, 0.7)
        blobs.append((cx_, cy_, 0.009))
        ex = cx_ + rng.uniform(-0.15, 0.15)
        curves.append(_spline([(cx_, cy_), ((cx_ + ex) / 2, cy_ + rng.uniform(0.05, 0.12)),
                               (ex, cy_ + rng.uniform(0.12, 0.25))], 16))


def _sternal_wires(an: Anatomy, s: int, rng: np.random.Generator, curves: list, blobs: list) -> None:
    for i in range(int(rng.integers(4, 7))):
        yy = 0.26 + 0.055 * i
        xx = rng.uniform(-0.01, 0.01)
        th = np.linspace(0, 2 * np.pi, 20)
        curves.append(np.stack([xx + 0.009 * np.cos(th), yy + 0.005 * np.sin(th)], axis=1))


def _pacemaker(an: Anatomy, s: int, rng: np.random.Generator, curves: list, blobs: list) -> None:
    px_ = s * rng.uniform(0.2, 0.27)
    py_ = an.clav_y_lat + 0.07
    blobs.append((px_, py_, 0.026))
    curves.append(_spline([(px_, py_), (s * 0.1, an.clav_y_med + 0.03),
                           (-0.02, an.knob_y + 0.05), (-0.03, an.heart_y - 0.04),
                           (an.heart_x + 0.07, an.heart_y + 0.05)], 24))


def _tubes(an: Anatomy, s: int, rng: np.random.Generator, curves: list, blobs: list) -> None:
    """Endotracheal + nasogastric tubes."""
    curves.append(np.array([(an.trachea_x - 0.006, -0.01), (an.trachea_x + 0.001, an.carina_y - 0.05)]))
    curves.append(np.array([(an.trachea_x + 0.006, -0.01), (an.trachea_x + 0.013, an.carina_y - 0.05)]))
    curves.append(_spline([(0.01, -0.01), (0.015, 0.4), (0.03, an.dome_l - 0.05),
                           (an.lung_off_l, an.dome_l + 0.06)], 24))


#: device name -> what it adds (the order is part of the random draw of which ones appear)
_DEVICES: dict[str, Callable] = {"central_line": _central_line, "ecg": _ecg_leads,
                                 "sternal_wires": _sternal_wires, "pacemaker": _pacemaker, "tubes": _tubes}


def _device_frontal(ctx: _Ctx, spec: LesionSpec, side: str, zone: str, rng: np.random.Generator):
    an, sev = ctx.an, _sev(spec)
    n = 1 if sev == 0 else (int(rng.integers(1, 3)) if sev == 0.5 else int(rng.integers(2, 4)))
    choices = rng.permutation(list(_DEVICES))[:n]
    s = _sides(side)[0]
    curves, blobs = [], []
    for dev in choices:
        _DEVICES[str(dev)](an, s, rng, curves, blobs)
    for bx, by, br in blobs:  # ECG electrode snaps / pacemaker generator as closed outlines
        th = np.linspace(0, 2 * np.pi, 24)
        for rr in np.linspace(br * 0.3, br, 4 if br > 0.015 else 2):
            curves.append(np.stack([bx + rr * np.cos(th), by + 0.75 * rr * np.sin(th)], axis=1))
    _stroke_apply(ctx, spec.kind, curves, 0.003, 0.3)


def _device_lateral(ctx, fr: _LateralFrame, spec, x, y, rng) -> None:  # a line down the SVC
    an = fr.an
    curve = _spline([(-0.1, -0.01), (-0.07, 0.15), (-0.05, an.carina_y), (-0.06, an.carina_y + 0.1)], 24)
    _stroke_apply(ctx, spec.kind, [curve], 0.003, 0.3)


# ----------------------------------------------------------------------------------------------
# the lesion table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LesionKind:
    """How one lesion kind is rendered, in both views (signatures in the section header above).

    A kind either changes the anatomy before it is drawn (``modify``: the frontal box comes from
    the changed geometry) or draws into the attenuation map (``frontal``). On the lateral view
    ``lateral_shape`` changes the lateral geometry and ``lateral`` draws (or boxes) the lesion; a
    kind without ``lateral`` is not drawn there and gets no box.
    """

    modify: Callable | None = None
    frontal: Callable | None = None
    lateral_shape: Callable | None = None
    lateral: Callable | None = None


_LESIONS: dict[str, _LesionKind] = {
    "cardiomegaly": _LesionKind(modify=_cardiomegaly_modify, lateral_shape=_cardiomegaly_lateral_shape,
                                lateral=_cardiomegaly_lateral),
    "emphysema": _LesionKind(modify=_emphysema_modify, lateral_shape=_emphysema_lateral_shape,
                             lateral=_emphysema_lateral),
    "hypoinflation": _LesionKind(modify=_raised_dome_modify, lateral_shape=_raised_dome_lateral_shape,
                                 lateral=_raised_dome_lateral),
    "elevated_diaphragm": _LesionKind(modify=_raised_dome_modify, lateral_shape=_raised_dome_lateral_shape,
                                      lateral=_raised_dome_lateral),
    "scoliosis": _LesionKind(modify=_scoliosis_modify),
    "aortic_enlargement": _LesionKind(modify=_aortic_enlargement_modify, lateral=_aortic_enlargement_lateral),
    "nodule": _LesionKind(frontal=_nodule_frontal, lateral=_nodule_lateral),
    "mass": _LesionKind(frontal=_mass_frontal, lateral=_mass_lateral),
    "granuloma": _LesionKind(frontal=_granuloma_frontal, lateral=_granuloma_lateral),
    # blob parameters: size, strength, noise cell, patchiness, edge hardness
    "opacity": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.055, strength=0.55, cell=0.03, patchy=0.7, hard=2.5),
        lateral=functools.partial(_blob_lateral, strength=0.55)),
    "consolidation": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.06, strength=0.95, cell=0.04, patchy=0.45, hard=3.5),
        lateral=functools.partial(_blob_lateral, strength=0.9)),
    "pneumonia": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.075, strength=0.85, cell=0.035, patchy=0.55, hard=3.0),
        lateral=functools.partial(_blob_lateral, strength=0.85)),
    "infiltrate": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.06, strength=0.5, cell=0.014, patchy=1.3, hard=2.5),
        lateral=functools.partial(_blob_lateral, strength=0.55)),
    "edema": _LesionKind(frontal=_edema_frontal, lateral=_edema_lateral),
    "pleural_effusion": _LesionKind(frontal=_pleural_effusion_frontal, lateral=_pleural_effusion_lateral),
    "pneumothorax": _LesionKind(frontal=_pneumothorax_frontal),
    "atelectasis": _LesionKind(frontal=_atelectasis_frontal, lateral=_atelectasis_lateral),
    "fibrosis": _LesionKind(frontal=functools.partial(_reticular_frontal, coarse=True),
                            lateral=functools.partial(_reticular_lateral, top=0.55, cell=0.011)),
    "interstitial": _LesionKind(frontal=functools.partial(_reticular_frontal, coarse=False),
                                lateral=functools.partial(_reticular_lateral, top=0.3, cell=0.007)),
    "pleural_thickening": _LesionKind(frontal=_pleural_thickening_frontal),
    "calcification": _LesionKind(frontal=_calcification_frontal, lateral=_calcification_lateral),
    "hiatal_hernia": _LesionKind(frontal=_hiatal_hernia_frontal, lateral=_hiatal_hernia_lateral),
    "fracture": _LesionKind(frontal=_fracture_frontal),
    "spondylosis": _LesionKind(frontal=_spondylosis_frontal, lateral=_spondylosis_lateral),
    "device": _LesionKind(frontal=_device_frontal, lateral=_device_lateral),
}
assert set(_LESIONS) == set(LESION_KINDS), sorted(set(_LESIONS) ^ set(LESION_KINDS))
assert all((k.modify is None) != (k.frontal is None) for k in _LESIONS.values())


# ----------------------------------------------------------------------------------------------
# film / detector
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# public renderers
# ----------------------------------------------------------------------------------------------


def _draw_frontal_anatomy(ctx: _Ctx, tex_rng: np.random.Generator) -> None:
    _draw_body(ctx, tex_rng)
    _draw_lungs(ctx)
    occ = _mediastinum(ctx)
    ctx.air *= 1.0 - occ
    ctx.A -= ctx.air
    _draw_soft_extras(ctx)
    _airways(ctx)
    _draw_vessels(ctx, tex_rng, occ)
    _draw_spine(ctx)
    _draw_ribs(ctx)
    _draw_clavicles(ctx)
    _draw_shoulders(ctx)


def render_frontal(anatomy: Anatomy, rows: int, cols: int, lesions: Sequence[LesionSpec],
                   rng: np.random.Generator, *, view: str = "PA") -> tuple[np.ndarray, list[Box]]:
    """Render a frontal (PA or AP) chest radiograph with ``lesions``.

    Returns ``(image, boxes)``: a float32 ``(rows, cols)`` array in [0, 1] (1 = dense/bright) and
    one :class:`Box` per rendered lesion (two, one per side, for bilateral ones), in pixels.
    """
    if view not in FRONTAL_VIEWS:
        raise ValueError(f"view must be 'PA' or 'AP', not {view!r}")
    lesions = list(lesions)
    _check_args(rows, cols, lesions)
    rows, cols = int(rows), int(cols)
    _warm_allocator()
    tex_rng, noise_rng, les_seed = _streams(rng)
    an = _apply_view(anatomy, view)

    # resolve sides/zones; anatomy-modifying lesions change the anatomy before drawing
    resolved = []
    for i, spec in enumerate(lesions):
        lrng = np.random.default_rng([les_seed, i])
        side, zone = _resolve(spec, lrng)
        resolved.append((spec, side, zone, lrng))
    pending_boxes: list[tuple[str, Callable]] = []
    for spec, side, zone, lrng in resolved:
        modify = _LESIONS[spec.kind].modify
        if modify is not None:
            an, fn = modify(an, spec, side, lrng)
            pending_boxes.append((spec.kind, fn))

    rh, cw = _work_shape(rows, cols)
    grid = _Grid(rh, cw, an.shift_x, an.shift_y, an.rotation)
    ctx = _Ctx(an, grid, view)
    _draw_frontal_anatomy(ctx, tex_rng)
    for kind, fn in pending_boxes:
        for b in fn(an, grid):
            ctx.add_box(kind, b)
    for spec, side, zone, lrng in resolved:
        draw = _LESIONS[spec.kind].frontal
        if draw is not None:
            draw(ctx, spec, side, zone, lrng)

    P = _film(an, ctx.A)
    img = _finish(an, P, rows, cols, noise_rng)
    return img, _to_boxes(ctx, rows, cols)


def render_lateral(anatomy: Anatomy, rows: int, cols: int, lesions: Sequence[LesionSpec],
                   rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """Render a left-lateral chest radiograph (patient facing image left, spine on the right).

    Lesions are drawn in simplified form; kinds without a lateral sketch (pneumothorax,
    pleural thickening, fracture, scoliosis) are skipped and get no box.
    """
    lesions = list(lesions)
    _check_args(rows, cols, lesions)
    rows, cols = int(rows), int(cols)
    _warm_allocator()
    tex_rng, noise_rng, les_seed = _streams(rng)
    an = anatomy
    shape = _LateralShape()
    resolved = []
    for i, spec in enumerate(lesions):
        change = _LESIONS[spec.kind].lateral_shape
        if change is not None:
            shape = change(shape, _sev(spec))
        resolved.append((spec, np.random.default_rng([les_seed, i])))

    rh, cw = _work_shape(rows, cols)
    ctx = _Ctx(an, _Grid(rh, cw, an.shift_x * 0.5, an.shift_y, an.rotation * 0.5), "LL")
    fr = _lateral_frame(an, shape)
    _draw_lateral_anatomy(ctx, fr, tex_rng)
    for spec, lrng in resolved:
        draw = _LESIONS[spec.kind].lateral
        if draw is not None:
            x, y = _lateral_place(fr, spec, lrng)
            draw(ctx, fr, spec, x, y, lrng)

    P = _film(an, ctx.A, a0=0.8)
    img = _finish(an, P, rows, cols, noise_rng)
    return img, _to_boxes(ctx, rows, cols)

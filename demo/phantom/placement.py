"""Lesions: shared placement and shapes: a spec's severity, side and zone; points in a
lung (frontal) or in the lateral frame; and the discs, blobs and strokes lesion kinds draw."""

from __future__ import annotations

import math

import numpy as np

from ..lesions import LesionSpec
from .anatomy import Anatomy, _lung_params, _sget
from .grid import _Ctx, _F, _smooth_noise, _stroke
from .lateral import _LateralFrame

_SEVERITY_SCALE = {"mild": 0.0, "moderate": 0.5, "severe": 1.0}


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

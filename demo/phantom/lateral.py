"""Lateral anatomy (height units; anterior = image left, spine on the right): the lateral
shape and its frame, then body, vessels, lungs, airways and bones drawn into a render context."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .anatomy import Anatomy
from .frontal import _band_profile, _draw_vessels, _spine_field
from .grid import _Ctx, _F, _Grid, _smooth_noise, _ss, _with_anatomy


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

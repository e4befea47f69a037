"""Frontal anatomy drawn into a render context: body, lungs, heart and mediastinum, airways,
spine, ribs, clavicles, shoulders, soft-tissue extras and the vessel tree."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, _lung_params, _sget
from .grid import _Ctx, _F, _resize, _smooth_noise, _ss

_RIB = 0.095  #: rib attenuation


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

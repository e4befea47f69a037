"""Lesion kinds, each with its renderers side by side (the table, ``_LESIONS``, is in
:mod:`.table`; the device kind is in :mod:`.devices`)::

    modify(an, spec, side, rng) -> (anatomy, boxes(final anatomy, grid))   frontal anatomy change
    frontal(ctx, spec, side, zone, rng)                                    frontal local drawing
    lateral_shape(shape, sev) -> shape                                     lateral anatomy change
    lateral(ctx, frame, spec, x, y, rng)                                   lateral drawing / box
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..lesions import LesionSpec
from .anatomy import Anatomy, _lung_params, _sget, _sreplace, cardiothoracic_ratio
from .frontal import _RIB, _heart_extent, _lung_shape, _rib_field, _rib_phi_y, _spine_center
from .grid import _Ctx, _F, _smooth_noise, _ss, _stroke
from .lateral import _LateralFrame, _LateralShape
from .placement import (_blob, _disc, _lung_mask_win, _lung_rect, _lung_x_at, _place, _placed, _sev, _sides,
                        _stroke_apply)


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

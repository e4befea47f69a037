"""The device lesion kind: central lines, ECG leads, sternal wires, a pacemaker, tubes;
each adds curves and closed outlines, drawn on the frontal view (a line down the SVC on the
lateral)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..lesions import LesionSpec
from .anatomy import Anatomy
from .grid import _Ctx, _spline
from .lateral import _LateralFrame
from .placement import _sev, _sides, _stroke_apply


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

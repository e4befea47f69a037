"""A study's anatomy: :class:`Anatomy`, its sampling (:func:`sample_anatomy`), the frontal
views' changes to it (PA/AP), per-side accessors, and what is measured from it (heart and thoracic
widths, the cardiothoracic ratio). Geometry in height units (see :mod:`offclip.demo.phantom`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

_YCEN = 0.6  #: lungs reach full width at this fraction of apex -> dome


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

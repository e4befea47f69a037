"""The public renderers: :func:`render_frontal` (PA or AP) and :func:`render_lateral`."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ...data_contracts.enums import FRONTAL_VIEWS
from ..lesions import Box, LesionSpec
from .anatomy import Anatomy, _apply_view
from .film import _check_args, _film, _finish, _streams, _to_boxes, _warm_allocator, _work_shape
from .frontal import (_airways, _draw_body, _draw_clavicles, _draw_lungs, _draw_ribs, _draw_shoulders,
                      _draw_soft_extras, _draw_spine, _draw_vessels, _mediastinum)
from .grid import _Ctx, _Grid
from .lateral import _LateralShape, _draw_lateral_anatomy, _lateral_frame
from .placement import _lateral_place, _resolve, _sev
from .table import _LESIONS


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

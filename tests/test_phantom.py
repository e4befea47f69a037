"""Tests for the synthetic chest radiograph renderer (offclip.demo.phantom)."""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import pytest

from offclip.demo.lesions import LESION_KINDS, Box, LesionSpec
from offclip.demo.phantom import (
    Anatomy,
    cardiothoracic_ratio,
    heart_width,
    render_frontal,
    render_lateral,
    sample_anatomy,
    thoracic_width,
)

ROWS, COLS = 700, 580  # the demo size
SMALL = (420, 348)  # per-kind sweeps run smaller to keep the file fast
TINY = (280, 232)

#: kinds drawn in one lung (side honoured, image half predictable)
LUNG_KINDS = ("nodule", "mass", "granuloma", "opacity", "consolidation", "pneumonia", "infiltrate",
              "pneumothorax", "pleural_effusion", "atelectasis", "pleural_thickening", "fibrosis",
              "interstitial", "edema", "fracture", "elevated_diaphragm")


def anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed))


def frontal(seed: int, lesions=(), size=(ROWS, COLS), rng_seed: int | None = None, **kw):
    rows, cols = size
    rng = np.random.default_rng(seed + 1000 if rng_seed is None else rng_seed)
    return render_frontal(anatomy(seed), rows, cols, list(lesions), rng, **kw)


@functools.lru_cache(maxsize=None)
def _normal(seed: int, size, rng_seed, view):
    img, boxes = frontal(seed, [], size=size, rng_seed=rng_seed, view=view)
    img.setflags(write=False)
    return img, tuple(boxes)


def normal(seed: int, size=(ROWS, COLS), rng_seed: int | None = None, view: str = "PA"):
    """The lesion-free render of a study (cached: many tests compare against it)."""
    img, boxes = _normal(seed, tuple(size), rng_seed, view)
    return img, list(boxes)


@functools.lru_cache(maxsize=None)
def normal_lateral(seed: int, size, rng_seed: int):
    img, boxes = render_lateral(anatomy(seed), *size, [], np.random.default_rng(rng_seed))
    img.setflags(write=False)
    return img, tuple(boxes)


def assert_box_inside(box: Box, rows: int, cols: int) -> None:
    assert isinstance(box, Box)
    assert 0 <= box.x_min < box.x_max <= cols, box
    assert 0 <= box.y_min < box.y_max <= rows, box
    assert all(isinstance(v, int) for v in (box.x_min, box.y_min, box.x_max, box.y_max)), box


def box_mask(boxes, rows, cols) -> np.ndarray:
    m = np.zeros((rows, cols), bool)
    for b in boxes:
        m[b.y_min:b.y_max, b.x_min:b.x_max] = True
    return m


def centre(box: Box) -> tuple[float, float]:
    return (box.x_min + box.x_max) / 2.0, (box.y_min + box.y_max) / 2.0


# ---------------------------------------------------------------------------------------------
# basic contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(ROWS, COLS), (512, 512), (300, 420), (64, 48)])
@pytest.mark.parametrize("view", ["PA", "AP"])
def test_frontal_shape_dtype_range(size, view):
    img, boxes = frontal(3, size=size, view=view)
    assert img.shape == size
    assert img.dtype == np.float32
    assert np.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.std() > 0.1  # not a flat image
    assert boxes == []  # a normal study has no lesion


def test_lateral_shape_dtype_range():
    img, boxes = render_lateral(anatomy(4), ROWS, COLS, [], np.random.default_rng(0))
    assert img.shape == (ROWS, COLS) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.1
    assert boxes == []


def test_anatomy_is_frozen_and_sampling_deterministic():
    a, b, c = anatomy(7), anatomy(7), anatomy(8)
    assert a == b and a != c
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.heart_a = 0.3  # type: ignore[misc]


def test_sampled_anatomies_are_normal_and_vary():
    ctrs = [cardiothoracic_ratio(anatomy(s)) for s in range(40)]
    assert max(ctrs) < 0.52 and min(ctrs) > 0.36
    assert np.std(ctrs) > 0.005
    for s in range(40):
        an = anatomy(s)
        assert an.dome_r < an.dome_l  # the right hemidiaphragm is higher
        # the right lung (image left) is slightly larger (wider)
        assert an.lung_lat_r + an.lung_med_r > an.lung_lat_l + an.lung_med_l


def test_invalid_arguments():
    an = anatomy(0)
    with pytest.raises(ValueError):
        render_frontal(an, ROWS, COLS, [], np.random.default_rng(0), view="LL")
    with pytest.raises(ValueError):
        render_frontal(an, 8, 8, [], np.random.default_rng(0))
    with pytest.raises(TypeError):
        render_frontal(an, ROWS, COLS, ["nodule"], np.random.default_rng(0))  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def test_deterministic_same_seed_identical():
    les = [LesionSpec("nodule"), LesionSpec("pleural_effusion", side="left", severity="moderate")]
    a, ba = frontal(11, les, rng_seed=5)
    b, bb = frontal(11, les, rng_seed=5)
    assert np.array_equal(a, b) and ba == bb
    la, lba = render_lateral(anatomy(11), ROWS, COLS, les, np.random.default_rng(5))
    lb, lbb = render_lateral(anatomy(11), ROWS, COLS, les, np.random.default_rng(5))
    assert np.array_equal(la, lb) and lba == lbb


def test_different_seed_differs():
    a, _ = frontal(11, rng_seed=5)
    b, _ = frontal(11, rng_seed=6)  # same anatomy, different texture/noise
    c, _ = frontal(12, rng_seed=5)  # different anatomy
    assert not np.array_equal(a, b)
    assert np.abs(a - b).mean() > 1e-3
    assert np.abs(a - c).mean() > 0.02  # anatomy changes more than noise


def test_uses_only_the_rng_passed_in():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    frontal(2, [LesionSpec("mass"), LesionSpec("device", severity="severe")])
    render_lateral(anatomy(2), 200, 160, [LesionSpec("nodule")], np.random.default_rng(1))
    assert np.random.random() == expected
    # and the caller's generator advances identically whatever the lesions are
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    render_frontal(anatomy(2), 200, 160, [], r1)
    render_frontal(anatomy(2), 200, 160, [LesionSpec("mass"), LesionSpec("edema")], r2)
    assert r1.integers(1 << 30) == r2.integers(1 << 30)


def test_ap_view_differs_from_pa():
    pa, _ = normal(5, rng_seed=1, view="PA")
    ap, _ = normal(5, rng_seed=1, view="AP")
    assert np.abs(pa - ap).mean() > 0.005
    assert heart_width(anatomy(5), "AP") > heart_width(anatomy(5), "PA")


# ---------------------------------------------------------------------------------------------
# looks like a chest radiograph
# ---------------------------------------------------------------------------------------------


def test_coarse_radiographic_layout():
    for seed in range(4):
        an = anatomy(seed)
        img, _ = frontal(seed)
        rows, cols = img.shape
        # air outside the body (lower corners) is dark
        assert img[-rows // 20:, : cols // 25].mean() < 0.15
        assert img[-rows // 20:, -cols // 25:].mean() < 0.15
        # both lungs are darker than the mediastinum/spine column and the upper abdomen
        y_lung = int(rows * (an.apex_r + 0.55 * (an.dome_r - an.apex_r)))
        x_mid = cols // 2 + int(an.spine_x * rows)
        x_rl = cols // 2 - int(an.lung_off_r * rows)
        x_ll = cols // 2 + int((an.lung_off_l + 0.04) * rows)
        r = rows // 40
        lung_r = img[y_lung - r:y_lung + r, x_rl - r:x_rl + r].mean()
        lung_l = img[y_lung - r:y_lung + r, x_ll - r:x_ll + r].mean()
        column = img[y_lung - r:y_lung + r, x_mid - r:x_mid + r].mean()
        y_abd = int(rows * (an.dome_l + 0.12))
        abdomen = img[y_abd - r:y_abd + r, cols // 2 - 4 * r:cols // 2 - 2 * r].mean()
        assert lung_r < column - 0.2 and lung_l < column - 0.2
        assert lung_r < abdomen - 0.2 and lung_l < abdomen - 0.2
        assert 0.1 < lung_r < 0.6 and column > 0.6


def test_lateral_lungs_darker_than_spine_and_abdomen():
    img, _ = render_lateral(anatomy(1), ROWS, COLS, [], np.random.default_rng(3))
    rows, cols = img.shape
    lung = img[int(0.3 * rows):int(0.4 * rows), int(0.45 * cols):int(0.55 * cols)].mean()
    abdomen = img[int(0.85 * rows):int(0.95 * rows), int(0.35 * cols):int(0.5 * cols)].mean()
    assert lung < abdomen - 0.15


# ---------------------------------------------------------------------------------------------
# every lesion kind: boxes inside, pixels inside the box change
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity,seed", [("mild", 21), ("moderate", 22), ("severe", 23)])
@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
def test_every_kind_changes_pixels_inside_its_box(kind, severity, seed):
    rows, cols = SMALL
    spec = LesionSpec(kind, severity=severity)
    base, none = normal(seed, size=SMALL, rng_seed=seed)
    img, boxes = frontal(seed, [spec], size=SMALL, rng_seed=seed)
    assert none == []
    assert 1 <= len(boxes) <= 2, boxes
    for b in boxes:
        assert b.kind == kind
        assert_box_inside(b, rows, cols)
        # each box (not only their union) covers a visible change
        d = np.abs(img - base)[b.y_min:b.y_max, b.x_min:b.x_max]
        assert d.mean() > 0.002, (b, d.mean())
        assert d.max() > 0.04, (b, d.max())
    inside = box_mask(boxes, rows, cols)
    diff = np.abs(img - base)
    d_in, d_out = diff[inside].mean(), diff[~inside].mean()
    assert d_in > 5 * d_out, (d_in, d_out)
    # the change is concentrated in the box: most of it lies inside
    assert diff[inside].sum() > 0.7 * diff.sum()


@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
def test_every_kind_at_demo_size_with_explicit_side_and_zone(kind):
    spec = LesionSpec(kind, side="right", zone="middle", severity="moderate")
    base, _ = normal(30, rng_seed=1)
    img, boxes = frontal(30, [spec], rng_seed=1)
    assert len(boxes) == 1  # unilateral: exactly one box
    (b,) = boxes
    assert b.kind == kind
    assert_box_inside(b, ROWS, COLS)
    inside = box_mask(boxes, ROWS, COLS)
    diff = np.abs(img - base)
    assert diff[inside].mean() > 5 * diff[~inside].mean()


def test_bilateral_lesions_give_one_box_per_side():
    for kind in ("edema", "pleural_effusion", "nodule", "fibrosis", "emphysema", "pneumothorax"):
        _, boxes = frontal(8, [LesionSpec(kind, side="bilateral", severity="moderate")])
        assert len(boxes) == 2 and {b.kind for b in boxes} == {kind}, (kind, boxes)
        xs = sorted(centre(b)[0] for b in boxes)
        assert xs[0] < COLS / 2 < xs[1], (kind, boxes)


def test_several_lesions_at_once():
    les = [LesionSpec(k, severity="moderate") for k in
           ("cardiomegaly", "pleural_effusion", "nodule", "device", "fracture", "edema")]
    img, boxes = frontal(14, les)
    kinds = [b.kind for b in boxes]
    for spec in les:
        assert spec.kind in kinds
    for b in boxes:
        assert_box_inside(b, ROWS, COLS)
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_tiny_image_keeps_boxes_inside():
    rows, cols = 48, 40
    for kind in LESION_KINDS:
        img, boxes = frontal(3, [LesionSpec(kind, severity="severe")], size=(rows, cols))
        assert img.shape == (rows, cols)
        for b in boxes:
            assert_box_inside(b, rows, cols)


# ---------------------------------------------------------------------------------------------
# side, zone, severity and specific findings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LUNG_KINDS)
def test_side_is_honoured(kind):
    rows, cols = TINY
    for seed, zone in ((40, "upper"), (41, "middle"), (42, "lower")):
        _, left = frontal(seed, [LesionSpec(kind, side="left", zone=zone)], size=TINY)
        _, right = frontal(seed, [LesionSpec(kind, side="right", zone=zone)], size=TINY)
        # patient left = image right
        assert len(left) == 1 and centre(left[0])[0] > cols / 2, (kind, zone, left)
        assert len(right) == 1 and centre(right[0])[0] < cols / 2, (kind, zone, right)


@pytest.mark.parametrize("kind", ["nodule", "mass", "opacity", "consolidation", "granuloma", "atelectasis"])
def test_zone_is_honoured(kind):
    for seed in (50, 51, 52):
        ys = {}
        for zone in ("upper", "middle", "lower"):
            _, (b,) = frontal(seed, [LesionSpec(kind, side="left", zone=zone)], size=TINY)
            ys[zone] = centre(b)[1]
        assert ys["upper"] < ys["middle"] < ys["lower"], (kind, ys)


def test_side_none_is_drawn_from_rng_and_both_sides_occur():
    halves = set()
    for seed in range(12):
        _, (b,) = frontal(seed, [LesionSpec("nodule")], size=TINY)
        halves.add(centre(b)[0] > TINY[1] / 2)
    assert halves == {True, False}


def test_severity_scales_size():
    for kind in ("mass", "pleural_effusion", "consolidation", "pneumothorax"):
        areas = []
        for sev in ("mild", "severe"):
            _, (b,) = frontal(60, [LesionSpec(kind, side="right", zone="middle", severity=sev)])
            areas.append((b.x_max - b.x_min) * (b.y_max - b.y_min))
        assert areas[1] > 1.3 * areas[0], (kind, areas)


def test_nodule_mass_granuloma_sizes_and_brightness():
    sizes = {}
    for kind in ("granuloma", "nodule", "mass"):
        base, _ = normal(61, rng_seed=3)
        img, (b,) = frontal(61, [LesionSpec(kind, side="left", zone="middle")], rng_seed=3)
        sizes[kind] = max(b.x_max - b.x_min, b.y_max - b.y_min)
        d = (img - base)[b.y_min:b.y_max, b.x_min:b.x_max]
        assert d.max() > 0.08 and d.mean() > 0  # denser, not lucent
    assert sizes["granuloma"] < sizes["nodule"] < sizes["mass"]


def test_pneumothorax_is_lucent_with_a_pleural_line():
    base, _ = frontal(62, [], rng_seed=3)
    img, (b,) = frontal(62, [LesionSpec("pneumothorax", side="right", severity="moderate")], rng_seed=3)
    d = (img - base)[b.y_min:b.y_max, b.x_min:b.x_max]
    assert (d < -0.02).mean() > 0.1  # a sizeable darker (lucent) rim ...
    assert (d > 0.02).sum() > 20  # ... bounded by a thin brighter line
    assert centre(b)[0] < COLS / 2


def test_pleural_effusion_is_basal_and_dense():
    an = anatomy(63)
    base, _ = frontal(63, [], rng_seed=3)
    img, (b,) = frontal(63, [LesionSpec("pleural_effusion", side="left", severity="moderate")], rng_seed=3)
    d = (img - base)[b.y_min:b.y_max, b.x_min:b.x_max]
    assert d.mean() > 0.05
    assert b.y_max > (an.dome_l + an.cp_depth - 0.03) * ROWS  # reaches the costophrenic angle
    # the fluid is densest low down, not at its upper margin
    h = d.shape[0]
    assert d[h // 2:].mean() > d[: h // 4].mean()


def test_cardiomegaly_widens_the_heart():
    for seed in (70, 71, 72, 73):
        an = anatomy(seed)
        for view in ("PA", "AP"):
            base, _ = normal(seed, rng_seed=2, view=view)
            img, (b,) = frontal(seed, [LesionSpec("cardiomegaly")], rng_seed=2, view=view)
            width = b.x_max - b.x_min
            assert width > 1.15 * heart_width(an, view) * ROWS
            assert width / (thoracic_width(an) * ROWS) > 0.55  # cardiothoracic ratio
            # the image changes along the heart borders: brighter where lung became heart
            d = img - base
            assert d[b.y_min:b.y_max, b.x_min:b.x_max].mean() > 0.02
            # at mid-heart level, the bright cardiac silhouette is wider than before
            y = (b.y_min + 2 * b.y_max) // 3
            row_b, row_c = base[y], img[y]
            thr = 0.55
            assert (row_c[b.x_min:b.x_max] > thr).sum() > (row_b[b.x_min:b.x_max] > thr).sum() + 10


def test_emphysema_and_hypoinflation_move_the_diaphragm():
    an = anatomy(80)
    base, _ = frontal(80, [], rng_seed=2)
    col = COLS // 2 - int(an.lung_off_r * ROWS)  # through the right lung
    # the lung/diaphragm edge is the last dark->bright transition along this column
    def dome_row(img):
        v = img[: int(0.9 * ROWS), col]
        return int(np.flatnonzero(v < 0.45).max())

    emph, _ = frontal(80, [LesionSpec("emphysema", severity="severe")], rng_seed=2)
    hypo, _ = frontal(80, [LesionSpec("hypoinflation", severity="severe")], rng_seed=2)
    assert dome_row(emph) > dome_row(base) + 0.03 * ROWS
    assert dome_row(hypo) < dome_row(base) - 0.03 * ROWS
    # emphysematous lungs are darker (hyperlucent)
    y = int((an.apex_r + 0.5 * (an.dome_r - an.apex_r)) * ROWS)
    assert emph[y - 10:y + 10, col - 10:col + 10].mean() < base[y - 10:y + 10, col - 10:col + 10].mean() - 0.02


def test_elevated_diaphragm_is_one_sided():
    _, (b,) = frontal(81, [LesionSpec("elevated_diaphragm", side="left", severity="moderate")])
    assert centre(b)[0] > COLS / 2
    _, (b,) = frontal(81, [LesionSpec("elevated_diaphragm", side="right", severity="moderate")])
    assert centre(b)[0] < COLS / 2


def test_midline_findings_are_central():
    for kind in ("scoliosis", "spondylosis", "hiatal_hernia", "aortic_enlargement"):
        _, (b,) = frontal(82, [LesionSpec(kind, severity="moderate")])
        cx = centre(b)[0]
        assert 0.3 * COLS < cx < 0.7 * COLS, (kind, b)


# ---------------------------------------------------------------------------------------------
# sizes and speed
# ---------------------------------------------------------------------------------------------


def test_full_size_render_works_and_is_fast():
    rows, cols = 2500, 2048
    les = [LesionSpec("nodule", side="left"), LesionSpec("pleural_effusion", side="right", severity="moderate"),
           LesionSpec("cardiomegaly"), LesionSpec("device")]
    an = anatomy(90)
    render_frontal(an, 256, 256, les, np.random.default_rng(0))  # warm caches
    t = time.perf_counter()
    img, boxes = render_frontal(an, rows, cols, les, np.random.default_rng(0))
    elapsed = time.perf_counter() - t
    assert img.shape == (rows, cols) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert sorted(b.kind for b in boxes) == sorted(s.kind for s in les)
    for b in boxes:
        assert_box_inside(b, rows, cols)
    assert elapsed < 3.0, elapsed
    # boxes scale with the image: same study rendered at demo size gives proportional boxes
    _, small = render_frontal(an, ROWS, int(ROWS * cols / rows), les, np.random.default_rng(0))
    for bb, bs in zip(sorted(boxes, key=lambda b: b.kind), sorted(small, key=lambda b: b.kind)):
        assert abs(centre(bb)[0] / cols - centre(bs)[0] / (ROWS * cols / rows)) < 0.03
        assert abs(centre(bb)[1] / rows - centre(bs)[1] / ROWS) < 0.03


def test_full_size_lateral():
    img, boxes = render_lateral(anatomy(91), 2500, 2048, [LesionSpec("cardiomegaly")], np.random.default_rng(0))
    assert img.shape == (2500, 2048) and img.min() >= 0.0 and img.max() <= 1.0
    assert len(boxes) == 1
    assert_box_inside(boxes[0], 2500, 2048)


def test_demo_size_is_fast():
    an = anatomy(92)
    render_frontal(an, ROWS, COLS, [], np.random.default_rng(0))
    t = time.perf_counter()
    n = 5
    for i in range(n):
        render_frontal(an, ROWS, COLS, [LesionSpec("nodule")], np.random.default_rng(i))
    assert (time.perf_counter() - t) / n < 0.5


# ---------------------------------------------------------------------------------------------
# lateral view lesions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
def test_lateral_lesions_boxes_inside_and_change_pixels(kind):
    rows, cols = SMALL
    an = anatomy(95)
    base, _ = normal_lateral(95, SMALL, 1)
    img, boxes = render_lateral(an, rows, cols, [LesionSpec(kind, severity="moderate")], np.random.default_rng(1))
    assert len(boxes) <= 1
    for b in boxes:
        assert b.kind == kind
        assert_box_inside(b, rows, cols)
    diff = np.abs(img - base)
    if boxes:
        inside = box_mask(boxes, rows, cols)
        assert diff[inside].mean() > 5 * diff[~inside].mean()
        assert diff[inside].max() > 0.04
    else:
        assert diff.max() == 0.0  # a lesion that is not drawn leaves the image untouched


#: kinds without a lateral sketch (render_lateral's docstring): not drawn there, no box
NOT_ON_LATERAL = {"pneumothorax", "pleural_thickening", "fracture", "scoliosis"}


def test_lesion_table_has_one_row_per_kind_with_both_views():
    from offclip.demo.phantom import _LESIONS

    assert set(_LESIONS) == set(LESION_KINDS)
    for kind, row in _LESIONS.items():
        # an anatomy change (boxed from the changed geometry) or a local drawing, never both
        assert (row.modify is None) != (row.frontal is None), kind
    assert {k for k, row in _LESIONS.items() if row.lateral is None} == NOT_ON_LATERAL


@pytest.mark.parametrize("kind", sorted(LESION_KINDS))
def test_lateral_box_exactly_for_kinds_with_a_lateral_sketch(kind):
    rows, cols = SMALL
    _, boxes = render_lateral(anatomy(95), rows, cols, [LesionSpec(kind, severity="moderate")],
                              np.random.default_rng(1))
    assert len(boxes) == (0 if kind in NOT_ON_LATERAL else 1)

"""pipeline.numerics: the one Youden cut and the one warm-up factor behind the classifier and the
dual encoder give exactly what each of their former implementations gave (copied here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from offclip.models.evaluate import class_metrics
from offclip.pipeline.classifier import calibrate_threshold
from offclip.pipeline.numerics import warmup_factor, youden_cut


# -- the former implementations, verbatim ----------------------------------------------------
def _old_calibrate_threshold(scores, abnormal):  # pipeline/classifier/evaluation.py
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(abnormal, dtype=bool)
    n_pos, n_neg = int(a.sum()), int((~a).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("calibration needs both normal and abnormal reports")
    cands = np.unique(s)[::-1]  # descending
    best = (-1.0, 0.5)
    for i, t in enumerate(cands):
        pred = s >= t
        ba = 0.5 * ((pred & a).sum() / n_pos + (~pred & ~a).sum() / n_neg)
        if ba > best[0] + 1e-12:
            lower = cands[i + 1] if i + 1 < len(cands) else t
            best = (float(ba), float((t + lower) / 2))
    return best[1], best[0]


def _old_youden_threshold(y, s):  # models/evaluate.py::class_metrics
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def _old_trainer_factor(step, warmup, total, kind):  # models/schedule.py::Schedule._factor
    if step < warmup:
        return (step + 1) / warmup
    if kind != "cosine":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _old_classifier_factor(s, warm, total):  # pipeline/classifier/training.py::_finetune
    return min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))


def _cases(n_cases: int, seed: int):
    """Random scores with many ties (few levels) and without, both labels present."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_cases:
        n = int(rng.integers(2, 80))
        levels = int(rng.integers(1, 15))
        s = rng.integers(0, levels + 1, n) / levels if len(out) % 3 else rng.random(n)
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        if y.all() or not y.any():
            continue
        out.append((s, y))
    return out


# -- Youden -----------------------------------------------------------------------------------
def test_class_metrics_threshold_is_roc_curves_argmax():
    for s, y in _cases(1000, 0):
        assert youden_cut(s, y, call_none=True).threshold == _old_youden_threshold(y.astype(int), s)
        m = class_metrics(y.astype(float), s)
        assert m["threshold"] == _old_youden_threshold(y.astype(int), s)


def test_calibrate_threshold_is_the_former_loop():
    for s, y in _cases(3000, 1):
        assert calibrate_threshold(s, y) == _old_calibrate_threshold(s, y)  # bit for bit


def test_the_two_tie_rules_differ_and_each_is_kept():
    # cuts at 1.0 (tp 3, fp 2) and at 0.5 (tp 9, fp 8) have the same J = 1/9 as fractions, but
    # 3/9 - 2/9 and 1 - 8/9 differ by one ulp in float64: roc_curve's argmax takes the later one
    # (0.5); the classifier's tolerance keeps the first, the highest threshold (1.0).
    s = [1.0] * 5 + [0.5] * 12 + [0.0]
    y = np.array([1, 1, 1, 0, 0] + [1] * 6 + [0] * 6 + [0], dtype=bool)
    assert _old_youden_threshold(y.astype(int), s) == 0.5
    assert class_metrics(y.astype(float), s)["threshold"] == 0.5
    assert youden_cut(s, y, call_none=True).threshold == 0.5
    assert _old_calibrate_threshold(s, y) == (0.75, pytest.approx(5 / 9))
    assert calibrate_threshold(s, y) == _old_calibrate_threshold(s, y)
    assert youden_cut(s, y, tie_tol=2e-12).threshold == 1.0


def test_youden_cut_fields_and_errors():
    cut = youden_cut([0.9, 0.3, 0.3, 0.1], [True, False, True, False], call_none=True)
    assert (cut.threshold, cut.lower, cut.tp, cut.fp, cut.n_pos, cut.n_neg) == (0.9, 0.3, 1, 0, 2, 2)
    # "call nothing positive" wins when no cut beats J = 0
    assert youden_cut([1.0, 0.0], [False, True], call_none=True).threshold == math.inf
    assert youden_cut([1.0, 0.0], [False, True]).threshold == 0.0  # without it: the best real cut
    with pytest.raises(ValueError, match="both"):
        youden_cut([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="1-D"):
        youden_cut([0.1, 0.2], [True])


# -- warm-up ----------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 20), (10, 10), (5, 3), (7, 100), (1, 1), (6, 107)])
def test_warmup_factor_is_the_trainers_former_factor(warmup, total):
    for step in range(total + 10):
        assert warmup_factor(step, warmup, total, "cosine") == _old_trainer_factor(step, warmup, total, "cosine")
        assert warmup_factor(step, warmup, total, "constant") == _old_trainer_factor(step, warmup, total, "plateau")


@pytest.mark.parametrize("total", [1, 2, 16, 17, 100, 1001])
def test_warmup_factor_is_the_classifiers_former_lambda(total):
    warm = max(1, int(0.06 * total))
    for step in range(total + 10):
        assert warmup_factor(step, warm, total, "linear") == _old_classifier_factor(step, warm, total)


def test_warmup_factor_unknown_decay():
    with pytest.raises(ValueError, match="unknown decay"):
        warmup_factor(5, 1, 10, "step")

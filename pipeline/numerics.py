"""Small numeric helpers shared by the sentence classifier (``pipeline/``) and the dual encoder
(``models/``): the Youden cut of a score and the warm-up learning-rate factor. No torch import."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DECAYS", "YoudenCut", "warmup_factor", "youden_cut"]

#: what follows the linear warm-up in :func:`warmup_factor`
DECAYS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class YoudenCut:
    """The best cut "positive iff score >= ``threshold``" of :func:`youden_cut`."""

    threshold: float  #: a score value (``inf``: call nothing positive)
    lower: float  #: the next lower distinct score (``threshold`` itself when there is none)
    tp: int  #: positives at or above the threshold
    fp: int  #: negatives at or above the threshold
    n_pos: int
    n_neg: int

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.tp / self.n_pos + (self.n_neg - self.fp) / self.n_neg)


def youden_cut(scores: ArrayLike, positive: ArrayLike, *, call_none: bool = False, tie_tol: float = 0.0) -> YoudenCut:
    """The threshold maximising Youden's J = TPR - FPR (equivalently, balanced accuracy) of
    "positive iff score >= t", over the distinct scores (and, with ``call_none``, ``inf``: call
    nothing positive, J = 0, as ``sklearn.metrics.roc_curve``'s first point).

    J_k = tp_k / n_pos - fp_k / n_neg in float64, the same arithmetic as ``roc_curve``'s
    ``tpr - fpr``. Ties go to the highest threshold: the first candidate (thresholds descending)
    that beats every earlier one by more than ``tie_tol``. ``tie_tol=0`` is ``np.argmax`` over
    the floats — two cuts with the same J as fractions can differ by one rounding ulp, and the
    ulp decides (models.evaluate's ``class_metrics``); ``tie_tol=2e-12`` counts those as ties
    (the classifier's ``calibrate_threshold``; distinct J differ by >= 1 / (n_pos n_neg)).
    """
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(positive, dtype=bool)
    if s.shape != a.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {a.shape} must be 1-D and equal in length")
    n_pos, n_neg = int(a.sum()), int((~a).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a Youden cut needs both positives and negatives")
    candidates = np.unique(s)[::-1]  # descending
    tp = n_pos - np.searchsorted(np.sort(s[a]), candidates, side="left")
    fp = n_neg - np.searchsorted(np.sort(s[~a]), candidates, side="left")
    if call_none:
        candidates, tp, fp = np.r_[np.inf, candidates], np.r_[0, tp], np.r_[0, fp]
    j = tp / n_pos - fp / n_neg
    if tie_tol <= 0:
        best = int(np.argmax(j))
    else:
        best = 0
        for k in range(1, len(j)):
            if j[k] > j[best] + tie_tol:
                best = k
    lower = candidates[best + 1] if best + 1 < len(candidates) else candidates[best]
    return YoudenCut(float(candidates[best]), float(lower), int(tp[best]), int(fp[best]), n_pos, n_neg)


def warmup_factor(step: int, warmup: int, total: int, decay: str = "cosine") -> float:
    """The learning-rate factor at (0-based) ``step`` for ``torch.optim.lr_scheduler.LambdaLR``:
    linear warm-up ``(step + 1) / warmup`` over the first ``warmup`` steps, then ``decay``:
    ``cosine`` to 0 at ``total``, ``linear`` to 0 at ``total`` (clipped at 0 beyond it), or
    ``constant`` 1. Used by the dual encoder's trainer (``models/train.py``: cosine, or constant
    before ReduceLROnPlateau) and the classifier's fine-tuning (linear)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    span = max(1, total - warmup)
    if decay == "linear":
        return max(0.0, (total - step) / span)
    if decay == "cosine":
        progress = min(1.0, (step - warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown decay {decay!r}; known: {', '.join(DECAYS)}")

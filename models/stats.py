"""Statistics of the ablation: ROC AUC (ties counted as half), embedding compactness, and the
paired bootstrap of an AUC difference between two arms.

The paired bootstrap answers "how sure are we that arm A beats the baseline B on *this* kind of
evaluation set?". Both arms are evaluated on the same images; one bootstrap replicate draws
``n`` images with replacement and computes, for every seed, ``metric(A_seed) - metric(B_seed)`` on
the *same* drawn images (paired within a seed), then averages over the seeds (pooled). The
interval is the percentile interval of the replicates; the point estimate is the mean over seeds
of the difference on the full set. Seed-to-seed spread is reported beside it (``per_seed``).

When several images are renders of one report (the demo world's powered evaluation set), they are
not independent: ``groups`` (a report id per image) makes it a cluster bootstrap — a replicate
draws reports with replacement and takes all their images — so the interval is not made narrower
by repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

__all__ = ["auc", "auc_rows", "Difference", "paired_bootstrap", "macro_auc", "compactness"]


def auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (NaN labels ignored; NaN when one class is
    absent). Ties count one half (the Mann–Whitney statistic)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    known = ~np.isnan(y)
    return float(auc_rows(y[known][None, :], s[known][None, :])[0])


def auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row-wise AUC of ``scores`` ``[R, n]`` for 0/1 ``labels`` ``[R, n]`` (each row its own
    resample); NaN for a row without both classes."""
    labels = np.asarray(labels, dtype=float)
    ranks = rankdata(np.asarray(scores, dtype=float), axis=1)  # average ranks: ties count one half
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUC over the columns (classes) of ``[n, C]`` labels and scores where it is defined."""
    values = [auc(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def compactness(embeddings: np.ndarray, is_normal: np.ndarray, centre: bool = False) -> dict[str, float]:
    """Mean cosine similarity among normal images, among abnormal images, and between the two
    (``normal_normal``, ``abnormal_abnormal``, ``normal_abnormal``; a pair is two different images).
    ``centre``: subtract the mean embedding first (what is left is the structure, not a shared
    direction: near-collapsed towers read ~1 everywhere before centring)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if centre:
        x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    normal = np.asarray(is_normal, dtype=bool)
    a, b = x[normal], x[~normal]

    def within(m: np.ndarray) -> float:
        n = len(m)
        if n < 2:
            return math.nan
        total = m.sum(axis=0)
        return float((total @ total - (m * m).sum()) / (n * (n - 1)))

    across = float((a.sum(axis=0) @ b.sum(axis=0)) / (len(a) * len(b))) if len(a) and len(b) else math.nan
    return {"normal_normal": within(a), "abnormal_abnormal": within(b), "normal_abnormal": across}


@dataclass
class Difference:
    """A paired difference ``A - B`` of one metric, pooled over seeds, with its interval."""

    metric: str
    estimate: float
    low: float
    high: float
    per_seed: list[float] = field(default_factory=list)
    n_images: int = 0
    n_boot: int = 0
    level: float = 0.95
    n_groups: int | None = None  #: clusters resampled (None: images resampled one by one)

    @property
    def seed_sd(self) -> float:
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else math.nan

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "per_seed": list(self.per_seed),
            "seed_sd": self.seed_sd,
            "n_images": self.n_images,
            "n_boot": self.n_boot,
            "level": self.level,
            "n_groups": self.n_groups,
        }

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.estimate):
            return "n/a"
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def weighted_auc_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one class under each row of integer ``weights`` ``[R, n]`` (how often each image is
    in a resample): the Mann–Whitney statistic with multiplicities, ties counting one half; equal
    to the AUC of the resampled images. Images whose label is NaN get weight 0. NaN for a row
    without both classes."""
    y = np.asarray(labels, dtype=float)
    known = ~np.isnan(y)
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    s_sorted, y_sorted = np.asarray(scores, dtype=float)[order], y[order]
    w = np.asarray(weights, dtype=float)[:, order] * known[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # blocks of tied scores
    positive = np.where(y_sorted == 1, 1.0, 0.0)
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - positive) * known[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _metric_rows(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric on each resample: ``labels`` ``[n, C]``, ``scores`` ``[n, C]``, ``weights``
    ``[R, n]`` (multiplicities) → ``[R]``, the mean over the columns of the per-column AUC (one
    column: that AUC)."""
    stacked = np.vstack([weighted_auc_rows(labels[:, c], scores[:, c], weights) for c in range(labels.shape[1])])
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(stacked)).sum(axis=0)
        return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """Multiplicities ``[R, n]`` of the draws ``index`` ``[R, k]``."""
    counts = np.zeros((index.shape[0], n))
    np.add.at(counts, (np.repeat(np.arange(index.shape[0]), index.shape[1]), index.ravel()), 1.0)
    return counts


def paired_bootstrap(
    labels: np.ndarray,
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    metric: str = "auc",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 250,
    groups: Sequence | None = None,
) -> Difference:
    """The pooled paired difference ``mean_seed(metric(a_s) - metric(b_s))`` with a percentile
    bootstrap interval over images.

    ``labels``: ``[n]`` (one class) or ``[n, C]`` (the metric is then the macro AUC over the
    columns); ``a``/``b``: per seed, scores of the same shape, in the same image order (the same
    seeds in the same order). Every replicate uses one draw of images for all seeds and both arms.
    ``groups``: a cluster id per image (e.g. the report it was rendered from): replicates draw
    clusters instead of images."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired bootstrap needs the same seeds in both arms (got {len(a)} and {len(b)})")
    y = np.asarray(labels, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    n = y.shape[0]
    shaped = []
    for arm in (a, b):
        scores = [np.asarray(s, dtype=float) for s in arm]
        scores = [s[:, None] if s.ndim == 1 else s for s in scores]
        if any(s.shape != y.shape for s in scores):
            raise ValueError(f"scores must have the labels' shape {y.shape}")
        shaped.append(scores)
    full = np.ones((1, n))
    per_seed = [float(_metric_rows(y, sa, full)[0] - _metric_rows(y, sb, full)[0]) for sa, sb in zip(*shaped)]
    estimate = float(np.mean(per_seed))
    rng = np.random.default_rng(seed)
    replicates = []
    n_groups = None
    if groups is None:
        for start in range(0, n_boot, chunk):
            weights = _counts(rng.integers(0, n, size=(min(chunk, n_boot - start), n)), n)
            diffs = [_metric_rows(y, sa, weights) - _metric_rows(y, sb, weights) for sa, sb in zip(*shaped)]
            replicates.append(np.mean(diffs, axis=0))
    else:
        codes, members = _clusters(groups, n)
        n_groups = len(members)
        for start in range(0, n_boot, chunk):
            drawn = _counts(rng.integers(0, n_groups, size=(min(chunk, n_boot - start), n_groups)), n_groups)
            weights = drawn[:, codes]  # every image of a drawn report, as often as the report was drawn
            diffs = [_metric_rows(y, sa, weights) - _metric_rows(y, sb, weights) for sa, sb in zip(*shaped)]
            replicates.append(np.mean(diffs, axis=0))
    values = np.concatenate(replicates)
    values = values[~np.isnan(values)]
    tail = (1.0 - level) / 2.0
    low, high = (float(np.quantile(values, q)) for q in (tail, 1.0 - tail)) if len(values) else (math.nan, math.nan)
    return Difference(metric, estimate, low, high, per_seed, n, n_boot, level, n_groups)


def _clusters(groups: Sequence, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(cluster code per image, image indices of each cluster) for ``groups`` of length ``n``."""
    values = np.asarray(list(groups), dtype=object)
    if len(values) != n:
        raise ValueError(f"groups must name a cluster for each of the {n} images, got {len(values)}")
    _, codes = np.unique(values.astype(str), return_inverse=True)
    return codes, [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]

"""Metrics: per class AUC, Youden threshold, accuracy and FP/FN (:func:`class_metrics`), the
pointing game (:func:`pointing_hit`), the per-class table and the summary, the mechanism metrics
(embedding compactness, the prompt-free normal AUC)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .datasets import NORMAL
from .images import Geometry

TABLE_COLUMNS = (
    "class_name",
    "kind",
    "n_pos",
    "n_neg",
    "n_unknown",
    "auc",
    "threshold",
    "accuracy",
    "fp",
    "fn",
    "pointing_n",
    "pointing_hits",
    "pointing_game",
    "prompt",
    "note",
)
SUMMARY_METRICS = (
    "normal_auc",
    "macro_auc",
    "pointing_game",
    "normal_fp",
    "normal_fn",
    "n_images",
    "rejects",
    "normal_auc_centroid",
    "cos_normal_normal",
    "cos_abnormal_abnormal",
    "cos_normal_abnormal",
    "cos_centred_normal_normal",
    "cos_centred_abnormal_abnormal",
    "cos_centred_normal_abnormal",
)


def class_metrics(labels: Iterable[float], scores: Iterable[float]) -> dict:
    """Metrics of one class from its 0/1 labels (NaN = unknown, left out) and scores.

    * ``auc``: ROC AUC (NaN, with a ``note``, when the labelled images are all positive or all
      negative).
    * ``threshold``: the Youden threshold (the ROC point maximising TPR - FPR; ties: the highest
      threshold, as ``np.argmax`` over the float J: :func:`offclip.pipeline.numerics.youden_cut`).
      An image is called positive when its score >= threshold; ``inf`` means the best point is
      "call nothing positive".
    * ``accuracy``: share of labelled images called correctly at that threshold.
    * ``fp``: negatives called positive; ``fn``: positives called negative (at that threshold).
      For the normal class (positive = normal) FP = abnormal images called normal and
      FN = normal images called abnormal.
    """
    from sklearn.metrics import roc_auc_score

    from ...pipeline.numerics import youden_cut

    y = np.asarray(list(labels), dtype=float)
    s = np.asarray(list(scores), dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    known = ~np.isnan(y)
    y, s = y[known].astype(int), s[known]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    out = {
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_unknown": int((~known).sum()),
        "auc": math.nan,
        "threshold": math.nan,
        "accuracy": math.nan,
        "fp": math.nan,
        "fn": math.nan,
        "note": "",
    }
    if n_pos == 0 or n_neg == 0:
        out["note"] = (
            "no labelled images"
            if n_pos + n_neg == 0
            else f"only {'positives' if n_neg == 0 else 'negatives'}: AUC undefined"
        )
        return out
    auc = float(roc_auc_score(y, s))  # first: it rejects NaN/inf scores, as roc_curve did here
    threshold = youden_cut(s, y == 1, call_none=True).threshold  # = roc_curve's argmax(tpr - fpr)
    called = s >= threshold
    out.update(
        auc=auc,
        threshold=threshold,
        accuracy=float((called == (y == 1)).mean()),
        fp=int((called & (y == 0)).sum()),
        fn=int((~called & (y == 1)).sum()),
    )
    return out


def patch_centre(row: int, col: int, grid: tuple[int, int], geometry: Geometry) -> tuple[float, float]:
    """Original-pixel (x, y) of the centre of patch (``row``, ``col``) of an ``h`` x ``w`` grid that
    tiles the model's square input evenly."""
    h, w = grid
    return geometry.to_original((col + 0.5) * geometry.size / w, (row + 0.5) * geometry.size / h)


def pointing_hit(similarity: np.ndarray, boxes: np.ndarray, geometry: Geometry) -> tuple[bool, float, float]:
    """The pointing game for one (image, class): the best-matching patch (argmax of the ``h`` x
    ``w`` ``similarity`` map; ties: the first in row-major order) is a hit when its centre, in
    original pixels, lies inside any of ``boxes`` (rows of x_min, y_min, x_max, y_max; edges
    count as inside). Returns (hit, x, y)."""
    similarity = np.asarray(similarity)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be a 2-D map, got shape {similarity.shape}")
    row, col = divmod(int(np.argmax(similarity)), similarity.shape[1])
    x, y = patch_centre(row, col, similarity.shape, geometry)
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    inside = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
    return bool(inside.any()), x, y


def _float(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _count(value) -> int | float:
    """A count that may be undefined: int, or NaN."""
    return math.nan if value is None or pd.isna(value) else int(value)


def _mechanism(embeddings: np.ndarray, is_normal: np.ndarray, centroid_scores: np.ndarray) -> dict:
    """Compactness of the image embeddings by label, raw and centred, and the AUC of the
    prompt-free normal score."""
    from ..stats import auc, compactness

    known = ~np.isnan(is_normal)
    out = {"normal_auc_centroid": auc(is_normal, centroid_scores) if not np.isnan(centroid_scores).all() else math.nan}
    for prefix, centre in (("cos", False), ("cos_centred", True)):
        values = compactness(embeddings[known], is_normal[known] == 1, centre=centre) if known.any() else {}
        for key in ("normal_normal", "abnormal_abnormal", "normal_abnormal"):
            out[f"{prefix}_{key}"] = values.get(key, math.nan)
    return out


def _class_table(
    labels: pd.DataFrame, scores: pd.DataFrame, pointing: pd.DataFrame, prompts: dict[str, list[str]]
) -> pd.DataFrame:
    rows = []
    order = [NORMAL] + [c for c in labels.columns if c != NORMAL]
    for name in order:
        metrics = class_metrics(labels[name].to_numpy(), scores[name].to_numpy())
        trials = pointing[pointing["class_name"] == name]
        hits = int(trials["hit"].sum()) if len(trials) else 0
        if name != NORMAL:
            metrics["fp"] = metrics["fn"] = math.nan  # FP/FN are reported for the normal class
        rows.append(
            {
                "class_name": name,
                "kind": "normal" if name == NORMAL else "abnormal",
                **metrics,
                "pointing_n": len(trials),
                "pointing_hits": hits,
                "pointing_game": hits / len(trials) if len(trials) else math.nan,
                "prompt": " | ".join(prompts[name]),
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _summary(table: pd.DataFrame, pointing: pd.DataFrame, n_images: int, n_rejects: int) -> dict:
    normal = table[table["kind"] == "normal"].iloc[0]
    abnormal = table[(table["kind"] == "abnormal") & table["auc"].notna()]
    return {
        "normal_auc": float(normal["auc"]),
        "macro_auc": float(abnormal["auc"].mean()) if len(abnormal) else math.nan,
        "macro_auc_classes": int(len(abnormal)),
        "pointing_game": float(pointing["hit"].mean()) if len(pointing) else math.nan,
        "pointing_trials": int(len(pointing)),
        "normal_fp": _count(normal["fp"]),
        "normal_fn": _count(normal["fn"]),
        "normal_threshold": _float(normal["threshold"]),
        "normal_accuracy": _float(normal["accuracy"]),
        "n_images": int(n_images),
        "rejects": int(n_rejects),
    }

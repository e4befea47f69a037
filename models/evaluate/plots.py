"""The ROC plot of one evaluation."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from .datasets import NORMAL

#: abnormal classes drawn beside "No finding" (the most frequent); the rest are in the table
ROC_CLASSES = 6


def plotted_classes(table: pd.DataFrame, most: int = ROC_CLASSES) -> list[dict]:
    """The rows of ``table`` the ROC plot draws: the normal class, then the ``most`` abnormal
    classes with an AUC that have the most positives (ties: by name). Twenty overlapping curves
    say less than seven; every class's AUC is in the per-class table."""
    rows = [r for r in table.to_dict("records") if not pd.isna(r["auc"])]
    normal = [r for r in rows if r["class_name"] == NORMAL]
    abnormal = sorted((r for r in rows if r["class_name"] != NORMAL), key=lambda r: (-r["n_pos"], r["class_name"]))
    return normal + abnormal[:most]


def roc_png(labels: pd.DataFrame, scores: pd.DataFrame, table: pd.DataFrame, title: str) -> bytes:
    """One PNG: the ROC curve of the normal class and of the most frequent abnormal classes
    (:func:`plotted_classes`); the legend says how many more the table holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    evaluable = plotted_classes(table)
    hidden = int(table["auc"].notna().sum()) - len(evaluable)
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    try:
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        colours = plt.get_cmap("tab10")
        for i, row in enumerate(evaluable):
            name = row["class_name"]
            known = labels[name].notna().to_numpy()
            fpr, tpr, _ = roc_curve(labels[name].to_numpy()[known].astype(int), scores[name].to_numpy()[known])
            style: dict[str, Any] = (
                {"color": "black", "linewidth": 2.5, "zorder": 3}
                if name == NORMAL
                else {"color": colours(i % 10), "linewidth": 1.2}
            )
            ax.plot(fpr, tpr, label=f"{name} (AUC {row['auc']:.3f}, n+ {row['n_pos']})", **style)
        if not evaluable:
            ax.text(0.5, 0.5, "no class has both labels", ha="center", va="center")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
        ax.set_aspect("equal")
        if evaluable:
            legend = ax.legend(
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                fontsize=8,
                frameon=False,
                title=f"+ {hidden} more classes: see the per-class table" if hidden else None,
            )
            if hidden:
                legend.get_title().set_fontsize(8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)

"""Issue 29 points 1 and 4: artifacts a person can read (valid JSON, labels in view, readable
plots) and the answer in plain sentences."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from offclip.flows.artifacts import finite, short, table_rows
from offclip.flows.train import progress_line
from offclip.models.answer import answer_text
from offclip.models.evaluate.datasets import NORMAL
from offclip.models.evaluate.plots import ROC_CLASSES, plotted_classes, roc_png


def test_table_rows_are_strict_json_with_labels_first():
    rows = [{"prompt": "There is no finding. " * 10, "auc": np.float64(0.7467279411764706), "threshold": math.inf,
             "class_name": "No finding", "fp": math.nan, "n_pos": np.int64(680)},
            {"prompt": "There is edema.", "auc": math.nan, "threshold": -math.inf, "class_name": "Edema",
             "fp": 3.0, "n_pos": 0}]
    out = table_rows(rows, first=("class_name", "auc"), last=("prompt",), text=("prompt",))
    text = json.dumps(out, allow_nan=False)  # raises on Infinity / NaN
    assert list(out[0]) == ["class_name", "auc", "threshold", "fp", "n_pos", "prompt"]
    assert out[0]["threshold"] == "+inf" and out[1]["threshold"] == "-inf"
    assert out[0]["fp"] is None and out[1]["auc"] is None
    assert out[0]["n_pos"] == 680 and isinstance(out[0]["n_pos"], int)
    assert out[0]["auc"] == 0.7467  # 4 decimals in a cell
    assert len(out[0]["prompt"]) == 80 and out[0]["prompt"].endswith("…")
    assert json.loads(text)[1]["prompt"] == "There is edema."


def test_short_keeps_a_markdown_cell_in_one_piece():
    assert short("a | b\nc", markdown=True) == "a \\| b c"
    assert short("x" * 200, limit=10) == "x" * 9 + "…"
    assert finite(float("nan")) is None and finite(1.5) == 1.5 and finite("text") == "text"


def _table(n_classes: int) -> pd.DataFrame:
    rows = [{"class_name": NORMAL, "auc": 0.7, "n_pos": 680}]
    rows += [{"class_name": f"class {i:02d}", "auc": 0.6 if i != 3 else math.nan, "n_pos": 100 - i}
             for i in range(n_classes)]
    return pd.DataFrame(rows)


def test_the_roc_plot_draws_normal_and_the_most_frequent_classes():
    table = _table(21)
    drawn = [r["class_name"] for r in plotted_classes(table)]
    assert drawn[0] == NORMAL and len(drawn) == 1 + ROC_CLASSES
    assert drawn[1:] == ["class 00", "class 01", "class 02", "class 04", "class 05", "class 06"]  # 03: no AUC
    assert [r["class_name"] for r in plotted_classes(_table(2))] == [NORMAL, "class 00", "class 01"]


def test_roc_png_renders_with_many_classes():
    rng = np.random.default_rng(0)
    table = _table(12)
    labels = pd.DataFrame({name: rng.integers(0, 2, 50) for name in table["class_name"]})
    scores = pd.DataFrame({name: rng.random(50) for name in table["class_name"]})
    png = roc_png(labels, scores, table.assign(n_pos=table["n_pos"]), "title")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_answer_says_the_numbers_the_interval_and_its_limits():
    model = {"normal_auc": 0.711, "macro_auc": 0.616, "n_images": 1000, "n_normal": 680}
    base = {"normal_auc": 0.528, "macro_auc": 0.663}
    diffs = [{"metric": "normal_auc", "estimate": 0.184, "low": 0.108, "high": 0.259, "n_groups": 137},
             {"metric": "macro_auc", "estimate": -0.047, "low": -0.104, "high": 0.018, "n_groups": 137}]
    text = answer_text(model, base, diffs)
    assert "OFF-CLIP 0.711, the plain CLIP 0.528; difference +0.184 [95 % interval +0.108, +0.259]" in text
    assert "difference -0.047 [95 % interval -0.104, +0.018], which includes 0" in text
    assert "+0.259], which" not in text  # an interval that excludes 0 is not said to include it
    assert "1,000 images, 680 of them normal" in text and "137 held-out reports" in text
    assert "one training seed" in text
    assert "pools 5 training seeds" in answer_text(model, base, diffs, seeds=5)


def test_progress_line_says_what_trains_and_how_long():
    assert progress_line("plain CLIP (baseline)", 630, 1260, 3.21449, 150) == \
        "plain CLIP (baseline): step 630/1,260 · loss 3.214 · about 2 min left"
    assert progress_line("OFF-CLIP", 1, 10, 1.0, 30).endswith("about 30 s left")

"""The answer a person waits for, in plain sentences: a model against the plain CLIP.

``offclip answer SHARDS`` (and the end of ``make demo``) prints it from the manifest; the
evaluate flow logs it and keeps it as an artifact. It says each model's normal AUC and macro AUC,
the paired difference with its 95 % interval, and what one run can and cannot show.
"""

from __future__ import annotations

import math
from pathlib import Path

#: comparisons ``compare`` records are named ``compare…:<arm>-vs-<arm>``; a train/evaluate pair
#: ``<model run>-vs-<baseline run>``
SEPARATOR = "-vs-"
METRIC_WORDS = {
    "normal_auc": 'normal AUC (the prompt "There is no finding.")',
    "macro_auc": "macro AUC over the abnormal classes",
    "normal_auc_centroid": "normal AUC without a prompt (cosine to the normal texts' centroid)",
}


def _number(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _signed(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def answer_text(
    model: dict,
    baseline: dict,
    differences: list[dict],
    *,
    model_label: str = "OFF-CLIP",
    baseline_label: str = "the plain CLIP",
    dataset: str = "vindr-cxr",
    seeds: int = 1,
) -> str:
    """Sentences: ``model`` and ``baseline`` are evaluation summaries (``normal_auc``,
    ``macro_auc``, ``n_images``, ``n_normal``…), ``differences`` the paired differences of
    ``model`` against ``baseline`` (``metric``, ``estimate``, ``low``, ``high``, ``n_groups``)."""
    by_metric = {d["metric"]: d for d in differences}
    n_images = model.get("n_images")
    first = differences[0] if differences else {}
    unit = (
        f"{first['n_groups']:,} held-out reports"
        if first.get("n_groups")
        else "evaluation set (by report when a demo world says which images render one report)"
    )
    lines = [
        f"{model_label} against {baseline_label} on {dataset}"
        + (
            f" ({n_images:,} images, {model.get('n_normal'):,} of them normal)"
            if n_images and model.get("n_normal") is not None
            else ""
        )
        + ":"
    ]
    for metric in ("normal_auc", "macro_auc"):
        d = by_metric.get(metric)
        line = (
            f"  {METRIC_WORDS[metric]}: {model_label} {_number(model.get(metric))}, "
            f"{baseline_label} {_number(baseline.get(metric))}"
        )
        if d:
            excludes = d["low"] > 0 or d["high"] < 0
            line += (
                f"; difference {_signed(d['estimate'])} [95 % interval {_signed(d['low'])}, "
                f"{_signed(d['high'])}]" + ("" if excludes else ", which includes 0")
            )
        lines.append(line)
    lines.append(
        f"What this can show: the interval resamples the {unit}, so it says how far the difference could move "
        f"on another evaluation set of this kind. "
        + (
            "It comes from one training seed: the seed-to-seed spread is not in it (on the demo world it is of "
            "the same size), so read one run as a first look, not as the answer; `offclip compare` trains "
            "every arm over several seeds (docs/ablation.md)."
            if seeds == 1
            else f"It pools {seeds} training seeds."
        )
    )
    return "\n".join(lines)


def latest_comparison(db: str | Path) -> dict | None:
    """The newest model-against-baseline comparison the manifest holds (not ``compare``'s):
    ``model_run``, ``baseline_run``, ``dataset``, their ``model`` and ``baseline`` rows of
    ``latest_evaluations`` (offclip protocol) and the ``differences`` rows of
    ``latest_differences``; None when there is none."""
    from ..pipeline.manifest import query

    diffs = query(
        db, "SELECT * FROM latest_differences WHERE comparison NOT LIKE 'compare%' ORDER BY evaluated_at DESC"
    )
    if not len(diffs):
        return None
    comparison = diffs["comparison"].iloc[0]
    if SEPARATOR not in comparison:
        return None
    rows = diffs[diffs["comparison"] == comparison]
    model_run, baseline_run = comparison.rsplit(SEPARATOR, 1)
    dataset = rows["dataset"].iloc[0]
    evals = query(db, "SELECT * FROM latest_evaluations WHERE protocol = 'offclip'")
    evals = evals[(evals["dataset"] == dataset) & evals["run_name"].isin([model_run, baseline_run])]
    summaries = {r["run_name"]: r for r in evals.to_dict("records")}
    if model_run not in summaries or baseline_run not in summaries:
        return None
    return {
        "model_run": model_run,
        "baseline_run": baseline_run,
        "dataset": dataset,
        "model": summaries[model_run],
        "baseline": summaries[baseline_run],
        "differences": rows.to_dict("records"),
    }


def latest_answer(db: str | Path) -> str | None:
    """The answer for :func:`latest_comparison`, or None when there is none."""
    found = latest_comparison(db)
    if found is None:
        return None
    differences = [
        {
            "metric": r["metric"],
            "estimate": r["difference"],
            "low": r["ci_low"],
            "high": r["ci_high"],
            "n_images": r.get("n_images"),
            "n_groups": r.get("n_groups"),
        }
        for r in found["differences"]
    ]
    model = found["model"]
    label = {"offclip": "OFF-CLIP", "infonce": "the InfoNCE model"}.get(model.get("loss"), found["model_run"])
    return answer_text(model, found["baseline"], differences, model_label=label, dataset=found["dataset"])

"""`offclip compare`: both losses trained with the same config and seed on real shards, both
models evaluated on the same VinDr-format set, one table."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from offclip.cli import app


def test_compare_trains_and_evaluates_each_loss(shards_out, small_world, tmp_path):
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", str(shards_out), str(small_world[0] / "eval" / "vindr-cxr"),
                                      "--seeds", "3", "--batch-size", "8", "--max-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert [(r["loss"], r["seed"], r["steps"]) for r in runs] == [("infonce", 3, 2), ("offclip", 3, 2)]
    for run in runs:
        assert 0.0 <= run["normal_auc"] <= 1.0 and not math.isnan(run["normal_auc"])
        assert (out / f"{run['loss']}-seed3" / "eval" / "vindr-cxr.json").is_file()
    # the same seed gives the same initial model and batches: only the loss differs, so the
    # two models' scores differ (the OFF-CLIP loss moved the weights differently)
    a, b = (json.loads((out / f"{loss}-seed3" / "eval" / "vindr-cxr.json").read_text())["summary"]
            for loss in ("infonce", "offclip"))
    assert a != b
    table = (out / "compare.md").read_text()
    assert "| infonce |" in table and "| offclip |" in table and table.strip() in result.output


def test_compare_with_other_prompts_only_reevaluates(shards_out, small_world, tmp_path):
    out = tmp_path / "compare"
    args = ["compare", str(shards_out), str(small_world[0] / "eval" / "vindr-cxr"), "--seeds", "0",
            "--losses", "offclip", "--batch-size", "8", "--max-steps", "2", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    metrics = (out / "offclip-seed0" / "metrics.jsonl").read_bytes()
    prompts = tmp_path / "report-normal.json"
    prompts.write_text(json.dumps({"No Finding": ["The lungs are clear.", "No acute cardiopulmonary process."]}))
    again = CliRunner().invoke(app, args + ["--prompts", str(prompts)])
    assert again.exit_code == 0, again.output
    assert (out / "offclip-seed0" / "metrics.jsonl").read_bytes() == metrics  # not trained again
    default = json.loads((out / "offclip-seed0" / "eval" / "vindr-cxr.json").read_text())
    other = json.loads((out / "offclip-seed0" / "eval-report-normal" / "vindr-cxr.json").read_text())
    assert default["prompts"]["No Finding"] != other["prompts"]["No Finding"]
    assert (out / "compare-report-normal.md").is_file() and (out / "compare.md").is_file()

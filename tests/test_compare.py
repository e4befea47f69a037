"""`offclip compare`: the four-arm ablation (loss × training text) trained with the same config
and seed on real shards, every model evaluated on the same VinDr-format set, paired differences
against the plain-CLIP baseline with bootstrap intervals, one table; `offclip evaluate --prompts`."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from offclip.cli import app
from offclip.models.compare import ARMS, CompareConfig, parse_arms
from offclip.pipeline.manifest import query


def test_four_arm_compare_table_differences_and_manifest(shards_out, small_world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(shards_out, shards)
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", str(shards), str(small_world[0] / "eval" / "vindr-cxr"),
                                      "--seeds", "3", "--batch-size", "8", "--max-steps", "2", "--n-boot", "200",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compare.json").read_text())
    runs = saved["runs"]
    assert [(r["arm"], r["loss"], r["text"], r["seed"], r["steps"]) for r in runs] == [
        ("infonce/report", "infonce", "report", 3, 2), ("infonce/filtered", "infonce", "filtered", 3, 2),
        ("offclip/report", "offclip", "report", 3, 2), ("offclip/filtered", "offclip", "filtered", 3, 2)]
    for run in runs:
        assert 0.0 <= run["normal_auc"] <= 1.0 and not math.isnan(run["normal_auc"])
        assert run["normal_auc_centroid"] is not None and -1 <= run["cos_centred_normal_normal"] <= 1
        loss, text = run["arm"].split("/")
        assert (out / f"{loss}-{text}-seed3" / "eval" / "vindr-cxr_scores.parquet").is_file()
    # the same seed gives the same initial model: only the loss or the text differs, so do the scores
    summaries = [json.loads((out / f"{a.replace('/', '-')}-seed3" / "eval" / "vindr-cxr.json").read_text())["summary"]
                 for a in ARMS]
    assert len({json.dumps(s, sort_keys=True) for s in summaries}) == 4
    # each arm against the baseline, in normal AUC and macro AUC; the point estimate is the
    # difference of the runs' own figures (one seed) and lies in its interval
    differences = {(d["arm"], d["metric"]): d for d in saved["differences"]}
    assert set(differences) == {(a, m) for a in list(ARMS)[1:] for m in ("normal_auc", "macro_auc",
                                                                          "normal_auc_centroid")}
    base = runs[0]
    for run in runs[1:]:
        d = differences[run["arm"], "normal_auc"]
        assert d["estimate"] == pytest.approx(run["normal_auc"] - base["normal_auc"], abs=1e-6)
        assert d["low"] <= d["estimate"] <= d["high"] and d["n_boot"] == 200
        prompt_free = differences[run["arm"], "normal_auc_centroid"]
        assert prompt_free["estimate"] == pytest.approx(run["normal_auc_centroid"] - base["normal_auc_centroid"],
                                                        abs=1e-6)
        assert d["n_images"] == saved["evaluation_set"]["n_images"] > 0
    table = (out / "compare.md").read_text()
    for arm, (_, _, what) in ARMS.items():
        assert f"| {arm} | {what} |" in table
    assert "Δ normal AUC [95 % CI]" in table and "Δ normal AUC, prompt-free [95 % CI]" in table
    assert table.strip() in result.output
    # the per-class table: each arm's own per-class AUC (one seed: no sd), the baseline first
    evaluated = json.loads((out / "infonce-report-seed3" / "eval" / "vindr-cxr.json").read_text())
    header = next(line for line in table.splitlines() if line.startswith("| class | positives |"))
    assert header.index("infonce/report") < header.index("offclip/filtered")
    for row in (c for c in evaluated["classes"] if c["auc"] is not None):
        assert f"| {row['class_name']} | {row['n_pos']} | {row['auc']:.3f} |" in table
    # the manifest: every run's evaluation and the pooled differences
    rows = query(shards / "manifest.duckdb", "SELECT run_name, metric, value FROM evaluations "
                                             "WHERE run_name LIKE 'compare:%' AND class_name = '_overall'")
    names = set(rows["run_name"])
    assert {f"compare:{a}:seed3" for a in ARMS} <= names
    deltas = rows[rows["metric"] == "delta_normal_auc"].set_index("run_name")["value"]
    assert deltas["compare:offclip/filtered-vs-infonce/report"] == pytest.approx(
        differences["offclip/filtered", "normal_auc"]["estimate"])


@pytest.mark.usefixtures("prefect_server")  # `offclip evaluate` runs its flow there
def test_compare_with_other_prompts_only_reevaluates(shards_out, small_world, tmp_path):
    shards = tmp_path / "shards"  # a copy: compare records its evaluations in the shards' manifest
    shutil.copytree(shards_out, shards)
    out = tmp_path / "compare"
    args = ["compare", str(shards), str(small_world[0] / "eval" / "vindr-cxr"), "--seeds", "0",
            "--arms", "offclip/filtered", "--batch-size", "8", "--max-steps", "2", "--n-boot", "100",
            "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    metrics = (out / "offclip-filtered-seed0" / "metrics.jsonl").read_bytes()
    prompts = tmp_path / "report-normal.json"
    prompts.write_text(json.dumps({"No Finding": ["The lungs are clear.", "No acute cardiopulmonary process."]}))
    again = CliRunner().invoke(app, args + ["--prompts", str(prompts)])
    assert again.exit_code == 0, again.output
    assert (out / "offclip-filtered-seed0" / "metrics.jsonl").read_bytes() == metrics  # not trained again
    default = json.loads((out / "offclip-filtered-seed0" / "eval" / "vindr-cxr.json").read_text())
    other = json.loads((out / "offclip-filtered-seed0" / "eval-report-normal" / "vindr-cxr.json").read_text())
    assert default["prompts"]["No Finding"] != other["prompts"]["No Finding"]
    assert (out / "compare-report-normal.md").is_file() and (out / "compare.md").is_file()

    # `offclip evaluate --prompts` scores the same model with the same prompts the same way (a
    # real process: its flow logs to its own stderr), on this module's Prefect test server
    from prefect.settings import PREFECT_API_URL

    model = out / "offclip-filtered-seed0" / "model"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HF_HUB_OFFLINE": "1"}
    direct = subprocess.run([sys.executable, "-m", "offclip.cli", "evaluate", str(model),
                             str(small_world[0] / "eval" / "vindr-cxr"), "--out", str(tmp_path / "direct"),
                             "--prompts", str(prompts)], env=env, capture_output=True, text=True, timeout=300)
    assert direct.returncode == 0, direct.stdout[-2000:] + direct.stderr[-3000:]
    mine = json.loads((tmp_path / "direct" / "vindr-cxr.json").read_text())
    assert mine["prompts"]["No Finding"] == other["prompts"]["No Finding"]
    assert mine["summary"]["normal_auc"] == pytest.approx(other["summary"]["normal_auc"])


def test_arms_are_checked():
    assert parse_arms("all") == tuple(ARMS)
    assert parse_arms("offclip/filtered, infonce/report") == ("offclip/filtered", "infonce/report")
    with pytest.raises(ValueError, match="unknown arm"):
        parse_arms("offclip/whole")
    with pytest.raises(ValueError, match="unknown arm 'clip/report'"):
        CompareConfig(shards=".", eval_root=".", out=".", baseline="clip/report")
    with pytest.raises(ValueError, match="unknown amp mode 'fp8'"):  # before any arm trains
        CompareConfig(shards=".", eval_root=".", out=".", amp="fp8")


def test_bootstrap_resamples_reports_when_the_world_says_which(tmp_path, small_world):
    from offclip.models.compare import eval_groups

    root = tmp_path / "world" / "eval" / "vindr-cxr"
    root.mkdir(parents=True)
    (tmp_path / "world" / "offclip_demo").mkdir()
    (tmp_path / "world" / "offclip_demo" / "eval_images.csv").write_text(
        "image_id,openi_uid,render\na1,17,0\na2,17,1\nb1,4,0\n")
    assert eval_groups(root, ["a1", "b1", "a2"]) == ["17", "4", "17"]
    assert eval_groups(root, ["a1", "b1"], "images") is None
    assert eval_groups(root, ["a1", "zz"]) is None  # the table does not cover the set: images
    with pytest.raises(ValueError, match="--resample reports needs"):
        eval_groups(root, ["a1", "zz"], "reports")
    # a default world (one image per held-out study) has no such table: images are resampled
    assert eval_groups(small_world[0] / "eval" / "vindr-cxr", ["x"]) is None


def test_per_class_auc_is_mean_and_sd_over_seeds():
    from offclip.models.compare import per_class_auc, per_class_markdown

    def rows(normal, nodule):
        return [{"class_name": "No Finding", "n_pos": 6, "auc": normal},
                {"class_name": "Nodule/Mass", "n_pos": 2, "auc": nodule},
                {"class_name": "Pneumothorax", "n_pos": 0, "auc": None}]  # no positives: no AUC

    table = per_class_auc({("a", 0): rows(0.6, 0.9), ("a", 1): rows(0.8, 0.7), ("b", 0): rows(0.5, None)})
    got = {(r["class_name"], r["arm"]): (r["mean"], r["seeds"]) for r in table.to_dict("records")}
    assert got == {("No Finding", "a"): (pytest.approx(0.7), 2), ("Nodule/Mass", "a"): (pytest.approx(0.8), 2),
                   ("No Finding", "b"): (0.5, 1)}
    markdown = per_class_markdown(table, labels={"b": ("", "", "base"), "a": ("", "", "other")})
    assert "| class | positives | b (base) | a (other) |" in markdown
    assert "| Nodule/Mass | 2 | n/a | 0.800 ± 0.141 |" in markdown and "Pneumothorax" not in markdown

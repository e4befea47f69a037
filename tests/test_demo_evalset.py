"""The powered evaluation set (``offclip demo-world --eval-images N``): N renders of held-out
reports at VinDr-CXR's 68 % "No finding", several renders per report, deterministic."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from offclip.models.evaluate import NORMAL, read_vindr
from offclip.demo.world import (
    WorldConfig,
    build_world,
    eval_normal_count,
    plan_eval_renders,
)

N = 60


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def eval_world(tmp_path_factory, openi_dir):
    out = tmp_path_factory.mktemp("evalset") / "w"
    summary = build_world(WorldConfig(out=out, studies=40, seed=7, scale=0.08, openi=openi_dir,
                                      workers=2, progress=False, eval_images=N))
    return out, summary


def test_size_and_normal_share(eval_world):
    world, summary = eval_world
    labels = _rows(world / "eval/vindr-cxr/annotations/image_labels_test.csv")
    assert len(labels) == N == len(set(r["image_id"] for r in labels))
    assert eval_normal_count(N) == 41  # round(0.68 * 60)
    assert sum(r["No finding"] == "1" for r in labels) == 41
    assert [eval_normal_count(n) for n in (1, 100, 145, 1000)] == [1, 68, 99, 680]
    assert summary.eval_sets == {"vindr-cxr": N, "openi": N, "chexpert": N}
    assert summary.eval_no_finding == 41 and "41 No finding (68.3 %)" in summary.to_text()
    counts = json.loads((world / "offclip_demo/world.json").read_text())["counts"]
    assert counts["eval_sets"]["vindr-cxr"] == N and counts["eval_no_finding"] == 41
    # the other two formats hold the same images with the same normal split
    openi_rows = _rows(world / "eval/openi/openi_labels.csv")
    assert len(openi_rows) == N and sum(r["normal"] == "1" for r in openi_rows) == 41
    assert len(_rows(world / "eval/chexpert/test_labels.csv")) == N


def test_only_held_out_subjects(eval_world):
    world, _ = eval_world
    studies = {r["study_id"]: r for r in _rows(world / "offclip_demo/studies.csv")}
    train_subjects = {s["subject_id"] for s in studies.values() if s["split"] == "train"}
    truth = _rows(world / "offclip_demo/eval_images.csv")
    labels = {r["image_id"]: r for r in _rows(world / "eval/vindr-cxr/annotations/image_labels_test.csv")}
    assert {t["image_id"] for t in truth} == set(labels)
    for t in truth:
        study = studies[t["study_id"]]
        assert t["split"] == study["split"] in ("validate", "test")
        assert t["subject_id"] == study["subject_id"] not in train_subjects
        assert t["openi_uid"] == study["openi_uid"] and t["label"] == study["openi_label"]
        assert (labels[t["image_id"]]["No finding"] == "1") == (t["label"] == "normal")
    # several renders per report, spread evenly: within a class counts differ by at most one
    per_report = Counter((t["label"], t["openi_uid"]) for t in truth)
    assert max(per_report.values()) > 1
    for label in ("normal", "abnormal"):
        counts = [c for (l, _), c in per_report.items() if l == label]
        assert counts and max(counts) - min(counts) <= 1
    for (label, uid), count in per_report.items():
        renders = sorted(int(t["render"]) for t in truth if t["openi_uid"] == uid)
        assert renders == list(range(count))


def test_renders_of_one_report_differ_and_abnormal_ones_have_boxes(eval_world):
    world, _ = eval_world
    truth = _rows(world / "offclip_demo/eval_images.csv")
    by_report: dict[str, list[np.ndarray]] = {}
    for t in truth:
        ds = pydicom.dcmread(world / "eval/vindr-cxr/test" / f"{t['image_id']}.dicom")
        assert ds.pixel_array.shape == (int(t["rows"]), int(t["columns"]))
        by_report.setdefault(t["openi_uid"], []).append(ds.pixel_array)
    digests = [hashlib.sha256(a.tobytes()).hexdigest() for arrays in by_report.values() for a in arrays]
    assert len(set(digests)) == len(digests) == N
    for arrays in by_report.values():
        for a, b in zip(arrays, arrays[1:]):
            assert a.shape == b.shape and np.abs(a.astype(float) - b).mean() > 1.0
    boxes = Counter(r["image_id"] for r in _rows(world / "eval/vindr-cxr/annotations/annotations_test.csv")
                    if r["class_name"] != "No finding")
    for t in truth:
        assert (boxes[t["image_id"]] > 0) == (t["label"] == "abnormal") == (int(t["n_boxes"]) > 0)
        assert boxes[t["image_id"]] == int(t["n_boxes"])


def test_read_back_by_the_evaluation_reader(eval_world):
    world, _ = eval_world
    vindr = read_vindr(world / "eval/vindr-cxr")
    assert len(vindr.images) == N and not vindr.rejects
    assert vindr.labels[NORMAL].sum() == 41
    assert set(vindr.boxes["image_id"]) == set(vindr.labels.index[vindr.labels[NORMAL] == 0])


def test_same_bytes_whatever_the_workers(eval_world, tmp_path, openi_dir):
    world, _ = eval_world
    build_world(WorldConfig(out=tmp_path / "one", studies=40, seed=7, scale=0.08, openi=openi_dir,
                            workers=1, progress=False, eval_images=N))

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "world.json"}

    assert digest(world) == digest(tmp_path / "one")


def test_impossible_sets_are_refused(tmp_path, openi_dir):
    with pytest.raises(ValueError, match="at least 1"):
        build_world(WorldConfig(out=tmp_path / "zero", studies=5, openi=openi_dir, eval_images=0, progress=False))
    assert not (tmp_path / "zero").exists()
    with pytest.raises(ValueError, match="at least 1"):
        plan_eval_renders([], 0, seed=0)
    with pytest.raises(ValueError, match="no normal .*raise --studies"):
        plan_eval_renders([], 10, seed=0)
    # 2 studies: too few subjects for a held-out split
    with pytest.raises(ValueError, match="validate/test studies hold no"):
        build_world(WorldConfig(out=tmp_path / "few", studies=2, scale=0.08, openi=openi_dir,
                                eval_images=10, progress=False))
    assert not (tmp_path / "few").exists()

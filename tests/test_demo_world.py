"""The demo world end to end: layout, CSVs, DICOMs, truth, eval sets, faults, determinism, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from offclip.demo.dicom_writer import TRANSFER_SYNTAXES
from offclip.demo.world import (
    FAULT_KINDS,
    METADATA_COLUMNS,
    VINDR_LABELS,
    WorldConfig,
    build_world,
)
from offclip.pipeline.openi import parse_report_xml

CHEXPERT_14 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
               "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
               "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _faults(world: Path) -> dict[str, dict]:
    return {f["fault"]: f for f in json.loads((world / "faults.json").read_text())}


def test_layout_and_csv_columns(small_world):
    world, summary = small_world
    assert _header(world / "mimic-cxr-2.0.0-metadata.csv") == list(METADATA_COLUMNS)
    assert _header(world / "mimic-cxr-2.0.0-split.csv") == ["dicom_id", "study_id", "subject_id", "split"]
    assert _header(world / "mimic-cxr-2.0.0-chexpert.csv") == ["subject_id", "study_id"] + CHEXPERT_14
    meta = _rows(world / "mimic-cxr-2.0.0-metadata.csv")
    split = {r["dicom_id"]: r["split"] for r in _rows(world / "mimic-cxr-2.0.0-split.csv")}
    assert set(split) == {r["dicom_id"] for r in meta}
    assert set(split.values()) <= {"train", "validate", "test"}
    missing = _faults(world)["missing_file"]["dicom_id"]
    studies = set()
    for r in meta:
        folder = f"p{r['subject_id'][:2]}"
        path = world / "files" / folder / f"p{r['subject_id']}" / f"s{r['study_id']}" / f"{r['dicom_id']}.dcm"
        assert path.is_file() == (r["dicom_id"] != missing), path
        assert r["ViewPosition"] in ("", "PA", "AP", "LL", "RL", "LATERAL", "LARGE LATERAL")
        assert int(r["Rows"]) >= 64 and int(r["StudyDate"][:4]) >= 2100  # shifted like MIMIC
        studies.add((folder, r["subject_id"], r["study_id"]))
    assert len(studies) == summary.studies == 40
    assert len({f for f, _, _ in studies}) >= 5  # spread over p10–p19
    for value in (v for r in _rows(world / "mimic-cxr-2.0.0-chexpert.csv") for k, v in r.items() if k in CHEXPERT_14):
        assert value in ("", "1.0", "0.0", "-1.0")


def test_reports_are_in_mimic_format(small_world):
    world, _ = small_world
    faulty = {f["path"] for f in json.loads((world / "faults.json").read_text())}
    texts = [p for p in (world / "files").rglob("s*.txt") if str(p.relative_to(world)) not in faulty]
    assert len(texts) >= 37
    for path in texts:
        text = path.read_text(encoding="utf-8")
        assert "FINAL REPORT" in text.splitlines()[0]
        assert "XXXX" not in text
        assert all(line == "" or line.startswith(" ") for line in text.splitlines())
        assert " FINDINGS:" in text or " IMPRESSION:" in text


def test_every_dicom_reads_back_as_planned(small_world):
    world, _ = small_world
    faults = _faults(world)
    broken = {f["dicom_id"] for f in faults.values() if f["dicom_id"]}
    truth = _rows(world / "offclip_demo" / "images.csv")
    seen_syntaxes, seen_photometric = set(), set()
    for row in truth:
        if row["dicom_id"] in broken:
            continue
        ds = pydicom.dcmread(world / row["path"])
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[row["transfer_syntax"]]
        assert ds.PhotometricInterpretation == row["photometric"]
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (int(row["rows"]), int(row["columns"]), int(row["bits_stored"]))
        assert ds.get("ViewPosition", "") == row["view_position"]
        pixels = ds.pixel_array.astype(np.int64)
        maxval = (1 << ds.BitsStored) - 1
        # air outside the body (the image's top corners) is dark on display: low on MONOCHROME2,
        # high on MONOCHROME1 — the stored values really are inverted
        corners = np.concatenate([pixels[:4, :4].ravel(), pixels[:4, -4:].ravel()]).mean() / maxval
        assert (corners < 0.35) if row["photometric"] == "MONOCHROME2" else (corners > 0.65), row
        seen_syntaxes.add(row["transfer_syntax"])
        seen_photometric.add(row["photometric"])
    assert seen_syntaxes == set(TRANSFER_SYNTAXES)
    assert seen_photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_lesion_truth(small_world):
    world, _ = small_world
    images = {r["dicom_id"]: r for r in _rows(world / "offclip_demo" / "images.csv")}
    studies = {r["study_id"]: r for r in _rows(world / "offclip_demo" / "studies.csv")}
    lesions = _rows(world / "offclip_demo" / "lesions.csv")
    assert lesions, "an abnormal study in 40 renders at least one lesion"
    for b in lesions:
        img = images[b["dicom_id"]]
        x0, y0, x1, y1 = (int(b[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= int(img["columns"]) and 0 <= y0 < y1 <= int(img["rows"])
        assert studies[b["study_id"]]["openi_label"] == "abnormal"
    for s in studies.values():
        if s["openi_label"] == "normal":
            assert s["n_lesions"] == "0" and s["mesh_major"] == "normal"
    with_boxes = {b["study_id"] for b in lesions}
    assert with_boxes <= {k for k, s in studies.items() if int(s["n_lesions"]) > 0}


def test_eval_sets_use_held_out_studies(small_world):
    world, summary = small_world
    split = {r["dicom_id"]: r["split"] for r in _rows(world / "mimic-cxr-2.0.0-split.csv")}
    labels = _rows(world / "eval/vindr-cxr/annotations/image_labels_test.csv")
    assert _header(world / "eval/vindr-cxr/annotations/image_labels_test.csv") == ["image_id", *VINDR_LABELS]
    assert len(labels) == summary.eval_sets["vindr-cxr"] > 0
    images = _rows(world / "offclip_demo" / "images.csv")
    by_vindr = {hashlib.md5(r["dicom_id"].encode()).hexdigest(): r["dicom_id"] for r in images}
    for row in labels:
        assert split[by_vindr[row["image_id"]]] != "train"
        ds = pydicom.dcmread(world / "eval/vindr-cxr/test" / f"{row['image_id']}.dicom")
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        findings = [k for k in VINDR_LABELS[:-1] if row[k] == "1"]
        assert (row["No finding"] == "1") == (not findings)
    boxes = _rows(world / "eval/vindr-cxr/annotations/annotations_test.csv")
    assert {b["image_id"] for b in boxes} == {r["image_id"] for r in labels}
    for b in boxes:
        if b["class_name"] != "No finding":
            assert float(b["x_min"]) < float(b["x_max"]) and float(b["y_min"]) < float(b["y_max"])
    chex = _rows(world / "eval/chexpert/test_labels.csv")
    assert _header(world / "eval/chexpert/test_labels.csv")[:5] == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert len(chex) == len(labels)
    for r in chex:
        assert Image.open(world / "eval/chexpert" / r["Path"]).mode == "L"
    openi_rows = _rows(world / "eval/openi/openi_labels.csv")
    for r in openi_rows:
        report = parse_report_xml((world / "eval/openi/ecgen-radiology" / f"{r['uid']}.xml").read_bytes())
        assert report.image_ids == (r["imageid"],) and int(report.is_normal) == int(r["normal"])
        assert (world / "eval/openi/NLMCXR_png" / f"{r['imageid']}.png").is_file()


def test_faults_are_real(small_world):
    world, summary = small_world
    faults = _faults(world)
    assert set(faults) == set(FAULT_KINDS) and len({f["study_id"] for f in faults.values()}) == len(FAULT_KINDS)
    path = {k: world / f["path"] for k, f in faults.items()}
    with pytest.raises(Exception):
        pydicom.dcmread(path["truncated_dicom"]).pixel_array
    ds = pydicom.dcmread(path["dicom_without_pixels"])
    assert "PixelData" not in ds and ds.Rows > 0
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path["not_dicom"])
    assert path["empty_report"].stat().st_size == 0
    with pytest.raises(UnicodeDecodeError):
        path["non_utf8_report"].read_text(encoding="utf-8")
    assert not path["no_report"].exists() and path["no_report"].parent.joinpath(
        f"s{faults['no_report']['study_id']}").is_dir()
    assert not path["missing_file"].exists()
    meta = _rows(world / "mimic-cxr-2.0.0-metadata.csv")
    assert faults["missing_file"]["dicom_id"] in {r["dicom_id"] for r in meta}
    truth = {r["dicom_id"]: r for r in _rows(world / "offclip_demo" / "images.csv")}
    lateral_only = [r for r in meta if r["study_id"] == str(faults["lateral_only"]["study_id"])]
    assert lateral_only and all(truth[r["dicom_id"]]["view_kind"] == "lateral" for r in lateral_only)
    assert not {r["ViewPosition"] for r in lateral_only} & {"PA", "AP"}


def test_same_seed_same_bytes_any_worker_count(small_world, tmp_path, openi_dir):
    world, _ = small_world
    again = build_world(WorldConfig(out=tmp_path / "again", studies=40, seed=7, scale=0.08, faults=True,
                                    openi=openi_dir, workers=1, progress=False))
    assert again.images > 40

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "world.json"}

    a, b = digest(world), digest(tmp_path / "again")
    assert a == b
    other = build_world(WorldConfig(out=tmp_path / "other", studies=12, seed=8, scale=0.08,
                                    openi=openi_dir, workers=1, progress=False))
    assert other.studies == 12
    assert not set(digest(tmp_path / "other").items()) & {
        (k, v) for k, v in a.items() if k.endswith(".dcm")}


def test_cli(tmp_path, openi_dir):
    exe = [sys.executable, "-m", "offclip.cli"]
    env = dict(os.environ)
    if openi_dir:
        env["OFFCLIP_OPENI"] = openi_dir
    help_text = subprocess.run(exe + ["demo-world", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--studies", "--seed", "--scale", "--faults", "--openi", "--eval-images"):
        assert option in help_text
    out = tmp_path / "cli"
    run = subprocess.run(exe + ["demo-world", str(out), "--studies", "9", "--scale", "0.06", "--quiet"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "studies 9" in run.stdout and "syntaxes" in run.stdout
    assert json.loads((out / "offclip_demo" / "world.json").read_text())["parameters"]["studies"] == 9
    again = subprocess.run(exe + ["demo-world", str(out), "--studies", "9"], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = subprocess.run(exe + ["demo-world", str(tmp_path / "x"), "--openi", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "lacks NLMCXR_reports.tgz" in bad.stderr
    impossible = subprocess.run(exe + ["demo-world", str(tmp_path / "y"), "--studies", "2", "--eval-images", "5"],
                                capture_output=True, text=True, env=env)
    assert impossible.returncode == 2 and "validate/test studies hold no" in impossible.stderr
    assert not (tmp_path / "y").exists()


def test_full_size_world(tmp_path, openi_dir):
    """--scale 1.0 renders images at the real IU header sizes (~3000 px)."""
    summary = build_world(WorldConfig(out=tmp_path / "full", studies=2, seed=3, scale=1.0,
                                      openi=openi_dir, workers=1, progress=False))
    truth = _rows(tmp_path / "full" / "offclip_demo" / "images.csv")
    assert len(truth) == summary.images >= 2
    for row in truth:
        ds = pydicom.dcmread(tmp_path / "full" / row["path"])
        assert max(ds.Rows, ds.Columns) >= 2000
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    for box in _rows(tmp_path / "full" / "offclip_demo" / "lesions.csv"):
        img = next(r for r in truth if r["dicom_id"] == box["dicom_id"])
        assert 0 <= int(box["x_min"]) < int(box["x_max"]) <= int(img["columns"])

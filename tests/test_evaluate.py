"""Zero-shot evaluation: readers (demo-world eval sets, real-format label files, PadChest),
metrics and the pointing game checked by hand, and an end-to-end evaluate() of a real tiny model
writing JSON, a ROC plot and manifest rows."""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from offclip.data_contracts.contract import ContractViolation
from offclip.models.evaluate import (
    NORMAL,
    SUMMARY_METRICS,
    EvalImage,
    Geometry,
    build_prompts,
    class_metrics,
    evaluate,
    load_eval_image,
    main,
    patch_centre,
    pointing_hit,
    read_eval_set,
    read_score_table,
    training_normal_texts,
)
from offclip.pipeline.manifest import build_manifest, query, record_evaluations, run_record

RSNA = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


# ------------------------------------------------------------------------------------------
# metrics, by hand
# ------------------------------------------------------------------------------------------
def test_auc_youden_accuracy_by_hand():
    # positive/negative pairs: (0.9>0.8) (0.9>0.1) (0.3<0.8) (0.3>0.1) -> AUC 3/4.
    # ROC points (threshold: tpr, fpr): 0.9: .5, 0 | 0.8: .5, .5 | 0.3: 1, .5 | 0.1: 1, 1;
    # Youden J ties at 0.9 and 0.3 (0.5): the higher threshold wins -> calls [1, 0, 0, 0].
    m = class_metrics([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1])
    assert m["auc"] == pytest.approx(0.75)
    assert m["threshold"] == pytest.approx(0.9)
    assert m["accuracy"] == pytest.approx(0.75)
    assert (m["n_pos"], m["n_neg"], m["fp"], m["fn"]) == (2, 2, 0, 1)


def test_normal_class_fp_fn_by_hand():
    # normal = 1. Pairs: 0.8 beats all three abnormal, 0.4 beats 0.3 and 0.2 -> AUC 5/6.
    # J: thr 0.8: .5-0 | 0.6: .5-1/3 | 0.4: 1-1/3 (best) | 0.3: 1-2/3 -> threshold 0.4:
    # called normal = [1, 1, 1, 0, 0]: the abnormal image scored 0.6 is a FP, no FN.
    m = class_metrics([1, 1, 0, 0, 0], [0.8, 0.4, 0.6, 0.3, 0.2])
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["threshold"] == pytest.approx(0.4)
    assert (m["fp"], m["fn"]) == (1, 0)
    assert m["accuracy"] == pytest.approx(0.8)


def test_unknown_labels_are_left_out_and_one_sided_classes_have_no_auc():
    m = class_metrics([1, 0, math.nan, 0], [0.2, 0.1, 0.99, 0.3])
    assert (m["n_pos"], m["n_neg"], m["n_unknown"]) == (1, 2, 1)
    assert m["auc"] == pytest.approx(0.5)  # 0.2 > 0.1, 0.2 < 0.3; the unknown 0.99 does not count
    only = class_metrics([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(only["auc"]) and math.isnan(only["accuracy"]) and "only positives" in only["note"]
    with pytest.raises(ValueError, match="shape"):
        class_metrics([1, 0], [0.5])


# ------------------------------------------------------------------------------------------
# pointing game geometry, by hand
# ------------------------------------------------------------------------------------------
def test_patch_centre_maps_back_through_padding_and_shrink():
    # original 200 x 400 (rows x columns), decoded at half size 100 x 200, padded to 200 x 200
    # (top 50), model input 64: one model pixel = 200/64 decoded pixels = 2x that in original.
    g = Geometry.of(original=(200, 400), decoded=(100, 200), size=64)
    assert (g.side, g.top, g.left) == (200, 50, 0)
    # patch (row 1, col 2) of a 4 x 4 grid: model centre (40, 24) -> decoded (125, 75 - 50 = 25)
    # -> original (250, 50)
    assert patch_centre(1, 2, (4, 4), g) == pytest.approx((250.0, 50.0))
    # row 0 lies in the padding above the image: a negative original y
    assert patch_centre(0, 2, (4, 4), g)[1] == pytest.approx(-50.0)


def test_pointing_hit_and_miss():
    g = Geometry.of(original=(200, 400), decoded=(100, 200), size=64)
    similarity = np.zeros((4, 4))
    similarity[1, 2] = 1.0  # argmax -> original (250, 50)
    hit, x, y = pointing_hit(similarity, [[0, 0, 100, 100], [240, 40, 260, 60]], g)
    assert hit and (x, y) == pytest.approx((250.0, 50.0))
    assert not pointing_hit(similarity, [[0, 0, 100, 100]], g)[0]
    assert pointing_hit(similarity, [[250, 50, 300, 90]], g)[0]  # the edge counts as inside
    similarity[3, 0] = 1.0  # a tie: the first in row-major order, (1, 2), still wins
    assert pointing_hit(similarity, [[240, 40, 260, 60]], g)[0]


def test_preprocessing_keeps_geometry(tmp_path):
    # a non-square 8-bit PNG with one bright block centred at (243, 33): after padding and
    # resizing to 48 px, the brightest model pixel maps back onto it (one model pixel = 6.25 px)
    pixels = np.zeros((120, 300), np.uint8)
    pixels[30:36, 240:246] = 255
    Image.fromarray(pixels).save(tmp_path / "a.png")
    prepared = load_eval_image(EvalImage("a", tmp_path / "a.png", "image"), 48)
    assert prepared.pixels.shape == (48, 48) and prepared.pixels.dtype == np.float32
    assert 0.0 <= prepared.pixels.min() and prepared.pixels.max() <= 1.0
    g = prepared.geometry
    assert (g.original_rows, g.original_columns, g.side, g.top, g.left) == (120, 300, 300, 90, 0)
    row, col = np.unravel_index(np.argmax(prepared.pixels), prepared.pixels.shape)
    x, y = g.to_original(col + 0.5, row + 0.5)
    assert abs(x - 243) < 6.25 and abs(y - 33) < 6.25


def test_unreadable_images_are_rejects_with_reasons(tmp_path):
    (tmp_path / "not.png").write_bytes(b"plain text, not an image")
    (tmp_path / "cut.dicom").write_bytes(b"\0" * 128 + b"DICM")  # a DICOM preamble, nothing more
    cases = {EvalImage("gone", tmp_path / "gone.png", "image"): "missing_file",
             EvalImage("not", tmp_path / "not.png", "image"): "not_an_image"}
    for image, reason in cases.items():
        with pytest.raises(Exception) as info:
            load_eval_image(image, 32)
        assert getattr(info.value, "reason", None) == reason
    with pytest.raises(Exception) as info:
        load_eval_image(EvalImage("cut", tmp_path / "cut.dicom", "dicom"), 32)
    assert info.value.reason == "truncated"  # a preamble and nothing more: the header is cut short


def test_real_dicom_and_its_monochrome1_twin(shared_data):
    samples = shared_data / "samples"
    a = load_eval_image(EvalImage("a", samples / RSNA, "dicom"), 64)
    b = load_eval_image(EvalImage("b", samples / "Fake_MONOHR1.dcm", "dicom"), 64)
    assert (a.geometry.original_rows, a.geometry.original_columns) == (1024, 1024)
    assert a.pixels.std() > 0.1  # a radiograph, not a blank
    # the twin holds the same stored pixels flagged MONOCHROME1: it comes out as the inverse image
    assert np.abs(a.pixels + b.pixels - 1.0).max() <= 1.5 / 255


# ------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------
def test_default_and_configured_prompts(tmp_path):
    prompts, notes = build_prompts([NORMAL, "Pleural effusion", "Nodule/Mass", "ILD"])
    assert prompts == {NORMAL: ["There is no finding."], "Pleural effusion": ["There is pleural effusion."],
                       "Nodule/Mass": ["There is a nodule or mass."], "ILD": ["There is interstitial lung disease."]}
    assert notes == []
    custom = {"*": "Findings of {finding}.", "No finding": "Normal chest.", "ILD": ["ILD.", "Fibrotic lungs."],
              "Pneumothorax": "not in this dataset"}
    (tmp_path / "p.json").write_text(json.dumps(custom))
    prompts, notes = build_prompts([NORMAL, "Pleural effusion", "ILD"], tmp_path / "p.json")
    assert prompts == {NORMAL: ["Normal chest."], "Pleural effusion": ["Findings of pleural effusion."],
                       "ILD": ["ILD.", "Fibrotic lungs."]}
    assert notes and "Pneumothorax" in notes[0]
    with pytest.raises(ValueError, match="template"):
        build_prompts(["ILD"], {"*": "no placeholder"})
    with pytest.raises(ValueError, match="ILD"):
        build_prompts(["ILD"], {"ILD": []})


# ------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------
def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_readers_on_the_demo_world_eval_sets(small_world, tmp_path):
    world, summary = small_world
    n = summary.eval_sets["vindr-cxr"]
    vindr = read_eval_set("vindr-cxr", world / "eval" / "vindr-cxr")
    raw = {r["image_id"]: r for r in _csv_rows(world / "eval/vindr-cxr/annotations/image_labels_test.csv")}
    assert len(vindr.images) == n == len(raw) and not vindr.rejects
    assert vindr.classes[-1] == NORMAL and "No finding" not in vindr.classes and len(vindr.classes) == 28
    assert all(img.path.suffix == ".dicom" and img.loader == "dicom" for img in vindr.images)
    for image_id, row in raw.items():  # the normal column is VinDr's "No finding"
        assert vindr.labels.loc[image_id, NORMAL] == float(row["No finding"])
        assert vindr.labels.loc[image_id, "Pleural effusion"] == float(row["Pleural effusion"])
    boxes = [r for r in _csv_rows(world / "eval/vindr-cxr/annotations/annotations_test.csv") if r["x_min"]]
    assert len(vindr.boxes) == len(boxes)
    sizes = vindr.image_sizes().set_index("image_id")
    for box in vindr.boxes.itertuples():  # a box is a positive label, inside its original image
        assert vindr.labels.loc[box.image_id, box.class_name] == 1.0
        assert 0 <= box.x_min <= box.x_max <= sizes.loc[box.image_id, "columns"]
        assert 0 <= box.y_min <= box.y_max <= sizes.loc[box.image_id, "rows"]

    openi = read_eval_set("openi", world / "eval" / "openi")
    raw = {r["imageid"]: r for r in _csv_rows(world / "eval/openi/openi_labels.csv")}
    assert len(openi.images) == n and openi.classes[0] == NORMAL
    for image_id, row in raw.items():
        assert openi.labels.loc[image_id, NORMAL] == float(row["normal"])
        headings = {t.split("/")[0] for t in row["mesh_major"].split(";")} - {"normal"}
        assert {c for c in openi.abnormal_classes if openi.labels.loc[image_id, c] == 1.0} == headings

    # without openi_labels.csv the report XMLs (Open-I's own format) give the same labels
    xml_only = tmp_path / "openi"
    shutil.copytree(world / "eval" / "openi", xml_only)
    (xml_only / "openi_labels.csv").unlink()
    from_xml = read_eval_set("openi", xml_only)
    pd.testing.assert_frame_equal(from_xml.labels.sort_index(), openi.labels.sort_index())

    chexpert = read_eval_set("chexpert", world / "eval" / "chexpert")
    raw = {r["Path"]: r for r in _csv_rows(world / "eval/chexpert/test_labels.csv")}
    assert len(chexpert.images) == n and chexpert.classes[0] == NORMAL and len(chexpert.classes) == 14
    for path, row in raw.items():  # blank -> 0
        assert chexpert.labels.loc[path, NORMAL] == float(row["No Finding"] or 0)
        assert chexpert.labels.loc[path, "Lung Opacity"] == float(row["Lung Opacity"] or 0)
    # the same held-out studies in all three formats
    assert chexpert.labels[NORMAL].sum() + openi.labels[NORMAL].sum() > 0


def test_vindr_reader_on_the_real_vinbigdata_file(shared_data, tmp_path):
    """The real Kaggle VinBigData train.csv (3 radiologists per image, boxes in original DICOM
    pixels). The real RSNA DICOM stands in for one image, empty files for the others (reading
    the set does not decode images; evaluating would reject them), one file is missing."""
    root = tmp_path / "vindr"
    (root / "train").mkdir(parents=True)
    shutil.copy(shared_data / "labels" / "vinbigdata-train.csv.gz", root / "train.csv.gz")
    with gzip.open(root / "train.csv.gz", "rt") as fh:
        ids = sorted({row["image_id"] for row in csv.DictReader(fh)})
    for image_id in ids[1:]:
        (root / "train" / f"{image_id}.dicom").touch()
    image_id = "9a5094b2563a1ef3ff50dc5c7ff71345"
    shutil.copy(shared_data / "samples" / RSNA, root / "train" / f"{image_id}.dicom")

    vindr = read_eval_set("vindr-cxr", root, split="train")
    # 15,000 images, 4,394 with a finding from some radiologist (counted with awk on the file)
    assert len(vindr.images) == 14_999
    assert vindr.rejects == [{"image_id": ids[0], "path": str(root / "train" / f"{ids[0]}.dicom"),
                              "reason": "missing_file", "detail": "no image file"}]
    # the missing one, 000434271f63a053c4128a0ba6352c7f, is one of the 10,606 normal images
    assert int(vindr.labels[NORMAL].sum()) == 10_606 - 1
    assert len(vindr.classes) == 15 and vindr.classes[0] == NORMAL
    positives = {c for c in vindr.classes if vindr.labels.loc[image_id, c] == 1.0}
    assert positives == {"Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Pleural thickening"}
    mine = vindr.boxes[vindr.boxes["image_id"] == image_id]
    assert len(mine) == 6 and (mine["class_name"] == "Cardiomegaly").sum() == 3  # one box per radiologist
    assert [691.0, 1375.0, 1653.0, 1831.0] in mine[["x_min", "y_min", "x_max", "y_max"]].values.tolist()
    assert len(vindr.boxes) == 67_914 - 31_818  # every row but the "No finding" ones

    real = next(i for i in vindr.images if i.id == image_id)
    assert load_eval_image(real, 32).geometry.original_columns == 1024
    with pytest.raises(Exception) as info:
        load_eval_image(vindr.images[0], 32)
    assert info.value.reason == "truncated"  # an empty file


def test_vindr_training_labels_with_one_row_per_radiologist(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    for image_id in ("x", "y"):
        (tmp_path / "train" / f"{image_id}.dicom").touch()
    (tmp_path / "annotations" / "image_labels_train.csv").write_text(
        "image_id,rad_id,Cardiomegaly,Pleural effusion,No finding\n"
        "x,R1,1,0,0\nx,R2,0,0,1\nx,R3,0,0,1\n"   # one radiologist saw cardiomegaly
        "y,R1,0,0,1\ny,R2,0,0,1\ny,R3,0,0,1\n")
    (tmp_path / "annotations" / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "x,R1,Cardiomegaly,10.5,20,300,400\nx,R2,No finding,,,,\nx,R3,Pleural effusion,,,,\n"
        "y,R1,No finding,,,,\n")
    vindr = read_eval_set("vindr-cxr", tmp_path, split="train")
    assert vindr.labels.to_dict("index") == {
        "x": {"Cardiomegaly": 1.0, "Pleural effusion": 0.0, NORMAL: 0.0},
        "y": {"Cardiomegaly": 0.0, "Pleural effusion": 0.0, NORMAL: 1.0}}
    assert vindr.boxes.values.tolist() == [["x", "Cardiomegaly", 10.5, 20.0, 300.0, 400.0]]
    assert any("without box coordinates" in n for n in vindr.notes)  # the coordinate-less row


def test_chexpert_reader_on_real_rows(shared_data, tmp_path):
    """The first rows of the real CheXpert CSV (1/0/-1/blank), laid out as the dataset unpacks:
    the CSV inside CheXpert-v1.0-small/, paths starting with that folder."""
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    with gzip.open(shared_data / "labels" / "chexpert_train.csv.gz", "rt") as fh:
        lines = [next(fh) for _ in range(31)]
    (root / "valid.csv").write_text("".join(lines))
    rows = list(csv.DictReader(lines))
    nih = Image.open(shared_data / "samples" / "00000001_000.png").convert("L").resize((128, 128))
    for row in rows[:2]:
        (tmp_path / row["Path"]).parent.mkdir(parents=True, exist_ok=True)
        nih.save(tmp_path / row["Path"], format="JPEG")
    chexpert = read_eval_set("chexpert", root)
    assert len(chexpert.images) == 2 and len(chexpert.rejects) == 28
    first, second = rows[0]["Path"], rows[1]["Path"]
    assert chexpert.labels.loc[first, NORMAL] == 1.0 and chexpert.labels.loc[first, "Pneumothorax"] == 0.0
    assert chexpert.labels.loc[first, "Support Devices"] == 1.0 and chexpert.labels.loc[first, "Edema"] == 0.0
    assert math.isnan(chexpert.labels.loc[second, "Cardiomegaly"])  # -1: uncertain, left out
    assert chexpert.labels.loc[second, "Lung Opacity"] == 1.0 and chexpert.labels.loc[second, NORMAL] == 0.0
    positive = read_eval_set("chexpert", root, uncertain="positive")
    assert positive.labels.loc[second, "Cardiomegaly"] == 1.0
    assert load_eval_image(chexpert.images[0], 32).geometry.original_rows == 128

    # a "Study" column naming study directories: the frontal JPEG is used
    study_root = tmp_path / "study"
    (study_root / "s1").mkdir(parents=True)
    nih.save(study_root / "s1" / "view2_lateral.jpg", format="JPEG")
    nih.save(study_root / "s1" / "view1_frontal.jpg", format="JPEG")
    (study_root / "test_labels.csv").write_text("Study,No Finding,Edema\ns1,1,0\n")
    study = read_eval_set("chexpert", study_root)
    assert study.images[0].path.name == "view1_frontal.jpg"


def _write_padchest(root: Path) -> None:
    # 16-bit PNGs using a 12-bit range: 1000 at the left edge to 5000 at the right
    ramp = np.repeat(np.linspace(1000, 5000, 50)[None, :], 40, axis=0).astype(np.uint16)
    for image_dir, image_id in (("0", "a.png"), ("0", "b.png"), ("1", "c.png")):
        (root / image_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ramp).save(root / image_dir / image_id)
    rows = [
        ["ImageID", "ImageDir", "Labels", "Projection"],
        ["a.png", "0", "['normal']", "PA"],
        ["b.png", "0", "['cardiomegaly', 'pleural effusion']", "PA"],
        ["c.png", "1", "[' pleural effusion']", "AP"],
        ["d.png", "1", "", "PA"],
        ["e.png", "1", "['exclude']", "PA"],
        ["f.png", "1", "['pneumonia']", "PA"],
    ]
    with open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_padchest_reader(tmp_path):
    _write_padchest(tmp_path)
    padchest = read_eval_set("padchest", tmp_path)
    assert [i.id for i in padchest.images] == ["a.png", "b.png", "c.png"]
    assert padchest.classes == [NORMAL, "cardiomegaly", "pleural effusion", "pneumonia"]
    expected = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert padchest.labels.to_numpy().tolist() == expected
    assert {r["image_id"]: r["reason"] for r in padchest.rejects} == {
        "d.png": "unreadable_labels", "e.png": "excluded_by_labels", "f.png": "missing_file"}
    # 16-bit: a robust min-max to [0, 1] (not /65535, which would leave it at most 0.08); at
    # size 50 the 40 x 50 image is only padded (5 rows above and below), not resized
    prepared = load_eval_image(padchest.images[0], 50)
    assert (prepared.geometry.original_rows, prepared.geometry.original_columns) == (40, 50)
    image = prepared.pixels[5:45]
    assert image[:, 0].max() == 0.0 and image[:, -1].min() == 1.0
    assert image[:, 24:26].mean() == pytest.approx(0.5, abs=0.02)
    assert prepared.pixels[:5].max() == 0.0 and prepared.pixels[45:].max() == 0.0
    pa = read_eval_set("padchest", tmp_path, projections=("PA",))
    assert [i.id for i in pa.images] == ["a.png", "b.png"]


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown evaluation dataset"):
        read_eval_set("mimic", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_eval_set("openi", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="image_labels_test.csv"):
        read_eval_set("vindr-cxr", tmp_path)
    (tmp_path / "annotations").mkdir()
    labels = tmp_path / "annotations" / "image_labels_test.csv"
    labels.write_text("id,Cardiomegaly,No finding\nx,1,0\n")
    with pytest.raises(ValueError, match="image_id"):
        read_eval_set("vindr-cxr", tmp_path)
    labels.write_text("image_id,Cardiomegaly,No finding\nx,2,0\n")
    with pytest.raises(ValueError, match="Cardiomegaly"):
        read_eval_set("vindr-cxr", tmp_path)
    (tmp_path / "test_labels.csv").write_text("Image,No Finding,Edema\na.jpg,1,0\n")
    with pytest.raises(ValueError, match="'Path' nor a 'Study'"):
        read_eval_set("chexpert", tmp_path)
    (tmp_path / "PADCHEST_chest_x_ray_images_labels_160K.csv").write_text("ImageID,Labels\na.png,['normal']\n")
    with pytest.raises(ValueError, match="ImageDir"):
        read_eval_set("padchest", tmp_path)


# ------------------------------------------------------------------------------------------
# end to end: a real tiny model, the demo world's VinDr set, JSON + PNG + manifest rows
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from offclip.models.clip import build_model, save_model

    model, tokenizer = build_model("tiny", seed=0)
    path = tmp_path_factory.mktemp("model") / "run-a" / "model"
    save_model(model, tokenizer, path, extra={"offclip_train": {"loss": "infonce", "seed": 3}})
    return path


def test_evaluate_end_to_end(small_world, tiny_model_dir, tmp_path):
    from sklearn.metrics import roc_auc_score

    world, _ = small_world
    root = tmp_path / "vindr-cxr"
    shutil.copytree(world / "eval" / "vindr-cxr", root)
    # two bad inputs: a truncated DICOM and a label row whose file is gone
    dicoms = sorted((root / "test").glob("*.dicom"))
    data = dicoms[0].read_bytes()
    dicoms[0].write_bytes(data[: len(data) // 2])
    dicoms[1].unlink()
    labels = pd.read_csv(root / "annotations/image_labels_test.csv", dtype={"image_id": str})
    n_total = len(labels)

    out, db = tmp_path / "eval", tmp_path / "results.duckdb"
    result = evaluate(tiny_model_dir, "vindr-cxr", root, out=out, manifest=db, run_name="run-a", batch_size=4)

    summary = result.summary
    assert summary["n_images"] == n_total - 2 and summary["rejects"] == 2
    assert {r["image_id"]: r["reason"] for r in result.rejects} == {
        dicoms[0].stem: "truncated", dicoms[1].stem: "missing_file"}
    assert (result.loss, result.seed, result.run_name) == ("infonce", 3, "run-a")

    table = result.classes.set_index("class_name")
    assert list(table.index) == [NORMAL] + [c for c in labels.columns[1:] if c != "No finding"]
    kept = labels.set_index("image_id").rename(columns={"No finding": NORMAL}).loc[result.scores.index]
    for name, row in table.iterrows():  # counts and AUCs agree with the labels and raw scores
        assert (row["n_pos"], row["n_neg"]) == (int(kept[name].sum()), int((kept[name] == 0).sum()))
        if row["n_pos"] and row["n_neg"]:
            assert row["auc"] == pytest.approx(roc_auc_score(kept[name], result.scores[name]))
        else:
            assert math.isnan(row["auc"])
    normal = table.loc[NORMAL]
    assert normal["accuracy"] == pytest.approx(1 - (normal["fp"] + normal["fn"]) / summary["n_images"])
    assert (summary["normal_fp"], summary["normal_fn"]) == (int(normal["fp"]), int(normal["fn"]))
    evaluable = table[(table["kind"] == "abnormal") & table["auc"].notna()]
    assert summary["macro_auc"] == pytest.approx(evaluable["auc"].mean())
    # the pointing game: one trial per (scored image, class with a box)
    boxes = pd.read_csv(root / "annotations/annotations_test.csv", dtype={"image_id": str}).dropna(subset=["x_min"])
    trials = boxes[boxes["image_id"].isin(result.scores.index)][["image_id", "class_name"]].drop_duplicates()
    assert summary["pointing_trials"] == len(trials) == len(result.pointing) > 0
    assert summary["pointing_game"] == pytest.approx(result.pointing["hit"].mean())

    saved = json.loads((out / "vindr-cxr.json").read_text())  # strict JSON: NaN written as null
    assert saved["summary"]["n_images"] == n_total - 2
    assert [c["class_name"] for c in saved["classes"]] == list(table.index)
    assert saved["classes"][list(table.index).index("Pneumothorax")]["auc"] is None
    assert (out / "vindr-cxr_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per image: every class score, the prompt-free normal score and the labels (what compare reads)
    per_image = pd.read_parquet(out / "vindr-cxr_scores.parquet").set_index("image_id")
    assert list(per_image.index) == list(result.scores.index)
    np.testing.assert_allclose(per_image[NORMAL], result.scores[NORMAL], rtol=1e-6)
    assert (per_image[f"label:{NORMAL}"] == kept[NORMAL]).all()
    saved_scores = read_score_table(out / "vindr-cxr_scores.parquet")  # read back as compare reads it
    assert list(saved_scores.labels.columns) == list(result.labels.columns) == list(saved_scores.scores.columns)
    pd.testing.assert_frame_equal(saved_scores.labels, result.labels.astype(float), check_names=False)
    np.testing.assert_allclose(saved_scores.scores.to_numpy(), result.scores[list(result.labels.columns)].to_numpy(),
                               rtol=1e-6)
    assert saved_scores.centroid_scores.isna().all()
    # mechanism metrics: cosines in range; no training shards named, so no prompt-free score (said)
    for key in ("cos_normal_normal", "cos_abnormal_abnormal", "cos_normal_abnormal",
                "cos_centred_normal_normal", "cos_centred_abnormal_abnormal", "cos_centred_normal_abnormal"):
        assert -1.0 <= summary[key] <= 1.0, key
    assert math.isnan(summary["normal_auc_centroid"]) and per_image["normal_centroid"].isna().all()
    assert any("prompt-free normal score not computed" in n for n in result.notes)

    rows = query(db, "SELECT * FROM evaluations")
    n_pointing = int((table["pointing_n"] > 0).sum())
    assert len(rows) == 5 + 3 * (len(table) - 1) + n_pointing + len(SUMMARY_METRICS)
    assert set(rows["class_name"]) == set(table.index) | {"_overall"}
    assert set(rows["loss"]) == {"infonce"} and set(rows["dataset"]) == {"vindr-cxr"}
    latest = query(db, "SELECT * FROM latest_evaluations")
    assert len(latest) == 1 and latest["normal_auc"][0] == pytest.approx(summary["normal_auc"])
    assert latest["rejects"][0] == 2

    # deterministic: the same model in memory scores the same
    from offclip.models.clip import load_model

    again = evaluate(load_model(tiny_model_dir), "vindr-cxr", root, batch_size=3)
    pd.testing.assert_frame_equal(again.scores, result.scores, rtol=1e-5, atol=1e-6)
    assert again.model_dir is None and again.files == {}


def test_prompt_free_normal_score_from_the_training_normal_texts(shards_out, small_world, tmp_path):
    """A model trained on shards knows its training set: the centroid of the normal pairs' text
    embeddings gives each image a prompt-free normal score; its AUC is the AUC of those scores."""
    import tarfile

    from sklearn.metrics import roc_auc_score

    from offclip.models.clip import load_extra, load_model
    from offclip.models.train import TrainConfig, train

    trained = train(TrainConfig(shards=shards_out, out=tmp_path / "run", config="tiny", batch_size=8, max_steps=1))
    texts, note = training_normal_texts(load_extra(trained.model_dir))
    expected = set()
    for tar in (shards_out / "shards" / "train").glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                meta = json.loads(tf.extractfile(m).read()) if m.name.endswith(".json") else {}
                if meta.get("pair_label") == "normal":
                    expected |= {s["text"].strip() for s in meta["sentences"]}
    assert note == "" and set(texts) == expected and len(texts) == len(set(texts)) > 0

    root = small_world[0] / "eval" / "vindr-cxr"
    result = evaluate(trained.model_dir, "vindr-cxr", root, out=tmp_path / "eval")
    normal = result.labels[NORMAL]
    assert result.summary["normal_auc_centroid"] == pytest.approx(roc_auc_score(normal, result.centroid_scores))
    # the same score from the texts given directly, and from the model in memory
    direct = evaluate(load_model(trained.model_dir), "vindr-cxr", root, normal_texts=texts)
    np.testing.assert_allclose(direct.centroid_scores, result.centroid_scores, rtol=1e-5, atol=1e-6)
    assert -1.0 <= result.centroid_scores.min() <= result.centroid_scores.max() <= 1.0


def test_cli_prints_the_table(small_world, tiny_model_dir, tmp_path, capsys):
    world, _ = small_world
    assert main(["--model", str(tiny_model_dir), "--dataset", "openi", "--root", str(world / "eval" / "openi"),
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "No Finding" in printed and "normal_auc" in printed
    assert (tmp_path / "openi.json").is_file() and (tmp_path / "openi_roc.png").is_file()


# ------------------------------------------------------------------------------------------
# the manifest keeps evaluations across rebuilds
# ------------------------------------------------------------------------------------------
def _rows(evaluation_id: str, value: float, when: str) -> pd.DataFrame:
    base = {"evaluation_id": evaluation_id, "evaluated_at": pd.Timestamp(when, tz="UTC"), "model_dir": "/m",
            "run_name": "r", "loss": "offclip", "seed": 0, "dataset": "vindr-cxr"}
    return pd.DataFrame([
        {**base, "class_name": NORMAL, "metric": "auc", "value": value, "n_pos": 3, "n_neg": 4},
        {**base, "class_name": "_overall", "metric": "normal_auc", "value": value, "n_pos": None, "n_neg": None},
        {**base, "class_name": "_overall", "metric": "macro_auc", "value": math.nan, "n_pos": None, "n_neg": None},
    ])


def test_build_manifest_keeps_evaluations(shards_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards_out, out)
    db = out / "manifest.duckdb"
    assert len(query(db, "SELECT * FROM evaluations")) == 0  # every manifest has the table
    assert record_evaluations(db, _rows("e1", 0.6, "2026-01-01")) == 3
    assert record_evaluations(db, _rows("e2", 0.7, "2026-01-02")) == 3
    bad = _rows("e3", 0.8, "2026-01-03").assign(n_pos=-1)
    with pytest.raises(ContractViolation, match="n_pos"):
        record_evaluations(db, bad)

    build_manifest(out, runs=[run_record("shards", pd.Timestamp("2026-01-03", tz="UTC"), {}, {})])
    build_manifest(out)  # rebuilt twice from the records: the evaluations stay, as the runs do
    rows = query(db, "SELECT * FROM evaluations ORDER BY evaluation_id, metric")
    assert len(rows) == 6 and set(rows["evaluation_id"]) == {"e1", "e2"}
    assert rows["value"].isna().sum() == 2  # NaN stored as NULL
    latest = query(db, "SELECT * FROM latest_evaluations")
    assert list(latest["evaluation_id"]) == ["e2"] and latest["normal_auc"][0] == pytest.approx(0.7)
    assert list(query(db, "SELECT stage FROM runs")["stage"]) == ["shards"]


# ------------------------------------------------------------------------------------------
# the paper's protocol (issue 28 point 3): models/evaluate/protocols.json
# ------------------------------------------------------------------------------------------
PAPER_VINDR = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Edema",
               "Emphysema", "Enlarged PA", "Infiltration", "Lung Opacity", "Nodule/Mass", "Pleural effusion",
               "Pleural thickening", "Pneumothorax", "Lung tumor", "Pneumonia"]


def test_paper_protocol_on_vindr_scores_its_17_classes_with_its_prompts(small_world, tiny_model_dir, tmp_path):
    from sklearn.metrics import roc_auc_score

    world, _ = small_world
    root = world / "eval" / "vindr-cxr"
    db = tmp_path / "results.duckdb"
    result = evaluate(tiny_model_dir, "vindr-cxr", root, protocol="paper", batch_size=8, manifest=db)
    assert list(result.scores.columns) == PAPER_VINDR + [NORMAL]  # exactly its classes, in its order
    assert result.prompts[NORMAL] == ["There is no finding"]
    assert result.prompts["Aortic enlargement"] == ["There is aortic enlargement"]
    assert result.prompts["Nodule/Mass"] == ["There is nodule/mass"]
    assert result.protocol == "paper" and result.to_dict()["protocol"] == "paper"
    # only images with a positive among the 17 columns
    raw = pd.read_csv(root / "annotations/image_labels_test.csv", dtype={"image_id": str}).set_index("image_id")
    keep = raw[PAPER_VINDR + ["No finding"]].max(axis=1) == 1
    assert (~keep).any(), "the demo world must hold an image with no positive among the paper's classes"
    assert sorted(result.scores.index) == sorted(raw.index[keep])
    # scores are the sigmoid of the cosine; the normal AUC is against "There is no finding"
    default = evaluate(tiny_model_dir, "vindr-cxr", root, batch_size=8,
                       prompts={NORMAL: "There is no finding"})
    cos = default.scores.loc[result.scores.index, NORMAL]
    np.testing.assert_allclose(result.scores[NORMAL], 1 / (1 + np.exp(-cos)), rtol=1e-6)
    labels = raw.loc[result.scores.index, "No finding"]
    assert result.summary["normal_auc"] == pytest.approx(roc_auc_score(labels, result.scores[NORMAL]))
    rows = query(db, "SELECT DISTINCT protocol FROM evaluations")
    assert list(rows["protocol"]) == ["paper"]


def test_default_protocol_is_unchanged(small_world, tiny_model_dir):
    world, _ = small_world
    root = world / "eval" / "vindr-cxr"
    result = evaluate(tiny_model_dir, "vindr-cxr", root, batch_size=8)
    explicit = evaluate(tiny_model_dir, "vindr-cxr", root, batch_size=8, protocol="offclip")
    assert result.protocol == "offclip" and len(result.classes) == 28
    assert result.prompts[NORMAL] == ["There is no finding."]
    pd.testing.assert_frame_equal(result.scores, explicit.scores)
    assert set(result.manifest_rows()["protocol"]) == {"offclip"}


def test_openi_labels_automatic_map_to_the_papers_18_pathologies():
    from offclip.models.evaluate.protocols import load_protocol, openi_paper_labels

    spec = load_protocol("paper", "openi")
    assert len(spec.classes) == 18 and spec.normal_prompt == "There is no finding"
    text = "Pulmonary Atelectases;Infiltrate;Pleural Thickening;Calcified Granuloma;normal"
    assert openi_paper_labels(text, spec) == ["Atelectasis", "Infiltration", "Pleural_Thickening",
                                              "Calcified Granuloma", "Granuloma"]
    assert openi_paper_labels("Cardiomegaly/mild;Opacity/lung", spec) == ["Cardiomegaly", "Opacity"]
    assert openi_paper_labels("normal", spec) == [NORMAL]
    assert openi_paper_labels("", spec) == [NORMAL]


def test_paper_protocol_on_openi_and_padchest_and_the_data_file(small_world):
    from offclip.models.evaluate.protocols import PROTOCOLS_FILE, load_protocol, read_openi_protocol

    world, _ = small_world
    openi = read_openi_protocol(world / "eval" / "openi", load_protocol("paper", "openi"))
    assert len(openi.classes) == 19 and openi.classes[-1] == NORMAL
    assert (openi.labels.sum(axis=1) >= 1).all()  # No_Finding where nothing matched
    with pytest.raises(ValueError, match="192 PadChest query labels"):
        load_protocol("paper", "padchest")
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        load_protocol("nope", "vindr-cxr")
    # the data file installs with the package
    import fnmatch
    import tomllib

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["offclip.models"]
    assert any(fnmatch.fnmatch(f"evaluate/{PROTOCOLS_FILE.name}", g) for g in globs)

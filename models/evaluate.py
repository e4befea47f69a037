"""Zero-shot evaluation of a trained dual encoder on public chest X-ray test sets, in their own formats.

    result = evaluate("runs/tiny-offclip-seed0/model", "vindr-cxr", "WORLD/eval/vindr-cxr", out=Path("eval"))
    python -m offclip.models.evaluate --model DIR --dataset vindr-cxr --root WORLD/eval/vindr-cxr --out DIR

Four readers turn a dataset directory into one :class:`EvalSet` (images, a 0/1 label table with one
column per class, boxes in original pixel coordinates):

* ``vindr-cxr``  PhysioNet VinDr-CXR v1.0.0: ``annotations/image_labels_<split>.csv`` +
  ``annotations/annotations_<split>.csv``, images ``<split>/<image_id>.dicom``. Training files carry
  one row per radiologist (``rad_id``): a class is positive when any radiologist marked it. The
  Kaggle VinBigData layout (``train.csv[.gz]`` with boxes only, images ``train/<image_id>.dicom``) works
  too; there the labels are the boxes' classes.
* ``openi``      Open-I: ``NLMCXR_png/<imageid>.png`` with ``openi_labels.csv`` (imageid, normal,
  mesh_major) or, without it, the report XMLs ``ecgen-radiology/*.xml``. Classes are the MeSH major
  headings (the text before the first ``/``); normal is Open-I's own ``normal`` term.
* ``chexpert``   CheXpert ``test_labels.csv`` / ``valid.csv`` (``Path`` or ``Study`` column, the
  14 label columns): blank = negative, ``-1`` (uncertain) excluded from that class by default.
* ``padchest``   PadChest ``PADCHEST_chest_x_ray_images_labels_160K*.csv`` (ImageID, ImageDir, Labels
  as a Python list string) + 16-bit PNGs under ``<root>/<ImageDir>/<ImageID>``.

The normal class is always called :data:`NORMAL` ("No Finding"). Each image is decoded to
grayscale in [0, 1], zero-padded (centred) to a square and resized to the model's ``image_size``
— the same geometry as training's :func:`offclip.models.data.eval_transform` (nothing is cropped);
:class:`Geometry` maps model pixels back to original pixels for the pointing game.

Zero-shot scores: per class, the cosine similarity of the image embedding and the class prompt's
embedding (prompts per class, defaults ``"There is {finding}."`` and ``"There is no finding."``);
classes are scored independently, no softmax across classes. Metrics: see :func:`class_metrics`
and :func:`pointing_hit`. Unreadable images are rejects with a reason, reported in the result.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import io
import json
import math
import os
import re
import sys
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..data_contracts.manifest import EVALUATIONS, OVERALL
from ..pipeline.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "BOX_COLUMNS", "DATASETS", "NORMAL", "NORMAL_PROMPT", "PROMPT_TEMPLATE", "EvalImage", "EvalImageError",
    "EvalResult", "EvalSet", "Geometry", "PreparedImage", "build_prompts", "class_metrics", "evaluate",
    "finding_phrase", "load_eval_image", "main", "patch_centre", "pointing_hit", "read_eval_set",
    "read_chexpert", "read_openi", "read_padchest", "read_vindr",
]

NORMAL = "No Finding"
DATASETS = ("vindr-cxr", "openi", "chexpert", "padchest")
BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
PROMPT_TEMPLATE = "There is {finding}."
NORMAL_PROMPT = "There is no finding."
#: what a dataset calls its normal class (mapped to NORMAL)
NORMAL_ALIASES = ("No finding", "No Finding", "normal", "Normal")

#: class names -> the natural words the default prompt uses (others: the name in lower case)
PHRASES: dict[str, str] = {
    # VinDr-CXR
    "Nodule/Mass": "a nodule or mass",
    "ILD": "interstitial lung disease",
    "Enlarged PA": "an enlarged pulmonary artery",
    "COPD": "chronic obstructive pulmonary disease",
    "Lung cavity": "a lung cavity",
    "Lung cyst": "a lung cyst",
    "Lung tumor": "a lung tumor",
    "Rib fracture": "a rib fracture",
    "Clavicle fracture": "a clavicle fracture",
    "Other lesion": "another lesion",
    "Other diseases": "another disease",
    # CheXpert
    "Enlarged Cardiomediastinum": "an enlarged cardiomediastinum",
    "Lung Lesion": "a lung lesion",
    "Pleural Other": "another pleural abnormality",
    "Fracture": "a fracture",
    "Support Devices": "a support device",
    # Open-I MeSH headings
    "Implanted Medical Device": "an implanted medical device",
    "Catheters, Indwelling": "an indwelling catheter",
    "Calcified Granuloma": "a calcified granuloma",
    "Cardiac Shadow": "an enlarged cardiac shadow",
}

VINDR_BOX_NUMERIC = ("x_min", "y_min", "x_max", "y_max")
CHEXPERT_CLASSES = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_CSVS = ("test_labels.csv", "test.csv", "valid.csv", "valid_labels.csv")
UNCERTAIN_POLICIES = ("exclude", "positive", "negative")
PADCHEST_GLOB = "PADCHEST_chest_x_ray_images_labels_160K*.csv*"
#: PadChest labels that mark an unusable image rather than a finding
PADCHEST_EXCLUDE = ("exclude", "suboptimal study")


# ------------------------------------------------------------------------------------------
# the common evaluation set
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalImage:
    id: str
    path: Path
    loader: str  #: "dicom" (pydicom through offclip.pipeline.images) or "image" (PNG/JPEG via PIL)


@dataclass
class EvalSet:
    """One dataset in a common shape.

    ``labels``: index ``image_id`` (the order of ``images``), one float column per class: 1 positive,
    0 negative, NaN unknown (e.g. CheXpert's uncertain; left out of that class's metrics); the
    normal class is the column :data:`NORMAL`. ``boxes``: :data:`BOX_COLUMNS`, coordinates in the
    original image's pixels. ``rejects``: images lost while reading (missing files, bad label rows),
    each ``{"image_id", "path", "reason", "detail"}``. ``notes``: anything else worth saying.
    """

    name: str
    root: Path
    images: list[EvalImage]
    labels: pd.DataFrame
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BOX_COLUMNS)))
    rejects: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if NORMAL not in self.labels.columns:
            raise ValueError(f"{self.name}: the label table has no {NORMAL!r} column")
        ids = [image.id for image in self.images]
        if list(self.labels.index) != ids:
            raise ValueError(f"{self.name}: the label rows do not match the images one to one")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: duplicate image ids")

    @property
    def classes(self) -> list[str]:
        return list(self.labels.columns)

    @property
    def abnormal_classes(self) -> list[str]:
        return [c for c in self.labels.columns if c != NORMAL]

    def image_sizes(self) -> pd.DataFrame:
        """``image_id, rows, columns`` of the original images, read from their headers (NaN for
        files that cannot be read)."""
        rows = []
        for image in self.images:
            try:
                size = read_image_size(image)
            except Exception:  # reported as a reject when the image is evaluated
                size = (math.nan, math.nan)
            rows.append({"image_id": image.id, "rows": size[0], "columns": size[1]})
        return pd.DataFrame(rows, columns=["image_id", "rows", "columns"])


def read_eval_set(name: str, root: str | os.PathLike, **options) -> EvalSet:
    """Read dataset ``name`` (one of :data:`DATASETS`) from ``root``; ``options`` go to its reader."""
    readers = {"vindr-cxr": read_vindr, "openi": read_openi, "chexpert": read_chexpert, "padchest": read_padchest}
    if name not in readers:
        raise ValueError(f"unknown evaluation dataset {name!r}; known: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} is not a directory")
    return readers[name](root, **options)


def _read_csv(path: Path, required: Iterable[str], what: str, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing")
    df = pd.read_csv(path, **kwargs)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: {path} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
    return df


def _binary_labels(df: pd.DataFrame, columns: list[str], path: Path) -> pd.DataFrame:
    """Label columns as floats; anything but 0/1/blank is an error naming the column."""
    out = df[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    for column in columns:
        raw, value = df[column], out[column]
        bad = (value.isna() & raw.notna()) | (value.notna() & ~value.isin([0.0, 1.0]))
        if bad.any():
            raise ValueError(f"{path}: column {column!r} must hold 0/1, found {raw[bad].iloc[0]!r} "
                             f"(row {int(np.flatnonzero(bad.to_numpy())[0]) + 2})")
    return out


def _rename_normal(columns: Iterable[str]) -> dict[str, str]:
    return {c: NORMAL for c in columns if c in NORMAL_ALIASES}


def _existing(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _missing(image_id: str, path: Path) -> dict:
    return {"image_id": image_id, "path": str(path), "reason": "missing_file", "detail": "no image file"}


# -- VinDr-CXR -----------------------------------------------------------------------------
def read_vindr(root: Path, split: str = "test") -> EvalSet:
    """VinDr-CXR (PhysioNet layout, or Kaggle VinBigData's ``train.csv``); see the module docstring."""
    root = Path(root)
    labels_csv = root / "annotations" / f"image_labels_{split}.csv"
    boxes_csv = root / "annotations" / f"annotations_{split}.csv"
    kaggle_csv = _existing([root / f"{split}.csv", root / f"{split}.csv.gz"]) or root / f"{split}.csv"
    notes: list[str] = []
    if labels_csv.is_file():
        raw = _read_csv(labels_csv, ["image_id"], "vindr-cxr labels", dtype={"image_id": str})
        raw = raw.rename(columns=_rename_normal(raw.columns))
        if NORMAL not in raw.columns:
            raise ValueError(f"vindr-cxr labels: {labels_csv} has no 'No finding' column")
        classes = [c for c in raw.columns if c not in ("image_id", "rad_id")]
        values = _binary_labels(raw, classes, labels_csv)
        values.insert(0, "image_id", raw["image_id"].str.strip())
        if "rad_id" in raw.columns:  # one row per radiologist: positive when any said so
            values = values.groupby("image_id", sort=False).max()
            abnormal = [c for c in classes if c != NORMAL]
            values[NORMAL] = (values[abnormal].fillna(0).max(axis=1) == 0).astype(float)
            notes.append("labels aggregated over radiologists (a class is positive when any marked it)")
        else:
            duplicated = values["image_id"][values["image_id"].duplicated()]
            if len(duplicated):
                raise ValueError(f"{labels_csv}: duplicate image_id {duplicated.iloc[0]!r}")
            values = values.set_index("image_id")
        if boxes_csv.is_file():
            boxes = _vindr_boxes(_vindr_annotations(boxes_csv), boxes_csv.name, notes)
        else:
            notes.append(f"no {boxes_csv.name}: no pointing game")
            boxes = pd.DataFrame(columns=list(BOX_COLUMNS))
    elif kaggle_csv.is_file():
        rows = _vindr_annotations(kaggle_csv)
        ids = list(dict.fromkeys(rows["image_id"]))
        found = rows[rows["class_name"] != NORMAL]  # with or without a box
        per_image = found.groupby("image_id", sort=False)["class_name"].agg(list)
        values = _multi_hot(ids, [per_image.get(i, []) for i in ids], sorted(found["class_name"].unique()))
        boxes = _vindr_boxes(rows, kaggle_csv.name, notes)
        notes.append(f"labels derived from the annotation rows of {kaggle_csv.name} (positive when any "
                     "radiologist marked the class)")
    else:
        raise FileNotFoundError(f"vindr-cxr: neither {labels_csv} nor {kaggle_csv} exists under {root}")

    values.index.name = "image_id"
    images, rejects = [], []
    image_dir = root / split
    for image_id in values.index:
        path = _existing([image_dir / f"{image_id}.dicom", image_dir / f"{image_id}.dcm"])
        if path is None:
            rejects.append(_missing(image_id, image_dir / f"{image_id}.dicom"))
        else:
            images.append(EvalImage(image_id, path, "dicom"))
    labels = values.loc[[i.id for i in images]]
    unknown = sorted(set(boxes["image_id"]) - set(values.index))
    if unknown:
        notes.append(f"{len(unknown)} boxed image(s) without a label row ignored, e.g. {unknown[0]}")
    boxes = boxes[boxes["image_id"].isin(labels.index)].reset_index(drop=True)  # boxes of this set's images
    return EvalSet("vindr-cxr", root, images, labels, boxes, rejects, notes)


def _vindr_annotations(path: Path) -> pd.DataFrame:
    """The rows of a VinDr annotation CSV as :data:`BOX_COLUMNS` (coordinates NaN where blank,
    e.g. on "No finding" rows, which are renamed :data:`NORMAL`); extra columns (rad_id,
    class_id) are dropped. Coordinates are pixels of the original DICOM."""
    df = _read_csv(path, ["image_id", "class_name", *VINDR_BOX_NUMERIC], "vindr-cxr annotations",
                   dtype={"image_id": str, "class_name": str})
    out = pd.DataFrame({"image_id": df["image_id"].str.strip(),
                        "class_name": df["class_name"].str.strip().replace({a: NORMAL for a in NORMAL_ALIASES})})
    for column in VINDR_BOX_NUMERIC:
        out[column] = pd.to_numeric(df[column], errors="coerce")
    return out


def _vindr_boxes(rows: pd.DataFrame, name: str, notes: list[str]) -> pd.DataFrame:
    """The boxes among annotation rows: abnormal classes with four coordinates, min <= max (the
    rest are noted)."""
    has_box = rows[list(VINDR_BOX_NUMERIC)].notna().all(axis=1)
    abnormal = rows["class_name"] != NORMAL
    no_coords = int((abnormal & ~has_box).sum())
    if no_coords:
        notes.append(f"{no_coords} {name} row(s) of an abnormal class without box coordinates: no box")
    inverted = has_box & ((rows["x_max"] < rows["x_min"]) | (rows["y_max"] < rows["y_min"]))
    if inverted.any():
        notes.append(f"{int(inverted.sum())} {name} box(es) with max < min ignored")
    return rows[abnormal & has_box & ~inverted].reset_index(drop=True)


# -- Open-I --------------------------------------------------------------------------------
def read_openi(root: Path, min_positives: int = 1) -> EvalSet:
    """Open-I PNGs; labels from ``openi_labels.csv`` or, when absent, the report XMLs. Abnormal
    classes are MeSH major headings with at least ``min_positives`` images."""
    root = Path(root)
    table = root / "openi_labels.csv"
    notes: list[str] = []
    if table.is_file():
        df = _read_csv(table, ["imageid", "normal", "mesh_major"], "openi labels", dtype={"imageid": str, "mesh_major": str})
        normal = _binary_labels(df, ["normal"], table)["normal"]
        rows = [(str(i).strip(), float(n), str(m) if isinstance(m, str) else "")
                for i, n, m in zip(df["imageid"], normal, df["mesh_major"])]
        terms = {image_id: [t for t in mesh.split(";") if t.strip()] for image_id, _, mesh in rows}
        normals = {image_id: n for image_id, n, _ in rows}
        ids = [r[0] for r in rows]
    else:
        xml_dir = root / "ecgen-radiology"
        files = sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else []
        if not files:
            raise FileNotFoundError(f"openi: neither {table} nor report XMLs in {xml_dir}")
        from ..pipeline.openi import parse_report_xml

        terms, normals, ids = {}, {}, []
        for file in files:
            try:
                report = parse_report_xml(file.read_bytes())
            except (ET.ParseError, ValueError) as exc:
                notes.append(f"unreadable report {file.name} skipped: {exc}")
                continue
            for image_id in report.image_ids:
                if image_id not in terms:
                    ids.append(image_id)
                terms[image_id] = list(report.mesh_major)
                normals[image_id] = float(report.is_normal)
        notes.append(f"labels from {len(files)} report XML(s)")
    if len(set(ids)) != len(ids):
        raise ValueError(f"openi: duplicate imageid in {table}")

    headings = [sorted({_mesh_heading(t) for t in terms[i]} - {"normal", "No Indexing", ""}) for i in ids]
    labels = _multi_hot(ids, headings, _frequent(headings, min_positives))
    labels[NORMAL] = [normals[i] for i in ids]  # Open-I's own label, not "no heading"
    return _with_images("openi", root, labels, lambda i: [root / "NLMCXR_png" / f"{i}.png"], notes)


def _frequent(label_lists: list[list[str]], min_positives: int) -> list[str]:
    """The labels found in at least ``min_positives`` of the lists, sorted."""
    counts = pd.Series([l for labels in label_lists for l in set(labels)], dtype=str).value_counts()
    return sorted(counts[counts >= min_positives].index)


def _multi_hot(ids: list[str], label_lists: list[list[str]], classes: list[str]) -> pd.DataFrame:
    """A 0/1 frame (index ``image_id``; columns NORMAL, then ``classes``): each image's labels
    among ``classes`` set to 1; NORMAL = 1 when it has none (callers may overwrite it)."""
    column = {name: k for k, name in enumerate(classes)}
    matrix = np.zeros((len(ids), len(classes)), dtype=float)
    for row, labels in enumerate(label_lists):
        matrix[row, [column[l] for l in labels if l in column]] = 1.0
    values = pd.DataFrame(matrix, index=pd.Index(ids, name="image_id"), columns=classes)
    values.insert(0, NORMAL, (matrix.sum(axis=1) == 0).astype(float))
    return values


def _mesh_heading(term: str) -> str:
    return term.split("/")[0].strip()


def _with_images(name: str, root: Path, labels: pd.DataFrame, candidates, notes: list[str],
                 rejects: list[dict] | None = None) -> EvalSet:
    """Keep the label rows whose image file exists (first of ``candidates(image_id)``); the others
    become ``missing_file`` rejects."""
    images, rejects = [], list(rejects or [])
    for image_id in labels.index:
        options = candidates(image_id)
        path = _existing(options)
        if path is None:
            rejects.append(_missing(image_id, options[0] if options else root / image_id))
        else:
            images.append(EvalImage(image_id, path, "image"))
    return EvalSet(name, root, images, labels.loc[[i.id for i in images]], rejects=rejects, notes=notes)


# -- CheXpert ------------------------------------------------------------------------------
def read_chexpert(root: Path, csv: str | None = None, uncertain: str = "exclude") -> EvalSet:
    """CheXpert labels CSV (``csv``, default the first of :data:`CHEXPERT_CSVS` under ``root``).

    Values: 1 positive, 0 or blank negative, -1 uncertain -> ``uncertain``: "exclude" (NaN: not
    counted for that class), "positive" or "negative". Paths (``Path`` or ``Study`` column) are
    resolved against ``root``, its parent, and ``root`` minus the path's first component (the
    CSV's ``CheXpert-v1.0/...`` prefix); a study directory means its first frontal JPEG.
    """
    root = Path(root)
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, not {uncertain!r}")
    path = root / csv if csv else _existing(root / c for c in CHEXPERT_CSVS)
    if path is None:
        raise FileNotFoundError(f"chexpert: none of {', '.join(CHEXPERT_CSVS)} under {root}")
    df = _read_csv(path, [], "chexpert labels")
    path_column = next((c for c in ("Path", "Study", "path", "study") if c in df.columns), None)
    if path_column is None:
        raise ValueError(f"chexpert labels: {path} has neither a 'Path' nor a 'Study' column")
    classes = [c for c in CHEXPERT_CLASSES if c in df.columns]
    if NORMAL not in classes or len(classes) < 2:
        raise ValueError(f"chexpert labels: {path} needs 'No Finding' and at least one finding column")
    values = df[classes].apply(pd.to_numeric, errors="coerce")
    bad = ~(values.isin([1.0, 0.0, -1.0]) | df[classes].isna())
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise ValueError(f"{path}: column {classes[col]!r} must hold 1/0/-1/blank, found {df[classes[col]].iloc[row]!r}")
    values = values.fillna(0.0).replace({-1.0: {"exclude": math.nan, "positive": 1.0, "negative": 0.0}[uncertain]})
    ids = df[path_column].astype(str).str.strip()
    if ids.duplicated().any():
        raise ValueError(f"{path}: duplicate {path_column} {ids[ids.duplicated()].iloc[0]!r}")
    values.index = pd.Index(ids, name="image_id")
    notes = [f"uncertain (-1) labels: {uncertain}"] if (df[classes] == -1).to_numpy().any() else []
    return _with_images("chexpert", root, values.astype(float), lambda i: _chexpert_candidates(root, i), notes)


def _chexpert_candidates(root: Path, relative: str) -> list[Path]:
    rel = Path(relative)
    options = [root / rel, root.parent / rel]
    if len(rel.parts) > 1:
        options.append(root / Path(*rel.parts[1:]))
    files = []
    for option in options:
        if option.is_dir():  # a study: its frontal view(s) first
            jpgs = sorted(option.glob("*.jpg"))
            files += sorted(jpgs, key=lambda p: "frontal" not in p.name)[:1]
        else:
            files.append(option)
    return files


# -- PadChest ------------------------------------------------------------------------------
def read_padchest(root: Path, csv: str | None = None, projections: Iterable[str] | None = None,
                  min_positives: int = 1) -> EvalSet:
    """PadChest: the labels CSV (default: the ``PADCHEST_chest_x_ray_images_labels_160K*.csv``
    under ``root``) and PNGs at ``<root>/<ImageDir>/<ImageID>`` (or ``<root>/<ImageID>``).

    ``Labels`` is a Python list string; "normal" is :data:`NORMAL`, every other label a class (with
    at least ``min_positives`` images). Rows whose labels cannot be parsed, or that PadChest marks
    "exclude"/"suboptimal study", are rejects. ``projections`` (e.g. ``("PA", "AP")``) keeps those.
    """
    root = Path(root)
    if csv:
        path = root / csv
    else:
        found = sorted(root.glob(PADCHEST_GLOB))
        if not found:
            raise FileNotFoundError(f"padchest: no {PADCHEST_GLOB} under {root}")
        path = found[0]
    df = _read_csv(path, ["ImageID", "ImageDir", "Labels"], "padchest labels",
                   dtype={"ImageID": str, "ImageDir": str, "Labels": str}, low_memory=False)
    notes: list[str] = []
    if projections is not None:
        if "Projection" not in df.columns:
            raise ValueError(f"padchest: {path} has no 'Projection' column to filter on")
        keep = df["Projection"].isin(list(projections))
        notes.append(f"{int((~keep).sum())} image(s) of other projections left out")
        df = df[keep]
    if df["ImageID"].duplicated().any():
        raise ValueError(f"{path}: duplicate ImageID {df['ImageID'][df['ImageID'].duplicated()].iloc[0]!r}")

    rejects, parsed, dirs = [], {}, {}
    for image_id, image_dir, text in zip(df["ImageID"], df["ImageDir"], df["Labels"]):
        where = root / _padchest_dir(image_dir) / image_id
        try:
            labels = _padchest_labels(text)
        except ValueError as exc:
            rejects.append({"image_id": image_id, "path": str(where), "reason": "unreadable_labels", "detail": str(exc)})
            continue
        excluded = [l for l in labels if l in PADCHEST_EXCLUDE]
        if excluded:
            rejects.append({"image_id": image_id, "path": str(where), "reason": "excluded_by_labels",
                            "detail": f"PadChest label {excluded[0]!r}"})
            continue
        parsed[image_id], dirs[image_id] = labels, _padchest_dir(image_dir)
    findings = [[l for l in names if l != "normal"] for names in parsed.values()]
    labels = _multi_hot(list(parsed), findings, _frequent(findings, min_positives))
    labels[NORMAL] = [float("normal" in names) for names in parsed.values()]
    return _with_images("padchest", root, labels,
                        lambda i: [root / dirs[i] / i, root / i], notes, rejects)


def _padchest_dir(value) -> str:
    text = str(value).strip()
    return str(int(float(text))) if re.fullmatch(r"\d+(\.0)?", text) else text


def _padchest_labels(text) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty Labels")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"Labels is not a Python list: {text[:60]!r}") from exc
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Labels is not a list of strings: {text[:60]!r}")
    labels = [v.strip().lower() for v in value if v.strip()]
    if not labels:
        raise ValueError("Labels is an empty list")
    return labels


# ------------------------------------------------------------------------------------------
# images: decode, pad to a square, resize; the geometry back to original pixels
# ------------------------------------------------------------------------------------------
class EvalImageError(Exception):
    """An image that cannot be evaluated; ``reason`` is a short code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Geometry:
    """How an original image became the model's ``size`` x ``size`` input.

    The original (``original_rows`` x ``original_columns``) was decoded at ``decoded_rows`` x
    ``decoded_columns`` (a uniform shrink), zero-padded by ``top``/``left`` to a ``side`` x ``side``
    square (centred, as :func:`offclip.models.data.eval_transform`), then resized to ``size``.
    Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``).
    """

    original_rows: int
    original_columns: int
    decoded_rows: int
    decoded_columns: int
    side: int
    top: int
    left: int
    size: int

    @classmethod
    def of(cls, original: tuple[int, int], decoded: tuple[int, int], size: int) -> "Geometry":
        rows, columns = decoded
        side = max(rows, columns)
        return cls(int(original[0]), int(original[1]), rows, columns, side, (side - rows) // 2,
                   (side - columns) // 2, size)

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """Model-input pixel coordinates -> original image pixel coordinates."""
        xd = x * self.side / self.size - self.left
        yd = y * self.side / self.size - self.top
        return xd * self.original_columns / self.decoded_columns, yd * self.original_rows / self.decoded_rows


@dataclass
class PreparedImage:
    pixels: np.ndarray  #: float32 [size, size] in [0, 1]
    geometry: Geometry


def read_image_size(image: EvalImage) -> tuple[int, int]:
    """(rows, columns) of the original image, from its header."""
    if image.loader == "dicom":
        import pydicom

        ds = pydicom.dcmread(image.path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    from PIL import Image

    with Image.open(image.path) as im:
        return im.size[1], im.size[0]


def load_eval_image(image: EvalImage, size: int) -> PreparedImage:
    """Decode ``image`` to grayscale [0, 1] and bring it to ``size`` x ``size`` (pad, resize);
    raises :class:`EvalImageError` with a reason for a missing or unreadable file."""
    if not image.path.is_file():
        raise EvalImageError("missing_file", f"{image.path} does not exist")
    try:
        if image.loader == "dicom":
            unit, original = _decode_dicom(image.path, size)
        elif image.loader == "image":
            unit, original = _decode_picture(image.path, size)
        else:
            raise ValueError(f"unknown loader {image.loader!r}")
    except (EvalImageError, MemoryError):
        raise
    except Exception as exc:  # anything else a malformed file triggers: reject it, keep going
        raise EvalImageError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return _square(unit, original, size)


def _decode_dicom(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from ..pipeline.images import ImageReject, NormalizeConfig, decode_dicom

    try:
        decoded = decode_dicom(path, NormalizeConfig(long_side=size, out_bits=8))
    except ImageReject as exc:
        raise EvalImageError(exc.reason, exc.message) from exc
    unit = decoded.pixels.astype(np.float32) / np.float32(255.0)
    return unit, (decoded.original_rows, decoded.original_columns)


def _decode_picture(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """PNG/JPEG -> [0, 1]: 8-bit by /255; 16-bit and float images (PadChest's 16-bit PNGs use only
    part of the range) by a robust min-max (0.5th to 99.5th percentile)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            original = (im.size[1], im.size[0])
            if im.format == "JPEG":
                im.draft("L", (size, size))  # decode at a reduced scale (>= size) when large
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                array = np.asarray(im, dtype=np.float32)
                unit = _minmax(array)
            else:
                unit = np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
    except UnidentifiedImageError as exc:
        raise EvalImageError("not_an_image", str(exc)) from exc
    except OSError as exc:  # truncated or corrupt data
        raise EvalImageError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if unit.ndim != 2:
        raise EvalImageError("unsupported_pixels", f"expected a 2-D grayscale image, got shape {unit.shape}")
    return unit, original


def _minmax(array: np.ndarray) -> np.ndarray:
    step = max(1, int(math.sqrt(array.size / (1 << 16))))
    low, high = np.percentile(array[::step, ::step], [0.5, 99.5])
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _square(unit: np.ndarray, original: tuple[int, int], size: int) -> PreparedImage:
    import torch

    from .data import eval_transform

    geometry = Geometry.of(original, unit.shape, size)
    pixels = eval_transform(torch.from_numpy(np.ascontiguousarray(unit)).unsqueeze(0), size)
    return PreparedImage(pixels.squeeze(0).numpy(), geometry)


# ------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------
def finding_phrase(class_name: str) -> str:
    """The natural words for a class: "Pleural effusion" -> "pleural effusion",
    "Nodule/Mass" -> "a nodule or mass" (see :data:`PHRASES`)."""
    if class_name in PHRASES:
        return PHRASES[class_name]
    return class_name.lower().replace("/", " or ").replace("_", " ")


def build_prompts(classes: Iterable[str], prompts: Mapping | str | os.PathLike | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Prompts for each class, and notes.

    ``prompts``: None (defaults), a dict or a JSON file of ``{class: text or [texts]}``; a ``"*"``
    entry is the template for the abnormal classes it does not name (``{finding}`` = the class's
    phrase). Several texts per class are averaged (mean of the normalised embeddings). The normal
    class's default is :data:`NORMAL_PROMPT`. Entries for classes the dataset lacks are noted.
    """
    classes = list(classes)
    given: dict = {}
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        given = json.loads(path.read_text(encoding="utf-8"))
    elif prompts is not None:
        given = dict(prompts)
    if not isinstance(given, dict):
        raise ValueError("prompts must be a JSON object / dict of class -> text or list of texts")
    given = {(NORMAL if k in NORMAL_ALIASES else k): v for k, v in given.items()}
    template = given.pop("*", PROMPT_TEMPLATE)
    if not isinstance(template, str) or "{finding}" not in template:
        raise ValueError(f"the '*' prompt template must be a string with {{finding}}, got {template!r}")
    out = {}
    for name in classes:
        value = given.get(name)
        if value is None:
            value = NORMAL_PROMPT if name == NORMAL else template.format(finding=finding_phrase(name))
        texts = [value] if isinstance(value, str) else list(value)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"prompt for {name!r} must be a non-empty string or list of strings, got {value!r}")
        out[name] = texts
    unused = sorted(set(given) - set(classes))
    notes = [f"prompts for classes not in this dataset ignored: {', '.join(unused)}"] if unused else []
    return out, notes


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------
def class_metrics(labels: Iterable[float], scores: Iterable[float]) -> dict:
    """Metrics of one class from its 0/1 labels (NaN = unknown, left out) and scores.

    * ``auc``: ROC AUC (NaN, with a ``note``, when the labelled images are all positive or all
      negative).
    * ``threshold``: the Youden threshold (the ROC point maximising TPR - FPR; ties: the highest
      threshold). An image is called positive when its score >= threshold; ``inf`` means the
      best point is "call nothing positive".
    * ``accuracy``: share of labelled images called correctly at that threshold.
    * ``fp``: negatives called positive; ``fn``: positives called negative (at that threshold).
      For the normal class (positive = normal) FP = abnormal images called normal and
      FN = normal images called abnormal.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(list(labels), dtype=float)
    s = np.asarray(list(scores), dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    known = ~np.isnan(y)
    y, s = y[known].astype(int), s[known]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    out = {"n_pos": n_pos, "n_neg": n_neg, "n_unknown": int((~known).sum()), "auc": math.nan,
           "threshold": math.nan, "accuracy": math.nan, "fp": math.nan, "fn": math.nan, "note": ""}
    if n_pos == 0 or n_neg == 0:
        out["note"] = "no labelled images" if n_pos + n_neg == 0 else \
            f"only {'positives' if n_neg == 0 else 'negatives'}: AUC undefined"
        return out
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    threshold = float(thresholds[best])
    called = s >= threshold
    out.update(auc=float(roc_auc_score(y, s)), threshold=threshold,
               accuracy=float((called == (y == 1)).mean()),
               fp=int((called & (y == 0)).sum()), fn=int((~called & (y == 1)).sum()))
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


# ------------------------------------------------------------------------------------------
# the evaluation
# ------------------------------------------------------------------------------------------
TABLE_COLUMNS = ("class_name", "kind", "n_pos", "n_neg", "n_unknown", "auc", "threshold", "accuracy", "fp", "fn",
                 "pointing_n", "pointing_hits", "pointing_game", "prompt", "note")
SUMMARY_METRICS = ("normal_auc", "macro_auc", "pointing_game", "normal_fp", "normal_fn", "n_images", "rejects",
                   "normal_auc_centroid", "cos_normal_normal", "cos_abnormal_abnormal", "cos_normal_abnormal",
                   "cos_centred_normal_normal", "cos_centred_abnormal_abnormal", "cos_centred_normal_abnormal")
#: the score column of the prompt-free normal score (cosine to the training normal-text centroid)
CENTROID = "normal_centroid"


@dataclass
class EvalResult:
    dataset: str
    root: str
    evaluation_id: str
    evaluated_at: dt.datetime
    model_dir: str | None
    run_name: str | None
    loss: str | None
    seed: int | None
    classes: pd.DataFrame  #: one row per class (:data:`TABLE_COLUMNS`), normal first
    summary: dict
    scores: pd.DataFrame  #: index image_id, one column per class: the cosine similarities
    pointing: pd.DataFrame  #: image_id, class_name, x, y (original pixels), hit
    rejects: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prompts: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)  #: index image_id, one 0/1/NaN column per class
    #: index image_id: the prompt-free normal score (NaN column when the training texts are unknown)
    centroid_scores: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))

    def to_dict(self) -> dict:
        """Plain Python (NaN stays NaN here; the JSON file writes it as null)."""
        return {
            "dataset": self.dataset, "root": self.root, "evaluation_id": self.evaluation_id,
            "evaluated_at": self.evaluated_at.isoformat(), "model_dir": self.model_dir,
            "run_name": self.run_name, "loss": self.loss, "seed": self.seed,
            "summary": dict(self.summary),
            "classes": [_plain_row(r) for r in self.classes.to_dict("records")],
            "rejects": list(self.rejects), "notes": list(self.notes), "prompts": dict(self.prompts),
            "files": {k: str(v) for k, v in self.files.items()},
        }

    def score_table(self) -> pd.DataFrame:
        """One row per evaluated image: ``image_id``, each class's score, the prompt-free normal
        score, and each class's label as ``label:<class>`` (what the paired bootstrap reads)."""
        table = self.scores.copy()
        table[CENTROID] = self.centroid_scores.reindex(table.index)
        for column in self.labels.columns:
            table[f"label:{column}"] = self.labels[column].astype(float)
        return table.reset_index()

    def table(self) -> str:
        """The per-class table as text."""
        shown = self.classes.drop(columns=["prompt", "n_unknown"]).copy()
        for column in ("auc", "threshold", "accuracy", "pointing_game"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        for column in ("fp", "fn", "pointing_n", "pointing_hits"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
        return shown.to_string(index=False)

    def manifest_rows(self) -> pd.DataFrame:
        """Long rows for the manifest's ``evaluations`` table (contract :data:`EVALUATIONS`)."""
        base = {"evaluation_id": self.evaluation_id, "evaluated_at": self.evaluated_at, "model_dir": self.model_dir,
                "run_name": self.run_name, "loss": self.loss, "seed": self.seed, "dataset": self.dataset}
        rows = []
        for r in self.classes.to_dict("records"):
            counts = {"n_pos": r["n_pos"], "n_neg": r["n_neg"]}
            metrics = ["auc", "accuracy", "threshold"] + (["fp", "fn"] if r["kind"] == "normal" else [])
            rows += [{**base, "class_name": r["class_name"], "metric": m, "value": _float(r[m]), **counts} for m in metrics]
            if r["pointing_n"]:
                rows.append({**base, "class_name": r["class_name"], "metric": "pointing_game",
                             "value": _float(r["pointing_game"]), "n_pos": r["pointing_n"], "n_neg": None})
        rows += [{**base, "class_name": OVERALL, "metric": m, "value": _float(self.summary.get(m)), "n_pos": None,
                  "n_neg": None} for m in SUMMARY_METRICS]
        df = pd.DataFrame(rows, columns=EVALUATIONS.names)
        for column in ("n_pos", "n_neg", "seed"):
            df[column] = df[column].astype("Int64")
        return df


def _float(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _count(value) -> int | float:
    """A count that may be undefined: int, or NaN."""
    return math.nan if value is None or pd.isna(value) else int(value)


def _plain_row(row: dict) -> dict:
    """A table row as plain Python: counts as int (NaN when undefined), metrics as float."""
    out = {}
    for key, value in row.items():
        if key in ("n_pos", "n_neg", "n_unknown", "fp", "fn", "pointing_n", "pointing_hits"):
            value = _count(value)
        elif isinstance(value, np.floating):
            value = float(value)
        out[key] = value
    return out


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (Path, dt.datetime)):
        return str(value)
    return value


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _open_model(model_dir_or_model) -> tuple[Any, Any, str | None, dict]:
    """(adapter, tokenizer, model_dir, saved extra metadata) from a model directory in any format
    :mod:`offclip.models.adapters` opens, a :class:`ClipAdapter`, or an ``(OffClipModel, tokenizer)`` pair."""
    from .adapters import ClipAdapter, load_adapter
    from .clip import OffClipModel, load_extra

    if isinstance(model_dir_or_model, (str, os.PathLike)):
        path = Path(model_dir_or_model)
        adapter = load_adapter(path)
        return adapter, adapter.tokenizer, str(path), load_extra(path)
    if isinstance(model_dir_or_model, ClipAdapter):
        return model_dir_or_model, model_dir_or_model.tokenizer, None, {}
    if isinstance(model_dir_or_model, tuple) and len(model_dir_or_model) == 2 \
            and isinstance(model_dir_or_model[0], OffClipModel):
        model, tokenizer = model_dir_or_model
        return ClipAdapter.from_offclip(model, tokenizer), tokenizer, None, {}
    raise TypeError("evaluate needs a model directory, a ClipAdapter or an (OffClipModel, tokenizer) pair, "
                    f"got {type(model_dir_or_model).__name__}")


def _model_info(extra: dict) -> tuple[str | None, int | None]:
    """(loss, seed) from a model's saved metadata (``offclip_train``, written by the trainer)."""
    for source in (extra.get("offclip_train"), extra):
        if isinstance(source, dict) and ("loss" in source or "seed" in source):
            seed = source.get("seed")
            return (str(source["loss"]) if source.get("loss") is not None else None,
                    int(seed) if seed is not None else None)
    return None, None


def evaluate(model_dir_or_model, dataset: str, root: str | os.PathLike, prompts=None, out: Path | None = None,
             batch_size: int = 32, device: str = "auto", manifest: Path | None = None,
             run_name: str | None = None, workers: int = 0, normal_texts: Iterable[str] | None = None,
             **reader_options) -> EvalResult:
    """Zero-shot evaluation of a model on ``dataset`` at ``root``. The model: a saved directory
    (offclip's, a transformers ``CLIPModel`` or ``VisionTextDualEncoderModel``: each at its own
    input size and normalisation, :mod:`offclip.models.adapters`), a ``ClipAdapter``, or an
    ``(OffClipModel, tokenizer)`` pair. With ``out``: ``out/<dataset>.json``, ``out/<dataset>_roc.png`` and
    ``out/<dataset>_scores.parquet`` (per image: every class score, the prompt-free normal score
    and the labels); with ``manifest``: rows appended to its ``evaluations`` table. ``workers``:
    image-decoding threads (0: up to 8). ``reader_options`` go to the dataset's reader.

    Beside the AUCs, the *mechanism* metrics: how compact the normal images' embeddings are
    (mean cosine among normals, among abnormals, and across; raw and after centring), and a
    prompt-free normal score — the cosine of each image to the centroid of the training set's
    normal-pair texts (``normal_texts``; default: read from the shards the model's metadata names)
    — with its AUC (``normal_auc_centroid``)."""
    import torch

    from .clip import tokenize

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    evaluated_at = dt.datetime.now(dt.timezone.utc)
    eval_set = read_eval_set(dataset, root, **reader_options)
    model, tokenizer, model_dir, extra = _open_model(model_dir_or_model)
    loss, seed = _model_info(extra)
    torch_device = _resolve_device(device)
    model = model.to(torch_device).eval()
    size = model.image_size  # the checkpoint's input size (models.adapters)
    class_prompts, prompt_notes = build_prompts(eval_set.classes, prompts)
    boxes = eval_set.boxes
    box_classes = sorted(set(boxes["class_name"]) - set(class_prompts))
    all_prompts = {**class_prompts, **build_prompts(box_classes, prompts)[0]}

    with torch.inference_mode():
        text = _class_embeddings(model, tokenizer, all_prompts, torch_device, tokenize)
        names = list(class_prompts)
        text_matrix = torch.stack([text[n] for n in names])  # [C, D]
        boxes_of = {image_id: group for image_id, group in boxes.groupby("image_id", sort=False)}
        rejects = list(eval_set.rejects)
        score_rows, ids, pointing_rows, embeddings = [], [], [], []
        no_grid = False  # the vision tower gives no patch grid: no pointing game
        pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
        try:
            for start in range(0, len(eval_set.images), batch_size):
                batch = eval_set.images[start:start + batch_size]
                loaded = list(pool.map(lambda image: _try_load(image, size), batch))
                good = [(image, prepared) for image, prepared in zip(batch, loaded) if isinstance(prepared, PreparedImage)]
                rejects += [p for p in loaded if isinstance(p, dict)]
                if not good:
                    continue
                pixels = torch.from_numpy(np.stack([p.pixels for _, p in good])).unsqueeze(1).to(torch_device)
                image_emb = model.encode_image(pixels)
                score_rows.append((image_emb @ text_matrix.T).float().cpu().numpy())
                embeddings.append(image_emb.float().cpu().numpy())
                ids += [image.id for image, _ in good]
                with_boxes = [k for k, (image, _) in enumerate(good) if image.id in boxes_of]
                patches = model.patch_embeddings(pixels[with_boxes]) if with_boxes else None
                if patches is None and with_boxes:
                    no_grid = True
                if patches is not None:
                    for k, patch in zip(with_boxes, patches.float()):
                        image, prepared = good[k]
                        pointing_rows += _point(image.id, patch, boxes_of[image.id], text, prepared.geometry)
        finally:
            pool.shutdown()
        if normal_texts is None:
            normal_texts, centroid_note = training_normal_texts(extra)
        else:
            normal_texts, centroid_note = list(normal_texts), ""
        centroid = _text_centroid(model, tokenizer, normal_texts, torch_device, tokenize) if normal_texts else None

    scores = pd.DataFrame(np.concatenate(score_rows) if score_rows else np.zeros((0, len(names))),
                          index=pd.Index(ids, name="image_id"), columns=names)
    pointing = pd.DataFrame(pointing_rows, columns=["image_id", "class_name", "x", "y", "hit"])
    labels = eval_set.labels.loc[ids]
    table = _class_table(labels, scores, pointing, class_prompts)
    summary = _summary(table, pointing, len(ids), len(rejects))
    emb = np.concatenate(embeddings) if embeddings else np.zeros((0, 1))
    centroid_scores = pd.Series(emb @ centroid if centroid is not None else np.full(len(ids), np.nan),
                                index=scores.index, name=CENTROID)
    summary.update(_mechanism(emb, labels[NORMAL].to_numpy(dtype=float), centroid_scores.to_numpy()))
    notes = eval_set.notes + prompt_notes + ([centroid_note] if centroid_note else [])
    if no_grid:
        notes.append("no pointing game: the model's vision tower gives no square patch grid")
    result = EvalResult(dataset, str(root), str(uuid.uuid4()), evaluated_at, model_dir, run_name, loss, seed, table,
                        summary, scores, pointing, rejects, notes, all_prompts, labels=labels,
                        centroid_scores=centroid_scores)
    if out is not None:
        out = Path(out)
        result.files["roc"] = out / f"{dataset}_roc.png"
        result.files["json"] = out / f"{dataset}.json"
        atomic_write_bytes(result.files["roc"], roc_png(eval_set.labels.loc[ids], scores, table,
                                                       f"{dataset}: {run_name or model_dir or 'model'}"))
        atomic_write_text(result.files["json"], json.dumps(_json_safe(result.to_dict()), indent=1) + "\n")
        result.files["scores"] = out / f"{dataset}_scores.parquet"
        buffer = io.BytesIO()
        result.score_table().to_parquet(buffer, index=False)
        atomic_write_bytes(result.files["scores"], buffer.getvalue())
    if manifest is not None:
        from ..pipeline.manifest import record_evaluations

        record_evaluations(manifest, result.manifest_rows())
        result.files["manifest"] = Path(manifest)
    return result


def training_normal_texts(extra: dict, limit: int = 20000) -> tuple[list[str], str]:
    """The distinct sentences of the normal pairs the model was trained on (read from the shards
    its metadata names; a normal report's sentences are all kept, whatever the text source), and
    a note when they cannot be read. At most ``limit`` sentences (in shard order)."""
    import tarfile

    meta = (extra.get("offclip_train") or {}).get("shards") or {}
    root, split = meta.get("root"), meta.get("split", "train")
    if not root or not meta.get("shards"):
        return [], "prompt-free normal score not computed: the model's metadata names no training shards"
    texts: dict[str, None] = {}
    for shard in meta["shards"]:
        path = Path(root) / "shards" / split / shard["name"]
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.name.endswith(".json"):
                        continue
                    sample = json.loads(tar.extractfile(member).read())
                    if sample.get("pair_label") == "normal":
                        for sentence in sample.get("sentences") or []:
                            texts.setdefault(sentence["text"].strip(), None)
        except (OSError, tarfile.TarError, ValueError) as exc:
            return [], f"prompt-free normal score not computed: training shard {path} unreadable ({exc})"
        if len(texts) >= limit:
            break
    found = [t for t in texts if t][:limit]
    return found, "" if found else "prompt-free normal score not computed: no normal pair in the training shards"


def _text_centroid(model, tokenizer, texts: list[str], device, tokenize, batch_size: int = 256) -> np.ndarray:
    """The renormalised mean of the texts' normalised embeddings (the model's text tower)."""
    import torch.nn.functional as F

    total = None
    for start in range(0, len(texts), batch_size):
        tokens = tokenize(tokenizer, texts[start:start + batch_size], model.max_text_length)
        emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
        part = F.normalize(emb, dim=-1).sum(dim=0)
        total = part if total is None else total + part
    return F.normalize(total, dim=-1).cpu().numpy()


def _mechanism(embeddings: np.ndarray, is_normal: np.ndarray, centroid_scores: np.ndarray) -> dict:
    """Compactness of the image embeddings by label, raw and centred, and the AUC of the
    prompt-free normal score."""
    from .stats import auc, compactness

    known = ~np.isnan(is_normal)
    out = {"normal_auc_centroid": auc(is_normal, centroid_scores) if not np.isnan(centroid_scores).all()
           else math.nan}
    for prefix, centre in (("cos", False), ("cos_centred", True)):
        values = compactness(embeddings[known], is_normal[known] == 1, centre=centre) if known.any() else {}
        for key in ("normal_normal", "abnormal_abnormal", "normal_abnormal"):
            out[f"{prefix}_{key}"] = values.get(key, math.nan)
    return out


def _try_load(image: EvalImage, size: int) -> PreparedImage | dict:
    try:
        return load_eval_image(image, size)
    except EvalImageError as exc:
        return {"image_id": image.id, "path": str(image.path), "reason": exc.reason, "detail": exc.detail}


def _class_embeddings(model, tokenizer, prompts: dict[str, list[str]], device, tokenize) -> dict:
    """Per class: the mean of its prompts' normalised embeddings, renormalised."""
    import torch.nn.functional as F

    texts = [t for ts in prompts.values() for t in ts]
    tokens = tokenize(tokenizer, texts, model.max_text_length)
    emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
    out, at = {}, 0
    for name, ts in prompts.items():
        out[name] = F.normalize(emb[at:at + len(ts)].mean(dim=0), dim=-1)
        at += len(ts)
    return out


def _point(image_id: str, patch, boxes: pd.DataFrame, text: dict, geometry: Geometry) -> list[dict]:
    """Pointing-game trials of one image: one per class among its ``boxes``."""
    rows = []
    for class_name, group in boxes.groupby("class_name", sort=True):
        similarity = (patch @ text[class_name]).cpu().numpy()  # [h, w]
        hit, x, y = pointing_hit(similarity, group[list(VINDR_BOX_NUMERIC)].to_numpy(dtype=float), geometry)
        rows.append({"image_id": image_id, "class_name": class_name, "x": x, "y": y, "hit": hit})
    return rows


def _class_table(labels: pd.DataFrame, scores: pd.DataFrame, pointing: pd.DataFrame,
                 prompts: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    order = [NORMAL] + [c for c in labels.columns if c != NORMAL]
    for name in order:
        metrics = class_metrics(labels[name].to_numpy(), scores[name].to_numpy())
        trials = pointing[pointing["class_name"] == name]
        hits = int(trials["hit"].sum()) if len(trials) else 0
        if name != NORMAL:
            metrics["fp"] = metrics["fn"] = math.nan  # FP/FN are reported for the normal class
        rows.append({"class_name": name, "kind": "normal" if name == NORMAL else "abnormal", **metrics,
                     "pointing_n": len(trials), "pointing_hits": hits,
                     "pointing_game": hits / len(trials) if len(trials) else math.nan,
                     "prompt": " | ".join(prompts[name])})
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


def roc_png(labels: pd.DataFrame, scores: pd.DataFrame, table: pd.DataFrame, title: str) -> bytes:
    """One PNG: the ROC curve of the normal class and of every class with an AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    evaluable = [r for r in table.to_dict("records") if not pd.isna(r["auc"])]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    try:
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        colours = plt.get_cmap("tab20")
        for i, row in enumerate(evaluable):
            name = row["class_name"]
            known = labels[name].notna().to_numpy()
            fpr, tpr, _ = roc_curve(labels[name].to_numpy()[known].astype(int), scores[name].to_numpy()[known])
            style = {"color": "black", "linewidth": 2.5, "zorder": 3} if name == NORMAL else \
                {"color": colours(i % 20), "linewidth": 1}
            ax.plot(fpr, tpr, label=f"{name} (AUC {row['auc']:.3f}, n+ {row['n_pos']})", **style)
        if not evaluable:
            ax.text(0.5, 0.5, "no class has both labels", ha="center", va="center")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
        ax.set_aspect("equal")
        if evaluable:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------
# python -m offclip.models.evaluate
# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offclip.models.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory: offclip's, a CLIPModel or a VisionTextDualEncoderModel")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="the dataset directory")
    parser.add_argument("--out", help="write <dataset>.json and <dataset>_roc.png here")
    parser.add_argument("--manifest", help="append the figures to this DuckDB file's evaluations table")
    parser.add_argument("--prompts", help="JSON file: {class: text or [texts], '*': template}")
    parser.add_argument("--run-name", help="the model's run name (model version) for the manifest")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    result = evaluate(args.model, args.dataset, args.root, prompts=args.prompts,
                      out=Path(args.out) if args.out else None, batch_size=args.batch_size, device=args.device,
                      manifest=Path(args.manifest) if args.manifest else None, run_name=args.run_name)
    print(result.table())
    print()
    print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.summary.items()))
    for reject in result.rejects:
        print(f"reject {reject['image_id']}: {reject['reason']} ({reject['detail']})")
    for note in result.notes:
        print(f"note: {note}")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

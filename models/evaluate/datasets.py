"""The four dataset readers: a directory in the dataset's own format -> one :class:`EvalSet`
(images, a 0/1 label table with one column per class, boxes in original pixel coordinates); the
formats are described in :mod:`offclip.models.evaluate`."""

from __future__ import annotations

import ast
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...data_contracts.enums import CHEXPERT_OBSERVATIONS, EVAL_DATASETS
from .images import read_image_size

NORMAL = "No Finding"
DATASETS = EVAL_DATASETS  # data_contracts.enums
BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
#: what a dataset calls its normal class (mapped to NORMAL)
NORMAL_ALIASES = ("No finding", "No Finding", "normal", "Normal")

VINDR_BOX_NUMERIC = ("x_min", "y_min", "x_max", "y_max")
CHEXPERT_CLASSES = CHEXPERT_OBSERVATIONS
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
            size: tuple[float, float]
            try:
                size = read_image_size(image)
            except Exception:  # reported as a reject when the image is evaluated
                size = (math.nan, math.nan)
            rows.append({"image_id": image.id, "rows": size[0], "columns": size[1]})
        return pd.DataFrame(rows, columns=["image_id", "rows", "columns"])


def read_eval_set(name: str, root: str | os.PathLike, **options) -> EvalSet:
    """Read dataset ``name`` (one of :data:`DATASETS`) from ``root``; ``options`` go to its reader."""
    readers: dict[str, Callable[..., EvalSet]] = {
        "vindr-cxr": read_vindr,
        "openi": read_openi,
        "chexpert": read_chexpert,
        "padchest": read_padchest,
    }
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
            raise ValueError(
                f"{path}: column {column!r} must hold 0/1, found {raw[bad].iloc[0]!r} "
                f"(row {int(np.flatnonzero(bad.to_numpy())[0]) + 2})"
            )
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
        notes.append(
            f"labels derived from the annotation rows of {kaggle_csv.name} (positive when any "
            "radiologist marked the class)"
        )
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
    df = _read_csv(
        path,
        ["image_id", "class_name", *VINDR_BOX_NUMERIC],
        "vindr-cxr annotations",
        dtype={"image_id": str, "class_name": str},
    )
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].str.strip(),
            "class_name": df["class_name"].str.strip().replace({a: NORMAL for a in NORMAL_ALIASES}),
        }
    )
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
        df = _read_csv(
            table, ["imageid", "normal", "mesh_major"], "openi labels", dtype={"imageid": str, "mesh_major": str}
        )
        normal = _binary_labels(df, ["normal"], table)["normal"]
        rows = [
            (str(i).strip(), float(n), str(m) if isinstance(m, str) else "")
            for i, n, m in zip(df["imageid"], normal, df["mesh_major"])
        ]
        terms = {image_id: [t for t in mesh.split(";") if t.strip()] for image_id, _, mesh in rows}
        normals = {image_id: n for image_id, n, _ in rows}
        ids = [r[0] for r in rows]
    else:
        xml_dir = root / "ecgen-radiology"
        files = sorted(xml_dir.glob("*.xml")) if xml_dir.is_dir() else []
        if not files:
            raise FileNotFoundError(f"openi: neither {table} nor report XMLs in {xml_dir}")
        from ...pipeline.openi import parse_report_xml

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
    counts = pd.Series([name for labels in label_lists for name in set(labels)], dtype=str).value_counts()
    return sorted(counts[counts >= min_positives].index)


def _multi_hot(ids: list[str], label_lists: list[list[str]], classes: list[str]) -> pd.DataFrame:
    """A 0/1 frame (index ``image_id``; columns NORMAL, then ``classes``): each image's labels
    among ``classes`` set to 1; NORMAL = 1 when it has none (callers may overwrite it)."""
    column = {name: k for k, name in enumerate(classes)}
    matrix = np.zeros((len(ids), len(classes)), dtype=float)
    for row, labels in enumerate(label_lists):
        matrix[row, [column[name] for name in labels if name in column]] = 1.0
    values = pd.DataFrame(matrix, index=pd.Index(ids, name="image_id"), columns=classes)
    values.insert(0, NORMAL, (matrix.sum(axis=1) == 0).astype(float))
    return values


def _mesh_heading(term: str) -> str:
    return term.split("/")[0].strip()


def _with_images(
    name: str, root: Path, labels: pd.DataFrame, candidates, notes: list[str], rejects: list[dict] | None = None
) -> EvalSet:
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
        raise ValueError(
            f"{path}: column {classes[col]!r} must hold 1/0/-1/blank, found {df[classes[col]].iloc[row]!r}"
        )
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
def read_padchest(
    root: Path, csv: str | None = None, projections: Iterable[str] | None = None, min_positives: int = 1
) -> EvalSet:
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
    df = _read_csv(
        path,
        ["ImageID", "ImageDir", "Labels"],
        "padchest labels",
        dtype={"ImageID": str, "ImageDir": str, "Labels": str},
        low_memory=False,
    )
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
            rejects.append(
                {"image_id": image_id, "path": str(where), "reason": "unreadable_labels", "detail": str(exc)}
            )
            continue
        excluded = [name for name in labels if name in PADCHEST_EXCLUDE]
        if excluded:
            rejects.append(
                {
                    "image_id": image_id,
                    "path": str(where),
                    "reason": "excluded_by_labels",
                    "detail": f"PadChest label {excluded[0]!r}",
                }
            )
            continue
        parsed[image_id], dirs[image_id] = labels, _padchest_dir(image_dir)
    findings = [[name for name in names if name != "normal"] for names in parsed.values()]
    labels = _multi_hot(list(parsed), findings, _frequent(findings, min_positives))
    labels[NORMAL] = [float("normal" in names) for names in parsed.values()]
    return _with_images("padchest", root, labels, lambda i: [root / dirs[i] / i, root / i], notes, rejects)


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

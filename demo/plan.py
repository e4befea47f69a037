"""Plan a demo world: which Open-I reports become which MIMIC-CXR studies, subjects, splits and
images, with header characteristics taken from the real IU DICOM header table.

Planning is cheap and runs in one process; everything random is drawn from ``numpy`` generators
seeded by the world seed, so the same sources + N + seed + scale give the same plan.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data_contracts.enums import FRONTAL_VIEWS
from ..pipeline.openi import OpenIReport
from .dicom_writer import TRANSFER_SYNTAXES

#: share of images per transfer syntax (every syntax appears once before the draw starts)
SYNTAX_WEIGHTS: dict[str, float] = {
    "explicit_le": 0.25,
    "implicit_le": 0.15,
    "deflated": 0.10,
    "rle": 0.15,
    "j2k_lossless": 0.25,
    "jpeg_baseline": 0.10,
}
assert set(SYNTAX_WEIGHTS) == set(TRANSFER_SYNTAXES)

LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LARGE LATERAL")
MAX_IMAGES_PER_STUDY = 3
#: MIMIC-CXR's official split is ~98 / 0.8 / 1.2 %; a demo world needs a usable held-out set.
DEFAULT_SPLIT = {"validate": 0.05, "test": 0.10}


@dataclass
class ImagePlan:
    dicom_id: str
    index: int  #: position within the study (0 = first)
    view_kind: str  #: "frontal" or "lateral" (the truth, whatever the header says)
    view_position: str | None  #: value written to ViewPosition; None = attribute absent
    true_view: str  #: PA / AP / LL / LATERAL ... (what the image really is)
    view_code: str | None  #: ViewCodeSequence key, None = absent
    device_description: str | None  #: AcquisitionDeviceProcessingDescription, None = absent
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    modality: str
    syntax: str
    window: bool
    rescale: bool
    presentation_lut: bool
    pixel_spacing: float | None
    patient_orientation: tuple[str, str] | None
    body_part: str | None
    source_imageid: str  #: the real IU header row this image's characteristics came from


@dataclass
class StudyPlan:
    report: OpenIReport
    subject_id: int
    study_id: int
    folder: str  #: "p10" … "p19"
    split: str
    study_date: str
    study_time: str
    procedure: str  #: PerformedProcedureStepDescription / examination line
    orientation: str | None  #: PatientOrientationCodeSequence code meaning
    patient_sex: str
    birth_date: str
    accession: str
    images: list[ImagePlan] = field(default_factory=list)

    @property
    def report_path(self) -> str:
        return f"files/{self.folder}/p{self.subject_id}/s{self.study_id}.txt"

    def image_path(self, image: ImagePlan) -> str:
        return f"files/{self.folder}/p{self.subject_id}/s{self.study_id}/{image.dicom_id}.dcm"


def _mimic_dicom_id(rng: np.random.Generator) -> str:
    words = rng.integers(0, 2**32, size=5, dtype=np.uint64)
    return "-".join(f"{int(w):08x}" for w in words)


def _parse_pair(value) -> tuple[str, str] | None:
    if not isinstance(value, str) or not value.startswith("["):
        return None
    try:
        items = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    return (str(items[0]), str(items[1])) if len(items) >= 2 else None


def _spacing(value) -> float | None:
    pair = _parse_pair(value)
    try:
        return float(pair[0]) if pair else None
    except ValueError:
        return None


def _present(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))


def _study_views(rows: list[dict]) -> list[tuple[str, str | None]]:
    """(true view, ViewPosition to record or None) for the images of one study.

    IU headers say ``PA`` for many lateral images, so the header's value is not the truth: a
    header lateral (LL/RL/LATERAL) or AP is kept; otherwise the study's first image is the frontal
    (PA) and the next one the lateral, as in Open-I's PA-and-lateral studies. The header decides
    only whether ViewPosition is *recorded* (IU lacks it in ~35% of images).
    """
    recorded = []
    for row in rows:
        value = row.get("View Position")
        recorded.append(value.strip().upper() if isinstance(value, str) and value.strip() else None)
    truth: list[str | None] = [v if (v in LATERAL_VIEWS or v == "AP") else None for v in recorded]
    for i, view in enumerate(truth):
        if view is None:
            has_frontal = any(t in FRONTAL_VIEWS for t in truth)
            has_lateral = any(t in LATERAL_VIEWS for t in truth)
            truth[i] = "LL" if has_frontal and not has_lateral else "PA"
    views = []
    for true_view, value in zip(truth, recorded):
        if value is not None and (value in FRONTAL_VIEWS) != (true_view in FRONTAL_VIEWS):
            value = true_view  # recorded, but consistent with what the image is
        views.append((true_view, value))
    return views


class WorldPlanner:
    """Turns reports + the real header table into :class:`StudyPlan`s."""

    def __init__(self, headers: pd.DataFrame, seed: int, scale: float,
                 split: dict[str, float] | None = None) -> None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], not {scale}")
        self.headers = headers
        self.seed = seed
        self.scale = scale
        self.split = dict(DEFAULT_SPLIT if split is None else split)
        known = headers["View Position"].astype("string").str.upper()
        self._frontal_rows = headers.index[known.isin(FRONTAL_VIEWS).fillna(False).to_numpy()]
        self._lateral_rows = headers.index[known.isin(LATERAL_VIEWS).fillna(False).to_numpy()]
        self._rows: dict[str, dict] = headers.to_dict("index")  # row access without pandas overhead

    # -- studies, subjects, splits -------------------------------------------------------------
    def plan(self, reports: list[OpenIReport], n_studies: int) -> list[StudyPlan]:
        if n_studies < 1:
            raise ValueError("a world needs at least one study")
        if n_studies > len(reports):
            raise ValueError(
                f"--studies {n_studies} exceeds the {len(reports)} Open-I reports available "
                "(each study is one real report)"
            )
        rng = np.random.default_rng([self.seed, 0])
        chosen = [reports[i] for i in sorted(rng.choice(len(reports), size=n_studies, replace=False))]
        order = rng.permutation(n_studies)

        # Subjects: 1 + geometric studies each (MIMIC averages ~3; Open-I has one per patient).
        groups: list[list[OpenIReport]] = []
        i = 0
        while i < n_studies:
            size = int(min(rng.geometric(0.6), n_studies - i))
            groups.append([chosen[j] for j in order[i:i + size]])
            i += size
        n_subjects = len(groups)
        subject_ids = self._unique_ids(rng, n_subjects, per_folder=True)
        study_ids = self._unique_ids(rng, n_studies, per_folder=False)

        splits = self._assign_splits(rng, n_subjects)
        plans: list[StudyPlan] = []
        k = 0
        for s, group in enumerate(groups):
            subject_id = subject_ids[s]
            sex = str(rng.choice(["F", "M"]))
            birth = dt.date(2050, 1, 1) + dt.timedelta(days=int(rng.integers(0, 70 * 365)))
            shift_days = int(rng.integers(100, 180) * 365.25 + rng.integers(0, 365))
            for report in group:
                plan = self._plan_study(report, subject_id, study_ids[k], splits[s], shift_days,
                                        sex, birth.strftime("%Y%m%d"))
                plans.append(plan)
                k += 1
        self._assign_syntaxes(plans)
        plans.sort(key=lambda p: (p.subject_id, p.study_id))
        return plans

    def _unique_ids(self, rng: np.random.Generator, n: int, per_folder: bool) -> list[int]:
        ids: list[int] = []
        seen: set[int] = set()
        while len(ids) < n:
            if per_folder:  # spread subjects evenly over p10 … p19
                value = int(f"1{len(ids) % 10}{int(rng.integers(0, 10**6)):06d}")
            else:
                value = int(rng.integers(50_000_000, 60_000_000))
            if value not in seen:
                seen.add(value)
                ids.append(value)
        return ids

    def _assign_splits(self, rng: np.random.Generator, n_subjects: int) -> list[str]:
        order = rng.permutation(n_subjects)
        n_test = math.ceil(self.split.get("test", 0) * n_subjects) if n_subjects > 2 else 0
        n_val = math.ceil(self.split.get("validate", 0) * n_subjects) if n_subjects > 2 else 0
        splits = ["train"] * n_subjects
        for rank, subject in enumerate(order):
            if rank < n_test:
                splits[subject] = "test"
            elif rank < n_test + n_val:
                splits[subject] = "validate"
        return splits

    # -- one study ------------------------------------------------------------------------------
    def _plan_study(self, report: OpenIReport, subject_id: int, study_id: int, split: str,
                    shift_days: int, sex: str, birth: str) -> StudyPlan:
        rng = np.random.default_rng([self.seed, 1, report.uid])
        rows = [self._rows[i] for i in report.image_ids if i in self._rows]
        if not rows:  # a report without usable images: sample real header rows
            rows = [self._rows[rng.choice(self._frontal_rows)]]
            if rng.random() < 0.85:
                rows.append(self._rows[rng.choice(self._lateral_rows)])
        rows = rows[:MAX_IMAGES_PER_STUDY]
        pairs = list(zip(rows, _study_views(rows)))
        if not any(v[0] in FRONTAL_VIEWS for _, v in pairs):
            # every study gets a frontal view: the first image becomes a PA without a recorded
            # view when its header said lateral
            pairs[0] = (pairs[0][0], ("PA", None))

        first = pairs[0][0]
        date = _shift_date(first.get("Study Date"), shift_days, rng)
        seconds = int(rng.integers(0, 86400))
        study_time = f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}.{int(rng.integers(0, 1000)):03d}"
        has_lateral = any(v[0] not in FRONTAL_VIEWS for _, v in pairs)
        portable = any(v[0] == "AP" for _, v in pairs)
        if portable and has_lateral:
            procedure, orientation = "CHEST (AP AND LAT)", "Erect"
        elif portable:
            procedure, orientation = "CHEST (PORTABLE AP)", "Recumbent"
        elif has_lateral:
            procedure, orientation = "CHEST (PA AND LAT)", "Erect"
        else:
            procedure, orientation = "CHEST (PA)", "Erect"
        if rng.random() < 0.1:
            orientation = None
        plan = StudyPlan(
            report=report, subject_id=subject_id, study_id=study_id, folder=f"p{str(subject_id)[:2]}",
            split=split, study_date=date, study_time=study_time, procedure=procedure,
            orientation=orientation, patient_sex=sex, birth_date=birth,
            accession=f"{int(rng.integers(10**7, 10**8))}",
        )
        for index, (row, (true_view, recorded)) in enumerate(pairs):
            plan.images.append(self._plan_image(rng, row, index, true_view, recorded))
        return plan

    def _plan_image(self, rng: np.random.Generator, row: dict, index: int,
                    true_view: str, recorded: str | None) -> ImagePlan:
        frontal = true_view in FRONTAL_VIEWS
        if recorded is None:  # ViewPosition missing: the view is told elsewhere
            with_code = rng.random() < 0.7
        else:
            with_code = rng.random() < 0.8
        view_code = (true_view if true_view in ("PA", "AP", "LL", "RL") else "LATERAL") if with_code else None
        device = None
        if recorded is None and view_code is None:
            device = {"PA": "CHEST PA", "AP": "CHEST AP"}.get(true_view, "CHEST LAT")
        rows = max(64, int(round(int(row["Rows"]) * self.scale)))
        cols = max(64, int(round(int(row["Columns"]) * self.scale)))
        spacing = _spacing(row.get("Imager Pixel Spacing"))
        return ImagePlan(
            dicom_id=_mimic_dicom_id(rng),
            index=index,
            view_kind="frontal" if frontal else "lateral",
            view_position=recorded,
            true_view=true_view,
            view_code=view_code,
            device_description=device,
            rows=rows,
            columns=cols,
            bits_stored=int(row["Bits Stored"]),
            photometric=str(row["Photometric Interpretation"]).strip(),
            modality=str(row["Modality"]) if _present(row.get("Modality")) else "CR",
            syntax="",  # assigned world-wide, see _assign_syntaxes
            window=_present(row.get("Window Center")),
            rescale=_present(row.get("Rescale Slope")),
            presentation_lut=_present(row.get("Presentation LUT Shape")),
            pixel_spacing=round(spacing / self.scale, 4) if spacing else None,
            patient_orientation=_parse_pair(row.get("Patient Orientation")),
            body_part=str(row["Body Part Examined"]) if _present(row.get("Body Part Examined")) else None,
            source_imageid=str(row["imageid"]),
        )

    def _assign_syntaxes(self, plans: list[StudyPlan]) -> None:
        rng = np.random.default_rng([self.seed, 2])
        images = [img for p in sorted(plans, key=lambda p: p.report.uid) for img in p.images]
        names = list(SYNTAX_WEIGHTS)
        weights = np.array([SYNTAX_WEIGHTS[n] for n in names])
        first = list(rng.permutation(names))  # every syntax appears at least once
        for k, image in enumerate(images):
            image.syntax = str(first[k]) if k < len(first) else str(rng.choice(names, p=weights))
            if image.syntax == "jpeg_baseline":
                image.bits_stored = 8


def _shift_date(value, shift_days: int, rng: np.random.Generator) -> str:
    """Shift a real IU study date into MIMIC's de-identified future (years 2110–2210)."""
    try:
        base = dt.datetime.strptime(str(int(value)), "%Y%m%d").date()
    except (TypeError, ValueError):
        base = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3 * 365)))
    return (base + dt.timedelta(days=shift_days)).strftime("%Y%m%d")

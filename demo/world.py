"""Build the demo world: a MIMIC-CXR v2.0.0-shaped directory from real Open-I reports and headers.

Layout written under ``OUT``::

    files/p1X/p<subject>/s<study>/<dicom_id>.dcm      DICOM images (six transfer syntaxes)
    files/p1X/p<subject>/s<study>.txt                 the report, in MIMIC's text format
    mimic-cxr-2.0.0-metadata.csv                      the 12 real MIMIC columns
    mimic-cxr-2.0.0-split.csv                         dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-chexpert.csv                      subject_id, study_id, 14 CheXpert columns
    mimic-cxr-2.0.0-negbio.csv                        the same columns, NegBio's reading (:func:`negbio_labels`)
    eval/vindr-cxr/…, eval/openi/…, eval/chexpert/…   held-out evaluation sets in real formats
    faults.json                                       the injected bad inputs (--faults)
    offclip_demo/                                     ground truth: images, studies, lesion boxes,
                                                      world.json (parameters, counts; written last)

Studies are rendered by the pipeline's executor layer (:class:`RenderStage`, one batch per chunk of
studies, in worker processes with ``workers`` > 1); every random
draw comes from generators seeded by (seed, report uid, image index), so the tree is
byte-identical for the same sources, N, seed and scale whatever the number of workers.

Evaluation sets: by default each validate/test study gives one image (its first frontal). With
``eval_images=N`` the sets hold N renders of held-out reports instead, 68 % of them normal
(VinDr-CXR's share of "No finding"): :func:`plan_eval_renders` draws the reports, and each
render (one more task chunk in the same pool) has its own anatomy and noise, seeded by
(seed, report uid, render index). ``offclip_demo/eval_images.csv`` maps every eval image to its
study, report and render index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data_contracts.enums import CHEXPERT_OBSERVATIONS, FRONTAL_VIEWS
from ..pipeline import openi
from ..pipeline.atomic import atomic_write_bytes, atomic_write_text, sha256_file
from ..pipeline.executor import make_executor, resolve_workers
from . import phantom, reports
from .dicom_writer import VIEW_CODES, ImageHeader, encode_dicom, phantom_to_stored
from .lesions import LESION_KINDS
from .plan import ImagePlan, StudyPlan, WorldPlanner

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
#: VinDr-CXR v1.0.0 image_labels_test.csv: 22 local labels, 6 global labels (incl. No finding)
VINDR_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)
#: CheXpert's own column order (differs from MIMIC's alphabetical one)
CHEXPERT_ORDER = CHEXPERT_OBSERVATIONS
FAULT_KINDS = (
    "truncated_dicom", "dicom_without_pixels", "not_dicom", "empty_report",
    "non_utf8_report", "lateral_only", "no_report", "missing_file",
)
DEFAULT_SCALE = 0.25
LAYOUTS = ("dicom", "jpg")
REPORT_ARCHIVES = ("tree", "zip", "tgz")
METADATA_PLACES = ("root", "separate", "none")
SCHEMA_VERSION = 1
#: VinDr-CXR v1.0.0 test set: 2,051 of 3,000 images are "No finding" (68 %)
VINDR_NORMAL_PERCENT = 68
EVAL_IMAGE_COLUMNS = (
    "image_id", "openi_imageid", "chexpert_path", "subject_id", "study_id", "split", "openi_uid",
    "source_dicom_id", "render", "label", "n_lesions", "n_boxes", "rows", "columns", "view",
)


@dataclass
class WorldConfig:
    out: Path
    studies: int = 200
    seed: int = 0
    scale: float = DEFAULT_SCALE
    faults: bool = False
    openi: str | None = None  #: directory with the two Open-I files (default: installed wheel)
    workers: int = 0  #: 0 -> all cores
    progress: bool = True
    overwrite: bool = False
    #: None: one eval image per held-out study (its first frontal); N: N renders of held-out
    #: reports, 68 % normal (see :func:`plan_eval_renders`)
    eval_images: int | None = None
    #: the form of MIMIC-CXR to write (see :func:`_package`): the DICOM release or MIMIC-CXR-JPG
    layout: str = "dicom"
    #: where the reports go: the tree (files/…/sSTUDY.txt), mimic-cxr-reports.zip or .tar.gz
    reports_archive: str = "tree"
    #: the mimic-cxr-2.0.0-*.csv files: in the root, in OUT/metadata (a separate download), or none
    metadata_csvs: str = "root"

    def __post_init__(self) -> None:
        for name, allowed in (("layout", LAYOUTS), ("reports_archive", REPORT_ARCHIVES),
                              ("metadata_csvs", METADATA_PLACES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


@dataclass
class WorldSummary:
    out: str
    studies: int
    subjects: int
    images: int
    seconds: float
    by_folder: dict = field(default_factory=dict)
    by_split: dict = field(default_factory=dict)
    by_label: dict = field(default_factory=dict)
    by_view: dict = field(default_factory=dict)
    by_syntax: dict = field(default_factory=dict)
    by_photometric: dict = field(default_factory=dict)
    by_bits: dict = field(default_factory=dict)
    lesions: dict = field(default_factory=dict)
    eval_sets: dict = field(default_factory=dict)
    eval_no_finding: int = 0  #: VinDr "No finding" images of the eval sets
    eval_reports: int = 0  #: distinct held-out reports the eval images were rendered from
    faults: list = field(default_factory=list)
    bytes_written: int = 0

    def to_text(self) -> str:
        def fmt(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items())

        lines = [
            f"demo world at {self.out}",
            f"  studies {self.studies} · subjects {self.subjects} · images {self.images} · "
            f"{self.bytes_written / 1e6:.1f} MB · built in {self.seconds:.1f} s",
            f"  folders      {fmt(self.by_folder)}",
            f"  splits       {fmt(self.by_split)}",
            f"  reports      {fmt(self.by_label)} (Open-I MeSH)",
            f"  views        {fmt(self.by_view)}",
            f"  syntaxes     {fmt(self.by_syntax)}",
            f"  photometric  {fmt(self.by_photometric)}",
            f"  bits stored  {fmt(self.by_bits)}",
            f"  lesions      {fmt(self.lesions) or 'none'}",
            f"  eval sets    {fmt(self.eval_sets)}{self._eval_text()}",
        ]
        if self.faults:
            lines.append(f"  faults       {', '.join(f['fault'] for f in self.faults)} (faults.json)")
        return "\n".join(lines)

    def _eval_text(self) -> str:
        n = max(self.eval_sets.values(), default=0)
        if not n:
            return ""
        return (f" · {self.eval_no_finding} No finding ({100 * self.eval_no_finding / n:.1f} %)"
                f" · from {self.eval_reports} held-out reports")


# ------------------------------------------------------------------------------------------
# the powered evaluation set: which held-out reports are rendered how often
# ------------------------------------------------------------------------------------------
@dataclass
class EvalRender:
    """One evaluation image: render ``render`` (0, 1, …) of a held-out study's report, drawn at
    the geometry of the study's first frontal image with its own anatomy and noise."""

    study: StudyPlan
    image: ImagePlan
    render: int
    normal: bool

    @property
    def key(self) -> str:
        """Unique per image: the DICOM's SOP instance UID and the VinDr image id derive from it."""
        return f"{self.image.dicom_id}/eval{self.render}"

    @property
    def vindr_id(self) -> str:
        return vindr_image_id(self.key)

    @property
    def openi_id(self) -> str:
        return f"CXR{self.study.report.uid}_IM-E{self.render:03d}-1001"

    @property
    def chexpert_path(self) -> str:
        return _chexpert_path(self.study, f"view{self.render + 1}_frontal.jpg")


def eval_normal_count(n_images: int) -> int:
    """Normal images in an eval set of ``n_images``: VinDr-CXR's 68 %, rounded half up."""
    return (VINDR_NORMAL_PERCENT * n_images + 50) // 100


def plan_eval_renders(plans: list[StudyPlan], n_images: int, seed: int) -> list[EvalRender]:
    """``n_images`` renders of held-out (validate/test) reports, exactly :func:`eval_normal_count`
    of them normal.

    Normal: Open-I MeSH ``normal`` (nothing drawn). Abnormal: at least one lesion drawn. Reports
    whose MeSH is not normal but draw nothing are left out: their image would be "No finding"
    while the report describes a finding. Each class's reports are visited in a seeded random
    order, cycling through all of them before any is rendered again, so render counts per report
    differ by at most one.
    """
    if n_images < 1:
        raise ValueError(f"--eval-images must be at least 1, not {n_images}")
    train_subjects = {p.subject_id for p in plans if p.split == "train"}  # splits are per subject;
    held_out = [p for p in plans if p.split != "train" and p.subject_id not in train_subjects  # checked anyway
                and _first_frontal(p) is not None]
    pools = {
        True: [p for p in held_out if p.report.is_normal],
        False: [p for p in held_out if not p.report.is_normal and reports.lesions_from_mesh(p.report)],
    }
    n_normal = eval_normal_count(n_images)
    wanted = {True: n_normal, False: n_images - n_normal}
    for normal, pool in pools.items():
        if wanted[normal] and not pool:
            kind = "normal (MeSH normal)" if normal else "abnormal (with a rendered lesion)"
            raise ValueError(
                f"--eval-images {n_images} needs {wanted[normal]} {kind.split()[0]} renders, but the "
                f"{len(held_out)} validate/test studies hold no {kind} report; raise --studies")
    rng = np.random.default_rng([seed, 6])
    renders = []
    for normal in (True, False):
        pool = pools[normal]
        order = rng.permutation(len(pool)) if pool else np.array([], dtype=int)
        for i in range(wanted[normal]):
            study = pool[int(order[i % len(pool)])]
            renders.append(EvalRender(study, _first_frontal(study), i // len(pool), normal))
    renders.sort(key=lambda e: (e.study.subject_id, e.study.study_id, e.render))
    return renders


def _first_frontal(study: StudyPlan) -> ImagePlan | None:
    return next((i for i in study.images if i.view_kind == "frontal"), None)


# ------------------------------------------------------------------------------------------
# per-study work (runs in worker processes)
# ------------------------------------------------------------------------------------------
def _image_header(study: StudyPlan, image: ImagePlan) -> ImageHeader:
    extra = {}
    if image.device_description:
        extra["AcquisitionDeviceProcessingDescription"] = image.device_description
    return ImageHeader(
        subject_id=study.subject_id, study_id=study.study_id, dicom_id=image.dicom_id,
        rows=image.rows, columns=image.columns, bits_stored=image.bits_stored,
        photometric=image.photometric, modality=image.modality,
        view_position=image.view_position, view_code=image.view_code,
        procedure=study.procedure, patient_orientation_meaning=study.orientation,
        patient_orientation=image.patient_orientation, body_part=image.body_part,
        pixel_spacing=image.pixel_spacing, window=image.window, rescale=image.rescale,
        presentation_lut=image.presentation_lut, study_date=study.study_date,
        study_time=study.study_time, instance_number=image.index + 1,
        patient_name=f"DEMO^SUBJECT{study.subject_id}", patient_birth_date=study.birth_date,
        patient_sex=study.patient_sex, accession_number=study.accession, extra=extra,
    )


def vindr_image_id(dicom_id: str) -> str:
    return hashlib.md5(dicom_id.encode()).hexdigest()


def _render_study(study: StudyPlan, out: Path, seed: int, eval_image: bool = True, layout: str = "dicom") -> dict:
    """Render and write one study; returns the rows the main process tabulates. A held-out
    study's first frontal image goes to the eval sets unless ``eval_image`` is false."""
    lesions = reports.lesions_from_mesh(study.report)
    anatomy = phantom.sample_anatomy(np.random.default_rng([seed, 3, study.report.uid]))
    text = reports.mimic_report_text(study.report, examination=study.procedure)
    atomic_write_text(out / study.report_path, text)

    images, boxes, eval_items = [], [], []
    for image in study.images:
        rng = np.random.default_rng([seed, 4, study.report.uid, image.index])
        if image.view_kind == "frontal":
            pixels, image_boxes = phantom.render_frontal(
                anatomy, image.rows, image.columns, lesions, rng, view=image.true_view)
        else:
            pixels, image_boxes = phantom.render_lateral(anatomy, image.rows, image.columns, lesions, rng)
        if layout == "jpg":  # MIMIC-CXR-JPG: 8-bit MONOCHROME2 JPEGs (quality 95), no header
            data = _jpeg_bytes(phantom_to_stored(pixels, 8, "MONOCHROME2"))
            atomic_write_bytes(out / _jpg_path(study.image_path(image)), data)
        else:
            stored = phantom_to_stored(pixels, image.bits_stored, image.photometric)
            data = encode_dicom(_image_header(study, image), stored, image.syntax)
            atomic_write_bytes(out / study.image_path(image), data)
        images.append({"dicom_id": image.dicom_id, "bytes": len(data)})
        for b in image_boxes:
            boxes.append({"dicom_id": image.dicom_id, "view": image.view_kind, "kind": b.kind,
                          "vindr_class": LESION_KINDS[b.kind][0], "x_min": b.x_min, "y_min": b.y_min,
                          "x_max": b.x_max, "y_max": b.y_max})
        if eval_image and study.split != "train" and image.view_kind == "frontal" and not eval_items:
            eval_items.append(_write_eval_image(study, image, pixels, out, vindr_image_id(image.dicom_id),
                                                _openi_image_id(study, image), _chexpert_path(study)))
    return {"study_id": study.study_id, "lesions": [asdict(l) for l in lesions], "images": images,
            "boxes": boxes, "eval": eval_items}


def _render_eval(item: EvalRender, out: Path, seed: int) -> dict:
    """Render one eval image (its own anatomy and noise) and write it in the three formats."""
    study, image = item.study, item.image
    lesions = reports.lesions_from_mesh(study.report)
    anatomy = phantom.sample_anatomy(np.random.default_rng([seed, 7, study.report.uid, item.render]))
    rng = np.random.default_rng([seed, 8, study.report.uid, item.render])
    pixels, boxes = phantom.render_frontal(anatomy, image.rows, image.columns, lesions, rng, view=image.true_view)
    written = _write_eval_image(study, image, pixels, out, item.vindr_id, item.openi_id, item.chexpert_path,
                                header_id=item.key, instance=item.render + 1)
    written["boxes"] = [{"kind": b.kind, "vindr_class": LESION_KINDS[b.kind][0], "x_min": b.x_min,
                         "y_min": b.y_min, "x_max": b.x_max, "y_max": b.y_max} for b in boxes]
    written["kinds"] = sorted({l.kind for l in lesions})
    return written


def _write_eval_image(study: StudyPlan, image: ImagePlan, pixels: np.ndarray, out: Path, vid: str,
                      openi_id: str, chexpert_path: str, header_id: str | None = None,
                      instance: int | None = None) -> dict:
    """One eval image in the three evaluation formats (VinDr DICOM, Open-I PNG, CheXpert JPEG)."""
    header = _image_header(study, image)
    if header_id is not None:
        header.dicom_id, header.instance_number = header_id, instance
    header.bits_stored = 12 if image.bits_stored == 8 else image.bits_stored
    header.photometric = "MONOCHROME2" if image.bits_stored == 8 else image.photometric
    header.view_position, header.view_code = "PA" if image.true_view == "PA" else "AP", None
    header.patient_name, header.accession_number = "", ""  # VinDr-CXR is de-identified this way
    stored = phantom_to_stored(pixels, header.bits_stored, header.photometric)
    atomic_write_bytes(out / "eval/vindr-cxr/test" / f"{vid}.dicom", encode_dicom(header, stored, "explicit_le"))
    eight = phantom_to_stored(pixels, 8, "MONOCHROME2")
    _save_image(eight, out / "eval/openi/NLMCXR_png" / f"{openi_id}.png", "PNG")
    _save_image(eight, out / "eval/chexpert" / chexpert_path, "JPEG")
    return {"dicom_id": image.dicom_id, "vindr_id": vid, "openi_id": openi_id, "chexpert_path": chexpert_path,
            "view": image.true_view, "rows": image.rows, "columns": image.columns}


def _openi_image_id(study: StudyPlan, image: ImagePlan) -> str:
    real = image.source_imageid
    return real if real.startswith(f"CXR{study.report.uid}_") else f"CXR{study.report.uid}_IM-DEMO-{image.index + 1}001"


def _chexpert_path(study: StudyPlan, name: str = "view1_frontal.jpg") -> str:
    return f"CheXpert-v1.0/test/patient{study.subject_id % 10**5:05d}/study{study.study_id}/{name}"


def _jpg_path(dicom_path: str) -> str:
    return dicom_path[: -len(".dcm")] + ".jpg"


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _save_image(pixels: np.ndarray, path: Path, fmt: str) -> None:
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt == "JPEG" else {"compress_level": 1}
    Image.fromarray(pixels, mode="L").save(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def _render_chunk(args: tuple[list[StudyPlan], str, int, bool, str]) -> list[dict]:
    chunk, out, seed, eval_image, layout = args
    return [_render_study(study, Path(out), seed, eval_image, layout) for study in chunk]


def _render_eval_chunk(args: tuple[list[EvalRender], str, int]) -> list[dict]:
    chunk, out, seed = args
    return [_render_eval(item, Path(out), seed) for item in chunk]


class RenderStage:
    """The render as an executor stage (:mod:`offclip.pipeline.executor`): a batch is one task,
    ``("studies", chunk args)`` or ``("eval", chunk args)``; nothing to set up per worker."""

    def setup(self) -> None:
        pass

    def process_batch(self, task: tuple) -> list[dict]:
        kind, args = task
        return _render_chunk(args) if kind == "studies" else _render_eval_chunk(args)


# ------------------------------------------------------------------------------------------
# the build
# ------------------------------------------------------------------------------------------
def build_world(config: WorldConfig) -> WorldSummary:
    start = time.perf_counter()
    out = Path(config.out)
    if config.eval_images is not None and config.eval_images < 1:
        raise ValueError(f"--eval-images must be at least 1, not {config.eval_images}")
    _check_out(out, config.overwrite)
    sources = openi.find_sources(config.openi)
    all_reports = openi.load_reports(sources.reports_tgz)
    headers = openi.load_headers(sources.headers_csv)
    plans = WorldPlanner(headers, config.seed, config.scale).plan(all_reports, config.studies)
    if config.faults and sum(p.split == "train" for p in plans) < len(FAULT_KINDS) + 1:
        raise ValueError(f"--faults needs at least {len(FAULT_KINDS) + 1} training studies; "
                         f"raise --studies (now {config.studies})")
    renders = None if config.eval_images is None else plan_eval_renders(plans, config.eval_images, config.seed)
    _prepare_out(out, config.overwrite)  # after every check: a failed build leaves OUT as it was

    results, eval_results = _render_all(plans, out, config, renders or [])
    by_study = {r["study_id"]: r for r in results}
    _write_tables(out, plans)
    if renders is None:
        items = _study_eval_items(plans, by_study)
    else:
        items = [(e.study, r, r["boxes"], r["kinds"]) for e, r in zip(renders, eval_results)]
        _write_eval_truth(out, renders, eval_results)
    eval_counts = _write_eval_sets(out, items)
    faults = _inject_faults(out, plans, config.seed, config.layout) if config.faults else []
    if faults:
        atomic_write_text(out / "faults.json", json.dumps(faults, indent=2, sort_keys=True) + "\n")
    _package(out, plans, config)
    _write_truth(out, plans, by_study)

    summary = _summarise(out, plans, by_study, faults, time.perf_counter() - start, eval_counts, config.layout)
    world = {
        "schema_version": SCHEMA_VERSION,
        "parameters": {"studies": config.studies, "seed": config.seed, "scale": config.scale,
                       "faults": config.faults, "eval_images": config.eval_images, "layout": config.layout,
                       "reports_archive": config.reports_archive, "metadata_csvs": config.metadata_csvs},
        "sources": {p.name: sha256_file(p) for p in (sources.reports_tgz, sources.headers_csv)},
        "licence": openi.LICENCE,
        "notice": "Reports are real Open-I text rewritten at run time; do not redistribute this world.",
        "counts": {k: v for k, v in asdict(summary).items() if k not in ("out", "seconds", "bytes_written")},
    }
    # world.json is written last: its presence marks a complete world
    atomic_write_text(out / "offclip_demo" / "world.json", json.dumps(world, indent=2, sort_keys=True) + "\n")
    return summary


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a world to replace; raises when it holds something not to touch."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        if not (out / "offclip_demo").is_dir() and not (out / "files").is_dir():
            raise FileExistsError(f"refusing to overwrite {out}: it does not look like a demo world")
        return True
    return False


def _prepare_out(out: Path, overwrite: bool) -> None:
    if _check_out(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _render_all(plans: list[StudyPlan], out: Path, config: WorldConfig,
                renders: list[EvalRender]) -> tuple[list[dict], list[dict]]:
    """Render the studies, then the eval renders (if any), in one pool; results in input order."""
    from tqdm import tqdm

    workers = resolve_workers(config.workers)

    def chunked(items: list) -> list[list]:
        size = max(1, min(16, len(items) // (workers * 4) or 1))
        return [items[i:i + size] for i in range(0, len(items), size)]

    with_eval = config.eval_images is None  # default: the held-out studies give the eval images
    tasks = [("studies", (c, str(out), config.seed, with_eval, config.layout)) for c in chunked(plans)]
    tasks += [("eval", (c, str(out), config.seed)) for c in chunked(renders)]
    total = len(plans) + len(renders)
    bar = tqdm(total=total, unit="image" if renders else "study", desc="rendering", disable=not config.progress)
    results: list[list[dict]] = []
    try:
        with make_executor(RenderStage(), workers, batches=len(tasks)) as executor:
            for task, done in zip(tasks, executor.map(tasks)):
                results.append(done)
                bar.update(len(task[1][0]))
    finally:
        bar.close()
    study_results = [r for (kind, _), done in zip(tasks, results) if kind == "studies" for r in done]
    eval_results = [r for (kind, _), done in zip(tasks, results) if kind == "eval" for r in done]
    return study_results, eval_results


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode()


def _label(value) -> str:
    return "" if value is None else f"{float(value):.1f}"


def negbio_labels(study_id: int, chexpert: dict[str, float | None]) -> dict[str, float | None]:
    """The demo's ``mimic-cxr-2.0.0-negbio.csv`` row: the CheXpert row (same ground truth: the
    report's MeSH terms and text) read the way NegBio differs from it in real MIMIC-CXR, in
    uncertainty handling. An uncertain (-1.0) finding whose column index plus the study id is
    even becomes 0.0 (NegBio reads that hedge as a negation); the others stay -1.0. No Finding:
    blank when a finding is still positive or uncertain; 1.0 when CheXpert's is 1.0, or when
    NegBio negated every hedge of a report with nothing positive (the labelers' own No Finding
    rule); else CheXpert's (blank). So the two files disagree exactly on hedged reports.
    Deterministic (no random draw): the same world gives the same file for any worker count."""
    labels = dict(chexpert)
    negated = False
    for i, column in enumerate(reports.CHEXPERT_COLUMNS):
        if labels[column] == reports.UNCERTAIN and (study_id + i) % 2 == 0:
            labels[column] = reports.NEGATIVE
            negated = True
    finding = any(labels[c] in (reports.POSITIVE, reports.UNCERTAIN)
                  for c in reports.CHEXPERT_COLUMNS if c not in ("No Finding", "Support Devices"))
    if finding:
        labels["No Finding"] = None
    elif negated:  # every hedge negated and nothing positive: NegBio calls the report normal
        labels["No Finding"] = reports.POSITIVE
    return labels


def _write_tables(out: Path, plans: list[StudyPlan]) -> None:
    """The four MIMIC-CXR CSVs, one metadata/split row per image the plans hold."""

    meta, split, chex, negbio = [], [], [], []
    for study in plans:
        for image in study.images:
            meta.append([
                image.dicom_id, study.subject_id, study.study_id, study.procedure,
                image.view_position or "", image.rows, image.columns, study.study_date,
                study.study_time.lstrip("0") or "0", study.procedure,
                VIEW_CODES[image.view_code][1] if image.view_code else "", study.orientation or "",
            ])
            split.append([image.dicom_id, study.study_id, study.subject_id, study.split])
        labels = reports.chexpert_labels(study.report)
        chex.append([study.subject_id, study.study_id] + [_label(labels[c]) for c in reports.CHEXPERT_COLUMNS])
        read = negbio_labels(study.study_id, labels)
        negbio.append([study.subject_id, study.study_id] + [_label(read[c]) for c in reports.CHEXPERT_COLUMNS])
    atomic_write_bytes(out / "mimic-cxr-2.0.0-metadata.csv", _csv_bytes(METADATA_COLUMNS, meta))
    atomic_write_bytes(out / "mimic-cxr-2.0.0-split.csv", _csv_bytes(SPLIT_COLUMNS, split))
    atomic_write_bytes(out / "mimic-cxr-2.0.0-chexpert.csv",
                       _csv_bytes(("subject_id", "study_id") + tuple(reports.CHEXPERT_COLUMNS), chex))
    atomic_write_bytes(out / "mimic-cxr-2.0.0-negbio.csv",
                       _csv_bytes(("subject_id", "study_id") + tuple(reports.CHEXPERT_COLUMNS), negbio))


def _study_eval_items(plans: list[StudyPlan], by_study: dict) -> list[tuple]:
    """The default eval sets: each held-out study's first frontal image, as rendered for it."""
    items = []
    for study in plans:
        result = by_study[study.study_id]
        if result["eval"]:
            item = result["eval"][0]
            boxes = [b for b in result["boxes"] if b["dicom_id"] == item["dicom_id"]]
            items.append((study, item, boxes, {l["kind"] for l in result["lesions"]}))
    return items


def _write_eval_sets(out: Path, items: list[tuple]) -> dict:
    """The label files of the three eval sets for ``items`` = (study, written image, boxes,
    lesion kinds); returns the counts for the summary."""
    vindr_labels, vindr_boxes, openi_rows, chexpert_rows = [], [], [], []
    openi_images: dict[int, tuple[StudyPlan, list[str]]] = {}
    for study, item, boxes, kinds in items:
        present = {LESION_KINDS[k][0] for k in kinds} | {LESION_KINDS[k][1] for k in kinds}
        row = [item["vindr_id"]] + [int(name in present) for name in VINDR_LABELS[:-1]]
        vindr_labels.append(row + [int(not kinds)])
        if not boxes:
            vindr_boxes.append([item["vindr_id"], "R1", "No finding", "", "", "", ""])
        for b in boxes:
            vindr_boxes.append([item["vindr_id"], "R1", b["vindr_class"], b["x_min"], b["y_min"],
                                b["x_max"], b["y_max"]])
        report = study.report
        openi_rows.append([item["openi_id"], report.uid, item["view"], int(report.is_normal),
                           ";".join(report.mesh_major)])
        openi_images.setdefault(report.uid, (study, []))[1].append(item["openi_id"])
        labels = reports.chexpert_labels(report)
        # CheXpert's test labels are binary radiologist consensus: uncertain (-1) counts positive
        binary = [_label(None if labels[c] is None else float(labels[c] != 0.0)) for c in CHEXPERT_ORDER]
        chexpert_rows.append([item["chexpert_path"], {"F": "Female", "M": "Male"}[study.patient_sex],
                              int(study.study_date[:4]) - int(study.birth_date[:4]), "Frontal",
                              item["view"]] + binary)
    vindr = out / "eval/vindr-cxr/annotations"
    atomic_write_bytes(vindr / "image_labels_test.csv", _csv_bytes(("image_id",) + VINDR_LABELS, vindr_labels))
    atomic_write_bytes(vindr / "annotations_test.csv", _csv_bytes(
        ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"), vindr_boxes))
    atomic_write_bytes(out / "eval/openi/openi_labels.csv",
                       _csv_bytes(("imageid", "uid", "view", "normal", "mesh_major"), openi_rows))
    atomic_write_bytes(out / "eval/chexpert/test_labels.csv", _csv_bytes(
        ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_ORDER, chexpert_rows))
    for study, image_ids in openi_images.values():  # one report XML listing all its images
        _write_openi_xml(out, study, image_ids)
    return {"images": len(items), "no_finding": sum(row[-1] for row in vindr_labels),
            "reports": len(openi_images)}


def _write_eval_truth(out: Path, renders: list[EvalRender], results: list[dict]) -> None:
    """``offclip_demo/eval_images.csv``: which study, report and render every eval image is."""
    rows = []
    for e, r in zip(renders, results):
        rows.append([r["vindr_id"], r["openi_id"], r["chexpert_path"], e.study.subject_id, e.study.study_id,
                     e.study.split, e.study.report.uid, e.image.dicom_id, e.render,
                     "normal" if e.normal else "abnormal", len(r["kinds"]), len(r["boxes"]),
                     r["rows"], r["columns"], r["view"]])
    atomic_write_bytes(out / "offclip_demo" / "eval_images.csv", _csv_bytes(EVAL_IMAGE_COLUMNS, rows))


def _write_openi_xml(out: Path, study: StudyPlan, image_ids: list[str]) -> None:
    """A minimal report XML in Open-I's own layout (the sections, MeSH and parentImage)."""
    report = study.report
    root = ET.Element("eCitation")
    ET.SubElement(root, "IUXRId", id=str(report.uid))
    ET.SubElement(root, "licenseURL").text = "http://creativecommons.org/licenses/by-nc-nd/4.0/"
    abstract = ET.SubElement(ET.SubElement(ET.SubElement(root, "MedlineCitation"), "Article"), "Abstract")
    for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"):
        ET.SubElement(abstract, "AbstractText", Label=label).text = getattr(report, label.lower()) or None
    mesh = ET.SubElement(root, "MeSH")
    for term in report.mesh_major:
        ET.SubElement(mesh, "major").text = term
    for term in report.mesh_automatic:
        ET.SubElement(mesh, "automatic").text = term
    for image_id in image_ids:
        ET.SubElement(root, "parentImage", id=image_id)
    ET.indent(root)
    data = b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"
    atomic_write_bytes(out / "eval/openi/ecgen-radiology" / f"{report.uid}.xml", data)


def _write_truth(out: Path, plans: list[StudyPlan], by_study: dict) -> None:
    """Ground truth for tests and evaluation: what every file really is and holds."""
    images, studies, lesions = [], [], []
    present = {i.dicom_id for p in plans for i in p.images}  # faults may have removed some
    for study in plans:
        result = by_study[study.study_id]
        for image in study.images:
            path = study.image_path(image)
            images.append([image.dicom_id, study.subject_id, study.study_id, path, image.view_kind,
                           image.true_view, image.view_position or "", image.syntax, image.photometric,
                           image.bits_stored, image.rows, image.columns, image.source_imageid])
        studies.append([study.study_id, study.subject_id, study.report.uid, study.split,
                        "normal" if study.report.is_normal else "abnormal", len(result["lesions"]),
                        ";".join(study.report.mesh_major), ";".join(reports.unmapped_terms(study.report))])
        for b in (b for b in result["boxes"] if b["dicom_id"] in present):
            lesions.append([b["dicom_id"], study.study_id, b["view"], b["kind"], b["vindr_class"],
                            b["x_min"], b["y_min"], b["x_max"], b["y_max"]])
    truth = out / "offclip_demo"
    atomic_write_bytes(truth / "images.csv", _csv_bytes(
        ("dicom_id", "subject_id", "study_id", "path", "view_kind", "true_view", "view_position",
         "transfer_syntax", "photometric", "bits_stored", "rows", "columns", "source_imageid"), images))
    atomic_write_bytes(truth / "studies.csv", _csv_bytes(
        ("study_id", "subject_id", "openi_uid", "split", "openi_label", "n_lesions", "mesh_major",
         "mesh_unrendered"), studies))
    atomic_write_bytes(truth / "lesions.csv", _csv_bytes(
        ("dicom_id", "study_id", "view", "kind", "vindr_class", "x_min", "y_min", "x_max", "y_max"), lesions))


# ------------------------------------------------------------------------------------------
# faults: the bad inputs a real archive has
# ------------------------------------------------------------------------------------------
def _inject_faults(out: Path, plans: list[StudyPlan], seed: int, layout: str = "dicom") -> list[dict]:
    import pydicom

    rng = np.random.default_rng([seed, 5])
    train = [p for p in plans if p.split == "train"]
    with_lateral = [p for p in train if any(i.view_kind == "lateral" for i in p.images)
                    and any(i.view_kind == "frontal" for i in p.images)]
    chosen: dict[str, StudyPlan] = {}
    used: set[int] = set()
    # the lateral-only fault needs a study that has a lateral; choose it first
    for kind in ("lateral_only",) + tuple(k for k in FAULT_KINDS if k != "lateral_only"):
        pool = [p for p in (with_lateral if kind == "lateral_only" else train) if p.study_id not in used]
        study = pool[int(rng.integers(0, len(pool)))]
        used.add(study.study_id)
        chosen[kind] = study

    faults = []
    for kind in FAULT_KINDS:
        study = chosen[kind]
        frontal = next(i for i in study.images if i.view_kind == "frontal")
        rel = study.image_path(frontal) if layout == "dicom" else _jpg_path(study.image_path(frontal))
        image_path = out / rel
        report_path = out / study.report_path
        record = {"fault": kind, "subject_id": study.subject_id, "study_id": study.study_id,
                  "dicom_id": frontal.dicom_id, "path": rel}
        if layout == "jpg" and kind in ("truncated_dicom", "dicom_without_pixels", "not_dicom"):
            record["description"] = _jpg_fault(kind, image_path)
        elif kind == "truncated_dicom":
            data = image_path.read_bytes()
            atomic_write_bytes(image_path, data[: int(len(data) * 0.6)])
            record["description"] = "DICOM file cut at 60% of its bytes"
        elif kind == "dicom_without_pixels":
            ds = pydicom.dcmread(image_path)
            del ds.PixelData
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            atomic_write_bytes(image_path, buf.getvalue())
            record["description"] = "valid DICOM header, no Pixel Data element"
        elif kind == "not_dicom":
            png = io.BytesIO()
            Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(png, format="PNG")
            atomic_write_bytes(image_path, png.getvalue())
            record["description"] = "a PNG file saved under a .dcm name"
        elif kind == "empty_report":
            atomic_write_bytes(report_path, b"")
            record.update(dicom_id=None, path=study.report_path, description="zero-byte report")
        elif kind == "non_utf8_report":
            text = report_path.read_text(encoding="utf-8")
            text = text.replace("INDICATION:  ", "INDICATION:  Temp 38.5\u00b0C. ", 1) if "INDICATION:" in text \
                else text.replace("FINAL REPORT", "FINAL REPORT \u00b7", 1)
            atomic_write_bytes(report_path, text.encode("cp1252"))
            record.update(dicom_id=None, path=study.report_path,
                          description="report encoded in cp1252 with a non-ASCII byte (not UTF-8)")
        elif kind == "lateral_only":
            for image in [i for i in study.images if i.view_kind == "frontal"]:
                path = study.image_path(image)
                (out / (path if layout == "dicom" else _jpg_path(path))).unlink()
            study.images = [i for i in study.images if i.view_kind != "frontal"]
            record["description"] = "the study's frontal images are gone (files and metadata rows)"
        elif kind == "no_report":
            report_path.unlink()
            record.update(dicom_id=None, path=study.report_path, description="study without a report file")
        elif kind == "missing_file":
            image_path.unlink()
            record["description"] = "metadata row for a DICOM file that does not exist"
        faults.append(record)
    # the lateral-only fault removed metadata rows: rewrite the tables to match the files
    _write_tables(out, plans)
    return faults


def _jpg_fault(kind: str, path: Path) -> str:
    """The JPG layout's forms of the three image faults."""
    data = path.read_bytes()
    if kind == "truncated_dicom":
        atomic_write_bytes(path, data[: int(len(data) * 0.6)])
        return "JPEG file cut at 60% of its bytes"
    if kind == "dicom_without_pixels":
        atomic_write_bytes(path, data[: data.index(b"\xff\xda")] + b"\xff\xd9")  # up to the scan, then EOI
        return "JPEG headers (SOI … SOF, tables) with no scan data"
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    return "a PNG file saved under a .jpg name"


# ------------------------------------------------------------------------------------------
# the forms MIMIC-CXR ships in
# ------------------------------------------------------------------------------------------
#: a fixed timestamp for archive members: the same world is the same bytes
_ARCHIVE_TIME = (1980, 1, 1, 0, 0, 0)


def _package(out: Path, plans: list[StudyPlan], config: WorldConfig) -> None:
    """Lay the world out as the asked-for form of MIMIC-CXR (after faults, so they are kept):

    - ``dicom``: the DICOM release's ``cxr-record-list.csv.gz`` (subject_id, study_id,
      dicom_id, path) and ``cxr-study-list.csv.gz`` (subject_id, study_id, path);
    - ``jpg``: MIMIC-CXR-JPG, whose CSVs are gzipped;
    - ``reports_archive``: the reports moved from the tree into ``mimic-cxr-reports.zip`` or
      ``mimic-cxr-reports.tar.gz`` (members ``files/pXX/pSUBJECT/sSTUDY.txt``);
    - ``metadata_csvs``: ``separate`` moves the ``mimic-cxr-2.0.0-*.csv`` files to
      ``OUT/metadata`` (downloaded apart from the images), ``none`` leaves them out.
    """
    if config.layout == "dicom":
        records, study_rows = [], []
        for study in plans:
            for image in study.images:
                records.append([study.subject_id, study.study_id, image.dicom_id, study.image_path(image)])
            study_rows.append([study.subject_id, study.study_id, study.report_path[: -len(".txt")]])
        _write_gz(out / "cxr-record-list.csv.gz", _csv_bytes(("subject_id", "study_id", "dicom_id", "path"),
                                                              sorted(records)))
        _write_gz(out / "cxr-study-list.csv.gz", _csv_bytes(("subject_id", "study_id", "path"), sorted(study_rows)))
    if config.reports_archive != "tree":
        _archive_reports(out, config.reports_archive)
    csvs = sorted(out.glob("mimic-cxr-2.0.0-*.csv"))
    target = out / "metadata" if config.metadata_csvs == "separate" else out
    for path in csvs:
        if config.metadata_csvs != "none":
            if config.layout == "jpg":
                _write_gz(target / f"{path.name}.gz", path.read_bytes())
            elif target != out:
                atomic_write_bytes(target / path.name, path.read_bytes())
        if config.metadata_csvs != "root" or config.layout == "jpg":
            path.unlink()


def _write_gz(path: Path, data: bytes) -> None:
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    atomic_write_bytes(path, buf.getvalue())


def _archive_reports(out: Path, kind: str) -> None:
    """Move every ``files/…/sSTUDY.txt`` into one archive, members in sorted order."""
    import tarfile
    import zipfile

    reports = sorted(p.relative_to(out).as_posix() for p in (out / "files").glob("p*/p*/s*.txt"))
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in reports:
                info = zipfile.ZipInfo(rel, date_time=_ARCHIVE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, (out / rel).read_bytes())
        atomic_write_bytes(out / "mimic-cxr-reports.zip", buf.getvalue())
    else:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for rel in reports:
                data = (out / rel).read_bytes()
                info = tarfile.TarInfo(rel)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tf.addfile(info, io.BytesIO(data))
        _write_gz(out / "mimic-cxr-reports.tar.gz", buf.getvalue())
    for rel in reports:
        (out / rel).unlink()


# ------------------------------------------------------------------------------------------
def _summarise(out: Path, plans: list[StudyPlan], by_study: dict, faults: list, seconds: float,
               eval_counts: dict, layout: str = "dicom") -> WorldSummary:
    images = [i for p in plans for i in p.images]
    lesion_counts = Counter(b["kind"] for r in by_study.values() for b in r["boxes"] if b["view"] == "frontal")
    n_eval = eval_counts["images"]
    return WorldSummary(
        out=str(out),
        studies=len(plans),
        subjects=len({p.subject_id for p in plans}),
        images=len(images),
        seconds=seconds,
        by_folder=dict(sorted(Counter(p.folder for p in plans).items())),
        by_split=dict(Counter(p.split for p in plans).most_common()),
        by_label=dict(Counter("normal" if p.report.is_normal else "abnormal" for p in plans).most_common()),
        by_view=dict(Counter(i.true_view if i.true_view in FRONTAL_VIEWS else "lateral" for i in images).most_common()),
        by_syntax=dict(Counter(i.syntax for i in images).most_common()) if layout == "dicom"
        else {"JPEG baseline, quality 95 (MIMIC-CXR-JPG)": len(images)},
        by_photometric=dict(Counter(i.photometric for i in images).most_common()) if layout == "dicom"
        else {"MONOCHROME2": len(images)},
        by_bits=dict(sorted(Counter(i.bits_stored for i in images).items())) if layout == "dicom" else {8: len(images)},
        lesions=dict(lesion_counts.most_common()),
        eval_sets={"vindr-cxr": n_eval, "openi": n_eval, "chexpert": n_eval},
        eval_no_finding=eval_counts["no_finding"],
        eval_reports=eval_counts["reports"],
        faults=faults,
        bytes_written=sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
    )


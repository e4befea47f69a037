"""Open-I reports as the demo world's MIMIC-CXR reports, CheXpert labels and phantom lesions.

Three pure, deterministic functions of one :class:`~offclip.pipeline.openi.OpenIReport`:

* :func:`mimic_report_text` rewrites the real Open-I sentences in MIMIC-CXR v2.0.0's free-text
  report layout (``FINAL REPORT`` header, ``EXAMINATION:``/``INDICATION:``/``COMPARISON:``
  inline sections, ``FINDINGS:``/``IMPRESSION:`` blocks, one leading space per line, 79-column
  wrap, ``___`` de-identification tokens);
* :func:`chexpert_labels` gives the 14 columns of ``mimic-cxr-2.0.0-chexpert.csv``, positives from
  the MeSH *major* terms (:data:`CHEXPERT_FROM_MESH`) and negation/uncertainty from the report text
  as the pipeline's own :class:`~offclip.pipeline.labeler.RuleLabeler` reads it (its mentions'
  CheXpert categories and statuses; "heart size is normal" as an explicit Cardiomegaly 0);
* :func:`lesions_from_mesh` maps the MeSH major terms to :class:`LesionSpec`\\ s for the phantom
  renderer (:data:`MESH_LESION_KINDS`); :func:`unmapped_terms` names the terms that gave none.

Measured on the real archive (3,955 reports; 1,391 ``normal``, 2,564 not):

* lesions: 2,417 / 2,564 non-normal reports (94.3%) get at least one lesion; the 147 without are
  101 reports indexed only ``No Indexing`` / ``Technical Quality of Image Unsatisfactory`` and 46
  whose terms are all unrenderable (hilar prominence, kyphosis, osteopenia, rib lucency, ...).
  Of the reports with at least one finding term, 98.1% (2,417 / 2,463) get a lesion; 93.0% of
  the 6,726 finding-term occurrences map to a lesion (2.26 lesions per non-normal report);
* labels: 1,367 / 1,391 ``normal`` reports are No Finding 1.0 (24 hedge a finding in the text,
  20 of them a heart "at the upper limits of normal", a borderline cardiomegaly to the labeler);
  75% of them carry an explicit Pleural Effusion 0.0.

``tests/test_demo_reports.py`` keeps floors under these figures.
"""

from __future__ import annotations

import functools
import html
import re
import textwrap
from typing import Iterable

from ..data_contracts.enums import CHEXPERT_LABEL_COLUMNS
from .lesions import LESION_KINDS, SEVERITIES, LesionSpec
from ..pipeline.openi import OpenIReport

# ------------------------------------------------------------------------------------------------
# MeSH term parsing shared by the label and lesion mappings
# ------------------------------------------------------------------------------------------------

#: MeSH major terms that state "nothing to draw / nothing to label" rather than a finding.
NON_FINDING_TERMS: frozenset[str] = frozenset(
    {"normal", "no indexing", "technical quality of image unsatisfactory"}
)

#: Qualifiers naming a site outside the lung fields. A parenchymal finding (opacity, nodule,
#: granuloma, scar, ...) indexed at one of these sites (``Opacity/ribs``, ``Mass/breast``,
#: ``Granuloma/thoracic vertebrae``) is not a lung finding: no lung lesion, no lung label.
NON_LUNG_SITES: frozenset[str] = frozenset(
    {
        "ribs", "breast", "thoracic vertebrae", "lumbar vertebrae", "cervical vertebrae", "spine",
        "clavicle", "humerus", "shoulder", "sternum", "adipose tissue", "abdomen", "neck",
        "heart", "mitral valve", "aortic valve", "coronary vessels", "breast implants",
    }
)

_SIDE_WORDS = {"left": "left", "right": "right", "bilateral": "bilateral"}
#: MeSH location qualifier -> lung zone of the phantom (upper/middle/lower thirds).
ZONE_QUALIFIERS: dict[str, str] = {
    "upper lobe": "upper",
    "apex": "upper",
    "paratracheal": "upper",
    "middle lobe": "middle",
    "lingula": "middle",
    "hilum": "middle",
    "lower lobe": "lower",
    "base": "lower",
    "costophrenic angle": "lower",
    "cardiophrenic angle": "lower",
    "retrocardiac": "lower",
    "sulcus": "lower",
}
#: MeSH severity/size qualifier -> renderer severity ("small" -> mild, "large" -> severe).
SEVERITY_QUALIFIERS: dict[str, str] = {
    "mild": "mild",
    "small": "mild",
    "borderline": "mild",
    "moderate": "moderate",
    "severe": "severe",
    "large": "severe",
}


def _split_term(term: str) -> tuple[str, tuple[str, ...]]:
    """``"Opacity/lung/base/left/mild"`` -> ``("opacity", ("lung", "base", "left", "mild"))``."""
    parts = [p.strip().lower() for p in term.split("/")]
    return parts[0], tuple(p for p in parts[1:] if p)


def _is_non_finding(term: str) -> bool:
    return term.strip().lower() in NON_FINDING_TERMS


# ------------------------------------------------------------------------------------------------
# 1. MIMIC-CXR report text
# ------------------------------------------------------------------------------------------------

#: MIMIC-CXR's de-identification token (Open-I uses ``XXXX``).
DEID_TOKEN = "___"
#: The header line of every MIMIC-CXR v2.0.0 free-text report.
HEADER_LINE = " " * 33 + "FINAL REPORT"

_XXXX = re.compile(r"X{4,}")
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
# "effusion.." / "abnormality. ." / "p.m.." -> one full stop; an ellipsis glued to the next word
# ("ambulating...SM") is left alone.
_STRAY_STOPS = re.compile(r"(?<=[^\s.])\.(?:\s*\.)+(?=\s|$)")
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=\S)\s+([.,;:])(?=\s|$)")
_DOUBLE_COMMA = re.compile(r",(?:\s*,)+")
# "1. ... 2. ..." numbered impressions: an item number at the start or after a sentence end.
_ITEM_NUMBER = re.compile(r"(?:(?<=^)|(?<=[.;:]\s))(\d{1,2})\.\s+(?=\S)")


def clean_text(text: str) -> str:
    """Open-I section text -> MIMIC-style text: ``XXXX`` runs become ``___``, HTML residue and
    doubled full stops are removed, whitespace is collapsed. The wording is not changed."""
    text = html.unescape(text or "")
    text = _BR.sub(" ", text)
    text = _XXXX.sub(DEID_TOKEN, text)
    text = " ".join(text.split())
    text = _DOUBLE_COMMA.sub(",", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _STRAY_STOPS.sub(".", text).strip()
    # a section holding only punctuation (one Open-I comparison is ".") is an empty section
    return text if re.search(r"[A-Za-z0-9_]", text) else ""


def _numbered_items(text: str) -> list[str]:
    """Split ``"1. A. 2. B."`` into ``["1. A.", "2. B."]`` when the numbers run 1, 2, 3, ...;
    anything else is one paragraph."""
    if not text.startswith("1."):
        return [text]
    cuts, expected = [], 1
    for m in _ITEM_NUMBER.finditer(text):
        if int(m.group(1)) == expected:
            cuts.append(m.start())
            expected += 1
    if len(cuts) < 2:
        return [text]
    cuts.append(len(text))
    return [text[a:b].strip() for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


def _wrapper(width: int, first: str) -> textwrap.TextWrapper:
    return textwrap.TextWrapper(
        width=width,
        initial_indent=first,
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _inline_section(name: str, text: str, wrap: int) -> list[str]:
    return _wrapper(wrap, f" {name}:  ").wrap(text) or [f" {name}:  "]


def _block_section(name: str, text: str, wrap: int) -> list[str]:
    lines = [f" {name}: ", " "]
    for item in _numbered_items(text):
        lines.extend(_wrapper(wrap, " ").wrap(item))
    return lines


def mimic_report_text(report: OpenIReport, *, examination: str, wrap: int = 79) -> str:
    """The report in MIMIC-CXR v2.0.0's free-text format (ends with a newline).

    Sections: ``EXAMINATION`` (always, from ``examination``), then ``INDICATION``,
    ``COMPARISON``, ``FINDINGS``, ``IMPRESSION`` in MIMIC's order, each only when its Open-I text
    has a word in it -- a report with neither findings nor impression keeps only the header
    sections.
    Every line starts with a space and is at most ``wrap`` characters long (a single word longer
    than the line is never split; Open-I has none); sections are separated by a line holding one
    space, as in MIMIC.
    """
    lines = [HEADER_LINE]
    lines.extend(_inline_section("EXAMINATION", " ".join(examination.split()), wrap))
    for name, raw in (("INDICATION", report.indication), ("COMPARISON", report.comparison)):
        text = clean_text(raw)
        if text:
            lines.append(" ")
            lines.extend(_inline_section(name, text, wrap))
    for name, raw in (("FINDINGS", report.findings), ("IMPRESSION", report.impression)):
        text = clean_text(raw)
        if text:
            lines.append(" ")
            lines.extend(_block_section(name, text, wrap))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# 2. CheXpert labels
# ------------------------------------------------------------------------------------------------

#: The 14 label columns of ``mimic-cxr-2.0.0-chexpert.csv``, in that file's order.
CHEXPERT_COLUMNS: tuple[str, ...] = CHEXPERT_LABEL_COLUMNS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

#: MeSH major term -> CheXpert columns it makes positive. Keys are lower-case, either a head term
#: (``"opacity"``, any qualifiers) or ``"head/qualifier"`` (the qualifier anywhere after the head:
#: ``"cardiac shadow/enlarged"`` matches ``Cardiac Shadow/enlarged/mild``). Columns marked ``?``
#: are *uncertain* evidence (-1.0 unless the text states the finding plainly): that is how the
#: CheXpert labeler reads "borderline" and "blunted costophrenic angle".
#:
#: ====================================  =========================================================
#: MeSH (head or head/qualifier)         CheXpert column
#: ====================================  =========================================================
#: Pulmonary Atelectasis                 Atelectasis
#: Cardiomegaly; Cardiac Shadow/enlarged Cardiomegaly (``.../borderline`` -> uncertain)
#: Heart Atria|Heart Ventricles/enlarged Cardiomegaly
#: Cardiac Shadow/enlarged|prominent     Enlarged Cardiomediastinum
#: Mediastinum/enlarged|prominent        Enlarged Cardiomediastinum
#: Consolidation                         Consolidation
#: Pulmonary Edema; Pulmonary Congestion Edema  (CheXpert's edema mentions include congestion)
#: Heart Failure                         Edema
#: Fractures, Bone                       Fracture (healed fractures included, as in CheXpert)
#: Nodule; Mass; Cavitation              Lung Lesion
#: Granuloma; Calcified Granuloma        Lung Lesion (not at NON_LUNG_SITES / mediastinum)
#: Opacity; Airspace Disease; Density;   Lung Opacity (not at NON_LUNG_SITES)
#: Infiltrate; Lung Diseases,
#: Interstitial; Markings/interstitial
#: Pleural Effusion; Hydro-/Hemo-        Pleural Effusion
#: pneumothorax; Hemothorax
#: Costophrenic Angle|Sulcus|Pleura/     Pleural Effusion, uncertain (CheXpert: "blunting of the
#: blunted                               costophrenic angle" is an uncertain effusion)
#: Thickening/pleura; Cicatrix/pleura;   Pleural Other
#: Pleura; Calcinosis/pleura;
#: Sclerosis/pleura; Nodule/pleura
#: Pneumonia                             Pneumonia
#: Pneumothorax; Hydropneumothorax;      Pneumothorax
#: Hemopneumothorax
#: Catheters, Indwelling; Medical        Support Devices
#: Device; Implanted Medical Device;
#: Surgical Instruments; Stents;
#: Tube, Inserted
#: normal                                No Finding (only if no other column is 1.0 / -1.0)
#: ====================================  =========================================================
CHEXPERT_FROM_MESH: dict[str, tuple[str, ...]] = {
    "pulmonary atelectasis": ("Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "cardiomegaly/borderline": ("Cardiomegaly?",),
    "cardiac shadow/enlarged": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
    "cardiac shadow/prominent": ("Enlarged Cardiomediastinum",),
    "cardiac shadow/borderline": ("Cardiomegaly?",),
    "heart atria/enlarged": ("Cardiomegaly",),
    "heart ventricles/enlarged": ("Cardiomegaly",),
    "mediastinum/enlarged": ("Enlarged Cardiomediastinum",),
    "mediastinum/prominent": ("Enlarged Cardiomediastinum",),
    "consolidation": ("Consolidation",),
    "pulmonary edema": ("Edema",),
    "pulmonary congestion": ("Edema",),
    "heart failure": ("Edema",),
    "fractures, bone": ("Fracture",),
    "nodule": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "cavitation": ("Lung Lesion",),
    "granuloma": ("Lung Lesion",),
    "calcified granuloma": ("Lung Lesion",),
    "opacity": ("Lung Opacity",),
    "airspace disease": ("Lung Opacity",),
    "density": ("Lung Opacity",),
    "infiltrate": ("Lung Opacity",),
    "lung diseases, interstitial": ("Lung Opacity",),
    "markings/interstitial": ("Lung Opacity",),
    "pleural effusion": ("Pleural Effusion",),
    "hydropneumothorax": ("Pleural Effusion", "Pneumothorax"),
    "hemopneumothorax": ("Pleural Effusion", "Pneumothorax"),
    "hemothorax": ("Pleural Effusion",),
    "costophrenic angle/blunted": ("Pleural Effusion?",),
    "sulcus/blunted": ("Pleural Effusion?",),
    "pleura/blunted": ("Pleural Effusion?",),
    "thickening/pleura": ("Pleural Other",),
    "cicatrix/pleura": ("Pleural Other",),
    "pleura": ("Pleural Other",),
    "calcinosis/pleura": ("Pleural Other",),
    "sclerosis/pleura": ("Pleural Other",),
    "nodule/pleura": ("Pleural Other",),
    "pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "catheters, indwelling": ("Support Devices",),
    "medical device": ("Support Devices",),
    "implanted medical device": ("Support Devices",),
    "surgical instruments": ("Support Devices",),
    "stents": ("Support Devices",),
    "tube, inserted": ("Support Devices",),
}
#: Columns that are lung-parenchyma findings: dropped when the MeSH term sits at a
#: :data:`NON_LUNG_SITES` qualifier (``Density/ribs`` is not a lung opacity).
_LUNG_COLUMNS = frozenset(
    {"Lung Opacity", "Lung Lesion", "Consolidation", "Atelectasis", "Pneumonia"}
)
_LESION_NOT_IN = frozenset({"mediastinum", "paratracheal", "pleura"})

#: What a sentence's reading says of a CheXpert column beyond its mentions: the anchor normal
#: phrases that are explicit negatives ("heart size is normal" -> Cardiomegaly 0, CheXpert's
#: "normal/unremarkable XXX"). Other normal phrases ("lungs are clear") name no one column.
NORMAL_PHRASE_COLUMNS: dict[str, str] = {
    "heart_size_normal": "Cardiomegaly",
    "cardiomediastinal_normal": "Enlarged Cardiomediastinum",
}
#: Labeler findings whose plain mention is only uncertain evidence of their column, as the MeSH side
#: (:data:`CHEXPERT_FROM_MESH`): a blunted costophrenic angle is an uncertain effusion.
UNCERTAIN_FINDINGS: frozenset[str] = frozenset({"costophrenic angle blunting"})
_STATUS_VALUE = {"positive": POSITIVE, "negated": NEGATIVE, "uncertain": UNCERTAIN}


@functools.lru_cache(maxsize=1)
def _readers():
    """The pipeline's own sentence splitter and rule labeler, built once per process."""
    from offclip.pipeline.labeler import RuleLabeler
    from offclip.pipeline.text import SentenceSplitter

    return SentenceSplitter(), RuleLabeler()


def text_mentions(text: str) -> dict[str, list[float]]:
    """Every mention of a CheXpert observation in ``text`` with its label (1 / 0 / -1), read by the
    pipeline's :class:`~offclip.pipeline.labeler.RuleLabeler` sentence by sentence (its mentions'
    CheXpert categories and statuses, and its anchor normal phrases as explicit negatives)."""
    splitter, labeler = _readers()
    found: dict[str, list[float]] = {}
    for sentence in splitter.split(clean_text(text)):
        reading = labeler.read(sentence.text)
        for mention in reading.label.mentions:
            if mention.category not in CHEXPERT_COLUMNS:  # "Other Finding": no column
                continue
            value = _STATUS_VALUE[mention.status]
            if value == POSITIVE and mention.finding in UNCERTAIN_FINDINGS:
                value = UNCERTAIN
            found.setdefault(mention.category, []).append(value)
        for phrase in reading.normal_phrases:
            if phrase in NORMAL_PHRASE_COLUMNS:
                found.setdefault(NORMAL_PHRASE_COLUMNS[phrase], []).append(NEGATIVE)
    return found


def mesh_chexpert(report: OpenIReport) -> dict[str, float]:
    """The columns the MeSH major terms support: 1.0, or -1.0 for uncertain evidence only."""
    evidence: dict[str, float] = {}
    for term in report.mesh_major:
        head, quals = _split_term(term)
        keys = [head] + [f"{head}/{q}" for q in quals]
        for key in keys:
            for column in CHEXPERT_FROM_MESH.get(key, ()):
                uncertain = column.endswith("?") or "borderline" in quals
                column = column.rstrip("?")
                if column in _LUNG_COLUMNS and NON_LUNG_SITES.intersection(quals):
                    continue
                if column == "Lung Lesion" and _LESION_NOT_IN.intersection(quals):
                    continue
                value = UNCERTAIN if uncertain else POSITIVE
                evidence[column] = max(evidence.get(column, UNCERTAIN), value)
    return evidence


def chexpert_labels(report: OpenIReport) -> dict[str, float | None]:
    """The 14 CheXpert columns (:data:`CHEXPERT_COLUMNS` order) for one report.

    * MeSH lists the finding (:data:`CHEXPERT_FROM_MESH`): 1.0 -- or -1.0 when the text only
      hedges it ("may represent", "possible", "cannot be excluded", "versus", ...) or the MeSH
      evidence itself is uncertain (``borderline``, blunted costophrenic angle) and no text
      mention states it plainly.
    * MeSH does not list it: -1.0 if the text hedges it, 0.0 if the text only negates it ("no
      pleural effusion", "without pneumothorax", "heart size is normal"), None (blank) otherwise.
      An un-hedged positive text mention the MeSH indexers did not list stays None: the MeSH
      terms are what the phantom renders, and a label must not claim what the image lacks.
    * No Finding: 1.0 when MeSH says ``normal`` and no other column (Support Devices aside, as
      in CheXpert) is 1.0 or -1.0; else None.

    The text is findings + impression (Open-I impressions are often one line).
    """
    mesh = mesh_chexpert(report)
    mentions = text_mentions(f"{report.findings} {report.impression}")
    labels: dict[str, float | None] = {}
    for column in CHEXPERT_COLUMNS:
        if column == "No Finding":
            continue
        said = mentions.get(column, [])
        if column in mesh:
            if POSITIVE in said:
                labels[column] = POSITIVE
            elif UNCERTAIN in said:
                labels[column] = UNCERTAIN
            else:
                labels[column] = mesh[column]
        elif UNCERTAIN in said:
            labels[column] = UNCERTAIN
        elif NEGATIVE in said and POSITIVE not in said:
            labels[column] = NEGATIVE
        else:
            labels[column] = None
    finding = any(
        labels[c] in (POSITIVE, UNCERTAIN)
        for c in CHEXPERT_COLUMNS
        if c not in ("No Finding", "Support Devices")
    )
    labels["No Finding"] = POSITIVE if report.is_normal and not finding else None
    return {c: labels[c] for c in CHEXPERT_COLUMNS}


# ------------------------------------------------------------------------------------------------
# 3. MeSH -> phantom lesions
# ------------------------------------------------------------------------------------------------

#: MeSH major term -> lesion kinds (:data:`~offclip.demo.lesions.LESION_KINDS`). Keys are
#: lower-case ``"head"`` or ``"head/qualifier"``; a ``head/qualifier`` key wins over the bare head
#: (``Lung/hypoinflation`` vs ``Lung/azygos lobe``), an empty tuple means "this qualifier is
#: explicitly not rendered" (``Diaphragm/obscured``). Heads absent from this table are not rendered
#: (see :data:`UNRENDERED_MESH_HEADS` and :func:`unmapped_terms`).
#:
#: Decisions: ``Cicatrix`` (scar) -> ``fibrosis`` in the lung, ``pleural_thickening`` when indexed
#: at the pleura or a costophrenic/cardiophrenic angle (VinDr-CXR files parenchymal scars under
#: "Pulmonary fibrosis" and apical/pleural scars under "Pleural thickening"). ``Airspace Disease``
#: and ``Density`` -> ``opacity``; ``Opacity``/``Density`` with an ``interstitial`` qualifier ->
#: ``interstitial``; ``Density/round`` -> ``nodule``. Hyperinflation in any MeSH form
#: (``Lung/hyperdistention``, ``Diaphragm/flattened``, ``Lung, Hyperlucent``, ``Blister`` =
#: bullae, COPD) -> ``emphysema``. Blunted costophrenic angle -> a mild ``pleural_effusion``.
#: Rib/clavicle/vertebral ``Deformity`` -> ``fracture`` (Open-I uses it for old fractures and
#: compression deformities). Devices of every MeSH flavour (catheters, pacemakers, clips, stents,
#: tubes, sutures/sternotomy wires, fusion hardware, foreign bodies) -> ``device``.
MESH_LESION_KINDS: dict[str, tuple[str, ...]] = {
    # heart, mediastinum, aorta
    "cardiomegaly": ("cardiomegaly",),
    "cardiac shadow/enlarged": ("cardiomegaly",),
    "cardiac shadow/borderline": ("cardiomegaly",),
    "heart atria/enlarged": ("cardiomegaly",),
    "heart ventricles/enlarged": ("cardiomegaly",),
    "aorta/tortuous": ("aortic_enlargement",),
    "aorta/enlarged": ("aortic_enlargement",),
    "aorta/prominent": ("aortic_enlargement",),
    "aorta, thoracic/tortuous": ("aortic_enlargement",),
    "aorta, thoracic/enlarged": ("aortic_enlargement",),
    "aorta, thoracic/prominent": ("aortic_enlargement",),
    "aortic aneurysm": ("aortic_enlargement",),
    "calcinosis": ("calcification",),
    "atherosclerosis": ("calcification",),
    # pleura
    "pleural effusion": ("pleural_effusion",),
    "costophrenic angle/blunted": ("pleural_effusion",),
    "sulcus/blunted": ("pleural_effusion",),
    "pleura/blunted": ("pleural_effusion",),
    "hemothorax": ("pleural_effusion",),
    "pneumothorax": ("pneumothorax",),
    "hydropneumothorax": ("pneumothorax", "pleural_effusion"),
    "hemopneumothorax": ("pneumothorax", "pleural_effusion"),
    "thickening/pleura": ("pleural_thickening",),
    "pleura/abnormal": ("pleural_thickening",),
    "cicatrix": ("fibrosis",),
    "cicatrix/pleura": ("pleural_thickening",),
    "cicatrix/costophrenic angle": ("pleural_thickening",),
    "cicatrix/cardiophrenic angle": ("pleural_thickening",),
    # lung parenchyma
    "opacity": ("opacity",),
    "opacity/interstitial": ("interstitial",),
    "airspace disease": ("opacity",),
    "density": ("opacity",),
    "density/round": ("nodule",),
    "density/interstitial": ("interstitial",),
    "infiltrate": ("infiltrate",),
    "consolidation": ("consolidation",),
    "pneumonia": ("pneumonia",),
    "pulmonary edema": ("edema",),
    "pulmonary congestion": ("edema",),
    "heart failure": ("edema",),
    "nodule": ("nodule",),
    "nodule/pleura": ("pleural_thickening",),
    "mass": ("mass",),
    "cavitation": ("mass",),
    "granuloma": ("granuloma",),
    "calcified granuloma": ("granuloma",),
    "granulomatous disease": ("granuloma",),
    "pulmonary atelectasis": ("atelectasis",),
    "volume loss": ("atelectasis",),
    "pulmonary fibrosis": ("fibrosis",),
    "fibrosis": ("fibrosis",),
    "lung diseases, interstitial": ("interstitial",),
    "markings": ("interstitial",),  # increased lung / interstitial / bronchovascular markings
    "markings/paratracheal": (),
    "markings/sulcus": (),
    "thickening/interstitial": ("interstitial",),
    "thickening/bronchi": ("interstitial",),
    "thickening/bronchovascular": ("interstitial",),
    "lung/interstitial": ("interstitial",),
    # lung volume
    "lung/hypoinflation": ("hypoinflation",),
    "lung/hyperdistention": ("emphysema",),
    "emphysema": ("emphysema",),
    "pulmonary emphysema": ("emphysema",),
    "pulmonary disease, chronic obstructive": ("emphysema",),
    "bullous emphysema": ("emphysema",),
    "blister": ("emphysema",),
    "lung, hyperlucent": ("emphysema",),
    "diaphragm/flattened": ("emphysema",),
    # diaphragm, hernia
    "diaphragm/elevated": ("elevated_diaphragm",),
    "diaphragmatic eventration": ("elevated_diaphragm",),
    "hernia, hiatal": ("hiatal_hernia",),
    # bones
    "scoliosis": ("scoliosis",),
    "thoracic vertebrae/degenerative": ("spondylosis",),
    "lumbar vertebrae/degenerative": ("spondylosis",),
    "cervical vertebrae/degenerative": ("spondylosis",),
    "spine/degenerative": ("spondylosis",),
    "osteophyte": ("spondylosis",),
    "spondylosis": ("spondylosis",),
    "hyperostosis, diffuse idiopathic skeletal": ("spondylosis",),
    "arthritis/spine": ("spondylosis",),
    "arthritis/thoracic vertebrae": ("spondylosis",),
    "arthritis/cervical vertebrae": ("spondylosis",),
    "fractures, bone": ("fracture",),
    "deformity/ribs": ("fracture",),
    "deformity/clavicle": ("fracture",),
    "deformity/thoracic vertebrae": ("fracture",),
    "deformity/lumbar vertebrae": ("fracture",),
    # devices
    "catheters, indwelling": ("device",),
    "medical device": ("device",),
    "implanted medical device": ("device",),
    "surgical instruments": ("device",),
    "stents": ("device",),
    "tube, inserted": ("device",),
    "sutures": ("device",),
    "spinal fusion": ("device",),
    "foreign bodies": ("device",),
    # explicitly not rendered although the head has rendered forms
    "diaphragm/obscured": (),
    "aorta/obscured": (),
    "cardiac shadow/obscured": (),
    "osteophyte/shoulder": (),
}
#: Head terms deliberately left without a lesion kind of their own: no phantom drawing for them
#: (hilar or vascular prominence, kyphosis, bone density, soft tissue, abdomen, post-surgical
#: absence, ...); a few have rendered qualified forms (``Arthritis/spine`` -> spondylosis). Every
#: head of the real corpus is either here or in :data:`MESH_LESION_KINDS` (the tests check it), so
#: a new head is a decision, not an accident. Their terms show up in :func:`unmapped_terms`.
UNRENDERED_MESH_HEADS: frozenset[str] = frozenset(
    {
        "abdomen", "adipose tissue", "arthritis", "blood vessels", "bone and bones",
        "bone diseases, metabolic", "breast implants", "bronchiectasis", "bronchiolitis",
        "bronchitis", "cholelithiasis", "colonic interposition", "contrast media",
        "cystic fibrosis", "cysts", "dislocations", "epicardial fat", "expansile bone lesions",
        "funnel chest", "heart", "hernia, diaphragmatic", "humerus", "hypertension, pulmonary",
        "hypovolemia", "kyphosis", "lucency", "lymph nodes", "mastectomy", "mediastinal emphysema",
        "mediastinum", "nipple shadow", "osteoporosis", "pectus carinatum", "pericardial effusion",
        "pneumonectomy", "pneumoperitoneum", "pulmonary artery", "ribs", "sarcoidosis",
        "sclerosis", "shift", "shoulder", "subcutaneous emphysema", "thorax", "trachea",
        "trachea, carina", "tuberculosis",
    }
)
#: Kinds drawn in the lung fields: not rendered when the MeSH term sits at a non-lung site.
_LUNG_FIELD_KINDS = frozenset(
    {"opacity", "consolidation", "pneumonia", "infiltrate", "edema", "nodule", "mass", "granuloma",
     "atelectasis", "fibrosis", "interstitial"}
)
#: Sites whose findings the chest phantom does not draw (below the diaphragm, in the breast);
#: devices are drawn wherever they are (clips, stents and ports project over the chest film).
_OFF_PHANTOM_SITES = frozenset({"abdomen", "breast implants", "breast"})
#: Kinds that involve both lungs unless MeSH names a side.
_BILATERAL_BY_DEFAULT = frozenset({"emphysema", "hypoinflation", "edema"})
#: Kinds whose zone is fixed by anatomy (the renderer places them; a MeSH zone is ignored).
_NO_ZONE_KINDS = frozenset(
    {"cardiomegaly", "aortic_enlargement", "hiatal_hernia", "scoliosis", "spondylosis",
     "hypoinflation", "elevated_diaphragm", "device"}
)


def _kinds_for(head: str, quals: tuple[str, ...]) -> tuple[str, ...] | None:
    """Lesion kinds of one MeSH term, ``None`` when the table has no entry for it."""
    for q in quals:
        kinds = MESH_LESION_KINDS.get(f"{head}/{q}")
        if kinds is not None:
            return kinds
    return MESH_LESION_KINDS.get(head)


def _side(quals: Iterable[str]) -> str | None:
    sides = {_SIDE_WORDS[q] for q in quals if q in _SIDE_WORDS}
    if not sides:
        return None
    if "bilateral" in sides or sides == {"left", "right"}:
        return "bilateral"
    return sides.pop()


def _zone(quals: Iterable[str]) -> str | None:
    for q in quals:
        if q in ZONE_QUALIFIERS:
            return ZONE_QUALIFIERS[q]
    return None


def _severity(quals: Iterable[str]) -> str:
    found = [SEVERITY_QUALIFIERS[q] for q in quals if q in SEVERITY_QUALIFIERS]
    return max(found, key=SEVERITIES.index) if found else "mild"


def _term_lesions(term: str) -> list[LesionSpec]:
    if _is_non_finding(term):
        return []
    head, quals = _split_term(term)
    kinds = _kinds_for(head, quals) or ()
    out = []
    for kind in kinds:
        if kind in _LUNG_FIELD_KINDS and NON_LUNG_SITES.intersection(quals):
            continue
        if kind != "device" and _OFF_PHANTOM_SITES.intersection(quals):
            continue  # abdominal calcification, a mass in the breast: not drawn in the chest
        side = _side(quals)
        if side is None and kind in _BILATERAL_BY_DEFAULT:
            side = "bilateral"
        zone = None if kind in _NO_ZONE_KINDS else _zone(quals)
        if zone == "lower" and side is None and "retrocardiac" in quals:
            side = "left"  # the retrocardiac lung is the left lower lobe
        out.append(LesionSpec(kind, side, zone, _severity(quals), term))
    return out


def lesions_from_mesh(report: OpenIReport) -> list[LesionSpec]:
    """Phantom lesions for the report's MeSH major terms, in MeSH order.

    Specs of one (kind, side, zone) are merged into one -- the most severe, keeping the MeSH term
    it came from -- so ``Opacity/lung/base/left`` + ``Airspace Disease/lung/base/left`` draw one
    opacity and ``Lung/hyperdistention`` + ``Pulmonary Emphysema`` + ``Diaphragm/flattened`` one
    emphysema. ``normal``, ``No Indexing``, ``Technical Quality of Image Unsatisfactory`` and
    unrenderable terms (:func:`unmapped_terms`) give nothing.
    """
    merged: dict[tuple[str, str | None, str | None], LesionSpec] = {}
    for term in report.mesh_major:
        for spec in _term_lesions(term):
            key = (spec.kind, spec.side, spec.zone)
            old = merged.get(key)
            if old is None or SEVERITIES.index(spec.severity) > SEVERITIES.index(old.severity):
                merged[key] = spec
    return list(merged.values())


def unmapped_terms(report: OpenIReport) -> list[str]:
    """The report's MeSH major terms (non-finding terms aside) that give no lesion."""
    return [t for t in report.mesh_major if not _is_non_finding(t) and not _term_lesions(t)]


assert all(k in LESION_KINDS for kinds in MESH_LESION_KINDS.values() for k in kinds)

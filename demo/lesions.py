"""The lesion vocabulary shared by the report side (MeSH → lesions) and the phantom renderer.

A :class:`LesionSpec` says *what* a report describes (kind, side, zone, severity, the MeSH term it
came from); the renderer turns it into pixels and a :class:`Box`. Each kind maps to the class
names of the evaluation formats the demo world writes (VinDr-CXR boxes and image labels).
"""

from __future__ import annotations

from dataclasses import dataclass

#: kind -> (VinDr-CXR local label / box class, VinDr-CXR global label), names as in VinDr-CXR
#: v1.0.0 (PhysioNet), whose test set has 22 local and 6 global labels.
LESION_KINDS: dict[str, tuple[str, str]] = {
    "cardiomegaly": ("Cardiomegaly", "Other diseases"),
    "pleural_effusion": ("Pleural effusion", "Other diseases"),
    "opacity": ("Lung Opacity", "Other diseases"),
    "consolidation": ("Consolidation", "Other diseases"),
    "pneumonia": ("Consolidation", "Pneumonia"),
    "infiltrate": ("Infiltration", "Other diseases"),
    "edema": ("Edema", "Other diseases"),
    "nodule": ("Nodule/Mass", "Other diseases"),
    "mass": ("Nodule/Mass", "Lung tumor"),
    "granuloma": ("Calcification", "Other diseases"),
    "pneumothorax": ("Pneumothorax", "Other diseases"),
    "atelectasis": ("Atelectasis", "Other diseases"),
    "device": ("Other lesion", "Other diseases"),
    "emphysema": ("Emphysema", "COPD"),
    "hypoinflation": ("Other lesion", "Other diseases"),
    "fibrosis": ("Pulmonary fibrosis", "Other diseases"),
    "interstitial": ("ILD", "Other diseases"),
    "aortic_enlargement": ("Aortic enlargement", "Other diseases"),
    "calcification": ("Calcification", "Other diseases"),
    "pleural_thickening": ("Pleural thickening", "Other diseases"),
    "scoliosis": ("Other lesion", "Other diseases"),
    "fracture": ("Rib fracture", "Other diseases"),
    "hiatal_hernia": ("Other lesion", "Other diseases"),
    "elevated_diaphragm": ("Other lesion", "Other diseases"),
    "spondylosis": ("Other lesion", "Other diseases"),
}

SIDES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower")
SEVERITIES = ("mild", "moderate", "severe")


@dataclass(frozen=True)
class LesionSpec:
    """One finding to render.

    ``side`` is the *patient's* side (radiological convention: on a PA/AP frontal image the
    patient's right is on the image's left). ``None`` side/zone means "renderer's choice"
    (drawn from the study's rng).
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str = "mild"
    mesh: str = ""  #: the MeSH term this lesion came from

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise ValueError(f"unknown lesion kind {self.kind!r}; known: {sorted(LESION_KINDS)}")
        if self.side is not None and self.side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} or None, not {self.side!r}")
        if self.zone is not None and self.zone not in ZONES:
            raise ValueError(f"zone must be one of {ZONES} or None, not {self.zone!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    @property
    def vindr_class(self) -> str:
        return LESION_KINDS[self.kind][0]

    @property
    def vindr_label(self) -> str:
        return LESION_KINDS[self.kind][1]


@dataclass(frozen=True)
class Box:
    """A rendered lesion's bounding box in pixel coordinates of the image it was drawn in.

    ``x_max``/``y_max`` are exclusive, so ``image[y_min:y_max, x_min:x_max]`` is the box.
    """

    kind: str
    x_min: int
    y_min: int
    x_max: int
    y_max: int

    def scaled(self, factor: float) -> "Box":
        return Box(
            self.kind,
            int(self.x_min * factor),
            int(self.y_min * factor),
            max(int(self.x_min * factor) + 1, int(round(self.x_max * factor))),
            max(int(self.y_min * factor) + 1, int(round(self.y_max * factor))),
        )

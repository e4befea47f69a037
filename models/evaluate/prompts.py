"""Prompts per class: the default wording (``"There is {finding}."``, normal ``"There is no
finding."``) with natural phrases per class name, or a user's ``{class: text or [texts]}`` JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .datasets import NORMAL, NORMAL_ALIASES

PROMPT_TEMPLATE = "There is {finding}."
NORMAL_PROMPT = "There is no finding."


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


def finding_phrase(class_name: str) -> str:
    """The natural words for a class: "Pleural effusion" -> "pleural effusion",
    "Nodule/Mass" -> "a nodule or mass" (see :data:`PHRASES`)."""
    if class_name in PHRASES:
        return PHRASES[class_name]
    return class_name.lower().replace("/", " or ").replace("_", " ")


def build_prompts(
    classes: Iterable[str], prompts: Mapping | str | os.PathLike | None = None
) -> tuple[dict[str, list[str]], list[str]]:
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

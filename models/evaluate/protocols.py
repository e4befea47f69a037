"""Evaluation protocols: which classes are scored, with which prompts, on which images.

``offclip`` (the default) scores every class of the label file with ``"There is {finding}."``
(:mod:`.prompts`) on every image. Every other protocol is read from ``protocols.json`` beside
this module: per dataset the classes (label-file column → prompt, in scoring order), the normal
class's column and prompt, how the labels are read, and the image filter (``any_positive``: only
images with at least one positive among the protocol's columns, normal included). ``paper`` is
OFF-CLIP's official validation (issue 28): VinDr-CXR's 16 named classes + No finding with the
code's prompts (no full stop), Open-I's 18 pathologies matched as lower-case substrings of
``labels_automatic`` (with synonyms; No_Finding where none matched), CheXpert's 14 columns;
scores pass through a sigmoid (AUC, accuracy and FP/FN unchanged; the Youden threshold is then
on the sigmoid's scale). PadChest's 192 query labels are not in the file: that dataset says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ...data_contracts.enums import DEFAULT_EVAL_PROTOCOL, EVAL_PROTOCOLS
from .datasets import NORMAL, EvalSet, _multi_hot, _with_images

PROTOCOLS = EVAL_PROTOCOLS  # data_contracts.enums
DEFAULT_PROTOCOL = DEFAULT_EVAL_PROTOCOL
PROTOCOLS_FILE = Path(__file__).with_name("protocols.json")
FILTERS = ("none", "any_positive")


@dataclass(frozen=True)
class Protocol:
    """One protocol on one dataset (see the module docstring)."""

    name: str
    dataset: str
    classes: dict[str, str]  #: abnormal class (label-file column) → prompt, in scoring order
    normal_column: str  #: the normal class's name in the label file (scored as NORMAL)
    normal_prompt: str
    filter: str = "none"
    score: str = "cosine"  #: "cosine" or "sigmoid" (of the cosine)
    labels: dict = field(default_factory=dict)  #: how labels are read (Open-I: labels_automatic)

    @property
    def order(self) -> list[str]:
        """The scored columns, in order: the classes, then the normal class."""
        return [*self.classes, NORMAL]

    @property
    def prompts(self) -> dict[str, str]:
        return {**self.classes, NORMAL: self.normal_prompt}


@lru_cache(maxsize=1)
def _file() -> dict:
    return json.loads(PROTOCOLS_FILE.read_text(encoding="utf-8"))


def load_protocol(name: str, dataset: str) -> Protocol | None:
    """The protocol ``name`` on ``dataset``; None for the default (``offclip``). A dataset whose
    class list the file lacks (``classes: null``) raises, with the file's reason."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if name == DEFAULT_PROTOCOL:
        return None
    spec = _file().get(name)
    if spec is None or dataset not in spec["datasets"]:
        raise ValueError(f"protocol {name!r} has no entry for {dataset!r} in {PROTOCOLS_FILE}")
    entry = spec["datasets"][dataset]
    if not entry.get("classes"):
        raise ValueError(
            f"protocol {name!r} cannot evaluate {dataset}: {entry.get('missing', 'no class list')} ({PROTOCOLS_FILE})"
        )
    if entry.get("filter", "none") not in FILTERS:
        raise ValueError(f"{PROTOCOLS_FILE}: {name}/{dataset}: filter must be one of {FILTERS}")
    return Protocol(
        name,
        dataset,
        dict(entry["classes"]),
        entry["normal"]["column"],
        entry["normal"]["prompt"],
        entry.get("filter", "none"),
        spec.get("score", "cosine"),
        dict(entry.get("labels") or {}),
    )


def openi_paper_labels(text: str, protocol: Protocol) -> list[str]:
    """The protocol's Open-I classes found in one ``labels_automatic`` string: a class matches
    when its name (``_`` read as is) or one of its synonyms, in lower case, is a substring of the
    lower-cased string. ``[NORMAL]`` when none matched."""
    low = (text or "").lower() if isinstance(text, str) else ""
    synonyms = protocol.labels.get("synonyms", {})
    found = [c for c in protocol.classes if any(t.lower() in low for t in [c, *synonyms.get(c, [])])]
    return found or [NORMAL]


def read_openi_protocol(root: str | os.PathLike, protocol: Protocol) -> EvalSet:
    """Open-I under a protocol that reads ``labels_automatic``: the column of that name in
    ``openi_labels.csv`` or, without it, each report XML's automatic MeSH terms joined by ``;``."""
    root = Path(root)
    column = protocol.labels.get("column", "labels_automatic")
    table = root / "openi_labels.csv"
    strings: dict[str, str] = {}
    notes: list[str] = []
    header = pd.read_csv(table, nrows=0).columns if table.is_file() else []
    if column in header:
        df = pd.read_csv(table, dtype={"imageid": str, column: str})
        strings = {str(i).strip(): (t if isinstance(t, str) else "") for i, t in zip(df["imageid"], df[column])}
        notes.append(f"labels: {column} of {table.name}")
    else:
        from ...pipeline.openi import parse_report_xml

        files = sorted((root / "ecgen-radiology").glob("*.xml"))
        if not files:
            raise FileNotFoundError(
                f"openi: protocol {protocol.name!r} needs a {column!r} column in {table} or the "
                f"report XMLs in {root / 'ecgen-radiology'}"
            )
        for file in files:
            report = parse_report_xml(file.read_bytes())
            for image_id in report.image_ids:
                strings[image_id] = ";".join(report.mesh_automatic)
        notes.append(f"labels: the automatic MeSH terms of {len(files)} report XML(s) (as {column})")
    ids = list(strings)
    found = [openi_paper_labels(strings[i], protocol) for i in ids]
    labels = _multi_hot(ids, [[c for c in f if c != NORMAL] for f in found], list(protocol.classes))
    labels[NORMAL] = [float(f == [NORMAL]) for f in found]
    eval_set = _with_images("openi", root, labels[protocol.order], lambda i: [root / "NLMCXR_png" / f"{i}.png"], notes)
    return apply_protocol(eval_set, protocol)


def apply_protocol(eval_set: EvalSet, protocol: Protocol) -> EvalSet:
    """``eval_set`` restricted to the protocol's columns, in its order (a class the label file
    lacks is an all-unknown column, noted), then its image filter; boxes of other classes and of
    dropped images go."""
    labels = eval_set.labels.reindex(columns=protocol.order)
    absent = [c for c in protocol.order if c not in eval_set.labels.columns]
    notes = list(eval_set.notes) + [f"protocol {protocol.name!r}: {len(protocol.classes)} classes + normal"]
    if absent:
        notes.append(f"protocol {protocol.name!r}: class(es) not in the label file, no AUC: {', '.join(absent)}")
    keep = np.ones(len(labels), dtype=bool)
    if protocol.filter == "any_positive":
        keep = (labels.fillna(0).to_numpy() == 1).any(axis=1)
        if (~keep).any():
            notes.append(
                f"protocol {protocol.name!r}: {int((~keep).sum())} image(s) with no positive among its classes left out"
            )
    images = [image for image, k in zip(eval_set.images, keep) if k]
    labels = labels[keep]
    boxes = eval_set.boxes[
        eval_set.boxes["class_name"].isin(protocol.classes) & eval_set.boxes["image_id"].isin(labels.index)
    ].reset_index(drop=True)
    return EvalSet(eval_set.name, eval_set.root, images, labels, boxes, list(eval_set.rejects), notes)


def protocol_scores(scores: pd.DataFrame, protocol: Protocol | None) -> pd.DataFrame:
    """The scores the metrics read: the cosines, or their sigmoid when the protocol says so."""
    if protocol is None or protocol.score == "cosine":
        return scores
    if protocol.score == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores.astype(float)))
    raise ValueError(f"protocol {protocol.name!r}: unknown score {protocol.score!r}")


def protocol_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"both"`` → every protocol; a name → that one (checked)."""
    names = PROTOCOLS if value == "both" else ((value,) if isinstance(value, str) else tuple(value))
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ValueError(f"unknown evaluation protocol {unknown or value!r}; known: {', '.join(PROTOCOLS)} or both")
    return tuple(names)

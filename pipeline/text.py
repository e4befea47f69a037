"""Report text → sections → sentences, for OFF-CLIP's sentence-level curation.

Two layers:

* :func:`parse_sections` / :func:`clinical_sections` cut a MIMIC-CXR style free-text report into
  canonically named sections (``FINDINGS``, ``IMPRESSION``/``CONCLUSION``, ``FINDINGS AND
  IMPRESSION``, addenda, wet reads, ...) and pick the ones OFF-CLIP trains on, with the MIMIC-CXR
  authors' fallback (the last paragraph) for reports that have neither findings nor impression.
* :class:`SentenceSplitter` splits section bodies into sentences with a blank spaCy English
  pipeline: a tokenizer that keeps ``___`` whole and knows the usual abbreviations, spaCy's
  rule-based ``sentencizer``, and a radiology component that repairs its boundaries (numbered
  lists, ``5 mm. nodule``, ``No. 2``, paragraph breaks, ``___`` after a full stop).

Every :class:`Section` and :class:`Sentence` carries character offsets into the original report,
so ``report[s.start:s.end]`` is always the source of ``s.text`` (whitespace-collapsed).
:func:`normalize_key` gives the key under which identical sentences collapse (OFF-CLIP dedups
and counts sentences by it).

Header conventions (decisions, see ``_canonical``):

* ``CONCLUSION``/``FINAL IMPRESSION`` → ``impression``; ``FINDINGS AND IMPRESSION`` and
  ``IMPRESSION AND FINDINGS`` (and ``FINDINGS/IMPRESSION``) → ``findings_impression``;
  ``PROVISIONAL FINDINGS IMPRESSION (PFI)`` is a preliminary read → ``wet_read``.
* Unknown all-caps headers (``LUNGS:``, ``LINES/TUBES:``) inside a findings/impression/addendum
  body are sub-headings and stay part of it; elsewhere they open an ``other`` section
  (``PA AND LATERAL VIEWS OF THE CHEST:``, ``REPORT:``).
* ``INDICATION``/``COMPARISON``/``EXAMINATION``/``TECHNIQUE``/``HISTORY`` hold one paragraph:
  paragraphs after it, before the next header, are a header-less ``other`` section (old MIMIC
  reports put the findings there, between ``COMPARISON:`` and ``IMPRESSION:``).
* A report without a findings section whose impression is directly preceded by such
  unlabelled narrative (``other`` sections with lower-case text) gets that narrative renamed
  ``findings`` (its ``header`` stays as written, ``""`` when there was none).
* ``FINAL REPORT`` banners and ``_____`` rules end the section before them and are not content.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np


def _import_spacy_without_torch() -> None:
    """Import spaCy without loading PyTorch.

    thinc (spaCy's ML layer) imports ``torch`` at import time whenever it is installed: about
    2 s and a few hundred MB per process, though a blank pipeline with rules never uses it.
    Ingest workers start fresh interpreters, so each one would pay it. While spaCy loads,
    ``torch`` is hidden when no one has imported it yet, and restored right after: a later
    ``import torch`` works as usual; only thinc's own torch shims stay off in that process.
    Called where spaCy is first needed (:class:`SentenceSplitter`): importing this module
    neither loads spaCy nor touches ``sys.modules["torch"]``.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # typeshed: modules only; None: import torch -> ImportError
    try:
        import spacy  # noqa: F401
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


__all__ = [
    "Section",
    "Sentence",
    "SentenceSplitter",
    "parse_sections",
    "clinical_sections",
    "report_sections",
    "normalize_key",
    "is_administrative",
    "CLINICAL_NAMES",
]

# ----------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Section:
    name: str  #: canonical name (see module docstring)
    header: str  #: the header as written ("CONCLUSION"); "" for header-less text and the fallback
    text: str  #: the body, exactly ``report[start:end]`` (outer whitespace trimmed)
    start: int
    end: int


#: Sections whose text OFF-CLIP uses as captions (addenda only when they add findings).
CLINICAL_NAMES = ("findings", "impression", "findings_impression")
#: Sections that run to the next header even across blank lines; unknown headers inside are
#: sub-headings (``LUNGS:``), not new sections.
_CONTAINERS = frozenset(CLINICAL_NAMES + ("addendum",))
#: One-paragraph sections: the paragraphs after them are header-less text.
_SHORT = frozenset({"indication", "comparison", "examination", "technique", "history"})

_LINE_RE = re.compile(
    r"""^[ \t]*(?:
      (?P<rule>_{5,}|-{5,}|={5,}|\*{5,})[ \t]*$
    | (?P<banner>(?:FINAL|PRELIMINARY|PRELIM)[ \t]+REPORT)[ \t]*:?[ \t]*$
    | (?P<solo>(?:FINAL[ \t]+)?ADDENDUM(?:[ \t]*\#?[ \t]*\d+)?
              |WET[ \t]+READ(?:[ \t]+VERSION[ \t]*\#?[ \t]*\d+)?)[ \t]*:?(?=[ \t\r\n]|$)
    | (?P<head>[A-Za-z][A-Za-z0-9 \t()/,&'\#-]{0,70}?)[ \t]*:(?=[ \t\r\n]|$)
    )""",
    re.M | re.X,
)
_PARA_BREAK_RE = re.compile(r"\n[ \t\r]*\n")
_BANNER_OR_RULE_RE = re.compile(
    r"[ \t]*(?:_{5,}|-{5,}|={5,}|\*{5,}|(?:FINAL|PRELIMINARY|PRELIM)[ \t]+(?:REPORT|ADDENDUM)[ \t]*:?)[ \t\r]*$"
)
_TWO_LETTERS = re.compile(r"[A-Za-z]{2}")


#: Misspelt and variant headers of MIMIC-CXR (MIMIC-CXR's own parser normalises the same ones).
_MISSPELT = {
    "IMPRESSON": "impression",
    "IMPRRESSION": "impression",
    "IMORESSION": "impression",
    "IMPRESSOIN": "impression",
    "IMPRSSION": "impression",
    "IMPRESION": "impression",
    "IMPERSSION": "impression",
    "MPRESSION": "impression",
    "IMPESSION": "impression",
    "NDICATION": "impression",  # the reference's hand reading of its one report
    "FINDINS": "findings",
    "FINDINDGS": "findings",
    "FINDGINGS": "findings",
    "FINDNGS": "findings",
    "FINDNINGS": "findings",
    "FINIDNGS": "findings",
    "IDICATION": "indication",
    "COMPARISION": "comparison",
    "COMPARSION": "comparison",
    "COMPARRISON": "comparison",
    "COMPARISIONS": "comparison",
    "REFERENCE EXAM": "comparison",
}
#: A header naming the study itself ("CHEST, TWO VIEWS", "PORTABLE AP CHEST") heads its findings.
_TITLE_RE = re.compile(
    r"CHEST|PORTABLE|PA AND LAT|LATERAL AND PA|AP AND LATERAL|LATERAL AND AP|FRONTAL AND"
    r"|TWO VIEWS|FRONTAL VIEW|PA VIEW|AP VIEW|ONE VIEW|LATERAL VIEW|BONE WINDOW|FRONTAL UPRIGHT"
    r"|FRONTAL SEMI-UPRIGHT|RIBS"
)


def _is_title(header: str) -> bool:
    """A free header that names the study (MIMIC-CXR's parser reads it as FINDINGS)."""
    return bool(_TITLE_RE.search(" ".join(header.upper().split())))


def _canonical(header: str) -> str:
    """Canonical section name of a header as written (``other`` when unknown)."""
    h = " ".join(header.upper().replace("(S)", "S").split())
    if h in _MISSPELT:
        return _MISSPELT[h]
    if "PROVISIONAL" in h or h == "PFI" or "(PFI)" in h:
        return "wet_read"
    if "FINDING" in h and ("IMPRESSION" in h or "CONCLUSION" in h):
        return "findings_impression"
    if h.startswith("FINDING"):
        return "findings"
    if "IMPRESSION" in h or "CONCLUSION" in h:
        return "impression"
    if "FINDINGS" in h:  # ADDITIONAL FINDINGS, REFERENCE FINDINGS
        return "findings"
    if "ADDENDUM" in h or "ADDENDA" in h:
        return "addendum"
    if h.startswith("WET READ"):
        return "wet_read"
    if "NOTIFICATION" in h or "COMMUNICATION" in h:
        return "notification"
    if "RECOMMENDATION" in h or h in ("FOLLOW-UP", "FOLLOW UP", "FOLLOWUP"):
        return "recommendation"
    if "INDICATION" in h or h.startswith("REASON FOR") or h in ("CLINICAL INFORMATION", "CLINICAL DATA"):
        return "indication"
    if "COMPARISON" in h or h in ("PRIOR", "PRIORS", "PRIOR STUDY", "PRIOR STUDIES"):
        return "comparison"
    if "TECHNIQUE" in h:
        return "technique"
    if "HISTORY" in h:
        return "history"
    if h in ("EXAM", "EXAMS", "EXAMINATION", "EXAMINATIONS", "STUDY", "PROCEDURE") or h.startswith(
        ("EXAMINATION", "TYPE OF EXAM")
    ):
        return "examination"
    return "other"


#: Headers also accepted in mixed case ("Impression:"), when they open a paragraph.
_EXACT_HEADERS = frozenset(
    {
        "FINDINGS",
        "FINDING",
        "IMPRESSION",
        "IMPRESSIONS",
        "CONCLUSION",
        "CONCLUSIONS",
        "FINDINGS AND IMPRESSION",
        "IMPRESSION AND FINDINGS",
        "FINDINGS/IMPRESSION",
        "ADDENDUM",
        "INDICATION",
        "INDICATIONS",
        "COMPARISON",
        "COMPARISONS",
        "TECHNIQUE",
        "HISTORY",
        "CLINICAL HISTORY",
        "EXAMINATION",
        "EXAM",
        "REASON FOR EXAMINATION",
        "REASON FOR EXAM",
        "NOTIFICATION",
        "RECOMMENDATION",
        "RECOMMENDATIONS",
        "WET READ",
    }
)


def _is_header(m: re.Match, text: str) -> bool:
    """Filter for the ``head`` alternative of ``_LINE_RE`` (the others are always headers)."""
    h = m.group("head")
    if not _TWO_LETTERS.search(h) or len(h.split()) > 9:
        return False
    if any(c.islower() for c in h):
        # "Impression:" opening a paragraph is a header; "Note:", "Lungs:", a wrapped
        # "Chest Comparison:" are text.
        if " ".join(h.upper().replace("(S)", "S").split()) not in _EXACT_HEADERS:
            return False
        a = m.start()  # a line start
        if a == 0 or not text[:a].strip():
            return True
        previous_line = text[text.rfind("\n", 0, a - 1) + 1 : a - 1]
        return not previous_line.strip() or _BANNER_OR_RULE_RE.match(previous_line) is not None
    return True


def _trimmed(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _narrative(s: Section) -> bool:
    return any(c.islower() for c in s.text)


def parse_sections(report_text: str) -> list[Section]:
    """All sections of a report, in order of appearance.

    Text before the first header and text after a one-paragraph section (see module docstring)
    are ``other`` sections with ``header=""``; a header with nothing after it gives a section
    with empty ``text`` (``start == end``, just after the header).
    """
    text = report_text or ""
    out: list[Section] = []

    def close(name: str | None, header: str, a: int, b: int) -> None:
        if name is None:  # header-less region
            a, b = _trimmed(text, a, b)
            if a < b:
                out.append(Section("other", "", text[a:b], a, b))
            return
        if name in _SHORT:
            a0, b0 = _trimmed(text, a, b)
            brk = _PARA_BREAK_RE.search(text, a0, b0)
            if brk is not None:
                pa, pb = _trimmed(text, a0, brk.start())
                out.append(Section(name, header, text[pa:pb], pa, pb))
                close(None, "", brk.end(), b)
                return
        a, b = _trimmed(text, a, b)
        out.append(Section(name, header, text[a:b], a, b))

    cur_name: str | None = None
    cur_header = ""
    body_start = 0
    for m in _LINE_RE.finditer(text):
        if m.group("rule") or m.group("banner"):
            close(cur_name, cur_header, body_start, m.start())
            cur_name, cur_header, body_start = None, "", m.end()
            continue
        if m.group("solo"):
            header = " ".join(m.group("solo").split())
            name = _canonical(header)
        else:
            if not _is_header(m, text):
                continue
            header = " ".join(m.group("head").split())
            name = _canonical(header)
            if name == "other" and cur_name in _CONTAINERS:
                continue  # a sub-heading (LUNGS:, PLEURA:, CHEST WALL:) inside findings/impression
            if name == "other" and _is_title(header):
                name = "findings"  # "CHEST, TWO VIEWS:", "PORTABLE AP CHEST:"
        close(cur_name, cur_header, body_start, m.start())
        cur_name, cur_header, body_start = name, header, m.end()
    close(cur_name, cur_header, body_start, len(text))
    # "FINAL ADDENDUM" directly followed by "ADDENDUM:" is one addendum, not two.
    out = [s for i, s in enumerate(out) if s.text or i + 1 == len(out) or out[i + 1].name != s.name]

    # Unlabelled narrative directly before the impression of a report without findings.
    if not any(s.name in ("findings", "findings_impression") and s.text for s in out):
        first_imp = next((i for i, s in enumerate(out) if s.name == "impression"), None)
        if first_imp is not None:
            i = first_imp - 1
            while i >= 0 and out[i].name == "other" and _narrative(out[i]):
                out[i] = Section("findings", out[i].header, out[i].text, out[i].start, out[i].end)
                i -= 1
    return out


# Administrative sentences in addenda: notification, dictation corrections, pointers.
_ADMIN_RE = re.compile(
    r"""\b(?:discuss(?:ed|ion)?|communicat\w*|notif\w*|tele?phone|phoned|paged|called|informed
    |conveyed|relayed|spoke|emailed|e-mailed|reviewed\ with|read[- ]?back|made\ aware
    |dictat\w*|transcri\w*|typograph\w*|voice\ recognition|should\ (?:read|have\ read)
    |(?:was|were|been)\ (?:amended|corrected|revised)|in\ error|erroneous\w*
    |please\ (?:see|refer)|see\ (?:the\ )?(?:final|separate|prior|above|below)|attending|resident
    |time\ of\ (?:the\ )?(?:discovery|observation|dictation)|minutes?\ after)\b""",
    re.I | re.X,
)
_ROUGH_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
_ROUGH_ABBREV_RE = re.compile(r"\b(?:Dr|Drs|vs|St|No|approx|Mr|Mrs|Ms|[ap]\.m|e\.g|i\.e)\.$", re.I)


def is_administrative(sentence: str) -> bool:
    """True for a notification / dictation-correction sentence ("Findings were discussed with
    Dr. ___ by telephone at 3 p.m."), which adds no finding."""
    return bool(_ADMIN_RE.search(sentence))


def _rough_sentences(text: str) -> list[str]:
    pieces: list[str] = []
    for piece in _ROUGH_SPLIT_RE.split(text):
        if pieces and _ROUGH_ABBREV_RE.search(pieces[-1]):
            pieces[-1] += " " + piece
        else:
            pieces.append(piece)
    return pieces


def _adds_findings(s: Section) -> bool:
    """An addendum adds findings when one of its sentences is not administrative."""
    return any(
        any(c.isalpha() for c in p.replace("XXXX", "")) and not is_administrative(p) for p in _rough_sentences(s.text)
    )


def _renamed(s: Section, name: str, cut: int = 0) -> Section | None:
    """``s`` as a ``name`` section, without its first ``cut`` characters; ``None`` if empty."""
    a, b = _trimmed(s.text, cut, len(s.text))
    return Section(name, "", s.text[a:b], s.start + a, s.start + b) if a < b else None


def _group_end(sections: list[Section], i: int) -> int:
    """Index after section ``i`` and the header-less sections that follow it: the extent of
    section ``i`` as MIMIC-CXR's parser reads it (a section runs to the next header)."""
    j = i + 1
    while j < len(sections) and not sections[j].header and sections[j].name == "other":
        j += 1
    return j


def _last_paragraph(sections: list[Section], text: str | None) -> list[Section]:
    """The MIMIC-CXR authors' fallback: the report's last section (as their parser cuts it: from
    the last header to the end) without its first paragraph. In a report without any header the
    first paragraph counts from the report's start, so a ``FINAL REPORT`` banner followed by a
    blank line is that paragraph; a header-less report of one paragraph is kept whole (MIMIC-CXR's
    parser keeps nothing of it)."""
    if not sections:
        return []
    g = max((i for i, s in enumerate(sections) if s.header), default=0)
    first = sections[g]
    if text is not None:
        brk = _PARA_BREAK_RE.search(text, first.start if first.header else 0)
        cut = brk.end() if brk is not None else None
    else:  # only the sections' text is known: the break inside the first of them
        brk = _PARA_BREAK_RE.search(first.text)
        cut = first.start + brk.end() if brk is not None else (first.end if g + 1 < len(sections) else None)
    if cut is None:
        if first.header:
            return []
        cut = first.start  # offclip: a report of one header-less paragraph is kept whole
    out = []
    for s in sections[g:]:
        if s.end > cut:
            piece = _renamed(s, "last_paragraph", max(0, cut - s.start))
            if piece is not None:
                out.append(piece)
    return out


def _written_in_comparison(sections: list[Section]) -> list[Section]:
    """The last COMPARISON section with the narrative after it, when it holds more than one
    sentence (a report written there); a bare reference to priors ("None.", "___.") is not."""
    i = next((i for i in range(len(sections) - 1, -1, -1) if sections[i].name == "comparison"), None)
    if i is None:
        return []
    out = [p for p in (_renamed(s, "comparison") for s in sections[i : _group_end(sections, i)]) if p]
    if len(_rough_sentences(" ".join(" ".join(p.text for p in out).split()))) < 2:
        return []
    return out


def _is_impression(s: Section) -> bool:
    # a provisional read (PFI) is MIMIC-CXR's "impression" when no later impression replaces it
    return s.name in ("impression", "findings_impression") or (
        s.name == "wet_read" and "IMPRESSION" in s.header.upper()
    )


def clinical_sections(sections: list[Section], text: str | None = None) -> list[Section]:
    """The sections OFF-CLIP uses, in report order, as MIMIC-CXR's own parser picks them: the
    *last* non-empty findings and the *last* non-empty impression (incl. CONCLUSION, FINDINGS AND
    IMPRESSION and a provisional PFI impression), plus addenda that add findings (offclip keeps
    those; the reference does not). When the report has neither findings nor impression text:
    the last section without its first paragraph (``last_paragraph``), else a COMPARISON that
    holds more than one sentence (``comparison``). ``text`` is the report (needed by the
    fallbacks; without it, the break that ends the first paragraph is looked for in the
    sections' own text)."""
    keep: dict[int, Section] = {}
    last_f = next((s for s in reversed(sections) if s.text and s.name == "findings"), None)
    last_i = next((s for s in reversed(sections) if s.text and _is_impression(s)), None)
    for s in (last_f, last_i):
        if s is not None:
            keep[s.start] = s
    for s in sections:
        if s.text and s.name == "addendum" and _adds_findings(s):
            keep[s.start] = s
    if last_f is None and last_i is None:
        for fb in _last_paragraph(sections, text) or _written_in_comparison(sections):
            if not any(k.start < fb.end and fb.start < k.end for k in keep.values()):
                keep[fb.start] = fb  # (a kept addendum is not taken twice)
    return [keep[k] for k in sorted(keep)]


def _study_rule(sections: list[Section], text: str, study_id: int | None) -> list[Section] | None:
    """MIMIC-CXR's hand-checked studies (:mod:`offclip.pipeline.section_rules`); ``None`` when the
    study has no rule (or its section is not in this text)."""
    if study_id is None:
        return None
    from offclip.pipeline.section_rules import RANGE_BY_STUDY, SECTION_BY_STUDY

    if study_id in RANGE_BY_STUDY:
        a, b = (min(x, len(text)) for x in RANGE_BY_STUDY[study_id])
        a, b = _trimmed(text, a, b)
        return [Section("custom", "", text[a:b], a, b)] if a < b else []
    name = SECTION_BY_STUDY.get(study_id)
    if name is None:
        return None
    want = {"recommendations": "recommendation"}.get(name, name)
    for i in range(len(sections) - 1, -1, -1):
        s = sections[i]
        if s.name == want or (want == "note" and s.header.upper() == "NOTE"):
            return [p for p in (_renamed(x, "custom") for x in sections[i : _group_end(sections, i)]) if p]
    return None


def report_sections(report_text: str, study_id: int | None = None) -> list[Section]:
    """The sections of a report that OFF-CLIP keeps: :func:`clinical_sections` of
    :func:`parse_sections`, or the hand-checked rule of MIMIC-CXR study ``study_id``."""
    text = report_text or ""
    sections = parse_sections(text)
    ruled = _study_rule(sections, text, study_id)
    return ruled if ruled is not None else clinical_sections(sections, text)


# ---------------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Sentence:
    text: str  #: whitespace-collapsed sentence, list marker removed
    section: str  #: canonical section name
    index: int  #: 0-based position within the report (or within the split text)
    start: int  #: span in the original report text
    end: int
    key: str  #: :func:`normalize_key` of ``text``


_DEID_RE = re.compile(r"_{2,}|\bX{4,}\b")
_DEID_TOKEN_RE = re.compile(r"_{2,}|X{3,}")
_WS_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+(?=[.,;:!?)\]}])")
_SPACE_AFTER_OPEN_RE = re.compile(r"(?<=[(\[{])\s+")
_PUNCT_RUN_RE = re.compile(r"([^\w\s])(?:\s*[^\w\s])+")
_EDGE_RE = re.compile(r"^[^\w]+|[^\w]+$")


def normalize_key(sentence: str) -> str:
    """Normalisation key: de-identification tokens (``___``, ``XXXX``) → ``___``, lower case,
    whitespace collapsed, no space before closing punctuation, runs of punctuation collapsed to
    their first mark, punctuation stripped at both ends; digits and inner words kept.

    >>> normalize_key("No pneumothorax.") == normalize_key("no  pneumothorax") == "no pneumothorax"
    True
    """
    s = _DEID_RE.sub("___", sentence).lower()
    s = _WS_RE.sub(" ", s)
    s = _SPACE_BEFORE_PUNCT_RE.sub("", s)
    s = _SPACE_AFTER_OPEN_RE.sub("", s)
    s = _PUNCT_RUN_RE.sub(r"\1", s)
    return _EDGE_RE.sub("", s).strip()


# Tokens spaCy must keep whole (and that never end a sentence): titles, Latin abbreviations.
_SPECIAL_ABBREVS = [
    "Dr.",
    "DR.",
    "dr.",
    "Drs.",
    "Mr.",
    "Mrs.",
    "Ms.",
    "vs.",
    "Vs.",
    "VS.",
    "approx.",
    "Approx.",
    "APPROX.",
    "appr.",
    "e.g.",
    "E.g.",
    "E.G.",
    "i.e.",
    "I.e.",
    "I.E.",
    "St.",
    "cf.",
    "Fig.",
    "fig.",
    "a.m.",
    "p.m.",
    "A.M.",
    "P.M.",
    "etc.",
    "incl.",
    "esp.",
    "resp.",
]
#: Abbreviation tokens that do end a sentence when a capitalised word follows ("at 9 a.m. The").
_SPLITTABLE_ABBREVS = frozenset({"a.m.", "p.m.", "A.M.", "P.M.", "etc."})
_NAME_TITLES = frozenset({"Dr.", "DR.", "Drs.", "Mr.", "Mrs.", "Ms.", "St."})
#: "<unit>." does not end a sentence before a lower-case word or a number ("5 mm. nodule").
_UNITS = frozenset({"cm", "mm", "cc", "ml", "mg"})
#: Abbreviations that may come out of the tokenizer as "<word>" + "." (case variants).
_NOSPLIT_WORDS = frozenset(
    {"dr", "drs", "vs", "approx", "appr", "appx", "st", "fig", "figs", "mr", "mrs", "ms", "cf", "incl", "esp", "resp"}
)
_NUMBER_WORDS = frozenset({"No", "no", "NO", "Nos", "nos"})
_CLOSERS = frozenset({")", "]", "}", '"', "'", "”", "’", "»"})
_BULLETS = frozenset({"-", "*", "•", "–", "·"})
_MARKER_HEADS = _BULLETS | {"("}
_COMPONENT = "radiology_sentence_fixer"
_NOT_START = np.uint64(2**64 - 1)  # SENT_START = -1 as spaCy's uint64 arrays hold it
#: Runs of sentence-final marks the tokenizer keeps whole ("comparison radiographs.. No").
_EXTRA_TERMINALS = ["..", "...", "....", "?.", "!.", ".?", "??", "?!", "!!"]


def _letter(w: str) -> bool:
    return any(c.isalpha() for c in w) and not _DEID_TOKEN_RE.fullmatch(w)


def _punct_only(w: str) -> bool:
    return not any(c.isalnum() or c == "_" for c in w)


class _Tokens:
    """Plain-Python views of a Doc's tokens (one pass; the rules below index these lists)."""

    __slots__ = ("words", "space", "ws", "idx", "n", "nxt", "prv", "nl", "text", "paragraph_starts")

    def __init__(self, doc):
        from spacy.attrs import IDX, IS_SPACE, ORTH, SPACY  # loaded: a Doc exists

        # Columns straight from the Doc's C arrays: no Token objects (the hot path).
        rows = doc.to_array([ORTH, IDX, IS_SPACE, SPACY]).tolist() if len(doc) else []
        strings = doc.vocab.strings
        self.n = n = len(rows)
        self.words = [strings[r[0]] for r in rows]
        self.idx = [r[1] for r in rows]
        self.space = [r[2] == 1 for r in rows]
        self.ws = [r[3] == 1 for r in rows]
        self.text = "".join([w + " " if s else w for w, s in zip(self.words, self.ws)])
        # nxt[i]: first non-space token at or after i (n if none); prv[i]: last before i (-1)
        self.nxt = nxt = [n] * (n + 1)
        for i in range(n - 1, -1, -1):
            nxt[i] = nxt[i + 1] if self.space[i] else i
        # prv[i]: last non-space token before i (-1); nl[i] (i a content token): newlines in
        # the whitespace tokens since the previous content token; paragraph_starts: nl >= 2
        self.prv = prv = [-1] * (n + 1)
        self.nl = nl = [0] * n
        self.paragraph_starts = paras = []
        last = -1
        count = 0
        for i, (w, sp) in enumerate(zip(self.words, self.space)):
            prv[i] = last
            if sp:
                count += w.count("\n")
            else:
                if count:
                    nl[i] = count
                    if count >= 2 and last >= 0:
                        paras.append(i)
                    count = 0
                last = i
        prv[n] = last

    def marker_len(self, k: int) -> int:
        """Tokens in a list marker at k ("1." "2)" "(3)" or a bullet), 0 if none. A marker is
        followed by whitespace and then more content."""
        words, ws, space, n = self.words, self.ws, self.space, self.n
        w = words[k]
        if w.isdigit() and len(w) <= 2:
            if k + 1 < n and not ws[k] and words[k + 1] in (".", ")"):
                m = 2
                # "1.Severe changes": no space after the marker, a capitalised word instead
                if not ws[k + 1] and k + 2 < n and words[k + 2][:1].isupper() and words[k + 2].isalpha():
                    return 2
            else:
                return 0
        elif (
            w == "("
            and k + 2 < n
            and not ws[k]
            and words[k + 1].isdigit()
            and len(words[k + 1]) <= 2
            and not ws[k + 1]
            and words[k + 2] == ")"
        ):
            m = 3
        elif w in _BULLETS:
            m = 1
        else:
            return 0
        last = k + m - 1
        if not (ws[last] or (last + 1 < n and space[last + 1])):
            return 0
        return m if self.nxt[last + 1] < n else 0

    def marker_number(self, k: int) -> int:
        """The number of a numbered list marker at k, -1 if none."""
        if not self.marker_len(k):
            return -1
        w = self.words[k] if self.words[k] != "(" else self.words[k + 1]
        return int(w) if w.isdigit() else -1

    def marker_at(self, k: int, terminal: frozenset) -> int:
        """``marker_len`` where the context makes it a list item: text start, a new line, or
        (numbered markers only) after a sentence end or a colon."""
        m = self.marker_len(k)
        if not m:
            return 0
        p = self.prv[k]
        if p < 0 or self.nl[k] > 0:
            return m
        if self.words[k] in _BULLETS:
            return 0
        return m if (self.words[p] in terminal or self.words[p] in (":", ";")) else 0


def _boundaries(doc, guesses, terminal: frozenset) -> tuple[_Tokens, list[bool]]:
    """Sentence starts for ``doc``: spaCy's sentencizer guesses, re-anchored and repaired."""
    t = _Tokens(doc)
    n, words, space, nxt, ws = t.n, t.words, t.space, t.nxt, t.ws
    start = [False] * n
    first = nxt[0]
    if first >= n:
        return t, start
    start[first] = True
    forbid: set[int] = set()

    # 1. List markers (found first: the period of "1." is no sentence end).
    marker_period: set[int] = set()
    last_number = -1
    heads = _MARKER_HEADS
    for k in [i for i, w in enumerate(words) if w in heads or (len(w) <= 2 and w.isdigit())]:
        m = t.marker_at(k, terminal)
        number = t.marker_number(k) if (m or last_number >= 0) else -1
        if not m and number == last_number + 1 and number > 0:
            # "1. Edema 2. Stable cardiomegaly 3. Low volumes": the next number of a list
            m = t.marker_len(k)
            if m and not words[nxt[k + m]][:1].isupper():
                m = 0
        if m:
            if number >= 0:
                last_number = number
            start[k] = True
            content = nxt[k + m]
            forbid.add(content)
            marker_period.update(range(k, k + m))

    # 2. Sentencizer guesses: re-anchor each right after its terminal punctuation, then veto.
    for s in guesses:
        if s <= 0 or s >= n:
            continue
        p = s - 1
        while p >= 0 and words[p] not in terminal:
            p -= 1
        if p < 0 or p in marker_period:
            continue
        c = p + 1
        while c < n and (space[c] or words[c] in _CLOSERS or words[c] in terminal):
            c += 1
        if c >= n:
            continue
        w = words[c]
        if words[p] == "." and p > 0 and not space[p - 1] and not ws[p - 1]:
            prev = words[p - 1]
            low = prev.lower()
            following_marker = t.marker_len(c) > 0
            if low in _NOSPLIT_WORDS:
                continue
            if low in _UNITS and (w[:1].islower() or w[:1].isdigit()) and not following_marker:
                continue
            if prev in _NUMBER_WORDS and w[:1].isdigit() and not following_marker:
                continue
        start[c] = True

    # 3. "a.m." / "etc." end a sentence before a capitalised word.
    for i in [i for i, w in enumerate(words) if w in _SPLITTABLE_ABBREVS]:
        c = nxt[i + 1]
        if c < n and words[c][:1].isupper() and words[c] not in _NAME_TITLES:
            start[c] = True

    # 4. A blank line always ends a sentence.
    for i in t.paragraph_starts:
        start[i] = True

    for c in forbid:
        if c < n:
            start[c] = False
    return t, start


class SentenceSplitter:
    """Sentence splitter for radiology report text (spaCy ``blank("en")`` + ``sentencizer`` +
    a boundary-repair component). Build once and reuse; :meth:`pipe` for corpora."""

    def __init__(self):
        _import_spacy_without_torch()
        import spacy
        from spacy.language import Language
        from spacy.pipeline import Sentencizer
        from spacy.util import compile_infix_regex, compile_prefix_regex, compile_suffix_regex

        nlp = spacy.blank("en")
        # "___" (MIMIC de-identification) is one token, never three "_" punctuation tokens.
        nlp.tokenizer.prefix_search = compile_prefix_regex([r"_{2,}", *nlp.Defaults.prefixes]).search
        nlp.tokenizer.suffix_search = compile_suffix_regex([r"_{2,}", *nlp.Defaults.suffixes]).search
        # "effusion.Heart" / "1.Severe": a full stop between a word (or number) and a
        # capitalised word is a token of its own ("2.5", "U.S." and "e.g." are untouched).
        nlp.tokenizer.infix_finditer = compile_infix_regex(
            [r"(?<=[A-Za-z0-9)])\.(?=[A-Z][a-z])", *nlp.Defaults.infixes]
        ).finditer
        for abbr in _SPECIAL_ABBREVS:
            nlp.tokenizer.add_special_case(abbr, [{"ORTH": abbr}])
        sentencizer = nlp.add_pipe(
            "sentencizer", config={"punct_chars": [*Sentencizer.default_punct_chars, *_EXTRA_TERMINALS]}
        )
        terminal = frozenset(sentencizer.punct_chars)
        self._terminal = terminal

        if not Language.has_factory(_COMPONENT):

            @Language.factory(_COMPONENT)
            def _make_fixer(nlp, name):  # noqa: ARG001 - spaCy factory signature
                return _Fixer(frozenset(nlp.get_pipe("sentencizer").punct_chars))

        nlp.add_pipe(_COMPONENT, after="sentencizer")
        self.nlp = nlp

    # -- one text
    def split(self, text: str, *, section: str = "", offset: int = 0) -> list[Sentence]:
        """Sentences of one section body; spans are ``offset`` + positions in ``text``."""
        if not text or not text.strip():
            return []
        return self._sentences(self.nlp(text), section, offset, 0)

    def split_report(self, report_text: str, study_id: int | None = None) -> list[Sentence]:
        """report_sections → split; ``index`` runs across the report. ``study_id`` (MIMIC-CXR's)
        applies that study's hand-checked section rule, if any. Administrative sentences of
        addenda (:func:`is_administrative`) are left out."""
        secs = report_sections(report_text, study_id)
        return self._report(secs, iter(self.nlp.pipe([s.text for s in secs])))

    def pipe(
        self, texts: Iterable[str], batch_size: int = 256, study_ids: Iterable[int | None] | None = None
    ) -> Iterator[list[Sentence]]:
        """:meth:`split_report` for many reports, batching the spaCy work with ``nlp.pipe``;
        ``study_ids`` (one per text) as in :meth:`split_report`."""
        it = iter(texts)
        ids = iter(study_ids) if study_ids is not None else None
        while True:
            chunk = list(islice(it, batch_size))
            if not chunk:
                return
            plans = [report_sections(t, next(ids) if ids is not None else None) for t in chunk]
            docs = iter(self.nlp.pipe((s.text for secs in plans for s in secs), batch_size=batch_size))
            for secs in plans:
                yield self._report(secs, docs)

    def split_many(self, texts: Iterable[str], *, section: str = "", batch_size: int = 256) -> Iterator[list[Sentence]]:
        """:meth:`split` for many bare section bodies (e.g. Open-I FINDINGS fields)."""
        for doc in self.nlp.pipe((t or "" for t in texts), batch_size=batch_size):
            yield self._sentences(doc, section, 0, 0)

    # -- internals
    def _report(self, secs: list[Section], docs) -> list[Sentence]:
        out: list[Sentence] = []
        for s in secs:
            doc = next(docs)
            sents = self._sentences(doc, s.name, s.start, len(out))
            if s.name == "addendum":
                sents = [
                    Sentence(x.text, x.section, len(out) + i, x.start, x.end, x.key)
                    for i, x in enumerate(y for y in sents if not is_administrative(y.text))
                ]
            out.extend(sents)
        return out

    def _sentences(self, doc, section: str, offset: int, first_index: int) -> list[Sentence]:
        t = doc.user_data.get(_COMPONENT)
        if t is None:  # a Doc that did not go through the pipeline's component
            from spacy.attrs import SENT_START

            guesses = np.flatnonzero(doc.to_array(SENT_START) == 1).tolist() if len(doc) else []
            t, start = _boundaries(doc, guesses, self._terminal)
        else:
            t, start = t
        words, space, idx, n = t.words, t.space, t.idx, t.n
        text = t.text
        starts = [i for i in range(n) if start[i]] + [n]
        spans: list[list[int]] = []  # [start_char, end_char]
        carry = -1  # start of a leading content-less fragment ("XXXX. XXXX patchy ...")
        for a, b in zip(starts, starts[1:]):
            cs = [i for i in range(a, b) if not space[i]]
            if not cs:
                continue
            m = t.marker_len(cs[0])
            if m and len(cs) > m:
                cs = cs[m:]
            elif m:
                continue  # an orphan marker
            # "disease. ." → "disease."
            while (
                len(cs) >= 2
                and _punct_only(words[cs[-1]])
                and _punct_only(words[cs[-2]])
                and (t.ws[cs[-2]] or cs[-1] != cs[-2] + 1)
            ):
                cs.pop()
            a_char, b_char = idx[cs[0]], idx[cs[-1]] + len(words[cs[-1]])
            if not any(_letter(words[i]) for i in cs):
                # "___." / "XXXX." alone is no sentence: it joins the sentence before it (or,
                # opening the text, the one after it); bare punctuation is dropped.
                if any(not _punct_only(words[i]) for i in cs):
                    if spans:
                        spans[-1][1] = b_char
                    elif carry < 0:
                        carry = a_char
                continue
            if carry >= 0:
                a_char, carry = carry, -1
            spans.append([a_char, b_char])
        out: list[Sentence] = []
        for a_char, b_char in spans:
            sent = " ".join(text[a_char:b_char].split())
            if len(sent) < 2:
                continue
            out.append(
                Sentence(sent, section, first_index + len(out), offset + a_char, offset + b_char, normalize_key(sent))
            )
        return out


class _Fixer:
    """The spaCy component: repairs the sentencizer's boundaries (see ``_boundaries``) and
    stores them on the Doc (``is_sent_start``), keeping its token views for the splitter."""

    def __init__(self, terminal: frozenset):
        self.terminal = terminal

    def __call__(self, doc):
        if len(doc) == 0:
            return doc
        from spacy.attrs import SENT_START

        guesses = np.flatnonzero(doc.to_array(SENT_START) == 1).tolist()
        t, start = _boundaries(doc, guesses, self.terminal)
        flags = np.fromiter((1 if x else _NOT_START for x in start), dtype=np.uint64, count=len(start))
        flags[0] = 1
        doc.from_array([SENT_START], flags)
        doc.user_data[_COMPONENT] = (t, start)
        return doc

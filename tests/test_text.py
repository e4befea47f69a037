"""Sections and sentences of radiology reports (offclip.pipeline.text).

Hand-written MIMIC-CXR style edge cases for every rule, then the real Open-I reports rendered
into MIMIC-like text."""

from __future__ import annotations

import re
import textwrap
from collections import Counter

import pytest

from offclip.pipeline.text import (
    Sentence,
    SentenceSplitter,
    clinical_sections,
    is_administrative,
    normalize_key,
    parse_sections,
)


MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___ year old woman with chest pain  // r/o pneumonia
 
 COMPARISON:  ___
 
 FINDINGS: 
 
 The cardiomediastinal silhouette is within normal limits for size and contour.
 The lungs are normally inflated without evidence of focal airspace disease,
 pleural effusion, or pneumothorax.
 
 IMPRESSION: 
 
 1. No acute cardiopulmonary process.  2. Stable 5 mm. nodule in the right upper
 lobe, unchanged vs. ___.
"""

WET_READ = """ WET READ: ___ ___ ___ 3:37 PM
  Possible small left effusion.  No pneumothorax.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Shortness of breath.
 
 TECHNIQUE:  PA and lateral views of the chest.
 
 FINDINGS:  The heart is mildly enlarged.  There is a small left pleural effusion.
 
 CONCLUSION:  Small left pleural effusion.
 
 RECOMMENDATION(S):  Follow-up radiograph in 6 weeks.
 
 NOTIFICATION:  The findings were discussed with Dr. ___ by telephone on ___ at
 4:23 PM, 2 minutes after discovery of the findings.
"""

ADDENDA = """                                 FINAL ADDENDUM
 ADDENDUM:  On further review there is a 1 cm nodule in the left lower lobe.  This was
 discussed with Dr. ___ at 10 a.m. on ___.
 
                                 FINAL REPORT
 INDICATION:  Cough.
 
 FINDINGS AND IMPRESSION:  
 LUNGS: Clear.  HEART: Normal size.
 No acute process.
 
 ADDENDUM  The results were communicated to Dr. ___ by telephone at 4 p.m.
"""

OLD_STYLE = """                                 FINAL REPORT
 PA AND LATERAL VIEWS OF THE CHEST:
 
 REASON FOR EXAMINATION:  Fever.
 
 COMPARISON:  ___.
 
 The heart is normal in size.  The lungs are clear.
 
 IMPRESSION:  No acute cardiopulmonary process.
"""

NO_HEADER = """                                 FINAL REPORT
 CHEST RADIOGRAPH
 
 REASON FOR EXAMINATION:  Evaluation of the patient with fever.
 
 Portable AP chest radiograph was obtained.
 
 The lungs are clear.  There is no effusion or pneumothorax.
"""


@pytest.fixture(scope="module")
def splitter() -> SentenceSplitter:
    return SentenceSplitter()


def texts(sentences: list[Sentence]) -> list[str]:
    return [s.text for s in sentences]


def collapse(text: str) -> str:
    return " ".join(text.split())


def assert_spans(report: str, sentences: list[Sentence]) -> None:
    for s in sentences:
        assert collapse(report[s.start : s.end]) == s.text
        assert report[s.start : s.end] == report[s.start : s.end].strip()
    assert [s.index for s in sentences] == list(range(len(sentences)))
    assert all(a.end <= b.start for a, b in zip(sentences, sentences[1:]))


# ------------------------------------------------------------------------------- sections


def test_mimic_report_sections_are_slices_with_canonical_names():
    secs = parse_sections(MIMIC)
    assert [(s.name, s.header) for s in secs] == [
        ("examination", "EXAMINATION"),
        ("indication", "INDICATION"),
        ("comparison", "COMPARISON"),
        ("findings", "FINDINGS"),
        ("impression", "IMPRESSION"),
    ]
    for s in secs:
        assert MIMIC[s.start : s.end] == s.text == s.text.strip()
    assert secs[1].text == "___ year old woman with chest pain  // r/o pneumonia"
    assert secs[4].text.startswith("1. No acute") and secs[4].text.endswith("vs. ___.")
    assert [s.name for s in clinical_sections(secs)] == ["findings", "impression"]


def test_wet_read_at_the_top_is_not_clinical_and_conclusion_is_impression():
    secs = parse_sections(WET_READ)
    names = [s.name for s in secs]
    assert names == ["wet_read", "history", "technique", "findings", "impression", "recommendation",
                     "notification"]
    assert "Possible small left effusion" in secs[0].text and "FINAL REPORT" not in secs[0].text
    imp = secs[4]
    assert imp.header == "CONCLUSION" and imp.text == "Small left pleural effusion."
    assert secs[5].header == "RECOMMENDATION(S)"
    assert [s.name for s in clinical_sections(secs)] == ["findings", "impression"]


def test_wet_read_is_not_split_into_sentences(splitter):
    sents = splitter.split_report(WET_READ)
    assert texts(sents) == ["The heart is mildly enlarged.", "There is a small left pleural effusion.",
                            "Small left pleural effusion."]
    assert [s.section for s in sents] == ["findings", "findings", "impression"]
    assert_spans(WET_READ, sents)


@pytest.mark.parametrize("header", ["FINDINGS AND IMPRESSION", "IMPRESSION AND FINDINGS",
                                    "FINDINGS/IMPRESSION"])
def test_combined_findings_impression_header(header, splitter):
    report = f" INDICATION:  Cough.\n \n {header}:  Lungs are clear.  No effusion.\n"
    secs = parse_sections(report)
    assert [(s.name, s.header) for s in secs] == [("indication", "INDICATION"),
                                                  ("findings_impression", header)]
    sents = splitter.split_report(report)
    assert texts(sents) == ["Lungs are clear.", "No effusion."]
    assert {s.section for s in sents} == {"findings_impression"}


def test_addenda_that_add_findings_are_kept_without_their_administrative_sentences(splitter):
    secs = parse_sections(ADDENDA)
    assert [s.name for s in secs] == ["addendum", "indication", "findings_impression", "addendum"]
    # "FINAL ADDENDUM" + "ADDENDUM:" is one section; sub-headings stay inside the body
    assert secs[0].header == "ADDENDUM" and secs[0].text.startswith("On further review")
    assert secs[2].text.startswith("LUNGS: Clear.") and secs[2].text.endswith("No acute process.")
    assert secs[3].header == "ADDENDUM" and secs[3].text.startswith("The results were communicated")
    clinical = clinical_sections(secs)
    # the second addendum only reports a phone call: no finding
    assert [s.name for s in clinical] == ["addendum", "findings_impression"]
    sents = splitter.split_report(ADDENDA)
    assert texts(sents) == [
        "On further review there is a 1 cm nodule in the left lower lobe.",
        "LUNGS: Clear.",
        "HEART: Normal size.",
        "No acute process.",
    ]
    assert_spans(ADDENDA, sents)
    assert is_administrative("This was discussed with Dr. ___ at 10 a.m. on ___.")
    assert not is_administrative("There is a 1 cm nodule in the left lower lobe.")


def test_addendum_after_the_final_report(splitter):
    report = MIMIC + " \n ADDENDUM:  Also noted is a healed left rib fracture.\n"
    sents = splitter.split_report(report)
    assert sents[-1].section == "addendum"
    assert sents[-1].text == "Also noted is a healed left rib fracture."
    assert_spans(report, sents)


def test_unlabelled_findings_between_comparison_and_impression(splitter):
    secs = parse_sections(OLD_STYLE)
    assert [(s.name, s.header) for s in secs] == [
        ("findings", "PA AND LATERAL VIEWS OF THE CHEST"),  # a study title heads findings (empty here)
        ("indication", "REASON FOR EXAMINATION"),
        ("comparison", "COMPARISON"),
        ("findings", ""),  # the one-paragraph COMPARISON does not swallow the findings
        ("impression", "IMPRESSION"),
    ]
    assert secs[0].text == ""
    assert texts(splitter.split_report(OLD_STYLE)) == [
        "The heart is normal in size.", "The lungs are clear.", "No acute cardiopulmonary process."]


def test_report_without_findings_or_impression_falls_back_to_the_last_paragraph(splitter):
    # MIMIC-CXR's rule: the last section (REASON FOR EXAMINATION to the end) without its first
    # paragraph
    for clinical in (clinical_sections(parse_sections(NO_HEADER)),
                     clinical_sections(parse_sections(NO_HEADER), NO_HEADER)):
        assert [(s.name, s.header) for s in clinical] == [("last_paragraph", "")]
        lp = clinical[0]
        assert lp.text.startswith("Portable AP chest radiograph was obtained.")
        assert lp.text.endswith("The lungs are clear.  There is no effusion or pneumothorax.")
        assert NO_HEADER[lp.start : lp.end] == lp.text
    sents = splitter.split_report(NO_HEADER)
    assert texts(sents) == ["Portable AP chest radiograph was obtained.", "The lungs are clear.",
                            "There is no effusion or pneumothorax."]
    assert {s.section for s in sents} == {"last_paragraph"}
    # a study title as header heads the findings: both paragraphs are kept
    report = " CHEST, TWO VIEWS:  The lungs are clear.\n \n Heart size is normal.\n"
    assert texts(splitter.split_report(report)) == ["The lungs are clear.", "Heart size is normal."]
    # plain text without any header: its last paragraph
    assert texts(splitter.split_report("Heart normal. Lungs clear.")) == ["Heart normal.", "Lungs clear."]


@pytest.mark.parametrize("report", ["", "   \n \n  ", "                    FINAL REPORT\n",
                                    " FINDINGS:\n \n IMPRESSION:\n", " INDICATION:  Cough.\n"])
def test_empty_reports_give_nothing(report, splitter):
    assert clinical_sections(parse_sections(report)) == []
    assert splitter.split_report(report) == []
    assert list(splitter.pipe([report])) == [[]]
    assert parse_sections("") == []


def test_mixed_case_headers_only_at_a_paragraph_start():
    report = "Findings: Heart normal.\n\nImpression: Normal chest.\n"
    assert [s.name for s in parse_sections(report)] == ["findings", "impression"]
    wrapped = "Heart normal. Old fractures noted on the\nChest Comparison: none. Lungs clear."
    assert [s.name for s in parse_sections(wrapped)] == ["other"]


def test_header_variants_and_crlf():
    report = (" CLINICAL HISTORY:  Cough.\r\n \r\n COMPARISONS:  None.\r\n \r\n FINDINGS:  Clear lungs."
              "\r\n \r\n FINAL IMPRESSION:  Normal.\r\n")
    secs = parse_sections(report)
    assert [s.name for s in secs] == ["history", "comparison", "findings", "impression"]
    assert [s.text for s in secs] == ["Cough.", "None.", "Clear lungs.", "Normal."]
    assert parse_sections(" PROVISIONAL FINDINGS IMPRESSION (PFI):  No pneumonia.\n")[0].name == "wet_read"


# ------------------------------------------------------------------------------ sentences


def test_mimic_example_sentences_and_spans(splitter):
    sents = splitter.split_report(MIMIC)
    assert texts(sents) == [
        "The cardiomediastinal silhouette is within normal limits for size and contour.",
        "The lungs are normally inflated without evidence of focal airspace disease, pleural "
        "effusion, or pneumothorax.",
        "No acute cardiopulmonary process.",
        "Stable 5 mm. nodule in the right upper lobe, unchanged vs. ___.",
    ]
    assert [s.section for s in sents] == ["findings", "findings", "impression", "impression"]
    assert_spans(MIMIC, sents)
    # the span starts after the list marker
    assert MIMIC[sents[2].start - 3 : sents[2].start] == "1. "
    assert MIMIC[sents[3].start - 3 : sents[3].start] == "2. "
    assert sents[3].key == "stable 5 mm. nodule in the right upper lobe, unchanged vs. ___"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. Mild edema. 2. No effusion.", ["Mild edema.", "No effusion."]),
        ("1) Mild edema. 2) No effusion.", ["Mild edema.", "No effusion."]),
        ("1. Mild edema.\n 2. No effusion.\n 3. No pneumothorax.",
         ["Mild edema.", "No effusion.", "No pneumothorax."]),
        # items without full stops, one a line
        ("1. Mild edema\n 2. Small left effusion\n 3. Low lung volumes",
         ["Mild edema", "Small left effusion", "Low lung volumes"]),
        # items without full stops on one line: the list's next number
        ("1. Vascular congestion 2. Stable cardiomegaly 3. Low lung volumes",
         ["Vascular congestion", "Stable cardiomegaly", "Low lung volumes"]),
        ("(1) Edema. (2) Effusion.", ["Edema.", "Effusion."]),
        ("1.Severe arthritic changes. 2.No fracture.", ["Severe arthritic changes.", "No fracture."]),
        ("Findings: 1. Edema. 2. Effusion.", ["Findings:", "Edema.", "Effusion."]),
        (" - Left PICC in the SVC.\n - No pneumothorax.", ["Left PICC in the SVC.", "No pneumothorax."]),
        # a number that is no marker
        ("The tube tip is 2. 5 cm above the carina.", ["The tube tip is 2.", "5 cm above the carina."]),
    ],
)
def test_numbered_lists(text, expected, splitter):
    sents = splitter.split(text)
    assert texts(sents) == expected
    assert not any(re.match(r"\(?\d{1,2}[.)]", s.text) for s in sents)
    for s in sents:
        assert collapse(text[s.start : s.end]) == s.text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Discussed with Dr. ___ at 10 a.m. on ___.", 1),
        ("Discussed with DR. ___ at 3 p.m. by phone.", 1),
        ("Pneumonia vs. atelectasis.", 1),
        ("Infection, e.g. pneumonia, i.e. consolidation.", 1),
        ("A nodule measuring approx. 2 cm is seen.", 1),
        ("Stable 5 mm. nodule.", 1),
        ("Measures 2 cm. 3 mm satellite nodule.", 1),
        ("A 2.5 cm mass and 0.4 cm nodule.", 1),
        ("Transferred from St. ___ Hospital.", 1),
        ("Chest tube No. 2 is unchanged.", 1),
        ("The nodule measures 2 cm. No effusion.", 2),
        ("Seen at 9 a.m. The lungs are clear.", 2),
        ("Tubes, lines, etc. The heart is normal.", 2),
        ("Clear right lung XXXX.In the left lower lobe there is a nodule.", 2),
        ("Apparent interval change in the right base.. No effusion.", 2),
        ("Is there pneumonia? No.", 2),
    ],
)
def test_abbreviations_units_and_decimals(text, expected, splitter):
    sents = splitter.split(text)
    assert len(sents) == expected, texts(sents)
    assert collapse(" ".join(texts(sents))) == collapse(text.replace("XXXX.In", "XXXX. In"))


def test_line_wraps_join_and_blank_lines_split(splitter):
    text = "The lungs are clear\n without consolidation.\n \n Heart size normal\n \n\n Mild edema"
    sents = splitter.split(text)
    assert texts(sents) == ["The lungs are clear without consolidation.", "Heart size normal",
                            "Mild edema"]
    assert "\n" in text[sents[0].start : sents[0].end]


def test_deidentification_tokens(splitter):
    doc = splitter.nlp("Compared to ___. ___-year-old with ___, (___) and foo___.")
    assert [t.text for t in doc if "_" in t.text] == ["___"] * 5  # "foo___" → "foo" "___"
    sents = splitter.split("Compared to ___. ___ is unchanged. Dr. ___. ___.")
    assert texts(sents) == ["Compared to ___.", "___ is unchanged.", "Dr. ___. ___."]
    # a fragment that is only de-identified text joins its neighbour instead of standing alone
    assert texts(splitter.split("XXXX. XXXX patchy right lower lobe infiltrate.")) == [
        "XXXX. XXXX patchy right lower lobe infiltrate."]
    # punctuation-only and empty fragments are dropped
    assert texts(splitter.split("No acute disease. .")) == ["No acute disease."]
    assert texts(splitter.split(". . ;")) == [] == splitter.split("   ")
    assert all(len(s.text) >= 2 for s in splitter.split("A. B. x. y"))


def test_offsets_sections_and_the_spacy_pipeline(splitter):
    body = "Heart normal. Lungs clear."
    sents = splitter.split(body, section="findings", offset=100)
    assert [(s.start, s.end, s.section, s.index) for s in sents] == [
        (100, 113, "findings", 0), (114, 126, "findings", 1)]
    assert splitter.nlp.pipe_names == ["sentencizer", "radiology_sentence_fixer"]
    doc = splitter.nlp("1. No acute process.  2. Stable 5 mm. nodule.")
    assert [collapse(s.text) for s in doc.sents] == ["1. No acute process.", "2. Stable 5 mm. nodule."]


def test_pipe_matches_split_report_and_is_deterministic(splitter):
    reports = [MIMIC, WET_READ, ADDENDA, OLD_STYLE, NO_HEADER, "", MIMIC] * 3
    one_by_one = [splitter.split_report(r) for r in reports]
    for batch_size in (1, 4, 256):
        assert list(splitter.pipe(reports, batch_size=batch_size)) == one_by_one
    assert [splitter.split_report(r) for r in reports] == one_by_one
    assert list(SentenceSplitter().pipe(iter(reports))) == one_by_one
    for report, sents in zip(reports, one_by_one):
        assert_spans(report, sents)


def test_random_fragments_keep_every_invariant(splitter):
    """Deterministic fuzz over report-like fragments: no crash, spans always exact."""
    import random

    rnd = random.Random(0)
    pieces = ["FINDINGS:", "IMPRESSION:", "ADDENDUM", "WET READ:", "FINAL REPORT", "_____", "\n",
              "\n \n", " ", "1.", "2)", "(3)", "-", "Dr.", "___", "XXXX", ".", ". .", "cm.", "No.",
              "2.5", "a.m.", "The", "lungs", "clear", "no", "effusion", "?", ":", "LUNGS:",
              "COMPARISON:", "Impression:", "\r\n", "etc.", "..", "vs."]
    for _ in range(300):
        text = "".join(rnd.choice(pieces) + rnd.choice(["", " "]) for _ in range(rnd.randint(0, 40)))
        secs = parse_sections(text)
        for sec in secs + clinical_sections(secs):
            assert text[sec.start : sec.end] == sec.text
        sents = splitter.split_report(text)
        assert_spans(text, sents)
        assert all(len(s.text) >= 2 for s in sents)


def test_normalize_key():
    assert normalize_key("No pneumothorax.") == normalize_key("no  pneumothorax") == "no pneumothorax"
    assert normalize_key("No acute disease. .") == "no acute disease"
    assert normalize_key("Heart size normal , lungs clear.") == "heart size normal, lungs clear"
    assert normalize_key("Compared to XXXX.") == normalize_key("compared to ___") == "compared to ___"
    assert normalize_key("2.5 cm nodule;;  stable!!") == "2.5 cm nodule; stable"
    assert normalize_key("(see above)") == "see above"
    assert normalize_key("No effusion\n seen.") == "no effusion seen"
    assert normalize_key("...") == "" == normalize_key("")
    assert normalize_key("5 mm nodule") != normalize_key("6 mm nodule")


# ----------------------------------------------------------------------- real Open-I reports


def render(findings: str, impression: str) -> str:
    """An Open-I report as MIMIC-CXR style text (headers, blank lines, lines wrapped at 78)."""

    def wrap(text: str) -> str:
        return "\n ".join(textwrap.wrap(text, 78, break_on_hyphens=False, break_long_words=False))

    return f" FINDINGS:\n \n {wrap(findings)}\n \n IMPRESSION:\n \n {wrap(impression)}\n"


@pytest.fixture(scope="module")
def openi(splitter, openi_sources):
    from offclip.pipeline.openi import load_reports

    reports = load_reports(openi_sources.reports_tgz)
    rendered = [render(r.findings, r.impression) for r in reports]
    from_reports = list(splitter.pipe(rendered))
    # the bare XML fields of every third report, split without headers or line wraps
    fields = [f for r in reports[::3] for f in (r.findings, r.impression)]
    per_field = list(splitter.split_many(fields))
    from_fields = [a + b for a, b in zip(per_field[::2], per_field[1::2])]
    return reports, rendered, from_reports, from_fields


_WORD = re.compile(r"[A-Za-z]+")


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w not in ("FINDINGS", "IMPRESSION")]


def _kept_source(r) -> str:
    """The source text a report keeps: its findings and its *last* impression (MIMIC-CXR's
    rule). One Open-I report (uid 2415) pastes the whole report again inside its impression after
    a wrapped "IMPRESSION:"; only that last impression is kept."""
    lines = textwrap.wrap(r.impression, 78, break_on_hyphens=False, break_long_words=False)
    heads = [i for i, line in enumerate(lines) if line.startswith("IMPRESSION:")]
    impression = " ".join(lines[heads[-1]:])[len("IMPRESSION:"):] if heads else r.impression
    return f"{r.findings} {impression}"


def test_openi_every_source_sentence_appears(openi):
    reports, rendered, from_reports, from_fields = openi
    assert len(reports) == 3955
    for r, text, sents in zip(reports, rendered, from_reports):
        # nothing lost, duplicated or reordered: the words of the sentences are the source's
        assert _words(" ".join(texts(sents))) == _words(_kept_source(r)), r.uid
        assert_spans(text, sents)
        assert {s.section for s in sents} <= {"findings", "impression"}
    # line wrapping and headers change nothing: the rendered report splits like the bare fields.
    # (One Open-I impression embeds a whole second report; its upper-case "IMPRESSION:" lands at
    # the start of a wrapped line and is then, rightly, a header.)
    pairs = list(zip(reports[::3], from_reports[::3], from_fields))
    assert len(pairs) == 1319
    differ = [r.uid for r, a, b in pairs if texts(a) != texts(b)]
    assert len(differ) <= 1, differ


def test_openi_sentence_shapes(openi):
    reports, _, from_reports, _ = openi
    normal = [s for r, ss in zip(reports, from_reports) if r.is_normal for s in ss]
    abnormal = [s for r, ss in zip(reports, from_reports) if not r.is_normal for s in ss]
    assert len(normal) > 5000 and len(abnormal) > 10000
    for s in normal + abnormal:
        assert len(s.text) >= 2
        assert not re.match(r"\(?\d{1,2}[.)]\s|[-*•]\s", s.text), s.text
        assert s.key == normalize_key(s.text) and s.key
        assert s.text == s.text.strip() and "  " not in s.text and "\n" not in s.text


def test_openi_sentence_count_matches_full_stop_boundaries(openi):
    """Sanity check against the naive count (pieces between '. ' boundaries)."""
    reports, _, from_reports, _ = openi

    def naive(text: str) -> int:
        return sum(bool(re.search("[A-Za-z]", p)) for p in re.split(r"(?<=[.!?])\s+", text)) if text else 0

    ours = [len(ss) for ss in from_reports]
    theirs = [naive(_kept_source(r)) for r in reports]
    assert abs(sum(ours) - sum(theirs)) / sum(theirs) < 0.01
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same / len(reports) > 0.98
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 3  # Dr. / p.m. / 1. 2. lists


def test_openi_sentences_repeat_far_more_than_they_vary(openi):
    """Measured: 22,846 sentences, 8,503 unique keys (2.69x); MeSH-normal reports 5.6x,
    abnormal ones 2.1x."""
    reports, _, from_reports, _ = openi
    keys = [s.key for ss in from_reports for s in ss]
    assert 22000 < len(keys) < 23700
    ratio = len(keys) / len(set(keys))
    assert 2.5 < ratio < 2.9
    normal = [s.key for r, ss in zip(reports, from_reports) if r.is_normal for s in ss]
    abnormal = [s.key for r, ss in zip(reports, from_reports) if not r.is_normal for s in ss]
    assert len(normal) / len(set(normal)) > 4.5
    assert 1.8 < len(abnormal) / len(set(abnormal)) < 2.5
    # the templated normal sentences are the most frequent keys
    (top, count), = Counter(keys).most_common(1)
    assert top == "no acute cardiopulmonary abnormality" and count > 400


def test_spacy_loads_without_torch_and_torch_still_imports_after():
    """A fresh ingest worker imports the splitter without PyTorch (thinc would load it, ~2 s per
    process); a later ``import torch`` in the same process works."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from offclip.pipeline.text import SentenceSplitter\n"
            "s = SentenceSplitter()\n"
            "assert 'spacy' in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)[:5]\n"
            "texts = [x.text for x in s.split('No effusion. Heart size normal.')]\n"
            "import torch\n"
            "print(texts, float(torch.ones(3).sum()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['No effusion.', 'Heart size normal.'] 3.0"

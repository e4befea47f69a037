"""Rule labeler for radiology sentences (offclip.pipeline.labeler).

Hand-written cases for every rule family, then the two agreement figures on real Open-I reports
(sentences of MeSH-"normal" reports labelled normal; MeSH-abnormal reports with at least one
abnormal sentence)."""

from __future__ import annotations


import pytest

from offclip.pipeline.labeler import (
    CATEGORIES,
    LEXICON,
    RULES_VERSION,
    Mention,
    RuleLabel,
    RuleLabeler,
)



@pytest.fixture(scope="module")
def lab() -> RuleLabeler:
    return RuleLabeler()


def mention(r: RuleLabel, finding: str) -> Mention:
    found = [m for m in r.mentions if m.finding == finding]
    assert found, f"no {finding!r} in {r}"
    return found[0]


def statuses(r: RuleLabel) -> dict[str, str]:
    return {m.finding: m.status for m in r.mentions}


# ------------------------------------------------------------------------------- API basics


def test_api_and_version(lab):
    assert lab.version == RULES_VERSION and RULES_VERSION.startswith("rules-")
    r = lab.label("Mild cardiomegaly.")
    assert isinstance(r, RuleLabel) and isinstance(r.mentions[0], Mention)
    with pytest.raises(AttributeError):
        r.label = "normal"  # frozen
    assert lab.label("") == RuleLabel("normal", "no_finding", ())
    assert lab.label("   ") == RuleLabel("normal", "no_finding", ())


def test_lexicon_is_consistent():
    names = [name for name, _, _, _ in LEXICON]
    assert len(names) == len(set(names))
    for name, cat, kind, _ in LEXICON:
        assert name == name.lower()
        assert cat in CATEGORIES
        assert kind in ("positive", "chronic", "device", "postsurgical")
    # every CheXpert observation except "No Finding" has at least one lexicon entry
    assert set(CATEGORIES) == {cat for _, cat, _, _ in LEXICON}


# --------------------------------------------------------------------------------- negation


@pytest.mark.parametrize("sentence, finding", [
    ("No pneumothorax.", "pneumothorax"),
    ("There is no evidence of pleural effusion.", "pleural effusion"),
    ("Negative for pneumothorax.", "pneumothorax"),
    ("Lungs are free of infiltrate.", "infiltrate"),
    ("The lungs are clear of focal airspace disease.", "airspace disease"),
    ("Without evidence of pneumonia.", "pneumonia"),
    ("The heart is not enlarged.", "cardiomegaly"),
    ("Heart size is not significantly enlarged.", "cardiomegaly"),
    ("Interval resolution of left lower lobe pneumonia.", "pneumonia"),
    ("Interval removal of the right chest tube.", "chest tube"),
    ("No XXXX of pleural effusion.", "pleural effusion"),
    ("Normal interstitial markings.", "interstitial markings"),
])
def test_pre_negation(lab, sentence, finding):
    r = lab.label(sentence)
    assert r.label == "normal", r
    assert mention(r, finding).status == "negated"


@pytest.mark.parametrize("sentence, finding", [
    ("Pneumothorax is not seen.", "pneumothorax"),
    ("The left pleural effusion has resolved.", "pleural effusion"),
    ("Pleural effusions are absent.", "pleural effusion"),
    ("Previously identified small right pneumothorax is not visualized on today's exam.",
     "pneumothorax"),
    ("The interstitial markings are normal.", "interstitial markings"),
])
def test_post_negation(lab, sentence, finding):
    r = lab.label(sentence)
    assert r.label == "normal", r
    assert r.rule in ("negated_only", "normal_phrase:lungs_clear")
    assert mention(r, finding).status == "negated"


@pytest.mark.parametrize("sentence", [
    "No effusion, pneumothorax, or consolidation.",
    "No focal consolidation, large pleural effusion, or pneumothorax is identified.",
    "Effusion or pneumothorax is not identified.",
    "No pneumonia, effusions, edema, pneumothorax, adenopathy, nodules or masses.",
])
def test_list_scope_negates_every_item(lab, sentence):
    r = lab.label(sentence)
    assert r.label == "normal"
    assert len(r.mentions) >= 2
    assert all(m.status == "negated" for m in r.mentions), r


@pytest.mark.parametrize("sentence, finding", [
    ("No change in the small left pleural effusion.", "pleural effusion"),
    ("No interval change in mild cardiomegaly.", "cardiomegaly"),
    ("No significant change in the right upper lobe nodule.", "nodule"),
    ("Without change in the calcified granuloma.", "granuloma"),
    ("No increase in the size of the left effusion.", "pleural effusion"),
    ("Not only cardiomegaly but also edema.", "cardiomegaly"),
])
def test_pseudo_negation_does_not_negate(lab, sentence, finding):
    r = lab.label(sentence)
    assert r.label == "abnormal", r
    assert mention(r, finding).status == "positive"


@pytest.mark.parametrize("sentence, negated, positive", [
    ("No pneumothorax, but there is a small left effusion.", "pneumothorax", "pleural effusion"),
    ("There is no pneumothorax however a small effusion is present.", "pneumothorax",
     "pleural effusion"),
    ("No effusion; mild cardiomegaly.", "pleural effusion", "cardiomegaly"),
    ("No pneumothorax. Small right effusion.", "pneumothorax", "pleural effusion"),
    ("No acute disease, stable cardiomegaly.", "abnormality", "cardiomegaly"),
    ("No pleural effusion, left basilar atelectasis.", "pleural effusion", "atelectasis"),
    ("Lungs are clear without infiltrate, with mild cardiomegaly.", "infiltrate", "cardiomegaly"),
    ("No effusion except for a small left effusion.", None, "pleural effusion"),
])
def test_scope_terminators(lab, sentence, negated, positive):
    r = lab.label(sentence)
    assert r.label == "abnormal", r
    st = [m.status for m in r.mentions if m.finding == positive]
    assert "positive" in st, r
    if negated:
        assert mention(r, negated).status == "negated"


def test_normal_predicate_needs_a_verb(lab):
    # "normal" here describes the vascularity, not the cardiomegaly
    r = lab.label("Cardiomegaly and normal pulmonary vascularity.")
    assert r.label == "abnormal" and statuses(r)["cardiomegaly"] == "positive"
    r = lab.label("Mild cardiomegaly and the lungs are normal.")
    assert r.label == "abnormal" and statuses(r)["cardiomegaly"] == "positive"
    r = lab.label("Heart size and pulmonary vascular engorgement appear within limits of normal.")
    assert r.label == "normal" and statuses(r)["vascular congestion"] == "negated"


# ------------------------------------------------------------------------------ uncertainty


@pytest.mark.parametrize("sentence, finding", [
    ("Possible left lower lobe pneumonia.", "pneumonia"),
    ("Findings suspicious for pneumonia.", "pneumonia"),
    ("Concerning for malignancy.", "malignancy"),
    ("Questionable nodule in the right upper lobe.", "nodule"),
    ("Likely atelectasis.", "atelectasis"),
    ("Probable small left effusion.", "pleural effusion"),
    ("Pneumonia cannot be excluded.", "pneumonia"),
    ("Cannot exclude small left effusion.", "pleural effusion"),
    ("Underlying infiltrate is not excluded.", "infiltrate"),
    ("Atelectasis versus pneumonia in the left base.", "pneumonia"),
    ("Atelectasis vs. pneumonia.", "atelectasis"),
    ("Differential includes pneumonia and edema.", "pulmonary edema"),
    ("These findings suggest early edema.", "pulmonary edema"),
    ("Scarring or atelectasis at the left base.", "scarring"),
    ("Pneumonia?", "pneumonia"),
    ("Borderline cardiomegaly.", "cardiomegaly"),
    ("Heart size is upper limits of normal.", "cardiomegaly"),
    ("The heart is top normal in size.", "cardiomegaly"),
])
def test_uncertainty_is_abnormal(lab, sentence, finding):
    r = lab.label(sentence)
    assert r.label == "abnormal", r
    assert mention(r, finding).status == "uncertain"
    if all(m.status != "positive" for m in r.mentions):
        assert r.rule.startswith("uncertain:")


def test_uncertain_first_beats_negation(lab):
    r = lab.label("Pneumonia cannot be excluded.")
    assert r.rule == "uncertain:pneumonia"
    r = lab.label("No definite consolidation, although pneumonia cannot be ruled out.")
    assert statuses(r) == {"consolidation": "negated", "pneumonia": "uncertain"}
    # negation wins over a later "suggest"
    r = lab.label("There is no focal air space opacity to suggest a pneumonia.")
    assert r.label == "normal" and statuses(r)["pneumonia"] == "negated"


def test_hedged_interpretation_keeps_the_observation_positive(lab):
    r = lab.label("Right lower lobe opacity could represent pneumonia.")
    assert r.rule == "positive:opacity"
    assert statuses(r) == {"opacity": "positive", "pneumonia": "uncertain"}


# ---------------------------------------------------------------------------- list markers


@pytest.mark.parametrize("sentence, label, rule", [
    ("1. Mild cardiomegaly.", "abnormal", "positive:cardiomegaly"),
    ("2. No pneumothorax.", "normal", "negated_only"),
    ("(3) Stable calcified granuloma.", "abnormal", "chronic:granuloma"),
    ("4) Lungs are clear.", "normal", "normal_phrase:lungs_clear"),
    ("- Small right pleural effusion", "abnormal", "positive:pleural_effusion"),
])
def test_leading_list_marker(lab, sentence, label, rule):
    r = lab.label(sentence)
    assert (r.label, r.rule) == (label, rule)


def test_list_marker_spans_point_into_the_sentence(lab):
    s = "1. Mild cardiomegaly."
    m = lab.label(s).mentions[0]
    assert s[m.start:m.end] == "cardiomegaly" and m.modifiers == ("mild",)


# ------------------------------------------------------- chronic / devices / post-surgical


@pytest.mark.parametrize("sentence, rule", [
    ("Calcified granuloma in the right upper lobe.", "chronic:granuloma"),
    ("Sequelae of old granulomatous disease.", "chronic:granuloma"),
    ("Mild thoracic scoliosis.", "chronic:scoliosis"),
    ("Thoracic spondylosis.", "chronic:spondylosis"),
    ("Degenerative changes of the thoracic spine.", "chronic:degenerative_change"),
    ("There are T-spine osteophytes.", "chronic:osteophytes"),
    ("Emphysema.", "chronic:emphysema"),
    ("Lungs are hyperexpanded.", "chronic:hyperinflation"),
    ("COPD.", "chronic:copd"),
    ("Tortuous aorta.", "chronic:tortuous_aorta"),
    ("The thoracic aorta is tortuous.", "chronic:tortuous_aorta"),
    ("Aortic calcification.", "chronic:aortic_calcification"),
    ("There are atherosclerotic changes of the aorta.", "chronic:atherosclerosis"),
    ("Small hiatal hernia.", "chronic:hiatal_hernia"),
    ("Biapical pleural thickening.", "chronic:pleural_thickening"),
    ("Old healed left rib fractures.", "chronic:fracture"),
    ("Left apical scarring.", "chronic:scarring"),
    ("Bronchiectasis in the lower lobes.", "chronic:bronchiectasis"),
])
def test_chronic_findings_are_abnormal(lab, sentence, rule):
    r = lab.label(sentence)
    assert (r.label, r.rule) == ("abnormal", rule), r


@pytest.mark.parametrize("sentence, rule", [
    ("Left-sided pacemaker with leads in the right atrium and ventricle.", "device:pacemaker"),
    ("Right IJ central venous catheter tip in the SVC.", "device:central_venous_catheter"),
    ("Port-a-cath in the right chest.", "device:port"),
    ("Left PICC line tip in the distal SVC.", "device:picc"),
    ("Endotracheal tube 4 cm above the carina.", "device:endotracheal_tube"),
    ("Nasogastric tube in the stomach.", "device:enteric_tube"),
    ("Dual-chamber AICD in place.", "device:defibrillator"),
    ("Coronary artery stents.", "device:stent"),
    ("Median sternotomy wires.", "postsurgical:sternotomy"),
    ("Status post CABG.", "postsurgical:cabg"),
    ("Cholecystectomy clips.", "postsurgical:surgical_clips"),
    ("Postsurgical changes in the left breast.", "postsurgical:postsurgical_change"),
    ("Status post right upper lobectomy.", "postsurgical:lobectomy"),
])
def test_devices_and_postsurgical_are_abnormal(lab, sentence, rule):
    r = lab.label(sentence)
    assert (r.label, r.rule) == ("abnormal", rule), r
    assert r.mentions[0].category in ("Support Devices", "Other Finding")


def test_acute_findings(lab):
    for sentence, rule in [
        ("Mild cardiomegaly.", "positive:cardiomegaly"),
        ("The heart is mildly enlarged.", "positive:cardiomegaly"),
        ("Enlargement of the cardiac silhouette.", "positive:cardiomegaly"),
        ("Small bilateral pleural effusions.", "positive:pleural_effusion"),
        ("Blunting of the left costophrenic angle.", "positive:costophrenic_angle_blunting"),
        ("Right lower lobe consolidation.", "positive:consolidation"),
        ("Patchy airspace disease in the left base.", "positive:airspace_disease"),
        ("Bibasilar atelectatic changes.", "positive:atelectasis"),
        ("Small right apical pneumothorax.", "positive:pneumothorax"),
        ("Mild pulmonary vascular congestion.", "positive:vascular_congestion"),
        ("Interstitial edema.", "positive:pulmonary_edema"),
        ("Widened mediastinum.", "positive:enlarged_cardiomediastinum"),
        ("8 mm nodule in the right upper lobe.", "positive:nodule"),
        ("Right rib fracture.", "positive:fracture"),
        ("Right upper lobe pneumonia.", "positive:pneumonia"),
        ("Low lung volumes.", "positive:low_lung_volumes"),
        ("Lung volumes are low.", "positive:low_lung_volumes"),
        ("Elevated right hemidiaphragm.", "positive:elevated_hemidiaphragm"),
        ("Increased interstitial markings.", "positive:interstitial_markings"),
    ]:
        r = lab.label(sentence)
        assert (r.label, r.rule) == ("abnormal", rule), (sentence, r)


# ----------------------------------------------------------------------------- normal side


@pytest.mark.parametrize("sentence, phrase", [
    ("The lungs are clear.", "lungs_clear"),
    ("Clear lungs.", "lungs_clear"),
    ("Both lungs are clear and expanded.", "lungs_clear"),
    ("Heart size is normal.", "heart_size_normal"),
    ("Normal heart size.", "heart_size_normal"),
    ("The heart is normal in size.", "heart_size_normal"),
    ("Cardiomediastinal silhouette is within normal limits.", "cardiomediastinal_normal"),
    ("The mediastinum is unremarkable.", "cardiomediastinal_normal"),
    ("No acute cardiopulmonary abnormality.", "no_acute_process"),
    ("No acute cardiopulmonary process.", "no_acute_process"),
    ("No acute cardiopulmonary disease.", "no_acute_process"),
    ("Normal chest.", "normal_chest"),
    ("Negative chest x-XXXX.", "normal_chest"),
    ("Unremarkable.", "unremarkable"),
    ("Osseous structures are intact.", "osseous_intact"),
    ("Pulmonary vasculature is normal.", "vasculature_normal"),
    ("No focal consolidation.", "no_focal_consolidation"),
    ("Trachea is midline.", "trachea_midline"),
    ("The pleural spaces are clear.", "pleura_clear"),
    ("No significant change.", "no_change"),
    ("No interval change.", "no_change"),
])
def test_normal_phrases(lab, sentence, phrase):
    r = lab.label(sentence)
    assert (r.label, r.rule) == ("normal", f"normal_phrase:{phrase}"), r
    assert all(m.status == "negated" for m in r.mentions)


@pytest.mark.parametrize("sentence", [
    "Comparison is made to prior.",
    "PA and lateral views of the chest.",
    "Unchanged appearance of the chest.",
    "Stable cardiomediastinal silhouette.",
    "Comparison: ___.",
    "XXXX XXXX and lateral chest examination was obtained.",
])
def test_no_finding(lab, sentence):
    assert lab.label(sentence) == RuleLabel("normal", "no_finding", ())


# ---------------------------------------------------------------------- mixed / comparisons


def test_mixed_sentences_are_abnormal(lab):
    r = lab.label("Normal heart size with mild tortuosity of the aorta.")
    assert (r.label, r.rule) == ("abnormal", "chronic:tortuous_aorta")
    assert mention(r, "tortuous aorta").modifiers == ("mild",)
    r = lab.label("The lungs are clear, with mild cardiomegaly.")
    assert (r.label, r.rule) == ("abnormal", "positive:cardiomegaly")
    r = lab.label("Hyperexpanded but clear lungs.")
    assert (r.label, r.rule) == ("abnormal", "chronic:hyperinflation")
    r = lab.label("Small left pleural effusion, no pneumothorax.")
    assert r.rule == "positive:pleural_effusion"
    assert statuses(r) == {"pleural effusion": "positive", "pneumothorax": "negated"}


@pytest.mark.parametrize("sentence, finding", [
    ("Stable cardiomegaly.", "cardiomegaly"),
    ("Unchanged small left pleural effusion.", "pleural effusion"),
    ("Again seen is a small right pleural effusion.", "pleural effusion"),
    ("Persistent right lower lobe opacity.", "opacity"),
])
def test_stable_findings_are_present(lab, sentence, finding):
    r = lab.label(sentence)
    assert r.label == "abnormal" and mention(r, finding).status == "positive"


def test_first_positive_mention_decides(lab):
    r = lab.label("Stable cardiomegaly with possible small left effusion.")
    assert r.rule == "positive:cardiomegaly"
    r = lab.label("Possible small left effusion and stable cardiomegaly.")
    assert r.rule == "positive:cardiomegaly"  # positive beats uncertain
    r = lab.label("Tortuous aorta and small right effusion.")
    assert r.rule == "chronic:tortuous_aorta"


# ------------------------------------------------------------------- de-identification tokens


def test_deidentification_tokens_are_words(lab):
    r = lab.label("Small ___ pleural effusion.")
    assert r.rule == "positive:pleural_effusion"
    assert mention(r, "pleural effusion").modifiers == ("small",)
    r = lab.label("No ___ pneumothorax.")
    assert r.label == "normal" and statuses(r) == {"pneumothorax": "negated"}
    r = lab.label("Heart size XXXX normal.")
    assert r.label == "normal"
    r = lab.label("XXXX degenerative changes of the thoracic spine.")
    assert r.rule == "chronic:degenerative_change"
    s = "___ pacemaker leads in the right ventricle."
    m = lab.label(s).mentions[0]
    assert (m.finding, s[m.start:m.end]) == ("pacemaker", "pacemaker leads")


# ------------------------------------------------------------------------ mention structure


def test_mention_structure(lab):
    s = "There is a small left basilar pleural effusion."
    r = lab.label(s)
    (m,) = r.mentions
    assert m == Mention("pleural effusion", "Pleural Effusion", "positive",
                        ("small", "left", "basilar"), s.index("pleural"), s.index("."))
    s = "The heart is mildly enlarged."
    (m,) = lab.label(s).mentions
    assert (m.finding, m.category, m.status, m.modifiers) == (
        "cardiomegaly", "Cardiomegaly", "positive", ("mild",))
    assert s[m.start:m.end] == "heart is mildly enlarged"
    s = "Moderate right basilar atelectasis."
    (m,) = lab.label(s).mentions
    assert (m.category, m.modifiers) == ("Atelectasis", ("moderate", "right", "basilar"))
    (m,) = lab.label("Calcified granuloma in the right upper lobe.").mentions
    assert (m.finding, m.category) == ("granuloma", "Other Finding")
    assert m.modifiers == ("calcified", "right", "upper")
    (m,) = lab.label("Elevated right hemidiaphragm.").mentions
    assert m.modifiers == ("right",)
    (m,) = lab.label("Borderline heart size.").mentions
    assert (m.finding, m.status, m.modifiers) == ("cardiomegaly", "uncertain", ("borderline",))
    (m,) = lab.label("Old right rib fractures.").mentions
    assert (m.category, m.modifiers) == ("Fracture", ("old", "right"))


def test_adjectival_forms_fold_into_the_finding(lab):
    r = lab.label("Atherosclerotic calcification of the aorta.")
    (m,) = r.mentions
    assert m.finding == "aortic calcification" and "atherosclerotic" in m.modifiers
    r = lab.label("Status post CABG.")
    assert [m.finding for m in r.mentions] == ["cabg"]


def test_spans_are_char_offsets(lab):
    for s in ["No effusion, pneumothorax, or consolidation.",
              "Mild cardiomegaly and small bilateral pleural effusions.",
              "Patchy left basilar airspace disease versus atelectasis."]:
        for m in lab.label(s).mentions:
            assert 0 <= m.start < m.end <= len(s)
            assert s[m.start:m.end].strip() == s[m.start:m.end]


# ------------------------------------------------------------------------------ label_many


def test_label_many_equals_label(lab):
    sentences = [
        "Mild cardiomegaly.", "No pneumothorax.", "", "Mild cardiomegaly.",
        "Pneumonia cannot be excluded.", "The lungs are clear.", "1. Small left effusion.",
        "No change in the small left pleural effusion.", "Comparison: ___.",
    ] * 3
    many = lab.label_many(sentences, batch_size=4)
    assert many == [lab.label(s) for s in sentences]
    assert lab.label_many(iter(sentences)) == many  # any iterable, any batch size
    assert lab.label_many([]) == []


def test_deterministic_across_instances(lab):
    s = "Stable cardiomegaly with possible small left effusion, no pneumothorax."
    assert RuleLabeler().label(s) == lab.label(s)


# ---------------------------------------------------------------------------- real Open-I


@pytest.fixture(scope="module")
def openi_labels(lab, openi_sources):
    from offclip.pipeline.openi import load_reports
    from offclip.pipeline.text import SentenceSplitter

    reports = load_reports(openi_sources.reports_tgz)
    splitter = SentenceSplitter()
    texts = [t for r in reports for t in (r.findings, r.impression)]
    split = list(splitter.split_many(texts))
    owners, sentences = [], []
    for i in range(len(reports)):
        for s in split[2 * i] + split[2 * i + 1]:
            owners.append(i)
            sentences.append(s.text)
    labels = lab.label_many(sentences)
    return reports, owners, sentences, labels


def test_openi_agreement_with_mesh(openi_labels):
    reports, owners, sentences, labels = openi_labels
    assert len(sentences) > 20_000
    # (a) sentences of MeSH-"normal" reports labelled normal (measured 0.983)
    normal = [lab.label == "normal" for i, lab in zip(owners, labels) if reports[i].is_normal]
    a = sum(normal) / len(normal)
    # (b) MeSH-abnormal reports with >= 1 abnormal sentence (measured 0.995)
    has_abnormal = [False] * len(reports)
    for i, lab in zip(owners, labels):
        has_abnormal[i] |= lab.label == "abnormal"
    abnormal = [i for i, r in enumerate(reports) if not r.is_normal
                and not any(t.strip().lower() == "no indexing" for t in r.mesh_major)]
    b = sum(has_abnormal[i] for i in abnormal) / len(abnormal)
    print(f"\n(a) {a:.4f} of {len(normal)} sentences; (b) {b:.4f} of {len(abnormal)} reports")
    assert a >= 0.97
    assert b >= 0.98


def test_openi_rule_families(openi_labels):
    # (speed is measured in benchmarks/, not asserted here)
    _, _, sentences, labels = openi_labels
    families = {lab.rule.split(":")[0] for lab in labels}
    assert families == {"positive", "uncertain", "chronic", "device", "postsurgical",
                        "normal_phrase", "negated_only", "no_finding"}
    for lab in labels:
        abnormal_rule = lab.rule.split(":")[0] in (
            "positive", "uncertain", "chronic", "device", "postsurgical")
        assert (lab.label == "abnormal") == abnormal_rule


# ------------------------------------------------------------------ the phases, one at a time
# RuleLabeler.sentence_state gives the labelling state of one sentence; each phase reads what the
# earlier ones left on it, so a test runs the phases up to the one it checks (or sets the inputs).


def upto(lab, sentence: str, phase: str):
    st = lab.sentence_state(sentence)
    for name in ("scan_triggers", "split_clauses", "pair_anchors", "collect_mentions",
                 "assign_statuses", "attach_modifiers"):
        getattr(st, name)()
        if name == phase:
            return st
    raise AssertionError(phase)


def test_phase_list_marker_and_matches(lab):
    st = lab.sentence_state("1. No pneumothorax, effusion, or consolidation.")
    assert st.first == 2  # "1" "." skipped
    assert [v for _, _, v in st.found["F"]] == ["pneumothorax", "pleural effusion", "consolidation"]
    assert all(s >= st.first for group in st.found.values() for s, _, _ in group)


def test_phase_triggers_masked_by_pseudo_and_uncertain_first(lab):
    st = upto(lab, "No change in the small left effusion.", "scan_triggers")
    assert st.trig["pseudo"] == [(0, 2)] and st.trig["preneg"] == [(0, 1)]
    assert st.preneg == []  # "no" sits inside the pseudo-trigger "no change"
    st = upto(lab, "Cannot exclude pneumonia.", "scan_triggers")
    assert st.unc1 == [(0, 3)] and st.preneg == []  # "not" sits inside "cannot exclude"


def test_phase_clauses_and_scope_breaks(lab):
    st = upto(lab, "No effusion but mild cardiomegaly, stable granuloma.", "split_clauses")
    words = st.words
    assert st.clause[words.index("effusion")] != st.clause[words.index("cardiomegaly")]  # "but"
    assert st.clause[words.index("cardiomegaly")] == st.clause[words.index("granuloma")]
    assert st.breaks == {words.index(",")}  # "," before a new assertion ("stable")
    assert st.clause[st.n] == st.clause[st.n - 1] + 1  # the final "." closes its clause


def test_phase_anchor_predicate_pairs(lab):
    st = upto(lab, "The heart is not enlarged.", "pair_anchors")
    assert st.findings == [(1, 5, "cardiomegaly")]  # "heart" … "enlarged"
    assert st.inner[(1, 5, "cardiomegaly")] == (2, 4)  # only "is not" can hold modifiers
    st = upto(lab, "Lungs are clear.", "pair_anchors")
    assert st.findings == [] and st.normal_hits == [(0, "lungs_clear")]


def test_phase_mentions_fold_adjectival_forms(lab):
    st = upto(lab, "Emphysematous disease.", "collect_mentions")
    assert [(m.s, m.e, m.name) for m in st.ms] == [(0, 2, "emphysema")]
    assert st.in_mention == [0, 0, -1]


def test_phase_statuses(lab):
    st = upto(lab, "No effusion but mild cardiomegaly, stable granuloma.", "assign_statuses")
    assert st.statuses == ["negated", "positive", "positive"]
    st = upto(lab, "Atelectasis or scarring.", "assign_statuses")
    assert st.statuses == ["uncertain", "uncertain"]  # a disjunction of positives


def test_phase_modifiers(lab):
    st = upto(lab, "No change in the small left effusion.", "attach_modifiers")
    (m,) = st.mentions
    assert (m.finding, m.status, m.modifiers) == ("pleural effusion", "positive", ("small", "left"))
    assert st.text[m.start:m.end] == "effusion"


def test_phase_decision_policy_order(lab):
    st = upto(lab, "Lungs are clear.", "attach_modifiers")
    assert st.decide() == RuleLabel("normal", "normal_phrase:lungs_clear", ())
    # the decision reads only the mentions (and normal phrases): set them by hand
    negated = Mention("pneumothorax", "Pneumothorax", "negated", (), 0, 1)
    uncertain = Mention("pneumonia", "Pneumonia", "uncertain", (), 2, 3)
    positive = Mention("pleural effusion", "Pleural Effusion", "positive", ("old",), 4, 5)
    st.mentions = [negated, uncertain, positive]
    assert st.decide().rule == "chronic:pleural_effusion"  # positive before uncertain; "old" → chronic
    st.mentions = [negated, uncertain]
    assert st.decide().rule == "uncertain:pneumonia"
    st.mentions, st.normal_hits = [negated], []
    st.preds = []
    assert st.decide() == RuleLabel("normal", "negated_only", (negated,))
    assert st.decide() == st.decide()  # deciding twice changes nothing


def test_read_gives_the_label_and_every_anchor_normal_phrase_in_order(lab):
    reading = lab.read("Heart size and mediastinal contours are normal.")
    assert reading.label == lab.label("Heart size and mediastinal contours are normal.")
    assert reading.normal_phrases == ("heart_size_normal", "cardiomediastinal_normal")
    assert reading.label.rule == "normal_phrase:heart_size_normal"  # the rule names the first only
    mixed = lab.read("The lungs are clear. Mild cardiomegaly.")
    assert mixed.label.label == "abnormal" and mixed.normal_phrases == ("lungs_clear",)
    assert lab.read("").normal_phrases == () and lab.read("No pneumothorax.").normal_phrases == ()
    for sentence in ("Stable cardiomegaly.", "No acute disease.", "Trachea is midline.",
                     "The osseous structures are intact and the pleura is clear."):
        assert lab.read(sentence).label == lab.label(sentence), sentence

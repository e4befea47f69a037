"""Rule labeler for radiology sentences: normal vs abnormal, the deciding rule, finding mentions.

Weak supervision for OFF-CLIP's sentence anomaly classifier, and the structure behind its
templated text prompts ("There is mild cardiomegaly.", "There is no pleural effusion."). One
already-split sentence in, a :class:`RuleLabel` out::

    >>> lab = RuleLabeler()
    >>> r = lab.label("Small left pleural effusion, no pneumothorax.")
    >>> r.label, r.rule
    ('abnormal', 'positive:pleural_effusion')
    >>> [(m.finding, m.status, m.modifiers) for m in r.mentions]
    [('pleural effusion', 'positive', ('small', 'left')), ('pneumothorax', 'negated', ())]

Pipeline (built once in :class:`RuleLabeler`): a blank spaCy English tokenizer (``___`` kept
whole) and one ``PhraseMatcher`` on ``LOWER`` that tags, in a single pass, the vocabulary --
data, not code: ``pipeline/vocabulary/`` holds it as reviewable phrase files, read once at import --
the finding lexicon (:data:`LEXICON`, ``vocabulary/findings/<observation>.txt``: the 13 CheXpert
finding observations, support devices, post-surgical change and the chronic / incidental findings
radiologists report), anatomy *anchors* and their *predicates*
("heart" … "enlarged", "lungs" … "clear"), and the NegEx-style triggers. Plain Python then joins
anchors with predicates, resolves overlaps (longest span wins), folds adjectival forms into the
finding they modify ("atherosclerotic vascular calcification"), scopes the triggers, collects
modifiers and decides.

Policy (the first matching row decides):

=====  ================================================  ==========  ===============================
step   condition                                         label       ``rule``
=====  ================================================  ==========  ===============================
1      a **positive** mention (first one in the          abnormal    ``<prefix>:<finding>``, prefix =
       sentence decides)                                             kind of the finding:
                                                                     ``positive`` (acute / CheXpert
                                                                     findings), ``chronic``
                                                                     (granuloma, scoliosis,
                                                                     degenerative change,
                                                                     emphysema, tortuous aorta …,
                                                                     and any finding with an
                                                                     old/healed/remote/chronic/
                                                                     calcified modifier),
                                                                     ``device`` (lines, tubes,
                                                                     pacemaker, ports …),
                                                                     ``postsurgical`` (sternotomy,
                                                                     CABG, surgical clips,
                                                                     lobectomy …)
2      an **uncertain** mention (first one decides)      abnormal    ``uncertain:<finding>``
3      a normal phrase (first one in the sentence)       normal      ``normal_phrase:<id>`` (ids:
                                                                     lungs_clear, lungs_expanded,
                                                                     heart_size_normal,
                                                                     cardiomediastinal_normal,
                                                                     vasculature_normal,
                                                                     osseous_intact, pleura_clear,
                                                                     trachea_midline, normal_chest,
                                                                     no_acute_process,
                                                                     no_focal_consolidation,
                                                                     no_change, unremarkable,
                                                                     other_normal …)
4      only negated mentions                             normal      ``negated_only``
5      no mention at all ("Comparison is made to         normal      ``no_finding``
       prior.", "PA and lateral views of the chest.")
=====  ================================================  ==========  ===============================

So a mixed sentence ("Normal heart size with mild tortuosity of the aorta") is abnormal; "stable",
"unchanged", "again seen" do not remove a finding ("Stable cardiomegaly" is abnormal); "No
significant change" has no mention and is normal. ``<finding>`` in a rule id is the canonical
finding name with spaces as underscores (``positive:pleural_effusion``).

Mention status (CheXpert order, first hit wins):

=====  =====================================================================  ==============
step   cue                                                                    status
=====  =====================================================================  ==============
1      "cannot exclude / cannot be excluded / not ruled out / difficult to    uncertain
       exclude …" scoping the mention
2      pre-negation ("no", "not", "without", "negative for", "free of",      negated
       "clear of", "no evidence of", "absence of", "resolution of",
       "resolved", "removal of", "ruled out", "nor", "neither" …) before it
       in scope; post-negation ("… is not seen", "… has resolved", "… are
       absent", "… removed", "… is normal / within normal limits / is
       unremarkable" with a verb) after it; "normal"/"unremarkable" at most
       two words before it ("normal interstitial markings")
3      pre-uncertainty ("may", "might", "could", "possible", "possibly",      uncertain
       "probable", "probably", "likely", "questionable", "suspicious for",
       "suspected", "concerning for", "worrisome for", "versus", "vs.",
       "differential includes", "suggest…", "borderline",
       "rule out", "?" …); post-uncertainty ("… is suspected", "… is
       possible", "… versus", "… ?", "… is not well seen"); borderline
       predicates ("heart size is upper limits of normal", "top normal",
       "borderline heart size"); a disjunction of findings ("atelectasis or
       scarring", "atelectasis/pneumonia")
4      otherwise                                                              positive
=====  =====================================================================  ==============

*Likely* is an uncertainty cue (a hedge: "likely atelectasis" is uncertain; it is abnormal either
way); "consistent with" / "compatible with" are affirmative. Borderline heart size ("upper limits
of normal", "top normal") is an uncertain cardiomegaly, so abnormal: Open-I's MeSH indexers call
about 3 in 4 reports that say "upper limits of normal" abnormal. Pseudo-negations mask the cues
they contain and negate nothing: "no change in", "no significant/interval change", "not
significantly changed", "no increase in", "without change", "not only", "no worsening". Scope: a
pre-cue reaches every mention after it in its clause, so "no effusion, pneumothorax, or
consolidation" negates all three. Clauses end at ``.`` ``;`` ``!``
``?`` and at "but", "however", "although", "though", "whereas", "except", "which", "while",
"aside from", "apart from", "other than". Inside a clause a pre-cue's scope also stops at "with",
"there", and at "," / "and" followed by a new assertion ("there", "the", "stable", "mild",
"possible", "chronic", "left", "right" … : "no acute disease, stable cardiomegaly"; but "no
consolidation, large effusion, or pneumothorax" stays one list). A post-cue reaches back over a
chain of mentions, list words, copulas, modals, determiners and modifiers ("pleural effusion or
pneumothorax is not seen"); "is normal"-type post-cues need a verb in that chain ("heart size and
vascular engorgement appear within normal limits", but not "cardiomegaly and normal
vascularity").

Other decisions: ``___`` and ``XXXX`` (de-identification) are ordinary words; a leading list
marker ("1.", "2)", "(3)", "-", "*") is skipped; modifiers are single words from a fixed lexicon
(severity, extent, side, location, chronicity, character) found inside the finding's span or
next to it (four words before, six after, stopping at punctuation, conjunctions and other
findings); adverbs are normalised (``mildly`` → ``mild``). Granulomas are "Other Finding"
(CheXpert's own mention list has no granuloma); nipple shadows are no finding; removed devices
("interval removal of the chest tube") are negated. :meth:`RuleLabeler.label_many` labels each
distinct sentence once. Bump :data:`RULES_VERSION` whenever a rule or a vocabulary file changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..data_contracts.enums import CHEXPERT_OBSERVATIONS

__all__ = [
    "RULES_VERSION",
    "Mention",
    "RuleLabel",
    "RuleLabeler",
    "SentenceReading",
    "LEXICON",
    "CATEGORIES",
    "KINDS",
]

RULES_VERSION = "rules-2"

#: the labeler's categories: CheXpert's observations but No Finding (a report with no mention is
#: the normal one), in CheXpert's order, and "Other Finding" for an abnormality CheXpert has no
#: column for
CATEGORIES = CHEXPERT_OBSERVATIONS[1:] + ("Other Finding",)
KINDS = ("positive", "chronic", "device", "postsurgical")


@dataclass(frozen=True)
class Mention:
    finding: str  #: canonical finding name, lower case ("pleural effusion")
    category: str  #: a CheXpert observation name or "Other Finding"
    status: str  #: "positive" | "negated" | "uncertain"
    modifiers: tuple[str, ...]  #: severity / extent / side / location / chronicity words
    start: int  #: char span of the finding phrase in the sentence
    end: int


@dataclass(frozen=True)
class RuleLabel:
    label: str  #: "normal" | "abnormal"
    rule: str  #: id of the deciding rule (see the module docstring)
    mentions: tuple[Mention, ...]


@dataclass(frozen=True)
class SentenceReading:
    """Everything the labeler found in one sentence (:meth:`RuleLabeler.read`): its label, and
    every normal phrase an anatomy anchor formed with its predicate, in sentence order ("Heart size
    and mediastinal contours are normal" -> ``("heart_size_normal", "cardiomediastinal_normal")``;
    the label's ``rule`` names only the first). Per-observation labels (the demo world's CheXpert
    columns) read the mentions' statuses and these phrases as explicit negatives."""

    label: RuleLabel
    normal_phrases: tuple[str, ...]


# ------------------------------------------------------------------------------- vocabulary
# The vocabulary is data: pipeline/vocabulary/ (findings/<CheXpert observation>.txt, anatomy.txt,
# predicates.txt, combinations.txt, cues/<cue kind>.txt, modifiers.txt, scope_words.txt), read
# once at import. Each file: "[section]" headers, one phrase (or a run of words) per line, "#"
# comment lines. Phrases: bash-like "{a,b,}" brace alternatives, every "-" also matches as a space
# and as nothing ("air-space" → "air space", "airspace"); a leading "^" marks an adjectival form
# that folds into a finding right after it. In the tables below a phrase list is ";"-joined.

VOCABULARY_DIR = Path(__file__).resolve().parent / "vocabulary"
_CUE_FILES = (
    "negation_pre",
    "negation_post",
    "pseudo_negation",
    "uncertainty_over_negation",
    "uncertainty_pre",
    "uncertainty_post",
    "clause_breaks",
)


def _sections(path: Path) -> dict[str, list[str]]:
    """``[section]`` → its non-comment lines, in file order."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = out.setdefault(line[1:-1].strip(), [])
            continue
        if current is None:
            raise ValueError(f"{path}:{n}: a line before any [section]")
        current.append(line)
    return out


def _words(lines: list[str]) -> list[str]:
    return [w for line in lines for w in line.split()]


def _load_vocabulary():
    v = VOCABULARY_DIR
    lexicon: list[tuple[str, str, str, str]] = []
    for category in CATEGORIES:
        path = v / "findings" / f"{re.sub(r'[^a-z0-9]+', '_', category.lower())}.txt"
        for header, lines in _sections(path).items():
            name, _, kind = (x.strip() for x in header.partition("|"))
            if kind not in KINDS:
                raise ValueError(f"{path}: [{header}]: kind must be one of {KINDS}")
            lexicon.append((name, category, kind, "; ".join(lines)))
    anchors = {k: "; ".join(ls) for k, ls in _sections(v / "anatomy.txt").items()}
    predicates = {k: "; ".join(ls) for k, ls in _sections(v / "predicates.txt").items()}
    combos = _sections(v / "combinations.txt")
    finding_combos: dict[tuple[str, str], str] = {}
    normal_combos: dict[tuple[str, str], str] = {}
    for table, lines in ((finding_combos, combos["findings"]), (normal_combos, combos["normal"])):
        for line in lines:
            pair, _, result = line.partition("=")
            anchor, _, predicate = (x.strip() for x in pair.partition("+"))
            result = result.strip()
            if result.endswith("?"):
                result = "!" + result[:-1].strip()
            table[(anchor, predicate)] = result
    triggers: dict[str, str] = {}
    for name in _CUE_FILES:
        for kind, lines in _sections(v / "cues" / f"{name}.txt").items():
            triggers[kind] = "; ".join(lines)
    mods = _sections(v / "modifiers.txt")
    modifier_words: dict[str, str] = {}
    for line in mods["modifiers"]:
        if "=" in line:
            word, _, norm = (x.strip() for x in line.partition("="))
            modifier_words[word] = norm
        else:
            modifier_words.update((w, w) for w in line.split())
    scope = {k: frozenset(_words(ls)) for k, ls in _sections(v / "scope_words.txt").items()}
    return (
        tuple(lexicon),
        anchors,
        predicates,
        finding_combos,
        normal_combos,
        triggers,
        modifier_words,
        frozenset(_words(mods["chronic"])),
        scope,
    )


(LEXICON, ANCHORS, PREDICATES, _FINDING_COMBOS, _NORMAL_COMBOS, TRIGGERS, _MODIFIER_WORDS, _CHRONIC_MODS, _SCOPE) = (
    _load_vocabulary()
)
#: LEXICON: (canonical name, category, kind, ";"-joined phrases); ANCHORS / PREDICATES / TRIGGERS:
#: name → ";"-joined phrases; _FINDING_COMBOS / _NORMAL_COMBOS: (anchor, predicate) → finding
#: ("!" marks uncertain by itself) / normal-phrase id.
_NORMAL_PREDS = frozenset({"normal", "clear", "intact", "midline", "expanded"})
#: After "," or "and", a word that opens a new assertion and ends a pre-cue's scope.
_BREAK_AFTER = _SCOPE["break_after"]
_COPULAS = _SCOPE["copulas"]
#: Words a post-cue may reach back over (besides mentions and modifier words).
_CHAIN_OK = _SCOPE["chain"]
#: Words between an anchor and a following predicate ("heart is not significantly enlarged").
_GAP_FWD = _SCOPE["gap_forward"]
#: Words between a predicate and a following anchor ("enlargement of the cardiac silhouette").
_GAP_BACK = _SCOPE["gap_back"]
#: Words a modifier may sit behind, before the finding ("old right rib fractures").
_BEFORE_OK = _SCOPE["before_modifier"]
#: Words between an adjectival form and the finding it modifies.
_ADJ_GAP = frozenset(_MODIFIER_WORDS) | _SCOPE["adjective_gap"]
_DISJUNCTIONS = _SCOPE["disjunctions"]
_LIST_MARKER_RE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022])\s+")
_NORMAL_REGEXES: tuple[tuple[str, re.Pattern], ...] = (
    ("no_acute_process", re.compile(r"\b(?:no|negative for|without|free of)\b(?:\W+\w+){0,4}?\W+(?:acute|active)\b")),
    ("no_focal_consolidation", re.compile(r"\b(?:no|negative for|without|free of)\b(?:\W+\w+){0,3}?\W+focal\b")),
    ("unremarkable", re.compile(r"\bunremarkable\b")),
    (
        "normal_chest",
        re.compile(
            r"^\W*(?:negative|normal)\W*$"
            r"|\b(?:normal|negative|unremarkable)\s+(?:\w+\s+)?(?:chest|study|exam|examination|radiograph)"
        ),
    ),
)


def _expand(phrase: str) -> list[str]:
    """Bash-like brace expansion ("{a,b,}x" → ["ax", "bx", "x"]), then hyphen variants."""
    m = re.search(r"\{([^{}]*)\}", phrase)
    if m:
        out: list[str] = []
        for alt in m.group(1).split(","):
            out.extend(_expand(phrase[: m.start()] + alt + phrase[m.end() :]))
        return out
    phrase = " ".join(phrase.split())
    if not phrase:
        return []
    variants = {phrase}
    if "-" in phrase and phrase not in ("-",):
        variants.add(phrase.replace("-", " "))
        variants.add(phrase.replace("-", ""))
    return sorted(v for v in variants if v.strip())


def _phrases(spec: str) -> list[tuple[str, bool]]:
    """(phrase, adjectival?) pairs of a ";"-separated spec."""
    out = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        adj = part.startswith("^")
        for p in _expand(part.lstrip("^")):
            out.append((p, adj))
    return out


_ENTRIES: dict[str, tuple[str, str]] = {name: (cat, kind) for name, cat, kind, _ in LEXICON}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


class _M:
    """A mention under construction (token span)."""

    __slots__ = ("s", "e", "name", "adj", "unc", "mods", "inner")

    def __init__(self, s: int, e: int, name: str, adj: bool = False, unc: bool = False):
        self.s, self.e, self.name, self.adj, self.unc = s, e, name, adj, unc
        self.mods: list[tuple[int, str]] = []
        self.inner = (s, e)  # token range whose modifier words belong to the mention


def _longest(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping spans, longest first (then earliest), returned in text order."""
    taken: list[tuple[int, int, str]] = []
    used: set[int] = set()
    for s, e, key in sorted(spans, key=lambda x: (x[0] - x[1], x[0], x[2])):
        if any(i in used for i in range(s, e)):
            continue
        taken.append((s, e, key))
        used.update(range(s, e))
    taken.sort()
    return taken


class RuleLabeler:
    """Rule labeler (see the module docstring). Build once; :meth:`label_many` for corpora."""

    version = RULES_VERSION

    def __init__(self):
        import spacy
        from spacy.matcher import PhraseMatcher
        from spacy.util import compile_prefix_regex, compile_suffix_regex

        nlp = spacy.blank("en")
        # "___" (de-identification) stays one token.
        nlp.tokenizer.prefix_search = compile_prefix_regex([r"_{2,}", *nlp.Defaults.prefixes]).search
        nlp.tokenizer.suffix_search = compile_suffix_regex([r"_{2,}", *nlp.Defaults.suffixes]).search
        self.nlp = nlp
        self.version = RULES_VERSION
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        self._keys: dict[int, tuple[str, str, bool]] = {}  # match id → (group, value, adjectival)

        def add(group: str, value: str, spec: str) -> None:
            by_adj: dict[bool, list[str]] = {False: [], True: []}
            for p, adj in _phrases(spec):
                by_adj[adj].append(p)
            for adj, phrases in by_adj.items():
                if not phrases:
                    continue
                key = f"{group}|{value}|{int(adj)}"
                matcher.add(key, [nlp.make_doc(p) for p in sorted(set(phrases))])
                self._keys[nlp.vocab.strings[key]] = (group, value, adj)

        for name, _cat, _kind, spec in LEXICON:
            add("F", name, spec)
        for name, spec in ANCHORS.items():
            add("A", name, spec)
        for name, spec in PREDICATES.items():
            add("P", name, spec)
        for name, spec in TRIGGERS.items():
            add("T", name, spec)
        self._matcher = matcher

    # ------------------------------------------------------------------------------ public
    def label(self, sentence: str) -> RuleLabel:
        return self._label_doc(self.nlp.make_doc(sentence or ""))

    def label_many(self, sentences: Iterable[str], batch_size: int = 512) -> list[RuleLabel]:
        """:meth:`label` for many sentences (``nlp.pipe`` batches; identical sentences are
        labelled once)."""
        texts = [s or "" for s in sentences]
        unique = list(dict.fromkeys(texts))
        done: dict[str, RuleLabel] = {}
        it = iter(unique)
        while True:
            chunk = list(islice(it, batch_size))
            if not chunk:
                break
            for text, doc in zip(chunk, self.nlp.tokenizer.pipe(chunk, batch_size=batch_size)):
                done[text] = self._label_doc(doc)
        return [done[t] for t in texts]

    def read(self, sentence: str) -> SentenceReading:
        """:meth:`label` and the sentence's anchor normal phrases (:class:`SentenceReading`)."""
        return self._read_doc(self.nlp.make_doc(sentence or ""))

    # --------------------------------------------------------------------------- internals
    def sentence_state(self, sentence: str) -> _Sentence:
        """The labelling state of one sentence, matched and ready for its phases (for tests and
        debugging; :meth:`label` runs them all)."""
        doc = self.nlp.make_doc(sentence or "")
        return _Sentence(doc, self._matcher(doc), self._keys)

    def _label_doc(self, doc) -> RuleLabel:
        return self._read_doc(doc).label

    def _read_doc(self, doc) -> SentenceReading:
        if len(doc) == 0:
            return SentenceReading(RuleLabel("normal", "no_finding", ()), ())
        state = _Sentence(doc, self._matcher(doc), self._keys)
        label = state.label()
        return SentenceReading(label, tuple(nid for _, nid in sorted(state.normal_hits)))


class _Sentence:
    """One tokenized sentence (a spaCy ``Doc``) and what each labelling phase finds in it.

    The phases, in :meth:`label`'s order, each reading what the earlier ones left here (a test can
    run them up to the one it looks at, :meth:`RuleLabeler.sentence_state`, or set those attributes
    by hand):

    1. :meth:`scan_triggers`: negation / uncertainty cue spans, those inside pseudo-triggers dropped;
    2. :meth:`split_clauses`: a clause number per token, and the tokens that break a cue's scope;
    3. :meth:`pair_anchors`: anchor + predicate pairs ("heart … enlarged") become findings or
       normal phrases;
    4. :meth:`collect_mentions`: finding spans, longest wins, adjectival forms folded in;
    5. :meth:`assign_statuses`: positive / negated / uncertain per mention;
    6. :meth:`attach_modifiers`: the :class:`Mention` objects, with their modifier words;
    7. :meth:`decide`: the :class:`RuleLabel` (the policy table in the module docstring).
    """

    def __init__(self, doc, matches, keys: dict[int, tuple[str, str, bool]]):
        self.doc = doc
        self.n = n = len(doc)
        self.words = [t.lower_ for t in doc]
        self.text = doc.text
        # Leading list marker ("1.", "2)", "-") is skipped.
        first = 0
        mk = _LIST_MARKER_RE.match(self.text)
        if mk:
            while first < n and doc[first].idx < mk.end():
                first += 1
        self.first = first
        #: lexicon matches by group (F findings, A anchors, P predicates, T triggers): (start, end, value)
        self.found: dict[str, list[tuple[int, int, str]]] = {"F": [], "A": [], "P": [], "T": []}
        self.adjectival: set[tuple[int, int, str]] = set()
        for mid, s, e in matches:
            if s < first:
                continue
            group, value, adj = keys[mid]
            self.found[group].append((s, e, value))
            if adj:
                self.adjectival.add((s, e, value))

    def label(self) -> RuleLabel:
        self.scan_triggers()
        self.split_clauses()
        self.pair_anchors()
        self.collect_mentions()
        self.assign_statuses()
        self.attach_modifiers()
        return self.decide()

    # --- 1. triggers
    def scan_triggers(self) -> None:
        trig: dict[str, list[tuple[int, int]]] = {}
        for s, e, v in self.found["T"]:
            trig.setdefault(v, []).append((s, e))
        masks: set[int] = set()
        for s, e in trig.get("pseudo", []) + trig.get("unc_first", []):
            masks.update(range(s, e))

        def unmasked(kind: str) -> list[tuple[int, int]]:
            return [(s, e) for s, e in trig.get(kind, []) if not any(i in masks for i in range(s, e))]

        self.trig = trig
        self.preneg, self.postneg = unmasked("preneg"), unmasked("postneg")
        self.preunc, self.postunc = unmasked("preunc"), unmasked("postunc")
        self.unc1 = trig.get("unc_first", [])

    # --- 2. clauses and scope breaks
    def split_clauses(self) -> None:
        n, words, first = self.n, self.words, self.first
        term_at = {s for s, e in self.trig.get("term", [])}
        term_at.update(i for i, w in enumerate(words) if w in (".", ";", "!", "?"))
        clause = [0] * (n + 1)
        c = 0
        for i in range(n):
            if i in term_at and i >= first:
                w = words[i]
                if w in (".", ";", "!", "?"):
                    clause[i] = c
                    c += 1
                    continue
                c += 1
            clause[i] = c
        clause[n] = c
        breaks = set()
        for i in range(first, n):
            w = words[i]
            if w in ("with", "there"):
                breaks.add(i)
            elif w in (",", "and") and i + 1 < n and words[i + 1] in _BREAK_AFTER:
                breaks.add(i)
        self.term_at, self.clause, self.breaks = term_at, clause, breaks

    # --- 3. predicates and anchors (longest wins within each group)
    def pair_anchors(self) -> None:
        self.preds = _longest(self.found["P"])
        self.anchors = _longest(self.found["A"])
        self.findings: list[tuple[int, int, str]] = list(self.found["F"])
        self.uncertain_spans: set[tuple[int, int, str]] = set()
        self.inner: dict[tuple[int, int, str], tuple[int, int]] = {}
        self.normal_hits: list[tuple[int, str]] = []
        pred_at = {s: (s, e, v) for s, e, v in self.preds}
        anchor_tokens = {i for s, e, _ in self.anchors for i in range(s, e)}
        for a_s, a_e, a in self.anchors:
            pair = self._anchor_pair(a_s, a_e, pred_at, anchor_tokens)
            if pair is None:
                continue
            (s, e, p), gap_span = pair
            combo = _FINDING_COMBOS.get((a, p))
            if combo is not None:
                name = combo.lstrip("!")
                self.findings.append((s, e, name))
                # only the words between anchor and predicate can be modifiers
                self.inner[(s, e, name)] = gap_span
                if combo.startswith("!"):
                    self.uncertain_spans.add((s, e, name))
            else:
                nid = _NORMAL_COMBOS.get((a, p))
                if nid is not None:
                    self.normal_hits.append((s, nid))

    def _anchor_pair(self, a_s: int, a_e: int, pred_at, anchor_tokens):
        """The predicate an anchor pairs with, after it ("heart is not enlarged") or else before
        it ("enlarged heart"): ((start, end, predicate), the words between them), or None."""
        words, n = self.words, self.n
        j, gap = a_e, 0
        while j < n and gap <= 6:
            if j in pred_at:
                hit = pred_at[j]
                return (a_s, hit[1], hit[2]), (a_e, hit[0])
            if words[j] in _GAP_FWD or j in anchor_tokens:
                j += 1
                gap += 1
                continue
            break
        j, gap = a_s - 1, 0
        while j >= self.first and gap <= 3:
            p = next((x for x in self.preds if x[1] == j + 1), None)
            if p is not None:
                return (p[0], a_e, p[2]), (p[1], a_s)
            if words[j] in _GAP_BACK:
                j -= 1
                gap += 1
                continue
            break
        return None

    # --- 4. mentions: longest span wins, adjectival forms fold into the next finding
    def collect_mentions(self) -> None:
        words = self.words
        ms = []
        for s, e, v in _longest(self.findings):
            m = _M(s, e, v, adj=(s, e, v) in self.adjectival, unc=(s, e, v) in self.uncertain_spans)
            m.inner = self.inner.get((s, e, v), (s, e))
            if m.unc:
                m.mods.append((s, "borderline"))
            ms.append(m)
        kept: list[_M] = []
        for k, m in enumerate(ms):
            if m.adj and k + 1 < len(ms):
                nxt = ms[k + 1]
                between = words[m.e : nxt.s]
                if len(between) <= 3 and all(w in _ADJ_GAP for w in between):
                    if nxt.name == "abnormality" and m.name != "abnormality":
                        # "emphysematous disease": the adjective names the finding
                        ms[k + 1] = _M(m.s, nxt.e, m.name)
                        ms[k + 1].inner = (m.e, nxt.s)
                        continue
                    word = " ".join(words[m.s : m.e])
                    if word in _MODIFIER_WORDS:
                        nxt.mods.append((m.s, _MODIFIER_WORDS[word]))
                    continue
            kept.append(m)
        self.ms = kept
        self.in_mention = [-1] * self.n
        for k, m in enumerate(kept):
            for i in range(m.s, m.e):
                self.in_mention[i] = k

    # --- 5. status
    def _pre_scope(self, t_s: int, t_e: int, m: _M) -> bool:
        """Does a pre-cue at [t_s, t_e) reach mention ``m``?"""
        if t_s >= m.s:  # inside the mention's span ("heart is not enlarged")
            return t_e <= m.e
        if t_e > m.s:
            return False
        if self.clause[t_s] != self.clause[m.s]:
            return False
        return not any(i in self.breaks for i in range(t_e, m.s))

    def _chain_to(self, m: _M, t_s: int, need_verb: bool) -> bool:
        """Does a post-cue at ``t_s`` reach back to mention ``m`` (over list words, copulas …)?"""
        if t_s < m.e or self.clause[m.e - 1] != self.clause[t_s]:
            return False
        plain = 0
        verb = False
        for i in range(m.e, t_s):
            if i in self.breaks:
                return False
            if self.in_mention[i] >= 0:
                continue
            w = self.words[i]
            if w in _COPULAS:
                verb = True
            if w in _CHAIN_OK or w in _MODIFIER_WORDS:
                plain += 1
                if plain > 8:
                    return False
                continue
            return False
        return verb or not need_verb

    def _normal_just_before(self, s: int, e: int, m: _M) -> bool:
        """ "normal"/"unremarkable" at [s, e) at most two plain words before ``m``."""
        return (
            e <= m.s
            and m.s - e <= 2
            and self.clause[s] == self.clause[m.s]
            and not any(i in self.breaks for i in range(e, m.s))
            and all(self.in_mention[i] < 0 and not self.doc[i].is_punct for i in range(e, m.s))
        )

    def _status(self, m: _M, normal_preds: list[tuple[int, int]]) -> str:
        pre, chain = self._pre_scope, self._chain_to
        if any(pre(s, e, m) for s, e in self.unc1) or any(chain(m, s, False) for s, e in self.unc1):
            return "uncertain"
        if (
            any(pre(s, e, m) for s, e in self.preneg)
            or any(chain(m, s, False) for s, e in self.postneg)
            or any(chain(m, s, True) for s, e in normal_preds)
            or any(self._normal_just_before(s, e, m) for s, e in normal_preds)
        ):
            return "negated"
        if m.unc or any(pre(s, e, m) for s, e in self.preunc) or any(chain(m, s, False) for s, e in self.postunc):
            return "uncertain"
        return "positive"

    def assign_statuses(self) -> None:
        normal_preds = [(s, e) for s, e, v in self.preds if v == "normal"]
        ms, words = self.ms, self.words
        statuses = [self._status(m, normal_preds) for m in ms]
        # disjunctions of positive findings: "atelectasis or scarring", "atelectasis/pneumonia"
        for k in range(len(ms) - 1):
            a, b = ms[k], ms[k + 1]
            between = words[a.e : b.s]
            if (
                statuses[k] == "positive"
                and statuses[k + 1] in ("positive", "uncertain")
                and len(between) <= 4
                and any(w in _DISJUNCTIONS for w in between)
                and all(w in _DISJUNCTIONS or w in _ADJ_GAP or w == "," for w in between)
            ):
                statuses[k] = "uncertain"
                if statuses[k + 1] == "positive":
                    statuses[k + 1] = "uncertain"
        self.statuses = statuses

    # --- 6. modifiers
    def _modifiers(self, m: _M) -> tuple[str, ...]:
        """Modifier words inside the mention's span, up to four words before it and six after."""
        words, in_mention, breaks = self.words, self.in_mention, self.breaks
        mods = list(m.mods)
        for i in range(*m.inner):
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
        i, steps = m.s - 1, 0
        while i >= self.first and steps < 4 and in_mention[i] < 0 and i not in breaks:
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
            elif w not in _BEFORE_OK:
                break
            i -= 1
            steps += 1
        i, steps = m.e, 0
        while i < self.n and steps < 6 and in_mention[i] < 0 and i not in breaks and i not in self.term_at:
            w = words[i]
            if w in _MODIFIER_WORDS:
                mods.append((i, _MODIFIER_WORDS[w]))
            elif w not in _CHAIN_OK or w in (",", "and", "or", "nor"):
                break
            i += 1
            steps += 1
        seen: set[str] = set()
        out: list[str] = []
        for _, w in sorted(mods):
            if w not in seen and w not in m.name.split():
                seen.add(w)
                out.append(w)
        return tuple(out)

    def attach_modifiers(self) -> None:
        doc = self.doc
        self.mentions: list[Mention] = []
        for m, status in zip(self.ms, self.statuses):
            cat, _kind = _ENTRIES[m.name]
            a, b = doc[m.s].idx, doc[m.e - 1].idx + len(doc[m.e - 1].text)
            self.mentions.append(Mention(m.name, cat, status, self._modifiers(m), a, b))

    # --- 7. decision
    def decide(self) -> RuleLabel:
        mentions = tuple(self.mentions)
        for wanted in ("positive", "uncertain"):
            for mt in mentions:
                if mt.status != wanted:
                    continue
                if wanted == "uncertain":
                    return RuleLabel("abnormal", f"uncertain:{_slug(mt.finding)}", mentions)
                kind = _ENTRIES[mt.finding][1]
                if kind == "positive" and any(x in _CHRONIC_MODS for x in mt.modifiers):
                    kind = "chronic"
                return RuleLabel("abnormal", f"{kind}:{_slug(mt.finding)}", mentions)
        normal_hits = list(self.normal_hits)
        low = self.text.lower()
        for nid, rx in _NORMAL_REGEXES:
            hit = rx.search(low)
            if hit:
                normal_hits.append((_tok_at(self.doc, hit.start()), nid))
        if self.trig.get("pseudo") and not mentions:
            normal_hits.append((self.trig["pseudo"][0][0], "no_change"))
        if not normal_hits:
            for s, _e, v in self.preds:
                if v in _NORMAL_PREDS:
                    nid = "unremarkable" if self.words[s] == "unremarkable" else "other_normal"
                    normal_hits.append((s, nid))
        if normal_hits:
            normal_hits.sort()
            return RuleLabel("normal", f"normal_phrase:{normal_hits[0][1]}", mentions)
        if mentions:
            return RuleLabel("normal", "negated_only", mentions)
        return RuleLabel("normal", "no_finding", ())


def _tok_at(doc, char: int) -> int:
    """Index of the token containing (or first after) a char offset."""
    for t in doc:
        if t.idx + len(t.text) > char:
            return t.i
    return len(doc)

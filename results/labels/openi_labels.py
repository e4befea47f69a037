"""Every Open-I text the rule labeler reads, its full reading, and the demo world's CheXpert columns.

Texts: the distinct sentences of each report's findings, of its impression, and of findings +
impression as the demo world reads them (``demo.reports.clean_text``, ``SentenceSplitter``), and
the whole findings and impression fields (12,6xx distinct texts). For each text: label, rule,
mentions (finding, category, status, modifiers) and the anchor normal phrases
(``RuleLabeler.read``). For each report: the 14 CheXpert columns (``demo.reports.chexpert_labels``).

    python results/labels/openi_labels.py dump OUT.json      # prints the sha256 of the readings
    python results/labels/openi_labels.py diff BEFORE.json AFTER.json [TOP]
"""
import collections
import hashlib
import json
import sys


def _texts(reports, splitter, clean_text):
    texts = set()
    for r in reports:
        for field in (r.findings, r.impression):
            texts.add(field)
            texts.update(s.text for s in splitter.split(field))
        texts.update(s.text for s in splitter.split(clean_text(f"{r.findings} {r.impression}")))
    return sorted(texts)


def dump(out: str) -> None:
    from offclip.demo.reports import chexpert_labels, clean_text
    from offclip.pipeline.labeler import RULES_VERSION, RuleLabeler
    from offclip.pipeline.openi import find_sources, load_reports
    from offclip.pipeline.text import SentenceSplitter

    reports = load_reports(find_sources().reports_tgz)
    labeler = RuleLabeler()
    readings = {}
    for text in _texts(reports, SentenceSplitter(), clean_text):
        rd = labeler.read(text)
        readings[text] = [rd.label.label, rd.label.rule,
                          [[m.finding, m.category, m.status, list(m.modifiers)] for m in rd.label.mentions],
                          list(rd.normal_phrases)]
    blob = json.dumps(readings, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(blob.encode()).hexdigest()
    columns = {str(r.uid): chexpert_labels(r) for r in reports}
    with open(out, "w") as f:
        json.dump({"rules_version": RULES_VERSION, "sha256": digest, "readings": readings,
                   "chexpert": columns}, f, ensure_ascii=False, sort_keys=True)
    print(f"{len(readings)} texts, {len(reports)} reports, rules {RULES_VERSION}, sha256 {digest}")


def _study(labels):
    if labels["No Finding"] == 1.0:
        return "normal"
    if any(v in (1.0, -1.0) for c, v in labels.items() if c != "No Finding"):
        return "abnormal"
    return None


def diff(before: str, after: str, top: int = 15) -> None:
    a, b = json.load(open(before)), json.load(open(after))
    ra, rb = a["readings"], b["readings"]
    common = sorted(set(ra) & set(rb))
    print(f"texts: {len(common)} ({a['rules_version']} → {b['rules_version']}); "
          f"sha256 {a['sha256'][:12]}… → {b['sha256'][:12]}…")
    moves = collections.Counter((ra[t][0], rb[t][0]) for t in common)
    print("\n| label before | label after | texts |\n|---|---|---|")
    for (x, y), n in sorted(moves.items()):
        print(f"| {x} | {y} | {n} |")
    changed = [t for t in common if ra[t][0] != rb[t][0]]
    rules = collections.Counter((ra[t][1], rb[t][1]) for t in changed)
    print(f"\n{len(changed)} texts change label; most frequent (rule before → after):\n")
    print("| rule before | rule after | texts | e.g. |\n|---|---|---|---|")
    for (x, y), n in rules.most_common(top):
        eg = next(t for t in changed if (ra[t][1], rb[t][1]) == (x, y))
        print(f"| {x} | {y} | {n} | {eg[:90]!r} |")
    other = sum(ra[t] != rb[t] for t in common) - len(changed)
    print(f"\n{other} more texts keep their label but change rule, mentions or normal phrases.")
    ca, cb = a["chexpert"], b["chexpert"]
    cells = collections.Counter()
    pairs = collections.Counter()
    studies = collections.Counter()
    for uid in ca:
        studies[(_study(ca[uid]), _study(cb[uid]))] += 1
        for col in ca[uid]:
            if ca[uid][col] != cb[uid][col]:
                cells[col] += 1
                pairs[(col, ca[uid][col], cb[uid][col])] += 1
    n = len(ca)
    rep = sum(ca[u] != cb[u] for u in ca)
    print(f"\nDemo-world CheXpert columns: {rep} of {n} reports change at least one column; "
          f"{sum(cells.values())} of {n * 14} cells.\n")
    print("| column | before | after | reports |\n|---|---|---|---|")
    for (col, x, y), k in pairs.most_common(top):
        print(f"| {col} | {x} | {y} | {k} |")
    print("\nStudy label of --label-source chexpert (before → after):\n\n| before | after | reports |\n|---|---|---|")
    for (x, y), k in sorted(studies.items(), key=str):
        print(f"| {x} | {y} | {k} |")


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    else:
        diff(sys.argv[2], sys.argv[3], *(int(x) for x in sys.argv[4:5]))

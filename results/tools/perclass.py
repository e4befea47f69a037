"""Per-class AUC table of a compare directory (its runs' eval/vindr-cxr.json), baseline first."""
import json, re, sys
from pathlib import Path
from offclip.models.compare import ARMS, per_class_auc, per_class_markdown

out = Path(sys.argv[1])
classes = {}
for js in sorted(out.glob("*-seed*/eval/vindr-cxr.json")):
    m = re.match(r"(\w+)-(\w+)-seed(\d+)", js.parent.parent.name)
    arm = f"{m[1]}/{m[2]}"
    classes[arm, int(m[3])] = json.loads(js.read_text())["classes"]
table = per_class_auc(classes)
md = per_class_markdown(table, labels=ARMS)
# the same without the two catch-all classes and the classes under 10 positives
print(md)
for arm, g in table[table.class_name != "No Finding"].groupby("arm"):
    core = g[~g.class_name.isin(["Other lesion", "Other diseases"])]
    big = core[core.n_pos >= 10]
    print(f"{arm}: macro {g['mean'].mean():.3f}; without the catch-alls {core['mean'].mean():.3f}; "
          f"and >=10 positives {big['mean'].mean():.3f}", file=sys.stderr)

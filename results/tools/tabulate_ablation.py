"""Re-tabulate a compare directory from its runs' saved evaluations, without re-evaluating: the
per-arm table, the paired differences with bootstrap intervals and the per-class AUC, for the
seeds given (every arm must have each). Writes OUT/compare-seeds<S>.md and prints it.
Usage: tabulate_ablation.py COMPARE_DIR SHARDS EVAL_ROOT SEEDS(comma) [EPOCHS] [CONFIG]"""
import json, re, sys
from pathlib import Path
import pandas as pd
from offclip.models.compare import (ARMS, CompareConfig, METRICS, paired_differences, per_class_auc,
                                    per_class_markdown, run_dir, summarise, to_markdown)
from offclip.models.evaluate import read_score_table

out, shards, eval_root = map(Path, sys.argv[1:4])
seeds = tuple(int(s) for s in sys.argv[4].split(","))
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else None
config_name = sys.argv[6] if len(sys.argv) > 6 else "demo"
rows, evaluations, classes = [], {}, {}
for arm in ARMS:
    loss, text, _ = ARMS[arm]
    for seed in seeds:
        ev = run_dir(out, arm, seed) / "eval"
        if not (ev / "vindr-cxr.json").is_file():
            continue
        result = json.loads((ev / "vindr-cxr.json").read_text())
        evaluations[arm, seed] = read_score_table(ev / "vindr-cxr_scores.parquet")
        classes[arm, seed] = result["classes"]
        steps = sum(1 for _ in open(ev.parent / "metrics.jsonl"))
        rows.append({"arm": arm, "loss": loss, "text": text, "seed": seed,
                     **{m: result["summary"].get(m) for m in METRICS}, "steps": steps})
arms = [a for a in ARMS if all((a, s) in evaluations for s in seeds)]
evaluations = {k: v for k, v in evaluations.items() if k[0] in arms}
runs = pd.DataFrame([r for r in rows if r["arm"] in arms])
config = CompareConfig(shards=shards, eval_root=eval_root, out=out, seeds=seeds, arms=tuple(arms),
                       epochs=epochs, config=config_name)
differences = paired_differences(evaluations, config.baseline, list(seeds), eval_root, progress=lambda s: None)
labels = evaluations[config.baseline, seeds[0]].labels
md = to_markdown(runs, summarise(runs), differences, config, len(labels), int(labels["No Finding"].sum()))
md += "\n\n" + per_class_markdown(per_class_auc({k: v for k, v in classes.items() if k[0] in arms}), labels=ARMS)
path = out / f"compare-seeds{''.join(map(str, seeds))}.md"
path.write_text(md + "\n")
print(md)

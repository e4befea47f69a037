"""The tables of docs/ablation.md's "paper's setting" section, regenerated from the runs of
results/tools/paper_setting.sh (never typed).

    python results/tools/paper_setting_tables.py /work/bench [--doc docs/ablation.md] [--results results/paper-setting]

Reads BENCH/refine-text4/compare-both.json (the refinement ablation, both protocols), the runs'
saved scores (for the loss's effect on top of the filter: OFF-CLIP against filter only, paired),
BENCH/base-text4 (the plain CLIP every arm refines: its evaluations and training record), the
same ablation at 192 px (BENCH/refine-text4-192, BENCH/base-text4-192: the pointing game; its
compare tables copied to ``--results``/192px) and the refinement in bf16 (BENCH/refine-text4-bf16, to
``--results``/bf16) when they are there, and the geometry traces; copies the compare tables and the geometry table/plot under ``--results``, and
rewrites the block between ``<!-- paper-setting:start -->`` and ``<!-- paper-setting:end -->`` in
``--doc``, and README.md's headline table between ``<!-- headline:start -->`` and
``<!-- headline:end -->``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

START, END = "<!-- paper-setting:start -->", "<!-- paper-setting:end -->"
ARM_WORDS = {"infonce/report": "control: InfoNCE on whole reports, refined", "infonce/filtered": "filter only",
             "offclip/report": "loss only", "offclip/filtered": "OFF-CLIP (both)"}
ORDER = ("infonce/report", "infonce/filtered", "offclip/report", "offclip/filtered")


def _ms(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _d(d: dict | None) -> str:
    if d is None:
        return "–"
    bold = "**" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{bold}{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{bold}"


def _seeds(d: dict | None) -> str:
    return " ".join(f"{v:+.2f}" for v in d["per_seed"]) if d else "–"


def protocol_tables(saved: dict, base: dict | None) -> str:
    runs, diffs = saved["runs"], saved["differences"]
    ev = saved["evaluation_set"]
    lines = [f"{ev['n_images']:,} images ({ev['n_normal']:,} normal), {len(ev['abnormal_classes'])} abnormal classes "
             "in the macro AUC.", "",
             "| arm | normal AUC | macro AUC | normal FP / FN | normal AUC, prompt-free | cos normal–normal images, centred |",
             "|---|---|---|---|---|---|"]
    if base is not None:
        lines.append(f"| the starting plain CLIP (before refinement) | {base['normal_auc']:.3f} | {base['macro_auc']:.3f} | "
                     f"{base['normal_fp']} / {base['normal_fn']} | {base['normal_auc_centroid']:.3f} | "
                     f"{base['cos_centred_normal_normal']:.3f} |")
    for arm in ORDER:
        rows = [r for r in runs if r["arm"] == arm]
        if not rows:
            continue
        fp = statistics.mean(r["normal_fp"] for r in rows)
        fn = statistics.mean(r["normal_fn"] for r in rows)
        lines.append(f"| {arm} ({ARM_WORDS[arm]}) | {_ms([r['normal_auc'] for r in rows])} | "
                     f"{_ms([r['macro_auc'] for r in rows])} | {fp:.0f} / {fn:.0f} | "
                     f"{_ms([r['normal_auc_centroid'] for r in rows])} | "
                     f"{_ms([r['cos_centred_normal_normal'] for r in rows])} |")
    lines += ["", "Paired differences against the control (the same baseline refined with InfoNCE on whole reports "
              "for the same steps), pooled over seeds, 95 % intervals from resampling the "
              f"{diffs[0].get('n_groups') or diffs[0]['n_images']} held-out reports; then seed by seed:", "",
              "| arm | Δ normal AUC | per seed | Δ macro AUC | per seed | Δ normal AUC, prompt-free |",
              "|---|---|---|---|---|---|"]
    for arm in ORDER[1:]:
        by = {d["metric"]: d for d in diffs if d["arm"] == arm}
        if not by:
            continue
        lines.append(f"| {ARM_WORDS[arm]} | {_d(by.get('normal_auc'))} | {_seeds(by.get('normal_auc'))} | "
                     f"{_d(by.get('macro_auc'))} | {_seeds(by.get('macro_auc'))} | {_d(by.get('normal_auc_centroid'))} |")
    return "\n".join(lines)


def headline(data: dict, on_filter: dict) -> str:
    """README's headline table: per arm, offclip's protocol (mean ± sd, Δ with interval) and the
    paper's (Δ normal / Δ macro)."""
    own, paper = data["protocols"]["offclip"], data["protocols"]["paper"]
    names = {"infonce/report": "control (plain CLIP, refined)", "infonce/filtered": "filter only",
             "offclip/report": "loss only", "offclip/filtered": "OFF-CLIP"}
    seeds = sorted({r["seed"] for r in own["runs"]})
    ev = own["evaluation_set"]
    lines = [f"Mean ± sd over {len(seeds)} seeds ({', '.join(map(str, seeds))}); differences against the control pooled "
             f"over seeds, 95 % intervals from resampling the {own['differences'][0].get('n_groups') or ev['n_images']} "
             f"held-out reports behind the {ev['n_images']:,} evaluation images; offclip's protocol, then the paper's "
             "(its 16 VinDr classes, its prompts). Bold: the interval excludes 0.", "",
             "| arm | normal AUC | macro AUC | Δ normal AUC [95 % CI] | Δ macro AUC [95 % CI] | "
             "paper's protocol: Δ normal / Δ macro |", "|---|---|---|---|---|---|"]
    for arm in ORDER:
        rows = [r for r in own["runs"] if r["arm"] == arm]
        by = {d["metric"]: d for d in own["differences"] if d["arm"] == arm}
        pb = {d["metric"]: d for d in paper["differences"] if d["arm"] == arm}
        lines.append(f"| {names[arm]} | {_ms([r['normal_auc'] for r in rows])} | {_ms([r['macro_auc'] for r in rows])} | "
                     f"{_d(by.get('normal_auc'))} | {_d(by.get('macro_auc'))} | "
                     + (f"{pb['normal_auc']['estimate']:+.3f} / {pb['macro_auc']['estimate']:+.3f} |" if pb else "– |"))
    own_f, paper_f = on_filter["offclip"], on_filter["paper"]
    lines += ["", f"The loss on top of the filter (OFF-CLIP against filter only, paired the same way): Δ normal AUC "
              f"{_d(own_f['normal_auc'])}, Δ macro AUC {_d(own_f['macro_auc'])}; under the paper's protocol "
              f"{_d(paper_f['normal_auc'])} and {_d(paper_f['macro_auc'])}."]
    return "\n".join(lines)


def base_summary(bench: Path, protocol: str, tag: str = "") -> dict | None:
    path = bench / f"base-text4{tag}" / f"eval-{protocol}" / "vindr-cxr.json"
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def saved_evaluations(refine: Path, arms: tuple[str, ...], seeds: list[int], protocol: str) -> dict:
    """``{(arm, seed): SavedScores}`` from the runs' saved score tables (what compare's paired
    bootstrap reads), without re-evaluating."""
    from offclip.models.compare import run_dir
    from offclip.models.evaluate import read_score_table

    folder = "eval" if protocol == "offclip" else f"eval-{protocol}"
    return {(arm, seed): read_score_table(run_dir(refine, arm, seed) / folder / "vindr-cxr_scores.parquet")
            for arm in arms for seed in seeds}


def loss_on_filter(refine: Path, data: dict) -> dict[str, dict[str, dict]]:
    """The loss's effect on top of the filter: OFF-CLIP against filter only, the paired difference
    pooled over seeds with compare's bootstrap (reports resampled), per protocol and metric."""
    from offclip.models.compare import paired_differences

    out = {}
    for protocol, saved in data["protocols"].items():
        seeds = sorted({r["seed"] for r in saved["runs"]})
        evaluations = saved_evaluations(refine, ("infonce/filtered", "offclip/filtered"), seeds, protocol)
        diffs = paired_differences(evaluations, "infonce/filtered", seeds, Path(saved["evaluation_set"]["root"]),
                                   progress=lambda line: None)
        out[protocol] = {d["metric"]: d for d in diffs}
    return out


def _positive_seeds(d: dict) -> str:
    above = sum(v > 0 for v in d["per_seed"])
    return f"{above} of {len(d['per_seed'])} seeds above 0"


def findings(data: dict, on_filter: dict, base: dict) -> str:
    """The figures behind docs/ablation.md's reading of this experiment, from the data (so the prose
    above and below the block quotes no number of its own)."""
    by = {p: {(d["arm"], d["metric"]): d for d in saved["differences"]} for p, saved in data["protocols"].items()}
    own, paper = by["offclip"], by["paper"]

    def both(arm: str, metric: str) -> str:
        return f"{_d(own[arm, metric])} ({_positive_seeds(own[arm, metric])}); paper's protocol {_d(paper[arm, metric])}"

    start = (f"normal AUC {base['offclip']['normal_auc']:.3f}, macro {base['offclip']['macro_auc']:.3f} "
             f"(paper's protocol {base['paper']['normal_auc']:.3f} / {base['paper']['macro_auc']:.3f})")
    lines = ["**In figures** (pooled over seeds, 95 % intervals from resampling the held-out reports; bold: the "
             "interval excludes 0):", "",
             f"- the starting plain CLIP (top-4 text, from scratch, before any refinement): {start};",
             f"- the filter (filter only − control), Δ normal AUC: {both('infonce/filtered', 'normal_auc')};",
             f"- the loss on top of the filter (OFF-CLIP − filter only, paired the same way), Δ normal AUC: "
             f"{_d(on_filter['offclip']['normal_auc'])} ({_positive_seeds(on_filter['offclip']['normal_auc'])}); "
             f"paper's protocol {_d(on_filter['paper']['normal_auc'])}; Δ macro AUC "
             f"{_d(on_filter['offclip']['macro_auc'])}; paper's protocol {_d(on_filter['paper']['macro_auc'])};",
             f"- the loss alone (loss only − control), Δ normal AUC: {both('offclip/report', 'normal_auc')};",
             f"- prompt-free normal AUC, Δ against the control: filter only {_d(own['infonce/filtered', 'normal_auc_centroid'])}, "
             f"loss only {_d(own['offclip/report', 'normal_auc_centroid'])}, OFF-CLIP "
             f"{_d(own['offclip/filtered', 'normal_auc_centroid'])};",
             "- Δ macro AUC (abnormal classes) against the control: "
             + "; ".join(f"{ARM_WORDS[arm].split(' (')[0]} {both(arm, 'macro_auc')}" for arm in ORDER[1:]) + "."]
    return "\n".join(lines)


def per_class_tables(refine: Path) -> str:
    """The per-class AUC tables of compare-both.md (one per protocol), folded."""
    text = (refine / "compare-both.md").read_text(encoding="utf-8")
    parts = []
    for section in text.split("## Protocol `")[1:]:
        protocol = section.split("`", 1)[0]
        if "Per-class AUC" in section:
            table = "Per-class AUC" + section.split("Per-class AUC", 1)[1].rstrip()
            parts.append(f"<details><summary>Per-class AUC, {protocol} protocol</summary>\n\n{table}\n\n</details>")
    return "\n\n".join(parts)


def pointing_game(bench: Path) -> str | None:
    """The ablation at 192 px (the 6x6 grid the pointing game needs), seed 0, against the game's
    chance levels on the same (image, class) trials (results/tools/pointing_chance.py)."""
    refine = bench / "refine-text4-192"
    if not (refine / "compare-both.json").is_file():
        return None
    data = json.loads((refine / "compare-both.json").read_text())
    own = data["protocols"]["offclip"]
    base = base_summary(bench, "offclip", "-192")
    chance = subprocess.run([sys.executable, "results/tools/pointing_chance.py", own["evaluation_set"]["root"], "6"],
                            check=True, capture_output=True, text=True).stdout.strip()
    diffs = {(d["arm"], d["metric"]): d for d in own["differences"]}
    lines = [f"**The pointing game at 192 px** (`BASE_CONFIG=demo-text4-192 TAG=-192 SEEDS=0 STEPS=12 "
             f"ARMS=offclip/filtered results/tools/paper_setting.sh BENCH`: a starting CLIP and its refinements fed "
             f"the 192-px shards, so the last feature map is a 6×6 grid; seed 0; offclip's protocol; "
             f"{own['evaluation_set']['n_images']:,} images). Chance on these trials "
             f"(`results/tools/pointing_chance.py EVAL 6`): {chance}.", "",
             "| arm | pointing game | normal AUC | macro AUC | Δ normal AUC [95 % CI] | Δ macro AUC [95 % CI] |",
             "|---|---|---|---|---|---|"]
    if base is not None:
        lines.append(f"| the starting plain CLIP (192 px) | {base['pointing_game']:.3f} | {base['normal_auc']:.3f} | "
                     f"{base['macro_auc']:.3f} | | |")
    for arm in ORDER:
        rows = [r for r in own["runs"] if r["arm"] == arm]
        if rows:
            r = rows[0]
            lines.append(f"| {arm} ({ARM_WORDS[arm]}) | {r['pointing_game']:.3f} | {r['normal_auc']:.3f} | "
                         f"{r['macro_auc']:.3f} | {_d(diffs.get((arm, 'normal_auc')))} | {_d(diffs.get((arm, 'macro_auc')))} |")
    return "\n".join(lines)


def amp_check(bench: Path, fp32: dict) -> str | None:
    """The refinement under CPU bf16 autocast (``--amp bf16``, BENCH/refine-text4-bf16) against the
    float32 runs of the same seeds: the same data order, initial model and dropout draws, so what
    differs is the precision of the matrix products alone."""
    refine = bench / "refine-text4-bf16"
    if not (refine / "compare-both.json").is_file():
        return None
    low = json.loads((refine / "compare-both.json").read_text())
    seeds = sorted({r["seed"] for r in low["protocols"]["offclip"]["runs"]})
    lines = [f"**The same refinement in bf16 on the CPU** (`offclip compare BENCH/c4k BENCH/w4k/eval/vindr-cxr --init "
             f"BENCH/base-text4/model --config demo-text4-refine --seeds {','.join(map(str, seeds))} --arms all "
             "--protocol both --trace-every 105 --amp bf16 --out BENCH/refine-text4-bf16`: matrix products in bf16, the "
             "top layers' attention in float32), against the float32 runs of the same seed (same data order, "
             "starting model and dropout draws: what differs is the precision):", "",
             "| arm | normal AUC float32 → bf16 | macro AUC float32 → bf16 | paper's protocol: normal / macro, "
             "float32 → bf16 | Δ normal AUC vs control, float32 → bf16 | largest per-step loss difference |",
             "|---|---|---|---|---|---|"]

    def run(data: dict, protocol: str, arm: str, seed: int) -> dict:
        return next(r for r in data["protocols"][protocol]["runs"] if r["arm"] == arm and r["seed"] == seed)

    def delta(data: dict, arm: str, seed: int) -> float:
        return run(data, "offclip", arm, seed)["normal_auc"] - run(data, "offclip", "infonce/report", seed)["normal_auc"]

    from offclip.models.compare import run_dir

    for seed in seeds:
        for arm in ORDER:
            a, b = run(fp32, "offclip", arm, seed), run(low, "offclip", arm, seed)
            pa, pb = run(fp32, "paper", arm, seed), run(low, "paper", arm, seed)
            steps = [[json.loads(line)["loss"]
                      for line in (run_dir(folder, arm, seed) / "metrics.jsonl").read_text().splitlines()]
                     for folder in (bench / "refine-text4", refine)]
            gap = max(abs(x - y) for x, y in zip(*steps))
            lines.append(f"| {ARM_WORDS[arm].split(':')[0]}{'' if len(seeds) == 1 else f', seed {seed}'} | "
                         f"{a['normal_auc']:.3f} → {b['normal_auc']:.3f} | {a['macro_auc']:.3f} → {b['macro_auc']:.3f} | "
                         f"{pa['normal_auc']:.3f} / {pa['macro_auc']:.3f} → {pb['normal_auc']:.3f} / {pb['macro_auc']:.3f} | "
                         + ("– |" if arm == "infonce/report" else f"{delta(fp32, arm, seed):+.3f} → {delta(low, arm, seed):+.3f} |")
                         + f" {gap:.4f} over {len(steps[1])} steps |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--doc", type=Path, default=Path("docs/ablation.md"))
    parser.add_argument("--results", type=Path, default=Path("results/paper-setting"))
    args = parser.parse_args(argv)
    bench, results = args.bench, args.results
    results.mkdir(parents=True, exist_ok=True)
    refine = bench / "refine-text4"
    data = json.loads((refine / "compare-both.json").read_text())
    for name in ("compare-both.md", "compare-both.json"):
        shutil.copyfile(refine / name, results / name)
    train = json.loads((bench / "base-text4" / "train.json").read_text())
    seeds = sorted({r["seed"] for r in data["protocols"]["offclip"]["runs"]})
    parts = [f"The plain CLIP every arm refines: `demo-text4`, InfoNCE on whole reports, seed 100, "
             f"{train['steps']:,} steps ({train['epochs']} epochs); each arm: `demo-text4-refine`, "
             f"{data['protocols']['offclip']['runs'][0]['steps']:,} steps, seeds {', '.join(map(str, seeds))}."]
    for protocol, title in (("offclip", "offclip's protocol (every class, \"There is {finding}.\")"),
                            ("paper", "the paper's protocol (VinDr's 16 classes + No finding, its prompts, "
                                      "images with a positive among them, sigmoid scores)")):
        parts += ["", f"**Under {title}.** " + protocol_tables(data["protocols"][protocol],
                                                                  base_summary(bench, protocol))]
    on_filter = loss_on_filter(refine, data)
    parts += ["", findings(data, on_filter, {p: base_summary(bench, p) for p in ("offclip", "paper")}),
              "", per_class_tables(refine)]
    check = amp_check(bench, data)
    if check is not None:
        parts += ["", check]
        (results / "bf16").mkdir(exist_ok=True)
        for name in ("compare-both.md", "compare-both.json"):
            shutil.copyfile(bench / "refine-text4-bf16" / name, results / "bf16" / name)
    game = pointing_game(bench)
    if game is not None:
        parts += ["", game]
        (results / "192px").mkdir(exist_ok=True)
        for name in ("compare-both.md", "compare-both.json"):
            shutil.copyfile(bench / "refine-text4-192" / name, results / "192px" / name)
    groups = {
        "refined": ("trainable top-4 text, refining the starting CLIP", [
            ("control (InfoNCE, report)", refine / "infonce-report-seed0"),
            ("filter only", refine / "infonce-filtered-seed0"),
            ("loss only", refine / "offclip-report-seed0"),
            ("OFF-CLIP", refine / "offclip-filtered-seed0"),
            ("off-diagonal term alone, filtered", bench / "refine-offdiag-only" / "offclip-filtered-aw0-seed0")]),
        "frozen": ("frozen text, from scratch (the `demo` config, 12 epochs), and the starting CLIP's own training", [
            ("frozen: InfoNCE, filtered", bench / "scratch-demo" / "infonce-filtered-seed0"),
            ("frozen: OFF-CLIP, filtered", bench / "scratch-demo" / "offclip-filtered-seed0"),
            ("top-4 from scratch: InfoNCE, report (the starting CLIP)", bench / "base-text4")]),
    }
    for name, (title, runs) in groups.items():
        present = [f"{label}={path}" for label, path in runs if (path / "geometry.jsonl").is_file()]
        if not present:
            continue
        out = results / f"geometry-{name}"
        subprocess.run([sys.executable, "results/tools/geometry_trace.py", "--out", str(out), *present],
                       check=True, capture_output=True)
        parts += ["", f"**The geometry over training: {title}** (seed 0; `results/tools/geometry_trace.py`, plot "
                  f"[`{out}/geometry.png`](../{out}/geometry.png)):", "",
                  (out / "geometry.md").read_text().strip()]
    block = "\n".join(parts)
    readme = Path("README.md")
    marks = ("<!-- headline:start -->", "<!-- headline:end -->")
    text = readme.read_text(encoding="utf-8")
    if marks[0] in text and marks[1] in text:
        before, rest = text.split(marks[0], 1)
        readme.write_text(f"{before}{marks[0]}\n{headline(data, on_filter)}\n{marks[1]}{rest.split(marks[1], 1)[1]}",
                          encoding="utf-8")
    (results / "summary.md").write_text(block + "\n", encoding="utf-8")
    text = args.doc.read_text(encoding="utf-8")
    if START in text and END in text:
        before, rest = text.split(START, 1)
        args.doc.write_text(f"{before}{START}\n{block}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

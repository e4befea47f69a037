"""Tabulate and plot the embedding geometry traced over training (RUN/geometry.jsonl, written
with ``--trace-every``; ``offclip.models.geometry`` says what each column is).

    python results/tools/geometry_trace.py --out results/paper-setting/geometry \
        "frozen, InfoNCE=/work/bench/scratch-demo/infonce-filtered-seed0" \
        "frozen, OFF-CLIP=/work/bench/scratch-demo/offclip-filtered-seed0" ...

Each argument is ``LABEL=RUN_DIR``. Writes ``OUT/geometry.md`` (each run's first and last
measurement, and the change) and ``OUT/geometry.png`` (each quantity over the steps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: (column, what it is) in table order
QUANTITIES = (
    ("image_centred_normal_normal", "cos normal–normal images (centred)"),
    ("image_centred_abnormal_abnormal", "cos abnormal–abnormal images (centred)"),
    ("image_centred_normal_abnormal", "cos normal–abnormal images (centred)"),
    ("text_centred_normal_normal", "cos normal–normal texts (centred)"),
    ("text_normal_normal", "cos normal–normal texts (raw)"),
    ("text_normal_abnormal", "cos normal–abnormal texts (raw)"),
    ("cross_normal_image_normal_text", "cos normal image–normal text"),
    ("cross_abnormal_image_normal_text", "cos abnormal image–normal text"),
    ("cross_matched", "cos image–own text"),
    ("prompt_normal_image", "cos \"There is no finding.\"–normal images"),
    ("prompt_abnormal_image", "cos \"There is no finding.\"–abnormal images"),
    ("logit_scale", "logit scale"),
)


def read(run: Path) -> list[dict]:
    rows = []
    for line in (run / "geometry.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def table(runs: dict[str, list[dict]]) -> str:
    labels = list(runs)
    head = "| quantity | " + " | ".join(f"{label}: start → end (Δ)" for label in labels) + " |"
    lines = [head, "|---|" + "---|" * len(labels)]
    for key, what in QUANTITIES:
        cells = []
        for label in labels:
            first, last = runs[label][0].get(key), runs[label][-1].get(key)
            cells.append("–" if first is None or last is None else f"{first:.3f} → {last:.3f} ({last - first:+.3f})")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    probe = next(iter(runs.values()))[-1]
    steps = ", ".join(f"{label}: {rows[-1]['step']} steps, {len(rows)} measurements" for label, rows in runs.items())
    return ("\n".join(lines) + f"\n\nProbe: {probe.get('n_probe')} samples ({probe.get('n_probe_normal')} normal; "
            f"by split {probe.get('probe_splits')}), the same for every run. {steps}.")


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows_n = -(-len(QUANTITIES) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), dpi=90)
    for ax, (key, what) in zip(axes.flat, QUANTITIES):
        for label, rows in runs.items():
            ax.plot([r["step"] for r in rows], [r.get(key) for r in rows], marker=".", label=label)
        ax.set_title(what, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(QUANTITIES):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, _, run = spec.partition("=")
        if not run:
            parser.error(f"{spec!r}: LABEL=RUN_DIR")
        rows = read(Path(run))
        if not rows:
            print(f"{label}: {run}/geometry.jsonl holds no measurement yet: left out", file=sys.stderr)
            continue
        runs[label] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (args.out / "geometry.md").write_text(text + "\n", encoding="utf-8")
    plot(runs, args.out / "geometry.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

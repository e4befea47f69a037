"""The paper's claim, measured: InfoNCE vs the OFF-CLIP loss with the same model config, data
and seeds, each model evaluated zero-shot on the same VinDr-CXR-format test set.

    offclip compare out/curated out/demo-world/eval/vindr-cxr --seeds 0,1,2

Per run: normal AUC, macro AUC over abnormal classes, pointing game, normal FP/FN (at the
Youden threshold). The table (one row per run, then mean ± sd per loss) goes to
``OUT/compare.md`` and ``OUT/compare.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..pipeline.atomic import atomic_write_text

METRICS = ("normal_auc", "macro_auc", "pointing_game", "normal_fp", "normal_fn")


@dataclass
class CompareConfig:
    shards: Path  #: a build-shards output root
    eval_root: Path  #: the VinDr-CXR-format test set
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    losses: tuple[str, ...] = ("infonce", "offclip")
    config: str = "demo"
    epochs: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    dataset: str = "vindr-cxr"
    max_steps: int | None = None
    #: a prompts JSON for evaluation (see models.evaluate.build_prompts); None: the defaults.
    #: Runs already trained in ``out`` are found finished and only re-evaluated, so a second
    #: prompt set costs evaluation time only; its table goes to compare-<file stem>.md
    prompts: Path | None = None


@dataclass
class CompareResult:
    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    files: dict = field(default_factory=dict)


def run_compare(config: CompareConfig, progress: Callable[[str], None] = print) -> CompareResult:
    from .evaluate import evaluate
    from .train import TrainConfig, train

    out = Path(config.out)
    tag = f"-{Path(config.prompts).stem}" if config.prompts else ""  #: names a prompt set's outputs
    rows = []
    for seed in config.seeds:
        for loss in config.losses:
            run = out / f"{loss}-seed{seed}"
            progress(f"compare: training {loss}, seed {seed} → {run}")
            trained = train(TrainConfig(shards=Path(config.shards), out=run, config=config.config, loss=loss,
                                        seed=seed, epochs=config.epochs, batch_size=config.batch_size,
                                        device=config.device, max_steps=config.max_steps))
            result = evaluate(trained.model_dir, config.dataset, config.eval_root, out=run / f"eval{tag}",
                              device=config.device, prompts=config.prompts)
            summary = result.to_dict()["summary"]
            rows.append({"loss": loss, "seed": seed, **{m: summary.get(m) for m in METRICS},
                         "steps": trained.steps, "train_seconds": round(trained.seconds, 1)})
            progress(f"compare: {loss} seed {seed}: " + ", ".join(f"{m} {summary.get(m)}" for m in METRICS))
    runs = pd.DataFrame(rows)
    summary = summarise(runs)
    markdown = to_markdown(runs, summary, config)
    files = {"json": out / f"compare{tag}.json", "markdown": out / f"compare{tag}.md"}
    atomic_write_text(files["json"], json.dumps({"config": {k: str(v) for k, v in config.__dict__.items()},
                                                 "runs": rows}, indent=1, default=float) + "\n")
    atomic_write_text(files["markdown"], markdown + "\n")
    return CompareResult(runs, summary, markdown, files)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of each metric per loss."""
    grouped = runs.groupby("loss", sort=False)[list(METRICS)]
    mean, sd = grouped.mean(), grouped.std(ddof=1)
    return pd.concat({"mean": mean, "sd": sd}, axis=1)


def _cell(mean: float, sd: float, digits: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if pd.isna(sd) else f" ± {sd:.{digits}f}")


def to_markdown(runs: pd.DataFrame, summary: pd.DataFrame, config: CompareConfig) -> str:
    head = "| loss | normal AUC | macro AUC (abnormal) | pointing game | normal FP | normal FN |\n|---|---|---|---|---|---|"
    prompts = f"prompts `{config.prompts}`" if config.prompts else "the default prompts"
    lines = [f"Config `{config.config}`, seeds {', '.join(map(str, config.seeds))}, evaluated on "
             f"`{config.eval_root}` with {prompts} ({len(runs)} runs; mean ± sd over seeds).", "", head]
    for loss in summary.index:
        cells = [_cell(summary.loc[loss, ("mean", m)], summary.loc[loss, ("sd", m)], 1 if m.startswith("normal_f") else 3)
                 for m in METRICS]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| loss | seed | " + " | ".join(METRICS) + " | steps |",
              "|---|---|" + "---|" * (len(METRICS) + 1)]
    for row in runs.to_dict("records"):
        lines.append(f"| {row['loss']} | {row['seed']} | "
                     + " | ".join("n/a" if pd.isna(row[m]) else (f"{row[m]:.3f}" if isinstance(row[m], float) else str(row[m]))
                                  for m in METRICS) + f" | {row['steps']} |")
    return "\n".join(lines)

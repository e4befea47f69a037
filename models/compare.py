"""The ablation: which part of OFF-CLIP does what, measured with paired confidence intervals.

    offclip compare out/curated out/demo-world/eval/vindr-cxr --seeds 0,1,2,3,4

Four *arms*, each a (loss, training text) pair, with the same model config, seeds and
evaluation set:

============================  =========  ==========  ==================================
arm                           loss       text        what it is
============================  =========  ==========  ==================================
``infonce/report``            InfoNCE    report      a plain CLIP (the baseline)
``infonce/filtered``          InfoNCE    filtered    the filter only
``offclip/report``            OFF-CLIP   report      the loss only
``offclip/filtered``          OFF-CLIP   filtered    OFF-CLIP (both parts)
============================  =========  ==========  ==================================

Per run: normal AUC, macro AUC over abnormal classes, pointing game, normal FP/FN at the Youden
threshold, the prompt-free normal AUC and the embedding compactness (``models.evaluate``). Per arm
against the baseline: the paired difference in normal AUC and in macro AUC with a 95 % bootstrap
interval (``models.stats.paired_bootstrap``: images resampled, paired within a seed, pooled over
seeds). Tables go to ``OUT/compare.md`` and ``OUT/compare.json``; every evaluation and every
pooled difference is a row in the manifest's ``evaluations`` table.

Every arm starts from a fresh model of the config (seeded), or, with ``init``, from one existing
checkpoint (any format :mod:`offclip.models.adapters` opens): the ablation as a *refinement*, the
paper's setting (OFF-CLIP refines CARZero). Then the seed changes only the data order and dropout.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..data_contracts.enums import DEFAULT_MODEL_CONFIG
from ..pipeline.atomic import atomic_write_text
from ..pipeline.layout import manifest_path

if TYPE_CHECKING:
    from .evaluate.result import EvalResult

#: arm name → (loss, text source, what it is)
ARMS = {
    "infonce/report": ("infonce", "report", "plain CLIP (baseline)"),
    "infonce/filtered": ("infonce", "filtered", "filter only"),
    "offclip/report": ("offclip", "report", "loss only"),
    "offclip/filtered": ("offclip", "filtered", "OFF-CLIP"),
}
BASELINE = "infonce/report"
#: per-run metrics (from the evaluation summary), in table order
METRICS = (
    "normal_auc",
    "macro_auc",
    "pointing_game",
    "normal_fp",
    "normal_fn",
    "normal_auc_centroid",
    "cos_centred_normal_normal",
    "cos_centred_abnormal_abnormal",
    "cos_centred_normal_abnormal",
)
HEADERS = (
    "normal AUC",
    "macro AUC (abnormal)",
    "pointing game",
    "normal FP",
    "normal FN",
    "normal AUC, prompt-free",
    "cos normal–normal (centred)",
    "cos abnormal–abnormal (centred)",
    "cos normal–abnormal (centred)",
)
#: the paired differences against the baseline: (name, what is compared)
DIFFERENCES = ("normal_auc", "macro_auc", "normal_auc_centroid")
DIFFERENCE_HEADERS = ("Δ normal AUC", "Δ macro AUC", "Δ normal AUC, prompt-free")


def parse_arms(text: str) -> tuple[str, ...]:
    """``"infonce/report,offclip/filtered"`` (or ``all``) → arm names, checked."""
    arms = tuple(ARMS) if text.strip() == "all" else tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"unknown arm(s) {unknown or text!r}; arms are {', '.join(ARMS)} (loss/text)")
    return arms


@dataclass
class CompareConfig:
    shards: Path  #: a build-shards output root
    eval_root: Path  #: the VinDr-CXR-format test set
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    arms: tuple[str, ...] = tuple(ARMS)
    baseline: str = BASELINE
    config: str = DEFAULT_MODEL_CONFIG
    epochs: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    amp: str = "auto"  #: every run's mixed precision (TrainConfig.amp)
    dataset: str = "vindr-cxr"
    max_steps: int | None = None
    #: a prompts JSON for evaluation (see models.evaluate.build_prompts); None: the defaults.
    #: Runs already trained in ``out`` are found finished and only re-evaluated, so a second
    #: prompt set costs evaluation time only; its table goes to compare-<file stem>.md
    prompts: Path | None = None
    n_boot: int = 2000  #: bootstrap replicates of each paired difference
    #: the manifest whose ``evaluations`` get the rows; None: SHARDS/manifest.duckdb when it exists
    manifest: Path | None = None
    #: what a bootstrap replicate resamples: ``images``, ``reports`` (every render of a report
    #: together: the demo world's ``offclip_demo/eval_images.csv``), or ``auto`` (reports when that
    #: table covers the evaluation set, else images)
    resample: str = "auto"
    #: a model directory every arm refines (offclip, CLIPModel or VisionTextDualEncoderModel); None:
    #: every arm trains a fresh model of ``config`` (whose "train" section gives the hyper-parameters
    #: either way)
    init: Path | None = None
    #: the evaluation protocol (models.evaluate.protocols): ``offclip`` (every class, "There is
    #: {finding}."), ``paper`` (OFF-CLIP's official classes, prompts and filter), or ``both``: every
    #: run evaluated under each, one set of tables per protocol in compare-both.md
    protocol: str = "offclip"
    #: every run measures its embedding geometry every this many steps (models.geometry); 0: never
    trace_every: int = 0

    def __post_init__(self) -> None:
        from .evaluate.protocols import protocol_names
        from .train_config import check_amp  # torch: imported when a comparison is made, not with this module

        chosen = protocol_names(self.protocol)  # raises on an unknown protocol
        if self.prompts is not None and "paper" in chosen:
            raise ValueError("--prompts applies to the offclip protocol only: the paper protocol has its own prompts")
        for arm in (*self.arms, self.baseline):
            if arm not in ARMS:
                raise ValueError(f"unknown arm {arm!r}; arms are {', '.join(ARMS)}")
        if not self.seeds:
            raise ValueError("compare needs at least one seed")
        check_amp(self.amp)
        if self.resample not in ("auto", "images", "reports"):
            raise ValueError(f"resample must be auto, images or reports, not {self.resample!r}")
        if self.init is not None:
            from .adapters import model_format

            model_format(self.init)  # a clear error now, not after the first arm's data is read


@dataclass
class CompareResult:
    runs: pd.DataFrame  #: one row per (arm, seed)
    summary: pd.DataFrame  #: mean and sd of each metric per arm
    differences: list[dict]  #: per arm against the baseline: Difference.to_dict() + arm, metric
    markdown: str
    files: dict = field(default_factory=dict)
    n_images: int = 0
    n_normal: int = 0
    #: per protocol evaluated: evaluation_set, runs, differences (``runs``, ``summary`` and
    #: ``differences`` above are the first protocol's)
    by_protocol: dict = field(default_factory=dict)


def run_dir(out: Path, arm: str, seed: int) -> Path:
    loss, text, _ = ARMS[arm]
    return Path(out) / f"{loss}-{text}-seed{seed}"


def run_compare(config: CompareConfig, progress: Callable[[str], None] = print) -> CompareResult:
    from .evaluate import NORMAL, _json_safe, evaluate
    from .evaluate.protocols import DEFAULT_PROTOCOL, protocol_names
    from .train import TrainConfig, train

    out = Path(config.out)
    tag = f"-{Path(config.prompts).stem}" if config.prompts else ""  #: names a prompt set's outputs
    protocols = protocol_names(config.protocol)
    ptag = "" if protocols == (DEFAULT_PROTOCOL,) else f"-{config.protocol}"  #: names a protocol's outputs
    origin = f":refine-{Path(config.init).name}" if config.init else ""  #: tells refinements apart in the manifest
    manifest: Path | None
    manifest = config.manifest or manifest_path(config.shards)
    manifest = manifest if Path(manifest).is_file() else None
    arms = list(dict.fromkeys([config.baseline, *config.arms]))  # the baseline is always run
    rows: dict[str, list[dict]] = {p: [] for p in protocols}
    evaluations: dict[str, dict[tuple[str, int], EvalResult]] = {p: {} for p in protocols}
    total, done = len(arms) * len(config.seeds), 0
    for seed in config.seeds:
        for arm in arms:
            loss, text, _ = ARMS[arm]
            run = run_dir(out, arm, seed)
            done += 1
            progress(f"compare [{done}/{total}]: training {arm}, seed {seed} → {run}")
            trained = train(
                TrainConfig(
                    shards=Path(config.shards),
                    out=run,
                    config=config.config,
                    loss=loss,
                    text_source=text,
                    seed=seed,
                    epochs=config.epochs,
                    batch_size=config.batch_size,
                    device=config.device,
                    amp=config.amp,
                    max_steps=config.max_steps,
                    init=str(config.init) if config.init else None,
                    trace_every=config.trace_every,
                )
            )
            for protocol in protocols:
                other = "" if protocol == DEFAULT_PROTOCOL else f"-{protocol}"
                result = evaluate(
                    trained.model_dir,
                    config.dataset,
                    config.eval_root,
                    out=run / f"eval{tag}{other}",
                    device=config.device,
                    prompts=config.prompts if not other else None,
                    manifest=manifest,
                    protocol=protocol,
                    run_name=f"compare{origin}:{arm}:seed{seed}{tag}{other.replace('-', ':')}",
                )
                evaluations[protocol][arm, seed] = result
                summary = result.summary
                rows[protocol].append(
                    {
                        "arm": arm,
                        "loss": loss,
                        "text": text,
                        "seed": seed,
                        **{m: summary.get(m) for m in METRICS},
                        "steps": trained.steps,
                        "train_seconds": round(trained.seconds, 1),
                    }
                )
                progress(
                    f"compare: {arm} seed {seed}{f' ({protocol} protocol)' if other else ''}: "
                    + ", ".join(f"{m} {_fmt(summary.get(m))}" for m in METRICS[:3])
                )

    sections: list[str] = []
    saved: dict[str, dict] = {}
    first: tuple[pd.DataFrame, pd.DataFrame, list[dict], int, int] | None = None  #: the first protocol's
    for protocol in protocols:
        other = "" if protocol == DEFAULT_PROTOCOL else f"-{protocol}"
        labels = evaluations[protocol][config.baseline, config.seeds[0]].labels
        abnormal = abnormal_classes(labels)
        differences = paired_differences(
            evaluations[protocol],
            config.baseline,
            config.seeds,
            config.eval_root,
            resample=config.resample,
            n_boot=config.n_boot,
            progress=lambda line: progress(f"compare: {line}"),
        )
        runs = pd.DataFrame(rows[protocol])
        summary = summarise(runs)
        n_images, n_normal = len(labels), int(labels[NORMAL].sum())
        markdown = to_markdown(runs, summary, differences, config, n_images, n_normal, protocol=protocol)
        per_class = per_class_auc({key: r.classes.to_dict("records") for key, r in evaluations[protocol].items()})
        markdown += "\n\n" + per_class_markdown(per_class, labels=ARMS)
        if len(protocols) > 1:
            markdown = f"## Protocol `{protocol}`\n\n" + markdown
        sections.append(markdown)
        saved[protocol] = {
            "evaluation_set": {
                "root": str(config.eval_root),
                "dataset": config.dataset,
                "n_images": n_images,
                "n_normal": n_normal,
                "abnormal_classes": abnormal,
            },
            "runs": rows[protocol],
            "differences": differences,
        }
        if manifest is not None:
            arms_run = dict.fromkeys(d["arm"] for d in differences)
            record_differences(
                manifest,
                differences,
                config.dataset,
                {a: f"compare{origin}:{a}-vs-{config.baseline}{tag}{other.replace('-', ':')}" for a in arms_run},
                {a: ARMS[a][0] for a in arms_run},
                protocol=protocol,
            )
        if first is None:
            first = (runs, summary, differences, n_images, n_normal)
    markdown = "\n\n".join(sections)
    files = {"json": out / f"compare{tag}{ptag}.json", "markdown": out / f"compare{tag}{ptag}.md"}
    config_json = {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
        for k, v in config.__dict__.items()
    }
    if len(protocols) == 1:  # one protocol: the layout every reader of compare.json knows
        content = {"config": config_json, **saved[protocols[0]]}
    else:
        content = {"config": config_json, "protocols": saved}
    atomic_write_text(files["json"], json.dumps(_json_safe(content), indent=1) + "\n")
    atomic_write_text(files["markdown"], markdown + "\n")
    if manifest is not None:
        files["manifest"] = manifest
    assert first is not None  # protocol_names never gives an empty tuple
    runs, summary, differences, n_images, n_normal = first
    compared = CompareResult(runs, summary, differences, markdown, files, n_images, n_normal)
    compared.by_protocol = {p: saved[p] for p in protocols}
    return compared


def abnormal_classes(labels: pd.DataFrame) -> list[str]:
    """The abnormal classes of an evaluation's labels with both positives and negatives (those a
    macro AUC averages)."""
    from .evaluate import NORMAL

    return [c for c in labels.columns if c != NORMAL and labels[c].nunique(dropna=True) == 2]


def paired_differences(
    evaluations: dict,
    baseline: str,
    seeds,
    eval_root: Path,
    *,
    resample: str = "auto",
    n_boot: int = 2000,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """Every arm of ``evaluations`` (``{(arm, seed): EvalResult}``, the same seeds for each arm)
    against ``baseline``: the paired difference of each of :data:`DIFFERENCES`, pooled over seeds,
    with its bootstrap interval (``models.stats.paired_bootstrap``; the renders of one report
    resampled together when the evaluation set says which report each image is, see
    :func:`eval_groups`). One dict per (arm, metric): ``Difference.to_dict()`` + arm, baseline."""
    from .evaluate import NORMAL
    from .stats import paired_bootstrap

    labels = evaluations[baseline, seeds[0]].labels
    for (arm, seed), result in evaluations.items():
        if list(result.labels.index) != list(labels.index):
            raise RuntimeError(
                f"{arm} seed {seed} was evaluated on other images than the baseline "
                f"({len(result.labels)} against {len(labels)}): the paired comparison needs the same set"
            )
    abnormal = abnormal_classes(labels)
    groups = eval_groups(eval_root, list(labels.index), resample)
    if groups is not None:
        progress(
            f"the bootstrap resamples the {len(set(groups))} reports the {len(groups)} "
            "evaluation images were rendered from (renders of one report stay together)"
        )
    differences = []
    for arm in dict.fromkeys(a for a, _ in evaluations):
        if arm == baseline:
            continue
        for metric in DIFFERENCES:
            columns = abnormal if metric == "macro_auc" else [NORMAL]
            if not columns:
                continue
            y = labels[columns].to_numpy(dtype=float)
            if metric == "normal_auc_centroid":  # each run's prompt-free normal score
                scores = {
                    a: [evaluations[a, s].centroid_scores.to_numpy(dtype=float)[:, None] for s in seeds]
                    for a in (arm, baseline)
                }
                if any(np.isnan(x).all() for xs in scores.values() for x in xs):
                    continue
            else:
                scores = {
                    a: [evaluations[a, s].scores[columns].to_numpy(dtype=float) for s in seeds] for a in (arm, baseline)
                }
            diff = paired_bootstrap(y, scores[arm], scores[baseline], metric=metric, n_boot=n_boot, groups=groups)
            differences.append({"arm": arm, "baseline": baseline, **diff.to_dict()})
            progress(f"{arm} − {baseline}, {metric}: {diff.text()}")
    return differences


def eval_groups(eval_root: Path, image_ids: list[str], resample: str = "auto") -> list[str] | None:
    """The report each evaluation image was rendered from (the demo world's
    ``WORLD/offclip_demo/eval_images.csv`` beside ``WORLD/eval/<dataset>``), for a bootstrap that
    resamples reports; None when images are resampled (``resample="images"``, or ``auto`` without
    that table, or one that does not cover every image)."""
    if resample == "images":
        return None
    table = Path(eval_root).resolve().parents[1] / "offclip_demo" / "eval_images.csv"
    found = None
    if table.is_file():
        mapping = pd.read_csv(table, dtype={"image_id": str, "openi_uid": str}).set_index("image_id")["openi_uid"]
        if set(image_ids) <= set(mapping.index):
            found = [str(mapping[i]) for i in image_ids]
    if found is None and resample == "reports":
        raise ValueError(
            f"--resample reports needs {table} covering every evaluation image (a demo world built with --eval-images)"
        )
    return found


def record_differences(
    manifest: Path,
    differences: list[dict],
    dataset: str,
    run_names: dict[str, str],
    losses: dict[str, str | None],
    protocol: str = "offclip",
) -> None:
    """The pooled differences as rows of the manifest's ``evaluations`` (one evaluation per arm,
    named ``run_names[arm]``, e.g. ``compare:<arm>-vs-<baseline>``; metrics ``delta_<metric>``,
    ``…_low``, ``…_high``)."""
    from ..data_contracts.manifest import EVALUATIONS, OVERALL
    from ..pipeline.manifest import record_evaluations

    now = dt.datetime.now(dt.UTC)
    rows = []
    for arm in dict.fromkeys(d["arm"] for d in differences):
        evaluation_id = str(uuid.uuid4())
        base = {
            "evaluation_id": evaluation_id,
            "evaluated_at": now,
            "model_dir": None,
            "run_name": run_names[arm],
            "loss": losses.get(arm),
            "seed": None,
            "dataset": dataset,
            "class_name": OVERALL,
            "protocol": protocol,
        }
        for d in (d for d in differences if d["arm"] == arm):
            for suffix, key in (("", "estimate"), ("_low", "low"), ("_high", "high")):
                rows.append(
                    {
                        **base,
                        "metric": f"delta_{d['metric']}{suffix}",
                        "value": float(d[key]),
                        "n_pos": d["n_images"],
                        "n_neg": None,
                    }
                )
    if rows:
        frame = pd.DataFrame(rows, columns=EVALUATIONS.names)
        for column in ("n_pos", "n_neg", "seed"):
            frame[column] = frame[column].astype("Int64")
        record_evaluations(manifest, frame)


def per_class_auc(classes: dict) -> pd.DataFrame:
    """Per-class AUC of every arm, mean and sd over seeds, from ``{(arm, seed): [class rows]}``
    (an evaluation's ``classes`` records, as in its JSON): one row per (class, arm) with a defined
    AUC, classes in evaluation order (normal first); columns ``class_name``, ``arm``, ``n_pos``,
    ``mean``, ``sd``, ``seeds``."""
    rows = [
        {"arm": arm, "seed": seed, "class_name": c["class_name"], "n_pos": c["n_pos"], "auc": c["auc"]}
        for (arm, seed), records in classes.items()
        for c in records
    ]
    frame = pd.DataFrame(rows, columns=["arm", "seed", "class_name", "n_pos", "auc"]).dropna(subset=["auc"])
    grouped = frame.groupby(["class_name", "arm"], sort=False)
    return grouped.agg(
        n_pos=("n_pos", "max"), mean=("auc", "mean"), sd=("auc", "std"), seeds=("auc", "size")
    ).reset_index()


def per_class_markdown(table: pd.DataFrame, labels: dict | None = None) -> str:
    """:func:`per_class_auc` as a markdown table: a row per class, a column per arm."""
    if table.empty:
        return ""
    arms = list(dict.fromkeys(table["arm"]))
    if labels:  # in the labels' order (the baseline first)
        arms = sorted(arms, key=lambda a: list(labels).index(a) if a in labels else len(labels))
    names = [f"{a} ({labels[a][2]})" if labels and a in labels else a for a in arms]
    lines = [
        "Per-class AUC (mean ± sd over seeds; the classes with positives in the evaluation set):",
        "",
        "| class | positives | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for name, rows in table.groupby("class_name", sort=False):
        cells = {r["arm"]: _cell(r["mean"], r["sd"], 3) for r in rows.to_dict("records")}
        lines.append(f"| {name} | {int(rows['n_pos'].max())} | " + " | ".join(cells.get(a, "n/a") for a in arms) + " |")
    return "\n".join(lines)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of each metric per arm."""
    grouped = runs.groupby("arm", sort=False)[list(METRICS)]
    mean, sd = grouped.mean(), grouped.std(ddof=1)
    return pd.concat({"mean": mean, "sd": sd}, axis=1)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _cell(mean: float, sd: float, digits: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if pd.isna(sd) else f" ± {sd:.{digits}f}")


def to_markdown(
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    differences: list[dict],
    config: CompareConfig,
    n_images: int,
    n_normal: int,
    protocol: str = "offclip",
) -> str:
    prompts = f"prompts `{config.prompts}`" if config.prompts else "the default prompts"
    if protocol != "offclip":
        prompts = f"the `{protocol}` protocol (its classes, prompts and image filter: models/evaluate/protocols.json)"
    seeds = ", ".join(map(str, config.seeds))
    start = f"refining `{config.init}`" if config.init else "from scratch"
    lines = [
        f"Config `{config.config}` ({start}), seeds {seeds}; evaluated on `{config.eval_root}` "
        f"({n_images} images, {n_normal} normal) with {prompts}. Per arm: mean ± sd over seeds.",
        "",
        "| arm | what it is | " + " | ".join(HEADERS) + " |",
        "|---|---|" + "---|" * len(HEADERS),
    ]
    for arm in summary.index:
        cells = [
            _cell(summary.loc[arm, ("mean", m)], summary.loc[arm, ("sd", m)], 1 if m.startswith("normal_f") else 3)
            for m in METRICS
        ]
        lines.append(f"| {arm} | {ARMS[arm][2]} | " + " | ".join(cells) + " |")
    if differences:
        level = int(round(100 * differences[0]["level"]))
        groups = differences[0].get("n_groups")
        unit = (
            f"{groups} reports the {n_images} images were rendered from (a report's renders together)"
            if groups
            else f"{n_images} images"
        )
        lines += [
            "",
            f"Against `{config.baseline}` ({ARMS[config.baseline][2]}): the paired difference, pooled over "
            f"seeds, with its {level} % bootstrap interval ({differences[0]['n_boot']} resamples of the "
            f"{unit}, paired within each seed); then the difference seed by seed.",
            "",
            "| arm | " + " | ".join(f"{h} [95 % CI] | per seed" for h in DIFFERENCE_HEADERS) + " |",
            "|---|" + "---|---|" * len(DIFFERENCE_HEADERS),
        ]
        for arm in dict.fromkeys(d["arm"] for d in differences):
            cells = []
            for metric in DIFFERENCES:
                d = next((d for d in differences if d["arm"] == arm and d["metric"] == metric), None)
                if d is None:
                    cells += ["n/a", ""]
                    continue
                cells += [
                    f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
                    " ".join(f"{v:+.3f}" for v in d["per_seed"]),
                ]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per run:",
        "",
        "| arm | seed | " + " | ".join(METRICS) + " | steps |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for row in runs.to_dict("records"):
        lines.append(
            f"| {row['arm']} | {row['seed']} | "
            + " | ".join(_fmt(row[m], 1 if m.startswith("normal_f") else 3) for m in METRICS)
            + f" | {row['steps']} |"
        )
    return "\n".join(lines)

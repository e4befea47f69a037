"""The ``offclip/train``, ``offclip/evaluate`` and ``offclip/retrain`` flows.

``train`` fits the dual encoder on a shard set (``offclip.models.train``) and, when
``trigger_evaluate`` is on and the ``offclip/evaluate`` deployment exists, starts an evaluation
of the new model. ``evaluate`` scores a model zero-shot on an evaluation set
(``offclip.models.evaluate``) and records the figures in the manifest's ``evaluations`` table.
``retrain`` is the scheduled one (cron in prefect.yaml): an incremental build-shards, then train
and evaluate — only when the build added samples to the shards.

As in ``flows/build.py``, the work is one task per stage (training is one long task with a
progress artifact, never a task per step); the library code lives in ``offclip.models``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from offclip.flows.artifacts import finite, markdown_on_root, table_rows
from offclip.flows.build import build_shards, current_run_id, trigger_deployment
from offclip.flows.naming import run_namer
from offclip.flows.parameters import EvaluateParameters, RetrainParameters, TrainParameters, flow_parameters
from offclip.pipeline.layout import MANIFEST_FILE
from offclip.pipeline.manifest import append_runs, query, run_record
from offclip.pipeline.shards import complete_shards

#: seconds between two updates of the training progress artifact (each is an API call)
PROGRESS_EVERY_S = 2.0


def shard_fingerprint(shards: str | Path, split: str = "train") -> str:
    """A short digest of a split's complete shards: the same shards give the same run directory."""
    records = complete_shards(Path(shards), split)
    digest = hashlib.sha256("".join(f"{r.name}:{r.sha256}" for r in records).encode()).hexdigest()
    return digest[:10]


def default_run_dir(
    shards: str | Path, config: str, loss: str, seed: int, text_source: str | None = None, init: str | None = None
) -> Path:
    """``SHARDS/runs/<config>[-refine-<init>]-<loss>[-<text source>]-seed<S>-<shards digest>``:
    re-running on the same shards resumes (or finds finished) the same run; new shards start a new
    one; a refinement of a checkpoint (``init``) is named after the checkpoint's directory."""
    name = Path(config).stem if str(config).endswith(".json") else config
    if init:
        name = f"{name}-refine-{Path(init).name}"
    text = f"-{text_source}" if text_source and text_source != "filtered" else ""
    return Path(shards) / "runs" / f"{name}-{loss}{text}-seed{seed}-{shard_fingerprint(shards)}"


def default_eval_root(shards: str | Path, dataset: str = "vindr-cxr") -> str | None:
    """The evaluation set beside the source the shards were built from (a demo world writes
    ``eval/<dataset>``), found through the manifest's last build run; None when there is none."""
    db = Path(shards) / MANIFEST_FILE
    if not db.is_file():
        return None
    runs = query(db, "SELECT parameters FROM runs WHERE stage = 'build-shards' ORDER BY started_at DESC LIMIT 1")
    if not len(runs):
        return None
    source = json.loads(runs["parameters"].iloc[0]).get("source")
    root = Path(source) / "eval" / dataset if source else None
    return str(root) if root is not None and root.is_dir() else None


def _cell(value: Any, digits: int = 4) -> str:
    """A summary value as a markdown cell: ``digits`` decimals for a float, "–" for an undefined one."""
    value = finite(value)
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _png_markdown(path: Path | None, title: str) -> str:
    """A PNG inlined into an artifact (the Prefect UI renders data URIs; the file may be remote)."""
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"\n\n![{title}](data:image/png;base64,{data})\n\n`{path}`\n"


# a retry resumes from the run's last checkpoint (exact resume), so it costs at most 50 steps
@task(name="train-model", task_run_name="train {label}", retries=1, retry_delay_seconds=5)
def train_task(config: dict, label: str = "model") -> dict:
    """One training run; its progress artifact (key ``offclip-train-progress-<slug of label>``)
    says what trains, the step, the loss and the time left (``offclip wait`` prints it)."""
    from offclip.models.train import TrainConfig, train

    logger = get_run_logger()
    key = "offclip-train-progress-" + "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    # sync code: the UUID, not a coroutine (Prefect's async_dispatch is typed as either)
    progress = cast(UUID, create_progress_artifact(0.0, key=key[:64], description=f"{label}: starting"))
    last: dict[str, Any] = {"t": 0.0, "first_step": None}  # first_step, first_t: set on the first step

    def on_step(metrics: dict) -> None:
        total = metrics.get("total_steps") or 0
        now = time.monotonic()
        if last["first_step"] is None:
            last["first_step"], last["first_t"] = metrics["step"] - 1, now - 1e-9
        if total and (now - last["t"] >= PROGRESS_EVERY_S or metrics["step"] >= total):
            done = metrics["step"] - last["first_step"]
            left = (total - metrics["step"]) * (now - last["first_t"]) / max(done, 1)
            # below 100 until the run is over: 100 is the "trained" line, the one `offclip wait` prints last
            update_progress_artifact(
                progress,
                min(99.0, 100.0 * metrics["step"] / total),
                description=progress_line(label, metrics["step"], total, metrics["loss"], left),
            )
            last["t"] = now
        if metrics["step"] % 50 == 0:
            logger.info("%s: step %d/%d, loss %.4f", label, metrics["step"], total, metrics["loss"])

    result = train(TrainConfig(**config), on_step=on_step)
    update_progress_artifact(
        progress, 100.0, description=f"{label}: trained, {result.steps} steps, final loss {result.final_loss:.4f}"
    )
    logger.info(
        "%s: trained %d steps in %.0f s (%.1f images/s): %s",
        label,
        result.steps,
        result.seconds,
        result.images_per_second,
        result.model_dir,
    )
    return result.to_dict()


def model_label(loss: str, text_source: str | None, config: str) -> str:
    """What a model is, in the ablation's words (``models.compare.ARMS``): ``OFF-CLIP``, ``plain
    CLIP (baseline)``, ``filter only``, ``loss only``."""
    from offclip.models.clip import load_model_config
    from offclip.models.compare import ARMS

    if text_source is None:
        text_source = load_model_config(config).get("train", {}).get("text_source") or "filtered"
    arm = ARMS.get(f"{loss}/{text_source}")
    return arm[2] if arm else f"{loss} on {text_source} text"


def _record_train(db: Path, started: dt.datetime, settings: dict, result: dict) -> None:
    """The training run's row in the manifest's ``runs`` table (when the manifest exists)."""
    if db.is_file():
        append_runs(
            db,
            [
                run_record(
                    "train",
                    started,
                    settings,
                    {k: result[k] for k in ("steps", "epochs", "final_loss", "images_per_second")},
                    model_version=Path(result["model_dir"]).parent.name,
                )
            ],
        )


def _train_artifacts(result: dict, label: str, run_name: str, config: str, seed: int, key: str) -> None:
    """A trained model's metrics table and its summary with the training curve, under ``key``."""
    create_table_artifact(
        key=f"{key}-metrics",
        table=table_rows({"metric": k, "value": v} for k, v in result.items() if isinstance(v, (int, float))),
        description=f"{label}: training metrics ({run_name})",
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=f"## {label}\n\nRun `{run_name}`: config `{config}`, seed {seed}, {result['steps']} steps, "
        f"final loss {result['final_loss']:.4f}, {result['images_per_second']:.1f} images/s.\n\n"
        f"Model: `{result['model_dir']}`" + _png_markdown(result.get("plot_path"), "training curve"),
        description=f"{label}: training curve and where the model is",
    )


def progress_line(label: str, step: int, total: int, loss: float, seconds_left: float) -> str:
    """``plain CLIP (baseline): step 630/1,260 · loss 3.214 · about 2 min left``: what a person
    waiting reads (the progress artifact's description; ``offclip wait`` prints it)."""
    left = f"about {seconds_left / 60:.0f} min left" if seconds_left >= 90 else f"about {seconds_left:.0f} s left"
    return f"{label}: step {step:,}/{total:,} · loss {loss:.3f} · {left}"


@task(name="evaluate-model", retries=1, retry_delay_seconds=5)
def evaluate_task(
    model: str,
    dataset: str,
    root: str,
    out: str,
    manifest: str | None,
    run_name: str | None,
    prompts: str | None = None,
    protocol: str = "offclip",
) -> dict:
    from offclip.models.evaluate import evaluate as run_evaluation

    result = run_evaluation(
        model,
        dataset,
        root,
        out=Path(out),
        manifest=Path(manifest) if manifest else None,
        run_name=run_name,
        prompts=prompts,
        protocol=protocol,
    )
    return result.to_dict()


@task(name="evaluate-against-baseline", retries=1, retry_delay_seconds=5)
def evaluate_against_task(
    model: str,
    baseline: str,
    dataset: str,
    root: str,
    out: str,
    baseline_out: str,
    manifest: str | None,
    run_name: str,
    baseline_name: str,
    prompts: str | None = None,
    protocol: str = "offclip",
    n_boot: int = 2000,
) -> dict:
    """Evaluate MODEL and BASELINE on the same set, then the paired difference of the model
    against the baseline (normal AUC, macro AUC, prompt-free normal AUC) with its 95 % bootstrap
    interval; the differences also go to the manifest as ``<run_name>-vs-<baseline_name>``."""
    from offclip.models.compare import paired_differences, record_differences
    from offclip.models.evaluate import evaluate as run_evaluation

    results = {}
    for name, path, where, label, role in (
        (run_name, model, out, "the model", "model"),
        (baseline_name, baseline, baseline_out, "plain CLIP (baseline)", "baseline"),
    ):
        artifact = cast(  # sync code: the UUID, not a coroutine
            UUID,
            create_progress_artifact(
                0.0, key=f"offclip-eval-progress-{role}", description=f"evaluating {label} on {dataset}"
            ),
        )
        results[name, 0] = run_evaluation(
            path,
            dataset,
            root,
            out=Path(where),
            manifest=Path(manifest) if manifest else None,
            run_name=name,
            prompts=prompts,
            protocol=protocol,
        )
        summary = results[name, 0].summary
        update_progress_artifact(
            artifact,
            100.0,
            description=(
                f"evaluated {label} on {dataset}: {summary.get('n_images')} images, normal AUC "
                f"{_cell(summary.get('normal_auc'), 3)}, macro AUC {_cell(summary.get('macro_auc'), 3)}"
            ),
        )
    differences = paired_differences(
        results, baseline_name, (0,), Path(root), n_boot=n_boot, progress=get_run_logger().info
    )
    if manifest and differences:
        record_differences(
            Path(manifest),
            differences,
            dataset,
            {run_name: f"{run_name}-vs-{baseline_name}"},
            {run_name: results[run_name, 0].loss},
            protocol=protocol,
        )
    return {
        **results[run_name, 0].to_dict(),
        "baseline": results[baseline_name, 0].to_dict(),
        "differences": differences,
    }


def against_baseline_markdown(result: dict) -> str:
    """The model beside the baseline and the paired differences, as a markdown table."""
    base, summary = result["baseline"]["summary"], result["summary"]
    lines = [
        f"| | {result['run_name']} | {result['baseline']['run_name']} (baseline) | difference [95 % CI] |",
        "|---|---|---|---|",
    ]
    for d in result["differences"]:
        metric = d["metric"]
        lines.append(
            f"| {metric} | {summary.get(metric, float('nan')):.3f} | {base.get(metric, float('nan')):.3f} | "
            f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |"
        )
    first = result["differences"][0] if result["differences"] else {}
    unit = (
        f"{first.get('n_groups')} reports ({first.get('n_images')} images)"
        if first.get("n_groups")
        else f"{first.get('n_images', summary.get('n_images'))} images"
    )
    return (
        "\n".join(lines) + f"\n\nOne seed; the interval resamples the {unit} of the evaluation set, so it "
        "says how much the figure could move with another evaluation set, not with another training seed."
    )


@flow(name="offclip", flow_run_name=run_namer("train"), log_prints=True)
@flow_parameters(TrainParameters)
def train(**parameters: Any) -> dict[str, Any]:
    """Train the dual encoder on the shards under SHARDS (a build-shards output); the run goes
    to ``run_dir`` (default ``SHARDS/runs/<config>-<loss>[-report]-seed<S>-<digest>``; an
    unfinished run there is resumed exactly), or refine the checkpoint ``init`` (saved in the
    same format) with ``config``'s training settings. With ``baseline``, the plain CLIP (InfoNCE
    on whole reports, the same config, seed and budget) is trained beside it. Then start
    ``offclip/evaluate`` on the model (and the baseline) when deployed.

    The parameters are ``TrainParameters`` (``flows/parameters.py``).
    """
    p = TrainParameters(**parameters)
    shards, config, loss, seed, text_source = p.shards, p.config, p.loss, p.seed, p.text_source
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    run = Path(p.run_dir) if p.run_dir else default_run_dir(shards, config, loss, seed, text_source, p.init)
    # what the training stage takes (None: the model config's own setting), as the manifest records it
    settings = {
        "shards": shards,
        "out": str(run),
        "config": config,
        "loss": loss,
        "abnormal_weight": p.abnormal_weight,
        "seed": seed,
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "lr": p.lr,
        "max_steps": p.max_steps,
        "device": p.device,
        "amp": p.amp,
        "num_workers": p.num_workers,
        "text_model": p.text_model,
        "vision_model": p.vision_model,
        "allow_shard_change": p.allow_shard_change,
        "text_source": text_source,
        "init": p.init,
        "trace_every": p.trace_every,
    }
    label = model_label(loss, text_source, config)
    base_label = model_label("infonce", "report", config)
    if p.baseline and label != base_label:
        logger.info(
            "two models train, one after the other: %s, then %s (the same config, seed and steps)", label, base_label
        )
    result = {"flow_run": current_run_id(), **train_task(settings, label=label)}
    db = Path(shards) / MANIFEST_FILE
    _record_train(db, started, settings, result)
    _train_artifacts(result, label, run.name, config, seed, key="offclip-train")
    if p.baseline and label != base_label:
        base_run = (
            run.with_name(f"{run.name}-baseline")
            if p.run_dir
            else default_run_dir(shards, config, "infonce", seed, "report", p.init)
        )
        logger.info("training the %s beside it → %s", base_label, base_run)
        base_settings = {**settings, "out": str(base_run), "loss": "infonce", "text_source": "report"}
        trained = train_task(base_settings, label=base_label)
        _record_train(db, started, base_settings, trained)
        _train_artifacts(trained, base_label, base_run.name, config, seed, key="offclip-baseline-train")
        result["baseline_model_dir"] = trained["model_dir"]
    if p.trigger_evaluate:
        root = p.eval_root or default_eval_root(shards, p.eval_dataset)
        if root is None:
            logger.warning("no evaluation set found for %s (pass eval_root): evaluate not triggered", p.eval_dataset)
        else:
            result["evaluate_run"] = trigger_deployment(
                "offclip/evaluate",
                {
                    "model": result["model_dir"],
                    "dataset": p.eval_dataset,
                    "root": root,
                    "manifest": str(db) if db.is_file() else None,
                    **({"baseline": result["baseline_model_dir"]} if "baseline_model_dir" in result else {}),
                },
            )
    return result


@flow(name="offclip", flow_run_name=run_namer("evaluate"), log_prints=True)
@flow_parameters(EvaluateParameters)
def evaluate(**parameters: Any) -> dict[str, Any]:
    """Zero-shot evaluation of MODEL (a trained model directory) on DATASET at ROOT (VinDr-CXR,
    Open-I, CheXpert or PadChest in their own formats): per-class AUC (normal included),
    Youden accuracy, normal FP/FN, pointing game; JSON + ROC plot under ``out`` (default
    ``MODEL/../eval``), rows in the manifest's ``evaluations`` table when ``manifest`` is given.
    ``baseline``: a second model directory (e.g. the plain CLIP ``train(baseline=True)`` made),
    evaluated on the same set; the paired difference of MODEL against it, with a 95 % bootstrap
    interval, is logged, kept as an artifact and recorded in the manifest.

    The parameters are ``EvaluateParameters`` (``flows/parameters.py``).
    """
    p = EvaluateParameters(**parameters)
    model, dataset, root, manifest, run_name, prompts, baseline = (
        p.model,
        p.dataset,
        p.root,
        p.manifest,
        p.run_name,
        p.prompts,
        p.baseline,
    )
    if root is None:
        raise ValueError(f"evaluate needs root: the {dataset} directory (a demo world has WORLD/eval/{dataset})")
    started = dt.datetime.now(dt.UTC)
    # another protocol's files go beside the default's, not over them
    from offclip.models.evaluate.runner import default_out

    out = p.out or str(default_out(model, p.protocol))
    name = run_name or Path(model).parent.name
    if baseline:
        base_name = Path(baseline).parent.name
        if base_name == name:
            base_name = f"{base_name}-baseline"
        result = {
            "flow_run": current_run_id(),
            **evaluate_against_task(
                model,
                baseline,
                dataset,
                root,
                out,
                str(Path(baseline).parent / Path(out).name) if not p.out else str(Path(baseline).parent / "eval"),
                manifest,
                name,
                base_name,
                prompts,
                p.protocol,
            ),
        }
        table = against_baseline_markdown(result)
        print(f"{dataset}: {name} against the baseline {base_name}\n{table}")
        create_markdown_artifact(
            key="offclip-eval-vs-baseline",
            markdown=f"## against the baseline\n\n{table}",
            description="the model against the plain CLIP, paired, with 95 % intervals",
        )
        from offclip.models.answer import answer_text

        loss_labels: dict[str | None, str] = {"offclip": "OFF-CLIP"}  # a result may have no loss

        answer = answer_text(
            result["summary"],
            result["baseline"]["summary"],
            result["differences"],
            model_label=loss_labels.get(result.get("loss"), name),
            dataset=dataset,
        )
        print(answer)
        listed = answer.replace(chr(10) + "  ", chr(10) + "- ")
        markdown = f"## The answer\n\n{listed}\n\n{table}\n\nModel `{model}`, baseline `{baseline}`."
        description = "the answer: the model against the plain CLIP, with 95 % intervals"
        create_markdown_artifact(key="offclip-answer", markdown=markdown, description=description)
        try:  # a copy for the top run: its failure must not fail an evaluation that succeeded
            markdown_on_root("offclip-answer", markdown, description)
        except Exception as exc:  # noqa: BLE001 (any API error)
            get_run_logger().warning("the answer was not copied to the top-level run: %s", exc)
    else:
        result = {
            "flow_run": current_run_id(),
            **evaluate_task(model, dataset, root, out, manifest, name, prompts, p.protocol),
        }
    summary = result.get("summary", {})
    if manifest:
        append_runs(
            manifest,
            [
                run_record(
                    "evaluate",
                    started,
                    {"model": model, "dataset": dataset, "root": root},
                    {k: v for k, v in summary.items() if isinstance(v, (int, float))},
                    model_version=run_name or Path(model).parent.name,
                )
            ],
        )
    _eval_artifacts(result, dataset, model, Path(out), key="offclip-eval")
    if baseline:
        _eval_artifacts(
            result["baseline"],
            dataset,
            baseline,
            Path(baseline).parent / "eval",
            key="offclip-baseline-eval",
            label="plain CLIP (baseline)",
        )
    return result


def _eval_artifacts(result: dict, dataset: str, model: str, out: Path, key: str, label: str = "") -> None:
    """One evaluated model's per-class table and its summary with the ROC plot, under ``key``."""
    what = f"{label}: " if label else ""
    create_table_artifact(
        key=f"{key}-metrics",
        table=table_rows(
            result.get("classes", []), first=("class_name", "kind", "auc"), last=("prompt",), text=("prompt",)
        ),
        description=f"{what}evaluate {dataset}: per-class metrics",
    )
    summary = result.get("summary", {})
    lines = "\n".join(f"| {k} | {_cell(v)} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=f"## {what}offclip evaluate: {dataset}\n\nModel `{model}`\n\n| metric | value |\n|---|---|\n{lines}"
        + _png_markdown(Path(result.get("files", {}).get("roc") or out / f"{dataset}_roc.png"), "ROC curves"),
        description=f"{what}summary metrics and ROC curves",
    )


@flow(name="offclip", flow_run_name=run_namer("retrain"), log_prints=True)
@flow_parameters(RetrainParameters)
def retrain(**parameters: Any) -> dict[str, Any]:
    """Scheduled retraining: an incremental build-shards of SOURCE into OUT, then — only when it
    added samples to the shards (or ``force``) — train on the shards and evaluate the model.

    The parameters are ``RetrainParameters`` (``flows/parameters.py``).
    """
    p = RetrainParameters(**parameters)
    logger = get_run_logger()
    built = build_shards(
        source=p.source,
        out=p.out,
        folders=p.folders,
        image_size=p.image_size,
        classifier=p.classifier,
        seed=p.seed,
        task_runner=p.task_runner,
        trigger_train=False,
    )
    new = int(built.get("samples_written", 0))
    if not new and not p.force:
        logger.info(
            "nothing new: %d studies unchanged, no new samples in the shards; not retraining", built.get("unchanged", 0)
        )
        return {"skipped": True, "reason": "no new samples", "build": built}
    trained = train(
        shards=p.out,
        config=p.config,
        loss=p.loss,
        seed=p.seed,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        trigger_evaluate=False,
    )
    root = p.eval_root or default_eval_root(p.out, p.eval_dataset)
    evaluated = None
    if root is None:
        logger.warning("no evaluation set found for %s (pass eval_root): not evaluated", p.eval_dataset)
    else:
        evaluated = evaluate(
            model=trained["model_dir"], dataset=p.eval_dataset, root=root, manifest=str(Path(p.out) / MANIFEST_FILE)
        )
    return {"skipped": False, "new_samples": new, "build": built, "train": trained, "evaluate": evaluated}

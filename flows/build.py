"""The ``offclip/build-shards`` flow: scan → ingest (batched) → classifier → curate → shards →
manifest, wired as Prefect tasks. Library code lives in ``offclip.pipeline``; this module only
wires stages into tasks. Imports are absolute (``offclip.…``): Prefect workers load this file by
path (``flows/build.py:build_shards`` in prefect.yaml).

Tasks take a batch or a whole stage, never one image (a run stays at hundreds of task runs);
task results are records (an ingest batch's, ~100 kB per 64 studies), paths and small
summaries, never arrays.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from offclip.flows.artifacts import short, table_rows
from offclip.flows.naming import run_namer
from offclip.flows.parameters import BuildParameters, flow_parameters, ingest_config
from offclip.flows.runners import task_executor_factory
from offclip.pipeline.curate import CurateConfig, CurateSummary
from offclip.pipeline.executor import Executor
from offclip.pipeline.ingest import BatchResult, IngestPlan, Previous, run_ingest
from offclip.pipeline.layout import classifier_dir
from offclip.pipeline.scan import StudyEntry
from offclip.pipeline.shards import ShardConfig, ShardSummary

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

#: a flow run stays at hundreds of task runs: ingest is cut into at most this many batches
MAX_INGEST_BATCHES = 200


# no Prefect cache: ingest has its own incremental skip (content hashes), and hashing the
# batch's study entries for a cache key would cost more than it saves
@task(name="ingest-batch", retries=2, retry_delay_seconds=2, tags=["offclip-io"], cache_policy=NO_CACHE)
def ingest_batch(executor: Executor, batch: list[StudyEntry], previous: Previous) -> BatchResult:
    """One batch's records (studies, images, sentences, rejects: ~100 kB per 64 studies), made by
    the executor the flow run owns and passes in (``flows/runners.py: TaskExecutor``): its
    process pool under the thread runner, the stage in place under the process and Dask runners."""
    return executor.process(batch, previous)


@task(name="train-classifier", cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
def train_classifier_task(out_dir: str, method: str, seed: int, openi: str | None, corpus: str | None = None) -> str:
    """Train on Open-I's rule labels plus those of ``corpus``'s ingested sentences (the corpus
    being curated: ingest has run)."""
    from offclip.pipeline.classifier import train_from_openi

    logger = get_run_logger()
    what = f"sentence classifier ({method})"
    artifact = cast(  # sync code: the UUID, not a coroutine (Prefect's async_dispatch is typed as either)
        UUID, create_progress_artifact(0.0, key="offclip-classifier-progress", description=f"{what}: starting")
    )

    def progress(message: str) -> None:  # the log line, and what `offclip wait` prints
        logger.info(message)
        update_progress_artifact(artifact, 0.0, description=f"{what}: {short(message, 120)}")

    metrics = train_from_openi(openi, out_dir, method=method, seed=seed, corpus=corpus, progress=progress)
    update_progress_artifact(artifact, 100.0, description=f"{what}: trained, version {metrics.get('version')}")
    logger.info("classifier %s trained: test %s", metrics.get("version"), metrics.get("test"))
    return out_dir


@task(name="curate")
def curate_task(config: CurateConfig) -> CurateSummary:
    from offclip.pipeline.curate import run_curate

    summary = run_curate(config)
    get_run_logger().info(summary.to_text())
    return summary


@task(name="write-shards", retries=1)
def shards_task(config: ShardConfig) -> ShardSummary:
    from offclip.pipeline.shards import write_shards

    summary = write_shards(config)
    get_run_logger().info(summary.to_text())
    return summary


@task(name="manifest")
def manifest_task(out: str, run: dict) -> str:
    from offclip.pipeline.manifest import build_manifest

    return str(build_manifest(out, runs=[run]))


def find_classifier(out: Path) -> Path | None:
    """A saved classifier under OUT/classifier (the one build-shards trains when none exists)."""
    path = classifier_dir(out)
    return path if (path / "offclip.json").is_file() else None


class IngestArtifacts:
    """``run_ingest``'s report in a flow run: the plan in the run's log, the batches in a progress
    artifact (what the UI shows and ``offclip wait`` prints)."""

    def __init__(self) -> None:
        self.logger = get_run_logger()
        self.artifact: UUID | None = None  # the progress artifact, once planned

    def planned(self, plan: IngestPlan) -> None:
        self.logger.info("source: %s", plan.source)
        self.logger.info(
            "scan: %d studies (%d unchanged since the last run: not read), %d batches (%.1f s); %d scan rejects",
            len(plan.studies),
            len(plan.unchanged),
            len(plan.batches),
            plan.scan_seconds,
            len(plan.rejects),
        )
        self.artifact = cast(
            UUID,
            create_progress_artifact(
                0.0, key="offclip-ingest-progress", description=f"ingest: 0/{len(plan.batches)} batches of studies"
            ),
        )
        if not plan.batches:
            update_progress_artifact(
                self.artifact, 100.0, description="ingest: every study unchanged since the last run"
            )

    def batch_done(self, batch: list[StudyEntry], done: int, total: int) -> None:
        assert self.artifact is not None, "run_ingest reports the plan before any batch"
        update_progress_artifact(
            self.artifact, 100.0 * done / total, description=f"ingest: {done}/{total} batches of studies"
        )

    def close(self) -> None:
        pass


def run_stages(params: BuildParameters) -> dict:
    """The build inside the ``build-shards`` flow run: ingest through the same driver as
    ``offclip ingest`` (``run_ingest``), its batches as tasks on the task runner that
    ``params.task_runner`` names (entered here, not through a sub-flow: a flow run costs ~1 s to
    start and stop); the other stages are one task each, run in place, each returning its own
    summary."""
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    out = Path(params.out)
    config = ingest_config(params)
    # made (and so checked: the label files, the policy) before a long ingest; MIMIC's label files
    # are in the metadata directory when one is given, else in the source root; the classifier is
    # the one given, else OUT/classifier (trained below when there is none)
    curate = CurateConfig(
        out=out,
        classifier=Path(params.classifier) if params.classifier else classifier_dir(out),
        threshold=params.threshold,
        prompting=params.prompting,
        prompt_options=dict(params.prompt_options or {}),
        label_source=params.label_source,
        label_dirs=[Path(d) for d in (params.metadata, params.source) if d],
        label_policy=params.label_policy,
    )

    # -- ingest: the flow run owns the executor (made once the plan is known, closed at the end):
    # under the thread runner a pool of worker processes (the tasks share one GIL), under the
    # process and Dask runners the stage in place in the runner's workers (flows/runners.py)
    executor = task_executor_factory(ingest_batch, params.task_runner, params.workers, params.dask_address)
    ingest = run_ingest(config, executor, max_batches=MAX_INGEST_BATCHES, report=IngestArtifacts())
    logger.info(ingest.to_text())

    # -- classifier: given, found under OUT/classifier, or trained now ---------------------------
    if not params.classifier and find_classifier(out) is None:
        logger.info(
            "no classifier version exists: training one on Open-I + this corpus's sentences (%s)",
            params.classifier_method,
        )
        train_classifier_task(str(curate.classifier), params.classifier_method, params.seed, params.openi, str(out))
    curated = curate_task(curate)
    shards = shards_task(ShardConfig(out=out, max_samples=params.shard_size, max_bytes=params.shard_bytes))

    from offclip.pipeline.manifest import run_record

    counts = {**ingest.counts(), **curated.counts(), **shards.counts()}
    # the run's parameters, every one (defaults included), as the manifest's runs table keeps them
    db = manifest_task(
        str(out), run_record("build-shards", started, params.model_dump(), counts, curated.model_version)
    )
    _artifacts(db, ingest.rejects_by_reason, counts)
    return {
        "manifest": db,
        "classifier": str(curate.classifier),
        "new_studies": ingest.studies - ingest.skipped,
        **counts,
    }


def _artifacts(db: str, rejects: dict, counts: dict) -> None:
    from offclip.pipeline.manifest import query

    create_table_artifact(
        key="offclip-build-counts",
        table=table_rows(
            [{"what": k, "count": v} for k, v in counts.items() if isinstance(v, (int, float))]
            + [{"what": f"reject: {k}", "count": v} for k, v in rejects.items()]
        ),
        description="build-shards: counts and reject reasons",
    )
    labels = query(db, "SELECT * FROM label_distribution")
    health = query(db, "SELECT * FROM shard_health")
    create_markdown_artifact(
        key="offclip-build-summary",
        markdown="## offclip build-shards\n\n### Pair labels\n\n"
        + labels.to_markdown(index=False)
        + "\n\n### Shards\n\n"
        + health.to_markdown(index=False)
        + "\n\n"
        + disagreement_markdown(db)
        + f"\n\nManifest: `{db}`\n",
        description="label distribution, shard health, classifier/rule disagreements",
    )


#: disagreements listed in the build summary artifact
TOP_DISAGREEMENTS = 20


def disagreement_markdown(db: str, top: int = TOP_DISAGREEMENTS) -> str:
    """The build summary's audit of the sentence filter: classifier × rules counts, and the
    ``top`` distinct sentences where they disagree, by reports touched."""
    from offclip.pipeline.manifest import query

    agreement = query(db, "SELECT * FROM classifier_rule_agreement")
    # the labels first, the sentence last and cut: a long sentence must not push them out of view
    worst = query(
        db,
        f"SELECT classifier_label, rule_label, label, reports, round(score, 3) AS score, rule, text "
        f"FROM classifier_rule_disagreements LIMIT {int(top)}",
    )
    worst["text"] = [short(t, markdown=True) for t in worst["text"]]
    text = "### Sentence filter: classifier × rules\n\n" + agreement.to_markdown(index=False)
    text += f"\n\n### Top {top} classifier/rule disagreements (by reports touched)\n\n" + (
        worst.to_markdown(index=False) if len(worst) else "(none)"
    )
    return text


@flow(name="offclip", flow_run_name=run_namer("build-shards"), log_prints=True)
@flow_parameters(BuildParameters)
def build_shards(**parameters: Any) -> dict[str, Any]:
    """Curate SOURCE (MIMIC-CXR or the demo world) into OUT: records, shards, manifest. When
    ``trigger_train`` is on and the ``offclip/train`` deployment exists, a train run is started
    on the new shards, with ``train_parameters`` on top of the shard directory, the seed and the
    source's evaluation set.

    The parameters, their types, defaults and descriptions are ``BuildParameters``
    (``flows/parameters.py``): the flow takes them flat (``-p source=…``), reads them as one
    validated model.
    """
    params = BuildParameters(**parameters)
    result = {"flow_run": current_run_id(), **run_stages(params)}
    if params.trigger_train:
        settings = {"shards": params.out, "seed": params.seed, **(params.train_parameters or {})}
        eval_root = Path(params.source) / "eval" / "vindr-cxr"
        if "eval_root" not in settings and eval_root.is_dir():
            settings["eval_root"] = str(eval_root)
        result["train_run"] = trigger_deployment("offclip/train", settings)
    return result


def current_run_id() -> str | None:
    """The id of the flow run this is called in (what `offclip wait --run` takes)."""
    from prefect.runtime import flow_run

    return flow_run.id


def trigger_deployment(deployment: str, parameters: dict) -> str | None:
    """Start a downstream deployment (without waiting); None when it is not deployed. The new
    run is linked to this flow run (its parent, on the server: `offclip wait` follows that link)
    and its id is logged and returned."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    try:
        run = cast("FlowRun", run_deployment(deployment, parameters=parameters, timeout=0))  # sync: not a coroutine
    except ObjectNotFound:
        logger.warning("deployment %s is not deployed: not triggered (offclip up deploys it)", deployment)
        return None
    logger.info("triggered %s: flow run %s (%s)", deployment, run.name, run.id)
    return str(run.id)

"""The ``offclip`` command line. Each subcommand is a thin wrapper over library code."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional, Union, get_args, get_origin

import typer

from . import __version__
from .data_contracts.enums import DEFAULT_EVAL_PROTOCOL
from .flows import parameters as flow_models
from .flows.parameters import (
    BuildParameters,
    ClassifierTrainParameters,
    CurateParameters,
    EvaluateParameters,
    FlowParameters,
    IngestParameters,
    ShardsParameters,
    TrainParameters,
)

app = typer.Typer(
    name="offclip",
    help="OFF-CLIP curation pipeline for chest X-ray CLIP training (MIMIC-CXR or the demo world).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"offclip {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """offclip: OFF-CLIP data curation and training."""


# --- commands built from the parameter models (flows/parameters.py) ---------------------------
# A field added to a model is an option of its command here, with the same name, type, default,
# choices, bounds and help; what a command does differently is said in its decorator
# (positional arguments, required ones, defaults of a direct run, old spellings, options of the
# command line only such as --quiet).


def _fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), len(args) < len(get_args(annotation))
    return annotation, False


def _is_dict(annotation: Any) -> bool:
    return annotation is dict or get_origin(annotation) is dict


def _is_sequence(annotation: Any) -> bool:
    return get_origin(annotation) in (tuple, list)


def _cli_parameter(
    name: str, field: Any, default: Any, argument: bool, *, flag: Optional[str] = None, hidden: bool = False
) -> inspect.Parameter:
    """The Typer parameter of one model field: a path for a field marked PATH, a JSON string for
    a dict, a repeatable option for a tuple, a --x/--no-x switch for a bool, a choice for a
    Literal, min/max from ge/le. ``flag``/``hidden``: an old spelling of it (hidden)."""
    base, optional = _base_type(field.annotation)
    is_path = any(isinstance(m, flow_models.PathText) for m in field.metadata)
    if _is_sequence(base):
        annotation: Any = list[Path] if is_path else list[str]
        default = list(default) if isinstance(default, (tuple, list)) else default
    elif is_path:
        annotation = Path
    elif _is_dict(base):
        annotation = str
    else:
        annotation = base
    if optional:
        annotation = Optional[annotation]
    help_text = field.description
    if argument:
        info = typer.Argument(default, help=help_text, show_default=default is not ...)
    else:
        flag = flag or flow_models.option_flag(name)
        bounds = {}
        for m in field.metadata:
            if hasattr(m, "ge"):
                bounds["min"] = m.ge
            if hasattr(m, "le"):
                bounds["max"] = m.le
        decls = (f"{flag}/--no-{flag[2:]}",) if base is bool and not hidden else (flag,)
        if _is_dict(base):
            help_text = f"{help_text} (JSON)"
        info = typer.Option(default, *decls, help=help_text, hidden=hidden, **bounds)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def model_option(model: type[FlowParameters], name: str, *, help: Optional[str] = None, **changes: Any) -> Any:
    """The Typer option of field NAME of MODEL for a command written by hand (``offclip
    compare``): the model's flag, default, bounds and help (``help``: this command's own words)."""
    field = model.model_fields[name]
    info = _cli_parameter(name, field, field.default, False).default
    if help is not None:
        info.help = help
    for key, value in changes.items():
        setattr(info, key, value)
    return info


def _parameters_from(model: type[FlowParameters], values: dict[str, Any]) -> FlowParameters:
    """MODEL from a command's option values (paths as text, dicts parsed from JSON); exit 2 with
    each invalid option named."""
    from pydantic import ValidationError

    given = {}
    for name, value in values.items():
        field = model.model_fields[name]
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = tuple(str(v) if isinstance(v, Path) else v for v in value)
        elif isinstance(value, str) and _is_dict(_base_type(field.annotation)[0]):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                _fail(ValueError(f"{flow_models.option_flag(name)}: not JSON ({exc})"))
        given[name] = value
    try:
        return model(**given)
    except ValidationError as exc:
        lines = [f"--{'.'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        _fail(ValueError("invalid parameters:\n  " + "\n  ".join(lines)))


@dataclass(frozen=True)
class Alias:
    """An old spelling of an option, kept working: ``flag`` sets field ``field`` (with ``key``,
    that key of the dict field ``field``: ``--llm-url`` → ``--prompt-options '{"base_url": …}'``).
    Hidden from --help; using it prints one line naming the new option."""

    flag: str
    field: str
    key: Optional[str] = None
    annotation: Any = str  #: a dict key's value type
    min: Optional[int] = None  #: a dict key's lower bound

    @property
    def new(self) -> str:
        return flow_models.option_flag(self.field) + (f" '{{\"{self.key}\": …}}'" if self.key else "")


#: the commands model_command made, by name (``classifier train`` for a sub-command)
MODEL_COMMANDS: dict[str, Callable[..., None]] = {}
#: the same (the flow commands among them are ``build-shards``, ``train``, ``evaluate``)
FLOW_COMMANDS = MODEL_COMMANDS


def model_command(
    name: str,
    model: type[FlowParameters],
    *,
    arguments: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    direct_defaults: Optional[dict[str, Any]] = None,
    aliases: tuple[Alias, ...] = (),
    extras: Optional[dict[str, tuple[Any, Any]]] = None,
    on: Optional[typer.Typer] = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register command NAME (on ``on``, default the ``offclip`` app) whose parameters are
    MODEL's fields: ``arguments`` positional (in field order), ``required`` without a default,
    ``direct_defaults`` a direct run's own defaults (e.g. not starting the downstream deployment
    unless asked); every other default is the model's. ``aliases``: old spellings kept working
    (hidden, warning). ``extras``: options of the command line only, name → (type, typer.Option),
    passed to the body as keywords (``quiet``). The decorated function receives the validated
    model."""
    direct_defaults, extras = dict(direct_defaults or {}), dict(extras or {})
    unknown = (set(arguments) | set(required) | set(direct_defaults) | {a.field for a in aliases}) - set(
        model.model_fields
    )
    if unknown or set(extras) & set(model.model_fields):
        raise ValueError(
            f"{name}: not fields of {model.__name__}: {sorted(unknown)}, or extras that are: "
            f"{sorted(set(extras) & set(model.model_fields))}"
        )

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        params = []
        for field_name, field in model.model_fields.items():
            if field_name in required:
                default = ...
            elif field_name in direct_defaults:
                default = direct_defaults[field_name]
            else:
                default = field.default
            params.append(_cli_parameter(field_name, field, default, field_name in arguments))
        for extra, (annotation, info) in extras.items():
            params.append(inspect.Parameter(extra, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
        alias_names = {}
        for i, alias in enumerate(aliases):
            pname = f"deprecated_{i}_{alias.flag.lstrip('-').replace('-', '_')}"
            alias_names[pname] = alias
            if alias.key is None:
                params.append(
                    _cli_parameter(pname, model.model_fields[alias.field], None, False, flag=alias.flag, hidden=True)
                )
                params[-1] = params[-1].replace(annotation=Optional[_base_type(params[-1].annotation)[0]])
            else:
                params.append(
                    inspect.Parameter(
                        pname,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=typer.Option(None, alias.flag, hidden=True, min=alias.min),  # None: no bound
                        annotation=Optional[alias.annotation],
                    )
                )

        if alias_names:  # to tell a value given on the command line from a default
            params.append(inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        def command(**values: Any) -> None:
            context = values.pop("typer_context", None)
            given = {extra: values.pop(extra) for extra in extras}
            for pname, alias in alias_names.items():
                value = values.pop(pname)
                if value is None:
                    continue
                flow_models.deprecated(alias.flag, alias.new)
                if alias.key is not None:
                    options = values.get(alias.field)
                    try:
                        options = json.loads(options) if isinstance(options, str) else dict(options or {})
                    except json.JSONDecodeError:
                        continue  # said by _parameters_from
                    options.setdefault(alias.key, value)
                    values[alias.field] = json.dumps(options)
                    continue
                source = context.get_parameter_source(alias.field) if context is not None else None
                if getattr(source, "name", None) == "COMMANDLINE" and values[alias.field] != value:
                    _fail(
                        ValueError(
                            f"{alias.flag} {value} and {alias.new} {values[alias.field]}: one setting, "
                            f"give it once ({alias.new})"
                        )
                    )
                values[alias.field] = value
            body(_parameters_from(model, values), **given)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        command.parameters_model = model  # type: ignore[attr-defined]
        command.direct_defaults = {**direct_defaults, **{r: ... for r in required}}  # type: ignore[attr-defined]
        command.aliases = tuple(aliases)  # type: ignore[attr-defined]
        command.extras = tuple(extras)  # type: ignore[attr-defined]
        (on or app).command(name.split()[-1])(command)
        MODEL_COMMANDS[name] = command
        return command

    return decorate


#: the name the flow commands were first made with
flow_command = model_command


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


_QUIET = {"quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bar."))}


@app.command("demo-world")
def demo_world(
    out: Path = typer.Argument(..., help="Directory to create (laid out like MIMIC-CXR v2.0.0)."),
    studies: int = typer.Option(
        200, "--studies", "-n", min=1, help="Studies to build (each one real Open-I report; at most 3,955)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed: same sources + studies + seed + scale -> byte-identical tree."),
    scale: float = typer.Option(
        0.25,
        "--scale",
        min=0.01,
        max=1.0,
        help="Image size relative to the real IU headers (1.0 = full size, ~3000 px).",
    ),
    faults: bool = typer.Option(
        False, "--faults", help="Inject the bad inputs a real archive has (listed in faults.json)."
    ),
    openi_dir: Optional[Path] = typer.Option(
        None,
        "--openi",
        help="Directory holding NLMCXR_reports.tgz and nlmcxr_dicom_metadata.csv.gz "
        "(default: $OFFCLIP_OPENI, then the installed torchxrayvision wheel's data/).",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes (0 = all cores)."),
    eval_images: Optional[int] = typer.Option(
        None,
        "--eval-images",
        help="Evaluation sets of N images rendered from held-out (validate/test) reports, "
        "68% normal as in VinDr-CXR, several renders per report (default: one image per held-out study).",
    ),
    layout: str = typer.Option(
        "dicom",
        "--layout",
        help="dicom (the DICOM release, with cxr-record-list.csv.gz) "
        "or jpg (MIMIC-CXR-JPG: 8-bit JPEGs, gzipped CSVs, no reports in the tree).",
    ),
    reports_archive: Optional[str] = typer.Option(
        None,
        "--reports-archive",
        help="tree (sSTUDY.txt beside the study folders), zip (mimic-cxr-reports.zip) or tgz "
        "(mimic-cxr-reports.tar.gz). Default: tree for dicom, zip for jpg.",
    ),
    metadata_csvs: str = typer.Option(
        "root",
        "--metadata-csvs",
        help="root, separate (in OUT/metadata, as a download "
        "kept apart from the images: pass it as --metadata) or none.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo world at OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build a MIMIC-CXR-shaped demo world from real Open-I reports and DICOM header statistics."""
    import json
    from dataclasses import asdict

    from .demo.world import WorldConfig, build_world
    from .pipeline.openi import OpenISourceError

    try:
        config = WorldConfig(
            out=out,
            studies=studies,
            seed=seed,
            scale=scale,
            faults=faults,
            openi=str(openi_dir) if openi_dir else None,
            workers=workers,
            progress=not quiet and sys.stderr.isatty(),
            overwrite=overwrite,
            eval_images=eval_images,
            layout=layout,
            metadata_csvs=metadata_csvs,
            reports_archive=reports_archive or ("zip" if layout == "jpg" else "tree"),
        )
        summary = build_world(config)
    except (OpenISourceError, FileExistsError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(asdict(summary), indent=2) if json_out else summary.to_text())


@model_command(
    "ingest",
    IngestParameters,
    arguments=("source", "out"),
    required=("source", "out"),
    aliases=(Alias("--long-side", "image_size"), Alias("--format", "image_format")),
    extras=_QUIET,
)
def ingest(params: IngestParameters, quiet: bool = False) -> None:
    """Scan a MIMIC-CXR tree, pick one frontal image per study, normalise it, split reports into sentences."""
    from .flows.parameters import ingest_config
    from .pipeline.ingest import run_ingest

    try:
        config = ingest_config(params, progress=not quiet and sys.stderr.isatty())
        summary = run_ingest(config)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(summary.to_text())


classifier_app = typer.Typer(
    help="The sentence anomaly classifier: train offline on Open-I rule labels, evaluate on MeSH.", no_args_is_help=True
)
app.add_typer(classifier_app, name="classifier")


@model_command(
    "classifier train", ClassifierTrainParameters, aliases=(Alias("--method", "classifier_method"),), on=classifier_app
)
def classifier_train(params: ClassifierTrainParameters) -> None:
    """Train the classifier on rule-labelled Open-I sentences (plus the corpus's, with --corpus); report the real-label figures on the Open-I test partition."""  # noqa: E501 (the help text, one paragraph)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .pipeline.classifier import train_from_openi
    from .pipeline.openi import OpenISourceError

    out_dir = Path(params.out)
    try:
        metrics = train_from_openi(
            params.openi,
            out_dir,
            method=params.classifier_method,
            seed=params.seed,
            progress=lambda m: typer.echo(m, err=True),
            corpus=_path(params.corpus),
            corpus_limit=params.corpus_limit,
        )
    except (OpenISourceError, ValueError) as exc:
        _fail(exc)
    typer.echo(
        json.dumps(
            {k: metrics[k] for k in ("version", "test", "corpus", "corpus_heldout") if metrics.get(k) is not None},
            indent=2,
            default=str,
        )
    )
    typer.echo(f"saved to {out_dir}")


@classifier_app.command("evaluate")
def classifier_evaluate(
    path: Path = typer.Argument(..., help="A saved classifier directory."),
    split: str = typer.Option("test", "--split", help="Open-I partition: train, dev or test."),
    openi_dir: Optional[Path] = typer.Option(None, "--openi"),
) -> None:
    """Evaluate a saved classifier against Open-I MeSH labels on one partition."""
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .pipeline.classifier import SentenceClassifier, evaluate_openi, openi_partition
    from .pipeline.openi import find_sources, load_reports

    clf = SentenceClassifier.load(path)
    reports = load_reports(find_sources(openi_dir).reports_tgz)
    metrics = evaluate_openi(clf, reports, openi_partition([r.uid for r in reports]), split=split)
    typer.echo(json.dumps(metrics, indent=2, default=str))


def _direct_flow_run() -> None:
    """Before a command runs a flow in this process: the project's server when `offclip up` runs
    one, else a temporary server whose start fits a cold start; Prefect's analytics off."""
    import os

    from . import service

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    typer.echo(service.use_for_direct_runs().to_text(), err=True)


@model_command(
    "curate",
    CurateParameters,
    arguments=("out",),
    required=("out", "classifier"),
    aliases=(
        Alias("--llm-url", "prompt_options", "base_url"),
        Alias("--llm-model", "prompt_options", "model"),
        Alias("--llm-concurrency", "prompt_options", "max_concurrency", int, 1),
        Alias("--llm-retries", "prompt_options", "max_retries", int, 0),
    ),
)
def curate(params: CurateParameters) -> None:
    """Score every sentence (unique text once, cached), filter normal sentences out of abnormal reports, label pairs."""
    from .pipeline.curate import CurateConfig, run_curate
    from .pipeline.prompting import PromptBackendError

    assert params.classifier is not None  # a required option of this command (optional in the flow)
    try:
        config = CurateConfig(  # checks the label source (its file) and policy
            out=Path(params.out),
            classifier=Path(params.classifier),
            threshold=params.threshold,
            prompting=params.prompting,
            prompt_options=dict(params.prompt_options or {}),
            label_source=params.label_source,
            label_dirs=[Path(d) for d in params.label_dir],
            label_policy=params.label_policy,
        )
        typer.echo(run_curate(config).to_text())
    except (FileNotFoundError, ValueError, PromptBackendError) as exc:
        _fail(exc)


@flow_command(
    "build-shards",
    BuildParameters,
    arguments=("source", "out"),
    required=("source",),
    direct_defaults={"trigger_train": False},
)
def build_shards_cmd(params: BuildParameters) -> None:
    """Run the build-shards flow directly (no deployment): ingest → classify → filter → shards → manifest."""
    from .pipeline.sources import resolve_source

    try:  # what is missing is said before a server starts (the scan resolves it again)
        resolve_source(Path(params.source), _path(params.reports), _path(params.metadata))
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    _direct_flow_run()
    from .flows.build import build_shards

    result = build_shards(**params.model_dump())
    typer.echo(json.dumps(result, indent=2, default=str))


@flow_command("train", TrainParameters, arguments=("shards",), direct_defaults={"trigger_evaluate": False})
def train_cmd(params: TrainParameters) -> None:
    """Run the train flow directly (no deployment): the dual encoder on the shards (or, with
    --init, a refinement of an existing CLIP checkpoint), then (with --eval-root) the evaluate flow
    on the new model (and the baseline)."""
    if params.init is not None:
        from .models.adapters import model_format

        try:
            model_format(Path(params.init))
        except (FileNotFoundError, ValueError) as exc:
            _fail(exc)
    _direct_flow_run()
    from .flows.train import evaluate, train
    from .pipeline.layout import manifest_path

    result = train(**params.model_dump())
    if params.eval_root and not params.trigger_evaluate:  # evaluated here, in this process
        db = manifest_path(params.shards)
        result["evaluate"] = evaluate(
            model=result["model_dir"],
            root=params.eval_root,
            dataset=params.eval_dataset,
            manifest=str(db) if db.is_file() else None,
            baseline=result.get("baseline_model_dir"),
        ).get("summary")
    typer.echo(json.dumps(result, indent=2, default=str))


@flow_command("evaluate", EvaluateParameters, arguments=("model", "root"), required=("model", "root"))
def evaluate_cmd(params: EvaluateParameters) -> None:
    """Run the evaluate flow directly: zero-shot AUC per class (normal included), normal FP/FN,
    pointing game."""
    _direct_flow_run()
    from .flows.train import evaluate

    if params.prompts is not None and not Path(params.prompts).is_file():
        _fail(FileNotFoundError(f"--prompts {params.prompts}: no such file"))
    result = evaluate(**params.model_dump())
    typer.echo(json.dumps(result.get("summary", {}), indent=2, default=str))


@app.command("compare")
def compare_cmd(
    shards: Path = typer.Argument(..., help="A build-shards output root of the demo world."),
    eval_root: Path = typer.Argument(..., help="The VinDr-CXR-format test set (WORLD/eval/vindr-cxr)."),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma-separated seeds."),
    arms: str = typer.Option(
        "all",
        "--arms",
        help="Comma-separated loss/text arms: infonce/report (plain CLIP), "
        "infonce/filtered (filter only), offclip/report (loss only), offclip/filtered (OFF-CLIP); or all.",
    ),
    baseline: str = typer.Option("infonce/report", "--baseline", help="The arm every other is compared with."),
    # the options a train run takes too: TrainParameters' (and EvaluateParameters') name, default, bounds
    config: str = model_option(TrainParameters, "config"),
    epochs: Optional[int] = model_option(TrainParameters, "epochs"),
    batch_size: Optional[int] = model_option(TrainParameters, "batch_size"),
    max_steps: Optional[int] = model_option(
        TrainParameters, "max_steps", help="Stop each run after this many steps (smoke tests)."
    ),
    prompts: Optional[Path] = model_option(
        EvaluateParameters,
        "prompts",
        help="Prompts JSON ({class: text or [texts]}); runs already trained in --out are only re-evaluated.",
    ),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, help="Bootstrap resamples of each paired difference."),
    resample: str = typer.Option(
        "auto",
        "--resample",
        help="What the bootstrap resamples: images, reports (a demo "
        "world's renders of one report together), or auto (reports when the world says which).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: SHARDS/compare."),
    device: str = model_option(TrainParameters, "device"),
    amp: str = model_option(TrainParameters, "amp"),
    init: Optional[Path] = model_option(
        TrainParameters,
        "init",
        help="Every arm refines this model directory "
        "(offclip, CLIPModel or VisionTextDualEncoderModel): the paper's setting. "
        "Default: every arm trains a fresh model of --config. Default --out: "
        "SHARDS/compare-refine-<dir name>.",
    ),
    protocol: str = typer.Option(
        DEFAULT_EVAL_PROTOCOL,
        "--protocol",
        help="The evaluation protocol: offclip "
        '(every class, "There is {finding}."), paper (OFF-CLIP\'s official classes, '
        "prompts and image filter), or both (each run evaluated under both; one set of "
        "tables per protocol in compare-both.md).",
    ),
    trace_every: int = model_option(
        TrainParameters,
        "trace_every",
        help="Every run measures the embedding geometry "
        "of 256 held-out samples every this many steps (RUN/geometry.jsonl; see "
        "results/tools/geometry_trace.py); 0: never.",
    ),
) -> None:
    """The ablation on the demo world: each arm (loss × training text) trained with the same config
    and seeds, evaluated on the same VinDr-format set; the paired difference of every arm against
    the baseline with a 95 % bootstrap interval (compare.md / .json, manifest evaluations)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .models.compare import CompareConfig, parse_arms, run_compare

    try:
        default_out = shards / (f"compare-refine-{init.name}" if init else "compare")
        settings = CompareConfig(
            shards=shards,
            eval_root=eval_root,
            out=out or default_out,
            init=init,
            seeds=tuple(int(s) for s in seeds.split(",") if s.strip()),
            arms=parse_arms(arms),
            baseline=baseline,
            config=config,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            amp=amp,
            max_steps=max_steps,
            prompts=prompts,
            n_boot=n_boot,
            resample=resample,
            protocol=protocol,
            trace_every=trace_every,
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    result = run_compare(settings, progress=lambda m: typer.echo(m, err=True))
    typer.echo(result.markdown)


@model_command(
    "shards",
    ShardsParameters,
    arguments=("out",),
    required=("out",),
    aliases=(Alias("--max-samples", "shard_size"), Alias("--max-bytes", "shard_bytes")),
    extras=_QUIET,
)
def shards(params: ShardsParameters, quiet: bool = False) -> None:
    """Write WebDataset shards (one set per split) and refresh the manifest."""
    import datetime as dt

    from .pipeline.manifest import build_manifest, run_record
    from .pipeline.shards import ShardConfig, ShardError, write_shards

    started = dt.datetime.now(dt.UTC)
    out = Path(params.out)
    try:
        result = write_shards(
            ShardConfig(out=out, max_samples=params.shard_size, max_bytes=params.shard_bytes),
            progress=not quiet and sys.stderr.isatty(),
        )
        db = build_manifest(
            out,
            runs=[
                run_record(
                    "shards",
                    started,
                    params.model_dump(exclude={"out"}),
                    {"shards_written": len(result.written), "samples": result.samples_written},
                )
            ],
        )
    except (FileNotFoundError, ShardError) as exc:
        _fail(exc)
    typer.echo(result.to_text())
    typer.echo(f"manifest: {db}")


@app.command("manifest")
def manifest(
    out: Path = typer.Argument(..., help="The curation output root."),
    build: bool = typer.Option(False, "--build", help="(Re)build the manifest from the records first."),
    db: Optional[Path] = typer.Option(None, "--db", help="Manifest file (default OUT/manifest.duckdb)."),
) -> None:
    """Print a summary of the manifest: tables, label distribution, rejects, shard health, runs.
    Reads no file outside the manifest's folder (a view over one fails)."""
    import duckdb

    from .pipeline.layout import MANIFEST_FILE
    from .pipeline.manifest import build_manifest, summary

    path = db or out / MANIFEST_FILE
    try:
        if build:
            build_manifest(out, path)
        typer.echo(summary(path))
    except (FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)


@app.command("answer")
def answer(
    out: Path = typer.Argument(..., help="The curation output root (holds manifest.duckdb)."),
    db: Optional[Path] = typer.Option(None, "--db", help="Manifest file (default OUT/manifest.duckdb)."),
    home: Optional[Path] = typer.Option(
        None,
        "--home",
        help="State directory of `offclip up` (default $OFFCLIP_HOME or ./.offclip).",
        show_default=False,
    ),
) -> None:
    """The answer in plain sentences: the newest model evaluated against its plain-CLIP baseline
    (normal AUC, macro AUC, each difference with its 95 % interval, what one run can show), and
    where to browse it. What `make demo` ends with."""
    import duckdb

    from .models.answer import latest_answer
    from .pipeline.layout import MANIFEST_FILE

    path = db or out / MANIFEST_FILE
    try:
        text = latest_answer(path)
    except (FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)
    if text is None:
        _fail(
            ValueError(
                f"{path} holds no model evaluated against a baseline yet (train with "
                "-p 'train_parameters={\"baseline\": true}', or `offclip train --baseline --eval-root …`)"
            )
        )
    typer.echo(text)
    from . import service

    ui = service.last_ui_url(home)
    where = f"{ui}/artifacts/key/offclip-answer" if ui else "the UI address it prints, Artifacts → offclip-answer"
    typer.echo(
        f"Browse it: `offclip up`, then {where} (also on the build-shards run's Artifacts tab; the "
        "per-class tables and ROC plots are on the evaluate run). Login: `offclip status --show-secret`."
    )


@app.command("sql")
def sql(
    query_text: str = typer.Argument(..., metavar="SQL", help='The query, e.g. "SELECT * FROM label_distribution".'),
    db: Path = typer.Option(Path("out/curated/manifest.duckdb"), "--db", help="Manifest file."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out_file: Optional[Path] = typer.Option(
        None, "--out", help="Write the result here instead of stdout (needed for parquet)."
    ),
    write: bool = typer.Option(False, "--write", help="Open the manifest read-write (default: read-only)."),
    allow_external: bool = typer.Option(
        False,
        "--allow-external",
        help="Let the SQL use files outside the manifest's folder (default: that folder only).",
    ),
) -> None:
    """Run SQL on a manifest (read-only by default) and print or save the result. DuckDB reads and
    writes no file outside the manifest's folder unless --allow-external; read-only it writes none."""
    import duckdb

    from .pipeline.manifest import query

    if fmt not in ("table", "csv", "json", "parquet"):
        _fail(ValueError(f"--format must be table, csv, json or parquet, not {fmt!r}"))
    if fmt == "parquet" and out_file is None:
        _fail(ValueError("--format parquet needs --out FILE"))
    try:
        df = query(db, query_text, write=write, allow_external=allow_external)
    except (FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)
    if fmt == "parquet":
        df.to_parquet(out_file, index=False)
        typer.echo(f"{len(df)} rows → {out_file}")
        return
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        text = df.to_json(orient="records", date_format="iso", force_ascii=False) + "\n"
    else:
        text = (df.to_string(index=False) if len(df) else "(no rows)") + "\n"
    if out_file:
        out_file.write_text(text)
        typer.echo(f"{len(df)} rows → {out_file}")
    else:
        typer.echo(text, nl=False)


@app.command("purge")
def purge(
    out: Path = typer.Argument(..., help="The curation output root (holds ingest/, curate/, shards/)."),
    studies: list[str] = typer.Option(
        ..., "--study", "-s", help="A study id to remove (50414267 or s50414267); repeat, or comma-separate."
    ),
    prefect: bool = typer.Option(
        True, "--prefect/--no-prefect", help="Also delete the Prefect artifacts that quote the studies' sentences."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove studies from everything offclip wrote for them: ingest and curated records, image
    files, shards (rewritten without them), caches, the manifest, and the Prefect artifacts that
    quote their sentences. Fix or remove the report at the source first: a later build ingests
    what the source holds then. Run it while no build writes into OUT."""
    from .pipeline.purge import purge_studies, study_ids_from, unique_texts

    try:
        ids = study_ids_from(studies)
        texts = unique_texts(out, ids)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if not yes and not typer.confirm(
        f"Remove {len(ids)} studies from {out} (records, images, shards, caches, "
        f"manifest{', Prefect artifacts' if prefect else ''})?"
    ):
        raise typer.Exit(1)
    artifacts = None
    if prefect and texts:  # first: a server that fails leaves the records as they were, to try again
        from . import service

        typer.echo(service.use_for_direct_runs().to_text().replace("flows run", "artifacts searched"), err=True)
        from .flows.purge import delete_artifacts_quoting

        try:
            artifacts = delete_artifacts_quoting(texts)
        except Exception as exc:  # noqa: BLE001 - the server's error, said as it is
            _fail(
                RuntimeError(
                    f"the Prefect artifacts could not be searched ({type(exc).__name__}: {exc}); nothing "
                    f"was removed: start the server the builds ran on (offclip up), or pass --no-prefect"
                )
            )
    result = purge_studies(out, ids)
    typer.echo(result.to_text())
    if artifacts is not None:
        typer.echo(artifacts.to_text())
    elif prefect:
        typer.echo("  Prefect artifacts: none to search for (no sentence of these studies is theirs alone)")


# --- local Prefect stack: offclip up / down / status / wait (library: offclip/stack/) --------------

_HOME_HELP = "Project-local state: PREFECT_HOME (SQLite DB), logs/, run/ pid files (default $OFFCLIP_HOME or .offclip)."


def _prefect_home_here(stack, home: Optional[Path]) -> None:
    """This process imports prefect for its client, which creates $PREFECT_HOME (~/.prefect by
    default): point it at the project-local one unless the user chose one."""
    import os

    os.environ.setdefault("PREFECT_HOME", str(stack.layout(home).prefect_home))


@app.command("up")
def up(
    home: Optional[Path] = typer.Option(None, "--home", help=_HOME_HELP, show_default=False),
    port: Optional[int] = typer.Option(
        None, "--port", min=1, max=65535, help="Server port [default: the running server's, else 4200]."
    ),
    pool: str = typer.Option("offclip-process", "--pool", help="Process work pool to create and serve."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Skip `prefect deploy --all`."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not start a worker."),
    no_ui: bool = typer.Option(
        False, "--no-ui", help="Do not serve the Prefect UI (the REST API only; starts ~1 s sooner)."
    ),
    project: Optional[Path] = typer.Option(
        None,
        "--project",
        show_default=False,
        help="Directory holding prefect.yaml [default: nearest one above the cwd].",
    ),
) -> None:
    """Start (or reuse) a local Prefect server with its UI, create the work pool, deploy prefect.yaml, start a worker."""  # noqa: E501 (the help text)
    from . import stack

    _prefect_home_here(stack, home)
    typer.echo("starting the local Prefect stack (a fresh server takes ~10-30 s) ...", err=True)
    try:
        result = stack.up(
            home, port, pool, deploy_flows=not no_deploy, worker=not no_worker, project=project, ui=not no_ui
        )
    except stack.ServiceError as exc:
        _fail(exc)
    typer.echo(result.to_text())


@app.command("wait")
def wait(
    deployments: list[str] = typer.Argument(
        ..., help="Deployments in chain order, e.g. offclip/build-shards offclip/train offclip/evaluate."
    ),
    run: Optional[str] = typer.Option(
        None, "--run", help="The flow run id of the first deployment's run [default: its newest run]."
    ),
    home: Optional[Path] = typer.Option(None, "--home", help="State directory (default $OFFCLIP_HOME or ./.offclip)."),
    timeout: float = typer.Option(1800, "--timeout", help="Seconds to wait in all."),
) -> None:
    """Follow chained runs to their end: the first deployment's run (--run, else its newest), then
    the run each one started of the next deployment; exit 1 unless all completed."""
    from . import stack

    try:
        followed = stack.wait_for_runs(deployments, home=home, timeout=timeout, echo=typer.echo, run=run)
    except (RuntimeError, ValueError) as exc:
        _fail(exc)
    if any(f.state != "Completed" for f in followed):
        raise typer.Exit(1)


@app.command("down")
def down(
    home: Optional[Path] = typer.Option(None, "--home", help=_HOME_HELP, show_default=False),
) -> None:
    """Stop the worker and the server `offclip up` started (only those; pid files checked against /proc)."""
    from . import stack

    result = stack.down(home)
    typer.echo(result.to_text())
    if any(s.outcome.startswith("refused") for s in result.stopped):
        raise typer.Exit(1)


@app.command("status")
def status(
    home: Optional[Path] = typer.Option(None, "--home", help=_HOME_HELP, show_default=False),
    pool: str = typer.Option("offclip-process", "--pool", help="Work pool to look for."),
    json_out: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    show_secret: bool = typer.Option(
        False,
        "--show-secret",
        help="Also print the server's auth string: the UI's login (paste it whole) "
        "and PREFECT_API_AUTH_STRING. Never shown otherwise.",
    ),
) -> None:
    """Server health, API URL, worker, work pool and deployments (exit 1 when the server is down)."""
    import json

    from . import stack

    _prefect_home_here(stack, home)
    st = stack.status(home, pool)
    data = st.to_dict()
    secret = stack.auth_string(home) if show_secret else None
    if json_out:
        if show_secret:
            data["auth_string"] = secret
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(st.to_text())
        if show_secret:
            typer.echo(
                f"\nauth string (UI login, PREFECT_API_AUTH_STRING): {secret}"
                if secret
                else "\nno auth string recorded (no server started by `offclip up` here)"
            )
    if not st.ok:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()

"""The parameters of the deployed flows: one typed model per flow, the single place a parameter
is declared (name, type, default, description, validation).

=========================  ============  ==================================================================
model                      flow          used by
=========================  ============  ==================================================================
BuildParameters            build_shards  offclip/build-shards, ``offclip build-shards``
TrainParameters            train         offclip/train, ``offclip train``, ``python -m offclip.models.train``
                                         (and torchrun), ``offclip compare`` (the options it shares)
EvaluateParameters         evaluate      offclip/evaluate, ``offclip evaluate``,
                                         ``python -m offclip.models.evaluate``
RetrainParameters          retrain       offclip/retrain (the weekly schedule)
IngestParameters           –             ``offclip ingest`` (build-shards' ingest settings, same fields)
CurateParameters           –             ``offclip curate`` (build-shards' curation settings)
ShardsParameters           –             ``offclip shards`` (build-shards' shard settings)
ClassifierTrainParameters  –             ``offclip classifier train``
=========================  ============  ==================================================================

Each flow keeps flat parameters (``prefect deployment run offclip/build-shards -p source=… -p
out=…``, ``build_shards(source=…)``): :func:`flow_parameters` gives the flow function the
signature of its model's fields (types with their constraints, defaults) and a Google-style
``Args:`` section with their descriptions, which is what Prefect builds the deployment's
parameter schema (the UI's form), and validates a run's parameters, from. The flow body then
reads its parameters as one validated model. The command line derives its options from the
same fields (``offclip/cli.py``); ``prefect.yaml`` gives only where a deployment departs from
these defaults (``tests/test_flow_parameters.py`` holds all three to the models).

One setting has one name and one default wherever it is given: the commands that run a stage of
build-shards alone take that stage's fields of :class:`BuildParameters` (:func:`same_as`: the
type, default and description are the flow's), and the ``python -m`` entry points that keep
argparse (``torchrun -m offclip.models.train``) build their options from the same fields
(:class:`ParameterParser`). An old spelling of an option (``--long-side`` for ``--image-size``)
stays a hidden alias that warns, naming the new one (:func:`deprecated`).
``tests/test_parameter_names.py`` holds every entry point to one name and one default per
setting.

No Prefect import here (the command line imports this module for its options); ``pipeline/``
never imports it. The choices are the enumerations of ``data_contracts/enums.py`` (a module of
constants) where it has them; the few spelled here have their library tuple beside heavy imports
(torch, the classifier) and are held equal to it by the tests.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from offclip.data_contracts.enums import (
    AMP_MODES,
    DEFAULT_EVAL_PROTOCOL,
    DEFAULT_LABEL_POLICY,
    DEFAULT_MODEL_CONFIG,
    EVAL_DATASETS,
    EVAL_PROTOCOLS,
    LABEL_POLICIES,
    LABEL_SOURCES,
    PROMPTERS,
    TEXT_SOURCES,
)
from offclip.flows.runners import RUNNERS

if TYPE_CHECKING:
    from offclip.pipeline.ingest import IngestConfig

# -- choices ---------------------------------------------------------------------------------
# Literal[tuple] is the Literal of the tuple's values: the enumerations are written once
Prompting = Literal[PROMPTERS]  # type: ignore[valid-type]
LabelSource = Literal[LABEL_SOURCES]  # type: ignore[valid-type]
LabelPolicy = Literal[LABEL_POLICIES]  # type: ignore[valid-type]
TextSource = Literal[TEXT_SOURCES]  # type: ignore[valid-type]
Amp = Literal[AMP_MODES]  # type: ignore[valid-type]
Dataset = Literal[EVAL_DATASETS]  # type: ignore[valid-type]
EvalProtocol = Literal[EVAL_PROTOCOLS]  # type: ignore[valid-type]
TaskRunner = Literal[RUNNERS]  # type: ignore[valid-type]
#: pipeline.images.NormalizeConfig.fmt, pipeline.classifier.METHODS, models.losses.LOSSES
ImageFormat = Literal["png", "jpg"]
ClassifierMethod = Literal["finetune", "frozen"]
Loss = Literal["offclip", "infonce"]


class PathText:
    """Marks a str field that names a file or directory: the command line reads it as a path
    (normalised as ``pathlib`` does); flows and deployments take it as the string it is."""

    def __repr__(self) -> str:
        return "PathText()"


PATH = PathText()


def _no_api_key(options: dict | None) -> dict | None:
    if options and "api_key" in options:
        raise ValueError(
            "pass the API key as $OFFCLIP_LLM_API_KEY, not as a flow parameter "
            "(parameters are recorded in the manifest)"
        )
    return options


def _train_settings(settings: dict | None) -> dict | None:
    """``train_parameters`` are train's own: unknown names and invalid values fail the build
    before its ingest, not the train run it starts an hour later."""
    if settings:
        unknown = sorted(set(settings) - set(TrainParameters.model_fields))
        if unknown:
            raise ValueError(
                f"not a train parameter: {', '.join(unknown)} (train takes: {', '.join(TrainParameters.model_fields)})"
            )
        TrainParameters.model_validate(settings)
    return settings


class FlowParameters(BaseModel):
    """The parameters of one flow run: validated, immutable, no unknown names."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- descriptions the command line's ingest and curate commands share too ------------------
REPORTS = (
    "The reports: mimic-cxr-reports.zip, its .tar.gz, or a directory with files/pXX/…/sSTUDY.txt; read in "
    "place (default: the tree under the source, or mimic-cxr-reports.zip/.tar.gz in it). Needed for a "
    "MIMIC-CXR-JPG root."
)
METADATA = (
    "A directory with the JPG release's mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz, used "
    "beside a DICOM release (searched before the source)."
)
LABEL_SOURCE = (
    "Where pair labels come from: classifier (the paper's: any abnormal sentence), chexpert or negbio "
    "(MIMIC's mimic-cxr-2.0.0-<labeler>.csv[.gz]: No Finding = 1 → normal, a finding 1 or -1 → "
    "abnormal; a study it leaves unknown keeps the classifier's label). The sentence filter follows "
    "the label policy."
)
LABEL_POLICY = (
    "How a sentence's label follows from the classifier and the rule labeler (its teacher): cascade "
    "(default: the rules where they have an opinion, the classifier where they find no finding word; "
    "abnormal recall never below the rules'), union (abnormal when either says so), classifier, or "
    "rules."
)
INIT = (
    "A model directory to refine instead of training a fresh model: offclip's own (RUN/model), a transformers "
    "CLIPModel or VisionTextDualEncoderModel (with its processor files). Its image size, channels and "
    "normalisation come from its processor config; the result is saved in the same format. The model "
    "config then gives only the training settings."
)


class BuildParameters(FlowParameters):
    """``offclip/build-shards``: scan → ingest (batched) → classifier → curate → shards →
    manifest, then (``trigger_train``) a train run on the new shards."""

    source: Annotated[str, PATH] = Field(
        "out/demo-world",
        description="A MIMIC-CXR root (the DICOM or the JPG release, told from its files) or a demo world.",
    )
    out: Annotated[str, PATH] = Field(
        "out/curated", description="The curation output root: records, images, shards, manifest."
    )
    reports: Annotated[Optional[str], PATH] = Field(None, description=REPORTS)
    metadata: Annotated[Optional[str], PATH] = Field(None, description=METADATA)
    folders: str = Field("p10-p16", description="Patient folders to use: 'p10-p16' (the paper's), 'p10,p12', or 'all'.")
    splits: str = Field("all", description="Splits to use: 'all' or e.g. 'train,validate'.")
    image_size: int = Field(512, ge=16, description="Resize so the long side is N pixels (aspect kept).")
    image_format: ImageFormat = Field("png", description="Image format: png or jpg.")
    prefer_pa: bool = Field(
        False, description="Pick PA over AP when a study has both (default: seeded random, as the paper)."
    )
    batch_size: int = Field(
        128,
        ge=1,
        description="Studies per ingest batch (a batch is cut into one chunk per worker process, so "
        "fewer, larger batches keep every worker busy).",
    )
    shard_size: int = Field(1000, ge=1, description="Samples per shard at most.")
    shard_bytes: int = Field(1 << 30, ge=1, description="Bytes per shard at most.")
    classifier: Annotated[Optional[str], PATH] = Field(
        None,
        description="A saved sentence classifier (default: OUT/classifier, trained on Open-I + this "
        "corpus's ingested sentences when missing).",
    )
    classifier_method: ClassifierMethod = Field(
        "finetune",
        description="How a classifier trained here learns: finetune (better on Open-I dev) or frozen "
        "(MiniLM features + linear head, ~5x faster).",
    )
    threshold: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="P(abnormal) threshold (default: the classifier's calibrated one)."
    )
    prompting: Prompting = Field("none", description="Text prompting: none, template, or openai (with prompt_options).")
    prompt_options: Annotated[Optional[dict], AfterValidator(_no_api_key)] = Field(
        None,
        description="For prompting openai: base_url, model, max_concurrency, max_retries, timeout (or "
        "$OFFCLIP_LLM_URL/_MODEL/_CONCURRENCY). The API key only from $OFFCLIP_LLM_API_KEY: parameters are "
        "recorded in the manifest.",
    )
    label_source: LabelSource = Field(
        "classifier", description=LABEL_SOURCE + " The label files are looked for in metadata, then the source."
    )
    label_policy: LabelPolicy = Field(DEFAULT_LABEL_POLICY, description=LABEL_POLICY)
    seed: int = Field(
        0, description="Seed of the per-study frontal choice and of a classifier trained here; passed on to train."
    )
    openi: Annotated[Optional[str], PATH] = Field(
        None,
        description="Directory with the Open-I files for a classifier trained here (default: "
        "$OFFCLIP_OPENI, then the installed torchxrayvision wheel's data/).",
    )
    task_runner: TaskRunner = Field(
        "thread",
        description="thread (Prefect's bookkeeping in threads, decoding in worker processes), "
        "process, or dask (a local cluster of `workers` processes, or the one at dask_address).",
    )
    workers: int = Field(
        0,
        ge=0,
        description="Worker processes, 0: one per CPU core (ingest's decoding pool; the process and "
        "local Dask task runners' workers).",
    )
    dask_address: Optional[str] = Field(None, description="An existing Dask scheduler (tcp://host:8786).")
    trigger_train: bool = Field(True, description="Start offclip/train on the new shards afterwards (when deployed).")
    train_parameters: Annotated[Optional[dict], AfterValidator(_train_settings)] = Field(
        None,
        description="Train parameters for that run, on top of the shard directory, the seed and the "
        'source\'s evaluation set, e.g. {"max_steps": 100, "loss": "infonce"}.',
    )


class TrainParameters(FlowParameters):
    """``offclip/train``: the dual encoder on a shard set (or a refinement of a checkpoint), then
    (``trigger_evaluate``) an evaluate run on the new model."""

    shards: Annotated[str, PATH] = Field("out/curated", description="A build-shards output root (holds shards/).")
    run_dir: Annotated[Optional[str], PATH] = Field(
        None,
        description="Where the run goes (default: SHARDS/runs/<config>[-refine-<init>]-<loss>[-<text "
        "source>]-seed<S>-<shards digest>); an unfinished run there is resumed exactly.",
    )
    config: str = Field(
        DEFAULT_MODEL_CONFIG,
        description="Model config: demo (CPU), demo-192, demo-text4, tiny, tiny-resnet, paper (GPU) or a .json path.",
    )
    loss: Loss = Field("offclip", description="offclip (OFF-CLIP's loss) or infonce (a plain CLIP's).")
    abnormal_weight: float = Field(1.0, ge=0.0, description="Weight of OFF-CLIP's abnormal InfoNCE term.")
    seed: int = Field(0, description="Training seed.")
    epochs: Optional[int] = Field(None, ge=1, description="Training epochs (default: the config's).")
    batch_size: Optional[int] = Field(None, ge=2, description="Training batch size (default: the config's).")
    lr: Optional[float] = Field(None, gt=0.0, description="Learning rate (default: the config's).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop training after this many steps.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 …")
    amp: Amp = Field(
        "auto",
        description="Mixed precision: auto (bf16 autocast on CUDA, else fp16; float32 on the CPU), bf16 "
        "(autocast on CUDA or the CPU, where it pays on CPUs with AMX or AVX512-BF16), fp16 (CUDA only), off.",
    )
    num_workers: int = Field(0, ge=0, description="Data loader worker processes.")
    text_model: Optional[str] = Field(None, description="A text encoder instead of the config's.")
    vision_model: Optional[str] = Field(None, description="A vision encoder instead of the config's.")
    trigger_evaluate: bool = Field(
        True, description="Start offclip/evaluate on the new model (and the baseline) afterwards (when deployed)."
    )
    eval_dataset: Dataset = Field("vindr-cxr", description="The evaluation set's dataset.")
    eval_root: Annotated[Optional[str], PATH] = Field(
        None,
        description="The evaluation set, in its own format (default: eval/<eval_dataset> beside the source "
        "the shards were built from).",
    )
    allow_shard_change: bool = Field(
        False, description="Resume a run although its shard set changed since the checkpoint (default: refuse)."
    )
    text_source: Optional[TextSource] = Field(
        None,
        description="Training text: filtered (the kept sentences, OFF-CLIP's; the config's default) or "
        "report (every sentence: a plain CLIP's).",
    )
    baseline: bool = Field(
        False,
        description="Also train the plain CLIP (InfoNCE on whole reports, the same config, seed and "
        "budget) beside it, so that the evaluation shows the model against it.",
    )
    init: Annotated[Optional[str], PATH] = Field(None, description=INIT)
    trace_every: int = Field(
        0,
        ge=0,
        description="Every this many steps, measure the embedding geometry of 256 held-out samples "
        "(normal/abnormal spread of images and texts, normal image–text cosine, logit scale) into "
        "RUN/geometry.jsonl; 0: never.",
    )


class EvaluateParameters(FlowParameters):
    """``offclip/evaluate``: zero-shot evaluation of a model on an evaluation set."""

    model: Annotated[str, PATH] = Field(
        description="A model directory: offclip's (RUN/model), a CLIPModel or a VisionTextDualEncoderModel (with "
        "its processor files)."
    )
    dataset: Dataset = Field("vindr-cxr", description=f"The evaluation set's dataset: {', '.join(EVAL_DATASETS)}.")
    root: Annotated[Optional[str], PATH] = Field(
        None, description="The evaluation set's directory, in its own format (a demo world has WORLD/eval/<dataset>)."
    )
    out: Annotated[Optional[str], PATH] = Field(None, description="JSON + ROC plot here (default: MODEL/../eval).")
    manifest: Annotated[Optional[str], PATH] = Field(
        None, description="Record the figures in this manifest's evaluations table."
    )
    run_name: Optional[str] = Field(
        None, description="The name the figures are recorded under (default: the model's run directory)."
    )
    prompts: Annotated[Optional[str], PATH] = Field(
        None,
        description='Prompts JSON ({class: a text or a list of texts}; default: "There is {finding}.", normal '
        '"There is no finding.").',
    )
    baseline: Annotated[Optional[str], PATH] = Field(
        None,
        description="A second model directory (e.g. the plain CLIP a train run with baseline made), "
        "evaluated on the same set: the paired difference against it, with a 95 % bootstrap interval, is "
        "recorded.",
    )
    protocol: EvalProtocol = Field(
        DEFAULT_EVAL_PROTOCOL,
        description="The evaluation protocol: offclip (every class of the label file, "
        '"There is {finding}.") or paper (OFF-CLIP\'s official validation: its class lists, prompts and image '
        "filter per dataset, models/evaluate/protocols.json; PadChest's 192 query labels are not there).",
    )


def same_as(model: type[FlowParameters], name: str) -> Any:
    """Field NAME of MODEL (type constraints, default, description), for a flow that passes it on."""
    return copy.copy(model.model_fields[name])


class RetrainParameters(FlowParameters):
    """``offclip/retrain`` (scheduled): an incremental build-shards, then train and evaluate only
    when the build added samples to the shards (or ``force``)."""

    # the fields' own constraints and path marks come with them
    source: str = same_as(BuildParameters, "source")
    out: str = same_as(BuildParameters, "out")
    folders: str = same_as(BuildParameters, "folders")
    image_size: int = same_as(BuildParameters, "image_size")
    classifier: Optional[str] = same_as(BuildParameters, "classifier")
    seed: int = same_as(BuildParameters, "seed")
    config: str = same_as(TrainParameters, "config")
    loss: Loss = same_as(TrainParameters, "loss")
    max_steps: Optional[int] = same_as(TrainParameters, "max_steps")
    batch_size: Optional[int] = same_as(TrainParameters, "batch_size")
    eval_dataset: Dataset = same_as(TrainParameters, "eval_dataset")
    eval_root: Optional[str] = same_as(TrainParameters, "eval_root")
    force: bool = Field(False, description="Train and evaluate even when the build added no sample.")
    task_runner: TaskRunner = same_as(BuildParameters, "task_runner")


# -- the commands that run one stage of build-shards alone: the flow's fields, the same names ----
class IngestParameters(FlowParameters):
    """``offclip ingest``: scan → pick one frontal image per study → normalise it → split the
    report into sentences (build-shards' first stage, with its settings)."""

    source: str = same_as(BuildParameters, "source")
    out: str = same_as(BuildParameters, "out")
    reports: Optional[str] = same_as(BuildParameters, "reports")
    metadata: Optional[str] = same_as(BuildParameters, "metadata")
    folders: str = same_as(BuildParameters, "folders")
    splits: str = same_as(BuildParameters, "splits")
    prefer_pa: bool = same_as(BuildParameters, "prefer_pa")
    seed: int = Field(0, description="Seed of the per-study frontal choice.")
    image_size: int = same_as(BuildParameters, "image_size")
    pad_square: bool = Field(False, description="Zero-pad the image to image_size × image_size.")
    image_format: ImageFormat = same_as(BuildParameters, "image_format")
    bits: Literal[8, 16] = Field(8, description="Bits per pixel: 8 or 16 (16 needs png).")
    batch_size: int = same_as(BuildParameters, "batch_size")
    workers: int = same_as(BuildParameters, "workers")


def ingest_config(params: BuildParameters | IngestParameters, progress: bool = False) -> IngestConfig:
    """Ingest's settings, a build-shards run's or ``offclip ingest``'s, as the library's
    ``IngestConfig``: the one translation (build-shards keeps the padding and bit-depth defaults)."""
    from pathlib import Path

    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig
    from offclip.pipeline.scan import ScanConfig, parse_folders, parse_splits

    source = Path(params.source)
    normalize = NormalizeConfig(long_side=params.image_size, fmt=params.image_format)
    if isinstance(params, IngestParameters):  # build-shards keeps the defaults
        normalize = NormalizeConfig(
            long_side=params.image_size, fmt=params.image_format, pad_square=params.pad_square, out_bits=params.bits
        )
    return IngestConfig(
        source=source,
        out=Path(params.out),
        batch_size=params.batch_size,
        workers=params.workers,
        scan=ScanConfig(
            source,
            folders=parse_folders(params.folders),
            splits=parse_splits(params.splits),
            prefer_pa=params.prefer_pa,
            seed=params.seed,
            reports=Path(params.reports) if params.reports else None,
            metadata=Path(params.metadata) if params.metadata else None,
            workers=params.workers,
            progress=progress,
        ),
        normalize=normalize,
        progress=progress,
    )


class CurateParameters(FlowParameters):
    """``offclip curate``: score every sentence, filter normal sentences out of abnormal reports,
    label the pairs (build-shards' curation stage, with its settings)."""

    out: str = same_as(BuildParameters, "out")
    classifier: Annotated[Optional[str], PATH] = Field(
        None, description="A saved sentence classifier (offclip classifier train)."
    )
    threshold: Optional[float] = same_as(BuildParameters, "threshold")
    prompting: Prompting = same_as(BuildParameters, "prompting")
    prompt_options: Optional[dict] = same_as(BuildParameters, "prompt_options")
    label_source: LabelSource = Field(
        "classifier", description=LABEL_SOURCE + " The label files are looked for in each label_dir, in order."
    )
    label_dir: Annotated[tuple[str, ...], PATH] = Field(
        (),
        description="A directory holding mimic-cxr-2.0.0-{chexpert,negbio}.csv[.gz], e.g. the MIMIC-CXR-JPG "
        "root (repeatable, searched in order). Without one: no study_labels.parquet.",
    )
    label_policy: LabelPolicy = same_as(BuildParameters, "label_policy")


class ShardsParameters(FlowParameters):
    """``offclip shards``: WebDataset shards (one set per split) and the manifest (build-shards'
    last stages, with its settings)."""

    out: str = same_as(BuildParameters, "out")
    shard_size: int = same_as(BuildParameters, "shard_size")
    shard_bytes: int = same_as(BuildParameters, "shard_bytes")


class ClassifierTrainParameters(FlowParameters):
    """``offclip classifier train``: the sentence classifier on rule-labelled Open-I sentences
    (plus the corpus's), as build-shards trains it when it finds none."""

    out: Annotated[str, PATH] = Field(
        "out/curated/classifier", description="Where to save it (Hugging Face layout + model card)."
    )
    classifier_method: ClassifierMethod = same_as(BuildParameters, "classifier_method")
    seed: int = Field(0, description="Seed of the classifier's training.")
    openi: Optional[str] = same_as(BuildParameters, "openi")
    corpus: Annotated[Optional[str], PATH] = Field(
        None,
        description="A curation output root where ingest has run: also learn from the rule labels of its "
        "distinct sentences (those not in Open-I; 10 % held out to measure agreement).",
    )
    corpus_limit: int = Field(
        20_000,
        ge=0,
        description="At most this many distinct corpus sentences join training (a uniform keyed-hash sample).",
    )


#: the parameter model of each command that runs one stage of build-shards (or trains its classifier)
STAGE_COMMANDS: dict[str, type[FlowParameters]] = {
    "ingest": IngestParameters,
    "curate": CurateParameters,
    "shards": ShardsParameters,
    "classifier train": ClassifierTrainParameters,
}


#: the parameter model of each deployment in prefect.yaml
DEPLOYMENTS: dict[str, type[FlowParameters]] = {
    "build-shards": BuildParameters,
    "train": TrainParameters,
    "evaluate": EvaluateParameters,
    "retrain": RetrainParameters,
}


def field_annotation(field: FieldInfo) -> Any:
    """A field's type with its constraints and validators (``Annotated[int, Ge(16)]``): what a
    flat parameter of that field is validated against."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def signature(model: type[FlowParameters]) -> inspect.Signature:
    """Keyword-only parameters, one per field of MODEL, with its annotated type and default."""
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=field_annotation(field),
                default=inspect.Parameter.empty if field.is_required() else field.default,
            )
            for name, field in model.model_fields.items()
        ]
    )


def args_section(model: type[FlowParameters]) -> str:
    """The fields' descriptions as a Google-style ``Args:`` section (Prefect's form reads it)."""
    return "Args:\n" + "\n".join(
        f"    {name}: {' '.join((field.description or name).split())}" for name, field in model.model_fields.items()
    )


F = TypeVar("F", bound=Callable[..., Any])


def flow_parameters(model: type[FlowParameters]) -> Callable[[F], F]:
    """Give a flow function ``def f(**parameters)`` the flat parameters of MODEL: the signature,
    annotations and docstring ``Args:`` that Prefect's parameter schema and validation read. The
    function itself is returned (its code, file and flow version stay its own); its body builds
    ``MODEL(**parameters)``."""

    def decorate(fn: F) -> F:
        sig = signature(model)
        function: Any = fn  # the attributes set here are not F's bound's (any callable)
        function.__signature__ = sig.replace(return_annotation=inspect.signature(fn).return_annotation)
        fn.__annotations__ = {
            **{p.name: p.annotation for p in sig.parameters.values()},
            "return": fn.__annotations__.get("return", Any),
        }
        fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\n" + args_section(model)
        function.parameters_model = model
        return fn

    return decorate


# -- old spellings, and the ``python -m`` entry points that keep argparse -----------------------


def option_flag(name: str) -> str:
    """The command-line spelling of field NAME: ``image_size`` → ``--image-size``."""
    return "--" + name.replace("_", "-")


def deprecated(old: str, new: str) -> None:
    """The one-line warning an old spelling of an option prints (on stderr; under torchrun only
    rank 0 says it)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {old} is deprecated, use {new} (the same setting)", file=sys.stderr)


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if get_origin(annotation) is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else Union[tuple(args)]), len(args) < len(get_args(annotation))
    return annotation, False


class _Alias(argparse.Action):
    """An old spelling: stores into the new option's destination and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, values)


class ParameterParser(argparse.ArgumentParser):
    """The argparse command line of a ``python -m`` entry point that stays argparse (what
    ``torchrun -m offclip.models.train`` launches) whose options for a parameter model's fields
    are made from the fields (:meth:`add_fields`): ``--name-with-dashes``, the model's default,
    its description as help, its choices, its constraints (checked as the model checks them:
    ``--epochs 0`` is refused here as on ``offclip train``). Its own options are added as usual."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the fields this command line needs although their model has a default: name → flag
        self.required_fields: dict[str, str] = {}
        #: the fields it takes: name → model
        self.fields: dict[str, type[FlowParameters]] = {}

    def add_fields(
        self,
        model: type[FlowParameters],
        names: Iterable[str],
        *,
        required: Iterable[str] = (),
        aliases: Optional[dict[str, tuple[str, ...]]] = None,
        helps: Optional[dict[str, str]] = None,
    ) -> None:
        """An option per field NAMES of MODEL; ``required`` ones without a default here,
        ``aliases`` their old spellings (hidden, warning), ``helps`` a help of this entry point's
        own (its default differs: required)."""
        required, aliases, helps = set(required), aliases or {}, helps or {}
        for name in names:
            field = model.model_fields[name]
            flag = option_flag(name)
            base, _ = _without_none(field.annotation)
            help_text = helps.get(name) or field.description or name
            if name in required or field.is_required():
                self.required_fields[name] = flag
                help_text = f"{help_text} (required)"
                default = None
            else:
                default = field.default
            self.fields[name] = model
            if base is bool:
                action = argparse.BooleanOptionalAction if default else "store_true"
                self.add_argument(flag, dest=name, action=action, default=bool(default), help=help_text)
                if aliases.get(name):
                    raise ValueError(f"{name}: a switch takes no alias here")
                continue
            kind = _argument_type(name, field)
            choices = _literal_choices(base)
            self.add_argument(
                flag,
                dest=name,
                type=kind,
                default=default,
                choices=choices,
                metavar=name.upper() if choices is None else None,
                help=help_text + ("" if default is None else " (default: %(default)s)"),
            )
            for old in aliases.get(name, ()):
                self.add_argument(
                    old,
                    dest=name,
                    type=kind,
                    choices=choices,
                    default=argparse.SUPPRESS,
                    action=_Alias,
                    new=flag,
                    help=argparse.SUPPRESS,
                )

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, rest = super().parse_known_args(args, namespace)
        missing = [flag for name, flag in self.required_fields.items() if getattr(parsed, name, None) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return parsed, rest


def _literal_choices(annotation: Any) -> Optional[tuple]:
    return get_args(annotation) if get_origin(annotation) is Literal else None


def _argument_type(name: str, field: FieldInfo) -> Callable[[str], Any]:
    """Text → the field's value, validated as the model validates it (lax: "5" is an int)."""
    base, _ = _without_none(field.annotation)
    if get_origin(base) is dict or base is dict or get_origin(base) in (list, tuple):
        raise ValueError(f"{name}: a {base} field has no argparse option here")
    adapter = TypeAdapter(Annotated[(base, *field.metadata)] if field.metadata else base)
    literal = _literal_choices(base)

    def convert(text: str) -> Any:
        value: Any = text
        if literal and all(isinstance(c, int) for c in literal):
            value = int(text)
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(exc.errors()[0]["msg"]) from None

    convert.__name__ = getattr(base, "__name__", name)
    return convert

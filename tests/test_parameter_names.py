"""One name and one default per setting across every entry point: the ``offclip`` commands, the
deployments (prefect.yaml's flows), and the ``python -m`` entry points (issue 29 point 8).

Every entry point's options are collected as they are shown to a user (Typer's and argparse's own
parameter objects, the deployments' parameter models); a flag that two entry points share must
have the same default in both, unless it is listed in :data:`SAME_FLAG_OTHER_SETTINGS` (one flag,
several settings: each entry point that has it in exactly one group, one default per group) or in
:data:`DIRECT_RUN_DEPARTURES`. An old spelling is a hidden alias listed in :data:`OLD_SPELLINGS`,
and it still works, warning once with the new flag's name."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import typer.main
from typer.testing import CliRunner

from offclip.cli import MODEL_COMMANDS, app
from offclip.flows.parameters import (
    DEPLOYMENTS,
    STAGE_COMMANDS,
    BuildParameters,
    ClassifierTrainParameters,
    CurateParameters,
    EvaluateParameters,
    IngestParameters,
    ParameterParser,
    ShardsParameters,
    TrainParameters,
    field_annotation,
    option_flag,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_MODULE = "python -m offclip.models.train"
EVALUATE_MODULE = "python -m offclip.models.evaluate"

#: one flag, several settings: flag → what each means → the entry points where it means that
SAME_FLAG_OTHER_SETTINGS = {
    "--out": {
        "the curation output root": {"deployment build-shards", "deployment retrain"},
        "where an evaluation writes (default MODEL/../eval)": {"deployment evaluate", "evaluate", EVALUATE_MODULE},
        "the comparison's directory (default SHARDS/compare)": {"compare"},
        "a query's result file": {"sql"},
        "the classifier's directory": {"classifier train"},
    },
    "--batch-size": {
        "studies per ingest batch": {"deployment build-shards", "build-shards", "ingest"},
        "the training batch": {"deployment train", "deployment retrain", "train", "compare", TRAIN_MODULE},
        "images per evaluation forward pass": {EVALUATE_MODULE},
    },
    "--baseline": {
        "also train the plain CLIP": {"deployment train", "train"},
        "a baseline model directory": {"deployment evaluate", "evaluate"},
        "the arm every other arm is compared with": {"compare"},
    },
    "--db": {
        "the manifest (default OUT/manifest.duckdb)": {"manifest", "answer"},
        "the manifest (no OUT argument)": {"sql"},
    },
    "--split": {
        "the Open-I partition": {"classifier evaluate"},
        "the shard split trained on": {TRAIN_MODULE},
    },
}

#: a direct run's own defaults (tests/test_flow_parameters.py DIRECT_DEFAULTS): it does not start
#: the next deployment unless asked
DIRECT_RUN_DEPARTURES = {("build-shards", "--trigger-train"): False, ("train", "--trigger-evaluate"): False}

#: (entry point, old spelling) → the option it is an alias of
OLD_SPELLINGS = {
    ("ingest", "--long-side"): "--image-size",
    ("ingest", "--format"): "--image-format",
    ("shards", "--max-samples"): "--shard-size",
    ("shards", "--max-bytes"): "--shard-bytes",
    ("classifier train", "--method"): "--classifier-method",
    ("curate", "--llm-url"): "--prompt-options",
    ("curate", "--llm-model"): "--prompt-options",
    ("curate", "--llm-concurrency"): "--prompt-options",
    ("curate", "--llm-retries"): "--prompt-options",
    (TRAIN_MODULE, "--out"): "--run-dir",
}

#: TrainParameters fields python -m offclip.models.train does not take: what a flow run does after
#: training (the trainer trains one model)
FLOW_ONLY_TRAIN_FIELDS = {"trigger_evaluate", "eval_dataset", "eval_root", "baseline"}
#: EvaluateParameters fields python -m offclip.models.evaluate does not take: the paired comparison
#: with a baseline is the flow's
FLOW_ONLY_EVALUATE_FIELDS = {"baseline"}


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _typer_options(command) -> tuple[dict, dict]:
    """(visible, hidden) long flags of a Typer command: flag → (default, required)."""
    visible, hidden = {}, {}
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        flags = [o for o in param.opts if o.startswith("--")]
        if not flags:
            continue
        (hidden if param.hidden else visible)[flags[0]] = (_plain(param.default), bool(param.required))
    return visible, hidden


def _argparse_options(parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    visible, hidden = {}, {}
    required = set(getattr(parser, "required_fields", {}).values())
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags or flags[0] == "--help":
            continue
        flag = flags[0]
        target = hidden if action.help == argparse.SUPPRESS else visible
        target[flag] = (_plain(action.default), action.required or flag in required)
    return visible, hidden


def _entry_points() -> dict[str, tuple[dict, dict]]:
    """Every entry point: name → (visible options, hidden options)."""
    from offclip.models.evaluate.runner import _parser as evaluate_parser
    from offclip.models.train import _parser as train_parser

    points = {}
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group: offclip classifier …
            for sub, subcommand in command.commands.items():
                points[f"{name} {sub}"] = _typer_options(subcommand)
        else:
            points[name] = _typer_options(command)
    for name, model in DEPLOYMENTS.items():
        points[f"deployment {name}"] = ({option_flag(f): (None if info.is_required() else info.default,
                                                          info.is_required())
                                         for f, info in model.model_fields.items()}, {})
    points[TRAIN_MODULE] = _argparse_options(train_parser())
    points[EVALUATE_MODULE] = _argparse_options(evaluate_parser())
    return points


def test_one_default_per_setting_across_every_entry_point():
    points = _entry_points()
    assert {"ingest", "curate", "shards", "classifier train", "build-shards", "train", "evaluate", "compare",
            "demo-world", "deployment retrain", TRAIN_MODULE, EVALUATE_MODULE} <= set(points)
    flags: dict[str, dict[str, tuple]] = {}
    for point, (visible, _) in points.items():
        for flag, value in visible.items():
            flags.setdefault(flag, {})[point] = value
    problems = []
    for flag, where in sorted(flags.items()):
        groups = SAME_FLAG_OTHER_SETTINGS.get(flag, {"one setting": set(where)})
        listed = [p for members in groups.values() for p in members]
        assert sorted(listed) == sorted(set(listed)), f"{flag}: an entry point in two groups"
        assert set(listed) == set(where), (f"{flag}: say what it means in {sorted(set(where) - set(listed))} "
                                           f"(SAME_FLAG_OTHER_SETTINGS), or drop {sorted(set(listed) - set(where))}")
        for meaning, members in groups.items():
            defaults = {}
            for point in members:
                default, required = where[point]
                if (point, flag) in DIRECT_RUN_DEPARTURES:
                    assert default == DIRECT_RUN_DEPARTURES[point, flag], (point, flag)
                    continue
                if not required:  # a required option has no default to disagree with
                    defaults[point] = default
            if len({json.dumps(v, default=str) for v in defaults.values()}) > 1:
                problems.append(f"{flag} ({meaning}): {defaults}")
    assert not problems, "one setting, several defaults:\n  " + "\n  ".join(problems)


def test_old_spellings_are_hidden_aliases_only():
    points = _entry_points()
    hidden = {(point, flag) for point, (_, h) in points.items() for flag in h}
    assert hidden == set(OLD_SPELLINGS), "a hidden option is an old spelling, listed in OLD_SPELLINGS"
    for (point, old), new in OLD_SPELLINGS.items():
        visible = points[point][0]
        assert old not in visible and new in visible, (point, old, new)


def test_stage_commands_take_the_flows_fields():
    """ingest, curate, shards and classifier train take build-shards' fields as the flow declares
    them (type, constraints, default, description), under the same names; where a command says
    more precisely what a field does for it, only the description differs."""
    refined = {("IngestParameters", "seed"), ("CurateParameters", "classifier"), ("CurateParameters", "label_source"),
               ("ClassifierTrainParameters", "seed")}
    renamed = {"long_side", "fmt", "max_samples", "max_bytes", "method", "llm_url", "llm_model", "llm_concurrency",
               "llm_retries"}
    for command, model in STAGE_COMMANDS.items():
        assert MODEL_COMMANDS[command].parameters_model is model
        assert not renamed & set(model.model_fields), model.__name__
        for name, info in model.model_fields.items():
            if name not in BuildParameters.model_fields or (model, name) == (ClassifierTrainParameters, "out"):
                continue  # classifier train --out: the classifier's directory (SAME_FLAG_OTHER_SETTINGS)
            flow = BuildParameters.model_fields[name]
            assert field_annotation(info) == field_annotation(flow), (model.__name__, name)
            assert info.default == flow.default, (model.__name__, name)
            if (model.__name__, name) not in refined:
                assert info.description == flow.description, (model.__name__, name)
    shared = {m: set(m.model_fields) & set(BuildParameters.model_fields) for m in STAGE_COMMANDS.values()}
    assert {"image_size", "image_format", "batch_size", "workers"} <= shared[IngestParameters]
    assert {"shard_size", "shard_bytes"} <= shared[ShardsParameters]
    assert {"prompting", "prompt_options", "label_policy", "threshold"} <= shared[CurateParameters]
    assert {"classifier_method", "openi"} <= shared[ClassifierTrainParameters]


def _field_options(parser: ParameterParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest in parser.fields and a.help != argparse.SUPPRESS}


def test_module_entry_points_build_their_options_from_the_models():
    """python -m offclip.models.train (what torchrun launches) and python -m
    offclip.models.evaluate stay argparse; every option they share with ``offclip train`` /
    ``offclip evaluate`` is made from the model's field: its flag, default, choices and help."""
    from offclip.models.evaluate.runner import _parser as evaluate_parser
    from offclip.models.train import _parser as train_parser

    for parser, model, flow_only in ((train_parser(), TrainParameters, FLOW_ONLY_TRAIN_FIELDS),
                                     (evaluate_parser(), EvaluateParameters, FLOW_ONLY_EVALUATE_FIELDS)):
        options = _field_options(parser)
        taken = {name for name, m in parser.fields.items() if m is model}
        assert taken == set(model.model_fields) - flow_only, (model.__name__, set(model.model_fields) - taken)
        for name, action in options.items():
            info = parser.fields[name].model_fields[name]
            assert action.option_strings[0] == option_flag(name)
            if name in parser.required_fields or info.is_required():
                assert action.default is None and name in parser.required_fields
            else:
                assert action.default == info.default, (name, action.default, info.default)
            assert " ".join(info.description.split()) in " ".join(action.help.split()) or name == "run_dir"
    # the trainer's own library defaults are the model's too
    from dataclasses import MISSING, fields

    from offclip.models.train import TrainConfig

    config = {f.name: f.default for f in fields(TrainConfig)}
    for name, info in TrainParameters.model_fields.items():
        if name in config and config[name] is not MISSING:
            assert config[name] == info.default, name
    assert config["config"] == TrainParameters.model_fields["config"].default == "demo"


def test_library_defaults_are_the_models():
    """The dataclasses the commands fill in (used from Python too) default as the commands do."""
    from dataclasses import fields

    from offclip.models.compare import CompareConfig
    from offclip.pipeline.classifier.offline import DEFAULT_CORPUS_LIMIT
    from offclip.pipeline.classifier.training import DEFAULT_METHOD
    from offclip.pipeline.curate import CurateConfig
    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig
    from offclip.pipeline.shards import ShardConfig

    def defaults(cls) -> dict:
        return {f.name: f.default for f in fields(cls)}

    ingest = IngestParameters.model_fields
    assert (defaults(IngestConfig)["batch_size"], defaults(IngestConfig)["workers"]) == \
        (ingest["batch_size"].default, ingest["workers"].default) == (128, 0)
    normalize = defaults(NormalizeConfig)
    assert (normalize["long_side"], normalize["fmt"], normalize["pad_square"], normalize["out_bits"]) == \
        (ingest["image_size"].default, ingest["image_format"].default, ingest["pad_square"].default,
         ingest["bits"].default)
    shard = defaults(ShardConfig)
    assert (shard["max_samples"], shard["max_bytes"]) == (ShardsParameters.model_fields["shard_size"].default,
                                                          ShardsParameters.model_fields["shard_bytes"].default)
    curate = defaults(CurateConfig)
    for name in ("threshold", "prompting", "label_source", "label_policy"):
        assert curate[name] == CurateParameters.model_fields[name].default, name
    assert ClassifierTrainParameters.model_fields["classifier_method"].default == DEFAULT_METHOD
    assert ClassifierTrainParameters.model_fields["corpus_limit"].default == DEFAULT_CORPUS_LIMIT
    compare = defaults(CompareConfig)
    for name in ("config", "epochs", "batch_size", "device", "max_steps", "init", "trace_every"):
        assert compare[name] == TrainParameters.model_fields[name].default, name
    for name in ("prompts", "protocol"):
        assert compare[name] == EvaluateParameters.model_fields[name].default, name


# -- the old spellings still work ------------------------------------------------------------

class _Said:
    def to_text(self) -> str:
        return "done"


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "is deprecated" in line]


def test_ingest_old_spellings_set_the_new_options():
    seen = []
    with mock.patch("offclip.pipeline.ingest.run_ingest", lambda config: seen.append(config) or _Said()):
        runner = CliRunner()
        new = runner.invoke(app, ["ingest", "w", "o", "--image-size", "64", "--image-format", "jpg", "--workers", "1"])
        old = runner.invoke(app, ["ingest", "w", "o", "--long-side", "64", "--format", "jpg", "--workers", "1"])
        assert new.exit_code == 0 and old.exit_code == 0, old.output
        assert repr(seen[0]) == repr(seen[1]) and seen[1].normalize.long_side == 64 and seen[1].normalize.fmt == "jpg"
        assert not _warnings(new.output)
        assert _warnings(old.output) == ["warning: --long-side is deprecated, use --image-size (the same setting)",
                                         "warning: --format is deprecated, use --image-format (the same setting)"]
        both = runner.invoke(app, ["ingest", "w", "o", "--long-side", "64", "--image-size", "96"])
        assert both.exit_code == 2 and "give it once (--image-size)" in both.output and len(seen) == 2
        assert seen[0].batch_size == 128 and seen[0].workers == 1


def test_shards_old_spellings_set_the_new_options(tmp_path):
    seen = []

    def write(config, progress=False):
        seen.append(config)
        raise FileNotFoundError("stop here")

    with mock.patch("offclip.pipeline.shards.write_shards", write):
        runner = CliRunner()
        for args in (["--shard-size", "5", "--shard-bytes", "4096"], ["--max-samples", "5", "--max-bytes", "4096"]):
            result = runner.invoke(app, ["shards", str(tmp_path), *args])
            assert result.exit_code == 2 and "stop here" in result.output
    assert [(c.max_samples, c.max_bytes) for c in seen] == [(5, 4096), (5, 4096)]
    assert "use --shard-size" in result.output and "use --shard-bytes" in result.output


def test_curate_and_classifier_old_spellings():
    seen = []
    with mock.patch("offclip.pipeline.curate.run_curate", lambda config: seen.append(config) or _Said()):
        runner = CliRunner()
        old = runner.invoke(app, ["curate", "o", "--classifier", "c", "--prompting", "openai", "--llm-url", "http://h/v1",
                                  "--llm-model", "m", "--llm-concurrency", "3", "--llm-retries", "2"])
        new = runner.invoke(app, ["curate", "o", "--classifier", "c", "--prompting", "openai", "--prompt-options",
                                  '{"base_url": "http://h/v1", "model": "m", "max_concurrency": 3, "max_retries": 2}'])
        assert old.exit_code == 0 and new.exit_code == 0, old.output
        assert seen[0].prompt_options == seen[1].prompt_options == {
            "base_url": "http://h/v1", "model": "m", "max_concurrency": 3, "max_retries": 2}
        assert len(_warnings(old.output)) == 4 and "use --prompt-options '{\"base_url\": …}'" in old.output
        assert seen[0].label_policy == "cascade" and seen[0].label_dirs == []

    calls = []
    with mock.patch("offclip.pipeline.classifier.train_from_openi", lambda *a, **k: calls.append(k) or {"version": "v"}):
        for flag in ("--classifier-method", "--method"):
            result = CliRunner().invoke(app, ["classifier", "train", flag, "frozen", "--out", "c"])
            assert result.exit_code == 0, result.output
    assert [c["method"] for c in calls] == ["frozen", "frozen"]
    assert "use --classifier-method" in result.output


def test_train_module_takes_run_dir_and_its_old_spelling(capsys):
    import offclip.models.train as trainer

    seen = []

    class Done:
        def to_dict(self) -> dict:
            return {}

    common = ["--shards", "s", "--config", "demo-text4", "--loss", "infonce", "--text-source", "report", "--seed",
              "100", "--trace-every", "100"]
    with mock.patch.object(trainer, "train", lambda config, progress=False: seen.append(config) or Done()):
        assert trainer.main([*common, "--run-dir", "r"]) == 0
        assert "deprecated" not in capsys.readouterr().err
        assert trainer.main([*common, "--out", "r"]) == 0
        assert capsys.readouterr().err.strip() == "warning: --out is deprecated, use --run-dir (the same setting)"
        assert seen[0] == seen[1] and str(seen[0].out) == "r" and seen[0].trace_every == 100
        assert trainer.main(["--run-dir", "r"]) == 0  # the defaults: offclip train's
        assert (str(seen[2].shards), seen[2].config, seen[2].loss) == ("out/curated", "demo", "offclip")
        with pytest.raises(SystemExit):
            trainer.main(["--shards", "s"])
        assert "required: --run-dir" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # refused as offclip train refuses it
            trainer.main(["--run-dir", "r", "--epochs", "0"])
        assert "greater than or equal to 1" in capsys.readouterr().err


def test_evaluate_module_defaults_are_the_flows():
    from offclip.models.evaluate import runner

    args = runner._parser().parse_args(["--model", "runs/a/model", "--root", "eval"])
    assert (args.dataset, args.protocol, args.out) == (EvaluateParameters.model_fields["dataset"].default,
                                                       EvaluateParameters.model_fields["protocol"].default, None)
    assert runner.default_out("runs/a/model") == Path("runs/a/eval")
    assert runner.default_out("runs/a/model", "paper") == Path("runs/a/eval-paper")
    assert "default_out(model, p.protocol)" in (REPO / "flows" / "train.py").read_text()  # the flow's: the same


def test_classifier_module_is_the_typer_command():
    help_ = subprocess.run([sys.executable, "-m", "offclip.cli", "classifier", "train", "--help"], capture_output=True,
                           text=True, check=True, timeout=120).stdout
    visible, _ = _typer_options(typer.main.get_command(app).commands["classifier"].commands["train"])
    for flag in visible:
        assert flag in help_, flag
    assert "--method" not in re.findall(r"--[a-z-]+", help_)


def test_docs_spell_the_new_options():
    """docs/ (ablation.md records past runs as they ran), README, Makefile and prefect.yaml name
    no old spelling, but where they say it still works."""
    old = ["--long-side", "--max-samples", "--max-bytes", "--llm-url", "--llm-model", "--llm-concurrency",
           "--llm-retries", "--method"]
    files = [p for p in (REPO / "docs").glob("*.md") if p.name != "ablation.md"]
    files += [REPO / "README.md", REPO / "Makefile", REPO / "prefect.yaml"]
    for path in files:
        # a paragraph saying an old spelling still works names it
        paragraphs = [p for p in path.read_text().split("\n\n") if "still work" not in p]
        for text in paragraphs:
            for flag in old:
                assert not re.search(re.escape(flag) + r"\b(?!-)", text), (path.name, flag)
            for line in text.splitlines():
                if "offclip.models.train" in line:
                    assert not re.search(r"--out\b", line), (path.name, line)


def test_classifier_version_is_the_pairs_model_version(shards_out):
    """One concept, two names (data_contracts.curate.CLASSIFIER_VERSION_DOC): each shard sample's
    classifier_version is its pair's model_version."""
    import tarfile

    from offclip.data_contracts.curate import CLASSIFIER_VERSION_DOC, PAIRS
    from offclip.data_contracts.shards import SAMPLE, SHARD_RECORD
    from offclip.pipeline.curate import read_curated

    versions = dict(zip(read_curated(shards_out, "pairs")["study_id"], read_curated(shards_out, "pairs")["model_version"]))
    checked = 0
    for shard in sorted((shards_out / "shards").glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    sample = json.loads(tar.extractfile(member).read())
                    assert sample["classifier_version"] == versions[sample["study_id"]]
                    checked += 1
    assert checked > 0
    docs = {c.name: c.doc for c in (*PAIRS.columns, *SHARD_RECORD.columns, *SAMPLE.columns)}
    assert CLASSIFIER_VERSION_DOC in docs["model_version"] and "model_version" in docs["classifier_version"]

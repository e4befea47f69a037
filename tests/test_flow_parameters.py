"""One typed parameter model per flow (flows/parameters.py) is the single source of a parameter:
the flow's signature and Prefect parameter schema (the deployment's form), the command's
options and prefect.yaml all follow from it, and invalid values are refused with the parameter
named, before anything runs."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import typer
import typer.main
import yaml
from pydantic import Field, TypeAdapter, ValidationError
from typer.testing import CliRunner

from offclip.cli import FLOW_COMMANDS, app, flow_command
from offclip.flows.parameters import (
    DEPLOYMENTS,
    BuildParameters,
    EvaluateParameters,
    FlowParameters,
    TrainParameters,
    field_annotation,
    flow_parameters,
)

REPO = Path(__file__).resolve().parents[1]

#: what a direct run (`offclip <command>`) does differently from the flow's defaults: this
#: set is deliberate, and a new entry needs a reason (``...``: required on the command line)
DIRECT_DEFAULTS = {
    "build-shards": {"source": ..., "trigger_train": False},
    "train": {"trigger_evaluate": False},
    "evaluate": {"model": ..., "root": ...},
}


def _flows():
    from offclip.flows.build import build_shards
    from offclip.flows.train import evaluate, retrain, train

    return {"build-shards": build_shards, "train": train, "evaluate": evaluate, "retrain": retrain}


def _literal_values(annotation) -> tuple | None:
    """The choices of a Literal (or Optional[Literal]) annotation; None for other types."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def _plain(output: str) -> str:
    """A command's output without the boxes Typer draws around errors, on one line."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _choices(param) -> tuple | None:
    kind = getattr(param, "type", None)
    choices = getattr(kind, "choices", None) or getattr(getattr(param, "type_descriptor", None), "choices", None)
    return tuple(choices) if choices else None


def test_the_models_import_without_prefect_and_pipeline_never_imports_prefect():
    code = ("import sys, offclip.flows.parameters; "
            "assert 'prefect' not in sys.modules, sorted(m for m in sys.modules if m.startswith('prefect'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for path in [*(REPO / "pipeline").rglob("*.py"), *(REPO / "demo").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("prefect", "offclip.flows")), f"{path}: imports {name}"


def test_every_flow_takes_its_model_flat_and_prefect_schema_is_the_model():
    flows = _flows()
    assert set(flows) == set(DEPLOYMENTS)
    for name, flow in flows.items():
        model = DEPLOYMENTS[name]
        assert flow.fn.parameters_model is model
        signature = inspect.signature(flow.fn)
        assert list(signature.parameters) == list(model.model_fields), name
        schema = flow.parameters  # what `prefect deploy` sends: the deployment's form
        assert list(schema.properties) == list(model.model_fields), name
        assert set(schema.required or []) == {f for f, info in model.model_fields.items() if info.is_required()}
        for field, info in model.model_fields.items():
            param, prop = signature.parameters[field], schema.properties[field]
            assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.annotation == field_annotation(info)
            if info.is_required():
                assert param.default is inspect.Parameter.empty and "default" not in prop
            else:
                assert param.default == info.default and prop["default"] == info.default, (name, field)
            assert prop["description"] == " ".join(info.description.split()), (name, field)
            choices = _literal_values(info.annotation)
            if choices:
                enum = prop.get("enum") or next(a["enum"] for a in prop["anyOf"] if "enum" in a)
                assert tuple(enum) == choices, (name, field)


def test_every_field_is_an_option_of_its_command_with_the_same_default():
    group = typer.main.get_command(app)
    assert set(FLOW_COMMANDS) >= set(DIRECT_DEFAULTS)
    for name, direct in DIRECT_DEFAULTS.items():
        command, model = FLOW_COMMANDS[name], DEPLOYMENTS[name]
        assert command.parameters_model is model and command.direct_defaults == direct
        params = {p.name: p for p in group.commands[name].params if p.name != "help"}
        assert list(params) == list(model.model_fields), name
        for field, info in model.model_fields.items():
            param = params[field]
            if direct.get(field, None) is ...:
                assert param.required, (name, field)
                continue
            expected = direct.get(field, info.default)
            assert (str(param.default) if isinstance(param.default, Path) else param.default) == expected, \
                (name, field, param.default, expected)
            assert info.description in (param.help or ""), (name, field)
            if param.opts and param.opts[0].startswith("--"):
                assert param.opts[0] == "--" + field.replace("_", "-")
            choices = _literal_values(info.annotation)
            if choices:
                assert _choices(param) == choices, (name, field)


def test_prefect_yaml_names_only_departures_from_the_models():
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in project["deployments"]}
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        model = DEPLOYMENTS[name]
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module("offclip.flows." + Path(path).stem)
        assert getattr(module, function).fn.parameters_model is model, name
        for key, value in (deployment.get("parameters") or {}).items():
            assert key in model.model_fields, f"prefect.yaml {name}: {key} is not a parameter of {model.__name__}"
            info = model.model_fields[key]
            TypeAdapter(field_annotation(info)).validate_python(value)
            assert value != info.default, f"prefect.yaml {name}: {key}={value!r} repeats the model's default"
    assert deployments["build-shards"]["parameters"] == {"folders": "all"}


def test_a_field_added_to_a_model_is_a_flow_parameter_and_an_option():
    """Adding a parameter is one line in the model: the flow's schema and the command follow."""
    from prefect import flow

    class Wider(EvaluateParameters):
        bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples.")

    @flow(name="offclip-wider")
    @flow_parameters(Wider)
    def wider(**parameters):
        """A flow with one parameter more."""
        return Wider(**parameters).bootstrap

    assert wider.parameters.properties["bootstrap"]["default"] == 2000
    assert wider.parameters.properties["bootstrap"]["minimum"] == 100
    assert wider.parameters.properties["bootstrap"]["description"] == "Bootstrap resamples."

    cli, seen = typer.Typer(), []

    @cli.callback()
    def main() -> None:
        pass

    @flow_command("wider", Wider, arguments=("model",), required=("model",), on=cli)
    def wider_cmd(params: Wider) -> None:
        seen.append(params)

    try:
        result = CliRunner().invoke(cli, ["wider", "m", "--bootstrap", "500", "--dataset", "openi"])
        assert result.exit_code == 0, result.output
        assert seen == [Wider(model="m", bootstrap=500, dataset="openi")]
        refused = CliRunner().invoke(cli, ["wider", "m", "--bootstrap", "5"])
        assert refused.exit_code == 2 and seen == [seen[0]]
    finally:
        FLOW_COMMANDS.pop("wider", None)


def test_invalid_values_are_refused_naming_the_parameter(tmp_path):
    with pytest.raises(ValidationError, match=r"task_runner\n  Input should be 'thread', 'process' or 'dask'"):
        BuildParameters(task_runner="ray")
    with pytest.raises(ValidationError, match=r"image_size\n  Input should be greater than or equal to 16"):
        BuildParameters(image_size=8)
    with pytest.raises(ValidationError, match=r"label_policy\n  Input should be 'cascade', 'union'"):
        BuildParameters(label_policy="vote")
    with pytest.raises(ValidationError, match=r"prompt_options\n  Value error, pass the API key as \$OFFCLIP_LLM_API_KEY"):
        BuildParameters(prompt_options={"api_key": "sk-secret"})
    with pytest.raises(ValidationError, match="not a train parameter: max_step"):
        BuildParameters(train_parameters={"max_step": 2})
    with pytest.raises(ValidationError, match=r"train_parameters\.loss\n  Input should be 'offclip' or 'infonce'"):
        BuildParameters(train_parameters={"loss": "triplet"})
    with pytest.raises(ValidationError, match=r"sourse\n  Extra inputs are not permitted"):
        BuildParameters(sourse="w")
    with pytest.raises(ValidationError, match=r"text_source\n  Input should be 'filtered' or 'report'"):
        TrainParameters(text_source="abstract")
    with pytest.raises(ValidationError, match=r"model\n  Field required"):
        EvaluateParameters()
    # the Makefile demo's parameters are valid
    assert BuildParameters(train_parameters={"baseline": True}).train_parameters == {"baseline": True}

    # the command line says which option is wrong, exits 2, and creates nothing
    out = tmp_path / "o"
    runner = CliRunner()
    for args, message in (
        (["--task-runner", "ray"], "'ray' is not one of 'thread', 'process', 'dask'"),
        (["--image-size", "8"], "greater than or equal to 16"),
        (["--prompt-options", '{"api_key": "sk-secret"}'], "--prompt-options: Value error, pass the API key"),
        (["--train-parameters", '{"max_step": 2}'], "--train-parameters: Value error, not a train parameter: max_step"),
        (["--train-parameters", "{max_steps: 2}"], "--train-parameters: not JSON"),
    ):
        result = runner.invoke(app, ["build-shards", str(tmp_path / "world"), str(out), *args], terminal_width=200)
        assert result.exit_code == 2 and message in _plain(result.output), (args, result.output)
    assert not out.exists()


def test_library_choices_are_the_models_choices():
    """The models' choices are the library's: those from data_contracts.enums by construction,
    those spelled in flows/parameters.py (their tuple sits beside torch or the classifier) by
    this test."""
    from offclip.flows.parameters import RetrainParameters
    from offclip.flows.runners import RUNNERS
    from offclip.models.data import TEXT_SOURCES
    from offclip.models.evaluate import DATASETS
    from offclip.models.losses import LOSSES
    from offclip.pipeline.classifier.training import DEFAULT_METHOD, METHODS
    from offclip.pipeline.filtering import LABEL_POLICIES
    from offclip.pipeline.labels import LABEL_SOURCES
    from offclip.pipeline.prompting import PROMPTERS

    fields = {**BuildParameters.model_fields, **TrainParameters.model_fields}
    assert set(_literal_values(fields["task_runner"].annotation)) == set(RUNNERS)
    assert set(_literal_values(fields["classifier_method"].annotation)) == set(METHODS)
    assert fields["classifier_method"].default == DEFAULT_METHOD
    assert set(_literal_values(fields["prompting"].annotation)) == set(PROMPTERS)
    assert set(_literal_values(fields["label_source"].annotation)) == set(LABEL_SOURCES)
    assert set(_literal_values(fields["label_policy"].annotation)) == set(LABEL_POLICIES)
    assert set(_literal_values(fields["image_format"].annotation)) == {"png", "jpg"}  # NormalizeConfig.fmt
    assert set(_literal_values(fields["loss"].annotation)) == set(LOSSES)
    assert set(_literal_values(fields["text_source"].annotation)) == set(TEXT_SOURCES)
    assert set(_literal_values(fields["eval_dataset"].annotation)) == set(DATASETS)
    assert set(_literal_values(EvaluateParameters.model_fields["dataset"].annotation)) == set(DATASETS)
    # retrain passes its parameters on: the same field as the flow that takes it
    for field, info in RetrainParameters.model_fields.items():
        if field != "force":
            origin = BuildParameters if field in BuildParameters.model_fields and field != "batch_size" \
                else TrainParameters
            assert field_annotation(info) == field_annotation(origin.model_fields[field]), field
            assert (info.default, info.description) == (origin.model_fields[field].default,
                                                        origin.model_fields[field].description)
    assert issubclass(RetrainParameters, FlowParameters)


def test_flows_refuse_invalid_parameters_before_running(prefect_server, tmp_path):
    """The flow validates its flat parameters against the model before its body runs, and a
    deployment made from it (what `prefect deploy` makes of prefect.yaml) refuses an invalid
    `-p name=value` while taking valid flat ones, the Makefile demo's among them."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ParameterTypeError, PrefectHTTPStatusError

    from offclip.flows.build import build_shards

    out = tmp_path / "o"
    with pytest.raises((ParameterTypeError, ValidationError), match="task_runner"):
        build_shards(source=str(tmp_path / "world"), out=str(out), task_runner="ray", trigger_train=False)
    with pytest.raises((ParameterTypeError, ValidationError), match="OFFCLIP_LLM_API_KEY"):
        build_shards(source=str(tmp_path / "world"), out=str(out), prompt_options={"api_key": "sk"},
                     trigger_train=False)
    assert not out.exists()

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("offclip")
        deployment = client.create_deployment(
            flow_id=flow_id, name="build-shards-form", entrypoint="flows/build.py:build_shards",
            parameter_openapi_schema=build_shards.parameters.model_dump_for_openapi(),
            parameters={"folders": "all"}, enforce_parameter_schema=True)
        run = client.create_flow_run_from_deployment(
            deployment, parameters={"source": "out/demo-world", "out": "out/curated", "image_size": 64,
                                    "train_parameters": {"baseline": True}})
        assert run.parameters["train_parameters"] == {"baseline": True} and run.parameters["folders"] == "all"
        with pytest.raises(PrefectHTTPStatusError, match="task_runner"):
            client.create_flow_run_from_deployment(deployment, parameters={"task_runner": "ray"})
        with pytest.raises(PrefectHTTPStatusError, match="image_size"):
            client.create_flow_run_from_deployment(deployment, parameters={"image_size": 8})

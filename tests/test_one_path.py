"""Issue 30: one path per concept, checked on the source (so a second one cannot creep back in):
one atomic writer, one module that decides parallelism, one module naming the output layout, one
ingest driver for the CLI and the flow. Each test reads the code as text or as a syntax tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("pipeline", "models", "flows", "data_contracts", "offclip", "demo")


def modules() -> list[Path]:
    return sorted(p for d in CHECKED for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def calls(path: Path, dotted: str) -> list[int]:
    """Lines of ``path`` calling ``dotted`` (``os.replace``) as an attribute of its module."""
    owner, name = dotted.rsplit(".", 1)
    tree = ast.parse(path.read_text(), str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
            and isinstance(node.func.value, ast.Name) and node.func.value.id == owner]


def test_the_checked_modules_are_found():
    names = {str(p.relative_to(ROOT)) for p in modules()}
    assert {"pipeline/atomic.py", "pipeline/executor.py", "pipeline/layout.py", "flows/build.py"} <= names
    assert len(names) > 60


@pytest.mark.parametrize("dotted, home", [("os.replace", "pipeline/atomic.py"), ("os.rename", "pipeline/atomic.py"),
                                          ("os.cpu_count", "pipeline/executor.py")])
def test_one_module_does_it(dotted, home):
    """Every file offclip writes goes through pipeline/atomic.py (temporary file + rename); every
    choice of how many processes or threads comes from pipeline/executor.py (resolve_workers)."""
    found = {str(p.relative_to(ROOT)): lines for p in modules() if (lines := calls(p, dotted))}
    assert set(found) <= {home}, f"{dotted} outside {home}: {found}"


#: a path of an output root spelled as a literal: what pipeline/layout.py names
LAYOUT_LITERAL = re.compile(r"^(ingest|curate|cache|shards|images)/|^manifest\.duckdb$|stamps\.parquet$")


def test_output_paths_are_spelled_in_layout_only():
    found = {}
    for path in modules():
        if path.name == "layout.py" and path.parent.name == "pipeline":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value
                    and LAYOUT_LITERAL.search(node.value)):  # prose (a docstring, a column's doc) may name them
                found.setdefault(str(path.relative_to(ROOT)), []).append((node.lineno, node.value))
    assert not found, f"output paths spelled outside pipeline/layout.py: {found}"


def test_the_flow_and_the_cli_share_the_ingest_driver():
    """flows/build.py runs ingest through pipeline.ingest.run_ingest (the function `offclip ingest`
    calls), handing it an executor factory; it neither plans nor merges on its own."""
    build = (ROOT / "flows" / "build.py").read_text()
    imported = {alias.name for node in ast.walk(ast.parse(build)) if isinstance(node, ast.ImportFrom)
                and node.module == "offclip.pipeline.ingest" for alias in node.names}
    assert "run_ingest" in imported
    assert not imported & {"plan_ingest", "finish_ingest", "IngestStage"}
    cli = (ROOT / "offclip" / "cli.py").read_text()
    assert "run_ingest(config)" in cli

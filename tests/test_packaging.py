"""The design-card layout installs as sub-packages of `offclip`; none may be left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_declared():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, directory in mapping.items():
        for init in (REPO / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / directory)
            found.add(".".join([package, *rel.parts]))
    assert found == declared, f"add to [tool.setuptools].packages: {sorted(found - declared)}"


def test_console_command_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["offclip"] == "offclip.cli:app"


def test_rule_vocabulary_is_package_data():
    """The rule labeler reads its vocabulary from pipeline/vocabulary/ at import: every file there
    must match a package-data glob of offclip.pipeline, or an installed offclip has no labeler."""
    from fnmatch import fnmatch

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["offclip.pipeline"]
    files = [p.relative_to(REPO / "pipeline").as_posix()
             for p in (REPO / "pipeline" / "vocabulary").rglob("*") if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"add to [tool.setuptools.package-data] offclip.pipeline: {missing}"

"""mypy over offclip's packages, as they install: ``python tools/typecheck.py`` (``make lint``).

The repository keeps ``pipeline/``, ``models/``, ``flows/``, ``data_contracts/`` and ``demo/`` at
its root and installs them as ``offclip.<name>`` (pyproject's ``package-dir``), which mypy cannot
follow from the tree or through the editable install's import hook. So this builds the installed
layout as a tree of symbolic links under ``.mypy_tree/`` (from pyproject's ``package-dir``, never
spelled twice) and runs mypy there on every package but ``demo``. Extra arguments go to mypy
(e.g. a file: ``offclip/pipeline/ingest.py``). Exit status: mypy's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the link tree and mypy's cache (two checks at once: give each its own, OFFCLIP_MYPY_DIR=DIR)
WORK = Path(os.environ.get("OFFCLIP_MYPY_DIR") or ROOT)
TREE = WORK / ".mypy_tree"
#: the sub-packages not checked (imported by the checked ones, so read, but their errors not reported)
UNCHECKED = ("demo",)


def link_tree() -> Path:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "offclip"
    top.mkdir(parents=True)
    for entry in sorted((ROOT / package_dir["offclip"]).iterdir()):  # offclip/'s own modules and sub-packages
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        if name != "offclip":
            (top / name.removeprefix("offclip.")).symlink_to(ROOT / folder)
    return TREE


def main(argv: list[str]) -> int:
    from mypy import api

    tree = link_tree()
    args = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(WORK / ".mypy_cache")]
    # every file and folder of the installed offclip/ but the unchecked ones, by path from the tree
    targets = sorted(str(p.relative_to(tree)) for p in (tree / "offclip").iterdir()
                     if p.name not in UNCHECKED and (p.suffix == ".py" or p.is_dir()))
    cwd = os.getcwd()
    os.chdir(tree)  # mypy names modules by their path from here
    try:
        out, err, status = api.run(args + targets + argv)
    finally:
        os.chdir(cwd)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

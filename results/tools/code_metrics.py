"""The code's shape at a git revision, for issue 30's before/after: lines per module, the longest
functions, and how many places do each of the things that should be done in one place.

    python results/tools/code_metrics.py [REV ...]      (default: HEAD)

Reads the committed tree of each revision (``git show REV:path``), never the working tree.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter

PACKAGES = ("pipeline/", "models/", "flows/", "data_contracts/", "offclip/", "demo/")
#: what should happen in one place: the calls that do it (``owner.name`` or a bare ``name``), and the
#: module that is its home (not counted)
CONCEPTS = {
    "atomic writers (calls os.replace / os.rename)": (("os.replace", "os.rename"), "pipeline/atomic.py"),
    "worker-count deciders (calls os.cpu_count)": (("os.cpu_count",), "pipeline/executor.py"),
    "ingest drivers (calls finish_ingest)": (("finish_ingest",), "pipeline/ingest.py"),
    "process pools made (ProcessExecutor, ProcessPoolExecutor, Pool)": (
        ("ProcessExecutor", "ProcessPoolExecutor", "Pool"), "pipeline/executor.py"),
}


def calls(tree: ast.AST, needles: tuple[str, ...]) -> bool:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        for needle in needles:
            want_owner, _, want = needle.rpartition(".")
            if name == want and (not want_owner or owner == want_owner):
                return True
    return False


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def files(rev: str) -> dict[str, str]:
    names = [n for n in git("ls-tree", "-r", "--name-only", rev).splitlines()
             if n.endswith(".py") and n.startswith(PACKAGES)]
    return {n: git("show", f"{rev}:{n}") for n in names}


def report(rev: str) -> str:
    code = files(rev)
    lines = Counter({n: len(t.splitlines()) for n, t in code.items()})
    functions = []
    trees = {name: ast.parse(text) for name, text in code.items()}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # statements (a formatter cannot change them) and lines
                statements = sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - 1
                functions.append((statements, node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    functions.sort(reverse=True)
    out = [f"## {rev} ({git('rev-parse', '--short', rev).strip()})", "",
           f"{len(code)} modules, {sum(lines.values())} lines; modules over 600 lines: "
           f"{sum(v > 600 for v in lines.values())}", "", "largest modules:"]
    out += [f"  {v:5d}  {n}" for n, v in lines.most_common(8)]
    out += ["", "longest functions (statements, lines):"] + [f"  {n:5d} {k:5d}  {f}" for n, k, f in functions[:8]]
    out += ["", "modules doing each thing outside its home:"]
    for what, (needles, home) in CONCEPTS.items():
        where = sorted(n for n, tree in trees.items() if n != home and calls(tree, needles))
        out.append(f"  {what}: {len(where)}  {', '.join(where)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for rev in sys.argv[1:] or ["HEAD"]:
        print(report(rev))

"""Flow run names from a run's parameters, so that a month of weekly retrains is not a column of
identical names in the UI: ``train · offclip · seed 0 · demo · curated · 2026-12-03 19:40``.

Each flow passes ``flow_run_name=run_namer(...)``; Prefect calls it when the run starts, and
:mod:`prefect.runtime` gives the run's parameters and its start time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import PurePath

from offclip.data_contracts.enums import DEFAULT_MODEL_CONFIG

SEP = " · "


def _leaf(path: object) -> str | None:
    """The last part of a path (``out/curated`` → ``curated``); None for None."""
    if path in (None, ""):
        return None
    return PurePath(str(path)).name or str(path)


def _stamp(when: dt.datetime | None) -> str:
    when = when or dt.datetime.now(dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def run_name(kind: str, parameters: dict, when: dt.datetime | None = None) -> str:
    """The name of a ``kind`` run (build-shards, train, evaluate, retrain) with ``parameters``."""
    p = parameters
    parts: list[object]  # None and "" are left out, the rest as text
    if kind == "build-shards":
        parts = [f"{_leaf(p.get('source'))} → {_leaf(p.get('out'))}"]
    elif kind == "train":
        config = str(p.get("config") or DEFAULT_MODEL_CONFIG)
        parts = [
            p.get("loss", "offclip"),
            f"seed {p.get('seed', 0)}",
            PurePath(config).stem if config.endswith(".json") else config,
            _leaf(p.get("run_dir")) or _leaf(p.get("shards")),
        ]
        if p.get("text_source") not in (None, "filtered"):
            parts.insert(1, f"{p['text_source']} text")
    elif kind == "evaluate":
        model = PurePath(str(p.get("model", "")))
        parts = [p.get("dataset", "vindr-cxr"), model.parent.name if model.name == "model" else model.name]
    elif kind == "retrain":
        parts = [f"{_leaf(p.get('source'))} → {_leaf(p.get('out'))}", p.get("loss", "offclip")]
    else:
        parts = []
    return SEP.join([kind, *[str(x) for x in parts if x not in (None, "")], _stamp(when)])


def run_namer(kind: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable for Prefect: the name from the running flow's parameters."""

    def name() -> str:
        from prefect.runtime import flow_run

        return run_name(kind, dict(flow_run.parameters or {}), flow_run.scheduled_start_time)

    name.__name__ = f"{kind.replace('-', '_')}_run_name"
    return name

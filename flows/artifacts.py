"""What offclip's Prefect artifacts hold, made to render in the UI.

Prefect stores a table artifact as JSON and its UI parses it: a float ``inf`` or ``nan`` written
as ``Infinity``/``NaN`` is not JSON, and the whole table shows "No results". Long text in a
markdown table takes the width its label columns need. These helpers are the one place that
turns offclip's rows and texts into what an artifact may hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any
from uuid import UUID

#: characters of free text (a sentence, a prompt) kept in an artifact's table cell
CELL_CHARS = 80


def finite(value: Any) -> Any:
    """A value an artifact's JSON can hold: NaN → None (empty cell), ±inf → ``"+inf"``/``"-inf"``
    (e.g. a Youden threshold that calls nothing positive), numpy scalars → Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "+inf" if value > 0 else "-inf"
    return value


def short(text: Any, limit: int = CELL_CHARS, markdown: bool = False) -> Any:
    """Free text on one line, cut to ``limit`` characters (an ellipsis says so); with
    ``markdown``, pipes escaped (a cell of a markdown table)."""
    if not isinstance(text, str):
        return text
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("|", "\\|") if markdown else text


def _rounded(value: Any, digits: int = 4) -> Any:
    """Floats to ``digits`` decimals: a table cell reads 0.7467, not 0.7467279411764706."""
    return round(value, digits) if isinstance(value, float) else value


def table_rows(
    rows: Iterable[dict], *, first: tuple[str, ...] = (), last: tuple[str, ...] = (), text: tuple[str, ...] = ()
) -> list[dict]:
    """Rows for ``create_table_artifact``: every value :func:`finite` (floats to 4 decimals), the ``first`` columns
    leading (the labels a reader needs in view), the ``last`` trailing, ``text`` columns
    :func:`short`."""
    out = []
    for row in rows:
        keys = (
            [k for k in first if k in row]
            + [k for k in row if k not in first and k not in last]
            + [k for k in last if k in row]
        )
        out.append({k: short(finite(row[k])) if k in text else _rounded(finite(row[k])) for k in keys})
    return out


def root_flow_run_id() -> str | None:
    """The flow run at the top of this one's chain: a run a deployment started from another flow
    (``run_deployment``) points at a task run of its parent; followed up to the run with none (for
    ``make demo``, the build-shards run). None outside a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    current = flow_run.id
    if current is None:
        return None
    with get_client(sync_client=True) as client:
        for _ in range(16):  # a chain is a few runs long; never loop on a malformed one
            run = client.read_flow_run(current)
            if run.parent_task_run_id is None:
                break
            current = client.read_task_run(run.parent_task_run_id).flow_run_id
    return str(current)


def markdown_on_root(key: str, markdown: str, description: str) -> str | None:
    """The same markdown artifact on the chain's top run too (where a person looks first: the
    build-shards run ``make demo`` started); returns that run's id, None when this run is the top."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.runtime import flow_run

    root = root_flow_run_id()
    if root is None or root == str(flow_run.id):
        return None
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(key=key, type="markdown", data=markdown, description=description, flow_run_id=UUID(root))
        )
    return root

"""The Prefect side of ``offclip purge``: the artifacts that quote a purged study's sentences.

The build-shards summary artifact lists the sentences where the classifier and the rules
disagree, by text; every build adds a version of it. :func:`delete_artifacts_quoting` deletes,
on the server the client is configured for (``PREFECT_API_URL``), every artifact version whose
data or description holds one of the given texts. The records themselves are
``offclip.pipeline.purge``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: artifacts read per request
PAGE = 200


@dataclass
class ArtifactPurge:
    searched: int = 0
    deleted: list[str] = field(default_factory=list)  #: "<key or id> (<created>)"

    def to_text(self) -> str:
        text = f"  Prefect artifacts: {self.searched} searched, {len(self.deleted)} deleted"
        return text + (
            f" ({', '.join(self.deleted[:5])}{', …' if len(self.deleted) > 5 else ''})" if self.deleted else ""
        )


def _forms(text: str) -> set[str]:
    """How a sentence may stand in an artifact: as it is, JSON-escaped (a table artifact's data
    is JSON), markdown-escaped (``|`` in a markdown table)."""
    return {text, json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1], text.replace("|", "\\|")}


def delete_artifacts_quoting(texts: list[str]) -> ArtifactPurge:
    """Delete every artifact whose data or description quotes one of ``texts``."""
    from prefect.client.orchestration import get_client

    forms = sorted({f for t in texts if t for f in _forms(t)}, key=len, reverse=True)
    result = ArtifactPurge()
    if not forms:
        return result
    doomed = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_artifacts(limit=PAGE, offset=offset)
            if not page:
                break
            offset += len(page)
            result.searched += len(page)
            for artifact in page:
                data = (
                    artifact.data if isinstance(artifact.data, str) else json.dumps(artifact.data, ensure_ascii=False)
                )
                haystack = f"{data}\n{artifact.description or ''}"
                if any(f in haystack for f in forms):
                    doomed.append(artifact)
        for artifact in doomed:
            client.delete_artifact(artifact.id)
            result.deleted.append(f"{artifact.key or artifact.id} ({artifact.created:%Y-%m-%d %H:%M})")
    return result

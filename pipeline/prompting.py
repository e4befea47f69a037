"""Optional *text prompting*: rewrite each kept sentence as templated finding sentences.

OFF-CLIP rewrote findings into a uniform style with an LLM. offclip has two backends behind one
interface, both off by default:

- ``template``: built from the rule labeler's structure — each finding mention becomes
  "There is mild cardiomegaly." / "There may be pneumonia." / "There is no pleural effusion.";
  a sentence without a finding mention stays as written.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp server,
  a hosted API). An unreachable or failing endpoint is a clear :class:`PromptBackendError`.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

SEVERITY = ("minimal", "trace", "tiny", "small", "mild", "moderate", "large", "severe", "marked", "extensive")
PROMPTERS = ("none", "template", "openai")


class PromptBackendError(RuntimeError):
    """The prompting backend could not rewrite the text (endpoint down, bad answer, …)."""


class Prompter(Protocol):
    name: str

    def rewrite(self, sentences: Sequence[str]) -> list[str]: ...


def _describe(mention) -> str:
    words = [m for m in mention.modifiers if m.lower() != mention.finding.lower()]
    severity = [w for w in words if w.lower() in SEVERITY]
    others = [w for w in words if w.lower() not in SEVERITY]
    return " ".join(severity[:1] + others[:2] + [mention.finding])


def template_sentence(label) -> str | None:
    """Templated sentences for one :class:`~offclip.pipeline.labeler.RuleLabel` (None if it has
    no finding mention)."""
    parts: list[str] = []
    seen: set[tuple[str, str]] = set()
    for mention in label.mentions:
        if (mention.finding, mention.status) in seen:
            continue
        seen.add((mention.finding, mention.status))
        if mention.status == "negated":
            parts.append(f"There is no {mention.finding}.")
        elif mention.status == "uncertain":
            parts.append(f"There may be {_describe(mention)}.")
        else:
            parts.append(f"There is {_describe(mention)}.")
    return " ".join(parts) if parts else None


class TemplatePrompter:
    name = "template"

    def __init__(self, labeler=None) -> None:
        if labeler is None:
            from .labeler import RuleLabeler

            labeler = RuleLabeler()
        self.labeler = labeler

    def rewrite(self, sentences: Sequence[str]) -> list[str]:
        labels = self.labeler.label_many(list(sentences))
        return [template_sentence(lab) or text for lab, text in zip(labels, sentences)]


class OpenAIPrompter:
    """Rewrite through an OpenAI-compatible chat-completions endpoint, one sentence per request."""

    name = "openai"
    SYSTEM = ("You rewrite one sentence from a chest X-ray report into short templated sentences, "
              "one per finding: 'There is <severity> <finding>.', 'There may be <finding>.' or "
              "'There is no <finding>.'. Answer with the rewritten text only.")

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0) -> None:
        self.base_url = (base_url or os.environ.get("OFFCLIP_LLM_URL") or "").rstrip("/")
        if not self.base_url:
            raise PromptBackendError("the openai prompter needs an endpoint: --llm-url or $OFFCLIP_LLM_URL "
                                     "(e.g. http://127.0.0.1:8000/v1)")
        self.model = model or os.environ.get("OFFCLIP_LLM_MODEL", "default")
        self.api_key = api_key or os.environ.get("OFFCLIP_LLM_API_KEY", "")
        self.timeout = timeout

    def rewrite(self, sentences: Sequence[str]) -> list[str]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        out: list[str] = []
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            for text in sentences:
                body = {"model": self.model, "temperature": 0,
                        "messages": [{"role": "system", "content": self.SYSTEM},
                                     {"role": "user", "content": text}]}
                try:
                    response = client.post(url, json=body)
                except httpx.HTTPError as exc:
                    raise PromptBackendError(f"LLM endpoint {url} unreachable: {type(exc).__name__}: {exc}") from exc
                if response.status_code != 200:
                    raise PromptBackendError(f"LLM endpoint {url} answered HTTP {response.status_code}: "
                                             f"{response.text[:200]}")
                try:
                    content = response.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise PromptBackendError(f"LLM endpoint {url} sent no chat completion: {response.text[:200]}") from exc
                out.append(" ".join(str(content).split()) or text)
        return out


def make_prompter(kind: str, **options) -> Prompter | None:
    if kind not in PROMPTERS:
        raise ValueError(f"prompting must be one of {PROMPTERS}, not {kind!r}")
    if kind == "none":
        return None
    if kind == "template":
        return TemplatePrompter(options.get("labeler"))
    return OpenAIPrompter(options.get("base_url"), options.get("model"), options.get("api_key"),
                          options.get("timeout", 30.0))

"""Optional *text prompting*: rewrite each kept sentence as templated finding sentences.

OFF-CLIP rewrote findings into a uniform style with an LLM. offclip has two backends behind one
interface, both off by default:

- ``template``: built from the rule labeler's structure — each finding mention becomes
  "There is mild cardiomegaly." / "There may be pneumonia." / "There is no pleural effusion.";
  a sentence without a finding mention stays as written.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp server,
  a hosted API), at corpus scale — the scorer's treatment (:mod:`offclip.pipeline.scoring`):

  * **each unique sentence once**: the key is the sentence with its whitespace runs collapsed
    (what is sent), *not* the scorer's :func:`~offclip.pipeline.text.normalize_key`: that one
    folds case and punctuation, which an LLM's rewrite may depend on ("AP", "ET tube", de-id
    tokens), and the cached answer would then depend on which variant came first.
  * **a DuckDB cache** ``llm_rewrites(text, model, prompt_version, answer)`` (curate keeps it in
    ``OUT/cache/llm_rewrites.duckdb``): a re-run sends nothing, an incremental run only new text.
    ``prompt_version`` hashes the system prompt, the user template, the temperature and the
    answer post-processing (:data:`ANSWER_FORMAT`), so editing the prompt misses the cache by
    itself. The endpoint URL is *not* in the key: the same model name behind another URL (a
    second vLLM replica, a proxy, a moved server) gives the same answer at temperature 0; serve
    a different model under a different name.
  * **bounded concurrency** (``max_concurrency`` requests in flight, a thread pool on one
    ``httpx.Client``); the output order is the input order.
  * **retries** on 429, 5xx, timeouts and connection errors: exponential backoff with jitter, or
    the server's ``Retry-After``; any other 4xx or a malformed answer fails at once with the
    server's message. After ``max_retries`` a :class:`PromptBackendError` names the URL, the
    last status and how many sentences were answered. Answers obtained are committed to the
    cache in batches (one DuckDB transaction each, so a killed process loses at most the last
    batch and never leaves a partial one): a re-run resumes. The caller writes nothing.
  * a tqdm bar over the unique sentences (shown on a TTY; ``progress=`` forces it) and
    :class:`PromptingStats` (unique, cached, model calls, retries) in ``prompter.stats``.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from ..data_contracts.enums import PROMPTERS
from .scoring import DuckDBCache

SEVERITY = ("minimal", "trace", "tiny", "small", "mild", "moderate", "large", "severe", "marked", "extensive")


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


#: bumped when the answer's post-processing changes; part of every prompt version
ANSWER_FORMAT = 1
FLUSH_SECONDS = 5.0  #: answers are committed to the cache at least this often (and every flush_every)


def prompt_version(system: str, user_template: str, temperature: float) -> str:
    """What the cache keys a prompt by: a hash of everything that shapes the answer but the model."""
    spec = json.dumps(
        {"system": system, "user": user_template, "temperature": temperature, "answer_format": ANSWER_FORMAT},
        sort_keys=True,
    )
    return "p" + hashlib.sha256(spec.encode()).hexdigest()[:12]


class PromptCache(DuckDBCache):
    """``llm_rewrites(text, model, prompt_version, answer, answered_at)`` in a DuckDB file (or in
    memory): each sentence is rewritten at most once per model and prompt version, ever."""

    PRUNE_BY = {"llm_rewrites": "text"}

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path)
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS llm_rewrites ("
            " text VARCHAR NOT NULL, model VARCHAR NOT NULL, prompt_version VARCHAR NOT NULL,"
            " answer VARCHAR NOT NULL, answered_at TIMESTAMPTZ DEFAULT current_timestamp,"
            " PRIMARY KEY (text, model, prompt_version))"
        )

    def lookup(self, texts: Sequence[str], model: str, version: str) -> dict[str, str]:
        if not len(texts):
            return {}
        self.con.register("wanted", pa.table({"text": pa.array(list(texts), pa.string())}))
        try:
            rows = self.con.execute(
                "SELECT r.text, r.answer FROM llm_rewrites r JOIN wanted w USING (text)"
                " WHERE r.model = ? AND r.prompt_version = ?",
                [model, version],
            ).fetchall()
        finally:
            self.con.unregister("wanted")
        return dict(rows)

    def add(self, texts: Sequence[str], answers: Sequence[str], model: str, version: str) -> None:
        """One transaction: a process killed meanwhile leaves the cache as it was before."""
        if not len(texts):
            return
        new = pa.table(
            {
                "text": pa.array(list(texts), pa.string()),
                "model": pa.array([model] * len(texts), pa.string()),
                "prompt_version": pa.array([version] * len(texts), pa.string()),
                "answer": pa.array(list(answers), pa.string()),
            }
        )
        self.con.register("new_answers", new)
        try:
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute(
                    "INSERT INTO llm_rewrites (text, model, prompt_version, answer)"
                    " SELECT * FROM new_answers ON CONFLICT DO NOTHING"
                )
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
        finally:
            self.con.unregister("new_answers")

    def count(self, model: str | None = None, version: str | None = None) -> int:
        return self.con.execute(
            "SELECT count(*) FROM llm_rewrites WHERE (? IS NULL OR model = ?) AND (? IS NULL OR prompt_version = ?)",
            [model, model, version, version],
        ).fetchall()[0][0]  # fetchall: no result left open


@dataclass
class PromptingStats:
    sentences: int
    unique: int  #: unique (whitespace-collapsed, non-empty) sentences
    cached: int  #: of them, answered from the cache
    model_calls: int  #: sentences sent to the model in this run (answered or not)
    retries: int  #: requests repeated after a 429, a 5xx, a timeout or a connection error
    seconds: float
    model: str = ""
    prompt_version: str = ""

    def to_text(self) -> str:
        return (
            f"prompting openai ({self.model}, prompt {self.prompt_version}): unique {self.unique} · "
            f"from cache {self.cached} · model calls {self.model_calls} · retries {self.retries} · "
            f"{self.seconds:.1f} s"
        )


class _RequestFailed(Exception):
    def __init__(self, problem: str, retries: int, retryable: bool, sent: bool = True, stopped: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.retries, self.retryable, self.sent = problem, retries, retryable, sent
        self.stopped = stopped  #: given up because another request failed, not a failure itself


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        import datetime as dt

        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())


def _snippet(text: str, n: int = 300) -> str:
    return " ".join(text.split())[:n]


class OpenAIPrompter:
    """Rewrite through an OpenAI-compatible chat-completions endpoint: each unique sentence once,
    cached, ``max_concurrency`` requests in flight, retries with backoff (see the module doc).

    ``cache``: a :class:`PromptCache`, a DuckDB file path, or None (in memory: dedup within one
    :meth:`rewrite` only). ``backoff``: the first retry's delay in seconds, doubled per retry with
    jitter, at most ``max_backoff`` (also the cap on a server's ``Retry-After``). ``progress``:
    None → a bar on a TTY only.
    """

    name = "openai"
    SYSTEM = (
        "You rewrite one sentence from a chest X-ray report into short templated sentences, "
        "one per finding: 'There is <severity> <finding>.', 'There may be <finding>.' or "
        "'There is no <finding>.'. Answer with the rewritten text only."
    )
    USER_TEMPLATE = "{sentence}"
    TEMPERATURE = 0

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        cache: PromptCache | str | Path | None = None,
        max_concurrency: int | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 120.0,
        progress: bool | None = None,
        system: str | None = None,
        flush_every: int = 256,
    ) -> None:
        self.base_url = (base_url or os.environ.get("OFFCLIP_LLM_URL") or "").rstrip("/")
        if not self.base_url:
            raise PromptBackendError(
                "the openai prompter needs an endpoint: prompt_options base_url or $OFFCLIP_LLM_URL "
                "(e.g. http://127.0.0.1:8000/v1)"
            )
        self.url = f"{self.base_url}/chat/completions"
        self.model = model or os.environ.get("OFFCLIP_LLM_MODEL", "default")
        self.api_key = api_key or os.environ.get("OFFCLIP_LLM_API_KEY", "")
        self.timeout = float(timeout)
        self.cache = cache
        concurrency: int | str | None = max_concurrency
        if concurrency is None:
            concurrency = os.environ.get("OFFCLIP_LLM_CONCURRENCY") or 8
        self.max_concurrency = int(concurrency)
        if self.max_concurrency < 1 or max_retries < 0 or backoff < 0 or flush_every < 1:
            raise ValueError(
                "openai prompting: max_concurrency and flush_every must be ≥ 1, max_retries and backoff ≥ 0"
            )
        self.max_retries, self.backoff, self.max_backoff = int(max_retries), float(backoff), float(max_backoff)
        self.progress = progress
        self.flush_every = int(flush_every)
        self.system = system or self.SYSTEM
        self.prompt_version = prompt_version(self.system, self.USER_TEMPLATE, self.TEMPERATURE)
        self.stats: PromptingStats | None = None  #: the last rewrite's (also after a failure)

    def rewrite(self, sentences: Sequence[str]) -> list[str]:
        start = time.perf_counter()
        texts = [" ".join(str(s).split()) for s in sentences]
        unique = [t for t in dict.fromkeys(texts) if t]
        owned = not isinstance(self.cache, PromptCache)
        cache = self.cache if isinstance(self.cache, PromptCache) else PromptCache(self.cache)
        stats = self.stats = PromptingStats(len(texts), len(unique), 0, 0, 0, 0.0, self.model, self.prompt_version)
        try:
            known = cache.lookup(unique, self.model, self.prompt_version)
            stats.cached = len(known)
            todo = [t for t in unique if t not in known]
            if todo:
                self._complete_all(todo, cache, known)
        finally:
            stats.seconds = time.perf_counter() - start
            if owned:
                cache.close()
        return [(known[t] or t) if t else t for t in texts]  # an empty answer keeps the sentence

    def _complete_all(self, todo: list[str], cache: PromptCache, known: dict[str, str]) -> None:
        """Send ``todo`` with at most ``max_concurrency`` requests in flight; answers go to
        ``known`` and, a batch per transaction, to the cache. The first request that fails for
        good stops the rest (those in flight finish, and their answers are kept too)."""
        import httpx
        from tqdm import tqdm

        stats = self.stats
        assert stats is not None  # set by rewrite, the only caller, before it calls this
        stop = threading.Event()
        queue = iter(todo)
        pending: dict[Future, str] = {}
        batch: dict[str, str] = {}
        failure: _RequestFailed | None = None
        answered = 0
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal last_flush
            if batch:
                cache.add(list(batch), list(batch.values()), self.model, self.prompt_version)
                known.update(batch)
                batch.clear()
            last_flush = time.monotonic()

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        client = httpx.Client(timeout=self.timeout, headers=headers, limits=limits)
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="offclip-llm")
        bar = tqdm(
            total=stats.unique,
            initial=stats.cached,
            unit="sentence",
            desc=f"llm {self.model}",
            disable=None if self.progress is None else not self.progress,
        )
        try:
            while True:
                # a bounded window of submitted requests: a million sentences are not a million futures
                while not stop.is_set() and len(pending) < 2 * self.max_concurrency:
                    text = next(queue, None)
                    if text is None:
                        break
                    pending[pool.submit(self._complete, client, text, stop)] = text
                    stats.model_calls += 1
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    text = pending.pop(future)
                    try:
                        answer, retries = future.result()
                    except _RequestFailed as exc:
                        stats.retries += exc.retries
                        stats.model_calls -= not exc.sent  # stopped before its first request
                        if failure is None and not exc.stopped:  # the first failure is the one reported
                            failure = exc
                        stop.set()
                        continue
                    stats.retries += retries
                    batch[text] = answer
                    answered += 1
                    bar.update()
                if len(batch) >= self.flush_every or time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                flush()  # answers obtained are complete and correct: keep them, a re-run resumes
            finally:
                client.close()
                bar.close()
        if failure is not None:
            where = f"the cache {cache.path}" if cache.path is not None else "no cache file (cache=None)"
            gave_up = f" (gave up after {failure.retries} retries)" if failure.retryable else ""
            raise PromptBackendError(
                f"LLM endpoint {self.url} {failure.problem}{gave_up}; {answered} of the {len(todo)} sentences to send "
                f"were answered ({stats.cached} more came from the cache) and are kept in {where}: "
                f"a re-run sends only the rest"
            )

    def _delay(self, retries: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2**retries) * random.uniform(0.5, 1.0)

    def _complete(self, client, text: str, stop: threading.Event) -> tuple[str, int]:
        """One sentence's answer and how many retries it took (in a pool thread). A failure for
        good stops the other requests at once (before their next attempt)."""
        try:
            return self._attempts(client, text, stop)
        except _RequestFailed:
            stop.set()
            raise

    def _attempts(self, client, text: str, stop: threading.Event) -> tuple[str, int]:
        import httpx

        body = {
            "model": self.model,
            "temperature": self.TEMPERATURE,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": self.USER_TEMPLATE.format(sentence=text)},
            ],
        }
        retries = 0
        while True:
            if stop.is_set():
                raise _RequestFailed("stopped", retries, retryable=False, sent=retries > 0, stopped=True)
            retry_after = None
            try:
                response = client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                problem = f"timed out ({type(exc).__name__} after {self.timeout:g} s)"
            except httpx.TransportError as exc:  # refused, reset, closed mid-answer, DNS, …
                problem = f"unreachable: {type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:
                raise _RequestFailed(f"failed: {type(exc).__name__}: {exc}", retries, retryable=False) from exc
            else:
                status = response.status_code
                if status == 200:
                    try:
                        content = response.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise _RequestFailed(
                            f"sent no chat completion: {_snippet(response.text)}", retries, retryable=False
                        ) from None
                    return " ".join(str(content or "").split()), retries
                problem = f"answered HTTP {status}: {_snippet(response.text)}"
                if status != 429 and status < 500:  # the request itself is wrong: retrying cannot help
                    raise _RequestFailed(problem, retries, retryable=False)
                retry_after = _retry_after(response.headers.get("retry-after"))
            if retries >= self.max_retries:
                raise _RequestFailed(problem, retries, retryable=True)
            delay = self._delay(retries, retry_after)
            retries += 1
            if stop.wait(delay):
                raise _RequestFailed("stopped", retries, retryable=False, stopped=True)


def make_prompter(kind: str, **options) -> Prompter | None:
    if kind not in PROMPTERS:
        raise ValueError(f"prompting must be one of {PROMPTERS}, not {kind!r}")
    if kind == "none":
        return None
    if kind == "template":
        return TemplatePrompter(options.get("labeler"))
    options = {k: v for k, v in options.items() if v is not None and k != "labeler"}
    try:
        return OpenAIPrompter(**options)
    except TypeError as exc:  # an option the prompter does not know
        raise ValueError(f"openai prompting: {exc}") from exc

"""LLM prompting at corpus scale, against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server (stdlib ``ThreadingHTTPServer``, started here) speaks the chat-completions protocol:
POST ``/v1/chat/completions`` → ``{"choices": [{"message": {"content": ...}}]}``, with a fixed
rule for the answer ("There is <THE SENTENCE UPPER-CASED>"). It counts requests and the most in
flight at once, and can be told to answer 429 (``Retry-After: 0``) or 5xx for the first k
requests, always, or for one sentence. The client under test is the real ``httpx`` one.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from offclip.pipeline.curate import CurateConfig, read_curated, run_curate
from offclip.pipeline.layout import CURATE_DIR, PROMPT_CACHE_FILE
from offclip.pipeline.ingest import write_table
from offclip.pipeline.prompting import (OpenAIPrompter, PromptBackendError, PromptCache,
                                        _retry_after, make_prompter)
from offclip.pipeline.text import normalize_key


def expected(text: str) -> str:
    return f"There is {' '.join(text.split()).upper()}"


class ChatServer:
    """A real HTTP/1.1 server in a thread; ``fail_first``/``fail_always``/``fail_text`` inject errors."""

    def __init__(self, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered: list[str] = []  #: user messages answered with 200, in order
        self.models: set[str] = set()
        self.fail_first = 0  #: the first k requests get fail_status
        self.fail_status = 429
        self.fail_always: int | None = None  #: every request gets this status
        self.fail_text: tuple[str, int] | None = None  #: (substring, status): that sentence fails
        self.slow_first = 0.0  #: the first request sleeps this long (a client timeout)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    server.requests += 1
                    n = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    request = json.loads(body)
                    text = request["messages"][-1]["content"]
                    time.sleep(server.delay + (server.slow_first if n == 1 else 0.0))
                    status = server.fail_always
                    if status is None and n <= server.fail_first:
                        status = server.fail_status
                    if status is None and server.fail_text and server.fail_text[0] in text:
                        status = server.fail_text[1]
                    if status is not None:
                        return self._send(status, {"error": {"message": f"injected {status} for request {n}"}},
                                          {"Retry-After": "0"} if status == 429 else {})
                    with server.lock:
                        server.answered.append(text)
                        server.models.add(request["model"])
                    self._send(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": request["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": expected(text)}}]})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def prompter(url: str, cache=None, **options) -> OpenAIPrompter:
    options = {"model": "test-model", "timeout": 5.0, "backoff": 0.0, "max_retries": 3, "progress": False,
               "max_concurrency": 4, **options}
    return OpenAIPrompter(base_url=url, cache=cache, **options)


SENTENCES = ["Mild cardiomegaly.", "No pleural effusion.", "Mild  cardiomegaly.", "Small left pneumothorax.",
             "No pleural effusion.", "Lungs are clear.", "mild cardiomegaly.", "Small left pneumothorax."]
UNIQUE = 5  # whitespace collapsed; case and punctuation kept ("mild cardiomegaly." is its own sentence)


def test_each_unique_sentence_once_in_input_order(server, tmp_path):
    p = prompter(server.url, tmp_path / "cache.duckdb")
    out = p.rewrite(SENTENCES)
    assert out == [expected(s) for s in SENTENCES]  # input order, duplicates share the answer
    assert server.requests == UNIQUE and sorted(server.answered) == sorted({" ".join(s.split()) for s in SENTENCES})
    s = p.stats
    assert (s.sentences, s.unique, s.cached, s.model_calls, s.retries) == (len(SENTENCES), UNIQUE, 0, UNIQUE, 0)
    assert server.models == {"test-model"}
    assert p.rewrite([]) == [] and p.rewrite(["", "  "]) == ["", ""] and server.requests == UNIQUE


def test_cache_rerun_makes_no_call_and_is_keyed_by_model_and_prompt(server, tmp_path):
    cache = tmp_path / "cache.duckdb"
    first = prompter(server.url, cache).rewrite(SENTENCES)
    again = prompter(server.url, cache)  # a new instance, the same file: what a re-run does
    assert again.rewrite(SENTENCES) == first and server.requests == UNIQUE
    assert (again.stats.cached, again.stats.model_calls) == (UNIQUE, 0)
    more = again.rewrite(SENTENCES + ["Right basilar atelectasis."])  # incremental: only the new text
    assert more[-1] == expected("Right basilar atelectasis.") and server.requests == UNIQUE + 1
    with ChatServer() as elsewhere:  # the same model behind another URL: the endpoint is not in the key
        assert prompter(elsewhere.url, cache).rewrite(SENTENCES) == first and elsewhere.requests == 0
    other_model = prompter(server.url, cache, model="other-model")
    other_model.rewrite(SENTENCES)
    assert other_model.stats.model_calls == UNIQUE and server.requests == 2 * UNIQUE + 1
    other_prompt = prompter(server.url, cache, system="Rewrite the sentence.")
    assert other_prompt.prompt_version != again.prompt_version
    other_prompt.rewrite(SENTENCES)
    assert other_prompt.stats.model_calls == UNIQUE and server.requests == 3 * UNIQUE + 1
    with PromptCache(cache) as c:  # persisted, one row per (text, model, prompt version)
        assert c.count() == 3 * UNIQUE + 1 and c.count("test-model", again.prompt_version) == UNIQUE + 1
        assert c.lookup(["Lungs are clear."], "other-model", again.prompt_version) == {
            "Lungs are clear.": expected("Lungs are clear.")}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(server, tmp_path, status):
    server.fail_first, server.fail_status = 3, status
    p = prompter(server.url, tmp_path / "cache.duckdb", max_retries=3)
    assert p.rewrite(SENTENCES) == [expected(s) for s in SENTENCES]
    assert p.stats.retries == 3 and p.stats.model_calls == UNIQUE and server.requests == UNIQUE + 3


def test_retry_after_is_honoured_over_the_backoff(server, tmp_path):
    server.fail_first = 2  # 429 with Retry-After: 0, while the client's own backoff would be 30 s
    start = time.perf_counter()
    p = prompter(server.url, None, backoff=30.0, max_concurrency=1)
    assert p.rewrite(["Mild cardiomegaly."]) == [expected("Mild cardiomegaly.")]
    assert p.stats.retries == 2 and time.perf_counter() - start < 5
    assert _retry_after("2.5") == 2.5 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_a_timeout_is_retried(tmp_path):
    with ChatServer() as server:
        server.slow_first = 1.5
        p = prompter(server.url, None, timeout=0.5, max_concurrency=1)
        assert p.rewrite(["Mild cardiomegaly."]) == [expected("Mild cardiomegaly.")]
        assert p.stats.retries == 1 and server.requests == 2


def test_failure_after_the_limit_is_clear_and_keeps_what_was_answered(server, tmp_path):
    cache = tmp_path / "cache.duckdb"
    server.fail_always = 429
    p = prompter(server.url, cache, max_retries=2, max_concurrency=1)
    with pytest.raises(PromptBackendError) as info:
        p.rewrite(SENTENCES)
    message = str(info.value)
    assert server.url + "/chat/completions" in message and "HTTP 429" in message
    assert "gave up after 2 retries" in message and "0 of the" in message and str(cache) in message
    assert p.stats.retries >= 2 and server.requests == 3  # one sentence, 1 + 2 attempts, then stop

    server.fail_always = None  # one sentence fails for good, the others are answered
    server.fail_text = ("pneumothorax", 502)
    p = prompter(server.url, cache, max_retries=1, max_concurrency=2)
    with pytest.raises(PromptBackendError, match=r"HTTP 502.*gave up after 1 retries.*of the 5 sentences to send"):
        p.rewrite(SENTENCES)
    obtained = set(server.answered)
    assert obtained and "Small left pneumothorax." not in obtained
    with PromptCache(cache) as c:  # every answer obtained is in the cache, nothing else
        assert set(c.lookup(list(obtained), "test-model", p.prompt_version)) == obtained
        assert c.count() == len(obtained)
    server.fail_text = None  # healed: a re-run sends only what is missing
    before = server.requests
    resumed = prompter(server.url, cache)
    assert resumed.rewrite(SENTENCES) == [expected(s) for s in SENTENCES]
    assert resumed.stats.cached == len(obtained) and server.requests - before == UNIQUE - len(obtained)


def test_other_4xx_fails_at_once_with_the_servers_message(server, tmp_path):
    server.fail_text = ("pleural", 400)
    p = prompter(server.url, None, max_retries=5, max_concurrency=1)
    with pytest.raises(PromptBackendError, match=r"answered HTTP 400: .*injected 400") as info:
        p.rewrite(["No pleural effusion."])
    assert "gave up" not in str(info.value) and server.requests == 1 and p.stats.retries == 0
    with pytest.raises(PromptBackendError, match="HTTP 404.*no route"):
        prompter(server.url.removesuffix("/v1"), None).rewrite(["x"])


def test_an_unreachable_endpoint_is_retried_then_named():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    p = prompter(f"http://127.0.0.1:{closed}/v1", None, max_retries=2)
    with pytest.raises(PromptBackendError, match=rf"127\.0\.0\.1:{closed}.*unreachable.*gave up after 2 retries"):
        p.rewrite(["x"])


def test_requests_overlap_up_to_max_concurrency(tmp_path):
    texts = [f"Finding number {i}." for i in range(24)]
    with ChatServer(delay=0.05) as server:
        out = prompter(server.url, None, max_concurrency=4).rewrite(texts)
        assert out == [expected(t) for t in texts]  # order kept although answers arrive out of order
        assert 1 < server.max_in_flight <= 4
    with ChatServer(delay=0.01) as server:
        prompter(server.url, None, max_concurrency=1).rewrite(texts[:6])
        assert server.max_in_flight == 1


def test_options_and_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OFFCLIP_LLM_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OFFCLIP_LLM_CONCURRENCY", "3")
    p = make_prompter("openai", model=None, max_concurrency=None, max_retries=2)  # None: the default
    assert (p.max_concurrency, p.max_retries, p.model) == (3, 2, "default")
    with pytest.raises(ValueError, match="openai prompting"):
        make_prompter("openai", concurrency=4)
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIPrompter(max_concurrency=0)


# -- through run_curate: a small ingest output written here, the session's real tiny classifier --


REPORTS = {1: ["Mild cardiomegaly.", "No pleural effusion.", "Small left pneumothorax."],
           2: ["No pleural effusion.", "Lungs are clear."],
           3: ["Mild cardiomegaly.", "Right basilar atelectasis.", "Lungs are clear."],
           4: ["Lungs are clear.", "No pneumothorax."]}


@pytest.fixture
def ingested(tmp_path) -> Path:
    out = tmp_path / "out"
    studies, images, sentences = [], [], []
    for i, report in REPORTS.items():
        subject, study, dicom = 10000000 + i, 50000000 + i, f"dicom-{i}"
        studies.append({"subject_id": subject, "study_id": study, "folder": "p10", "split": "train",
                        "report_path": f"files/p10/p{subject}/s{study}.txt", "n_images": 1, "n_frontal": 1,
                        "frontal_dicom_id": dicom, "frontal_view": "PA", "n_sentences": len(report),
                        "status": "ingested", "reject_reason": None, "content_hash": f"h{i}"})
        images.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                       "path": f"files/p10/p{subject}/s{study}/{dicom}.dcm", "view": "frontal",
                       "view_position": "PA", "view_source": "ViewPosition", "status": "selected",
                       "file_sha256": None, "transfer_syntax": None, "photometric": None, "bits_stored": None,
                       "rows": None, "columns": None, "out_path": f"images/{dicom}.png", "out_rows": None,
                       "out_columns": None})
        start = 0
        for j, text in enumerate(report):
            sentences.append({"study_id": study, "subject_id": subject, "index": j, "section": "findings",
                              "text": text, "key": normalize_key(text), "start": start, "end": start + len(text)})
            start += len(text) + 1
    write_table(out, "studies", pd.DataFrame(studies))
    write_table(out, "images", pd.DataFrame(images))
    write_table(out, "sentences", pd.DataFrame(sentences))
    return out


def test_curate_prompts_through_the_endpoint_then_reruns_from_the_cache(server, ingested, tiny_classifier):
    options = {"base_url": server.url, "model": "test-model", "backoff": 0.0, "progress": False}
    summary = run_curate(CurateConfig(out=ingested, prompting="openai", prompt_options=options),
                         classifier=tiny_classifier[0])
    sentences = read_curated(ingested, "sentences")
    kept = sentences[sentences["kept"]]
    assert kept["prompt"].tolist() == [expected(t) for t in kept["text"]]
    assert sentences.loc[~sentences["kept"], "prompt"].isna().all()
    stats = summary.prompt_stats
    assert stats.model_calls == server.requests == kept["text"].nunique() < len(kept)
    assert "model calls" in summary.to_text() and "retries 0" in summary.to_text()
    assert (ingested / PROMPT_CACHE_FILE).is_file()
    pairs = read_curated(ingested, "pairs")
    prompts = kept.sort_values(["study_id", "index"]).groupby("study_id")["prompt"].agg(list)
    assert all(list(p.texts) == prompts[p.study_id] for p in pairs.itertuples())
    again = run_curate(CurateConfig(out=ingested, prompting="openai", prompt_options=options),
                       classifier=tiny_classifier[0])
    assert again.prompt_stats.model_calls == 0 and server.requests == stats.model_calls
    pd.testing.assert_frame_equal(read_curated(ingested, "sentences"), sentences)


def test_curate_writes_nothing_when_the_endpoint_keeps_failing(server, ingested, tmp_path, tiny_classifier):
    options = {"base_url": server.url, "model": "test-model", "backoff": 0.0, "max_retries": 2, "progress": False}
    fresh = tmp_path / "fresh"
    shutil.copytree(ingested, fresh)
    run_curate(CurateConfig(out=ingested, prompting="openai", prompt_options=options), classifier=tiny_classifier[0])
    written = {p.name: p.read_bytes() for p in (ingested / CURATE_DIR).iterdir()}
    server.fail_always = 503
    for out in (fresh, ingested):  # no earlier output / an earlier output (another model: a cache miss)
        config = CurateConfig(out=out, prompting="openai", prompt_options={**options, "model": "down-model"})
        with pytest.raises(PromptBackendError, match=r"HTTP 503.*gave up after 2 retries.*nothing was written"):
            run_curate(config, classifier=tiny_classifier[0])
    assert not (fresh / CURATE_DIR / "sentences.parquet").exists() and not (fresh / CURATE_DIR / "pairs.parquet").exists()
    assert {p.name: p.read_bytes() for p in (ingested / CURATE_DIR).iterdir()} == written

"""Scoring with the cache, the curate step on a real ingest, and text prompting."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from offclip.pipeline.curate import CurateConfig, read_curated, run_curate
from offclip.pipeline.prompting import OpenAIPrompter, PromptBackendError, TemplatePrompter, make_prompter
from offclip.pipeline.scoring import ScoreCache, score_sentences


def test_unique_sentences_are_classified_once_and_cached(tiny_classifier, tmp_path):
    clf, _ = tiny_classifier
    frame = pd.DataFrame({"text": ["No effusion.", "No effusion", "Mild cardiomegaly.", "no effusion."],
                          "key": ["no effusion", "no effusion", "mild cardiomegaly", "no effusion"]})
    with ScoreCache(tmp_path / "cache.duckdb") as cache:
        scored, stats = score_sentences(frame, clf, cache)
        assert (stats.sentences, stats.unique, stats.model_calls) == (4, 2, 2)
        assert scored["score"].nunique() == 2 and scored.loc[0, "score"] == scored.loc[3, "score"]
        again, stats2 = score_sentences(frame, clf, cache)
        assert stats2.model_calls == 0 and stats2.cached == 2
        pd.testing.assert_frame_equal(scored, again)
        more = pd.concat([frame, pd.DataFrame({"text": ["Small left pneumothorax."], "key": ["small left pneumothorax"]})])
        _, stats3 = score_sentences(more, clf, cache)
        assert stats3.model_calls == 1  # only the new text goes to the model
        assert cache.count(clf.version) == 3 and cache.count("another-model") == 0
    with ScoreCache(tmp_path / "cache.duckdb") as reopened:  # persisted
        assert reopened.lookup(["mild cardiomegaly"], clf.version)


def test_curated_output_follows_the_paper(curated):
    out, summary = curated
    sentences = read_curated(out, "sentences")
    pairs = read_curated(out, "pairs")
    assert summary.scoring.model_calls == summary.scoring.unique < summary.sentences
    assert len(pairs) == summary.pairs == summary.normal + summary.abnormal and summary.normal and summary.abnormal
    for study_id, group in sentences.groupby("study_id"):
        pair = pairs[pairs["study_id"] == study_id].iloc[0]
        if pair["pair_label"] == "abnormal":
            assert not ((group["label"] == "normal") & group["kept"]).any()
            assert (group["label"] == "abnormal").any()
        else:
            assert group["kept"].all()
        assert list(pair["texts"]) == group.sort_values("index").loc[group["kept"], "text"].tolist()
    assert (sentences["model_version"] == summary.model_version).all()
    assert set(pairs["split"]) <= {"train", "validate", "test"}
    for p in pairs.itertuples():
        assert (out / p.image_path).is_file()


def test_rerun_makes_no_model_call_and_same_records(curated, tiny_classifier, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(curated[0], out)
    again = run_curate(CurateConfig(out=out, classifier=tiny_classifier[1]))
    assert again.scoring.model_calls == 0 and again.scoring.cached == again.scoring.unique
    pd.testing.assert_frame_equal(read_curated(out, "sentences"), read_curated(curated[0], "sentences"))
    strict = run_curate(CurateConfig(out=out, classifier=tiny_classifier[1], threshold=0.99))
    assert strict.abnormal <= curated[1].abnormal and strict.scoring.model_calls == 0


def test_template_prompting(curated, tiny_classifier, tmp_path):
    prompter = TemplatePrompter()
    rewritten = prompter.rewrite(["Mild cardiomegaly.", "No pleural effusion.", "Comparison is made to prior."])
    assert rewritten[0] == "There is mild cardiomegaly."
    assert rewritten[1] == "There is no pleural effusion."
    assert rewritten[2] == "Comparison is made to prior."  # no finding: kept as written
    out = tmp_path / "copy"
    shutil.copytree(curated[0], out)
    run_curate(CurateConfig(out=out, classifier=tiny_classifier[1], prompting="template"))
    sentences = read_curated(out, "sentences")
    assert sentences.loc[sentences["kept"], "prompt"].notna().all()
    assert sentences.loc[~sentences["kept"], "prompt"].isna().all()
    pairs = read_curated(out, "pairs")
    prompts = sentences[sentences["kept"]].sort_values(["study_id", "index"]).groupby("study_id")["prompt"].agg(list)
    assert all(list(p.texts) == prompts[p.study_id] for p in pairs.itertuples())
    with pytest.raises(ValueError, match="prompting must be one of"):
        make_prompter("gpt")


class _ChatHandler(BaseHTTPRequestHandler):
    """A stand-in OpenAI-compatible server on loopback (the real backend is an external LLM service)."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if "FAIL" in text:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model crashed")
            return
        answer = {"choices": [{"message": {"role": "assistant", "content": f"There is {text.lower()}"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_backend():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        prompter = OpenAIPrompter(base_url=url, model="any", timeout=5, max_retries=1, backoff=0)
        assert prompter.rewrite(["Mild cardiomegaly."]) == ["There is mild cardiomegaly."]
        with pytest.raises(PromptBackendError, match="HTTP 500"):  # retried, then given up
            prompter.rewrite(["FAIL"])
    finally:
        server.shutdown()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(PromptBackendError, match=rf"127\.0\.0\.1:{closed}.*unreachable"):
        OpenAIPrompter(base_url=f"http://127.0.0.1:{closed}/v1", timeout=2, max_retries=0).rewrite(["x"])


def test_openai_backend_needs_an_endpoint(monkeypatch):
    monkeypatch.delenv("OFFCLIP_LLM_URL", raising=False)
    with pytest.raises(PromptBackendError, match="needs an endpoint"):
        make_prompter("openai")


def test_label_policy_is_applied_and_explained(curated, tiny_classifier, tmp_path):
    """Each sentence keeps the classifier's label, the rules' label and rule; ``label`` is the
    policy's (cascade by default); another policy relabels from the cache (no model call)."""
    from offclip.pipeline.filtering import policy_abnormal
    from offclip.pipeline.labeler import RuleLabeler

    out, summary = curated
    s = read_curated(out, "sentences")
    assert summary.label_policy == "cascade" and (s["label_policy"] == "cascade").all()
    assert ((s["classifier_label"] == "abnormal") == (s["score"] >= s["threshold"])).all()
    rules = RuleLabeler().label_many(s["text"].tolist())
    # the rule labels are per unique key (first text of a key), so compare on one text per key
    first = s.drop_duplicates("key").index
    assert [r.label for r in (rules[i] for i in first)] == s.loc[first, "rule_label"].tolist()
    assert [r.rule for r in (rules[i] for i in first)] == s.loc[first, "rule"].tolist()
    expected = policy_abnormal(s["classifier_label"] == "abnormal", s["rule_label"] == "abnormal", "cascade", s["rule"])
    assert ((s["label"] == "abnormal") == expected).all()
    assert not ((s["rule_label"] == "abnormal") & (s["label"] == "normal")).any()
    unique = s.drop_duplicates("key")
    assert sum(summary.opinions.values()) == len(unique)
    assert summary.disagreements == int((unique["classifier_label"] != unique["rule_label"]).sum())
    assert "label policy cascade" in summary.to_text()

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    by_classifier = run_curate(CurateConfig(out=copy, classifier=tiny_classifier[1], label_policy="classifier"))
    c = read_curated(copy, "sentences")
    assert by_classifier.scoring.model_calls == 0
    assert (c["label"] == c["classifier_label"]).all() and (c["label_policy"] == "classifier").all()
    assert (c["rule_label"] == s["rule_label"]).all()  # from the cache
    union = run_curate(CurateConfig(out=copy, classifier=tiny_classifier[1], label_policy="union"))
    assert union.abnormal >= max(by_classifier.abnormal, summary.abnormal)  # abnormal when either says so
    with pytest.raises(ValueError, match="label policy"):
        run_curate(CurateConfig(out=copy, classifier=tiny_classifier[1], label_policy="vote"))

"""Shared fixtures: the real Open-I files and a small demo world built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def openi_dir() -> str | None:
    """Directory with the two Open-I files: ../shared/data/openi when present, else None (the
    installed torchxrayvision wheel, which `make setup` installs)."""
    shared = SHARED / "openi"
    return str(shared) if (shared / "NLMCXR_reports.tgz").is_file() else None


@pytest.fixture(scope="session")
def openi_sources(openi_dir):
    """The two real Open-I files as the pipeline finds them (../shared/data/openi, else the
    installed torchxrayvision wheel): real-data tests run on a user's clone too. Skips only when
    neither is there (`make setup` installs the wheel)."""
    from offclip.pipeline import openi

    try:
        return openi.find_sources(openi_dir)
    except openi.OpenISourceError as exc:
        pytest.skip(f"Open-I files not found: {exc}")


@pytest.fixture(scope="session")
def small_world(tmp_path_factory, openi_dir):
    """A 40-study world with every fault, at a small scale (built once, shared by many tests)."""
    from offclip.demo.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("world") / "w"
    summary = build_world(WorldConfig(out=out, studies=40, seed=7, scale=0.08, faults=True,
                                      openi=openi_dir, workers=2, progress=False))
    return out, summary


# A real (tiny) sentence classifier: MiniLM features + a logistic-regression head trained on a
# few hand-labelled radiology sentences. Real forward passes; trained once per session.
from offclip.demo.seed_sentences import ABNORMAL_SENTENCES, NORMAL_SENTENCES  # noqa: E402


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from offclip.pipeline.classifier import SentenceClassifier, train_classifier

    clf = train_classifier(NORMAL_SENTENCES + ABNORMAL_SENTENCES,
                           [0] * len(NORMAL_SENTENCES) + [1] * len(ABNORMAL_SENTENCES), method="frozen", seed=0)
    path = tmp_path_factory.mktemp("clf") / "tiny"
    clf.save(path)
    return SentenceClassifier.load(path), path


@pytest.fixture(scope="session")
def curated(small_world, tiny_classifier, tmp_path_factory):
    """The small world ingested (all folders, 96 px) and curated with the tiny classifier."""
    from offclip.pipeline.curate import CurateConfig, run_curate
    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig, run_ingest
    from offclip.pipeline.scan import ScanConfig

    world, _ = small_world
    out = tmp_path_factory.mktemp("curated") / "out"
    run_ingest(IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None),
                            normalize=NormalizeConfig(long_side=96), workers=2, progress=False))
    clf, path = tiny_classifier
    summary = run_curate(CurateConfig(out=out, classifier=path))
    return out, summary


@pytest.fixture(scope="session")
def shards_out(curated, tmp_path_factory):
    """The curated small world with WebDataset shards (8 samples each) and a manifest: the input
    of training and evaluation tests. Read-only for tests: copy it before writing."""
    import shutil

    from offclip.pipeline.manifest import build_manifest
    from offclip.pipeline.shards import ShardConfig, write_shards

    out = tmp_path_factory.mktemp("shards") / "out"
    shutil.copytree(curated[0], out)
    write_shards(ShardConfig(out=out, max_samples=8))
    build_manifest(out)
    return out


@pytest.fixture
def built(curated, tmp_path):
    """A private copy of the curated output with shards (4 samples each) and a manifest: for tests
    that write into it."""
    import shutil

    from offclip.pipeline.manifest import build_manifest
    from offclip.pipeline.shards import ShardConfig, write_shards

    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    write_shards(ShardConfig(out=out, max_samples=4))
    build_manifest(out)
    return out


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect test server (SQLite in a temporary PREFECT_HOME), one per test module."""
    home = tmp_path_factory.mktemp("prefect-home")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests: `make test` runs two pytest workers on two
    cores, and oversubscribed OpenMP threads make a training step several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

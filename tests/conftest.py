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
def small_world(tmp_path_factory, openi_dir):
    """A 40-study world with every fault, at a small scale (built once, shared by many tests)."""
    from offclip.pipeline.demo.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("world") / "w"
    summary = build_world(WorldConfig(out=out, studies=40, seed=7, scale=0.08, faults=True,
                                      openi=openi_dir, workers=2, progress=False))
    return out, summary

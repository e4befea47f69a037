"""Inputs the benchmarks build for themselves, small, with the real pipeline.

A fresh checkout has no demo world, classifier or shards; ``run_all.py`` and ``bench_train.py``
make them here, the same way the test fixtures do (``tests/conftest.py``):

* :func:`small_world` -- ``offclip demo-world`` (real Open-I reports, phantom DICOMs);
* :func:`tiny_classifier` -- a *frozen* sentence classifier (MiniLM features + logistic
  regression) trained on a few hand-labelled sentences: real forward passes, seconds to train;
* :func:`curated_shards` -- ingest → curate (with that classifier) → WebDataset shards →
  manifest, into one curation root.

Each is reused when its output already exists (pass a fresh directory for a fresh build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from offclip.demo.seed_sentences import ABNORMAL_SENTENCES, NORMAL_SENTENCES  # noqa: E402


def small_world(dest: Path, studies: int = 60, scale: float | None = None, workers: int = 2) -> Path:
    """A demo world of ``studies`` studies at ``dest`` (built unless it is already there)."""
    from offclip.demo.world import DEFAULT_SCALE, WorldConfig, build_world

    dest = Path(dest)
    if not (dest / "mimic-cxr-2.0.0-metadata.csv").is_file():
        build_world(WorldConfig(out=dest, studies=studies, seed=0, scale=scale or DEFAULT_SCALE,
                                workers=workers, progress=False, overwrite=True))
    return dest


def tiny_classifier(dest: Path) -> Path:
    """A saved frozen sentence classifier at ``dest`` (trained unless already there)."""
    from offclip.pipeline.classifier import train_classifier

    dest = Path(dest)
    if not (dest / "config.json").is_file():
        clf = train_classifier(NORMAL_SENTENCES + ABNORMAL_SENTENCES,
                               [0] * len(NORMAL_SENTENCES) + [1] * len(ABNORMAL_SENTENCES), method="frozen", seed=0)
        clf.save(dest)
    return dest


def curated_shards(world: Path, out: Path, classifier: Path, long_side: int = 512, shard_samples: int = 64,
                   workers: int = 2) -> Path:
    """The curation root ``out`` for ``world``: ingest → curate → shards → manifest."""
    from offclip.pipeline.curate import CurateConfig, run_curate
    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig, run_ingest
    from offclip.pipeline.manifest import build_manifest
    from offclip.pipeline.scan import ScanConfig
    from offclip.pipeline.shards import ShardConfig, write_shards

    out = Path(out)
    if not (out / "manifest.duckdb").is_file():
        run_ingest(IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None),
                                normalize=NormalizeConfig(long_side=long_side), workers=workers, progress=False))
        run_curate(CurateConfig(out=out, classifier=classifier))
        write_shards(ShardConfig(out=out, max_samples=shard_samples))
        build_manifest(out)
    return out

"""Remove studies from everything offclip wrote for them under a curation output root.

offclip does not de-identify free text (MIMIC-CXR's reports come de-identified from PhysioNet).
When a report turns out to carry something it must not — a name a de-identification pass missed —
fix or remove it at the source, then purge the study here: :func:`purge_studies` takes it out of

* the ingest records (``ingest/{studies,images,sentences,rejects,stamps}.parquet``) and its
  normalised image files (``images/…/s<study>/``),
* the curated records (``curate/{sentences,pairs,study_labels}.parquet``),
* the shards (every shard holding one of its samples is rewritten without it, under its name;
  one left empty is deleted: ``shards.write_shards`` with ``add_new=False``),
* the caches (``cache/sentence_scores.duckdb``, ``cache/llm_rewrites.duckdb``: pruned to the text
  of the remaining corpus, each file rewritten),
* the manifest (rebuilt from the records; its run history and evaluations hold no report text).

The Prefect side (the build-summary artifacts quote sentences) is ``offclip purge``'s, through the
server's API (``flows/purge.py``): this module never imports Prefect. What it returns names the
sentences only these studies had (:attr:`PurgeResult.unique_texts`), the ones to look for there.
A later build over a source that still holds the study ingests it again, from what the source
holds then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..data_contracts.curate import CURATED_SENTENCES, PAIRS, STUDY_LABELS
from .curate import _write, read_curated
from .ingest import TABLES, read_stamps, read_table, save_stamps, write_table
from .layout import (
    CURATE_DIR,
    INGEST_DIR,
    MANIFEST_FILE,
    PROMPT_CACHE_FILE,
    SCORE_CACHE_FILE,
    SHARD_DIR,
    STAMPS_FILE,
    curate_table,
    ingest_table,
)
from .prompting import PromptCache
from .scoring import ScoreCache


@dataclass
class PurgeResult:
    out: Path
    studies: list[int]  #: the study ids asked for
    found: list[int]  #: of them, those the output held anything of
    rows: dict[str, int] = field(default_factory=dict)  #: "<stage>/<table>" -> rows removed
    image_files: int = 0
    shards_rewritten: list[str] = field(default_factory=list)
    shards_removed: list[str] = field(default_factory=list)
    cache_rows: dict[str, int] = field(default_factory=dict)  #: cache file -> rows dropped
    manifest: Path | None = None
    #: the sentences of these studies that no remaining study has (what other stores may quote)
    unique_texts: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        missing = sorted(set(self.studies) - set(self.found))
        lines = [
            f"purge {self.out}: {len(self.found)} of {len(self.studies)} studies found"
            + (f" (not in this output: {', '.join(map(str, missing))})" if missing else "")
        ]
        rows = ", ".join(f"{k} {v}" for k, v in self.rows.items() if v) or "none"
        lines.append(f"  records removed: {rows}")
        lines.append(f"  image files removed: {self.image_files}")
        lines.append(
            f"  shards rewritten: {len(self.shards_rewritten)}, removed: {len(self.shards_removed)}"
            + (
                f" ({', '.join(self.shards_rewritten + self.shards_removed)})"
                if self.shards_rewritten or self.shards_removed
                else ""
            )
        )
        caches = ", ".join(f"{k} {v}" for k, v in self.cache_rows.items()) or "none"
        lines.append(f"  cache rows dropped: {caches}")
        lines.append(f"  manifest: {'rebuilt ' + str(self.manifest) if self.manifest else 'none here'}")
        lines.append(f"  sentences no other study has: {len(self.unique_texts)}")
        return "\n".join(lines)


def purge_studies(out: str | Path, study_ids: Iterable[int]) -> PurgeResult:
    """Remove ``study_ids`` from every file offclip wrote for them under ``out`` (see the module
    docstring). Run it while no build writes into ``out``."""
    out = Path(out)
    ids = sorted({int(s) for s in study_ids})
    if not ingest_table(out, "studies").is_file():
        raise FileNotFoundError(f"{out} holds no ingest records ({INGEST_DIR}/studies.parquet): not a curation output")
    result = PurgeResult(out, ids, [])
    wanted = set(ids)

    # -- what these studies said, and what no other study says (before anything is removed) -----
    sentences = read_table(out, "sentences")
    mine = sentences["study_id"].isin(wanted)
    result.unique_texts = _unique_texts(sentences, mine)

    # -- ingest records and image files ----------------------------------------------------------
    images = read_table(out, "images")
    found: set[int] = set()
    for name in TABLES:
        table = sentences if name == "sentences" else images if name == "images" else read_table(out, name)
        drop = table["study_id"].isin(wanted)
        found |= set(table.loc[drop, "study_id"].astype("int64"))
        result.rows[f"{INGEST_DIR}/{name}"] = int(drop.sum())
        if drop.any():
            write_table(out, name, table[~drop].reset_index(drop=True))
    _purge_stamps(out, wanted, result)
    for rel in images.loc[images["study_id"].isin(wanted) & images["out_path"].notna(), "out_path"]:
        path = out / rel
        if path.is_file():
            path.unlink()
            result.image_files += 1
        _remove_empty_dirs(path.parent, out / "images")

    # -- curated records ---------------------------------------------------------------------------
    contracts = {"sentences": CURATED_SENTENCES, "pairs": PAIRS, "study_labels": STUDY_LABELS}
    for name, contract in contracts.items():
        if not curate_table(out, name).is_file():
            continue
        table = read_curated(out, name)
        drop = table["study_id"].isin(wanted)
        found |= set(table.loc[drop, "study_id"].astype("int64"))
        result.rows[f"{CURATE_DIR}/{name}"] = int(drop.sum())
        if drop.any():
            _write(out, name, contract, table[~drop].reset_index(drop=True))
    result.found = sorted(found)

    # -- shards: rewritten without them --------------------------------------------------------------
    from .shards import ShardConfig, write_shards

    if (out / SHARD_DIR).is_dir() and curate_table(out, "pairs").is_file():
        shards = write_shards(ShardConfig(out=out, add_new=False))
        result.shards_rewritten, result.shards_removed = shards.rewritten, shards.removed

    # -- caches: the text of the remaining corpus only ---------------------------------------------
    remaining = sentences[~mine]
    result.cache_rows[SCORE_CACHE_FILE] = ScoreCache.prune(out / SCORE_CACHE_FILE, remaining["key"])
    result.cache_rows[PROMPT_CACHE_FILE] = PromptCache.prune(
        out / PROMPT_CACHE_FILE, (" ".join(t.split()) for t in remaining["text"])
    )

    # -- the manifest, rebuilt from the records ------------------------------------------------------
    from .manifest import build_manifest

    if (out / MANIFEST_FILE).is_file() and curate_table(out, "pairs").is_file():
        result.manifest = build_manifest(out)
    return result


def unique_texts(out: str | Path, study_ids: Iterable[int]) -> list[str]:
    """The sentences of ``study_ids`` that no other study of ``out`` has (by normalised key):
    what other stores (Prefect's artifacts) may quote of them alone."""
    sentences = read_table(Path(out), "sentences")
    return _unique_texts(sentences, sentences["study_id"].isin({int(s) for s in study_ids}))


def _unique_texts(sentences, mine) -> list[str]:
    other_keys = set(sentences.loc[~mine, "key"])
    return sorted(set(sentences.loc[mine & ~sentences["key"].isin(other_keys), "text"]))


def _purge_stamps(out: Path, wanted: set[int], result: PurgeResult) -> None:
    stamps = read_stamps(out)
    kept = {k: v for k, v in stamps.items() if k not in wanted}
    result.rows[STAMPS_FILE.removesuffix(".parquet")] = len(stamps) - len(kept)
    if len(kept) < len(stamps):
        save_stamps(out, kept)


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents up to (not including) ``stop`` while they are empty."""
    directory, stop = directory.resolve(), stop.resolve()
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def study_ids_from(values: Iterable[str]) -> list[int]:
    """Study ids as a user types them: ``50414267``, ``s50414267`` or a comma-separated list."""
    ids = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            part = part.strip().lstrip("sS")
            if not part.isdigit():
                raise ValueError(f"not a study id: {value!r} (MIMIC study ids are numbers, e.g. 50414267 or s50414267)")
            ids.append(int(part))
    return ids

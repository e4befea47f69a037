"""The evaluation itself (:func:`evaluate`): open the model, embed the prompts and the images,
score, point, compute the metrics, write JSON + ROC PNG + score parquet, record manifest rows;
and ``python -m offclip.models.evaluate`` (:func:`main`)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sys
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...pipeline.atomic import atomic_write_bytes, atomic_write_text
from ...pipeline.executor import available_cpus
from .datasets import NORMAL, VINDR_BOX_NUMERIC, EvalImage, EvalSet, read_eval_set
from .images import EvalImageError, Geometry, PreparedImage, load_eval_image
from .metrics import _class_table, _mechanism, _summary, pointing_hit
from .plots import roc_png
from .prompts import build_prompts
from .protocols import DEFAULT_PROTOCOL, apply_protocol, load_protocol, protocol_scores, read_openi_protocol
from .result import CENTROID, EvalResult, _json_safe


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _open_model(model_dir_or_model) -> tuple[Any, Any, str | None, dict]:
    """(adapter, tokenizer, model_dir, saved extra metadata) from a model directory in any format
    :mod:`offclip.models.adapters` opens, a :class:`ClipAdapter`, or an ``(OffClipModel, tokenizer)`` pair."""
    from ..adapters import ClipAdapter, load_adapter
    from ..clip import OffClipModel, load_extra

    if isinstance(model_dir_or_model, (str, os.PathLike)):
        path = Path(model_dir_or_model)
        adapter = load_adapter(path)
        return adapter, adapter.tokenizer, str(path), load_extra(path)
    if isinstance(model_dir_or_model, ClipAdapter):
        return model_dir_or_model, model_dir_or_model.tokenizer, None, {}
    if (
        isinstance(model_dir_or_model, tuple)
        and len(model_dir_or_model) == 2
        and isinstance(model_dir_or_model[0], OffClipModel)
    ):
        model, tokenizer = model_dir_or_model
        return ClipAdapter.from_offclip(model, tokenizer), tokenizer, None, {}
    raise TypeError(
        "evaluate needs a model directory, a ClipAdapter or an (OffClipModel, tokenizer) pair, "
        f"got {type(model_dir_or_model).__name__}"
    )


def _model_info(extra: dict) -> tuple[str | None, int | None]:
    """(loss, seed) from a model's saved metadata (``offclip_train``, written by the trainer)."""
    for source in (extra.get("offclip_train"), extra):
        if isinstance(source, dict) and ("loss" in source or "seed" in source):
            seed = source.get("seed")
            return (
                str(source["loss"]) if source.get("loss") is not None else None,
                int(seed) if seed is not None else None,
            )
    return None, None


def evaluate(
    model_dir_or_model,
    dataset: str,
    root: str | os.PathLike,
    prompts=None,
    out: Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    manifest: Path | None = None,
    run_name: str | None = None,
    workers: int = 0,
    normal_texts: Iterable[str] | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    **reader_options,
) -> EvalResult:
    """Zero-shot evaluation of a model on ``dataset`` at ``root``. The model: a saved directory
    (offclip's, a transformers ``CLIPModel`` or ``VisionTextDualEncoderModel``: each at its own
    input size and normalisation, :mod:`offclip.models.adapters`), a ``ClipAdapter``, or an
    ``(OffClipModel, tokenizer)`` pair. With ``out``: ``out/<dataset>.json``, ``out/<dataset>_roc.png`` and
    ``out/<dataset>_scores.parquet`` (per image: every class score, the prompt-free normal score
    and the labels); with ``manifest``: rows appended to its ``evaluations`` table. ``workers``:
    image-decoding threads (0: up to 8). ``reader_options`` go to the dataset's reader.
    ``protocol`` (:mod:`.protocols`): ``offclip`` every class of the label file with the default
    prompts (or ``prompts``); ``paper`` OFF-CLIP's official class lists, prompts, image filter and
    sigmoid score (``prompts`` must then be None).

    Beside the AUCs, the *mechanism* metrics: how compact the normal images' embeddings are
    (mean cosine among normals, among abnormals, and across; raw and after centring), and a
    prompt-free normal score — the cosine of each image to the centroid of the training set's
    normal-pair texts (``normal_texts``; default: read from the shards the model's metadata names)
    — with its AUC (``normal_auc_centroid``)."""
    import torch

    from ..clip import tokenize

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    evaluated_at = dt.datetime.now(dt.UTC)
    spec = load_protocol(protocol, dataset)
    if spec is not None and prompts is not None:
        raise ValueError(
            f"protocol {protocol!r} has its own prompts: leave prompts out (or use protocol {DEFAULT_PROTOCOL!r})"
        )
    if spec is not None and spec.labels.get("column") == "labels_automatic":
        eval_set = read_openi_protocol(root, spec)
    elif spec is not None:
        eval_set = apply_protocol(read_eval_set(dataset, root, **reader_options), spec)
    else:
        eval_set = read_eval_set(dataset, root, **reader_options)
    if spec is not None:
        prompts = spec.prompts
    model, tokenizer, model_dir, extra = _open_model(model_dir_or_model)
    loss, seed = _model_info(extra)
    torch_device = _resolve_device(device)
    model = model.to(torch_device).eval()
    size = model.image_size  # the checkpoint's input size (models.adapters)
    class_prompts, prompt_notes = build_prompts(eval_set.classes, prompts)
    boxes = eval_set.boxes
    box_classes = sorted(set(boxes["class_name"]) - set(class_prompts))
    all_prompts = {**class_prompts, **build_prompts(box_classes, prompts)[0]}

    with torch.inference_mode():
        text = _class_embeddings(model, tokenizer, all_prompts, torch_device, tokenize)
        names = list(class_prompts)
        passed = _embed_images(model, eval_set, text, names, size, batch_size, workers, torch_device)
        score_rows, ids, pointing_rows, embeddings = passed.score_rows, passed.ids, passed.pointing, passed.embeddings
        rejects, no_grid = passed.rejects, passed.no_grid
        if normal_texts is None:
            normal_texts, centroid_note = training_normal_texts(extra)
        else:
            normal_texts, centroid_note = list(normal_texts), ""
        centroid = _text_centroid(model, tokenizer, normal_texts, torch_device, tokenize) if normal_texts else None

    scores = pd.DataFrame(
        np.concatenate(score_rows) if score_rows else np.zeros((0, len(names))),
        index=pd.Index(ids, name="image_id"),
        columns=names,
    )
    scores = protocol_scores(scores, spec)  # the paper's sigmoid; the cosines themselves by default
    pointing = pd.DataFrame(pointing_rows, columns=["image_id", "class_name", "x", "y", "hit"])
    labels = eval_set.labels.loc[ids]
    table = _class_table(labels, scores, pointing, class_prompts)
    summary = _summary(table, pointing, len(ids), len(rejects))
    emb = np.concatenate(embeddings) if embeddings else np.zeros((0, 1))
    centroid_scores = pd.Series(
        emb @ centroid if centroid is not None else np.full(len(ids), np.nan), index=scores.index, name=CENTROID
    )
    summary.update(_mechanism(emb, labels[NORMAL].to_numpy(dtype=float), centroid_scores.to_numpy()))
    notes = eval_set.notes + prompt_notes + ([centroid_note] if centroid_note else [])
    if no_grid:
        notes.append("no pointing game: the model's vision tower gives no square patch grid")
    result = EvalResult(
        dataset,
        str(root),
        str(uuid.uuid4()),
        evaluated_at,
        model_dir,
        run_name,
        loss,
        seed,
        table,
        summary,
        scores,
        pointing,
        rejects,
        notes,
        all_prompts,
        labels=labels,
        centroid_scores=centroid_scores,
        protocol=protocol,
    )
    if out is not None:
        _write_files(result, Path(out), eval_set.labels.loc[ids], f"{dataset}: {run_name or model_dir or 'model'}")
    if manifest is not None:
        from ...pipeline.manifest import record_evaluations

        record_evaluations(manifest, result.manifest_rows())
        result.files["manifest"] = Path(manifest)
    return result


@dataclass
class _Embedded:
    """What one pass over the evaluation images gives."""

    score_rows: list = field(default_factory=list)  #: per batch, [B, C] image-prompt cosines
    ids: list = field(default_factory=list)  #: the evaluated images, in order
    pointing: list = field(default_factory=list)  #: pointing-game trials (:func:`_point`)
    embeddings: list = field(default_factory=list)  #: per batch, [B, D] image embeddings
    rejects: list = field(default_factory=list)
    no_grid: bool = False  #: the vision tower gives no patch grid: no pointing game


def _embed_images(
    model, eval_set: EvalSet, text: dict, names: list[str], size: int, batch_size: int, workers: int, device
) -> _Embedded:
    """Decode (``workers`` threads), embed and score every image in batches; point on the images
    with boxes."""
    import torch

    text_matrix = torch.stack([text[n] for n in names])  # [C, D]
    boxes_of = {image_id: group for image_id, group in eval_set.boxes.groupby("image_id", sort=False)}
    passed = _Embedded(rejects=list(eval_set.rejects))
    pool = ThreadPoolExecutor(max_workers=workers or min(8, available_cpus()))
    try:
        for start in range(0, len(eval_set.images), batch_size):
            batch = eval_set.images[start : start + batch_size]
            loaded = list(pool.map(lambda image: _try_load(image, size), batch))
            good = [(image, prepared) for image, prepared in zip(batch, loaded) if isinstance(prepared, PreparedImage)]
            passed.rejects += [p for p in loaded if isinstance(p, dict)]
            if not good:
                continue
            pixels = torch.from_numpy(np.stack([p.pixels for _, p in good])).unsqueeze(1).to(device)
            image_emb = model.encode_image(pixels)
            passed.score_rows.append((image_emb @ text_matrix.T).float().cpu().numpy())
            passed.embeddings.append(image_emb.float().cpu().numpy())
            passed.ids += [image.id for image, _ in good]
            with_boxes = [k for k, (image, _) in enumerate(good) if image.id in boxes_of]
            patches = model.patch_embeddings(pixels[with_boxes]) if with_boxes else None
            if patches is None and with_boxes:
                passed.no_grid = True
            if patches is not None:
                for k, patch in zip(with_boxes, patches.float()):
                    image, prepared = good[k]
                    passed.pointing += _point(image.id, patch, boxes_of[image.id], text, prepared.geometry)
    finally:
        pool.shutdown()
    return passed


def _write_files(result: EvalResult, out: Path, labels: pd.DataFrame, title: str) -> None:
    """``out/<dataset>_roc.png``, ``out/<dataset>.json``, ``out/<dataset>_scores.parquet``."""
    dataset = result.dataset
    result.files["roc"] = out / f"{dataset}_roc.png"
    result.files["json"] = out / f"{dataset}.json"
    atomic_write_bytes(result.files["roc"], roc_png(labels, result.scores, result.classes, title))
    atomic_write_text(result.files["json"], json.dumps(_json_safe(result.to_dict()), indent=1) + "\n")
    result.files["scores"] = out / f"{dataset}_scores.parquet"
    buffer = io.BytesIO()
    result.score_table().to_parquet(buffer, index=False)
    atomic_write_bytes(result.files["scores"], buffer.getvalue())


def training_normal_texts(extra: dict, limit: int = 20000) -> tuple[list[str], str]:
    """The distinct sentences of the normal pairs the model was trained on (read from the shards
    its metadata names; a normal report's sentences are all kept, whatever the text source), and
    a note when they cannot be read. At most ``limit`` sentences (in shard order)."""
    import tarfile

    meta = (extra.get("offclip_train") or {}).get("shards") or {}
    root, split = meta.get("root"), meta.get("split", "train")
    if not root or not meta.get("shards"):
        return [], "prompt-free normal score not computed: the model's metadata names no training shards"
    texts: dict[str, None] = {}
    for shard in meta["shards"]:
        path = Path(root) / "shards" / split / shard["name"]
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.name.endswith(".json"):
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:  # not a regular file: a shard holds none
                        raise ValueError(f"member {member.name} is not a regular file")
                    sample = json.loads(handle.read())
                    if sample.get("pair_label") == "normal":
                        for sentence in sample.get("sentences") or []:
                            texts.setdefault(sentence["text"].strip(), None)
        except (OSError, tarfile.TarError, ValueError) as exc:
            return [], f"prompt-free normal score not computed: training shard {path} unreadable ({exc})"
        if len(texts) >= limit:
            break
    found = [t for t in texts if t][:limit]
    return found, "" if found else "prompt-free normal score not computed: no normal pair in the training shards"


def _text_centroid(model, tokenizer, texts: list[str], device, tokenize, batch_size: int = 256) -> np.ndarray:
    """The renormalised mean of the texts' normalised embeddings (the model's text tower)."""
    import torch.nn.functional as F

    total = None
    for start in range(0, len(texts), batch_size):
        tokens = tokenize(tokenizer, texts[start : start + batch_size], model.max_text_length)
        emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
        part = F.normalize(emb, dim=-1).sum(dim=0)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no texts to average (the caller passes at least one)")
    return F.normalize(total, dim=-1).cpu().numpy()


def _try_load(image: EvalImage, size: int) -> PreparedImage | dict:
    try:
        return load_eval_image(image, size)
    except EvalImageError as exc:
        return {"image_id": image.id, "path": str(image.path), "reason": exc.reason, "detail": exc.detail}


def _class_embeddings(model, tokenizer, prompts: dict[str, list[str]], device, tokenize) -> dict:
    """Per class: the mean of its prompts' normalised embeddings, renormalised."""
    import torch.nn.functional as F

    texts = [t for ts in prompts.values() for t in ts]
    tokens = tokenize(tokenizer, texts, model.max_text_length)
    emb = model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float()
    out, at = {}, 0
    for name, ts in prompts.items():
        out[name] = F.normalize(emb[at : at + len(ts)].mean(dim=0), dim=-1)
        at += len(ts)
    return out


def _point(image_id: str, patch, boxes: pd.DataFrame, text: dict, geometry: Geometry) -> list[dict]:
    """Pointing-game trials of one image: one per class among its ``boxes``."""
    rows = []
    for class_name, group in boxes.groupby("class_name", sort=True):
        similarity = (patch @ text[class_name]).cpu().numpy()  # [h, w]
        hit, x, y = pointing_hit(similarity, group[list(VINDR_BOX_NUMERIC)].to_numpy(dtype=float), geometry)
        rows.append({"image_id": image_id, "class_name": class_name, "x": x, "y": y, "hit": hit})
    return rows


# ------------------------------------------------------------------------------------------
# python -m offclip.models.evaluate
# ------------------------------------------------------------------------------------------
def default_out(model: str | os.PathLike, protocol: str = DEFAULT_PROTOCOL) -> Path:
    """Where an evaluation of MODEL writes unless told: ``MODEL/../eval`` (another protocol's
    files beside it, ``eval-<protocol>``); the evaluate flow's default too."""
    return Path(model).parent / ("eval" if protocol == DEFAULT_PROTOCOL else f"eval-{protocol}")


def _parser():
    """The options it shares with ``offclip evaluate`` and the evaluate flow are made from their
    fields (``flows/parameters.py`` EvaluateParameters: one name, one default)."""
    from offclip.flows.parameters import EvaluateParameters, ParameterParser, TrainParameters

    description = sys.modules[__package__].__doc__.splitlines()[0]  # the package docstring's first line
    parser = ParameterParser(prog="python -m offclip.models.evaluate", description=description)
    parser.add_fields(EvaluateParameters, ("model", "dataset", "root"), required=("root",))
    parser.add_fields(EvaluateParameters, ("out", "manifest", "prompts", "run_name"))
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    parser.add_fields(TrainParameters, ("device",))
    parser.add_fields(EvaluateParameters, ("protocol",))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out = args.out or str(default_out(args.model, args.protocol))
    result = evaluate(
        args.model,
        args.dataset,
        args.root,
        prompts=args.prompts,
        out=Path(args.out) if args.out else None,
        batch_size=args.batch_size,
        device=args.device,
        manifest=Path(args.manifest) if args.manifest else None,
        run_name=args.run_name,
        protocol=args.protocol,
    )
    print(result.table())
    print()
    print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.summary.items()))
    for reject in result.rejects:
        print(f"reject {reject['image_id']}: {reject['reason']} ({reject['detail']})")
    for note in result.notes:
        print(f"note: {note}")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0

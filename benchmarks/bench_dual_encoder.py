"""Could offclip's own model be a transformers ``VisionTextDualEncoderModel``? Measured, not argued.

    python benchmarks/bench_dual_encoder.py [--checkpoint RUN/checkpoint/last.pt --eval-root WORLD/eval/vindr-cxr]
                                            [--shards CURATED] [--sentences 3000] [--json PATH]

``VisionTextDualEncoderModel`` (VTDE) is a vision tower + a text tower + two projections + a
logit scale, like offclip's ``OffClipModel``; what differs is how each tower is pooled. Four
measurements:

1. **ResNet vision tower** (the ``demo`` config, the one ``offclip compare`` trains): can a VTDE
   hold it? (It reads ``vision_config.hidden_size`` and projects ``pooler_output``.)
2. **ViT vision tower** (``tiny``): VTDE builds a ViT *with* its tanh pooler, offclip uses the
   CLS token after the final layernorm; the cosine between the two image embeddings, and whether
   an identity pooler (``pooler_act="linear"``, dense = I) makes them equal.
3. **Text pooling on a trained model** (``--checkpoint``, a ``demo`` run): offclip mean-pools
   MiniLM's tokens; a VTDE takes BERT's ``pooler_output`` (tanh(dense(CLS))). Zero-shot normal and
   macro AUC on ``--eval-root`` with the text embedded each way: what a user loading offclip's
   weights into a VTDE with plain transformers would get.
4. **Frozen text features** (``--shards``): the ``demo`` config freezes MiniLM, so the text
   features are whatever the pooling gives. 5-fold logistic-regression AUC of normal vs abnormal
   sentences (the rule labeler's labels; sentences it finds no finding word in are left out)
   on MiniLM's mean-pooled vs ``pooler_output`` features: how much a VTDE-native offclip would
   lose before training starts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sys.path, HF_HUB_OFFLINE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def resnet_in_vtde() -> dict:
    """Build a VTDE from the demo config's ResNet and MiniLM; then with ``hidden_size`` set by hand."""
    from transformers import AutoConfig, ResNetConfig, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    from offclip.models.clip import _minilm_path, load_model_config

    vision = dict(load_model_config("demo")["model"]["vision_config"])
    vision.pop("model_type")
    text = AutoConfig.from_pretrained(str(_minilm_path()))
    out = {}
    for label, extra in (("as configured", {}), ("hidden_size set", {"hidden_size": vision["hidden_sizes"][-1]})):
        try:
            config = VisionTextDualEncoderConfig.from_vision_text_configs(ResNetConfig(**vision, **extra), text,
                                                                          projection_dim=128)
            model = VisionTextDualEncoderModel(config).eval()
            with torch.no_grad():
                model.get_image_features(pixel_values=torch.rand(2, 1, 96, 96))
            out[label] = "works"
        except Exception as exc:  # the point: what breaks
            out[label] = f"{type(exc).__name__}: {exc}"
    return out


def vit_pooling() -> dict:
    """offclip's tiny ViT image embedding against a VTDE's from the same weights."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    from offclip.models.clip import build_model

    model, _ = build_model({"vision_config": {"model_type": "vit", "image_size": 96, "patch_size": 16,
                                              "num_channels": 1, "hidden_size": 64, "num_hidden_layers": 2,
                                              "num_attention_heads": 2, "intermediate_size": 128},
                            "text_config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                            "num_attention_heads": 2, "intermediate_size": 64},
                            "image_size": 96, "projection_dim": 32}, seed=0)
    model.eval()
    pixels = torch.rand(4, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encode_image(pixels)
    out = {}
    for label, act in (("tanh pooler (VTDE default)", "tanh"), ("identity pooler, pooler_act linear", "linear")):
        vision = model.vision_model.config.to_dict()
        vision["pooler_act"] = act
        config = VisionTextDualEncoderConfig.from_vision_text_configs(
            type(model.vision_model.config)(**{k: v for k, v in vision.items() if k != "model_type"}),
            model.text_model.config, projection_dim=32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the pooler's random init: the same figure on every run
            vtde = VisionTextDualEncoderModel(config).eval()
        vtde.vision_model.load_state_dict(model.vision_model.state_dict(), strict=False)
        vtde.visual_projection.load_state_dict(model.visual_projection.state_dict())
        if act == "linear":
            with torch.no_grad():
                vtde.vision_model.pooler.dense.weight.copy_(torch.eye(64))
                vtde.vision_model.pooler.dense.bias.zero_()
        with torch.no_grad():
            normalised = (pixels - model.config.image_mean) / model.config.image_std
            theirs = F.normalize(vtde.get_image_features(pixel_values=normalised).pooler_output, dim=-1)
        out[label] = {"mean_cosine": float((ours * theirs).sum(-1).mean()),
                      "max_abs_difference": float((ours - theirs).abs().max())}
    return out


def _minilm_pooler():
    from transformers import BertModel

    from offclip.models.clip import _minilm_path

    return BertModel.from_pretrained(str(_minilm_path())).eval()  # with its pooler weights


def text_pooling_on_trained(checkpoint: Path, eval_root: Path) -> dict:
    """Zero-shot AUCs of a trained ``demo`` model with its text mean-pooled (as trained) and
    pooled as a VTDE would (MiniLM's ``pooler_output``: the demo config's text tower is frozen
    MiniLM, checked here)."""
    from offclip.models.clip import build_model
    from offclip.models.evaluate import evaluate

    model, tokenizer = build_model("demo", seed=0)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    bert = _minilm_pooler()
    frozen = all(torch.equal(p, bert.state_dict()[k]) for k, p in model.text_model.state_dict().items())
    out = {"checkpoint": str(checkpoint), "text_tower_is_minilm": frozen}
    for label in ("mean pooling (offclip)", "pooler_output (VTDE)"):
        if label.startswith("pooler"):
            model.text_features = lambda ids, mask: bert(input_ids=ids, attention_mask=mask).pooler_output
        with torch.inference_mode():
            result = evaluate((model, tokenizer), "vindr-cxr", eval_root, normal_texts=[])
        out[label] = {k: result.summary[k] for k in ("normal_auc", "macro_auc", "n_images")}
    return out


def _sentences(shards: Path, limit: int) -> tuple[list[str], np.ndarray]:
    """Distinct sentences of the train shards with a rule label (normal / abnormal), no-finding
    sentences left out; a seeded sample of ``limit``."""
    from offclip.pipeline.labeler import RuleLabeler

    texts: set[str] = set()
    for path in sorted((shards / "shards" / "train").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    texts.update(s["text"].strip() for s in json.loads(tar.extractfile(member).read())["sentences"])
    texts = sorted(t for t in texts if t)
    labels = RuleLabeler().label_many(texts)
    kept = [(t, int(lab.label == "abnormal")) for t, lab in zip(texts, labels) if lab.rule != "no_finding"]
    random.Random(0).shuffle(kept)
    kept = kept[:limit]
    return [t for t, _ in kept], np.array([y for _, y in kept])


def frozen_text_probe(shards: Path, limit: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from transformers import AutoTokenizer

    from offclip.models.clip import _minilm_path, tokenize

    texts, y = _sentences(shards, limit)
    tokenizer = AutoTokenizer.from_pretrained(str(_minilm_path()))
    bert = _minilm_pooler()
    mean, pooler = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), 128):
            tokens = tokenize(tokenizer, texts[start:start + 128], 64)
            output = bert(**tokens)
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            mean.append(((output.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
            pooler.append(output.pooler_output.numpy())
    out = {"sentences": len(texts), "abnormal_share": float(y.mean())}
    for label, features in (("mean pooling (offclip)", mean), ("pooler_output (VTDE)", pooler)):
        x = np.concatenate(features)
        scores = cross_val_score(LogisticRegression(max_iter=2000, C=1.0), x, y, cv=5, scoring="roc_auc")
        out[label] = {"auc_mean": float(scores.mean()), "auc_sd": float(scores.std())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a demo run's checkpoint/last.pt")
    parser.add_argument("--eval-root", type=Path, help="the VinDr-format set it was evaluated on")
    parser.add_argument("--shards", type=Path, help="a curation root (shards/train) for the sentence probe")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"resnet_in_vtde": resnet_in_vtde(), "vit_pooling": vit_pooling()}
    print(json.dumps(results, indent=1), flush=True)
    if args.shards:
        results["frozen_text_probe"] = frozen_text_probe(args.shards, args.sentences)
        print(json.dumps(results["frozen_text_probe"], indent=1), flush=True)
    if args.checkpoint and args.eval_root:
        results["text_pooling_on_trained"] = text_pooling_on_trained(args.checkpoint, args.eval_root)
        print(json.dumps(results["text_pooling_on_trained"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

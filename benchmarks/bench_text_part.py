"""What the top text layers' part of a training step is made of, and how low it could go.

    python benchmarks/bench_text_part.py --shards ROOT [--config demo-text4] [--batches 24]
                                         [--rounds 3] [--frozen-json results/bench/X.json] [--json PATH]

``bench_train.py --text-layers`` times whole trainer steps: a frozen text tower's (``demo``)
against one whose top 4 layers learn (``demo-text4``). This one takes the difference apart, on
batches of the run's own sentences (``--batch-size`` sentences drawn with a fixed seed from every
sentence the training split can show, their cached lower-layer states looked up as the trainer
does), each part timed alone, best of ``--rounds``:

* ``top layers``        -- forward and backward of the top layers and the text projection as the
                           trainer runs them (``text_features_from_hidden``: packed tokens, dropout at
                           the config's rates in training mode);
* ``top layers, no dropout`` -- the same with the layers in eval mode: what dropout costs;
* ``dense products``    -- the layers' linear maps alone (the same weights, the same token count,
                           forward and backward): the matrix arithmetic no implementation avoids;
* ``AdamW``             -- one optimizer step over the trainable text parameters, as the trainer
                           makes it (``foreach``) and with ``fused=True``;

each in float32 and under CPU bf16 autocast (``amp=bf16``). With the frozen tower's step time
(``--frozen-ms``, one figure for both precisions, or ``--frozen-json``: a ``bench_train.py
--text-layers`` result, whose ``--amp auto,bf16`` runs give each precision its own), it prints the
step ratio each combination would give if the rest of the step cost nothing more: ``(frozen + text
part) / frozen`` in the same precision, down to the floor of dense products plus a fused AdamW.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _best_ms(fn, rounds: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=Path, required=True, help="a curation root holding shards/train")
    ap.add_argument("--config", default="demo-text4", help="a model config whose top text layers learn")
    ap.add_argument("--text-source", default="filtered", choices=("filtered", "report"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=24, help="batches per timed pass (the figures are per batch)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes of each part; the best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--frozen-ms", type=float, default=None, help="the frozen tower's step time, ms")
    ap.add_argument("--frozen-json", type=Path, default=None,
                    help="a bench_train.py --text-layers JSON: its best frozen steady step time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frozen_ms: dict[str, float] = {}  # precision -> the frozen tower's step, ms
    if args.frozen_ms is not None:
        frozen_ms = {"float32": args.frozen_ms, "bf16": args.frozen_ms}
    elif args.frozen_json is not None:
        best = json.loads(args.frozen_json.read_text())["best"]
        frozen_ms = {"float32": 1000 * best["frozen"]["steady_step_s"]}
        frozen_ms["bf16"] = 1000 * best.get("frozen (bf16)", best["frozen"])["steady_step_s"]

    from offclip.models.caches import TextHidden, shard_sentences
    from offclip.models.clip import build_model, load_model_config
    from offclip.models.data import split_records

    spec = load_model_config(args.config)
    trainable = spec["train"].get("text_trainable_layers")
    if not trainable:
        raise SystemExit(f"config {args.config} trains no top text layers (train.text_trainable_layers)")
    model, tokenizer = build_model(args.config, seed=0)
    layer = len(model.text_model.encoder.layer) - trainable
    sentences = shard_sentences(args.shards, split_records(args.shards, "train"), "train", args.text_source)
    cache = TextHidden.encode(model, tokenizer, sentences, model.config.max_text_length, torch.device("cpu"), layer)
    rng = random.Random(0)
    batches = [cache.lookup(rng.choices(sentences, k=args.batch_size)) for _ in range(args.batches)]
    tokens = sum(int(m.sum()) for _, m in batches) / len(batches)
    padded = sum(m.numel() for _, m in batches) / len(batches)
    top = model.text_model.encoder.layer[layer:]
    params = [*top.parameters(), *model.text_projection.parameters()]  # what the trainer's text groups train
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    linears = [m for m in top.modules() if isinstance(m, torch.nn.Linear)]

    def top_layers(dropout: bool, bf16: bool):
        def run():
            top.train(dropout)
            for hidden, mask in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    features = model.project_text(model.text_features_from_hidden(hidden, mask, layer))
                features.float().sum().backward()
        return run

    def dense(bf16: bool):
        inputs = [torch.randn(round(tokens), m.in_features, requires_grad=True) for m in linears]

        def run():
            for _ in batches:
                for m, x in zip(linears, inputs):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        y = F.linear(x, m.weight, m.bias)
                    y.float().sum().backward()
        return run

    def adamw(fused: bool):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05,
                                      fused=fused or None)

        def run():
            for _ in batches:
                optimizer.step()
        return run

    n = len(batches)
    parts: dict[str, float] = {}
    for precision, bf16 in (("float32", False), ("bf16", True)):
        parts[f"top layers ({precision})"] = _best_ms(top_layers(True, bf16), args.rounds) / n
        parts[f"top layers, no dropout ({precision})"] = _best_ms(top_layers(False, bf16), args.rounds) / n
        parts[f"dense products ({precision})"] = _best_ms(dense(bf16), args.rounds) / n
    parts["AdamW (foreach, as trained)"] = _best_ms(adamw(False), args.rounds) / n
    parts["AdamW (fused)"] = _best_ms(adamw(True), args.rounds) / n

    n_params = sum(p.numel() for p in params)
    print(f"{args.config}: top {trainable} text layers + projection ({n_params / 1e6:.1f} M parameters), "
          f"{n} batches of {args.batch_size} sentences ({tokens:.0f} tokens, {padded:.0f} padded), "
          f"{torch.get_num_threads()} threads, best of {args.rounds}")
    for name, ms in parts.items():
        print(f"  {name:<36} {ms:7.1f} ms/batch")
    combos: dict[str, tuple[str, float]] = {}  # name -> (precision, text part ms)
    for precision in ("float32", "bf16"):
        top, bare, fused = (parts[f"top layers ({precision})"], parts[f"top layers, no dropout ({precision})"],
                            parts["AdamW (fused)"])
        combos[f"as trained ({precision}), AdamW foreach"] = (precision, top + parts["AdamW (foreach, as trained)"])
        combos[f"as trained ({precision}), AdamW fused"] = (precision, top + fused)
        combos[f"no dropout ({precision}), AdamW fused"] = (precision, bare + fused)
        combos[f"floor: dense products ({precision}) + AdamW fused"] = (precision, parts[f"dense products ({precision})"]
                                                                        + fused)
    ratios = {name: (frozen_ms[p] + ms) / frozen_ms[p] for name, (p, ms) in combos.items()} if frozen_ms else None
    if ratios:
        print(f"\nthe step ratio each would give, (frozen + text part) / frozen in the same precision, if the rest "
              f"cost nothing more (frozen step: {frozen_ms['float32']:.1f} ms float32, {frozen_ms['bf16']:.1f} ms bf16):")
        for name, (_, ms) in combos.items():
            print(f"  {name:<48} {ms:7.1f} ms  {ratios[name]:5.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": args.config, "batch_size": args.batch_size, "batches": n, "tokens": tokens, "padded": padded,
            "trainable_parameters": n_params, "threads": torch.get_num_threads(), "parts_ms": parts,
            "combinations_ms": {name: ms for name, (_, ms) in combos.items()}, "frozen_ms": frozen_ms or None,
            "ratios": ratios,
            "load_average_after": os.getloadavg(),
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

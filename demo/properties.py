"""Two properties of the demo world that OFF-CLIP's problem needs, measured.

1. **Normal images differ from each other like real normals do** (anatomy, size, positioning,
   exposure, noise), so that a plain InfoNCE *can* tell two normal studies apart — which is why
   it treats them as negatives of each other, the thing the off-diagonal term undoes.
   :func:`normal_retrieval`: for ``n`` normal subjects (each its own :func:`phantom.sample_anatomy`),
   two renders each (independent acquisition noise), then nearest-neighbour retrieval of the
   other render of the same subject among all second renders, on a crude image descriptor
   (the image area-averaged to ``grid``×``grid``, standardised). Top-1 accuracy far above chance
   (1/n) means two normals are told apart by their pixels alone.
2. **Abnormal reports carry normal sentences at Open-I's real rate** ("No pneumothorax." beside
   the finding): :func:`normal_sentence_share` splits the real Open-I reports the world uses into
   sentences (the ingest's splitter) and labels them with the rule labeler.

``python -m offclip.demo.properties [--n 200] [--seed 0]`` prints both as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from . import phantom


def _descriptor(image: np.ndarray, grid: int) -> np.ndarray:
    rows, cols = image.shape
    r, c = rows - rows % grid, cols - cols % grid
    small = image[:r, :c].reshape(grid, r // grid, grid, c // grid).mean(axis=(1, 3)).ravel()
    small = small - small.mean()
    return small / (np.linalg.norm(small) + 1e-12)


#: the anatomy fields that belong to the acquisition, not to the body
ACQUISITION = ("shift_x", "shift_y", "rotation", "exposure", "gamma", "noise", "fog")


def normal_retrieval(n: int = 200, seed: int = 0, rows: int = 320, cols: int = 256, grid: int = 16,
                     new_acquisition: bool = True) -> dict:
    """Top-1 retrieval of a normal subject's second image among ``n`` subjects (see the module
    doc). ``new_acquisition``: the second image is a new acquisition of the same body (its
    positioning, exposure, gamma, noise and fog drawn again), not only new noise."""
    import dataclasses

    first, second = [], []
    for i in range(n):
        anatomy = phantom.sample_anatomy(np.random.default_rng([seed, 11, i]))
        again = anatomy
        if new_acquisition:
            other = phantom.sample_anatomy(np.random.default_rng([seed, 13, i]))
            again = dataclasses.replace(anatomy, **{f: getattr(other, f) for f in ACQUISITION})
        for k, (body, bucket) in enumerate(((anatomy, first), (again, second))):
            pixels, _ = phantom.render_frontal(body, rows, cols, [], np.random.default_rng([seed, 12, i, k]))
            bucket.append(_descriptor(pixels, grid))
    a, b = np.stack(first), np.stack(second)
    sim = a @ b.T
    top1 = float((sim.argmax(axis=1) == np.arange(n)).mean())
    off = sim[~np.eye(n, dtype=bool)]
    return {"subjects": n, "top1": round(top1, 3), "chance": round(1 / n, 4),
            "cosine_same_subject": round(float(np.diag(sim).mean()), 3),
            "cosine_other_subjects": round(float(off.mean()), 3),
            "cosine_other_subjects_p99": round(float(np.quantile(off, 0.99)), 3),
            "image": [rows, cols], "descriptor_grid": grid, "new_acquisition": new_acquisition}


def normal_sentence_share(openi_dir: str | None = None) -> dict:
    """The share of normal sentences in abnormal reports of the real Open-I corpus (rule labels;
    a report is abnormal when any of its sentences is), the world's text as it is."""
    from ..pipeline import openi
    from ..pipeline.labeler import RuleLabeler
    from ..pipeline.text import SentenceSplitter
    from .reports import mimic_report_text

    reports = openi.load_reports(openi.find_sources(openi_dir).reports_tgz)
    splitter, labeler = SentenceSplitter(), RuleLabeler()
    per_report = [[s.text for s in splitter.split_report(mimic_report_text(r, examination="CHEST (PA AND LAT)"))]
                  for r in reports]
    labels = labeler.label_many([t for texts in per_report for t in texts])
    counts, k = Counter(), 0
    shares = []
    for texts in per_report:
        mine = [labels[k + j].label for j in range(len(texts))]
        k += len(texts)
        if "abnormal" in mine:
            counts["abnormal_reports"] += 1
            counts["sentences_in_abnormal"] += len(mine)
            counts["normal_in_abnormal"] += mine.count("normal")
            shares.append(mine.count("normal") / len(mine))
        elif mine:
            counts["normal_reports"] += 1
    return {**counts, "reports": len(reports),
            "normal_share_of_sentences": round(counts["normal_in_abnormal"] / max(1, counts["sentences_in_abnormal"]), 3),
            "mean_normal_share_per_report": round(float(np.mean(shares)), 3) if shares else None,
            "abnormal_reports_with_a_normal_sentence": round(float(np.mean([s > 0 for s in shares])), 3) if shares else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="Normal subjects for the retrieval.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--openi", default=None, help="Directory with NLMCXR_reports.tgz (default: installed wheel).")
    args = ap.parse_args()
    print(json.dumps({"normal_retrieval_new_noise": normal_retrieval(args.n, args.seed, new_acquisition=False),
                      "normal_retrieval_new_acquisition": normal_retrieval(args.n, args.seed),
                      "normal_sentences_in_abnormal_reports": normal_sentence_share(args.openi)}, indent=2))


if __name__ == "__main__":
    main()

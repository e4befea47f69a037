"""Benchmark decoding at a reduced resolution: JPEG DCT scaling and JPEG 2000 resolution levels.

    python benchmarks/bench_decode.py [--n 4] [--size 3056x2544] [--long-sides 512,224] [--repeat 5]
                                      [--kinds jpeg,j2k] [--json PATH]

Inputs, written once into a temporary folder:

* ``jpeg`` -- MIMIC-CXR-JPG-like files: full-size phantom radiographs (``demo.phantom``, as
  ``bench_ingest.py`` makes them) as 8-bit grayscale JPEGs at quality 95;
* ``jpeg_real`` -- the real NIH sample radiograph (``../shared/data/samples/00000001_000.png``,
  512x512) upscaled (bicubic) to the same size, quality 95, when that file is there: real anatomy,
  but smoother than a real full-size image (no detector noise), so a lighter entropy decode;
* ``j2k`` -- the phantoms as 12-bit JPEG 2000 lossless DICOMs (the demo world's writer).

Methods, timed in this one process, interleaved image by image, per image the best of ``--repeat``
runs (two for JPEG 2000, whose decodes take ~1 s), then the mean over the images:

* reduced -- offclip: ``decode_jpeg`` / ``decode_dicom`` with ``reduced_decode`` (the default);
* full    -- the same call with ``reduced_decode=False``: the full decode, then the same resize;
* naive   -- JPEG: ``Image.open -> convert('L') -> resize(LANCZOS) -> numpy``; JPEG 2000:
             ``dcmread -> pixel_array -> min-max to 8 bits -> PIL resize(LANCZOS) -> numpy``;
* entropy floor (JPEG only) -- libjpeg at 1/8 scale, no resize: the entropy (Huffman) decoding that
  no libjpeg-based reduced decode can skip; it bounds what DCT scaling can gain.

The pixel difference is reduced vs full, 8-bit outputs: mean |diff| per image (then the mean over
images) and the max over all pixels. Goals: reduced >= 3x the full decode for JPEG, >= 4x for JPEG
2000, mean |diff| <= 2 of 255.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image  # noqa: E402

from bench_ingest import best_times, phantom_image, write_files  # noqa: E402
from offclip.pipeline import images  # noqa: E402

KINDS = ("jpeg", "j2k")
REAL_SAMPLE = ROOT.parent / "shared" / "data" / "samples" / "00000001_000.png"
GOALS = {"jpeg": 3.0, "jpeg_real": 3.0, "j2k": 4.0}  #: reduced vs full speed-up
GOAL_MEAN_DIFF = 2.0
JPEG_QUALITY = 95


# --- inputs ---------------------------------------------------------------------------------
def write_jpegs(out: Path, n: int, rows: int, columns: int) -> tuple[list[Path], str]:
    paths, source = [], ""
    for i in range(n):
        pixels, source = phantom_image(rows, columns, seed=i)
        gray = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
        path = out / f"phantom-{i:04d}.jpg"
        Image.fromarray(gray).save(path, format="JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths, source


def write_real_jpeg(out: Path, rows: int, columns: int) -> list[Path]:
    if not REAL_SAMPLE.is_file():
        return []
    path = out / "nih-upscaled.jpg"
    Image.open(REAL_SAMPLE).convert("L").resize((columns, rows), Image.BICUBIC).save(
        path, format="JPEG", quality=JPEG_QUALITY)
    return [path]


# --- methods --------------------------------------------------------------------------------
def naive_jpeg(path: Path, long_side: int) -> np.ndarray:
    image = Image.open(path).convert("L")
    rows, columns = images.target_size(image.height, image.width, long_side)
    return np.asarray(image.resize((columns, rows), Image.LANCZOS))


def entropy_floor(path: Path) -> np.ndarray:
    image = Image.open(path)
    image.draft("L", (1, 1))  # the smallest scale libjpeg has: 1/8, DC only
    return np.asarray(image)


def naive_j2k(path: Path, long_side: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    low, high = float(arr.min()), float(arr.max())
    gray = np.clip((arr - low) * (255.0 / max(high - low, 1e-6)), 0, 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    rows, columns = images.target_size(gray.shape[0], gray.shape[1], long_side)
    return np.asarray(Image.fromarray(gray).resize((columns, rows), Image.LANCZOS))


def methods(kind: str, long_side: int) -> dict:
    reduced = images.NormalizeConfig(long_side=long_side)
    full = replace(reduced, reduced_decode=False)
    if kind.startswith("jpeg"):
        return {
            "reduced": lambda p: images.decode_jpeg(p, reduced),
            "full": lambda p: images.decode_jpeg(p, full),
            "naive": lambda p: naive_jpeg(p, long_side),
            "entropy_floor": entropy_floor,
        }
    return {
        "reduced": lambda p: images.decode_dicom(p, reduced),
        "full": lambda p: images.decode_dicom(p, full),
        "naive": lambda p: naive_j2k(p, long_side),
    }


def differences(kind: str, paths: list[Path], long_side: int) -> dict:
    """Reduced vs full (8-bit outputs): mean |diff| per image averaged, max over all; the scales."""
    run = methods(kind, long_side)
    means, maxima, scales, shape = [], [], set(), None
    for path in paths:
        a, b = run["reduced"](path), run["full"](path)
        diff = np.abs(a.pixels.astype(np.int16) - b.pixels.astype(np.int16))
        means.append(float(diff.mean()))
        maxima.append(int(diff.max()))
        scales.add(a.decode_scale)
        shape = list(a.pixels.shape)
    return {"mean_abs_diff": float(np.mean(means)), "max_abs_diff": max(maxima),
            "decode_scales": sorted(scales), "out_shape": shape}


# --- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="phantom images per kind")
    parser.add_argument("--size", default="3056x2544", help="ROWSxCOLUMNS (MIMIC-CXR-JPG's typical size)")
    parser.add_argument("--long-sides", default="512,224", help="comma-separated target long sides")
    parser.add_argument("--repeat", type=int, default=5, help="runs per image and method (best counts)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of jpeg,j2k")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {KINDS}")
    rows, columns = (int(v) for v in args.size.lower().split("x"))
    long_sides = [int(v) for v in args.long_sides.split(",") if v]
    load_start = os.getloadavg()

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="offclip-bench-decode-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        inputs: dict[str, list[Path]] = {}
        source = ""
        if "jpeg" in kinds:
            inputs["jpeg"], source = write_jpegs(tmp, args.n, rows, columns)
            real = write_real_jpeg(tmp, rows, columns)
            if real:
                inputs["jpeg_real"] = real
        if "j2k" in kinds:
            files, source = write_files(tmp, args.n, rows, columns, ("j2k_lossless",))
            inputs["j2k"] = files["j2k_lossless"]
        print(f"wrote {', '.join(f'{len(v)} {k}' for k, v in inputs.items())} of {rows}x{columns} ({source}) "
              f"in {time.perf_counter() - t0:.1f} s; 1-minute load {load_start[0]:.2f} ({os.cpu_count()} CPUs)",
              file=sys.stderr)
        for kind, paths in inputs.items():
            for long_side in long_sides:
                t0 = time.perf_counter()
                seconds = best_times(methods(kind, long_side), paths, args.repeat)
                row = {
                    **{f"{name}_ms": 1e3 * s for name, s in seconds.items()},
                    **{f"{name}_ips": 1.0 / s for name, s in seconds.items()},
                    "speedup_vs_full": seconds["full"] / seconds["reduced"],
                    "speedup_vs_naive": seconds["naive"] / seconds["reduced"],
                    "full_vs_naive": seconds["naive"] / seconds["full"],
                    **differences(kind, paths, long_side),
                    "file_mb": sum(p.stat().st_size for p in paths) / len(paths) / 1e6,
                    "images": len(paths),
                }
                if "entropy_floor" in seconds:
                    row["full_vs_entropy_floor"] = seconds["full"] / seconds["entropy_floor"]
                results[f"{kind}@{long_side}"] = row
                print(f"  {kind}@{long_side}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    load_end = os.getloadavg()
    print_table(results)
    print(f"1-minute load: {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end ({os.cpu_count()} CPUs)")
    goals = {}
    for key, r in results.items():
        kind = key.split("@")[0]
        goals[f"speedup_vs_full_{key}"] = r["speedup_vs_full"] >= GOALS[kind]
        goals[f"mean_abs_diff_{key}"] = r["mean_abs_diff"] <= GOAL_MEAN_DIFF
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({
            "n": args.n, "size": [rows, columns], "long_sides": long_sides, "repeat": args.repeat,
            "jpeg_quality": JPEG_QUALITY, "phantom": source, "results": results, "goals": goals,
            "goal_thresholds": {"speedup_vs_full": GOALS, "mean_abs_diff": GOAL_MEAN_DIFF},
            "load_average_start": load_start, "load_average_end": load_end,
        }, indent=2))
    return 0


def print_table(results: dict[str, dict]) -> None:
    header = (f"{'input@long side':<18} {'MB':>4} {'scale':>5} {'reduced':>16} {'full':>16} {'naive':>16} "
              f"{'vs full':>8} {'vs naive':>8} {'mean|d|':>7} {'max|d|':>6} {'entropy floor':>14}")
    print(header)
    print("-" * len(header))
    for key, r in results.items():
        cells = [f"{r[f'{m}_ips']:6.1f}/s {r[f'{m}_ms']:6.1f}ms" for m in ("reduced", "full", "naive")]
        floor = f"{r['entropy_floor_ms']:6.1f}ms" if "entropy_floor_ms" in r else "-"
        scales = "/".join(str(s) for s in r["decode_scales"])
        print(f"{key:<18} {r['file_mb']:4.1f} {scales:>5} " + " ".join(f"{c:>16}" for c in cells)
              + f" {r['speedup_vs_full']:7.2f}x {r['speedup_vs_naive']:7.2f}x {r['mean_abs_diff']:7.2f}"
              + f" {r['max_abs_diff']:6d} {floor:>14}")
    print("scale = the decoder's reduction (JPEG 1/s, JPEG 2000 level log2 s); vs full / vs naive = reduced "
          "speed / that speed; mean|d|, max|d| = reduced vs full, gray levels of 255; entropy floor = libjpeg "
          "at 1/8 without resize (no JPEG reduced decode can be faster)")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the image half of ingest: offclip's decode + encode vs a naive loop vs the floor.

    python benchmarks/bench_ingest.py [--n 8] [--size 3056x2544] [--long-side 512] [--json PATH]

Full-size 12-bit phantom radiographs (``offclip.demo.phantom`` when importable, else a
smooth random field) are written as explicit VR little endian and as JPEG 2000 lossless, then
timed in this one process, each method on the same files:

* offclip -- ``decode_dicom`` + ``encode_file_bytes`` (PNG, and JPEG as an extra row);
* naive   -- ``pydicom.dcmread`` -> ``ds.pixel_array`` -> float min-max window at full size ->
             PIL resize (default bicubic) -> PNG save at Pillow's default compress level;
* floor   -- read the file's bytes + decode (``np.frombuffer`` at the known pixel offset for
             uncompressed data, ``dcmread`` + ``pixel_array`` for J2K) + offclip's resize alone;
* floor+PNG -- the floor plus encoding its output with offclip's PNG writer (an output file
             has to be encoded: this is the least a PNG-writing ingest can do).

Each method runs ``--repeat`` times on each file (interleaved); per file the best run counts,
which filters out noise from other processes on a shared machine. Goals checked: offclip >= 5x the
naive loop on uncompressed input, and offclip <= 1.25x the floor's time (and the floor+PNG's).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from offclip.pipeline import images
from offclip.demo.dicom_writer import ImageHeader, encode_dicom, phantom_to_stored

SYNTAXES = ("explicit_le", "j2k_lossless")  #: what is written and timed (--syntaxes picks)
GOAL_SPEEDUP = 5.0
GOAL_FLOOR = 1.25


def phantom_image(rows: int, columns: int, seed: int) -> tuple[np.ndarray, str]:
    """A float [0, 1] radiograph-like image and where it came from."""
    rng = np.random.default_rng(seed)
    try:
        from offclip.demo import phantom

        pixels, _ = phantom.render_frontal(phantom.sample_anatomy(rng), rows, columns, [], rng, view="PA")
        return np.asarray(pixels, dtype=np.float32), "demo.phantom.render_frontal"
    except Exception:  # the phantom module is optional here
        coarse = rng.random((max(2, rows // 64), max(2, columns // 64))).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse).resize((columns, rows), Image.BICUBIC))
        field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
        return field * 0.8 + 0.1 * rng.random(field.shape, dtype=np.float32), "smooth random field"


def write_files(out: Path, n: int, rows: int, columns: int, syntaxes) -> tuple[dict[str, list[Path]], str]:
    files: dict[str, list[Path]] = {s: [] for s in syntaxes}
    source = ""
    for i in range(n):
        pixels, source = phantom_image(rows, columns, seed=i)
        stored = phantom_to_stored(pixels, 12, "MONOCHROME2")
        header = ImageHeader(subject_id=10000000 + i, study_id=50000000 + i, dicom_id=f"bench-{i:04d}",
                             rows=rows, columns=columns, bits_stored=12, photometric="MONOCHROME2")
        for syntax in syntaxes:
            path = out / f"{syntax}-{i:04d}.dcm"
            path.write_bytes(encode_dicom(header, stored, syntax))
            files[syntax].append(path)
    return files, source


# --- the three methods -------------------------------------------------------------------
def run_offclip(path: Path, config: images.NormalizeConfig) -> bytes:
    return images.encode_file_bytes(images.decode_dicom(path, config).pixels, config)


def run_naive(path: Path, long_side: int) -> bytes:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float64)
    low, high = arr.min(), arr.max()
    arr = np.clip((arr - low) / max(high - low, 1e-9), 0, 1) * 255
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 255 - arr
    rows, columns = images.target_size(arr.shape[0], arr.shape[1], long_side)
    small = Image.fromarray(arr.astype(np.uint8)).resize((columns, rows))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def pixel_offset(path: Path) -> tuple[int, int, int]:
    """(offset, rows, columns) of an uncompressed file's pixel data (found once, outside timing)."""
    ds = pydicom.dcmread(path, defer_size=1024)
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    return elem.value_tell, int(ds.Rows), int(ds.Columns)


def run_floor(path: Path, long_side: int, layout: tuple[int, int, int] | None) -> np.ndarray:
    if layout is not None:  # uncompressed: the bytes, viewed in place
        offset, rows, columns = layout
        data = path.read_bytes()
        arr = np.frombuffer(data, dtype="<u2", count=rows * columns, offset=offset).reshape(rows, columns)
    else:
        data = path.read_bytes()
        arr = pydicom.dcmread(io.BytesIO(data)).pixel_array
    size = images.target_size(arr.shape[0], arr.shape[1], long_side)
    return images._shrink(arr, size, 12, enforce_bits=False)  # 12-bit phantoms: no check


def run_floor_png(path: Path, long_side: int, layout: tuple[int, int, int] | None, config) -> bytes:
    small = run_floor(path, long_side, layout)
    return images.encode_file_bytes((small * (255 / 4095)).astype(np.uint8), config)  # 12 -> 8 bit, then PNG


# --- timing --------------------------------------------------------------------------------
def best_times(methods: dict[str, callable], paths: list[Path], repeat: int) -> dict[str, float]:
    """Seconds per image of each method: per image the best of ``repeat`` runs, then the mean.

    Methods alternate image by image, and the per-image minimum drops the runs that another
    process on a shared machine interrupted. Slow decodes (over 0.2 s an image, e.g. J2K) get
    two runs: there that noise is negligible.
    """
    start = time.perf_counter()
    for fn in methods.values():  # warm-up (imports, plugin loading, page cache)
        fn(paths[0])
    if time.perf_counter() - start > 0.2 * len(methods):
        repeat = min(repeat, 2)
    best = {name: [float("inf")] * len(paths) for name in methods}
    for _ in range(repeat):
        for i, path in enumerate(paths):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn(path)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    return {name: sum(times) / len(times) for name, times in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="images per transfer syntax")
    parser.add_argument("--size", default="3056x2544", help="ROWSxCOLUMNS")
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="runs per image and method (best counts)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--syntaxes", default=",".join(SYNTAXES), help="comma-separated subset")
    args = parser.parse_args(argv)
    syntaxes = tuple(s for s in args.syntaxes.split(",") if s)
    if not set(syntaxes) <= set(SYNTAXES):
        parser.error(f"--syntaxes: choose from {SYNTAXES}")
    rows, columns = (int(v) for v in args.size.lower().split("x"))
    png = images.NormalizeConfig(long_side=args.long_side)
    jpg = images.NormalizeConfig(long_side=args.long_side, fmt="jpg")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="offclip-bench-") as tmp:
        t0 = time.perf_counter()
        files, source = write_files(Path(tmp), args.n, rows, columns, syntaxes)
        print(f"wrote {args.n} x {len(syntaxes)} files of {rows}x{columns} 12-bit ({source}) "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for syntax, paths in files.items():
            layouts = {p: pixel_offset(p) for p in paths} if syntax == "explicit_le" else {}
            methods = {
                "offclip": lambda p: run_offclip(p, png),
                "offclip_jpg": lambda p: run_offclip(p, jpg),
                "naive": lambda p: run_naive(p, args.long_side),
                "floor": lambda p: run_floor(p, args.long_side, layouts.get(p)),
                "floor_png": lambda p: run_floor_png(p, args.long_side, layouts.get(p), png),
            }
            seconds = best_times(methods, paths, args.repeat)
            results[syntax] = {
                **{f"{name}_ips": 1.0 / s for name, s in seconds.items()},
                **{f"{name}_ms": 1e3 * s for name, s in seconds.items()},
                "speedup_vs_naive": seconds["naive"] / seconds["offclip"],
                "cost_vs_floor": seconds["offclip"] / seconds["floor"],
                "jpg_cost_vs_floor": seconds["offclip_jpg"] / seconds["floor"],
                "cost_vs_floor_png": seconds["offclip"] / seconds["floor_png"],
                "file_mb": sum(p.stat().st_size for p in paths) / len(paths) / 1e6,
            }

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_table(results)
    if load:
        print(f"load average during the run: {load[0]:.2f} ({os.cpu_count()} CPUs)")
    goals = {f"cost_vs_floor_{s}": results[s]["cost_vs_floor"] <= GOAL_FLOOR for s in syntaxes}
    goals.update({f"cost_vs_floor_png_{s}": results[s]["cost_vs_floor_png"] <= GOAL_FLOOR for s in syntaxes})
    if "explicit_le" in results:
        goals["speedup_vs_naive_uncompressed"] = results["explicit_le"]["speedup_vs_naive"] >= GOAL_SPEEDUP
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({
            "n": args.n, "size": [rows, columns], "long_side": args.long_side, "repeat": args.repeat,
            "phantom": source, "results": results, "goals": goals, "load_average": load,
            "goal_thresholds": {"speedup_vs_naive": GOAL_SPEEDUP, "cost_vs_floor": GOAL_FLOOR},
        }, indent=2))
    return 0


def print_table(results: dict[str, dict]) -> None:
    header = (f"{'syntax':<13} {'MB':>5} {'offclip':>15} {'offclip jpg':>15} {'naive':>15} "
              f"{'floor':>15} {'floor+PNG':>15} {'vs naive':>9} {'vs floor':>9} {'jpg/floor':>9} {'vs fl+PNG':>9}")
    print(header)
    print("-" * len(header))
    for syntax, r in results.items():
        cells = [f"{r[f'{m}_ips']:6.1f}/s {r[f'{m}_ms']:5.1f}ms" for m in ("offclip", "offclip_jpg", "naive", "floor",
                                                                            "floor_png")]
        print(f"{syntax:<13} {r['file_mb']:5.1f} " + " ".join(f"{c:>15}" for c in cells)
              + f" {r['speedup_vs_naive']:8.1f}x {r['cost_vs_floor']:8.2f}x {r['jpg_cost_vs_floor']:8.2f}x"
              + f" {r['cost_vs_floor_png']:8.2f}x")
    print("vs naive = offclip speed / naive speed; vs floor = offclip time / floor time (PNG output); "
          "jpg/floor = the same with JPEG output; vs fl+PNG = offclip (PNG) time / (floor + PNG encode) time")


if __name__ == "__main__":
    sys.exit(main())

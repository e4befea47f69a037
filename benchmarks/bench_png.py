"""The PNG encode behind offclip's image output: deflate settings after the Up filter.

    python benchmarks/bench_png.py [--n 4] [--long-side 512] [--repeat 30] [--json PATH]

What is left of ingest above the decode+resize floor is encoding the output PNG
(``bench_ingest.py``). This times that encode alone on real normalised outputs (full-size 12-bit
phantom radiographs through ``decode_dicom``), Up-filtered by ``images.png_up_scanlines`` (as the
PNG writer does), then deflated by each candidate; per image the best of ``--repeat`` interleaved runs, and
every stream is checked to inflate back to the filtered rows:

* zlib level 1, run-length strategy (offclip before) / Huffman only / default strategy;
* zlib-ng level 1, run-length / Huffman only (offclip now, ``encode_file_bytes``'s level 1);
* ISA-L level 1 (``pip install isal``), when installed;
* ``encode_file_bytes`` itself (filter + deflate + PNG chunks), and Pillow's PNG writer at level 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from zlib_ng import zlib_ng  # noqa: E402

from offclip.pipeline import images  # noqa: E402


def deflate(module, level: int, strategy: int):
    def run(data: bytes) -> bytes:
        c = module.compressobj(level, module.DEFLATED, 15, 9, strategy)
        return c.compress(data) + c.flush()
    return run


def candidates() -> dict:
    out = {
        "zlib L1 run-length (before)": deflate(zlib, 1, zlib.Z_RLE),
        "zlib L1 Huffman only": deflate(zlib, 1, zlib.Z_HUFFMAN_ONLY),
        "zlib L1 default strategy": deflate(zlib, 1, zlib.Z_DEFAULT_STRATEGY),
        "zlib-ng L1 run-length": deflate(zlib_ng, 1, zlib_ng.Z_RLE),
        "zlib-ng L1 Huffman only (now)": deflate(zlib_ng, 1, zlib_ng.Z_HUFFMAN_ONLY),
    }
    try:
        from isal import isal_zlib

        out["ISA-L L1"] = lambda data: isal_zlib.compress(data, 1)
    except ImportError:
        pass
    return out


def outputs(n: int, long_side: int) -> list[np.ndarray]:
    """``n`` real normalised outputs: full-size 12-bit phantoms decoded by ``decode_dicom``."""
    import tempfile

    from bench_ingest import write_files  # the same phantom DICOMs bench_ingest times

    config = images.NormalizeConfig(long_side=long_side)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), n, 3056, 2544, ("explicit_le",))[0]["explicit_le"]
        return [images.decode_dicom(p.read_bytes(), config).pixels for p in paths]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="images")
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    pixels = outputs(args.n, args.long_side)
    filtered = [images.png_up_scanlines(p).tobytes() for p in pixels]
    config = images.NormalizeConfig(long_side=args.long_side)
    runs = {name: (fn, filtered) for name, fn in candidates().items()}
    runs["encode_file_bytes (filter + deflate + chunks)"] = (lambda p: images.encode_file_bytes(p, config), pixels)
    runs["Pillow PNG, compress_level=1"] = (lambda p: _pillow(p), pixels)

    best = {name: [float("inf")] * len(pixels) for name in runs}
    size = {name: [0] * len(pixels) for name in runs}
    for _ in range(args.repeat):
        for name, (fn, inputs) in runs.items():
            for i, x in enumerate(inputs):
                t = time.perf_counter()
                data = fn(x)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
                size[name][i] = len(data)
    for name, fn in candidates().items():  # every deflate stream inflates back to the rows
        assert all(zlib.decompress(fn(f)) == f for f in filtered), name

    base = "zlib L1 run-length (before)"
    results = {name: {"ms": 1e3 * float(np.mean(best[name])), "kb": float(np.mean(size[name])) / 1e3}
               for name in runs}
    for r in results.values():
        r["speedup_vs_before"] = results[base]["ms"] / r["ms"]
    shape = pixels[0].shape
    print(f"PNG encode of {len(pixels)} normalised radiographs ({shape[1]}x{shape[0]}, {pixels[0].dtype}), "
          f"best of {args.repeat}; load {os.getloadavg()[0]:.2f}")
    for name, r in results.items():
        print(f"  {name:42s} {r['ms']:6.2f} ms  {r['kb']:7.1f} kB  {r['speedup_vs_before']:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "n": len(pixels), "repeat": args.repeat,
                                         "shape": list(shape), "load_average": os.getloadavg()}, indent=2))


def _pillow(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


if __name__ == "__main__":
    main()

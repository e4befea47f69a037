#!/usr/bin/env python3
"""Hostile-input harness (issue 26): damage one input of a demo world at a time, ingest, classify.

One 40-study demo world (``--faults``: its 8 injected faults stay as they are) is built once and
ingested once as the reference. Each case then

1. copies the world (``cp -al``: hard links; a damaged file is always *replaced* by a new file,
   never written through its link, and the source world's fingerprint is checked after every
   case),
2. applies ONE damage to one good study (or to the tree),
3. runs ``offclip ingest W OUT --folders all --long-side 64 --workers 1`` (twice for a re-run into
   the same output; ``offclip build-shards`` twice for the stale-shard case; under ``capsh``
   without root's read override for the unreadable cases),
4. classifies the outcome:

   * ``handled``: exit 0, the damaged study/file has a reject row with an expected reason whose
     path or message names it (or, where the damage leaves the data intact, the study is ingested
     exactly as in the reference: "tolerated"), and every good study is as in the reference
     (same content_hash, same image bytes, same sentences);
   * ``wrong_reason``: handled, but the reason is not an expected one or the file is not named;
   * ``crashed``: non-zero exit, a traceback, or a time-out;
   * ``silently_corrupted``: exit 0 and the damaged study ingested with no reject although its
     image (mean |difference| to the reference image) or its text differs (or stale text after
     an edit);
   * ``lost``: a good study missing or changed, or the damaged study gone without a reject.

Run (from the repository root; ~5-10 min on 2 busy cores)::

    .venv/bin/python results/tools/hostile_inputs.py                       # the checkout's offclip
    .venv/bin/python results/tools/hostile_inputs.py --offclip /tmp/before/.venv/bin/offclip \\
        --out results/hostile-inputs/before
    .venv/bin/python results/tools/hostile_inputs.py --compare results/hostile-inputs/before/results.json
    .venv/bin/python results/tools/hostile_inputs.py --cases truncated_90pct,report_5mb --fresh
    .venv/bin/python results/tools/hostile_inputs.py --list

Results are written as they come (``results.json`` and ``table.md``, atomically); a re-run skips
the cases already in ``results.json`` unless ``--fresh``. Deterministic: fixed world seed, damage
seeded per case name.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED = 0
STUDIES = 40
LONG_SIDE = 64
CASE_TIMEOUT = 300  # seconds per offclip command
OUTCOMES = ("handled", "wrong_reason", "crashed", "silently_corrupted", "lost")
CAPSH = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--"]
NEW_SENTENCE = "There is a new large right pleural effusion."
#: an image is "the same" as the reference when no pixel differs by more than this (rounding)
SAME_MAX = 1


# ------------------------------------------------------------------------------------------------
# small file helpers: every change replaces a file (a new inode), never writes through a link
# ------------------------------------------------------------------------------------------------
def replace_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.hostile-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def replace_symlink(path: Path, target: str) -> None:
    path.unlink()
    os.symlink(target, path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(root: Path) -> dict[str, str]:
    """Every entry under ``root``: mode, inode size and content hash (links by their target)."""
    fp = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                fp[rel] = f"link:{os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                fp[rel] = f"dir:{stat.S_IMODE(st.st_mode):o}"
            else:
                fp[rel] = f"{stat.S_IMODE(st.st_mode):o}:{st.st_size}:{sha256(p.read_bytes())}"
    return fp


def rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    for dirpath, dirnames, _ in os.walk(path):  # unreadable folders left by a case
        for d in dirnames:
            p = Path(dirpath, d)
            if not p.is_symlink():
                os.chmod(p, 0o755)
    shutil.rmtree(path)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# DICOM helpers (pydicom from the harness's own environment)
# ------------------------------------------------------------------------------------------------
def dicom_edit(path: Path, edit: Callable) -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(path.read_bytes()))
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    replace_bytes(path, buf.getvalue())


PIXEL_TAG = b"\xe0\x7f\x10\x00"


def pixel_offset(data: bytes) -> int:
    off = data.find(PIXEL_TAG, 132)
    assert off > 0, "no Pixel Data tag"
    return off


def codestream_span(data: bytes, start_marker: bytes) -> tuple[int, int]:
    """(start, end) of the first encapsulated codestream after the Pixel Data tag."""
    start = data.find(start_marker, pixel_offset(data))
    end = data.rfind(b"\xff\xd9")
    assert 0 < start < end, "no codestream"
    return start, end + 2


def meta_end(data: bytes) -> int:
    assert data[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR LE: tag 4, VR 2, length 2, value 4
    assert data[132:136] == b"\x02\x00\x00\x00"
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def replace_meta_uid(data: bytes, new_uid: str) -> bytes:
    """The file's Transfer Syntax UID replaced by ``new_uid`` (same padded length)."""
    end = meta_end(data)
    off = data.find(b"\x02\x00\x10\x00UI", 132, end)
    assert off > 0
    length = int.from_bytes(data[off + 6:off + 8], "little")
    value = new_uid.encode()
    value += b"\x00" * (length - len(value))
    assert len(value) == length, (new_uid, length)
    return data[:off + 8] + value + data[off + 8 + length:]


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    world: Path          # the case's copy of the world
    case_dir: Path
    target: dict | None  # the chosen good study: study_id, subject_id, folder, image, report, rows, columns
    rng: np.random.Generator


@dataclass
class Case:
    name: str
    group: str
    what: str
    damage: Callable[[Ctx], dict]
    expected: tuple[str, ...]      # acceptable reject reasons; "*" any; "ingested": intact ingest is the aim
    pick: dict | None = field(default_factory=dict)  # target criteria; None: no target study (tree)
    mode: str = "ingest"           # ingest | reingest | reingest_same_stamp | rebuild
    capsh: bool = False
    must_ingest: bool = False      # the target study is good and must stay ingested as in the reference
    hint: tuple[str, ...] = ()     # other strings a reject's path/message may name the damage by
    tolerable: bool = True         # an ingest identical to the reference counts as handled ("tolerated");
                                   # False where the pixel data itself is damaged: accepted = not noticed
    note: str = ""


SYNTAX = {"Implicit VR Little Endian": "implicit", "Explicit VR Little Endian": "explicit",
          "Deflated Explicit VR Little Endian": "deflated", "RLE Lossless": "rle",
          "JPEG 2000 Image Compression (Lossless Only)": "j2k", "JPEG Baseline (Process 1)": "jpeg"}
UNCOMPRESSED = ("explicit", "implicit")


def _image(ctx: Ctx) -> Path:
    return ctx.world / ctx.target["image"]


def _report(ctx: Ctx) -> Path:
    return ctx.world / ctx.target["report"]


def _img(ctx: Ctx, **extra) -> dict:
    return {"file": ctx.target["image"], **extra}


def _rep(ctx: Ctx, **extra) -> dict:
    return {"file": ctx.target["report"], **extra}


# --- DICOM damage -------------------------------------------------------------------------------
def cut_at(fraction: float | None = None, where: str | None = None):
    def damage(ctx):
        p = _image(ctx)
        data = p.read_bytes()
        if where == "preamble":
            n = 128
        elif where == "header":
            n = pixel_offset(data) // 2
        elif where == "pixel_start":  # right after the Pixel Data element's tag and length
            off = pixel_offset(data)
            n = off + (12 if data[off + 4:off + 6] in (b"OB", b"OW") else 8)
        elif where == "minus1":
            n = len(data) - 1
        else:
            n = int(len(data) * fraction)
        replace_bytes(p, data[:n])
        return _img(ctx, detail=f"{len(data)} -> {n} bytes")
    return damage


def zero_byte(ctx):
    replace_bytes(_image(ctx), b"")
    return _img(ctx)


def random_bytes(ctx):
    p = _image(ctx)
    n = p.stat().st_size
    replace_bytes(p, ctx.rng.bytes(n))
    return _img(ctx, detail=f"{n} random bytes")


def png_as_dcm(ctx):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64), mode="L").save(buf, "PNG")
    replace_bytes(_image(ctx), buf.getvalue())
    return _img(ctx)


def no_pixel_data(ctx):
    def edit(ds):
        del ds.PixelData
    dicom_edit(_image(ctx), edit)
    return _img(ctx)


def header_edit(**values):
    def damage(ctx):
        changes = {}

        def edit(ds):
            new = {k: v(ds) if callable(v) else v for k, v in values.items()}  # all read before any is set
            for k, v in new.items():
                changes[k] = f"{getattr(ds, k, None)}->{v}"
                setattr(ds, k, v)
        dicom_edit(_image(ctx), edit)
        return _img(ctx, detail=", ".join(f"{k} {v}" for k, v in changes.items()))
    return damage


def unknown_syntax(ctx):
    p = _image(ctx)
    data = p.read_bytes()
    replace_bytes(p, replace_meta_uid(data, "1.2.840.99999.9.9.9"))  # same length as 1.2.840.10008.1.2.1
    return _img(ctx, detail="Transfer Syntax UID 1.2.840.99999.9.9.9")


def strip_meta(ctx):
    p = _image(ctx)
    data = p.read_bytes()
    end = meta_end(data)
    replace_bytes(p, data[end:])
    return _img(ctx, detail=f"preamble + file meta ({end} bytes) removed")


def garbage_in_codestream(marker: bytes, n: int = 2048, at: float = 0.5):
    def damage(ctx):
        p = _image(ctx)
        data = bytearray(p.read_bytes())
        start, end = codestream_span(bytes(data), marker)
        mid = max(start + 64, start + int((end - start) * at) - n // 2)
        n_ = min(n, (end - start) // 4)
        data[mid:mid + n_] = ctx.rng.bytes(n_)
        replace_bytes(p, bytes(data))
        return _img(ctx, detail=f"{n_} random bytes at offset {mid} of a {end - start}-byte codestream")
    return damage


def j2k_truncated_codestream(ctx):
    from pydicom.encaps import encapsulate, generate_frames

    detail = {}

    def edit(ds):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        keep = len(frame) // 2
        detail["d"] = f"codestream {len(frame)} -> {keep} bytes (no EOC), DICOM structure intact"
        ds.PixelData = encapsulate([frame[:keep]])
    dicom_edit(_image(ctx), edit)
    return _img(ctx, detail=detail["d"])


# --- tree damage --------------------------------------------------------------------------------
def unreadable_file(ctx):
    p = _image(ctx)
    replace_bytes(p, p.read_bytes())  # a new inode: the chmod must not reach the source world
    os.chmod(p, 0)
    return _img(ctx, detail="mode 000")


def unreadable_study_folder(ctx):
    d = (ctx.world / ctx.target["image"]).parent
    os.chmod(d, 0)  # a directory of the copy (cp -al makes new directories)
    return _img(ctx, folder=str(Path(ctx.target["image"]).parent), detail="study folder mode 000")


def symlink_loop(rel: str, target: str):
    def damage(ctx):
        os.symlink(target, ctx.world / rel)
        return {"file": rel, "detail": f"{rel} -> {target}"}
    return damage


def symlink_outside(ctx):
    p = _image(ctx)
    outside = ctx.case_dir / "outside" / p.name
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(p.read_bytes())
    replace_symlink(p, str(outside))
    return _img(ctx, detail=f"-> {outside} (the same DICOM, outside the tree)")


def dangling_symlink(ctx):
    p = _image(ctx)
    replace_symlink(p, str(ctx.case_dir / "nowhere" / p.name))
    return _img(ctx, detail="-> a path that does not exist")


# --- report damage ------------------------------------------------------------------------------
def report_bytes(make: Callable[[str], bytes], detail: str = ""):
    def damage(ctx):
        p = _report(ctx)
        text = p.read_text(encoding="utf-8")
        data = make(text)
        replace_bytes(p, data)
        return _rep(ctx, detail=detail or f"{len(data)} bytes")
    return damage


def _latin1(text: str) -> bytes:
    if "INDICATION:" in text:
        text = text.replace("INDICATION:  ", "INDICATION:  Temp 38.5\u00b0C. ", 1)
    else:
        text = text.replace("FINAL REPORT", "FINAL REPORT \u00b7", 1)
    return text.encode("latin-1")


def _five_mb(text: str) -> bytes:
    data = text.encode()
    return (data * (5_000_000 // len(data) + 1))[:5_000_000]


def _nul(text: str) -> bytes:
    findings = text.find("FINDINGS:")
    cut = text.find(". ", findings if findings >= 0 else 0) + 2
    return text[:cut].encode() + b"\x00" * 64 + text[cut:].encode()


def report_missing(ctx):
    _report(ctx).unlink()
    return _rep(ctx)


def report_without_study(ctx):
    existing = {int(p.name[1:-4]) for p in ctx.world.glob("files/p*/p*/s*.txt")}
    study_id = 59999999
    while study_id in existing or (Path(ctx.target["image"]).parents[1] / f"s{study_id}").exists():
        study_id -= 1
    rel = str(Path(ctx.target["report"]).with_name(f"s{study_id}.txt"))
    (ctx.world / rel).write_bytes(_report(ctx).read_bytes())  # a new file
    return {"file": rel, "target_study": study_id, "detail": f"s{study_id}.txt, no image or metadata row"}


# --- metadata CSV damage ------------------------------------------------------------------------
META = "mimic-cxr-2.0.0-metadata.csv"


def _csv_lines(ctx) -> list[str]:
    return (ctx.world / META).read_text().splitlines(keepends=True)


def csv_row_missing_file(ctx):
    dicom_id = "00000000-hostile-0000-0000-missing00001"
    lines = _csv_lines(ctx)
    row = next(line for line in lines if line.startswith(Path(ctx.target["image"]).stem))
    fields = next(csv.reader([row]))
    fields[0], fields[4] = dicom_id, "PA"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    replace_bytes(ctx.world / META, "".join(lines + [buf.getvalue()]).encode())
    split = ctx.world / "mimic-cxr-2.0.0-split.csv"
    replace_bytes(split, split.read_bytes() + f"{dicom_id},{fields[2]},{fields[1]},{ctx.target['split']}\n".encode())
    rel = str(Path(ctx.target["image"]).with_name(dicom_id + ".dcm"))
    return {"file": rel, "detail": f"PA row for {dicom_id}.dcm (absent) in the study of a good frontal"}


def _edit_row(ctx, edit: Callable[[list[str]], list[str] | str]) -> str:
    lines = _csv_lines(ctx)
    stem = Path(ctx.target["image"]).stem
    i = next(k for k, line in enumerate(lines) if line.startswith(stem))
    fields = next(csv.reader([lines[i]]))
    new = edit(fields)
    if isinstance(new, list):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(new)
        new = buf.getvalue()
    before = lines[i].rstrip("\n")
    lines[i] = new
    replace_bytes(ctx.world / META, "".join(lines).encode())
    return f"line {i + 1}: {before!r} -> {new.rstrip(chr(10))!r}"


def csv_rows_columns(ctx):
    def edit(f):
        f[5], f[6] = str(int(f[6]) // 2), str(int(f[5]) // 2)
        return f
    return {"file": ctx.target["image"], "detail": _edit_row(ctx, edit)}


def csv_malformed_line(ctx):
    def edit(f):
        line = ",".join(f)  # the unquoted comma a careless export leaves in a text field
        return line.replace(",CHEST (", ",CHEST, (", 1) + "\n" if ",CHEST (" in line else line + ",\n"
    return {"file": ctx.target["image"], "detail": _edit_row(ctx, edit)}


# --- edits between two runs into the same output ------------------------------------------------
def edit_report(ctx, same_stamp: bool = False):
    p = _report(ctx)
    text = p.read_text(encoding="utf-8")
    st = p.stat()
    if same_stamp:  # same size, modification time put back (an in-place fix, rsync -t)
        old = "No "
        i = text.find(old, text.find("FINDINGS:"))
        assert i > 0, "no 'No ' in the findings"
        new_text = text[:i] + "An " + text[i + 3:]
        replace_bytes(p, new_text.encode())
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        return {"file": ctx.target["report"], "expect_text": new_text[i:i + 40].split(".")[0].strip(),
                "detail": f"'No ' -> 'An ' in the findings, size and mtime unchanged"}
    i = text.find("FINDINGS:")
    j = text.find("\n \n", i) if i >= 0 else -1
    assert j > 0
    new_text = text[:j] + "\n " + NEW_SENTENCE + text[j:]
    replace_bytes(p, new_text.encode())
    return {"file": ctx.target["report"], "expect_text": NEW_SENTENCE,
            "detail": f"'{NEW_SENTENCE}' added to the findings"}


def _picks(**kw):
    """Target criteria: by default a good study with one frontal image whose view the metadata CSV
    gives (so that the damaged file is first read by the decoder, not by the scan's header reads)."""
    return dict({"single_frontal": True, "csv_view": True}, **kw)


#: a header whose Rows/Columns/bits do not fit its pixel data
SIZE = ("pixel_size_mismatch", "metadata_mismatch", "decode_error", "unsupported_pixels")


def build_cases() -> list[Case]:
    unc = _picks(syntax=UNCOMPRESSED)
    nonsquare = _picks(syntax=UNCOMPRESSED, square=False)
    j2k = _picks(syntax=("j2k",))
    cases = [
        # ---- DICOM files
        Case("truncated_preamble", "dicom", "DICOM cut after its 128-byte preamble", cut_at(where="preamble"),
             ("truncated", "not_dicom"), unc),
        Case("truncated_header", "dicom", "DICOM cut in the middle of its header", cut_at(where="header"),
             ("truncated",), unc),
        Case("truncated_pixel_start", "dicom", "DICOM cut right after the Pixel Data tag",
             cut_at(where="pixel_start"), ("truncated",), unc),
        Case("truncated_90pct", "dicom", "uncompressed DICOM cut at 90 %", cut_at(0.9), ("truncated",), unc),
        Case("truncated_minus1", "dicom", "uncompressed DICOM missing its last byte", cut_at(where="minus1"),
             ("truncated",), unc),
        Case("truncated_j2k_70pct", "dicom", "JPEG 2000 DICOM cut at 70 %", cut_at(0.7),
             ("truncated", "decode_error", "corrupt_data"), j2k),
        Case("zero_byte_dicom", "dicom", "0-byte .dcm", zero_byte, ("truncated", "not_dicom"), unc),
        Case("random_bytes", "dicom", ".dcm of random bytes (same size)", random_bytes, ("not_dicom",), unc),
        Case("png_as_dcm", "dicom", "a PNG renamed .dcm", png_as_dcm, ("not_dicom",), unc),
        Case("no_pixel_data", "dicom", "valid header, Pixel Data removed", no_pixel_data, ("no_pixel_data",), unc),
        Case("rows_halved", "dicom", "Rows halved in the header, pixel data unchanged",
             header_edit(Rows=lambda ds: ds.Rows // 2), SIZE,
             nonsquare),
        Case("columns_halved", "dicom", "Columns halved in the header, pixel data unchanged",
             header_edit(Columns=lambda ds: ds.Columns // 2), SIZE, nonsquare),
        Case("rows_columns_swapped", "dicom", "Rows and Columns swapped in the header (non-square image)",
             header_edit(Rows=lambda ds: ds.Columns, Columns=lambda ds: ds.Rows), SIZE, nonsquare,
             note="same byte count: only a check of the header against the metadata CSV (Rows/Columns) can tell"),
        Case("bits_allocated_8", "dicom", "BitsAllocated 8 (BitsStored 8, HighBit 7) on 16-bit pixel data",
             header_edit(BitsAllocated=8, BitsStored=8, HighBit=7), SIZE, unc),
        Case("bits_stored_gt_allocated", "dicom", "BitsStored 20, HighBit 19 > BitsAllocated 16",
             header_edit(BitsStored=20, HighBit=19), ("decode_error", "unsupported_pixels"), unc),
        Case("samples_per_pixel_3", "dicom", "SamplesPerPixel 3 on monochrome data",
             header_edit(SamplesPerPixel=3, PlanarConfiguration=0),
             ("unsupported_pixels", "decode_error", "pixel_size_mismatch"), unc),
        Case("frames_2", "dicom", "NumberOfFrames 2 on single-frame data", header_edit(NumberOfFrames=2),
             ("unsupported_pixels", "truncated", "decode_error", "pixel_size_mismatch"), unc),
        Case("unknown_transfer_syntax", "dicom", "Transfer Syntax UID unknown (1.2.840.99999.9.9.9)",
             unknown_syntax, ("unsupported_transfer_syntax",), _picks(syntax=("explicit",))),
        Case("no_meta_uncompressed", "dicom", "preamble and file meta removed (no Transfer Syntax UID), "
             "explicit VR LE", strip_meta, ("ingested", "not_dicom", "unsupported_transfer_syntax", "unknown_transfer_syntax"),
             _picks(syntax=("explicit",))),
        Case("no_meta_j2k", "dicom", "preamble and file meta removed (no Transfer Syntax UID), JPEG 2000",
             strip_meta, ("ingested", "not_dicom", "unsupported_transfer_syntax", "unknown_transfer_syntax", "decode_error"),
             j2k),
        Case("jpeg_garbage", "dicom", "JPEG baseline: 2 KB of random bytes in the middle of the codestream",
             garbage_in_codestream(b"\xff\xd8\xff"), ("decode_error", "corrupt_data"), _picks(syntax=("jpeg",))),
        Case("j2k_garbage", "dicom", "JPEG 2000: 2 KB of random bytes in the middle of the codestream",
             garbage_in_codestream(b"\xff\x4f\xff\x51"), ("decode_error", "corrupt_data"), j2k,
             note="at 64 px OpenJPEG decodes a reduced resolution level, which may never read these bytes"),
        Case("j2k_garbage_early", "dicom", "JPEG 2000: 2 KB of random bytes at 2 % of the codestream "
             "(coarse levels, visible at 64 px)", garbage_in_codestream(b"\xff\x4f\xff\x51", at=0.02),
             ("decode_error", "corrupt_data"), j2k),
        Case("j2k_truncated_codestream", "dicom", "JPEG 2000 codestream cut in half inside a well-formed DICOM",
             j2k_truncated_codestream, ("truncated", "decode_error", "corrupt_data"), j2k),
        Case("monochrome1_mislabelled", "dicom", "MONOCHROME2 image labelled MONOCHROME1 "
             "(Presentation LUT Shape IDENTITY left)", header_edit(PhotometricInterpretation="MONOCHROME1"),
             ("*",), _picks(syntax=UNCOMPRESSED, photometric="MONOCHROME2"),
             note="only the contradicting Presentation LUT Shape (IDENTITY) tells"),
        # ---- the tree
        Case("unreadable_file", "tree", "frontal DICOM mode 000 (run without root's read override)",
             unreadable_file, ("read_error",), unc, capsh=True),
        Case("unreadable_file_view_from_header", "tree", "frontal DICOM mode 000, ViewPosition and "
             "ViewCodeSequence blank in the metadata CSV (the scan reads its header)", unreadable_file, ("read_error",),
             _picks(syntax=UNCOMPRESSED, csv_view=False), capsh=True),
        Case("unreadable_study_folder", "tree", "study folder mode 000 (run without root's read override)",
             unreadable_study_folder, ("read_error",), unc, capsh=True),
        Case("symlink_loop_subject_cycle", "tree", "subject folder files/p11/p11000000 -> . (a cycle)",
             symlink_loop("files/p11/p11000000", "."), ("ignored",), None),
        Case("symlink_loop_subject_self", "tree", "subject folder files/p11/p11000001 -> itself (ELOOP)",
             symlink_loop("files/p11/p11000001", "p11000001"), ("ignored",), None),
        Case("symlink_loop_files", "tree", "files/0loop -> . (a cycle at the top of files/)",
             symlink_loop("files/0loop", "."), ("ignored",), None),
        Case("symlink_outside_tree", "tree", "frontal DICOM is a symlink to the same file outside the tree",
             symlink_outside, ("ingested", "read_error"), unc),
        Case("dangling_symlink", "tree", "frontal DICOM is a dangling symlink", dangling_symlink,
             ("missing_file", "read_error"), unc),
        # ---- reports
        Case("report_zero_byte", "report", "0-byte report", report_bytes(lambda t: b""), ("empty_report",)),
        Case("report_whitespace", "report", "report of spaces, tabs and newlines only",
             report_bytes(lambda t: b"  \n\n \t \n   \n"), ("empty_report", "report_no_text")),
        Case("report_latin1", "report", "report in latin-1 with a degree sign in INDICATION",
             report_bytes(_latin1), ("report_not_utf8", "ingested")),
        Case("report_utf16_bom", "report", "report in UTF-16 with a BOM",
             report_bytes(lambda t: t.encode("utf-16")), ("report_not_utf8", "ingested")),
        Case("report_5mb", "report", "5 MB report (its text repeated)", report_bytes(_five_mb),
             ("report_too_large",),
             note="no radiology report is 5 MB: a size limit names it"),
        Case("report_only_comparison", "report", "report with only a COMPARISON section",
             report_bytes(lambda t: b"                                 FINAL REPORT\n"
                                    b" COMPARISON:  Chest radiographs of ___.\n"),
             ("report_no_text",)),
        Case("report_nul_bytes", "report", "64 NUL bytes between two findings sentences",
             report_bytes(_nul), ("report_not_text", "report_not_utf8", "report_no_text", "decode_error")),
        Case("report_missing", "report", "a good study's report deleted", report_missing, ("no_report",)),
        Case("report_without_study", "report", "a report for a study with no image or metadata row",
             report_without_study, ("report_without_study",)),
        # ---- metadata CSV
        Case("csv_row_missing_file", "metadata", "metadata row (PA) for a file that does not exist, "
             "in a good study", csv_row_missing_file, ("missing_file",), unc, must_ingest=True),
        Case("csv_rows_columns_mismatch", "metadata", "metadata Rows/Columns disagree with the header "
             "(swapped and halved)", csv_rows_columns, ("ingested", "metadata_mismatch"), nonsquare,
             hint=(META,)),
        Case("csv_malformed_line", "metadata", "metadata line with an unquoted comma (13 fields for 12)",
             csv_malformed_line, ("ingested", "metadata_row_invalid", "*"), _picks(syntax=UNCOMPRESSED),
             hint=(META,), note="aim: the line skipped or rejected naming the CSV, the others intact"),
        # ---- edits between runs into the same output
        Case("report_edited_reingest", "rerun", "report edited (a sentence added) between two ingests "
             "into the same OUT", lambda ctx: edit_report(ctx), ("new_text",), _picks(), mode="reingest"),
        Case("report_edited_same_stamp", "rerun", "report edited in place between two ingests, same size "
             "and mtime", lambda ctx: edit_report(ctx, same_stamp=True), ("new_text",), _picks(),
             mode="reingest", note="the stamp (size + mtime) is unchanged by design: a known limit"),
        Case("report_edited_rebuild_shards", "rerun", "report edited between two build-shards into the "
             "same OUT", lambda ctx: edit_report(ctx), ("new_text",), _picks(), mode="rebuild"),
    ]
    for c in cases:  # the pixel data itself is damaged: an ingest that does not notice is not "tolerated"
        if c.name in ("truncated_90pct", "truncated_minus1", "truncated_j2k_70pct", "jpeg_garbage", "j2k_garbage",
                      "j2k_garbage_early", "j2k_truncated_codestream", "monochrome1_mislabelled"):
            c.tolerable = False
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    return cases


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
class Harness:
    def __init__(self, args):
        self.args = args
        self.offclip = str(Path(args.offclip).absolute())
        self.work = Path(args.work).absolute()
        self.out = Path(args.out).absolute()
        self.world = self.work / "world"
        self.ref_out = self.work / "reference"
        self.env = dict(os.environ, PREFECT_HOME=str(self.work / "prefect-home"), PYTHONHASHSEED="0",
                        TQDM_DISABLE="1")

    # -- commands --------------------------------------------------------------------------------
    def ingest_cmd(self, world: Path, out: Path) -> list[str]:
        return [self.offclip, "ingest", str(world), str(out), "--folders", "all",
                "--long-side", str(LONG_SIDE), "--workers", "1", "--seed", str(SEED), "-q"]

    def build_cmd(self, world: Path, out: Path) -> list[str]:
        return [self.offclip, "build-shards", str(world), str(out), "--folders", "all",
                "--image-size", str(LONG_SIDE), "--workers", "1", "--seed", str(SEED),
                "--classifier", str(self.classifier)]

    def run(self, cmd: list[str], log: Path, capsh: bool = False, timeout: int = CASE_TIMEOUT) -> dict:
        full = CAPSH + ["-c", shlex.join(cmd)] if capsh else cmd
        start = time.perf_counter()
        try:
            p = subprocess.run(full, capture_output=True, text=True, errors="replace", env=self.env,
                               timeout=timeout, cwd=self.work)
            rc, out, err, timed_out = p.returncode, p.stdout, p.stderr, False
        except subprocess.TimeoutExpired as exc:
            rc, timed_out = None, True
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        seconds = time.perf_counter() - start
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(full)}\n# rc={rc} timed_out={timed_out} {seconds:.1f}s\n"
                    f"--- stdout\n{out}\n--- stderr\n{err}\n")
        return {"cmd": shlex.join(full), "rc": rc, "timed_out": timed_out, "seconds": round(seconds, 1),
                "traceback": "Traceback (most recent call last)" in out + err,
                "tail": (err.strip() or out.strip())[-600:]}

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if not (self.world / "offclip_demo" / "world.json").is_file():
            rmtree(self.world)
            print(f"building the demo world ({STUDIES} studies, --faults) in {self.world}", flush=True)
            r = self.run([self.offclip, "demo-world", str(self.world), "--studies", str(STUDIES), "--seed",
                          str(SEED), "--faults", "--workers", "1", "-q"], self.work / "setup.log", timeout=900)
            if r["rc"] != 0:
                sys.exit(f"demo-world failed: {r['tail']}")
        self.world_fp = fingerprint(self.world)
        self.world_sha = sha256(json.dumps(self.world_fp, sort_keys=True).encode())
        stamp = self.work / "reference.world-sha"
        if not (self.ref_out / "ingest" / "studies.parquet").is_file() or \
                not stamp.is_file() or stamp.read_text() != self.world_sha + self.offclip:
            rmtree(self.ref_out)
            print("ingesting the reference", flush=True)
            r = self.run(self.ingest_cmd(self.world, self.ref_out), self.work / "setup.log")
            if r["rc"] != 0 or r["traceback"]:
                sys.exit(f"reference ingest failed: {r['tail']}")
            stamp.write_text(self.world_sha + self.offclip)
        self.ref = load_outputs(self.ref_out)
        with open(self.world / META, newline="") as f:
            self.csv_rows = {r["dicom_id"]: r for r in csv.DictReader(f)}
        self.good = sorted(s for s, row in self.ref["studies"].items() if row["status"] == "ingested")
        self.classifier = Path(self.args.classifier).absolute() if self.args.classifier else self.work / "classifier"

    def ensure_classifier(self) -> None:
        if (self.classifier / "offclip.json").is_file():
            return
        print(f"training a frozen sentence classifier once in {self.classifier} (a few minutes)", flush=True)
        r = self.run([self.offclip, "classifier", "train", "--method", "frozen", "--seed", str(SEED),
                      "--out", str(self.classifier)], self.work / "setup.log", timeout=1800)
        if r["rc"] != 0:
            raise RuntimeError(f"classifier training failed: {r['tail']}")

    def pick_target(self, case: Case) -> dict | None:
        if case.pick is None:
            return None
        ref = self.ref
        cands = []
        for sid in self.good:
            s = ref["studies"][sid]
            img = ref["selected"][sid]
            if case.pick.get("single_frontal") and s["n_frontal"] != 1:
                continue
            syn = SYNTAX.get(img["transfer_syntax"], img["transfer_syntax"])
            if "syntax" in case.pick and syn not in case.pick["syntax"]:
                continue
            if case.pick.get("square") is False and abs(img["rows"] - img["columns"]) < 0.1 * max(img["rows"], img["columns"]):
                continue
            if "photometric" in case.pick and img["photometric"] != case.pick["photometric"]:
                continue
            row = self.csv_rows.get(Path(img["path"]).stem, {})
            if case.pick.get("csv_view") is True and not row.get("ViewPosition"):
                continue  # the metadata CSV gives the view: the decoder reads the file first
            if case.pick.get("csv_view") is False and (row.get("ViewPosition") or row.get("ViewCodeSequence_CodeMeaning")):
                continue  # no view in the metadata CSV: the scan reads the header first
            cands.append(sid)
        if not cands:
            raise RuntimeError(f"{case.name}: no study fits {case.pick}")
        sid = cands[zlib.crc32(case.name.encode()) % len(cands)]
        s, img = ref["studies"][sid], ref["selected"][sid]
        return {"study_id": sid, "subject_id": s["subject_id"], "split": s["split"], "image": img["path"],
                "report": s["report_path"], "syntax": img["transfer_syntax"], "photometric": img["photometric"],
                "rows": img["rows"], "columns": img["columns"]}

    # -- one case --------------------------------------------------------------------------------
    def run_case(self, case: Case) -> dict:
        case_dir = self.work / "cases" / case.name
        rmtree(case_dir)
        case_dir.mkdir(parents=True)
        world, out, log = case_dir / "world", case_dir / "out", case_dir / "log.txt"
        subprocess.run(["cp", "-al", str(self.world), str(world)], check=True)
        target = self.pick_target(case)
        rng = np.random.default_rng([SEED, zlib.crc32(case.name.encode())])
        ctx = Ctx(world, case_dir, target, rng)
        rec = {"case": case.name, "group": case.group, "damaged": case.what, "expected": list(case.expected),
               "target_study": target["study_id"] if target else None}
        runs = []
        try:
            if case.mode == "ingest":
                info = case.damage(ctx)
                runs.append(self.run(self.ingest_cmd(world, out), log, capsh=case.capsh))
            elif case.mode == "reingest":
                runs.append(self.run(self.ingest_cmd(world, out), log))
                info = case.damage(ctx)
                runs.append(self.run(self.ingest_cmd(world, out), log))
            elif case.mode == "rebuild":
                self.ensure_classifier()
                runs.append(self.run(self.build_cmd(world, out), log, timeout=900))
                first = shard_samples(out) if runs[0]["rc"] == 0 else {}
                info = case.damage(ctx)
                runs.append(self.run(self.build_cmd(world, out), log, timeout=900))
                rec["first_build_samples"] = len(first)
            else:
                raise ValueError(case.mode)
        finally:
            if self.args.check_world and fingerprint(self.world) != self.world_fp:
                sys.exit(f"FATAL: case {case.name} changed the source world {self.world}")
        rec.update(file=info["file"], detail=info.get("detail", ""),
                   target_study=info.get("target_study", rec["target_study"]))
        rec["commands"] = [r["cmd"] for r in runs]
        rec["command"] = short_command(case)
        rec["exit_codes"] = [r["rc"] for r in runs]
        rec["exit_code"] = runs[-1]["rc"]
        rec["seconds"] = round(sum(r["seconds"] for r in runs), 1)
        outcome, reasons, note = self.classify(case, rec, info, runs, out, first if case.mode == "rebuild" else None)
        rec.update(outcome=outcome, reasons_seen=reasons, note=(note + (f" — {case.note}" if case.note else "")))
        if not self.args.keep:
            rmtree(world)
        return rec

    # -- classification --------------------------------------------------------------------------
    def classify(self, case, rec, info, runs, out: Path, first_samples) -> tuple[str, list[str], str]:
        bad_run = next((r for r in runs if r["rc"] != 0 or r["traceback"] or r["timed_out"]), None)
        if bad_run:
            why = "timed out" if bad_run["timed_out"] else f"exit {bad_run['rc']}" + \
                (", traceback" if bad_run["traceback"] else "")
            return "crashed", [], f"{why}: {last_line(bad_run['tail'])}"
        try:
            got = load_outputs(out)
        except Exception as exc:  # noqa: BLE001
            return "crashed", [], f"exit 0 but the outputs cannot be read: {type(exc).__name__}: {exc}"
        target = rec["target_study"]
        file = info["file"]
        names = [file, Path(file).name] + ([info["folder"]] if info.get("folder") else []) + list(case.hint)
        rejects = got["rejects"]
        rows = [r for r in rejects if (target is not None and r["study_id"] == target)
                or any(n and n in (r["path"] or "") + " " + r["message"] for n in names)]
        reasons = sorted({r["reason"] for r in rows})
        named = [r for r in rows if any(n and n in (r["path"] or "") + " " + r["message"] for n in names)]
        named.sort(key=lambda r: r["reason"] == "no_frontal")  # the file's own reject before the study's

        # good studies other than the target, as in the reference
        lost = []
        for sid in self.good:
            if sid == target:
                continue
            diff = compare_study(self.ref, self.ref_out, got, out, sid)
            if diff:
                lost.append(f"{sid}: {diff}")
        if case.mode == "rebuild":
            return self.classify_rebuild(case, rec, info, out, got, first_samples, lost, reasons)
        if lost:
            return "lost", reasons, f"{len(lost)} good stud{'y' if len(lost) == 1 else 'ies'} lost or changed: " \
                + "; ".join(lost[:3])
        extra = sorted(s for s, row in got["studies"].items()
                       if s not in self.ref["studies"] and s != target and row["status"] == "ingested")
        if extra:
            return "silently_corrupted", reasons, f"studies not in the tree ingested: {extra[:5]}"

        if case.mode == "reingest":
            texts = got["sentences"].get(target, [])
            want = info["expect_text"]
            if any(want in t for t in texts):
                return "handled", reasons, "the re-run carries the edited text"
            return "silently_corrupted", reasons, "the re-run kept the old text (stale: the edit was not read)"

        if target is None:  # tree-level damage: the tree must read exactly as before
            nref = sum(1 for r in self.ref["studies"].values())
            if len(got["studies"]) != nref:
                return "silently_corrupted", reasons, f"{len(got['studies'])} studies vs {nref} in the reference"
            return "handled", reasons, "tree read exactly as the reference" + \
                (f"; rejects naming it: {reasons}" if reasons else "")

        row = got["studies"].get(target)
        expected = set(case.expected)
        ok_reason = [r for r in named if "*" in expected or r["reason"] in expected]
        if row is not None and row["status"] == "ingested":
            if target in self.ref["studies"] and self.ref["studies"][target]["status"] == "ingested":
                diff = compare_study(self.ref, self.ref_out, got, out, target, content=False)
            else:
                diff = "ingested, not in the reference"
            if not diff and not case.tolerable:
                return "silently_corrupted", reasons, "decoded without a reject although its pixel data is " \
                    "damaged (the 64-px output is within 1 level of the reference: the damage sits in fine detail)"
            if not diff:
                if case.must_ingest and not ok_reason:
                    return "wrong_reason", reasons, "study intact but no reject names the damaged file"
                return "handled", reasons, "tolerated: ingested exactly as the reference" + \
                    (f" (+ reject {sorted({r['reason'] for r in ok_reason})})" if ok_reason else "")
            return "silently_corrupted", reasons, f"ingested without a reject: {diff}"
        # the target is rejected or absent
        if case.must_ingest:
            return "lost", reasons, f"the good study was rejected ({row['reject_reason'] if row else 'absent'})"
        if ok_reason:
            return "handled", reasons, f"{ok_reason[0]['reason']}: {ok_reason[0]['message'][:120]}"
        if rows:
            why = "reason not expected" if not any("*" in expected or r["reason"] in expected for r in rows) \
                else "the reject does not name the file"
            r0 = (named or rows)[0]
            return "wrong_reason", reasons, f"{why}: {r0['reason']}: {r0['message'][:120]}"
        if row is None:
            return "lost", reasons, "the damaged study vanished from the outputs without a reject"
        return "wrong_reason", reasons, f"study rejected ({row['reject_reason']}) without a reject row"

    def classify_rebuild(self, case, rec, info, out, got, first, lost, reasons):
        target = rec["target_study"]
        second = shard_samples(out)
        want = info["expect_text"]
        if lost:
            return "lost", reasons, "ingest records lost or changed: " + "; ".join(lost[:3])
        if not first:
            return "crashed", reasons, "the first build wrote no shard samples"
        gone = sorted(set(first) - {k for k in second})
        if gone:
            return "lost", reasons, f"{len(gone)} samples of the first build missing after the rebuild"
        mine = [v for v in second.values() if v["study_id"] == target]
        others_changed = [k for k, v in second.items() if v["study_id"] != target and k in first
                          and first[k]["txt"] != v["txt"]]
        if others_changed:
            return "lost", reasons, f"{len(others_changed)} other samples changed text"
        ingest_new = any(want in t for t in got["sentences"].get(target, []))
        if len(mine) != 1:
            return "silently_corrupted", reasons, f"{len(mine)} shard samples for the edited study " \
                f"(texts: {[('new' if want in m['txt'] else 'old') for m in mine]})"
        if want in mine[0]["txt"] and want in mine[0]["json_text"]:
            return "handled", reasons, "one sample, its .txt and .json carry the edited text"
        return "silently_corrupted", reasons, "stale shard: the sample keeps the old text" + \
            (" although ingest/sentences has the new one" if ingest_new else " (ingest did not re-read it either)")

    # -- the loop --------------------------------------------------------------------------------
    def main(self) -> int:
        cases = build_cases()
        if self.args.cases:
            wanted = [c.strip() for c in self.args.cases.split(",") if c.strip()]
            unknown = set(wanted) - {c.name for c in cases}
            if unknown:
                sys.exit(f"unknown cases: {sorted(unknown)}")
            cases = [c for c in cases if c.name in wanted]
        results_path = self.out / "results.json"
        state = {"cases": {}}
        if results_path.is_file() and not (self.args.fresh and not self.args.cases):
            state = json.loads(results_path.read_text())
            if self.args.fresh:  # --fresh with --cases: re-run those, keep the others
                for c in cases:
                    state["cases"].pop(c.name, None)
        self.setup()
        if self.args.plan:
            for c in cases:
                t = self.pick_target(c)
                print(f"{c.name:34s} " + (f"s{t['study_id']} {SYNTAX.get(t['syntax'], t['syntax'])} {t['photometric']} "
                                          f"{t['rows']}x{t['columns']} {t['image']}" if t else "(the tree)"))
            return 0
        state["meta"] = self.meta()
        todo = [c for c in cases if c.name not in state["cases"]]
        print(f"{len(cases)} cases, {len(cases) - len(todo)} already in {results_path}; offclip {self.offclip}",
              flush=True)
        t0 = time.perf_counter()
        for i, case in enumerate(todo, 1):
            try:
                rec = self.run_case(case)
            except Exception as exc:  # noqa: BLE001 - a harness failure is recorded, not hidden
                rec = {"case": case.name, "group": case.group, "damaged": case.what, "outcome": "harness_error",
                       "note": f"{type(exc).__name__}: {exc}", "expected": list(case.expected),
                       "reasons_seen": [], "exit_code": None, "command": short_command(case)}
            state["cases"][case.name] = rec
            self.write(state, results_path)
            print(f"[{i:2d}/{len(todo)}] {case.name:30s} {rec['outcome']:18s} rc={rec.get('exit_code')!s:4s} "
                  f"{rec.get('seconds', 0):5.1f}s  {','.join(rec['reasons_seen']) or '-':28s} "
                  f"{rec['note'][:110]}", flush=True)
        self.write(state, results_path)
        counts = outcome_counts(state["cases"].values())
        print(f"done in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
              flush=True)
        print(f"wrote {results_path} and {self.out / 'table.md'}")
        return 0

    def meta(self) -> dict:
        bin_dir = Path(self.offclip).resolve().parent
        repo = bin_dir.parent.parent  # .venv/bin/offclip -> the checkout
        commit = dirty = None
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()
            dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True).stdout.strip())
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass
        return {"offclip": self.offclip, "checkout": str(repo), "commit": commit, "dirty": dirty,
                "world": {"studies": STUDIES, "seed": SEED, "faults": True, "fingerprint": self.world_sha,
                          "files": len(self.world_fp)},
                "reference": {"studies": len(self.ref["studies"]), "ingested": len(self.good)},
                "long_side": LONG_SIDE, "work": str(self.work),
                "harness": "results/tools/hostile_inputs.py"}

    def write(self, state: dict, results_path: Path) -> None:
        order = [c.name for c in build_cases()]
        state["cases"] = {k: state["cases"][k] for k in sorted(state["cases"], key=lambda n: order.index(n)
                                                               if n in order else len(order))}
        state["counts"] = outcome_counts(state["cases"].values())
        atomic_write_text(results_path, json.dumps(state, indent=2, sort_keys=False, default=str) + "\n")
        atomic_write_text(self.out / "table.md", render_table(state, self.args))


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def load_outputs(out: Path) -> dict:
    import pandas as pd

    d = out / "ingest"
    studies = pd.read_parquet(d / "studies.parquet")
    images = pd.read_parquet(d / "images.parquet")
    rejects = pd.read_parquet(d / "rejects.parquet")
    sentences = pd.read_parquet(d / "sentences.parquet")
    st = {int(r["study_id"]): r for r in studies.to_dict("records")}
    sel = {int(r["study_id"]): r for r in images[images["status"] == "selected"].to_dict("records")}
    sent: dict[int, list[str]] = {}
    for r in sentences.sort_values(["study_id", "index"]).to_dict("records"):
        sent.setdefault(int(r["study_id"]), []).append(r["text"])
    rej = [{k: (None if k in ("study_id", "path") and (v is None or v != v) else v) for k, v in r.items()}
           for r in rejects.to_dict("records")]
    for r in rej:
        r["study_id"] = int(r["study_id"]) if r["study_id"] is not None else None
        r["message"] = str(r["message"])
    return {"studies": st, "selected": sel, "sentences": sent, "rejects": rej}


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).astype(np.float32)


def compare_study(ref: dict, ref_out: Path, got: dict, out: Path, sid: int, content: bool = True) -> str:
    """'' when study ``sid`` is as in the reference, else what differs."""
    row = got["studies"].get(sid)
    if row is None:
        return "missing from studies.parquet"
    if row["status"] != "ingested":
        return f"rejected ({row['reject_reason']})"
    r0 = ref["studies"][sid]
    if content and row["content_hash"] != r0["content_hash"]:
        return "content_hash differs"
    if got["sentences"].get(sid, []) != ref["sentences"].get(sid, []):
        mine, theirs = got["sentences"].get(sid, []), ref["sentences"].get(sid, [])
        nul = sum("\x00" in t for t in mine)
        bad = sum("\ufffd" in t for t in mine)
        return (f"sentences differ ({len(mine)} vs {len(theirs)} in the reference, {sum(map(len, mine)):,} chars"
                + (f"; {nul} hold NUL bytes" if nul else "") + (f"; {bad} hold U+FFFD" if bad else "") + ")")
    a, b = ref["selected"].get(sid), got["selected"].get(sid)
    if b is None or not b["out_path"] or not (out / b["out_path"]).is_file():
        return "no output image"
    pa, pb = ref_out / a["out_path"], out / b["out_path"]
    if pa.read_bytes() == pb.read_bytes():
        return ""
    x, y = read_png(pa), read_png(pb)
    if x.shape != y.shape:
        return f"image {y.shape[1]}x{y.shape[0]} vs {x.shape[1]}x{x.shape[0]} in the reference"
    d = np.abs(x - y)
    mad, share, top = float(d.mean()), float((d > 4).mean()), int(d.max())
    if top <= SAME_MAX and content is False:
        return ""
    return f"image differs (mean |diff| {mad:.2f}/255, max {top}, {100 * share:.1f} % of pixels by > 4)"


def shard_samples(out: Path) -> dict[str, dict]:
    """Every sample in OUT/shards/*/*.tar: key -> study_id, txt, json text."""
    samples: dict[str, dict] = {}
    for tar_path in sorted((out / "shards").glob("*/*.tar")):
        with tarfile.open(tar_path) as tf:
            members: dict[str, dict[str, bytes]] = {}
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, parts in members.items():
            meta = json.loads(parts.get("json", b"{}") or b"{}")
            txt = parts.get("txt", b"").decode("utf-8", "replace")
            samples[f"{tar_path.parent.name}/{key}"] = {
                "study_id": int(meta.get("study_id", -1)), "txt": txt, "json_text": json.dumps(meta),
                "shard": tar_path.name}
    return samples


def short_command(case: Case) -> str:
    base = f"offclip ingest W OUT --folders all --long-side {LONG_SIDE} --workers 1"
    if case.capsh:
        return f"capsh --drop=cap_dac_override,cap_dac_read_search -- -c '{base}'"
    if case.mode == "reingest":
        return f"{base}; (edit); {base}"
    if case.mode == "rebuild":
        b = f"offclip build-shards W OUT --folders all --image-size {LONG_SIDE} --workers 1 --classifier C"
        return f"{b}; (edit); {b}"
    return base


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def outcome_counts(recs) -> dict[str, int]:
    counts = {k: 0 for k in OUTCOMES}
    for r in recs:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return {k: v for k, v in counts.items() if v or k in OUTCOMES}


def md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_table(state: dict, args) -> str:
    meta, cases = state["meta"], state["cases"]
    counts = outcome_counts(cases.values())
    lines = [
        "# Hostile inputs (issue 26)",
        "",
        f"offclip: `{meta['offclip']}` (checkout `{meta['checkout']}`, commit `{meta['commit']}`"
        f"{', uncommitted changes' if meta['dirty'] else ''})",
        "",
        f"World: `offclip demo-world W --studies {STUDIES} --seed {SEED} --faults --workers 1` "
        f"({meta['world']['files']} entries, fingerprint `{meta['world']['fingerprint'][:12]}`); "
        f"reference `offclip ingest W REF --folders all --long-side {LONG_SIDE} --workers 1 --seed {SEED}`: "
        f"{meta['reference']['studies']} studies, {meta['reference']['ingested']} ingested (the world's 8 "
        "injected faults rejected). Each case: `cp -al` the world, one damage to one good study (or the "
        "tree), then the command below (W = the damaged copy, OUT a fresh output, C a frozen classifier "
        "trained once with `offclip classifier train --method frozen`).",
        "",
        "Rerun: `.venv/bin/python results/tools/hostile_inputs.py [--offclip PATH] [--out DIR] [--cases a,b] "
        "[--fresh]`; compare: `--compare before/results.json`.",
        "",
        "Outcomes: **handled** (exit 0, a reject with an expected reason naming the file, or the study "
        "ingested exactly as in the reference where the damage leaves it usable: *tolerated*; every good "
        "study as in the reference), **wrong_reason**, **crashed** (non-zero exit, traceback or time-out), "
        "**silently_corrupted** (ingested with no reject though damaged, or stale text after an edit), "
        "**lost** (a good study missing or changed).",
        "",
        "| outcome | cases |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines += [f"| **total** | **{sum(counts.values())}** |", "",
              "| # | case | damaged | command | exit | outcome | reasons seen | expected | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for i, (name, r) in enumerate(cases.items(), 1):
        codes = r.get("exit_codes") or [r.get("exit_code")]
        exit_ = ",".join("timeout" if c is None else str(c) for c in codes)
        lines.append(f"| {i} | `{name}` | {md(r['damaged'])}{md(' (' + r['detail'] + ')') if r.get('detail') else ''}"
                     f" | `{md(r.get('command', ''))}` | {exit_} | **{r['outcome']}** | "
                     f"{md(', '.join(r.get('reasons_seen') or []) or '-')} | {md(', '.join(r['expected']))} | "
                     f"{md(r.get('note', ''))} |")
    lines.append("")
    return "\n".join(lines)


def compare(before_path: Path, after_path: Path) -> str:
    before = json.loads(before_path.read_text())["cases"]
    after = json.loads(after_path.read_text())["cases"]
    names = list(after) + [n for n in before if n not in after]
    lines = [f"# before → after\n\nbefore: `{before_path}`; after: `{after_path}`\n",
             "| case | before | after | after's reasons | after's note |", "|---|---|---|---|---|"]
    changed = 0
    for n in names:
        b = before.get(n, {}).get("outcome", "-")
        a = after.get(n, {}).get("outcome", "-")
        mark = "" if a == b else " ←"
        changed += a != b
        lines.append(f"| `{n}` | {b} | **{a}**{mark} | {md(', '.join(after.get(n, {}).get('reasons_seen', [])))} | "
                     f"{md(after.get(n, {}).get('note', ''))[:160]} |")
    cb, ca = outcome_counts(before.values()), outcome_counts(after.values())
    lines += ["", "| outcome | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {cb.get(k, 0)} | {ca.get(k, 0)} |" for k in dict.fromkeys(list(cb) + list(ca))]
    lines.append(f"\n{changed} case(s) changed outcome.\n")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offclip", default=str(REPO / ".venv" / "bin" / "offclip"), help="the offclip executable to test")
    ap.add_argument("--out", default=str(REPO / "results" / "hostile-inputs"), help="where results.json and table.md go")
    ap.add_argument("--work", default=None, help="scratch (default: /tmp/offclip-hostile-<hash of --offclip>)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--fresh", action="store_true", help="re-run cases already in results.json")
    ap.add_argument("--classifier", default=None, help="a saved sentence classifier for the build-shards case "
                    "(default: train a frozen one once in WORK/classifier)")
    ap.add_argument("--keep", action="store_true", help="keep each case's damaged world copy")
    ap.add_argument("--no-check-world", dest="check_world", action="store_false",
                    help="skip the source-world fingerprint check after each case")
    ap.add_argument("--compare", default=None, help="a results.json to compare --out's results.json with")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--plan", action="store_true", help="build the world and reference, print each case's "
                    "target study, and exit")
    args = ap.parse_args(argv)
    if args.work is None:
        tag = hashlib.sha256(str(Path(args.offclip).absolute()).encode()).hexdigest()[:8]
        args.work = f"/tmp/offclip-hostile-{tag}"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in build_cases():
            print(f"{c.name:30s} {c.group:9s} {c.what}  [expected: {', '.join(c.expected)}]")
        return 0
    if args.compare:
        after = Path(args.out) / "results.json"
        text = compare(Path(args.compare), after)
        print(text)
        atomic_write_text(Path(args.out) / "compare.md", text)
        return 0
    if not os.access(args.offclip, os.X_OK):
        sys.exit(f"--offclip {args.offclip} is not an executable")
    return Harness(args).main()


if __name__ == "__main__":
    sys.exit(main())

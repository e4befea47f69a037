"""Decode a chest X-ray DICOM and normalise it to a training-ready grayscale image, fast.

The image half of the ingest stage (library code: no Prefect here)::

    decoded = decode_dicom(path, NormalizeConfig(long_side=512))   # raises ImageReject
    decoded = decode_jpeg(path, NormalizeConfig(long_side=512))    # MIMIC-CXR-JPG files
    data = encode_file_bytes(decoded.pixels, config)               # PNG or JPEG bytes

Order of operations, chosen for speed (the expensive part is touching every full-size pixel once)::

    parse header -> stored pixels -> [Modality LUT Sequence] -> shrink -> rescale slope/intercept
        -> VOI LUT | window | robust min-max -> invert MONOCHROME1 -> quantise -> [pad]

* Stored pixels of uncompressed syntaxes are a zero-copy ``np.frombuffer`` view: on a memory map
  of the file (path input) or on the caller's bytes. Pixel data larger than ``_DEFER_BYTES`` is not
  read by pydicom at all (``defer_size``); its file offset is mapped instead. Compressed syntaxes go
  through ``ds.pixel_array`` (pydicom + pylibjpeg plugins).
* Shrinking is an integer-factor block mean (integer sums, exact) down to at most 2x the target,
  then an exact area resample (two small sparse products) of the float32 result to the exact
  size. Trailing rows and columns that do not fill a whole block (fewer than the factor, i.e.
  < 0.2 % of a radiograph) are dropped.
* A linear rescale (slope/intercept) commutes with averaging, so it is applied to the small image;
  so are the VOI LUT / window and the min-max percentiles (taken on a fixed sub-grid).
* MONOCHROME1 is inverted so that bright = dense. The min-max path inverts by negating the values,
  which is exact: a MONOCHROME1 file whose stored values are ``maxval - v`` gives the same bytes as
  the MONOCHROME2 file with values ``v`` (whenever the shrink is exact: no resize, or a power-of-two
  factor; otherwise they may differ by one level on rare rounding ties).
* Presentation LUT Shape is not applied: for DX images it is fixed by the photometric
  interpretation (INVERSE with MONOCHROME1), which is what display orientation follows here.

Decoding no more than needed (``NormalizeConfig.reduced_decode``, on by default), for images of at
least ``_REDUCE_MIN_PIXELS`` pixels (smaller ones cost a few ms in full and keep the exactness above;
for a reduced JPEG 2000 decode the MONOCHROME1 mirror holds within one level, as the integer wavelet
is not exactly odd):

* JPEG files (:func:`decode_jpeg`): libjpeg's DCT-domain scaling (Pillow's ``draft``) decodes at
  1/2, 1/4 or 1/8 size, the smallest scale whose size is still >= the target; the entropy decoding
  is not reduced (it is most of a full decode at quality 95, which bounds the gain).
* JPEG 2000 DICOMs: OpenJPEG decodes resolution level r (``reduce``), r the largest with
  ``stored >> r >= target`` on both sides (and <= the codestream's decomposition levels): the
  tier-1 decoding of the finer levels, most of the work, is skipped. The rest is the same as the
  full path (rescale, VOI LUT / window / min-max, MONOCHROME1 inversion); only unusual files (signed
  or multi-component codestreams, a precision above BitsStored, a Modality LUT Sequence, image
  offsets, an incomplete codestream, Pillow without OpenJPEG) take the full decode.
* Either way the reduced image is resampled as :func:`_shrink` resamples the full one (the same
  k x k block means, each taken as the area mean of the reduced pixels over the block, then the
  same area resample), so each output pixel weighs the same full-size pixels. A JPEG 2000 level-r
  sample is centred on full-size pixel ``j * 2**r``, not on its block's centre, and is placed there;
  a JPEG DCT-scaled pixel is its block's. The output is within a fraction of a gray level of the
  full decode + resize (mean |difference| ~0.3 of 255 on 3000-px radiographs, a few levels at most
  on sharp edges: ``benchmarks/bench_decode.py``).

Layout (one module per seam of the decoder; every name other modules use is importable from
``offclip.pipeline.images``):

* :mod:`.types`: :class:`ImageReject` and :data:`REJECT_REASONS`, :class:`NormalizeConfig`,
  :class:`DecodedImage`, the header's pixel description.
* :mod:`.reading`: a source as a buffer (the caller's bytes or a memory map), failures as rejects.
* :mod:`.dicom`: :func:`decode_dicom`: the header parse, transfer syntax, pixel description, and
  the order of operations above.
* :mod:`.checks`: decode or reject, never guess (sizes and structure from the headers).
* :mod:`.pixels`: stored pixels (direct reads, RLE, pydicom's decoders), BitsStored, LUT tables.
* :mod:`.jpeg`: :func:`decode_jpeg` (MIMIC-CXR-JPG files, DCT-domain scaling, EXIF orientation).
* :mod:`.j2k`: JPEG 2000 DICOMs at a reduced resolution level, the codestream headers.
* :mod:`.resize`: :func:`target_size`, :func:`_shrink` (block sums, area resample), the reduced
  decode's resample, the square pad.
* :mod:`.intensity`: rescale, VOI LUT, window, robust min-max, MONOCHROME1, quantisation.
* :mod:`.encode`: :func:`encode_file_bytes` (PNG via :func:`png_up_scanlines` and zlib-ng, JPEG).
"""

from __future__ import annotations

# (the underscored names re-exported here are the ones tests and benchmarks reach for; a test that
# patches a private name patches the module that uses it)
from .dicom import _DEFER_BYTES, decode_dicom  # noqa: F401
from .encode import encode_file_bytes, png_up_scanlines  # noqa: F401
from .jpeg import decode_jpeg
from .resize import _shrink, target_size  # noqa: F401
from .types import REJECT_REASONS, DecodedImage, ImageReject, NormalizeConfig

__all__ = [
    "REJECT_REASONS",
    "DecodedImage",
    "ImageReject",
    "NormalizeConfig",
    "decode_dicom",
    "decode_jpeg",
    "encode_file_bytes",
    "target_size",
]

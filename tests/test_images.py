"""pipeline/images/: DICOM decode + normalisation, on real files written by the demo writer."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from offclip.pipeline import images
from offclip.demo.dicom_writer import (
    TRANSFER_SYNTAXES,
    ImageHeader,
    build_dataset,
    encode_dicom,
    phantom_to_stored,
)
from offclip.pipeline.images import (
    REJECT_REASONS,
    ImageReject,
    NormalizeConfig,
    decode_dicom,
    encode_file_bytes,
    target_size,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/samples"
RSNA = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = SAMPLES / "Fake_MONOHR1.dcm"
LOSSLESS = sorted(s for s in TRANSFER_SYNTAXES if s != "jpeg_baseline")
ROWS, COLS = 192, 160
SMALL = NormalizeConfig(long_side=64)  # 192x160 -> 64x53: a 3x block mean, then a BOX resample


def _phantom(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    body = np.exp(-(((x - cols / 2) / (0.35 * cols)) ** 2 + ((y - rows / 2) / (0.4 * rows)) ** 2))
    ribs = 0.15 * np.sin(y / 5.0) * np.cos(x / 11.0)
    return np.clip(0.1 + 0.7 * body + ribs, 0, 1).astype(np.float32)


def _header(bits: int = 12, photometric: str = "MONOCHROME2", rows: int = ROWS, cols: int = COLS, **kw) -> ImageHeader:
    return ImageHeader(subject_id=10000001, study_id=50000001, dicom_id="11111111-22222222-33333333-44444444-55555555",
                       rows=rows, columns=cols, bits_stored=bits, photometric=photometric, **kw)


def _dicom(syntax: str = "explicit_le", bits: int | None = None, photometric: str = "MONOCHROME2",
           phantom: np.ndarray | None = None, **kw) -> bytes:
    bits = bits or (8 if syntax == "jpeg_baseline" else 12)
    phantom = _phantom() if phantom is None else phantom
    stored = phantom_to_stored(phantom, bits, photometric)
    header = _header(bits, photometric, rows=phantom.shape[0], cols=phantom.shape[1], **kw)
    return encode_dicom(header, stored, syntax)


def _save(ds: Dataset, **kw) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, **kw)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _reject(source, config: NormalizeConfig = SMALL) -> ImageReject:
    with pytest.raises(ImageReject) as info:
        decode_dicom(source, config)
    assert info.value.reason in REJECT_REASONS
    return info.value


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


# ------------------------------------------------------------------------------------------
# transfer syntaxes and photometric interpretation
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return decode_dicom(_dicom("explicit_le"), SMALL).pixels


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_every_syntax_decodes_to_the_same_pixels(tmp_path, syntax, reference):
    path = _write(tmp_path, f"{syntax}.dcm", _dicom(syntax))
    decoded = decode_dicom(path, SMALL)
    assert decoded.transfer_syntax_uid == TRANSFER_SYNTAXES[syntax]
    assert decoded.transfer_syntax == TRANSFER_SYNTAXES[syntax].name
    assert (decoded.original_rows, decoded.original_columns) == (ROWS, COLS)
    assert decoded.pixels.shape == (64, 53) and decoded.pixels.dtype == np.uint8
    assert decoded.window_source == "minmax"
    if syntax == "jpeg_baseline":  # 8-bit lossy input: close after normalisation
        assert decoded.bits_stored == 8
        assert _diff(decoded.pixels, reference).mean() <= 3
    else:
        assert decoded.bits_stored == 12
        np.testing.assert_array_equal(decoded.pixels, reference)


def test_jpeg_ls_lossless_decodes_to_the_same_pixels(reference):
    """JPEG-LS (MIMIC-style archives use it): encoded with pyjpegls, decoded by pylibjpeg-libjpeg."""
    pytest.importorskip("jpeg_ls", reason="pyjpegls (the test-only JPEG-LS encoder) is not installed")
    from pydicom.uid import JPEGLSLossless

    ds = pydicom.dcmread(io.BytesIO(_dicom("explicit_le")))
    ds.compress(JPEGLSLossless, ds.pixel_array, encoding_plugin="pyjpegls", generate_instance_uid=False)
    decoded = decode_dicom(_save(ds), SMALL)
    assert decoded.transfer_syntax_uid == JPEGLSLossless
    np.testing.assert_array_equal(decoded.pixels, reference)


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("long_side", [256, 96])  # no resize; an exact 2x block mean
def test_monochrome1_is_inverted_exactly(syntax, long_side):
    config = NormalizeConfig(long_side=long_side)
    mono2 = decode_dicom(_dicom(syntax, photometric="MONOCHROME2"), config)
    mono1 = decode_dicom(_dicom(syntax, photometric="MONOCHROME1"), config)
    assert (mono1.photometric, mono2.photometric) == ("MONOCHROME1", "MONOCHROME2")
    np.testing.assert_array_equal(mono1.pixels, mono2.pixels)


def test_monochrome1_with_fractional_resize_is_within_one_level():
    mono2 = decode_dicom(_dicom(photometric="MONOCHROME2"), SMALL).pixels
    mono1 = decode_dicom(_dicom(photometric="MONOCHROME1"), SMALL).pixels
    diff = _diff(mono1, mono2)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_monochrome1_with_window_is_inverted():
    mono2 = decode_dicom(_dicom(photometric="MONOCHROME2", window=True), SMALL)
    mono1 = decode_dicom(_dicom(photometric="MONOCHROME1", window=True), SMALL)
    assert mono1.window_source == mono2.window_source == "window"
    assert _diff(mono1.pixels, mono2.pixels).max() <= 1


@pytest.mark.parametrize("bits", [10, 12, 14, 15, 16])
def test_bits_stored(bits, reference):
    decoded = decode_dicom(_dicom("explicit_le", bits=bits), SMALL)
    assert decoded.bits_stored == bits
    assert _diff(decoded.pixels, reference).max() <= 1


def test_bits_stored_15_lossless_compressed(reference):
    for syntax in ("rle", "j2k_lossless"):
        assert _diff(decode_dicom(_dicom(syntax, bits=15), SMALL).pixels, reference).max() <= 1


def test_bits_above_bits_stored_are_masked(reference):
    """Garbage (e.g. old overlay bits) above BitsStored is ignored, as pydicom does."""
    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    stored = ds.pixel_array.copy()
    stored[::7, ::3] |= 0x5000
    ds.PixelData = stored.astype("<u2").tobytes()
    np.testing.assert_array_equal(decode_dicom(_save(ds), SMALL).pixels, reference)


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,cols,expected", [
    (300, 200, (128, 85)), (200, 300, (85, 128)), (128, 128, (128, 128)), (96, 80, (96, 80)),
    (3056, 2544, (128, 107)), (1000, 3, (128, 1)),
])
def test_target_size(rows, cols, expected):
    assert target_size(rows, cols, 128) == expected


@pytest.mark.parametrize("rows,cols", [(300, 200), (200, 300), (251, 251), (96, 80)])
def test_long_side_and_aspect(rows, cols):
    data = _dicom(phantom=_phantom(rows, cols))
    pixels = decode_dicom(data, NormalizeConfig(long_side=128)).pixels
    assert pixels.shape == target_size(rows, cols, 128)
    assert max(pixels.shape) == min(128, max(rows, cols))  # never upscaled
    assert abs(pixels.shape[0] / pixels.shape[1] - rows / cols) < 0.02


def test_pad_square():
    plain = decode_dicom(_dicom(), NormalizeConfig(long_side=96)).pixels  # 96 x 80
    padded = decode_dicom(_dicom(), NormalizeConfig(long_side=96, pad_square=True)).pixels
    assert plain.shape == (96, 80) and padded.shape == (96, 96)
    np.testing.assert_array_equal(padded[:, 8:88], plain)
    assert not padded[:, :8].any() and not padded[:, 88:].any()
    small = decode_dicom(_dicom(), NormalizeConfig(long_side=512, pad_square=True)).pixels
    assert small.shape == (512, 512) and small.sum() == decode_dicom(_dicom(), NormalizeConfig()).pixels.sum()


def test_16_bit_output(reference):
    decoded = decode_dicom(_dicom(), NormalizeConfig(long_side=64, out_bits=16))
    pixels = decoded.pixels
    assert pixels.dtype == np.uint16 and pixels.shape == (64, 53)
    assert pixels.max() == 65535 and pixels.min() == 0
    assert _diff((pixels.astype(np.float64) / 257).round().astype(np.uint8), reference).max() <= 1
    assert len(np.unique(pixels)) > 2 * len(np.unique(reference))  # finer than 8-bit


# ------------------------------------------------------------------------------------------
# intensities: window, VOI LUT, rescale, signed pixels
# ------------------------------------------------------------------------------------------
def test_window_changes_output(reference):
    windowed = decode_dicom(_dicom(window=True), SMALL)
    assert windowed.window_source == "window"
    assert _diff(windowed.pixels, reference).mean() > 1


def _ramp_file(center: float, width: float, function: str | None = None) -> bytes:
    """A 64x64 file whose stored values are 0..4095 (one per pixel), with a window."""
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    extra = {"WindowCenter": f"{center}", "WindowWidth": f"{width}"}
    if function:
        extra["VOILUTFunction"] = function
    return encode_dicom(_header(rows=64, cols=64, extra=extra), stored, "explicit_le")


def test_linear_window_formula():
    """PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> 0, x > c - 0.5 + (w-1)/2 -> max."""
    pixels = decode_dicom(_ramp_file(2048, 1025), NormalizeConfig(long_side=64)).pixels.ravel()
    x = np.arange(4096)
    expected = np.clip(((x - 2047.5) / 1024 + 0.5), 0, 1) * 255 + 0.5
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))
    assert pixels[:1536].max() == 0 and pixels[2560:].min() == 255 and pixels[2048] == 128


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions(function):
    linear = decode_dicom(_ramp_file(2048, 1024), NormalizeConfig(long_side=64)).pixels.ravel()
    other = decode_dicom(_ramp_file(2048, 1024, function), NormalizeConfig(long_side=64)).pixels.ravel()
    x = np.arange(4096, dtype=np.float64)
    if function == "LINEAR_EXACT":
        expected = np.clip((x - 2048) / 1024 + 0.5, 0, 1)
    else:
        expected = 1 / (1 + np.exp(-4 * (x - 2048) / 1024))
    assert _diff(other, (expected * 255 + 0.5).astype(np.uint8)).max() <= 1
    assert (other != linear).any()


def test_multi_valued_window_uses_the_first():
    first = decode_dicom(_ramp_file(1000, 500), NormalizeConfig(long_side=64)).pixels
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    header = _header(rows=64, cols=64, extra={"WindowCenter": ["1000", "3000"], "WindowWidth": ["500", "100"]})
    multi = decode_dicom(encode_dicom(header, stored, "explicit_le"), NormalizeConfig(long_side=64))
    assert multi.window_source == "window"
    np.testing.assert_array_equal(multi.pixels, first)


def _lut_item(values: np.ndarray, vr: str = "US") -> Dataset:
    """A LUT Sequence item; LUTData as a list of US values or as OW bytes."""
    item = Dataset()
    item.add_new(0x00283002, "US", [len(values), 0, 16])  # LUTDescriptor
    data = [int(v) for v in values] if vr == "US" else np.asarray(values, "<u2").tobytes()
    item.add_new(0x00283006, vr, data)  # LUTData
    return item


def test_voi_lut_sequence():
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    table = np.rint(4095 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)
    ds = build_dataset(_header(rows=64, cols=64, window=True), stored, "explicit_le")
    ds.VOILUTSequence = Sequence([_lut_item(table, vr="OW")])
    decoded = decode_dicom(_save(ds), NormalizeConfig(long_side=64))
    assert decoded.window_source == "voi_lut"  # the LUT wins over the window
    expected = (table.astype(np.float64) / 4095 * 255 + 0.5).astype(np.uint8)
    assert _diff(decoded.pixels.ravel(), expected).max() <= 1


def test_modality_lut_sequence_and_rescale(reference):
    stored = phantom_to_stored(_phantom(), 12, "MONOCHROME2")
    ds = build_dataset(_header(), stored, "explicit_le")
    ds.ModalityLUTSequence = Sequence([_lut_item(4095 - np.arange(4096))])  # an inverting LUT
    inverted = decode_dicom(_save(ds), SMALL).pixels
    assert _diff(inverted, 255 - reference).max() <= 1

    ds = build_dataset(_header(rescale=True), stored, "explicit_le")
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1024"
    assert _diff(decode_dicom(_save(ds), SMALL).pixels, reference).max() <= 1


def _signed_file(values: np.ndarray, raw: np.ndarray | None = None, bits: int = 12, **elements) -> bytes:
    """A hand-written explicit VR LE file with PixelRepresentation 1."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4.5"
    ds.Modality = "CR"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 1
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = (values.astype("<i2") if raw is None else raw.astype("<u2")).tobytes()
    ds["PixelData"].VR = "OW"
    return _save(ds)


def test_signed_pixels(reference):
    unsigned = phantom_to_stored(_phantom(), 12, "MONOCHROME2").astype(np.int32)
    signed = (unsigned - 2048).astype(np.int16)
    assert signed.min() < 0 < signed.max()
    decoded = decode_dicom(_signed_file(signed), SMALL)
    np.testing.assert_array_equal(decoded.pixels, reference)
    # the same values written as bare 12-bit two's complement (high 4 bits zero): sign-extended
    bare = signed.view(np.uint16) & 0x0FFF
    np.testing.assert_array_equal(decode_dicom(_signed_file(signed, raw=bare), SMALL).pixels, reference)
    # a window in signed units
    windowed = decode_dicom(_signed_file(signed, WindowCenter="0", WindowWidth="2000"), SMALL)
    assert windowed.window_source == "window" and _diff(windowed.pixels, reference).mean() > 1


# ------------------------------------------------------------------------------------------
# direct buffer reads == pydicom's pixel_array
# ------------------------------------------------------------------------------------------
def _big_endian_file() -> bytes:
    stored = phantom_to_stored(_phantom(), 12, "MONOCHROME2")
    ds = build_dataset(_header(), stored, "explicit_le")
    ds.PixelData = stored.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return _save(ds, implicit_vr=False, little_endian=False)


def _large_file() -> bytes:  # > _DEFER_BYTES of pixel data: mapped, never read by pydicom
    data = _dicom(phantom=_phantom(1100, 900))
    assert 1100 * 900 * 2 > images._DEFER_BYTES
    return data


@pytest.mark.parametrize("make", [
    lambda: _dicom("explicit_le"), lambda: _dicom("implicit_le"), lambda: _dicom("deflated"),
    lambda: _dicom("explicit_le", bits=16, photometric="MONOCHROME1", window=True),
    lambda: _signed_file((phantom_to_stored(_phantom(), 12, "MONOCHROME2") - 2048).astype(np.int16)),
    _big_endian_file, _large_file,
], ids=["explicit", "implicit", "deflated", "16bit-mono1-window", "signed", "big-endian", "large"])
def test_direct_buffer_matches_pixel_array(tmp_path, monkeypatch, make):
    path = _write(tmp_path, "x.dcm", make())
    direct = decode_dicom(path, SMALL)
    assert np.array_equal(decode_dicom(path.read_bytes(), SMALL).pixels, direct.pixels)  # bytes == path
    monkeypatch.setattr(images.dicom, "_DIRECT_SYNTAXES", frozenset())
    monkeypatch.setattr(images.pixels, "_DIRECT_SYNTAXES", frozenset())
    via_pydicom = decode_dicom(path, SMALL)
    np.testing.assert_array_equal(via_pydicom.pixels, direct.pixels)
    assert via_pydicom.window_source == direct.window_source


def test_deterministic(tmp_path):
    path = _write(tmp_path, "x.dcm", _dicom("j2k_lossless"))
    first = encode_file_bytes(decode_dicom(path, SMALL).pixels, SMALL)
    assert first == encode_file_bytes(decode_dicom(path, SMALL).pixels, SMALL)


# ------------------------------------------------------------------------------------------
# rejects
# ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("syntax", [*sorted(TRANSFER_SYNTAXES), "large"])
def test_truncated_at_60_percent(tmp_path, syntax):
    data = _large_file() if syntax == "large" else _dicom(syntax)
    path = _write(tmp_path, "cut.dcm", data[: int(len(data) * 0.6)])
    assert _reject(path).reason == "truncated"
    assert _reject(path.read_bytes()).reason == "truncated"


def test_empty_file_is_truncated(tmp_path):
    assert _reject(_write(tmp_path, "empty.dcm", b"")).reason == "truncated"


def test_not_dicom(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="PNG")
    assert _reject(_write(tmp_path, "image.dcm", buf.getvalue())).reason == "not_dicom"
    assert _reject(b"Findings: no acute cardiopulmonary process.\n" * 20).reason == "not_dicom"


def test_bare_dataset_without_preamble_is_read(reference):
    """No DICM preamble but a parseable image dataset (old ACR-NEMA style): decoded, not rejected."""
    ds = pydicom.dcmread(io.BytesIO(_dicom("implicit_le")))
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(buf, ds)  # implicit VR little endian, no preamble / file meta
    decoded = decode_dicom(buf.getvalue(), SMALL)
    assert decoded.transfer_syntax_uid == "1.2.840.10008.1.2"
    np.testing.assert_array_equal(decoded.pixels, reference)


def test_no_pixel_data():
    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    del ds.PixelData
    assert _reject(_save(ds)).reason == "no_pixel_data"


def test_a_file_cut_inside_its_header_is_truncated_not_without_pixel_data():
    """A file that ends inside its header (an element's value cut, or before the image's Rows and
    Columns) is ``truncated``; a whole header without Pixel Data stays ``no_pixel_data``."""
    data = _dicom()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    rows_at = data.find(b"\x28\x00\x10\x00")  # (0028,0010) Rows, explicit VR little endian
    assert 300 < rows_at < len(data) - 1000
    for cut in range(300, rows_at, 37):  # inside elements and on their boundaries, before Rows
        reject = _reject(data[:cut])
        assert reject.reason == "truncated", (cut, reject.message)
    pixel_at = data.find(b"\xe0\x7f\x10\x00")
    whole_header = data[:pixel_at]  # every element whole, Rows and Columns there, no Pixel Data
    assert _reject(whole_header).reason == "no_pixel_data"
    assert "Rows" in ds


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    reject = _reject(_write(tmp_path, "mpeg2.dcm", _save(ds)))
    assert reject.reason == "unsupported_transfer_syntax"
    assert "MPEG2 Main Profile / Main Level" in reject.message


def test_unavailable_decoder(monkeypatch):
    class Missing:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg>=2.0"]

    monkeypatch.setattr(images.dicom, "get_decoder", lambda uid: Missing())
    reject = _reject(_dicom("j2k_lossless"))
    assert reject.reason == "unsupported_transfer_syntax"
    assert "JPEG 2000 Image Compression (Lossless Only)" in reject.message and "openjpeg" in reject.message


@pytest.mark.parametrize("change", [
    {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"},
    {"PhotometricInterpretation": "PALETTE COLOR"},
    {"NumberOfFrames": 2},
    {"BitsAllocated": 32, "BitsStored": 32},
])
def test_unsupported_pixels(change):
    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    assert _reject(_save(ds)).reason == "unsupported_pixels"


def test_decode_error_on_corrupt_codestream():
    data = bytearray(_dicom("j2k_lossless"))
    start = data.find(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ markers
    data[start: start + 16] = b"\x13" * 16
    reject = _reject(bytes(data))
    assert reject.reason == "decode_error" and "JPEG 2000" in reject.message


def test_malformed_header_is_a_decode_error():
    ds = pydicom.dcmread(io.BytesIO(_dicom()))
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # a VOI LUT item without LUTData
    ds.VOILUTSequence = Sequence([item])
    assert _reject(_save(ds)).reason == "decode_error"


def test_reject_pickles():
    reject = pickle.loads(pickle.dumps(ImageReject("truncated", "cut")))
    assert (reject.reason, reject.message) == ("truncated", "cut")


# ------------------------------------------------------------------------------------------
# encode_file_bytes and config
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_png_round_trip(bits, level):
    config = NormalizeConfig(long_side=64, out_bits=bits, png_compress_level=level)
    pixels = decode_dicom(_dicom(), config).pixels
    data = encode_file_bytes(pixels, config)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (53, 64)
        np.testing.assert_array_equal(np.asarray(im).astype(pixels.dtype), pixels)


def test_jpeg_output(reference):
    config = NormalizeConfig(long_side=64, fmt="jpg", jpeg_quality=90)
    with Image.open(io.BytesIO(encode_file_bytes(reference, config))) as im:
        assert im.format == "JPEG" and im.mode == "L"
        assert _diff(np.asarray(im), reference).mean() < 2


@pytest.mark.parametrize("kw", [{"out_bits": 12}, {"fmt": "tiff"}, {"fmt": "jpg", "out_bits": 16},
                                {"long_side": 0}, {"png_compress_level": 10}])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        NormalizeConfig(**kw)


# ------------------------------------------------------------------------------------------
# the real sample DICOMs
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples() -> tuple[Path, Path]:
    if not (RSNA.is_file() and FAKE_MONO1.is_file()):
        pytest.skip(f"sample DICOMs not present under {SAMPLES}")
    return RSNA, FAKE_MONO1


def test_real_samples(samples):
    mono2, mono1 = (decode_dicom(path) for path in samples)
    assert mono2.transfer_syntax == mono1.transfer_syntax == "JPEG Baseline (Process 1)"
    assert (mono2.photometric, mono1.photometric) == ("MONOCHROME2", "MONOCHROME1")
    assert mono2.pixels.shape == mono1.pixels.shape == (512, 512)
    assert (mono2.original_rows, mono2.original_columns, mono2.bits_stored) == (1024, 1024, 8)
    assert mono2.pixels.std() > 30  # a real image, full range
    # the same stored pixels flagged MONOCHROME1 come out as the inverse image: the outputs sum to
    # 255, give or take one level where 255 * t lands exactly on .5 (rounding half up both ways)
    total = mono2.pixels.astype(np.int64) + mono1.pixels
    assert np.abs(total - 255).max() <= 1 and (total == 255).mean() > 0.95


# ------------------------------------------------------------------------------------------
# decode or reject, never guess (issue 26 point 2): on the real RSNA sample's pixels
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsna_pixels(samples) -> np.ndarray:
    """The real 1024x1024 8-bit radiograph of the RSNA sample (its JPEG decoded once)."""
    return pydicom.dcmread(samples[0]).pixel_array


def _rsna_dataset(pixels: np.ndarray, syntax=ExplicitVRLittleEndian) -> Dataset:
    """The RSNA sample's header with ``pixels`` as its image, native (or compressed to ``syntax``)."""
    ds = pydicom.dcmread(RSNA)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB"
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, np.ascontiguousarray(pixels), encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return ds


def _garbage_in_the_middle(data: bytes, start: int, size: int = 2048) -> bytes:
    """``size`` random bytes (seeded) written over the middle of ``data[start:]``."""
    middle = start + (len(data) - start) // 2
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    return data[:middle] + noise + data[middle + size:]


@pytest.mark.parametrize("config", [SMALL, NormalizeConfig(long_side=64, reduced_decode=False)])
def test_pixel_data_larger_than_the_header_says_is_rejected(rsna_pixels, config):
    """Rows halved in the header: the pixel data holds twice Rows x Columns. It used to become
    the image's top half; now it is a reject naming both sizes, before any reshape."""
    ds = _rsna_dataset(rsna_pixels)
    ds.Rows = 512
    reject = _reject(_save(ds), config)
    assert reject.reason == "pixel_size_mismatch"
    assert "1048576 bytes" in reject.message and "512 rows x 1024 columns" in reject.message
    assert "= 524288 bytes" in reject.message
    ds.Rows = 2048  # smaller than the header says, in a complete file: not "truncated"
    assert _reject(_save(ds), config).reason == "pixel_size_mismatch"


def test_odd_length_pixel_data_with_its_pad_byte_decodes(rsna_pixels):
    ds = _rsna_dataset(np.ascontiguousarray(rsna_pixels[:511, :511]))  # 261121 bytes + 1 pad byte
    assert decode_dicom(_save(ds), SMALL).original_rows == 511


@pytest.mark.parametrize("syntax", [pydicom.uid.JPEG2000Lossless, pydicom.uid.RLELossless])
def test_codestream_size_against_the_header(rsna_pixels, syntax):
    """A compressed image whose codestream (J2K SIZ) or decoded segments (RLE) are not Rows x
    Columns: a reject, not a reshape error (J2K) or a silent top half (RLE)."""
    ds = _rsna_dataset(rsna_pixels, syntax)
    assert decode_dicom(_save(ds), SMALL).original_rows == 1024  # the file itself is fine
    ds.Rows = 512
    reject = _reject(_save(ds))
    assert reject.reason == "pixel_size_mismatch", reject
    assert "1024" in reject.message and "512" in reject.message


def test_rows_and_columns_swapped_are_caught_by_the_metadata(rsna_pixels):
    """Rows and Columns swapped keep the length right (the pixels come out sheared): only other
    evidence tells, here the metadata CSV's Rows/Columns (``expect_size``)."""
    pixels = np.ascontiguousarray(rsna_pixels[:, :800])
    ds = _rsna_dataset(pixels)
    assert decode_dicom(_save(ds), SMALL, expect_size=(1024, 800)).original_columns == 800
    ds.Rows, ds.Columns = 800, 1024
    reject = _reject_with(_save(ds), expect_size=(1024, 800))
    assert reject.reason == "metadata_mismatch"
    assert "800x1024" in reject.message and "1024x800" in reject.message and "swapped" in reject.message


def _reject_with(source, config: NormalizeConfig = SMALL, **kw) -> ImageReject:
    with pytest.raises(ImageReject) as info:
        decode_dicom(source, config, **kw)
    return info.value


@pytest.mark.parametrize("config", [NormalizeConfig(long_side=256), NormalizeConfig(long_side=256, reduced_decode=False)])
def test_j2k_with_garbage_in_the_middle_is_corrupt_data(rsna_pixels, config):
    """2 KB of garbage in the middle of a real J2K codestream. The installed decoders say nothing
    (pylibjpeg-openjpeg installs its log handlers before it creates the codec, Pillow only an
    error handler; OpenJPEG itself emits no warning for it either): they decode it with pixels
    changed. The tile-part data now may not hold a marker code, and this garbage does."""
    from openjpeg.utils import decode as openjpeg_decode

    data = _save(_rsna_dataset(rsna_pixels, pydicom.uid.JPEG2000Lossless))
    bad = _garbage_in_the_middle(data, data.find(b"\xff\x4f\xff\x51"))
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(io.BytesIO(bad)).PixelData, number_of_frames=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the decoder does not warn ...
        silently = openjpeg_decode(frame)
    assert (silently != rsna_pixels).mean() > 0.01  # ... and yet the pixels are wrong
    reject = _reject(bad, config)
    assert reject.reason == "corrupt_data" and "inside the data of tile 0" in reject.message


def test_jpeg_with_garbage_in_the_middle_is_corrupt_data(samples, rsna_pixels):
    """The real RSNA file (JPEG baseline) and the same JPEG as a MIMIC-CXR-JPG file, 2 KB of
    garbage in the middle of the entropy-coded data: libjpeg resynchronises and decodes garbage
    (no Python-visible warning); a stray marker code in the scan data is now a reject."""
    data = samples[0].read_bytes()
    bad = _garbage_in_the_middle(data, data.find(b"\xff\xda"))
    assert (pydicom.dcmread(io.BytesIO(bad)).pixel_array != rsna_pixels).mean() > 0.01
    assert _reject(bad).reason == "corrupt_data"
    jpeg = next(pydicom.encaps.generate_frames(pydicom.dcmread(samples[0]).PixelData, number_of_frames=1))
    assert images.decode_jpeg(jpeg, SMALL).original_rows == 1024
    with pytest.raises(ImageReject) as info:
        images.decode_jpeg(_garbage_in_the_middle(jpeg, jpeg.find(b"\xff\xda")), SMALL)
    assert info.value.reason == "corrupt_data" and "inside the entropy-coded data" in info.value.message


def test_jpeg_file_size_against_the_metadata(samples):
    jpeg = next(pydicom.encaps.generate_frames(pydicom.dcmread(samples[0]).PixelData, number_of_frames=1))
    assert images.decode_jpeg(jpeg, SMALL, expect_size=(1024, 1024)).original_rows == 1024
    with pytest.raises(ImageReject) as info:
        images.decode_jpeg(jpeg, SMALL, expect_size=(1024, 800))
    assert info.value.reason == "metadata_mismatch" and "1024x800" in info.value.message


def test_j2k_without_transfer_syntax_is_unknown_syntax_not_truncated(rsna_pixels):
    """A JPEG 2000 DICOM whose file meta lost its TransferSyntaxUID: the compression is not told,
    so it is not guessed (it used to be read as native pixel data and called ``truncated``)."""
    ds = _rsna_dataset(rsna_pixels, pydicom.uid.JPEG2000Lossless)
    del ds.file_meta.TransferSyntaxUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    reject = _reject(buf.getvalue())
    assert reject.reason == "unknown_transfer_syntax"
    assert "JPEG 2000 codestream" in reject.message

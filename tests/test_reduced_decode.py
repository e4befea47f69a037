"""pipeline/images/: decoding no more than needed (JPEG DCT scaling, JPEG 2000 resolution levels).

On real files: JPEGs written by Pillow from a real chest radiograph (the RSNA sample under
../shared/data/samples; those tests skip without it) and JPEG 2000 DICOMs written by the demo world's
writer (phantoms) or by pydicom from the real sample's pixels. Each reduced decode is checked
against the full decode + the same resize of the same file (``reduced_decode=False``).
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000, JPEG2000Lossless

from offclip.pipeline import images
from offclip.demo import phantom
from offclip.demo.dicom_writer import ImageHeader, build_dataset, encode_dicom, phantom_to_stored
from offclip.pipeline.images import ImageReject, NormalizeConfig, decode_dicom, decode_jpeg, target_size

RSNA = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = "Fake_MONOHR1.dcm"
#: phantom DICOM size: > _REDUCE_MIN_PIXELS; 1021 columns (= 1 mod 4) is where Pillow's own reduced
#: size (rounded) and OpenJPEG's (the ceiling) differ at level 2
ROWS, COLS = 1040, 1021
GOAL_MEAN_DIFF = 2.0  # gray levels of 255


def _full(config: NormalizeConfig) -> NormalizeConfig:
    return replace(config, reduced_decode=False)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


def _jpeg(pixels: np.ndarray, quality: int = 95, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()


def _reject(fn, source, config: NormalizeConfig = NormalizeConfig(long_side=256)) -> ImageReject:
    with pytest.raises(ImageReject) as info:
        fn(source, config)
    assert info.value.reason in images.REJECT_REASONS
    return info.value


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_pixels(shared_data) -> np.ndarray:
    """A real 1024x1024 8-bit chest radiograph (the RSNA sample DICOM's pixels)."""
    path = shared_data / "samples" / RSNA
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return pydicom.dcmread(path).pixel_array


@pytest.fixture(scope="module")
def real_jpeg(real_pixels) -> bytes:
    return _jpeg(real_pixels)


@pytest.fixture(scope="module")
def tall_jpeg(real_pixels) -> bytes:
    """The real radiograph upscaled to 2000 rows x 1600 columns, quality 95."""
    return _jpeg(np.asarray(Image.fromarray(real_pixels).resize((1600, 2000), Image.BICUBIC)))


@pytest.fixture(scope="module")
def phantom_image() -> np.ndarray:
    rng = np.random.default_rng(3)
    pixels, _ = phantom.render_frontal(phantom.sample_anatomy(rng), ROWS, COLS, [], rng, view="PA")
    return np.asarray(pixels, dtype=np.float32)


def _header(photometric: str = "MONOCHROME2", bits: int = 12, **kw) -> ImageHeader:
    return ImageHeader(subject_id=10000001, study_id=50000001, dicom_id="reduced-decode", rows=ROWS,
                       columns=COLS, bits_stored=bits, photometric=photometric, **kw)


@pytest.fixture(scope="module")
def j2k(phantom_image) -> dict[str, bytes]:
    """12-bit JPEG 2000 lossless phantoms from the demo world's writer."""
    def write(photometric: str, **kw) -> bytes:
        stored = phantom_to_stored(phantom_image, 12, photometric)
        return encode_dicom(_header(photometric, **kw), stored, "j2k_lossless")

    return {"mono2": write("MONOCHROME2"), "mono1": write("MONOCHROME1"), "window": write("MONOCHROME2", window=True)}


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pillow_j2k_dicom(stored8: np.ndarray, resolutions: int) -> bytes:
    """An 8-bit JPEG 2000 lossless DICOM whose codestream Pillow wrote with ``resolutions``
    resolutions (``resolutions - 1`` decomposition levels)."""
    ds = build_dataset(_header(bits=8), stored8, "jpeg_baseline")
    buf = io.BytesIO()
    Image.fromarray(stored8).save(buf, format="JPEG2000", no_jp2=True, num_resolutions=resolutions,
                                  irreversible=False)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return _save(ds)


# ------------------------------------------------------------------------------------------
# JPEG files
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("long_side,scale", [(512, 2), (224, 4), (100, 8)])
def test_jpeg_reduced_matches_the_full_decode(real_jpeg, long_side, scale):
    config = NormalizeConfig(long_side=long_side)
    reduced, full = decode_jpeg(real_jpeg, config), decode_jpeg(real_jpeg, _full(config))
    assert (reduced.decode_scale, full.decode_scale) == (scale, 1)
    assert reduced.pixels.shape == full.pixels.shape == target_size(1024, 1024, long_side)
    assert reduced.pixels.dtype == full.pixels.dtype == np.uint8
    assert full.pixels.std() > 30  # a real radiograph, full range
    assert _diff(reduced.pixels, full.pixels).mean() <= GOAL_MEAN_DIFF


@pytest.mark.parametrize("long_side,scale", [(1001, 1), (1000, 2), (512, 2), (501, 2), (500, 4), (251, 4),
                                             (250, 8), (64, 8)])
def test_draft_scale_is_the_smallest_still_at_least_the_target(tall_jpeg, long_side, scale):
    """2000 x 1600 to 512: 1/4 gives 500 rows < 512, so 1/2 (1000 rows) it is."""
    decoded = decode_jpeg(tall_jpeg, NormalizeConfig(long_side=long_side))
    assert decoded.decode_scale == scale
    rows, columns = target_size(2000, 1600, long_side)
    assert decoded.pixels.shape == (rows, columns)
    assert 2000 // scale >= rows and 1600 // scale >= columns  # at least the target ...
    assert scale == 8 or 2000 // (2 * scale) < rows or 1600 // (2 * scale) < columns  # ... the smallest
    assert (decoded.original_rows, decoded.original_columns) == (2000, 1600)


def test_jpeg_output_conventions(tall_jpeg):
    config = NormalizeConfig(long_side=512)
    plain = decode_jpeg(tall_jpeg, config)
    assert plain.pixels.shape == (512, 410) and plain.pixels.dtype == np.uint8
    assert (plain.transfer_syntax, plain.photometric, plain.bits_stored) == ("JPEG (MIMIC-CXR-JPG)", "MONOCHROME2", 8)
    assert plain.window_source == "identity"
    padded = decode_jpeg(tall_jpeg, replace(config, pad_square=True)).pixels  # as decode_dicom pads
    assert padded.shape == (512, 512)
    np.testing.assert_array_equal(padded[:, 51:461], plain.pixels)
    assert not padded[:, :51].any() and not padded[:, 461:].any()
    deep = decode_jpeg(tall_jpeg, replace(config, out_bits=16)).pixels
    assert deep.dtype == np.uint16 and deep.shape == (512, 410)
    assert _diff((deep / 257).round().astype(np.uint8), plain.pixels).max() <= 1


def test_jpeg_gray_levels_are_kept(real_pixels):
    """No resize: the output is the JPEG's own decoded pixels (no windowing, no stretch)."""
    data = _jpeg(real_pixels[:300, :200])
    decoded = decode_jpeg(data, NormalizeConfig(long_side=512))
    np.testing.assert_array_equal(decoded.pixels, np.asarray(Image.open(io.BytesIO(data))))
    assert decoded.decode_scale == 1 and (decoded.original_rows, decoded.original_columns) == (300, 200)


def test_small_jpeg_and_the_switch_decode_in_full(real_pixels, real_jpeg):
    small = _jpeg(real_pixels[::2, ::2])  # 512 x 512: under _REDUCE_MIN_PIXELS
    assert decode_jpeg(small, NormalizeConfig(long_side=64)).decode_scale == 1
    assert decode_jpeg(real_jpeg, NormalizeConfig(long_side=64, reduced_decode=False)).decode_scale == 1


def test_rgb_jpeg_becomes_gray(real_pixels, real_jpeg):
    rgb = _jpeg(np.repeat(real_pixels[:, :, None], 3, axis=2))
    config = NormalizeConfig(long_side=224)
    decoded = decode_jpeg(rgb, config)
    assert decoded.pixels.ndim == 2 and decoded.decode_scale == 4
    assert _diff(decoded.pixels, decode_jpeg(real_jpeg, config).pixels).mean() <= 1


def test_exif_orientation_is_applied(real_pixels):
    crop = np.ascontiguousarray(real_pixels[:, :800])  # 1024 x 800: not square
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    config = NormalizeConfig(long_side=256)
    upright = decode_jpeg(_jpeg(crop), config)
    turned = decode_jpeg(_jpeg(crop, exif=exif.tobytes()), config)
    assert upright.pixels.shape == (256, 200) and turned.pixels.shape == (200, 256)
    np.testing.assert_array_equal(turned.pixels, np.rot90(upright.pixels, -1))
    assert (turned.original_rows, turned.original_columns) == (1024, 800)  # as stored


def test_jpeg_path_and_bytes_agree_and_repeat(tmp_path, real_jpeg):
    path = tmp_path / "x.jpg"
    path.write_bytes(real_jpeg)
    config = NormalizeConfig(long_side=224)
    first = decode_jpeg(path, config).pixels
    np.testing.assert_array_equal(first, decode_jpeg(real_jpeg, config).pixels)
    np.testing.assert_array_equal(first, decode_jpeg(str(path), config).pixels)
    with pytest.raises(OSError):
        decode_jpeg(tmp_path / "missing.jpg", config)


def _corrupt_huffman_table(data: bytes) -> bytes:
    bad = bytearray(data)
    dht = data.find(b"\xff\xc4")
    bad[dht + 5: dht + 21] = b"\xff" * 16  # code counts that no Huffman table can have
    return bytes(bad)


@pytest.mark.parametrize("make,reason", [
    (lambda jpg: b"", "truncated"),
    (lambda jpg: jpg[: int(len(jpg) * 0.6)], "truncated"),
    (lambda jpg: jpg[:-2], "truncated"),  # no end-of-image marker
    (lambda jpg: jpg[: jpg.find(b"\xff\xda")], "truncated"),  # cut before the image data
    (lambda jpg: jpg[:3], "truncated"),
    (lambda jpg: _png(), "not_jpeg"),
    (lambda jpg: b"Findings: no acute cardiopulmonary process.\n" * 20, "not_jpeg"),
    (lambda jpg: _small_dicom(), "not_jpeg"),
    (lambda jpg: _cmyk(), "unsupported_pixels"),
    (_corrupt_huffman_table, "decode_error"),
], ids=["empty", "cut-60%", "no-EOI", "cut-header", "SOI-only", "png", "text", "dicom", "cmyk", "bad-huffman"])
def test_bad_jpegs_are_rejected_with_a_reason(tmp_path, real_jpeg, make, reason):
    data = make(real_jpeg)
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    assert _reject(decode_jpeg, path).reason == reason
    reject = _reject(decode_jpeg, data)
    assert reject.reason == reason and reject.message
    assert pickle.loads(pickle.dumps(reject)).reason == reason


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _cmyk() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def _small_dicom() -> bytes:
    stored = np.zeros((16, 16), np.uint16)
    header = ImageHeader(subject_id=1, study_id=2, dicom_id="d", rows=16, columns=16, bits_stored=12,
                         photometric="MONOCHROME2")
    return encode_dicom(header, stored, "explicit_le")


def test_reject_reasons_are_in_the_ingest_contract():
    from offclip.data_contracts.ingest import REJECT_REASONS

    assert set(images.REJECT_REASONS) <= set(REJECT_REASONS)


# ------------------------------------------------------------------------------------------
# JPEG 2000 DICOMs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("long_side,scale", [(512, 2), (224, 4), (128, 8)])
def test_j2k_reduced_matches_the_full_decode(j2k, long_side, scale):
    config = NormalizeConfig(long_side=long_side)
    reduced, full = decode_dicom(j2k["mono2"], config), decode_dicom(j2k["mono2"], _full(config))
    assert (reduced.decode_scale, full.decode_scale) == (scale, 1)
    assert reduced.pixels.shape == full.pixels.shape == target_size(ROWS, COLS, long_side)
    assert reduced.pixels.dtype == full.pixels.dtype == np.uint8
    assert reduced.window_source == full.window_source == "minmax"
    assert (reduced.transfer_syntax_uid, reduced.bits_stored, reduced.original_rows, reduced.original_columns) == (
        JPEG2000Lossless, 12, ROWS, COLS)
    assert _diff(reduced.pixels, full.pixels).mean() <= GOAL_MEAN_DIFF


def test_j2k_reduced_keeps_monochrome1_inversion(j2k):
    """MONOCHROME1 stores maxval - v: the same picture as the MONOCHROME2 file, once inverted."""
    config = NormalizeConfig(long_side=224)
    mono1, mono2 = decode_dicom(j2k["mono1"], config), decode_dicom(j2k["mono2"], config)
    assert (mono1.photometric, mono1.decode_scale, mono2.decode_scale) == ("MONOCHROME1", 4, 4)
    assert _diff(mono1.pixels, mono2.pixels).max() <= 1  # the integer wavelet is not exactly odd
    assert _diff(mono1.pixels, decode_dicom(j2k["mono1"], _full(config)).pixels).mean() <= GOAL_MEAN_DIFF


def test_j2k_reduced_window_and_rescale(j2k):
    config = NormalizeConfig(long_side=224)
    ds = pydicom.dcmread(io.BytesIO(j2k["window"]))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"  # the same window in rescaled units
    ds.WindowCenter, ds.WindowWidth = f"{2 * center - 1000:.1f}", f"{2 * width:.1f}"
    rescaled = _save(ds)
    plain = decode_dicom(j2k["window"], config)
    for data in (j2k["window"], rescaled):
        reduced, full = decode_dicom(data, config), decode_dicom(data, _full(config))
        assert reduced.window_source == full.window_source == "window" and reduced.decode_scale == 4
        assert _diff(reduced.pixels, full.pixels).mean() <= GOAL_MEAN_DIFF
        assert _diff(reduced.pixels, plain.pixels).max() <= 1


def test_j2k_lossy(j2k):
    ds = pydicom.dcmread(io.BytesIO(j2k["mono2"]))
    ds.compress(JPEG2000, ds.pixel_array, encoding_plugin="pylibjpeg", j2k_cr=[15], generate_instance_uid=False)
    data = _save(ds)
    config = NormalizeConfig(long_side=512)
    reduced, full = decode_dicom(data, config), decode_dicom(data, _full(config))
    assert reduced.transfer_syntax_uid == JPEG2000 and reduced.decode_scale == 2
    assert _diff(reduced.pixels, full.pixels).mean() <= GOAL_MEAN_DIFF


def test_j2k_path_and_bytes_agree(tmp_path, j2k):
    path = tmp_path / "x.dcm"
    path.write_bytes(j2k["mono2"])
    config = NormalizeConfig(long_side=224)
    from_path = decode_dicom(path, config)
    assert from_path.decode_scale == 4
    np.testing.assert_array_equal(from_path.pixels, decode_dicom(j2k["mono2"], config).pixels)


@pytest.fixture(scope="module")
def real_j2k(shared_data) -> dict[str, bytes]:
    """The two real sample DICOMs (one pixel data, flagged MONOCHROME2 / MONOCHROME1), their 8-bit
    pixels re-encoded as JPEG 2000 lossless."""
    out = {}
    for name in (RSNA, FAKE_MONO1):
        path = shared_data / "samples" / name
        if not path.is_file():
            pytest.skip(f"{path} not present")
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless, ds.pixel_array, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        out[str(ds.PhotometricInterpretation)] = _save(ds)
    return out


def test_real_j2k_reduced(real_j2k):
    config = NormalizeConfig(long_side=512)
    mono2, mono1 = (decode_dicom(real_j2k[p], config) for p in ("MONOCHROME2", "MONOCHROME1"))
    assert mono2.decode_scale == mono1.decode_scale == 2 and mono2.bits_stored == 8
    for decoded, data in ((mono2, real_j2k["MONOCHROME2"]), (mono1, real_j2k["MONOCHROME1"])):
        assert _diff(decoded.pixels, decode_dicom(data, _full(config)).pixels).mean() <= GOAL_MEAN_DIFF
    total = mono2.pixels.astype(np.int64) + mono1.pixels  # the same stored pixels: inverse images
    assert np.abs(total - 255).max() <= 2 and (total == 255).mean() > 0.9


# --- the fallback: anything unusual takes the full decode (decode_scale 1, the full path's pixels)
def _assert_full_path(data: bytes, config: NormalizeConfig = NormalizeConfig(long_side=224)) -> None:
    decoded = decode_dicom(data, config)
    assert decoded.decode_scale == 1
    np.testing.assert_array_equal(decoded.pixels, decode_dicom(data, _full(config)).pixels)


def test_fallback_small_image():
    stored = phantom_to_stored(np.linspace(0, 1, 192 * 160, dtype=np.float32).reshape(192, 160), 12, "MONOCHROME2")
    header = ImageHeader(subject_id=1, study_id=2, dicom_id="s", rows=192, columns=160, bits_stored=12,
                         photometric="MONOCHROME2")
    _assert_full_path(encode_dicom(header, stored, "j2k_lossless"), NormalizeConfig(long_side=64))


def test_fallback_signed_pixels(j2k):
    ds = pydicom.dcmread(io.BytesIO(j2k["mono2"]))
    signed = ds.pixel_array.astype(np.int16) - 2048
    ds.PixelRepresentation = 1
    ds.compress(JPEG2000Lossless, signed, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    _assert_full_path(_save(ds))


def test_fallback_modality_lut(j2k):
    ds = pydicom.dcmread(io.BytesIO(j2k["mono2"]))
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor
    item.add_new(0x00283006, "OW", np.sqrt(np.arange(4096) * 4096.0).astype("<u2").tobytes())  # non-linear LUTData
    ds.ModalityLUTSequence = Sequence([item])
    _assert_full_path(_save(ds))


def test_fallback_precision_above_bits_stored(j2k):
    ds = pydicom.dcmread(io.BytesIO(j2k["mono2"]))
    ds.BitsStored, ds.HighBit = 11, 10  # the codestream says 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's note on the mismatch
        _assert_full_path(_save(ds))


def test_fallback_without_pillow_openjpeg(monkeypatch, j2k):
    monkeypatch.setattr(images.j2k, "_pillow_j2k", lambda: False)
    _assert_full_path(j2k["mono2"])


def test_decomposition_levels_cap_the_reduction(phantom_image):
    """224 from 1040 rows wants level 2; a codestream with one decomposition level gives 1, none 0."""
    stored8 = phantom_to_stored(phantom_image, 8, "MONOCHROME2")
    config = NormalizeConfig(long_side=224)
    one_level = _pillow_j2k_dicom(stored8, resolutions=2)
    reduced = decode_dicom(one_level, config)
    assert reduced.decode_scale == 2 and reduced.bits_stored == 8
    assert _diff(reduced.pixels, decode_dicom(one_level, _full(config)).pixels).mean() <= GOAL_MEAN_DIFF
    _assert_full_path(_pillow_j2k_dicom(stored8, resolutions=1), config)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("cut", [0.6, 0.999], ids=["60%", "last-bytes"])
def test_truncated_j2k_is_rejected_not_reduced(j2k, cut):
    data = j2k["mono2"]
    assert _reject(decode_dicom, data[: int(len(data) * cut)]).reason == "truncated"
    assert _reject(decode_dicom, data[:-8]).reason == "truncated"  # only the sequence delimiter gone

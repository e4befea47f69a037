"""The demo DICOM writer: every transfer syntax reads back with pydicom, MONOCHROME1 inverts."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from offclip.demo.dicom_writer import (
    TRANSFER_SYNTAXES,
    ImageHeader,
    encode_dicom,
    phantom_to_stored,
)


def _phantom(rows=96, cols=80):
    y, x = np.mgrid[0:rows, 0:cols]
    return ((np.sin(x / 7.0) * np.cos(y / 5.0) + 1) / 2).astype(np.float32)


def _header(bits, photometric, **kw):
    return ImageHeader(subject_id=10000001, study_id=50000001, dicom_id="aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee",
                       rows=96, columns=80, bits_stored=bits, photometric=photometric, **kw)


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_every_syntax_reads_back(syntax):
    bits = 8 if syntax == "jpeg_baseline" else 12
    stored = phantom_to_stored(_phantom(), bits, "MONOCHROME2")
    data = encode_dicom(_header(bits, "MONOCHROME2", view_position="PA", view_code="PA"), stored, syntax)
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (96, 80, bits)
    pixels = ds.pixel_array
    if syntax == "jpeg_baseline":
        assert np.abs(pixels.astype(int) - stored.astype(int)).mean() < 3
    else:
        np.testing.assert_array_equal(pixels, stored)
    assert ds.ViewPosition == "PA"
    assert ds.ViewCodeSequence[0].CodeMeaning == "postero-anterior"
    # identifiers are derived from the ids, never random (compression must not renew them)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert encode_dicom(_header(bits, "MONOCHROME2", view_position="PA", view_code="PA"), stored, syntax) == data


@pytest.mark.parametrize("bits", [10, 12, 14, 15])
def test_monochrome1_is_the_inverse_of_monochrome2(bits):
    phantom = _phantom()
    reads = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        data = encode_dicom(_header(bits, photometric), phantom_to_stored(phantom, bits, photometric), "explicit_le")
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PhotometricInterpretation == photometric
        reads[photometric] = ds.pixel_array.astype(np.int64)
    maxval = (1 << bits) - 1
    np.testing.assert_array_equal(reads["MONOCHROME1"] + reads["MONOCHROME2"], maxval)
    # dense (phantom 1) is bright on MONOCHROME2, i.e. a high value; low on MONOCHROME1
    dense = phantom > 0.95
    assert reads["MONOCHROME2"][dense].min() > 0.9 * maxval
    assert reads["MONOCHROME1"][dense].max() < 0.1 * maxval


def test_missing_view_position_is_absent_not_empty():
    data = encode_dicom(_header(12, "MONOCHROME2", view_position=None, view_code=None,
                                extra={"AcquisitionDeviceProcessingDescription": "CHEST LAT"}),
                        phantom_to_stored(_phantom(), 12, "MONOCHROME2"), "implicit_le")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert "ViewPosition" not in ds and "ViewCodeSequence" not in ds
    assert ds.AcquisitionDeviceProcessingDescription == "CHEST LAT"


def test_bad_arguments_are_refused():
    stored = phantom_to_stored(_phantom(), 12, "MONOCHROME2")
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        encode_dicom(_header(12, "MONOCHROME2"), stored, "jpeg_xl")
    with pytest.raises(ValueError, match="JPEG baseline needs"):
        encode_dicom(_header(12, "MONOCHROME2"), stored, "jpeg_baseline")
    with pytest.raises(ValueError, match="do not match"):
        encode_dicom(_header(12, "MONOCHROME2"), stored[:10], "explicit_le")
    with pytest.raises(ValueError, match="photometric"):
        phantom_to_stored(_phantom(), 12, "RGB")


def test_uids_are_deterministic_and_valid():
    from offclip.demo.dicom_writer import deterministic_uid

    a, b = deterministic_uid("sop", "x"), deterministic_uid("sop", "x")
    assert a == b != deterministic_uid("sop", "y")
    assert a.startswith("2.25.") and len(a) <= 64 and a[5:].isdigit()

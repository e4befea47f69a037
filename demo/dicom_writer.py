"""Write phantom radiographs as valid DICOM Part 10 files with pydicom.

Six transfer syntaxes are mixed across a demo world: explicit and implicit VR little endian,
deflated explicit VR little endian, RLE lossless (pydicom's encoder), JPEG 2000 lossless
(pylibjpeg-openjpeg's encoder) and 8-bit JPEG baseline (Pillow encodes the frame, pydicom
encapsulates it: pydicom has no JPEG baseline encoder).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UID,
)

#: short name -> transfer syntax UID
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k_lossless": JPEG2000Lossless,
    "jpeg_baseline": JPEGBaseline8Bit,
}

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation

#: ViewPosition -> (code value, code meaning) as in ViewCodeSequence (SNOMED-RT codes)
VIEW_CODES: dict[str, tuple[str, str]] = {
    "PA": ("R-44D2A", "postero-anterior"),
    "AP": ("R-10206", "antero-posterior"),
    "LL": ("R-10236", "left lateral"),
    "RL": ("R-10232", "right lateral"),
    "LATERAL": ("R-102CD", "lateral"),
}


def phantom_to_stored(phantom: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Map a phantom (float in [0, 1], 1 = most attenuating) to stored pixel values.

    MONOCHROME2 displays high values bright, so dense tissue gets high values; MONOCHROME1 is the
    exact inverse (``maxval - value``), as a real CR reader writing MONOCHROME1 would store it.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    maxval = (1 << bits_stored) - 1
    values = np.rint(np.clip(phantom, 0.0, 1.0) * maxval).astype(np.uint16 if bits_stored > 8 else np.uint8)
    if photometric == "MONOCHROME1":
        values = (maxval - values).astype(values.dtype)
    return values


def deterministic_uid(*parts: object) -> str:
    """A ``2.25.<uuid as integer>`` UID derived from ``parts`` (same parts -> same UID).

    (``pydicom.uid.generate_uid(prefix=None)`` ignores its entropy sources and is random.)
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


@dataclass
class ImageHeader:
    """What one demo DICOM says about itself (everything except pixels)."""

    subject_id: int
    study_id: int
    dicom_id: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    modality: str = "CR"
    view_position: str | None = None  #: None -> ViewPosition absent from the file
    view_code: str | None = None  #: key of VIEW_CODES for ViewCodeSequence, None -> absent
    procedure: str = "CHEST (PA AND LAT)"  #: PerformedProcedureStepDescription
    patient_orientation_meaning: str | None = "Erect"
    patient_orientation: tuple[str, str] | None = None
    body_part: str | None = "CHEST"
    pixel_spacing: float | None = None
    window: bool = False
    rescale: bool = False
    presentation_lut: bool = False
    study_date: str = "21500101"
    study_time: str = "120000.000"
    instance_number: int = 1
    series_number: int = 1
    # Synthetic identifiers: the demo world carries PHI-shaped fields (never real ones) so that
    # the pipeline's whitelist of output fields is exercised on every run.
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = "O"
    accession_number: str = ""
    extra: dict = field(default_factory=dict)


def _code_item(value: str, meaning: str, scheme: str = "SRT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def build_dataset(header: ImageHeader, stored: np.ndarray, syntax: str) -> Dataset:
    """A complete Part 10 dataset for ``stored`` pixels, encoded with transfer syntax ``syntax``."""
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; known: {sorted(TRANSFER_SYNTAXES)}")
    if stored.shape != (header.rows, header.columns):
        raise ValueError(f"pixels {stored.shape} do not match header {(header.rows, header.columns)}")
    ts = TRANSFER_SYNTAXES[syntax]
    eight_bit = syntax == "jpeg_baseline"
    if eight_bit != (header.bits_stored == 8):
        raise ValueError("JPEG baseline needs bits_stored == 8, and only JPEG baseline may use 8 bits")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DX_IMAGE_STORAGE if header.modality == "DX" else CR_IMAGE_STORAGE
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = deterministic_uid("sop", header.dicom_id)
    ds.StudyDate = header.study_date
    ds.SeriesDate = header.study_date
    ds.StudyTime = header.study_time
    ds.AccessionNumber = header.accession_number
    ds.Modality = header.modality
    ds.Manufacturer = "offclip demo phantom"
    ds.PatientName = header.patient_name
    ds.PatientID = str(header.subject_id)
    ds.PatientBirthDate = header.patient_birth_date
    ds.PatientSex = header.patient_sex
    if header.body_part:
        ds.BodyPartExamined = header.body_part
    if header.view_position:
        ds.ViewPosition = header.view_position
    ds.PerformedProcedureStepDescription = header.procedure
    ds.ProcedureCodeSequence = Sequence([_code_item("CXR", header.procedure, "99OFFCLIP")])
    if header.view_code:
        value, meaning = VIEW_CODES[header.view_code]
        ds.ViewCodeSequence = Sequence([_code_item(value, meaning)])
    if header.patient_orientation_meaning:
        ds.PatientOrientationCodeSequence = Sequence(
            [_code_item("F-10440" if header.patient_orientation_meaning == "Erect" else "F-10450",
                        header.patient_orientation_meaning)]
        )
    ds.StudyInstanceUID = deterministic_uid("study", header.study_id)
    ds.SeriesInstanceUID = deterministic_uid("series", header.study_id, header.series_number)
    ds.StudyID = str(header.study_id)
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    if header.patient_orientation:
        ds.PatientOrientation = list(header.patient_orientation)
    if header.pixel_spacing:
        spacing = [f"{header.pixel_spacing:.3f}"] * 2
        ds.PixelSpacing = spacing
        ds.ImagerPixelSpacing = spacing

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = header.photometric
    ds.Rows = header.rows
    ds.Columns = header.columns
    ds.BitsAllocated = 8 if eight_bit else 16
    ds.BitsStored = header.bits_stored
    ds.HighBit = header.bits_stored - 1
    ds.PixelRepresentation = 0
    if header.rescale:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if header.window:
        lo, hi = np.percentile(stored, [1, 99])
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 1):.1f}"
    if header.presentation_lut:
        ds.PresentationLUTShape = "INVERSE" if header.photometric == "MONOCHROME1" else "IDENTITY"
    for keyword, value in header.extra.items():
        setattr(ds, keyword, value)

    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1455.1"  # offclip demo
    ds.file_meta.ImplementationVersionName = "OFFCLIP_DEMO_1"

    if syntax == "jpeg_baseline":
        buf = io.BytesIO()
        Image.fromarray(stored.astype(np.uint8), mode="L").save(buf, format="JPEG", quality=92)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{stored.nbytes / len(buf.getvalue()):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.file_meta.TransferSyntaxUID = ts
    elif syntax in ("rle", "j2k_lossless"):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(ts, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ts
    return ds


def encode_dicom(header: ImageHeader, stored: np.ndarray, syntax: str) -> bytes:
    """The Part 10 file bytes (write them with :func:`offclip.pipeline.atomic.atomic_write_bytes`)."""
    ds = build_dataset(header, stored, syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

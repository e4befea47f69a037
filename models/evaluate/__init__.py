"""Zero-shot evaluation of a trained dual encoder on public chest X-ray test sets, in their own formats.

    result = evaluate("runs/tiny-offclip-seed0/model", "vindr-cxr", "WORLD/eval/vindr-cxr", out=Path("eval"))
    python -m offclip.models.evaluate --model DIR --dataset vindr-cxr --root WORLD/eval/vindr-cxr --out DIR

Four readers turn a dataset directory into one :class:`EvalSet` (images, a 0/1 label table with one
column per class, boxes in original pixel coordinates):

* ``vindr-cxr``  PhysioNet VinDr-CXR v1.0.0: ``annotations/image_labels_<split>.csv`` +
  ``annotations/annotations_<split>.csv``, images ``<split>/<image_id>.dicom``. Training files carry
  one row per radiologist (``rad_id``): a class is positive when any radiologist marked it. The
  Kaggle VinBigData layout (``train.csv[.gz]`` with boxes only, images ``train/<image_id>.dicom``) works
  too; there the labels are the boxes' classes.
* ``openi``      Open-I: ``NLMCXR_png/<imageid>.png`` with ``openi_labels.csv`` (imageid, normal,
  mesh_major) or, without it, the report XMLs ``ecgen-radiology/*.xml``. Classes are the MeSH major
  headings (the text before the first ``/``); normal is Open-I's own ``normal`` term.
* ``chexpert``   CheXpert ``test_labels.csv`` / ``valid.csv`` (``Path`` or ``Study`` column, the
  14 label columns): blank = negative, ``-1`` (uncertain) excluded from that class by default.
* ``padchest``   PadChest ``PADCHEST_chest_x_ray_images_labels_160K*.csv`` (ImageID, ImageDir, Labels
  as a Python list string) + 16-bit PNGs under ``<root>/<ImageDir>/<ImageID>``.

The normal class is always called :data:`NORMAL` ("No Finding"). Each image is decoded to
grayscale in [0, 1], zero-padded (centred) to a square and resized to the model's ``image_size``
— the same geometry as training's :func:`offclip.models.data.eval_transform` (nothing is cropped);
:class:`Geometry` maps model pixels back to original pixels for the pointing game.

Zero-shot scores: per class, the cosine similarity of the image embedding and the class prompt's
embedding (prompts per class, defaults ``"There is {finding}."`` and ``"There is no finding."``);
classes are scored independently, no softmax across classes. Metrics: see :func:`class_metrics`
and :func:`pointing_hit`. Unreadable images are rejects with a reason, reported in the result.
"""

from .datasets import (
    BOX_COLUMNS,
    CHEXPERT_CLASSES,
    CHEXPERT_CSVS,
    DATASETS,
    NORMAL,
    NORMAL_ALIASES,
    PADCHEST_EXCLUDE,
    PADCHEST_GLOB,
    UNCERTAIN_POLICIES,
    VINDR_BOX_NUMERIC,
    EvalImage,
    EvalSet,
    read_chexpert,
    read_eval_set,
    read_openi,
    read_padchest,
    read_vindr,
)
from .images import EvalImageError, Geometry, PreparedImage, load_eval_image, read_image_size
from .metrics import SUMMARY_METRICS, TABLE_COLUMNS, class_metrics, patch_centre, pointing_hit
from .plots import roc_png
from .prompts import NORMAL_PROMPT, PHRASES, PROMPT_TEMPLATE, build_prompts, finding_phrase
from .result import CENTROID, EvalResult, SavedScores, _json_safe, read_score_table
from .runner import evaluate, main, training_normal_texts

__all__ = [
    "BOX_COLUMNS",
    "DATASETS",
    "NORMAL",
    "NORMAL_PROMPT",
    "PROMPT_TEMPLATE",
    "EvalImage",
    "EvalImageError",
    "EvalResult",
    "SavedScores",
    "read_score_table",
    "EvalSet",
    "Geometry",
    "PreparedImage",
    "build_prompts",
    "class_metrics",
    "evaluate",
    "finding_phrase",
    "load_eval_image",
    "main",
    "patch_centre",
    "pointing_hit",
    "read_eval_set",
    "read_chexpert",
    "read_openi",
    "read_padchest",
    "read_vindr",
]

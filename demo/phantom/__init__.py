"""Fast, deterministic synthetic chest radiographs ("phantoms") with lesions.

The demo world needs thousands of MIMIC-CXR-shaped images whose findings are known exactly, so
this module draws them from scratch: a per-study :class:`Anatomy` (sampled with
:func:`sample_anatomy`) is rendered as a frontal (:func:`render_frontal`, PA or AP) or lateral
(:func:`render_lateral`) radiograph, and every :class:`~offclip.demo.lesions.LesionSpec`
is drawn into it and reported back as a :class:`~offclip.demo.lesions.Box`.

How it works
------------
* Geometry lives in *height units*: ``Y`` runs from 0 (top row) to 1 (bottom row), ``X`` is
  measured from the image's vertical centre line in the same unit (so circles stay circles for
  any aspect ratio). The study's small rotation/shift is applied to the pixel grid, so anatomy is
  always described in an upright, centred frame. Patient right is image left (``X < 0``).
* Everything is composed as an additive *attenuation* map ``A`` (air outside the body = 0):
  soft tissue minus lung air, plus heart, mediastinum, bones, vessels and lesions. A monotone
  film curve maps ``A`` to display values in [0, 1] (1 = most attenuating, MONOCHROME2 bright).
* The map is rendered on a *working grid* of at most ``_MAX_WORK_PIXELS`` pixels (the default
  ~700x580 demo size renders natively); larger outputs are bilinearly upsampled from it, then
  quantum-like noise (signal-dependent, detector-blurred) is added at the output resolution.
  Structures and lesions are computed only inside their own bounding windows, 1-D functions of
  ``Y`` through lookup tables, and smooth fields at low resolution. Render times: BENCHMARKS.md,
  "Measured figures moved out of docstrings".
* Lesions either modify the :class:`Anatomy` before drawing (cardiomegaly, emphysema,
  hypoinflation, elevated diaphragm, scoliosis, aortic enlargement; boxed from the geometry) or
  add a local change to the attenuation map (boxed from where that change is visible). One table,
  ``_LESIONS``, holds every kind's renderers side by side: its anatomy change, its frontal
  drawer, its lateral geometry change and its lateral drawer (a kind with no lateral drawer is
  not drawn on the lateral view). Adding a kind means its functions and one row there.
* The caller's ``rng`` is used for exactly one draw (three seeds), which seed independent streams
  for anatomical texture, noise and lesions (one child stream per lesion). So a study rendered
  with and without a lesion, from the same rng state, differs only where that lesion is.

Modules
-------
:mod:`.anatomy` (the :class:`Anatomy`, its sampling and measurements), :mod:`.grid` (the working
grid, small helpers, the render context), :mod:`.frontal` and :mod:`.lateral` (each view's
anatomy), :mod:`.placement` (lesions' shared placement and shapes), :mod:`.kinds` and
:mod:`.devices` (each lesion kind's renderers), :mod:`.table` (``_LESIONS``), :mod:`.film` (film,
detector, noise, output size and boxes) and :mod:`.render` (the public renderers).
"""

from __future__ import annotations

from .anatomy import Anatomy, cardiothoracic_ratio, heart_width, sample_anatomy, thoracic_width
from .render import render_frontal, render_lateral
from .table import _LESIONS  # noqa: F401  (tests check the table against LESION_KINDS)

__all__ = [
    "Anatomy",
    "sample_anatomy",
    "render_frontal",
    "render_lateral",
    "cardiothoracic_ratio",
    "heart_width",
    "thoracic_width",
]

"""The lesion table, ``_LESIONS``: every kind's renderers side by side (their signatures:
:mod:`.kinds`). Adding a kind means its functions and one row here."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from ..lesions import LESION_KINDS
from .devices import _device_frontal, _device_lateral
from .kinds import (_aortic_enlargement_lateral, _aortic_enlargement_modify, _atelectasis_frontal, _atelectasis_lateral,
                    _blob_frontal, _blob_lateral, _calcification_frontal, _calcification_lateral, _cardiomegaly_lateral,
                    _cardiomegaly_lateral_shape, _cardiomegaly_modify, _edema_frontal, _edema_lateral,
                    _emphysema_lateral, _emphysema_lateral_shape, _emphysema_modify, _fracture_frontal,
                    _granuloma_frontal, _granuloma_lateral, _hiatal_hernia_frontal, _hiatal_hernia_lateral,
                    _mass_frontal, _mass_lateral, _nodule_frontal, _nodule_lateral, _pleural_effusion_frontal,
                    _pleural_effusion_lateral, _pleural_thickening_frontal, _pneumothorax_frontal, _raised_dome_lateral,
                    _raised_dome_lateral_shape, _raised_dome_modify, _reticular_frontal, _reticular_lateral,
                    _scoliosis_modify, _spondylosis_frontal, _spondylosis_lateral)


@dataclass(frozen=True)
class _LesionKind:
    """How one lesion kind is rendered, in both views (signatures: the docstring of :mod:`.kinds`).

    A kind either changes the anatomy before it is drawn (``modify``: the frontal box comes from
    the changed geometry) or draws into the attenuation map (``frontal``). On the lateral view
    ``lateral_shape`` changes the lateral geometry and ``lateral`` draws (or boxes) the lesion; a
    kind without ``lateral`` is not drawn there and gets no box.
    """

    modify: Callable | None = None
    frontal: Callable | None = None
    lateral_shape: Callable | None = None
    lateral: Callable | None = None


_LESIONS: dict[str, _LesionKind] = {
    "cardiomegaly": _LesionKind(modify=_cardiomegaly_modify, lateral_shape=_cardiomegaly_lateral_shape,
                                lateral=_cardiomegaly_lateral),
    "emphysema": _LesionKind(modify=_emphysema_modify, lateral_shape=_emphysema_lateral_shape,
                             lateral=_emphysema_lateral),
    "hypoinflation": _LesionKind(modify=_raised_dome_modify, lateral_shape=_raised_dome_lateral_shape,
                                 lateral=_raised_dome_lateral),
    "elevated_diaphragm": _LesionKind(modify=_raised_dome_modify, lateral_shape=_raised_dome_lateral_shape,
                                      lateral=_raised_dome_lateral),
    "scoliosis": _LesionKind(modify=_scoliosis_modify),
    "aortic_enlargement": _LesionKind(modify=_aortic_enlargement_modify, lateral=_aortic_enlargement_lateral),
    "nodule": _LesionKind(frontal=_nodule_frontal, lateral=_nodule_lateral),
    "mass": _LesionKind(frontal=_mass_frontal, lateral=_mass_lateral),
    "granuloma": _LesionKind(frontal=_granuloma_frontal, lateral=_granuloma_lateral),
    # blob parameters: size, strength, noise cell, patchiness, edge hardness
    "opacity": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.055, strength=0.55, cell=0.03, patchy=0.7, hard=2.5),
        lateral=functools.partial(_blob_lateral, strength=0.55)),
    "consolidation": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.06, strength=0.95, cell=0.04, patchy=0.45, hard=3.5),
        lateral=functools.partial(_blob_lateral, strength=0.9)),
    "pneumonia": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.075, strength=0.85, cell=0.035, patchy=0.55, hard=3.0),
        lateral=functools.partial(_blob_lateral, strength=0.85)),
    "infiltrate": _LesionKind(
        frontal=functools.partial(_blob_frontal, size=0.06, strength=0.5, cell=0.014, patchy=1.3, hard=2.5),
        lateral=functools.partial(_blob_lateral, strength=0.55)),
    "edema": _LesionKind(frontal=_edema_frontal, lateral=_edema_lateral),
    "pleural_effusion": _LesionKind(frontal=_pleural_effusion_frontal, lateral=_pleural_effusion_lateral),
    "pneumothorax": _LesionKind(frontal=_pneumothorax_frontal),
    "atelectasis": _LesionKind(frontal=_atelectasis_frontal, lateral=_atelectasis_lateral),
    "fibrosis": _LesionKind(frontal=functools.partial(_reticular_frontal, coarse=True),
                            lateral=functools.partial(_reticular_lateral, top=0.55, cell=0.011)),
    "interstitial": _LesionKind(frontal=functools.partial(_reticular_frontal, coarse=False),
                                lateral=functools.partial(_reticular_lateral, top=0.3, cell=0.007)),
    "pleural_thickening": _LesionKind(frontal=_pleural_thickening_frontal),
    "calcification": _LesionKind(frontal=_calcification_frontal, lateral=_calcification_lateral),
    "hiatal_hernia": _LesionKind(frontal=_hiatal_hernia_frontal, lateral=_hiatal_hernia_lateral),
    "fracture": _LesionKind(frontal=_fracture_frontal),
    "spondylosis": _LesionKind(frontal=_spondylosis_frontal, lateral=_spondylosis_lateral),
    "device": _LesionKind(frontal=_device_frontal, lateral=_device_lateral),
}
assert set(_LESIONS) == set(LESION_KINDS), sorted(set(_LESIONS) ^ set(LESION_KINDS))
assert all((k.modify is None) != (k.frontal is None) for k in _LESIONS.values())

"""Study-specific sectioning facts of MIMIC-CXR, as data (read by :mod:`offclip.pipeline.text`).

Source: MIMIC-CXR's own report parser (MIT-LCP/mimic-cxr, ``txt/section_parser.py``,
``custom_mimic_cxr_rules()``, MIT licence), whose authors checked these studies by hand:

* ``SECTION_BY_STUDY``: the report's text sits under an unusual header; keep the last section of
  that name (the reference's section names: ``recommendations``, ``examination``, ``technique``,
  ``indication``, ``history``, ``note``) and nothing else.
* ``RANGE_BY_STUDY``: keep the report's characters ``[start, end)`` and nothing else;
  ``start == end`` marks a report with no findings at all (keep nothing).

A study id is MIMIC-CXR's ``study_id`` (the ``s`` prefix of its file name dropped).
"""

from __future__ import annotations

#: study_id -> reference section name whose last occurrence is the report text
SECTION_BY_STUDY: dict[int, str] = {
    50913680: "recommendations",
    59363654: "examination",
    59279892: "technique",
    59768032: "recommendations",
    57936451: "indication",
    50058765: "indication",
    53356173: "examination",
    53202765: "technique",
    50808053: "technique",
    51966317: "indication",
    50743547: "examination",
    56451190: "note",
    59067458: "recommendations",
    59215320: "examination",
    55124749: "indication",
    54365831: "indication",
    59087630: "recommendations",
    58157373: "recommendations",
    56482935: "recommendations",
    58375018: "recommendations",
    54654948: "indication",
    55157853: "examination",
    51491012: "history",
}

#: study_id -> (start, end) character range of the report text to keep
RANGE_BY_STUDY: dict[int, tuple[int, int]] = {
    50525523: (201, 349),
    57564132: (233, 554),
    59982525: (313, 717),
    53488209: (149, 475),
    54875119: (234, 988),
    50196495: (59, 399),
    56579911: (59, 218),
    52648681: (292, 631),
    59889364: (172, 453),
    53514462: (73, 377),
    59505494: (59, 450),
    53182247: (59, 412),
    51410602: (47, 320),
    56412866: (522, 822),
    54986978: (59, 306),
    59003148: (262, 505),
    57150433: (61, 394),
    56760320: (219, 457),
    59562049: (158, 348),
    52674888: (145, 296),
    55258338: (192, 568),
    59330497: (140, 655),
    52119491: (179, 454),
    58235663: (0, 0),
    50798377: (0, 0),
    54168089: (0, 0),
    53071062: (0, 0),
    56724958: (0, 0),
    54231141: (0, 0),
    53607029: (0, 0),
    52035334: (0, 0),
}

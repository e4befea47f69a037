"""Planning a world from the real header table: ids, folders, splits, views, syntaxes."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from offclip.pipeline import openi
from offclip.demo.plan import SYNTAX_WEIGHTS, WorldPlanner


@pytest.fixture(scope="module")
def sources(openi_sources):
    src = openi_sources
    return openi.load_reports(src.reports_tgz), openi.load_headers(src.headers_csv)


def test_plan_shape(sources):
    reports, headers = sources
    plans = WorldPlanner(headers, seed=3, scale=0.25).plan(reports, 300)
    assert len(plans) == 300 and len({p.study_id for p in plans}) == 300
    assert len({p.report.uid for p in plans}) == 300
    folders = Counter(p.folder for p in plans)
    assert set(folders) == {f"p{i}" for i in range(10, 20)}  # spread over p10–p19
    for p in plans:
        assert re.fullmatch(r"1\d{7}", str(p.subject_id)) and p.folder == f"p{str(p.subject_id)[:2]}"
        assert re.fullmatch(r"5\d{7}", str(p.study_id))
        assert p.report_path == f"files/{p.folder}/p{p.subject_id}/s{p.study_id}.txt"
        assert any(i.view_kind == "frontal" for i in p.images), "every study has a frontal view"
        for i in p.images:
            assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", i.dicom_id)
            assert i.bits_stored in (8, 10, 12, 14, 15)
            assert (i.bits_stored == 8) == (i.syntax == "jpeg_baseline")
            assert i.photometric in ("MONOCHROME1", "MONOCHROME2")
    # subjects keep one split for all their studies
    by_subject = {}
    for p in plans:
        assert by_subject.setdefault(p.subject_id, p.split) == p.split
    assert {p.split for p in plans} == {"train", "validate", "test"}
    images = [i for p in plans for i in p.images]
    assert set(i.syntax for i in images) == set(SYNTAX_WEIGHTS)
    laterals = sum(any(i.view_kind == "lateral" for i in p.images) for p in plans)
    assert laterals / len(plans) > 0.7  # "usually a lateral"
    missing = sum(i.view_position is None for i in images) / len(images)
    assert 0.15 < missing < 0.5  # IU headers lack ViewPosition in ~35% of images
    for i in images:  # a missing ViewPosition is always told somewhere else
        if i.view_position is None:
            assert i.view_code or i.device_description


def test_plan_is_deterministic_and_seeded(sources):
    reports, headers = sources
    a = WorldPlanner(headers, seed=1, scale=0.1).plan(reports, 50)
    b = WorldPlanner(headers, seed=1, scale=0.1).plan(reports, 50)
    c = WorldPlanner(headers, seed=2, scale=0.1).plan(reports, 50)
    assert a == b
    assert [p.study_id for p in a] != [p.study_id for p in c]


def test_scale_and_limits(sources):
    reports, headers = sources
    full = WorldPlanner(headers, seed=1, scale=1.0).plan(reports, 10)
    small = WorldPlanner(headers, seed=1, scale=0.1).plan(reports, 10)
    for pf, ps in zip(full, small):
        for f, s in zip(pf.images, ps.images):
            assert f.source_imageid == s.source_imageid
            assert abs(s.rows - max(64, round(f.rows * 0.1))) <= 1
    assert max(i.rows for p in full for i in p.images) > 2000  # real IU sizes at scale 1
    with pytest.raises(ValueError, match="exceeds the 3955"):
        WorldPlanner(headers, seed=1, scale=0.1).plan(reports, 4000)
    with pytest.raises(ValueError, match="scale"):
        WorldPlanner(headers, seed=1, scale=0)

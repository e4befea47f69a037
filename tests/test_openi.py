"""Reading the real Open-I sources, and the clear errors when they are missing."""

from __future__ import annotations

import shutil

import pytest

from offclip.pipeline import openi


def test_reports_and_headers_load(openi_sources):
    src = openi_sources
    reports = openi.load_reports(src.reports_tgz)
    assert len(reports) == 3955
    assert [r.uid for r in reports] == sorted(r.uid for r in reports)
    normal = [r for r in reports if r.is_normal]
    # Open-I marks a normal study with the MeSH term "normal" and nothing else
    assert 1000 < len(normal) < 2000
    assert all(r.mesh_major == ("normal",) for r in normal)
    headers = openi.load_headers(src.headers_csv)
    assert len(headers) == 7469
    linked = sum(i in headers.index for r in reports for i in r.image_ids)
    assert linked / sum(len(r.image_ids) for r in reports) > 0.95


def test_parse_report_xml_reads_sections_mesh_and_images():
    xml = b"""<?xml version="1.0" encoding="utf-8"?><eCitation><IUXRId id="42"/>
      <MedlineCitation><Article><Abstract>
        <AbstractText Label="FINDINGS">Heart  size normal.
           Lungs clear.</AbstractText><AbstractText Label="IMPRESSION"/>
      </Abstract></Article></MedlineCitation>
      <MeSH><major>Cardiomegaly/mild</major><automatic>cardiomegaly</automatic></MeSH>
      <parentImage id="CXR42_IM-0001-1001"/><parentImage id="CXR42_IM-0001-2001"/></eCitation>"""
    r = openi.parse_report_xml(xml)
    assert r.uid == 42 and r.findings == "Heart size normal. Lungs clear." and r.impression == ""
    assert r.mesh_major == ("Cardiomegaly/mild",) and not r.is_normal
    assert r.image_ids == ("CXR42_IM-0001-1001", "CXR42_IM-0001-2001")
    with pytest.raises(ValueError, match="IUXRId"):
        openi.parse_report_xml(b"<eCitation/>")


def test_source_lookup_order_and_errors(tmp_path, monkeypatch, openi_sources):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(openi.OpenISourceError, match="lacks NLMCXR_reports.tgz"):
        openi.find_sources(empty)
    monkeypatch.setenv(openi.ENV_VAR, str(empty))
    with pytest.raises(openi.OpenISourceError, match=r"\$OFFCLIP_OPENI"):
        openi.find_sources()
    full = tmp_path / "full"
    full.mkdir()
    for src in (openi_sources.reports_tgz, openi_sources.headers_csv):
        shutil.copy(src, full / src.name)
    monkeypatch.setenv(openi.ENV_VAR, str(full))
    assert openi.find_sources().reports_tgz == full / openi.REPORTS_NAME


def test_installed_wheel_is_the_default(monkeypatch):
    monkeypatch.delenv(openi.ENV_VAR, raising=False)
    if openi._distribution_dir() is None:
        pytest.skip("torchxrayvision wheel not installed (make setup installs it)")
    src = openi.find_sources()
    assert src.reports_tgz.name == openi.REPORTS_NAME and src.headers_csv.is_file()

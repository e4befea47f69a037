"""The two world properties OFF-CLIP's problem needs (demo/properties.py), on real
renders and the real Open-I reports."""

from offclip.demo.properties import normal_retrieval, normal_sentence_share


def test_normal_subjects_are_told_apart_by_their_images():
    noise = normal_retrieval(n=30, seed=1, rows=160, cols=128, new_acquisition=False)
    again = normal_retrieval(n=30, seed=1, rows=160, cols=128)
    # a second render with new noise only is found at once; a new acquisition (positioning,
    # exposure, gamma, noise drawn again) of the same body still far above chance (1/30)
    assert noise["top1"] >= 0.9 and again["top1"] >= 5 * again["chance"]
    for r in (noise, again):
        assert r["cosine_same_subject"] > r["cosine_other_subjects"]
    assert again["cosine_same_subject"] < noise["cosine_same_subject"]


def test_abnormal_reports_carry_normal_sentences(openi_sources, openi_dir):
    share = normal_sentence_share(openi_dir)
    assert share["reports"] == 3955 and share["abnormal_reports"] + share["normal_reports"] <= 3955
    assert 0.3 < share["normal_share_of_sentences"] < 0.9
    assert share["abnormal_reports_with_a_normal_sentence"] > 0.8

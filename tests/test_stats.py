"""The ablation's statistics: AUC with ties, embedding compactness, the paired bootstrap checked
against a direct computation on small hand-made cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from offclip.models.stats import auc, auc_rows, compactness, macro_auc, paired_bootstrap


def test_auc_matches_sklearn_with_ties_and_unknowns():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    s = np.round(rng.normal(size=200) + y, 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
    y_unknown = y.copy()
    y_unknown[:20] = np.nan
    assert auc(y_unknown, s) == pytest.approx(roc_auc_score(y[20:], s[20:]))
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    rows = auc_rows(np.stack([y, y]), np.stack([s, -s]))
    assert rows[0] == pytest.approx(1 - rows[1])
    labels = np.stack([y, 1 - y], axis=1)
    assert macro_auc(labels, np.stack([s, s], axis=1)) == pytest.approx((auc(y, s) + auc(1 - y, s)) / 2)


def test_compactness_on_hand_made_embeddings():
    e = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=float)
    c = compactness(e, np.array([1, 1, 0, 0, 0]))
    assert c == {"normal_normal": 1.0, "abnormal_abnormal": 1.0, "normal_abnormal": 0.0}
    # centring removes a shared direction: two tight, opposite groups
    shared = np.array([[10, 1], [10, 1], [10, -1], [10, -1]], dtype=float)
    raw = compactness(shared, np.array([1, 1, 0, 0]))
    centred = compactness(shared, np.array([1, 1, 0, 0]), centre=True)
    assert raw["normal_abnormal"] > 0.98 and centred["normal_abnormal"] == pytest.approx(-1.0)
    assert centred["normal_normal"] == pytest.approx(1.0)


def _pairwise_auc(y, s) -> float:
    """AUC by its definition: the share of (positive, negative) pairs ordered right, ties half."""
    pos, neg = s[y == 1], s[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def _direct(y, a, b, index):
    """The bootstrap replicates by the textbook loop: per draw, per seed, the pairwise AUC."""
    out = []
    for i in index:
        if len(set(y[i])) < 2:
            out.append(np.nan)
            continue
        out.append(np.mean([_pairwise_auc(y[i], sa[i]) - _pairwise_auc(y[i], sb[i]) for sa, sb in zip(a, b)]))
    return np.array(out)


def test_paired_bootstrap_against_a_direct_computation():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1], dtype=float)
    a = [np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.3, 0.2, 0.9]), np.array([0.2, 0.1, 0.5, 0.6, 0.9, 0.4, 0.3, 0.7])]
    b = [np.array([0.3, 0.5, 0.1, 0.4, 0.6, 0.2, 0.7, 0.8]), np.array([0.6, 0.2, 0.4, 0.5, 0.3, 0.1, 0.2, 0.9])]
    diff = paired_bootstrap(y, a, b, n_boot=3000, seed=5, chunk=3000)
    index = np.random.default_rng(5).integers(0, len(y), size=(3000, len(y)))
    direct = _direct(y, a, b, index)
    direct = direct[~np.isnan(direct)]
    assert diff.low == pytest.approx(np.quantile(direct, 0.025)) and diff.high == pytest.approx(np.quantile(direct, 0.975))
    full = [roc_auc_score(y, sa) - roc_auc_score(y, sb) for sa, sb in zip(a, b)]
    assert diff.per_seed == pytest.approx(full) and diff.estimate == pytest.approx(np.mean(full))
    assert diff.low <= diff.estimate <= diff.high


def test_paired_bootstrap_exact_distribution_of_a_tiny_case():
    """n = 5: every one of the 5^5 resamples enumerated gives the exact bootstrap distribution;
    the Monte-Carlo interval lands on its quantiles."""
    y = np.array([0, 1, 0, 1, 1], dtype=float)
    a = [np.array([0.1, 0.9, 0.4, 0.6, 0.3])]
    b = [np.array([0.5, 0.4, 0.2, 0.6, 0.1])]
    every = np.array(list(itertools.product(range(5), repeat=5)))
    exact = _direct(y, a, b, every)
    exact = exact[~np.isnan(exact)]
    diff = paired_bootstrap(y, a, b, n_boot=20000, seed=1)
    values = np.unique(exact)  # the distribution is discrete: compare the attained values
    for q, got in ((0.025, diff.low), (0.975, diff.high)):
        assert np.quantile(exact, q - 0.01) <= got + 1e-9 and got <= np.quantile(exact, q + 0.01) + 1e-9
        assert np.isclose(values, got).any() or got == pytest.approx(np.quantile(exact, q), abs=0.05)


def test_paired_bootstrap_is_symmetric_for_a_symmetric_case_and_narrows_with_n():
    """Each score value appears once among normals and once among abnormals: relabelling maps the
    set onto itself, so AUC(a) - AUC(b) with b = -a is symmetric around 0."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=40)
    y = np.r_[np.zeros(40), np.ones(40)]
    a = [np.r_[values, values]]
    b = [-a[0]]
    diff = paired_bootstrap(y, a, b, n_boot=4000, seed=2)
    assert diff.estimate == pytest.approx(0.0)
    assert diff.low < 0 < diff.high and diff.low == pytest.approx(-diff.high, abs=0.02)
    # the same kind of set, four times as large: about half as wide
    big_values = rng.normal(size=160)
    big = paired_bootstrap(np.r_[np.zeros(160), np.ones(160)], [np.r_[big_values, big_values]],
                           [-np.r_[big_values, big_values]], n_boot=4000, seed=2)
    ratio = (big.high - big.low) / (diff.high - diff.low)
    assert 0.35 < ratio < 0.7


def test_paired_bootstrap_macro_and_errors():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(60, 3)).astype(float)
    a = [labels + rng.normal(scale=0.8, size=labels.shape) for _ in range(2)]
    b = [rng.normal(size=labels.shape) for _ in range(2)]
    diff = paired_bootstrap(labels, a, b, n_boot=500, seed=0)
    assert diff.estimate == pytest.approx(np.mean([macro_auc(labels, x) - macro_auc(labels, z) for x, z in zip(a, b)]))
    assert 0 < diff.low < diff.estimate < diff.high
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap(labels, a, b[:1])
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(labels, a, [x[:, :2] for x in b])


def test_cluster_bootstrap_is_not_fooled_by_repeated_renders():
    """Every image rendered 4 times (identical copies): resampling images makes the interval about
    half as wide, as if there were 4 times the evidence; resampling the reports (clusters) gives
    exactly the interval of the set without the copies."""
    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(30), np.ones(30)]
    a = [y * 0.8 + rng.normal(size=60)]
    b = [y * 0.3 + rng.normal(size=60)]
    once = paired_bootstrap(y, a, b, n_boot=1000, seed=4)
    copies = 4
    y4, a4, b4 = np.repeat(y, copies), [np.repeat(a[0], copies)], [np.repeat(b[0], copies)]
    groups = np.repeat([f"report{i:03d}" for i in range(60)], copies)
    naive = paired_bootstrap(y4, a4, b4, n_boot=1000, seed=4)
    clustered = paired_bootstrap(y4, a4, b4, n_boot=1000, seed=4, groups=groups)
    assert clustered.estimate == pytest.approx(once.estimate) == pytest.approx(naive.estimate)
    assert (clustered.low, clustered.high) == pytest.approx((once.low, once.high))
    assert clustered.n_groups == 60 and naive.n_groups is None
    assert (naive.high - naive.low) < 0.7 * (once.high - once.low)
    with pytest.raises(ValueError, match="a cluster for each of the 240 images"):
        paired_bootstrap(y4, a4, b4, groups=groups[:10])


def test_weighted_auc_equals_the_auc_of_the_resampled_images():
    from offclip.models.stats import weighted_auc_rows

    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 50).astype(float)
    y[[3, 17]] = np.nan  # unknown labels: left out
    s = np.round(rng.normal(size=50), 1)  # ties
    index = rng.integers(0, 50, size=(20, 50))
    weights = np.stack([np.bincount(i, minlength=50) for i in index]).astype(float)
    got = weighted_auc_rows(y, s, weights)
    for row, i in zip(got, index):
        keep = ~np.isnan(y[i])
        assert row == pytest.approx(_pairwise_auc(y[i][keep], s[i][keep]))

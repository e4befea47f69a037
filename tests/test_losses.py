"""Tests for offclip.models.losses: hand-computed values, identities, gradients, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from offclip.models.losses import (
    LOSSES,
    abnormal_infonce_loss,
    get_loss,
    infonce_loss,
    offclip_loss,
    offdiagonal_loss,
)

# ----------------------------------------------------------------------------------------------
# Plain-python references written straight from the formulas (no torch, no library code).
# ----------------------------------------------------------------------------------------------


def _log_softmax(row: list[float]) -> list[float]:
    log_norm = math.log(sum(math.exp(x) for x in row))
    return [x - log_norm for x in row]


def _transpose(matrix: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*matrix)]


def _ref_direction(matrix: list[list[float]], normal: list[bool]) -> float:
    """Mean over rows of -(1/|P_i|) sum_{j in P_i} log_softmax(row_i)[j]."""
    total = 0.0
    for i, row in enumerate(matrix):
        log_probs = _log_softmax(row)
        positives = [j for j in range(len(row)) if j == i or (normal[i] and normal[j])]
        total += -sum(log_probs[j] for j in positives) / len(positives)
    return total / len(matrix)


def ref_offdiagonal(matrix: list[list[float]], normal: list[bool]) -> float:
    return 0.5 * (_ref_direction(matrix, normal) + _ref_direction(_transpose(matrix), normal))


def ref_infonce(matrix: list[list[float]]) -> float:
    return ref_offdiagonal(matrix, [False] * len(matrix))


def ref_abnormal_infonce(matrix: list[list[float]], normal: list[bool]) -> float:
    keep = [i for i, is_normal in enumerate(normal) if not is_normal]
    if not keep:
        return 0.0
    return ref_infonce([[matrix[i][j] for j in keep] for i in keep])


def _tensor(matrix: list[list[float]]) -> torch.Tensor:
    return torch.tensor(matrix, dtype=torch.float64)


def _labels(values: list[bool]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


# ----------------------------------------------------------------------------------------------
# Hand-computed values
# ----------------------------------------------------------------------------------------------


def test_infonce_2x2_by_hand():
    a, b, c, d = 2.0, 0.5, 1.0, 3.0
    # rows: image 0 -> text 0, image 1 -> text 1; columns: the same for text -> image
    row0 = -(a - math.log(math.exp(a) + math.exp(b)))
    row1 = -(d - math.log(math.exp(c) + math.exp(d)))
    col0 = -(a - math.log(math.exp(a) + math.exp(c)))
    col1 = -(d - math.log(math.exp(b) + math.exp(d)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    got = infonce_loss(_tensor([[a, b], [c, d]]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_offdiagonal_2x2_all_normal_by_hand():
    a, b, c, d = 2.0, 0.5, 1.0, 3.0
    # every cell is a positive: each row/column loss is the mean of its two -log-probs
    row0 = -((a + b) / 2 - math.log(math.exp(a) + math.exp(b)))
    row1 = -((c + d) / 2 - math.log(math.exp(c) + math.exp(d)))
    col0 = -((a + c) / 2 - math.log(math.exp(a) + math.exp(c)))
    col1 = -((b + d) / 2 - math.log(math.exp(b) + math.exp(d)))
    expected = 0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2)
    got = offdiagonal_loss(_tensor([[a, b], [c, d]]), _labels([True, True]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


MIXED = [
    [3.0, -1.0, 1.5, 0.2],
    [0.4, 2.5, -0.3, 1.1],
    [2.2, 0.0, 2.8, -0.7],
    [-0.5, 1.9, 0.3, 2.0],
]
MIXED_NORMAL = [True, False, True, False]


def test_offdiagonal_mixed_batch_matches_formula():
    got = offdiagonal_loss(_tensor(MIXED), _labels(MIXED_NORMAL))
    assert got.item() == pytest.approx(ref_offdiagonal(MIXED, MIXED_NORMAL), rel=1e-6)


def test_abnormal_infonce_mixed_batch_matches_formula():
    got = abnormal_infonce_loss(_tensor(MIXED), _labels(MIXED_NORMAL))
    expected = ref_abnormal_infonce(MIXED, MIXED_NORMAL)
    assert expected > 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_offclip_mixed_batch_matches_formula():
    got = offclip_loss(_tensor(MIXED), _labels(MIXED_NORMAL), abnormal_weight=0.7)
    expected = ref_offdiagonal(MIXED, MIXED_NORMAL) + 0.7 * ref_abnormal_infonce(MIXED, MIXED_NORMAL)
    assert got.item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------


def _random_logits(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, batch, generator=generator) * 3


@pytest.mark.parametrize("normal", [[False] * 5, [False, False, True, False, False]])
def test_offdiagonal_equals_infonce_without_normal_pairs(normal):
    logits = _random_logits(5)
    got = offdiagonal_loss(logits, _labels(normal))
    torch.testing.assert_close(got, infonce_loss(logits))


def test_all_abnormal_offclip_is_twice_infonce():
    logits = _random_logits(6, seed=1)
    labels = torch.zeros(6, dtype=torch.bool)
    torch.testing.assert_close(abnormal_infonce_loss(logits, labels), infonce_loss(logits))
    torch.testing.assert_close(offclip_loss(logits, labels), 2 * infonce_loss(logits))


def test_all_normal_batch():
    logits = _random_logits(5, seed=2)
    labels = torch.ones(5, dtype=torch.bool)
    # every cell is a positive: each row's loss is logsumexp(row) - mean(row)
    rows = (torch.logsumexp(logits, 1) - logits.mean(1)).mean()
    cols = (torch.logsumexp(logits, 0) - logits.mean(0)).mean()
    torch.testing.assert_close(offdiagonal_loss(logits, labels), 0.5 * (rows + cols))
    assert abnormal_infonce_loss(logits, labels).item() == 0.0
    torch.testing.assert_close(offclip_loss(logits, labels), offdiagonal_loss(logits, labels))


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 2.5])
def test_offclip_is_offdiagonal_plus_weighted_abnormal(weight):
    logits = _random_logits(7, seed=3)
    labels = _labels([True, False, True, True, False, False, True])
    expected = offdiagonal_loss(logits, labels) + weight * abnormal_infonce_loss(logits, labels)
    torch.testing.assert_close(offclip_loss(logits, labels, abnormal_weight=weight), expected)
    torch.testing.assert_close(get_loss("offclip", abnormal_weight=weight)(logits, labels), expected)


def test_abnormal_term_ignores_normal_rows_and_columns():
    logits = _random_logits(5, seed=4)
    labels = _labels([True, False, False, True, False])
    changed = logits.clone()
    changed[0] += 10.0  # a normal row
    changed[:, 3] -= 7.0  # a normal column
    torch.testing.assert_close(
        abnormal_infonce_loss(changed, labels), abnormal_infonce_loss(logits, labels)
    )


def test_registry_infonce_ignores_labels():
    logits = _random_logits(4, seed=5)
    for labels in ([True] * 4, [False] * 4, [True, False, True, False]):
        torch.testing.assert_close(LOSSES["infonce"](logits, _labels(labels)), infonce_loss(logits))
    torch.testing.assert_close(get_loss("infonce")(logits, _labels([True] * 4)), infonce_loss(logits))
    assert set(LOSSES) == {"offclip", "infonce"}


# ----------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------


def test_offdiagonal_rewards_similar_normal_pairs():
    """Raising a normal-normal off-diagonal logit lowers OFF-CLIP's loss but raises InfoNCE's."""
    logits = _random_logits(4, seed=6)
    labels = _labels([True, False, True, False])
    boosted = logits.clone()
    boosted[0, 2] += 4.0
    boosted[2, 0] += 4.0
    assert offdiagonal_loss(boosted, labels) < offdiagonal_loss(logits, labels)
    assert infonce_loss(boosted) > infonce_loss(logits)


def test_offdiagonal_still_penalises_normal_abnormal_confusion():
    logits = _random_logits(4, seed=7)
    labels = _labels([True, False, True, False])
    confused = logits.clone()
    confused[0, 1] += 4.0  # normal image close to an abnormal report
    assert offdiagonal_loss(confused, labels) > offdiagonal_loss(logits, labels)


def test_permutation_invariance():
    logits = _random_logits(6, seed=8)
    labels = _labels([True, False, True, True, False, False])
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    permuted, permuted_labels = logits[perm][:, perm], labels[perm]
    for name in ("offclip", "infonce"):
        fn = get_loss(name)
        torch.testing.assert_close(fn(permuted, permuted_labels), fn(logits, labels))
    torch.testing.assert_close(
        abnormal_infonce_loss(permuted, permuted_labels), abnormal_infonce_loss(logits, labels)
    )


@pytest.mark.parametrize(
    "labels",
    [[True], [False], [True] * 4, [False] * 4, [True, False, False, True]],
    ids=["single-normal", "single-abnormal", "all-normal", "all-abnormal", "mixed"],
)
def test_gradients_are_finite(labels):
    batch = len(labels)
    logits = (_random_logits(batch, seed=9) * 30).requires_grad_(True)  # large logits too
    loss = offclip_loss(logits, _labels(labels))
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if batch > 1:
        assert logits.grad.abs().sum() > 0


def test_single_pair_losses_are_zero():
    logits = torch.tensor([[5.0]])
    for labels in ([True], [False]):
        assert offclip_loss(logits, _labels(labels)).item() == pytest.approx(0.0, abs=1e-7)


def test_zero_abnormal_term_keeps_graph_device_and_dtype():
    logits = _random_logits(3, seed=10).double().requires_grad_(True)
    zero = abnormal_infonce_loss(logits, torch.ones(3, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.dtype == torch.float32 and zero.requires_grad
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_works_under_autocast_in_float32():
    logits = _random_logits(5, seed=11).to(torch.bfloat16)
    labels = _labels([True, True, False, False, True])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = offclip_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, offclip_loss(logits.float(), labels))


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def test_rejects_non_square_logits():
    with pytest.raises(ValueError, match="square"):
        infonce_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="square"):
        offclip_loss(torch.zeros(4), torch.zeros(4, dtype=torch.bool))


def test_rejects_empty_and_integer_logits():
    with pytest.raises(ValueError, match="at least one"):
        infonce_loss(torch.zeros(0, 0))
    with pytest.raises(TypeError, match="floating-point"):
        infonce_loss(torch.zeros(2, 2, dtype=torch.long))


def test_rejects_bad_labels():
    logits = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="3 labels"):
        offdiagonal_loss(logits, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.bool"):
        offclip_loss(logits, torch.tensor([1, 0, 1]))
    with pytest.raises(TypeError, match="torch.bool"):
        LOSSES["infonce"](logits, torch.tensor([1, 0, 1]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        abnormal_infonce_loss(logits, [True, False, True])


def test_get_loss_rejects_unknown_names_and_negative_weight():
    with pytest.raises(ValueError, match="infonce.*offclip"):
        get_loss("triplet")
    with pytest.raises(ValueError, match="abnormal_weight"):
        get_loss("offclip", abnormal_weight=-1.0)

"""Contrastive losses for image-report pairs: CLIP's InfoNCE and the OFF-CLIP objective.

Every loss takes ``logits``, a B x B tensor whose row ``i`` is image ``i`` and column ``j`` is
text ``j``, already multiplied by the learned temperature, and ``is_normal``, a bool tensor of B
labels saying which pairs are *normal* (no finding).

OFF-CLIP changes CLIP in two ways:

* **off-diagonal term** — normal reports all say roughly the same thing ("no acute
  cardiopulmonary process"), so pushing normal image ``i`` away from normal text ``j`` is a false
  negative. Every (normal, normal) cell therefore counts as a positive, next to the diagonal;
  each row's loss is the mean negative log-probability over its positives.
* **abnormal InfoNCE term** — plain InfoNCE restricted to the abnormal rows and columns, so the
  abnormal pairs are still contrasted one against another.

``offclip_loss = offdiagonal_loss + abnormal_weight * abnormal_infonce_loss``.

All computations run in float32 (safe under autocast) and use ``log_softmax`` for stability.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "LossFn",
    "abnormal_infonce_loss",
    "get_loss",
    "infonce_loss",
    "offclip_loss",
    "offdiagonal_loss",
]


class LossFn(Protocol):
    """The uniform signature of the registry: ``fn(logits, is_normal) -> scalar tensor``."""

    def __call__(self, logits: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    """Return ``logits`` as float32 after checking it is a non-empty square matrix."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be a square B x B matrix, got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one pair (B >= 1), got an empty batch")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    return logits.float()


def _check_labels(is_normal: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Check ``is_normal`` is a bool vector of length ``batch_size``."""
    if not isinstance(is_normal, torch.Tensor):
        raise TypeError(f"is_normal must be a torch.Tensor, got {type(is_normal).__name__}")
    if is_normal.dtype != torch.bool:
        raise TypeError(f"is_normal must have dtype torch.bool, got {is_normal.dtype}")
    if is_normal.dim() != 1 or is_normal.shape[0] != batch_size:
        raise ValueError(
            f"is_normal must be a vector of {batch_size} labels (one per pair), got shape {tuple(is_normal.shape)}"
        )
    return is_normal


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss: ½·[CE(logits, arange B) + CE(logitsᵀ, arange B)]."""
    logits = _check_logits(logits)
    targets = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, targets)
    text_to_image = F.cross_entropy(logits.t(), targets)
    return 0.5 * (image_to_text + text_to_image)


def _positives_mask(is_normal: torch.Tensor) -> torch.Tensor:
    """B x B bool mask of positives: the diagonal plus every (normal, normal) cell."""
    eye = torch.eye(is_normal.shape[0], dtype=torch.bool, device=is_normal.device)
    return eye | (is_normal[:, None] & is_normal[None, :])


def _multi_positive_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −(1/|P_i|)·Σ_{j∈P_i} log_softmax(logits[i])[j]."""
    log_probs = F.log_softmax(logits, dim=1)
    weights = positives.to(log_probs.dtype)
    # masked_fill rather than multiply so that a -inf log-prob outside P_i cannot give 0 * inf = nan
    per_row = -(log_probs.masked_fill(~positives, 0.0)).sum(dim=1) / weights.sum(dim=1)
    return per_row.mean()


def offdiagonal_loss(logits: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """OFF-CLIP's off-diagonal term: normal-normal cells count as positives, both directions.

    With no normal pair (or a single one) the positives are just the diagonal and this equals
    :func:`infonce_loss`.
    """
    logits = _check_logits(logits)
    is_normal = _check_labels(is_normal, logits.shape[0]).to(logits.device)
    positives = _positives_mask(is_normal)  # symmetric, so the transpose direction reuses it
    image_to_text = _multi_positive_ce(logits, positives)
    text_to_image = _multi_positive_ce(logits.t(), positives.t())
    return 0.5 * (image_to_text + text_to_image)


def abnormal_infonce_loss(logits: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """:func:`infonce_loss` on the abnormal rows and columns only.

    Returns a zero that stays attached to the graph (same device and dtype) when the batch has
    no abnormal pair, so ``loss.backward()`` still works.
    """
    logits = _check_logits(logits)
    is_normal = _check_labels(is_normal, logits.shape[0]).to(logits.device)
    abnormal = ~is_normal
    if not bool(abnormal.any()):
        return logits.sum() * 0.0
    return infonce_loss(logits[abnormal][:, abnormal])


def offclip_loss(logits: torch.Tensor, is_normal: torch.Tensor, abnormal_weight: float = 1.0) -> torch.Tensor:
    """The OFF-CLIP objective: off-diagonal term + ``abnormal_weight`` × abnormal InfoNCE."""
    if abnormal_weight < 0:
        raise ValueError(f"abnormal_weight must be >= 0, got {abnormal_weight}")
    off_diagonal = offdiagonal_loss(logits, is_normal)
    if abnormal_weight == 0:
        return off_diagonal
    return off_diagonal + abnormal_weight * abnormal_infonce_loss(logits, is_normal)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def _infonce_ignoring_labels(logits: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """InfoNCE with the registry's signature; ``is_normal`` is validated, then ignored."""
    _check_labels(is_normal, _check_logits(logits).shape[0])
    return infonce_loss(logits)


LOSSES: dict[str, LossFn] = {
    "offclip": offclip_loss,
    "infonce": _infonce_ignoring_labels,
}


def get_loss(name: str, abnormal_weight: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the loss called ``name`` as ``fn(logits, is_normal) -> scalar``.

    ``abnormal_weight`` applies to ``"offclip"`` only. Unknown names raise a ValueError that
    lists the available ones.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}")
    if name == "offclip":
        if abnormal_weight < 0:
            raise ValueError(f"abnormal_weight must be >= 0, got {abnormal_weight}")

        def loss(logits: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
            return offclip_loss(logits, is_normal, abnormal_weight=abnormal_weight)

        loss.__name__ = f"offclip_loss(abnormal_weight={abnormal_weight})"
        return loss
    return LOSSES[name]

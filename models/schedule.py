"""The trainer's optimizer groups and learning-rate schedule (:mod:`offclip.models.train`):
AdamW parameter groups per tower and decay, warm-up then cosine decay or ReduceLROnPlateau."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch

from offclip.pipeline.numerics import warmup_factor


class _PlateauSettings(TypedDict):
    factor: float
    patience: int


#: ReduceLROnPlateau settings of schedule="plateau"
PLATEAU: _PlateauSettings = {"factor": 0.5, "patience": 1}


def param_groups(model: torch.nn.Module, hyper: dict) -> list[dict]:
    """AdamW groups: (text tower | the rest) x (decayed | not decayed: tensors with < 2 dims)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower = "text" if name.startswith("text_model.") else "vision"
        groups.setdefault((tower, param.ndim >= 2), []).append(param)
    out = []
    for (tower, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "name": f"{tower}{'' if decay else '_no_decay'}",
                "lr": hyper.get("text_lr", hyper["lr"]) if tower == "text" else hyper["vision_lr"],
                "weight_decay": hyper["weight_decay"] if decay else 0.0,
            }
        )
    return out


class Schedule:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps`` (stepped per
    batch), or, with ``plateau``, ReduceLROnPlateau on the epoch's mean loss (stepped per epoch,
    once warmup is over). ``text_warmup_steps`` (default ``warmup_steps``): the warm-up of the
    parameter groups named ``text*`` (the text tower's own)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        warmup_steps: int,
        total_steps: int,
        text_warmup_steps: int | None = None,
    ):
        self.kind, self.warmup, self.total = kind, max(0, int(warmup_steps)), max(1, int(total_steps))
        self.text_warmup = self.warmup if text_warmup_steps is None else max(0, int(text_warmup_steps))
        self.steps = 0
        lambdas: Callable[[int], float] | list[Callable[[int], float]]
        if self.text_warmup == self.warmup:
            lambdas = self._factor
        else:
            lambdas = [
                self._text_factor if str(g.get("name", "")).startswith("text") else self._factor
                for g in optimizer.param_groups
            ]
        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", **PLATEAU) if kind == "plateau" else None
        )

    def _factor(self, step: int) -> float:  # the shared warm-up factor (pipeline.numerics)
        return warmup_factor(step, self.warmup, self.total, "cosine" if self.kind == "cosine" else "constant")

    def _text_factor(self, step: int) -> float:
        return warmup_factor(step, self.text_warmup, self.total, "cosine" if self.kind == "cosine" else "constant")

    @property
    def longest_warmup(self) -> int:
        return max(self.warmup, self.text_warmup)

    def step_batch(self) -> None:
        # plateau: the per-step scheduler only runs the warmup, so it never undoes a plateau cut
        if self.kind == "cosine" or self.steps < self.longest_warmup:
            self.per_step.step()
        self.steps += 1

    def step_epoch(self, mean_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.longest_warmup:
            self.plateau.step(mean_loss)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "per_step": self.per_step.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])

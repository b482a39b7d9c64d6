"""fp32 master weights for the plain-torch path when the model is bf16 / fp16 (DeepSpeed keeps its own).

Why: AdamW stepping bf16 parameters in place rounds each update to bf16. A bf16 weight w has a rounding step of
about |w| * 2^-8, and Adam's step is about lr; at lr 1e-6 any weight above ~2.6e-4 gets a step below half a rounding
step and does not change at all (measured, tests/test_master_weights.py: after 2 AdamW steps at lr 1e-6 only ~2% of
N(0, 0.02) bf16 weights changed). Here the optimiser steps an fp32 copy of each trainable parameter (the master),
and the model's bf16 parameter is set to the master rounded to bf16 after each step, as mixed-precision training
does (Micikevicius et al. 2018, "Mixed Precision Training"; DeepSpeed's bf16 optimiser).

Resume is exact: ``state_dict`` holds the inner optimiser's state AND the master copies (the bf16 model in the
checkpoint cannot give them back: the rounding is lost), and ``load_state_dict`` restores both and re-derives the
model's parameters from the masters.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def needs_master_weights(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when any trainable parameter is bf16 / fp16 (a float32 model gets no wrapper: bit-identical to before)."""
    return any(p.dtype in LOW_PRECISION for p in params)


class MasterWeightsOptimizer:
    """An optimiser over fp32 copies of ``params`` whose ``step`` writes the result back, rounded, into ``params``.

    ``make_inner(masters)`` builds the real optimiser (e.g. ``torch.optim.AdamW``) over the fp32 masters.
    The model's gradients (bf16) are copied into the masters' fp32 ``.grad`` at each step; clipping
    (``torch.nn.utils.clip_grad_norm_`` on the model's parameters, as `Runtime.step` does) happens before ``step``.
    ``param_groups`` are the inner optimiser's, so the learning-rate schedule reaches it unchanged."""

    def __init__(self, params: Iterable[torch.nn.Parameter],
                 make_inner: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]):
        self.params: list[torch.nn.Parameter] = list(params)
        self.masters: list[torch.nn.Parameter] = [
            torch.nn.Parameter(p.detach().to(torch.float32).clone(), requires_grad=True) for p in self.params]
        self.inner = make_inner(self.masters)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.detach().to(torch.float32)
        self.inner.step()
        self._copy_masters_to_model()

    @torch.no_grad()
    def _copy_masters_to_model(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.copy_(m)  # rounds to the model's dtype (round-to-nearest-even)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "masters": [m.detach().clone() for m in self.masters],
                "kind": "fp32_master_weights"}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "fp32_master_weights":
            raise ValueError("this optimizer state was not saved with fp32 master weights (a float32 run, or an older "
                             "checkpoint): resume it with the dtype it was trained with")
        saved = state["masters"]
        if len(saved) != len(self.masters) or any(s.shape != m.shape for s, m in zip(saved, self.masters)):
            raise ValueError(f"the checkpoint's master weights ({len(saved)} tensors) do not match the model's "
                             f"trainable parameters ({len(self.masters)})")
        for m, s in zip(self.masters, saved):
            m.copy_(s)
        self.inner.load_state_dict(state["inner"])
        self._copy_masters_to_model()

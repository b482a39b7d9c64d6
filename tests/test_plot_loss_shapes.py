"""`mhpo-vl plot-loss-shapes`: the PNGs are written, and the curves they draw are the losses' real gradients."""
from __future__ import annotations

import torch

from mhpo_vl.cli import main
from mhpo_vl.losses.mhpo import grad_multiplier
from mhpo_vl.plots.loss_shapes import loss_gradient_multiplier


def test_command_writes_three_pngs(tmp_path):
    assert main(["plot-loss-shapes", str(tmp_path / "shapes")]) == 0
    for name in ("lfm.png", "dhp.png", "grad_multipliers.png"):
        data = (tmp_path / "shapes" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name


def test_plotted_multipliers_are_the_losses_gradients():
    log_r = torch.tensor([-1.0, -0.1, 0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    r = log_r.exp()
    # MHPO: the curve equals M(r) for either sign of A
    for advantage in (1.0, -1.0):
        torch.testing.assert_close(loss_gradient_multiplier("mhpo", log_r, advantage), grad_multiplier(log_r))
    # GRPO, A > 0: M = r inside r <= 1.2, 0 beyond (r = e^0.5 = 1.65, e^1 = 2.72 are clipped)
    expected = torch.where(r <= 1.2, r, torch.zeros_like(r))
    torch.testing.assert_close(loss_gradient_multiplier("grpo", log_r, 1.0), expected)
    # GSPO with 4 tokens at the same ratio: s = r; A < 0: M = s for s >= 1 - 3e-4, 0 below
    expected = torch.where(r >= 1 - 3e-4, r, torch.zeros_like(r))
    torch.testing.assert_close(loss_gradient_multiplier("gspo", log_r, -1.0, tokens_per_row=4), expected)


"""Shapes of the losses, drawn from the loss module itself (no formula is re-implemented here).

- ``lfm.png``: the paper's Figure 2 analogue: psi(r) = c tanh(log r / c) and d psi / d r for several c, against
  the identity log r (and its derivative 1/r), on a log r axis.
- ``dhp.png``: Figure 3 analogue: the hazard zeta(psi(r)) and the survival weight exp(-zeta) against log r, for
  the default asymmetric hazards and a few symmetric (lambda, k) pairs.
- ``grad_multipliers.png``: M(r) = (d objective / d log pi_theta) / A for all five losses side by side, for A > 0
  and A < 0, obtained by autograd through ``build_loss`` on one token per row (GSPO: every token of the row at
  the same ratio, so its sequence ratio is r).

matplotlib is imported inside the functions (``import mhpo_vl`` stays light) and only its object API is used
(``Figure`` + Agg canvas), so no global backend is switched.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mhpo_vl.losses import build_loss
from mhpo_vl.losses.mhpo import DEFAULTS, dhp_zeta, grad_multiplier_bound, lfm_psi, survival_weight

LOSS_ORDER = ("grpo", "dapo", "gspo", "sapo", "mhpo")
C_VALUES = (0.5, 1.0, 1.5, 2.0)
# (label, k_pos, lambda_pos, k_neg, lambda_neg): the paper default and symmetric pairs around Table 3's best.
HAZARD_SETTINGS = (
    ("default: (l+,k+)=(1.0,1.5), (l-,k-)=(0.8,2.0)", 1.5, 1.0, 2.0, 0.8),
    ("symmetric (l,k)=(0.8,3.0)", 3.0, 0.8, 3.0, 0.8),
    ("symmetric (l,k)=(1.0,1.0)", 1.0, 1.0, 1.0, 1.0),
    ("symmetric (l,k)=(1.5,2.0)", 2.0, 1.5, 2.0, 1.5),
)


def _figure(width: float, height: float, cols: int, rows: int = 1, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes


def loss_gradient_multiplier(
    name: str, log_ratio_G: torch.Tensor, advantage: float, tokens_per_row: int = 1
) -> torch.Tensor:
    """M(r) per grid point: -(d loss / d logp) * G * T / A for rows of T tokens all at log-ratio log_ratio_G[g].

    With seq-mean-token-mean over G rows of T tokens, loss = -(1/(G T)) sum J, so dJ/dlogp = -G T d loss/dlogp.
    """
    G = log_ratio_G.numel()
    log_ratio_GT = log_ratio_G.reshape(G, 1).to(torch.float64).expand(G, tokens_per_row)
    old_GT = torch.full_like(log_ratio_GT, -1.0)
    logprobs_GT = (old_GT + log_ratio_GT).clone().requires_grad_(True)
    fn = build_loss(name, aggregation="seq-mean-token-mean")
    advantages_G = torch.full((G,), advantage, dtype=torch.float64)
    loss = fn(logprobs_GT, old_GT, advantages_G, torch.ones_like(old_GT)).loss
    (grad_GT,) = torch.autograd.grad(loss, logprobs_GT)
    return -(grad_GT[:, 0] * G * tokens_per_row / advantage).detach()


def draw_lfm(path: Path) -> Path:
    r = torch.logspace(-2, 2, 801, dtype=torch.float64)
    fig, axes = _figure(11, 4.2, 2)
    ax_psi, ax_grad = axes[0]
    for c in C_VALUES:
        psi = lfm_psi(torch.log(r), c)
        ax_psi.plot(r, psi, label=f"c = {c:g}")
        r_leaf = r.clone().requires_grad_(True)
        lfm_psi(torch.log(r_leaf), c).sum().backward()
        ax_grad.plot(r, r_leaf.grad, label=f"c = {c:g}")
    ax_psi.plot(r, torch.log(r), "k--", lw=1, label="log r (no modulation)")
    # the paper's marks for c = 1: psi(1/2) = -psi(2)
    marks = torch.tensor([0.5, 2.0], dtype=torch.float64)
    ax_psi.plot(marks, lfm_psi(torch.log(marks), 1.0), "ko", ms=5, label="psi(1/2) = -psi(2), c = 1")
    ax_grad.plot(r, 1 / r, "k--", lw=1, label="d log r / dr = 1/r")
    ax_grad.plot([1.0], [1.0], "ko", ms=5, label="d psi/dr = 1 at r = 1")
    ax_psi.set(title="(a) LFM  psi(r) = c tanh(log r / c)", xlabel="importance ratio r (log scale)", ylabel="psi(r)",
               xscale="log", ylim=(-2.6, 2.6))
    ax_grad.set(title="(b) derivative  d psi / dr = sech^2(log r / c) / r", xlabel="importance ratio r (log scale)",
                ylabel="d psi / dr", xscale="log", ylim=(0, 2.5))
    for ax in (ax_psi, ax_grad):
        ax.axvline(1.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Log-Fidelity Modulator (MHPO, Fig. 2): smooth, bounded in [-c, c], identity-like near r = 1")
    fig.savefig(path, dpi=120)
    return path


def draw_dhp(path: Path, c: float = DEFAULTS["c"]) -> Path:
    log_r = torch.linspace(-4, 4, 801, dtype=torch.float64)
    psi = lfm_psi(log_r, c)
    fig, axes = _figure(11, 4.2, 2)
    ax_zeta, ax_w = axes[0]
    for i, (label, k_pos, lam_pos, k_neg, lam_neg) in enumerate(HAZARD_SETTINGS):
        hazards = dict(k_pos=k_pos, lambda_pos=lam_pos, k_neg=k_neg, lambda_neg=lam_neg)
        style = dict(lw=2.4 if i == 0 else 1.4, ls="-" if i == 0 else "--")
        ax_zeta.plot(log_r, dhp_zeta(psi, **hazards), label=label, **style)
        ax_w.plot(log_r, survival_weight(psi, **hazards), label=label, **style)
    ax_zeta.set(title=f"(a) DHP hazard  zeta(psi(r)), c = {c:g}", xlabel="log r", ylabel="zeta")
    ax_w.set(title="(b) survival weight  w = exp(-zeta) in (0, 1]", xlabel="log r", ylabel="w", ylim=(0, 1.02))
    for ax in (ax_zeta, ax_w):
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
    ax_zeta.legend(fontsize=8, loc="upper center")
    ax_w.legend(fontsize=8, loc="upper right")
    ax_zeta.set_ylim(0, 11)
    fig.suptitle("Decoupled Hazard Penalty (MHPO, Fig. 3): the default penalises shrinking (r < 1) harder than growing")
    fig.savefig(path, dpi=120)
    return path


def draw_grad_multipliers(path: Path) -> Path:
    log_r = torch.linspace(-3, 3, 1201, dtype=torch.float64)
    r = torch.exp(log_r)
    fig, axes = _figure(20, 4.8, len(LOSS_ORDER))
    for ax, name in zip(axes[0], LOSS_ORDER):
        tokens = 4 if name == "gspo" else 1
        for advantage, colour, style in ((1.0, "tab:blue", "-"), (-1.0, "tab:red", "--")):
            M = loss_gradient_multiplier(name, log_r, advantage, tokens_per_row=tokens)
            ax.plot(r, M, color=colour, ls=style, lw=1.8, label=f"A {'>' if advantage > 0 else '<'} 0")
        params = build_loss(name).params
        shown = [f"{k}={v:g}" for k, v in params.items() if isinstance(v, float) and not (k == "c_dual")]
        subtitle = "\n".join(", ".join(shown[i : i + 3]) for i in range(0, len(shown), 3))
        if name == "mhpo":
            bound = grad_multiplier_bound(params["c"])
            ax.axhline(bound, color="k", ls=":", lw=1, label=f"bound exp(c^2/4) = {bound:.3f}")
        title = f"{name.upper()} (default {build_loss(name).aggregation})\n{subtitle}"
        ax.set(title=title, xlabel="importance ratio r (log scale)", xscale="log")
        ax.axvline(1.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("M(r) = (d objective / d log pi) / A")
    fig.suptitle(
        "Gradient multiplier per token, M(r) = (d objective / d log pi) / A: GRPO/DAPO drop it to 0 outside the trust "
        "region, GSPO (whole sequence at ratio r) keeps a 3e-4 band, SAPO gates it softly, MHPO is smooth and bounded"
    )
    fig.savefig(path, dpi=110)
    return path


def draw_all(out_dir: str | Path) -> list[Path]:
    """Write lfm.png, dhp.png and grad_multipliers.png into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [draw_lfm(out / "lfm.png"), draw_dhp(out / "dhp.png"), draw_grad_multipliers(out / "grad_multipliers.png")]

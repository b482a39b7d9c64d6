"""Every property METHOD.md states about the losses, checked numerically (float64, CPU).

M(r) is recomputed here from its formula (exp(psi - zeta) / cosh^2(log r / c)), never from the module's helpers,
when it is the thing being compared.
"""
from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.losses import build_loss
from mhpo_vl.losses.mhpo import (
    dhp_zeta,
    grad_multiplier,
    grad_multiplier_bound,
    lfm_grad_multiplier,
    lfm_psi,
    on_policy_factor,
    survival_weight,
)

torch.set_num_threads(1)
F64 = torch.float64

HAZARDS = [  # (c, k_pos, lambda_pos, k_neg, lambda_neg)
    (1.5, 1.5, 1.0, 2.0, 0.8),  # paper defaults
    (1.5, 3.0, 0.8, 3.0, 0.8),  # Table 3 best symmetric
    (0.5, 1.0, 1.0, 1.0, 1.0),
    (2.0, 0.5, 3.0, 0.7, 5.0),  # weak hazards: M gets closest to the bound
    (4.0, 2.0, 0.3, 1.2, 0.4),
    (0.2, 5.0, 2.0, 5.0, 2.0),
]
LOG_R_GRID = torch.linspace(-50, 50, 20001, dtype=F64)


def formula_multiplier(log_r, c, kp, lp, kn, ln):
    psi = c * torch.tanh(log_r / c)
    zeta = (torch.log1p(psi.exp()) / lp) ** kp + (torch.log1p((-psi).exp()) / ln) ** kn
    return torch.exp(psi - zeta) / torch.cosh(log_r / c) ** 2


def per_token_gradient(name, log_r, adv, **params):
    """d loss / d logp for single-token rows (seq-mean-token-mean over G rows, rescaled by G)."""
    G = log_r.shape[0]
    logprobs = (log_r - 2.0).reshape(G, 1).clone().requires_grad_(True)
    old = torch.full((G, 1), -2.0, dtype=F64)
    out = build_loss(name, aggregation="seq-mean-token-mean", **params)(logprobs, old, adv, torch.ones(G, 1))
    out.loss.backward()
    return logprobs.grad.reshape(G) * G


# ---------------------------------------------------------------------------------------------------- LFM (psi)


@pytest.mark.parametrize("c", [0.5, 1.0, 1.5, 2.0, 7.0])
def test_psi_reciprocal_antisymmetry_and_bound(c):
    r = torch.logspace(-30, 30, 2001, dtype=F64)
    torch.testing.assert_close(lfm_psi(torch.log(1 / r), c), -lfm_psi(torch.log(r), c), atol=1e-14, rtol=0)
    extreme = torch.tensor([-1e5, -1e3, -50.0, 50.0, 1e3, 1e5], dtype=F64)
    for values in (lfm_psi(torch.log(r), c), lfm_psi(extreme, c)):
        assert values.abs().max() <= c
    # the paper's Figure 2 marks: c = 1 gives psi(1/2) = -psi(2) = -tanh(ln 2) = -0.6
    assert lfm_psi(torch.tensor(math.log(0.5), dtype=F64), 1.0).item() == pytest.approx(-0.6, abs=1e-12)


@pytest.mark.parametrize("c", [0.5, 1.0, 1.5, 2.0])
def test_psi_derivative_is_one_at_r_equal_one_and_matches_eq6(c):
    r = torch.tensor([1.0, 0.3, 2.5, 40.0], dtype=F64, requires_grad=True)
    lfm_psi(torch.log(r), c).sum().backward()
    assert r.grad[0].item() == pytest.approx(1.0, abs=1e-15)
    # Eq. (6): d psi / d r = (1/r) sech^2(log r / c)
    expected = 1 / (r.detach() * torch.cosh(torch.log(r.detach()) / c) ** 2)
    torch.testing.assert_close(r.grad, expected, atol=1e-15, rtol=1e-12)


@pytest.mark.parametrize("c", [0.5, 1.5])
def test_ratio_operator_range(c):
    # exp(psi) lies in [e^-c, e^c]: c = 0.5 -> [0.61, 1.65], c = 1.5 -> [0.22, 4.48]
    values = torch.exp(lfm_psi(LOG_R_GRID, c))
    low, high = {0.5: (0.6065, 1.6487), 1.5: (0.2231, 4.4817)}[c]
    assert values.min().item() == pytest.approx(low, abs=1e-4) and values.max().item() == pytest.approx(high, abs=1e-4)


# ---------------------------------------------------------------------------------------------------- DHP (zeta)


@pytest.mark.parametrize("c,kp,lp,kn,ln", HAZARDS)
def test_survival_weight_in_open_closed_unit_interval(c, kp, lp, kn, ln):
    psi = lfm_psi(LOG_R_GRID, c)
    w = survival_weight(psi, k_pos=kp, lambda_pos=lp, k_neg=kn, lambda_neg=ln)
    assert (w > 0).all() and (w <= 1).all()
    assert (dhp_zeta(psi, kp, lp, kn, ln) > 0).all()


def test_zeta_at_zero_and_on_policy_factor():
    # zeta(0) = (ln2/1.0)^1.5 + (ln2/0.8)^2 = 0.577083 + 0.750708 = 1.327791; exp(-1.327791) = 0.265062
    zeta0 = dhp_zeta(torch.zeros((), dtype=F64)).item()
    assert zeta0 == pytest.approx(math.log(2) ** 1.5 + (math.log(2) / 0.8) ** 2, abs=1e-14)
    assert zeta0 == pytest.approx(1.328, abs=1e-3)
    # on-policy (logprobs == old): MHPO's loss and gradient are 0.265 x GRPO's, and the metric reports it
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(5, 4, generator=g, dtype=F64)
    adv = torch.randn(5, generator=g, dtype=F64)
    mask = torch.ones(5, 4)
    results = {}
    for name in ("grpo", "mhpo"):
        lp = old.clone().requires_grad_(True)
        out = build_loss(name)(lp, old, adv, mask)
        out.loss.backward()
        results[name] = (out, lp.grad)
    factor = math.exp(-zeta0)
    assert factor == pytest.approx(0.265, abs=1e-3)
    torch.testing.assert_close(results["mhpo"][0].loss, factor * results["grpo"][0].loss, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(results["mhpo"][1], factor * results["grpo"][1], atol=1e-14, rtol=1e-12)
    metrics = results["mhpo"][0].metrics
    assert metrics["survival_weight_mean"].item() == pytest.approx(factor, abs=1e-12)
    assert metrics["grad_multiplier_mean"].item() == pytest.approx(factor, abs=1e-12)


@pytest.mark.parametrize("c,kp,lp,kn,ln", HAZARDS)
def test_hazards_decouple(c, kp, lp, kn, ln):
    # For large positive psi, softplus(-psi) ~ e^-psi -> 0: zeta no longer depends on the negative-branch
    # parameters and equals the positive Weibull hazard (psi / lambda_pos)^k_pos; and vice versa.
    big = torch.tensor([40.0, 80.0], dtype=F64)
    zeta_pos = dhp_zeta(big, kp, lp, kn, ln)
    torch.testing.assert_close(zeta_pos, dhp_zeta(big, kp, lp, 9.0, 0.01), rtol=1e-9, atol=0)
    torch.testing.assert_close(zeta_pos, (big / lp) ** kp, rtol=1e-9, atol=0)
    zeta_neg = dhp_zeta(-big, kp, lp, kn, ln)
    torch.testing.assert_close(zeta_neg, dhp_zeta(-big, 9.0, 0.01, kn, ln), rtol=1e-9, atol=0)
    torch.testing.assert_close(zeta_neg, (big / ln) ** kn, rtol=1e-9, atol=0)


def test_default_hazard_penalises_negative_shifts_harder():
    # Figure 3: (lambda-, k-) = (0.8, 2.0) suppresses shifts down more than (1.0, 1.5) shifts up of equal |psi|
    psi = torch.linspace(0.2, 1.5, 14, dtype=F64)
    assert (dhp_zeta(-psi) > dhp_zeta(psi)).all()


# ------------------------------------------------------------------------------------------ gradient multiplier


@pytest.mark.parametrize("c,kp,lp,kn,ln", HAZARDS)
def test_autograd_gradient_equals_M_times_A_and_is_bounded(c, kp, lp, kn, ln):
    params = dict(c=c, k_pos=kp, lambda_pos=lp, k_neg=kn, lambda_neg=ln)
    log_r = LOG_R_GRID
    expected_M = formula_multiplier(log_r, c, kp, lp, kn, ln)
    for sign in (1.0, -1.0):
        adv = torch.full_like(log_r, sign * 1.7)
        grad = per_token_gradient("mhpo", log_r, adv, **params)
        # d loss / d logp = -dJ/dlogp = -M(r) A
        torch.testing.assert_close(grad, -expected_M * adv, atol=1e-14, rtol=1e-10)
    torch.testing.assert_close(grad_multiplier(log_r, c, k_pos=kp, lambda_pos=lp, k_neg=kn, lambda_neg=ln),
                               expected_M, atol=1e-15, rtol=1e-12)
    bound = math.exp(c * c / 4)
    assert grad_multiplier_bound(c) == pytest.approx(bound)
    assert expected_M.max().item() <= bound
    # the looser intermediate bound of Eq. (12): exp(psi) sech^2 <= exp(c^2/4), hazard-free
    assert (torch.exp(lfm_psi(log_r, c)) / torch.cosh(log_r / c) ** 2).max().item() <= bound


def test_bound_value_at_default_c():
    assert grad_multiplier_bound(1.5) == pytest.approx(1.755, abs=1e-3)


def test_stop_gradient_on_psi_inside_zeta():
    # The value's full derivative contains zeta's slope; the semi-gradient (Eq. 10/11) drops it:
    #   d value / d log r = exp(psi - zeta) (1 - zeta'(psi)) sech^2 A      (finite differences see this)
    #   returned gradient = exp(psi - zeta) sech^2 A = M(r) A               (sg[psi] inside zeta)
    # with zeta'(p) = k+ (s(p)/l+)^(k+ - 1) sigmoid(p)/l+ - k- (s(-p)/l-)^(k- - 1) sigmoid(-p)/l-.
    c, kp, lp, kn, ln = 1.5, 1.5, 1.0, 2.0, 0.8
    log_r = torch.tensor([-1.3, -0.4, 0.0, 0.25, 0.9, 2.0], dtype=F64)
    adv = torch.tensor([1.0, -0.5, 2.0, 1.0, -1.0, 0.7], dtype=F64)
    fn = build_loss("mhpo", aggregation="seq-mean-token-mean")
    G = log_r.shape[0]

    def loss_at(x):
        return fn((x - 1.0).reshape(G, 1), torch.full((G, 1), -1.0, dtype=F64), adv, torch.ones(G, 1)).loss

    h = 1e-6
    steps = torch.eye(G, dtype=F64) * h
    numerical = torch.stack([(loss_at(log_r + e) - loss_at(log_r - e)) / (2 * h) for e in steps]) * G
    psi = c * torch.tanh(log_r / c)
    sp_pos, sp_neg = torch.log1p(psi.exp()), torch.log1p((-psi).exp())
    dzeta = (kp * (sp_pos / lp) ** (kp - 1) * torch.sigmoid(psi) / lp
             - kn * (sp_neg / ln) ** (kn - 1) * torch.sigmoid(-psi) / ln)
    M = formula_multiplier(log_r, c, kp, lp, kn, ln)
    torch.testing.assert_close(numerical, -M * adv * (1 - dzeta), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(per_token_gradient("mhpo", log_r, adv), -M * adv, atol=1e-14, rtol=1e-12)


# -------------------------------------------------------------------------- on-policy agreement with GRPO


@pytest.mark.parametrize("name", ["gspo", "sapo", "dapo", "mhpo_lfm"])
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_on_policy_gradient_equals_grpo(name, aggregation):
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(6, 7, generator=g, dtype=F64) * 2
    adv = torch.randn(6, generator=g, dtype=F64)
    mask = (torch.rand(6, 7, generator=g) > 0.3).to(F64)
    grads = {}
    for loss_name in ("grpo", name):
        lp = old.clone().requires_grad_(True)
        build_loss(loss_name, aggregation=aggregation)(lp, old, adv, mask).loss.backward()
        grads[loss_name] = lp.grad
    assert grads["grpo"].abs().max() > 0.01
    torch.testing.assert_close(grads[name], grads["grpo"], atol=1e-14, rtol=1e-12)


def test_sapo_value_on_policy_is_two_over_tau():
    # f(1) = sigmoid(0) * 4 / tau = 2 / tau: A = +1 -> -2/1.0, A = -1 -> +2/1.05
    logp = torch.zeros(2, 1, dtype=F64)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    out = build_loss("sapo", aggregation="token-mean")(logp, logp, adv, torch.ones(2, 1))
    assert out.loss.item() == pytest.approx((-2 / 1.0 + 2 / 1.05) / 2, abs=1e-14)


def test_grpo_kills_gradient_outside_trust_region_and_mhpo_does_not():
    log_r = torch.tensor([math.log(0.5), math.log(2.0)], dtype=F64)
    # A > 0 beyond 1 + eps_high and A < 0 below 1 - eps_low: GRPO's gradient is 0, MHPO's is not
    grpo = per_token_gradient("grpo", log_r, torch.tensor([-1.0, 1.0], dtype=F64))
    mhpo = per_token_gradient("mhpo", log_r, torch.tensor([-1.0, 1.0], dtype=F64))
    assert (grpo == 0).all() and (mhpo.abs() > 1e-3).all()


# ------------------------------------------------------------------------------- Table 3 variants: diagnostics


def autograd_multiplier(log_r, c, hazards):
    """M(r) = d J / d log r / A by float64 autograd on the formula: exp(psi - sg zeta) psi', or exp(psi) psi'
    without hazard (zeta = 0). Returns (M, survival weight exp(-zeta))."""
    x = log_r.clone().requires_grad_(True)
    psi = c * torch.tanh(x / c)
    if hazards is None:
        zeta = torch.zeros_like(psi)
    else:
        k, lam = hazards
        q = psi.detach()
        zeta = (torch.log1p(q.exp()) / lam) ** k + (torch.log1p((-q).exp()) / lam) ** k
    torch.exp(psi - zeta).sum().backward()
    return x.grad, torch.exp(-zeta)


@pytest.mark.parametrize("name,params,c,hazards", [
    ("mhpo_lfm", {}, 1.5, None), ("mhpo_lfm", {"c": 0.5}, 0.5, None),
    ("mhpo_sym", {}, 1.5, (3.0, 0.8)), ("mhpo_sym", {"k": 1.0, "lam": 2.0}, 1.5, (1.0, 2.0)),
])
def test_table3_variant_diagnostics(name, params, c, hazards):
    log_r = torch.log(torch.tensor([0.02, 0.3, 0.7, 0.95, 1.0, 1.05, 1.5, 2.45, 3.0, 40.0], dtype=F64))
    G = log_r.shape[0]
    M, w = autograd_multiplier(log_r, c, hazards)
    if hazards is None:
        # hazard-free: the survival weight is 1 everywhere and M = exp(psi) psi' = exp(psi) sech^2(log r / c)
        assert (w == 1).all()
        torch.testing.assert_close(M, torch.exp(c * torch.tanh(log_r / c)) / torch.cosh(log_r / c) ** 2,
                                   atol=1e-15, rtol=1e-13)
        torch.testing.assert_close(lfm_grad_multiplier(log_r, c), M, atol=1e-15, rtol=1e-13)
    for sign in (1.0, -1.0):
        adv = torch.full((G,), sign * 0.9, dtype=F64)
        logprobs = (log_r - 2.0).reshape(G, 1).clone().requires_grad_(True)
        out = build_loss(name, **params)(logprobs, torch.full((G, 1), -2.0, dtype=F64), adv, torch.ones(G, 1))
        out.loss.backward()
        torch.testing.assert_close(logprobs.grad.reshape(G) * G, -M * adv, atol=1e-15, rtol=1e-13)
        metrics = out.metrics
        assert metrics["survival_weight_mean"].item() == pytest.approx(w.mean().item(), rel=1e-13, abs=1e-15)
        assert metrics["zeta_mean"].item() == pytest.approx((-torch.log(w)).mean().item(), rel=1e-13, abs=1e-15)
        assert metrics["grad_multiplier_mean"].item() == pytest.approx(M.mean().item(), rel=1e-13)
        assert metrics["grad_multiplier_max"].item() == pytest.approx(M.max().item(), rel=1e-13)
    if hazards is None:
        assert metrics["survival_weight_mean"].item() == 1.0 and metrics["zeta_mean"].item() == 0.0


@pytest.mark.parametrize("c", [0.5, 1.0, 1.5, 2.0, 4.0])
def test_lfm_multiplier_is_one_on_policy_peaks_where_derived_and_is_bounded(c):
    # M(u) = exp(c t)(1 - t^2), t = tanh(u / c), u = log r; dM/dt = 0  <=>  c (1 - t^2) = 2 t
    #   ->  t* = (sqrt(1 + c^2) - 1) / c,  M* = exp(c t*)(1 - t*^2)   (c = 1.5: t* = 0.5352, u* = 0.8961, M* = 1.5925)
    t_star = (math.sqrt(1 + c * c) - 1) / c
    peak = math.exp(c * t_star) * (1 - t_star**2)
    M = lfm_grad_multiplier(LOG_R_GRID, c)
    assert lfm_grad_multiplier(torch.zeros((), dtype=F64), c).item() == 1.0
    u_star = c * math.atanh(t_star)
    assert lfm_grad_multiplier(torch.tensor(u_star, dtype=F64), c).item() == pytest.approx(peak, rel=1e-13)
    assert peak * (1 - 1e-5) <= M.max().item() <= peak * (1 + 1e-14)  # the grid (step 0.005) never exceeds it
    assert LOG_R_GRID[M.argmax()].item() == pytest.approx(u_star, abs=5e-3)
    assert peak <= grad_multiplier_bound(c) and (M >= 0).all()
    if c == 1.5:
        assert peak == pytest.approx(1.5925, abs=1e-4) and c * math.atanh(t_star) == pytest.approx(0.8961, abs=1e-4)


def test_table3_variants_on_policy():
    # on-policy (r = 1): hazard-free MHPO has GRPO's value and gradient; the symmetric (3.0, 0.8) hazards carry
    # exp(-zeta(0)) = exp(-2 (ln 2 / 0.8)^3) = exp(-1.300878) = 0.272293 (defaults: 0.265062)
    g = torch.Generator().manual_seed(4)
    old = -torch.rand(5, 4, generator=g, dtype=F64)
    adv = torch.randn(5, generator=g, dtype=F64)
    mask = torch.ones(5, 4)
    results = {}
    for name in ("grpo", "mhpo_lfm", "mhpo_sym"):
        lp = old.clone().requires_grad_(True)
        out = build_loss(name)(lp, old, adv, mask)
        out.loss.backward()
        results[name] = (out, lp.grad)
    factor = math.exp(-2 * (math.log(2) / 0.8) ** 3)
    assert factor == pytest.approx(0.272293, abs=1e-6)
    assert on_policy_factor(k_pos=3.0, lambda_pos=0.8, k_neg=3.0, lambda_neg=0.8) == pytest.approx(factor, rel=1e-14)
    for name, scale in (("mhpo_lfm", 1.0), ("mhpo_sym", factor)):
        out, grad = results[name]
        torch.testing.assert_close(out.loss, scale * results["grpo"][0].loss, atol=1e-15, rtol=1e-13)
        torch.testing.assert_close(grad, scale * results["grpo"][1], atol=1e-15, rtol=1e-13)
        assert out.metrics["survival_weight_mean"].item() == pytest.approx(scale, rel=1e-13)
        assert out.metrics["grad_multiplier_mean"].item() == pytest.approx(scale, rel=1e-13)

"""Policy losses: hand-computed values, an independent float64 reference, parameter checks, numerical safety.

The reference below is written straight from shared/papers/METHOD.md with plain torch ops, row by row, and imports
nothing from mhpo_vl except ``build_loss`` as the thing under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.losses import LOSSES, build_loss

torch.set_num_threads(1)

F64 = torch.float64
LOSS_NAMES = ("grpo", "dapo", "gspo", "sapo", "mhpo", "mhpo_lfm", "mhpo_sym")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# --------------------------------------------------------------------------------------------------------------
# The 2x3 hand example shared by the hand-computed tests.
#   row 0: A = +1, ratios r = 1.5, 1.0, 0.5     (3 valid tokens)
#   row 1: A = -2, ratios r = 1.1, 0.7, (pad)   (2 valid tokens; the padded logprob is -inf to prove it is ignored)
RATIOS = [[1.5, 1.0, 0.5], [1.1, 0.7, 1.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADVANTAGES = [1.0, -2.0]


def hand_example(name: str, **params):
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.0]], dtype=torch.float64)
    logprobs = (old + torch.tensor(RATIOS, dtype=torch.float64).log()).detach()
    logprobs[1, 2] = -math.inf
    logprobs.requires_grad_(True)
    out = build_loss(name, **params)(logprobs, old, torch.tensor(ADVANTAGES, dtype=torch.float64), torch.tensor(MASK))
    out.loss.backward()
    return out, logprobs.grad


def test_grpo_hand_computed():
    # objective min(r A, clip(r, 0.8, 1.2) A):
    #   row 0 (A=1):  r=1.5 -> min(1.5, 1.2)=1.2 (clipped high);  r=1 -> 1;  r=0.5 -> min(0.5, 0.8)=0.5
    #                 sum 2.7, row mean 0.9
    #   row 1 (A=-2): r=1.1 -> min(-2.2, -2.2)=-2.2;  r=0.7 -> min(-1.4, 0.8*-2=-1.6)=-1.6 (clipped low)
    #                 sum -3.8, row mean -1.9
    #   seq-mean-token-mean: loss = -(0.9 - 1.9)/2 = 0.5
    # gradient d loss / d logp = -(1/2)(1/T_i) * r A on unclipped tokens, 0 on clipped ones:
    #   row 0: [0, -(1/6)*1, -(1/6)*0.5] = [0, -0.166667, -0.083333];  row 1: [0.25*2.2=0.55, 0, 0]
    # clip fractions over 5 valid tokens: high (r>1.2, A>0) 1/5, low (r<0.8, A<0) 1/5
    out, grad = hand_example("grpo")
    assert out.loss.item() == pytest.approx(0.5, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0, -1 / 6, -1 / 12], [0.55, 0, 0]], dtype=torch.float64))
    assert out.metrics["clip_frac_high"].item() == pytest.approx(0.2)
    assert out.metrics["clip_frac_low"].item() == pytest.approx(0.2)
    # token-mean: -(2.7 - 3.8)/5 = 0.22
    out, _ = hand_example("grpo", aggregation="token-mean")
    assert out.loss.item() == pytest.approx(0.22, abs=1e-12)
    # ratio metrics over the valid tokens: mean (1.5+1+0.5+1.1+0.7)/5 = 0.96, min 0.5, max 1.5
    assert out.metrics["ratio_mean"].item() == pytest.approx(0.96)
    assert out.metrics["ratio_min"].item() == pytest.approx(0.5)
    assert out.metrics["ratio_max"].item() == pytest.approx(1.5)


def test_grpo_eps_shorthand_and_dual_clip_hand_computed():
    # eps=0.5 sets both sides: clip(r, 0.5, 1.5): nothing binds here, objective = r A everywhere:
    #   row 0: (1.5+1+0.5)/3 = 1;  row 1: -2(1.1+0.7)/2 = -1.8;  loss = -(1 - 1.8)/2 = 0.4
    out, _ = hand_example("grpo", eps=0.5)
    assert out.loss.item() == pytest.approx(0.4, abs=1e-12)
    # dual clip with c_dual=1.05 caps the A<0 per-token loss at -A*c_dual = 2.1: row 1, r=1.1 has loss 2.2 -> 2.1
    #   row 1 losses [2.1, 1.6] mean 1.85; row 0 losses -[1.2, 1, 0.5] mean -0.9;  loss = (-0.9 + 1.85)/2 = 0.475
    #   the capped token has zero gradient; dual_clip_frac = 1/5
    out, grad = hand_example("grpo", dual_clip=True, c_dual=1.05)
    assert out.loss.item() == pytest.approx(0.475, abs=1e-12)
    assert grad[1, 0].item() == 0.0
    assert out.metrics["dual_clip_frac"].item() == pytest.approx(0.2)


def test_dapo_hand_computed():
    # clip(r, 0.8, 1.28), token-mean by default:
    #   row 0: 1.28 (r=1.5 clipped high) + 1 + 0.5 = 2.78;  row 1: -2.2 - 1.6 = -3.8
    #   loss = -(2.78 - 3.8)/5 = 0.204
    # gradient -(1/5) r A on unclipped tokens: row 0 [0, -0.2, -0.1]; row 1 [0.44, 0, 0]
    out, grad = hand_example("dapo")
    assert out.loss.item() == pytest.approx(0.204, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0, -0.2, -0.1], [0.44, 0, 0]], dtype=torch.float64))


def test_gspo_hand_computed():
    # s_0 = exp(mean(ln 1.5, ln 1, ln 0.5)) = 0.75^(1/3) = 0.908560;  A=1: clip(s, 0.9997, 1.0004) = 0.9997,
    #   min(0.908560, 0.9997) = 0.908560 (unclipped)
    # s_1 = exp(mean(ln 1.1, ln 0.7)) = sqrt(0.77) = 0.877496;  A=-2: min(-1.754993, -2*0.9997=-1.9994) = -1.9994
    #   (clipped low)
    # seq-mean-token-mean (each token of a row carries its row's value): loss = -(0.908560 - 1.9994)/2 = 0.545420
    # gradient: row 0 tokens -(1/2)(1/3) s_0 A = -0.151427 each; row 1 clipped -> 0
    s0 = 0.75 ** (1 / 3)
    out, grad = hand_example("gspo")
    assert out.loss.item() == pytest.approx(-(s0 - 1.9994) / 2, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-s0 / 6] * 3, [0, 0, 0]], dtype=torch.float64))
    # clip_frac_low counts the tokens of row 1: 2 of 5 valid tokens
    assert out.metrics["clip_frac_low"].item() == pytest.approx(0.4)
    assert out.metrics["seq_ratio_mean"].item() == pytest.approx((s0 + math.sqrt(0.77)) / 2)


def test_sapo_hand_computed():
    # f(r) = sigmoid(tau (r-1)) 4/tau; tau=1 for A>0, 1.05 for A<0;  M(r) = 4 s (1-s) r, s = sigmoid(tau (r-1))
    #   row 0 (tau 1):    r=1.5 s=0.622459 f=2.489837 M=1.410022 | r=1 s=0.5 f=2 M=1 | r=0.5 s=0.377541 f=1.510163
    #                     M=0.470007;  mean f = 6/3 = 2.0 (s(0.5)+s(-0.5)=1), times A=1 -> 2.0
    #   row 1 (tau 1.05): r=1.1 s=0.526226 f=2.004670 M=1.096974 | r=0.7 s=0.421895 f=1.607218 M=0.682919
    #                     mean f 1.805944, times A=-2 -> -3.611888
    #   loss = -(2.0 - 3.611888)/2 = 0.805944
    # gradient -(1/2)(1/T_i) M A: row 0 -M/6 = [-0.235004, -0.166667, -0.078335]; row 1 +M/2 = [0.548487, 0.341460]
    out, grad = hand_example("sapo")
    assert out.loss.item() == pytest.approx(0.805944, abs=2e-6)
    expected = torch.tensor([[-0.235004, -1 / 6, -0.078335], [0.548487, 0.341460, 0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=2e-6, rtol=0)


def test_mhpo_hand_computed():
    # Defaults c=1.5, (k+, l+)=(1.5, 1.0), (k-, l-)=(2.0, 0.8). Worked for r = 1.5:
    #   log r = 0.405465, tanh(0.405465/1.5) = 0.263913, psi = 1.5*0.263913 = 0.395870
    #   softplus(psi) = 0.910545, softplus(-psi) = 0.514675
    #   zeta = 0.910545^1.5 + (0.514675/0.8)^2 = 0.868864 + 0.413891 = 1.282755
    #   w = exp(psi - zeta) = exp(-0.886885) = 0.411937;  M = w sech^2 = 0.411937*(1-0.263913^2) = 0.383245
    # likewise:  r   psi        zeta      w         M
    #            1   0          1.327791  0.265062  0.265062
    #            0.5 -0.647689  2.057036  0.066889  0.054418
    #            1.1 0.095182   1.292433  0.302023  0.300807
    #            0.7 -0.350101  1.608982  0.140988  0.133307
    #   row 0 (A=1): mean w = (0.411937+0.265062+0.066889)/3 = 0.247963
    #   row 1 (A=-2): -2 * (0.302023+0.140988)/2 = -0.443011
    #   loss = -(0.247963 - 0.443011)/2 = 0.097524
    # gradient -(1/2)(1/T_i) M A: row 0 -M/6 = [-0.063874, -0.044177, -0.009070]; row 1 +M/2 = [0.150404, 0.066654]
    out, grad = hand_example("mhpo")
    assert out.loss.item() == pytest.approx(0.097524, abs=2e-6)
    expected = torch.tensor([[-0.063874, -0.044177, -0.009070], [0.150404, 0.066654, 0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=2e-6, rtol=0)
    m = out.metrics
    # psi mean over 5 valid tokens: (0.395870 + 0 - 0.647689 + 0.095182 - 0.350101)/5 = -0.101348
    assert m["psi_mean"].item() == pytest.approx(-0.101348, abs=2e-6)
    assert m["zeta_mean"].item() == pytest.approx((1.282755 + 1.327791 + 2.057036 + 1.292433 + 1.608982) / 5, abs=2e-6)
    surv = sum(math.exp(-z) for z in (1.282755, 1.327791, 2.057036, 1.292433, 1.608982)) / 5
    assert m["survival_weight_mean"].item() == pytest.approx(surv, abs=2e-6)
    multiplier_mean = (0.383245 + 0.265062 + 0.054418 + 0.300807 + 0.133307) / 5
    assert m["grad_multiplier_mean"].item() == pytest.approx(multiplier_mean, abs=2e-6)
    assert m["grad_multiplier_max"].item() == pytest.approx(0.383245, abs=2e-6)
    assert m["frac_logratio_beyond_c"].item() == 0.0  # all |log r| <= 0.7 < c


def test_mhpo_frac_logratio_beyond_c_and_c_parameter():
    # c = 0.5: |log r| = 0.405, 0, 0.693, 0.095, 0.357 -> only ln 0.5 = -0.693 exceeds 0.5: 1/5
    out, _ = hand_example("mhpo", c=0.5)
    assert out.metrics["frac_logratio_beyond_c"].item() == pytest.approx(0.2)


# --------------------------------------------------------------------------------------------------------------
# Independent float64 reference, straight from METHOD.md.


def _softplus(x):
    return torch.log1p(torch.exp(x))


def reference_token_objective(name, log_r, adv, p):
    """Per-token objective (to be maximised) of one row's valid tokens; ``adv`` is a scalar or per-token tensor."""
    r = torch.exp(log_r)
    if name in ("grpo", "dapo"):
        obj = torch.min(r * adv, torch.clamp(r, 1 - p["eps_low"], 1 + p["eps_high"]) * adv)
        if p.get("dual_clip"):
            obj = torch.where(torch.as_tensor(adv) < 0, torch.max(obj, p["c_dual"] * adv), obj)
        return obj
    if name == "sapo":
        positive = torch.as_tensor(adv) > 0
        tau = torch.where(positive, torch.tensor(p["tau_pos"], dtype=F64), torch.tensor(p["tau_neg"], dtype=F64))
        return torch.sigmoid(tau * (r - 1)) * 4 / tau * adv
    if name == "mhpo":
        psi = p["c"] * torch.tanh(log_r / p["c"])
        q = psi.detach()
        zeta = (_softplus(q) / p["lambda_pos"]) ** p["k_pos"] + (_softplus(-q) / p["lambda_neg"]) ** p["k_neg"]
        return torch.exp(psi - zeta) * adv
    if name == "mhpo_lfm":  # Table 3(a), hazard-free: exp(psi) A, nothing under a stop-gradient
        return torch.exp(p["c"] * torch.tanh(log_r / p["c"])) * adv
    if name == "mhpo_sym":  # Table 3(b)/(c): one (k, lam) for both softplus branches
        psi = p["c"] * torch.tanh(log_r / p["c"])
        q = psi.detach()
        zeta = (_softplus(q) / p["lam"]) ** p["k"] + (_softplus(-q) / p["lam"]) ** p["k"]
        return torch.exp(psi - zeta) * adv
    raise AssertionError(name)


def reference_loss(name, logprobs, old, adv, mask, p, aggregation, norm_length=None, ref=None, kl_coef=0.0):
    """-aggregate(objective) (+ kl_coef * aggregate(k3)), one row at a time; GSPO in its SEQUENCE form."""
    N, T = logprobs.shape
    rows = []  # (per-token loss of the valid tokens, T_i)
    for i in range(N):
        valid = mask[i].bool()
        T_i = int(valid.sum())
        if T_i == 0:
            continue
        log_r = logprobs[i][valid] - old[i][valid]
        a = adv[i] if adv.dim() == 1 else adv[i][valid]
        if name == "gspo" and adv.dim() == 1:
            # GSPO's own sequence form: s_i = exp(mean log r), d s_i / d logp_t = s_i / T_i. Every token carries
            # the sequence value; the row's weight is shared by its T_i tokens, so this equals the token form.
            s = torch.exp(log_r.mean())
            seq_obj = torch.min(s * a, torch.clamp(s, 1 - p["eps_low"], 1 + p["eps_high"]) * a)
            tok_loss = -seq_obj.expand(T_i)
        elif name == "gspo":
            # per-token advantages: METHOD.md's token form log s_it = logp - sg[logp] + sg[log s_i]
            logp = logprobs[i][valid]
            s_t = torch.exp(logp - logp.detach() + log_r.mean().detach())
            tok_loss = -torch.min(s_t * a, torch.clamp(s_t, 1 - p["eps_low"], 1 + p["eps_high"]) * a)
        else:
            tok_loss = -reference_token_objective(name, log_r, a, p)
        if kl_coef:
            d = torch.clamp(ref[i][valid] - logprobs[i][valid], -20, 20)
            tok_loss = tok_loss + kl_coef * torch.clamp(torch.exp(d) - d - 1, -10, 10)
        rows.append((tok_loss, T_i))
    if not rows:
        return logprobs.sum() * 0
    if aggregation == "token-mean":
        return sum(lp.sum() for lp, _ in rows) / sum(t for _, t in rows)
    if aggregation == "seq-mean-token-mean":
        return sum(lp.sum() / t for lp, t in rows) / len(rows)
    length = T if norm_length is None else norm_length
    return sum(lp.sum() / length for lp, _ in rows) / len(rows)


def _defaults(name):
    return {p.name: p.default for p in LOSSES[name].params if p.name != "eps"}


def random_batch(seed, N=7, T=9, spread=0.4, dtype=torch.float64, adv_per_token=False):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, generator=g, dtype=dtype) * 3 - 0.05
    shift = torch.randn(N, T, generator=g, dtype=dtype) * spread
    shift[0] *= 1e-4  # a near on-policy row: GSPO's tiny clip range is exercised on both sides
    logprobs = old + shift
    adv = torch.randn(N, T, generator=g, dtype=dtype) if adv_per_token else torch.randn(N, generator=g, dtype=dtype)
    adv[1] = 0.0  # A == 0 rows contribute nothing
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[2] = 0  # a fully masked row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(dtype)
    ref = old + torch.randn(N, T, generator=g, dtype=dtype) * 0.3
    return logprobs, old, adv, mask, ref


PARAM_SETS = {
    "grpo": [{}, {"eps_low": 0.1, "eps_high": 0.3}, {"dual_clip": True, "c_dual": 1.3}],
    "dapo": [{}, {"eps": 0.15}],
    "gspo": [{}, {"eps_low": 0.02, "eps_high": 0.05}],
    "sapo": [{}, {"tau_pos": 0.5, "tau_neg": 2.0}],
    "mhpo": [{}, {"c": 0.5}, {"c": 1.5, "k_pos": 3.0, "lambda_pos": 0.8, "k_neg": 3.0, "lambda_neg": 0.8},
             {"c": 2.0, "k_pos": 1.0, "lambda_pos": 1.5, "k_neg": 0.7, "lambda_neg": 0.3}],
    "mhpo_lfm": [{}, {"c": 0.5}, {"c": 2.0}],
    "mhpo_sym": [{}, {"k": 1.0}, {"lam": 2.0}, {"c": 0.5, "k": 2.5, "lam": 0.5}],
}


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_matches_float64_reference(name, aggregation):
    for seed, params in enumerate(PARAM_SETS[name]):
        for adv_per_token in (False, True):
            logprobs, old, adv, mask, _ = random_batch(seed, adv_per_token=adv_per_token, spread=0.4 + 0.3 * seed)
            p = {**_defaults(name), **params}
            if "eps" in params:
                p["eps_low"] = p["eps_high"] = params["eps"]
            lp1 = logprobs.clone().requires_grad_(True)
            out = build_loss(name, aggregation=aggregation, norm_length=12, **params)(lp1, old, adv, mask)
            out.loss.backward()
            lp2 = logprobs.clone().requires_grad_(True)
            expected = reference_loss(name, lp2, old, adv, mask, p, aggregation, norm_length=12)
            expected.backward()
            torch.testing.assert_close(out.loss, expected, atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(lp1.grad, lp2.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_matches_reference_with_kl_and_float32(name):
    logprobs, old, adv, mask, ref = random_batch(11)
    p = _defaults(name)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        lp1 = logprobs.to(dtype).clone().requires_grad_(True)
        fn = build_loss(name, kl_coef=0.05)
        out = fn(lp1, old.to(dtype), adv.to(dtype), mask.to(dtype), ref_logprobs=ref.to(dtype))
        out.loss.backward()
        lp2 = logprobs.clone().requires_grad_(True)
        expected = reference_loss(name, lp2, old, adv, mask, p, LOSSES[name].default_aggregation, ref=ref, kl_coef=0.05)
        expected.backward()
        assert out.loss.dtype == dtype
        torch.testing.assert_close(out.loss.double(), expected, atol=tol, rtol=tol)
        torch.testing.assert_close(lp1.grad.double(), lp2.grad, atol=tol, rtol=tol)


# --------------------------------------------------------------------------------------------------------------
# KL term


def test_kl_hand_computed_and_orthogonal():
    # one valid token, logp = -1, ref = -1 + ln 2: d = ln 2, k3 = e^d - d - 1 = 2 - 0.693147 - 1 = 0.306853
    # d k3 / d logp = -(e^d - 1) = -1;  GRPO on-policy (r=1, A=1): loss -1, grad -1.  kl_coef 0.5:
    # loss = -1 + 0.5*0.306853 = -0.846574;  grad = -1 + 0.5*(-1) = -1.5
    logprobs = torch.tensor([[-1.0, 5.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0 + math.log(2), 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 0]])
    adv = torch.tensor([1.0], dtype=torch.float64)
    out = build_loss("grpo", kl_coef=0.5)(logprobs, old, adv, mask, ref_logprobs=ref)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-1 + 0.5 * (1 - math.log(2)), abs=1e-12)
    assert logprobs.grad[0].tolist() == pytest.approx([-1.5, 0.0])
    assert out.metrics["kl_mean"].item() == pytest.approx(1 - math.log(2))
    assert out.metrics["policy_loss"].item() == pytest.approx(-1.0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_kl_requires_ref_and_defaults_off(name):
    logprobs, old, adv, mask, ref = random_batch(3)
    with pytest.raises(ValueError, match="ref_logprobs"):
        build_loss(name, kl_coef=0.1)(logprobs, old, adv, mask)
    # kl_coef = 0 (default): ref only adds the kl_mean metric, the loss is unchanged
    plain = build_loss(name)(logprobs, old, adv, mask)
    with_ref = build_loss(name)(logprobs, old, adv, mask, ref_logprobs=ref)
    assert torch.equal(plain.loss, with_ref.loss)
    assert "kl_mean" in with_ref.metrics and "kl_mean" not in plain.metrics


# --------------------------------------------------------------------------------------------------------------
# Parameters


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid losses: grpo, dapo, gspo, sapo, mhpo, mhpo_lfm, mhpo_sym$"):
        build_loss("ppo")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_unknown_parameter_lists_valid_parameters(name):
    with pytest.raises(ValueError) as err:
        build_loss(name, not_a_param=1)
    message = str(err.value)
    assert "not_a_param" in message
    for p in LOSSES[name].params:
        assert p.name in message
    assert "aggregation" in message and "kl_coef" in message


BAD_VALUES = {
    "c": [0, -1.0, math.inf, math.nan, "1.5", True],
    "k_pos": [0, -2.0], "k_neg": [0.0, -1], "lambda_pos": [0, -0.5], "lambda_neg": [0.0, math.inf],
    "eps_low": [-0.1, 1.0, 1.5], "eps_high": [-0.01, 1.0], "eps": [-0.2, 1.0],
    "dual_clip": [1, "yes"], "c_dual": [1.0, 0.5],
    "tau_pos": [0, -1.0], "tau_neg": [0.0, math.nan],
    "k": [0, -3.0, math.inf], "lam": [0.0, -0.8, math.nan],  # mhpo_sym; a zero hazard is mhpo_lfm, not lam = 0
    "aggregation": ["mean", "token_mean", None], "norm_length": [0, -5, math.inf], "kl_coef": [-0.1, math.nan],
    "scale": [0, -0.5, math.inf, math.nan, "0.265", True],
}
GOOD_VALUES = {
    "c": 0.5, "k_pos": 3.0, "k_neg": 0.5, "lambda_pos": 0.8, "lambda_neg": 2, "eps_low": 0.0, "eps_high": 0.28,
    "eps": 0.1, "dual_clip": True, "c_dual": 2.5, "tau_pos": 0.3, "tau_neg": 4, "aggregation": "token-mean",
    "norm_length": 2048, "kl_coef": 0.01, "scale": 0.265, "k": 1.0, "lam": 2.0,
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_parameter_is_validated(name):
    from mhpo_vl.losses import loss_params

    names = [p.name for p in loss_params(name)]
    for param in names:
        assert param in BAD_VALUES, f"untested parameter {param}"
        for bad in BAD_VALUES[param]:
            with pytest.raises(ValueError, match=param):
                build_loss(name, **{param: bad})
        built = build_loss(name, **{param: GOOD_VALUES[param]})
        if param == "eps":
            assert built.params["eps_low"] == built.params["eps_high"] == GOOD_VALUES["eps"]
        elif param in built.params:
            assert built.params[param] == GOOD_VALUES[param]
        else:
            assert getattr(built, param) == GOOD_VALUES[param]


def test_eps_conflicts_with_side_specific_values():
    with pytest.raises(ValueError, match="eps sets both"):
        build_loss("grpo", eps=0.1, eps_high=0.3)


def test_defaults_match_method_md():
    assert build_loss("grpo").params == {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": False, "c_dual": 3.0}
    assert build_loss("dapo").params["eps_low"] == 0.2 and build_loss("dapo").params["eps_high"] == 0.28
    assert build_loss("gspo").params == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert build_loss("sapo").params == {"tau_pos": 1.0, "tau_neg": 1.05}
    assert build_loss("mhpo").params == {"c": 1.5, "k_pos": 1.5, "lambda_pos": 1.0, "k_neg": 2.0, "lambda_neg": 0.8}
    assert build_loss("mhpo_lfm").params == {"c": 1.5}  # Table 3(a) at its best c
    assert build_loss("mhpo_sym").params == {"c": 1.5, "k": 3.0, "lam": 0.8}  # Table 3(b)/(c) best
    aggregations = {n: build_loss(n).aggregation for n in LOSS_NAMES}
    assert aggregations == {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "gspo": "seq-mean-token-mean",
                            "sapo": "seq-mean-token-mean", "mhpo": "seq-mean-token-mean",
                            "mhpo_lfm": "seq-mean-token-mean", "mhpo_sym": "seq-mean-token-mean"}
    assert all(build_loss(n).kl_coef == 0.0 for n in LOSS_NAMES)


def test_input_shape_errors_name_the_argument():
    fn = build_loss("mhpo")
    lp, old, mask = torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        fn(lp, old, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        fn(lp, torch.zeros(2, 4), torch.zeros(2), mask)
    with pytest.raises(ValueError, match="mask"):
        fn(lp, old, torch.zeros(2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="logprobs must be"):
        fn(torch.zeros(6), old, torch.zeros(2), mask)
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(lp, old, torch.zeros(2), mask, ref_logprobs=torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------------------------
# Numerical safety and the "no host sync" contract


def _finite_loss_and_grad(name, logprobs, old, adv, mask, **params):
    lp = logprobs.clone().requires_grad_(True)
    out = build_loss(name, **params)(lp, old, adv, mask)
    out.loss.backward()
    assert torch.isfinite(out.loss), (name, out.loss)
    assert torch.isfinite(lp.grad).all(), (name, lp.grad)
    for key, value in out.metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key
        assert torch.isfinite(value), (name, key, value)
    return out, lp.grad


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
def test_extreme_log_ratios_are_finite(name, dtype):
    old = torch.zeros(4, 3, dtype=dtype)
    logprobs = torch.tensor([[1e5, -1e5, 0.0], [-1e5, 1e5, 30.0], [-30.0, 25.0, -25.0], [1e5, 1e5, 1e5]], dtype=dtype)
    for adv in (torch.tensor([1.0, -1.0, 2.0, -3.0], dtype=dtype), torch.tensor([-1.0, 1.0, -2.0, 0.0], dtype=dtype)):
        for aggregation in AGGREGATIONS:
            _finite_loss_and_grad(name, logprobs, old, adv, torch.ones(4, 3), aggregation=aggregation)
    if name in ("grpo", "dapo"):
        _finite_loss_and_grad(name, logprobs, old, adv, torch.ones(4, 3), dual_clip=True)


def test_mhpo_extreme_log_ratios_are_exact():
    # psi saturates at +-c, so at log r = +-1e5 the objective is exp(+-c - zeta(+-c)) A with zero gradient
    # (sech^2 underflows): c = 1.5, psi = 1.5: softplus(1.5) = 1.701413, softplus(-1.5) = 0.201413
    #   zeta = 1.701413^1.5 + (0.201413/0.8)^2 = 2.219293 + 0.063386 = 2.282679;  exp(1.5 - 2.282680) = 0.457179
    out, grad = _finite_loss_and_grad(
        "mhpo", torch.tensor([[1e5]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1))
    assert out.loss.item() == pytest.approx(-0.457179, abs=2e-6)
    assert grad.item() == 0.0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_grpo_family_clamp_behaviour_beyond_20(name):
    # log r = 30 with A > 0: the clip losses are in their clipped branch (exact), SAPO's gate is saturated
    # (f = 4/tau exactly): value exact, gradient 0.
    if name.startswith("mhpo"):
        return
    out, grad = _finite_loss_and_grad(
        name, torch.tensor([[30.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1))
    expected = {"grpo": -1.2, "dapo": -1.28, "gspo": -1.0004, "sapo": -4.0}[name]
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert grad.item() == 0.0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_masked_rows_empty_responses_and_garbage_padding(name):
    logprobs, old, adv, mask, _ = random_batch(5)
    # garbage in padding must not leak: -inf, +inf and NaN at masked positions
    garbage = logprobs.clone()
    pad = mask == 0
    num_pad = int(pad.sum())
    garbage[pad] = torch.tensor([-math.inf, math.inf, math.nan], dtype=F64).repeat(num_pad // 3 + 1)[:num_pad]
    clean, clean_grad = _finite_loss_and_grad(name, logprobs, old, adv, mask)
    dirty, dirty_grad = _finite_loss_and_grad(name, garbage, old, adv, mask)
    assert torch.equal(clean.loss, dirty.loss)
    assert torch.equal(clean_grad, dirty_grad)
    assert (dirty_grad[pad] == 0).all()
    for aggregation in AGGREGATIONS:
        # all-zero mask, and empty responses T = 0: loss 0, gradient 0
        out, grad = _finite_loss_and_grad(name, logprobs, old, adv, torch.zeros_like(mask), aggregation=aggregation)
        assert out.loss.item() == 0.0 and (grad == 0).all()
        empty = torch.zeros(3, 0, dtype=torch.float64)
        ones = torch.ones(3, dtype=F64)
        out, grad = _finite_loss_and_grad(name, empty, empty, ones, empty, aggregation=aggregation)
        assert out.loss.item() == 0.0 and grad.shape == (3, 0)
        no_rows = empty[:0]
        out, grad = _finite_loss_and_grad(name, no_rows, no_rows, ones[:0], no_rows, aggregation=aggregation)
        assert out.loss.item() == 0.0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_fully_masked_row_contributes_nothing(name):
    logprobs, old, adv, mask, _ = random_batch(8)
    keep = mask.sum(-1) > 0
    assert not keep.all()
    for aggregation in AGGREGATIONS:
        fn = build_loss(name, aggregation=aggregation)
        whole = fn(logprobs, old, adv, mask).loss
        without = fn(logprobs[keep], old[keep], adv[keep], mask[keep]).loss
        torch.testing.assert_close(whole, without, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_no_host_sync_inside_a_loss(name, monkeypatch):
    """A loss never calls .item()/.tolist()/bool()/float() on a tensor (each would force a device sync)."""
    logprobs, old, adv, mask, ref = random_batch(4)
    lp = logprobs.clone().requires_grad_(True)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("host sync inside a loss")

    fn = build_loss(name, kl_coef=0.1, **({"dual_clip": True} if name in ("grpo", "dapo") else {}))
    for attr in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    counts = {"global_num_tokens": torch.tensor(40.0), "global_num_seqs": torch.tensor(6.0)}
    out = fn(lp, old, adv, mask, ref_logprobs=ref, **counts)
    out.loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(lp.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bfloat16_inputs_give_float32_loss_and_bf16_grad(name):
    logprobs, old, adv, mask, _ = random_batch(6)
    lp = logprobs.to(torch.bfloat16).requires_grad_(True)
    out = build_loss(name)(lp, old.to(torch.bfloat16), adv.to(torch.bfloat16), mask.bool())
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and lp.grad.dtype == torch.bfloat16
    # same numbers as float32 on the bf16-rounded inputs
    lp32 = lp.detach().float().requires_grad_(True)
    out32 = build_loss(name)(lp32, old.to(torch.bfloat16).float(), adv.to(torch.bfloat16).float(), mask.bool())
    out32.loss.backward()
    torch.testing.assert_close(out.loss, out32.loss)
    torch.testing.assert_close(lp.grad, lp32.grad.to(torch.bfloat16))


# --------------------------------------------------------------------------------------------------------------
# scale: a constant on the policy term only (the study's GRPO x exp(-zeta(0)) control)


def _loss_and_grad(fn, logprobs, old, adv, mask, ref=None):
    lp = logprobs.clone().requires_grad_(True)
    out = fn(lp, old, adv, mask, ref_logprobs=ref)
    out.loss.backward()
    return out, lp.grad


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_scale_multiplies_the_policy_loss_and_gradient(name, aggregation):
    from mhpo_vl.losses.mhpo import on_policy_factor

    logprobs, old, adv, mask, _ = random_batch(21, spread=0.8)
    plain, plain_grad = _loss_and_grad(build_loss(name, aggregation=aggregation), logprobs, old, adv, mask)
    assert plain.loss.item() != 0.0 and plain_grad.abs().max() > 0
    # A power of two changes no mantissa bit: loss and gradient are exactly scale x the unscaled ones.
    half, half_grad = _loss_and_grad(build_loss(name, aggregation=aggregation, scale=0.25), logprobs, old, adv, mask)
    assert torch.equal(half.loss, 0.25 * plain.loss) and torch.equal(half_grad, 0.25 * plain_grad)
    assert torch.equal(half.metrics["policy_loss"], 0.25 * plain.metrics["policy_loss"])
    # Any other scale: the same up to the rounding of one multiplication.
    f = on_policy_factor()
    out, grad = _loss_and_grad(build_loss(name, aggregation=aggregation, scale=f), logprobs, old, adv, mask)
    torch.testing.assert_close(out.loss, f * plain.loss, rtol=1e-15, atol=0)
    torch.testing.assert_close(grad, f * plain_grad, rtol=1e-14, atol=1e-300)
    assert out.metrics.get("clip_frac_high") == plain.metrics.get("clip_frac_high")  # diagnostics unscaled


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_scale_leaves_the_kl_term_alone(name):
    logprobs, old, adv, mask, ref = random_batch(22)
    kl = 0.05
    no_kl, no_kl_grad = _loss_and_grad(build_loss(name), logprobs, old, adv, mask)
    with_kl, with_kl_grad = _loss_and_grad(build_loss(name, kl_coef=kl), logprobs, old, adv, mask, ref)
    scaled, scaled_grad = _loss_and_grad(build_loss(name, kl_coef=kl, scale=0.25), logprobs, old, adv, mask, ref)
    assert with_kl.metrics["kl_loss"].item() > 0
    torch.testing.assert_close(scaled.loss, 0.25 * no_kl.loss + kl * with_kl.metrics["kl_loss"], rtol=1e-14, atol=0)
    kl_grad = with_kl_grad - no_kl_grad  # the KL term's own gradient, at weight kl
    torch.testing.assert_close(scaled_grad, 0.25 * no_kl_grad + kl_grad, rtol=1e-12, atol=1e-15)
    assert torch.equal(scaled.metrics["kl_loss"], with_kl.metrics["kl_loss"])


def test_on_policy_factor_and_grpo_control_match_mhpo_on_policy():
    from mhpo_vl.losses.mhpo import on_policy_factor

    # zeta(0) = (ln 2 / 1.0)^1.5 + (ln 2 / 0.8)^2 = 0.577083 + 0.750708 = 1.327791; exp(-1.327791) = 0.265062
    assert on_policy_factor() == pytest.approx(math.exp(-(math.log(2) ** 1.5 + (math.log(2) / 0.8) ** 2)), rel=1e-14)
    assert on_policy_factor() == pytest.approx(0.265062, abs=1e-6)
    assert on_policy_factor(k_pos=3.0, lambda_pos=0.8, k_neg=3.0, lambda_neg=0.8) == pytest.approx(
        math.exp(-2 * (math.log(2) / 0.8) ** 3), rel=1e-14)
    # On-policy (r = 1) MHPO's gradient is exp(-zeta(0)) x GRPO's: the control has the same on-policy step.
    _, old, adv, mask, _ = random_batch(23)
    mhpo, mhpo_grad = _loss_and_grad(build_loss("mhpo"), old, old, adv, mask)
    control, control_grad = _loss_and_grad(build_loss("grpo", scale=on_policy_factor()), old, old, adv, mask)
    torch.testing.assert_close(control_grad, mhpo_grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(control.loss, mhpo.loss, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------
# Table 3's variants, token by token, against their formulas (float64 autograd on the formula as written).

TABLE3_RATIOS = (0.02, 0.3, 0.7, 0.95, 1.0, 1.05, 1.5, 3.0, 40.0)
TABLE3_ADVANTAGES = (1.3, -0.7)
DEFAULT_HAZARDS = ((1.5, 1.0), (2.0, 0.8))  # (k, lambda)+, (k, lambda)-: paper Sec. 4.1
TABLE3_VARIANTS = [  # (loss, its parameters, c, hazards of the formula: ((k+, l+), (k-, l-)), or None for none)
    ("mhpo_lfm", {}, 1.5, None),  # Table 3(a), hazard-free, at c = 1.5
    ("mhpo_lfm", {"c": 0.5}, 0.5, None),
    ("mhpo_sym", {}, 1.5, ((3.0, 0.8), (3.0, 0.8))),  # Table 3's best symmetric pair
    ("mhpo_sym", {"k": 1.0, "lam": 2.0}, 1.5, ((1.0, 2.0), (1.0, 2.0))),
    ("mhpo", {}, 1.5, DEFAULT_HAZARDS),  # the defaults, for comparison
]


def table3_reference(log_r, adv, c, hazards):
    """J of METHOD.md's MHPO formula; hazards None means Table 3(a)'s hazard-free J = exp(psi) A (zeta = 0)."""
    psi = c * torch.tanh(log_r / c)
    if hazards is None:
        return torch.exp(psi) * adv
    (kp, lp), (kn, ln) = hazards
    q = psi.detach()  # sg[psi] inside zeta
    zeta = (torch.log1p(torch.exp(q)) / lp) ** kp + (torch.log1p(torch.exp(-q)) / ln) ** kn
    return torch.exp(psi - zeta) * adv


def table3_token(name, params, ratio, adv, c, hazards):
    """(loss, d loss / d logp) of one token from the loss under test and from the reference, all float64."""
    old = torch.tensor([[-1.7]], dtype=F64)
    start = old + math.log(ratio)
    lp = start.clone().requires_grad_(True)
    out = build_loss(name, **params)(lp, old, torch.tensor([adv], dtype=F64), torch.ones(1, 1))
    out.loss.backward()
    lp_ref = start.clone().requires_grad_(True)
    expected = -table3_reference(lp_ref - old, adv, c, hazards).sum()
    expected.backward()
    return out.loss, lp.grad, expected, lp_ref.grad


@pytest.mark.parametrize("name,params,c,hazards", TABLE3_VARIANTS)
def test_table3_variants_match_float64_reference_per_token(name, params, c, hazards):
    max_value_diff = max_grad_diff = 0.0
    from_default = [0.0, 0.0]  # largest |variant - default| / |A| of the references (value, gradient)
    for ratio in TABLE3_RATIOS:
        for adv in TABLE3_ADVANTAGES:
            loss, grad, expected, expected_grad = table3_token(name, params, ratio, adv, c, hazards)
            torch.testing.assert_close(loss, expected, atol=1e-14, rtol=1e-13)
            torch.testing.assert_close(grad, expected_grad, atol=1e-14, rtol=1e-13)
            max_value_diff = max(max_value_diff, (loss - expected).abs().item())
            max_grad_diff = max(max_grad_diff, (grad - expected_grad).abs().item())
            _, _, default, default_grad = table3_token("mhpo", {}, ratio, adv, 1.5, DEFAULT_HAZARDS)
            from_default[0] = max(from_default[0], (expected - default).abs().item() / abs(adv))
            from_default[1] = max(from_default[1], (expected_grad - default_grad).abs().item() / abs(adv))
    assert max_value_diff < 1e-14 and max_grad_diff < 1e-14
    if hazards != DEFAULT_HAZARDS:
        # the reference tells the variant from the defaults (by far more than the tolerance above), so a variant
        # that were silently the default loss fails this test
        assert min(from_default) > 0.1


def test_mhpo_lfm_extreme_log_ratios_are_exact():
    # psi saturates at +-c: J = exp(+-1.5) A = 4.481689 A / 0.223130 A, gradient 0 (sech^2 underflows)
    for log_r, value in ((1e5, math.exp(1.5)), (-1e5, math.exp(-1.5))):
        out, grad = _finite_loss_and_grad(
            "mhpo_lfm", torch.tensor([[log_r]], dtype=F64), torch.zeros(1, 1, dtype=F64),
            torch.tensor([1.0], dtype=F64), torch.ones(1, 1))
        assert out.loss.item() == pytest.approx(-value, rel=1e-14)
        assert grad.item() == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_mhpo_sym_is_mhpo_with_both_pairs_set(aggregation):
    logprobs, old, adv, mask, _ = random_batch(31, spread=1.0)
    for k, lam in ((3.0, 0.8), (1.0, 2.0)):
        sym, sym_grad = _loss_and_grad(build_loss("mhpo_sym", k=k, lam=lam, aggregation=aggregation),
                                       logprobs, old, adv, mask)
        full = build_loss("mhpo", k_pos=k, lambda_pos=lam, k_neg=k, lambda_neg=lam, aggregation=aggregation)
        both, both_grad = _loss_and_grad(full, logprobs, old, adv, mask)
        assert torch.equal(sym.loss, both.loss) and torch.equal(sym_grad, both_grad)
        assert sym.metrics.keys() == both.metrics.keys()
        assert all(torch.equal(sym.metrics[key], both.metrics[key]) for key in sym.metrics)

"""Aggregation: hand-computed token weights, and the split invariance the trainer relies on."""
from __future__ import annotations

import pytest
import torch

from mhpo_vl.losses import build_loss
from mhpo_vl.losses.aggregation import AGGREGATIONS, aggregate, token_weights

torch.set_num_threads(1)
F64 = torch.float64
LOSS_NAMES = ("grpo", "dapo", "gspo", "sapo", "mhpo")

MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=F64)  # T_i = 3, 1, 0 (an empty row)


def test_token_mean_weights():
    # 4 valid tokens: each weighs 1/4
    w = token_weights(MASK, "token-mean")
    torch.testing.assert_close(w, MASK / 4)
    # a global count of 10 tokens: each weighs 1/10
    torch.testing.assert_close(token_weights(MASK, "token-mean", global_num_tokens=10), MASK / 10)


def test_seq_mean_token_mean_weights():
    # 2 non-empty rows (the empty row does not count): row 0 tokens 1/(3*2) = 1/6, row 1 token 1/(1*2) = 1/2
    w = token_weights(MASK, "seq-mean-token-mean")
    expected = torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0], [0, 0, 0, 0]], dtype=F64)
    torch.testing.assert_close(w, expected)
    # with global_num_seqs = 8: row 0 tokens 1/(3*8) = 1/24, row 1 1/8
    weights = token_weights(MASK, "seq-mean-token-mean", global_num_seqs=torch.tensor(8))
    torch.testing.assert_close(weights, expected / 4)


def test_seq_mean_token_sum_norm_weights():
    # norm_length=None -> T = 4: every valid token 1/(4*2) = 1/8; norm_length=16: 1/(16*2) = 1/32
    torch.testing.assert_close(token_weights(MASK, "seq-mean-token-sum-norm"), MASK / 8)
    torch.testing.assert_close(token_weights(MASK, "seq-mean-token-sum-norm", norm_length=16), MASK / 32)


def test_aggregate_is_weighted_sum_and_empty_is_zero():
    loss = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0], [7.0, 7.0, 7.0, 7.0]], dtype=F64)
    # seq-mean-token-mean: (mean(1,2,3) + 4)/2 = 3
    assert aggregate(loss, token_weights(MASK, "seq-mean-token-mean")).item() == pytest.approx(3.0)
    # token-mean: (1+2+3+4)/4 = 2.5
    assert aggregate(loss, token_weights(MASK, "token-mean")).item() == pytest.approx(2.5)
    for mode in AGGREGATIONS:
        assert aggregate(loss, token_weights(torch.zeros_like(MASK), mode)).item() == 0.0


@pytest.mark.parametrize("bad", [0, -3, True, "10", torch.tensor([1.0, 2.0])])
def test_bad_global_normalisers_raise(bad):
    with pytest.raises(ValueError, match="global_num_tokens"):
        token_weights(MASK, "token-mean", global_num_tokens=bad)
    with pytest.raises(ValueError, match="global_num_seqs"):
        token_weights(MASK, "seq-mean-token-mean", global_num_seqs=bad)


def test_unknown_aggregation_raises():
    with pytest.raises(ValueError, match="valid: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        token_weights(MASK, "sum")


def _batch(seed=0, N=10, T=8):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, generator=g, dtype=F64) * 2
    logprobs = old + torch.randn(N, T, generator=g, dtype=F64) * 0.5
    adv = torch.randn(N, generator=g, dtype=F64)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[6] = 0  # an empty response
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    ref = old + torch.randn(N, T, generator=g, dtype=F64) * 0.3
    return logprobs, old, adv, mask, ref


SPLITS = [(0, 2), (2, 7), (7, 10)]  # three uneven micro-batches: 2, 5 and 3 rows


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(name, aggregation):
    logprobs, old, adv, mask, ref = _batch()
    fn = build_loss(name, aggregation=aggregation, kl_coef=0.1)
    whole_lp = logprobs.clone().requires_grad_(True)
    whole = fn(whole_lp, old, adv, mask, ref_logprobs=ref)
    whole.loss.backward()

    # the trainer's recipe: normalisers of the WHOLE batch, computed once, passed to every micro-batch
    global_num_tokens = mask.sum()
    global_num_seqs = (mask.sum(-1) > 0).sum()
    split_lp = logprobs.clone().requires_grad_(True)
    total = 0.0
    for start, stop in SPLITS:
        rows = slice(start, stop)
        part = fn(split_lp[rows], old[rows], adv[rows], mask[rows], ref_logprobs=ref[rows],
                  global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs)
        part.loss.backward()  # gradient accumulation: no division by the number of micro-batches
        total = total + part.loss.detach()
    torch.testing.assert_close(total, whole.loss.detach(), atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(split_lp.grad, whole_lp.grad, atol=1e-13, rtol=1e-12)

    # without the global normalisers each micro-batch is its own mean, and the sum is NOT the whole loss
    local = sum(fn(logprobs[a:b], old[a:b], adv[a:b], mask[a:b], ref_logprobs=ref[a:b]).loss for a, b in SPLITS)
    assert abs(local.item() - whole.loss.item()) > 1e-3


@pytest.mark.parametrize("name", ["grpo", "mhpo"])
def test_sum_norm_needs_a_fixed_norm_length_when_padding_differs(name):
    # Micro-batches trimmed to their own longest response have different T. With norm_length fixed (the generation
    # budget) they still sum to the whole; with the default (T of each call) they do not.
    logprobs, old, adv, mask, _ = _batch(1)
    T = mask.shape[1]
    counts = dict(global_num_tokens=mask.sum(), global_num_seqs=(mask.sum(-1) > 0).sum())
    for norm_length, should_match in ((T, True), (None, False)):
        fn = build_loss(name, aggregation="seq-mean-token-sum-norm", norm_length=norm_length)
        whole = fn(logprobs, old, adv, mask).loss
        total = 0.0
        for a, b in SPLITS:
            width = max(int(mask[a:b].sum(-1).max()), 1)
            total = total + fn(logprobs[a:b, :width], old[a:b, :width], adv[a:b], mask[a:b, :width], **counts).loss
        assert torch.isclose(total, whole, atol=1e-13, rtol=1e-12).item() is should_match


def test_default_aggregation_of_the_paper_formula():
    # METHOD.md's GRPO/MHPO normalisation -1/K sum_i 1/T_i sum_t, computed by hand for GRPO on-policy:
    # objective per token = A_i, so L = -1/K sum_i A_i regardless of T_i: A = [1, -3, 0.5] -> L = -(-1.5)/3 = 0.5
    logp = torch.zeros(3, 4, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    out = build_loss("grpo")(logp, logp, torch.tensor([1.0, -3.0, 0.5], dtype=F64), mask)
    assert out.loss.item() == pytest.approx(0.5)
    # DAPO token-mean weighs tokens: -(4*1 + 1*(-3) + 2*0.5)/7 = -2/7
    out = build_loss("dapo")(logp, logp, torch.tensor([1.0, -3.0, 0.5], dtype=F64), mask)
    assert out.loss.item() == pytest.approx(-2 / 7)

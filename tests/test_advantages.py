"""Group-relative advantages: hand-computed values, peer conventions, zero-variance groups, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.train.advantages import count_zero_variance_groups, group_advantages, zero_variance_groups


def test_hand_computed_unbiased_std():
    # group [1, 0, 0, 0]: mean 0.25, unbiased var = (0.75^2 + 3*0.25^2)/3 = 0.75/3 = 0.25, std 0.5
    #   A = (1-0.25)/(0.5+1e-6) = 1.499997, (0-0.25)/(0.5+1e-6) = -0.499999
    # group [2, 4, 4, 6]: mean 4, unbiased var = (4+0+0+4)/3 = 8/3, std 1.632993
    #   A = -2/1.632994 = -1.224744..., 0, 0, +1.224744
    adv = group_advantages(torch.tensor([[1.0, 0, 0, 0], [2.0, 4, 4, 6]]))
    std2 = math.sqrt(8 / 3)
    expected = [0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001,
                -2 / (std2 + 1e-6), 0.0, 0.0, 2 / (std2 + 1e-6)]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert adv.dtype == torch.float32 and adv.shape == (8,)


def test_biased_std_trl_eps_and_dr_grpo():
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # biased std of [1, 0] = 0.5; A = +-0.5/(0.5 + 1e-4) = +-0.999800 (TRL eps, biased for the example)
    adv = group_advantages(rewards, 2, eps=1e-4, unbiased_std=False)
    assert adv.tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001], abs=1e-12)
    # unbiased std of [1, 0] = sqrt(0.5) = 0.707107: A = +-0.5/0.707108 = +-0.707106
    adv = group_advantages(rewards, 2)
    assert adv.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6)], abs=1e-12)
    # Dr. GRPO: no std division: A = R - mean = [0.5, -0.5]
    assert group_advantages(rewards, 2, std_normalize=False).tolist() == [0.5, -0.5]
    assert adv.dtype == torch.float64


def test_zero_variance_groups_are_exactly_zero():
    # 0.1 * 3 / 3 != 0.1 in floating point: R - mean would be ~1e-17 and /(0 + eps) would turn it into ~1e-11
    rewards = [0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    for kwargs in ({}, {"eps": 0.0}, {"std_normalize": False}, {"unbiased_std": False}):
        adv = group_advantages(rewards, 3, **kwargs)
        assert torch.isfinite(adv).all()
        assert (adv[:6] == 0).all(), kwargs
        assert (adv[6:] != 0).all()
    assert zero_variance_groups(rewards, 3).tolist() == [True, True, False]
    assert count_zero_variance_groups(rewards, 3) == 2


def test_flat_and_grouped_layouts_agree_and_ints_are_accepted():
    rewards_BK = torch.tensor([[1, 0, 1], [0, 0, 1]])
    torch.testing.assert_close(group_advantages(rewards_BK), group_advantages(rewards_BK.reshape(-1), 3))
    # int or bool rewards give float32 advantages: [1, 0] -> +-0.5/(0.707107 + 1e-6)
    assert group_advantages([True, False], 2).tolist() == pytest.approx([0.707106, -0.707106], abs=1e-6)
    assert group_advantages([1, 0], 2).dtype == torch.float32


@pytest.mark.parametrize(
    "rewards,group_size,message",
    [
        ([1.0, 2.0, 3.0], 2, "dividing N=3"),
        ([1.0, 2.0], None, "need group_size"),
        ([[1.0, 2.0]], 3, "group_size=3"),
        ([1.0, 2.0], 1, "at least 2 samples"),
        ([[[1.0]]], None, "rewards must be"),
        ([0.0, 1.0, math.nan, 1.0], 2, "group 1, sample 0 \\(row 2\\)"),
        ([0.0, math.inf], 2, "group 0, sample 1"),
    ],
)
def test_bad_input_is_named(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size)

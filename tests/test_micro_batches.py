"""Micro-batch planning (mhpo_vl.train.micro_batches): fixed rows, the token budget, the ranks' agreed count, padding."""
import pytest

from mhpo_vl.train.micro_batches import (
    PaddingCount,
    RowSize,
    fixed_rows,
    padded_tokens,
    plan_micro_batches,
    split_to_count,
    token_budget,
)

# prompt 10 tokens each; responses of 2, 50, 3, 48 and 1 tokens
SIZES = [RowSize(10, 2), RowSize(10, 50), RowSize(10, 3), RowSize(10, 48), RowSize(10, 1)]


def test_padded_tokens_is_rows_times_longest_prompt_plus_longest_response():
    assert padded_tokens(SIZES, [0, 1]) == 2 * (10 + 50)
    assert padded_tokens([RowSize(7, 0), RowSize(3, 0)], [0, 1]) == 2 * (7 + 1)  # collate keeps T >= 1
    assert padded_tokens([RowSize(30, 1), RowSize(5, 9)], [0, 1]) == 2 * (30 + 9)  # each side padded separately
    assert padded_tokens(SIZES, []) == 0


def test_fixed_rows_keeps_the_order():
    assert fixed_rows([4, 0, 3, 1, 2], 2) == [[4, 0], [3, 1], [2]]
    with pytest.raises(ValueError, match=">= 1"):
        fixed_rows([0], 0)


def test_token_budget_groups_similar_lengths_longest_first():
    # sorted by length: 1 (60), 3 (58), 2 (13), 0 (12), 4 (11); budget 120 fits two long rows or many short ones
    assert token_budget(range(5), SIZES, 120) == [[1, 3], [2, 0, 4]]
    # each padded size within the budget
    for group in token_budget(range(5), SIZES, 40):
        assert padded_tokens(SIZES, group) <= 40 or len(group) == 1
    # a row longer than the budget gets a micro-batch of its own, nothing is dropped
    groups = token_budget(range(5), SIZES, 30)
    assert groups[:2] == [[1], [3]] and sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=">= 1"):
        token_budget([0], SIZES, 0)


def test_padding_fraction_fixed_rows_vs_token_budget():
    rows, tokens = PaddingCount(), PaddingCount()
    for g in fixed_rows(range(5), 2):
        rows.add(SIZES, g)
    for g in token_budget(range(5), SIZES, 120):
        tokens.add(SIZES, g)
    real = sum(s.total for s in SIZES)  # 154
    assert rows.real == tokens.real == real
    assert rows.collated == 2 * 60 + 2 * 58 + 1 * 11  # [0,1] [2,3] [4]
    assert tokens.collated == 2 * 60 + 3 * 13  # [1,3] [2,0,4]
    assert rows.fraction == pytest.approx(1 - 154 / 247)
    assert tokens.fraction == pytest.approx(1 - 154 / 159)
    assert PaddingCount().fraction == 0.0


def test_ranks_agree_on_the_largest_count_by_splitting_the_largest_micro_batches():
    groups = token_budget(range(5), SIZES, 120)  # 2 micro-batches
    assert plan_micro_batches(range(5), SIZES, rows_per_micro=2, max_tokens=120, agree_count=lambda n: 4) == \
        [[1], [3], [2], [0, 4]]  # [1,3] (120 tokens) split first, then [2,0,4] (39)
    assert split_to_count(groups, SIZES, 2) == groups
    with pytest.raises(ValueError, match="cannot merge"):
        split_to_count(groups, SIZES, 1)
    with pytest.raises(ValueError, match="6 micro-batches wanted from 5 rows"):
        split_to_count(groups, SIZES, 6)


def test_without_a_budget_the_plan_is_fixed_rows():
    assert plan_micro_batches([3, 1, 0], SIZES, rows_per_micro=2, max_tokens=None) == [[3, 1], [0]]


def test_token_budget_takes_the_fewest_micro_batches_then_the_least_padding():
    sizes = [RowSize(0, 40), RowSize(0, 30), RowSize(0, 30), RowSize(0, 30)]
    # packing full: [40, 30] (80 slots, 10 padding) + [30, 30] (60); the same count with no padding:
    assert token_budget(range(4), sizes, 100) == [[0], [1, 2, 3]]
    # never more micro-batches than packing each one full
    assert len(token_budget(range(5), SIZES, 120)) == 2

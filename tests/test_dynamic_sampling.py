"""DAPO dynamic sampling as a pure function on group records (mhpo_vl.train.dynamic_sampling)."""
import torch

from mhpo_vl.train.dynamic_sampling import dynamic_sample, fill_to_size, informative_groups
from mhpo_vl.train.records import Group, Rollouts, ScoredRollouts
from mhpo_vl.types import Completion, EncodedPrompt, Sample


def group(name: str, rewards: list[float]) -> Group:
    prompt = EncodedPrompt(Sample(id=name, source="t", split="train", question=name), name, [1])
    r = torch.tensor(rewards, dtype=torch.float32)
    return Group([prompt] * len(rewards), [Completion(str(x), [2], None, "stop") for x in rewards], r, r, r,
                 r - r.mean())


def names(groups):
    return [g.prompts[0].sample.id for g in groups]


def test_only_groups_whose_rewards_differ_are_informative():
    assert names(informative_groups([group("a", [1, 0]), group("b", [0, 0]), group("c", [0.5, 0.4])])) == ["a", "c"]


def test_fill_to_size_repeats_the_kept_groups_in_order_and_falls_back_to_all_when_none_is_kept():
    a, b, c = group("a", [1, 0]), group("b", [0, 1]), group("c", [0, 0])
    assert (names(fill_to_size([a, b], 4, [c])[0]), fill_to_size([a, b], 4, [c])[1]) == (["a", "b", "a", "b"], 2)
    assert names(fill_to_size([a, b, a], 2, [c])[0]) == ["a", "b"]
    assert fill_to_size([], 2, [c, c]) == ([c, c], 0)  # nothing informative: the update is a no-op


def test_refill_rounds_draw_until_full_and_every_round_draws_even_when_this_rank_is_full():
    draws = []

    def draw_more(needed):
        draws.append(needed)
        return [group(f"new{len(draws)}", [1, 0]), group("flat", [0, 0])] if needed else []

    first = [group("a", [1, 0]), group("b", [0, 0]), group("c", [0, 0])]
    result = dynamic_sample(first, want=3, max_rounds=5, draw_more=draw_more)
    assert (names(result.groups), result.rounds, result.padded, draws) == (["a", "new1", "new2"], 2, 0, [True, True])
    # Another rank still lacks groups for two more rounds: this (full) rank draws with it, generating nothing.
    votes = iter([False, False, True])
    draws.clear()
    full = [group("a", [1, 0]), group("b", [0, 1]), group("c", [1, 0])]
    result = dynamic_sample(full, want=3, max_rounds=5, draw_more=draw_more, all_agree=lambda ok: ok and next(votes))
    assert (result.rounds, draws, names(result.groups)) == (2, [False, False], ["a", "b", "c"])
    assert result.metrics() == {"dynamic_sampling/refill_rounds": 2.0, "dynamic_sampling/padded_groups": 0.0}


def test_after_max_rounds_the_batch_is_padded_with_the_kept_groups():
    result = dynamic_sample([group("a", [1, 0]), group("b", [0, 0])], want=2, max_rounds=1,
                            draw_more=lambda needed: [group("flat", [1, 1])])
    assert (names(result.groups), result.rounds, result.padded) == (["a", "a"], 1, 1)


def test_scored_rollouts_split_into_groups_and_back():
    a, b = group("a", [1, 0]), group("b", [0, 0])
    batch = ScoredRollouts.from_groups([a, b, a], 2)
    assert len(batch) == 6 and isinstance(batch.rollouts, Rollouts) and names(batch.groups()) == ["a", "b", "a"]
    assert batch.rewards_N.tolist() == [1, 0, 0, 0, 1, 0] and batch.advantages_N.tolist() == [0.5, -0.5, 0, 0, 0.5, -0.5]

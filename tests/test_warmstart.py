"""The warm-start's early stop: the mean of the last `window` batch answer probabilities against the target."""
from __future__ import annotations

import pytest

from mhpo_vl.config import ConfigError, load_config
from mhpo_vl.train.warmstart import AnswerProbStop


def test_stops_when_the_window_mean_reaches_the_target():
    stop = AnswerProbStop(0.3, window=3)
    # Means of the full window: (0.1+0.2+0.4)/3 = 0.233, (0.2+0.4+0.3)/3 = 0.3 -> stop.
    assert [stop.update(p) for p in (0.1, 0.2, 0.4, 0.3)] == [False, False, False, True]
    assert stop.mean == pytest.approx(0.3)


def test_one_lucky_batch_does_not_stop_it_and_no_target_never_stops():
    lucky = AnswerProbStop(0.5, window=3)
    assert not any(lucky.update(p) for p in (0.0, 0.0, 0.99, 0.0, 0.0))  # window means 0.33, 0.33, 0.0
    never = AnswerProbStop(None, window=2)
    assert not any(never.update(1.0) for _ in range(5)) and never.mean == 1.0


def test_config_range_is_checked():
    with pytest.raises(ConfigError, match="stop_at_answer_prob must be in"):
        load_config(None, ["warmstart.stop_at_answer_prob=1.5"])
    assert load_config(None, ["warmstart.stop_at_answer_prob=0.3"]).warmstart.stop_at_answer_prob == 0.3


def test_with_groups_every_group_must_reach_the_target():
    # Batch means 0.4 reach the target, but kind "b" averages (0.0*2 + 0.3*2) / 4 = 0.15 over the window: no stop.
    stop = AnswerProbStop(0.3, window=2)
    assert not stop.update(0.4, {"a": [0.8, 0.8], "b": [0.0, 0.0]})
    assert not stop.update(0.4, {"a": [0.5, 0.5], "b": [0.3, 0.3]})
    assert stop.group_means == pytest.approx({"a": 0.65, "b": 0.15})
    # The first batch leaves the window: b = (0.3*2 + 0.4) / 3 = 0.333, a = (0.5*2 + 0.4) / 3 = 0.467 -> stop.
    assert stop.update(0.4, {"a": [0.4], "b": [0.4]})
    assert stop.group_means == pytest.approx({"a": 1.4 / 3, "b": 1.0 / 3})


def test_a_group_that_is_never_answered_keeps_the_warm_start_going():
    stop = AnswerProbStop(0.3, window=2)
    assert not any(stop.update(0.6, {"a": [0.9, 0.9], "b": [0.0]}) for _ in range(5))
    assert stop.mean == pytest.approx(0.6) and stop.group_means["b"] == 0.0

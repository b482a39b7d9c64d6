"""The training reward: EasyR1-style ``accuracy_weight * accuracy + format_weight * format`` (0.9 / 0.1 by default).

Accuracy comes from the evaluation grader (so the reward and the reported metric cannot drift apart); the format
component is kept separate so the trainer can log accuracy and format rates on their own. A response whose grading
timed out gets accuracy 0 (its verdict says ``timed_out``), never a crashed or hung step; so does one whose grading
failed (its worker died on every retry: ``error`` set), and ``metrics()`` counts both ("reward/timeouts",
"reward/grading_errors") so neither passes for a wrong answer unseen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mhpo_vl.grading.grader import Grader, Verdict
from mhpo_vl.types import Sample


@dataclass
class RewardOutput:
    rewards: list[float]
    verdicts: list[Verdict]
    accuracy: list[float] = field(default_factory=list)  # 1.0 / 0.0 per response
    format: list[float] = field(default_factory=list)  # 1.0 / 0.0 per response

    def metrics(self) -> dict[str, float]:
        n = max(len(self.rewards), 1)
        return {
            "reward/mean": sum(self.rewards) / n,
            "reward/accuracy": sum(self.accuracy) / n,
            "reward/format": sum(self.format) / n,
            "reward/timeouts": float(sum(v.timed_out for v in self.verdicts)),
            "reward/grading_errors": float(sum(v.grading_failed for v in self.verdicts)),
        }


class RewardFunction:
    """``reward_fn(samples, responses) -> RewardOutput``.

    The format component is the verdict's ``format_ok``, so what counts as "formatted" is the grader's setting:
    ``Grader(require_think=False)`` for models that answer without thinking tags (format = "has a \\boxed{} answer").
    ``format_weight=0`` (with ``accuracy_weight=1``) is a pure accuracy reward.

    ``truncated_reward``: the reward of a response cut off at the generation limit (pass ``truncated`` flags), in
    place of its graded reward; None grades it like any other. Why: a response that never ends is not a finished
    answer, and with seq-mean-token-mean aggregation wrong answers that end early are pushed down harder per token
    than long ones, so without a cost for never ending, lengths drift to the limit (seen in the CPU demo). DAPO's
    overlong punishment is the graded form of the same idea. Verdicts (and so accuracy metrics) are not changed.
    """

    def __init__(self, grader: Grader, accuracy_weight: float = 0.9, format_weight: float = 0.1,
                 truncated_reward: float | None = None):
        if accuracy_weight < 0 or format_weight < 0:
            raise ValueError(f"reward weights must be >= 0, got accuracy_weight={accuracy_weight}, format_weight={format_weight}")
        if accuracy_weight == 0 and format_weight == 0:
            raise ValueError("accuracy_weight and format_weight are both 0: every reward would be 0")
        self.grader = grader
        self.accuracy_weight = float(accuracy_weight)
        self.format_weight = float(format_weight)
        self.truncated_reward = truncated_reward

    def __call__(self, samples: list[Sample], responses: list[str], truncated: list[bool] | None = None) -> RewardOutput:
        if truncated is not None and len(truncated) != len(responses):
            raise ValueError(f"{len(truncated)} truncated flags for {len(responses)} responses")
        verdicts = self.grader.grade(samples, responses)
        accuracy = [1.0 if v.correct else 0.0 for v in verdicts]
        formats = [1.0 if v.format_ok else 0.0 for v in verdicts]
        rewards = [self.accuracy_weight * a + self.format_weight * f for a, f in zip(accuracy, formats)]
        if self.truncated_reward is not None and truncated is not None:
            rewards = [self.truncated_reward if cut else r for r, cut in zip(rewards, truncated)]
        return RewardOutput(rewards=rewards, verdicts=verdicts, accuracy=accuracy, format=formats)

    def close(self) -> None:
        """Stop the grader's worker processes."""
        self.grader.close()

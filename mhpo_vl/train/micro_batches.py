"""How a pass over rollout rows is cut into micro-batches: a fixed number of rows each, or a token budget.

A micro-batch is collated to ``rows x (longest prompt + longest response)`` tokens (prompts left-padded, responses
right-padded: mhpo_vl.collate), so its padded size, not its row count, sets the compute and the activation memory.
With a token budget the rows are sorted by length (longest first) and cut into consecutive micro-batches whose
padded size stays within the budget (the fewest such micro-batches, then the least padding): rows of similar
length share a micro-batch and little of it is padding. A row longer than the
budget on its own gets a micro-batch of its own.

The grouping never changes the loss: the loss modules are normalised by the whole minibatch's token and sequence
counts (mhpo_vl.losses.aggregation), so the minibatch loss is the SUM of its micro-batch losses however the rows are
grouped. Every rank must run the same number of forward/backward passes (ZeRO-3 gathers parameters in each
forward; DeepSpeed counts accumulation steps), so the ranks agree on the largest count and the others split their
largest micro-batches until they have as many.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RowSize:
    """The tokens a row brings to a collated micro-batch: its prompt (image placeholder tokens included) and its
    response."""

    prompt: int
    response: int

    @property
    def total(self) -> int:
        return self.prompt + self.response


def padded_tokens(sizes: Sequence[RowSize], group: Sequence[int]) -> int:
    """The token slots of ``group`` once collated: rows x (longest prompt + longest response, at least 1)."""
    if not group:
        return 0
    return len(group) * (max(sizes[i].prompt for i in group) + max(1, max(sizes[i].response for i in group)))


def fixed_rows(rows: Sequence[int], rows_per_micro: int) -> list[list[int]]:
    """``rows`` in order, ``rows_per_micro`` at a time (the last micro-batch may be smaller)."""
    if rows_per_micro < 1:
        raise ValueError(f"rows per micro-batch must be >= 1, got {rows_per_micro}")
    return [list(rows[i : i + rows_per_micro]) for i in range(0, len(rows), rows_per_micro)]


def token_budget(rows: Sequence[int], sizes: Sequence[RowSize], max_tokens: int) -> list[list[int]]:
    """``rows`` sorted longest-first and cut into consecutive micro-batches of at most ``max_tokens`` padded tokens
    (a longer row alone): the fewest micro-batches such a cut allows, and among those the least padding (a dynamic
    programme over the cut points; packing each micro-batch full instead leaves the short rows' micro-batches
    spanning wide length ranges)."""
    if max_tokens < 1:
        raise ValueError(f"the token budget per micro-batch must be >= 1, got {max_tokens}")
    order = sorted(rows, key=lambda i: (-sizes[i].total, -sizes[i].response, i))
    n = len(order)
    # best[j] = (micro-batches, padded tokens) of the best cut of order[:j]; start[j] = where its last one starts
    best: list[tuple[float, float]] = [(0, 0)] + [(float("inf"), float("inf"))] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        max_p = max_t = 0
        for i in range(j - 1, -1, -1):  # the last micro-batch is order[i:j]
            max_p, max_t = max(max_p, sizes[order[i]].prompt), max(max_t, sizes[order[i]].response)
            cost = (j - i) * (max_p + max(1, max_t))
            if cost > max_tokens and j - i > 1:
                break  # adding longer rows only grows it
            candidate = (best[i][0] + 1, best[i][1] + cost)
            if candidate < best[j]:
                best[j], start[j] = candidate, i
    groups, j = [], n
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]


def split_to_count(groups: list[list[int]], sizes: Sequence[RowSize], count: int) -> list[list[int]]:
    """``groups`` with its largest micro-batches (by padded tokens) halved until there are ``count`` of them."""
    groups = [list(g) for g in groups]
    if count < len(groups):
        raise ValueError(f"cannot merge {len(groups)} micro-batches into {count}")
    if count > sum(len(g) for g in groups):
        raise ValueError(f"{count} micro-batches wanted from {sum(len(g) for g in groups)} rows")
    while len(groups) < count:
        splittable = [k for k, g in enumerate(groups) if len(g) > 1]
        k = max(splittable, key=lambda k: (padded_tokens(sizes, groups[k]), -k))
        g = groups.pop(k)
        groups[k:k] = [g[: len(g) // 2], g[len(g) // 2 :]]
    return groups


def plan_micro_batches(rows: Sequence[int], sizes: Sequence[RowSize], *, rows_per_micro: int,
                       max_tokens: int | None, agree_count: Callable[[int], int] = lambda n: n) -> list[list[int]]:
    """The micro-batches of one pass: by token budget when ``max_tokens`` is set, else ``rows_per_micro`` rows each.
    ``agree_count(n)`` returns the largest count over all ranks (identity with one process); a rank with fewer
    micro-batches splits its largest ones to match."""
    groups = token_budget(rows, sizes, max_tokens) if max_tokens is not None else fixed_rows(rows, rows_per_micro)
    count = agree_count(len(groups))
    return split_to_count(groups, sizes, count) if count != len(groups) else groups


@dataclass
class PaddingCount:
    """Real vs collated token slots over the micro-batches of a pass: ``fraction`` = 1 - real / collated."""

    real: int = 0
    collated: int = 0

    def add(self, sizes: Sequence[RowSize], group: Sequence[int]) -> None:
        self.real += sum(sizes[i].total for i in group)
        self.collated += padded_tokens(sizes, group)

    @property
    def fraction(self) -> float:
        return 1.0 - self.real / self.collated if self.collated else 0.0

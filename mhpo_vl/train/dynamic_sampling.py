"""DAPO dynamic sampling on group records: keep only groups whose rewards differ; draw more groups until the batch
is full again (or `max_rounds` is reached, then the batch is topped up with the kept groups repeated so the update
size stays fixed, counted in the metrics). Pure: sampling and the agreement across ranks come in as functions."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mhpo_vl.train.records import Group


@dataclass
class DynamicSample:
    groups: list[Group]  # exactly `want` of them
    rounds: int  # refill rounds run (the same on every rank)
    padded: int  # groups that are repeats, added to fill the batch

    def metrics(self) -> dict[str, float]:
        return {"dynamic_sampling/refill_rounds": float(self.rounds),
                "dynamic_sampling/padded_groups": float(self.padded)}


def informative_groups(groups: list[Group]) -> list[Group]:
    return [g for g in groups if g.informative]


def fill_to_size(kept: list[Group], want: int, fallback: list[Group]) -> tuple[list[Group], int]:
    """`kept` cut or padded to `want` groups by repeating its groups in order; with nothing kept, `fallback`
    (whose advantages are 0: the update is a no-op). Returns (groups, number of repeats added)."""
    groups = list(kept) if kept else list(fallback)
    padded = 0
    while len(groups) < want:
        groups.append(groups[padded % len(groups)])
        padded += 1
    return groups[:want], padded


def dynamic_sample(first: list[Group], *, want: int, max_rounds: int, draw_more: Callable[[bool], list[Group]],
                   all_agree: Callable[[bool], bool] = lambda ok: ok) -> DynamicSample:
    """`draw_more(needed)` is called once per refill round on every rank: it must draw the round's prompts
    whether or not this rank needs them (the prompt order is one sequence for all ranks) and return new scored
    groups when `needed`. Rounds continue until every rank (`all_agree`) has `want` informative groups."""
    kept = informative_groups(first)
    rounds = 0
    while rounds < max_rounds and not all_agree(len(kept) >= want):
        rounds += 1
        kept.extend(informative_groups(draw_more(len(kept) < want)))
    groups, padded = fill_to_size(kept, want, first)
    return DynamicSample(groups, rounds, padded)

"""The order in which training prompts are visited: seeded, reshuffled each epoch, resumable."""
from __future__ import annotations

import numpy as np


class PromptOrder:
    """Yields batches of dataset indices. Its state (epoch, position) goes into checkpoints, so a resumed run sees
    exactly the prompts the uninterrupted run would have seen."""

    def __init__(self, num_items: int, batch_size: int, *, seed: int, shuffle: bool = True):
        if num_items <= 0:
            raise ValueError("the training set is empty")
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def next_batch(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            perm = self._permutation(self.epoch)
            take = min(self.batch_size - len(out), self.num_items - self.position)
            out.extend(int(i) for i in perm[self.position : self.position + take])
            self.position += take
            if self.position == self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

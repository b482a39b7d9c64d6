"""What starting vLLM's in-process engine changes in the trainer's process, captured before and given back after.

Read from vLLM 0.32's source and measured on CPU (docs/training.md, "The engine and the trainer's process"):
- CPU: ``CPUWorker.init_device`` replaces ``torch.set_num_threads`` with a function that only logs a warning
  (``v1/worker/cpu_worker.py``), for the rest of the process: a later trainer (the study, ``eval-run``) or any
  later ``trainer.num_threads`` could no longer set torch's threads, silently.
- CUDA: ``GPUWorker`` ends its start-up with ``set_torch_threads_for_runtime()``, i.e. ``torch.set_num_threads(1)``
  (``v1/worker/gpu_worker.py``, ``utils/torch_utils.py``): the trainer's CPU work would run on one thread.
- both: ``set_random_seed(model seed)`` re-seeds the python, numpy and torch (CPU and CUDA) global generators.
- CUDA: the worker calls ``set_device_index(cuda:local_rank)``, which moves the trainer's current device.

``ProcessState.capture()`` before the engine starts and ``restore()`` after give all of it back; the engine's own
thread count (1 on CUDA) is put back around each engine call with ``torch_threads`` (vLLM's compiled graphs were
traced with it).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ProcessState:
    set_num_threads: Callable[[int], None]  # torch's own function (vLLM's CPU worker swaps in a no-op)
    num_threads: int
    python_rng: tuple[Any, ...]
    numpy_rng: Any
    torch_rng: torch.Tensor
    cuda_device: int | None
    cuda_rng: torch.Tensor | None  # the current device's only: reading every device's would open a context on each

    @classmethod
    def capture(cls) -> ProcessState:
        device = torch.cuda.current_device() if torch.cuda.is_available() else None
        return cls(set_num_threads=torch.set_num_threads, num_threads=torch.get_num_threads(),
                   python_rng=random.getstate(), numpy_rng=np.random.get_state(), torch_rng=torch.get_rng_state(),
                   cuda_device=device, cuda_rng=None if device is None else torch.cuda.get_rng_state(device))

    def restore(self) -> None:
        torch.set_num_threads = self.set_num_threads  # type: ignore[assignment]
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_device is not None and self.cuda_rng is not None:
            torch.cuda.set_device(self.cuda_device)
            torch.cuda.set_rng_state(self.cuda_rng, self.cuda_device)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on `n` torch threads, then go back to the caller's count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

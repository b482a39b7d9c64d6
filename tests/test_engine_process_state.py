"""Issue 25 item 4: after vLLM's in-process engine starts, the process is the trainer's again.

vLLM 0.32's CPU worker swaps ``torch.set_num_threads`` for a no-op for the rest of the process, its GPU worker sets
torch to 1 thread, and both re-seed the global RNGs (rollout/process_state.py). The unit tests do to the process
what vLLM does and check ``ProcessState`` undoes it; the slow test starts the real engine (CPU build) and checks the
process afterwards: torch's own ``set_num_threads`` back and working, the caller's thread count, the caller's random
streams (the same draws as without the engine), and a generate call that leaves the caller's threads alone.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mhpo_vl.rollout.process_state import ProcessState, torch_threads


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def keep_threads():
    threads, setter = torch.get_num_threads(), torch.set_num_threads
    yield
    torch.set_num_threads = setter
    setter(threads)


def test_restore_undoes_what_the_engine_does_to_the_process(keep_threads):
    torch.set_num_threads(2)
    _seed(5)
    expected = _draws()
    _seed(5)
    state = ProcessState.capture()
    # what vLLM 0.32 does while its engine starts (cpu_worker.py init_device, gpu_worker.py, set_random_seed)
    torch.set_num_threads(1)
    torch.set_num_threads = lambda n: None  # type: ignore[assignment]
    _seed(123)
    state.restore()
    assert torch.set_num_threads is torch._C.set_num_threads
    assert torch.get_num_threads() == 2
    assert _draws() == expected  # the caller's streams continue as if the engine had not started
    torch.set_num_threads(1)  # and setting threads works again
    assert torch.get_num_threads() == 1


def test_torch_threads_runs_a_block_on_its_count_and_gives_the_callers_back(keep_threads):
    torch.set_num_threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("an engine call failed")
    assert torch.get_num_threads() == 2


@pytest.mark.slow
def test_the_real_engine_leaves_threads_rng_and_set_num_threads_to_the_caller(tiny_text_model_dir, keep_threads):
    from encode_helpers import encode_text_prompt

    from mhpo_vl.models.policy import load_policy
    from mhpo_vl.rollout import SamplingConfig, VLLMSampler

    policy = load_policy(tiny_text_model_dir)
    prompts = [encode_text_prompt(policy.tokenizer, "Solve 3x + 1 = 10.")]
    torch.set_num_threads(1)
    _seed(5)
    expected = _draws()
    _seed(5)
    sampler = VLLMSampler(tiny_text_model_dir, max_model_len=256, seed=123)  # vLLM seeds its generators with 123
    try:
        assert _draws() == expected
        assert torch.set_num_threads is torch._C.set_num_threads  # not vLLM's CPU worker's no-op
        assert torch.get_num_threads() == 1 and sampler.engine_threads == 1
        torch.set_num_threads(2)  # e.g. the next trainer in this process (the study runs several)
        assert torch.get_num_threads() == 2
        results = sampler.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_tokens=4, seed=0))
        assert [len(r) for r in results] == [2]
        assert torch.get_num_threads() == 2  # the engine ran on its own count and gave the caller's back
    finally:
        sampler.close()

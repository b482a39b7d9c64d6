"""Rollout samplers: K completions with sampler logprobs that equal the trainer's, vision tokens banned,
weights synced into a live vLLM engine. vLLM tests are @slow (engine start ~5-10 s on CPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from encode_helpers import encode_image_prompt, encode_text_prompt, make_batch, noise_image

from mhpo_vl.models.policy import load_policy, per_token_logprobs, vision_token_ids
from mhpo_vl.rollout import HFSampler, SamplingConfig
from mhpo_vl.types import Completion


@pytest.fixture(scope="module")
def vl_policy(tiny_vl_model_dir):
    return load_policy(tiny_vl_model_dir)


def _prompts(policy):
    return [
        encode_image_prompt(policy.processor, "Find the measure of angle ABC.", noise_image(100, 80, seed=1), "a"),
        encode_text_prompt(policy.tokenizer, "What is 2+2?", "b"),
        encode_image_prompt(policy.processor, "Find x.", noise_image(60, 140, seed=2), "c"),
    ]


def _trainer_logprobs(policy, prompts, results, temperature):
    """(trainer logprobs [N, T], sampler logprobs [N, T], mask [N, T]) for all completions, prompt-major."""
    rows = [(p, c) for p, cs in zip(prompts, results) for c in cs]
    batch = make_batch([p for p, _ in rows], [c.token_ids for _, c in rows], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        trainer_NT, _ = per_token_logprobs(
            policy.model, batch, temperature=temperature, suppressed_token_ids=vision_token_ids(policy.tokenizer)
        )
    sampler_NT = torch.zeros_like(trainer_NT)
    for i, (_, c) in enumerate(rows):
        sampler_NT[i, : len(c.sampler_logprobs)] = torch.tensor(c.sampler_logprobs)
    return trainer_NT, sampler_NT, batch.response_mask_NT


def _favour_vision_tokens(model, banned_ids, scale=30.0):
    """Scale the lm_head rows of the banned tokens so that, unbanned, they would win most steps."""
    with torch.no_grad():
        model.lm_head.weight[banned_ids] *= scale


def test_sampling_config_validates():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=1.5)
    # prompt i's completions start at seed + i * n
    assert SamplingConfig(n=4, seed=10).request_seed(2) == 18 and SamplingConfig().request_seed(3) is None


def test_hf_sampler_logprobs_equal_trainer_logprobs(vl_policy):
    sampler = HFSampler(vl_policy.model, vl_policy.processor)
    prompts = _prompts(vl_policy)
    config = SamplingConfig(n=3, temperature=0.7, max_tokens=10, seed=1)
    results = sampler.generate(prompts, config)
    assert [len(r) for r in results] == [3, 3, 3]
    assert all(isinstance(c, Completion) and c.finish_reason in ("stop", "length") for r in results for c in r)
    assert all(len(c.sampler_logprobs) == len(c.token_ids) for r in results for c in r)
    # the K completions of a prompt are different samples
    assert len({tuple(c.token_ids) for c in results[0]}) == 3
    trainer_NT, sampler_NT, mask_NT = _trainer_logprobs(vl_policy, prompts, results, temperature=0.7)
    torch.testing.assert_close(sampler_NT * mask_NT, trainer_NT, rtol=0, atol=1e-4)
    # seeded: the same call again gives the same completions
    assert [[c.token_ids for c in r] for r in sampler.generate(prompts, config)] == \
        [[c.token_ids for c in r] for r in results]
    # one generate() per prompt (batches of n rows): the same distribution, so the logprobs agree as well
    one_by_one = HFSampler(vl_policy.model, vl_policy.processor, max_rows_per_call=3).generate(prompts, config)
    trainer_single_NT, single_NT, single_mask_NT = _trainer_logprobs(vl_policy, prompts, one_by_one, temperature=0.7)
    torch.testing.assert_close(single_NT * single_mask_NT, trainer_single_NT, rtol=0, atol=1e-4)
    assert sampler.load_weights(vl_policy.model.named_parameters()) == 0


def test_hf_sampler_never_generates_vision_tokens(vl_policy):
    model = copy.deepcopy(vl_policy.model)
    banned = vision_token_ids(vl_policy.tokenizer)
    _favour_vision_tokens(model, banned)
    sampler = HFSampler(model, vl_policy.processor)
    prompts = _prompts(vl_policy)[:2]
    config = SamplingConfig(n=4, max_tokens=16, seed=0)
    # Without the ban the scaled rows dominate: check the test would catch a leak.
    sampler.banned_token_ids = []
    leaked = [t for r in sampler.generate(prompts, config) for c in r for t in c.token_ids if t in banned]
    assert len(leaked) > 20
    sampler.banned_token_ids = banned
    generated = [t for r in sampler.generate(prompts, config) for c in r for t in c.token_ids]
    assert len(generated) > 0 and not set(generated) & set(banned)


def test_hf_sampler_rejects_stop_strings(vl_policy):
    sampler = HFSampler(vl_policy.model, vl_policy.processor)
    with pytest.raises(ValueError, match="does not support SamplingConfig.stop"):
        sampler.generate(_prompts(vl_policy)[:1], SamplingConfig(stop=["\n"]))


# ------------------------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_sampler(tiny_vl_model_dir):
    from mhpo_vl.rollout import VLLMSampler

    sampler = VLLMSampler(tiny_vl_model_dir, max_model_len=1024, seed=0)
    print(f"vLLM engine init: {sampler.init_seconds:.1f} s")
    return sampler


@pytest.mark.slow
def test_vllm_keeps_prompt_ids_and_logprobs_match_trainer(vl_policy, vllm_sampler):
    prompts = _prompts(vl_policy)
    config = SamplingConfig(n=3, temperature=0.7, max_tokens=12, seed=3)
    results = vllm_sampler.generate(prompts, config)  # raises if vLLM's prompt ids differ from prompt_token_ids
    outputs = vllm_sampler.llm.generate(
        [vllm_sampler._request(p) for p in prompts], vllm_sampler._sampling_params(config, 0), use_tqdm=False
    )
    image_pad = vl_policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for prompt, out in zip(prompts, outputs):
        assert list(out.prompt_token_ids) == prompt.prompt_token_ids
    assert prompts[0].prompt_token_ids.count(image_pad) == 12  # 100x80 image -> 12 visual tokens, expanded
    assert [len(r) for r in results] == [3, 3, 3]
    assert all(len(c.token_ids) == 12 and c.finish_reason == "length" for r in results for c in r)
    trainer_NT, sampler_NT, mask_NT = _trainer_logprobs(vl_policy, prompts, results, temperature=0.7)
    torch.testing.assert_close(sampler_NT * mask_NT, trainer_NT, rtol=0, atol=1e-3)
    # seeded: same config, same completions
    again = vllm_sampler.generate(prompts, config)
    assert [[c.token_ids for c in r] for r in again] == [[c.token_ids for c in r] for r in results]


@pytest.mark.slow
def test_vllm_load_weights_then_logprobs_follow_the_new_weights(vl_policy, vllm_sampler):
    prompts = _prompts(vl_policy)
    config = SamplingConfig(n=2, temperature=1.0, max_tokens=10, seed=7)
    original = {n: p.detach().clone() for n, p in vl_policy.model.named_parameters()}
    old_model = copy.deepcopy(vl_policy.model)
    try:
        with torch.no_grad():  # perturb the LM only (the vision tower is frozen in training)
            for name, param in vl_policy.model.named_parameters():
                if not name.startswith("model.visual."):
                    param.add_(torch.randn_like(param) * 0.05)
        lm_weights = [(n, p) for n, p in vl_policy.model.named_parameters() if not n.startswith("model.visual.")]
        assert vllm_sampler.load_weights(lm_weights) == len(lm_weights)
        results = vllm_sampler.generate(prompts, config)
        trainer_NT, sampler_NT, mask_NT = _trainer_logprobs(vl_policy, prompts, results, temperature=1.0)
        torch.testing.assert_close(sampler_NT * mask_NT, trainer_NT, rtol=0, atol=1e-3)
        old_policy = type(vl_policy)(old_model, vl_policy.processor, vl_policy.tokenizer, True, 0)
        old_NT, _, _ = _trainer_logprobs(old_policy, prompts, results, temperature=1.0)
        assert (old_NT - sampler_NT * mask_NT).abs().max() > 0.05  # the engine really runs the new weights

        # With vision-token rows scaled up, the ban is what keeps them out.
        banned = vision_token_ids(vl_policy.tokenizer)
        _favour_vision_tokens(vl_policy.model, banned)
        vllm_sampler.load_weights([("lm_head.weight", vl_policy.model.lm_head.weight)])
        results = vllm_sampler.generate(prompts, SamplingConfig(n=4, max_tokens=16, seed=0))
        generated = [t for r in results for c in r for t in c.token_ids]
        assert len(generated) > 0 and not set(generated) & set(banned)
        trainer_NT, sampler_NT, mask_NT = _trainer_logprobs(vl_policy, prompts, results, temperature=1.0)
        torch.testing.assert_close(sampler_NT * mask_NT, trainer_NT, rtol=0, atol=1e-3)
    finally:
        with torch.no_grad():
            for name, param in vl_policy.model.named_parameters():
                param.copy_(original[name])
        vllm_sampler.load_weights(vl_policy.model.named_parameters())


@pytest.mark.slow
def test_vllm_text_model_and_cpu_sleep_is_a_no_op(tiny_text_model_dir):
    from mhpo_vl.rollout import VLLMSampler

    policy = load_policy(tiny_text_model_dir)
    sampler = VLLMSampler(tiny_text_model_dir, max_model_len=512, seed=0)
    sampler.sleep()
    sampler.wake_up()
    prompts = [encode_text_prompt(policy.tokenizer, "Solve 3x + 1 = 10.")]
    results = sampler.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_tokens=8, seed=0))
    trainer_NT, sampler_NT, mask_NT = _trainer_logprobs(policy, prompts, results, temperature=1.0)
    torch.testing.assert_close(sampler_NT * mask_NT, trainer_NT, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="not less than max_model_len=512"):
        long = encode_text_prompt(policy.tokenizer, "x " * 600)
        sampler.generate([long], SamplingConfig())

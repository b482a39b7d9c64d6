"""Qwen3-VL end to end on CPU: the tiny random Qwen3-VL (Qwen3's tokenizer and chat template), geosynth image prompts
through the PromptEncoder, vLLM sampling whose logprobs equal the trainer's, one update with the vision tower frozen,
weight sync into vLLM, and a 2-step RL run through build_trainer. The family is read from the checkpoint's config
(load_policy / vLLM), nothing here names a Qwen3-VL class except the asserts."""
from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from encode_helpers import encode_text_prompt
from run_helpers import read_metrics, small_overrides

from mhpo_vl.collate import PromptEncoder, collate_sequences
from mhpo_vl.config import load_config
from mhpo_vl.datasets.base import load_dataset
from mhpo_vl.models.policy import find_vision_tower, load_policy, per_token_logprobs, vision_token_ids
from mhpo_vl.models.qwen3_chat import QWEN3_VL_CHAT_TEMPLATE
from mhpo_vl.prompts import get_template
from mhpo_vl.rollout import SamplingConfig

# Qwen's GGUF release of Qwen3-VL-8B-Instruct carries the same template as its chat_template.json.
QWEN3_VL_TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


@pytest.fixture(scope="module")
def qwen3_vl_model_dir():
    from conftest import _build_once

    return _build_once("qwen3_vl", "small")


@pytest.fixture(scope="module")
def policy(qwen3_vl_model_dir):
    return load_policy(qwen3_vl_model_dir)


def _geo_prompts(policy, n=3):
    samples = list(load_dataset("geosynth", split="train", n=8, seed=0, difficulty=0))[:n]
    encoder = PromptEncoder(policy.processor, get_template("direct_boxed"), max_prompt_length=512)
    prompts = encoder.encode(samples)
    assert [encoder.prompt_length(s) for s in samples] == [len(p.prompt_token_ids) for p in prompts]
    return prompts


def _logprobs(model, tokenizer, prompts, results, temperature):
    """(trainer [N, T], sampler [N, T], batch) over all completions, prompt-major."""
    rows = [(p, c) for p, cs in zip(prompts, results) for c in cs]
    batch = collate_sequences([p for p, _ in rows], [c.token_ids for _, c in rows], tokenizer.pad_token_id)
    with torch.no_grad():
        trainer_NT, _ = per_token_logprobs(model, batch, temperature=temperature,
                                           suppressed_token_ids=vision_token_ids(tokenizer))
    sampler_NT = torch.zeros_like(trainer_NT)
    for i, (_, c) in enumerate(rows):
        sampler_NT[i, : len(c.sampler_logprobs)] = torch.tensor(c.sampler_logprobs)
    return trainer_NT, sampler_NT * batch.response_mask_NT, batch


def test_qwen3_tokenizer_and_chat_template_are_qwen3_vls():
    """The real-vocabulary tokenizer: Qwen2.5-VL's 151,665 entries + Qwen3's 4 added tokens at Qwen3's ids; the chat
    template byte for byte; no default system prompt (Qwen2.5-VL's adds one)."""
    from mhpo_vl.models.tiny import TinySizes, qwen3_mrope_section, qwen3_tokenizer

    assert hashlib.sha256(QWEN3_VL_CHAT_TEMPLATE.encode()).hexdigest() == QWEN3_VL_TEMPLATE_SHA256
    tokenizer, rows = qwen3_tokenizer(TinySizes(vocab="qwen"))
    assert (len(tokenizer), rows) == (151_669, 151_936)
    assert tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<tool_response>", "<think>",
                                            "</think>"]) == [151655, 151652, 151665, 151667, 151668]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer.encode("<think>\nx = 3\n</think>"), skip_special_tokens=True) == "<think>\nx = 3\n</think>"
    assert qwen3_mrope_section(128) == [24, 20, 20] and qwen3_mrope_section(32) == [6, 5, 5]


def test_load_policy_reads_the_family_from_the_config(policy, qwen3_vl_model_dir):
    assert type(policy.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(policy.processor).__name__ == "Qwen3VLProcessor" and policy.is_vision
    tower = find_vision_tower(policy.model)
    assert tower is policy.model.model.visual and policy.num_frozen_params == sum(p.numel() for p in tower.parameters())
    assert all(not p.requires_grad for p in tower.parameters())  # the DeepStack mergers live in the tower too
    assert vision_token_ids(policy.tokenizer) == sorted(policy.tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]))
    prompts = _geo_prompts(policy)
    assert prompts[0].prompt_text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
    assert prompts[0].model_inputs["pixel_values"].shape[1] == 3 * 2 * 16 * 16  # patch 16, temporal patch 2
    # Trainer logprobs of a response: a batched, left-padded row equals the row alone (M-RoPE via get_rope_index).
    responses = [[5, 6, 7], [8, 9], [10, 11, 12]]
    batch = collate_sequences(prompts, responses, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        together_NT, _ = per_token_logprobs(policy.model, batch)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            alone_NT, _ = per_token_logprobs(policy.model, collate_sequences([p], [r], policy.tokenizer.pad_token_id))
            torch.testing.assert_close(together_NT[i, : len(r)], alone_NT[0], rtol=0, atol=1e-5)
        # A batch without images can still run the tower (ZeRO-3's idle pass) and gets the same logprobs.
        text = collate_sequences([encode_text_prompt(policy.tokenizer, "What is 2+2?")], [[5, 6]],
                                 policy.tokenizer.pad_token_id)
        torch.testing.assert_close(per_token_logprobs(policy.model, text, run_idle_vision_tower=True)[0],
                                   per_token_logprobs(policy.model, text)[0], rtol=0, atol=0)


@pytest.mark.slow
def test_vllm_samples_qwen3_vl_logprobs_agree_update_and_sync(policy, qwen3_vl_model_dir):
    from mhpo_vl.rollout import VLLMSampler

    sampler = VLLMSampler(qwen3_vl_model_dir, max_model_len=1024, seed=0)
    model = copy.deepcopy(policy.model)  # the module's policy stays as built
    prompts = _geo_prompts(policy)
    config = SamplingConfig(n=2, temperature=0.7, max_tokens=12, seed=3)
    results = sampler.generate(prompts, config)  # raises if vLLM's prompt ids differ from the encoder's
    assert [len(r) for r in results] == [2, 2, 2]
    trainer_NT, sampler_NT, batch = _logprobs(model, policy.tokenizer, prompts, results, 0.7)
    diff = (trainer_NT - sampler_NT).abs().max().item()
    print(f"Qwen3-VL trainer vs vLLM logprobs, before the update: max |diff| = {diff:.2e}")
    assert diff < 1e-5

    # One policy-gradient update with fixed advantages (+1 / -1 per group): the vision tower is frozen.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    vision = {n for n in before if n.startswith("model.visual.")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert vision and len(trainable) == len(before) - len(vision)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    advantages_N1 = torch.tensor([1.0, -1.0] * len(prompts))[:, None]
    logprobs_NT, _ = per_token_logprobs(model, batch, temperature=0.7, suppressed_token_ids=vision_token_ids(policy.tokenizer))
    (-(advantages_N1 * logprobs_NT * batch.response_mask_NT).sum() / batch.response_mask_NT.sum()).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in vision), "a vision-tower parameter changed"
    unmoved = sorted(n for n in before if n not in vision and torch.equal(before[n], after[n]))
    assert not unmoved, f"LM parameters that did not move: {unmoved}"

    # Sync the LM weights (HF names; vLLM's Qwen3-VL maps them) and sample again: agreement at the new weights.
    lm_weights = [(n, p.detach()) for n, p in model.named_parameters() if n not in vision]
    assert sampler.load_weights(lm_weights) == len(lm_weights)
    results = sampler.generate(prompts, config)
    trainer_NT, sampler_NT, _ = _logprobs(model, policy.tokenizer, prompts, results, 0.7)
    diff = (trainer_NT - sampler_NT).abs().max().item()
    print(f"Qwen3-VL trainer vs vLLM logprobs, after the update and sync: max |diff| = {diff:.2e}")
    assert diff < 1e-5
    old_NT, _, _ = _logprobs(policy.model, policy.tokenizer, prompts, results, 0.7)
    assert (old_NT - sampler_NT).abs().max() > 1e-2  # vLLM really runs the updated weights
    sampler.close()


def _distinct_characters_reward(samples, texts, truncated=None):
    """A reward the random model's answers differ in (it never answers a geosynth problem right), so groups have
    variance and the update is not zero."""
    from types import SimpleNamespace

    verdicts = [SimpleNamespace(correct=False, format_ok=True) for _ in texts]
    return SimpleNamespace(rewards=[len(set(t)) / 10.0 for t in texts], verdicts=verdicts)


def test_two_rl_steps_on_tiny_qwen3_vl_through_build_trainer(tmp_path):
    """`model.name_or_path: tiny:qwen3_vl` through the whole loop (HF sampler): rollout, reward, update, sync."""
    from mhpo_vl.train import build_trainer

    cfg = load_config(None, small_overrides("tiny:qwen3_vl", tmp_path / "run", **{
        "model.tiny_overrides": "{vocab: small}", "rollout.backend": "hf", "trainer.total_steps": "2",
        "trainer.val_every": "0", "trainer.save_every": "0", "optim.weight_decay": "0.0"}))
    trainer = build_trainer(cfg, reward_fn=_distinct_characters_reward)
    model = trainer.rt.unwrapped()
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    vision = {n for n in before if n.startswith("model.visual.")}
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert vision and optimised == {id(p) for n, p in model.named_parameters() if n not in vision}
    summary = trainer.fit()
    assert summary["steps"] == 2
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in vision), "a vision-tower parameter changed"
    unmoved = sorted(n for n in before if n not in vision and torch.equal(before[n], after[n]))
    assert not unmoved, f"LM parameters that did not move: {unmoved}"


@pytest.mark.slow
def test_train_by_hub_name_qwen3_vl_offline(tmp_path, fixtures_dir, qwen3_vl_model_dir):
    """`model.name_or_path: Qwen/Qwen3-VL-8B-Instruct` from a Hugging Face cache laid out offline (tests/hub_cache.py)
    holding the tiny Qwen3-VL: 2 RL steps through vLLM (sample, reward, update, sync) in a subprocess."""
    from hub_cache import write_geometry3k_repo, write_model_repo
    from test_hub_cache import SPLITS, cli

    home = tmp_path / "hf_home"
    write_geometry3k_repo(home / "hub", fixtures_dir / "geometry3k", SPLITS, tmp_path / "parquet")
    write_model_repo(home / "hub", "Qwen/Qwen3-VL-8B-Instruct", qwen3_vl_model_dir)
    run_dir = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("{}\n")
    overrides = small_overrides("Qwen/Qwen3-VL-8B-Instruct", run_dir, **{
        "data.train": "{name: geometry3k, split: train}", "data.val": "{name: geometry3k, split: test}",
        "rollout.n": "2", "rollout.val_n": "1", "trainer.rollout_batch_size": "2", "trainer.total_steps": "2"})
    done = cli(home, "train", "--config", str(tmp_path / "empty.yaml"), *overrides)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [r for r in read_metrics(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    print("Qwen3-VL by hub name, rollout/logprob_diff_max per step:", [r["rollout/logprob_diff_max"] for r in rows])
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in rows), rows

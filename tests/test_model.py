"""mhpo_vl.models.policy: vision-tower freezing, chunked per-token logprobs (values, gradients, padding invariance)."""
from __future__ import annotations

import pytest
import torch
from encode_helpers import encode_image_prompt, encode_text_prompt, make_batch, noise_image

from mhpo_vl.models.policy import (
    VisionTowerNotFoundError,
    chunked_lm_head_logprobs,
    forward_replaced,
    freeze_vision_tower,
    load_policy,
    per_token_logprobs,
    vision_token_ids,
)


@pytest.fixture(scope="module")
def vl_policy(tiny_vl_model_dir):
    torch.manual_seed(0)
    return load_policy(tiny_vl_model_dir)


@pytest.fixture(scope="module")
def text_policy(tiny_text_model_dir):
    return load_policy(tiny_text_model_dir)


def _naive_logprobs(hidden_MH, weight_VH, bias_V, targets_M, temperature=1.0, suppressed=None):
    logits = torch.nn.functional.linear(hidden_MH, weight_VH, bias_V) / temperature
    if suppressed is not None:
        logits = logits.index_fill(1, torch.tensor(suppressed), float("-inf"))
    logp = torch.log_softmax(logits, -1)
    p = logp.exp()
    entropy = -(p * logp.masked_fill(p == 0, 0)).sum(-1)
    return logp.gather(1, targets_M[:, None]).squeeze(1), entropy


def test_load_policy_freezes_exactly_the_vision_tower(vl_policy):
    model = vl_policy.model
    assert vl_policy.is_vision and type(vl_policy.processor).__name__ == "Qwen2_5_VLProcessor"
    vision = {n: p for n, p in model.named_parameters() if n.startswith("model.visual.")}
    others = {n: p for n, p in model.named_parameters() if not n.startswith("model.visual.")}
    assert any(".merger." in n for n in vision)  # the merger is part of the tower
    assert all(not p.requires_grad for p in vision.values())
    assert all(p.requires_grad for p in others.values())
    assert vl_policy.num_frozen_params == sum(p.numel() for p in vision.values()) > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_freeze_raises_on_a_model_without_vision_tower(text_policy):
    assert not text_policy.is_vision and text_policy.num_frozen_params == 0
    with pytest.raises(VisionTowerNotFoundError, match=r"top-level modules are \['model', 'lm_head'\]"):
        freeze_vision_tower(text_policy.model)


def test_vision_token_ids_agree_between_tokenizer_and_config(vl_policy):
    from_tokenizer = vision_token_ids(vl_policy.tokenizer)
    assert len(from_tokenizer) == 5
    assert set(vision_token_ids(vl_policy.model.config)) <= set(from_tokenizer)


@pytest.mark.parametrize("temperature,suppressed,with_entropy", [(1.0, None, False), (0.7, [1, 4], True)])
def test_chunked_logprobs_match_naive_values_and_gradients_float64(temperature, suppressed, with_entropy):
    torch.manual_seed(0)
    M, H, V = 11, 6, 13  # chunk_size 4 -> chunks of 4, 4, 3 (a ragged last chunk)
    hidden = torch.randn(M, H, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=True).double()
    targets = torch.tensor([0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12])  # never a suppressed id (1, 4)
    w_lp, w_ent = torch.randn(M, dtype=torch.float64), torch.randn(M, dtype=torch.float64)

    lp, ent = chunked_lm_head_logprobs(
        hidden, head, targets, chunk_size=4, temperature=temperature, suppressed_token_ids=suppressed, with_entropy=with_entropy
    )
    loss = (lp * w_lp).sum() + ((ent * w_ent).sum() if with_entropy else 0)
    grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])

    lp_ref, ent_ref = _naive_logprobs(hidden, head.weight, head.bias, targets, temperature, suppressed)
    loss_ref = (lp_ref * w_lp).sum() + ((ent_ref * w_ent).sum() if with_entropy else 0)
    grads_ref = torch.autograd.grad(loss_ref, [hidden, head.weight, head.bias])

    torch.testing.assert_close(lp, lp_ref, rtol=0, atol=1e-12)
    if with_entropy:
        torch.testing.assert_close(ent, ent_ref, rtol=0, atol=1e-12)
    else:
        assert ent is None
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_chunked_logprobs_pass_gradcheck():
    torch.manual_seed(1)
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 6, 2, 2, 5])

    def fn(h, w):
        head = torch.nn.Linear(3, 7, bias=False).double()
        head.weight = torch.nn.Parameter(w) if not isinstance(w, torch.nn.Parameter) else w
        del head.weight
        head.weight = w
        lp, ent = chunked_lm_head_logprobs(h, head, targets, chunk_size=2, temperature=1.3, with_entropy=True)
        return lp, ent

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def _image_prompts(policy):
    proc = policy.processor
    return [
        encode_image_prompt(proc, "Find the measure of angle ABC.", noise_image(100, 80, seed=1)),
        encode_image_prompt(proc, "In triangle ABC, AB = 3 and BC = 4. Find AC, the length of the hypotenuse.", noise_image(60, 140, seed=2)),
        encode_text_prompt(policy.tokenizer, "What is 2+2?"),
    ]


def test_per_token_logprobs_equal_full_forward_logits_for_one_row(vl_policy):
    model, tok = vl_policy.model, vl_policy.tokenizer
    prompt = _image_prompts(vl_policy)[0]
    response = tok("The answer is \\boxed{42}.")["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    batch = make_batch([prompt], [response], tok.pad_token_id)
    with torch.no_grad():
        lp_NT, ent_NT = per_token_logprobs(model, batch, chunk_size=3, with_entropy=True, temperature=0.8)
        # The reference is HF's own forward with M-RoPE: it needs the token types (1 = image token).
        mm_token_type_ids = (batch.input_ids_NL == model.config.image_token_id).long()
        logits = model(
            input_ids=batch.input_ids_NL, attention_mask=batch.attention_mask_NL, mm_token_type_ids=mm_token_type_ids, **batch.model_inputs
        ).logits
    P, T = len(prompt.prompt_token_ids), len(response)
    # logits at positions P-1 .. P+T-2 predict response tokens 0 .. T-1
    ref_logp = torch.log_softmax(logits[0, P - 1 : P + T - 1] / 0.8, -1)
    torch.testing.assert_close(lp_NT[0], ref_logp.gather(1, torch.tensor(response)[:, None]).squeeze(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent_NT[0], -(ref_logp.exp() * ref_logp).sum(-1), rtol=0, atol=1e-5)


def test_left_padded_batch_gives_each_row_its_own_logprobs(vl_policy):
    model, tok = vl_policy.model, vl_policy.tokenizer
    prompts = _image_prompts(vl_policy)  # prompt lengths differ: two image sizes and one text-only prompt
    assert len({len(p.prompt_token_ids) for p in prompts}) == 3
    responses = [tok(t)["input_ids"] for t in ["<think>\nx = 75\n</think>\n\\boxed{75}", "5", "It is 4, so \\boxed{4}."]]
    with torch.no_grad():
        batched_NT, _ = per_token_logprobs(model, make_batch(prompts, responses, tok.pad_token_id))
        for i, (p, r) in enumerate(zip(prompts, responses)):
            alone_1T, _ = per_token_logprobs(model, make_batch([p], [r], tok.pad_token_id))
            torch.testing.assert_close(batched_NT[i, : len(r)], alone_1T[0], rtol=0, atol=2e-5)
            assert (batched_NT[i, len(r) :] == 0).all()


def test_per_token_logprobs_gradient_matches_naive_full_logits(text_policy):
    model, tok = text_policy.model, text_policy.tokenizer
    prompts = [encode_text_prompt(tok, "Solve 3x + 1 = 10."), encode_text_prompt(tok, "Hi")]
    responses = [tok("x = 3")["input_ids"], tok("Hello there, \\boxed{1}")["input_ids"]]
    batch = make_batch(prompts, responses, tok.pad_token_id)
    params = [model.lm_head.weight, model.model.layers[0].self_attn.q_proj.weight]

    lp_NT, _ = per_token_logprobs(model, batch, chunk_size=4, temperature=1.0)
    grads = torch.autograd.grad(lp_NT.sum(), params)

    T = batch.response_ids_NT.shape[1]
    position_ids = (batch.attention_mask_NL.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids_NL, attention_mask=batch.attention_mask_NL, position_ids=position_ids).logits
    ref_NT = torch.log_softmax(logits[:, -T - 1 : -1], -1).gather(2, batch.response_ids_NT[..., None]).squeeze(2)
    ref_NT = ref_NT * batch.response_mask_NT
    grads_ref = torch.autograd.grad(ref_NT.sum(), params)
    torch.testing.assert_close(lp_NT, ref_NT, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_suppressed_token_in_a_response_is_a_clear_error(vl_policy):
    tok = vl_policy.tokenizer
    prompt = encode_text_prompt(tok, "Hi")
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    batch = make_batch([prompt, prompt], [[5, 6], [7, image_pad, 8]], tok.pad_token_id)
    with pytest.raises(ValueError, match=rf"response row 1 holds suppressed token id {image_pad} at response position 1"):
        per_token_logprobs(vl_policy.model, batch, suppressed_token_ids=vision_token_ids(tok))


def test_chunked_logprobs_run_as_the_lm_head_forward_so_its_hooks_wrap_them():
    """ZeRO-3 gathers a module's weight in its forward pre-hook and before its backward: the chunked computation
    must be a call of the lm_head module (hooks fire once, forward and backward), and leave its forward as it was."""
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(8, 11, bias=False)
    calls = []
    lm_head.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    lm_head.register_full_backward_pre_hook(lambda m, grad: calls.append("backward"))
    hidden = torch.randn(5, 8, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    logprobs, _ = chunked_lm_head_logprobs(hidden, lm_head, targets, chunk_size=2)
    logprobs.sum().backward()
    assert calls == ["pre", "backward"]
    expected = torch.log_softmax(hidden.detach() @ lm_head.weight.detach().T, -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(logprobs.detach(), expected)
    assert "forward" not in lm_head.__dict__  # the class's forward again
    torch.testing.assert_close(lm_head(hidden), hidden @ lm_head.weight.T)


def test_forward_replaced_puts_back_a_forward_set_on_the_instance():
    module = torch.nn.Identity()
    own = lambda x: x + 1  # noqa: E731  (accelerate's device hooks set module.forward like this)
    module.forward = own
    with forward_replaced(module, lambda x: x * 10):
        assert module(torch.tensor(2.0)) == 20
    assert module.forward is own and module(torch.tensor(2.0)) == 3
    with pytest.raises(RuntimeError, match="boom"), forward_replaced(module, lambda x: (_ for _ in ()).throw(RuntimeError("boom"))):
        module(torch.tensor(1.0))
    assert module.forward is own

"""Load the policy, freeze its vision tower, and compute per-token log-probabilities of sampled responses.

``per_token_logprobs`` never materialises full-vocabulary float32 logits for the whole batch: the lm_head is
applied to chunks of response positions, in the forward pass and again (recomputed) in the backward pass.
For Qwen2.5-VL (V=152,064) and 8k response tokens, full float32 logits alone are 5 GB, twice that with their grad.

Which distribution the log-probabilities describe: ``log_softmax(lm_head(h) / temperature)`` over the vocabulary,
optionally with ``suppressed_token_ids`` removed (see ``vision_token_ids``). This is the distribution vLLM samples
from and reports with ``logprobs_mode="processed_logprobs"`` (temperature applied, banned tokens masked); vLLM's
default ``"raw_logprobs"`` reports ``log_softmax(logits)`` before temperature and masking, which would not match
the trainer for temperature != 1 (vllm/v1/sample/sampler.py, ``Sampler.forward``).

top-p < 1 (``top_p``): the samplers draw from the nucleus and report logprobs renormalised over it (vLLM's
processed logprobs, HF generate's processed scores), so the trainer applies the same nucleus: per position, sort the
temperature-scaled probabilities, drop the ascending prefix whose cumulative mass is <= 1 - top_p (the rule of
vLLM's ``apply_top_k_top_p_pytorch`` and HF's ``TopPLogitsWarper``; the largest token always stays), renormalise
over the rest. The sampled token is always kept in the support, so a later update that pushes it out of the
nucleus gives a finite logprob (at the sampling weights it is in the nucleus anyway). The nucleus is a constant of
the backward pass (its indicator has zero derivative almost everywhere). The entropy stays that of the whole
temperature-scaled distribution. ``top_p == 1`` skips all of it: the same code and numbers as without top-p.
Why the trainer follows the sampler rather than the reverse: docs/training.md, "top-p and the ratio".
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.types import SequenceBatch

# A masked logit: finite so that 0 * masked stays 0 in the entropy (with -inf it would be NaN).
_MASKED_LOGIT = -1e30


class VisionTowerNotFoundError(RuntimeError):
    """Asked to freeze the vision tower of a model that has none where we look for it."""


@dataclass
class LoadedPolicy:
    model: Any
    processor: Any  # AutoProcessor for vision-language models, the tokenizer for text-only ones
    tokenizer: Any
    is_vision: bool
    num_frozen_params: int  # parameter elements frozen (the vision tower), 0 for text models


def is_vision_config(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def load_policy(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    freeze_vision: bool = True,
    attn_implementation: str | None = None,
) -> LoadedPolicy:
    """Load a model (hub name or local folder) with transformers' Auto classes, plus its processor/tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    name_or_path = str(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path)
    is_vision = is_vision_config(config)
    model_cls = AutoModelForImageTextToText if is_vision else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = model_cls.from_pretrained(name_or_path, **kwargs)
    if is_vision:
        processor = AutoProcessor.from_pretrained(name_or_path)
        tokenizer = processor.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        processor = tokenizer
    num_frozen = freeze_vision_tower(model) if (is_vision and freeze_vision) else 0
    return LoadedPolicy(model=model, processor=processor, tokenizer=tokenizer, is_vision=is_vision, num_frozen_params=num_frozen)


def find_vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder incl. its patch merger: ``model.model.visual`` in transformers v5 Qwen2/2.5-VL."""
    for owner in (getattr(model, "model", None), model):
        tower = getattr(owner, "visual", None) if owner is not None else None
        if isinstance(tower, torch.nn.Module):
            return tower
    top = [name for name, _ in model.named_children()]
    inner = getattr(model, "model", None)
    inner_names = [name for name, _ in inner.named_children()] if isinstance(inner, torch.nn.Module) else []
    raise VisionTowerNotFoundError(
        f"no vision tower found on {type(model).__name__}: looked for `.model.visual` and `.visual`; "
        f"top-level modules are {top}" + (f", `.model` holds {inner_names}" if inner_names else "")
        + ". Set freeze_vision=False for a text-only model."
    )


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Set requires_grad=False on every vision-tower parameter (merger included); returns the elements frozen."""
    tower = find_vision_tower(model)
    frozen = 0
    for param in tower.parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen


def vision_token_ids(config_or_tokenizer: Any) -> list[int]:
    """Ids of the vision placeholder/marker tokens a response must never contain (sampler bans them)."""
    names = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
    if hasattr(config_or_tokenizer, "convert_tokens_to_ids"):
        ids = [config_or_tokenizer.convert_tokens_to_ids(n) for n in names]
        unk = getattr(config_or_tokenizer, "unk_token_id", None)
        return sorted({i for i in ids if i is not None and i != unk})
    attrs = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({getattr(config_or_tokenizer, a) for a in attrs if getattr(config_or_tokenizer, a, None) is not None})


# ------------------------------------------------------------------ chunked log-probabilities


@contextlib.contextmanager
def forward_replaced(module: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Make ``module(...)`` run ``forward`` for the duration, with the module's hooks still around it.

    Wrappers that manage parameters through module hooks (DeepSpeed ZeRO-3 gathers a module's partitioned weights
    in its forward pre-hook and again before its backward) then treat a computation of ours as that module's
    forward. A forward already set on the instance (accelerate's device hooks do that) is put back afterwards."""
    own = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunk_logits(hidden_CH, weight_VH, bias_V, temperature, suppressed_ids):
    # Softmax in at least float32 (bf16 logits lose the small probabilities); float64 stays float64 for tests.
    logits_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V).to(_acc_dtype(hidden_CH))
    if temperature != 1.0:
        logits_CV = logits_CV.div_(temperature)  # a fresh tensor (linear output), so in place is safe
    if suppressed_ids is not None:
        logits_CV[:, suppressed_ids] = _MASKED_LOGIT
    return logits_CV


# Rows of a chunk whose nucleus is found at once: the sort holds values and int64 indices, plus the cumulative sum,
# ~16 bytes x V per row (V = 152k: 0.3 GB for 128 rows), whatever the lm_head chunk size.
_NUCLEUS_ROWS = 128


def _nucleus_keep(z_CV: torch.Tensor, top_p: float, targets_C: torch.Tensor) -> torch.Tensor:
    """[C, V] bool: the top-p nucleus of softmax(z) per row, as vLLM (``apply_top_k_top_p_pytorch``) and HF
    (``TopPLogitsWarper``) cut it: sorted ascending, the prefix with cumulative probability <= 1 - top_p is dropped,
    the largest token always kept. Kept = logits >= the smallest kept one (a tie at the boundary keeps every tied
    token; the samplers keep them by sort position). The target token is always kept."""
    keep_CV = torch.empty(z_CV.shape, dtype=torch.bool, device=z_CV.device)
    V = z_CV.shape[1]
    for lo in range(0, z_CV.shape[0], _NUCLEUS_ROWS):
        z_RV = z_CV[lo : lo + _NUCLEUS_ROWS]
        sorted_RV = z_RV.sort(dim=-1).values
        cum_RV = sorted_RV.softmax(dim=-1).cumsum_(dim=-1)
        dropped_R = (cum_RV <= 1 - top_p).sum(-1).clamp_(max=V - 1)
        del cum_RV
        threshold_R1 = sorted_RV.gather(1, dropped_R[:, None])
        del sorted_RV
        torch.ge(z_RV, threshold_R1, out=keep_CV[lo : lo + _NUCLEUS_ROWS])
    keep_CV.scatter_(1, targets_C[:, None], True)
    return keep_CV


class _ChunkedLMHeadLogprobs(torch.autograd.Function):
    """logprob of ``targets`` (and entropy) under softmax(lm_head(hidden)/T), ``chunk_size`` rows at a time.

    Backward recomputes each chunk's logits, so peak extra memory is O(chunk_size * V) instead of O(M * V):
    one [C, V] buffer (two with entropy), everything else in place.
    d logprob / d z = onehot(target) - p ;  d entropy / d z = -p * (log p + H) ;  z = logits / T.
    With ``top_p < 1`` the logprob is over the nucleus (``_nucleus_keep``, recomputed in the backward pass): p in its
    gradient is the renormalised nucleus distribution (0 outside); the entropy is the whole distribution's.
    """

    @staticmethod
    def forward(ctx, hidden_MH, weight_VH, bias_V, targets_M, chunk_size, temperature, suppressed_ids, with_entropy,
                top_p):
        M = hidden_MH.shape[0]
        logprobs_M = hidden_MH.new_empty(M, dtype=_acc_dtype(hidden_MH))
        entropy_M = hidden_MH.new_empty(M if with_entropy else 0, dtype=_acc_dtype(hidden_MH))
        with torch.no_grad():
            for start in range(0, M, chunk_size):
                stop = min(start + chunk_size, M)
                z_CV = _chunk_logits(hidden_MH[start:stop], weight_VH, bias_V, temperature, suppressed_ids)
                target_z_C = z_CV.gather(1, targets_M[start:stop, None]).squeeze(1)
                if top_p < 1.0:
                    _nucleus_forward_chunk(z_CV, target_z_C, _nucleus_keep(z_CV, top_p, targets_M[start:stop]),
                                           logprobs_M[start:stop], entropy_M[start:stop] if with_entropy else None)
                    del z_CV
                    continue
                max_C1 = z_CV.amax(dim=-1, keepdim=True)
                shifted_CV = z_CV.sub_(max_C1)  # z - max, in place
                if with_entropy:
                    exp_CV = shifted_CV.exp()
                    sum_C = exp_CV.sum(-1)
                    # H = lse - sum_v p_v z_v = log(sum) - sum_v exp_v (z_v - max) / sum
                    entropy_M[start:stop] = sum_C.log() - torch.linalg.vecdot(exp_CV, shifted_CV) / sum_C
                    del exp_CV
                else:
                    sum_C = shifted_CV.exp_().sum(-1)
                logprobs_M[start:stop] = target_z_C - max_C1.squeeze(1) - sum_C.log()
                del z_CV, shifted_CV
        ctx.save_for_backward(hidden_MH, weight_VH, bias_V, targets_M)
        ctx.chunk_size, ctx.temperature, ctx.suppressed_ids, ctx.with_entropy = chunk_size, temperature, suppressed_ids, with_entropy
        ctx.top_p = top_p
        if not with_entropy:
            ctx.mark_non_differentiable(entropy_M)
        return logprobs_M, entropy_M

    @staticmethod
    def backward(ctx, grad_logprobs_M, grad_entropy_M):
        hidden_MH, weight_VH, bias_V, targets_M = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden_MH) if need_h else None
        # Accumulate the weight grad in float32 across chunks even for bf16 weights.
        acc = _acc_dtype(weight_VH)
        grad_weight = torch.zeros(weight_VH.shape, dtype=acc, device=weight_VH.device) if need_w else None
        grad_bias = torch.zeros(bias_V.shape, dtype=acc, device=bias_V.device) if need_b else None
        use_entropy = ctx.with_entropy and grad_entropy_M is not None and grad_entropy_M.numel() > 0
        M = hidden_MH.shape[0]
        for start in range(0, M, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, M)
            h_CH = hidden_MH[start:stop]
            z_CV = _chunk_logits(h_CH, weight_VH, bias_V, ctx.temperature, ctx.suppressed_ids)
            g_C1 = grad_logprobs_M[start:stop, None].to(z_CV.dtype)
            # The nucleus of the forward pass: the same logits, so the same mask.
            keep_CV = _nucleus_keep(z_CV, ctx.top_p, targets_M[start:stop]) if ctx.top_p < 1.0 else None
            shifted_CV = z_CV.sub_(z_CV.amax(dim=-1, keepdim=True))
            if keep_CV is not None:
                grad_z_CV = p_CV = _nucleus_grad_z(shifted_CV, keep_CV, g_C1,  # (p_CV: released below)
                                                   grad_entropy_M[start:stop, None] if use_entropy else None)
                del keep_CV
            elif use_entropy:
                logp_CV = shifted_CV.sub_(shifted_CV.logsumexp(dim=-1, keepdim=True))
                p_CV = logp_CV.exp()
                entropy_C1 = -torch.linalg.vecdot(p_CV, logp_CV)[:, None]
                # d H / d z = -p * (log p + H), built in the log p buffer
                ent_term_CV = logp_CV.add_(entropy_C1).mul_(p_CV).mul_(-grad_entropy_M[start:stop, None].to(p_CV.dtype))
                grad_z_CV = p_CV.mul_(-g_C1).add_(ent_term_CV)
                del ent_term_CV, logp_CV
            else:
                p_CV = shifted_CV.exp_()
                p_CV.div_(p_CV.sum(-1, keepdim=True))
                grad_z_CV = p_CV.mul_(-g_C1)
            # d log p_target / d z = onehot(target) - p
            grad_z_CV.scatter_add_(1, targets_M[start:stop, None], g_C1)
            if ctx.temperature != 1.0:
                grad_z_CV.div_(ctx.temperature)
            if need_b:
                grad_bias += grad_z_CV.sum(0).to(acc)
            grad_z_CV = grad_z_CV.to(weight_VH.dtype)
            if need_h:
                torch.mm(grad_z_CV, weight_VH, out=grad_hidden[start:stop])
            if need_w:
                if acc == weight_VH.dtype:
                    grad_weight.addmm_(grad_z_CV.T, h_CH)  # in place: no [V, H] temporary per chunk
                else:
                    grad_weight += (grad_z_CV.T @ h_CH).to(acc)
            del z_CV, shifted_CV, p_CV, grad_z_CV
        grad_weight = grad_weight.to(weight_VH.dtype) if need_w else None
        grad_bias = grad_bias.to(bias_V.dtype) if need_b else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _nucleus_forward_chunk(z_CV: torch.Tensor, target_z_C: torch.Tensor, keep_CV: torch.Tensor,
                           logprobs_C: torch.Tensor, entropy_C: torch.Tensor | None) -> None:
    """Fill ``logprobs_C`` with log softmax over the nucleus ``keep_CV`` of the targets (and ``entropy_C`` with the
    whole distribution's entropy); ``z_CV`` is overwritten. The row maximum is always in the nucleus."""
    max_C1 = z_CV.amax(dim=-1, keepdim=True)
    shifted_CV = z_CV.sub_(max_C1)
    if entropy_C is not None:
        exp_CV = shifted_CV.exp()
        sum_C = exp_CV.sum(-1)
        entropy_C.copy_(sum_C.log() - torch.linalg.vecdot(exp_CV, shifted_CV) / sum_C)
        kept_sum_C = exp_CV.masked_fill_(~keep_CV, 0.0).sum(-1)
        del exp_CV
    else:
        kept_sum_C = shifted_CV.exp_().masked_fill_(~keep_CV, 0.0).sum(-1)
    logprobs_C.copy_(target_z_C - max_C1.squeeze(1) - kept_sum_C.log())


def _nucleus_grad_z(shifted_CV: torch.Tensor, keep_CV: torch.Tensor, g_C1: torch.Tensor,
                    grad_entropy_C1: torch.Tensor | None) -> torch.Tensor:
    """d loss / d z for the nucleus logprob (-g * p_nucleus; the caller adds g at the target) plus, when the entropy
    has a gradient, that of the whole distribution's entropy. ``shifted_CV`` (z - max) is overwritten."""
    ent_term_CV = None
    if grad_entropy_C1 is not None:
        logp_CV = shifted_CV - shifted_CV.logsumexp(dim=-1, keepdim=True)
        p_CV = logp_CV.exp()
        entropy_C1 = -torch.linalg.vecdot(p_CV, logp_CV)[:, None]
        ent_term_CV = logp_CV.add_(entropy_C1).mul_(p_CV).mul_(-grad_entropy_C1.to(p_CV.dtype))
        del logp_CV, p_CV
    p_CV = shifted_CV.exp_().masked_fill_(~keep_CV, 0.0)
    p_CV.div_(p_CV.sum(-1, keepdim=True))
    grad_z_CV = p_CV.mul_(-g_C1)
    return grad_z_CV.add_(ent_term_CV) if ent_term_CV is not None else grad_z_CV


def chunked_lm_head_logprobs(
    hidden_MH: torch.Tensor,
    lm_head: torch.nn.Linear,
    targets_M: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    suppressed_token_ids: Sequence[int] | None = None,
    with_entropy: bool = False,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row logprob of ``targets_M`` (and entropy) under lm_head, computed ``chunk_size`` rows at a time;
    ``top_p < 1``: the logprob over the top-p nucleus (module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probabilities, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    suppressed = (
        torch.as_tensor(list(suppressed_token_ids), dtype=torch.long, device=hidden_MH.device)
        if suppressed_token_ids
        else None
    )

    def as_lm_head_forward(h_MH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _ChunkedLMHeadLogprobs.apply(
            h_MH, lm_head.weight, lm_head.bias, targets_M, chunk_size, float(temperature), suppressed, with_entropy,
            float(top_p),
        )

    # Run as the lm_head's own forward so that module hooks wrap it: DeepSpeed ZeRO-3 gathers the partitioned
    # weight around the module's forward and backward and accumulates its gradient while the weight is whole.
    with forward_replaced(lm_head, as_lm_head_forward):
        logprobs_M, entropy_M = lm_head(hidden_MH)
    return logprobs_M, (entropy_M if with_entropy else None)


def _text_position_ids(attention_mask_NL: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row sees the same positions as when run alone."""
    position_ids_NL = attention_mask_NL.long().cumsum(-1) - 1
    return position_ids_NL.clamp_(min=0)


def _position_ids(model: Any, batch: SequenceBatch, model_inputs: dict[str, Any]) -> torch.Tensor:
    input_ids_NL, attention_mask_NL = batch.input_ids_NL, batch.attention_mask_NL
    config = model.config
    if not is_vision_config(config):
        return _text_position_ids(attention_mask_NL)
    if model_inputs.get("image_grid_thw") is None and model_inputs.get("video_grid_thw") is None:
        return _text_position_ids(attention_mask_NL)[None].expand(3, -1, -1)
    # M-RoPE (3 x N x L): image tokens get (t, h, w) grid positions. The token types are rebuilt from input_ids
    # because the processor's mm_token_type_ids cover the prompt only, not prompt + response.
    mm_token_type_ids_NL = torch.zeros_like(input_ids_NL)
    mm_token_type_ids_NL[input_ids_NL == config.image_token_id] = 1
    mm_token_type_ids_NL[input_ids_NL == config.video_token_id] = 2
    position_ids_3NL, _ = model.model.get_rope_index(
        input_ids_NL,
        mm_token_type_ids=mm_token_type_ids_NL,
        image_grid_thw=model_inputs.get("image_grid_thw"),
        video_grid_thw=model_inputs.get("video_grid_thw"),
        second_per_grid_ts=model_inputs.get("second_per_grid_ts"),
        attention_mask=attention_mask_NL,
    )
    return position_ids_3NL


@contextlib.contextmanager
def _idle_vision_tower_after_embedding(model: Any) -> Iterator[None]:
    """While open, the model's token embedding is followed by a run of the vision tower on one blank dummy image,
    whose output is discarded: for a batch without images whose forward must still run the tower.

    Under ZeRO-3 each module's partitioned weights are gathered by a collective as the module runs, and DeepSpeed
    checks that every rank ran the same modules in the same order. When another rank's batch has images its
    forward runs the tower right after the token embedding, inside the base model's forward (Qwen2/2.5-VL
    ``forward``); a forward hook on the embedding runs it at that same point here. The embeddings are left as the
    model computed them. A frozen tower (the default) needs no gradient, and the rank with images gets none through
    it either; a trainable tower (``model.freeze_vision_tower=false``) has its output added times 0 when grad is
    enabled, so its backward (gathers and gradient reduction) runs on every rank as well."""
    visual = find_vision_tower(model)
    patch: Any = visual.patch_embed  # Qwen2/2.5-VL's patch embedding: in_channels, temporal_patch_size, patch_size
    merge = int(getattr(visual, "spatial_merge_size", 2))

    def run_tower(_module: torch.nn.Module, _args: Any, embeds: torch.Tensor) -> torch.Tensor:
        # The smallest image: one merged token of merge x merge patches.
        grid_13 = torch.tensor([[1, merge, merge]], dtype=torch.long, device=embeds.device)
        pixels = torch.zeros(merge * merge, patch.in_channels * patch.temporal_patch_size * patch.patch_size ** 2,
                             dtype=embeds.dtype, device=embeds.device)
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in visual.parameters())
        with torch.set_grad_enabled(trainable):
            out = visual(pixels, grid_thw=grid_13)
        if not trainable:
            return embeds
        features = getattr(out, "pooler_output", out)
        return embeds + 0.0 * features.sum().to(embeds.dtype)

    handle = model.model.get_input_embeddings().register_forward_hook(run_tower)
    try:
        yield
    finally:
        handle.remove()


def per_token_logprobs(
    model: Any,  # a transformers causal LM or VLM (`.model` base, output embeddings); torch types it as Module
    batch: SequenceBatch,
    *,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
    suppressed_token_ids: Sequence[int] | None = None,
    top_p: float = 1.0,
    run_idle_vision_tower: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities [N, T] of ``batch.response_ids_NT`` (and entropies [N, T] if asked), float32 (float64
    for a float64 model).

    Padded response positions (response_mask 0) hold 0. Gradients flow to the model when grad is enabled.
    ``suppressed_token_ids`` (e.g. ``vision_token_ids(tokenizer)``) are removed from the distribution, matching a
    sampler that bans them; a response containing one of them is an error. ``top_p < 1``: logprobs over the
    sampler's top-p nucleus (module docstring). ``run_idle_vision_tower``: a batch without images still runs the
    vision tower, on a blank dummy image whose output is discarded (``_idle_vision_tower_after_embedding``): under
    ZeRO-3 another rank's batch has images, and the tower's partitioned weights are gathered collectively.
    """
    N, L = batch.input_ids_NL.shape
    T = batch.response_ids_NT.shape[1]
    if T == 0 or T >= L:
        raise ValueError(f"response length T={T} must be in [1, L) with L={L} (prompt + response)")
    response_mask_NT = batch.response_mask_NT.bool()
    if suppressed_token_ids:
        banned_NT = torch.isin(batch.response_ids_NT, torch.as_tensor(list(suppressed_token_ids), device=batch.response_ids_NT.device))
        bad = (banned_NT & response_mask_NT).nonzero()
        if len(bad):
            row, col = bad[0].tolist()
            raise ValueError(
                f"response row {row} holds suppressed token id {int(batch.response_ids_NT[row, col])} at response "
                f"position {col} ({len(bad)} such tokens in the batch); the sampler should have banned it"
            )
    base = getattr(model, "model", None)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or lm_head is None:
        raise TypeError(f"{type(model).__name__} has no `.model` base and lm_head; pass the unwrapped HF model")

    model_inputs = {k: v for k, v in batch.model_inputs.items() if k != "mm_token_type_ids"}
    position_ids = _position_ids(model, batch, model_inputs)
    idle_tower = run_idle_vision_tower and model_inputs.get("pixel_values") is None
    with _idle_vision_tower_after_embedding(model) if idle_tower else contextlib.nullcontext():
        hidden_NLH = base(
            input_ids=batch.input_ids_NL,
            attention_mask=batch.attention_mask_NL,
            position_ids=position_ids,
            use_cache=False,
            **model_inputs,
        ).last_hidden_state
    # Position P-1+t predicts response token t; P = L - T.
    hidden_NTH = hidden_NLH[:, L - T - 1 : L - 1]
    # Only real response tokens go through the lm_head.
    logprobs_M, entropy_M = chunked_lm_head_logprobs(
        hidden_NTH[response_mask_NT],
        lm_head,
        batch.response_ids_NT[response_mask_NT],
        chunk_size=chunk_size,
        temperature=temperature,
        suppressed_token_ids=suppressed_token_ids,
        with_entropy=with_entropy,
        top_p=top_p,
    )
    logprobs_NT = logprobs_M.new_zeros(N, T).masked_scatter(response_mask_NT, logprobs_M)
    entropy_NT = (entropy_M.new_zeros(N, T).masked_scatter(response_mask_NT, entropy_M)
                  if with_entropy and entropy_M is not None else None)
    return logprobs_NT, entropy_NT

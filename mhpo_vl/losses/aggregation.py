"""Turning per-token losses into one scalar: the three aggregation modes, in one place for every loss.

Every mode is a weighted sum ``loss = sum_{i,t} w_{i,t} * loss_{i,t}`` with weights that depend only on the mask
(and the normalisers), never on the values, so aggregation never changes which tokens a loss favours:

- ``token-mean`` (DAPO): ``w_it = m_it / G_tok``, where G_tok is the number of valid tokens.
  ``L = sum_{i,t} m_it l_it / sum_{i,t} m_it``.
- ``seq-mean-token-mean`` (GRPO paper, METHOD.md's ``1/K sum_i 1/T_i sum_t``): ``w_it = m_it / (T_i * G_seq)``,
  T_i = valid tokens of row i, G_seq = number of NON-EMPTY rows (rows with at least one valid token).
- ``seq-mean-token-sum-norm`` (Dr. GRPO): ``w_it = m_it / (norm_length * G_seq)``: each row's token SUM divided by
  a constant ``norm_length`` (Dr. GRPO uses the generation budget, i.e. the maximum response length), then the
  mean over non-empty rows. ``norm_length=None`` means T, the padded length of the tensors of this call (verl's
  default); pass the generation budget explicitly when micro-batches may be padded to different lengths.

Fully masked rows (padding rows, empty responses) have weight 0 everywhere and do not count in G_seq; a call
with no valid token at all gives loss 0 with zero, finite gradients.

Splitting a batch (micro-batches, data-parallel ranks)
------------------------------------------------------
Split along rows only (a response is never cut across micro-batches). For every micro-batch pass the WHOLE
batch's normalisers, computed once before the split:

    global_num_tokens = mask.sum()                       # valid tokens in the whole batch, all ranks
    global_num_seqs   = (mask.sum(-1) > 0).sum()         # non-empty rows in the whole batch, all ranks

(ints or 0-dim tensors; under data parallelism all-reduce the per-rank counts with SUM). Each micro-batch loss
is then exactly its share of the whole-batch loss, and the plain SUM of the micro-batch losses (and of their
gradients) equals the loss (and gradient) of the whole batch: call ``backward`` on each micro-batch loss as is,
without dividing by the number of micro-batches. If the framework itself averages instead of summing (DDP and
DeepSpeed all-reduce gradients with a MEAN over W ranks; DeepSpeed's ``engine.backward`` also divides by
gradient_accumulation_steps), multiply the loss by that factor (W, GAS) to undo it - verl multiplies by dp_size
for the same reason. Without the global normalisers each call is normalised by its own counts (a local mean).
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _normaliser(name: str, given: int | float | Tensor | None, local: Tensor) -> Tensor:
    """The divisor: the global count when given, else the local one; at least 1 (counts are whole numbers)."""
    if given is None:
        return local.clamp(min=1)
    if isinstance(given, Tensor):
        if given.numel() != 1:
            raise ValueError(f"{name} must be a number or a 0-dim tensor, got a tensor of shape {tuple(given.shape)}")
        return given.reshape(()).to(device=local.device, dtype=local.dtype).clamp(min=1)
    if not isinstance(given, numbers.Real) or isinstance(given, bool) or not given > 0:
        raise ValueError(f"{name} must be a count > 0 (or None for this call's own count), got {given!r}")
    return local.new_tensor(float(given))


def token_weights(
    mask_float_NT: Tensor,
    aggregation: str,
    *,
    norm_length: float | None = None,
    global_num_tokens: int | float | Tensor | None = None,
    global_num_seqs: int | float | Tensor | None = None,
) -> Tensor:
    """Per-token weights w_NT (no grad) such that the aggregated loss is ``sum(w_NT * loss_NT)``."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    with torch.no_grad():
        if aggregation == "token-mean":
            num_tokens = _normaliser("global_num_tokens", global_num_tokens, mask_float_NT.sum())
            return mask_float_NT / num_tokens
        tokens_per_row_N = mask_float_NT.sum(-1)
        num_seqs = _normaliser("global_num_seqs", global_num_seqs, (tokens_per_row_N > 0).sum().to(mask_float_NT.dtype))
        if aggregation == "seq-mean-token-mean":
            row_divisor_N = tokens_per_row_N.clamp(min=1) * num_seqs
        else:  # seq-mean-token-sum-norm
            length = float(mask_float_NT.shape[-1]) if norm_length is None else float(norm_length)
            row_divisor_N = torch.full_like(tokens_per_row_N, length) * num_seqs
        return mask_float_NT / row_divisor_N.unsqueeze(-1)


def aggregate(loss_NT: Tensor, weights_NT: Tensor) -> Tensor:
    """sum_{i,t} w_it * loss_it as one fused multiply-reduce (its backward is one multiply)."""
    return torch.dot(loss_NT.reshape(-1), weights_NT.reshape(-1))

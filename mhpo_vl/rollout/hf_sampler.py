"""Sampling with transformers ``generate`` on the policy itself: no second copy of the weights, no engine.

Slow next to vLLM, but exact and dependency-free: for CPU tests, tiny models and debugging. Logprobs are
``log_softmax`` of the processed scores (temperature, top-p, vision-token ban), the same distribution vLLM reports
with ``logprobs_mode="processed_logprobs"``: with top_p < 1, renormalised over the nucleus, as the trainer's are
(``mhpo_vl.models.policy.per_token_logprobs(..., top_p=)``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mhpo_vl.models.policy import vision_token_ids
from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.types import Completion, EncodedPrompt


class HFSampler:
    """``generate()`` on the policy. The prompts of a call are sampled in padded batches of up to
    ``max_rows_per_call`` rows (prompts x n; prompts left-padded, their images concatenated row by row), one
    ``generate`` per batch; a batch's random stream is seeded by its first prompt's request seed, so a call is
    reproducible for the same prompts and batch size."""

    def __init__(self, model: torch.nn.Module, processor_or_tokenizer: Any, *, max_rows_per_call: int = 64):
        self.model: Any = model  # a transformers model: its .config and .generate are unknown to torch's Module type
        self.processor = processor_or_tokenizer
        self.tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        self.banned_token_ids = vision_token_ids(self.tokenizer)
        self.max_rows_per_call = max_rows_per_call
        gen = getattr(model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_token_ids)

    def _inputs(self, prompts: list[EncodedPrompt], n: int) -> dict[str, Any]:
        """Each prompt repeated n times, left-padded to the longest; visual inputs concatenated row by row."""
        from mhpo_vl.collate import _collate_model_inputs

        device = next(self.model.parameters()).device
        rows = [p for p in prompts for _ in range(n)]
        P = max(len(p.prompt_token_ids) for p in rows)
        ids_NP = torch.full((len(rows), P), self.pad_token_id, dtype=torch.long)
        mask_NP = torch.zeros((len(rows), P), dtype=torch.long)
        for r, p in enumerate(rows):
            ids_NP[r, P - len(p.prompt_token_ids):] = torch.tensor(p.prompt_token_ids, dtype=torch.long)
            mask_NP[r, P - len(p.prompt_token_ids):] = 1
        inputs: dict[str, Any] = {"input_ids": ids_NP.to(device), "attention_mask": mask_NP.to(device)}
        inputs.update({k: v.to(device) for k, v in _collate_model_inputs(rows, P, 0).items()})
        config = self.model.config
        if getattr(config, "image_token_id", None) is not None and any(p.model_inputs for p in prompts):
            # Qwen2.5-VL needs the token types to build its M-RoPE positions (1 = image, 2 = video).
            types = torch.zeros_like(inputs["input_ids"])
            types[inputs["input_ids"] == config.image_token_id] = 1
            types[inputs["input_ids"] == config.video_token_id] = 2
            inputs["mm_token_type_ids"] = types
        return inputs

    @torch.no_grad()
    def generate(self, prompts: list[EncodedPrompt], config: SamplingConfig) -> list[list[Completion]]:
        if _zero3_partitioned(self.model) and torch.distributed.get_world_size() > 1:
            # Every ZeRO-3 forward gathers weights with a collective, and generate() runs as many forwards as
            # its longest answer, different on each rank: the ranks would wait on each other forever.
            raise RuntimeError("the HF sampler cannot generate under DeepSpeed ZeRO-3 with several processes; use "
                               "rollout.backend=vllm (or ZeRO-2)")
        if config.stop:
            # generate() pads a row that hit a stop string with tokens that were never sampled; not worth the care here.
            raise ValueError("HFSampler does not support SamplingConfig.stop strings; use VLLMSampler or stop=None")
        per_call = max(1, self.max_rows_per_call // config.n)
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[list[Completion]] = []
            for lo in range(0, len(prompts), per_call):
                out.extend(self._generate_batch(prompts[lo : lo + per_call], config, lo))
            return out
        finally:
            self.model.train(was_training)

    def _generate_batch(self, prompts: list[EncodedPrompt], config: SamplingConfig, first: int) -> list[list[Completion]]:
        inputs = self._inputs(prompts, config.n)
        P = inputs["input_ids"].shape[1]
        seed = config.request_seed(first)
        with torch.random.fork_rng(devices=[] if not torch.cuda.is_available() else None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=0,
                max_new_tokens=config.max_tokens,
                suppress_tokens=self.banned_token_ids or None,
                eos_token_id=sorted(self.eos_token_ids),
                pad_token_id=self.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
        new_ids_NS = out.sequences[:, P:]
        # scores[s] are the processed logits of step s (temperature, top-p and the ban applied).
        logprobs_NS = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], dim=1)
        token_logprobs_NS = logprobs_NS.gather(2, new_ids_NS[..., None]).squeeze(2)
        completions = [self._completion(new_ids_NS[row].tolist(), token_logprobs_NS[row])
                       for row in range(new_ids_NS.shape[0])]
        return [completions[b * config.n : (b + 1) * config.n] for b in range(len(prompts))]

    def _completion(self, ids: list[int], token_logprobs: torch.Tensor) -> Completion:
        end = next((j + 1 for j, t in enumerate(ids) if t in self.eos_token_ids), None)
        ids = ids[:end] if end is not None else ids  # after its EOS a row holds only padding
        return Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                          sampler_logprobs=token_logprobs[: len(ids)].tolist(),
                          finish_reason="stop" if end is not None else "length")

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Nothing to copy: the sampler runs the policy model itself."""
        return 0

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass


def _zero3_partitioned(model: torch.nn.Module) -> bool:
    return torch.distributed.is_initialized() and any(hasattr(p, "ds_id") for p in model.parameters())

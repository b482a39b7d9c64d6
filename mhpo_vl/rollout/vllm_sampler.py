"""A vLLM engine in the trainer's process: sample completions with logprobs, take new weights in place.

Why these engine settings:
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process, so ``load_weights`` can hand it
  tensors directly (a subprocess engine cannot receive tensors through ``collective_rpc``; it would need a
  checkpoint on disk). On CPU it also cuts engine start-up from ~20 s to a few seconds.
- ``logprobs_mode="processed_logprobs"``: reported logprobs are those of the distribution actually sampled from
  (after temperature and the vision-token ban), which is what ``mhpo_vl.models.policy.per_token_logprobs(...,
  temperature=T, suppressed_token_ids=vision_token_ids(tok), top_p=P)`` computes. vLLM's default
  ``raw_logprobs`` would ignore the temperature (and the ban). With top_p < 1 they are renormalised over the
  nucleus (vLLM 0.32 has no mode for temperature-scaled but untruncated logprobs: ``raw_*`` come before the
  temperature and the logit bias, ``processed_*`` after top-p), and the trainer applies the same nucleus
  (docs/training.md, "top-p and the ratio").
- Prompts go in as TOKEN IDS (``EncodedPrompt.prompt_token_ids`` with each run of image pads collapsed back to one
  ``<|image_pad|>``, which vLLM 0.32 expands itself; given expanded runs it expands them again) with the images
  as ``multi_modal_data``: no re-tokenisation of text. ``generate`` checks that the ids vLLM ends up with equal
  ``prompt_token_ids``, the ids the trainer's forward pass sees.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.rollout.process_state import ProcessState, torch_threads
from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.types import Completion, EncodedPrompt

# vLLM clamps logit_bias to [-100, 100]; exp(-100) ~ 4e-44 is 0 in float32 after softmax, i.e. a ban.
_BAN_BIAS = -100.0
_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


# vLLM's names of Qwen2.5-VL's vision tower parameters (vllm/model_executor/models/qwen2_5_vl.py maps the HF
# "model.visual." prefix to "visual."): what a level-2 sleep keeps when the trainer does not sync the tower.
VISION_TOWER_GLOBS = ("visual.*",)


def launcher_ranks() -> tuple[int, int, int]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) as torchrun / `accelerate launch` set them; (0, 0, 1) for a plain process."""
    from mhpo_vl.distributed import launcher_local_rank, launcher_rank, launcher_world_size

    return launcher_rank(), launcher_local_rank(), launcher_world_size()


def engine_device(local_rank: int, world_size: int, device_type: str) -> str:
    """The device the rank's engine runs on: its own GPU, ``cuda:LOCAL_RANK`` (vLLM's external launcher reads
    LOCAL_RANK: ``v1/executor/uniproc_executor.py`` ExecutorWithExternalLauncher._distributed_args, then
    ``v1/worker/gpu_worker.py`` init_device: ``cuda:{local_rank}``). The default single-process executor would
    use ``local_rank = 0`` on every rank, i.e. every engine on GPU 0."""
    if device_type == "cpu":
        return "cpu"
    return f"cuda:{local_rank if world_size > 1 else 0}"


def engine_kwargs(
    model_path: str | Path,
    *,
    rank: int,
    local_rank: int,
    world_size: int,
    device_type: str,
    max_model_len: int = 4096,
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    enable_sleep_mode: bool = False,
    sleep_preserve: tuple[str, ...] = (),
    limit_mm_per_prompt: dict[str, int] | None = None,
    enforce_eager: bool | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for one rank: a pure function of the rank and the device type.

    Several processes (torchrun / accelerate, one per GPU): ``distributed_executor_backend="external_launcher"``,
    as TRL's colocate mode (``trl/generation/vllm_generation.py``): each engine is one in-process worker on
    ``cuda:LOCAL_RANK`` (``engine_device``) that joins the trainer's process group (already initialised, so vLLM
    does not create another: ``distributed/parallel_state.py`` init_distributed_environment) and needs
    VLLM_ENABLE_V1_MULTIPROCESSING=0, which this module sets. Tensor parallel size 1: each engine holds the whole
    model and generates for its own rank's prompts. vLLM reads RANK and LOCAL_RANK from the environment itself
    (``rank`` / ``local_rank`` here are what the launcher set there; ``engine_device`` names the device)."""
    on_cpu = device_type == "cpu"
    kwargs: dict[str, Any] = dict(
        model=str(model_path),
        max_model_len=max_model_len,
        dtype=("float32" if on_cpu else "bfloat16") if dtype == "auto" else dtype,
        seed=seed,
        logprobs_mode="processed_logprobs",
        # torch.compile of the model takes ~30 s on a CPU at first start; eager is plenty for CPU tests.
        enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
    )
    if world_size > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs["tensor_parallel_size"] = 1
    if limit_mm_per_prompt is not None:
        kwargs["limit_mm_per_prompt"] = limit_mm_per_prompt
    if on_cpu:
        # vLLM 0.32 CPU: a seeded request whose prefill is chunked fails ("CPU Generator does not use offset",
        # when vLLM rewinds its generator for the discarded partial-prefill sample); whole prefills avoid it.
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs["enable_sleep_mode"] = enable_sleep_mode
        if enable_sleep_mode and sleep_preserve:
            # kept in host memory across a level-2 sleep (vllm/config/model.py sleep_preserve_parameter_names)
            kwargs["sleep_preserve_parameter_names"] = list(sleep_preserve)
    return kwargs


def make_llm(
    model_path: str | Path,
    *,
    max_model_len: int = 4096,
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    enable_sleep_mode: bool = False,
    sleep_preserve: tuple[str, ...] = (),
    limit_mm_per_prompt: dict[str, int] | None = None,
    cpu_kv_cache_gib: float = 1.0,
    enforce_eager: bool | None = None,
    **extra_kwargs: Any,
) -> tuple[Any, int]:
    """Build an in-process ``vllm.LLM`` on this rank's device (see the module docstring and ``engine_kwargs``).
    Returns the engine and the torch thread count it left (1 on CUDA): run engine calls under ``torch_threads`` of
    it. The process is the caller's again afterwards: torch's threads (and ``torch.set_num_threads`` itself), the
    global RNG states and the current CUDA device are restored (``rollout/process_state.py``)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    on_cpu = _on_cpu()
    if on_cpu:
        # Read when the CPU worker sizes its KV cache; the default would reserve many GiB.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cpu_kv_cache_gib))))  # vLLM parses an int (GiB)
    from vllm import LLM

    rank, local_rank, world_size = launcher_ranks()
    kwargs = engine_kwargs(model_path, rank=rank, local_rank=local_rank, world_size=world_size,
                           device_type="cpu" if on_cpu else "cuda", max_model_len=max_model_len, dtype=dtype,
                           seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                           enable_sleep_mode=enable_sleep_mode, sleep_preserve=sleep_preserve,
                           limit_mm_per_prompt=limit_mm_per_prompt, enforce_eager=enforce_eager)
    kwargs.update(extra_kwargs)
    before = ProcessState.capture()
    try:
        llm = LLM(**kwargs)
        return llm, torch.get_num_threads()
    finally:
        before.restore()


class VLLMSampler:
    """Samples K completions per EncodedPrompt with vLLM; takes new policy weights in place."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_model_len: int = 4096,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        sleep_preserve: tuple[str, ...] = (),
        limit_mm_per_prompt: dict[str, int] | None = None,
        cpu_kv_cache_gib: float = 1.0,
        enforce_eager: bool | None = None,
        **engine_kwargs: Any,
    ):
        """``sleep_level`` 1: ``sleep`` offloads the weights to host memory and back; 2: it discards them (the
        weight sync after each wake-up overwrites every trainable one) except ``sleep_preserve`` (vLLM parameter
        globs, e.g. ``VISION_TOWER_GLOBS`` when the tower is frozen and never synced), which vLLM keeps on the host."""
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        start = time.perf_counter()
        self.model_path = str(model_path)
        # Whether the trainer (accelerate / DeepSpeed) made the default process group before the engine: then it is
        # the trainer's, and close() must leave it alone (vLLM joins it instead of creating its own).
        self._trainer_process_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.llm, self.engine_threads = make_llm(
            model_path,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            sleep_preserve=sleep_preserve if sleep_level == 2 else (),
            limit_mm_per_prompt=limit_mm_per_prompt,
            cpu_kv_cache_gib=cpu_kv_cache_gib,
            enforce_eager=enforce_eager,
            **engine_kwargs,
        )
        self.init_seconds = time.perf_counter() - start
        self.max_model_len = max_model_len
        self.sleep_enabled = enable_sleep_mode and not _on_cpu()
        self.sleep_level = sleep_level
        self._asleep = False
        tokenizer = self.llm.get_tokenizer()
        self.tokenizer = tokenizer
        unk = getattr(tokenizer, "unk_token_id", None)
        ids = {tokenizer.convert_tokens_to_ids(t) for t in _VISION_TOKENS}
        self.banned_token_ids = sorted(i for i in ids if isinstance(i, int) and i != unk)
        self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    # ------------------------------------------------------------------ sampling

    def _sampling_params(self, config: SamplingConfig, prompt_index: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            max_tokens=config.max_tokens,
            seed=config.request_seed(prompt_index),
            stop=config.stop,
            logprobs=0,  # the sampled token's logprob only
            logit_bias={i: _BAN_BIAS for i in self.banned_token_ids} or None,
            skip_special_tokens=True,
        )

    def _request(self, prompt: EncodedPrompt) -> dict[str, Any]:
        ids = list(prompt.prompt_token_ids)
        if prompt.images:
            # vLLM expands each <|image_pad|> itself (it would expand an already expanded run again), so each run
            # of pads goes back to one pad; generate() checks that vLLM's expansion gives back the same ids.
            ids = [t for j, t in enumerate(ids) if not (t == self.image_token_id and j > 0 and ids[j - 1] == t)]
        request: dict[str, Any] = {"prompt_token_ids": ids}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images) if len(prompt.images) > 1 else prompt.images[0]}
        return request

    def generate(self, prompts: list[EncodedPrompt], config: SamplingConfig) -> list[list[Completion]]:
        """``config.n`` completions for each prompt, in prompt order, with per-token sampler logprobs."""
        if self._asleep:
            raise RuntimeError("VLLMSampler.generate called while asleep; call wake_up() first")
        for i, prompt in enumerate(prompts):
            if len(prompt.prompt_token_ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} (sample {prompt.sample.source}/{prompt.sample.id}) has {len(prompt.prompt_token_ids)} "
                    f"tokens, not less than max_model_len={self.max_model_len}; raise max_model_len or shorten the prompt"
                )
        requests = [self._request(p) for p in prompts]
        params = [self._sampling_params(config, i) for i in range(len(prompts))]
        with torch_threads(self.engine_threads):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for i, (prompt, output) in enumerate(zip(prompts, outputs)):
            if list(output.prompt_token_ids) != list(prompt.prompt_token_ids):
                raise RuntimeError(
                    f"prompt {i} (sample {prompt.sample.source}/{prompt.sample.id}): vLLM's prompt token ids differ from "
                    f"the encoded prompt's ({len(output.prompt_token_ids)} vs {len(prompt.prompt_token_ids)} tokens); "
                    "trainer and sampler would score different sequences"
                    + (". The prompt has images: the likely cause is image pixel limits (min_pixels/max_pixels) that "
                       "differ between the prompt encoder and the model's own image processor, which vLLM applies "
                       "(preprocessor_config.json); use limits within the processor's, e.g. the training run's "
                       "data.min_pixels/max_pixels" if prompt.images else "")
                )
            completions = [self._completion(c) for c in output.outputs]
            for c in completions:
                leaked = set(c.token_ids) & set(self.banned_token_ids)
                if leaked:  # a bias of -100 is a ban unless a logit exceeds ~100; say so rather than fail later
                    raise RuntimeError(
                        f"prompt {i} (sample {prompt.sample.source}/{prompt.sample.id}): vLLM generated banned vision "
                        f"token id(s) {sorted(leaked)} despite logit_bias {_BAN_BIAS}"
                    )
            results.append(completions)
        return results

    @staticmethod
    def _completion(c) -> Completion:
        token_ids = list(c.token_ids)
        if c.logprobs is None or len(c.logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned {0 if c.logprobs is None else len(c.logprobs)} logprobs for {len(token_ids)} tokens")
        logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, c.logprobs)]
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a completion with reason {c.finish_reason!r} (expected 'stop' or 'length')")
        return Completion(text=c.text, token_ids=token_ids, sampler_logprobs=logprobs, finish_reason=c.finish_reason)

    # ------------------------------------------------------------------ weights and memory

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy new weights (HF checkpoint names, e.g. ``model.named_parameters()``) into the live engine.

        A subset is fine (e.g. the LM weights only when the vision tower is frozen). The tensors are streamed:
        vLLM copies each one as the iterator yields it, so a generator that gathers ZeRO-3 shards one at a time
        never holds the whole model. Returns the tensors sent.
        """
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            raise RuntimeError(
                "in-process weight sync needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (set before the engine was built); "
                "with a subprocess engine tensors cannot be sent"
            )
        sent = 0

        def stream():
            nonlocal sent
            for name, tensor in named_tensors:
                sent += 1
                yield name, tensor.detach()

        with torch_threads(self.engine_threads):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
            if not sent:
                raise ValueError("load_weights got no tensors")
            # Cached prefixes, processed images and encoder outputs were computed with the old weights.
            self.llm.reset_prefix_cache()
            self.llm.reset_mm_cache()
            self.llm.llm_engine.reset_encoder_cache()
        return sent

    def close(self) -> None:
        """Shut the engine down and release vLLM's process-wide state, so another engine can start in this process
        (eval-run builds one per checkpoint). The sampler is unusable afterwards."""
        if self.llm is None:
            return
        import gc

        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            if self._trainer_process_group:
                # EngineCore.shutdown (v1/engine/core.py) ends with cleanup_dist_env_and_memory(), which destroys
                # torch's default group: the trainer's here. Swap in the version that leaves it alone.
                import vllm.v1.engine.core as vllm_core

                original = vllm_core.cleanup_dist_env_and_memory
                vllm_core.cleanup_dist_env_and_memory = release_vllm_groups
                try:
                    engine_core.shutdown()
                finally:
                    vllm_core.cleanup_dist_env_and_memory = original
            else:
                engine_core.shutdown()
        self.llm = None
        if self._trainer_process_group:
            release_vllm_groups()
        else:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()  # also destroys torch's default group: vLLM made it
        gc.collect()

    def sleep(self) -> None:
        """Free the engine's GPU memory for the training phase (level 1: weights offloaded to host memory, KV cache
        dropped; level 2: weights discarded too, except the preserved ones; the next wake_up is followed by the sync)."""
        if self.sleep_enabled and not self._asleep:
            with torch_threads(self.engine_threads):
                self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            with torch_threads(self.engine_threads):
                self.llm.wake_up()
            self._asleep = False


def release_vllm_groups(shutdown_ray: bool = False) -> None:
    """vLLM's ``cleanup_dist_env_and_memory`` without its last act: it ends with
    ``torch.distributed.destroy_process_group()`` (``distributed/parallel_state.py``
    destroy_distributed_environment), which would destroy the TRAINER's default group when vLLM joined it (every
    multi-process run). Here vLLM's own subgroups (model-parallel groups and its world group's copies) are destroyed
    and its globals reset, so another engine can start in this process, and the default group is left as it was."""
    import vllm.envs as vllm_envs
    from vllm.distributed import parallel_state as ps

    del shutdown_ray  # cleanup_dist_env_and_memory's signature; no Ray here

    vllm_envs.disable_envs_cache()
    ps.destroy_model_parallel()
    if ps._WORLD is not None:
        ps._WORLD.destroy()  # its device/cpu groups are subgroups vLLM created with new_group
    ps._WORLD = None
    ps._NODE_COUNT = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

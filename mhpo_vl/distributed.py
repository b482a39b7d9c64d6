"""Process group, model wrapping and the optimiser step, for one process or many (accelerate), with or without
DeepSpeed ZeRO. The trainer talks only to `Runtime`; nothing else in the package knows about ranks.

Gradient arithmetic: the loss of each micro-batch is already normalised by GLOBAL counts (tokens or sequences of
the whole minibatch across all ranks, see mhpo_vl.losses), so the gradient we want is the SUM over micro-batches
and ranks. Without DeepSpeed the model is not wrapped (the trainer calls its submodules directly for the
memory-lean logprobs, which DDP's forward hooks would not see); gradients are summed over ranks with one
all-reduce before clipping. DeepSpeed averages over ranks and divides by its accumulation steps, so `backward`
multiplies the loss by the factor that undoes exactly that. Under DeepSpeed the trainer's forward computations go
through the engine (`Runtime.forward`) and ZeRO-3's partitioned weights are gathered where whole tensors are
needed (`iter_full_weights`: weight sync, checkpoints); see docs/distributed.md.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch

from mhpo_vl.models.policy import forward_replaced

T = TypeVar("T")

DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0  # trainer.collective_timeout_s's default: torch's own for gloo (30 min)


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete within trainer.collective_timeout_s: another rank stopped answering (hung,
    stopped, or on a lost machine)."""


class Runtime:
    """Process state from accelerate (one process, `accelerate launch`, or torchrun); the optimiser step from
    plain torch or, when `deepspeed_config` names a JSON file, from a DeepSpeed ZeRO engine (deepspeed.initialize,
    which runs on CPU with gloo as well as on GPUs)."""

    def __init__(self, *, device: str = "auto", deepspeed_config: str | None = None, micro_steps_per_update: int = 1,
                 micro_batch_size: int = 1, max_grad_norm: float = 1.0,
                 collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        self.collective_timeout = timedelta(seconds=collective_timeout_s)
        # The process group's timeout: a collective waiting longer for a rank fails instead of hanging the job.
        self.accelerator = Accelerator(cpu=use_cpu,
                                       kwargs_handlers=[InitProcessGroupKwargs(timeout=self.collective_timeout)])
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.deepspeed_config = deepspeed_config
        self.uses_deepspeed = deepspeed_config is not None
        self.micro_steps_per_update = micro_steps_per_update
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.model: Any = None
        self.optimizer: Any = None
        self.gather_calls = 0  # ZeRO-3 all-gathers in the last iter_full_weights pass

    # ---- set-up -------------------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        model = model.to(self.device)
        if self.uses_deepspeed:
            import deepspeed

            if not torch.distributed.is_initialized():  # one process: DeepSpeed still wants a process group
                for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(29400 + os.getpid() % 500)),
                                   ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                    os.environ.setdefault(key, value)
            deepspeed.init_distributed(timeout=self.collective_timeout)  # reuses accelerate's group when there is one
            self._deepspeed_world_group()
            model, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                          config=self._deepspeed_dict(model))
        self.model, self.optimizer = model, optimizer
        return model, optimizer

    def _deepspeed_world_group(self) -> None:
        """ZeRO's gradient and parameter collectives run on DeepSpeed's clone of the world group, which it makes
        with torch.distributed.new_group and no timeout (so torch's default, 30 min for gloo, 10 for NCCL, not
        trainer.collective_timeout_s). Making that clone here, with the timeout, is what it then uses."""
        from deepspeed.utils import groups

        if getattr(groups, "_WORLD_GROUP", "absent") is None:
            groups._WORLD_GROUP = torch.distributed.new_group(ranks=list(range(torch.distributed.get_world_size())),
                                                              timeout=self.collective_timeout)

    def _deepspeed_dict(self, model: torch.nn.Module) -> dict[str, Any]:
        """The shipped JSON with the trainer-owned numbers filled in and every remaining "auto" resolved."""
        if self.deepspeed_config is None:
            raise ValueError("no DeepSpeed config file was given (trainer.deepspeed)")
        with open(self.deepspeed_config) as f:
            ds = json.load(f)
        ds["gradient_accumulation_steps"] = self.micro_steps_per_update
        ds["gradient_clipping"] = self.max_grad_norm
        ds["train_micro_batch_size_per_gpu"] = self.micro_batch_size
        ds.pop("train_batch_size", None)
        dtype = next(model.parameters()).dtype
        if ds.get("bf16", {}).get("enabled") == "auto":
            ds["bf16"]["enabled"] = dtype == torch.bfloat16
        hidden = _hidden_size(model)
        auto_values = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "stage3_param_persistence_threshold": 10 * hidden}
        zero = ds.get("zero_optimization", {})
        for key, value in list(zero.items()):
            if value == "auto":
                if key not in auto_values:
                    raise ValueError(f"{self.deepspeed_config}: zero_optimization.{key} is 'auto', which the trainer "
                                     f"cannot resolve; give a number (resolvable: {', '.join(auto_values)})")
                zero[key] = auto_values[key]
        return ds

    def unwrapped(self) -> torch.nn.Module:
        return self.model.module if self.uses_deepspeed else self.model

    @property
    def zero_stage(self) -> int:
        return self.model.zero_optimization_stage() if self.uses_deepspeed else 0

    def forward(self, fn: Callable[[torch.nn.Module], T]) -> T:
        """`fn(model)` run as the model's forward pass (the trainer's memory-lean logprobs call submodules).

        Under DeepSpeed the call goes through the engine, whose per-forward bookkeeping must run: ZeRO-3 counts
        accumulation micro-steps there, and without it each backward overwrote the previous micro-batch's
        gradient (measured: only the last micro-batch reached the update). The model's own hooks fire too."""
        module = self.unwrapped()
        if not self.uses_deepspeed:
            return fn(module)
        with forward_replaced(module, lambda: fn(module)):
            return self.model()

    # ---- one update = several micro-batches -----------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        if self.uses_deepspeed:
            # undo DeepSpeed's average over ranks and its division by the accumulation steps
            scale = float(self.world_size * self.micro_steps_per_update)
            self.model.set_gradient_accumulation_boundary(last_micro)
            self.model.backward(loss * scale)
        else:
            loss.backward()

    def step(self) -> tuple[float, bool]:
        """Clip, step, zero grads. Returns (grad norm before clipping, whether the update was applied).
        A non-finite gradient norm skips the update (plain torch path). Under DeepSpeed, its engine clips and
        steps; a non-finite loss is kept out of backward by the trainer instead."""
        if self.uses_deepspeed:
            self.model.step()
            norm = self.model.get_global_grad_norm()
            norm = float(norm) if norm is not None else float("nan")
            return norm, math.isfinite(norm)
        params = [p for p in self.unwrapped().parameters() if p.requires_grad]
        if self.world_size > 1:
            self._sum_grads_over_ranks(params)
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next `step()`. Under DeepSpeed, `self.optimizer` is the ZeRO optimiser, whose
        param_groups are the wrapped torch optimiser's: its step reads "lr" from them (no DeepSpeed scheduler is
        configured, so nothing else writes it)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def discard_gradients(self) -> None:
        if self.uses_deepspeed:
            # Close DeepSpeed's accumulation window without stepping, then clear what it accumulated.
            self.model.set_gradient_accumulation_boundary(True)
            self.model.zero_grad()
            self.model.optimizer.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _sum_grads_over_ranks(self, params: list[torch.nn.Parameter]) -> None:
        grads = []
        for p in params:  # a parameter no micro-batch reached still takes part, with zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        with self._collective("the gradient all-reduce"):
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    # ---- collectives ----------------------------------------------------------------------------------------
    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """A timed-out collective as an error that says so, names this rank and, where it can be told, the rank
        that stopped answering (with 2 processes, the other one; gloo and NCCL do not say which peer it was)."""
        try:
            yield
        except RuntimeError as exc:
            text = str(exc).lower()
            if "timed out" not in text and "timeout" not in text:
                raise
            others = [r for r in range(self.world_size) if r != self.rank]
            who = (f"rank {others[0]} stopped answering" if len(others) == 1 else
                   f"one of ranks {', '.join(map(str, others))} stopped answering (the backend does not say which)")
            raise CollectiveTimeoutError(
                f"rank {self.rank}: {what} did not complete within trainer.collective_timeout_s="
                f"{self.collective_timeout.total_seconds():g} s: {who} (hung, stopped, or its machine was lost). "
                f"The backend said: {str(exc).strip()[:300]}") from exc

    def all_reduce_sum(self, values: Iterable[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            with self._collective("an all-reduce"):
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def all_agree(self, flag: bool) -> bool:
        """True only if `flag` is true on every rank (one small all-reduce)."""
        if self.world_size == 1:
            return flag
        return self.all_reduce_sum([0.0 if flag else 1.0])[0] == 0.0

    def max_over_ranks(self, value: int) -> int:
        """The largest of every rank's ``value`` (e.g. micro-batch counts, which must agree)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        with self._collective("an all-reduce (max)"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def all_gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with self._collective("an all-gather"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            with self._collective("a barrier"):
                torch.distributed.barrier()

    # ---- state ----------------------------------------------------------------------------------------------
    def iter_full_weights(self, only: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole tensor) for each of the model's weights (`only`: just these names), one at a time.

        Without ZeRO-3 the tensors are the model's own. ZeRO-3 partitions them, so they are gathered into copies
        one decoder layer at a time (`layer_groups`: one all-gather per layer instead of one per tensor, ~12 per
        layer): the extra memory is one layer plus what the consumer keeps (the vLLM weight sync keeps nothing; a
        checkpoint keeps CPU copies on the main process). `self.gather_calls` counts the gathers of the last pass.
        Under ZeRO-3 this is a collective: every rank must run through the whole iterator."""
        model = self.unwrapped()
        if self.zero_stage != 3:
            for name, tensor in model.state_dict().items():
                if only is None or name in only:
                    yield name, tensor
            return
        import deepspeed

        saved_names = model.state_dict().keys()  # names only: the tensors in it are the empty partitions
        self.gather_calls = 0
        wanted = [(n, p) for n, p in model.named_parameters() if only is None or n in only]
        for group in layer_groups(wanted):
            self.gather_calls += 1
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
                copies = [(n, p.detach().clone()) for n, p in group]
            yield from copies
        for name, buf in model.named_buffers():  # buffers are never partitioned
            if (only is None or name in only) and name in saved_names:
                yield name, buf.detach()

    def optimizer_state(self) -> Any:
        if self.uses_deepspeed:
            return None  # saved by DeepSpeed's own checkpointing (save_deepspeed_state)
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: Any) -> None:
        if state is not None and not self.uses_deepspeed:
            self.optimizer.load_state_dict(state)

    def save_deepspeed_state(self, folder: str | os.PathLike) -> None:
        """DeepSpeed's optimizer state (fp32 master weights, Adam moments), each rank its own shard: a collective."""
        self.model.save_checkpoint(os.path.join(folder, "deepspeed"), tag="state", exclude_frozen_parameters=True)

    def load_deepspeed_state(self, folder: str | os.PathLike) -> None:
        if self.uses_deepspeed:
            path = os.path.join(folder, "deepspeed")
            if not os.path.isdir(os.path.join(path, "state")):
                raise FileNotFoundError(f"{folder}: no DeepSpeed state under deepspeed/state; this checkpoint was not "
                                        "written by a DeepSpeed run (resume it with the same trainer.deepspeed)")
            loaded_from, _ = self.model.load_checkpoint(path, tag="state", load_module_strict=False)
            if loaded_from is None:
                raise RuntimeError(f"DeepSpeed could not load its state from {path}")


_LAYER = re.compile(r"^(.*?\.(?:layers|blocks)\.\d+)\.")


def layer_groups(named: list[tuple[str, T]]) -> list[list[tuple[str, T]]]:
    """Consecutive (name, x) pairs grouped by decoder layer / vision block prefix (``...layers.7.``,
    ``...blocks.3.``); a name outside any layer (embeddings, final norm, lm_head) is a group of its own."""
    groups: list[list[tuple[str, T]]] = []
    last: str | None = None
    for name, x in named:
        m = _LAYER.match(name)
        key = m.group(1) if m else None
        if key is not None and key == last and groups:
            groups[-1].append((name, x))
        else:
            groups.append([(name, x)])
        last = key
    return groups


def _hidden_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "hidden_size", 4096))


def launcher_rank() -> int:
    """This process's rank as torchrun / `accelerate launch` set it (RANK), before any process group exists; 0 for a
    plain single process. For what prints and which log file a process writes (mhpo_vl.runs.console)."""
    return int(os.environ.get("RANK", "0"))


def launcher_local_rank() -> int:
    """This process's rank on its machine (LOCAL_RANK; 0 for a plain single process): its GPU, cuda:LOCAL_RANK."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launcher_world_size() -> int:
    """The number of processes the launcher started (WORLD_SIZE; 1 for a plain single process), before the
    Runtime exists: DeepSpeed's micro-step count is fixed from it."""
    return int(os.environ.get("WORLD_SIZE", "1"))

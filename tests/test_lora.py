"""LoRA through the whole loop (mhpo_vl.models.lora): which modules are wrapped, the merge arithmetic, the adapter
files (peft's format), `mhpo-vl export`; slow: 2 RL steps through vLLM (only the adapter moves, the sampler's
logprobs equal the trainer's), kill-and-resume, the merged export in transformers and vLLM, 2 ranks under ZeRO."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mhpo_vl.config.schema import LoraConfig
from mhpo_vl.models.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraError,
    add_lora,
    lora_layers,
    merged_lora_weights,
    merged_weight,
    save_adapter,
)

REPO = Path(__file__).resolve().parent.parent
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _load(model_dir):
    from mhpo_vl.models.policy import load_policy

    return load_policy(model_dir, freeze_vision=False).model


def _lora_model(model_dir, seed=0, **settings):
    """The tiny model with LoRA and random (non-zero) B matrices, so the adapter changes the function."""
    model = _load(model_dir)
    add_lora(model, LoraConfig(**{"rank": 4, "alpha": 8.0, **settings}), base_model_name_or_path=str(model_dir))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return model


def _logits(model, model_dir):
    """Logits of a short text-only prompt (the LM path every wrapped layer is on)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tok.encode("the angle ABC is 30 degrees, so x = 2", add_special_tokens=False)])
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------------ fast -------


def test_default_targets_wrap_every_lm_projection_and_no_vision_module(tiny_vl_model_dir, tiny_text_model_dir):
    model = _load(tiny_vl_model_dir)
    layers = model.config.text_config.num_hidden_layers
    wrapped = add_lora(model, LoraConfig(rank=4, alpha=8.0))
    assert wrapped == sorted(f"model.language_model.layers.{i}.{part}.{p}" for i in range(layers)
                             for part, names in (("self_attn", LM_PROJECTIONS[:4]), ("mlp", LM_PROJECTIONS[4:]))
                             for p in names)
    # The vision tower has gate/up/down_proj too: none of them (nor anything else in it) is wrapped.
    assert any(n.startswith("model.visual.") and n.endswith("gate_proj") for n, _ in model.named_modules())
    assert not [n for n in lora_layers(model) if "visual" in n]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert len(trainable) == 2 * len(wrapped)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "visual" in n or "embed" in n)

    text = _load(tiny_text_model_dir)
    assert len(add_lora(text, LoraConfig(rank=2, alpha=2.0))) == 7 * text.config.num_hidden_layers

    with pytest.raises(LoraError, match="vision-tower"):  # a name-only list would reach into the tower
        add_lora(_load(tiny_vl_model_dir), LoraConfig(rank=2, alpha=2.0, target_modules=["gate_proj"]))


def test_merge_equals_w_plus_alpha_over_r_b_a_by_hand():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a = torch.tensor([[1.0, -1.0]])  # r = 1
    b = torch.tensor([[2.0], [0.5]])
    # alpha 2, r 1: scale 2; B A = [[2, -2], [0.5, -0.5]]
    assert torch.equal(merged_weight(w, a, b, 2.0 / 1), torch.tensor([[5.0, -2.0], [4.0, 3.0]]))
    half = merged_weight(w.to(torch.bfloat16), a, b, 2.0)
    assert half.dtype == torch.bfloat16


def test_merged_stream_equals_peft_merge_and_the_adapted_function(tiny_vl_model_dir):
    """The sync's stream: the base weight's name with W + (alpha/r) B A; equal to peft's own delta, and a plain model
    holding those weights computes what the adapted model computes."""
    model = _lora_model(tiny_vl_model_dir)
    layers = lora_layers(model)

    def iter_full_weights(only=None):
        for name, tensor in model.state_dict().items():
            if only is None or name in only:
                yield name, tensor

    merged = dict(merged_lora_weights(model, iter_full_weights))
    assert sorted(merged) == sorted(f"{n}.weight" for n in layers)
    for name, layer in layers.items():
        assert layer.scaling["default"] == 8.0 / 4
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        by_hand = layer.base_layer.weight + 2.0 * b @ a
        torch.testing.assert_close(merged[f"{name}.weight"], by_hand, rtol=0, atol=1e-6)
        peft_delta = layer.get_delta_weight("default")
        torch.testing.assert_close(merged[f"{name}.weight"], layer.base_layer.weight + peft_delta, rtol=0, atol=1e-6)
    plain = _load(tiny_vl_model_dir)
    plain.load_state_dict(merged, strict=False)
    adapted_logits = _logits(model, tiny_vl_model_dir)
    assert not torch.allclose(adapted_logits, _logits(_load(tiny_vl_model_dir), tiny_vl_model_dir), atol=1e-3)
    torch.testing.assert_close(_logits(plain, tiny_vl_model_dir), adapted_logits, rtol=0, atol=1e-5)


def test_adapter_files_are_peft_format_and_export_writes_the_merged_model(tmp_path, tiny_vl_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mhpo_vl.cli import main
    from mhpo_vl.models.lora import load_adapter

    model = _lora_model(tiny_vl_model_dir, seed=3)
    ckpt = tmp_path / "ckpt"
    save_adapter(model, ckpt)
    assert (ckpt / ADAPTER_WEIGHTS).is_file()
    config = json.loads((ckpt / ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8.0, str(tiny_vl_model_dir))
    adapted = _logits(model, tiny_vl_model_dir)

    # our loader (resume) and peft's own loader read the same adapter
    fresh = _load(tiny_vl_model_dir)
    add_lora(fresh, LoraConfig(rank=4, alpha=8.0))
    load_adapter(fresh, ckpt)
    torch.testing.assert_close(_logits(fresh, tiny_vl_model_dir), adapted, rtol=0, atol=0)
    with_peft = PeftModel.from_pretrained(_load(tiny_vl_model_dir), ckpt)
    torch.testing.assert_close(_logits(with_peft.base_model.model, tiny_vl_model_dir), adapted, rtol=0, atol=1e-6)
    with pytest.raises(LoraError, match="does not fit"):  # another rank: refused, not silently half-loaded
        other = _load(tiny_vl_model_dir)
        add_lora(other, LoraConfig(rank=2, alpha=8.0))
        load_adapter(other, ckpt)

    out = tmp_path / "merged"
    assert main(["export", str(ckpt), str(out)]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, tiny_vl_model_dir), adapted, rtol=0, atol=1e-5)
    assert (out / "preprocessor_config.json").is_file() or (out / "processor_config.json").is_file()
    assert main(["export", str(ckpt), str(out)]) == 2  # never over a non-empty folder
    assert main(["export", str(out), str(tmp_path / "x")]) == 2  # a full model folder is not an adapter


# ------------------------------------------------------------------------------------------------ slow -------


def _overrides(model_dir, out, **extra):
    from run_helpers import small_overrides

    # EasyR1's LoRA lr is 10x its full fine-tuning lr; the tiny warm model needs a large one to move in 2 steps.
    return small_overrides(model_dir, out, **{"model.lora": "{rank: 8, alpha: 16}", "optim.lr": "1e-2", **extra})


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lora_rl_steps_through_vllm_then_the_export_loads_in_transformers_and_vllm(tmp_path, warm_tiny_vl_model_dir):
    """2 RL steps with vLLM rollouts: only adapter weights move (base LM and vision bit-identical), the sampler's
    logprobs of its samples equal the trainer's after each merged sync; the step-2 checkpoint, exported, gives the
    adapted policy's logprobs in transformers and in a vLLM engine started on the merged folder."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mhpo_vl.cli import main
    from mhpo_vl.config import load_config
    from mhpo_vl.rollout.factory import make_sampler
    from mhpo_vl.train import Rollouts, build_trainer

    cfg = load_config(None, _overrides(warm_tiny_vl_model_dir, tmp_path / "run", **{
        "trainer.total_steps": "2", "optim.weight_decay": "0.0"}))
    trainer = build_trainer(cfg)
    model = trainer.rt.unwrapped()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and all(".lora_" in n for n in adapter)
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for n, p in model.named_parameters() if n in adapter}
    trainer.fit()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= adapter, sorted(changed - adapter)[:5]  # base LM and vision bit-identical
    assert {n for n in adapter if ".lora_B." in n} <= changed  # every B moved (A moves once B is non-zero)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2] and any(r["grad_norm"] > 1e-4 for r in steps)
    # step 2 samples from the weights step 1's update produced: a skipped or wrong merge shows up here
    assert all(r["rollout/logprob_diff_max"] < 2e-5 for r in steps), [r["rollout/logprob_diff_max"] for r in steps]

    ckpt = Path(trainer.ckpt.latest())
    assert (ckpt / ADAPTER_WEIGHTS).is_file() and not (ckpt / "model.safetensors").exists()
    out = tmp_path / "merged"
    assert main(["export", str(ckpt), str(out)]) == 0

    # the same sequences scored by the adapted policy, by transformers on the merged folder, by peft's loader
    engine = make_sampler("vllm", str(out), dtype="float32", seed=5, max_model_len=cfg.data.max_prompt_length + 16)
    try:
        from mhpo_vl.rollout.sampling import SamplingConfig

        samples = trainer.train_samples[:3]
        prompts = trainer.encoder.encode(samples)
        groups = engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_tokens=6, seed=7))
    finally:
        engine.close()
    rollouts = Rollouts([p for p, g in zip(prompts, groups) for _ in g], [c for g in groups for c in g], 2)
    rows_all = list(range(len(rollouts)))
    batch = trainer.logprobs.batch(rollouts, rows_all)
    with torch.no_grad():
        adapted, _ = trainer.logprobs.of(model, batch)
        merged, _ = trainer.logprobs.of(AutoModelForImageTextToText.from_pretrained(out).eval(), batch)
        via_peft, _ = trainer.logprobs.of(PeftModel.from_pretrained(
            AutoModelForImageTextToText.from_pretrained(warm_tiny_vl_model_dir), ckpt).base_model.model.eval(), batch)
    mask = batch.response_mask_NT.bool()
    torch.testing.assert_close(merged[mask], adapted[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(via_peft[mask], adapted[mask], rtol=0, atol=1e-5)
    sampler_lp = torch.zeros_like(adapted)
    for i, c in enumerate(rollouts.completions):
        sampler_lp[i, : len(c.sampler_logprobs)] = torch.tensor(c.sampler_logprobs)
    assert float((sampler_lp - adapted)[mask].abs().max()) < 2e-5  # vLLM on the merged folder = the adapted policy


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lora_run_killed_after_a_checkpoint_resumes_exactly(tmp_path, warm_tiny_vl_model_dir):
    """`mhpo-vl train` with LoRA: run A 4 steps; run B SIGKILLed after its step-2 checkpoint (adapter + optimiser
    state), then the same command resumes (base from the run's model, adapter from the checkpoint, merged weights
    synced into the new engine): B's steps 3-4 equal A's."""
    from run_helpers import assert_resumed_run_matches, kill_after_checkpoint, read_metrics, run_ok

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")

    def command(out):
        return [sys.executable, "-m", "mhpo_vl.cli", "train", "--config", str(config),
                *_overrides(warm_tiny_vl_model_dir, out)]

    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(command(a))
    kill_after_checkpoint(command(b), b, step=2)
    assert (b / "checkpoints" / "step_000002" / ADAPTER_WEIGHTS).is_file()
    assert max(r["step"] for r in read_metrics(b)) in (2, 3)
    run_ok(command(b))
    assert_resumed_run_matches(a, b, resumed_from_step=2, steps=4)


def _run_worker(out: Path, model_dir: Path, deepspeed: str, nproc: int) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = str(REPO / "tests" / "lora_worker.py")
    if nproc == 1:
        env.pop("WORLD_SIZE", None)
        cmd = [sys.executable, worker, str(out), str(model_dir), deepspeed]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29700 + os.getpid() % 200), worker, str(out), str(model_dir), deepspeed]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("deepspeed", ["configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"])
def test_lora_under_two_deepspeed_ranks_moves_only_the_adapter_like_one_process(tmp_path, tiny_vl_model_dir,
                                                                                deepspeed):
    """2 ranks (gloo) with ZeRO-2 / ZeRO-3 and LoRA, 2 updates on fixed rollouts: only adapter weights change, both
    ranks agree, the adapter equals a single plain-torch process's, the merged sync stream (gathered under ZeRO-3)
    is W + (alpha/r) B A of the trained weights, and the checkpoint holds the trained adapter."""
    from safetensors.torch import load_file

    (one,) = _run_worker(tmp_path / "one", tiny_vl_model_dir, "none", 1)
    r0, r1 = _run_worker(tmp_path / "two", tiny_vl_model_dir, deepspeed, 2)
    assert r0["world"] == 2 and r0["trainable"] == one["trainable"]
    assert all(".lora_" in n for n in r0["trainable"])
    changed = {n for n in r0["before"] if not torch.equal(r0["before"][n], r0["after"][n])}
    assert changed and changed <= set(r0["trainable"]), sorted(changed - set(r0["trainable"]))[:5]
    assert {n for n in r0["trainable"] if ".lora_B." in n} <= changed
    for name, w in r0["after"].items():
        assert torch.equal(w, r1["after"][name]), f"ranks disagree on {name}"
    for name in one["trainable"]:
        torch.testing.assert_close(r0["after"][name], one["after"][name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-6)
    assert r0["merged"].keys() == one["merged"].keys() and len(r0["merged"]) > 0
    for name, w in r0["merged"].items():
        module = name.removesuffix(".weight")
        a, b = r0["after"][f"{module}.lora_A.default.weight"], r0["after"][f"{module}.lora_B.default.weight"]
        by_hand = r0["after"][f"{module}.base_layer.weight"] + (8.0 / 4) * b @ a
        torch.testing.assert_close(w, by_hand, rtol=0, atol=1e-6)
    saved = load_file(str(Path(r0["checkpoint"]) / ADAPTER_WEIGHTS))
    assert len(saved) == len(r0["trainable"])
    for key, tensor in saved.items():
        name = key.removeprefix("base_model.model.").replace(".weight", ".default.weight")
        assert torch.equal(tensor, r0["after"][name]), key

"""Issue 25 item 2: the memory plan per GPU. The parameter arithmetic against real models (the tiny model's actual
parameters; the shipped models' published sizes), every shipped config fits the hardware its header states, and the
7B full-parameter recipe on one 80 GB GPU does not (with the numbers)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mhpo_vl.config import load_config
from mhpo_vl.train.memory_plan import (
    KNOWN_MODELS,
    PUBLISHED_PARAMS_B,
    Inputs,
    find_model_shape,
    hardware_of,
    parse_hardware,
    plan,
    plan_for_config,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_parameter_counts_match_the_published_sizes(name):
    assert KNOWN_MODELS[name].params / 1e9 == pytest.approx(PUBLISHED_PARAMS_B[name], abs=0.006)


def test_parameter_count_equals_the_tiny_models_own(tiny_vl_model_dir):
    from transformers import AutoModelForImageTextToText

    shape = find_model_shape(str(tiny_vl_model_dir))
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_model_dir)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.vision_params == sum(p.numel() for n, p in model.named_parameters() if "visual" in n)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_fits_its_stated_hardware(path):
    stated = hardware_of(path)
    assert stated, f"{path.name}: no `# hardware: NxMGiB` (or cpu) header line"
    hw = parse_hardware(stated)
    if hw is None:
        return  # the CPU demo
    result = plan_for_config(load_config(str(path), []), *hw)
    assert result is not None
    print(f"{path.name}: " + result.lines()[-1])
    assert result.fits, "\n".join(result.lines())


def test_the_7b_recipe_on_one_80gb_gpu_does_not_fit():
    cfg = load_config(str(REPO / "configs" / "geo3k_qwen2_5_vl_7b_mhpo.yaml"), [])
    result = plan_for_config(cfg, 1, 79.2)
    print("\n".join(result.lines()))
    assert not result.fits and result.suggested_utilization is None
    # ZeRO-2 on one GPU divides nothing: 2 B (bf16) + 4 B (master) + 8 B (Adam) per trainable parameter, + weights
    assert result.rows["Adam moments (fp32 m, v)"] == pytest.approx(8 * 7.6156e9 / 2**30, rel=1e-3)
    assert result.rows["fp32 master weights"] == pytest.approx(4 * 7.6156e9 / 2**30, rel=1e-3)
    assert result.rollout_gib > 150


def test_the_7b_lora_recipe_fits_one_80gb_gpu_with_only_the_adapter_trained():
    cfg = load_config(str(REPO / "configs" / "geo3k_qwen2_5_vl_7b_mhpo_lora.yaml"), [])
    result = plan_for_config(cfg, 1, 79.2)
    print("\n".join(result.lines()))
    # rank 64 x (fan-in + fan-out) of q, k, v, o, gate, up, down in each of the 28 layers (hidden 3584, 28 heads of 128,
    # 4 KV heads, FFN 18944): 64 x ((3584+3584) + 2 (3584+512) + (3584+3584) + 2 (3584+18944) + (18944+3584)) x 28
    adapter = 64 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 2 * (3584 + 18944) + (18944 + 3584)) * 28
    assert adapter == 161_480_704
    assert result.rows["Adam moments (fp32 m, v)"] == pytest.approx(8 * adapter / 2**30)
    assert result.rows["policy weights"] == pytest.approx(2 * KNOWN_MODELS[cfg.model.name_or_path].params / 2**30)
    assert result.fits and result.peak_gib < 79.2


def test_zero_stages_divide_as_stated():
    shape = KNOWN_MODELS["Qwen/Qwen2.5-Math-7B-Instruct"]
    base = dict(gpus=8, gpu_gib=79.2, dtype="bfloat16", freeze_vision=False, gradient_checkpointing=True,
                micro_batch_tokens=8192, logprob_chunk=1024, kl=False, gpu_memory_utilization=0.5, sleep=True,
                max_model_len=4096)
    rows = {s: plan(shape, Inputs(zero_stage=s, **base)).rows for s in (0, 1, 2, 3)}
    gib = shape.params / 2**30
    assert rows[0]["Adam moments (fp32 m, v)"] == pytest.approx(8 * gib)
    assert rows[1]["Adam moments (fp32 m, v)"] == pytest.approx(gib) and rows[1]["gradients (model dtype)"] == \
        pytest.approx(2 * gib)
    assert rows[2]["gradients (model dtype)"] == pytest.approx(2 * gib / 8)
    assert rows[2]["policy weights"] == pytest.approx(2 * gib) and rows[3]["policy weights"] == pytest.approx(2 * gib / 8)
    no_ckpt = plan(shape, Inputs(zero_stage=2, **{**base, "gradient_checkpointing": False}))
    # Korthikanti et al.: 34 x tokens x hidden bytes per layer without checkpointing
    assert no_ckpt.rows["activations (checkpointing off)"] == pytest.approx(28 * 34 * 8192 * 3584 / 2**30)


def test_the_command_prints_the_plan_and_exits_1_when_it_does_not_fit():
    cmd = [sys.executable, "-m", "mhpo_vl.cli", "plan-memory", "--config", "configs/geo3k_qwen2_5_vl_7b_mhpo.yaml"]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "FITS" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run(cmd + ["--gpus", "1", "--gpu-memory", "79.2"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "DOES NOT FIT" in bad.stdout and "Adam moments" in bad.stdout

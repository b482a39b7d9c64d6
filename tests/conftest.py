"""Shared pytest fixtures: tiny random models (built once per builder version) and the real benchmark fixtures.

Tests never touch the Hugging Face Hub: offline mode is forced before transformers is imported anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# The Qwen tokenizer folder (mhpo_vl.models.qwen_tokenizer) is cached beside the tiny models, not in the user's home.
os.environ.setdefault("MHPO_VL_CACHE", str(REPO_ROOT / ".cache"))


def _build_once(kind: str, vocab: str) -> Path:
    from mhpo_vl.models.tiny import cached_tiny_model

    return cached_tiny_model(kind, REPO_ROOT / ".cache" / "tiny_models", vocab=vocab)


@pytest.fixture(scope="session")
def tiny_vl_model_dir() -> Path:
    """Folder of a tiny random Qwen2.5-VL (model + processor) with the small BPE vocabulary (fast: most tests run
    many forward passes and vLLM engines on it), loadable with Auto classes and vLLM."""
    return _build_once("vl", "small")


@pytest.fixture(scope="session")
def tiny_text_model_dir() -> Path:
    """Folder of a tiny random Qwen2 causal LM with the same small tokenizer and chat template."""
    return _build_once("text", "small")


@pytest.fixture(scope="session")
def qwen_vl_model_dir() -> Path:
    """A tiny random Qwen2.5-VL with the REAL Qwen2.5-VL tokenizer (151,665 tokens, 151,936 embedding rows)."""
    return _build_once("vl", "qwen")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The real benchmark fixtures (/work/shared/fixtures), or $MHPO_VL_FIXTURES."""
    env = os.environ.get("MHPO_VL_FIXTURES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark fixtures folder not found at {path} "
            f"({'from $MHPO_VL_FIXTURES' if env else 'default <repo>/../shared/fixtures'}); "
            "set MHPO_VL_FIXTURES to the folder holding geometry3k/, mathvista/, ..."
        )
    return path


@pytest.fixture(scope="session")
def warm_tiny_vl_model_dir(tiny_vl_model_dir) -> Path:
    """The tiny Qwen2.5-VL after a short SFT warm-start (see run_helpers.build_warm_model): RL updates on it are
    not zero. Built once per tiny-model builder version and warm-start length."""
    from run_helpers import WARM_START_STEPS, build_warm_model

    from mhpo_vl.models.tiny import build_once

    return build_once(tiny_vl_model_dir.parent / f"vl_warm{WARM_START_STEPS}",
                      lambda folder: build_warm_model(tiny_vl_model_dir, folder))

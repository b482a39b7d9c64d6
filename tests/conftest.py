"""Shared pytest fixtures: tiny random models (built once per builder version) and the real benchmark fixtures.

Tests never touch the Hugging Face Hub: offline mode is forced before transformers is imported anywhere.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tiny_model_cache_root() -> Path:
    """<repo>/.cache/tiny_models/<hash of the builder source>: a changed builder gets a fresh folder."""
    import mhpo_vl.tiny_model as tiny_model

    source = Path(tiny_model.__file__).read_bytes()
    return REPO_ROOT / ".cache" / "tiny_models" / hashlib.sha256(source).hexdigest()[:16]


def _build_once(kind: str) -> Path:
    """Build into a temp folder and rename into place, so a crashed or concurrent build never leaves a half folder."""
    import tempfile

    from mhpo_vl import tiny_model

    target = _tiny_model_cache_root() / kind
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    builder = tiny_model.build_tiny_vl_model if kind == "vl" else tiny_model.build_tiny_text_model
    builder(tmp, seed=0)
    try:
        tmp.rename(target)
    except OSError:  # another session finished first; its build is byte-identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def tiny_vl_model_dir() -> Path:
    """Folder of a tiny random Qwen2.5-VL (model + processor), loadable with Auto classes and vLLM."""
    return _build_once("vl")


@pytest.fixture(scope="session")
def tiny_text_model_dir() -> Path:
    """Folder of a tiny random Qwen2 causal LM with the same tokenizer and chat template."""
    return _build_once("text")


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

"""The exact Qwen2.5-VL tokenizer, rebuilt offline from the BPE ranks that ship in the PyPI package ``dashscope``.

Qwen publishes its vocabulary as a tiktoken rank file (``qwen.tiktoken``: one ``base64(token bytes) rank`` per line,
151,643 lines; Qwen, Qwen2, Qwen2.5 and Qwen2.5-VL share it). ``dashscope`` (Alibaba's SDK, Apache-2.0) carries a copy in
``dashscope/resources/``; scripts/setup.sh installs it with ``--no-deps`` (we need the file, not the SDK), so this
module finds the file with ``importlib.util.find_spec`` and never imports the package.

From the ranks we write what the hub repo ``Qwen/Qwen2.5-VL-7B-Instruct`` ships: a byte-level BPE ``tokenizer.json``
(NFC normaliser, Qwen2's split regex, merges derived from the ranks), the 22 added tokens at ids 151,643-151,664 (the
first 14 special, the tool/FIM ones not), and ``tokenizer_config.json`` with Qwen2.5-VL's chat template, whose default
system prompt is "You are a helpful assistant.". ``cached_qwen_tokenizer_dir`` builds that folder once (about 4 s)
under ``$MHPO_VL_CACHE`` (default ``~/.cache/mhpo_vl``), keyed by a hash of this file (which pins the rank file's
hash); ``load_qwen_tokenizer`` loads it with ``AutoTokenizer`` (about 1.5 s).

Why the merges reproduce tiktoken: tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest
rank. For a token of rank r, running that procedure on its bytes while only allowing ranks below r ends in exactly two
parts; (left, right) is the merge that creates the token, and ordering merges by r makes the HF BPE pick pairs in the
same order (the conversion transformers uses for tiktoken models). tests/test_qwen_tokenizer.py checks the ids against
tiktoken itself on thousands of strings.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from mhpo_vl.models.build_cache import build_once
from mhpo_vl.models.qwen_chat import QWEN_PRETOKENIZE_REGEX, QWEN_VL_CHAT_TEMPLATE

# dashscope==2.0.2's dashscope/resources/qwen.tiktoken; another file is an error (ids would silently differ).
RANK_FILE_PACKAGE = "dashscope"
RANK_FILE_RELATIVE = ("resources", "qwen.tiktoken")
RANK_FILE_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_BPE_TOKENS = 151_643

# Qwen2.5-VL's added tokens in id order from 151,643, with their `special` flag (tokenizer_config.json of the hub
# repo): special tokens are dropped by decode(skip_special_tokens=True); the tool-call and FIM markers are not.
QWEN_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN_VL_TOKENIZER_SIZE = NUM_BPE_TOKENS + len(QWEN_VL_ADDED_TOKENS)  # 151,665
# Embedding rows of Qwen2.5-VL-3B (the 7B has 152,064): the vocabulary padded to a multiple of 128.
QWEN_VL_3B_VOCAB_ROWS = 151_936
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class RankFileError(RuntimeError):
    """The Qwen rank file is missing, altered, or malformed."""


def rank_file_path() -> Path:
    """Where ``dashscope`` keeps qwen.tiktoken (found without importing dashscope, whose deps we do not install)."""
    spec = importlib.util.find_spec(RANK_FILE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RankFileError(
            "the Qwen BPE rank file comes from the PyPI package `dashscope`, which is not installed; "
            "run scripts/setup.sh or `pip install --no-deps dashscope==2.0.2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*RANK_FILE_RELATIVE)
    if not path.is_file():
        raise RankFileError(f"{path} not found in the installed dashscope; install dashscope==2.0.2 (--no-deps)")
    return path


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """token bytes -> rank from a tiktoken rank file, checked: the known hash, ranks 0..N-1, no duplicates."""
    path = Path(path) if path is not None else rank_file_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANK_FILE_SHA256:
        raise RankFileError(f"{path}: sha256 {digest} is not Qwen's qwen.tiktoken ({RANK_FILE_SHA256})")
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(data.splitlines(), start=1):
        token_b64, _, rank = line.partition(b" ")
        token = base64.b64decode(token_b64, validate=True)
        if int(rank) != line_no - 1 or token in ranks:
            raise RankFileError(f"{path}:{line_no}: rank {rank!r} out of order or token repeated")
        ranks[token] = int(rank)
    if len(ranks) != NUM_BPE_TOKENS:
        raise RankFileError(f"{path}: {len(ranks)} tokens, expected {NUM_BPE_TOKENS}")
    return ranks


def _split_below(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge loop on ``token``'s bytes, allowing only merges into tokens of rank < ``max_rank``."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_i = rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in rank order: for each multi-byte token, the two parts tiktoken joins last to form it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _split_below(ranks, token, rank)
        if len(parts) != 2:
            raise RankFileError(f"token of rank {rank} ({token!r}) is not reachable by merging two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


def _byte_level_pipeline() -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
    }


def tokenizer_json(ranks: dict[bytes, int]) -> dict[str, Any]:
    """The ``tokenizer.json`` of Qwen2.5-VL: byte-level BPE over the ranks plus the 22 added tokens."""
    to_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    added = [
        {"id": NUM_BPE_TOKENS + i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
        for i, (content, special) in enumerate(QWEN_VL_ADDED_TOKENS)
    ]
    model = {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
        "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": {text(token): rank for token, rank in ranks.items()},
        "merges": [[text(left), text(right)] for left, right in derive_merges(ranks)],
    }
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, **_byte_level_pipeline(),
            "model": model}


def tokenizer_config() -> dict[str, Any]:
    """``tokenizer_config.json`` as in the hub repo (eos <|im_end|>, pad <|endoftext|>, no BOS, the VL template)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(NUM_BPE_TOKENS + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": special}
            for i, (content, special) in enumerate(QWEN_VL_ADDED_TOKENS)
        },
        "additional_special_tokens": [content for content, special in QWEN_VL_ADDED_TOKENS[1:] if special],
        "bos_token": None,
        "chat_template": QWEN_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_qwen_tokenizer(out_dir: str | Path, rank_file: str | Path | None = None) -> Path:
    """Write tokenizer.json and tokenizer_config.json of Qwen2.5-VL into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = load_ranks(rank_file)
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json(ranks), ensure_ascii=False), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return out_dir


def default_cache_root() -> Path:
    return Path(os.environ.get("MHPO_VL_CACHE") or Path.home() / ".cache" / "mhpo_vl")


def cached_qwen_tokenizer_dir(cache_root: str | Path | None = None) -> Path:
    """The tokenizer folder, written once under ``<cache_root>/qwen2_5_vl_tokenizer-<hash>/`` (see build_once)."""
    cache_root = default_cache_root() if cache_root is None else cache_root
    version = hashlib.sha256(Path(__file__).read_bytes() + RANK_FILE_SHA256.encode()).hexdigest()[:16]
    return build_once(Path(cache_root) / f"qwen2_5_vl_tokenizer-{version}", write_qwen_tokenizer,
                      done_file="tokenizer.json")


def load_qwen_tokenizer(cache_root: str | Path | None = None):
    """The Qwen2.5-VL tokenizer (``AutoTokenizer`` over the cached folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_qwen_tokenizer_dir(cache_root))

"""The rebuilt Qwen2.5-VL tokenizer equals tiktoken over the same ranks, and carries Qwen2.5-VL's tokens and template."""
from __future__ import annotations

import random
import unicodedata

import pytest

from mhpo_vl.models.qwen_tokenizer import (
    NUM_BPE_TOKENS,
    QWEN_VL_ADDED_TOKENS,
    QWEN_VL_TOKENIZER_SIZE,
    RankFileError,
    cached_qwen_tokenizer_dir,
    derive_merges,
    load_qwen_tokenizer,
    load_ranks,
    rank_file_path,
)
from mhpo_vl.models.tiny import QWEN_PRETOKENIZE_REGEX

# Qwen2.5-VL's ids, read off its tokenizer_config.json.
EXPECTED_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
    "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663, "<|file_sep|>": 151664,
}
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>"}


@pytest.fixture(scope="module")
def ranks():
    return load_ranks()


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen_tokenizer()  # built once per version of mhpo_vl/models/qwen_tokenizer.py under $MHPO_VL_CACHE


@pytest.fixture(scope="module")
def tiktoken_encoding(ranks):
    import tiktoken  # the dev extra installs it
    specials = {content: NUM_BPE_TOKENS + i for i, (content, _) in enumerate(QWEN_VL_ADDED_TOKENS)}
    return tiktoken.Encoding("qwen_from_ranks", pat_str=QWEN_PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                             special_tokens=specials)


def _random_codepoint(rng: random.Random) -> str:
    while True:
        cp = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF),
                         rng.randint(0x10000, 0x10FFFF)])
        if not 0xD800 <= cp <= 0xDFFF:  # surrogates are not text
            return chr(cp)


def varied_strings(ranks, per_kind: int = 500, seed: int = 0) -> list[str]:
    """Deterministic strings of nine kinds (per_kind each): LaTeX, CJK, emoji, whitespace runs, numbers, code,
    random code points, contractions/accents (the regex's case-insensitive and NFC paths), and concatenations of
    random vocabulary entries (long merge chains)."""
    rng = random.Random(seed)
    latex = [r"\frac{%d}{%d}", r"\sqrt{%d}", r"x^{%d} + y_{%d}", r"\angle ABC = %d^\circ", r"\boxed{%d}",
             r"\int_0^{%d} f(x)\,dx", r"\left(\frac{a}{b}\right)^{%d}", r"$\odot X$, $m \widehat{AB}=%d$"]
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🔥", "✓", "🤖", " ", "!", "a"]
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009", "\n\n\n", "x", "1", "."]
    code = ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
            "SELECT * FROM t WHERE id = 42;", "if __name__ == '__main__':\n    main()", "<div class=\"a\">&amp;</div>",
            "    \n    x = [1, 2, 3]  # comment\n"]
    words = "I'm you're He'LL DON'T we've it's the The THE triangle café naïve e\u0301 A\u030a ﬁ Ω Å 1st".split()
    vocab_texts = []
    for token in ranks:
        try:
            vocab_texts.append(token.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    makers = [
        lambda: " ".join(t % tuple(rng.randint(0, 10 ** rng.randint(1, 7)) for _ in range(t.count("%d")))
                         for t in rng.choices(latex, k=rng.randint(1, 4))),
        lambda: "".join(chr(rng.choice([rng.randint(0x4E00, 0x9FFF), rng.randint(0x3040, 0x30FF),
                                        rng.randint(0xAC00, 0xD7A3), 0x3002, 0xFF0C, 0x20]))
                        for _ in range(rng.randint(1, 40))),
        lambda: "".join(rng.choices(emoji, k=rng.randint(1, 20))),
        lambda: "".join(rng.choices(spaces, k=rng.randint(1, 30))),
        lambda: rng.choice(["", "-", "$", " "]) + str(rng.randint(0, 10 ** rng.randint(1, 30)))
        + rng.choice(["", ".", ".5", ",000", "e-7", " cm", "%"]),
        lambda: "".join(rng.choices(code, k=rng.randint(1, 3))),
        lambda: "".join(_random_codepoint(rng) for _ in range(rng.randint(1, 25))),
        lambda: rng.choice([" ", "", "\n"]).join(rng.choices(words, k=rng.randint(1, 12))),
        lambda: "".join(rng.choices(vocab_texts, k=rng.randint(2, 12))),
    ]
    return [make() for make in makers for _ in range(per_kind)]


def test_ids_equal_tiktoken_on_4500_varied_strings(tokenizer, tiktoken_encoding, ranks):
    from tokenizers import Tokenizer

    strings = varied_strings(ranks)
    assert len(strings) == 4500
    # The HF tokenizer applies NFC first (as Qwen's does); tiktoken has no normaliser.
    theirs = [tiktoken_encoding.encode(unicodedata.normalize("NFC", s), allowed_special="all") for s in strings]
    ours = tokenizer(strings, add_special_tokens=False)["input_ids"]
    # transformers v5 rebuilds Qwen2Tokenizer's normaliser and split regex in code, taking only vocab, merges and
    # added tokens from tokenizer.json; other readers (the tokenizers library, transformers v4) run the file's own
    # pipeline, so that is checked too.
    raw = Tokenizer.from_file(str(cached_qwen_tokenizer_dir() / "tokenizer.json"))
    from_file = [e.ids for e in raw.encode_batch(strings, add_special_tokens=False)]
    for name, encoded in (("AutoTokenizer", ours), ("tokenizer.json", from_file)):
        mismatches = [(s, a, b) for s, a, b in zip(strings, encoded, theirs) if a != b]
        assert not mismatches, f"{name}: {len(mismatches)} strings differ, first: {mismatches[0]!r}"
    # Decoding gives the (NFC) text back, byte for byte.
    broken = [s for s, ids in zip(strings, ours) if tokenizer.decode(ids) != unicodedata.normalize("NFC", s)]
    assert not broken, f"{len(broken)} strings do not round-trip, first: {broken[0]!r}"


def test_known_ids_and_size(tokenizer):
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert len(tokenizer) == QWEN_VL_TOKENIZER_SIZE == 151665
    # Digits one per token (Qwen's \p{N} rule).
    assert len(tokenizer("1805", add_special_tokens=False)["input_ids"]) == 4
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None


def test_added_tokens_have_qwen_ids_and_special_flags(tokenizer):
    added = {token.content: (token_id, token.special) for token_id, token in tokenizer.added_tokens_decoder.items()}
    assert {content: token_id for content, (token_id, _) in added.items()} == EXPECTED_IDS
    assert {content for content, (_, special) in added.items() if not special} == NOT_SPECIAL
    for content, token_id in EXPECTED_IDS.items():
        assert tokenizer(f"a{content}b", add_special_tokens=False)["input_ids"] == [64, token_id, 65], content
    ids = tokenizer("<|im_start|>x<tool_call>y<|im_end|><|endoftext|>", add_special_tokens=False)["input_ids"]
    # skip_special_tokens drops the special ones only; the tool-call marker is text (as in Qwen2.5-VL).
    assert tokenizer.decode(ids, skip_special_tokens=True) == "x<tool_call>y"


def test_chat_template_with_an_image_is_qwen2_5_vl_format(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # <|im_start|> system \n You are a helpful assistant . <|im_end|> \n <|im_start|> user \n
    #   <|vision_start|> <|image_pad|> <|vision_end|> Find  x . <|im_end|> \n <|im_start|> assistant \n
    assert ids == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
                   151652, 151655, 151653, 9885, 856, 13, 151645, 198, 151644, 77091, 198]
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert tokenizer.apply_chat_template(own_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n")


def test_altered_or_missing_rank_file_is_refused(tmp_path):
    original = rank_file_path().read_bytes()
    altered = tmp_path / "qwen.tiktoken"
    altered.write_bytes(original.replace(b"IQ== 0", b"Ig== 0", 1))
    with pytest.raises(RankFileError, match="sha256 .* is not Qwen's qwen.tiktoken"):
        load_ranks(altered)


def test_merges_are_the_last_join_tiktoken_makes():
    # "abc" (rank 4) is reached by a+b -> "ab", then "ab"+"c"; "bc" (rank 5) ranks too high to be used first.
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"bc": 5}
    assert derive_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c")]
    with pytest.raises(RankFileError, match=r"rank 3 \(b'abc'\) is not reachable"):
        derive_merges({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})

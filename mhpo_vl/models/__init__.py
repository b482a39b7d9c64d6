"""Models and tokenizers: loading a policy and its per-token logprobs (policy.py), tiny random models built offline
(tiny.py), the exact Qwen2.5-VL tokenizer rebuilt offline (qwen_tokenizer.py, qwen_chat.py), random weights at the
real 3B shapes (qwen_shapes.py), and building a folder once (build_cache.py)."""

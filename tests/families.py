"""Small random causal LMs of the real model families, around a real tokenizer, for tests and benches.

``build_model(family, tokenizer_dir, out_dir)`` writes a transformers model folder (config,
safetensors weights, the tokenizer) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline:
a random-initialised model built from the family's own config class, with ``vocab_size =
len(tokenizer)`` and the tokenizer's bos/eos/pad ids in its config (a family's defaults, e.g.
Llama's bos 1 / eos 2 or Phi-3's pad 32000, belong to its own tokenizer, not to the one given).
Nothing is downloaded; weights come from a fixed seed, so the same call gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "phi3", "gemma")
# Also built, not in FAMILIES: Gemma 2, whose forward soft-caps its logits after the output layer.
EXTRA_FAMILIES = ("gemma2",)


def _config(family: str, vocab: int, ids: dict, layers: int, hidden: int, heads: int, context: int):
    """The family's config class, shaped small; every other setting is the family's default."""
    import transformers as tf

    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=context,
                             **ids)
    # The Llama-like families share these names; head_dim is set because Gemma's default (256) and
    # Llama's/Mistral's (128) assume a large hidden size.
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads,
                  max_position_embeddings=context, **ids)
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=context)
    if family == "phi3":
        common.pop("head_dim")  # Phi-3 derives it from hidden_size / num_attention_heads
        return tf.Phi3Config(**common, original_max_position_embeddings=context)
    if family == "gemma":
        return tf.GemmaConfig(**common)
    if family == "gemma2":  # final_logit_softcapping 30 by default
        return tf.Gemma2Config(**common, sliding_window=context, query_pre_attn_scalar=hidden // heads)
    raise ValueError(f"unknown family {family!r}; expected one of: {', '.join(FAMILIES + EXTRA_FAMILIES)}")


def build_model(family: str, tokenizer_dir: Path | str, out_dir: Path | str, layers: int = 2, hidden: int = 64, *,
                heads: int = 4, context: int = 512, seed: int = 0, tie_embeddings: bool | None = None) -> Path:
    """A random ``family`` model around the tokenizer in ``tokenizer_dir``, saved (safetensors, with the
    tokenizer) into ``out_dir``; returns ``out_dir``.

    ``context`` is the model's maximum length (what lm-eval's rolling windows are cut to);
    ``tie_embeddings`` None keeps the family's default (GPT-2 and Gemma tie, the others do not).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = _config(family, len(tokenizer), ids, layers, hidden, heads, context)
    if tie_embeddings is not None:
        config.tie_word_embeddings = tie_embeddings
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

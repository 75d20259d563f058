"""The efficiency profile of a model: generation as a user of it pays for it, measured, with the
hardware recorded.

For each batch size (1, and a larger one): greedy generation from prompts of the suite's own text
(each cut to ``PROMPT_TOKENS`` tokens), timed twice: one new token (the **time to first token**: the
prompt's forward pass) and ``NEW_TOKENS`` new tokens. The **latency per token** is the time of the
tokens after the first, per decoding step; **tokens/s** counts every sequence's new tokens. Peak
memory is the process's (CPU: resident set; CUDA: allocated) during the runs, parameters and size on
disk come from the model and its folder. One warm-up generation runs first and is not counted.
harness/analytics_report.py puts the student's figures over the teacher's beside its retention.
"""

from __future__ import annotations

import os
import platform
import time

import pandas as pd

PROFILE_COLUMNS = ["model", "batch", "prompt_tokens", "new_tokens", "ttft_ms", "ms_per_token", "tokens_per_s",
                   "peak_memory_mb", "parameters", "bytes_on_disk", "hardware"]
BATCHES = (1, 8)
PROMPT_TOKENS = 32
NEW_TOKENS = 32


def hardware(device: str = "cpu") -> str:
    """What the figures were measured on: the accelerator's name, else the CPU and its cores, and torch."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{platform.processor() or platform.machine()} CPU × {os.cpu_count()} ({torch.get_num_threads()} threads)"
    return f"{where}, torch {torch.__version__}"


def _generate(model, inputs, new_tokens: int) -> float:
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def profile_model(ref, texts: list[str], batches=BATCHES, new_tokens: int = NEW_TOKENS,
                  prompt_tokens: int = PROMPT_TOKENS) -> list[dict]:
    """PROFILE_COLUMNS rows of one model, one per batch size."""
    from harness import models as model_io
    from harness.scoring import PeakMemory

    model, tokenizer = model_io.load(ref)
    tokenizer.padding_side = "left"  # a decoder generates after its prompt: pad before it
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:prompt_tokens] for t in texts if t.strip()]
    ids = [i for i in ids if i] or [[pad]]
    rows = []
    with PeakMemory(ref.device) as memory:
        for batch in batches:
            chosen = [ids[i % len(ids)] for i in range(batch)]
            width = max(map(len, chosen))
            inputs = {"input_ids": [[pad] * (width - len(c)) + c for c in chosen],
                      "attention_mask": [[0] * (width - len(c)) + [1] * len(c) for c in chosen]}
            inputs = {k: _tensor(v, model.device) for k, v in inputs.items()} | {"pad_token_id": pad}
            _generate(model, inputs, 2)  # warm-up: first-call allocations and kernel choices
            first = _generate(model, inputs, 1)
            total = _generate(model, inputs, new_tokens)
            rows.append({"model": ref.name, "batch": batch, "prompt_tokens": width, "new_tokens": new_tokens,
                         "ttft_ms": 1000 * first, "ms_per_token": 1000 * max(total - first, 0.0) / max(new_tokens - 1, 1),
                         "tokens_per_s": batch * new_tokens / total})
    for row in rows:
        row |= {"peak_memory_mb": memory.peak_bytes / 2**20, "parameters": sum(p.numel() for p in model.parameters()),
                "bytes_on_disk": model_io.bytes_on_disk(ref), "hardware": hardware(ref.device)}
    return rows


def _tensor(rows, device):
    import torch

    return torch.tensor(rows, dtype=torch.long, device=device)


def profile(refs, texts: list[str], batches=BATCHES, new_tokens: int = NEW_TOKENS) -> pd.DataFrame:
    """Every model's profile (PROFILE_COLUMNS)."""
    from harness import console

    rows = []
    for ref in console.bar(refs, desc="profiling", unit="model", leave=False):
        rows += profile_model(ref, texts, batches, new_tokens)
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)

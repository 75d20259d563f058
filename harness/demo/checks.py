"""The demo build's own checks, in plain torch, scored the way lm-eval scores them.

They fill the manifest's ``evaluation`` (held-out bits per byte and multiple-choice accuracy per
domain) without importing lm-eval, so the build can say at once whether the student lags
unevenly. The harness's real scoring goes through lm-eval (``harness/scoring.py``); the two agree
to the third decimal on the default world.
"""

from __future__ import annotations

import math

from harness.demo.corpus import DOMAINS


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; the Rust tokenizer directly, since whole documents are
    longer than the model window (the wrapper would warn about each one)."""
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def evaluate_models(models: dict, tokenizer, corpus: dict, mc: dict, recipe: dict) -> dict:
    """Bits per byte on every held-out document, and accuracy on the first MC items, per domain."""
    block, n_items = recipe["block_size"], recipe["eval_mc_items"]
    evaluation = {"test_bpb": {}, "mc_acc": {}, "mc_acc_norm": {}, "mc_items_scored": n_items}
    for name, model in models.items():
        evaluation["test_bpb"][name] = {d: round(bits_per_byte(model, tokenizer, corpus[d]["test"], block), 4)
                                        for d in DOMAINS}
        scored = {d: mc_accuracy(model, tokenizer, mc[d][:n_items], block) for d in DOMAINS}
        evaluation["mc_acc"][name] = {d: round(acc, 4) for d, (acc, _) in scored.items()}
        evaluation["mc_acc_norm"][name] = {d: round(acc_norm, 4) for d, (_, acc_norm) in scored.items()}
    return evaluation


def bits_per_byte(model, tokenizer, texts: list[str], block_size: int, batch_size: int = 16) -> float:
    """Sum of token NLL over total UTF-8 bytes, in bits, windowed as lm-eval's loglikelihood_rolling
    does: each token is predicted once, the first from EOT; a window predicts up to ``block_size``
    tokens and sees as much of the text before them as fits in the model."""
    windows = []
    for ids in encode_texts(tokenizer, texts):
        ids = [tokenizer.eos_token_id, *ids]
        for start in range(1, len(ids), block_size):
            end = min(start + block_size, len(ids))
            windows.append((ids[max(0, end - 1 - block_size) : end - 1], ids[start:end], end - start))
    nats = _sum_logprob(model, windows, batch_size)
    return -nats / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def mc_accuracy(model, tokenizer, items: list[dict], block_size: int, batch_size: int = 32) -> tuple[float, float]:
    """(acc, acc_norm): the choice with the highest summed log-likelihood after its context, and
    the same per character of the choice."""
    if not items:
        return float("nan"), float("nan")
    windows = []
    for item in items:
        context = item["context"]
        trailing = len(context) - len(context.rstrip())  # lm-eval moves trailing space to the choice
        for choice in item["choices"]:
            head, tail = (context[:-trailing], context[-trailing:] + choice) if trailing else (context, choice)
            head_ids, whole = encode_texts(tokenizer, [head, head + tail])
            ids = whole[-(block_size + 1):]
            n_tail = min(len(whole) - len(head_ids), len(ids) - 1)  # a choice longer than the window
            windows.append((ids[:-1], ids[-n_tail:], n_tail))
    scores = _sum_logprob(model, windows, batch_size, per_window=True)
    acc = acc_norm = 0
    for i, item in enumerate(items):
        ll = scores[4 * i : 4 * i + 4]
        acc += max(range(4), key=lambda c: ll[c]) == item["label"]
        acc_norm += max(range(4), key=lambda c: ll[c] / len(item["choices"][c])) == item["label"]
    return acc / len(items), acc_norm / len(items)


def _sum_logprob(model, windows, batch_size: int, per_window: bool = False):
    """Log-probability of each window's last ``n`` targets given its inputs (targets are the
    inputs shifted by one); batched by length, right-padded."""
    import torch

    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    results = [0.0] * len(windows)
    with torch.no_grad():
        for chunk_start in range(0, len(order), batch_size):
            chunk = order[chunk_start : chunk_start + batch_size]
            width = max(len(windows[i][0]) for i in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                inputs[row, : len(windows[i][0])] = torch.tensor(windows[i][0])
            logprobs = torch.log_softmax(model(input_ids=inputs).logits.float(), dim=-1)
            for row, i in enumerate(chunk):
                given, targets, n = windows[i]
                positions = torch.arange(len(given) - n, len(given))
                results[i] = logprobs[row, positions, torch.tensor(targets[-n:])].sum().item()
    return results if per_window else sum(results)

"""lm-eval's ``HFLM`` whose scoring memory is bounded by a chunk of logits, not batch × length × vocabulary.

``HFLM._loglikelihood_tokens`` (lm-eval 0.4) takes ``model(inputs).logits`` for a whole right-padded
batch, [batch, length, vocabulary], and its ``log_softmax``: two such tensors. At a 152k vocabulary a
batch of 16 windows of 760 tokens is 7.4 GB each, so a 4-layer model peaked at 15 GB. ``BoundedHFLM``
runs the model's body once per batch, keeps its final hidden states ([batch, length, hidden]: the
vocabulary is not in it) and turns into logits only the continuation positions, a chunk of positions
at a time, through the model's own output embedding and the logit transforms its forward applies
(Gemma 2's final soft-capping, say). The answers are lm-eval's: (sum of the continuation's
log-probabilities, whether every continuation token is the argmax).

Everything else is lm-eval's: request ordering, the one-token-continuation cache, batching, left
truncation, right padding, rolling windows. See docs/scoring-memory.md.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

log = logging.getLogger(__name__)

# At most this many logits exist at once (64 MiB in float32, once more for their log-softmax): at a
# 152k vocabulary that is 110 positions per chunk, at GPT-2's 50k 333.
CHUNK_LOGITS = 2**24


def chunk_positions(vocabulary: int, budget: int = CHUNK_LOGITS) -> int:
    """How many positions go through the output layer at once so that at most ``budget`` logits exist."""
    return max(1, budget // max(1, vocabulary))


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """What the model's forward turns final hidden states into: its output embedding, then the
    transforms some families apply after it, read from the config as their forwards read them:
    Cohere's ``logits · logit_scale``, Granite's ``logits / logits_scaling``, Gemma 2 and 3's
    ``cap · tanh(logits / cap)``. ``reproduces_forward`` checks the result against the model's own."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config.get_text_config()
    if (scale := getattr(config, "logit_scale", None)) is not None:
        logits = logits * scale
    if (divisor := getattr(config, "logits_scaling", None)) is not None:
        logits = logits / divisor
    if cap := getattr(config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / cap) * cap
    return logits


def final_hidden(model, inputs: torch.Tensor) -> torch.Tensor:
    """The model's body alone (``model.base_model``: GPT-2's ``transformer``, Llama's ``model``, …):
    the final hidden states, after the last norm, [batch, length, hidden]."""
    return model.base_model(input_ids=inputs, use_cache=False).last_hidden_state


def position_scores(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), target is the argmax) at each of [n, hidden] positions with targets [n], with at
    most ``chunk`` positions' logits at a time; log-softmax in ``dtype`` (float32 unless told)."""
    picked, greedy = [], []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        log_probs = F.log_softmax(output_logits(model, h), dim=-1, dtype=dtype)
        greedy.append(log_probs.argmax(dim=-1) == t)
        picked.append(log_probs.gather(-1, t.unsqueeze(-1)).squeeze(-1))
    return torch.cat(picked), torch.cat(greedy)


def reproduces_forward(model, probe_length: int = 8) -> bool:
    """Whether body + ``output_logits`` gives the model's own logits on a short probe. A family whose
    forward does something else to its logits (a scale, say) fails here and is scored unbounded."""
    vocabulary = model.get_output_embeddings().weight.shape[0]
    probe = (torch.arange(probe_length, device=model.device) * 7919 % vocabulary).unsqueeze(0)
    with torch.no_grad():
        expected = model(probe).logits
        try:
            found = output_logits(model, final_hidden(model, probe))
        except (AttributeError, TypeError):  # a body that is not a ``base_model`` with ``last_hidden_state``
            return False
    tolerance = 1e-4 * float(expected.abs().max()) + 1e-6
    return found.shape == expected.shape and bool((found - expected).abs().max() <= tolerance)


class BoundedHFLM(HFLM):
    """``HFLM`` whose log-likelihoods never hold more than a chunk of logits (see the module docstring).

    Falls back to ``HFLM``'s own path, with a warning, for what it does not cover: seq2seq models,
    ``batch_size="auto"`` (whose detection runs full-size forwards anyway), and a model whose logits
    body + output embedding does not reproduce.
    """

    def __init__(self, *args, chunk_logits: int = CHUNK_LOGITS, **kwargs):
        super().__init__(*args, **kwargs)
        head = self.model.get_output_embeddings()
        self.chunk = chunk_positions(head.weight.shape[0] if head is not None else 1, chunk_logits)
        reason = ("it is not a causal LM" if self.backend != "causal"
                  else "batch_size is 'auto'" if self.batch_size == "auto"
                  else "it has no output embedding" if head is None
                  else None if reproduces_forward(self.model)
                  else f"its logits ({self.model.config.model_type}) are more than its output embedding")
        self.bounded = reason is None
        if not self.bounded:
            log.warning("scoring memory is not bounded for this model: %s; lm-eval scores it with full "
                        "[batch, length, vocabulary] logits", reason)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """lm-eval's own method, less its [batch, length, vocabulary] logits.

        Replaced, not wrapped: the full logits come out of the middle of lm-eval's method (it
        log-softmaxes ``_model_call``'s output in place), so no narrower override can avoid them. The
        ordering (``Collator``, longest first, grouped by context for the one-token-continuation
        cache), batching, truncation and right padding are lm-eval's, line for line; the cache is
        handed hidden states where lm-eval hands it logits.
        """
        if not self.bounded:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        re_ord = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
                          group_by="contexts" if self.logits_cache else None,
                          group_fn=lambda req: req[-2] + req[-1][:-1])
        res = []
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0),
                    desc="Running loglikelihood requests")
        for batch in re_ord.get_batched(n=self.batch_size):
            inputs = [self._input(context, continuation) for _, context, continuation in batch]
            lengths = [len(i) for i in inputs]  # taken first: pad_and_concat pads the list it is given in place
            with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                                 enabled=self.mixed_precision_dtype is not None):
                hidden = final_hidden(self.model, pad_and_concat(max(lengths), inputs, padding_side="right"))
                # Every scored position of the batch goes through the output layer together, a chunk at a
                # time: one large matrix product per chunk rather than one small one per request.
                answered = []  # (cache key, the continuation's positions [n, hidden], its tokens [n])
                for (request_str, context, continuation), states, length in zip(batch, hidden, lengths, strict=True):
                    # The positions whose next token is the continuation (right padding lies after them).
                    states = states[length - len(continuation):length].unsqueeze(0)
                    for key, cont, shared in re_ord.get_cache(req_str=request_str, cxt_toks=context,
                                                              cont_toks=continuation, logits=states):
                        answered.append((key, shared[0, -len(cont):], torch.tensor(cont, device=self.device)))
                log_probs, greedy = position_scores(
                    self.model, torch.cat([a[1] for a in answered]), torch.cat([a[2] for a in answered]),
                    self.chunk, self.softmax_dtype or torch.float32)
            sizes = [len(a[2]) for a in answered]
            for (key, _, _), picked, hits in zip(answered, log_probs.split(sizes), greedy.split(sizes), strict=True):
                answer = (float(picked.sum()), bool(hits.all()))  # one sum per request, as lm-eval's
                res.append(answer)
                if key is not None:  # rolling windows come without a key; their sum is cached per document
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                pbar.update(1)
        pbar.close()
        return re_ord.get_original(res)

    def _input(self, context: list[int], continuation: list[int]) -> torch.Tensor:
        """lm-eval's causal input: context + continuation, left-truncated to the model's length, less the
        last token (its logits predict nothing scored)."""
        assert context and continuation and len(continuation) <= self.max_length  # lm-eval's own checks
        if len(context) + len(continuation) > self.max_length + 1:
            log.warning("context (%d) and continuation (%d) exceed the model's length %d; truncated from the left",
                        len(context), len(continuation), self.max_length)
        return torch.tensor((context + continuation)[-(self.max_length + 1):][:-1], dtype=torch.long,
                            device=self.device)

"""Teacher–student agreement on each slice's text: top-1 agreement, KL and JS divergence, calibration.

For every document of a slice (its text as lm-eval builds it: the context and the true
continuation), both models read the same text and, at each position, predict what comes next:

- **same vocabulary** (the tokenizers map every token to the same id): exact, per token. At each
  position the teacher's and the student's next-token distributions over the whole vocabulary;
- **across vocabularies**: on aligned spans. Both byte-level tokenizations are cut into the
  bytes of the text; a byte offset where both place a token boundary is an *aligned boundary*.
  There, each model's next-token distribution is projected onto the **next byte** (a token's
  probability goes to its first byte; end-of-text and special tokens to one extra outcome), and the
  two 257-outcome distributions are compared. Exact for the next byte, comparable between any two
  byte-level tokenizers, and never a token mapping guessed from strings (docs/analytics.md).

The figures, per (model, domain, slice), over every compared position:

- ``top1_agreement``: the share of positions where both models' most likely outcome is the same;
- ``kl_bits``: mean KL(teacher ‖ student) in bits per position;
- ``js_bits``: mean Jensen–Shannon divergence in bits (0 identical, 1 disjoint);
- ``ece`` and ``reference_ece``: the expected calibration error of the student's and the teacher's
  own predictions (confidence = the top probability, correct = it names the actual next token or
  byte), over 15 equal-width confidence bins.

Memory: the output layer runs a chunk of positions at a time (harness/lm.py), so at most a chunk's
logits of each model exist, never [batch, length, vocabulary] of both. Each document is read up to
the shorter model context (its first tokens).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from distiller.files import write_atomic_text
from harness import cache, console
from harness.lm import CHUNK_LOGITS, chunk_positions, final_hidden, output_logits, reproduces_forward
from harness.scorecard import AGREEMENT_COLUMNS

log = logging.getLogger(__name__)

BINS = 15
NO_BYTE = 256  # the outcome of a token with no bytes (end-of-text, special tokens)
LN2 = math.log(2.0)
SCHEMA = 1  # bump when what measure() computes changes
BATCH_TOKENS = 4096  # padded tokens a batch of documents holds (hidden states: 4096 x hidden floats)


# --------------------------------------------------------------------------------------------
# Pure arithmetic on distributions


@dataclass
class Tally:
    """Sums over compared positions; documents and slices add up (``+``, ``sum(tallies, Tally())``)."""

    positions: int = 0
    agree: float = 0.0
    kl: float = 0.0  # nats
    js: float = 0.0  # nats
    # per confidence bin: count, sum of confidence, sum of correct — for the student and the teacher
    bins: np.ndarray = field(default_factory=lambda: np.zeros((2, BINS, 3)))

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.positions + other.positions, self.agree + other.agree, self.kl + other.kl,
                     self.js + other.js, self.bins + other.bins)

    def figures(self) -> dict:
        n = self.positions
        if n == 0:
            return {"positions": 0, "top1_agreement": math.nan, "kl_bits": math.nan, "js_bits": math.nan,
                    "ece": math.nan, "reference_ece": math.nan}
        return {"positions": n, "top1_agreement": self.agree / n, "kl_bits": self.kl / n / LN2,
                "js_bits": self.js / n / LN2, "ece": expected_calibration_error(self.bins[0]),
                "reference_ece": expected_calibration_error(self.bins[1])}


def expected_calibration_error(bins: np.ndarray) -> float:
    """Σ_b (n_b / N) · |accuracy_b − confidence_b| from per-bin (count, Σ confidence, Σ correct)."""
    count = bins[:, 0]
    total = count.sum()
    if total == 0:
        return math.nan
    return float(np.abs(bins[:, 2] - bins[:, 1]).sum() / total)


def _calibration_bins(log_probs: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    confidence, best = log_probs.exp().max(dim=-1)
    correct = (best == target).double()
    index = torch.clamp((confidence * BINS).long(), max=BINS - 1)
    out = torch.zeros(BINS, 3, dtype=torch.float64)
    out[:, 0].index_add_(0, index, torch.ones_like(correct))
    out[:, 1].index_add_(0, index, confidence.double())
    out[:, 2].index_add_(0, index, correct)
    return out.numpy()


def compare(teacher_log: torch.Tensor, student_log: torch.Tensor, target: torch.Tensor) -> Tally:
    """The tally of [n, K] log-distributions of both models over the same K outcomes, with the
    actual outcome ``target`` [n]. A NaN in either (a broken model: scoring's validation stops it)
    makes every figure NaN rather than a number."""
    if teacher_log.isnan().any() or student_log.isnan().any():
        nan = math.nan
        return Tally(int(target.numel()), nan, nan, nan, np.full((2, BINS, 3), nan))
    teacher_p, student_p = teacher_log.exp(), student_log.exp()
    # where p = 0 its term is 0 whatever the log: never 0 · (−inf)
    kl = torch.where(teacher_p > 0, teacher_p * (teacher_log - student_log), 0.0).sum(-1)
    mixture_log = torch.logaddexp(teacher_log, student_log) - LN2
    js = 0.5 * (torch.where(teacher_p > 0, teacher_p * (teacher_log - mixture_log), 0.0).sum(-1)
                + torch.where(student_p > 0, student_p * (student_log - mixture_log), 0.0).sum(-1))
    agree = (teacher_log.argmax(-1) == student_log.argmax(-1)).sum()
    bins = np.stack([_calibration_bins(student_log, target), _calibration_bins(teacher_log, target)])
    return Tally(int(target.numel()), float(agree), float(kl.sum()), float(js.sum()), bins)


# --------------------------------------------------------------------------------------------
# Tokens to bytes (byte-level BPE: GPT-2, Qwen2, Llama 3, the demo world's tokenizers)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes, inverted: character → byte."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = kept[:], 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars)}


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


def token_bytes(tokenizer, size: int) -> list[bytes | None]:
    """Each id's bytes (None for special tokens and ids past the tokenizer's vocabulary)."""
    alphabet, special = _byte_alphabet(), set(tokenizer.all_special_ids)
    out: list[bytes | None] = [None] * size
    names = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    for i, name in enumerate(names):
        if i in special or name is None or any(c not in alphabet for c in name):
            continue
        out[i] = bytes(alphabet[c] for c in name)
    return out


def first_byte_index(table: list[bytes | None]) -> torch.Tensor:
    """id → its first byte, or NO_BYTE: the projection of a next-token distribution onto the next byte."""
    return torch.tensor([t[0] if t else NO_BYTE for t in table], dtype=torch.long)


def aligned_boundaries(ends_a: list[int], ends_b: list[int]) -> list[tuple[int, int, int]]:
    """(byte offset, position in a, position in b) where both tokenizations end a token; position
    p is the index of the token whose end it is, offset 0 the prefix token's (position 0)."""
    where_b = {end: i for i, end in enumerate(ends_b)}
    return [(end, i, where_b[end]) for i, end in enumerate(ends_a) if end in where_b]


# --------------------------------------------------------------------------------------------
# Models on one document


@dataclass
class Side:
    """One model with what reading a text needs: its tokenizer, context, prefix, and vocabulary."""

    model: object
    tokenizer: object
    vocabulary: int  # the logits kept: the tokenizer's ids (a padded head's extra rows dropped)
    context: int
    prefix: int | None
    bounded: bool
    chunk: int

    @classmethod
    def of(cls, model, tokenizer) -> Side:
        head = model.get_output_embeddings().weight.shape[0]
        vocabulary = min(head, len(tokenizer))
        context = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 2048)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # a quarter of lm.py's budget: both models' log-probabilities and their exponentials exist at once
        return cls(model, tokenizer, vocabulary, context, prefix, reproduces_forward(model),
                   chunk_positions(vocabulary, CHUNK_LOGITS // 4))

    def byte_tables(self) -> tuple[list, torch.Tensor]:
        """(each id's bytes, each id's first byte), made once per model: a 152k vocabulary takes a while."""
        if not hasattr(self, "_byte_tables"):
            table = token_bytes(self.tokenizer, self.vocabulary)
            self._byte_tables = (table, first_byte_index(table))
        return self._byte_tables

    def ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.prefix] if self.prefix is not None else []) + ids

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """[batch, length, hidden] of [batch, length] ids (whole logits for a family whose logits are
        more than its head)."""
        inputs = inputs.to(self.model.device)
        if self.bounded:
            return final_hidden(self.model, inputs)
        return self.model(inputs).logits

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = output_logits(self.model, hidden) if self.bounded else hidden
        return F.log_softmax(logits[..., :self.vocabulary].float(), dim=-1)


def length_batches(lengths: list[int], tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of sequences grouped longest first into batches of at most ``tokens`` padded tokens
    (a sequence longer than that alone): similar lengths together, so little is padding."""
    batches, batch = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batch and lengths[batch[0]] * (len(batch) + 1) > tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + ([batch] if batch else [])


@torch.no_grad()
def same_vocabulary_tally(teacher: Side, student: Side, texts: list[str]) -> Tally:
    """Per token: both models on the teacher's ids, each position's next-token distributions. The
    texts go through the models a batch at a time, padded on the right: under causal attention a
    position never sees the padding after it, so each text's figures are those it has alone."""
    context = min(teacher.context, student.context)
    sequences = [ids for ids in (teacher.ids(text)[:context] for text in texts) if len(ids) >= 2]
    vocabulary, chunk = min(teacher.vocabulary, student.vocabulary), min(teacher.chunk, student.chunk)
    # whole logits (a family not bounded) are [batch, length, vocabulary]: one text at a time
    budget = BATCH_TOKENS if teacher.bounded and student.bounded else 1
    tally = Tally()
    for batch in length_batches([len(ids) - 1 for ids in sequences], budget):
        inputs = [sequences[i][:-1] for i in batch]
        width = len(inputs[0])
        padded = torch.tensor([ids + [ids[0]] * (width - len(ids)) for ids in inputs])
        kept = torch.tensor([[j < len(ids) for j in range(width)] for ids in inputs])
        hidden_t, hidden_s = teacher.hidden(padded)[kept], student.hidden(padded)[kept]
        target = torch.tensor([t for i in batch for t in sequences[i][1:]], device=hidden_t.device)
        for start in range(0, len(target), chunk):
            part = slice(start, start + chunk)
            tally += compare(teacher.log_probs(hidden_t[part])[:, :vocabulary],
                             student.log_probs(hidden_s[part])[:, :vocabulary], target[part])
    return tally


def _byte_ends(side: Side, ids: list[int], table: list[bytes | None]) -> list[int] | None:
    """The byte offset at which each token ends (the prefix at 0); None if the tokens do not spell
    the text byte for byte (a normaliser changed it)."""
    ends, at = [], 0
    for i, token in enumerate(ids):
        if i == 0 and side.prefix is not None:
            ends.append(0)
            continue
        if table[token] is None:
            return None
        at += len(table[token])
        ends.append(at)
    return ends


def _next_byte_log_probs(side: Side, hidden: torch.Tensor, first_byte: torch.Tensor) -> torch.Tensor:
    """[n, 257] log-probabilities of the next byte: each token's probability on its first byte."""
    probs = side.log_probs(hidden).exp()
    projected = torch.zeros(len(probs), NO_BYTE + 1, device=probs.device)
    projected.index_add_(1, first_byte[:probs.shape[-1]].to(probs.device), probs)
    return projected.clamp_min(1e-30).log()


@torch.no_grad()
def cross_vocabulary_tally(teacher: Side, student: Side, text: str, tables: tuple) -> Tally | None:
    """At aligned boundaries: next-byte distributions of both models (module docstring). None when
    a tokenization does not spell the text (the document is left out and counted)."""
    (table_t, first_t), (table_s, first_s) = tables
    data = text.encode("utf-8")
    ids_t, ids_s = teacher.ids(text)[:teacher.context], student.ids(text)[:student.context]
    ends_t, ends_s = _byte_ends(teacher, ids_t, table_t), _byte_ends(student, ids_s, table_s)
    if ends_t is None or ends_s is None:
        return None
    points = [(b, i, j) for b, i, j in aligned_boundaries(ends_t, ends_s) if b < len(data)]
    if not points:
        return Tally()
    hidden_t, hidden_s = teacher.hidden(torch.tensor([ids_t]))[0], student.hidden(torch.tensor([ids_s]))[0]
    target = torch.tensor([data[b] for b, _, _ in points], device=hidden_t.device)
    at_t = torch.tensor([i for _, i, _ in points], device=hidden_t.device)
    at_s = torch.tensor([j for _, _, j in points], device=hidden_s.device)
    tally, chunk = Tally(), min(teacher.chunk, student.chunk)
    for start in range(0, len(points), chunk):
        part = slice(start, start + chunk)
        tally += compare(_next_byte_log_probs(teacher, hidden_t[at_t[part]], first_t),
                         _next_byte_log_probs(student, hidden_s[at_s[part]], first_s), target[part])
    return tally


# --------------------------------------------------------------------------------------------
# A suite's slices


def document_text(task, doc) -> str:
    """The text of one document as lm-eval scores it: the context, then the true continuation
    (a multiple-choice item's right choice; a perplexity document's whole text)."""
    kind = task.OUTPUT_TYPE
    context = task.doc_to_text(doc) if kind != "loglikelihood_rolling" else ""
    target = task.doc_to_target(doc)
    if kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        target = choices[target] if isinstance(target, int) else target
    if isinstance(target, list):  # several references: the first
        target = target[0] if target else ""
    delimiter = "" if kind == "loglikelihood_rolling" else task.config.target_delimiter
    return f"{context}{delimiter}{target}" if context else str(target)


def slice_texts(suite, options) -> dict[tuple[str, str], list[str]]:
    """(domain, slice) → the texts of the documents scoring reads (the same first ``limit`` ones)."""
    from lm_eval.tasks import get_task_dict

    from harness.registry import names_builtin_tasks, task_manager
    from harness.taskfiles import inline_task, task_name

    manager = task_manager(names_builtin_tasks(suite))
    out = {}
    for domain in suite.domains:
        for slice_ in domain.slices:
            name = task_name(domain.name, slice_.name)
            tasks = get_task_dict([inline_task(slice_, name)], manager)
            task = next(iter(tasks.values()))
            limit = options.limit if options.limit is not None else (slice_.limit or suite.defaults.limit)
            docs = list(task.eval_docs)[:limit] if limit is not None else list(task.eval_docs)
            out[(domain.name, slice_.name)] = [document_text(task, doc) for doc in docs]
    return out


def pair_tally(teacher: Side, student: Side, texts: list[str]) -> tuple[str, int, Tally]:
    """(method, documents compared, tally) of one model pair over one slice's texts."""
    same = teacher.tokenizer.get_vocab() == student.tokenizer.get_vocab()
    if same:
        return "token", len(texts), same_vocabulary_tally(teacher, student, texts)
    if not (is_byte_level(teacher.tokenizer) and is_byte_level(student.tokenizer)):
        return "unaligned: not both byte-level tokenizers", 0, Tally()
    tables = tuple(side.byte_tables() for side in (teacher, student))
    tallies = [cross_vocabulary_tally(teacher, student, t, tables) for t in texts]
    kept = [t for t in tallies if t is not None]
    if len(kept) < len(texts):
        log.warning("%d of %d documents left out of the agreement: a tokenizer's tokens do not spell their text "
                    "byte for byte (a normaliser changed it)", len(texts) - len(kept), len(texts))
    return "next-byte", len(kept), sum(kept, Tally())


def _cached(reference_key: str, model_key: str):
    """The cache file of a pair: beside the scoring cache, keyed by both models' scoring keys."""
    name = hashlib.sha256(f"agreement/{SCHEMA}/{reference_key}/{model_key}".encode()).hexdigest()
    return cache.folder().parent / "agreement" / f"{name}.json"


def _load(path) -> list[dict] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent or torn: a miss
        return None


def measure(suite, refs, reference: str, options, cache_keys: dict[str, str]) -> pd.DataFrame:
    """Agreement of every model with the reference on every slice (AGREEMENT_COLUMNS), cached
    under both models' scoring keys (harness/cache.py: their exact bytes, the suite's data, the
    limit), so an unchanged pair is compared once."""
    from harness import models as model_io

    by_name = {r.name: r for r in refs}
    others = [r for r in refs if r.name != reference]
    rows, todo = [], []
    for ref in others:
        found = _load(_cached(cache_keys[reference], cache_keys[ref.name])) if options.use_cache else None
        if found is None:
            todo.append(ref)
        else:
            rows += [{**r, "model": ref.name} for r in found]
    if todo:
        texts = slice_texts(suite, options)
        teacher = Side.of(*model_io.load(by_name[reference]))
        for ref in todo:
            student = Side.of(*model_io.load(ref))
            mine = []
            for (domain, slice_name), found in console.bar(texts.items(), desc=f"agreement {ref.name}",
                                                           unit="slice", leave=False):
                method, documents, tally = pair_tally(teacher, student, found)
                mine.append({"model": ref.name, "domain": domain, "slice": slice_name, "method": method,
                             "documents": documents, **tally.figures()})
            write_atomic_text(_cached(cache_keys[reference], cache_keys[ref.name]), json.dumps(mine))
            rows += mine
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


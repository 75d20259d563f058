"""The loop's side of DSKD, CMA and ULD: batches with two tokenizations of one text, the training
step of each ``--kd`` mode other than plain KD, and DDK's ratios in bits per byte.

Data. The student's token stream is cut into blocks exactly as ``data.pack_blocks`` cuts it; the
text of each block (found through the tokenizer's character offsets) is tokenized again by the
teacher. One sampler row holds both: the student's ``block_size + 1`` ids, then the teacher's ids of
the same text, padded with ``PAD`` to one width for every domain. ``DomainSampler`` draws whole rows,
so its seeded order and its resumable state are exactly those of the one-tokenizer loop.

Ratios. Perplexity per token does not compare across tokenizers (longer tokens, fewer and harder
predictions); bits per byte does: the same bytes, each model predicting them with its own tokens.
With different tokenizers DDK's ratio is bpb_S / bpb_T per domain, which is also what the harness's
retention means for a bits-per-byte slice (teacher/student), so ``--gaps-from`` agrees with it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from distiller.data import count_blocks
from distiller.dskd import Projectors, Side, cma_loss, dual_space_loss, uld_loss
from distiller.losses import distillation_loss

log = logging.getLogger(__name__)

PAD = -1  # a teacher position with no token, in the sampler's rows
KD_MODES = ("kd", "dskd", "dskd-cma", "uld")
ACROSS_TOKENIZERS = ("dskd-cma", "uld")  # the modes that take two vocabularies
DEFAULT_KD_WEIGHT = {"kd": 0.2, "dskd": 0.5, "dskd-cma": 0.5, "uld": 0.5}  # DDK's γ; DSKD's kd_rate


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def check_mode(kd: str, kd_weight: float, same_vocab: bool, sizes: tuple[int, int]) -> None:
    """ValueError (bad input) for a mode that cannot take this pair; CPT (kd_weight 0) takes any."""
    if kd not in KD_MODES:
        raise ValueError(f"unknown --kd {kd!r}; choose one of {', '.join(KD_MODES)}")
    if kd != "kd" and not 0.0 <= kd_weight <= 1.0:  # (1 − w)·CE: a w above 1 would train against the labels
        raise ValueError(f"--kd {kd} weighs (1 − w)·CE + w·KD: --kd-weight must be in [0, 1], got {kd_weight}")
    if not same_vocab and kd not in ACROSS_TOKENIZERS and kd_weight != 0:
        raise ValueError(
            f"the teacher's and the student's tokenizers differ (vocabularies of {sizes[0]} and {sizes[1]} tokens); "
            f"--kd {kd} compares distributions over one vocabulary. Modes that accept different tokenizers: "
            f"{', '.join(ACROSS_TOKENIZERS)} (or --kd-weight 0: continued pre-training, no teacher signal)")


def check_pair(teacher: str, student: str, kd: str, kd_weight: float) -> None:
    """``check_mode`` from the two model folders' tokenizers alone: a cheap check before a run starts."""
    from transformers import AutoTokenizer

    teacher_tok, student_tok = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(student)
    check_mode(kd, kd_weight, same_vocabulary(teacher_tok, student_tok), (len(teacher_tok), len(student_tok)))


def _fast(tokenizer, role: str):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"the {role}'s tokenizer is not a fast (Rust) tokenizer; pairing two tokenizations "
                         "needs character offsets (a tokenizer.json)")
    return backend


# --- data: two tokenizations of one text --------------------------------------------------------

def pack_pairs(texts: list[str], student_tokenizer, teacher_tokenizer, block_size: int, *,
               domain: str = "") -> tuple[torch.Tensor, list[list[int]]]:
    """(student blocks [n, block_size + 1] as ``pack_blocks`` makes them, the teacher's ids of each
    block's text). A block's EOS positions become the teacher's EOS; the text between is cut at the
    student's token boundaries and tokenized by the teacher as one piece."""
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    if s_eos is None or t_eos is None:
        raise ValueError("both tokenizers need an end-of-text token to separate documents")
    stream: list[int] = []
    spans: list[tuple[int, int, int]] = []  # per token: (document, first char, end char); document -1 for EOS
    for doc, encoding in enumerate(_fast(student_tokenizer, "student").encode_batch(texts, add_special_tokens=False)):
        stream.append(s_eos)
        spans.append((-1, 0, 0))
        stream += encoding.ids
        spans += [(doc, start, end) for start, end in encoding.offsets]
    width = block_size + 1
    n_blocks = count_blocks(len(stream), block_size, len(texts), domain)

    # Each block as segments: EOS, or a run of one document's tokens → that document's text.
    blocks: list[list[int | str]] = []
    for b in range(n_blocks):
        segments: list[int | str] = []
        run: list[tuple[int, int, int]] = []
        for doc, start, end in spans[b * width:(b + 1) * width] + [(-1, 0, 0)]:  # a sentinel EOS ends the last run
            if run and doc != run[0][0]:
                segments.append(texts[run[0][0]][run[0][1]:max(e for _, _, e in run)])
                run = []
            if doc == -1:
                segments.append(t_eos)
            else:
                run.append((doc, start, end))
        blocks.append(segments[:-1])  # without the sentinel's EOS
    pieces = [s for segments in blocks for s in segments if isinstance(s, str)]
    encoded = iter(e.ids for e in _fast(teacher_tokenizer, "teacher").encode_batch(pieces, add_special_tokens=False))
    teacher = [[i for s in segments for i in ([s] if isinstance(s, int) else next(encoded))] for segments in blocks]
    return torch.tensor(stream[: n_blocks * width], dtype=torch.long).view(n_blocks, width), teacher


def pair_rows(pairs: dict[str, tuple[torch.Tensor, list[list[int]]]],
              teacher_context: int) -> tuple[dict[str, torch.Tensor], int]:
    """Sampler rows per domain: the student's block, then the teacher's ids padded with PAD to one
    width for every domain (at most teacher_context + 1, the teacher's window plus its last label).
    Returns (rows, how many teacher sequences had to be cut to fit)."""
    longest = max(len(ids) for _, teacher in pairs.values() for ids in teacher)
    width = max(2, min(longest, teacher_context + 1))
    rows, cut = {}, 0
    for domain, (student, teacher) in pairs.items():
        padded = torch.full((len(teacher), width), PAD, dtype=torch.long)
        for i, ids in enumerate(teacher):
            cut += len(ids) > width
            padded[i, : min(len(ids), width)] = torch.tensor(ids[:width], dtype=torch.long)
        rows[domain] = torch.cat([student, padded], dim=1)
    return rows, cut


def split_rows(rows: torch.Tensor, student_width: int, teacher_pad_id: int, ignore_index: int = -100):
    """(student inputs, student labels, teacher inputs, teacher labels) from sampler rows; teacher
    padding is read as teacher_pad_id (at the end of the sequence: causal attention never sees it)
    and labelled ignore_index."""
    student, teacher = rows[:, :student_width], rows[:, student_width:]
    labels = torch.where(teacher[:, 1:] == PAD, ignore_index, teacher[:, 1:])
    inputs = torch.where(teacher[:, :-1] == PAD, teacher_pad_id, teacher[:, :-1])
    return student[:, :-1], student[:, 1:], inputs, labels


# --- bits per byte, for DDK's ratios across tokenizers -----------------------------------------

def text_pieces(texts: list[str], max_chars: int, count: int) -> list[str]:
    """The first ``count`` pieces of at most ``max_chars`` characters, in document order: the same
    text for both models whatever their tokenizers."""
    pieces = []
    for text in texts:
        for start in range(0, len(text), max_chars):
            if len(pieces) == count:
                return pieces
            pieces.append(text[start:start + max_chars])
    return pieces


def _windows(ids: list[int], context: int) -> list[tuple[list[int], int]]:
    """lm-eval's rolling windows: every token after the first predicted once, each window seeing as
    much of what comes before as fits. (inputs, how many of the last positions are scored)."""
    out = []
    for start in range(1, len(ids), context):
        end = min(start + context, len(ids))
        out.append((ids[max(0, end - 1 - context):end], end - start))
    return out


@torch.no_grad()
def domain_bits_per_byte(model, tokenizer, pieces: dict[str, list[str]], context: int, accelerator,
                         chunk_size: int, batch_size: int = 8) -> dict[str, float]:
    """Bits per UTF-8 byte per domain: Σ −log₂ p(token) over every token of every piece (the first
    predicted from EOS) ÷ the pieces' bytes. Windows are shared out over the ranks, sums reduced."""
    was_training = model.training
    model.eval()
    head = accelerator.unwrap_model(model).get_output_embeddings()
    eos = tokenizer.eos_token_id
    sums = torch.zeros(len(pieces), dtype=torch.float64, device=accelerator.device)
    for d, texts in enumerate(pieces.values()):
        encoded = _fast(tokenizer, "model").encode_batch(texts, add_special_tokens=False)
        windows = [w for e in encoded for w in _windows([eos, *e.ids], context)]
        mine = windows[accelerator.process_index::accelerator.num_processes]
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            length = max(len(ids) for ids, _ in batch) - 1
            inputs = torch.full((len(batch), length), eos, dtype=torch.long)
            labels = torch.full((len(batch), length), -100, dtype=torch.long)
            for row, (ids, scored) in enumerate(batch):
                inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
                labels[row, len(ids) - 1 - scored:len(ids) - 1] = torch.tensor(ids[-scored:])
            inputs, labels = inputs.to(accelerator.device), labels.to(accelerator.device)
            hidden = model(input_ids=inputs, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
            _, ce, _ = distillation_loss(hidden, head, None, None, labels, kd_weight=0.0, chunk_size=chunk_size)
            sums[d] += ce.double() * (labels != -100).sum()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return {name: sums[d].item() / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)
            for d, (name, texts) in enumerate(pieces.items())}


# --- the training step of dskd, dskd-cma and uld -----------------------------------------------

def shared_tokens(student_tokenizer, teacher_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(student ids, teacher ids) of the tokens both vocabularies spell the same way."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    common = sorted(set(s_vocab) & set(t_vocab))
    return torch.tensor([s_vocab[t] for t in common], dtype=torch.long), torch.tensor([t_vocab[t] for t in common],
                                                                                      dtype=torch.long)


def make_projectors(kd: str, kd_weight: float, student, teacher, token_pairs=None) -> Projectors | None:
    """DSKD's projectors between the two models' final hidden sizes, initialised from the two heads
    (``Projectors.from_heads``); across vocabularies ``token_pairs`` (``shared_tokens``) matches
    their rows, and with no token in common the projectors keep nn.Linear's random start."""
    if kd not in ("dskd", "dskd-cma") or kd_weight == 0:
        return None
    w_s, w_t = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    if token_pairs is not None and len(token_pairs[0]) == 0:
        log.warning("the two vocabularies share no token: DSKD's projectors start at random")
        return Projectors(w_s.shape[1], w_t.shape[1], cross_attention=kd == "dskd-cma")
    return Projectors.from_heads(w_s, w_t, cross_attention=kd == "dskd-cma", token_pairs=token_pairs)


def sync_gradients(accelerator, module: torch.nn.Module | None) -> None:
    """Average a module's gradients over the ranks. The projectors are not wrapped in DDP (they are
    called piecewise, never through one forward), so their gradients are reduced here, by hand."""
    if module is None or accelerator.num_processes == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


@dataclass
class Step:
    """The loss of one batch for ``kd`` in dskd | dskd-cma | uld, or for CPT across tokenizers
    (kd_weight 0: the student's CE alone, no teacher forward). Returns (loss, ce, kd) like
    ``losses.distillation_loss``, with loss = (1 − w)·CE + w·KD for the DSKD-style modes."""

    kd: str
    kd_weight: float
    student: torch.nn.Module  # as prepared by accelerate (DDP-wrapped under several processes)
    student_core: torch.nn.Module  # the unwrapped student: its head and embedding
    teacher: torch.nn.Module
    projectors: Projectors | None
    paired: bool  # rows hold two tokenizations (different tokenizers)
    student_width: int
    teacher_pad_id: int
    options: dict  # kind, temperature, beta, alpha, chunk_size

    def __call__(self, rows: torch.Tensor):
        if self.paired:
            s_in, s_lab, t_in, t_lab = split_rows(rows, self.student_width, self.teacher_pad_id)
        else:
            s_in, s_lab = rows[:, :-1], rows[:, 1:]
            t_in, t_lab = s_in, s_lab
        hidden = _last_hidden(self.student, s_in)
        head = self.student_core.get_output_embeddings()
        if self.kd_weight == 0:
            # The total carries the gradient (ce and kd are for logging: the fused loss's convention).
            return distillation_loss(hidden, head, None, None, s_lab, kd_weight=0.0, chunk_size=self.options["chunk_size"])
        with torch.inference_mode():
            teacher_hidden = _last_hidden(self.teacher, t_in)
        teacher_hidden = teacher_hidden.clone()  # out of inference mode: autograd may save it
        teacher_head = self.teacher.get_output_embeddings()
        w, chunk = self.kd_weight, self.options["chunk_size"]
        if self.kd == "dskd":
            terms = dual_space_loss(hidden, head, teacher_hidden, teacher_head, s_lab, self.projectors, **self.options)
            return terms.total(w), terms.student_ce, terms.kd
        student = Side(hidden, head, s_in, s_lab, self.student_core.get_input_embeddings().weight)
        teacher = Side(teacher_hidden, teacher_head, t_in, t_lab, self.teacher.get_input_embeddings().weight)
        if self.kd == "uld":
            ce, kd = uld_loss(student, teacher, temperature=self.options["temperature"], chunk_size=chunk)
            return (1 - w) * ce + w * kd, ce, kd
        terms, _ = cma_loss(student, teacher, self.projectors, **self.options)
        return terms.total(w), terms.student_ce, terms.kd


def _last_hidden(model, input_ids):
    """The final hidden states, without the B×T×V logits (as ``trainer._last_hidden``)."""
    return model(input_ids=input_ids, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]

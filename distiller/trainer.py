"""The DDK distillation loop: read it top to bottom.

Loss = CE + γ·divergence(teacher ‖ student) (Eq. 3; γ = 0.2, T = 1, forward KL by default), with
the data mixture over domains set by DDK: every K steps the student's validation perplexity per
domain (the teacher's is computed once: it is frozen) gives the ratios ℓ_S/ℓ_T, Eq. 2 updates the
weights, and the sampler draws from them. The paper's baselines are settings of the same loop:
``mixture`` uniform / natural / fixed, ``kd_weight=0`` for CPT.

``kd`` picks the teacher signal: ``kd`` is the loss above; ``dskd`` (dual-space KD), ``dskd-cma``
(DSKD with cross-model attention) and ``uld`` (universal logit distillation) are one small branch
into distiller/cross.py. When the two tokenizers differ, each row carries both tokenizations of
one text and DDK's ratios are in bits per byte (perplexity per token does not compare).

One code path on one CPU and under ``accelerate launch`` (DDP): every rank holds the same sampler
and takes its slice of each global batch; per-domain losses are summed across ranks so every rank
computes the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from distiller import checkpoint as ckpt
from distiller import cross
from harness.atomic import write_atomic_folder
from distiller.data import DomainSampler, pack_blocks, read_texts
from distiller.ddk import Mixture, ratios_from_mlflow, ratios_from_scorecard
from distiller.losses import distillation_loss


log = logging.getLogger(__name__)


class DistillError(RuntimeError):
    """A failure while distilling (a non-finite loss, say); the last good checkpoint is kept."""


@dataclass
class DistillConfig:
    teacher: str
    student: str
    output_dir: str
    steps: int = 300
    batch_size: int = 8  # rows per process and step
    block_size: int = 256  # tokens per row (capped by the models' context)
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    kd: str = "kd"  # kd | dskd | dskd-cma | uld (distiller/cross.py)
    kd_weight: float | None = None  # None: kd's γ = 0.2, DSKD's w = 0.5; 0 is continued pre-training (CPT)
    projector_lr: float = 1e-3  # DSKD's projectors (dskd, dskd-cma)
    temperature: float = 1.0
    divergence: str = "forward_kl"
    mixture: str = "ddk"  # ddk | ddk-no-smoothing | uniform | natural | fixed:code=0.5,…
    alpha: float = 0.5  # Eq. 2's smoothing
    interval: int = 50  # K: steps between mixture updates
    val_blocks: int = 32  # validation blocks per domain for the perplexities
    gaps_from: str | None = None  # a scorecard.json or an MLflow run id: the initial ratios
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 0
    chunk_size: int = 256  # positions per chunk of the fused head + divergence (bench/loss_memory.py)
    mixed_precision: str = "no"  # "bf16" where the device supports it
    log_every: int = 10
    progress: bool = True


@dataclass
class DistillResult:
    student_dir: Path
    steps: int
    weights: dict[str, float]
    ratios: dict[str, float]
    history: list[dict] = field(default_factory=list)  # one row per mixture update
    ratio_of: str = "perplexity"  # what the ratios divide: "perplexity", or "bits per byte" across tokenizers
    tokens_per_s: float = 0.0
    ddk_seconds: float = 0.0  # in the loop: the student's perplexities and Eq. 2 every K steps
    setup_seconds: float = 0.0  # once: the teacher's perplexities and r_0
    seconds: float = 0.0


def _check_finite(model, step: int) -> None:
    """A finite loss can still be followed by an update that overflows the weights (a learning rate
    far too high, say): check before anything is saved, so the last checkpoint stays a good one."""
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise DistillError(f"the weights became non-finite after step {step} ({', '.join(broken[:3])}…); the last "
                           "good checkpoint is kept: lower --lr or resume from it")


def _lr_lambda(config: DistillConfig):
    """Linear warm-up, then cosine decay to min_lr (as a factor of lr, for LambdaLR)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


def _last_hidden(model, input_ids):
    """The final (normed) hidden states; logits_to_keep=1 keeps the forward from building the full
    B×T×V logits, which the chunked loss makes one chunk at a time instead."""
    return model(input_ids=input_ids, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]


@torch.no_grad()
def domain_perplexities(model, blocks: dict[str, torch.Tensor], accelerator, chunk_size: int, batch_size: int = 8):
    """exp(mean token cross-entropy) per domain on its validation blocks; the blocks are shared out
    over the ranks and the sums reduced, so every rank gets the same numbers."""
    was_training = model.training
    model.eval()
    head = accelerator.unwrap_model(model).get_output_embeddings()
    sums = torch.zeros(len(blocks), 2, dtype=torch.float64, device=accelerator.device)
    for i, rows in enumerate(blocks.values()):
        mine = rows[accelerator.process_index :: accelerator.num_processes].to(accelerator.device)
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            hidden = _last_hidden(model, batch[:, :-1])
            _, ce, _ = distillation_loss(hidden, head, None, None, batch[:, 1:], kd_weight=0.0, chunk_size=chunk_size)
            sums[i, 0] += ce.double() * batch[:, 1:].numel()
            sums[i, 1] += batch[:, 1:].numel()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return {name: math.exp(sums[i, 0].item() / sums[i, 1].item()) for i, name in enumerate(blocks)}


def distill(config: DistillConfig, domains: dict[str, tuple[Path, Path]]) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` over ``domains`` (name → (train file,
    validation file), JSON Lines of {"text"}); the final student goes to ``<output_dir>/student``."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    # Models: the teacher frozen in eval mode, the student trained.
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    teacher_tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    student = AutoModelForCausalLM.from_pretrained(config.student, use_safetensors=True)
    # The teacher is loaded even for CPT (γ = 0): its perplexities define the ratios every
    # baseline is measured by; only its forward on training batches is skipped then.
    teacher = AutoModelForCausalLM.from_pretrained(config.teacher, use_safetensors=True)
    teacher.requires_grad_(False).eval().to(accelerator.device)
    vocab_sizes = (teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0])
    same_vocab = vocab_sizes[0] == vocab_sizes[1] and cross.same_vocabulary(teacher_tokenizer, tokenizer)
    kd_weight = cross.DEFAULT_KD_WEIGHT.get(config.kd, 0.0) if config.kd_weight is None else config.kd_weight
    cross.check_mode(config.kd, kd_weight, same_vocab, vocab_sizes)  # ValueError: bad input
    block = min(config.block_size, student.config.max_position_embeddings, teacher.config.max_position_embeddings)

    # Data: each domain's text packed into blocks; validation blocks for the perplexities. With two
    # tokenizers a row holds both tokenizations of its text, and validation is text, in bits per byte.
    eos = tokenizer.eos_token_id
    texts = {d: (read_texts(paths[0]), read_texts(paths[1])) for d, paths in domains.items()}
    if same_vocab:
        train = {d: pack_blocks(t, tokenizer, block, eos, domain=d) for d, (t, _) in texts.items()}
        val = {d: pack_blocks(v, tokenizer, block, eos, domain=d)[: config.val_blocks] for d, (_, v) in texts.items()}

        def measure(model, _tokenizer):  # perplexity per domain
            return domain_perplexities(model, val, accelerator, config.chunk_size)
    else:
        train, cut = cross.pair_rows({d: cross.pack_pairs(t, tokenizer, teacher_tokenizer, block, domain=d)
                                      for d, (t, _) in texts.items()}, teacher.config.max_position_embeddings)
        if cut:
            log.warning("%d teacher sequences were longer than the teacher's context and were cut", cut)
        # As much text as val_blocks student blocks hold, roughly (4 characters per token).
        pieces = {d: cross.text_pieces(v, 4 * block, config.val_blocks) for d, (_, v) in texts.items()}

        def measure(model, model_tokenizer):  # bits per byte per domain
            return cross.domain_bits_per_byte(model, model_tokenizer, pieces, block, accelerator, config.chunk_size)
    mixture = replace(Mixture.parse(config.mixture, tuple(domains), natural_sizes=_natural(train)), alpha=config.alpha)

    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # DSKD's projectors, initialised from the two heads: trained with their own learning rate, kept in the
    # checkpoints, never in the student.
    pairs = None if same_vocab else cross.shared_tokens(tokenizer, teacher_tokenizer)  # the heads' common rows
    projectors = cross.make_projectors(config.kd, kd_weight, student, teacher, pairs)
    if projectors is not None:
        projectors.to(accelerator.device)
        groups.append({"params": list(projectors.parameters()), "lr": config.projector_lr,
                       "weight_decay": config.weight_decay})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(student)

    ddk_seconds, started_setup = 0.0, time.perf_counter()
    history: list[dict] = []
    start_step = 0
    resumed = ckpt.latest_good(output / "checkpoints") if config.resume else None
    sampler = DomainSampler(train, {d: 1.0 for d in domains}, seed=config.seed)
    if resumed is not None:
        path, state = resumed
        unwrapped.load_state_dict(AutoModelForCausalLM.from_pretrained(path / "student").state_dict())
        training = ckpt.load_training(path)
        if projectors is not None:
            projectors.load_state_dict(ckpt.load_projectors(path))
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        torch.set_rng_state(training["rng"])
        sampler.load_state_dict(state["sampler"])
        weights, factor = state["weights"], state["factor"]
        ratios, history = state["ratios"], state["history"]
        ppl_teacher, start_step = state["ppl_teacher"], state["step"]
    else:
        # The teacher's perplexities (bits per byte across tokenizers) once: it is frozen; the
        # student's now, for r_0 (Eq. 1).
        ppl_teacher = measure(teacher, teacher_tokenizer)
        ratios = _ratios(config, lambda: measure(student, tokenizer), ppl_teacher)
        # r_0 (Eq. 1) starts the factor's history; Algorithm 1 draws the first interval's data
        # at random, i.e. in the corpus's natural proportions. Sampling by r_0 at once would put
        # nearly all of it on one domain whenever one ratio stands far above the rest.
        factor = mixture.initial(ratios)
        weights = _natural(train) if mixture.kind == "ddk" else factor
        history.append({"step": 0, **_flat(weights, ratios)})
    sampler.set_weights(weights)
    setup_seconds = time.perf_counter() - started_setup
    _log_update(accelerator, 0 if resumed is None else None, weights, ratios)

    # The loop.
    student.train()
    head_s = unwrapped.get_output_embeddings()
    head_t = teacher.get_output_embeddings()
    use_kd = kd_weight > 0
    # Every mode but plain KD on one vocabulary goes through distiller/cross.py.
    step_loss = None if config.kd == "kd" and same_vocab else cross.Step(
        config.kd, kd_weight, student, unwrapped, teacher, projectors, paired=not same_vocab, student_width=block + 1,
        teacher_pad_id=teacher_tokenizer.eos_token_id,
        options={"kind": config.divergence, "temperature": config.temperature, "chunk_size": config.chunk_size})
    trained = list(student.parameters()) + (list(projectors.parameters()) if projectors is not None else [])
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="distill",
               disable=not (config.progress and accelerator.is_main_process), dynamic_ncols=True)
    tokens, loop_started, smooth = 0, time.perf_counter(), None
    for step in bar:
        rows, _ = sampler.next_batch(config.batch_size, rank=rank, world_size=world)
        rows = rows.to(accelerator.device)
        inputs = rows[:, :block]  # the student's inputs (a row may carry the teacher's tokens after them)
        if step_loss is not None:  # dskd, dskd-cma, uld, or CPT across tokenizers
            with accelerator.autocast():
                loss, ce, kd = step_loss(rows)
        else:
            labels = rows[:, 1:]
            teacher_hidden = None
            if use_kd:
                with torch.inference_mode():
                    teacher_hidden = _last_hidden(teacher, inputs)
                teacher_hidden = teacher_hidden.clone()  # out of inference mode: autograd may save it
            with accelerator.autocast():
                hidden = _last_hidden(student, inputs)
                loss, ce, kd = distillation_loss(
                    hidden, head_s, teacher_hidden, head_t, labels, kd_weight=kd_weight,
                    kind=config.divergence, temperature=config.temperature, chunk_size=config.chunk_size)
        if not torch.isfinite(loss):
            raise DistillError(f"the loss became {loss.item()} at step {step}; the last good checkpoint in "
                               f"{output / 'checkpoints'} is kept (lower --lr, or check the data)")
        accelerator.backward(loss)
        cross.sync_gradients(accelerator, projectors)
        accelerator.clip_grad_norm_(trained, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        tokens += inputs.numel() * world
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()

        if done % config.interval == 0 and done < config.steps:  # Eq. 2 every K steps
            started_ddk = time.perf_counter()
            ppl_student = measure(student, tokenizer)
            ratios = {d: ppl_student[d] / ppl_teacher[d] for d in domains}
            factor = mixture.update(factor, ratios)  # Eq. 2 (or the baseline's rule)
            weights = factor
            sampler.set_weights(weights)
            history.append({"step": done, **_flat(weights, ratios)})
            _check_ranks_agree(accelerator, weights, done)
            ddk_seconds += time.perf_counter() - started_ddk
            _log_update(accelerator, done, weights, ratios)
        if done % config.log_every == 0 or done == config.steps:
            rate = tokens / (time.perf_counter() - loop_started)
            bar.set_postfix(loss=f"{smooth:.3f}", tok_s=f"{rate:,.0f}",
                            w=" ".join(f"{d[:4]}:{w:.2f}" for d, w in weights.items()))
            _log_metrics(accelerator, done, {"loss": loss.item(), "ce": ce.item(), "kd": kd.item(),
                                             "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate})
        if done % config.save_every == 0 or done == config.steps:
            _check_finite(unwrapped, done)  # never save weights a step has already broken
            state = {"sampler": sampler.state_dict(), "weights": weights, "factor": factor, "ratios": ratios,
                     "history": history,
                     "ppl_teacher": ppl_teacher, "config": asdict(config)}
            training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state()}
            if accelerator.is_main_process:
                ckpt.save_checkpoint(output / "checkpoints", done, unwrapped, tokenizer, training, state,
                                     keep=config.keep_checkpoints, projectors=projectors)
            accelerator.wait_for_everyone()
    bar.close()
    seconds = time.perf_counter() - loop_started

    # Each rank records the weights it sampled with (they agree: checked at every update).
    (output / f"ddk_history.rank{rank}.json").write_text(json.dumps(history, indent=1))

    # The final student: a standard transformers folder, written atomically.
    final = output / "student"
    if accelerator.is_main_process:
        write_atomic_folder(final, lambda tmp: (unwrapped.save_pretrained(tmp, safe_serialization=True),
                                                    tokenizer.save_pretrained(tmp)))
    accelerator.wait_for_everyone()
    return DistillResult(student_dir=final, steps=config.steps, weights=weights, ratios=ratios, history=history,
                         ratio_of="perplexity" if same_vocab else "bits per byte",
                         tokens_per_s=tokens / seconds if seconds > 0 else 0.0, ddk_seconds=ddk_seconds, setup_seconds=setup_seconds,
                         seconds=seconds)


def _ratios(config, measure_student, ppl_teacher) -> dict[str, float]:
    """The initial ℓ_S/ℓ_T per domain: from the harness's gaps if given, else measured."""
    if config.gaps_from:
        names = tuple(ppl_teacher)
        if Path(config.gaps_from).exists():  # a scorecard.json or the folder holding it
            return ratios_from_scorecard(config.gaps_from, domains=names)
        return ratios_from_mlflow(config.gaps_from, domains=names)  # else an MLflow run id
    ppl_student = measure_student()
    return {d: ppl_student[d] / ppl_teacher[d] for d in ppl_teacher}


def _check_ranks_agree(accelerator, weights: dict, step: int) -> None:
    """Every rank must sample with the same weights, or the ranks' batches drift apart."""
    if accelerator.num_processes == 1:
        return
    mine = torch.tensor([list(weights.values())], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine)
    if not torch.equal(every, mine.expand_as(every)):
        raise DistillError(f"the ranks disagree on the domain weights at step {step}: {every.tolist()}")


def _natural(train: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each domain's share of the training tokens."""
    total = sum(blocks.numel() for blocks in train.values())
    return {d: blocks.numel() / total for d, blocks in train.items()}


def _flat(weights: dict, ratios: dict) -> dict:
    return {**{f"weight/{d}": w for d, w in weights.items()}, **{f"ratio/{d}": r for d, r in ratios.items()}}


def _log_metrics(accelerator, step: int, metrics: dict) -> None:
    import mlflow

    if accelerator.is_main_process and mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=step)


def _log_update(accelerator, step: int | None, weights: dict, ratios: dict) -> None:
    """Domain weights and student/teacher perplexity ratios at each mixture update."""
    if step is not None:
        _log_metrics(accelerator, step, {f"ddk/{k}": v for k, v in _flat(weights, ratios).items()})

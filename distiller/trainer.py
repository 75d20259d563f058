"""The DDK distillation loop: read it top to bottom.

Loss = CE + γ·divergence(teacher ‖ student) (Eq. 3; γ = 0.2, T = 1, forward KL by default), with
the data mixture over domains set by DDK: every K steps the student's validation perplexity per
domain (the teacher's is measured once: it is frozen) gives the ratios ℓ_S/ℓ_T, Eq. 2 updates the
weights, and the sampler draws from them. The paper's baselines are settings of the same loop:
``mixture`` uniform / natural / fixed, ``kd_weight=0`` for CPT. The other teacher signals (dskd,
dskd-cma, uld) are the same loop with another loss per batch (distiller/step.py); with two
tokenizers each row carries both tokenizations of one text and DDK's ratios are in bits per byte.
With ``lmbda`` > 0 a share of the steps is on-policy (GKD): the student continues the sampled rows'
prompts and learns JSD_β from the teacher on its own tokens (distiller/onpolicy.py).

One code path on one CPU and under ``accelerate launch``: every rank holds the same sampler and
takes its slice of each global batch; per-domain losses are summed across ranks so every rank
computes the same weights. The student is replicated (DDP) or sharded (``sharding="fsdp"``: FSDP2,
distiller/sharding.py); a step may gather its batch over ``grad_accum`` micro-batches; the logged
loss is the global batch's, whatever the number of processes (docs/sharded.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from distiller import checkpoint as ckpt
from distiller import sharding
from distiller.config import DistillConfig, check_mode, same_vocabulary
from distiller.data import DomainSampler
from distiller.ddk import Mixture, MixtureState, ratios_from_perplexities
from distiller.errors import DistillError, InputError
from distiller.files import write_atomic_folder
from distiller.sources import domain_data
from distiller.store import TokenStore
from distiller.step import SignalStep, Step, make_projectors, shared_tokens, sync_gradients
from distiller.onpolicy import OnPolicyStep, Policy
from distiller.seqkd import open_generations
from distiller.teacher_signal import open_for_run


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
    teacher_signal: str | None = None  # the fingerprint of the stored signal trained from (no teacher loaded)


@dataclass
class Models:
    student: torch.nn.Module
    teacher: torch.nn.Module | None  # frozen, in eval mode; None when a stored teacher signal stands in for it
    tokenizer: object  # the student's
    teacher_tokenizer: object
    same_vocab: bool
    block: int  # tokens per row: the block size, capped by both models' context


def load_models(config: DistillConfig, device) -> Models:
    """The student to train and the frozen teacher. The teacher is loaded even for CPT (γ = 0): its
    perplexities define the ratios every baseline is measured by; only its forward on training
    batches is skipped then."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.student)
    teacher_tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    student = AutoModelForCausalLM.from_pretrained(config.student, use_safetensors=True)
    teacher = AutoModelForCausalLM.from_pretrained(config.teacher, use_safetensors=True)
    teacher.requires_grad_(False).eval().to(device)
    sizes = (teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0])
    same_vocab = sizes[0] == sizes[1] and same_vocabulary(teacher_tokenizer, tokenizer)
    check_mode(config.kd, config.kd_weight, same_vocab, sizes)
    block = min(config.block_size, student.config.max_position_embeddings, teacher.config.max_position_embeddings)
    return Models(student, teacher, tokenizer, teacher_tokenizer, same_vocab, block)


def load_student_only(config: DistillConfig) -> tuple[Models, int]:
    """``load_models`` for a run from a stored teacher signal: the teacher's tokenizer and config are
    read (its vocabulary, its context), its weights never are; returns (models, the teacher's context)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.student)
    teacher_tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    teacher_config = AutoConfig.from_pretrained(config.teacher)
    student = AutoModelForCausalLM.from_pretrained(config.student, use_safetensors=True)
    sizes = (teacher_config.vocab_size, student.get_output_embeddings().weight.shape[0])
    same_vocab = sizes[0] == sizes[1] and same_vocabulary(teacher_tokenizer, tokenizer)
    check_mode(config.kd, config.kd_weight, same_vocab, sizes)
    context = teacher_config.max_position_embeddings
    block = min(config.block_size, student.config.max_position_embeddings, context)
    return Models(student, None, tokenizer, teacher_tokenizer, same_vocab, block), context


def distill(config: DistillConfig, store, domains: list[str] | None = None, progress_stream=None) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` over the ``domains`` (default: all) of a
    token ``store`` (a ``TokenStore`` or its folder, prepared with the student's tokenizer); the
    final student goes to ``<output_dir>/student``. The progress bar draws on ``progress_stream``
    (default: stderr). Raises InputError for what the caller gave wrong, DistillError when the run
    breaks.

    Long on purpose: the whole run in one place, read top to bottom (set-up, the loop, the end)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=on_cpu(config.device), mixed_precision=config.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    sharded = config.sharding == "fsdp" and world > 1  # one process has nothing to shard across
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    store = store if isinstance(store, TokenStore) else TokenStore(Path(store))
    domains = list(domains or store.domains)
    signal = None  # a stored teacher signal stands in for the teacher (docs/teacher-signal.md)
    if config.teacher_signal:
        models, teacher_context = load_student_only(config)
        signal = open_for_run(config.teacher_signal, teacher_dir=config.teacher, store=store, block=models.block,
                              temperature=config.temperature, val_blocks=config.val_blocks, domains=domains)
    else:
        models = load_models(config, accelerator.device)
        teacher_context = models.teacher.config.max_position_embeddings
    data = domain_data(store, domains, models.tokenizer, models.teacher_tokenizer, same_vocab=models.same_vocab,
                       block=models.block, teacher_context=teacher_context,
                       val_blocks=config.val_blocks, accelerator=accelerator, chunk_size=config.chunk_size)
    # SeqKD: the rows are prompts and the teacher's stored continuations of them (distiller/seqkd.py).
    generations = None if config.seq_kd is None else open_generations(
        config.seq_kd, teacher_dir=config.teacher, store=store, domains=domains)
    mixture = replace(Mixture.parse(config.mixture, tuple(domains), natural_sizes=data.natural), alpha=config.alpha)
    # DSKD's projectors train beside the student and are checkpointed with it, never part of it.
    pairs = None if models.same_vocab else shared_tokens(models.tokenizer, models.teacher_tokenizer)
    projectors = make_projectors(config.kd, config.kd_weight, models.student, models.teacher, pairs)
    if projectors is not None:
        projectors.to(accelerator.device)
    # The scheduler is not prepared: Accelerate's steps once per process per step (it assumes the
    # steps were divided by the processes); here a step is one global batch whatever the processes.
    if sharded:
        student = sharding.shard(models.student, accelerator.device, world)
        optimizer, scheduler = _optimizer(config, student, projectors)  # over the shards
        optimizer = accelerator.prepare(optimizer)
    else:
        optimizer, scheduler = _optimizer(config, models.student, projectors)
        student, optimizer = accelerator.prepare(models.student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    sampler = DomainSampler(data.rows if generations is None else generations.rows, {d: 1.0 for d in domains},
                            seed=config.seed, collate=data.collate)
    row_tokens = models.block if generations is None else next(iter(generations.rows.values())).shape[1] - 1

    started_setup = time.perf_counter()
    resumed = ckpt.latest_good(output / "checkpoints") if config.resume else None
    if resumed is not None:
        start_step, ddk = _resume(*resumed, unwrapped, optimizer, scheduler, sampler, projectors, rank)
    else:
        start_step = 0
        teacher_loss = ({d: signal.teacher_perplexity[d] for d in domains} if signal is not None
                        else data.measure(models.teacher, models.teacher_tokenizer))
        with sharding.gathered(student):
            ratios = config.initial_ratios or ratios_from_perplexities(
                data.measure(student, models.tokenizer), teacher_loss)
        ddk = MixtureState.start(mixture, _covering(ratios, domains), teacher_loss, data.natural)
        _log_mixture(accelerator, 0, ddk)
    sampler.set_weights(ddk.weights)
    setup_seconds = time.perf_counter() - started_setup

    step_loss = Step(config.kd, config.kd_weight, student, unwrapped, models.teacher, projectors,
                     paired=not models.same_vocab, student_width=models.block + 1,
                     teacher_pad_id=models.teacher_tokenizer.eos_token_id,
                     options={"kind": config.divergence, "temperature": config.temperature,
                              "chunk_size": config.chunk_size},
                     prompt_tokens=0 if generations is None else generations.prompt_tokens,
                     eos_id=models.tokenizer.eos_token_id)
    if signal is not None:
        step_loss = SignalStep(config.kd_weight, student, unwrapped,
                               {"temperature": config.temperature, "chunk_size": config.chunk_size})
    # GKD: a share λ of the steps train on the student's own continuations (distiller/onpolicy.py).
    own_step = None if config.lmbda == 0 else OnPolicyStep(
        on_policy(config, models), student, unwrapped, models.teacher, models.tokenizer.eos_token_id,
        {"temperature": config.temperature, "chunk_size": config.chunk_size})
    trained = list(student.parameters()) + (list(projectors.parameters()) if projectors is not None else [])
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="distill",
               disable=not (config.progress and accelerator.is_main_process), dynamic_ncols=True, file=progress_stream)
    tokens, ddk_seconds, smooth, loop_started, curve = 0, 0.0, None, time.perf_counter(), {}
    student.train()
    for step in bar:
        rows, _ = sampler.next_batch(config.batch_size * config.grad_accum, rank=rank, world_size=world)
        target = signal.batch(sampler.last_picks) if signal is not None else None  # the rows' stored targets
        own = own_step is not None and own_step.policy.on_policy(step)  # the student continues the rows' prompts
        terms = torch.zeros(3, device=accelerator.device)  # loss, ce, kd of this rank's rows
        for i, micro in enumerate(rows.split(config.batch_size)):
            with sharding.no_sync(student, accelerator, sync=i == config.grad_accum - 1):
                with accelerator.autocast():
                    if own:
                        loss, ce, kd = own_step(micro.to(accelerator.device), seed=hash((config.seed, step, rank, i)))
                    elif target is None:
                        loss, ce, kd = step_loss(micro.to(accelerator.device))
                    else:
                        part = target.rows(i * config.batch_size, (i + 1) * config.batch_size)
                        loss, ce, kd = step_loss(micro.to(accelerator.device), part.to(accelerator.device))
                if not torch.isfinite(loss):
                    raise DistillError(f"the loss became {loss.item()} at step {step}; the last good checkpoint in "
                                       f"{output / 'checkpoints'} is kept (lower --lr, or check the data)")
                accelerator.backward(loss / config.grad_accum)  # the gradient of the step's mean loss
            terms += torch.stack([loss.detach(), ce.detach(), kd.detach()]).float() / config.grad_accum
        sync_gradients(accelerator, projectors)
        if sharded:
            sharding.clip_grad_norm(trained, config.grad_clip)
        else:
            accelerator.clip_grad_norm_(trained, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        tokens += (own_step.tokens(len(rows)) if own else len(rows) * row_tokens) * world
        # The global batch's loss (each rank's is of its own rows): what one process would log.
        loss, ce, kd = (accelerator.reduce(terms, reduction="mean") if world > 1 else terms).tolist()
        curve[done] = loss
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss

        if done % config.interval == 0 and done < config.steps:  # Eq. 2 every K steps
            started_ddk = time.perf_counter()
            with sharding.gathered(student):
                ddk.update(mixture, data.measure(student, models.tokenizer), done)
            sampler.set_weights(ddk.weights)
            _check_ranks_agree(accelerator, ddk.weights, done)
            ddk_seconds += time.perf_counter() - started_ddk
            _log_mixture(accelerator, done, ddk)
        if done % config.log_every == 0 or done == config.steps:
            rate = tokens / (time.perf_counter() - loop_started)
            bar.set_postfix(loss=f"{smooth:.3f}", tok_s=f"{rate:,.0f}",
                            w=" ".join(f"{d[:4]}:{w:.2f}" for d, w in ddk.weights.items()))
            _log_metrics(accelerator, done, {"loss": loss, "ce": ce, "kd": kd, "on_policy": float(own),
                                             "lr": scheduler.get_last_lr()[0], "tokens_per_s": rate})
        if done % config.save_every == 0 or done == config.steps:
            _save(accelerator, config, done, unwrapped, models.tokenizer, optimizer, scheduler, sampler, ddk,
                  projectors)
    bar.close()
    seconds = time.perf_counter() - loop_started

    # Each rank records the weights it sampled with (they agree: checked at every update).
    (output / f"ddk_history.rank{rank}.json").write_text(json.dumps(ddk.history, indent=1))
    final = output / "student"  # a standard transformers folder, written atomically
    whole = sharding.full_state_dict(unwrapped) if sharded else None  # every rank takes part
    if accelerator.is_main_process:
        # The global batch's loss at each step this run trained (a resumed run: from its checkpoint on).
        (output / "loss_curve.json").write_text(json.dumps({str(k): v for k, v in curve.items()}, indent=1))
        write_atomic_folder(final, lambda tmp: (unwrapped.save_pretrained(tmp, safe_serialization=True,
                                                                          state_dict=whole),
                                                models.tokenizer.save_pretrained(tmp)))
    accelerator.wait_for_everyone()
    return DistillResult(student_dir=final, steps=config.steps, weights=ddk.weights, ratios=ddk.ratios,
                         history=ddk.history, ratio_of=data.ratio_of, tokens_per_s=tokens / seconds if seconds else 0.0,
                         ddk_seconds=ddk_seconds, setup_seconds=setup_seconds, seconds=seconds,
                         teacher_signal=signal.fingerprint if signal is not None else None)


def on_policy(config: DistillConfig, models: Models) -> Policy:
    """The run's GKD settings; a prompt and its continuation must fit both models' context."""
    context = min(models.student.config.max_position_embeddings, models.teacher.config.max_position_embeddings)
    if config.prompt_tokens + config.new_tokens > context:
        raise InputError(f"--prompt-tokens {config.prompt_tokens} + --new-tokens {config.new_tokens} exceed the "
                         f"models' context of {context} tokens")
    return Policy(config.lmbda, config.beta, config.prompt_tokens, config.new_tokens, config.sampling_temperature,
                  config.seed)


def _optimizer(config: DistillConfig, student, projectors):
    """AdamW without weight decay on biases and norms; DSKD's projectors with their own rate.
    Linear warm-up, then cosine decay to min_lr."""
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if projectors is not None:
        groups.append({"params": list(projectors.parameters()), "lr": config.projector_lr,
                       "weight_decay": config.weight_decay})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        floor = config.min_lr / config.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _covering(ratios: dict[str, float], domains) -> dict[str, float]:
    """The initial ratios of exactly the run's domains (a scorecard may cover more)."""
    missing = [d for d in domains if d not in ratios]
    if missing:
        raise InputError(f"the initial ratios have no value for domain(s) {', '.join(missing)} "
                         f"(they cover {', '.join(sorted(ratios))})")
    return {d: ratios[d] for d in domains}


def on_cpu(device: str) -> bool:
    """Whether ``--device`` (auto | cpu | cuda; config.py refuses cuda where there is none) runs on the CPU."""
    return device == "cpu" or not torch.cuda.is_available()


def _resume(path: Path, state: dict, unwrapped, optimizer, scheduler, sampler, projectors, rank: int):
    """Load the checkpoint at ``path`` into the run: (the step it ends, its mixture state). The
    checkpoint is whole (single-process format) whether the run that wrote it was sharded or not."""
    from transformers import AutoModelForCausalLM

    sharding.load_full_state_dict(unwrapped, AutoModelForCausalLM.from_pretrained(path / "student").state_dict())
    training = ckpt.load_training(path)
    if projectors is not None:
        projectors.load_state_dict(ckpt.load_projectors(path))
    if sharding.is_sharded(unwrapped):
        sharding.load_optimizer_state(optimizer, training["optimizer"])
    else:
        optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    ranks = training.get("rng_per_rank") or []  # each rank's own generator, when saved by as many ranks
    torch.set_rng_state(ranks[rank] if rank < len(ranks) else training["rng"])
    sampler.load_state_dict(state["sampler"])
    ddk = MixtureState(weights=state["weights"], factor=state["factor"], ratios=state["ratios"],
                       teacher=state["ppl_teacher"], history=state["history"])
    return state["step"], ddk


def _save(accelerator, config, step, student, tokenizer, optimizer, scheduler, sampler, ddk, projectors) -> None:
    """A checkpoint of everything a resumed run needs, never of weights a step has already broken.
    A sharded student and its optimiser state are gathered whole first (every rank takes part)."""
    from accelerate.utils import gather_object

    sharded = sharding.is_sharded(student)
    whole = sharding.full_state_dict(student) if sharded else None
    weights = whole.items() if sharded else student.named_parameters()
    broken = [name for name, p in weights if not torch.isfinite(p).all()]
    if broken:  # a finite loss can still be followed by an update that overflows the weights
        raise DistillError(f"the weights became non-finite after step {step} ({', '.join(broken[:3])}…); the last "
                           "good checkpoint is kept: lower --lr or resume from it")
    state = {"sampler": sampler.state_dict(), "weights": ddk.weights, "factor": ddk.factor, "ratios": ddk.ratios,
             "history": ddk.history, "ppl_teacher": ddk.teacher, "config": asdict(config)}
    training = {"optimizer": sharding.full_optimizer_state(optimizer) if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
    if accelerator.num_processes > 1:
        training["rng_per_rank"] = gather_object([torch.get_rng_state()])
    if accelerator.is_main_process:
        ckpt.save_checkpoint(Path(config.output_dir) / "checkpoints", step, student, tokenizer, training, state,
                             keep=config.keep_checkpoints, projectors=projectors, student_state=whole)
    accelerator.wait_for_everyone()


def _check_ranks_agree(accelerator, weights: dict, step: int) -> None:
    """Every rank must sample with the same weights, or the ranks' batches drift apart."""
    if accelerator.num_processes == 1:
        return
    mine = torch.tensor([list(weights.values())], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine)
    if not torch.equal(every, mine.expand_as(every)):
        raise DistillError(f"the ranks disagree on the domain weights at step {step}: {every.tolist()}")


def _log_mixture(accelerator, step: int, ddk: MixtureState) -> None:
    """The domain weights and the student/teacher ratios at a mixture update."""
    _log_metrics(accelerator, step, {f"ddk/{k}": v for k, v in ddk.flat().items()})


def _log_metrics(accelerator, step: int, metrics: dict) -> None:
    """Into the caller's MLflow run, when it opened one (kdh does; the distiller opens none)."""
    import mlflow

    if accelerator.is_main_process and mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=step)

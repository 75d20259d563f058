"""`kdh distill`: DDK distillation of a teacher into a student over a suite's domains, with any of the
teacher signals (--kd), on-policy steps (--lmbda) or the teacher's stored continuations (--seq-kd);
one process or several under `accelerate launch` (the rest of the verbs: harness/cli.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness import console, home
from harness.errors import BadInput, distill_errors
from harness.inputs import (add_verb, generation_settings, model_or_demo, on_policy_arguments, on_policy_options,
                            open_suite, output_folder)


def cmd_distill(args) -> int:
    import torch
    from accelerate import PartialState

    from distiller import trainer
    from distiller.config import ACROSS_TOKENIZERS, DistillConfig, check_pair
    from harness import corpora, gaps, model_uris, steps, tracking

    # Under a multi-process launch, one process tracks. Accelerate enters its multi-CPU mode only
    # when told it runs on the CPU, so say so where there is no GPU.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    suite = open_suite(args.suite)
    if bool(args.teacher) != bool(args.student):
        raise BadInput("give both --teacher and --student, or neither for the demo pair")
    if any(str(a).startswith("models:/") for a in (args.teacher, args.student)):
        tracking.connect(args.tracking_uri)  # the registry that names them
    # The cross-vocabulary modes default to the demo student that has its own tokenizer.
    demo_student = "cross_student" if args.kd in ACROSS_TOKENIZERS else "student"
    teacher = model_uris.resolve(model_or_demo(args.teacher, "teacher", progress=state.is_main_process))
    student = model_uris.resolve(model_or_demo(args.student, demo_student, progress=state.is_main_process))
    for role, path in (("teacher", teacher), ("student", student)):
        if not (Path(path) / "config.json").is_file():
            raise BadInput(f"--{role} {path}: not a transformers model folder (no config.json)")
    mode = args.mixture.split(':')[0] if args.kd == "kd" else f"{args.kd}-{args.mixture.split(':')[0]}"
    out = output_folder(args.out, "distill", suite.name, mode)
    domains = [d.name for d in suite.domains]
    with distill_errors():  # InputError: bad input (2); DistillError: a failure while running (3)
        ratios = gaps.initial_ratios(args.gaps_from, domains) if args.gaps_from else None
        config = DistillConfig(
            teacher=teacher, student=student, output_dir=str(out), steps=args.steps, batch_size=args.batch_size,
            block_size=args.block_size, lr=args.lr, kd=args.kd, kd_weight=args.kd_weight,
            projector_lr=args.projector_lr, temperature=args.temperature, divergence=args.divergence,
            mixture=args.mixture, interval=args.interval, initial_ratios=ratios, save_every=args.save_every,
            resume=args.resume, seed=args.seed, mixed_precision=args.mixed_precision,
            grad_accum=args.grad_accum, sharding=args.sharding, device=args.device,
            teacher_signal=args.teacher_signal, **on_policy_options(args))
        check_pair(teacher, student, args.kd, config.kd_weight)  # e.g. two tokenizers under --kd kd, before a run
        # One process tokenizes the corpus (or finds it tokenized); the others then find it.
        store = Path(args.store) if args.store else None
        if store is None and state.is_main_process:
            store = corpora.store_for(suite, student).root
        if config.seq_kd == "auto" and state.is_main_process:  # the teacher's continuations, found or made once
            tracking.connect(args.tracking_uri)
            made = steps.teacher_generations(suite, teacher, store, generation_settings(args))
            config = replace(config, seq_kd=str(made.root))
        state.wait_for_everyone()
        if not state.is_main_process:
            store = store or corpora.store_for(suite, student).root
            if config.seq_kd == "auto":  # the main process made them: found, the teacher does not run
                from distiller.seqkd import compute_generations

                config = replace(config, seq_kd=str(compute_generations(
                    teacher, store, home.kdh_home() / "generations", generation_settings(args), domains).root))
            trainer.distill(config, store, domains)
            return 0
    uri = tracking.connect(args.tracking_uri)
    outcome = steps.distill(suite, config, f"distill {mode} w={config.kd_weight}", store=store)
    console.say(distill_report(outcome.result, domains))
    console.say(f"Student: {outcome.result.student_dir}")
    console.say(f"MLflow: experiment kdh/{suite.name}, run {outcome.run_id} ({tracking.redact(uri)})")
    return 0


def distill_report(result, domains: list[str]) -> str:
    """The mixture at the start and the end, per domain, and what the run cost."""
    import pandas as pd

    from harness.report import table

    first, last = result.history[0], result.history[-1]
    ratio = "ppl ratio" if result.ratio_of == "perplexity" else "bpb ratio"  # bits per byte across tokenizers
    summary = pd.DataFrame([{"domain": d, "weight at start": first[f"weight/{d}"], "weight at end": last[f"weight/{d}"],
                             f"{ratio} at start": first[f"ratio/{d}"], f"{ratio} at last update": last[f"ratio/{d}"]}
                            for d in domains])
    share = 100 * result.ddk_seconds / max(result.seconds, 1e-9)
    return (table(summary) + f"\n\n{result.steps} steps · {result.tokens_per_s:,.0f} tokens/s · DDK's perplexities and "
            f"updates {share:.1f}% of the loop (+{result.setup_seconds:.1f} s once for the teacher's perplexities)")


def add_verbs(verbs) -> None:
    from distiller.config import (
        DEFAULT_KD_WEIGHT,
        DEVICES,
        KD_MODES,
        PRECISIONS,
        SHARDINGS,
        DistillConfig,
    )

    di = add_verb(verbs, "distill", cmd_distill, "distil the teacher into the student with DDK domain sampling",
                  suite="suite whose domains' train/validation files are used (default: suites/default.yaml)",
                  out="output folder (default: $KDH_HOME/distill/…)")
    di.add_argument("--teacher", help="teacher model folder (default: the demo teacher)")
    di.add_argument("--student", help="student model folder to start from (default: the demo student)")
    di.add_argument("--steps", type=int, default=DistillConfig.steps)
    di.add_argument("--batch-size", type=int, default=DistillConfig.batch_size)
    di.add_argument("--block-size", type=int, default=DistillConfig.block_size)
    di.add_argument("--lr", type=float, default=DistillConfig.lr)
    di.add_argument("--kd", default=DistillConfig.kd, choices=KD_MODES,
                    help="the teacher signal: kd (CE + γ·divergence, one vocabulary), dskd (dual-space KD, one "
                         "vocabulary), dskd-cma (dual-space KD with cross-model attention: any two tokenizers), uld "
                         "(universal logit distillation: any two tokenizers); dskd-cma and uld default to the demo "
                         "student with its own tokenizer")
    di.add_argument("--kd-weight", type=float,
                    help=f"kd: γ in CE + γ·KD (default {DEFAULT_KD_WEIGHT['kd']}); dskd, dskd-cma, uld: w in "
                         f"(1−w)·CE + w·KD (default {DEFAULT_KD_WEIGHT['uld']}); 0 is continued pre-training (CPT)")
    di.add_argument("--projector-lr", type=float, default=DistillConfig.projector_lr,
                    help="learning rate of DSKD's projectors")
    di.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    di.add_argument("--divergence", default=DistillConfig.divergence,
                    help="forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl | tv")
    di.add_argument("--mixture", default=DistillConfig.mixture, help="ddk | ddk-no-smoothing | uniform | natural | fixed:code=0.4,…")
    di.add_argument("--interval", type=int, default=DistillConfig.interval, help="K: steps between mixture updates")
    di.add_argument("--gaps-from", help="the initial mixture from a scorecard's gaps: a scorecard.json or an "
                                        "MLflow eval run id (default: measured at the start)")
    di.add_argument("--save-every", type=int, default=DistillConfig.save_every)
    di.add_argument("--store", help="a token store from `kdh prepare` (default: the suite's corpora, prepared on first use)")
    di.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in --out")
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--mixed-precision", default=DistillConfig.mixed_precision, choices=PRECISIONS,
                    help="bf16: autocast on CPU and GPU, the weights and optimiser stay float32")
    di.add_argument("--grad-accum", type=int, default=DistillConfig.grad_accum,
                    help="micro-batches of --batch-size rows per step and process (docs/sharded.md)")
    di.add_argument("--sharding", default=DistillConfig.sharding, choices=SHARDINGS,
                    help="under accelerate launch: ddp (each process a whole student) or fsdp (FSDP2 shards)")
    di.add_argument("--device", default=DistillConfig.device, choices=DEVICES)
    di.add_argument("--teacher-signal", metavar="PATH", help="train from a stored teacher signal (kdh teacher-signal)")
    on_policy_arguments(di)
    di.add_argument("--tracking-uri")

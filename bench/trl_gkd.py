"""TRL's GKD trainer as a distillation-step variant for bench/distill_step.py (needs `pip install -e .[bench]`).

Configured as supervised distillation, the way the issue asks: ``lmbda=0`` (no student generations),
``seq_kd=False`` (no teacher generations), ``beta=0`` (generalized JSD at β = 0 is forward KL(p‖q)),
temperature 1. Same models, packed blocks, batch 8 × 256, steps, AdamW (lr 2e-3, betas 0.9/0.95,
weight decay 0.1, warm-up + cosine, clip 1.0) as the other variants. GKD's loss is the divergence alone
(no CE term), over materialised [B, T, V] logits of both models.

``bf16=False`` (fp32, like the other variants) unless the spec asks for TRL's own default, bf16
autocast, which `trl-gkd-bf16` measures. Steps are timed between consecutive ``on_step_end`` callbacks, so data loading, the Trainer's own
bookkeeping and logging are inside a step, as they are for kdh.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def child_trl(spec: dict, *, batch: int, block: int, domains: tuple[str, ...], world, rss, peak, model_info,
              reset_peak, peak_since_reset) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distiller.data import pack_blocks, read_texts

    steps, warmup = spec["steps"], spec["warmup"]
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student = AutoModelForCausalLM.from_pretrained(spec["student"], use_safetensors=True)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], use_safetensors=True)
    rss_after_models = rss()
    reset_peak()  # the peak from here leaves out loading (transformers holds the weights twice meanwhile)
    blocks = torch.cat([pack_blocks(read_texts(world.domain_file(d, "train.jsonl")), tokenizer, block,
                                    tokenizer.eos_token_id, domain=d) for d in domains])
    generator = torch.Generator().manual_seed(0)
    rows = blocks[torch.randint(len(blocks), (steps * batch,), generator=generator)][:, :block]
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})

    def collate(examples):
        ids = torch.tensor([e["input_ids"] for e in examples])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    output = Path(tempfile.mkdtemp(prefix="kdh-trl-gkd-"))
    try:
        config = GKDConfig(
            output_dir=str(output), per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-3,
            lr_scheduler_type="cosine", warmup_steps=20, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
            max_grad_norm=1.0, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False, logging_steps=10,
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
            seed=0, max_length=None, gradient_checkpointing=False,
            bf16=spec.get("bf16", False))  # TRL defaults to bf16 autocast, on a CPU too; the others run fp32
        gkd = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                         data_collator=collate, processing_class=tokenizer, callbacks=[StepClock()])
        gkd.train()
        end_peak = peak()
    finally:
        shutil.rmtree(output, ignore_errors=True)

    durations = [b - a for a, b in zip(ends, ends[1:])]
    window = durations[warmup:steps]
    window_seconds = sum(window)
    return {
        "variant": spec["kind"], "vocab": spec["vocab"], "steps": steps, "warmup": warmup,
        "threads": torch.get_num_threads(), "models": {"student": model_info(student), "teacher": model_info(teacher)},
        "tokens_per_s": len(window) * batch * block / window_seconds, "window_seconds": window_seconds,
        "step_seconds": window_seconds / len(window), "breakdown": {"Trainer step (all of it)": window_seconds},
        "step_durations": durations, "rss_after_models": rss_after_models, "peak_loop": end_peak,
        "peak_end": end_peak, "peak_after_load": peak_since_reset(), "trl": __import__("trl").__version__,
    }

"""kdh's on-policy distillation step (GKD, λ = 0.5) against TRL's GKDTrainer on the same models.

    python bench/onpolicy.py                     # vocabularies 1024 and 50,000; writes docs/bench/onpolicy.json
    python bench/onpolicy.py --vocab 1024 --steps 12

The models are bench/distill_step.py's: the demo teacher's and student's shapes (Llama, tied heads), the
demo's own at 1024 entries, random-initialised ones at 50,000. Both sides train batch 8 on rows of 128
tokens: an on-policy step takes the first 64 tokens of each row as the prompt and samples 64 more from
the student (KV-cached, top-k off, temperature 1), the teacher scores them, the loss is JSD_β (β = 0.5)
on the generated tokens; an off-policy step trains on the row itself (kdh: its supervised CE + γ·KL with
the fused chunked head; TRL: JSD_β on the row's last 64 tokens over materialised logits). Each side
decides per step with its own λ draw, so each step is timed and classed: the table gives the mean
seconds of an on-policy and of an off-policy step and the tokens/s of a λ = 0.5 mixture of the two,
batch × 128 / (½ t_on + ½ t_off). Peak memory: the process's VmHWM from after both models loaded. Each
side runs in a fresh subprocess; the first ``warmup`` steps are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, PROMPT, NEW, LMBDA, BETA = 8, 64, 64, 0.5, 0.5


def _summary(durations: list[float], on: list[bool], warmup: int) -> dict:
    timed = list(zip(durations, on))[warmup:]
    on_s = [d for d, o in timed if o]
    off_s = [d for d, o in timed if not o]
    t_on = sum(on_s) / len(on_s) if on_s else float("nan")
    t_off = sum(off_s) / len(off_s) if off_s else float("nan")
    return {"on_policy_steps": len(on_s), "off_policy_steps": len(off_s), "on_step_seconds": t_on,
            "off_step_seconds": t_off,
            "tokens_per_s": BATCH * (PROMPT + NEW) / (LMBDA * t_on + (1 - LMBDA) * t_off)}


def child_kdh(spec: dict) -> dict:
    import distiller.trainer as trainer
    from bench import distill_step as ds
    from distiller.config import DistillConfig
    from distiller.data import DomainSampler
    from distiller.onpolicy import Policy
    from transformers import AutoModelForCausalLM

    world = ds._world()
    store = ds.world_store(world, spec["student"])
    loaded, starts = [], []
    original = AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append(ds._rss())
        if len(loaded) == 2:
            ds._reset_peak()
        return model

    AutoModelForCausalLM.from_pretrained = staticmethod(from_pretrained)
    next_batch = DomainSampler.next_batch

    def timed_next_batch(self, *args, **kwargs):
        starts.append(time.perf_counter())
        return next_batch(self, *args, **kwargs)

    DomainSampler.next_batch = timed_next_batch
    out = Path(tempfile.mkdtemp(prefix="kdh-onpolicy-"))
    try:
        config = DistillConfig(teacher=spec["teacher"], student=spec["student"], output_dir=str(out),
                               steps=spec["steps"], batch_size=BATCH, block_size=PROMPT + NEW - 1,
                               interval=10 ** 6, val_blocks=4, save_every=10 ** 6, lmbda=LMBDA, beta=BETA,
                               prompt_tokens=PROMPT, new_tokens=NEW, progress=False, seed=0)
        trainer.distill(config, store)
        ended = time.perf_counter()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    durations = [b - a for a, b in zip(starts, starts[1:] + [ended])]
    on = [Policy(lmbda=LMBDA, seed=0).on_policy(s) for s in range(spec["steps"])]
    return {"side": "kdh", **_summary(durations, on, spec["warmup"]), "peak_after_load": ds._peak_since_reset(),
            "rss_after_models": loaded[-1]}


def child_trl(spec: dict) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from bench import distill_step as ds
    from distiller.store import Blocks, TokenStore

    world = ds._world()
    store = TokenStore(Path(ds.world_store(world, spec["student"])))
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student = AutoModelForCausalLM.from_pretrained(spec["student"], use_safetensors=True)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], use_safetensors=True)
    rss_after_models = ds._rss()
    ds._reset_peak()
    blocks = Blocks(store.stream("code", "train"), PROMPT + NEW)
    rows = torch.stack([blocks[i % len(blocks)] for i in range(spec["steps"] * BATCH)])
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})

    def collate(examples):
        ids = torch.tensor([e["input_ids"] for e in examples])
        labels = ids.clone()
        labels[:, :PROMPT] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "prompts": ids[:, :PROMPT], "prompt_attention_mask": torch.ones_like(ids[:, :PROMPT])}

    ends, on = [], []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    generate = GKDTrainer.generate_on_policy_outputs

    def counted(model, inputs, generation_config):
        on.append(len(ends) - 1)  # the step this generation belongs to
        return generate(model, inputs, generation_config)

    GKDTrainer.generate_on_policy_outputs = staticmethod(counted)
    output = Path(tempfile.mkdtemp(prefix="kdh-trl-onpolicy-"))
    try:
        config = GKDConfig(
            output_dir=str(output), per_device_train_batch_size=BATCH, max_steps=spec["steps"], learning_rate=2e-3,
            lr_scheduler_type="cosine", warmup_steps=4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
            max_grad_norm=1.0, lmbda=LMBDA, beta=BETA, temperature=1.0, max_new_tokens=NEW, seq_kd=False,
            logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, seed=0, max_length=None, gradient_checkpointing=False, bf16=False)
        GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset, data_collator=collate,
                   processing_class=tokenizer, callbacks=[StepClock()]).train()
    finally:
        shutil.rmtree(output, ignore_errors=True)
    durations = [b - a for a, b in zip(ends, ends[1:])]
    flags = [i in set(on) for i in range(len(durations))]
    return {"side": "trl", **_summary(durations, flags, spec["warmup"]), "peak_after_load": ds._peak_since_reset(),
            "rss_after_models": rss_after_models, "trl": __import__("trl").__version__}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False, cwd=ROOT)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child {spec['side']} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 50_000])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "onpolicy.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = (child_kdh if spec["side"] == "kdh" else child_trl)(spec)
        print(json.dumps(result))
        return

    from bench import distill_step as ds

    results = []
    for vocab in args.vocab:
        models = ds._specs(vocab, args.steps, args.warmup)
        for side in ("kdh", "trl"):
            spec = {"side": side, "vocab": vocab, "teacher": models["teacher"], "student": models["student"],
                    "steps": args.steps, "warmup": args.warmup}
            result = {"vocab": vocab, **run_child(spec)}
            results.append(result)
            print(f"V={vocab:>6} {side:>3}: {result['tokens_per_s']:8.0f} tokens/s at λ=0.5 · on-policy step "
                  f"{result['on_step_seconds']:.3f} s, off-policy {result['off_step_seconds']:.3f} s · peak after "
                  f"loading {result['peak_after_load'] / 2**30:.2f} GiB", flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"batch": BATCH, "prompt_tokens": PROMPT, "new_tokens": NEW, "lmbda": LMBDA,
                                          "beta": BETA, "steps": args.steps, "warmup": args.warmup,
                                          "load_average_at_end": float(load), "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The stored teacher signal: bytes per position, quantisation error, step time and student quality.

    python bench/teacher_signal.py                 # everything; writes docs/bench/teacher-signal.json
    python bench/teacher_signal.py --only bytes step --step-reps 5

- bytes: what the format stores a position (signal_store.py), at GPT-2's and Qwen2's vocabularies, for
  top-k (k = 32, 64) and the sampled target (N = 12, 16); and the bytes a real signal of the tiny demo
  world takes on disk per position.
- error: the 4-bit log-probability codes against the exact top-64 of the tiny demo teacher: error in
  nats (weighted by probability, 95th percentile, the top entry) and KL(exact top-k target ‖ stored).
- step: one distillation step (forward, loss, backward; no optimiser) from the live teacher
  (distiller.step.Step: teacher forward + fused dense loss) and from a stored top-64 signal
  (SignalStep: reading and decoding the rows' targets + the sparse fused loss), alternating on the same
  batches in one process: GPT-2-family models around the GPT-2 tokenizer fixture, teacher ≈ 4× the
  student's parameters (and larger ones with ``--teacher-shapes 4x384 6x512 8x640``), batch 8 × 128.
- quality: the tiny demo world's student distilled for ``--steps`` steps (DDK, γ = 0.2) from the live
  teacher and from stored signals (top-32, top-64, sampled N = 12 and N = 32 — the bytes of top-32 at
  this vocabulary), 3 seeds; bits per byte per domain on its test_ppl texts and the next-token ECE
  (15 bins, top-1 confidence vs accuracy) on the same texts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
DOMAINS = ("code", "prose", "arithmetic", "records")


def bytes_per_position() -> dict:
    from distiller.signal_store import id_bytes

    rows = {}
    for name, vocab in (("gpt2", 50_257), ("qwen2", 151_646), ("tiny demo", 384)):
        for mode, m in (("top-k", 32), ("top-k", 64), ("sampled", 12), ("sampled", 16)):
            rows[f"{name} {mode} {m}"] = m * id_bytes(vocab) + (m + 1) // 2
    return rows


def _world_and_store():
    from transformers import AutoTokenizer

    from distiller.prepare import prepare
    from harness import home
    from harness.demo import ensure_world

    world = ensure_world(home.kdh_home(), size="tiny", progress=False)
    corpora = {d: {"train": [world.domain_file(d, "train.jsonl")],
                   "validation": [world.domain_file(d, "validation.jsonl")]} for d in DOMAINS}
    store = prepare(corpora, AutoTokenizer.from_pretrained(world.tokenizer_dir), root=home.kdh_home() / "stores").root
    return world, store


def _signal(world, store, k: int, mode: str, root: Path):
    from distiller.teacher_signal import SignalSettings, compute_signal

    return compute_signal(world.teacher_dir, store, root=root, settings=SignalSettings(k=k, mode=mode),
                          student_dir=world.student_dir)


def quantisation_error(world, store, root: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from distiller.signal_store import TeacherSignal, decode_log_probs, encode_log_probs
    from distiller.store import Blocks, TokenStore
    from distiller.teacher_signal import SignalSettings, block_entries

    made = _signal(world, store, 64, "top-k", root)
    signal = TeacherSignal(made.root)
    teacher = AutoModelForCausalLM.from_pretrained(world.teacher_dir).eval()
    blocks = Blocks(TokenStore(store).stream("prose", "train"), signal.block + 1)
    rows = torch.stack([blocks[i] for i in range(16)])
    _, lp = block_entries(teacher, rows, SignalSettings(k=64), None)
    lp = lp.reshape(-1, 64)
    decoded = decode_log_probs(encode_log_probs(lp), 64)
    err, p = np.abs(decoded - lp), np.exp(lp)
    q = np.exp(decoded)
    tail_p, tail_q = np.clip(1 - p.sum(-1), 1e-12, None), np.clip(1 - q.sum(-1), 1e-12, None)
    q = q / np.maximum(q.sum(-1, keepdims=True), 1.0)
    kl = (p * (lp - np.log(q))).sum(-1) + tail_p * (np.log(tail_p) - np.log(tail_q))
    disk = sum(f.stat().st_size for f in made.root.rglob("*") if f.suffix in (".ids", ".lp"))
    positions = sum(d["blocks"] for d in signal.manifest["domains"].values()) * signal.block
    return {"weighted_error_nats": float((p * err).sum() / p.sum()), "p95_error_nats": float(np.quantile(err, 0.95)),
            "top1_mean_error_nats": float(err[:, 0].mean()), "top1_max_error_nats": float(err[:, 0].max()),
            "kl_exact_to_stored_mean": float(kl.mean()), "kl_exact_to_stored_p99": float(np.quantile(kl, 0.99)),
            "tiny_world_disk_bytes_per_position_k64": disk / positions, "positions": positions,
            "teacher_signal_seconds": made.seconds}


def step_times(reps: int, tmp: Path, teacher_layers: int = 4, teacher_hidden: int = 384) -> dict:
    """Live teacher vs stored signal, one step each, alternating on the same batches; the student is
    2 × 128, the teacher ``teacher_layers`` × ``teacher_hidden`` (4 × 384: 3.86× its parameters)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.data import DomainSampler
    from distiller.prepare import prepare
    from distiller.signal_store import TeacherSignal
    from distiller.sources import _blocks
    from distiller.step import SignalStep, Step
    from distiller.store import TokenStore
    from distiller.teacher_signal import SignalSettings, compute_signal
    from families import build_model
    from harness import home
    from harness.demo import ensure_world

    gpt2 = ROOT / "tests" / "fixtures" / "tokenizers" / "gpt2"
    tmp = tmp / f"teacher-{teacher_layers}x{teacher_hidden}"
    student_dir = build_model("gpt2", gpt2, tmp / "student", layers=2, hidden=128, context=128, seed=1)
    teacher_dir = build_model("gpt2", gpt2, tmp / "teacher", layers=teacher_layers, hidden=teacher_hidden,
                              heads=teacher_hidden // 64, context=128, seed=2)
    world = ensure_world(home.kdh_home(), size="tiny", progress=False)
    corpora = {d: {"train": [world.domain_file(d, "train.jsonl")], "validation": [world.domain_file(d, "validation.jsonl")]}
               for d in ("prose",)}
    store = TokenStore(prepare(corpora, AutoTokenizer.from_pretrained(gpt2), tmp / "store").root)
    made = compute_signal(teacher_dir, store.root, tmp / "signal", settings=SignalSettings(k=64, part_blocks=16),
                          student_dir=student_dir)
    signal = TeacherSignal(made.root)
    accelerator = Accelerator(cpu=True)
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).requires_grad_(False).eval()
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("student", student), ("teacher", teacher))}
    options = {"kind": "forward_kl", "temperature": 1.0, "chunk_size": 256}
    live = Step("kd", 0.2, student, student, teacher, None, paired=False, student_width=129, teacher_pad_id=None,
                options=options)
    stored = SignalStep(0.2, student, student, {"temperature": 1.0, "chunk_size": 256})
    sampler = DomainSampler({"prose": _blocks(store.stream("prose", "train"), 128, "prose")}, {"prose": 1.0}, seed=0)
    times = {"live": [], "stored": []}
    for rep in range(reps + 1):  # the first round warms up
        rows, _ = sampler.next_batch(8)
        for name in ("live", "stored") if rep % 2 == 0 else ("stored", "live"):
            started = time.perf_counter()
            if name == "live":
                loss = live(rows)[0]
            else:
                loss = stored(rows, signal.batch(sampler.last_picks))[0]
            loss.backward()
            student.zero_grad(set_to_none=True)
            if rep:
                times[name].append(time.perf_counter() - started)
    del accelerator
    live_s, stored_s = statistics.median(times["live"]), statistics.median(times["stored"])
    return {"teacher_shape": f"{teacher_layers} x {teacher_hidden}", "params": params,
            "teacher_to_student": params["teacher"] / params["student"], "batch": "8 x 128",
            "vocab": 50_257, "reps": reps, "live_step_s": live_s, "stored_step_s": stored_s,
            "speedup": live_s / stored_s, "times": times}


def _ece(model, texts: list[str], tokenizer, context: int, bins: int = 15) -> float:
    import torch

    conf, hit = [], []
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]][: context + 1]
            if len(ids) < 2:
                continue
            x = torch.tensor([ids])
            p = model(input_ids=x[:, :-1]).logits.softmax(-1)[0]
            top, arg = p.max(-1)
            conf.append(top)
            hit.append((arg == x[0, 1:]).float())
    conf, hit = torch.cat(conf), torch.cat(hit)
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean().item() * abs(conf[inside].mean().item() - hit[inside].mean().item())
    return ece


def quality(world, store, root: Path, steps: int, seeds: int) -> list[dict]:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.config import DistillConfig
    from distiller.data import read_texts
    from distiller.measure import domain_bits_per_byte, text_pieces
    from distiller.trainer import distill

    signals = {"top-32": _signal(world, store, 32, "top-k", root), "top-64": _signal(world, store, 64, "top-k", root),
               "sampled-12": _signal(world, store, 12, "sampled", root),
               "sampled-32": _signal(world, store, 32, "sampled", root)}
    tokenizer = AutoTokenizer.from_pretrained(world.student_dir)
    texts = {d: read_texts(world.domain_file(d, "test_ppl.jsonl")) for d in DOMAINS}
    pieces = {d: text_pieces(t, 512, 40) for d, t in texts.items()}
    accelerator = Accelerator(cpu=True)
    rows = []
    for variant in ("live", *signals):
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as out:
                config = DistillConfig(teacher=str(world.teacher_dir), student=str(world.student_dir), output_dir=out,
                                       steps=steps, interval=25, save_every=steps, seed=seed, progress=False,
                                       block_size=128, teacher_signal=None if variant == "live" else str(signals[variant].root))
                started = time.perf_counter()
                result = distill(config, store)
                model = AutoModelForCausalLM.from_pretrained(result.student_dir).eval()
                bpb = domain_bits_per_byte(model, tokenizer, pieces, 128, accelerator, 256)
                ece = _ece(model, [t for d in DOMAINS for t in texts[d][:10]], tokenizer, 128)
                rows.append({"variant": variant, "seed": seed, "seconds": time.perf_counter() - started,
                             "loop_seconds": result.seconds, "ece": ece, **{f"bpb/{d}": v for d, v in bpb.items()}})
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["bytes", "error", "step", "quality"])
    parser.add_argument("--step-reps", type=int, default=10)
    parser.add_argument("--teacher-shapes", nargs="*", default=["4x384"],
                        help="LAYERSxHIDDEN of each teacher the step is timed against (the first is the 4× one)")
    parser.add_argument("--steps", type=int, default=100, help="distillation steps per quality run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "teacher-signal.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("KDH_DEMO_SIZE", "tiny")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "bytes" in args.only:
            results["bytes_per_position"] = bytes_per_position()
        if {"error", "quality"} & set(args.only):
            world, store = _world_and_store()
        if "error" in args.only:
            results["quantisation"] = quantisation_error(world, store, tmp / "signals")
        if "step" in args.only:
            shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.teacher_shapes]
            results["step_by_teacher"] = [step_times(args.step_reps, tmp, *shape) for shape in shapes]
            results["step"] = results["step_by_teacher"][0]
        if "quality" in args.only:
            results["quality"] = {"steps": args.steps, "rows": quality(world, store, tmp / "signals", args.steps, args.seeds)}
    results["machine"]["load_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "quality"}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

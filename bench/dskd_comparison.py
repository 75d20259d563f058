"""Cross-vocabulary distillation on the demo world: DSKD-CMA against CE alone (CPT) and ULD, and on
one vocabulary DSKD against plain KD, at equal steps, batch, learning rate, mixture rule and seed.

Every arm starts from a demo student and runs the same DDK loop (``distiller.trainer.distill``);
only ``--kd`` (and its weight) differs. Each final student is scored by held-out bits per byte per
domain on the test split (the suite's first ``--docs`` documents, each model reading them with its
own tokenizer), the measure that compares across tokenizers. Writes a Markdown table and the JSON.

    python bench/dskd_comparison.py --steps 200 --seeds 0,1,2 --out docs/dskd-comparison.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.home import configure_environment, kdh_home

DOMAINS = ("code", "prose", "arithmetic", "records")
# id: (label, which demo student, --kd, its weight); the baselines are settings of one loop.
ARMS = {
    "cross-cpt": ("CPT (CE only)", "cross_student", "kd", 0.0),
    "cross-uld": ("ULD", "cross_student", "uld", 0.5),
    "cross-cma": ("DSKD-CMA", "cross_student", "dskd-cma", 0.5),
    "same-cpt": ("CPT (CE only)", "student", "kd", 0.0),
    "same-kd": ("KD", "student", "kd", 0.2),
    "same-dskd": ("DSKD", "student", "dskd", 0.5),
}


def held_out_bpb(model_dir: Path, world, docs: int, block: int) -> dict[str, float]:
    """Bits per byte per domain on the first ``docs`` test documents (lm-eval's rolling count, as
    the demo build measures it), with the model's own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.data import read_texts
    from harness.demo.checks import bits_per_byte

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return {d: bits_per_byte(model, tokenizer, read_texts(world.domain_file(d, "test_ppl.jsonl"))[:docs], block)
            for d in DOMAINS}


def _group_label(name: str) -> str:
    return f"{'different vocabularies' if name.startswith('cross') else 'one vocabulary'} · {ARMS[name][0]}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0", help="comma-separated; each arm runs once per seed")
    parser.add_argument("--docs", type=int, default=120, help="test documents per domain (the default suite's limit)")
    parser.add_argument("--arms", help=f"a comma-separated subset of: {', '.join(ARMS)} (default: all)")
    parser.add_argument("--size", default="default", choices=("default", "tiny"), help="tiny: a smoke test")
    parser.add_argument("--reuse", metavar="JSON", help="take the arms not in --arms from an earlier run's JSON "
                        "(same settings and seeds): re-run only the arms a change touches")
    parser.add_argument("--out", default="docs/dskd-comparison.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = {name: ARMS[name] for name in (args.arms.split(",") if args.arms else ARMS)}

    from distiller.trainer import DistillConfig, distill
    from harness.demo import ensure_world

    world = ensure_world(kdh_home(), args.size)
    block = min(args.block_size, world.manifest["recipe"]["block_size"])  # the models' context
    domains = {d: (world.domain_file(d, "train.jsonl"), world.domain_file(d, "validation.jsonl")) for d in DOMAINS}
    work = kdh_home() / "bench" / f"dskd-comparison-{args.size}"
    starts = {"student": world.student_dir, "cross_student": world.cross_student_dir}
    bpb = {"teacher": {0: held_out_bpb(world.teacher_dir, world, args.docs, block)}}
    for name, folder in starts.items():
        group = "cross" if name == "cross_student" else "same"
        bpb[f"{group}-initial"] = {0: held_out_bpb(folder, world, args.docs, block)}
    runs: dict[str, dict] = {}
    for name, (_, start, kd, kd_weight) in arms.items():
        bpb[name], runs[name] = {}, {}
        for seed in seeds:
            config = DistillConfig(teacher=str(world.teacher_dir), student=str(starts[start]),
                                   output_dir=str(work / f"{start}-{kd}-{kd_weight}-seed{seed}"), steps=args.steps,
                                   batch_size=args.batch_size, block_size=args.block_size, lr=args.lr, kd=kd,
                                   kd_weight=kd_weight, mixture="ddk", interval=args.interval, seed=seed,
                                   save_every=args.steps, progress=False)
            result = distill(config, domains)
            bpb[name][seed] = held_out_bpb(result.student_dir, world, args.docs, block)
            runs[name][seed] = {"seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
                                "ratio_of": result.ratio_of, "final_weights": result.weights}
            print(name, seed, json.dumps({d: round(v, 4) for d, v in bpb[name][seed].items()}),
                  f"{result.seconds:.0f} s", flush=True)

    from transformers import AutoTokenizer

    if args.reuse:
        reuse_arms(args, seeds, bpb, runs)
    vocab = {name: len(AutoTokenizer.from_pretrained(folder)) for name, folder in
             (("teacher", world.teacher_dir), ("cross_student", world.cross_student_dir))}
    write_report(args, seeds, bpb, runs, vocab, Path(args.out))


def reuse_arms(args, seeds: list[int], bpb: dict, runs: dict) -> None:
    """Add the arms this run left out from ``args.reuse``, which must hold them at the same settings."""
    earlier = json.loads(Path(args.reuse).read_text())
    setting = ("steps", "interval", "batch_size", "block_size", "lr", "seeds", "docs", "size")
    differ = [k for k in setting if earlier["args"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--reuse {args.reuse} was run with other settings ({', '.join(differ)})")
    args.reused = [name for name in ARMS if name not in runs and name in earlier["runs"]]
    for name in args.reused:
        bpb[name] = {int(seed): v for seed, v in earlier["bits_per_byte"][name].items()}
        runs[name] = earlier["runs"][name]
    ordered = {name: runs.pop(name) for name in ARMS if name in runs}  # the tables' column order
    runs.update(ordered)


def write_report(args, seeds: list[int], bpb: dict, runs: dict, vocab: dict, out: Path) -> None:
    mean = {name: {d: _mean([per_seed[s][d] for s in per_seed]) for d in DOMAINS} for name, per_seed in bpb.items()}
    spread = {name: {d: (min(per_seed[s][d] for s in per_seed), max(per_seed[s][d] for s in per_seed)) for d in DOMAINS}
              for name, per_seed in bpb.items()}
    cross = ["cross-initial"] + [n for n in runs if n.startswith("cross")]
    same = ["same-initial"] + [n for n in runs if n.startswith("same")]

    def label(name: str) -> str:
        return ARMS[name][0] if name in ARMS else "initial"

    def table(title: str, names: list[str]) -> list[str]:
        if len(names) == 1:  # no arm of this group was run
            return []
        rows = [title, "", "| domain | teacher | " + " | ".join(label(n) for n in names) + " |",
                "|---|---:|" + "---:|" * len(names)]
        for d in (*DOMAINS, "mean"):
            values = {n: mean[n][d] if d != "mean" else _mean(list(mean[n].values())) for n in ["teacher", *names]}
            best = min(values[n] for n in names[1:])
            cells = []
            for n in names:
                cell = f"{values[n]:.3f}"
                if len(seeds) > 1 and n in ARMS and d != "mean":
                    cell += f" ({spread[n][d][0]:.3f}–{spread[n][d][1]:.3f})"
                cells.append(f"**{cell}**" if n != names[0] and values[n] == best else cell)
            rows.append(f"| {d} | {values['teacher']:.3f} | " + " | ".join(cells) + " |")
        return rows + [""]

    threads = torch.get_num_threads()
    lines = [
        "# Cross-vocabulary distillation: DSKD-CMA vs CPT and ULD; DSKD vs KD",
        "",
        f"Generated by `python bench/dskd_comparison.py --steps {args.steps} --seeds {','.join(map(str, seeds))}"
        f"{' --arms ' + args.arms if args.arms else ''}{' --reuse ' + args.reuse if args.reuse else ''}` "
        f"({time.strftime('%Y-%m-%d')}, {threads} CPU thread{'s' if threads > 1 else ''}). Every arm starts from a "
        f"demo student and runs {args.steps} steps of {args.batch_size} × {args.block_size} student tokens, lr "
        f"{args.lr}, the DDK mixture (updated every {args.interval} steps), seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}; only the teacher signal differs. CPT: the student's cross-entropy alone. "
        "KD: CE + 0.2·KL(teacher ‖ student). DSKD, DSKD-CMA and ULD: 0.5·CE + 0.5·(their KD terms), projectors at "
        "lr 1e-3, forward KL, T = 1 (the DSKD scripts' settings). Across tokenizers, DDK's ratios are bits-per-byte "
        "ratios." + (f" The {', '.join(_group_label(n) for n in args.reused)} arms come from `{args.reuse}`, an "
                     "earlier run at the same settings and seeds (their code did not change); the rest were run "
                     "again." if getattr(args, "reused", None) else ""),
        "",
        f"Held-out bits per byte per domain (lower is better), on the first {args.docs} test documents of each "
        "domain, each model reading them with its own tokenizer" +
        (f"; the mean over the {len(seeds)} seeds, (min–max) across them" if len(seeds) > 1 else "") +
        ". Best of the distilled arms in bold.",
        "",
        *table(f"**Different vocabularies**: the demo teacher ({vocab['teacher']:,}-token BPE) into the "
               f"cross-vocabulary demo student (its own {vocab['cross_student']:,}-token BPE, learnt from another "
               "half of the documents):", cross),
        *table("**One vocabulary**: the demo teacher into the demo student (same tokenizer):", same),
        "Cost of the loop (seconds and student tokens per second, mean over seeds):",
        "",
        "| arm | loop seconds | tokens/s |",
        "|---|---:|---:|",
    ]
    for name, per_seed in runs.items():
        lines.append(f"| {_group_label(name)} | {_mean([r['seconds'] for r in per_seed.values()]):.0f} | "
                     f"{_mean([r['tokens_per_s'] for r in per_seed.values()]):,.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"bits_per_byte": bpb, "mean": mean, "runs": runs, "args": vars(args)}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The closed loop: score → gaps → DDK distillation → score the candidate → gate → promote.

One MLflow parent run (``kdh.kind`` loop) holds the steps (harness/steps.py) as nested runs. A round
starts from the registered champion (or the base student while there is none), distils with the
mixture seeded by the scorecard's gaps (harness/gaps.py), and promotes the candidate only if the
gate passes; ``rounds`` > 1 repeats while weak domains remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from distiller.config import DEFAULT_KD_WEIGHT, DistillConfig
from harness import corpora, gaps, model_uris, promotion, steps, tracking
from harness.console import note, say
from harness.errors import EXIT_PASS
from harness.models import ModelRef
from harness.registry import Suite
from harness.report import scorecard_report, table, trends_report, verdict_report
from harness.scorecard import Scorecard
from harness.scoring import ScoringOptions


@dataclass
class LoopSettings:
    rounds: int = 1
    steps: int = DistillConfig.steps
    batch_size: int = DistillConfig.batch_size
    block_size: int = DistillConfig.block_size
    lr: float = DistillConfig.lr
    kd_weight: float = DEFAULT_KD_WEIGHT["kd"]
    interval: int = DistillConfig.interval
    kd: str = DistillConfig.kd  # the teacher signal: kd, dskd, dskd-cma, uld (the last two across tokenizers)
    seed: int = 0
    promote: bool = True
    store: Path | None = None  # the token store every round reads (None: the suite's corpora, prepared once)
    # The teacher's stored signal every round trains from (docs/teacher-signal.md): None, the live teacher;
    # "auto", found or computed once before the first round; else the path of one from `kdh teacher-signal`.
    teacher_signal: str | None = None
    signal_k: int = 64
    signal_mode: str = "top-k"
    on_policy: dict = field(default_factory=dict)  # GKD's and SeqKD's DistillConfig fields (docs/on-policy.md)
    generations: object = None  # distiller.seqkd.GenerationSettings, for on_policy["seq_kd"] == "auto"

    def distill_config(self, teacher: str, student: str, out: Path, **fields) -> DistillConfig:
        """One distillation with these settings; ``fields`` add DistillConfig's others or override these."""
        return DistillConfig(**{"teacher": teacher, "student": student, "output_dir": str(out), "steps": self.steps,
                                "batch_size": self.batch_size, "block_size": self.block_size, "lr": self.lr,
                                "kd": self.kd, "kd_weight": self.kd_weight, "interval": self.interval,
                                "seed": self.seed, **fields})


def weak_domains(scorecard: Scorecard, suite: Suite, model: str = "student") -> list[str]:
    """Domains where the model keeps less of the teacher's score than the suite asks."""
    retention = scorecard.domains.set_index(["model", "domain"])["retention"]
    weak = []
    for domain in suite.domains:
        floor = domain.thresholds.over(suite.thresholds).min_retention
        kept = retention.get((model, domain.name), float("nan"))
        if floor is not None and not kept >= floor:
            weak.append(domain.name)
    return weak


def distill_round(suite: Suite, teacher: ModelRef, student_dir: str, ratios: dict[str, float],
                  settings: LoopSettings, out: Path, round_no: int) -> steps.DistillOutcome:
    """DDK distillation of ``student_dir`` with the mixture seeded by ``ratios`` (nested run)."""
    config = settings.distill_config(teacher.source, student_dir, out, initial_ratios=ratios, seed=settings.seed + round_no,
                                     teacher_signal=settings.teacher_signal, **settings.on_policy)
    return steps.distill(suite, config, f"distill round {round_no}", params={"round": round_no}, store=settings.store)


def signal_for(suite: Suite, teacher: ModelRef, student: str, settings: LoopSettings):
    """The stored teacher signal the rounds share: found under the kdh home when computed before."""
    from distiller.teacher_signal import SignalSettings

    note(f"  the teacher's signal ({settings.signal_mode}, k={settings.signal_k}): found, or computed once …")
    made = steps.teacher_signal(suite, teacher.source, student, settings.store,
                                SignalSettings(k=settings.signal_k, mode=settings.signal_mode,
                                               block_size=settings.block_size))
    say(f"  teacher signal {made.fingerprint[:12]} at {made.root}: "
        f"{'computed now' if made.computed else 'found, the teacher did not run'}")
    return made


def current_champion(suite: Suite, base_student: str) -> tuple[str, str]:
    """(local folder, label) of the registered champion, or of the base student when none is."""
    name = promotion.registered_name(suite.name)
    version = promotion.champion_version(name)
    if version is None:
        return base_student, "base student"
    return model_uris.resolve(f"models:/{name}/{version.version}"), f"champion v{version.version}"


def run_loop(suite: Suite, teacher: ModelRef, base_student: str, settings: LoopSettings, options: ScoringOptions,
             out: Path, junit: str | None = None, summary: str | None = None) -> int:
    """Returns the exit code: 0 promoted (or nothing to do), 1 the candidate was rejected."""
    import mlflow

    registered = promotion.registered_name(suite.name)
    exit_code, before, after = EXIT_PASS, None, None
    settings = replace(settings, store=settings.store or corpora.store_for(suite, base_student).root)
    contamination = corpora.contamination(suite, settings.store, base_student)  # checked by every round's gate
    with tracking.tracked_run(suite.name, "loop", f"loop {suite.name}") as parent:
        mlflow.log_params({"suite": suite.name, "teacher": teacher.source, "base_student": base_student,
                           **{f"loop.{k}": v for k, v in vars(settings).items()}})
        student_dir, label = current_champion(suite, base_student)
        if settings.teacher_signal == "auto":  # the teacher over the corpus once, for every round
            settings = replace(settings, teacher_signal=str(signal_for(suite, teacher, base_student, settings).root))
        if settings.on_policy.get("seq_kd") == "auto":  # the teacher's continuations (SeqKD), once for every round
            made = steps.teacher_generations(suite, teacher.source, settings.store, settings.generations)
            say(f"  teacher generations {made.fingerprint[:12]} at {made.root}: "
                f"{'generated now' if made.computed else 'found, the teacher did not run'}")
            settings = replace(settings, on_policy={**settings.on_policy, "seq_kd": str(made.root)})
        for round_no in range(1, settings.rounds + 1):
            say(f"\n━━ Round {round_no}/{settings.rounds} · student: {label} ({student_dir})")
            round_out = out / f"round-{round_no}"
            note("  scoring the teacher and the student …")
            # Every model loads as the teacher does (dtype, device, what it may trust).
            card, _ = steps.evaluate(suite, [replace(teacher, name="teacher"),
                                             replace(teacher, name="student", source=student_dir)],
                                     options, round_out / "before", f"round {round_no}: teacher vs {label}")
            note(f"  scoring: {steps.cached_note(card)}")
            before = before if before is not None else card
            weak = weak_domains(card, suite)
            say(f"  weak domains (below the suite's min_retention): {', '.join(weak) or 'none'}")
            if not weak and round_no > 1:
                say("  nothing left to retrain")
                break
            note(f"  distilling with DDK, {settings.steps} steps, seeded with the scorecard's gaps …")
            ratios = gaps.ratios_from_scorecard(card, domains=[d.name for d in suite.domains])
            distilled = distill_round(suite, teacher, student_dir, ratios, settings, round_out / "distill", round_no)
            result = distilled.result
            weights = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in result.history[-1].items()
                                if k.startswith("weight/"))
            say(f"  distilled: {result.steps} steps, {result.tokens_per_s:,.0f} tokens/s · last DDK weights: {weights}")
            note("  gating the candidate …")
            outcome = steps.gate(suite, teacher, replace(teacher, name="candidate", source=str(result.student_dir)),
                                 replace(teacher, name="champion", source=student_dir), options, round_out / "gate",
                                 junit, summary, contamination=contamination)
            say(verdict_report(outcome.verdict))
            if ahead := trends_report(outcome.trends, outcome.recommendations):
                say(ahead)
            after = outcome.scorecard
            if not outcome.verdict.passed:
                exit_code = outcome.exit_code
                say(f"  the candidate stays at {result.student_dir}; the champion is unchanged")
                break
            if settings.promote:
                promoted = promotion.promote(result.student_dir, registered, source_uri=distilled.source_uri,
                                             source_run_id=distilled.run_id,
                                             tags={"kdh.loop_run": parent.info.run_id, "kdh.round": str(round_no),
                                                   "kdh.gate_run": outcome.run_id})
                say(f"  promoted: {promotion.promoted_line(promoted)}")
            # The next round starts from this candidate (the same bytes as the new champion).
            student_dir, label = str(result.student_dir), f"round {round_no}'s candidate"
        if after is not None:
            say("\n" + before_after(before, after))
            mlflow.log_table(before_after_frame(before, after), artifact_file="tables/before_after.json")
        mlflow.set_tag("kdh.verdict", "pass" if exit_code == EXIT_PASS else "fail")
    return exit_code


def before_after_frame(before: Scorecard, after: Scorecard) -> pd.DataFrame:
    """Per domain: the base student's and the candidate's retention of the teacher's score."""
    b = before.domains.set_index(["model", "domain"])["retention"]
    a = after.domains.set_index(["model", "domain"])["retention"]
    rows = [{"domain": d, "before": b.get(("student", d)), "after": a.get(("candidate", d))}
            for d in dict.fromkeys(before.rows["domain"])]
    frame = pd.DataFrame(rows)
    frame["change"] = frame["after"] - frame["before"]
    return frame.sort_values("before").reset_index(drop=True)


def before_after(before: Scorecard, after: Scorecard) -> str:
    return ("Retention of the teacher's score per domain, before → after\n\n" + table(before_after_frame(before, after))
            + "\n\n" + scorecard_report(after))

"""`kdh align`: the vocabulary alignment report of a teacher and a student tokenizer, per domain of a
suite (harness/alignment.py; docs/analytics.md). Reads tokenizers only: no model is loaded, nothing
is trained, so it answers in seconds how hard a cross-tokenizer pair is before distilling it."""

from __future__ import annotations

from pathlib import Path

from harness import console
from harness.errors import BadInput
from harness.inputs import add_verb, model_or_demo, open_suite, output_folder


def _tokenizer(role: str, source: str):
    from transformers import AutoTokenizer

    from harness import model_uris

    path = model_uris.resolve(source)
    if not Path(path).is_dir():
        raise BadInput(f"--{role} {source}: no such folder; give a model or tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise BadInput(f"--{role} {source}: no usable tokenizer there ({type(err).__name__}: {err})") from None


def cmd_align(args) -> int:
    from harness.agreement import slice_texts
    from harness.alignment import alignment_report
    from harness.report import table
    from harness.scoring import ScoringOptions

    suite = open_suite(args.suite)
    teacher = _tokenizer("teacher", model_or_demo(args.teacher, "teacher"))
    student = _tokenizer("student", model_or_demo(args.student, "cross_student"))
    by_slice = slice_texts(suite, ScoringOptions(limit=args.limit))
    texts = {d.name: [t for s in d.slices for t in by_slice[(d.name, s.name)]] for d in suite.domains}
    try:
        report = alignment_report(teacher, student, texts)
    except ValueError as err:
        raise BadInput(str(err)) from None
    out = output_folder(args.out, "align", suite.name)
    out.mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "alignment.csv", index=False)
    console.say(f"Vocabulary alignment · suite '{suite.name}' · teacher {len(teacher):,} tokens, student "
                f"{len(student):,} tokens (docs/analytics.md)")
    console.say()
    console.say(table(report))
    console.say()
    console.say("shared_tokens: share of the teacher's tokens that are one student token; shared_boundaries: share "
                "of token boundaries both tokenizers make; tokens_per_byte: how finely each cuts the text")
    console.say(f"Saved {out / 'alignment.csv'}")
    return 0


def add_verbs(verbs) -> None:
    al = add_verb(verbs, "align", cmd_align, "how well two tokenizers align, per domain: shared tokens, shared "
                  "boundaries, tokens per byte", out="folder for alignment.csv (default: $KDH_HOME/align/…)")
    al.add_argument("--teacher", help="the teacher's model or tokenizer folder (default: the demo teacher)")
    al.add_argument("--student", help="the student's (default: the demo cross-vocabulary student)")
    al.add_argument("--limit", type=int, help="documents or items per slice (overrides the suite)")

"""`kdh prepare`: a suite's corpora → the token store distillation reads, checked (docs/token-store.md).

It tokenizes (or finds already tokenized) every domain's train and validation corpus, runs the
corpus checks (harness/corpus_checks.py: exit 2 when the data is wrong) and measures the n-gram
overlap of each training domain with the suite's test slices (harness/contamination.py: exit 1 when
a slice is above the suite's ``max_contamination``, as the gate would fail it). One MLflow run of
kind ``prepare`` holds the counts, the checks and the overlap.
"""

from __future__ import annotations

from pathlib import Path

from harness import console
from harness.errors import EXIT_GATE_FAILED, EXIT_PASS, BadInput
from harness.inputs import add_verb, model_or_demo, open_suite
from harness.report import table


def cmd_prepare(args) -> int:
    import mlflow

    from harness import corpora, tracking
    from harness.corpus_checks import check_corpus
    from harness.gate import contamination_rows

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite)
    tokenizer = args.tokenizer or model_or_demo(None, "student")
    train, provenance = corpora.parse_corpus_flags(args.corpus, "--corpus"), None
    if args.classified:
        train, provenance = classified_corpora(args.classified, train)
    given = corpora.suite_corpora(suite, train, corpora.parse_corpus_flags(args.validation, "--validation"))
    console.note(f"kdh prepare · suite '{suite.name}' · tokenizer {tokenizer} · tracking {tracking.redact(uri)}")
    with tracking.tracked_run(suite.name, "prepare", f"prepare {suite.name}") as run:
        prepared = corpora.store_for(suite, tokenizer, out=Path(args.out) if args.out else None, corpora=given,
                                     workers=args.workers, provenance=provenance)
        from distiller.store import TokenStore

        store = TokenStore(prepared.root)
        summary = store.summary()
        check = check_corpus(summary, [d.name for d in suite.domains], raise_on_failure=False)
        report = corpora.contamination(suite, prepared.root, tokenizer)
        verdict = contamination_rows(suite, corpora.worst_per_slice(report))
        mlflow.log_params({"suite": suite.name, "store": str(prepared.root), "store.key": prepared.key,
                           "tokenizer": tokenizer, "tokenizer.sha256": store.tokenizer["sha256"]})
        mlflow.log_metrics({f"tokens/{d}/{s}": c["tokens"] for d, splits in summary.items() for s, c in splits.items()}
                           | {f"contamination/{r.slice}": r.observed for r in verdict.itertuples() if r.observed == r.observed}
                           | ({"tokens_per_s": prepared.tokens_per_s} if not prepared.up_to_date else {}))
        mlflow.log_table(check.table, artifact_file="tables/corpus.json")
        mlflow.log_table(report, artifact_file="tables/contamination.json")
        mlflow.log_table(verdict, artifact_file="tables/contamination_checks.json")
        mlflow.set_tags({"kdh.store": str(prepared.root), "kdh.corpus_checks": "pass" if check.passed else "fail",
                         **({"kdh.classifier": provenance["classifier"]} if provenance else {})})

    if prepared.up_to_date:
        console.say(f"Token store up to date: {prepared.root} (nothing to tokenize)")
    else:
        for change in prepared.changes:
            console.say(f"  changed since the last store: {change}")
        console.say(f"Token store: {prepared.root} · {prepared.seconds:.1f} s · {prepared.tokens_per_s / 1e6:.2f}M tokens/s")
    console.say(table(check.table[["domain", "split", "documents", "tokens", "duplicate_documents", "empty_documents",
                                   "overlong_documents", "invalid_utf8_documents"]]))
    for warning in check.warnings:
        console.say(f"  warning: {warning}")
    console.say("\nOverlap of the training corpus with the test slices (n-grams; the worst training domain per slice):")
    console.say(table(verdict[["domain", "slice", "status", "observed", "threshold", "reason"]]))
    console.say(f"MLflow: experiment kdh/{suite.name}, run {run.info.run_id}")
    if not check.passed:
        from harness.corpus_checks import CorpusCheckFailed

        raise CorpusCheckFailed(check)  # exit 2: the data is wrong
    return EXIT_GATE_FAILED if (verdict["status"] == "fail").any() else EXIT_PASS


def classified_corpora(folder: str, given: dict[str, list[Path]]) -> tuple[dict[str, list[Path]], dict]:
    """The training corpora of a `kdh classify` output folder, and its provenance for the manifest;
    the unknown bucket is left out, and said so."""
    from harness.classify_corpus import read_classified

    if given:
        raise BadInput(f"--classified and --corpus both give training corpora ({', '.join(given)}); use one")
    train, provenance = read_classified(Path(folder))
    console.note(f"  training corpora from {folder} (classifier {provenance['classifier'][:12]}); left out: "
                 f"{provenance['unknown_documents']:,} unknown documents")
    return train, provenance


def add_verbs(verbs) -> None:
    pr = add_verb(verbs, "prepare", cmd_prepare, "tokenize the suite's corpora into a token store, check them and "
                  "their overlap with the test slices (exit 1 above the suite's max_contamination)",
                  out="the store's folder (default: $KDH_HOME/stores/<key of the inputs>)")
    pr.add_argument("--tokenizer", help="a model or tokenizer folder: the student's (default: the demo student's)")
    pr.add_argument("--corpus", action="append", metavar="DOMAIN=PATH",
                    help="a training corpus for a domain instead of the suite's `train:` (repeatable; a JSON Lines "
                         "or Parquet file, a folder of them or of text files, or a dataset saved with save_to_disk)")
    pr.add_argument("--classified", metavar="DIR",
                    help="the output folder of `kdh classify`: its per-domain files as the training corpora (its "
                         "unknown documents left out; the classifier's fingerprint recorded in the store)")
    pr.add_argument("--validation", action="append", metavar="DOMAIN=PATH",
                    help="a validation corpus for a domain instead of the suite's `validation:` (repeatable)")
    pr.add_argument("--workers", type=int, help="tokenizing processes (default: one per core)")
    pr.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the kdh home)")

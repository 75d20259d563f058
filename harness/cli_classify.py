"""`kdh classify`: unlabelled corpora → the suite's domains, checked, ready for `kdh prepare` (docs/classify.md).

It trains a domain classifier on labelled examples (each suite domain's ``train:`` corpus, or
``--labelled DOMAIN=PATH``), or reuses one (``--classifier DIR``), reports its held-out accuracy and
confusion matrix, labels every document of the ``--input`` corpora (harness/classify_corpus.py) and
checks the result (harness/classify_checks.py: exit 2 when a domain is empty or too much is
unknown). One MLflow run of kind ``classify`` holds the classifier, its fingerprint, the counts.
"""

from __future__ import annotations

from pathlib import Path

from harness import console
from harness.errors import EXIT_PASS, BadInput
from harness.inputs import add_verb, open_suite, output_folder
from harness.report import table


def labelled_corpora(suite, flags: list[str] | None) -> dict[str, list[Path]]:
    """{domain: paths} of labelled examples for every suite domain: ``--labelled`` where given, else
    the suite's ``train:``. Bad input names a domain the suite lacks, or one with no examples."""
    from harness.corpora import parse_corpus_flags

    given = parse_corpus_flags(flags, "--labelled")
    names = [d.name for d in suite.domains]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BadInput(f"--labelled: domain(s) {', '.join(unknown)} are not in the suite {suite.path} (its domains: "
                       f"{', '.join(names)}); add them to the suite or fix the name")
    corpora = {d.name: given.get(d.name) or ([d.train] if d.train else []) for d in suite.domains}
    missing = [d for d, paths in corpora.items() if not paths]
    if missing:
        raise BadInput(f"domain(s) {', '.join(missing)} have no labelled documents: set `train:` in {suite.path} or "
                       f"give --labelled {missing[0]}=PATH")
    return corpora


def _reused_classifier(args, suite):
    """The ``--classifier`` folder, loaded and checked against the suite's domains."""
    from harness.classify import load

    found = load(Path(args.classifier).expanduser())
    names = [d.name for d in suite.domains]
    if sorted(found.classes) != sorted(names):
        raise BadInput(f"--classifier {args.classifier}: it labels {', '.join(found.classes)}, the suite "
                       f"{suite.path} has {', '.join(names)}; train one for this suite (leave out --classifier)")
    return found


def _checked_inputs(given: list[str]) -> list[Path]:
    """The ``--input`` paths, each checked to hold a readable corpus before any work starts."""
    from distiller.corpus import source_files
    from harness.errors import distill_errors

    inputs = [Path(p).expanduser() for p in given]
    with distill_errors():
        for path in inputs:
            source_files(path)
    return inputs


def _print_training(trained) -> None:
    from harness.classify import confusion_table

    console.say(f"Held-out accuracy: {trained.accuracy:.2%} on {int(trained.counts['held_out'].sum()):,} documents "
                f"(trained on {int(trained.counts['train'].sum()):,} in {trained.seconds:.1f} s)")
    console.say("\nConfusion matrix of the held-out documents (rows: the true domain; columns: the predicted one)\n")
    console.say(table(confusion_table(trained.confusion)))


def cmd_classify(args) -> int:
    import mlflow

    from harness import tracking
    from harness.classify import UNKNOWN, confusion_table, read_labelled, train
    from harness.classify_checks import ClassificationCheckFailed, check_classification
    from harness.classify_corpus import SUMMARY, label_corpus

    for flag, value in (("--threshold", args.threshold), ("--max-unknown", args.max_unknown)):
        if not 0 <= value <= 1:
            raise BadInput(f"{flag} {value}: must be in [0, 1]")
    if not 0 < args.holdout < 1:
        raise BadInput(f"--holdout {args.holdout}: the held-out share must be in (0, 1)")
    suite = open_suite(args.suite)
    if UNKNOWN in [d.name for d in suite.domains]:
        raise BadInput(f"{suite.path}: a domain is named '{UNKNOWN}', the bucket of unclassified documents; rename it")
    inputs = _checked_inputs(args.input)
    # Everything the user named is read before a run starts: bad input never leaves a failed run.
    classifier = _reused_classifier(args, suite) if args.classifier else None
    examples = None if classifier else read_labelled(labelled_corpora(suite, args.labelled))
    out = output_folder(args.out, "classified", suite.name)
    uri = tracking.connect(args.tracking_uri)
    console.note(f"kdh classify · suite '{suite.name}' · {len(inputs)} input(s) · tracking {tracking.redact(uri)}")
    with tracking.tracked_run(suite.name, "classify", f"classify {suite.name}") as run:
        trained = None
        if examples is not None:
            console.note(f"  training on {sum(map(len, examples.values())):,} labelled documents "
                         f"({', '.join(f'{d} {len(t):,}' for d, t in examples.items())})")
            trained = train(examples, holdout=args.holdout, seed=args.seed)
            classifier = trained.classifier
            _print_training(trained)
        else:
            console.say(f"Classifier {args.classifier} (fingerprint {classifier.fingerprint[:12]}; held-out "
                        f"accuracy when trained: {classifier.training.get('accuracy', float('nan')):.2%})")
        labelled = label_corpus(classifier, inputs, out, threshold=args.threshold, workers=args.workers,
                                progress_stream=console.progress_stream())
        summary = labelled.summary
        check = check_classification(summary["counts"], list(classifier.classes), max_unknown=args.max_unknown,
                                     raise_on_failure=False)
        mlflow.log_params({"suite": suite.name, "inputs": ",".join(map(str, inputs)), "out": str(out),
                           "threshold": args.threshold, "max_unknown": args.max_unknown,
                           "classifier.source": args.classifier or "trained", "holdout": args.holdout})
        mlflow.log_metrics({"held_out_accuracy": classifier.training.get("accuracy", float("nan")),
                            "unknown_share": summary["unknown_share"], "documents_per_s": labelled.documents_per_s,
                            **{f"documents/{b}": n for b, n in summary["counts"].items()}}
                           | ({"train_seconds": trained.seconds} if trained is not None else {}))
        if trained is not None:
            mlflow.log_table(confusion_table(trained.confusion), artifact_file="tables/confusion.json")
        mlflow.log_table(check.table, artifact_file="tables/counts.json")
        mlflow.log_artifacts(str(out / "classifier"), artifact_path="classifier")
        mlflow.log_artifact(str(out / SUMMARY))
        mlflow.set_tags({"kdh.classifier": classifier.fingerprint,
                         "kdh.classification_checks": "pass" if check.passed else "fail"})

    console.say(f"\nClassified {summary['documents']:,} documents in {labelled.seconds:.1f} s "
                f"({labelled.documents_per_s:,.0f} documents/s) into {out}; below a confidence of "
                f"{args.threshold:g} a document goes to '{UNKNOWN}'")
    skipped = summary["skipped"]
    if skipped["empty"] or skipped["invalid_utf8"]:
        console.say(f"  skipped: {skipped['empty']:,} empty, {skipped['invalid_utf8']:,} not valid UTF-8")
    console.say("\n" + table(check.table.assign(share=check.table["share"].astype(float))))
    console.say(f"MLflow: experiment kdh/{suite.name}, run {run.info.run_id} · classifier {classifier.fingerprint[:12]}")
    if not check.passed:
        raise ClassificationCheckFailed(check)  # exit 2: nothing should be prepared from it
    suite_flag = f" --suite {args.suite}" if args.suite else ""
    console.say(f"\nNext: kdh prepare{suite_flag} --classified {out}")
    return EXIT_PASS


def add_verbs(verbs) -> None:
    cl = add_verb(verbs, "classify", cmd_classify, "label unlabelled corpora with the suite's domains (a classifier "
                  "trained on labelled examples), checked, for `kdh prepare --classified`",
                  out="the output folder: one JSON Lines file per domain (default: $KDH_HOME/classified/…)")
    cl.add_argument("--input", action="append", required=True, metavar="PATH",
                    help="an unlabelled corpus (repeatable): a JSON Lines or Parquet file, a folder of them or of "
                         "text files, or a dataset saved with save_to_disk")
    cl.add_argument("--labelled", action="append", metavar="DOMAIN=PATH",
                    help="labelled examples of a domain instead of the suite's `train:` (repeatable)")
    cl.add_argument("--classifier", help="a classifier folder from an earlier `kdh classify` (OUT/classifier) to "
                                         "reuse instead of training one")
    cl.add_argument("--threshold", type=float, default=0.5,
                    help="the confidence below which a document goes to 'unknown' (default 0.5)")
    cl.add_argument("--max-unknown", type=float, default=0.2,
                    help="the largest share of unknown documents the check accepts (default 0.2)")
    cl.add_argument("--holdout", type=float, default=0.2,
                    help="the share of labelled documents held out to measure accuracy (default 0.2)")
    cl.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    cl.add_argument("--workers", type=int, help="classifying processes (default: one per core)")
    cl.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the kdh home)")


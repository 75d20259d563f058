"""Checks of a classified corpus with Great Expectations, before `kdh prepare` trains on it.

The input is the counts `kdh classify` records (harness/classify_corpus.py): documents per suite
domain and in the ``unknown`` bucket. It becomes one row per bucket, and the checks fail when:

- a suite domain received no document: DDK would have nothing to sample for it, and `kdh prepare`
  refuses a domain without text;
- the unknown share is above ``max_unknown``: past that, the classifier does not know this corpus
  (another kind of text, or domains the suite lacks), and the domain mixture built from what it
  did label would stand for a small, unrepresentative part of the corpus.

Same pattern as harness/corpus_checks.py: GX runs the expectations on the table, each failure
comes back as a sentence naming the domain and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from harness.classify import UNKNOWN
from harness.errors import ValidationFailed

_WHERE = "where"  # the column harness/corpus_checks.py's runner names failing rows by


@dataclass(frozen=True)
class ClassificationCheck:
    passed: bool
    failures: list[str]
    table: pd.DataFrame  # one row per bucket: domain, documents, share


class ClassificationCheckFailed(ValidationFailed):
    """The classified corpus failed its checks (exit code 2): nothing may be prepared from it."""

    def __init__(self, check: ClassificationCheck):
        self.check = check
        super().__init__(check.failures, subject="the classified corpus")


def classification_table(counts: Mapping[str, int], domains: Sequence[str]) -> pd.DataFrame:
    """One row per suite domain, then the unknown bucket: its documents and share of all labelled."""
    rows = [{"domain": d, "documents": int(counts.get(d, 0))} for d in [*domains, UNKNOWN]]
    frame = pd.DataFrame(rows, columns=["domain", "documents"])
    total = frame["documents"].sum()
    frame["share"] = frame["documents"] / total if total else 0.0
    return frame


def expectations(max_unknown: float):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    checks = gx.ExpectationSuite(name="classified-corpus")
    checks.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="documents", min_value=1, row_condition=f'domain!="{UNKNOWN}"', condition_parser="pandas"))
    checks.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="share", max_value=max_unknown, row_condition=f'domain=="{UNKNOWN}"', condition_parser="pandas"))
    return checks


def check_classification(counts: Mapping[str, int], domains: Sequence[str], *, max_unknown: float = 0.2,
                         raise_on_failure: bool = True) -> ClassificationCheck:
    """Run the checks on the counts per bucket against the suite's domains. Raises
    ``ClassificationCheckFailed`` on a failure unless ``raise_on_failure`` is False."""
    from harness.corpus_checks import _run

    if not 0 <= max_unknown <= 1:
        raise ValueError(f"max_unknown must be in [0, 1], got {max_unknown}")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    table = classification_table(counts, domains)
    failures = []
    frame = table.assign(**{_WHERE: table["domain"]})
    for result in _run(frame, lambda: expectations(max_unknown)):
        if result.success:
            continue
        column = result.expectation_config.kwargs.get("column")
        for where in [item[_WHERE] for item in (result.result or {}).get("unexpected_index_list") or []]:
            row = table.set_index("domain").loc[where]
            if column == "documents":
                failures.append(f"domain '{where}' received no document: add text of that kind to the input, "
                                f"give the classifier better examples of it (--labelled {where}=PATH), or lower "
                                "--threshold")
            else:
                failures.append(f"{row['share']:.1%} of the documents ({int(row['documents'])}) are unknown, above "
                                f"--max-unknown {max_unknown:.1%}: the classifier does not recognise much of this "
                                "corpus; lower --threshold, add labelled examples of its kinds of text, or raise "
                                "--max-unknown")
    check = ClassificationCheck(passed=not failures, failures=failures, table=table)
    if failures and raise_on_failure:
        raise ClassificationCheckFailed(check)
    return check

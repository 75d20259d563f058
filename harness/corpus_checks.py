"""Checks of a prepared corpus with Great Expectations, before anything trains on it.

The input is the summary the prepare step records, per domain and split:
``{domain: {split: {"documents", "tokens", "empty_documents", "overlong_documents",
"invalid_utf8_documents", "duplicate_documents"}}}``. It becomes one row per domain/split, and:

Failures (the corpus is wrong; nothing may train on it):
- its domains are exactly the suite's, and each has a "train" and a "validation" split;
- each domain/split has documents > 0 and tokens > 0;
- no document is invalid UTF-8: such text was decoded with replacement characters, so its tokens
  are no longer the source's;
- duplicates are at most ``max_duplicate_rate`` of a domain/split's documents: past that, the
  domain's weight in the mixture and its DDK perplexity are the repeats', not the text's.

Warnings (expected 0, reported, never failing): empty documents add no tokens, and overlong ones
are handled by the prepare step's length limit, so neither makes the tokens wrong. Both are common
in real sources (a blank file, one huge generated file); failing on them would block most real
corpora, while saying so lets a person see that the source was split oddly.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from harness.errors import BadInput, ValidationFailed

SPLITS = ("train", "validation")
COUNTS = ("documents", "tokens", "empty_documents", "overlong_documents", "invalid_utf8_documents",
          "duplicate_documents")
RATES = {"duplicate_rate": "duplicate_documents", "empty_rate": "empty_documents",
         "overlong_rate": "overlong_documents", "invalid_utf8_rate": "invalid_utf8_documents"}
TABLE_COLUMNS = ["domain", "split", *COUNTS, *RATES]
_WHERE = "where"  # "domain/split": how GX names the rows that failed


@dataclass(frozen=True)
class CorpusCheck:
    """What the checks found: ``table`` has one row per domain/split, counts and rates, to print."""

    passed: bool
    failures: list[str]
    warnings: list[str]
    table: pd.DataFrame


class CorpusCheckFailed(ValidationFailed):
    """The prepared corpus failed its checks (exit code 2, as a scorecard's would). Carries the whole
    ``check`` so a command can still print its table and warnings."""

    def __init__(self, check: CorpusCheck):
        self.check = check
        super().__init__(check.failures, subject="the prepared corpus")


def corpus_table(summary: Mapping) -> pd.DataFrame:
    """One row per domain/split of the summary, with its counts (missing or non-numeric ones as NaN,
    for the checks to name) and their rates over the documents."""
    rows = []
    for domain, splits in summary.items():
        for split, counts in (splits.items() if isinstance(splits, Mapping) else ()):
            counts = counts if isinstance(counts, Mapping) else {}
            rows.append({"domain": str(domain), "split": str(split), **{c: counts.get(c) for c in COUNTS}})
    frame = pd.DataFrame(rows, columns=["domain", "split", *COUNTS])
    for column in COUNTS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
        if frame[column].notna().all():
            frame[column] = frame[column].astype("int64")
    documents = frame["documents"].where(frame["documents"] > 0)  # no rate over no documents
    for rate, count in RATES.items():
        frame[rate] = (frame[count] / documents).astype("float64")
    return frame[TABLE_COLUMNS]


def expectations(domains: Sequence[str], *, max_duplicate_rate: float):
    """The expectation suite; the ones that only warn carry GX's "warning" severity."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    checks = gx.ExpectationSuite(name="prepared-corpus")
    add = checks.add_expectation
    add(gxe.ExpectColumnDistinctValuesToEqualSet(column="domain", value_set=list(domains)))
    for domain in domains:  # names are [a-z0-9_-] (harness.registry.NAME_RE): safe inside the quotes
        add(gxe.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=list(SPLITS),
                                                     row_condition=f'domain=="{domain}"', condition_parser="pandas"))
    for column in COUNTS:
        add(gxe.ExpectColumnValuesToNotBeNull(column=column))
        add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=1 if column in ("documents", "tokens") else 0))
    add(gxe.ExpectColumnValuesToBeBetween(column="invalid_utf8_documents", max_value=0))
    add(gxe.ExpectColumnValuesToBeBetween(column="duplicate_rate", max_value=max_duplicate_rate))
    for column in ("empty_documents", "overlong_documents"):
        add(gxe.ExpectColumnValuesToBeBetween(column=column, max_value=0, severity="warning"))
    return checks


def check_corpus(summary: Mapping, domains: Sequence[str], *, max_duplicate_rate: float = 0.5,
                 raise_on_failure: bool = True) -> CorpusCheck:
    """Run the checks on the prepare step's summary against the suite's domain names.

    Raises ``CorpusCheckFailed`` (a ``ValidationFailed``) on any failure, unless
    ``raise_on_failure`` is False; then the failures come back in the result, ``passed`` False.
    Warnings never raise."""
    if not 0 <= max_duplicate_rate <= 1:
        raise ValueError(f"max_duplicate_rate must be in [0, 1], got {max_duplicate_rate}")
    table = corpus_table(summary)
    frame = table.assign(**{_WHERE: table["domain"] + "/" + table["split"]})
    results = _run(frame, lambda: expectations(list(domains), max_duplicate_rate=max_duplicate_rate))
    failures, warnings = [], []
    for result in results:
        if not result.success:
            warning = getattr(result.expectation_config, "severity", None) == "warning"  # a str enum
            found = warnings if warning else failures
            found.extend(_describe(result, frame, max_duplicate_rate))
    check = CorpusCheck(passed=not failures, failures=failures, warnings=warnings, table=table)
    if failures and raise_on_failure:
        raise CorpusCheckFailed(check)
    return check


def _run(frame: pd.DataFrame, checks: Callable) -> list:
    """GX's result of each expectation. ``checks`` makes the suite: GX wants a context before one."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX sets this logger to INFO itself and then announces a temporary folder on every run.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("kdh").add_dataframe_asset("corpus")
             .add_batch_definition_whole_dataframe("all"))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="corpus", data=batch, suite=context.suites.add(checks())))
    # COMPLETE, with the rows named by "domain/split", so each message can say where.
    result = definition.run(batch_parameters={"dataframe": frame},
                            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [_WHERE]})
    return result.results


def _describe(result, frame: pd.DataFrame, max_duplicate_rate: float) -> list[str]:
    """The failed expectation in words: one sentence per domain/split it is about."""
    config = result.expectation_config
    kwargs, found = config.kwargs, result.result or {}
    column = kwargs.get("column")
    if config.type == "expect_column_distinct_values_to_equal_set" and column == "domain":
        present, wanted = set(frame["domain"]), set(kwargs["value_set"])
        parts = [f"missing {_names(wanted - present)} (prepare them, or drop them from the suite)"] if wanted - present else []
        parts += [f"has {_names(present - wanted)}, which the suite does not name (remove them)"] if present - wanted else []
        return [f"the corpus must hold exactly the suite's domains: it is {'; it '.join(parts)}"]
    if config.type == "expect_column_distinct_values_to_equal_set":
        condition = kwargs.get("row_condition")
        condition = condition.get("pass_through_filter") if isinstance(condition, dict) else condition
        domain = condition.split('"')[1]
        present = set(frame.loc[frame["domain"] == domain, "split"])
        if not present:
            return []  # the whole domain is missing: the domain check names it
        missing, extra = sorted(set(SPLITS) - present), sorted(present - set(SPLITS))
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
        return [f"domain '{domain}' must have the splits {' and '.join(SPLITS)}: {'; '.join(parts)}"]
    rows = frame.set_index(_WHERE)
    return [_row_message(config.type, column, where, rows.loc[where], max_duplicate_rate)
            for where in [item[_WHERE] for item in found.get("unexpected_index_list") or []]]


def _row_message(kind: str, column: str, where: str, row: pd.Series, max_duplicate_rate: float) -> str:
    value, documents = row[column], row["documents"]
    if kind == "expect_column_values_to_not_be_null":
        return f"{where}: {column} is missing or not a number; the prepare step's summary must count it"
    if column in ("documents", "tokens") and value < 1:
        return f"{where} has {_count(value)} {column.replace('_', ' ')}; every domain needs text in each split — check its source files"
    if value < 0:
        return f"{where}: {column} is {_count(value)}; a count cannot be negative"
    if column == "invalid_utf8_documents":
        return (f"{where} has {_count(value)} of {_count(documents)} documents that are not valid UTF-8; "
                f"re-encode them as UTF-8 or remove them from the source")
    if column == "duplicate_rate":
        return (f"{where}: {_percent(value)} of its documents are duplicates ({_count(row['duplicate_documents'])}/"
                f"{_count(documents)}), above the max {_percent(max_duplicate_rate)}; deduplicate the source or raise "
                f"max_duplicate_rate")
    if column == "empty_documents":
        return (f"{where} has {_count(value)} empty documents ({_percent(row['empty_rate'])} of {_count(documents)}); "
                f"they add no tokens — check how the source is split into documents")
    if column == "overlong_documents":
        return (f"{where} has {_count(value)} overlong documents ({_percent(row['overlong_rate'])} of "
                f"{_count(documents)}), longer than the prepare step's limit")
    return f"{where}: {column} = {value} failed {kind}"


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in sorted(names))


def _count(value) -> str:
    return str(int(value)) if isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value) else str(value)


def _percent(value) -> str:
    return f"{value:.1%}" if isinstance(value, numbers.Real) and math.isfinite(value) else "?"

"""Scorecard validation with Great Expectations: nothing downstream trusts a scorecard before it
passes.

The checks: every suite domain and slice present for every model, no missing values, each value
finite and inside its metric's range, n > 0, one row per (model, domain, slice, metric). A failure
raises ``ValidationFailed`` listing each failed expectation in words (exit code 2).
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from harness.errors import ValidationFailed
from harness.metrics import metric_range
from harness.registry import Suite
from harness.scorecard import Scorecard

# GX rejects infinite bounds; this stands for "no upper bound" while still rejecting inf.
_FINITE_MAX = 1e300


def expectations(suite: Suite, models: list[str], metrics: list[str]):
    """The expectation suite for a scorecard of these models on this suite."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expected_pairs = sorted(f"{m}/{d.name}" for m in models for d in suite.domains)
    expected_slices = sorted(f"{m}/{d.name}/{s.name}" for m in models for d in suite.domains for s in d.slices)
    checks = gx.ExpectationSuite(name=f"scorecard-{suite.name}")
    checks.add_expectation(gxe.ExpectColumnDistinctValuesToEqualSet(column="model_domain", value_set=expected_pairs))
    checks.add_expectation(gxe.ExpectColumnDistinctValuesToEqualSet(column="model_primary_slice", value_set=expected_slices))
    checks.add_expectation(gxe.ExpectCompoundColumnsToBeUnique(column_list=["model", "domain", "slice", "metric"]))
    for column in ("model", "domain", "slice", "metric", "value", "n"):
        checks.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    checks.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n", min_value=1))
    for metric in metrics:
        low, high = metric_range(metric)
        checks.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="value", min_value=low if math.isfinite(low) else -_FINITE_MAX,
            max_value=high if math.isfinite(high) else _FINITE_MAX,
            row_condition=f'metric=="{metric}"', condition_parser="pandas",
        ))
    return checks


def _frame(scorecard: Scorecard) -> pd.DataFrame:
    rows = scorecard.rows.copy()
    rows["model_domain"] = rows["model"] + "/" + rows["domain"]
    # Only the slices' counting metrics take part in the presence check; the others are null.
    rows["model_primary_slice"] = (rows["model"] + "/" + rows["domain"] + "/" + rows["slice"]).where(rows["primary"].astype(bool))
    return rows


def _describe(result, frame: pd.DataFrame) -> str:
    config = result.expectation_config
    kwargs, found = config.kwargs, result.result or {}
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list", []))
    examples = found.get("partial_unexpected_list") or []
    if config.type == "expect_column_distinct_values_to_equal_set":
        present = set(frame[column].dropna())
        missing = sorted(set(kwargs["value_set"]) - present)
        extra = sorted(present - set(kwargs["value_set"]))
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
        what = "model/domain" if column == "model_domain" else "model/domain/slice"
        return f"every {what} must be present: {'; '.join(parts) or 'mismatch'}"
    if config.type == "expect_column_values_to_be_between":
        condition = kwargs.get("row_condition")
        if isinstance(condition, dict):  # GX hands the pandas condition back wrapped
            condition = condition.get("pass_through_filter")
        scope = f" where {condition}" if condition else ""
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"in [{low}, {'∞' if high == _FINITE_MAX else high}]" if high is not None else f">= {low}"
        return f"{column}{scope} must be finite and {bounds}; got {examples[:5]}"
    if config.type == "expect_column_values_to_not_be_null":
        return f"{column} must not be missing; {found.get('unexpected_count', '?')} row(s) are"
    if config.type == "expect_compound_columns_to_be_unique":
        return f"one row per ({column}); duplicates: {examples[:3]}"
    return f"{config.type} on {column} failed"


def validate_scorecard(scorecard: Scorecard, suite: Suite) -> dict:
    """Run the checks; return GX's result as a dict, or raise ``ValidationFailed``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX sets this logger to INFO itself and then announces a temporary folder on every run.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    frame = _frame(scorecard)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas("kdh").add_dataframe_asset("scorecard")
             .add_batch_definition_whole_dataframe("all"))
    models = list(scorecard.models) or scorecard.model_names
    checks = context.suites.add(expectations(suite, models, sorted(set(frame["metric"].dropna()))))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="scorecard", data=batch, suite=checks))
    result = definition.run(batch_parameters={"dataframe": frame})
    if not result.success:
        raise ValidationFailed([_describe(r, frame) for r in result.results if not r.success])
    return result.to_json_dict()

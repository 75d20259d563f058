"""Console and Markdown text for the distillation analytics (pure: records in, text out):
agreement and calibration per domain, trend alerts, recommendations."""

from __future__ import annotations

import pandas as pd

from harness.report import table
from harness.scorecard import Scorecard


def agreement_table(scorecard: Scorecard) -> pd.DataFrame:
    """Per model and domain: how the model agrees with the reference, and each one's calibration."""
    found = scorecard.agreement_domains
    methods = scorecard.agreement.groupby(["model", "domain"], sort=False)["method"].first()
    found.insert(2, "method", [methods.get((r.model, r.domain), "") for r in found.itertuples()])
    return found.rename(columns={"top1_agreement": "top1_agree", "ece": "ece", "reference_ece": f"{scorecard.reference}_ece"})


def agreement_report(scorecard: Scorecard) -> str:
    if scorecard.agreement.empty:
        return ""
    title = (f"Agreement with {scorecard.reference} and calibration per domain (top-1 agreement, "
             f"KL({scorecard.reference} ‖ model) and JS in bits per position, expected calibration error; "
             "docs/analytics.md)")
    return "\n".join([title, "", table(agreement_table(scorecard))])

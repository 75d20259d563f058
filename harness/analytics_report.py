"""Console and Markdown text for the distillation analytics (pure: records in, text out):
agreement and calibration per domain, the efficiency profile's ratios, trend alerts, recommendations."""

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


def profile_ratios(table: pd.DataFrame, reference: str, retention: pd.DataFrame) -> pd.DataFrame:
    """Per model other than the reference and batch size: its figures over the reference's (below 1:
    cheaper, for latency, memory, parameters and size; above 1: faster, for tokens/s), beside its mean
    retention over the domains (``retention``: the scorecard's domains table)."""
    ref = table[table["model"] == reference].set_index("batch")
    out = []
    for row in table[table["model"] != reference].itertuples():
        if row.batch not in ref.index:
            continue
        base = ref.loc[row.batch]
        mine = retention.loc[retention["model"] == row.model, "retention"]
        out.append({"model": row.model, "batch": row.batch, "retention": float(mine.mean()) if len(mine) else float("nan"),
                    **{f"{c} ÷ {reference}": getattr(row, c) / base[c] if base[c] else float("nan")
                       for c in ("ms_per_token", "ttft_ms", "tokens_per_s", "peak_memory_mb", "parameters", "bytes_on_disk")}})
    return pd.DataFrame(out)

"""Vocabulary alignment of a teacher and a student tokenizer, per domain: how hard a cross-tokenizer
pair is, seen before distilling it.

On each domain's test text (what the suite scores), for two byte-level tokenizers:

- ``shared_tokens``: the share of the teacher's tokens (occurrences in the text) whose bytes are
  also one token of the student's vocabulary: where a token-level mapping could carry the teacher's
  probability over unchanged;
- ``shared_boundaries``: of the byte offsets where either tokenizer ends a token, the share where
  both do: the aligned boundaries harness/agreement.py compares next-byte predictions at;
- ``teacher_tokens_per_byte``, ``student_tokens_per_byte``: how finely each one cuts the text
  (lower: longer tokens, a shorter sequence for the same text).

Pure apart from the tokenizers it is handed (docs/analytics.md).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.agreement import is_byte_level, token_bytes

ALIGNMENT_COLUMNS = ["domain", "documents", "bytes", "teacher_tokens", "student_tokens", "shared_tokens",
                     "shared_boundaries", "teacher_tokens_per_byte", "student_tokens_per_byte"]


def _ends(ids: list[int], table: list[bytes | None]) -> list[int]:
    ends, at = [], 0
    for token in ids:
        at += len(table[token] or b"")
        ends.append(at)
    return ends


def domain_alignment(teacher, student, texts: list[str], tables: list | None = None) -> dict:
    """The figures of the module docstring over one domain's texts (``tables``: both tokenizers'
    ``token_bytes``, computed once for every domain)."""
    tables = tables or [token_bytes(t, len(t)) for t in (teacher, student)]
    student_strings = {b for b in tables[1] if b}
    counts = {"bytes": 0, "teacher_tokens": 0, "student_tokens": 0, "shared": 0, "both": 0, "either": 0}
    for text in texts:
        ids_t = teacher(text, add_special_tokens=False)["input_ids"]
        ids_s = student(text, add_special_tokens=False)["input_ids"]
        ends_t, ends_s = set(_ends(ids_t, tables[0])), set(_ends(ids_s, tables[1]))
        counts["bytes"] += len(text.encode("utf-8"))
        counts["teacher_tokens"] += len(ids_t)
        counts["student_tokens"] += len(ids_s)
        counts["shared"] += sum(tables[0][i] in student_strings for i in ids_t)
        counts["both"] += len(ends_t & ends_s)
        counts["either"] += len(ends_t | ends_s)
    n_bytes = counts["bytes"]
    return {"documents": len(texts), "bytes": n_bytes, "teacher_tokens": counts["teacher_tokens"],
            "student_tokens": counts["student_tokens"],
            "shared_tokens": counts["shared"] / counts["teacher_tokens"] if counts["teacher_tokens"] else math.nan,
            "shared_boundaries": counts["both"] / counts["either"] if counts["either"] else math.nan,
            "teacher_tokens_per_byte": counts["teacher_tokens"] / n_bytes if n_bytes else math.nan,
            "student_tokens_per_byte": counts["student_tokens"] / n_bytes if n_bytes else math.nan}


def alignment_report(teacher, student, texts: dict[str, list[str]]) -> pd.DataFrame:
    """Per domain (``texts``: domain → its texts), ALIGNMENT_COLUMNS. Both tokenizers must be byte-level
    (GPT-2, Qwen2, Llama 3, the demo world's): ValueError otherwise, naming which is not."""
    for role, tokenizer in (("teacher", teacher), ("student", student)):
        if not is_byte_level(tokenizer):
            raise ValueError(f"the {role}'s tokenizer ({type(tokenizer).__name__}) is not byte-level BPE; the "
                             "alignment report compares byte offsets of byte-level tokenizers only")
    tables = [token_bytes(t, len(t)) for t in (teacher, student)]
    rows = [{"domain": domain, **domain_alignment(teacher, student, found, tables)} for domain, found in texts.items()]
    return pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)

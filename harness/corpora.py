"""A suite's training corpora → the token store a distillation reads (`kdh prepare`; docs/token-store.md).

Each suite domain's ``train:`` and ``validation:`` paths (files or folders), or the ones given on
the command line instead, are tokenized with the student's tokenizer by ``distiller.prepare``. With
no ``--out`` the store lives under ``$KDH_HOME/stores/<key>``, its key the digest of the inputs: a
`kdh distill` or `kdh loop` given the same corpus and tokenizer finds it and tokenizes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import console, home
from harness.errors import BadInput, distill_errors
from harness.registry import Suite


def parse_corpus_flags(flags: list[str] | None, flag: str) -> dict[str, list[Path]]:
    """``DOMAIN=PATH`` flags (repeatable; one domain may take several paths) → {domain: [paths]}."""
    out: dict[str, list[Path]] = {}
    for given in flags or []:
        domain, sep, path = given.partition("=")
        if not sep or not domain or not path:
            raise BadInput(f"{flag} {given!r}: expected DOMAIN=PATH (a file or a folder)")
        out.setdefault(domain, []).append(Path(path).expanduser())
    return out


def suite_corpora(suite: Suite, train: dict[str, list[Path]] | None = None,
                  validation: dict[str, list[Path]] | None = None) -> dict[str, dict[str, list[Path]]]:
    """{domain: {"train": paths, "validation": paths}} for every suite domain: the paths given,
    else the suite's. Bad input names a domain the suite lacks, or one with no corpus."""
    names = [d.name for d in suite.domains]
    for flag, given in (("--corpus", train or {}), ("--validation", validation or {})):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise BadInput(f"{flag}: domain(s) {', '.join(unknown)} are not in the suite {suite.path} "
                           f"(its domains: {', '.join(names)}); add them to the suite or fix the name")
    corpora, missing = {}, []
    for domain in suite.domains:
        splits = {"train": (train or {}).get(domain.name) or ([domain.train] if domain.train else []),
                  "validation": (validation or {}).get(domain.name) or ([domain.validation] if domain.validation else [])}
        missing += [f"{domain.name} ({split})" for split, paths in splits.items() if not paths]
        corpora[domain.name] = splits
    if missing:
        raise BadInput(f"{suite.path}: domain(s) {', '.join(missing)} have no corpus: set `train:` and `validation:` "
                       "in the suite, or give --corpus DOMAIN=PATH / --validation DOMAIN=PATH")
    return corpora


def load_tokenizer(source: str):
    """The tokenizer of a model folder (or a tokenizer folder), or bad input naming it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError) as err:
        raise BadInput(f"{source}: no tokenizer could be loaded from it ({str(err).splitlines()[0]}); give a model "
                       "or tokenizer folder") from None


def store_for(suite: Suite, tokenizer_source: str, *, out: Path | None = None,
              corpora: dict[str, dict[str, list[Path]]] | None = None, workers: int | None = None,
              provenance: dict | None = None):
    """The suite's token store for this tokenizer: found when it is there, made when it is not.
    ``provenance`` (where the corpora's domain labels came from) goes into its manifest and key."""
    from distiller.prepare import prepare

    tokenizer = load_tokenizer(tokenizer_source)
    with distill_errors():
        return prepare(corpora or suite_corpora(suite), tokenizer, out, root=home.kdh_home() / "stores",
                       workers=workers, progress_stream=console.progress_stream(), provenance=provenance)


def contamination(suite: Suite, store_dir: Path, tokenizer_source: str) -> pd.DataFrame:
    """The n-gram overlap between each domain's training tokens in the store and the suite's test
    slices (harness/contamination.py), the slices tokenized as the store was (``tokenizer_source``
    must hold that tokenizer). Kept in the kdh cache per (store, suite): a later gate scans nothing."""
    from distiller.files import write_atomic_text
    from distiller.store import TokenStore
    from harness.contamination import NGRAM, contamination_report, scan, suite_test_ngrams

    tokenizer = load_tokenizer(tokenizer_source)
    with distill_errors():
        store = TokenStore(Path(store_dir))
        store.check_tokenizer(tokenizer)

    cached = home.kdh_home() / "cache" / "contamination" / f"{store.key[:16]}-{suite.fingerprint()[:16]}-{NGRAM}.json"
    if cached.is_file():
        return pd.read_json(cached, orient="records")
    test = suite_test_ngrams(suite, tokenizer)
    matches = {d: scan(test, store.stream(d, "train").chunks()) for d in store.domains}
    report = contamination_report(matches, test)
    write_atomic_text(cached, report.to_json(orient="records"))
    return report


def worst_per_slice(report: pd.DataFrame) -> pd.DataFrame:
    """Per test slice, the training domain that holds most of its examples: what the gate checks."""
    checked = report[report["checked"].astype(bool)].sort_values(["slice", "rate", "domain"], ascending=[True, False, True])
    return checked.drop_duplicates("slice").reset_index(drop=True)

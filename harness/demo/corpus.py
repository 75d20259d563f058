"""The demo world's text: four clearly different domains and their splits.

Everything here is pure and deterministic for a seed: the same recipe on the same Python gives the
same documents and splits, byte for byte (test items: ``items.py``). ``code`` and ``prose`` are read
from what every Python install carries (the stdlib's source, the language reference text in
``pydoc_data``); ``arithmetic`` and ``records`` are generated. No file is written here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import sysconfig
from pathlib import Path
from typing import Mapping, Sequence

from harness.errors import RuntimeFailure

DOMAINS = ("code", "prose", "arithmetic", "records")
SPLITS = ("train", "validation", "test")

Corpus = dict[str, dict[str, list[str]]]  # domain -> split -> documents


class SplitOverlapError(RuntimeFailure):
    """A document sits in two splits of one domain: test scores would measure memorisation."""


def normalise(text: str) -> str:
    """Whitespace-insensitive identity of a document, used for dedup and the overlap check."""
    return " ".join(text.split())


def dedupe(docs: Sequence[str]) -> list[str]:
    first = {}
    for doc in docs:
        first.setdefault(normalise(doc), doc)
    return [doc for key, doc in first.items() if key]


def _unit_hash(*parts: object) -> float:
    """A seeded, platform-independent number in [0, 1) (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(domain: str, docs: Sequence[str], seed: int, fractions: Mapping[str, float]) -> dict[str, list[str]]:
    """Split by a seeded hash of the normalised content, so a document's split never depends on
    what else is in the corpus (adding a file does not reshuffle the others)."""
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    test_cut, validation_cut = fractions["test"], fractions["test"] + fractions["validation"]
    for doc in dedupe(docs):
        u = _unit_hash(seed, domain, normalise(doc))
        splits["test" if u < test_cut else "validation" if u < validation_cut else "train"].append(doc)
    return splits


def check_splits_disjoint(corpus: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
    """Raise SplitOverlapError if any (normalised) document of a domain is in two of its splits."""
    for domain, splits in corpus.items():
        first_seen: dict[str, str] = {}
        for split, docs in splits.items():
            for doc in docs:
                key = normalise(doc)
                other = first_seen.setdefault(key, split)
                if other != split:
                    example = key[:80] + ("..." if len(key) > 80 else "")
                    raise SplitOverlapError(f"domain {domain!r}: a document is in both the {other!r} and "
                                            f"{split!r} splits: {example!r}")


def corpus_fingerprint(corpus: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    digest = hashlib.sha256()
    for domain in sorted(corpus):
        for split in sorted(corpus[domain]):
            digest.update(f"\0{domain}\0{split}\0{len(corpus[domain][split])}\0".encode())
            for doc in corpus[domain][split]:
                digest.update(doc.encode() + b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# code and prose: what ships with Python

_SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "encodings", "pydoc_data"}
_TOP_LEVEL = re.compile(r"^(def |class |async def |@)")


def stdlib_files(seed: int) -> list[tuple[str, Path]]:
    """Stdlib .py files (skipping tests, IDLE, generated codec tables and the prose source), in a
    seeded but stable order, so a byte budget takes a spread of modules, not just a*.py."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _SKIPPED_DIRS)  # prune, don't descend
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        files += [(name if rel == "." else f"{rel}/{name}", Path(folder, name))
                  for name in names if name.endswith(".py")]
    return sorted(files, key=lambda item: (_unit_hash(seed, "file", item[0]), item[0]))


def chunk_source(source: str, target_chars: int = 1200, max_chars: int = 2400) -> list[str]:
    """Cut a file into documents at top-level def/class boundaries once a chunk is big enough,
    else at a blank line, else anywhere (very long functions)."""
    docs, current, size = [], [], 0
    for line in source.splitlines():
        boundary = (_TOP_LEVEL.match(line) and size >= target_chars // 2
                    and not (current and current[-1].startswith("@")))
        if boundary or (not line.strip() and size >= target_chars) or size >= max_chars:
            docs.append("\n".join(current).strip("\n"))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    docs.append("\n".join(current).strip("\n"))
    return [doc for doc in docs if len(doc) >= 200]


def code_documents(budget_bytes: int, seed: int) -> tuple[list[str], set[str]]:
    """Source chunks up to the budget; also returns the files used, which prose then avoids so that
    prose test docstrings are not sitting verbatim in code's training text."""
    docs, used, total = [], set(), 0
    for name, path in stdlib_files(seed):
        if total >= budget_bytes:
            break
        for chunk in chunk_source(path.read_text(encoding="utf-8", errors="replace")):
            if total < budget_bytes:
                docs.append(chunk)
                total += len(chunk.encode())
        used.add(name)
    return docs, used


def reflow_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; plain ones are unwrapped into one line, indented ones
    (grammar, examples) kept as they are."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").splitlines() if line.strip()]
        if not lines or set(lines[0].strip()) <= set("*=-"):
            continue
        if all(not line[:1].isspace() for line in lines) and not any(set(line) <= set("*=-") for line in lines):
            paragraphs.append(" ".join(" ".join(lines).split()))  # also the docs' two spaces after a period
        else:
            paragraphs.append("\n".join(lines))
    return paragraphs


def pack(paragraphs: Sequence[str], target_chars: int, seen: set[str]) -> list[str]:
    """Group paragraphs into documents of about ``target_chars``, skipping paragraphs already in
    ``seen``: the reference topics repeat whole passages (``specialnames`` holds most of the data
    model), and a repeated passage would put test text into training and memorised distractors
    into the multiple-choice items."""
    docs, current = [], []
    for paragraph in paragraphs:
        if (key := normalise(paragraph)) in seen:
            continue
        seen.add(key)
        current.append(paragraph)
        if sum(len(p) for p in current) >= target_chars:
            docs.append("\n\n".join(current))
            current = []
    if current:
        docs.append("\n\n".join(current))
    return docs


_DOCSTRING = re.compile(r'^[ \t]*[rR]?"""(.*?)"""', re.MULTILINE | re.DOTALL)
_NOT_WORDS = re.compile(r"[^\w\s]|[\d_]")


def prose_documents(budget_bytes: int, seed: int, avoid_files: set[str], target_chars: int = 700) -> list[str]:
    """The language reference (pydoc_data.topics), then stdlib docstrings from files code did not use."""
    from pydoc_data.topics import topics

    docs, total, seen = [], 0, set()
    for key in sorted(topics, key=lambda k: (_unit_hash(seed, "topic", k), k)):
        if total < budget_bytes:
            new = pack(reflow_paragraphs(topics[key]), target_chars, seen)
            docs += new
            total += sum(len(d.encode()) for d in new)
    for name, path in stdlib_files(seed + 1):
        if total >= budget_bytes:
            break
        if name in avoid_files:
            continue
        for match in _DOCSTRING.finditer(path.read_text(encoding="utf-8", errors="replace")):
            text = inspect.cleandoc(match.group(1))
            if len(text) >= 300 and len(_NOT_WORDS.sub("", text)) > 0.8 * len(text):  # prose, not tables
                new = pack(reflow_paragraphs(text), target_chars, seen)
                docs += new
                total += sum(len(d.encode()) for d in new)
    return docs


# ---------------------------------------------------------------------------------------------
# arithmetic: seeded problems with answers

_NAMES = ["Ann", "Ben", "Carla", "Dev", "Elif", "Femi", "Goro", "Hana", "Ines", "Jon", "Kira", "Leo"]
_THINGS = ["apples", "pens", "books", "coins", "stamps", "marbles", "cards", "shells"]


def arithmetic_problem(rng: random.Random) -> str:
    """One problem on one line, ending in 'A: n' or 'Answer: n'. Numbers stay small enough that a
    small model can learn the facts, so the teacher/student difference shows in the scores."""
    kind = rng.randrange(7)
    name, friend = rng.sample(_NAMES, 2)
    things = rng.choice(_THINGS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if kind == 0:
        x, y = rng.randint(0, 50), rng.randint(0, 9)
        return f"Q: {x} + {y} = ? A: {x + y}"
    if kind == 1:
        x, y = rng.randint(10, 59), rng.randint(0, 9)
        return f"Q: {x} - {y} = ? A: {x - y}"
    if kind == 2:
        return f"Q: {a} * {b} = ? A: {a * b}"
    if kind == 3:
        return f"{name} has {a} {things} and buys {b} more. How many {things} does {name} have? Answer: {a + b}"
    if kind == 4:
        return f"{name} has {a + b} {things} and gives {b} to {friend}. How many {things} does {name} have left? Answer: {a}"
    if kind == 5:
        return f"A box holds {a} {things}. How many {things} are in {b} boxes? Answer: {a * b}"
    return f"{name} shares {a * b} {things} equally among {b} friends. How many {things} does each friend get? Answer: {a}"


def arithmetic_documents(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(f"{seed}:arithmetic")
    return ["\n".join(arithmetic_problem(rng) for _ in range(rng.randint(6, 12))) for _ in range(n_docs)]


# ---------------------------------------------------------------------------------------------
# records: JSON objects, CSV with a header, log lines. Some fields follow from others (email from
# name, country from city, fee from plan, price from product, message from service), so a model
# that learned the domain can predict them and the test items can ask for them.

FIRST_NAMES = ["maria", "john", "aiko", "lars", "fatima", "chen", "olga", "pedro", "amara", "noah", "priya", "lucas"]
LAST_NAMES = ["lopez", "smith", "tanaka", "berg", "haddad", "wei", "ivanova", "silva", "okafor", "klein", "rao", "moreau"]
_MAIL_DOMAINS = ["example.com", "mail.test", "corp.example"]
CITY_COUNTRY = {"Lyon": "France", "Paris": "France", "Osaka": "Japan", "Kyoto": "Japan", "Porto": "Portugal",
                "Munich": "Germany", "Hamburg": "Germany", "Toronto": "Canada", "Seville": "Spain",
                "Cusco": "Peru", "Lagos": "Nigeria", "Pune": "India", "Milan": "Italy"}
PLAN_FEE = {"free": 0, "basic": 9, "pro": 29, "team": 99}
PRODUCT_PRICE = {"widget": "2.50", "gadget": "12.00", "sprocket": "0.75", "gizmo": "7.25",
                 "bracket": "3.40", "valve": "18.60", "flange": "1.95", "hinge": "5.10"}
SERVICE_MESSAGES = {  # level and message template, per service
    "auth": [("INFO", "user {n} logged in"), ("WARN", "password retry {k} for user {n}"),
             ("ERROR", "token signature invalid for user {n}")],
    "db": [("INFO", "query ok in {k} ms"), ("WARN", "slow query took {n} ms"),
           ("ERROR", "connection pool exhausted ({k} waiting)")],
    "cache": [("INFO", "hit ratio {k}%"), ("INFO", "evicted {n} keys"), ("WARN", "memory at {k}% of limit")],
    "billing": [("INFO", "invoice {n} sent"), ("ERROR", "card declined for invoice {n}"),
                ("INFO", "refund issued for invoice {n}")],
    "scheduler": [("INFO", "job {n} started"), ("INFO", "job {n} finished in {k} s"),
                  ("ERROR", "job {n} missed its deadline")],
}


def log_message(service: str, rng: random.Random) -> tuple[str, str]:
    level, template = rng.choice(SERVICE_MESSAGES[service])
    return level, template.format(n=rng.randint(100, 9999), k=rng.randint(2, 99))


def _date(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def records_document(rng: random.Random) -> str:
    """5-12 records of one kind: JSON users, CSV orders with a header, or log lines."""
    kind, n, rows = rng.randrange(3), rng.randint(5, 12), []
    if kind == 0:
        start = rng.randint(1000, 9000)
        for i in range(n):
            first, last, city, plan = (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), rng.choice(list(CITY_COUNTRY)),
                                       rng.choice(list(PLAN_FEE)))
            rows.append(json.dumps({
                "id": start + i, "name": f"{first.title()} {last.title()}",
                "email": f"{first}.{last}@{rng.choice(_MAIL_DOMAINS)}", "city": city,
                "country": CITY_COUNTRY[city], "plan": plan, "monthly_fee": PLAN_FEE[plan],
                "active": rng.random() < 0.8}))
        return "\n".join(rows)
    if kind == 1:
        order, rows = rng.randint(10000, 90000), ["order_id,date,product,quantity,unit_price"]
        for i in range(n):
            product = rng.choice(list(PRODUCT_PRICE))
            rows.append(f"{order + i},{_date(rng)},{product},{rng.randint(1, 20)},{PRODUCT_PRICE[product]}")
        return "\n".join(rows)
    day, seconds = _date(rng), rng.randint(0, 80000)
    for _ in range(n):
        seconds += rng.randint(1, 300)
        service = rng.choice(list(SERVICE_MESSAGES))
        level, message = log_message(service, rng)
        clock = f"{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        rows.append(f"{day} {clock} {level:<5} [{service}] {message}")
    return "\n".join(rows)


def records_documents(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(f"{seed}:records")
    return [records_document(rng) for _ in range(n_docs)]


def build_corpus(recipe: Mapping) -> Corpus:
    """All four domains, deduplicated, split, and checked; ``recipe`` is the world recipe's corpus part."""
    seed = recipe["seed"]
    code, used_files = code_documents(recipe["code_bytes"], seed)
    raw = {
        "code": code,
        "prose": prose_documents(recipe["prose_bytes"], seed, used_files),
        "arithmetic": arithmetic_documents(recipe["arithmetic_docs"], seed),
        "records": records_documents(recipe["records_docs"], seed),
    }
    corpus = {domain: assign_splits(domain, raw[domain], seed, recipe["split_fractions"]) for domain in DOMAINS}
    check_splits_disjoint(corpus)
    return corpus

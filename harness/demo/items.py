"""Multiple-choice test items for the demo world, built from the test split only.

Each item asks for the true continuation of a held-out context among three distractors: the next
line of code, the next sentence of prose, the answer to a problem (against plausible slips), the
value of a record's field. Each choice is scored literally after its context (the task template's
``target_delimiter`` is ""), so choices carry their own leading separator. Pure and seeded.
"""

from __future__ import annotations

import json
import random
import re
from typing import Callable, Sequence

from harness.demo.corpus import (
    CITY_COUNTRY, FIRST_NAMES, LAST_NAMES, PLAN_FEE, PRODUCT_PRICE, SERVICE_MESSAGES, log_message, normalise,
)

McItem = dict  # {"context": str, "choices": [4 str], "label": int}

Cut = tuple[str, str, "list[str] | None"]  # context, true continuation, own distractors (None: draw from other docs)


def _line_cuts(doc: str, rng: random.Random) -> list[Cut]:
    lines = doc.split("\n")
    return [("\n".join(lines[:i]) + "\n", lines[i], None)
            for i in range(2, min(len(lines), 30)) if len(lines[i].strip()) >= 12]


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'][.!?]) (?=[A-Z])")


def _sentence_cuts(doc: str, rng: random.Random) -> list[Cut]:
    cuts = []
    for match in _SENTENCE_END.finditer(doc):
        rest = doc[match.end():]
        following = _SENTENCE_END.search(rest)
        sentence = rest[: following.start() if following else len(rest)].split("\n")[0]
        if match.start() >= 40 and 20 <= len(sentence) <= 250:
            cuts.append((doc[: match.start()], " " + sentence, None))
    return cuts


def plausible_slips(question: str, value: int, rng: random.Random) -> list[str]:
    """Wrong answers from plausible slips: the wrong operation on the same two numbers, or a
    carry error of ten; off by one or two only when those run out. Off-by-one alone would ask a
    demo-sized model for exact arithmetic, which neither model has, and the items would not tell
    the teacher from the student."""
    x, y = map(int, re.findall(r"\d+", question)[-2:])
    slips = {x + y, abs(x - y), x * y, value + 10, value - 10}
    slips = sorted(c for c in slips if c >= 0 and c != value)
    if len(slips) < 3:
        slips += [c for c in (value + 1, value + 2, value + 3) if c not in slips]
    return [f" {c}" for c in rng.sample(slips, 3)]


_ANSWER = re.compile(r"^(.*(?:A:|Answer:))( \d+)$")


def _arithmetic_cuts(doc: str, rng: random.Random) -> list[Cut]:
    lines, cuts = doc.split("\n"), []
    for i, line in enumerate(lines):
        if match := _ANSWER.match(line):
            context = "\n".join(lines[:i] + [match.group(1)])
            cuts.append((context, match.group(2), plausible_slips(match.group(1), int(match.group(2)), rng)))
    return cuts


_EMAIL_NAMES = [f"{first}.{last}" for first in FIRST_NAMES for last in LAST_NAMES]


def _others(values, true, rng: random.Random, k: int = 3) -> list:
    return rng.sample(sorted(set(values) - {true}), k)


def _records_cuts(doc: str, rng: random.Random) -> list[Cut]:
    lines, cuts = doc.split("\n"), []
    for i, line in enumerate(lines):
        before = "\n".join(lines[:i]) + ("\n" if i else "")
        if line.startswith("{"):
            record = json.loads(line)
            name, domain = record["email"].split("@")
            options = {  # wrong emails keep the mail domain: only the name tells them apart
                "email": [json.dumps(f"{n}@{domain}") for n in _others(_EMAIL_NAMES, name, rng)],
                "country": [json.dumps(c) for c in _others(CITY_COUNTRY.values(), record["country"], rng)],
                "monthly_fee": [str(f) for f in _others(PLAN_FEE.values(), record["monthly_fee"], rng)],
            }
            for field, wrong in options.items():
                key = f'"{field}":'
                cut = line.index(key) + len(key)
                cuts.append((before + line[:cut], " " + json.dumps(record[field]), [" " + w for w in wrong]))
        elif i > 0 and line.count(",") == 4:
            fields = line.split(",")
            wrong = _others(PRODUCT_PRICE.values(), fields[4], rng)
            cuts.append((before + ",".join(fields[:4]) + ",", fields[4], wrong))
        elif match := re.match(r"^(.*?\[(\w+)\])( .*)$", line):
            services = _others(SERVICE_MESSAGES, match.group(2), rng)
            cuts.append((before + match.group(1), match.group(3), [" " + log_message(s, rng)[1] for s in services]))
    return cuts


_CUTS: dict[str, Callable[[str, random.Random], list[Cut]]] = {
    "code": _line_cuts, "prose": _sentence_cuts, "arithmetic": _arithmetic_cuts, "records": _records_cuts}


def _length_matched(answer: str, pool: list[tuple[int, str]], doc_index: int, rng: random.Random) -> list[str] | None:
    """Three continuations from other test docs, closest in length to the true one, so that a
    length prior alone cannot pick the answer."""
    sampled = {pool[j][1] for j in (rng.randrange(len(pool)) for _ in range(40))
               if pool[j][0] != doc_index and normalise(pool[j][1]) != normalise(answer)}
    if len(sampled) < 3:
        return None
    return sorted(sorted(sampled), key=lambda s: abs(len(s) - len(answer)))[:3]


def build_mc_items(domain: str, test_docs: Sequence[str], n_items: int, seed: int,
                   max_choice_bytes: int | None = None) -> list[McItem]:
    """Up to ``n_items`` items: one cut per test doc per round, more rounds while items are short.
    ``max_choice_bytes`` skips items with a longer choice: lm-eval refuses a choice longer than the
    model's context, and a byte-level tokenizer, whatever its vocabulary, needs at most one token
    per byte, so the items fit every model of the world whatever its tokenizer."""
    rng = random.Random(f"{seed}:{domain}:mc")
    cuts = [_CUTS[domain](doc, rng) for doc in test_docs]
    pool = [(i, answer) for i, doc_cuts in enumerate(cuts) for _, answer, _ in doc_cuts]
    items: list[McItem] = []
    seen: set[tuple[str, str]] = set()
    while len(items) < n_items and any(cuts):
        for i, doc_cuts in enumerate(cuts):
            if not doc_cuts or len(items) >= n_items:
                continue
            context, answer, wrong = doc_cuts.pop(rng.randrange(len(doc_cuts)))
            wrong = wrong or _length_matched(answer, pool, i, rng)
            if wrong is None or len({answer, *wrong}) < 4 or (context, answer) in seen:
                continue
            if max_choice_bytes is not None and max(len(c.encode()) for c in (answer, *wrong)) > max_choice_bytes:
                continue
            seen.add((context, answer))
            choices = [answer, *wrong]
            rng.shuffle(choices)
            items.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return items


# ---------------------------------------------------------------------------------------------
# Generation items: a prompt and the true rest of its line (suites/tasks/generation.yaml)

GenItem = dict  # {"prompt": str, "reference": str}

_WORD = re.compile(r"[A-Za-z0-9]")  # what Rouge-L's tokenizer keeps: a reference without it has no words
_LINE_HEAD = re.compile(r"^\s*\S+")  # a code line's indentation and first word, which the prompt gives away
STOPS = ("\n", ". ")  # the template's `until`: the end of a line or of a sentence
_SPLIT_AT = {"code", "prose"}  # where a long continuation starts later (a line's or a sentence's start → its rest)


def until_stop(text: str) -> str:
    """``text`` up to its first stop sequence: what lm-eval keeps of a generation, applied to the truth."""
    return text[:min((i for i in (text.find(s) for s in STOPS) if i >= 0), default=len(text))]


def _tail(text: str, max_bytes: int) -> str:
    """The end of a prompt in at most ``max_bytes`` UTF-8 bytes: whole lines where they fit."""
    if len(text.encode()) <= max_bytes:
        return text
    lines = text.split("\n")
    kept = lines[-1]
    for line in reversed(lines[:-1]):
        if len((line + "\n" + kept).encode()) > max_bytes:
            break
        kept = line + "\n" + kept
    return kept.encode()[-max_bytes:].decode("utf-8", "ignore")


def _split(domain: str, continuation: str, max_bytes: int) -> int | None:
    """Where the reference starts in a true continuation: at once (arithmetic, records: the answer
    is the whole), or, for code and prose, at the first word boundary after which it fits in
    ``max_bytes`` (for code after the line's first word at least); None where it cannot fit."""
    if domain not in _SPLIT_AT:
        return 0 if len(continuation.encode()) <= max_bytes else None
    least = _LINE_HEAD.match(continuation).end() if domain == "code" and _LINE_HEAD.match(continuation) else 0
    for match in re.finditer(r"(?<=\S)\s", continuation):
        if match.start() >= least and len(continuation[match.start():].encode()) <= max_bytes:
            return match.start()
    return None


def _generation_cuts(domain: str, doc: str, rng: random.Random, max_prompt_bytes: int,
                     max_reference_bytes: int) -> list[tuple[str, str]]:
    """(prompt, reference) pairs at the multiple-choice cuts: the reference is the document's own
    text from the cut to its next stop sequence."""
    out = []
    for context, answer, _ in _CUTS[domain](doc, rng):
        if not doc.startswith(context + answer):
            continue
        continuation = until_stop(doc[len(context):])
        split = _split(domain, continuation, max_reference_bytes)
        if split is None:
            continue
        prompt, reference = context + continuation[:split], continuation[split:]
        if _WORD.search(reference) and prompt.strip():
            out.append((_tail(prompt, max_prompt_bytes), reference))
    return out


def build_generation_items(domain: str, test_docs: Sequence[str], n_items: int, seed: int,
                           max_prompt_bytes: int, max_reference_bytes: int = 40) -> list[GenItem]:
    """Up to ``n_items`` prompt → reference items, one cut per test doc per round (as the
    multiple-choice items are drawn). A prompt keeps its last ``max_prompt_bytes`` bytes: with the
    generated tokens it fits the model's context whatever the byte-level tokenizer. References are
    short (at most ``max_reference_bytes``, the rest of one line), so a small model can write them
    within the template's ``max_gen_toks``."""
    rng = random.Random(f"{seed}:{domain}:generation")
    cuts = [_generation_cuts(domain, doc, rng, max_prompt_bytes, max_reference_bytes) for doc in test_docs]
    items: list[GenItem] = []
    seen: set[tuple[str, str]] = set()
    while len(items) < n_items and any(cuts):
        for doc_cuts in cuts:
            if not doc_cuts or len(items) >= n_items:
                continue
            prompt, reference = doc_cuts.pop(rng.randrange(len(doc_cuts)))
            if (prompt, reference) not in seen:
                seen.add((prompt, reference))
                items.append({"prompt": prompt, "reference": reference})
    return items

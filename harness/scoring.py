"""Scoring: each model on each slice of a suite, through ``lm_eval.simple_evaluate`` and ``HFLM``.

The evaluator knows neither the suite nor the model: it gets tasks (inline configs built from the
suite's slices) and an ``HFLM`` over a loaded transformers model. What comes back is mapped into
scorecard rows, with efficiency figures measured around the call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd

from harness import cache, console, generation
from harness import models as model_io
from harness.errors import BadInput, RuntimeFailure
from harness.metrics import METRICS
from harness.models import ModelRef
from harness.registry import Suite, names_builtin_tasks, task_manager
from harness.scorecard import EFFICIENCY_COLUMNS, ITEM_COLUMNS, ROW_COLUMNS, SAMPLE_COLUMNS, Scorecard
from harness.taskfiles import inline_task, task_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    limit: int | None = None  # overrides every slice's limit (for quick runs)
    batch_size: int | None = None  # overrides the suite's default
    bootstrap_iters: int | None = None
    seed: int = 1234
    allow_code: bool = False  # lets lm-eval run tasks marked unsafe_code (they execute model output)
    use_cache: bool = True  # reuse a model's results when nothing that shapes them changed (harness/cache.py)


class PeakMemory:
    """Peak memory while a block runs: allocated bytes on CUDA, else the process's resident set
    (sampled every 20 ms; on CPU the weights and activations live there)."""

    def __init__(self, device: str):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample():
                while not self._stop.is_set():
                    self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
                    self._stop.wait(0.02)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False


def _count_tokens(model) -> tuple[list[int], object]:
    """A hook that counts the token positions each forward pass sees (padding included). It sits on the
    model's body, which both the full forward and BoundedHFLM's body-then-chunked-head path run."""
    seen = [0]

    def hook(_module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            seen[0] += ids.numel()

    return seen, model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


def _slice_groups(suite: Suite, options: ScoringOptions) -> dict[int | None, list[tuple]]:
    """Slices grouped by their effective limit: lm-eval takes one limit per call."""
    groups: dict[int | None, list[tuple]] = defaultdict(list)
    for domain in suite.domains:
        for slice_ in domain.slices:
            limit = options.limit if options.limit is not None else (slice_.limit or suite.defaults.limit)
            groups[limit].append((domain, slice_))
    return groups


@contextmanager
def without_environment_report():
    """lm-eval ends every ``simple_evaluate`` by describing the machine: torch's ``collect_env`` runs
    ``pip list`` and other subprocesses, 0.5–0.7 s a call and a call per slice group and model. kdh logs
    the library versions that shape a score itself (harness/tracking.py), so the description is skipped
    while kdh scores (docs/architecture.md, "what kdh relies on")."""
    from lm_eval import evaluator

    described = evaluator.add_env_info
    evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        evaluator.add_env_info = described


def evaluate_model(ref: ModelRef, suite: Suite,
                   options: ScoringOptions = ScoringOptions()) -> tuple[list[dict], list[dict], dict]:
    """Score one model on every slice: (scorecard rows, per-document samples, efficiency figures)."""
    import lm_eval

    from harness.lm import BoundedHFLM

    model, tokenizer = model_io.load(ref)
    batch_size = options.batch_size or suite.defaults.batch_size
    # simple_evaluate's batch_size does not reach an LM object, and HFLM's own default is 1: set it here
    # (docs/architecture.md, "what kdh relies on"). BoundedHFLM: lm-eval's HFLM holding at most a chunk of
    # logits at a time, not [batch, length, vocabulary] (docs/scoring-memory.md).
    lm = BoundedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = task_manager(names_builtin_tasks(suite))  # the built-ins' index only when a slice names one
    iters = options.bootstrap_iters if options.bootstrap_iters is not None else suite.defaults.bootstrap_iters

    rows: list[dict] = []
    samples: list[dict] = []
    tokens, hook = _count_tokens(model)
    started = time.perf_counter()
    try:
        with PeakMemory(ref.device) as memory, without_environment_report():
            for limit, members in _slice_groups(suite, options).items():
                tasks = [inline_task(s, task_name(d.name, s.name)) for d, s in members]
                try:
                    results = lm_eval.simple_evaluate(
                        model=lm, tasks=tasks, task_manager=manager, limit=limit,
                        num_fewshot=suite.defaults.num_fewshot, bootstrap_iters=iters, log_samples=True,
                        random_seed=options.seed, numpy_random_seed=options.seed,
                        torch_random_seed=options.seed, fewshot_random_seed=options.seed,
                        confirm_run_unsafe_code=options.allow_code,
                    )
                except AssertionError as err:  # lm-eval's internal checks carry no message
                    raise RuntimeFailure(
                        f"model '{ref.name}': lm-eval stopped on an internal check ({err or 'no message'}) while "
                        f"scoring {', '.join(f'{d.name}/{s.name}' for d, s in members)}. The usual cause is a "
                        f"choice or continuation longer than the model's context ({lm.max_length} tokens): "
                        "shorten those items, or score a model with a longer context") from None
                except KeyError as err:  # lm-eval's way of saying a task name is unknown
                    raise BadInput(f"suite {suite.path}: lm-eval does not know the task {err}; "
                                   "check the slice's `task:` (built-in names: `lm-eval ls tasks`)") from None
                except (ConnectionError, OSError) as err:
                    raise RuntimeFailure(f"suite '{suite.name}': a task's data could not be loaded: {err}. Built-in "
                                         "lm-eval tasks read their datasets from the Hugging Face hub: run where it "
                                         "is reachable with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0, or fill the "
                                         "datasets cache first") from None
                if results is None:
                    raise RuntimeFailure(f"model '{ref.name}': lm-eval returned no results")
                for domain, slice_ in members:
                    name = task_name(domain.name, slice_.name) if not slice_.is_builtin else slice_.task
                    rows += _rows(results, ref.name, domain.name, slice_, name)
                    samples += _samples(results, ref.name, domain.name, slice_, name)
    finally:
        hook.remove()
    seconds = time.perf_counter() - started
    efficiency = {
        "model": ref.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes_on_disk": model_io.bytes_on_disk(ref),
        "tokens_per_s": tokens[0] / seconds if seconds > 0 else math.nan,
        "peak_memory_mb": memory.peak_bytes / 2**20,
        "seconds": seconds,
    }
    return rows, samples, efficiency


def _rows(results: dict, model: str, domain: str, slice_, name: str) -> list[dict]:
    """Scorecard rows for one slice from lm-eval's results (``metric,filter`` keys, "N/A" stderrs)."""
    found = results["results"].get(name)
    if found is None:
        raise RuntimeFailure(f"model '{model}': lm-eval returned no result for {domain}/{slice_.name} ({name})")
    n = results.get("n-samples", {}).get(name, {}).get("effective", 0)
    directions = results.get("higher_is_better", {}).get(name, {})
    out = []
    for key, value in found.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr") or filt != slice_.filter or isinstance(value, str):
            continue
        stderr = found.get(f"{metric}_stderr,{filt}")
        primary = metric == slice_.metric
        higher = slice_.higher_is_better if primary else directions.get(
            metric, METRICS[metric].higher_is_better if metric in METRICS else True)
        out.append({
            "model": model, "domain": domain, "slice": slice_.name, "metric": metric,
            "value": float(value) if value is not None else math.nan,
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan,
            "n": int(n), "higher_is_better": bool(higher), "primary": primary, "weight": slice_.weight,
        })
    if not any(r["primary"] for r in out) and not generation.computed_here(slice_):  # kdh's own: score_suite adds it
        log.warning("%s/%s: lm-eval reported no '%s' under filter '%s' (it gave: %s)", domain, slice_.name,
                    slice_.metric, slice_.filter, ", ".join(k for k in found if "," in k))
        # Missing the metric the slice counts is a failed evaluation; keep a NaN row so that
        # validation names it rather than silently dropping the slice.
        out.append({"model": model, "domain": domain, "slice": slice_.name, "metric": slice_.metric,
                    "value": math.nan, "stderr": math.nan, "n": int(n),
                    "higher_is_better": slice_.higher_is_better, "primary": True, "weight": slice_.weight})
    return out


def _samples(results: dict, model: str, domain: str, slice_, name: str) -> list[dict]:
    """The slice's counting metric per document, as (value, weight) (see metrics.from_sums). A metric
    kdh computes from the generations (harness/generation.py) is NaN here, filled in by score_suite."""
    out = []
    for sample in results.get("samples", {}).get(name, []):
        if sample.get("filter", "none") != slice_.filter:
            continue
        if slice_.metric not in sample and not generation.computed_here(slice_):
            continue
        found = sample.get(slice_.metric, math.nan)
        value, weight = (found[0], found[1]) if isinstance(found, (list, tuple)) else (found, 1.0)
        out.append({"model": model, "domain": domain, "slice": slice_.name, "metric": slice_.metric,
                    "doc_id": int(sample["doc_id"]), "doc_hash": str(sample.get("doc_hash", "")),
                    "value": float(value), "weight": float(weight), **_answer(sample)})
    return out


PROMPT_CHARS = 300  # of an item's prompt kept for reading it beside the answers


def _answer(sample: dict) -> dict:
    """What the model answered on one item, for side-by-side reading (the scorecard's ``items``):
    the prompt's end, the true answer, and the model's: the choice with the highest log-likelihood
    (multiple choice), the generated text (generation), nothing for a perplexity document."""
    arguments, responses = sample.get("arguments") or [], sample.get("filtered_resps") or []
    first = arguments[0] if arguments and isinstance(arguments[0], (list, tuple)) else ("", "")
    prompt = str(first[0])[-PROMPT_CHARS:] if first[0] else str(first[1] if len(first) > 1 else "")[:PROMPT_CHARS]
    answer, gold, target = "", "", sample.get("target")
    if responses and all(isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in responses):
        if len(arguments) > 1:  # multiple choice: one (context, choice) request per choice
            best = max(range(len(responses)), key=lambda i: responses[i][0])
            answer = str(arguments[best][1])
            gold = str(arguments[target][1]) if isinstance(target, int) and 0 <= target < len(arguments) else str(target)
    elif responses and isinstance(responses[0], str):  # generation
        answer, gold = responses[0], str(target[0] if isinstance(target, list) and target else target)
    return {"prompt": prompt, "answer": answer, "gold": gold}


def score_suite(suite: Suite, refs: list[ModelRef], options: ScoringOptions = ScoringOptions(),
                reference: str | None = None) -> Scorecard:
    """Score every model on the suite; the reference (for retention) defaults to the first."""
    if not refs:
        raise BadInput("no models to score: give at least one --model NAME=PATH")
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise BadInput(f"model names must be unique, got {', '.join(names)}")
    reference = reference or refs[0].name
    if reference not in names:
        raise BadInput(f"--reference '{reference}' is not one of the models ({', '.join(names)})")
    for ref in refs:  # fail on a bad path before spending minutes on the first model
        model_io.check_local(ref)
    rows, samples, efficiency, provenance = [], [], [], {}
    bar = console.bar(refs, desc="scoring", unit="model", leave=False)
    for ref in bar:
        bar.set_postfix_str(ref.name, refresh=False)
        model_fingerprint = model_io.fingerprint(ref)
        key = cache.key(model_fingerprint, ref, suite, options)
        found = cache.load(key) if options.use_cache else None
        cached = found is not None
        if not cached:
            log.info("scoring %s (%s)", ref.name, ref.source)
            found = evaluate_model(ref, suite, options)
            cache.store(key, *found)
        model_rows, model_samples, eff = cache.relabel(found, ref.name)
        rows += model_rows
        samples += model_samples
        efficiency.append(eff)
        provenance[ref.name] = {"source": ref.source, "fingerprint": model_fingerprint, "dtype": ref.dtype,
                                "cache_key": key, "cached": cached}
    # Generation slices: Rouge-L, and both measures against the reference's generations (cached or not).
    rows, samples = generation.score_generations(suite, rows, samples, reference)
    # Agreement with the reference needs both models on the same text (harness/agreement.py).
    from harness.agreement import measure

    agreement = measure(suite, refs, reference, options, {m: p["cache_key"] for m, p in provenance.items()})
    return Scorecard(
        suite=suite.name, reference=reference, agreement=agreement,
        rows=pd.DataFrame(rows, columns=ROW_COLUMNS), efficiency=pd.DataFrame(efficiency, columns=EFFICIENCY_COLUMNS),
        models=provenance, suite_fingerprint=suite.fingerprint(), samples=pd.DataFrame(samples, columns=SAMPLE_COLUMNS),
        items=pd.DataFrame(samples, columns=ITEM_COLUMNS),  # results cached before answers were kept: empty answers
    )

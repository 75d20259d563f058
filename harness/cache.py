"""The result cache: a model is not scored again while nothing that shapes its results changed.

lm-eval's own request cache keys on the request alone, not on which model answered it, so it
cannot tell a teacher from a candidate. kdh's key is everything a result depends on: the model's
fingerprint (its exact bytes), dtype and device, each slice's task configuration and the content
of its data, the scoring options (limit, batch size, few-shot, bootstrap, seed) and the lm-eval
version. Thresholds, weights and descriptions are not in it: they change decisions, not scores.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

from distiller.files import sha256_file, write_atomic_text
from harness import home
from harness.taskfiles import inline_task, task_name

SCHEMA = 1  # bump when what evaluate_model returns changes shape


def _data_files(task_config) -> list[str]:
    """The local data files an inline task config reads."""
    if not isinstance(task_config, dict):
        return []
    files = (task_config.get("dataset_kwargs") or {}).get("data_files") or []
    return sorted(files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files)


def key(model_fingerprint: str, ref, suite, options) -> str:
    """The cache key of one model's results on a suite (hex sha256)."""
    slices = []
    for domain in suite.domains:
        for slice_ in domain.slices:
            config = inline_task(slice_, task_name(domain.name, slice_.name))
            data = {Path(f).name: sha256_file(f) for f in _data_files(config)}
            if isinstance(config, dict):  # absolute paths differ between machines; the content is what counts
                config = {k: v for k, v in config.items() if k != "dataset_kwargs"}
            slices.append({"domain": domain.name, "slice": slice_.name, "metric": slice_.metric,
                           "filter": slice_.filter, "higher_is_better": slice_.higher_is_better,
                           "limit": options.limit if options.limit is not None else (slice_.limit or suite.defaults.limit),
                           "task": config, "data": data})
    payload = {
        "schema": SCHEMA, "model": model_fingerprint, "dtype": ref.dtype, "device": ref.device,
        "lm_eval": version("lm-eval"), "slices": slices,
        "batch_size": options.batch_size or suite.defaults.batch_size, "num_fewshot": suite.defaults.num_fewshot,
        "bootstrap_iters": options.bootstrap_iters if options.bootstrap_iters is not None else suite.defaults.bootstrap_iters,
        "seed": options.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def folder() -> Path:
    return home.kdh_home() / "cache" / "scores"


def load(cache_key: str):
    """(rows, samples, efficiency) stored under the key, or None. A torn or unreadable entry is a miss."""
    path = folder() / f"{cache_key}.json"
    try:
        entry = json.loads(path.read_text())
        return entry["rows"], entry["samples"], entry["efficiency"]
    except (OSError, ValueError, KeyError):
        return None


def store(cache_key: str, rows: list[dict], samples: list[dict], efficiency: dict) -> Path:
    """Write the entry whole or not at all (temp file, then rename)."""
    entry = json.dumps({"rows": rows, "samples": samples, "efficiency": efficiency})
    return write_atomic_text(folder() / f"{cache_key}.json", entry)


def relabel(entry, model: str):
    """The entry's rows, samples and efficiency under another model name (the key has no name in it)."""
    rows, samples, efficiency = entry
    return ([{**r, "model": model} for r in rows], [{**s, "model": model} for s in samples],
            {**efficiency, "model": model})

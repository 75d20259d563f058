"""The suite registry: suite YAML files → validated, typed records.

A suite names its domains; a domain has slices (lm-eval tasks), its validation text (for DDK
perplexity), its train data (for distillation) and optional thresholds (for the gate). Every error
names the file and the field, and what to do. Paths resolve against the suite file, not the
working directory; ``demo://`` paths resolve into the embedded demo world's data folder.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from distiller.files import sha256_named_files
from harness.errors import SuiteError
from harness.generation import KDH_METRICS
from harness.metrics import METRICS
from harness.taskfiles import load_task_template

DEMO_SCHEME = "demo://"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")

SUITE_KEYS = {"name", "description", "defaults", "thresholds", "domains"}
DEFAULT_KEYS = {"batch_size", "limit", "num_fewshot", "bootstrap_iters"}
THRESHOLD_KEYS = {"min_retention", "max_drop", "alpha", "max_contamination", "min_agreement", "max_kl", "max_js"}
DOMAIN_KEYS = {"name", "description", "slices", "validation", "train", "thresholds"}
SLICE_KEYS = {"name", "task", "data", "metric", "filter", "higher_is_better", "weight", "limit", "thresholds"}


@dataclass(frozen=True)
class Thresholds:
    """Gate thresholds; each is None where the suite leaves it to the level above."""

    min_retention: float | None = None  # least share of the teacher's score the student keeps
    max_drop: float | None = None  # largest drop in retention allowed against the champion
    alpha: float | None = None  # significance level at which a drop counts as a regression
    # largest share of a test slice's examples whose n-grams the training corpus may hold
    max_contamination: float | None = None
    # agreement with the teacher on the slice's text (harness/agreement.py): least top-1 agreement,
    # largest KL(teacher ‖ student) and Jensen–Shannon divergence, both in bits per position
    min_agreement: float | None = None
    max_kl: float | None = None
    max_js: float | None = None

    def over(self, parent: "Thresholds") -> "Thresholds":
        """These thresholds, with the parent's where these are unset."""
        return Thresholds(**{name: mine if mine is not None else getattr(parent, name)
                             for name, mine in vars(self).items()})


@dataclass(frozen=True)
class Slice:
    name: str
    task: str  # a built-in lm-eval task name, or an absolute path to a local task file
    metric: str
    higher_is_better: bool
    weight: float = 1.0
    filter: str = "none"  # lm-eval's filter whose results count (e.g. gsm8k's "strict-match")
    data: Path | None = None  # the test data a local task template reads
    limit: int | None = None
    thresholds: Thresholds = Thresholds()
    template: dict[str, Any] | None = None  # the local task file's config, None for built-ins

    @property
    def is_builtin(self) -> bool:
        return self.template is None


@dataclass(frozen=True)
class Domain:
    name: str
    slices: tuple[Slice, ...]
    description: str = ""
    validation: Path | None = None
    train: Path | None = None
    thresholds: Thresholds = Thresholds()


@dataclass(frozen=True)
class Defaults:
    batch_size: int = 16
    limit: int | None = None
    num_fewshot: int | None = None
    bootstrap_iters: int = 100


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    domains: tuple[Domain, ...]
    description: str = ""
    defaults: Defaults = Defaults()
    thresholds: Thresholds = Thresholds()
    files: tuple[Path, ...] = field(default=(), repr=False)  # every file the suite reads

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)

    def fingerprint(self) -> str:
        """sha256 over the suite file and every task and data file it names, so a result is tied
        to exactly what was scored."""
        return sha256_named_files((self.path, *self.files))


# --------------------------------------------------------------------------------------------
# Loading


def load_suite(
    path: str | Path,
    *,
    demo_data: Callable[[], Path] | None = None,
    allow_code: bool = False,
) -> Suite:
    """Read and validate a suite file.

    ``demo_data`` returns the demo world's data folder; it is called (and so the world built) only
    if the suite names a ``demo://`` path. ``allow_code`` lets task files run code.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SuiteError(path, None, "no such suite file; `kdh suites list` shows the known suites")
    raw = _parse_yaml(path)
    return _Reader(path, demo_data, allow_code).suite(raw)


def _parse_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise SuiteError(path, None, f"malformed YAML at {where}: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SuiteError(path, None, f"cannot be read as YAML: {err}") from None


class _Reader:
    """Walks the raw YAML, checking each field where it is, so errors can name it."""

    def __init__(self, path: Path, demo_data: Callable[[], Path] | None, allow_code: bool):
        self.path, self.demo_data, self.allow_code = path, demo_data, allow_code
        self.files: list[Path] = []

    def fail(self, field_path: str | None, message: str):
        raise SuiteError(self.path, field_path, message)

    def mapping(self, raw: Any, where: str, allowed: set[str], required: set[str] = frozenset()):
        if not isinstance(raw, dict):
            self.fail(where or None, f"must be a mapping, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(allowed))}"
                self.fail(_join(where, key), f"unknown key '{key}'{hint}")
        for key in sorted(required - raw.keys()):
            self.fail(_join(where, key), "is required")
        return raw

    def suite(self, raw: Any) -> Suite:
        raw = self.mapping(raw, "", SUITE_KEYS, {"name", "domains"})
        name = self.name(raw["name"], "name")
        defaults = self.defaults(raw.get("defaults") or {})
        thresholds = self.thresholds(raw.get("thresholds"), "thresholds")
        domains_raw = raw["domains"]
        if not isinstance(domains_raw, list) or not domains_raw:
            self.fail("domains", "must be a non-empty list of domains")
        domains = [self.domain(d, f"domains[{i}]") for i, d in enumerate(domains_raw)]
        seen: set[str] = set()
        for i, dom in enumerate(domains):
            if dom.name in seen:
                self.fail(f"domains[{i}].name", f"duplicate domain '{dom.name}'; domain names must be unique")
            seen.add(dom.name)
        return Suite(
            name=name, path=self.path, domains=tuple(domains), description=str(raw.get("description") or ""),
            defaults=defaults, thresholds=thresholds, files=tuple(dict.fromkeys(self.files)),
        )

    def name(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.fail(where, f"'{value}' is not a valid name: use lower-case letters, digits, '-' and '_'")
        return value

    def defaults(self, raw: Any) -> Defaults:
        raw = self.mapping(raw, "defaults", DEFAULT_KEYS)
        return Defaults(
            batch_size=self.integer(raw.get("batch_size", 16), "defaults.batch_size", low=1),
            limit=self.optional_int(raw.get("limit"), "defaults.limit"),
            num_fewshot=self.optional_int(raw.get("num_fewshot"), "defaults.num_fewshot", low=0),
            bootstrap_iters=self.integer(raw.get("bootstrap_iters", 100), "defaults.bootstrap_iters", low=0),
        )

    def thresholds(self, raw: Any, where: str) -> Thresholds:
        if raw is None:
            return Thresholds()
        raw = self.mapping(raw, where, THRESHOLD_KEYS)
        ranges = {"min_retention": (0.0, 1.0, True), "max_drop": (0.0, 1.0, True), "alpha": (0.0, 1.0, False),
                  "max_contamination": (0.0, 1.0, True), "min_agreement": (0.0, 1.0, True),
                  "max_kl": (0.0, float("inf"), True), "max_js": (0.0, 1.0, True)}
        values = {}
        for key, (low, high, closed) in ranges.items():
            value = raw.get(key)
            if value is None:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                low <= value <= high if closed else low < value < high)
            if not ok:
                span = f"[{low}, {high}]" if closed else f"({low}, {high})"
                self.fail(_join(where, key), f"{value!r} is out of range: must be a number in {span}")
            values[key] = float(value)
        return Thresholds(**values)

    def domain(self, raw: Any, where: str) -> Domain:
        raw = self.mapping(raw, where, DOMAIN_KEYS, {"name", "slices"})
        name = self.name(raw["name"], f"{where}.name")
        slices_raw = raw["slices"]
        if not isinstance(slices_raw, list) or not slices_raw:
            self.fail(f"{where}.slices", f"domain '{name}' has no slices; give it at least one")
        slices = [self.slice(s, f"{where}.slices[{i}]") for i, s in enumerate(slices_raw)]
        names = [s.name for s in slices]
        for i, slice_name in enumerate(names):
            if slice_name in names[:i]:
                self.fail(f"{where}.slices[{i}]", f"duplicate slice '{slice_name}' in domain '{name}'; give it a `name:`")
        return Domain(
            name=name, slices=tuple(slices), description=str(raw.get("description") or ""),
            validation=self.data_path(raw.get("validation"), f"{where}.validation"),
            train=self.data_path(raw.get("train"), f"{where}.train"),
            thresholds=self.thresholds(raw.get("thresholds"), f"{where}.thresholds"),
        )

    def slice(self, raw: Any, where: str) -> Slice:
        raw = self.mapping(raw, where, SLICE_KEYS, {"task", "metric"})
        task = raw["task"]
        if not isinstance(task, str) or not task:
            self.fail(f"{where}.task", "must be a built-in lm-eval task name or a path to a task .yaml file")
        metric = raw["metric"]
        if not isinstance(metric, str) or metric not in METRICS:
            close = difflib.get_close_matches(str(metric), sorted(METRICS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(METRICS))}"
            self.fail(f"{where}.metric", f"unknown metric '{metric}'{hint}")
        higher = raw.get("higher_is_better", METRICS[metric].higher_is_better)
        if not isinstance(higher, bool):
            self.fail(f"{where}.higher_is_better", f"must be true or false, got {higher!r}")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            self.fail(f"{where}.weight", f"{weight!r} is out of range: must be a number > 0")
        filter_name = raw.get("filter", "none")
        if not isinstance(filter_name, str) or not filter_name:
            self.fail(f"{where}.filter", f"must be the name of one of the task's filters, got {filter_name!r}")
        template = None
        if task.endswith((".yaml", ".yml")):
            task_path = self.local_path(task, f"{where}.task")
            template = load_task_template(task_path, allow_code=self.allow_code, field=f"{where}.task", suite=self.path)
            produced = {m.get("metric") for m in template.get("metric_list", []) if isinstance(m, dict)}
            if produced and template.get("output_type") == "generate_until":
                produced |= set(KDH_METRICS)  # computed from the generations (harness/generation.py)
            if produced and metric not in produced:
                self.fail(f"{where}.metric", f"'{metric}' is not produced by {task_path.name} (it gives: {', '.join(sorted(map(str, produced)))})")
            task = str(task_path)
        data = self.data_path(raw.get("data"), f"{where}.data")
        if template is not None and data is None and "dataset_path" not in template:
            self.fail(f"{where}.data", f"the task file {Path(task).name} names no dataset; give the slice a `data:` file")
        name = raw.get("name") or (Path(task).stem if template is not None else task)
        return Slice(
            name=self.name(name, f"{where}.name"), task=task, metric=metric, higher_is_better=higher,
            weight=float(weight), filter=filter_name, data=data, limit=self.optional_int(raw.get("limit"), f"{where}.limit", low=1),
            thresholds=self.thresholds(raw.get("thresholds"), f"{where}.thresholds"), template=template,
        )

    def local_path(self, value: Any, where: str) -> Path:
        if not isinstance(value, str) or not value:
            self.fail(where, "must be a file path")
        if value.startswith(DEMO_SCHEME):
            if self.demo_data is None:
                self.fail(where, f"'{value}' names the demo world, which is not available here")
            path = (self.demo_data() / value[len(DEMO_SCHEME):]).resolve()
        else:
            path = (self.path.parent / Path(value).expanduser()).resolve()  # against the suite, not the CWD
        if not path.is_file():
            self.fail(where, f"file not found: {path} (relative paths are read from the suite's folder {self.path.parent})")
        self.files.append(path)
        return path

    def data_path(self, value: Any, where: str) -> Path | None:
        return None if value is None else self.local_path(value, where)

    def integer(self, value: Any, where: str, low: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.fail(where, f"{value!r} is out of range: must be an integer >= {low}")
        return value

    def optional_int(self, value: Any, where: str, low: int = 1) -> int | None:
        return None if value is None else self.integer(value, where, low)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def names_builtin_tasks(suite: Suite) -> bool:
    return any(s.is_builtin for d in suite.domains for s in d.slices)


@functools.cache
def task_manager(builtins: bool):
    """lm-eval's TaskManager, made once per process. With its built-in tasks it parses thousands of
    YAML files (~12 s), and the suite check, every model's scoring and the agreement each need one;
    it holds only that index, so one serves them all. Without them it is cheap."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=builtins)


def check_builtin_tasks(suite: Suite) -> None:
    """Every built-in task a slice names must exist in lm-eval. Costs lm-eval's index of its
    built-in tasks, so it runs only when a slice names one."""
    named = [(i, j, s.task) for i, d in enumerate(suite.domains) for j, s in enumerate(d.slices) if s.is_builtin]
    if not named:
        return
    known = set(task_manager(True).all_tasks)
    for i, j, task in named:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; `lm-eval ls tasks` lists the built-in tasks"
            raise SuiteError(suite.path, f"domains[{i}].slices[{j}].task", f"unknown lm-eval task '{task}'{hint}")


def discover_suites(folder: Path) -> list[Path]:
    """Suite files in a folder (task files live in subfolders and are not suites)."""
    return sorted(p for p in folder.glob("*.yaml") if p.is_file())

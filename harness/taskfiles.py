"""Local lm-eval task files: read them safely, and turn a slice into an inline task config.

lm-eval task files can run code (`!function`, `class:`, `unsafe_code`). kdh reads them with a
safe YAML loader that only *notes* such tags, and refuses them unless the user allows code. The
data file is written into the config as an absolute path, because lm-eval on its own resolves
`data_files` against the working directory.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.errors import SuiteError

if TYPE_CHECKING:
    from harness.registry import Slice


class CodeRef(str):
    """The text of a `!function` tag: code lm-eval would import and run."""


class _NotingLoader(yaml.SafeLoader):
    pass


_NotingLoader.add_constructor("!function", lambda loader, node: CodeRef(loader.construct_scalar(node)))


def _read(path: Path, suite: Path, field: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise SuiteError(suite, field, f"task file {path} includes itself")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_NotingLoader)  # noqa: S506 (safe loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise SuiteError(suite, field, f"task file {path} is malformed YAML at {where}: {err.problem}") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise SuiteError(suite, field, f"task file {path} cannot be read: {err}") from None
    if not isinstance(cfg, dict):
        raise SuiteError(suite, field, f"task file {path} must hold a mapping of task settings")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = (path.parent / str(inc)).resolve()
        if not inc_path.is_file():
            raise SuiteError(suite, field, f"task file {path} includes {inc_path}, which does not exist")
        merged.update(_read(inc_path, suite, field, (*seen, path)))
    merged.update(cfg)  # local keys win, as in lm-eval
    return merged


def _code_in(value: Any, key: str = "") -> str | None:
    """Where a config runs code, described for the error message; None if it runs none."""
    if isinstance(value, CodeRef):
        return f"`{key}: !function {value}`"
    if isinstance(value, dict):
        if value.get("unsafe_code"):
            return "`unsafe_code: true`"
        if "class" in value:
            return "`class:` (a Python task)"
        for k, v in value.items():
            found = _code_in(v, str(k))
            if found:
                return found
    if isinstance(value, list):
        for v in value:
            found = _code_in(v, key)
            if found:
                return found
    return None


def load_task_template(path: Path, *, allow_code: bool, field: str, suite: Path) -> dict[str, Any]:
    """The task file's settings. Code in it is refused unless ``allow_code``; when allowed, the
    file is loaded by lm-eval's own loader so its functions resolve beside the file."""
    cfg = _read(path, suite, field)
    if "group" in cfg or "task_list" in cfg:
        raise SuiteError(suite, field, f"{path.name} is a group; name each of its tasks as a slice")
    code = _code_in(cfg)
    if code is None:
        return cfg
    if not allow_code:
        raise SuiteError(
            suite, field,
            f"task file {path} runs code ({code}); kdh refuses task files that run code unless you "
            "trust them and pass --allow-code",
        )
    from lm_eval.tasks._yaml_loader import load_yaml  # the loader that resolves !function

    return load_yaml(path, resolve_func=True)


def task_name(domain: str, slice_name: str) -> str:
    """The name lm-eval knows a suite's local slice by."""
    return f"kdh.{domain}.{slice_name}"


def inline_task(slice_: "Slice", name: str) -> dict[str, Any] | str:
    """What lm-eval is given for a slice: a built-in task's name, or a full inline config."""
    if slice_.is_builtin:
        return slice_.task
    cfg = deepcopy(slice_.template)
    cfg.pop("tag", None)
    cfg["task"] = name
    if slice_.data is not None:
        cfg.update(dataset_path="json", dataset_name=None, test_split="test",
                   dataset_kwargs={"data_files": {"test": str(slice_.data)}})
        for split in ("training_split", "validation_split", "fewshot_split"):
            cfg.pop(split, None)
    else:  # the task file names its own local data: make its paths absolute
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        base = Path(slice_.task).parent
        if isinstance(files, str):
            cfg["dataset_kwargs"]["data_files"] = str((base / files).resolve())
        elif isinstance(files, dict):
            cfg["dataset_kwargs"]["data_files"] = {k: str((base / v).resolve()) for k, v in files.items()}
    return cfg

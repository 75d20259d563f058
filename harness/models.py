"""Model references: what a name points at, how it loads, and a fingerprint of its exact bytes.

A ``ModelRef`` names a model (teacher, student, …) and where it loads from: a local transformers
folder or a hub id (hub ids need the hub variables unset: kdh runs offline by default). Weights
load from safetensors only and ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distiller.files import sha256_named_files
from harness.errors import BadInput

_DTYPES = ("float32", "bfloat16", "float16", "auto")
_CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelRef:
    name: str
    source: str
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    allow_pickle: bool = False  # pickle (.bin) weights can run code when loaded: off unless asked for

    @classmethod
    def parse(cls, spec: str, **options) -> "ModelRef":
        """``NAME=SOURCE`` as given on the command line."""
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise BadInput(f"--model '{spec}': expected NAME=PATH, e.g. --model student=./my-student")
        if options.get("dtype", "float32") not in _DTYPES:
            raise BadInput(f"--dtype '{options['dtype']}': choose one of {', '.join(_DTYPES)}")
        return cls(name=name, source=source, **options)

    @property
    def local_path(self) -> Path | None:
        path = Path(self.source).expanduser()
        return path.resolve() if path.exists() else None


def check_local(ref: ModelRef) -> Path | None:
    """The model's folder (None for a hub id), or a clear error if it is not a model folder."""
    path = ref.local_path
    if path is None:
        if "/" in ref.source and not ref.source.startswith((".", "/", "~")):
            return None  # a hub id; loading it says whether it is reachable
        raise BadInput(f"model '{ref.name}': {ref.source} does not exist; give a transformers model folder")
    if not (path / "config.json").is_file():
        raise BadInput(f"model '{ref.name}': {path} has no config.json; is it a transformers model folder?")
    # Refused here, before the result cache is consulted, so the answer does not depend on what was cached.
    if not ref.allow_pickle and not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise BadInput(f"model '{ref.name}': {path} holds pickle weights only ({', '.join(pickled)}); loading "
                           "a pickle can run code. Convert them to safetensors, or pass --allow-pickle if you "
                           "trust the files")
    return path


def fingerprint(ref: ModelRef) -> str:
    """sha256 over the config, tokenizer and weight files, so a result is tied to exact bytes."""
    path = check_local(ref)
    if path is None:
        return "hub:" + ref.source
    files = [path / f for f in _CONFIG_FILES if (path / f).is_file()]
    return sha256_named_files(files + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")))


def bytes_on_disk(ref: ModelRef) -> int:
    path = ref.local_path
    if path is None:
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load(ref: ModelRef):
    """(model, tokenizer) in eval mode on the reference's device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = check_local(ref)
    source = str(path) if path is not None else ref.source
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise BadInput(f"model '{ref.name}': cannot read the config of {source}: {err}") from None
    dtype = "auto" if ref.dtype == "auto" else getattr(torch, ref.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, use_safetensors=None if ref.allow_pickle else True,
            trust_remote_code=ref.trust_remote_code)
    except ValueError as err:
        raise BadInput(f"model '{ref.name}': {source} ({config.model_type}) is not a causal LM "
                       f"that transformers can load: {err}") from None
    except OSError as err:
        raise BadInput(f"model '{ref.name}': cannot load weights from {source}: {err} "
                       "(kdh loads safetensors weights unless --allow-pickle)") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError, TypeError) as err:  # transformers 5 raises TypeError when there are no files
        raise BadInput(f"model '{ref.name}': no usable tokenizer in {source} ({type(err).__name__}: {err}); "
                       "save the tokenizer beside the model (tokenizer.save_pretrained)") from None
    model.to(ref.device).eval()
    return model, tokenizer

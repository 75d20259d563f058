"""What the command line (or the pytest plugin) names → the records the steps take: a Suite, ModelRefs,
ScoringOptions. Shared by every verb, so a flag means the same everywhere.

The embedded default lives here once: a verb given no suite runs ``suites/default.yaml``, and a
model it is not given comes from the demo world, built on first use (``KDH_DEMO_SIZE`` picks its
size).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import home
from harness.errors import BadInput

DEMO_SIZES = ("default", "tiny")
DEMO_ROLES = ("teacher", "student", "cross_student")  # the demo world's models


def demo_world(progress: bool = True):
    """The embedded demo world, built on first use."""
    from harness.demo import ensure_world

    size = os.environ.get("KDH_DEMO_SIZE", "default")
    if size not in DEMO_SIZES:
        raise BadInput(f"KDH_DEMO_SIZE='{size}': choose one of {', '.join(DEMO_SIZES)}")
    return ensure_world(home.kdh_home(), size=size, progress=progress)


def default_suite() -> Path:
    return home.repo_suites_dir() / "default.yaml"


def open_suite(path: str | None, allow_code: bool = False):
    """A suite file (default: the shipped default suite), with ``demo://`` paths resolved into the
    demo world."""
    from harness.registry import load_suite

    return load_suite(path or default_suite(), demo_data=lambda: demo_world().data_dir, allow_code=allow_code)


def model_or_demo(given: str | Path | None, role: str, progress: bool = True) -> str:
    """The model named (a folder or ``models:/…``), else the demo world's ``role`` model."""
    if given:
        return str(given)
    if role not in DEMO_ROLES:
        raise ValueError(f"the demo world has no {role!r} model; it has {', '.join(DEMO_ROLES)}")
    return str(getattr(demo_world(progress), f"{role}_dir"))


def model_ref(name: str, source: str, args=None):
    """A model named on the command line, loaded as the flags say; ``models:/NAME@ALIAS`` resolves
    to a local copy (MLflow must already point at the store that names it)."""
    from harness import model_uris
    from harness.models import ModelRef

    options = {} if args is None else {
        "dtype": args.dtype, "device": args.device, "allow_pickle": args.allow_pickle,
        "trust_remote_code": args.trust_remote_code}
    return ModelRef.parse(f"{name}={model_uris.resolve(str(source))}", **options)


def scoring_options(args):
    from harness.scoring import ScoringOptions

    return ScoringOptions(limit=args.limit, batch_size=args.batch_size, allow_code=args.allow_code,
                          use_cache=not args.no_cache)


def add_verb(verbs, name: str, func, help: str, suite: str | None = "suite file (default: suites/default.yaml)",
             out: str | None = None):
    """A verb's parser, calling ``func(args)``; with ``--suite`` unless ``suite`` is None, and ``--out``
    (its help: ``out``) when the verb writes a folder."""
    parser = verbs.add_parser(name, help=help)
    parser.set_defaults(func=func)
    if suite is not None:
        parser.add_argument("--suite", help=suite)
    if out is not None:
        parser.add_argument("--out", help=out)
    return parser


def scoring_arguments(parser) -> None:
    """The flags of every verb that scores models (eval, gate, loop)."""
    parser.add_argument("--limit", type=int, help="documents or items per slice (overrides the suite)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cache", action="store_true", help="score every model again, even if unchanged")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the kdh home)")
    parser.add_argument("--allow-code", action="store_true", help="allow task files that run code (!function)")
    parser.add_argument("--allow-pickle", action="store_true", help="load pickle (.bin) weights; they can run code")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the modelling code a model folder ships (transformers' trust_remote_code)")


def output_folder(given: str | None, kind: str, *name: str) -> Path:
    """``--out`` if given, else a new folder ``$KDH_HOME/<kind>/<name>-<time>``."""
    if given:
        return Path(given)
    return home.kdh_home() / kind / "-".join([*name, time.strftime("%Y%m%d-%H%M%S")])


ON_POLICY_FIELDS = ("lmbda", "beta", "prompt_tokens", "new_tokens", "sampling_temperature", "seq_kd")


def on_policy_arguments(parser) -> None:
    """GKD's flags (distill, loop): the share of on-policy steps and their divergence (docs/on-policy.md)."""
    from distiller.config import DistillConfig

    parser.add_argument("--lmbda", type=float, default=DistillConfig.lmbda,
                        help="share of steps on the student's own continuations, scored by the teacher (GKD's λ; "
                             "default 0: supervised KD only)")
    parser.add_argument("--beta", type=float, default=DistillConfig.beta,
                        help="on-policy steps' JSD_β: 0 forward KL, 1 reverse KL (default 0.5)")
    parser.add_argument("--prompt-tokens", type=int, default=DistillConfig.prompt_tokens,
                        help="of each sampled row, the prompt the student continues")
    parser.add_argument("--new-tokens", type=int, default=DistillConfig.new_tokens,
                        help="tokens the student samples after each prompt")
    parser.add_argument("--sampling-temperature", type=float, default=DistillConfig.sampling_temperature)
    parser.add_argument("--seq-kd", nargs="?", const="auto", metavar="PATH",
                        help="sequence-level KD: the supervised steps train on the teacher's greedy continuations of "
                             "--prompt-tokens prompts by --new-tokens tokens; alone, found or generated once under the "
                             "kdh home; or a PATH made before")
    parser.add_argument("--seq-prompts", type=int, default=256, help="with --seq-kd alone: prompts per domain")


def generation_settings(args):
    """The SeqKD generation settings the flags name (distiller/seqkd.py)."""
    from distiller.seqkd import GenerationSettings

    if not args.seq_prompts >= 1:
        raise BadInput(f"--seq-prompts must be >= 1, got {args.seq_prompts}")
    return GenerationSettings(prompts=args.seq_prompts, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                              seed=args.seed)


def on_policy_options(args) -> dict:
    """The on-policy flags as DistillConfig fields."""
    return {name: getattr(args, name) for name in ON_POLICY_FIELDS}

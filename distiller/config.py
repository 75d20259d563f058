"""What a distillation run is told: the one home of its settings and their defaults.

``DistillConfig`` holds plain values and checks them when it is made, so a wrong setting is an
``InputError`` before a model is loaded. The ``--kd`` modes and which pairs of tokenizers each
accepts live here too: a command line can refuse a wrong pairing before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from distiller.ddk import ALPHA, MIXTURES
from distiller.errors import InputError

KD_MODES = ("kd", "dskd", "dskd-cma", "uld")
ACROSS_TOKENIZERS = ("dskd-cma", "uld")  # the modes that take two vocabularies
# kd: DDK's γ in CE + γ·KD (Eq. 3); the others: DSKD's w in (1 − w)·CE + w·KD (docs/distillation.md).
DEFAULT_KD_WEIGHT = {"kd": 0.2, "dskd": 0.5, "dskd-cma": 0.5, "uld": 0.5}
PRECISIONS = ("no", "bf16", "fp16")
SHARDINGS = ("ddp", "fsdp")  # how several processes hold the student (distiller/sharding.py, docs/sharded.md)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DistillConfig:
    teacher: str
    student: str
    output_dir: str
    steps: int = 300
    batch_size: int = 8  # rows per process and micro-batch
    grad_accum: int = 1  # micro-batches per step: a step's global batch is batch_size × grad_accum × processes
    block_size: int = 256  # tokens per row (capped by the models' context)
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    kd: str = "kd"  # kd | dskd | dskd-cma | uld
    kd_weight: float | None = None  # None: the mode's DEFAULT_KD_WEIGHT; 0 is continued pre-training (CPT)
    projector_lr: float = 1e-3  # DSKD's projectors (dskd, dskd-cma)
    temperature: float = 1.0
    divergence: str = "forward_kl"
    mixture: str = "ddk"  # ddk | ddk-no-smoothing | uniform | natural | fixed:code=0.5,…
    alpha: float = ALPHA  # Eq. 2's smoothing
    interval: int = 50  # K: steps between mixture updates
    val_blocks: int = 32  # validation blocks per domain for the perplexities
    # The ratios ℓ_S/ℓ_T the first mixture is made from (e.g. a scorecard's gaps); None: measured.
    initial_ratios: dict[str, float] | None = field(default=None)
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 0
    chunk_size: int = 256  # positions per chunk of the fused head + divergence (bench/loss_memory.py)
    mixed_precision: str = "no"  # "bf16" where the device supports it: autocast, the weights stay float32
    sharding: str = "ddp"  # ddp: every process holds the whole student; fsdp: each holds a shard (FSDP2)
    device: str = "auto"  # auto: cuda where there is one, else cpu
    log_every: int = 10
    progress: bool = True
    # A stored teacher signal (`kdh teacher-signal`, docs/teacher-signal.md): train from it, never load the teacher.
    teacher_signal: str | None = None
    # On-policy distillation (GKD, distiller/onpolicy.py, docs/on-policy.md): a share lmbda of the steps train
    # JSD_β on the student's own continuations of prompt_tokens-token prompts; 0 is supervised KD alone.
    lmbda: float = 0.0
    beta: float = 0.5
    prompt_tokens: int = 64
    new_tokens: int = 64
    sampling_temperature: float = 1.0
    # Sequence-level KD (distiller/seqkd.py): the supervised steps train on the teacher's stored continuations.
    seq_kd: str | None = None

    def __post_init__(self):
        from distiller.losses import DIVERGENCES  # here, so that a command line's start-up needs no torch

        if self.kd not in KD_MODES:
            raise InputError(f"unknown --kd {self.kd!r}; choose one of {', '.join(KD_MODES)}")
        if self.kd_weight is None:
            self.kd_weight = DEFAULT_KD_WEIGHT[self.kd]
        counts = {"steps": self.steps, "batch_size": self.batch_size, "block_size": self.block_size,
                  "interval": self.interval, "val_blocks": self.val_blocks, "save_every": self.save_every,
                  "log_every": self.log_every, "chunk_size": self.chunk_size, "grad_accum": self.grad_accum}
        for name, value in counts.items():
            if not (isinstance(value, int) and value >= 1):
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("lr", "min_lr", "projector_lr", "temperature", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise InputError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.kd_weight) and self.kd_weight >= 0):
            raise InputError(f"--kd-weight must be a finite number >= 0, got {self.kd_weight!r}")
        if self.kd != "kd" and self.kd_weight > 1:  # (1 − w)·CE: a w above 1 would train against the labels
            raise InputError(f"--kd {self.kd} weighs (1 − w)·CE + w·KD: --kd-weight must be in [0, 1], "
                             f"got {self.kd_weight}")
        if self.divergence not in DIVERGENCES:
            raise InputError(f"unknown --divergence {self.divergence!r}; choose one of {', '.join(DIVERGENCES)}")
        if self.mixture.split(":", 1)[0].strip() not in MIXTURES:
            raise InputError(f"unknown --mixture {self.mixture!r}; choose one of {', '.join(MIXTURES[:-1])} "
                             "or fixed:<domain>=<weight>,…")
        if self.mixed_precision not in PRECISIONS:
            raise InputError(f"--mixed-precision {self.mixed_precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.sharding not in SHARDINGS:
            raise InputError(f"--sharding {self.sharding!r}: choose one of {', '.join(SHARDINGS)}")
        if self.sharding == "fsdp" and self.mixed_precision == "fp16":  # fp16's loss scaler is not wired to shards
            raise InputError("--sharding fsdp trains in float32 or --mixed-precision bf16, not fp16")
        if self.device not in DEVICES:
            raise InputError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); "
                             "use --device cpu, or auto")
        if self.teacher_signal is not None and (self.kd, self.divergence) != ("kd", "forward_kl"):
            raise InputError(f"--teacher-signal trains --kd kd with --divergence forward_kl (CE + γ·KL against the "
                             f"stored top-k with its tail, or the sampled target), not --kd {self.kd} --divergence "
                             f"{self.divergence}: {', '.join(m for m in KD_MODES if m != 'kd')} need the live teacher "
                             "(dskd, dskd-cma: its hidden states; uld: its distribution over its own tokenization)")
        if not (0.0 <= self.lmbda <= 1.0 and 0.0 <= self.beta <= 1.0):
            raise InputError(f"--lmbda and --beta must be in [0, 1], got {self.lmbda} and {self.beta}")
        if self.lmbda > 0:
            self._check_on_policy()
        if self.seq_kd is not None and (self.kd != "kd" or self.teacher_signal is not None):
            raise InputError("--seq-kd trains --kd kd on the teacher's continuations with the live teacher; not with "
                             f"--kd {self.kd}" + (" or --teacher-signal" if self.teacher_signal else ""))
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.initial_ratios is not None:
            bad = {d: r for d, r in self.initial_ratios.items() if not (math.isfinite(r) and r > 0)}
            if bad or not self.initial_ratios:
                raise InputError(f"initial ratios must be finite and > 0 for every domain, got {self.initial_ratios}")


    def _check_on_policy(self) -> None:
        for name in ("prompt_tokens", "new_tokens"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise InputError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.prompt_tokens > self.block_size:
            raise InputError(f"--prompt-tokens {self.prompt_tokens} is longer than a row (--block-size "
                             f"{self.block_size}): the prompts are cut from the sampled rows")
        if not (math.isfinite(self.sampling_temperature) and self.sampling_temperature > 0):
            raise InputError(f"--sampling-temperature must be a finite number > 0, got {self.sampling_temperature!r}")
        # The teacher scores the student's tokens: one vocabulary, a live teacher, a whole student to sample from.
        why = {"--kd": self.kd != "kd" or self.kd_weight == 0, "--teacher-signal": self.teacher_signal is not None,
               "--sharding fsdp": self.sharding == "fsdp"}
        if any(why.values()):
            raise InputError(f"--lmbda > 0 (on-policy distillation) trains --kd kd with the live teacher scoring "
                             f"the student's own tokens; not with {', '.join(k for k, v in why.items() if v)}")


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def check_mode(kd: str, kd_weight: float, same_vocab: bool, sizes: tuple[int, int]) -> None:
    """InputError for a mode that cannot take this pair; CPT (kd_weight 0) takes any."""
    if not same_vocab and kd not in ACROSS_TOKENIZERS and kd_weight != 0:
        raise InputError(
            f"the teacher's and the student's tokenizers differ (vocabularies of {sizes[0]} and {sizes[1]} tokens); "
            f"--kd {kd} compares distributions over one vocabulary. Modes that accept different tokenizers: "
            f"{', '.join(ACROSS_TOKENIZERS)} (or --kd-weight 0: continued pre-training, no teacher signal)")


def check_pair(teacher: str, student: str, kd: str, kd_weight: float) -> None:
    """``check_mode`` from the two model folders' tokenizers alone: a cheap check before a run starts."""
    from transformers import AutoTokenizer

    try:
        teacher_tok, student_tok = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(student)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"cannot read the tokenizers of {teacher} and {student}: {err}") from None
    check_mode(kd, kd_weight, same_vocabulary(teacher_tok, student_tok), (len(teacher_tok), len(student_tok)))


@dataclass
class SignalSettings:
    """How `kdh teacher-signal` runs the teacher over a store (distiller/teacher_signal.py)."""

    k: int = 64  # top-k entries a position, or N draws when mode is "sampled"
    mode: str = "top-k"  # top-k | sampled
    temperature: float = 1.0
    seed: int = 0  # the draws of a sampled signal
    block_size: int = 256  # capped by the teacher's (and the student's) context, as the trainer caps it
    val_blocks: int = 32  # validation blocks per domain for the teacher's perplexities (DDK's ℓ_T)
    batch_size: int = 16  # blocks a teacher forward
    chunk_size: int = 256  # positions through the teacher's head at a time
    part_blocks: int = 64  # blocks a part: the unit of work, of resume and of a rank's share

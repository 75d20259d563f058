"""On-policy distillation (GKD, Agarwal et al. 2024; docs/on-policy.md): the student learns on its own
continuations, scored token by token by the teacher.

With probability λ (``lmbda``) a step is on-policy: each row the DDK sampler drew (so the mixture still
picks the prompts' domains) is cut to its first ``prompt_tokens`` tokens, the student continues it by
sampling ``new_tokens`` tokens (KV-cached, the whole batch at once, top-k off, at ``temperature``), and
the loss is the generalised Jensen-Shannon divergence JSD_β(teacher ‖ student) on the generated tokens
only (β = 0: forward KL, β = 1: reverse KL; losses.divergence_from_log_probs). The other steps are the
supervised steps of ``--kd kd``. No CE on the student's own tokens: it would teach the student what it
already samples.

Which steps are on-policy and what the student samples depend only on (seed, step, rank): a resumed
run, and every rank, decide and sample exactly as an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from distiller.losses import distillation_loss
from distiller.measure import last_hidden

IGNORE = -100


@dataclass(frozen=True)
class Policy:
    lmbda: float = 0.5  # share of steps trained on the student's own continuations
    beta: float = 0.5  # JSD_β: 0 forward KL (teacher ‖ student), 1 reverse KL
    prompt_tokens: int = 64  # of each sampled row, the prompt the student continues
    new_tokens: int = 64  # tokens the student samples after it
    temperature: float = 1.0  # sampling only; the loss is at the run's temperature
    seed: int = 0

    def on_policy(self, step: int) -> bool:
        """Whether ``step`` trains on the student's continuations (the same on every rank, on resume)."""
        return self.lmbda > 0 and random.Random(f"{self.seed}:{step}").random() < self.lmbda


def generated_labels(sequences: torch.Tensor, prompt_tokens: int, eos_id: int | None) -> torch.Tensor:
    """Next-token labels of prompt + continuation rows [B, P + N] → [B, P + N − 1]: the continuation's
    tokens, up to and including a sampled end-of-text; the prompt and what follows the end are IGNORE."""
    labels = sequences[:, 1:].clone()
    labels[:, : prompt_tokens - 1] = IGNORE
    if eos_id is not None:
        generated = labels[:, prompt_tokens - 1:]
        ended = (generated == eos_id).long().cumsum(dim=1)
        after_end = (ended - (generated == eos_id).long()) > 0  # strictly after the first end-of-text
        generated[after_end] = IGNORE
    return labels


@torch.no_grad()
def continue_prompts(model, prompts: torch.Tensor, policy: Policy, eos_id: int | None, seed: int,
                     greedy: bool = False) -> torch.Tensor:
    """The model's sampled (or ``greedy``) continuations of ``prompts`` [B, P]: rows [B, P + N] (after an
    end-of-text the row is padded with it). Sampling draws from a generator of its own, seeded by ``seed``."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
            torch.manual_seed(seed)
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=policy.new_tokens,
                                 **({"do_sample": False} if greedy else
                                    {"do_sample": True, "temperature": policy.temperature, "top_k": 0, "top_p": 1.0}),
                                 pad_token_id=eos_id, eos_token_id=eos_id, use_cache=True)
    finally:
        model.train(was_training)
    if out.shape[1] < prompts.shape[1] + policy.new_tokens:  # every row ended early: pad to the full width
        pad = torch.full((out.shape[0], prompts.shape[1] + policy.new_tokens - out.shape[1]),
                         eos_id if eos_id is not None else 0, dtype=out.dtype, device=out.device)
        out = torch.cat([out, pad], dim=1)
    return out


@dataclass
class OnPolicyStep:
    """Sampler rows → (loss, ce, kd) of an on-policy step: ce is the student's CE on its own
    continuation (logged, not trained), kd the JSD_β it trains on."""

    policy: Policy
    student: torch.nn.Module  # as prepared by accelerate: the forward that trains
    student_core: torch.nn.Module  # the unwrapped student: it generates, and holds the head
    teacher: torch.nn.Module
    eos_id: int | None
    options: dict  # temperature, chunk_size

    def __call__(self, rows: torch.Tensor, seed: int):
        prompts = rows[:, : self.policy.prompt_tokens]
        sequences = continue_prompts(self.student_core, prompts, self.policy, self.eos_id, seed)
        inputs, labels = sequences[:, :-1], generated_labels(sequences, self.policy.prompt_tokens, self.eos_id)
        hidden = last_hidden(self.student, inputs)
        with torch.inference_mode():
            teacher_hidden = last_hidden(self.teacher, inputs)
        _, ce, kd = distillation_loss(hidden, self.student_core.get_output_embeddings(), teacher_hidden.clone(),
                                      self.teacher.get_output_embeddings(), labels, kd_weight=1.0, kind="jsd",
                                      beta=self.policy.beta, **self.options)
        return kd, ce.detach(), kd.detach()

    def tokens(self, rows: int) -> int:
        return rows * (self.policy.prompt_tokens + self.policy.new_tokens)

"""Sharded training of the student: FSDP2 (torch's ``fully_shard``) beside Accelerate's DDP.

Why torch's ``fully_shard`` and not Accelerate's FSDP plugin: Accelerate 1.16 turns FSDP on only
for the GPU-like multi-process types (``AcceleratorState``: the FSDP branch lists MULTI_GPU, NPU,
XPU…, never MULTI_CPU), so on CPU its plugin is silently ignored; ``fully_shard`` runs on CPU with
gloo and on GPU with NCCL alike, so one code path is tested on CPU and runs on a GPU node.
Accelerate still sets up the processes, the device, autocast and the collectives.

Units: each decoder layer (the model's ``_no_split_modules`` classes) is its own unit, all-gathered
for its forward and backward and sharded otherwise; the embeddings, the final norm and the LM head
stay in the root unit. FSDP2 keeps the root's parameters unsharded from its forward to its backward
(torch: the root's ``reshard_after_forward`` is False, "its parameters would be all-gathered
immediately for backward"). That is what the fused loss needs: it reads the head's weight directly
after the forward, never through the head's own forward (distiller/losses.py), so it sees the full
[V, H] weight; its gradient lands on the unsharded parameter, and the root's post-backward
reduce-scatters it (averaged over ranks, as DDP's all-reduce is) into the shards the optimiser
steps. tests/test_sharded.py checks the result against one process (docs/sharded.md).

Checkpoints stay whole: every rank takes part in gathering the full student and optimiser state,
the main process writes them in the single-process format, so a checkpoint resumes under any
number of processes and either engine.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager, nullcontext

import torch

log = logging.getLogger(__name__)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """``model`` with each decoder layer in its own FSDP2 unit and the rest in the root (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # The student's forward returns hidden states that are views; kdh never changes them in place,
    # which is the misuse this warning is about.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world,))
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        log.warning("%s names no decoder layer class (_no_split_modules): the whole student is one FSDP unit",
                    type(model).__name__)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _units(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: torch.nn.Module):
    """The whole student unsharded on every rank, kept so through any number of forwards.

    For DDK's measurements: there each rank scores its own share of the validation blocks, and the
    shares can differ by a batch, so per-forward all-gathers would not pair up across ranks. Costs
    the memory of one unsharded student for the measurement's duration (as DDP holds all along)."""
    if not is_sharded(model):
        yield model
        return
    units = _units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            if unit is not model:  # the root keeps FSDP's own choice: unsharded from forward to backward
                unit.set_reshard_after_forward(True, recurse=False)


def no_sync(model: torch.nn.Module, accelerator, sync: bool):
    """Accumulate gradients locally (``sync`` False) or reduce them across ranks (``sync`` True):
    a micro-batch before the last of a step need not pay for the reduction."""
    if sync or accelerator.num_processes == 1:
        return nullcontext()
    if is_sharded(model):
        return _fsdp_no_sync(model)
    return accelerator.no_sync(model)


@contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale the gradients so that their global 2-norm is at most ``max_norm``; returns the norm.
    Sharded gradients (DTensors, each rank a slice) and replicated ones (the DSKD projectors) are
    summed as one vector, which torch's own clip refuses to mix."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    replicated = [g for g in grads if not isinstance(g, DTensor)]
    squares = sum((g.detach().double().pow(2).sum() for g in replicated), torch.zeros((), dtype=torch.float64))
    if sharded:  # each rank holds a slice: sum the slices' squares over the ranks
        slices = sum(g.detach().double().pow(2).sum() for g in sharded)
        mesh = next(g for g in grads if isinstance(g, DTensor)).device_mesh
        torch.distributed.all_reduce(slices, group=mesh.get_group())
        squares = squares.to(slices.device) + slices
    norm = math.sqrt(squares.item())
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for g in grads:
            g.mul_(coefficient)
    return norm


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The student's whole state on every rank, on the CPU (a collective: every rank calls it).
    Tied weights stay one tensor under both names, as ``save_pretrained`` expects of them."""
    from torch.distributed.tensor import DTensor

    full, by_id = {}, {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in by_id:
            plain = value.full_tensor() if isinstance(value, DTensor) else value
            by_id[id(value)] = plain.detach().cpu()
        full[name] = by_id[id(value)]
    return full


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole (unsharded) state into ``model``, sharded or not; every rank calls it."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, param in model.named_parameters():
            value = state[name].to(param.dtype)
            if isinstance(param, DTensor):
                value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
            param.copy_(value)


def full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole (a collective): the
    single-process format, which any number of processes can load."""
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    state["state"] = {i: {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in s.items()}
                      for i, s in state["state"].items()}
    return state


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load a single-process optimiser state, sharding each tensor the way its parameter is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    shaped = {}
    for i, saved in state["state"].items():
        param = params[int(i)]
        shaped[i] = {k: (distribute_tensor(v.to(param.device), param.device_mesh, param.placements)
                         if isinstance(param, DTensor) and v.shape == param.shape else v) for k, v in saved.items()}
    optimizer.load_state_dict({**state, "state": shaped})

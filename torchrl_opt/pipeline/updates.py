"""Update steps: one gradient step of a loss and its optimiser, written for capture.

Each step is a function ``TensorDict batch -> TensorDict of detached metrics`` with no host
synchronisation (no ``.item()``, no Python branch on tensor values), so that ``torch.compile``
captures it and a CUDA graph replays it (``tensordict.nn.CudaGraphModule``, or the sync-free
:class:`~torchrl_opt.pipeline.cudagraph.CudaGraphStep` with ``graph_backend="torch"``).
:func:`accelerate` applies both:
on by default on CUDA, off on CPU (``compile=True`` also works on CPU, which the tests use).
Nothing falls back silently: a compile failure raises.

Critic and actor steps are separate graphs (TD3's actor is updated every ``actor_delay`` critic
steps, decided on the host from a Python counter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CudaGraphModule
from torchrl.objectives import SoftUpdate

from torchrl_opt.pipeline.cudagraph import CudaGraphStep

__all__ = [
    "GRAPH_BACKENDS",
    "AccelerationConfig",
    "accelerate",
    "make_optimizer",
    "make_step",
    "should_accelerate",
]

StepFn = Callable[[TensorDictBase], TensorDictBase]

#: Dynamo recompile limit applied when steps are compiled (see :func:`accelerate`).
RECOMPILE_LIMIT = 64

#: Values of :attr:`AccelerationConfig.graph_backend`.
GRAPH_BACKENDS = ("tensordict", "torch")


@dataclass
class AccelerationConfig:
    """How update steps run. ``None`` means "on for CUDA, off for CPU".

    Attributes:
        compile: wrap steps in ``torch.compile``.
        cudagraphs: replay steps as CUDA graphs (CUDA only), with ``graph_backend``.
        compile_mode: ``torch.compile`` mode (``None`` = default; ``"reduce-overhead"`` is redundant
            with ``cudagraphs``).
        warmup: eager calls before a CUDA graph is captured.
        functional: build steps with :mod:`torchrl_opt.pipeline.functional` (``torch.func``
            gradient + tensor Adam + Polyak targets in one function), which ``torch.compile``
            captures as a single graph (``fullgraph=True``); off by default.
        graph_backend: what replays the CUDA graph when ``cudagraphs`` is on, one of
            :data:`GRAPH_BACKENDS`: ``"tensordict"`` (default) is ``tensordict.nn.CudaGraphModule``,
            which synchronises the device before every replay and clones the outputs;
            ``"torch"`` is :class:`~torchrl_opt.pipeline.cudagraph.CudaGraphStep`, a plain
            ``torch.cuda.CUDAGraph`` replay with no synchronisation (host work overlaps with the
            update) that returns the same static output TensorDict on every call, overwritten by
            the next replay.
        direct_env: step environments with :mod:`torchrl_opt.direct_env` (the Gymnasium env
            stepped directly, the env's transforms applied to the raw tensors: TorchRL's exact
            transitions at a fraction of the host time) in fine-tuning collection, ``B_on``
            collection and evaluation. ``None`` (default): wherever the env is supported (the
            MuJoCo tasks), TorchRL's ``Collector`` / ``env.rollout`` elsewhere; ``True``: required
            (an unsupported env raises :class:`~torchrl_opt.direct_env.DirectEnvError`);
            ``False``: always TorchRL's.
        env_threads: a seed-batched run steps its seeds' environments (collection and evaluation)
            in a pool of that many threads (MuJoCo releases the GIL while it simulates); 0
            (default) steps them one after the other.
    """

    compile: bool | None = None
    cudagraphs: bool | None = None
    compile_mode: str | None = None
    warmup: int = 5
    functional: bool = False
    graph_backend: str = "tensordict"
    direct_env: bool | None = None
    env_threads: int = 0


def should_accelerate(config: AccelerationConfig, device: torch.device) -> tuple[bool, bool]:
    """Resolve ``(compile, cudagraphs)`` for ``device``; CUDA graphs on a CPU device is an error,
    and so is a ``graph_backend`` not in :data:`GRAPH_BACKENDS`."""
    if config.graph_backend not in GRAPH_BACKENDS:
        raise ValueError(
            f"unknown graph_backend {config.graph_backend!r}; expected one of {GRAPH_BACKENDS}"
        )
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    compile_ = on_cuda if config.compile is None else bool(config.compile)
    cudagraphs = on_cuda if config.cudagraphs is None else bool(config.cudagraphs)
    if cudagraphs and not on_cuda:
        raise ValueError(f"cudagraphs=True needs a CUDA device, got {device}")
    return compile_, cudagraphs


def accelerate(
    step: StepFn, device: torch.device, config: AccelerationConfig | None = None
) -> StepFn:
    """Compile and/or CUDA-graph ``step`` according to ``config`` (see :class:`AccelerationConfig`).

    Every step built by :func:`make_step` shares one code object, so Dynamo keeps one cache entry
    per step closure; the recompile limit is raised to :data:`RECOMPILE_LIMIT` so that a run's
    dozen steps never hit Dynamo's silent fall-back to eager.
    """
    config = config or AccelerationConfig()
    compile_, cudagraphs = should_accelerate(config, device)
    if compile_:
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        step = torch.compile(step, mode=config.compile_mode, fullgraph=config.functional)
    if cudagraphs and config.graph_backend == "torch":
        step = CudaGraphStep(step, torch.device(device), warmup=config.warmup)
    elif cudagraphs:
        step = CudaGraphModule(step, warmup=config.warmup, device=torch.device(device))
    return step


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    device: torch.device,
    config: AccelerationConfig | None = None,
) -> torch.optim.Adam:
    """Adam whose state lives on ``device`` and can be captured in a CUDA graph when needed."""
    _, cudagraphs = should_accelerate(config or AccelerationConfig(), device)
    params = list(params)
    if not params:
        raise ValueError("make_optimizer got no parameters to optimise")
    return torch.optim.Adam(params, lr=lr, capturable=cudagraphs)


def make_step(
    loss_fn: Callable[[TensorDictBase], TensorDictBase],
    loss_keys: tuple[str, ...],
    optimizer: torch.optim.Optimizer,
    *,
    target_updater: SoftUpdate | Any | None = None,
    max_grad_norm: float | None = None,
) -> StepFn:
    """One gradient step: ``sum(loss_fn(batch)[k] for k in loss_keys)``, backward, optimiser step.

    ``target_updater.step()`` (Polyak averaging ``theta' <- tau theta + (1 - tau) theta'``) runs inside
    the step when given. Returns the detached output of ``loss_fn``.
    """

    def step(batch: TensorDictBase) -> TensorDictBase:
        out = loss_fn(batch)
        total = sum(out.get(key) for key in loss_keys)
        total.backward()
        if max_grad_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if target_updater is not None:
            target_updater.step()
        return out.detach()

    return step


def as_tensordict(loss_and_metadata: tuple[torch.Tensor, dict], key: str) -> TensorDictBase:
    """Turn a ``(loss, metadata)`` pair from a loss method into a TensorDict under ``key``."""
    loss, metadata = loss_and_metadata
    return TensorDict({key: loss, **metadata}, batch_size=[])

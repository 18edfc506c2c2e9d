"""Update steps: the one place that picks how a gradient step runs.

An agent describes each of its steps declaratively (:class:`UpdateDef`: which loss method, which
parameter groups, learning rates, target updates); :class:`UpdateEngine` turns it into an
:class:`UpdateSpec` for the run's seeds with one of three engines:

==============  ==========================================================================
engine          what one step is
==============  ==========================================================================
``module``      ``loss.backward()`` + ``torch.optim.Adam`` + Polyak targets (:func:`make_step`);
                one seed, the default
``functional``  ``torch.func`` gradient + tensor Adam + Polyak targets in one function
                (:class:`~torchrl_opt.pipeline.functional.FunctionalStep`), which
                ``torch.compile(fullgraph=True)`` captures whole; one seed with
                ``acceleration.functional``
``seed_batched``  the functional step of ``S`` seeds' losses vmapped over a leading seed dimension
                (:class:`~torchrl_opt.pipeline.functional.SeedBatchedStep`): any seed group
==============  ==========================================================================

Every step is a function ``TensorDict batch -> TensorDict of detached metrics`` with no host
synchronisation (no ``.item()``, no Python branch on tensor values), so that :func:`accelerate` can
compile it and replay it as a CUDA graph (``tensordict.nn.CudaGraphModule``, or the sync-free
:class:`~torchrl_opt.pipeline.cudagraph.CudaGraphStep` with ``graph_backend="torch"``): on by default
on CUDA, off on CPU (``compile=True`` also works on CPU). Nothing falls back silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CudaGraphModule
from torch import nn
from torchrl.objectives import SoftUpdate
from torchrl.objectives.common import LossModule

from torchrl_opt.pipeline.config import GRAPH_BACKENDS, AccelerationConfig
from torchrl_opt.pipeline.cudagraph import CudaGraphStep
from torchrl_opt.pipeline.functional import (
    FunctionalAdam,
    SeedBatchedStep,
    SeedStack,
    make_functional_step,
    target_update_pairs,
)

__all__ = [
    "ENGINES",
    "TargetUpdate",
    "StepFn",
    "UpdateDef",
    "UpdateEngine",
    "UpdateSpec",
    "accelerate",
    "make_optimizer",
    "make_step",
    "should_accelerate",
    "soft_update_keeping_targets",
]

StepFn = Callable[[TensorDictBase], TensorDictBase]
LossFn = Callable[[TensorDictBase], TensorDictBase]

#: Dynamo recompile limit applied when steps are compiled (see :func:`accelerate`).
RECOMPILE_LIMIT = 64
ENGINES = ("module", "functional", "seed_batched")


@dataclass
class UpdateSpec:
    """A named update step run every ``every`` updates (TD3's delayed actor: ``every=2``);
    ``optimizer`` is the one the step uses (its state goes into checkpoints)."""

    name: str
    step: StepFn
    optimizer: torch.optim.Optimizer | FunctionalAdam
    every: int = 1


@dataclass(frozen=True)
class UpdateDef:
    """What one update step of an agent does, independent of the engine that runs it.

    Attributes:
        name: the step's name (checkpoint key of its optimiser; ``critic``, ``actor``, ...).
        fn: ``loss -> loss function``: a bound method (``lambda l: l.qvalue_losses``) or a wrapper
            (``lambda l: MetaAdaptationLoss(l, ...)``); it returns a TensorDict.
        keys: the entries of that TensorDict summed into the minimised objective.
        groups: the loss's parameter groups (``TensorDictParams`` children) the step trains.
        lr: Adam's learning rate, or one per group.
        every: run every ``every`` updates.
        targets: Polyak averaging ``theta' <- tau theta + (1 - tau) theta'`` after the step:
            ``"all"`` every ``target_*`` group of the loss (TorchRL's ``SoftUpdate``), a tuple of
            group names those groups' targets only (online pre-training), ``None`` none.
        tau: the Polyak weight.
    """

    name: str
    fn: Callable[[LossModule], LossFn]
    keys: tuple[str, ...]
    groups: tuple[str, ...]
    lr: float | dict[str, float]
    every: int = 1
    targets: str | tuple[str, ...] | None = None
    tau: float = 0.005


class TargetUpdate:
    """Polyak averaging of the targets of the groups ``names`` only:
    ``theta' <- tau theta + (1 - tau) theta'``.

    TorchRL's ``SoftUpdate`` moves every target of a loss; during online pre-training the actor and
    the other critics' targets must stay frozen, so this updates ``target_<name>`` for the
    pre-trained groups (``loss.online_param_names``, or ``Q_off``'s in the ``no_qon`` ablation).
    """

    def __init__(self, loss: LossModule, names: Sequence[str], tau: float) -> None:
        self.names = tuple(names)
        self.pairs = [
            (getattr(loss, name), getattr(loss, f"target_{name}"))
            for name in self.names
            if f"target_{name}" in loss._modules  # IQL's V has no target network
        ]
        self.tau = tau

    @torch.no_grad()
    def step(self) -> None:
        for source, target in self.pairs:
            torch._foreach_lerp_(
                list(target.values(True, True)), list(source.values(True, True)), self.tau
            )


def soft_update_keeping_targets(loss: LossModule, tau: float) -> SoftUpdate:
    """TorchRL's ``SoftUpdate`` (``theta' <- tau theta + (1 - tau) theta'``) without the hard copy
    ``theta' <- theta`` its constructor performs, so targets trained in an earlier phase (offline
    ``Q_off``'s, ``Q_on``'s after online pre-training) carry over unchanged."""
    targets = {
        name: module.clone()
        for name, module in loss.named_children()
        if name.startswith("target_") and name.endswith("_params")
    }
    updater = SoftUpdate(loss, tau=tau)
    with torch.no_grad():
        for name, saved in targets.items():
            getattr(loss, name).data.copy_(saved.data)
    return updater


def should_accelerate(config: AccelerationConfig, device: torch.device) -> tuple[bool, bool]:
    """Resolve ``(compile, cudagraphs)`` for ``device``; CUDA graphs on a CPU device is an error,
    and so is a ``graph_backend`` not in :data:`~torchrl_opt.pipeline.config.GRAPH_BACKENDS`."""
    if config.graph_backend not in GRAPH_BACKENDS:
        raise ValueError(
            f"unknown graph_backend {config.graph_backend!r}; expected one of {GRAPH_BACKENDS}"
        )
    on_cuda = torch.device(device).type == "cuda"
    compile_ = on_cuda if config.compile is None else bool(config.compile)
    cudagraphs = on_cuda if config.cudagraphs is None else bool(config.cudagraphs)
    if cudagraphs and not on_cuda:
        raise ValueError(f"cudagraphs=True needs a CUDA device, got {device}")
    return compile_, cudagraphs


def accelerate(
    step: StepFn, device: torch.device, config: AccelerationConfig | None = None
) -> StepFn:
    """Compile and/or CUDA-graph ``step`` according to ``config`` (see :class:`AccelerationConfig`).

    Steps share a few code objects, so Dynamo keeps one cache entry per step closure; the recompile
    limit is raised to :data:`RECOMPILE_LIMIT` so that a run's dozen steps never hit Dynamo's silent
    fall-back to eager.
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
    params: Sequence[nn.Parameter] | Sequence[dict[str, Any]],
    lr: float,
    device: torch.device,
    config: AccelerationConfig | None = None,
) -> torch.optim.Adam:
    """Adam whose state lives on ``device`` and can be captured in a CUDA graph when needed
    (``params``: parameters, or ``torch.optim`` parameter groups with their own ``lr``)."""
    _, cudagraphs = should_accelerate(config or AccelerationConfig(), device)
    params = list(params)
    if not params:
        raise ValueError("make_optimizer got no parameters to optimise")
    return torch.optim.Adam(params, lr=lr, capturable=cudagraphs)


def make_step(
    loss_fn: LossFn,
    loss_keys: tuple[str, ...],
    optimizer: torch.optim.Optimizer,
    *,
    target_updater: SoftUpdate | TargetUpdate | None = None,
) -> StepFn:
    """One gradient step: ``sum(loss_fn(batch)[k] for k in loss_keys)``, backward, optimiser step,
    then ``target_updater.step()`` (Polyak averaging) when given. Returns the detached output."""

    def step(batch: TensorDictBase) -> TensorDictBase:
        out = loss_fn(batch)
        total = sum(out.get(key) for key in loss_keys)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if target_updater is not None:
            target_updater.step()
        return out.detach()

    return step


def loss_method(fn: Callable[[TensorDictBase], tuple[torch.Tensor, dict]], key: str) -> LossFn:
    """A TorchRL ``(loss, metadata)`` method as a TensorDict function (the loss under ``key``)."""

    def call(batch: TensorDictBase) -> TensorDictBase:
        loss, metadata = fn(batch)
        return TensorDict({key: loss, **metadata}, batch_size=[])

    return call


def _all_target_pairs(loss: LossModule, tau: float) -> tuple[list[tuple[str, str]], float]:
    """Every ``(group, target_group)`` of ``loss`` and the Polyak weight ``SoftUpdate(tau=tau)``
    applies (``1 - eps`` with ``eps = 1 - tau``, rounded as TorchRL computes it)."""
    names = [
        name[len("target_"):]
        for name in loss._modules
        if name.startswith("target_") and name.endswith("_params")
    ]
    return [(name, f"target_{name}") for name in names], 1 - (1 - tau)


def _group_parameters(loss: LossModule, group: str) -> list[nn.Parameter]:
    return [p for p in getattr(loss, group).values(True, True) if isinstance(p, nn.Parameter)]


class UpdateEngine:
    """Builds the update steps of ``S`` seeds' losses: the one place that picks an engine.

    ``S = 1``: ``module`` steps, or ``functional`` ones with ``acceleration.functional``; ``S > 1``:
    ``seed_batched`` steps (one vmapped functional step for all seeds). Steps are then compiled /
    CUDA-graphed by :func:`accelerate`. The engine keeps one
    :class:`~torchrl_opt.pipeline.functional.SeedStack` per set of losses: every step that trains the
    same losses must read and write the same stacked storage.
    """

    def __init__(self, num_seeds: int, device: torch.device, acceleration: AccelerationConfig) -> None:
        self.num_seeds = int(num_seeds)
        self.device = torch.device(device)
        self.acceleration = acceleration
        if self.num_seeds > 1:
            self.kind = "seed_batched"
        else:
            self.kind = "functional" if acceleration.functional else "module"
        self._stacks: dict[tuple[int, ...], SeedStack] = {}

    def stack(self, losses: Sequence[LossModule]) -> SeedStack:
        """The seed stack of ``losses`` (built on first use, then shared)."""
        key = tuple(id(loss) for loss in losses)
        if key not in self._stacks:
            self._stacks[key] = SeedStack.of(list(losses))
        return self._stacks[key]

    def build(self, losses: Sequence[LossModule], update: UpdateDef) -> UpdateSpec:
        """The step ``update`` for ``losses`` (one per seed; the first is the template)."""
        if len(losses) != self.num_seeds:
            raise ValueError(f"got {len(losses)} losses for {self.num_seeds} seeds")
        loss = losses[0]
        loss_fn = update.fn(loss)
        if self.kind == "module":
            lrs = update.lr if isinstance(update.lr, dict) else dict.fromkeys(update.groups, update.lr)
            groups = [{"params": _group_parameters(loss, g), "lr": lrs[g]} for g in update.groups]
            optimizer = make_optimizer(groups, lrs[update.groups[0]], self.device, self.acceleration)
            updater = None
            if update.targets == "all":
                updater = soft_update_keeping_targets(loss, update.tau)
            elif update.targets is not None:
                updater = TargetUpdate(loss, update.targets, update.tau)
            step = make_step(loss_fn, update.keys, optimizer, target_updater=updater)
            return UpdateSpec(update.name, accelerate(step, self.device, self.acceleration), optimizer, update.every)
        pairs, weight = [], 0.0
        if update.targets == "all":
            pairs, weight = _all_target_pairs(loss, update.tau)
        elif update.targets is not None:
            pairs, weight = target_update_pairs(TargetUpdate(loss, update.targets, update.tau), loss)
        step = make_functional_step(
            loss, update.groups, loss_fn, update.keys, update.lr, target_updater_pairs=pairs, tau=weight
        )
        if self.kind == "seed_batched":
            step = SeedBatchedStep(self.stack(losses), step)
        return UpdateSpec(update.name, accelerate(step, self.device, self.acceleration), step.optimizer, update.every)

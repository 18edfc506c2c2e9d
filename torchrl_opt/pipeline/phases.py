"""OPT's three phases as plain loops (one loop per phase, no training logic elsewhere).

1. :func:`train_offline` — offline pre-training on ``B_off`` (TD3+BC, SPOT after its VAE, IQL).
2. :func:`collect_online` + :func:`pretrain_online` — ``N_tau`` steps of the frozen offline policy
   through a TorchRL ``Collector`` into ``B_on``, then ``N_pretrain`` meta-adaptation steps of Q_on.
3. :func:`finetune` — collector + replay strategy + dual-critic loss + kappa schedule, UTD ratio,
   delayed actor, density-ratio priorities for balanced replay, periodic evaluation.

Each loop takes a ``start`` step and calls ``on_checkpoint(step)`` every ``checkpoint_every`` steps,
so :mod:`torchrl_opt.pipeline.run` can save and resume any phase mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType

from torchrl_opt.data.replay import DensityRatioEstimator, MixedReplayBuffer
from torchrl_opt.direct_env import DirectCollector, use_direct
from torchrl_opt.pipeline.agents import Agent, UpdateSpec
from torchrl_opt.pipeline.logging import RunLogger
from torchrl_opt.pipeline.updates import StepFn
from torchrl_opt.schedules import KappaSchedule

__all__ = [
    "DensityRatioUpdater",
    "EvalFn",
    "collect_online",
    "finetune",
    "make_step_collector",
    "pretrain_online",
    "torchrl_collector",
    "sample_uniform",
    "train_offline",
    "train_vae",
]

#: ``evaluate(step) -> {"return": ..., "normalized_score": ...}``
EvalFn = Callable[[int], dict]
CheckpointFn = Callable[[int], None]


def sample_uniform(
    data: TensorDictBase,
    batch_size: int,
    generator: torch.Generator | Sequence[torch.Generator],
) -> TensorDictBase:
    """``batch_size`` rows of ``data`` drawn uniformly with replacement (a device op).

    With a sequence of ``S`` generators (one per seed of a seed-batched run) the batch is
    ``[S, batch_size]``: seed ``i``'s rows are drawn with ``generator[i]`` (exactly the rows a run
    of that seed alone draws), from ``data`` when it is shared (``[N]``) or from ``data[i]`` when
    each seed has its own rows (``[S, N]``); the gather is one op whatever ``S``.
    """
    if isinstance(generator, torch.Generator):
        index = torch.randint(
            data.shape[0], (batch_size,), generator=generator, device=generator.device
        )
        return data[index]
    generators = list(generator)
    if data.batch_dims == 2 and data.shape[0] != len(generators):
        raise ValueError(
            f"per-seed data of batch size {tuple(data.shape)} for {len(generators)} generators"
        )
    rows = data.shape[-1]
    index = torch.stack(
        [torch.randint(rows, (batch_size,), generator=g, device=g.device) for g in generators]
    )
    if data.batch_dims == 1:
        return data[index]
    seeds = torch.arange(len(generators), device=index.device).unsqueeze(-1)
    return data[seeds, index]


def run_updates(updates: list[UpdateSpec], batch: TensorDictBase, step: int, metrics: dict) -> None:
    for spec in updates:
        if step % spec.every == 0:
            metrics[spec.name] = spec.step(batch)


def merge_metrics(metrics: dict) -> TensorDictBase:
    merged = {}
    for out in metrics.values():
        merged.update({k: v for k, v in out.items()})
    return TensorDict(merged, batch_size=[])


def _schedule_values(agent: Agent, kappa: KappaSchedule | None) -> dict[str, torch.Tensor]:
    """The values the fine-tuning loss reads from its schedule buffers: ``kappa`` (the loss's
    ``kappa`` buffer, when a schedule drives it) and SPOT's cooled ``lambda``."""
    loss = getattr(agent, "finetune_loss", None)
    out: dict[str, torch.Tensor] = {}
    if kappa is not None and isinstance(getattr(loss, "kappa", None), torch.Tensor):
        out["kappa"] = loss.kappa.detach().clone()
    penalty = getattr(loss, "actor_penalty", None)
    if penalty is not None and isinstance(getattr(penalty, "lambda_", None), torch.Tensor):
        out["spot_lambda"] = penalty.lambda_.detach().clone()
    return out


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def train_vae(
    vae_step: StepFn,
    data: TensorDictBase,
    steps: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    logger: RunLogger,
    log_every: int,
    start: int = 0,
    on_checkpoint: CheckpointFn | None = None,
    checkpoint_every: int = 0,
) -> None:
    """SPOT's behaviour VAE: ``steps`` updates of ``recon + beta * KL`` on uniform batches."""
    logger.start_phase("vae", steps, start)
    for step in range(start + 1, steps + 1):
        out = vae_step(sample_uniform(data, batch_size, generator))
        if _due(step, log_every) or step == steps:
            values = logger.log(out, step, prefix="vae")
            logger.advance(0, loss_vae=values["loss_vae"])
        logger.advance()
        if on_checkpoint is not None and _due(step, checkpoint_every):
            on_checkpoint(step)
    logger.close_phase()


def train_offline(
    agent: Agent,
    updates: list[UpdateSpec],
    data: TensorDictBase,
    steps: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    logger: RunLogger,
    evaluate: EvalFn,
    log_every: int,
    eval_every: int,
    start: int = 0,
    on_checkpoint: CheckpointFn | None = None,
    checkpoint_every: int = 0,
) -> None:
    """Offline pre-training: ``steps`` updates of the backbone's offline loss on ``B_off``.

    Every update runs the agent's update specs in order (TD3: critic every step, actor and
    targets every ``actor_delay``; IQL: value, actor, Q and targets every step).
    """
    logger.start_phase("offline", steps, start)
    metrics: dict = {}
    for step in range(start + 1, steps + 1):
        batch = sample_uniform(data, batch_size, generator)
        run_updates(updates, batch, step - 1, metrics)
        if _due(step, log_every) or step == steps:
            values = logger.log(merge_metrics(metrics), step, prefix="offline")
            logger.advance(0, q_off=values.get("pred_value_off", float("nan")))
        if _due(step, eval_every) or step == steps:
            result = evaluate(step)
            logger.log(result, step, prefix="offline_eval")
            logger.advance(0, score=result["normalized_score"])
        logger.advance()
        if on_checkpoint is not None and _due(step, checkpoint_every):
            on_checkpoint(step)
    logger.close_phase()


def make_step_collector(
    env: EnvBase,
    policy,
    *,
    device: torch.device,
    exploration_type: ExplorationType = ExplorationType.RANDOM,
    direct: bool | None = None,
    prefetch: bool = False,
):
    """A collector of one transition per iteration, forever (``frames_per_batch=1``,
    ``total_frames=-1``): what fine-tuning steps. The env is reset now (a pending resume snapshot is
    restored then). :class:`~torchrl_opt.direct_env.DirectCollector` when ``direct`` resolves to
    ``True`` (:func:`~torchrl_opt.direct_env.use_direct`), else TorchRL's ``Collector``; both yield
    the same transitions. ``prefetch`` (the direct collector's one-step-ahead acting) needs
    direct stepping.

    Raises:
        ValueError: ``prefetch`` without direct stepping.
    """
    if use_direct(env, direct):
        return DirectCollector(
            env, policy, frames_per_batch=1, device=device, exploration_type=exploration_type,
            prefetch=prefetch,
        )
    if prefetch:
        raise ValueError(
            "finetune.prefetch_action needs direct env stepping, which this env does not support "
            f"(acceleration.direct_env={direct!r}); turn prefetching off"
        )
    return torchrl_collector(
        env, policy, frames_per_batch=1, total_frames=-1, device=device,
        exploration_type=exploration_type,
    )


def torchrl_collector(
    env: EnvBase,
    policy,
    *,
    frames_per_batch: int,
    total_frames: int,
    device: torch.device,
    exploration_type: ExplorationType,
) -> Collector:
    """TorchRL's ``Collector``, built without side effects on torch's RNG.

    The ``Collector`` runs the policy once at construction to find its output keys, which draws
    exploration noise from torch's global RNG; it is built on a forked RNG here, so a run's random
    stream does not depend on which collector steps its env (the
    :class:`~torchrl_opt.direct_env.DirectCollector` draws nothing at construction).
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return Collector(
            env,
            policy,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            policy_device=device,
            storing_device=device,
            exploration_type=exploration_type,
            # the policies read no recurrent/init state: keep the env as built (TorchRL 0.15
            # would otherwise append an InitTracker, changing the env's keys)
            auto_register_policy_transforms=False,
        )


def collect_online(
    env: EnvBase,
    policy,
    num_steps: int,
    *,
    device: torch.device,
    exploration_type: ExplorationType = ExplorationType.DETERMINISTIC,
    frames_per_batch: int = 1000,
    logger: RunLogger | None = None,
    direct: bool | None = None,
) -> TensorDictBase:
    """Roll out ``policy`` (frozen, deterministic by default: OPT's ``B_on``) for ``num_steps``.

    Returns the flat ``[num_steps]`` transitions on ``device``. The env runs where it lives (CPU for
    MuJoCo); the policy runs on ``device``. ``direct``: collect with
    :class:`~torchrl_opt.direct_env.DirectCollector` (TorchRL's transitions, less host time; see
    :func:`~torchrl_opt.direct_env.use_direct`) instead of TorchRL's ``Collector``.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    frames_per_batch = min(frames_per_batch, num_steps)
    if use_direct(env, direct):
        collector = DirectCollector(
            env, policy, frames_per_batch=frames_per_batch, device=device,
            exploration_type=exploration_type,
        )
    else:
        collector = torchrl_collector(
            env, policy, frames_per_batch=frames_per_batch,
            total_frames=-(-num_steps // frames_per_batch) * frames_per_batch, device=device,
            exploration_type=exploration_type,
        )
    chunks = []
    collected = 0
    if logger is not None:
        logger.start_phase("collect B_on", num_steps)
    with torch.no_grad():
        for batch in collector:
            chunks.append(batch.reshape(-1))
            kept = min(batch.numel(), num_steps - collected)  # the last batch may overshoot
            collected += kept
            if logger is not None:
                logger.advance(kept)
            if collected >= num_steps:
                break
    collector.shutdown()
    if logger is not None:
        logger.close_phase()
    return torch.cat(chunks)[:num_steps]


def pretrain_online(
    pretrain_step: StepFn,
    offline: TensorDictBase,
    online: TensorDictBase,
    steps: int,
    batch_size: int,
    *,
    generator: torch.Generator,
    logger: RunLogger,
    log_every: int,
    start: int = 0,
    on_checkpoint: CheckpointFn | None = None,
    checkpoint_every: int = 0,
) -> None:
    """Online pre-training: ``steps`` meta-adaptation updates of the online critics.

    Each update draws ``batch_size`` rows from ``B_off`` and ``batch_size`` from ``B_on`` (per seed,
    with one generator per seed, for a seed-batched step: see :func:`sample_uniform`).
    """
    logger.start_phase("online pre-training", steps, start)
    for step in range(start + 1, steps + 1):
        offline_batch = sample_uniform(offline, batch_size, generator)
        online_batch = sample_uniform(online, batch_size, generator)
        batch = TensorDict(
            offline=offline_batch,
            online=online_batch,
            batch_size=offline_batch.batch_size[:-1],
        )
        out = pretrain_step(batch)
        if _due(step, log_every) or step == steps:
            values = logger.log(out, step, prefix="pretrain")
            logger.advance(0, loss=values["loss_pretrain"])
        logger.advance()
        if on_checkpoint is not None and _due(step, checkpoint_every):
            on_checkpoint(step)
    logger.close_phase()


@dataclass
class DensityRatioUpdater:
    """Off2On's per-update density-ratio step: train ``w`` on 256 offline + 256 online rows, then
    set the RL batch's priorities to ``w^(1/T) / mean_off(w^(1/T))`` (clamped)."""

    estimator: DensityRatioEstimator
    optimizer: torch.optim.Optimizer
    batch_size: int = 256

    def __call__(self, replay: MixedReplayBuffer, sample: TensorDictBase) -> torch.Tensor:
        offline, online = replay.sample_offline_online(self.batch_size)
        loss, priority = self.estimator.loss_and_priorities(offline, online, sample)
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.step()
        replay.update_priority(sample["index"], priority)
        return loss.detach()

    def state_dict(self) -> dict:
        """The estimator's and its optimiser's state (what a checkpoint stores)."""
        return {"estimator": self.estimator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.optimizer.load_state_dict(state["optimizer"])


def finetune(
    agent: Agent,
    updates: list[UpdateSpec],
    replay: MixedReplayBuffer,
    collector: Collector,
    env_steps: int,
    utd: int,
    *,
    kappa: KappaSchedule | None,
    density: DensityRatioUpdater | None,
    logger: RunLogger,
    evaluate: EvalFn,
    log_every: int,
    eval_every: int,
    start: int = 0,
    update_count: int = 0,
    on_checkpoint: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
    step_penalty: Callable[[], None] | None = None,
) -> int:
    """Online fine-tuning for ``env_steps`` environment steps; returns the number of updates done.

    Per environment step: store the transition, advance kappa (and SPOT's lambda cooling), run
    ``utd`` updates (critics every update, actor every ``actor_delay`` counted over updates), each
    followed by a density-ratio priority update when replay is balanced.

    The collector's batches are ``[T]`` (one env) or ``[S, T]`` (one env per seed of a
    seed-batched run, with a seed-batched replay and steps): the last dimension is time, and each
    environment step stores one transition per seed.
    """
    logger.start_phase("fine-tuning", env_steps, start)
    metrics: dict = {}
    env_step = start
    if env_step >= env_steps:  # nothing left to do (e.g. finetune.env_steps=0)
        logger.close_phase()
        return update_count
    for batch in collector:
        for transition in batch.unbind(-1):
            replay.extend(transition)
            env_step += 1
            if kappa is not None:
                kappa.step()
            if step_penalty is not None:
                step_penalty()
            for _ in range(utd):
                sample = replay.sample()
                run_updates(updates, sample, update_count, metrics)
                if density is not None:
                    metrics["density"] = TensorDict(loss_density=density(replay, sample))
                update_count += 1
            if _due(env_step, log_every) or env_step == env_steps:
                merged = merge_metrics(metrics)
                merged.update(_schedule_values(agent, kappa))
                values = logger.log(merged, env_step, prefix="finetune")
                logger.advance(0, q_on=values.get("pred_value_on", float("nan")))
            if _due(env_step, eval_every) or env_step == env_steps:
                result = evaluate(env_step)
                logger.log(result, env_step, prefix="eval")
                logger.advance(0, score=result["normalized_score"])
            logger.advance()
            if on_checkpoint is not None and _due(env_step, checkpoint_every):
                on_checkpoint(env_step, update_count)
            if env_step >= env_steps:
                break
        if env_step >= env_steps:
            break
    logger.close_phase()
    return update_count

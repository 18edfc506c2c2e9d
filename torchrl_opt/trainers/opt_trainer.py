"""``OPTTrainer``: OPT's online phases as a :class:`torchrl.trainers.Trainer` with hooks.

A thin layer over :mod:`torchrl_opt.pipeline`: the same update specs (compiled / CUDA-graphed by
:func:`torchrl_opt.pipeline.updates.accelerate`), the same phase functions
(:func:`~torchrl_opt.pipeline.phases.collect_online`, :func:`~torchrl_opt.pipeline.phases.pretrain_online`,
:class:`~torchrl_opt.pipeline.phases.DensityRatioUpdater`) and the same per-update body as
:func:`~torchrl_opt.pipeline.phases.finetune`, spread over TorchRL's hook stages:

====================  ==========================================================================
stage                 OPT work
====================  ==========================================================================
(before the loop)     online pre-training: ``N_tau`` steps of the frozen offline policy into
                      ``B_on`` (and into the replay buffer), then ``N_pretrain`` meta-adaptation
                      updates of ``Q_on`` (Eq. 3) — :class:`OnlinePretrainPhase`
``batch_process``     store the collected transitions in the mixed replay buffer
                      (:class:`MixedReplayHook`), then advance ``kappa`` (Eq. 4's weight) and
                      SPOT's penalty cooling by the number of new frames (:class:`KappaScheduleHook`)
``process_optim_batch``  sample the replay buffer (balanced / symmetric / online / uniform)
optimisation step     the backbone's update specs, critics every update, actor every
                      ``actor_delay`` updates (:class:`OPTOptimizationStepper`)
``post_optim``        density-ratio step and balanced-replay priorities of the sampled rows,
                      ``p = clamp(w^(1/T) / mean_off(w^(1/T)), 1e-3, 1e3)`` (:class:`BalancedReplayHook`)
``post_steps_log``    deterministic evaluation in normalised score (:class:`EvaluationHook`)
====================  ==========================================================================

With ``frames_per_batch=1`` and ``optim_steps_per_batch=utd`` the trainer performs exactly the
work of :func:`~torchrl_opt.pipeline.phases.finetune`, in the same order; built with
:meth:`OPTTrainer.from_run_config` it consumes random numbers in the pipeline's order and
reproduces :func:`torchrl_opt.pipeline.run.run` for the same seed and configuration.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import BaseCollector, Collector
from torchrl.envs import EnvBase
from torchrl.objectives.common import LossModule
from torchrl.record.loggers import Logger
from torchrl.trainers import (
    OptimizationStepper,
    Trainer,
    TrainerHookBase,
    UpdateWeights,
)

from torchrl_opt.data.replay import (
    MixedReplayBuffer,
    make_replay,
)
from torchrl_opt.pipeline.agents import UpdateSpec, load_offline_state
from torchrl_opt.pipeline.agents import make_update_specs as pipeline_update_specs
from torchrl_opt.pipeline.config import BackboneConfig, RunConfig, to_run_config
from torchrl_opt.pipeline.logging import RunLogger
from torchrl_opt.pipeline.phases import (
    DensityRatioUpdater,
    collect_online,
    make_step_collector,
    merge_metrics,
    pretrain_online,
    run_updates,
)
from torchrl_opt.pipeline.updates import AccelerationConfig
from torchrl_opt.schedules import KappaSchedule

__all__ = [
    "OPTTrainer",
    "OPTOptimizationStepper",
    "OnlinePretrainPhase",
    "MixedReplayHook",
    "KappaScheduleHook",
    "BalancedReplayHook",
    "EvaluationHook",
    "make_update_specs",
    "TrainerConfigError",
]


class TrainerConfigError(ValueError):
    """An ``OPTTrainer`` argument is inconsistent (wrong type, missing piece, bad interval)."""


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


# ---------------------------------------------------------------------------------------------
# Update specs for a user-built loss
# ---------------------------------------------------------------------------------------------
def make_update_specs(
    loss: LossModule,
    backbone: BackboneConfig | None = None,
    device: torch.device | str | None = None,
    acceleration: AccelerationConfig | None = None,
) -> list[UpdateSpec]:
    """The fine-tuning update specs of ``loss`` (``OPTLoss`` or ``OPTIQLLoss``), as the pipeline builds them.

    TD3/SPOT: ``critic`` (every update: ``sum_c L_Q_c``, Eq. 2, for ``c`` in ``loss.critics``) and
    ``actor`` (every ``backbone.actor_delay`` updates, Eq. 4, followed by Polyak averaging
    ``theta' <- tau theta + (1 - tau) theta'``). IQL: ``value``, ``actor`` (Eq. 9), ``qvalue``
    (+ targets) every update. Steps are compiled / CUDA-graphed per ``acceleration`` (on by default
    on CUDA, see :func:`torchrl_opt.pipeline.updates.accelerate`).
    """
    if not isinstance(loss, LossModule):
        raise TrainerConfigError(f"loss must be a TorchRL LossModule, got {type(loss).__name__}")
    if backbone is None:
        from torchrl_opt.objectives.iql_opt import OPTIQLLoss

        backbone = BackboneConfig(name="iql" if isinstance(loss, OPTIQLLoss) else "td3")
    if device is None:
        device = next(loss.parameters()).device
    return pipeline_update_specs(
        loss, backbone, torch.device(device), acceleration or AccelerationConfig()
    )


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
class OPTOptimizationStepper(OptimizationStepper):
    """One OPT update per call: the update specs in order, each when ``update_count % every == 0``.

    The per-update body of :func:`torchrl_opt.pipeline.phases.finetune` (critics every update,
    TD3's actor and targets every ``actor_delay`` updates counted over updates). Returns the
    latest metrics of every spec, merged into one flat TensorDict (cloned, so CUDA-graph output
    buffers are not aliased by the trainer's running average).

    ``updates`` is a list of :class:`UpdateSpec` or a zero-argument factory of one, called by
    :meth:`build` (the trainer calls it when fine-tuning starts: building TorchRL's ``SoftUpdate``
    copies every source network into its target, which the pipeline does after online
    pre-training).
    """

    def __init__(
        self,
        updates: Sequence[UpdateSpec] | Callable[[], Sequence[UpdateSpec]],
        *,
        update_count: int = 0,
    ) -> None:
        self._factory: Callable[[], Sequence[UpdateSpec]] | None = None
        self._updates: list[UpdateSpec] | None = None
        if callable(updates):
            self._factory = updates
        else:
            self._updates = self._check(updates)
        self.update_count = int(update_count)
        self._metrics: dict = {}

    @staticmethod
    def _check(updates: Sequence[UpdateSpec]) -> list[UpdateSpec]:
        updates = list(updates)
        if not updates or not all(isinstance(spec, UpdateSpec) for spec in updates):
            raise TrainerConfigError(
                f"OPTOptimizationStepper needs a non-empty list of UpdateSpec, got {updates!r}"
            )
        names = [spec.name for spec in updates]
        if len(set(names)) != len(names):
            raise TrainerConfigError(f"update spec names must be unique, got {names}")
        return updates

    def build(self) -> list[UpdateSpec]:
        """The update specs (calling the factory on first use)."""
        if self._updates is None:
            self._updates = self._check(self._factory())
        return self._updates

    @property
    def updates(self) -> list[UpdateSpec]:
        return self.build()

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        run_updates(self.build(), sub_batch, self.update_count, self._metrics)
        self.update_count += 1
        return merge_metrics(self._metrics).clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "update_count": self.update_count,
            "optimizers": {spec.name: spec.optimizer.state_dict() for spec in self.build()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.update_count = int(state_dict["update_count"])
        for spec in self.build():
            spec.optimizer.load_state_dict(state_dict["optimizers"][spec.name])


class MixedReplayHook(TrainerHookBase):
    """Stores collected transitions in a :class:`MixedReplayBuffer` and samples its batches.

    Unlike TorchRL's ``ReplayBufferTrainer`` the batch stays on its device (no ``.cpu()`` round
    trip): the buffer's storage lives on the training device.
    """

    def __init__(self, replay_buffer: MixedReplayBuffer) -> None:
        if not isinstance(replay_buffer, MixedReplayBuffer):
            raise TrainerConfigError(
                f"replay_buffer must be a MixedReplayBuffer (make_replay), got {type(replay_buffer).__name__}"
            )
        self.replay_buffer = replay_buffer

    def extend(self, batch: TensorDictBase) -> TensorDictBase:
        if ("collector", "mask") in batch.keys(True):
            batch = batch[batch.get(("collector", "mask"))]
        else:
            batch = batch.reshape(-1)
        self.replay_buffer.extend(batch)
        return batch

    def sample(self, batch: TensorDictBase | None) -> TensorDictBase:
        return self.replay_buffer.sample()

    def state_dict(self) -> dict[str, Any]:
        return {"replay_buffer": self.replay_buffer.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.replay_buffer.load_state_dict(state_dict["replay_buffer"])

    def register(self, trainer: Trainer, name: str = "replay_buffer") -> None:
        trainer.register_op("batch_process", self.extend)
        trainer.register_op("process_optim_batch", self.sample)
        trainer.register_module(name, self)


class KappaScheduleHook(TrainerHookBase):
    """Advances ``kappa`` (and SPOT's penalty cooling) by the number of frames of each batch.

    Registered on ``batch_process`` after the replay hook, so that, as in the pipeline, a
    transition is stored, then ``kappa(t)`` is written into the loss's buffer, then the updates of
    that step run. ``kappa(t)`` is linear from ``kappa_init`` to ``kappa_end`` over ``T_decay``
    environment steps (:class:`~torchrl_opt.schedules.KappaSchedule`).
    """

    def __init__(
        self,
        kappa: KappaSchedule | None,
        loss: LossModule | None = None,
        *,
        penalty_step: Callable[[], Any] | None = None,
    ) -> None:
        if kappa is None and penalty_step is None:
            raise TrainerConfigError("KappaScheduleHook needs a kappa schedule or a penalty_step")
        self.kappa = kappa
        self.penalty_step = penalty_step
        if kappa is not None and loss is not None:
            if not hasattr(loss, "kappa"):
                raise TrainerConfigError(f"{type(loss).__name__} has no kappa buffer to schedule")
            kappa.attach(loss.kappa)

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        frames = batch.numel()
        for _ in range(frames):
            if self.kappa is not None:
                self.kappa.step()
            if self.penalty_step is not None:
                self.penalty_step()
        return batch

    def log(self, batch: TensorDictBase) -> dict[str, float]:
        return {"kappa": self.kappa.current} if self.kappa is not None else {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.kappa is not None:
            state["kappa"] = self.kappa.state_dict()
        penalty = getattr(self.penalty_step, "__self__", None)
        if penalty is not None and hasattr(penalty, "state_dict"):
            state["penalty"] = penalty.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self.kappa is not None:
            self.kappa.load_state_dict(state_dict["kappa"])
        penalty = getattr(self.penalty_step, "__self__", None)
        if "penalty" in state_dict and penalty is not None:
            penalty.load_state_dict(state_dict["penalty"])

    def register(self, trainer: Trainer, name: str = "kappa_schedule") -> None:
        trainer.register_op("batch_process", self)
        if self.kappa is not None:
            trainer.register_op("pre_steps_log", self.log)
        trainer.register_module(name, self)


class BalancedReplayHook(TrainerHookBase):
    """Off2On's density-ratio step and balanced-replay priority update after every update.

    ``process_optim_batch`` records the sampled batch; ``post_optim`` runs
    :class:`~torchrl_opt.pipeline.phases.DensityRatioUpdater` on it: one Adam step on
    ``L_w = mean_off[-log(2/(w+1))] - mean_on[log(2w/(w+1))]`` (256 offline + 256 online rows), then
    the sampled rows get priority ``clamp(w^(1/T) / mean_off(w^(1/T)), 1e-3, 1e3)``.

    ``density`` is a ready ``DensityRatioUpdater`` or a zero-argument factory; a factory is called
    at :meth:`build` (the trainer calls it when fine-tuning starts, after online pre-training, where
    the pipeline initialises the estimator).
    """

    def __init__(
        self, replay_buffer: MixedReplayBuffer, density: DensityRatioUpdater | Callable[[], DensityRatioUpdater]
    ) -> None:
        if replay_buffer.strategy != "balanced":
            raise TrainerConfigError(
                f"balanced-replay priorities need a 'balanced' replay buffer, got {replay_buffer.strategy!r}"
            )
        self.replay_buffer = replay_buffer
        self._factory: Callable[[], DensityRatioUpdater] | None = None
        self.density: DensityRatioUpdater | None = None
        if isinstance(density, DensityRatioUpdater):
            self.density = density
        elif callable(density):
            self._factory = density
        else:
            raise TrainerConfigError(
                f"density must be a DensityRatioUpdater or a factory, got {type(density).__name__}"
            )
        self._sample: TensorDictBase | None = None
        self.last_loss: torch.Tensor | None = None

    def build(self) -> DensityRatioUpdater:
        if self.density is None:
            density = self._factory()
            if not isinstance(density, DensityRatioUpdater):
                raise TrainerConfigError(
                    f"the density factory returned {type(density).__name__}, not a DensityRatioUpdater"
                )
            self.density = density
        return self.density

    def record(self, batch: TensorDictBase) -> TensorDictBase:
        self._sample = batch
        return batch

    def update(self) -> None:
        if self._sample is None:
            raise RuntimeError("BalancedReplayHook.update ran before a batch was sampled")
        self.last_loss = self.build()(self.replay_buffer, self._sample)
        self._sample = None

    def log(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        return {"loss_density": self.last_loss} if self.last_loss is not None else {}

    def state_dict(self) -> dict[str, Any]:
        density = self.build()
        return {
            "estimator": density.estimator.state_dict(),
            "optimizer": density.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        density = self.build()
        density.estimator.load_state_dict(state_dict["estimator"])
        density.optimizer.load_state_dict(state_dict["optimizer"])

    def register(self, trainer: Trainer, name: str = "balanced_replay") -> None:
        trainer.register_op("process_optim_batch", self.record)
        trainer.register_op("post_optim", self.update)
        trainer.register_op("post_optim_log", self.log)
        trainer.register_module(name, self)


class EvaluationHook(TrainerHookBase):
    """Runs ``evaluate(frames)`` every ``interval`` collected frames and at ``total_frames``.

    ``evaluate`` returns ``{"return": ..., "normalized_score": ...}`` (e.g. the pipeline's
    deterministic evaluation in D4RL normalised score); results are logged as ``eval/<key>`` and
    kept in :attr:`history` as ``(frames, result)``.
    """

    def __init__(
        self, evaluate: Callable[[int], Mapping[str, float]], interval: int, total_frames: int
    ) -> None:
        if interval < 0:
            raise TrainerConfigError(f"evaluation interval must be >= 0, got {interval}")
        self.evaluate = evaluate
        self.interval = int(interval)
        self.total_frames = int(total_frames)
        self.trainer: Trainer | None = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def __call__(self, batch: TensorDictBase | None) -> dict[str, float] | None:
        frames = int(self.trainer.collected_frames)
        if not (_due(frames, self.interval) or frames == self.total_frames):
            return None
        result = {k: float(v) for k, v in self.evaluate(frames).items()}
        self.history.append((frames, result))
        return {f"eval/{k}": v for k, v in result.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[frames, dict(result)] for frames, result in self.history]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.history = [(int(f), dict(r)) for f, r in state_dict["history"]]

    def register(self, trainer: Trainer, name: str = "evaluation") -> None:
        self.trainer = trainer
        trainer.register_op("post_steps_log", self)
        trainer.register_module(name, self)


class _TorchRLRunLogger(RunLogger):
    """The pipeline's :class:`RunLogger` writing to a TorchRL ``Logger`` instance (or nowhere)."""

    def __init__(self, logger: Logger | None, progress: bool) -> None:
        super().__init__("none", ".", "opt", progress=progress)
        self._logger = logger


class OnlinePretrainPhase(TrainerHookBase):
    """OPT's online pre-training (phase 2), run by :meth:`OPTTrainer.pretrain` before the loop.

    1. ``n_tau`` steps of the frozen offline ``policy`` (deterministic) on ``make_env()`` with
       :func:`~torchrl_opt.pipeline.phases.collect_online`; the transitions (``B_on``) go into
       the trainer's replay buffer.
    2. ``steps`` meta-adaptation updates of the online critics only
       (``L_off(psi) + L_on(psi - alpha grad L_off(psi))``, Eq. 3) with
       :func:`~torchrl_opt.pipeline.phases.pretrain_online`, each on ``batch_size`` rows of
       ``B_off`` and of ``B_on`` drawn with ``generator``.

    ``pretrain_update=None`` (or ``steps=0``) only collects ``B_on`` (baselines, random-init ablation).
    """

    def __init__(
        self,
        *,
        offline_data: TensorDictBase,
        make_env: Callable[[], EnvBase],
        policy: nn.Module,
        n_tau: int,
        pretrain_update: UpdateSpec | None,
        steps: int,
        batch_size: int,
        generator: torch.Generator,
        log_every: int = 1000,
        frames_per_batch: int = 1000,
    ) -> None:
        if n_tau < 0 or steps < 0 or batch_size < 1:
            raise TrainerConfigError(
                f"need n_tau >= 0, steps >= 0, batch_size >= 1; got {n_tau}, {steps}, {batch_size}"
            )
        if pretrain_update is not None and steps > 0 and n_tau == 0:
            raise TrainerConfigError("online pre-training needs n_tau > 0 transitions in B_on")
        self.offline_data = offline_data
        self.make_env = make_env
        self.policy = policy
        self.n_tau = int(n_tau)
        self.pretrain_update = pretrain_update
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.generator = generator
        self.log_every = int(log_every)
        self.frames_per_batch = int(frames_per_batch)
        self.done = False
        self.online_data: TensorDictBase | None = None

    def run(self, trainer: OPTTrainer) -> None:
        """Collect ``B_on`` into ``trainer.replay_buffer`` and pre-train the online critics."""
        if self.done:
            return
        logger = _TorchRLRunLogger(trainer.logger, progress=trainer.progress_bar)
        device = trainer.replay_buffer.device
        if self.n_tau > 0:
            env = self.make_env()
            self.online_data = collect_online(
                env, self.policy, self.n_tau, device=device,
                frames_per_batch=self.frames_per_batch, logger=logger,
            )
            env.close()
            trainer.replay_buffer.extend(self.online_data)
        if self.pretrain_update is not None and self.steps > 0:
            pretrain_online(
                self.pretrain_update.step, self.offline_data, self.online_data, self.steps,
                self.batch_size, generator=self.generator, logger=logger, log_every=self.log_every,
            )
        self.history = dict(logger.history)
        self.done = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"done": self.done}
        if self.pretrain_update is not None:
            state["optimizer"] = self.pretrain_update.optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.done = bool(state_dict["done"])
        if self.pretrain_update is not None and "optimizer" in state_dict:
            self.pretrain_update.optimizer.load_state_dict(state_dict["optimizer"])

    def register(self, trainer: Trainer, name: str = "online_pretrain") -> None:
        trainer.register_module(name, self)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class OPTTrainer(Trainer):
    """OPT's online phases (online pre-training, then fine-tuning) as a TorchRL ``Trainer``.

    Args (keyword only):
        collector: the fine-tuning collector (exploration policy), or a zero-argument factory
            returning one; a factory is called when fine-tuning starts (after online
            pre-training), where the pipeline builds its collector.
        total_frames: fine-tuning environment steps.
        loss_module: the fine-tuning ``OPTLoss`` / ``OPTIQLLoss`` (Q_off, Q_on, actor, kappa buffer).
        replay_buffer: a :class:`~torchrl_opt.data.replay.MixedReplayBuffer` (B_off ∪ B_on).
        optim_steps_per_batch: updates per collected batch (UTD x ``frames_per_batch``).
        updates: the update specs, or a factory of them called when fine-tuning starts (default:
            :func:`make_update_specs` of ``loss_module`` with ``backbone`` and ``acceleration``,
            built lazily); compiled / CUDA-graphed per ``acceleration``.
        backbone, acceleration: used only when ``updates`` is not given.
        kappa: the kappa schedule, stepped once per collected frame (``None`` keeps kappa fixed).
        penalty_step: SPOT's penalty cooling step (``loss_module.actor_penalty.step``), once per frame.
        density: the density-ratio updater (or factory) for balanced replay; required when the
            replay strategy is ``"balanced"``, refused otherwise.
        online_pretrain: an :class:`OnlinePretrainPhase` run before fine-tuning (``None``: skip).
        offline_checkpoint: an ``offline.pt`` written by the pipeline; its ``offline_loss`` state
            initialises the actor, ``Q_off`` (``V_off``) and their targets of ``loss_module``
            (``Q_on``/``V_on`` keep their fresh initialisation).
        evaluate, eval_interval: evaluation function ``frames -> {"return", "normalized_score"}``
            run every ``eval_interval`` frames and at the end.
        update_weights_interval: register TorchRL's ``UpdateWeights`` hook (multi-process
            collectors); 0 skips it (a local ``Collector`` shares the policy module).

    The remaining keyword arguments (``logger``, ``progress_bar``, ``save_trainer_interval``,
    ``log_interval``, ``save_trainer_file``, ``checkpoint``, ``checkpoint_rotation``,
    ``checkpoint_metadata``, ``log_timings``, ``auto_log_optim_steps``) are TorchRL's
    :class:`~torchrl.trainers.Trainer` ones. Checkpoints cover the loss, every optimiser, the
    update counter, kappa, the replay buffer (priorities included), the density estimator and
    whether online pre-training is done.
    """

    _collector_factory: Callable[[], BaseCollector] | None = None

    def __init__(
        self,
        *,
        collector: BaseCollector | Callable[[], BaseCollector],
        total_frames: int,
        loss_module: LossModule,
        replay_buffer: MixedReplayBuffer,
        optim_steps_per_batch: int = 5,
        frame_skip: int = 1,
        updates: Sequence[UpdateSpec] | Callable[[], Sequence[UpdateSpec]] | None = None,
        backbone: BackboneConfig | None = None,
        acceleration: AccelerationConfig | None = None,
        kappa: KappaSchedule | None = None,
        penalty_step: Callable[[], Any] | None = None,
        density: DensityRatioUpdater | Callable[[], DensityRatioUpdater] | None = None,
        online_pretrain: OnlinePretrainPhase | None = None,
        offline_checkpoint: str | Path | None = None,
        evaluate: Callable[[int], Mapping[str, float]] | None = None,
        eval_interval: int = 0,
        update_weights_interval: int = 0,
        logger: Logger | None = None,
        progress_bar: bool = True,
        save_trainer_interval: int = 10000,
        log_interval: int = 10000,
        save_trainer_file: str | Path | None = None,
        checkpoint: Any = None,
        checkpoint_rotation: Any = None,
        checkpoint_metadata: Callable[[Trainer], Mapping[str, Any]] | None = None,
        log_timings: bool = False,
        auto_log_optim_steps: bool = True,
    ) -> None:
        if not isinstance(loss_module, LossModule):
            raise TrainerConfigError(
                f"loss_module must be an OPTLoss/OPTIQLLoss, got {type(loss_module).__name__}"
            )
        if total_frames < 1 or optim_steps_per_batch < 1:
            raise TrainerConfigError(
                f"need total_frames >= 1 and optim_steps_per_batch >= 1; got {total_frames}, "
                f"{optim_steps_per_batch}"
            )
        if not isinstance(replay_buffer, MixedReplayBuffer):
            raise TrainerConfigError(
                f"replay_buffer must be a MixedReplayBuffer (make_replay), got {type(replay_buffer).__name__}"
            )
        if (replay_buffer.strategy == "balanced") != (density is not None):
            raise TrainerConfigError(
                "balanced replay needs a density-ratio updater and other strategies take none; got "
                f"strategy={replay_buffer.strategy!r}, density={'set' if density is not None else None}"
            )
        if offline_checkpoint is not None:
            load_offline_checkpoint(loss_module, offline_checkpoint)
        if updates is None:

            def updates() -> list[UpdateSpec]:
                return make_update_specs(loss_module, backbone, None, acceleration)

        stepper = OPTOptimizationStepper(updates)
        super().__init__(
            collector=collector,
            total_frames=total_frames,
            frame_skip=frame_skip,
            optim_steps_per_batch=optim_steps_per_batch,
            loss_module=loss_module,
            optimizer=None,
            optimization_stepper=stepper,
            replay_buffer=replay_buffer,
            logger=logger,
            clip_grad_norm=False,
            clip_norm=None,
            progress_bar=progress_bar,
            seed=None,
            save_trainer_interval=save_trainer_interval,
            log_interval=log_interval,
            save_trainer_file=save_trainer_file,
            checkpoint=checkpoint,
            checkpoint_rotation=checkpoint_rotation,
            checkpoint_metadata=checkpoint_metadata,
            log_timings=log_timings,
            auto_log_optim_steps=auto_log_optim_steps,
        )
        self.replay_buffer = replay_buffer
        self.kappa = kappa
        self.online_pretrain = online_pretrain
        self.update_weights_interval = int(update_weights_interval)
        self.wall_clock: dict[str, float] = {}

        if online_pretrain is not None:
            online_pretrain.register(self)
        MixedReplayHook(replay_buffer).register(self)
        if kappa is not None or penalty_step is not None:
            KappaScheduleHook(kappa, loss_module, penalty_step=penalty_step).register(self)
        self.balanced_replay: BalancedReplayHook | None = None
        if density is not None:
            self.balanced_replay = BalancedReplayHook(replay_buffer, density)
            self.balanced_replay.register(self)
        self.evaluation: EvaluationHook | None = None
        if evaluate is not None:
            self.evaluation = EvaluationHook(evaluate, eval_interval, total_frames)
            self.evaluation.register(self)

    # ------------------------------------------------------------------ lazy collector
    @property
    def collector(self) -> BaseCollector:
        if self._collector is None and self._collector_factory is not None:
            collector = self._collector_factory()
            if not isinstance(collector, BaseCollector):
                raise TrainerConfigError(
                    f"the collector factory returned {type(collector).__name__}, not a BaseCollector"
                )
            self._collector = collector
        return self._collector

    @collector.setter
    def collector(self, collector: BaseCollector | Callable[[], BaseCollector]) -> None:
        if isinstance(collector, BaseCollector):
            self._collector = collector
        elif callable(collector):
            self._collector_factory = collector
            self._collector = None
        else:
            raise TrainerConfigError(
                f"collector must be a BaseCollector or a factory, got {type(collector).__name__}"
            )

    # ------------------------------------------------------------------ phases
    @property
    def update_count(self) -> int:
        """Fine-tuning updates done so far (the actor-delay counter)."""
        return self.optimization_stepper.update_count

    def pretrain(self) -> None:
        """Online pre-training (collect ``B_on``, pre-train ``Q_on``); a no-op once done."""
        if self.online_pretrain is None or self.online_pretrain.done:
            return
        t0 = time.perf_counter()
        self.online_pretrain.run(self)
        self.wall_clock["pretrain"] = time.perf_counter() - t0

    def start_finetuning(self) -> None:
        """Build what fine-tuning needs in the pipeline's order: update specs (targets synchronised
        with their sources), density estimator, collector."""
        self.optimization_stepper.build()
        if self.balanced_replay is not None:
            self.balanced_replay.build()
        collector = self.collector
        if self.update_weights_interval > 0 and "update_weights" not in self._modules:
            UpdateWeights(collector, self.update_weights_interval).register(self)

    def load_from_file(self, file: str | Path, **kwargs: Any) -> OPTTrainer:
        """TorchRL's checkpoint loading, after building the fine-tuning pieces (whose construction
        would otherwise overwrite restored state: ``SoftUpdate`` copies sources into targets)."""
        self.start_finetuning()
        return super().load_from_file(file, **kwargs)

    def train(self) -> None:
        """Online pre-training, then fine-tuning through TorchRL's training loop."""
        self.pretrain()
        self.start_finetuning()
        t0 = time.perf_counter()
        super().train()
        self.wall_clock["finetune"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_run_config(
        cls, cfg: RunConfig | Mapping[str, Any] | Any, **trainer_kwargs: Any
    ) -> OPTTrainer:
        """Build the trainer of a pipeline configuration (:class:`~torchrl_opt.pipeline.config.RunConfig`).

        Data, environments, agent, offline phase (``cfg.offline.checkpoint`` loaded, or offline
        pre-training run and saved to ``<run_dir>/offline.pt``), kappa schedule, replay buffer,
        density estimator, evaluation and collectors are those of
        :func:`torchrl_opt.pipeline.run.run`, created in the same order, so the same seed gives the
        same run. ``trainer_kwargs`` go to :class:`OPTTrainer` (``logger``, ``save_trainer_file``,
        ``log_interval``, ...). Mid-phase resume of the pipeline's own ``checkpoint.pt`` does not
        apply here: use TorchRL's trainer checkpoints.
        """
        from torchrl_opt.pipeline.run import RunContext

        cfg = to_run_config(cfg)
        # the pipeline's own logger is replaced by the trainer's TorchRL logger
        cfg = dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, backend="none"))
        logger = trainer_kwargs.get("logger")
        progress = trainer_kwargs.get("progress_bar", cfg.logging.progress)
        trainer_kwargs.setdefault("progress_bar", progress)
        r = RunContext(cfg)
        r.logger = _TorchRLRunLogger(logger, progress=progress)
        r.offline_phase(None)
        agent = r.agent
        ft = cfg.finetune
        kappa = r.initial_kappa()
        loss = r.build_finetune_loss(kappa)
        pretrain_update = None
        if ft.use_q_on and cfg.online_pretrain.steps > 0:
            pretrain_update = agent.pretrain_update(cfg.online_pretrain)
        online_pretrain = OnlinePretrainPhase(
            offline_data=r.data,
            make_env=lambda: r.make_env(seed=cfg.seed + 1),
            policy=agent.policy,
            n_tau=cfg.online_pretrain.n_tau,
            pretrain_update=pretrain_update,
            steps=cfg.online_pretrain.steps,
            batch_size=cfg.online_pretrain.batch_size,
            generator=r.generator,
            log_every=cfg.logging.log_every,
        )
        replay = make_replay(
            ft.replay, r.data, cfg.online_pretrain.n_tau + ft.env_steps, ft.batch_size,
            device=r.device, seed=cfg.seed,
        )
        density = r.make_density_updater if ft.replay == "balanced" else None

        penalty = getattr(loss, "actor_penalty", None)
        penalty_step = penalty.step if penalty is not None and hasattr(penalty, "step") else None

        def make_collector() -> Collector:
            # TorchRL's Collector (the Trainer needs one), as the pipeline builds it
            return make_step_collector(
                r.make_env(seed=cfg.seed + 2), agent.exploration_policy(), device=r.device,
                direct=False,
            )

        trainer = cls(
            collector=make_collector,
            total_frames=ft.env_steps,
            loss_module=loss,
            replay_buffer=replay,
            optim_steps_per_batch=ft.utd,
            updates=agent.finetune_updates,
            kappa=kappa,
            penalty_step=penalty_step,
            density=density,
            online_pretrain=online_pretrain,
            evaluate=r.evaluate,
            eval_interval=cfg.eval.every,
            **trainer_kwargs,
        )
        trainer.agent = agent
        trainer.run_config = cfg
        trainer.run_dir = r.run_dir
        trainer.offline_history = dict(r.logger.history)
        return trainer


def load_offline_checkpoint(loss: LossModule, path: str | Path) -> None:
    """Initialise ``loss``'s actor, ``Q_off`` (``V_off``) and targets from a pipeline ``offline.pt``.

    The online critics (``qvalue_on``, ``value_on``, their targets) and ``kappa`` are left as they
    are; any other entry of ``loss`` missing from the checkpoint raises
    :class:`~torchrl_opt.pipeline.checkpoint.CheckpointError`.
    """
    from torchrl_opt.pipeline.checkpoint import CheckpointError, load_checkpoint

    device = next(loss.parameters()).device
    state = load_checkpoint(path, map_location=device)
    if "offline_loss" not in state:
        raise CheckpointError(f"{path} is not an offline checkpoint (no 'offline_loss' entry)")
    load_offline_state(loss, state["offline_loss"], source=str(path))

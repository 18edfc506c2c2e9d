"""``OPTTrainer``: a method's fine-tuning as a :class:`torchrl.trainers.Trainer` with hooks.

A view of the pipeline, not a second one: :meth:`OPTTrainer.from_run_config` builds the pipeline's
run object (:class:`~torchrl_opt.pipeline.context.Run`) and its plan; the phases before fine-tuning
run through the run object (the offline phases at construction, the rest — ``B_on`` collection,
online pre-training — in :meth:`OPTTrainer.pretrain`), and fine-tuning runs on the pieces the run
object builds for it (:meth:`~torchrl_opt.pipeline.context.Run.finetune_parts`: the same update
steps, replay, density-ratio step, schedules and evaluation as the recipe), spread over TorchRL's
hook stages:

====================  ==========================================================================
stage                 work
====================  ==========================================================================
``batch_process``     store the collected transitions in the replay (:class:`MixedReplayHook`),
                      then advance kappa (Eq. 4's weight) and SPOT's penalty cooling once per
                      frame (:class:`SchedulesHook`)
``process_optim_batch``  sample the replay (balanced / symmetric / online / uniform)
optimisation step     the update steps, each every ``every`` updates (:class:`OPTOptimizationStepper`)
``post_optim``        the density-ratio step and balanced-replay priorities of the sampled rows
                      (:class:`BalancedReplayHook`)
``post_steps_log``    deterministic evaluation in normalised score (:class:`EvaluationHook`)
====================  ==========================================================================

With ``frames_per_batch=1`` and ``optim_steps_per_batch=utd`` the trainer does exactly the work of
:func:`~torchrl_opt.pipeline.phases.finetune`, in the same order, and reproduces
:func:`~torchrl_opt.pipeline.run.run` for the same seed and configuration.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import BaseCollector
from torchrl.objectives.common import LossModule
from torchrl.record.loggers import Logger
from torchrl.trainers import OptimizationStepper, Trainer, TrainerHookBase, UpdateWeights

from torchrl_opt.data.replay import MixedReplayBuffer
from torchrl_opt.objectives.iql_opt import OPTIQLLoss
from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss
from torchrl_opt.objectives.handover import load_offline
from torchrl_opt.pipeline.agents import sac_update_defs, td3_update_defs
from torchrl_opt.pipeline.config import AccelerationConfig, BackboneConfig, RunConfig, resolve_backbone, to_run_config
from torchrl_opt.pipeline.context import DensityStep, FinetuneParts, Run
from torchrl_opt.pipeline.phases import merge_metrics, run_updates
from torchrl_opt.pipeline.plans import Finetune, StartOnline
from torchrl_opt.pipeline.run import build_run
from torchrl_opt.pipeline.updates import UpdateEngine, UpdateSpec
from torchrl_opt.schedules import KappaSchedule

__all__ = [
    "BalancedReplayHook",
    "EvaluationHook",
    "MixedReplayHook",
    "OPTOptimizationStepper",
    "OPTTrainer",
    "SchedulesHook",
    "TrainerConfigError",
    "make_update_specs",
]


class TrainerConfigError(ValueError):
    """An ``OPTTrainer`` argument is inconsistent (wrong type, missing piece, bad interval)."""


def make_update_specs(
    loss: LossModule,
    backbone: BackboneConfig | None = None,
    device: torch.device | str | None = None,
    acceleration: AccelerationConfig | None = None,
    *,
    utd: int = 1,
) -> list[UpdateSpec]:
    """The fine-tuning update steps of a user-built ``loss``, as the pipeline builds them for its
    agents (:func:`~torchrl_opt.pipeline.agents.td3_update_defs` for ``OPTLoss`` / ``OPTIQLLoss``,
    :func:`~torchrl_opt.pipeline.agents.sac_update_defs` for ``EnsembleSACLoss``), compiled /
    CUDA-graphed per ``acceleration`` (on by default on CUDA)."""
    if not isinstance(loss, LossModule):
        raise TrainerConfigError(f"loss must be a TorchRL LossModule, got {type(loss).__name__}")
    if backbone is None:
        name = "iql" if isinstance(loss, OPTIQLLoss) else "sac" if isinstance(loss, EnsembleSACLoss) else "td3"
        backbone = BackboneConfig(name=name)
    backbone = resolve_backbone(copy.deepcopy(backbone))
    device = torch.device(device) if device is not None else next(loss.parameters()).device
    engine = UpdateEngine(1, device, acceleration or AccelerationConfig())
    if isinstance(loss, EnsembleSACLoss):
        defs = sac_update_defs(loss, backbone, actor_every=backbone.actor_every or utd)
    else:
        defs = td3_update_defs(loss, backbone)
    return [engine.build([loss], d) for d in defs]


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


# ---------------------------------------------------------------------------------------------
# Hooks: each reads the trainer's fine-tuning pieces (``trainer.parts``) when it runs
# ---------------------------------------------------------------------------------------------
class OPTOptimizationStepper(OptimizationStepper):
    """One update per call: the update steps in order, each when ``update_count % every == 0``
    (critics every update, TD3's actor and targets every ``actor_delay`` updates). Returns the
    latest metrics of every step merged into one flat TensorDict (cloned, so CUDA-graph output
    buffers are not aliased by the trainer's running average)."""

    def __init__(self, trainer: OPTTrainer) -> None:
        self.trainer = trainer
        self.update_count = 0
        self._metrics: dict = {}

    @property
    def updates(self) -> list[UpdateSpec]:
        return self.trainer.parts.updates

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        run_updates(self.updates, sub_batch, self.update_count, self._metrics)
        for observer in self.trainer.parts.observers:  # adaptive kappa
            observer(sub_batch, self._metrics)
        self.update_count += 1
        return merge_metrics(self._metrics).clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "update_count": self.update_count,
            "optimizers": {spec.name: spec.optimizer.state_dict() for spec in self.updates},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.update_count = int(state_dict["update_count"])
        for spec in self.updates:
            spec.optimizer.load_state_dict(state_dict["optimizers"][spec.name])


class MixedReplayHook(TrainerHookBase):
    """Stores collected transitions in the replay and samples its batches (on its device: no
    ``.cpu()`` round trip, unlike TorchRL's ``ReplayBufferTrainer``)."""

    def __init__(self, trainer: OPTTrainer) -> None:
        self.trainer = trainer

    def extend(self, batch: TensorDictBase) -> TensorDictBase:
        if ("collector", "mask") in batch.keys(True):
            batch = batch[batch.get(("collector", "mask"))]
        else:
            batch = batch.reshape(-1)
        self.trainer.parts.replay.extend(batch)
        return batch

    def sample(self, batch: TensorDictBase | None) -> TensorDictBase:
        return self.trainer.parts.replay.sample()

    def state_dict(self) -> dict[str, Any]:
        return {"replay_buffer": self.trainer.parts.replay.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.trainer.parts.replay.load_state_dict(state_dict["replay_buffer"])

    def register(self, trainer: Trainer, name: str = "replay_buffer") -> None:
        trainer.register_op("batch_process", self.extend)
        trainer.register_op("process_optim_batch", self.sample)
        trainer.register_module(name, self)


class SchedulesHook(TrainerHookBase):
    """Advances the fine-tuning schedules (kappa, SPOT's penalty cooling) once per collected frame,
    after the replay hook stored it, as the pipeline does; logs ``kappa``."""

    def __init__(self, trainer: OPTTrainer) -> None:
        self.trainer = trainer

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        for _ in range(batch.numel()):
            for schedule in self.trainer.parts.schedules:
                schedule()
        return batch

    def log(self, batch: TensorDictBase) -> dict[str, float]:
        kappa = self.trainer.parts.kappa
        return {"kappa": kappa.current} if kappa is not None else {}

    def state_dict(self) -> dict[str, Any]:
        # SPOT's cooled lambda is a buffer of the loss, which TorchRL's checkpoint holds
        kappa = self.trainer.parts.kappa
        return {"kappa": kappa.state_dict()} if kappa is not None else {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        kappa = self.trainer.parts.kappa
        if kappa is not None:
            kappa.load_state_dict(state_dict["kappa"])
            kappa.write()

    def register(self, trainer: Trainer, name: str = "schedules") -> None:
        trainer.register_op("batch_process", self)
        trainer.register_op("pre_steps_log", self.log)
        trainer.register_module(name, self)


class BalancedReplayHook(TrainerHookBase):
    """Off2On's density-ratio step after every update: ``process_optim_batch`` records the sampled
    batch, ``post_optim`` runs the run's :class:`~torchrl_opt.pipeline.context.DensityStep` on it
    (one Adam step of ``w`` on ``B`` offline + ``B`` online rows; the sampled rows get
    ``clamp(w^(1/T) / mean_off(w^(1/T)), 1e-3, 1e3)``)."""

    def __init__(self, trainer: OPTTrainer) -> None:
        self.trainer = trainer
        self._sample: TensorDictBase | None = None
        self.last_loss: torch.Tensor | None = None

    def record(self, batch: TensorDictBase) -> TensorDictBase:
        self._sample = batch
        return batch

    def update(self) -> None:
        if self._sample is None:
            raise RuntimeError("BalancedReplayHook.update ran before a batch was sampled")
        parts = self.trainer.parts
        self.last_loss = parts.density(parts.replay, self._sample)
        self._sample = None

    def log(self, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        out = {"loss_density": self.last_loss} if self.last_loss is not None else {}
        out["online_share"] = self.trainer.parts.replay.online_share()
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.parts.density.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.trainer.parts.density.load_state_dict(dict(state_dict))

    def register(self, trainer: Trainer, name: str = "balanced_replay") -> None:
        trainer.register_op("process_optim_batch", self.record)
        trainer.register_op("post_optim", self.update)
        trainer.register_op("post_optim_log", self.log)
        trainer.register_module(name, self)


class EvaluationHook(TrainerHookBase):
    """Runs ``evaluate(frames)`` every ``interval`` collected frames and at ``total_frames``;
    results are logged as ``eval/<key>`` and kept in :attr:`history` as ``(frames, result)``."""

    def __init__(self, evaluate: Callable[[int], Mapping[str, Any]], interval: int, total_frames: int) -> None:
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
        result = {k: float(torch.as_tensor(v).double().mean()) for k, v in self.evaluate(frames).items()}
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


class _PhasesState(TrainerHookBase):
    """Whether the phases before fine-tuning have run (a checkpointed flag)."""

    def __init__(self, trainer: OPTTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"pretrained": self.trainer.pretrained}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.trainer.pretrained = bool(state_dict["pretrained"])

    def register(self, trainer: Trainer, name: str = "phases") -> None:
        trainer.register_module(name, self)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class OPTTrainer(Trainer):
    """Fine-tuning (after the phases before it) as a TorchRL ``Trainer``.

    Build it with :meth:`from_run_config` (any method's plan, the pipeline's pieces), or with your
    own pieces:

    Args (keyword only):
        collector: the fine-tuning collector, or a zero-argument factory built when fine-tuning
            starts.
        total_frames: fine-tuning environment steps.
        loss_module: the fine-tuning loss (``OPTLoss``, ``OPTIQLLoss``, ``EnsembleSACLoss``).
        replay_buffer: a :class:`~torchrl_opt.data.replay.MixedReplayBuffer` (B_off ∪ B_on).
        optim_steps_per_batch: updates per collected batch (UTD x ``frames_per_batch``).
        updates: the update steps, or a factory of them called when fine-tuning starts (default:
            :func:`make_update_specs` of ``loss_module`` with ``backbone`` and ``acceleration``).
        kappa: the kappa schedule (attached to ``loss_module.kappa``), stepped once per frame.
        schedules: further per-frame schedule steps (SPOT's ``loss.actor_penalty.step``).
        density: the :class:`~torchrl_opt.pipeline.context.DensityStep` of balanced replay
            (required for ``"balanced"``, refused otherwise).
        offline_checkpoint: a pipeline ``offline.pt`` initialising actor, ``Q_off`` (``V_off``) and
            targets of ``loss_module``.
        evaluate, eval_interval: ``frames -> {"return", "normalized_score"}`` every
            ``eval_interval`` frames and at the end.
        update_weights_interval: register TorchRL's ``UpdateWeights`` (multi-process collectors).

    The remaining keywords (``logger``, ``progress_bar``, ``save_trainer_interval``,
    ``log_interval``, ``save_trainer_file``, ``checkpoint``, ``checkpoint_rotation``,
    ``checkpoint_metadata``, ``log_timings``, ``auto_log_optim_steps``) are TorchRL's. Checkpoints
    cover the loss, every optimiser, the update counter, kappa, the replay (priorities included),
    the density-ratio step and whether the phases before fine-tuning have run.
    """

    def __init__(
        self,
        *,
        collector: BaseCollector | Callable[[], BaseCollector],
        total_frames: int,
        loss_module: LossModule,
        replay_buffer: MixedReplayBuffer | None,
        optim_steps_per_batch: int = 5,
        frame_skip: int = 1,
        updates: Sequence[UpdateSpec] | Callable[[], Sequence[UpdateSpec]] | None = None,
        backbone: BackboneConfig | None = None,
        acceleration: AccelerationConfig | None = None,
        kappa: KappaSchedule | None = None,
        schedules: Sequence[Callable[[], Any]] = (),
        density: DensityStep | None = None,
        offline_checkpoint: str | Path | None = None,
        evaluate: Callable[[int], Mapping[str, Any]] | None = None,
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
        _run: Run | None = None,
        _phase: Finetune | None = None,
    ) -> None:
        if not isinstance(loss_module, LossModule):
            raise TrainerConfigError(f"loss_module must be a TorchRL loss, got {type(loss_module).__name__}")
        if total_frames < 1 or optim_steps_per_batch < 1:
            raise TrainerConfigError(
                f"need total_frames >= 1 and optim_steps_per_batch >= 1; got {total_frames}, "
                f"{optim_steps_per_batch}"
            )
        self.run, self.phase = _run, _phase
        if _run is None:
            if not isinstance(replay_buffer, MixedReplayBuffer):
                raise TrainerConfigError(
                    f"replay_buffer must be a MixedReplayBuffer (make_replay), got {type(replay_buffer).__name__}"
                )
            if (replay_buffer.strategy == "balanced") != (density is not None):
                raise TrainerConfigError(
                    "balanced replay needs a density-ratio step and other strategies take none; got "
                    f"strategy={replay_buffer.strategy!r}, density={'set' if density is not None else None}"
                )
            if density is not None and not isinstance(density, DensityStep):
                raise TrainerConfigError(f"density must be a DensityStep, got {type(density).__name__}")
            if not (isinstance(collector, BaseCollector) or callable(collector)):
                raise TrainerConfigError(f"collector must be a BaseCollector or a factory, got {type(collector).__name__}")
            if offline_checkpoint is not None:  # the one hand-over (kappa and its schedule kept)
                load_offline(loss_module, offline_checkpoint)
            if kappa is not None:
                kappa.attach(loss_module.kappa)
        self._pieces = {
            "collector": collector, "replay": replay_buffer, "density": density, "kappa": kappa,
            "schedules": ([kappa.step] if kappa is not None else []) + list(schedules),
            "updates": updates if updates is not None else (
                lambda: make_update_specs(loss_module, backbone, None, acceleration, utd=optim_steps_per_batch)
            ),
        }
        self.parts_: FinetuneParts | None = None
        self.pretrained = _run is None
        self.update_weights_interval = int(update_weights_interval)
        self.wall_clock: dict[str, float] = {}
        super().__init__(
            collector=None, total_frames=total_frames, frame_skip=frame_skip,
            optim_steps_per_batch=optim_steps_per_batch, loss_module=loss_module, optimizer=None,
            optimization_stepper=OPTOptimizationStepper(self), replay_buffer=replay_buffer,
            logger=logger, clip_grad_norm=False, clip_norm=None, progress_bar=progress_bar, seed=None,
            save_trainer_interval=save_trainer_interval, log_interval=log_interval,
            save_trainer_file=save_trainer_file, checkpoint=checkpoint,
            checkpoint_rotation=checkpoint_rotation, checkpoint_metadata=checkpoint_metadata,
            log_timings=log_timings, auto_log_optim_steps=auto_log_optim_steps,
        )
        _PhasesState(self).register(self)
        MixedReplayHook(self).register(self)
        SchedulesHook(self).register(self)
        balanced = (_phase.replay if _phase is not None else replay_buffer.strategy) == "balanced"
        self.balanced_replay = BalancedReplayHook(self) if balanced else None
        if self.balanced_replay is not None:
            self.balanced_replay.register(self)
        self.evaluation: EvaluationHook | None = None
        if evaluate is not None:
            self.evaluation = EvaluationHook(evaluate, eval_interval, total_frames)
            self.evaluation.register(self)

    # ------------------------------------------------------------------ fine-tuning pieces
    @property
    def parts(self) -> FinetuneParts:
        """The fine-tuning pieces, built on first use (:meth:`start_finetuning`)."""
        if self.parts_ is None:
            self.start_finetuning()
        return self.parts_

    @property
    def collector(self) -> BaseCollector | None:
        return self.parts_.collector if self.parts_ is not None else None

    @collector.setter
    def collector(self, value: Any) -> None:  # TorchRL's constructor assigns it
        if value is not None:
            raise TrainerConfigError("OPTTrainer builds its collector when fine-tuning starts")

    @property
    def kappa(self) -> KappaSchedule | None:
        return self.parts.kappa

    @property
    def update_count(self) -> int:
        """Fine-tuning updates done so far (the actor-delay counter)."""
        return self.optimization_stepper.update_count

    def start_finetuning(self) -> None:
        """Build the fine-tuning pieces: the run object's (:meth:`Run.finetune_parts`, a TorchRL
        collector) or the given ones (factories called now)."""
        if self.parts_ is not None:
            return
        if self.run is not None:
            parts = self.run.finetune_parts(self.phase, None, direct=False)
        else:
            p = self._pieces
            collector = p["collector"] if isinstance(p["collector"], BaseCollector) else p["collector"]()
            if not isinstance(collector, BaseCollector):
                raise TrainerConfigError(
                    f"the collector factory returned {type(collector).__name__}, not a BaseCollector"
                )
            updates = list(p["updates"]() if callable(p["updates"]) else p["updates"])
            if not updates or not all(isinstance(u, UpdateSpec) for u in updates):
                raise TrainerConfigError(f"updates must be a non-empty list of UpdateSpec, got {updates!r}")
            parts = FinetuneParts(updates, p["replay"], collector, p["density"], p["kappa"],
                                  p["schedules"], [], dict, dict)
        self.parts_ = parts
        self.replay_buffer = parts.replay
        if self.update_weights_interval > 0 and "update_weights" not in self._modules:
            UpdateWeights(parts.collector, self.update_weights_interval).register(self)

    # ------------------------------------------------------------------ phases
    def pretrain(self) -> None:
        """The plan's phases between the start of the online phases and fine-tuning (``B_on``
        collection, online pre-training, ...) through the run object; a no-op once done."""
        if self.pretrained:
            return
        t0 = time.perf_counter()
        first = _first_online(self.run.plan)
        last = self.run.plan.index(self.phase.name)
        for phase in self.run.plan.phases[first:last]:
            phase.execute(self.run, None)
        self.pretrained = True
        self.wall_clock["pretrain"] = time.perf_counter() - t0

    def load_from_file(self, file: str | Path, **kwargs: Any) -> OPTTrainer:
        """TorchRL's checkpoint loading, after building the fine-tuning pieces it restores."""
        self.start_finetuning()
        return super().load_from_file(file, **kwargs)

    def train(self) -> None:
        """The phases before fine-tuning (once), then fine-tuning through TorchRL's loop."""
        self.pretrain()
        self.start_finetuning()
        t0 = time.perf_counter()
        super().train()
        self.wall_clock["finetune"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ builder
    @classmethod
    def from_run_config(cls, cfg: RunConfig | Mapping[str, Any] | Any, **trainer_kwargs: Any) -> OPTTrainer:
        """The trainer of a pipeline configuration (any method whose plan ends in fine-tuning).

        The run object of ``cfg`` is built and its phases up to the start of the online phases run
        now (offline pre-training, or ``offline.checkpoint`` loaded); :meth:`pretrain` runs the
        others before the final fine-tuning phase; fine-tuning uses the run object's pieces (with a
        TorchRL ``Collector``). The run's own logs go to the trainer's ``logger``.
        ``trainer_kwargs`` go to :class:`OPTTrainer` (``logger``, ``save_trainer_file``, ...).
        """
        cfg = to_run_config(cfg)
        # the trainer resumes from its own checkpoints (save_trainer_file), not checkpoint.pt
        run = build_run(dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume=False)))
        if len(run.seeds) != 1:
            raise TrainerConfigError(f"OPTTrainer runs one seed; got seeds={run.seeds} (use run(cfg))")
        phase = run.plan.phases[-1]
        if not isinstance(phase, Finetune):
            raise TrainerConfigError(f"method {run.cfg.method!r} does not end in fine-tuning")
        logger = trainer_kwargs.get("logger")
        trainer_kwargs.setdefault("progress_bar", run.cfg.logging.progress)
        run.members[0].logger.use(logger)
        run.load()
        for p in run.plan.phases[: _first_online(run.plan)]:
            p.execute(run, None)
        trainer = cls(
            collector=None, total_frames=max(phase.env_steps, 1), loss_module=run.agents[0].finetune_loss,
            replay_buffer=None, optim_steps_per_batch=phase.utd, evaluate=run.evaluate if phase.evaluate else None,
            eval_interval=run.cfg.eval.every, _run=run, _phase=phase, **trainer_kwargs,
        )
        trainer.agent = run.agents[0]
        trainer.run_config = run.cfg
        trainer.run_dir = run.run_dir
        return trainer


def _first_online(plan) -> int:
    """The index just past the plan's last :class:`~torchrl_opt.pipeline.plans.StartOnline`."""
    starts = [i for i, p in enumerate(plan.phases) if isinstance(p, StartOnline)]
    if not starts:
        raise TrainerConfigError(f"plan {plan.method!r} has no online phase")
    return starts[-1] + 1

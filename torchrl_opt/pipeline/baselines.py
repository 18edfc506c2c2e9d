"""The seed systems and strongest peers of OPT: RLPD, RLPD off-to-on, RLPD+OPT, WSRL and PORL.

All five share one agent, :class:`SACEnsembleAgent` (a TanhNormal actor, a 10-critic LayerNorm
ensemble and :class:`~torchrl_opt.objectives.sac_ensemble.EnsembleSACLoss`), and the pipeline's
loops (:mod:`.phases`), update steps (:func:`~.updates.make_step` + :func:`~.updates.accelerate`,
compiled and CUDA-graphed by default on CUDA only), replay (:func:`~torchrl_opt.data.replay.make_replay`),
logging (:class:`~.logging.RunLogger`) and checkpoint helpers. Every method is evaluated in
normalised score on the pipeline's schedule and writes a checkpoint at the end of every phase
(``<run_dir>/<phase>.pt``) plus ``summary.json``.

=================  ==========================================================================
method             phases (``RunConfig`` keys in brackets)
=================  ==========================================================================
``rlpd``           (Ball et al. 2023) no offline phase; ``rlpd.start_steps`` uniform-random
                   actions into ``B_on``; then SAC-ensemble updates at UTD ``rlpd.utd`` (20) on
                   symmetric 50/50 offline/online batches for ``finetune.env_steps``.
``rlpd_offline``   RLPD off-to-on: ``offline.steps`` (1M) of RLPD learning on ``B_off`` (the same
                   loss, uniform offline batches); ``online_pretrain.n_tau`` steps of the frozen
                   policy into ``B_on`` (online budget parity with OPT); then RLPD fine-tuning
                   with symmetric sampling.
``rlpd_opt``       RLPD+OPT (OPT Sec. 5.6): the same offline phase; a fresh ``Q_on`` ensemble
                   trained by :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` for
                   ``online_pretrain.steps`` on ``B_off`` + ``N_tau`` frozen-policy steps; then
                   fine-tuning of both ensembles with kappa mixing (``finetune.kappa``) and
                   symmetric sampling.
``wsrl``           (Zhou et al. 2024) the same RLPD-style offline phase (actor and 10 critics,
                   both carried over); ``wsrl.warmup_steps`` (K = 5000) steps of the frozen
                   policy seed the buffer; then SAC-ensemble fine-tuning at UTD ``wsrl.utd`` (4)
                   on online data only: the buffer never holds offline data.
``porl``           (PORL, 2025) a pre-trained *policy only*: behaviour cloning on ``B_off``
                   (``porl.policy_source="bc"``) or the actor of the RLPD-style offline phase
                   (``"offline"``); a fresh, randomly initialised ensemble is trained at UTD
                   ``porl.utd`` (16) while the frozen policy collects ``porl.presample_steps`` with
                   epsilon-greedy exploration; then SAC fine-tuning (actor unfrozen), online data only.
=================  ==========================================================================

**Offline phase of WSRL.** WSRL pre-trains with Cal-QL and fine-tunes the *same* networks with SAC.
This library has no Cal-QL; the RLPD-style offline phase is used instead because it trains exactly
the networks the online phase needs (a TanhNormal actor and a 10-critic LayerNorm ensemble), so both
policy and Q-function carry over, as in WSRL; LayerNorm bounds the extrapolated Q-values that
plain offline SAC would otherwise blow up (Ball et al. 2023). Load any other pre-training with
``offline.checkpoint`` (a ``offline.pt`` written by these functions).

**"No offline data" buffers (WSRL, PORL).** :class:`~torchrl_opt.data.replay.MixedReplayBuffer` keeps
its "offline" rows at the front of its storage. Building it with ``strategy="online"`` over the
dataset would keep the whole dataset in memory (never sampled); instead the buffer is built with
``strategy="uniform"`` over the *warm-up / seed rollouts* as its first rows, so it holds only data
collected online, which is WSRL's point ("retention of offline data is simulated by the warm-up").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType

from torchrl_opt.data.replay import MixedReplayBuffer, make_replay
from torchrl_opt.data.scores import normalized_score
from torchrl_opt.env_state import make_resumable_env
from torchrl_opt.envs import evaluate_policy
from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss, OPTEnsembleSACLoss
from torchrl_opt.pipeline.agents import (
    OnlineTargetUpdate,
    UpdateSpec,
    soft_update_keeping_targets,
)
from torchrl_opt.pipeline.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from torchrl_opt.pipeline.config import (
    BaselineConfig,
    OnlinePretrainConfig,
    PORLConfig,
    RLPDConfig,
    RunConfig,
    SACEnsembleConfig,
    WSRLConfig,
)
from torchrl_opt.pipeline.logging import RunLogger
from torchrl_opt.pipeline.phases import (
    collect_online,
    finetune,
    make_step_collector,
    pretrain_online,
    train_offline,
)
from torchrl_opt.pipeline.run import load_dataset, resolve_device, to_run_config
from torchrl_opt.pipeline.updates import (
    AccelerationConfig,
    StepFn,
    accelerate,
    make_optimizer,
    make_step,
    should_accelerate,
)
from torchrl_opt.schedules import KappaSchedule, kappa_preset

__all__ = [
    "BASELINE_METHODS",
    "BCLoss",
    "BaselineConfig",
    "BaselineConfigError",
    "BaselineResult",
    "EpsilonGreedyPolicy",
    "PORLConfig",
    "RLPDConfig",
    "SACEnsembleAgent",
    "SACEnsembleConfig",
    "WSRLConfig",
    "run_baseline",
    "run_porl",
    "run_rlpd",
    "run_rlpd_offline",
    "run_rlpd_opt",
    "run_wsrl",
]

BASELINE_METHODS = ("rlpd", "rlpd_offline", "rlpd_opt", "wsrl", "porl")
PORL_POLICY_SOURCES = ("bc", "offline")

#: ``hook(event, agent)`` with ``event = "<phase>:start"`` or ``"<phase>:end"``.
PhaseHook = Callable[[str, "SACEnsembleAgent"], None]


class BaselineConfigError(ValueError):
    """A baseline configuration value is out of its domain."""


@dataclass
class BaselineResult:
    run_dir: Path
    summary: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(repr=False)
    agent: SACEnsembleAgent = field(repr=False)
    replay: MixedReplayBuffer | None = field(default=None, repr=False)


def validate_baseline(cfg: RunConfig, bl: BaselineConfig) -> None:
    """Reject out-of-domain values with the offending key named."""
    if bl.method not in BASELINE_METHODS:
        raise BaselineConfigError(f"baseline.method={bl.method!r} is not one of {BASELINE_METHODS}")
    if bl.porl.policy_source not in PORL_POLICY_SOURCES:
        raise BaselineConfigError(
            f"porl.policy_source={bl.porl.policy_source!r} is not one of {PORL_POLICY_SOURCES}"
        )
    positive = [
        ("rlpd.utd", bl.rlpd.utd), ("wsrl.utd", bl.wsrl.utd), ("porl.utd", bl.porl.utd),
        ("wsrl.warmup_steps", bl.wsrl.warmup_steps), ("sac.num_qvalue_nets", bl.sac.num_qvalue_nets),
        ("finetune.batch_size", cfg.finetune.batch_size), ("eval.episodes", cfg.eval.episodes),
    ]
    for key, value in positive:
        if value < 1:
            raise BaselineConfigError(f"{key} must be >= 1, got {value}")
    if not 1 <= bl.sac.num_min_qs <= bl.sac.num_qvalue_nets:
        raise BaselineConfigError(
            f"sac.num_min_qs={bl.sac.num_min_qs} must lie in [1, sac.num_qvalue_nets]"
        )
    if not 0.0 <= bl.porl.epsilon <= 1.0:
        raise BaselineConfigError(f"porl.epsilon must lie in [0, 1], got {bl.porl.epsilon}")
    if not 0.0 <= bl.rlpd.offline_fraction <= 1.0:
        raise BaselineConfigError(
            f"rlpd.offline_fraction must lie in [0, 1], got {bl.rlpd.offline_fraction}"
        )
    if bl.method == "porl" and bl.porl.presample_steps < cfg.finetune.batch_size:
        raise BaselineConfigError(
            f"porl.presample_steps={bl.porl.presample_steps} must be >= finetune.batch_size="
            f"{cfg.finetune.batch_size} (the seed rollouts fill the first batch)"
        )
    if bl.method == "rlpd" and bl.rlpd.start_steps < 1 and bl.rlpd.offline_fraction < 1:
        raise BaselineConfigError("rlpd.start_steps must be >= 1 so that online rows exist")
    if bl.method in ("rlpd_offline", "rlpd_opt") and cfg.online_pretrain.n_tau < 1:
        raise BaselineConfigError(f"{bl.method} needs online_pretrain.n_tau >= 1")
    if bl.sac.actor_every is not None and bl.sac.actor_every < 1:
        raise BaselineConfigError(f"sac.actor_every must be >= 1, got {bl.sac.actor_every}")


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------
class EpsilonGreedyPolicy(TensorDictModuleBase):
    """``a = U(low, high)`` with probability ``epsilon``, else the wrapped policy's action (PORL).

    The wrapped policy runs without gradient: it is frozen by construction. ``epsilon = 1`` is a
    uniform random policy (RLPD's start steps).
    """

    def __init__(self, policy: TensorDictModule | None, action_spec: Bounded, epsilon: float) -> None:
        super().__init__()
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if policy is None and epsilon != 1.0:
            raise ValueError("without a policy, epsilon must be 1 (uniform random actions)")
        self.policy = policy
        self.epsilon = float(epsilon)
        self.register_buffer("low", action_spec.space.low.clone())
        self.register_buffer("high", action_spec.space.high.clone())
        self.in_keys = list(policy.in_keys) if policy is not None else ["observation"]
        self.out_keys = ["action"]

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        shape = (*obs.shape[:-1], self.low.shape[-1])
        uniform = self.low + (self.high - self.low) * torch.rand(shape, device=obs.device)
        if self.policy is None:
            tensordict.set("action", uniform)
            return tensordict
        tensordict = self.policy(tensordict)
        explore = torch.rand(shape[:-1] + (1,), device=obs.device) < self.epsilon
        tensordict.set("action", torch.where(explore, uniform, tensordict.get("action")))
        return tensordict


class BCLoss(nn.Module):
    """Behaviour cloning of a TanhNormal actor: ``L = -E_(s,a)~B_off[log pi(a|s)]``.

    Dataset actions are clamped ``margin`` inside the action box so the tanh inverse is finite.
    """

    def __init__(self, actor: TensorDictModule, action_spec: Bounded, margin: float = 1e-4) -> None:
        super().__init__()
        self.actor = actor
        span = action_spec.space.high - action_spec.space.low
        self.register_buffer("low", action_spec.space.low + margin * span)
        self.register_buffer("high", action_spec.space.high - margin * span)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        dist = self.actor.get_dist(tensordict.select(*self.actor.in_keys))
        action = tensordict.get("action").clamp(self.low, self.high)
        log_prob = dist.log_prob(action)
        return TensorDict(loss_bc=-log_prob.mean(), bc_log_prob=log_prob.detach().mean())


# ---------------------------------------------------------------------------------------------
# Agent
# ---------------------------------------------------------------------------------------------
class SACEnsembleAgent(nn.Module):
    """A TanhNormal actor, a ``num_qvalue_nets`` LayerNorm critic ensemble and their loss.

    Attributes:
        actor: the policy (``policy`` is the same module; evaluation uses its mode).
        loss: the current :class:`EnsembleSACLoss` (replaced by an :class:`OPTEnsembleSACLoss` by
            :meth:`build_opt_loss`, or by a fresh-critic loss by :meth:`reset_critics`).
    """

    def __init__(
        self,
        cfg: SACEnsembleConfig,
        obs_dim: int,
        action_spec: Bounded,
        device: torch.device,
        acceleration: AccelerationConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.device = torch.device(device)
        self.action_spec = action_spec.to(self.device)
        self.action_dim = action_spec.shape[-1]
        self.acceleration = acceleration or AccelerationConfig()
        self.actor = make_gaussian_actor(
            obs_dim, self.action_spec, tuple(cfg.hidden), layer_norm=cfg.actor_layer_norm
        ).to(self.device)
        self.loss: EnsembleSACLoss = self._make_loss()

    @property
    def policy(self) -> TensorDictModule:
        return self.actor

    @property
    def finetune_loss(self) -> EnsembleSACLoss:
        """The loss the online loops read schedule buffers from (``phases.finetune`` duck-types the
        pipeline's :class:`~torchrl_opt.pipeline.agents.Agent` through this attribute)."""
        return self.loss

    def _ensemble(self) -> list[TensorDictModule]:
        return [
            q.to(self.device)
            for q in make_qvalue_ensemble(
                self.obs_dim, self.action_dim, self.cfg.num_qvalue_nets, tuple(self.cfg.hidden),
                layer_norm=self.cfg.critic_layer_norm,
            )
        ]

    def _make_loss(self, *, with_q_on: bool = False, kappa: float = 0.0) -> EnsembleSACLoss:
        cfg = self.cfg
        kwargs = {
            "num_qvalue_nets": cfg.num_qvalue_nets,
            "num_min_qs": cfg.num_min_qs,
            "alpha_init": cfg.alpha_init,
            "target_entropy": "auto" if cfg.target_entropy is None else cfg.target_entropy,
            "action_spec": self.action_spec,
            "backup_entropy": cfg.backup_entropy,
            "kappa": kappa,
        }
        if with_q_on:
            loss = OPTEnsembleSACLoss(self.actor, self._ensemble(), self._ensemble(), **kwargs)
        else:
            loss = EnsembleSACLoss(self.actor, self._ensemble(), **kwargs)
        loss.make_value_estimator(gamma=cfg.gamma)
        return loss.to(self.device)

    def reset_critics(self) -> EnsembleSACLoss:
        """PORL: keep the actor, replace the ensemble (and its targets) by a fresh random one and
        reset the temperature to ``alpha_init``."""
        self.loss = self._make_loss()
        return self.loss

    def build_opt_loss(self, kappa: float) -> OPTEnsembleSACLoss:
        """RLPD+OPT: the current loss's actor, ``Q_off`` ensemble (and targets) and temperature, plus a
        freshly initialised ``Q_on`` ensemble."""
        loss = self._make_loss(with_q_on=True, kappa=kappa)
        state = {
            k: v for k, v in self.loss.state_dict().items()
            if not k.startswith(("_value_estimator", "kappa"))
        }
        missing, unexpected = loss.load_state_dict(state, strict=False)
        stray = [k for k in missing if not k.startswith(("qvalue_on", "target_qvalue_on", "kappa", "_value"))]
        if unexpected or stray:
            raise RuntimeError(f"OPT loss not initialised from the RLPD loss: {unexpected} {stray}")
        self.loss = loss
        return loss

    # ------------------------------------------------------------------ update steps
    def _spec(
        self,
        name: str,
        loss_fn: Callable[[TensorDictBase], TensorDictBase],
        loss_keys: tuple[str, ...],
        params: list[nn.Parameter],
        lr: float,
        *,
        every: int = 1,
        target_updater: Any = None,
    ) -> UpdateSpec:
        optimizer = make_optimizer(params, lr, self.device, self.acceleration)
        step: StepFn = make_step(loss_fn, loss_keys, optimizer, target_updater=target_updater)
        return UpdateSpec(name, accelerate(step, self.device, self.acceleration), optimizer, every)

    def critic_update(self) -> UpdateSpec:
        """Every ensemble's TD loss, then Polyak averaging of the target ensembles (every update)."""
        loss = self.loss
        params = [p for c in loss.critics for p in getattr(loss, f"qvalue_{c}_network_params").values(True, True)]
        keys = tuple(f"loss_qvalue_{c}" for c in loss.critics)
        return self._spec(
            "critic", loss.qvalue_losses, keys, params, self.cfg.critic_lr,
            target_updater=soft_update_keeping_targets(loss, self.cfg.tau),
        )

    def actor_update(self, every: int) -> UpdateSpec:
        """The actor and temperature step (RLPD: once per environment step)."""
        loss = self.loss
        params = list(loss.actor_network_params.values(True, True))
        optimizer_params = [{"params": params, "lr": self.cfg.actor_lr}]
        if isinstance(loss.log_alpha, nn.Parameter):
            optimizer_params.append({"params": [loss.log_alpha], "lr": self.cfg.alpha_lr})
        # one Adam, two groups: the temperature has its own learning rate
        _, cudagraphs = should_accelerate(self.acceleration, self.device)
        optimizer = torch.optim.Adam(optimizer_params, capturable=cudagraphs)
        step = make_step(loss.actor_alpha_losses, ("loss_actor", "loss_alpha"), optimizer)
        return UpdateSpec("actor", accelerate(step, self.device, self.acceleration), optimizer, every)

    def updates(self, *, utd: int, offline: bool = False) -> list[UpdateSpec]:
        """Critic every update; actor+alpha every ``sac.actor_every`` updates (default: every
        ``utd`` updates online, i.e. once per env step; every update offline)."""
        every = self.cfg.actor_every or (1 if offline else utd)
        return [self.critic_update(), self.actor_update(every)]

    def pretrain_update(self, cfg: OnlinePretrainConfig) -> UpdateSpec:
        """RLPD+OPT online pre-training: meta-adaptation of the ``Q_on`` ensemble only; its targets
        follow by Polyak averaging while the actor, ``Q_off`` and its targets stay frozen."""
        if not self.loss.has_qvalue_on:
            raise RuntimeError("Call build_opt_loss before pretrain_update")
        meta = MetaAdaptationLoss(
            self.loss, mode=cfg.mode, order=cfg.order, alpha=cfg.alpha,
            loss_ratio_weighting=cfg.loss_ratio_weighting,
        )
        return self._spec(
            "pretrain", meta, ("loss_pretrain",), meta.online_parameters(), cfg.lr,
            target_updater=OnlineTargetUpdate(self.loss, self.cfg.tau),
        )


# ---------------------------------------------------------------------------------------------
# Run context
# ---------------------------------------------------------------------------------------------
class _BaselineRun:
    """Dataset, env factory, evaluation, logger and checkpoints of one baseline run."""

    def __init__(self, cfg: RunConfig, bl: BaselineConfig, hook: PhaseHook | None) -> None:
        validate_baseline(cfg, bl)
        self.cfg, self.bl, self.hook = cfg, bl, hook
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        experiment = cfg.logging.experiment or (
            f"{cfg.dataset.task}-{cfg.dataset.kind}-{bl.method}-s{cfg.seed}"
        )
        self.run_dir = Path(cfg.run_dir or Path(cfg.logging.dir) / experiment)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data, self.env_id, self.ref_scores = load_dataset(cfg, self.device)
        probe = self.make_env(cfg.seed)
        obs_dim = probe.observation_spec["observation"].shape[-1]
        action_spec = probe.action_spec
        probe.close()
        if obs_dim != self.data["observation"].shape[-1] or action_spec.shape[-1] != self.data["action"].shape[-1]:
            raise BaselineConfigError(f"{self.env_id} spaces do not match the dataset's")
        self.agent = SACEnsembleAgent(bl.sac, obs_dim, action_spec, self.device, cfg.acceleration)
        self.logger = RunLogger(cfg.logging.backend, self.run_dir, experiment, progress=cfg.logging.progress)
        self.wall_clock: dict[str, float] = {}
        self.updates_done: dict[str, int] = {}

    def make_env(self, seed: int):
        return make_resumable_env(self.env_id, seed=seed)

    def evaluate(self, step: int) -> dict[str, float]:
        """Deterministic returns of ``eval.episodes`` episodes, as the pipeline's ``RunContext.evaluate``."""
        env = self.make_env(self.cfg.seed * 1_000_003 + step + 1)
        returns = evaluate_policy(
            self.agent.policy, env, self.cfg.eval.episodes, max_steps=self.cfg.eval.max_steps,
            direct=self.cfg.acceleration.direct_env,
        )
        env.close()
        mean_return = float(returns.mean())
        score = normalized_score(self.cfg.dataset.task, mean_return, ref=self.ref_scores)
        return {"return": mean_return, "normalized_score": float(score)}

    def event(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name, self.agent)

    def save_phase(self, phase: str, updates: list[UpdateSpec], **extra: Any) -> Path:
        """``<run_dir>/<phase>.pt``: the loss (actor, ensembles, targets, temperature), optimisers,
        history and counters at the end of ``phase``."""
        state = {
            "phase": phase,
            "method": self.bl.method,
            "env_id": self.env_id,
            "loss": self.agent.loss.state_dict(),
            "has_qvalue_on": self.agent.loss.has_qvalue_on,
            "optimizers": {spec.name: spec.optimizer.state_dict() for spec in updates},
            "history": {k: list(v) for k, v in self.logger.history.items()},
            "wall_clock": dict(self.wall_clock),
            "updates_done": dict(self.updates_done),
            **extra,
        }
        return save_checkpoint(self.run_dir / f"{phase}.pt", state)

    def timed(self, phase: str, fn: Callable[[], Any], updates: int | None = None) -> Any:
        self.event(f"{phase}:start")
        t0 = time.perf_counter()
        result = fn()
        self.wall_clock[phase] = self.wall_clock.get(phase, 0.0) + time.perf_counter() - t0
        if updates is not None:
            self.updates_done[phase] = updates
        self.event(f"{phase}:end")
        return result

    # ------------------------------------------------------------------ phases
    def offline_phase(self) -> None:
        """RLPD-style offline learning (``offline.steps`` SAC-ensemble updates on ``B_off``), or load
        ``offline.checkpoint``."""
        cfg = self.cfg
        if cfg.offline.checkpoint:
            state = load_checkpoint(cfg.offline.checkpoint, map_location=self.device)
            if state.get("phase") != "offline" or state.get("env_id") != self.env_id:
                raise CheckpointError(
                    f"{cfg.offline.checkpoint} is not an offline checkpoint of {self.env_id}"
                )
            self.agent.loss.load_state_dict(state["loss"])
            return
        updates = self.agent.updates(utd=1, offline=True)
        self.timed("offline", lambda: train_offline(
            self.agent, updates, self.data, cfg.offline.steps, cfg.offline.batch_size,
            generator=self.generator, logger=self.logger, evaluate=self.evaluate,
            log_every=cfg.logging.log_every, eval_every=cfg.offline.eval_every,
        ), cfg.offline.steps)
        self.save_phase("offline", updates)

    def bc_phase(self) -> None:
        """PORL's behaviour-cloning policy: ``porl.bc_steps`` updates of :class:`BCLoss`."""
        cfg, porl = self.cfg, self.bl.porl
        bc = BCLoss(self.agent.actor, self.agent.action_spec).to(self.device)
        optimizer = make_optimizer(self.agent.actor.parameters(), porl.bc_lr, self.device, cfg.acceleration)
        step = accelerate(make_step(bc, ("loss_bc",), optimizer), self.device, cfg.acceleration)
        updates = [UpdateSpec("bc", step, optimizer)]
        self.timed("bc", lambda: train_offline(
            self.agent, updates, self.data, porl.bc_steps, cfg.offline.batch_size,
            generator=self.generator, logger=self.logger, evaluate=self.evaluate,
            log_every=cfg.logging.log_every, eval_every=cfg.offline.eval_every,
        ), porl.bc_steps)
        self.save_phase("bc", updates)

    def collect(self, phase: str, policy, steps: int, seed: int, exploration: ExplorationType) -> TensorDictBase:
        env = self.make_env(seed)
        data = self.timed(phase, lambda: collect_online(
            env, policy, steps, device=self.device, exploration_type=exploration, logger=self.logger,
            direct=self.cfg.acceleration.direct_env,
        ))
        env.close()
        return data

    def online_phase(
        self,
        phase: str,
        replay: MixedReplayBuffer,
        updates: list[UpdateSpec],
        env_steps: int,
        utd: int,
        *,
        policy=None,
        kappa: KappaSchedule | None = None,
        seed_offset: int = 2,
    ) -> int:
        """The pipeline's fine-tuning loop (``phases.finetune``) with ``policy`` collecting."""
        cfg = self.cfg
        env = self.make_env(cfg.seed + seed_offset)
        collector = make_step_collector(
            env, policy if policy is not None else self.agent.actor, device=self.device,
            exploration_type=ExplorationType.RANDOM, direct=self.cfg.acceleration.direct_env,
        )
        if kappa is not None:
            kappa.attach(self.agent.loss.kappa)
        done = self.timed(phase, lambda: finetune(
            self.agent, updates, replay, collector, env_steps, utd, kappa=kappa, density=None,
            logger=self.logger, evaluate=self.evaluate, log_every=cfg.logging.log_every,
            eval_every=cfg.eval.every,
        ))
        collector.shutdown()
        self.updates_done[phase] = done
        self.save_phase(phase, updates)
        return done

    def kappa_schedule(self) -> KappaSchedule:
        """``finetune.kappa``: the Appendix H preset of the task/dataset, ``constant`` or ``linear``."""
        k = self.cfg.finetune.kappa
        if k.kind == "preset":
            return kappa_preset(self.cfg.dataset.task, self.cfg.dataset.kind, start_step=k.start)
        if k.kind == "constant":
            return KappaSchedule.constant(k.init)
        if k.kind == "linear":
            return KappaSchedule(k.init, k.end, k.t_decay, k.start)
        raise BaselineConfigError(f"finetune.kappa.kind={k.kind!r} is not preset/constant/linear")

    def finish(self, replay: MixedReplayBuffer | None) -> BaselineResult:
        history = self.logger.history
        scores = history.get("eval/normalized_score", [])
        offline_scores = history.get("offline_eval/normalized_score", [])
        summary = {
            "method": self.bl.method,
            "config": dataclasses.asdict(self.cfg),
            "baseline": dataclasses.asdict(self.bl),
            "env_id": self.env_id,
            "device": str(self.device),
            "final_normalized_score": scores[-1][1] if scores else None,
            "best_normalized_score": max(v for _, v in scores) if scores else None,
            "offline_normalized_score": offline_scores[-1][1] if offline_scores else None,
            "scores": scores,
            "wall_clock_s": self.wall_clock,
            "updates": self.updates_done,
            "updates_per_s": {
                p: self.updates_done[p] / s for p, s in self.wall_clock.items()
                if p in self.updates_done and s > 0
            },
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.logger.close_phase()
        return BaselineResult(self.run_dir, summary, dict(history), self.agent, replay)


def _online_only_replay(seed_data: TensorDictBase, extra: int, cfg: RunConfig) -> MixedReplayBuffer:
    """A buffer whose rows are all collected online: ``seed_data`` first, room for ``extra`` more."""
    return make_replay(
        "uniform", seed_data, extra, cfg.finetune.batch_size, device=seed_data.device, seed=cfg.seed
    )


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------
def run_rlpd(cfg: RunConfig | Any, bl: BaselineConfig | None = None, *, hook: PhaseHook | None = None) -> BaselineResult:
    """RLPD from scratch: random start steps, then SAC-ensemble learning at UTD ``rlpd.utd`` on
    symmetric batches (``rlpd.offline_fraction`` offline)."""
    bl = _with_method(bl, "rlpd")
    r = _BaselineRun(to_run_config(cfg), bl, hook)
    cfg, rlpd = r.cfg, bl.rlpd
    replay = make_replay(
        "symmetric", r.data, rlpd.start_steps + cfg.finetune.env_steps, cfg.finetune.batch_size,
        device=r.device, seed=cfg.seed, offline_fraction=rlpd.offline_fraction,
    )
    if rlpd.start_steps > 0:
        random_policy = EpsilonGreedyPolicy(None, r.agent.action_spec, 1.0)
        replay.extend(r.collect("start", random_policy, rlpd.start_steps, cfg.seed + 1, ExplorationType.RANDOM))
    updates = r.agent.updates(utd=rlpd.utd)
    r.online_phase("finetune", replay, updates, cfg.finetune.env_steps, rlpd.utd)
    return r.finish(replay)


def run_rlpd_offline(cfg: RunConfig | Any, bl: BaselineConfig | None = None, *, hook: PhaseHook | None = None) -> BaselineResult:
    """RLPD off-to-on: RLPD-style offline phase, ``N_tau`` frozen-policy steps, RLPD fine-tuning."""
    return _rlpd_off_to_on(to_run_config(cfg), _with_method(bl, "rlpd_offline"), hook, use_opt=False)


def run_rlpd_opt(cfg: RunConfig | Any, bl: BaselineConfig | None = None, *, hook: PhaseHook | None = None) -> BaselineResult:
    """RLPD+OPT: RLPD-style offline phase, OPT online pre-training of a ``Q_on`` ensemble, then
    fine-tuning of both ensembles with kappa mixing and symmetric sampling."""
    return _rlpd_off_to_on(to_run_config(cfg), _with_method(bl, "rlpd_opt"), hook, use_opt=True)


def _rlpd_off_to_on(cfg: RunConfig, bl: BaselineConfig, hook: PhaseHook | None, *, use_opt: bool) -> BaselineResult:
    r = _BaselineRun(cfg, bl, hook)
    r.offline_phase()
    online = r.collect(
        "collect", r.agent.policy, cfg.online_pretrain.n_tau, cfg.seed + 1, ExplorationType.DETERMINISTIC
    )
    kappa = None
    if use_opt:
        kappa = r.kappa_schedule()
        r.agent.build_opt_loss(kappa.value(0))
        if cfg.online_pretrain.steps > 0:
            pretrain = r.agent.pretrain_update(cfg.online_pretrain)
            r.timed("pretrain", lambda: pretrain_online(
                pretrain.step, r.data, online, cfg.online_pretrain.steps, cfg.online_pretrain.batch_size,
                generator=r.generator, logger=r.logger, log_every=cfg.logging.log_every,
            ), cfg.online_pretrain.steps)
            r.save_phase("pretrain", [pretrain])
    replay = make_replay(
        "symmetric", r.data, cfg.online_pretrain.n_tau + cfg.finetune.env_steps, cfg.finetune.batch_size,
        device=r.device, seed=cfg.seed, offline_fraction=bl.rlpd.offline_fraction,
    )
    replay.extend(online)
    updates = r.agent.updates(utd=bl.rlpd.utd)
    r.online_phase("finetune", replay, updates, cfg.finetune.env_steps, bl.rlpd.utd, kappa=kappa)
    return r.finish(replay)


def run_wsrl(cfg: RunConfig | Any, bl: BaselineConfig | None = None, *, hook: PhaseHook | None = None) -> BaselineResult:
    """WSRL: RLPD-style offline pre-training (actor + ensemble), ``wsrl.warmup_steps`` of the frozen
    policy seeding an online-only buffer, then SAC-ensemble fine-tuning at UTD ``wsrl.utd``."""
    bl = _with_method(bl, "wsrl")
    r = _BaselineRun(to_run_config(cfg), bl, hook)
    cfg, wsrl = r.cfg, bl.wsrl
    r.offline_phase()
    exploration = ExplorationType.DETERMINISTIC if wsrl.warmup_deterministic else ExplorationType.RANDOM
    warmup = r.collect("warmup", r.agent.policy, wsrl.warmup_steps, cfg.seed + 1, exploration)
    replay = _online_only_replay(warmup, cfg.finetune.env_steps, cfg)
    updates = r.agent.updates(utd=wsrl.utd)
    r.online_phase("finetune", replay, updates, cfg.finetune.env_steps, wsrl.utd)
    return r.finish(replay)


def run_porl(cfg: RunConfig | Any, bl: BaselineConfig | None = None, *, hook: PhaseHook | None = None) -> BaselineResult:
    """PORL: a pre-trained policy only (BC or the offline phase's actor), a fresh ensemble trained at
    UTD ``porl.utd`` while the frozen policy pre-samples epsilon-greedily, then SAC fine-tuning."""
    bl = _with_method(bl, "porl")
    r = _BaselineRun(to_run_config(cfg), bl, hook)
    cfg, porl = r.cfg, bl.porl
    if porl.policy_source == "bc":
        r.bc_phase()
    else:
        r.offline_phase()
    r.agent.reset_critics()
    explorer = EpsilonGreedyPolicy(r.agent.policy, r.agent.action_spec, porl.epsilon)
    seed_steps = cfg.finetune.batch_size
    seed = r.collect("presample_seed", explorer, seed_steps, cfg.seed + 1, ExplorationType.RANDOM)
    replay = _online_only_replay(seed, porl.presample_steps - seed_steps + cfg.finetune.env_steps, cfg)
    critic_only = [r.agent.critic_update()]
    if porl.presample_steps > seed_steps:
        r.online_phase(
            "presample", replay, critic_only, porl.presample_steps - seed_steps, porl.utd,
            policy=explorer, seed_offset=3,
        )
    updates = r.agent.updates(utd=porl.utd)
    # the critic keeps its optimiser state from pre-sampling
    updates[0] = critic_only[0]
    r.online_phase("finetune", replay, updates, cfg.finetune.env_steps, porl.utd)
    return r.finish(replay)


_RUNNERS = {
    "rlpd": run_rlpd,
    "rlpd_offline": run_rlpd_offline,
    "rlpd_opt": run_rlpd_opt,
    "wsrl": run_wsrl,
    "porl": run_porl,
}


def run_baseline(cfg: RunConfig | Any, bl: BaselineConfig, *, hook: PhaseHook | None = None) -> BaselineResult:
    """Run ``bl.method`` (one of :data:`BASELINE_METHODS`)."""
    if bl.method not in _RUNNERS:
        raise BaselineConfigError(f"baseline.method={bl.method!r} is not one of {BASELINE_METHODS}")
    return _RUNNERS[bl.method](cfg, bl, hook=hook)


def _with_method(bl: BaselineConfig | None, method: str) -> BaselineConfig:
    bl = copy.deepcopy(bl) if bl is not None else BaselineConfig()
    bl.method = method
    return bl

"""Agents: the networks, losses and update steps of one backbone across OPT's three phases.

An agent owns no loop. It gives each phase its loss modules and a list of :class:`UpdateSpec`
(``name``, step function, run every ``k`` updates); the phase loops in :mod:`.phases` call them.

============  ======================================  ============================================
backbone      offline pre-training                    online fine-tuning
============  ======================================  ============================================
``td3``       TD3+BC (``OPTLoss`` with ``bc_alpha``)   TD3 with Q_off and Q_on (``OPTLoss``, Eq. 4)
``spot``      VAE, then SPOT (Q-normalised, penalty)  SPOT with Q_off and Q_on, cooled penalty
``iql``       IQL (``OPTIQLLoss`` without Q_on/V_on)   IQL with both pairs (Eq. 9)
============  ======================================  ============================================

With ``use_q_on=False`` the fine-tuning loss has no online critic: the vanilla fine-tuning baseline.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SoftUpdate
from torchrl.objectives.common import LossModule

from torchrl_opt.models import (
    make_gaussian_actor,
    make_qvalue_ensemble,
    make_td3_actor,
    make_value,
)
from torchrl_opt.objectives.iql_opt import OPTIQLLoss
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.spot import SPOTVAE, SPOTDensityPenalty, SPOTVAELoss
from torchrl_opt.objectives.td3_opt import OPTLoss
from torchrl_opt.pipeline.checkpoint import CheckpointError
from torchrl_opt.pipeline.config import BackboneConfig, OnlinePretrainConfig
from torchrl_opt.pipeline.functional import (
    FunctionalAdam,
    FunctionalStepError,
    SeedBatchedStep,
    SeedStack,
    make_functional_step,
    target_update_pairs,
)
from torchrl_opt.pipeline.updates import (
    AccelerationConfig,
    StepFn,
    accelerate,
    as_tensordict,
    make_optimizer,
    make_step,
)

__all__ = ["BACKBONES", "Agent", "UpdateSpec", "make_agent", "seeded_init"]

BACKBONES = ("td3", "spot", "iql")


@dataclass
class UpdateSpec:
    """A named update step run every ``every`` updates (TD3's delayed actor: ``every=2``).

    ``optimizer`` is the one the step uses (kept here for checkpoints).
    """

    name: str
    step: StepFn
    optimizer: torch.optim.Optimizer | FunctionalAdam
    every: int = 1


class Agent(nn.Module):
    """Networks and losses of one backbone. Build with :func:`make_agent`.

    Attributes:
        policy: the deterministic actor used for evaluation and for online pre-training's collection.
        offline_loss: the loss of offline pre-training.
        finetune_loss: the loss of fine-tuning (built by :meth:`build_finetune_loss`).
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        obs_dim: int,
        action_spec: Bounded,
        device: torch.device,
        acceleration: AccelerationConfig | None = None,
    ) -> None:
        super().__init__()
        if backbone.name not in BACKBONES:
            raise ValueError(f"Unknown backbone {backbone.name!r}; choose one of {BACKBONES}")
        self.cfg = backbone
        self.obs_dim = obs_dim
        self.action_spec = action_spec.to(device)
        self.action_dim = action_spec.shape[-1]
        self.device = torch.device(device)
        self.acceleration = acceleration or AccelerationConfig()
        hidden = tuple(backbone.hidden)
        layer_norm = backbone.layer_norm
        if backbone.name == "iql":
            self.actor = make_gaussian_actor(obs_dim, self.action_spec, hidden, layer_norm=layer_norm)
            self.value_off = make_value(obs_dim, hidden, layer_norm=layer_norm)
        else:
            self.actor = make_td3_actor(obs_dim, self.action_spec, hidden, layer_norm=layer_norm)
        self.qvalue_off = nn.ModuleList(
            make_qvalue_ensemble(obs_dim, self.action_dim, 2, hidden, layer_norm=layer_norm)
        )
        self.vae: SPOTVAE | None = None
        if backbone.name == "spot":
            self.vae = SPOTVAE(
                obs_dim,
                self.action_dim,
                self.action_spec.space.low,
                self.action_spec.space.high,
                tuple(backbone.vae_hidden),
            )
        self.to(self.device)
        self.offline_loss = self._make_loss(online=False)
        self.finetune_loss: LossModule | None = None

    # ------------------------------------------------------------------ policies
    @property
    def policy(self) -> TensorDictModule:
        return self.actor

    def exploration_noise(self) -> AdditiveGaussianModule | None:
        """TD3/SPOT's exploration noise module, N(0, (sigma * half-range)^2) added to the action and
        kept in bounds; ``None`` for IQL (its policy samples its Gaussian)."""
        if self.cfg.name == "iql":
            return None
        half_range = (self.action_spec.space.high - self.action_spec.space.low) / 2
        noise = AdditiveGaussianModule(
            spec=self.action_spec,
            sigma_init=self.cfg.exploration_noise,
            sigma_end=self.cfg.exploration_noise,
            annealing_num_steps=1,
            std=1.0,
            safe=True,
            device=self.device,
        )
        noise.std = half_range.to(self.device)
        return noise

    def exploration_policy(self) -> TensorDictModule:
        """The fine-tuning collection policy: TD3/SPOT add :meth:`exploration_noise`, IQL samples
        its Gaussian."""
        noise = self.exploration_noise()
        return self.actor if noise is None else TensorDictSequential(self.actor, noise)

    # ------------------------------------------------------------------ losses
    def _make_loss(self, *, online: bool, use_q_on: bool = False, kappa: float = 0.0) -> LossModule:
        cfg = self.cfg
        hidden = tuple(cfg.hidden)
        q_on = v_on = None
        if use_q_on:
            q_on = make_qvalue_ensemble(
                self.obs_dim, self.action_dim, 2, hidden, layer_norm=cfg.layer_norm
            )
            q_on = [q.to(self.device) for q in q_on]
        q_off = [copy.deepcopy(q) for q in self.qvalue_off]
        if cfg.name == "iql":
            if use_q_on:
                v_on = make_value(self.obs_dim, hidden, layer_norm=cfg.layer_norm).to(self.device)
            loss: LossModule = OPTIQLLoss(
                self.actor,
                q_off,
                copy.deepcopy(self.value_off),
                q_on,
                v_on,
                kappa=kappa,
                expectile=cfg.expectile,
                temperature=cfg.temperature,
            )
        else:
            penalty = None
            if cfg.name == "spot":
                penalty = SPOTDensityPenalty(
                    self.vae,
                    cfg.spot_lambda,
                    lambda_end=cfg.spot_lambda_end,
                    cooling=online,
                    cooling_steps=cfg.spot_cooling_steps,
                    beta=cfg.vae_beta,
                    # offline, the VAE is trained before the actor-critic: keep it trainable (the
                    # penalty then reads it through detached parameters)
                    freeze=online,
                )
            bc_alpha = cfg.online_bc_alpha if online else cfg.bc_alpha
            loss = OPTLoss(
                self.actor,
                q_off,
                q_on,
                action_spec=self.action_spec,
                kappa=kappa,
                policy_noise=cfg.policy_noise,
                noise_clip=cfg.noise_clip,
                bc_alpha=None if cfg.name == "spot" else bc_alpha,
                normalize_q=cfg.name == "spot",
                actor_penalty=penalty,
            )
        loss.make_value_estimator(gamma=cfg.gamma)
        return loss.to(self.device)

    def build_finetune_loss(
        self, *, use_q_on: bool, kappa: float, init_seed: int | None = None
    ) -> LossModule:
        """The fine-tuning loss, initialised from the offline loss's actor, ``Q_off`` (and ``V_off``)
        and their targets; ``Q_on`` (and ``V_on``) start from a fresh random initialisation.

        With ``init_seed`` that initialisation is drawn from torch's CPU RNG forked and seeded with
        it (:func:`seeded_init`), so it does not depend on how many random numbers earlier phases
        drew, and the global RNG stream continues as if nothing had been drawn.
        """
        with seeded_init(init_seed):
            loss = self._make_loss(online=True, use_q_on=use_q_on, kappa=kappa)
        load_offline_state(loss, self.offline_loss.state_dict())
        self.finetune_loss = loss
        return loss

    # ------------------------------------------------------------------ update steps
    def make_vae_loss(self) -> SPOTVAELoss:
        """SPOT's VAE loss (``recon + beta * KL``) over this agent's VAE."""
        if self.vae is None:
            raise RuntimeError("Only the spot backbone has a VAE")
        return SPOTVAELoss(self.vae, beta=self.cfg.vae_beta).to(self.device)

    def vae_update(self, seed_stack: SeedStack | None = None) -> UpdateSpec:
        """SPOT's VAE step (``recon + beta * KL``, Adam ``vae_lr``); with ``seed_stack`` (of the
        seeds' :meth:`make_vae_loss`, this agent's first) every seed's VAE in one step."""
        loss = seed_stack.template if seed_stack is not None else self.make_vae_loss()
        return make_update_spec(
            "vae", loss, ("loss_vae",), list(self.vae.parameters()), self.cfg.vae_lr,
            device=self.device, acceleration=self.acceleration, loss_module=loss,
            param_names=("vae_network_params",), seed_stack=seed_stack,
        )

    def offline_updates(self, seed_stack: SeedStack | None = None) -> list[UpdateSpec]:
        """The offline phase's steps; with ``seed_stack`` (of the seeds' ``offline_loss``, this
        agent's first) they train every seed of the stack at once."""
        return make_update_specs(
            self.offline_loss, self.cfg, self.device, self.acceleration, seed_stack=seed_stack
        )

    def finetune_updates(self, seed_stack: SeedStack | None = None) -> list[UpdateSpec]:
        """The fine-tuning steps; ``seed_stack`` as in :meth:`offline_updates`."""
        if self.finetune_loss is None:
            raise RuntimeError("Call build_finetune_loss before finetune_updates")
        return make_update_specs(
            self.finetune_loss, self.cfg, self.device, self.acceleration, seed_stack=seed_stack
        )

    def pretrain_update(
        self, cfg: OnlinePretrainConfig, seed_stack: SeedStack | None = None
    ) -> UpdateSpec:
        """The online pre-training step on ``{"offline": batch, "online": batch}``: only the online
        critics move; their targets follow by Polyak averaging (the actor and Q_off are frozen).
        ``seed_stack`` as in :meth:`offline_updates` (of the seeds' ``finetune_loss``)."""
        if self.finetune_loss is None:
            raise RuntimeError("Call build_finetune_loss(use_q_on=True, ...) first")
        loss = self.finetune_loss
        meta = MetaAdaptationLoss(
            loss,
            mode=cfg.mode,
            order=cfg.order,
            alpha=cfg.alpha,
            loss_ratio_weighting=cfg.loss_ratio_weighting,
        )
        return make_update_spec(
            "pretrain", meta, ("loss_pretrain",), meta.online_parameters(), cfg.lr,
            device=self.device, acceleration=self.acceleration,
            target_updater=OnlineTargetUpdate(loss, self.cfg.tau),
            loss_module=loss, param_names=loss.online_param_names, seed_stack=seed_stack,
        )


@contextlib.contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Run the block on torch's CPU RNG forked and seeded with ``seed`` (a no-op for ``None``).

    Network initialisation happens on the CPU (modules are moved to the device afterwards), so this
    fixes an initialisation independently of the global RNG's position, which the pipeline and the
    seed-batched pipeline reach differently; the global stream is restored on exit.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class OnlineTargetUpdate:
    """Polyak averaging of the online critics' targets only: ``theta' <- tau theta + (1-tau) theta'``.

    TorchRL's ``SoftUpdate`` moves every target of a loss; during online pre-training the actor and
    Q_off targets must stay frozen, so this updates ``target_<name>`` for ``loss.online_param_names``.
    """

    def __init__(self, loss: LossModule, tau: float) -> None:
        self.pairs = [
            (getattr(loss, name), getattr(loss, f"target_{name}"))
            for name in loss.online_param_names
            if f"target_{name}" in loss._modules  # IQL's V has no target network
        ]
        self.tau = tau

    @torch.no_grad()
    def step(self) -> None:
        for source, target in self.pairs:
            src = list(source.values(True, True))
            tgt = list(target.values(True, True))
            torch._foreach_lerp_(tgt, src, self.tau)


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


def load_offline_state(
    loss: LossModule, offline_state: dict, *, source: str = "the offline state"
) -> None:
    """Initialise a fine-tuning ``loss`` from an offline loss's ``state_dict``.

    Actor, ``Q_off`` (``V_off``) and their targets are copied; only the online critics (and kappa,
    SPOT's penalty state) may be left at their fresh values. Anything else missing, or any entry
    the loss lacks, raises :class:`~torchrl_opt.pipeline.checkpoint.CheckpointError`.
    """
    offline_state = {k: v for k, v in offline_state.items() if not k.startswith("_value_estimator")}
    missing, unexpected = loss.load_state_dict(offline_state, strict=False)
    if unexpected:
        raise CheckpointError(f"{source} has entries the loss lacks: {unexpected}")
    allowed = ("qvalue_on", "target_qvalue_on", "value_on", "target_value_on", "kappa",
               "_value_estimator", "actor_penalty")
    stray = [k for k in missing if not k.startswith(allowed)]
    if stray:
        raise CheckpointError(f"{source} does not initialise these loss entries: {stray}")


def make_update_spec(
    name: str,
    loss_fn: Callable[[TensorDictBase], TensorDictBase],
    loss_keys: tuple[str, ...],
    params: list[nn.Parameter],
    lr: float,
    *,
    device: torch.device,
    acceleration: AccelerationConfig | None = None,
    every: int = 1,
    target_updater: SoftUpdate | OnlineTargetUpdate | None = None,
    loss_module: LossModule | None = None,
    param_names: tuple[str, ...] = (),
    seed_stack: SeedStack | None = None,
) -> UpdateSpec:
    """One named update step with its own Adam, compiled/graphed per ``acceleration``.

    With ``acceleration.functional`` and a ``loss_module`` whose trained groups are
    ``param_names``, the step is :func:`~torchrl_opt.pipeline.functional.make_functional_step`
    (same maths, one capturable graph) and its optimiser a ``FunctionalAdam``.

    With ``seed_stack`` (whose template is ``loss_module``), the functional step is wrapped in a
    :class:`~torchrl_opt.pipeline.functional.SeedBatchedStep`: it takes ``[S, B]`` batches and
    trains every seed of the stack in one vmapped call (``acceleration.functional`` is implied:
    seed batching exists only for functional steps).
    """
    acceleration = acceleration or AccelerationConfig()
    if seed_stack is not None and (loss_module is None or loss_module is not seed_stack.template):
        raise FunctionalStepError(
            f"update {name!r}: a seed-batched step must be built on the seed stack's template loss"
        )
    if (acceleration.functional or seed_stack is not None) and loss_module is not None:
        pairs, tau = (
            ([], 0.0)
            if target_updater is None
            else target_update_pairs(target_updater, loss_module)
        )
        step = make_functional_step(
            loss_module, param_names, loss_fn, loss_keys, lr, target_updater_pairs=pairs, tau=tau
        )
        if seed_stack is not None:
            step = SeedBatchedStep(seed_stack, step)
        return UpdateSpec(name, accelerate(step, device, acceleration), step.optimizer, every)
    optimizer = make_optimizer(params, lr, device, acceleration)
    step = make_step(loss_fn, loss_keys, optimizer, target_updater=target_updater)
    return UpdateSpec(name, accelerate(step, device, acceleration), optimizer, every)


def make_update_specs(
    loss: LossModule,
    cfg: BackboneConfig,
    device: torch.device,
    acceleration: AccelerationConfig | None = None,
    *,
    seed_stack: SeedStack | None = None,
) -> list[UpdateSpec]:
    """The update steps of ``loss`` (an ``OPTLoss`` or ``OPTIQLLoss``), in the order they run.

    TD3/SPOT: ``critic`` (both critics) every update, ``actor`` + Polyak target update every
    ``cfg.actor_delay`` updates. IQL: ``value``, ``actor``, ``qvalue`` + target update every update.
    With ``seed_stack`` (template ``loss``), every step trains all the stack's seeds at once on
    ``[S, B]`` batches (see :func:`make_update_spec`).
    """
    target_updater = soft_update_keeping_targets(loss, cfg.tau)
    critic_params = _params_of(loss, "qvalue_off_network_params") + _params_of(
        loss, "qvalue_on_network_params"
    )
    actor_params = _params_of(loss, "actor_network_params")
    qvalue_keys = tuple(f"loss_qvalue_{c}" for c in loss.critics)
    actor_loss = _method(loss.actor_loss, "loss_actor")
    kw = {"device": device, "acceleration": acceleration, "loss_module": loss,
          "seed_stack": seed_stack}
    critic_names = _names(loss, "qvalue_off_network_params", "qvalue_on_network_params")
    actor_names = ("actor_network_params",)
    if cfg.name == "iql":
        value_params = _params_of(loss, "value_off_network_params") + _params_of(
            loss, "value_on_network_params"
        )
        value_keys = tuple(f"loss_value_{c}" for c in loss.critics)
        value_names = _names(loss, "value_off_network_params", "value_on_network_params")
        return [
            make_update_spec(
                "value", loss.value_loss, value_keys, value_params, cfg.value_lr,
                param_names=value_names, **kw,
            ),
            make_update_spec(
                "actor", actor_loss, ("loss_actor",), actor_params, cfg.actor_lr,
                param_names=actor_names, **kw,
            ),
            make_update_spec(
                "qvalue", loss.qvalue_loss, qvalue_keys, critic_params, cfg.critic_lr,
                target_updater=target_updater, param_names=critic_names, **kw,
            ),
        ]
    return [
        make_update_spec(
            "critic", loss.qvalue_losses, qvalue_keys, critic_params, cfg.critic_lr,
            param_names=critic_names, **kw,
        ),
        make_update_spec(
            "actor", actor_loss, ("loss_actor",), actor_params, cfg.actor_lr,
            every=cfg.actor_delay, target_updater=target_updater, param_names=actor_names, **kw,
        ),
    ]


def _names(loss: LossModule, *names: str) -> tuple[str, ...]:
    """The parameter groups among ``names`` that ``loss`` has."""
    return tuple(name for name in names if name in loss._modules)


def _params_of(loss: LossModule, name: str) -> list[nn.Parameter]:
    if name not in loss._modules:
        return []
    return [p for p in getattr(loss, name).values(True, True) if isinstance(p, nn.Parameter)]


def _method(fn: Callable, key: str) -> Callable[[TensorDictBase], TensorDictBase]:
    def call(batch: TensorDictBase) -> TensorDictBase:
        return as_tensordict(fn(batch), key)

    return call


def make_agent(
    backbone: BackboneConfig,
    obs_dim: int,
    action_spec: Bounded,
    device: torch.device | str,
    acceleration: AccelerationConfig | None = None,
) -> Agent:
    """Build the :class:`Agent` of ``backbone.name`` for the given spaces on ``device``."""
    return Agent(backbone, obs_dim, action_spec, torch.device(device), acceleration)

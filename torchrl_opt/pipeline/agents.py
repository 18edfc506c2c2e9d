"""Agents: the networks and losses of one backbone, and what each kind of update step trains.

An agent owns no loop and no engine: it holds its networks and losses and describes every update
step declaratively (:class:`~torchrl_opt.pipeline.updates.UpdateDef`); the run object builds the
steps for its seeds with :class:`~torchrl_opt.pipeline.updates.UpdateEngine`.

========  ===============================================  ==========================================
backbone  offline updates                                  online loss (:meth:`Agent.start_online`)
========  ===============================================  ==========================================
``td3``   TD3+BC (``OPTLoss`` with ``bc_alpha``)           ``OPTLoss``: TD3 on Q_off (+ Q_on, Eq. 4)
``spot``  VAE, then SPOT (Q-normalised, density penalty)   SPOT on Q_off (+ Q_on), cooled penalty
``iql``   IQL (``OPTIQLLoss`` without Q_on / V_on)         IQL (+ Q_on, V_on: Eq. 9)
``sac``   SAC with a critic ensemble (RLPD style), or BC   SAC ensemble (+ a Q_on ensemble: RLPD+OPT;
          of the actor (PORL)                              fresh critics: PORL)
========  ===============================================  ==========================================

Update kinds (:meth:`Agent.update_defs`): ``vae``, ``offline``, ``bc``, ``pretrain`` (online
pre-training of the online critics, :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss`),
``finetune`` and ``critic`` (the fine-tuning critic step alone: PORL's pre-sampling).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import copy
from collections.abc import Iterator

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives.common import LossModule

from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble, make_td3_actor, make_value
from torchrl_opt.objectives.bc import BCLoss
from torchrl_opt.objectives.cql import EnsembleCQLLoss
from torchrl_opt.objectives.handover import load_offline
from torchrl_opt.objectives.iql_opt import OPTIQLLoss
from torchrl_opt.objectives.meta import MetaAdaptationLoss, OfflineCriticPretraining
from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss
from torchrl_opt.objectives.spot import SPOTVAE, SPOTDensityPenalty, SPOTVAELoss
from torchrl_opt.objectives.td3_opt import OPTLoss
from torchrl_opt.pipeline.config import BackboneConfig, RunConfig, to_run_config
from torchrl_opt.pipeline.updates import UpdateDef, loss_method

__all__ = [
    "Agent", "SACAgent", "TD3Agent", "make_agent", "sac_update_defs", "seeded_init", "td3_update_defs",
]

UPDATE_KINDS = ("vae", "offline", "bc", "pretrain", "finetune", "critic")
#: entries of an offline loss the online loss does not have: CQL's action box, uniform density,
#: weight and Lagrange multiplier (WSRL fine-tunes without the regulariser).
OFFLINE_ONLY_ENTRIES = ("action_low", "action_high", "uniform_log_density", "cql_alpha", "cql_alpha_params")


@contextlib.contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Run the block on torch's CPU RNG forked and seeded with ``seed`` (a no-op for ``None``).

    Networks are initialised on the CPU (and moved to the device afterwards), so this fixes an
    initialisation independently of how far the global RNG has advanced, which a single run and a
    seed group reach differently; the global stream is restored on exit.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Agent(nn.Module, abc.ABC):
    """Networks and losses of one backbone. Build with :func:`make_agent`.

    Attributes:
        actor: the policy network (``policy``: deterministic acting and evaluation).
        offline_loss: the loss of the offline updates.
        finetune_loss: the loss of online pre-training and fine-tuning (built by
            :meth:`start_online`).
    """

    def __init__(self, cfg: RunConfig, obs_dim: int, action_spec: Bounded, device: torch.device) -> None:
        super().__init__()
        self.run_cfg = cfg
        self.cfg = cfg.backbone
        self.obs_dim = obs_dim
        self.device = torch.device(device)
        self.action_spec = action_spec.to(self.device)
        self.action_dim = action_spec.shape[-1]
        self.finetune_loss: LossModule | None = None

    # ------------------------------------------------------------------ policies
    @property
    def policy(self) -> TensorDictModule:
        return self.actor

    def exploration_noise(self) -> nn.Module | None:
        """A module adding exploration noise to the actor's action (``None``: the actor samples)."""
        return None

    # ------------------------------------------------------------------ networks
    def _critics(self, count: int | None = None) -> list[TensorDictModule]:
        return [
            q.to(self.device)
            for q in make_qvalue_ensemble(
                self.obs_dim, self.action_dim, count or self.cfg.num_qvalue_nets,
                tuple(self.cfg.hidden), layer_norm=self.cfg.critic_layer_norm,
            )
        ]

    # ------------------------------------------------------------------ what subclasses define
    def loss_for(self, kind: str) -> LossModule:
        """The loss the steps of update ``kind`` train."""
        if kind not in UPDATE_KINDS:
            raise ValueError(f"unknown update kind {kind!r}; known: {UPDATE_KINDS}")
        if kind in ("pretrain", "finetune", "critic"):
            if self.finetune_loss is None:
                raise RuntimeError(f"update kind {kind!r} needs the online loss: call start_online first")
            return self.finetune_loss
        return self.offline_loss

    @abc.abstractmethod
    def update_defs(self, kind: str, *, utd: int = 1) -> list[UpdateDef]:
        """The update steps of kind ``kind`` (one of :data:`UPDATE_KINDS`), in the order they run."""

    @abc.abstractmethod
    def _build_online_loss(self, q_on: bool, fresh_critics: bool, kappa: float) -> LossModule:
        """A fresh online loss over this agent's actor (critics not yet loaded)."""

    def _pretrain_def(self, loss: LossModule) -> UpdateDef:
        """Online pre-training (Eq. 3 / Eq. 8, or the mode's ablation) of the online critics, or of
        ``Q_off`` itself with ``online_pretrain.critic=q_off``; their targets follow by Polyak
        averaging, everything else is frozen."""
        op = self.run_cfg.online_pretrain
        wrap = OfflineCriticPretraining if op.critic == "q_off" else (lambda l: l)
        groups = tuple(wrap(loss).online_param_names)
        return UpdateDef(
            "pretrain",
            lambda l: MetaAdaptationLoss(
                wrap(l), mode=op.mode, order=op.order, alpha=op.alpha,
                loss_ratio_weighting=op.loss_ratio_weighting,
            ),
            ("loss_pretrain",), groups, op.lr, targets=groups, tau=self.cfg.tau,
        )

    # ------------------------------------------------------------------ phase transitions
    def start_online(
        self, *, q_on: bool, fresh_critics: bool = False, kappa: float = 0.0, init_seed: int | None = None
    ) -> LossModule:
        """Build :attr:`finetune_loss`: the offline loss's actor, critics and targets (fresh random
        critics with ``fresh_critics``), plus freshly initialised online critics with ``q_on``.

        New networks are drawn from torch's CPU RNG forked and seeded with ``init_seed``
        (:func:`seeded_init`), so they do not depend on how many random numbers earlier phases drew.
        """
        with seeded_init(init_seed):
            loss = self._build_online_loss(q_on, fresh_critics, kappa)
        fresh = ("qvalue_off", "target_qvalue_off", "log_alpha") if fresh_critics else ()
        load_offline(loss, self.offline_loss.state_dict(), fresh=fresh, ignore=OFFLINE_ONLY_ENTRIES)
        self.finetune_loss = loss
        return loss

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def value_estimates(self, observation: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every critic's estimate ``Q(s, pi(s))`` at observations ``[N, obs_dim]``, ``pi`` the
        deterministic policy (TD3's action, a Gaussian's mode), from the loss being trained
        (the online loss once it exists): ``{name: [N]}``, names per backbone (see
        :meth:`_reduce_critics`). What the value-bias diagnostic compares with Monte Carlo returns.
        """
        loss = self.finetune_loss if self.finetune_loss is not None else self.offline_loss
        td = TensorDict(observation=observation, batch_size=observation.shape[:1])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = self.actor(td)
        members = {critic: _critic_members(loss, critic, td) for critic in loss.critics}
        return self._reduce_critics(members, loss)

    def _reduce_critics(self, members: dict[str, torch.Tensor], loss: LossModule) -> dict[str, torch.Tensor]:
        """TD3 / SPOT: each twin's first critic, ``q_off`` / ``q_on`` (what Eq. 4's actor reads), and
        ``q_mix = (1 - kappa) q_off + kappa q_on``; IQL: each twin's minimum (IQL's estimate)."""
        first = self.cfg.name != "iql"
        out = {f"q_{c}": (v[0] if first else v.min(0)[0]) for c, v in members.items()}
        if "on" in members:
            out["q_mix"] = (1 - loss.kappa) * out["q_off"] + loss.kappa * out["q_on"]
        return out

    def offline_state(self) -> dict:
        """What ``offline.pt`` stores of the agent: the offline loss and SPOT's VAE."""
        vae = getattr(self, "vae", None)
        return {
            "offline_loss": self.offline_loss.state_dict(),
            "vae": vae.state_dict() if vae is not None else {},
        }

    def load_offline(self, state: dict) -> None:
        """Load :meth:`offline_state` (from ``offline.pt``)."""
        self.offline_loss.load_state_dict(state["offline_loss"])
        vae = getattr(self, "vae", None)
        if vae is not None:
            vae.load_state_dict(state["vae"])


class TD3Agent(Agent):
    """OPT's backbones: ``td3`` (TD3+BC offline, TD3 online), ``spot`` and ``iql``."""

    def __init__(self, cfg: RunConfig, obs_dim: int, action_spec: Bounded, device: torch.device) -> None:
        super().__init__(cfg, obs_dim, action_spec, device)
        b, hidden = self.cfg, tuple(self.cfg.hidden)
        actor = {"layer_norm": b.actor_layer_norm, "dropout": b.actor_dropout or 0.0}
        if b.name == "iql":
            self.actor = make_gaussian_actor(obs_dim, self.action_spec, hidden, **actor)
            self.value_off = make_value(obs_dim, hidden, layer_norm=b.critic_layer_norm)
        else:
            self.actor = make_td3_actor(obs_dim, self.action_spec, hidden, **actor)
        self.qvalue_off = nn.ModuleList(self._critics())
        self.vae: SPOTVAE | None = None
        if b.name == "spot":
            low, high = self.action_spec.space.low, self.action_spec.space.high
            self.vae = SPOTVAE(obs_dim, self.action_dim, low, high, tuple(b.vae_hidden))
        self.to(self.device)
        if self.vae is not None:
            self.vae_loss = SPOTVAELoss(self.vae, beta=b.vae_beta).to(self.device)
        self.offline_loss = self._make_loss(online=False)

    def exploration_noise(self) -> nn.Module | None:
        """TD3/SPOT's exploration noise, N(0, (sigma * half-range)^2) added to the action and kept
        in bounds; ``None`` for IQL (its policy samples its Gaussian)."""
        if self.cfg.name == "iql":
            return None
        half_range = (self.action_spec.space.high - self.action_spec.space.low) / 2
        noise = AdditiveGaussianModule(
            spec=self.action_spec, sigma_init=self.cfg.exploration_noise,
            sigma_end=self.cfg.exploration_noise, annealing_num_steps=1, std=1.0, safe=True,
            device=self.device,
        )
        noise.std = half_range.to(self.device)
        return noise

    def _make_loss(self, *, online: bool, q_on: bool = False, kappa: float = 0.0) -> LossModule:
        b, hidden = self.cfg, tuple(self.cfg.hidden)
        critic_ln = b.critic_layer_norm
        q_off = [copy.deepcopy(q) for q in self.qvalue_off]
        q_on_nets = self._critics() if q_on else None
        common = {"num_qvalue_nets": b.num_qvalue_nets, "kappa": kappa,
                  "loss_function": b.loss_function}
        if b.name == "iql":
            v_on = make_value(self.obs_dim, hidden, layer_norm=critic_ln).to(self.device) if q_on else None
            loss: LossModule = OPTIQLLoss(
                self.actor, q_off, copy.deepcopy(self.value_off), q_on_nets, v_on,
                expectile=b.expectile, temperature=b.temperature, **common,
            )
        else:
            penalty = None
            if b.name == "spot":
                penalty = SPOTDensityPenalty(
                    self.vae, b.spot_lambda, lambda_end=b.spot_lambda_end, cooling=online,
                    cooling_steps=b.spot_cooling_steps, beta=b.vae_beta,
                    # offline the VAE is trained before the actor-critic: keep it trainable
                    freeze=online,
                )
            bc_alpha = b.online_bc_alpha if online else b.bc_alpha
            loss = OPTLoss(
                self.actor, q_off, q_on_nets, action_spec=self.action_spec,
                policy_noise=b.policy_noise, noise_clip=b.noise_clip,
                bc_alpha=None if b.name == "spot" else bc_alpha, normalize_q=b.name == "spot",
                actor_penalty=penalty, **common,
            )
        loss.make_value_estimator(gamma=b.online_gamma if online else b.gamma)
        return loss.to(self.device)

    def _build_online_loss(self, q_on: bool, fresh_critics: bool, kappa: float) -> LossModule:
        if fresh_critics:
            raise ValueError(f"the {self.cfg.name} backbone keeps its offline critics (no fresh_critics)")
        return self._make_loss(online=True, q_on=q_on, kappa=kappa)

    def loss_for(self, kind: str) -> LossModule:
        if kind == "vae":
            if self.vae is None:
                raise ValueError("only the spot backbone has a VAE phase")
            return self.vae_loss
        if kind in ("bc", "critic"):
            raise ValueError(f"the {self.cfg.name} backbone has no {kind!r} updates")
        return super().loss_for(kind)

    def update_defs(self, kind: str, *, utd: int = 1) -> list[UpdateDef]:
        """``vae``: SPOT's VAE; ``pretrain``: Eq. 3 / Eq. 8; ``offline`` / ``finetune``: see
        :func:`td3_update_defs`."""
        loss = self.loss_for(kind)
        if kind == "vae":
            return [UpdateDef("vae", lambda l: l, ("loss_vae",), ("vae_network_params",), self.cfg.vae_lr)]
        if kind == "pretrain":
            return [self._pretrain_def(loss)]
        adaptive = kind == "finetune" and self.run_cfg.finetune.kappa.kind == "adaptive" and "on" in loss.critics
        return td3_update_defs(loss, self.cfg, td_error=adaptive)


class SACAgent(Agent):
    """The SAC critic-ensemble agent of RLPD, RLPD+OPT, WSRL and PORL: a TanhNormal actor, an
    ``num_qvalue_nets`` critic ensemble (LayerNorm by default) and
    :class:`~torchrl_opt.objectives.sac_ensemble.EnsembleSACLoss`."""

    def __init__(self, cfg: RunConfig, obs_dim: int, action_spec: Bounded, device: torch.device) -> None:
        super().__init__(cfg, obs_dim, action_spec, device)
        self.actor = make_gaussian_actor(
            obs_dim, self.action_spec, tuple(self.cfg.hidden), layer_norm=self.cfg.actor_layer_norm,
            dropout=self.cfg.actor_dropout or 0.0,
        ).to(self.device)
        self.offline_loss = self._make_loss(online=False)
        self.bc_loss = BCLoss(self.actor, self.action_spec).to(self.device)

    @property
    def offline_regularizer(self) -> str:
        """WSRL's offline regulariser (``cql`` / ``calql``), or ``none`` (plain SAC: RLPD, PORL)."""
        wsrl = self.run_cfg.wsrl
        return wsrl.offline_regularizer if self.run_cfg.method == "wsrl" else "none"

    def _make_loss(self, *, online: bool, q_on: bool = False, kappa: float = 0.0) -> EnsembleSACLoss:
        """The ensemble SAC loss (online; offline for RLPD / PORL), or WSRL's CQL / Cal-QL
        pre-training loss (:class:`~torchrl_opt.objectives.cql.EnsembleCQLLoss`) offline."""
        b, wsrl = self.cfg, self.run_cfg.wsrl
        common = dict(
            num_qvalue_nets=b.num_qvalue_nets, num_min_qs=b.num_min_qs, alpha_init=b.alpha_init,
            target_entropy=-b.target_entropy_per_dim * self.action_dim if b.target_entropy is None
            else b.target_entropy,
            action_spec=self.action_spec, backup_entropy=b.backup_entropy,
            actor_q_reduction=b.actor_q_reduction, subset_replacement=b.subset_replacement,
            max_target_backup=b.max_target_backup, loss_function=b.loss_function,
        )
        if not online and self.offline_regularizer != "none":
            loss: EnsembleSACLoss = EnsembleCQLLoss(
                self.actor, self._critics(), cql_alpha=wsrl.cql_alpha, cql_lagrange=wsrl.cql_lagrange,
                cql_target_action_gap=wsrl.cql_target_action_gap,
                calibrated=self.offline_regularizer == "calql", **common,
            )
        else:
            loss = EnsembleSACLoss(
                self.actor, self._critics(), self._critics() if q_on else None, kappa=kappa, **common
            )
        loss.make_value_estimator(gamma=b.online_gamma if online else b.gamma)
        return loss.to(self.device)

    def _build_online_loss(self, q_on: bool, fresh_critics: bool, kappa: float) -> LossModule:
        return self._make_loss(online=True, q_on=q_on, kappa=kappa)

    def _reduce_critics(self, members: dict[str, torch.Tensor], loss: LossModule) -> dict[str, torch.Tensor]:
        """Each ensemble's mean and min (``q_off_mean``, ``q_off_min``, ...), and ``q_mix``: the
        kappa-mixed ensembles under the reduction the actor maximises (RLPD+OPT)."""
        out = {}
        for c, v in members.items():
            out[f"q_{c}_mean"], out[f"q_{c}_min"] = v.mean(0), v.min(0)[0]
        if "on" in members:
            r = "min" if self.cfg.actor_q_reduction == "min" else "mean"
            out["q_mix"] = (1 - loss.kappa) * out[f"q_off_{r}"] + loss.kappa * out[f"q_on_{r}"]
        return out

    def update_defs(self, kind: str, *, utd: int = 1) -> list[UpdateDef]:
        """``bc``: PORL's behaviour cloning; ``pretrain``: Eq. 3 on the online ensemble;
        ``offline`` / ``finetune`` / ``critic``: see :func:`sac_update_defs`."""
        if kind == "bc":
            return [UpdateDef("bc", lambda l: l, ("loss_bc",), ("actor_network_params",), self.run_cfg.porl.bc_lr)]
        loss = self.loss_for(kind)
        if kind == "pretrain":
            return [self._pretrain_def(loss)]
        defs = sac_update_defs(loss, self.cfg, actor_every=self.cfg.actor_every or (1 if kind == "offline" else utd))
        return defs[:1] if kind == "critic" else defs

    def loss_for(self, kind: str) -> LossModule:
        if kind == "vae":
            raise ValueError("the sac backbone has no VAE phase")
        if kind == "bc":
            return self.bc_loss
        return super().loss_for(kind)


def _critic_members(loss: LossModule, critic: str, td: TensorDictBase) -> torch.Tensor:
    """``Q_c,i(s, a)`` of every member ``i`` of critic ``c`` of ``loss``: ``[members, N]``."""
    network = getattr(loss, f"qvalue_{critic}_network")
    params = getattr(loss, f"qvalue_{critic}_network_params")
    values = []
    for i in range(params.batch_size[0]):
        with params[i].to_module(network):
            values.append(network(td.select(*network.in_keys).clone()).get("state_action_value").squeeze(-1))
    return torch.stack(values)


def td3_update_defs(loss: LossModule, backbone: BackboneConfig, *, td_error: bool = False) -> list[UpdateDef]:
    """The update steps of an ``OPTLoss`` / ``OPTIQLLoss``, in the order they run.

    TD3/SPOT: ``critic`` (every critic's TD loss, Eq. 2) every update, ``actor`` (Eq. 4) and the
    Polyak target update ``theta' <- tau theta + (1 - tau) theta'`` every ``actor_delay`` updates.
    IQL: ``value`` (expectile regression), ``actor`` (AWR, Eq. 9) and ``qvalue`` (+ targets) every
    update. ``td_error``: the critic step also returns the squared TD errors (adaptive kappa reads
    them).
    """
    b = backbone

    def critic_fn(l):
        return functools.partial(l.qvalue_losses, td_error=True) if td_error else l.qvalue_losses

    actor = ("actor", lambda l: loss_method(l.actor_loss, "loss_actor"), ("loss_actor",),
             loss.actor_param_names, b.actor_lr)
    if isinstance(loss, OPTIQLLoss):
        return [
            UpdateDef("value", lambda l: l.value_losses, loss.value_loss_keys, loss.value_param_names, b.value_lr),
            UpdateDef(*actor),
            UpdateDef("qvalue", critic_fn, loss.qvalue_loss_keys, loss.critic_param_names,
                      b.critic_lr, targets="all", tau=b.tau),
        ]
    return [
        UpdateDef("critic", critic_fn, loss.qvalue_loss_keys, loss.critic_param_names, b.critic_lr),
        UpdateDef(*actor, every=b.actor_delay, targets="all", tau=b.tau),
    ]


def sac_update_defs(loss: EnsembleSACLoss, backbone: BackboneConfig, *, actor_every: int) -> list[UpdateDef]:
    """The update steps of an :class:`~torchrl_opt.objectives.sac_ensemble.EnsembleSACLoss`:
    ``critic`` (every ensemble's TD loss, CQL's regulariser and Lagrange multiplier for
    :class:`~torchrl_opt.objectives.cql.EnsembleCQLLoss`, all at ``critic_lr`` as WSRL's 3e-4, then
    Polyak targets) every update;
    ``actor`` (the actor and the temperature, one Adam with two learning rates) every
    ``actor_every`` updates."""
    b = backbone
    lrs = {"actor_network_params": b.actor_lr, "log_alpha_params": b.alpha_lr}
    return [
        UpdateDef("critic", lambda l: l.qvalue_losses, loss.qvalue_loss_keys, loss.critic_param_names,
                  b.critic_lr, targets="all", tau=b.tau),
        UpdateDef("actor", lambda l: l.actor_alpha_losses, loss.actor_loss_keys, loss.actor_param_names,
                  {g: lrs[g] for g in loss.actor_param_names}, every=actor_every),
    ]


def make_agent(cfg: RunConfig, obs_dim: int, action_spec: Bounded, device: torch.device | str) -> Agent:
    """The agent of ``cfg.backbone.name`` for the given spaces on ``device`` (``cfg`` validated, its
    entries left ``None`` filled from :mod:`torchrl_opt.presets`, in place)."""
    cfg = to_run_config(cfg)
    cls = SACAgent if cfg.backbone.name == "sac" else TD3Agent
    return cls(cfg, obs_dim, action_spec, torch.device(device))

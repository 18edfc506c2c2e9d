"""EnsembleSACLoss: SAC with a LayerNorm critic ensemble and random-subset targets (RLPD, WSRL, PORL),
and its OPT extension with a second ensemble ``Q_on`` (RLPD+OPT, Sec. 5.6 of the OPT paper).

Each ensemble ``c`` (``off``; and ``on`` for OPT) holds ``N`` independently initialised critics
(``N = 10`` in RLPD/WSRL/PORL), evaluated together by one ``torch.vmap`` call over their stacked
parameters. Every critic of ensemble ``c`` regresses onto the same target (RLPD, Ball et al. 2023)::

    a' ~ pi(.|s'),   M ~ Uniform{subsets of {1..N} of size m}        (m = num_min_qs = 2)
    y_c = r + gamma * (1 - terminated) * (min_{i in M} Qbar_c,i(s', a') - alpha * log pi(a'|s'))
    L_c = sum_i E[(Q_c,i(s, a) - y_c)^2]

(the ``- alpha * log pi`` term is dropped with ``backup_entropy=False``; the next action comes from the
current actor, as in SAC v2; one subset per update, shared by the batch). The actor maximises the
ensemble *mean* (RLPD) of the kappa-mixed critics (OPT's Eq. 4 analogue; ``kappa = 0`` is plain RLPD)::

    a ~ pi(.|s) (reparameterised)
    L_pi = E[ alpha * log pi(a|s) - ((1 - kappa) * mean_i Q_off,i(s, a) + kappa * mean_i Q_on,i(s, a)) ]

and the temperature follows automatic entropy tuning (Haarnoja et al. 2018)::

    L_alpha = E[ -log_alpha * (log pi(a|s) + H_target) ],   H_target = -|A| / 2 by default (RLPD).

**Why not TorchRL's SACLoss or REDQLoss.** ``SACLoss`` takes the min over *all* target critics and the
min (not the mean) in the actor loss. ``REDQLoss`` does use a random subset for the target and the
ensemble mean for the actor, but (i) it computes actor, critic and temperature losses in one fused
forward, so a high-UTD schedule (RLPD: 20 critic updates per actor update) pays for 20 actor passes;
(ii) it draws the subset with a host-side ``torch.randperm`` on the global CPU generator, which a
CUDA graph would freeze at capture and a test cannot seed separately; (iii) it clamps alpha to
``[0.1, 10]`` by default while RLPD does not; (iv) it has no second ensemble for OPT's ``Q_on`` nor
the ``online_params``/``online_pretrain_loss`` protocol :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss`
needs. This module keeps TorchRL's conventions (``_AcceptedKeys``/``set_keys``,
``convert_to_functional``, ``target_*_params`` for ``SoftUpdate``, ``make_value_estimator``, ``loss_*``)
and exposes the three losses as separate methods so each can be its own compiled step.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey
from torchrl.data.tensor_specs import Composite, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives.utils import (
    distance_loss,
)

from torchrl_opt.objectives.common import DualCriticLoss

__all__ = ["EnsembleSACLoss", "OPTEnsembleSACLoss"]



class EnsembleSACLoss(DualCriticLoss):
    """SAC with an ``N``-critic ensemble, random-subset min targets and an ensemble-mean actor loss.

    Args:
        actor_network: a stochastic actor (``ProbabilisticActor``, e.g.
            :func:`torchrl_opt.models.make_gaussian_actor`): ``observation -> action`` with ``get_dist``.
        qvalue_off_network: the (first) ensemble: a list of ``num_qvalue_nets`` independently
            initialised critics (:func:`torchrl_opt.models.make_qvalue_ensemble` with ``layer_norm=True``),
            or one module duplicated TorchRL style (its copies are filled with noise: prefer a list).
        qvalue_on_network: OPT's online ensemble in the same form, or ``None`` (plain RLPD/WSRL/PORL).

    Keyword Args:
        num_qvalue_nets: critics per ensemble. Default 10.
        num_min_qs: size ``m`` of the random subset of target critics whose min forms the target.
            Default 2 (RLPD); ``num_min_qs = num_qvalue_nets`` is the min over all (clipped double Q).
        kappa: initial weight of ``Q_on`` in the actor loss, in [0, 1]; must be 0 without ``Q_on``.
        alpha_init: initial temperature. Default 1.0 (RLPD).
        fixed_alpha: keep alpha constant (``log_alpha`` becomes a buffer, ``loss_alpha`` is 0).
        target_entropy: ``"auto"`` (``-|A| / 2``, RLPD) or a number.
        action_spec: the action spec; needed for ``target_entropy="auto"`` when the actor has none.
        backup_entropy: subtract ``alpha * log pi(a'|s')`` in the TD target. Default True.
        loss_function: ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.
        generator: optional ``torch.Generator`` (on the loss's device) for the subset draw; ``None``
            uses the default generator, which ``torch.compile``/CUDA graphs handle without breaks.
        deactivate_vmap: evaluate the ensemble in a Python loop (debugging only).

    ``forward`` returns ``loss_actor``, ``loss_alpha``, ``loss_qvalue_off`` (and ``loss_qvalue_on``) plus
    detached diagnostics: ``alpha``, ``entropy``, ``kappa``, per-ensemble ``pred_value_*``,
    ``target_value_*`` and ``state_action_value_*`` (ensemble mean at the actor's action).
    """

    @dataclass
    class _AcceptedKeys(DualCriticLoss._AcceptedKeys):
        """The shared keys (:class:`DualCriticLoss`) plus ``log_prob``, where the actor's
        log-probability is reported (default ``"action_log_prob"``)."""

        log_prob: NestedKey = "action_log_prob"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    actor_network: TensorDictModule
    qvalue_off_network: TensorDictModule
    qvalue_on_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: None
    qvalue_off_network_params: TensorDictParams
    target_qvalue_off_network_params: TensorDictParams
    qvalue_on_network_params: TensorDictParams
    target_qvalue_on_network_params: TensorDictParams

    #: names of the parameter groups that online pre-training trains (see MetaAdaptationLoss).

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        qvalue_on_network: TensorDictModule | list[TensorDictModule] | None = None,
        *,
        num_qvalue_nets: int = 10,
        num_min_qs: int = 2,
        kappa: float = 0.0,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: str | Number = "auto",
        action_spec: TensorSpec | None = None,
        backup_entropy: bool = True,
        loss_function: str = "l2",
        reduction: str = "mean",
        generator: torch.Generator | None = None,
        deactivate_vmap: bool = False,
    ) -> None:
        super().__init__()
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
        if not 1 <= num_min_qs <= num_qvalue_nets:
            raise ValueError(
                f"num_min_qs must lie in [1, num_qvalue_nets={num_qvalue_nets}], got {num_min_qs}"
            )
        if not 0.0 <= float(kappa) <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        if qvalue_on_network is None and float(kappa) != 0.0:
            raise ValueError(
                f"kappa={kappa} weights a Q_on ensemble, but qvalue_on_network is None; pass the "
                "online ensemble or use kappa=0 (plain ensemble SAC)."
            )
        if alpha_init <= 0:
            raise ValueError(f"alpha_init must be positive, got {alpha_init}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not isinstance(
            actor_network, (ProbabilisticTensorDictSequential, ProbabilisticTensorDictModule)
        ):
            raise TypeError(
                f"{type(actor_network).__name__} is not a probabilistic actor: EnsembleSACLoss needs a stochastic "
                "actor (e.g. torchrl_opt.models.make_gaussian_actor)."
            )
        self._in_keys = None
        self.num_qvalue_nets = num_qvalue_nets
        self.num_min_qs = num_min_qs
        self.has_qvalue_on = qvalue_on_network is not None
        self.backup_entropy = backup_entropy
        self.loss_function = loss_function
        self.reduction = reduction
        self.fixed_alpha = fixed_alpha
        self.generator = generator
        self.deactivate_vmap = deactivate_vmap

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._convert_critic(qvalue_off_network, "qvalue_off_network")
        if self.has_qvalue_on:
            self._convert_critic(qvalue_on_network, "qvalue_on_network")

        device = next(iter(self.parameters())).device
        log_alpha = torch.tensor(float(alpha_init), device=device).log()
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.log_alpha = torch.nn.Parameter(log_alpha)
        self.register_buffer(
            "target_entropy",
            torch.tensor(
                _target_entropy(target_entropy, action_spec, actor_network, self.tensor_keys.action),
                device=device,
            ),
        )
        self.register_buffer("kappa", torch.tensor(float(kappa), device=device))
        self._finish_init()

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature ``exp(log_alpha)`` (detached)."""
        return self.log_alpha.detach().exp()

    @property
    def out_keys(self) -> list[str]:
        keys = ["loss_actor", "loss_alpha", *[f"loss_qvalue_{c}" for c in self.critics]]
        keys += ["alpha", "entropy", "kappa"]
        for critic in self.critics:
            keys += [f"state_action_value_{critic}", f"pred_value_{critic}", f"target_value_{critic}"]
        return keys

    # ------------------------------------------------------------------ pieces
    def critic_values(
        self, critic: str, tensordict: TensorDictBase, params: TensorDictBase
    ) -> torch.Tensor:
        """``Q_c,i(s, a)`` for every member ``i`` in ``params`` (stacked on dim 0), in ONE vmapped call.

        Returns a tensor of shape ``[params.batch_size[0], *batch]``.
        """
        td = tensordict.select(
            *getattr(self, f"qvalue_{critic}_network").in_keys, strict=False
        ).expand(params.batch_size[0], *tensordict.batch_size)
        out = self._vmap_qvalue[critic](td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def sample_subset(self) -> torch.Tensor:
        """Indices of ``num_min_qs`` distinct target critics drawn uniformly without replacement.

        ``argsort`` of ``N`` uniforms: a device op, no host sync, capturable by CUDA graphs.
        """
        uniforms = torch.rand(
            self.num_qvalue_nets, generator=self.generator, device=self.kappa.device
        )
        return uniforms.argsort()[: self.num_min_qs]

    def _sample_action(
        self, tensordict: TensorDictBase, *, reparameterize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a ~ pi(.|s)`` and ``log pi(a|s)`` (reparameterised when asked)."""
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        with set_exploration_type(ExplorationType.RANDOM), self.actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            dist = self.actor_network.get_dist(td)
            if reparameterize:
                action, log_prob = rsample_and_log_prob(dist)
            else:
                with torch.no_grad():
                    action, log_prob = rsample_and_log_prob(dist)
        return action, log_prob

    @torch.no_grad()
    def next_action(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``s'`` with ``a' ~ pi(.|s')`` and its log-probability under ``tensor_keys.log_prob``.

        One draw serves every ensemble of the batch (the online critic of OPT sees the same ``a'``).
        """
        next_td = step_mdp(tensordict).select(*self.actor_network.in_keys, strict=False)
        action, log_prob = self._sample_action(next_td, reparameterize=False)
        next_td.set(self.tensor_keys.action, action)
        next_td.set(self.tensor_keys.log_prob, log_prob)
        return next_td

    @torch.no_grad()
    def target_value(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        subset: torch.Tensor,
    ) -> torch.Tensor:
        """``y_c = r + gamma (1 - d) (min_{i in subset} Qbar_c,i(s', a') - alpha log pi(a'|s'))``."""
        target_params = getattr(self, f"target_qvalue_{critic}_network_params")[subset]
        next_q = self.critic_values(critic, next_td, target_params).min(0)[0]
        if self.backup_entropy:
            next_q = next_q - self.alpha * next_td.get(self.tensor_keys.log_prob)
        target_td = tensordict.select(
            "next", self.tensor_keys.action, *self.actor_network.in_keys, strict=False
        ).clone(False)
        target_td.set(("next", self.tensor_keys.state_action_value), next_q.unsqueeze(-1))
        return self.value_estimator.value_estimate(target_td).squeeze(-1)

    def _critic_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        params: TensorDictBase | None = None,
        subset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of one ensemble: ``sum_i d(Q_c,i(s,a), y_c)``, reduced over the batch."""
        if params is None:
            params = getattr(self, f"qvalue_{critic}_network_params")
        if subset is None:
            subset = self.sample_subset()
        weights = self._maybe_get_priority_weight(tensordict)
        target = self.target_value(critic, tensordict, next_td, subset)
        current_q = self.critic_values(critic, tensordict, params)
        loss = distance_loss(
            current_q, target.expand_as(current_q), loss_function=self.loss_function
        ).sum(0)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            f"pred_value_{critic}": current_q.detach().mean(),
            f"target_value_{critic}": target.mean(),
        }
        return loss, metadata

    # ------------------------------------------------------------------ losses
    def qvalue_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Every ensemble's TD loss with one shared ``a' ~ pi(.|s')``: the critic step.

        Each ensemble draws its own random subset of target critics.
        """
        next_td = self.next_action(tensordict)
        out: dict[str, torch.Tensor] = {}
        for critic in self.critics:
            loss, metadata = self._critic_loss(critic, tensordict, next_td)
            out[f"loss_qvalue_{critic}"] = loss
            out.update(metadata)
        return TensorDict(out, batch_size=[])

    def qvalue_off_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of the ``off`` ensemble."""
        return self._critic_loss("off", tensordict, self.next_action(tensordict))

    def qvalue_on_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_on``, optionally at other parameters ``params`` (functional use)."""
        self._require_qvalue_on()
        return self._critic_loss("on", tensordict, self.next_action(tensordict), params)

    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_pi = E[alpha log pi(a|s) - ((1-kappa) mean_i Q_off,i + kappa mean_i Q_on,i)(s, a)]``.

        The metadata carry the detached per-sample ``log_prob`` (for :meth:`alpha_loss`).
        """
        weights = self._maybe_get_priority_weight(tensordict)
        action, log_prob = self._sample_action(tensordict, reparameterize=True)
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        td.set(self.tensor_keys.action, action)
        q_mean = {
            critic: self.critic_values(
                critic, td, getattr(self, f"qvalue_{critic}_network_params").detach()
            ).mean(0)
            for critic in self.critics
        }
        q_mix = q_mean["off"]
        if self.has_qvalue_on:
            q_mix = (1 - self.kappa) * q_mean["off"] + self.kappa * q_mean["on"]
        loss = self.alpha * log_prob - q_mix
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {f"state_action_value_{c}": q.detach().mean() for c, q in q_mean.items()}
        metadata["log_prob"] = log_prob.detach()
        metadata["entropy"] = -log_prob.detach().mean()
        return loss, metadata

    def alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """``L_alpha = E[-log_alpha * (log pi + H_target)]`` (0 with ``fixed_alpha``)."""
        if self.fixed_alpha:
            return torch.zeros((), device=log_prob.device)
        return (-self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

    def actor_alpha_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The actor step of RLPD: ``loss_actor`` and ``loss_alpha`` from one policy sample."""
        loss_actor, metadata = self.actor_loss(tensordict)
        log_prob = metadata.pop("log_prob")
        out = {
            "loss_actor": loss_actor,
            "loss_alpha": self.alpha_loss(log_prob),
            "alpha": self.alpha.clone(),
            "kappa": self.kappa.detach().clone(),
            **metadata,
        }
        return TensorDict(out, batch_size=[])

    def online_pretrain_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss online pre-training minimises for ``Q_on``: its ensemble TD loss.

        ``params``, when given, is a TensorDict keyed by :attr:`online_param_names`; the loss is then
        evaluated at those parameters (the meta-adaptation inner step needs this).
        """
        on_params = None if params is None else params["qvalue_on_network_params"]
        return self.qvalue_on_loss(tensordict, on_params)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses on one batch: ``loss_actor``, ``loss_alpha`` and each ensemble's TD loss."""
        out = self.qvalue_losses(tensordict)
        out.update(self.actor_alpha_losses(tensordict))
        return out

class OPTEnsembleSACLoss(EnsembleSACLoss):
    """RLPD+OPT: :class:`EnsembleSACLoss` with a mandatory online ensemble ``Q_on`` and kappa mixing.

    ``qvalue_off_network`` is the RLPD-style offline ensemble, ``qvalue_on_network`` a freshly
    initialised ensemble trained by :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss`
    (``online_params`` / ``online_pretrain_loss``) and then fine-tuned beside ``Q_off``; the actor loss
    is the Eq. 4 analogue ``alpha log pi - ((1 - kappa) mean Q_off + kappa mean Q_on)``.
    """

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        qvalue_on_network: TensorDictModule | list[TensorDictModule],
        **kwargs,
    ) -> None:
        if qvalue_on_network is None:
            raise ValueError("OPTEnsembleSACLoss needs qvalue_on_network (the online ensemble)")
        super().__init__(actor_network, qvalue_off_network, qvalue_on_network, **kwargs)


def _target_entropy(
    target_entropy: str | Number,
    action_spec: TensorSpec | None,
    actor_network: TensorDictModule,
    action_key: NestedKey,
) -> float:
    """``-|A| / 2`` for ``"auto"`` (RLPD's default), else the number given."""
    if isinstance(target_entropy, Number) and not isinstance(target_entropy, bool):
        return float(target_entropy)
    if target_entropy != "auto":
        raise ValueError(f"target_entropy must be 'auto' or a number, got {target_entropy!r}")
    spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
    if isinstance(spec, Composite):
        spec = spec[action_key] if action_key in spec.keys(True, True) else None
    if spec is None or spec.shape is None or len(spec.shape) == 0:
        raise ValueError(
            "target_entropy='auto' needs the action dimension: pass action_spec or an actor with a spec"
        )
    return -0.5 * float(spec.shape[-1])

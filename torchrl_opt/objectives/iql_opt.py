"""OPTIQLLoss: OPT on the IQL backbone (Shin, Kim et al., ICML 2025, Appendix A.2).

IQL (Kostrikov et al. 2021) keeps a twin critic ``Q`` (with target parameters ``Qbar``) and a state
value ``V``. OPT adds a second pair ``(Q_on, V_on)`` beside the offline pair ``(Q_off, V_off)``; each
pair is trained with IQL's own losses on the same batch, for ``c in {off, on}``:

* ``V_c`` by expectile regression onto the *target* critic (Eq. 5)::

      L_V_c = E[ |tau - 1(u < 0)| * u^2 ],      u = min_i Qbar_c,i(s, a) - V_c(s)

* ``Q_c`` by TD regression onto ``V_c`` (Eq. 6), summed over the twin members::

      L_Q_c = E[ sum_i d(Q_c,i(s, a), y_c) ],   y_c = r + gamma * (1 - terminated) * V_c(s')

  ``y_c`` is computed without gradient (``V_c``'s current parameters, detached), as TorchRL's
  :class:`~torchrl.objectives.IQLLoss` does: the Q loss never trains ``V``.

* the stochastic actor by advantage-weighted regression on the kappa-mixed advantage (Eq. 9)::

      L_pi = E[ -min(exp(beta * A_mix(s, a)), w_max) * log pi(a | s) ]
      A_mix = (1 - kappa) * (min_i Qbar_off,i(s, a) - V_off(s)) + kappa * (min_i Qbar_on,i(s, a) - V_on(s))

  with the weights computed without gradient and clipped at ``w_max = 100`` after the
  exponential, as in TorchRL's ``IQLLoss``. ``a`` is the dataset action.

  Note on the kappa convention: the paper's printed Eq. 9 puts ``kappa`` on the offline advantage
  and ``1 - kappa`` on the online one, the reverse of Eq. 4 (TD3 actor) and of the kappa schedules of
  Table 15, which start near 0 (trust ``Q_off``) and end near 1 (trust ``Q_on``). This module uses the
  Eq. 4 convention throughout, so one :class:`~torchrl_opt.schedules.KappaSchedule` serves both
  backbones: ``kappa = 0`` is plain IQL on ``(Q_off, V_off)``.

Online pre-training trains ``(Q_on, V_on)`` with the meta-adaptation objective (Eq. 3 for Q, Eq. 8
for V). :meth:`OPTIQLLoss.online_pretrain_loss` gives ``L_Q_on + L_V_on`` as a pure function of those
parameters, which :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` differentiates with
``torch.func``.

``kappa`` is a float32 tensor buffer; :class:`~torchrl_opt.schedules.KappaSchedule` writes into it in
place, so a compiled or CUDA-graphed step sees new values without recompiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey
from torchrl.objectives.utils import (
    distance_loss,
)

from torchrl_opt.objectives.common import DualCriticLoss, require_keys

__all__ = ["OPTIQLLoss", "expectile_loss"]



def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric squared loss ``L_2^tau(u) = |tau - 1(u < 0)| * u^2``, elementwise (Eq. 5)."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff.pow(2)


class OPTIQLLoss(DualCriticLoss):
    """IQL loss of OPT with two (Q, V) pairs (Eq. 5 and 6 for each pair, Eq. 9 for the actor).

    Args:
        actor_network: stochastic actor with ``get_dist`` (e.g.
            :func:`~torchrl_opt.models.make_gaussian_actor`, a ``TanhNormal`` policy).
        qvalue_off_network: the offline critic ``Q_off``: one module (duplicated ``num_qvalue_nets``
            times, TorchRL style) or a list of independently initialised modules.
        value_off_network: the offline state value ``V_off`` (``observation -> state_value``).
        qvalue_on_network: the online critic ``Q_on`` in the same form as ``Q_off``, or ``None``.
        value_on_network: the online state value ``V_on``, or ``None``. ``Q_on`` and ``V_on`` come
            together: both ``None`` gives plain IQL on ``(Q_off, V_off)``.

    Keyword Args:
        num_qvalue_nets: critics per twin. Default 2.
        kappa: initial weight of the online advantage in the actor loss, in [0, 1]. Must be 0
            without ``(Q_on, V_on)``.
        expectile: IQL's expectile ``tau`` in (0, 1). Default 0.5, as ``IQLLoss`` (the IQL paper
            uses 0.7 on MuJoCo and 0.9 on AntMaze; the recipes set it).
        temperature: inverse temperature ``beta >= 0`` of the advantage weights. Default 1.0, as
            ``IQLLoss`` (the IQL paper uses 3.0 on MuJoCo; the recipes set it).
        max_weight: clip of the advantage weights, applied after the exponential. Default 100
            (``IQLLoss``'s constant).
        loss_function: distance of the Q loss: ``"smooth_l1"`` (default, as ``IQLLoss``),
            ``"l2"`` (the IQL paper's squared error; the recipes set it) or ``"l1"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses and
            diagnostics).
        deactivate_vmap: evaluate twins in a Python loop instead of ``vmap``.

    Without the online pair and with default arguments this is TorchRL's
    :class:`~torchrl.objectives.IQLLoss` with default arguments: the same loss values and
    gradients, the losses ``loss_actor``, ``loss_qvalue``, ``loss_value`` and ``entropy`` under
    TorchRL's names, ``actor_loss``/``value_loss``/``qvalue_loss(td) -> (loss, metadata)``, and
    ``forward`` writes the priority ``td_error`` (``max_i (Q_i(s, a) - y)^2``) into its input.
    Differences: ``priority_weight`` importance weights, when present, weight every loss (as
    ``TD3Loss`` does; ``IQLLoss`` ignores them); ``forward`` does not write ``_log_prob`` into its
    input; extra diagnostics are returned.

    The discount is set with :meth:`make_value_estimator` (TD0 by default, ``gamma=0.99``), as for
    TorchRL's losses. Input: TorchRL's transition layout, ``observation``, ``action``,
    ``next/{observation, reward, done, terminated}`` (a missing key raises
    :class:`~torchrl_opt.objectives.common.LossInputError` naming it). ``forward`` returns
    ``loss_actor``, ``loss_value``, ``loss_qvalue`` (and ``loss_value_on``, ``loss_qvalue_on``
    with the online pair) plus detached diagnostics (batch means; per-sample with
    ``reduction="none"``): ``entropy`` (``-log pi(a|s)``), ``weight`` (the clipped AWR weight),
    ``advantage_mix`` (``A_mix``, with the online pair) and, per pair (``_on``-suffixed for the
    online one), ``state_value`` (``V_c(s)``), ``advantage`` (``min_i Qbar_c,i - V_c``),
    ``pred_value`` (``Q_c,i(s, a)``) and ``target_value`` (``y_c``); ``kappa`` with the online pair.

    The step methods the pipeline calls return TensorDicts and never write into their input:
    :meth:`value_losses` (:attr:`value_loss_keys`), :meth:`qvalue_losses`
    (:attr:`qvalue_loss_keys`) and :meth:`actor_loss`.

    The critics and values have separate parameter groups and each loss reaches only its own
    group (the actor loss only the actor, ``loss_value*`` only ``V_c``, ``loss_qvalue*`` only
    ``Q_c``), so one may sum all losses and step one optimiser per group
    (:meth:`actor_parameters`, :meth:`value_parameters`, :meth:`critic_parameters`). ``V`` has no
    target parameters (as in IQL); ``Q_off`` and ``Q_on`` have targets, updated by
    :class:`~torchrl.objectives.SoftUpdate`.
    """

    @dataclass
    class _AcceptedKeys(DualCriticLoss._AcceptedKeys):
        """The shared keys (:class:`DualCriticLoss`) plus ``value``, the state-value networks'
        output key (default ``"state_value"``), as in :class:`~torchrl.objectives.IQLLoss`."""

        value: NestedKey = "state_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_off_network: TensorDictModule
    qvalue_off_network_params: TensorDictParams
    target_qvalue_off_network_params: TensorDictParams
    qvalue_on_network: TensorDictModule
    qvalue_on_network_params: TensorDictParams
    target_qvalue_on_network_params: TensorDictParams
    value_off_network: TensorDictModule
    value_off_network_params: TensorDictParams
    target_value_off_network_params: TensorDictParams
    value_on_network: TensorDictModule
    value_on_network_params: TensorDictParams
    target_value_on_network_params: TensorDictParams

    #: names of the parameter groups that online pre-training trains (see MetaAdaptationLoss).
    online_param_names: tuple[str, ...] = ("qvalue_on_network_params", "value_on_network_params")

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        value_off_network: TensorDictModule,
        qvalue_on_network: TensorDictModule | list[TensorDictModule] | None = None,
        value_on_network: TensorDictModule | None = None,
        *,
        num_qvalue_nets: int = 2,
        kappa: float = 0.0,
        expectile: float = 0.5,
        temperature: float = 1.0,
        max_weight: float = 100.0,
        loss_function: str = "smooth_l1",
        reduction: str = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        super().__init__()
        if (qvalue_on_network is None) != (value_on_network is None):
            raise ValueError(
                "qvalue_on_network and value_on_network come together: pass both (OPT) or "
                f"neither (plain IQL), got qvalue_on_network={type(qvalue_on_network).__name__} "
                f"and value_on_network={type(value_on_network).__name__}."
            )
        if not 0.0 <= float(kappa) <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        if qvalue_on_network is None and float(kappa) != 0.0:
            raise ValueError(
                f"kappa={kappa} weights the online advantage, but qvalue_on_network and "
                "value_on_network are None; pass the online pair or use kappa=0 (plain IQL)."
            )
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must lie in (0, 1), got {expectile}")
        if temperature < 0:
            raise ValueError(f"temperature (inverse, beta) must be >= 0, got {temperature}")
        if max_weight <= 0:
            raise ValueError(f"max_weight must be positive, got {max_weight}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(
                f"loss_function must be 'smooth_l1', 'l2' or 'l1', got {loss_function!r}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not isinstance(
            actor_network, (ProbabilisticTensorDictSequential, ProbabilisticTensorDictModule)
        ):
            raise TypeError(
                "OPTIQLLoss needs a stochastic actor whose get_dist gives log pi(a|s) (a "
                "ProbabilisticActor such as make_gaussian_actor), got "
                f"{type(actor_network).__name__}."
            )
        self._in_keys = None
        self.delay_qvalue = True
        self.deactivate_vmap = deactivate_vmap
        self.num_qvalue_nets = num_qvalue_nets
        self.has_qvalue_on = qvalue_on_network is not None
        self.expectile = float(expectile)
        self.temperature = float(temperature)
        self.max_weight = float(max_weight)
        self.loss_function = loss_function
        self.reduction = reduction

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._convert_critic(qvalue_off_network, "qvalue_off_network")
        self.convert_to_functional(
            value_off_network, "value_off_network", create_target_params=False
        )
        if self.has_qvalue_on:
            self._convert_critic(qvalue_on_network, "qvalue_on_network")
            self.convert_to_functional(
                value_on_network, "value_on_network", create_target_params=False
            )

        device = next(iter(self.parameters())).device
        self.register_buffer("kappa", torch.tensor(float(kappa), device=device))
        self._finish_init()

    # ------------------------------------------------------------------ keys
    @property
    def _bootstrap_key(self) -> NestedKey:
        """IQL bootstraps from ``V_c(s')``, read from ``("next", value)``."""
        return self.tensor_keys.value

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *self.qvalue_off_network.in_keys,
            *self.value_off_network.in_keys,
            *[("next", key) for key in self.value_off_network.in_keys],
        ]
        if self.has_qvalue_on:
            keys += [
                *self.qvalue_on_network.in_keys,
                *self.value_on_network.in_keys,
                *[("next", key) for key in self.value_on_network.in_keys],
            ]
        self._in_keys = list(dict.fromkeys(keys))

    def _default_out_keys(self) -> list[str]:
        keys = ["loss_actor", *self.qvalue_loss_keys, *self.value_loss_keys, "entropy", "weight"]
        if self.has_qvalue_on:
            keys += ["advantage_mix", "kappa"]
        for critic in self.critics:
            keys += [
                self.critic_key(name, critic)
                for name in ("state_value", "advantage", "pred_value", "target_value")
            ]
        return keys

    @property
    def value_loss_keys(self) -> tuple[str, ...]:
        """The losses a value step minimises (summed): ``loss_value`` (and ``loss_value_on``)."""
        return tuple(self.critic_key("loss_value", critic) for critic in self.critics)

    @property
    def value_param_names(self) -> tuple[str, ...]:
        """The parameter groups the value step trains: ``value_off_network_params`` (and
        ``value_on_network_params``)."""
        return tuple(f"value_{critic}_network_params" for critic in self.critics)

    def value_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable state-value parameters (:attr:`value_param_names`), for an optimiser."""
        return self._group_parameters(self.value_param_names)

    # ------------------------------------------------------------------ inputs
    def _require(self, tensordict: TensorDictBase, keys: list, where: str) -> None:
        require_keys(
            tensordict,
            keys,
            f"{type(self).__name__}.{where}",
            hint="If your data names these entries differently, map them with "
            "loss.set_keys(action=..., reward=..., done=..., terminated=...).",
        )

    def _network_keys(self, kind: str, critics: tuple[str, ...]) -> list:
        return [
            key for critic in critics for key in getattr(self, f"{kind}_{critic}_network").in_keys
        ]

    def _check_value_input(self, tensordict, where, critics=None) -> None:
        critics = self.critics if critics is None else critics
        self._require(
            tensordict,
            [*self._network_keys("qvalue", critics), *self._network_keys("value", critics)],
            where,
        )

    def _check_qvalue_input(self, tensordict, where, critics=None) -> None:
        critics = self.critics if critics is None else critics
        self._require(
            tensordict,
            [
                *self._network_keys("qvalue", critics),
                ("next", self.tensor_keys.reward),
                ("next", self.tensor_keys.done),
                ("next", self.tensor_keys.terminated),
                *[("next", key) for key in self._network_keys("value", critics)],
            ],
            where,
        )

    # ------------------------------------------------------------------ pieces
    def _critic_values(
        self, critic: str, tensordict: TensorDictBase, params: TensorDictBase
    ) -> torch.Tensor:
        """``Q_c,i(s, a)`` for every member ``i`` of twin ``c``: shape ``[num_qvalue_nets, *batch]``."""
        td = tensordict.select(
            *getattr(self, f"qvalue_{critic}_network").in_keys, strict=False
        ).expand(self.num_qvalue_nets, *tensordict.batch_size)
        out = self._vmap_qvalue[critic](td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _state_value(
        self, critic: str, tensordict: TensorDictBase, params: TensorDictBase
    ) -> torch.Tensor:
        """``V_c(s)`` with parameters ``params``: shape ``[*batch]``."""
        network = getattr(self, f"value_{critic}_network")
        td = tensordict.select(*network.in_keys, strict=False)
        with params.to_module(network, preserve_module_state=False):
            td = network(td)
        return td.get(self.tensor_keys.value).squeeze(-1)

    def _target_min_q(self, critic: str, tensordict: TensorDictBase) -> torch.Tensor:
        """``min_i Qbar_c,i(s, a)`` at the target parameters, without gradient."""
        with torch.no_grad():
            return self._critic_values(
                critic, tensordict, getattr(self, f"target_qvalue_{critic}_network_params")
            ).min(0)[0]

    def _value_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Expectile loss of ``V_c`` (Eq. 5): ``|tau - 1(u<0)| u^2``, ``u = min_i Qbar_c,i(s,a) - V_c(s)``."""
        if params is None:
            params = getattr(self, f"value_{critic}_network_params")
        weights = self._maybe_get_priority_weight(tensordict)
        min_q = self._target_min_q(critic, tensordict)
        value = self._state_value(critic, tensordict, params)
        loss = expectile_loss(min_q - value, self.expectile)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {self.critic_key("state_value", critic): self._metric(value)}
        return loss, metadata

    def _qvalue_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
        value_params: TensorDictBase | None = None,
        td_error: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of twin ``c`` (Eq. 6): ``sum_i d(Q_c,i(s,a), r + gamma (1 - terminated) V_c(s'))``.

        ``V_c(s')`` is evaluated at ``value_params`` (default: the live ``V_c``), detached. With
        ``td_error`` the metadata adds the squared TD errors ``(Q_c,i(s, a) - y_c)^2``
        (``[num_qvalue_nets, *batch]``, as ``IQLLoss``).
        """
        if params is None:
            params = getattr(self, f"qvalue_{critic}_network_params")
        if value_params is None:
            value_params = getattr(self, f"value_{critic}_network_params")
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_value = self._state_value(
                critic, tensordict.get("next"), value_params.detach()
            )
            target_td = tensordict.select(
                "next", self.tensor_keys.action, *self.actor_network.in_keys, strict=False
            ).clone(False)
            target_td.set(("next", self.tensor_keys.value), next_value.unsqueeze(-1))
            target_value = self.value_estimator.value_estimate(target_td).squeeze(-1)
        current_q = self._critic_values(critic, tensordict, params)
        loss = distance_loss(
            current_q, target_value.expand_as(current_q), loss_function=self.loss_function
        ).sum(0)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            self.critic_key("pred_value", critic): self._metric(current_q),
            self.critic_key("target_value", critic): self._metric(target_value),
        }
        if td_error:
            metadata[self.critic_key("td_error", critic)] = (
                (current_q - target_value).detach().pow(2)
            )
        return loss, metadata

    def _losses(self, fn, tensordict: TensorDictBase, name: str, **kwargs) -> dict:
        out = {}
        for critic in self.critics:
            loss, metadata = fn(critic, tensordict, **kwargs)
            out[self.critic_key(name, critic)] = loss
            out.update(metadata)
        return out

    # ------------------------------------------------------------------ losses
    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 9: ``E[-min(exp(beta * A_mix), max_weight) * log pi(a|s)]``, weights without gradient.

        ``A_mix = (1 - kappa) * A_off + kappa * A_on`` with ``A_c = min_i Qbar_c,i(s,a) - V_c(s)``;
        ``A_mix = A_off`` without the online pair (``IQLLoss.actor_loss``). Returns
        ``(loss, metadata)``.
        """
        self._require(
            tensordict,
            [
                *self.actor_network.in_keys,
                self.tensor_keys.action,
                *self._network_keys("qvalue", self.critics),
                *self._network_keys("value", self.critics),
            ],
            "actor_loss",
        )
        weights = self._maybe_get_priority_weight(tensordict)
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            dist = self.actor_network.get_dist(
                tensordict.select(*self.actor_network.in_keys, strict=False)
            )
        log_prob = dist.log_prob(tensordict.get(self.tensor_keys.action))
        advantages = {}
        with torch.no_grad():
            for critic in self.critics:
                value = self._state_value(
                    critic, tensordict, getattr(self, f"value_{critic}_network_params")
                )
                advantages[critic] = self._target_min_q(critic, tensordict) - value
            advantage = advantages["off"]
            if self.has_qvalue_on:
                advantage = (1 - self.kappa) * advantages["off"] + self.kappa * advantages["on"]
            exp_a = torch.exp(advantage * self.temperature).clamp_max(self.max_weight)
        if log_prob.shape != exp_a.shape:
            raise RuntimeError(
                f"log pi(a|s) has shape {tuple(log_prob.shape)} but the advantage weights have "
                f"shape {tuple(exp_a.shape)}; the actor's distribution must sum over the action "
                "dimension (e.g. TanhNormal)."
            )
        loss = -(exp_a * log_prob)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {"entropy": self._metric(-log_prob), "weight": self._metric(exp_a)}
        if self.has_qvalue_on:
            metadata["advantage_mix"] = self._metric(advantage)
        metadata.update(
            {self.critic_key("advantage", c): self._metric(a) for c, a in advantages.items()}
        )
        return loss, metadata

    def value_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The expectile loss (Eq. 5) of every ``V_c``, summed, as ``IQLLoss.value_loss``:
        ``(loss, metadata)``."""
        self._check_value_input(tensordict, "value_loss")
        out = self._losses(self._value_loss, tensordict, "loss_value")
        return sum(out.pop(key) for key in self.value_loss_keys), out

    def qvalue_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The TD loss (Eq. 6) of every twin ``Q_c``, summed, as ``IQLLoss.qvalue_loss``:
        ``(loss, metadata)`` with the squared TD errors ``td_error`` (``td_error_on``),
        ``[num_qvalue_nets, *batch]``. Nothing is written into ``tensordict``."""
        self._check_qvalue_input(tensordict, "qvalue_loss")
        out = self._losses(self._qvalue_loss, tensordict, "loss_qvalue", td_error=True)
        return sum(out.pop(key) for key in self.qvalue_loss_keys), out

    def value_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The value step: every ``V_c``'s expectile loss (Eq. 5) under :attr:`value_loss_keys`
        (``loss_value``, ``loss_value_on``) and the ``state_value`` diagnostics, as a TensorDict."""
        self._check_value_input(tensordict, "value_losses")
        return TensorDict(self._losses(self._value_loss, tensordict, "loss_value"), batch_size=[])

    def qvalue_losses(self, tensordict: TensorDictBase, *, td_error: bool = False) -> TensorDictBase:
        """The Q step: every twin's TD loss (Eq. 6) under :attr:`qvalue_loss_keys`
        (``loss_qvalue``, ``loss_qvalue_on``) and its diagnostics, as a TensorDict; with
        ``td_error`` also the squared TD errors ``td_error`` (``td_error_on``). Nothing is written
        into ``tensordict``."""
        self._check_qvalue_input(tensordict, "qvalue_losses")
        return TensorDict(
            self._losses(self._qvalue_loss, tensordict, "loss_qvalue", td_error=td_error), batch_size=[]
        )

    def value_on_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Expectile loss of ``V_on`` (Eq. 5), optionally at other parameters ``params``."""
        self._require_qvalue_on()
        self._check_value_input(tensordict, "value_on_loss", ("on",))
        return self._value_loss("on", tensordict, params)

    def qvalue_on_loss(
        self,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
        value_params: TensorDictBase | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_on`` (Eq. 6) at ``params``, with the target's ``V_on`` at ``value_params``."""
        self._require_qvalue_on()
        self._check_qvalue_input(tensordict, "qvalue_on_loss", ("on",))
        return self._qvalue_loss("on", tensordict, params, value_params)

    def online_pretrain_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss online pre-training minimises for the online pair: ``L_Q_on + L_V_on``.

        ``params``, when given, is a TensorDict keyed by :attr:`online_param_names`; the loss is then
        evaluated at those parameters (the meta-adaptation inner step of Eq. 3 / Eq. 8 needs this):
        ``L_V_on`` at ``params["value_on_network_params"]`` (its target is ``Qbar_on``) and
        ``L_Q_on`` at ``params["qvalue_on_network_params"]`` with the TD target
        ``r + gamma (1 - terminated) V_on(s')`` at ``params["value_on_network_params"]``, detached.
        The gradient therefore reaches ``V_on`` only through ``L_V_on`` and ``Q_on`` only through
        ``L_Q_on``. The function is pure in ``params`` (no in-place ops, no host syncs).
        """
        self._require_qvalue_on()
        self._check_value_input(tensordict, "online_pretrain_loss", ("on",))
        self._check_qvalue_input(tensordict, "online_pretrain_loss", ("on",))
        if params is None:
            q_params = v_params = None
        else:
            q_params = params["qvalue_on_network_params"]
            v_params = params["value_on_network_params"]
        loss_value, metadata = self._value_loss("on", tensordict, v_params)
        loss_qvalue, metadata_q = self._qvalue_loss("on", tensordict, q_params, v_params)
        metadata.update(metadata_q)
        metadata["loss_value_on"] = loss_value.detach()
        metadata["loss_qvalue_on"] = loss_qvalue.detach()
        return loss_qvalue + loss_value, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses on one batch, as ``IQLLoss.forward``: ``loss_actor`` (Eq. 9), each V's
        (Eq. 5) and each Q's (Eq. 6), the diagnostics; writes ``tensor_keys.priority`` into
        ``tensordict``."""
        loss_actor, metadata_actor = self.actor_loss(tensordict)
        self._check_qvalue_input(tensordict, "forward")
        self._check_value_input(tensordict, "forward")
        out = self._losses(self._qvalue_loss, tensordict, "loss_qvalue", td_error=True)
        self._write_priority(
            tensordict, [out.pop(self.critic_key("td_error", c)) for c in self.critics]
        )
        out.update(self._losses(self._value_loss, tensordict, "loss_value"))
        out["loss_actor"] = loss_actor
        out.update(metadata_actor)
        if self.has_qvalue_on:
            out["kappa"] = self.kappa.detach().clone()
        return TensorDict(out, batch_size=[])

    # ------------------------------------------------------------------ value estimator
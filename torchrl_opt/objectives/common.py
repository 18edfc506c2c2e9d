"""``DualCriticLoss``: what OPT's loss modules share beyond their maths.

``OPTLoss`` (TD3), ``OPTIQLLoss`` and ``EnsembleSACLoss`` all hold an offline critic ensemble
``qvalue_off`` and optionally an online one ``qvalue_on`` (TorchRL functional parameters, targets
found by ``SoftUpdate``), evaluate every member with one ``vmap``, bootstrap through a TorchRL value
estimator, and expose the online pre-training protocol of
:class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` (``online_param_names``, ``online_params``).
This base class holds that plumbing once; subclasses keep the equations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    _vmap_func,
    dispatch_value_estimator,
)

from torchrl_opt.objectives.utils import plain_params

__all__ = ["DualCriticLoss", "CRITICS", "LossInputError", "TRANSITION_LAYOUT", "require_keys"]

#: names of the two critic groups: the offline-trained one and the online pre-trained one.
CRITICS = ("off", "on")

#: the input layout every OPT loss reads (TorchRL's transition layout, default key names).
TRANSITION_LAYOUT = (
    "TorchRL's transition layout: 'observation', 'action', ('next', 'observation'), "
    "('next', 'reward'), ('next', 'done'), ('next', 'terminated'), each with the batch as leading "
    "dimensions (rewards and flags with a trailing dimension of size 1)"
)


class LossInputError(KeyError):
    """A loss's input tensordict lacks a key the loss reads."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


def require_keys(
    tensordict: TensorDictBase,
    keys: Iterable[NestedKey],
    where: str,
    layout: str = TRANSITION_LAYOUT,
    hint: str = "",
) -> None:
    """Raise :class:`LossInputError` naming every key of ``keys`` that ``tensordict`` lacks.

    ``where`` names the caller (``"OPTLoss.actor_loss"``), ``layout`` the input layout expected.
    Only the tensordict's structure is read (no tensor values): the check costs no host sync and
    ``torch.compile`` resolves it at trace time.
    """
    missing = [key for key in dict.fromkeys(keys) if tensordict.get(key, None) is None]
    if missing:
        present = sorted(tensordict.keys(include_nested=True, leaves_only=True), key=str)
        raise LossInputError(
            f"{where} needs the input key(s) {missing}, which the tensordict lacks (it has "
            f"{present}). Expected {layout}."
            + (f" {hint}" if hint else "")
        )


class DualCriticLoss(LossModule):
    """Base class of the losses with an offline and an optional online critic ensemble.

    Subclasses set ``self.num_qvalue_nets``, ``self.has_qvalue_on`` and ``self.deactivate_vmap``,
    convert their critics with :meth:`_convert_critic`, then call :meth:`_finish_init`.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (``set_keys``), as in :class:`~torchrl.objectives.TD3Loss`.

        Attributes:
            action: the action key. Defaults to ``"action"``.
            state_action_value: the critics' output key. Defaults to ``"state_action_value"``.
            priority: where ``forward`` writes the per-sample priority (the largest squared TD
                error over the critics) into its input, for TorchRL's prioritised replay, as
                ``TD3Loss`` does. Defaults to ``"td_error"``.
            reward, done, terminated: keys read under ``"next"``.
            priority_weight: importance weights from a prioritised buffer.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    #: parameter groups trained by online pre-training (see MetaAdaptationLoss).
    online_param_names: tuple[str, ...] = ("qvalue_on_network_params",)

    qvalue_off_network: TensorDictModule
    qvalue_on_network: TensorDictModule

    # ------------------------------------------------------------------ construction
    def _convert_critic(
        self, network: TensorDictModule | list[TensorDictModule], name: str, *, target: bool = True
    ) -> None:
        """Register ``network`` (one module, duplicated, or a list of independently initialised
        modules of length ``num_qvalue_nets``) as functional parameters ``<name>_params``."""
        if isinstance(network, (list, tuple)):
            if len(network) != self.num_qvalue_nets:
                raise ValueError(
                    f"{name} has {len(network)} modules but num_qvalue_nets={self.num_qvalue_nets}"
                )
            network = list(network)
        self.convert_to_functional(
            network, name, self.num_qvalue_nets, create_target_params=target
        )

    def _finish_init(self) -> None:
        """Build the vmapped critic calls, and resolve lazily built state (in-keys, the value
        estimator) now, so that the first compiled call does not guard on it."""
        self._vmap_qvalue = {
            critic: _vmap_func(
                getattr(self, f"qvalue_{critic}_network"),
                randomness=self.vmap_randomness,
                pseudo_vmap=self.deactivate_vmap,
            )
            for critic in self.critics
        }
        self._set_in_keys()
        self.make_value_estimator(self.default_value_estimator)

    def _make_vmap(self) -> None:
        # LossModule.set_vmap_randomness calls this after a change of randomness mode.
        self._finish_init()

    @property
    def critics(self) -> tuple[str, ...]:
        """The critic groups this loss trains: ``("off",)`` or ``("off", "on")``."""
        return CRITICS if self.has_qvalue_on else ("off",)

    @staticmethod
    def critic_key(name: str, critic: str) -> str:
        """The out key of a per-critic entry ``name`` of critic ``critic``.

        ``Q_off``'s entries carry TorchRL's plain names (``loss_qvalue``, ``pred_value``, as
        ``TD3Loss``/``IQLLoss`` write them), so a loss without ``Q_on`` has TorchRL's out keys;
        ``Q_on``'s entries add the suffix ``_on`` (``loss_qvalue_on``, ``pred_value_on``).
        """
        return name if critic == "off" else f"{name}_{critic}"

    @property
    def qvalue_loss_keys(self) -> tuple[str, ...]:
        """The losses a critic step minimises (summed): one ``loss_qvalue`` entry per critic."""
        return tuple(self.critic_key("loss_qvalue", critic) for critic in self.critics)

    # ------------------------------------------------------------------ parameter groups
    @property
    def critic_param_names(self) -> tuple[str, ...]:
        """The parameter groups the critic step trains: ``qvalue_off_network_params`` (and
        ``qvalue_on_network_params``). Target groups are never trained (``SoftUpdate`` moves them)."""
        return tuple(f"qvalue_{critic}_network_params" for critic in self.critics)

    @property
    def actor_param_names(self) -> tuple[str, ...]:
        """The parameter groups the actor step trains: ``("actor_network_params",)``."""
        return ("actor_network_params",)

    def _group_parameters(self, names: Sequence[str]) -> list[torch.nn.Parameter]:
        return [
            p
            for name in names
            for p in getattr(self, name).values(True, True)
            if isinstance(p, torch.nn.Parameter)
        ]

    def critic_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable critic parameters (every group of :attr:`critic_param_names`), for an
        optimiser: ``torch.optim.Adam(loss.critic_parameters(), lr=3e-4)``."""
        return self._group_parameters(self.critic_param_names)

    def actor_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable actor parameters (:attr:`actor_param_names`), for an optimiser."""
        return self._group_parameters(self.actor_param_names)

    # ------------------------------------------------------------------ outputs
    def _metric(self, value: torch.Tensor) -> torch.Tensor:
        """A detached diagnostic: its batch mean, or the per-sample values with
        ``reduction="none"`` (then with TorchRL's shapes, e.g. ``[num_qvalue_nets, *batch]``)."""
        value = value.detach()
        return value if self.reduction == "none" else value.mean()

    @property
    def out_keys(self) -> list[str]:
        """The keys :meth:`forward` returns (``select_out_keys`` may narrow them)."""
        selected = self.__dict__.get("_selected_out_keys")
        return list(selected) if selected is not None else self._default_out_keys()

    @out_keys.setter
    def out_keys(self, values) -> None:
        self.__dict__["_selected_out_keys"] = list(values)

    def _default_out_keys(self) -> list[str]:
        """The keys :meth:`forward` returns by default; every loss class defines them."""
        raise NotImplementedError(f"{type(self).__name__} does not define _default_out_keys()")

    def _write_priority(self, tensordict: TensorDictBase, td_errors: list[torch.Tensor]) -> None:
        """Write the priority TorchRL's prioritised replay reads into ``tensordict`` under
        ``tensor_keys.priority``: the largest squared TD error over every member of every critic,
        ``max_{c, i} (Q_c,i(s, a) - y_c)^2`` (detached, shape ``[*batch]``). With ``Q_off`` alone
        this is what ``TD3Loss``/``IQLLoss`` write."""
        priority = torch.cat([e.detach() for e in td_errors], 0).max(0)[0]
        tensordict.set(self.tensor_keys.priority, priority)

    # ------------------------------------------------------------------ keys
    @property
    def _bootstrap_key(self) -> NestedKey:
        """The key under ``"next"`` from which the value estimator reads the bootstrap value."""
        return self.tensor_keys.state_action_value

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self._bootstrap_key,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *self.qvalue_off_network.in_keys,
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self):
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    # ------------------------------------------------------------------ online pre-training
    def online_params(self) -> TensorDictBase:
        """The live parameters that online pre-training trains, keyed by :attr:`online_param_names`.

        A plain TensorDict whose leaves are the loss's own ``nn.Parameter`` objects (not copies), so
        ``torch.func`` transforms can take it as a pytree and gradients land on the live parameters.
        """
        self._require_qvalue_on()
        return TensorDict(
            {name: plain_params(getattr(self, name)) for name in self.online_param_names},
            batch_size=[],
        )

    def _require_qvalue_on(self) -> None:
        if not self.has_qvalue_on:
            raise RuntimeError(
                f"This {type(self).__name__} was built without qvalue_on_network (the online "
                "critic); the online losses are undefined."
            )

    # ------------------------------------------------------------------ value estimator
    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """Choose how TD targets are built (TD0 by default; ``gamma`` set here, default 0.99)."""
        value_type, hp = self._prepare_value_estimator_kwargs(value_type, **hyperparams)
        if value_type is None:
            return self
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value": self._bootstrap_key,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hp,
        )
        return self

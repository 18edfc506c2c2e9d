"""``DualCriticLoss``: what OPT's loss modules share beyond their maths.

``OPTLoss`` (TD3), ``OPTIQLLoss`` and ``EnsembleSACLoss`` all hold an offline critic ensemble
``qvalue_off`` and optionally an online one ``qvalue_on`` (TorchRL functional parameters, targets
found by ``SoftUpdate``), evaluate every member with one ``vmap``, bootstrap through a TorchRL value
estimator, and expose the online pre-training protocol of
:class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` (``online_param_names``, ``online_params``).
This base class holds that plumbing once; subclasses keep the equations.
"""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = ["DualCriticLoss", "CRITICS"]

#: names of the two critic groups: the offline-trained one and the online pre-trained one.
CRITICS = ("off", "on")


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
            priority: unused by OPT (balanced replay sets priorities from the density ratio); kept
                for TorchRL compatibility. Defaults to ``"td_error"``.
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

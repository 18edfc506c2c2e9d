"""BCLoss: behaviour cloning of a stochastic actor by maximum likelihood (PORL's pre-trained policy)."""

from __future__ import annotations

from dataclasses import dataclass

from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, dispatch
from tensordict.utils import NestedKey
from torchrl.data import Bounded
from torchrl.objectives.common import LossModule

__all__ = ["BCLoss"]


class BCLoss(LossModule):
    """``loss_bc = -E_(s,a)~B_off[log pi(a|s)]`` for a tanh-squashed stochastic actor.

    Dataset actions are clamped ``margin * (high - low)`` inside the action box so that the tanh
    inverse in ``log pi`` stays finite. The actor's parameters are registered as
    ``actor_network_params`` (TorchRL ``convert_to_functional``); they are the actor module's own
    tensors, so training this loss trains the actor every other loss over it shares.

    Args:
        actor_network: a probabilistic actor with ``get_dist`` (e.g.
            :func:`torchrl_opt.models.make_gaussian_actor`).
        action_spec: the bounded action spec.

    Keyword Args:
        margin: relative clamp margin. Default 1e-4.

    Output: ``loss_bc`` and the detached mean ``bc_log_prob``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable keys: ``action`` (dataset actions, default ``"action"``)."""

        action: NestedKey = "action"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    actor_network: ProbabilisticTensorDictSequential
    actor_network_params: TensorDictParams
    target_actor_network_params: None

    def __init__(
        self, actor_network: ProbabilisticTensorDictSequential, action_spec: Bounded, *, margin: float = 1e-4
    ) -> None:
        super().__init__()
        if not hasattr(actor_network, "get_dist"):
            raise TypeError(
                f"{type(actor_network).__name__} has no get_dist: BCLoss needs a probabilistic actor"
            )
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        span = action_spec.space.high - action_spec.space.low
        self.register_buffer("low", action_spec.space.low + margin * span)
        self.register_buffer("high", action_spec.space.high - margin * span)

    @property
    def in_keys(self) -> list[NestedKey]:
        return [*self.actor_network.in_keys, self.tensor_keys.action]

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        missing = [k for k in self.in_keys if k not in tensordict.keys(True, True)]
        if missing:
            raise KeyError(f"BCLoss needs {missing} in the batch (TorchRL transition layout)")
        with self.actor_network_params.to_module(self.actor_network):
            dist = self.actor_network.get_dist(tensordict.select(*self.actor_network.in_keys))
        action = tensordict.get(self.tensor_keys.action).clamp(self.low, self.high)
        log_prob = dist.log_prob(action)
        return TensorDict(loss_bc=-log_prob.mean(), bc_log_prob=log_prob.detach().mean())

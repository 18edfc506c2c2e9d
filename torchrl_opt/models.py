"""Networks used across torchrl-opt: actors, critics, state values.

Every builder returns a TorchRL ``TensorDictModule`` with the library's standard keys, so the
losses (``OPTLoss``, ``MetaAdaptationLoss``, ``OPTIQLLoss``) and TorchRL's own losses
(``TD3Loss``, ``IQLLoss``) accept them unchanged:

==========================  =========================================  ========================
builder                     in_keys                                    out_keys
==========================  =========================================  ========================
``make_td3_actor``          ``observation``                            ``action``
``make_gaussian_actor``     ``observation``                            ``loc, scale, action``
``make_qvalue``             ``observation, action``                    ``state_action_value``
``make_value``              ``observation``                            ``state_value``
==========================  =========================================  ========================

Twin critics and ensembles are built as *lists of independently initialised modules*
(``make_qvalue_ensemble``), which is what ``LossModule.convert_to_functional`` wants: given a
single module and ``expand_dim=N`` it fills the copies with uniform noise instead of a proper init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded, TensorSpec
from torchrl.modules import Actor, ProbabilisticActor, TanhNormal, ValueOperator

__all__ = [
    "mlp",
    "QValueNet",
    "DeterministicPolicyNet",
    "make_td3_actor",
    "make_gaussian_actor",
    "make_qvalue",
    "make_qvalue_ensemble",
    "make_value",
    "bounded_action_spec",
    "TrainingDropout",
]


class TrainingDropout(nn.Module):
    """Dropout with probability ``p`` where the network is trained, identity where it acts.

    Active exactly when gradients are enabled (the loss's forward passes, eager, under
    ``torch.func.grad`` or compiled); acting, evaluation and value estimates run under
    ``torch.no_grad`` and see the full network. Unlike ``nn.Dropout`` it does not read
    ``module.training``, so one module serves the update graphs and the acting graphs without
    switching modes (a switch would retrace compiled and CUDA-graphed steps).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p > 0.0 and torch.is_grad_enabled():
            return nn.functional.dropout(x, self.p, training=True)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
    activation: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A plain MLP: ``[Linear -> (LayerNorm) -> activation -> (dropout)] * len(hidden) -> Linear``
    (dropout: :class:`TrainingDropout`, added only for ``dropout > 0``)."""
    layers: list[nn.Module] = []
    last = in_features
    for width in hidden:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        if dropout > 0.0:
            layers.append(TrainingDropout(dropout))
        last = width
    layers.append(nn.Linear(last, out_features))
    return nn.Sequential(*layers)


class QValueNet(nn.Module):
    """``Q(s, a) = MLP([s, a])``, output shape ``(*batch, 1)``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim + action_dim, 1, hidden, layer_norm=layer_norm)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([observation, action], dim=-1))


class DeterministicPolicyNet(nn.Module):
    """``pi(s) = low + (tanh(MLP(s)) + 1) / 2 * (high - low)``: a TD3 actor inside the action box."""

    def __init__(
        self,
        obs_dim: int,
        action_low: torch.Tensor,
        action_high: torch.Tensor,
        hidden: Sequence[int] = (256, 256),
        *,
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        action_low = torch.as_tensor(action_low, dtype=torch.float32)
        action_high = torch.as_tensor(action_high, dtype=torch.float32)
        self.net = mlp(obs_dim, action_low.numel(), hidden, layer_norm=layer_norm, dropout=dropout)
        self.register_buffer("action_scale", (action_high - action_low) / 2)
        self.register_buffer("action_bias", (action_high + action_low) / 2)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(observation)) * self.action_scale + self.action_bias


def bounded_action_spec(action_spec: TensorSpec) -> Bounded:
    """Return ``action_spec`` as a :class:`~torchrl.data.Bounded` spec or raise a clear error."""
    if not isinstance(action_spec, Bounded):
        raise TypeError(
            "torchrl-opt actors need a bounded (Box) action space; got "
            f"{type(action_spec).__name__}. Continuous-control tasks only."
        )
    return action_spec


def make_td3_actor(
    obs_dim: int,
    action_spec: Bounded,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
    dropout: float = 0.0,
) -> Actor:
    """Deterministic TD3/TD3+BC/SPOT actor: ``observation -> action`` inside ``action_spec``
    (``dropout``: :class:`TrainingDropout` after each hidden layer)."""
    spec = bounded_action_spec(action_spec)
    net = DeterministicPolicyNet(
        obs_dim, spec.space.low, spec.space.high, hidden, layer_norm=layer_norm, dropout=dropout
    )
    return Actor(net, in_keys=["observation"], out_keys=["action"], spec=spec)


def make_gaussian_actor(
    obs_dim: int,
    action_spec: Bounded,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
    scale_lb: float = 1e-4,
    dropout: float = 0.0,
) -> ProbabilisticActor:
    """Stochastic IQL/SAC actor: ``TanhNormal(loc, scale)`` bounded by ``action_spec``.

    Its deterministic action (``InteractionType.DETERMINISTIC``) is the squashed mean, used
    for evaluation. ``dropout``: :class:`TrainingDropout` after each hidden layer (CORL's IQL on
    Adroit: 0.1), active in the loss, not when acting.
    """
    spec = bounded_action_spec(action_spec)
    action_dim = spec.shape[-1]
    net = nn.Sequential(
        mlp(obs_dim, 2 * action_dim, hidden, layer_norm=layer_norm, dropout=dropout),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=scale_lb),
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=["action"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )


def make_qvalue(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
) -> ValueOperator:
    """One critic ``(observation, action) -> state_action_value``."""
    return ValueOperator(
        QValueNet(obs_dim, action_dim, hidden, layer_norm=layer_norm),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )


def make_qvalue_ensemble(
    obs_dim: int,
    action_dim: int,
    num: int = 2,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
) -> list[ValueOperator]:
    """``num`` independently initialised critics (a twin for TD3, 10 for RLPD/WSRL/PORL)."""
    return [make_qvalue(obs_dim, action_dim, hidden, layer_norm=layer_norm) for _ in range(num)]


def make_value(
    obs_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    layer_norm: bool = False,
) -> ValueOperator:
    """A state-value network ``observation -> state_value`` (IQL's V)."""
    return ValueOperator(
        mlp(obs_dim, 1, hidden, layer_norm=layer_norm),
        in_keys=["observation"],
        out_keys=["state_value"],
    )

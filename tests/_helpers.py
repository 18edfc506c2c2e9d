"""Small builders shared by the loss tests: tiny specs, networks and transition batches."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import Bounded

OBS_DIM = 4
ACT_DIM = 2


def action_spec(low: float = -1.0, high: float = 1.0, dim: int = ACT_DIM) -> Bounded:
    return Bounded(low * torch.ones(dim), high * torch.ones(dim), (dim,))


def transition_batch(
    batch: int = 8,
    obs_dim: int = OBS_DIM,
    act_dim: int = ACT_DIM,
    *,
    terminal_fraction: float = 0.3,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> TensorDict:
    """A random batch in TorchRL's transition layout with some terminal transitions."""
    g = generator
    terminated = torch.rand(batch, 1, generator=g) < terminal_fraction
    return TensorDict(
        {
            "observation": torch.randn(batch, obs_dim, generator=g, dtype=dtype),
            "action": (torch.rand(batch, act_dim, generator=g, dtype=dtype) * 2 - 1),
            ("next", "observation"): torch.randn(batch, obs_dim, generator=g, dtype=dtype),
            ("next", "reward"): torch.randn(batch, 1, generator=g, dtype=dtype),
            ("next", "terminated"): terminated,
            ("next", "done"): terminated.clone(),
        },
        [batch],
    )


def grads_of(params) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def zero_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None

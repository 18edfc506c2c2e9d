"""Small builders shared by the tests: tiny specs, networks and transition batches, and the
recipes' scripts imported as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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


def load_script(name: str, path: Path) -> ModuleType:
    """Import the script ``path`` as the module ``name``, once per test session: its folder on
    ``sys.path`` while it imports, as ``python path`` has it, and registered in ``sys.modules``
    (dataclasses look their module up while being defined). ``recipes/opt.py`` registers its
    config schema and resolvers as it imports."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module

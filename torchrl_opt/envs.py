"""Environment construction and deterministic evaluation rollouts.

Environments run on the CPU (MuJoCo is a CPU simulator); policies may live on another device.
Every env is a TorchRL ``GymEnv`` with float32 observations (``DoubleToFloat``), so its
transitions match the offline datasets' layout: ``observation``, ``action``,
``next/{observation, reward, done, terminated, truncated}``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import Compose, DoubleToFloat, EnvBase, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["make_env", "evaluate_policy", "EnvFactory"]

EnvFactory = Callable[[], EnvBase]


def make_env(
    env_id: str,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    **gym_kwargs,
) -> TransformedEnv:
    """Build a Gymnasium env (``env_id``, e.g. ``"Walker2d-v5"``) as a float32 TorchRL env.

    Raises:
        ValueError: when Gymnasium does not know ``env_id`` (the message names it and the likely
            missing extra, e.g. ``gymnasium-robotics`` for AntMaze/Adroit).
    """
    import gymnasium as gym

    if env_id not in gym.registry:
        _register_robotics_envs()
    if env_id not in gym.registry:
        raise ValueError(
            f"Unknown Gymnasium environment id {env_id!r}. MuJoCo tasks look like "
            "'Walker2d-v5'; AntMaze/Adroit ids need `pip install torchrl-opt[robotics]`."
        )
    env = TransformedEnv(GymEnv(env_id, device=device, **gym_kwargs), Compose(DoubleToFloat()))
    if seed is not None:
        env.set_seed(seed)
    return env


def _register_robotics_envs() -> None:
    """Importing gymnasium-robotics registers AntMaze/Adroit ids; absence is not an error here."""
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError:
        pass


@torch.no_grad()
def evaluate_policy(
    policy: TensorDictModuleBase,
    env: EnvBase,
    num_episodes: int,
    *,
    max_steps: int = 1000,
    direct: bool | None = None,
) -> torch.Tensor:
    """Undiscounted returns of ``num_episodes`` deterministic episodes.

    The policy acts with ``ExplorationType.DETERMINISTIC`` (TD3's plain action, the squashed mean
    of a Gaussian actor). Returns a float64 CPU tensor of shape ``(num_episodes,)``. ``direct``
    (see :func:`torchrl_opt.direct_env.use_direct`): step the Gymnasium env directly
    (:func:`~torchrl_opt.direct_env.direct_rollout_returns`, the same returns as ``env.rollout``,
    several times faster); ``None`` does so whenever ``env`` is supported.
    """
    from torchrl_opt.direct_env import direct_rollout_returns, use_direct

    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    was_training = policy.training
    policy.eval()
    try:
        if use_direct(env, direct):
            return direct_rollout_returns(policy, env, num_episodes, max_steps=max_steps)
        returns = torch.zeros(num_episodes, dtype=torch.float64)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for episode in range(num_episodes):
                rollout = env.rollout(
                    max_steps, policy, auto_cast_to_device=True, break_when_any_done=True
                )
                returns[episode] = rollout["next", "reward"].sum().double().cpu()
    finally:
        policy.train(was_training)
    return returns

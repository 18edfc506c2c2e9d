"""Environment stepping without TorchRL's per-step machinery, with TorchRL's exact transitions.

A TorchRL ``EnvBase.step`` of a ``TransformedEnv(GymWrapper(gym_env), ...)`` costs about 1 ms of
Python on top of the MuJoCo step (spec encoding, TensorDict construction, transforms, done
bookkeeping), and a ``Collector`` iteration about as much again. Measured on the 2-core development
machine, Walker2d-v5, one thread: ``Collector(frames_per_batch=1)`` 2.2 ms per step, a bare
``env.step`` + ``step_mdp`` loop 1.4 ms, the Gymnasium env alone 0.25 ms. At 300k online steps (and
as many evaluation steps) that overhead alone is several minutes per seed, more than the GPU updates.

:class:`DirectEnv` steps the Gymnasium env inside such a TorchRL env directly and applies the env's
own transform objects to the raw tensors, so its observations, rewards and flags equal TorchRL's
bit for bit (tested against ``env.step``, ``env.rollout`` and ``Collector``). It supports the envs the
pipeline builds (:func:`~torchrl_opt.envs.make_env`,
:func:`~torchrl_opt.env_state.make_resumable_env`): a single (non-batched) ``GymWrapper``/``GymEnv``
over a Gymnasium env with ``Box`` observation and action spaces, no frame skip, and the transforms
``DoubleToFloat``, ``RewardScaling`` and ``ObservationNorm`` (on ``"observation"``); :func:`supports`
tells whether an env qualifies and :class:`DirectEnvError` names what does not.

:class:`DirectCollector` is ``torchrl.collectors.Collector(env, policy, frames_per_batch=T,
total_frames=-1, ...)`` on a :class:`DirectEnv`: it resets the env at construction (so a pending
:func:`~torchrl_opt.env_state.env_restore_on_next_reset` snapshot is restored then, as with the
Collector), runs the policy on a ``[]``-batch TensorDict under the given exploration type (the same
random draws as the Collector's policy calls), resets after a done step, and yields ``[T]`` batches
in TorchRL's transition layout (``observation``, ``action``, ``next/{observation, reward, done,
terminated, truncated}``, plus root ``done``/``terminated``/``truncated``). :func:`direct_rollout_returns`
is ``evaluate_policy``'s loop on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    EnvBase,
    ObservationNorm,
    RewardScaling,
    TransformedEnv,
)
from torchrl.envs.libs.gym import GymWrapper
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = [
    "DirectCollector",
    "DirectEnv",
    "DirectEnvError",
    "HostAction",
    "StepCollector",
    "direct_rollout_returns",
    "supports",
    "transition_batch",
    "use_direct",
]

_OBSERVATION = "observation"


class DirectEnvError(ValueError):
    """The TorchRL env is not one :class:`DirectEnv` can step exactly (the message says why)."""


def _transforms(env: EnvBase) -> list:
    if not isinstance(env, TransformedEnv):
        return []
    transform = env.transform
    items = list(transform) if isinstance(transform, Compose) else [transform]
    flat = []
    for item in items:
        flat.extend(list(item) if isinstance(item, Compose) else [item])
    return flat


def _base_env(env: EnvBase) -> EnvBase:
    base = env
    while isinstance(base, TransformedEnv):
        base = base.base_env
    return base


def _check(env: EnvBase) -> None:
    """Raise :class:`DirectEnvError` unless ``env`` is supported (see the module docstring)."""
    base = _base_env(env)
    if not isinstance(base, GymWrapper):
        raise DirectEnvError(f"{type(base).__name__} is not a TorchRL GymWrapper/GymEnv")
    if base.batch_size != torch.Size([]) or getattr(base, "_is_batched", False):
        raise DirectEnvError("batched (vectorised) envs are not supported")
    if getattr(base, "wrapper_frame_skip", 1) != 1:
        raise DirectEnvError(f"frame_skip={base.wrapper_frame_skip} is not supported")
    if base.info_dict_reader:
        raise DirectEnvError("info_dict_reader entries are not supported")
    gym_env = base._env
    if not isinstance(gym_env.observation_space, gym.spaces.Box):
        raise DirectEnvError(
            f"observation space {type(gym_env.observation_space).__name__} is not a Box"
        )
    if not isinstance(gym_env.action_space, gym.spaces.Box):
        raise DirectEnvError(f"action space {type(gym_env.action_space).__name__} is not a Box")
    for transform in _transforms(env):
        if isinstance(transform, DoubleToFloat):
            continue
        if isinstance(transform, RewardScaling):
            continue
        if isinstance(transform, ObservationNorm) and list(transform.in_keys) == [_OBSERVATION]:
            continue
        raise DirectEnvError(
            f"transform {type(transform).__name__} (in_keys {list(transform.in_keys)}) is not "
            "supported: only DoubleToFloat, RewardScaling and ObservationNorm on 'observation'"
        )


def supports(env: EnvBase) -> bool:
    """Whether :class:`DirectEnv` can step ``env`` exactly."""
    try:
        _check(env)
    except DirectEnvError:
        return False
    return True


def use_direct(env: EnvBase, direct: bool | None) -> bool:
    """Resolve a ``direct`` setting for ``env``: ``None`` -> :func:`supports`; ``True`` -> ``True``
    (raising :class:`DirectEnvError` with the reason when ``env`` is not supported)."""
    if direct is None:
        return supports(env)
    if direct:
        _check(env)
    return bool(direct)


class DirectEnv:
    """The Gymnasium env inside a TorchRL env, stepped directly (see the module docstring).

    Args:
        env: a supported TorchRL env (else :class:`DirectEnvError`). It is used, not copied: its
            Gymnasium env (with its RNG, time limit and any pending resume snapshot) moves on.

    :meth:`reset` returns the transformed observation; :meth:`step` the transformed
    ``(next_observation, reward, terminated, truncated)`` as TorchRL's ``env.step`` computes them
    (CPU tensors, shapes ``[obs_dim]``, ``[1]``, ``[1]``, ``[1]``).
    """

    def __init__(self, env: EnvBase) -> None:
        _check(env)
        self.env = env
        base = _base_env(env)
        self.gym_env = base._env
        self._reward_dtype = base.full_reward_spec[base.reward_key].dtype
        self._obs_dtype = base.full_observation_spec[_OBSERVATION].dtype
        transforms = _transforms(env)
        self._obs_transforms = [
            t for t in transforms if isinstance(t, (DoubleToFloat, ObservationNorm))
            and _applies_to(t, _OBSERVATION)
        ]
        self._reward_transforms = [
            t for t in transforms if isinstance(t, (DoubleToFloat, RewardScaling))
            and _applies_to(t, "reward")
        ]

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        out = torch.as_tensor(np.asarray(obs), dtype=self._obs_dtype)
        for transform in self._obs_transforms:
            out = transform._apply_transform(out)
        return out

    def _reward(self, reward: float) -> torch.Tensor:
        out = torch.tensor([reward], dtype=self._reward_dtype)
        for transform in self._reward_transforms:
            out = transform._apply_transform(out)
        return out

    def reset(self) -> torch.Tensor:
        obs, _ = self.gym_env.reset()
        return self._obs(obs)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        obs, reward, terminated, truncated, _ = self.gym_env.step(
            action.detach().cpu().numpy()
        )
        return (
            self._obs(obs),
            self._reward(reward),
            torch.tensor([bool(terminated)]),
            torch.tensor([bool(truncated)]),
        )


def _applies_to(transform, key: str) -> bool:
    """Whether a DoubleToFloat / RewardScaling / ObservationNorm transforms entry ``key``."""
    if isinstance(transform, DoubleToFloat) and not transform.in_keys:
        return True  # the default DoubleToFloat casts every float64 entry
    return key in [k if isinstance(k, str) else k[-1] for k in transform.in_keys]


def transition_batch(
    observation: torch.Tensor,
    action: torch.Tensor,
    next_observation: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
) -> TensorDictBase:
    """Transitions in TorchRL's collector layout, batch size ``terminated.shape[:-1]``.

    ``observation``, ``action``, root ``done``/``terminated``/``truncated`` (all ``False``: the
    root flags describe ``observation``, a reset or a non-final one) and ``next/{observation,
    reward, done, terminated, truncated}`` with ``done = terminated | truncated``.
    """
    size = terminated.shape[:-1]
    false = torch.zeros_like(terminated)
    # explicit TensorDicts (a nested dict would go through TensorDict.from_any at every call)
    next_td = TensorDict(
        {
            _OBSERVATION: next_observation,
            "reward": reward,
            "done": terminated | truncated,
            "terminated": terminated,
            "truncated": truncated,
        },
        batch_size=size,
    )
    return TensorDict(
        {
            _OBSERVATION: observation,
            "action": action,
            "done": false,
            "terminated": false.clone(),
            "truncated": false.clone(),
            "next": next_td,
        },
        batch_size=size,
    )


class HostAction:
    """An action on its way to the host: ``get()`` returns it as a CPU tensor.

    On CUDA the copy goes to pinned memory without blocking and an event marks its end, so the host
    only waits in :meth:`get` (for the policy's kernels, not for work queued after them).
    """

    def __init__(self, action: torch.Tensor) -> None:
        action = action.detach()
        self._event = None
        if action.device.type == "cuda":
            self._host = torch.empty(action.shape, dtype=action.dtype, pin_memory=True)
            self._host.copy_(action, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = action.cpu()

    def get(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host


class StepCollector:
    """What the direct collectors share: acting now or one step ahead, ``[T]`` batches over time.

    A subclass sets ``self._obs`` (the current observation(s), ``[obs_dim]`` or ``[S, obs_dim]``)
    in its constructor, calls :meth:`_start`, and implements ``_env_step(action)``, which steps
    its env(s), resets those that are done, and returns ``(next_obs, reward, terminated,
    truncated)`` and the observation(s) to act on next. Batches stack the steps along
    ``time_dim``.
    """

    time_dim = 0

    def _start(
        self,
        policy,
        *,
        frames_per_batch: int,
        device: torch.device | str,
        exploration_type: ExplorationType,
        prefetch: bool,
    ) -> None:
        if frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be >= 1, got {frames_per_batch}")
        self.policy = policy
        self.frames_per_batch = int(frames_per_batch)
        self.device = torch.device(device)
        self.exploration_type = exploration_type
        self.prefetch = bool(prefetch)
        self._pending: HostAction | None = None
        if self.prefetch:
            with torch.no_grad(), set_exploration_type(self.exploration_type):
                self._pending = self._act(self._obs)

    def _act(self, obs: torch.Tensor) -> HostAction:
        td = TensorDict({_OBSERVATION: obs.to(self.device)}, batch_size=obs.shape[:-1])
        return HostAction(self.policy(td).get("action"))

    def _step(self) -> tuple[torch.Tensor, ...]:
        """One transition ``(obs, action, next_obs, reward, terminated, truncated)`` (CPU)."""
        obs = self._obs
        action = (self._pending if self.prefetch else self._act(obs)).get()
        (next_obs, reward, terminated, truncated), self._obs = self._env_step(action)
        if self.prefetch:
            self._pending = self._act(self._obs)
        return obs, action, next_obs, reward, terminated, truncated

    def pending_action(self) -> torch.Tensor | None:
        """The prefetched action(s) of the next step (CPU), ``None`` without prefetching."""
        return None if self._pending is None else self._pending.get().clone()

    def set_pending_action(self, action: torch.Tensor) -> None:
        """Make ``action`` the next step's (restoring a checkpoint of a prefetching collector)."""
        if not self.prefetch:
            raise ValueError("set_pending_action needs a prefetching collector")
        self._pending = HostAction(action.cpu())

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            with torch.no_grad(), set_exploration_type(self.exploration_type):
                steps = [self._step() for _ in range(self.frames_per_batch)]
            batch = transition_batch(
                *(torch.stack(column, self.time_dim) for column in zip(*steps))
            )
            yield batch if self.device.type == "cpu" else batch.to(self.device)

    def shutdown(self) -> None:
        return None


class DirectCollector(StepCollector):
    """``Collector(env, policy, frames_per_batch, total_frames=-1)`` on a :class:`DirectEnv`.

    Args:
        env: a supported TorchRL env.
        policy: reads ``"observation"``, writes ``"action"`` (a ``[]``-batch call per step).
        frames_per_batch: transitions per yielded batch ``[T]``.
        device: where batches (and the policy's input) live.
        exploration_type: the policy's exploration type (``RANDOM`` for fine-tuning).
        prefetch: compute the next action right after each env step, before the caller's
            updates run, and copy it to the host without waiting (:class:`HostAction`): with
            asynchronous (CUDA, sync-free) updates, the next env step then overlaps them. The
            action of step ``t + 1`` comes from the policy as it was before the updates that follow
            step ``t`` (a one-step policy lag). Off by default (TorchRL's semantics).

    The env is reset at construction. Iterating never ends by itself (``total_frames=-1``); the
    caller stops. :meth:`pending_action` / :meth:`set_pending_action` save and restore a
    prefetched action across a checkpoint. :meth:`shutdown` exists for symmetry with TorchRL
    collectors.
    """

    def __init__(
        self,
        env: EnvBase,
        policy: TensorDictModuleBase,
        *,
        frames_per_batch: int = 1,
        device: torch.device | str = "cpu",
        exploration_type: ExplorationType = ExplorationType.RANDOM,
        prefetch: bool = False,
    ) -> None:
        self.direct = DirectEnv(env)
        self._obs = self.direct.reset()
        self._start(
            policy, frames_per_batch=frames_per_batch, device=device,
            exploration_type=exploration_type, prefetch=prefetch,
        )

    def _env_step(self, action: torch.Tensor):
        result = self.direct.step(action)
        next_obs, _, terminated, truncated = result
        return result, self.direct.reset() if bool(terminated | truncated) else next_obs


@torch.no_grad()
def direct_rollout_returns(
    policy: TensorDictModuleBase,
    env: EnvBase,
    num_episodes: int,
    *,
    max_steps: int,
    device: torch.device | str | None = None,
    exploration_type: ExplorationType = ExplorationType.DETERMINISTIC,
) -> torch.Tensor:
    """Undiscounted returns of ``num_episodes`` episodes (``env.rollout(max_steps, policy,
    break_when_any_done=True)`` each), stepped with :class:`DirectEnv`; float64 ``[num_episodes]``."""
    direct = DirectEnv(env)
    if device is None:
        device = next((p.device for p in policy.parameters()), torch.device("cpu"))
    returns = torch.zeros(num_episodes, dtype=torch.float64)
    with set_exploration_type(exploration_type):
        for episode in range(num_episodes):
            obs = direct.reset()
            rewards = []
            for _ in range(max_steps):
                action = policy(TensorDict({_OBSERVATION: obs.to(device)}, batch_size=[]))
                obs, reward, terminated, truncated = direct.step(action.get("action"))
                rewards.append(reward)
                if bool(terminated | truncated):
                    break
            returns[episode] = torch.cat(rewards).sum().double()
    return returns

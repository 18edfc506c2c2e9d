"""Acting for the ``S >= 1`` seeds of a run: environments, policies, collectors, evaluation.

One seed acts with its own modules on ``[]``-batched observations (no vmap): a
:class:`~torchrl_opt.direct_env.DirectCollector` (TorchRL's transitions, stepping the Gymnasium env
directly) or TorchRL's ``Collector``. A seed group acts in lockstep: every seed's env steps together
and one :class:`SeedBatchedPolicy` call (the template seed's actor vmapped over the seeds' stacked
parameters) acts for all of them (:class:`SeedLockstepCollector`, ``[S, T]`` batches, time last),
or one TorchRL collector per seed where direct stepping does not apply. The functions here choose;
the loops in :mod:`~torchrl_opt.pipeline.phases` take whatever they return.

Every env comes from :class:`EnvFactory`: training envs carry the dataset's reward shift (the same
shift as the offline rewards, for every method), evaluation envs report the raw reward; both
normalise observations when the offline data are normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModuleBase, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import Bounded
from torchrl.envs import EnvBase, ObservationNorm, RewardScaling
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_opt.direct_env import DirectCollector, DirectEnv, StepCollector, use_direct
from torchrl_opt.env_state import make_resumable_env

__all__ = [
    "POLICY_KINDS",
    "EnvFactory",
    "EpsilonGreedyPolicy",
    "Episode",
    "LockstepEnvs",
    "Policies",
    "SeedBatchedPolicy",
    "SeedCollectors",
    "SeedLockstepCollector",
    "make_collector",
    "rollout_episodes",
]

_OBSERVATION = "observation"
#: how a phase acts: the frozen policy's mode or a sample of it, the fine-tuning exploration
#: policy (TD3's Gaussian noise, SAC's sample), uniform random actions, epsilon-greedy (PORL).
POLICY_KINDS = ("deterministic", "stochastic", "explore", "uniform", "epsilon")


class EnvFactory:
    """The task's TorchRL envs (resumable MuJoCo envs, float32).

    ``make(seed, train=True)`` builds ``env_id`` for training and ``eval_env_spec`` (a Gymnasium
    ``EnvSpec``: the dataset's evaluation settings, e.g. AntMaze's fixed reset and goal cells, as
    Minari datasets store them) for evaluation when given, dict observations flattened in
    ``obs_keys`` order as the offline data are; appends ``RewardScaling(loc=reward_shift)`` (the
    shift the offline rewards got) to training envs only, and ``ObservationNorm`` with the offline
    statistics to every env when ``obs_loc`` is given.
    """

    def __init__(
        self,
        env_id: str,
        *,
        eval_env_spec: Any = None,
        obs_keys: Sequence[str] | None = None,
        reward_shift: float = 0.0,
        obs_loc: torch.Tensor | None = None,
        obs_scale: torch.Tensor | None = None,
    ) -> None:
        self.env_id = env_id
        self.eval_env_spec = eval_env_spec
        self.obs_keys = tuple(obs_keys) if obs_keys is not None else None
        self.reward_shift = float(reward_shift)
        self.obs_loc, self.obs_scale = obs_loc, obs_scale

    def make(self, seed: int, *, train: bool = True) -> EnvBase:
        which = self.env_id if train or self.eval_env_spec is None else self.eval_env_spec
        env = make_resumable_env(which, seed=seed, obs_keys=self.obs_keys)
        if train and self.reward_shift != 0.0:
            env.append_transform(RewardScaling(loc=self.reward_shift, scale=1.0))
        if self.obs_loc is not None:
            env.append_transform(
                ObservationNorm(
                    loc=self.obs_loc.cpu(), scale=self.obs_scale.cpu(), in_keys=[_OBSERVATION],
                    standard_normal=True,
                )
            )
        return env


# ------------------------------------------------------------------------------------- policies
class EpsilonGreedyPolicy(TensorDictModuleBase):
    """``a = U(low, high)`` with probability ``epsilon``, else the wrapped policy's action (PORL).

    The wrapped policy runs without gradient: it is frozen by construction. ``epsilon = 1`` is a
    uniform random policy (RLPD's start steps); works on any batch shape.
    """

    def __init__(self, policy: Callable | None, action_spec: Bounded, epsilon: float) -> None:
        super().__init__()
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if policy is None and epsilon != 1.0:
            raise ValueError("without a policy, epsilon must be 1 (uniform random actions)")
        self.policy = policy
        self.epsilon = float(epsilon)
        self.register_buffer("low", action_spec.space.low.clone())
        self.register_buffer("high", action_spec.space.high.clone())
        self.in_keys = [_OBSERVATION]
        self.out_keys = ["action"]

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(_OBSERVATION)
        shape = (*obs.shape[:-1], self.low.shape[-1])
        uniform = self.low + (self.high - self.low) * torch.rand(shape, device=obs.device)
        if self.policy is None:
            tensordict.set("action", uniform)
            return tensordict
        tensordict = self.policy(tensordict)
        explore = torch.rand(shape[:-1] + (1,), device=obs.device) < self.epsilon
        tensordict.set("action", torch.where(explore, uniform, tensordict.get("action")))
        return tensordict


class SeedBatchedPolicy:
    """The seeds' actors as one call: ``policy(td)`` with ``td`` of batch size ``[S]``.

    Args:
        actor: the template seed's actor (its parameters are swapped for each seed's during the
            call and restored after).
        params: returns the seeds' stacked actor parameters (``[S]``, keyed like
            ``TensorDict.from_module(actor)``), read at every call: the stack changes between phases.
        noise: a module applied to the ``[S]`` batch after the actors (TD3's exploration noise).

    A stochastic actor's distribution parameters are computed under the vmap and its sample drawn
    outside it (vmap cannot draw in-place randomness).
    """

    def __init__(
        self,
        actor: TensorDictModuleBase,
        params: Callable[[], TensorDictBase],
        *,
        noise: TensorDictModuleBase | None = None,
    ) -> None:
        self.actor = actor
        self.params = params
        self.noise = noise
        self.in_keys, self.out_keys = list(actor.in_keys), ["action"]
        if isinstance(actor, ProbabilisticTensorDictSequential):
            self.body, self.head = actor[0], actor[-1]
        else:
            self.body, self.head = actor, None

    def _one(self, params: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        with params.to_module(self.actor, preserve_module_state=False):
            return self.body(td)

    @torch.no_grad()
    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        out = torch.vmap(self._one, (0, 0))(self.params(), td)
        if self.head is not None:
            out = self.head(out)
        if self.noise is not None:
            out = self.noise(out)
        return out


class Policies:
    """The acting policies of a run's seeds, by kind (:data:`POLICY_KINDS`).

    Args:
        agents: the seeds' agents (the first is the template of a group's batched call).
        stacked_actor: for ``S > 1``, returns the seeds' live stacked actor parameters.
        epsilon: PORL's epsilon.

    :meth:`get` gives one callable for all seeds (a module for one seed; a
    :class:`SeedBatchedPolicy` for a group) and its exploration type; :meth:`per_seed` gives each
    seed's own modules (for per-seed TorchRL collectors).
    """

    def __init__(
        self,
        agents: Sequence,
        stacked_actor: Callable[[], TensorDictBase] | None = None,
        *,
        epsilon: float = 0.0,
    ) -> None:
        self.agents = list(agents)
        self.stacked_actor = stacked_actor
        self.epsilon = epsilon

    @staticmethod
    def exploration_type(kind: str) -> ExplorationType:
        if kind not in POLICY_KINDS:
            raise ValueError(f"unknown policy kind {kind!r}; known: {POLICY_KINDS}")
        return ExplorationType.DETERMINISTIC if kind == "deterministic" else ExplorationType.RANDOM

    def _of(self, agent, actor: Callable, kind: str) -> Callable:
        if kind == "uniform":
            return EpsilonGreedyPolicy(None, agent.action_spec, 1.0)
        if kind == "epsilon":
            return EpsilonGreedyPolicy(actor, agent.action_spec, self.epsilon)
        if kind == "explore":
            noise = agent.exploration_noise()
            if noise is not None and isinstance(actor, TensorDictModuleBase):
                return TensorDictSequential(actor, noise)
            if noise is not None:
                return _Chain(actor, noise)
        return actor

    def per_seed(self, kind: str) -> list[Callable]:
        self.exploration_type(kind)
        return [self._of(agent, agent.actor, kind) for agent in self.agents]

    def get(self, kind: str) -> tuple[Callable, ExplorationType]:
        exploration = self.exploration_type(kind)
        if len(self.agents) == 1:
            return self.per_seed(kind)[0], exploration
        template = self.agents[0]
        batched = SeedBatchedPolicy(template.actor, self.stacked_actor)
        return self._of(template, batched, kind), exploration


class _Chain:
    """``noise(actor(td))``: an actor followed by an exploration-noise module."""

    def __init__(self, actor: Callable, noise: TensorDictModuleBase) -> None:
        self.actor, self.noise = actor, noise
        self.in_keys, self.out_keys = list(getattr(actor, "in_keys", [_OBSERVATION])), ["action"]

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        return self.noise(self.actor(td))


# ------------------------------------------------------------------------------------- envs
class LockstepEnvs:
    """One :class:`~torchrl_opt.direct_env.DirectEnv` per seed, stepped together (in a pool of
    ``threads`` threads when ``threads > 0``: MuJoCo releases the GIL while it simulates)."""

    def __init__(self, envs: Sequence[EnvBase], *, threads: int = 0) -> None:
        if not envs:
            raise ValueError("LockstepEnvs needs at least one env")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.envs = list(envs)
        self.direct = [DirectEnv(env) for env in self.envs]
        self._pool = ThreadPoolExecutor(threads) if threads > 0 else None

    def __len__(self) -> int:
        return len(self.direct)

    def _map(self, fn: Callable[[int], object], indices: Sequence[int]) -> list:
        if self._pool is None:
            return [fn(i) for i in indices]
        return list(self._pool.map(fn, indices))

    def reset(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Reset the envs ``indices``; their observations."""
        return self._map(lambda i: self.direct[i].reset(), indices)

    def step(self, actions: torch.Tensor, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """Step env ``i`` with ``actions[i]`` for ``i`` in ``indices``; each
        ``(next_obs, reward, terminated, truncated)`` (see :meth:`DirectEnv.step`)."""
        actions = actions.detach().cpu()
        return self._map(lambda i: self.direct[i].step(actions[i]), indices)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class SeedLockstepCollector(StepCollector):
    """Every seed's env and policy stepped together; yields ``[S, T]`` batches (time last).

    The envs are reset at construction (pending resume snapshots are restored then). Each step
    stacks the seeds' current observations, makes one batched policy call under
    ``exploration_type``, steps every env and resets those that are done; ``prefetch`` and the
    pending-action checkpoint are those of :class:`~torchrl_opt.direct_env.DirectCollector`.
    """

    time_dim = 1

    def __init__(
        self,
        envs: LockstepEnvs,
        policy: Callable[[TensorDictBase], TensorDictBase],
        *,
        frames_per_batch: int = 1,
        device: torch.device | str = "cpu",
        exploration_type: ExplorationType = ExplorationType.RANDOM,
        prefetch: bool = False,
    ) -> None:
        self.envs = envs
        self._all = list(range(len(envs)))
        self._obs = torch.stack(envs.reset(self._all))
        self._start(
            policy, frames_per_batch=frames_per_batch, device=device,
            exploration_type=exploration_type, prefetch=prefetch,
        )

    def _env_step(self, action: torch.Tensor):
        results = self.envs.step(action, self._all)
        next_obs, reward, terminated, truncated = (torch.stack(c) for c in zip(*results))
        done = (terminated | truncated).squeeze(-1)
        current = next_obs.clone()
        finished = [i for i in self._all if bool(done[i])]
        for i, reset_obs in zip(finished, self.envs.reset(finished)):
            current[i] = reset_obs
        return (next_obs, reward, terminated, truncated), current

    def shutdown(self) -> None:
        self.envs.close()


class SeedCollectors:
    """One TorchRL ``Collector`` per seed, stepped in lockstep: yields their batches stacked
    ``[S, T]`` (seed ``i``'s transitions exactly those of its own collector)."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        if not collectors:
            raise ValueError("SeedCollectors needs at least one collector")
        self.collectors = list(collectors)
        self.prefetch = False

    def __iter__(self) -> Iterator[TensorDictBase]:
        iterators = [iter(collector) for collector in self.collectors]
        while True:
            try:
                batches = [next(iterator) for iterator in iterators]
            except StopIteration:
                return
            yield torch.stack(batches)

    def shutdown(self) -> None:
        for collector in self.collectors:
            collector.shutdown()


def torchrl_collector(
    env: EnvBase, policy: Callable, *, frames_per_batch: int, device: torch.device,
    exploration_type: ExplorationType,
) -> Collector:
    """TorchRL's ``Collector`` (``total_frames=-1``), built without side effects on torch's RNG.

    The ``Collector`` runs the policy once at construction to find its output keys, which draws
    exploration noise from torch's global RNG; it is built on a forked RNG here, so a run's random
    stream does not depend on which collector steps its env.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return Collector(
            env, policy, frames_per_batch=frames_per_batch, total_frames=-1,
            policy_device=device, storing_device=device, exploration_type=exploration_type,
            # the policies read no recurrent state: keep the env as built
            auto_register_policy_transforms=False,
        )


def make_collector(
    envs: Sequence[EnvBase],
    policies: Policies,
    kind: str,
    *,
    frames_per_batch: int,
    device: torch.device,
    direct: bool | None = None,
    prefetch: bool = False,
    threads: int = 0,
):
    """The collector of ``len(envs)`` seeds acting with policy ``kind``: ``[T]`` batches for one seed
    (:class:`~torchrl_opt.direct_env.DirectCollector`, or TorchRL's ``Collector`` where direct
    stepping does not apply), ``[S, T]`` for a group (:class:`SeedLockstepCollector`, or
    :class:`SeedCollectors`). The envs are reset now (pending resume snapshots are restored then).

    Raises:
        ValueError: ``prefetch`` where direct stepping does not apply.
    """
    policy, exploration = policies.get(kind)
    is_direct = all(use_direct(env, direct) for env in envs)
    if prefetch and not is_direct:
        raise ValueError(
            "finetune.prefetch_action needs direct env stepping, which this env does not support "
            f"(acceleration.direct_env={direct!r}); turn prefetching off"
        )
    kw = {"frames_per_batch": frames_per_batch, "device": device, "exploration_type": exploration}
    if len(envs) == 1:
        if is_direct:
            return DirectCollector(envs[0], policy, prefetch=prefetch, **kw)
        return torchrl_collector(envs[0], policy, **kw)
    if is_direct:
        return SeedLockstepCollector(LockstepEnvs(envs, threads=threads), policy, prefetch=prefetch, **kw)
    return SeedCollectors(
        [torchrl_collector(env, p, **kw) for env, p in zip(envs, policies.per_seed(kind))]
    )


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class Episode:
    """One evaluation episode: the observations acted on ``[T, obs_dim]`` and the rewards
    ``[T]`` received (CPU), and whether it ended in a terminal state (not a time limit)."""

    observations: torch.Tensor
    rewards: torch.Tensor
    terminated: bool

    @property
    def ret(self) -> float:
        """The undiscounted return (summed in the rewards' dtype, as ``env.rollout`` returns are)."""
        return float(self.rewards.sum().double())


@torch.no_grad()
def rollout_episodes(
    envs: Sequence[EnvBase],
    policies: Policies,
    num_episodes: int,
    *,
    max_steps: int,
    device: torch.device | str = "cpu",
    direct: bool | None = None,
    threads: int = 0,
) -> list[list[Episode]]:
    """``num_episodes`` deterministic episodes of each seed on its own env (``envs[i]``), one after
    the other (each at most ``max_steps`` steps, as ``env.rollout(max_steps, policy,
    break_when_any_done=True)``), all seeds stepping together. One seed acts on ``[]``-batched
    observations with its own actor, a group with one batched call; envs that direct stepping does
    not support run TorchRL's ``env.rollout`` seed by seed."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if not all(use_direct(env, direct) for env in envs):
        return [
            _torchrl_episodes(env, policy, num_episodes, max_steps)
            for env, policy in zip(envs, policies.per_seed("deterministic"))
        ]
    policy, _ = policies.get("deterministic")
    single = len(envs) == 1

    def act(obs: torch.Tensor) -> torch.Tensor:
        if single:
            td = TensorDict({_OBSERVATION: obs[0].to(device)}, batch_size=[])
            return policy(td).get("action").unsqueeze(0)
        td = TensorDict({_OBSERVATION: obs.to(device)}, batch_size=[len(envs)])
        return policy(td).get("action")

    lockstep = LockstepEnvs(envs, threads=threads)
    num_seeds = len(envs)
    episodes: list[list[Episode]] = [[] for _ in range(num_seeds)]
    seen: list[list[torch.Tensor]] = [[] for _ in range(num_seeds)]
    rewards: list[list[torch.Tensor]] = [[] for _ in range(num_seeds)]
    active = list(range(num_seeds))
    obs = torch.stack(lockstep.reset(active))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while active:
            action = act(obs)
            ended = []
            for i, (next_obs, reward, terminated, truncated) in zip(active, lockstep.step(action, active)):
                seen[i].append(obs[i].clone())
                rewards[i].append(reward)
                obs[i] = next_obs
                if bool(terminated | truncated) or len(rewards[i]) == max_steps:
                    episodes[i].append(
                        Episode(torch.stack(seen[i]), torch.cat(rewards[i]), bool(terminated))
                    )
                    seen[i], rewards[i] = [], []
                    ended.append(i)
            again = [i for i in ended if len(episodes[i]) < num_episodes]
            for i, reset_obs in zip(again, lockstep.reset(again)):
                obs[i] = reset_obs
            active = [i for i in active if len(episodes[i]) < num_episodes]
    lockstep.close()
    return episodes


def _torchrl_episodes(env: EnvBase, policy: Callable, num_episodes: int, max_steps: int) -> list[Episode]:
    out = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(num_episodes):
            rollout = env.rollout(max_steps, policy, auto_cast_to_device=True, break_when_any_done=True)
            out.append(
                Episode(
                    rollout[_OBSERVATION].reshape(rollout.shape[-1], -1).cpu(),
                    rollout["next", "reward"].reshape(-1).cpu(),
                    bool(rollout["next", "terminated"].any()),
                )
            )
    return out

"""Every seed's environment stepped in lockstep, every seed's action from one batched policy call.

A seed-batched run (:mod:`torchrl_opt.pipeline.seeds`) has one environment per seed. Stepping them
one seed after the other costs ``S`` policy calls per environment step (each a handful of kernel
launches on a GPU) and ``S`` serial MuJoCo steps. Here:

* :class:`SeedBatchedPolicy` runs the template seed's actor under ``torch.vmap`` over the seeds'
  stacked actor parameters: one call acts for all seeds (row ``i`` with seed ``i``'s actor). A
  stochastic actor's distribution parameters are computed under the vmap and its sample drawn
  outside it (vmap cannot draw in-place randomness); TD3's exploration noise is added to the ``[S]``
  batch once.
* :class:`LockstepEnvs` holds one :class:`~torchrl_opt.direct_env.DirectEnv` per seed (the seed's own
  env, seeded and resumable exactly as its single run's) and steps them together, in a thread pool
  when ``threads > 0`` (MuJoCo releases the GIL while it simulates).
* :class:`SeedLockstepCollector` yields ``[S, T]`` transition batches (seed first, time last; each env
  reset after its own done steps), what :func:`~torchrl_opt.pipeline.phases.finetune` and ``B_on``
  collection take.
* :func:`lockstep_returns` evaluates every seed on its own env, its episodes one after the other as
  :func:`~torchrl_opt.envs.evaluate_policy` runs them, all seeds advancing together.

Per seed the environment sequence is that of its single run; the actions equal its single run's up
to the float rounding of the batched matrix products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModuleBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_opt.direct_env import DirectEnv, StepCollector

__all__ = [
    "LockstepEnvs",
    "SeedBatchedPolicy",
    "SeedLockstepCollector",
    "lockstep_returns",
]

_OBSERVATION = "observation"


class SeedBatchedPolicy:
    """The seeds' actors as one call: ``policy(td)`` with ``td`` of batch size ``[S]``.

    Args:
        actor: the template seed's actor module (its own parameters are swapped for each seed's
            during the call and restored after).
        params: returns the seeds' stacked actor parameters (``[S]``, keyed like
            ``TensorDict.from_module(actor)``), read at every call: the stack changes between
            phases.
        noise: a module applied to the ``[S]`` batch after the actors (TD3's exploration noise).
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
        if isinstance(actor, ProbabilisticTensorDictSequential):
            # distribution parameters under vmap, the sample outside it
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


class LockstepEnvs:
    """One :class:`~torchrl_opt.direct_env.DirectEnv` per seed, stepped together.

    Args:
        envs: the seeds' TorchRL envs (each supported by :mod:`torchrl_opt.direct_env`).
        threads: step the envs in a pool of that many threads (0: one after the other here).
    """

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

    def _map(self, fn: Callable, items: Sequence) -> list:
        if self._pool is None:
            return [fn(*item) for item in items]
        return list(self._pool.map(lambda item: fn(*item), items))

    def reset(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Reset the envs ``indices``; their observations."""
        return self._map(lambda i: self.direct[i].reset(), [(i,) for i in indices])

    def step(self, actions: torch.Tensor, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """Step env ``i`` with ``actions[i]`` for ``i`` in ``indices``; each
        ``(next_obs, reward, terminated, truncated)`` (see :meth:`DirectEnv.step`)."""
        actions = actions.detach().cpu()
        return self._map(lambda i: self.direct[i].step(actions[i]), [(i,) for i in indices])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class SeedLockstepCollector(StepCollector):
    """Every seed's env and policy stepped together; yields ``[S, T]`` batches (time last).

    The envs are reset at construction (pending resume snapshots are restored then). Each step
    stacks the seeds' current observations, makes one :class:`SeedBatchedPolicy` call under
    ``exploration_type``, steps every env and resets those that are done. Batches hold TorchRL's
    transition layout; ``prefetch`` (all seeds' next actions computed right after each step, before
    the caller's updates) and the pending-action checkpoint are those of
    :class:`~torchrl_opt.direct_env.DirectCollector`.
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
        if finished:
            for i, reset_obs in zip(finished, self.envs.reset(finished)):
                current[i] = reset_obs
        return (next_obs, reward, terminated, truncated), current

    def shutdown(self) -> None:
        self.envs.close()


@torch.no_grad()
def lockstep_returns(
    policy: Callable[[TensorDictBase], TensorDictBase],
    envs: LockstepEnvs,
    num_episodes: int,
    *,
    max_steps: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Deterministic returns ``[S, num_episodes]`` (float64): seed ``i``'s episodes on ``envs``'s
    env ``i``, one after the other (each at most ``max_steps`` steps, as
    :func:`~torchrl_opt.envs.evaluate_policy`), all seeds stepping together. Seeds that have
    finished their episodes stop stepping (the policy still computes their rows)."""
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    num_seeds = len(envs)
    returns = torch.zeros(num_seeds, num_episodes, dtype=torch.float64)
    episode = [0] * num_seeds
    steps = [0] * num_seeds
    rewards: list[list[torch.Tensor]] = [[] for _ in range(num_seeds)]
    active = list(range(num_seeds))
    obs = torch.stack(envs.reset(active))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        while active:
            td = TensorDict({_OBSERVATION: obs.to(device)}, batch_size=[num_seeds])
            action = policy(td).get("action")
            ended = []
            for i, (next_obs, reward, terminated, truncated) in zip(
                active, envs.step(action, active)
            ):
                rewards[i].append(reward)
                steps[i] += 1
                obs[i] = next_obs
                if bool(terminated | truncated) or steps[i] == max_steps:
                    returns[i, episode[i]] = torch.cat(rewards[i]).sum().double()
                    episode[i] += 1
                    rewards[i], steps[i] = [], 0
                    ended.append(i)
            again = [i for i in ended if episode[i] < num_episodes]
            for i, reset_obs in zip(again, envs.reset(again)):
                obs[i] = reset_obs
            active = [i for i in active if episode[i] < num_episodes]
    return returns

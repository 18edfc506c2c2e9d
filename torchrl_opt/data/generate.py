"""Build D4RL-style datasets for Gymnasium MuJoCo v5 tasks and save them as local Minari datasets.

Kinds (D4RL's definitions, Fu et al. 2020, re-created on Gymnasium ``*-v5``):

* ``random``: ``size`` transitions (default 1M) of a random policy, either uniform random actions
  (``random_policy="uniform"``, the default) or a freshly initialised tanh-Gaussian SAC actor
  (``random_policy="init"``, D4RL's own definition, see :func:`make_init_policy`), collected in
  worker processes (:func:`collect_random_transitions`);
* ``medium``: an online agent (SAC by default, :mod:`torchrl_opt.data.behavior`) trained until its
  deterministic evaluation return reaches the registry's medium target (``TaskInfo.
  medium_target_score``, normalised x100), then ``size`` transitions collected with that agent's
  *stochastic* policy;
* ``medium-replay``: every transition the agent saw until it reached the medium target (its replay
  buffer); ``size`` does not apply;
* ``expert``: the agent trained for the whole budget, then ``size`` stochastic transitions.

Usage::

    python -m torchrl_opt.data.generate --task walker2d --kind random --size 1000000 --seed 0
    python -m torchrl_opt.data.generate --task walker2d --kind random --random-policy init --workers 8

Datasets are written under the Minari data root (``MINARI_DATASETS_PATH``, default
``~/.minari/datasets``) as ``torchrl-opt/<task>/<kind>-v0`` (non-default size / seed are part of
the name, and ``random-init`` replaces ``random`` for the ``init`` policy, see
:func:`generated_dataset_id`), with ``policy.pt`` (tensors-only state dicts,
``torch.load(..., weights_only=True)``; for ``init``, the random actor)
and ``torchrl_opt_metadata.json`` beside Minari's ``data/`` folder. The dataset is assembled in a
hidden staging folder of the root and moved into place only when complete, so a failure never
leaves a half dataset registered, and an existing dataset is kept unless ``overwrite``.

Minari's ``DataCollector``/``EpisodeBuffer.add_step_data`` need jax; this module builds
``EpisodeBuffer`` objects directly and calls ``minari.create_dataset_from_buffers``, which does not.
"""

from __future__ import annotations

import argparse
import concurrent.futures as _futures
import contextlib
import datetime as _dt
import importlib
import io
import json
import math
import multiprocessing
import numbers
import os
import platform
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensordict import TensorDict

from torchrl_opt.data.datasets import (
    GENERATED_KINDS,
    TASKS,
    DatasetError,
    DatasetFormatError,
    _assemble,
    get_dataset_entry,
    local_dataset_id,
    minari_root,
)
from torchrl_opt.data.scores import D4RL_REF_SCORES

if TYPE_CHECKING:
    from torchrl.modules import ProbabilisticActor

__all__ = [
    "GenerationError",
    "DatasetExistsError",
    "TargetNotReachedError",
    "GeneratedDataset",
    "DEFAULT_SIZE",
    "DEFAULT_MAX_ENV_STEPS",
    "DEFAULT_CHUNK_STEPS",
    "MAX_AUTO_WORKERS",
    "RANDOM_POLICIES",
    "INIT_POLICY_HIDDEN",
    "collect_transitions",
    "collect_random_transitions",
    "make_init_policy",
    "chunk_seeds",
    "resolve_workers",
    "generated_dataset_id",
    "target_return",
    "transitions_to_episode_buffers",
    "write_minari_dataset",
    "generate_dataset",
    "ensure_dataset",
    "main",
]

DEFAULT_SIZE = 1_000_000
DEFAULT_MAX_ENV_STEPS = 1_000_000
METADATA_FILE = "torchrl_opt_metadata.json"
POLICY_FILE = "policy.pt"

#: Random policies of the ``random`` kind: uniform actions, or a freshly initialised SAC actor.
RANDOM_POLICIES: tuple[str, ...] = ("uniform", "init")
#: Steps per collection chunk of :func:`collect_random_transitions` (a multiple of the MuJoCo
#: 1000-step time limit, so that HalfCheetah chunks are exactly 10 episodes).
DEFAULT_CHUNK_STEPS = 10_000
#: Upper bound of the worker count chosen by ``workers=None`` / ``workers=0``.
MAX_AUTO_WORKERS = 32
#: Hidden layers of the ``init`` actor (D4RL's rlkit SAC actor: 256-256, ReLU).
INIT_POLICY_HIDDEN: tuple[int, ...] = (256, 256)
#: Half-width of the uniform initialisation of the ``init`` actor's output layer (rlkit's
#: ``init_w=1e-3`` of ``TanhGaussianPolicy``).
INIT_OUTPUT_SCALE = 1e-3
# spawn keys of numpy SeedSequence(seed, spawn_key=...) for the derived seeds
_CHUNK_PURPOSE = 0
_POLICY_PURPOSE = 1


class GenerationError(DatasetError):
    """Dataset generation failed."""


class DatasetExistsError(GenerationError, FileExistsError):
    """A dataset with this id already exists and ``overwrite`` was not given."""


class TargetNotReachedError(GenerationError):
    """The behaviour agent did not reach the medium target within its budget."""


@dataclass
class GeneratedDataset:
    """Result of :func:`generate_dataset`."""

    dataset_id: str
    path: Path
    num_transitions: int
    num_episodes: int
    metadata: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------
def collect_transitions(
    policy: Callable[[TensorDict], TensorDict] | None,
    env_id: str,
    num_steps: int,
    seed: int,
    *,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> TensorDict:
    """Roll ``policy`` (None: uniform random actions) in ``env_id`` for exactly ``num_steps`` steps.

    The policy is a TensorDict module reading ``observation`` (float32) and writing ``action``; it
    acts with ``ExplorationType.RANDOM`` (stochastic) under ``torch.no_grad``. Actions are clipped
    into the action space and the clipped action is stored (what the env executed). Episodes
    reset on ``terminated`` or ``truncated`` (Gymnasium's TimeLimit, ``max_episode_steps``
    overriding the registered limit); the final, cut episode is marked ``truncated``.
    Seeding: ``env.reset(seed=seed)``, ``action_space.seed(seed)`` and a forked torch RNG seeded
    with ``seed``.

    Returns:
        flat TensorDict ``[num_steps]`` in TorchRL's layout (see :mod:`torchrl_opt.data.datasets`).
    """
    import gymnasium as gym
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from tqdm.auto import tqdm

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    env = gym.make(env_id, **kwargs)
    space = env.action_space
    if not isinstance(space, gym.spaces.Box) or not isinstance(env.observation_space, gym.spaces.Box):
        env.close()
        raise GenerationError(f"{env_id}: only Box observation and action spaces are supported")
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(space.shape))
    obs_buf = np.empty((num_steps, obs_dim), np.float32)
    next_buf = np.empty((num_steps, obs_dim), np.float32)
    act_buf = np.empty((num_steps, act_dim), np.float32)
    rew_buf = np.empty(num_steps, np.float32)
    term_buf = np.zeros(num_steps, bool)
    trunc_buf = np.zeros(num_steps, bool)
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rng_devices: list[int] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=rng_devices))
        torch.manual_seed(seed)
        stack.enter_context(torch.no_grad())
        stack.enter_context(set_exploration_type(ExplorationType.RANDOM))
        bar = stack.enter_context(
            tqdm(total=num_steps, desc=f"collect {env_id}", disable=not progress, unit="step")
        )
        for t in range(num_steps):
            obs32 = np.asarray(obs, np.float32).reshape(obs_dim)
            if policy is None:
                action = np.asarray(space.sample(), np.float32)
            else:
                td = TensorDict({"observation": torch.from_numpy(obs32)}, batch_size=[])
                action = policy(td).get("action").detach().cpu().numpy().astype(np.float32)
            action = np.clip(action.reshape(space.shape), low, high)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            obs_buf[t] = obs32
            act_buf[t] = action.reshape(act_dim)
            rew_buf[t] = reward
            next_buf[t] = np.asarray(next_obs, np.float32).reshape(obs_dim)
            term_buf[t] = bool(terminated)
            trunc_buf[t] = bool(truncated) and not terminated
            if terminated or truncated:
                obs, _ = env.reset()
            else:
                obs = next_obs
            bar.update(1)
    env.close()
    if not (term_buf[-1] or trunc_buf[-1]):
        trunc_buf[-1] = True
    return _assemble(obs_buf, act_buf, rew_buf, next_buf, term_buf, trunc_buf)


# --------------------------------------------------------------------------------------------
# Random datasets: the two random policies and chunked, parallel collection
# --------------------------------------------------------------------------------------------
def _check_random_policy(random_policy: str) -> str:
    if random_policy not in RANDOM_POLICIES:
        raise ValueError(
            f"random_policy must be one of {RANDOM_POLICIES}, got {random_policy!r}"
        )
    return random_policy


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """Number of collection processes: ``None`` or ``0`` means one per available core (at most
    :data:`MAX_AUTO_WORKERS`); ``1`` collects in this process; ``n > 1`` uses ``n`` processes.

    Raises:
        ValueError: ``workers`` is negative or not an integer.
    """
    count = 0 if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(
            f"workers must be None, 0 (one per core) or a positive int, got {workers!r}"
        )
    return min(_available_cores(), MAX_AUTO_WORKERS) if count == 0 else int(count)


def chunk_seeds(seed: int, index: int) -> tuple[int, int, int]:
    """``(env_seed, action_seed, noise_seed)`` of collection chunk ``index`` of a dataset.

    They are the first three 32-bit words of ``numpy.random.SeedSequence(seed, spawn_key=(0,
    index))``: independent streams per chunk that depend only on ``(seed, index)``, never on the
    number of workers or on which worker collects the chunk.
    """
    words = np.random.SeedSequence(int(seed), spawn_key=(_CHUNK_PURPOSE, int(index))).generate_state(3)
    return int(words[0]), int(words[1]), int(words[2])


def _chunk_targets(num_steps: int, chunk_steps: int) -> list[int]:
    """Minimum step count of each chunk: ``chunk_steps`` each, the remainder for the last one."""
    count = math.ceil(num_steps / chunk_steps)
    return [chunk_steps] * (count - 1) + [num_steps - (count - 1) * chunk_steps]


def _make_env(env_id: str, max_episode_steps: int | None):
    import gymnasium as gym

    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    return gym.make(env_id, **kwargs)


def _probe_env(env_id: str, max_episode_steps: int | None) -> tuple[int, np.ndarray, np.ndarray, int]:
    """``(obs_dim, action_low, action_high, time_limit)`` of ``env_id``, validated."""
    import gymnasium as gym

    env = _make_env(env_id, max_episode_steps)
    try:
        space, obs_space = env.action_space, env.observation_space
        if not isinstance(space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
            raise GenerationError(f"{env_id}: only Box observation and action spaces are supported")
        limit = env.spec.max_episode_steps if env.spec is not None else None
        if limit is None:
            raise GenerationError(
                f"{env_id} has no time limit: chunked random collection needs finite episodes; "
                "pass max_episode_steps (--max-episode-steps)"
            )
        return (int(np.prod(obs_space.shape)), space.low.astype(np.float32).reshape(-1),
                space.high.astype(np.float32).reshape(-1), int(limit))
    finally:
        env.close()


def _loc_scale_net(policy: torch.nn.Module) -> torch.nn.Module:
    """The ``observation -> (loc, scale)`` network of a :func:`make_gaussian_actor` actor."""
    from tensordict.nn import TensorDictModule

    for module in policy.modules():
        if isinstance(module, TensorDictModule) and list(module.out_keys) == ["loc", "scale"]:
            return module.module
    raise GenerationError(
        "The init policy must be a tanh-Gaussian actor from torchrl_opt.models.make_gaussian_actor "
        "(a TensorDictModule writing 'loc' and 'scale'); build it with make_init_policy"
    )


def make_init_policy(
    env_id: str,
    seed: int = 0,
    *,
    hidden: Sequence[int] = INIT_POLICY_HIDDEN,
    max_episode_steps: int | None = None,
) -> ProbabilisticActor:
    """D4RL's random-dataset policy: a freshly initialised SAC actor, seeded.

    D4RL (Fu et al., 2020) describes its ``*-random`` MuJoCo datasets as rollouts of a randomly
    initialised policy; its collection script (``scripts/generation/mujoco/collect_data.py``)
    samples the stochastic action of an rlkit SAC ``TanhGaussianPolicy`` snapshot (256-256 ReLU
    MLP whose ``mean`` and ``log_std`` output layers rlkit initialises in ``U(-1e-3, 1e-3)``), and
    also offers uniform ``action_space.sample()`` behind ``--random``. This builds that initial
    actor with this library's network, :func:`torchrl_opt.models.make_gaussian_actor`:

        a = mid + half * tanh(loc(s) + scale(s) * eps),   eps ~ N(0, I),

    with ``mid, half`` the centre and half-width of the action box, hidden layers in PyTorch's
    default initialisation and the output layer (``loc`` and the pre-softplus ``scale``)
    re-initialised in ``U(-INIT_OUTPUT_SCALE, INIT_OUTPUT_SCALE)`` as in rlkit, so that at
    initialisation ``loc ~ 0`` and ``scale ~ 1`` (``biased_softplus_1.0``; rlkit: ``exp(log_std ~ 0)``).

    The parameters are drawn from a forked torch RNG seeded with the first word of
    ``numpy.random.SeedSequence(seed, spawn_key=(1,))``; the caller's RNG state is untouched.
    """
    from torchrl.data import Bounded

    from torchrl_opt.models import make_gaussian_actor

    obs_dim, low, high, _ = _probe_env(env_id, max_episode_steps)
    spec = Bounded(torch.from_numpy(low), torch.from_numpy(high), shape=(low.shape[0],))
    sequence = np.random.SeedSequence(int(seed), spawn_key=(_POLICY_PURPOSE,))
    policy_seed = int(sequence.generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(policy_seed)
        actor = make_gaussian_actor(obs_dim, spec, tuple(hidden))
        linears = [m for m in _loc_scale_net(actor).modules() if isinstance(m, torch.nn.Linear)]
        output = linears[-1]
        with torch.no_grad():
            output.weight.uniform_(-INIT_OUTPUT_SCALE, INIT_OUTPUT_SCALE)
            output.bias.uniform_(-INIT_OUTPUT_SCALE, INIT_OUTPUT_SCALE)
    return actor


def _check_init_net(net: torch.nn.Module, obs_dim: int, act_dim: int, env_id: str) -> None:
    """Fail early (in the parent) when the policy's shapes do not fit ``env_id``."""
    try:
        with torch.no_grad():
            loc, scale = net(torch.zeros(obs_dim))
    except Exception as exc:  # a wrong input width surfaces as a matmul error
        raise GenerationError(
            f"The init policy cannot read {env_id}'s {obs_dim}-d observation: {exc}"
        ) from exc
    if tuple(loc.shape) != (act_dim,) or tuple(scale.shape) != (act_dim,):
        raise GenerationError(
            f"The init policy returns loc {tuple(loc.shape)} / scale {tuple(scale.shape)}, but "
            f"{env_id} has a {act_dim}-d action"
        )


def _run_chunk(job: tuple, net: torch.nn.Module | None, envs: dict) -> dict[str, np.ndarray]:
    """Collect one chunk: whole episodes from a seeded reset until at least ``target`` steps.

    ``job = (index, env_id, max_episode_steps, target, seed, low, high)``. The env is reset with
    ``env_seed`` once at the start (later resets continue its RNG); uniform actions are
    ``numpy.random.default_rng(action_seed).uniform(low, high)`` draws (the very draws of
    Gymnasium's ``action_space.sample()`` seeded with ``action_seed``, at half its cost), the init
    policy's noise comes from a torch generator seeded with ``noise_seed`` (:func:`chunk_seeds`).
    The chunk always ends with a done step (``terminated`` by the MDP, or ``truncated`` by the
    time limit).
    """
    index, env_id, max_episode_steps, target, seed, low, high = job
    env_seed, action_seed, noise_seed = chunk_seeds(seed, index)
    key = (env_id, max_episode_steps)
    if key not in envs:
        envs[key] = _make_env(env_id, max_episode_steps)
    env = envs[key]
    space = env.action_space
    limit = int(env.spec.max_episode_steps)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = low.shape[0]
    capacity = target + limit
    obs_buf = np.empty((capacity, obs_dim), np.float32)
    next_buf = np.empty((capacity, obs_dim), np.float32)
    act_buf = np.empty((capacity, act_dim), np.float32)
    rew_buf = np.empty(capacity, np.float32)
    term_buf = np.zeros(capacity, bool)
    trunc_buf = np.zeros(capacity, bool)
    mid, half = (high + low) / 2, (high - low) / 2
    rng = np.random.default_rng(action_seed)
    generator = torch.Generator().manual_seed(noise_seed)
    obs, _ = env.reset(seed=env_seed)
    t = 0
    with torch.no_grad():
        while True:
            obs32 = np.asarray(obs, np.float32).reshape(obs_dim)
            if net is None:
                action = rng.uniform(low, high).astype(np.float32)
            else:
                loc, scale = net(torch.from_numpy(obs32))
                eps = torch.randn(act_dim, generator=generator)
                action = (mid + half * torch.tanh(loc + scale * eps).numpy()).astype(np.float32)
            if not np.isfinite(action).all():
                raise GenerationError(
                    f"{env_id}: the random policy produced a non-finite action {action.tolist()} "
                    f"(chunk {index}, step {t})"
                )
            action = np.clip(action, low, high)
            next_obs, reward, terminated, truncated, _ = env.step(action.reshape(space.shape))
            obs_buf[t] = obs32
            act_buf[t] = action
            rew_buf[t] = reward
            next_buf[t] = np.asarray(next_obs, np.float32).reshape(obs_dim)
            term_buf[t] = bool(terminated)
            trunc_buf[t] = bool(truncated) and not terminated
            t += 1
            if terminated or truncated:
                if t >= target:
                    break
                obs, _ = env.reset()
            else:
                obs = next_obs
    return {"observation": obs_buf[:t], "action": act_buf[:t], "reward": rew_buf[:t],
            "next_observation": next_buf[:t], "terminated": term_buf[:t], "truncated": trunc_buf[:t]}


# Worker-process state (set by _worker_init in each collection process).
_WORKER: dict[str, Any] = {}


def _worker_init(net: torch.nn.Module | None) -> None:
    torch.set_num_threads(1)
    _WORKER["net"] = net
    _WORKER["envs"] = {}


def _worker_chunk(job: tuple) -> dict[str, np.ndarray]:
    return _run_chunk(job, _WORKER["net"], _WORKER["envs"])


def _this_module() -> Any:
    """This module under its import name, also when it runs as ``python -m`` (``__main__``), so
    that worker processes unpickle its functions by that name."""
    return importlib.import_module("torchrl_opt.data.generate")


def _mp_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` (its server imports this module once; workers fork from it cheaply) where
    the platform has it, else ``spawn`` (Windows). Never ``fork``: the parent may hold torch
    thread pools that do not survive a fork."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torchrl_opt.data.generate"])
        return ctx
    return multiprocessing.get_context("spawn")


def _chunk_error(env_id: str, index: int, exc: BaseException) -> GenerationError:
    return GenerationError(
        f"{env_id}: random collection chunk {index} failed: {type(exc).__name__}: {exc}"
    )


def collect_random_transitions(
    env_id: str,
    num_steps: int,
    seed: int,
    *,
    random_policy: str = "uniform",
    policy: ProbabilisticActor | None = None,
    workers: int | None = None,
    chunk_steps: int = DEFAULT_CHUNK_STEPS,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> TensorDict:
    """Collect exactly ``num_steps`` random transitions, in chunks spread over worker processes.

    The run is split into ``ceil(num_steps / chunk_steps)`` chunks. Chunk ``i`` resets the env
    with the seeds of :func:`chunk_seeds` ``(seed, i)`` and collects *whole episodes* until it holds
    at least ``chunk_steps`` steps (the last chunk: the remainder); the chunks are concatenated in
    index order and cut to ``num_steps``, the cut last step marked ``truncated``. Every other
    episode is complete: ``terminated`` where the MDP ended, ``truncated`` at the time limit
    (never a terminal), so episode boundaries never straddle chunks. The data depend only on
    ``(env_id, num_steps, seed, random_policy, chunk_steps, max_episode_steps)``, not on
    ``workers``.

    Args:
        random_policy: ``"uniform"`` (``a ~ U(low, high)``, the draws of a seeded
            ``action_space.sample()``) or ``"init"`` (the stochastic, freshly initialised actor of
            :func:`make_init_policy`).
        policy: the ``init`` actor (default ``make_init_policy(env_id, seed)``); its
            ``(loc, scale)`` network is sent to the workers.
        workers: see :func:`resolve_workers`; never more than the number of chunks. ``1`` collects
            in this process (torch limited to one thread meanwhile, as in the workers, so the
            ``init`` actions are bitwise the same).
        chunk_steps: steps per chunk; part of the data's identity.
        progress: one tqdm bar over all chunks.

    Returns:
        flat TensorDict ``[num_steps]`` in TorchRL's layout (see :mod:`torchrl_opt.data.datasets`).

    Raises:
        GenerationError: a chunk failed (raised in its worker; the pool is shut down, the workers
            joined), or the env/policy do not fit.
    """
    from tqdm.auto import tqdm

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    _check_random_policy(random_policy)
    if policy is not None and random_policy != "init":
        raise ValueError("policy= is the init actor; it needs random_policy='init'")
    obs_dim, low, high, _ = _probe_env(env_id, max_episode_steps)
    net = None
    if random_policy == "init":
        actor = policy if policy is not None else make_init_policy(
            env_id, seed, max_episode_steps=max_episode_steps)
        net = _loc_scale_net(actor)
        _check_init_net(net, obs_dim, low.shape[0], env_id)
    targets = _chunk_targets(int(num_steps), int(chunk_steps))
    jobs = [(i, env_id, max_episode_steps, target, int(seed), low, high)
            for i, target in enumerate(targets)]
    n_workers = min(resolve_workers(workers), len(jobs))
    chunks: list[dict[str, np.ndarray] | None] = [None] * len(jobs)
    with tqdm(total=num_steps, desc=f"collect {env_id} ({random_policy}, {n_workers} proc)",
              disable=not progress, unit="step") as bar:
        done = 0

        def record(index: int, chunk: dict[str, np.ndarray]) -> None:
            nonlocal done
            chunks[index] = chunk
            step = min(len(chunk["reward"]), num_steps - done)
            done += step
            bar.update(step)

        if n_workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            envs: dict = {}
            try:
                for job in jobs:
                    try:
                        record(job[0], _run_chunk(job, net, envs))
                    except Exception as exc:
                        raise _chunk_error(env_id, job[0], exc) from exc
            finally:
                torch.set_num_threads(threads)
                for env in envs.values():
                    env.close()
        else:
            module = _this_module()
            pool = _futures.ProcessPoolExecutor(
                max_workers=n_workers, mp_context=_mp_context(), initializer=module._worker_init,
                initargs=(net,),
            )
            try:
                futures = {pool.submit(module._worker_chunk, job): job[0] for job in jobs}
                for future in _futures.as_completed(futures):
                    index = futures[future]
                    try:
                        record(index, future.result())
                    except BrokenProcessPool as exc:
                        raise GenerationError(
                            f"{env_id}: a collection worker process died (chunk {index}): {exc} "
                            "A script that collects with workers > 1 must start it under "
                            "`if __name__ == '__main__':` (workers re-import the main module)."
                        ) from exc
                    except Exception as exc:
                        raise _chunk_error(env_id, index, exc) from exc
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    columns = {key: np.concatenate([c[key] for c in chunks])[:num_steps] for key in chunks[0]}
    if not (columns["terminated"][-1] or columns["truncated"][-1]):
        columns["truncated"][-1] = True
    return _assemble(columns["observation"], columns["action"], columns["reward"],
                     columns["next_observation"], columns["terminated"], columns["truncated"])


def generated_dataset_id(task: str, kind: str, *, size: int | None = None, seed: int = 0,
                         random_policy: str = "uniform") -> str:
    """Local Minari id of a generated dataset.

    :func:`~torchrl_opt.data.datasets.local_dataset_id` with the random policy in the name when
    it is not the default: ``torchrl-opt/hopper/random-v0`` (uniform),
    ``torchrl-opt/hopper/random-init-n1000-seed3-v0`` (init).
    """
    _check_random_policy(random_policy)
    if random_policy != "uniform" and kind != "random":
        raise ValueError(
            f"random_policy={random_policy!r} applies only to kind 'random', not {kind!r}"
        )
    name = kind if random_policy == "uniform" else f"{kind}-{random_policy}"
    return local_dataset_id(task, name, size=size, seed=seed, default_size=DEFAULT_SIZE)


def target_return(task: str, target_score: float | None = None) -> float:
    """Raw return of a normalised target: ``R_random + score / 100 * (R_expert - R_random)``.

    ``target_score`` defaults to the registry's ``medium_target_score`` of ``task``.
    """
    info = TASKS[task]
    score = info.medium_target_score if target_score is None else float(target_score)
    if score is None:
        raise GenerationError(f"Task {task!r} has no medium target score")
    lo, hi = D4RL_REF_SCORES[task]
    return lo + score / 100.0 * (hi - lo)


# --------------------------------------------------------------------------------------------
# Minari writing
# --------------------------------------------------------------------------------------------
def _close_episodes(data: TensorDict) -> TensorDict:
    """Mark as truncated every step that ends a stored segment without a done flag.

    A segment ends where ``next/observation[t] != observation[t+1]`` (e.g. transitions from
    several collector workers) or at the last row; those rows become ``truncated`` (bootstrap
    from ``next/observation``, which is the true successor).
    """
    required = ("observation", "action", ("next", "observation"), ("next", "reward"),
                ("next", "terminated"), ("next", "truncated"))
    keys = data.keys(include_nested=True)
    missing = ["/".join(k) if isinstance(k, tuple) else k for k in required if k not in keys]
    if missing:
        raise DatasetFormatError(f"Transitions lack keys {missing}")
    data = data.reshape(-1)
    term = data["next", "terminated"].reshape(-1).bool()
    trunc = data["next", "truncated"].reshape(-1).bool() & ~term
    cut = torch.zeros_like(term)
    obs, nxt = data["observation"].reshape(data.shape[0], -1), data["next", "observation"].reshape(data.shape[0], -1)
    if data.shape[0] > 1:
        cut[:-1] = (nxt[:-1] != obs[1:]).any(-1)
    cut[-1] = True
    trunc = trunc | (cut & ~term & ~trunc)
    return _assemble(
        obs.float().cpu().numpy(), data["action"].reshape(data.shape[0], -1).float().cpu().numpy(),
        data["next", "reward"].reshape(-1).float().cpu().numpy(), nxt.float().cpu().numpy(),
        term.cpu().numpy(), trunc.cpu().numpy(),
    )


def transitions_to_episode_buffers(data: TensorDict) -> list:
    """Split a flat transition TensorDict at ``next/done`` into Minari ``EpisodeBuffer``s.

    Each episode of ``T`` steps stores ``T + 1`` observations (``observation[s:e+1]`` followed by
    ``next/observation[e]``), ``T`` actions, rewards, terminations and truncations.

    Raises:
        DatasetFormatError: the data do not end with a done step, or an episode is not contiguous
            (``next/observation[t] != observation[t+1]`` inside an episode).
    """
    from minari.data_collector import EpisodeBuffer

    obs = data["observation"].cpu().numpy()
    nxt = data["next", "observation"].cpu().numpy()
    act = data["action"].cpu().numpy()
    rew = data["next", "reward"].reshape(-1).cpu().numpy()
    term = data["next", "terminated"].reshape(-1).cpu().numpy()
    trunc = data["next", "truncated"].reshape(-1).cpu().numpy()
    done = term | trunc
    if not done[-1]:
        raise DatasetFormatError("The last transition is not done: the last episode is not closed")
    inside = ~done[:-1]
    if inside.any() and not np.array_equal(nxt[:-1][inside], obs[1:][inside]):
        raise DatasetFormatError("next/observation[t] != observation[t+1] inside an episode")
    ends = np.nonzero(done)[0]
    starts = np.concatenate([[0], ends[:-1] + 1])
    buffers = []
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        buffers.append(
            EpisodeBuffer(
                id=i,
                observations=np.concatenate([obs[s : e + 1], nxt[e : e + 1]], axis=0),
                actions=act[s : e + 1],
                rewards=rew[s : e + 1],
                terminations=term[s : e + 1],
                truncations=trunc[s : e + 1],
            )
        )
    return buffers


@contextlib.contextmanager
def _minari_root_at(path: Path) -> Iterator[None]:
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _dataset_exists(dataset_id: str) -> bool:
    return (minari_root() / dataset_id / "data").exists()


def write_minari_dataset(
    dataset_id: str,
    data: TensorDict,
    env_id: str,
    *,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
    minari_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``data`` as the local Minari dataset ``dataset_id``, atomically.

    The dataset (and ``extra_files``, written beside its ``data/`` folder) is built in a hidden
    staging folder of the Minari root, then moved to ``<root>/<dataset_id>``; an existing dataset
    is replaced only when ``overwrite`` (and only once the new one is complete).

    Raises:
        DatasetExistsError: the dataset exists and ``overwrite`` is False.
    """
    import gymnasium as gym
    import minari

    root = minari_root()
    target = root / dataset_id
    if target.exists() and not overwrite:
        raise DatasetExistsError(
            f"Dataset {dataset_id!r} already exists at {target}; pass overwrite=True (--overwrite)"
        )
    buffers = transitions_to_episode_buffers(data)
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    env = gym.make(env_id, **kwargs)
    obs_space = env.observation_space
    # stored observations are float32 (D4RL's dtype); declare it so the space matches the data
    obs_space32 = gym.spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32),
                                 dtype=np.float32)
    staging = root / f".torchrl-opt-staging-{uuid.uuid4().hex}"
    try:
        with _minari_root_at(staging), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env,
                observation_space=obs_space32,
                action_space=env.action_space,
                **(minari_kwargs or {}),
            )
        built = staging / dataset_id
        for name, payload in (extra_files or {}).items():
            (built / name).write_bytes(payload)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not overwrite:  # appeared while we were writing
                raise DatasetExistsError(f"Dataset {dataset_id!r} appeared at {target} meanwhile")
            old = staging / ".replaced"
            os.replace(target, old)
        os.replace(built, target)
        # keep Minari's namespace metadata consistent in the real root
        namespace = dataset_id.rsplit("/", 1)[0] if "/" in dataset_id else None
        if namespace is not None:
            from minari.namespace import NAMESPACE_METADATA_FILENAME

            parts = namespace.split("/")
            for depth in range(1, len(parts) + 1):
                ns_dir = root.joinpath(*parts[:depth])
                if not (ns_dir / NAMESPACE_METADATA_FILENAME).exists():
                    src = staging.joinpath(*parts[:depth]) / NAMESPACE_METADATA_FILENAME
                    payload = src.read_bytes() if src.exists() else b"{}"
                    (ns_dir / NAMESPACE_METADATA_FILENAME).write_bytes(payload)
    finally:
        env.close()
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def _default_trainer() -> Callable[..., Any]:
    from torchrl_opt.data.behavior import train_behavior_agent

    return train_behavior_agent


def _versions() -> dict[str, str]:
    import gymnasium
    import minari
    import mujoco
    import tensordict
    import torchrl

    import torchrl_opt

    return {
        "torchrl_opt": torchrl_opt.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "minari": minari.__version__,
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _checkpoint_bytes(checkpoint: dict) -> bytes:
    """Serialise and verify that ``torch.load(weights_only=True)`` reads it back."""
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    payload = buf.getvalue()
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:
        raise GenerationError(
            f"The behaviour checkpoint cannot be loaded with weights_only=True: {exc}"
        ) from exc
    return payload


def _episode_returns(data: TensorDict) -> np.ndarray:
    rew = data["next", "reward"].reshape(-1).double()
    ep = data["episode"]
    return torch.zeros(int(ep.max()) + 1, dtype=torch.float64).index_add_(0, ep, rew).numpy()


def generate_dataset(
    task: str,
    kind: str,
    *,
    size: int | None = None,
    seed: int = 0,
    target_score: float | None = None,
    target_return_value: float | None = None,
    max_env_steps: int = DEFAULT_MAX_ENV_STEPS,
    algo: str = "sac",
    device: str | torch.device | None = None,
    eval_every: int = 5000,
    eval_episodes: int = 5,
    max_episode_steps: int | None = None,
    dataset_id: str | None = None,
    overwrite: bool = False,
    allow_below_target: bool = False,
    progress: bool = True,
    author: str = "torchrl-opt",
    trainer: Callable[..., Any] | None = None,
    random_policy: str = "uniform",
    workers: int | None = None,
) -> GeneratedDataset:
    """Generate a D4RL-style dataset for a MuJoCo task and save it as a local Minari dataset.

    Args:
        task, kind: registry keys (``"walker2d"``, one of ``random, medium, medium-replay, expert``).
        size: transitions to collect (default 1M; ignored by ``medium-replay``).
        seed: seeds the agent's training (``seed``) and the collection (``seed + 1`` for trained
            policies; for random, the chunk seeds of :func:`chunk_seeds` and the ``init`` actor).
        target_score / target_return_value: medium target as a normalised score (x100) or a raw
            return; default: the registry's ``medium_target_score``.
        max_env_steps: training budget of the behaviour agent.
        trainer: ``train_behavior_agent``-compatible callable (default:
            :func:`torchrl_opt.data.behavior.train_behavior_agent`).
        overwrite: replace an existing dataset of the same id.
        allow_below_target: for ``medium``/``medium-replay``, warn instead of raising
            :class:`TargetNotReachedError` when the target was not reached.
        random_policy: ``random`` kind only: ``"uniform"`` (default) or ``"init"`` (D4RL's freshly
            initialised SAC actor, :func:`make_init_policy`; saved as ``policy.pt``). Part of the
            dataset id (:func:`generated_dataset_id`) and of its metadata.
        workers: processes of the random collection (:func:`resolve_workers`; the data do not
            depend on it). The behaviour agent of the other kinds and its collection run in this
            process.

    Raises:
        UnknownDatasetError: unknown task / kind; GenerationError for non-MuJoCo tasks;
        DatasetExistsError (checked before any work); TargetNotReachedError.
    """
    entry = get_dataset_entry(task, kind)
    if TASKS[task].domain != "mujoco" or kind not in GENERATED_KINDS:
        raise GenerationError(
            f"Only MuJoCo tasks and kinds {GENERATED_KINDS} can be generated; {task}/{kind} is "
            f"available from Minari as {entry.minari_id!r}"
        )
    if kind == "medium-replay":
        size = None
    elif size is None:
        size = DEFAULT_SIZE
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    _check_random_policy(random_policy)
    if random_policy != "uniform" and kind != "random":
        raise ValueError(
            f"random_policy={random_policy!r} applies only to kind 'random', not {kind!r}"
        )
    if dataset_id is None:
        dataset_id = generated_dataset_id(task, kind, size=size, seed=seed,
                                          random_policy=random_policy)
    if _dataset_exists(dataset_id) and not overwrite:
        raise DatasetExistsError(
            f"Dataset {dataset_id!r} already exists under {minari_root()}; pass overwrite=True "
            "(--overwrite) to replace it"
        )
    env_id = entry.env_id
    lo, hi = D4RL_REF_SCORES[task]
    meta: dict[str, Any] = {
        "dataset_id": dataset_id,
        "generator": "torchrl_opt.data.generate",
        "author": author,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv else None,
        "task": task,
        "kind": kind,
        "env_id": env_id,
        "max_episode_steps": max_episode_steps,
        "d4rl_name": entry.d4rl_name,
        "seed": seed,
        "size_requested": size,
        "ref_min_score": lo,
        "ref_max_score": hi,
        "versions": _versions(),
    }
    files: dict[str, bytes] = {}
    if kind == "random":
        actor = None
        if random_policy == "init":
            actor = make_init_policy(env_id, seed, max_episode_steps=max_episode_steps)
            meta["policy"] = (
                "freshly initialised tanh-Gaussian SAC actor (D4RL 'random'), "
                f"{'-'.join(map(str, INIT_POLICY_HIDDEN))} ReLU MLP, output layer "
                f"U(-{INIT_OUTPUT_SCALE}, {INIT_OUTPUT_SCALE}), stochastic; checkpoint in {POLICY_FILE}"
            )
            files[POLICY_FILE] = _checkpoint_bytes({
                "actor": actor.state_dict(), "hidden": list(INIT_POLICY_HIDDEN),
                "random_policy": "init", "seed": int(seed),
            })
        else:
            meta["policy"] = "uniform random actions U(low, high) (action_space.sample() draws)"
        n_workers = min(resolve_workers(workers), math.ceil(size / DEFAULT_CHUNK_STEPS))
        meta.update(random_policy=random_policy, chunk_steps=DEFAULT_CHUNK_STEPS,
                    workers=n_workers,
                    seeding="chunk i: numpy SeedSequence(seed, spawn_key=(0, i)); "
                            "init actor: SeedSequence(seed, spawn_key=(1,))")
        start = time.perf_counter()
        data = collect_random_transitions(
            env_id, size, seed, random_policy=random_policy, policy=actor, workers=n_workers,
            chunk_steps=DEFAULT_CHUNK_STEPS, max_episode_steps=max_episode_steps,
            progress=progress,
        )
        meta["collection_seconds"] = round(time.perf_counter() - start, 3)
    else:
        train = trainer if trainer is not None else _default_trainer()
        if kind in ("medium", "medium-replay"):
            goal = target_return_value if target_return_value is not None else target_return(task, target_score)
            norm = 100.0 * (goal - lo) / (hi - lo)
        else:
            goal, norm = None, None
        meta.update(algo=algo, target_return=goal, target_score=norm, max_env_steps=max_env_steps,
                    eval_every=eval_every, eval_episodes=eval_episodes)
        result = train(env_id, target_return=goal, max_env_steps=max_env_steps, seed=seed, algo=algo,
                       device=device, eval_every=eval_every, eval_episodes=eval_episodes,
                       progress=progress)
        meta.update(
            reached_target=bool(result.reached_target) if goal is not None else None,
            final_eval_return=float(result.final_eval_return),
            final_eval_score=100.0 * (float(result.final_eval_return) - lo) / (hi - lo),
            env_steps_trained=int(result.env_steps),
            eval_history=[[int(s), float(r)] for s, r in result.eval_history],
        )
        if goal is not None and not result.reached_target:
            message = (
                f"The {algo} behaviour agent for {env_id} did not reach the medium target return "
                f"{goal:.1f} (normalised {norm:.1f}) within {max_env_steps} env steps: final "
                f"evaluation return {result.final_eval_return:.1f}."
            )
            if not allow_below_target:
                raise TargetNotReachedError(
                    message + " Raise --max-env-steps, lower --target-score, or pass "
                    "--allow-below-target to keep a below-target dataset."
                )
            warnings.warn("BELOW TARGET: " + message + " Kept because allow_below_target=True.",
                          RuntimeWarning, stacklevel=2)
        files[POLICY_FILE] = _checkpoint_bytes(result.checkpoint)
        if kind == "medium-replay":
            meta["policy"] = "replay buffer of the behaviour agent until it reached the target"
            data = _close_episodes(result.transitions)
        else:
            meta["policy"] = f"stochastic {algo} policy ({kind}), checkpoint in {POLICY_FILE}"
            data = collect_transitions(result.policy, env_id, size, seed + 1,
                                       max_episode_steps=max_episode_steps, progress=progress)
    returns = _episode_returns(data)
    meta.update(
        num_transitions=int(data.shape[0]),
        num_episodes=int(returns.shape[0]),
        mean_episode_return=float(returns.mean()),
        mean_episode_score=float(100.0 * (returns.mean() - lo) / (hi - lo)),
    )
    files[METADATA_FILE] = json.dumps(meta, indent=2, sort_keys=True).encode()
    path = write_minari_dataset(
        dataset_id, data, env_id, max_episode_steps=max_episode_steps, overwrite=overwrite,
        extra_files=files,
        minari_kwargs={
            "algorithm_name": meta.get("algo", "random") if kind != "random" else "random",
            "author": author,
            "author_email": "n/a",
            "code_permalink": "https://github.com/torchrl-opt/torchrl-opt (torchrl_opt/data/generate.py)",
            "description": f"D4RL-style '{kind}' dataset for {env_id} generated by torchrl-opt "
                           f"(seed {seed}); see {METADATA_FILE}.",
            "ref_min_score": lo,
            "ref_max_score": hi,
            "eval_env": env_id,
            "requirements": [f"gymnasium=={meta['versions']['gymnasium']}",
                             f"mujoco=={meta['versions']['mujoco']}"],
        },
    )
    return GeneratedDataset(dataset_id, path, int(data.shape[0]), int(returns.shape[0]), meta)


def ensure_dataset(task: str, kind: str, size: int | None = None, seed: int = 0, *,
                   random_policy: str = "uniform", workers: int | None = None,
                   **kwargs: Any) -> str:
    """Return the local Minari id of ``(task, kind, size, seed, random_policy)``, generating it on
    first use.

    A cached dataset is reused when its ``torchrl_opt_metadata.json`` records the same task, kind,
    seed and requested size, and for ``random`` the same ``random_policy`` and ``chunk_steps``
    (datasets of the earlier, sequential random generator record neither and are rejected); a
    dataset of that id built differently raises :class:`DatasetExistsError` (regenerate it with
    ``overwrite=True``). ``workers`` is not part of the identity (the data do not depend on it).
    ``kwargs`` go to :func:`generate_dataset`.

    Concurrent callers (the jobs of a parallel sweep that all find the dataset missing) all
    generate it; the first to finish moves it into place, and every other one then finds it
    there, checks its metadata as above and returns its id instead of failing.
    """
    _check_random_policy(random_policy)
    requested = None if kind == "medium-replay" else (DEFAULT_SIZE if size is None else size)
    dataset_id = kwargs.pop("dataset_id", None) or generated_dataset_id(
        task, kind, size=requested, seed=seed, random_policy=random_policy
    )
    wanted = {"task": task, "kind": kind, "seed": seed, "size_requested": requested}
    if kind == "random":
        wanted.update(random_policy=random_policy, chunk_steps=DEFAULT_CHUNK_STEPS)
    overwrite = kwargs.get("overwrite", False)
    if _dataset_exists(dataset_id) and not overwrite:
        _check_cached(dataset_id, wanted)
        return dataset_id
    try:
        generate_dataset(task, kind, size=requested, seed=seed, dataset_id=dataset_id,
                         random_policy=random_policy, workers=workers, **kwargs)
    except DatasetExistsError:
        if overwrite or not _dataset_exists(dataset_id):
            raise
        _check_cached(dataset_id, wanted)  # another process finished the same dataset first
    return dataset_id


def _check_cached(dataset_id: str, wanted: dict[str, Any]) -> None:
    """Raise :class:`DatasetExistsError` unless the cached dataset's metadata records ``wanted``."""
    meta_path = minari_root() / dataset_id / METADATA_FILE
    found = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    got = {k: found.get(k) for k in wanted}
    if got != wanted:
        raise DatasetExistsError(
            f"Dataset {dataset_id!r} exists but was built with {got}, not {wanted}; "
            "regenerate it with overwrite=True"
        )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    mujoco = sorted(t for t, i in TASKS.items() if i.domain == "mujoco")
    p = argparse.ArgumentParser(
        prog="python -m torchrl_opt.data.generate",
        description="Generate a D4RL-style MuJoCo dataset as a local Minari dataset "
        "(under MINARI_DATASETS_PATH, default ~/.minari/datasets).",
    )
    p.add_argument("--task", required=True, choices=mujoco)
    p.add_argument("--kind", required=True, choices=GENERATED_KINDS)
    p.add_argument("--size", type=int, default=None, help="transitions (default 1M; not for medium-replay)")
    p.add_argument("--seed", type=int, default=0)
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-score", type=float, default=None,
                     help="medium target, normalised x100 (default: registry value)")
    tgt.add_argument("--target-return", type=float, default=None, help="medium target, raw return")
    p.add_argument("--max-env-steps", type=int, default=DEFAULT_MAX_ENV_STEPS,
                   help="behaviour agent training budget")
    p.add_argument("--algo", default="sac")
    p.add_argument("--device", default=None)
    p.add_argument("--eval-every", type=int, default=5000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="override the env's time limit (default: the registered 1000)")
    p.add_argument("--dataset-id", default=None, help="default torchrl-opt/<task>/<kind>-v0")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--allow-below-target", action="store_true",
                   help="keep a medium dataset whose agent missed the target (warns loudly)")
    p.add_argument("--author", default="torchrl-opt")
    p.add_argument("--random-policy", default="uniform", choices=RANDOM_POLICIES,
                   help="random kind: uniform actions (default) or a freshly initialised SAC actor")
    p.add_argument("--workers", type=int, default=None,
                   help="random collection processes (default / 0: one per core, at most "
                        f"{MAX_AUTO_WORKERS}; 1: this process); the data do not depend on it")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        result = generate_dataset(
            args.task, args.kind, size=args.size, seed=args.seed, target_score=args.target_score,
            target_return_value=args.target_return, max_env_steps=args.max_env_steps,
            algo=args.algo, device=args.device, eval_every=args.eval_every,
            eval_episodes=args.eval_episodes, max_episode_steps=args.max_episode_steps,
            dataset_id=args.dataset_id, overwrite=args.overwrite,
            allow_below_target=args.allow_below_target, progress=not args.no_progress,
            author=args.author, random_policy=args.random_policy, workers=args.workers,
        )
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = result.metadata
    print(
        f"wrote {result.dataset_id} ({result.num_transitions} transitions, {result.num_episodes} "
        f"episodes, mean return {m['mean_episode_return']:.2f} = score "
        f"{m['mean_episode_score']:.1f}) to {result.path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

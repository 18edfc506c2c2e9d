"""Offline datasets as TensorDicts in TorchRL's transition layout.

Three sources, one output. :func:`load_offline_data` returns a flat ``TensorDict`` of batch
``[N]``::

    observation            float32 [N, obs_dim]
    action                 float32 [N, act_dim]
    episode                int64   [N]        (0, 1, 2, ... in storage order)
    next/observation       float32 [N, obs_dim]
    next/reward            float32 [N, 1]
    next/terminated        bool    [N, 1]     (the MDP ended: no bootstrap)
    next/truncated         bool    [N, 1]     (time limit or cut: bootstrap from next/observation)
    next/done              bool    [N, 1]     (terminated | truncated)

``episode`` numbers the dataset's episodes (a new id after every ``next/done`` row); it is
offline metadata, not part of the transition layout: :func:`~torchrl_opt.data.replay.make_replay`
does not store it (so online batches, e.g. a ``torchrl.collectors.Collector``'s, need not carry
it) unless asked with ``extra_keys=["episode"]`` or ``online_fill={"episode": -1}``.

:func:`make_offline_replay_buffer` wraps the data in a TorchRL ``TensorDictReplayBuffer`` whose
``LazyTensorStorage`` lives on the requested device. Sources (:class:`DatasetSpec` ``source``):

* ``"minari"``: a Minari dataset id (``"D4RL/pen/cloned-v2"``), downloaded through Minari's own
  client when missing locally (``minari.load_dataset(id, download=True)``);
* ``"local_minari"``: a Minari dataset already under the Minari data root (respects
  ``MINARI_DATASETS_PATH``), e.g. one written by :mod:`torchrl_opt.data.generate`;
* ``"d4rl_hdf5"``: a D4RL hdf5 file (``observations, actions, rewards, terminals, timeouts`` and
  optionally ``next_observations``).

Reading goes through Minari's public API (not TorchRL's ``MinariExperienceReplay``, which keeps a
second float64 memmap copy under ``~/.cache/torchrl``); the flattened result is cached once per
dataset file under ``<minari root>/.torchrl_opt_cache`` because Minari's per-episode hdf5 reads
cost about 1 ms per episode (a 1M-step random dataset has ~50k episodes).

Dict observations (AntMaze: ``observation`` 27-d without the torso x-y, ``achieved_goal`` = torso
x-y, ``desired_goal`` = goal x-y) are flattened by concatenating the keys of ``obs_keys`` in
order. The registry default for AntMaze is ``("achieved_goal", "observation")``, which is exactly
D4RL's 29-d AntMaze state ``[qpos (15), qvel (14)]`` (D4RL's observation does not contain the
goal: its evaluation goal is fixed per maze). Use ``("achieved_goal", "observation",
"desired_goal")`` for goal-conditioned agents; ``("observation", "desired_goal")`` drops the ant's
own position and should not be used for navigation.

Timeouts are not terminals: a timeout gives ``terminated=False, truncated=True, done=True``.

This module also holds the *registry* (the one place mapping torchrl-opt task names to Gymnasium
env ids, Minari ids, D4RL names and the generation targets): :data:`TASKS`,
:func:`get_dataset_entry`, :func:`local_dataset_id`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

from torchrl_opt.data.scores import D4RL_REF_SCORES, task_from_name

__all__ = [
    # errors
    "DatasetError",
    "UnknownDatasetError",
    "DatasetFormatError",
    "SpaceMismatchError",
    "ActionOutOfBoundsError",
    "NonFiniteDataError",
    # registry
    "TaskInfo",
    "DatasetEntry",
    "TASKS",
    "LOCAL_NAMESPACE",
    "GENERATED_KINDS",
    "get_dataset_entry",
    "local_dataset_id",
    "list_dataset_entries",
    # loading
    "DatasetSpec",
    "DatasetMetadata",
    "SOURCES",
    "minari_root",
    "load_offline_data",
    "make_offline_replay_buffer",
    "dataset_metadata",
    "validate_transitions",
    "flatten_observation",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class DatasetError(Exception):
    """Base class of every offline-dataset error in torchrl-opt."""


class UnknownDatasetError(DatasetError, LookupError):
    """The dataset (id, file, task/kind, or source) does not exist or cannot be fetched."""


class DatasetFormatError(DatasetError, ValueError):
    """The file exists but does not have the expected layout (missing keys, ragged lengths)."""


class SpaceMismatchError(DatasetError, ValueError):
    """Observations or actions do not match the environment's spaces."""


class ActionOutOfBoundsError(SpaceMismatchError):
    """Some actions lie outside the action space bounds (beyond the tolerance)."""


class NonFiniteDataError(DatasetError, ValueError):
    """NaN or +-inf in observations, actions or rewards."""


# --------------------------------------------------------------------------------------------
# Registry (the single place mapping task names to env ids / dataset ids)
# --------------------------------------------------------------------------------------------
#: Namespace of the datasets torchrl-opt generates locally (``torchrl-opt/<task>/<kind>-v0``).
LOCAL_NAMESPACE = "torchrl-opt"

#: Dataset kinds :mod:`torchrl_opt.data.generate` can build (MuJoCo tasks only).
GENERATED_KINDS = ("random", "medium", "medium-replay", "expert")

#: D4RL's AntMaze state: ``achieved_goal`` (torso x-y) then ``observation`` (the other 27 dims).
ANTMAZE_OBS_KEYS = ("achieved_goal", "observation")


@dataclass(frozen=True)
class TaskInfo:
    """A task family of the library.

    Attributes:
        name: torchrl-opt task name (``"walker2d"``); also the key of the reference-score table.
        domain: ``"mujoco"``, ``"antmaze"`` or ``"adroit"``.
        env_id: default Gymnasium env id (AntMaze entries override it per maze).
        kinds: dataset kinds available for this task.
        obs_keys: flattening order of dict observations, None for flat Box observations.
        medium_target_score: normalised score (x100) at which the behaviour agent of the
            ``medium`` and ``medium-replay`` datasets stops training; the mean normalised return of
            D4RL's ``<task>-medium-v2`` dataset (D4RL trained SAC, stopped it early and collected
            with the stochastic policy; the datasets average about one third of expert for the
            harder tasks: halfcheetah 40.7, hopper 44.3, walker2d 62.1, ant 80.3). These are
            literature values for the D4RL data (mujoco-py v2 envs), not re-measured here.
        requires: extra pip package the env needs (None when plain ``gymnasium[mujoco]``).
    """

    name: str
    domain: str
    env_id: str
    kinds: tuple[str, ...]
    obs_keys: tuple[str, ...] | None = None
    medium_target_score: float | None = None
    requires: str | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """One (task, kind) dataset of the registry.

    Attributes:
        task, kind: registry keys (``"walker2d"``, ``"medium-replay"``).
        env_id: Gymnasium env id the data belong to.
        d4rl_name: the original D4RL dataset name (``"walker2d-medium-replay-v2"``).
        minari_id: remote Minari id when Minari hosts this dataset, else None. For MuJoCo,
            Minari's ``mujoco/<task>/{medium,expert}-v0`` are Minari's own Gymnasium-v5 datasets,
            *not* D4RL re-creations; torchrl-opt's default for MuJoCo is the locally generated
            dataset (``local_id``).
        local_id: id of the locally generated dataset (``torchrl-opt/<task>/<kind>-v0``) for
            kinds :mod:`torchrl_opt.data.generate` can build, else None.
        obs_keys: flattening order of dict observations (None for Box observations).
    """

    task: str
    kind: str
    env_id: str
    d4rl_name: str
    minari_id: str | None
    local_id: str | None
    obs_keys: tuple[str, ...] | None = None

    @property
    def default_source(self) -> tuple[str, str]:
        """``(source, id)`` recipes use by default: the local dataset if generated, else Minari."""
        if self.local_id is not None:
            return "local_minari", self.local_id
        assert self.minari_id is not None
        return "minari", self.minari_id


_MUJOCO_KINDS = GENERATED_KINDS
_ANTMAZE_KINDS = (
    "umaze",
    "umaze-diverse",
    "medium-play",
    "medium-diverse",
    "large-play",
    "large-diverse",
)
_ADROIT_KINDS = ("human", "cloned", "expert")

TASKS: Mapping[str, TaskInfo] = {
    "halfcheetah": TaskInfo("halfcheetah", "mujoco", "HalfCheetah-v5", _MUJOCO_KINDS, None, 40.7),
    "hopper": TaskInfo("hopper", "mujoco", "Hopper-v5", _MUJOCO_KINDS, None, 44.3),
    "walker2d": TaskInfo("walker2d", "mujoco", "Walker2d-v5", _MUJOCO_KINDS, None, 62.1),
    "ant": TaskInfo("ant", "mujoco", "Ant-v5", _MUJOCO_KINDS, None, 80.3),
    "antmaze": TaskInfo(
        "antmaze", "antmaze", "AntMaze_UMaze-v4", _ANTMAZE_KINDS, ANTMAZE_OBS_KEYS,
        requires="gymnasium-robotics",
    ),
    "pen": TaskInfo("pen", "adroit", "AdroitHandPen-v1", _ADROIT_KINDS, requires="gymnasium-robotics"),
    "hammer": TaskInfo(
        "hammer", "adroit", "AdroitHandHammer-v1", _ADROIT_KINDS, requires="gymnasium-robotics"
    ),
    "door": TaskInfo("door", "adroit", "AdroitHandDoor-v1", _ADROIT_KINDS, requires="gymnasium-robotics"),
    "relocate": TaskInfo(
        "relocate", "adroit", "AdroitHandRelocate-v1", _ADROIT_KINDS, requires="gymnasium-robotics"
    ),
}

# The Gymnasium-Robotics env each D4RL AntMaze dataset was re-collected in by Minari
# (Farama's minari-dataset-generation-scripts, D4RL/antmaze). Evaluation uses the dataset's
# stored eval_env_spec (fixed reset and goal cells), see DatasetMetadata.eval_env_spec.
_ANTMAZE_ENVS = {
    "umaze": "AntMaze_UMaze-v4",
    "umaze-diverse": "AntMaze_UMaze-v4",
    "medium-play": "AntMaze_Medium-v4",
    "medium-diverse": "AntMaze_Medium_Diverse_GR-v4",
    "large-play": "AntMaze_Large-v4",
    "large-diverse": "AntMaze_Large_Diverse_GR-v4",
}
_ANTMAZE_MINARI_VERSION = 1
_ANTMAZE_ENVS_BASES = {v.split("-v")[0] for v in _ANTMAZE_ENVS.values()}
_ADROIT_MINARI_VERSION = 2


def local_dataset_id(task: str, kind: str, *, size: int | None = None, seed: int = 0,
                     default_size: int | None = None) -> str:
    """Id of a locally generated dataset: ``torchrl-opt/<task>/<kind>-v0``.

    Non-default sizes or seeds are part of the name so that cached datasets never alias:
    ``torchrl-opt/hopper/random-n1000-seed3-v0``.
    """
    name = kind
    if size is not None and size != default_size:
        name += f"-n{size}"
    if seed != 0:
        name += f"-seed{seed}"
    return f"{LOCAL_NAMESPACE}/{task}/{name}-v0"


def get_dataset_entry(task: str, kind: str) -> DatasetEntry:
    """Registry lookup of ``(task, kind)``.

    Raises:
        UnknownDatasetError: unknown task or kind (the message lists the valid ones).
    """
    info = TASKS.get(task)
    if info is None:
        raise UnknownDatasetError(f"Unknown task {task!r}; known tasks: {sorted(TASKS)}")
    if kind not in info.kinds:
        raise UnknownDatasetError(
            f"Unknown dataset kind {kind!r} for task {task!r}; known kinds: {list(info.kinds)}"
        )
    if info.domain == "mujoco":
        minari_id = f"mujoco/{task}/{kind}-v0" if kind in ("medium", "expert") else None
        return DatasetEntry(
            task, kind, info.env_id, f"{task}-{kind}-v2", minari_id,
            local_dataset_id(task, kind),
        )
    if info.domain == "antmaze":
        return DatasetEntry(
            task, kind, _ANTMAZE_ENVS[kind], f"antmaze-{kind}-v2",
            f"D4RL/antmaze/{kind}-v{_ANTMAZE_MINARI_VERSION}", None, info.obs_keys,
        )
    return DatasetEntry(
        task, kind, info.env_id, f"{task}-{kind}-v1",
        f"D4RL/{task}/{kind}-v{_ADROIT_MINARI_VERSION}", None,
    )


def list_dataset_entries() -> list[DatasetEntry]:
    """Every ``(task, kind)`` entry of the registry."""
    return [get_dataset_entry(t, k) for t, info in TASKS.items() for k in info.kinds]


# --------------------------------------------------------------------------------------------
# Spec and metadata
# --------------------------------------------------------------------------------------------
SOURCES = ("minari", "local_minari", "d4rl_hdf5")


@dataclass
class DatasetSpec:
    """Hydra-friendly description of an offline dataset.

    Attributes:
        source: ``"minari"`` (id; download when missing), ``"local_minari"`` (id under the Minari
            root, never downloads) or ``"d4rl_hdf5"`` (file path).
        id_or_path: Minari dataset id or hdf5 path.
        env_id: Gymnasium env id to validate against; default: the dataset's own env (Minari).
        device: device of the returned tensors / replay storage.
        obs_keys: flattening order for dict observations (default: registry / sorted keys).
        validate: check shapes, action bounds and finiteness.
        action_tolerance: absolute slack allowed on the action bounds.
        clip_actions: clip out-of-bound actions into the bounds instead of raising.
        cache: cache the flattened Minari data under ``<minari root>/.torchrl_opt_cache``.
    """

    source: str = "local_minari"
    id_or_path: str = ""
    env_id: str | None = None
    device: str = "cpu"
    obs_keys: list[str] | None = None
    validate: bool = True
    action_tolerance: float = 1e-5
    clip_actions: bool = False
    cache: bool = True


@dataclass
class DatasetMetadata:
    """What a dataset says about itself (plus the D4RL table's reference returns)."""

    dataset_id: str
    source: str
    env_id: str | None
    total_steps: int | None
    total_episodes: int | None
    ref_min_score: float | None
    ref_max_score: float | None
    d4rl_ref_min_score: float | None
    d4rl_ref_max_score: float | None
    eval_env_spec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def minari_root() -> Path:
    """The Minari data root (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


def _coerce_spec(spec: DatasetSpec | Mapping[str, Any] | str, overrides: Mapping[str, Any]) -> DatasetSpec:
    if isinstance(spec, str):
        spec = DatasetSpec(source="local_minari", id_or_path=spec)
    elif isinstance(spec, Mapping):
        spec = DatasetSpec(**dict(spec))
    elif not isinstance(spec, DatasetSpec):
        # OmegaConf DictConfig and other mapping-likes
        try:
            spec = DatasetSpec(**dict(spec))  # type: ignore[arg-type]
        except TypeError as exc:
            raise TypeError(f"Cannot build a DatasetSpec from {type(spec).__name__}") from exc
    if overrides:
        spec = DatasetSpec(**{**spec.__dict__, **overrides})
    if spec.source not in SOURCES:
        raise UnknownDatasetError(f"Unknown dataset source {spec.source!r}; expected one of {SOURCES}")
    if not spec.id_or_path:
        raise UnknownDatasetError("DatasetSpec.id_or_path is empty")
    return spec


def _registry_obs_keys(dataset_id: str) -> tuple[str, ...] | None:
    try:
        task = task_from_name(dataset_id)
    except LookupError:
        return None
    info = TASKS.get(task)
    return info.obs_keys if info is not None else None


# --------------------------------------------------------------------------------------------
# Observation flattening and spaces
# --------------------------------------------------------------------------------------------
def flatten_observation(obs: Any, obs_keys: Sequence[str] | None) -> np.ndarray:
    """Concatenate a dict observation's arrays along the last axis in ``obs_keys`` order.

    A plain array is returned unchanged. Missing keys raise :class:`SpaceMismatchError`.
    """
    if not isinstance(obs, Mapping):
        return np.asarray(obs)
    keys = list(obs_keys) if obs_keys is not None else sorted(obs)
    missing = [k for k in keys if k not in obs]
    if missing:
        raise SpaceMismatchError(
            f"Dict observation lacks keys {missing}; it has {sorted(obs)}"
        )
    parts = []
    for k in keys:
        value = np.asarray(obs[k])
        if isinstance(obs[k], Mapping):
            raise SpaceMismatchError(f"Nested dict observation under {k!r} is not supported")
        parts.append(value.reshape(value.shape[0], -1) if value.ndim > 1 else value[:, None])
    return np.concatenate(parts, axis=-1)


def _space_shape_bounds(space: Any, obs_keys: Sequence[str] | None = None
                        ) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    """(shape, low, high) of a Gymnasium Box/Dict space or a TorchRL spec (Dict flattened)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        keys = list(obs_keys) if obs_keys is not None else sorted(space.spaces)
        missing = [k for k in keys if k not in space.spaces]
        if missing:
            raise SpaceMismatchError(f"Dict space lacks keys {missing}; it has {sorted(space.spaces)}")
        subs = [_space_shape_bounds(space.spaces[k]) for k in keys]
        dim = sum(int(np.prod(s[0])) for s in subs)
        lows = [np.broadcast_to(s[1], s[0]).reshape(-1) if s[1] is not None else np.full(int(np.prod(s[0])), -np.inf) for s in subs]
        highs = [np.broadcast_to(s[2], s[0]).reshape(-1) if s[2] is not None else np.full(int(np.prod(s[0])), np.inf) for s in subs]
        return (dim,), np.concatenate(lows), np.concatenate(highs)
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape), np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    # TorchRL specs: Composite -> its "observation" entry; Bounded has low/high.
    if hasattr(space, "keys") and callable(space.keys) and "observation" in space.keys():
        space = space["observation"]
    shape = getattr(space, "shape", None)
    if shape is None:
        raise TypeError(f"Unsupported space type {type(space).__name__}")
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    to_np = lambda x: None if x is None else np.asarray(torch.as_tensor(x).double().cpu())  # noqa: E731
    return tuple(int(s) for s in shape), to_np(low), to_np(high)


def _env_spaces(env_id: str) -> tuple[Any, Any] | None:
    """(observation_space, action_space) of a Gymnasium env, or None when it is unknown."""
    import gymnasium as gym

    if env_id not in gym.registry:
        try:
            import gymnasium_robotics  # noqa: F401

            gym.register_envs(gymnasium_robotics)
        except ImportError:
            pass
    if env_id not in gym.registry:
        return None
    env = gym.make(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
_REQUIRED_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
)


def _key_name(key: str | tuple[str, ...]) -> str:
    return "/".join(key) if isinstance(key, tuple) else key


def validate_transitions(
    data: TensorDict,
    *,
    observation_space: Any | None = None,
    action_space: Any | None = None,
    obs_keys: Sequence[str] | None = None,
    action_tolerance: float = 1e-5,
    clip_actions: bool = False,
) -> TensorDict:
    """Check a flat transition TensorDict; returns it (actions clipped when ``clip_actions``).

    Checks: the layout keys exist and ``data`` is a non-empty flat batch; observations,
    next observations, actions and rewards are finite; observation / action shapes equal the
    spaces' shapes; ``low - tol <= action <= high + tol`` element-wise.

    Raises:
        DatasetFormatError: missing keys, empty or non-flat data.
        NonFiniteDataError: NaN/inf (message names the key, the count and the first index).
        SpaceMismatchError: wrong observation or action shape.
        ActionOutOfBoundsError: actions outside the bounds (unless ``clip_actions``).
    """
    missing = [_key_name(k) for k in _REQUIRED_KEYS if k not in data.keys(include_nested=True)]
    if missing:
        raise DatasetFormatError(f"Transitions lack keys {missing}")
    if data.batch_dims != 1 or data.numel() == 0:
        raise DatasetFormatError(f"Expected a non-empty flat batch [N], got batch_size {tuple(data.batch_size)}")
    for key in ("observation", "action", ("next", "observation"), ("next", "reward")):
        value = data.get(key)
        bad = ~torch.isfinite(value)
        if bad.any():
            rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().squeeze(-1)
            n_nan = int(torch.isnan(value).sum())
            raise NonFiniteDataError(
                f"{_key_name(key)} has {int(bad.sum())} non-finite values ({n_nan} NaN) in "
                f"{rows.numel()} transitions; first at index {int(rows[0])}"
            )
    obs, next_obs = data.get("observation"), data.get(("next", "observation"))
    if obs.shape != next_obs.shape:
        raise DatasetFormatError(f"observation {tuple(obs.shape)} vs next/observation {tuple(next_obs.shape)}")
    if observation_space is not None:
        shape, _, _ = _space_shape_bounds(observation_space, obs_keys)
        if tuple(obs.shape[1:]) != tuple(shape):
            raise SpaceMismatchError(
                f"Observation shape {tuple(obs.shape[1:])} does not match the env's observation "
                f"space shape {tuple(shape)}"
            )
    if action_space is not None:
        shape, low, high = _space_shape_bounds(action_space)
        action = data.get("action")
        if tuple(action.shape[1:]) != tuple(shape):
            raise SpaceMismatchError(
                f"Action shape {tuple(action.shape[1:])} does not match the env's action space "
                f"shape {tuple(shape)}"
            )
        if low is not None and high is not None:
            low_t = torch.as_tensor(low, dtype=torch.float64, device=action.device)
            high_t = torch.as_tensor(high, dtype=torch.float64, device=action.device)
            a64 = action.double()
            out = (a64 < low_t - action_tolerance) | (a64 > high_t + action_tolerance)
            if out.any():
                if not clip_actions:
                    rows = out.any(-1).nonzero().squeeze(-1)
                    excess = torch.maximum(low_t - a64, a64 - high_t).clamp_min(0).max()
                    raise ActionOutOfBoundsError(
                        f"{rows.numel()} actions lie outside the action bounds "
                        f"[{low.min():g}, {high.max():g}] by up to {float(excess):.3g} (tolerance "
                        f"{action_tolerance:g}); first at index {int(rows[0])}. Pass "
                        "clip_actions=True to clip them."
                    )
                data.set("action", torch.clamp(a64, low_t, high_t).to(action.dtype))
    return data


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------
def _assemble(
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    next_obs: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
) -> TensorDict:
    """Build the flat TorchRL-layout TensorDict from numpy columns (episode ids from done)."""
    n = obs.shape[0]
    terminated = np.asarray(terminated, dtype=bool).reshape(n)
    truncated = np.asarray(truncated, dtype=bool).reshape(n) & ~terminated
    done = terminated | truncated
    episode = np.zeros(n, dtype=np.int64)
    if n > 1:
        episode[1:] = np.cumsum(done[:-1])
    f32 = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # noqa: E731
    flag = lambda x: torch.from_numpy(np.ascontiguousarray(x)).reshape(n, 1)  # noqa: E731
    return TensorDict(
        {
            "observation": f32(obs.reshape(n, -1)),
            "action": f32(action.reshape(n, -1)),
            "episode": torch.from_numpy(episode),
            "next": {
                "observation": f32(next_obs.reshape(n, -1)),
                "reward": f32(np.asarray(reward).reshape(n, 1)),
                "terminated": flag(terminated),
                "truncated": flag(truncated),
                "done": flag(done),
            },
        },
        batch_size=[n],
    )


def _read_d4rl_hdf5(path: Path) -> tuple[TensorDict, dict[str, Any]]:
    """Read a D4RL hdf5 file.

    With ``next_observations``: one transition per row, ``terminated = terminals``,
    ``truncated = timeouts & ~terminals``. Without it (D4RL v0/v1 files), ``next_obs[t] =
    obs[t+1]`` as in ``d4rl.qlearning_dataset``: rows whose successor is unknown (a timeout, or
    the file's last row unless it is terminal) are dropped and the previous row of the same
    episode is marked truncated; terminal rows keep ``obs[t+1]`` (or ``obs[t]`` on the last row)
    as a placeholder, ignored by TD targets since ``terminated`` masks bootstrapping.
    """
    import h5py

    if not path.is_file():
        raise UnknownDatasetError(f"D4RL hdf5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetFormatError(f"{path} is not a readable hdf5 file: {exc}") from exc
    with f:
        required = ("observations", "actions", "rewards", "terminals")
        missing = [k for k in required if k not in f]
        if missing:
            raise DatasetFormatError(f"{path} lacks D4RL keys {missing}; it has {sorted(f.keys())}")
        obs = f["observations"][()]
        action = f["actions"][()]
        reward = f["rewards"][()]
        terminals = f["terminals"][()].astype(bool)
        n = obs.shape[0]
        timeouts = f["timeouts"][()].astype(bool) if "timeouts" in f else np.zeros(n, bool)
        next_obs = f["next_observations"][()] if "next_observations" in f else None
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    lengths = {"observations": n, "actions": action.shape[0], "rewards": reward.shape[0],
               "terminals": terminals.shape[0], "timeouts": timeouts.shape[0]}
    if next_obs is not None:
        lengths["next_observations"] = next_obs.shape[0]
    if len(set(lengths.values())) != 1:
        raise DatasetFormatError(f"{path}: columns have different lengths {lengths}")
    if next_obs is not None:
        return _assemble(obs, action, reward, next_obs, terminals, timeouts), attrs
    shifted = np.concatenate([obs[1:], obs[-1:]], axis=0)
    keep = terminals | ~timeouts
    keep[-1] = bool(terminals[-1])
    truncated = np.zeros(n, dtype=bool)
    # the kept predecessor of a dropped row closes its episode by truncation
    dropped = np.nonzero(~keep)[0]
    prev = dropped - 1
    prev = prev[(prev >= 0)]
    prev = prev[keep[prev] & ~terminals[prev] & ~timeouts[prev]]
    truncated[prev] = True
    idx = np.nonzero(keep)[0]
    return _assemble(obs[idx], action[idx], reward[idx], shifted[idx], terminals[idx], truncated[idx]), attrs


def _load_minari(dataset_id: str, download: bool):
    import minari

    root = minari_root()
    local = (root / dataset_id / "data").exists()
    if not local and not download:
        raise UnknownDatasetError(
            f"Minari dataset {dataset_id!r} not found under {root} (MINARI_DATASETS_PATH). "
            "Use source='minari' to download it, or generate it (python -m torchrl_opt.data.generate)."
        )
    try:
        return minari.load_dataset(dataset_id, download=download)
    except Exception as exc:  # minari raises ValueError/FileNotFoundError/HTTP errors
        where = "locally" if not download else "locally nor on the Minari server"
        raise UnknownDatasetError(
            f"Minari dataset {dataset_id!r} could not be found {where}: {exc}"
        ) from exc


def _read_minari(dataset, obs_keys: Sequence[str] | None) -> TensorDict:
    """Flatten every episode of a Minari dataset (observations hold T+1 entries per episode)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    for ep in dataset.iterate_episodes():
        steps = len(ep.rewards)
        if steps == 0:
            continue
        flat = flatten_observation(ep.observations, obs_keys)
        actions = ep.actions
        if isinstance(actions, Mapping):
            raise SpaceMismatchError("Dict action spaces are not supported")
        if flat.shape[0] != steps + 1:
            raise DatasetFormatError(
                f"Episode {ep.id}: {flat.shape[0]} observations for {steps} steps (expected {steps + 1})"
            )
        cols["obs"].append(flat[:-1])
        cols["next"].append(flat[1:])
        cols["act"].append(np.asarray(actions).reshape(steps, -1))
        cols["rew"].append(np.asarray(ep.rewards).reshape(steps))
        cols["term"].append(np.asarray(ep.terminations, dtype=bool).reshape(steps))
        trunc = np.asarray(ep.truncations, dtype=bool).reshape(steps).copy()
        # Every stored episode ends; an unflagged end (e.g. a dataset cut) is a truncation.
        if not (trunc[-1] or ep.terminations[-1]):
            trunc[-1] = True
        cols["trunc"].append(trunc)
    if not cols["obs"]:
        raise DatasetFormatError(f"Minari dataset {dataset.id!r} has no transitions")
    cat = {k: np.concatenate(v, axis=0) for k, v in cols.items()}
    return _assemble(cat["obs"], cat["act"], cat["rew"], cat["next"], cat["term"], cat["trunc"])


_CACHE_FORMAT = 1


def _cache_path(dataset, dataset_id: str, obs_keys: Sequence[str] | None) -> Path:
    data_dir = minari_root() / dataset_id / "data"
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = json.dumps([_CACHE_FORMAT, stamp, list(obs_keys) if obs_keys is not None else None])
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return minari_root() / ".torchrl_opt_cache" / dataset_id / digest


def _read_minari_cached(dataset, dataset_id: str, obs_keys: Sequence[str] | None, cache: bool) -> TensorDict:
    if not cache:
        return _read_minari(dataset, obs_keys)
    path = _cache_path(dataset, dataset_id, obs_keys)
    if (path / "meta.json").exists():
        return TensorDict.load_memmap(path).clone()
    data = _read_minari(dataset, obs_keys)
    # write under a unique temporary name, then rename: a crash never leaves a half cache
    stale = path.parent
    if stale.exists():
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        data.memmap(tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only root must not break loading
        warnings.warn(f"Could not write the dataset cache at {path}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    return data


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def _load(spec: DatasetSpec) -> tuple[TensorDict, DatasetMetadata, Any, Any, tuple[str, ...] | None]:
    obs_keys: tuple[str, ...] | None = tuple(spec.obs_keys) if spec.obs_keys else None
    if spec.source == "d4rl_hdf5":
        path = Path(spec.id_or_path).expanduser()
        data, attrs = _read_d4rl_hdf5(path)
        env_id = spec.env_id or attrs.get("env_id")
        meta = _metadata_from(str(path), spec.source, env_id, attrs, data, None)
        spaces = _env_spaces(env_id) if env_id else None
        if env_id and spaces is None:
            warnings.warn(f"Gymnasium does not know env {env_id!r}: spaces not validated")
        obs_space, act_space = spaces if spaces is not None else (None, None)
        return data, meta, obs_space, act_space, obs_keys
    dataset = _load_minari(spec.id_or_path, download=spec.source == "minari")
    if obs_keys is None:
        obs_keys = _registry_obs_keys(spec.id_or_path)
    import gymnasium as gym

    if isinstance(dataset.observation_space, gym.spaces.Dict) and obs_keys is None:
        obs_keys = tuple(sorted(dataset.observation_space.spaces))
    data = _read_minari_cached(dataset, spec.id_or_path, obs_keys, spec.cache)
    raw = dict(dataset.storage.metadata)
    env_spec = dataset.env_spec
    env_id = spec.env_id or (env_spec.id if env_spec is not None else None)
    meta = _metadata_from(spec.id_or_path, spec.source, env_id, raw, data,
                          raw.get("eval_env_spec"))
    spaces = _env_spaces(env_id) if env_id else None
    if spaces is None:
        # the env is not installed (e.g. gymnasium-robotics): use the spaces the dataset declares
        spaces = (dataset.observation_space, dataset.action_space)
    return data, meta, spaces[0], spaces[1], obs_keys


def _task_for(dataset_id: str, env_id: str | None) -> str | None:
    """Reference-score task of a dataset: from its id, its file name, or its env id."""
    for name in (dataset_id, Path(dataset_id).stem):
        try:
            return task_from_name(name)
        except LookupError:
            pass
    if env_id is not None:
        base = env_id.split("-v")[0]
        for info in TASKS.values():
            if info.env_id.split("-v")[0] == base or base in _ANTMAZE_ENVS_BASES:
                return "antmaze" if base in _ANTMAZE_ENVS_BASES else info.name
    return None


def _metadata_from(dataset_id: str, source: str, env_id: str | None, raw: Mapping[str, Any],
                   data: TensorDict | None, eval_env_spec: Any) -> DatasetMetadata:
    task = _task_for(dataset_id, env_id)
    d4rl = D4RL_REF_SCORES[task] if task is not None else (None, None)
    lo, hi = raw.get("ref_min_score"), raw.get("ref_max_score")
    total_steps = raw.get("total_steps", data.shape[0] if data is not None else None)
    total_eps = raw.get("total_episodes")
    if total_eps is None and data is not None:
        total_eps = int(data["next", "done"].sum())
    keep = {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool)) and k not in
            ("ref_min_score", "ref_max_score", "total_steps", "total_episodes")}
    return DatasetMetadata(
        dataset_id=dataset_id,
        source=source,
        env_id=env_id,
        total_steps=int(total_steps) if total_steps is not None else None,
        total_episodes=int(total_eps) if total_eps is not None else None,
        ref_min_score=float(lo) if lo is not None else None,
        ref_max_score=float(hi) if hi is not None else None,
        d4rl_ref_min_score=d4rl[0],
        d4rl_ref_max_score=d4rl[1],
        eval_env_spec=eval_env_spec if isinstance(eval_env_spec, str) else None,
        extra=keep,
    )


def load_offline_data(
    spec: DatasetSpec | Mapping[str, Any] | str,
    *,
    observation_space: Any | None = None,
    action_space: Any | None = None,
    **overrides: Any,
) -> TensorDict:
    """Load an offline dataset as a flat TensorDict ``[N]`` in TorchRL's layout, on ``spec.device``.

    Args:
        spec: a :class:`DatasetSpec`, a mapping of its fields (e.g. a Hydra config) or a local
            Minari id.
        observation_space: space to validate observations against (a Gymnasium space or a
            TorchRL spec, e.g. ``env.observation_spec``); default: the env's (``spec.env_id`` or
            the dataset's env), or the dataset's declared space when the env is not installed.
        action_space: the same for actions (e.g. ``env.action_spec``).
        **overrides: replace fields of ``spec``.

    Returns:
        ``[N]`` TensorDict with ``observation``, ``action`` (float32), ``episode`` (int64 episode
        id, offline metadata that replays do not store by default) and ``next/observation``,
        ``next/reward`` (float32, ``[N, 1]``), ``next/terminated``, ``next/truncated``,
        ``next/done`` (bool, ``[N, 1]``): see the module docstring.

    Raises:
        DatasetError: its subclasses ``UnknownDatasetError``, ``DatasetFormatError``,
            ``SpaceMismatchError``, ``ActionOutOfBoundsError``, ``NonFiniteDataError``.
    """
    spec = _coerce_spec(spec, overrides)
    data, _, obs_space, act_space, obs_keys = _load(spec)
    if spec.validate:
        data = validate_transitions(
            data,
            observation_space=observation_space if observation_space is not None else obs_space,
            action_space=action_space if action_space is not None else act_space,
            obs_keys=obs_keys,
            action_tolerance=spec.action_tolerance,
            clip_actions=spec.clip_actions,
        )
    return data.to(torch.device(spec.device))


def make_offline_replay_buffer(
    spec: DatasetSpec | Mapping[str, Any] | str,
    *,
    batch_size: int,
    sampler: Any | None = None,
    observation_space: Any | None = None,
    action_space: Any | None = None,
    **overrides: Any,
) -> TensorDictReplayBuffer:
    """A TorchRL ``TensorDictReplayBuffer`` over the whole dataset.

    The storage is a ``LazyTensorStorage`` of exactly ``N`` slots on ``spec.device``, so sampling
    is a device op; ``sampler`` defaults to TorchRL's uniform ``RandomSampler``.
    """
    spec = _coerce_spec(spec, overrides)
    data = load_offline_data(spec, observation_space=observation_space, action_space=action_space)
    kwargs: dict[str, Any] = {}
    if sampler is not None:
        kwargs["sampler"] = sampler
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(data.shape[0], device=torch.device(spec.device)),
        batch_size=batch_size,
        **kwargs,
    )
    buffer.extend(data)
    return buffer


def dataset_metadata(spec: DatasetSpec | Mapping[str, Any] | str, **overrides: Any) -> DatasetMetadata:
    """Metadata of a dataset without loading its transitions (Minari) or from the file (D4RL).

    Returns the env id, the dataset's own ``ref_min_score`` / ``ref_max_score`` when present,
    the D4RL table's reference returns for its task, step / episode counts and, for Minari
    datasets, the evaluation env spec (JSON) the dataset stores.
    """
    spec = _coerce_spec(spec, overrides)
    if spec.source == "d4rl_hdf5":
        data, attrs = _read_d4rl_hdf5(Path(spec.id_or_path).expanduser())
        return _metadata_from(spec.id_or_path, spec.source, spec.env_id or attrs.get("env_id"),
                              attrs, data, None)
    dataset = _load_minari(spec.id_or_path, download=spec.source == "minari")
    raw = dict(dataset.storage.metadata)
    env_spec = dataset.env_spec
    env_id = spec.env_id or (env_spec.id if env_spec is not None else None)
    meta = _metadata_from(spec.id_or_path, spec.source, env_id, raw, None, raw.get("eval_env_spec"))
    extra_path = minari_root() / spec.id_or_path / "torchrl_opt_metadata.json"
    if extra_path.exists():
        meta.extra["torchrl_opt"] = json.loads(extra_path.read_text())
    return meta

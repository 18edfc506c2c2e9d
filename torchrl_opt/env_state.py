"""Exact save/restore of a Gymnasium MuJoCo environment, for bit-identical resumption.

A fine-tuning run that is killed and resumed from a checkpoint continues with *the same*
transitions it would have produced uninterrupted only if everything that determines the next
transitions is restored. For a Gymnasium MuJoCo env that is

* the MuJoCo integration state ``mj_getState(m, d, mjSTATE_INTEGRATION)`` — time, ``qpos``,
  ``qvel``, ``act``, ``ctrl``, applied forces, mocap, equality flags, user/plugin/history data
  and the constraint solver's warm start ``qacc_warmstart``. By MuJoCo's definition this is
  the complete input of ``mj_step``: the next simulation step from it is bit-exact;
* the *derived* ``mjData`` arrays Python env code may read before simulating. After
  ``mj_step`` these describe the state at the start of the last sub-step, not the current
  ``qpos``; ``Ant-v5`` computes its forward velocity as
  ``(xpos_after - xpos_before) / dt`` with ``xpos_before`` read from that stale array, so a
  restore that only re-runs ``mj_forward`` changes the first reward. The model-sized
  kinematic, velocity, force and sensor arrays (:data:`DERIVED_FIELDS`) are therefore copied
  verbatim;
* the env's ``np_random`` generator (reset noise ``qpos0 + U(-s, s)``), bit-generator state
  included, encoded as JSON bytes so that 128-bit PCG64 integers round-trip exactly;
* every ``TimeLimit`` wrapper's elapsed-step counter (truncation time);
* the last observation, which TorchRL's ``Collector`` keeps as its current observation.

:class:`ResumableEnv` is the outermost Gymnasium wrapper that takes and applies such a
snapshot; ``snapshot()`` returns a flat ``dict[str, torch.Tensor]`` that survives
``torch.save`` / ``torch.load(weights_only=True)``. ``restore_on_next_reset(snapshot)``
makes the *next* ``reset()`` restore instead of resetting, which is what a TorchRL
``Collector`` needs (it resets its env at construction and keeps the result as its current
observation). :func:`make_resumable_env`, :func:`env_snapshot` and
:func:`env_restore_on_next_reset` do the same through TorchRL's ``GymWrapper`` /
``TransformedEnv``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

if TYPE_CHECKING:
    from torchrl.envs import TransformedEnv

__all__ = [
    "EnvStateError",
    "ResumableEnv",
    "DERIVED_FIELDS",
    "SNAPSHOT_FORMAT_VERSION",
    "make_resumable_env",
    "find_resumable_env",
    "env_snapshot",
    "env_restore_on_next_reset",
]

SNAPSHOT_FORMAT_VERSION = 1

#: ``mjData`` arrays (all sized by the model, never by the contact / constraint count) that
#: ``mj_forward`` / ``mj_rnePostConstraint`` compute and that env code can read between steps:
#: frame kinematics, centre-of-mass quantities, velocities, forces, actuator and tendon
#: state, sensors and energy, plus the sleep bookkeeping arrays (copied for completeness;
#: no Gymnasium MuJoCo task enables sleeping, so that path is untested).
DERIVED_FIELDS: tuple[str, ...] = (
    "xpos", "xquat", "xmat", "xipos", "ximat", "xanchor", "xaxis",
    "geom_xpos", "geom_xmat", "site_xpos", "site_xmat",
    "cam_xpos", "cam_xmat", "light_xpos", "light_xdir",
    "subtree_com", "cdof", "cinert", "cvel", "cdof_dot", "cacc", "cfrc_int", "cfrc_ext",
    "subtree_linvel", "subtree_angmom",
    "ten_length", "ten_velocity", "actuator_length", "actuator_velocity", "actuator_force",
    "qfrc_bias", "qfrc_passive", "qfrc_spring", "qfrc_damper", "qfrc_gravcomp", "qfrc_fluid",
    "qfrc_actuator", "qfrc_smooth", "qacc_smooth", "qfrc_constraint", "qacc",
    "sensordata", "energy", "tree_asleep", "body_awake",
)  # fmt: skip

# Gymnasium wrappers known to hold no state that affects transitions (TimeLimit's counter is
# captured explicitly). Anything else in the chain is refused unless explicitly allowed.
_STATELESS_WRAPPERS = frozenset(
    {
        "OrderEnforcing",
        "PassiveEnvChecker",
        "TimeLimit",
        "ClipAction",
        "RescaleAction",
        "TransformAction",
        "FlattenObservation",
        "ReshapeObservation",
        "RescaleObservation",
        "DtypeObservation",
        "FilterObservation",
        "TransformObservation",
        "ClipReward",
        "TransformReward",
    }
)

_KEY_VERSION = "format_version"
_KEY_ENV_ID = "env_id"
_KEY_SIGNATURE = "model.signature"
_KEY_SIZES = "model.sizes"
_KEY_STATE_SPEC = "mujoco.state_spec"
_KEY_STATE = "mujoco.state"
_KEY_RNG = "rng"
_KEY_ELAPSED = "time_limit.elapsed_steps"
_KEY_MAX_STEPS = "time_limit.max_episode_steps"
_KEY_OBS = "observation"
_DERIVED_PREFIX = "mjdata."
_SIZE_NAMES = ("nq", "nv", "na", "nu", "nbody", "frame_skip")
_REQUIRED_KEYS = (
    _KEY_VERSION,
    _KEY_ENV_ID,
    _KEY_SIGNATURE,
    _KEY_SIZES,
    _KEY_STATE_SPEC,
    _KEY_STATE,
    _KEY_RNG,
    _KEY_ELAPSED,
    _KEY_MAX_STEPS,
    _KEY_OBS,
)


class EnvStateError(ValueError):
    """An environment snapshot cannot be taken, or does not fit the env it is restored into."""


# --------------------------------------------------------------------------------------------
# encoding helpers
# --------------------------------------------------------------------------------------------


def _str_to_tensor(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _tensor_to_str(tensor: torch.Tensor) -> str:
    return bytes(tensor.to(torch.uint8).tolist()).decode("utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in an RNG state")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    return obj


def _encode_rng(generator: np.random.Generator, seed: int | None) -> torch.Tensor:
    """JSON bytes of ``{"bit_generator_state": ..., "np_random_seed": ...}`` as ``uint8``.

    JSON keeps Python's arbitrary-precision integers, so PCG64's 128-bit ``state``/``inc``
    (and MT19937 / SFC64 / Philox array states) round-trip exactly.
    """
    payload = {"bit_generator_state": generator.bit_generator.state, "np_random_seed": seed}
    return _str_to_tensor(json.dumps(payload, default=_json_default, sort_keys=True))


def _decode_rng(tensor: torch.Tensor) -> tuple[dict[str, Any], int | None]:
    payload = json.loads(_tensor_to_str(tensor), object_hook=_json_object_hook)
    return payload["bit_generator_state"], payload["np_random_seed"]


def _wrapper_chain(env: gym.Env) -> list[gym.Env]:
    """``[env, env.env, env.env.env, ...]`` down to and including the unwrapped env."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


# --------------------------------------------------------------------------------------------
# the wrapper
# --------------------------------------------------------------------------------------------


class ResumableEnv(gym.Wrapper):
    """Outermost Gymnasium wrapper whose state can be saved and restored bit-exactly.

    Args:
        env: a Gymnasium MuJoCo env, typically ``gym.make("Hopper-v5")`` (its
            ``TimeLimit`` / ``OrderEnforcing`` / ``PassiveEnvChecker`` wrappers are handled).
        allow_untracked_wrappers: accept wrappers in ``env``'s chain whose state this class
            does not capture (e.g. ``NormalizeObservation``'s running statistics). Their
            state is then *not* restored; by default such wrappers raise
            :class:`EnvStateError`.

    ``snapshot()`` captures the state after the last ``reset``/``step``; applying it and
    stepping with the same actions reproduces the original observations, rewards and
    ``terminated``/``truncated`` flags bit for bit, across episode boundaries (the reset
    noise comes from the restored ``np_random``).

    Raises:
        EnvStateError: when ``env`` is not a MuJoCo env (no ``model``/``data``) or its
            wrapper chain holds a wrapper with untracked state.
    """

    def __init__(self, env: gym.Env, *, allow_untracked_wrappers: bool = False) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not (hasattr(base, "model") and hasattr(base, "data")):
            raise EnvStateError(
                f"ResumableEnv needs a Gymnasium MuJoCo env (with .model/.data); got "
                f"{type(base).__name__}"
            )
        chain = _wrapper_chain(env)
        untracked = [
            type(w).__name__ for w in chain[:-1] if type(w).__name__ not in _STATELESS_WRAPPERS
        ]
        if untracked and not allow_untracked_wrappers:
            raise EnvStateError(
                f"wrapper(s) {untracked} may hold state that ResumableEnv does not capture; "
                "wrap the env without them or pass allow_untracked_wrappers=True"
            )
        self._time_limits = [w for w in chain if isinstance(w, gym.wrappers.TimeLimit)]
        self._order_enforcing = [w for w in chain if isinstance(w, gym.wrappers.OrderEnforcing)]
        import mujoco

        self._mujoco = mujoco
        self._state_spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        fresh = mujoco.MjData(base.model)
        # keep only fields that exist in this MuJoCo version and are sized by the model
        self._derived_fields = tuple(
            name
            for name in DERIVED_FIELDS
            if isinstance(getattr(fresh, name, None), np.ndarray)
            and getattr(fresh, name).shape == getattr(base.data, name).shape
        )
        self._last_obs: np.ndarray | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset, or — once after :meth:`restore_on_next_reset` — restore the pending snapshot.

        A restoring reset returns the snapshot's observation and the env's reset info for the
        restored state (``_get_reset_info()`` of MuJoCo envs, else ``{}``); ``seed`` and
        ``options`` are then overridden by the snapshot's RNG and state.
        """
        pending, self._pending = self._pending, None
        obs, info = self.env.reset(seed=seed, options=options)
        if pending is None:
            self._last_obs = np.array(obs, copy=True)
            return obs, info
        return self._apply(pending)

    def step(self, action: Any) -> tuple[np.ndarray, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last_obs = np.array(obs, copy=True)
        return obs, reward, terminated, truncated, info

    # ---------------------------------------------------------------- snapshots

    @property
    def env_id(self) -> str:
        """The registered id (``spec.id``) or, without a spec, the env class name."""
        spec = self.env.spec
        return spec.id if spec is not None else type(self.env.unwrapped).__name__

    @property
    def restore_pending(self) -> bool:
        """Whether the next ``reset()`` restores a snapshot instead of resetting."""
        return self._pending is not None

    def _sizes(self) -> list[int]:
        base = self.env.unwrapped
        m = base.model
        return [m.nq, m.nv, m.na, m.nu, m.nbody, int(getattr(base, "frame_skip", 1))]

    def _signature(self) -> int:
        """The model's 64-bit structural signature reinterpreted as int64 (0 if absent)."""
        sig = int(getattr(self.env.unwrapped.model, "signature", 0))
        return int(np.array(sig, dtype=np.uint64).view(np.int64))

    def _describe(self, sizes: list[int]) -> str:
        return ", ".join(f"{n}={v}" for n, v in zip(_SIZE_NAMES, sizes, strict=True))

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Everything that determines the future transitions, as CPU tensors.

        Keys: ``format_version``, ``env_id`` (utf-8 bytes), ``model.signature``,
        ``model.sizes`` (``nq, nv, na, nu, nbody, frame_skip``), ``mujoco.state_spec``,
        ``mujoco.state`` (float64 ``mj_getState`` vector), ``mjdata.<field>`` for the
        :data:`DERIVED_FIELDS` present, ``rng`` (JSON bytes of the bit-generator state),
        ``time_limit.elapsed_steps`` / ``time_limit.max_episode_steps`` (one entry per
        ``TimeLimit``, ``-1`` for no limit) and ``observation``. If a restore is pending,
        the pending snapshot (the state the env will resume from) is returned.

        Raises:
            EnvStateError: before the first ``reset()``, or if the observation is not an array.
        """
        if self._pending is not None:
            return {k: v.clone() for k, v in self._pending.items()}
        if self._last_obs is None:
            raise EnvStateError("call reset() before snapshot(): the env has no current state")
        if not isinstance(self._last_obs, np.ndarray) or self._last_obs.dtype == object:
            raise EnvStateError(
                f"only array observations are supported, got {type(self._last_obs).__name__}"
            )
        base = self.env.unwrapped
        m, d = base.model, base.data
        state = np.empty(self._mujoco.mj_stateSize(m, self._state_spec), dtype=np.float64)
        self._mujoco.mj_getState(m, d, state, self._state_spec)
        snap: dict[str, torch.Tensor] = {
            _KEY_VERSION: torch.tensor(SNAPSHOT_FORMAT_VERSION, dtype=torch.int64),
            _KEY_ENV_ID: _str_to_tensor(self.env_id),
            _KEY_SIGNATURE: torch.tensor(self._signature(), dtype=torch.int64),
            _KEY_SIZES: torch.tensor(self._sizes(), dtype=torch.int64),
            _KEY_STATE_SPEC: torch.tensor(self._state_spec, dtype=torch.int64),
            _KEY_STATE: torch.from_numpy(state),
            _KEY_RNG: _encode_rng(base.np_random, getattr(base, "_np_random_seed", None)),
            _KEY_ELAPSED: torch.tensor(
                [int(w._elapsed_steps or 0) for w in self._time_limits], dtype=torch.int64
            ),
            _KEY_MAX_STEPS: torch.tensor(
                [
                    -1 if w._max_episode_steps is None else int(w._max_episode_steps)
                    for w in self._time_limits
                ],
                dtype=torch.int64,
            ),
            _KEY_OBS: torch.from_numpy(self._last_obs.copy()),
        }
        for name in self._derived_fields:
            snap[_DERIVED_PREFIX + name] = torch.from_numpy(np.array(getattr(d, name), copy=True))
        return snap

    def check_snapshot(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`EnvStateError` unless ``snapshot`` was taken from an env like this one.

        Checks: all keys present and tensors; same format version; same env id, model sizes,
        frame skip and model signature; same MuJoCo state layout; same number of
        ``TimeLimit`` wrappers with the same limits; observation shape.
        """
        if not isinstance(snapshot, Mapping):
            raise EnvStateError(f"a snapshot is a dict of tensors, got {type(snapshot).__name__}")
        wanted = list(_REQUIRED_KEYS) + [_DERIVED_PREFIX + f for f in self._derived_fields]
        missing = [k for k in wanted if k not in snapshot]
        if missing:
            raise EnvStateError(f"snapshot for env {self.env_id!r} is missing keys {missing}")
        not_tensor = [k for k in wanted if not isinstance(snapshot[k], torch.Tensor)]
        if not_tensor:
            raise EnvStateError(f"snapshot entries {not_tensor} are not tensors")
        version = int(snapshot[_KEY_VERSION])
        if version != SNAPSHOT_FORMAT_VERSION:
            raise EnvStateError(
                f"snapshot format version {version} is not supported "
                f"(this code reads version {SNAPSHOT_FORMAT_VERSION})"
            )
        snap_id = _tensor_to_str(snapshot[_KEY_ENV_ID])
        snap_sizes = [int(v) for v in snapshot[_KEY_SIZES].tolist()]
        sizes = self._sizes()
        if snap_id != self.env_id or snap_sizes != sizes:
            raise EnvStateError(
                f"snapshot was taken from env {snap_id!r} ({self._describe(snap_sizes)}) but "
                f"is restored into env {self.env_id!r} ({self._describe(sizes)})"
            )
        if int(snapshot[_KEY_SIGNATURE]) != self._signature():
            raise EnvStateError(
                f"snapshot of {snap_id!r} comes from a different MuJoCo model (signature "
                f"{int(snapshot[_KEY_SIGNATURE])} != {self._signature()}), e.g. another xml_file"
            )
        spec = int(snapshot[_KEY_STATE_SPEC])
        base = self.env.unwrapped
        size = self._mujoco.mj_stateSize(base.model, spec)
        if spec != self._state_spec or snapshot[_KEY_STATE].numel() != size:
            raise EnvStateError(
                f"snapshot MuJoCo state (spec {spec}, {snapshot[_KEY_STATE].numel()} values) "
                f"does not match this env's (spec {self._state_spec}, {size} values); "
                "different MuJoCo version?"
            )
        snap_limits = snapshot[_KEY_MAX_STEPS].tolist()
        limits = [-1 if w._max_episode_steps is None else w._max_episode_steps
                  for w in self._time_limits]  # fmt: skip
        if snap_limits != limits or snapshot[_KEY_ELAPSED].numel() != len(limits):
            raise EnvStateError(
                f"snapshot of {snap_id!r} has TimeLimit max_episode_steps {snap_limits}, "
                f"this env has {limits}"
            )
        for name in self._derived_fields:
            got = tuple(snapshot[_DERIVED_PREFIX + name].shape)
            want = getattr(base.data, name).shape
            if got != want:
                raise EnvStateError(f"snapshot mjData.{name} has shape {got}, expected {want}")
        obs_shape = self.observation_space.shape
        if obs_shape is not None and tuple(snapshot[_KEY_OBS].shape) != tuple(obs_shape):
            raise EnvStateError(
                f"snapshot observation has shape {tuple(snapshot[_KEY_OBS].shape)}, "
                f"{self.env_id!r} observations have shape {tuple(obs_shape)}"
            )

    def restore_on_next_reset(self, snapshot: Mapping[str, torch.Tensor]) -> None:
        """Validate ``snapshot`` now; the next ``reset()`` restores it instead of resetting.

        Later resets are normal. Raises :class:`EnvStateError` if the snapshot does not fit.
        """
        self.check_snapshot(snapshot)
        self._pending = {k: v.detach().clone().cpu() for k, v in snapshot.items()}

    def restore(self, snapshot: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, dict[str, Any]]:
        """Restore ``snapshot`` immediately; returns ``(observation, reset_info)`` like ``reset``.

        The inner env is reset first (so Gymnasium's order/time-limit bookkeeping is in a
        post-reset state), then the saved state overwrites it.
        """
        self.check_snapshot(snapshot)
        self._pending = None
        self.env.reset()
        return self._apply({k: v.detach().cpu() for k, v in snapshot.items()})

    def _apply(self, snap: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, dict[str, Any]]:
        """Write a validated snapshot into the (just reset) env."""
        base = self.env.unwrapped
        m, d = base.model, base.data
        for name in self._derived_fields:
            getattr(d, name)[...] = snap[_DERIVED_PREFIX + name].numpy()
        # the integration state goes last: it is authoritative for qpos/qvel/act/ctrl/...
        state = np.ascontiguousarray(snap[_KEY_STATE].numpy(), dtype=np.float64)
        self._mujoco.mj_setState(m, d, state, int(snap[_KEY_STATE_SPEC]))

        bitgen_state, seed = _decode_rng(snap[_KEY_RNG])
        name = bitgen_state["bit_generator"]
        if type(base.np_random.bit_generator).__name__ == name:
            base.np_random.bit_generator.state = bitgen_state
        else:
            bit_generator = getattr(np.random, name)()
            bit_generator.state = bitgen_state
            base.np_random = np.random.Generator(bit_generator)
        if hasattr(base, "_np_random_seed"):
            base._np_random_seed = seed

        for wrapper, elapsed in zip(self._time_limits, snap[_KEY_ELAPSED].tolist(), strict=True):
            wrapper._elapsed_steps = int(elapsed)
        for wrapper in self._order_enforcing:
            wrapper._has_reset = True

        obs = snap[_KEY_OBS].numpy().copy()
        self._last_obs = obs.copy()
        get_info = getattr(base, "_get_reset_info", None)
        info = dict(get_info()) if callable(get_info) else {}
        return obs, info


# --------------------------------------------------------------------------------------------
# TorchRL helpers
# --------------------------------------------------------------------------------------------


def flatten_dict_observation(env: gym.Env, obs_keys: Sequence[str]) -> gym.Env:
    """``env`` with its dict observations concatenated, in ``obs_keys`` order, into one Box (the
    layout of the offline data, e.g. D4RL's AntMaze state ``[achieved_goal, observation]``).

    Raises:
        EnvStateError: ``env``'s observations are not a dict with those keys.
    """
    space = env.observation_space
    if not isinstance(space, gym.spaces.Dict) or any(k not in space.spaces for k in obs_keys):
        raise EnvStateError(
            f"cannot flatten the observations of {env.spec.id if env.spec else env} by keys "
            f"{list(obs_keys)}: its observation space is {space}"
        )
    parts = [space.spaces[k] for k in obs_keys]
    box = gym.spaces.Box(
        np.concatenate([p.low.reshape(-1) for p in parts]), np.concatenate([p.high.reshape(-1) for p in parts]),
        dtype=np.result_type(*[p.dtype for p in parts]),
    )
    keys = tuple(obs_keys)
    return gym.wrappers.TransformObservation(
        env, lambda obs: np.concatenate([np.asarray(obs[k]).reshape(-1) for k in keys]).astype(box.dtype), box
    )


def make_resumable_env(
    env_id: str | gym.envs.registration.EnvSpec,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    snapshot: Mapping[str, torch.Tensor] | None = None,
    obs_keys: Sequence[str] | None = None,
    **gym_kwargs: Any,
) -> TransformedEnv:
    """``TransformedEnv(GymWrapper(ResumableEnv(gym.make(env_id, **kw))), DoubleToFloat())``.

    The same float32 TorchRL env as :func:`torchrl_opt.envs.make_env`, with a
    :class:`ResumableEnv` as the outermost Gymnasium wrapper. ``env_id`` is a registered id or a
    Gymnasium ``EnvSpec`` (e.g. a dataset's evaluation spec, with its own kwargs); ``obs_keys``
    flattens dict observations in that order (:func:`flatten_dict_observation`). ``seed`` seeds it
    (a reset with that seed); a ``snapshot`` is then scheduled to be restored by the next
    ``reset()`` — which a ``Collector`` built over the env performs at construction.

    Raises:
        ValueError: for an id Gymnasium does not know.
        EnvStateError: for a non-MuJoCo env or a snapshot that does not fit.
    """
    from torchrl.envs import Compose, DoubleToFloat, GymWrapper, TransformedEnv

    if isinstance(env_id, str) and env_id not in gym.registry:
        raise ValueError(f"Unknown Gymnasium environment id {env_id!r}")
    base = gym.make(env_id, **gym_kwargs)
    if obs_keys is not None:
        base = flatten_dict_observation(base, obs_keys)
    env = TransformedEnv(GymWrapper(ResumableEnv(base), device=device), Compose(DoubleToFloat()))
    if seed is not None:
        env.set_seed(seed)
    if snapshot is not None:
        env_restore_on_next_reset(env, snapshot)
    return env


def find_resumable_env(env: Any) -> ResumableEnv:
    """The :class:`ResumableEnv` inside a TorchRL env (or a Gymnasium env).

    Unwraps ``TransformedEnv.base_env`` and ``GymWrapper._env``; the ResumableEnv must be the
    outermost Gymnasium wrapper, because state held by wrappers around it is not captured.

    Raises:
        EnvStateError: for batched TorchRL envs, or when there is no ResumableEnv (or it is
            not the outermost Gymnasium wrapper).
    """
    from torchrl.envs import EnvBase, TransformedEnv
    from torchrl.envs.batched_envs import BatchedEnvBase

    current = env
    while isinstance(current, TransformedEnv):
        current = current.base_env
    if isinstance(current, BatchedEnvBase):
        raise EnvStateError(
            f"{type(current).__name__} runs its envs in workers; snapshot each sub-env instead"
        )
    if isinstance(current, EnvBase):
        inner = getattr(current, "_env", None)
        if inner is None:
            raise EnvStateError(f"{type(current).__name__} does not wrap a Gymnasium env")
        current = inner
    if isinstance(current, ResumableEnv):
        return current
    chain = _wrapper_chain(current) if isinstance(current, gym.Env) else [current]
    outer = [type(w).__name__ for w in chain]
    if any(isinstance(w, ResumableEnv) for w in chain):
        raise EnvStateError(
            f"ResumableEnv must be the outermost Gymnasium wrapper; the chain is {outer}"
        )
    raise EnvStateError(f"no ResumableEnv found in {type(env).__name__} (chain: {outer})")


def env_snapshot(env: Any) -> dict[str, torch.Tensor]:
    """:meth:`ResumableEnv.snapshot` of the ResumableEnv inside ``env`` (a TorchRL env)."""
    return find_resumable_env(env).snapshot()


def env_restore_on_next_reset(env: Any, snapshot: Mapping[str, torch.Tensor]) -> None:
    """:meth:`ResumableEnv.restore_on_next_reset` on the ResumableEnv inside ``env``."""
    find_resumable_env(env).restore_on_next_reset(snapshot)

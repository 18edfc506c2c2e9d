"""Exact environment resumption: ResumableEnv snapshots reproduce transitions bit for bit."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector
from torchrl.envs.utils import step_mdp

from torchrl_opt.env_state import (
    EnvStateError,
    ResumableEnv,
    _decode_rng,
    _encode_rng,
    env_restore_on_next_reset,
    env_snapshot,
    find_resumable_env,
    make_resumable_env,
)
from torchrl_opt.envs import make_env

MAX_STEPS = 20


def _save_load(obj):
    """torch.save / torch.load(weights_only=True) through memory: what a checkpoint does."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _actions(env: gym.Env, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    return rng.uniform(low, high, size=(count, *low.shape)).astype(env.action_space.dtype)


def _play(env: gym.Env, actions: np.ndarray) -> list[tuple]:
    """Step through ``actions``, resetting at episode ends; record every transition."""
    record = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        record.append(("step", obs.copy(), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs, _ = env.reset()
            record.append(("reset", obs.copy()))
    return record


def _assert_same_record(expected: list[tuple], got: list[tuple]) -> None:
    assert len(expected) == len(got)
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a[0] == b[0], f"entry {i}: {a[0]} vs {b[0]}"
        assert np.array_equal(a[1], b[1]), f"entry {i}: observations differ"
        assert a[2:] == b[2:], f"entry {i}: reward/terminated/truncated {a[2:]} vs {b[2:]}"


def _make(env_id: str = "Hopper-v5", **kwargs) -> ResumableEnv:
    return ResumableEnv(gym.make(env_id, max_episode_steps=MAX_STEPS, **kwargs))


# ------------------------------------------------------------------ gymnasium level


# Ant-v5 reads the stale pre-step body position for its velocity reward and its contact
# solver depends on the warm start: it fails unless derived mjData fields and
# mjSTATE_INTEGRATION's warm start are restored. Hopper-v5 exercises termination.
@pytest.mark.parametrize("env_id", ["Hopper-v5", "Ant-v5"])
def test_restore_on_next_reset_replays_identical_transitions(env_id):
    env = _make(env_id)
    env.reset(seed=3)
    k, n = 7, 60
    actions = _actions(env, k + n)
    _play(env, actions[:k])
    assert env.snapshot()["time_limit.elapsed_steps"].item() > 0  # mid-episode
    snap = _save_load(env.snapshot())
    expected = _play(env, actions[k:])
    steps = [r for r in expected if r[0] == "step"]
    assert any(r[4] for r in steps), "the continuation must cross a time-limit truncation"
    assert sum(r[0] == "reset" for r in expected) >= 2  # reset noise matters

    fresh = _make(env_id)
    first_obs, _ = fresh.reset(seed=12345)
    assert not np.array_equal(first_obs, snap["observation"].numpy())  # not trivially equal
    fresh.restore_on_next_reset(snap)
    assert fresh.restore_pending
    obs, info = fresh.reset(seed=999)  # a seed does not override a pending restore
    assert not fresh.restore_pending
    assert isinstance(info, dict)
    assert obs.dtype == np.float64
    np.testing.assert_array_equal(obs, snap["observation"].numpy())
    _assert_same_record(expected, _play(fresh, actions[k:]))


def test_hopper_continuation_contains_termination():
    env = _make()
    env.reset(seed=3)
    record = _play(env, _actions(env, 67))
    steps = [r for r in record if r[0] == "step"]
    assert any(r[3] for r in steps) and any(r[4] for r in steps)


def test_immediate_restore_and_later_resets_are_normal():
    env = _make()
    env.reset(seed=0)
    actions = _actions(env, 40, seed=5)
    _play(env, actions[:5])
    snap = env.snapshot()
    expected = _play(env, actions[5:])
    # immediate restore into the same env, after it moved on
    obs, _ = env.restore(snap)
    np.testing.assert_array_equal(obs, snap["observation"].numpy())
    _assert_same_record(expected, _play(env, actions[5:]))
    # a reset after a restoring reset is a plain reset drawing from the restored RNG
    other = _make()
    other.restore_on_next_reset(snap)
    other.reset()
    state_before = other.unwrapped.np_random.bit_generator.state
    obs, _ = other.reset()
    assert other.unwrapped.np_random.bit_generator.state != state_before  # reset noise drawn
    assert other.snapshot()["time_limit.elapsed_steps"].item() == 0
    assert not np.array_equal(obs, snap["observation"].numpy())


def test_snapshot_restores_exact_physics_and_counters():
    env = _make()
    env.reset(seed=1)
    _play(env, _actions(env, 9))
    data = env.unwrapped.data
    snap = env.snapshot()
    fresh = _make()
    fresh.reset(seed=2)
    fresh.restore(snap)
    fdata = fresh.unwrapped.data
    for name in ("qpos", "qvel", "qacc_warmstart", "ctrl", "xpos", "cfrc_ext"):
        np.testing.assert_array_equal(getattr(fdata, name), getattr(data, name), err_msg=name)
    assert fdata.time == data.time
    assert fresh.unwrapped.np_random.bit_generator.state == (
        env.unwrapped.np_random.bit_generator.state
    )
    limit = fresh.env  # gym.make puts TimeLimit outermost
    assert isinstance(limit, gym.wrappers.TimeLimit)
    assert limit._elapsed_steps == env.env._elapsed_steps


def test_snapshot_is_tensors_and_survives_weights_only_load(tmp_path):
    env = _make()
    env.reset(seed=0)
    _play(env, _actions(env, 4))
    snap = env.snapshot()
    assert all(isinstance(v, torch.Tensor) for v in snap.values())
    path = tmp_path / "ckpt.pt"
    torch.save({"env": snap}, path)
    loaded = torch.load(path, weights_only=True)["env"]
    assert loaded.keys() == snap.keys()
    for key, value in snap.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.SFC64])
def test_rng_encoding_round_trips_exactly(bit_generator):
    gen = np.random.Generator(bit_generator(2**100 + 7))
    gen.random(3)  # move away from the seeded state
    seed = 2**127 + 5  # gymnasium seeds can exceed 64 bits
    state, got_seed = _decode_rng(_save_load(_encode_rng(gen, seed)))
    assert got_seed == seed
    clone = np.random.Generator(bit_generator())
    clone.bit_generator.state = state
    np.testing.assert_array_equal(clone.random(16), gen.random(16))


def test_restore_replaces_a_different_bit_generator_type():
    env = _make()
    env.reset(seed=0)
    snap = env.snapshot()
    expected = env.unwrapped.np_random.random(4)
    other = _make()
    other.reset(seed=1)
    other.unwrapped.np_random = np.random.Generator(np.random.MT19937(0))
    other.restore(snap)
    assert isinstance(other.unwrapped.np_random.bit_generator, np.random.PCG64)
    np.testing.assert_array_equal(other.unwrapped.np_random.random(4), expected)


# ------------------------------------------------------------------ errors


def test_snapshot_from_other_env_raises_naming_both():
    walker = _make("Walker2d-v5")
    walker.reset(seed=0)
    snap = walker.snapshot()
    hopper = _make()
    with pytest.raises(EnvStateError, match=r"Walker2d-v5.*nq=9.*Hopper-v5.*nq=6"):
        hopper.restore_on_next_reset(snap)
    assert not hopper.restore_pending


def test_snapshot_with_wrong_qpos_size_raises():
    env = _make()
    env.reset(seed=0)
    snap = env.snapshot()
    snap["model.sizes"] = snap["model.sizes"].clone()
    snap["model.sizes"][0] += 1
    with pytest.raises(EnvStateError, match=r"nq=7.*nq=6"):
        _make().restore(snap)


def test_snapshot_missing_keys_raises():
    env = _make()
    env.reset(seed=0)
    snap = env.snapshot()
    del snap["rng"], snap["mjdata.xpos"]
    with pytest.raises(EnvStateError, match=r"missing keys \['rng', 'mjdata.xpos'\]"):
        _make().restore_on_next_reset(snap)


def test_other_mismatches_raise():
    env = _make()
    env.reset(seed=0)
    snap = env.snapshot()
    with pytest.raises(EnvStateError, match=r"max_episode_steps \[20\].*\[1000\]"):
        ResumableEnv(gym.make("Hopper-v5")).restore(snap)
    bad = dict(snap, **{"mujoco.state": snap["mujoco.state"][:-1]})
    with pytest.raises(EnvStateError, match="MuJoCo state"):
        _make().restore(bad)
    with pytest.raises(EnvStateError, match="not tensors"):
        _make().restore(dict(snap, observation=snap["observation"].numpy()))
    with pytest.raises(EnvStateError, match="reset"):
        _make().snapshot()


def test_untracked_wrappers_and_non_mujoco_envs_are_refused():
    with pytest.raises(EnvStateError, match="NormalizeObservation"):
        ResumableEnv(gym.wrappers.NormalizeObservation(gym.make("Hopper-v5")))
    env = ResumableEnv(
        gym.wrappers.NormalizeObservation(gym.make("Hopper-v5")), allow_untracked_wrappers=True
    )
    env.reset(seed=0)
    assert "mujoco.state" in env.snapshot()
    with pytest.raises(EnvStateError, match="MuJoCo"):
        ResumableEnv(gym.make("Pendulum-v1"))


def test_find_resumable_env_errors():
    with pytest.raises(EnvStateError, match="no ResumableEnv"):
        env_snapshot(make_env("Hopper-v5"))
    from torchrl.envs import GymWrapper

    inner = gym.wrappers.ClipAction(ResumableEnv(gym.make("Hopper-v5")))
    with pytest.raises(EnvStateError, match="outermost"):
        find_resumable_env(GymWrapper(inner))


# ------------------------------------------------------------------ TorchRL


class _ElementwisePolicy(torch.nn.Module):
    """``a_j = tanh(w_j * obs[idx_j] + b_j)``: a fixed deterministic policy.

    Elementwise on purpose: a ``Linear`` layer's CPU result can differ by one ulp depending on
    the input's memory alignment (seen with a strided rollout slice vs a fresh tensor), which
    would make the comparison below test BLAS kernels instead of the environment.
    """

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.register_buffer("idx", torch.randperm(obs_dim, generator=gen)[:act_dim])
        self.register_buffer("weight", torch.randn(act_dim, generator=gen) * 2)
        self.register_buffer("bias", torch.randn(act_dim, generator=gen) * 0.5)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(obs[..., self.idx] * self.weight + self.bias)


def _policy(obs_dim: int = 11, act_dim: int = 3) -> TensorDictModule:
    return TensorDictModule(_ElementwisePolicy(obs_dim, act_dim), ["observation"], ["action"])


def _collector(env, policy) -> Collector:
    return Collector(
        env, policy, frames_per_batch=7, total_frames=-1, auto_register_policy_transforms=False
    )


def test_make_resumable_env_matches_make_env_layout():
    env = make_resumable_env("Hopper-v5", seed=0)
    plain = make_env("Hopper-v5", seed=0)
    assert isinstance(find_resumable_env(env), ResumableEnv)
    td, td_plain = env.reset(), plain.reset()
    assert td["observation"].dtype == torch.float32
    assert set(td.keys(True)) == set(td_plain.keys(True))
    torch.testing.assert_close(td["observation"], td_plain["observation"], rtol=0, atol=0)


def test_collector_resumes_with_identical_batches():
    policy = _policy()
    env = make_resumable_env("Hopper-v5", seed=0, max_episode_steps=MAX_STEPS)
    collector = _collector(env, policy)
    batches = iter(collector)
    for _ in range(3):
        next(batches)
    checkpoint = _save_load({"env": env_snapshot(env), "collector": collector.state_dict()})
    assert checkpoint["env"]["time_limit.elapsed_steps"].item() > 0  # killed mid-episode
    expected = [next(batches) for _ in range(4)]
    assert sum(int(b["next", "done"].sum()) for b in expected) >= 2  # crosses episode ends

    resumed_env = make_resumable_env(
        "Hopper-v5", seed=123, max_episode_steps=MAX_STEPS, snapshot=checkpoint["env"]
    )
    resumed = _collector(resumed_env, policy)  # its construction reset restores the snapshot
    resumed.load_state_dict(checkpoint["collector"])
    got_batches = iter(resumed)
    for i, want in enumerate(expected):
        got = next(got_batches)
        # TorchRL gives the carrier a fresh trajectory id on load_state_dict: ids shift by one
        assert torch.equal(got["collector", "traj_ids"], want["collector", "traj_ids"] + 1)
        want_, got_ = (b.exclude(("collector", "traj_ids")) for b in (want, got))
        assert set(want_.keys(True, True)) == set(got_.keys(True, True))
        for key in want_.keys(True, True):
            assert torch.equal(want_[key], got_[key]), f"batch {i}, key {key}"


def test_collector_without_restore_differs():
    """Negative control for the test above: a fresh env alone does not reproduce the batches."""
    policy = _policy()
    env = make_resumable_env("Hopper-v5", seed=0, max_episode_steps=MAX_STEPS)
    batches = iter(_collector(env, policy))
    for _ in range(3):
        next(batches)
    want = next(batches)
    fresh = make_resumable_env("Hopper-v5", seed=123, max_episode_steps=MAX_STEPS)
    got = next(iter(_collector(fresh, policy)))
    assert not torch.equal(want["observation"], got["observation"])


def test_env_restore_on_next_reset_through_transformed_env():
    env = make_resumable_env("Hopper-v5", seed=0, max_episode_steps=MAX_STEPS)
    policy = _policy()
    first = env.rollout(3, policy)
    assert not first["next", "done"].any()
    snap = env_snapshot(env)
    expected = env.rollout(
        25, policy, auto_reset=False, tensordict=step_mdp(first[-1]), break_when_any_done=False
    )
    assert expected["next", "done"].any()
    other = make_resumable_env("Hopper-v5", seed=5, max_episode_steps=MAX_STEPS)
    env_restore_on_next_reset(other, snap)
    assert find_resumable_env(other).restore_pending
    got = other.rollout(25, policy, break_when_any_done=False)  # its first reset restores
    assert set(got.keys(True, True)) == set(expected.keys(True, True))
    for key in expected.keys(True, True):
        assert torch.equal(expected[key], got[key]), key

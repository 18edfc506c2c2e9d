"""Offline-dataset loading: round trips across sources, layout invariants, validation errors."""

import re
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

import torchrl_opt.data as data_pkg

from torchrl_opt.data.datasets import (
    ActionOutOfBoundsError,
    DatasetFormatError,
    DatasetSpec,
    NonFiniteDataError,
    SpaceMismatchError,
    UnknownDatasetError,
    dataset_metadata,
    get_dataset_entry,
    list_dataset_entries,
    load_offline_data,
    make_offline_replay_buffer,
    validate_transitions,
)
from torchrl_opt.data.generate import ensure_dataset, generate_dataset
from torchrl_opt.data.replay import (
    OPTIONAL_TRANSITION_KEYS,
    TRANSITION_KEYS,
    DensityRatioEstimator,
    ReplayKeyError,
    make_replay,
)
from torchrl_opt.data.seed_replay import make_seed_batched_replay
from torchrl_opt.envs import make_env

ENV_ID = "Hopper-v5"
N = 300
T_MAX = 15  # short time limit: forces timeouts


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


@pytest.fixture(scope="module")
def reference(hopper_id):
    """The generated dataset as Minari stores it, flattened here by hand from Minari's own episode
    API (independent of ``load_offline_data`` and of how ``generate_dataset`` collects)."""
    import minari

    cols: dict[str, list] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc", "ep")}
    for e, episode in enumerate(minari.load_dataset(hopper_id).iterate_episodes()):
        steps = len(episode.rewards)
        cols["obs"].append(episode.observations[:-1])
        cols["next"].append(episode.observations[1:])
        cols["act"].append(episode.actions)
        cols["rew"].append(episode.rewards)
        cols["term"].append(episode.terminations)
        cols["trunc"].append(episode.truncations)
        cols["ep"].append(np.full(steps, e))
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    flag = lambda x: torch.as_tensor(x, dtype=torch.bool).reshape(-1, 1)  # noqa: E731
    term, trunc = flag(cat["term"]), flag(cat["trunc"])
    assert trunc[-1] or term[-1]  # the writer closes every episode
    return TensorDict(
        {
            "observation": f32(cat["obs"]),
            "action": f32(cat["act"]),
            "episode": torch.as_tensor(cat["ep"], dtype=torch.int64),
            "next": {
                "observation": f32(cat["next"]),
                "reward": f32(cat["rew"]).reshape(-1, 1),
                "terminated": term,
                "truncated": trunc,
                "done": term | trunc,
            },
        },
        batch_size=[len(cat["rew"])],
    )


@pytest.fixture(scope="module")
def hopper_id(minari_root):
    return generate_dataset("hopper", "random", size=N, seed=0, max_episode_steps=T_MAX,
                            progress=False).dataset_id


def _write_d4rl(path, data, *, next_obs=True, **override):
    cols = {
        "observations": data["observation"].numpy(),
        "actions": data["action"].numpy(),
        "rewards": data["next", "reward"].reshape(-1).numpy(),
        "terminals": data["next", "terminated"].reshape(-1).numpy(),
        "timeouts": data["next", "truncated"].reshape(-1).numpy(),
    }
    if next_obs:
        cols["next_observations"] = data["next", "observation"].numpy()
    cols.update(override)
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return path


def _assert_same(a: TensorDict, b: TensorDict):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def test_layout_dtypes_and_shapes(hopper_id):
    data = load_offline_data(DatasetSpec(source="local_minari", id_or_path=hopper_id))
    assert data.batch_size == torch.Size([N])
    assert data["observation"].shape == (N, 11) and data["observation"].dtype == torch.float32
    assert data["action"].shape == (N, 3) and data["action"].dtype == torch.float32
    assert data["next", "reward"].shape == (N, 1) and data["next", "reward"].dtype == torch.float32
    for flag in ("done", "terminated", "truncated"):
        assert data["next", flag].shape == (N, 1) and data["next", flag].dtype == torch.bool


def test_round_trip_every_source_identical(hopper_id, reference, minari_root, tmp_path):
    local = load_offline_data(DatasetSpec(source="local_minari", id_or_path=hopper_id, cache=False))
    cached_first = load_offline_data(hopper_id)  # writes the flat cache
    cached = load_offline_data(hopper_id)  # reads it
    remote_api = load_offline_data(DatasetSpec(source="minari", id_or_path=hopper_id))
    h5 = _write_d4rl(tmp_path / "hopper.hdf5", reference)
    d4rl = load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5), env_id=ENV_ID))
    for other in (local, cached_first, cached, remote_api, d4rl):
        _assert_same(reference, other)
    assert any((minari_root / ".torchrl_opt_cache").rglob("meta.json"))


def test_next_observation_continuity_and_flags(hopper_id):
    data = load_offline_data(hopper_id)
    obs, nxt = data["observation"], data["next", "observation"]
    done = data["next", "done"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1)
    trunc = data["next", "truncated"].squeeze(-1)
    inside = ~done[:-1]
    assert inside.any()
    assert torch.equal(nxt[:-1][inside], obs[1:][inside])
    assert torch.equal(done, term | trunc)
    assert not (term & trunc).any()
    # episode lengths: timeouts exactly at T_MAX steps, terminations earlier; last one is the cut
    ep = data["episode"]
    lengths = torch.bincount(ep)
    last_step = torch.nonzero(done).squeeze(-1)
    assert torch.equal(last_step, torch.cumsum(lengths, 0) - 1)
    for e, idx in enumerate(last_step[:-1].tolist()):
        if trunc[idx]:
            assert lengths[e] == T_MAX  # a timeout is a truncation, not a terminal
        else:
            assert term[idx] and lengths[e] <= T_MAX
    assert trunc.sum() >= 2 and term.sum() >= 1  # both kinds of episode end occur
    # a new episode starts after every done
    assert torch.equal(ep[1:] - ep[:-1], done[:-1].long())


def test_d4rl_without_next_observations_drops_timeout_rows(tmp_path):
    # two episodes: [0,1,2 timeout] and [3,4 terminal], then [5,6] cut at file end
    obs = np.arange(7, dtype=np.float32)[:, None].repeat(2, 1)
    act = np.zeros((7, 3), np.float32)
    rew = np.arange(7, dtype=np.float32)
    terminals = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    timeouts = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    path = tmp_path / "v0.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in dict(observations=obs, actions=act, rewards=rew, terminals=terminals,
                         timeouts=timeouts).items():
            f.create_dataset(k, data=v)
    data = load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(path)))
    # rows 2 (timeout: successor unknown) and 6 (file end) are dropped
    assert data["next", "reward"].squeeze(-1).tolist() == [0, 1, 3, 4, 5]
    assert data["observation"][:, 0].tolist() == [0, 1, 3, 4, 5]
    assert data["next", "observation"][:, 0].tolist() == [1, 2, 4, 5, 6]
    assert data["next", "terminated"].squeeze(-1).tolist() == [False, False, False, True, False]
    assert data["next", "truncated"].squeeze(-1).tolist() == [False, True, False, False, True]
    assert data["episode"].tolist() == [0, 0, 1, 1, 2]


def test_replay_buffer_on_device(hopper_id, reference):
    rb = make_offline_replay_buffer(hopper_id, batch_size=32, device="cpu")
    assert len(rb) == N
    sample = rb.sample()
    assert sample.batch_size == torch.Size([32])
    assert sample["next", "observation"].shape == (32, 11)
    stored = rb.storage[:]
    assert torch.equal(stored["observation"], reference["observation"])


def test_metadata_helper(hopper_id, tmp_path, reference):
    meta = dataset_metadata(hopper_id)
    assert meta.env_id == ENV_ID
    assert meta.ref_min_score == pytest.approx(-20.272305)
    assert meta.ref_max_score == pytest.approx(3234.3)
    assert (meta.d4rl_ref_min_score, meta.d4rl_ref_max_score) == (-20.272305, 3234.3)
    assert meta.total_steps == N
    assert meta.extra["torchrl_opt"]["kind"] == "random"
    h5 = _write_d4rl(tmp_path / "hopper-random-v2.hdf5", reference)
    m2 = dataset_metadata(DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5)))
    assert m2.ref_min_score is None and m2.d4rl_ref_max_score == 3234.3
    assert m2.total_episodes == int(reference["next", "done"].sum())


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_unknown_dataset_errors(minari_root, tmp_path):
    with pytest.raises(UnknownDatasetError, match="not found"):
        load_offline_data(DatasetSpec(source="local_minari", id_or_path="torchrl-opt/hopper/nope-v0"))
    with pytest.raises(UnknownDatasetError, match="not found"):
        load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(tmp_path / "missing.hdf5")))
    with pytest.raises(UnknownDatasetError, match="source"):
        load_offline_data(DatasetSpec(source="rlds", id_or_path="x"))
    with pytest.raises(UnknownDatasetError, match="Unknown task"):
        get_dataset_entry("cartpole", "random")
    with pytest.raises(UnknownDatasetError, match="kind"):
        get_dataset_entry("walker2d", "umaze")


def test_bad_hdf5_format(tmp_path, reference):
    path = _write_d4rl(tmp_path / "bad.hdf5", reference, terminals=None)
    with pytest.raises(DatasetFormatError, match="terminals"):
        load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(path)))
    ragged = _write_d4rl(tmp_path / "ragged.hdf5", reference,
                         rewards=reference["next", "reward"].reshape(-1).numpy()[:-1])
    with pytest.raises(DatasetFormatError, match="different lengths"):
        load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(ragged)))


def test_space_mismatch_errors(hopper_id, tmp_path, reference):
    wrong_obs = gym.spaces.Box(-np.inf, np.inf, (12,), np.float64)
    with pytest.raises(SpaceMismatchError, match="Observation shape"):
        load_offline_data(hopper_id, observation_space=wrong_obs)
    wrong_act = gym.spaces.Box(-1, 1, (6,), np.float32)
    with pytest.raises(SpaceMismatchError, match="Action shape"):
        load_offline_data(hopper_id, action_space=wrong_act)
    # the file's data belong to Hopper; validating against Walker2d's spaces must fail
    h5 = _write_d4rl(tmp_path / "h.hdf5", reference)
    with pytest.raises(SpaceMismatchError):
        load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5), env_id="Walker2d-v5"))


def test_action_bounds(tmp_path, reference):
    actions = reference["action"].numpy().copy()
    actions[7, 1] = 1.5
    h5 = _write_d4rl(tmp_path / "oob.hdf5", reference, actions=actions)
    spec = DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5), env_id=ENV_ID)
    with pytest.raises(ActionOutOfBoundsError, match="first at index 7"):
        load_offline_data(spec)
    clipped = load_offline_data(spec, clip_actions=True)
    assert clipped["action"][7, 1] == 1.0
    assert torch.equal(clipped["action"][8:], reference["action"][8:])
    # tiny excess inside the tolerance passes unchanged
    actions[7, 1] = 1.0 + 1e-7
    h5b = _write_d4rl(tmp_path / "tol.hdf5", reference, actions=actions)
    ok = load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5b), env_id=ENV_ID))
    assert ok["action"][7, 1] > 1.0
    assert issubclass(ActionOutOfBoundsError, SpaceMismatchError)


@pytest.mark.parametrize(
    "column, row, value, key",
    [
        ("observations", 3, np.nan, "observation"),
        ("next_observations", 10, np.inf, "next/observation"),
        ("rewards", 5, -np.inf, "next/reward"),
        ("actions", 2, np.nan, "action"),
    ],
)
def test_non_finite_rejected(tmp_path, reference, column, row, value, key):
    base = {
        "observations": reference["observation"].numpy(),
        "next_observations": reference["next", "observation"].numpy(),
        "rewards": reference["next", "reward"].reshape(-1).numpy(),
        "actions": reference["action"].numpy(),
    }
    arr = base[column].copy()
    arr[row] = value
    h5 = _write_d4rl(tmp_path / "nf.hdf5", reference, **{column: arr})
    with pytest.raises(NonFiniteDataError, match=rf"^{key} has .* first at index {row}$"):
        load_offline_data(DatasetSpec(source="d4rl_hdf5", id_or_path=str(h5), env_id=ENV_ID))


def test_validate_missing_keys():
    td = TensorDict({"observation": torch.zeros(3, 2)}, batch_size=[3])
    with pytest.raises(DatasetFormatError, match="lack keys"):
        validate_transitions(td)


# ------------------------------------------------------------------------------------------
# AntMaze / Adroit shaped Minari datasets (gymnasium-robotics not required)
# ------------------------------------------------------------------------------------------
def _make_minari(dataset_id, obs_space, act_space, episodes):
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id, buffers, observation_space=obs_space, action_space=act_space,
            algorithm_name="test", author="test", author_email="test", code_permalink="test",
            description="tiny test dataset",
        )


def test_antmaze_shaped_dict_observations(minari_root):
    rng = np.random.default_rng(0)
    obs_space = gym.spaces.Dict({
        "observation": gym.spaces.Box(-np.inf, np.inf, (27,), np.float64),
        "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
        "desired_goal": gym.spaces.Box(-np.inf, np.inf, (2,), np.float64),
    })
    act_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
    episodes = []
    for length, terminal in ((6, False), (4, True)):
        episodes.append(dict(
            observations={k: rng.standard_normal((length + 1,) + s.shape) for k, s in obs_space.spaces.items()},
            actions=rng.uniform(-1, 1, (length, 8)).astype(np.float32),
            rewards=(np.arange(length) == length - 1).astype(np.float64) * terminal,
            terminations=np.r_[np.zeros(length - 1, bool), terminal],
            truncations=np.r_[np.zeros(length - 1, bool), not terminal],
        ))
    dataset_id = "D4RL/antmaze/umaze-v1"
    _make_minari(dataset_id, obs_space, act_space, episodes)
    # source="minari": found locally, so no download happens
    data = load_offline_data(DatasetSpec(source="minari", id_or_path=dataset_id))
    assert data.batch_size == torch.Size([10])
    assert data["observation"].shape == (10, 29)
    first = episodes[0]["observations"]
    expected = np.concatenate([first["achieved_goal"], first["observation"]], -1).astype(np.float32)
    assert torch.equal(data["observation"][:6], torch.from_numpy(expected[:-1]))
    assert torch.equal(data["next", "observation"][:6], torch.from_numpy(expected[1:]))
    assert data["next", "truncated"].squeeze(-1).tolist() == [False] * 5 + [True] + [False] * 4
    assert data["next", "terminated"].squeeze(-1).tolist() == [False] * 9 + [True]
    # goal-conditioned layout on request
    gc = load_offline_data(DatasetSpec(source="minari", id_or_path=dataset_id, cache=False,
                                       obs_keys=["achieved_goal", "observation", "desired_goal"]))
    assert gc["observation"].shape == (10, 31)
    assert torch.equal(gc["observation"][:, -2:][:6],
                       torch.from_numpy(first["desired_goal"][:-1].astype(np.float32)))
    with pytest.raises(SpaceMismatchError, match="lacks keys"):
        load_offline_data(DatasetSpec(source="minari", id_or_path=dataset_id, cache=False,
                                      obs_keys=["observation", "goal"]))
    assert dataset_metadata(DatasetSpec(source="minari", id_or_path=dataset_id)).d4rl_ref_max_score == 1.0


def test_adroit_shaped_box_dataset_and_bounds(minari_root):
    rng = np.random.default_rng(1)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (45,), np.float64)
    act_space = gym.spaces.Box(-1.0, 1.0, (24,), np.float32)
    actions = rng.uniform(-1, 1, (5, 24)).astype(np.float32)
    ep = dict(observations=rng.standard_normal((6, 45)), actions=actions,
              rewards=rng.standard_normal(5), terminations=np.zeros(5, bool),
              truncations=np.r_[np.zeros(4, bool), True])
    _make_minari("D4RL/pen/cloned-v2", obs_space, act_space, [ep])
    data = load_offline_data(DatasetSpec(source="local_minari", id_or_path="D4RL/pen/cloned-v2"))
    assert data["observation"].shape == (5, 45) and data["action"].shape == (5, 24)
    bad = dict(ep, actions=actions * 3.0)
    _make_minari("D4RL/hammer/cloned-v2", obs_space, act_space, [bad])
    with pytest.raises(ActionOutOfBoundsError):
        load_offline_data(DatasetSpec(source="local_minari", id_or_path="D4RL/hammer/cloned-v2"))


# ------------------------------------------------------------------------------------------
# registry and spec
# ------------------------------------------------------------------------------------------
def test_registry_entries():
    w = get_dataset_entry("walker2d", "medium-replay")
    assert (w.env_id, w.d4rl_name, w.local_id, w.minari_id) == (
        "Walker2d-v5", "walker2d-medium-replay-v2", "torchrl-opt/walker2d/medium-replay-v0", None)
    assert get_dataset_entry("hopper", "expert").minari_id == "mujoco/hopper/expert-v0"
    a = get_dataset_entry("antmaze", "large-diverse")
    assert (a.minari_id, a.env_id, a.obs_keys) == (
        "D4RL/antmaze/large-diverse-v1", "AntMaze_Large_Diverse_GR-v4", ("achieved_goal", "observation"))
    assert a.default_source == ("minari", "D4RL/antmaze/large-diverse-v1")
    p = get_dataset_entry("door", "cloned")
    assert (p.minari_id, p.env_id) == ("D4RL/door/cloned-v2", "AdroitHandDoor-v1")
    assert get_dataset_entry("ant", "random").default_source == ("local_minari", "torchrl-opt/ant/random-v0")
    entries = list_dataset_entries()
    assert len({(e.task, e.kind) for e in entries}) == len(entries) == 4 * 4 + 6 + 4 * 3


def test_spec_is_hydra_structured():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(DatasetSpec(source="minari", id_or_path="D4RL/pen/cloned-v2"))
    cfg.obs_keys = ["observation"]
    spec_dict = OmegaConf.to_container(cfg)
    assert DatasetSpec(**spec_dict).obs_keys == ["observation"]


# ------------------------------------------------------------------ datasets meet collectors
FRAMES = 16
LAYOUT = [*TRANSITION_KEYS, *OPTIONAL_TRANSITION_KEYS]


@pytest.fixture(scope="module")
def collector_batches():
    """Three real ``torchrl.collectors.Collector`` batches of Hopper-v5 (random actions)."""
    collector = Collector(make_env(ENV_ID, seed=0), None, frames_per_batch=FRAMES,
                          total_frames=3 * FRAMES)
    batches = [batch.clone() for batch in collector]
    collector.shutdown()
    return batches


@pytest.mark.parametrize("strategy", ["balanced", "symmetric"])
def test_collector_batches_extend_a_replay_built_from_load_offline_data(
    hopper_id, collector_batches, strategy
):
    data = load_offline_data(hopper_id)
    assert "episode" in data.keys()  # offline metadata that a Collector batch does not have
    replay = make_replay(strategy, data, online_capacity=64, batch_size=32, seed=0)
    for k, batch in enumerate(collector_batches):
        assert ("collector", "traj_ids") in batch.keys(True) and "episode" not in batch.keys()
        index = replay.extend(batch)  # as the Collector yields it: no column surgery
        assert index.tolist() == list(range(N + k * FRAMES, N + (k + 1) * FRAMES))
        stored = replay.data[index]
        for key in LAYOUT:
            assert torch.equal(stored[key], batch[key]), key
    assert torch.any(torch.cat([b["next", "done"] for b in collector_batches]))  # resets inside
    for key in LAYOUT:  # offline rows are the dataset's
        assert torch.equal(replay.data[:N][key], data[key]), key
    sample = replay.sample()
    assert set(sample.keys(True, True)) == {*LAYOUT, "index", "is_online"}
    assert torch.equal(sample["observation"], replay.data["observation"][sample["index"]])
    assert torch.equal(sample["is_online"], sample["index"] >= N)
    if strategy == "symmetric":
        assert sample["is_online"].sum().item() == 16
        return
    # the density-ratio step on that sample: priorities land on its rows, the share moves
    share_before = replay.online_share().item()
    assert share_before == pytest.approx(3 * FRAMES / (N + 3 * FRAMES), abs=1e-12)
    estimator = DensityRatioEstimator(11, 3, hidden=(16,))
    offline, online = replay.sample_offline_online(32)
    loss, priority = estimator.loss_and_priorities(offline, online, sample)
    assert torch.isfinite(loss)
    sample.set("td_error", priority)
    replay.update_tensordict_priority(sample)
    last = dict(zip(sample["index"].tolist(), priority.double().tolist()))  # duplicates: last
    for row, p in last.items():
        assert replay.sampler.priorities[row].item() == p
    untouched = torch.ones(N + 3 * FRAMES, dtype=torch.bool)
    untouched[list(last)] = False
    assert torch.all(replay.sampler.priorities[: N + 3 * FRAMES][untouched] == 1.0)
    online_mass = sum(p for row, p in last.items() if row >= N) + (
        3 * FRAMES - sum(1 for row in last if row >= N)
    )
    total = sum(last.values()) + untouched.sum().item()
    assert replay.online_share().item() == pytest.approx(online_mass / total, rel=1e-12)


def test_offline_columns_kept_for_collector_batches_need_a_fill(hopper_id, collector_batches):
    data = load_offline_data(hopper_id)
    batch = collector_batches[0]
    strict = make_replay("uniform", data, 64, 32, seed=0, extra_keys=["episode"])
    with pytest.raises(ReplayKeyError, match=r"\['episode'\].*online_fill"):
        strict.extend(batch)
    replay = make_replay("uniform", data, 64, 32, seed=0, online_fill={"episode": -1})
    replay.extend(batch)
    assert torch.equal(replay.data["episode"][:N], data["episode"])
    assert torch.all(replay.data["episode"][N : N + FRAMES] == -1)
    # the seed-batched replay takes stacked Collector batches the same way
    seeded = make_seed_batched_replay("balanced", data, 2, 64, 32, seeds=[0, 1],
                                      online_fill={"episode": -1})
    seeded.extend(torch.stack(collector_batches[:2]))
    for i in range(2):
        for key in LAYOUT:
            assert torch.equal(seeded.online_data[i, :FRAMES][key], collector_batches[i][key])
    assert torch.all(seeded.online_data["episode"][:, :FRAMES] == -1)
    torch.testing.assert_close(
        seeded.online_share(),
        torch.full((2,), FRAMES / (N + FRAMES), dtype=torch.float64), rtol=1e-12, atol=0,
    )


# ------------------------------------------------------------------ the data guide
DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def test_data_guide_names_import_from_torchrl_opt_data():
    text = DOCS.read_text()
    errors = set(re.findall(r"`(\w+Error)`", text))
    assert {"DatasetFormatError", "ActionOutOfBoundsError", "PrioritiesNotSupportedError",
            "ReplayKeyError"} <= errors
    for name in errors:
        assert issubclass(getattr(data_pkg, name), Exception), name
    for name in ("DatasetSpec", "load_offline_data", "dataset_metadata", "ensure_dataset",
                 "generate_dataset", "TASKS", "get_dataset_entry", "normalized_score",
                 "D4RL_REF_SCORES", "make_replay", "MixedReplayBuffer", "DensityRatioEstimator",
                 "make_seed_batched_replay", "TRANSITION_KEYS", "OPTIONAL_TRANSITION_KEYS"):
        assert re.search(rf"\b{name}\b", text), name
        assert name in data_pkg.__all__ and hasattr(data_pkg, name), name
    assert data_pkg.ensure_dataset is ensure_dataset  # the lazy export is the real function
    assert issubclass(data_pkg.ActionOutOfBoundsError, data_pkg.SpaceMismatchError)

"""Tests for torchrl_opt.data.replay: sum-tree, mixing strategies, density-ratio estimator."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from scipy import stats
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode

from torchrl_opt.data.replay import (
    OPTIONAL_TRANSITION_KEYS,
    REPLAY_STRATEGIES,
    TRANSITION_KEYS,
    BalancedSampler,
    DensityRatioEstimator,
    EmptyOnlineBufferError,
    PrioritiesNotSupportedError,
    ReplayCapacityError,
    ReplayKeyError,
    density_ratio_loss,
    density_ratio_priority,
    make_replay,
    sumtree_build,
    sumtree_layout,
    sumtree_sample,
    sumtree_update_,
    uniform_range_sample,
)

OBS_DIM, ACT_DIM = 3, 2


def transitions(
    n: int, start: float = 0.0, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM
) -> TensorDict:
    """Transitions whose observation[:, 0] is a running id ``start + i`` (to identify rows).

    Deterministic in ``(n, start)`` so that replays of a run see identical data.
    """
    gen = torch.Generator().manual_seed(1000 * int(start) + n)
    obs = torch.randn(n, obs_dim, generator=gen)
    obs[:, 0] = torch.arange(n, dtype=torch.float32) + start
    flag = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.rand(n, act_dim, generator=gen) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=gen),
                "reward": torch.randn(n, 1, generator=gen),
                "done": flag.clone(),
                "terminated": flag.clone(),
                "truncated": flag.clone(),
            },
        },
        [n],
    )


def reference_tree_ok(tree: torch.Tensor, fanout: int, leaves: torch.Tensor) -> None:
    """Every internal node equals the sum of its children, rebuilt independently level by level."""
    level = leaves.double()
    sizes = []
    while level.numel() > 1:
        sizes.append(level)
        level = level.view(-1, fanout).sum(-1)
    sizes.append(level)
    expected = torch.cat(sizes[::-1])
    torch.testing.assert_close(tree, expected, rtol=1e-12, atol=1e-9)


# ----------------------------------------------------------------------------- sum-tree
@pytest.mark.parametrize(
    "capacity,max_fanout,expected",
    [(1_300_000, 32, (17, 5)), (1000, 32, (32, 2)), (1, 32, (2, 1)), (64, 2, (2, 6))],
)
def test_sumtree_layout(capacity, max_fanout, expected):
    fanout, depth = sumtree_layout(capacity, max_fanout)
    assert (fanout, depth) == expected
    assert fanout**depth >= capacity > (fanout - 1) ** depth or fanout == 2


@pytest.mark.parametrize("fanout", [2, 3, 8])
def test_sumtree_frequencies_follow_priorities(fanout):
    gen = torch.Generator().manual_seed(1)
    priorities = torch.rand(40, generator=gen, dtype=torch.float64) * 5 + 0.05
    priorities[7] = 0.0  # a zero-priority row inside the filled range is never drawn
    tree = sumtree_build(priorities, capacity=50, fanout=fanout)  # 10 unfilled rows (zeros)
    n = 200_000
    index = sumtree_sample(tree, torch.rand(n, generator=gen, dtype=torch.float64), fanout)
    counts = torch.bincount(index, minlength=tree.numel())
    assert counts[40:].sum() == 0 and counts[7] == 0
    observed = counts[:40].numpy()
    probs = (priorities / priorities.sum()).numpy()
    mask = probs > 0
    chi2 = stats.chisquare(observed[mask], probs[mask] * n)
    assert chi2.pvalue > 1e-3, chi2


def test_sumtree_update_consistency_and_duplicates():
    fanout = 4
    tree = sumtree_build(torch.ones(30, dtype=torch.float64), capacity=60, fanout=fanout)
    leaves = torch.zeros(64, dtype=torch.float64)
    leaves[:30] = 1.0
    index = torch.tensor([3, 3, 17, 29, 45])
    priority = torch.tensor([2.0, 2.0, 0.5, 7.0, 3.0], dtype=torch.float64)
    sumtree_update_(tree, index, priority, fanout)
    leaves[index] = priority
    reference_tree_ok(tree, fanout, leaves)
    assert tree[0].item() == pytest.approx(leaves.sum().item())


def test_sumtree_never_draws_unfilled_rows_at_u_close_to_one():
    tree = sumtree_build(torch.tensor([1e-3, 1e3, 1e-3], dtype=torch.float64), capacity=1000)
    fanout, _ = sumtree_layout(1000)
    u = torch.tensor([0.0, 1.0 - 2**-53, 0.9999999999, 0.5], dtype=torch.float64)
    index = sumtree_sample(tree, u, fanout)
    assert index.tolist()[0] == 0 and max(index.tolist()) <= 2


def test_uniform_range_sample_bounds():
    u = torch.tensor([0.0, 0.5, 1.0 - 1e-16, 0.999999], dtype=torch.float64)
    out = uniform_range_sample(10, torch.tensor(4), u)
    assert out.tolist() == [10, 12, 13, 13]
    assert uniform_range_sample(0, 4, u).tolist() == [0, 2, 3, 3]


@pytest.mark.compile
def test_sumtree_functions_compile_fullgraph_and_match_eager():
    fanout = 4
    priorities = torch.rand(50, dtype=torch.float64) + 0.1
    tree_eager = sumtree_build(priorities, capacity=64, fanout=fanout)
    tree_comp = tree_eager.clone()

    def step(tree, u, new):
        index = sumtree_sample(tree, u, fanout)
        sumtree_update_(tree, index, new, fanout)
        return index

    compiled = torch.compile(step, fullgraph=True)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(16, generator=g, dtype=torch.float64)
        new = torch.full((16,), 0.5 + seed, dtype=torch.float64)  # equal values: duplicates agree
        idx_e = step(tree_eager, u, new)
        idx_c = compiled(tree_comp, u, new)
        assert torch.equal(idx_e, idx_c)
        torch.testing.assert_close(tree_eager, tree_comp)
    reference_tree_ok(tree_comp, fanout, tree_comp[-64:])


def test_sampler_pickles_with_its_generator():
    a = BalancedSampler(5, 10, seed=3)
    a.extend(torch.arange(5))
    b = pickle.loads(pickle.dumps(a))
    assert torch.equal(a.sample_index(50), b.sample_index(50))


# ----------------------------------------------------------------------------- balanced replay
def test_balanced_entry_priorities_offline_one_online_running_max():
    replay = make_replay("balanced", transitions(20), online_capacity=10, batch_size=4, seed=0)
    sampler = replay.sampler
    assert isinstance(sampler, BalancedSampler)
    assert torch.equal(sampler.priorities[:20], torch.ones(20, dtype=torch.float64))
    assert torch.all(sampler.priorities[20:] == 0)
    replay.extend(transitions(2, start=100))
    assert torch.equal(sampler.priorities[20:22], torch.ones(2, dtype=torch.float64))  # max is 1
    replay.update_priority(torch.tensor([0, 5]), torch.tensor([4.0, 0.5]))
    replay.update_priority(torch.tensor([1]), torch.tensor([2.5]))  # lower than 4: max stays 4
    assert sampler.max_priority.item() == 4.0
    idx = replay.extend(transitions(3, start=200))
    assert idx.tolist() == [22, 23, 24]
    assert torch.equal(sampler.priorities[22:25], torch.full((3,), 4.0, dtype=torch.float64))
    assert sampler.priorities[5].item() == 0.5 and sampler.priorities[1].item() == 2.5
    # entries past the filled size stay at zero priority
    assert torch.all(sampler.priorities[25:] == 0)


def test_balanced_sampling_frequencies_follow_priorities():
    replay = make_replay("balanced", transitions(12), online_capacity=8, batch_size=500, seed=3)
    replay.extend(transitions(8, start=12))
    priority = torch.linspace(0.2, 3.0, 20, dtype=torch.float64)
    replay.update_priority(torch.arange(20), priority)
    counts = torch.zeros(20)
    for _ in range(200):
        batch = replay.sample()
        assert torch.equal(batch["observation"][:, 0].long(), batch["index"])  # rows match index
        assert torch.equal(batch["is_online"], batch["index"] >= 12)
        counts += torch.bincount(batch["index"], minlength=20)
    n = counts.sum().item()
    chi2 = stats.chisquare(counts.numpy(), (priority / priority.sum() * n).numpy())
    assert chi2.pvalue > 1e-3, chi2


def test_balanced_priority_validation():
    replay = make_replay("balanced", transitions(10), online_capacity=5, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="finite and > 0"):
        replay.update_priority(torch.tensor([1]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="finite and > 0"):
        replay.update_priority(torch.tensor([1]), torch.tensor([float("nan")]))
    with pytest.raises(IndexError):
        replay.update_priority(torch.tensor([12]), torch.tensor([1.0]))  # row 12 not filled
    with pytest.raises(ValueError, match="indices"):
        replay.update_priority(torch.tensor([1, 2]), torch.tensor([1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------- other strategies
def test_symmetric_batches_are_exactly_half_half():
    replay = make_replay("symmetric", transitions(30), online_capacity=20, batch_size=64, seed=0)
    with pytest.raises(EmptyOnlineBufferError):
        replay.sample()
    replay.extend(transitions(5, start=30))
    for _ in range(20):
        batch = replay.sample()
        index = batch["index"]
        assert batch["is_online"].sum().item() == 32
        assert torch.all(index[:32] < 30) and torch.all((index[32:] >= 30) & (index[32:] < 35))
    odd = make_replay(
        "symmetric",
        transitions(30),
        online_capacity=20,
        batch_size=9,
        seed=0,
        offline_fraction=1 / 3,
    )
    odd.extend(transitions(5, start=30))
    assert odd.sample()["is_online"].sum().item() == 6


def test_online_only_never_returns_offline_rows():
    replay = make_replay("online", transitions(50), online_capacity=20, batch_size=32, seed=0)
    with pytest.raises(EmptyOnlineBufferError):
        replay.sample()
    replay.extend(transitions(3, start=50))
    seen = set()
    for _ in range(30):
        batch = replay.sample()
        assert torch.all(batch["index"] >= 50) and torch.all(batch["is_online"])
        assert torch.all(batch["observation"][:, 0] >= 50)
        seen.update(batch["index"].tolist())
    assert seen == {50, 51, 52}


def test_uniform_covers_union_uniformly():
    replay = make_replay("uniform", transitions(6), online_capacity=4, batch_size=1000, seed=0)
    replay.extend(transitions(4, start=6))
    counts = torch.zeros(10)
    for _ in range(50):
        counts += torch.bincount(replay.sample()["index"], minlength=10)
    chi2 = stats.chisquare(counts.numpy())
    assert chi2.pvalue > 1e-3


@pytest.mark.parametrize("strategy", ["symmetric", "online", "uniform"])
def test_update_priority_rejected_without_priorities(strategy):
    replay = make_replay(strategy, transitions(10), online_capacity=5, batch_size=4, seed=0)
    replay.extend(transitions(2, start=10))
    with pytest.raises(PrioritiesNotSupportedError, match="balanced"):
        replay.update_priority(torch.tensor([0]), torch.tensor([2.0]))


# ------------------------------------------------------------------ capacity, keys, factory
@pytest.mark.parametrize("strategy", REPLAY_STRATEGIES)
def test_capacity_error_and_no_wraparound(strategy):
    replay = make_replay(strategy, transitions(10), online_capacity=6, batch_size=4, seed=0)
    replay.extend(transitions(4, start=10))
    with pytest.raises(ReplayCapacityError, match="online_capacity=6"):
        replay.extend(transitions(3, start=14))
    assert len(replay) == 14
    replay.extend(transitions(2, start=14))
    assert len(replay) == replay.capacity == 16
    torch.testing.assert_close(
        replay.data["observation"][:, 0], torch.arange(16, dtype=torch.float32)
    )
    with pytest.raises(ReplayCapacityError):
        replay.extend(transitions(1, start=16))


def test_extend_drops_extra_keys_flattens_and_rejects_missing():
    replay = make_replay("uniform", transitions(10), online_capacity=20, batch_size=4, seed=0)
    online = transitions(6, start=10).reshape(2, 3)
    online["collector"] = TensorDict({"traj_ids": torch.zeros(2, 3)}, [2, 3])
    idx = replay.extend(online)
    assert idx.tolist() == list(range(10, 16))
    assert "collector" not in replay.sample().keys()
    bad = transitions(2, start=16).exclude(("next", "reward"))
    with pytest.raises(ReplayKeyError):
        replay.extend(bad)


def test_factory_input_errors():
    with pytest.raises(ValueError, match="unknown replay strategy"):
        make_replay("prioritised", transitions(5), 5, 4)
    with pytest.raises(ValueError, match="flat"):
        make_replay("balanced", transitions(6).reshape(2, 3), 5, 4)
    with pytest.raises(ReplayKeyError):
        make_replay("balanced", transitions(5).exclude("action"), 5, 4)


def test_sample_offline_online_batches():
    replay = make_replay("balanced", transitions(40), online_capacity=10, batch_size=4, seed=0)
    with pytest.raises(EmptyOnlineBufferError):
        replay.sample_offline_online(8)
    replay.extend(transitions(5, start=40))
    off, on = replay.sample_offline_online(64)
    assert off.shape == on.shape == torch.Size([64])
    assert torch.all(off["index"] < 40) and torch.all((on["index"] >= 40) & (on["index"] < 45))
    assert torch.equal(off["observation"][:, 0].long(), off["index"])
    assert torch.equal(on["observation"][:, 0].long(), on["index"])


# ----------------------------------------------------------------------------- checkpointing
def _run(replay, steps: int, start: float) -> list[torch.Tensor]:
    """Interleave extends, samples and (for balanced) priority updates; return sampled indices."""
    out = []
    for k in range(steps):
        replay.extend(transitions(3, start=start + 3 * k))
        batch = replay.sample()
        out.append(batch["index"].clone())
        if replay.strategy == "balanced":
            priority = 0.5 + (batch["observation"][:, 1].abs().double() % 3)
            replay.update_priority(batch["index"], priority)
        off, on = replay.sample_offline_online(4)
        out += [off["index"], on["index"]]
    return out


@pytest.mark.parametrize("strategy", REPLAY_STRATEGIES)
@pytest.mark.parametrize("mode", ["state_dict", "dumps"])
def test_save_restore_mid_run_gives_identical_samples(strategy, mode, tmp_path):
    offline = transitions(50)
    replay = make_replay(strategy, offline, online_capacity=60, batch_size=16, seed=7)
    _run(replay, 4, start=50)
    if mode == "state_dict":
        state = replay.state_dict()
    else:
        replay.dumps(tmp_path / "ckpt")
    expected = _run(replay, 5, start=200)

    restored = make_replay(strategy, offline, online_capacity=60, batch_size=16, seed=12345)
    if mode == "state_dict":
        restored.load_state_dict(state)
    else:
        restored.loads(tmp_path / "ckpt")
    assert len(restored) == 62
    got = _run(restored, 5, start=200)
    assert len(expected) == len(got)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    if strategy == "balanced":
        torch.testing.assert_close(restored.sampler.tree, replay.sampler.tree)
        assert restored.sampler.max_priority.item() == replay.sampler.max_priority.item()


def test_sampler_level_state_roundtrip_and_mismatch(tmp_path):
    a = BalancedSampler(10, 30, seed=0)
    a.extend(torch.arange(12))
    a.update_priority(torch.tensor([3, 11]), torch.tensor([5.0, 0.1]))
    a.sample_index(5)
    a.dumps(tmp_path / "s")
    b = BalancedSampler(10, 30, seed=99)
    b.loads(tmp_path / "s")
    assert torch.equal(a.sample_index(100), b.sample_index(100))
    assert b.max_priority.item() == 5.0
    with pytest.raises(ValueError, match="capacity"):
        BalancedSampler(10, 31, seed=0).load_state_dict(a.state_dict())


def test_seed_makes_sampling_reproducible_and_independent_of_global_rng():
    offline = transitions(100)
    a = make_replay("balanced", offline, 10, 32, seed=5)
    torch.manual_seed(123)
    b = make_replay("balanced", offline, 10, 32, seed=5)
    torch.rand(10)
    assert torch.equal(a.sample()["index"], b.sample()["index"])


# ----------------------------------------------------------------------------- density ratio
def test_density_ratio_loss_matches_hand_computation():
    w_off = torch.tensor([0.5, 1.0, 3.0])
    w_on = torch.tensor([2.0, 0.0])
    # offline: -log(2/(w+1)): w=0.5 -> -log(4/3), w=1 -> 0, w=3 -> -log(1/2) = log 2
    off = (-math.log(4 / 3 + 1e-10) - math.log(1 + 1e-10) - math.log(0.5 + 1e-10)) / 3
    # online: log(2w/(w+1)): w=2 -> log(4/3), w=0 -> log(1e-10)
    on = (math.log(4 / 3 + 1e-10) + math.log(1e-10)) / 2
    assert density_ratio_loss(w_off, w_on).item() == pytest.approx(off - on, rel=1e-6)


def test_density_ratio_priority_matches_hand_computation():
    w_off = torch.tensor([1.0, 32.0], dtype=torch.float64)  # w^(1/5): 1 and 2 -> mean 1.5
    w = torch.tensor([243.0, 1.0, 0.0, 1e30], dtype=torch.float64)  # w^(1/5): 3, 1, 0, 1e6
    prio = density_ratio_priority(w, w_off, temperature=5.0)
    expected = torch.tensor([3 / 1.5, 1 / 1.5, 1e-3, 1e3], dtype=torch.float64)
    torch.testing.assert_close(prio, expected, rtol=1e-8, atol=0)


def test_estimator_init_matches_off2on():
    est = DensityRatioEstimator(OBS_DIM, ACT_DIM)
    last = est.net[-1]
    assert [m.out_features for m in est.net if isinstance(m, torch.nn.Linear)] == [256, 256, 1]
    assert est.net[0].in_features == OBS_DIM + ACT_DIM
    assert torch.all(last.bias == 1.0) and last.weight.abs().max() <= 3e-3
    w = est(torch.randn(64, OBS_DIM), torch.randn(64, ACT_DIM))
    assert w.shape == (64, 1) and torch.all(w >= 0)
    assert torch.allclose(w, torch.ones_like(w), atol=0.1)


@pytest.fixture
def one_thread():
    """Small-op loop: one intra-op thread avoids OpenMP wake-up stalls on busy CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_estimator_separates_shifted_gaussians_and_feeds_priorities(one_thread):
    torch.manual_seed(0)
    obs_dim, act_dim, n = 2, 1, 4000

    def gaussian(n, shift):
        td = transitions(n, obs_dim=obs_dim, act_dim=act_dim)
        td["observation"] = torch.randn(n, obs_dim) + shift
        td["action"] = torch.randn(n, act_dim) + shift
        return td

    offline, online = gaussian(n, -1.0), gaussian(1000, 1.0)
    replay = make_replay("balanced", offline, 1000, 128, seed=0)
    replay.extend(online)
    est = DensityRatioEstimator(obs_dim, act_dim, hidden=(64, 64))
    opt = torch.optim.Adam(est.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        off, on = replay.sample_offline_online(256)
        batch = replay.sample()
        loss, priority = est.loss_and_priorities(off, on, batch)
        assert not priority.requires_grad and priority.shape == (128,)
        opt.zero_grad()
        loss.backward()
        opt.step()
        replay.update_priority(batch["index"], priority)
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.1
    with torch.no_grad():
        w_off = est.ratio(offline)
        w_on = est.ratio(online)
        p_on = density_ratio_priority(w_on, w_off)
        p_off = density_ratio_priority(w_off, w_off)
    assert w_on.mean() > 3 * w_off.mean()
    assert p_on.median() > 1.5 * p_off.median()
    # the balanced buffer now over-samples online rows relative to their 20 % share, and
    # online_share() predicts the sampled fraction (2560 draws: 5 sigma is about 0.05)
    share = replay.online_share().item()
    frac = torch.cat([replay.sample()["is_online"] for _ in range(20)]).float().mean().item()
    assert frac > 0.3 and share > 0.3
    assert abs(frac - share) < 5 * math.sqrt(share * (1 - share) / 2560)


# ----------------------------------------------------------------- stored columns and fill values
def with_metadata(td: TensorDict, first_episode: int = 0) -> TensorDict:
    """``td`` plus offline-only columns: ``episode`` (int64, 3 rows per episode) and ``mc_return``."""
    n = td.shape[0]
    td = td.clone()
    td["episode"] = torch.arange(n) // 3 + first_episode
    td["mc_return"] = torch.linspace(-1.0, 1.0, n).unsqueeze(-1)
    return td


def test_default_storage_is_the_transition_layout_and_drops_offline_only_columns():
    replay = make_replay("uniform", with_metadata(transitions(10)), 20, 4, seed=0)
    assert replay.storage_keys == [*TRANSITION_KEYS, *OPTIONAL_TRANSITION_KEYS]
    assert "episode" not in replay.data.keys() and "mc_return" not in replay.data.keys()
    replay.extend(transitions(5, start=10))  # online rows have no episode / mc_return
    batch = replay.sample()
    assert "episode" not in batch.keys() and "mc_return" not in batch.keys()
    # without next/truncated in the offline data it is not stored (nor required online)
    lean = make_replay("uniform", transitions(10).exclude(("next", "truncated")), 5, 4, seed=0)
    assert lean.storage_keys == list(TRANSITION_KEYS)
    lean.extend(transitions(2, start=10).exclude(("next", "truncated")))


def test_extra_keys_need_online_values_and_online_fill_supplies_them():
    offline = with_metadata(transitions(9))
    strict = make_replay("uniform", offline, 10, 4, seed=0, extra_keys=["episode"])
    with pytest.raises(ReplayKeyError, match=r"\['episode'\].*online_fill"):
        strict.extend(transitions(2, start=9))
    assert strict.num_online == 0
    strict.extend(with_metadata(transitions(3, start=9), first_episode=50))  # batch has it
    assert strict.data["episode"][9:12].tolist() == [50, 50, 50]

    replay = make_replay(
        "balanced", offline, 10, 4, seed=0,
        online_fill={"episode": -1, "mc_return": float("-inf")},
    )
    assert replay.storage_keys[-2:] == ["episode", "mc_return"]
    replay.extend(transitions(4, start=9))
    replay.extend(with_metadata(transitions(3, start=13)))  # its own values win over the fill
    data = replay.data
    assert data["episode"].dtype == torch.int64 and data["mc_return"].shape == (19, 1)
    assert torch.equal(data["episode"][:9], offline["episode"])
    assert data["episode"][9:13].tolist() == [-1] * 4 and data["episode"][13:16].tolist() == [0] * 3
    assert torch.equal(data["mc_return"][:9], offline["mc_return"])
    assert torch.all(data["mc_return"][9:13] == float("-inf"))
    assert torch.equal(data["mc_return"][13:16], torch.linspace(-1.0, 1.0, 3).unsqueeze(-1))
    batch = replay.sample()
    online = batch["is_online"] & (batch["index"] < 13)
    assert torch.all(batch["episode"][online] == -1)
    # add() goes through the same rules
    index = replay.add(transitions(1, start=16)[0])
    assert index.ndim == 0 and index.item() == 16 and replay.data["episode"][16].item() == -1


def test_online_fill_validation():
    offline = with_metadata(transitions(6))
    with pytest.raises(ReplayKeyError, match="'mc_retrun'"):
        make_replay("uniform", offline, 4, 2, online_fill={"mc_retrun": 0.0})
    with pytest.raises(ReplayKeyError, match="'step'"):
        make_replay("uniform", offline, 4, 2, extra_keys=["step"])
    with pytest.raises(ValueError, match="int64"):
        make_replay("uniform", offline, 4, 2, online_fill={"episode": float("-inf")})
    with pytest.raises(ValueError, match="int64"):
        make_replay("uniform", offline, 4, 2, online_fill={"episode": 0.5})
    with pytest.raises(ValueError, match="feature shape"):
        make_replay("uniform", offline, 4, 2, online_fill={"mc_return": torch.zeros(3)})
    # nested keys and per-feature fills: ("next", "truncated") given for online rows lacking it
    replay = make_replay(
        "uniform", offline, 4, 2, online_fill={("next", "truncated"): True,
                                               "observation": torch.tensor([7.0, 8.0, 9.0])}
    )
    replay.extend(transitions(2, start=6).exclude(("next", "truncated"), "observation"))
    assert torch.all(replay.data["next", "truncated"][6:8])
    assert replay.data["observation"][6:8].tolist() == [[7.0, 8.0, 9.0]] * 2


# ------------------------------------------------------------------------------ priorities
def test_update_tensordict_priority_equals_update_priority():
    offline = transitions(30)
    by_index = make_replay("balanced", offline, 20, 8, seed=4)
    by_td = make_replay("balanced", offline, 20, 8, seed=4)
    custom = make_replay("balanced", offline, 20, 8, seed=4, priority_key=("meta", "p"))
    for replay in (by_index, by_td, custom):
        replay.extend(transitions(10, start=30))
    for step in range(3):
        a, b, c = by_index.sample(), by_td.sample(), custom.sample()
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["index"], c["index"])
        priority = 0.25 + (a["observation"][:, 1].abs().double() + step) % 3
        by_index.update_priority(a["index"], priority)
        b.set("td_error", priority.unsqueeze(-1))  # [B, 1] (a trailing dim is reduced)
        by_td.update_tensordict_priority(b)
        c.set(("meta", "p"), priority)
        custom.update_tensordict_priority(c)
        assert torch.equal(by_td.sampler.tree, by_index.sampler.tree)
        assert torch.equal(custom.sampler.tree, by_index.sampler.tree)
    assert by_td.sampler.max_priority.item() == by_index.sampler.max_priority.item()
    # trailing dims (one TD error per critic) are max-reduced, TorchRL's default reduction
    batch = by_td.sample()
    per_critic = torch.stack([torch.full((8,), 0.5), torch.arange(1, 9).double()], -1)
    batch.set("td_error", per_critic)
    by_td.update_tensordict_priority(batch)
    expected = torch.maximum(torch.full((8,), 0.5), torch.arange(1, 9).double())
    assert torch.equal(by_td.sampler.priorities[batch["index"][-1]], expected[-1])
    last = {i: p for i, p in zip(batch["index"].tolist(), expected.tolist())}  # duplicates: last
    for i, p in last.items():
        assert by_td.sampler.priorities[i].item() == p
    with pytest.raises(ReplayKeyError, match="td_error"):
        by_td.update_tensordict_priority(by_td.sample())
    with pytest.raises(ReplayKeyError, match="index"):
        by_td.update_tensordict_priority(TensorDict({"td_error": torch.ones(3)}, [3]))
    with pytest.raises(ValueError, match="shape"):
        by_td.update_tensordict_priority(
            TensorDict({"index": torch.arange(8), "td_error": torch.ones(4)}, [])
        )


@pytest.mark.parametrize("strategy", ["symmetric", "online", "uniform"])
def test_priority_updates_raise_on_strategies_without_priorities(strategy):
    replay = make_replay(strategy, transitions(10), online_capacity=5, batch_size=4, seed=0)
    replay.extend(transitions(3, start=10))
    batch = replay.sample()
    batch.set("td_error", torch.ones(4))
    with pytest.raises(PrioritiesNotSupportedError, match=f"'{strategy}'"):
        replay.update_tensordict_priority(batch)
    with pytest.raises(PrioritiesNotSupportedError, match=f"'{strategy}'"):
        replay.update_priority(batch["index"], batch["td_error"])


# ------------------------------------------------------------------------------ online share
class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def test_balanced_online_share_by_hand():
    replay = make_replay("balanced", transitions(6), online_capacity=10, batch_size=4, seed=0)
    share = replay.online_share()
    assert share.shape == () and share.dtype == torch.float64 and share.item() == 0.0
    replay.extend(transitions(2, start=6))  # priorities: 6 x 1 offline, 2 x 1 online
    assert replay.online_share().item() == pytest.approx(2 / 8, abs=1e-15)
    replay.update_priority(torch.tensor([0, 6, 7]), torch.tensor([0.5, 4.0, 2.0]))
    # offline 0.5 + 5 x 1 = 5.5, online 4 + 2 = 6
    assert replay.online_share().item() == pytest.approx(6 / 11.5, abs=1e-15)
    replay.extend(transitions(3, start=8))  # three more online rows at the running max 4
    assert replay.online_share().item() == pytest.approx(18 / 23.5, abs=1e-15)
    replay.update_priority(torch.tensor([1, 2, 3, 4, 5]), torch.tensor(1e3))
    assert replay.online_share().item() == pytest.approx(18 / (5000.5 + 18), abs=1e-15)
    with _OpCounter() as counter:
        replay.online_share()
    assert "aten._local_scalar_dense.default" not in counter.ops  # no .item(): no host sync
    assert torch.equal(replay.online_share(), replay.sampler.online_share())


def test_online_share_of_the_other_strategies_by_construction():
    def build(strategy, **kwargs):
        return make_replay(strategy, transitions(10), online_capacity=10, batch_size=9, seed=0,
                           **kwargs)

    replays = {
        "symmetric": build("symmetric"),  # round(0.5 * 9) = 4 offline rows, 5 online
        "third": build("symmetric", offline_fraction=1 / 3),  # 3 offline, 6 online
        "online": build("online"),
        "uniform": build("uniform"),
    }
    for replay in replays.values():
        assert replay.online_share().item() == 0.0  # nothing online yet
        replay.extend(transitions(4, start=10))
    expected = {"symmetric": 5 / 9, "third": 6 / 9, "online": 1.0, "uniform": 4 / 14}
    for name, replay in replays.items():
        share = replay.online_share()
        assert share.shape == () and share.dtype == torch.float64
        assert share.item() == pytest.approx(expected[name], abs=1e-15), name
        frac = replay.sample()["is_online"].double().mean().item()
        if name != "uniform":  # exact per batch for the fixed compositions
            assert frac == pytest.approx(expected[name], abs=1e-15), name

"""Tests for torchrl_opt.data.seed_replay: batched sum-trees and the [S, B] seed-batched replay."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torch.utils._python_dispatch import TorchDispatchMode

from torchrl_opt.data import (
    SeedBatchedReplay,
    make_seed_batched_replay,
    sumtree_build_batched,
    sumtree_sample_batched,
    sumtree_update_batched_,
)
from torchrl_opt.data.replay import (
    REPLAY_STRATEGIES,
    EmptyOnlineBufferError,
    PrioritiesNotSupportedError,
    ReplayCapacityError,
    ReplayKeyError,
    make_replay,
    sumtree_build,
    sumtree_layout,
    sumtree_sample,
    sumtree_update_,
)

OBS_DIM, ACT_DIM = 3, 2
N_OFF, CAP, BATCH = 40, 60, 16
SEEDS = [11, 22, 33]


def transitions(n: int, start: float = 0.0) -> TensorDict:
    """``n`` transitions whose observation[:, 0] is a running id ``start + i`` (deterministic)."""
    gen = torch.Generator().manual_seed(1000 * int(start) + n)
    obs = torch.randn(n, OBS_DIM, generator=gen)
    obs[:, 0] = torch.arange(n, dtype=torch.float32) + start
    flag = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.rand(n, ACT_DIM, generator=gen) * 2 - 1,
            "next": {
                "observation": torch.randn(n, OBS_DIM, generator=gen),
                "reward": torch.randn(n, 1, generator=gen),
                "done": flag.clone(),
                "terminated": flag.clone(),
                "truncated": flag.clone(),
            },
        },
        [n],
    )


def seed_transitions(num_seeds: int, n: int, start: float) -> TensorDict:
    """``[S, n]`` online transitions, different for every seed."""
    return torch.stack([transitions(n, start + 10_000 * (i + 1)) for i in range(num_seeds)])


def assert_td_equal(a: TensorDictBase, b: TensorDictBase) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    assert a.batch_size == b.batch_size
    for key in a.keys(True, True):
        x, y = a.get(key), b.get(key)
        assert x.dtype == y.dtype and torch.equal(x, y), key


def build(strategy: str, num_seeds: int = 3, seeds=SEEDS, **kwargs) -> SeedBatchedReplay:
    return make_seed_batched_replay(
        strategy, transitions(N_OFF), num_seeds, CAP, BATCH, seeds=seeds, **kwargs
    )


# ----------------------------------------------------------------------------- batched sum-tree
@pytest.mark.parametrize("fanout", [2, 3, 5, None])
def test_batched_sumtree_matches_1d_per_row(fanout):
    gen = torch.Generator().manual_seed(3)
    num, n, capacity, draws = 4, 37, 50, 500
    priorities = torch.rand(num, n, generator=gen, dtype=torch.float64) * 5 + 0.01
    priorities[:, 5] = 0.0  # zero-priority rows inside the filled range
    priorities[2, :20] = 0.0
    trees = sumtree_build_batched(priorities, capacity, fanout)
    k = fanout if fanout is not None else sumtree_layout(capacity)[0]
    singles = [sumtree_build(priorities[i], capacity, k) for i in range(num)]
    assert trees.shape == (num, singles[0].numel()) and trees.dtype == torch.float64
    for i in range(num):
        assert torch.equal(trees[i], singles[i])

    u = torch.rand(num, draws, generator=gen, dtype=torch.float64)
    u[:, 0], u[:, 1] = 0.0, 1.0 - 2**-53
    index = sumtree_sample_batched(trees, u, k)
    assert index.shape == (num, draws) and index.dtype == torch.long
    for i in range(num):
        assert torch.equal(index[i], sumtree_sample(singles[i], u[i], k))
    assert torch.all(index < n) and not torch.any(index == 5) and torch.all(index[2] >= 20)
    # any trailing shape of u
    index3 = sumtree_sample_batched(trees, u.view(num, 20, 25), k)
    assert torch.equal(index3.view(num, draws), index)

    # updates with duplicate indices (CPU keeps the last), incl. a priority set to 0
    upd = torch.randint(0, capacity, (num, 30), generator=gen)
    upd[:, 3] = upd[:, 7] = upd[:, 20]
    new = torch.rand(num, 30, generator=gen, dtype=torch.float64) + 0.1
    new[1, 4] = 0.0
    sumtree_update_batched_(trees, upd, new, k)
    for i in range(num):
        sumtree_update_(singles[i], upd[i], new[i], k)
        assert torch.equal(trees[i], singles[i])
    # scalar and per-seed [S, 1] priorities broadcast
    sumtree_update_batched_(trees, upd[:, :3], 2.5, k)
    per_seed = torch.arange(1, num + 1, dtype=torch.float64).unsqueeze(-1)
    sumtree_update_batched_(trees, upd[:, 3:6], per_seed, k)
    for i in range(num):
        sumtree_update_(singles[i], upd[i, :3], torch.tensor(2.5), k)
        sumtree_update_(singles[i], upd[i, 3:6], per_seed[i], k)
        assert torch.equal(trees[i], singles[i])
    index = sumtree_sample_batched(trees, u, k)
    for i in range(num):
        assert torch.equal(index[i], sumtree_sample(singles[i], u[i], k))
    # zero-priority leaves (p = 0 and unfilled rows) are never drawn
    total, n_leaves = 1, 1
    while total < trees.shape[1]:
        n_leaves *= k
        total += n_leaves
    assert torch.all(trees[:, -n_leaves:].gather(1, index) > 0)


def test_batched_sumtree_never_draws_zero_leaves():
    k = 4
    priorities = torch.tensor([[1e-3, 1e3, 0.0, 1e-3], [0.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    trees = sumtree_build_batched(priorities, capacity=60, fanout=k)
    u = torch.rand(2, 20_000, dtype=torch.float64)
    u[:, :3] = torch.tensor([0.0, 1.0 - 2**-53, 0.9999999999], dtype=torch.float64)
    index = sumtree_sample_batched(trees, u, k)
    assert set(index[0].unique().tolist()) <= {0, 1, 3}
    assert index[1].unique().tolist() == [3]


def test_batched_sumtree_input_errors():
    trees = sumtree_build_batched(torch.ones(2, 8, dtype=torch.float64), fanout=2)
    with pytest.raises(ValueError):
        sumtree_sample_batched(trees, torch.rand(3, 4), 2)
    with pytest.raises(ValueError):
        sumtree_update_batched_(trees, torch.zeros(3, 2, dtype=torch.long), 1.0, 2)
    with pytest.raises(ValueError):
        sumtree_build_batched(torch.ones(8))
    with pytest.raises(ValueError):
        sumtree_build_batched(torch.ones(2, 8), capacity=4)


# ----------------------------------------------------------------------------- equivalence
def _script(num_seeds: int):
    """Interleaved ops: ("extend", td [S, ...]), ("sample",), ("prio", salt), ("offon", n)."""
    return [
        ("extend", seed_transitions(num_seeds, 5, 100)),
        ("sample",),
        ("prio", 0),
        ("offon", 8),
        ("sample",),
        ("extend", seed_transitions(num_seeds, 1, 200)[:, 0]),  # batch size [S]
        ("prio", 1),
        ("sample",),
        ("prio", 2),
        ("extend", seed_transitions(num_seeds, 6, 300).reshape(num_seeds, 2, 3)),  # [S, 2, 3]
        ("offon", 5),
        ("sample",),
        ("prio", 3),
        ("prio_dup",),
        ("sample",),
        ("extend", seed_transitions(num_seeds, 0, 400)),  # empty extend
        ("offon", 3),
        ("sample",),
    ]


def _priorities(batch: TensorDictBase, salt: int) -> torch.Tensor:
    return 0.05 + (batch["observation"][..., 1].abs().double() * (salt + 1)) % 4


def _check_balanced_state(batched: SeedBatchedReplay, singles) -> None:
    for i, single in enumerate(singles):
        assert torch.equal(batched.trees[i], single.sampler.tree)
        assert torch.equal(batched.max_priority[i], single.sampler.max_priority)


@pytest.mark.parametrize(
    "strategy,kwargs",
    [(s, {}) for s in REPLAY_STRATEGIES] + [("symmetric", {"offline_fraction": 0.3})],
)
def test_each_seed_equals_its_own_make_replay(strategy, kwargs):
    offline = transitions(N_OFF)
    batched = make_seed_batched_replay(strategy, offline, 3, CAP, BATCH, seeds=SEEDS, **kwargs)
    singles = [make_replay(strategy, offline, CAP, BATCH, seed=s, **kwargs) for s in SEEDS]
    last = None
    n_checked = 0
    for op in _script(3):
        if op[0] == "extend":
            index = batched.extend(op[1])
            for i, single in enumerate(singles):
                expected = single.extend(op[1][i])
                assert torch.equal(index[i], expected)
            assert batched.num_online == singles[0].num_online
        elif op[0] == "sample":
            last = batched.sample()
            assert last.batch_size == (3, BATCH)
            for i, single in enumerate(singles):
                assert_td_equal(last[i], single.sample())
            n_checked += 1
        elif op[0] == "offon":
            off, on = batched.sample_offline_online(op[1])
            for i, single in enumerate(singles):
                s_off, s_on = single.sample_offline_online(op[1])
                assert_td_equal(off[i], s_off)
                assert_td_equal(on[i], s_on)
        elif strategy == "balanced" and op[0] == "prio":
            priority = _priorities(last, op[1])
            batched.update_priority(last["index"], priority)
            for i, single in enumerate(singles):
                single.update_priority(last["index"][i], priority[i])
            _check_balanced_state(batched, singles)
        elif strategy == "balanced" and op[0] == "prio_dup":
            index = torch.tensor([[3, 3, N_OFF + 1, N_OFF + 1, 7]] * 3)
            priority = torch.tensor([[0.5, 9.0, 0.1, 30.0, 2.0]] * 3, dtype=torch.float64)
            priority = priority * torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
            batched.update_priority(index, priority)
            for i, single in enumerate(singles):
                single.update_priority(index[i], priority[i])
            _check_balanced_state(batched, singles)
        # each seed's online share is its single replay's (by construction or from its tree)
        torch.testing.assert_close(
            batched.online_share(), torch.stack([r.online_share() for r in singles]),
            rtol=1e-12, atol=0,
        )
    assert n_checked == 6
    # storage content agrees with each single buffer's filled rows (TorchRL also stores "index")
    for i, single in enumerate(singles):
        expected = single.data[N_OFF : len(single)].exclude("index")
        assert_td_equal(batched.online_data[i, : batched.num_online], expected)
    if strategy == "balanced":
        _check_balanced_state(batched, singles)
        for i, single in enumerate(singles):
            assert torch.equal(batched.priorities[i], single.sampler.priorities)


def test_default_seeds_are_drawn_from_torch_rng_and_reproducible():
    offline = transitions(N_OFF)
    torch.manual_seed(5)
    a = make_seed_batched_replay("uniform", offline, 4, CAP, BATCH)
    torch.manual_seed(5)
    b = make_seed_batched_replay("uniform", offline, 4, CAP, BATCH)
    assert a.seeds == b.seeds and len(set(a.seeds)) == 4
    assert torch.equal(a.sample()["index"], b.sample()["index"])
    single = make_replay("uniform", offline, CAP, BATCH, seed=a.seeds[2])
    assert torch.equal(a.sample()["index"][2], (single.sample(), single.sample())[1]["index"])


# ----------------------------------------------------------------------------- checkpointing
def _run(replay: SeedBatchedReplay, steps: int, start: float) -> list[torch.Tensor]:
    out = []
    for k in range(steps):
        replay.extend(seed_transitions(replay.num_seeds, 3, start + 3 * k))
        batch = replay.sample()
        out += [batch["index"].clone(), batch["observation"].clone()]
        if replay.strategy == "balanced":
            replay.update_priority(batch["index"], _priorities(batch, k))
        off, on = replay.sample_offline_online(4)
        out += [off["index"], on["index"], on["action"]]
    return out


@pytest.mark.parametrize("strategy", REPLAY_STRATEGIES)
@pytest.mark.parametrize("mode", ["state_dict", "torch.save", "pickle"])
def test_state_roundtrip_continues_identically(strategy, mode, tmp_path):
    replay = build(strategy)
    _run(replay, 3, start=50)
    if mode == "state_dict":
        state = replay.state_dict()
    elif mode == "torch.save":
        torch.save(replay.state_dict(), tmp_path / "replay.pt")
    else:
        blob = pickle.dumps(replay)
    expected = _run(replay, 4, start=200)

    if mode == "pickle":
        restored = pickle.loads(blob)
    else:
        restored = build(strategy, seeds=[1, 2, 3])
        if mode == "torch.save":
            state = torch.load(tmp_path / "replay.pt", weights_only=True)
        restored.load_state_dict(state)
    assert restored.num_online == 9 and len(restored) == N_OFF + 9
    got = _run(restored, 4, start=200)
    assert len(expected) == len(got)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert_td_equal(restored.data, replay.data)
    if strategy == "balanced":
        assert torch.equal(restored.trees, replay.trees)
        assert torch.equal(restored.max_priority, replay.max_priority)


def test_load_state_dict_rejects_mismatched_buffers():
    state = build("balanced").state_dict()
    with pytest.raises(ValueError, match="strategy"):
        build("uniform").load_state_dict(state)
    with pytest.raises(ValueError, match="num_seeds"):
        build("balanced", num_seeds=2, seeds=[1, 2]).load_state_dict(state)


# ----------------------------------------------------------------------------- layout / shapes
def test_sample_shapes_dtypes_layout_and_cast_on_write():
    s = 3
    replay = build("balanced")
    assert replay.data.batch_size == (N_OFF + s * CAP,)  # offline rows stored once
    assert replay.online_data.batch_size == (s, CAP)
    assert torch.equal(replay.offline_data["observation"], transitions(N_OFF)["observation"])
    online = seed_transitions(s, 4, 100)
    online.set("collector", torch.zeros(s, 4))  # extra key dropped
    online.set("observation", online["observation"].double())  # cast to the storage dtype
    index = replay.extend(online)
    assert torch.equal(index, torch.arange(N_OFF, N_OFF + 4).expand(s, 4))
    assert replay.data.get("collector", None) is None
    assert replay.data["observation"].dtype == torch.float32
    # seed i's online row j lives at storage row N + i * C + j
    for i in range(s):
        assert torch.equal(
            replay.data["action"][N_OFF + i * CAP : N_OFF + i * CAP + 4], online["action"][i]
        )
    batch = replay.sample()
    assert batch.batch_size == (s, BATCH) and batch.device == torch.device("cpu")
    assert batch["index"].dtype == torch.long and batch["is_online"].dtype == torch.bool
    assert batch["observation"].shape == (s, BATCH, OBS_DIM)
    assert batch["next", "reward"].shape == (s, BATCH, 1)
    assert torch.equal(batch["is_online"], batch["index"] >= N_OFF)
    # rows are the seed's own: online rows carry the seed's ids, offline ids equal the index
    ids = batch["observation"][..., 0].long()
    off = ~batch["is_online"]
    assert torch.equal(ids[off], batch["index"][off])
    for i in range(s):
        on = batch["is_online"][i]
        assert torch.equal(ids[i][on], batch["index"][i][on] - N_OFF + 100 + 10_000 * (i + 1))
    assert replay.sample(5).batch_size == (s, 5)
    off_td, on_td = replay.sample_offline_online(7)
    assert off_td.batch_size == on_td.batch_size == (s, 7)
    assert torch.all(off_td["index"] < N_OFF)
    assert torch.all((on_td["index"] >= N_OFF) & (on_td["index"] < N_OFF + 4))
    assert replay.priorities.shape == (s, N_OFF + CAP) and replay.max_priority.shape == (s,)
    assert "num_seeds=3" in repr(replay)


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("strategy", REPLAY_STRATEGIES)
def test_op_count_independent_of_num_seeds_and_no_host_sync(strategy):
    counts = []
    for s in (2, 5):
        replay = make_seed_batched_replay(
            strategy,
            transitions(N_OFF),
            s,
            CAP,
            BATCH,
            seeds=list(range(s)),
            check_priorities=False,
        )
        replay.extend(seed_transitions(s, 6, 100))
        with _OpCounter() as counter:
            batch = replay.sample()
            if strategy == "balanced":
                replay.update_priority(batch["index"], _priorities(batch, 0))
            replay.sample_offline_online(8)
        ops = counter.ops
        assert "aten._local_scalar_dense.default" not in ops  # no .item() / .tolist()
        rand = ops.pop("aten.rand.generator")
        assert rand == s * {"balanced": 3, "uniform": 3, "symmetric": 4, "online": 4}[strategy]
        counts.append(ops)
    assert counts[0] == counts[1]


# ----------------------------------------------------------------------------- errors
def test_extend_errors():
    replay = build("balanced")
    with pytest.raises(ValueError, match="num_seeds"):
        replay.extend(seed_transitions(4, 2, 100))
    with pytest.raises(ValueError, match="num_seeds"):
        replay.extend(transitions(1, 100)[0])  # batch size []
    with pytest.raises(ReplayKeyError):
        replay.extend(seed_transitions(3, 2, 100).exclude(("next", "truncated")))
    with pytest.raises(TypeError):
        replay.extend({"observation": torch.zeros(3, 2)})
    bad = seed_transitions(3, 2, 100)
    bad.set("action", torch.zeros(3, 2, ACT_DIM + 1))
    with pytest.raises(ValueError, match="feature shape"):
        replay.extend(bad)
    assert replay.num_online == 0  # failed extends write nothing
    replay.extend(seed_transitions(3, CAP - 1, 100))
    with pytest.raises(ReplayCapacityError):
        replay.extend(seed_transitions(3, 2, 500))
    assert replay.num_online == CAP - 1
    replay.extend(seed_transitions(3, 1, 600))
    assert replay.num_online == CAP


@pytest.mark.parametrize("strategy", ["uniform", "symmetric", "online"])
def test_priorities_not_supported(strategy):
    replay = build(strategy)
    replay.extend(seed_transitions(3, 2, 100))
    with pytest.raises(PrioritiesNotSupportedError):
        replay.update_priority(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2))
    with pytest.raises(PrioritiesNotSupportedError):
        _ = replay.trees


def test_update_priority_validation():
    replay = build("balanced")
    replay.extend(seed_transitions(3, 2, 100))
    good = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(IndexError):
        replay.update_priority(torch.full((3, 2), N_OFF + 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="finite"):
        replay.update_priority(good, torch.tensor([[1.0, 0.0]] * 3))
    with pytest.raises(ValueError, match="finite"):
        replay.update_priority(good, torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\[S"):
        replay.update_priority(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2))
    with pytest.raises(ValueError, match="shape"):
        replay.update_priority(good, torch.ones(3, 3))
    before = replay.trees.clone()
    replay.update_priority(torch.zeros(3, 0, dtype=torch.long), torch.ones(3, 0))
    assert torch.equal(before, replay.trees)


@pytest.mark.parametrize("strategy", REPLAY_STRATEGIES)
def test_empty_online_buffer(strategy):
    replay = build(strategy)
    with pytest.raises(EmptyOnlineBufferError):
        replay.sample_offline_online(4)
    if strategy in ("symmetric", "online"):
        with pytest.raises(EmptyOnlineBufferError):
            replay.sample()
        single = make_replay(strategy, transitions(N_OFF), CAP, BATCH, seed=0)
        with pytest.raises(EmptyOnlineBufferError):
            single.sample()
    else:
        assert torch.all(replay.sample()["index"] < N_OFF)


def test_symmetric_all_offline_fraction_samples_without_online_rows():
    replay = build("symmetric", offline_fraction=1.0)
    assert torch.all(replay.sample()["index"] < N_OFF)


def test_construction_errors():
    offline = transitions(N_OFF)
    with pytest.raises(ValueError, match="unknown"):
        make_seed_batched_replay("prioritized", offline, 2, CAP, BATCH)
    with pytest.raises(TypeError):
        make_seed_batched_replay("uniform", {"observation": torch.zeros(3)}, 2, CAP, BATCH)
    with pytest.raises(ValueError, match="flat"):
        make_seed_batched_replay("uniform", offline.reshape(4, 10), 2, CAP, BATCH)
    with pytest.raises(ValueError, match="flat"):
        make_seed_batched_replay("uniform", offline[:0], 2, CAP, BATCH)
    with pytest.raises(ValueError):
        make_seed_batched_replay("uniform", offline, 2, -1, BATCH)
    with pytest.raises(ValueError):
        make_seed_batched_replay("uniform", offline, 2, CAP, 0)
    with pytest.raises(ValueError, match="num_seeds"):
        make_seed_batched_replay("uniform", offline, 0, CAP, BATCH)
    with pytest.raises(ValueError, match="seeds"):
        make_seed_batched_replay("uniform", offline, 2, CAP, BATCH, seeds=[1, 2, 3])
    with pytest.raises(ReplayKeyError):
        make_seed_batched_replay("uniform", offline.exclude("action"), 2, CAP, BATCH)
    with pytest.raises(ValueError, match="offline_fraction"):
        make_seed_batched_replay("symmetric", offline, 2, CAP, BATCH, offline_fraction=1.5)


def test_zero_online_capacity_and_single_seed():
    replay = make_seed_batched_replay("balanced", transitions(N_OFF), 1, 0, 8, seeds=[4])
    single = make_replay("balanced", transitions(N_OFF), 0, 8, seed=4)
    assert_td_equal(replay.sample()[0], single.sample())
    with pytest.raises(ReplayCapacityError):
        replay.extend(seed_transitions(1, 1, 100))


# ----------------------------------------------------------------------------- columns / priority
def test_offline_only_columns_are_not_stored_unless_filled():
    offline = transitions(N_OFF)
    offline["episode"] = torch.arange(N_OFF) // 4
    plain = make_seed_batched_replay("uniform", offline, 2, CAP, BATCH, seeds=[1, 2])
    assert "episode" not in plain.storage_keys
    plain.extend(seed_transitions(2, 3, 100))  # online rows have no episode column
    assert "episode" not in plain.sample().keys()
    with pytest.raises(ReplayKeyError, match="online_fill"):
        make_seed_batched_replay(
            "uniform", offline, 2, CAP, BATCH, seeds=[1, 2], extra_keys=["episode"]
        ).extend(seed_transitions(2, 3, 100))
    filled = make_seed_batched_replay(
        "balanced", offline, 2, CAP, BATCH, seeds=[1, 2], online_fill={"episode": -1}
    )
    filled.extend(seed_transitions(2, 3, 100))
    assert torch.equal(filled.offline_data["episode"], offline["episode"])
    assert torch.all(filled.online_data["episode"][:, :3] == -1)
    batch = filled.sample(200)
    assert torch.all(batch["episode"][batch["is_online"]] == -1)
    off = ~batch["is_online"]
    assert torch.equal(batch["episode"][off], batch["index"][off] // 4)


def test_update_tensordict_priority_equals_update_priority_and_online_share_by_hand():
    a, b = build("balanced"), build("balanced")
    for replay in (a, b):
        replay.extend(seed_transitions(3, 4, 100))
    # seed i: N_OFF rows at 1 and 4 online rows at 1 -> 4 / 44
    torch.testing.assert_close(
        a.online_share(), torch.full((3,), 4 / 44, dtype=torch.float64), rtol=1e-15, atol=0
    )
    sa, sb = a.sample(), b.sample()
    assert torch.equal(sa["index"], sb["index"])
    priority = _priorities(sa, 0)
    a.update_priority(sa["index"], priority)
    sb.set("td_error", priority.unsqueeze(-1))  # [S, B, 1]
    b.update_tensordict_priority(sb)
    assert torch.equal(a.trees, b.trees) and torch.equal(a.max_priority, b.max_priority)
    # hand computation of the share after writing known priorities: seed i's online rows get
    # i + 2 each, its offline row 0 gets 0.5
    c = build("balanced")
    c.extend(seed_transitions(3, 4, 100))
    online_rows = torch.arange(N_OFF, N_OFF + 4).expand(3, 4)
    c.update_priority(online_rows, torch.tensor([[2.0], [3.0], [4.0]]))
    c.update_priority(torch.zeros(3, 1, dtype=torch.long), 0.5)
    expected = torch.tensor([8 / (39.5 + 8), 12 / (39.5 + 12), 16 / (39.5 + 16)], dtype=torch.float64)
    torch.testing.assert_close(c.online_share(), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("strategy", ["uniform", "symmetric", "online"])
def test_update_tensordict_priority_rejected_without_priorities(strategy):
    replay = build(strategy)
    replay.extend(seed_transitions(3, 2, 100))
    batch = replay.sample()
    batch.set("td_error", torch.ones(3, BATCH))
    with pytest.raises(PrioritiesNotSupportedError, match=f"'{strategy}'"):
        replay.update_tensordict_priority(batch)
    expected = {"uniform": 2 / (N_OFF + 2), "symmetric": 0.5, "online": 1.0}[strategy]
    torch.testing.assert_close(
        replay.online_share(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-15, atol=0
    )

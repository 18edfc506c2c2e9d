"""Tests for torchrl_opt.schedules: KappaSchedule and the Table 15 presets."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from torchrl_opt.schedules import (
    KAPPA_PRESETS,
    KappaSchedule,
    KappaScheduleError,
    UnknownKappaPresetError,
    kappa_preset,
    kappa_preset_config,
)

# --------------------------------------------------------------------------------------------
# OPT paper (arXiv 2507.08387), Appendix H, Table 15, copied by hand row by row:
#   environment        kappa_init  T_decay  kappa_end
TABLE_15 = """
halfcheetah-r       1    -       1
hopper-r            1    -       1
walker2d-r          1    -       1
halfcheetah-m       0.3  150000  0.9
hopper-m            0.3  150000  0.9
walker2d-m          0.3  150000  0.9
halfcheetah-m-r     0.1  150000  0.9
hopper-m-r          0.1  150000  0.9
walker2d-m-r        0.1  150000  0.9
umaze               0.1  100000  0.9
umaze-diverse       0.1  100000  0.9
medium-play         0.1  100000  0.9
medium-diverse      0.1  100000  0.9
large-play          0.1  100000  0.9
large-diverse       0.1  200000  0.9
pen-cloned          0.1  250000  0.9
hammer-cloned       0.1  250000  0.9
door-cloned         0.1  250000  0.9
relocate-cloned     0.1  250000  0.9
"""
_MUJOCO_SUFFIX = {"r": "random", "m": "medium", "m-r": "medium-replay"}


def _table_15_rows() -> list[tuple[str, str, float, int | None, float]]:
    rows = []
    for line in TABLE_15.strip().splitlines():
        env, k_init, t_decay, k_end = line.split()
        head, _, tail = env.partition("-")
        if head in ("halfcheetah", "hopper", "walker2d"):
            domain, dataset = head, _MUJOCO_SUFFIX[tail]
        elif head in ("pen", "hammer", "door", "relocate"):
            domain, dataset = head, tail
        else:
            domain, dataset = "antmaze", env
        rows.append(
            (domain, dataset, float(k_init), None if t_decay == "-" else int(t_decay), float(k_end))
        )
    return rows


# ----------------------------------------------------------------------------- values
def test_linear_values_at_boundaries():
    s = KappaSchedule(0.1, 0.9, T_decay=100, start_step=20)
    assert s.value(0) == 0.1
    assert s.value(19) == 0.1
    assert s.value(20) == 0.1  # at start: still kappa_init
    assert s.value(21) == pytest.approx(0.1 + 0.8 / 100)
    assert s.value(70) == pytest.approx(0.5)  # midpoint
    assert s.value(119) == pytest.approx(0.9 - 0.8 / 100)
    assert s.value(120) == 0.9  # end reached exactly
    assert s.value(10**9) == 0.9  # clamped afterwards
    assert s.end_step == 120


def test_linear_matches_independent_formula():
    k0, k1, t0, T = 0.3, 0.9, 7, 150
    s = KappaSchedule(k0, k1, T, start_step=t0)
    for t in range(0, 200):
        ref = k0 + (k1 - k0) * min(max((t - t0) / T, 0.0), 1.0)
        assert s.value(t) == pytest.approx(ref, abs=1e-12), t


def test_decreasing_schedule_is_allowed():
    s = KappaSchedule(0.9, 0.1, T_decay=10)
    assert s.value(5) == pytest.approx(0.5)
    assert s.value(10) == 0.1


def test_t_decay_zero_jumps_at_start_step():
    s = KappaSchedule(0.2, 0.8, T_decay=0, start_step=5)
    assert [s.value(t) for t in (0, 4, 5, 6, 1000)] == [0.2, 0.2, 0.8, 0.8, 0.8]
    s0 = KappaSchedule(0.2, 0.8, T_decay=0)
    assert s0.value(0) == 0.8


def test_constant():
    s = KappaSchedule.constant(0.5)
    assert s.is_constant
    assert all(s.value(t) == 0.5 for t in (0, 1, 10**6))
    buf = torch.zeros(())
    s.attach(buf)
    s.step(n=1000)
    assert buf.item() == 0.5


def test_value_is_pure_function_of_step():
    s = KappaSchedule(0.1, 0.9, T_decay=10)
    before = s.value(5)
    s.step(n=7)
    assert s.value(5) == before
    assert s.current == s.value(7) == s.value(s.step_count)


# ----------------------------------------------------------------------------- buffers
class _LossWithKappa(nn.Module):
    """Stand-in for OPTLoss: kappa is a registered float32 buffer of shape []."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kappa", torch.tensor(0.0))

    def forward(self, q_off: torch.Tensor, q_on: torch.Tensor) -> torch.Tensor:
        return -((1 - self.kappa) * q_off + self.kappa * q_on).mean()


def test_step_updates_buffer_in_place_seen_by_earlier_reference():
    loss = _LossWithKappa()
    captured = loss.kappa  # a reference taken before any update (as a graph would hold)
    ptr = captured.data_ptr()
    s = KappaSchedule(0.1, 0.9, T_decay=4).attach(loss.kappa)
    assert captured.item() == pytest.approx(0.1)  # attach writes the current value
    values = [s.step() for _ in range(6)]
    assert values == pytest.approx([0.3, 0.5, 0.7, 0.9, 0.9, 0.9])
    assert captured.item() == pytest.approx(0.9)
    assert loss.kappa is captured and captured.data_ptr() == ptr
    assert captured.dtype == torch.float32 and captured.shape == torch.Size([])


def test_step_into_without_attach():
    loss = _LossWithKappa()
    captured = loss.kappa
    s = KappaSchedule(0.0, 1.0, T_decay=10)
    out = s.step(into=loss.kappa)
    assert out == pytest.approx(0.1)
    assert captured.item() == pytest.approx(0.1)
    assert s.attached == ()  # `into` is written once, not registered
    s.step()
    assert captured.item() == pytest.approx(0.1)
    s.step(into=captured, n=3)
    assert captured.item() == pytest.approx(0.5)


def test_step_changes_loss_value_of_a_captured_closure():
    """A loss evaluated after `step` uses the new kappa without being rebuilt."""
    loss = _LossWithKappa()
    s = KappaSchedule(0.0, 1.0, T_decay=2).attach(loss.kappa)
    q_off, q_on = torch.full((4,), 2.0), torch.full((4,), 6.0)
    fn = loss.forward  # "compiled" callable stand-in holding the module
    assert fn(q_off, q_on).item() == pytest.approx(-2.0)
    s.step()
    assert fn(q_off, q_on).item() == pytest.approx(-4.0)
    s.step()
    assert fn(q_off, q_on).item() == pytest.approx(-6.0)


@pytest.mark.compile
def test_compiled_loss_sees_new_kappa_without_recompiling():
    torch._dynamo.reset()
    loss = _LossWithKappa()
    s = KappaSchedule(0.0, 1.0, T_decay=4).attach(loss.kappa)
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    q_off, q_on = torch.full((3,), 1.0), torch.full((3,), 5.0)
    got = []
    for _ in range(5):
        got.append(compiled(q_off, q_on).item())
        s.step()
    assert got == pytest.approx([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert len(frames) == 1


def test_attach_multiple_and_per_seed_buffer():
    a, b = torch.zeros(()), torch.zeros(5, dtype=torch.float64)
    s = KappaSchedule(0.2, 0.6, T_decay=2).attach(a).attach(b).attach(a)
    assert len(s.attached) == 2  # attaching twice registers once
    s.step()
    assert a.item() == pytest.approx(0.4)
    assert torch.allclose(b, torch.full((5,), 0.4, dtype=torch.float64))
    s.detach_buffers()
    s.step()
    assert a.item() == pytest.approx(0.4)


def test_attach_rejects_bad_buffers():
    s = KappaSchedule(0.1, 0.9, 10)
    with pytest.raises(KappaScheduleError, match="torch.Tensor"):
        s.attach(0.5)
    with pytest.raises(KappaScheduleError, match="floating-point"):
        s.attach(torch.zeros((), dtype=torch.int64))
    with pytest.raises(KappaScheduleError, match="requires grad"):
        s.attach(nn.Parameter(torch.zeros(())))
    with pytest.raises(KappaScheduleError, match="floating-point"):
        s.step(into=torch.zeros((), dtype=torch.int32))
    assert s.step_count == 0  # a rejected `into` does not advance the counter


# ----------------------------------------------------------------------------- state
def test_state_dict_round_trip_mid_schedule():
    s = KappaSchedule(0.1, 0.9, T_decay=1000, start_step=10)
    s.step(n=437)
    sd = s.state_dict()
    assert sd == {
        "kappa_init": 0.1,
        "kappa_end": 0.9,
        "T_decay": 1000,
        "start_step": 10,
        "step_count": 437,
    }
    assert all(type(v) in (int, float) for v in sd.values())
    sd = json.loads(json.dumps(sd))  # plain python numbers survive serialisation

    buf = torch.zeros(())
    restored = KappaSchedule.constant(0.0).attach(buf)
    restored.load_state_dict(sd)
    assert restored.step_count == 437
    assert restored.config() == s.config()
    assert restored.current == s.current
    assert buf.item() == pytest.approx(s.current)  # attached buffers are rewritten on load
    for _ in range(700):
        assert restored.step() == s.step()
    assert restored.current == 0.9


def test_state_dict_survives_deepcopy_and_is_a_copy():
    s = KappaSchedule(0.1, 0.9, T_decay=10)
    sd = s.state_dict()
    s.step(n=3)
    assert sd["step_count"] == 0
    s2 = copy.deepcopy(s)
    assert s2.state_dict() == s.state_dict()


def test_load_state_dict_errors_leave_schedule_unchanged():
    s = KappaSchedule(0.1, 0.9, T_decay=10)
    s.step(n=2)
    before = s.state_dict()
    with pytest.raises(KappaScheduleError, match="missing keys \\['step_count'\\]"):
        s.load_state_dict({k: v for k, v in before.items() if k != "step_count"})
    with pytest.raises(KappaScheduleError, match="unknown keys \\['foo'\\]"):
        s.load_state_dict({**before, "foo": 1})
    with pytest.raises(KappaScheduleError, match="kappa_end must lie in"):
        s.load_state_dict({**before, "kappa_end": 1.5})
    with pytest.raises(KappaScheduleError, match="step_count must be >= 0"):
        s.load_state_dict({**before, "step_count": -1})
    with pytest.raises(KappaScheduleError, match="mapping"):
        s.load_state_dict([1, 2])
    assert s.state_dict() == before


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kappa_init=-0.1, kappa_end=0.9, T_decay=10), "kappa_init must lie in \\[0, 1\\]"),
        (dict(kappa_init=0.1, kappa_end=1.01, T_decay=10), "kappa_end must lie in \\[0, 1\\]"),
        (dict(kappa_init=float("nan"), kappa_end=0.9, T_decay=10), "kappa_init must be finite"),
        (dict(kappa_init="0.1", kappa_end=0.9, T_decay=10), "kappa_init must be a real number"),
        (dict(kappa_init=True, kappa_end=0.9, T_decay=10), "kappa_init must be a real number"),
        (dict(kappa_init=0.1, kappa_end=0.9, T_decay=-1), "T_decay must be >= 0"),
        (dict(kappa_init=0.1, kappa_end=0.9, T_decay=10.5), "T_decay must be a non-negative int"),
        (dict(kappa_init=0.1, kappa_end=0.9, T_decay=None), "T_decay must be a non-negative int"),
        (dict(kappa_init=0.1, kappa_end=0.9, T_decay=10, start_step=-5), "start_step must be >= 0"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(KappaScheduleError, match=match):
        KappaSchedule(**kwargs)


def test_validation_accepts_integral_floats_and_is_a_value_error():
    assert KappaSchedule(0, 1, T_decay=1e5).T_decay == 100_000
    assert issubclass(KappaScheduleError, ValueError)
    s = KappaSchedule(0.1, 0.9, 10)
    with pytest.raises(KappaScheduleError, match="step must be >= 0"):
        s.value(-1)
    with pytest.raises(KappaScheduleError, match="n must be >= 0"):
        s.step(n=-1)
    with pytest.raises(KappaScheduleError, match="kappa must lie in"):
        KappaSchedule.constant(2.0)


def test_from_config():
    s = KappaSchedule.from_config({"kappa_init": 0.3, "kappa_end": 0.9, "T_decay": 150_000})
    assert s.config() == {"kappa_init": 0.3, "kappa_end": 0.9, "T_decay": 150_000, "start_step": 0}
    with pytest.raises(KappaScheduleError, match="missing keys \\['T_decay'\\]"):
        KappaSchedule.from_config({"kappa_init": 0.3, "kappa_end": 0.9})
    with pytest.raises(KappaScheduleError, match="unknown keys \\['tdecay'\\]"):
        KappaSchedule.from_config({"kappa_init": 0.3, "kappa_end": 0.9, "T_decay": 1, "tdecay": 1})


# ----------------------------------------------------------------------------- presets
def test_preset_table_matches_appendix_h_table_15():
    rows = _table_15_rows()
    assert len(rows) == 19
    assert set(KAPPA_PRESETS) == {(d, s) for d, s, *_ in rows}
    for domain, dataset, k_init, t_decay, k_end in rows:
        cfg = kappa_preset_config(domain, dataset)
        assert cfg == {
            "kappa_init": k_init,
            "kappa_end": k_end,
            "T_decay": 0 if t_decay is None else t_decay,
        }, (domain, dataset)
        sched = kappa_preset(domain, dataset)
        assert isinstance(sched, KappaSchedule)
        assert sched.value(0) == k_init
        if t_decay is None:  # "-": kappa stays at 1, Q_off unused
            assert sched.is_constant and sched.value(10**6) == k_init == k_end == 1.0
        else:
            assert sched.value(t_decay // 2) == pytest.approx((k_init + k_end) / 2)
            assert sched.value(t_decay - 1) < k_end
            assert sched.value(t_decay) == k_end


def test_preset_examples_and_name_normalisation():
    assert kappa_preset("walker2d", "random").config()["kappa_end"] == 1.0
    assert kappa_preset("antmaze", "large-diverse").T_decay == 200_000
    assert kappa_preset("pen", "cloned").T_decay == 250_000
    assert kappa_preset("Hopper", "medium_replay").kappa_init == 0.1
    s = kappa_preset("antmaze", "umaze", start_step=25_000)
    assert s.value(25_000) == 0.1 and s.value(125_000) == 0.9


def test_presets_are_read_only_and_return_fresh_objects():
    with pytest.raises(TypeError):
        KAPPA_PRESETS[("walker2d", "random")]["kappa_init"] = 0.0  # type: ignore[index]
    cfg = kappa_preset_config("walker2d", "medium")
    cfg["kappa_init"] = 0.0
    assert kappa_preset_config("walker2d", "medium")["kappa_init"] == 0.3
    a, b = kappa_preset("walker2d", "medium"), kappa_preset("walker2d", "medium")
    a.step(n=10)
    assert b.step_count == 0


def test_unknown_preset_error_lists_known_keys():
    with pytest.raises(UnknownKappaPresetError) as info:
        kappa_preset("walker2d", "expert")
    msg = str(info.value)
    assert "walker2d" in msg and "'expert'" in msg
    for known in ("walker2d/medium-replay", "antmaze/large-diverse", "relocate/cloned"):
        assert known in msg
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownKappaPresetError, match="Known"):
        kappa_preset("antmaze", "umaze-play")
    with pytest.raises(UnknownKappaPresetError, match="must be a string"):
        kappa_preset(None, "random")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_sees_new_kappa():
    loss = _LossWithKappa().cuda()
    s = KappaSchedule(0.0, 1.0, T_decay=4).attach(loss.kappa)
    q_off = torch.full((3,), 1.0, device="cuda")
    q_on = torch.full((3,), 5.0, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture
        loss(q_off, q_on)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = loss(q_off, q_on)
    got = []
    for _ in range(5):
        graph.replay()
        got.append(out.item())
        s.step()
    assert got == pytest.approx([-1.0, -2.0, -3.0, -4.0, -5.0])


# ---------------------------------------------------------------------------------------------
# AdaptiveKappa (an extension: kappa from the critics' online TD errors)
# ---------------------------------------------------------------------------------------------
def test_adaptive_kappa_follows_the_rule_by_hand():
    from torchrl_opt.schedules import AdaptiveKappa

    rate, lo, hi = 0.25, 0.1, 0.9
    kappa = AdaptiveKappa(0.5, lo, hi, rate)
    buffer = torch.zeros(())
    kappa.attach(buffer)
    assert float(buffer) == 0.5  # init until the first batch with online rows
    g = torch.Generator().manual_seed(0)
    e = None
    for step in range(6):
        off = torch.rand(2, 8, generator=g) * (1 + step)  # squared TD errors [members, B]
        on = torch.rand(2, 8, generator=g)
        online = torch.rand(8, generator=g) < 0.5
        if step == 2:
            online[:] = False  # no online rows: nothing moves
        before = float(buffer)
        kappa.observe(off, on, online)
        if not online.any():
            assert float(buffer) == before
            continue
        rows = online.nonzero().flatten().tolist()
        m = [sum(float(x[:, j].mean()) for j in rows) / len(rows) for x in (off, on)]
        e = m if e is None else [a + rate * (b - a) for a, b in zip(e, m)]
        expected = min(max(e[0] / (e[0] + e[1]), lo), hi)
        assert float(buffer) == pytest.approx(expected, rel=1e-5)
        assert kappa.errors.tolist() == pytest.approx(e, rel=1e-5)
    # a large off-critic error pushes kappa to its upper bound
    kappa.observe(torch.full((2, 8), 1e6), torch.full((2, 8), 1e-6), torch.ones(8, dtype=torch.bool))
    assert float(buffer) == pytest.approx(hi)
    # state_dict round trip, into another buffer
    other, out = AdaptiveKappa(0.5, lo, hi, rate), torch.zeros(())
    other.attach(out)
    other.load_state_dict(kappa.state_dict())
    assert float(out) == float(buffer) and torch.equal(other.errors, kappa.errors)
    with pytest.raises(KappaScheduleError, match="init"):
        AdaptiveKappa(0.95, lo, hi)
    with pytest.raises(KappaScheduleError, match="rate"):
        AdaptiveKappa(0.5, lo, hi, rate=0.0)

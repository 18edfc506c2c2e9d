"""The plain ``torch.cuda.CUDAGraph`` backend (``graph_backend="torch"``, :class:`CudaGraphStep`).

CPU: configuration validation, the batch structure checks (:func:`batch_spec` /
:func:`check_batch`), and the warm-up / capture / replay state machine against a fake
``torch.cuda`` (no kernels are captured, but the calls, their order, the static buffers and the
absence of synchronisation on the replay path are checked). CUDA (``-m gpu``): graphed update steps
give the same losses and parameters as eager, mismatched batches raise, and the static outputs are
overwritten by the next replay unless ``clone_outputs=True``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from _helpers import transition_batch
from tensordict import TensorDict
from test_compiled_updates import _agent as _compiled_agent
from test_compiled_updates import _updates

from torchrl_opt.pipeline import cudagraph
from torchrl_opt.pipeline.config import GRAPH_BACKENDS, AccelerationConfig
from torchrl_opt.pipeline.cudagraph import CudaGraphStep, batch_spec, check_batch
from torchrl_opt.pipeline.updates import accelerate, make_optimizer, should_accelerate

OBS, ACT, BATCH = 5, 2, 32


def _batch(n=BATCH, seed=0, device="cpu"):
    return transition_batch(n, OBS, ACT, generator=torch.Generator().manual_seed(seed)).to(device)


# --------------------------------------------------------------------------- configuration
def test_graph_backends_and_default():
    assert GRAPH_BACKENDS == ("tensordict", "torch")
    assert AccelerationConfig().graph_backend == "tensordict"
    for backend in GRAPH_BACKENDS:
        cfg = AccelerationConfig(graph_backend=backend)
        assert should_accelerate(cfg, torch.device("cpu")) == (False, False)
        assert should_accelerate(cfg, torch.device("cuda")) == (True, True)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_unknown_graph_backend_raises_naming_the_allowed_values(device):
    cfg = AccelerationConfig(graph_backend="bogus")
    for call in (
        lambda: should_accelerate(cfg, torch.device(device)),
        lambda: accelerate(lambda td: td, torch.device(device), cfg),
        lambda: make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, torch.device(device),
                               cfg),
    ):
        with pytest.raises(ValueError, match=r"'bogus'.*\('tensordict', 'torch'\)"):
            call()


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_cudagraphs_on_cpu_still_raises(backend):
    cfg = AccelerationConfig(cudagraphs=True, graph_backend=backend)
    with pytest.raises(ValueError, match="CUDA device"):
        should_accelerate(cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="CUDA device"):
        accelerate(lambda td: td, torch.device("cpu"), cfg)


def test_torch_backend_without_cudagraphs_leaves_the_step_alone_on_cpu():
    def step(td):
        return td

    assert accelerate(step, torch.device("cpu"), AccelerationConfig(graph_backend="torch")) is step


def test_cuda_graph_step_rejects_a_cpu_device_and_bad_arguments():
    with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
        CudaGraphStep(lambda td: td, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CudaGraphStep(lambda td: td, "cpu", clone_outputs=True)
    with pytest.raises(ValueError, match="warmup"):
        CudaGraphStep(lambda td: td, "cpu", warmup=0)
    with pytest.raises(TypeError, match="callable"):
        CudaGraphStep(None, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            CudaGraphStep(lambda td: td, "cuda")


# --------------------------------------------------------------------------- structure checks
def test_check_batch_accepts_the_same_structure_in_any_key_order():
    batch = _batch()
    spec = batch_spec(batch)
    assert spec.batch_size == torch.Size([BATCH])
    assert ("next", "reward") in spec.leaves and "observation" in spec.leaves
    other = TensorDict({k: batch.get(k).clone() for k in reversed(list(spec.leaves))}, [BATCH])
    leaves = check_batch(other, spec)
    assert [id(v) for v in leaves] == [id(other.get(k)) for k in spec.leaves]
    assert check_batch(batch, spec)[0] is batch.get(next(iter(spec.leaves)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b.set("observation", torch.zeros(BATCH, OBS + 1)),
         r"'observation' has shape \(32, 6\).*\(32, 5\)"),
        (lambda b: b.set(("next", "reward"), b.get(("next", "reward")).double()),
         r"\('next', 'reward'\) has dtype torch.float64"),
        (lambda b: b.clear_device_().set("action", torch.empty(BATCH, ACT, device="meta")),
         r"'action' is on meta, the captured batch was on cpu"),
        (lambda b: b.del_(("next", "done")), r"\('next', 'done'\) is missing"),
        (lambda b: b.set(("next", "extra"), torch.zeros(BATCH)),
         r"\('next', 'extra'\) was not in the captured batch"),
        (lambda b: b.set("note", "a string"), r"'note' was not in the captured batch"),
        (lambda b: b.del_("action").set("action", "a string"), r"'action' is not a tensor"),
        (lambda b: b.set("observation", torch.zeros(BATCH, OBS, requires_grad=True)),
         r"'observation' requires grad"),
    ],
)
def test_check_batch_names_the_mismatching_key(edit, message):
    spec = batch_spec(_batch())
    batch = _batch(seed=1)
    edit(batch)
    with pytest.raises(ValueError, match=message):
        check_batch(batch, spec)


def test_check_batch_rejects_other_batch_sizes_and_non_tensordicts():
    spec = batch_spec(_batch())
    with pytest.raises(ValueError, match=r"batch size \(16,\) differs .* \(32,\)"):
        check_batch(_batch(16), spec)
    with pytest.raises(ValueError, match="takes a TensorDict"):
        check_batch({"observation": torch.zeros(BATCH, OBS)}, spec)
    with pytest.raises(ValueError, match="at least one tensor"):
        batch_spec(TensorDict({}, []))
    bad = _batch()
    bad["note"] = "a string"
    with pytest.raises(ValueError, match="'note' is not a tensor"):
        batch_spec(bad)


# --------------------------------------------------------------------------- fake CUDA
class _FakeCuda:
    """Just enough of ``torch.cuda`` for :class:`CudaGraphStep` to run its phases on CPU tensors.

    ``graph`` marks the capture window; the step under test registers what a replay recomputes
    (a real capture records kernels without running them, so the step has no side effect there).
    """

    def __init__(self):
        self.events: list[str] = []
        self.capturing = False
        self.replay_fn = None

    class Stream:
        def __init__(self, fake, name):
            self.fake, self.name = fake, name

        def wait_stream(self, other):
            self.fake.events.append(f"{self.name}.wait({other.name})")

    def install(self, monkeypatch):
        fake = self
        current = _FakeCuda.Stream(fake, "current")
        names = iter(["side", "capture"])

        class Graph:
            def replay(self):
                fake.events.append("replay")
                fake.replay_fn()

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None):
            fake.events.append(f"capture_begin({stream.name})")
            fake.capturing = True
            yield
            fake.capturing = False
            fake.events.append("capture_end")

        @contextlib.contextmanager
        def stream_cm(s):
            fake.events.append(f"on({s.name})")
            yield

        def forbidden(*args, **kwargs):
            raise AssertionError("CudaGraphStep synchronised the device")

        monkeypatch.setattr(cudagraph, "_cuda_device", lambda device: torch.device("cpu"))
        monkeypatch.setattr(torch.cuda, "Stream",
                            lambda device=None: _FakeCuda.Stream(fake, next(names)))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
        monkeypatch.setattr(torch.cuda, "stream", stream_cm)
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
        return self


def _counting_step(fake):
    """``y = 2 x + n`` where ``n`` counts the updates that really ran (eager calls and replays)."""
    state = {"updates": 0}

    def step(td):
        if fake.capturing:
            out = TensorDict(y=torch.empty_like(td["observation"]), n=torch.zeros(()),
                             batch_size=[])

            def replay():
                state["updates"] += 1
                out["y"].copy_(td["observation"] * 2 + state["updates"])
                out["n"].fill_(state["updates"])

            fake.replay_fn = replay
            return out
        state["updates"] += 1
        return TensorDict(y=td["observation"] * 2 + state["updates"],
                          n=torch.tensor(float(state["updates"])), batch_size=[])

    return step, state


@pytest.mark.parametrize("clone_outputs", [False, True])
def test_warmup_capture_replay_phases_with_a_fake_cuda(monkeypatch, clone_outputs):
    fake = _FakeCuda().install(monkeypatch)
    step, state = _counting_step(fake)
    graphed = CudaGraphStep(step, "cuda", warmup=2, clone_outputs=clone_outputs)
    batches = [_batch(seed=i) for i in range(5)]
    outs = []
    for i, b in enumerate(batches):
        out = graphed(b)
        outs.append(out)
        assert state["updates"] == i + 1  # every call is one real update, the capture call too
        torch.testing.assert_close(out["y"], b["observation"] * 2 + i + 1)
        assert graphed.captured == (i >= 2)
    # warm-up on the side stream, one capture (no replay inside it), then one replay per call
    assert fake.events == (
        ["side.wait(current)", "on(side)", "current.wait(side)"] * 2
        + ["capture_begin(capture)", "capture_end", "replay", "replay", "replay"]
    )
    assert graphed.calls == 5 and graphed.static_outputs.is_locked
    # static inputs hold the latest batch (copied in, not aliased)
    torch.testing.assert_close(graphed.static_inputs["observation"], batches[-1]["observation"])
    assert graphed.static_inputs["observation"] is not batches[-1]["observation"]
    if clone_outputs:
        assert len({id(o) for o in outs[2:]}) == 3
        torch.testing.assert_close(outs[2]["y"], batches[2]["observation"] * 2 + 3)
    else:  # one static TensorDict, overwritten by every replay
        assert outs[2] is outs[3] is outs[4] is graphed.static_outputs
        torch.testing.assert_close(outs[2]["y"], batches[4]["observation"] * 2 + 5)
    assert "captured" in repr(graphed)


def test_mismatched_batches_raise_before_anything_runs_with_a_fake_cuda(monkeypatch):
    fake = _FakeCuda().install(monkeypatch)
    step, state = _counting_step(fake)
    graphed = CudaGraphStep(step, "cuda", warmup=1)
    graphed(_batch())
    with pytest.raises(ValueError, match="'observation' has shape"):  # during warm-up too
        graphed(_batch().set("observation", torch.zeros(BATCH, OBS + 1)))
    graphed(_batch(seed=1))
    assert graphed.captured and state["updates"] == 2
    events = list(fake.events)
    with pytest.raises(ValueError, match=r"\('next', 'reward'\) has dtype"):
        graphed(_batch().set(("next", "reward"), torch.zeros(BATCH, 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"batch size \(8,\)"):
        graphed(_batch(8))
    assert fake.events == events and state["updates"] == 2  # nothing copied, nothing replayed
    graphed(_batch(seed=2))
    assert state["updates"] == 3


# --------------------------------------------------------------------------- CUDA
STEPS = 6  # warmup=1: one eager call, one capture + replay, then replays (actor: every 2nd step)


def _agent(device, acceleration, *, name="td3"):
    """``test_compiled_updates``' agent (same sizes, seed and fine-tuning loss)."""
    return _compiled_agent(name, device, acceleration, finetune=True)


def _run(agent, kind, batches):
    """Run the agent's ``kind`` steps as the pipeline does (``every``); losses are cloned at once
    because a graphed step's outputs are overwritten by its next replay."""
    losses = []
    specs = _updates(agent, kind)  # test_compiled_updates' agent pre-trains with alpha=0.1
    if kind == "pretrain":
        batches = [TensorDict(offline=b, online=b.apply(lambda x: x.flip(0))) for b in batches]
    for i, b in enumerate(batches):
        for spec in specs:
            if i % spec.every:
                continue
            torch.manual_seed(100 + i)
            out = spec.step(b)
            losses += [out[k].clone() for k in sorted(out.keys()) if k.startswith("loss")]
    return losses, specs


def _state(agent):
    return {k: v.detach().clone() for k, v in agent.finetune_loss.state_dict().items()}


@pytest.mark.gpu
@pytest.mark.parametrize(
    "kind, functional", [("finetune", True), ("finetune", False), ("pretrain", True)]
)
def test_torch_graphed_steps_match_eager_on_cuda(kind, functional):
    """(a) functional OPT critic/actor (and meta pre-training) steps, (b) the ``make_step`` path
    (torch.optim.Adam, capturable=True): same losses, parameters and targets as eager."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    batches = [_batch(seed=i, device=device) for i in range(STEPS)]
    eager = _agent(device, AccelerationConfig(compile=False, cudagraphs=False,
                                              functional=functional))
    fast = _agent(device, AccelerationConfig(compile=True, cudagraphs=True, graph_backend="torch",
                                             functional=functional, warmup=1))
    before = _state(fast)
    with torch._inductor.config.patch(fallback_random=True):
        eager_losses, _ = _run(eager, kind, batches)
        fast_losses, specs = _run(fast, kind, batches)
    for spec in specs:
        assert isinstance(spec.step, CudaGraphStep), spec.name
        assert spec.step.captured and spec.step.calls > spec.step.warmup + 1, spec.name
    assert len(eager_losses) == len(fast_losses) > 0
    for a, b in zip(eager_losses, fast_losses):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    eager_state, fast_state = _state(eager), _state(fast)
    moved = 0
    for key, value in eager_state.items():
        torch.testing.assert_close(fast_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
        moved += not torch.equal(fast_state[key], before[key])
    assert moved > 0


def _toy_step(device):
    """``w += mean(x)``; returns ``y = 2 x`` and ``w``: a stateful step with a checkable output."""
    w = torch.zeros(OBS, device=device)

    def step(td):
        w.add_(td["observation"].mean(0))
        return TensorDict(y=td["observation"] * 2, w=w.clone(), batch_size=[])

    return step, w


@pytest.mark.gpu
def test_mismatched_batch_after_capture_raises_on_cuda():
    """(c) a batch whose structure differs from the captured one raises and replays nothing."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    step, w = _toy_step(device)
    graphed = CudaGraphStep(step, device, warmup=1)
    for i in range(3):
        graphed(_batch(seed=i, device=device))
    assert graphed.captured
    w_before = w.clone()
    bad = [
        (_batch(16, device=device), "batch size"),
        (_batch(device=device).set("observation", torch.zeros(BATCH, OBS + 1, device=device)),
         "'observation' has shape"),
        (_batch(device=device).set("action", torch.zeros(BATCH, ACT, dtype=torch.float64,
                                                          device=device)), "'action' has dtype"),
        (_batch(device=device).exclude(("next", "reward")), r"\('next', 'reward'\) is missing"),
        (_batch(device=device).set("extra", torch.zeros(BATCH, device=device)), "'extra' was not"),
        (_batch(), "'observation' is on cpu"),
    ]
    for batch, message in bad:
        with pytest.raises(ValueError, match=message):
            graphed(batch)
    torch.testing.assert_close(w, w_before)


@pytest.mark.gpu
def test_outputs_are_overwritten_by_the_next_replay_unless_cloned_on_cuda():
    """(d) the default returns one static TensorDict per replay; ``clone_outputs=True`` copies."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    batches = [_batch(seed=i, device=device) for i in range(4)]
    for clone_outputs in (False, True):
        step, w = _toy_step(device)
        graphed = CudaGraphStep(step, device, warmup=1, clone_outputs=clone_outputs)
        outs = [graphed(b) for b in batches]
        expected_w = sum(b["observation"].mean(0) for b in batches)
        # 4 real updates: the warm-up call, the capture call (its replay) and 2 replays
        torch.testing.assert_close(w, expected_w)
        if clone_outputs:
            assert len({id(o) for o in outs}) == 4
            for b, out in zip(batches, outs):
                torch.testing.assert_close(out["y"], b["observation"] * 2)
        else:
            assert outs[1] is outs[2] is outs[3] is graphed.static_outputs
            assert graphed.static_outputs.is_locked
            torch.testing.assert_close(outs[1]["y"], batches[3]["observation"] * 2)
            torch.testing.assert_close(outs[0]["y"], batches[0]["observation"] * 2)  # eager call


@pytest.mark.gpu
def test_replay_path_does_not_synchronise_and_random_ops_are_graph_safe_on_cuda(monkeypatch):
    """No ``torch.cuda.synchronize`` and no implicit sync on replay; ``torch.randn`` in the graph
    reads the default CUDA generator: reseeding reproduces eager, replays draw fresh numbers."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")

    def noisy(td):
        return TensorDict(y=td["observation"] + torch.randn_like(td["observation"]), batch_size=[])

    batches = [_batch(seed=i, device=device) for i in range(5)]
    graphed = CudaGraphStep(noisy, device, warmup=1, clone_outputs=True)
    outs = []
    for i, b in enumerate(batches):
        torch.manual_seed(i)
        if graphed.captured:
            monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: pytest.fail("synced"))
            torch.cuda.set_sync_debug_mode("error")
        try:
            outs.append(graphed(b))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()
    for i, (b, out) in enumerate(zip(batches, outs)):
        torch.manual_seed(i)
        torch.testing.assert_close(out["y"], noisy(b)["y"])
    fresh = [graphed(batches[0])["y"] for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])


@pytest.mark.gpu
def test_accelerate_builds_the_torch_backend_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    step = accelerate(lambda td: td.select("observation"), torch.device("cuda"),
                      AccelerationConfig(compile=False, cudagraphs=True, graph_backend="torch",
                                         warmup=3))
    assert isinstance(step, CudaGraphStep) and step.warmup == 3

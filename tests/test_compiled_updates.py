"""Compiled (and, on CUDA, CUDA-graphed) update steps give the same losses and parameters as eager."""

from __future__ import annotations

import pytest
import torch
from _helpers import action_spec
from tensordict import TensorDict

from torchrl_opt.pipeline.agents import make_agent
from torchrl_opt.pipeline.config import AccelerationConfig, BackboneConfig, OnlinePretrainConfig, RunConfig
from torchrl_opt.pipeline.updates import UpdateEngine, accelerate, should_accelerate

OBS, ACT, BATCH, STEPS = 5, 2, 32, 3


def _batches(device, n=STEPS):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        done = torch.rand(BATCH, 1, generator=g) < 0.1
        out.append(
            TensorDict(
                {
                    "observation": torch.randn(BATCH, OBS, generator=g),
                    "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
                    ("next", "observation"): torch.randn(BATCH, OBS, generator=g),
                    ("next", "reward"): torch.randn(BATCH, 1, generator=g),
                    ("next", "done"): done,
                    ("next", "terminated"): done.clone(),
                },
                [BATCH],
            ).to(device)
        )
    return out


def _agent(name, device, acceleration, *, finetune):
    torch.manual_seed(0)
    cfg = RunConfig(backbone=BackboneConfig(name=name, hidden=[16, 16], vae_hidden=[16, 16]),
                    online_pretrain=OnlinePretrainConfig(alpha=0.1), acceleration=acceleration)
    agent = make_agent(cfg, OBS, action_spec().to(device), device)
    if finetune:
        agent.start_online(q_on=True, kappa=0.4)
    return agent


def _updates(agent, kind):
    """The steps of ``kind`` the pipeline builds for one seed, accelerated per the agent's config."""
    engine = UpdateEngine(1, agent.device, agent.run_cfg.acceleration)
    return [engine.build([agent.loss_for(kind)], d) for d in agent.update_defs(kind)]


def _run(agent, kind, batches):
    """Apply the agent's update steps of ``kind`` to ``batches``; return losses and final params."""
    if kind == "pretrain":
        (spec,) = _updates(agent, "pretrain")
        pair_batches = [TensorDict(offline=b, online=b.apply(lambda x: x.flip(0))) for b in batches]
        losses = []
        for i, b in enumerate(pair_batches):
            torch.manual_seed(100 + i)
            losses.append(spec.step(b)["loss_pretrain"].clone())
    else:
        updates = _updates(agent, kind)
        losses = []
        for i, b in enumerate(batches):
            for spec in updates:
                torch.manual_seed(100 + i)
                out = spec.step(b)
                losses.extend(out[k].clone() for k in sorted(out.keys()) if k.startswith("loss"))
    loss = agent.finetune_loss if kind != "offline" else agent.offline_loss
    params = [p.detach().clone() for p in loss.parameters()]
    return losses, params


# CPU compilation is slow; the loss-level compile tests (test_td3_opt, test_meta, test_iql_opt)
# cover every loss, these cover whole steps (loss + backward + Adam + target update).
CPU_CASES = [("td3", "finetune"), ("td3", "pretrain")]
CASES = [("td3", "offline"), ("td3", "finetune"), ("td3", "pretrain"), ("iql", "finetune"),
         ("iql", "pretrain")]


def _compare(name, kind, device, accelerated):
    batches = _batches(device)
    eager = _agent(name, device, AccelerationConfig(compile=False, cudagraphs=False),
                   finetune=kind != "offline")
    fast = _agent(name, device, accelerated, finetune=kind != "offline")
    with torch._inductor.config.patch(fallback_random=True):
        eager_losses, eager_params = _run(eager, kind, batches)
        fast_losses, fast_params = _run(fast, kind, batches)
    assert len(eager_losses) == len(fast_losses) > 0
    for a, b in zip(eager_losses, fast_losses):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager_params, fast_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.compile
@pytest.mark.parametrize("name, kind", CPU_CASES)
def test_compiled_updates_match_eager_on_cpu(name, kind):
    _compare(name, kind, torch.device("cpu"), AccelerationConfig(compile=True, cudagraphs=False))


@pytest.mark.gpu
@pytest.mark.parametrize("name, kind", CASES)
def test_compiled_and_graphed_updates_match_eager_on_cuda(name, kind):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _compare(name, kind, torch.device("cuda"),
             AccelerationConfig(compile=True, cudagraphs=True, warmup=2))


def test_acceleration_defaults_follow_the_device():
    assert should_accelerate(AccelerationConfig(), torch.device("cpu")) == (False, False)
    assert should_accelerate(AccelerationConfig(), torch.device("cuda")) == (True, True)
    assert should_accelerate(AccelerationConfig(compile=True), torch.device("cpu")) == (True, False)
    with pytest.raises(ValueError, match="CUDA device"):
        should_accelerate(AccelerationConfig(cudagraphs=True), torch.device("cpu"))


def test_eager_step_is_returned_unchanged_on_cpu():
    def step(td):
        return td

    assert accelerate(step, torch.device("cpu")) is step

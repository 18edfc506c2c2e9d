"""``torchrl_opt.direct_env``: stepping the Gymnasium env directly gives TorchRL's transitions.

Every comparison is against TorchRL itself on an identically seeded env: ``Collector`` batches (with
exploration noise, many episode ends, reward shift and observation normalisation), ``env.rollout``
returns, resume from an env snapshot, and a whole pipeline run with ``acceleration.direct_env`` on
and off.
"""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs import ObservationNorm, RewardScaling, SerialEnv, StepCounter
from torchrl.envs.utils import ExplorationType

from torchrl_opt.direct_env import (
    DirectCollector,
    DirectEnvError,
    direct_rollout_returns,
    supports,
    use_direct,
)
from torchrl_opt.env_state import env_restore_on_next_reset, env_snapshot, make_resumable_env
from torchrl_opt.envs import evaluate_policy
from torchrl_opt.pipeline.acting import Policies, make_collector
from torchrl_opt.pipeline.agents import make_agent
from torchrl_opt.pipeline.config import BackboneConfig, RunConfig

ENV_ID, OBS, ACT = "Hopper-v5", 11, 3


def make(seed: int, *, shift: bool = True, norm: bool = True):
    env = make_resumable_env(ENV_ID, seed=seed)
    if shift:
        env.append_transform(RewardScaling(loc=-1.0, scale=1.0))
    if norm:
        env.append_transform(
            ObservationNorm(loc=torch.linspace(-1, 1, OBS), scale=torch.linspace(0.5, 2.0, OBS),
                            in_keys=["observation"], standard_normal=True)
        )
    return env


def agent(noise: float = 0.5, backbone: str = "td3"):
    torch.manual_seed(0)
    cfg = RunConfig(backbone=BackboneConfig(name=backbone, hidden=[16, 16], exploration_noise=noise))
    return make_agent(cfg, OBS, make(0).action_spec, "cpu")


def explore(agent):
    """The pipeline's fine-tuning policy of one seed (TD3's noise, IQL's Gaussian sample)."""
    return Policies([agent]).get("explore")[0]


def step_collector(env, agent_, *, direct=None, prefetch=False):
    """The pipeline's fine-tuning collector of one seed (one transition per batch)."""
    return make_collector([env], Policies([agent_]), "explore", frames_per_batch=1,
                          device=torch.device("cpu"), direct=direct, prefetch=prefetch)


def torchrl_batches(env, policy, frames, count, seed):
    """TorchRL's Collector, seeded after its construction (which runs the policy once)."""
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=-1,
                          exploration_type=ExplorationType.RANDOM,
                          auto_register_policy_transforms=False)
    torch.manual_seed(seed)
    out = []
    for batch in collector:
        out.append(batch)
        if len(out) == count:
            break
    collector.shutdown()
    return torch.cat(out)


def direct_batches(env, policy, frames, count, seed=None):
    collector = DirectCollector(env, policy, frames_per_batch=frames)
    if seed is not None:
        torch.manual_seed(seed)
    out = []
    for batch in collector:
        out.append(batch)
        if len(out) == count:
            break
    return torch.cat(out)


def assert_same_transitions(direct, reference):
    """Every entry of the direct batch equals the reference's; TorchRL's Collector adds only its
    trajectory ids and the policy's intermediate outputs (a Gaussian's loc/scale)."""
    assert direct.batch_size == reference.batch_size
    for key in direct.keys(True, True):
        assert torch.equal(direct.get(key), reference.get(key)), key
    extra = set(reference.keys(True, True)) - set(direct.keys(True, True))
    assert extra <= {("collector", "traj_ids"), "loc", "scale"}


@pytest.mark.parametrize("frames, shift, norm", [(1, True, True), (7, False, False), (40, True, False)])
@pytest.mark.parametrize("backbone", ["td3", "iql"])
def test_direct_collector_equals_torchrl_collector(frames, shift, norm, backbone):
    """Same seeds, same policy (with exploration noise drawn from torch's RNG): bit-identical
    transitions over several episodes (Hopper falls within a few dozen random steps)."""
    policy = explore(agent(backbone=backbone))
    steps = 240 // frames
    reference = torchrl_batches(make(5, shift=shift, norm=norm), policy, frames, steps, seed=3)
    direct = direct_batches(make(5, shift=shift, norm=norm), policy, frames, steps, seed=3)
    assert int(reference["next", "done"].sum()) >= 3  # episode boundaries were crossed
    assert_same_transitions(direct, reference)


@pytest.mark.parametrize("backbone", ["td3", "iql"])
def test_pipeline_step_collectors_draw_the_same_random_stream(backbone):
    """``make_collector`` builds TorchRL's Collector on a forked RNG (its construction runs the
    policy once): seeded before construction, both paths give the same transitions and leave
    torch's RNG in the same state."""
    the_agent = agent(backbone=backbone)
    results = {}
    for direct in (False, True):
        torch.manual_seed(11)
        collector = step_collector(make(2), the_agent, direct=direct)
        assert isinstance(collector, DirectCollector) == direct
        stream = iter(collector)
        results[direct] = (torch.cat([next(stream) for _ in range(80)]), torch.rand(4))
        collector.shutdown()
    assert_same_transitions(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])


def test_direct_evaluation_equals_torchrl_rollouts():
    for backbone in ("td3", "iql"):
        policy = agent(backbone=backbone).policy
        reference = evaluate_policy(policy, make(9), 3, max_steps=150, direct=False)
        direct = evaluate_policy(policy, make(9), 3, max_steps=150, direct=True)
        assert torch.equal(direct, reference)
        assert torch.equal(direct_rollout_returns(policy, make(9), 3, max_steps=150), reference)


def test_direct_collector_resumes_from_an_env_snapshot():
    """Snapshot mid-episode, restore into a fresh env: the continuation equals the uninterrupted
    run (what a resumed fine-tuning run relies on)."""
    policy = explore(agent(noise=0.3))
    torch.manual_seed(1)
    env = make(4)
    collector = DirectCollector(env, policy)
    stream = iter(collector)
    head = [next(stream) for _ in range(25)]
    snapshot = env_snapshot(env)
    rng = torch.get_rng_state()
    tail = torch.cat([next(stream) for _ in range(60)])
    assert int(torch.cat(head)["next", "done"].sum()) + int(tail["next", "done"].sum()) >= 1
    fresh = make(123)
    env_restore_on_next_reset(fresh, snapshot)
    torch.set_rng_state(rng)
    resumed = direct_batches(fresh, policy, 1, 60)
    assert_same_transitions(resumed, tail)


def test_unsupported_envs_are_named():
    assert supports(make(0))
    counted = make(0)
    counted.append_transform(StepCounter())
    assert not supports(counted)
    with pytest.raises(DirectEnvError, match="StepCounter"):
        use_direct(counted, True)
    assert use_direct(counted, None) is False
    assert use_direct(make(0), False) is False
    serial = SerialEnv(2, lambda: make(0))
    assert not supports(serial)
    with pytest.raises(DirectEnvError, match="GymWrapper"):
        DirectCollector(serial, agent().policy)
    with pytest.raises(ValueError, match="frames_per_batch"):
        DirectCollector(make(0), agent().policy, frames_per_batch=0)
    # an unsupported env still evaluates, through TorchRL, when not forced
    returns = evaluate_policy(agent().policy, counted, 1, max_steps=20)
    assert returns.shape == (1,)


def test_prefetching_acts_one_step_ahead_of_the_updates():
    """``prefetch=True``: the action of step t+1 is computed right after step t, before the caller
    updates the policy; without prefetching it is computed after. Checked against the actor's
    outputs before and after a simulated update at every step."""
    torch.manual_seed(0)
    actor = agent(noise=0.0).policy  # deterministic TD3 actor
    weight = actor.module.net[-1].bias

    def run(prefetch: bool):
        collector = DirectCollector(make(6), actor, prefetch=prefetch,
                                    exploration_type=ExplorationType.DETERMINISTIC)
        records = []
        stream = iter(collector)
        with torch.no_grad():
            original = weight.clone()
            for _ in range(12):
                batch = next(stream)
                before = actor(batch["next"].select("observation").clone())["action"]
                weight.add_(0.05)  # "the updates" that follow the step
                after = actor(batch["next"].select("observation").clone())["action"]
                records.append((batch, before, after))
            weight.copy_(original)
        return records

    for prefetch in (True, False):
        records = run(prefetch)
        for (batch, before, after), (following, _, _) in zip(records, records[1:]):
            if bool(batch["next", "done"].any()):
                continue  # the next step starts from a reset observation
            expected = before if prefetch else after
            torch.testing.assert_close(following["action"], expected, rtol=0, atol=0)
    collector = DirectCollector(make(6), actor, prefetch=True)
    pending = collector.pending_action()
    assert pending.shape == (ACT,)
    collector.set_pending_action(torch.zeros(ACT))
    assert torch.equal(next(iter(collector))["action"][0], torch.zeros(ACT))
    with pytest.raises(ValueError, match="prefetching"):
        DirectCollector(make(6), actor).set_pending_action(torch.zeros(ACT))
    counted = make(0)
    counted.append_transform(StepCounter())
    with pytest.raises(ValueError, match="prefetch_action needs direct env stepping"):
        step_collector(counted, agent(), prefetch=True)

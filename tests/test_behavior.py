"""Tests for torchrl_opt.data.behavior (online behaviour agent for dataset generation)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_opt.data.behavior import (
    TRANSITION_KEYS,
    BehaviorConfig,
    BehaviorConfigError,
    BehaviorLearner,
    train_behavior_agent,
)
from torchrl_opt.envs import make_env
from torchrl_opt.models import make_gaussian_actor, make_td3_actor

ENV = "InvertedPendulum-v5"  # obs 4, action 1 in [-3, 3]; reward 1 per step, 0 when it falls
TINY = {
    "hidden": (16, 16),
    "batch_size": 16,
    "init_random_frames": 50,
    "frames_per_batch": 25,
    "progress": False,
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny networks: extra intra-op threads only contend on a busy CI box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sac_run():
    """A tiny SAC run to the full budget with short episodes (frequent truncation)."""
    torch.set_num_threads(1)
    return train_behavior_agent(
        ENV,
        target_return=1e9,
        max_env_steps=140,  # not a multiple of frames_per_batch: last batch is cut
        seed=3,
        eval_every=50,
        eval_episodes=1,
        env_kwargs={"max_episode_steps": 6},
        **TINY,
    )


def _spec(low=(-1.0, 0.0), high=(1.0, 4.0)) -> Bounded:
    low, high = torch.tensor(low), torch.tensor(high)
    return Bounded(low, high, low.shape)


def _batch(n: int, obs_dim: int, spec: Bounded, *, terminated: bool, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    low, high = spec.space.low, spec.space.high
    term = torch.full((n, 1), terminated)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": low + (high - low) * torch.rand(n, low.numel(), generator=g),
            ("next", "observation"): torch.randn(n, obs_dim, generator=g),
            ("next", "reward"): torch.randn(n, 1, generator=g),
            ("next", "done"): term.clone(),
            ("next", "terminated"): term.clone(),
            ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def _q_values(learner: BehaviorLearner, td: TensorDict, *, target: bool) -> torch.Tensor:
    """``[num_q, B]`` critic outputs computed by hand from the loss module's parameter sets."""
    loss = learner.loss_module
    params = loss.target_qvalue_network_params if target else loss.qvalue_network_params
    out = []
    for i in range(learner.config.num_qvalue_nets):
        with params[i].to_module(loss.qvalue_network):
            out.append(loss.qvalue_network(td.clone())["state_action_value"].squeeze(-1))
    return torch.stack(out)


# --------------------------------------------------------------------------- stop rule
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_stop_rule_reachable_target_stops_at_first_eval(algo):
    # InvertedPendulum rewards are >= 0, so every return reaches -1.
    res = train_behavior_agent(
        ENV,
        target_return=-1.0,
        max_env_steps=400,
        algo=algo,
        eval_every=100,
        eval_episodes=1,
        **TINY,
    )
    assert res.reached_target is True
    assert res.env_steps == 100
    assert [s for s, _ in res.eval_history] == [100]
    assert res.final_eval_return == res.eval_history[-1][1] >= 0.0
    assert res.transitions.shape == torch.Size([100])
    assert res.checkpoint["metadata"]["env_steps"] == 100
    assert res.checkpoint["metadata"]["reached_target"] is True
    # warm-up 50 steps, then one update per env step from the batch that completes it
    assert res.checkpoint["num_updates"] == 75


def test_stop_rule_unreachable_target_runs_full_budget(sac_run):
    assert sac_run.reached_target is False
    assert sac_run.env_steps == 140
    assert [s for s, _ in sac_run.eval_history] == [50, 100, 140]
    assert sac_run.final_eval_return == sac_run.eval_history[-1][1]
    # 6-step episodes: deterministic eval returns are integers in [0, 6]
    for _, ret in sac_run.eval_history:
        assert 0.0 <= ret <= 6.0 and ret == int(ret)


# --------------------------------------------------------------------------- transitions
def test_transitions_layout_and_dtypes(sac_run):
    tr = sac_run.transitions
    assert tr.batch_size == torch.Size([sac_run.env_steps])
    assert set(tr.keys(True, True)) == set(TRANSITION_KEYS)
    assert tr["observation"].shape == (140, 4) and tr["observation"].dtype == torch.float32
    assert tr["next", "observation"].shape == (140, 4)
    assert tr["next", "observation"].dtype == torch.float32
    assert tr["action"].shape == (140, 1) and tr["action"].dtype == torch.float32
    assert tr["next", "reward"].shape == (140, 1) and tr["next", "reward"].dtype == torch.float32
    for flag in ("done", "terminated", "truncated"):
        assert tr["next", flag].shape == (140, 1) and tr["next", flag].dtype == torch.bool
    assert tr.device == torch.device("cpu")
    assert (tr["action"].abs() <= 3.0).all()
    # Gymnasium v5 InvertedPendulum: reward = 1 while alive, 0 on the terminating step.
    torch.testing.assert_close(tr["next", "reward"], (~tr["next", "terminated"]).float())


def test_transitions_chain_within_episodes_and_flags_kept_apart(sac_run):
    tr = sac_run.transitions
    done = tr["next", "done"].squeeze(-1)
    term = tr["next", "terminated"].squeeze(-1)
    trunc = tr["next", "truncated"].squeeze(-1)
    assert torch.equal(done, term | trunc)
    # Both kinds of episode end occur with 6-step episodes and a random-ish pendulum.
    assert (trunc & ~term).any() and (term & ~trunc).any()
    # next/observation[t] == observation[t+1] inside an episode, a reset after its end.
    nxt, obs = tr["next", "observation"][:-1], tr["observation"][1:]
    same = (nxt == obs).all(-1)
    assert same[~done[:-1]].all()
    assert not same[done[:-1]].any()
    # Termination is the env's rule (|pole angle| > 0.2), independent of the time limit.
    angle = tr["next", "observation"][:, 1]
    assert torch.equal(term, angle.abs() > 0.2)
    # Truncation exactly at the 6-step limit: count steps since the last episode end.
    steps, t = [], 0
    for d in done.tolist():
        t += 1
        steps.append(t)
        t = 0 if d else t
    steps = torch.tensor(steps)
    assert torch.equal(trunc, steps == 6)


def test_reproducible_with_seed():
    kw = dict(target_return=None, max_env_steps=75, eval_every=75, eval_episodes=1, **TINY)
    a = train_behavior_agent(ENV, seed=7, **kw)
    b = train_behavior_agent(ENV, seed=7, **kw)
    c = train_behavior_agent(ENV, seed=8, **kw)
    assert (a.transitions == b.transitions).all()
    assert a.eval_history == b.eval_history
    for k, v in a.checkpoint["loss_module"].items():
        assert torch.equal(v, b.checkpoint["loss_module"][k]), k
    assert not torch.equal(a.transitions["observation"], c.transitions["observation"])
    # The first stored observation is the seeded env's first reset (seeded before any reset).
    first_obs = make_env(ENV, seed=7).reset()["observation"]
    torch.testing.assert_close(a.transitions["observation"][0], first_obs, rtol=0, atol=0)


# --------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_checkpoint_roundtrip_weights_only(tmp_path, algo):
    spec, cfg = _spec(), BehaviorConfig(hidden=(16, 16), batch_size=8)
    torch.manual_seed(0)
    learner = BehaviorLearner(algo, 3, spec, cfg)
    for i in range(3):
        learner.update(_batch(8, 3, spec, terminated=False, seed=i))
    path = tmp_path / "ckpt.pt"
    torch.save(learner.checkpoint(env_id="X-v5"), path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["algo"] == algo and ckpt["metadata"] == {"env_id": "X-v5"}

    # A fresh actor from models.py takes the actor state dict as-is.
    make = make_gaussian_actor if algo == "sac" else make_td3_actor
    fresh_actor = make(3, spec, cfg.hidden)
    fresh_actor.load_state_dict(ckpt["actor"])
    obs = TensorDict(observation=torch.randn(10, 3), batch_size=[10])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(
            fresh_actor(obs.clone())["action"],
            learner.actor(obs.clone())["action"],
            rtol=0,
            atol=0,
        )

    # A fresh learner (other init) restores critics, targets and optimiser state: the next
    # update with the same RNG state is then identical.
    torch.manual_seed(123)
    fresh = BehaviorLearner(algo, 3, spec, cfg)
    fresh.load_checkpoint(ckpt)
    td = _batch(8, 3, spec, terminated=False, seed=9)
    for tgt in (False, True):
        torch.testing.assert_close(
            _q_values(fresh, td, target=tgt), _q_values(learner, td, target=tgt)
        )
    torch.manual_seed(5)
    out_a = learner.update(td)
    torch.manual_seed(5)
    out_b = fresh.update(td)
    assert set(out_a.keys()) == set(out_b.keys())
    for k in out_a.keys():  # noqa: SIM118 (TensorDict iterates rows)
        torch.testing.assert_close(out_a[k], out_b[k], rtol=0, atol=0)
    for k, v in learner.loss_module.state_dict().items():
        torch.testing.assert_close(fresh.loss_module.state_dict()[k], v, rtol=0, atol=0)


def test_checkpoint_from_training_run_loads_into_fresh_actor(sac_run, tmp_path):
    path = tmp_path / "run.pt"
    torch.save(sac_run.checkpoint, path)
    ckpt = torch.load(path, weights_only=True)
    env_spec = Bounded(-3 * torch.ones(1), 3 * torch.ones(1), (1,))
    actor = make_gaussian_actor(4, env_spec, tuple(ckpt["config"]["hidden"]))
    actor.load_state_dict(ckpt["actor"])
    obs = TensorDict(observation=torch.randn(32, 4), batch_size=[32])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(
            actor(obs.clone())["action"], sac_run.policy(obs.clone())["action"]
        )
    assert ckpt["metadata"]["env_steps"] == sac_run.env_steps


# --------------------------------------------------------------------------- policies
def test_sac_policy_stochastic_within_bounds_and_deterministic_is_squashed_mean(sac_run):
    policy = sac_run.policy
    assert all(p.device.type == "cpu" for p in policy.parameters())
    obs = TensorDict(observation=torch.randn(2000, 4), batch_size=[2000])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = policy(obs.clone())
    sto = policy(obs.clone())["action"]  # default interaction: sampling
    assert (sto.abs() <= 3.0).all() and (det["action"].abs() <= 3.0).all()
    assert (sto - det["action"]).abs().mean() > 1e-2
    # deterministic action = (high + low)/2 + (high - low)/2 * tanh(loc)
    torch.testing.assert_close(det["action"], 3.0 * torch.tanh(det["loc"]))


def test_td3_exploration_noise_scaled_to_action_range():
    spec = _spec(low=(-1.0, 0.0), high=(1.0, 4.0))  # half ranges 1 and 2
    learner = BehaviorLearner("td3", 3, spec, BehaviorConfig(hidden=(16, 16)))
    with torch.no_grad():  # put the greedy action at the centre of the box
        learner.actor.module.net[-1].weight.zero_()
        learner.actor.module.net[-1].bias.zero_()
    policy = learner.exploration_policy(learner.make_cpu_actor())
    obs = TensorDict(observation=torch.randn(20000, 3), batch_size=[20000])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        det = policy(obs.clone())["action"]
    torch.testing.assert_close(det, torch.tensor([0.0, 2.0]).expand(20000, 2))
    sto = policy(obs.clone())["action"]
    assert ((sto >= spec.space.low) & (sto <= spec.space.high)).all()
    noise_std = (sto - det).std(0)
    torch.testing.assert_close(noise_std, torch.tensor([0.1, 0.2]), rtol=0.05, atol=0)


def test_make_cpu_actor_copies_weights():
    spec = _spec()
    learner = BehaviorLearner("sac", 3, spec, BehaviorConfig(hidden=(8,)))
    cpu = learner.make_cpu_actor()
    assert cpu is not learner.actor
    for (n, a), (_, b) in zip(learner.actor.named_parameters(), cpu.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n


# --------------------------------------------------------------------------- maths / learning
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_critic_loss_closed_form_and_decreases_on_fixed_terminal_batch(algo):
    # All transitions terminal => the TD target is exactly r, so
    # L_Q = sum_i mean_B (Q_i(s, a) - r)^2 (l2), computed here independently.
    # r = sin(s_0) + a_0 is smooth, so the critics can fit it quickly.
    spec = _spec()
    torch.manual_seed(0)
    cfg = BehaviorConfig(hidden=(32, 32), batch_size=64, lr=1e-3)
    learner = BehaviorLearner(algo, 3, spec, cfg)
    td = _batch(64, 3, spec, terminated=True)
    td["next", "reward"] = torch.sin(td["observation"][:, :1]) + td["action"][:, :1]
    r = td["next", "reward"].squeeze(-1)
    expected = ((_q_values(learner, td, target=False) - r) ** 2).mean(-1).sum()
    first = learner.update(td)["loss_qvalue"]
    torch.testing.assert_close(first, expected)
    for _ in range(150):
        last = learner.update(td)["loss_qvalue"]
    assert last < 0.1 * first


def test_td3_critic_loss_matches_hand_computed_bootstrap():
    # policy_noise = 0 makes the TD3 target deterministic:
    # y = r + gamma * (1 - term) * min_i Qbar_i(s', pibar(s')).
    spec = _spec()
    torch.manual_seed(0)
    cfg = BehaviorConfig(hidden=(16, 16), gamma=0.9, policy_noise=0.0, noise_clip=0.0)
    learner = BehaviorLearner("td3", 3, spec, cfg)
    td = _batch(32, 3, spec, terminated=False)
    td["next", "terminated"][:8] = True
    td["next", "done"][:8] = True
    loss = learner.loss_module
    with torch.no_grad():
        nxt = TensorDict(observation=td["next", "observation"], batch_size=[32])
        with loss.target_actor_network_params.to_module(loss.actor_network):
            nxt = loss.actor_network(nxt)
        q_next = _q_values(learner, nxt, target=True).min(0).values
        not_term = (~td["next", "terminated"]).float().squeeze(-1)
        y = td["next", "reward"].squeeze(-1) + 0.9 * not_term * q_next
        expected = ((_q_values(learner, td, target=False) - y) ** 2).mean(-1).sum()
    loss_q, _ = loss.value_loss(td.clone())
    torch.testing.assert_close(loss_q, expected)


def test_td3_learns_inverted_pendulum():
    # ~15 s on one CPU thread: the deterministic eval return goes from a few steps at the end of
    # the warm-up (seeds 0-2: <= 4) to tens of steps after 1500 updates (seeds 0-2: 38-54).
    res = train_behavior_agent(
        ENV,
        target_return=None,
        max_env_steps=2000,
        algo="td3",
        seed=0,
        eval_every=500,
        eval_episodes=3,
        init_random_frames=500,
        frames_per_batch=50,
        hidden=(64, 64),
        batch_size=64,
        lr=1e-3,
        progress=False,
    )
    returns = [ret for _, ret in res.eval_history]
    assert [s for s, _ in res.eval_history] == [500, 1000, 1500, 2000]
    assert returns[-1] >= 25.0 and returns[-1] > 5 * returns[0]


def test_soft_target_update_rate():
    # One SAC update moves targets by tau toward the (updated) online critics:
    # theta_bar' = (1 - tau) theta_bar + tau theta'.
    spec = _spec()
    learner = BehaviorLearner("sac", 3, spec, BehaviorConfig(hidden=(8,), tau=0.25))
    tgt0 = learner.loss_module.target_qvalue_network_params.clone()
    learner.update(_batch(16, 3, spec, terminated=False))
    online = learner.loss_module.qvalue_network_params.detach()
    expected = tgt0.apply(lambda t, o: 0.75 * t + 0.25 * o, online)
    for k, v in expected.items(True, True):
        torch.testing.assert_close(learner.loss_module.target_qvalue_network_params[k], v)


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algo": "ppo"}, "Unknown algo"),
        ({"max_env_steps": 50}, "larger than the random warm-up"),
        ({"max_env_steps": 0}, "max_env_steps must be a positive integer"),
        ({"eval_every": 0}, "eval_every must be a positive integer"),
        ({"eval_episodes": -1}, "eval_episodes must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"frames_per_batch": -5}, "frames_per_batch must be a positive integer"),
        ({"eval_every": 60}, "multiple of frames_per_batch"),
        ({"init_random_frames": 30}, "multiple of frames_per_batch"),
        ({"learning_rate": 1e-3}, "Unknown behaviour-agent hyperparameter"),
        ({"gamma": 1.5}, "gamma"),
        ({"target_return": float("nan")}, "target_return"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(target_return=None, max_env_steps=100, eval_every=50, **TINY)
    args.update(kwargs)
    with pytest.raises(BehaviorConfigError, match=match):
        train_behavior_agent(ENV, **args)


def test_unknown_env_and_cudagraphs_on_cpu_raise():
    with pytest.raises(ValueError, match="Unknown Gymnasium environment"):
        train_behavior_agent(
            "NoSuchEnv-v0", target_return=None, max_env_steps=100, eval_every=50, **TINY
        )
    with pytest.raises(BehaviorConfigError, match="cudagraphs=True needs a CUDA"):
        BehaviorLearner("sac", 3, _spec(), BehaviorConfig(cudagraphs=True), device="cpu")


def test_device_auto_selection_flags_on_cpu():
    learner = BehaviorLearner("sac", 3, _spec(), BehaviorConfig(hidden=(8,)))
    assert not learner.compiled and not learner.cudagraphs
    learner = BehaviorLearner("sac", 3, _spec(), BehaviorConfig(hidden=(8,), compile=True))
    assert learner.compiled and not learner.cudagraphs and learner.compile_mode == "default"


# --------------------------------------------------------------------------- compiled path
@pytest.mark.compile
@pytest.mark.parametrize(("algo", "backend"), [("sac", "inductor"), ("td3", "aot_eager")])
def test_compiled_cpu_update_matches_eager(algo, backend):
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    # Inductor draws random numbers its own way unless told to use eager's generator. (Use the
    # config's own patch: monkeypatch.setattr on a torch config module deletes the key on
    # teardown under newer pytest, breaking every later compile.)
    with inductor_config.patch(fallback_random=True):
        _compiled_update_matches_eager(algo, backend, counters)


def _compiled_update_matches_eager(algo, backend, counters):
    torch._dynamo.reset()
    counters.clear()
    spec = _spec()
    runs = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        cfg = BehaviorConfig(
            hidden=(16, 16), batch_size=16, compile=compile_, compile_backend=backend
        )
        learner = BehaviorLearner(algo, 3, spec, cfg)
        outs = [learner.update(_batch(16, 3, spec, terminated=False, seed=i)) for i in range(4)]
        runs.append((outs, learner.loss_module.state_dict()))
    (eager_out, eager_sd), (comp_out, comp_sd) = runs
    for a, b in zip(eager_out, comp_out):
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():  # noqa: SIM118 (TensorDict iterates rows)
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    for k, v in eager_sd.items():
        torch.testing.assert_close(comp_sd[k], v, rtol=1e-4, atol=1e-5)
    # No host syncs in the update: no graph break caused by .item()/data-dependent values.
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did trace the update
    reasons = " ".join(counters["graph_break"].keys()).lower()
    assert (
        "item" not in reasons
        and "data-dependent" not in reasons
        and "data dependent" not in reasons
    )
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_compiled_cudagraph_update_and_matches_eager():
    # Terminal-only batch: the critic loss does not depend on the policy's random draws, so the
    # compiled + CUDA-graphed critic trajectory must equal the eager one.
    spec = _spec()
    losses = []
    for compile_ in (False, None):
        torch.manual_seed(0)
        learner = BehaviorLearner(
            "sac",
            3,
            spec,
            BehaviorConfig(hidden=(32, 32), batch_size=64, compile=compile_),
            device="cuda",
        )
        assert learner.compiled == (compile_ is None)
        assert learner.cudagraphs == (compile_ is None)
        td = _batch(64, 3, spec, terminated=True)
        losses.append(torch.stack([learner.update(td)["loss_qvalue"] for _ in range(12)]).cpu())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-4)

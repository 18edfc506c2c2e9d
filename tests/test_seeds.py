"""Seed-batched runs (``run(cfg)`` with ``cfg.seeds``): equality with single runs, outputs, resume,
configuration errors, and the pieces they are built from (per-seed batch sampling, the group
logger, seeded initialisation, the seed-batched density-ratio step).

The end-to-end tests reuse ``test_pipeline``'s tiny configuration and generated dataset. With the
noise switched off (target smoothing ``1e-12``, no exploration noise) nothing random is left but
the per-seed generators, initialisations and environments, so a group must reproduce the single
runs of its seeds; with noise on it must still resume exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _helpers import transition_batch
from tensordict import TensorDict
from test_pipeline import (  # noqa: F401  (fixtures used by name)
    CHECKPOINT_EVERY,
    ENV_STEPS,
    OFFLINE_STEPS,
    _assert_series_close,
    _assert_states_equal,
    _read_csv,
    _single_thread_and_data,
    _tree_digest,
    minari_root,
    tiny_cfg,
)

import torchrl_opt.pipeline.context as ctxmod
from torchrl_opt.data.replay import DensityRatioEstimator, make_replay
from torchrl_opt.data.seed_replay import make_seed_batched_replay
from torchrl_opt.pipeline.agents import make_agent, seeded_init
from torchrl_opt.pipeline.checkpoint import CheckpointMismatchError
from torchrl_opt.pipeline.config import AccelerationConfig, ConfigError, RunConfig
from torchrl_opt.pipeline.context import DensityStep, RunResult, init_seed
from torchrl_opt.pipeline.logging import GroupLogger, NonFiniteMetricError, RunLogger
from torchrl_opt.pipeline.phases import sample_uniform
from torchrl_opt.pipeline.run import run
from torchrl_opt.pipeline.updates import UpdateEngine, loss_method

SEEDS = [3, 5]


def group_cfg(run_dir, backbone="td3", seeds=SEEDS, *, noise=True):
    cfg = tiny_cfg(run_dir, backbone)
    cfg.seeds = list(seeds)
    if not noise:
        quiet(cfg)
    return cfg


def quiet(cfg):
    """No noise left in a TD3 run but the seeded initialisations, batches and envs."""
    cfg.backbone.policy_noise = 1e-12
    cfg.backbone.exploration_noise = 0.0
    return cfg


def _scalars(result, cfg):
    """The CSV directory of one seed of a group run of ``cfg``."""
    return result.run_dir / "logs" / "scalars"


def _state(agent) -> dict[str, torch.Tensor]:
    return {k: v for k, v in agent.state_dict().items() if torch.is_tensor(v)}


_GROUPS: dict[str, RunResult] = {}


@pytest.fixture(scope="module")
def group_root(tmp_path_factory):
    return tmp_path_factory.mktemp("seed_groups")


def reference_group(name: str, root, **kwargs) -> RunResult:
    """An uninterrupted group run, computed once per module."""
    if name not in _GROUPS:
        _GROUPS[name] = run(group_cfg(root / name, **kwargs))
    return _GROUPS[name]


# ---------------------------------------------------------------------------------------------
# equality with single runs
# ---------------------------------------------------------------------------------------------
def test_noise_free_group_reproduces_the_single_runs_of_its_seeds(group_root, tmp_path):
    """Every logged metric of each seed equals its own single run (default torch.optim steps,
    TorchRL-free env stepping either way) up to the float rounding of the vmapped kernels, and the
    final networks compute the same actions and values.

    (The raw weights are compared through the networks' outputs: Adam turns float-rounding
    differences of a vanishing gradient, e.g. behind a saturated tanh, into full ``lr``-sized steps
    of either sign, so single weights may drift by a few ``lr`` without changing what they compute.)
    """
    group = reference_group("td3_quiet", group_root, noise=False)
    assert group.seeds == SEEDS
    probe = transition_batch(64, 11, 3, generator=torch.Generator().manual_seed(0))
    for seed, result in zip(SEEDS, group.results):
        cfg = quiet(tiny_cfg(tmp_path / f"single{seed}", "td3"))
        cfg.seed = seed
        single = run(cfg)
        assert result.history.keys() == single.history.keys()
        for key, series in single.history.items():
            _assert_series_close(result.history[key], series, rel=1e-4)
        grouped, alone = result.agent.finetune_loss, single.agent.finetune_loss
        with torch.no_grad():
            torch.testing.assert_close(result.agent.policy(probe.clone())["action"],
                                       single.agent.policy(probe.clone())["action"],
                                       rtol=0, atol=1e-3)
            out_grouped, out_alone = grouped.qvalue_losses(probe), alone.qvalue_losses(probe)
        for key in ("pred_value", "pred_value_on"):
            torch.testing.assert_close(out_grouped[key], out_alone[key], rtol=1e-3, atol=1e-4)


def test_iql_group_reproduces_offline_and_pretraining_of_single_runs(tmp_path):
    """IQL's exploration samples its Gaussian (shared RNG), but everything before fine-tuning
    is deterministic per seed: offline and pre-training metrics equal the single runs'."""
    cfg = group_cfg(tmp_path / "group", "iql")
    cfg.finetune.env_steps = 5
    group = run(cfg)
    for seed, result in zip(SEEDS, group.results):
        single_cfg = tiny_cfg(tmp_path / f"single{seed}", "iql")
        single_cfg.seed, single_cfg.finetune.env_steps = seed, 5
        single = run(single_cfg)
        keys = [k for k in single.history if k.startswith(("offline", "pretrain/"))]
        assert any(k.startswith("pretrain/") for k in keys) and any(k.startswith("offline/") for k in keys)
        for key in keys:
            _assert_series_close(result.history[key], single.history[key], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def test_group_writes_each_seed_like_a_single_run_and_aggregates(group_root):
    group = reference_group("td3", group_root)
    root = group.run_dir
    summary = json.loads((root / "summary.json").read_text())
    assert summary == json.loads(json.dumps(group.summary, default=str))
    finals = []
    for seed, result in zip(SEEDS, group.results):
        seed_dir = root / f"seed{seed}"
        assert result.run_dir == seed_dir
        seed_summary = json.loads((seed_dir / "summary.json").read_text())
        assert seed_summary["config"]["seed"] == seed
        assert seed_summary["group"] == {"seeds": SEEDS, "run_dir": str(root)}
        assert seed_summary["kind"] == "run" and summary["kind"] == "group"
        assert seed_summary["final_normalized_score"] == result.history["eval/normalized_score"][-1][1]
        assert (seed_dir / "offline.pt").is_file()
        scalars = _scalars(result, group_cfg(root))
        for key in ("eval/normalized_score", "offline_eval/return", "finetune/loss_qvalue_on", "finetune/online_share"):
            _assert_series_close(_read_csv(scalars / f"{key}.csv"), result.history[key], rel=1e-12)
        assert summary["per_seed"][str(seed)]["final_normalized_score"] == seed_summary["final_normalized_score"]
        finals.append(seed_summary["final_normalized_score"])
    mean = sum(finals) / len(finals)
    assert summary["final_normalized_score"] == pytest.approx(mean)
    assert summary["final_normalized_score_std"] == pytest.approx(
        math.sqrt(sum((f - mean) ** 2 for f in finals) / len(finals))
    )
    assert summary["seeds"] == SEEDS
    assert summary["updates"]["finetune"] == ENV_STEPS * 2
    # the seeds really are different runs (different initialisation, data and environments)
    a, b = (r.history["offline/loss_qvalue"] for r in group.results)
    assert a != b


def test_finished_group_is_not_rerun(group_root, monkeypatch):
    group = reference_group("td3", group_root)
    before = _tree_digest(group.run_dir)
    monkeypatch.setattr(ctxmod, "train_steps", lambda *a, **k: pytest.fail("retrained"))
    again = run(group_cfg(group.run_dir))
    assert again.summary == json.loads(json.dumps(group.summary, default=str))
    for a, b in zip(again.results, group.results):
        _assert_states_equal(_state(a.agent), _state(b.agent))
    assert _tree_digest(group.run_dir) == before


def test_offline_checkpoint_template_loads_each_seeds_own(group_root, tmp_path, monkeypatch):
    """``offline.checkpoint`` with ``{seed}``: every seed fine-tunes from its own offline.pt."""
    group = reference_group("td3", group_root)
    cfg = group_cfg(tmp_path / "reuse")
    cfg.offline.checkpoint = str(group.run_dir / "seed{seed}" / "offline.pt")
    loaded = []
    original = ctxmod.load_checkpoint

    def load(path, *args, **kwargs):
        loaded.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(ctxmod, "load_checkpoint", load)
    original_steps = ctxmod.train_steps

    def no_offline_training(*args, name, **kwargs):
        assert name not in ("offline", "vae"), "the offline phase was retrained"
        return original_steps(*args, name=name, **kwargs)

    monkeypatch.setattr(ctxmod, "train_steps", no_offline_training)
    out = run(cfg)
    assert [p for p in loaded if p.endswith("offline.pt")] == [
        str(group.run_dir / f"seed{s}" / "offline.pt") for s in SEEDS
    ]
    assert not any(k.startswith("offline") for k in out.results[0].history)
    cfg.offline.checkpoint = str(tmp_path / "nowhere" / "seed{seed}" / "offline.pt")
    with pytest.raises(ConfigError, match="seed3"):
        run(cfg)


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------
class _Kill(Exception):
    pass


def run_until_killed(cfg, monkeypatch, at=None, check=lambda extra: None) -> None:
    """``run(cfg)`` killed right after the group checkpoint ``at = (phase, step)`` (the first one
    when ``None``); ``check`` sees that checkpoint's extra entries."""
    original = ctxmod.Run.save

    def save(self, phase, step, updates, **extra):
        original(self, phase, step, updates, **extra)
        if at is None or (phase, step) == at:
            check(extra)
            raise _Kill(phase, step)

    with monkeypatch.context() as mp:
        mp.setattr(ctxmod.Run, "save", save)
        with pytest.raises(_Kill):
            run(cfg)


@pytest.mark.parametrize(
    "backbone,phase,step",
    [("td3", "offline", CHECKPOINT_EVERY), ("td3", "collect", CHECKPOINT_EVERY),
     ("td3", "pretrain", CHECKPOINT_EVERY), ("td3", "finetune", 2 * CHECKPOINT_EVERY),
     ("spot", "vae", CHECKPOINT_EVERY), ("spot", "finetune", CHECKPOINT_EVERY)],
)
def test_killed_group_resumes_exactly(backbone, phase, step, group_root, tmp_path, monkeypatch):
    """Kill right after a group checkpoint, rerun: every seed's metrics and networks are exactly
    those of the uninterrupted group (noise on: the shared RNG is restored too)."""
    reference = reference_group(backbone, group_root, backbone=backbone)
    cfg = group_cfg(tmp_path / "run", backbone)
    run_until_killed(cfg, monkeypatch, at=(phase, step))
    resumed = run(cfg)
    for a, b in zip(resumed.results, reference.results):
        assert a.history == b.history
        _assert_states_equal(_state(a.agent), _state(b.agent))
        rows = _read_csv(_scalars(a, cfg) / "offline" / "loss_qvalue.csv")
        assert [s for s, _ in rows] == [s for s, _ in b.history["offline/loss_qvalue"]]


def test_resuming_with_other_seeds_is_refused(group_root, tmp_path, monkeypatch):
    cfg = group_cfg(tmp_path / "run")
    run_until_killed(cfg, monkeypatch)
    before = _tree_digest(tmp_path / "run")
    cfg.seeds = [3, 6]
    with pytest.raises(CheckpointMismatchError, match="seeds"):
        run(cfg)
    assert _tree_digest(tmp_path / "run") == before


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": []}, "lists no seed"),
        ({"seeds": [1, 1]}, "twice"),
        ({"seeds": [0, -2]}, ">= 0"),
    ],
)
def test_bad_seed_configurations_are_named(change, message, tmp_path):
    cfg = group_cfg(tmp_path / "bad")
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_sample_uniform_with_one_generator_per_seed_draws_each_seeds_own_rows():
    data = TensorDict(x=torch.arange(50.0), batch_size=[50])
    per_seed = torch.stack([TensorDict(x=torch.arange(50.0) + 100 * i, batch_size=[50]) for i in range(3)])
    seeds = [7, 8, 9]
    for source in (data, per_seed):
        batched = sample_uniform(source, 6, [torch.Generator().manual_seed(s) for s in seeds])
        assert batched.batch_size == torch.Size([3, 6])
        for i, seed in enumerate(seeds):
            rows = source if source.batch_dims == 1 else source[i]
            alone = sample_uniform(rows, 6, torch.Generator().manual_seed(seed))
            assert torch.equal(batched[i]["x"], alone["x"])
    with pytest.raises(ValueError, match="per-seed data"):
        sample_uniform(per_seed, 6, [torch.Generator()] * 2)


def test_seed_group_logger_fans_out_per_seed(tmp_path):
    loggers = [RunLogger("csv", tmp_path / f"s{i}", f"s{i}", progress=False) for i in range(3)]
    group = GroupLogger(loggers, [10, 11, 12], progress=False)
    means = group.log(
        TensorDict(loss=torch.tensor([1.0, 2.0, 6.0]), grid=torch.arange(6.0).reshape(3, 2),
                   kappa=torch.tensor(0.25)),
        step=4, prefix="p",
    )
    assert means == pytest.approx({"loss": 3.0, "grid": 2.5, "kappa": 0.25})
    for i, logger in enumerate(loggers):
        assert logger.history["p/loss"] == [(4, [1.0, 2.0, 6.0][i])]
        assert logger.history["p/grid"] == [(4, 2 * i + 0.5)]
        assert logger.history["p/kappa"] == [(4, 0.25)]
    with pytest.raises(NonFiniteMetricError, match="seed 11"):
        group.log({"loss": torch.tensor([0.0, math.nan, 1.0])}, step=5)
    with pytest.raises(ValueError, match="leading seed dimension"):
        group.log({"loss": torch.ones(4)}, step=6)
    with pytest.raises(ValueError, match="one logger per seed"):
        GroupLogger(loggers, [1, 2])


def test_init_seed_is_deterministic_and_independent_of_the_global_rng():
    assert init_seed(3, "online_critics") == init_seed(3, "online_critics")
    assert len({init_seed(s, p) for s in (0, 1) for p in ("online_critics", "density_ratio")}) == 4
    with pytest.raises(ValueError, match="purpose"):
        init_seed(0, "bogus")

    def q_on_after(draws: int):
        torch.manual_seed(0)
        agent = make_agent(_cfg(hidden=[8]), 3, _spec(), "cpu")
        torch.rand(draws)  # "earlier phases" drawing more or fewer random numbers
        agent.start_online(q_on=True, kappa=0.5, init_seed=init_seed(0, "online_critics"))
        after = torch.rand(2)
        return agent.finetune_loss.qvalue_on_network_params.clone(), after

    (q1, next1), (q2, next2) = q_on_after(1), q_on_after(100)
    assert (q1 == q2).all()
    torch.manual_seed(0)
    make_agent(_cfg(hidden=[8]), 3, _spec(), "cpu")
    torch.rand(1)
    assert torch.equal(next1, torch.rand(2))  # the global stream continued untouched
    assert not torch.equal(next1, next2)
    with seeded_init(None):  # no-op
        pass


def _spec():
    from _helpers import action_spec

    return action_spec(dim=2)


def _cfg(**backbone) -> RunConfig:
    """A configuration whose backbone has the given entries (what ``make_agent`` reads)."""
    cfg = RunConfig()
    for key, value in backbone.items():
        setattr(cfg.backbone, key, value)
    return cfg


def test_seed_batched_density_step_equals_per_seed_steps():
    """The density-ratio step of a 3-seed run (one vmapped functional step on a seed-batched
    replay) gives each seed the losses, priorities and estimator weights of its own one-seed step
    (torch.optim engine) on its own replay."""
    obs, act, seeds = 4, 2, [1, 2, 3]
    offline = transition_batch(40, obs, act, generator=torch.Generator().manual_seed(0))
    online = torch.stack(
        [transition_batch(12, obs, act, generator=torch.Generator().manual_seed(10 + s)) for s in seeds]
    )
    estimators, singles, replays = [], [], []
    single_engine = UpdateEngine(1, torch.device("cpu"), AccelerationConfig())
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        estimator = DensityRatioEstimator(obs, act, (16,))
        twin = DensityRatioEstimator(obs, act, (16,))
        twin.load_state_dict(estimator.state_dict())
        estimators.append(estimator)
        singles.append(DensityStep([twin], 1e-2, 8, single_engine))
        replay = make_replay("balanced", offline, 12, 8, seed=seed)
        replay.extend(online[i])
        replays.append(replay)
    assert single_engine.kind == "module"
    engine = UpdateEngine(3, torch.device("cpu"), AccelerationConfig())
    batched = DensityStep(estimators, 1e-2, 8, engine)
    seed_replay = make_seed_batched_replay("balanced", offline, 3, 12, 8, seeds=seeds)
    seed_replay.extend(online)
    for _ in range(3):
        sample = seed_replay.sample()
        losses = batched(seed_replay, sample)
        for i in range(3):
            single_sample = replays[i].sample()
            assert torch.equal(single_sample["index"], sample["index"][i])
            torch.testing.assert_close(losses[i], singles[i](replays[i], single_sample), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(seed_replay.trees[i], replays[i]._sampler.tree, rtol=1e-6, atol=1e-9)
    for estimator, single in zip(estimators, singles):
        for a, b in zip(estimator.parameters(), single.losses[0].density_network.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    state = batched.state_dict()
    with pytest.raises(Exception, match="3 density-ratio estimators"):
        singles[0].load_state_dict(state)


def test_seed_batched_spot_actor_step_reads_each_seeds_own_vae():
    """SPOT's actor penalty holds a VAE per seed, outside the loss's parameter groups: the
    seed-batched actor step must evaluate seed i's penalty with seed i's VAE (same noise for all
    seeds here, so each seed equals its own single step)."""
    from torchrl_opt.pipeline.functional import SeedBatchedStep, SeedStack, make_functional_step

    def agent(seed):
        torch.manual_seed(seed)
        a = make_agent(_cfg(name="spot", hidden=[16], vae_hidden=[16]), 4, _spec(), "cpu")
        a.start_online(q_on=True, kappa=0.5, init_seed=seed)
        return a

    def actor_step(loss):
        return make_functional_step(loss, ("actor_network_params",),
                                    loss_method(loss.actor_loss, "loss_actor"), ("loss_actor",), 1e-2)

    seeds = [0, 1, 2]
    singles = [agent(s) for s in seeds]
    single_steps = [actor_step(a.finetune_loss) for a in singles]
    batched_agents = [agent(s) for s in seeds]
    losses = [a.finetune_loss for a in batched_agents]
    stack = SeedStack.of(losses)
    assert list(stack.modules) == ["actor_penalty"]
    step = SeedBatchedStep(stack, actor_step(losses[0]), randomness="same")
    batch = torch.stack([transition_batch(16, 4, 2, generator=torch.Generator().manual_seed(s)) for s in seeds])
    for _ in range(2):
        torch.manual_seed(7)
        out = step(batch)
        for i in range(3):
            torch.manual_seed(7)
            expected = single_steps[i](batch[i])
            torch.testing.assert_close(out["loss_actor"][i], expected["loss_actor"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out["actor_penalty"][i], expected["actor_penalty"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["actor_penalty"][0], out["actor_penalty"][1])
    for single, grouped in zip(singles, batched_agents):
        torch.testing.assert_close(grouped.actor.state_dict(), single.actor.state_dict(), rtol=1e-5, atol=1e-6)
        # each seed's VAE is untouched and its own (views of the stack)
        torch.testing.assert_close(grouped.vae.state_dict(), single.vae.state_dict(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# lockstep environments and the batched policy
# ---------------------------------------------------------------------------------------------
def _hopper_agents(seeds, backbone="td3"):
    from torchrl_opt.env_state import make_resumable_env

    spec = make_resumable_env("Hopper-v5", seed=0).action_spec
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(make_agent(_cfg(name=backbone, hidden=[16, 16], exploration_noise=0.0), 11, spec, "cpu"))
    return out


@pytest.mark.parametrize("backbone", ["td3", "iql"])
def test_batched_policy_acts_like_each_seeds_actor_and_leaves_the_modules_intact(backbone):
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from torchrl_opt.pipeline.acting import SeedBatchedPolicy
    from torchrl_opt.pipeline.functional import SeedStack

    agents = _hopper_agents([0, 1, 2], backbone)
    stack = SeedStack.of([a.offline_loss for a in agents])
    policy = SeedBatchedPolicy(agents[0].actor, lambda: stack.groups["actor_network_params"])
    before = [p for p in agents[0].actor.parameters()]
    obs = torch.randn(3, 11)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        batched = policy(TensorDict(observation=obs, batch_size=[3]))["action"]
        alone = torch.stack([a.policy(TensorDict(observation=obs[i], batch_size=[]))["action"]
                             for i, a in enumerate(agents)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    # the template's actor still holds the loss's own parameters (views of the stack): a later
    # re-stacking moves them, and the module must follow
    assert all(a is b for a, b in zip(agents[0].actor.parameters(), before))
    restack = SeedStack.of([a.offline_loss for a in agents])
    with torch.no_grad():
        restack.groups["actor_network_params"].apply_(lambda t: t.add_(1.0))
    live = TensorDict.from_module(agents[0].actor)
    stacked = restack.groups["actor_network_params"][0]
    trained = [(k, v) for k, v in live.items(True, True) if isinstance(v, torch.nn.Parameter)]
    assert trained
    for key, value in trained:  # (constant buffers such as action_scale are not trained)
        assert torch.equal(value, stacked.get(key)), key


def test_lockstep_collection_and_evaluation_equal_each_seeds_own():
    from torchrl.envs.utils import ExplorationType

    from torchrl_opt.direct_env import DirectCollector
    from torchrl_opt.env_state import make_resumable_env
    from torchrl_opt.envs import evaluate_policy
    from torchrl_opt.pipeline.acting import LockstepEnvs, Policies, SeedLockstepCollector, rollout_episodes
    from torchrl_opt.pipeline.functional import SeedStack

    seeds = [0, 1, 2]
    agents = _hopper_agents(seeds)
    stack = SeedStack.of([a.offline_loss for a in agents])
    policies = Policies(agents, lambda: stack.groups["actor_network_params"])
    policy, _ = policies.get("deterministic")
    for threads in (0, 2):
        envs = LockstepEnvs([make_resumable_env("Hopper-v5", seed=10 + s) for s in seeds],
                            threads=threads)
        collector = SeedLockstepCollector(envs, policy, frames_per_batch=20,
                                          exploration_type=ExplorationType.DETERMINISTIC)
        stream = iter(collector)
        batch = torch.cat([next(stream) for _ in range(3)], 1)
        collector.shutdown()
        assert batch.batch_size == torch.Size([3, 60])
        assert int(batch["next", "done"].sum()) >= 1
        for i, seed in enumerate(seeds):
            single = DirectCollector(make_resumable_env("Hopper-v5", seed=10 + seed), agents[i].policy,
                                     frames_per_batch=60, exploration_type=ExplorationType.DETERMINISTIC)
            reference = next(iter(single))
            for key in reference.keys(True, True):
                torch.testing.assert_close(batch[i].get(key), reference.get(key), rtol=1e-4, atol=1e-4,
                                           msg=str(key))
        envs = [make_resumable_env("Hopper-v5", seed=20 + s) for s in seeds]
        episodes = rollout_episodes(envs, policies, 3, max_steps=40, threads=threads)
        for i, seed in enumerate(seeds):
            alone = evaluate_policy(agents[i].policy, make_resumable_env("Hopper-v5", seed=20 + seed),
                                    3, max_steps=40)
            returns = torch.tensor([e.ret for e in episodes[i]], dtype=torch.float64)
            torch.testing.assert_close(returns, alone, rtol=1e-4, atol=1e-4)
            assert all(len(e.rewards) == len(e.observations) <= 40 for e in episodes[i])
    # one seed acts with its own module on []-batched observations: exactly evaluate_policy
    (episodes,) = rollout_episodes([make_resumable_env("Hopper-v5", seed=5)], Policies(agents[:1]), 2,
                                   max_steps=40)
    alone = evaluate_policy(agents[0].policy, make_resumable_env("Hopper-v5", seed=5), 2, max_steps=40)
    assert torch.equal(torch.tensor([e.ret for e in episodes], dtype=torch.float64), alone)


def test_prefetching_group_resumes_exactly(tmp_path, monkeypatch):
    """``finetune.prefetch_action`` in a group: every seed's next action is prefetched in the one
    batched call, saved in the group checkpoint, and a killed group resumes exactly."""
    def cfg_at(path):
        cfg = group_cfg(path)
        cfg.finetune.prefetch_action = True
        return cfg

    reference = run(cfg_at(tmp_path / "reference"))
    cfg = cfg_at(tmp_path / "run")
    seen = []
    run_until_killed(cfg, monkeypatch, at=("finetune", CHECKPOINT_EVERY),
                     check=lambda extra: seen.append(extra["pending_action"].shape))
    assert seen == [(len(SEEDS), 3)]
    resumed = run(cfg)
    for a, b in zip(resumed.results, reference.results):
        assert a.history == b.history

"""Every method is a plan over the same run object: each method end to end, one seed and a seed
group, with its phase structure asserted from the outside; exact resume after a kill in the middle
of each phase kind for the peers; the reward shift carried by every reward any method trains on.

(OPT and vanilla fine-tuning on every backbone, one seed, are covered in detail by
``test_pipeline.py``; seed groups' equality with single runs by ``test_seeds.py``.) The dataset and
fixtures are ``test_pipeline``'s; budgets are tiny.
"""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import action_spec
from tensordict import TensorDict
from test_pipeline import (  # noqa: F401  (fixtures used by name)
    DATA_SIZE,
    _assert_states_equal,
    _single_thread_and_data,
    minari_root,
    tiny_cfg,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type

import torchrl_opt.pipeline.context as ctxmod
from torchrl_opt.models import make_gaussian_actor, make_td3_actor
from torchrl_opt.objectives.bc import BCLoss
from torchrl_opt.pipeline.acting import EpsilonGreedyPolicy
from torchrl_opt.pipeline.checkpoint import load_checkpoint
from torchrl_opt.pipeline.config import ConfigError, RunConfig
from torchrl_opt.pipeline.plans import make_plan
from torchrl_opt.pipeline.run import run

OFFLINE, N_TAU, PRETRAIN, ENV_STEPS, UTD, EVERY = 12, 20, 4, 24, 2, 4
START, WARMUP, PRESAMPLE, BC, BATCH = 16, 20, 28, 10, 16
PLANS = {
    "opt": ["offline", "save_offline", "start_online", "collect", "pretrain", "finetune"],
    "vanilla": ["offline", "save_offline", "start_online", "collect", "finetune"],
    "rlpd": ["start_online", "start", "finetune"],
    "rlpd_offline": ["offline", "save_offline", "start_online", "collect", "finetune"],
    "rlpd_opt": ["offline", "save_offline", "start_online", "collect", "pretrain", "finetune"],
    "wsrl": ["offline", "save_offline", "start_online", "warmup", "finetune"],
    "porl": ["bc", "save_offline", "start_online", "presample_seed", "presample", "finetune"],
}
PEERS = ("rlpd", "rlpd_offline", "rlpd_opt", "wsrl", "porl")


def method_cfg(run_dir, method: str, seeds=None) -> RunConfig:
    cfg = tiny_cfg(run_dir, "td3", True)
    cfg.method, cfg.seeds = method, seeds
    if method in PEERS:
        cfg.backbone.name, cfg.backbone.hidden = "sac", [16, 16]
    cfg.offline.steps, cfg.offline.batch_size, cfg.offline.eval_every = OFFLINE, BATCH, 0
    cfg.online_pretrain.n_tau, cfg.online_pretrain.steps, cfg.online_pretrain.batch_size = N_TAU, PRETRAIN, BATCH
    cfg.finetune.env_steps, cfg.finetune.utd, cfg.finetune.batch_size = ENV_STEPS, UTD, BATCH
    cfg.finetune.kappa.kind, cfg.finetune.kappa.init = "constant", 0.5
    cfg.rlpd.utd, cfg.rlpd.start_steps = UTD, START
    cfg.wsrl.utd, cfg.wsrl.warmup_steps = UTD, WARMUP
    cfg.porl.utd, cfg.porl.presample_steps, cfg.porl.bc_steps = UTD, PRESAMPLE, BC
    cfg.eval.every, cfg.eval.episodes, cfg.eval.max_steps = 12, 1, 30
    cfg.logging.log_every = 6
    cfg.checkpoint.every = EVERY
    return cfg


class Recorder:
    """Counts every update step's calls per phase, snapshots the template seed's loss at phase
    boundaries, and keeps the batches each phase's first step trained on."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, int] = {}
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.batches: dict[str, list] = {}
        build = ctxmod.Run.build_updates
        recorder = self

        def build_updates(run_obj, kind, **kwargs):
            specs = build(run_obj, kind, **kwargs)
            phase = recorder.phase
            for spec in specs:
                spec.step = recorder._wrap(f"{phase}/{spec.name}", spec.step)
            return specs

        self.phase = None
        monkeypatch.setattr(ctxmod.Run, "build_updates", build_updates)
        for name in ("train", "collect", "pretrain", "finetune"):
            monkeypatch.setattr(ctxmod.Run, name, self._phase_method(getattr(ctxmod.Run, name)))

    def _wrap(self, name, step):
        def wrapped(batch):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.batches.setdefault(name, []).append(batch.clone())
            return step(batch)

        return wrapped

    def _phase_method(self, method):
        recorder = self

        def wrapped(run_obj, phase, resume):
            recorder.phase = phase.name
            recorder.states[f"{phase.name}:start"] = _state(_live_loss(run_obj))
            method(run_obj, phase, resume)
            recorder.states[f"{phase.name}:end"] = _state(_live_loss(run_obj))
            recorder.run = run_obj

        return wrapped


def _live_loss(run_obj):
    agent = run_obj.agents[0]
    return agent.finetune_loss if agent.finetune_loss is not None else agent.offline_loss


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def _group(state, prefix):
    return [v for k, v in state.items() if k.startswith(prefix)]


def _same(a, b) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


_RESULTS: dict = {}


def reference(method, root, monkeypatch, seeds=None):
    """An uninterrupted run of ``method`` (recorded), once per module."""
    key = (method, tuple(seeds) if seeds else None)
    if key not in _RESULTS:
        with monkeypatch.context() as mp:
            recorder = Recorder(mp)
            result = run(method_cfg(root / f"{method}-{key[1]}", method, seeds))
        _RESULTS[key] = (result, recorder)
    return _RESULTS[key]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("methods")


# ---------------------------------------------------------------------------------------------
# every method, one seed and two
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [None, [0, 1]], ids=["single", "seeds01"])
@pytest.mark.parametrize("method", sorted(PLANS))
def test_every_method_runs_its_plan(method, seeds, root, monkeypatch):
    if method in ("opt", "vanilla") and seeds is None:
        pytest.skip("one-seed OPT and vanilla runs are covered by test_pipeline")
    result, rec = reference(method, root, monkeypatch, seeds)
    cfg = method_cfg(result.run_dir, method, seeds)
    assert make_plan(cfg).names == PLANS[method]
    s = len(seeds or [0])
    assert [r.seed for r in result.results] == (seeds or [0])
    # the same loops everywhere: offline updates, collection, pre-training, fine-tuning
    calls = rec.calls
    utd = UTD
    if "offline" in PLANS[method]:
        assert calls["offline/critic"] == OFFLINE
        assert calls["offline/actor"] == (OFFLINE if method in PEERS else OFFLINE // 2)
    if "pretrain" in PLANS[method]:
        assert calls["pretrain/pretrain"] == PRETRAIN
    else:
        assert not any(k.startswith("pretrain/") for k in calls)
    assert calls["finetune/critic"] == ENV_STEPS * utd
    actor_every = utd if method in PEERS else 2  # SAC: once per env step; TD3: actor delay 2
    assert calls["finetune/actor"] == ENV_STEPS * utd // actor_every
    run_obj = rec.run
    collected = {"opt": N_TAU, "vanilla": N_TAU, "rlpd": START, "rlpd_offline": N_TAU,
                 "rlpd_opt": N_TAU, "wsrl": WARMUP, "porl": BATCH}[method]
    assert run_obj.online_data.shape == ((collected,) if s == 1 else (s, collected))
    total_online = collected + ENV_STEPS + (PRESAMPLE - BATCH if method == "porl" else 0)
    assert run_obj.replay.num_online == total_online
    strategy = {"rlpd": "symmetric", "rlpd_offline": "symmetric", "rlpd_opt": "symmetric",
                "wsrl": "online", "porl": "online"}.get(method, "balanced")
    assert run_obj.replay.strategy == strategy
    for batch in rec.batches["finetune/critic"]:
        online = batch["is_online"].float()
        if strategy == "symmetric":  # RLPD's 50/50, offline rows first
            assert float(online.mean()) == 0.5
        elif strategy == "online":  # WSRL / PORL: no offline data is ever trained on
            assert bool(online.all())
    # per-phase semantics
    if method in ("opt", "rlpd_opt"):  # pre-training moves the online critics only
        start, end = rec.states["pretrain:start"], rec.states["pretrain:end"]
        for prefix in ("actor_network_params", "qvalue_off_network_params", "target_qvalue_off"):
            assert _same(_group(start, prefix), _group(end, prefix)), prefix
        assert not _same(_group(start, "qvalue_on_network_params"), _group(end, "qvalue_on_network_params"))
    if method in ("wsrl", "rlpd_offline"):  # the offline agent carries over, frozen while collecting
        offline, ft = rec.states["offline:end"], rec.states["finetune:start"]
        for prefix in ("actor_network_params", "qvalue_off_network_params", "target_qvalue_off"):
            assert _same(_group(offline, prefix), _group(ft, prefix)), prefix
    if method == "porl":
        bc_end, pre_start, pre_end = rec.states["bc:end"], rec.states["presample:start"], rec.states["presample:end"]
        assert calls["bc/bc"] == BC and calls["presample/critic"] == (PRESAMPLE - BATCH) * UTD
        assert "presample/actor" not in calls
        # fresh critics (their targets equal them), the BC policy, frozen while the critic trains
        assert _same(_group(pre_start, "qvalue_off_network_params"), _group(pre_start, "target_qvalue_off"))
        assert _same(_group(bc_end, "actor_network_params"), _group(pre_end, "actor_network_params"))
        assert _same(_group(pre_start, "log_alpha"), _group(pre_end, "log_alpha"))
        assert not _same(_group(pre_start, "qvalue_off_network_params"), _group(pre_end, "qvalue_off_network_params"))
    # outputs: each seed's summary and logs, a group's aggregate
    for r in result.results:
        summary = json.loads((r.run_dir / "summary.json").read_text())
        assert summary["method"] == method and summary["kind"] == "run" and summary["seed"] == r.seed
        assert summary["plan"] == PLANS[method]
        assert summary["final_normalized_score"] == r.history["eval/normalized_score"][-1][1]
        assert [st for st, _ in summary["scores"]] == [12, 24]
        assert (r.run_dir / "logs" / "scalars" / "finetune" / "loss_qvalue.csv").is_file()
        if "save_offline" in PLANS[method]:
            assert (r.run_dir / "offline.pt").is_file()
    if seeds:
        group = json.loads((result.run_dir / "summary.json").read_text())
        assert group["kind"] == "group" and group["seeds"] == seeds
        assert set(group["per_seed"]) == {str(x) for x in seeds}


def test_porl_critic_optimizer_continues_into_finetuning(root, monkeypatch):
    """PORL's fine-tuning critic step starts from the pre-sampling critic's Adam state."""
    _, rec = reference("porl", root, monkeypatch)
    critic = rec.run.specs["critic"].optimizer.state_dict()
    steps = int(next(iter(critic["state"].values()))["step"])
    assert steps == (PRESAMPLE - BATCH) * UTD + ENV_STEPS * UTD


def test_no_qon_pretrains_q_off_and_nothing_else(tmp_path, monkeypatch):
    """``online_pretrain.critic=q_off`` (the paper's "without Q_on"): no new critic; online
    pre-training moves Q_off and its targets only (Eq. 3 on Q_off), fine-tuning uses Q_off alone."""
    cfg = method_cfg(tmp_path / "no_qon", "opt")
    cfg.online_pretrain.critic = "q_off"
    assert make_plan(cfg).names == PLANS["opt"]
    with monkeypatch.context() as mp:
        rec = Recorder(mp)
        result = run(cfg)
    start, end = rec.states["pretrain:start"], rec.states["pretrain:end"]
    assert not any(k.startswith(("qvalue_on", "target_qvalue_on")) for k in end)
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert moved and all(k.startswith(("qvalue_off_network_params", "target_qvalue_off_network_params"))
                         for k in moved), sorted(moved)
    assert any(k.startswith("target_qvalue_off") for k in moved)  # its targets follow
    assert rec.calls["pretrain/pretrain"] == PRETRAIN
    assert "finetune/kappa" not in result.history and "finetune/loss_qvalue_on" not in result.history
    with pytest.raises(ConfigError, match="online_pretrain.critic"):
        bad = method_cfg(tmp_path / "bad", "opt")
        bad.online_pretrain.critic, bad.backbone.name = "q_off", "iql"
        run(bad)


def test_wsrl_pretrains_with_calql_then_finetunes_plain_sac(tmp_path, monkeypatch):
    """WSRL's AntMaze / Adroit recipe: Cal-QL offline (the critic step reads each row's Monte Carlo
    return-to-go, checked against a loop over the dataset's episodes, with the sparse-reward
    failure rule after the reward shift), then plain ensemble SAC online: the Lagrange multiplier
    and CQL's buffers stay behind, every network carries over."""
    cfg = method_cfg(tmp_path / "calql", "wsrl")
    cfg.wsrl.offline_regularizer, cfg.wsrl.cql_lagrange = "calql", True
    cfg.wsrl.failure_reward, cfg.dataset.reward_shift = 0.0, -1.0
    with monkeypatch.context() as mp:
        rec = Recorder(mp)
        result = run(cfg)
    agent, data = rec.run.agents[0], rec.run.data
    from torchrl_opt.objectives.cql import EnsembleCQLLoss
    from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss

    assert isinstance(agent.offline_loss, EnsembleCQLLoss) and agent.offline_loss.calibrated
    assert type(agent.finetune_loss) is EnsembleSACLoss
    gamma, rewards, dones = cfg.backbone.gamma, data["next", "reward"].flatten().tolist(), data["next", "done"].flatten().tolist()
    expected, running = [0.0] * len(rewards), 0.0
    for i in range(len(rewards) - 1, -1, -1):  # backwards, restarting at each episode end
        if dones[i] or i == len(rewards) - 1:
            running = 0.0
        running = rewards[i] + gamma * running
        expected[i] = running
    # failure rule: an episode whose shifted rewards all equal 0 + shift gets (0 + shift) / (1 - gamma)
    ends = [i for i, d in enumerate(dones) if d] + [len(rewards) - 1]
    begin = 0
    for end in ends:
        if end >= begin and all(r == -1.0 for r in rewards[begin:end + 1]):
            expected[begin:end + 1] = [-1.0 / (1 - gamma)] * (end + 1 - begin)
        begin = end + 1
    torch.testing.assert_close(data["mc_return"].flatten().double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)
    assert "mc_return" in rec.batches["offline/critic"][0].keys()
    assert "offline/calql_bound_rate" in result.history and "offline/loss_cql_alpha" in result.history
    assert "finetune/loss_cql" not in result.history
    online = agent.finetune_loss.state_dict()
    assert not any(k.startswith(("cql_alpha", "uniform_log_density")) for k in online)


# ---------------------------------------------------------------------------------------------
# resume after a kill in the middle of each phase kind
# ---------------------------------------------------------------------------------------------
class _Kill(Exception):
    """Stands for SIGKILL right after a checkpoint."""


RESUME = [
    ("rlpd", "start", 8), ("rlpd", "finetune", 8),
    ("wsrl", "offline", 8), ("wsrl", "warmup", 8), ("wsrl", "finetune", 12),
    ("porl", "bc", 8), ("porl", "presample", 8), ("porl", "finetune", 8),
    ("rlpd_opt", "pretrain", 4),
]


@pytest.mark.parametrize("method,phase,step", RESUME, ids=[f"{m}-{p}{s}" for m, p, s in RESUME])
def test_killed_run_resumes_exactly(method, phase, step, root, tmp_path, monkeypatch):
    """Kill right after a checkpoint in the middle of ``phase``, rerun: the histories and the
    final weights are bit-identical to the uninterrupted run's."""
    reference_result, _ = reference(method, root, monkeypatch)
    cfg = method_cfg(tmp_path / "run", method)
    original = ctxmod.Run.save

    def save(self, ph, st, specs, **extra):
        original(self, ph, st, specs, **extra)
        if (ph, st) == (phase, step):
            raise _Kill(ph, st)

    with monkeypatch.context() as mp:
        mp.setattr(ctxmod.Run, "save", save)
        with pytest.raises(_Kill):
            run(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (state["phase"], state["step"]) == (phase, step)
    resumed = run(cfg)
    assert resumed.history == reference_result.history
    _assert_states_equal(_state(resumed.agent), _state(reference_result.agent))


# ---------------------------------------------------------------------------------------------
# the reward shift (AntMaze's r - 1) reaches every reward every method trains on
# ---------------------------------------------------------------------------------------------
FROZEN = {"backbone": ("actor_lr", "critic_lr", "value_lr", "vae_lr", "alpha_lr"),
          "online_pretrain": ("lr",), "finetune": ("density_lr",), "porl": ("bc_lr",)}


def _frozen_cfg(path, method, shift):
    """Learning rates of 1e-30 leave every network bit-identical (float32 cannot represent the
    step), so two runs that differ only in ``dataset.reward_shift`` act, collect and evaluate
    identically: any difference in the trained-on rewards is the shift itself."""
    cfg = method_cfg(path, method)
    cfg.offline.steps, cfg.online_pretrain.n_tau, cfg.finetune.env_steps = 6, 10, 8
    cfg.rlpd.start_steps, cfg.wsrl.warmup_steps, cfg.porl.presample_steps, cfg.porl.bc_steps = 10, 10, 20, 6
    cfg.eval.every, cfg.checkpoint.every = 8, 0
    for section, keys in FROZEN.items():
        for key in keys:
            setattr(getattr(cfg, section), key, 1e-30)
    cfg.dataset.reward_shift = shift
    return cfg


def _rewards(batch):
    keys = [k for k in batch.keys(True, True) if isinstance(k, tuple) and k[-2:] == ("next", "reward")]
    return {k: batch.get(k) for k in keys}


@pytest.mark.parametrize("method", sorted(PLANS))
def test_every_trained_on_reward_carries_the_shift_and_evaluation_is_raw(method, tmp_path, monkeypatch):
    runs = {}
    for shift in (0.0, -1.0):
        with monkeypatch.context() as mp:
            rec = Recorder(mp)
            result = run(_frozen_cfg(tmp_path / f"shift{shift}", method, shift))
        runs[shift] = (result, rec)
    (plain, plain_rec), (shifted, shifted_rec) = runs[0.0], runs[-1.0]
    assert plain_rec.batches.keys() == shifted_rec.batches.keys()
    online_rows = offline_rows = 0
    for name, batches in plain_rec.batches.items():
        for a, b in zip(batches, shifted_rec.batches[name]):
            ra, rb = _rewards(a), _rewards(b)
            assert ra.keys() == rb.keys() and ra, name
            for key in ra:  # every reward of every batch: exactly the shift apart
                torch.testing.assert_close(rb[key], ra[key] - 1.0, rtol=0, atol=1e-6, msg=f"{name} {key}")
            assert torch.equal(a.exclude(*ra).to_dict()["observation"] if "observation" in a.keys()
                               else a["online", "observation"], b.exclude(*rb).to_dict()["observation"]
                               if "observation" in b.keys() else b["online", "observation"])
            if "is_online" in a.keys():  # replay batches: offline and online rows
                online_rows += int(a["is_online"].sum())
                offline_rows += int((~a["is_online"]).sum())
            elif "online" in a.keys():  # online pre-training: B_off and B_on batches
                online_rows += a["online"].numel()
                offline_rows += a["offline"].numel()
            else:  # offline phases
                offline_rows += a.numel()
    assert online_rows > 0 and (offline_rows > 0 or method == "rlpd")
    # evaluation reports the environment's raw return
    assert plain.history["eval/return"] == shifted.history["eval/return"]
    assert plain.history["eval/normalized_score"] == shifted.history["eval/normalized_score"]


# ---------------------------------------------------------------------------------------------
# configuration and the pieces peers use
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: setattr(c, "method", "cql"), "method='cql'"),
        (lambda c: setattr(c.backbone, "name", "td3"), "backbone.name='sac'"),
        (lambda c: setattr(c.porl, "policy_source", "expert"), "porl.policy_source"),
        (lambda c: setattr(c.backbone, "num_min_qs", 11), "num_min_qs"),
        (lambda c: setattr(c.porl, "presample_steps", 4), "presample_steps"),
        (lambda c: setattr(c.wsrl, "utd", 0), "wsrl.utd"),
    ],
)
def test_bad_method_settings_are_named(change, message, tmp_path):
    method = "porl" if "porl" in message or "presample" in message else "wsrl"
    cfg = method_cfg(tmp_path / "bad", method)
    change(cfg)
    with pytest.raises(ConfigError, match=message.replace("'", ".")):
        run(cfg)
    assert not (tmp_path / "bad").exists()


def test_epsilon_greedy_policy():
    spec = action_spec(-0.5, 0.5)
    actor = make_td3_actor(4, spec, (8,))
    obs = TensorDict(observation=torch.randn(4000, 4), batch_size=[4000])
    greedy = EpsilonGreedyPolicy(actor, spec, 0.0)(obs.clone())["action"]
    torch.testing.assert_close(greedy, actor(obs.clone())["action"])
    uniform = EpsilonGreedyPolicy(None, spec, 1.0)(obs.clone())["action"]
    assert uniform.min() >= -0.5 and uniform.max() <= 0.5
    torch.testing.assert_close(uniform.mean(0), torch.zeros(2), atol=0.02, rtol=0)
    torch.testing.assert_close(uniform.var(0), torch.full((2,), 1 / 12), atol=0.01, rtol=0)
    mixed = EpsilonGreedyPolicy(actor, spec, 0.3)(obs.clone())["action"]
    replaced = (mixed != greedy).any(-1).float().mean()
    assert abs(replaced.item() - 0.3) < 0.04
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedyPolicy(actor, spec, 1.5)


def test_bc_loss_fits_the_behaviour_policy():
    torch.manual_seed(0)
    spec = action_spec()
    obs = torch.randn(512, 4)
    actions = torch.tanh(obs[:, :2] * 1.5)  # a deterministic behaviour policy inside the box
    data = TensorDict(observation=obs, action=actions, batch_size=[512])
    actor = make_gaussian_actor(4, spec, (32, 32))
    loss = BCLoss(actor, spec)
    optimizer = torch.optim.Adam(actor.parameters(), lr=3e-3)
    initial = loss(data)["loss_bc"].item()
    for _ in range(300):
        out = loss(data)
        optimizer.zero_grad()
        out["loss_bc"].backward()
        optimizer.step()
    assert loss(data)["loss_bc"].item() < initial - 2.0
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        mode = actor(data.select("observation").clone())["action"]
    assert (mode - actions).abs().mean() < 0.15
    with pytest.raises(KeyError, match="action"):
        loss(data.exclude("action"))

"""Tiny end-to-end runs of RLPD, RLPD+OPT, WSRL and PORL on a small generated hopper-random dataset,
with their phase structure asserted; BC and epsilon-greedy helpers checked on their own."""

from __future__ import annotations

import os

import pytest
import torch
from _helpers import action_spec
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_opt.data.generate import ensure_dataset
from torchrl_opt.models import make_gaussian_actor, make_td3_actor
from torchrl_opt.pipeline.baselines import (
    BaselineConfig,
    BaselineConfigError,
    BaselineResult,
    BCLoss,
    EpsilonGreedyPolicy,
    run_baseline,
    run_porl,
    run_rlpd,
    run_rlpd_opt,
    run_wsrl,
)
from torchrl_opt.pipeline.checkpoint import load_checkpoint
from torchrl_opt.pipeline.config import RunConfig
from torchrl_opt.pipeline.run import load_dataset

DATA_SIZE = 1500
ENV_STEPS = 24
UTD = 3


@pytest.fixture(scope="session", autouse=True)
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    torch.set_num_threads(1)
    ensure_dataset("hopper", "random", size=DATA_SIZE, seed=0, progress=False)
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


def _cfg(run_dir) -> RunConfig:
    cfg = RunConfig(seed=0, device="cpu", run_dir=str(run_dir))
    cfg.dataset.task, cfg.dataset.kind, cfg.dataset.size = "hopper", "random", DATA_SIZE
    cfg.offline.steps, cfg.offline.batch_size, cfg.offline.eval_every = 12, 16, 0
    cfg.online_pretrain.n_tau, cfg.online_pretrain.steps, cfg.online_pretrain.batch_size = 20, 4, 16
    cfg.finetune.env_steps, cfg.finetune.batch_size = ENV_STEPS, 16
    cfg.finetune.kappa.kind, cfg.finetune.kappa.init = "constant", 0.5
    cfg.eval.every, cfg.eval.episodes, cfg.eval.max_steps = 0, 1, 30
    cfg.logging.backend, cfg.logging.progress, cfg.logging.log_every = "none", False, 8
    cfg.checkpoint.every = 0
    return cfg


def _bl(method: str = "rlpd") -> BaselineConfig:
    bl = BaselineConfig(method=method)
    bl.sac.hidden, bl.sac.num_qvalue_nets = [8, 8], 10
    bl.rlpd.utd, bl.rlpd.start_steps = UTD, 16
    bl.wsrl.utd, bl.wsrl.warmup_steps = UTD, 20
    bl.porl.utd, bl.porl.presample_steps, bl.porl.bc_steps = UTD, 28, 10
    return bl


class Recorder:
    """Phase hook: the event order and a snapshot of the loss's state at every event."""

    def __init__(self):
        self.events: list[str] = []
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, event, agent):
        self.events.append(event)
        self.states[event] = {k: v.detach().clone() for k, v in agent.loss.state_dict().items()}


def _group(state: dict, prefix: str) -> list[torch.Tensor]:
    return [v for k, v in state.items() if k.startswith(prefix)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


def _optimizer_steps(checkpoint: dict, name: str) -> int:
    state = checkpoint["optimizers"][name]["state"]
    return int(next(iter(state.values()))["step"])


def test_rlpd_symmetric_batches_and_update_counts(tmp_path):
    rec = Recorder()
    res = run_rlpd(_cfg(tmp_path), _bl(), hook=rec)
    assert rec.events == ["start:start", "start:end", "finetune:start", "finetune:end"]
    replay = res.replay
    assert replay.strategy == "symmetric"
    assert replay.offline_size == DATA_SIZE
    assert replay.num_online == 16 + ENV_STEPS
    for _ in range(3):
        batch = replay.sample()
        assert batch["is_online"].float().mean().item() == 0.5
        assert not batch["is_online"][:8].any() and batch["is_online"][8:].all()
    ckpt = load_checkpoint(tmp_path / "finetune.pt")
    # critic every update (UTD), actor + temperature once per environment step
    assert _optimizer_steps(ckpt, "critic") == ENV_STEPS * UTD
    assert _optimizer_steps(ckpt, "actor") == ENV_STEPS
    assert res.summary["updates"]["finetune"] == ENV_STEPS * UTD
    assert res.summary["final_normalized_score"] is not None
    assert (tmp_path / "summary.json").exists()


def test_rlpd_opt_phases_and_frozen_offline_parts_during_pretraining(tmp_path):
    rec = Recorder()
    res = run_rlpd_opt(_cfg(tmp_path), _bl(), hook=rec)
    assert rec.events == [
        "offline:start", "offline:end", "collect:start", "collect:end",
        "pretrain:start", "pretrain:end", "finetune:start", "finetune:end",
    ]
    for phase in ("offline", "pretrain", "finetune"):
        assert (tmp_path / f"{phase}.pt").exists()
    start, end = rec.states["pretrain:start"], rec.states["pretrain:end"]
    assert _same(_group(start, "actor_network_params"), _group(end, "actor_network_params"))
    assert _same(_group(start, "qvalue_off_network_params"), _group(end, "qvalue_off_network_params"))
    assert _same(
        _group(start, "target_qvalue_off_network_params"), _group(end, "target_qvalue_off_network_params")
    )
    assert not _same(_group(start, "qvalue_on_network_params"), _group(end, "qvalue_on_network_params"))
    # Q_off and the actor come from the offline phase, Q_on is new
    offline = load_checkpoint(tmp_path / "offline.pt")["loss"]
    assert _same(_group(offline, "qvalue_off_network_params"), _group(start, "qvalue_off_network_params"))
    assert float(res.agent.loss.kappa) == 0.5
    assert res.replay.strategy == "symmetric"
    assert res.replay.num_online == 20 + ENV_STEPS
    assert res.replay.sample()["is_online"].float().mean().item() == 0.5
    assert res.agent.loss.has_qvalue_on


def test_wsrl_buffer_holds_no_offline_data_and_carries_the_pretrained_agent(tmp_path):
    rec = Recorder()
    res = run_wsrl(_cfg(tmp_path), _bl(), hook=rec)
    assert rec.events == [
        "offline:start", "offline:end", "warmup:start", "warmup:end", "finetune:start", "finetune:end",
    ]
    replay = res.replay
    assert len(replay) == 20 + ENV_STEPS  # K warm-up steps, then the fine-tuning steps
    rows = replay.data[: len(replay)]
    data, _, _ = load_dataset(_cfg(tmp_path), torch.device("cpu"))
    distance = torch.cdist(rows["observation"], data["observation"]).min()
    assert distance > 1e-6, "a dataset transition is in WSRL's buffer"
    # the policy, the 10-critic ensemble and its targets carry over from pre-training, frozen in
    # warm-up (TorchRL's SoftUpdate would hard-copy the critics into the targets at construction)
    offline, ft_start = rec.states["offline:end"], rec.states["finetune:start"]
    for prefix in ("actor_network_params", "qvalue_off_network_params", "target_qvalue_off"):
        assert _same(_group(offline, prefix), _group(ft_start, prefix))
    assert not _same(
        _group(ft_start, "qvalue_off_network_params"),
        _group(rec.states["finetune:end"], "qvalue_off_network_params"),
    )
    assert _optimizer_steps(load_checkpoint(tmp_path / "finetune.pt"), "critic") == ENV_STEPS * UTD


@pytest.mark.parametrize("source", ["bc", "offline"])
def test_porl_fresh_critic_and_frozen_policy_during_presampling(tmp_path, source):
    bl = _bl()
    bl.porl.policy_source = source
    rec = Recorder()
    res = run_porl(_cfg(tmp_path), bl, hook=rec)
    first = "bc" if source == "bc" else "offline"
    assert rec.events == [
        f"{first}:start", f"{first}:end", "presample_seed:start", "presample_seed:end",
        "presample:start", "presample:end", "finetune:start", "finetune:end",
    ]
    before, pre_start = rec.states[f"{first}:end"], rec.states["presample_seed:start"]
    pre_end = rec.states["presample:end"]
    # the critic starts random: not the pre-training's, targets equal to the fresh critics
    assert not _same(
        _group(before, "qvalue_off_network_params"), _group(pre_start, "qvalue_off_network_params")
    )
    live = _group(pre_start, "qvalue_off_network_params")
    target = _group(pre_start, "target_qvalue_off_network_params")
    assert _same(live, target)
    # the policy is the pre-trained one and stays frozen while the critic trains
    assert _same(_group(before, "actor_network_params"), _group(pre_end, "actor_network_params"))
    assert not _same(live, _group(pre_end, "qvalue_off_network_params"))
    assert _same(_group(pre_start, "log_alpha"), _group(pre_end, "log_alpha"))
    # then fine-tuning moves the policy
    assert not _same(
        _group(pre_end, "actor_network_params"),
        _group(rec.states["finetune:end"], "actor_network_params"),
    )
    replay = res.replay
    assert len(replay) == 28 + ENV_STEPS
    presample = load_checkpoint(tmp_path / "presample.pt")
    assert set(presample["optimizers"]) == {"critic"}
    assert _optimizer_steps(presample, "critic") == (28 - 16) * UTD


def test_run_baseline_dispatch_and_validation(tmp_path):
    with pytest.raises(BaselineConfigError, match="baseline.method"):
        run_baseline(_cfg(tmp_path), BaselineConfig(method="cql"))
    bad = _bl("porl")
    bad.porl.policy_source = "expert"
    with pytest.raises(BaselineConfigError, match="policy_source"):
        run_baseline(_cfg(tmp_path), bad)
    bad = _bl("rlpd")
    bad.sac.num_min_qs = 11
    with pytest.raises(BaselineConfigError, match="num_min_qs"):
        run_baseline(_cfg(tmp_path), bad)
    bad = _bl("porl")
    bad.porl.presample_steps = 4
    with pytest.raises(BaselineConfigError, match="presample_steps"):
        run_baseline(_cfg(tmp_path), bad)


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


@pytest.mark.parametrize("system", ["rlpd", "wsrl", "porl", "rlpd_opt"])
def test_run_dispatches_seed_systems_by_config(tmp_path, system):
    """``run(cfg)`` with ``cfg.system`` runs that seed system with ``cfg.baseline``'s settings."""
    from torchrl_opt.pipeline.run import run

    cfg = _cfg(tmp_path / system)
    cfg.system = system
    cfg.baseline = _bl()  # its ``method`` field is overridden by ``cfg.system``
    result = run(cfg)
    assert isinstance(result, BaselineResult)
    assert result.summary["config"]["system"] == system
    assert (tmp_path / system / "summary.json").exists()


def test_unknown_system_is_rejected(tmp_path):
    from torchrl_opt.pipeline.config import ConfigError
    from torchrl_opt.pipeline.run import run

    cfg = _cfg(tmp_path)
    cfg.system = "cql"
    with pytest.raises(ConfigError, match="system='cql'"):
        run(cfg)

"""Dataset generation: random collection, medium / medium-replay / expert logic with a fake
behaviour trainer, atomic writes, caching and the CLI."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from torchrl_opt.data import generate as gen
from torchrl_opt.data.datasets import DatasetSpec, load_offline_data
from torchrl_opt.data.generate import (
    DatasetExistsError,
    TargetNotReachedError,
    collect_transitions,
    ensure_dataset,
    generate_dataset,
    target_return,
)

ENV_ID = "Hopper-v5"


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    return tmp_path


def _policy():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(11, 3), torch.nn.Tanh())
    return TensorDictModule(net, in_keys=["observation"], out_keys=["action"])


@dataclass
class FakeResult:
    policy: TensorDictModule
    transitions: TensorDict
    env_steps: int
    reached_target: bool
    final_eval_return: float
    eval_history: list = field(default_factory=list)
    checkpoint: dict = field(default_factory=dict)


class FakeTrainer:
    """Records its call; 'reaches' the target when its final return >= target_return."""

    def __init__(self, final_return: float, n_transitions: int = 120):
        self.final_return = final_return
        self.n = n_transitions
        self.calls = []

    def __call__(self, env_id, *, target_return, max_env_steps, seed=0, algo="sac", device=None,
                 eval_every=5000, eval_episodes=5, progress=True):
        self.calls.append(dict(env_id=env_id, target_return=target_return, max_env_steps=max_env_steps,
                               seed=seed, algo=algo))
        policy = _policy()
        data = collect_transitions(None, env_id, self.n, seed=seed + 7, max_episode_steps=25,
                                   progress=False)
        # the trainer stopped mid-episode: the last transition carries no done flag
        data["next", "truncated"][-1] = False
        data["next", "done"][-1] = data["next", "terminated"][-1]
        reached = target_return is None or self.final_return >= target_return
        self.transitions = data
        return FakeResult(policy, data, self.n, reached, self.final_return,
                          [(self.n // 2, self.final_return / 2), (self.n, self.final_return)],
                          {"actor": policy.state_dict(), "step": torch.tensor(self.n)})


def test_target_return_hand_values():
    assert target_return("walker2d") == pytest.approx(1.629008 + 0.621 * (4592.3 - 1.629008))
    assert target_return("hopper", 50.0) == pytest.approx(-20.272305 + 0.5 * (3234.3 + 20.272305))


def test_collect_random_deterministic_and_in_bounds():
    a = collect_transitions(None, ENV_ID, 60, seed=1, max_episode_steps=10, progress=False)
    b = collect_transitions(None, ENV_ID, 60, seed=1, max_episode_steps=10, progress=False)
    c = collect_transitions(None, ENV_ID, 60, seed=2, max_episode_steps=10, progress=False)
    assert (a == b).all()
    assert not torch.equal(a["action"], c["action"])
    assert a["action"].abs().max() <= 1.0
    assert a["next", "done"][-1].item()


def test_collect_with_policy_uses_its_actions():
    policy = _policy()
    data = collect_transitions(policy, ENV_ID, 40, seed=0, progress=False)
    with torch.no_grad():
        expected = policy(TensorDict({"observation": data["observation"]}, [40]))["action"]
    torch.testing.assert_close(data["action"], expected.clamp(-1, 1))


def test_medium_reached_target(root):
    trainer = FakeTrainer(final_return=2000.0)
    res = generate_dataset("hopper", "medium", size=80, seed=0, max_env_steps=500, trainer=trainer,
                           progress=False)
    goal = target_return("hopper")
    assert trainer.calls == [dict(env_id=ENV_ID, target_return=pytest.approx(goal), max_env_steps=500,
                                  seed=0, algo="sac")]
    meta = json.loads((res.path / "torchrl_opt_metadata.json").read_text())
    assert meta["reached_target"] is True and meta["target_return"] == pytest.approx(goal)
    assert meta["target_score"] == pytest.approx(44.3)
    assert meta["final_eval_return"] == 2000.0 and meta["num_transitions"] == 80
    for key in ("gymnasium", "mujoco", "minari", "torch"):
        assert key in meta["versions"]
    ckpt = torch.load(res.path / "policy.pt", weights_only=True)
    assert torch.equal(ckpt["step"], torch.tensor(120))
    data = load_offline_data(res.dataset_id)
    assert data.shape[0] == 80
    # collected with the trained (fake) policy, seed + 1
    expected = collect_transitions(_policy(), ENV_ID, 80, seed=1, progress=False)
    assert torch.equal(data["action"], expected["action"])


def test_medium_below_target_raises_and_writes_nothing(root):
    trainer = FakeTrainer(final_return=100.0)
    with pytest.raises(TargetNotReachedError, match="did not reach"):
        generate_dataset("hopper", "medium", size=50, trainer=trainer, progress=False)
    assert not (root / "torchrl-opt" / "hopper" / "medium-n50-v0").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".torchrl-opt-staging")]


def test_medium_below_target_allowed_warns(root):
    trainer = FakeTrainer(final_return=100.0)
    with pytest.warns(RuntimeWarning, match="BELOW TARGET"):
        res = generate_dataset("hopper", "medium", size=50, trainer=trainer, progress=False,
                               allow_below_target=True)
    meta = json.loads((res.path / "torchrl_opt_metadata.json").read_text())
    assert meta["reached_target"] is False


def test_medium_replay_is_exactly_the_agent_transitions(root):
    trainer = FakeTrainer(final_return=5000.0, n_transitions=130)
    res = generate_dataset("hopper", "medium-replay", seed=4, trainer=trainer, progress=False)
    assert res.dataset_id == "torchrl-opt/hopper/medium-replay-seed4-v0"
    data = load_offline_data(res.dataset_id)
    src = trainer.transitions
    assert data.shape[0] == 130
    for key in ("observation", "action", ("next", "observation"), ("next", "reward"),
                ("next", "terminated")):
        assert torch.equal(data[key], src[key]), key
    # identical flags except the cut last step, closed as a truncation
    assert torch.equal(data["next", "truncated"][:-1], src["next", "truncated"][:-1])
    assert data["next", "truncated"][-1].item() or data["next", "terminated"][-1].item()


def test_expert_trains_without_target(root):
    trainer = FakeTrainer(final_return=3000.0)
    res = generate_dataset("hopper", "expert", size=30, trainer=trainer, progress=False,
                           max_env_steps=1000)
    assert trainer.calls[0]["target_return"] is None
    assert res.metadata["reached_target"] is None and res.num_transitions == 30


def test_overwrite_and_atomic_failure(root, monkeypatch):
    first = generate_dataset("hopper", "random", size=40, progress=False, author="first")
    with pytest.raises(DatasetExistsError):
        generate_dataset("hopper", "random", size=40, progress=False)
    before = load_offline_data(DatasetSpec(id_or_path=first.dataset_id, cache=False))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr("minari.create_dataset_from_buffers", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            generate_dataset("hopper", "random", size=40, seed=0, progress=False, overwrite=True)
    after = load_offline_data(DatasetSpec(id_or_path=first.dataset_id, cache=False))
    assert (before == after).all()  # the old dataset survived the failed overwrite
    assert not [p for p in root.iterdir() if p.name.startswith(".torchrl-opt-staging")]
    second = generate_dataset("hopper", "random", size=40, progress=False, overwrite=True,
                              author="second")
    meta = json.loads((second.path / "torchrl_opt_metadata.json").read_text())
    assert meta["author"] == "second"


def test_ensure_dataset_reuses_cache(root, monkeypatch):
    calls = []
    real = gen.generate_dataset

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "generate_dataset", counting)
    a = ensure_dataset("hopper", "random", size=30, seed=2, progress=False)
    b = ensure_dataset("hopper", "random", size=30, seed=2, progress=False)
    assert a == b == "torchrl-opt/hopper/random-n30-seed2-v0"
    assert len(calls) == 1
    meta_path = root / a / "torchrl_opt_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["seed"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetExistsError, match="built with"):
        ensure_dataset("hopper", "random", size=30, seed=2)


def test_non_mujoco_task_cannot_be_generated(root):
    with pytest.raises(gen.GenerationError, match="Minari"):
        generate_dataset("pen", "cloned")


def test_cli_module_entry_point(root):
    env = dict(os.environ, MINARI_DATASETS_PATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-m", "torchrl_opt.data.generate", "--task", "hopper", "--kind", "random",
         "--size", "50", "--seed", "1", "--max-episode-steps", "20", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0, proc.stderr
    assert "torchrl-opt/hopper/random-n50-seed1-v0" in proc.stdout
    data = load_offline_data("torchrl-opt/hopper/random-n50-seed1-v0")
    assert data.shape[0] == 50
    # second run without --overwrite fails cleanly
    again = gen.main(["--task", "hopper", "--kind", "random", "--size", "50", "--seed", "1",
                      "--no-progress"])
    assert again == 1

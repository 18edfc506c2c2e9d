"""Dataset generation: random collection, medium / medium-replay / expert logic with a fake
behaviour trainer, atomic writes, caching and the CLI."""

import concurrent.futures
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

    # a parallel job that found the dataset missing, generated it too and lost the race to move it
    # into place: generate_dataset refuses, and ensure_dataset returns the winner's dataset
    real_exists, first_look_misses = gen._dataset_exists, []

    def exists(dataset_id):  # ensure_dataset's first look misses it once per entry in the list
        return False if first_look_misses and first_look_misses.pop() else real_exists(dataset_id)

    monkeypatch.setattr(gen, "_dataset_exists", exists)
    first_look_misses.append(True)
    assert ensure_dataset("hopper", "random", size=30, seed=2, progress=False) == a
    assert len(calls) == 2  # it did try to generate

    meta_path = root / a / "torchrl_opt_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["seed"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetExistsError, match="built with"):
        ensure_dataset("hopper", "random", size=30, seed=2)
    first_look_misses.append(True)  # the race against a dataset built differently still fails
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


# --------------------------------------------------------------------------------------------
# Random policies and parallel (chunked) random collection
# --------------------------------------------------------------------------------------------

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from torchrl_opt.data.generate import (  # noqa: E402
    DEFAULT_CHUNK_STEPS,
    GenerationError,
    chunk_seeds,
    collect_random_transitions,
    generated_dataset_id,
    make_init_policy,
    resolve_workers,
)

# tiny runs: 6 chunks of >= 100 steps, Hopper episodes cut at 15 steps (terminals and timeouts)
N, CHUNK, LIMIT = 600, 100, 15


def _collect(random_policy="uniform", workers=2, seed=0, **kwargs):
    return collect_random_transitions(ENV_ID, N, seed, random_policy=random_policy, workers=workers,
                                      chunk_steps=CHUNK, max_episode_steps=LIMIT, progress=False,
                                      **kwargs)


@pytest.fixture(scope="module")
def runs():
    """Each configuration collected once for the whole module (3 process pools in all)."""
    return {
        ("uniform", 1): _collect("uniform", workers=1),
        ("uniform", 2): _collect("uniform", workers=2),
        ("uniform", 2, "again"): _collect("uniform", workers=2),
        ("uniform", 1, "seed1"): _collect("uniform", workers=1, seed=1),
        ("init", 1): _collect("init", workers=1),
        ("init", 2): _collect("init", workers=2),
    }


def _sequential_reference(seed: int) -> dict:
    """The documented scheme, written out with plain Gymnasium: chunk i resets with the words of
    SeedSequence(seed, spawn_key=(0, i)), samples uniform actions from the action space seeded with
    the second word, and collects whole episodes until it has >= its target steps; the chunks are
    concatenated and cut to N, the cut step marked truncated."""
    cols = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    targets = [CHUNK] * (N // CHUNK)
    env = gym.make(ENV_ID, max_episode_steps=LIMIT)
    for i, target in enumerate(targets):
        words = np.random.SeedSequence(seed, spawn_key=(0, i)).generate_state(3)
        env.action_space.seed(int(words[1]))
        obs, _ = env.reset(seed=int(words[0]))
        steps = 0
        while True:
            action = env.action_space.sample()
            nxt, rew, term, trunc, _ = env.step(action)
            for key, value in zip(cols, (obs, action, rew, nxt, term, trunc and not term)):
                cols[key].append(value)
            steps += 1
            if term or trunc:
                if steps >= target:
                    break
                obs, _ = env.reset()
            else:
                obs = nxt
    env.close()
    out = {k: np.asarray(v)[:N] for k, v in cols.items()}
    out["trunc"][-1] = out["trunc"][-1] or not out["term"][-1]
    return out


def test_resolve_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_workers(None) == resolve_workers(0) == min(cores, gen.MAX_AUTO_WORKERS)
    assert resolve_workers(1) == 1 and resolve_workers(5) == 5
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="workers"):
            resolve_workers(bad)


def test_chunk_seeds_are_seed_sequence_words():
    words = np.random.SeedSequence(7, spawn_key=(0, 3)).generate_state(3)
    assert chunk_seeds(7, 3) == tuple(int(w) for w in words)
    assert chunk_seeds(7, 3) != chunk_seeds(7, 4) != chunk_seeds(8, 4)


def test_parallel_random_data_identical_for_any_worker_count(runs):
    for policy in ("uniform", "init"):
        assert (runs[(policy, 1)] == runs[(policy, 2)]).all(), policy
    assert (runs[("uniform", 2)] == runs[("uniform", 2, "again")]).all()
    other = runs[("uniform", 1, "seed1")]
    assert not torch.equal(other["action"], runs[("uniform", 1)]["action"])
    assert not torch.equal(runs[("init", 1)]["action"], runs[("uniform", 1)]["action"])


def test_parallel_random_matches_sequential_reference(runs):
    data, ref = runs[("uniform", 2)], _sequential_reference(seed=0)
    assert data.shape == (N,)
    np.testing.assert_array_equal(data["observation"].numpy(), ref["obs"].astype(np.float32))
    np.testing.assert_array_equal(data["action"].numpy(), ref["act"].astype(np.float32))
    np.testing.assert_array_equal(data["next", "reward"].reshape(-1).numpy(),
                                  ref["rew"].astype(np.float32))
    np.testing.assert_array_equal(data["next", "observation"].numpy(), ref["next"].astype(np.float32))
    np.testing.assert_array_equal(data["next", "terminated"].reshape(-1).numpy(), ref["term"])
    np.testing.assert_array_equal(data["next", "truncated"].reshape(-1).numpy(), ref["trunc"])


def test_random_episode_structure_across_chunks(runs):
    data = runs[("init", 2)]
    term = data["next", "terminated"].reshape(-1).numpy()
    trunc = data["next", "truncated"].reshape(-1).numpy()
    assert not (term & trunc).any() and (term | trunc)[-1]
    ends = np.flatnonzero(term | trunc)
    lengths = np.diff(np.concatenate([[-1], ends]))
    # timeouts are truncations at exactly the time limit, never terminals (the last, cut episode
    # aside); terminations end episodes no longer than the limit
    assert (lengths[:-1][trunc[ends][:-1]] == LIMIT).all()
    assert (lengths[term[ends]] <= LIMIT).all() and term.any() and trunc[:-1].any()
    # contiguous inside episodes, a fresh reset after every done step
    inside = ~(term | trunc)[:-1]
    nxt, obs = data["next", "observation"].numpy(), data["observation"].numpy()
    np.testing.assert_array_equal(nxt[:-1][inside], obs[1:][inside])
    assert (np.abs(nxt[:-1][~inside] - obs[1:][~inside]).max(-1) > 0).all()
    # the episode index is the count of earlier done steps
    np.testing.assert_array_equal(data["episode"].numpy()[1:], np.cumsum((term | trunc)[:-1]))


def test_init_and_uniform_action_distributions(runs):
    """Closed forms: uniform on [-1, 1] has E[a^2] = 1/3; the freshly initialised actor samples
    a = tanh(loc + scale * eps) with loc ~ 0, scale ~ 1, so E[a^2] = E[tanh(Z)^2], Z ~ N(0, 1)."""
    from tensordict.nn import InteractionType, set_interaction_type

    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    tanh_sq = float((weights * np.tanh(nodes) ** 2).sum() / np.sqrt(2 * np.pi))  # 0.394
    uni, init = runs[("uniform", 1)]["action"], runs[("init", 1)]["action"]
    assert (uni ** 2).mean().item() == pytest.approx(1 / 3, abs=0.025)
    assert (init ** 2).mean().item() == pytest.approx(tanh_sq, abs=0.025)
    # the actions are samples of the saved actor's own TorchRL TanhNormal
    actor = make_init_policy(ENV_ID, 0, max_episode_steps=LIMIT)
    td = TensorDict({"observation": runs[("init", 1)]["observation"]}, [N])
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        actor(td)
        log_prob = actor.get_dist(td).log_prob(init)
    assert torch.isfinite(log_prob).all()
    assert (td["loc"].abs() < 0.05).all() and ((td["scale"] - 1).abs() < 0.05).all()
    eps = (torch.atanh(init.double()) - td["loc"]) / td["scale"]
    assert eps.mean().item() == pytest.approx(0.0, abs=0.1)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)


def test_make_init_policy_seeded_and_rng_neutral():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = (make_init_policy(ENV_ID, s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    pa, pb, pc = (dict(p.named_parameters()) for p in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    out = [v for k, v in pa.items() if v.shape == (6, 256)][0]  # loc and scale rows of Hopper
    assert out.abs().max() <= gen.INIT_OUTPUT_SCALE


class _RecordingPool(concurrent.futures.ProcessPoolExecutor):
    """A process pool that keeps every worker process it starts (to check they were joined)."""

    started: list = []

    def _spawn_process(self):
        super()._spawn_process()
        _RecordingPool.started.extend(p for p in self._processes.values() if p not in _RecordingPool.started)


def test_worker_error_surfaces_as_one_exception(monkeypatch):
    bad = make_init_policy(ENV_ID, 0)
    with torch.no_grad():
        [m for m in bad.modules() if isinstance(m, torch.nn.Linear)][-1].bias.fill_(float("nan"))
    # only this pool's workers (other tests' libraries may hold child processes of their own)
    monkeypatch.setattr(gen._futures, "ProcessPoolExecutor", _RecordingPool)
    monkeypatch.setattr(_RecordingPool, "started", [])
    # in parallel the first chunk to fail is the one reported (any chunk: all fail); alone, chunk 0
    for workers, chunk in ((2, r"\d+"), (1, "0")):
        with pytest.raises(GenerationError, match=rf"chunk {chunk} failed.*non-finite action"):
            _collect("init", workers=workers, policy=bad)
    workers = _RecordingPool.started
    assert workers, "the collection with workers=2 started a pool"
    assert all(not p.is_alive() and p.exitcode is not None for p in workers)  # the pool's workers were joined
    wrong = make_init_policy("Walker2d-v5", 0)  # 17-d observations: rejected before any worker
    with pytest.raises(GenerationError, match="cannot read"):
        _collect("init", workers=2, policy=wrong)


def test_random_policy_is_part_of_the_dataset_identity(root):
    uni = ensure_dataset("hopper", "random", size=40, progress=False)
    init = ensure_dataset("hopper", "random", size=40, progress=False, random_policy="init")
    assert uni == "torchrl-opt/hopper/random-n40-v0"
    assert init == "torchrl-opt/hopper/random-init-n40-v0"
    assert generated_dataset_id("hopper", "random", random_policy="init", seed=3) == \
        "torchrl-opt/hopper/random-init-seed3-v0"
    with pytest.raises(ValueError, match="only to kind 'random'"):
        ensure_dataset("hopper", "medium", random_policy="init")
    with pytest.raises(ValueError, match="random_policy must be one of"):
        ensure_dataset("hopper", "random", random_policy="gaussian")
    meta = json.loads((root / init / "torchrl_opt_metadata.json").read_text())
    assert meta["random_policy"] == "init" and meta["chunk_steps"] == DEFAULT_CHUNK_STEPS
    ckpt = torch.load(root / init / "policy.pt", weights_only=True)
    expected = make_init_policy(ENV_ID, 0).state_dict()
    assert all(torch.equal(ckpt["actor"][k], v) for k, v in expected.items())
    a = load_offline_data(DatasetSpec(id_or_path=uni, cache=False))
    b = load_offline_data(DatasetSpec(id_or_path=init, cache=False))
    assert a.shape == b.shape == (40,) and not torch.equal(a["action"], b["action"])
    # a cached dataset is never returned for the other policy (or a legacy, unrecorded one)
    for recorded in ("uniform", None):
        meta_path = root / init / "torchrl_opt_metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["random_policy"] = recorded
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(DatasetExistsError, match="built with"):
            ensure_dataset("hopper", "random", size=40, random_policy="init")


def test_cli_random_policy_and_workers(root):
    args = ["--task", "hopper", "--kind", "random", "--size", "30", "--no-progress"]
    assert gen.main(args + ["--random-policy", "init", "--workers", "1"]) == 0
    assert (root / "torchrl-opt/hopper/random-init-n30-v0" / "policy.pt").exists()
    assert gen.main(["--task", "hopper", "--kind", "medium", "--random-policy", "init",
                     "--no-progress"]) == 1
    with pytest.raises(SystemExit):
        gen.main(args + ["--random-policy", "gaussian"])

"""End-to-end tests of ``run(cfg)``: tiny runs of every backbone x {OPT, baseline} on CPU, exact
resume after a kill in every phase, checkpoint corruption/mismatch handling, offline-checkpoint
reuse and configuration validation.

The dataset (1500 hopper-random transitions) is generated once per session; every run uses
[32, 32] networks and a few dozen steps per phase, one intra-op thread (on a loaded 2-core machine
torch's thread pool stalls), and is instrumented from the outside (wrapped phase functions and step
functions) so that the checks count what actually ran rather than trusting the pipeline's own
bookkeeping.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import torchrl_opt.pipeline.context as ctxmod
from torchrl_opt.data.generate import ensure_dataset
from torchrl_opt.env_state import make_resumable_env
from torchrl_opt.envs import evaluate_policy
from torchrl_opt.objectives.spot import spot_lambda
from torchrl_opt.pipeline.agents import Agent
from torchrl_opt.pipeline.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
)
from torchrl_opt.pipeline.config import ConfigError, RunConfig, to_run_config
from torchrl_opt.pipeline.logging import RunLogger
from torchrl_opt.pipeline.run import RunResult, run
from torchrl_opt.schedules import KappaSchedule

DATA_SIZE = 1500
VAE_STEPS = 20
OFFLINE_STEPS = 20
N_TAU = 60
PRETRAIN_STEPS = 20
ENV_STEPS = 30
UTD = 2
EVAL_EVERY = 15
EVAL_EPISODES = 2
LOG_EVERY = 5
CHECKPOINT_EVERY = 10
KAPPA = {"init": 0.9, "end": 0.3, "t_decay": 20, "start": 5}
SPOT_COOLING_STEPS = 50

BACKBONES = ("td3", "spot", "iql")
METHODS = (True, False)  # use_q_on: OPT, vanilla fine-tuning baseline
FROZEN_PREFIXES = (
    "actor_network_params",
    "target_actor_network_params",
    "qvalue_off_network_params",
    "target_qvalue_off_network_params",
    "value_off_network_params",
)


# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari_pipeline")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ensure_dataset("hopper", "random", size=DATA_SIZE, seed=0, progress=False)
        yield root
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture(autouse=True)
def _single_thread_and_data(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(run_dir: Path, backbone: str = "td3", use_q_on: bool = True) -> RunConfig:
    cfg = RunConfig(seed=0, device="cpu", run_dir=str(run_dir), method="opt" if use_q_on else "vanilla")
    cfg.dataset.task, cfg.dataset.kind, cfg.dataset.size = "hopper", "random", DATA_SIZE
    cfg.backbone.name = backbone
    cfg.backbone.hidden = [32, 32]
    cfg.backbone.vae_hidden = [32, 32]
    cfg.backbone.vae_steps = VAE_STEPS
    cfg.backbone.spot_cooling_steps = SPOT_COOLING_STEPS
    cfg.offline.steps, cfg.offline.batch_size, cfg.offline.eval_every = OFFLINE_STEPS, 32, 10
    cfg.offline.normalize_observations = False  # (IQL's preset: on; the tests evaluate on raw envs)
    cfg.online_pretrain.n_tau = N_TAU
    cfg.online_pretrain.steps = PRETRAIN_STEPS
    cfg.online_pretrain.batch_size = 32
    cfg.finetune.env_steps, cfg.finetune.utd, cfg.finetune.batch_size = ENV_STEPS, UTD, 32
    k = cfg.finetune.kappa
    k.kind, k.init, k.end, k.t_decay, k.start = "linear", KAPPA["init"], KAPPA["end"], KAPPA["t_decay"], KAPPA["start"]
    cfg.eval.every, cfg.eval.episodes, cfg.eval.max_steps = EVAL_EVERY, EVAL_EPISODES, 30
    cfg.logging.log_every, cfg.logging.progress, cfg.logging.report = LOG_EVERY, False, False
    cfg.checkpoint.every, cfg.checkpoint.resume = CHECKPOINT_EVERY, True
    return cfg


@dataclass
class Record:
    """What the instrumentation saw during one ``run(cfg)``."""

    calls: dict[str, int] = field(default_factory=dict)
    pretrain_before: dict[str, torch.Tensor] | None = None
    pretrain_after: dict[str, torch.Tensor] | None = None
    kappa_per_update: list[float] = field(default_factory=list)
    finetune_online_rows: int | None = None
    collected_policy: dict[str, torch.Tensor] | None = None
    collected_data: Any = None


def _count(record: Record, name: str, fn):
    def wrapped(*args, **kwargs):
        record.calls[name] = record.calls.get(name, 0) + 1
        return fn(*args, **kwargs)

    return wrapped


def _loss_state(agent: Agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.finetune_loss.state_dict().items() if torch.is_tensor(v)}


def instrumented_run(cfg: RunConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[RunResult, Record]:
    """``run(cfg)`` with the phase loops and phase methods wrapped to count steps and take
    snapshots (what actually ran, not the pipeline's own bookkeeping)."""
    record = Record()
    loops = {name: getattr(ctxmod, name) for name in ("train_steps", "finetune")}
    methods = {name: getattr(ctxmod.Run, name) for name in ("pretrain", "collect")}

    def train_steps(updates, sample, steps, *, name, **kwargs):
        for spec in updates:
            spec.step = _count(record, f"{name}/{spec.name}", spec.step)
        return loops["train_steps"](updates, sample, steps, name=name, **kwargs)

    def finetune(updates, replay, *args, name, **kwargs):
        first = updates[0]
        inner = first.step
        agent = current[0].agents[0]

        def step(batch):
            record.kappa_per_update.append(float(agent.finetune_loss.kappa))
            return inner(batch)

        first.step = step
        for spec in updates:
            spec.step = _count(record, f"{name}/{spec.name}", spec.step)
        out = loops["finetune"](updates, replay, *args, name=name, **kwargs)
        record.finetune_online_rows = replay.num_online
        return out

    current: list = []

    def pretrain(self, phase, resume):
        current[:] = [self]
        record.pretrain_before = _loss_state(self.agents[0])
        methods["pretrain"](self, phase, resume)
        record.pretrain_after = _loss_state(self.agents[0])

    def collect(self, phase, resume):
        current[:] = [self]
        record.collected_policy = {k: v.detach().clone() for k, v in self.agents[0].actor.state_dict().items()}
        methods["collect"](self, phase, resume)
        record.collected_data = self.online_data.clone()

    original_finetune_parts = ctxmod.Run.finetune_parts

    def finetune_parts(self, *args, **kwargs):
        current[:] = [self]
        return original_finetune_parts(self, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(ctxmod, "train_steps", train_steps)
        mp.setattr(ctxmod, "finetune", finetune)
        mp.setattr(ctxmod.Run, "pretrain", pretrain)
        mp.setattr(ctxmod.Run, "collect", collect)
        mp.setattr(ctxmod.Run, "finetune_parts", finetune_parts)
        result = run(cfg)
    return result, record


_REFERENCE: dict[tuple[str, bool], tuple[RunResult, Record]] = {}


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reference_runs")


def reference_run(backbone: str, use_q_on: bool, root: Path, monkeypatch) -> tuple[RunResult, Record]:
    """The uninterrupted tiny run of ``(backbone, use_q_on)``, computed once per module."""
    key = (backbone, use_q_on)
    if key not in _REFERENCE:
        cfg = tiny_cfg(root / f"{backbone}-{'opt' if use_q_on else 'baseline'}", backbone, use_q_on)
        _REFERENCE[key] = instrumented_run(cfg, monkeypatch)
    return _REFERENCE[key]


def _read_csv(path: Path) -> list[tuple[int, float]]:
    with path.open() as handle:
        return [(int(step), float(value)) for step, value in csv.reader(handle)]


def _assert_series_close(actual, expected, rel: float) -> None:
    """Two ``[(step, value)]`` series: same steps, values equal to ``rel``."""
    assert [step for step, _ in actual] == [step for step, _ in expected]
    assert [value for _, value in actual] == pytest.approx([value for _, value in expected], rel=rel)


def _csv_dir(result: RunResult, cfg: RunConfig) -> Path:
    return result.run_dir / "logs" / "scalars"


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _agent_state(result: RunResult) -> dict[str, torch.Tensor]:
    return {k: v for k, v in result.agent.state_dict().items() if torch.is_tensor(v)}


def _assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"entries differ: {different[:5]}"


# ---------------------------------------------------------------------------------------------
# end-to-end runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_q_on", METHODS, ids=["opt", "baseline"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_end_to_end(backbone, use_q_on, reference_dir, monkeypatch):
    result, record = reference_run(backbone, use_q_on, reference_dir, monkeypatch)
    cfg = tiny_cfg(result.run_dir, backbone, use_q_on)
    history = result.history

    # --- every phase ran its configured number of steps (counted by the wrappers)
    if backbone == "spot":
        assert record.calls["vae/vae"] == VAE_STEPS
    else:
        assert "vae/vae" not in record.calls
    if backbone == "iql":
        for name in ("value", "actor", "qvalue"):
            assert record.calls[f"offline/{name}"] == OFFLINE_STEPS
            assert record.calls[f"finetune/{name}"] == ENV_STEPS * UTD
    else:
        delay = cfg.backbone.actor_delay
        assert record.calls["offline/critic"] == OFFLINE_STEPS
        assert record.calls["offline/actor"] == OFFLINE_STEPS // delay
        assert record.calls["finetune/critic"] == ENV_STEPS * UTD
        assert record.calls["finetune/actor"] == ENV_STEPS * UTD // delay
    assert record.collected_data.shape == (N_TAU,)
    assert record.finetune_online_rows == N_TAU + ENV_STEPS
    assert result.summary["updates"]["finetune"] == ENV_STEPS * UTD

    if use_q_on:
        assert record.calls["pretrain/pretrain"] == PRETRAIN_STEPS
        # --- online pre-training moved Q_on only: actor, Q_off (V_off) and targets bit-identical
        before, after = record.pretrain_before, record.pretrain_after
        frozen = [k for k in before if k.startswith(FROZEN_PREFIXES)]
        assert any(k.startswith("actor_network_params") for k in frozen)
        assert any(k.startswith("target_qvalue_off_network_params") for k in frozen)
        for k in frozen:
            assert torch.equal(before[k], after[k]), f"{k} moved during online pre-training"
        online = [k for k in before if k.startswith("qvalue_on_network_params")]
        assert online and any(not torch.equal(before[k], after[k]) for k in online)
        # --- kappa followed its schedule: the loss's buffer at every update, and the log
        schedule = KappaSchedule(KAPPA["init"], KAPPA["end"], KAPPA["t_decay"], KAPPA["start"])
        expected = [schedule.value(u // UTD + 1) for u in range(ENV_STEPS * UTD)]
        assert record.kappa_per_update == pytest.approx(expected, abs=1e-7)
        assert len(set(expected)) > 2  # ramp and plateau were both exercised
        for step, value in history["finetune/kappa"]:
            assert value == pytest.approx(schedule.value(step), abs=1e-7)
    else:
        assert "pretrain/pretrain" not in record.calls
        assert not any(k.startswith("pretrain/") for k in history)
        assert "finetune/kappa" not in history
        assert not any("_on" in k for k in history if k.startswith("finetune/"))

    if backbone == "spot":  # SPOT's lambda cooled once per fine-tuning env step
        resolved = result.summary["config"]["backbone"]  # the preset values the run used
        for step, value in history["finetune/spot_lambda"]:
            ref = spot_lambda(step, resolved["spot_lambda"], lambda_end=resolved["spot_lambda_end"],
                              cooling_steps=SPOT_COOLING_STEPS)
            assert value == pytest.approx(ref, rel=1e-6)

    # --- logging: every log_every steps; evaluation every eval.every steps and at the end
    log_steps = list(range(LOG_EVERY, ENV_STEPS + 1, LOG_EVERY))
    assert [s for s, _ in history["finetune/loss_actor"]] == log_steps
    assert [s for s, _ in history["eval/normalized_score"]] == [15, 30]
    assert [s for s, _ in history["offline_eval/normalized_score"]] == [10, 20]
    scalars = _csv_dir(result, cfg)
    for key in ("eval/normalized_score", "eval/return", "offline_eval/normalized_score", "finetune/loss_actor"):
        _assert_series_close(_read_csv(scalars / f"{key}.csv"), history[key], rel=1e-12)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["scores"] == [list(item) for item in history["eval/normalized_score"]]
    assert summary["final_normalized_score"] == history["eval/normalized_score"][-1][1]
    assert summary["config"]["backbone"]["name"] == backbone
    assert set(summary["updates_per_s"]) >= {"offline", "finetune"}
    assert all(v > 0 for v in summary["updates_per_s"].values())
    assert all(v > 0 for v in summary["wall_clock_s"].values())

    # --- the final evaluation is the mean over M deterministic episodes of the final policy
    env = make_resumable_env(result.summary["env_id"], seed=cfg.seed * 1_000_003 + ENV_STEPS + 1)
    returns = evaluate_policy(result.agent.policy, env, EVAL_EPISODES, max_steps=cfg.eval.max_steps)
    env.close()
    assert history["eval/return"][-1][1] == pytest.approx(float(returns.mean()), rel=1e-6)


def test_finished_run_is_not_rerun(reference_dir, monkeypatch):
    result, _ = reference_run("td3", True, reference_dir, monkeypatch)
    cfg = tiny_cfg(result.run_dir, "td3", True)
    before = _tree_digest(result.run_dir)
    monkeypatch.setattr(ctxmod, "train_steps", lambda *a, **k: pytest.fail("retrained"))
    again = run(cfg)
    assert again.history == result.history
    assert again.summary == json.loads(json.dumps(result.summary, default=str))
    _assert_states_equal(_agent_state(again), _agent_state(result))
    assert _tree_digest(result.run_dir) == before


# ---------------------------------------------------------------------------------------------
# resume equivalence
# ---------------------------------------------------------------------------------------------
class _Kill(Exception):
    """Stands for SIGKILL right after a checkpoint."""


def _kill_after_checkpoint(monkeypatch, phase: str, step: int) -> None:
    original = ctxmod.Run.save

    def save(self, ph, st, updates, **extra):
        original(self, ph, st, updates, **extra)
        if (ph, st) == (phase, step):
            raise _Kill(phase, step)

    monkeypatch.setattr(ctxmod.Run, "save", save)


# (backbone, use_q_on, phase killed, step of its checkpoint, checkpoint.every)
RESUME_CASES = [
    ("spot", True, "vae", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("spot", True, "offline", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("spot", True, "collect", N_TAU, CHECKPOINT_EVERY),  # right after collecting B_on
    ("td3", True, "collect", CHECKPOINT_EVERY, CHECKPOINT_EVERY),  # in the middle of collecting
    ("spot", True, "pretrain", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("spot", True, "finetune", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("iql", True, "finetune", 2 * CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("td3", True, "pretrain", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    ("td3", False, "finetune", CHECKPOINT_EVERY, CHECKPOINT_EVERY),
    # checkpoint.every=0: only phase ends are checkpointed; 7 does not divide the phase lengths
    ("td3", True, "offline", OFFLINE_STEPS, 0),
    ("iql", True, "pretrain", PRETRAIN_STEPS, 7),
]


@pytest.mark.parametrize(
    "backbone,use_q_on,phase,step,every", RESUME_CASES,
    ids=[f"{b}-{'opt' if q else 'baseline'}-{p}{s}-every{e}" for b, q, p, s, e in RESUME_CASES],
)
def test_resume_reproduces_uninterrupted_run(
    backbone, use_q_on, phase, step, every, reference_dir, tmp_path, monkeypatch
):
    """Kill right after a checkpoint of ``phase``, rerun: metrics and final weights are exactly
    those of the uninterrupted reference (whose checkpoint cadence is ``CHECKPOINT_EVERY``, so
    this also shows that checkpointing does not perturb a run)."""
    reference, _ = reference_run(backbone, use_q_on, reference_dir, monkeypatch)
    cfg = tiny_cfg(tmp_path / "run", backbone, use_q_on)
    cfg.checkpoint.every = every
    with monkeypatch.context() as mp:
        _kill_after_checkpoint(mp, phase, step)
        with pytest.raises(_Kill):
            run(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (state["phase"], state["step"]) == (phase, step)

    resumed = run(cfg)
    assert resumed.history == reference.history  # losses, kappa, lambda, eval returns: exact
    _assert_states_equal(_agent_state(resumed), _agent_state(reference))
    for key in ("scores", "final_normalized_score", "updates"):
        assert resumed.summary[key] == reference.summary[key]


def test_kill_between_checkpoints_leaves_no_duplicate_log_rows(reference_dir, tmp_path, monkeypatch):
    """A kill after rows were logged past the last checkpoint: the resumed CSV files equal the
    uninterrupted run's (rows after the checkpoint are rewritten, not appended twice)."""
    reference, _ = reference_run("td3", True, reference_dir, monkeypatch)
    cfg = tiny_cfg(tmp_path / "run", "td3", True)
    original = RunLogger.log

    def log(self, metrics, step, prefix=""):
        values = original(self, metrics, step, prefix)
        if prefix == "eval" and step == EVAL_EVERY:  # fine-tuning step 15: checkpointed at 10
            raise _Kill(prefix, step)
        return values

    with monkeypatch.context() as mp:
        mp.setattr(RunLogger, "log", log)
        with pytest.raises(_Kill):
            run(cfg)
    killed_scalars = _csv_dir(reference, cfg).relative_to(reference.run_dir)
    partial = _read_csv(tmp_path / "run" / killed_scalars / "finetune" / "loss_actor.csv")
    assert [s for s, _ in partial] == [5, 10, 15]
    resumed = run(cfg)
    assert resumed.history == reference.history
    ref_dir, new_dir = _csv_dir(reference, cfg), _csv_dir(resumed, cfg)
    ref_files = sorted(p.relative_to(ref_dir) for p in ref_dir.rglob("*.csv"))
    assert ref_files == sorted(p.relative_to(new_dir) for p in new_dir.rglob("*.csv"))
    for rel in ref_files:
        assert (new_dir / rel).read_text() == (ref_dir / rel).read_text(), rel


# ---------------------------------------------------------------------------------------------
# corrupt, mismatched and reused checkpoints
# ---------------------------------------------------------------------------------------------
def _copy_run(reference: RunResult, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(reference.run_dir, target)
    return target


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error_and_destroys_nothing(damage, reference_dir, tmp_path, monkeypatch):
    reference, _ = reference_run("td3", True, reference_dir, monkeypatch)
    run_dir = _copy_run(reference, tmp_path)
    path = run_dir / "checkpoint.pt"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    before = _tree_digest(run_dir)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        run(tiny_cfg(run_dir, "td3", True))
    assert not isinstance(info.value, CheckpointMismatchError)
    assert "checkpoint.resume=false" in str(info.value)
    assert _tree_digest(run_dir) == before


@pytest.mark.parametrize(
    "change,entry",
    [
        (lambda c: setattr(c, "seed", 1), "seed"),
        (lambda c: setattr(c.backbone, "name", "iql"), "backbone"),
        (lambda c: setattr(c, "env_id", "Hopper-v4"), "env_id"),
        (lambda c: setattr(c.finetune, "utd", 3), "finetune"),
    ],
    ids=["seed", "backbone", "env", "utd"],
)
def test_mismatched_checkpoint_names_the_difference(change, entry, reference_dir, tmp_path, monkeypatch):
    reference, _ = reference_run("td3", True, reference_dir, monkeypatch)
    run_dir = _copy_run(reference, tmp_path)
    before = _tree_digest(run_dir)
    cfg = tiny_cfg(run_dir, "td3", True)
    change(cfg)
    with pytest.raises(CheckpointMismatchError, match=entry):
        run(cfg)
    assert _tree_digest(run_dir) == before


def test_resume_false_starts_afresh(reference_dir, tmp_path, monkeypatch):
    """``checkpoint.resume=false`` ignores (and overwrites) a foreign checkpoint and old logs."""
    reference, _ = reference_run("td3", False, reference_dir, monkeypatch)
    run_dir = _copy_run(reference, tmp_path)
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    cfg = tiny_cfg(run_dir, "td3", False)
    cfg.checkpoint.resume = False
    result = run(cfg)
    assert result.history == reference.history
    csv_rows = _read_csv(_csv_dir(result, cfg) / "eval" / "normalized_score.csv")
    _assert_series_close(csv_rows, reference.history["eval/normalized_score"], rel=1e-12)


def test_missing_offline_checkpoint_is_a_config_error(tmp_path):
    cfg = tiny_cfg(tmp_path / "run")
    cfg.offline.checkpoint = str(tmp_path / "nowhere" / "offline.pt")
    with pytest.raises(ConfigError, match="offline.checkpoint"):
        run(cfg)


def test_offline_checkpoint_is_reused(reference_dir, tmp_path, monkeypatch):
    reference, ref_record = reference_run("spot", True, reference_dir, monkeypatch)
    offline_pt = reference.run_dir / "offline.pt"
    saved = load_checkpoint(offline_pt)
    assert saved["meta"]["backbone"]["name"] == "spot"
    for use_q_on in (True, False):
        cfg = tiny_cfg(tmp_path / f"reuse-{use_q_on}", "spot", use_q_on)
        cfg.offline.checkpoint = str(offline_pt)
        result, record = instrumented_run(cfg, monkeypatch)
        assert "vae/vae" not in record.calls and not any(k.startswith("offline/") for k in record.calls)
        assert not any(k.startswith(("offline", "vae")) for k in result.history)
        # the same offline policy collected B_on, so B_on is the same too
        _assert_states_equal(record.collected_policy, ref_record.collected_policy)
        assert (record.collected_data == ref_record.collected_data).all()
        assert result.summary["updates"]["finetune"] == ENV_STEPS * UTD


def test_offline_checkpoint_of_another_backbone_is_refused(reference_dir, tmp_path, monkeypatch):
    reference, _ = reference_run("spot", True, reference_dir, monkeypatch)
    cfg = tiny_cfg(tmp_path / "run", "td3", True)
    cfg.offline.checkpoint = str(reference.run_dir / "offline.pt")
    with pytest.raises(CheckpointMismatchError, match="backbone"):
        run(cfg)


def test_offline_checkpoint_of_another_dataset_is_refused(reference_dir, tmp_path, monkeypatch):
    """``offline.pt`` records the dataset's SHA-256: fine-tuning it on other data (here another
    generation seed, same name and size) is refused before anything is trained or written."""
    reference, _ = reference_run("td3", True, reference_dir, monkeypatch)
    cfg = tiny_cfg(tmp_path / "run", "td3", True)
    cfg.offline.checkpoint = str(reference.run_dir / "offline.pt")
    cfg.dataset.generation_seed = 1
    with pytest.raises(CheckpointMismatchError, match="dataset_hash"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_corrupt_offline_checkpoint(tmp_path):
    path = tmp_path / "offline.pt"
    path.write_bytes(b"\x80\x02not a zip")
    cfg = tiny_cfg(tmp_path / "run")
    cfg.offline.checkpoint = str(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        run(cfg)


# ---------------------------------------------------------------------------------------------
# configuration validation
# ---------------------------------------------------------------------------------------------
BAD_VALUES = [
    ("finetune.utd", 0),
    ("finetune.utd", "3"),
    ("backbone.name", "sac"),
    ("backbone.hidden", []),
    ("backbone.tau", 0.0),
    ("backbone.expectile", 1.0),
    ("finetune.kappa.init", 1.5),
    ("finetune.kappa.kind", "cosine"),
    ("finetune.replay", "prioritized"),
    ("online_pretrain.mode", "maml"),
    ("online_pretrain.order", 3),
    ("offline.steps", -1),
    ("eval.episodes", 0),
    ("logging.backend", "mlflow"),
    ("dataset.source", "s3"),
    ("checkpoint.every", -5),
    ("device", "tpu:0"),
    ("seed", True),
]


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_bad_config_value_names_the_key(key, value, tmp_path):
    cfg = tiny_cfg(tmp_path / "run")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_config_dependencies_are_checked(tmp_path):
    cfg = tiny_cfg(tmp_path / "run")
    cfg.online_pretrain.n_tau = 0
    with pytest.raises(ConfigError, match="online_pretrain.n_tau"):
        run(cfg)
    cfg = tiny_cfg(tmp_path / "run")
    cfg.finetune.kappa.kind = "preset"
    cfg.dataset.kind = "no-such-kind"
    with pytest.raises(ConfigError, match="dataset.kind='no-such-kind' is not a hopper dataset"):
        run(cfg)


def test_dict_config_unknown_or_unconvertible_key():
    with pytest.raises(ConfigError, match=r"finetune\.utdd"):
        to_run_config({"finetune": {"utdd": 3}})
    with pytest.raises(ConfigError, match=r"finetune\.utd"):
        to_run_config({"finetune": {"utd": "many"}})
    cfg = to_run_config({"finetune": {"utd": 3}, "backbone": {"hidden": [8, 8]}})
    assert isinstance(cfg, RunConfig) and cfg.finetune.utd == 3 and cfg.backbone.hidden == [8, 8]


@pytest.mark.parametrize("backbone", ["td3", "iql"])
def test_functional_steps_reproduce_the_default_pipeline(tmp_path, backbone):
    """``acceleration.functional`` (torch.func gradient + tensor Adam) is the same maths as the
    default ``torch.optim`` steps: a whole tiny run logs the same history."""
    reference = run(tiny_cfg(tmp_path / "default", backbone))
    cfg = tiny_cfg(tmp_path / "functional", backbone)
    cfg.acceleration.functional = True
    functional = run(cfg)
    assert functional.history.keys() == reference.history.keys()
    for key, series in reference.history.items():
        _assert_series_close(functional.history[key], series, rel=1e-5)


@pytest.mark.parametrize("backbone", ["td3", "iql"])
def test_direct_env_stepping_reproduces_torchrl_collectors(tmp_path, backbone):
    """``acceleration.direct_env`` (the default where supported) steps the Gymnasium env directly:
    a whole run logs exactly the history of the run stepped by TorchRL's Collector and rollouts."""
    cfg = tiny_cfg(tmp_path / "torchrl", backbone)
    cfg.acceleration.direct_env = False
    reference = run(cfg)
    cfg = tiny_cfg(tmp_path / "direct", backbone)
    cfg.acceleration.direct_env = True
    direct = run(cfg)
    assert direct.history == reference.history
    _assert_states_equal(_agent_state(direct), _agent_state(reference))


def test_prefetching_runs_resume_exactly(tmp_path, monkeypatch):
    """``finetune.prefetch_action``: the prefetched action goes through the checkpoint, so a killed
    run resumes to the uninterrupted run's metrics exactly; it is refused without direct stepping."""
    def cfg_at(path):
        cfg = tiny_cfg(path, "td3", True)
        cfg.finetune.prefetch_action = True
        return cfg

    reference = run(cfg_at(tmp_path / "reference"))
    default = run(tiny_cfg(tmp_path / "default", "td3", True))
    assert reference.history["finetune/loss_actor"] != default.history["finetune/loss_actor"]
    cfg = cfg_at(tmp_path / "run")
    with monkeypatch.context() as mp:
        _kill_after_checkpoint(mp, "finetune", CHECKPOINT_EVERY)
        with pytest.raises(_Kill):
            run(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["pending_action"].shape == (3,)
    resumed = run(cfg)
    assert resumed.history == reference.history
    bad = cfg_at(tmp_path / "bad")
    bad.acceleration.direct_env = False
    with pytest.raises(ConfigError, match="prefetch_action"):
        run(bad)


@pytest.mark.parametrize("phase,step", [("pretrain", CHECKPOINT_EVERY), ("finetune", CHECKPOINT_EVERY)])
def test_functional_steps_resume_exactly(phase, step, tmp_path, monkeypatch):
    """FunctionalAdam's state goes through the same checkpoints: a killed functional run resumes
    to the uninterrupted functional run's metrics exactly."""
    def cfg_at(path):
        cfg = tiny_cfg(path, "td3", True)
        cfg.acceleration.functional = True
        return cfg

    reference = run(cfg_at(tmp_path / "reference"))
    cfg = cfg_at(tmp_path / "run")
    with monkeypatch.context() as mp:
        _kill_after_checkpoint(mp, phase, step)
        with pytest.raises(_Kill):
            run(cfg)
    resumed = run(cfg)
    assert resumed.history == reference.history


def test_adaptive_kappa_moves_with_the_critics_and_resumes_exactly(tmp_path, monkeypatch):
    """``finetune.kappa.kind=adaptive``: kappa is logged, changes during fine-tuning, and a killed
    run resumes to the uninterrupted run's history exactly (the averages are checkpointed)."""
    def cfg_at(path):
        cfg = tiny_cfg(path, "td3", True)
        k = cfg.finetune.kappa
        k.kind, k.init, k.adaptive_min, k.adaptive_max, k.adaptive_rate = "adaptive", 0.5, 0.05, 0.95, 0.2
        return cfg

    reference = run(cfg_at(tmp_path / "reference"))
    kappas = [v for _, v in reference.history["finetune/kappa"]]
    assert len(set(kappas)) > 1 and all(0.05 <= v <= 0.95 for v in kappas)
    errors = reference.history["finetune/kappa_error_off"], reference.history["finetune/kappa_error_on"]
    for (_, e_off), (_, e_on), k in zip(*errors, kappas):
        assert k == pytest.approx(min(max(e_off / (e_off + e_on), 0.05), 0.95), rel=1e-4)
    cfg = cfg_at(tmp_path / "run")
    with monkeypatch.context() as mp:
        _kill_after_checkpoint(mp, "finetune", CHECKPOINT_EVERY)
        with pytest.raises(_Kill):
            run(cfg)
    assert run(cfg).history == reference.history
    group = cfg_at(tmp_path / "group")
    group.seeds = [0, 1]
    with pytest.raises(ConfigError, match="adaptive"):
        run(group)


def test_zero_finetune_steps_takes_no_env_step(tmp_path):
    """``finetune.env_steps=0`` stops after online pre-training: no fine-tuning transition, no update."""
    cfg = tiny_cfg(tmp_path, "td3", True)
    cfg.finetune.env_steps = 0
    result = run(cfg)
    assert result.summary["updates"]["finetune"] == 0
    assert not any(key.startswith("finetune/") for key in result.history)


# ---------------------------------------------------------------------------------------------
# evaluation settings of the dataset (Minari's eval_env_spec, as AntMaze datasets carry it)
# ---------------------------------------------------------------------------------------------
def dict_hopper(offset: float = 0.0):
    """Hopper-v5 with AntMaze-shaped dict observations: ``achieved_goal`` (2, shifted by
    ``offset``), ``observation`` (9), ``desired_goal`` (2, ``offset``)."""
    import gymnasium as gym
    import numpy as np

    spaces = {k: gym.spaces.Box(-np.inf, np.inf, (n,), np.float64)
              for k, n in (("achieved_goal", 2), ("observation", 9), ("desired_goal", 2))}
    return gym.wrappers.TransformObservation(
        gym.make("Hopper-v5"),
        lambda o: {"achieved_goal": o[:2] + offset, "observation": o[2:], "desired_goal": np.full(2, offset)},
        gym.spaces.Dict(spaces),
    )


def test_evaluation_uses_the_datasets_eval_env_spec(tmp_path):
    """An AntMaze-shaped dataset (dict observations flattened as [achieved_goal, observation])
    whose Minari metadata hold an evaluation env spec with other settings: training envs are
    built from the env id, evaluation envs from that spec, both flattened like the data."""
    import gymnasium as gym
    import minari
    import numpy as np
    from minari.data_collector import EpisodeBuffer

    from torchrl_opt.env_state import find_resumable_env
    from torchrl_opt.pipeline.run import build_run

    if "TestDictHopper-v0" not in gym.registry:
        gym.register("TestDictHopper-v0", entry_point="test_pipeline:dict_hopper", max_episode_steps=1000)
    eval_spec = dataclasses.replace(gym.spec("TestDictHopper-v0"), kwargs={"offset": 5.0})
    env = dict_hopper()
    rng = np.random.default_rng(0)
    n = 300
    obs = {k: rng.standard_normal((n + 1, s.shape[0])) for k, s in env.observation_space.spaces.items()}
    buffer = EpisodeBuffer(id=0, observations=obs, actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                           rewards=rng.standard_normal(n), terminations=np.zeros(n, bool),
                           truncations=np.r_[np.zeros(n - 1, bool), True])
    minari.create_dataset_from_buffers(
        "test/dicthopper/umaze-v0", [buffer], env="TestDictHopper-v0", eval_env=eval_spec,
        algorithm_name="test", author="test", author_email="test", code_permalink="test",
        description="AntMaze-shaped test data",
    )
    cfg = tiny_cfg(tmp_path / "run", "td3", False)
    cfg.dataset.task, cfg.dataset.kind, cfg.dataset.source = "antmaze", "umaze", "local_minari"
    cfg.dataset.id, cfg.env_id = "test/dicthopper/umaze-v0", "TestDictHopper-v0"
    run_obj = build_run(cfg)
    train_env, eval_env = run_obj.envs.make(7), run_obj.envs.make(7, train=False)
    assert find_resumable_env(train_env).spec.kwargs.get("offset", 0.0) == 0.0
    assert find_resumable_env(eval_env).spec.kwargs["offset"] == 5.0
    first_train, first_eval = train_env.reset()["observation"], eval_env.reset()["observation"]
    assert first_train.shape == first_eval.shape == (11,)  # [achieved_goal, observation]
    torch.testing.assert_close(first_eval[:2] - first_train[:2], torch.full((2,), 5.0))
    torch.testing.assert_close(first_eval[2:], first_train[2:])
    result = run_obj.evaluate(0)
    assert result["return"].shape == (1,) and "value_bias/q_off" in result

"""``run(cfg)``: one OPT (or baseline) run from data to summary, resumable at any point.

Order of work: load (or generate) the offline dataset, build env and agent, then

1. offline pre-training (or load ``offline.checkpoint``), saved to ``<run_dir>/offline.pt``;
2. ``N_tau`` steps of the frozen offline policy into ``B_on`` (for baselines too, so every method
   gets ``N_tau + finetune.env_steps`` online interactions), then online pre-training of Q_on when
   ``finetune.use_q_on``;
3. fine-tuning with the chosen replay strategy and kappa schedule;

and write ``<run_dir>/summary.json``. ``<run_dir>/checkpoint.pt`` is rewritten atomically every
``checkpoint.every`` steps of any phase; rerunning the same configuration resumes from it and
produces the same metrics as an uninterrupted run (same seed, same device).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import ObservationNorm, RewardScaling

from torchrl_opt.data.datasets import (
    DatasetSpec,
    SpaceMismatchError,
    dataset_metadata,
    get_dataset_entry,
    load_offline_data,
)
from torchrl_opt.data.generate import ensure_dataset
from torchrl_opt.data.replay import TRANSITION_KEYS, DensityRatioEstimator, make_replay
from torchrl_opt.data.scores import normalized_score
from torchrl_opt.env_state import (
    env_restore_on_next_reset,
    env_snapshot,
    make_resumable_env,
)
from torchrl_opt.envs import evaluate_policy
from torchrl_opt.objectives.meta import META_MODES
from torchrl_opt.pipeline.agents import BACKBONES, Agent, UpdateSpec, make_agent, seeded_init
from torchrl_opt.pipeline.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    check_fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from torchrl_opt.pipeline.config import (
    ConfigError,
    RunConfig,
    check_types,
    to_run_config,
)
from torchrl_opt.pipeline.logging import LOGGER_BACKENDS, RunLogger
from torchrl_opt.pipeline.phases import (
    DensityRatioUpdater,
    collect_online,
    finetune,
    make_step_collector,
    pretrain_online,
    train_offline,
    train_vae,
)
from torchrl_opt.pipeline.updates import GRAPH_BACKENDS
from torchrl_opt.schedules import (
    KappaSchedule,
    UnknownKappaPresetError,
    kappa_preset,
    kappa_preset_config,
)

__all__ = [
    "ConfigError",
    "PreparedData",
    "RunResult",
    "init_seed",
    "prepare_data",
    "resolve_device",
    "run",
]

PHASES = ("vae", "offline", "pretrain", "finetune", "done")
#: what :func:`init_seed` derives initialisation seeds for (order fixes the derived seeds).
INIT_PURPOSES = ("online_critics", "density_ratio")
_CHECKPOINT_KEYS = (
    "fingerprint", "phase", "step", "agent", "optimizers", "rng", "history", "wall_clock",
    "updates_done",
)
REPLAYS = ("balanced", "symmetric", "online", "uniform")
KAPPA_KINDS = ("preset", "linear", "constant")
DATASET_SOURCES = ("generated", "minari", "local_minari", "d4rl_hdf5")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(repr=False)
    agent: Agent = field(repr=False)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available")
    return device


def validate(cfg: RunConfig) -> None:
    """Reject unknown types and out-of-domain values before any work, naming the offending key.

    Raises:
        ConfigError: the first bad entry, e.g. ``finetune.utd must be >= 1, got 0``.
    """
    check_types(cfg)
    choices = [
        ("backbone.name", cfg.backbone.name, BACKBONES),
        ("finetune.replay", cfg.finetune.replay, REPLAYS),
        ("finetune.kappa.kind", cfg.finetune.kappa.kind, KAPPA_KINDS),
        ("online_pretrain.mode", cfg.online_pretrain.mode, META_MODES),
        ("online_pretrain.order", cfg.online_pretrain.order, (1, 2)),
        ("dataset.source", cfg.dataset.source, DATASET_SOURCES),
        ("logging.backend", cfg.logging.backend, LOGGER_BACKENDS),
        ("acceleration.graph_backend", cfg.acceleration.graph_backend, GRAPH_BACKENDS),
    ]
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    non_negative = [
        ("seed", cfg.seed),
        ("dataset.generation_seed", cfg.dataset.generation_seed),
        ("backbone.vae_steps", cfg.backbone.vae_steps),
        ("offline.steps", cfg.offline.steps),
        ("offline.eval_every", cfg.offline.eval_every),
        ("online_pretrain.n_tau", cfg.online_pretrain.n_tau),
        ("online_pretrain.steps", cfg.online_pretrain.steps),
        ("finetune.env_steps", cfg.finetune.env_steps),
        ("finetune.kappa.t_decay", cfg.finetune.kappa.t_decay),
        ("finetune.kappa.start", cfg.finetune.kappa.start),
        ("eval.every", cfg.eval.every),
        ("logging.log_every", cfg.logging.log_every),
        ("checkpoint.every", cfg.checkpoint.every),
        ("acceleration.warmup", cfg.acceleration.warmup),
        ("acceleration.env_threads", cfg.acceleration.env_threads),
    ]
    for key, value in non_negative:
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    positive = [
        ("dataset.size", cfg.dataset.size),
        ("backbone.actor_delay", cfg.backbone.actor_delay),
        ("backbone.spot_cooling_steps", cfg.backbone.spot_cooling_steps),
        ("finetune.utd", cfg.finetune.utd),
        ("eval.episodes", cfg.eval.episodes),
        ("eval.max_steps", cfg.eval.max_steps),
        ("offline.batch_size", cfg.offline.batch_size),
        ("finetune.batch_size", cfg.finetune.batch_size),
        ("online_pretrain.batch_size", cfg.online_pretrain.batch_size),
        ("backbone.actor_lr", cfg.backbone.actor_lr),
        ("backbone.critic_lr", cfg.backbone.critic_lr),
        ("backbone.value_lr", cfg.backbone.value_lr),
        ("backbone.vae_lr", cfg.backbone.vae_lr),
        ("online_pretrain.lr", cfg.online_pretrain.lr),
        ("online_pretrain.alpha", cfg.online_pretrain.alpha),
        ("finetune.density_lr", cfg.finetune.density_lr),
        ("finetune.temperature", cfg.finetune.temperature),
        ("backbone.temperature", cfg.backbone.temperature),
        ("backbone.policy_noise", cfg.backbone.policy_noise),
        ("backbone.noise_clip", cfg.backbone.noise_clip),
    ]
    for key, value in positive:
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    for key, value in [("backbone.hidden", cfg.backbone.hidden), ("backbone.vae_hidden", cfg.backbone.vae_hidden)]:
        if not value or any(width < 1 for width in value):
            raise ConfigError(f"{key} must be a non-empty list of positive widths, got {value}")
    unit_closed = [
        ("backbone.tau", cfg.backbone.tau, False),
        ("backbone.gamma", cfg.backbone.gamma, False),
        ("backbone.spot_lambda_end", cfg.backbone.spot_lambda_end, True),
        ("finetune.kappa.init", cfg.finetune.kappa.init, True),
        ("finetune.kappa.end", cfg.finetune.kappa.end, True),
    ]
    for key, value, zero_ok in unit_closed:
        if not ((0 <= value if zero_ok else 0 < value) and value <= 1):
            interval = "[0, 1]" if zero_ok else "(0, 1]"
            raise ConfigError(f"{key} must lie in {interval}, got {value}")
    if not 0 < cfg.backbone.expectile < 1:
        raise ConfigError(f"backbone.expectile must lie in (0, 1), got {cfg.backbone.expectile}")
    for key, value in [
        ("backbone.bc_alpha", cfg.backbone.bc_alpha),
        ("backbone.online_bc_alpha", cfg.backbone.online_bc_alpha),
        ("backbone.exploration_noise", cfg.backbone.exploration_noise),
        ("backbone.spot_lambda", cfg.backbone.spot_lambda),
        ("backbone.vae_beta", cfg.backbone.vae_beta),
    ]:
        if value is not None and value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    validate_seeds(cfg)
    if cfg.finetune.prefetch_action and cfg.acceleration.direct_env is False:
        raise ConfigError(
            "finetune.prefetch_action=true needs direct env stepping, but "
            "acceleration.direct_env=false"
        )
    if cfg.finetune.replay == "online" and cfg.online_pretrain.n_tau == 0:
        raise ConfigError("finetune.replay='online' needs online_pretrain.n_tau > 0 to start sampling")
    if cfg.finetune.use_q_on and cfg.online_pretrain.steps > 0 and cfg.online_pretrain.n_tau == 0:
        raise ConfigError(
            "online_pretrain.n_tau must be > 0 when online_pretrain.steps > 0 and "
            "finetune.use_q_on: online pre-training samples B_on"
        )
    if cfg.dataset.source == "d4rl_hdf5" and not cfg.dataset.path:
        raise ConfigError("dataset.source='d4rl_hdf5' needs dataset.path")
    if cfg.offline.checkpoint is not None:
        for seed in cfg.seeds if cfg.seeds is not None else [cfg.seed]:
            path = offline_checkpoint_path(cfg, seed)
            if not Path(path).is_file():
                raise ConfigError(
                    f"offline.checkpoint={cfg.offline.checkpoint!r}: no such file {path!r} (point "
                    "it at the offline.pt of a finished run, with {seed} standing for the seed, or "
                    "leave it unset to train offline)"
                )
    if cfg.finetune.use_q_on and cfg.finetune.kappa.kind == "preset":
        try:
            kappa_preset_config(cfg.dataset.task, cfg.dataset.kind)
        except UnknownKappaPresetError as err:
            raise ConfigError(
                f"finetune.kappa.kind='preset' but there is no preset for "
                f"{cfg.dataset.task}/{cfg.dataset.kind}: set finetune.kappa.kind to 'linear' or "
                f"'constant' ({err})"
            ) from err
    try:
        resolve_device(cfg.device)
    except (RuntimeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"device={cfg.device!r} is not a valid torch device: {err}") from err


def offline_checkpoint_path(cfg: RunConfig, seed: int) -> str | None:
    """``offline.checkpoint`` of seed ``seed``: ``{seed}`` in the path stands for the seed (one
    offline checkpoint per seed of a sweep or a seed-batched run); ``None`` when unset."""
    path = cfg.offline.checkpoint
    if path is None or "{seed}" not in path:
        return path
    return path.replace("{seed}", str(seed))


def validate_seeds(cfg: RunConfig) -> None:
    """Check ``cfg.seeds`` (``None``, or distinct non-negative seeds for a seed-batched run)."""
    if cfg.seeds is None:
        return
    seeds = list(cfg.seeds)
    if not seeds:
        raise ConfigError("seeds=[] lists no seed: give at least one, or seeds=null for one run of seed")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} lists a seed twice")
    if cfg.system != "opt":
        raise ConfigError(
            f"seeds={seeds} batches the seeds of the OPT pipeline (system=opt); system="
            f"{cfg.system!r} runs one seed per process: sweep it with -m seed=..."
        )


def _fingerprint(cfg: RunConfig, env_id: str) -> dict[str, Any]:
    """Configuration entries a resumed run must share with the checkpoint it resumes."""
    as_dict = dataclasses.asdict(cfg)
    return json.loads(
        json.dumps(
            {
                "seed": cfg.seed,
                "env_id": env_id,
                "dataset": as_dict["dataset"],
                "backbone": as_dict["backbone"],
                "offline": {k: v for k, v in as_dict["offline"].items() if k != "eval_every"},
                "online_pretrain": as_dict["online_pretrain"],
                "finetune": as_dict["finetune"],
            }
        )
    )


def _experiment_name(cfg: RunConfig) -> str:
    method = "opt" if cfg.finetune.use_q_on else "baseline"
    return f"{cfg.dataset.task}-{cfg.dataset.kind}-{cfg.backbone.name}-{method}-s{cfg.seed}"


def load_dataset(cfg: RunConfig, device: torch.device) -> tuple[TensorDictBase, str, tuple | None]:
    """Offline data on ``device``, the env id, and the dataset's own reference scores (or None)."""
    ds = cfg.dataset
    entry = get_dataset_entry(ds.task, ds.kind)
    if ds.source == "generated":
        dataset_id = ensure_dataset(
            ds.task, ds.kind, size=ds.size, seed=ds.generation_seed, progress=cfg.logging.progress
        )
        spec = DatasetSpec("local_minari", dataset_id, device=str(device))
    elif ds.source in ("minari", "local_minari"):
        spec = DatasetSpec(ds.source, ds.id or entry.minari_id, device=str(device))
    elif ds.source == "d4rl_hdf5":
        if not ds.path:
            raise ConfigError("dataset.source='d4rl_hdf5' needs dataset.path")
        spec = DatasetSpec("d4rl_hdf5", ds.path, env_id=cfg.env_id or entry.env_id, device=str(device))
    else:
        raise ConfigError(
            f"dataset.source={ds.source!r} is not one of ('generated', 'minari', 'local_minari', 'd4rl_hdf5')"
        )
    data = load_offline_data(spec).select(*TRANSITION_KEYS)
    if ds.reward_shift != 0.0:
        data.set(("next", "reward"), data.get(("next", "reward")) + ds.reward_shift)
    meta = dataset_metadata(spec)
    ref = None
    if meta.ref_min_score is not None and meta.ref_max_score is not None:
        ref = (meta.ref_min_score, meta.ref_max_score)
    return data, cfg.env_id or meta.env_id or entry.env_id, ref


def _collector_checkpoint(
    collector: Any, env_snapshots: Callable[[], Any], state: dict | None
) -> Callable[[], dict[str, Any]]:
    """Restore a prefetching collector's pending action from ``state``; return the function that
    gives a checkpoint's collector entries (``env`` snapshots, and ``pending_action``)."""
    prefetching = getattr(collector, "prefetch", False)
    if prefetching and state is not None:
        collector.set_pending_action(state["pending_action"])

    def entries() -> dict[str, Any]:
        out: dict[str, Any] = {"env": env_snapshots()}
        if prefetching:
            out["pending_action"] = collector.pending_action()
        return out

    return entries


def _write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, default=str)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _tensordict_state(td: TensorDictBase) -> dict:
    return {"data": td.to_dict(), "batch_size": list(td.batch_size)}


def _tensordict_from_state(state: dict, device: torch.device) -> TensorDictBase:
    return TensorDict(state["data"], batch_size=state["batch_size"]).to(device)


def init_seed(seed: int, purpose: str) -> int:
    """The seed of one network initialisation of run ``seed`` (``purpose`` in :data:`INIT_PURPOSES`).

    Networks created after training has started (the online critics when fine-tuning is set up, the
    density-ratio estimator) are initialised from these seeds (see
    :func:`~torchrl_opt.pipeline.agents.seeded_init`), so seed ``s`` gets the same initial networks
    whether it runs alone or batched with other seeds (:mod:`torchrl_opt.pipeline.seeds`). Derived
    with NumPy's ``SeedSequence`` (independent streams per purpose).
    """
    if purpose not in INIT_PURPOSES:
        raise ValueError(f"unknown initialisation purpose {purpose!r}; known: {INIT_PURPOSES}")
    sequence = np.random.SeedSequence(int(seed), spawn_key=(INIT_PURPOSES.index(purpose),))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class PreparedData:
    """The offline data of a run, on its device, with what was derived from them.

    ``obs_loc``/``obs_scale`` are the observation statistics when ``offline.normalize_observations``
    (then ``data`` is already normalised), else ``None``.
    """

    data: TensorDictBase
    env_id: str
    ref_scores: tuple | None
    obs_loc: torch.Tensor | None = None
    obs_scale: torch.Tensor | None = None


def prepare_data(cfg: RunConfig, device: torch.device) -> PreparedData:
    """Load (or generate) the offline data of ``cfg`` on ``device`` and normalise observations
    when ``cfg.offline.normalize_observations`` (``(x - mean) / (std + 1e-3)``, dataset statistics)."""
    data, env_id, ref_scores = load_dataset(cfg, device)
    prepared = PreparedData(data, env_id, ref_scores)
    if cfg.offline.normalize_observations:
        obs = data["observation"]
        prepared.obs_loc = obs.mean(0)
        prepared.obs_scale = obs.std(0) + 1e-3
        for key in ("observation", ("next", "observation")):
            data.set(key, (data.get(key) - prepared.obs_loc) / prepared.obs_scale)
    return prepared


class RunContext:
    """The state of one run; methods are the phase transitions. Kept private: use :func:`run`.

    ``prepared`` passes offline data loaded once for several runs (the seeds of
    :mod:`torchrl_opt.pipeline.seeds`); by default the run loads its own.
    """

    def __init__(self, cfg: RunConfig, prepared: PreparedData | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        experiment = cfg.logging.experiment or _experiment_name(cfg)
        self.run_dir = Path(cfg.run_dir or Path(cfg.logging.dir) / experiment)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.offline_path = self.run_dir / "offline.pt"

        prepared = prepared if prepared is not None else prepare_data(cfg, self.device)
        self.data, self.env_id, self.ref_scores = prepared.data, prepared.env_id, prepared.ref_scores
        self.obs_loc, self.obs_scale = prepared.obs_loc, prepared.obs_scale
        probe = self.make_env(seed=cfg.seed, train=False)
        obs_dim = probe.observation_spec["observation"].shape[-1]
        if obs_dim != self.data["observation"].shape[-1]:
            raise SpaceMismatchError(
                f"{self.env_id} observations have {obs_dim} dims, the dataset's "
                f"{self.data['observation'].shape[-1]}"
            )
        if probe.action_spec.shape[-1] != self.data["action"].shape[-1]:
            raise SpaceMismatchError(
                f"{self.env_id} actions have {probe.action_spec.shape[-1]} dims, the dataset's "
                f"{self.data['action'].shape[-1]}"
            )
        self.agent = make_agent(cfg.backbone, obs_dim, probe.action_spec, self.device, cfg.acceleration)
        probe.close()
        self.logger = RunLogger(
            cfg.logging.backend, self.run_dir, experiment, progress=cfg.logging.progress
        )
        self.fingerprint = _fingerprint(cfg, self.env_id)
        self.wall_clock: dict[str, float] = {}
        self.updates_done: dict[str, int] = {}
        self.online_data: TensorDictBase | None = None

    # ------------------------------------------------------------------ env & evaluation
    def make_env(self, seed: int, *, train: bool = True):
        """The task's env (observation normalisation applied); ``train`` envs also get the
        dataset's reward shift, evaluation envs report raw returns for the normalised score."""
        env = make_resumable_env(self.env_id, seed=seed)
        if train and self.cfg.dataset.reward_shift != 0.0:
            env.append_transform(RewardScaling(loc=self.cfg.dataset.reward_shift, scale=1.0))
        if self.obs_loc is not None:
            env.append_transform(
                ObservationNorm(
                    loc=self.obs_loc.cpu(), scale=self.obs_scale.cpu(), in_keys=["observation"],
                    standard_normal=True,
                )
            )
        return env

    def evaluate(self, step: int) -> dict[str, float]:
        """Deterministic returns of ``eval.episodes`` episodes on an env seeded by ``step``."""
        env = self.make_env(seed=self.cfg.seed * 1_000_003 + step + 1, train=False)
        returns = evaluate_policy(
            self.agent.policy, env, self.cfg.eval.episodes, max_steps=self.cfg.eval.max_steps,
            direct=self.cfg.acceleration.direct_env,
        )
        env.close()
        mean_return = float(returns.mean())
        score = normalized_score(self.cfg.dataset.task, mean_return, ref=self.ref_scores)
        return {"return": mean_return, "normalized_score": float(score)}

    # ------------------------------------------------------------------ checkpoints
    #: entries every checkpoint of this kind of run holds (checked when resuming).
    checkpoint_keys = _CHECKPOINT_KEYS

    def save(self, phase: str, step: int, updates: list[UpdateSpec], **extra: Any) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "phase": phase,
            "step": step,
            **self.model_state(),
            "optimizers": {spec.name: spec.optimizer.state_dict() for spec in updates},
            "rng": rng_state(*self.generators()),
            "wall_clock": dict(self.wall_clock),
            "updates_done": dict(self.updates_done),
            **extra,
        }
        if self.online_data is not None:
            state["online_data"] = _tensordict_state(self.online_data)
        save_checkpoint(self.checkpoint_path, state)

    def model_state(self) -> dict[str, Any]:
        """The checkpoint entries of the agent and the logged history."""
        return {
            "agent": self.agent.state_dict(),
            "history": {k: list(v) for k, v in self.logger.history.items()},
        }

    def load_model_state(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])

    def restore_histories(self, state: dict | None) -> None:
        """Reset the logged history (and CSV files) to ``state``'s, or to empty for a fresh run."""
        self.logger.restore_history(state["history"] if state is not None else {})

    def check_checkpoint(self, state: dict) -> None:
        """Checks of a loaded checkpoint beyond its keys and fingerprint (none for one run)."""

    def generators(self) -> list[torch.Generator]:
        """The generators a checkpoint saves and restores (with torch's global RNG)."""
        return [self.generator]

    def load(self) -> dict | None:
        """The run's checkpoint when resuming (``None`` for a fresh start), checked against the
        configuration; the logger's history (and CSV files) are reset to the checkpoint's.

        Tensors are loaded on the CPU (RNG states must be CPU byte tensors) and copied to the
        device by the ``load_state_dict`` calls of :meth:`restore`. Nothing on disk is modified
        before the checkpoint has loaded and matched.
        """
        if not (self.cfg.checkpoint.resume and self.checkpoint_path.exists()):
            self.restore_histories(None)
            return None
        hint = (
            " Set checkpoint.resume=false (or use another run_dir) to start this run afresh; "
            "the files in the run directory were left untouched."
        )
        try:
            state = load_checkpoint(self.checkpoint_path, map_location="cpu")
            check_fingerprint(state, self.fingerprint, self.checkpoint_path)
            missing = [k for k in self.checkpoint_keys if k not in state]
            if missing or state["phase"] not in PHASES:
                raise CheckpointError(
                    f"Checkpoint {self.checkpoint_path} lacks entries {missing} or has an unknown "
                    f"phase {state.get('phase')!r}"
                )
            self.check_checkpoint(state)
        except CheckpointError as err:
            raise type(err)(f"{err}.{hint}") from err
        self.restore_histories(state)
        self.wall_clock.update(state["wall_clock"])
        self.updates_done.update(state["updates_done"])
        if "online_data" in state:
            self.online_data = _tensordict_from_state(state["online_data"], self.device)
        return state

    def restore(self, state: dict, updates: list[UpdateSpec]) -> None:
        """Load agent, optimisers and RNGs (call after every object of the phase exists)."""
        self.load_model_state(state)
        for spec in updates:
            spec.optimizer.load_state_dict(state["optimizers"][spec.name])
        set_rng_state(state["rng"], *self.generators())

    def restore_finished(self, state: dict) -> RunResult:
        """Load the final agent of a finished run (its fine-tuning loss included); its result."""
        if not (self.run_dir / "summary.json").is_file():
            raise CheckpointError(
                f"{self.checkpoint_path} marks the run finished but {self.run_dir / 'summary.json'} "
                "is missing"
            )
        self.build_finetune_loss(self.initial_kappa())
        self.agent.load_state_dict(state["agent"])
        summary = json.loads((self.run_dir / "summary.json").read_text())
        return RunResult(self.run_dir, summary, dict(self.logger.history), self.agent)

    def finish(self) -> RunResult:
        """Write ``summary.json``, mark the run done in its checkpoint; the run's result."""
        summary = self.summary()
        _write_json_atomic(self.run_dir / "summary.json", summary)
        self.save("done", 0, [])
        self.logger.close_phase()
        return RunResult(self.run_dir, summary, dict(self.logger.history), self.agent)

    def _checkpoint_every(self) -> int:
        return self.cfg.checkpoint.every

    def _save_phase_end(self, phase: str, steps: int, updates: list[UpdateSpec]) -> None:
        """Checkpoint the end of a phase unless the periodic checkpoint just did."""
        every = self._checkpoint_every()
        if every == 0 or steps % every != 0:
            self.save(phase, steps, updates)

    # ------------------------------------------------------------------ phases
    def offline_phase(self, state: dict | None) -> None:
        cfg = self.cfg
        if cfg.offline.checkpoint:
            self.load_offline_phase()
            return
        if state is not None and PHASES.index(state["phase"]) > PHASES.index("offline"):
            return  # the agent's state comes with the later phase's checkpoint
        start_phase = state["phase"] if state is not None else "vae"
        if self.agent.vae is not None and start_phase == "vae":
            vae = self.vae_update_spec()
            start = 0
            if state is not None:
                self.restore(state, [vae])
                start = state["step"]
            t0 = time.perf_counter()
            train_vae(
                vae.step, self.data, cfg.backbone.vae_steps, cfg.offline.batch_size,
                generator=self.batch_generator, logger=self.logger,
                log_every=cfg.logging.log_every, start=start,
                on_checkpoint=lambda step: self.save("vae", step, [vae]),
                checkpoint_every=self._checkpoint_every(),
            )
            self.wall_clock["vae"] = self.wall_clock.get("vae", 0.0) + time.perf_counter() - t0
            self.updates_done["vae"] = cfg.backbone.vae_steps
            self._save_phase_end("vae", cfg.backbone.vae_steps, [vae])
            state = None
        updates = self.offline_update_specs()
        start = 0
        if state is not None and state["phase"] == "offline":
            self.restore(state, updates)
            start = state["step"]
        t0 = time.perf_counter()
        train_offline(
            self.agent, updates, self.data, cfg.offline.steps, cfg.offline.batch_size,
            generator=self.batch_generator, logger=self.logger, evaluate=self.evaluate,
            log_every=cfg.logging.log_every, eval_every=cfg.offline.eval_every, start=start,
            on_checkpoint=lambda step: self.save("offline", step, updates),
            checkpoint_every=self._checkpoint_every(),
        )
        self.wall_clock["offline"] = self.wall_clock.get("offline", 0.0) + time.perf_counter() - t0
        self.updates_done["offline"] = cfg.offline.steps
        self._save_phase_end("offline", cfg.offline.steps, updates)
        self.save_offline_phase()

    # ------------------------------------------------------------------ what the phases build
    # One run builds these for its agent; a seed-batched run (pipeline.seeds.SeedGroup) overrides
    # them to build the same things for all its seeds at once.
    @property
    def batch_generator(self) -> torch.Generator | list[torch.Generator]:
        """The generator(s) of uniform offline / pre-training batches (see ``sample_uniform``)."""
        return self.generator

    def load_offline_phase(self) -> None:
        """Load ``offline.checkpoint`` instead of training offline."""
        self._load_offline_checkpoint(offline_checkpoint_path(self.cfg, self.cfg.seed))

    def save_offline_phase(self) -> None:
        """Write ``offline.pt`` (reusable as ``offline.checkpoint``)."""
        self._save_offline_checkpoint()

    def vae_update_spec(self) -> UpdateSpec:
        return self.agent.vae_update()

    def offline_update_specs(self) -> list[UpdateSpec]:
        return self.agent.offline_updates()

    def build_finetune_losses(self, kappa: KappaSchedule | None) -> None:
        self.build_finetune_loss(kappa)

    def pretrain_update_spec(self) -> UpdateSpec:
        return self.agent.pretrain_update(self.cfg.online_pretrain)

    def finetune_update_specs(self) -> list[UpdateSpec]:
        return self.agent.finetune_updates()

    def collect_online_data(self) -> None:
        """``B_on``: ``n_tau`` steps of the frozen offline policy (env seed ``seed + 1``)."""
        env = self.make_env(seed=self.cfg.seed + 1)
        t0 = time.perf_counter()
        self.online_data = collect_online(
            env, self.agent.policy, self.cfg.online_pretrain.n_tau, device=self.device,
            logger=self.logger, direct=self.cfg.acceleration.direct_env,
        )
        env.close()
        self.wall_clock["collect"] = time.perf_counter() - t0

    def make_finetune_replay(self):
        """The fine-tuning replay over ``B_off`` and the online capacity of the whole run."""
        cfg, ft = self.cfg, self.cfg.finetune
        # check_priorities=False: validating priorities costs a host sync per update
        return make_replay(
            ft.replay, self.data, cfg.online_pretrain.n_tau + ft.env_steps, ft.batch_size,
            device=self.device, seed=cfg.seed, check_priorities=False,
        )

    def make_finetune_density(self):
        """Balanced replay's density-ratio updater (``None`` for the other strategies)."""
        return self.make_density_updater() if self.cfg.finetune.replay == "balanced" else None

    def attach_kappa(self, kappa: KappaSchedule) -> None:
        kappa.attach(self.agent.finetune_loss.kappa)

    def penalty_step(self) -> Callable[[], Any] | None:
        """SPOT's per-env-step lambda cooling (``None`` without a steppable actor penalty)."""
        penalty = getattr(self.agent.finetune_loss, "actor_penalty", None)
        return penalty.step if penalty is not None and hasattr(penalty, "step") else None

    def make_finetune_collector(
        self, state: dict | None
    ) -> tuple[Any, Callable[[], dict[str, Any]]]:
        """The fine-tuning collector (env seed ``seed + 2``, restored from ``state`` when
        resuming) and a function returning what a checkpoint stores of it: ``{"env": snapshot}``,
        and the prefetched action with ``finetune.prefetch_action``."""
        env = self.make_env(seed=self.cfg.seed + 2)
        if state is not None:
            env_restore_on_next_reset(env, state["env"])
        collector = make_step_collector(
            env, self.agent.exploration_policy(), device=self.device,
            direct=self.cfg.acceleration.direct_env, prefetch=self.cfg.finetune.prefetch_action,
        )
        return collector, _collector_checkpoint(collector, lambda: env_snapshot(env), state)

    def _offline_meta(self) -> dict[str, Any]:
        return json.loads(json.dumps({
            "env_id": self.env_id,
            "backbone": dataclasses.asdict(self.cfg.backbone),
            "obs_dim": self.agent.obs_dim,
            "action_dim": self.agent.action_dim,
            "normalize_observations": self.cfg.offline.normalize_observations,
        }))

    def _save_offline_checkpoint(self) -> None:
        state = {
            "meta": self._offline_meta(),
            "offline_loss": self.agent.offline_loss.state_dict(),
            "vae": self.agent.vae.state_dict() if self.agent.vae is not None else {},
        }
        if self.obs_loc is not None:
            state["obs_loc"], state["obs_scale"] = self.obs_loc, self.obs_scale
        save_checkpoint(self.offline_path, state)

    def _load_offline_checkpoint(self, path: str) -> None:
        """Load a finished offline phase (``offline.pt``) instead of training it.

        Raises:
            CheckpointError: for a missing, corrupt or malformed file.
            CheckpointMismatchError: when it was trained for another env, backbone or spaces.
        """
        state = load_checkpoint(path, map_location="cpu")
        missing = [k for k in ("meta", "offline_loss", "vae") if k not in state]
        if missing:
            raise CheckpointError(f"Offline checkpoint {path} lacks entries {missing}")
        expected = self._offline_meta()
        differences = {k: (state["meta"].get(k), v) for k, v in expected.items() if state["meta"].get(k) != v}
        if differences:
            raise CheckpointMismatchError(
                f"Offline checkpoint {path} does not match this run: "
                + ", ".join(f"{k}: checkpoint={a!r} run={b!r}" for k, (a, b) in differences.items())
            )
        self.agent.offline_loss.load_state_dict(state["offline_loss"])
        if self.agent.vae is not None:
            self.agent.vae.load_state_dict(state["vae"])
        if self.obs_loc is not None:
            self.obs_loc = state["obs_loc"].to(self.device)
            self.obs_scale = state["obs_scale"].to(self.device)

    def initial_kappa(self) -> KappaSchedule | None:
        cfg = self.cfg.finetune
        if not cfg.use_q_on:
            return None
        if cfg.kappa.kind == "preset":
            return kappa_preset(self.cfg.dataset.task, self.cfg.dataset.kind, start_step=cfg.kappa.start)
        if cfg.kappa.kind == "constant":
            return KappaSchedule.constant(cfg.kappa.init)
        return KappaSchedule(cfg.kappa.init, cfg.kappa.end, cfg.kappa.t_decay, cfg.kappa.start)

    def build_finetune_loss(self, kappa: KappaSchedule | None):
        """The agent's fine-tuning loss (kappa at its schedule's start), the online critics
        initialised from :func:`init_seed` ``(seed, "online_critics")``."""
        return self.agent.build_finetune_loss(
            use_q_on=self.cfg.finetune.use_q_on,
            kappa=kappa.value(0) if kappa is not None else 0.0,
            init_seed=init_seed(self.cfg.seed, "online_critics"),
        )

    def make_density_estimator(self) -> DensityRatioEstimator:
        """Balanced replay's density-ratio network, initialised from :func:`init_seed`
        ``(seed, "density_ratio")``."""
        cfg = self.cfg
        with seeded_init(init_seed(cfg.seed, "density_ratio")):
            estimator = DensityRatioEstimator(
                self.agent.obs_dim, self.agent.action_dim, tuple(cfg.backbone.hidden),
                temperature=cfg.finetune.temperature,
            )
        return estimator.to(self.device)

    def make_density_updater(self) -> DensityRatioUpdater:
        """:meth:`make_density_estimator` with its Adam (``finetune.density_lr``)."""
        estimator = self.make_density_estimator()
        return DensityRatioUpdater(
            estimator,
            torch.optim.Adam(estimator.parameters(), lr=self.cfg.finetune.density_lr),
            self.cfg.finetune.batch_size,
        )

    def online_phases(self, state: dict | None) -> None:
        cfg = self.cfg
        kappa = self.initial_kappa()
        self.build_finetune_losses(kappa)
        phase = state["phase"] if state is not None else "pretrain"
        if phase in ("vae", "offline"):
            state, phase = None, "pretrain"
        if phase == "pretrain":
            pretraining = cfg.finetune.use_q_on and cfg.online_pretrain.steps > 0
            if self.online_data is None and cfg.online_pretrain.n_tau > 0:
                self.collect_online_data()
                if pretraining:
                    self.save("pretrain", 0, [self.pretrain_update_spec()])
            if pretraining:
                pretrain = self.pretrain_update_spec()
                start = 0
                if state is not None:
                    self.restore(state, [pretrain])
                    start = state["step"]
                t0 = time.perf_counter()
                pretrain_online(
                    pretrain.step, self.data, self.online_data, cfg.online_pretrain.steps,
                    cfg.online_pretrain.batch_size, generator=self.batch_generator,
                    logger=self.logger, log_every=cfg.logging.log_every, start=start,
                    on_checkpoint=lambda step: self.save("pretrain", step, [pretrain]),
                    checkpoint_every=self._checkpoint_every(),
                )
                self.wall_clock["pretrain"] = (
                    self.wall_clock.get("pretrain", 0.0) + time.perf_counter() - t0
                )
                self.updates_done["pretrain"] = cfg.online_pretrain.steps
                self._save_phase_end("pretrain", cfg.online_pretrain.steps, [pretrain])
            state = None
        self.finetune_phase(state, kappa)

    def finetune_phase(self, state: dict | None, kappa: KappaSchedule | None) -> None:
        cfg = self.cfg
        ft = cfg.finetune
        updates = self.finetune_update_specs()
        replay = self.make_finetune_replay()
        if self.online_data is not None:
            replay.extend(self.online_data)
        density = self.make_finetune_density()
        if kappa is not None:
            self.attach_kappa(kappa)
        collector, collector_state = self.make_finetune_collector(state)
        start, update_count = 0, 0
        if state is not None:
            # restore after the collector exists: its construction may draw random numbers
            self.restore(state, updates)
            # in place into the storage built above (keeps its device)
            replay.load_state_dict(state["replay"])
            if kappa is not None:
                kappa.load_state_dict(state["kappa"])
                kappa.write()
            if density is not None:
                density.load_state_dict(state["density"])
            start, update_count = state["step"], state["update_count"]

        def on_checkpoint(step: int, n_updates: int) -> None:
            extra = {
                "update_count": n_updates,
                "replay": replay.state_dict(),
                **collector_state(),
            }
            if kappa is not None:
                extra["kappa"] = kappa.state_dict()
            if density is not None:
                extra["density"] = density.state_dict()
            self.save("finetune", step, updates, **extra)

        t0 = time.perf_counter()
        done = finetune(
            self.agent, updates, replay, collector, ft.env_steps, ft.utd,
            kappa=kappa, density=density, logger=self.logger, evaluate=self.evaluate,
            log_every=cfg.logging.log_every, eval_every=cfg.eval.every, start=start,
            update_count=update_count, on_checkpoint=on_checkpoint,
            checkpoint_every=self._checkpoint_every(), step_penalty=self.penalty_step(),
        )
        collector.shutdown()
        self.wall_clock["finetune"] = self.wall_clock.get("finetune", 0.0) + time.perf_counter() - t0
        self.updates_done["finetune"] = done

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        history = self.logger.history
        scores = history.get("eval/normalized_score", [])
        offline_scores = history.get("offline_eval/normalized_score", [])
        updates_per_s = {
            phase: self.updates_done[phase] / seconds
            for phase, seconds in self.wall_clock.items()
            if phase in self.updates_done and seconds > 0
        }
        return {
            "config": dataclasses.asdict(self.cfg),
            "env_id": self.env_id,
            "device": str(self.device),
            "final_normalized_score": scores[-1][1] if scores else None,
            "best_normalized_score": max(v for _, v in scores) if scores else None,
            "offline_normalized_score": offline_scores[-1][1] if offline_scores else None,
            "scores": scores,
            "wall_clock_s": self.wall_clock,
            "updates": self.updates_done,
            "updates_per_s": updates_per_s,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def run(cfg: RunConfig | Any) -> RunResult:
    """Run the whole pipeline for ``cfg`` (a :class:`RunConfig`, a Hydra config or a dict).

    ``cfg.system`` other than ``"opt"`` runs that seed system (RLPD, RLPD+OPT, WSRL, PORL) from
    :mod:`torchrl_opt.pipeline.baselines` on the same data, evaluation, logging and checkpoints.
    ``cfg.seeds`` (a list) trains those seeds together in this process and returns a
    :class:`~torchrl_opt.pipeline.seeds.SeedGroupResult` (see :mod:`torchrl_opt.pipeline.seeds`).
    """
    cfg = to_run_config(cfg)
    validate_seeds(cfg)
    if cfg.system != "opt":
        from torchrl_opt.pipeline.baselines import BASELINE_METHODS, run_baseline

        if cfg.system not in BASELINE_METHODS:
            raise ConfigError(
                f"system={cfg.system!r} is not one of {('opt', *BASELINE_METHODS)}"
            )
        return run_baseline(cfg, dataclasses.replace(cfg.baseline, method=cfg.system))
    if cfg.seeds is not None:
        from torchrl_opt.pipeline.seeds import SeedGroup

        context = SeedGroup(cfg)
    else:
        context = RunContext(cfg)
    state = context.load()
    if state is not None and state["phase"] == "done":
        return context.restore_finished(state)
    context.offline_phase(state)
    if state is not None and state["phase"] in ("vae", "offline"):
        state = None
    context.online_phases(state)
    return context.finish()

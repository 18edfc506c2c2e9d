"""The run object: one run of a plan over ``S >= 1`` seeds.

:class:`Run` holds what each seed owns (:class:`Member`: its agent, batch generator, logger and
output directory) and what the run shares (the offline data, the environments' factory, the update
engine, ``B_on``, the replay, one checkpoint). Its phase methods (:meth:`Run.train`,
:meth:`Run.collect`, :meth:`Run.pretrain`, :meth:`Run.finetune`, and the structural
:meth:`Run.start_online`, :meth:`Run.load_offline`, :meth:`Run.save_offline`) build what a loop of
:mod:`~torchrl_opt.pipeline.phases` needs for all seeds, restore it when resuming, run the loop and
checkpoint it. A single run is ``S = 1`` of the same code; what must differ for speed (no vmap for
one seed: the update engine, the policies, the collectors) is chosen by the factories in
:mod:`~torchrl_opt.pipeline.updates` and :mod:`~torchrl_opt.pipeline.acting`.

What each seed keeps of its own, exactly as a run of that seed alone: its networks' initialisation
(``torch.manual_seed(seed)`` before its agent is built, :func:`init_seed` for networks created
later), its batch generator, its replay sampler's generator, its environments (collection
``seed + 1``, fine-tuning ``seed + 2``, evaluation ``seed * 1_000_003 + step + 1``) and its outputs
(``<run_dir>`` for one seed, ``<run_dir>/seed<s>/`` in a group: CSV logs, ``offline.pt``,
``summary.json``). What seeds share: the offline data, kappa and SPOT's lambda (functions of the
environment step), and torch's global RNG, from which noise inside the updates and exploration noise
are drawn for all seeds at once; so a group is reproducible and statistically equivalent to single
runs, and reproduces them to float rounding without noise.

``<run_dir>/checkpoint.pt`` (format :data:`~torchrl_opt.pipeline.checkpoint.FORMAT_VERSION`) is
rewritten atomically every ``checkpoint.every`` steps of any phase and at phase ends; rerunning the
same configuration resumes it exactly (a checkpoint of another version, method or configuration is
refused, naming the difference, before anything is written) and a finished run returns its summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from torchrl_opt.analysis.report import write_run_report
from torchrl_opt.data.datasets import (
    TASKS,
    DatasetSpec,
    SpaceMismatchError,
    dataset_metadata,
    get_dataset_entry,
    load_offline_data,
)
from torchrl_opt.data.generate import ensure_dataset
from torchrl_opt.data.replay import (
    OPTIONAL_TRANSITION_KEYS,
    TRANSITION_KEYS,
    DensityRatioEstimator,
    make_replay,
)
from torchrl_opt.data.returns import discounted_return_to_go, monte_carlo_returns
from torchrl_opt.data.scores import normalized_score
from torchrl_opt.data.seed_replay import make_seed_batched_replay
from torchrl_opt.env_state import env_restore_on_next_reset, env_snapshot
from torchrl_opt.objectives.density import DensityRatioLoss
from torchrl_opt.pipeline.acting import EnvFactory, Policies, make_collector, rollout_episodes
from torchrl_opt.pipeline.agents import Agent, make_agent, seeded_init
from torchrl_opt.pipeline.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    check_fingerprint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
)
from torchrl_opt.pipeline.config import RunConfig, offline_checkpoint_path, resolve_device
from torchrl_opt.pipeline.logging import GroupLogger, RunLogger
from torchrl_opt.pipeline.phases import collect, finetune, sample_uniform, train_steps
from torchrl_opt.pipeline.updates import UpdateDef, UpdateEngine, UpdateSpec
from torchrl_opt.schedules import AdaptiveKappa, KappaSchedule, kappa_preset

__all__ = [
    "DensityStep", "FinetuneParts", "Member", "Run", "RunResult", "SeedResult", "init_seed", "load_dataset",
    "seeds_label", "value_bias",
]

#: what :func:`init_seed` derives initialisation seeds for (the order fixes the derived seeds).
INIT_PURPOSES = ("online_critics", "density_ratio", "online_batches", "online_rng")
#: longest seed list spelled out in a run-directory name (longer lists become a digest).
MAX_SEEDS_IN_NAME = 60
#: the configuration sections a method's plan reads beyond the shared ones (its fingerprint).
METHOD_SECTIONS = {
    "rlpd": ("rlpd",), "rlpd_offline": ("rlpd",), "rlpd_opt": ("rlpd",), "wsrl": ("wsrl",),
    "porl": ("porl",),
}


def init_seed(seed: int, purpose: str) -> int:
    """The seed of one network initialisation of seed ``seed`` (``purpose`` in :data:`INIT_PURPOSES`).

    Networks created after training has started (the online critics, the density-ratio estimator)
    are initialised from these seeds (:func:`~torchrl_opt.pipeline.agents.seeded_init`), so seed
    ``s`` gets the same networks alone or in a group. Derived with NumPy's ``SeedSequence``.
    """
    if purpose not in INIT_PURPOSES:
        raise ValueError(f"unknown initialisation purpose {purpose!r}; known: {INIT_PURPOSES}")
    sequence = np.random.SeedSequence(int(seed), spawn_key=(INIT_PURPOSES.index(purpose),))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def seeds_label(seeds: list[int]) -> str:
    """``"s3"`` for one seed, ``"seeds0-1-2"`` for a group (a digest when very long)."""
    if len(seeds) == 1:
        return f"s{seeds[0]}"
    label = "-".join(str(s) for s in seeds)
    if len(label) > MAX_SEEDS_IN_NAME:
        label = f"{len(seeds)}x-h{hashlib.sha1(label.encode()).hexdigest()[:12]}"
    return f"seeds{label}"


# ----------------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """The offline data of a run on its device, the env id, the dataset's reference scores and,
    with ``offline.normalize_observations``, the observation statistics (``data`` normalised)."""

    data: TensorDictBase
    env_id: str
    ref_scores: tuple[float, float] | None
    #: :func:`dataset_hash` of the data as loaded (before observation normalisation).
    fingerprint: str = ""
    #: the dataset's evaluation env (a Gymnasium ``EnvSpec``: Minari's ``eval_env_spec``), or None.
    eval_env_spec: Any = None
    #: how the dataset flattened dict observations (AntMaze: ``[achieved_goal, observation]``).
    obs_keys: tuple[str, ...] | None = None
    obs_loc: torch.Tensor | None = None
    obs_scale: torch.Tensor | None = None


def load_dataset(cfg: RunConfig, device: torch.device) -> PreparedData:
    """Load (or generate) the offline data of ``cfg`` on ``device``: the transition keys, rewards
    shifted by ``dataset.reward_shift``, observations normalised (``(x - mean) / (std + 1e-3)``,
    dataset statistics) with ``offline.normalize_observations``."""
    ds = cfg.dataset
    entry = get_dataset_entry(ds.task, ds.kind)
    if ds.source == "generated":
        dataset_id = ensure_dataset(ds.task, ds.kind, size=ds.size, seed=ds.generation_seed,
                                    random_policy=ds.random_policy, workers=ds.workers,
                                    progress=cfg.logging.progress)
        spec = DatasetSpec("local_minari", dataset_id, device=str(device))
    elif ds.source in ("minari", "local_minari"):  # dict observations: the task's order (one place)
        obs_keys = TASKS[ds.task].obs_keys
        spec = DatasetSpec(ds.source, ds.id or entry.minari_id, device=str(device),
                           obs_keys=list(obs_keys) if obs_keys is not None else None)
    else:
        spec = DatasetSpec("d4rl_hdf5", ds.path, env_id=cfg.env_id or entry.env_id, device=str(device))
    data = load_offline_data(spec)
    data = data.select(*TRANSITION_KEYS, *(k for k in OPTIONAL_TRANSITION_KEYS if k in data.keys(True, True)))
    if ds.reward_shift != 0.0:
        data.set(("next", "reward"), data.get(("next", "reward")) + ds.reward_shift)
    meta = dataset_metadata(spec)
    ref = None
    if meta.ref_min_score is not None and meta.ref_max_score is not None:
        ref = (meta.ref_min_score, meta.ref_max_score)
    eval_spec = None
    if meta.eval_env_spec:
        import gymnasium as gym

        eval_spec = gym.envs.registration.EnvSpec.from_json(meta.eval_env_spec)
    prepared = PreparedData(data, cfg.env_id or meta.env_id or entry.env_id, ref, dataset_hash(data),
                            eval_spec, TASKS[ds.task].obs_keys)
    if cfg.method == "wsrl" and cfg.wsrl.offline_regularizer == "calql":
        # Cal-QL's lower bound: the return-to-go under the offline discount, rewards as trained on
        failure = cfg.wsrl.failure_reward
        data.set("mc_return", monte_carlo_returns(
            data, cfg.backbone.gamma, failure_reward=None if failure is None else failure + ds.reward_shift,
        ))
    if cfg.offline.normalize_observations:
        obs = data["observation"]
        prepared.obs_loc, prepared.obs_scale = obs.mean(0), obs.std(0) + 1e-3
        for key in ("observation", ("next", "observation")):
            data.set(key, (data.get(key) - prepared.obs_loc) / prepared.obs_scale)
    return prepared


def _final_value_bias(history: dict) -> dict[str, dict[str, float]]:
    """``{critic: {"bias", "abs_error"}}`` at the last fine-tuning evaluation (empty without one)."""
    prefix = "eval/value_bias/"
    return {
        key[len(prefix):]: {
            "bias": series[-1][1],
            "abs_error": history[f"eval/value_abs_error/{key[len(prefix):]}"][-1][1],
        }
        for key, series in history.items()
        if key.startswith(prefix) and series
    }


def dataset_hash(data: TensorDictBase) -> str:
    """A SHA-256 digest of the offline transitions (every key's values, in key order): runs and
    ``offline.pt`` files record it, so that a regenerated dataset that differs is refused."""
    digest = hashlib.sha256()
    for key in sorted(data.keys(True, True), key=str):
        digest.update(str(key).encode())
        digest.update(data.get(key).detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _td_state(td: TensorDictBase) -> dict:
    return {"data": td.to_dict(), "batch_size": list(td.batch_size)}


def _td_from_state(state: dict, device: torch.device) -> TensorDictBase:
    return TensorDict(state["data"], batch_size=state["batch_size"]).to(device)


def value_bias(agent: Agent, episodes: list, gamma: float, reward_shift: float, device) -> dict[str, float]:
    """How far each critic is from the truth on the states of ``episodes`` (online states).

    For every visited state ``s_t`` of an episode, the discounted Monte Carlo return actually
    obtained from it, ``G_t = sum_{k >= t} gamma^k-t (r_k + reward_shift)`` (the rewards the critics
    are trained on; the sum stops where the episode stopped: a time limit truncates it), against each
    critic's ``Q(s_t, pi(s_t))`` (:meth:`~torchrl_opt.pipeline.agents.Agent.value_estimates`):
    ``value_bias/<critic>`` = mean of ``Q - G`` over every state, ``value_abs_error/<critic>`` =
    mean of ``|Q - G|``, and the same at the episodes' initial states only (``..._initial``).
    """
    rewards = torch.cat([e.rewards for e in episodes]).double() + reward_shift
    lengths = torch.tensor([len(e.rewards) for e in episodes])
    ends = torch.zeros(len(rewards), dtype=torch.bool)
    ends[lengths.cumsum(0) - 1] = True
    returns = discounted_return_to_go(rewards, ends, gamma)
    initial = lengths.cumsum(0) - lengths
    values = agent.value_estimates(torch.cat([e.observations for e in episodes]).to(device))
    out = {}
    for name, q in values.items():
        error = q.double().cpu() - returns
        out[f"value_bias/{name}"] = float(error.mean())
        out[f"value_abs_error/{name}"] = float(error.abs().mean())
        out[f"value_bias_initial/{name}"] = float(error[initial].mean())
        out[f"value_abs_error_initial/{name}"] = float(error[initial].abs().mean())
    return out


# ----------------------------------------------------------------------------------- results
@dataclass
class Member:
    """What one seed of a run owns."""

    seed: int
    run_dir: Path
    generator: torch.Generator
    agent: Agent
    logger: RunLogger


@dataclass
class SeedResult:
    """One seed's outcome: its directory, ``summary.json``, logged history and final agent."""

    seed: int
    run_dir: Path
    summary: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(repr=False)
    agent: Agent = field(repr=False)


@dataclass
class RunResult:
    """What :func:`~torchrl_opt.pipeline.run.run` returns: the run's directory and ``summary.json``
    (a seed's for one seed, the group's aggregate otherwise) and every seed's :class:`SeedResult`."""

    run_dir: Path
    summary: dict[str, Any]
    results: list[SeedResult] = field(repr=False)

    @property
    def seeds(self) -> list[int]:
        return [result.seed for result in self.results]

    def _single(self, what: str) -> SeedResult:
        if len(self.results) != 1:
            raise AttributeError(f"a run of seeds {self.seeds} has one {what} per seed: use .results[i].{what}")
        return self.results[0]

    @property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        return self._single("history").history

    @property
    def agent(self) -> Agent:
        return self._single("agent").agent


@dataclass
class FinetuneParts:
    """What a fine-tuning phase runs on, built by :meth:`Run.finetune_parts` (also the pieces of
    :class:`~torchrl_opt.trainers.OPTTrainer`)."""

    updates: list[UpdateSpec]
    replay: Any
    collector: Any
    density: DensityStep | None
    kappa: KappaSchedule | AdaptiveKappa | None
    schedules: list[Callable[[], Any]]
    observers: list[Callable[[TensorDictBase, dict], None]]
    extra_metrics: Callable[[], dict[str, torch.Tensor]]
    checkpoint_extras: Callable[[], dict[str, Any]]
    start: int = 0
    update_count: int = 0


class DensityStep:
    """Off2On's density-ratio step, for ``S >= 1`` seeds' estimators at once.

    ``step(replay, sample)``: each seed's estimator ``w`` takes one Adam step on
    ``L_w = mean_off[-log(2 / (w + 1) + 1e-10)] - mean_on[log(2 w / (w + 1) + 1e-10)]`` over ``B``
    offline and ``B`` online rows (``replay.sample_offline_online(B)``), and the RL batch ``sample``
    gets the priorities ``clamp(w^(1/T) / mean_off(w^(1/T)), p_min, p_max)`` computed before the step
    (:class:`~torchrl_opt.objectives.density.DensityRatioLoss`, written with
    ``replay.update_priority``). Returns the loss (``[S]`` for a group). The step is built by the
    run's :class:`~torchrl_opt.pipeline.updates.UpdateEngine`, like every other update.
    """

    def __init__(
        self, estimators: list[DensityRatioEstimator], lr: float, batch_size: int, engine: UpdateEngine
    ) -> None:
        self.losses = [DensityRatioLoss(estimator) for estimator in estimators]
        self.spec = engine.build(
            self.losses,
            UpdateDef("density", lambda loss: loss, ("loss_density",), ("density_network_params",), lr),
        )
        self.batch_size = int(batch_size)

    def __call__(self, replay: Any, sample: TensorDictBase) -> torch.Tensor:
        offline, online = replay.sample_offline_online(self.batch_size)
        out = self.spec.step(
            TensorDict(offline=offline, online=online, sample=sample, batch_size=offline.batch_size[:-1])
        )
        replay.update_priority(sample["index"], out["priority"])
        return out["loss_density"]

    def state_dict(self) -> dict[str, Any]:
        return {"estimators": [loss.state_dict() for loss in self.losses],
                "optimizer": self.spec.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["estimators"]) != len(self.losses):
            raise CheckpointError(
                f"the checkpoint holds {len(state['estimators'])} density-ratio estimators, this run "
                f"has {len(self.losses)} seeds"
            )
        for loss, loss_state in zip(self.losses, state["estimators"]):
            loss.load_state_dict(loss_state)
        self.spec.optimizer.load_state_dict(state["optimizer"])


# ----------------------------------------------------------------------------------- the run
class Run:
    """The state of one run of ``plan`` over ``cfg.seed_list``. Use
    :func:`~torchrl_opt.pipeline.run.run`, or :meth:`execute` after building it.

    Raises (at construction, before anything is written): :class:`~torchrl_opt.data.datasets.SpaceMismatchError`
    when the env's spaces do not match the dataset's.
    """

    def __init__(self, cfg: RunConfig, plan) -> None:
        self.cfg, self.plan = cfg, plan
        self.seeds = cfg.seed_list
        self.device = resolve_device(cfg.device)
        self.experiment = cfg.logging.experiment or (
            f"{cfg.dataset.task}-{cfg.dataset.kind}-{cfg.backbone.name}-{cfg.method}-{seeds_label(self.seeds)}"
        )
        self.run_dir = Path(cfg.run_dir or Path(cfg.logging.dir) / self.experiment)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        prepared = load_dataset(cfg, self.device)
        self.data, self.env_id, self.ref_scores = prepared.data, prepared.env_id, prepared.ref_scores
        self.dataset_fingerprint = prepared.fingerprint
        self.obs_loc, self.obs_scale = prepared.obs_loc, prepared.obs_scale
        self.envs = EnvFactory(
            self.env_id, eval_env_spec=prepared.eval_env_spec, obs_keys=prepared.obs_keys,
            reward_shift=cfg.dataset.reward_shift, obs_loc=self.obs_loc, obs_scale=self.obs_scale,
        )
        probe = self.envs.make(self.seeds[0], train=False)
        obs_dim, action_spec = probe.observation_spec["observation"].shape[-1], probe.action_spec
        probe.close()
        for what, env_dim, data_dim in [
            ("observations", obs_dim, self.data["observation"].shape[-1]),
            ("actions", action_spec.shape[-1], self.data["action"].shape[-1]),
        ]:
            if env_dim != data_dim:
                raise SpaceMismatchError(f"{self.env_id} {what} have {env_dim} dims, the dataset's {data_dim}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.members = [self._member(seed, obs_dim, action_spec) for seed in self.seeds]
        self.logger = GroupLogger(
            [m.logger for m in self.members], self.seeds, progress=cfg.logging.progress
        )
        self.engine = UpdateEngine(len(self.seeds), self.device, cfg.acceleration)
        self.policies = Policies(
            self.agents, self._stacked_actor if len(self.seeds) > 1 else None, epsilon=cfg.porl.epsilon
        )
        self.fingerprint = self._fingerprint()
        self.wall_clock: dict[str, float] = {}
        self.updates_done: dict[str, int] = {}
        #: ``B_on``: ``[n]`` (``[S, n]`` for a group), once collected.
        self.online_data: TensorDictBase | None = None
        #: the last fine-tuning phase's replay and update steps (continued by the next one).
        self.replay: Any = None
        self.specs: dict[str, UpdateSpec] = {}
        self._acting_kind = "offline"

    def _member(self, seed: int, obs_dim: int, action_spec) -> Member:
        single = len(self.seeds) == 1
        run_dir = self.run_dir if single else self.run_dir / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        agent = make_agent(self.cfg, obs_dim, action_spec, self.device)
        experiment = self.experiment if single else f"{self.experiment}-seed{seed}"
        logger = RunLogger(self.cfg.logging.backend, run_dir, experiment, progress=False)
        return Member(seed, run_dir, torch.Generator(self.device).manual_seed(seed), agent, logger)

    @property
    def agents(self) -> list[Agent]:
        return [m.agent for m in self.members]

    @property
    def generators(self) -> torch.Generator | list[torch.Generator]:
        """The batch generator(s): one seed's own, or every seed's (``[S, B]`` batches)."""
        gens = [m.generator for m in self.members]
        return gens[0] if len(gens) == 1 else gens

    def _fingerprint(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.cfg)
        sections = ("dataset", "backbone", "online_pretrain", "finetune", *METHOD_SECTIONS.get(self.cfg.method, ()))
        return json.loads(json.dumps({
            "method": self.cfg.method,
            "seeds": self.seeds,
            "env_id": self.env_id,
            "dataset_hash": self.dataset_fingerprint,
            "engine": self.engine.kind,
            "offline": {k: v for k, v in cfg["offline"].items() if k != "eval_every"},
            **{name: cfg[name] for name in sections},
        }))

    # ------------------------------------------------------------------ building blocks
    def losses(self, kind: str) -> list:
        return [agent.loss_for(kind) for agent in self.agents]

    def build_updates(self, kind: str, *, utd: int = 1) -> list[UpdateSpec]:
        """The update steps of kind ``kind`` for every seed (see :class:`UpdateEngine`)."""
        losses = self.losses(kind)
        return [self.engine.build(losses, d) for d in self.agents[0].update_defs(kind, utd=utd)]

    def _stacked_actor(self) -> TensorDictBase:
        return self.engine.stack(self.losses(self._acting_kind)).groups["actor_network_params"]

    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        """Every seed's deterministic evaluation (``eval.episodes`` episodes on an env seeded by
        ``step``), as ``[S]`` float64 tensors: ``return`` and ``normalized_score`` (the raw
        reward), and the value-estimation bias of each critic on the visited states
        (:func:`value_bias`)."""
        cfg = self.cfg
        envs = [self.envs.make(m.seed * 1_000_003 + step + 1, train=False) for m in self.members]
        episodes = rollout_episodes(
            envs, self.policies, cfg.eval.episodes, max_steps=cfg.eval.max_steps, device=self.device,
            direct=cfg.acceleration.direct_env, threads=cfg.acceleration.env_threads,
        )
        for env in envs:
            env.close()
        returns = torch.tensor([[e.ret for e in seed_episodes] for seed_episodes in episodes],
                               dtype=torch.float64).mean(1)
        out = {"return": returns, "normalized_score": normalized_score(cfg.dataset.task, returns, ref=self.ref_scores)}
        # the discount the critics are trained with in the current phase
        biases = [value_bias(m.agent, seed_episodes,
                             cfg.backbone.gamma if m.agent.finetune_loss is None else cfg.backbone.online_gamma,
                             cfg.dataset.reward_shift, self.device)
                  for m, seed_episodes in zip(self.members, episodes)]
        for key in biases[0]:
            out[key] = torch.tensor([b[key] for b in biases], dtype=torch.float64)
        return out

    def kappa_schedule(self) -> KappaSchedule | AdaptiveKappa:
        """``finetune.kappa``: the Appendix H preset of the task/dataset, ``constant``, ``linear``,
        or ``adaptive`` (:class:`~torchrl_opt.schedules.AdaptiveKappa`)."""
        k = self.cfg.finetune.kappa
        if k.kind == "adaptive":
            return AdaptiveKappa(k.init, k.adaptive_min, k.adaptive_max, k.adaptive_rate, device=self.device)
        if k.kind == "preset":
            return kappa_preset(self.cfg.dataset.task, self.cfg.dataset.kind, start_step=k.start)
        if k.kind == "constant":
            return KappaSchedule.constant(k.init)
        return KappaSchedule(k.init, k.end, k.t_decay, k.start)

    def make_replay(self, phase) -> Any:
        """The replay of fine-tuning phase ``phase`` over ``B_off`` (one for all seeds)."""
        cfg = self.cfg
        kw = {"device": self.device, "offline_fraction": phase.offline_fraction, "check_priorities": False}
        if len(self.seeds) == 1:
            return make_replay(phase.replay, self.data, phase.online_capacity, cfg.finetune.batch_size,
                               seed=self.seeds[0], **kw)
        return make_seed_batched_replay(phase.replay, self.data, len(self.seeds), phase.online_capacity,
                                        cfg.finetune.batch_size, seeds=self.seeds, **kw)

    def make_density(self) -> DensityStep:
        """Balanced replay's density-ratio step for every seed (estimators initialised from
        :func:`init_seed` ``(seed, "density_ratio")``)."""
        cfg, ft = self.cfg, self.cfg.finetune
        estimators = []
        for m in self.members:
            with seeded_init(init_seed(m.seed, "density_ratio")):
                estimators.append(DensityRatioEstimator(
                    m.agent.obs_dim, m.agent.action_dim, tuple(cfg.backbone.hidden), temperature=ft.temperature
                ))
        return DensityStep([e.to(self.device) for e in estimators], ft.density_lr, ft.batch_size, self.engine)

    # ------------------------------------------------------------------ checkpoints
    def save(self, phase: str, step: int, specs: list[UpdateSpec], **extra: Any) -> None:
        """Atomically rewrite ``checkpoint.pt``: everything needed to continue ``phase`` at ``step``."""
        gens = [m.generator for m in self.members]
        state = {
            "method": self.cfg.method,
            "fingerprint": self.fingerprint,
            "phase": phase,
            "step": step,
            "members": [agent.state_dict() for agent in self.agents],
            "histories": [{k: list(v) for k, v in m.logger.history.items()} for m in self.members],
            "optimizers": {spec.name: spec.optimizer.state_dict() for spec in specs},
            "rng": rng_state(*gens),
            "wall_clock": dict(self.wall_clock),
            "updates_done": dict(self.updates_done),
            **extra,
        }
        if self.online_data is not None:
            state["online_data"] = _td_state(self.online_data)
        save_checkpoint(self.checkpoint_path, state)

    def load(self) -> dict | None:
        """The run's checkpoint when resuming (``None`` for a fresh start), checked against this
        run; then every seed's logged history (and CSV files) is reset to the checkpoint's.

        Nothing on disk is modified before the checkpoint has loaded and matched.
        """
        if not (self.cfg.checkpoint.resume and self.checkpoint_path.exists()):
            for m in self.members:
                m.logger.restore_history({})
            return None
        hint = (" Set checkpoint.resume=false (or use another run_dir) to start this run afresh; the "
                "files in the run directory were left untouched.")
        try:
            state = load_checkpoint(self.checkpoint_path, map_location="cpu")
            if state.get("method") != self.cfg.method:
                raise CheckpointMismatchError(
                    f"Checkpoint {self.checkpoint_path} is a run of method {state.get('method')!r}, "
                    f"this run's method is {self.cfg.method!r}"
                )
            check_fingerprint(state, self.fingerprint, self.checkpoint_path)
            names = [*self.plan.names, "done"]
            if state.get("phase") not in names or len(state.get("members", ())) != len(self.members):
                raise CheckpointError(
                    f"Checkpoint {self.checkpoint_path} has phase {state.get('phase')!r} (expected one "
                    f"of {names}) or another number of seeds"
                )
        except CheckpointError as err:
            raise type(err)(f"{err}.{hint}") from err
        for m, history in zip(self.members, state["histories"]):
            m.logger.restore_history(history)
        self.wall_clock.update(state["wall_clock"])
        self.updates_done.update(state["updates_done"])
        if "online_data" in state:
            self.online_data = _td_from_state(state["online_data"], self.device)
        return state

    def restore(self, state: dict, specs: list[UpdateSpec]) -> None:
        """Load agents, optimisers and RNGs (call once every object of the phase exists)."""
        for agent, agent_state in zip(self.agents, state["members"]):
            agent.load_state_dict(agent_state)
        for spec in specs:
            spec.optimizer.load_state_dict(state["optimizers"][spec.name])
        set_rng_state(state["rng"], *(m.generator for m in self.members))

    def _phase_done(
        self, name: str, steps: int, specs: list[UpdateSpec], t0: float, *, force: bool = False, **extra: Any
    ) -> None:
        """Record the phase's wall-clock; checkpoint its end unless the loop's periodic checkpoint
        just did (``force``: always)."""
        self.wall_clock[name] = self.wall_clock.get(name, 0.0) + time.perf_counter() - t0
        every = self.cfg.checkpoint.every
        if force or every == 0 or steps % every != 0 or steps == 0:
            self.save(name, steps, specs, **extra)

    # ------------------------------------------------------------------ execution
    def execute(self) -> RunResult:
        """Run (or resume) every phase of the plan, then write the summaries."""
        state = self.load()
        if state is not None and state["phase"] == "done":
            return self.restore_finished(state)
        start = 0 if state is None else self.plan.index(state["phase"])
        for i, phase in enumerate(self.plan.phases):
            if i < start:
                phase.redo(self)
            else:
                phase.execute(self, state if i == start else None)
        return self.finish()

    def restore_finished(self, state: dict) -> RunResult:
        """A finished run: its final agents (the structure rebuilt) and summaries, nothing rerun."""
        paths = [self.run_dir / "summary.json", *(m.run_dir / "summary.json" for m in self.members)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(f"{self.checkpoint_path} marks the run finished but {missing} are missing")
        for phase in self.plan.phases:
            phase.redo(self)
        for agent, agent_state in zip(self.agents, state["members"]):
            agent.load_state_dict(agent_state)
        return self._result(json.loads((self.run_dir / "summary.json").read_text()),
                            [json.loads((m.run_dir / "summary.json").read_text()) for m in self.members])

    # ------------------------------------------------------------------ phases
    def train(self, phase, resume: dict | None) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.Train` phase."""
        cfg = self.cfg
        specs = self.build_updates(phase.updates)
        self._acting_kind = phase.updates
        start = 0
        if resume is not None:
            self.restore(resume, specs)
            start = resume["step"]
        gens = self.generators
        t0 = time.perf_counter()
        train_steps(
            specs, lambda: sample_uniform(self.data, cfg.offline.batch_size, gens), phase.steps,
            name=phase.name, logger=self.logger, log_every=cfg.logging.log_every,
            show=("loss_vae", "loss_bc", "pred_value"),
            evaluate=self.evaluate if phase.evaluate else None, eval_every=phase.eval_every,
            start=start, on_checkpoint=lambda step: self.save(phase.name, step, specs),
            checkpoint_every=cfg.checkpoint.every,
        )
        self.updates_done[phase.name] = phase.steps
        self._phase_done(phase.name, phase.steps, specs, t0)

    def pretrain(self, phase, resume: dict | None) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.Pretrain` phase: the online critics only move."""
        cfg = self.cfg
        specs = self.build_updates("pretrain")
        start = 0
        if resume is not None:
            self.restore(resume, specs)
            start = resume["step"]
        gens = self.generators

        def sample() -> TensorDictBase:
            offline = sample_uniform(self.data, phase.batch_size, gens)
            online = sample_uniform(self.online_data, phase.batch_size, gens)
            return TensorDict(offline=offline, online=online, batch_size=offline.batch_size[:-1])

        t0 = time.perf_counter()
        train_steps(
            specs, sample, phase.steps, name=phase.name, logger=self.logger,
            log_every=cfg.logging.log_every, show=("loss_pretrain",), start=start,
            on_checkpoint=lambda step: self.save(phase.name, step, specs),
            checkpoint_every=cfg.checkpoint.every,
        )
        self.updates_done[phase.name] = phase.steps
        self._phase_done(phase.name, phase.steps, specs, t0)

    def start_online(self, phase) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.StartOnline` phase (kappa at its schedule's start)."""
        kappa = self.kappa_schedule().value(0) if phase.q_on else 0.0
        for m in self.members:
            m.agent.start_online(q_on=phase.q_on, fresh_critics=phase.fresh_critics, kappa=kappa,
                                 init_seed=init_seed(m.seed, "online_critics"))
            m.generator.manual_seed(init_seed(m.seed, "online_batches"))
        # the online phases draw from a state that does not depend on the offline ones, so that
        # fine-tuning from offline.pt reproduces a run that trained offline itself
        torch.manual_seed(init_seed(self.seeds[0], "online_rng") + len(self.seeds) - 1)
        self._acting_kind = "finetune"

    def _envs(self, offset: int, resume: dict | None) -> list:
        envs = [self.envs.make(m.seed + offset) for m in self.members]
        if resume is not None:
            for env, snapshot in zip(envs, resume["env"]):
                env_restore_on_next_reset(env, snapshot)
        return envs

    def collect(self, phase, resume: dict | None) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.Collect` phase: ``B_on`` (appended to)."""
        cfg = self.cfg
        collected = None
        if resume is not None:
            self.restore(resume, [])
            if "collected" not in resume:  # checkpointed at its end: B_on came with the state
                return
            collected = _td_from_state(resume["collected"], self.device)
        envs = self._envs(phase.env_offset, resume)
        every = cfg.checkpoint.every
        frames = min(1000, phase.steps, every) if every > 0 else min(1000, phase.steps)
        collector = make_collector(
            envs, self.policies, phase.policy, frames_per_batch=frames, device=self.device,
            direct=cfg.acceleration.direct_env, threads=cfg.acceleration.env_threads,
        )

        def on_checkpoint(step: int, so_far: TensorDictBase) -> None:
            self.save(phase.name, step, [], collected=_td_state(so_far),
                      env=[env_snapshot(env) for env in envs])

        t0 = time.perf_counter()
        data = collect(collector, phase.steps, name=phase.name, logger=self.logger,
                       collected=collected, on_checkpoint=on_checkpoint, checkpoint_every=every)
        collector.shutdown()
        for env in envs:
            env.close()
        self.online_data = data if self.online_data is None else torch.cat([self.online_data, data], -1)
        self._phase_done(phase.name, phase.steps, [], t0, force=True)

    def finetune_parts(self, phase, resume: dict | None, *, direct: bool | None = None) -> FinetuneParts:
        """Everything fine-tuning phase ``phase`` runs on, built in one order for the pipeline and
        the trainer (resumed from ``resume`` when given): the update steps, the replay (with
        ``B_on``), the density-ratio step, kappa (attached to every seed's loss), SPOT's lambda
        cooling, the collector."""
        cfg = self.cfg
        specs = self.build_updates(phase.updates, utd=phase.utd)
        for name in phase.keep_optimizers if resume is None else ():
            for spec in specs:
                if spec.name == name:
                    spec.optimizer.load_state_dict(self.specs[name].optimizer.state_dict())
        if phase.continue_replay and resume is None:
            replay = self.replay
        else:
            replay = self.make_replay(phase)
            if resume is None and self.online_data is not None:
                replay.extend(self.online_data)
        density = self.make_density() if phase.replay == "balanced" else None
        kappa = self.kappa_schedule() if phase.kappa else None
        losses = self.losses(phase.updates)
        if kappa is not None:
            for loss in losses:
                kappa.attach(loss.kappa)
        penalties = [getattr(loss, "actor_penalty", None) for loss in losses]
        schedules: list[Callable[[], Any]] = [kappa.step] if kappa is not None else []
        schedules += [p.step for p in penalties if p is not None and hasattr(p, "step")]
        observers = []
        if isinstance(kappa, AdaptiveKappa):
            def observe(sample: TensorDictBase, metrics: dict) -> None:
                critic = next(out for out in metrics.values() if "td_error_on" in out.keys())
                kappa.observe(critic["td_error"], critic["td_error_on"], sample["is_online"])

            observers.append(observe)
        envs = self._envs(phase.env_offset, resume)
        collector = make_collector(
            envs, self.policies, phase.policy, frames_per_batch=1, device=self.device,
            direct=cfg.acceleration.direct_env if direct is None else direct,
            prefetch=cfg.finetune.prefetch_action, threads=cfg.acceleration.env_threads,
        )
        start = update_count = 0
        if resume is not None:
            # after the collector exists: TorchRL's construction runs the policy once
            self.restore(resume, specs)
            replay.load_state_dict(resume["replay"])
            if kappa is not None:
                kappa.load_state_dict(resume["kappa"])
                kappa.write()
            if density is not None:
                density.load_state_dict(resume["density"])
            if getattr(collector, "prefetch", False):
                collector.set_pending_action(resume["pending_action"])
            start, update_count = resume["step"], resume["update_count"]
        template = losses[0]

        def extra_metrics() -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            if kappa is not None:
                out["kappa"] = template.kappa.detach().clone()
            if isinstance(kappa, AdaptiveKappa):  # the averaged online TD errors behind it
                out["kappa_error_off"], out["kappa_error_on"] = kappa.errors.clone().unbind(0)
            penalty = penalties[0]
            if penalty is not None and isinstance(getattr(penalty, "lambda_", None), torch.Tensor):
                out["spot_lambda"] = penalty.lambda_.detach().clone()
            if phase.replay == "balanced":  # where balanced replay puts its sampling mass
                out["online_share"] = replay.online_share()
            return out

        def checkpoint_extras() -> dict[str, Any]:
            out: dict[str, Any] = {"replay": replay.state_dict(), "env": [env_snapshot(env) for env in envs]}
            if kappa is not None:
                out["kappa"] = kappa.state_dict()
            if density is not None:
                out["density"] = density.state_dict()
            if getattr(collector, "prefetch", False):
                out["pending_action"] = collector.pending_action()
            return out

        return FinetuneParts(specs, replay, collector, density, kappa, schedules, observers,
                             extra_metrics, checkpoint_extras, start, update_count)

    def finetune(self, phase, resume: dict | None) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.Finetune` phase."""
        cfg = self.cfg
        parts = self.finetune_parts(phase, resume)
        saved = parts.updates

        def on_checkpoint(step: int, count: int) -> None:
            self.save(phase.name, step, saved, update_count=count, **parts.checkpoint_extras())

        t0 = time.perf_counter()
        done = finetune(
            parts.updates, parts.replay, parts.collector, phase.env_steps, phase.utd,
            name=phase.name, logger=self.logger, log_every=cfg.logging.log_every,
            evaluate=self.evaluate if phase.evaluate else None, eval_every=cfg.eval.every,
            density=parts.density, schedules=parts.schedules, observers=parts.observers,
            extra_metrics=parts.extra_metrics,
            start=parts.start, update_count=parts.update_count, on_checkpoint=on_checkpoint,
            checkpoint_every=cfg.checkpoint.every,
        )
        parts.collector.shutdown()
        self.replay = parts.replay
        self.specs = {spec.name: spec for spec in parts.updates}
        self.updates_done[phase.name] = done
        self._phase_done(phase.name, phase.env_steps, saved, t0, update_count=done, **parts.checkpoint_extras())

    def load_offline(self) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.LoadOffline` phase: every seed's ``offline.pt``.

        Raises:
            CheckpointError: a missing, corrupt or malformed file.
            CheckpointMismatchError: one trained for another env, backbone or spaces.
        """
        for m in self.members:
            path = offline_checkpoint_path(self.cfg, m.seed)
            state = load_checkpoint(path, map_location="cpu")
            missing = [k for k in ("meta", "offline_loss", "vae") if k not in state]
            if missing:
                raise CheckpointError(f"Offline checkpoint {path} lacks entries {missing}")
            expected = self._offline_meta(m.agent)
            differences = {k: (state["meta"].get(k), v) for k, v in expected.items() if state["meta"].get(k) != v}
            if differences:
                raise CheckpointMismatchError(
                    f"Offline checkpoint {path} does not match this run: "
                    + ", ".join(f"{k}: checkpoint={a!r} run={b!r}" for k, (a, b) in differences.items())
                )
            m.agent.load_offline(state)
            if self.obs_loc is not None:
                self.obs_loc, self.obs_scale = state["obs_loc"].to(self.device), state["obs_scale"].to(self.device)

    def _offline_meta(self, agent: Agent) -> dict[str, Any]:
        return json.loads(json.dumps({
            "env_id": self.env_id,
            "dataset_hash": self.dataset_fingerprint,
            "backbone": dataclasses.asdict(self.cfg.backbone),
            "obs_dim": agent.obs_dim,
            "action_dim": agent.action_dim,
            "normalize_observations": self.cfg.offline.normalize_observations,
        }))

    def save_offline(self) -> None:
        """A :class:`~torchrl_opt.pipeline.plans.SaveOffline` phase: every seed's ``offline.pt``."""
        for m in self.members:
            state = {"meta": {**self._offline_meta(m.agent), "method": self.cfg.method}, **m.agent.offline_state()}
            if self.obs_loc is not None:
                state["obs_loc"], state["obs_scale"] = self.obs_loc, self.obs_scale
            save_checkpoint(m.run_dir / "offline.pt", state)

    # ------------------------------------------------------------------ summaries
    def seed_summary(self, m: Member) -> dict[str, Any]:
        """One seed's ``summary.json`` (see ``docs/analysis.md`` for the schema)."""
        history = m.logger.history
        scores = history.get("eval/normalized_score", [])
        offline_scores = history.get("offline_eval/normalized_score", [])
        out = {
            "kind": "run",
            "method": self.cfg.method,
            "seed": m.seed,
            "task": self.cfg.dataset.task,
            "dataset": self.cfg.dataset.kind,
            "env_id": self.env_id,
            "device": str(self.device),
            "config": {**dataclasses.asdict(self.cfg), "seed": m.seed, "seeds": None, "run_dir": str(m.run_dir)},
            "plan": self.plan.names,
            "final_normalized_score": scores[-1][1] if scores else None,
            "best_normalized_score": max(v for _, v in scores) if scores else None,
            "offline_normalized_score": offline_scores[-1][1] if offline_scores else None,
            "scores": scores,
            "curves": {k: v for k, v in history.items() if k.startswith(("eval/", "offline_eval/"))},
            "final_value_bias": _final_value_bias(history),
            **self._timing(),
        }
        if len(self.members) > 1:
            out["group"] = {"seeds": self.seeds, "run_dir": str(self.run_dir)}
        return out

    def _timing(self) -> dict[str, Any]:
        return {
            "wall_clock_s": dict(self.wall_clock),
            "updates": dict(self.updates_done),
            "updates_per_s": {
                phase: self.updates_done[phase] / seconds
                for phase, seconds in self.wall_clock.items()
                if phase in self.updates_done and seconds > 0
            },
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def group_summary(self, summaries: list[dict[str, Any]]) -> dict[str, Any]:
        """A seed group's ``summary.json``: mean and (population) std over seeds, per-seed rows."""
        keys = ("final_normalized_score", "best_normalized_score", "offline_normalized_score")
        out: dict[str, Any] = {
            "kind": "group", "method": self.cfg.method, "task": self.cfg.dataset.task,
            "dataset": self.cfg.dataset.kind, "env_id": self.env_id, "device": str(self.device),
            "config": dataclasses.asdict(self.cfg), "plan": self.plan.names, "seeds": self.seeds,
            "per_seed": {str(s["seed"]): {"run_dir": s["config"]["run_dir"], **{k: s[k] for k in keys}}
                         for s in summaries},
        }
        out["final_value_bias"] = {
            critic: {k: sum(s["final_value_bias"][critic][k] for s in summaries) / len(summaries)
                     for k in ("bias", "abs_error")}
            for critic in summaries[0]["final_value_bias"]
        }
        for key in keys:
            values = [s[key] for s in summaries]
            if any(v is None for v in values):
                out[key] = out[f"{key}_std"] = None
            else:
                mean = sum(values) / len(values)
                out[key], out[f"{key}_std"] = mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return {**out, **self._timing()}

    def finish(self) -> RunResult:
        """Write every seed's ``summary.json`` (and a group's aggregate), mark the run done."""
        summaries = [self.seed_summary(m) for m in self.members]
        for m, summary in zip(self.members, summaries):
            write_json_atomic(m.run_dir / "summary.json", summary)
        summary = summaries[0]
        if len(self.members) > 1:
            summary = self.group_summary(summaries)
            write_json_atomic(self.run_dir / "summary.json", summary)
        if self.cfg.logging.report:
            print(f"report: {write_run_report(self.run_dir)}", flush=True)
        self.save("done", 0, [])
        self.logger.close_phase()
        return self._result(summary, summaries)

    def _result(self, summary: dict, summaries: list[dict]) -> RunResult:
        results = [
            SeedResult(m.seed, m.run_dir, s, dict(m.logger.history), m.agent)
            for m, s in zip(self.members, summaries)
        ]
        return RunResult(self.run_dir, summary, results)

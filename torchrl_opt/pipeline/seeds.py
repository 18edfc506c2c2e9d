"""Seed-batched runs: ``S`` seeds of one OPT configuration trained together in one process.

``run(cfg)`` with ``cfg.seeds = [s_0, ..., s_{S-1}]`` (recipes: ``seeds=[0,1,2]``) runs the three phases
once for all seeds. One seed leaves a GPU almost idle (batch-256 MLP updates are launch-bound), so the
seeds' networks are stacked along a leading seed dimension and every update (offline TD3+BC / IQL,
meta-adaptation pre-training, fine-tuning, the density-ratio step) is one functional step vmapped over
seeds (:class:`~torchrl_opt.pipeline.functional.SeedBatchedStep`): one graph, compiled and
CUDA-graphed like a single seed's, for all ``S`` seeds.

What each seed keeps of its own, exactly as ``run(cfg)`` with ``seed=s`` would:

* its networks' initialisation (``torch.manual_seed(s)`` before the agent is built, then
  :func:`~torchrl_opt.pipeline.run.init_seed` for the online critics and the density-ratio network);
* its batch generator (offline and pre-training batches: the same rows as the single run) and its
  replay sampler's generator (seeded with ``s``);
* its environments (collection ``s + 1``, fine-tuning ``s + 2``, evaluation as the single run) and its
  evaluation;
* its outputs, in ``<run_dir>/seed<s>/``: CSV (TensorBoard, wandb) logs, ``offline.pt`` (reusable as
  ``offline.checkpoint`` by a single run), ``summary.json``.

What the seeds share: the offline dataset (loaded once), the kappa schedule and SPOT's lambda (both
functions of the environment step, and all seeds step in lockstep), and torch's global RNG. Noise drawn
inside the updates (TD3's target smoothing) and by the exploration policies comes from it, for all
seeds at once (``vmap(randomness="different")``), so seed ``s``'s noise is not the noise of its single
run: a seed-batched run is reproducible (same ``seeds``, same results) and statistically equivalent to
single runs; without noise (TD3 with ``policy_noise`` ~ 0 and no exploration noise) it reproduces the
single runs to float rounding (tested).

Acting is batched as well (:mod:`torchrl_opt.pipeline.seed_envs`): the seeds' environments step
together and one vmapped call of the template actor acts for all of them, in fine-tuning, ``B_on``
collection and evaluation (envs that :mod:`torchrl_opt.direct_env` cannot step fall back to one
TorchRL collector per seed).

``<run_dir>/checkpoint.pt`` holds the whole group and is rewritten atomically every
``checkpoint.every`` steps of any phase; rerunning the same configuration resumes it, and a finished
group returns its summaries. ``<run_dir>/summary.json`` aggregates the seeds (mean and standard
deviation of the normalised scores). Seed batching always uses the functional update steps
(``acceleration.functional`` is implied).

Every backbone is batched (TD3+BC, IQL, and SPOT, whose VAE phase is batched too and whose actor
penalty reads each seed's own VAE, see :func:`~torchrl_opt.pipeline.functional.stack_module_states`).
The baselines' seed systems (``system=rlpd|...``) are not: they run one seed per process
(``-m seed=0,1,2``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs.utils import ExplorationType

from torchrl_opt.data.replay import DensityRatioEstimator
from torchrl_opt.data.scores import normalized_score
from torchrl_opt.data.seed_replay import SeedBatchedReplay, make_seed_batched_replay
from torchrl_opt.direct_env import use_direct
from torchrl_opt.env_state import env_restore_on_next_reset, env_snapshot
from torchrl_opt.objectives.density import DensityRatioLoss
from torchrl_opt.pipeline.agents import UpdateSpec
from torchrl_opt.pipeline.checkpoint import (
    CheckpointError,
)
from torchrl_opt.pipeline.config import ConfigError, RunConfig
from torchrl_opt.pipeline.functional import SeedBatchedStep, SeedStack, make_functional_step
from torchrl_opt.pipeline.logging import SeedGroupLogger
from torchrl_opt.pipeline.phases import collect_online
from torchrl_opt.pipeline.run import (
    RunContext,
    RunResult,
    _collector_checkpoint,
    _write_json_atomic,
    offline_checkpoint_path,
    prepare_data,
    resolve_device,
    validate,
)
from torchrl_opt.pipeline.seed_envs import (
    LockstepEnvs,
    SeedBatchedPolicy,
    SeedLockstepCollector,
    lockstep_returns,
)
from torchrl_opt.pipeline.updates import AccelerationConfig, accelerate
from torchrl_opt.schedules import KappaSchedule

__all__ = [
    "SeedBatchedDensityUpdater",
    "SeedCollectors",
    "SeedGroup",
    "SeedGroupResult",
    "run_seeds",
]

_CHECKPOINT_KEYS = (
    "fingerprint", "phase", "step", "members", "optimizers", "rng", "histories", "wall_clock",
    "updates_done",
)
#: longest seed list spelled out in a run-directory name (longer lists become a digest).
MAX_SEEDS_IN_NAME = 60


@dataclass
class SeedGroupResult:
    """What :func:`run_seeds` returns: the group's directory and summary, and every seed's result."""

    run_dir: Path
    summary: dict[str, Any]
    results: list[RunResult] = field(repr=False)

    @property
    def seeds(self) -> list[int]:
        return list(self.summary["seeds"])


def seeds_label(seeds: Sequence[int]) -> str:
    """``"seeds0-1-2"``: the seeds as one run-directory name part (a digest when very long)."""
    label = "-".join(str(s) for s in seeds)
    if len(label) > MAX_SEEDS_IN_NAME:
        digest = hashlib.sha1(label.encode()).hexdigest()[:12]
        label = f"{len(seeds)}x-h{digest}"
    return f"seeds{label}"


class SeedBatchedDensityUpdater:
    """Balanced replay's density-ratio step for ``S`` seeds at once (one vmapped functional step).

    The batched counterpart of :class:`~torchrl_opt.pipeline.phases.DensityRatioUpdater`:
    ``updater(replay, sample)`` draws ``batch_size`` offline and ``batch_size`` online rows per seed
    from the :class:`~torchrl_opt.data.seed_replay.SeedBatchedReplay`, takes one Adam step of every
    seed's estimator on ``L_w`` (:class:`~torchrl_opt.objectives.density.DensityRatioLoss`) and writes
    the RL batch's new priorities ``[S, B]`` (computed before the step, as Off2On) into the replay.
    Returns the losses ``[S]``.
    """

    def __init__(
        self,
        estimators: Sequence[DensityRatioEstimator],
        lr: float,
        batch_size: int,
        device: torch.device,
        acceleration: AccelerationConfig | None = None,
    ) -> None:
        self.estimators = list(estimators)
        losses = [DensityRatioLoss(estimator) for estimator in self.estimators]
        template = losses[0]
        step = make_functional_step(
            template, ("density_network_params",), template, ("loss_density",), lr
        )
        batched = SeedBatchedStep(SeedStack.of(losses), step)
        self.optimizer = batched.optimizer
        self.step = accelerate(batched, device, acceleration)
        self.batch_size = int(batch_size)

    def __call__(self, replay: SeedBatchedReplay, sample: TensorDictBase) -> torch.Tensor:
        offline, online = replay.sample_offline_online(self.batch_size)
        out = self.step(
            TensorDict(
                offline=offline, online=online, sample=sample, batch_size=offline.batch_size[:1]
            )
        )
        replay.update_priority(sample["index"], out["priority"])
        return out["loss_density"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "estimators": [estimator.state_dict() for estimator in self.estimators],
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["estimators"]) != len(self.estimators):
            raise CheckpointError(
                f"the checkpoint holds {len(state['estimators'])} density-ratio estimators, "
                f"this group has {len(self.estimators)} seeds"
            )
        for estimator, estimator_state in zip(self.estimators, state["estimators"]):
            estimator.load_state_dict(estimator_state)
        self.optimizer.load_state_dict(state["optimizer"])


class SeedCollectors:
    """One TorchRL ``Collector`` per seed (its env and exploration policy), stepped in lockstep.

    Each iteration takes one batch from every collector and yields them stacked, ``[S, T]`` (seed
    first, time last), which is what :func:`~torchrl_opt.pipeline.phases.finetune` expects of a
    seed-batched run. Seed ``i``'s transitions are exactly those its own collector produces.
    """

    def __init__(self, collectors: Sequence[Collector]) -> None:
        if not collectors:
            raise ValueError("SeedCollectors needs at least one collector")
        self.collectors = list(collectors)

    def __iter__(self) -> Iterator[TensorDictBase]:
        iterators = [iter(collector) for collector in self.collectors]
        while True:
            try:
                batches = [next(iterator) for iterator in iterators]
            except StopIteration:
                return
            yield torch.stack(batches)

    def shutdown(self) -> None:
        for collector in self.collectors:
            collector.shutdown()


class SeedGroup(RunContext):
    """The state of a seed-batched run. Use :func:`run_seeds`.

    ``members[i]`` is a :class:`~torchrl_opt.pipeline.run.RunContext` of seed ``seeds[i]`` (its agent,
    generator, environments, evaluation, logger and output directory). The group runs
    :class:`RunContext`'s own phase methods (the same loops, checkpoints and resume logic as one
    run) and overrides what they build: seed-batched update steps on the members' losses (one
    :class:`~torchrl_opt.pipeline.functional.SeedStack` per set of losses), one generator per seed,
    a :class:`~torchrl_opt.data.seed_replay.SeedBatchedReplay`, the seed-batched density-ratio step,
    every seed's collector and evaluation, and one checkpoint for the group. ``agent`` is the first
    seed's (the template whose code the batched steps run).
    """

    def __init__(self, cfg: RunConfig) -> None:  # not RunContext.__init__: that one is per seed
        validate(cfg)
        if cfg.seeds is None:
            raise ConfigError("a seed-batched run needs seeds=[...]")
        self.cfg = cfg
        self.seeds = list(cfg.seeds)
        self.device = resolve_device(cfg.device)
        self.acceleration = dataclasses.replace(cfg.acceleration, functional=True)
        experiment = cfg.logging.experiment or _group_experiment_name(cfg)
        self.run_dir = Path(cfg.run_dir or Path(cfg.logging.dir) / experiment)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        prepared = prepare_data(cfg, self.device)
        self.members = [
            RunContext(self._member_config(seed, experiment), prepared) for seed in self.seeds
        ]
        self.data = prepared.data
        self.env_id = prepared.env_id
        self.agent = self.members[0].agent
        self.logger = SeedGroupLogger(
            [member.logger for member in self.members], self.seeds, progress=cfg.logging.progress
        )
        self.fingerprint = {
            "seeds": self.seeds,
            "members": [member.fingerprint for member in self.members],
        }
        self.wall_clock: dict[str, float] = {}
        self.updates_done: dict[str, int] = {}
        #: ``B_on`` of every seed, ``[S, n_tau]``.
        self.online_data: TensorDictBase | None = None
        self.finetune_stack: SeedStack | None = None
        #: the stack whose ``actor_network_params`` the seeds' actors are views of now
        self._actor_stack: SeedStack | None = None

    def _member_config(self, seed: int, experiment: str) -> RunConfig:
        cfg = self.cfg
        offline = dataclasses.replace(cfg.offline, checkpoint=offline_checkpoint_path(cfg, seed))
        return dataclasses.replace(
            cfg,
            seed=seed,
            seeds=None,
            run_dir=str(self.run_dir / f"seed{seed}"),
            offline=offline,
            logging=dataclasses.replace(
                cfg.logging, progress=False, experiment=f"{experiment}-seed{seed}"
            ),
            acceleration=self.acceleration,
        )

    @property
    def agents(self) -> list:
        return [member.agent for member in self.members]

    @property
    def batch_generator(self) -> list[torch.Generator]:
        """One generator per seed: seed ``s`` draws the batches its single run would."""
        return [member.generator for member in self.members]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, torch.Tensor]:
        """Every seed's evaluation (its own env and episodes, as its single run's), as ``[S]``
        float64 tensors; all seeds step together with one batched policy call when their envs
        support direct stepping."""
        cfg = self.cfg
        envs = [
            member.make_env(seed=member.cfg.seed * 1_000_003 + step + 1, train=False)
            for member in self.members
        ]
        if not self._direct(envs):
            for env in envs:
                env.close()
            results = [member.evaluate(step) for member in self.members]
            return {
                key: torch.tensor([result[key] for result in results], dtype=torch.float64)
                for key in results[0]
            }
        lockstep = LockstepEnvs(envs, threads=cfg.acceleration.env_threads)
        returns = lockstep_returns(
            self._policy(), lockstep, cfg.eval.episodes, max_steps=cfg.eval.max_steps,
            device=self.device,
        ).mean(1)
        lockstep.close()
        for env in envs:
            env.close()
        scores = [
            normalized_score(cfg.dataset.task, float(value), ref=member.ref_scores)
            for value, member in zip(returns, self.members)
        ]
        return {"return": returns, "normalized_score": torch.tensor(scores, dtype=torch.float64)}

    # ------------------------------------------------------------------ batched acting
    def _direct(self, envs: list) -> bool:
        return all(use_direct(env, self.cfg.acceleration.direct_env) for env in envs)

    def _actor_params(self) -> TensorDictBase:
        if self._actor_stack is None:
            raise RuntimeError("no seed stack holds the actors yet (build the phase's updates)")
        return self._actor_stack.groups["actor_network_params"]

    def _policy(self, *, explore: bool = False) -> SeedBatchedPolicy:
        """Every seed's actor in one call (with the template's exploration noise if ``explore``)."""
        noise = self.agent.exploration_noise() if explore else None
        return SeedBatchedPolicy(self.agent.actor, self._actor_params, noise=noise)

    # ------------------------------------------------------------------ checkpoints
    checkpoint_keys = _CHECKPOINT_KEYS

    def model_state(self) -> dict[str, Any]:
        return {
            "members": [agent.state_dict() for agent in self.agents],
            "histories": [
                {k: list(v) for k, v in member.logger.history.items()} for member in self.members
            ],
        }

    def load_model_state(self, state: dict) -> None:
        for agent, agent_state in zip(self.agents, state["members"]):
            agent.load_state_dict(agent_state)

    def restore_histories(self, state: dict | None) -> None:
        for i, member in enumerate(self.members):
            member.logger.restore_history(state["histories"][i] if state is not None else {})

    def check_checkpoint(self, state: dict) -> None:
        if len(state["members"]) != len(self.members):
            raise CheckpointError(
                f"Checkpoint {self.checkpoint_path} holds {len(state['members'])} seeds, the "
                f"group has {len(self.members)}"
            )

    def generators(self) -> list[torch.Generator]:
        return self.batch_generator

    def restore_finished(self, state: dict) -> SeedGroupResult:
        """Load the final agents of a finished group and return its summaries."""
        paths = [self.run_dir / "summary.json", *(m.run_dir / "summary.json" for m in self.members)]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise CheckpointError(
                f"{self.checkpoint_path} marks the group finished but {missing} are missing"
            )
        kappa = self.initial_kappa()
        for member, agent_state in zip(self.members, state["members"]):
            member.build_finetune_loss(kappa)
            member.agent.load_state_dict(agent_state)
        summaries = [json.loads((m.run_dir / "summary.json").read_text()) for m in self.members]
        group = json.loads((self.run_dir / "summary.json").read_text())
        return SeedGroupResult(self.run_dir, group, self.results(summaries))

    # ------------------------------------------------------------------ what the phases build
    def load_offline_phase(self) -> None:
        for member in self.members:  # each seed's offline.checkpoint ({seed} substituted)
            member.load_offline_phase()

    def save_offline_phase(self) -> None:
        for member in self.members:
            member.save_offline_phase()

    def vae_update_spec(self) -> UpdateSpec:
        stack = SeedStack.of([agent.make_vae_loss() for agent in self.agents])
        return self.agent.vae_update(stack)

    def offline_update_specs(self) -> list[UpdateSpec]:
        stack = SeedStack.of([agent.offline_loss for agent in self.agents])
        self._actor_stack = stack
        return self.agent.offline_updates(stack)

    def build_finetune_losses(self, kappa: KappaSchedule | None) -> None:
        for member in self.members:
            member.build_finetune_loss(kappa)
        # one stack for pre-training and fine-tuning: both train the same losses
        self.finetune_stack = SeedStack.of([agent.finetune_loss for agent in self.agents])
        self._actor_stack = self.finetune_stack

    def pretrain_update_spec(self) -> UpdateSpec:
        return self.agent.pretrain_update(self.cfg.online_pretrain, self.finetune_stack)

    def finetune_update_specs(self) -> list[UpdateSpec]:
        return self.agent.finetune_updates(self.finetune_stack)

    def collect_online_data(self) -> None:
        """``n_tau`` steps of each seed's frozen offline policy in its own env (seed ``s + 1``),
        stacked ``[S, n_tau]``; all seeds step together when their envs support direct stepping."""
        n_tau = self.cfg.online_pretrain.n_tau
        t0 = time.perf_counter()
        self.logger.start_phase("collect B_on", n_tau * len(self.members))
        envs = [member.make_env(seed=member.cfg.seed + 1) for member in self.members]
        if self._direct(envs):
            collector = SeedLockstepCollector(
                LockstepEnvs(envs, threads=self.cfg.acceleration.env_threads), self._policy(),
                frames_per_batch=min(1000, n_tau), device=self.device,
                exploration_type=ExplorationType.DETERMINISTIC,
            )
            chunks, collected = [], 0
            for batch in collector:
                chunks.append(batch)
                collected += batch.shape[1]
                self.logger.advance(len(self.members) * min(batch.shape[1], n_tau))
                if collected >= n_tau:
                    break
            collector.shutdown()
            self.online_data = torch.cat(chunks, 1)[:, :n_tau]
        else:
            chunks = []
            for member, env in zip(self.members, envs):
                chunks.append(collect_online(env, member.agent.policy, n_tau, device=self.device))
                self.logger.advance(n_tau)
            self.online_data = torch.stack(chunks)
        for env in envs:
            env.close()
        self.logger.close_phase()
        self.wall_clock["collect"] = time.perf_counter() - t0

    def make_finetune_replay(self) -> SeedBatchedReplay:
        cfg, ft = self.cfg, self.cfg.finetune
        return make_seed_batched_replay(
            ft.replay, self.data, len(self.members), cfg.online_pretrain.n_tau + ft.env_steps,
            ft.batch_size, device=self.device, seeds=self.seeds, check_priorities=False,
        )

    def make_finetune_density(self) -> SeedBatchedDensityUpdater | None:
        ft = self.cfg.finetune
        if ft.replay != "balanced":
            return None
        return SeedBatchedDensityUpdater(
            [member.make_density_estimator() for member in self.members],
            ft.density_lr, ft.batch_size, self.device, self.acceleration,
        )

    def attach_kappa(self, kappa: KappaSchedule) -> None:
        # the updates read the template's buffer; the others keep each seed's state complete
        for agent in self.agents:
            kappa.attach(agent.finetune_loss.kappa)

    def penalty_step(self):
        steps = [member.penalty_step() for member in self.members]
        if steps[0] is None:
            return None

        def step_all() -> None:  # every seed's penalty state (its lambda buffer) moves
            for step in steps:
                step()

        return step_all

    def make_finetune_collector(self, state: dict | None) -> tuple[Any, Any]:
        """Every seed's env (seed ``s + 2``, restored when resuming) and exploration policy,
        stepped in lockstep: one batched policy call for all seeds when the envs support direct
        stepping, else one collector per seed. The snapshot function returns the env snapshots."""
        envs = [member.make_env(seed=member.cfg.seed + 2) for member in self.members]
        if self._direct(envs):
            if state is not None:
                for env, snapshot in zip(envs, state["env"]):
                    env_restore_on_next_reset(env, snapshot)
            collector = SeedLockstepCollector(
                LockstepEnvs(envs, threads=self.cfg.acceleration.env_threads),
                self._policy(explore=True), device=self.device,
                prefetch=self.cfg.finetune.prefetch_action,
            )
            snapshots = lambda: [env_snapshot(env) for env in envs]  # noqa: E731
            return collector, _collector_checkpoint(collector, snapshots, state)
        for env in envs:
            env.close()
        collectors, snapshots = [], []
        for i, member in enumerate(self.members):
            collector, snapshot = member.make_finetune_collector(
                None if state is None else {"env": state["env"][i]}
            )
            collectors.append(collector)
            snapshots.append(snapshot)
        return SeedCollectors(collectors), lambda: {"env": [s()["env"] for s in snapshots]}

    # ------------------------------------------------------------------ summaries
    def finish(self) -> SeedGroupResult:
        """Every seed's ``summary.json`` (its own scores; the group's wall-clock), the group's,
        the group's checkpoint marked done; the group's result."""
        summaries = []
        for member in self.members:
            member.wall_clock = dict(self.wall_clock)
            member.updates_done = dict(self.updates_done)
            summary = member.summary()
            summary["seed_group"] = {"seeds": self.seeds, "run_dir": str(self.run_dir)}
            _write_json_atomic(member.run_dir / "summary.json", summary)
            summaries.append(summary)
        group = self._group_summary(summaries)
        _write_json_atomic(self.run_dir / "summary.json", group)
        self.save("done", 0, [])
        self.logger.close_phase()
        return SeedGroupResult(self.run_dir, group, self.results(summaries))

    def _group_summary(self, summaries: list[dict[str, Any]]) -> dict[str, Any]:
        scores = ("final_normalized_score", "best_normalized_score", "offline_normalized_score")
        out: dict[str, Any] = {
            "config": dataclasses.asdict(self.cfg),
            "env_id": self.env_id,
            "device": str(self.device),
            "seeds": self.seeds,
            "per_seed": {
                str(seed): {"run_dir": str(member.run_dir), **{k: summary[k] for k in scores}}
                for seed, member, summary in zip(self.seeds, self.members, summaries)
            },
        }
        for key in scores:
            out[key], out[f"{key}_std"] = _mean_std([summary[key] for summary in summaries])
        out["wall_clock_s"] = dict(self.wall_clock)
        out["updates"] = dict(self.updates_done)
        out["updates_per_s"] = {
            phase: self.updates_done[phase] / seconds
            for phase, seconds in self.wall_clock.items()
            if phase in self.updates_done and seconds > 0
        }
        out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return out

    def results(self, summaries: list[dict[str, Any]]) -> list[RunResult]:
        return [
            RunResult(member.run_dir, summary, dict(member.logger.history), member.agent)
            for member, summary in zip(self.members, summaries)
        ]


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and (population) standard deviation over seeds; ``None`` when a seed has no value."""
    if not values or any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _group_experiment_name(cfg: RunConfig) -> str:
    method = "opt" if cfg.finetune.use_q_on else "baseline"
    return (
        f"{cfg.dataset.task}-{cfg.dataset.kind}-{cfg.backbone.name}-{method}-"
        f"{seeds_label(cfg.seeds)}"
    )


def run_seeds(cfg: RunConfig) -> SeedGroupResult:
    """Run the seeds ``cfg.seeds`` of ``cfg`` together (see the module docstring); resumable.

    The same as :func:`torchrl_opt.pipeline.run.run` with ``cfg.seeds`` set.
    """
    from torchrl_opt.pipeline.run import run

    if cfg.seeds is None:
        raise ConfigError("run_seeds needs cfg.seeds=[...]")
    return run(cfg)

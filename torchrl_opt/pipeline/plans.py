"""Every method is a plan: a declarative list of phases over the same few loops.

A phase says *what* runs (which agent updates, how many steps, which policy acts, which replay);
the run object (:class:`~torchrl_opt.pipeline.context.Run`) says *how* (engines, seeds,
checkpoints) and the loops (:mod:`~torchrl_opt.pipeline.phases`) do it. :func:`make_plan` builds
the plan of ``cfg.method``:

================  ===========================================================================
method            phases
================  ===========================================================================
``opt``           [vae], offline, start online (+ Q_on), collect ``B_on`` (N_tau, frozen
                  policy), online pre-training (Eq. 3), fine-tuning (Eq. 4, kappa, replay)
``vanilla``       the same without Q_on and online pre-training
``rlpd``          random start steps, fine-tuning (symmetric replay, UTD ``rlpd.utd``)
``rlpd_offline``  offline (SAC ensemble), collect ``B_on``, RLPD fine-tuning
``rlpd_opt``      offline, start online (+ a Q_on ensemble), collect, pre-training, RLPD
                  fine-tuning with kappa
``wsrl``          offline, warm-up (K steps of the frozen policy), fine-tuning on online data only
``porl``          BC (or offline), fresh critics, seed rows (epsilon-greedy), pre-sampling (critic
                  only, frozen epsilon-greedy policy), fine-tuning on online data only
================  ===========================================================================

A new method is a new plan function here (plus an agent if it has a new backbone): see
``docs/adding-a-method.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torchrl_opt.pipeline.config import RunConfig

if TYPE_CHECKING:  # the run object executes phases; plans only describe them
    from torchrl_opt.pipeline.context import Run

__all__ = [
    "PLANS",
    "Collect",
    "Finetune",
    "LoadOffline",
    "Phase",
    "Plan",
    "Pretrain",
    "SaveOffline",
    "StartOnline",
    "Train",
    "make_plan",
]


class Phase:
    """A step of a plan. ``resumable`` phases run a loop and write checkpoints under their
    ``name``; the others only change what the agent holds (and are redone when a run resumes past
    them, so that the checkpoint's state fits)."""

    name: str
    resumable: ClassVar[bool] = True

    def execute(self, run: Run, resume: dict | None) -> None:
        """Run this phase on ``run`` (``resume``: its checkpointed state, or ``None``); every phase
        class defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define execute()")

    def redo(self, run: Run) -> None:
        """What resuming past this phase must redo (nothing for a resumable phase)."""


@dataclass(frozen=True)
class Train(Phase):
    """``steps`` gradient steps of the agent's ``updates`` kind (``vae``, ``offline``, ``bc``) on
    uniform batches of ``B_off``; the policy is evaluated every ``eval_every`` steps and at the
    end when ``evaluate``."""

    name: str
    updates: str
    steps: int
    evaluate: bool = False
    eval_every: int = 0

    def execute(self, run: Run, resume: dict | None) -> None:
        run.train(self, resume)


@dataclass(frozen=True)
class LoadOffline(Phase):
    """Load ``offline.checkpoint`` (each seed's ``offline.pt``) instead of the offline phases."""

    name: str = "load_offline"
    resumable: ClassVar[bool] = False

    def execute(self, run: Run, resume: dict | None) -> None:
        run.load_offline()


@dataclass(frozen=True)
class SaveOffline(Phase):
    """Write each seed's ``offline.pt`` (reusable as ``offline.checkpoint``)."""

    name: str = "save_offline"
    resumable: ClassVar[bool] = False

    def execute(self, run: Run, resume: dict | None) -> None:
        run.save_offline()


@dataclass(frozen=True)
class StartOnline(Phase):
    """Build the online loss from the offline one: plus fresh online critics with ``q_on``,
    with fresh critics replacing the offline ones with ``fresh_critics`` (PORL)."""

    q_on: bool
    fresh_critics: bool = False
    name: str = "start_online"
    resumable: ClassVar[bool] = False

    def execute(self, run: Run, resume: dict | None) -> None:
        run.start_online(self)

    def redo(self, run: Run) -> None:
        run.start_online(self)


@dataclass(frozen=True)
class Collect(Phase):
    """``steps`` environment steps of policy ``policy`` (a kind of
    :data:`~torchrl_opt.pipeline.acting.POLICY_KINDS`) into ``B_on``, on env seed
    ``seed + env_offset``."""

    name: str
    steps: int
    policy: str
    env_offset: int = 1

    def execute(self, run: Run, resume: dict | None) -> None:
        run.collect(self, resume)


@dataclass(frozen=True)
class Pretrain(Phase):
    """``steps`` online pre-training updates of the online critics on ``batch_size`` rows of
    ``B_off`` and of ``B_on`` each (Eq. 3 / Eq. 8 and its ablation modes)."""

    steps: int
    batch_size: int
    name: str = "pretrain"

    def execute(self, run: Run, resume: dict | None) -> None:
        run.pretrain(self, resume)


@dataclass(frozen=True)
class Finetune(Phase):
    """``env_steps`` environment steps of ``policy`` with ``utd`` updates of kind ``updates`` each.

    The replay (strategy ``replay``, ``offline_fraction`` for ``symmetric``) is built over ``B_off``
    with room for ``online_capacity`` online rows and starts with ``B_on``, unless
    ``continue_replay`` (the previous fine-tuning phase's replay goes on). ``kappa``: the kappa
    schedule drives the loss; ``keep_optimizers``: these steps continue the previous phase's
    optimiser state; ``evaluate``: periodic evaluation (``eval/``).
    """

    name: str
    env_steps: int
    utd: int
    replay: str
    online_capacity: int
    offline_fraction: float = 0.5
    updates: str = "finetune"
    policy: str = "explore"
    env_offset: int = 2
    kappa: bool = False
    continue_replay: bool = False
    keep_optimizers: tuple[str, ...] = ()
    evaluate: bool = True

    def execute(self, run: Run, resume: dict | None) -> None:
        run.finetune(self, resume)


@dataclass(frozen=True)
class Plan:
    """A method's phases, in order."""

    method: str
    phases: tuple[Phase, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"plan {self.method!r} repeats a phase name: {names}")

    @property
    def names(self) -> list[str]:
        return [phase.name for phase in self.phases]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"plan {self.method!r} has no phase {name!r}; its phases: {self.names}")
        return self.names.index(name)

    def describe(self) -> list[dict[str, Any]]:
        """The phases as plain dicts (kind and settings), for summaries and fingerprints."""
        return [
            {"kind": type(phase).__name__, **{k: v for k, v in vars(phase).items()}}
            for phase in self.phases
        ]


# ----------------------------------------------------------------------------------- plans
def offline_phases(cfg: RunConfig, updates: str = "offline", steps: int | None = None) -> list[Phase]:
    """Offline pre-training (SPOT's VAE first), then ``offline.pt``; or ``offline.checkpoint``."""
    if cfg.offline.checkpoint is not None:
        return [LoadOffline()]
    phases: list[Phase] = []
    if cfg.backbone.name == "spot":
        phases.append(Train("vae", "vae", cfg.backbone.vae_steps))
    steps = cfg.offline.steps if steps is None else steps
    phases += [
        Train(updates, updates, steps, evaluate=True, eval_every=cfg.offline.eval_every),
        SaveOffline(),
    ]
    return phases


def _opt_online(
    cfg: RunConfig, *, q_on: bool, utd: int, replay: str, offline_fraction: float = 0.5, pretrain: bool | None = None
) -> list[Phase]:
    """OPT's online phases (and vanilla fine-tuning's, without ``q_on``); ``pretrain`` (default
    ``q_on``) runs online pre-training of the online critics (of ``Q_off``: the no_qon ablation)."""
    op, ft = cfg.online_pretrain, cfg.finetune
    phases: list[Phase] = [StartOnline(q_on=q_on)]
    if op.n_tau > 0:
        phases.append(Collect("collect", op.n_tau, "deterministic"))
    if (q_on if pretrain is None else pretrain) and op.steps > 0:
        phases.append(Pretrain(op.steps, op.batch_size))
    phases.append(Finetune(
        "finetune", ft.env_steps, utd, replay, op.n_tau + ft.env_steps,
        offline_fraction=offline_fraction, kappa=q_on,
    ))
    return phases


def opt_plan(cfg: RunConfig) -> Plan:
    """OPT; with ``online_pretrain.critic=q_off`` the paper's "without Q_on" ablation (no new
    critic: ``Q_off`` is pre-trained online, then fine-tuned alone)."""
    ft = cfg.finetune
    q_on = cfg.online_pretrain.critic == "q_on"
    online = _opt_online(cfg, q_on=q_on, utd=ft.utd, replay=ft.replay, pretrain=True)
    return Plan("opt", (*offline_phases(cfg), *online))


def vanilla_plan(cfg: RunConfig) -> Plan:
    ft = cfg.finetune
    return Plan("vanilla", (*offline_phases(cfg), *_opt_online(cfg, q_on=False, utd=ft.utd, replay=ft.replay)))


def rlpd_plan(cfg: RunConfig) -> Plan:
    rlpd, ft = cfg.rlpd, cfg.finetune
    phases: list[Phase] = [StartOnline(q_on=False)]
    if rlpd.start_steps > 0:
        phases.append(Collect("start", rlpd.start_steps, "uniform"))
    phases.append(Finetune(
        "finetune", ft.env_steps, rlpd.utd, "symmetric", rlpd.start_steps + ft.env_steps,
        offline_fraction=rlpd.offline_fraction,
    ))
    return Plan("rlpd", tuple(phases))


def rlpd_offline_plan(cfg: RunConfig) -> Plan:
    rlpd = cfg.rlpd
    online = _opt_online(cfg, q_on=False, utd=rlpd.utd, replay="symmetric", offline_fraction=rlpd.offline_fraction)
    return Plan("rlpd_offline", (*offline_phases(cfg), *online))


def rlpd_opt_plan(cfg: RunConfig) -> Plan:
    rlpd = cfg.rlpd
    online = _opt_online(cfg, q_on=True, utd=rlpd.utd, replay="symmetric", offline_fraction=rlpd.offline_fraction)
    return Plan("rlpd_opt", (*offline_phases(cfg), *online))


def wsrl_plan(cfg: RunConfig) -> Plan:
    wsrl, ft = cfg.wsrl, cfg.finetune
    warmup = "deterministic" if wsrl.warmup_deterministic else "stochastic"
    return Plan("wsrl", (
        *offline_phases(cfg),
        StartOnline(q_on=False),
        Collect("warmup", wsrl.warmup_steps, warmup),
        Finetune("finetune", ft.env_steps, wsrl.utd, "online", wsrl.warmup_steps + ft.env_steps),
    ))


def porl_plan(cfg: RunConfig) -> Plan:
    porl, ft = cfg.porl, cfg.finetune
    if porl.policy_source == "bc":
        pretraining = offline_phases(cfg, "bc", porl.bc_steps)
    else:
        pretraining = offline_phases(cfg)
    seed_rows = ft.batch_size
    capacity = porl.presample_steps + ft.env_steps
    phases: list[Phase] = [
        *pretraining,
        StartOnline(q_on=False, fresh_critics=True),
        Collect("presample_seed", seed_rows, "epsilon"),
    ]
    presampling = porl.presample_steps > seed_rows
    if presampling:
        phases.append(Finetune(
            "presample", porl.presample_steps - seed_rows, porl.utd, "online", capacity,
            updates="critic", policy="epsilon", env_offset=3, evaluate=False,
        ))
    phases.append(Finetune(
        "finetune", ft.env_steps, porl.utd, "online", capacity,
        continue_replay=presampling, keep_optimizers=("critic",) if presampling else (),
    ))
    return Plan("porl", tuple(phases))


PLANS = {
    "opt": opt_plan,
    "vanilla": vanilla_plan,
    "rlpd": rlpd_plan,
    "rlpd_offline": rlpd_offline_plan,
    "rlpd_opt": rlpd_opt_plan,
    "wsrl": wsrl_plan,
    "porl": porl_plan,
}


def make_plan(cfg: RunConfig) -> Plan:
    """The plan of ``cfg.method`` (``cfg`` validated)."""
    return PLANS[cfg.method](cfg)

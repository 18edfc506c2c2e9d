"""Configuration of a run: the schema (one dataclass per concern) and all of its validation.

The dataclasses double as Hydra structured configs (``register_configs``), so a misspelt key in a
recipe or on the command line is rejected with the offending key named. :func:`validate` is the one
place that checks values: every other module may assume a validated :class:`RunConfig`.

Defaults are the paper's settings (``shared/reference/opt-algorithm.md``) for OPT and its backbones,
and each peer's published settings in its own section (``rlpd``, ``wsrl``, ``porl``); entries left
``None`` take the backbone's own default (see :class:`BackboneConfig`). The recipes' ``scale=demo``
preset shrinks budgets and networks of every method for a CPU demo.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchrl_opt.data.generate import RANDOM_POLICIES
from torchrl_opt.objectives.meta import META_MODES

__all__ = [
    "BACKBONES",
    "METHODS",
    "AccelerationConfig",
    "BackboneConfig",
    "CheckpointConfig",
    "ConfigError",
    "DatasetConfig",
    "EvalConfig",
    "FinetuneConfig",
    "KappaConfig",
    "LoggingConfig",
    "OfflineConfig",
    "OnlinePretrainConfig",
    "PORLConfig",
    "RLPDConfig",
    "RunConfig",
    "WSRLConfig",
    "offline_checkpoint_path",
    "register_configs",
    "resolve_backbone",
    "resolve_device",
    "resolve_presets",
    "to_run_config",
    "validate",
]

#: the methods a run can execute, one plan each (:mod:`torchrl_opt.pipeline.plans`).
METHODS = ("opt", "vanilla", "rlpd", "rlpd_offline", "rlpd_opt", "wsrl", "porl")
#: ``td3`` (TD3+BC offline), ``spot``, ``iql``: OPT's backbones; ``sac``: the SAC critic-ensemble
#: agent of RLPD, WSRL and PORL.
BACKBONES = ("td3", "spot", "iql", "sac")
#: which backbones each method trains.
METHOD_BACKBONES = {
    "opt": ("td3", "spot", "iql"),
    "vanilla": ("td3", "spot", "iql"),
    "rlpd": ("sac",),
    "rlpd_offline": ("sac",),
    "rlpd_opt": ("sac",),
    "wsrl": ("sac",),
    "porl": ("sac",),
}
REPLAYS = ("balanced", "symmetric", "online", "uniform")
KAPPA_KINDS = ("preset", "linear", "constant", "adaptive")
DATASET_SOURCES = ("generated", "minari", "local_minari", "d4rl_hdf5")
LOGGER_BACKENDS = ("csv", "tensorboard", "wandb", "none")
GRAPH_BACKENDS = ("tensordict", "torch")
LOSS_FUNCTIONS = ("l2", "smooth_l1", "l1")
PORL_POLICY_SOURCES = ("bc", "offline")
ACTOR_Q_REDUCTIONS = ("mean", "min")


class ConfigError(ValueError):
    """A configuration entry is unknown, of the wrong type or out of its domain; the message names
    the entry by its dotted key (``finetune.utd``)."""


# --------------------------------------------------------------------------------------- schema
@dataclass
class DatasetConfig:
    """Where the offline data come from.

    ``source``: ``"generated"`` (built locally on first use and cached, see
    ``torchrl_opt.data.generate``), ``"minari"`` (a Minari id, downloaded when the network allows),
    ``"local_minari"`` (a Minari id already on disk) or ``"d4rl_hdf5"`` (``path`` to a D4RL file).
    """

    task: str = "hopper"
    kind: str = "random"
    source: str = "generated"
    id: str | None = None
    path: str | None = None
    size: int = 1_000_000
    generation_seed: int = 0
    #: how a generated ``random`` dataset acts: ``uniform`` actions (default: its returns match
    #: D4RL's random references best, see docs/data.md) or ``init`` (a freshly initialised
    #: tanh-Gaussian SAC actor, D4RL's description).
    random_policy: str = "uniform"
    #: processes that generate a dataset (``null``: one per core; ``1``: in this process); the data
    #: are the same for any count.
    workers: int | None = None
    #: added to every reward the agent trains on, offline and online, for every method (AntMaze:
    #: -1, as IQL/SPOT); evaluation reports the env's raw returns.
    reward_shift: float = 0.0


@dataclass
class BackboneConfig:
    """Networks and per-backbone hyperparameters.

    ``name``: ``td3`` (TD3, TD3+BC offline), ``spot``, ``iql`` or ``sac`` (the critic-ensemble SAC of
    RLPD / WSRL / PORL). Entries left ``None`` take the published setting of the backbone on the
    task's domain (and of the method: WSRL's agent), from :mod:`torchrl_opt.presets` (CORL's SPOT
    and IQL, RLPD, WSRL), filled in when the configuration is validated.
    """

    name: str = "td3"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    actor_layer_norm: bool | None = None
    critic_layer_norm: bool | None = None
    #: dropout after each hidden layer of the actor (CORL's IQL on Adroit: 0.1).
    actor_dropout: float | None = None
    gamma: float = 0.99
    #: the online phases' discount (``None``: ``gamma``; CORL's SPOT on AntMaze: 0.995 online, 0.99
    #: offline).
    online_gamma: float | None = None
    tau: float = 0.005
    actor_lr: float | None = None
    critic_lr: float = 3e-4
    #: the critics' TD loss (the paper and CORL use the squared error; TorchRL's losses default to
    #: ``smooth_l1``, so the pipeline always passes this explicitly).
    loss_function: str = "l2"
    num_qvalue_nets: int | None = None
    # TD3 / TD3+BC / SPOT
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    actor_delay: int = 2
    bc_alpha: float = 2.5
    online_bc_alpha: float | None = None
    exploration_noise: float = 0.1
    # SPOT
    vae_steps: int = 100_000
    vae_lr: float = 1e-3
    vae_beta: float = 0.5
    vae_hidden: list[int] = field(default_factory=lambda: [750, 750])
    spot_lambda: float | None = None
    spot_lambda_end: float | None = None
    spot_cooling_steps: int = 1_000_000
    # IQL
    expectile: float | None = None
    temperature: float | None = None
    value_lr: float = 3e-4
    # SAC ensemble
    num_min_qs: int = 2
    alpha_lr: float | None = None
    alpha_init: float = 1.0
    #: an explicit target entropy; ``None``: ``-target_entropy_per_dim * |A|``.
    target_entropy: float | None = None
    #: RLPD: 0.5 (``-|A| / 2``); WSRL: 1.0 (``-|A|``).
    target_entropy_per_dim: float | None = None
    backup_entropy: bool | None = None
    #: ``None``: the actor and temperature step once per environment step online (every ``utd``
    #: updates, RLPD), every update offline.
    actor_every: int | None = None
    #: the critic-ensemble reduction the actor maximises: ``mean`` (RLPD) or ``min`` (WSRL).
    actor_q_reduction: str | None = None
    #: draw the target critics' pair with replacement (WSRL) or without (RLPD).
    subset_replacement: bool | None = None
    #: the TD target's max over sampled next actions of the subset's min (WSRL on AntMaze).
    max_target_backup: bool | None = None


@dataclass
class OfflineConfig:
    """Phase 1: offline pre-training. ``checkpoint`` reuses a finished phase's ``offline.pt``
    (``{seed}`` in the path stands for the seed) instead of training."""

    #: ``None``: 1M (the paper's), WSRL's per-domain length for ``method=wsrl``.
    steps: int | None = None
    batch_size: int = 256
    checkpoint: str | None = None
    #: ``None``: CORL's choice for IQL (normalised states), off for the others (OEMA's TD3+BC).
    normalize_observations: bool | None = None
    eval_every: int = 50_000


@dataclass
class OnlinePretrainConfig:
    """Phase 2: collect ``n_tau`` steps with the frozen offline policy, then ``steps`` updates of Q_on.

    ``mode``: ``meta`` (Eq. 3), ``online`` (B_on only), ``joint`` (Eq. 10), ``offline``.
    ``steps=0`` leaves Q_on at its random initialisation (the paper's random-init ablation).
    ``critic``: ``q_on`` (OPT: a new Q_on is pre-trained, then mixed with Q_off by kappa) or
    ``q_off`` (the paper's "without Q_on" ablation: Q_off itself is pre-trained with the same
    objective and fine-tuning uses it alone; TD3 / SPOT backbones).
    """

    n_tau: int = 25_000
    steps: int = 50_000
    batch_size: int = 256
    mode: str = "meta"
    #: 1 (default: OEMA's code takes the inner gradient without ``create_graph``) or 2.
    order: int = 1
    alpha: float = 3e-4
    loss_ratio_weighting: bool = False
    lr: float = 3e-4
    critic: str = "q_on"


@dataclass
class KappaConfig:
    """Kappa schedule: ``preset`` (Appendix H for the task/dataset), ``linear``, ``constant``, or
    ``adaptive`` (an extension, not the paper's method: kappa follows the critics' measured accuracy
    on online data, :class:`~torchrl_opt.schedules.AdaptiveKappa`, starting at ``init``, bounded to
    ``[adaptive_min, adaptive_max]``, averaging at ``adaptive_rate``; one seed, TD3 / SPOT / IQL)."""

    kind: str = "preset"
    #: ``None``: 1.0 (``linear``, ``constant``), 0.5 (``adaptive``: equal weight until the critics'
    #: errors are measured).
    init: float | None = None
    end: float = 1.0
    t_decay: int = 0
    start: int = 0
    adaptive_min: float = 0.1
    adaptive_max: float = 0.9
    adaptive_rate: float = 0.005


@dataclass
class FinetuneConfig:
    """Phase 3: online fine-tuning (``env_steps`` environment steps for every method).

    ``utd``, ``replay``, ``kappa``, the density-ratio settings and ``prefetch_action`` are those of
    OPT and vanilla fine-tuning; the peers read theirs from their own sections.
    ``prefetch_action``: compute the next action right after each env step, before that step's
    updates, so that stepping the env overlaps asynchronous GPU updates (a one-step policy lag;
    needs direct env stepping, see ``acceleration.direct_env``). Off by default.
    """

    env_steps: int = 275_000
    utd: int = 5
    batch_size: int = 256
    replay: str = "balanced"
    kappa: KappaConfig = field(default_factory=KappaConfig)
    density_lr: float = 3e-4
    temperature: float = 5.0
    prefetch_action: bool = False


@dataclass
class EvalConfig:
    """Deterministic evaluation every ``every`` fine-tuning env steps, over ``episodes`` episodes
    (``None``: 10, the paper's; WSRL's 20 for ``method=wsrl``)."""

    every: int = 5_000
    episodes: int | None = None
    max_steps: int = 1000


@dataclass
class LoggingConfig:
    """``backend``: ``csv`` (default, ``<seed dir>/logs/scalars/<key>.csv``), ``tensorboard``,
    ``wandb`` or ``none``; ``experiment`` names the run (wandb / TensorBoard, run directory)."""

    backend: str = "csv"
    dir: str = "runs"
    experiment: str | None = None
    progress: bool = True
    log_every: int = 1_000
    #: write ``<run_dir>/report/report.md`` (scores, value-bias curves as PNG, the summary table;
    #: :func:`torchrl_opt.analysis.write_run_report`) when the run finishes, and print its path.
    report: bool = True


@dataclass
class CheckpointConfig:
    """Atomic checkpoints every ``every`` steps of any phase (0: only at phase ends); ``resume``
    continues from ``<run_dir>/checkpoint.pt`` when it exists."""

    every: int = 25_000
    resume: bool = True


@dataclass
class AccelerationConfig:
    """How update steps and environments run. ``None`` means "on for CUDA, off for CPU".

    Attributes:
        compile: wrap steps in ``torch.compile``.
        cudagraphs: replay steps as CUDA graphs (CUDA only), with ``graph_backend``.
        compile_mode: ``torch.compile`` mode (``None`` = default).
        warmup: eager calls before a CUDA graph is captured.
        functional: build one-seed steps with :mod:`torchrl_opt.pipeline.functional` (``torch.func``
            gradient + tensor Adam + Polyak targets in one function, captured whole by
            ``torch.compile(fullgraph=True)``); seed groups always use it. Off by default.
        graph_backend: ``"tensordict"`` (``tensordict.nn.CudaGraphModule``, which synchronises
            before every replay) or ``"torch"`` (:class:`~torchrl_opt.pipeline.cudagraph.CudaGraphStep`,
            a plain ``torch.cuda.CUDAGraph`` replay without synchronisation).
        direct_env: step environments with :mod:`torchrl_opt.direct_env` (TorchRL's exact
            transitions at a fraction of the host time). ``None``: wherever supported (MuJoCo);
            ``True``: required; ``False``: always TorchRL's ``Collector`` / ``env.rollout``.
        env_threads: a seed group steps its seeds' environments in a pool of that many threads
            (0: one after the other).
    """

    compile: bool | None = None
    cudagraphs: bool | None = None
    compile_mode: str | None = None
    warmup: int = 5
    functional: bool = False
    graph_backend: str = "tensordict"
    direct_env: bool | None = None
    env_threads: int = 0


@dataclass
class RLPDConfig:
    """RLPD (Ball et al. 2023), also the online phase of ``rlpd_offline`` and ``rlpd_opt``:
    ``start_steps`` uniform-random actions before learning (``rlpd`` only), UTD ``utd``,
    ``offline_fraction`` of every batch from ``B_off``."""

    utd: int = 20
    start_steps: int = 5_000
    offline_fraction: float = 0.5


@dataclass
class WSRLConfig:
    """WSRL (Zhou et al. 2024): ``warmup_steps`` (K) of the frozen pre-trained policy seed an
    online-only buffer, then UTD ``utd``. ``warmup_deterministic``: act with the policy's mode during
    warm-up (default: sample it)."""

    warmup_steps: int = 5_000
    utd: int = 4
    warmup_deterministic: bool = False
    #: the offline phase's regulariser (``None``: the domain's, :data:`torchrl_opt.presets.WSRL_PRESETS`):
    #: ``cql`` (locomotion), ``calql`` (AntMaze, Adroit) or ``none`` (RLPD-style SAC). Its length is
    #: ``offline.steps`` (``None``: WSRL's 250k / 1M / 20k).
    offline_regularizer: str | None = None
    cql_alpha: float | None = None
    cql_lagrange: bool | None = None
    cql_target_action_gap: float | None = None
    #: Cal-QL's sparse-reward rule: the raw per-step reward of a failed episode (AntMaze 0; the
    #: dataset's reward shift is added), or ``None`` (dense rewards: no rule).
    failure_reward: float | None = None


@dataclass
class PORLConfig:
    """PORL: policy-only fine-tuning.

    ``policy_source``: ``"bc"`` (behaviour cloning for ``bc_steps`` on ``B_off``) or ``"offline"``
    (the RLPD-style offline phase's actor; its critics are discarded). ``presample_steps`` with the
    frozen policy and epsilon-greedy exploration (``epsilon``: probability of a uniform action); the
    first ``finetune.batch_size`` of them seed the buffer before any update. ``presample_steps`` and
    ``epsilon`` are not given in the PORL summary available here: configuration, not fact.
    """

    utd: int = 16
    presample_steps: int = 5_000
    epsilon: float = 0.1
    policy_source: str = "bc"
    bc_steps: int = 100_000
    bc_lr: float = 3e-4


@dataclass
class RunConfig:
    """One run: a method (its plan of phases) over one seed or a seed group."""

    seed: int = 0
    #: a seed group: these seeds trained together in one process, every update of all seeds one
    #: vmapped graph; ``seed`` is then unused. ``None`` (default): one run of ``seed``.
    seeds: list[int] | None = None
    #: one of :data:`METHODS`: ``opt`` (OPT, its ablations through the sections below), ``vanilla``
    #: (the backbone's plain fine-tuning), ``rlpd``, ``rlpd_offline``, ``rlpd_opt``, ``wsrl``, ``porl``.
    method: str = "opt"
    device: str = "auto"
    env_id: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    online_pretrain: OnlinePretrainConfig = field(default_factory=OnlinePretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    acceleration: AccelerationConfig = field(default_factory=AccelerationConfig)
    rlpd: RLPDConfig = field(default_factory=RLPDConfig)
    wsrl: WSRLConfig = field(default_factory=WSRLConfig)
    porl: PORLConfig = field(default_factory=PORLConfig)
    run_dir: str | None = None

    @property
    def seed_list(self) -> list[int]:
        """The run's seeds: ``seeds``, or ``[seed]`` for a single run."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


def register_configs() -> None:
    """Register :class:`RunConfig` as the Hydra schema ``opt_schema``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="opt_schema", node=RunConfig)


# --------------------------------------------------------------------------------------- parsing
def to_run_config(cfg: Any) -> RunConfig:
    """Turn a Hydra/OmegaConf config (or a dict) into a validated :class:`RunConfig`.

    Raises:
        ConfigError: for an unknown key, a value OmegaConf cannot convert, a value of the wrong
            type or out of its domain (the message names the key).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, RunConfig):
        resolve_presets(cfg)
        validate(cfg)
        return cfg
    if OmegaConf.is_config(cfg):
        # Hydra's `+key=value` lands on the node itself; as a plain container the merge into the
        # structured schema rejects it like any other unknown key.
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        structured = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        out = OmegaConf.to_object(structured)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"bad configuration entry {where}{message}") from err
    resolve_presets(out)
    validate(out)
    return out


def resolve_presets(cfg: RunConfig) -> None:
    """Fill the entries left ``None`` with the published settings of the backbone and method on the
    task's domain (:mod:`torchrl_opt.presets`), in place; explicit values are kept. Unknown task,
    backbone or method names are left for :func:`validate` to report."""
    from torchrl_opt.data.datasets import TASKS
    from torchrl_opt.objectives.spot import UnknownSPOTPresetError, spot_lambda_preset
    from torchrl_opt.presets import method_presets

    kappa = cfg.finetune.kappa
    if kappa.init is None:
        kappa.init = 0.5 if kappa.kind == "adaptive" else 1.0
    info = TASKS.get(cfg.dataset.task)
    b = cfg.backbone
    if info is None or b.name not in BACKBONES or cfg.method not in METHODS:
        return
    if b.name == "spot" and b.spot_lambda is None and info.domain == "antmaze":
        try:
            b.spot_lambda = spot_lambda_preset(cfg.dataset.task, cfg.dataset.kind)
        except UnknownSPOTPresetError as err:
            raise ConfigError(f"backbone.spot_lambda: no SPOT preset for this dataset, set it ({err})") from err
    resolve_backbone(b, info.domain, cfg.method)
    for dotted, value in method_presets(cfg.method, b.name, info.domain).items():
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) is None:
            setattr(getattr(cfg, section), key, value)


def resolve_backbone(backbone: BackboneConfig, domain: str | None = None, method: str = "opt") -> BackboneConfig:
    """Fill ``backbone``'s entries left ``None`` with the published settings of the backbone on
    ``domain`` for ``method`` (:func:`torchrl_opt.presets.backbone_presets`; ``domain=None``: the
    backbone's own defaults), in place, and return it; ``online_gamma`` defaults to ``gamma``."""
    from torchrl_opt.presets import backbone_presets

    if backbone.name not in BACKBONES:
        raise ConfigError(f"backbone.name={backbone.name!r} is not one of {list(BACKBONES)}")
    for key, value in backbone_presets(backbone.name, domain, method).items():
        if getattr(backbone, key) is None:
            setattr(backbone, key, value)
    if backbone.online_gamma is None:
        backbone.online_gamma = backbone.gamma
    return backbone


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_types(cfg: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``cfg`` (recursively) against its annotation.

    ``int`` fields take ints (not bools), ``float`` fields ints or floats, ``X | None`` also
    ``None``, ``list[int]`` lists of ints. Raises :class:`ConfigError` naming the dotted key.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{key} must be a {hint.__name__}, got {type(value).__name__}")
            check_types(value, prefix=f"{key}.")
        elif not _type_ok(value, hint):
            name = getattr(hint, "__name__", None) or str(hint)
            raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {name}")


# --------------------------------------------------------------------------------------- values
def _check_all(cfg: RunConfig, checks: list[tuple[str, Any, str]]) -> None:
    """``(key, value, rule)`` with rule ``>=0``, ``>0``, ``(0,1]``, ``[0,1]``, ``(0,1)``;
    ``None`` values pass (they mean "the default")."""
    tests = {
        ">=0": (lambda v: v >= 0, "must be >= 0"),
        ">0": (lambda v: v > 0, "must be > 0"),
        "(0,1]": (lambda v: 0 < v <= 1, "must lie in (0, 1]"),
        "[0,1]": (lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
        "(0,1)": (lambda v: 0 < v < 1, "must lie in (0, 1)"),
        "[0,1)": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    }
    for key, value, rule in checks:
        ok, message = tests[rule]
        if value is not None and not ok(value):
            raise ConfigError(f"{key} {message}, got {value}")


def validate(cfg: RunConfig) -> None:
    """Reject unknown types and out-of-domain values before any work, naming the offending key.

    Raises:
        ConfigError: the first bad entry, e.g. ``finetune.utd must be > 0, got 0``.
    """
    check_types(cfg)
    b, ft, op, ds = cfg.backbone, cfg.finetune, cfg.online_pretrain, cfg.dataset
    from torchrl_opt.data.datasets import TASKS

    if ds.task not in TASKS:
        raise ConfigError(f"dataset.task={ds.task!r} is not one of {sorted(TASKS)}")
    if ds.kind not in TASKS[ds.task].kinds:
        raise ConfigError(f"dataset.kind={ds.kind!r} is not a {ds.task} dataset; one of {list(TASKS[ds.task].kinds)}")
    choices = [
        ("method", cfg.method, METHODS),
        ("backbone.name", b.name, BACKBONES),
        ("backbone.loss_function", b.loss_function, LOSS_FUNCTIONS),
        ("backbone.actor_q_reduction", b.actor_q_reduction, (*ACTOR_Q_REDUCTIONS, None)),
        ("finetune.replay", ft.replay, REPLAYS),
        ("finetune.kappa.kind", ft.kappa.kind, KAPPA_KINDS),
        ("online_pretrain.mode", op.mode, META_MODES),
        ("online_pretrain.order", op.order, (1, 2)),
        ("dataset.source", ds.source, DATASET_SOURCES),
        ("logging.backend", cfg.logging.backend, LOGGER_BACKENDS),
        ("acceleration.graph_backend", cfg.acceleration.graph_backend, GRAPH_BACKENDS),
        ("porl.policy_source", cfg.porl.policy_source, PORL_POLICY_SOURCES),
        ("dataset.random_policy", ds.random_policy, RANDOM_POLICIES),
        ("online_pretrain.critic", op.critic, ("q_on", "q_off")),
        ("wsrl.offline_regularizer", cfg.wsrl.offline_regularizer, (None, "none", "cql", "calql")),
    ]
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {allowed}")
    _check_all(cfg, [
        ("seed", cfg.seed, ">=0"), ("dataset.generation_seed", ds.generation_seed, ">=0"),
        ("backbone.vae_steps", b.vae_steps, ">=0"), ("offline.steps", cfg.offline.steps, ">=0"),
        ("offline.eval_every", cfg.offline.eval_every, ">=0"),
        ("online_pretrain.n_tau", op.n_tau, ">=0"), ("online_pretrain.steps", op.steps, ">=0"),
        ("finetune.env_steps", ft.env_steps, ">=0"), ("finetune.kappa.t_decay", ft.kappa.t_decay, ">=0"),
        ("finetune.kappa.start", ft.kappa.start, ">=0"), ("eval.every", cfg.eval.every, ">=0"),
        ("logging.log_every", cfg.logging.log_every, ">=0"),
        ("checkpoint.every", cfg.checkpoint.every, ">=0"),
        ("acceleration.warmup", cfg.acceleration.warmup, ">=0"),
        ("acceleration.env_threads", cfg.acceleration.env_threads, ">=0"),
        ("rlpd.start_steps", cfg.rlpd.start_steps, ">=0"), ("porl.bc_steps", cfg.porl.bc_steps, ">=0"),
        ("backbone.bc_alpha", b.bc_alpha, ">=0"), ("backbone.online_bc_alpha", b.online_bc_alpha, ">=0"),
        ("backbone.exploration_noise", b.exploration_noise, ">=0"),
        ("backbone.spot_lambda", b.spot_lambda, ">=0"), ("backbone.vae_beta", b.vae_beta, ">=0"),
        ("dataset.size", ds.size, ">0"), ("dataset.workers", ds.workers, ">=0"), ("backbone.actor_delay", b.actor_delay, ">0"),
        ("backbone.spot_cooling_steps", b.spot_cooling_steps, ">0"), ("finetune.utd", ft.utd, ">0"),
        ("eval.episodes", cfg.eval.episodes, ">0"), ("eval.max_steps", cfg.eval.max_steps, ">0"),
        ("offline.batch_size", cfg.offline.batch_size, ">0"),
        ("finetune.batch_size", ft.batch_size, ">0"),
        ("online_pretrain.batch_size", op.batch_size, ">0"),
        ("backbone.actor_lr", b.actor_lr, ">0"), ("backbone.critic_lr", b.critic_lr, ">0"),
        ("backbone.value_lr", b.value_lr, ">0"), ("backbone.vae_lr", b.vae_lr, ">0"),
        ("backbone.alpha_lr", b.alpha_lr, ">0"), ("backbone.alpha_init", b.alpha_init, ">0"),
        ("backbone.num_qvalue_nets", b.num_qvalue_nets, ">0"),
        ("backbone.num_min_qs", b.num_min_qs, ">0"), ("backbone.actor_every", b.actor_every, ">0"),
        ("online_pretrain.lr", op.lr, ">0"), ("online_pretrain.alpha", op.alpha, ">0"),
        ("finetune.density_lr", ft.density_lr, ">0"), ("finetune.temperature", ft.temperature, ">0"),
        ("backbone.temperature", b.temperature, ">0"), ("backbone.policy_noise", b.policy_noise, ">0"),
        ("backbone.noise_clip", b.noise_clip, ">0"),
        ("backbone.target_entropy_per_dim", b.target_entropy_per_dim, ">=0"),
        ("backbone.actor_dropout", b.actor_dropout, "[0,1)"),
        ("backbone.online_gamma", b.online_gamma, "(0,1]"),
("wsrl.cql_alpha", cfg.wsrl.cql_alpha, ">=0"),
        ("rlpd.utd", cfg.rlpd.utd, ">0"), ("wsrl.utd", cfg.wsrl.utd, ">0"),
        ("wsrl.warmup_steps", cfg.wsrl.warmup_steps, ">0"), ("porl.utd", cfg.porl.utd, ">0"),
        ("porl.bc_lr", cfg.porl.bc_lr, ">0"),
        ("backbone.tau", b.tau, "(0,1]"), ("backbone.gamma", b.gamma, "(0,1]"),
        ("backbone.spot_lambda_end", b.spot_lambda_end, "[0,1]"),
        ("finetune.kappa.init", ft.kappa.init, "[0,1]"), ("finetune.kappa.end", ft.kappa.end, "[0,1]"),
        ("porl.epsilon", cfg.porl.epsilon, "[0,1]"),
        ("finetune.kappa.adaptive_min", ft.kappa.adaptive_min, "[0,1]"),
        ("finetune.kappa.adaptive_max", ft.kappa.adaptive_max, "[0,1]"),
        ("finetune.kappa.adaptive_rate", ft.kappa.adaptive_rate, "(0,1]"),
        ("rlpd.offline_fraction", cfg.rlpd.offline_fraction, "[0,1]"),
        ("backbone.expectile", b.expectile, "(0,1)"),
    ])
    for key, value in [("backbone.hidden", b.hidden), ("backbone.vae_hidden", b.vae_hidden)]:
        if not value or any(width < 1 for width in value):
            raise ConfigError(f"{key} must be a non-empty list of positive widths, got {value}")
    _validate_seeds(cfg)
    _validate_method(cfg)
    if ft.prefetch_action and cfg.acceleration.direct_env is False:
        raise ConfigError(
            "finetune.prefetch_action=true needs direct env stepping, but acceleration.direct_env=false"
        )
    if ds.random_policy != "uniform" and (ds.kind != "random" or ds.source != "generated"):
        raise ConfigError(
            f"dataset.random_policy={ds.random_policy!r} applies to generated random datasets only "
            f"(dataset.kind={ds.kind!r}, dataset.source={ds.source!r})"
        )
    if ds.source == "d4rl_hdf5" and not ds.path:
        raise ConfigError("dataset.source='d4rl_hdf5' needs dataset.path")
    for seed in cfg.seed_list:
        path = offline_checkpoint_path(cfg, seed)
        if path is not None and not Path(path).is_file():
            raise ConfigError(
                f"offline.checkpoint={cfg.offline.checkpoint!r}: no such file {path!r} (point it at "
                "the offline.pt of a finished run, with {seed} standing for the seed, or leave it "
                "unset to train offline)"
            )
    resolve_device(cfg.device)


def _validate_seeds(cfg: RunConfig) -> None:
    if cfg.seeds is None:
        return
    seeds = list(cfg.seeds)
    if not seeds:
        raise ConfigError("seeds=[] lists no seed: give at least one, or seeds=null for one run of seed")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} lists a seed twice")


def _validate_method(cfg: RunConfig) -> None:
    """The checks that depend on which plan runs."""
    from torchrl_opt.schedules import UnknownKappaPresetError, kappa_preset_config

    method, b, ft, op = cfg.method, cfg.backbone, cfg.finetune, cfg.online_pretrain
    if b.name not in METHOD_BACKBONES[method]:
        wanted = METHOD_BACKBONES[method]
        raise ConfigError(
            f"method={method!r} trains the {' / '.join(wanted)} backbone, but backbone.name="
            f"{b.name!r}: set backbone.name={wanted[0]!r} (the recipes' method={method} selects it)"
        )
    if b.name == "sac" and b.num_min_qs > (b.num_qvalue_nets or 10):
        raise ConfigError(
            f"backbone.num_min_qs={b.num_min_qs} must lie in [1, backbone.num_qvalue_nets="
            f"{b.num_qvalue_nets or 10}]"
        )
    if op.critic == "q_off" and (method != "opt" or b.name == "iql"):
        raise ConfigError(
            f"online_pretrain.critic='q_off' (the no_qon ablation) pre-trains Q_off of OPT's TD3 / "
            f"SPOT backbone; got method={method!r}, backbone.name={b.name!r}"
        )
    uses_q_on = method == "rlpd_opt" or (method == "opt" and op.critic == "q_on")
    if method in ("rlpd_offline", "rlpd_opt") and op.n_tau < 1:
        raise ConfigError(f"method={method!r} needs online_pretrain.n_tau >= 1 (the frozen policy's B_on)")
    if uses_q_on and op.steps > 0 and op.n_tau == 0:
        raise ConfigError(
            "online_pretrain.n_tau must be > 0 when online_pretrain.steps > 0: online pre-training "
            "samples B_on"
        )
    if method in ("opt", "vanilla") and ft.replay == "online" and op.n_tau == 0 and ft.env_steps > 0:
        raise ConfigError("finetune.replay='online' needs online_pretrain.n_tau > 0 to start sampling")
    if method == "rlpd" and cfg.rlpd.start_steps < 1 and cfg.rlpd.offline_fraction < 1:
        raise ConfigError("rlpd.start_steps must be >= 1 so that online rows exist")
    if method == "porl" and cfg.porl.presample_steps < ft.batch_size:
        raise ConfigError(
            f"porl.presample_steps={cfg.porl.presample_steps} must be >= finetune.batch_size="
            f"{ft.batch_size} (the first pre-sampled transitions fill the first batch)"
        )
    if uses_q_on and ft.kappa.kind == "adaptive":
        k = ft.kappa
        if cfg.seeds is not None and len(cfg.seeds) > 1:
            raise ConfigError(
                "finetune.kappa.kind='adaptive' adapts one kappa per run, but a seed group shares one "
                "kappa buffer among its seeds: run the seeds separately (-m seed=...)"
            )
        if b.name == "sac":
            raise ConfigError("finetune.kappa.kind='adaptive' supports the td3 / spot / iql backbones")
        if not k.adaptive_min <= k.init <= k.adaptive_max:
            raise ConfigError(
                f"finetune.kappa: need adaptive_min <= init <= adaptive_max, got {k.adaptive_min}, "
                f"{k.init}, {k.adaptive_max}"
            )
    if uses_q_on and ft.kappa.kind == "preset":
        try:
            kappa_preset_config(cfg.dataset.task, cfg.dataset.kind)
        except UnknownKappaPresetError as err:
            raise ConfigError(
                f"finetune.kappa.kind='preset' but there is no preset for "
                f"{cfg.dataset.task}/{cfg.dataset.kind}: set finetune.kappa.kind to 'linear' or "
                f"'constant' ({err})"
            ) from err


def offline_checkpoint_path(cfg: RunConfig, seed: int) -> str | None:
    """``offline.checkpoint`` of seed ``seed``: ``{seed}`` in the path stands for the seed (one
    offline checkpoint per seed of a sweep or a seed group); ``None`` when unset."""
    path = cfg.offline.checkpoint
    if path is None or "{seed}" not in path:
        return path
    return path.replace("{seed}", str(seed))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: an explicit CUDA device without CUDA, or a string that is not a torch device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"device={name!r} is not a valid torch device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available")
    return device
